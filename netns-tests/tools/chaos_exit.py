#!/usr/bin/env python3
"""chaos_exit — an exit that answers every stage of SOCKS5 and HTTP CONNECT
with chaos for a bounded time, and the clients that keep traffic going
through it and beside it (netns-tests/hostile.sh, issue 22). Python 3
standard library only; every loop is bounded in count and in time.

Server:

  serve ADDR --socks PORT --socks-auth PORT USER PASS --http PORT --secs SECS
        [--seed S] [--calm] [--stats FILE] [--ready FILE]
      SOCKS5 without authentication on --socks, SOCKS5 with RFC 1929
      username/password on --socks-auth, HTTP CONNECT on --http, all on ADDR,
      for SECS seconds; then the listeners close, every connection is reset,
      every relay socket closed, the counts written, and the process exits.
      At each stage of each connection a kind of answer is drawn from that
      stage's deck (every kind `weight` times, dealt without replacement and
      reshuffled when empty, so each kind comes once per deck) by a
      Random(f"{seed}:{stage}"); the bytes and lengths of a connection come
      from Random(f"{seed}:c{N}") (N: its accept order). The seed is printed
      at start ("seed S"); the same seed deals the same sequence per stage.
        greet    (the answer to the greeting) ok, split (1 byte per write,
                 20-80 ms apart), random (1-64 random bytes, then silence),
                 big (16 KiB random), short (the first byte only), badver
                 (04 00), nomethod (05 ff), wrongmethod (no-auth port: asks
                 for username/password; auth port: skips auth), silence
                 (reads, never answers), reset (RST), close (FIN)
        auth     (RFC 1929 reply) ok, split, fail (01 01), badver (05 00),
                 random, short, silence, reset, close
        request  (CONNECT / UDP ASSOCIATE reply) ok, split, okextra (the
                 reply and random bytes behind it), random, short (the reply
                 cut), refused (REP 1-8), badatyp (ATYP 7), domain (a domain
                 longer than the reply), badver, silence, reset, close
        assoc    (the relay address of an ASSOCIATE ok) real, zero
                 (0.0.0.0/:: with the real port), closedport (a port where
                 nothing listens)
        ctl      (the control connection of an association) hold, closeafter
                 and resetafter (0.2-2 s), garbage (random bytes on it),
                 flood (random bytes on it as fast as it takes them, 3 s)
        dgram    (each datagram from the client, per relay) forward (to the
                 target; its answers come back correctly wrapped), echo
                 ("echo <payload>" naming the target), random, trunc (a
                 correct datagram cut inside its header), badatyp, rsv
                 (RSV != 0), frag (FRAG 1), forged (naming gw's own
                 addresses, loopback and the containers c2/c3: egressd must
                 drop these), stranger (naming 203.0.113.99:5000 or
                 [2001:db8:203::99]:5000), oversize (65 000 bytes), empty (a
                 header and no payload), burst (20 copies of the echo), drop
        http     (the answer to the CONNECT head) ok, split, okextra,
                 random, short, status (403/404/407/500/502/503/301),
                 badline (not HTTP), bighead (200 then 12 KiB of header lines
                 that never end), continue (100 then 200), silence, reset,
                 close
        relay    (TCP after a CONNECT ok) clean, split (the first 256 bytes
                 to the client 1-7 at a time), inject (random bytes to the
                 client first), reset and close (after 0-64 KiB to the
                 client), stall (nothing relayed either way)
      --calm: every stage answers ok (clean, real, hold, forward); each
      datagram is also answered by every forged and stranger source of its
      family, so that egressd opens beforehand every reply socket the chaos
      can make it open (its reply-socket pool is a bounded cache, kept).
      Log (stdout): "seed S ...", one "conn N PORTKIND peer P t=SECS:
      stage=kind ..." per connection when it ends, and at exit "counts stage.kind=N
      ...". --stats FILE gets the counts ("stage.kind N" lines, "conns N").

Clients (one line on stdout; exit 0 when the tool itself worked):

  load SECS HOST4 HOST6 DNS4 DNS6 [--tcp N] [--max N] [--until EPOCH]
                                                        (in a chaos container)
      for SECS s (or until the wall clock reads EPOCH, if sooner; at most --max, 5000, attempts per thread, at most 50 a
      second): per family, N
      (3) TCP threads (who-am-i on :80, a 64 KiB download from :9002 with
      its sha256 checked, a held flow on :9004; 3 s each), two UDP threads
      (a fresh socket sending 8 datagrams to :5000, 25 ms apart, answers
      collected for 0.5 s more) and one DNS
      thread (whoami.test TXT from a fresh socket, 1.5 s):
      "load tcp4 ok=.. reset=.. ... udp4 answered=.. ... dns4 ok=.. ..."
  kinds                                         every "stage.kind" the decks hold
  trickle HOST SECS                             the control's trickle alone (a reference
                                                read from elsewhere): "trickle ..."
  control SECS HOST DNS WANT [--ready FILE] [--gap SECS]   (in a neighbour)
      for SECS s: one held flow (:9004, "hello" at the start must name WANT,
      "bye" at the end must be answered), one trickle (:9005, read to the
      end: no gap over --gap s (1.5), not cut; its gaps over 0.5 s listed), a download of 1 MiB from :9002 every
      0.25 s (sha256 checked), and a whoami.test TXT lookup every 0.25 s
      (2 s each, the answer must be WANT). READY is written once the held
      flow and the trickle flow.
      "control ok|failed hold=.. trickle=.. downloads=OK/N dns=OK/N ..."
"""

