#!/usr/bin/env python3
"""fake_docker — a small stand-in for the Docker Engine API on a Unix socket,
for netns suites that need egressd's label routes without a real dockerd
(netns-tests/hostile.sh). Python 3 standard library only.

  serve SOCKET STATE [--ready FILE] [--mute FILE]

SOCKET: the Unix socket to listen on (replaced if it exists).
STATE: the containers, one per line (re-read whenever its mtime changes,
polled every 100 ms; '#' starts a comment):

    NAME IPV4|- IPV6|- [KEY=VALUE]...

  e.g. "c2 10.8.0.12 fd08::12 egressd.tunnel=exit2". A container's Id is the
  sha256 of its name (64 hex digits, stable across runs), its network is
  "egress".

HTTP/1.1, one request per connection (egressd sends Connection: close); an
optional "/v1.NN" prefix is accepted:

  GET /_ping                      "OK"
  GET /version                    {"ApiVersion": "1.41", ...}
  GET /containers/json[?filters=] the running containers, in Docker's list
                                  shape (Id, Names, Labels, State,
                                  NetworkSettings.Networks.egress.{IPAddress,
                                  GlobalIPv6Address}); the filter "label"
                                  ("KEY" or "KEY=VALUE", all must match) is
                                  honoured, other filters are ignored
  GET /containers/ID/json         one container (inspect shape) or 404
  GET /events[?since=&filters=]  200 with Transfer-Encoding: chunked at once,
                                  then the past events since `since` (seconds,
                                  as dockerd replays them; filters ignored),
                                  then one JSON object per line and chunk for
                                  each change of STATE: "start" for a container
                                  that appeared, "die" and "destroy" for one
                                  that went, "die" + "destroy" + "start" for
                                  one whose line changed; the stream stays open
  anything else                   404 {"message": "page not found"}

Fault controls (for follower tests): while the file given by --mute exists,
event streams stay open but get nothing (the events of that time are lost,
as on a hung dockerd); SIGUSR1 closes every open event stream (a cut).

Every request and event is logged on stdout: "req METHOD PATH",
"event ACTION NAME", "events-open N", "events-cut N".
"""

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
import urllib.parse

MAX_HEAD = 16 << 10


def out(line):
    print(line, flush=True)


def cid(name):
    return hashlib.sha256(name.encode()).hexdigest()


def read_state(path):
    """{name: (ipv4, ipv6, labels)} from STATE; a missing file is no containers."""
    cs = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return cs
    for line in lines:
        line = line.split("#", 1)[0].split()
        if len(line) < 3:
            continue
        name, v4, v6 = line[:3]
        labels = {}
        for kv in line[3:]:
            k, _, v = kv.partition("=")
            labels[k] = v
        cs[name] = ("" if v4 == "-" else v4, "" if v6 == "-" else v6, labels)
    return cs


def networks(v4, v6):
    return {
        "egress": {
            "NetworkID": cid("egress"),
            "IPAddress": v4,
            "IPPrefixLen": 24 if v4 else 0,
            "GlobalIPv6Address": v6,
            "GlobalIPv6PrefixLen": 64 if v6 else 0,
        }
    }


def list_entry(name, c):
    v4, v6, labels = c
    return {
        "Id": cid(name),
        "Names": ["/" + name],
        "Image": "egbb",
        "Labels": labels,
        "State": "running",
        "Status": "Up",
        "NetworkSettings": {"Networks": networks(v4, v6)},
    }


def inspect_entry(name, c):
    v4, v6, labels = c
    return {
        "Id": cid(name),
        "Name": "/" + name,
        "Config": {"Labels": labels, "Image": "egbb"},
        "State": {"Status": "running", "Running": True},
        "NetworkSettings": {"Networks": networks(v4, v6)},
    }


def label_match(labels, want):
    for w in want:
        k, eq, v = w.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


