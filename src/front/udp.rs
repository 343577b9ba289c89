//! UDP in the front loops: TPROXY'd datagrams and their original destination.
//!
//! Each listen address has, per front loop, a UDP socket with
//! IP_TRANSPARENT (TPROXY only hands datagrams to transparent sockets),
//! IP(V6)_RECVORIGDSTADDR (the destination the container sent to, which
//! TPROXY leaves in the packet), SO_REUSEPORT and a large receive buffer.
//! Datagrams are read with recvmmsg, routed, and packed into one batch per
//! worker; each batch is handed over (one wake) when the socket is drained
//! or the batch is full. One wake-up reads at most [`CALLS_PER_EVENT`]
//! batches of [`BATCH`]: a flood on one listener then waits its turn behind
//! the loop's other sockets (the socket is re-armed, so it is not forgotten). A datagram without an original destination reached
//! the listener directly, not through TPROXY: it is dropped and counted.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use log::debug;
use mio::net::UdpSocket;
use socket2::{Domain, Socket, Type};

use super::{FrontLoop, worker_for};
use crate::stats::Counters;
use crate::sys::{self, RecvSlot};
use crate::wire::cmsg::{CmsgError, orig_dst_from_cmsgs};
use crate::wire::sockaddr;
use crate::wire::sockaddr::unmapped;
use crate::worker::{Handoff, UdpBatch};

/// Largest datagram payload we accept (IPv4's maximum); longer is truncated and dropped.
pub const MAX_DATAGRAM: usize = 65_535;
/// Datagrams per recvmmsg call.
pub const BATCH: usize = 16;
/// recvmmsg calls per readiness event before the loop moves on.
pub const CALLS_PER_EVENT: usize = 8;

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

pub fn recv_slots() -> Vec<RecvSlot> {
    (0..BATCH).map(|_| RecvSlot::default()).collect()
}

/// One allocation for every slot's payload: large enough to be mapped on
/// its own, so pages no datagram ever touched cost no memory.
pub fn recv_data() -> Box<[u8]> {
    vec![0u8; BATCH * MAX_DATAGRAM].into_boxed_slice()
}

