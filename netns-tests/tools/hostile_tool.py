#!/usr/bin/env python3
"""hostile_tool — the attackers, victims and judges of egressd's hostile
suite (netns-tests/hostile.sh). Python 3 standard library only; every loop
is bounded in count and in time. Result lines go to stdout; exit 0 when the
tool itself worked (the suite judges what it saw), 1 when it could not do
its job (no reply from R1, bad input, ...).

A stranger writes to a container's mapping (check A):
  peer R1_HOST R1_PORT N MAPFILE [WAIT]        (in the container)
      one socket: one datagram to R1, whose who-am-i answer names our
      mapping at the exit ("<ip>:<port> ..."), written to MAPFILE. Then wait
      (WAIT s, 10) for a datagram from anyone else and answer its sender N
      times, 50 ms apart, from the same socket (as a STUN/WebRTC/DHT peer
      does). "mapping M stranger S answered N" | "no reply from R1" |
      "mapping M no stranger".
  stranger BIND_HOST BIND_PORT MAPFILE WANT N [WAIT]   (in inet)
      from BIND_HOST:BIND_PORT, write "hello" to the mapping in MAPFILE (up to
      3 times, 1.5 s apart, until something comes back), then collect for
      WAIT s (3) or until N answers came, + 0.3 s for stragglers:
      "got K want W other O sources SRC:COUNT,..." (W: from address WANT,
      O: from anywhere else).

A relay that lies about reply sources (check C):
  forge-relay ADDR PORT [--forge A,B,..] [--forge6 A,B,..] [--ready FILE]
      a SOCKS5 server (no authentication; CONNECT refused) whose UDP relay
      answers each datagram first once from each forged source of the
      target's family ("forged <addr>", the target's port), then genuinely
      ("echo <payload>", naming the target).
  collect HOST PORT WAIT                       (in the container)
      one datagram to HOST:PORT, then every datagram for WAIT s:
      "got K: SRC=TEXT; ..."

A published port (check B):
  svc NAME ADDR... --tcp PORT --udp PORT [--ready FILE]   (in the container)
      TCP: "NAME saw <peer>\\n" to each connection, then close; UDP: answer
      each datagram "NAME saw <peer>". Logs "tcp <peer>" / "udp <peer>".
  probe HOST TCP_PORT UDP_PORT [WAIT]          (in inet)
      one TCP connection (connect timeout WAIT, 2 s) and one datagram
      (answers collected for WAIT s): "tcp OK:<text>|timeout|refused|...
      udp SRC=TEXT;...|none"

The reset race (check D):
  race-client HOST UDP_PORT SECS CONC LOG [STOPFILE [READY]]   (in the container)
      3 x CONC threads, back to back, for SECS s (at most 20 000 attempts
      each) or until STOPFILE exists: fresh TCP who-am-i connections
      (HOST:80), held TCP connections (HOST:9004: "hello" names the exit, a
      later "bye" is answered only if the flow still lives: "hold-alive"),
      and UDP who-am-i sockets asking 1-4 times each. LOG: "proto start_ns
      end_ns ok|err exit-ip|why" per attempt (wall clock, comparable across
      namespaces). READY is written once an attempt has been answered.
  race-switch EGRESSD SOCKET SOURCE TUNNEL_A TUNNEL_B SECS MAXN GAP_LO GAP_HI LOG
      (anywhere: the control socket is a file) `EGRESSD route set --socket
      SOCKET --source SOURCE --tunnel T --reset-flows`, T = TUNNEL_B, A, B,
      ...; at most MAXN times in SECS s, GAP_LO..GAP_HI s apart (seeded).
      LOG: "k tunnel before_ns after_ns rc message".
  race-check SWITCHLOG CONNLOG INITIAL MAP
      MAP: "exit1=198.51.100.2,exit2=198.51.100.3". An attempt is decisive
      when it started after switch k returned and ended before switch k+1
      began; it must name switch k's exit (before the first switch: INITIAL).
      An attempt is "hold-alive" from the moment its "bye" went: a flow
      that answers after a switch returned must be on that switch's exit
      (every flow of the source open at the switch is reset).
      "switches S errors E attempts N decisive D ok O violations V
      ambiguous A lost L windows W moved M seen EXIT:N,... [(PROTO:N,...)
      e.g. ...]"
"""

import asyncio
import ipaddress
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from egtest import family, hostport, mark_ready, out, pop_opt, raise_nofile, start_tcp  # noqa: E402


