//! DNS over TCP for tunnels without UDP (SOCKS5 `udp: false`).
//!
//! A container's datagram to port 53 becomes a framed query (RFC 1035
//! §4.2.2) on a TCP connection through the tunnel to the same destination;
//! each framed answer goes back to the container as a datagram from that
//! destination.
//!
//! Connections are pooled per (tunnel, source address, DNS server) in the
//! worker. Not per client socket: glibc asks from a new port for every
//! lookup, and one connection (and one SOCKS handshake) per lookup would be
//! one per query; a source's queries are pipelined on its connection, each
//! with a wire ID unique on it (clients' IDs collide), and the answer's ID
//! finds the client and its own ID again. And not shared between sources
//! (issue 23): a source's flood, its full queue, its slow or hostile
//! resolver and its late queries then touch only its own connections, and
//! each connection is counted whole against its one source's pending budget
//! (`Udp::reserve_pending`, shared with the UDP associations): its fixed
//! [`DNS_CONN_COST`] plus what its stream holds ([`DnsStream::cost`]:
//! unwritten queries, queries in flight, a partial answer). Opening one also
//! takes a token of the source's new-session bucket.
//!
//! ```text
//!   query ─► size ≤ dns_max_query_bytes? ─► pooled connection of (tunnel, source, dst)?
//!              │ no: dropped                   │ none: a token of the source's bucket and
//!              │ (dns_tcp_drop_too_big)        │ DNS_CONN_COST of its budget, else dropped
//!              ▼                               ▼ (udp_drop_source_rate, udp_drop_pending_bytes)
//!   its bytes from the source's budget ─► Connecting ──► Handshaking (CONNECT dst:53) ──► Open ──answers──► datagrams
//!     (else udp_drop_pending_bytes;        (queries wait unwritten, ≤ dns_queue_bytes_per_connection,
//!      queue full: dns_tcp_drop_queue_full)  else dns_tcp_drop_queue_full)
//!   a query unanswered for dns_answer_timeout_secs ──► dropped alone (dns_tcp_timeouts); the rest go on
//!   queries late and no answer from the server for dns_answer_timeout_secs ──► closed (dns_tcp_stalled)
//!   not open within connect_timeout_secs / EOF / error / idle dns_idle_timeout_secs ──► closed;
//!   the next query opens a new one. Whatever a connection held goes back to the budget when it closes.
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use socket2::SockRef;

use super::connect::{Connect, connect_result};
use super::slab::{self, Kind};
use super::{Drive, WorkerLoop, auth_of, connect, drive_handshake, keepalive};
use crate::config::Tunnel;
use crate::stats::{Counters, Tally};
use crate::udp::Admit;
use crate::udp::dns_tcp::{Caps, DnsStream, Expiry, Next, QueryRefused};
use crate::upstream::{self, Handshake};
use crate::wire::dns;

/// The pool's key: the tunnel (by identity: a reloaded tunnel is another
/// one), the source address whose queries it carries, and the DNS server
/// the client asked.
pub(super) type PoolKey = (usize, IpAddr, SocketAddr);

/// What a connection costs its source's pending budget besides its
/// stream's bytes: the connection itself, its handshake while it lasts,
/// its pool entry and the capacity its emptied buffers keep (see the test
/// `a_connection_is_within_its_cost`).
pub(super) const DNS_CONN_COST: usize = 3072;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Handshaking,
    Open,
}

pub(super) struct DnsConn {
    key: PoolKey,
    token: Token,
    pub(super) dst: SocketAddr,
    tunnel: Arc<Tunnel>,
    /// The tunnel's and the route source's counters (of the session that
    /// opened it: one source, one tunnel).
    tc: Tally,
    stream: TcpStream,
    stage: Stage,
    /// Until the tunnel is open.
    hs: Option<Box<Handshake>>,
    /// Queries to write, queries in flight, answers read (sans-IO, see
    /// `udp::dns_tcp`).
    stream_state: DnsStream,
    /// Bytes of the source's pending budget this connection holds: always
    /// `DNS_CONN_COST + stream_state.cost()` once settled.
    held: usize,
    started: Instant,
    last_used: Instant,
    /// When this connection's timer is due, if one is set.
    timer_at: Option<Instant>,
}

/// Why a query was not carried: each kind's counter and log text, in one
/// place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DnsRefused {
    TooBig,
    NotAQuery,
    Rate,
    Budget,
    QueueFull,
    Open,
}

impl DnsRefused {
    /// One warning slot per kind: `Open` is the last variant.
    pub(super) const COUNT: usize = DnsRefused::Open as usize + 1;