import asyncio
import hashlib
import ipaddress
import os
import random
import socket
import struct
import sys
import threading
import time

from egtest import dispatch, family, mark_ready, out, pop_opt, raise_nofile, stream_sha
from hostile_dns import first_txt
from hostile_dns import query as dns_query

DECKS = {
    "greet": {"ok": 4, "split": 1, "random": 1, "big": 1, "short": 1, "badver": 1, "nomethod": 1,
              "wrongmethod": 1, "silence": 1, "reset": 1, "close": 1},
    "auth": {"ok": 4, "split": 1, "fail": 1, "badver": 1, "random": 1, "short": 1, "silence": 1,
             "reset": 1, "close": 1},
    "request": {"ok": 5, "split": 1, "okextra": 1, "random": 1, "short": 1, "refused": 1,
                "badatyp": 1, "domain": 1, "badver": 1, "silence": 1, "reset": 1, "close": 1},
    "assoc": {"real": 3, "zero": 1, "closedport": 1},
    "ctl": {"hold": 3, "closeafter": 1, "resetafter": 1, "garbage": 1, "flood": 1},
    "dgram": {"forward": 4, "echo": 1, "random": 1, "trunc": 1, "badatyp": 1, "rsv": 1, "frag": 1,
              "forged": 1, "stranger": 1, "oversize": 1, "empty": 1, "burst": 1, "drop": 1},
    "http": {"ok": 5, "split": 1, "okextra": 1, "random": 1, "short": 1, "status": 1, "badline": 1,
             "bighead": 1, "continue": 1, "silence": 1, "reset": 1, "close": 1},
    "relay": {"clean": 3, "split": 1, "inject": 1, "reset": 1, "close": 1, "stall": 1},
}
CALM = {"greet": "ok", "auth": "ok", "request": "ok", "assoc": "real", "ctl": "hold", "dgram": "forward",
        "http": "ok", "relay": "clean"}
FORGED = {4: ["10.8.0.1", "198.51.100.200", "127.0.0.1", "10.8.0.12", "10.8.0.13"],
          6: ["fd08::1", "2001:db8:100::c8", "::1", "fd08::12", "fd08::13"]}
STRANGER = {4: ("203.0.113.99", 5000), 6: ("2001:db8:203::99", 5000)}
HARD_END = 900  # no server outlives this, whatever --secs says


# ------------------------------------------------------------------ SOCKS5 bits


def enc_addr(host, port):
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return b"\x01" + ip.packed + struct.pack("!H", port)
    return b"\x04" + ip.packed + struct.pack("!H", port)


def dec_addr(b, i):
    """(host, port, next index) from ATYP at b[i], or None."""
    if i >= len(b):
        return None
    t = b[i]
    if t == 1 and len(b) >= i + 7:
        return str(ipaddress.ip_address(b[i + 1 : i + 5])), struct.unpack("!H", b[i + 5 : i + 7])[0], i + 7
    if t == 4 and len(b) >= i + 19:
        return str(ipaddress.ip_address(b[i + 1 : i + 17])), struct.unpack("!H", b[i + 17 : i + 19])[0], i + 19
    if t == 3 and len(b) >= i + 2:
        n = b[i + 1]
        if len(b) >= i + 4 + n:
            return b[i + 2 : i + 2 + n].decode(errors="replace"), struct.unpack("!H", b[i + 2 + n : i + 4 + n])[0], i + 4 + n
    return None


async def read_addr(reader, atyp):
    if atyp == 1:
        host = str(ipaddress.ip_address(await reader.readexactly(4)))
    elif atyp == 4:
        host = str(ipaddress.ip_address(await reader.readexactly(16)))
    elif atyp == 3:
        n = (await reader.readexactly(1))[0]
        host = (await reader.readexactly(n)).decode(errors="replace")
    else:
        raise ValueError(f"atyp {atyp}")
    port = struct.unpack("!H", await reader.readexactly(2))[0]
    return host, port


def fam_of(host):
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 4


# ------------------------------------------------------------------ the server


class Deck:
    def __init__(self, seed, stage, calm):
        self.rng = random.Random(f"{seed}:{stage}")
        self.weights = DECKS[stage]
        self.calm = CALM[stage] if calm else None
        self.cards = []

    def draw(self):
        if self.calm:
            return self.calm
        if not self.cards:
            self.cards = [k for k, w in self.weights.items() for _ in range(w)]
            self.rng.shuffle(self.cards)
        return self.cards.pop()


class Hangup(Exception):
    """This connection's chaos is done; close it as planned."""