def fmt(addr):
    ip = ipaddress.ip_address(addr[0].split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return f"[{ip}]:{addr[1]}" if ip.version == 6 else f"{ip}:{addr[1]}"


def recv_until(s, deadline):
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            return s.recvfrom(4096)
        except socket.timeout:
            return None
        except ConnectionRefusedError:
            continue
    return None


# ------------------------------------------------------------------ A


def cmd_peer(r1_host, r1_port, n, mapfile, wait="10"):
    r1 = (r1_host, int(r1_port))
    r1_fmt = fmt(r1)
    with socket.socket(family(r1_host), socket.SOCK_DGRAM) as s:
        got = None
        for _ in range(3):
            s.sendto(b"hello R1", r1)
            got = recv_until(s, time.monotonic() + 2)
            if got is not None and fmt(got[1]) == r1_fmt:
                break
            got = None
        if got is None:
            out("no reply from R1")
            return 1
        mapping = got[0].decode(errors="replace").split()[0]
        tmp = mapfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(mapping + "\n")
        os.replace(tmp, mapfile)
        end = time.monotonic() + float(wait)
        while True:
            r = recv_until(s, end)
            if r is None:
                out(f"mapping {mapping} no stranger")
                return 1
            if fmt(r[1]) != r1_fmt:
                break
        stranger = r[1]
        for i in range(int(n)):
            s.sendto(f"answer {i}".encode(), stranger)
            time.sleep(0.05)
    out(f"mapping {mapping} stranger {fmt(stranger)} answered {n}")
    return 0


def cmd_stranger(bind_host, bind_port, mapfile, want, n, wait="3"):
    with open(mapfile) as f:
        target = hostport(f.read().strip())
    n = int(n)
    srcs = {}
    got = 0
    with socket.socket(family(bind_host), socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind_host, int(bind_port)))
        first = None
        for _ in range(3):
            s.sendto(b"hello from a stranger", target)
            first = recv_until(s, time.monotonic() + 1.5)
            if first is not None:
                break
        end = time.monotonic() + float(wait)
        r = first
        while r is not None:
            ip = fmt(r[1]).rsplit(":", 1)[0].strip("[]")
            srcs[ip] = srcs.get(ip, 0) + 1
            got += 1
            if got >= n:
                end = min(end, time.monotonic() + 0.3)
            r = recv_until(s, end)
    w = srcs.get(want, 0)
    listing = ",".join(f"{k}:{v}" for k, v in sorted(srcs.items())) or "-"
    out(f"got {got} want {w} other {got - w} sources {listing}")
    return 0


# ------------------------------------------------------------------ C


def enc_addr(host, port):
    ip = ipaddress.ip_address(host)
    return (b"\x01" if ip.version == 4 else b"\x04") + ip.packed + struct.pack("!H", port)


def dec_addr(b, i):
    """(host, port, next) of the SOCKS5 address at b[i], or None."""
    if i >= len(b):
        return None
    t = b[i]
    if t == 1 and len(b) >= i + 7:
        return str(ipaddress.ip_address(b[i + 1 : i + 5])), struct.unpack("!H", b[i + 5 : i + 7])[0], i + 7
    if t == 4 and len(b) >= i + 19:
        return str(ipaddress.ip_address(b[i + 1 : i + 17])), struct.unpack("!H", b[i + 17 : i + 19])[0], i + 19
    return None


class ForgeRelay(asyncio.DatagramProtocol):
    def __init__(self, forge):
        self.forge = forge  # {4: [...], 6: [...]}
        self.t = None

    def connection_made(self, transport):
        self.t = transport

    def datagram_received(self, data, addr):
        if len(data) < 4 or data[:3] != b"\0\0\0":
            return
        a = dec_addr(data, 3)
        if a is None:
            return
        host, port, i = a
        fam = ipaddress.ip_address(host).version
        for f in self.forge.get(fam, []):
            self.t.sendto(b"\0\0\0" + enc_addr(f, port) + f"forged {f}".encode(), addr)
        self.t.sendto(b"\0\0\0" + enc_addr(host, port) + b"echo " + data[i:], addr)
        out(f"relayed {host}:{port} forged {len(self.forge.get(fam, []))}")