class Docker:
    def __init__(self, state_path, mute):
        self.state_path = state_path
        self.mute = mute
        self.state = read_state(state_path)
        self.mtime = self.stat()
        self.streams = set()  # writers of open /events streams
        self.history = []  # (timeNano, chunk) of the last 1000 events, for `since`

    def stat(self):
        try:
            st = os.stat(self.state_path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    async def watch(self):
        while True:
            await asyncio.sleep(0.1)
            m = self.stat()
            if m == self.mtime:
                continue
            self.mtime = m
            new = read_state(self.state_path)
            old, self.state = self.state, new
            for name in sorted(set(old) | set(new)):
                if old.get(name) == new.get(name):
                    continue
                if name in old:
                    self.emit("die", name, old[name])
                    self.emit("destroy", name, old[name])
                if name in new:
                    self.emit("start", name, new[name])

    def emit(self, action, name, c):
        muted = self.mute is not None and os.path.exists(self.mute)
        out(f"event {action} {name}{' (muted: lost)' if muted else ''}")
        if muted:
            return
        now = time.time()
        ev = {
            "status": action,
            "id": cid(name),
            "from": "egbb",
            "Type": "container",
            "Action": action,
            "Actor": {"ID": cid(name), "Attributes": {"name": name, **c[2]}},
            "scope": "local",
            "time": int(now),
            "timeNano": int(now * 1e9),
        }
        line = (json.dumps(ev) + "\n").encode()
        chunk = f"{len(line):x}\r\n".encode() + line + b"\r\n"
        self.history = self.history[-999:] + [(ev["timeNano"], chunk)]
        for w in list(self.streams):
            try:
                w.write(chunk)
            except (OSError, RuntimeError):
                self.streams.discard(w)

    def cut(self):
        n = len(self.streams)
        for w in list(self.streams):
            w.close()
        self.streams.clear()
        out(f"events-cut {n}")

    async def handle(self, reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
            writer.close()
            return
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            writer.close()
            return
        url = urllib.parse.urlsplit(target)
        path = url.path
        parts = path.split("/")
        if len(parts) > 1 and parts[1].startswith("v1."):
            path = "/" + "/".join(parts[2:])
        query = urllib.parse.parse_qs(url.query)
        out(f"req {method} {target}")
        try:
            filters = json.loads(query.get("filters", ["{}"])[0])
            if not isinstance(filters, dict):
                filters = {}
        except ValueError:
            filters = {}
        if method != "GET":
            return self.respond(writer, 405, {"message": "method not allowed"})
        if path == "/_ping":
            return self.respond(writer, 200, "OK")
        if path == "/version":
            return self.respond(writer, 200, {"Version": "20.10-fake", "ApiVersion": "1.41"})
        if path == "/containers/json":
            want = filters.get("label", [])
            body = [list_entry(n, c) for n, c in sorted(self.state.items()) if label_match(c[2], want)]
            return self.respond(writer, 200, body)
        if path.startswith("/containers/") and path.endswith("/json"):
            ident = path[len("/containers/") : -len("/json")]
            for n, c in self.state.items():
                if ident in (n, cid(n)) or (len(ident) >= 12 and cid(n).startswith(ident)):
                    return self.respond(writer, 200, inspect_entry(n, c))
            return self.respond(writer, 404, {"message": f"No such container: {ident}"})
        if path == "/events":
            writer.write(
                b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            try:
                since = float(query.get("since", ["x"])[0]) * 1e9
            except ValueError:
                since = None
            if since is not None:
                for t, chunk in self.history:
                    if t >= since:
                        writer.write(chunk)
            self.streams.add(writer)
            out(f"events-open {len(self.streams)}")
            try:
                await writer.drain()
                while await reader.read(4096):
                    pass  # the client never sends more; EOF or error ends the stream
            except OSError:
                pass
            finally:
                self.streams.discard(writer)
                writer.close()
            return
        return self.respond(writer, 404, {"message": "page not found"})

    def respond(self, writer, status, body):
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
        if isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nApi-Version: 1.41\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        writer.close()


async def serve(sock_path, state_path, ready, mute):
    d = Docker(state_path, mute)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(d.handle, path=sock_path, limit=MAX_HEAD)
    os.chmod(sock_path, 0o600)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, d.cut)
    out(f"fake docker on {sock_path}: {len(d.state)} containers from {state_path}")
    if ready:
        with open(ready, "w") as f:
            f.write("ready\n")
    await asyncio.gather(server.serve_forever(), d.watch())


def main(argv):
    args = argv[1:]
    opts = {"--ready": None, "--mute": None}
    pos = []
    i = 0
    while i < len(args):
        if args[i] in opts and i + 1 < len(args):
            opts[args[i]] = args[i + 1]
            i += 2
        else:
            pos.append(args[i])
            i += 1
    if len(pos) != 3 or pos[0] != "serve":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(pos[1], pos[2], opts["--ready"], opts["--mute"]))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main(sys.argv))
