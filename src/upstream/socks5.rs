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
//!
//! Three other shapes of the same machine:
//! - **pipelined** ([`Socks5Handshake::pipelined`]): greeting, credentials
//!   and request in one flight, for servers the probe found to take it
//!   (only the one method we will use is offered, so the server's choice
//!   is known in advance);
//! - **greet** ([`Socks5Handshake::greet`]): greeting and credentials only,
//!   ending ready for a request: how a warm pool's connections are made;
//! - **request** ([`Socks5Handshake::request`]): the request alone, on a
//!   connection a pool greeted.

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

/// Greeting, credentials and request, all queued at once when pipelined.
const OUT_MAX: usize = w::GREETING_MAX + w::AUTH_MAX + w::REQUEST_MAX;

#[derive(Debug)]
pub struct Socks5Handshake {
    state: State,
    cmd: u8,
    target: SocketAddr,
    offered_auth: bool,
    /// Everything was queued up front; answers are parsed as they come.
    pipelined: bool,
    /// Ends after the greeting (and auth): a connection for the warm pool.
    greet_only: bool,
    out: [u8; OUT_MAX],
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

    /// `cmd` (CONNECT, UDP ASSOCIATE) with greeting, credentials and request
    /// in one flight. Offers only the method it will use.
    pub fn pipelined(cmd: u8, target: SocketAddr, auth: Option<&Credentials>) -> Self {
        let mut h = Self::blank(cmd, target, auth.is_some());
        h.pipelined = true;
        let method = if auth.is_some() { w::METHOD_USERPASS } else { w::METHOD_NONE };
        h.append(&[w::VERSION, 1, method]);
        if let Some(c) = auth {
            let mut b = [0; w::AUTH_MAX];
            let len = w::encode_auth(c.username.as_bytes(), c.password.as_bytes(), &mut b);
            h.append(&b[..len]);
        }
        let mut b = [0; w::REQUEST_MAX];
        let n = w::encode_request(cmd, target, &mut b);
        h.append(&b[..n]);
        h
    }

    /// Greeting and credentials only: ends (`Connected`) ready for a request.
    pub fn greet(with_auth: bool) -> Self {
        let mut h = Self::new(0, SocketAddr::from(([0, 0, 0, 0], 0)), with_auth);
        h.greet_only = true;
        h
    }

    /// The request alone, on a connection [`greet`](Self::greet) made ready.
    pub fn request(cmd: u8, target: SocketAddr) -> Self {
        let mut h = Self::blank(cmd, target, false);
        h.send_request();
        h
    }

    fn blank(cmd: u8, target: SocketAddr, with_auth: bool) -> Self {
        Socks5Handshake {
            state: State::Method,
            cmd,
            target,
            offered_auth: with_auth,
            pipelined: false,
            greet_only: false,
            out: [0; OUT_MAX],
            out_len: 0,
            out_pos: 0,
            acc: [0; w::REPLY_MAX],
            acc_len: 0,
            bound: None,
        }
    }

    fn new(cmd: u8, target: SocketAddr, with_auth: bool) -> Self {
        let mut h = Self::blank(cmd, target, with_auth);
        let mut g = [0; w::GREETING_MAX];
        let n = w::encode_greeting(with_auth, &mut g);
        h.queue(&g[..n]);
        h
    }

    /// The server has answered the greeting (chosen a method).
    pub fn greeted(&self) -> bool {
        self.state != State::Method
    }

    /// The request is fully sent: bytes written now follow it (pipelining).
    pub fn request_out(&self) -> bool {
        self.transmit().is_empty() && (self.pipelined || self.state == State::Reply)
    }

    /// The bytes waiting to be sent end with the request (pipelining).
    pub fn request_queued(&self) -> bool {
        !self.transmit().is_empty() && (self.pipelined || self.state == State::Reply)
    }