async def forge_conn(reader, writer, forge):
    loop = asyncio.get_running_loop()
    transport = None
    try:
        _ver, n = await asyncio.wait_for(reader.readexactly(2), 30)
        await reader.readexactly(n)
        writer.write(b"\x05\x00")
        await writer.drain()
        _ver, cmd, _rsv, atyp = await asyncio.wait_for(reader.readexactly(4), 3600)
        if atyp == 1:
            await reader.readexactly(6)
        elif atyp == 4:
            await reader.readexactly(18)
        elif atyp == 3:
            ln = await reader.readexactly(1)
            await reader.readexactly(ln[0] + 2)
        if cmd != 3:
            writer.write(b"\x05\x07\x00\x01\0\0\0\0\0\0")
            await writer.drain()
            return
        local = writer.get_extra_info("sockname")
        transport, _ = await loop.create_datagram_endpoint(lambda: ForgeRelay(forge), local_addr=(local[0], 0))
        ra = transport.get_extra_info("sockname")
        writer.write(b"\x05\x00\x00" + enc_addr(ra[0], ra[1]))
        await writer.drain()
        end = time.monotonic() + 3600
        while time.monotonic() < end and await reader.read(4096):
            pass
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        pass
    finally:
        if transport is not None:
            transport.close()
        writer.close()


async def forge_main(addr, port, forge, ready):
    srv = await start_tcp(lambda r, w: forge_conn(r, w, forge), addr, int(port))
    out(f"forge-relay on {addr}:{port} forging {forge}")
    mark_ready(ready)
    await srv.serve_forever()


def cmd_collect(host, port, wait):
    seen = []
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.sendto(b"ask", (host, int(port)))
        end = time.monotonic() + float(wait)
        while (r := recv_until(s, end)) is not None:
            seen.append(f"{fmt(r[1])}={r[0].decode(errors='replace')}")
    out(f"got {len(seen)}: " + "; ".join(seen))
    return 0


# ------------------------------------------------------------------ B


async def svc_main(name, addrs, tcp_port, udp_port, ready):
    loop = asyncio.get_running_loop()

    async def on_tcp(reader, writer):
        p = fmt(writer.get_extra_info("peername"))
        out(f"tcp {p}")
        try:
            writer.write(f"{name} saw {p}\n".encode())
            await writer.drain()
        except OSError:
            pass
        writer.close()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.t = transport

        def datagram_received(self, data, addr):
            p = fmt(addr)
            out(f"udp {p}")
            self.t.sendto(f"{name} saw {p}".encode(), addr)

    keep = []
    for a in addrs:
        keep.append(await start_tcp(on_tcp, a, int(tcp_port)))
        keep.append(await loop.create_datagram_endpoint(Udp, local_addr=(a, int(udp_port))))
    out(f"svc {name} on {addrs} tcp {tcp_port} udp {udp_port}")
    mark_ready(ready)
    await asyncio.Event().wait()


def cmd_probe(host, tcp_port, udp_port, wait="2"):
    wait = float(wait)
    try:
        with socket.create_connection((host, int(tcp_port)), timeout=wait) as c:
            c.settimeout(wait)
            tcp = "OK:" + c.recv(4096).decode(errors="replace").strip().replace(" ", "_")
    except socket.timeout:
        tcp = "timeout"
    except OSError as e:
        tcp = type(e).__name__
    seen = []
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.sendto(b"probe", (host, int(udp_port)))
        end = time.monotonic() + wait
        while (r := recv_until(s, end)) is not None:
            seen.append(f"{fmt(r[1])}={r[0].decode(errors='replace').replace(' ', '_')}")
    out(f"tcp {tcp} udp {';'.join(seen) or 'none'}")
    return 0


# ------------------------------------------------------------------ D


class Race:
    """What the race client's threads share: the deadline, the stop file,
    the log (one line per attempt) and the ready file."""

    def __init__(self, host, udp_port, secs, stop, ready):
        self.host = host
        self.udp_port = udp_port
        self.deadline = time.monotonic() + secs
        self.stop = stop
        self.ready = ready
        self.log = []
        self.lock = threading.Lock()
        self.rng = random.Random(2121)

    def running(self):
        return time.monotonic() < self.deadline and not (self.stop and os.path.exists(self.stop))

    def record(self, proto, t0, res, sid="-"):
        with self.lock:
            self.log.append(f"{proto} {t0} {time.time_ns()} {res} {sid}")
        if self.ready and res.startswith("ok") and not os.path.exists(self.ready):
            mark_ready(self.ready)

    def gap(self, hi):
        with self.lock:
            return self.rng.uniform(0, hi)


def err(e):
    return "err timeout" if isinstance(e, socket.timeout) else f"err {type(e).__name__}"


def race_tcp(r, maxn):
    """Fresh who-am-i connections (HTTP on port 80), back to back."""
    for _ in range(maxn):
        if not r.running():
            return
        t0 = time.time_ns()
        try:
            with socket.create_connection((r.host, 80), timeout=3) as c:
                c.settimeout(3)
                c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while len(data) < 65536:
                    b = c.recv(4096)
                    if not b:
                        break
                    data += b
            lines = data.decode(errors="replace").strip().splitlines()
            res = f"ok {lines[-1].strip()}" if data.startswith(b"HTTP/1.0 200") and lines else "err bad"
        except OSError as e:
            res = err(e)
        r.record("tcp", t0, res)


