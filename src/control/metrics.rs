//! The Prometheus endpoint (`control.metrics_listen`): `GET /metrics` on a
//! thread of its own, with one small `mio` loop so that a slow or silent
//! client cannot hold up the others. Each connection has a deadline
//! ([`DEADLINE`]) for its whole life, reading the request line and writing
//! the answer; at most [`MAX_CONNS`] are open, the oldest goes first.
//!
//! ```text
//!  accept ─► Reading (≤ 8 KiB, until "\n") ─► Writing (the answer) ─► closed
//!               └──────── deadline passed / error / too long ──────────┘
//! ```

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::warn;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::quota::Ledger;
use crate::stats::{self, Registry};

/// The whole life of one scrape: request line in, answer out.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Connections open at once; a new one closes the oldest beyond this.
const MAX_CONNS: usize = 64;
/// Longest request head read.
const MAX_HEAD: usize = 8192;
const LISTENER: Token = Token(usize::MAX);
/// The stop wake-up (connection tokens stay below it).
const WAKER: Token = Token(usize::MAX - 1);
/// How soon a failed accept (EMFILE) is tried again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

struct Conn {
    stream: TcpStream,
    token: Token,
    deadline: Instant,
    head: Vec<u8>,
    /// The answer, once the request line is in, and how much is written.
    out: Option<(Vec<u8>, usize)>,
}

/// What one step of a connection came to.
enum Step {
    Wait,
    Close,
}

/// Serves `GET /metrics` (Prometheus text) on `addr` on a thread of its own.
pub fn spawn_metrics(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    ledger: Arc<Ledger>,
) -> io::Result<super::Stopper> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let poll = Poll::new()?;
    let stopper = super::Stopper::new(&poll, WAKER)?;
    let stop = stopper.clone();
    let data = Data { registry, ledger };
    std::thread::Builder::new().name("egressd-metrics".into()).spawn(move || {
        if let Err(e) = serve(poll, TcpListener::from_std(listener), &data, &stop) {
            warn!(target: "egressd::control", "metrics endpoint {addr} stopped: {e}");
        }
    })?;
    Ok(stopper)
}

/// What the metrics come from.
struct Data {
    registry: Arc<Registry>,
    ledger: Arc<Ledger>,
}

fn serve(
    mut poll: Poll,
    mut listener: TcpListener,
    registry: &Data,
    stop: &super::Stopper,
) -> io::Result<()> {
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: VecDeque<Conn> = VecDeque::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(64);
    let mut spare = super::Spare::new();
    // Set when accept failed for want of fds: the backlog raises no new
    // event (edge-triggered), so look again shortly.
    let mut retry = false;
    loop {
        let mut timeout =
            conns.iter().map(|c| c.deadline).min().map(|d| d.saturating_duration_since(Instant::now()));
        if retry {
            timeout = Some(timeout.map_or(ACCEPT_RETRY, |t| t.min(ACCEPT_RETRY)));
        }
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e);
        }
        if stop.stopped() {
            return Ok(());
        }
        let now = Instant::now();
        if retry {
            retry = !accept_all(&listener, &poll, (&mut conns, &mut spare), &mut next, now);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                retry = !accept_all(&listener, &poll, (&mut conns, &mut spare), &mut next, now);
                continue;
            }
            let Some(i) = conns.iter().position(|c| c.token == ev.token()) else { continue };
            if let Step::Close = step(&mut conns[i], registry) {
                let mut c = conns.remove(i).expect("found");
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
        // Past their deadline: closed, whatever they were doing.
        conns.retain_mut(|c| {
            let keep = c.deadline > now;
            if !keep {
                let _ = poll.registry().deregister(&mut c.stream);
            }
            keep
        });
    }
}

