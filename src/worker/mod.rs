//! WorkerLoop: one thread, one `mio::Poll`, many flows.
//!
//! A front loop hands a client connection over (bounded channel + waker).
//! The worker opens the tunnel — a non-blocking connect to the tunnel's
//! server (or to the destination, for `Direct`), then the upstream
//! handshake — and relays both directions until both have ended.
//!
//! A flow's life is `flow` (the tunnel opened by `handshake`, turned
//! away by `refuse`, bounded by `limits`); a UDP session's is `udp` (DNS
//! over TCP for tunnels without UDP: `dns`); greeted connections come from
//! `warm`. This file is the loop that drives them: hand-offs and commands
//! in, readiness events and timers out to the flow or session they name.
//!
//! Flows live by value in a slab; a token carries slot, generation and side,
//! so a stale event for a reused slot is ignored. One timer heap holds the
//! flows', warm connections' and UDP links' deadlines.

mod connect;
mod dns;
mod flow;
mod gate;
mod handshake;
mod limits;
mod meters;
mod queue;
mod refuse;
mod routing;
mod shaping;
mod slab;
mod tally;
#[cfg(test)]
mod tests;
mod udp;
mod warm;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::debug;
use mio::{Events, Poll, Token, Waker};
use queue::{QueueRx, QueueTx};
use socket2::{SockRef, TcpKeepalive};

use crate::config::{Settings, Tunnel};
use crate::pool::Pools;
use crate::relay::{PipePool, RelayCtx};
use crate::route::Cidr;
use crate::snapshot::Routing;
use crate::stats::{Counters, Registry, Tally};
use crate::udp::FoldState;
use flow::{End, Flow};
pub use limits::SharedLimits;
pub use meters::{Meters, Used};
pub use shaping::{Boards, REPORT_EVERY};
// For the session, DNS and pool files beside the flow's.
use flow::may_read;
use handshake::{Drive, auth_of, connect, drive_handshake};
use limits::{Refused, TcpLimits, TcpSources, UdpCapHolds};
use slab::{Kind, Slab};
use std::collections::HashMap;
pub use udp::{Moved, UdpBatch, UdpItem};

const WAKER: Token = Token(usize::MAX);
/// Scratch buffer shared by every flow of a worker. Large enough that the
/// allocator maps it on its own: pages never used cost no memory.
const SCRATCH: usize = 256 * 1024;
/// Work one loop turn does at most, so that no turn holds up the flows
/// whose events wait behind it (issue 25: the longest turn is a gauge):
/// readiness events per poll, hand-offs taken, and pools that refill or
/// drain (a thousand pools going cold together, or filling at start). What
/// is left waits for the next turn, which does not sleep.
const EVENTS_PER_TURN: usize = 256;
const HANDOFFS_PER_TURN: usize = 32;
/// Hand-off queue length per worker: deep enough for a burst of thousands of
/// connects from one container (the load test opens 3 000+ at once). It
/// costs memory only while it holds hand-offs (see `queue`).
pub const QUEUE: usize = 4096;

/// A client connection the front loop accepted and routed.
pub struct TcpHandoff {
    pub stream: std::net::TcpStream,
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub tunnel: Arc<Tunnel>,
    /// The route that matched (`None`: the default tunnel), for counters.
    pub source: Option<Cidr>,
    /// The generation of the routes it was routed with (see `routing`).
    pub generation: u64,
}

/// What travels on a worker's queue. Boxed, so that a queue slot is a few
/// words: the channel lays out every slot up front, and a deep queue then
/// costs little memory at rest.
pub enum Handoff {
    Tcp(Box<TcpHandoff>),
    Udp(Box<UdpBatch>),
}

