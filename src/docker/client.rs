//! The thread that follows the Docker Engine API over its Unix socket:
//! list the labelled containers, follow `/events`, resync on every event
//! that can change a container's addresses, and reconnect with backoff when
//! the socket goes away (the label routes stay meanwhile).
//!
//! Synchronous and bounded: a response head is at most 16 KiB, the
//! container list 16 MiB, one event 1 MiB; anything else ends the session
//! (and the next one starts from a full resync).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::Labels;
use super::model::{self, Container};
use crate::config::DockerSettings;
use crate::front::Live;
use crate::route::Cidr;
use crate::stats::Counters;
use crate::wire::Parse;
use crate::wire::http1::{self, Body, Framing};
use crate::worker::{Command, WorkerHandle};

const MAX_LIST: usize = 16 << 20;
const MAX_EVENT: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a reset waits for room on a worker's command queue.
const RESET_WAIT: Duration = Duration::from_secs(5);

/// Follows Docker on a thread of its own until the process ends.
pub fn spawn(
    d: DockerSettings,
    live: Arc<Live>,
    workers: Vec<WorkerHandle>,
    counters: Arc<Counters>,
) -> io::Result<JoinHandle<()>> {
    let mut f = Follower { d, live, workers, counters, warned: HashSet::new() };
    std::thread::Builder::new().name("egressd-docker".into()).spawn(move || f.run())
}

struct Follower {
    d: DockerSettings,
    live: Arc<Live>,
    workers: Vec<WorkerHandle>,
    counters: Arc<Counters>,
    /// (container id, tunnel) already reported as naming no tunnel.
    warned: HashSet<(String, String)>,
}

impl Follower {
    fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut ever = false;
        let mut said_down = false;
        loop {
            let started = Instant::now();
            match self.session(&mut ever) {
                Ok(()) => {}
                Err(e) if !said_down => {
                    if ever {
                        warn!(target: "egressd::docker",
                            "docker: {e}; keeping the {} label routes, reconnecting", self.live.load().labels.routes().count());
                    } else {
                        warn!(target: "egressd::docker",
                            "docker: {e}; running with the config routes only until {} answers", self.d.socket.display());
                    }
                    said_down = true;
                }
                Err(e) => debug!(target: "egressd::docker", "docker: {e}"),
            }
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
                said_down = false;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's life: follow events, resync at start and on each
    /// event that matters. Returns when the socket fails.
    fn session(&mut self, ever: &mut bool) -> Result<(), String> {
        // The event stream first, so that nothing between the list and the
        // stream is missed.
        let filters = r#"{"type":["container","network"]}"#;
        let mut events = self.get(&format!("/events?filters={}", encode(filters)), None)?;
        self.resync()?;
        if !*ever {
            info!(target: "egressd::docker", "docker: following {} (label {})", self.d.socket.display(), self.d.label);
        }
        *ever = true;
        let mut line: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut out: Vec<u8> = Vec::new();
        loop {
            let n = match events.stream.read(&mut buf) {
                Ok(0) => return Err("the event stream ended (dockerd restarting?)".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading events: {e}")),
            };
            events.take(&buf[..n], &mut out)?;
            let mut relevant = false;
            for &b in out.iter() {
                if b == b'\n' {
                    relevant |= model::event_matters(&line);
                    line.clear();
                } else if line.len() < MAX_EVENT {
                    line.push(b);
                } else {
                    return Err(format!("an event longer than {MAX_EVENT} bytes"));
                }
            }
            out.clear();
            if relevant {
                self.resync()?;
            }
            if events.body.is_done() {
                return Err("the event stream ended".into());
            }
        }
    }

    /// Lists the labelled containers and makes the label routes match.
    fn resync(&mut self) -> Result<(), String> {
        let containers = list(&self.d)?;
        self.apply(&containers);
        Ok(())
    }

    fn apply(&mut self, containers: &[Container]) {
        let shared = self.live.load();
        let current: Vec<model::LabelRoute> = shared.labels.routes().cloned().collect();
        let sync = model::sync(&current, containers);
        for c in containers {
            if shared.settings.tunnel_id(&c.tunnel).is_none()
                && self.warned.insert((c.id.clone(), c.tunnel.clone()))
            {
                Counters::inc(&self.counters.docker_unknown_tunnel);
                warn!(target: "egressd::docker",
                    "container {} ({}): label {}={:?} names no tunnel of the config; it is rejected (never sent through another tunnel)",
                    c.name, c.id.get(..12).unwrap_or(&c.id), self.d.label, c.tunnel);
            }
        }
        if sync.added.is_empty() && sync.reset.is_empty() {
            return;
        }
        let _ = self
            .live
            .update(|cur| Ok::<_, ()>(cur.with_labels(Labels::new(sync.routes.clone(), &cur.settings))));
        for r in &sync.added {
            info!(target: "egressd::docker", "route {} -> {} (container {}, {})", r.addr, r.tunnel, r.name, r.short_id());
        }
        for &addr in &sync.reset {
            info!(target: "egressd::docker", "route {addr} removed or changed: its flows are reset");
            self.reset(addr);
        }
        Counters::set(&self.counters.docker_label_routes, sync.routes.len() as u64);
    }

    /// Ends the address's flows on every worker, on their command queues
    /// (never dropped behind a full hand-off queue): a later owner of the
    /// address must never inherit them.
    fn reset(&self, addr: IpAddr) {
        let source = Cidr::host(addr);
        let missed =
            self.workers.iter().filter(|w| !w.command(Command::ResetSource(source), RESET_WAIT)).count();
        if missed > 0 {
            warn!(target: "egressd::docker", "route {addr}: {missed} worker(s) did not take the reset within {RESET_WAIT:?}");
        }
    }

    fn get(&self, path: &str, timeout: Option<Duration>) -> Result<Conn, String> {
        get(&self.d, path, timeout)
    }
}

/// The running containers that carry the label (also for `doctor`).
pub fn list(d: &DockerSettings) -> Result<Vec<Container>, String> {
    let filters = format!(r#"{{"label":["{}"]}}"#, d.label);
    let body = get_body(d, &format!("/containers/json?filters={}", encode(&filters)))?;
    model::parse_list(&body, &d.label)
}

/// A GET whose whole body is read (bounded).
fn get_body(d: &DockerSettings, path: &str) -> Result<Vec<u8>, String> {
    let mut c = get(d, path, Some(IO_TIMEOUT))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match c.stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("GET {path}: {e}")),
        };
        if n == 0 {
            // Closed: the end only for a body framed by the close.
            return if c.head_done && (c.body.is_done() || c.to_eof) {
                Ok(out)
            } else {
                Err(format!("GET {path}: connection closed early"))
            };
        }
        c.take(&buf[..n], &mut out)?;
        if out.len() > MAX_LIST {
            return Err(format!("GET {path}: answer larger than {MAX_LIST} bytes"));
        }
        if c.head_done && c.body.is_done() {
            return Ok(out);
        }
    }
}

