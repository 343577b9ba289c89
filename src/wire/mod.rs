//! Codecs for bytes that come from outside: pure functions, no I/O.
//!
//! The contract, stated once for every parser here:
//! - it takes a byte slice and never panics, whatever the bytes;
//! - it returns [`Parse::Incomplete`] when more bytes are needed,
//!   [`Parse::Done`] with the value and how many bytes it consumed, or a
//!   small `Copy` error saying what was wrong;
//! - it never consumes bytes past the end of its own message, so what
//!   follows (relay data after a handshake reply) stays with the caller.
//!
//! Encoders write into a caller's buffer and return the length written.

pub mod cmsg;
pub mod dns;
pub mod http;
pub mod http1;
pub mod sockaddr;
pub mod socks5;

/// The outcome of a parser that may need more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse<T> {
    Incomplete,
    /// The value and the number of bytes it took.
    Done(T, usize),
}