/// An order from the daemon (reload, control socket) to a worker. It has a
/// queue of its own, which the data path never fills: a flood of
/// connections cannot make a worker miss a reload or a reset.
#[derive(Debug)]
pub enum Command {
    /// Reloaded settings (see `WorkerLoop::apply`).
    Settings(Arc<Settings>),
    /// Reset every TCP flow and end every UDP session of these sources,
    /// then say so on the sender (see [`reset_everywhere`]).
    ResetSource(crate::route::Cidr, Sender<()>),
    /// An upgrade: every relaying UDP session, taken out for the new
    /// process (after the hand-offs already queued: the fronts have
    /// stopped reading).
    ExportUdp(Sender<Vec<Moved>>),
    /// The new process of an upgrade: the old one's sessions of this
    /// worker's clients; how many were taken.
    AdoptUdp(Vec<Moved>, Sender<usize>),
    /// What another process of an upgrade moved for these sources: their
    /// buckets here take it (see `meters`).
    Debit(Vec<(IpAddr, [u64; 2])>),
    /// An upgrade: the per-source new-flow and new-session buckets that
    /// are not full, for the new process.
    ExportLevels(Sender<Levels>),
    /// The new process of an upgrade: the old one's buckets of this
    /// worker's sources (no fresh burst for a source that spent its own).
    AdoptLevels(Levels),
}

/// Per-source token buckets by level (thousandths of a token): the TCP
/// new-flow and the UDP new-session ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Levels {
    pub tcp: Vec<(IpAddr, u64)>,
    pub udp: Vec<(IpAddr, u64)>,
}

/// How workers stop: the flag, how long their TCP flows may still drain
/// (cut short by setting it to zero, then waking them), and how long a
/// worker without flows stays for the UDP replies and DNS answers still
/// on their way (after an upgrade; zero on a plain stop).
#[derive(Debug, Default)]
pub struct Stop {
    pub now: AtomicBool,
    pub grace_ms: AtomicU64,
    pub linger_ms: AtomicU64,
}

impl Stop {
    /// Stops with this grace and linger.
    pub fn set(&self, grace: Duration, linger: Duration) {
        self.grace_ms.store(grace.as_millis() as u64, Ordering::SeqCst);
        self.linger_ms.store(linger.as_millis() as u64, Ordering::SeqCst);
        self.now.store(true, Ordering::SeqCst);
    }

    fn times(&self) -> (Duration, Duration) {
        let ms = |a: &AtomicU64| Duration::from_millis(a.load(Ordering::SeqCst));
        (ms(&self.grace_ms), ms(&self.linger_ms))
    }
}

/// Commands queued per worker; senders wait (bounded) when it is full.
const COMMANDS: usize = 64;

/// Orders every worker to reset `source`'s flows (its TCP flows reset, its
/// UDP sessions ended) and waits, `wait` in all, until each has done it;
/// how many did not confirm (stuck, gone, or their command queue full).
///
/// Done, not merely queued: a worker behind on its loop (a loaded host)
/// would otherwise still relay the source's old flows, and serve its old
/// UDP sessions on the old tunnel, for a while after `route set
/// --reset-flows` returned (hostile.sh D1 saw 3 UDP flows leave by the old
/// exit after the switch, with other suites loading the machine).
pub fn reset_everywhere(workers: &[WorkerHandle], source: Cidr, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let (tx, rx) = crossbeam_channel::bounded(workers.len());
    let mut queued = 0;
    for w in workers {
        let left = deadline.saturating_duration_since(Instant::now());
        queued += usize::from(w.command(Command::ResetSource(source, tx.clone()), left));
    }
    drop(tx);
    // Every sender gone before its answer (a worker ended) ends this early.
    let done = (0..queued).take_while(|_| rx.recv_deadline(deadline).is_ok()).count();
    workers.len() - done
}

/// The sending side of a worker, held by every front loop.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: QueueTx<Handoff>,
    commands: Sender<Command>,
    waker: Arc<Waker>,
    /// Set while the worker is (about to be) blocked in epoll: only then is a
    /// wake-up (an eventfd write) needed; a busy worker looks at its queue
    /// on every turn of its loop anyway.
    sleeping: Arc<AtomicBool>,
    /// Empty UDP batches the worker hands back for reuse.
    recycled: Receiver<Box<UdpBatch>>,
}

impl WorkerHandle {
    /// Queues without blocking; gives the hand-off back if the queue is full.
    pub fn try_send(&self, h: Handoff) -> Result<(), Handoff> {
        self.tx.try_send(h)
    }

