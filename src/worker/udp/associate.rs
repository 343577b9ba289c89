//! A SOCKS5 session's control connection: the UDP ASSOCIATE handshake,
//! then only its end (RFC 1928 §7: the association lives as long as it).
//! Also what the warm pool's UDP refills share with it: the handshake, the
//! relay's address and the socket to it.
//!
//! ```text
//!  Associating ──event──► connect_result ──Connected──► drive_handshake ──Done(bound)──► relay socket,
//!                              │ Failed / Unknown              │ Failed                   registered
//!                              ▼                               ▼                              │
//!                         fail_session ◄──────────────── fail_session                         ▼
//!                              ▲                                                Relay (the queued
//!                              └──── EOF, error or any byte on the control connection ─┘ datagrams first)
//!  no answer within connect_timeout_secs or the idle timeout: see `end`
//! ```

use std::io::{self, ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use log::debug;
use mio::Interest;
use mio::net::{TcpStream, UdpSocket};
use socket2::{Domain, SockRef, Socket, Type};

use super::{Link, PENDING_OVERHEAD};
use crate::config::{Credentials, Tunnel, TunnelKind};
use crate::upstream::{Handshake, Socks5Handshake};
use crate::wire::sockaddr::unmapped;
use crate::wire::socks5::{self, Bound};
use crate::worker::connect::{Connect, connect_result};
use crate::worker::slab::{self, Kind};
use crate::worker::{Drive, WorkerLoop, auth_of, drive_handshake, keepalive};

/// What an event on a control connection comes to.
enum Control {
    /// Nothing to do until the next event.
    Wait,
    /// The server answered UDP ASSOCIATE with its relay's address.
    Associated(Bound),
    /// The association failed or ended: why.
    Failed(String),
}

impl WorkerLoop {
    /// The control connection: the ASSOCIATE handshake, then only its end.
    pub(super) fn on_control(&mut self, slot: usize, generation: u32, ev: &mio::event::Event) {
        let scratch = &mut self.relay.scratch;
        let s = self.udp.sessions.get_mut(slot).expect("live");
        let control = match &mut s.link {
            Link::Associating { ctrl, hs, connected, .. } => {
                associating(ctrl, hs, connected, auth_of(&s.tunnel), scratch, ev)
            }
            Link::Relay { ctrl, .. } => after_reply(ctrl, scratch),
            Link::Direct { .. } | Link::DnsOverTcp | Link::Empty => return,
        };
        match control {
            Control::Wait => {}
            Control::Associated(bound) => self.associated(slot, generation, bound),
            Control::Failed(why) => self.fail_session(slot, &why),
        }
    }

    /// The association is up: datagrams go to the relay through a socket
    /// of their own, the queued ones first.
    fn associated(&mut self, slot: usize, generation: u32, bound: Bound) {
        let Some(s) = self.udp.sessions.get_mut(slot) else { return };
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
            unreachable!("only an associating session gets an answer")
        };
        debug!(target: "egressd::udp", "{}: associated via {} (relay {relay})", s.client, s.tunnel.name);
        s.link = Link::Relay { ctrl, data };
        let client = s.client;
        for (dst, d) in pending {
            self.udp.release_pending(client.ip(), d.len() + PENDING_OVERHEAD);
            self.send_on(slot, dst, &d);
        }
    }
}

/// An event on the control connection of an association under way: the
/// connect's end, then the handshake.
fn associating(
    ctrl: &mut TcpStream,
    hs: &mut Handshake,
    connected: &mut bool,
    auth: Option<&Credentials>,
    scratch: &mut [u8],
    ev: &mio::event::Event,
) -> Control {
    if !*connected {
        match connect_result(ctrl, ev) {
            Connect::Pending => return Control::Wait,
            Connect::Failed(e) => {
                return Control::Failed(format!("cannot connect to the tunnel server: {e}"));
            }
            Connect::Unknown(e) => return Control::Failed(format!("cannot connect: {e}")),
            Connect::Connected => *connected = true,
        }
        let _ = keepalive(&SockRef::from(&*ctrl));
    }
    match drive_handshake(ctrl, hs, auth, scratch, true) {
        Drive::Pending => Control::Wait,
        Drive::Failed(why, ..) => Control::Failed(format!("UDP ASSOCIATE: {why}")),
        Drive::Done(_) => match hs.bound() {
            Some(bound) => Control::Associated(bound),
            None => Control::Failed("UDP ASSOCIATE: ".to_string()),
        },
    }
}

/// An event on the control connection of an association that is up.
/// Nothing follows the reply on it (RFC 1928 §7): a server that keeps
/// writing there is not speaking SOCKS5, and reading it until it stops
/// would hold the whole worker.
fn after_reply(ctrl: &mut TcpStream, scratch: &mut [u8]) -> Control {
    loop {
        match ctrl.read(scratch) {
            Ok(0) => return Control::Failed("control connection closed by the server".to_string()),
            Ok(_) => return Control::Failed("bytes on the control connection after the reply".to_string()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Control::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Control::Failed(format!("control connection: {e}")),
        }
    }
}

/// UDP ASSOCIATE through the server at `server`: greeting, credentials and
/// request in one flight when the server takes pipelining.
pub(in crate::worker) fn associate_handshake(
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
pub(in crate::worker) fn relay_socket(relay: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(relay), Type::DGRAM.nonblocking().cloexec(), None)?;
    s.bind(&SocketAddr::new(unspecified(relay.ip()), 0).into())?;
    s.connect(&relay.into())?;
    Ok(s.into())
}

/// Where datagrams for the association go: the reply's relay address, unless
/// it is unspecified or private where the server is not (a relay behind NAT
/// reporting its inside address): then the server's own address, with the
/// reported port. `udp_relay` in the config overrides both.
pub(in crate::worker) fn relay_addr(bound: Bound, t: &Tunnel) -> SocketAddr {
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

pub(super) fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}
