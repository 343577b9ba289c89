//! UDP sessions in a worker: one upstream association per client socket.
//!
//! ```text
//!                      a ready association from the tunnel's pool
//!                    ┌─────────────────────────────────────────────┐
//!  first datagram ───┤                                             ▼
//!   (Socks5, udp)    └─► Associating ──connect, ASSOCIATE ok──► Relay ─────────────┐
//!                        (datagrams queued:                    (datagrams wrapped  │
//!                         pending_datagrams and                 in RFC 1928 §7     │
//!                         the pending byte budgets)             headers; replies   │
//!                             │ error, or no answer within      unwrapped, sent    │
//!                             │ connect_timeout_secs            from the remote)   │
//!                             ▼                                                    ▼
//!                        failed (udp_assoc_failed) ──────────────────────────────► gone
//!                                                                                  ▲
//!  first datagram ─► Direct (a socket of the session's own, the tunnel's options) ─┤
//!   (Direct)                                                                       │
//!  first datagram ─► DnsOverTcp (port 53 only: queries ride the source's pooled ───┘
//!   (no UDP, dns_over_tcp)        TCP connections, see `dns`)
//!
//!  gone: idle, evicted (max_sessions, max_sessions_per_source), control
//!  connection closed, route reset
//! ```
//!
//! A session's life, one step a file: `open` (a datagram finds its session,
//! or a new one opens), `outbound` (a datagram to the remote, or queued),
//! `associate` (the SOCKS5 control connection: ASSOCIATE, then only its
//! end), `inbound` (replies, sent to the client from the remote's address)
//! and `end` (idle, evicted, failed, reset).
//!
//! Sessions are keyed by the client's address and port, whatever the
//! remote: endpoint-independent mapping and filtering ("full cone"). Replies
//! leave from a pooled IP_TRANSPARENT socket bound to the remote's address,
//! so the container sees them come from where it sent (or from any other
//! remote that answers through the same association).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use mio::net::{TcpStream, UdpSocket};

use super::WorkerLoop;
use super::dns::{DnsConn, DnsRefused};
use super::slab::{Kind, Slab};
use crate::config::{Tunnel, UdpSettings};
use crate::stats::{Counters, Tally};
use crate::udp::{FoldState, Limits, SessionTable};
use crate::upstream::Handshake;

mod associate;
mod batch;
mod end;
mod heavy;
mod inbound;
mod moved;
mod open;
mod outbound;
mod reply;
use associate::unspecified;
pub(super) use associate::{associate_handshake, relay_addr, relay_socket};
pub use batch::{UdpBatch, UdpItem};
pub use moved::Moved;
use reply::{ReplyPool, SourceCheck};

/// What a queued datagram costs beyond its payload (its box and queue
/// slot), for the pending byte budget.
const PENDING_OVERHEAD: usize = 64;

enum Link {
    /// SOCKS5 UDP ASSOCIATE under way on the control connection.
    Associating {
        ctrl: TcpStream,
        hs: Box<Handshake>,
        connected: bool,
        pending: VecDeque<(SocketAddr, Box<[u8]>)>,
    },
    /// Datagrams go to the relay through `data` (connected to it).
    Relay { ctrl: TcpStream, data: UdpSocket },
    /// A socket of the session's own, with the tunnel's options; `sent`
    /// holds fingerprints of the last destinations the client sent to, so
    /// replies from them count as solicited (see `inbound`).
    Direct { data: UdpSocket, sent: [u64; 4], next: u8 },
    /// The tunnel has no UDP: port-53 datagrams go as DNS over TCP, on the
    /// source's pooled connection per DNS server (`dns`; they outlive the
    /// session: glibc asks from a new port every lookup).
    DnsOverTcp,
    /// Only while moving from one state to the next.
    Empty,
}

struct Session {
    client: SocketAddr,
    /// DNS queries of this session that egressd sent elsewhere (`dns.upstream`
    /// instead of a resolver no exit can reach), so that each answer comes
    /// from the address asked (boxed: most sessions never have one).
    dns_alias: Option<Box<crate::udp::DnsAliases>>,
    tunnel: Arc<Tunnel>,
    /// This worker's counters for the tunnel and the route source.
    tc: Tally,
    link: Link,
    /// The source has a shaper (`shaping`): its datagrams are policed.
    shaped: bool,
}

/// A worker's UDP state.
pub(super) struct Udp {
    pub(super) table: SessionTable<usize>,
    sessions: Slab<Session>,
    pub(super) dns: Slab<DnsConn>,
    pub(super) replies: ReplyPool,
    pub(super) pending_max: usize,
    dns_over_tcp: bool,
    /// Bytes queued in this worker's associating sessions and held by its
    /// DNS-over-TCP connections (see `dns`), in total and per source
    /// address (entries leave at zero), and their bounds.
    pending_bytes: usize,
    pending_by_source: HashMap<IpAddr, usize, FoldState>,
    pending_bytes_max: usize,
    pending_source_max: usize,
    source_check: SourceCheck,
    /// Sources of this worker that went over a limit (see `UdpBatch::sheds`).
    heavy: heavy::Named,
    /// Keys the fingerprints of Direct sessions' destinations.
    fp: FoldState,
    /// DNS-over-TCP refusals: a warning a minute per kind (see `dns`).
    pub(super) dns_log: [crate::lograte::Every; DnsRefused::COUNT],
    /// Reply sockets that cannot bind: once per remote, and once a minute at
    /// most over all of them (remotes are chosen outside).
    bind_log: crate::lograte::Every,
}

