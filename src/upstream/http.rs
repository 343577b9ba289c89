//! HTTP CONNECT from the client side, with optional Basic auth.
//!
//! ```text
//!   new (request queued) ──sent──► Head (reading the response head) ──2xx──► Connected
//!                                        └── other status, garbage, > 8 KiB ──► Err
//! ```
//!
//! The head is accumulated only if it arrives in pieces; bytes after it
//! are the tunnel's and are left to the caller.

use std::net::SocketAddr;

use super::{HandshakeError, Progress};
use crate::config::Credentials;
use crate::wire::Parse;
use crate::wire::http::{self, HttpError};

#[derive(Debug)]
pub struct HttpConnect {
    out: Vec<u8>,
    out_pos: usize,
    acc: Vec<u8>,
    done: bool,
}

impl HttpConnect {
    pub fn new(dst: SocketAddr, auth: Option<&Credentials>) -> Self {
        let out = http::encode_connect(dst, auth.map(|c| (c.username.as_str(), c.password.as_str())));
        HttpConnect { out, out_pos: 0, acc: Vec::new(), done: false }
    }

    pub fn transmit(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    pub fn sent(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
    }

    pub fn on_input(&mut self, data: &[u8]) -> Result<Progress, HandshakeError> {
        if data.is_empty() {
            return Err(HandshakeError::Closed);
        }
        if self.done || !self.transmit().is_empty() {
            return Err(HandshakeError::Unexpected);
        }
        let before = self.acc.len();
        let r = if before == 0 {
            http::parse_response_head(data)
        } else {
            let take = data.len().min(http::MAX_HEAD.saturating_sub(before) + 1);
            self.acc.extend_from_slice(&data[..take]);
            http::parse_response_head(&self.acc)
        };
        match r.map_err(HandshakeError::Http)? {
            Parse::Done(_, head_len) => {
                self.done = true;
                self.acc = Vec::new();
                // The head ends past the part kept (the parser called that
                // part incomplete) and within what it was given; both come
                // from the proxy's bytes, so both are checked: the caller
                // slices `consumed..read`.
                match head_len.checked_sub(before) {
                    Some(consumed) if consumed <= data.len() => Ok(Progress::Connected { consumed }),
                    _ => Err(HandshakeError::Unexpected),
                }
            }
            Parse::Incomplete => {
                if before == 0 {
                    self.acc.extend_from_slice(data);
                }
                Ok(Progress::Continue)
            }
        }
    }
}

impl From<HttpError> for HandshakeError {
    fn from(e: HttpError) -> Self {
        HandshakeError::Http(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(auth: Option<&Credentials>) -> HttpConnect {
        let mut h = HttpConnect::new("203.0.113.10:80".parse().unwrap(), auth);
        let n = h.transmit().len();
        h.sent(n);
        h
    }

    #[test]
    fn head_in_one_read_with_tunnel_bytes_after() {
        let mut h = ready(None);
        let r = b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0";
        assert_eq!(h.on_input(r), Ok(Progress::Connected { consumed: 19 }));
    }

    #[test]
    fn head_split_at_every_byte() {
        let r = b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy\r\n\r\nxyz";
        let head = r.len() - 3;
        for cut in 1..head {
            let mut h = ready(None);
            assert_eq!(h.on_input(&r[..cut]), Ok(Progress::Continue), "cut {cut}");
            assert_eq!(h.on_input(&r[cut..]), Ok(Progress::Connected { consumed: head - cut }), "cut {cut}");
        }
    }

    /// The blank line cut between its CR and LF, and after a bare LF: the
    /// head ends in the second read, one byte into it.
    #[test]
    fn head_end_cut_inside_the_blank_line() {
        for (a, b) in
            [(&b"HTTP/1.1 200 OK\r\n\r"[..], &b"\nDATA"[..]), (&b"HTTP/1.0 200 OK\n"[..], &b"\nx"[..])]
        {
            let mut h = ready(None);
            assert_eq!(h.on_input(a), Ok(Progress::Continue));
            assert_eq!(h.on_input(b), Ok(Progress::Connected { consumed: 1 }));
        }
        // Cut in three, the last read holding only the final LF and data.
        let mut h = ready(None);
        assert_eq!(h.on_input(b"HTTP/1.1 200 OK\r"), Ok(Progress::Continue));
        assert_eq!(h.on_input(b"\n\r"), Ok(Progress::Continue));
        assert_eq!(h.on_input(b"\nSSH"), Ok(Progress::Connected { consumed: 1 }));
        assert_eq!(h.on_input(b"more"), Err(HandshakeError::Unexpected));
    }

    #[test]
    fn refusals() {
        let c = Credentials { username: "u".into(), password: "wrong".into() };
        let mut h = ready(Some(&c));
        assert_eq!(
            h.on_input(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
            Err(HttpError::Status(407).into())
        );
        let mut h = ready(None);
        assert_eq!(h.on_input(b"\x05\x00"), Err(HttpError::BadStatusLine.into()));
        let mut h = ready(None);
        assert_eq!(h.on_input(b""), Err(HandshakeError::Closed));
        let mut h = HttpConnect::new("203.0.113.10:80".parse().unwrap(), None);
        assert_eq!(h.on_input(b"HTTP/1.1 200 OK\r\n\r\n"), Err(HandshakeError::Unexpected));
        let mut h = ready(None);
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        assert_eq!(h.on_input(&long), Ok(Progress::Continue));
        assert_eq!(h.on_input(&long), Err(HttpError::HeadTooLong.into()));
    }
}
