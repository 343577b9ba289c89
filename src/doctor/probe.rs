//! Tunnel probes: can each tunnel be used the way the config says?
//!
//! Blocking std sockets with short timeouts, one thread per tunnel, so a
//! dead server costs its timeout once, not once per tunnel. Uses the same
//! SOCKS5 and HTTP codecs as the workers, so doctor speaks exactly what
//! egressd speaks. Credentials are sent, never printed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::Check;
use super::parse;
use crate::config::{Credentials, Server, Settings, Tunnel, TunnelKind};
use crate::wire::{Parse, http, socks5};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(3);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// TEST-NET-1 discard port: a harmless CONNECT target for HTTP proxies.
const HTTP_PROBE_DST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);

/// Every tunnel's check, in config order.
pub(super) fn all(settings: &Settings, config: &str) -> Vec<Check> {
    std::thread::scope(|s| {
        let handles: Vec<_> = settings.tunnels.iter().map(|t| s.spawn(move || tunnel(t, config))).collect();
        handles
            .into_iter()
            .zip(&settings.tunnels)
            .map(|(h, t)| {
                h.join().unwrap_or_else(|_| {
                    Check::warn(format!("tunnel {}", t.name), "could not check: the probe panicked", None)
                })
            })
            .collect()
    })
}

fn tunnel(t: &Tunnel, config: &str) -> Check {
    let name = format!("tunnel {}", t.name);
    match &t.kind {
        TunnelKind::Socks5 { server, auth, udp, warm, pipeline, .. } => {
            let mut c = socks(&name, &t.name, server, auth.as_ref(), *udp, config);
            if c.status == super::Status::Ok
                && let Some(addr) = server.addr
            {
                c.saw.push_str(&first_byte_note(addr, auth.as_ref(), *warm, *pipeline));
            }
            c
        }
        TunnelKind::HttpConnect { server, auth, .. } => {
            http_proxy(&name, &t.name, server, auth.as_ref(), config)
        }
        TunnelKind::Direct { interface, mark, bind } => direct(&name, interface.as_deref(), *mark, *bind),
    }
}

/// Connects to a tunnel server, or a FAIL saying why.
fn connect(name: &str, server: &Server) -> Result<(TcpStream, SocketAddr), Check> {
    let addr = match server.addr {
        Some(a) => Some(a),
        None => (server.host.as_str(), server.port).to_socket_addrs().ok().and_then(|mut a| a.next()),
    };
    let Some(addr) = addr else {
        return Err(Check::fail(
            name,
            format!("server {server}: the name does not resolve"),
            "fix the name, or write the server as ip:port",
        ));
    };
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
        Check::fail(
            name,
            format!("cannot connect to {server}: {e}"),
            format!("start the proxy on {addr}, or check the way there: ip route get {}", addr.ip()),
        )
    })?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let _ = s.set_nodelay(true);
    Ok((s, addr))
}

/// Why a read of a reply did not give one.
enum ReadFail {
    /// The server closed the connection (or reset it).
    Closed(String),
    TimedOut,
    Bad(String),
}

/// Reads until `parse` says done or fails.
fn read_reply<T>(
    s: &mut TcpStream,
    max: usize,
    parse: impl Fn(&[u8]) -> Result<Parse<T>, String>,
) -> Result<T, ReadFail> {
    let mut buf = vec![0u8; max];
    let mut have = 0;
    loop {
        match parse(&buf[..have]) {
            Ok(Parse::Done(v, _)) => return Ok(v),
            Ok(Parse::Incomplete) => {}
            Err(e) => return Err(ReadFail::Bad(e)),
        }
        if have == max {
            return Err(ReadFail::Bad("reply too long".into()));
        }
        match s.read(&mut buf[have..]) {
            Ok(0) => return Err(ReadFail::Closed("closed the connection".into())),
            Ok(n) => have += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(ReadFail::TimedOut);
            }
            Err(e) => return Err(ReadFail::Closed(format!("reset the connection ({e})"))),
        }
    }
}

