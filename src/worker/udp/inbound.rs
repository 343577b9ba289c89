//! Replies on their way to the client: read from the relay (unwrapped) or
//! from the Direct socket, checked, and sent from the remote's address
//! through the reply pool (see `reply`).
//!
//! ```text
//!  data socket readable ─► up to READS_PER_EVENT reads, then re-armed
//!    each: Relay ─► RFC 1928 §7 header? fragmented: udp_drop_frag; bad: udp_drop_bad_header
//!          Direct ─► from a destination the client sent to? (solicited)
//!       ─► the answer to a redirected DNS query? from the address asked
//!       ─► else the source a reply may claim? no: udp_drop_reply_source
//!       ─► solicited: the session stays alive ─► reply pool ─► client
//! ```

use std::hash::BuildHasher;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use log::{debug, warn};
use mio::Interest;

use super::Link;
use super::reply::{self, ReplyError};
use crate::shape::Dir;
use crate::stats::Counters;
use crate::udp::FoldState;
use crate::wire::sockaddr::unmapped;
use crate::wire::socks5;
use crate::worker::WorkerLoop;
use crate::worker::slab::{self, Kind};

/// Datagrams one relay or Direct socket may deliver per event before the
/// worker turns to its other sockets and its queue (then it re-arms the
/// socket: see `rearm`).
const READS_PER_EVENT: usize = 64;

/// One read from a session's data socket.
enum Recv {
    /// A datagram from `remote`, its payload at `payload` in the scratch
    /// buffer; `solicited`: from where the client sent.
    Reply { remote: SocketAddr, payload: Range<usize>, solicited: bool },
    /// Dropped (and counted), or a passing error: on to the next read.
    Skip,
    /// Nothing more to read now.
    Drained,
}

impl WorkerLoop {
    /// Datagrams from the relay (or, for Direct, from any remote), at most
    /// [`READS_PER_EVENT`] of them: then the socket is re-armed and the loop
    /// serves its other events and its queue before coming back.
    pub(super) fn on_data(&mut self, slot: usize, generation: u32) {
        for _ in 0..READS_PER_EVENT {
            let Some(s) = self.udp.sessions.get_mut(slot) else { return };
            let client = s.client;
            match recv(&mut s.link, &mut self.relay.scratch, &self.udp.fp, &self.counters, client) {
                Recv::Reply { remote, payload, solicited } => {
                    self.reply(slot, client, remote, payload, solicited)
                }
                Recv::Skip => {}
                Recv::Drained => return,
            }
        }
        self.rearm(slot, generation);
    }

    /// Sends one reply read into the scratch buffer (`payload`) on to the
    /// client, from the remote's address, if it may claim it.
    #[inline]
    fn reply(
        &mut self,
        slot: usize,
        client: SocketAddr,
        remote: SocketAddr,
        payload: Range<usize>,
        solicited: bool,
    ) {
        // The answer to a redirected query comes from the address asked:
        // egressd's own choice, so the relay's word is not checked.
        let asked = self
            .udp
            .sessions
            .get(slot)
            .and_then(|s| s.dns_alias.as_ref())
            .and_then(|a| a.answer(remote, self.relay.scratch.get(payload.clone()).unwrap_or_default()));
        let (remote, redirected) = match asked {
            Some(asked) => (asked, true),
            None => (remote, false),
        };
        if !redirected && let Err(why) = self.check_reply_source(remote.ip()) {
            self.count_session(slot, |c| &c.udp_drop_reply_source);
            debug!(target: "egressd::udp", "{remote} -> {client}: reply dropped: its source is {why:?}");
            return;
        }
        // Only what the client asked for keeps its session alive: a
        // stranger writing to a Direct socket does not.
        if solicited {
            self.udp.table.touch_inbound(&client, self.now);
        }
        // `payload` lies within what recv returned (the header parser
        // takes no more than it is given); read through get() all the same.
        if !self.shapers.none() && !self.police(slot, Dir::Down, payload.len()) {
            return;
        }
        let Some(bytes) = self.relay.scratch.get(payload) else { return };
        let r = self.udp.replies.send_as(remote, client, bytes, solicited);
        let n = bytes.len() as u64;
        if r.is_ok()
            && let Some(s) = self.udp.sessions.get(slot)
        {
            s.tc.inc(|c| &c.udp_dgrams_down);
            s.tc.add(|c| &c.udp_bytes_down, n);
        }
        self.count_reply(r, remote, client, n);
    }

