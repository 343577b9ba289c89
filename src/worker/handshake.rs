//! Opening a tunnel: the non-blocking connect to its server with the
//! tunnel's socket options, and the upstream handshake driven on readiness
//! events (the state machines are `crate::upstream`'s; this writes their
//! bytes and reads the server's), with a flow's early client bytes sent
//! right behind a pipelined request. Used by TCP flows, UDP associations,
//! DNS-over-TCP connections and the warm pools alike.

use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use socket2::{Domain, Socket, Type};

use crate::config::{Credentials, Tunnel, TunnelKind};
use crate::upstream::{Handshake, HandshakeError, Progress};

/// Client bytes held during a handshake at most (then the client waits).
/// All flows of a worker together hold at most `tcp.early_bytes_per_worker`.
pub(super) const EARLY_MAX: usize = 16 * 1024;

pub(super) fn connect_error(t: &Tunnel, e: io::Error) -> String {
    match t.kind.server() {
        Some(s) => format!("cannot connect to the tunnel server {s}: {e}"),
        None => format!("cannot connect: {e}"),
    }
}

pub(super) fn handshake_error(t: &Tunnel, e: String) -> String {
    match t.kind.server() {
        Some(s) => format!("{e} (server {s})"),
        None => e,
    }
}

/// The credentials a tunnel's handshake offers.
pub(super) fn auth_of(t: &Tunnel) -> Option<&Credentials> {
    match &t.kind {
        TunnelKind::Socks5 { auth, .. } | TunnelKind::HttpConnect { auth, .. } => auth.as_ref(),
        TunnelKind::Direct { .. } => None,
    }
}

/// How far a handshake got on this readiness event.
pub(super) enum Drive {
    /// Waiting for the server (or for room to write).
    Pending,
    /// Open; bytes of `scratch` in this range arrived after the handshake.
    Done(std::ops::Range<usize>),
    /// Why; whether it was the credentials the server rejected; whether
    /// the connection was lost with no answer (closed, reset).
    Failed(String, bool, bool),
}

/// Sends what the handshake holds and feeds it what the server sent, until
/// either would block or the handshake ends. `may_read`: the event says the
/// server may have sent something. When it does not, or a short read has
/// just drained the socket, the server's next bytes come with an event of
/// their own (edge-triggered epoll reports every arrival), so the read that
/// could only find nothing is skipped.
pub(super) fn drive_handshake(
    s: &mut TcpStream,
    hs: &mut Handshake,
    auth: Option<&Credentials>,
    scratch: &mut [u8],
    may_read: bool,
) -> Drive {
    drive_handshake_then(s, hs, auth, scratch, may_read, &[], &mut 0)
}

/// [`drive_handshake`], with `early[*early_sent..]`: client bytes sent right
/// behind the request, in the same write (one segment).
pub(super) fn drive_handshake_then(
    s: &mut TcpStream,
    hs: &mut Handshake,
    auth: Option<&Credentials>,
    scratch: &mut [u8],
    mut may_read: bool,
    early: &[u8],
    early_sent: &mut usize,
) -> Drive {
    loop {
        while !hs.transmit().is_empty() {
            let behind = early.get(*early_sent..).unwrap_or_default();
            let wrote = if hs.request_queued() && !behind.is_empty() {
                s.write_vectored(&[IoSlice::new(hs.transmit()), IoSlice::new(behind)])
            } else {
                s.write(hs.transmit())
            };
            match wrote {
                Ok(n) => {
                    let head = n.min(hs.transmit().len());
                    hs.sent(head);
                    *early_sent += n - head;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Drive::Pending,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Drive::Failed(format!("write to server: {e}"), false, true),
            }
        }
        if !may_read {
            return Drive::Pending;
        }
        let n = match s.read(scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Drive::Pending,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Drive::Failed(format!("read from server: {e}"), false, true),
        };
        // A short read took all the socket had (handshakes carry no urgent data).
        may_read = n == scratch.len();
        match hs.on_input(&scratch[..n], auth) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Connected { consumed }) => return Drive::Done(consumed..n),
            Err(e) => return Drive::Failed(e.to_string(), e.is_auth_rejected(), e == HandshakeError::Closed),
        }
    }
}

/// Reads what the client sent before the tunnel opened, up to EARLY_MAX
/// and at most `budget` bytes (the worker's early-byte budget left). How
/// many bytes it read, and whether the budget stopped it with the client
/// perhaps still readable (its edge is spent: the caller reads again later).
pub(super) fn read_early(
    c: &mut TcpStream,
    early: &mut Vec<u8>,
    scratch: &mut [u8],
    budget: usize,
) -> io::Result<(usize, bool)> {
    let mut n = 0;
    loop {
        let room = EARLY_MAX.saturating_sub(early.len()).min(scratch.len());
        if room == 0 {
            return Ok((n, false));
        }
        let room = room.min(budget - n);
        if room == 0 {
            return Ok((n, true));
        }
        match c.read(&mut scratch[..room]) {
            Ok(0) => return Ok((n, false)),
            Ok(m) => {
                // Exactly what is held, so the budget counts the memory.
                early.reserve_exact(m);
                early.extend_from_slice(&scratch[..m]);
                n += m;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((n, false)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes early bytes behind the request; how many went.
pub(super) fn write_early(s: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < bytes.len() {
        match s.write(&bytes[n..]) {
            Ok(m) => n += m,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A non-blocking connect to `target` with the tunnel's socket options.
pub(super) fn connect(target: SocketAddr, kind: &TunnelKind) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(target), Type::STREAM.nonblocking().cloexec(), None)?;
    // Urgent bytes from the server stay in the stream (see front::tcp_listener).
    s.set_out_of_band_inline(true)?;
    if let TunnelKind::Direct { interface, mark, bind } = kind {
        if let Some(i) = interface {
            s.bind_device(Some(i.as_bytes()))?;
        }
        if let Some(m) = mark {
            s.set_mark(*m)?;
        }
        if let Some(ip) = bind {
            s.bind(&SocketAddr::new(*ip, 0).into())?;
        }
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}
