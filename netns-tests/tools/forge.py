#!/usr/bin/env python3
"""forge — send IPv4 packets with a forged source address from a raw socket.

For netns-tests/docker.sh: a container keeps CAP_NET_RAW by default, so it can
write whole IP packets with any source address. Nothing is expected back (the
reply, if any, goes to the forged address); the test counts what arrives
behind the host's uplink instead.

  forge.py udp SRC DST DPORT [COUNT]    UDP datagrams "forged <i>"
  forge.py syn SRC DST DPORT [COUNT]    TCP SYNs

Prints "sent N <proto> SRC -> DST:DPORT"; exit 0 when every send() succeeded.
Checksums are computed (a packet with a bad checksum could be dropped, or
left un-NATed by conntrack, before it shows what the host's rules do).
Python 3 standard library only; needs CAP_NET_RAW.
"""

import os
import socket
import struct
import sys


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_header(src, dst, proto, payload_len, ident):
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + payload_len, ident, 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]


def l4(proto, src, dst, sport, dport, i):
    pseudo_head = socket.inet_aton(src) + socket.inet_aton(dst)
    if proto == "udp":
        body = f"forged {i}".encode()
        seg = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
        c = csum(pseudo_head + struct.pack("!BBH", 0, 17, len(seg)) + seg) or 0xFFFF
        return 17, seg[:6] + struct.pack("!H", c) + seg[8:]
    seq = int.from_bytes(os.urandom(4), "big")
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    c = csum(pseudo_head + struct.pack("!BBH", 0, 6, len(seg)) + seg)
    return 6, seg[:16] + struct.pack("!H", c) + seg[18:]


def main(argv):
    if len(argv) not in (4, 5) or argv[0] not in ("udp", "syn"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, src, dst, dport = argv[0], argv[1], argv[2], int(argv[3])
    count = int(argv[4]) if len(argv) == 5 else 3
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent = 0
    for i in range(count):
        sport = 40000 + i
        proto, seg = l4(kind, src, dst, sport, dport, i)
        pkt = ip_header(src, dst, proto, len(seg), 0x4000 + i) + seg
        try:
            s.sendto(pkt, (dst, 0))
            sent += 1
        except OSError as e:
            print(f"send {i}: {e}")
    print(f"sent {sent} {kind} {src} -> {dst}:{dport}")
    return 0 if sent == count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
