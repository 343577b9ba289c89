#!/usr/bin/env python3
"""socks_server — a scriptable, observable SOCKS5 exit and the clients of
egressd's warm-pool suite (netns-tests/pools.sh).

Python 3 standard library only (asyncio). Every loop is bounded in count
and in time.

Server:

  serve ADDR PORT [--auth USER:PASS]... [--idle-close SECS] [--drop-pooled N]
                  [--delay-file FILE] [--log FILE] [--status FILE] [--ready FILE]
      A correct RFC 1928 server for CONNECT (IPv4, IPv6 and domain
      addresses; it really connects from this namespace). Without --auth it
      offers method 0 (no authentication); with --auth only method 2
      (RFC 1929), accepting any of the given USER:PASS pairs (a pair's
      index, from 1, is logged as cred=N: which password a connection used,
      without printing it). Bytes that arrive pipelined behind the greeting,
      the authentication or the request are kept and used (the request) or
      relayed to the target (the client's first bytes), as a pipelining
      client wants.
      --idle-close SECS: a connection that has finished its negotiation
      (greeting, and authentication) and has not sent its request within
      SECS seconds is closed by the server (as V2Ray's handshake policy
      does). Without it a greeted connection may wait 300 s.
      --drop-pooled N: the first N requests that arrive on a connection
      greeted at least 0.5 s before (a pooled one) are not answered: the
      connection is closed as if the server's idle timer had fired while
      the request was on its way (logged "drop id=N").
      --delay-file FILE: while FILE exists, the answer to a greeting waits
      as many seconds as FILE says (a slow exit: refills and unpooled
      handshakes take that long; connections greeted before are not
      affected).

      --log FILE: one line per event, each with t=<time.time_ns()> (the
      wall clock, comparable with `date +%s%N` in the same machine):
        accept id=N peer=IP:PORT t=..
        greeted id=N cred=K|- pipelined=B t=..   negotiation done; B = bytes
                                                 that were there behind it
                                                 before we answered it
        authfail id=N user=USER t=..
        req id=N dst=HOST:PORT cred=K|- accept_t=.. greeted_t=.. t=..
            idle_ms=X pipelined=0|1              (1: the request came with
                                                 the greeting, no wait)
        reply id=N rep=R first=B t=..            B = client bytes already
                                                 behind the request
        close id=N state=S why=W t=..            S: negotiating|idle|relay,
                                                 W: eof|idle-close|error|done|
                                                 dropped
      --status FILE: rewritten (atomically) every 50 ms:
        open=N idle=N max_idle=N held=N max_held=N accepted=N reqs=N
        idle_closed=N idle_eof=N idle_creds=K:N,K:N t=..
      idle counts the connections that are greeted and have sent nothing
      since: bytes waiting in the kernel (FIONREAD) or in our buffer mean
      "request under way", not idle. A client that waits for the method
      reply before sending its request (no pipelining) shows as idle for
      that round trip too. held: those idle for 1 s or more. max_idle and
      max_held: the largest seen by any sample since start. idle_closed:
      closed by --idle-close; idle_eof: closed by the client while idle (a
      pool drained or refreshed). idle_creds: the idle connections per
      cred index.
      --ready FILE is written once listening.

Clients (one line on stdout; exit 0 when the expectation holds, else 1):

  burst HOST PORT N CONC SECS EXPECT
      N HTTP GETs (who-am-i, port PORT) over at most CONC connections at
      once, everything within SECS seconds; each must answer a body whose
      last line is EXPECT. "ok|failed good G/N bad B errors E in S s
      [reasons...]"

  spread HOST PORT N EXPECT SEED LO HI [EVERY LONG_LO LONG_HI]
      N HTTP GETs one after another, each on a fresh connection and checked
      as in burst, with pseudo-random gaps (seeded): between LO and HI s,
      and every EVERY-th gap between LONG_LO and LONG_HI s instead (long
      enough for a pooled connection to meet the server's idle timeout).
      At most 60 s in all. "ok|failed good G/N ... gaps_ms a,b,c..."
"""

import asyncio
import fcntl
import ipaddress
import os
import random
import socket
import struct
import sys
import termios
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from egtest import pump, raise_nofile  # noqa: E402 (after dont_write_bytecode)

