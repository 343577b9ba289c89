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

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};
use mio::Interest;
use mio::net::{TcpStream, UdpSocket};
use socket2::{Domain, SockRef, Socket, Type};

use super::dns::DnsConn;
use super::slab::{self, Kind, Slab};
use super::{Drive, WorkerLoop, auth_of, connect, drive_handshake, keepalive};
use crate::config::{Tunnel, TunnelKind, UdpSettings};
use crate::route::Cidr;
use crate::stats::{Counters, Tally};
use crate::udp::{Insert, Limits, Lru, SessionTable};
use crate::upstream::{Handshake, Socks5Handshake};
use crate::wire::sockaddr::unmapped;
use crate::wire::socks5::{self, Bound};

/// Datagrams a front loop received and routed for one worker, packed into
/// one buffer: one hand-off (and one wake) per batch, and the batch comes
/// back to the fronts empty through the worker's recycle channel, so the
/// steady path allocates nothing per datagram.
pub struct UdpBatch {
    /// The tunnels `UdpItem::tunnel` indexes (one Arc clone per batch).
    pub tunnels: Arc<[Arc<Tunnel>]>,
    pub items: Vec<UdpItem>,
    pub data: Vec<u8>,
}

/// One datagram of a batch; its payload is `data[start..start + len]`.
#[derive(Debug, Clone, Copy)]
pub struct UdpItem {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub tunnel: u16,
    /// The route that matched (`None`: the default tunnel), for counters.
    pub source: Option<Cidr>,
    pub start: u32,
    pub len: u32,
}

impl UdpBatch {
    pub fn new(tunnels: Arc<[Arc<Tunnel>]>) -> UdpBatch {
        UdpBatch { tunnels, items: Vec::with_capacity(64), data: Vec::with_capacity(64 * 1024) }
    }

    pub fn push(
        &mut self,
        client: SocketAddr,
        orig_dst: SocketAddr,
        route: (Option<Cidr>, u16),
        payload: &[u8],
    ) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(payload);
        let (source, tunnel) = route;
        self.items.push(UdpItem { client, orig_dst, tunnel, source, start, len: payload.len() as u32 });
    }

    /// Whether the batch should go now rather than grow further.
    pub fn is_full(&self) -> bool {
        self.items.len() >= 256 || self.data.len() >= 128 * 1024
    }
}

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
    /// A socket of the session's own, with the tunnel's options.
    Direct { data: UdpSocket },
    /// The tunnel has no UDP: port-53 datagrams go as DNS over TCP, on one
    /// connection per DNS server (slots in `Udp::dns`).
    DnsOverTcp { conns: Vec<(SocketAddr, usize)> },
    /// Only while moving from one state to the next.
    Empty,
}

struct Session {
    client: SocketAddr,
    /// A DNS query of this session that egressd sent elsewhere (`dns.upstream`
    /// instead of a resolver no exit can reach): (where it went, what the
    /// client asked), so that the answer comes from the address asked.
    dns_alias: Option<(SocketAddr, SocketAddr)>,
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
}

impl Udp {
    pub(super) fn new(s: &UdpSettings, workers: usize) -> Udp {
        let limits = Limits {
            idle_timeout: s.idle_timeout,
            dns_idle_timeout: s.dns_idle_timeout,
            max_sessions: s.max_sessions,
        };
        Udp {
            table: SessionTable::new(limits),
            sessions: Slab::default(),
            dns: Slab::default(),
            dns_over_tcp: s.dns_over_tcp,
            replies: ReplyPool::new((s.max_reply_sockets / workers.max(1)).max(1)),
            pending_max: s.pending_datagrams,
        }
    }

    /// Reloaded settings, live: limits and timeouts for the table (existing
    /// sessions keep running), the reply-pool size (shrinks as it is used),
    /// pending_datagrams and dns_over_tcp for what comes next.
    pub(super) fn apply(&mut self, s: &UdpSettings, workers: usize) {
        let fresh = Udp::new(s, workers);
        self.table.set_limits(*fresh.table.limits());
        self.replies.cap = fresh.replies.cap;
        (self.pending_max, self.dns_over_tcp) = (fresh.pending_max, fresh.dns_over_tcp);
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    pub(super) fn dns_conn_for(&self, session: usize, dst: SocketAddr) -> Option<usize> {
        match &self.sessions.get(session)?.link {
            Link::DnsOverTcp { conns } => conns.iter().find(|(d, _)| *d == dst).map(|(_, s)| *s),
            _ => None,
        }
    }

    pub(super) fn add_dns_conn(&mut self, session: usize, dst: SocketAddr, slot: usize) {
        if let Some(Session { link: Link::DnsOverTcp { conns }, .. }) = self.sessions.get_mut(session) {
            conns.push((dst, slot));
        }
    }

    pub(super) fn forget_dns_conn(&mut self, session: usize, slot: usize) {
        if let Some(Session { link: Link::DnsOverTcp { conns }, .. }) = self.sessions.get_mut(session) {
            conns.retain(|(_, s)| *s != slot);
        }
    }
}

/// Bounded pool of IP_TRANSPARENT sockets keyed by the remote address they
/// are bound to; shared by every session of the worker.
pub(super) struct ReplyPool {
    lru: Lru<SocketAddr, std::net::UdpSocket>,
    cap: usize,
    /// Remotes whose bind failed, logged once each (bounded).
    failed: Lru<SocketAddr, ()>,
}

impl ReplyPool {
    fn new(cap: usize) -> ReplyPool {
        ReplyPool { lru: Lru::new(), cap, failed: Lru::new() }
    }
}

fn reply_socket(from: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(from), Type::DGRAM.nonblocking().cloexec(), None)?;
    s.set_reuse_address(true)?;
    if from.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true)?;
    }
    // Never read: keep what the kernel might queue on it small.
    let _ = s.set_recv_buffer_size(1);
    s.bind(&from.into())?;
    Ok(s.into())
}

