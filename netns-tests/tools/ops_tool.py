#!/usr/bin/env python3
"""ops_tool — clients for egressd's operations tests (netns-tests/ops.sh).

Python 3 standard library only; the TCP test stream (and its sha256) is
egtool.py's, so egtool's services (sized sink 9006, source 9002) check it.
Every client is bounded in time and prints one summary line on stdout
(exit 0 when the expectation holds, else 1).

  paced N_UP N_DOWN HOST UP_PORT DOWN_PORT BYTES RATE READY_FILE [MAX_SECS]
      N_UP uploads to the sized sink and N_DOWN downloads from the source,
      all at once, each of BYTES at about RATE bytes/s (uploads: paced
      sends; downloads: paced reads on a small receive buffer), each checked
      by sha256. READY_FILE is written once every flow has moved at least
      a tenth of its bytes (all are mid-transfer). Summary:
        "ok|failed K/N intact ... max_start_ns=.. min_end_ns=.. max_end_ns=.."
      (wall clock, time.time_ns(), comparable with `date +%s%N`).

  udp-burst HOST PORT COUNT SIZE
      one socket, COUNT datagrams of SIZE bytes, one at a time, each waiting
      (up to 1 s) for the who-am-i reply. Summary:
        "sent N bytes B recv M bytes R peers P"

  udp-pingpong HOST PORT STOP_FILE MAX_SECS [INTERVAL]
      one socket (one session), a datagram every INTERVAL s (0.05) until
      STOP_FILE exists or MAX_SECS pass, each waiting up to 1 s for its
      reply. Summary: "sent N recv M lost L peers IP:PORT,..." — every
      address the service saw, in order (one: the session kept its
      association at the exit; exit 0 iff nothing was lost).
"""

import hashlib
import os
import socket
import sys
import threading
import time

from egtest import dispatch, family, out, stream_chunks, stream_sha

PIECE = 16 * 1024


# ------------------------------------------------------------------ paced TCP


class Flow:
    def __init__(self, kind, nbytes):
        self.kind = kind
        self.nbytes = nbytes
        self.moved = 0
        self.start_ns = 0
        self.end_ns = 0
        self.result = "not run"
        self.ok = False


def pace(t0, moved, rate):
    """Sleep so that `moved` bytes since t0 do not exceed `rate` bytes/s."""
    ahead = moved / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)


def run_upload(f, host, port, rate, deadline):
    try:
        f.start_ns = time.time_ns()
        with socket.create_connection((host, port), timeout=15) as s:
            s.settimeout(max(1.0, deadline - time.monotonic()))
            want = hashlib.sha256()
            s.sendall(f"{f.nbytes}\n".encode())
            t0 = time.monotonic()
            for chunk in stream_chunks(f.nbytes):
                want.update(chunk)
                for i in range(0, len(chunk), PIECE):
                    piece = chunk[i : i + PIECE]
                    s.sendall(piece)
                    f.moved += len(piece)
                    pace(t0, f.moved, rate)
                    if time.monotonic() > deadline:
                        raise TimeoutError("deadline")
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < 256:
                b = s.recv(256)
                if not b:
                    break
                reply += b
        got = reply.decode(errors="replace").strip()
        f.end_ns = time.time_ns()
        f.ok = got == f"{want.hexdigest()} {f.nbytes}"
        f.result = "intact" if f.ok else f"sink replied {got[:40]!r}"
    except Exception as e:  # noqa: BLE001 — report whatever ended the flow
        f.end_ns = time.time_ns()
        f.result = f"{type(e).__name__}: {e}"[:80]


def run_download(f, host, port, rate, deadline):
    try:
        f.start_ns = time.time_ns()
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            # A small window: the reads below set the pace of the whole path.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            s.settimeout(15)
            s.connect((host, port))
            s.settimeout(max(1.0, deadline - time.monotonic()))
            s.sendall(f"{f.nbytes}\n".encode())
            h = hashlib.sha256()
            t0 = time.monotonic()
            while True:
                b = s.recv(PIECE)
                if not b:
                    break
                h.update(b)
                f.moved += len(b)
                pace(t0, f.moved, rate)
                if time.monotonic() > deadline:
                    raise TimeoutError("deadline")
        f.end_ns = time.time_ns()
        f.ok = f.moved == f.nbytes and h.hexdigest() == stream_sha(f.nbytes)
        f.result = "intact" if f.ok else f"received {f.moved}/{f.nbytes} (sha match {h.hexdigest() == stream_sha(f.nbytes)})"
    except Exception as e:  # noqa: BLE001
        f.end_ns = time.time_ns()
        f.result = f"{type(e).__name__}: {e}"[:80]


