//! A TCP flow's life in the worker, one step per function:
//!
//! ```text
//!  start_flow ─► Connecting ──on_connecting──► Handshaking ──drive_open──► Relaying ──both Done──► end(Closed)
//!   │ admitted     │ (Direct: straight to Relaying) │ hold_early             │ relay_some
//!   │ by limits    └──── error / timeout ───────────┴──► end(Failed)         └─ error / idle ─► end(Reset)
//!   └─ refused ─► client reset                           client reset            both reset
//! ```
//!
//! A flow of a tunnel with a warm pool starts on a greeted connection
//! (straight to Handshaking with the request alone, see `warm`); with a
//! server that takes pipelining, the client's first bytes follow the
//! request without waiting for its answer. Such bytes are kept until the
//! answer shows they were taken: a pooled connection that turns out dead
//! before answering is replaced once by a fresh one (`End::Retry`,
//! `retry_fresh`), and they are replayed.
//!
//! A flow of a shaped source (`shaping`) relays within its source's grants;
//! stopped by one, it has one more timer entry (`Kind::Shape`) at the
//! grant's wake-up, never two at once (`arm_shape`, `expire_shape`).
//!
//! Each flow has exactly one entry in the timer heap; when it comes due and
//! the flow has been active since, it is pushed again with the new deadline
//! (`expire_flow`). How a flow ends is an [`End`]; why a tunnel could not
//! be opened is a [`Failure`] and why an open flow was cut a [`Reset`], each
//! mapped in one place to its counters and log text.

use std::cmp::Reverse;
use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use mio::Interest;
use mio::event::Event;
use mio::net::TcpStream;
use socket2::SockRef;

use super::connect::{Connect, connect_result};
use super::gate::Gate;
use super::handshake::{
    Drive, auth_of, connect, connect_error, drive_handshake_then, handshake_error, read_early, write_early,
};
use super::limits::Refused;
use super::limits::TcpLimits;
use super::refuse::Refusal;
use super::shaping;
use super::slab::{self, Kind};
use super::{TcpHandoff, WorkerLoop, keepalive, reset};
use crate::config::{Tunnel, TunnelKind};
use crate::relay::{Pump, PumpError, Pumped, RelayCtx};
use crate::shape::Dir;
use crate::stats::{Counters, Tally};
use crate::upstream::{self, Handshake, Socks5Handshake};
use crate::wire::socks5::CMD_CONNECT;

mod shaped;

pub(super) enum Stage {
    /// Connecting and handshaking: boxed, so that a relaying flow (most
    /// flows, for most of their life) carries one pointer for it.
    Opening(Box<Opening>),
    Relaying,
}

/// What a flow needs only until its tunnel is open.
pub(super) struct Opening {
    /// Waiting for the upstream connect (the handshake comes after).
    connecting: bool,
    /// The handshake to run (none for Direct).
    handshake: Option<Handshake>,
    started: Instant,
    /// Client bytes read before the tunnel opened, kept until the answer
    /// shows they were taken (replayed on a retry), and how many went out.
    early: Vec<u8>,
    early_sent: usize,
    /// Read the client during the handshake (pipelined or pooled).
    hold_early: bool,
    /// The client became readable while the upstream was connecting: its
    /// edge is spent, so its bytes are read once the handshake starts.
    client_unread: bool,
    /// Client bytes may follow the request before its answer.
    pipe_data: bool,
    /// On a pooled connection: one retry on a fresh one if it dies unanswered.
    retry: bool,
    /// The worker's early-byte budget held this client back once (counted once).
    early_waited: bool,
}

pub(super) struct Flow {
    client: TcpStream,
    upstream: TcpStream,
    pub(super) client_addr: SocketAddr,
    orig_dst: SocketAddr,
    tunnel: Arc<Tunnel>,
    /// This worker's counters for the tunnel and the route source.
    tc: Tally,
    stage: Stage,
    /// client → upstream
    up: Pump,
    /// upstream → client
    down: Pump,
    last_active: Instant,
    /// One direction has ended and the shorter half-close timer is set.
    half_closed: bool,
    /// The source has a shaper (`shaping`): the pumps ask it first.
    shaped: bool,
    /// A shaped direction stopped at its grant: pump again then (earliest
    /// wake asked), and whether its `Kind::Shape` timer is in the heap.
    shape_due: Option<Instant>,
    shape_armed: bool,
    /// Bytes the kernel held for the directions stopped at their grant
    /// when they stopped (SIOCINQ), as added to `tcp_held_bytes`.
    held: u32,
}

