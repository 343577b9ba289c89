"""egtest — what every netns test tool (and scripts/bench/benchtool.py) shares.

Python 3 standard library only; imported, never run. The tools in this
folder import it directly (Python puts a script's own folder on sys.path);
benchtool.py adds this folder to sys.path itself.

  out(msg)                  one line on stdout, flushed (the tools' result lines)
  family(host)              AF_INET6 for an address with ':', else AF_INET
  hostport("[::1]:80")      ("::1", 80)
  raise_nofile()            soft RLIMIT_NOFILE up to 65536 (or the hard limit)
  write_atomic(path, text)  write path.tmp, rename over path
  mark_ready(path)          "ready\\n" into path (nothing when path is None)
  pop_opt(args, "--ready")  (value or None, args without the option and its value)
  stream_chunks(n), stream_sha(n)
                            the deterministic test stream and its sha256
  dns_query(qid, name)      a DNS query (RD set) for one TXT (or qtype) record
  tcp_listener(host, port, backlog)
                            a bound, listening TCP socket (SO_REUSEADDR)
  start_tcp(handler, host, port, **kw)
                            asyncio.start_server with the tools' listen
                            options (backlog 4096, SO_REUSEADDR)
  dispatch(table, cmd, args[, errors])
                            run table[cmd](*args): 2 for an unknown command;
                            an OSError/ValueError (or one of `errors`)
                            becomes "error: ..." and 1
"""

import asyncio
import hashlib
import os
import random
import resource
import socket
import struct
import sys

CHUNK = 1 << 20
_BASE = []  # the stream's 1 MiB base, made on first use (15 ms; most tools never need it)


def out(msg):
    print(msg, flush=True)


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def mark_ready(path):
    if path:
        with open(path, "w") as f:
            f.write("ready\n")


def pop_opt(args, name):
    """(value, rest): the value after `name` in args (None when absent) and
    args without the two."""
    if name not in args:
        return None, args
    i = args.index(name)
    return args[i + 1], args[:i] + args[i + 2 :]


def stream_chunks(n):
    """The deterministic, non-repeating test stream: 1 MiB chunks, each
    stamped with its index so swapped or repeated chunks change the hash."""
    if not _BASE:
        _BASE.append(random.Random(0xE6E55D).randbytes(CHUNK))
    i = 0
    while n > 0:
        c = i.to_bytes(8, "big") + _BASE[0][8:]
        if n < len(c):
            c = c[:n]
        yield c
        n -= len(c)
        i += 1


def stream_sha(n):
    h = hashlib.sha256()
    for c in stream_chunks(n):
        h.update(c)
    return h.hexdigest()


def dns_query(qid, name="whoami.test", qtype=16):
    """A query with recursion desired for (name, qtype, IN); TXT by default."""
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", qtype, 1)


def tcp_listener(host, port, backlog=128):
    ls = socket.socket(family(host), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(backlog)
    return ls


async def start_tcp(handler, host, port, **kw):
    return await asyncio.start_server(handler, host=host, port=port, backlog=4096, reuse_address=True, **kw)


async def pump(reader, writer, quiet=(OSError,)):
    """Copy one direction until EOF, then pass the EOF on (half-close).
    Exceptions of the QUIET kinds end it silently."""
    try:
        while True:
            b = await reader.read(65536)
            if not b:
                break
            writer.write(b)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except quiet:
        pass


def dispatch(table, cmd, args, errors=(OSError, ValueError)):
    if cmd not in table:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    try:
        return table[cmd](*args)
    except errors as e:
        out(f"error: {type(e).__name__}: {e}")
        return 1