    /// Queues a command and wakes the worker; waits at most `wait` for room.
    /// False when it could not be delivered (the worker is stuck or gone).
    pub fn command(&self, c: Command, wait: Duration) -> bool {
        self.command_or_why(c, wait).is_ok()
    }

    /// [`WorkerHandle::command`], saying why it was not taken: `Err(true)`
    /// when the worker has ended, `Err(false)` when its queue stayed full.
    pub fn command_or_why(&self, c: Command, wait: Duration) -> Result<(), bool> {
        let sent = self.commands.send_timeout(c, wait);
        // Unconditionally: a command must not wait for the next hand-off.
        let _ = self.waker.wake();
        match sent {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => Err(true),
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => Err(false),
        }
    }

    /// Wakes the worker whether or not it sleeps: it looks at the stop flag
    /// only when woken (it sleeps until its next deadline, however far).
    pub fn wake_now(&self) {
        let _ = self.waker.wake();
    }

    /// Wakes the worker if it sleeps; call after sending.
    pub fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// An empty batch to fill, if the worker has handed one back.
    pub fn recycled(&self) -> Option<Box<UdpBatch>> {
        self.recycled.try_recv().ok()
    }
}

pub struct WorkerLoop {
    id: usize,
    poll: Poll,
    rx: QueueRx<Handoff>,
    commands: Receiver<Command>,
    flows: Slab<Flow>,
    timers: BinaryHeap<Reverse<(Instant, Token)>>,
    relay: RelayCtx,
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    registry: Arc<Registry>,
    pools: Arc<Pools>,
    /// This worker's counters per tunnel and per route source (see `tally`).
    tallies: tally::Tallies,
    fail_log: Arc<FailLog>,
    udp: udp::Udp,
    /// The live routes: reply checks, and hand-offs routed before a reset.
    routes: routing::Routes,
    /// Pooled DNS-over-TCP connections (slots in `udp.dns`), see `dns`.
    dns_pool: HashMap<dns::PoolKey, usize, crate::udp::FoldState>,
    /// Connections being greeted for warm pools.
    warming: Slab<warm::Warm>,
    /// Tunnel name → its pool (cleared on reload).
    pool_cache: HashMap<String, Option<Arc<crate::pool::TunnelPool>>, FoldState>,
    /// The pools this worker looks at, and when the first is due (`warm`).
    armed_pools: Vec<Arc<crate::pool::TunnelPool>>,
    /// Pools whose idle values this worker watches (`Kind::Pooled` tokens
    /// name them by place), and the handle takers unregister them with.
    pool_slots: Vec<Arc<crate::pool::TunnelPool>>,
    watch_registry: Arc<mio::Registry>,
    next_pool_tick: Option<Instant>,
    recycle: Sender<Box<UdpBatch>>,
    sleeping: Arc<AtomicBool>,
    now: Instant,
    /// Per-source TCP limits (flows, rate) of the sources this worker serves,
    /// and what the workers share (descriptors, sources per route).
    tcp_sources: TcpSources,
    limits: Arc<SharedLimits>,
    /// The UDP sessions' hold on the sources-per-route cap (see `udp_source_first`).
    udp_cap: UdpCapHolds,
    /// Early client bytes held by this worker's opening flows.
    early_held: usize,
    /// Until then pools make no refill: a flow found no descriptor (see
    /// `warm::note_fds_short`).
    fds_short_until: Instant,
    /// The shapers of this worker's sources (issue 26, see `shaping`).
    shapers: shaping::Shapers,
    /// A refusal of each kind is logged at warn once a minute (the last
    /// one: a UDP source past its route's cap).
    refuse_log: [crate::lograte::Every; Refused::ALL.len()],
    /// The UDP source-cap warning, once a minute at most.
    udp_cap_log: crate::lograte::Every,
}

/// When each tunnel last had a failure logged at warn, shared by all
/// workers so that a broken tunnel warns once a minute, not once per worker.
/// Locked only on the failure path.
#[derive(Debug, Default)]
pub struct FailLog(std::sync::Mutex<Vec<(String, crate::lograte::Every)>>);

