#!/usr/bin/env python3
"""udptool — UDP/DNS services, a full-cone SOCKS5 server and UDP clients for
egressd's netns tests (netns-tests/udp.sh). Python 3 standard library only.

Services (long-running; stop them with SIGTERM):

  serve [--udp ADDR]... [--dns ADDR]... [--cone A_ADDR B_ADDR] [--ready FILE]
      --udp ADDR   who-am-i on ADDR:5000 and ADDR:5003 (the same service on
                   a second port, for a check that needs a destination egressd
                   has never sent replies from) (bound to ADDR itself, never the
                   wildcard: a reply must leave from the address that was
                   asked, or a connected relay socket drops it). Each datagram
                   is answered with "<peer> <first 64 bytes of the datagram>",
                   <peer> being "198.51.100.2:41234" or "[2001:db8::2]:41234".
      --dns ADDR   a DNS server on ADDR:53, UDP and TCP (2-byte length
                   framing): TXT whoami.test -> the client address it sees;
                   other names NXDOMAIN; other types of whoami.test: no data.
      --cone A B   full-cone probe: "remote A" on A:5002 answers "A saw <peer>"
                   and has "remote B" (B:5001, a socket of its own) send
                   "B to <peer>" to the same <peer> (the client's mapping at
                   its exit), which only a full-cone path lets through.
      Every datagram/query is logged on stdout: "udp5000 <peer>",
      "udp5003 <peer>", "dns udp|tcp <peer-ip> <name> <type>", "coneA <peer>".

  socks5 ADDR PORT [--status FILE] [--ready FILE]
      A SOCKS5 server (RFC 1928, no authentication): CONNECT, and UDP
      ASSOCIATE whose remote-side sockets are NOT connected: datagrams from
      any remote are relayed back to the client with the RFC 1928 §7 header
      (endpoint-independent filtering, unlike danted). --status FILE is
      rewritten (atomically, at most every 0.2 s) with
      "assoc_opened N assoc_closed N up N down N connects N".

Clients (one line on stdout; exit 0 when the expectation holds, else 1):

  ask HOST PORT [TIMEOUT] [TRIES] [LOCAL_PORT]
                                      one socket (bound to LOCAL_PORT if given:
                                      a port outside ip_local_port_range
                                      repeats a flow's 5-tuple exactly), send,
                                      wait for the reply:
      "reply from <from> <text>" | "no reply"
  none HOST PORT [WAIT]               send 3 datagrams; expect nothing back
      within WAIT s: "no reply" (exit 0) | "reply from <from> <text>" (exit 1)
  idle HOST PORT WAIT                 one socket: ask, stay silent WAIT s, ask
      again: "first <from> <seen> second <from> <seen>" (exit 0 if both came)
  many HOST PORT N DEADLINE [--sequential] [--want-ip IP]
      N sockets, one question each (one retransmit to the silent ones);
      --sequential asks one socket at a time (each must answer before the
      next starts). Summary: "ok|failed N/N replies, wrong_from=.., wrong_ip=..,
      ports=<distinct exit ports> last=<answered?> in S s"
  fullcone A_HOST A_PORT B_HOST B_PORT [WAIT]
      one socket sends to A only, then lists every datagram that arrives in
      WAIT s: "got <from>=<text>; ..." — exit 0 iff one came from B_HOST:B_PORT
"""

import asyncio
import ipaddress
import selectors
import socket
import struct
import sys
import time

from egtest import dispatch, family, mark_ready, out, pop_opt, pump, raise_nofile, start_tcp, write_atomic

PORT_WHO = 5000
PORT_WHO2 = 5003
PORT_CONE_B = 5001
PORT_CONE_A = 5002


