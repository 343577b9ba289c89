//! A client's datagram finds its session, or opens one: the source is
//! admitted (its new-session rate, its route's cap on sources), the
//! upstream side is opened for the tunnel's kind, the table makes room,
//! and the sockets are registered.
//!
//! ```text
//!  datagram ─► session of (client addr, port)? ──yes──► send_on
//!                 │ no
//!                 ▼
//!  over new_sessions_per_source_per_sec? ──► dropped (udp_drop_source_rate)
//!  a new source past max_sources_per_route? ──► dropped (udp_drop_source_cap)
//!                 ▼
//!  open_link: Socks5 udp ─► pooled association (Relay) or a connect (Associating)
//!             Direct     ─► a socket of the session's own
//!             no UDP     ─► DnsOverTcp (port 53, dns_over_tcp) or dropped (udp_drop_no_udp)
//!                 ▼
//!  into the table (making room: evicted, source full, expired, replaced) ─► registered ─► send_on
//! ```

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use log::debug;
use mio::Interest;
use mio::net::{TcpStream, UdpSocket};
use socket2::{Domain, Socket, Type};

use super::{Link, Session, UdpBatch, associate_handshake, unspecified};
use crate::config::{Credentials, Tunnel, TunnelKind};
use crate::route::Cidr;
use crate::stats::Counters;
use crate::udp::{Admit, Insert};
use crate::upstream::Handshake;
use crate::worker::WorkerLoop;
use crate::worker::connect;
use crate::worker::slab::{self, Kind};

/// One datagram as the worker handles it.
struct Datagram<'a> {
    client: SocketAddr,
    orig_dst: SocketAddr,
    tunnel: &'a Arc<Tunnel>,
    source: Option<Cidr>,
    data: &'a [u8],
}

impl WorkerLoop {
    /// A batch routed before the last reset: its datagrams are routed again
    /// (see `routing`), so no session starts on a tunnel its source was
    /// moved from; those no route takes now are dropped and counted.
    pub(in crate::worker) fn reroute_batch(&mut self, b: &mut UdpBatch) {
        let rejected = b.reroute(self.routes.view());
        if rejected > 0 {
            Counters::add(&self.counters.udp_drop_no_route, rejected as u64);
            debug!(target: "egressd::udp", "{rejected} datagrams routed before a reset have no route now; dropped");
        }
    }

    /// Handles a batch, then sends it back empty for the fronts to reuse.
    pub(in crate::worker) fn on_batch(&mut self, mut b: Box<UdpBatch>) {
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
        // An existing session keeps its association even when a reload or a
        // route change points its source elsewhere: existing flows keep going
        // (SPEC §4); `route set --reset-flows` is how to move it now.
        if let Some(&mut slot) = self.udp.table.touch_outbound(&d.client, d.orig_dst.port(), self.now) {
            self.send_on(slot, d.orig_dst, d.data);
            return;
        }
        if let Some(slot) = self.open_session(&d) {
            self.send_on(slot, d.orig_dst, d.data);
        }
    }

    /// A new session for the datagram's client: its slot, or `None` when
    /// the source is refused or the session cannot open (dropped and
    /// counted).
    fn open_session(&mut self, d: &Datagram<'_>) -> Option<usize> {
        let now = self.now;
        let tc = self.tally(&d.tunnel.name, d.source);
        if self.udp.table.admit(d.client.ip(), now) == Admit::OverRate {
            self.udp.over_limit(d.client.ip(), now);
            tc.inc_all(&self.counters, |c| &c.udp_drop_source_rate);
            debug!(target: "egressd::udp", "{} -> udp {}: source over new_sessions_per_source_per_sec; dropped",
                d.client, d.orig_dst);
            return None;
        }
        // A spent quota (Reject): nothing opens for it (issue 27).
        let routes = &self.routes;
        if self.shapers.refuses(d.client.ip(), || routes.view().quota(d.client.ip())) {
            tc.inc_all(&self.counters, |c| &c.udp_drop_quota);
            return None;
        }
        // A source's first session: its route's cap on distinct sources (issue 23).
        let fresh = self.udp.table.source_len(&d.client.ip()) == 0;
        if fresh && !self.udp_source_first(d.client, d.source, &tc) {
            return None;
        }
        let Some(link) = self.open_link(d) else {
            if fresh {
                self.udp_source_gone(d.client.ip());
            }
            return None;
        };
        tc.inc_all(&self.counters, |c| &c.udp_sessions_total);
        tc.inc_all(&self.counters, |c| &c.udp_sessions_active);
        let routes = &self.routes;
        let holds = || crate::worker::shaping::holds(routes.view(), d.client.ip());
        let shaped = self.shapers.open(d.client.ip(), (d.tunnel, &tc), holds, now);
        let tunnel = Arc::clone(d.tunnel);
        let session = Session { client: d.client, dns_alias: None, tunnel, tc, link, shaped };
        let (slot, generation) = self.udp.sessions.insert(session);
        debug!(target: "egressd::udp", "{} -> udp {} via {}: new session", d.client, d.orig_dst, d.tunnel.name);
        let made_room = self.udp.table.insert(d.client, d.orig_dst.port(), slot, now);
        self.made_room(made_room);
        if !self.register_session(slot, generation) {
            self.end_session(slot, "cannot register sockets");
            return None;
        }
        let deadline = now + self.settings.tcp.connect_timeout;
        self.timers.push(std::cmp::Reverse((deadline, slab::token(slot, generation, Kind::UdpControl))));
        Some(slot)
    }