/// Why a flow ends.
pub(super) enum End {
    /// Both directions finished cleanly.
    Closed,
    /// The tunnel could not be opened: reset the client.
    Failed(Failure, String),
    /// An error mid-relay, the idle timeout, a route change: reset both sides.
    Reset(Reset),
    /// A pooled connection died before answering: start over on a fresh one.
    Retry,
}

/// Why a tunnel could not be opened (the text says what happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// No socket, no server address, or the connect failed.
    Connect,
    /// The sockets could not be registered with epoll.
    Register,
    /// The server broke the handshake off or answered with an error.
    Handshake,
    /// The server rejected the credentials.
    Auth,
    /// No answer within `connect_timeout_secs`.
    Timeout,
}

impl Failure {
    /// Counts it for the process and the flow's tunnel and source: every
    /// failure in `tcp_upstream_failed`, and some kinds in their own.
    pub(super) fn count(self, all: &Counters, tc: &Tally) {
        tc.inc_all(all, |c| &c.tcp_upstream_failed);
        match self {
            Failure::Connect | Failure::Register => {}
            Failure::Timeout => tc.inc_all(all, |c| &c.tcp_connect_timeout),
            Failure::Handshake => tc.inc_all(all, |c| &c.tcp_handshake_failed),
            Failure::Auth => {
                tc.inc_all(all, |c| &c.tcp_handshake_failed);
                tc.inc_all(all, |c| &c.tcp_auth_rejected);
            }
        }
    }
}

/// Why both sides of a flow are reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reset {
    RouteChanged,
    ReadError,
    WriteError,
    IdleTimeout,
    HalfCloseTimeout,
    /// The source's quota is spent (`on_quota: Reject`).
    Quota,
}

impl Reset {
    /// The log text.
    fn why(self) -> &'static str {
        match self {
            Reset::RouteChanged => "route changed (--reset-flows)",
            Reset::ReadError => "read error",
            Reset::WriteError => "write error",
            Reset::IdleTimeout => "idle timeout",
            Reset::HalfCloseTimeout => "half-close timeout",
            Reset::Quota => "quota spent (on_quota: Reject; counted: tcp_quota_ended)",
        }
    }

    /// Counted in `tcp_idle_closed`.
    fn idle(self) -> bool {
        matches!(self, Reset::IdleTimeout | Reset::HalfCloseTimeout)
    }
}

/// Where an opening flow stands after an event.
enum Open {
    Waiting,
    Ended(End),
    /// The tunnel is open: relay from now on.
    Opened,
}

/// What the opening steps borrow from the worker beside the flow.
struct OpenCtx<'a> {
    relay: &'a mut RelayCtx,
    counters: &'a Counters,
    /// Early client bytes held by the worker's opening flows, and the most.
    early_held: &'a mut usize,
    early_max: usize,
    now: Instant,
}

impl WorkerLoop {
    /// A connection handed over: admitted by its source's limits, then its
    /// tunnel opened (a greeted connection from the pool, or a connect).
    pub(super) fn start_flow(&mut self, h: TcpHandoff) {
        let TcpHandoff { stream, client, orig_dst, tunnel, source, .. } = h;
        let tc = self.tally(&tunnel.name, source);
        tc.inc_all(&self.counters, |c| &c.tcp_flows_total);
        // Before anything is opened for it: the source's limits and share,
        // then its quota (the limits first: they cost a map lookup, the
        // quota a ledger lock, and a spent source's flood meets its rate).
        let lim = TcpLimits::of(&self.settings);
        if let Err(why) = self.tcp_sources.open(client.ip(), source, &lim, &self.limits, self.now) {
            return self.refuse(&stream, client, orig_dst, &tunnel, &tc, Refusal::Source(why));
        }
        let routes = &self.routes;
        if self.shapers.refuses(client.ip(), || routes.view().quota(client.ip())) {
            self.tcp_sources.close(client.ip(), &lim, &self.limits, self.now);
            return self.refuse(&stream, client, orig_dst, &tunnel, &tc, Refusal::Source(Refused::Quota));
        }
        // DNS over TCP to a resolver no exit can reach goes to `dns.upstream`.
        let dest = self.settings.dns.target(orig_dst);
        debug!(target: "egressd::worker", "{client} -> tcp {orig_dst} (to {dest}) via {}", tunnel.name);
        let (upstream, opening) = match self.open_upstream(&tunnel, dest, client.ip()) {
            Ok(up) => up,
            Err(why) => return self.refuse(&stream, client, orig_dst, &tunnel, &tc, Refusal::Tunnel(&why)),
        };
        if opening.pipe_data {
            Counters::inc(&self.counters.tcp_pipelined);
        }
        let routes = &self.routes;
        let shaped = self.shapers.open(
            client.ip(),
            (&tunnel, &tc),
            || shaping::holds(routes.view(), client.ip()),
            self.now,
        );
        // Accepted with SOCK_NONBLOCK by the front loop (mio's accept4).
        // Built in the slab's call: a flow is copied once.
        let (slot, generation) = self.flows.insert(Flow {
            client: TcpStream::from_std(stream),
            upstream,
            client_addr: client,
            orig_dst,
            tunnel,
            tc,
            stage: Stage::Opening(opening),
            up: Pump::default(),
            down: Pump::default(),
            last_active: self.now,
            half_closed: false,
            shaped,
            shape_due: None,
            shape_armed: false,
            held: 0,
        });
        self.register_flow(slot, generation);
    }