def fmt_peer(addr):
    host, port = addr[0], addr[1]
    ip = ipaddress.ip_address(host.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


# ------------------------------------------------------------------ DNS


def parse_question(q):
    """(id, flags, name, qtype, qclass, end) of a query's first question."""
    if len(q) < 12:
        raise ValueError("short header")
    qid, flags, qd = struct.unpack("!HHH", q[:6])
    if qd < 1:
        raise ValueError("no question")
    labels = []
    i = 12
    while True:
        if i >= len(q):
            raise ValueError("truncated name")
        n = q[i]
        i += 1
        if n == 0:
            break
        if n & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(q[i : i + n].decode("ascii", "replace"))
        i += n
    if i + 4 > len(q):
        raise ValueError("truncated question")
    qtype, qclass = struct.unpack("!HH", q[i : i + 4])
    return qid, flags, ".".join(labels).lower(), qtype, qclass, i + 4


def dns_answer(q, client_ip):
    qid, flags, name, qtype, qclass, end = parse_question(q)
    rd = flags & 0x0100
    opcode = flags & 0x7800
    question = q[12:end]
    ans = b""
    if name == "whoami.test":
        rcode = 0
        if qtype in (16, 255):  # TXT, ANY
            txt = client_ip.encode()
            rdata = bytes([len(txt)]) + txt
            ans = struct.pack("!HHHIH", 0xC00C, 16, 1, 0, len(rdata)) + rdata
    else:
        rcode = 3  # NXDOMAIN
    rflags = 0x8000 | opcode | 0x0400 | rd | rcode  # QR, AA
    head = struct.pack("!HHHHHH", qid, rflags, 1, 1 if ans else 0, 0, 0)
    return head + question + ans, name, qtype


class DnsUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        ip = fmt_peer(addr).rsplit(":", 1)[0].strip("[]")
        try:
            resp, name, qtype = dns_answer(data, ip)
        except (ValueError, UnicodeError):
            out(f"dns udp {ip} malformed")
            return
        out(f"dns udp {ip} {name} {qtype}")
        self.t.sendto(resp, addr)


async def dns_tcp(reader, writer):
    peer = writer.get_extra_info("peername")
    ip = fmt_peer(peer).rsplit(":", 1)[0].strip("[]") if peer else "?"
    try:
        while True:
            hdr = await asyncio.wait_for(reader.readexactly(2), 10)
            (n,) = struct.unpack("!H", hdr)
            q = await asyncio.wait_for(reader.readexactly(n), 10)
            try:
                resp, name, qtype = dns_answer(q, ip)
            except (ValueError, UnicodeError):
                out(f"dns tcp {ip} malformed")
                return
            out(f"dns tcp {ip} {name} {qtype}")
            writer.write(struct.pack("!H", len(resp)) + resp)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
        pass
    finally:
        writer.close()


# ------------------------------------------------------------------ UDP services


class WhoAmI(asyncio.DatagramProtocol):
    def __init__(self, port):
        self.port = port

    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        p = fmt_peer(addr)
        out(f"udp{self.port} {p}")
        self.t.sendto(f"{p} ".encode() + data[:64], addr)


class ConeA(asyncio.DatagramProtocol):
    def __init__(self, b_sock):
        self.b = b_sock

    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        p = fmt_peer(addr)
        out(f"coneA {p}")
        # B first, from its own socket: the client has never sent to B.
        try:
            self.b.sendto(f"B to {p}".encode(), addr)
        except OSError as e:
            out(f"coneB send error {e}")
        self.t.sendto(f"A saw {p}".encode(), addr)


def udp_sock(addr, port):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((addr, port))
    s.setblocking(False)
    return s


async def serve(udp, dns, cone, ready):
    loop = asyncio.get_running_loop()
    keep = []
    for a in udp:
        for port in (PORT_WHO, PORT_WHO2):
            keep.append(await loop.create_datagram_endpoint(lambda p=port: WhoAmI(p), sock=udp_sock(a, port)))
    for a in dns:
        keep.append(await loop.create_datagram_endpoint(DnsUdp, sock=udp_sock(a, 53)))
        keep.append(await asyncio.start_server(dns_tcp, host=a, port=53, reuse_address=True))
    if cone:
        a_addr, b_addr = cone
        b = udp_sock(b_addr, PORT_CONE_B)
        keep.append(b)
        keep.append(await loop.create_datagram_endpoint(lambda: ConeA(b), sock=udp_sock(a_addr, PORT_CONE_A)))
    out(f"udp services: who-am-i {udp} dns {dns} cone {cone}")
    mark_ready(ready)
    await asyncio.Event().wait()


# ------------------------------------------------------------------ SOCKS5 (full cone)


def pack_addr(addr):
    ip = ipaddress.ip_address(addr[0].split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return b"\x01" + ip.packed + struct.pack("!H", addr[1])
    return b"\x04" + ip.packed + struct.pack("!H", addr[1])


def unpack_addr(b, i):
    """(host, port, next) from a SOCKS5 address at b[i]."""
    t = b[i]
    if t == 1:
        return socket.inet_ntop(socket.AF_INET, b[i + 1 : i + 5]), struct.unpack("!H", b[i + 5 : i + 7])[0], i + 7
    if t == 4:
        return socket.inet_ntop(socket.AF_INET6, b[i + 1 : i + 17]), struct.unpack("!H", b[i + 17 : i + 19])[0], i + 19
    if t == 3:
        n = b[i + 1]
        host = b[i + 2 : i + 2 + n].decode()
        return host, struct.unpack("!H", b[i + 2 + n : i + 4 + n])[0], i + 4 + n
    raise ValueError(f"address type {t}")


class Stats:
    def __init__(self, path):
        self.path = path
        self.c = dict(assoc_opened=0, assoc_closed=0, up=0, down=0, connects=0)
        self.dirty = True

    def inc(self, k, n=1):
        self.c[k] += n
        self.dirty = True

    async def writer(self):
        while True:
            if self.dirty and self.path:
                self.dirty = False
                write_atomic(self.path, " ".join(f"{k} {v}" for k, v in self.c.items()) + "\n")
            await asyncio.sleep(0.2)


class ClientSide(asyncio.DatagramProtocol):
    """The relay socket the client sends to: unwraps and forwards."""

    def __init__(self, assoc):
        self.a = assoc

    def datagram_received(self, data, addr):
        self.a.from_client(data, addr)


class RemoteSide(asyncio.DatagramProtocol):
    """An unconnected socket to the internet: whoever sends, goes back."""

    def __init__(self, assoc):
        self.a = assoc

    def datagram_received(self, data, addr):
        self.a.from_remote(data, addr)


class Assoc:
    def __init__(self, stats, client_ip):
        self.stats = stats
        self.client_ip = client_ip
        self.client = None  # (ip, port) once the first datagram came
        self.cside = None
        self.remote = {}  # family -> transport

    def from_client(self, data, addr):
        if ipaddress.ip_address(addr[0]) != self.client_ip:
            return  # RFC 1928: only the client's address may use the relay
        self.client = addr
        try:
            if len(data) < 4 or data[0] or data[1] or data[2]:
                return  # no fragments
            host, port, off = unpack_addr(data, 3)
        except (ValueError, IndexError, UnicodeError):
            return
        fam = family(host)
        t = self.remote.get(fam)
        if t is None:
            return
        self.stats.inc("up")
        t.sendto(data[off:], (host, port))

    def from_remote(self, data, addr):
        if self.client is None or self.cside is None:
            return
        self.stats.inc("down")
        self.cside.sendto(b"\0\0\0" + pack_addr(addr) + data, self.client)

    def close(self):
        for t in [self.cside, *self.remote.values()]:
            if t is not None:
                t.close()


async def socks_session(reader, writer, stats):
    loop = asyncio.get_running_loop()
    assoc = None
    up = None
    try:
        v, n = await asyncio.wait_for(reader.readexactly(2), 10)
        methods = await asyncio.wait_for(reader.readexactly(n), 10)
        if v != 5 or 0 not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(b"\x05\x00")
        ver, cmd, _, atyp = await asyncio.wait_for(reader.readexactly(4), 10)
        if atyp == 1:
            rest = await reader.readexactly(6)
        elif atyp == 4:
            rest = await reader.readexactly(18)
        elif atyp == 3:
            ln = await reader.readexactly(1)
            rest = ln + await reader.readexactly(ln[0] + 2)
        else:
            writer.write(b"\x05\x08\x00\x01\0\0\0\0\0\0")
            return
        host, port, _ = unpack_addr(bytes([atyp]) + rest, 0)
        if cmd == 1:  # CONNECT
            try:
                r2, w2 = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError):
                writer.write(b"\x05\x05\x00\x01\0\0\0\0\0\0")
                return
            stats.inc("connects")
            up = w2
            writer.write(b"\x05\x00\x00" + pack_addr(w2.get_extra_info("sockname")))

            await asyncio.gather(pump(reader, w2), pump(r2, writer))
            return
        if cmd != 3:
            writer.write(b"\x05\x07\x00\x01\0\0\0\0\0\0")
            return
        # UDP ASSOCIATE: the client-facing socket on the address the client
        # reached us at; remote-facing sockets (v4 and v6) unconnected.
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        client_ip = ipaddress.ip_address(peer[0])
        if client_ip.version == 6 and client_ip.ipv4_mapped:
            client_ip = client_ip.ipv4_mapped
        assoc = Assoc(stats, client_ip)
        ct, _ = await loop.create_datagram_endpoint(lambda: ClientSide(assoc), local_addr=(local[0], 0))
        assoc.cside = ct
        for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                t, _ = await loop.create_datagram_endpoint(
                    lambda: RemoteSide(assoc), local_addr=(any_addr, 0), family=fam
                )
                assoc.remote[fam] = t
            except OSError:
                pass
        stats.inc("assoc_opened")
        writer.write(b"\x05\x00\x00" + pack_addr(ct.get_extra_info("sockname")))
        await writer.drain()
        # The association lives as long as the control connection.
        while await reader.read(4096):
            pass
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError, ValueError):
        pass
    finally:
        if assoc is not None:
            assoc.close()
            stats.inc("assoc_closed")
        if up is not None:
            up.close()
        writer.close()