fn socks(
    name: &str,
    tunnel: &str,
    server: &Server,
    auth: Option<&Credentials>,
    udp: bool,
    config: &str,
) -> Check {
    let (mut s, _) = match connect(name, server) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let step = |what: &str, f: ReadFail| -> Check {
        let saw = match f {
            ReadFail::Closed(e) => format!("{server}: the server {e} after {what}"),
            ReadFail::TimedOut => format!("{server}: no answer to {what} within {} s", IO_TIMEOUT.as_secs()),
            ReadFail::Bad(e) => format!("{server}: {what}: {e}"),
        };
        Check::fail(name, saw, format!("check that {server} is a SOCKS5 server and its logs"))
    };
    let mut g = [0u8; socks5::GREETING_MAX];
    let n = socks5::encode_greeting(auth.is_some(), &mut g);
    if let Err(e) = s.write_all(&g[..n]) {
        return step("the greeting", ReadFail::Closed(format!("refused the greeting ({e})")));
    }
    let method =
        read_reply(&mut s, 2, |b| socks5::parse_method(b, auth.is_some()).map_err(|e| e.to_string()));
    let method = match method {
        Ok(m) => m,
        Err(ReadFail::Bad(e)) if auth.is_none() && (e.contains("did not offer") || e_none(&e)) => {
            return Check::fail(
                name,
                format!("{server} wants authentication ({e}), and the tunnel has no username/password"),
                format!("add username: \"...\", password: \"...\" to tunnel \"{tunnel}\" in {config}"),
            );
        }
        Err(f) => return step("the greeting", f),
    };
    let mut how = vec!["greeting accepted".to_string()];
    if method == socks5::METHOD_USERPASS {
        let Some(c) = auth else { return step("the greeting", ReadFail::Bad("unexpected method".into())) };
        let mut a = [0u8; socks5::AUTH_MAX];
        let n = socks5::encode_auth(c.username.as_bytes(), c.password.as_bytes(), &mut a);
        if let Err(e) = s.write_all(&a[..n]) {
            return step("authentication", ReadFail::Closed(format!("refused the credentials ({e})")));
        }
        match read_reply(&mut s, 2, |b| socks5::parse_auth_status(b).map_err(|e| e.to_string())) {
            Ok(()) => how.push("auth accepted".into()),
            Err(ReadFail::Bad(e)) => {
                return Check::fail(
                    name,
                    format!("{server}: {e}"),
                    format!("correct the username/password of tunnel \"{tunnel}\" in {config}"),
                );
            }
            Err(f) => return step("authentication", f),
        }
    } else if auth.is_some() {
        how.push("no auth required".into());
    }
    if !udp {
        how.push("UDP off (`udp: false`: DNS goes over TCP)".into());
        return Check::ok(name, format!("{server}: {}", how.join(", ")));
    }
    let mut r = [0u8; socks5::REQUEST_MAX];
    let n = socks5::encode_request(socks5::CMD_UDP_ASSOCIATE, SocketAddr::from(([0, 0, 0, 0], 0)), &mut r);
    let refused = |why: String| {
        Check::fail(
            name,
            format!(
                "{server}: {} but UDP ASSOCIATE {why}: the tunnel has `udp: true` and its UDP would fail",
                how.join(", ")
            ),
            format!(
                "set `udp: false` on tunnel \"{tunnel}\" in {config} (its DNS then goes over TCP), or enable UDP \
                 ASSOCIATE on the server"
            ),
        )
    };
    if let Err(e) = s.write_all(&r[..n]) {
        return refused(format!("could not be sent ({e})"));
    }
    match read_reply(&mut s, socks5::REPLY_MAX, |b| socks5::parse_reply(b).map_err(|e| e.to_string())) {
        Ok(bound) => {
            let relay = match bound {
                socks5::Bound::Addr(a) => a.to_string(),
                socks5::Bound::Domain(p) => format!("a name, port {p}"),
            };
            how.push(format!("UDP ASSOCIATE accepted (relay {relay})"));
            Check::ok(name, format!("{server}: {}", how.join(", ")))
        }
        Err(ReadFail::Bad(e)) => refused(format!("was refused ({e})")),
        Err(ReadFail::Closed(e)) => refused(format!("failed: the server {e}")),
        Err(ReadFail::TimedOut) => refused(format!("got no answer within {} s", IO_TIMEOUT.as_secs())),
    }
}

