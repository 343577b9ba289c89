//! Upstream handshakes as sans-IO state machines: bytes in, bytes out.
//!
//! The worker owns the socket. It sends what [`Handshake::transmit`] holds,
//! calls [`Handshake::sent`] with how much went out, and feeds whatever it
//! reads to [`Handshake::on_input`], which says how many of those bytes
//! belonged to the handshake. Bytes after the end of the handshake are the
//! first bytes of the relay and stay with the worker.

pub mod socks5;

use std::fmt;

use crate::config::Credentials;
pub use socks5::Socks5Connect;

/// What a handshake step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; send what `transmit` holds, then read more.
    Continue,
    /// The tunnel is open. The first `consumed` bytes of the input were the
    /// handshake's; the rest belong to the client.
    Connected { consumed: usize },
}

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    Socks5(crate::wire::socks5::Socks5Error),
    /// The server closed the connection mid-handshake.
    Closed,
    /// The server sent more than a handshake may hold, or bytes out of turn.
    Unexpected,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Socks5(e) => write!(f, "SOCKS5: {e}"),
            HandshakeError::Closed => f.write_str("server closed the connection during the handshake"),
            HandshakeError::Unexpected => f.write_str("server sent bytes out of turn during the handshake"),
        }
    }
}

impl From<crate::wire::socks5::Socks5Error> for HandshakeError {
    fn from(e: crate::wire::socks5::Socks5Error) -> Self {
        HandshakeError::Socks5(e)
    }
}

/// A handshake of any tunnel kind that has one.
#[derive(Debug)]
pub enum Handshake {
    Socks5(Socks5Connect),
}

impl Handshake {
    pub fn transmit(&self) -> &[u8] {
        match self {
            Handshake::Socks5(h) => h.transmit(),
        }
    }

    pub fn sent(&mut self, n: usize) {
        match self {
            Handshake::Socks5(h) => h.sent(n),
        }
    }

    pub fn on_input(&mut self, data: &[u8], auth: Option<&Credentials>) -> Result<Progress, HandshakeError> {
        match self {
            Handshake::Socks5(h) => h.on_input(data, auth),
        }
    }
}
