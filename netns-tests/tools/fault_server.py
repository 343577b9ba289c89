#!/usr/bin/env python3
"""fault_server — a scriptable, misbehaving SOCKS5 / HTTP CONNECT server and
the clients of egressd's fault tests (netns-tests/faults.sh, scripts/load.sh).

Python 3 standard library only. Misbehaviour is the point: each listening
port has one behaviour, so one server process serves every case at once.

Server:

  serve ADDR [--socks PORT:MODE]... [--http PORT:MODE]... [--ready FILE]
      SOCKS5 modes (no authentication; CONNECT really connects to the target
      from this namespace, so a working flow reaches the real services):
        good        a correct server: CONNECT, and UDP ASSOCIATE whose relay
                    answers every datagram itself with "echo <payload>" in a
                    correct RFC 1928 §7 header naming the datagram's target
        trunc       greeting ok; the CONNECT reply is cut after 5 bytes, then
                    the connection is closed
        garbage     answers the greeting with 16 KiB of random bytes, then
                    stays open
        badver      answers the greeting with version 4 (b"\\x04\\x00"), stays open
        badatyp     CONNECT reply with address type 7, stays open
        onebyte     correct, but every reply is written one byte at a time
                    (TCP_NODELAY, 20 ms apart): must still work
        silent      accepts, reads, never answers
        delay=SECS  correct, but the first reply comes SECS seconds late
        udpgarbage  ASSOCIATE ok; the relay answers each datagram with
                    malformed ones (too short, address type 9, a domain
                    longer than the datagram, RSV != 0)
        udpfrag     ASSOCIATE ok; the relay answers with FRAG = 1
        udpforge    ASSOCIATE ok; the relay answers each datagram four times:
                    with headers naming 198.51.100.200 (the gw's own
                    address), 127.0.0.1 and 10.8.0.11 (another container) as
                    the source, then correctly ("echo <payload>")
        ctlclose    like good, but the control connection is closed (and the
                    relay socket with it) right after the first answered
                    datagram of each association
      HTTP CONNECT modes:
        good        "HTTP/1.1 200 Connection established", then relays
        garbage     binary garbage ending in a blank line, stays open
        bighead     a 200 status line followed by 12 KiB of header lines that
                    never end (no blank line), stays open
        5xx         "HTTP/1.1 503 Service Unavailable", stays open
      Every connection is logged on stdout: "conn <port> <mode> <peer>".

Clients (one line on stdout; exit 0 when the expectation holds, else 1):

  uask HOST PORT [TIMEOUT]        one datagram, wait for the answer:
      "reply from <ip>:<port> <text>" | "no reply"
  unone HOST PORT [WAIT]          three datagrams; expect no answer
  uask2 HOST PORT GAP             one socket: ask, wait GAP s, ask again:
      "first <ok|none> second <ok|none>" (exit 0 iff both answered)
  umany HOST PORT N DEADLINE [WINDOW]
      N sockets, one datagram each, at most WINDOW (500) unanswered (for
      less than 5 s) at a time
      (one resend to the silent ones 4 s after the last new one), all left
      open until DEADLINE or every answer came:
      "ok|failed K/N replies in S s"
  flood HOST PORT N SECS          N non-blocking connects, held SECS s, then
      closed: "connected C pending P refused R"
  trickles HOST PORT N READY [RECV_TIMEOUT]
      N connections to egtool's trickle service (1 KiB every 20 ms); READY
      is written once every one has received data; then each is read until
      it ends: "ended N reset=.. eof=.. timeout=.. error=.. first_end_ns=..
      last_end_ns=.." (wall clock, comparable with `date +%s%N`)
"""

import asyncio
import ipaddress
import os
import selectors
import socket
import struct
import sys
import time

from egtest import dispatch, family, mark_ready, out, raise_nofile, start_tcp
from egtest import pump as egtest_pump


# ------------------------------------------------------------------ SOCKS5 bits


