//! Turning flows away, and saying so without flooding the log: a client
//! whose tunnel could not be opened, or whom its source's limits refused,
//! is reset and counted (for the process, its tunnel and its source), and
//! warned about at most once a minute per tunnel or per kind; a UDP source
//! past its route's cap is dropped the same way.

use std::net::{IpAddr, SocketAddr};

use log::{debug, warn};
use socket2::SockRef;

use super::flow::Failure;
use super::limits::{Refused, TcpLimits};
use super::{WorkerLoop, reset};
use crate::config::Tunnel;
use crate::route::Cidr;
use crate::stats::Tally;

/// Why a flow was turned away before it started.
pub(super) enum Refusal<'a> {
    /// Its tunnel could not be opened (admitted by the limits, so its
    /// place under them is given back).
    Tunnel(&'a str),
    /// Its source's limits refused it.
    Source(Refused),
}

impl WorkerLoop {
    /// Resets a client whose flow never started, and counts it (for the
    /// process, its tunnel and its source): its tunnel could not be opened
    /// (warned once a minute per tunnel), or its source's limits refused it
    /// (warned once a minute per kind).
    pub(super) fn refuse(
        &mut self,
        s: &std::net::TcpStream,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Tunnel,
        tc: &Tally,
        why: Refusal,
    ) {
        match why {
            Refusal::Tunnel(why) => {
                self.tcp_sources.close(client.ip(), &TcpLimits::of(&self.settings), &self.limits, self.now);
                Failure::Connect.count(&self.counters, tc);
                self.log_failure(client, dst, t, why);
            }
            Refusal::Source(why) => {
                tc.inc_all(&self.counters, |c| why.counter(c));
                match self.refuse_log[why.index()].due(self.now) {
                    Some(n) => {
                        warn!(target: "egressd::worker", "{client} -> tcp {dst} via {}: refused: {}; client reset{}",
                        t.name, why.why(), crate::lograte::more(n))
                    }
                    None => {
                        debug!(target: "egressd::worker", "{client} -> tcp {dst} via {}: refused: {}; client reset",
                        t.name, why.why())
                    }
                }
            }
        }
        reset(&SockRef::from(s));
    }

    /// UDP: `client`'s source, which holds no session, is about to open
    /// one. False when its route (`route`) already has
    /// `max_sources_per_route` sources: the datagram is dropped and counted
    /// (udp_drop_source_cap, for the process and `tc`). Call
    /// [`udp_source_gone`](Self::udp_source_gone) when the source's last
    /// session ends, or when this first one is not opened after all.
    pub(super) fn udp_source_first(&mut self, client: SocketAddr, route: Option<Cidr>, tc: &Tally) -> bool {
        let max = self.settings.max_sources_per_route;
        if self.udp_cap.first(&self.limits.cap, client.ip(), route, max) {
            return true;
        }
        tc.inc_all(&self.counters, |c| &c.udp_drop_source_cap);
        match self.udp_cap_log.due(self.now) {
            Some(n) => {
                warn!(target: "egressd::udp", "{client}: a new source past max_sources_per_route ({max}) for \
                its route; datagram dropped (counted: udp_drop_source_cap){}", crate::lograte::more(n))
            }
            None => {
                debug!(target: "egressd::udp", "{client}: a new source past max_sources_per_route; dropped")
            }
        }
        false
    }

    /// UDP: the source `ip` holds no session any more.
    pub(super) fn udp_source_gone(&mut self, ip: IpAddr) {
        self.udp_cap.gone(&self.limits.cap, ip);
    }

    /// At most one warning per tunnel per minute; the rest go to debug.
    pub(super) fn should_warn(&mut self, tunnel: &str) -> bool {
        self.fail_log.due(tunnel, self.now)
    }

    pub(super) fn log_failure(&mut self, client: SocketAddr, dst: SocketAddr, t: &Tunnel, why: &str) {
        if self.should_warn(&t.name) {
            warn!(target: "egressd::worker", "{client} -> tcp {dst} via {}: {why}; client reset", t.name);
        } else {
            debug!(target: "egressd::worker", "{client} -> tcp {dst} via {}: {why}; client reset", t.name);
        }
    }
}
