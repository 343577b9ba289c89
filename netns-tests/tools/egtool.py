#!/usr/bin/env python3
"""egtool — target services and test clients for egressd's netns tests.

Python 3 standard library only. One file, sub-commands:

  serve ADDR... [--ready FILE]     the 'internet' services, on every ADDR:
      80    who-am-i: HTTP/1.0-ish; the body is the peer address it sees
      9001  sink: reads to EOF, replies "<sha256hex> <bytes>\\n" (tests half-close)
      9002  source: reads "N\\n", sends N bytes of the deterministic stream, closes
      9003  echo-after-EOF: reads to EOF (max 64 MiB), then sends it all back
      9004  hold: "hello\\n" -> "ready <peer>\\n"; "bye\\n" -> "ok\\n", close
      9005  trickle: sends 1 KiB every 20 ms for at most 60 s, then closes
      9006  sized sink: reads "N\\n" then N bytes, replies "<sha256hex> <N>\\n"
            (needs no half-close: microsocks closes both ways on EOF)
  upload HOST PORT BYTES           send "N\\n" + BYTES to the sized sink, compare sha256
  download HOST PORT BYTES         fetch BYTES from the source, compare sha256
  halfclose HOST PORT BYTES        echo-after-EOF round trip after shutdown(SHUT_WR)
  many HOST PORT N EXPECT_PEER     N concurrent 'hold' flows, all open at once
  trickle HOST PORT READY_FILE     read the trickle until it ends; print end time
  expect-reset HOST PORT           connect, send, read: print what happened
  udp-send HOST PORT [COUNT]       send a few datagrams (no reply expected)
  ping HOST [COUNT]                ICMP echo (raw socket, root): exit 0 on any reply,
                                   1 "timeout: ..." when all were sent and none
                                   answered, 3 "error: ..." when one could not be sent

Every client has a bounded timeout and exits 0 on success, 1 on failure, with
one line on stdout saying what it saw.
"""

import asyncio
import hashlib
import os
import socket
import sys
import time

from egtest import CHUNK, dispatch, mark_ready, out, pop_opt, raise_nofile, start_tcp, stream_chunks, stream_sha

PORT_WHOAMI = 80
PORT_SINK = 9001
PORT_SOURCE = 9002
PORT_ECHO = 9003
PORT_HOLD = 9004
PORT_TRICKLE = 9005
PORT_SIZED = 9006
ECHO_MAX = 64 << 20
PING_ERROR = 3  # ping: could not send (as opposed to 1: sent, unanswered)


# ------------------------------------------------------------------ server