def enc_addr(host, port):
    """RFC 1928 ATYP + address + port."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        b = host.encode()
        return bytes([3, len(b)]) + b + struct.pack("!H", port)
    if ip.version == 4:
        return b"\x01" + ip.packed + struct.pack("!H", port)
    return b"\x04" + ip.packed + struct.pack("!H", port)


def dec_addr(b, i):
    """(host, port, next index) from ATYP at b[i], or None when malformed."""
    if i >= len(b):
        return None
    t = b[i]
    if t == 1 and len(b) >= i + 7:
        return str(ipaddress.ip_address(b[i + 1 : i + 5])), struct.unpack("!H", b[i + 5 : i + 7])[0], i + 7
    if t == 4 and len(b) >= i + 19:
        return str(ipaddress.ip_address(b[i + 1 : i + 17])), struct.unpack("!H", b[i + 17 : i + 19])[0], i + 19
    if t == 3 and len(b) >= i + 2:
        n = b[i + 1]
        if len(b) >= i + 2 + n + 2:
            return b[i + 2 : i + 2 + n].decode(errors="replace"), struct.unpack("!H", b[i + 2 + n : i + 4 + n])[0], i + 4 + n
    return None


async def read_addr(reader, atyp):
    if atyp == 1:
        raw = await reader.readexactly(4)
        host = str(ipaddress.ip_address(raw))
    elif atyp == 4:
        raw = await reader.readexactly(16)
        host = str(ipaddress.ip_address(raw))
    elif atyp == 3:
        n = (await reader.readexactly(1))[0]
        host = (await reader.readexactly(n)).decode(errors="replace")
    else:
        raise ValueError(f"atyp {atyp}")
    port = struct.unpack("!H", await reader.readexactly(2))[0]
    return host, port


async def hang(reader, secs=60):
    """Stay open, reading and discarding, until the peer goes or SECS pass."""
    end = time.monotonic() + secs
    try:
        while (left := end - time.monotonic()) > 0:
            b = await asyncio.wait_for(reader.read(65536), left)
            if not b:
                return
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        pass


async def pump(reader, writer):
    await egtest_pump(reader, writer, quiet=(OSError, asyncio.CancelledError))


async def relay_tcp(cr, cw, ur, uw):
    t1 = asyncio.ensure_future(pump(cr, uw))
    t2 = asyncio.ensure_future(pump(ur, cw))
    try:
        await asyncio.wait_for(asyncio.gather(t1, t2), 600)
    except (asyncio.TimeoutError, OSError):
        pass
    finally:
        t1.cancel()
        t2.cancel()
        uw.close()


class Relay(asyncio.DatagramProtocol):
    """The UDP relay of one association; answers datagrams itself."""

    def __init__(self, mode, on_first):
        self.mode = mode
        self.on_first = on_first
        self.transport = None
        self.answered = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if len(data) < 4 or data[:3] != b"\x00\x00\x00":
            return
        a = dec_addr(data, 3)
        if a is None:
            return
        host, port, i = a
        payload = data[i:]
        hdr = enc_addr(host, port)
        if self.mode == "udpgarbage":
            for g in (
                b"\x00",  # too short for any header
                b"\x00\x00\x00\x09" + b"x" * 16,  # unknown address type
                b"\x00\x00\x00\x03\xff" + b"short",  # domain longer than the datagram
                b"\x00\x00\x00\x01\x01\x02",  # v4 address cut short
                b"\x01\x02\x00" + hdr + b"rsv not zero",  # RSV != 0
            ):
                self.transport.sendto(g, addr)
            return
        if self.mode == "udpforge":
            for forged in ("198.51.100.200", "127.0.0.1", "10.8.0.11"):
                self.transport.sendto(b"\x00\x00\x00" + enc_addr(forged, port) + b"forged", addr)
        if self.mode == "udpfrag":
            self.transport.sendto(b"\x00\x00\x01" + hdr + b"echo " + payload, addr)
            return
        self.transport.sendto(b"\x00\x00\x00" + hdr + b"echo " + payload, addr)
        self.answered += 1
        if self.answered == 1 and self.mode == "ctlclose":
            self.on_first()


async def socks_conn(reader, writer, port, mode, stats):
    peer = writer.get_extra_info("peername")
    out(f"conn {port} {mode} {peer[0] if peer else '?'}")
    stats["conns"] += 1
    sock = writer.get_extra_info("socket")
    delay = 0.0
    if mode.startswith("delay="):
        delay = float(mode.split("=", 1)[1])
    onebyte = mode == "onebyte"
    if onebyte and sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def send(b):
        nonlocal delay
        if delay:
            await asyncio.sleep(delay)
            delay = 0.0  # once per connection: the whole handshake is late by SECS
        if onebyte:
            for x in b:
                writer.write(bytes([x]))
                await writer.drain()
                await asyncio.sleep(0.02)
        else:
            writer.write(b)
            await writer.drain()

    try:
        if mode == "silent":
            await hang(reader)
            return
        ver, n = await asyncio.wait_for(reader.readexactly(2), 30)
        await reader.readexactly(n)
        if mode == "garbage":
            writer.write(os.urandom(16384))
            await writer.drain()
            await hang(reader)
            return
        if mode == "badver":
            writer.write(b"\x04\x00")
            await writer.drain()
            await hang(reader)
            return
        await send(b"\x05\x00")
        ver, cmd, _rsv, atyp = await asyncio.wait_for(reader.readexactly(4), 30)
        host, dport = await read_addr(reader, atyp)
        if mode == "trunc":
            writer.write(b"\x05\x00\x00\x01\x64")
            await writer.drain()
            return
        if mode == "badatyp":
            writer.write(b"\x05\x00\x00\x07" + b"\x00" * 6)
            await writer.drain()
            await hang(reader)
            return
        local = writer.get_extra_info("sockname")
        if cmd == 1:
            try:
                ur, uw = await asyncio.wait_for(asyncio.open_connection(host, dport), 5)
            except (OSError, asyncio.TimeoutError):
                await send(b"\x05\x05\x00" + enc_addr("0.0.0.0", 0))
                return
            b = uw.get_extra_info("sockname")
            await send(b"\x05\x00\x00" + enc_addr(b[0], b[1]))
            await relay_tcp(reader, writer, ur, uw)
            return
        if cmd == 3:
            loop = asyncio.get_running_loop()
            closed = loop.create_future()

            def close_ctl():
                if not closed.done():
                    closed.set_result(True)

            transport, relay = await loop.create_datagram_endpoint(
                lambda: Relay(mode, close_ctl), local_addr=(local[0], 0)
            )
            stats["assoc"] += 1
            try:
                ra = transport.get_extra_info("sockname")
                await send(b"\x05\x00\x00" + enc_addr(ra[0], ra[1]))
                # The association lives as long as the control connection.
                ctl = asyncio.ensure_future(hang(reader, 3600))
                await asyncio.wait([ctl, closed], return_when=asyncio.FIRST_COMPLETED, timeout=3600)
                ctl.cancel()
            finally:
                transport.close()
                stats["assoc"] -= 1
            return
        await send(b"\x05\x07\x00" + enc_addr("0.0.0.0", 0))
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        pass
    finally:
        stats["conns"] -= 1
        writer.close()


async def http_conn(reader, writer, port, mode, stats):
    peer = writer.get_extra_info("peername")
    out(f"conn {port} http-{mode} {peer[0] if peer else '?'}")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if mode == "garbage":
            writer.write(b"\x00\xff\x13garbage \x7f not http\r\n\r\n")
            await writer.drain()
            await hang(reader)
            return
        if mode == "bighead":
            writer.write(b"HTTP/1.1 200 Connection established\r\n" + b"X-Pad: " + b"a" * 100 + b"\r\n" * 1)
            for _ in range(120):
                writer.write(b"X-Pad: " + b"a" * 100 + b"\r\n")
            await writer.drain()
            await hang(reader)
            return
        if mode == "5xx":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await hang(reader)
            return
        line = head.split(b"\r\n", 1)[0].decode(errors="replace").split()
        target = line[1]
        host, _, p = target.rpartition(":")
        host = host.strip("[]")
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(host, int(p)), 5)
        except (OSError, asyncio.TimeoutError):
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await relay_tcp(reader, writer, ur, uw)
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def serve(addr, socks, http, ready):
    stats = {"conns": 0, "assoc": 0}
    servers = []
    for port, mode in socks:
        servers.append(await start_tcp(lambda r, w, p=port, m=mode: socks_conn(r, w, p, m, stats), addr, port))
    for port, mode in http:
        servers.append(
            await start_tcp(lambda r, w, p=port, m=mode: http_conn(r, w, p, m, stats), addr, port, limit=1 << 16)
        )
    out(f"serving on {addr}: socks {socks} http {http}")
    mark_ready(ready)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# ------------------------------------------------------------------ clients


def usock(host):
    fam = family(host)
    return socket.socket(fam, socket.SOCK_DGRAM)


def fmt(a):
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def recv_one(s, timeout):
    s.settimeout(timeout)
    try:
        return s.recvfrom(65536)
    except (socket.timeout, OSError):
        return None


def cmd_uask(host, port, timeout="3"):
    with usock(host) as s:
        s.sendto(b"ask", (host, int(port)))
        r = recv_one(s, float(timeout))
    if r is None:
        out("no reply")
        return 1
    out(f"reply from {fmt(r[1])} {r[0][:60].decode(errors='replace')}")
    return 0


def cmd_unone(host, port, wait="2"):
    with usock(host) as s:
        for i in range(3):
            s.sendto(f"probe {i}".encode(), (host, int(port)))
        r = recv_one(s, float(wait))
    if r is None:
        out("no reply")
        return 0
    out(f"reply from {fmt(r[1])} {r[0][:60]!r}")
    return 1


def cmd_uask2(host, port, gap):
    res = []
    with usock(host) as s:
        for i in range(2):
            if i:
                time.sleep(float(gap))
            got = None
            for _ in range(2):  # one resend: the first may wait on a new association
                s.sendto(f"ask {i}".encode(), (host, int(port)))
                r = recv_one(s, 2)
                if r is not None and f"ask {i}".encode() in r[0]:
                    got = r
                    break
            res.append("ok" if got else "none")
    out(f"first {res[0]} second {res[1]}")
    return 0 if res == ["ok", "ok"] else 1


def cmd_umany(host, port, n, deadline, window="500"):
    raise_nofile()
    n, port, window = int(n), int(port), int(window)
    t0 = time.monotonic()
    end = t0 + float(deadline)
    sel = selectors.EpollSelector()
    socks = []
    sent_at = []
    got = set()
    errors = set()

    def waiting():
        # unanswered and sent less than 5 s ago (older ones count as lost
        # for pacing; they get the one resend at the end)
        now = time.monotonic()
        k = 0
        for i in range(len(socks) - 1, -1, -1):
            if now - sent_at[i] > 5:
                break
            if i not in got:
                k += 1
        return k

    def take(timeout):
        for key, _ in sel.select(timeout=timeout):
            while True:
                try:
                    key.fileobj.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    errors.add(str(e)[:60])
                    break
                got.add(key.data)

    try:
        for i in range(n):
            # At most WINDOW sessions waiting for their first answer: the
            # relay (and egressd's association set-up) is not flooded faster
            # than it answers, so no session waits longer than its timeouts.
            while len(socks) - len(got) >= window and waiting() >= window and time.monotonic() < end:
                take(0.05)
            if time.monotonic() >= end:
                break
            s = usock(host)
            s.setblocking(False)
            socks.append(s)
            sent_at.append(time.monotonic())
            sel.register(s, selectors.EVENT_READ, i)
            try:
                s.sendto(f"m{i}".encode(), (host, port))
            except OSError as e:
                errors.add(str(e)[:60])
            if i % 100 == 99:
                take(0)
        last_send = time.monotonic()
        resent = False
        while len(got) < len(socks) and (now := time.monotonic()) < end:
            if not resent and now - last_send > 4.0:
                resent = True
                for i, s in enumerate(socks):
                    if i not in got:
                        try:
                            s.sendto(f"m{i}".encode(), (host, port))
                        except OSError as e:
                            errors.add(str(e)[:60])
            take(min(0.5, end - now))
    finally:
        for s in socks:
            s.close()
    ok = len(got) == n
    out(f"{'ok' if ok else 'failed'} {len(got)}/{n} replies in {time.monotonic() - t0:.1f} s"
        + (f" errors: {'; '.join(sorted(errors)[:3])}" if errors else ""))
    return 0 if ok else 1


def cmd_flood(host, port, n, secs):
    raise_nofile()
    n = int(n)
    fam = family(host)
    socks = []
    refused = 0
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((host, int(port)))
        except BlockingIOError:
            pass
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
    time.sleep(float(secs))
    connected = pending = 0
    for s in socks:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        try:
            s.getpeername()
            connected += 1
        except OSError:
            if err:
                refused += 1
            else:
                pending += 1
        s.close()
    out(f"connected {connected} pending {pending} refused {refused}")
    return 0


def cmd_trickles(host, port, n, ready, recv_timeout="30"):
    raise_nofile()
    n = int(n)
    sel = selectors.EpollSelector()
    socks = {}
    for i in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.setblocking(False)
        socks[i] = s
        sel.register(s, selectors.EVENT_READ, i)
    got = set()
    last = {i: time.monotonic() for i in socks}
    ends = {}
    counts = {"reset": 0, "eof": 0, "timeout": 0, "error": 0}
    wrote_ready = False
    hard_end = time.monotonic() + 120
    while socks and time.monotonic() < hard_end:
        now = time.monotonic()
        for i in list(socks):
            if now - last[i] > float(recv_timeout):
                counts["timeout"] += 1
                ends[i] = time.time_ns()
                sel.unregister(socks[i])
                socks.pop(i).close()
        for key, _ in sel.select(timeout=0.2):
            i = key.data
            s = key.fileobj
            reason = None
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        reason = "eof"
                        break
                    got.add(i)
                    last[i] = time.monotonic()
            except BlockingIOError:
                pass
            except ConnectionResetError:
                reason = "reset"
            except OSError:
                reason = "error"
            if reason:
                counts[reason] += 1
                ends[i] = time.time_ns()
                sel.unregister(s)
                socks.pop(i).close()
        if not wrote_ready and len(got) == n:
            with open(ready, "w") as f:
                f.write("flowing\n")
            wrote_ready = True
    for s in socks.values():
        s.close()
    e = sorted(ends.values())
    out(f"ended {len(ends)} reset={counts['reset']} eof={counts['eof']} timeout={counts['timeout']} "
        f"error={counts['error']} first_end_ns={e[0] if e else 0} last_end_ns={e[-1] if e else 0}")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "serve":
        raise_nofile()
        addr = args[0]
        socks, http, ready = [], [], None
        i = 1
        while i < len(args):
            a = args[i]
            if a in ("--socks", "--http"):
                p, _, m = args[i + 1].partition(":")
                (socks if a == "--socks" else http).append((int(p), m))
            elif a == "--ready":
                ready = args[i + 1]
            else:
                print(f"unknown option {a}", file=sys.stderr)
                return 2
            i += 2
        try:
            asyncio.run(serve(addr, socks, http, ready))
        except KeyboardInterrupt:
            pass
        return 0
    table = {
        "uask": cmd_uask,
        "unone": cmd_unone,
        "uask2": cmd_uask2,
        "umany": cmd_umany,
        "flood": cmd_flood,
        "trickles": cmd_trickles,
    }
    return dispatch(table, cmd, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
