#!/usr/bin/env python3
"""upgrade_tool — the slow source and the traffic generators of
netns-tests/upgrade.sh (egressd's zero-downtime upgrades, issue 28).
Python 3 standard library only.

Every command takes --ready FILE: "ready" is written there once it is
under way (slowsrc: listening; slowget: the first bytes came; a generator:
its first success), so a script can wait for the traffic to really run
before it acts.

Service (long-running; stop it with SIGTERM):

  slowsrc ADDR PORT [--finish FILE]
      reads "N RATE\\n", sends N bytes of the deterministic test stream
      (egtest.stream_chunks) at RATE bytes/s in 4 KiB pieces, then closes;
      once FILE exists, the rest goes at full speed (so a script ends a
      download when it has seen what it wanted, not after a guessed time).

Clients. Every generator runs until STOPFILE exists or MAXSECS have passed
(and at most MAXN tries), then prints one line:
"tries T ok O failed F gap_ms G ..." where G is the longest time between two
consecutive successes (by completion time; about the loop's period when
nothing failed), and exits 0 iff nothing failed.

  slowget HOST PORT N RATE         fetch N bytes from slowsrc at RATE bytes/s:
      "ok got N sha256 ... in S s" | "failed got n/N ..." (exit 1)
  connloop HOST PORT WANT STOPFILE MAXSECS MAXN INTERVAL_MS
      one HTTP GET per try to the who-am-i service (a new TCP connection
      each); a success is a reply whose body is WANT
  udpseq HOST PORT STOPFILE MAXSECS INTERVAL_MS
      one socket sends "seq N" every INTERVAL_MS to the UDP who-am-i (which
      answers "<peer> seq N"), then waits 3 s for late replies; adds
      "lost=<first missing seqs> peers=<every peer the service saw>"
  burst HOST PORT N
      N TCP connections one after the other, as fast as they connect (each
      closed at once, 2 s connect timeout): "connected C of N in T ms"
  digloop SERVER WANT STOPFILE MAXSECS MAXN INTERVAL_MS
      `dig +short +tries=1 +time=4 TXT whoami.test @SERVER` per try; a
      success is the answer WANT
"""

import asyncio
import hashlib
import os
import select
import socket
import subprocess
import sys
import time

from egtest import dispatch, family, mark_ready, out, pop_opt, start_tcp, stream_chunks, stream_sha

PIECE = 4096
READY = None  # --ready FILE, for every command
FINISH = None  # slowsrc --finish FILE


# ------------------------------------------------------------------ service


async def slow_source(reader, writer):
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        n, rate = (int(x) for x in line.split())
        t0 = time.monotonic()
        sent = 0
        for chunk in stream_chunks(n):
            for off in range(0, len(chunk), PIECE):
                piece = chunk[off : off + PIECE]
                # Paced by the bytes sent so far: never ahead of RATE.
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0 and not (FINISH and os.path.exists(FINISH)):
                    await asyncio.sleep(ahead)
                writer.write(piece)
                await writer.drain()
                sent += len(piece)
    except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def cmd_slowsrc(addr, port):
    async def main():
        srv = await start_tcp(slow_source, addr, int(port))
        mark_ready(READY)
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------ clients


def cmd_slowget(host, port, nbytes, rate):
    n, t0 = int(nbytes), time.monotonic()
    h, got, end = hashlib.sha256(), 0, "eof"
    try:
        with socket.create_connection((host, int(port)), timeout=15) as s:
            s.sendall(f"{n} {int(rate)}\n".encode())
            while True:
                b = s.recv(65536)
                if not b:
                    break
                if not got:
                    mark_ready(READY)
                h.update(b)
                got += len(b)
    except OSError as e:
        end = f"{type(e).__name__}: {e}"
    took = time.monotonic() - t0
    sha = h.hexdigest()
    if got == n and sha == stream_sha(n):
        out(f"ok got {got} bytes, sha256 {sha[:16]}.. as sent, in {took:.1f} s")
        return 0
    out(f"failed got {got}/{n} bytes ({end}), sha256 {'as sent' if sha == stream_sha(got) else 'differs'}, after {took:.1f} s")
    return 1