NEGOTIATE_TIMEOUT = 30
IDLE_MAX = 300
CONNECT_TIMEOUT = 5
RELAY_MAX = 120
HELD_NS = 1_000_000_000  # "held": idle for a second or more




def out(line):
    print(line, flush=True)


class Conn:
    __slots__ = ("id", "state", "cred", "reader", "fd", "accept_t", "greeted_t", "early")

    def __init__(self, cid, reader, fd):
        self.id = cid
        self.state = "negotiating"
        self.cred = "-"
        self.reader = reader
        self.fd = fd
        self.accept_t = time.time_ns()
        self.greeted_t = 0
        self.early = 0  # bytes already behind the negotiation before we answered it


def buffered(reader):
    # asyncio.StreamReader keeps what it has read from the socket in _buffer;
    # there is no public way to ask how much is waiting there.
    return len(getattr(reader, "_buffer", b""))


def kernel_pending(fd):
    try:
        b = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", b)[0]
    except OSError:
        return 0


class Server:
    def __init__(self, auth, idle_close, logf, statusf, drop_pooled=0, delay_file=None):
        self.auth = auth  # list of (user, pass)
        self.delay_file = delay_file
        self.idle_close = idle_close
        self.drop_pooled = drop_pooled
        self.logf = open(logf, "a", buffering=1) if logf else None
        self.statusf = statusf
        self.conns = {}
        self.next_id = 1
        self.accepted = 0
        self.reqs = 0
        self.idle_closed = 0
        self.idle_eof = 0
        self.max_idle = 0
        self.max_held = 0

    def log(self, line):
        if self.logf:
            self.logf.write(f"{line} t={time.time_ns()}\n")

    def idle_now(self):
        n = 0
        held = 0
        creds = {}
        now = time.time_ns()
        for c in self.conns.values():
            if c.state != "idle":
                continue
            if buffered(c.reader) or kernel_pending(c.fd):
                continue
            n += 1
            if now - c.greeted_t >= HELD_NS:
                held += 1
            creds[c.cred] = creds.get(c.cred, 0) + 1
        return n, held, creds

    async def sampler(self):
        while True:
            n, held, creds = self.idle_now()
            self.max_idle = max(self.max_idle, n)
            self.max_held = max(self.max_held, held)
            if self.statusf:
                cr = ",".join(f"{k}:{v}" for k, v in sorted(creds.items())) or "-"
                line = (
                    f"open={len(self.conns)} idle={n} max_idle={self.max_idle} "
                    f"held={held} max_held={self.max_held} "
                    f"accepted={self.accepted} reqs={self.reqs} "
                    f"idle_closed={self.idle_closed} idle_eof={self.idle_eof} "
                    f"idle_creds={cr} t={time.time_ns()}\n"
                )
                tmp = self.statusf + ".tmp"
                with open(tmp, "w") as f:
                    f.write(line)
                os.replace(tmp, self.statusf)
            await asyncio.sleep(0.05)

    async def negotiate(self, c, reader, writer):
        """Greeting (and RFC 1929). True when the client may send its request."""
        ver, nm = await reader.readexactly(2)
        if ver != 5:
            return False
        methods = await reader.readexactly(nm)
        want = 2 if self.auth else 0
        if self.delay_file:
            try:
                with open(self.delay_file) as f:
                    delay = float(f.read().strip() or 0)
            except (OSError, ValueError):
                delay = 0
            if delay > 0:
                await asyncio.sleep(min(delay, 10))
        if want not in methods:
            writer.write(b"\x05\xff")
            await writer.drain()
            return False
        if not self.auth:
            c.early = buffered(reader) + kernel_pending(c.fd)
        writer.write(bytes([5, want]))
        await writer.drain()
        if self.auth:
            v, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode("latin-1")
            (plen,) = await reader.readexactly(1)
            pw = (await reader.readexactly(plen)).decode("latin-1")
            idx = None
            for i, (u, p) in enumerate(self.auth, 1):
                if u == user and p == pw:
                    idx = i
            if v != 1 or idx is None:
                self.log(f"authfail id={c.id} user={user}")
                writer.write(b"\x01\x01")
                await writer.drain()
                return False
            c.cred = str(idx)
            c.early = buffered(reader) + kernel_pending(c.fd)
            writer.write(b"\x01\x00")
            await writer.drain()
        return True

    async def read_request(self, reader, first):
        ver = first[0]
        cmd, _rsv, atyp = await reader.readexactly(3)
        if atyp == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif atyp == 3:
            (n,) = await reader.readexactly(1)
            host = (await reader.readexactly(n)).decode("latin-1")
        else:
            raise ValueError(f"atyp {atyp}")
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        return ver, cmd, host, port

    async def handle(self, reader, writer):
        sock = writer.get_extra_info("socket")
        c = Conn(self.next_id, reader, sock.fileno())
        self.next_id += 1
        self.accepted += 1
        self.conns[c.id] = c
        peer = writer.get_extra_info("peername")
        self.log(f"accept id={c.id} peer={peer[0]}:{peer[1]}")
        why = "error"
        up_w = None
        try:
            if not await asyncio.wait_for(self.negotiate(c, reader, writer), NEGOTIATE_TIMEOUT):
                why = "refused"
                return
            c.state = "idle"
            c.greeted_t = time.time_ns()
            early = c.early
            self.log(f"greeted id={c.id} cred={c.cred} pipelined={early}")
            limit = self.idle_close if self.idle_close else IDLE_MAX
            try:
                first = await asyncio.wait_for(reader.readexactly(1), limit)
            except asyncio.TimeoutError:
                why = "idle-close"
                self.idle_closed += 1
                return
            except asyncio.IncompleteReadError:
                why = "eof"
                self.idle_eof += 1
                return
            c.state = "request"
            ver, cmd, host, port = await asyncio.wait_for(self.read_request(reader, first), 10)
            now = time.time_ns()
            self.reqs += 1
            idle_ms = (now - c.greeted_t) / 1e6
            self.log(
                f"req id={c.id} dst={host}:{port} cred={c.cred} accept_t={c.accept_t} "
                f"greeted_t={c.greeted_t} idle_ms={idle_ms:.1f} pipelined={1 if early else 0}"
            )
            if self.drop_pooled > 0 and idle_ms >= 500:
                self.drop_pooled -= 1
                self.log(f"drop id={c.id} dst={host}:{port} idle_ms={idle_ms:.1f}")
                why = "dropped"
                return
            if ver != 5 or cmd != 1:
                writer.write(b"\x05\x07\x00\x01\0\0\0\0\0\0")
                await writer.drain()
                why = "badcmd"
                return
            rep = 0
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT
                )
            except (OSError, asyncio.TimeoutError) as e:
                rep = 5 if isinstance(e, ConnectionRefusedError) else 4
            if rep:
                writer.write(bytes([5, rep, 0, 1, 0, 0, 0, 0, 0, 0]))
                await writer.drain()
                self.log(f"reply id={c.id} rep={rep} first=0")
                why = "connect-failed"
                return
            bnd = up_w.get_extra_info("sockname")
            a = ipaddress.ip_address(bnd[0])
            atyp = 1 if a.version == 4 else 4
            writer.write(bytes([5, 0, 0, atyp]) + a.packed + struct.pack("!H", bnd[1]))
            await writer.drain()
            self.log(f"reply id={c.id} rep=0 first={buffered(reader)}")
            c.state = "relay"
            await asyncio.wait_for(
                asyncio.gather(pump(reader, up_w), pump(up_r, writer)), RELAY_MAX
            )
            why = "done"
        except asyncio.IncompleteReadError:
            why = "eof"
        except (OSError, ValueError, asyncio.TimeoutError):
            why = "error"
        finally:
            self.log(f"close id={c.id} state={c.state} why={why}")
            del self.conns[c.id]
            for w in (writer, up_w):
                if w is not None:
                    try:
                        w.close()
                    except OSError:
                        pass


