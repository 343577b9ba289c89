#!/usr/bin/env python3
"""benchtool — helpers for scripts/bench.sh (Python 3 standard library only).

Sub-commands:

  serve --hold HOST:PORT --udpwho HOST:PORT --status FILE --ready FILE
      In the 'inet' namespace: a TCP holder (accepts, reads one byte, then
      holds the connection until the peer closes; FILE gets "held N" whenever
      N changes) and a UDP who-am-i (replies with the sender's "ip:port").
  hold HOST:PORT --count N --status FILE [--max-secs S]
      In the container: open N TCP connections (at most 200 connecting at
      once, each retried up to 3 times within --connect-secs), send one byte
      on each (so that even a lazy proxy goes upstream),
      write "open K failed F first-error E" to FILE, hold them until FILE.stop
      appears (or S seconds pass), then close them all.
  udpwho HOST:PORT [--timeout S]
      One datagram to the who-am-i; prints "seen=IP:PORT from=IP:PORT".
  iperf FILE
      Reads iperf3 -J output; prints one line of key=value: for TCP
      bps, bytes; for UDP bps, lost_percent, packets; or error=...
  cpu PID / rss PID
      user+sys seconds of a whole process (all threads) from /proc/PID/stat,
      or its VmRSS in KiB from /proc/PID/status.
  report --samples TSV --out DIR --impls "A B ..." [--title T]
      Medians with min..max, ratios against direct and between egressd and
      each peer, egressd against egressd_base (the same run's other build:
      ratio, per-repetition ratios, within the spread or not), issue 5's
      targets, and the gnuplot script for the chart.
      Writes DIR/table.txt, DIR/summary.tsv, DIR/chart.gp (+ data files).

Clients have bounded timeouts; nothing here loops without a bound.
"""

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import sys
import time

# The netns tools' shared helpers (netns-tests/tools/egtest.py).
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "netns-tests", "tools"))
from egtest import hostport, mark_ready, raise_nofile, start_tcp, write_atomic  # noqa: E402


# ------------------------------------------------------------------ serve

class WhoAmI(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)


async def serve(args):
    raise_nofile()
    held = 0
    last_written = -1

    async def on_conn(reader, writer):
        nonlocal held
        counted = False
        try:
            first = await asyncio.wait_for(reader.read(1), 30)
            if first:
                held += 1
                counted = True
                while await reader.read(4096):
                    pass
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        finally:
            if counted:
                held -= 1
            writer.close()

    host, port = hostport(args.hold)
    server = await start_tcp(on_conn, host, port)
    uhost, uport = hostport(args.udpwho)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(WhoAmI, local_addr=(uhost, uport))
    write_atomic(args.status, "held 0\n")
    mark_ready(args.ready)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        if held != last_written:
            write_atomic(args.status, f"held {held}\n")
            last_written = held
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    server.close()


# ------------------------------------------------------------------ hold

async def hold(args):
    raise_nofile()
    host, port = hostport(args.target)
    sem = asyncio.Semaphore(200)
    conns = []
    errors = []

    retried = 0
    give_up = time.monotonic() + args.connect_secs

    async def one():
        # A connection that fails or times out (a busy proxy's full accept
        # queue) is tried again, up to 3 times, until connect_secs have passed.
        nonlocal retried
        async with sem:
            for attempt in range(3):
                left = give_up - time.monotonic()
                if left <= 0:
                    errors.append("out of time")
                    return
                try:
                    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), min(10, left))
                    w.write(b"x")
                    await asyncio.wait_for(w.drain(), 10)
                    conns.append(w)
                    return
                except (asyncio.TimeoutError, OSError) as e:
                    if attempt == 2:
                        errors.append(type(e).__name__ + (f" {e.errno}" if getattr(e, "errno", None) else ""))
                    else:
                        retried += 1

    await asyncio.gather(*(one() for _ in range(args.count)))
    first = errors[0] if errors else "-"
    write_atomic(args.status, f"open {len(conns)} failed {len(errors)} retried {retried} first-error {first}\n")
    deadline = time.monotonic() + args.max_secs
    stopfile = args.status + ".stop"
    while time.monotonic() < deadline and not os.path.exists(stopfile):
        await asyncio.sleep(0.05)
    for w in conns:
        w.close()
    await asyncio.sleep(0.2)


