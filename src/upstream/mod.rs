//! Upstream handshakes as sans-IO state machines: bytes in, bytes out.
//!
//! The worker owns the socket. It sends what [`Handshake::transmit`] holds,
//! calls [`Handshake::sent`] with how much went out, and feeds whatever it
//! reads to [`Handshake::on_input`], which says how many of those bytes
//! belonged to the handshake. Bytes after the end of the handshake are the
//! first bytes of the relay and stay with the worker.

pub mod http;
pub mod socks5;

use std::fmt;

use crate::config::Credentials;
pub use http::HttpConnect;
pub use socks5::Socks5Handshake;

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
    Http(crate::wire::http::HttpError),
    /// The server closed the connection mid-handshake.
    Closed,
    /// The server sent more than a handshake may hold, or bytes out of turn.
    Unexpected,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Socks5(e) => write!(f, "SOCKS5: {e}"),
            HandshakeError::Http(e) => write!(f, "HTTP CONNECT: {e}"),
            HandshakeError::Closed => f.write_str("server closed the connection during the handshake"),
            HandshakeError::Unexpected => f.write_str("server sent bytes out of turn during the handshake"),
        }
    }
}

impl HandshakeError {
    /// The server rejected our credentials (SOCKS5 auth status, HTTP 401/407).
    pub fn is_auth_rejected(&self) -> bool {
        use crate::wire::http::HttpError;
        use crate::wire::socks5::Socks5Error;
        matches!(
            self,
            HandshakeError::Socks5(Socks5Error::AuthRejected(_))
                | HandshakeError::Http(HttpError::Status(401 | 407))
        )
    }
}

impl From<crate::wire::socks5::Socks5Error> for HandshakeError {
    fn from(e: crate::wire::socks5::Socks5Error) -> Self {
        HandshakeError::Socks5(e)
    }
}

/// The handshake that opens a TCP tunnel to `dst`, for kinds that have one.
pub fn for_tcp(kind: &crate::config::TunnelKind, dst: std::net::SocketAddr) -> Option<Handshake> {
    use crate::config::TunnelKind;
    match kind {
        TunnelKind::Socks5 { auth, .. } => {
            Some(Handshake::Socks5(Socks5Handshake::connect(dst, auth.is_some())))
        }
        TunnelKind::HttpConnect { auth, .. } => Some(Handshake::Http(HttpConnect::new(dst, auth.as_ref()))),
        TunnelKind::Direct { .. } => None,
    }
}

/// A handshake of any tunnel kind that has one.
#[derive(Debug)]
// Owners keep it boxed, and only until the tunnel is open.
#[allow(clippy::large_enum_variant)]
pub enum Handshake {
    Socks5(Socks5Handshake),
    Http(HttpConnect),
}

impl Handshake {
    pub fn transmit(&self) -> &[u8] {
        match self {
            Handshake::Socks5(h) => h.transmit(),
            Handshake::Http(h) => h.transmit(),
        }
    }

    /// The request is fully sent: bytes written now follow it.
    pub fn request_out(&self) -> bool {
        match self {
            Handshake::Socks5(h) => h.request_out(),
            Handshake::Http(h) => h.transmit().is_empty(),
        }
    }

    /// What `transmit` holds ends with the request: bytes written right
    /// behind it follow the request.
    pub fn request_queued(&self) -> bool {
        match self {
            Handshake::Socks5(h) => h.request_queued(),
            Handshake::Http(h) => !h.transmit().is_empty(),
        }
    }

    pub fn sent(&mut self, n: usize) {
        match self {
            Handshake::Socks5(h) => h.sent(n),
            Handshake::Http(h) => h.sent(n),
        }
    }

    /// The address the server reported binding (SOCKS5: the UDP relay).
    pub fn bound(&self) -> Option<crate::wire::socks5::Bound> {
        match self {
            Handshake::Socks5(h) => h.bound(),
            Handshake::Http(_) => None,
        }
    }

    pub fn on_input(&mut self, data: &[u8], auth: Option<&Credentials>) -> Result<Progress, HandshakeError> {
        match self {
            Handshake::Socks5(h) => h.on_input(data, auth),
            Handshake::Http(h) => h.on_input(data),
        }
    }
}
