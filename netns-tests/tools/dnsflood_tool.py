#!/usr/bin/env python3
"""dnsflood_tool — the flooding container, the measuring neighbours and the
resolvers of egressd's DNS-over-TCP and source-rate suite
(netns-tests/dnsflood.sh). Python 3 standard library only. Every loop is
bounded in count and in time.

  flood PREFIX FIRST N COUNT SECS SIZE[,SIZE...]
      One UDP socket (one session in egressd) sends COUNT DNS queries to
      port 53 of PREFIX.FIRST .. PREFIX.(FIRST+N-1) in turn, as fast as it
      can, for at most SECS seconds; the sizes (each a valid query header
      and question, padded) are taken in turn from the list.
      "sent N bytes N errors N secs S"

  lookups HOST N GAP_MS TIMEOUT_MS [--name NAME] [--from-file FILE]
      N lookups (TXT NAME, default whoami.test), one every GAP_MS, each
      from a fresh socket as glibc does, and several in flight at once: an
      answer is waited for TIMEOUT_MS without holding back the next lookup.
      --from-file: only while FILE exists once started.
      "sent N answered N lost N p50_ms X max_ms X lost_at T,T,..."
      (lost_at: when each lookup that got no answer was sent, in seconds
      from the first)

  sessions HOST PORT RATE SECS
      New UDP sessions at RATE a second for SECS seconds: each a fresh
      socket sending one small datagram to HOST:PORT, closed at once.
      "sent N errors N secs S"

  resolver ADDR [--delay-ms MS] [--slow NAME SECS] [--close-after-slow SECS]
           [--ready FILE]
      A DNS-over-TCP server on ADDR:53 answering every query (TXT "ok",
      the same ID and question) after MS milliseconds (default 0), each
      on its own, so several are in flight on one connection and their
      answers may come out of order (RFC 7766). A query for NAME is
      answered after SECS seconds (SECS < 0: never). --close-after-slow:
      the connection that carried NAME is closed SECS seconds after it
      came (what egressd did before issue 23, at its answer timeout).
      Logs "conn PEER", "slow PEER", "closed-after-slow PEER" on stdout.

  peaks PID OUT_FILE STOP_FILE
      Samples PID's VmRSS and open descriptors every 50 ms until STOP_FILE
      exists (at most 120 s); writes "peak_kib N peak_fds N samples N".
"""

import asyncio
import os
import random
import select
import socket
import struct
import sys
import time

from egtest import dns_query, family, out, pop_opt, write_atomic


def padded_query(qid, size):
    q = dns_query(qid)
    return q + b"\0" * max(0, size - len(q))