    fn append(&mut self, bytes: &[u8]) {
        self.out[self.out_len..self.out_len + bytes.len()].copy_from_slice(bytes);
        self.out_len += bytes.len();
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
            if !self.pipelined && !self.transmit().is_empty() {
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
                    // A parser takes no more than it was given, and a message
                    // split across reads ends past the part kept (its parser
                    // called that part incomplete). The server's bytes decide
                    // both, so both are checked: a range the caller slices
                    // with (`consumed..read`) must never run backwards.
                    let own =
                        if from_acc { n.checked_sub(std::mem::take(&mut self.acc_len)) } else { Some(n) };
                    used = match own.and_then(|k| used.checked_add(k)) {
                        Some(u) if u <= data.len() => u,
                        _ => return Err(HandshakeError::Unexpected),
                    };
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
                    if self.pipelined {
                        // Everything is queued: only the method we offered will do.
                        let want = if self.offered_auth { w::METHOD_USERPASS } else { w::METHOD_NONE };
                        if method != want {
                            return Err(w::Socks5Error::UnofferedMethod(method).into());
                        }
                        self.state = if self.offered_auth { State::Auth } else { State::Reply };
                        return Ok(Some(n));
                    }
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
                    if self.pipelined {
                        self.state = State::Reply;
                    } else {
                        self.send_request();
                    }
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
        if self.greet_only {
            self.state = State::Connected;
            return;
        }
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
    fn pipelined_sends_everything_in_one_flight() {
        let c = creds();
        let mut h = Socks5Handshake::pipelined(w::CMD_CONNECT, TARGET.parse().unwrap(), Some(&c));
        assert!(!h.request_out());
        let all = drain(&mut h);
        let mut want = vec![5, 1, 2];
        want.extend_from_slice(b"\x01\x04user\x06secret");
        want.extend_from_slice(&[5, 1, 0, 1, 203, 0, 113, 10, 0, 80]);
        assert_eq!(all, want, "only user/pass offered, then credentials and request");
        assert!(h.request_out());
        // All three answers in one read, with the first bytes of the relay.
        let mut answers = vec![5, 2, 1, 0];
        answers.extend_from_slice(&REPLY);
        answers.extend_from_slice(b"HTTP");
        assert_eq!(h.on_input(&answers, Some(&c)), Ok(Progress::Connected { consumed: 14 }));
        // Without auth; the answers one by one; a partly sent flight may be answered.
        let mut h = Socks5Handshake::pipelined(w::CMD_CONNECT, TARGET.parse().unwrap(), None);
        assert_eq!(h.transmit()[..3], [5, 1, 0]);
        assert!(h.request_queued(), "the flight ends with the request: early bytes may ride behind it");
        h.sent(3);
        assert!(!h.request_out());
        assert_eq!(h.on_input(&[5, 0], None), Ok(Progress::Continue));
        drain(&mut h);
        assert_eq!(h.on_input(&REPLY, None), Ok(Progress::Connected { consumed: 10 }));
        // UDP ASSOCIATE the same way, with the all-zero address.
        let mut h = Socks5Handshake::pipelined(w::CMD_UDP_ASSOCIATE, "0.0.0.0:0".parse().unwrap(), None);
        assert_eq!(drain(&mut h), [5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut answers = vec![5, 0];
        answers.extend_from_slice(&[5, 0, 0, 1, 198, 51, 100, 1, 0x9c, 0x41]);
        assert_eq!(h.on_input(&answers, None), Ok(Progress::Connected { consumed: 12 }));
        assert_eq!(h.bound(), Some(Bound::Addr("198.51.100.1:40001".parse().unwrap())));
        // A server choosing a method we did not offer breaks the pipeline.
        let mut h = Socks5Handshake::pipelined(w::CMD_CONNECT, TARGET.parse().unwrap(), Some(&c));
        drain(&mut h);
        assert_eq!(h.on_input(&[5, 0], Some(&c)), Err(Socks5Error::UnofferedMethod(0).into()));
    }

    #[test]
    fn greet_then_request_is_a_pooled_connection() {
        let c = creds();
        let mut g = Socks5Handshake::greet(true);
        assert!(!g.request_queued(), "a greeting is no request: nothing may ride behind it");
        assert_eq!(drain(&mut g), [5, 2, 0, 2]);
        assert_eq!(g.on_input(&[5, 2], Some(&c)), Ok(Progress::Continue));
        assert_eq!(drain(&mut g), b"\x01\x04user\x06secret");
        assert_eq!(g.on_input(&[1, 0], Some(&c)), Ok(Progress::Connected { consumed: 2 }));
        assert!(g.transmit().is_empty(), "nothing is sent after the greeting");
        assert!(!g.request_out());
        let mut g = Socks5Handshake::greet(false);
        drain(&mut g);
        assert_eq!(g.on_input(&[5, 0], None), Ok(Progress::Connected { consumed: 2 }));
        // Later, on the same connection:
        let mut r = Socks5Handshake::request(w::CMD_CONNECT, TARGET.parse().unwrap());
        assert!(r.request_queued());
        assert_eq!(drain(&mut r), [5, 1, 0, 1, 203, 0, 113, 10, 0, 80]);
        assert!(r.request_out());
        assert_eq!(r.on_input(&REPLY, None), Ok(Progress::Connected { consumed: 10 }));
        let mut r = Socks5Handshake::request(w::CMD_CONNECT, TARGET.parse().unwrap());
        drain(&mut r);
        assert_eq!(r.on_input(&[], None), Err(HandshakeError::Closed), "a dead pooled connection");
    }

    /// Feeds the server's `answers` (one per message of ours), each cut in
    /// two at `cut`, the last followed by relay bytes, sending what the
    /// handshake holds before each read.
    fn feed_cut(
        h: &mut Socks5Handshake,
        auth: Option<&Credentials>,
        answers: &[Vec<u8>],
        cut: usize,
    ) -> Result<Progress, HandshakeError> {
        let mut last = Ok(Progress::Continue);
        for (i, a) in answers.iter().enumerate() {
            let k = cut.min(a.len());
            let mut second = a[k..].to_vec();
            if i + 1 == answers.len() {
                second.extend_from_slice(b"tail");
            }
            for part in [&a[..k], &second[..]] {
                if part.is_empty() {
                    continue;
                }
                drain(h);
                last = h.on_input(part, auth);
                if last != Ok(Progress::Continue) {
                    return last;
                }
            }
        }
        last
    }

    /// Every shape, each answer cut at every byte (through the accumulator):
    /// open, with only the last answer's own bytes consumed, and the same
    /// bound address.
    #[test]
    fn every_shape_with_each_answer_cut_at_every_byte() {
        let c = creds();
        let dom: Vec<u8> = [&[5u8, 0, 0, 3, 255][..], &[b'x'; 255], &[0, 1]].concat();
        let assoc = vec![5, 0, 0, 1, 0, 0, 0, 0, 0x9c, 0x41];
        let v4 = Some(Bound::Addr("198.51.100.1:40000".parse().unwrap()));
        type Case = (fn(&Credentials) -> Socks5Handshake, bool, Vec<Vec<u8>>, Option<Bound>);
        let cases: Vec<Case> = vec![
            (
                |_| Socks5Handshake::connect(TARGET.parse().unwrap(), false),
                false,
                vec![vec![5, 0], REPLY.to_vec()],
                v4,
            ),
            (
                |_| Socks5Handshake::connect(TARGET.parse().unwrap(), true),
                true,
                vec![vec![5, 2], vec![1, 0], REPLY.to_vec()],
                v4,
            ),
            (
                |_| Socks5Handshake::associate("0.0.0.0:0".parse().unwrap(), false),
                false,
                vec![vec![5, 0], assoc],
                Some(Bound::Addr("0.0.0.0:40001".parse().unwrap())),
            ),
            (
                |c| Socks5Handshake::pipelined(w::CMD_CONNECT, TARGET.parse().unwrap(), Some(c)),
                true,
                vec![vec![5, 2], vec![1, 0], REPLY.to_vec()],
                v4,
            ),
            (|_| Socks5Handshake::greet(true), true, vec![vec![5, 2], vec![1, 0]], None),
            (
                |_| Socks5Handshake::request(w::CMD_CONNECT, TARGET.parse().unwrap()),
                false,
                vec![dom],
                Some(Bound::Domain(1)),
            ),
        ];
        for (i, (make, with_auth, answers, bound)) in cases.iter().enumerate() {
            let auth = with_auth.then_some(&c);
            let last = answers.last().unwrap().len();
            for cut in 0..=answers.iter().map(Vec::len).max().unwrap() {
                let mut h = make(&c);
                let k = cut.min(last);
                let consumed = if k == last { last } else { last - k };
                assert_eq!(
                    feed_cut(&mut h, auth, answers, cut),
                    Ok(Progress::Connected { consumed }),
                    "case {i} cut {cut}"
                );
                assert_eq!(h.bound(), *bound, "case {i} cut {cut}");
            }
        }
    }

    /// A cut answer completed in the same read as bytes that answer a message
    /// we have not sent yet: out of turn, whichever way it is cut.
    #[test]
    fn bytes_out_of_turn_after_a_cut_answer_fail() {
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), false);
        drain(&mut h);
        let both: Vec<u8> = [&[5u8, 0][..], &REPLY].concat();
        assert_eq!(h.on_input(&both[..1], None), Ok(Progress::Continue));
        assert_eq!(h.on_input(&both[1..], None), Err(HandshakeError::Unexpected));
        // The same inside a reply kept in the accumulator: the method and
        // the credentials' status with the reply, before the request went.
        let c = creds();
        let mut h = Socks5Handshake::connect(TARGET.parse().unwrap(), true);
        drain(&mut h);
        assert_eq!(h.on_input(&[5], Some(&c)), Ok(Progress::Continue));
        assert_eq!(h.on_input(&[2, 1, 0], Some(&c)), Err(HandshakeError::Unexpected));
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
