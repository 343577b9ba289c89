//! UDP in the front loops: TPROXY'd datagrams and their original destination.
//!
//! Each listen address has, per front loop, a UDP socket with
//! IP_TRANSPARENT (TPROXY only hands datagrams to transparent sockets),
//! IP(V6)_RECVORIGDSTADDR (the destination the container sent to, which
//! TPROXY leaves in the packet), SO_REUSEPORT and a large receive buffer.
//! A datagram without an original destination reached the listener
//! directly, not through TPROXY: it is dropped and counted.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use log::debug;
use mio::net::UdpSocket;
use socket2::{Domain, Socket, Type};

use super::{FrontLoop, normalize, worker_for};
use crate::stats::Counters;
use crate::sys;
use crate::wire::cmsg::{CmsgError, orig_dst_from_cmsgs};
use crate::wire::sockaddr;
use crate::worker::{Handoff, UdpDatagram};

/// Largest datagram payload we accept (IPv4's maximum); longer is truncated and dropped.
pub const MAX_DATAGRAM: usize = 65_535;

/// A TPROXY receive socket for `addr`.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking().cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true)?;
    }
    sys::set_recv_orig_dst(s.as_fd(), addr.is_ipv6())?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(UdpSocket::from_std(s.into()))
}

impl FrontLoop {
    /// Receives until the socket is empty (edge-triggered).
    pub(super) fn recv_all(&mut self, i: usize) {
        let Some((sock, listen_addr)) = self.udp.get(i) else { return };
        let listen_addr = *listen_addr;
        loop {
            let meta = match sys::recv_msg(sock.as_fd(), &mut self.rbuf, &mut self.name, &mut self.ctrl) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP errors queued on the socket concern nobody here.
                Err(e) => {
                    debug!(target: "egressd::front", "udp recv on {listen_addr}: {e}");
                    continue;
                }
            };
            let Some(client) = sockaddr::parse(&self.name.0[..meta.name_len]).map(normalize) else {
                continue;
            };
            if meta.truncated {
                Counters::inc(&self.counters.udp_drop_truncated);
                continue;
            }
            let orig = if meta.ctrl_truncated {
                Err(CmsgError::Truncated)
            } else {
                orig_dst_from_cmsgs(&self.ctrl.0[..meta.ctrl_len])
            };
            let orig_dst = match orig.map(normalize) {
                Ok(d) if d != listen_addr && !self.is_own_listener(d) => d,
                Ok(_) | Err(CmsgError::Missing) => {
                    Counters::inc(&self.counters.udp_drop_not_tproxied);
                    debug!(target: "egressd::front", "{client}: datagram straight to the listener; dropped");
                    continue;
                }
                Err(e) => {
                    Counters::inc(&self.counters.udp_drop_truncated);
                    debug!(target: "egressd::front", "{client}: {e}; dropped");
                    continue;
                }
            };
            let Some(tunnel) = self.shared.route(client.ip()) else {
                Counters::inc(&self.counters.udp_drop_no_route);
                debug!(target: "egressd::front", "{client} -> udp {orig_dst}: no route for this source; dropped");
                continue;
            };
            let tunnel = Arc::clone(tunnel);
            let data: Box<[u8]> = self.rbuf[..meta.len].into();
            let w = worker_for(client.ip(), self.workers.len());
            match self.workers[w].try_send(Handoff::Udp(UdpDatagram { client, orig_dst, tunnel, data })) {
                Ok(()) => self.to_wake[w] = true,
                Err(_) => Counters::inc(&self.counters.udp_drop_queue_full),
            }
        }
    }
}
