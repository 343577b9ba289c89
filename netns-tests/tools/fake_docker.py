#!/usr/bin/env python3
"""fake_docker — a small stand-in for the Docker Engine API on a Unix socket,
for netns suites that need egressd's label routes without a real dockerd
(netns-tests/hostile.sh), and a load generator for scale benches (thousands
of containers, started and stopped at a steady rate). Python 3 standard
library only.

  serve SOCKET STATE [--ready FILE] [--mute FILE]
        [--generate N [--gen-label KEY=V1,V2...] [--gen-net4 CIDR|-] [--gen-net6 CIDR|-]]
        [--churn RATE [--churn-for SECONDS]] [--emit-log FILE]

SOCKET: the Unix socket to listen on (replaced if it exists).
STATE: the containers, one per line (re-read whenever its mtime changes,
polled every 100 ms; '#' starts a comment; "-": no file):

    NAME IPV4|- IPV6|- [KEY=VALUE]...

  e.g. "c2 10.8.0.12 fd08::12 egressd.tunnel=exit2". A container's Id is the
  sha256 of its name (64 hex digits, stable across runs), its network is
  "egress".

Scale (held in memory, beside STATE's; every lookup is by id or name, and
the list body is cached until a container changes, so 10 000 containers
stay cheap):

  --generate N      N more running containers g000000, g000001, ... with the
                    label KEY=VALUE of --gen-label (default
                    "egressd.tunnel=exit0"; a comma list of values is used in
                    turn), a v4 address from --gen-net4 (default
                    10.8.0.0/16; hosts from .2 up, never reusing one while
                    the run lasts unless the net is full) and a v6 one from
                    --gen-net6 (default "-": none).
  --churn RATE      RATE operations a second on the generated containers,
                    alternately a stop (the oldest generated one goes: "die",
                    then "destroy") and a start (a new one, the next name and
                    a fresh address: "start"), so their number stays N.
                    Starts when the first event stream opens (egressd is
                    following) and runs --churn-for SECONDS (default: for
                    ever). GET /_churn?rate=R[&seconds=S] starts (or
                    replaces) a churn at any time; rate=0 stops it.
  --emit-log FILE   one line per event sent, as it goes onto the streams:
                    "EMIT_UNIX_TIME ACTION NAME ID IPV4|- IPV6|-" (6
                    decimals), so a bench can match egressd's log line
                    "route IPV4 -> TUNNEL (container NAME, ...)" to the
                    start that caused it: route-live latency = the log's
                    time - EMIT_UNIX_TIME.

  GET /_stats[?reset=1]   (not counted) JSON: "requests" per kind ("list",
                          "inspect", "events", "other"), "events" sent per
                          action and "events_total", "containers", "streams"
                          (open event streams), "churn" {"rate", "ops",
                          "running"}, "since" (unix time of the start or the
                          last reset). reset=1 zeroes the counters after the
                          answer. Engine API calls per event =
                          (list + inspect) / events_total over a window.

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
                                  one whose line changed (and the churn's
                                  events); the stream stays open
  GET /_stats, GET /_churn        see above
  anything else                   404 {"message": "page not found"}

Fault controls (for follower tests): while the file given by --mute exists,
event streams stay open but get nothing (the events of that time are lost,
as on a hung dockerd); SIGUSR1 closes every open event stream (a cut).

Every request and event is logged on stdout: "req METHOD PATH",
"event ACTION NAME", "events-open N", "events-cut N". With --generate,
lists, inspects and events are not logged one by one: a line a second
counts the requests ("reqs KIND N"), and --emit-log has the events.
"""

import asyncio
import collections
import hashlib
import ipaddress
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
    """{name: (ipv4, ipv6, labels)} from STATE; a missing file (or "-") is no containers."""
    cs = {}
    if path == "-":
        return cs
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


class Gen:
    """The generated containers' recipe: names, labels, addresses."""

    def __init__(self, label, net4, net6):
        key, _, values = label.partition("=")
        self.key = key
        self.values = values.split(",") if values else ["exit0"]
        self.net4 = None if net4 == "-" else ipaddress.ip_network(net4, strict=False)
        self.net6 = None if net6 == "-" else ipaddress.ip_network(net6, strict=False)
        self.next_name = 0
        self.cursor = 2  # host index of the next address to try
        self.used = set()  # host indexes in use

    def new(self):
        """(name, container) of the next generated container."""
        i = self.next_name
        self.next_name += 1
        host = self.take()
        v4 = str(self.net4[host]) if self.net4 is not None and host is not None else ""
        v6 = str(self.net6[host]) if self.net6 is not None and host is not None else ""
        return f"g{i:06d}", (v4, v6, {self.key: self.values[i % len(self.values)]}), host

    def take(self):
        nets = [n for n in (self.net4, self.net6) if n is not None]
        if not nets:
            return None
        size = min(n.num_addresses for n in nets) - 1  # no broadcast / last
        for _ in range(size):
            h = self.cursor
            self.cursor = self.cursor + 1 if self.cursor + 1 < size else 2
            if h not in self.used:
                self.used.add(h)
                return h
        raise SystemExit("fake_docker: --gen-net4/--gen-net6 has no free address left")