async def serve(addr, port, srv, ready):
    server = await asyncio.start_server(
        srv.handle, host=addr, port=int(port), backlog=4096, reuse_address=True
    )
    asyncio.ensure_future(srv.sampler())
    out(f"serving socks5 on {addr}:{port} auth={len(srv.auth)} idle_close={srv.idle_close}")
    if ready:
        with open(ready, "w") as f:
            f.write("ready\n")
    await server.serve_forever()


# ------------------------------------------------------------------ clients


async def http_get(host, port, expect, timeout):
    """One who-am-i GET on a fresh connection: None when the body's last
    line is EXPECT, else what went wrong."""
    w = None
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        w.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(65536 * 4), timeout)
        while True:
            more = await asyncio.wait_for(r.read(65536), timeout)
            if not more:
                break
            data += more
        body = data.split(b"\r\n\r\n", 1)[-1].decode("latin-1").strip().splitlines()
        got = body[-1] if body else ""
        if not data.startswith(b"HTTP/1.0 200") or got != expect:
            return f"bad:{got or 'empty'}"
        return None
    except asyncio.TimeoutError:
        return "timeout"
    except OSError as e:
        return type(e).__name__
    finally:
        if w is not None:
            w.close()


def summarize(results, n, t0, extra=""):
    good = sum(1 for x in results if x is None)
    bad = sum(1 for x in results if x is not None and x.startswith("bad:"))
    errs = len(results) - good - bad
    reasons = {}
    for x in results:
        if x is not None:
            reasons[x] = reasons.get(x, 0) + 1
    rs = " ".join(f"{k}x{v}" for k, v in sorted(reasons.items())[:6])
    ok = good == n
    out(
        f"{'ok' if ok else 'failed'} good {good}/{n} bad {bad} errors {errs} "
        f"in {time.monotonic() - t0:.1f} s {rs}{extra}".rstrip()
    )
    return 0 if ok else 1