async def socks_main(addr, port, status, ready):
    stats = Stats(status)
    srv = await start_tcp(lambda r, w: socks_session(r, w, stats), addr, int(port))
    out(f"socks5 (full cone) on {addr}:{port}")
    mark_ready(ready)
    await asyncio.gather(srv.serve_forever(), stats.writer())


# ------------------------------------------------------------------ clients


def client_sock(host, bind_port=None):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    if bind_port is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if s.family == socket.AF_INET6 else "0.0.0.0", int(bind_port)))
    return s


def recv_until(s, deadline):
    """One datagram (data, from) or None at the deadline."""
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            return s.recvfrom(4096)
        except socket.timeout:
            return None
        except ConnectionRefusedError:
            continue  # an ICMP error queued on the socket: keep listening
    return None


def ask_on(s, host, port, timeout, tries, tag=b"ask"):
    for _ in range(tries):
        s.sendto(tag, (host, port))
        r = recv_until(s, time.monotonic() + timeout)
        if r is not None:
            return r
    return None


def cmd_ask(host, port, timeout="3", tries="2", bind_port=None):
    with client_sock(host, bind_port) as s:
        r = ask_on(s, host, int(port), float(timeout), int(tries))
    if r is None:
        out("no reply")
        return 1
    data, frm = r
    out(f"reply from {fmt_peer(frm)} {data.decode(errors='replace')}")
    return 0


