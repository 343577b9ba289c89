//! UDP sessions in a worker: one upstream association per client socket.
//!
//! ```text
//!  first datagram ─► Associating ──ASSOCIATE ok──► Relay ──idle / evicted / control closed──► gone
//!   (Socks5, udp)     (datagrams queued,             (datagrams wrapped in RFC 1928 §7
//!                      up to pending_datagrams)        headers to the relay; replies
//!                                                      unwrapped, sent from the remote)
//!  first datagram ─► Direct (a socket of the session's own, the tunnel's options)
//!   (Direct)
//! ```
//!
//! Sessions are keyed by the client's address and port, whatever the
//! remote: endpoint-independent mapping and filtering ("full cone"). Replies
//! leave from a pooled IP_TRANSPARENT socket bound to the remote's address,
//! so the container sees them come from where it sent (or from any other
//! remote that answers through the same association).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io::{ErrorKind, IoSlice, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};
use mio::Interest;
use mio::net::{TcpStream, UdpSocket};
use socket2::{Domain, SockRef, Socket, Type};

use super::connect::{Connect, connect_result};
use super::dns::{DnsConn, DnsRefused};
use super::slab::{self, Kind, Slab};
use super::{Drive, WorkerLoop, auth_of, connect, drive_handshake, keepalive};
use crate::config::{Credentials, Tunnel, TunnelKind, UdpSettings};
use crate::route::Cidr;
use crate::stats::{Counters, Tally};
use crate::udp::{Admit, DnsAliases, FoldState, Insert, Limits, SessionTable};
use crate::upstream::{Handshake, Socks5Handshake};
use crate::wire::sockaddr::unmapped;
use crate::wire::socks5::{self, Bound};

mod batch;
mod heavy;
mod reply;
pub use batch::{UdpBatch, UdpItem};
use reply::SourceCheck;
pub(super) use reply::{ReplyError, ReplyPool};

/// Datagrams one relay or Direct socket may deliver per event before the
/// worker turns to its other sockets and its queue (then it re-arms the
/// socket: see `rearm`).
const READS_PER_EVENT: usize = 64;
/// What a queued datagram costs beyond its payload (its box and queue
/// slot), for the pending byte budget.
const PENDING_OVERHEAD: usize = 64;

/// One datagram as the worker handles it.
struct Datagram<'a> {
    client: SocketAddr,
    orig_dst: SocketAddr,
    tunnel: &'a Arc<Tunnel>,
    source: Option<Cidr>,
    data: &'a [u8],
}

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
    /// replies from them count as solicited (see `on_data`).
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
    dns_alias: Option<Box<DnsAliases>>,
    tunnel: Arc<Tunnel>,
    /// This worker's counters for the tunnel and the route source.
    tc: Tally,
    link: Link,
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
    pub(super) bind_log: crate::lograte::Every,
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

    /// Notes that `source` went over one of its limits at `now`.
    pub(super) fn over_limit(&mut self, source: IpAddr, now: Instant) {
        self.heavy.name(source, now);
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

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.table.next_deadline()
    }
}

impl WorkerLoop {
    /// A batch routed before the last reset: its datagrams are routed again
    /// (see `routing`), so no session starts on a tunnel its source was
    /// moved from; those no route takes now are dropped and counted.
    pub(super) fn reroute_batch(&mut self, b: &mut UdpBatch) {
        let rejected = b.reroute(self.routes.view());
        if rejected > 0 {
            Counters::add(&self.counters.udp_drop_no_route, rejected as u64);
            debug!(target: "egressd::udp", "{rejected} datagrams routed before a reset have no route now; dropped");
        }
    }

    /// Handles a batch, then sends it back empty for the fronts to reuse.
    pub(super) fn on_batch(&mut self, mut b: Box<UdpBatch>) {
        for it in &b.items {
            let Some(tunnel) = b.tunnels.get(usize::from(it.tunnel)) else { continue };
            let (start, end) = (it.start as usize, it.start as usize + it.len as usize);
            let Some(data) = b.data.get(start..end) else { continue };
            self.on_datagram(Datagram {
                client: it.client,
                orig_dst: it.orig_dst,
                tunnel,
                source: it.source,
                data,
            });
        }
        b.items.clear();
        b.data.clear();
        b.release();
        self.udp.heavy.expire(self.now);
        // Buffers never grow past their first size (see `is_full`).
        let _ = self.recycle.try_send(b);
    }