class Docker:
    def __init__(self, state_path, mute, emit_log=None):
        self.state_path = state_path
        self.mute = mute
        self.file_state = read_state(state_path)  # STATE's containers, for its diffs
        self.state = {}  # name -> (ipv4, ipv6, labels): STATE's and the generated ones
        self.ids = {}  # Id -> name
        self.list_cache = {}  # label filter -> body, until a container changes
        for n, c in self.file_state.items():
            self.put(n, c)
        self.mtime = self.stat()
        self.streams = set()  # writers of open /events streams
        self.history = collections.deque(maxlen=1000)  # (timeNano, chunk), for `since`
        self.emit_log = open(emit_log, "a", buffering=1) if emit_log else None
        self.gen = None
        self.gen_fifo = collections.deque()  # (name, host index) of running generated ones
        self.churn_task = None
        self.churn_rate = 0.0
        self.churn_ops = 0
        self.churn_on_stream = None  # (rate, seconds) to start when a stream opens
        self.quiet = False  # counts instead of a line per inspect / list
        self.reset_stats()

    def reset_stats(self):
        self.requests = collections.Counter({"list": 0, "inspect": 0, "events": 0, "other": 0})
        self.events_sent = collections.Counter()
        self.since = time.time()

    def put(self, name, c):
        self.state[name] = c
        self.ids[cid(name)] = name
        self.list_cache.clear()

    def drop(self, name):
        self.state.pop(name, None)
        self.ids.pop(cid(name), None)
        self.list_cache.clear()

    def generate(self, n, gen):
        self.gen = gen
        for _ in range(n):
            name, c, host = gen.new()
            self.put(name, c)
            self.gen_fifo.append((name, host))

    def find(self, ident):
        """The name of the container `ident` names (id, name or unique id prefix of 12+)."""
        if ident in self.ids:
            return self.ids[ident]
        if ident in self.state:
            return ident
        if len(ident) >= 12:
            for i, n in self.ids.items():
                if i.startswith(ident):
                    return n
        return None

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
            old, self.file_state = self.file_state, new
            for name in sorted(set(old) | set(new)):
                if old.get(name) == new.get(name):
                    continue
                if name in old:
                    self.drop(name)
                    self.emit("die", name, old[name])
                    self.emit("destroy", name, old[name])
                if name in new:
                    self.put(name, new[name])
                    self.emit("start", name, new[name])

    def emit(self, action, name, c):
        muted = self.mute is not None and os.path.exists(self.mute)
        if not self.quiet or muted:
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
        self.history.append((ev["timeNano"], chunk))
        self.events_sent[action] += 1
        if self.emit_log is not None:
            self.emit_log.write(f"{time.time():.6f} {action} {name} {cid(name)} {c[0] or '-'} {c[1] or '-'}\n")
        for w in list(self.streams):
            try:
                w.write(chunk)
            except (OSError, RuntimeError):
                self.streams.discard(w)

    def churn(self, rate, seconds):
        """Starts (or replaces, or with rate 0 stops) the churn."""
        if self.churn_task is not None:
            self.churn_task.cancel()
            self.churn_task = None
        self.churn_rate = rate
        if rate > 0 and self.gen is not None:
            self.churn_task = asyncio.get_running_loop().create_task(self.churning(rate, seconds))
        out(f"churn rate {rate} for {seconds if seconds is not None else 'ever'}")

    async def churning(self, rate, seconds):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        k = 0
        while seconds is None or k < rate * seconds:
            delay = t0 + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if k % 2 == 0 and self.gen_fifo:
                name, host = self.gen_fifo.popleft()
                c = self.state.get(name)
                self.drop(name)
                self.gen.used.discard(host)
                if c is not None:
                    self.emit("die", name, c)
                    self.emit("destroy", name, c)
            else:
                name, c, host = self.gen.new()
                self.put(name, c)
                self.gen_fifo.append((name, host))
                self.emit("start", name, c)
            k += 1
            self.churn_ops += 1
        self.churn_rate = 0.0
        self.churn_task = None
        out(f"churn done: {self.churn_ops} operations")

    async def tally(self):
        """With --churn: one line a second of the requests, not one a request."""
        last = collections.Counter()
        while True:
            await asyncio.sleep(1)
            for k in ("list", "inspect", "events", "other"):
                if self.requests[k] != last[k]:
                    out(f"reqs {k} {self.requests[k]}")
            last = collections.Counter(self.requests)

    def stats(self):
        return {
            "requests": dict(self.requests),
            "events": dict(self.events_sent),
            "events_total": sum(self.events_sent.values()),
            "containers": len(self.state),
            "streams": len(self.streams),
            "churn": {"rate": self.churn_rate, "ops": self.churn_ops, "running": self.churn_task is not None},
            "since": self.since,
        }

    def cut(self):
        n = len(self.streams)
        for w in list(self.streams):
            w.close()
        self.streams.clear()
        out(f"events-cut {n}")

    def list_body(self, want):
        key = tuple(want)
        body = self.list_cache.get(key)
        if body is None:
            body = json.dumps(
                [list_entry(n, c) for n, c in sorted(self.state.items()) if label_match(c[2], want)]
            ).encode()
            self.list_cache[key] = body
        return body

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
        kind = self.kind(path)
        if kind is not None:
            self.requests[kind] += 1
        if not (self.quiet and kind in ("list", "inspect")):
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
        if path == "/_stats":
            self.respond(writer, 200, self.stats())
            if query.get("reset", ["0"])[0] not in ("", "0"):
                self.reset_stats()
            return None
        if path == "/_churn":
            try:
                rate = float(query.get("rate", ["0"])[0])
                seconds = float(query["seconds"][0]) if "seconds" in query else None
            except ValueError:
                return self.respond(writer, 400, {"message": "rate and seconds are numbers"})
            if rate > 0 and self.gen is None:
                return self.respond(writer, 400, {"message": "no generated containers (--generate N)"})
            self.churn(rate, seconds)
            return self.respond(writer, 200, self.stats())
        if path == "/containers/json":
            want = filters.get("label", [])
            return self.respond(writer, 200, self.list_body(want if isinstance(want, list) else []))
        if path.startswith("/containers/") and path.endswith("/json"):
            ident = path[len("/containers/") : -len("/json")]
            n = self.find(ident)
            if n is not None:
                return self.respond(writer, 200, inspect_entry(n, self.state[n]))
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
            if self.churn_on_stream is not None:
                rate, seconds = self.churn_on_stream
                self.churn_on_stream = None
                self.churn(rate, seconds)
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

    @staticmethod
    def kind(path):
        """The request's kind for /_stats (None: a control request, not counted)."""
        if path in ("/_stats", "/_churn"):
            return None
        if path == "/containers/json":
            return "list"
        if path.startswith("/containers/") and path.endswith("/json"):
            return "inspect"
        if path == "/events":
            return "events"
        return "other"

    def respond(self, writer, status, body):
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "Error")
        if isinstance(body, bytes):
            data, ctype = body, "application/json"
        elif isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nApi-Version: 1.41\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        writer.close()