class Chaos:
    def __init__(self, seed, calm, user, pw):
        self.seed = seed
        self.calm = calm
        self.user = user.encode()
        self.pw = pw.encode()
        self.decks = {s: Deck(seed, s, calm) for s in DECKS}
        self.counts = {}
        self.nconn = 0
        self.writers = set()
        self.transports = set()
        self.relays = set()
        self.stopping = False
        self.assocs = 0
        self.dgrams = 0
        self.t0 = time.monotonic()

    def t(self):
        return f"t={time.monotonic() - self.t0:.1f}"

    def draw(self, stage, plan):
        k = self.decks[stage].draw()
        self.counts[f"{stage}.{k}"] = self.counts.get(f"{stage}.{k}", 0) + 1
        plan.append(f"{stage}={k}")
        return k

    # ---------------------------------------------------------- helpers

    @staticmethod
    def rst(writer):
        sock = writer.get_extra_info("socket")
        try:
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        writer.transport.abort()

    @staticmethod
    async def hang(reader, secs=HARD_END):
        """Silence: read and discard until the peer goes (or the run ends)."""
        end = time.monotonic() + secs
        try:
            while (left := end - time.monotonic()) > 0:
                b = await asyncio.wait_for(reader.read(65536), left)
                if not b:
                    return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass

    @staticmethod
    async def send(writer, data, split=False, rng=None):
        if split:
            sock = writer.get_extra_info("socket")
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
            for x in data:
                writer.write(bytes([x]))
                await writer.drain()
                await asyncio.sleep(rng.uniform(0.02, 0.08))
        else:
            writer.write(data)
            await writer.drain()

    async def common(self, kind, reader, writer, good, rng):
        """The kinds every stage shares; raises Hangup when the connection
        is done, returns for kinds it does not know."""
        if kind == "random":
            writer.write(rng.randbytes(rng.randint(1, 64)))
            await writer.drain()
            await self.hang(reader)
            raise Hangup
        if kind == "big":
            writer.write(rng.randbytes(16384))
            await writer.drain()
            await self.hang(reader)
            raise Hangup
        if kind == "short":
            writer.write(good[: rng.randint(1, max(1, len(good) - 1))])
            await writer.drain()
            if rng.random() < 0.5:
                await self.hang(reader)
            raise Hangup
        if kind == "silence":
            await self.hang(reader)
            raise Hangup
        if kind == "reset":
            self.rst(writer)
            raise Hangup
        if kind == "close":
            raise Hangup

    # ---------------------------------------------------------- SOCKS5

    async def socks(self, reader, writer, auth):
        self.nconn += 1
        n = self.nconn
        rng = random.Random(f"{self.seed}:c{n}")
        plan = []
        peer = writer.get_extra_info("peername")
        self.writers.add(writer)
        try:
            _ver, nm = await asyncio.wait_for(reader.readexactly(2), 30)
            await reader.readexactly(nm)
            ok = b"\x05\x02" if auth else b"\x05\x00"
            k = self.draw("greet", plan)
            skip_auth = False
            if k in ("ok", "split"):
                await self.send(writer, ok, k == "split", rng)
            elif k == "badver":
                await self.send(writer, b"\x04\x00")
                await self.hang(reader)
                raise Hangup
            elif k == "nomethod":
                await self.send(writer, b"\x05\xff")
                raise Hangup
            elif k == "wrongmethod":
                if auth:
                    await self.send(writer, b"\x05\x00")
                    skip_auth = True
                else:
                    await self.send(writer, b"\x05\x02")
                    await self.hang(reader)
                    raise Hangup
            else:
                await self.common(k, reader, writer, ok, rng)
            if auth and not skip_auth:
                _v, ul = await asyncio.wait_for(reader.readexactly(2), 30)
                await reader.readexactly(ul)
                pl = (await reader.readexactly(1))[0]
                await reader.readexactly(pl)
                k = self.draw("auth", plan)
                if k in ("ok", "split"):
                    await self.send(writer, b"\x01\x00", k == "split", rng)
                elif k == "fail":
                    await self.send(writer, b"\x01\x01")
                    raise Hangup
                elif k == "badver":
                    await self.send(writer, b"\x05\x00")
                    await self.hang(reader)
                    raise Hangup
                else:
                    await self.common(k, reader, writer, b"\x01\x00", rng)
            _ver, cmd, _rsv, atyp = await asyncio.wait_for(reader.readexactly(4), 30)
            host, dport = await read_addr(reader, atyp)
            local = writer.get_extra_info("sockname")
            k = self.draw("request", plan)
            bound = enc_addr(local[0], local[1])
            if k in ("ok", "split", "okextra"):
                if cmd == 1:
                    await self.connect(reader, writer, host, dport, k, rng, plan)
                elif cmd == 3:
                    await self.associate(reader, writer, local, k, rng, plan)
                else:
                    await self.send(writer, b"\x05\x07\x00" + bound)
                return
            if k == "refused":
                await self.send(writer, bytes([5, rng.randint(1, 8), 0]) + bound)
                raise Hangup
            if k == "badatyp":
                await self.send(writer, b"\x05\x00\x00\x07" + rng.randbytes(6))
                await self.hang(reader)
                raise Hangup
            if k == "domain":
                await self.send(writer, b"\x05\x00\x00\x03" + bytes([rng.randint(32, 255)]) + b"chaos.test\x00\x50")
                await self.hang(reader)
                raise Hangup
            if k == "badver":
                await self.send(writer, b"\x04\x5a" + bound)
                await self.hang(reader)
                raise Hangup
            await self.common(k, reader, writer, b"\x05\x00\x00" + bound, rng)
        except Hangup:
            pass
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            plan.append("peer-gone")
        except asyncio.CancelledError:
            plan.append("cancelled")
        finally:
            self.writers.discard(writer)
            writer.close()
            out(f"conn {n} {'socks-auth' if auth else 'socks'} peer {peer[0] if peer else '?'} {self.t()}: {' '.join(plan)}")

    async def connect(self, reader, writer, host, dport, k, rng, plan):
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(host, dport), 3)
        except (OSError, asyncio.TimeoutError, UnicodeError, ValueError):
            plan.append("upstream=failed")
            await self.send(writer, b"\x05\x05\x00" + enc_addr("0.0.0.0", 0))
            return
        try:
            b = uw.get_extra_info("sockname")
            reply = b"\x05\x00\x00" + enc_addr(b[0], b[1])
            await self.send(writer, reply, k == "split", rng)
            if k == "okextra":
                writer.write(rng.randbytes(rng.randint(1, 256)))
            await self.relay(reader, writer, ur, uw, rng, plan)
        finally:
            uw.close()

    async def associate(self, reader, writer, local, k, rng, plan):
        loop = asyncio.get_running_loop()
        relay = Relay(self, rng)
        transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(local[0], 0))
        self.transports.add(transport)
        self.relays.add(relay)
        self.assocs += 1
        try:
            ra = transport.get_extra_info("sockname")
            a = self.draw("assoc", plan)
            if a == "zero":
                addr = enc_addr("0.0.0.0" if ":" not in ra[0] else "::", ra[1])
            elif a == "closedport":
                # A port nothing listens on: bind, note, close.
                s = socket.socket(family(ra[0]), socket.SOCK_DGRAM)
                s.bind((ra[0], 0))
                p = s.getsockname()[1]
                s.close()
                addr = enc_addr(ra[0], p)
            else:
                addr = enc_addr(ra[0], ra[1])
            await self.send(writer, b"\x05\x00\x00" + addr, k == "split", rng)
            if k == "okextra":
                writer.write(rng.randbytes(rng.randint(1, 64)))
            c = self.draw("ctl", plan)
            if c == "hold":
                await self.hang(reader)
            elif c in ("closeafter", "resetafter"):
                try:
                    await asyncio.wait_for(self.hang(reader), rng.uniform(0.2, 2.0))
                except asyncio.TimeoutError:
                    pass
                if c == "resetafter":
                    self.rst(writer)
            elif c == "garbage":
                await asyncio.sleep(rng.uniform(0.1, 1.0))
                writer.write(rng.randbytes(rng.randint(1, 512)))
                await writer.drain()
                await self.hang(reader)
            else:  # flood: as fast as the connection takes it, for 3 s
                chunk = rng.randbytes(65536)
                t0 = time.monotonic()
                sent = 0
                try:
                    while time.monotonic() < t0 + 3 and not writer.is_closing():
                        writer.write(chunk)
                        await writer.drain()
                        sent += len(chunk)
                    plan.append(f"flooded={sent >> 10}KiB")
                except OSError:
                    plan.append(f"flooded={sent >> 10}KiB,closed-after={time.monotonic() - t0:.1f}s")
                    raise
                await self.hang(reader)
        finally:
            relay.close()
            transport.close()
            self.transports.discard(transport)
            self.relays.discard(relay)

    # ---------------------------------------------------------- HTTP CONNECT

    async def http(self, reader, writer):
        self.nconn += 1
        n = self.nconn
        rng = random.Random(f"{self.seed}:c{n}")
        plan = []
        peer = writer.get_extra_info("peername")
        self.writers.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            line = head.split(b"\r\n", 1)[0].decode(errors="replace").split()
            target = line[1] if len(line) > 1 else ""
            host, _, p = target.rpartition(":")
            host = host.strip("[]")
            ok = b"HTTP/1.1 200 Connection established\r\n\r\n"
            k = self.draw("http", plan)
            if k in ("ok", "split", "okextra", "continue"):
                try:
                    ur, uw = await asyncio.wait_for(asyncio.open_connection(host, int(p)), 3)
                except (OSError, asyncio.TimeoutError, ValueError, UnicodeError):
                    plan.append("upstream=failed")
                    await self.send(writer, b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    raise Hangup
                try:
                    if k == "continue":
                        await self.send(writer, b"HTTP/1.1 100 Continue\r\n\r\n" + ok)
                    else:
                        await self.send(writer, ok, k == "split", rng)
                    if k == "okextra":
                        writer.write(rng.randbytes(rng.randint(1, 256)))
                    await self.relay(reader, writer, ur, uw, rng, plan)
                finally:
                    uw.close()
                return
            if k == "status":
                code = rng.choice([403, 404, 407, 500, 502, 503, 301])
                await self.send(writer, f"HTTP/1.1 {code} Chaos\r\nContent-Length: 0\r\n\r\n".encode())
                await self.hang(reader)
                raise Hangup
            if k == "badline":
                await self.send(writer, rng.choice([b"HTTX/1.1 200 OK\r\n\r\n", b"SSH-2.0-chaos\r\n\r\n",
                                                    b"HTTP/1.1 2x0 what\r\n\r\n", b"HTTP/1.1\r\n\r\n"]))
                await self.hang(reader)
                raise Hangup
            if k == "bighead":
                writer.write(b"HTTP/1.1 200 Connection established\r\n")
                for _ in range(120):
                    writer.write(b"X-Chaos: " + b"a" * 100 + b"\r\n")
                await writer.drain()
                await self.hang(reader)
                raise Hangup
            await self.common(k, reader, writer, ok, rng)
        except Hangup:
            pass
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError):
            plan.append("peer-gone")
        except asyncio.CancelledError:
            plan.append("cancelled")
        finally:
            self.writers.discard(writer)
            writer.close()
            out(f"conn {n} http peer {peer[0] if peer else '?'} {self.t()}: {' '.join(plan)}")

    # ---------------------------------------------------------- TCP relay

    async def relay(self, cr, cw, ur, uw, rng, plan):
        k = self.draw("relay", plan)
        self.writers.add(uw)
        try:
            if k == "stall":
                await self.hang(cr)
                return
            if k == "inject":
                cw.write(rng.randbytes(rng.randint(1, 512)))
                await cw.drain()
            limit = rng.randint(0, 65536) if k in ("reset", "close") else None
            split = 256 if k == "split" else 0

            async def up():
                try:
                    while True:
                        b = await cr.read(65536)
                        if not b:
                            break
                        uw.write(b)
                        await uw.drain()
                    if uw.can_write_eof():
                        uw.write_eof()
                except (OSError, RuntimeError):
                    pass

            async def down():
                nonlocal split
                sent = 0
                try:
                    while True:
                        b = await ur.read(65536)
                        if not b:
                            break
                        if limit is not None and sent + len(b) >= limit:
                            cw.write(b[: max(0, limit - sent)])
                            await cw.drain()
                            return "cut"
                        while split > 0 and b:
                            m = rng.randint(1, 7)
                            cw.write(b[:m])
                            await cw.drain()
                            b = b[m:]
                            split -= m
                            await asyncio.sleep(rng.uniform(0.005, 0.03))
                        cw.write(b)
                        await cw.drain()
                        sent += len(b)
                    if cw.can_write_eof():
                        cw.write_eof()
                except (OSError, RuntimeError):
                    pass
                return "end"

            t_up = asyncio.ensure_future(up())
            t_down = asyncio.ensure_future(down())
            done, _ = await asyncio.wait([t_down], timeout=HARD_END)
            if t_down in done and t_down.result() == "cut":
                if k == "reset":
                    self.rst(cw)
                    self.rst(uw)
                t_up.cancel()
                return
            await asyncio.wait([t_up], timeout=10)
            t_up.cancel()
        finally:
            self.writers.discard(uw)

    # ---------------------------------------------------------- end of the run

    def stop(self):
        self.stopping = True
        for w in list(self.writers):
            self.rst(w)
        for t in list(self.transports):
            t.close()
        for r in list(self.relays):
            r.close()

    def summary(self):
        return " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))


