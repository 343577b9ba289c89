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
//! message (microsocks) never answers the request: after the timeout,
//! `No`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
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
    let mut h = Socks5Handshake::pipelined(TARGET, auth);
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.write_all(h.transmit()).map_err(|e| format!("write to {server}: {e}"))?;
    let n = h.transmit().len();
    h.sent(n);
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Pipelining::No);
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(Pipelining::No);
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

/// A pool to probe, with its server and credentials.
pub type Job = (Arc<TunnelPool>, SocketAddr, Option<Credentials>);

/// Probes each pool's server on background threads (a few at a time) and
/// records what it found; a probe that cannot tell leaves `Unknown`.
pub fn spawn(jobs: Vec<Job>) {
    const PARALLEL: usize = 8;
    if jobs.is_empty() {
        return;
    }
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    for _ in 0..PARALLEL.min(jobs.lock().map(|j| j.len()).unwrap_or(1)) {
        let jobs = Arc::clone(&jobs);
        let spawned = std::thread::Builder::new().name("egressd-probe".into()).spawn(move || {
            loop {
                let job = jobs.lock().ok().and_then(|mut j| j.pop());
                let Some((pool, server, auth)) = job else { return };
                match pipelining(server, auth.as_ref(), TIMEOUT) {
                    Ok(p) => {
                        log::info!(target: "egressd::pool", "tunnel \"{}\": pipelined handshakes {}", pool.name,
                            if p == Pipelining::Yes { "work (one flight)" } else { "are not taken: one message at a time" });
                        pool.set_pipelining(p);
                    }
                    Err(e) => log::info!(target: "egressd::pool", "tunnel \"{}\": pipelining probe: {e}; handshakes wait for each answer", pool.name),
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!(target: "egressd::pool", "cannot start the pipelining probe: {e}");
            return;
        }
    }
}