def race_hold(r, maxn):
    """Held connections (egtool's hold service, port 9004): "hello" names
    the exit; after a random pause "bye" must be answered "ok" only while
    the flow lives: an answered bye after a switch returned is a flow that
    survived the reset (recorded as "hold-alive" from the moment bye went)."""
    for _ in range(maxn):
        if not r.running():
            return
        t0 = time.time_ns()
        try:
            with socket.create_connection((r.host, 9004), timeout=3) as c:
                c.settimeout(3)
                f = c.makefile("rb")
                c.sendall(b"hello\n")
                line = f.readline().decode(errors="replace").split()
                if len(line) != 2 or line[0] != "ready":
                    r.record("hold", t0, "err bad")
                    continue
                exit_ip = line[1]
                sid = f"h{c.getsockname()[1]}.{t0}"
                r.record("hold", t0, f"ok {exit_ip}", sid)
                time.sleep(r.gap(0.3))
                t1 = time.time_ns()
                try:
                    c.sendall(b"bye\n")
                    ans = f.readline().strip()
                    res = f"ok {exit_ip}" if ans == b"ok" else "err ended"
                except OSError as e:
                    res = err(e)
                r.record("hold-alive", t1, res, sid)
        except OSError as e:
            r.record("hold", t0, err(e))


def race_udp(r, maxn):
    """Who-am-i datagrams; each socket asks 1-4 times with pauses, so a
    session that survived a reset is asked again after it."""
    n = 0
    while n < maxn and r.running():
        with socket.socket(family(r.host), socket.SOCK_DGRAM) as s:
            sid = "-"
            for _ in range(1 + int(r.gap(4))):
                if not r.running():
                    break
                n += 1
                t0 = time.time_ns()
                try:
                    s.sendto(b"race", (r.host, r.udp_port))
                    a = recv_until(s, time.monotonic() + 1.0)
                    res = "err timeout" if a is None else "ok " + hostport(a[0].decode(errors="replace").split()[0])[0]
                    if sid == "-":
                        sid = f"u{s.getsockname()[1]}.{t0}"
                except OSError as e:
                    res = err(e)
                r.record("udp", t0, res, sid)
                if res.startswith("err"):
                    break
                time.sleep(r.gap(0.1))


