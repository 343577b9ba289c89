#!/usr/bin/env python3
"""hostile_dns — a DNS-over-TCP resolver that answers with broken frames, and
the DNS client of egressd's hostile suite (netns-tests/hostile.sh, issue 22).
Python 3 standard library only; every loop is bounded in count and in time.

A tunnel without UDP (`Socks5(..., udp: false)`, HttpConnect) carries a
container's port-53 datagrams as DNS over TCP (RFC 1035 §4.2.2, 2-byte
length framing) through the exit to the resolver the container asked, on a
connection egressd pools per (tunnel, resolver) and pipelines with wire IDs of
its own. Whatever this resolver sends is read by egressd's DNS-over-TCP
reader.

Server:

  serve ADDR... [--seed S] [--trickle-gap SECS] [--trickle-max SECS] [--ready FILE]
      DNS over TCP on ADDR:53. The first label of each query's name picks the
      answer (the query's ID, egressd's wire ID, is "ID" below):
        good     the genuine answer: TXT "hostile-ok <peer>"
        zero     a frame of length 0 (00 00): not DNS over TCP at all
        one      a 1-byte frame (00 01 00), then the genuine answer
        two      a 2-byte frame holding only ID (00 02 ID), then the genuine answer
        eleven   an 11-byte frame: the first 11 bytes of the genuine answer
                 (ID included; a DNS header is 12), then the genuine answer
        garbage  65 536 random bytes, unframed
        big      a 65 535-byte frame: ID, then random bytes (too big for any
                 datagram to the container)
        wrongid  the genuine answer under three other IDs (ID^1, ID^0x8000,
                 ID+0x100), then under ID
        trickle  a frame announcing 512 bytes whose bytes come one every GAP s
                 (0.3) — endlessly: until the peer closes, at most MAX s (30)
      Anything else: the genuine answer. Log lines (stdout):
        "conn N peer P"
        "query conn N kind K id ID"
        "sent K conn N bytes B"               (once the kind's bytes are written)
        "trickle conn N ended: peer closed after B bytes in S s" | "... ended: bound ..."
        "closed conn N after S s: peer" | "...: error E"
      The random bytes come from Random(f"{seed}:{conn}:{query}"), the seed
      printed at start ("seed S").

Client (in a container):

  ask SERVER NAME [TIMEOUT] [TYPE]
      one datagram: a query (random ID, RD) for NAME (TXT, or TYPE), from a
      fresh socket to SERVER:53; wait TIMEOUT s (3) for the first datagram
      from SERVER:53:
        "answer id-ok bytes N txt T"  (the ID is the one sent; T the first TXT
                                       string, "-" when there is none)
        "answer id-bad got X want Y bytes N"
        "short bytes N hex H"          (too short for a DNS header)
        "no answer"
      Exit 0 when the tool worked (the suite judges what came).
"""

import asyncio
import ipaddress
import os
import random
import socket
import struct
import sys
import time

from egtest import dispatch, family, mark_ready, out, pop_opt, raise_nofile

KINDS = ("good", "zero", "one", "two", "eleven", "garbage", "big", "wrongid", "trickle")


# ------------------------------------------------------------------ DNS bits


def query(qid, name, qtype=16):
    """A query with recursion desired for (name, qtype, IN)."""
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        if label:
            q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", qtype, 1)


def question(msg):
    """(name, end of the question) of a message, or None when malformed."""
    if len(msg) < 12:
        return None
    i = 12
    labels = []
    for _ in range(64):
        if i >= len(msg):
            return None
        n = msg[i]
        i += 1
        if n == 0:
            break
        if n & 0xC0 or i + n > len(msg):
            return None
        labels.append(msg[i : i + n].decode("ascii", "replace"))
        i += n
    else:
        return None
    if i + 4 > len(msg):
        return None
    return ".".join(labels).lower(), i + 4


def answer(q, text):
    """The genuine answer to query q: the question, one TXT record."""
    qid = struct.unpack("!H", q[:2])[0]
    _, end = question(q)
    txt = text.encode()[:255]
    rdata = bytes([len(txt)]) + txt
    rr = struct.pack("!HHHIH", 0xC00C, 16, 1, 0, len(rdata)) + rdata
    head = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    return head + q[12:end] + rr


def first_txt(msg):
    """The first TXT string of an answer, or None."""
    qn = question(msg)
    if qn is None:
        return None
    i = qn[1]
    an = struct.unpack("!H", msg[6:8])[0]
    for _ in range(min(an, 16)):
        # name: a pointer or labels
        if i >= len(msg):
            return None
        if msg[i] & 0xC0 == 0xC0:
            i += 2
        else:
            for _ in range(64):
                if i >= len(msg):
                    return None
                n = msg[i]
                i += 1 + n
                if n == 0:
                    break
        if i + 10 > len(msg):
            return None
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[i : i + 10])
        i += 10
        rd = msg[i : i + rdlen]
        i += rdlen
        if rtype == 16 and rd:
            return rd[1 : 1 + rd[0]].decode("ascii", "replace")
    return None


def frame(msg):
    return struct.pack("!H", len(msg)) + msg


# ------------------------------------------------------------------ server