/// Connects and sends a GET for `path`.
fn get(d: &DockerSettings, path: &str, timeout: Option<Duration>) -> Result<Conn, String> {
    let mut stream = UnixStream::connect(&d.socket)
        .map_err(|e| format!("cannot connect to {}: {e}", d.socket.display()))?;
    stream.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: egressd\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).map_err(|e| format!("GET {path}: {e}"))?;
    Ok(Conn {
        stream,
        what: format!("GET {path}"),
        pending: Vec::new(),
        head_done: false,
        body: Body::new(Framing::Length(0)),
        to_eof: false,
    })
}

struct Conn {
    stream: UnixStream,
    /// `GET /path`, for errors.
    what: String,
    pending: Vec<u8>,
    head_done: bool,
    body: Body,
    /// The body ends when the connection closes.
    to_eof: bool,
}

impl Conn {
    /// Takes bytes read from the socket: the head first (its status must be
    /// 200), then the body's payload, appended to `out`.
    fn take(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let what = &self.what;
        if self.head_done {
            return self.body.feed(input, out).map(|_| ()).map_err(|e| format!("{what}: {e}"));
        }
        self.pending.extend_from_slice(input);
        match http1::parse_head(&self.pending).map_err(|e| format!("{what}: {e}"))? {
            Parse::Incomplete => Ok(()),
            Parse::Done(h, used) => {
                if h.status != 200 {
                    return Err(format!("{what} answered {}", h.status));
                }
                self.body = Body::new(h.framing);
                self.head_done = true;
                self.to_eof = h.framing == Framing::ToEof;
                let rest = self.pending.split_off(used);
                self.body.feed(&rest, out).map(|_| ()).map_err(|e| format!("{what}: {e}"))
            }
        }
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_filters() {
        assert_eq!(
            super::encode(r#"{"label":["egressd.tunnel"]}"#),
            "%7B%22label%22%3A%5B%22egressd.tunnel%22%5D%7D"
        );
    }
}