/// What a new flow of a SOCKS5 tunnel waits for before its first byte:
/// whether the server takes a pipelined handshake (probed as the daemon
/// probes it) and whether a warm pool is kept.
fn first_byte_note(addr: SocketAddr, auth: Option<&Credentials>, warm: u16, pipeline: bool) -> String {
    use crate::pool::Pipelining;
    let piped = if pipeline {
        crate::pool::probe::pipelining(addr, auth, crate::pool::probe::TIMEOUT)
    } else {
        Ok(Pipelining::Off)
    };
    let (pipe_text, rtts_pooled, rtts_fresh) = match &piped {
        Ok(Pipelining::Yes) => ("pipelining works (greeting, auth, request and first bytes in one flight)".to_string(), 1, 2),
        Ok(Pipelining::Off) => ("pipelining off (`pipeline: false`)".to_string(), 2, 4 + usize::from(auth.is_some())),
        Ok(_) => (
            "pipelining not taken (the server drops bytes sent behind a message, as microsocks does): each step waits"
                .to_string(),
            2,
            4 + usize::from(auth.is_some()),
        ),
        Err(e) => (format!("pipelining could not be probed ({e})"), 2, 4 + usize::from(auth.is_some())),
    };
    let pool = if warm > 0 {
        format!(
            "warm pool of {warm}: a new connection's first byte after ~{rtts_pooled} round trip(s) to the exit while one is ready, ~{rtts_fresh} when the pool is empty"
        )
    } else {
        format!(
            "no warm pool (`warm: 0`): ~{rtts_fresh} round trips to the exit before a new connection's first byte"
        )
    };
    format!("; {pipe_text}; {pool}")
}

/// The method reply meant "none of your methods".
fn e_none(e: &str) -> bool {
    e.contains("accepts none of our auth methods")
}

fn http_proxy(name: &str, tunnel: &str, server: &Server, auth: Option<&Credentials>, config: &str) -> Check {
    let (mut s, _) = match connect(name, server) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let _ = s.set_read_timeout(Some(HTTP_TIMEOUT));
    let req = http::encode_connect(HTTP_PROBE_DST, auth.map(|c| (c.username.as_str(), c.password.as_str())));
    if let Err(e) = s.write_all(&req) {
        return Check::fail(
            name,
            format!("{server}: the request could not be sent ({e})"),
            "check the proxy's logs",
        );
    }
    let mut buf = vec![0u8; 1024];
    let mut have = 0;
    let status = loop {
        if let Some(st) = parse::http_status(&buf[..have]) {
            break Ok(st);
        }
        if have == buf.len() || (have >= 5 && !buf.starts_with(b"HTTP/")) {
            break Err(Some("answers, but not in HTTP"));
        }
        match s.read(&mut buf[have..]) {
            Ok(0) => break Err(Some("closed the connection without an HTTP answer")),
            Ok(n) => have += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break Err(None);
            }
            Err(_) => break Err(Some("reset the connection without an HTTP answer")),
        }
    };
    let probe = format!("CONNECT {HTTP_PROBE_DST}");
    match status {
        Ok(407) if auth.is_some() => Check::fail(
            name,
            format!("{server}: {probe} got 407: the proxy rejects the tunnel's credentials"),
            format!("correct the username/password of tunnel \"{tunnel}\" in {config}"),
        ),
        Ok(407) => Check::warn(
            name,
            format!("{server}: {probe} got 407: the proxy wants credentials and the tunnel has none"),
            Some(format!("add username: \"...\", password: \"...\" to tunnel \"{tunnel}\" in {config}")),
        ),
        Ok(st) => Check::ok(name, format!("{server}: speaks HTTP ({probe} answered {st})")),
        Err(None) => Check::ok(
            name,
            format!(
                "{server}: accepted {probe} and is still trying to reach it after {} s (a test address: expected)",
                HTTP_TIMEOUT.as_secs()
            ),
        ),
        Err(Some(why)) => Check::fail(
            name,
            format!("{server}: {why}"),
            format!("check that {server} is an HTTP CONNECT proxy and its logs"),
        ),
    }
}

fn direct(name: &str, interface: Option<&str>, mark: Option<u32>, bind: Option<IpAddr>) -> Check {
    let mut how = Vec::new();
    if let Some(i) = interface {
        if !Path::new(&format!("/sys/class/net/{i}")).exists() {
            return Check::fail(
                name,
                format!("interface {i} does not exist here: its flows fail"),
                format!(
                    "create or bring up {i} (e.g. `ip link show {i}`, `wg-quick up {i}`), or fix `interface`"
                ),
            );
        }
        how.push(format!("interface {i} exists"));
    }
    if let Some(b) = bind {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(SocketAddr::new(b, 0)),
            socket2::Type::DGRAM,
            None,
        );
        if let Err(e) = sock.and_then(|s| s.bind(&SocketAddr::new(b, 0).into())) {
            return Check::fail(
                name,
                format!("bind address {b} is not usable here ({e})"),
                format!("ip addr add {b}/PREFIX dev IFACE, or fix `bind`"),
            );
        }
        how.push(format!("bind {b} is local"));
    }
    if let Some(m) = mark {
        how.push(format!("mark {m:#x}"));
    }
    if how.is_empty() {
        how.push("a plain socket through this host's routes".into());
    }
    Check::ok(name, format!("direct: {}", how.join(", ")))
}
