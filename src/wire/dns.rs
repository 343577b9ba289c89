//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): each message is
//! preceded by its length as two big-endian bytes.
//!
//! ```text
//!   +--------+--------+-------------- len bytes ---------------+
//!   | len hi | len lo | DNS message (12-byte header, ...)      |
//!   +--------+--------+----------------------------------------+
//! ```
//!
//! Used when a tunnel has no UDP: a container's port-53 datagrams are
//! carried as framed messages over the tunnel's TCP, and the framed replies
//! are cut back into datagrams. Only the framing and the header bits needed
//! to decide that are read here; the messages themselves pass untouched.

use std::fmt;

use super::Parse;

/// The length prefix.
pub const PREFIX_LEN: usize = 2;
/// The fixed DNS header (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;
/// Largest message a 2-byte prefix can frame.
pub const MAX_MESSAGE: usize = u16::MAX as usize;
/// Largest frame, prefix included.
pub const MAX_FRAME: usize = PREFIX_LEN + MAX_MESSAGE;

/// What was wrong with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFrameError {
    /// A zero length: no DNS message is empty, so the stream is not DNS
    /// (or is out of step).
    ZeroLength,
    /// A message longer than 65535 bytes cannot be framed.
    TooLong(usize),
    /// The output buffer cannot hold the frame.
    BufferTooSmall { need: usize },
}

impl fmt::Display for DnsFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DnsFrameError::ZeroLength => f.write_str("DNS-over-TCP frame of length zero"),
            DnsFrameError::TooLong(n) => {
                write!(f, "DNS message of {n} bytes is over the 65535 a frame holds")
            }
            DnsFrameError::BufferTooSmall { need } => write!(f, "DNS frame needs a {need}-byte buffer"),
        }
    }
}

impl std::error::Error for DnsFrameError {}

/// The 2-byte big-endian length prefix for a DNS message of `len` bytes.
pub fn encode_len(len: usize) -> Result<[u8; 2], DnsFrameError> {
    match u16::try_from(len) {
        Ok(0) => Err(DnsFrameError::ZeroLength),
        Ok(n) => Ok(n.to_be_bytes()),
        Err(_) => Err(DnsFrameError::TooLong(len)),
    }
}

/// Writes `msg` with its prefix at the start of `out`; returns the length
/// written (`msg.len() + 2`).
pub fn encode_frame(msg: &[u8], out: &mut [u8]) -> Result<usize, DnsFrameError> {
    let prefix = encode_len(msg.len())?;
    let need = PREFIX_LEN + msg.len();
    let Some(dst) = out.get_mut(..need) else {
        return Err(DnsFrameError::BufferTooSmall { need });
    };
    dst[..PREFIX_LEN].copy_from_slice(&prefix);
    dst[PREFIX_LEN..].copy_from_slice(msg);
    Ok(need)
}