class Services:
    def __init__(self):
        self.hold_now = 0
        self.hold_max = 0

    def logpeer(self, port, writer):
        peer = writer.get_extra_info("peername")
        out(f"accept port={port} peer={peer[0] if peer else '?'}")
        return peer[0] if peer else "?"

    async def whoami(self, reader, writer):
        peer = self.logpeer(PORT_WHOAMI, writer)
        try:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                pass
            body = (peer + "\n").encode()
            writer.write(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def sink(self, reader, writer):
        self.logpeer(PORT_SINK, writer)
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                b = await asyncio.wait_for(reader.read(CHUNK), 60)
                if not b:
                    break
                h.update(b)
                n += len(b)
            writer.write(f"{h.hexdigest()} {n}\n".encode())
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def sized_sink(self, reader, writer):
        self.logpeer(PORT_SIZED, writer)
        h = hashlib.sha256()
        n = 0
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            want = int(line.strip() or b"0")
            while n < want:
                b = await asyncio.wait_for(reader.read(min(CHUNK, want - n)), 60)
                if not b:
                    break
                h.update(b)
                n += len(b)
            writer.write(f"{h.hexdigest()} {n}\n".encode())
            await writer.drain()
        except (OSError, ValueError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def source(self, reader, writer):
        self.logpeer(PORT_SOURCE, writer)
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            n = int(line.strip() or b"0")
            for c in stream_chunks(n):
                writer.write(c)
                await asyncio.wait_for(writer.drain(), 60)
            if writer.can_write_eof():
                writer.write_eof()
            await asyncio.wait_for(writer.drain(), 60)
        except (OSError, ValueError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def echo(self, reader, writer):
        self.logpeer(PORT_ECHO, writer)
        buf = bytearray()
        try:
            while len(buf) <= ECHO_MAX:
                b = await asyncio.wait_for(reader.read(CHUNK), 60)
                if not b:
                    break
                buf += b
            else:
                return  # too much: drop it
            writer.write(bytes(buf))
            await asyncio.wait_for(writer.drain(), 60)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def hold(self, reader, writer):
        peer = self.logpeer(PORT_HOLD, writer)
        self.hold_now += 1
        self.hold_max = max(self.hold_max, self.hold_now)
        try:
            line = await asyncio.wait_for(reader.readline(), 120)
            if line.strip() != b"hello":
                return
            writer.write(f"ready {peer}\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 120)
            if line.strip() == b"bye":
                writer.write(b"ok\n")
                await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self.hold_now -= 1
            writer.close()

    async def trickle(self, reader, writer):
        self.logpeer(PORT_TRICKLE, writer)
        try:
            block = b"t" * 1024
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                writer.write(block)
                await asyncio.wait_for(writer.drain(), 10)
                await asyncio.sleep(0.02)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


async def serve(addrs, ready):
    s = Services()
    servers = []
    for addr in addrs:
        for port, handler in (
            (PORT_WHOAMI, s.whoami),
            (PORT_SINK, s.sink),
            (PORT_SOURCE, s.source),
            (PORT_ECHO, s.echo),
            (PORT_HOLD, s.hold),
            (PORT_TRICKLE, s.trickle),
            (PORT_SIZED, s.sized_sink),
        ):
            servers.append(await start_tcp(handler, addr, port))
    out(f"serving on {' '.join(addrs)}")
    mark_ready(ready)
    await asyncio.gather(*(srv.serve_forever() for srv in servers))


# ------------------------------------------------------------------ clients


def connect(host, port, timeout=10):
    return socket.create_connection((host, int(port)), timeout=timeout)


def recv_all(sock, limit=None):
    h = hashlib.sha256()
    n = 0
    buf = bytearray()
    while True:
        b = sock.recv(CHUNK)
        if not b:
            return h.hexdigest(), n, bytes(buf)
        h.update(b)
        n += len(b)
        if limit is not None and len(buf) < limit:
            buf += b[: limit - len(buf)]


def cmd_upload(host, port, nbytes):
    n = int(nbytes)
    want = hashlib.sha256()
    with connect(host, port, timeout=60) as s:
        s.sendall(f"{n}\n".encode())
        for c in stream_chunks(n):
            s.sendall(c)
            want.update(c)
        _, _, reply = recv_all(s, limit=256)
    got = reply.decode(errors="replace").strip()
    expect = f"{want.hexdigest()} {n}"
    if got == expect:
        out(f"ok sent {n} bytes, sink saw sha256 {want.hexdigest()}")
        return 0
    out(f"mismatch: sent {expect!r}, sink replied {got!r}")
    return 1


def cmd_download(host, port, nbytes):
    n = int(nbytes)
    with connect(host, port, timeout=60) as s:
        s.sendall(f"{n}\n".encode())
        sha, got, _ = recv_all(s)
    want = stream_sha(n)
    if sha == want and got == n:
        out(f"ok received {got} bytes, sha256 {sha}")
        return 0
    out(f"mismatch: received {got}/{n} bytes, sha256 {sha} want {want}")
    return 1


def cmd_halfclose(host, port, nbytes):
    n = int(nbytes)
    want = hashlib.sha256()
    with connect(host, port, timeout=30) as s:
        for c in stream_chunks(n):
            s.sendall(c)
            want.update(c)
        s.shutdown(socket.SHUT_WR)  # our side is done; the reply must still come
        sha, got, _ = recv_all(s)
    if sha == want.hexdigest() and got == n:
        out(f"ok after shutdown(SHUT_WR) received the full {got}-byte reply")
        return 0
    out(f"after shutdown(SHUT_WR) received {got}/{n} bytes (sha match: {sha == want.hexdigest()})")
    return 1


async def _hold_flow(host, port, expect_peer, opened, all_open, results):
    released = False

    def release():
        nonlocal released
        if not released:
            released = True
            opened.release_one()

    w = None
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)
        w.write(b"hello\n")
        await w.drain()
        line = await asyncio.wait_for(r.readline(), 60)
        parts = line.decode(errors="replace").split()
        if len(parts) != 2 or parts[0] != "ready":
            results["bad_ready"] += 1
            return
        if parts[1] != expect_peer:
            results["wrong_peer"] += 1
            results["peers"].add(parts[1])
        results["ready"] += 1
        release()
        # Only now, with every flow open end to end, do any of them finish.
        await asyncio.wait_for(all_open.wait(), 90)
        w.write(b"bye\n")
        await w.drain()
        line = await asyncio.wait_for(r.readline(), 60)
        if line.strip() == b"ok":
            results["ok"] += 1
        else:
            results["bad_bye"] += 1
    except Exception as e:  # noqa: BLE001 — classify any failure
        results["io_err" if w is not None else "connect_err"] += 1
        results["errors"].add(type(e).__name__ + ":" + str(e)[:60])
    finally:
        release()
        if w is not None:
            w.close()


class _Countdown:
    def __init__(self, n, ev):
        self.n = n
        self.ev = ev

    def release_one(self):
        self.n -= 1
        if self.n <= 0:
            self.ev.set()


async def _many(host, port, n, expect_peer):
    all_open = asyncio.Event()
    opened = _Countdown(n, all_open)
    results = {k: 0 for k in ("ready", "ok", "connect_err", "bad_ready", "wrong_peer", "bad_bye", "io_err")}
    results["errors"] = set()
    results["peers"] = set()
    t0 = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(_hold_flow(host, port, expect_peer, opened, all_open, results) for _ in range(n))),
        150,
    )
    return results, time.monotonic() - t0


def cmd_many(host, port, n, expect_peer):
    raise_nofile()
    n = int(n)
    try:
        res, dt = asyncio.run(_many(host, port, n, expect_peer))
    except asyncio.TimeoutError:
        out("timeout: not all flows finished within 150 s")
        return 1
    errs = "; ".join(sorted(res["errors"])[:3])
    summary = (
        f"{res['ok']}/{n} completed, {res['ready']} were open at once, connect_err={res['connect_err']} "
        f"bad_ready={res['bad_ready']} wrong_peer={res['wrong_peer']} {sorted(res['peers'])[:3]} "
        f"bad_bye={res['bad_bye']} io_err={res['io_err']} in {dt:.1f}s {errs}"
    )
    if res["ok"] == n and res["ready"] == n and res["wrong_peer"] == 0:
        out("ok " + summary)
        return 0
    out("failed: " + summary)
    return 1


def cmd_trickle(host, port, ready_file):
    got = 0
    reason = "?"
    with connect(host, port, timeout=10) as s:
        s.settimeout(30)
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    reason = "eof"
                    break
                if got == 0:
                    with open(ready_file, "w") as f:
                        f.write("flowing\n")
                got += len(b)
        except ConnectionResetError:
            reason = "reset"
        except socket.timeout:
            reason = "timeout"
        except OSError as e:
            reason = "error:" + str(e)
    out(f"end {time.time_ns()} {reason} {got}")
    return 0


def cmd_expect_reset(host, port):
    """Print one of: refused, reset, eof-nodata, data:<bytes>, timeout, error:<e>."""
    t0 = time.monotonic()
    try:
        s = connect(host, port, timeout=5)
    except ConnectionRefusedError:
        out(f"refused {time.monotonic() - t0:.2f}s")
        return 0
    except ConnectionResetError:
        out(f"reset {time.monotonic() - t0:.2f}s")
        return 0
    except socket.timeout:
        out(f"timeout {time.monotonic() - t0:.2f}s")
        return 0
    except OSError as e:
        out(f"error:{e.errno} {time.monotonic() - t0:.2f}s")
        return 0
    with s:
        s.settimeout(5)
        try:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            b = s.recv(4096)
            if b:
                out(f"data:{b[:80]!r} {time.monotonic() - t0:.2f}s")
            else:
                out(f"eof-nodata {time.monotonic() - t0:.2f}s")
        except ConnectionResetError:
            out(f"reset {time.monotonic() - t0:.2f}s")
        except BrokenPipeError:
            out(f"reset {time.monotonic() - t0:.2f}s")
        except socket.timeout:
            out(f"timeout {time.monotonic() - t0:.2f}s")
        except OSError as e:
            out(f"error:{e.errno} {time.monotonic() - t0:.2f}s")
    return 0


def cmd_udp_send(host, port, count="3"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        for i in range(int(count)):
            try:
                s.sendto(f"probe {i}\n".encode(), (host, int(port)))
            except OSError as e:
                out(f"send error {e}")
    out("sent")
    return 0


def _icmp_checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def cmd_ping(host, count="2"):
    """ICMP echo without iputils: v4 builds the checksum, v6's is the kernel's.

    Exit 0 "reply from HOST seq N": answered. Exit 1 "timeout: ...": every
    request was sent and none answered (what a "dropped" check wants). Exit 3
    "error: ...": a request could not be sent (no raw socket, a send or
    receive error): nothing is known about the path, never a pass.
    """
    v6 = ":" in host
    fam, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    ident = os.getpid() & 0xFFFF
    try:
        s = socket.socket(fam, socket.SOCK_RAW, proto)
    except OSError as e:
        out(f"error: raw socket: {e}")
        return PING_ERROR
    with s:
        for seq in range(int(count)):
            body = b"egressd-netns-ping"
            hdr = bytes([req_type, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
            pkt = hdr + body
            if not v6:
                c = _icmp_checksum(pkt)
                pkt = pkt[:2] + c.to_bytes(2, "big") + pkt[4:]
            try:
                s.sendto(pkt, (host, 0))
            except OSError as e:
                out(f"error: send seq {seq}: {e}")
                return PING_ERROR
            deadline = time.monotonic() + 1
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data = s.recv(2048)
                except socket.timeout:
                    break
                except OSError as e:
                    out(f"error: receive seq {seq}: {e}")
                    return PING_ERROR
                if not v6:
                    data = data[(data[0] & 0x0F) * 4 :]  # raw v4 sockets see the IP header
                if len(data) >= 8 and data[0] == rep_type and int.from_bytes(data[4:6], "big") == ident:
                    out(f"reply from {host} seq {seq}")
                    return 0
    out(f"timeout: {count} echo requests sent to {host}, no reply")
    return 1


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "serve":
        raise_nofile()
        ready, args = pop_opt(args, "--ready")
        try:
            asyncio.run(serve(args, ready))
        except KeyboardInterrupt:
            pass
        return 0
    table = {
        "upload": cmd_upload,
        "download": cmd_download,
        "halfclose": cmd_halfclose,
        "many": cmd_many,
        "trickle": cmd_trickle,
        "expect-reset": cmd_expect_reset,
        "udp-send": cmd_udp_send,
        "ping": cmd_ping,
    }
    return dispatch(table, cmd, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
