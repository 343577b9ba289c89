//! Whether a non-blocking connect to an upstream has ended, on a readiness
//! event of its socket: one reading for every connection a worker opens
//! (TCP flows, warm-pool refills, UDP ASSOCIATE control connections, DNS
//! over TCP).
//!
//! ```text
//!  event ─► writable, error or hang-up? ──no──► Pending (the next event tells)
//!                 │ yes
//!                 ▼
//!           SO_ERROR set? ──yes──► Failed(e)
//!                 │ no
//!                 ▼
//!           writable, no error flag? ──yes──► Connected
//!                 │ no
//!                 ▼
//!           getpeername: ok ──► Connected; NotConnected ──► Pending; other ──► Unknown(e)
//! ```

use std::io::{self, ErrorKind};

use mio::event::Event;
use mio::net::TcpStream;

/// Where a connect stands after an event.
pub(super) enum Connect {
    /// Still under way: wait for the next event.
    Pending,
    Connected,
    /// The connect failed: the socket's error (SO_ERROR), or the error
    /// reading it.
    Failed(io::Error),
    /// The socket cannot say whether it is connected (getpeername failed
    /// otherwise than with NotConnected).
    Unknown(io::Error),
}

/// Reads where `sock`'s connect stands after `ev`. Writable with no error
/// is connected; only other wake-ups (hang-up, error flags) need the
/// getpeername to tell.
pub(super) fn connect_result(sock: &TcpStream, ev: &Event) -> Connect {
    if !(ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
        return Connect::Pending;
    }
    match sock.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return Connect::Failed(e),
    }
    if ev.is_writable() && !ev.is_error() {
        return Connect::Connected;
    }
    match sock.peer_addr() {
        Ok(_) => Connect::Connected,
        Err(e) if e.kind() == ErrorKind::NotConnected => Connect::Pending,
        Err(e) => Connect::Unknown(e),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};
    use std::time::Duration;

    use mio::{Events, Interest, Poll, Token};

    use super::*;

    /// Where a connect to `addr` ends, by the first event that is not
    /// `Pending` (bounded: 5 s).
    fn ending(addr: SocketAddr) -> io::Result<Connect> {
        let mut poll = Poll::new()?;
        let mut sock = TcpStream::connect(addr)?;
        poll.registry().register(&mut sock, Token(0), Interest::READABLE | Interest::WRITABLE)?;
        let mut events = Events::with_capacity(4);
        for _ in 0..50 {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            for ev in &events {
                match connect_result(&sock, ev) {
                    Connect::Pending => {}
                    c => return Ok(c),
                }
            }
        }
        panic!("the connect to {addr} did not end within 5 s");
    }

    #[test]
    fn a_connect_to_a_listener_is_connected() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(ending(l.local_addr().unwrap()), Ok(Connect::Connected)));
    }

    #[test]
    fn a_connect_to_a_closed_port_failed() {
        // A port just given back: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        match ending(addr) {
            Ok(Connect::Failed(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
            // Refused before connect returned: nothing for the event to tell.
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
            Ok(Connect::Connected) => panic!("connected to a closed port"),
            Ok(Connect::Pending | Connect::Unknown(_)) => panic!("not the connect's error"),
        }
    }
}