async def burst(host, port, n, conc, secs, expect):
    sem = asyncio.Semaphore(conc)
    results = []
    t0 = time.monotonic()

    async def one():
        async with sem:
            left = secs - (time.monotonic() - t0)
            if left <= 0:
                results.append("deadline")
                return
            results.append(await http_get(host, port, expect, min(10, left)))

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), secs + 5)
    except asyncio.TimeoutError:
        pass
    results += ["deadline"] * (n - len(results))
    return summarize(results, n, t0)


async def spread(host, port, n, expect, seed, lo, hi, every, long_lo, long_hi):
    rng = random.Random(seed)
    results = []
    gaps = []
    t0 = time.monotonic()
    for i in range(n):
        if time.monotonic() - t0 > 60:
            results.append("deadline")
            continue
        results.append(await http_get(host, port, expect, 10))
        if i < n - 1:
            if every and (i + 1) % every == 0:
                g = rng.uniform(long_lo, long_hi)
            else:
                g = rng.uniform(lo, hi)
            gaps.append(int(g * 1000))
            await asyncio.sleep(g)
    return summarize(results, n, t0, f" gaps_ms {','.join(map(str, gaps))}")


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    raise_nofile()
    if cmd == "serve":
        opts = {
            "--auth": [],
            "--idle-close": None,
            "--drop-pooled": "0",
            "--delay-file": None,
            "--log": None,
            "--status": None,
            "--ready": None,
        }
        pos = []
        i = 0
        while i < len(args):
            a = args[i]
            if a in opts:
                if a == "--auth":
                    u, _, p = args[i + 1].partition(":")
                    opts[a].append((u, p))
                else:
                    opts[a] = args[i + 1]
                i += 2
            else:
                pos.append(a)
                i += 1
        if len(pos) != 2:
            print("serve ADDR PORT [options]", file=sys.stderr)
            return 2
        idle = float(opts["--idle-close"]) if opts["--idle-close"] else None
        srv = Server(opts["--auth"], idle, opts["--log"], opts["--status"], int(opts["--drop-pooled"]),
                     opts["--delay-file"])
        try:
            asyncio.run(serve(pos[0], pos[1], srv, opts["--ready"]))
        except KeyboardInterrupt:
            pass
        return 0
    try:
        if cmd == "burst":
            h, p, n, conc, secs, exp = args
            return asyncio.run(burst(h, p, int(n), int(conc), float(secs), exp))
        if cmd == "spread":
            h, p, n, exp, seed, lo, hi = args[:7]
            every, llo, lhi = (args[7:10] + ["0", "0", "0"])[:3]
            return asyncio.run(
                spread(h, p, int(n), exp, int(seed), float(lo), float(hi), int(every),
                       float(llo), float(lhi))
            )
    except (OSError, ValueError) as e:
        out(f"error: {type(e).__name__}: {e}")
        return 1
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