# ------------------------------------------------------------------ udpwho

def udpwho(args):
    host, port = hostport(args.target)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(args.timeout)
    deadline = time.monotonic() + args.timeout * 3
    while time.monotonic() < deadline:
        s.sendto(b"who", (host, port))
        try:
            data, addr = s.recvfrom(512)
        except socket.timeout:
            continue
        print(f"seen={data.decode(errors='replace')} from={addr[0]}:{addr[1]}")
        return 0
    print("seen=none from=none (no reply)")
    return 1


# ------------------------------------------------------------------ iperf

def iperf(args):
    try:
        with open(args.file) as f:
            text = f.read()
        j = json.loads(text)
    except (OSError, ValueError) as e:
        tail = ""
        try:
            tail = open(args.file).read().strip().splitlines()[-1][:160]
        except (OSError, IndexError):
            pass
        print(f"error=no iperf3 JSON ({type(e).__name__}) {tail}")
        return 1
    if j.get("error"):
        print("error=" + str(j["error"]).replace("\n", " ")[:200])
        return 1
    end = j.get("end", {})
    udp = j.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
    # TCP: what the receiver got. UDP (iperf3 >= 3.10 has sum_received with
    # the receiver's loss; older ones only "sum"): received rate and loss.
    r = end.get("sum_received")
    if udp and (r is None or "lost_percent" not in r):
        r = end.get("sum")
    if r is not None:
        line = f"bps={r.get('bits_per_second', 0)} bytes={r.get('bytes', 0)}"
        if udp:
            line += (f" lost_percent={r.get('lost_percent', 'nan')} packets={r.get('packets', 0)}"
                     f" lost_packets={r.get('lost_packets', 0)}")
        print(line)
        return 0
    print("error=iperf3 JSON has no end summary")
    return 1


# ------------------------------------------------------------------ cpu / rss

