//! How a session ends: idle past its timeout, no ASSOCIATE answer in time,
//! a failed association or control connection, a route reset, or made
//! room for (see `open`). Its sockets close with it; datagrams still
//! queued are dropped and counted, and their bytes go back to the budget.
//!
//! ```text
//!  idle (table) ──────────────► Associating? fail_session : drop_session
//!  connect_timeout_secs timer ─► still Associating? fail_session
//!  route reset ─────────────────► end_session
//!  fail_session (udp_assoc_failed, warned once a minute a tunnel) ─► end_session
//!  end_session (out of the table) ─► drop_session (gauges, pending released)
//! ```

use std::sync::Arc;

use log::{debug, warn};

use super::{Link, PENDING_OVERHEAD};
use crate::config::Tunnel;
use crate::stats::Counters;
use crate::worker::WorkerLoop;
use crate::worker::slab::Kind;

impl WorkerLoop {
    /// Ends every session of these sources, and closes their DNS-over-TCP
    /// connections; returns how many sessions.
    pub(in crate::worker) fn end_sessions_of(&mut self, cidr: crate::route::Cidr) -> usize {
        let slots = self.udp.sessions.slots_where(|s| cidr.contains(s.client.ip()));
        let n = slots.len();
        for slot in slots {
            self.end_session(slot, "route changed (--reset-flows)");
        }
        self.close_dns_of(cidr);
        n
    }

    /// Ends sessions whose idle time ran out.
    pub(in crate::worker) fn expire_udp_idle(&mut self) {
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
    pub(in crate::worker) fn expire_udp(&mut self, kind: Kind, slot: usize, generation: u32) {
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

    pub(super) fn fail_session(&mut self, slot: usize, why: &str) {
        self.count_session(slot, |c| &c.udp_assoc_failed);
        if let Some(s) = self.udp.sessions.get(slot) {
            let t = Arc::clone(&s.tunnel);
            self.log_udp_failure(&t, why);
        }
        self.end_session(slot, why);
    }

    pub(super) fn log_udp_failure(&mut self, t: &Tunnel, why: &str) {
        if self.should_warn(&t.name) {
            warn!(target: "egressd::udp", "udp via {}: {why}; datagrams dropped", t.name);
        } else {
            debug!(target: "egressd::udp", "udp via {}: {why}; datagrams dropped", t.name);
        }
    }

    pub(super) fn end_session(&mut self, slot: usize, why: &str) {
        if let Some(s) = self.udp.sessions.get(slot) {
            debug!(target: "egressd::udp", "{} via {}: session ended: {why}", s.client, s.tunnel.name);
            let client = s.client;
            if self.udp.table.get_mut(&client).copied() == Some(slot) {
                self.udp.table.remove(&client);
            }
        }
        self.drop_session(slot);
    }

    pub(super) fn drop_session(&mut self, slot: usize) {
        let Some(s) = self.udp.sessions.remove(slot) else { return };
        if self.udp.table.source_len(&s.client.ip()) == 0 {
            self.udp_source_gone(s.client.ip());
        }
        s.tc.dec_all(&self.counters, |c| &c.udp_sessions_active);
        if s.shaped {
            self.shapers.close(s.client.ip(), &self.counters);
        }
        // A DNS-over-TCP session's connections are its source's, pooled
        // (`dns`): they outlive it, until idle or closed.
        if let Link::Associating { pending, .. } = s.link {
            Counters::add(&self.counters.udp_drop_pending, pending.len() as u64);
            let bytes: usize = pending.iter().map(|(_, d)| d.len() + PENDING_OVERHEAD).sum();
            self.udp.release_pending(s.client.ip(), bytes);
        }
    }
}
