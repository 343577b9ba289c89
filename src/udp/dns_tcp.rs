//! One DNS-over-TCP connection's bytes, sans-IO: queries framed out with
//! wire IDs of their own, answers cut back into datagrams with each
//! client's ID restored, and each query's own answer timeout.
//!
//! Queries of one source share one connection per resolver (pipelined,
//! RFC 7766 §6.2.1), and clients' IDs collide, so each query goes out with
//! a wire ID unique on the connection; the answer's wire ID finds the client
//! and its own ID again. Everything read here comes from a remote (the
//! resolver, through an exit that may itself be hostile), so every step is
//! total: a frame too short to hold a DNS header, an ID nobody asked with,
//! a frame split at any byte, a stream that never completes — each is a
//! value, never a panic.
//!
//! ```text
//!   query(client, msg) ─► [len][wire id][msg[2..]] ─► unwritten ─► wrote(n)  (the worker writes it)
//!     refused: NotAQuery, TooBig (> max_query), QueueFull (> max_queued unwritten), Full (1 024 in flight)
//!   bytes read ─► feed ─► next_answer ─► Answer { client, len }  (msg with the client's ID, in `out`)
//!                                   ├──► Stray       (too short for a header, or an ID not in flight)
//!                                   ├──► NeedMore    (a partial frame is kept)
//!                                   └──► Broken      (a zero-length frame: the stream is not DNS)
//!   expire(now, timeout) ─► Keep { late, next }  each query unanswered for `timeout` dropped alone
//!                       └─► Stalled { late, lost }  queries went late and the server answered
//!                                                   nothing for `timeout`: close the connection
//! ```
//!
//! [`DnsStream::cost`] is what the connection holds beyond its fixed size:
//! unwritten query bytes, [`QUERY_OVERHEAD`] per query in flight and the
//! answer bytes of a frame not yet whole; the worker counts it against the
//! source's pending budget. Buffers larger than a few hundred bytes are freed
//! when they empty, so an idle connection holds next to nothing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::Parse;
use crate::wire::dns::{self, DnsFrameError};

/// Queries in flight on one connection; more are refused.
pub const MAX_INFLIGHT: usize = 1024;

/// What a query in flight costs beyond its bytes: its record and its slots
/// in the tables (about 100 bytes; see the test `a_query_record_is_small`).
pub const QUERY_OVERHEAD: usize = 128;

/// Buffers (and tables) larger than this are freed when they empty.
const KEEP: usize = 512;

/// Answered entries `Inflight::order` may keep beyond twice the queries in
/// flight before it is swept.
const ORDER_SLACK: usize = 32;

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
    /// are skipped lazily; at most twice those in flight, plus
    /// `ORDER_SLACK`).
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
        // Answered queries behind a slow one stay in `order` until it goes;
        // past twice those in flight they are swept out (amortised: a sweep
        // removes more than half of what it walks).
        if self.order.len() > 2 * self.by_id.len() + ORDER_SLACK {
            let by_id = &self.by_id;
            self.order.retain(|&(id, sent)| by_id.get(&id).is_some_and(|q| q.sent == sent));
        }
        Some(wire)
    }

    /// The client and its own ID for an answer with this wire ID.
    fn answer(&mut self, wire: u16) -> Option<(SocketAddr, u16)> {
        let q = self.by_id.remove(&wire).map(|q| (q.client, q.id));
        self.trim();
        q
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

    /// Drops every query sent `timeout` or longer before `now`; how many.
    fn expire(&mut self, now: Instant, timeout: Duration) -> usize {
        let mut late = 0;
        while let Some(sent) = self.oldest() {
            if sent.checked_add(timeout).is_none_or(|due| due > now) {
                break;
            }
            if let Some((id, _)) = self.order.pop_front() {
                self.by_id.remove(&id);
                late += 1;
            }
        }
        self.trim();
        late
    }

    fn clear(&mut self) -> usize {
        let n = self.by_id.len();
        self.by_id.clear();
        self.order.clear();
        self.trim();
        n
    }

    /// Empty tables grown by a burst are freed.
    fn trim(&mut self) {
        if self.by_id.is_empty()
            && self.by_id.capacity() * std::mem::size_of::<(u16, Query)>()
                + self.order.capacity() * std::mem::size_of::<(u16, Instant)>()
                > KEEP
        {
            self.by_id = HashMap::new();
            self.order = VecDeque::new();
        }
    }
}