impl WorkerLoop {
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
        // Keep only modest buffers for reuse (a flood of large datagrams
        // must not leave megabytes parked in the recycle channel).
        if b.data.capacity() <= 256 * 1024 {
            let _ = self.recycle.try_send(b);
        }
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
        let Some(link) = self.open_link(&d) else { return };
        let tc = self.tally(&d.tunnel.name, d.source);
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
                match connect(addr, &d.tunnel.kind) {
                    Ok(ctrl) => {
                        let from = SocketAddr::new(unspecified(addr.ip()), 0);
                        let hs =
                            Box::new(Handshake::Socks5(Socks5Handshake::associate(from, auth.is_some())));
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
                    Ok(data) => Some(Link::Direct { data }),
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
                Some(Link::DnsOverTcp { conns: Vec::new() })
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
            Link::Direct { data } => {
                reg.register(data, slab::token(slot, generation, Kind::UdpData), Interest::READABLE).is_ok()
            }
            Link::Relay { .. } | Link::DnsOverTcp { .. } | Link::Empty => true,
        }
    }

    /// Sends (or queues) one datagram of a session; `dst` is where the
    /// client sent it (DNS to a resolver that is not public goes to
    /// `dns.upstream` instead).
    fn send_on(&mut self, slot: usize, dst: SocketAddr, data: &[u8]) {
        let target = self.settings.dns.target(dst);
        let Some(s) = self.udp.sessions.get_mut(slot) else { return };
        if target != dst {
            s.dns_alias = Some((target, dst));
        }
        let sent = match &mut s.link {
            Link::Associating { pending, .. } => {
                if pending.len() < self.udp.pending_max {
                    // Only while the association is set up: copied once.
                    pending.push_back((dst, data.into()));
                } else {
                    Counters::inc(&self.counters.udp_drop_pending);
                }
                return;
            }
            Link::Relay { data: sock, .. } => send_to_relay(sock, target, data),
            Link::Direct { data: sock } => sock.send_to(data, target).map(|_| ()),
            Link::DnsOverTcp { .. } => {
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
            Kind::UdpData if self.udp.sessions.is_live(slot, generation) => self.on_data(slot),
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
                    if !(ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
                        return;
                    }
                    match ctrl.take_error() {
                        Ok(None) => {}
                        Ok(Some(e)) | Err(e) => {
                            let why = format!("cannot connect to the tunnel server: {e}");
                            return self.fail_session(slot, &why);
                        }
                    }
                    match ctrl.peer_addr() {
                        Ok(_) => *connected = true,
                        Err(e) if e.kind() == ErrorKind::NotConnected => return,
                        Err(e) => return self.fail_session(slot, &format!("cannot connect: {e}")),
                    }
                    let _ = keepalive(&SockRef::from(&*ctrl));
                }
                match drive_handshake(ctrl, hs, auth_of(&s.tunnel), scratch) {
                    Drive::Pending => return,
                    Drive::Failed(why, _) => (None, why),
                    Drive::Done(_) => (hs.bound(), String::new()),
                }
            }
            Link::Relay { ctrl, .. } => {
                // The association lives as long as this connection; anything
                // the server says on it is ignored until it closes.
                loop {
                    match ctrl.read(scratch) {
                        Ok(0) => return self.fail_session(slot, "control connection closed by the server"),
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return self.fail_session(slot, &format!("control connection: {e}")),
                    }
                }
            }
            Link::Direct { .. } | Link::DnsOverTcp { .. } | Link::Empty => return,
        };
        let Some(bound) = ready else { return self.fail_session(slot, &format!("UDP ASSOCIATE: {why}")) };
        let relay = relay_addr(bound, &s.tunnel);
        let data = (|| -> std::io::Result<UdpSocket> {
            let sock = UdpSocket::bind(SocketAddr::new(unspecified(relay.ip()), 0))?;
            sock.connect(relay)?;
            Ok(sock)
        })();
        let mut data = match data {
            Ok(d) => d,
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
        for (dst, d) in pending {
            self.send_on(slot, dst, &d);
        }
    }