    /// The tunnel's side for a flow to `dest`: a greeted connection from
    /// the tunnel's pool, or a new non-blocking connect, and what the flow
    /// needs until the tunnel is open (boxed here, so that the handshake is
    /// not copied again); why not.
    fn open_upstream(
        &mut self,
        tunnel: &Tunnel,
        dest: SocketAddr,
        client: IpAddr,
    ) -> Result<(TcpStream, Box<Opening>), String> {
        let target = match tunnel.kind.server() {
            None => dest,
            Some(server) => server.addr.ok_or("server address unresolved")?,
        };
        let (pooled, pipelining) = self.take_pooled(tunnel, client);
        let pipe = match &tunnel.kind {
            TunnelKind::Socks5 { .. } => pipelining == crate::pool::Pipelining::Yes,
            TunnelKind::HttpConnect { pipeline, .. } => *pipeline,
            TunnelKind::Direct { .. } => false,
        };
        let now = self.now;
        let opening = |handshake: Option<Handshake>, pooled: bool| {
            Box::new(Opening {
                connecting: !pooled,
                handshake,
                started: now,
                early: Vec::new(),
                early_sent: 0,
                hold_early: pipe || pooled,
                client_unread: false,
                pipe_data: pipe,
                retry: pooled,
                early_waited: false,
            })
        };
        if let Some(conn) = pooled {
            let hs = Handshake::Socks5(Socks5Handshake::request(CMD_CONNECT, dest));
            return Ok((TcpStream::from_std(conn), opening(Some(hs), true)));
        }
        let handshake = match &tunnel.kind {
            TunnelKind::Socks5 { auth, .. } if pipe => {
                Some(Handshake::Socks5(Socks5Handshake::pipelined(CMD_CONNECT, dest, auth.as_ref())))
            }
            kind => upstream::for_tcp(kind, dest),
        };
        let stream = connect(target, &tunnel.kind).map_err(|e| {
            self.note_fds_short(&e);
            format!("cannot open a socket to {target}: {e}")
        })?;
        Ok((stream, opening(handshake, false)))
    }

    /// Registers a new flow's sockets and arms its connect timer.
    fn register_flow(&mut self, slot: usize, generation: u32) {
        let Some(f) = self.flows.get_mut(slot) else { return };
        let both = Interest::READABLE | Interest::WRITABLE;
        let reg = self.poll.registry();
        let ok = reg.register(&mut f.client, slab::token(slot, generation, Kind::Client), both).is_ok()
            && reg.register(&mut f.upstream, slab::token(slot, generation, Kind::Upstream), both).is_ok();
        f.tc.inc_all(&self.counters, |c| &c.tcp_flows_active);
        if !ok {
            self.end(slot, End::Failed(Failure::Register, "cannot register sockets with epoll".into()));
            return;
        }
        let deadline = self.now + self.settings.tcp.connect_timeout;
        self.timers.push(Reverse((deadline, slab::token(slot, generation, Kind::Client))));
    }