    fn on_datagram(&mut self, d: Datagram<'_>) {
        let now = self.now;
        // An existing session keeps its association even when a reload or a
        // route change points its source elsewhere: existing flows keep going
        // (SPEC §4); `route set --reset-flows` is how to move it now.
        if let Some(&mut slot) = self.udp.table.touch_outbound(&d.client, d.orig_dst.port(), now) {
            self.send_on(slot, d.orig_dst, d.data);
            return;
        }
        if self.udp.table.admit(d.client.ip(), now) == Admit::OverRate {
            self.udp.over_limit(d.client.ip(), now);
            Counters::inc(&self.counters.udp_drop_source_rate);
            self.tally(&d.tunnel.name, d.source).inc(|c| &c.udp_drop_source_rate);
            debug!(target: "egressd::udp", "{} -> udp {}: source over new_sessions_per_source_per_sec; dropped",
                d.client, d.orig_dst);
            return;
        }
        let tc = self.tally(&d.tunnel.name, d.source);
        // A source's first session: its route's cap on distinct sources (issue 23).
        let fresh = self.udp.table.source_len(&d.client.ip()) == 0;
        if fresh && !self.udp_source_first(d.client, d.source, &tc) {
            return;
        }
        let Some(link) = self.open_link(&d) else {
            if fresh {
                self.udp_source_gone(d.client.ip());
            }
            return;
        };
        tc.inc(|c| &c.udp_sessions_total);
        tc.inc(|c| &c.udp_sessions_active);
        let session = Session { client: d.client, dns_alias: None, tunnel: Arc::clone(d.tunnel), tc, link };
        let (slot, generation) = self.udp.sessions.insert(session);
        Counters::inc(&self.counters.udp_sessions_total);
        Counters::inc(&self.counters.udp_sessions_active);
        debug!(target: "egressd::udp", "{} -> udp {} via {}: new session", d.client, d.orig_dst, d.tunnel.name);
        match self.udp.table.insert(d.client, d.orig_dst.port(), slot, now) {
            Insert::Added => {}
            Insert::Evicted(client, old) => {
                Counters::inc(&self.counters.udp_sessions_evicted);
                if let Some(s) = self.udp.sessions.get(old) {
                    s.tc.inc(|c| &c.udp_sessions_evicted);
                }
                debug!(target: "egressd::udp", "{client}: session evicted (max_sessions)");
                self.drop_session(old);
            }
            Insert::SourceFull(client, old) => {
                Counters::inc(&self.counters.udp_source_full);
                if let Some(s) = self.udp.sessions.get(old) {
                    s.tc.inc(|c| &c.udp_source_full);
                }
                debug!(target: "egressd::udp", "{client}: session evicted (max_sessions_per_source)");
                self.drop_session(old);
            }
            Insert::Expired(_, old) | Insert::Replaced(old) => self.drop_session(old),
        }
        if !self.register_session(slot, generation) {
            self.end_session(slot, "cannot register sockets");
            return;
        }
        let deadline = now + self.settings.tcp.connect_timeout;
        self.timers.push(std::cmp::Reverse((deadline, slab::token(slot, generation, Kind::UdpControl))));
        self.send_on(slot, d.orig_dst, d.data);
    }