def cmd_none(host, port, wait="2"):
    with client_sock(host) as s:
        for i in range(3):
            s.sendto(f"probe {i}".encode(), (host, int(port)))
        r = recv_until(s, time.monotonic() + float(wait))
    if r is None:
        out("no reply")
        return 0
    data, frm = r
    out(f"reply from {fmt_peer(frm)} {data.decode(errors='replace')}")
    return 1


def cmd_idle(host, port, wait):
    port = int(port)
    res = []
    with client_sock(host) as s:
        for i in range(2):
            if i:
                time.sleep(float(wait))
            r = ask_on(s, host, port, 3, 2, tag=f"idle {i}".encode())
            if r is None:
                res.append("none -")
            else:
                data, frm = r
                res.append(f"{fmt_peer(frm)} {data.decode(errors='replace').split()[0]}")
    out(f"first {res[0]} second {res[1]}")
    return 0 if "none -" not in res else 1


def cmd_many(host, port, n, deadline, *opts):
    raise_nofile()
    port = int(port)
    n = int(n)
    deadline_s = float(deadline)
    sequential = "--sequential" in opts
    want_ip = None
    if "--want-ip" in opts:
        want_ip = opts[opts.index("--want-ip") + 1]
    want_from = fmt_peer((host, port))
    t0 = time.monotonic()
    end = t0 + deadline_s
    socks = []
    local_ports = []
    got = {}
    wrong_from = 0
    wrong_ip = 0
    ports = set()
    errors = set()

    def take(i, data, frm):
        nonlocal wrong_from, wrong_ip
        if i in got:
            return
        got[i] = True
        if fmt_peer(frm) != want_from:
            wrong_from += 1
        seen = data.decode(errors="replace").split()[0]
        ip, _, p = seen.rpartition(":")
        ip = ip.strip("[]")
        if want_ip and ip != want_ip:
            wrong_ip += 1
        ports.add(p)

    try:
        if sequential:
            for i in range(n):
                if time.monotonic() > end:
                    break
                s = client_sock(host)
                socks.append(s)
                r = ask_on(s, host, port, 1.5, 2, tag=f"s{i}".encode())
                local_ports.append(s.getsockname()[1])
                if r is not None:
                    take(i, *r)
                # All stay open: a closed socket's port could be reused by
                # the next one, which egressd rightly treats as the same session.
        else:
            sel = selectors.EpollSelector()
            for i in range(n):
                s = client_sock(host)
                s.setblocking(False)
                socks.append(s)
                sel.register(s, selectors.EVENT_READ, i)
                try:
                    s.sendto(f"m{i}".encode(), (host, port))
                except OSError as e:
                    errors.add(str(e)[:60])
                local_ports.append(s.getsockname()[1])
            resent = False
            while len(got) < n and (now := time.monotonic()) < end:
                if not resent and now - t0 > min(6.0, deadline_s / 2):
                    resent = True
                    for i, s in enumerate(socks):
                        if i not in got:
                            try:
                                s.sendto(f"m{i}".encode(), (host, port))
                            except OSError as e:
                                errors.add(str(e)[:60])
                for key, _ in sel.select(timeout=min(0.5, end - now)):
                    s = key.fileobj
                    while True:
                        try:
                            data, frm = s.recvfrom(4096)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as e:
                            errors.add(str(e)[:60])
                            break
                        take(key.data, data, frm)
    finally:
        for s in socks:
            s.close()
    dt = time.monotonic() - t0
    last = (n - 1) in got
    missing = [local_ports[i] for i in range(len(local_ports)) if i not in got]
    if missing:
        errors.add(f"{len(missing)} without a reply, e.g. local ports {missing[:5]}")
    summary = (
        f"{len(got)}/{n} replies, wrong_from={wrong_from} wrong_ip={wrong_ip} "
        f"ports={len(ports)} last={'yes' if last else 'no'} in {dt:.1f}s"
        + (f" errors: {'; '.join(sorted(errors)[:3])}" if errors else "")
    )
    ok = len(got) == n and wrong_from == 0 and wrong_ip == 0
    out(("ok " if ok else "failed ") + summary)
    return 0 if ok else 1


