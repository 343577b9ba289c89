#!/usr/bin/env python3
"""latency — the latency client and report of scripts/bench.sh (issue 13).
Python 3 standard library only; every wait is bounded.

Sub-commands:

  connect HOST:PORT [--count N]
      N TCP connect() times (ms), one after the other (from gw to the exit:
      the delay line's round trip). Prints "n=.. min=.. p50=.. max=..".
  probe tcp|dns --impl I --rep R --metric M --append TSV [--count N]
        [--burst B] [--gap-ms G] [--timeout-s T] [--max-secs S] [--give-up K]
        --tcp HOST:PORT --expect-ip IP --dns IP --dns-name NAME --dns-answer IP
        [--rtt-ms RTT]
      In the container. tcp: a fresh connection, time from connect() to the
      first byte of the answer to "GET /whoami" (the body must be the exit's
      address, or the probe counts as failed). dns: a fresh UDP socket (a new
      source port: a new UDP session at the proxy), time from sendto() to the
      answer (matching ID, the expected A record). --burst B: B probes start
      at once (a burst larger than a warm pool); otherwise one at a time.
      G ms pass between probes (or bursts); after K groups in a row without
      any answer the rest is not run (said in the summary). One TSV row per probe:
      impl, metric, rep, ms (or n/a), note. Prints a one-line summary.
  report --samples TSV --out DIR --impls "A B" --rtt-ms RTT [--title T] [--delay TEXT]
      p50/p99 in ms and RTT units per implementation and metric, failures,
      issue 13's targets (met or MISSED, with the numbers), and what a user
      would gain at RTT 100 and 200 ms. Writes DIR/latency.txt and
      DIR/latency-summary.tsv, and prints the table.
"""

import argparse
import errno
import os
import random
import selectors
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the tree (run as root)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchtool import hostport, raise_nofile, table  # noqa: E402