def cpu(args):
    with open(f"/proc/{args.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime, stime are fields 14, 15.
    ticks = int(fields[11]) + int(fields[12])
    print(f"{ticks / os.sysconf('SC_CLK_TCK'):.3f}")


def rss(args):
    with open(f"/proc/{args.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                print(line.split()[1])
                return 0
    return 1


# ------------------------------------------------------------------ report

# key: (label, unit, higher_is_better, in_chart_vs_direct)
METRICS = [
    ("tcp_1stream", "TCP throughput, 1 stream (iperf3)", "Gbit/s", True),
    ("tcp_4streams", "TCP throughput, 4 streams (iperf3)", "Gbit/s", True),
    ("tcp_download", "TCP throughput inet->container, 1 stream (iperf3 -R)", "Gbit/s", True),
    ("tcp_conn_rate", "TCP connections/s (wrk, Connection: close)", "conn/s", True),
    ("dns_qps", "DNS queries/s (dnsperf)", "q/s", True),
    ("dns_loss", "DNS queries lost (dnsperf)", "%", False),
    ("udp_rate", "UDP at 200 Mbit/s offered: received", "Mbit/s", True),
    ("udp_loss", "UDP at 200 Mbit/s offered: loss", "%", False),
    ("cpu_per_gb", "proxy CPU (user+sys) per GB relayed", "s/GB", False),
    ("rss_idle", "proxy RSS, no flows", "MiB", False),
    ("rss_1000", "proxy RSS, 1000 idle TCP connections", "MiB", False),
    ("rss_after", "proxy RSS, 1000 idle TCP connections, after the load", "MiB", False),
]
METRIC_INFO = {k: (label, unit, hib) for k, label, unit, hib in METRICS}
PEERS = ["redsocks", "v2ray", "ipt2socks"]


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2g}"


def ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


def fmt_ratio(r):
    if r is None:
        return "n/a"
    if math.isinf(r):
        return "inf"
    return f"{r:.2f}x"


def report(args):
    impls = args.impls.split()
    samples = {}   # (impl, metric) -> [values]
    by_rep = {}    # (impl, metric) -> {rep: value}
    notes = {}     # (impl, metric) -> [notes of n/a samples]
    with open(args.samples) as f:
        header = f.readline()
        assert header.startswith("impl\t"), "not a bench samples TSV"
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 5:
                continue
            impl, metric, rep, value = parts[0], parts[1], parts[2], parts[3]
            note = parts[5] if len(parts) > 5 else ""
            key = (impl, metric)
            samples.setdefault(key, [])
            if value == "n/a":
                notes.setdefault(key, []).append(note)
            else:
                try:
                    samples[key].append(float(value))
                    by_rep.setdefault(key, {})[rep] = float(value)
                except ValueError:
                    notes.setdefault(key, []).append(f"unparsable value {value!r}")

    med = {}
    cells = {}
    for metric, _label, _unit, _hib in METRICS:
        for impl in impls:
            vals = samples.get((impl, metric), [])
            nas = notes.get((impl, metric), [])
            if vals:
                m = statistics.median(vals)
                med[(impl, metric)] = m
                c = fmt(m)
                if len(vals) > 1:
                    c += f" ({fmt(min(vals))}..{fmt(max(vals))})"
                if nas:
                    c += f" [{len(nas)} n/a]"
            elif nas:
                c = "n/a"
            else:
                c = "-"
            cells[(impl, metric)] = c

    out = []
    out.append(args.title)
    out.append("")
    out.append("Medians (min..max) over the repetitions; higher is better for ^, lower for v.")
    head = ["metric", "unit", ""] + impls
    rows = [head]
    for metric, label, unit, hib in METRICS:
        rows.append([label, unit, "^" if hib else "v"] + [cells[(i, metric)] for i in impls])
    out += table(rows)

    # Ratios of medians.
    rcols = []
    for impl in impls:
        if impl != "direct" and "direct" in impls:
            rcols.append((impl, "direct"))
    if "egressd" in impls:
        if "egressd_base" in impls:
            rcols.append(("egressd", "egressd_base"))
        for p in PEERS:
            if p in impls:
                rcols.append(("egressd", p))
    out.append("")
    out.append("Ratios of medians (A/B).")
    rows = [["metric", ""] + [f"{a}/{b}" for a, b in rcols]]
    ratio_rows = []
    for metric, label, unit, hib in METRICS:
        row = [metric, "^" if hib else "v"]
        for a, b in rcols:
            row.append(fmt_ratio(ratio(med.get((a, metric)), med.get((b, metric)))))
        rows.append(row)
        ratio_rows.append(row)
    out += table(rows)

    if "egressd" in impls and "egressd_base" in impls:
        out.append("")
        out += versus_base(samples, by_rep)

    # Reasons for n/a.
    reasons = []
    for metric, *_ in METRICS:
        for impl in impls:
            for n in sorted(set(notes.get((impl, metric), []))):
                if n:
                    reasons.append(f"  {impl} {metric}: {n}")
    if reasons:
        out.append("")
        out.append("n/a reasons:")
        out += reasons

    out.append("")
    out += targets(med, impls)
    text = "\n".join(out) + "\n"
    with open(os.path.join(args.out, "table.txt"), "w") as f:
        f.write(text)
    sys.stdout.write(text)

    with open(os.path.join(args.out, "summary.tsv"), "w") as f:
        f.write("metric\tunit\thigher_is_better\timpl\tmedian\tmin\tmax\tn\tn_na\n")
        for metric, label, unit, hib in METRICS:
            for impl in impls:
                vals = samples.get((impl, metric), [])
                nas = notes.get((impl, metric), [])
                if vals:
                    f.write(f"{metric}\t{unit}\t{int(hib)}\t{impl}\t{statistics.median(vals):.6g}\t"
                            f"{min(vals):.6g}\t{max(vals):.6g}\t{len(vals)}\t{len(nas)}\n")
                else:
                    f.write(f"{metric}\t{unit}\t{int(hib)}\t{impl}\tn/a\tn/a\tn/a\t0\t{len(nas)}\n")

    write_chart(args, med, impls)


def versus_base(samples, by_rep, a="egressd", b="egressd_base"):
    """a against b, interleaved in one run: is the difference of the medians
    larger than the spread (max - min) of either's repetitions?"""
    out = [f"{a} against {b} (same run, interleaved): ratio of medians, {a}/{b} per "
           "repetition (median, min..max),",
           f"the medians' difference and the larger min..max range of the two, both as % of {b}'s median;",
           "within noise = the difference is no larger than that range."]
    rows = [["metric", "", a, b, "ratio", "per rep", "diff", "range", "verdict"]]
    for metric, _label, unit, hib in METRICS:
        va, vb = samples.get((a, metric), []), samples.get((b, metric), [])
        if not va or not vb:
            continue
        ma, mb = statistics.median(va), statistics.median(vb)
        diff = ma - mb
        spread = max(max(va) - min(va), max(vb) - min(vb))
        ra, rb = by_rep.get((a, metric), {}), by_rep.get((b, metric), {})
        paired = [ratio(ra[r], rb[r]) for r in ra if r in rb]
        paired = [r for r in paired if r is not None and not math.isinf(r)]
        per_rep = (f"{statistics.median(paired):.3f} ({min(paired):.3f}..{max(paired):.3f})"
                   if paired else "n/a")

        def rel(x):
            return f"{100 * x / mb:+.1f}%" if mb else f"{fmt(x)} {unit}"
        if min(len(va), len(vb)) < 2:
            verdict = "one rep: no spread"
        elif abs(diff) <= spread:
            verdict = "within noise"
        else:
            verdict = f"{a} {'better' if (diff > 0) == hib else 'worse'}"
        rows.append([metric, "^" if hib else "v", fmt(ma), fmt(mb), fmt_ratio(ratio(ma, mb)), per_rep,
                     rel(diff), rel(spread).lstrip("+"), verdict])
    return out + table(rows)


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i < 3 else c.rjust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def targets(med, impls):
    """Issue 5's targets, egressd against the best peer of this run."""
    if "egressd" not in impls or not any(p in impls for p in PEERS):
        return []
    out = ["Issue 5 targets (egressd against the best peer in this run):"]

    def best(metric):
        vals = [(med[(p, metric)], p) for p in PEERS if (p, metric) in med]
        if not vals:
            return None, None
        hib = METRIC_INFO[metric][2]
        return (max(vals) if hib else min(vals))

    def line(name, ok, detail):
        state = "n/a " if ok is None else ("met " if ok else "MISS")
        out.append(f"  [{state}] {name}: {detail}")

    def check(metric, factor, name):
        eg = med.get(("egressd", metric))
        b, p = best(metric)
        if eg is None or b is None:
            line(name, None, "no value")
            return
        hib = METRIC_INFO[metric][2]
        goal = b * factor
        ok = eg >= goal if hib else eg <= goal
        r = ratio(eg, b)
        line(name, ok, f"egressd {fmt(eg)} vs {p} {fmt(b)} ({fmt_ratio(r)}; goal "
                       f"{'>=' if hib else '<='} {factor}x)")

    check("cpu_per_gb", 0.8, "CPU per GB <= 0.8x best peer")
    check("tcp_1stream", 1.1, "TCP 1 stream >= 1.1x best peer")
    check("tcp_4streams", 1.1, "TCP 4 streams >= 1.1x best peer")
    check("tcp_conn_rate", 1.2, "connections/s >= 1.2x best peer")
    check("dns_qps", 1.2, "DNS q/s >= 1.2x best peer")
    eg = med.get(("egressd", "dns_loss"))
    b, p = best("dns_qps")
    pl = med.get((p, "dns_loss")) if p else None
    if eg is None or pl is None:
        line("DNS loss <= that peer's", None, "no value")
    else:
        line("DNS loss <= that peer's", eg <= pl, f"egressd {fmt(eg)}% vs {p} {fmt(pl)}%")
    check("udp_loss", 1.0, "UDP loss at 200 Mbit/s <= best peer")
    check("rss_1000", 1.0, "RSS with 1000 idle conns <= best peer")
    check("rss_after", 1.0, "the same after the load <= best peer")
    eg = med.get(("egressd", "rss_idle"))
    if eg is None:
        line("RSS with no flows <= 2 MiB", None, "no value")
    else:
        line("RSS with no flows <= 2 MiB", eg <= 2.0, f"egressd {fmt(eg)} MiB")
    return out


def write_chart(args, med, impls):
    """Two panels: share of direct (throughput-like metrics), and egressd's
    advantage over each peer (>1 = egressd better, whichever way the metric
    points)."""
    d = args.out
    proxies = [i for i in impls if i != "direct"]
    top_metrics = [m for m, _l, _u, hib in METRICS if hib]
    with open(os.path.join(d, "chart-vs-direct.dat"), "w") as f:
        f.write("metric\t" + "\t".join(proxies) + "\n")
        for m in top_metrics:
            vals = []
            for p in proxies:
                r = ratio(med.get((p, m)), med.get(("direct", m)))
                vals.append("NaN" if r is None or math.isinf(r) else f"{r:.4f}")
            f.write(f"{m}\t" + "\t".join(vals) + "\n")
    peers = [p for p in impls if p not in ("egressd",)]
    with open(os.path.join(d, "chart-egressd.dat"), "w") as f:
        f.write("metric\t" + "\t".join(f"vs_{p}" for p in peers) + "\n")
        for m, _l, _u, hib in METRICS:
            vals = []
            for p in peers:
                a, b = med.get(("egressd", m)), med.get((p, m))
                r = ratio(a, b) if hib else ratio(b, a)
                # A zero on either side (e.g. no loss) makes no bar.
                ok = r is not None and not math.isinf(r) and r > 0 and a and b
                vals.append(f"{r:.4f}" if ok else "NaN")
            f.write(f"{m}\t" + "\t".join(vals) + "\n")
    ntop = len(proxies)
    nbot = len(peers)
    gp = f"""# generated by scripts/bench/benchtool.py report
set terminal pngcairo size 1400,1000 font ",10" noenhanced
set output "{os.path.join(d, 'ratios.png')}"
set datafile separator "\\t"
set datafile missing "NaN"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key outside right top vertical
set xtics rotate by -20 nomirror
set multiplot layout 2,1 title "{args.title}"
set title "each proxy as a share of direct kernel forwarding (higher is better; 1 = the topology's limit)"
set yrange [0:*]
set offsets 0, 0, 0.1, 0
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5 lc rgb "black"
plot for [i=2:{ntop + 1}] "{os.path.join(d, 'chart-vs-direct.dat')}" using i:xtic(1) title columnheader(i)
unset arrow 1
set title "egressd's advantage: egressd/peer where higher is better, peer/egressd where lower is better (>1 = egressd better, log scale)"
set logscale y 2
set yrange [*:*]
set offsets 0, 0, 0, 0
set arrow 2 from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5 lc rgb "black"
plot for [i=2:{nbot + 1}] "{os.path.join(d, 'chart-egressd.dat')}" using i:xtic(1) title columnheader(i)
unset multiplot
"""
    if not proxies or not peers or "egressd" not in impls:
        gp = "# not enough implementations for a chart\n"
    with open(os.path.join(d, "chart.gp"), "w") as f:
        f.write(gp)


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(prog="benchtool")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--hold", required=True)
    p.add_argument("--udpwho", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--ready", required=True)
    p = sub.add_parser("hold")
    p.add_argument("target")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--status", required=True)
    p.add_argument("--max-secs", type=float, default=60)
    p.add_argument("--connect-secs", type=float, default=30)
    p = sub.add_parser("udpwho")
    p.add_argument("target")
    p.add_argument("--timeout", type=float, default=1.0)
    p = sub.add_parser("iperf")
    p.add_argument("file")
    p = sub.add_parser("cpu")
    p.add_argument("pid")
    p = sub.add_parser("rss")
    p.add_argument("pid")
    p = sub.add_parser("report")
    p.add_argument("--samples", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--impls", required=True)
    p.add_argument("--title", default="egressd benchmark")
    args = ap.parse_args()
    if args.cmd == "serve":
        asyncio.run(serve(args))
        return 0
    if args.cmd == "hold":
        asyncio.run(hold(args))
        return 0
    return {"udpwho": udpwho, "iperf": iperf, "cpu": cpu, "rss": rss, "report": report}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