def cmd_race_client(host, udp_port, secs, conc, logf, stop=None, ready=None):
    raise_nofile()
    r = Race(host, int(udp_port), float(secs), stop, ready)
    threads = [
        threading.Thread(target=f, args=(r, 20000))
        for _ in range(int(conc))
        for f in (race_tcp, race_hold, race_udp)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(logf, "w") as f:
        f.write("\n".join(r.log) + "\n")
    ok = sum(1 for x in r.log if " ok " in x)
    kinds = {}
    for x in r.log:
        k = x.split(" ", 1)[0]
        kinds[k] = kinds.get(k, 0) + 1
    out(f"attempts {len(r.log)} answered {ok} " + " ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    return 0 if ok else 1


def cmd_race_switch(egressd, sock, source, ta, tb, secs, maxn, gap_lo, gap_hi, logf):
    rng = random.Random(21)
    deadline = time.monotonic() + float(secs)
    lines = []
    errors = 0
    k = 0
    while k < int(maxn) and time.monotonic() < deadline:
        k += 1
        t = tb if k % 2 else ta
        before = time.time_ns()
        try:
            p = subprocess.run(
                [egressd, "route", "set", "--socket", sock, "--source", source, "--tunnel", t, "--reset-flows"],
                capture_output=True, text=True, timeout=10,
            )
            rc, msg = p.returncode, (p.stdout + p.stderr).strip().replace("\n", " ")
        except (OSError, subprocess.TimeoutExpired) as e:
            rc, msg = 99, str(e)
        after = time.time_ns()
        if rc:
            errors += 1
        lines.append(f"{k} {t} {before} {after} {rc} {msg[:200]}")
        time.sleep(rng.uniform(float(gap_lo), float(gap_hi)))
    with open(logf, "w") as f:
        f.write("\n".join(lines) + "\n")
    out(f"switches {k} errors {errors}")
    return 0 if k and not errors else 1


def window_of(wins, start, end):
    """The window an attempt lies in entirely, or None (it spans a switch)."""
    for i, (ws, we, _t) in enumerate(wins):
        if ws < start and end < we:
            return i
    return None


def cmd_race_check(switchlog, connlog, initial, mapping):
    by_ip = {v: k for k, v in (kv.split("=", 1) for kv in mapping.split(","))}
    sw = []
    with open(switchlog) as f:
        for line in f:
            p = line.split(maxsplit=5)
            if len(p) >= 5:
                sw.append((p[1], int(p[2]), int(p[3]), int(p[4])))
    errors = sum(1 for x in sw if x[3] != 0)
    # Windows (start, end, expected tunnel; None after a failed switch):
    # before the first switch, then from each switch's return to the next's start.
    wins = [(0, sw[0][1] if sw else 1 << 62, initial)]
    for i, (t, _b, a, rc) in enumerate(sw):
        wins.append((a, sw[i + 1][1] if i + 1 < len(sw) else 1 << 62, t if rc == 0 else None))
    rows = []
    with open(connlog) as f:
        for line in f:
            p = line.split()
            if len(p) >= 5:
                rows.append((p[0], int(p[1]), int(p[2]), p[3], p[4], p[5] if len(p) > 5 else "-"))
    rows.sort(key=lambda r: r[1])
    decisive = ok = ambiguous = 0
    lost, vkinds, seen, win_ok, win_any = {}, {}, {}, set(), set()
    viol = []
    first = {}  # flow id -> (start of its first answered attempt, its exit)
    for proto, s, e, res, what, sid in rows:
        got = by_ip.get(what, what)
        if sid != "-" and sid not in first and res == "ok":
            first[sid] = (s, got)
        w = window_of(wins, s, e)
        if w is None or wins[w][2] is None:
            ambiguous += 1
            continue
        if res != "ok":
            lost[proto] = lost.get(proto, 0) + 1
            continue
        decisive += 1
        seen[got] = seen.get(got, 0) + 1
        win_any.add(w)
        if got == wins[w][2]:
            ok += 1
            win_ok.add(w)
            continue
        vkinds[proto] = vkinds.get(proto, 0) + 1
        why = f"{proto} {sid} started {(s - wins[w][0]) / 1e6:.1f} ms after switch {w} to {wins[w][2]} returned, left by {got}"
        if sid in first and first[sid][0] < s:
            f0 = first[sid][0]
            rel = min(range(len(sw)), key=lambda i: abs(sw[i][1] - f0)) if sw else 0
            why += (f" (the flow began {(f0 - sw[rel][1]) / 1e6:+.1f} ms from switch {rel + 1}'s start, "
                    f"by {first[sid][1]})")
        viol.append(why)
    windows = sum(1 for w in win_any if w > 0)
    moved = sum(1 for w in win_ok if w > 0)
    listing = ",".join(f"{k}:{v}" for k, v in sorted(seen.items())) or "-"
    lk = ",".join(f"{k}:{v}" for k, v in sorted(lost.items())) or "0"
    eg = ""
    if viol:
        eg = " (" + ",".join(f"{k}:{v}" for k, v in sorted(vkinds.items())) + f") e.g. {viol[0]}"
        eg += f"; {viol[-1]}" if len(viol) > 1 else ""
    out(f"switches {len(sw)} errors {errors} attempts {len(rows)} decisive {decisive} ok {ok} "
        f"violations {len(viol)} ambiguous {ambiguous} lost {lk} windows {windows} moved {moved} "
        f"seen {listing}{eg}")
    return 0


# ------------------------------------------------------------------ main


def split_list(v):
    return [x for x in (v or "").split(",") if x]


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "forge-relay":
        f4, args = pop_opt(args, "--forge")
        f6, args = pop_opt(args, "--forge6")
        ready, args = pop_opt(args, "--ready")
        asyncio.run(forge_main(args[0], args[1], {4: split_list(f4), 6: split_list(f6)}, ready))
        return 0
    if cmd == "svc":
        tcp, args = pop_opt(args, "--tcp")
        udp, args = pop_opt(args, "--udp")
        ready, args = pop_opt(args, "--ready")
        asyncio.run(svc_main(args[0], args[1:], tcp, udp, ready))
        return 0
    table = {
        "peer": cmd_peer,
        "stranger": cmd_stranger,
        "collect": cmd_collect,
        "probe": cmd_probe,
        "race-client": cmd_race_client,
        "race-switch": cmd_race_switch,
        "race-check": cmd_race_check,
    }
    if cmd not in table:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    try:
        return table[cmd](*args)
    except (OSError, ValueError, TypeError, IndexError) as e:
        out(f"error: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except KeyboardInterrupt:
        sys.exit(130)
