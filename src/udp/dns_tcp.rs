//! One DNS-over-TCP connection's bytes, sans-IO: queries framed out with
//! wire IDs of their own, answers cut back into datagrams with each
//! client's ID restored.
//!
//! Queries of many clients share one connection (pipelined, RFC 7766 §6.2.1),
//! and clients' IDs collide, so each query goes out with a wire ID unique on
//! the connection; the answer's wire ID finds the client and its own ID
//! again. Everything read here comes from a remote (the resolver, through an
//! exit that may itself be hostile), so every step is total: a frame too
//! short to hold a DNS header, an ID nobody asked with, a frame split at
//! any byte, a stream that never completes — each is a value, never a panic.
//!
//! ```text
//!   query(client, msg) ─► [len][wire id][msg[2..]] ─► out  (the worker writes it)
//!   bytes read ─► feed ─► next_answer ─► Answer { client, len }  (msg with the client's ID, in `out`)
//!                                   ├──► Stray       (too short for a header, or an ID not in flight)
//!                                   ├──► NeedMore    (a partial frame is kept)
//!                                   └──► Broken      (a zero-length frame: the stream is not DNS)
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use crate::wire::Parse;
use crate::wire::dns::{self, DnsFrameError};

/// Queries in flight on one connection; more are refused.
pub const MAX_INFLIGHT: usize = 1024;

/// A query waiting for its answer.
#[derive(Debug, Clone, Copy)]
struct Query {
    client: SocketAddr,
    /// The client's own ID, put back into the answer.
    id: u16,
    sent: Instant,
}

/// The queries in flight on one connection, by wire ID.
#[derive(Debug, Default)]
pub struct Inflight {
    by_id: HashMap<u16, Query>,
    /// Wire IDs in the order sent, for the answer timeout (answered ones
    /// are skipped lazily).
    order: VecDeque<(u16, Instant)>,
    next_id: u16,
}

impl Inflight {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Takes a query with the client's `id`; returns the wire ID to send it
    /// with, unique among those in flight (`None` when full).
    fn add(&mut self, client: SocketAddr, id: u16, now: Instant) -> Option<u16> {
        if self.by_id.len() >= MAX_INFLIGHT {
            return None;
        }
        while self.by_id.contains_key(&self.next_id) {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let wire = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.by_id.insert(wire, Query { client, id, sent: now });
        self.order.push_back((wire, now));
        Some(wire)
    }

    /// The client and its own ID for an answer with this wire ID.
    fn answer(&mut self, wire: u16) -> Option<(SocketAddr, u16)> {
        self.by_id.remove(&wire).map(|q| (q.client, q.id))
    }

    /// The send time of the oldest query still unanswered.
    pub fn oldest(&mut self) -> Option<Instant> {
        while let Some(&(id, sent)) = self.order.front() {
            if self.by_id.get(&id).is_some_and(|q| q.sent == sent) {
                return Some(sent);
            }
            self.order.pop_front();
        }
        None
    }
}

/// Why a query was not framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRefused {
    /// Not a DNS query (no whole header, the QR bit set, or too long).
    NotAQuery,
    /// [`MAX_INFLIGHT`] queries are waiting on this connection.
    Full,
}

/// What the answer stream gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// An answer for `client`: `out[..len]`, with the client's own ID.
    Answer { client: SocketAddr, len: usize },
    /// A whole frame nobody is waiting for (its query timed out, an ID not
    /// in flight, or too short to be a DNS message): dropped, the stream
    /// goes on.
    Stray,
    /// No whole frame yet: feed more bytes.
    NeedMore,
    /// The stream cannot be DNS over TCP (a zero-length frame): close it.
    Broken(DnsFrameError),
}

/// One connection's queries and answers.
#[derive(Debug, Default)]
pub struct DnsStream {
    pub inflight: Inflight,
    /// Answer bytes read and not yet cut into frames; `used` of them done.
    inbuf: Vec<u8>,
    used: usize,
}