/// What one connection may hold (`udp.dns_max_query_bytes`,
/// `udp.dns_queue_bytes_per_connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_query: usize,
    pub max_queued: usize,
}

/// Why a query was not framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRefused {
    /// Not a DNS query (no whole header, the QR bit set, or too long to frame).
    NotAQuery,
    /// Longer than [`Caps::max_query`].
    TooBig,
    /// [`Caps::max_queued`] unwritten bytes would be exceeded.
    QueueFull,
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

/// What the answer timeout did (see [`DnsStream::expire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `late` queries dropped, each alone; the next one is due at `next`
    /// (`None`: nothing in flight).
    Keep { late: usize, next: Option<Instant> },
    /// `late` queries went late and the server has answered nothing for
    /// the timeout (bytes that never make an answer — a trickle, strays —
    /// do not count): it stopped answering (or reading). Close the connection;
    /// `lost` more queries were in flight on it (all dropped now).
    Stalled { late: usize, lost: usize },
}

/// One connection's queries and answers.
#[derive(Debug)]
pub struct DnsStream {
    pub inflight: Inflight,
    /// Framed queries; `out[out_pos..]` not yet written.
    out: Vec<u8>,
    out_pos: usize,
    /// Answer bytes read and not yet cut into frames; `used` of them done.
    inbuf: Vec<u8>,
    used: usize,
    /// When the server last answered a query in flight (or the stream
    /// began, or opened), and when it last sent bytes.
    heard: Instant,
    fed_at: Instant,
    /// Queries went late since the server last answered, before it had been
    /// silent for the timeout (they were sent while the tunnel opened): the
    /// connection is judged again once it has been (see `expire`).
    late_unheard: bool,
}

impl DnsStream {
    pub fn new(now: Instant) -> DnsStream {
        DnsStream {
            inflight: Inflight::default(),
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            used: 0,
            heard: now,
            fed_at: now,
            late_unheard: false,
        }
    }

    /// What framing a query of `len` bytes adds to [`cost`](Self::cost).
    pub fn cost_of(len: usize) -> usize {
        len + dns::PREFIX_LEN + QUERY_OVERHEAD
    }

    /// What the connection holds beyond its fixed size, in bytes: unwritten
    /// queries, [`QUERY_OVERHEAD`] per query in flight, a partial answer.
    pub fn cost(&self) -> usize {
        self.unwritten().len() + self.inflight.len() * QUERY_OVERHEAD + self.buffered()
    }

    /// Frames `query` of `client` with a wire ID of its own, to be written.
    pub fn query(
        &mut self,
        client: SocketAddr,
        query: &[u8],
        now: Instant,
        caps: Caps,
    ) -> Result<(), QueryRefused> {
        if query.len() > caps.max_query {
            return Err(QueryRefused::TooBig);
        }
        if !dns::is_query(query) {
            return Err(QueryRefused::NotAQuery);
        }
        let (Some(id), Ok(prefix), Some(rest)) =
            (dns::message_id(query), dns::encode_len(query.len()), query.get(2..))
        else {
            return Err(QueryRefused::NotAQuery);
        };
        if self.unwritten().len() + dns::PREFIX_LEN + query.len() > caps.max_queued {
            return Err(QueryRefused::QueueFull);
        }
        let wire = self.inflight.add(client, id, now).ok_or(QueryRefused::Full)?;
        // What was written is dropped before the buffer grows past twice
        // what is still to write.
        if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        self.out.extend_from_slice(&prefix);
        self.out.extend_from_slice(&wire.to_be_bytes());
        self.out.extend_from_slice(rest);
        Ok(())
    }