    /// The upstream side of a new session, or `None` (dropped and counted).
    fn open_link(&mut self, d: &Datagram<'_>) -> Option<Link> {
        match &d.tunnel.kind {
            TunnelKind::Socks5 { server, auth, udp: true, .. } => {
                let Some(addr) = server.addr else {
                    Counters::inc(&self.counters.udp_assoc_failed);
                    return None;
                };
                // A ready association from the tunnel's pool: the datagram goes at once.
                if let Some(a) = self.take_pooled_udp(d.tunnel, d.client.ip()) {
                    return Some(Link::Relay {
                        ctrl: TcpStream::from_std(a.ctrl),
                        data: UdpSocket::from_std(a.data),
                    });
                }
                let pipelined = self.pipelines(d.tunnel);
                match connect(addr, &d.tunnel.kind) {
                    Ok(ctrl) => {
                        let hs =
                            Box::new(Handshake::Socks5(associate_handshake(addr, auth.as_ref(), pipelined)));
                        Some(Link::Associating { ctrl, hs, connected: false, pending: VecDeque::new() })
                    }
                    Err(e) => {
                        self.log_udp_failure(d.tunnel, &format!("cannot open a socket to {addr}: {e}"));
                        Counters::inc(&self.counters.udp_assoc_failed);
                        None
                    }
                }
            }
            TunnelKind::Direct { interface, mark, bind } => {
                let target = self.settings.dns.target(d.orig_dst);
                let r = (|| -> std::io::Result<UdpSocket> {
                    let s =
                        Socket::new(Domain::for_address(target), Type::DGRAM.nonblocking().cloexec(), None)?;
                    if let Some(i) = interface {
                        s.bind_device(Some(i.as_bytes()))?;
                    }
                    if let Some(m) = mark {
                        s.set_mark(*m)?;
                    }
                    let local = match bind {
                        Some(ip) if ip.is_ipv4() == target.is_ipv4() => SocketAddr::new(*ip, 0),
                        _ => SocketAddr::new(unspecified(target.ip()), 0),
                    };
                    s.bind(&local.into())?;
                    Ok(UdpSocket::from_std(s.into()))
                })();
                match r {
                    Ok(data) => Some(Link::Direct { data, sent: [0; 4], next: 0 }),
                    Err(e) => {
                        self.log_udp_failure(d.tunnel, &format!("cannot open a UDP socket: {e}"));
                        Counters::inc(&self.counters.udp_drop_send);
                        None
                    }
                }
            }
            TunnelKind::Socks5 { udp: false, .. } | TunnelKind::HttpConnect { .. }
                if self.udp.dns_over_tcp && d.orig_dst.port() == 53 =>
            {
                Some(Link::DnsOverTcp)
            }
            TunnelKind::Socks5 { udp: false, .. } | TunnelKind::HttpConnect { .. } => {
                Counters::inc(&self.counters.udp_drop_no_udp);
                debug!(target: "egressd::udp", "{} -> udp {} via {}: tunnel carries no UDP; dropped",
                    d.client, d.orig_dst, d.tunnel.name);
                None
            }
        }
    }

