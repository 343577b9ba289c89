//! DNS over TCP for tunnels without UDP (SOCKS5 `udp: false`).
//!
//! A container's datagram to port 53 becomes a framed query (RFC 1035
//! §4.2.2) on a TCP connection through the tunnel to the same destination;
//! each framed answer goes back to the container as a datagram from that
//! destination.
//!
//! Connections are pooled per (tunnel, DNS server) in the worker, not per
//! client socket: glibc asks from a new port for every lookup, and one
//! connection (and one SOCKS handshake) per lookup, held for the session's
//! idle time, would be one per query. Queries are pipelined on the pooled
//! connection; each gets a wire ID unique on it (clients' IDs collide), and
//! the answer's ID finds the client and its own ID again.
//!
//! ```text
//!   query ─► Connecting ──► Handshaking (CONNECT dst:53) ──► Open ──answers──► datagrams to the clients
//!             (queries queue in `out`)                         │
//!     oldest query unanswered for dns_answer_timeout_secs ─────┼─► closed: its queries dropped and
//!     EOF / error / idle for dns_idle_timeout_secs ────────────┘   counted; the next query opens a new one
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use mio::net::TcpStream;
use mio::{Interest, Token};
use socket2::SockRef;

use super::slab::{self, Kind};
use super::{Drive, WorkerLoop, auth_of, connect, drive_handshake, keepalive};
use crate::config::Tunnel;
use crate::stats::Counters;
use crate::upstream::{self, Handshake};
use crate::wire::Parse;
use crate::wire::dns;

/// Queries in flight on one connection; more are dropped and counted.
const MAX_INFLIGHT: usize = 1024;

/// The pool's key: the tunnel (by identity: a reloaded tunnel is another
/// one) and the DNS server the client asked.
pub(super) type PoolKey = (usize, SocketAddr);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Handshaking,
    Open,
}

/// A query waiting for its answer.
struct Query {
    client: SocketAddr,
    /// The client's own ID, put back into the answer.
    id: u16,
    sent: Instant,
}

pub(super) struct DnsConn {
    key: PoolKey,
    token: Token,
    pub(super) dst: SocketAddr,
    tunnel: Arc<Tunnel>,
    stream: TcpStream,
    stage: Stage,
    /// Until the tunnel is open.
    hs: Option<Box<Handshake>>,
    /// Framed queries not yet written.
    out: Vec<u8>,
    out_pos: usize,
    /// Queries sent or queued and not yet answered.
    inflight: Inflight,
    /// Bytes of answers read but not yet a whole frame.
    inbuf: Vec<u8>,
    started: Instant,
    last_used: Instant,
    /// When this connection's timer is due, if one is set.
    timer_at: Option<Instant>,
}

/// The queries in flight on one connection, by wire ID (sans-IO).
#[derive(Default)]
struct Inflight {
    by_id: HashMap<u16, Query>,
    /// Wire IDs in the order sent, for the answer timeout (answered ones
    /// are skipped lazily).
    order: VecDeque<(u16, Instant)>,
    next_id: u16,
}

impl Inflight {
    fn len(&self) -> usize {
        self.by_id.len()
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
    fn oldest(&mut self) -> Option<Instant> {
        while let Some(&(id, sent)) = self.order.front() {
            if self.by_id.get(&id).is_some_and(|q| q.sent == sent) {
                return Some(sent);
            }
            self.order.pop_front();
        }
        None
    }
}

impl WorkerLoop {
    /// Carries one query of `client` to `dst` over TCP, on the pooled
    /// connection for (tunnel, dst); dropped and counted if it cannot be.
    pub(super) fn dns_query(
        &mut self,
        _session: usize,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Arc<Tunnel>,
        q: &[u8],
    ) {
        if !dns::is_query(q) {
            Counters::inc(&self.counters.udp_drop_bad_header);
            return;
        }
        let key = (Arc::as_ptr(t) as usize, dst);
        let slot = match self.dns_pool.get(&key) {
            Some(&slot) => slot,
            None => match self.open_dns_conn(key, client, dst, t) {
                Some(slot) => slot,
                None => {
                    Counters::inc(&self.counters.udp_assoc_failed);
                    return;
                }
            },
        };
        let now = self.now;
        let Some(c) = self.udp.dns.get_mut(slot) else { return };
        let Ok(prefix) = dns::encode_len(q.len()) else {
            Counters::inc(&self.counters.udp_drop_bad_header);
            return;
        };
        let Some(wire) = c.inflight.add(client, u16::from_be_bytes([q[0], q[1]]), now) else {
            Counters::inc(&self.counters.udp_drop_pending);
            return;
        };
        c.last_used = now;
        c.out.extend_from_slice(&prefix);
        c.out.extend_from_slice(&wire.to_be_bytes());
        c.out.extend_from_slice(&q[2..]);
        let open = c.stage == Stage::Open;
        Counters::inc(&self.counters.dns_tcp_queries);
        Counters::inc(&self.counters.udp_dgrams_up);
        Counters::add(&self.counters.udp_bytes_up, q.len() as u64);
        self.dns_timer(slot, now + self.settings.udp.dns_answer_timeout);
        if open && self.flush_dns(slot).is_err() {
            self.close_dns(slot, "write error");
        }
    }