    /// A pooled connection died before it answered the request: the flow
    /// starts over on a fresh connection with the whole handshake, and its
    /// early bytes go after the answer.
    pub(super) fn retry_fresh(&mut self, slot: usize, generation: u32) {
        let Some(f) = self.flows.get_mut(slot) else { return };
        let dest = self.settings.dns.target(f.orig_dst);
        let Some(target) = f.tunnel.kind.server().and_then(|s| s.addr) else {
            return self.end(slot, End::Failed(Failure::Connect, "server address unresolved".into()));
        };
        let mut up = match connect(target, &f.tunnel.kind) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot open a socket to {target}: {e}");
                return self.end(slot, End::Failed(Failure::Connect, why));
            }
        };
        let token = slab::token(slot, generation, Kind::Upstream);
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut f.upstream);
        if reg.register(&mut up, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            return self
                .end(slot, End::Failed(Failure::Register, "cannot register sockets with epoll".into()));
        }
        debug!(target: "egressd::worker", "{} -> tcp {} via {}: pooled connection closed unanswered; retrying on a fresh one",
            f.client_addr, f.orig_dst, f.tunnel.name);
        // The old connection is closed as it is replaced.
        f.upstream = up;
        if let Stage::Opening(o) = &mut f.stage {
            o.connecting = true;
            o.handshake = upstream::for_tcp(&f.tunnel.kind, dest);
            o.early_sent = 0;
            o.pipe_data = false;
            o.retry = false;
        }
        let name = f.tunnel.name.clone();
        if let Some(p) = self.pool_of(&name) {
            p.lock().tcp.stats.discards += 1;
        }
    }

    /// Resets the flows of a source moved to another route.
    pub(super) fn reset_flows_of(&mut self, cidr: crate::route::Cidr) -> usize {
        let slots = self.flows.slots_where(|f| cidr.contains(f.client_addr.ip()));
        let n = slots.len();
        for slot in slots {
            self.end(slot, End::Reset(Reset::RouteChanged));
        }
        n
    }

    /// Ends the shaped TCP flows of sources whose quota now refuses (even
    /// idle ones: a busy one ends at its next pump); the sweep once a
    /// second, when any source was found refused.
    pub(super) fn end_refused(&mut self, sources: &[IpAddr]) {
        let slots = self.flows.slots_where(|f| f.shaped && sources.contains(&f.client_addr.ip()));
        for slot in slots {
            if let Some(f) = self.flows.get(slot) {
                f.tc.inc_all(&self.counters, |c| &c.tcp_quota_ended);
            }
            self.end(slot, End::Reset(Reset::Quota));
        }
    }

    /// Moves a flow on after an event; `Some` when the flow is over.
    pub(super) fn advance(&mut self, slot: usize, side: Kind, ev: &Event) -> Option<End> {
        let now = self.now;
        let f = self.flows.get_mut(slot)?;
        let shaper = if f.shaped { self.shapers.get(f.client_addr.ip()) } else { None };
        let mut o = match mem::replace(&mut f.stage, Stage::Relaying) {
            Stage::Opening(o) => o,
            Stage::Relaying => {
                let (up, down) = directions(side, ev);
                return relay_some(f, &mut self.relay, &self.counters, now, (up, down), shaper);
            }
        };
        let mut cx = OpenCtx {
            relay: &mut self.relay,
            counters: &self.counters,
            early_held: &mut self.early_held,
            early_max: self.settings.tcp.early_bytes_per_worker,
            now,
        };
        match open_step(f, &mut o, &mut cx, side, ev) {
            Open::Waiting => {
                f.stage = Stage::Opening(o);
                None
            }
            Open::Ended(end) => {
                f.stage = Stage::Opening(o);
                Some(end)
            }
            Open::Opened => {
                // Open: the handshake's state and early bytes are freed here.
                release_early(cx.early_held, cx.counters, o.early.len());
                f.last_active = now;
                let mut shaper = shaper;
                if let Some(sh) = shaper.as_deref_mut() {
                    // Bytes that came with the handshake move unasked: debt.
                    sh.consume(Dir::Up, f.up.held_capacity() + o.early_sent, now);
                    sh.consume(Dir::Down, f.down.held_capacity(), now);
                }
                relay_some(f, cx.relay, cx.counters, now, (true, true), shaper)
            }
        }
    }

    /// When one direction of a relaying flow has just ended, its (shorter)
    /// half-close timer starts: a second timer entry, once per flow.
    pub(super) fn watch_half_close(&mut self, slot: usize, generation: u32) {
        let Some(f) = self.flows.get_mut(slot) else { return };
        if f.half_closed || !(f.up.is_done() || f.down.is_done()) {
            return;
        }
        f.half_closed = true;
        let due = f.last_active + self.settings.tcp.half_close_timeout.min(self.settings.tcp.idle_timeout);
        self.timers.push(Reverse((due, slab::token(slot, generation, Kind::Client))));
    }

    /// A shaped flow stopped at its grant: its one `Kind::Shape` timer, at
    /// the earliest wake-up its directions asked (never two at once).
    pub(super) fn arm_shape(&mut self, slot: usize, generation: u32) {
        let Some(f) = self.flows.get_mut(slot) else { return };
        if let (Some(due), false) = (f.shape_due, f.shape_armed) {
            f.shape_armed = true;
            self.timers.push(Reverse((due, slab::token(slot, generation, Kind::Shape))));
        }
    }

    /// A shaped flow's wake-up: both directions are pumped again (one with
    /// nothing to read stops at once), and it waits again if still short.
    pub(super) fn expire_shape(&mut self, slot: usize, generation: u32) {
        if !self.flows.is_live(slot, generation) {
            return;
        }
        let Some(f) = self.flows.get_mut(slot) else { return };
        f.shape_armed = false;
        if f.shape_due.take().is_none() || !matches!(f.stage, Stage::Relaying) {
            return;
        }
        let shaper = self.shapers.get(f.client_addr.ip());
        match relay_some(f, &mut self.relay, &self.counters, self.now, (true, true), shaper) {
            Some(end) => self.end(slot, end),
            None => {
                self.watch_half_close(slot, generation);
                if !self.shapers.none() {
                    self.arm_shape(slot, generation);
                }
            }
        }
    }

    /// A flow's timer came due: it ends, or its timer moves to the deadline
    /// its activity since then gives (connect/handshake timeout, idle,
    /// half-close).
    pub(super) fn expire_flow(&mut self, slot: usize, generation: u32, token: mio::Token) {
        if !self.flows.is_live(slot, generation) {
            return;
        }
        let Some(f) = self.flows.get_mut(slot) else { return };
        let tcp = &self.settings.tcp;
        let (due, end) = match &f.stage {
            Stage::Relaying if f.half_closed => {
                let limit = tcp.half_close_timeout.min(tcp.idle_timeout);
                (f.last_active + limit, End::Reset(Reset::HalfCloseTimeout))
            }
            Stage::Relaying => (f.last_active + tcp.idle_timeout, End::Reset(Reset::IdleTimeout)),
            Stage::Opening(o) => {
                let secs = tcp.connect_timeout.as_secs();
                let why = format!("no answer from the tunnel within {secs}s (connect_timeout_secs)");
                (o.started + tcp.connect_timeout, End::Failed(Failure::Timeout, why))
            }
        };
        if due > self.now {
            self.timers.push(Reverse((due, token)));
        } else {
            self.end(slot, end);
        }
    }

    /// Ends a flow: its place under the source's limits and its early bytes
    /// given back, counted and logged by how it ended, sockets closed (reset
    /// unless it closed cleanly).
    pub(super) fn end(&mut self, slot: usize, end: End) {
        let Some(mut f) = self.flows.remove(slot) else { return };
        self.tcp_sources.close(f.client_addr.ip(), &TcpLimits::of(&self.settings), &self.limits, self.now);
        if let Stage::Opening(o) = &f.stage {
            release_early(&mut self.early_held, &self.counters, o.early.len());
        }
        f.tc.dec_all(&self.counters, |c| &c.tcp_flows_active);
        if f.held > 0 {
            f.tc.shift_all(&self.counters, |c| &c.tcp_held_bytes, f.held.into(), 0);
        }
        if f.shaped {
            self.shapers.close(f.client_addr.ip(), &self.counters);
        }
        f.up.release(&mut self.relay.pipes);
        f.down.release(&mut self.relay.pipes);
        match end {
            // Handled by `retry_fresh` before it comes here; as an end, a reset.
            End::Closed | End::Retry => {
                debug!(target: "egressd::worker", "{} -> tcp {} via {}: closed, {} bytes up, {} down",
                    f.client_addr, f.orig_dst, f.tunnel.name, f.up.bytes, f.down.bytes);
            }
            End::Failed(kind, why) => {
                kind.count(&self.counters, &f.tc);
                self.log_failure(f.client_addr, f.orig_dst, &f.tunnel, &why);
                reset(&SockRef::from(&f.client));
            }
            End::Reset(r) => {
                if r.idle() {
                    Counters::inc(&self.counters.tcp_idle_closed);
                }
                debug!(target: "egressd::worker", "{} -> tcp {} via {}: {}; both sides reset",
                    f.client_addr, f.orig_dst, f.tunnel.name, r.why());
                reset(&SockRef::from(&f.client));
                reset(&SockRef::from(&f.upstream));
            }
        }
        // Dropping the streams closes them (and removes them from epoll).
    }
}