def cmd_paced(n_up, n_down, host, up_port, down_port, nbytes, rate, ready_file, max_secs="60"):
    n_up, n_down, nbytes, rate = int(n_up), int(n_down), int(nbytes), float(rate)
    deadline = time.monotonic() + float(max_secs)
    flows = [Flow("up", nbytes) for _ in range(n_up)] + [Flow("down", nbytes) for _ in range(n_down)]
    threads = []
    for f in flows:
        if f.kind == "up":
            t = threading.Thread(target=run_upload, args=(f, host, int(up_port), rate, deadline), daemon=True)
        else:
            t = threading.Thread(target=run_download, args=(f, host, int(down_port), rate, deadline), daemon=True)
        t.start()
        threads.append(t)
    ready = False
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline + 5:
        if not ready and all(f.moved >= f.nbytes // 10 for f in flows):
            with open(ready_file, "w") as fh:
                fh.write("mid-transfer\n")
            ready = True
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=1)
    good = sum(f.ok for f in flows)
    bad = [f"{f.kind}:{f.result}" for f in flows if not f.ok]
    starts = [f.start_ns for f in flows if f.start_ns]
    ends = [f.end_ns for f in flows if f.end_ns]
    word = "ok" if good == len(flows) else "failed"
    out(
        f"{word} {good}/{len(flows)} intact ({n_up} up, {n_down} down, {nbytes} bytes each)"
        f" max_start_ns={max(starts, default=0)} min_end_ns={min(ends, default=0)}"
        f" max_end_ns={max(ends, default=0)} {'; '.join(sorted(set(bad))[:3])}"
    )
    return 0 if good == len(flows) else 1


# ------------------------------------------------------------------ UDP


def udp_socket(host):
    return socket.socket(family(host), socket.SOCK_DGRAM)


def wait_reply(s, tag, timeout):
    """The reply carrying `tag` (who-am-i echoes the first 64 bytes), or None."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, _ = s.recvfrom(65536)
        except socket.timeout:
            return None
        except OSError:
            return None
        if tag in data:
            return data
    return None


def peer_of(reply, with_port=False):
    word = reply.split(b" ", 1)[0].decode(errors="replace")
    return word if with_port else word.rsplit(":", 1)[0].strip("[]")


def cmd_udp_burst(host, port, count, size):
    count, size = int(count), int(size)
    with udp_socket(host) as s:
        sent = sent_b = recv = recv_b = 0
        peers = set()
        for i in range(count):
            tag = f"burst {i:06d} ".encode()
            payload = (tag + b"x" * size)[:size]
            s.sendto(payload, (host, int(port)))
            sent += 1
            sent_b += len(payload)
            r = wait_reply(s, tag, 1.0)
            if r is not None:
                recv += 1
                recv_b += len(r)
                peers.add(peer_of(r))
    out(f"sent {sent} bytes {sent_b} recv {recv} bytes {recv_b} peers {','.join(sorted(peers)) or '-'}")
    return 0 if recv == sent else 1


def cmd_udp_pingpong(host, port, stop_file, max_secs, interval="0.05"):
    end = time.monotonic() + float(max_secs)
    interval = float(interval)
    sent = recv = 0
    peers = []
    with udp_socket(host) as s:
        while time.monotonic() < end and not os.path.exists(stop_file):
            tag = f"pp {sent:06d} ".encode()
            s.sendto(tag, (host, int(port)))
            sent += 1
            r = wait_reply(s, tag, 1.0)
            if r is not None:
                recv += 1
                p = peer_of(r, with_port=True)
                if p not in peers:
                    peers.append(p)
            time.sleep(interval)
    out(f"sent {sent} recv {recv} lost {sent - recv} peers {','.join(peers) or '-'}")
    return 0 if sent > 0 and recv == sent else 1


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    table = {"paced": cmd_paced, "udp-burst": cmd_udp_burst, "udp-pingpong": cmd_udp_pingpong}
    return dispatch(table, argv[1], argv[2:], (OSError, ValueError, TypeError))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
