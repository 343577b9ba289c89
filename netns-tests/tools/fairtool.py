#!/usr/bin/env python3
"""fairtool — the flooding container and the measuring neighbour of
egressd's fairness suite (netns-tests/fairness.sh). Python 3 standard
library only. Every loop is bounded in count and in time.

  flood HOST PORT SECS SIZE PER_SOCKET MAX_SOCKETS
      New UDP sessions as fast as this process can make them, for SECS
      seconds or MAX_SOCKETS sockets: each a fresh socket that sends
      PER_SOCKET datagrams of SIZE bytes to HOST:PORT and is closed.
      "sockets N datagrams N bytes N errors N rate N/s in S s"

  lookups HOST N GAP_MS TIMEOUT_MS [--from-file FILE]
      N DNS lookups (TXT whoami.test) one after another, GAP_MS apart, each
      from a fresh socket as glibc does (so each is a new session in
      egressd); waits TIMEOUT_MS for each answer. --from-file: only while
      FILE exists once started (stop early when it is removed).
      "sent N answered N p50_ms X p99_ms X max_ms X mean_ms X" (percentiles
      over the answered; mean_ms over all sent, an unanswered one counting
      TIMEOUT_MS)

  held HOST PORT READY_FILE STOP_FILE MAX_SECS
      One UDP session held idle: one socket asks HOST:PORT (a who-am-i
      service, which answers with the address it saw: our association at
      the exit), writes that address to READY_FILE, stays silent until
      STOP_FILE exists (at most MAX_SECS), then asks again on the same
      socket. Each ask: up to 3 tries, 2 s apart.
      "first ADDR second ADDR"  ("none" for an ask never answered)

  cone HOST PORT SECS MAP_FILE [--keepalive]
      One socket: sends to HOST:PORT (a who-am-i service), writes the
      address the service saw (our mapping at the exit) to MAP_FILE, then
      for SECS seconds counts datagrams from anyone else (full cone).
      --keepalive: sends to HOST:PORT again every second meanwhile.
      "mapped ADDR unsolicited N last_s X sent N"  (last_s: seconds from the
      first send to the last unsolicited datagram)

  spray SRC_IP HOST PORT SECS N
      N sockets bound to SRC_IP send, in turn, small datagrams to HOST:PORT
      for SECS seconds (about 50 rounds a second): N distinct remotes.
      "sent N"

  collect HOST PORT WAIT
      One datagram to HOST:PORT, then every datagram that arrives in WAIT s:
      "got N: FROM TEXT; ..."

  rss PID OUT_FILE STOP_FILE
      Samples /proc/PID/status VmRSS every 50 ms until STOP_FILE exists
      (at most 120 s); writes "peak_kib N samples N last_kib N" to OUT_FILE.
"""

import os
import random
import socket
import struct
import sys
import time

from egtest import dns_query, family, out, write_atomic


def cmd_flood(host, port, secs, size, per_socket, max_sockets):
    port, secs, size = int(port), float(secs), int(size)
    per_socket, max_sockets = int(per_socket), int(max_sockets)
    payload = os.urandom(size)
    fam = family(host)
    t0 = time.monotonic()
    end = t0 + secs
    socks = dgrams = nbytes = errors = 0
    while socks < max_sockets:
        if socks % 64 == 0 and time.monotonic() >= end:
            break
        try:
            s = socket.socket(fam, socket.SOCK_DGRAM)
        except OSError:
            errors += 1
            time.sleep(0.001)
            continue
        try:
            s.setblocking(False)
            for _ in range(per_socket):
                try:
                    nbytes += s.sendto(payload, (host, port))
                    dgrams += 1
                except (BlockingIOError, OSError):
                    errors += 1
        finally:
            s.close()
        socks += 1
    dt = time.monotonic() - t0
    out(f"sockets {socks} datagrams {dgrams} bytes {nbytes} errors {errors} "
        f"rate {int(socks / dt) if dt > 0 else 0}/s in {dt:.1f} s")
    return 0


