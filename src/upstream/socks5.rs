//! SOCKS5 CONNECT and UDP ASSOCIATE from the client side, with optional
//! RFC 1929 auth.
//!
//! ```text
//!            send greeting
//!   new ───────────────────► Method ──00──────────────────────┐
//!                              │                              │ send CONNECT / UDP ASSOCIATE
//!                              02 (send user/pass; never      ▼
//!                              │   pipelined: microsocks   Reply ──rep=0──► Connected
//!                              ▼   drops early bytes)         ▲
//!                             Auth ──status 0─────────────────┘
//!   any step: bad version, refusal, garbage ──► Err (client gets a reset)
//! ```
//!
//! Input is accumulated in a small fixed buffer only while a message is
//! split across reads; the whole machine lives in one allocation per flow
//! and is dropped once the tunnel is open.

use std::net::SocketAddr;

use super::{HandshakeError, Progress};
use crate::config::Credentials;
use crate::wire::Parse;
use crate::wire::socks5::{self as w, Bound};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Method,
    Auth,
    Reply,
    Connected,
}

#[derive(Debug)]
pub struct Socks5Handshake {
    state: State,
    cmd: u8,
    target: SocketAddr,
    offered_auth: bool,
    out: [u8; w::AUTH_MAX],
    out_len: usize,
    out_pos: usize,
    acc: [u8; w::REPLY_MAX],
    acc_len: usize,
    /// The address the server bound for us: for UDP ASSOCIATE, the relay.
    bound: Option<Bound>,
}

impl Socks5Handshake {
    /// CONNECT to `target`.
    pub fn connect(target: SocketAddr, with_auth: bool) -> Self {
        Self::new(w::CMD_CONNECT, target, with_auth)
    }

    /// UDP ASSOCIATE. `from` is where our datagrams will come from; all
    /// zeros (unknown) is what strict servers such as danted expect — never
    /// a datagram's destination, which makes them drop every datagram.
    pub fn associate(from: SocketAddr, with_auth: bool) -> Self {
        Self::new(w::CMD_UDP_ASSOCIATE, from, with_auth)
    }

    fn new(cmd: u8, target: SocketAddr, with_auth: bool) -> Self {
        let mut h = Socks5Handshake {
            state: State::Method,
            cmd,
            target,
            offered_auth: with_auth,
            out: [0; w::AUTH_MAX],
            out_len: 0,
            out_pos: 0,
            acc: [0; w::REPLY_MAX],
            acc_len: 0,
            bound: None,
        };
        let mut g = [0; w::GREETING_MAX];
        let n = w::encode_greeting(with_auth, &mut g);
        h.queue(&g[..n]);
        h
    }

    pub fn bound(&self) -> Option<Bound> {
        self.bound
    }

    pub fn transmit(&self) -> &[u8] {
        &self.out[self.out_pos..self.out_len]
    }