impl DnsStream {
    /// Frames `query` of `client` with a wire ID of its own onto `out`.
    pub fn query(
        &mut self,
        client: SocketAddr,
        query: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), QueryRefused> {
        if !dns::is_query(query) {
            return Err(QueryRefused::NotAQuery);
        }
        let (Some(id), Ok(prefix), Some(rest)) =
            (dns::message_id(query), dns::encode_len(query.len()), query.get(2..))
        else {
            return Err(QueryRefused::NotAQuery);
        };
        let wire = self.inflight.add(client, id, now).ok_or(QueryRefused::Full)?;
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&wire.to_be_bytes());
        out.extend_from_slice(rest);
        Ok(())
    }

    /// Bytes the server sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
    }

    /// Bytes held for a frame not yet whole.
    pub fn buffered(&self) -> usize {
        self.inbuf.len() - self.used
    }

    /// The next whole answer, its client's ID restored, written to `out`
    /// (which must hold [`dns::MAX_MESSAGE`] bytes; a smaller one makes
    /// longer answers `Stray`).
    pub fn next_answer(&mut self, out: &mut [u8]) -> Next {
        let rest = self.inbuf.get(self.used..).unwrap_or_default();
        let (msg, len) = match dns::parse_frame(rest) {
            Ok(Parse::Done(msg, len)) => (msg, len),
            Ok(Parse::Incomplete) => {
                self.compact();
                return Next::NeedMore;
            }
            Err(e) => return Next::Broken(e),
        };
        self.used += len;
        if msg.len() < dns::HEADER_LEN {
            return Next::Stray;
        }
        let Some(wire) = dns::message_id(msg) else { return Next::Stray };
        let Some((client, id)) = self.inflight.answer(wire) else { return Next::Stray };
        let (Some(dst), Some(body)) = (out.get_mut(..msg.len()), msg.get(2..)) else {
            return Next::Stray;
        };
        let (head, tail) = dst.split_at_mut(2);
        head.copy_from_slice(&id.to_be_bytes());
        tail.copy_from_slice(body);
        Next::Answer { client, len: msg.len() }
    }

    /// Drops the frames already cut; frees the buffer when nothing is left.
    fn compact(&mut self) {
        if self.used >= self.inbuf.len() {
            self.inbuf = Vec::new();
        } else if self.used > 0 {
            self.inbuf.drain(..self.used);
        }
        self.used = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A query with `id`: a 12-byte header, QR clear, and a tail.
    fn query(id: u16, tail: &[u8]) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(tail);
        q
    }

    /// The server's answer to the framed query at the start of `sent`: the
    /// same message with QR set, framed.
    fn answer_to(sent: &[u8]) -> Vec<u8> {
        let mut a = sent.to_vec();
        a[4] |= 0x80;
        a
    }

    fn drain(s: &mut DnsStream) -> Vec<Next> {
        let mut out = vec![0u8; dns::MAX_MESSAGE];
        let mut v = Vec::new();
        loop {
            match s.next_answer(&mut out) {
                Next::NeedMore => return v,
                n @ Next::Broken(_) => {
                    v.push(n);
                    return v;
                }
                n => v.push(n),
            }
        }
    }

    #[test]
    fn colliding_ids_get_their_own_wire_ids_and_come_back() {
        let mut s = DnsStream::default();
        let t0 = Instant::now();
        let (a, b) = (addr("10.8.0.10:40000"), addr("10.8.0.11:40001"));
        let mut out = Vec::new();
        s.query(a, &query(0x1234, b"a"), t0, &mut out).unwrap();
        let first = out.len();
        s.query(b, &query(0x1234, b"b"), t0, &mut out).unwrap();
        assert_ne!(out[2..4], out[first + 2..first + 4], "the same client ID twice on one connection");
        // Answers out of order (RFC 7766 §7).
        s.feed(&answer_to(&out[first..]));
        s.feed(&answer_to(&out[..first]));
        let mut msg = vec![0u8; dns::MAX_MESSAGE];
        assert_eq!(s.next_answer(&mut msg), Next::Answer { client: b, len: 13 });
        assert_eq!(&msg[..2], &0x1234u16.to_be_bytes());
        assert_eq!(msg[12], b'b');
        assert_eq!(s.next_answer(&mut msg), Next::Answer { client: a, len: 13 });
        assert_eq!(msg[12], b'a');
        assert_eq!(s.next_answer(&mut msg), Next::NeedMore);
        assert!(s.inflight.is_empty());
        assert_eq!(s.buffered(), 0);
    }

    /// Issue 22: a 1-byte frame (`00 01 00`), and others too short to hold a
    /// header, are strays, not a crash; the stream goes on after them.
    #[test]
    fn hostile_frames_are_strays_or_a_broken_stream() {
        let mut s = DnsStream::default();
        let mut out = Vec::new();
        s.query(addr("10.8.0.10:1"), &query(7, b""), Instant::now(), &mut out).unwrap();
        for short in [&[0u8, 1, 0][..], &[0, 2, 0, 0], &[0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]] {
            s.feed(short);
            assert_eq!(drain(&mut s), vec![Next::Stray], "{short:?}");
        }
        // An ID nobody asked with: a stray too.
        s.feed(&answer_to(&[&[0u8, 12][..], &query(999, b"")[..]].concat()));
        assert_eq!(drain(&mut s), vec![Next::Stray]);
        // The real answer still finds its client.
        s.feed(&answer_to(&out));
        assert!(matches!(drain(&mut s)[..], [Next::Answer { len: 12, .. }]));
        // A zero-length frame: the stream is not DNS.
        s.feed(&[0, 0]);
        assert_eq!(drain(&mut s), vec![Next::Broken(DnsFrameError::ZeroLength)]);
    }

    #[test]
    fn a_stream_split_at_every_byte_gives_the_same_answers() {
        let t0 = Instant::now();
        let mut whole = DnsStream::default();
        let mut out = Vec::new();
        for i in 0..3u16 {
            whole.query(addr("10.8.0.10:1"), &query(i, &[i as u8; 5]), t0, &mut out).unwrap();
        }
        let answers = answer_to_all(&out);
        for cut in 0..=answers.len() {
            let mut s = DnsStream::default();
            let mut o = Vec::new();
            for i in 0..3u16 {
                s.query(addr("10.8.0.10:1"), &query(i, &[i as u8; 5]), t0, &mut o).unwrap();
            }
            s.feed(&answers[..cut]);
            let mut got = drain(&mut s);
            s.feed(&answers[cut..]);
            got.extend(drain(&mut s));
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert!(got.iter().all(|n| matches!(n, Next::Answer { len: 17, .. })), "cut at {cut}");
        }
    }

    /// Every framed query in `out`, answered in order.
    fn answer_to_all(out: &[u8]) -> Vec<u8> {
        let mut at = 0;
        let mut v = Vec::new();
        while let Ok(Parse::Done(_, n)) = dns::parse_frame(&out[at..]) {
            v.extend(answer_to(&out[at..at + n]));
            at += n;
        }
        v
    }

    #[test]
    fn what_is_not_a_query_is_refused_and_the_table_is_bounded() {
        let mut s = DnsStream::default();
        let t0 = Instant::now();
        let c = addr("10.8.0.10:1");
        let mut out = Vec::new();
        assert_eq!(s.query(c, &[0, 1], t0, &mut out), Err(QueryRefused::NotAQuery));
        let mut response = query(1, b"");
        response[2] |= 0x80;
        assert_eq!(s.query(c, &response, t0, &mut out), Err(QueryRefused::NotAQuery));
        assert!(out.is_empty());
        for _ in 0..MAX_INFLIGHT {
            s.query(c, &query(7, b""), t0, &mut out).unwrap();
        }
        assert_eq!(s.query(c, &query(7, b""), t0, &mut out), Err(QueryRefused::Full));
        assert_eq!(s.inflight.len(), MAX_INFLIGHT);
    }

    #[test]
    fn wire_ids_skip_those_in_flight() {
        let mut f = Inflight::default();
        let t0 = Instant::now();
        let c = addr("10.8.0.10:1");
        let ids: std::collections::HashSet<u16> =
            (0..MAX_INFLIGHT).map(|_| f.add(c, 7, t0).unwrap()).collect();
        assert_eq!(ids.len(), MAX_INFLIGHT);
        assert_eq!(f.add(c, 7, t0), None, "full");
        // Free one, wrap around: the freed ID is the first one free.
        f.answer(5).unwrap();
        f.next_id = 0;
        assert_eq!(f.add(c, 7, t0), Some(5));
    }

    #[test]
    fn the_oldest_unanswered_query_sets_the_timeout() {
        let mut f = Inflight::default();
        let t0 = Instant::now();
        let c = addr("10.8.0.10:1");
        let w0 = f.add(c, 1, t0).unwrap();
        let _w1 = f.add(c, 2, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(f.oldest(), Some(t0));
        f.answer(w0);
        assert_eq!(f.oldest(), Some(t0 + Duration::from_secs(1)));
    }
}
