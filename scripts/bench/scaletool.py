#!/usr/bin/env python3
"""scaletool — the helpers of scripts/bench/scale.sh (issue 25: egressd with
a thousand tunnels). Python 3 standard library only; every wait is bounded.

Sub-commands:

  serve HOST:PORT [--ready FILE] [--max-secs S]
      In 'inet': a who-am-i HTTP server. Any request gets "HTTP/1.0 200 OK"
      and a body that is the peer's address (the exit's egress address when
      the flow went through a tunnel), then the connection closes.
  exit ADDR PORT --users FILE [--ready FILE]
      In the exit namespace: netns-tests/tools/socks_server.py's SOCKS5
      server (RFC 1929, one user:pass per line of FILE), without its status
      sampler: that sampler looks at every connection 20 times a second,
      which with hundreds of pooled connections per exit costs a good part
      of a CPU on a small machine and would sit next to what is measured.
      Its idle limit stays (a greeted connection is closed after 300 s).
  probe --src IP --target HOST:PORT --expect IP --count N [--burst B]
        [--gap-ms G] [--timeout-s T] [--max-secs S] --append TSV
        --n N --metric M --rep R [--rtt-ms RTT]
      In the client namespace, bound to --src: a fresh TCP connection per
      probe, the time from connect() to the first byte of the answer to
      "GET /whoami" (the body must be --expect, or the probe failed). B
      probes start at once (a burst), groups G ms apart. One TSV row per
      probe: n, metric, rep, ms|n/a, note. Prints "n=.. ok=.. p50=.. p90=..".
  flows --srcs FILE --target HOST:PORT --expect IP [--conc C]
        [--timeout-s T] [--max-secs S]
      One who-am-i flow from each address of FILE (bound to it), at most C
      at once. Prints "ok=K failed=F secs=S [first-error: ...]".
  timeit --reps K [--timeout-s T] -- CMD...
      Runs CMD K times, one after the other; prints the wall time of each
      run in ms ("ms=a,b,c median=m rc=0,0,0").
  proc PID
      One line: cpu_s (user+sys, all threads) rss_kib fds threads vcs
      (voluntary context switches, all threads) nvcs.
  report --samples TSV --out DIR --ns "1 1000" [--rtt-ms RTT] [--title T]
         [--sources S] [--tenk K]
      Medians (min..max) per metric and N, the ratio of the largest N to
      the smallest; writes DIR/table.txt and DIR/summary.tsv, prints the
      table.
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree (run as root)
TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "netns-tests", "tools")
sys.path.insert(0, TOOLS)
from egtest import hostport, mark_ready, raise_nofile  # noqa: E402


def pct(vals, p):
    """Nearest-rank percentile (None for an empty list)."""
    if not vals:
        return None
    s = sorted(vals)
    k = max(1, -(-len(s) * p // 100))
    return s[int(min(len(s), k)) - 1]


# ------------------------------------------------------------------ serve

async def whoami(reader, writer):
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        peer = writer.get_extra_info("peername")[0]
        body = f"{peer}\n".encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def serve_main(args):
    host, port = hostport(args.listen)
    server = await asyncio.start_server(whoami, host=host, port=port, backlog=4096, reuse_address=True)
    mark_ready(args.ready)
    async with server:
        await asyncio.sleep(args.max_secs)


def serve(args):
    raise_nofile()
    asyncio.run(serve_main(args))
    return 0


# ------------------------------------------------------------------ exit

def exit_server(args):
    import socks_server  # netns-tests/tools: the pools suite's SOCKS5 exit

    class Exit(socks_server.Server):
        async def sampler(self):  # no status sampling: see the module doc
            return

    users = []
    with open(args.users) as f:
        for line in f:
            u, sep, p = line.strip().partition(":")
            if sep:
                users.append((u, p))
    raise_nofile()
    srv = Exit(users, None, None, None)
    try:
        asyncio.run(socks_server.serve(args.addr, args.port, srv, args.ready))
    except KeyboardInterrupt:
        pass
    return 0


# ------------------------------------------------------------------ probes

REQ = b"GET /whoami HTTP/1.0\r\nHost: bench\r\nUser-Agent: scaletool\r\n\r\n"


async def get_whoami(src, host, port, expect, timeout):
    """(ms to the first byte, error or ''): one flow from src."""
    w = None
    t0 = time.monotonic()
    ms = None
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(src, 0)), timeout)
        w.write(REQ)
        await w.drain()
        first = await asyncio.wait_for(r.read(1), timeout)
        if not first:
            return None, "closed without an answer"
        ms = (time.monotonic() - t0) * 1000
        rest = await asyncio.wait_for(r.read(4096), max(0.1, timeout - ms / 1000))
        data = first + rest
        while rest and len(data) < 65536:
            rest = await asyncio.wait_for(r.read(4096), timeout)
            data += rest
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
            return None, "not HTTP 200"
        seen = body.strip().decode(errors="replace")
        if seen != expect:
            return None, f"target saw {seen[:40]}"
        return ms, ""
    except asyncio.TimeoutError:
        return None, f"timeout ({'after first byte' if ms is not None else 'no answer'})"
    except OSError as e:
        return None, f"{type(e).__name__}: {e.strerror or e}"
    finally:
        if w is not None:
            w.close()


async def probe_main(args):
    host, port = hostport(args.target)
    end = time.monotonic() + args.max_secs
    results = []
    while len(results) < args.count and time.monotonic() < end:
        n = min(args.burst, args.count - len(results))
        results += await asyncio.gather(
            *(get_whoami(args.src, host, port, args.expect, args.timeout_s) for _ in range(n)))
        if len(results) < args.count:
            await asyncio.sleep(args.gap_ms / 1000)
    return results


def probe(args):
    raise_nofile()
    args.burst = max(1, args.burst)
    results = asyncio.run(probe_main(args))
    with open(args.append, "a") as f:
        for ms, err in results:
            v = f"{ms:.3f}" if ms is not None else "n/a"
            f.write(f"{args.n}\t{args.metric}\t{args.rep}\t{v}\t{err}\n")
    ok = [ms for ms, _ in results if ms is not None]
    bad = [err for ms, err in results if ms is None]
    line = f"n={len(results)} ok={len(ok)} failed={len(bad)}"
    if len(results) < args.count:
        line += f" (stopped after {args.max_secs:g} s)"
    if ok:
        p50, p90 = pct(ok, 50), pct(ok, 90)
        line += f" p50={p50:.1f} p90={p90:.1f} ms"
        if args.rtt_ms:
            line += f" ({p50 / args.rtt_ms:.2f} / {p90 / args.rtt_ms:.2f} RTT)"
    if bad:
        line += f" first-error: {bad[0]}"
    print(line, flush=True)
    return 0 if ok else 1


# ------------------------------------------------------------------ flows

async def flows_main(args, srcs):
    host, port = hostport(args.target)
    sem = asyncio.Semaphore(args.conc)
    t0 = time.monotonic()
    errs = []
    ok = 0

    async def one(src):
        nonlocal ok
        async with sem:
            if time.monotonic() - t0 > args.max_secs:
                errs.append("deadline")
                return
            ms, err = await get_whoami(src, host, port, args.expect, args.timeout_s)
            if ms is None:
                errs.append(f"{src}: {err}")
            else:
                ok += 1
            if args.gap_ms:
                await asyncio.sleep(args.gap_ms / 1000)

    try:
        await asyncio.wait_for(asyncio.gather(*(one(s) for s in srcs)), args.max_secs + args.timeout_s + 5)
    except asyncio.TimeoutError:
        pass
    return ok, errs, time.monotonic() - t0


def flows(args):
    raise_nofile()
    with open(args.srcs) as f:
        srcs = [line.strip() for line in f if line.strip()]
    ok, errs, secs = asyncio.run(flows_main(args, srcs))
    failed = len(srcs) - ok
    line = f"ok={ok} failed={failed} secs={secs:.1f}"
    if errs:
        line += f" first-error: {errs[0]}"
    print(line, flush=True)
    return 0 if failed == 0 else 1


# ------------------------------------------------------------------ timeit, proc

def timeit(args):
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    times, rcs = [], []
    for _ in range(args.reps):
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=args.timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        times.append((time.monotonic() - t0) * 1000)
        rcs.append(str(rc))
    print(f"ms={','.join(f'{t:.1f}' for t in times)} median={statistics.median(times):.1f} "
          f"rc={','.join(rcs)}", flush=True)
    return 0 if all(r == "0" for r in rcs) else 1


def proc(args):
    pid = args.pid
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / hz  # utime, stime (fields 14, 15)
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    vcs = nvcs = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vcs += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        nvcs += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    print(f"cpu_s={cpu:.2f} rss_kib={rss} fds={fds} threads={threads} vcs={vcs} nvcs={nvcs}")
    return 0


# ------------------------------------------------------------------ report

# (metric, label, unit in the table); the order of the table.
METRICS = [
    ("warmup_s", "start: until the exits hold a steady count", "s"),
    ("rest_cpu_pct", "at rest: CPU, % of one core", "%"),
    ("rest_wakeups_s", "at rest: voluntary context switches", "/s"),
    ("rest_syscalls_s", "at rest: system calls", "/s"),
    ("rest_rss_mib", "at rest: RSS", "MiB"),
    ("rest_fds", "at rest: open fds", ""),
    ("rest_exit_conns", "at rest: ESTABLISHED TCP at the exits", ""),
    ("lat_warm_p50", "first byte, tunnel used recently: p50", "ms"),
    ("lat_warm_p90", "first byte, tunnel used recently: p90", "ms"),
    ("lat_burst1_p50", "first byte, a container's first burst: p50", "ms"),
    ("lat_burst1_p90", "first byte, a container's first burst: p90", "ms"),
    ("lat_later_p50", "first byte, its later bursts: p50", "ms"),
    ("lat_later_p90", "first byte, its later bursts: p90", "ms"),
    ("delayline_late_p99", "the delay line's own lateness: p99", "ms"),
    ("flows_1000_ok", "{S} sources, one flow each: ok", ""),
    ("top_once_ms", "`egressd top --once`, {S} sources", "ms"),
    ("stats_ms", "`egressd stats`, {S} sources", "ms"),
    ("scrape_ms", "GET /metrics (curl), {S} sources", "ms"),
    ("scrape_kib", "GET /metrics: body size", "KiB"),
    ("turn_flows_us", "longest worker turn, during the {S} new flows", "us"),
    ("worker_turn_max_us", "longest worker turn, during the reads (light load)", "us"),
    ("route_set_10k_s", "`egressd route set` x {K}", "s"),
    ("rss_10k_before_mib", "{K} sources: RSS before", "MiB"),
    ("rss_10k_set_mib", "{K} sources: RSS after route set", "MiB"),
    ("flows_10k_ok", "{K} sources, one flow each: ok", ""),
    ("rss_10k_flows_mib", "{K} sources: RSS after their flows", "MiB"),
    ("rss_10k_idle_mib", "{K} sources: RSS after the idle wait", "MiB"),
    ("source_series_idle", "{K} sources: source series left after the idle wait", ""),
    ("rss_10k_unrouted_mib", "{K} sources: RSS after route del of them all", "MiB"),
    ("leak_pkts", "packets out through gw's uplink (must be 0)", ""),
    ("docker_churn", "Docker churn (SCALE_DOCKER=1)", ""),
]
LATENCY = {m for m, _, _ in METRICS if m.startswith("lat_")}
# Metrics whose note says something worth a line under the table (others'
# notes show only when they report an error or the value is n/a).
NOTED = {"warmup_s", "rest_syscalls_s", "flows_1000_ok", "flows_10k_ok", "route_set_10k_s",
         "rss_10k_idle_mib", "source_series_idle", "scrape_kib", "top_once_ms", "turn_flows_us",
         "worker_turn_max_us"}


def fmt(v):
    a = abs(v)
    if v == int(v) and a < 1e9:
        return str(int(v))
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    return f"{v:.3g}"


def text_table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def report(args):
    ns = args.ns.split()
    vals, notes = {}, {}
    with open(args.samples) as f:
        if not f.readline().startswith("n\t"):
            raise ValueError("not a scale samples TSV")
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 5:
                continue
            key = (p[0], p[1])
            vals.setdefault(key, [])
            note = p[5] if len(p) > 5 else ""
            if p[3] == "n/a":
                notes.setdefault(key, []).append(note)
            else:
                vals[key].append(float(p[3]))
                if note:
                    notes.setdefault(key, []).append(note)
    known = {m for m, _, _ in METRICS}
    extra = sorted({m for _, m in vals} - known)
    metrics = METRICS + [(m, m, "") for m in extra]
    rows = [["metric", "unit"] + [f"N={n}" for n in ns] + ([f"N={ns[-1]}/N={ns[0]}"] if len(ns) > 1 else [])]
    tsv = ["metric\tunit\t" + "\t".join(f"N={n}\tN={n}_min\tN={n}_max\tN={n}_count" for n in ns)]
    why = []
    for m, label, unit in metrics:
        if not any((n, m) in vals for n in ns):
            continue
        cells, meds, t = [], [], [m, unit]
        for n in ns:
            v = vals.get((n, m), [])
            if not v:
                reason = (notes.get((n, m)) or ["not measured"])[0]
                cells.append("n/a")
                why.append(f"  N={n} {m}: n/a, {reason}")
                meds.append(None)
                t += ["n/a", "", "", "0"]
                continue
            med = statistics.median(v)
            meds.append(med)
            c = fmt(med)
            if len(v) > 1 and min(v) != max(v):
                c += f" ({fmt(min(v))}..{fmt(max(v))})"
            if m in LATENCY and args.rtt_ms:
                c += f" = {med / args.rtt_ms:.2f} RTT"
            cells.append(c)
            t += [f"{med:g}", f"{min(v):g}", f"{max(v):g}", str(len(v))]
            for note in notes.get((n, m), [])[:1]:
                if m in NOTED or "error" in note:
                    why.append(f"  N={n} {m}: {note}")
        if len(ns) > 1:
            a, b = meds[-1], meds[0]
            cells.append("n/a" if a is None or b is None else ("-" if b == 0 else f"{a / b:.2f}x"))
        rows.append([label.format(S=args.sources, K=args.tenk), unit] + cells)
        tsv.append("\t".join(t))
    out = [args.title, ""] if args.title else []
    out.append("median over the repetitions (min..max when they differ); latency: p50/p90 of each")
    out.append("repetition's probes, median over the repetitions; lower is better everywhere but 'ok'.")
    out += text_table(rows)
    if why:
        out += ["", "notes:"] + why
    text = "\n".join(out) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "summary.tsv"), "w") as f:
        f.write("\n".join(tsv) + "\n")
    print(text, end="")
    return 0


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(prog="scaletool", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("listen")
    s.add_argument("--ready")
    s.add_argument("--max-secs", type=float, default=7200)
    s.set_defaults(fn=serve)
    s = sub.add_parser("exit")
    s.add_argument("addr")
    s.add_argument("port")
    s.add_argument("--users", required=True)
    s.add_argument("--ready")
    s.set_defaults(fn=exit_server)
    for name, fn in (("probe", probe), ("flows", flows)):
        s = sub.add_parser(name)
        s.add_argument("--target", required=True)
        s.add_argument("--expect", required=True)
        s.add_argument("--timeout-s", type=float, default=10)
        s.add_argument("--max-secs", type=float, default=120)
        s.set_defaults(fn=fn)
        if name == "flows":
            # A pause after each flow (with --conc 1: a light, paced load).
            s.add_argument("--gap-ms", type=float, default=0)
        if name == "probe":
            s.add_argument("--src", required=True)
            s.add_argument("--count", type=int, required=True)
            s.add_argument("--burst", type=int, default=1)
            s.add_argument("--gap-ms", type=float, default=100)
            s.add_argument("--append", required=True)
            s.add_argument("--n", required=True)
            s.add_argument("--metric", required=True)
            s.add_argument("--rep", required=True)
            s.add_argument("--rtt-ms", type=float, default=0)
        else:
            s.add_argument("--srcs", required=True)
            s.add_argument("--conc", type=int, default=32)
    s = sub.add_parser("timeit")
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--timeout-s", type=float, default=30)
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(fn=timeit)
    s = sub.add_parser("proc")
    s.add_argument("pid")
    s.set_defaults(fn=proc)
    s = sub.add_parser("report")
    s.add_argument("--samples", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--ns", required=True)
    s.add_argument("--rtt-ms", type=float, default=0)
    s.add_argument("--title", default="")
    s.add_argument("--sources", default="1000")
    s.add_argument("--tenk", default="10000")
    s.set_defaults(fn=report)
    args = ap.parse_args()
    try:
        return args.fn(args)
    except (OSError, ValueError) as e:
        print(f"error: {type(e).__name__}: {e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