    pub fn sent(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out_len);
    }

    fn queue(&mut self, bytes: &[u8]) {
        // Only called when the previous message is fully sent (the server
        // answers only after it has our message), so the buffer is free.
        self.out[..bytes.len()].copy_from_slice(bytes);
        self.out_len = bytes.len();
        self.out_pos = 0;
    }

    /// Feeds bytes read from the server. See [`super::Handshake`].
    pub fn on_input(&mut self, data: &[u8], auth: Option<&Credentials>) -> Result<Progress, HandshakeError> {
        if data.is_empty() {
            return Err(HandshakeError::Closed);
        }
        let mut used = 0;
        while used < data.len() {
            if self.state == State::Connected {
                return Err(HandshakeError::Unexpected);
            }
            if !self.transmit().is_empty() {
                // The server answered before it had all of our message.
                return Err(HandshakeError::Unexpected);
            }
            // Parse from the accumulator when a message is split; else in place.
            let (step, from_acc) = if self.acc_len == 0 {
                (self.step(&data[used..], auth)?, false)
            } else {
                let take = (w::REPLY_MAX - self.acc_len).min(data.len() - used);
                let mut tmp = [0u8; w::REPLY_MAX];
                tmp[..self.acc_len].copy_from_slice(&self.acc[..self.acc_len]);
                tmp[self.acc_len..self.acc_len + take].copy_from_slice(&data[used..used + take]);
                (self.step(&tmp[..self.acc_len + take], auth)?, true)
            };
            match step {
                None => {
                    // Incomplete: keep what we have for the next read.
                    let rest = &data[used..];
                    if self.acc_len + rest.len() > w::REPLY_MAX {
                        return Err(HandshakeError::Unexpected);
                    }
                    self.acc[self.acc_len..self.acc_len + rest.len()].copy_from_slice(rest);
                    self.acc_len += rest.len();
                    return Ok(Progress::Continue);
                }
                Some(n) => {
                    used += if from_acc { n - std::mem::take(&mut self.acc_len) } else { n };
                    if self.state == State::Connected {
                        return Ok(Progress::Connected { consumed: used });
                    }
                }
            }
        }
        Ok(Progress::Continue)
    }

    /// One message from `buf`: `Some(bytes used)` or `None` if incomplete.
    fn step(&mut self, buf: &[u8], auth: Option<&Credentials>) -> Result<Option<usize>, HandshakeError> {
        match self.state {
            State::Method => match w::parse_method(buf, self.offered_auth)? {
                Parse::Incomplete => Ok(None),
                Parse::Done(method, n) => {
                    match (method, auth) {
                        (w::METHOD_USERPASS, Some(c)) => {
                            let mut b = [0; w::AUTH_MAX];
                            let len = w::encode_auth(c.username.as_bytes(), c.password.as_bytes(), &mut b);
                            self.queue(&b[..len]);
                            self.state = State::Auth;
                        }
                        (w::METHOD_USERPASS, None) => {
                            return Err(w::Socks5Error::UnofferedMethod(method).into());
                        }
                        _ => self.send_request(),
                    }
                    Ok(Some(n))
                }
            },
            State::Auth => match w::parse_auth_status(buf)? {
                Parse::Incomplete => Ok(None),
                Parse::Done((), n) => {
                    self.send_request();
                    Ok(Some(n))
                }
            },
            State::Reply => match w::parse_reply(buf)? {
                Parse::Incomplete => Ok(None),
                Parse::Done(bound, n) => {
                    self.bound = Some(bound);
                    self.state = State::Connected;
                    Ok(Some(n))
                }
            },
            State::Connected => Err(HandshakeError::Unexpected),
        }
    }

    fn send_request(&mut self) {
        let mut b = [0; w::REQUEST_MAX];
        let n = w::encode_request(self.cmd, self.target, &mut b);
        self.queue(&b[..n]);
        self.state = State::Reply;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::socks5::Socks5Error;

    fn creds() -> Credentials {
        Credentials { username: "user".into(), password: "secret".into() }
    }

    fn drain(h: &mut Socks5Handshake) -> Vec<u8> {
        let v = h.transmit().to_vec();
        h.sent(v.len());
        v
    }

    const TARGET: &str = "203.0.113.10:80";
    const REPLY: [u8; 10] = [5, 0, 0, 1, 198, 51, 100, 1, 0x9c, 0x40];

    #[test]
    fn no_auth_transcript() {
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        assert_eq!(drain(&mut h), [5, 1, 0]);
        assert_eq!(h.on_input(&[5, 0], None), Ok(Progress::Continue));
        assert_eq!(drain(&mut h), [5, 1, 0, 1, 203, 0, 113, 10, 0, 80]);
        let mut reply = REPLY.to_vec();
        reply.extend_from_slice(b"220 banner");
        assert_eq!(h.on_input(&reply, None), Ok(Progress::Connected { consumed: 10 }));
        assert_eq!(h.bound(), Some(Bound::Addr("198.51.100.1:40000".parse().unwrap())));
    }

    #[test]
    fn auth_transcript_waits_for_method_before_credentials() {
        let c = creds();
        let mut h = Socks5Handshake::connect("[2001:db8:203::10]:443".parse().unwrap(), true);
        assert_eq!(drain(&mut h), [5, 2, 0, 2]);
        assert!(h.transmit().is_empty(), "credentials must not be pipelined with the greeting");
        assert_eq!(h.on_input(&[5, 2], Some(&c)), Ok(Progress::Continue));
        assert_eq!(drain(&mut h), b"\x01\x04user\x06secret");
        assert_eq!(h.on_input(&[1, 0], Some(&c)), Ok(Progress::Continue));
        let req = drain(&mut h);
        assert_eq!(&req[..4], &[5, 1, 0, 4]);
        assert_eq!(req.len(), 22);
    }

    #[test]
    fn server_may_choose_no_auth_even_when_we_offer_it() {
        let c = creds();
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), true);
        drain(&mut h);
        h.on_input(&[5, 0], Some(&c)).unwrap();
        assert_eq!(drain(&mut h)[1], w::CMD_CONNECT);
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        drain(&mut h);
        assert_eq!(h.on_input(&[5], None), Ok(Progress::Continue));
        assert_eq!(h.on_input(&[0], None), Ok(Progress::Continue));
        drain(&mut h);
        for b in &REPLY[..9] {
            assert_eq!(h.on_input(&[*b], None), Ok(Progress::Continue));
        }
        assert_eq!(h.on_input(&[REPLY[9], b'x', b'y'], None), Ok(Progress::Connected { consumed: 1 }));
    }

    #[test]
    fn split_reply_with_trailing_data_counts_only_its_own_bytes() {
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        drain(&mut h);
        h.on_input(&[5, 0], None).unwrap();
        drain(&mut h);
        assert_eq!(h.on_input(&REPLY[..4], None), Ok(Progress::Continue));
        let mut rest = REPLY[4..].to_vec();
        rest.extend_from_slice(b"data");
        assert_eq!(h.on_input(&rest, None), Ok(Progress::Connected { consumed: 6 }));
    }

    #[test]
    fn associate_sends_all_zero_address() {
        let mut h = Socks5Handshake::associate("0.0.0.0:0".parse().unwrap(), false);
        drain(&mut h);
        h.on_input(&[5, 0], None).unwrap();
        assert_eq!(drain(&mut h), [5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        let reply = [5, 0, 0, 1, 0, 0, 0, 0, 0x9c, 0x41];
        assert_eq!(h.on_input(&reply, None), Ok(Progress::Connected { consumed: 10 }));
        assert_eq!(h.bound(), Some(Bound::Addr("0.0.0.0:40001".parse().unwrap())));
    }

    #[test]
    fn failures() {
        let c = creds();
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), true);
        drain(&mut h);
        h.on_input(&[5, 2], Some(&c)).unwrap();
        drain(&mut h);
        assert_eq!(h.on_input(&[1, 1], Some(&c)), Err(HandshakeError::Socks5(Socks5Error::AuthRejected(1))));

        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        drain(&mut h);
        h.on_input(&[5, 0], None).unwrap();
        drain(&mut h);
        assert_eq!(
            h.on_input(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0], None),
            Err(HandshakeError::Socks5(Socks5Error::Refused(5)))
        );

        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        drain(&mut h);
        assert_eq!(h.on_input(b"HTTP/1.0 400 Bad", None), Err(Socks5Error::BadVersion(b'H').into()));
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        assert_eq!(h.on_input(&[], None), Err(HandshakeError::Closed));
        // The server talks before our greeting is out.
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        assert_eq!(h.on_input(&[5, 0], None), Err(HandshakeError::Unexpected));
        // The server sends its method and the reply before we sent CONNECT.
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        drain(&mut h);
        let mut both = vec![5, 0];
        both.extend_from_slice(&REPLY);
        assert_eq!(h.on_input(&both, None), Err(HandshakeError::Unexpected));
    }
}