def pct(vals, p):
    """Nearest-rank percentile of a list (None if empty)."""
    if not vals:
        return None
    s = sorted(vals)
    k = max(1, -(-len(s) * p // 100))  # ceil(n * p / 100)
    return s[int(min(len(s), k)) - 1]


# ------------------------------------------------------------------ connect

def connect(args):
    host, port = hostport(args.target)
    times = []
    errs = 0
    for _ in range(args.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        t0 = time.monotonic()
        try:
            s.connect((host, port))
            times.append((time.monotonic() - t0) * 1000)
        except OSError:
            errs += 1
        finally:
            s.close()
        time.sleep(0.02)
    if not times:
        print(f"n=0 failed={errs}")
        return 1
    print(f"n={len(times)} failed={errs} min={min(times):.1f} p50={pct(times, 50):.1f} max={max(times):.1f}")
    return 0


# ------------------------------------------------------------------ probes

def dns_query(name, qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", 1, 1)


def skip_name(b, i):
    while i < len(b):
        n = b[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n
    raise ValueError("truncated name")


def dns_check(b, qid, want):
    """'' if b answers qid with an A record `want`, else why not."""
    if len(b) < 12:
        return "short answer"
    rid, flags, qd, an = struct.unpack("!HHHH", b[:8])
    if rid != qid:
        return "wrong id"
    if flags & 0xF:
        return f"rcode {flags & 0xF}"
    i = 12
    try:
        for _ in range(qd):
            i = skip_name(b, i) + 4
        for _ in range(an):
            i = skip_name(b, i)
            typ, _cls, _ttl, rdlen = struct.unpack("!HHIH", b[i:i + 10])
            i += 10
            if typ == 1 and rdlen == 4 and socket.inet_ntoa(b[i:i + 4]) == want:
                return ""
            i += rdlen
    except (ValueError, struct.error):
        return "malformed answer"
    return "no expected A record"


class Probe:
    __slots__ = ("sock", "t0", "ms", "err", "state", "buf", "qid")


def start_probe(kind, args):
    p = Probe()
    p.ms = None
    p.err = ""
    p.buf = b""
    if kind == "tcp":
        p.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        p.sock.setblocking(False)
        p.t0 = time.monotonic()
        rc = p.sock.connect_ex(hostport(args.tcp))
        if rc not in (0, errno.EINPROGRESS):
            p.err = f"connect: {os.strerror(rc)}"
            p.state = "done"
        else:
            p.state = "connecting"
    else:
        p.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        p.sock.setblocking(False)
        p.qid = random.randrange(65536)
        p.t0 = time.monotonic()
        try:
            p.sock.sendto(dns_query(args.dns_name, p.qid), (args.dns, 53))
            p.state = "waiting"
        except OSError as e:
            p.err = f"sendto: {e.strerror}"
            p.state = "done"
    return p


def run_group(kind, n, args):
    """Start n probes at once and drive them to the end (bounded)."""
    sel = selectors.DefaultSelector()
    probes = [start_probe(kind, args) for _ in range(n)]
    live = 0
    for p in probes:
        if p.state == "done":
            continue
        sel.register(p.sock, selectors.EVENT_WRITE if p.state == "connecting" else selectors.EVENT_READ, p)
        live += 1
    deadline = time.monotonic() + args.timeout_s
    req = b"GET /whoami HTTP/1.0\r\nHost: bench\r\nUser-Agent: latency.py\r\n\r\n"
    while live and time.monotonic() < deadline:
        for key, _ev in sel.select(max(0.0, deadline - time.monotonic())):
            p = key.data
            now = time.monotonic()
            finished = False
            if p.state == "connecting":
                rc = p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc:
                    p.err, finished = f"connect: {os.strerror(rc)}", True
                else:
                    try:
                        p.sock.send(req)
                        p.state = "sent"
                        sel.modify(p.sock, selectors.EVENT_READ, p)
                    except OSError as e:
                        p.err, finished = f"send: {e.strerror}", True
            elif p.state in ("sent", "reading"):
                try:
                    data = p.sock.recv(4096)
                except OSError as e:
                    data, p.err = b"", f"recv: {e.strerror}"
                if data and p.state == "sent":
                    p.ms = (now - p.t0) * 1000
                    p.state = "reading"
                if data and len(p.buf) < 65536:
                    p.buf += data
                if not data:
                    finished = True
                    if not p.err:
                        head, _, body = p.buf.partition(b"\r\n\r\n")
                        if p.ms is None:
                            p.err = "closed without an answer"
                        elif not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
                            p.err = "not HTTP 200: " + head.split(b"\r\n")[0].decode(errors="replace")[:60]
                        elif body.strip().decode(errors="replace") != args.expect_ip:
                            p.err = "target saw " + body.strip().decode(errors="replace")[:40]
            elif p.state == "waiting":
                try:
                    data = p.sock.recv(4096)
                except OSError as e:
                    p.err, finished = f"recv: {e.strerror}", True
                else:
                    why = dns_check(data, p.qid, args.dns_answer)
                    if why == "wrong id":
                        continue  # not ours: keep waiting
                    p.ms = (now - p.t0) * 1000
                    p.err, finished = why, True
            if finished:
                sel.unregister(p.sock)
                p.state = "done"
                live -= 1
    for p in probes:
        if p.state != "done":
            p.err = p.err or f"timeout after {args.timeout_s:g} s in state {p.state}"
            sel.unregister(p.sock)
        p.sock.close()
        if p.err:
            p.ms = None
    sel.close()
    return probes


def probe(args):
    raise_nofile()
    burst = max(1, args.burst)
    end = time.monotonic() + args.max_secs
    results = []
    dead_groups = 0
    gave_up = ""
    while len(results) < args.count and time.monotonic() < end:
        n = min(burst, args.count - len(results))
        group = run_group(args.kind, n, args)
        results += group
        # A path that answers nothing would burn a timeout per probe: stop
        # after --give-up groups in a row without a single answer.
        dead_groups = 0 if any(p.ms is not None for p in group) else dead_groups + 1
        if dead_groups >= args.give_up:
            gave_up = f" (gave up after {dead_groups} groups without an answer)"
            break
        time.sleep(args.gap_ms / 1000)
    with open(args.append, "a") as f:
        for p in results:
            v = f"{p.ms:.3f}" if p.ms is not None else "n/a"
            f.write(f"{args.impl}\t{args.metric}\t{args.rep}\t{v}\t{p.err}\n")
    ok = [p.ms for p in results if p.ms is not None]
    bad = [p.err for p in results if p.ms is None]
    short = args.count - len(results)
    line = f"n={len(results)} ok={len(ok)} failed={len(bad)}"
    if short:
        line += gave_up or f" (stopped after {args.max_secs:g} s, {short} not run)"
    if ok:
        p50, p99 = pct(ok, 50), pct(ok, 99)
        line += f" p50={p50:.1f} ms p99={p99:.1f} ms"
        if args.rtt_ms:
            line += f" ({p50 / args.rtt_ms:.2f} / {p99 / args.rtt_ms:.2f} RTT)"
    if bad:
        line += f" first-error: {bad[0]}"
    print(line)
    return 0 if ok else 1


# ------------------------------------------------------------------ report

LAT_METRICS = [
    ("tcp_ttfb", "TCP connect() to first byte, one at a time"),
    ("dns_first", "DNS first answer, new UDP session, one at a time"),
    ("tcp_ttfb_burst", "TCP connect() to first byte, bursts (pool exhausted)"),
    ("dns_first_burst", "DNS first answer, bursts (pool exhausted)"),
]
PEERS = ["redsocks", "v2ray", "ipt2socks"]


def report(args):
    impls = args.impls.split()
    rtt = args.rtt_ms
    vals, errs = {}, {}
    with open(args.samples) as f:
        assert f.readline().startswith("impl\t"), "not a latency samples TSV"
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                continue
            key = (parts[0], parts[1])
            vals.setdefault(key, [])
            if parts[3] == "n/a":
                errs.setdefault(key, []).append(parts[4] if len(parts) > 4 else "")
            else:
                vals[key].append(float(parts[3]))

    stat = {}  # (impl, metric) -> (p50, p99, n_ok, n_failed)
    for m, _ in LAT_METRICS:
        for i in impls:
            ok = vals.get((i, m), [])
            stat[(i, m)] = (pct(ok, 50), pct(ok, 99), len(ok), len(errs.get((i, m), [])))

    def cell(v):
        return "n/a" if v is None else f"{v:.1f} ms = {v / rtt:.2f} RTT"

    out = [args.title, ""]
    if args.delay:
        out.append(f"Delay line (RTT {rtt:g} ms, RTT/2 each way) seen from gw: {args.delay}")
    out.append("p50 and p99 over all repetitions (nearest rank); lower is better. 1 RTT is the")
    out.append("physical limit for both (the exit is RTT away; the target and DNS sit next to it).")
    rows = [["metric", "", ""] + impls]
    for m, label in LAT_METRICS:
        for q, idx in (("p50", 0), ("p99", 1)):
            rows.append([label if idx == 0 else "", m, q] + [cell(stat[(i, m)][idx]) for i in impls])
        rows.append(["", m, "ok/failed"] + [f"{stat[(i, m)][2]}/{stat[(i, m)][3]}" for i in impls])
    out += table(rows)

    reasons = []
    for m, _ in LAT_METRICS:
        for i in impls:
            e = errs.get((i, m), [])
            if e:
                reasons.append(f"  {i} {m}: {len(e)} failed, e.g. {sorted(set(e))[0]}")
    if reasons:
        out += ["", "failures:"] + reasons

    v = stat.get(("v2ray", "dns_first"))
    if v and v[2] == 0 and v[3] > 0:
        out += ["", "v2ray DNS: V2Ray's SOCKS client puts the datagram's destination into UDP ASSOCIATE's",
                "DST field; danted takes it as the client's own address and relays only datagrams from",
                "there (its log: 'udp/udpassociate [: 203.0.113.53.53 ...'), so V2Ray's DNS through",
                "danted gets no answer: the two do not interwork (not the delay line: the others' UDP does)."]
    out += ["", "Exit: danted (negotiate timeout 30 s by default, so a pooled connection may wait that",
            "long for its request). A V2Ray SOCKS inbound as exit closes a connection whose request",
            "has not come within a few seconds (its handshake policy): pools must notice such servers."]
    out += ["", f"Issue 13 targets (RTT {rtt:g} ms, p50; peers need about 4 RTT):"]
    eg = "egressd" if "egressd" in impls else None

    def best_peer(m):
        c = [(stat[(p, m)][0], p) for p in PEERS if p in impls and stat[(p, m)][0] is not None]
        return min(c) if c else (None, None)

    def target(m, limit, name, note):
        if eg is None or stat[(eg, m)][0] is None:
            out.append(f"  [n/a ] {name}: no egressd value")
            return
        v = stat[(eg, m)][0]
        bv, bp = best_peer(m)
        state = "met " if v <= limit * rtt else "MISS"
        peer = f"; best peer {bp} {bv / rtt:.2f} RTT" if bv is not None else ""
        out.append(f"  [{state}] {name}: egressd {v / rtt:.2f} RTT ({v:.1f} ms), goal <= {limit} RTT"
                   f" ({limit * rtt:.0f} ms){peer}{note}")

    target("tcp_ttfb", 1.2, "tcp_ttfb with a warm pool <= 1.2 RTT", "")
    target("dns_first", 1.2, "dns_first with a warm pool <= 1.2 RTT", "")
    target("tcp_ttfb_burst", 2.2, "tcp_ttfb with the pool exhausted <= 2.2 RTT", "")

    if eg is not None:
        out += ["", "What a user waits per new connection / per DNS lookup at a farther exit, egressd's p50"
                " taken as whole round trips + what is left (processing, scheduling):"]
        for far in (100, 200):
            parts = []
            for m, goal, what in (("tcp_ttfb", 1.2, "first byte"), ("dns_first", 1.2, "DNS answer")):
                v = stat[(eg, m)][0]
                if v is None:
                    continue
                trips = max(1, round(v / rtt))
                rest = v - trips * rtt
                now_ms = trips * far + rest
                parts.append(f"{what} {now_ms:.0f} ms today ({trips} RTT {rest:+.0f} ms), <= {goal * far:.0f} ms"
                             f" at the target ({now_ms - goal * far:.0f} ms less)")
            out.append(f"  RTT {far} ms: " + "; ".join(parts))

    text = "\n".join(out) + "\n"
    with open(os.path.join(args.out, "latency.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "latency-summary.tsv"), "w") as f:
        f.write("metric\timpl\tp50_ms\tp99_ms\tp50_rtt\tp99_rtt\tn_ok\tn_failed\trtt_ms\n")
        for m, _ in LAT_METRICS:
            for i in impls:
                p50, p99, nok, nbad = stat[(i, m)]
                g = (lambda v: "n/a" if v is None else f"{v:.3f}")
                r = (lambda v: "n/a" if v is None else f"{v / rtt:.3f}")
                f.write(f"{m}\t{i}\t{g(p50)}\t{g(p99)}\t{r(p50)}\t{r(p99)}\t{nok}\t{nbad}\t{rtt:g}\n")
    sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(prog="latency")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("connect")
    p.add_argument("target")
    p.add_argument("--count", type=int, default=20)
    p = sub.add_parser("probe")
    p.add_argument("kind", choices=["tcp", "dns"])
    p.add_argument("--impl", required=True)
    p.add_argument("--rep", default="1")
    p.add_argument("--metric", required=True)
    p.add_argument("--append", required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--burst", type=int, default=1)
    p.add_argument("--gap-ms", type=float, default=100)
    p.add_argument("--timeout-s", type=float, default=10)
    p.add_argument("--max-secs", type=float, default=300)
    p.add_argument("--give-up", type=int, default=3)
    p.add_argument("--tcp", default="203.0.113.10:80")
    p.add_argument("--expect-ip", default="198.51.100.1")
    p.add_argument("--dns", default="203.0.113.53")
    p.add_argument("--dns-name", default="www.bench.test")
    p.add_argument("--dns-answer", default="203.0.113.10")
    p.add_argument("--rtt-ms", type=float, default=0)
    p = sub.add_parser("report")
    p.add_argument("--samples", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--impls", required=True)
    p.add_argument("--rtt-ms", type=float, required=True)
    p.add_argument("--title", default="egressd latency bench")
    p.add_argument("--delay", default="")
    args = ap.parse_args()
    return {"connect": connect, "probe": probe, "report": report}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