    /// The framed queries not yet written.
    pub fn unwritten(&self) -> &[u8] {
        self.out.get(self.out_pos..).unwrap_or_default()
    }

    /// `n` bytes of [`unwritten`](Self::unwritten) were written.
    pub fn wrote(&mut self, n: usize) {
        self.out_pos = self.out_pos.saturating_add(n).min(self.out.len());
        if self.out_pos == self.out.len() {
            empty(&mut self.out);
            self.out_pos = 0;
        }
    }

    /// The tunnel is open at `now` (the exit finished its handshake): the
    /// server's silence counts from here.
    pub fn opened(&mut self, now: Instant) {
        self.heard = now;
    }

    /// Bytes the server sent at `now`.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) {
        self.inbuf.extend_from_slice(bytes);
        self.fed_at = now;
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
        self.heard = self.fed_at;
        self.late_unheard = false;
        Next::Answer { client, len: msg.len() }
    }

    /// Drops each query unanswered for `timeout` at `now`, on its own: the
    /// others on the connection go on. Only when the server has also
    /// answered nothing for that long is the connection done for
    /// ([`Expiry::Stalled`]).
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Expiry {
        let late = self.inflight.expire(now, timeout);
        self.late_unheard |= late > 0;
        let silent_until = self.heard.checked_add(timeout);
        if self.late_unheard && silent_until.is_some_and(|t| t <= now) {
            let lost = self.inflight.clear();
            self.late_unheard = false;
            return Expiry::Stalled { late, lost };
        }
        let next = self.inflight.oldest().and_then(|t| t.checked_add(timeout));
        // Late queries and a server silent since less than the timeout (the
        // tunnel opened after they were queued): judged again when it has
        // been silent that long, so a silent resolver does not keep its
        // connection until idle and lose the next lookups too.
        let recheck = if self.late_unheard { silent_until } else { None };
        let next = match (next, recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Expiry::Keep { late, next }
    }

    /// Drops the frames already cut; frees a buffer grown past what it holds.
    fn compact(&mut self) {
        if self.used >= self.inbuf.len() {
            empty(&mut self.inbuf);
        } else if self.used > 0 {
            self.inbuf.drain(..self.used);
            if self.inbuf.capacity() > KEEP.max(2 * self.inbuf.len()) {
                self.inbuf.shrink_to(KEEP.max(self.inbuf.len()));
            }
        }
        self.used = 0;
    }
}

