#!/usr/bin/env python3
"""starve_tool — the starving container, the neighbour that measures, and
the silent proxy of egressd's starvation suite (netns-tests/starve.sh).
Python 3 standard library only. Every loop is bounded in count and time.

TCP flows below talk to egtool's hold service (port 9004): "hello\\n" is
answered "ready <peer>\\n" (the peer: the exit's address as the target saw
it), "bye\\n" is answered "ok\\n". A flow is *ready* when that answer came,
*refused* when the connection was reset or closed first (egressd refused
it), *timeout* when nothing came in time (egressd never took it).

  hold HOST PORT N READY_FILE STOP_FILE MAX_SECS [--src SRCS] [--timeout S] [--window W]
      N flows, at most W (200) connecting at once, each bound to the next
      of SRCS in turn (see below); when every one is ready, refused or
      timed out, "ready R refused F timeout T" goes to READY_FILE; the
      ready ones are held idle until STOP_FILE exists (at most MAX_SECS),
      then each says bye: "ready R refused F timeout T alive A srcs K"
      (alive: ready ones that answered "ok" at the end; srcs: distinct
      sources with a ready flow)

  try HOST PORT N TIMEOUT [--src ADDR] [--expect PEER]
      N flows at once, each must be ready within TIMEOUT s (and, with
      --expect, name PEER): "ok K/N refused F timeout T wrong W"; exit 0
      iff all K = N

  storm HOST PORT SECS CONC [--timeout S] [--rate R]
      A retry storm: CONC attempts in flight for SECS s; an attempt that
      ends (reset, closed, or no answer in S = 30 s) is replaced at once by
      a new one, at most R (1000) new attempts a second: "attempts A
      refused F ready K timeout T pending P rate X/s"

  udpheld HOST PORT N READY_FILE STOP_FILE MAX_SECS
      N UDP sockets each ask HOST:PORT (a who-am-i service: it answers with
      the address it saw, our association at the exit); the answers go to
      READY_FILE; silent until STOP_FILE exists (at most MAX_SECS); then
      each asks again on the same socket (3 tries, 1 s apart):
      "first A1,A2 second B1,B2 kept K/N" (kept: same address both times)

  spray HOST TCP_PORT UDP_PORT SRCS TCP_PER READY_FILE STOP_FILE MAX_SECS
      From every address of SRCS: one UDP socket asks HOST:UDP_PORT, and
      TCP_PER flows to HOST:TCP_PORT are made ready and held (as `hold`);
      READY_FILE when all flows are settled and the answers had 3 s;
      held until STOP_FILE (at most MAX_SECS): "srcs N tcp_ready R
      tcp_refused F tcp_timeout T tcp_srcs K udp_answered U udp_srcs U"

  early HOST PORT N SIZE READY_FILE STOP_FILE MAX_SECS
      N connections, each writes SIZE bytes as soon as it is connected
      (what fits in the socket) and then reads: a tunnel that never opens
      answers nothing. READY_FILE once every one has written (or after
      15 s); held until STOP_FILE (at most MAX_SECS): "connected C written
      B reset R closed E" (reset/closed: by the far side while held)

  silent ADDR PORT READY_FILE MAX_SECS
      A proxy that accepts, reads and discards, and never answers.

  sample PID OUT_FILE STOP_FILE
      Samples /proc/PID VmRSS and its open descriptors every 100 ms until
      STOP_FILE exists (at most 300 s): "peak_rss_kib N peak_fds N
      last_rss_kib N last_fds N samples N" to OUT_FILE.

SRCS: "A-B" (an IPv4 range in the last byte, e.g. 10.8.0.100-10.8.0.159)
or "A,B,..." (addresses).
"""

import ipaddress
import os
import selectors
import socket
import sys
import time

from egtest import dispatch, family, mark_ready, out, pop_opt, raise_nofile, write_atomic

HELLO = b"hello\n"
MAX_FLOWS = 20000


def srcs_of(spec):
    if not spec:
        return [None]
    if "-" in spec and "," not in spec:
        a, b = spec.split("-")
        a, b = ipaddress.ip_address(a), ipaddress.ip_address(b)
        n = int(b) - int(a) + 1
        if n < 1 or n > 4096:
            raise ValueError(f"bad source range {spec}")
        return [str(a + i) for i in range(n)]
    return spec.split(",")


def stopped(stop_file, deadline):
    return os.path.exists(stop_file) or time.monotonic() >= deadline


