#!/usr/bin/env python3
"""edges_tool — servers and clients for netns-tests/edges.sh (issue 14's
correctness edges). Python 3 standard library only. Every client prints one
line and exits 0 when its expectation holds, else 1.

Servers (long-running; stop them with SIGTERM):

  serve ADDR [--ready FILE]
      9101 oob: reads to EOF with SO_OOBINLINE (an urgent byte counts as
           data), answers "got <n> <sha256hex>\\n", then sends N bytes 'X',
           one urgent byte '!' (MSG_OOB), N bytes 'Y', and closes (N = 65536)
      9102 hold-after-EOF: reads to EOF, then keeps the connection open
           (never writes, never closes) for at most 120 s
      9103 trickle-after-EOF: reads to EOF, then sends one byte a second,
           6 times, and closes

Clients:

  oob HOST PORT
      sends N 'A', one urgent '!' (MSG_OOB), N 'B', shuts down its write
      side and reads to EOF (SO_OOBINLINE): "ok up=<n> down=<n>" when both
      directions arrived whole and in order
  halfclose HOST PORT MAX
      sends "x", shuts down its write side and waits (at most MAX s) for the
      flow to end: "ended <how> after <secs> s got <n> bytes" (how: eof,
      reset, timeout); exit 0 unless timeout
  idle HOST PORT SECS
      sends "x" and stays silent SECS s without a shutdown: "open after
      <secs> s" (exit 0) or "ended <how> after <secs> s" (exit 1)
  udp-steady HOST PORT LOCAL_PORT N INTERVAL TIMEOUT
      one socket bound to LOCAL_PORT asks N times, INTERVAL s apart, each
      answer awaited at most TIMEOUT s: "answered A/N max_ms M" (exit 0 if
      A == N)
  silent-tcp HOST PORT SECS
      connects and sends nothing for SECS s (a slow client)
  dns-many HOST N WINDOW TIMEOUT [PREFIX]
      N lookups, each from a new socket (a new port, as glibc does), at most
      WINDOW at once, every query with the SAME ID 0x1234 and its own name
      PREFIX<i>.whoami.test (TXT): "answered A/N wrong W lost L in S s" —
      wrong: an answer whose ID or question is not its socket's (exit 0 iff
      A == N and W == 0)

  dns-silent-first ADDR PORT [--ready FILE]   (a server)
      DNS over TCP: the first connection is read and never answered; later
      ones answer every query (NXDOMAIN, question echoed)
"""

import hashlib
import selectors
import socket
import struct
import sys
import threading
import time

from egtest import dns_query, family, mark_ready, out, pop_opt, tcp_listener

N = 65536


def read_to_eof(c):
    buf = bytearray()
    while True:
        d = c.recv(65536)
        if not d:
            return bytes(buf)
        buf += d