class Relay(asyncio.DatagramProtocol):
    """One association's relay: faces egressd on one socket; forwards
    through sockets of its own (from the exit's egress address)."""

    def __init__(self, chaos, rng):
        self.chaos = chaos
        self.rng = rng
        self.t = None
        self.client = None
        self.out = {}  # family -> (transport)
        self.closed = False

    def connection_made(self, transport):
        self.t = transport

    def wrap(self, host, port, payload):
        return b"\x00\x00\x00" + enc_addr(host, port) + payload

    def to_client(self, b):
        if self.client is not None and not self.closed:
            try:
                self.t.sendto(b, self.client)
            except OSError:
                pass

    def datagram_received(self, data, addr):
        if self.client is None:
            self.client = addr
        if addr != self.client:
            return
        self.chaos.dgrams += 1
        if len(data) < 4 or data[:3] != b"\x00\x00\x00":
            return
        a = dec_addr(data, 3)
        if a is None:
            return
        host, port, i = a
        payload = data[i:]
        try:
            fam = ipaddress.ip_address(host).version
        except ValueError:
            return
        plan = []
        k = self.chaos.draw("dgram", plan)
        rng = self.rng
        good = self.wrap(host, port, b"echo " + payload[:200])
        if k == "forward":
            self.forward(fam, host, port, payload)
            if self.chaos.calm:
                for f in FORGED[fam]:
                    self.to_client(self.wrap(f, port, b"forged"))
                self.to_client(self.wrap(STRANGER[fam][0], STRANGER[fam][1], b"stranger"))
        elif k == "echo":
            self.to_client(good)
        elif k == "random":
            self.to_client(rng.randbytes(rng.randint(0, 200)))
        elif k == "trunc":
            hl = 3 + len(enc_addr(host, port))
            self.to_client(good[: rng.randint(1, hl - 1)])
        elif k == "badatyp":
            self.to_client(b"\x00\x00\x00" + bytes([rng.choice([0, 2, 5, 9, 255])]) + rng.randbytes(18))
        elif k == "rsv":
            self.to_client(b"\x01\x02" + good[2:])
        elif k == "frag":
            self.to_client(b"\x00\x00\x01" + good[3:])
        elif k == "forged":
            for f in FORGED[fam]:
                self.to_client(self.wrap(f, port, b"forged"))
        elif k == "stranger":
            self.to_client(self.wrap(STRANGER[fam][0], STRANGER[fam][1], b"stranger"))
        elif k == "oversize":
            self.to_client(self.wrap(host, port, rng.randbytes(65000)))
        elif k == "empty":
            self.to_client(self.wrap(host, port, b""))
        elif k == "burst":
            for _ in range(20):
                self.to_client(good)
        # drop: nothing

    def forward(self, fam, host, port, payload):
        s = self.out.get(fam)
        if s is None:
            if self.closed:
                return
            s = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind(("0.0.0.0" if fam == 4 else "::", 0))
            asyncio.get_running_loop().add_reader(s.fileno(), self.on_out, s)
            self.out[fam] = s
        try:
            s.sendto(payload, (host, port))
        except OSError:
            pass

    def on_out(self, s):
        for _ in range(64):
            try:
                data, addr = s.recvfrom(70000)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.to_client(self.wrap(addr[0].split("%")[0], addr[1], data))

    def close(self):
        self.closed = True
        loop = asyncio.get_running_loop()
        for s in self.out.values():
            loop.remove_reader(s.fileno())
            s.close()
        self.out = {}