def percentile(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


def cmd_lookups(host, n, gap_ms, timeout_ms, *opts):
    n, gap, timeout = int(n), float(gap_ms) / 1000, float(timeout_ms) / 1000
    stop_file = None
    if len(opts) == 2 and opts[0] == "--from-file":
        stop_file = opts[1]
    fam = family(host)
    lat = []
    sent = 0
    total = 0.0
    hard_end = time.monotonic() + n * (gap + timeout) + 5
    for i in range(n):
        if time.monotonic() > hard_end:
            break
        if stop_file is not None and not os.path.exists(stop_file):
            break
        qid = random.randrange(65536)
        s = socket.socket(fam, socket.SOCK_DGRAM)
        took = timeout * 1000
        try:
            t = time.monotonic()
            s.sendto(dns_query(qid), (host, 53))
            sent += 1
            deadline = t + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    data, _ = s.recvfrom(4096)
                except (socket.timeout, OSError):
                    break
                if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == qid:
                    took = (time.monotonic() - t) * 1000
                    lat.append(took)
                    break
        finally:
            s.close()
        total += took
        time.sleep(gap)
    lat.sort()
    out(f"sent {sent} answered {len(lat)} p50_ms {percentile(lat, 50):.2f} "
        f"p99_ms {percentile(lat, 99):.2f} max_ms {(lat[-1] if lat else float('nan')):.2f} "
        f"mean_ms {(total / sent if sent else float('nan')):.2f}")
    return 0 if sent and len(lat) == sent else 1


def ask_whoami(s, host, port, tag):
    """The address the who-am-i service saw for socket s, or "none"."""
    for _ in range(3):
        s.sendto(tag, (host, port))
        end = time.monotonic() + 2
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, frm = s.recvfrom(4096)
            except (socket.timeout, OSError):
                break
            if frm[0] == host and frm[1] == port and data:
                return data.decode(errors="replace").split()[0]
    return "none"


def cmd_held(host, port, ready_file, stop_file, max_secs):
    port, max_secs = int(port), float(max_secs)
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        first = ask_whoami(s, host, port, b"held first")
        if first == "none":
            out("first none second none")
            return 1
        write_atomic(ready_file, first + "\n")
        end = time.monotonic() + max_secs
        while time.monotonic() < end and not os.path.exists(stop_file):
            time.sleep(0.05)
        second = ask_whoami(s, host, port, b"held second")
    out(f"first {first} second {second}")
    return 0 if second != "none" else 1


def cmd_cone(host, port, secs, map_file, *opts):
    port, secs = int(port), float(secs)
    keep = "--keepalive" in opts
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    t0 = time.monotonic()
    s.sendto(b"cone hello", (host, port))
    sent = 1
    s.settimeout(3)
    try:
        data, frm = s.recvfrom(4096)
    except (socket.timeout, OSError):
        out("mapped none unsolicited 0 last_s 0 sent 1")
        return 1
    mapped = data.decode(errors="replace").split()[0]
    write_atomic(map_file, mapped + "\n")
    n = 0
    last = 0.0
    next_keep = t0 + 1
    end = t0 + secs
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if keep and now >= next_keep:
            s.sendto(b"cone keepalive", (host, port))
            sent += 1
            next_keep += 1
        wait = min(end, next_keep) - now if keep else end - now
        s.settimeout(max(0.01, wait))
        try:
            _, frm = s.recvfrom(4096)
        except socket.timeout:
            continue
        except OSError:
            continue
        if frm[0] != host or frm[1] != port:
            n += 1
            last = time.monotonic() - t0
    out(f"mapped {mapped} unsolicited {n} last_s {last:.1f} sent {sent}")
    return 0 if n > 0 else 1


def cmd_spray(src_ip, host, port, secs, n):
    port, secs, n = int(port), float(secs), int(n)
    socks = []
    for _ in range(n):
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.bind((src_ip, 0))
        s.setblocking(False)
        socks.append(s)
    sent = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for s in socks:
            try:
                s.sendto(b"unsolicited", (host, port))
                sent += 1
            except OSError:
                pass
        time.sleep(0.02)
    out(f"sent {sent}")
    return 0


def cmd_collect(host, port, wait):
    port, wait = int(port), float(wait)
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.sendto(b"collect", (host, port))
    got = []
    end = time.monotonic() + wait
    while len(got) < 100:
        left = end - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, frm = s.recvfrom(4096)
        except (socket.timeout, OSError):
            break
        got.append(f"{frm[0]}:{frm[1]} {data[:16].decode(errors='replace').split()[0]}")
    out(f"got {len(got)}: " + "; ".join(got))
    return 0


def cmd_rss(pid, out_file, stop_file):
    peak = last = samples = 0
    end = time.monotonic() + 120
    while time.monotonic() < end and not os.path.exists(stop_file):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        last = int(line.split()[1])
                        peak = max(peak, last)
                        samples += 1
                        break
        except OSError:
            break
        time.sleep(0.05)
    write_atomic(out_file, f"peak_kib {peak} samples {samples} last_kib {last}\n")
    return 0


def main(argv):
    cmds = {"flood": cmd_flood, "lookups": cmd_lookups, "held": cmd_held, "cone": cmd_cone, "spray": cmd_spray,
            "collect": cmd_collect, "rss": cmd_rss}
    if len(argv) < 2 or argv[1] not in cmds:
        sys.stderr.write(__doc__)
        return 2
    return cmds[argv[1]](*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