/// One framed message at the start of `buf`: `Done(message, consumed)`
/// where `consumed` counts the prefix, or `Incomplete` until the whole
/// message is there. Bytes after it (the next frame) are left alone.
pub fn parse_frame(buf: &[u8]) -> Result<Parse<&[u8]>, DnsFrameError> {
    let [hi, lo, rest @ ..] = buf else {
        return Ok(Parse::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    if len == 0 {
        return Err(DnsFrameError::ZeroLength);
    }
    match rest.get(..len) {
        Some(msg) => Ok(Parse::Done(msg, PREFIX_LEN + len)),
        None => Ok(Parse::Incomplete),
    }
}

/// Whether a UDP payload looks like a DNS query worth carrying over TCP: a
/// whole header, the QR bit clear (a query, not a response), and short
/// enough to frame.
pub fn is_query(payload: &[u8]) -> bool {
    (HEADER_LEN..=MAX_MESSAGE).contains(&payload.len()) && payload[2] & 0x80 == 0
}

/// The message ID (first header field), which pairs a response with its
/// query when several share one TCP connection (RFC 7766 §7: responses may
/// come out of order).
pub fn message_id(msg: &[u8]) -> Option<u16> {
    match msg {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for example.com. A, ID 0xbeef, RD set.
    const QUERY: [u8; 29] = [
        0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
        7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, // qname
        0x00, 0x01, 0x00, 0x01, // A, IN
    ];

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0; msg.len() + 2];
        assert_eq!(encode_frame(msg, &mut out), Ok(msg.len() + 2));
        out
    }

    #[test]
    fn prefix_bytes() {
        assert_eq!(encode_len(1), Ok([0, 1]));
        assert_eq!(encode_len(29), Ok([0, 29]));
        assert_eq!(encode_len(0x1234), Ok([0x12, 0x34]));
        assert_eq!(encode_len(65535), Ok([0xff, 0xff]));
        assert_eq!(encode_len(0), Err(DnsFrameError::ZeroLength));
        assert_eq!(encode_len(65536), Err(DnsFrameError::TooLong(65536)));
        assert_eq!(encode_len(usize::MAX), Err(DnsFrameError::TooLong(usize::MAX)));
    }

    #[test]
    fn round_trip() {
        let f = framed(&QUERY);
        assert_eq!(&f[..2], &[0, 29]);
        assert_eq!(parse_frame(&f), Ok(Parse::Done(&QUERY[..], 31)));
    }

    #[test]
    fn incomplete_at_every_split() {
        let f = framed(&QUERY);
        for cut in 0..f.len() {
            assert_eq!(parse_frame(&f[..cut]), Ok(Parse::Incomplete), "cut at {cut}");
        }
        assert_eq!(parse_frame(&f), Ok(Parse::Done(&QUERY[..], f.len())));
    }

    #[test]
    fn two_frames_back_to_back() {
        let second = [0x12, 0x34, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa];
        let mut buf = framed(&QUERY);
        buf.extend_from_slice(&framed(&second));
        buf.extend_from_slice(&[0x00]); // a third frame's first byte
        let Ok(Parse::Done(m1, n1)) = parse_frame(&buf) else { panic!() };
        assert_eq!((m1, n1), (&QUERY[..], 31));
        let Ok(Parse::Done(m2, n2)) = parse_frame(&buf[n1..]) else { panic!() };
        assert_eq!((m2, n2), (&second[..], 15));
        assert_eq!(parse_frame(&buf[n1 + n2..]), Ok(Parse::Incomplete));
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(parse_frame(&[0, 0]), Err(DnsFrameError::ZeroLength));
        assert_eq!(parse_frame(&[0, 0, 1, 2, 3]), Err(DnsFrameError::ZeroLength));
        assert_eq!(parse_frame(&[0]), Ok(Parse::Incomplete));
    }

    #[test]
    fn max_length() {
        let msg = vec![0x5a; MAX_MESSAGE];
        let mut out = vec![0; MAX_FRAME + 3];
        assert_eq!(encode_frame(&msg, &mut out), Ok(MAX_FRAME));
        assert_eq!(&out[..2], &[0xff, 0xff]);
        assert_eq!(parse_frame(&out[..MAX_FRAME - 1]), Ok(Parse::Incomplete));
        assert_eq!(parse_frame(&out), Ok(Parse::Done(&msg[..], MAX_FRAME)));
        let too_long = vec![0; MAX_MESSAGE + 1];
        assert_eq!(encode_frame(&too_long, &mut out), Err(DnsFrameError::TooLong(MAX_MESSAGE + 1)));
    }

    #[test]
    fn encode_frame_needs_room() {
        let mut out = [0u8; 30];
        assert_eq!(encode_frame(&QUERY, &mut out), Err(DnsFrameError::BufferTooSmall { need: 31 }));
        assert_eq!(encode_frame(&[], &mut out), Err(DnsFrameError::ZeroLength));
    }

    #[test]
    fn queries_and_responses() {
        assert!(is_query(&QUERY));
        let mut response = QUERY;
        response[2] |= 0x80;
        assert!(!is_query(&response));
        assert!(!is_query(&QUERY[..11]));
        assert!(is_query(&QUERY[..12]));
        assert!(!is_query(&[]));
        assert!(!is_query(&vec![0; MAX_MESSAGE + 1]));
        assert_eq!(message_id(&QUERY), Some(0xbeef));
        assert_eq!(message_id(&[1]), None);
    }

    #[test]
    fn errors_display() {
        assert_eq!(DnsFrameError::ZeroLength.to_string(), "DNS-over-TCP frame of length zero");
        assert!(DnsFrameError::TooLong(70000).to_string().contains("70000"));
        assert!(DnsFrameError::BufferTooSmall { need: 9 }.to_string().contains('9'));
    }
}