    /// Re-registers a session's data socket that was left readable: epoll
    /// queues an event for it at once (`EPOLL_CTL_MOD` re-checks readiness),
    /// so the next turn of the loop comes back to it without a new edge.
    fn rearm(&mut self, slot: usize, generation: u32) {
        let reg = self.poll.registry();
        let Some(s) = self.udp.sessions.get_mut(slot) else { return };
        let sock = match &mut s.link {
            Link::Relay { data, .. } | Link::Direct { data, .. } => data,
            _ => return,
        };
        if reg.reregister(sock, slab::token(slot, generation, Kind::UdpData), Interest::READABLE).is_err() {
            self.end_session(slot, "cannot re-register the data socket");
        }
    }

    /// Whether a reply may name `remote` as its source (see `reply`): the
    /// live routes say which addresses are containers' (config routes,
    /// `route set`, label routes and `intercept.sources`).
    fn check_reply_source(&mut self, remote: IpAddr) -> Result<(), reply::Refused> {
        let container = self.routes.view().holds_container(remote);
        self.udp.source_check.check(remote, container, self.now)
    }

    /// Counts (and for a failed bind, logs once) a reply's fate.
    pub(in crate::worker) fn count_reply(
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
                if self.udp.replies.first_failure(remote)
                    && let Some(n) = self.udp.bind_log.due(self.now)
                {
                    warn!(target: "egressd::udp",
                        "cannot send replies from {remote} (bind: {e}); is a local service using that address and port? \
                         (counted: udp_reply_bind_failed){}", crate::lograte::more(n));
                }
            }
            Err(ReplyError::Send(e)) => {
                Counters::inc(&self.counters.udp_drop_send);
                debug!(target: "egressd::udp", "{remote} -> {client}: reply not sent: {e}");
            }
            Err(ReplyError::NoRoom) => {
                Counters::inc(&self.counters.udp_drop_unsolicited);
                debug!(target: "egressd::udp", "{remote} -> {client}: unsolicited, no reply socket to spare; dropped");
            }
        }
        Counters::set(&self.counters.udp_reply_sockets, self.udp.replies.len() as u64);
    }
}

/// One read from a session's data socket into `scratch`.
#[inline]
fn recv(
    link: &mut Link,
    scratch: &mut [u8],
    fp: &FoldState,
    counters: &Counters,
    client: SocketAddr,
) -> Recv {
    match link {
        Link::Relay { data, .. } => match data.recv(scratch) {
            Ok(n) => match socks5::parse_udp_header(scratch.get(..n).unwrap_or_default()) {
                Ok((remote, off)) => {
                    Recv::Reply { remote: unmapped(remote), payload: off..n, solicited: true }
                }
                Err(socks5::UdpHeaderError::Fragmented(_)) => {
                    Counters::inc(&counters.udp_drop_frag);
                    Recv::Skip
                }
                Err(e) => {
                    Counters::inc(&counters.udp_drop_bad_header);
                    debug!(target: "egressd::udp", "{client}: relay datagram dropped: {e}");
                    Recv::Skip
                }
            },
            Err(e) => recv_error(e.kind()),
        },
        Link::Direct { data, sent, .. } => match data.recv_from(scratch) {
            Ok((n, from)) => {
                let from = unmapped(from);
                Recv::Reply { remote: from, payload: 0..n, solicited: sent.contains(&fp.hash_one(from)) }
            }
            Err(e) => recv_error(e.kind()),
        },
        Link::Associating { .. } | Link::DnsOverTcp | Link::Empty => Recv::Drained,
    }
}

/// A failed read: the last one for now, or one to skip (interrupted, or an
/// ICMP error from the relay or a remote: the session goes on).
#[inline]
fn recv_error(kind: ErrorKind) -> Recv {
    if kind == ErrorKind::WouldBlock { Recv::Drained } else { Recv::Skip }
}