async def serve(addr, socks, auth, http, secs, seed, calm, stats, ready):
    chaos = Chaos(seed, calm, auth[1], auth[2])
    servers = []
    kw = {"host": addr, "backlog": 1024, "reuse_address": True}
    servers.append(await asyncio.start_server(lambda r, w: chaos.socks(r, w, False), port=socks, **kw))
    servers.append(await asyncio.start_server(lambda r, w: chaos.socks(r, w, True), port=auth[0], **kw))
    servers.append(await asyncio.start_server(chaos.http, port=http, limit=1 << 16, **kw))
    out(f"seed {seed} secs {secs} calm {int(calm)} socks {socks} socks-auth {auth[0]} http {http} on {addr}")
    mark_ready(ready)
    await asyncio.sleep(min(secs, HARD_END))
    for s in servers:
        s.close()
    chaos.stop()
    await asyncio.sleep(0.3)
    chaos.stop()
    line = f"counts conns={chaos.nconn} assocs={chaos.assocs} dgrams={chaos.dgrams} {chaos.summary()}"
    out(line)
    if stats:
        tmp = stats + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"seed {seed}\nconns {chaos.nconn}\nassocs {chaos.assocs}\ndgrams {chaos.dgrams}\n")
            for k, v in sorted(chaos.counts.items()):
                f.write(f"{k} {v}\n")
        os.replace(tmp, stats)