    /// Makes sure the connection's timer fires no later than `at`.
    fn dns_timer(&mut self, slot: usize, at: Instant) {
        let Some(c) = self.udp.dns.get_mut(slot) else { return };
        if c.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        c.timer_at = Some(at);
        self.timers.push(std::cmp::Reverse((at, c.token)));
    }

    fn open_dns_conn(
        &mut self,
        key: PoolKey,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Arc<Tunnel>,
    ) -> Option<usize> {
        let server = t.kind.server().and_then(|s| s.addr)?;
        // A resolver no exit can reach is asked at `dns.upstream`; the answers
        // still come from `dst`, the address the client asked.
        let hs = Box::new(upstream::for_tcp(&t.kind, self.settings.dns.target(dst))?);
        let stream = match connect(server, &t.kind) {
            Ok(s) => s,
            Err(e) => {
                debug!(target: "egressd::udp", "{client} -> dns {dst} via {}: {e}", t.name);
                return None;
            }
        };
        let conn = DnsConn {
            key,
            token: Token(0),
            dst,
            tunnel: Arc::clone(t),
            stream,
            stage: Stage::Connecting,
            hs: Some(hs),
            out: Vec::new(),
            out_pos: 0,
            inflight: Inflight::default(),
            inbuf: Vec::new(),
            started: self.now,
            last_used: self.now,
            timer_at: None,
        };
        let (slot, generation) = self.udp.dns.insert(conn);
        let token = slab::token(slot, generation, Kind::DnsTcp);
        let c = self.udp.dns.get_mut(slot).expect("just inserted");
        c.token = token;
        if self
            .poll
            .registry()
            .register(&mut c.stream, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.udp.dns.remove(slot);
            return None;
        }
        self.dns_pool.insert(key, slot);
        Counters::inc(&self.counters.dns_tcp_connections);
        self.dns_timer(slot, self.now + self.settings.tcp.connect_timeout);
        debug!(target: "egressd::udp", "dns {dst} via {}: new pooled TCP connection", t.name);
        Some(slot)
    }

    pub(super) fn on_dns_event(&mut self, slot: usize, ev: &mio::event::Event) {
        let scratch = &mut self.relay.scratch;
        let Some(c) = self.udp.dns.get_mut(slot) else { return };
        loop {
            match c.stage {
                Stage::Connecting => {
                    if !(ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
                        return;
                    }
                    if let Ok(Some(e)) | Err(e) = c.stream.take_error() {
                        let why = format!("connect: {e}");
                        return self.close_dns(slot, &why);
                    }
                    match c.stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::NotConnected => return,
                        Err(e) => {
                            let why = format!("connect: {e}");
                            return self.close_dns(slot, &why);
                        }
                    }
                    let _ = keepalive(&SockRef::from(&c.stream));
                    c.stage = Stage::Handshaking;
                }
                Stage::Handshaking => {
                    let Some(hs) = c.hs.as_mut() else { return self.close_dns(slot, "no handshake") };
                    match drive_handshake(&mut c.stream, hs, auth_of(&c.tunnel), scratch, true) {
                        Drive::Pending => return,
                        Drive::Failed(why, ..) => {
                            let why = format!("handshake: {why}");
                            return self.close_dns(slot, &why);
                        }
                        Drive::Done(extra) => {
                            c.inbuf.extend_from_slice(&scratch[extra]);
                            c.stage = Stage::Open;
                            c.hs = None;
                        }
                    }
                }
                Stage::Open => break,
            }
        }
        if self.flush_dns(slot).is_err() {
            return self.close_dns(slot, "write error");
        }
        self.read_dns(slot);
    }

    fn flush_dns(&mut self, slot: usize) -> std::io::Result<()> {
        let Some(c) = self.udp.dns.get_mut(slot) else { return Ok(()) };
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        c.out.clear();
        c.out_pos = 0;
        Ok(())
    }