class Flow:
    """One hold flow: connect, hello, wait for ready (or its end)."""

    __slots__ = ("sock", "src", "state", "buf", "since", "peer")

    def __init__(self, sock, src):
        self.sock = sock
        self.src = src
        self.state = "connecting"
        self.buf = b""
        self.since = time.monotonic()
        self.peer = ""


def open_flow(host, port, src):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setblocking(False)
    if src:
        s.bind((src, 0))
    try:
        s.connect((host, int(port)))
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return None
    return Flow(s, src)


def step(sel, f):
    """Moves a flow on after an event; returns its new state."""
    if f.state == "connecting":
        err = f.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return end(sel, f, "refused")
        try:
            f.sock.send(HELLO)
        except OSError:
            return end(sel, f, "refused")
        f.state = "waiting"
        sel.modify(f.sock, selectors.EVENT_READ, f)
        return f.state
    try:
        b = f.sock.recv(4096)
    except BlockingIOError:
        return f.state
    except OSError:
        return end(sel, f, "refused")
    if not b:
        return end(sel, f, "refused")
    f.buf += b
    if b"\n" in f.buf:
        line = f.buf.split(b"\n", 1)[0].decode(errors="replace")
        if line.startswith("ready"):
            f.peer = line.split(" ", 1)[1] if " " in line else ""
            f.state = "ready"
            sel.unregister(f.sock)
            return f.state
        return end(sel, f, "refused")
    return f.state


def end(sel, f, state):
    try:
        sel.unregister(f.sock)
    except (KeyError, ValueError):
        pass
    f.sock.close()
    f.state = state
    return state


def settle(host, port, n, srcs, timeout, window, deadline):
    """N flows (sources in turn), at most `window` connecting at once;
    returns them once each is ready, refused or timed out."""
    sel = selectors.DefaultSelector()
    flows, pending, made = [], [], 0
    try:
        while made < n or pending:
            now = time.monotonic()
            if now >= deadline:
                break
            while made < n and len(pending) < window:
                f = open_flow(host, port, srcs[made % len(srcs)])
                made += 1
                if f is None:
                    flows.append(Flow(None, srcs[(made - 1) % len(srcs)]))
                    flows[-1].state = "refused"
                    continue
                sel.register(f.sock, selectors.EVENT_WRITE, f)
                flows.append(f)
                pending.append(f)
            for key, _ in sel.select(0.05):
                step(sel, key.data)
            now = time.monotonic()
            still = []
            for f in pending:
                if f.state in ("connecting", "waiting"):
                    if now - f.since >= timeout:
                        end(sel, f, "timeout")
                    else:
                        still.append(f)
            pending = still
        for f in pending:
            end(sel, f, "timeout")
    finally:
        sel.close()
    return flows


def count(flows, state):
    return sum(1 for f in flows if f.state == state)


def say_bye(flows, wait=3.0):
    """Every ready flow says bye; how many answered ok."""
    alive = 0
    sel = selectors.DefaultSelector()
    live = {}
    for f in flows:
        if f.state != "ready":
            continue
        try:
            f.sock.send(b"bye\n")
            sel.register(f.sock, selectors.EVENT_READ, f)
            live[f.sock] = b""
        except OSError:
            pass
    deadline = time.monotonic() + wait
    while live and time.monotonic() < deadline:
        for key, _ in sel.select(0.1):
            s = key.fileobj
            try:
                b = s.recv(64)
            except OSError:
                b = b""
            if b:
                live[s] += b
                if b"ok" not in live[s]:
                    continue
                alive += 1
            sel.unregister(s)
            del live[s]
    sel.close()
    for f in flows:
        if f.sock is not None and f.sock.fileno() >= 0:
            f.sock.close()
    return alive


def cmd_hold(host, port, n, ready_file, stop_file, max_secs, *opts):
    opts = list(opts)
    src, opts = pop_opt(opts, "--src")
    timeout, opts = pop_opt(opts, "--timeout")
    window, opts = pop_opt(opts, "--window")
    raise_nofile()
    n = min(int(n), MAX_FLOWS)
    deadline = time.monotonic() + float(max_secs)
    flows = settle(host, port, n, srcs_of(src), float(timeout or 8), int(window or 200), deadline)
    r, f_, t = count(flows, "ready"), count(flows, "refused"), count(flows, "timeout")
    write_atomic(ready_file, f"ready {r} refused {f_} timeout {t}\n")
    while not stopped(stop_file, deadline):
        time.sleep(0.05)
    srcs = len({f.src for f in flows if f.state == "ready"})
    alive = say_bye(flows)
    out(f"ready {r} refused {f_} timeout {t} alive {alive} srcs {srcs}")
    return 0