# ------------------------------------------------------------------ clients


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}

    def inc(self, key):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + 1


def recv_all(s, limit=1 << 20):
    buf = b""
    while len(buf) < limit:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    return buf


def tcp_op(host, op, sha64k):
    """One TCP attempt: ok | reset | timeout | eof | corrupt | refused | error."""
    try:
        with socket.create_connection((host, {"whoami": 80, "download": 9002, "hold": 9004}[op]), timeout=3) as s:
            s.settimeout(3)
            if op == "whoami":
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                b = recv_all(s)
                if not b:
                    return "eof"
                return "ok" if b.startswith(b"HTTP/1.0 200") else "corrupt"
            if op == "download":
                s.sendall(b"65536\n")
                b = recv_all(s, 65536 * 2)
                if not b:
                    return "eof"
                if len(b) < 65536:
                    return "short"
                return "ok" if hashlib.sha256(b).hexdigest() == sha64k else "corrupt"
            s.sendall(b"hello\n")
            f = s.makefile("rb")
            line = f.readline()
            if not line:
                return "eof"
            if not line.startswith(b"ready "):
                return "corrupt"
            s.sendall(b"bye\n")
            line = f.readline()
            return "ok" if line == b"ok\n" else ("eof" if not line else "corrupt")
    except ConnectionResetError:
        return "reset"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError:
        return "error"


