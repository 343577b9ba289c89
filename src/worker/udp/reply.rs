//! Replies to containers: the pool of IP_TRANSPARENT sockets they leave
//! from, and the checks on the address a reply claims to come from.
//!
//! A reply is sent from the remote's own address, and that address comes
//! from outside: the SOCKS5 relay's RFC 1928 §7 header, or the peer of a
//! Direct socket (anyone on the internet can send to it: full cone). A
//! relay that names the host's own address, a loopback address or another
//! container's would have egressd forge, on the container network, a
//! datagram from a host service or a neighbour. Such replies are dropped
//! and counted (`udp_drop_reply_source`). Answers egressd itself sends
//! from an address of its choosing (DNS over TCP) do not go through
//! [`SourceCheck`].
//!
//! The pool keeps two LRUs. Sockets for remotes a container has sent to
//! (`solicited`) may evict anything; sockets for datagrams nobody asked for
//! (a Direct session's unsolicited inbound) only evict each other, and
//! hold at most a quarter of the pool: a remote spraying a container from
//! many addresses cannot evict the reply sockets other containers use.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::udp::Lru;

/// How long a "this address is (not) the host's" verdict is trusted.
const LOCAL_TTL: Duration = Duration::from_secs(10);

pub(in crate::worker) enum ReplyError {
    Bind(std::io::Error),
    Send(std::io::Error),
    /// Unsolicited, and no unsolicited socket to give up for it.
    NoRoom,
}

/// Bounded pool of IP_TRANSPARENT sockets keyed by the remote address they
/// are bound to; shared by every session of the worker.
pub(in crate::worker) struct ReplyPool {
    pub(in crate::worker) lru: Lru<SocketAddr, std::net::UdpSocket>,
    loose: Lru<SocketAddr, std::net::UdpSocket>,
    cap: usize,
    /// Remotes whose bind failed, logged once each (bounded).
    failed: Lru<SocketAddr, ()>,
}

impl ReplyPool {
    pub(in crate::worker) fn new(cap: usize) -> ReplyPool {
        ReplyPool { lru: Lru::new(), loose: Lru::new(), cap: cap.max(1), failed: Lru::new() }
    }

    /// A new bound (a reload); the pool shrinks to it as it is used.
    pub(in crate::worker) fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    /// Reply sockets open.
    pub(in crate::worker) fn len(&self) -> usize {
        self.lru.len() + self.loose.len()
    }

    /// Sends `payload` to `client` from `remote`'s address, for a remote a
    /// container sent to (or egressd's own answer).
    pub(in crate::worker) fn send(
        &mut self,
        remote: SocketAddr,
        client: SocketAddr,
        payload: &[u8],
    ) -> Result<(), ReplyError> {
        self.send_as(remote, client, payload, true)
    }

    /// As [`send`](Self::send); `solicited: false` for a datagram the
    /// client never asked for (see the module doc).
    pub(in crate::worker) fn send_as(
        &mut self,
        remote: SocketAddr,
        client: SocketAddr,
        payload: &[u8],
        solicited: bool,
    ) -> Result<(), ReplyError> {
        if remote.is_ipv4() != client.is_ipv4() {
            return Err(ReplyError::Send(ErrorKind::InvalidInput.into()));
        }
        let hit = if self.lru.touch(&remote).is_some() {
            true
        } else if let Some(sock) = self.loose.remove(&remote).filter(|_| solicited) {
            // Someone asked for it now: it joins the protected sockets.
            self.make_room(true);
            self.lru.insert(remote, sock);
            true
        } else {
            self.loose.touch(&remote).is_some()
        };
        if !hit {
            if !self.make_room(solicited) {
                return Err(ReplyError::NoRoom);
            }
            let sock = reply_socket(remote).map_err(ReplyError::Bind)?;
            if solicited {
                self.lru.insert(remote, sock);
            } else {
                self.loose.insert(remote, sock);
            }
        }
        let sock = match self.lru.get_mut(&remote) {
            Some(s) => s,
            None => self.loose.get_mut(&remote).expect("just ensured"),
        };
        sock.send_to(payload, client).map(|_| ()).map_err(ReplyError::Send)
    }