impl FailLog {
    /// True if a warning for `tunnel` is due at `now` (and records it).
    pub fn due(&self, tunnel: &str, now: Instant) -> bool {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, every)) = v.iter_mut().find(|(n, _)| n == tunnel) {
            return every.due(now).is_some();
        }
        let mut every = crate::lograte::Every::default();
        let due = every.due(now).is_some();
        v.push((tunnel.to_string(), every));
        due
    }
}

/// What every worker shares with the others (and the control side reads).
#[derive(Debug, Default, Clone)]
pub struct Common {
    pub registry: Arc<Registry>,
    /// The warm pools, by tunnel name.
    pub pools: Arc<Pools>,
    pub fail_log: Arc<FailLog>,
    pub limits: Arc<SharedLimits>,
    /// The tunnels' shaping boards (a tunnel's `rate` shared by weight).
    pub boards: Arc<Boards>,
    /// The quota counters (issue 27).
    pub ledger: Arc<crate::quota::Ledger>,
    /// The meter exchange with the other processes of an upgrade.
    pub meters: Arc<Meters>,
}

impl WorkerLoop {
    /// A worker and the handle front loops use to reach it.
    pub fn new(
        id: usize,
        settings: Arc<Settings>,
        routing: Arc<dyn Routing>,
        common: &Common,
    ) -> io::Result<(WorkerLoop, WorkerHandle)> {
        let Common { registry, pools, fail_log, limits, boards, ledger, meters } = common.clone();
        let counters = registry.thread();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let watch_registry = Arc::new(poll.registry().try_clone()?);
        let (tx, rx) = queue::queue(QUEUE);
        let (recycle, recycled) = crossbeam_channel::bounded(16);
        let (commands_tx, commands) = crossbeam_channel::bounded(COMMANDS);
        let mut w = WorkerLoop {
            id,
            poll,
            rx,
            commands,
            flows: Slab::default(),
            timers: BinaryHeap::new(),
            relay: RelayCtx {
                scratch: vec![0u8; SCRATCH].into_boxed_slice(),
                pipes: PipePool::default(),
                splice: settings.tcp.splice,
            },
            settings: Arc::clone(&settings),
            counters,
            registry,
            pools,
            tallies: tally::Tallies::new(Instant::now()),
            fail_log,
            udp: udp::Udp::new(&settings.udp, settings.threads),
            routes: routing::Routes::new(routing),
            dns_pool: HashMap::default(),
            warming: Slab::default(),
            pool_cache: HashMap::default(),
            armed_pools: Vec::new(),
            pool_slots: Vec::new(),
            watch_registry,
            next_pool_tick: None,
            recycle,
            sleeping: Arc::new(AtomicBool::new(false)),
            now: Instant::now(),
            tcp_sources: TcpSources::default(),
            limits,
            udp_cap: UdpCapHolds::default(),
            early_held: 0,
            shapers: shaping::Shapers::new(&settings, boards, ledger, meters),
            fds_short_until: Instant::now(),
            refuse_log: Default::default(),
            udp_cap_log: Default::default(),
        };
        // The pools fill at start (and go cold after warm_idle_secs unused).
        w.arm_all_pools();
        let sleeping = Arc::clone(&w.sleeping);
        Ok((w, WorkerHandle { tx, commands: commands_tx, waker, sleeping, recycled }))
    }