class Loop:
    """The bookkeeping every generator shares: tries, failures, the longest
    time between two successes."""

    def __init__(self, stopfile, maxsecs, maxn=None):
        self.stopfile, self.maxn = stopfile, int(maxn) if maxn else None
        self.t0 = time.monotonic()
        self.deadline = self.t0 + float(maxsecs)
        self.tries = self.ok = 0
        self.last_ok = None
        self.gap = 0.0
        self.why = {}

    def going(self):
        if self.maxn is not None and self.tries >= self.maxn:
            return False
        return time.monotonic() < self.deadline and not os.path.exists(self.stopfile)

    def success(self, now=None):
        now = time.monotonic() if now is None else now
        self.ok += 1
        if self.ok == 1:
            mark_ready(READY)
        if self.last_ok is not None:
            self.gap = max(self.gap, now - self.last_ok)
        self.last_ok = now

    def failure(self, why):
        self.why[why] = self.why.get(why, 0) + 1

    def report(self, extra=""):
        failed = self.tries - self.ok
        whys = ",".join(f"{k}:{v}" for k, v in sorted(self.why.items()))
        out(
            f"tries {self.tries} ok {self.ok} failed {failed} gap_ms {self.gap * 1000:.0f}"
            f" in {time.monotonic() - self.t0:.1f} s{' why=' + whys if whys else ''}{extra}"
        )
        return 0 if failed == 0 and self.tries > 0 else 1


def pace(t_start, interval):
    left = t_start + interval - time.monotonic()
    if left > 0:
        time.sleep(left)


def http_get(host, port):
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.settimeout(5)
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()


def cmd_connloop(host, port, want, stopfile, maxsecs, maxn, interval_ms):
    lp, interval = Loop(stopfile, maxsecs, maxn), int(interval_ms) / 1000
    while lp.going():
        t = time.monotonic()
        lp.tries += 1
        try:
            body = http_get(host, port)
            if body == want:
                lp.success()
            else:
                lp.failure(f"body={body[:30]!r}")
        except OSError as e:
            lp.failure(type(e).__name__)
        pace(t, interval)
    return lp.report()


def cmd_udpseq(host, port, stopfile, maxsecs, interval_ms):
    lp, interval = Loop(stopfile, maxsecs), int(interval_ms) / 1000
    dest = (host, int(port))
    s = socket.socket(family(host), socket.SOCK_DGRAM)  # unconnected: an ICMP error never ends it
    answered, peers, late = set(), {}, None
    next_send = time.monotonic()
    while True:
        now = time.monotonic()
        if late is None and not lp.going():
            late = now + 3  # the last replies may still be on their way
        if late is not None and (now >= late or len(answered) == lp.tries):
            break
        if late is None and now >= next_send:
            try:
                s.sendto(f"seq {lp.tries}".encode(), dest)
            except OSError as e:
                lp.failure(f"send:{type(e).__name__}")
            lp.tries += 1
            next_send += interval
        wait = (late if late is not None else next_send) - time.monotonic()
        if not select.select([s], [], [], max(0.0, wait))[0]:
            continue
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            continue
        words = data.decode(errors="replace").split()
        if len(words) == 3 and words[1] == "seq" and words[2].isdigit():
            n = int(words[2])
            peers[words[0]] = peers.get(words[0], 0) + 1
            if n not in answered:
                answered.add(n)
                lp.success()
    lost = [n for n in range(lp.tries) if n not in answered]
    lp.why.clear()
    if lost:
        lp.failure("unanswered")
        lp.why["unanswered"] = len(lost)
    shown = ",".join(str(n) for n in lost[:12]) + (",..." if len(lost) > 12 else "")
    lp.ok = len(answered)
    return lp.report(f" lost={shown or '-'} peers={','.join(f'{p}x{c}' for p, c in peers.items()) or '-'}")


def cmd_digloop(server, want, stopfile, maxsecs, maxn, interval_ms):
    lp, interval = Loop(stopfile, maxsecs, maxn), int(interval_ms) / 1000
    argv = ["dig", "+short", "+tries=1", "+time=4", "TXT", "whoami.test", "@" + server]
    while lp.going():
        t = time.monotonic()
        lp.tries += 1
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            ans = r.stdout.strip().replace('"', "").splitlines()
            if ans and ans[-1] == want:
                lp.success()
            else:
                lp.failure("timeout" if "timed out" in r.stdout + r.stderr else f"answer={(ans or ['-'])[-1][:30]}")
        except subprocess.TimeoutExpired:
            lp.failure("dig-hung")
        pace(t, interval)
    return lp.report()


def cmd_burst(host, port, n):
    t0, ok = time.monotonic(), 0
    for _ in range(int(n)):
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            ok += 1
        except OSError:
            pass
    out(f"connected {ok} of {n} in {(time.monotonic() - t0) * 1000:.0f} ms")
    return 0


COMMANDS = {
    "burst": cmd_burst,
    "slowsrc": cmd_slowsrc,
    "slowget": cmd_slowget,
    "connloop": cmd_connloop,
    "udpseq": cmd_udpseq,
    "digloop": cmd_digloop,
}

if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    READY, rest = pop_opt(sys.argv[2:], "--ready")
    FINISH, rest = pop_opt(rest, "--finish")
    sys.exit(dispatch(COMMANDS, sys.argv[1], rest))