    fn counter(self, c: &Counters) -> &AtomicU64 {
        match self {
            DnsRefused::TooBig => &c.dns_tcp_drop_too_big,
            DnsRefused::NotAQuery => &c.udp_drop_bad_header,
            DnsRefused::Rate => &c.udp_drop_source_rate,
            DnsRefused::Budget => &c.udp_drop_pending_bytes,
            DnsRefused::QueueFull => &c.dns_tcp_drop_queue_full,
            DnsRefused::Open => &c.udp_assoc_failed,
        }
    }

    fn why(self) -> &'static str {
        match self {
            DnsRefused::TooBig => "longer than udp.dns_max_query_bytes (counted: dns_tcp_drop_too_big)",
            DnsRefused::NotAQuery => "not a DNS query (counted: udp_drop_bad_header)",
            DnsRefused::Rate => {
                "a new connection, and the source is over new_sessions_per_source_per_sec (counted: udp_drop_source_rate)"
            }
            DnsRefused::Budget => {
                "the source's (or the worker's) pending bytes are spent (counted: udp_drop_pending_bytes)"
            }
            DnsRefused::QueueFull => {
                "its connection holds udp.dns_queue_bytes_per_connection unwritten or 1024 queries in flight \
                 (counted: dns_tcp_drop_queue_full)"
            }
            DnsRefused::Open => "no connection could be opened (counted: udp_assoc_failed)",
        }
    }

    /// A flood's refusals name the source, so the fronts shed it first
    /// when the workers fall behind (see `heavy`).
    fn names_source(self) -> bool {
        self != DnsRefused::Open
    }
}

impl From<QueryRefused> for DnsRefused {
    fn from(r: QueryRefused) -> DnsRefused {
        match r {
            QueryRefused::NotAQuery => DnsRefused::NotAQuery,
            QueryRefused::TooBig => DnsRefused::TooBig,
            QueryRefused::QueueFull | QueryRefused::Full => DnsRefused::QueueFull,
        }
    }
}

impl WorkerLoop {
    /// Carries one query of `client` (of session `session`) to `dst` over
    /// TCP, on the source's pooled connection for (tunnel, dst); dropped and
    /// counted if it cannot be.
    pub(super) fn dns_query(
        &mut self,
        session: usize,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Arc<Tunnel>,
        q: &[u8],
    ) {
        let now = self.now;
        let u = &self.settings.udp;
        let caps = Caps { max_query: u.dns_max_query_bytes, max_queued: u.dns_queue_bytes_per_connection };
        if q.len() > caps.max_query {
            return self.refuse_dns(session, client, dst, t, DnsRefused::TooBig);
        }
        if !dns::is_query(q) {
            return self.refuse_dns(session, client, dst, t, DnsRefused::NotAQuery);
        }
        let key = (Arc::as_ptr(t) as usize, client.ip(), dst);
        let slot = match self.dns_pool.get(&key) {
            Some(&slot) => slot,
            None => match self.open_dns_conn(session, key, client, dst, t) {
                Ok(slot) => slot,
                Err(why) => return self.refuse_dns(session, client, dst, t, why),
            },
        };
        let cost = DnsStream::cost_of(q.len());
        if !self.udp.reserve_pending(client.ip(), cost) {
            return self.refuse_dns(session, client, dst, t, DnsRefused::Budget);
        }
        let Some(c) = self.udp.dns.get_mut(slot) else {
            self.udp.release_pending(client.ip(), cost);
            return;
        };
        if let Err(e) = c.stream_state.query(client, q, now, caps) {
            self.udp.release_pending(client.ip(), cost);
            return self.refuse_dns(session, client, dst, t, e.into());
        }
        c.held += cost;
        c.last_used = now;
        c.tc.inc_all(&self.counters, |c| &c.udp_dgrams_up);
        c.tc.add_all(&self.counters, |c| &c.udp_bytes_up, q.len() as u64);
        let open = c.stage == Stage::Open;
        Counters::inc(&self.counters.dns_tcp_queries);
        self.dns_timer(slot, now + self.settings.udp.dns_answer_timeout);
        if open && self.flush_dns(slot).is_err() {
            self.close_dns(slot, "write error");
        }
    }

