//! One HTTP/1.1 GET to the Docker Engine API over its Unix socket, every
//! step bounded in time: the connect (a listener that stopped accepting
//! fills its backlog, and a plain connect would then wait for ever), the
//! request's write, and each read, against a deadline the caller sets.
//!
//! Bounded in size too: a response head is at most 16 KiB
//! ([`http1::MAX_HEAD`]), a whole body (the container list, an inspect
//! answer) [`MAX_LIST`];
//! the event stream's body is the caller's to bound.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::client::{Stop, Watch};
use super::model::{self, Container};
use crate::config::DockerSettings;
use crate::wire::Parse;
use crate::wire::http1::{self, Body, Framing};

pub const MAX_LIST: usize = 16 << 20;
/// How long `doctor` waits for the container list.
const DOCTOR_WAIT: Duration = Duration::from_secs(10);

/// The running containers that carry the label (also for `doctor`).
pub fn list(d: &DockerSettings) -> Result<Vec<Container>, String> {
    list_by(d, Instant::now() + DOCTOR_WAIT, None)
}

/// The list, complete by `deadline` or an error (a dockerd that hangs must
/// not hang the follower: the session ends and reconnects).
pub(super) fn list_by(
    d: &DockerSettings,
    deadline: Instant,
    stop: Option<&Arc<Stop>>,
) -> Result<Vec<Container>, String> {
    let filters = format!(r#"{{"label":["{}"]}}"#, d.label);
    let path = format!("/containers/json?filters={}", encode(&filters));
    let mut c = get(&d.socket, &path, deadline, stop)?;
    let body = c.read_body(deadline)?;
    model::parse_list(&body, &d.label, &d.class_label)
}

/// What Docker says of one container now: `None` when it does not run,
/// lacks the label, or is gone (404). One request, complete by `deadline`.
pub(super) fn inspect(
    d: &DockerSettings,
    id: &str,
    deadline: Instant,
    stop: Option<&Arc<Stop>>,
) -> Result<Option<Container>, String> {
    let mut c = get(&d.socket, &format!("/containers/{}/json", encode(id)), deadline, stop)?;
    c.missing_ok = true;
    let body = c.read_body(deadline)?;
    if c.missing {
        return Ok(None);
    }
    model::parse_inspect(&body, &d.label, &d.class_label)
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Got {
    /// Payload bytes were appended (possibly none: framing only).
    Data,
    /// The deadline passed first.
    TimedOut,
    /// The peer closed the connection.
    Closed,
}

pub(super) struct Conn {
    stream: UnixStream,
    /// `GET /path`, for errors.
    what: String,
    pending: Vec<u8>,
    head_done: bool,
    body: Body,
    /// The body ends when the connection closes.
    to_eof: bool,
    /// A 404 is an answer (the thing asked about does not exist), not an error.
    missing_ok: bool,
    /// The answer was that 404.
    missing: bool,
    buf: Vec<u8>,
    /// Lets a stop shut the socket down; dropped with the connection.
    _watch: Option<Watch>,
}

/// Connects (by `deadline`) and sends a GET for `path`.
pub(super) fn get(
    socket: &Path,
    path: &str,
    deadline: Instant,
    stop: Option<&Arc<Stop>>,
) -> Result<Conn, String> {
    let what = format!("GET {}", path.split('?').next().unwrap_or(path));
    let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream =
        connect(socket, wait).map_err(|e| format!("cannot connect to {}: {}", socket.display(), says(&e)))?;
    let watch = match stop {
        Some(s) => Some(s.watch(&stream)?),
        None => None,
    };
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: egressd\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).map_err(|e| format!("{what}: {}", says(&e)))?;
    Ok(Conn {
        stream,
        what,
        pending: Vec::new(),
        head_done: false,
        body: Body::new(Framing::Length(0)),
        to_eof: false,
        missing_ok: false,
        missing: false,
        buf: vec![0u8; 64 * 1024],
        _watch: watch,
    })
}

/// A Unix stream socket whose connect and writes give up after `wait`
/// (SO_SNDTIMEO bounds a connect to a full backlog as well as writes).
fn connect(path: &Path, wait: Duration) -> io::Result<UnixStream> {
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    s.set_write_timeout(Some(wait))?;
    s.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(OwnedFd::from(s)))
}

/// An I/O error as the log says it (a timeout by that name).
fn says(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

impl Conn {
    /// Reads until the response head is in (its status must be 200);
    /// returns the body's payload that came with it.
    pub fn read_head(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while !self.head_done {
            match self.read(deadline, &mut out)? {
                Got::Data => {}
                Got::TimedOut => return Err(format!("{}: no answer by the deadline", self.what)),
                Got::Closed => return Err(format!("{}: connection closed before the answer", self.what)),
            }
        }
        Ok(out)
    }

    /// Reads once, waiting until `deadline` at most, and appends the body's
    /// payload to `out`.
    pub fn read(&mut self, deadline: Instant, out: &mut Vec<u8>) -> Result<Got, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Got::TimedOut);
            }
            self.stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.stream.read(&mut buf);
            let got = match r {
                Ok(0) => Ok(Got::Closed),
                Ok(n) => self.take(buf.get(..n).unwrap_or_default(), out).map(|()| Got::Data),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    Ok(Got::TimedOut)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.buf = buf;
                    continue;
                }
                Err(e) => Err(format!("{}: {e}", self.what)),
            };
            self.buf = buf;
            return got;
        }
    }

    /// Whether the body has ended by its framing.
    pub fn body_done(&self) -> bool {
        self.head_done && self.body.is_done()
    }

    /// The whole body, by `deadline` and at most [`MAX_LIST`] bytes.
    fn read_body(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            match self.read(deadline, &mut out)? {
                Got::Data => {}
                Got::TimedOut => return Err(format!("{}: no complete answer by the deadline", self.what)),
                // Closed: the end only for a body framed by the close.
                Got::Closed if self.head_done && (self.body.is_done() || self.to_eof) => return Ok(out),
                Got::Closed => return Err(format!("{}: connection closed early", self.what)),
            }
            if out.len() > MAX_LIST {
                return Err(format!("{}: answer larger than {MAX_LIST} bytes", self.what));
            }
            if self.body_done() {
                return Ok(out);
            }
        }
    }

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
                self.missing = h.status == 404 && self.missing_ok;
                if h.status != 200 && !self.missing {
                    return Err(format!("{what} answered {}", h.status));
                }
                self.body = Body::new(h.framing);
                self.head_done = true;
                self.to_eof = h.framing == Framing::ToEof;
                let rest = self.pending.split_off(used.min(self.pending.len()));
                self.pending = Vec::new();
                self.body.feed(&rest, out).map(|_| ()).map_err(|e| format!("{what}: {e}"))
            }
        }
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(super) fn encode(s: &str) -> String {
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