    /// Closes the session the table let go to take a new one in, and
    /// counts why.
    pub(super) fn made_room(&mut self, r: Insert<usize>) {
        match r {
            Insert::Added => {}
            Insert::Evicted(client, old) => {
                self.count_session(old, |c| &c.udp_sessions_evicted);
                debug!(target: "egressd::udp", "{client}: session evicted (max_sessions)");
                self.drop_session(old);
            }
            Insert::SourceFull(client, old) => {
                self.count_session(old, |c| &c.udp_source_full);
                debug!(target: "egressd::udp", "{client}: session evicted (max_sessions_per_source)");
                self.drop_session(old);
            }
            Insert::Expired(_, old) | Insert::Replaced(old) => self.drop_session(old),
        }
    }

    /// The upstream side of a new session, or `None` (dropped and counted).
    fn open_link(&mut self, d: &Datagram<'_>) -> Option<Link> {
        match &d.tunnel.kind {
            TunnelKind::Socks5 { server, auth, udp: true, .. } => {
                let Some(addr) = server.addr else {
                    Counters::inc(&self.counters.udp_assoc_failed);
                    return None;
                };
                self.open_association(d, addr, auth.as_ref())
            }
            TunnelKind::Direct { interface, mark, bind } => {
                let target = self.settings.dns.target(d.orig_dst);
                match direct_socket(target, interface.as_deref(), *mark, *bind) {
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

    /// A SOCKS5 association through the server at `addr`: a ready one from
    /// the tunnel's pool (the datagram goes at once), else a connect for
    /// UDP ASSOCIATE.
    fn open_association(
        &mut self,
        d: &Datagram<'_>,
        addr: SocketAddr,
        auth: Option<&Credentials>,
    ) -> Option<Link> {
        if let Some(a) = self.take_pooled_udp(d.tunnel, d.client.ip()) {
            return Some(Link::Relay {
                ctrl: TcpStream::from_std(a.ctrl),
                data: UdpSocket::from_std(a.data),
            });
        }
        let pipelined = self.pipelines(d.tunnel);
        match connect(addr, &d.tunnel.kind) {
            Ok(ctrl) => {
                let hs = Box::new(Handshake::Socks5(associate_handshake(addr, auth, pipelined)));
                Some(Link::Associating { ctrl, hs, connected: false, pending: VecDeque::new() })
            }
            Err(e) => {
                self.log_udp_failure(d.tunnel, &format!("cannot open a socket to {addr}: {e}"));
                Counters::inc(&self.counters.udp_assoc_failed);
                None
            }
        }
    }

    pub(super) fn register_session(&mut self, slot: usize, generation: u32) -> bool {
        let reg = self.poll.registry();
        let Some(s) = self.udp.sessions.get_mut(slot) else { return false };
        let control = slab::token(slot, generation, Kind::UdpControl);
        let data_token = slab::token(slot, generation, Kind::UdpData);
        match &mut s.link {
            Link::Associating { ctrl, .. } => {
                reg.register(ctrl, control, Interest::READABLE | Interest::WRITABLE).is_ok()
            }
            Link::Direct { data, .. } => reg.register(data, data_token, Interest::READABLE).is_ok(),
            // A pooled association: both sockets at once.
            Link::Relay { ctrl, data } => {
                reg.register(ctrl, control, Interest::READABLE).is_ok()
                    && reg.register(data, data_token, Interest::READABLE).is_ok()
            }
            Link::DnsOverTcp | Link::Empty => true,
        }
    }
}

/// A Direct session's socket for datagrams to `target`, with the tunnel's
/// options (interface, mark, local address).
fn direct_socket(
    target: SocketAddr,
    interface: Option<&str>,
    mark: Option<u32>,
    bind: Option<IpAddr>,
) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(target), Type::DGRAM.nonblocking().cloexec(), None)?;
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes()))?;
    }
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    let local = match bind {
        Some(ip) if ip.is_ipv4() == target.is_ipv4() => SocketAddr::new(ip, 0),
        _ => SocketAddr::new(unspecified(target.ip()), 0),
    };
    s.bind(&local.into())?;
    Ok(UdpSocket::from_std(s.into()))
}