    /// Counts a refused query (for the process, and for the tunnel and
    /// route source of its session), names its source when it is a flood's,
    /// and warns once a minute per kind.
    fn refuse_dns(
        &mut self,
        session: usize,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Tunnel,
        why: DnsRefused,
    ) {
        self.count_session(session, |c| why.counter(c));
        if why.names_source() {
            self.udp.over_limit(client.ip(), self.now);
        }
        match self.udp.dns_log[why as usize].due(self.now) {
            Some(n) => warn!(target: "egressd::udp", "{client} -> dns {dst} via {}: query dropped: {}{}",
                t.name, why.why(), crate::lograte::more(n)),
            None => debug!(target: "egressd::udp", "{client} -> dns {dst} via {}: query dropped: {}",
                t.name, why.why()),
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

    /// A new pooled connection for `client`'s source: a token of its
    /// bucket and [`DNS_CONN_COST`] of its budget first.
    fn open_dns_conn(
        &mut self,
        session: usize,
        key: PoolKey,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Arc<Tunnel>,
    ) -> Result<usize, DnsRefused> {
        let Some(tc) = self.udp.session_tally(session).cloned() else { return Err(DnsRefused::Open) };
        if self.udp.table.admit(client.ip(), self.now) == Admit::OverRate {
            return Err(DnsRefused::Rate);
        }
        if !self.udp.reserve_pending(client.ip(), DNS_CONN_COST) {
            return Err(DnsRefused::Budget);
        }
        let slot = self.connect_dns(key, client, dst, t, tc);
        if slot.is_none() {
            self.udp.release_pending(client.ip(), DNS_CONN_COST);
        }
        slot.ok_or(DnsRefused::Open)
    }

    fn connect_dns(
        &mut self,
        key: PoolKey,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Arc<Tunnel>,
        tc: Tally,
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
            tc,
            stream,
            stage: Stage::Connecting,
            hs: Some(hs),
            stream_state: DnsStream::new(self.now),
            held: DNS_CONN_COST,
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
        c.tc.inc_all(&self.counters, |c| &c.dns_tcp_connections);
        self.dns_timer(slot, self.now + self.settings.tcp.connect_timeout);
        debug!(target: "egressd::udp", "{client} -> dns {dst} via {}: new pooled TCP connection", t.name);
        Some(slot)
    }

    pub(super) fn on_dns_event(&mut self, slot: usize, ev: &mio::event::Event) {
        let now = self.now;
        let scratch = &mut self.relay.scratch;
        let Some(c) = self.udp.dns.get_mut(slot) else { return };
        loop {
            match c.stage {
                Stage::Connecting => {
                    match connect_result(&c.stream, ev) {
                        Connect::Pending => return,
                        Connect::Failed(e) | Connect::Unknown(e) => {
                            let why = format!("connect: {e}");
                            return self.close_dns(slot, &why);
                        }
                        Connect::Connected => {}
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
                            c.stream_state.opened(now);
                            c.stream_state.feed(scratch.get(extra).unwrap_or_default(), now);
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

    /// Writes what the connection has queued, then gives back to the
    /// budget what was written.
    fn flush_dns(&mut self, slot: usize) -> std::io::Result<()> {
        let Some(c) = self.udp.dns.get_mut(slot) else { return Ok(()) };
        loop {
            let out = c.stream_state.unwritten();
            if out.is_empty() {
                break;
            }
            match c.stream.write(out) {
                Ok(0) => break,
                Ok(n) => c.stream_state.wrote(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.settle_dns(slot);
        Ok(())
    }

    /// Brings the budget the connection holds in line with what it holds
    /// now; false (nothing changed) when more is needed and the source's or
    /// the worker's budget cannot give it.
    fn settle_dns(&mut self, slot: usize) -> bool {
        let Some(c) = self.udp.dns.get(slot) else { return true };
        let (want, held, source) = (DNS_CONN_COST + c.stream_state.cost(), c.held, c.key.1);
        if want > held && !self.udp.reserve_pending(source, want - held) {
            return false;
        }
        if want < held {
            self.udp.release_pending(source, held - want);
        }
        if let Some(c) = self.udp.dns.get_mut(slot) {
            c.held = want;
        }
        true
    }

    /// Reads answers and sends each back to the client as a datagram.
    fn read_dns(&mut self, slot: usize) {
        loop {
            let now = self.now;
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
            c.stream_state.feed(self.relay.scratch.get(..n).unwrap_or_default(), now);
            if let Err(why) = self.answer_dns(slot) {
                return self.close_dns(slot, &why);
            }
            // A partial answer held is the source's too.
            if !self.settle_dns(slot) {
                match self.udp.dns.get(slot) {
                    Some(c) => c.tc.inc_all(&self.counters, |c| &c.udp_drop_pending_bytes),
                    None => Counters::inc(&self.counters.udp_drop_pending_bytes),
                }
                return self.close_dns(slot, "a partial answer larger than the source's pending bytes allow");
            }
        }
    }

    /// Sends every whole answer read so far to its client (from the address
    /// it asked); answers nobody waits for are counted and dropped.
    fn answer_dns(&mut self, slot: usize) -> Result<(), String> {
        let now = self.now;
        loop {
            let Some(c) = self.udp.dns.get_mut(slot) else { return Ok(()) };
            let dst = c.dst;
            // The scratch buffer is free again: what was read is in the stream.
            let (client, len) = match c.stream_state.next_answer(&mut self.relay.scratch) {
                Next::Answer { client, len } => (client, len),
                Next::NeedMore => return Ok(()),
                Next::Stray => {
                    // Late (its query timed out), not ours, or not DNS.
                    Counters::inc(&self.counters.udp_drop_bad_header);
                    continue;
                }
                Next::Broken(e) => return Err(format!("bad answer framing: {e}")),
            };
            c.last_used = now;
            let tc = &c.tc;
            let out = self.relay.scratch.get(..len).unwrap_or_default();
            let r = self.udp.replies.send(dst, client, out);
            if r.is_ok() {
                tc.inc(|c| &c.udp_dgrams_down);
                tc.add(|c| &c.udp_bytes_down, len as u64);
                // An answer counts against the client's quota (never shaped).
                if !self.shapers.none()
                    && let Some(g) = self.shapers.get(client.ip())
                {
                    g.count(len);
                }
            }
            self.count_reply(r, dst, client, len as u64);
            Counters::inc(&self.counters.dns_tcp_answers);
            self.udp.table.touch_inbound(&client, now);
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
        let (late, next) = match c.stream_state.expire(now, answer) {
            Expiry::Keep { late, next } => (late, next),
            Expiry::Stalled { late, lost } => {
                c.tc.add_all(&self.counters, |c| &c.dns_tcp_timeouts, late as u64);
                c.tc.add_all(&self.counters, |c| &c.dns_tcp_lost, lost as u64);
                c.tc.inc_all(&self.counters, |c| &c.dns_tcp_stalled);
                let why = format!(
                    "queries unanswered for dns_answer_timeout_secs ({late} just now) and no answer from the server \
                     meanwhile ({lost} more in flight dropped)"
                );
                return self.close_dns(slot, &why);
            }
        };
        if late > 0 {
            c.tc.add_all(&self.counters, |c| &c.dns_tcp_timeouts, late as u64);
            debug!(target: "egressd::udp", "dns {} via {}: {late} queries unanswered for dns_answer_timeout_secs dropped",
                c.dst, c.tunnel.name);
        }
        let next = match next {
            Some(t) => t,
            None if c.last_used + idle <= now => return self.close_dns(slot, "idle"),
            None => c.last_used + idle,
        };
        let next = if c.stage == Stage::Open { next } else { next.min(c.started + connect) };
        self.settle_dns(slot);
        self.dns_timer(slot, next);
    }

    /// Closes a connection (its queries in flight are lost, and counted)
    /// and gives back what it held of its source's budget.
    pub(super) fn close_dns(&mut self, slot: usize, why: &str) {
        if let Some(c) = self.udp.dns.remove(slot) {
            let lost = c.stream_state.inflight.len();
            debug!(target: "egressd::udp", "{} -> dns {} via {}: connection closed: {why}; {lost} queries unanswered",
                c.key.1, c.dst, c.tunnel.name);
            c.tc.add_all(&self.counters, |c| &c.dns_tcp_lost, lost as u64);
            self.udp.release_pending(c.key.1, c.held);
            if self.dns_pool.get(&c.key) == Some(&slot) {
                self.dns_pool.remove(&c.key);
            }
        }
    }

    /// Closes the DNS connections of sources in `cidr` (a route reset: their
    /// next queries go by the new route).
    pub(super) fn close_dns_of(&mut self, cidr: crate::route::Cidr) -> usize {
        let slots = self.udp.dns.slots_where(|c| cidr.contains(c.key.1));
        let n = slots.len();
        for slot in slots {
            self.close_dns(slot, "route changed (--reset-flows)");
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DNS_CONN_COST` covers what a connection holds whatever its stream
    /// holds: itself in the slab, its handshake until the tunnel is open,
    /// its pool entry, and the capacity its emptied buffers and tables may
    /// keep (512 bytes each: `udp::dns_tcp`).
    #[test]
    fn a_connection_is_within_its_cost() {
        let conn = std::mem::size_of::<DnsConn>() + 16;
        let handshake = std::mem::size_of::<Handshake>();
        let pool_entry = (std::mem::size_of::<(PoolKey, usize)>() + 1) * 8 / 7;
        let kept = 3 * 512;
        let total = conn + handshake + pool_entry + kept;
        assert!(total <= DNS_CONN_COST, "{conn} + {handshake} + {pool_entry} + {kept} = {total}");
    }
}