    /// Makes room for one more socket: unsolicited ones go first; an
    /// unsolicited socket may only replace another (false: no room).
    fn make_room(&mut self, solicited: bool) -> bool {
        if !solicited {
            let loose_cap = (self.cap / 4).max(1);
            while self.loose.len() >= loose_cap || (self.len() >= self.cap && !self.loose.is_empty()) {
                self.loose.pop_oldest();
            }
            return self.len() < self.cap;
        }
        while self.len() >= self.cap {
            if self.loose.pop_oldest().is_none() && self.lru.pop_oldest().is_none() {
                break;
            }
        }
        true
    }

    /// True the first time a remote's bind fails (so it is logged once).
    pub(in crate::worker) fn first_failure(&mut self, remote: SocketAddr) -> bool {
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

/// Why a reply's source address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::worker) enum Refused {
    /// Loopback, unspecified, multicast or broadcast.
    Special,
    /// Inside the container network (intercepted sources or a route's).
    Container,
    /// One of the host's own addresses.
    Host,
}

/// The checks of the module doc, with a small cache of "is this one of the
/// host's addresses" (answered by trying to bind it without
/// IP_TRANSPARENT, which only a local address allows).
#[derive(Default)]
pub(in crate::worker) struct SourceCheck {
    local: Lru<IpAddr, (bool, Instant)>,
}

impl SourceCheck {
    /// Whether a reply may come from `remote`; `container`: it is a
    /// container's address (the routes say so).
    pub(in crate::worker) fn check(
        &mut self,
        remote: IpAddr,
        container: bool,
        now: Instant,
    ) -> Result<(), Refused> {
        if is_special(remote) {
            return Err(Refused::Special);
        }
        if container {
            return Err(Refused::Container);
        }
        let local = match self.local.touch(&remote) {
            Some(&mut (v, at)) if now.saturating_duration_since(at) < LOCAL_TTL => v,
            _ => {
                let v = std::net::UdpSocket::bind(SocketAddr::new(remote, 0)).is_ok();
                if self.local.len() >= 1024 {
                    self.local.pop_oldest();
                }
                self.local.insert(remote, (v, now));
                v
            }
        };
        if local { Err(Refused::Host) } else { Ok(()) }
    }
}

/// Addresses no remote host can answer from.
pub(in crate::worker) fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.to_ipv4_mapped().is_some_and(|m| is_special(IpAddr::V4(m)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Cidr;

    #[test]
    fn reply_sources_refused() {
        let mut c = SourceCheck::default();
        let now = Instant::now();
        let nets: [Cidr; 2] = ["10.8.0.0/24".parse().unwrap(), "fd08::/64".parse().unwrap()];
        let ck = |c: &mut SourceCheck, a: &str| {
            let ip: IpAddr = a.parse().unwrap();
            c.check(ip, nets.iter().any(|n| n.contains(ip)), now)
        };
        assert_eq!(ck(&mut c, "127.0.0.1"), Err(Refused::Special));
        assert_eq!(ck(&mut c, "::1"), Err(Refused::Special));
        assert_eq!(ck(&mut c, "0.0.0.0"), Err(Refused::Special));
        assert_eq!(ck(&mut c, "224.0.0.1"), Err(Refused::Special));
        assert_eq!(ck(&mut c, "255.255.255.255"), Err(Refused::Special));
        assert_eq!(ck(&mut c, "10.8.0.11"), Err(Refused::Container));
        assert_eq!(ck(&mut c, "fd08::11"), Err(Refused::Container));
        // A documentation address is not this host's (nothing binds it here).
        assert_eq!(ck(&mut c, "203.0.113.9"), Ok(()));
        assert_eq!(ck(&mut c, "2001:db8:203::9"), Ok(()));
    }
}