impl FrontLoop {
    /// Receives until the socket is empty (edge-triggered), then hands the
    /// batches over.
    pub(super) fn recv_all(&mut self, i: usize) {
        let Some((_, listen_addr)) = self.udp.get(i) else { return };
        let listen_addr = *listen_addr;
        let mut drained = false;
        for _ in 0..CALLS_PER_EVENT {
            let got =
                match sys::recv_mmsg(self.udp[i].0.as_fd(), &mut self.rdata, MAX_DATAGRAM, &mut self.slots) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // ICMP errors queued on the socket concern nobody here.
                    Err(e) => {
                        debug!(target: "egressd::front", "udp recv on {listen_addr}: {e}");
                        continue;
                    }
                };
            for k in 0..got {
                self.route_datagram(k, listen_addr);
            }
            if got < self.slots.len() {
                drained = true;
                break;
            }
        }
        self.flush_batches();
        if !drained {
            // Left readable: EPOLL_CTL_MOD re-checks readiness and queues an
            // event now, so the next turn of the loop comes back here.
            let token = mio::Token(super::UDP_TOKEN + i);
            let sock = &mut self.udp[i].0;
            if let Err(e) = self.poll.registry().reregister(sock, token, mio::Interest::READABLE) {
                debug!(target: "egressd::front", "udp re-arm on {listen_addr}: {e}");
            }
        }
    }

    /// Routes the datagram in receive slot `k` and adds it to its worker's
    /// batch (sent when full, or at the end of the wake-up).
    fn route_datagram(&mut self, k: usize, listen_addr: SocketAddr) {
        // The lengths are the kernel's (clamped to the buffers by `sys`);
        // read through get() all the same: a slice out of bounds here would
        // stop every container's traffic.
        let Some(slot) = self.slots.get(k) else { return };
        let meta = slot.meta;
        let name = slot.name.0.get(..meta.name_len).unwrap_or_default();
        let Some(client) = sockaddr::parse(name).map(unmapped) else { return };
        if meta.truncated {
            Counters::inc(&self.counters.udp_drop_truncated);
            return;
        }
        let orig = if meta.ctrl_truncated {
            Err(CmsgError::Truncated)
        } else {
            slot.ctrl.0.get(..meta.ctrl_len).ok_or(CmsgError::Truncated).and_then(orig_dst_from_cmsgs)
        };
        let orig_dst = match orig.map(unmapped) {
            Ok(d) if d != listen_addr && !self.is_own_listener(d) => d,
            Ok(_) | Err(CmsgError::Missing) => {
                Counters::inc(&self.counters.udp_drop_not_tproxied);
                debug!(target: "egressd::front", "{client}: datagram straight to the listener; dropped");
                return;
            }
            Err(e) => {
                Counters::inc(&self.counters.udp_drop_truncated);
                debug!(target: "egressd::front", "{client}: {e}; dropped");
                return;
            }
        };
        let Some(route) = self.shared.route_id(client.ip()) else {
            Counters::inc(&self.counters.udp_drop_no_route);
            debug!(target: "egressd::front", "{client} -> udp {orig_dst}: no route for this source; dropped");
            return;
        };
        if UdpBatch::sheds(client.ip(), self.workers.len()) {
            Counters::inc(&self.counters.udp_drop_shed);
            return;
        }
        let w = worker_for(client.ip(), self.workers.len());
        if !self.open_batch(w) {
            return;
        }
        let at = k * MAX_DATAGRAM;
        // Never past the slot's own chunk: that is the next datagram's.
        let Some(payload) = self.rdata.get(at..at + meta.len).filter(|_| meta.len <= MAX_DATAGRAM) else {
            Counters::inc(&self.counters.udp_drop_truncated);
            return;
        };
        let Some(batch) = self.batches[w].as_mut() else { return };
        batch.push(client, orig_dst, route, payload);
        if batch.is_full() {
            self.send_batch(w);
        }
    }

    /// Makes sure worker `w` has a batch to add to, routed with the current
    /// snapshot; false (counted) when the workers are too far behind.
    #[inline]
    fn open_batch(&mut self, w: usize) -> bool {
        // A batch holds the items of one snapshot of the routes: its tunnel
        // indexes point into that snapshot's tunnels, and the worker reads
        // its generation (see the worker's `routing`). One routed with an
        // older snapshot goes first.
        if let Some(b) = self.batches[w].as_mut()
            && !b.routed_with(self.seen, &self.shared.tunnels)
        {
            self.send_batch(w);
        }
        if self.batches[w].is_none() {
            let b = match self.workers[w].recycled() {
                Some(b) => Some(b),
                None => UdpBatch::bounded(
                    Arc::clone(&self.shared.tunnels),
                    UdpBatch::max_alive(self.workers.len()),
                ),
            };
            let Some(b) = b else {
                // Every batch the process may hold is queued: the workers
                // are behind, and queueing more would only grow memory.
                Counters::inc(&self.counters.udp_drop_queue_full);
                return false;
            };
            self.batches[w] = Some(b);
        }
        let seen = self.seen;
        let ready = self.batches[w].as_mut().is_some_and(|b| b.routed_with(seen, &self.shared.tunnels));
        if !ready {
            // Cannot be: send_batch leaves no batch or an empty one.
            Counters::inc(&self.counters.udp_drop_queue_full);
        }
        ready
    }

    fn flush_batches(&mut self) {
        for w in 0..self.batches.len() {
            self.send_batch(w);
        }
    }

    fn send_batch(&mut self, w: usize) {
        let Some(mut b) = self.batches[w].take() else { return };
        if b.items.is_empty() {
            // Left over from a batch dropped below: kept for the next datagram.
            self.batches[w] = Some(b);
            return;
        }
        if !b.charge(self.workers.len()) {
            // The workers are behind by the whole in-flight budget.
            Counters::add(&self.counters.udp_drop_queue_full, b.items.len() as u64);
            b.items.clear();
            b.data.clear();
            self.batches[w] = Some(b);
            return;
        }
        match self.workers[w].try_send(Handoff::Udp(b)) {
            Ok(()) => self.workers[w].wake(),
            Err(Handoff::Udp(mut b)) => {
                b.release();
                Counters::add(&self.counters.udp_drop_queue_full, b.items.len() as u64)
            }
            Err(_) => unreachable!("a UDP hand-off comes back as UDP"),
        }
    }
}