    fn register_session(&mut self, slot: usize, generation: u32) -> bool {
        let reg = self.poll.registry();
        let Some(s) = self.udp.sessions.get_mut(slot) else { return false };
        match &mut s.link {
            Link::Associating { ctrl, .. } => reg
                .register(
                    ctrl,
                    slab::token(slot, generation, Kind::UdpControl),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_ok(),
            Link::Direct { data, .. } => {
                reg.register(data, slab::token(slot, generation, Kind::UdpData), Interest::READABLE).is_ok()
            }
            // A pooled association: both sockets at once.
            Link::Relay { ctrl, data } => {
                reg.register(ctrl, slab::token(slot, generation, Kind::UdpControl), Interest::READABLE)
                    .is_ok()
                    && reg
                        .register(data, slab::token(slot, generation, Kind::UdpData), Interest::READABLE)
                        .is_ok()
            }
            Link::DnsOverTcp | Link::Empty => true,
        }
    }

    /// Sends (or queues) one datagram of a session; `dst` is where the
    /// client sent it (DNS to a resolver that is not public goes to
    /// `dns.upstream` instead).
    fn send_on(&mut self, slot: usize, dst: SocketAddr, data: &[u8]) {
        let target = self.settings.dns.target(dst);
        let Some(s) = self.udp.sessions.get_mut(slot) else { return };
        if target != dst {
            s.dns_alias.get_or_insert_default().record(target, data, dst);
        }
        let sent = match &mut s.link {
            Link::Associating { pending, .. } => {
                let cost = data.len() + PENDING_OVERHEAD;
                if pending.len() >= self.udp.pending_max {
                    Counters::inc(&self.counters.udp_drop_pending);
                    return;
                }
                let client = s.client;
                if !self.udp.reserve_pending(client.ip(), cost) {
                    self.udp.over_limit(client.ip(), self.now);
                    Counters::inc(&self.counters.udp_drop_pending_bytes);
                    if let Some(s) = self.udp.sessions.get(slot) {
                        s.tc.inc(|c| &c.udp_drop_pending_bytes);
                    }
                    return;
                }
                // Only while the association is set up: copied once.
                if let Some(Link::Associating { pending, .. }) =
                    self.udp.sessions.get_mut(slot).map(|s| &mut s.link)
                {
                    pending.push_back((dst, data.into()));
                }
                return;
            }
            Link::Relay { data: sock, .. } => send_to_relay(sock, target, data),
            Link::Direct { data: sock, sent, next } => {
                let fp = self.udp.fp.hash_one(target);
                if !sent.contains(&fp) {
                    sent[usize::from(*next) % sent.len()] = fp;
                    *next = next.wrapping_add(1);
                }
                sock.send_to(data, target).map(|_| ())
            }
            Link::DnsOverTcp => {
                if dst.port() == 53 {
                    let (client, tunnel) = (s.client, Arc::clone(&s.tunnel));
                    self.dns_query(slot, client, dst, &tunnel, data);
                } else {
                    Counters::inc(&self.counters.udp_drop_no_udp);
                }
                return;
            }
            Link::Empty => return,
        };
        match sent {
            Ok(()) => {
                Counters::inc(&self.counters.udp_dgrams_up);
                Counters::add(&self.counters.udp_bytes_up, data.len() as u64);
                s.tc.inc(|c| &c.udp_dgrams_up);
                s.tc.add(|c| &c.udp_bytes_up, data.len() as u64);
            }
            Err(e) => {
                Counters::inc(&self.counters.udp_drop_send);
                debug!(target: "egressd::udp", "{} -> udp {dst}: send failed: {e}", s.client);
            }
        }
    }

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

    /// The control connection: the ASSOCIATE handshake, then only its end.
    fn on_control(&mut self, slot: usize, generation: u32, ev: &mio::event::Event) {
        let scratch = &mut self.relay.scratch;
        let s = self.udp.sessions.get_mut(slot).expect("live");
        let (ready, why) = match &mut s.link {
            Link::Associating { ctrl, hs, connected, .. } => {
                if !*connected {
                    match connect_result(ctrl, ev) {
                        Connect::Pending => return,
                        Connect::Failed(e) => {
                            let why = format!("cannot connect to the tunnel server: {e}");
                            return self.fail_session(slot, &why);
                        }
                        Connect::Unknown(e) => {
                            return self.fail_session(slot, &format!("cannot connect: {e}"));
                        }
                        Connect::Connected => *connected = true,
                    }
                    let _ = keepalive(&SockRef::from(&*ctrl));
                }
                match drive_handshake(ctrl, hs, auth_of(&s.tunnel), scratch, true) {
                    Drive::Pending => return,
                    Drive::Failed(why, ..) => (None, why),
                    Drive::Done(_) => (hs.bound(), String::new()),
                }
            }
            Link::Relay { ctrl, .. } => {
                // The association lives as long as this connection, and
                // nothing follows the reply on it (RFC 1928 §7): a server
                // that keeps writing there is not speaking SOCKS5, and
                // reading it until it stops would hold the whole worker.
                loop {
                    match ctrl.read(scratch) {
                        Ok(0) => return self.fail_session(slot, "control connection closed by the server"),
                        Ok(_) => {
                            return self
                                .fail_session(slot, "bytes on the control connection after the reply");
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return self.fail_session(slot, &format!("control connection: {e}")),
                    }
                }
            }
            Link::Direct { .. } | Link::DnsOverTcp | Link::Empty => return,
        };
        let Some(bound) = ready else { return self.fail_session(slot, &format!("UDP ASSOCIATE: {why}")) };
        let relay = relay_addr(bound, &s.tunnel);
        let mut data = match relay_socket(relay) {
            Ok(d) => UdpSocket::from_std(d),
            Err(e) => return self.fail_session(slot, &format!("UDP socket to relay {relay}: {e}")),
        };
        if self
            .poll
            .registry()
            .register(&mut data, slab::token(slot, generation, Kind::UdpData), Interest::READABLE)
            .is_err()
        {
            return self.fail_session(slot, "cannot register the relay socket");
        }
        let Link::Associating { ctrl, pending, .. } = std::mem::replace(&mut s.link, Link::Empty) else {
            unreachable!("checked above")
        };
        debug!(target: "egressd::udp", "{}: associated via {} (relay {relay})", s.client, s.tunnel.name);
        s.link = Link::Relay { ctrl, data };
        let client = s.client;
        for (dst, d) in pending {
            self.udp.release_pending(client.ip(), d.len() + PENDING_OVERHEAD);
            self.send_on(slot, dst, &d);
        }
    }

    /// Datagrams from the relay (or, for Direct, from any remote), at most
    /// [`READS_PER_EVENT`] of them: then the socket is re-armed and the loop
    /// serves its other events and its queue before coming back.
    fn on_data(&mut self, slot: usize, generation: u32) {
        let now = self.now;
        for _ in 0..READS_PER_EVENT {
            let Some(s) = self.udp.sessions.get_mut(slot) else { return };
            let client = s.client;
            let scratch = &mut self.relay.scratch[..];
            let (remote, payload, solicited) = match &mut s.link {
                Link::Relay { data, .. } => match data.recv(scratch) {
                    Ok(n) => match socks5::parse_udp_header(scratch.get(..n).unwrap_or_default()) {
                        Ok((remote, off)) => (unmapped(remote), off..n, true),
                        Err(socks5::UdpHeaderError::Fragmented(_)) => {
                            Counters::inc(&self.counters.udp_drop_frag);
                            continue;
                        }
                        Err(e) => {
                            Counters::inc(&self.counters.udp_drop_bad_header);
                            debug!(target: "egressd::udp", "{client}: relay datagram dropped: {e}");
                            continue;
                        }
                    },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // ICMP errors from the relay surface here; the session goes on.
                    Err(_) => continue,
                },
                Link::Direct { data, sent, .. } => match data.recv_from(scratch) {
                    Ok((n, from)) => {
                        let from = unmapped(from);
                        (from, 0..n, sent.contains(&self.udp.fp.hash_one(from)))
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => continue,
                },
                Link::Associating { .. } | Link::DnsOverTcp | Link::Empty => return,
            };
            // The answer to a redirected query comes from the address asked:
            // egressd's own choice, so the relay's word is not checked.
            let asked =
                self.udp.sessions.get(slot).and_then(|s| s.dns_alias.as_ref()).and_then(|a| {
                    a.answer(remote, self.relay.scratch.get(payload.clone()).unwrap_or_default())
                });
            let (remote, redirected) = match asked {
                Some(asked) => (asked, true),
                None => (remote, false),
            };
            if !redirected && let Err(why) = self.check_reply_source(remote.ip()) {
                Counters::inc(&self.counters.udp_drop_reply_source);
                if let Some(s) = self.udp.sessions.get(slot) {
                    s.tc.inc(|c| &c.udp_drop_reply_source);
                }
                debug!(target: "egressd::udp", "{remote} -> {client}: reply dropped: its source is {why:?}");
                continue;
            }
            // Only what the client asked for keeps its session alive: a
            // stranger writing to a Direct socket does not.
            if solicited {
                self.udp.table.touch_inbound(&client, now);
            }
            // `payload` lies within what recv returned (the header parser
            // takes no more than it is given); read through get() all the same.
            let Some(bytes) = self.relay.scratch.get(payload) else { continue };
            let r = self.udp.replies.send_as(remote, client, bytes, solicited);
            let n = bytes.len() as u64;
            if r.is_ok()
                && let Some(s) = self.udp.sessions.get(slot)
            {
                s.tc.inc(|c| &c.udp_dgrams_down);
                s.tc.add(|c| &c.udp_bytes_down, n);
            }
            self.count_reply(r, remote, client, n);
        }
        self.rearm(slot, generation);
    }

    /// Re-registers a session's data socket that was left readable: epoll
    /// queues an event for it at once (`EPOLL_CTL_MOD` re-checks readiness),
    /// so the next turn of the loop comes back to it without a new edge.
    fn rearm(&mut self, slot: usize, generation: u32) {
        let reg = self.poll.registry();
        let Some(s) = self.udp.sessions.get_mut(slot) else { return };
        let sock = match &mut s.link {
            Link::Relay { data, .. } | Link::Direct { data, .. } => data,
            _ => return,
        };
        if reg.reregister(sock, slab::token(slot, generation, Kind::UdpData), Interest::READABLE).is_err() {
            self.end_session(slot, "cannot re-register the data socket");
        }
    }

    /// Whether a reply may name `remote` as its source (see `reply`): the
    /// live routes say which addresses are containers' (config routes,
    /// `route set`, label routes and `intercept.sources`).
    fn check_reply_source(&mut self, remote: IpAddr) -> Result<(), reply::Refused> {
        let container = self.routes.view().holds_container(remote);
        self.udp.source_check.check(remote, container, self.now)
    }

    /// Counts (and for a failed bind, logs once) a reply's fate.
    pub(super) fn count_reply(
        &mut self,
        r: Result<(), ReplyError>,
        remote: SocketAddr,
        client: SocketAddr,
        n: u64,
    ) {
        match r {
            Ok(()) => {
                Counters::inc(&self.counters.udp_dgrams_down);
                Counters::add(&self.counters.udp_bytes_down, n);
            }
            Err(ReplyError::Bind(e)) => {
                Counters::inc(&self.counters.udp_reply_bind_failed);
                if self.udp.replies.first_failure(remote)
                    && let Some(n) = self.udp.bind_log.due(self.now)
                {
                    warn!(target: "egressd::udp",
                        "cannot send replies from {remote} (bind: {e}); is a local service using that address and port? \
                         (counted: udp_reply_bind_failed){}", crate::lograte::more(n));
                }
            }
            Err(ReplyError::Send(e)) => {
                Counters::inc(&self.counters.udp_drop_send);
                debug!(target: "egressd::udp", "{remote} -> {client}: reply not sent: {e}");
            }
            Err(ReplyError::NoRoom) => {
                Counters::inc(&self.counters.udp_drop_unsolicited);
                debug!(target: "egressd::udp", "{remote} -> {client}: unsolicited, no reply socket to spare; dropped");
            }
        }
        Counters::set(&self.counters.udp_reply_sockets, self.udp.replies.len() as u64);
    }

    /// Ends every session of these sources, and closes their DNS-over-TCP
    /// connections; returns how many sessions.
    pub(super) fn end_sessions_of(&mut self, cidr: crate::route::Cidr) -> usize {
        let slots = self.udp.sessions.slots_where(|s| cidr.contains(s.client.ip()));
        let n = slots.len();
        for slot in slots {
            self.end_session(slot, "route changed (--reset-flows)");
        }
        self.close_dns_of(cidr);
        n
    }

    /// Ends sessions whose idle time ran out.
    pub(super) fn expire_udp_idle(&mut self) {
        while let Some((client, slot)) = self.udp.table.pop_expired(self.now) {
            let associating =
                self.udp.sessions.get(slot).is_some_and(|s| matches!(s.link, Link::Associating { .. }));
            if associating {
                // Idle out before the server answered: a failed association.
                self.fail_session(slot, "no UDP ASSOCIATE answer before the session's idle timeout");
            } else {
                debug!(target: "egressd::udp", "{client}: session idle; closed");
                self.drop_session(slot);
            }
        }
    }

    /// A timer for a session: the association must be up by now.
    pub(super) fn expire_udp(&mut self, kind: Kind, slot: usize, generation: u32) {
        if kind == Kind::DnsTcp && self.udp.dns.is_live(slot, generation) {
            return self.expire_dns(slot);
        }
        if kind != Kind::UdpControl || !self.udp.sessions.is_live(slot, generation) {
            return;
        }
        let s = self.udp.sessions.get(slot).expect("live");
        if matches!(s.link, Link::Associating { .. }) {
            let why = format!(
                "no UDP ASSOCIATE answer within {}s (connect_timeout_secs)",
                self.settings.tcp.connect_timeout.as_secs()
            );
            self.fail_session(slot, &why);
        }
    }

    fn fail_session(&mut self, slot: usize, why: &str) {
        Counters::inc(&self.counters.udp_assoc_failed);
        if let Some(s) = self.udp.sessions.get(slot) {
            s.tc.inc(|c| &c.udp_assoc_failed);
            let t = Arc::clone(&s.tunnel);
            self.log_udp_failure(&t, why);
        }
        self.end_session(slot, why);
    }

    fn log_udp_failure(&mut self, t: &Tunnel, why: &str) {
        if self.should_warn(&t.name) {
            warn!(target: "egressd::udp", "udp via {}: {why}; datagrams dropped", t.name);
        } else {
            debug!(target: "egressd::udp", "udp via {}: {why}; datagrams dropped", t.name);
        }
    }

    fn end_session(&mut self, slot: usize, why: &str) {
        if let Some(s) = self.udp.sessions.get(slot) {
            debug!(target: "egressd::udp", "{} via {}: session ended: {why}", s.client, s.tunnel.name);
            let client = s.client;
            if self.udp.table.get_mut(&client).copied() == Some(slot) {
                self.udp.table.remove(&client);
            }
        }
        self.drop_session(slot);
    }

    fn drop_session(&mut self, slot: usize) {
        if let Some(s) = self.udp.sessions.remove(slot) {
            if self.udp.table.source_len(&s.client.ip()) == 0 {
                self.udp_source_gone(s.client.ip());
            }
            Counters::dec(&self.counters.udp_sessions_active);
            s.tc.dec(|c| &c.udp_sessions_active);
            // A DNS-over-TCP session's connections are its source's, pooled
            // (`dns`): they outlive it, until idle or closed.
            if let Link::Associating { pending, .. } = s.link {
                Counters::add(&self.counters.udp_drop_pending, pending.len() as u64);
                let bytes: usize = pending.iter().map(|(_, d)| d.len() + PENDING_OVERHEAD).sum();
                self.udp.release_pending(s.client.ip(), bytes);
            }
        }
    }
}

/// Where datagrams for the association go: the reply's relay address, unless
/// it is unspecified or private where the server is not (a relay behind NAT
/// reporting its inside address): then the server's own address, with the
/// reported port. `udp_relay` in the config overrides both.
pub(super) fn relay_addr(bound: Bound, t: &Tunnel) -> SocketAddr {
    let TunnelKind::Socks5 { server, udp_relay, .. } = &t.kind else {
        unreachable!("only SOCKS5 associates")
    };
    if let Some(r) = udp_relay {
        return *r;
    }
    let server_addr = server.addr.expect("resolved before use");
    match bound {
        Bound::Addr(a) => {
            let a = unmapped(a);
            let ip = a.ip();
            let useless = ip.is_unspecified()
                || ip.is_loopback()
                || (is_private(ip) && !is_private(server_addr.ip()))
                || ip.is_ipv4() != server_addr.is_ipv4();
            if useless { SocketAddr::new(server_addr.ip(), a.port()) } else { a }
        }
        Bound::Domain(port) => SocketAddr::new(server_addr.ip(), port),
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00 || (a.segments()[0] & 0xffc0) == 0xfe80,
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

/// UDP ASSOCIATE through the server at `server`: greeting, credentials and
/// request in one flight when the server takes pipelining.
pub(super) fn associate_handshake(
    server: SocketAddr,
    auth: Option<&Credentials>,
    pipelined: bool,
) -> Socks5Handshake {
    let from = SocketAddr::new(unspecified(server.ip()), 0);
    if pipelined {
        Socks5Handshake::pipelined(socks5::CMD_UDP_ASSOCIATE, from, auth)
    } else {
        Socks5Handshake::associate(from, auth.is_some())
    }
}

/// A non-blocking UDP socket of egressd's own, connected to the relay.
pub(super) fn relay_socket(relay: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(relay), Type::DGRAM.nonblocking().cloexec(), None)?;
    s.bind(&SocketAddr::new(unspecified(relay.ip()), 0).into())?;
    s.connect(&relay.into())?;
    Ok(s.into())
}

pub(super) fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// One datagram to the relay: the RFC 1928 §7 header and the payload in
/// one `sendmsg`, without copying the payload.
fn send_to_relay(sock: &UdpSocket, dst: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut h = [0u8; socks5::UDP_HEADER_MAX];
    let n = socks5::encode_udp_header(dst, &mut h);
    SockRef::from(sock).send_vectored(&[IoSlice::new(&h[..n]), IoSlice::new(payload)]).map(|_| ())
}

#[cfg(test)]
mod tests;