/// Empties a buffer, freeing it when it grew past `KEEP`.
fn empty(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps { max_query: dns::MAX_MESSAGE, max_queued: usize::MAX };
    const S: Duration = Duration::from_secs(1);

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

    /// Takes everything framed so far, as the worker's write would.
    fn take(s: &mut DnsStream) -> Vec<u8> {
        let v = s.unwritten().to_vec();
        s.wrote(v.len());
        v
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
        let t0 = Instant::now();
        let mut s = DnsStream::new(t0);
        let (a, b) = (addr("10.8.0.10:40000"), addr("10.8.0.10:40001"));
        s.query(a, &query(0x1234, b"a"), t0, CAPS).unwrap();
        let first = s.unwritten().len();
        s.query(b, &query(0x1234, b"b"), t0, CAPS).unwrap();
        let out = take(&mut s);
        assert_ne!(out[2..4], out[first + 2..first + 4], "the same client ID twice on one connection");
        // Answers out of order (RFC 7766 §7).
        s.feed(&answer_to(&out[first..]), t0);
        s.feed(&answer_to(&out[..first]), t0);
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
        let t0 = Instant::now();
        let mut s = DnsStream::new(t0);
        s.query(addr("10.8.0.10:1"), &query(7, b""), t0, CAPS).unwrap();
        let out = take(&mut s);
        for short in [&[0u8, 1, 0][..], &[0, 2, 0, 0], &[0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]] {
            s.feed(short, t0);
            assert_eq!(drain(&mut s), vec![Next::Stray], "{short:?}");
        }
        // An ID nobody asked with: a stray too.
        s.feed(&answer_to(&[&[0u8, 12][..], &query(999, b"")[..]].concat()), t0);
        assert_eq!(drain(&mut s), vec![Next::Stray]);
        // The real answer still finds its client.
        s.feed(&answer_to(&out), t0);
        assert!(matches!(drain(&mut s)[..], [Next::Answer { len: 12, .. }]));
        // A zero-length frame: the stream is not DNS.
        s.feed(&[0, 0], t0);
        assert_eq!(drain(&mut s), vec![Next::Broken(DnsFrameError::ZeroLength)]);
    }

    #[test]
    fn a_stream_split_at_every_byte_gives_the_same_answers() {
        let t0 = Instant::now();
        let mut whole = DnsStream::new(t0);
        for i in 0..3u16 {
            whole.query(addr("10.8.0.10:1"), &query(i, &[i as u8; 5]), t0, CAPS).unwrap();
        }
        let answers = answer_to_all(&take(&mut whole));
        for cut in 0..=answers.len() {
            let mut s = DnsStream::new(t0);
            for i in 0..3u16 {
                s.query(addr("10.8.0.10:1"), &query(i, &[i as u8; 5]), t0, CAPS).unwrap();
            }
            take(&mut s);
            s.feed(&answers[..cut], t0);
            let mut got = drain(&mut s);
            s.feed(&answers[cut..], t0);
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
        let t0 = Instant::now();
        let mut s = DnsStream::new(t0);
        let c = addr("10.8.0.10:1");
        assert_eq!(s.query(c, &[0, 1], t0, CAPS), Err(QueryRefused::NotAQuery));
        let mut response = query(1, b"");
        response[2] |= 0x80;
        assert_eq!(s.query(c, &response, t0, CAPS), Err(QueryRefused::NotAQuery));
        assert!(s.unwritten().is_empty());
        for _ in 0..MAX_INFLIGHT {
            s.query(c, &query(7, b""), t0, CAPS).unwrap();
        }
        assert_eq!(s.query(c, &query(7, b""), t0, CAPS), Err(QueryRefused::Full));
        assert_eq!(s.inflight.len(), MAX_INFLIGHT);
    }

    /// Issue 23: a query longer than the cap, and one the connection's
    /// queue of unwritten bytes cannot take, are refused; what the stream
    /// holds is what `cost` says, and goes back to nothing.
    #[test]
    fn size_and_queue_caps_and_what_a_connection_costs() {
        let t0 = Instant::now();
        let mut s = DnsStream::new(t0);
        let c = addr("10.8.0.10:1");
        let caps = Caps { max_query: 100, max_queued: 250 };
        assert_eq!(s.query(c, &query(1, &[0; 89]), t0, caps), Err(QueryRefused::TooBig));
        assert_eq!(s.cost(), 0);
        s.query(c, &query(1, &[0; 88]), t0, caps).unwrap();
        s.query(c, &query(2, &[0; 88]), t0, caps).unwrap();
        assert_eq!(s.cost(), 2 * DnsStream::cost_of(100));
        // 204 unwritten: a third (102) would pass 250.
        assert_eq!(s.query(c, &query(3, &[0; 88]), t0, caps), Err(QueryRefused::QueueFull));
        // Written in part: room again once enough is gone.
        s.wrote(150);
        assert_eq!(s.cost(), 54 + 2 * QUERY_OVERHEAD);
        s.query(c, &query(3, &[0; 88]), t0, caps).unwrap();
        let rest = take(&mut s);
        assert_eq!(rest.len(), 54 + 102);
        assert_eq!(s.cost(), 3 * QUERY_OVERHEAD);
        // A partial answer is held (and counted) until it is whole.
        s.feed(&[0, 100, 1, 2, 3], t0);
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(s.cost(), 3 * QUERY_OVERHEAD + 5);
        // All three late, nothing heard for the timeout: the connection is done.
        assert_eq!(s.expire(t0 + 10 * S, S), Expiry::Stalled { late: 3, lost: 0 });
        assert_eq!(s.cost(), 5);
    }

    #[test]
    fn buffers_grown_by_a_burst_are_freed_when_empty() {
        let t0 = Instant::now();
        let mut s = DnsStream::new(t0);
        let c = addr("10.8.0.10:1");
        for i in 0..200 {
            s.query(c, &query(i, &[0; 100]), t0, CAPS).unwrap();
        }
        let out = take(&mut s);
        assert_eq!(s.out.capacity(), 0, "written: freed");
        s.feed(&answer_to_all(&out), t0);
        assert_eq!(drain(&mut s).len(), 200);
        assert_eq!((s.inbuf.capacity(), s.inflight.by_id.capacity(), s.inflight.order.capacity()), (0, 0, 0));
        // Small ones are kept: no allocation per query in the common case.
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        let small = take(&mut s);
        assert!(s.out.capacity() > 0);
        s.feed(&answer_to(&small), t0);
        assert_eq!(drain(&mut s).len(), 1);
        assert!(s.inbuf.capacity() > 0);
    }

    /// Issue 23: a query unanswered for the timeout is dropped alone; the
    /// others on the connection are still answered.
    #[test]
    fn a_late_query_is_dropped_alone() {
        let t0 = Instant::now();
        let mut s = DnsStream::new(t0);
        let (slow, other) = (addr("10.8.0.10:1"), addr("10.8.0.10:2"));
        s.query(slow, &query(1, b"slow"), t0, CAPS).unwrap();
        let slow_q = take(&mut s);
        assert_eq!(s.expire(t0 + S, 5 * S), Expiry::Keep { late: 0, next: Some(t0 + 5 * S) });
        let mut answered = 0;
        for i in 1..=10u32 {
            let at = t0 + i * S;
            s.query(other, &query(100 + i as u16, b""), at, CAPS).unwrap();
            let q = take(&mut s);
            if i == 5 {
                // The slow one goes late at 5 s, alone; the connection is
                // judged again 5 s after the server's last answer (4.5 s),
                // should it answer nothing more.
                assert_eq!(s.expire(at, 5 * S), Expiry::Keep { late: 1, next: Some(at + 5 * S - S / 2) });
            }
            s.feed(&answer_to(&q), at + S / 2);
            answered += drain(&mut s)
                .iter()
                .filter(|n| matches!(n, Next::Answer { client, .. } if *client == other))
                .count();
        }
        assert_eq!(answered, 10);
        // Its answer, if it ever comes, is a stray.
        s.feed(&answer_to(&slow_q), t0 + 11 * S);
        assert_eq!(drain(&mut s), vec![Next::Stray]);
    }

    /// A server that answers nothing while queries go late is done for; one
    /// that answers others is not.
    #[test]
    fn queries_late_and_nothing_heard_is_a_stall() {
        let t0 = Instant::now();
        let c = addr("10.8.0.10:1");
        let mut s = DnsStream::new(t0);
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        s.query(c, &query(2, b""), t0 + 3 * S, CAPS).unwrap();
        assert_eq!(s.expire(t0 + 5 * S, 5 * S), Expiry::Stalled { late: 1, lost: 1 });
        assert!(s.inflight.is_empty());
        // Another query answered 4 s ago: only the late query goes.
        let mut s = DnsStream::new(t0);
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        take(&mut s);
        s.query(c, &query(9, b""), t0, CAPS).unwrap();
        let q9 = take(&mut s);
        s.feed(&answer_to(&q9), t0 + S);
        assert!(matches!(drain(&mut s)[..], [Next::Answer { .. }]));
        s.query(c, &query(2, b""), t0 + 3 * S, CAPS).unwrap();
        // (judged again at 6 s, 5 s after that answer, unless the server answers meanwhile)
        assert_eq!(s.expire(t0 + 5 * S, 5 * S), Expiry::Keep { late: 1, next: Some(t0 + 6 * S) });
        // The tunnel opened 4 s ago (a slow handshake): the silence counts
        // from then, and the connection is judged again when the server has
        // been silent the whole timeout (issue 25: it used to stay until
        // idle and lose the next lookups too).
        let mut s = DnsStream::new(t0);
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        s.opened(t0 + S);
        assert_eq!(s.expire(t0 + 5 * S, 5 * S), Expiry::Keep { late: 1, next: Some(t0 + 6 * S) });
        assert_eq!(s.expire(t0 + 6 * S, 5 * S), Expiry::Stalled { late: 0, lost: 0 });
        // The same, but the server answers a later query meanwhile: kept.
        let mut s = DnsStream::new(t0);
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        take(&mut s);
        s.opened(t0 + S);
        assert_eq!(s.expire(t0 + 5 * S, 5 * S), Expiry::Keep { late: 1, next: Some(t0 + 6 * S) });
        s.query(c, &query(2, b""), t0 + 5 * S, CAPS).unwrap();
        let q2 = take(&mut s);
        s.feed(&answer_to(&q2), t0 + 5 * S + S / 2);
        assert!(matches!(drain(&mut s)[..], [Next::Answer { .. }]));
        assert_eq!(s.expire(t0 + 6 * S, 5 * S), Expiry::Keep { late: 0, next: None });
        // Bytes that never make an answer do not keep it: a trickle of a
        // frame that never completes, or stray frames.
        let mut s = DnsStream::new(t0);
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        take(&mut s);
        s.feed(&[0, 100], t0);
        for i in 1..=16u32 {
            s.feed(&[0], t0 + i * S / 4);
            assert_eq!(drain(&mut s), vec![]);
        }
        assert_eq!(s.expire(t0 + 5 * S, 5 * S), Expiry::Stalled { late: 1, lost: 0 });
        let mut s = DnsStream::new(t0);
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        take(&mut s);
        s.feed(&answer_to(&[&[0u8, 12][..], &query(999, b"")[..]].concat()), t0 + 4 * S);
        assert_eq!(drain(&mut s), vec![Next::Stray]);
        assert_eq!(s.expire(t0 + 5 * S, 5 * S), Expiry::Stalled { late: 1, lost: 0 });
        // Nothing in flight, nothing late: no stall, however long the silence.
        let mut s = DnsStream::new(t0);
        assert_eq!(s.expire(t0 + 3600 * S, 5 * S), Expiry::Keep { late: 0, next: None });
        // A timeout too large for `Instant` never expires anything.
        s.query(c, &query(1, b""), t0, CAPS).unwrap();
        assert_eq!(s.expire(t0 + 3600 * S, Duration::MAX), Expiry::Keep { late: 0, next: None });
    }

    /// What `QUERY_OVERHEAD` stands for: a record in the ID table (at its
    /// load factor, with a control byte) and one in the send order.
    #[test]
    fn a_query_record_is_small() {
        let by_id = (std::mem::size_of::<(u16, Query)>() + 1) * 8 / 7;
        // Up to two entries a query in the send order (see `add`).
        let order = 2 * std::mem::size_of::<(u16, Instant)>();
        assert!(by_id + order <= QUERY_OVERHEAD, "{by_id} + {order}");
    }

    /// Answered queries behind one that is never answered do not pile up
    /// in the send order: it stays within twice those in flight.
    #[test]
    fn the_send_order_stays_bounded_behind_a_slow_query() {
        let mut f = Inflight::default();
        let t0 = Instant::now();
        let c = addr("10.8.0.10:1");
        let slow = f.add(c, 1, t0).unwrap();
        for i in 0..10_000u32 {
            let w = f.add(c, 2, t0 + Duration::from_micros(u64::from(i))).unwrap();
            f.answer(w).unwrap();
            assert!(f.order.len() <= 2 * (f.len() + 1) + ORDER_SLACK, "{i}: {}", f.order.len());
        }
        assert_eq!(f.oldest(), Some(t0), "the slow one still sets the timeout");
        assert_eq!(f.expire(t0 + Duration::from_secs(1), Duration::from_secs(1)), 1);
        assert!(f.answer(slow).is_none());
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
