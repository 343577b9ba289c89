#!/usr/bin/env python3
"""delayline — a user-space delay line on a TUN device (Python 3 stdlib only).

The kernel here has no netem, so scripts/bench.sh's latency part makes the
delay itself: policy routing in the exit's namespace sends every IP packet
between the exit and the gateway into a TUN device; this program reads each
one and writes it back into the same device after a fixed delay, and the
kernel then delivers (or forwards) it as if it had just arrived.

Each packet crosses the TUN device once, in its own direction, so --delay-ms
is the ONE-WAY delay: a round trip (request there, answer back) costs twice
it. scripts/bench.sh passes RTT/2.

    delayline.py --dev NAME --delay-ms D [--max-queue N] [--max-secs S]
                 [--stats FILE] [--ready FILE]

The device is created (IFF_TUN | IFF_NO_PI) and exists while this runs; the
caller gives it addresses/routes once --ready appears. Bounded: at most
--max-queue packets wait (more are dropped and counted), the program exits
after --max-secs or on SIGTERM/SIGINT, writing to --stats: packets, bytes,
dropped, and how late packets went out against their due time (p50, p99,
max, in ms) — the line's own accuracy.
"""

import argparse
import collections
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def main():
    ap = argparse.ArgumentParser(prog="delayline")
    ap.add_argument("--dev", required=True)
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--max-queue", type=int, default=20000)
    ap.add_argument("--max-secs", type=float, default=1800)
    ap.add_argument("--stats")
    ap.add_argument("--ready")
    args = ap.parse_args()

    delay = args.delay_ms / 1000.0
    fd = open_tun(args.dev)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    if args.ready:
        with open(args.ready, "w") as f:
            f.write("ready\n")

    # The delay is the same for every packet, so due times are in arrival
    # order: a FIFO is enough.
    queue = collections.deque()
    packets = nbytes = dropped = write_err = 0
    late = []            # lateness samples in ms (bounded: a ring of the last 200k)
    late_cap = 200000
    late_i = 0
    max_q = 0
    end = time.monotonic() + args.max_secs
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    while not stop:
        now = time.monotonic()
        if now >= end:
            break
        # Send everything that is due.
        while queue and queue[0][0] <= now:
            due, pkt = queue.popleft()
            try:
                os.write(fd, pkt)
            except OSError:
                write_err += 1
                continue
            lat = (time.monotonic() - due) * 1000.0
            if len(late) < late_cap:
                late.append(lat)
            else:
                late[late_i] = lat
                late_i = (late_i + 1) % late_cap
        timeout_ms = 200.0
        if queue:
            timeout_ms = max(0.0, (queue[0][0] - time.monotonic()) * 1000.0)
        try:
            ev = poller.poll(timeout_ms)
        except InterruptedError:
            continue
        if not ev:
            continue
        t = time.monotonic()
        # Read all that is waiting (bounded by the queue's size).
        for _ in range(1024):
            try:
                pkt = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if len(queue) >= args.max_queue:
                dropped += 1
                continue
            queue.append((t + delay, pkt))
            packets += 1
            nbytes += len(pkt)
        max_q = max(max_q, len(queue))

    os.close(fd)
    s = sorted(late)
    line = (f"packets={packets} bytes={nbytes} dropped={dropped} write_errors={write_err} "
            f"max_queue={max_q} left_in_queue={len(queue)} delay_ms={args.delay_ms:g} "
            f"late_p50_ms={pct(s, 50):.3f} late_p99_ms={pct(s, 99):.3f} "
            f"late_max_ms={(s[-1] if s else float('nan')):.3f}\n")
    if args.stats:
        with open(args.stats, "w") as f:
            f.write(line)
    sys.stdout.write(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