def oob_conn(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    got = read_to_eof(c)
    c.sendall(f"got {len(got)} {hashlib.sha256(got).hexdigest()}\n".encode())
    c.sendall(b"X" * N)
    time.sleep(0.3)
    c.send(b"!", socket.MSG_OOB)
    time.sleep(0.3)
    c.sendall(b"Y" * N)
    c.close()


def hold_conn(c):
    read_to_eof(c)
    time.sleep(120)
    c.close()


def trickle_conn(c):
    read_to_eof(c)
    for _ in range(6):
        time.sleep(1)
        c.sendall(b".")
    c.close()


def serve(addr, ready):
    handlers = {9101: oob_conn, 9102: hold_conn, 9103: trickle_conn}
    for port, h in handlers.items():
        ls = tcp_listener(addr, port)

        def loop(ls=ls, h=h):
            while True:
                c, _ = ls.accept()
                threading.Thread(target=h, args=(c,), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
    mark_ready(ready)
    while True:
        time.sleep(3600)


def cmd_oob(host, port):
    c = socket.create_connection((host, int(port)), timeout=20)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    c.sendall(b"A" * N)
    time.sleep(0.3)
    c.send(b"!", socket.MSG_OOB)
    time.sleep(0.3)
    c.sendall(b"B" * N)
    c.shutdown(socket.SHUT_WR)
    got = read_to_eof(c)
    want_up = b"A" * N + b"!" + b"B" * N
    line, _, rest = got.partition(b"\n")
    want_line = f"got {len(want_up)} {hashlib.sha256(want_up).hexdigest()}".encode()
    want_down = b"X" * N + b"!" + b"Y" * N
    up_ok = line == want_line
    down_ok = rest == want_down
    up = line.decode(errors="replace").split(" ")[1] if line.startswith(b"got ") else "?"
    out(f"{'ok' if up_ok and down_ok else 'failed'} up={up}/{len(want_up)} down={len(rest)}/{len(want_down)}"
        f"{'' if down_ok or len(rest) != len(want_down) else ' (down differs)'}")
    return 0 if up_ok and down_ok else 1


def wait_end(c, limit):
    t0 = time.monotonic()
    n = 0
    c.settimeout(0.2)
    while time.monotonic() - t0 < limit:
        try:
            d = c.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return "reset", time.monotonic() - t0, n
        if not d:
            return "eof", time.monotonic() - t0, n
        n += len(d)
    return "timeout", time.monotonic() - t0, n


def cmd_halfclose(host, port, limit):
    c = socket.create_connection((host, int(port)), timeout=10)
    c.sendall(b"x")
    c.shutdown(socket.SHUT_WR)
    how, secs, n = wait_end(c, float(limit))
    out(f"ended {how} after {secs:.1f} s got {n} bytes")
    return 0 if how != "timeout" else 1


def cmd_idle(host, port, secs):
    c = socket.create_connection((host, int(port)), timeout=10)
    c.sendall(b"x")
    how, t, _ = wait_end(c, float(secs))
    if how == "timeout":
        out(f"open after {t:.1f} s")
        return 0
    out(f"ended {how} after {t:.1f} s")
    return 1


def cmd_udp_steady(host, port, local_port, n, interval, timeout):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.bind(("::" if ":" in host else "0.0.0.0", int(local_port)))
    answered, worst = 0, 0.0
    for i in range(int(n)):
        t0 = time.monotonic()
        s.sendto(f"steady{i}".encode(), (host, int(port)))
        s.settimeout(float(timeout))
        try:
            while True:
                d, _ = s.recvfrom(2048)
                if f"steady{i}".encode() in d:
                    answered += 1
                    worst = max(worst, time.monotonic() - t0)
                    break
        except socket.timeout:
            worst = max(worst, float(timeout))
        time.sleep(float(interval))
    out(f"answered {answered}/{n} max_ms {int(worst * 1000)}")
    return 0 if answered == int(n) else 1


def cmd_silent_tcp(host, port, secs):
    c = socket.create_connection((host, int(port)), timeout=5)
    time.sleep(float(secs))
    c.close()
    out("done")
    return 0


def cmd_dns_many(host, n, window, timeout, prefix="q"):
    n, window, timeout = int(n), int(window), float(timeout)
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    answered = wrong = lost = 0
    nxt = 0
    open_ = {}
    while nxt < n or open_:
        while nxt < n and len(open_) < window:
            s = socket.socket(family(host), socket.SOCK_DGRAM)
            s.setblocking(False)
            q = dns_query(0x1234, f"{prefix}{nxt}.whoami.test")
            s.sendto(q, (host, 53))
            open_[s] = (q, time.monotonic())
            sel.register(s, selectors.EVENT_READ)
            nxt += 1
        for key, _ in sel.select(0.05):
            s = key.fileobj
            q, _ = open_.pop(s)
            sel.unregister(s)
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            s.close()
            # ID and question section (after the 12-byte header) must be ours.
            if len(d) >= len(q) and d[:2] == q[:2] and d[12:len(q)] == q[12:]:
                answered += 1
            else:
                wrong += 1
        now = time.monotonic()
        for s, (q, sent) in list(open_.items()):
            if now - sent > timeout:
                del open_[s]
                sel.unregister(s)
                s.close()
                lost += 1
    out(f"answered {answered}/{n} wrong {wrong} lost {lost} in {time.monotonic() - t0:.1f} s")
    return 0 if answered == n and wrong == 0 else 1


def dns_silent_first(addr, port, ready):
    ls = tcp_listener(addr, port, 64)
    mark_ready(ready)
    first = True

    def silent(c):
        read_to_eof(c)
        c.close()

    def answer(c):
        buf = b""
        while True:
            try:
                d = c.recv(65536)
            except OSError:
                break
            if not d:
                break
            buf += d
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
                ln = struct.unpack(">H", buf[:2])[0]
                q, buf = buf[2:2 + ln], buf[2 + ln:]
                flags = 0x8183  # QR, RD, RA, NXDOMAIN
                a = q[:2] + struct.pack(">HHHHH", flags, 1, 0, 0, 0) + q[12:]
                c.sendall(struct.pack(">H", len(a)) + a)
        c.close()

    while True:
        c, _ = ls.accept()
        out(f"connection {'silent' if first else 'answering'}")
        threading.Thread(target=silent if first else answer, args=(c,), daemon=True).start()
        first = False


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "serve":
        ready, args = pop_opt(args, "--ready")
        serve(args[0], ready)
        return 0
    if cmd == "dns-silent-first":
        ready, args = pop_opt(args, "--ready")
        dns_silent_first(args[0], args[1], ready)
        return 0
    fns = {
        "oob": cmd_oob,
        "halfclose": cmd_halfclose,
        "idle": cmd_idle,
        "udp-steady": cmd_udp_steady,
        "silent-tcp": cmd_silent_tcp,
        "dns-many": cmd_dns_many,
    }
    if cmd not in fns:
        print(__doc__)
        return 2
    try:
        return fns[cmd](*args)
    except OSError as e:
        out(f"error {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