impl Udp {
    /// A worker's share of the UDP settings: `max_sessions` and
    /// `max_reply_sockets` are for the whole process, split evenly across
    /// the workers (a source's sessions all live in one worker).
    pub(super) fn new(s: &UdpSettings, workers: usize) -> Udp {
        let mut table = SessionTable::new(limits_of(s, workers));
        table.set_max_idle_sources(idle_sources_per_worker(s.max_idle_sources, workers));
        Udp {
            table,
            sessions: Slab::default(),
            dns: Slab::default(),
            dns_over_tcp: s.dns_over_tcp,
            replies: ReplyPool::new(UdpSettings::per_worker(s.max_reply_sockets, workers)),
            pending_max: s.pending_datagrams,
            pending_bytes: 0,
            pending_by_source: HashMap::with_hasher(FoldState::new()),
            pending_bytes_max: s.pending_bytes_per_worker,
            pending_source_max: s.pending_bytes_per_source,
            source_check: SourceCheck::default(),
            heavy: heavy::Named::default(),
            fp: FoldState::new(),
            dns_log: Default::default(),
            bind_log: Default::default(),
        }
    }

    /// Reloaded settings, live: limits and timeouts for the table (existing
    /// sessions keep running), the reply-pool size (shrinks as it is used),
    /// pending_datagrams, the pending byte budgets and dns_over_tcp for
    /// what comes next; the idle sources kept (fewer forgets the oldest now).
    pub(super) fn apply(&mut self, s: &UdpSettings, workers: usize) {
        self.table.set_limits(limits_of(s, workers));
        self.table.set_max_idle_sources(idle_sources_per_worker(s.max_idle_sources, workers));
        self.replies.set_cap(UdpSettings::per_worker(s.max_reply_sockets, workers));
        (self.pending_max, self.dns_over_tcp) = (s.pending_datagrams, s.dns_over_tcp);
        (self.pending_bytes_max, self.pending_source_max) =
            (s.pending_bytes_per_worker, s.pending_bytes_per_source);
    }

    /// The counters of a session's tunnel and route source.
    pub(super) fn session_tally(&self, slot: usize) -> Option<&Tally> {
        self.sessions.get(slot).map(|s| &s.tc)
    }

    /// Takes `n` bytes of the pending budget for `source`, if both the
    /// worker's and the source's share allow.
    pub(super) fn reserve_pending(&mut self, source: IpAddr, n: usize) -> bool {
        let held = self.pending_by_source.get(&source).copied().unwrap_or(0);
        if self.pending_bytes + n > self.pending_bytes_max || held + n > self.pending_source_max {
            return false;
        }
        self.pending_bytes += n;
        *self.pending_by_source.entry(source).or_insert(0) += n;
        true
    }

    pub(super) fn release_pending(&mut self, source: IpAddr, n: usize) {
        self.pending_bytes = self.pending_bytes.saturating_sub(n);
        if let Some(held) = self.pending_by_source.get_mut(&source) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                self.pending_by_source.remove(&source);
            }
        }
    }

    /// Notes that `source` went over one of its limits at `now`.
    pub(super) fn over_limit(&mut self, source: IpAddr, now: Instant) {
        self.heavy.name(source, now);
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.table.next_deadline()
    }
}

impl WorkerLoop {
    pub(super) fn on_udp_event(&mut self, kind: Kind, slot: usize, generation: u32, ev: &mio::event::Event) {
        match kind {
            Kind::UdpControl if self.udp.sessions.is_live(slot, generation) => {
                self.on_control(slot, generation, ev)
            }
            Kind::UdpData if self.udp.sessions.is_live(slot, generation) => self.on_data(slot, generation),
            Kind::DnsTcp if self.udp.dns.is_live(slot, generation) => self.on_dns_event(slot, ev),
            _ => {}
        }
    }

    /// Counts one of `f` for the worker and, while the session in `slot`
    /// is there, for its tunnel and route source.
    pub(super) fn count_session(&self, slot: usize, f: impl Fn(&Counters) -> &AtomicU64) {
        match self.udp.sessions.get(slot) {
            Some(s) => s.tc.inc_all(&self.counters, f),
            None => Counters::inc(f(&self.counters)),
        }
    }
}

/// The session table's limits in one worker (see [`Udp::new`]).
fn limits_of(s: &UdpSettings, workers: usize) -> Limits {
    Limits {
        idle_timeout: s.idle_timeout,
        dns_idle_timeout: s.dns_idle_timeout,
        max_sessions: UdpSettings::per_worker(s.max_sessions, workers),
        max_per_source: s.max_sessions_per_source,
        new_per_source_per_sec: s.new_sessions_per_source_per_sec,
        new_per_source_burst: s.new_sessions_per_source_burst,
    }
}

/// Each worker's share of `udp.max_idle_sources` (a source's rate state
/// lives in the worker its sessions do); 0 stays 0 (forget at once).
fn idle_sources_per_worker(total: usize, workers: usize) -> usize {
    if total == 0 { 0 } else { UdpSettings::per_worker(total, workers) }
}

#[cfg(test)]
mod tests;