class Resolver:
    def __init__(self, seed, gap, tmax):
        self.seed = seed
        self.gap = gap
        self.tmax = tmax
        self.conns = 0

    async def conn(self, reader, writer):
        self.conns += 1
        cn = self.conns
        peer = writer.get_extra_info("peername")
        pip = peer[0] if peer else "?"
        out(f"conn {cn} peer {pip}")
        t0 = time.monotonic()
        eof = asyncio.Event()
        queue = asyncio.Queue()

        async def read_queries():
            try:
                for _ in range(10000):
                    hdr = await reader.readexactly(2)
                    (n,) = struct.unpack("!H", hdr)
                    q = await reader.readexactly(n)
                    await queue.put(q)
            except (asyncio.IncompleteReadError, OSError):
                pass
            finally:
                eof.set()
                await queue.put(None)

        rd = asyncio.ensure_future(read_queries())
        why = "peer"
        try:
            k = 0
            while True:
                q = await asyncio.wait_for(queue.get(), 120)
                if q is None:
                    break
                k += 1
                await self.handle(cn, k, q, pip, writer, eof)
        except asyncio.TimeoutError:
            why = "idle 120 s"
        except OSError as e:
            why = f"error {type(e).__name__}"
        finally:
            rd.cancel()
            writer.close()
            out(f"closed conn {cn} after {time.monotonic() - t0:.1f} s: {why}")

    async def handle(self, cn, k, q, pip, writer, eof):
        qn = question(q)
        name = qn[0] if qn else ""
        kind = name.split(".", 1)[0] if name else "malformed"
        if kind not in KINDS:
            kind = "good"
        qid = struct.unpack("!H", q[:2])[0] if len(q) >= 2 else 0
        out(f"query conn {cn} kind {kind} id {qid}")
        if qn is None:
            return
        rng = random.Random(f"{self.seed}:{cn}:{k}")
        good = frame(answer(q, f"hostile-ok {pip}"))
        idb = q[:2]
        if kind == "trickle":
            await self.trickle(cn, writer, eof)
            return
        if kind == "good":
            data = good
        elif kind == "zero":
            data = b"\x00\x00"
        elif kind == "one":
            data = b"\x00\x01\x00" + good
        elif kind == "two":
            data = b"\x00\x02" + idb + good
        elif kind == "eleven":
            data = b"\x00\x0b" + good[2:13] + good
        elif kind == "garbage":
            data = rng.randbytes(65536)
        elif kind == "big":
            data = b"\xff\xff" + idb + rng.randbytes(65533)
        else:  # wrongid
            data = b""
            for other in (qid ^ 1, qid ^ 0x8000, (qid + 0x100) & 0xFFFF):
                a = bytearray(good)
                a[2:4] = struct.pack("!H", other)
                data += bytes(a)
            data += good
        writer.write(data)
        await writer.drain()
        out(f"sent {kind} conn {cn} bytes {len(data)}")

    async def trickle(self, cn, writer, eof):
        t0 = time.monotonic()
        body = b"\x02\x00" + bytes(510)  # announces 512, never completes
        sent = 0
        why = "bound"
        try:
            while time.monotonic() - t0 < self.tmax:
                if eof.is_set():
                    why = "peer closed"
                    break
                writer.write(body[sent % len(body) : sent % len(body) + 1])
                await writer.drain()
                sent += 1
                if sent == 1:
                    out(f"sent trickle conn {cn} bytes 1")
                try:
                    await asyncio.wait_for(eof.wait(), self.gap)
                except asyncio.TimeoutError:
                    pass
        except OSError as e:
            why = f"peer closed ({type(e).__name__})"
        out(f"trickle conn {cn} ended: {why} after {sent} bytes in {time.monotonic() - t0:.1f} s")


async def serve(addrs, seed, gap, tmax, ready):
    r = Resolver(seed, gap, tmax)
    servers = []
    for a in addrs:
        servers.append(await asyncio.start_server(r.conn, host=a, port=53, reuse_address=True, backlog=256))
    out(f"seed {seed}")
    out(f"serving DNS over TCP on {', '.join(addrs)} port 53")
    mark_ready(ready)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# ------------------------------------------------------------------ client


def cmd_ask(server, name, timeout="3", qtype="16"):
    qid = random.randrange(65536)
    want = ipaddress.ip_address(server)
    with socket.socket(family(server), socket.SOCK_DGRAM) as s:
        s.sendto(query(qid, name, int(qtype)), (server, 53))
        end = time.monotonic() + float(timeout)
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                b, frm = s.recvfrom(65536)
            except (socket.timeout, OSError):
                break
            if ipaddress.ip_address(frm[0].split("%")[0]) != want:
                continue
            if len(b) < 12:
                out(f"short bytes {len(b)} hex {b.hex()}")
                return 0
            got = struct.unpack("!H", b[:2])[0]
            if got != qid:
                out(f"answer id-bad got {got} want {qid} bytes {len(b)}")
                return 0
            t = first_txt(b)
            out(f"answer id-ok bytes {len(b)} txt {t if t is not None else '-'}")
            return 0
    out("no answer")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "serve":
        raise_nofile()
        ready, args = pop_opt(args, "--ready")
        seed, args = pop_opt(args, "--seed")
        gap, args = pop_opt(args, "--trickle-gap")
        tmax, args = pop_opt(args, "--trickle-max")
        if seed is None:
            seed = str(int.from_bytes(os.urandom(4), "big"))
        try:
            asyncio.run(serve(args, seed, float(gap or 0.3), float(tmax or 30), ready))
        except KeyboardInterrupt:
            pass
        return 0
    return dispatch({"ask": cmd_ask}, cmd, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