    /// Datagrams from the relay (or, for Direct, from any remote).
    fn on_data(&mut self, slot: usize) {
        let now = self.now;
        loop {
            let Some(s) = self.udp.sessions.get_mut(slot) else { return };
            let client = s.client;
            let scratch = &mut self.relay.scratch[..];
            let (remote, payload) = match &mut s.link {
                Link::Relay { data, .. } => match data.recv(scratch) {
                    Ok(n) => match socks5::parse_udp_header(&scratch[..n]) {
                        Ok((remote, off)) => (unmapped(remote), off..n),
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
                Link::Direct { data } => match data.recv_from(scratch) {
                    Ok((n, from)) => (unmapped(from), 0..n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => continue,
                },
                Link::Associating { .. } | Link::DnsOverTcp { .. } | Link::Empty => return,
            };
            // The answer to a redirected query comes from the address asked.
            let remote = match s.dns_alias {
                Some((went, asked)) if went == remote => asked,
                _ => remote,
            };
            self.udp.table.touch_inbound(&client, now);
            let bytes = &self.relay.scratch[payload];
            let r = self.udp.replies.send(remote, client, bytes);
            let n = bytes.len() as u64;
            if r.is_ok()
                && let Some(s) = self.udp.sessions.get(slot)
            {
                s.tc.inc(|c| &c.udp_dgrams_down);
                s.tc.add(|c| &c.udp_bytes_down, n);
            }
            self.count_reply(r, remote, client, n);
        }
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
                if self.udp.replies.first_failure(remote) {
                    warn!(target: "egressd::udp",
                            "cannot send replies from {remote} (bind: {e}); is a local service using that address and port?");
                }
            }
            Err(ReplyError::Send(e)) => {
                Counters::inc(&self.counters.udp_drop_send);
                debug!(target: "egressd::udp", "{remote} -> {client}: reply not sent: {e}");
            }
        }
        Counters::set(&self.counters.udp_reply_sockets, self.udp.replies.lru.len() as u64);
    }

    /// Ends every session of these sources; returns how many.
    pub(super) fn end_sessions_of(&mut self, cidr: crate::route::Cidr) -> usize {
        let slots = self.udp.sessions.slots_where(|s| cidr.contains(s.client.ip()));
        let n = slots.len();
        for slot in slots {
            self.end_session(slot, "route changed (--reset-flows)");
        }
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
            Counters::dec(&self.counters.udp_sessions_active);
            s.tc.dec(|c| &c.udp_sessions_active);
            match s.link {
                Link::Associating { pending, .. } => {
                    Counters::add(&self.counters.udp_drop_pending, pending.len() as u64);
                }
                Link::DnsOverTcp { conns } => {
                    for (_, c) in conns {
                        self.close_dns(c, "session ended");
                    }
                }
                _ => {}
            }
        }
    }
}

/// Where datagrams for the association go: the reply's relay address, unless
/// it is unspecified or private where the server is not (a relay behind NAT
/// reporting its inside address): then the server's own address, with the
/// reported port. `udp_relay` in the config overrides both.
fn relay_addr(bound: Bound, t: &Tunnel) -> SocketAddr {
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

fn unspecified(like: IpAddr) -> IpAddr {
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

pub(super) enum ReplyError {
    Bind(std::io::Error),
    Send(std::io::Error),
}

impl ReplyPool {
    /// Sends `payload` to `client` from `remote`'s address.
    pub(super) fn send(
        &mut self,
        remote: SocketAddr,
        client: SocketAddr,
        payload: &[u8],
    ) -> Result<(), ReplyError> {
        if remote.is_ipv4() != client.is_ipv4() {
            return Err(ReplyError::Send(ErrorKind::InvalidInput.into()));
        }
        if self.lru.touch(&remote).is_none() {
            let sock = reply_socket(remote).map_err(ReplyError::Bind)?;
            while self.lru.len() >= self.cap {
                self.lru.pop_oldest();
            }
            self.lru.insert(remote, sock);
        }
        let sock = self.lru.get_mut(&remote).expect("just ensured");
        sock.send_to(payload, client).map(|_| ()).map_err(ReplyError::Send)
    }

    /// True the first time a remote's bind fails (so it is logged once).
    fn first_failure(&mut self, remote: SocketAddr) -> bool {
        if self.failed.get_mut(&remote).is_some() {
            return false;
        }
        if self.failed.len() >= 1024 {
            self.failed.pop_oldest();
        }
        self.failed.insert(remote, ());
        true
    }
}
