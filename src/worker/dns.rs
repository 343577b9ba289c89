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
use crate::udp::dns_tcp::{DnsStream, Next, QueryRefused};
use crate::upstream::{self, Handshake};
use crate::wire::dns;

/// The pool's key: the tunnel (by identity: a reloaded tunnel is another
/// one) and the DNS server the client asked.
pub(super) type PoolKey = (usize, SocketAddr);

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
    stream: TcpStream,
    stage: Stage,
    /// Until the tunnel is open.
    hs: Option<Box<Handshake>>,
    /// Framed queries not yet written.
    out: Vec<u8>,
    out_pos: usize,
    /// Queries in flight and answers read (sans-IO, see `udp::dns_tcp`).
    stream_state: DnsStream,
    started: Instant,
    last_used: Instant,
    /// When this connection's timer is due, if one is set.
    timer_at: Option<Instant>,
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
        match c.stream_state.query(client, q, now, &mut c.out) {
            Ok(()) => {}
            Err(QueryRefused::NotAQuery) => {
                Counters::inc(&self.counters.udp_drop_bad_header);
                return;
            }
            Err(QueryRefused::Full) => {
                Counters::inc(&self.counters.udp_drop_pending);
                return;
            }
        }
        c.last_used = now;
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
            stream_state: DnsStream::default(),
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
                            c.stream_state.feed(scratch.get(extra).unwrap_or_default());
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
            c.stream_state.feed(self.relay.scratch.get(..n).unwrap_or_default());
            if let Err(why) = self.answer_dns(slot) {
                return self.close_dns(slot, &why);
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
            let out = self.relay.scratch.get(..len).unwrap_or_default();
            let r = self.udp.replies.send(dst, client, out);
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
        let next = match c.stream_state.inflight.oldest() {
            Some(sent) if sent + answer <= now => {
                Counters::add(&self.counters.dns_tcp_timeouts, c.stream_state.inflight.len() as u64);
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
                c.dst, c.tunnel.name, c.stream_state.inflight.len());
            if self.dns_pool.get(&c.key) == Some(&slot) {
                self.dns_pool.remove(&c.key);
            }
        }
    }
}