def cmd_try(host, port, n, timeout, *opts):
    opts = list(opts)
    src, opts = pop_opt(opts, "--src")
    expect, opts = pop_opt(opts, "--expect")
    n = min(int(n), MAX_FLOWS)
    flows = settle(host, port, n, srcs_of(src), float(timeout), n, time.monotonic() + float(timeout) + 5)
    ok = count(flows, "ready")
    wrong = sum(1 for f in flows if f.state == "ready" and expect and f.peer != expect)
    say_bye(flows, 1.0)
    out(f"ok {ok - wrong}/{n} refused {count(flows, 'refused')} timeout {count(flows, 'timeout')} wrong {wrong}")
    return 0 if ok - wrong == n else 1


def cmd_storm(host, port, secs, conc, *opts):
    opts = list(opts)
    timeout, opts = pop_opt(opts, "--timeout")
    rate, opts = pop_opt(opts, "--rate")
    raise_nofile()
    timeout, rate, conc = float(timeout or 30), float(rate or 1000), min(int(conc), MAX_FLOWS)
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    end_at = t0 + float(secs)
    pending = []
    attempts = refused = ready = timeouts = 0
    try:
        while time.monotonic() < end_at:
            now = time.monotonic()
            allowed = int((now - t0) * rate) + 1 - attempts
            while len(pending) < conc and allowed > 0 and attempts < 10_000_000:
                f = open_flow(host, port, None)
                attempts += 1
                allowed -= 1
                if f is None:
                    refused += 1
                    continue
                sel.register(f.sock, selectors.EVENT_WRITE, f)
                pending.append(f)
            for key, _ in sel.select(0.01):
                step(sel, key.data)
            now = time.monotonic()
            still = []
            for f in pending:
                if f.state in ("connecting", "waiting"):
                    if now - f.since >= timeout:
                        end(sel, f, "timeout")
                        timeouts += 1
                    else:
                        still.append(f)
                elif f.state == "refused":
                    refused += 1
                elif f.state == "ready":
                    ready += 1
                    f.sock.close()
            pending = still
    finally:
        for f in pending:
            f.sock.close()
        sel.close()
    el = time.monotonic() - t0
    out(
        f"attempts {attempts} refused {refused} ready {ready} timeout {timeouts} pending {len(pending)} "
        f"rate {int(attempts / max(el, 0.001))}/s"
    )
    return 0


def ask_all(socks, host, port, tries=3, gap=1.0):
    """Each socket asks HOST:PORT until answered (TRIES times, GAP apart);
    the answers (or "none"), in order."""
    got = [None] * len(socks)
    for _ in range(tries):
        for i, s in enumerate(socks):
            if got[i] is None:
                try:
                    s.sendto(b"who", (host, int(port)))
                except OSError:
                    pass
        deadline = time.monotonic() + gap
        while None in got and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if got[i] is not None:
                    continue
                try:
                    data, _ = s.recvfrom(2048)
                    got[i] = data.decode(errors="replace").split()[0] if data.split() else "?"
                except BlockingIOError:
                    pass
                except OSError:
                    pass
            time.sleep(0.01)
        if None not in got:
            break
    return [g or "none" for g in got]


def cmd_udpheld(host, port, n, ready_file, stop_file, max_secs):
    socks = []
    for _ in range(int(n)):
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.setblocking(False)
        socks.append(s)
    deadline = time.monotonic() + float(max_secs)
    first = ask_all(socks, host, port)
    write_atomic(ready_file, ",".join(first) + "\n")
    while not stopped(stop_file, deadline):
        time.sleep(0.05)
    second = ask_all(socks, host, port)
    kept = sum(1 for a, b in zip(first, second) if a != "none" and a == b)
    out(f"first {','.join(first)} second {','.join(second)} kept {kept}/{len(socks)}")
    return 0