    /// Runs until `stop` is set and every flow has ended (or `grace` passed).
    pub fn run(mut self, stop: &Stop) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_TURN);
        let mut stopping_since: Option<Instant> = None;
        loop {
            let (grace, linger) = stop.times();
            // Sleep until the next deadline, however far: with nothing due
            // (no flow, no session, no pool to look at) the loop costs nothing.
            let next = [
                self.timers.peek().map(|Reverse((t, _))| *t),
                self.udp.next_deadline(),
                self.next_pool_tick,
                self.tallies.next_due(),
                stopping_since.map(|t| t + grace),
                stopping_since.filter(|_| self.flows.is_empty()).map(|t| t + linger),
                self.shapers.next_report(),
            ]
            .into_iter()
            .flatten()
            .min();
            let mut timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            // Announce the sleep, then look once more: a hand-off sent before
            // the announcement is seen here, one sent after it gets a wake-up.
            self.sleeping.store(true, Ordering::SeqCst);
            if !self.rx.is_empty() || !self.commands.is_empty() {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = polled
                && e.kind() != ErrorKind::Interrupted
            {
                return Err(e);
            }
            self.now = Instant::now();
            self.routes.refresh();
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.on_event(ev);
                }
            }
            self.take_handoffs(HANDOFFS_PER_TURN);
            self.expire();
            self.expire_udp_idle();
            // A stopping worker (draining after an upgrade) fills no pool.
            if stopping_since.is_none() {
                self.tick_pools();
            }
            let forget = self.settings.control.forget_sources;
            self.tallies.end_turn(&self.registry, &self.counters, self.now, forget);
            self.publish_shapers();
            if stop.now.load(Ordering::SeqCst) {
                let since = *stopping_since.get_or_insert(self.now);
                // Take what is still queued, so nothing handed over is lost.
                self.take_handoffs(usize::MAX);
                let waited = self.now.duration_since(since);
                let (grace, linger) = stop.times();
                if (self.flows.is_empty() && waited >= linger) || waited >= grace {
                    debug!(target: "egressd::worker", "worker {} stopping with {} flows", self.id, self.flows.len());
                    self.shapers.report(self.now, true);
                    return Ok(());
                }
            }
        }
    }

    fn adopt_levels(&mut self, l: Levels) {
        let lim = TcpLimits::of(&self.settings);
        for (ip, milli) in l.tcp {
            // A source routed nowhere now opens nothing: nothing to keep.
            if let Some((route, _)) = self.routes.route(ip) {
                self.tcp_sources.adopt((ip, milli), route, &lim, &self.limits, self.now);
            }
        }
        for (ip, milli) in l.udp {
            self.udp.table.adopt_bucket(ip, milli, self.now);
        }
    }

    /// Commands, then at most `limit` hand-offs (the rest are taken next
    /// turn: the loop does not sleep while the queue holds any).
    fn take_handoffs(&mut self, limit: usize) {
        // Commands first: a reset must not wait behind a queue of hand-offs
        // (and a reload applies to the connections queued after it).
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Settings(s) => self.apply(s),
                Command::ResetSource(c, done) => {
                    // Before the flows end: what a front routed before the
                    // change and hands over later is routed again.
                    self.routes.on_reset();
                    self.reset_source(c);
                    let _ = done.try_send(());
                }
                Command::ExportUdp(tx) => {
                    self.take_handoffs(usize::MAX);
                    let _ = tx.send(self.export_sessions());
                }
                Command::AdoptUdp(moved, tx) => {
                    let _ = tx.send(self.adopt_sessions(moved));
                }
                Command::ExportLevels(tx) => {
                    let lim = TcpLimits::of(&self.settings);
                    let tcp = self.tcp_sources.levels(&lim, self.now);
                    let _ = tx.send(Levels { tcp, udp: self.udp.table.bucket_levels(self.now) });
                }
                Command::AdoptLevels(l) => self.adopt_levels(l),
                Command::Debit(rates) => self.shapers.debit(&rates, self.now),
            }
        }
        for _ in 0..limit {
            let Some(h) = self.rx.try_recv() else { break };
            match h {
                Handoff::Tcp(t) if self.routes.stale(t.generation) => self.reroute_flow(*t),
                Handoff::Tcp(t) => self.start_flow(*t),
                Handoff::Udp(mut b) => {
                    if self.routes.stale(b.generation) {
                        self.reroute_batch(&mut b);
                    }
                    self.on_batch(b)
                }
            }
        }
    }

    /// A connection routed before the last reset: routed again now, so a
    /// source that was moved (or an address's next owner) never starts a
    /// flow on the tunnel it was moved from.
    fn reroute_flow(&mut self, mut h: TcpHandoff) {
        match self.routes.route(h.client.ip()) {
            Some((source, tunnel)) => {
                if !Arc::ptr_eq(&tunnel, &h.tunnel) {
                    debug!(target: "egressd::worker", "{} -> tcp {}: routed before a reset; now via {}",
                        h.client, h.orig_dst, tunnel.name);
                }
                (h.source, h.tunnel) = (source, tunnel);
                self.start_flow(h)
            }
            None => {
                Counters::inc(&self.counters.drop_no_route);
                debug!(target: "egressd::worker", "{} -> tcp {}: routed before a reset, no route now; reset",
                    h.client, h.orig_dst);
                reset(&SockRef::from(&h.stream));
            }
        }
    }

    /// Reloaded settings. Applied live: TCP and UDP timeouts, `tcp.splice`
    /// (for flows that start from now on), and the UDP limits (see
    /// `udp::Udp::apply`). Listen addresses and threads need a restart.
    fn apply(&mut self, s: Arc<Settings>) {
        self.relay.splice = s.tcp.splice;
        self.udp.apply(&s.udp, s.threads);
        self.pool_cache.clear();
        self.arm_all_pools();
        // The routes' view may lag the settings by a turn: refreshed first.
        self.routes.refresh();
        let routes = &self.routes;
        self.shapers.apply(&s, |ip| shaping::holds(routes.view(), ip), self.now);
        self.settings = s;
    }

    /// Once a second: the shaping gauges, and the flows of sources whose
    /// quota now refuses end.
    fn publish_shapers(&mut self) {
        self.shapers.report(self.now, false);
        let mut refused = Vec::new();
        self.shapers.publish(&self.counters, self.now, &mut refused);
        if !refused.is_empty() {
            self.end_refused(&refused);
        }
    }

    /// Moves a source to its new route: its TCP flows are reset and its UDP
    /// sessions end (the next datagram opens a session on the new route).
    fn reset_source(&mut self, cidr: crate::route::Cidr) {
        let n = self.reset_flows_of(cidr);
        let m = self.end_sessions_of(cidr);
        if n + m > 0 {
            log::info!(target: "egressd::worker", "worker {}: reset {n} TCP flows, ended {m} UDP sessions of {cidr}", self.id);
        }
    }

    /// This worker's counters for a flow of `source` through `tunnel`.
    fn tally(&mut self, tunnel: &str, source: Option<Cidr>) -> Tally {
        self.tallies.tally(&self.registry, tunnel, source)
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        let Some((kind, slot, generation)) = slab::decode(ev.token()) else { return };
        match kind {
            Kind::Client | Kind::Upstream => {
                if !self.flows.is_live(slot, generation) {
                    return;
                }
                match self.advance(slot, kind, ev) {
                    Some(End::Retry) => self.retry_fresh(slot, generation),
                    Some(end) => self.end(slot, end),
                    None => {
                        self.watch_half_close(slot, generation);
                        // No shaper here: no shaped flow (one holds its
                        // source's shaper), nothing to arm.
                        if !self.shapers.none() {
                            self.arm_shape(slot, generation);
                        }
                    }
                }
            }
            Kind::UdpControl | Kind::UdpData | Kind::DnsTcp => self.on_udp_event(kind, slot, generation, ev),
            Kind::Warm => self.on_warm_event(slot, generation, ev),
            Kind::Pooled => self.on_pooled_event(slot, generation),
            Kind::Shape => {}
        }
    }

    /// Handles timers that came due: connect/handshake timeouts, idle flows.
    fn expire(&mut self) {
        while let Some(Reverse((at, token))) = self.timers.peek().copied() {
            if at > self.now {
                return;
            }
            self.timers.pop();
            let Some((kind, slot, generation)) = slab::decode(token) else { continue };
            if kind == Kind::Warm {
                self.expire_warm(slot, generation);
                continue;
            }
            if kind == Kind::Shape {
                self.expire_shape(slot, generation);
                continue;
            }
            if kind != Kind::Client {
                self.expire_udp(kind, slot, generation);
                continue;
            }
            self.expire_flow(slot, generation, token);
        }
    }
}

/// TCP keepalive as egressd sets it on both legs (accepted client sockets
/// inherit it from the listener).
pub fn keepalive(s: &SockRef) -> io::Result<()> {
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    s.set_tcp_keepalive(&ka)
}

/// Closes with RST instead of FIN (SO_LINGER 0) once the socket is dropped.
pub fn reset(s: &SockRef) {
    let _ = s.set_linger(Some(Duration::ZERO));
}
