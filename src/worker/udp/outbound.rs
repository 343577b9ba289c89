//! A client's datagram on its way out, by the session's link: queued while
//! the association is made, wrapped for the relay, sent from the Direct
//! socket, or carried as DNS over TCP.
//!
//! ```text
//!  send_on ─► Associating ─► queued (≤ pending_datagrams: udp_drop_pending;
//!        │                    the byte budgets: udp_drop_pending_bytes)
//!        ├──► Relay ───────► RFC 1928 §7 header + payload, one sendmsg
//!        ├──► Direct ──────► sendto; the destination's fingerprint noted
//!        └──► DnsOverTcp ──► port 53: `dns_query`; else udp_drop_no_udp
//! ```

use std::hash::BuildHasher;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;

use log::debug;
use mio::net::UdpSocket;
use socket2::SockRef;

use super::{Link, PENDING_OVERHEAD};
use crate::shape::Dir;
use crate::stats::Counters;
use crate::wire::socks5;
use crate::worker::WorkerLoop;

impl WorkerLoop {
    /// Sends (or queues) one datagram of a session; `dst` is where the
    /// client sent it (DNS to a resolver that is not public goes to
    /// `dns.upstream` instead).
    pub(super) fn send_on(&mut self, slot: usize, dst: SocketAddr, data: &[u8]) {
        let target = self.settings.dns.target(dst);
        if !self.shapers.none() && !self.police(slot, Dir::Up, data.len()) {
            return;
        }
        let Some(s) = self.udp.sessions.get_mut(slot) else { return };
        if target != dst {
            s.dns_alias.get_or_insert_default().record(target, data, dst);
        }
        let sent = match &mut s.link {
            Link::Associating { .. } => return self.queue_pending(slot, dst, data),
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
                s.tc.inc_all(&self.counters, |c| &c.udp_dgrams_up);
                s.tc.add_all(&self.counters, |c| &c.udp_bytes_up, data.len() as u64);
            }
            Err(e) => {
                Counters::inc(&self.counters.udp_drop_send);
                debug!(target: "egressd::udp", "{} -> udp {dst}: send failed: {e}", s.client);
            }
        }
    }

    /// Whether a datagram of `len` bytes of a session may go in `dir`: a
    /// shaped source's bucket must grant it whole (UDP has no backpressure
    /// to wait on, so it is policed), else it is dropped and counted in
    /// `udp_drop_shaped`. DNS carried over TCP (a tunnel without UDP) is
    /// not shaped (a few small queries, and a dropped one costs a lookup),
    /// but counts against a quota. A spent quota (Reject) drops every
    /// datagram (`udp_drop_quota`).
    pub(super) fn police(&mut self, slot: usize, dir: Dir, len: usize) -> bool {
        let Some(s) = self.udp.sessions.get(slot) else { return true };
        if !s.shaped {
            return true;
        }
        let Some(g) = self.shapers.get(s.client.ip()) else { return true };
        if g.refused() || g.over_quota(len) {
            s.tc.inc_all(&self.counters, |c| &c.udp_drop_quota);
            return false;
        }
        if matches!(s.link, Link::DnsOverTcp) {
            // Counted against a quota, never shaped.
            g.count(len);
            return true;
        }
        if g.allow(dir, len, self.now).bytes < len {
            s.tc.inc_all(&self.counters, |c| &c.udp_drop_shaped);
            s.tc.add_all(&self.counters, |c| &c.udp_bytes_shaped, len as u64);
            return false;
        }
        g.consume(dir, len, self.now);
        true
    }

    /// Queues a datagram of an associating session (copied once), within
    /// `pending_datagrams` and the source's and worker's pending bytes.
    fn queue_pending(&mut self, slot: usize, dst: SocketAddr, data: &[u8]) {
        let Some(s) = self.udp.sessions.get(slot) else { return };
        let Link::Associating { pending, .. } = &s.link else { return };
        if pending.len() >= self.udp.pending_max {
            Counters::inc(&self.counters.udp_drop_pending);
            return;
        }
        let client = s.client;
        if !self.udp.reserve_pending(client.ip(), data.len() + PENDING_OVERHEAD) {
            self.udp.over_limit(client.ip(), self.now);
            self.count_session(slot, |c| &c.udp_drop_pending_bytes);
            return;
        }
        if let Some(Link::Associating { pending, .. }) = self.udp.sessions.get_mut(slot).map(|s| &mut s.link)
        {
            pending.push_back((dst, data.into()));
        }
    }
}

/// One datagram to the relay: the RFC 1928 §7 header and the payload in
/// one `sendmsg`, without copying the payload.
fn send_to_relay(sock: &UdpSocket, dst: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut h = [0u8; socks5::UDP_HEADER_MAX];
    let n = socks5::encode_udp_header(dst, &mut h);
    SockRef::from(sock).send_vectored(&[IoSlice::new(&h[..n]), IoSlice::new(payload)]).map(|_| ())
}