def cmd_load(secs, host4, host6, dns4, dns6, *rest):
    raise_nofile()
    rest = list(rest)
    ntcp, rest = pop_opt(rest, "--tcp")
    nmax, rest = pop_opt(rest, "--max")
    until, rest = pop_opt(rest, "--until")
    ntcp = int(ntcp or 3)
    nmax = int(nmax or 5000)
    secs = float(secs)
    if until is not None:  # an absolute end (wall clock), at most SECS away
        secs = max(0.0, min(secs, float(until) - time.time()))
    end = time.monotonic() + secs
    sha64k = stream_sha(65536)
    tallies = {k: Tally() for k in ("tcp4", "tcp6", "udp4", "udp6", "dns4", "dns6")}

    def tcp_loop(name, host, seed):
        rng = random.Random(seed)
        for _ in range(nmax):
            t1 = time.monotonic()
            if t1 >= end:
                return
            tallies[name].inc(tcp_op(host, rng.choice(["whoami", "download", "hold"]), sha64k))
            # at most 50 attempts a second (most resets are instant)
            time.sleep(max(0.0, t1 + 0.02 - time.monotonic()))

    def udp_loop(name, host):
        # A fresh socket (a new session) per attempt, 8 datagrams 25 ms
        # apart on it: once an association stands, its relay gets them all.
        for i in range(nmax):
            if time.monotonic() >= end:
                return
            try:
                with socket.socket(family(host), socket.SOCK_DGRAM) as s:
                    got = set()
                    for j in range(8):
                        s.sendto(f"ask {i}.{j}".encode(), (host, 5000))
                        time.sleep(0.025)
                    t_end = time.monotonic() + 0.5
                    while (left := t_end - time.monotonic()) > 0:
                        s.settimeout(left)
                        try:
                            _b, frm = s.recvfrom(70000)
                        except (socket.timeout, OSError):
                            break
                        got.add("answered" if ipaddress.ip_address(frm[0]) == ipaddress.ip_address(host) else "other")
                    tallies[name].inc("answered" if "answered" in got else ("other" if got else "none"))
            except OSError:
                tallies[name].inc("error")
                time.sleep(0.1)

    def dns_loop(name, server):
        want = ipaddress.ip_address(server)
        for _ in range(nmax):
            t1 = time.monotonic()
            if t1 >= end:
                return
            time.sleep(max(0.0, t1 + 0.02 - time.monotonic()))
            qid = random.randrange(65536)
            try:
                with socket.socket(family(server), socket.SOCK_DGRAM) as s:
                    s.sendto(dns_query(qid, "whoami.test"), (server, 53))
                    res = "none"
                    t_end = time.monotonic() + 1.5
                    while (left := t_end - time.monotonic()) > 0:
                        s.settimeout(left)
                        try:
                            b, frm = s.recvfrom(70000)
                        except (socket.timeout, OSError):
                            break
                        if ipaddress.ip_address(frm[0]) != want:
                            continue
                        ok = len(b) >= 12 and struct.unpack("!H", b[:2])[0] == qid and first_txt(b)
                        res = "ok" if ok else "bad"
                        break
                    tallies[name].inc(res)
            except OSError:
                tallies[name].inc("error")
                time.sleep(0.1)

    threads = []
    for fam, host, dns in ((4, host4, dns4), (6, host6, dns6)):
        for j in range(ntcp):
            threads.append(threading.Thread(target=tcp_loop, args=(f"tcp{fam}", host, f"{fam}:{j}"), daemon=True))
        for _ in range(2):
            threads.append(threading.Thread(target=udp_loop, args=(f"udp{fam}", host), daemon=True))
        threads.append(threading.Thread(target=dns_loop, args=(f"dns{fam}", dns), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, end - time.monotonic() + 10))
    parts = []
    for k, t in tallies.items():
        total = sum(t.c.values())
        parts.append(f"{k} n={total} " + " ".join(f"{a}={b}" for a, b in sorted(t.c.items())))
    out("load " + " ; ".join(parts))
    return 0


def trickle_read(host, end, on_data=None, limit=1.5):
    """Reads the trickle (:9005) until END: "bytes=N maxgap=G at=EPOCH
    gaps=[...]" (gaps over 0.5 s, wall clock); "cut(...)"/"stalled"/"gap"
    first when it ended early or a gap exceeded LIMIT."""
    got = 0
    maxgap, at = 0.0, 0.0
    gaps = []
    why = ""
    try:
        with socket.create_connection((host, 9005), timeout=5) as s:
            s.settimeout(5)
            last = time.monotonic()
            while time.monotonic() < end:
                b = s.recv(65536)
                now = time.monotonic()
                if not b:
                    why = "cut(eof) "
                    break
                if got:
                    g = now - last
                    if g > 0.5:
                        gaps.append(f"{g:.2f}@{time.time():.1f}")
                    if g > maxgap:
                        maxgap, at = g, time.time()
                last = now
                got += len(b)
                if on_data:
                    on_data()
    except socket.timeout:
        why = "stalled(5 s) "
    except OSError as e:
        why = f"cut({type(e).__name__}) "
    if not why and maxgap > limit:
        why = "gap "
    return f"{why}bytes={got} maxgap={maxgap:.2f} at={at:.1f} gaps=[{','.join(gaps[:8])}]"


def cmd_trickle(host, secs):
    """A trickle alone (the reference beside the control)."""
    r = trickle_read(host, time.monotonic() + float(secs))
    out("trickle " + (r if not r.startswith("bytes=") else "ok " + r))
    return 0