    /// Reads answers and sends each back to the client as a datagram.
    fn read_dns(&mut self, slot: usize) {
        let now = self.now;
        loop {
            let Some(c) = self.udp.dns.get_mut(slot) else { return };
            let n = match c.stream.read(&mut self.relay.scratch) {
                Ok(0) => return self.close_dns(slot, "closed by the server"),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = format!("read: {e}");
                    return self.close_dns(slot, &why);
                }
            };
            c.inbuf.extend_from_slice(&self.relay.scratch[..n]);
            let dst = c.dst;
            let mut used = 0;
            loop {
                let c = self.udp.dns.get_mut(slot).expect("live");
                let (msg, len) = match dns::parse_frame(&c.inbuf[used..]) {
                    Ok(Parse::Done(msg, len)) => (msg, len),
                    Ok(Parse::Incomplete) => break,
                    Err(e) => {
                        let why = format!("bad answer framing: {e}");
                        return self.close_dns(slot, &why);
                    }
                };
                used += len;
                let wire = u16::from_be_bytes([msg[0], msg[1]]);
                let Some((client, id)) = c.inflight.answer(wire) else {
                    // Late (its query timed out) or not ours: nobody to give it to.
                    Counters::inc(&self.counters.udp_drop_bad_header);
                    continue;
                };
                // The client's own ID back in, in the scratch buffer (free
                // again: what was read is in `inbuf`).
                let out = &mut self.relay.scratch[..msg.len()];
                out.copy_from_slice(msg);
                out[..2].copy_from_slice(&id.to_be_bytes());
                c.last_used = now;
                let r = self.udp.replies.send(dst, client, out);
                let sent = out.len() as u64;
                self.count_reply(r, dst, client, sent);
                Counters::inc(&self.counters.dns_tcp_answers);
                self.udp.table.touch_inbound(&client, now);
            }
            let c = self.udp.dns.get_mut(slot).expect("live");
            c.inbuf.drain(..used);
            if c.inbuf.is_empty() {
                c.inbuf = Vec::new();
            }
        }
    }

    /// A DNS connection's timer: the connect/handshake deadline, the
    /// answer timeout of its oldest query, or its idle time.
    pub(super) fn expire_dns(&mut self, slot: usize) {
        let now = self.now;
        let (connect, answer, idle) = (
            self.settings.tcp.connect_timeout,
            self.settings.udp.dns_answer_timeout,
            self.settings.udp.dns_idle_timeout,
        );
        let Some(c) = self.udp.dns.get_mut(slot) else { return };
        c.timer_at = None;
        if c.stage != Stage::Open && c.started + connect <= now {
            return self.close_dns(slot, "no answer from the tunnel in time (connect_timeout_secs)");
        }
        let next = match c.inflight.oldest() {
            Some(sent) if sent + answer <= now => {
                Counters::add(&self.counters.dns_tcp_timeouts, c.inflight.len() as u64);
                return self.close_dns(slot, "a query unanswered for dns_answer_timeout_secs; replaced");
            }
            Some(sent) => sent + answer,
            None if c.last_used + idle <= now => return self.close_dns(slot, "idle"),
            None => c.last_used + idle,
        };
        let next = if c.stage == Stage::Open { next } else { next.min(c.started + connect) };
        self.dns_timer(slot, next);
    }

    pub(super) fn close_dns(&mut self, slot: usize, why: &str) {
        if let Some(c) = self.udp.dns.remove(slot) {
            debug!(target: "egressd::udp", "dns {} via {}: connection closed: {why}; {} queries unanswered",
                c.dst, c.tunnel.name, c.inflight.len());
            if self.dns_pool.get(&c.key) == Some(&slot) {
                self.dns_pool.remove(&c.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn colliding_ids_get_their_own_wire_ids_and_come_back() {
        let mut f = Inflight::default();
        let t0 = Instant::now();
        let a: SocketAddr = "10.8.0.10:40000".parse().unwrap();
        let b: SocketAddr = "10.8.0.11:40001".parse().unwrap();
        let wa = f.add(a, 0x1234, t0).unwrap();
        let wb = f.add(b, 0x1234, t0).unwrap();
        assert_ne!(wa, wb, "the same client ID twice on one connection");
        assert_eq!(f.answer(wb), Some((b, 0x1234)));
        assert_eq!(f.answer(wb), None, "answered once");
        assert_eq!(f.answer(wa), Some((a, 0x1234)));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn wire_ids_skip_those_in_flight_and_the_table_is_bounded() {
        let mut f = Inflight::default();
        let t0 = Instant::now();
        let c: SocketAddr = "10.8.0.10:1".parse().unwrap();
        let ids: std::collections::HashSet<u16> =
            (0..MAX_INFLIGHT).map(|_| f.add(c, 7, t0).unwrap()).collect();
        assert_eq!(ids.len(), MAX_INFLIGHT);
        assert_eq!(f.add(c, 7, t0), None, "full");
        // Free one, wrap around: the freed ID is the only one left to reuse.
        f.answer(5).unwrap();
        f.next_id = 0;
        assert_eq!(f.add(c, 7, t0), Some(5));
    }

    #[test]
    fn the_oldest_unanswered_query_sets_the_timeout() {
        let mut f = Inflight::default();
        let t0 = Instant::now();
        let c: SocketAddr = "10.8.0.10:1".parse().unwrap();
        let w0 = f.add(c, 1, t0).unwrap();
        let _w1 = f.add(c, 2, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(f.oldest(), Some(t0));
        f.answer(w0);
        assert_eq!(f.oldest(), Some(t0 + Duration::from_secs(1)));
    }
}
