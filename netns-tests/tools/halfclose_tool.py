#!/usr/bin/env python3
"""halfclose_tool — the target ends first: a half-close in the download
direction (netns-tests/tcp.sh check 3).

Python 3 standard library (and egtest.py's stream). Every wait is bounded.

  serve ADDR... --port PORT --log FILE [--ready FILE]
      On every ADDR:PORT, for each connection: send "bye\\n", then
      shutdown(SHUT_WR) at once (the target is done talking), then read
      everything the client still sends until its EOF (at most 64 MiB, 60 s
      without a byte ends it) and append one line to FILE:
        got id=NONCE bytes=N sha=HEX end=eof|error:WHAT
      where NONCE is the client's first line ("id=NONCE\\n") and N, HEX the
      count and sha256 of what came after it.
  client HOST PORT BYTES --log FILE
      Connect; read until EOF, which must come right after exactly "bye\\n"
      (the target's half-close, passed on); only then send "id=NONCE\\n" and
      BYTES of the test stream, shutdown(SHUT_WR), and wait (30 s at most)
      for the server's line for NONCE in FILE. Exit 0 with "ok ..." when the
      target received all BYTES intact after its own EOF, else 1 with what
      happened.

A relay that ends both directions on the first EOF (microsocks does) fails
the client: the target's line says fewer bytes (or the send is reset).
"""

import hashlib
import os
import socket
import sys
import threading
import time

from egtest import dispatch, family, mark_ready, out, pop_opt, stream_chunks, tcp_listener

MAX_BYTES = 64 << 20
LOG_LOCK = threading.Lock()


def _serve_one(conn, log):
    h = hashlib.sha256()
    n = 0
    nonce = None
    head = b""
    end = "eof"
    try:
        conn.settimeout(60)
        conn.sendall(b"bye\n")
        conn.shutdown(socket.SHUT_WR)
        while n < MAX_BYTES:
            b = conn.recv(1 << 20)
            if not b:
                break
            if nonce is None:
                head += b
                if b"\n" not in head:
                    if len(head) > 64:
                        end = "error:no-id-line"
                        break
                    continue
                line, _, b = head.partition(b"\n")
                nonce = line.decode(errors="replace")
            h.update(b)
            n += len(b)
    except OSError as e:
        end = f"error:{type(e).__name__}"
    finally:
        conn.close()
    with LOG_LOCK, open(log, "a") as f:
        f.write(f"got {nonce or 'id=?'} bytes={n} sha={h.hexdigest()} end={end}\n")


def _accept_loop(ls, log):
    while True:
        try:
            conn, _ = ls.accept()
        except OSError:
            time.sleep(0.05)
            continue
        threading.Thread(target=_serve_one, args=(conn, log), daemon=True).start()


def cmd_serve(*args):
    port, args = pop_opt(list(args), "--port")
    log, args = pop_opt(args, "--log")
    ready, args = pop_opt(args, "--ready")
    if port is None or log is None or not args:
        out("usage: serve ADDR... --port PORT --log FILE [--ready FILE]")
        return 2
    open(log, "a").close()
    threads = []
    for addr in args:
        ls = tcp_listener(addr, port)
        t = threading.Thread(target=_accept_loop, args=(ls, log), daemon=True)
        t.start()
        threads.append(t)
    mark_ready(ready)
    for t in threads:
        t.join()
    return 0


def _find(log, nonce):
    try:
        with open(log) as f:
            for line in f:
                if f" id={nonce} " in line:
                    return line.split()
    except OSError:
        pass
    return None


def cmd_client(host, port, nbytes, *args):
    log, _ = pop_opt(list(args), "--log")
    if log is None:
        out("usage: client HOST PORT BYTES --log FILE")
        return 2
    n = int(nbytes)
    nonce = os.urandom(8).hex()
    want = hashlib.sha256()
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(30)
    with s:
        s.connect((host, int(port)))
        got = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
            if len(got) > 64:
                break
        if got != b"bye\n":
            out(f"expected 'bye' then the target's EOF, got {got[:64]!r}")
            return 1
        # The download direction is over; the upload must still work.
        s.sendall(f"id={nonce}\n".encode())
        for c in stream_chunks(n):
            s.sendall(c)
            want.update(c)
        s.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 30
    line = _find(log, nonce)
    while line is None and time.monotonic() < deadline:
        time.sleep(0.05)
        line = _find(log, nonce)
    if line is None:
        out(f"the target logged nothing for this flow within 30 s (sent {n} bytes after its EOF)")
        return 1
    fields = dict(f.split("=", 1) for f in line[1:] if "=" in f)
    if fields.get("bytes") == str(n) and fields.get("sha") == want.hexdigest() and fields.get("end") == "eof":
        out(f"ok after the target's EOF, sent {n} bytes: the target received all of them (sha256 match)")
        return 0
    out(
        f"after the target's EOF, sent {n} bytes: the target received {fields.get('bytes')} "
        f"(sha match: {fields.get('sha') == want.hexdigest()}, end {fields.get('end')})"
    )
    return 1


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    return dispatch({"serve": cmd_serve, "client": cmd_client}, argv[1], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