/// One event on an opening flow: the connect completes, client bytes are
/// held, the handshake moves on.
fn open_step(f: &mut Flow, o: &mut Opening, cx: &mut OpenCtx, side: Kind, ev: &Event) -> Open {
    if o.connecting {
        match on_connecting(f, o, side, ev) {
            Ok(true) => f.last_active = cx.now,
            Ok(false) => return Open::Waiting,
            Err(e) => return Open::Ended(End::Failed(Failure::Connect, connect_error(&f.tunnel, e))),
        }
        // Fall through: send the greeting / start relaying now.
    }
    if o.handshake.is_none() {
        return Open::Opened;
    }
    if o.hold_early {
        if let Err(end) = hold_early(f, o, cx, side, ev) {
            return Open::Ended(end);
        }
    } else if side != Kind::Upstream {
        return Open::Waiting;
    }
    drive_open(f, o, cx, side, ev)
}

/// Whether the upstream connect has completed on this event (then the
/// socket gets its options): `Ok(false)` while it is under way.
fn on_connecting(f: &mut Flow, o: &mut Opening, side: Kind, ev: &Event) -> io::Result<bool> {
    if side != Kind::Upstream {
        o.client_unread |= side == Kind::Client && may_read(ev);
        return Ok(false);
    }
    match connect_result(&f.upstream, ev) {
        Connect::Pending => return Ok(false),
        Connect::Connected => {}
        Connect::Failed(e) | Connect::Unknown(e) => return Err(e),
    }
    let _ = keepalive(&SockRef::from(&f.upstream));
    let _ = f.upstream.set_nodelay(true);
    o.connecting = false;
    Ok(true)
}