/// Accepts until the backlog is empty (true) or accept fails (false).
fn accept_all(
    l: &TcpListener,
    poll: &Poll,
    (conns, spare): (&mut VecDeque<Conn>, &mut super::Spare),
    next: &mut usize,
    now: Instant,
) -> bool {
    loop {
        match l.accept() {
            Ok((mut stream, _)) => {
                spare.refill();
                if conns.len() >= MAX_CONNS
                    && let Some(mut old) = conns.pop_front()
                {
                    let _ = poll.registry().deregister(&mut old.stream);
                }
                *next = next.wrapping_add(1) % (usize::MAX - 1);
                let token = Token(*next);
                if poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                    .is_ok()
                {
                    conns.push_back(Conn {
                        stream,
                        token,
                        deadline: now + DEADLINE,
                        head: Vec::new(),
                        out: None,
                    });
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Out of descriptors: the spare goes to this scrape.
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) && spare.give_up() => {}
            // EMFILE and friends: try again a little later.
            Err(_) => {
                spare.refill();
                return false;
            }
        }
    }
}

/// Reads the request line, then writes the answer, until either would block.
fn step(c: &mut Conn, registry: &Data) -> Step {
    let mut buf = [0u8; 1024];
    while c.out.is_none() {
        match c.stream.read(&mut buf) {
            Ok(0) => return Step::Close,
            Ok(n) => {
                c.head.extend_from_slice(&buf[..n]);
                if let Some(end) = c.head.iter().position(|&b| b == b'\n') {
                    c.out = Some((answer(&c.head[..end], registry), 0));
                } else if c.head.len() > MAX_HEAD {
                    return Step::Close;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::Close,
        }
    }
    let Some((out, pos)) = &mut c.out else { return Step::Wait };
    while *pos < out.len() {
        match c.stream.write(&out[*pos..]) {
            Ok(0) => return Step::Close,
            Ok(n) => *pos += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Step::Close,
        }
    }
    Step::Close
}

/// The HTTP answer to a request line.
fn answer(line: &[u8], data: &Data) -> Vec<u8> {
    if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ") {
        let r = &data.registry;
        let mut body = stats::prometheus(&r.total(), &r.per_tunnel(), &r.per_source());
        body.push_str(&super::quota::prometheus(&data.ledger));
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    } else {
        b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()
    }
}

/// Why `metrics_listen` lets containers read the counters, if it does: it
/// listens on every address, on a listen address (the containers' bridge),
/// or inside a source range egressd serves. `check` and `doctor` warn.
pub fn exposure(metrics: SocketAddr, settings: &crate::config::Settings) -> Option<String> {
    let ip = crate::wire::sockaddr::unmapped(metrics).ip();
    let why = if ip.is_unspecified() {
        format!("{ip} is every address of the host, the containers' bridge included")
    } else if settings.listen.iter().any(|l| l.ip() == ip) {
        format!("{ip} is a listen address, on the containers' bridge")
    } else if let Some(c) = (settings.intercept.sources.iter().copied())
        .chain(settings.routes.iter().map(|(c, _)| c))
        .find(|c| c.len() > 0 && c.contains(ip))
    {
        format!("{ip} is inside {c}, a container network")
    } else {
        return None;
    };
    Some(format!(
        "control.metrics_listen {metrics}: {why}, so containers can read every source's counters; \
         listen on 127.0.0.1 or a management address instead"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream as StdStream;

    #[test]
    fn a_silent_client_does_not_hold_up_a_scrape() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _t = spawn_metrics(listener, Arc::default(), Arc::default()).unwrap();
        // Three clients that connect and say nothing (before: 2 s each, in turn).
        let silent: Vec<_> = (0..3).map(|_| StdStream::connect(addr).unwrap()).collect();
        let t0 = Instant::now();
        let mut c = StdStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        let took = t0.elapsed();
        assert!(got.starts_with("HTTP/1.0 200 OK"), "{got}");
        assert!(took < Duration::from_millis(500), "a scrape took {took:?} behind silent clients");
        // The silent ones are closed at their deadline.
        for mut s in silent {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let t = Instant::now();
            assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0);
            assert!(t.elapsed() < DEADLINE + Duration::from_secs(1));
        }
        let mut c = StdStream::connect(addr).unwrap();
        c.write_all(b"GET /nothing HTTP/1.0\r\n\r\n").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.0 404"), "{got}");
    }

    #[test]
    fn metrics_where_containers_reach_them_warn() {
        let text = r#"(listen: ["10.8.0.1:10900", "[fd08::1]:10900"], tunnels: { "a": Direct() },
            routes: [(source: "10.8.0.10", tunnel: "a")], intercept: (sources: ["10.8.0.0/24"]))"#;
        let s = crate::config::Settings::parse("t.ron", text).unwrap();
        let w = |a: &str| exposure(a.parse().unwrap(), &s);
        assert!(w("0.0.0.0:9100").unwrap().contains("every address"));
        assert!(w("[::]:9100").unwrap().contains("every address"));
        assert!(w("10.8.0.1:9100").unwrap().contains("listen address"));
        assert!(w("[fd08::1]:9100").unwrap().contains("listen address"));
        assert!(w("10.8.0.200:9100").unwrap().contains("inside 10.8.0.0/24"));
        assert_eq!(w("127.0.0.1:9100"), None);
        assert_eq!(w("192.0.2.10:9100"), None);
    }
}
