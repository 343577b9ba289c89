//! UDP sessions moved to the new process of an upgrade (issue 28): the old
//! one takes each relaying session out whole (its sockets deregistered,
//! never closed upstream), the new one takes it in as if it had opened it.
//! The association, the relay socket and so the exit's address and port
//! stay the same; what the old process's table knew of the session's age
//! and solicited remotes starts afresh.
//!
//! ```text
//!  old worker: Relay { ctrl, data } | Direct { data } ─► Moved (fds) ─► handover record
//!  new worker: Moved ─► route still names the tunnel? ─► Session (Relay | Direct), registered
//!                            └─ no: closed (its source moved; counted udp_drop_no_route)
//! ```

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use log::debug;
use mio::net::{TcpStream, UdpSocket};

use super::{Link, Session};
use crate::stats::Counters;
use crate::udp::DNS_PORT;
use crate::worker::WorkerLoop;

/// One session on its way between processes.
#[derive(Debug)]
pub struct Moved {
    pub client: SocketAddr,
    /// It only ever sent to port 53 (the short idle timeout).
    pub dns_only: bool,
    /// The tunnel it relays through, by name.
    pub tunnel: String,
    /// SOCKS5: the control connection that keeps the association; `None`
    /// for a Direct session.
    pub ctrl: Option<OwnedFd>,
    /// The relay socket (connected to the server's relay), or the Direct
    /// session's own socket.
    pub data: OwnedFd,
}

impl WorkerLoop {
    /// Takes out every session that relays (associating ones finish here,
    /// DNS over TCP stays with its pooled connections).
    pub(in crate::worker) fn export_sessions(&mut self) -> Vec<Moved> {
        let slots =
            self.udp.sessions.slots_where(|s| matches!(s.link, Link::Relay { .. } | Link::Direct { .. }));
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            let Some(s) = self.udp.sessions.get_mut(slot) else { continue };
            let link = std::mem::replace(&mut s.link, Link::Empty);
            let (client, tunnel) = (s.client, s.tunnel.name.clone());
            let dns_only = self.udp.table.kind(&client) == Some(crate::udp::Kind::DnsOnly);
            let reg = self.poll.registry();
            let moved = match link {
                Link::Relay { mut ctrl, mut data } => {
                    // Registered in this epoll, the description lives on elsewhere: deregister first.
                    let _ = reg.deregister(&mut ctrl);
                    let _ = reg.deregister(&mut data);
                    Moved {
                        client,
                        dns_only,
                        tunnel,
                        ctrl: Some(OwnedFd::from(ctrl)),
                        data: OwnedFd::from(data),
                    }
                }
                Link::Direct { mut data, .. } => {
                    let _ = reg.deregister(&mut data);
                    Moved { client, dns_only, tunnel, ctrl: None, data: OwnedFd::from(data) }
                }
                other => {
                    if let Some(s) = self.udp.sessions.get_mut(slot) {
                        s.link = other;
                    }
                    continue;
                }
            };
            out.push(moved);
            self.end_session(slot, "moved to the new process (upgrade)");
        }
        out
    }

    /// Takes in sessions of the process this one replaces; how many.
    pub(in crate::worker) fn adopt_sessions(&mut self, moved: Vec<Moved>) -> usize {
        let mut n = 0;
        for m in moved {
            // The route may have changed with the new config: a session
            // never goes on through a tunnel its source no longer has.
            let route = self.routes.route(m.client.ip()).filter(|(_, t)| t.name == m.tunnel);
            let Some((source, tunnel)) = route else {
                Counters::inc(&self.counters.udp_drop_no_route);
                debug!(target: "egressd::udp", "{}: moved session via {} has no route there now; closed", m.client, m.tunnel);
                continue;
            };
            let link = match m.ctrl {
                Some(ctrl) => Link::Relay {
                    ctrl: TcpStream::from_std(std::net::TcpStream::from(ctrl)),
                    data: UdpSocket::from_std(std::net::UdpSocket::from(m.data)),
                },
                None => Link::Direct {
                    data: UdpSocket::from_std(std::net::UdpSocket::from(m.data)),
                    sent: [0; 4],
                    next: 0,
                },
            };
            let tc = self.tally(&tunnel.name, source);
            tc.inc_all(&self.counters, |c| &c.udp_sessions_total);
            tc.inc_all(&self.counters, |c| &c.udp_sessions_active);
            let now = self.now;
            let routes = &self.routes;
            let holds = || crate::worker::shaping::holds(routes.view(), m.client.ip());
            let shaped = self.shapers.open(m.client.ip(), (&tunnel, &tc), holds, now);
            let session =
                Session { client: m.client, dns_alias: None, tunnel: Arc::clone(&tunnel), tc, link, shaped };
            let (slot, generation) = self.udp.sessions.insert(session);
            // Any port but 53 makes it an ordinary session, as it was.
            let port = if m.dns_only { DNS_PORT } else { 0 };
            let made_room = self.udp.table.insert(m.client, port, slot, now);
            self.made_room(made_room);
            if !self.register_session(slot, generation) {
                self.end_session(slot, "cannot register sockets");
                continue;
            }
            n += 1;
        }
        n
    }
}