/// Reads the client's bytes to send with (or right after) the request,
/// within the worker's early-byte budget.
fn hold_early(f: &mut Flow, o: &mut Opening, cx: &mut OpenCtx, side: Kind, ev: &Event) -> Result<(), End> {
    if !(o.client_unread || (side == Kind::Client && may_read(ev))) {
        return Ok(());
    }
    let budget = cx.early_max.saturating_sub(*cx.early_held);
    let Ok((n, held_back)) = read_early(&mut f.client, &mut o.early, &mut cx.relay.scratch, budget) else {
        return Err(End::Reset(Reset::ReadError));
    };
    *cx.early_held += n;
    // Held back by the budget: read again when it has room, or by the
    // relay once the tunnel is open (never dropped).
    o.client_unread = held_back;
    if held_back && !o.early_waited {
        o.early_waited = true;
        Counters::inc(&cx.counters.tcp_early_waits);
    }
    if n > 0 {
        Counters::set(&cx.counters.tcp_early_bytes, *cx.early_held as u64);
    }
    Ok(())
}

/// Moves the handshake on: sends what it holds (early bytes behind a
/// pipelined request), feeds it the server's answer; on success the bytes
/// that came after the answer, and the early ones not yet sent, are queued
/// for the relay.
fn drive_open(f: &mut Flow, o: &mut Opening, cx: &mut OpenCtx, side: Kind, ev: &Event) -> Open {
    let Some(hs) = &mut o.handshake else { return Open::Opened };
    let server_spoke = side == Kind::Upstream && may_read(ev);
    // Early bytes ride behind a pipelined request in the same write:
    // written apart, the exit could answer (or read) between them.
    let behind = if o.pipe_data { &o.early[..] } else { &[][..] };
    let scratch = &mut cx.relay.scratch;
    match drive_handshake_then(
        &mut f.upstream,
        hs,
        auth_of(&f.tunnel),
        scratch,
        server_spoke,
        behind,
        &mut o.early_sent,
    ) {
        Drive::Pending => {
            if o.pipe_data && hs.request_out() && o.early_sent < o.early.len() {
                match write_early(&mut f.upstream, &o.early[o.early_sent..]) {
                    Ok(n) => o.early_sent += n,
                    Err(_) if o.retry => return Open::Ended(End::Retry),
                    Err(e) => {
                        let why = handshake_error(&f.tunnel, format!("write to server: {e}"));
                        return Open::Ended(End::Failed(Failure::Handshake, why));
                    }
                }
            }
            Open::Waiting
        }
        Drive::Failed(_, _, true) if o.retry => Open::Ended(End::Retry),
        Drive::Failed(why, auth, _) => {
            let kind = if auth { Failure::Auth } else { Failure::Handshake };
            Open::Ended(End::Failed(kind, handshake_error(&f.tunnel, why)))
        }
        Drive::Done(extra) => {
            f.down.preload(&cx.relay.scratch[extra]);
            // Early bytes: those sent were taken with the request; the rest go first.
            if o.early_sent < o.early.len() {
                f.up.preload(&o.early[o.early_sent..]);
            }
            let sent = o.early_sent as u64;
            if sent > 0 {
                f.up.bytes += sent;
                f.tc.add_all(cx.counters, |c| &c.tcp_bytes_up, sent);
            }
            debug!(target: "egressd::worker", "{} -> tcp {} via {}: open", f.client_addr, f.orig_dst, f.tunnel.name);
            Open::Opened
        }
    }
}

