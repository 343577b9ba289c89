#!/usr/bin/env python3
"""sockproxy.py LISTEN TARGET — a byte proxy between a listening Unix socket
and another Unix socket (dockerd's), for netns-tests/follower.sh.

Every connection accepted on LISTEN gets its own connection to TARGET and
bytes are copied both ways. A connection whose request is `GET /events` is
an *event stream*; the test can hold those back without closing anything:

  SIGUSR1  hold: nothing more goes from TARGET to the client on event
           streams (the bytes wait here; a new event stream gets no head),
           so the client sees a stream that is open and silent, as from a
           dockerd that hangs. Lists (every other request) still pass.
  SIGUSR2  release: the held bytes go on, and so does everything after.
  SIGKILL  (the test) cut: every connection closes at once.

After each mode change LISTEN.state holds "hold" or "pass". One log line
per connection ("conn N events|other") and per mode change on stdout.
Bounded: at most 64 connections at a time; a request head is classified
from its first 8 KiB.
"""

import os
import signal
import socket
import sys
import threading
import time

MAX_CONNS = 64

held = threading.Event()      # set: event streams are held
released = threading.Condition()
live = threading.Semaphore(MAX_CONNS)
count_lock = threading.Lock()
count = [0]


def say(msg):
    sys.stdout.write("%.3f %s\n" % (time.time(), msg))
    sys.stdout.flush()


def mode(state_file, hold):
    if hold:
        held.set()
    else:
        held.clear()
    with released:
        released.notify_all()
    with open(state_file + ".tmp", "w") as f:
        f.write("hold\n" if hold else "pass\n")
    os.replace(state_file + ".tmp", state_file)
    say("mode " + ("hold" if hold else "pass"))


def wait_released():
    with released:
        while held.is_set():
            released.wait(0.5)


def down(up, client, events):
    """TARGET -> client. On an event stream, bytes read while held wait."""
    try:
        while True:
            if events:
                wait_released()
            data = up.recv(65536)
            if events:
                wait_released()
            if not data:
                break
            client.sendall(data)
    except OSError:
        pass
    finally:
        for s in (client, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client, target):
    up = None
    try:
        first = client.recv(8192)
        if not first:
            return
        events = first.startswith(b"GET /events")
        with count_lock:
            count[0] += 1
            n = count[0]
        say("conn %d %s" % (n, "events" if events else "other"))
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(target)
        up.sendall(first)
        t = threading.Thread(target=down, args=(up, client, events), daemon=True)
        t.start()
        while True:
            data = client.recv(65536)
            if not data:
                break
            up.sendall(data)
        try:
            up.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        t.join()
    except OSError:
        pass
    finally:
        for s in (client, up):
            if s is not None:
                s.close()
        live.release()


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: sockproxy.py LISTEN TARGET\n")
        return 2
    listen, target = sys.argv[1], sys.argv[2]
    state_file = listen + ".state"
    try:
        os.unlink(listen)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(listen)
    srv.listen(16)
    signal.signal(signal.SIGUSR1, lambda *_: mode(state_file, True))
    signal.signal(signal.SIGUSR2, lambda *_: mode(state_file, False))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    mode(state_file, False)
    say("listening on %s -> %s" % (listen, target))
    while True:
        live.acquire()
        try:
            client, _ = srv.accept()
        except OSError:
            live.release()
            continue
        threading.Thread(target=serve, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