def cmd_flood(prefix, first, n, count, secs, sizes):
    first, n, count, secs = int(first), int(n), int(count), float(secs)
    sizes = [int(s) for s in sizes.split(",")]
    bodies = [padded_query(random.randrange(65536), s) for s in sizes]
    addrs = [f"{prefix}.{first + i}" for i in range(n)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.settimeout(0.5)
    t0 = time.monotonic()
    end = t0 + secs
    sent = nbytes = errors = 0
    for i in range(count):
        if i % 32 == 0 and time.monotonic() >= end:
            break
        body = bodies[i % len(bodies)]
        try:
            nbytes += s.sendto(body, (addrs[i % n], 53))
            sent += 1
        except OSError:
            errors += 1
    out(f"sent {sent} bytes {nbytes} errors {errors} secs {time.monotonic() - t0:.2f}")
    return 0


def percentile(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


def cmd_lookups(host, n, gap_ms, timeout_ms, *opts):
    name, opts = pop_opt(list(opts), "--name")
    stop_file, opts = pop_opt(opts, "--from-file")
    if opts:
        raise ValueError(f"unknown options {opts}")
    name = name or "whoami.test"
    n, gap, timeout = int(n), float(gap_ms) / 1000, float(timeout_ms) / 1000
    fam = family(host)
    t0 = time.monotonic()
    hard_end = t0 + n * gap + timeout + 5
    pending = {}  # socket -> (qid, sent_at)
    lat, lost_at = [], []
    sent = 0
    next_at = t0
    while time.monotonic() < hard_end:
        now = time.monotonic()
        starting = sent < n and (stop_file is None or os.path.exists(stop_file))
        if starting and now >= next_at:
            qid = random.randrange(65536)
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.setblocking(False)
            try:
                s.sendto(dns_query(qid, name), (host, 53))
                pending[s] = (qid, now)
            except OSError:
                lost_at.append(now - t0)
                s.close()
            sent += 1
            next_at += gap
        for s, (qid, at) in list(pending.items()):
            if now - at >= timeout:
                lost_at.append(at - t0)
                del pending[s]
                s.close()
        if not starting and not pending:
            break
        wait = max(0.0, min(next_at - time.monotonic(), 0.05)) if starting else 0.05
        ready = select.select(list(pending), [], [], wait)[0] if pending else (time.sleep(wait) or [])
        for s in ready:
            try:
                data = s.recv(65536)
            except OSError:
                continue
            qid, at = pending[s]
            if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == qid:
                lat.append((time.monotonic() - at) * 1000)
                del pending[s]
                s.close()
    for s, (qid, at) in pending.items():
        lost_at.append(at - t0)
        s.close()
    lat.sort()
    lost = ",".join(f"{t:.2f}" for t in sorted(lost_at)) or "-"
    out(f"sent {sent} answered {len(lat)} lost {sent - len(lat)} p50_ms {percentile(lat, 50):.1f} "
        f"max_ms {(lat[-1] if lat else float('nan')):.1f} lost_at {lost}")
    return 0 if sent and len(lat) == sent else 1


def cmd_sessions(host, port, rate, secs):
    port, rate, secs = int(port), float(rate), float(secs)
    fam = family(host)
    t0 = time.monotonic()
    sent = errors = 0
    for i in range(int(rate * secs)):
        at = t0 + i / rate
        d = at - time.monotonic()
        if d > 0:
            time.sleep(d)
        if time.monotonic() > t0 + secs + 2:
            break
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.sendto(b"hello %d" % i, (host, port))
            sent += 1
        except OSError:
            errors += 1
    out(f"sent {sent} errors {errors} secs {time.monotonic() - t0:.2f}")
    return 0


def answer_to(q):
    """The query with QR (and RA) set and one TXT "ok" answer, or None."""
    if len(q) < 12:
        return None, ""
    labels, i = [], 12
    while i < len(q) and q[i] != 0 and len(labels) < 64:
        n = q[i]
        labels.append(q[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    end = i + 5
    if end > len(q):
        return None, ""
    flags = 0x8000 | (struct.unpack("!H", q[2:4])[0] & 0x0100) | 0x0080
    rdata = b"\x02ok"
    ans = struct.pack("!HHHIH", 0xC00C, 16, 1, 0, len(rdata)) + rdata
    return q[:2] + struct.pack("!HHHHH", flags, 1, 1, 0, 0) + q[12:end] + ans, ".".join(labels).lower()


async def resolver_conn(reader, writer, delay, slow, close_after):
    peer = writer.get_extra_info("peername")
    out(f"conn {peer}")
    lock = asyncio.Lock()
    tasks = set()

    async def send_later(secs, resp):
        await asyncio.sleep(secs)
        async with lock:
            if not writer.is_closing():
                writer.write(struct.pack("!H", len(resp)) + resp)
                await writer.drain()

    async def close_later(secs):
        await asyncio.sleep(secs)
        out(f"closed-after-slow {peer}")
        writer.close()

    try:
        while True:
            hdr = await asyncio.wait_for(reader.readexactly(2), 60)
            (n,) = struct.unpack("!H", hdr)
            q = await asyncio.wait_for(reader.readexactly(n), 60)
            resp, name = answer_to(q)
            if resp is None:
                continue
            secs = delay
            if slow is not None and name == slow[0]:
                out(f"slow {peer}")
                if close_after is not None:
                    tasks.add(asyncio.ensure_future(close_later(close_after)))
                if slow[1] < 0:
                    continue
                secs = slow[1]
            tasks.add(asyncio.ensure_future(send_later(secs, resp)))
            tasks = {t for t in tasks if not t.done()}
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
        pass
    finally:
        for t in tasks:
            t.cancel()
        writer.close()


async def resolver_main(addr, delay, slow, close_after, ready):
    srv = await asyncio.start_server(lambda r, w: resolver_conn(r, w, delay, slow, close_after),
                                     host=addr, port=53, backlog=1024, reuse_address=True)
    if ready:
        write_atomic(ready, "ready\n")
    async with srv:
        await asyncio.sleep(600)


def cmd_resolver(addr, *opts):
    opts = list(opts)
    delay, opts = pop_opt(opts, "--delay-ms")
    close_after, opts = pop_opt(opts, "--close-after-slow")
    ready, opts = pop_opt(opts, "--ready")
    slow = None
    if "--slow" in opts:
        i = opts.index("--slow")
        slow = (opts[i + 1].lower(), float(opts[i + 2]))
        opts = opts[:i] + opts[i + 3 :]
    if opts:
        raise ValueError(f"unknown options {opts}")
    asyncio.run(resolver_main(addr, float(delay or 0) / 1000, slow,
                              None if close_after is None else float(close_after), ready))
    return 0


def cmd_peaks(pid, out_file, stop_file):
    peak = fds = samples = 0
    end = time.monotonic() + 120
    while time.monotonic() < end and not os.path.exists(stop_file):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]))
                        break
            fds = max(fds, len(os.listdir(f"/proc/{pid}/fd")))
            samples += 1
        except OSError:
            break
        time.sleep(0.05)
    write_atomic(out_file, f"peak_kib {peak} peak_fds {fds} samples {samples}\n")
    return 0


def main(argv):
    cmds = {"flood": cmd_flood, "lookups": cmd_lookups, "sessions": cmd_sessions,
            "resolver": cmd_resolver, "peaks": cmd_peaks}
    if len(argv) < 2 or argv[1] not in cmds:
        sys.stderr.write(__doc__)
        return 2
    return cmds[argv[1]](*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