/// Gives `n` early bytes back to the worker's budget.
fn release_early(held: &mut usize, counters: &Counters, n: usize) {
    if n > 0 {
        *held = held.saturating_sub(n);
        Counters::set(&counters.tcp_early_bytes, *held as u64);
    }
}

/// The event says the socket may have bytes (or an EOF, or an error) to read.
pub(super) fn may_read(ev: &Event) -> bool {
    ev.is_readable() || ev.is_read_closed() || ev.is_error()
}

/// The directions an event on one side can move: readable on a side feeds
/// the direction reading it, writable the direction writing to it; errors
/// and hang-ups are looked at both ways.
fn directions(side: Kind, ev: &Event) -> (bool, bool) {
    let both = ev.is_error();
    let readable = may_read(ev);
    let writable = both || ev.is_writable() || ev.is_write_closed();
    match side {
        // client → upstream is `up`.
        Kind::Client => (readable, writable),
        _ => (writable, readable),
    }
}

/// Relays the directions asked for (`(up, down)`), within the source's
/// shaper if it has one, and counts the bytes; `Some` when the flow is over.
fn relay_some(
    f: &mut Flow,
    relay: &mut RelayCtx,
    counters: &Counters,
    now: Instant,
    (up, down): (bool, bool),
    shaper: Option<&mut Gate>,
) -> Option<End> {
    let (up0, down0) = (f.up.bytes, f.down.bytes);
    let r = match shaper {
        None => pump_some(f, relay, up, down),
        Some(sh) => shaped::pump_shaped(f, relay, counters, now, (up, down), sh),
    };
    if f.up.bytes != up0 || f.down.bytes != down0 {
        f.last_active = now;
        f.tc.add_all(counters, |c| &c.tcp_bytes_up, f.up.bytes - up0);
        f.tc.add_all(counters, |c| &c.tcp_bytes_down, f.down.bytes - down0);
    }
    r
}

/// Pumps the directions asked for (each until it would block); `Some`
/// when the flow is over. A direction not asked for keeps its last state:
/// edge-triggered readiness wakes it when it can move again.
fn pump_some(f: &mut Flow, relay: &mut RelayCtx, up: bool, down: bool) -> Option<End> {
    let up = if up { f.up.pump(&mut f.client, &mut f.upstream, relay) } else { Ok(f.up.state()) };
    let down = if down { f.down.pump(&mut f.upstream, &mut f.client, relay) } else { Ok(f.down.state()) };
    settle(up, down)
}

/// How both directions' pumps stopped: `Some` when the flow is over.
fn settle(up: Result<Pumped, PumpError>, down: Result<Pumped, PumpError>) -> Option<End> {
    match (up, down) {
        (Err(e), _) | (_, Err(e)) => {
            let why = match e {
                PumpError::Read(_) => Reset::ReadError,
                PumpError::Write(_) | PumpError::Unsupported => Reset::WriteError,
            };
            Some(End::Reset(why))
        }
        (Ok(Pumped::Done), Ok(Pumped::Done)) => Some(End::Closed),
        _ => None,
    }
}
