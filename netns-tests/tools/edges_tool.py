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
  silent-scrape HOST PORT N [TRIES]
      opens N connections to HOST:PORT that send nothing, then (all N
      connected) scrapes "GET /metrics" on one more and reads the answer
      to its end, then looks at the N silent ones again; a silent one is
      open when neither EOF nor an error waits on it. An attempt is good
      when all N stayed open, the answer is HTTP 200 and has
      egressd_tcp_flows_total. egressd closes a metrics connection 2 s
      after accepting it: an attempt that is not good and took longer
      than that from its first connect proves nothing (the machine was
      too slow) and is made again, TRIES (5) in all; one that took less
      fails at once. "ok|failed #1: silent N connected, A open after the
      scrape; scrape HTTP C in M ms, B bytes, flows_total yes|no; T ms in
      all; #2: ..." (exit 0 iff an attempt was good)
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


def still_open(c):
    """True when nothing but silence waits on c: no EOF, no error. (A
    socket with a timeout would first wait that long for bytes: c is made
    non-blocking, so the look is immediate.)"""
    c.setblocking(False)
    try:
        d = c.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return bool(d)  # bytes out of turn would be odd, but not a close


METRICS_DEADLINE = 2.0  # egressd's metrics endpoint: a connection's whole life


def silent_scrape_once(host, port, n):
    """One attempt: (ok, elapsed s since the first silent connect, text)."""
    silent = []
    t_first = time.monotonic()
    try:
        for _ in range(n):
            silent.append(socket.create_connection((host, int(port)), timeout=5))
    except OSError as e:
        for c in silent:
            c.close()
        return False, time.monotonic() - t_first, f"silent {len(silent)}/{n} connected ({type(e).__name__}: {e}); no scrape"
    t0 = time.monotonic()
    code, body = "none", b""
    try:
        with socket.create_connection((host, int(port)), timeout=10) as c:
            c.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = read_to_eof(c)
        head, _, body = data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        code = parts[1].decode(errors="replace") if len(parts) > 1 else "?"
    except OSError as e:
        code = type(e).__name__
    ms = int((time.monotonic() - t0) * 1000)
    still = sum(1 for c in silent if still_open(c))
    elapsed = time.monotonic() - t_first
    for c in silent:
        c.close()
    flows = any(line.startswith(b"egressd_tcp_flows_total") for line in body.splitlines())
    ok = still == n and code == "200" and flows
    return ok, elapsed, (f"silent {n} connected, {still} open after the scrape; scrape HTTP {code} in {ms} ms, "
                         f"{len(body)} bytes, flows_total {'yes' if flows else 'no'}; {int(elapsed * 1000)} ms in all")


def cmd_silent_scrape(host, port, n, tries="5"):
    n, tries = int(n), int(tries)
    seen = []
    for k in range(1, tries + 1):
        ok, elapsed, text = silent_scrape_once(host, port, n)
        seen.append(f"#{k}: {text}")
        if ok:
            out(f"ok {'; '.join(seen)}")
            return 0
        if elapsed < METRICS_DEADLINE:
            # Decided within the silent ones' deadline: nothing excuses it.
            out(f"failed {'; '.join(seen)}")
            return 1
        # Slower than the deadline: egressd may rightly have closed them.
        time.sleep(0.2)
    out(f"failed (no attempt within {METRICS_DEADLINE:.0f} s) {'; '.join(seen)}")
    return 1


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
        "silent-scrape": cmd_silent_scrape,
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