async def serve(sock_path, state_path, opts):
    d = Docker(state_path, opts["--mute"], opts["--emit-log"])
    if opts["--generate"]:
        gen = Gen(opts["--gen-label"], opts["--gen-net4"], opts["--gen-net6"])
        d.generate(int(opts["--generate"]), gen)
        d.quiet = True
    if opts["--churn"]:
        seconds = float(opts["--churn-for"]) if opts["--churn-for"] else None
        d.churn_on_stream = (float(opts["--churn"]), seconds)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(d.handle, path=sock_path, limit=MAX_HEAD, backlog=1024)
    os.chmod(sock_path, 0o600)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, d.cut)
    out(f"fake docker on {sock_path}: {len(d.state)} containers from {state_path}"
        + (f" and --generate {opts['--generate']}" if opts["--generate"] else ""))
    if opts["--ready"]:
        with open(opts["--ready"], "w") as f:
            f.write("ready\n")
    tasks = [server.serve_forever(), d.watch()]
    if d.quiet:
        tasks.append(d.tally())
    await asyncio.gather(*tasks)


OPTS = {
    "--ready": None,
    "--mute": None,
    "--generate": None,
    "--gen-label": "egressd.tunnel=exit0",
    "--gen-net4": "10.8.0.0/16",
    "--gen-net6": "-",
    "--churn": None,
    "--churn-for": None,
    "--emit-log": None,
}


def main(argv):
    args = argv[1:]
    opts = dict(OPTS)
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
    if opts["--churn"] and not opts["--generate"]:
        print("fake_docker: --churn needs --generate N", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(pos[1], pos[2], opts))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main(sys.argv))