def cmd_fullcone(a_host, a_port, b_host, b_port, wait="3"):
    want_b = fmt_peer((b_host, int(b_port)))
    seen = []
    with client_sock(a_host) as s:
        s.sendto(b"hello A", (a_host, int(a_port)))
        end = time.monotonic() + float(wait)
        from_b = False
        while True:
            r = recv_until(s, end)
            if r is None:
                break
            data, frm = r
            seen.append(f"{fmt_peer(frm)}={data.decode(errors='replace')}")
            if fmt_peer(frm) == want_b:
                from_b = True
                # A's answer may still be on its way: keep listening a bit
                end = min(end, time.monotonic() + 0.5)
    out("got " + ("; ".join(seen) if seen else "nothing"))
    return 0 if from_b else 1


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "serve":
        udp, dns, cone, ready = [], [], None, None
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--udp":
                udp.append(args[i + 1])
                i += 2
            elif a == "--dns":
                dns.append(args[i + 1])
                i += 2
            elif a == "--cone":
                cone = (args[i + 1], args[i + 2])
                i += 3
            elif a == "--ready":
                ready = args[i + 1]
                i += 2
            else:
                print(f"unknown option {a}", file=sys.stderr)
                return 2
        asyncio.run(serve(udp, dns, cone, ready))
        return 0
    if cmd == "socks5":
        raise_nofile()
        status, args = pop_opt(args, "--status")
        ready, args = pop_opt(args, "--ready")
        asyncio.run(socks_main(args[0], args[1], status, ready))
        return 0
    table = {"ask": cmd_ask, "none": cmd_none, "idle": cmd_idle, "many": cmd_many, "fullcone": cmd_fullcone}
    return dispatch(table, cmd, args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(0)
