//! Does a SOCKS5 server take a pipelined handshake? Asked once per tunnel
//! at start and on reload, in the background, so that no container's flow
//! waits for a timeout to find out: until it is known, handshakes wait for
//! each answer.
//!
//! The probe sends greeting, credentials and a CONNECT in one write and
//! waits for the answer to the CONNECT. Any reply — success or refusal —
//! shows the server read the request that followed its greeting in the same
//! segment. The target is `0.0.0.0:0`, which no server can reach, so the
//! probe opens nothing beyond the exit. A server that drops bytes behind a
//! message (microsocks) answers the greeting and never the request: after
//! the timeout, `No`. No answer at all tells nothing: asked again later.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Pipelining, TunnelPool};
use crate::config::Credentials;
use crate::upstream::{HandshakeError, Progress, Socks5Handshake};
use crate::wire::socks5::Socks5Error;

/// How long the probe waits for the answers.
pub const TIMEOUT: Duration = Duration::from_secs(3);
const TARGET: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// What one probe of `server` found; `Err` when it could not tell (no
/// connection, credentials rejected).
pub fn pipelining(
    server: SocketAddr,
    auth: Option<&Credentials>,
    timeout: Duration,
) -> Result<Pipelining, String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&server, timeout)
        .map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut h = Socks5Handshake::pipelined(crate::wire::socks5::CMD_CONNECT, TARGET, auth);
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.write_all(h.transmit()).map_err(|e| format!("write to {server}: {e}"))?;
    let n = h.transmit().len();
    h.sent(n);
    let mut buf = [0u8; 512];
    // Silence after the greeting was answered is the answer (microsocks
    // drops the rest of the segment); silence before it tells nothing.
    let silent = |h: &Socks5Handshake| {
        if h.greeted() {
            Ok(Pipelining::No)
        } else {
            Err(format!("{server}: no answer to the greeting within {} s", timeout.as_secs()))
        }
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return silent(&h);
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return silent(&h);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Reset after our flight: it did not take it.
            Err(_) => return Ok(Pipelining::No),
        };
        match h.on_input(&buf[..n], auth) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Connected { .. }) => return Ok(Pipelining::Yes),
            Err(HandshakeError::Socks5(Socks5Error::Refused(_))) => return Ok(Pipelining::Yes),
            Err(e) if e.is_auth_rejected() => return Err(format!("{server}: {e}")),
            Err(_) => return Ok(Pipelining::No),
        }
    }
}

/// Waits after a probe that could not tell (zero: give up until a reload).
const RETRY: [Duration; 4] =
    [Duration::from_secs(5), Duration::from_secs(15), Duration::from_secs(60), Duration::ZERO];

/// Probes each pool's server on background threads (a few at a time) and
/// records what it found; a probe that cannot tell leaves `Unknown`. A pool
/// already being probed is left to that probe, which always asks the
/// server the pool has now and records an answer only if the pool's server
/// and credentials did not change while it asked (a reload may change them).
pub fn spawn(pools: Vec<Arc<TunnelPool>>) {
    const PARALLEL: usize = 8;
    let jobs: Vec<_> = pools.into_iter().filter(|p| !p.probing.swap(true, Ordering::AcqRel)).collect();
    if jobs.is_empty() {
        return;
    }
    let n = PARALLEL.min(jobs.len());
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    for _ in 0..n {
        let mine = Arc::clone(&jobs);
        let spawned = std::thread::Builder::new().name("egressd-probe".into()).spawn(move || {
            loop {
                let job = mine.lock().ok().and_then(|mut j| j.pop());
                let Some(pool) = job else { return };
                probe_pool(&pool);
                pool.probing.store(false, Ordering::Release);
            }
        });
        if let Err(e) = spawned {
            log::warn!(target: "egressd::pool", "cannot start the pipelining probe: {e}");
            // Those not taken may be probed at the next reload.
            for p in jobs.lock().map(|mut j| std::mem::take(&mut *j)).unwrap_or_default() {
                p.probing.store(false, Ordering::Release);
            }
            return;
        }
    }
}

/// Asks until the pool's pipelining is known or the tries are spent. A probe
/// that could not tell is tried again a little later (a server still
/// starting, a loaded host).
fn probe_pool(pool: &TunnelPool) {
    let mut attempt = 0;
    while attempt < RETRY.len() {
        if pool.pipelining() != Pipelining::Unknown {
            return; // known, or `pipeline: false` now
        }
        let (server, auth) = {
            let i = pool.lock();
            (i.server(), i.auth().cloned())
        };
        let found = pipelining(server, auth.as_ref(), TIMEOUT);
        let same = {
            let i = pool.lock();
            i.server() == server && i.auth() == auth.as_ref()
        };
        if !same {
            continue; // asked the old server: ask the new one
        }
        let wait = RETRY[attempt];
        attempt += 1;
        match found {
            Ok(p) => {
                log::info!(target: "egressd::pool", "tunnel \"{}\": pipelined handshakes {}", pool.name,
                    if p == Pipelining::Yes { "work (one flight)" } else { "are not taken: one message at a time" });
                pool.set_pipelining(p);
                return;
            }
            Err(e) => log::info!(target: "egressd::pool",
                "tunnel \"{}\": pipelining probe {attempt}: {e}; handshakes wait for each answer{}", pool.name,
                if wait.is_zero() { "" } else { " (asking again later)" }),
        }
        if wait.is_zero() {
            return;
        }
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server on loopback: reads the probe's flight, then
    /// writes `answer` and holds the connection open for a while.
    fn server(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer);
            std::thread::sleep(Duration::from_millis(800));
        });
        addr
    }

    #[test]
    fn any_answer_to_the_request_means_pipelining_works() {
        let t = Duration::from_millis(400);
        // A refusal of the unreachable target still answers the request.
        let refused = server(&[5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(pipelining(refused, None, t), Ok(Pipelining::Yes));
        // microsocks: the greeting answered, the rest of the flight dropped.
        let greeting_only = server(&[5, 0]);
        assert_eq!(pipelining(greeting_only, None, t), Ok(Pipelining::No));
        // Nothing at all: cannot tell.
        let silent = server(&[]);
        assert!(pipelining(silent, None, t).unwrap_err().contains("no answer to the greeting"));
    }
}