def cmd_control(secs, host, dns, want, *rest):
    raise_nofile()
    ready, rest = pop_opt(list(rest), "--ready")
    gap_limit, rest = pop_opt(rest, "--gap")
    gap_limit = float(gap_limit or 1.5)
    secs = float(secs)
    t0 = time.monotonic()
    end = t0 + secs
    res = {}
    flowing = {"hold": threading.Event(), "trickle": threading.Event()}
    sha1m = stream_sha(1 << 20)

    def hold():
        try:
            with socket.create_connection((host, 9004), timeout=5) as s:
                s.settimeout(5)
                f = s.makefile("rb")
                s.sendall(b"hello\n")
                line = f.readline().decode(errors="replace").strip()
                if line != f"ready {want}":
                    res["hold"] = f"bad-hello:{line[:40]}"
                    return
                flowing["hold"].set()
                while time.monotonic() < end:
                    time.sleep(0.1)
                s.sendall(b"bye\n")
                line = f.readline()
                res["hold"] = f"ok:{want}" if line == b"ok\n" else f"no-bye-answer:{line[:20]!r}"
        except OSError as e:
            res["hold"] = f"error:{type(e).__name__}"

    def trickle():
        r = trickle_read(host, end, lambda: flowing["trickle"].set(), gap_limit)
        res["trickle"] = r if not r.startswith("bytes=") else "ok " + r

    def downloads():
        ok = n = 0
        bad = []
        for _ in range(1000):
            t0d = time.monotonic()
            if t0d >= end:
                break
            n += 1
            phase, got, lport, t1 = "connect", 0, 0, time.time()
            try:
                with socket.create_connection((host, 9002), timeout=5) as s:
                    lport = s.getsockname()[1]
                    phase = "recv"
                    s.settimeout(10)
                    s.sendall(b"1048576\n")
                    h = hashlib.sha256()
                    while True:
                        b = s.recv(65536)
                        if not b:
                            break
                        h.update(b)
                        got += len(b)
                    if got == 1 << 20 and h.hexdigest() == sha1m:
                        ok += 1
                    else:
                        bad.append(f"bytes={got}@port{lport}@{t1:.1f}")
            except OSError as e:
                bad.append(f"{phase}:{type(e).__name__}:{got}B@port{lport}@{t1:.1f}+{time.time() - t1:.1f}s")
            # one every 0.25 s: a neighbour's traffic, not a flood of its own
            time.sleep(max(0.0, t0d + 0.25 - time.monotonic()))
        res["downloads"] = f"{ok}/{n}" + (f" bad: {','.join(bad[:3])}" if bad else "")
        res["dl_ok"] = ok == n and n > 0

    def lookups():
        ok = n = 0
        bad = []
        wip = ipaddress.ip_address(dns)
        for _ in range(1000):
            if time.monotonic() >= end:
                break
            n += 1
            qid = random.randrange(65536)
            t1 = time.monotonic()
            try:
                with socket.socket(family(dns), socket.SOCK_DGRAM) as s:
                    s.sendto(dns_query(qid, "whoami.test"), (dns, 53))
                    r = "none"
                    while (left := t1 + 2 - time.monotonic()) > 0:
                        s.settimeout(left)
                        try:
                            b, frm = s.recvfrom(4096)
                        except (socket.timeout, OSError):
                            break
                        if ipaddress.ip_address(frm[0]) != wip:
                            continue
                        got = struct.unpack("!H", b[:2])[0] if len(b) >= 2 else None
                        t = first_txt(b) if got == qid else None
                        r = "ok" if t == want else f"bad:{t}"
                        break
                if r == "ok":
                    ok += 1
                else:
                    bad.append(r)
            except OSError as e:
                bad.append(type(e).__name__)
            time.sleep(max(0.0, t1 + 0.25 - time.monotonic()))
        res["dns"] = f"{ok}/{n}" + (f" bad: {','.join(bad[:3])}" if bad else "")
        res["dns_ok"] = ok == n and n > 0

    th = [threading.Thread(target=f, daemon=True) for f in (hold, trickle)]
    for t in th:
        t.start()
    if flowing["hold"].wait(10) and flowing["trickle"].wait(10):
        mark_ready(ready)
    more = [threading.Thread(target=f, daemon=True) for f in (downloads, lookups)]
    for t in more:
        t.start()
    for t in th + more:
        t.join(max(0.1, end - time.monotonic() + 15))
    good = (res.get("hold", "").startswith("ok:") and res.get("trickle", "").startswith("ok bytes")
            and res.get("dl_ok") and res.get("dns_ok"))
    out(f"control {'ok' if good else 'failed'} hold={res.get('hold', 'unfinished')} "
        f"trickle={res.get('trickle', 'unfinished')} downloads={res.get('downloads', 'unfinished')} "
        f"dns={res.get('dns', 'unfinished')} secs={time.monotonic() - t0:.1f}")
    return 0


def cmd_kinds():
    out(" ".join(f"{st}.{k}" for st, d in DECKS.items() for k in d))
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "serve":
        raise_nofile()
        addr, args = args[0], args[1:]
        socks = auth = http = secs = None
        seed = None
        calm = False
        stats = ready = None
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--socks":
                socks = int(args[i + 1])
                i += 2
            elif a == "--socks-auth":
                auth = (int(args[i + 1]), args[i + 2], args[i + 3])
                i += 4
            elif a == "--http":
                http = int(args[i + 1])
                i += 2
            elif a == "--secs":
                secs = float(args[i + 1])
                i += 2
            elif a == "--seed":
                seed = args[i + 1]
                i += 2
            elif a == "--calm":
                calm = True
                i += 1
            elif a == "--stats":
                stats = args[i + 1]
                i += 2
            elif a == "--ready":
                ready = args[i + 1]
                i += 2
            else:
                print(f"unknown option {a}", file=sys.stderr)
                return 2
        if None in (socks, auth, http, secs):
            print("serve needs --socks, --socks-auth, --http and --secs", file=sys.stderr)
            return 2
        if seed is None:
            seed = str(int.from_bytes(os.urandom(4), "big"))
        asyncio.run(serve(addr, socks, auth, http, secs, seed, calm, stats, ready))
        return 0
    return dispatch({"load": cmd_load, "control": cmd_control, "trickle": cmd_trickle, "kinds": cmd_kinds},
                    cmd, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