def cmd_spray(host, tcp_port, udp_port, src, tcp_per, ready_file, stop_file, max_secs):
    raise_nofile()
    srcs = srcs_of(src)
    deadline = time.monotonic() + float(max_secs)
    usocks = []
    for a in srcs:
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind((a, 0))
        usocks.append(s)
        try:
            s.sendto(b"who", (host, int(udp_port)))
        except OSError:
            pass
    n = len(srcs) * int(tcp_per)
    flows = settle(host, tcp_port, n, srcs, 8.0, 200, deadline)
    # The answers: the datagrams went first; give them 3 s more.
    answered = set()
    until = time.monotonic() + 3
    while time.monotonic() < until and len(answered) < len(usocks):
        for i, s in enumerate(usocks):
            try:
                if s.recvfrom(2048):
                    answered.add(i)
            except OSError:
                pass
        time.sleep(0.02)
    r, f_, t = count(flows, "ready"), count(flows, "refused"), count(flows, "timeout")
    tsrcs = len({f.src for f in flows if f.state == "ready"})
    line = (
        f"srcs {len(srcs)} tcp_ready {r} tcp_refused {f_} tcp_timeout {t} tcp_srcs {tsrcs} "
        f"udp_answered {len(answered)} udp_srcs {len(answered)}"
    )
    write_atomic(ready_file, line + "\n")
    while not stopped(stop_file, deadline):
        time.sleep(0.05)
    say_bye(flows, 1.0)
    for s in usocks:
        s.close()
    out(line)
    return 0


def cmd_early(host, port, n, size, ready_file, stop_file, max_secs):
    raise_nofile()
    n, size = min(int(n), MAX_FLOWS), int(size)
    deadline = time.monotonic() + float(max_secs)
    payload = b"x" * size
    sel = selectors.DefaultSelector()
    conns = {}
    for _ in range(n):
        s = socket.socket(family(host), socket.SOCK_STREAM)
        # Room for all SIZE bytes at once: egressd finds them all waiting.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(2 * size, 65536))
        s.setblocking(False)
        try:
            s.connect((host, int(port)))
        except BlockingIOError:
            pass
        sel.register(s, selectors.EVENT_WRITE)
        conns[s] = 0
    connected = written = reset = closed = 0
    done_writing = set()
    ready_by = time.monotonic() + 15
    ready_written = False
    while not stopped(stop_file, deadline):
        for key, ev in sel.select(0.05):
            s = key.fileobj
            if ev & selectors.EVENT_WRITE and s not in done_writing:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    reset += 1
                    sel.unregister(s)
                    done_writing.add(s)
                    continue
                if conns[s] == 0:
                    connected += 1
                try:
                    m = s.send(payload[conns[s] :])
                    conns[s] += m
                    written += m
                except BlockingIOError:
                    m = 0
                except OSError:
                    reset += 1
                    sel.unregister(s)
                    done_writing.add(s)
                    continue
                # One write of what fits: from now on only the far side's end matters.
                done_writing.add(s)
                sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                b = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                b = None
            if b:
                continue
            if b is None:
                reset += 1
            else:
                closed += 1
            sel.unregister(s)
        if not ready_written and (len(done_writing) >= n or time.monotonic() >= ready_by):
            write_atomic(ready_file, f"connected {connected} written {written} reset {reset} closed {closed}\n")
            ready_written = True
    if not ready_written:
        write_atomic(ready_file, f"connected {connected} written {written} reset {reset} closed {closed}\n")
    sel.close()
    for s in conns:
        s.close()
    out(f"connected {connected} written {written} reset {reset} closed {closed}")
    return 0


def cmd_silent(addr, port, ready_file, max_secs):
    raise_nofile()
    ls = socket.socket(family(addr), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, int(port)))
    ls.listen(4096)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    mark_ready(ready_file)
    deadline = time.monotonic() + float(max_secs)
    accepted = 0
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            if key.fileobj is ls:
                while accepted < MAX_FLOWS:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                    accepted += 1
                continue
            try:
                b = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                b = b""
            if not b:
                sel.unregister(key.fileobj)
                key.fileobj.close()
    out(f"accepted {accepted}")
    return 0


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmd_sample(pid, out_file, stop_file):
    peak_rss = peak_fds = last_rss = last_fds = samples = 0
    deadline = time.monotonic() + 300
    while not stopped(stop_file, deadline):
        last_rss = status_kib(pid, "VmRSS")
        try:
            last_fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            last_fds = 0
        peak_rss, peak_fds = max(peak_rss, last_rss), max(peak_fds, last_fds)
        samples += 1
        time.sleep(0.1)
    write_atomic(
        out_file,
        f"peak_rss_kib {peak_rss} peak_fds {peak_fds} last_rss_kib {last_rss} last_fds {last_fds} samples {samples}\n",
    )
    return 0


COMMANDS = {
    "hold": cmd_hold,
    "try": cmd_try,
    "storm": cmd_storm,
    "udpheld": cmd_udpheld,
    "spray": cmd_spray,
    "early": cmd_early,
    "silent": cmd_silent,
    "sample": cmd_sample,
}

if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(dispatch(COMMANDS, sys.argv[1], sys.argv[2:]))
