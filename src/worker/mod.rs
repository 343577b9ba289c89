//! WorkerLoop: one thread, one `mio::Poll`, many flows.
//!
//! A front loop hands a client connection over (bounded channel + waker).
//! The worker opens the tunnel — a non-blocking connect to the tunnel's
//! server (or to the destination, for `Direct`), then the upstream
//! handshake — and relays both directions until both have ended.
//!
//! ```text
//!  handed over ─► Connecting ──writable, no error──► Handshaking ──Connected──► Relaying ──both Done──► closed
//!                     │   (Direct: straight to Relaying) │                          │
//!                     └──── error / timeout ─────────────┴──► client reset          └─ error/idle ─► both reset
//! ```
//!
//! A flow of a tunnel with a warm pool starts on a greeted connection
//! (straight to Handshaking with the request alone, see `warm`); with a
//! server that takes pipelining, the client's first bytes follow the
//! request without waiting for its answer. Such bytes are kept until the
//! answer shows they were taken: a pooled connection that turns out dead
//! before answering is replaced once by a fresh one, and they are replayed.
//!
//! Flows live by value in a slab; a token carries slot, generation and side,
//! so a stale event for a reused slot is ignored. Each flow has exactly one
//! entry in the timer heap; when it comes due and the flow has been active
//! since, it is pushed again with the new deadline.

mod connect;
mod dns;
mod limits;
mod queue;
mod routing;
mod slab;
mod udp;
mod warm;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use queue::{QueueRx, QueueTx};
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use crate::config::{Credentials, Settings, Tunnel, TunnelKind};
use crate::relay::{PipePool, Pump, PumpError, Pumped, RelayCtx};
use crate::route::Cidr;
use crate::stats::{Counters, Registry, Tally};
use crate::udp::FoldState;
use crate::upstream::{self, Handshake, HandshakeError, Progress, Socks5Handshake};
pub use limits::SharedLimits;
use limits::{Refused, TcpLimits, TcpSources, UdpCapHolds};
pub use routing::{RouteView, Routing};
use slab::{Kind, Slab};
use std::collections::HashMap;
pub use udp::{UdpBatch, UdpItem};

const WAKER: Token = Token(usize::MAX);
/// Scratch buffer shared by every flow of a worker. Large enough that the
/// allocator maps it on its own: pages never used cost no memory.
const SCRATCH: usize = 256 * 1024;
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
#[derive(Debug, Clone)]
pub enum Command {
    /// Reloaded settings (see `WorkerLoop::apply`).
    Settings(Arc<Settings>),
    /// Reset every TCP flow and end every UDP session of these sources.
    ResetSource(crate::route::Cidr),
}

/// Commands queued per worker; senders wait (bounded) when it is full.
const COMMANDS: usize = 64;

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
        let ok = self.commands.send_timeout(c, wait).is_ok();
        // Unconditionally: a command must not wait for the next hand-off.
        let _ = self.waker.wake();
        ok
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

enum Stage {
    /// Connecting and handshaking: boxed, so that a relaying flow (most
    /// flows, for most of their life) carries one pointer for it.
    Opening(Box<Opening>),
    Relaying,
}

/// What a flow needs only until its tunnel is open.
struct Opening {
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

struct Flow {
    client: TcpStream,
    upstream: TcpStream,
    client_addr: SocketAddr,
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
}

/// Client bytes held during a handshake at most (then the client waits).
/// All flows of a worker together hold at most `tcp.early_bytes_per_worker`.
const EARLY_MAX: usize = 16 * 1024;

/// Why a flow ends.
enum End {
    /// Both directions finished cleanly.
    Closed,
    /// The tunnel could not be opened: reset the client.
    Failed(&'static str, String),
    /// An error mid-relay, or the idle timeout: reset both sides.
    Reset(&'static str),
    /// A pooled connection died before answering: start over on a fresh one.
    Retry,
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
    /// This worker's counters per tunnel name and per route source.
    /// (Keyed by a fast keyed hash: looked up for every new flow.)
    per_tunnel: HashMap<String, Arc<Counters>, FoldState>,
    per_source: HashMap<Option<Cidr>, Arc<Counters>, FoldState>,
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
    next_pool_tick: Instant,
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

impl WorkerLoop {
    /// A worker and the handle front loops use to reach it.
    pub fn new(
        id: usize,
        settings: Arc<Settings>,
        routing: Arc<dyn Routing>,
        registry: Arc<Registry>,
        fail_log: Arc<FailLog>,
        limits: Arc<SharedLimits>,
    ) -> io::Result<(WorkerLoop, WorkerHandle)> {
        let counters = registry.thread();
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = queue::queue(QUEUE);
        let (recycle, recycled) = crossbeam_channel::bounded(16);
        let (commands_tx, commands) = crossbeam_channel::bounded(COMMANDS);
        let w = WorkerLoop {
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
            per_tunnel: HashMap::default(),
            per_source: HashMap::default(),
            fail_log,
            udp: udp::Udp::new(&settings.udp, settings.threads),
            routes: routing::Routes::new(routing),
            dns_pool: HashMap::default(),
            warming: Slab::default(),
            pool_cache: HashMap::default(),
            next_pool_tick: Instant::now(),
            recycle,
            sleeping: Arc::new(AtomicBool::new(false)),
            now: Instant::now(),
            tcp_sources: TcpSources::default(),
            limits,
            udp_cap: UdpCapHolds::default(),
            early_held: 0,
            refuse_log: Default::default(),
            udp_cap_log: Default::default(),
        };
        let sleeping = Arc::clone(&w.sleeping);
        Ok((w, WorkerHandle { tx, commands: commands_tx, waker, sleeping, recycled }))
    }

    /// Runs until `stop` is set and every flow has ended (or `grace` passed).
    pub fn run(mut self, stop: &AtomicBool, grace: Duration) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut stopping_since: Option<Instant> = None;
        loop {
            let next = match (self.timers.peek().map(|Reverse((t, _))| *t), self.udp.next_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut timeout = next
                .map(|t| t.saturating_duration_since(Instant::now()))
                .map_or(Duration::from_millis(500), |d| d.min(Duration::from_millis(500)));
            // Announce the sleep, then look once more: a hand-off sent before
            // the announcement is seen here, one sent after it gets a wake-up.
            self.sleeping.store(true, Ordering::SeqCst);
            if !self.rx.is_empty() || !self.commands.is_empty() {
                timeout = Duration::ZERO;
            }
            let polled = self.poll.poll(&mut events, Some(timeout));
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
            self.take_handoffs();
            self.expire();
            self.expire_udp_idle();
            self.tick_pools();
            if stop.load(Ordering::Relaxed) {
                let since = *stopping_since.get_or_insert(self.now);
                // Take what is still queued, so nothing handed over is lost.
                self.take_handoffs();
                if self.flows.is_empty() || self.now.duration_since(since) >= grace {
                    debug!(target: "egressd::worker", "worker {} stopping with {} flows", self.id, self.flows.len());
                    return Ok(());
                }
            }
        }
    }

    fn take_handoffs(&mut self) {
        // Commands first: a reset must not wait behind a queue of hand-offs
        // (and a reload applies to the connections queued after it).
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Settings(s) => self.apply(s),
                Command::ResetSource(c) => {
                    // Before the flows end: what a front routed before the
                    // change and hands over later is routed again.
                    self.routes.on_reset();
                    self.reset_source(c)
                }
            }
        }
        while let Some(h) = self.rx.try_recv() {
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
        self.settings = s;
    }

    fn start_flow(&mut self, h: TcpHandoff) {
        let TcpHandoff { stream, client, orig_dst, tunnel, source, .. } = h;
        let tc = self.tally(&tunnel.name, source);
        Counters::inc(&self.counters.tcp_flows_total);
        tc.inc(|c| &c.tcp_flows_total);
        // Before anything is opened for it: the source's limits and share.
        let lim = TcpLimits::of(&self.settings);
        if let Err(why) = self.tcp_sources.open(client.ip(), source, &lim, &self.limits, self.now) {
            return self.refuse_source(&stream, client, orig_dst, &tunnel, &tc, why);
        }
        // DNS over TCP to a resolver no exit can reach goes to `dns.upstream`.
        let dest = self.settings.dns.target(orig_dst);
        debug!(target: "egressd::worker", "{client} -> tcp {orig_dst} (to {dest}) via {}", tunnel.name);
        let target = match tunnel.kind.server() {
            None => dest,
            Some(server) => match server.addr {
                Some(a) => a,
                None => {
                    return self.refuse(&stream, client, orig_dst, &tunnel, &tc, "server address unresolved");
                }
            },
        };
        let (pooled, pipelining) = self.take_pooled(&tunnel, client.ip());
        let pipe = match &tunnel.kind {
            TunnelKind::Socks5 { .. } => pipelining == crate::pool::Pipelining::Yes,
            TunnelKind::HttpConnect { pipeline, .. } => *pipeline,
            TunnelKind::Direct { .. } => false,
        };
        let (upstream, connecting, handshake, pooled) = match pooled {
            Some(conn) => {
                let hs = Socks5Handshake::request(crate::wire::socks5::CMD_CONNECT, dest);
                (TcpStream::from_std(conn), false, Some(Handshake::Socks5(hs)), true)
            }
            None => {
                let handshake = match &tunnel.kind {
                    TunnelKind::Socks5 { auth, .. } if pipe => Some(Handshake::Socks5(
                        Socks5Handshake::pipelined(crate::wire::socks5::CMD_CONNECT, dest, auth.as_ref()),
                    )),
                    kind => upstream::for_tcp(kind, dest),
                };
                match connect(target, &tunnel.kind) {
                    Ok(s) => (s, true, handshake, false),
                    Err(e) => {
                        let why = format!("cannot open a socket to {target}: {e}");
                        return self.refuse(&stream, client, orig_dst, &tunnel, &tc, &why);
                    }
                }
            }
        };
        let retry = pooled;
        if pipe {
            Counters::inc(&self.counters.tcp_pipelined);
        }
        // Accepted with SOCK_NONBLOCK by the front loop (mio's accept4).
        let flow = Flow {
            client: TcpStream::from_std(stream),
            upstream,
            client_addr: client,
            orig_dst,
            tunnel,
            tc,
            stage: Stage::Opening(Box::new(Opening {
                connecting,
                handshake,
                started: self.now,
                early: Vec::new(),
                early_sent: 0,
                hold_early: pipe || retry,
                client_unread: false,
                pipe_data: pipe,
                retry,
                early_waited: false,
            })),
            up: Pump::default(),
            down: Pump::default(),
            last_active: self.now,
            half_closed: false,
        };
        let (slot, generation) = self.flows.insert(flow);
        let f = self.flows.get_mut(slot).expect("just inserted");
        let both = Interest::READABLE | Interest::WRITABLE;
        let reg = self.poll.registry();
        let ok = reg.register(&mut f.client, slab::token(slot, generation, Kind::Client), both).is_ok()
            && reg.register(&mut f.upstream, slab::token(slot, generation, Kind::Upstream), both).is_ok();
        Counters::inc(&self.counters.tcp_flows_active);
        f.tc.inc(|c| &c.tcp_flows_active);
        if !ok {
            self.end(slot, End::Failed("register", "cannot register sockets with epoll".into()));
            return;
        }
        let deadline = self.now + self.settings.tcp.connect_timeout;
        self.timers.push(Reverse((deadline, slab::token(slot, generation, Kind::Client))));
    }

    /// A pooled connection died before it answered the request: the flow
    /// starts over on a fresh connection with the whole handshake, and its
    /// early bytes go after the answer.
    fn retry_fresh(&mut self, slot: usize, generation: u32) {
        let Some(f) = self.flows.get_mut(slot) else { return };
        let dest = self.settings.dns.target(f.orig_dst);
        let Some(target) = f.tunnel.kind.server().and_then(|s| s.addr) else {
            return self.end(slot, End::Failed("connect", "server address unresolved".into()));
        };
        let mut up = match connect(target, &f.tunnel.kind) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot open a socket to {target}: {e}");
                return self.end(slot, End::Failed("connect", why));
            }
        };
        let token = slab::token(slot, generation, Kind::Upstream);
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut f.upstream);
        if reg.register(&mut up, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            return self.end(slot, End::Failed("register", "cannot register sockets with epoll".into()));
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

    /// Moves a source to its new route: its TCP flows are reset and its UDP
    /// sessions end (the next datagram opens a session on the new route).
    fn reset_source(&mut self, cidr: crate::route::Cidr) {
        let slots = self.flows.slots_where(|f| cidr.contains(f.client_addr.ip()));
        let n = slots.len();
        for slot in slots {
            self.end(slot, End::Reset("route changed (--reset-flows)"));
        }
        let m = self.end_sessions_of(cidr);
        if n + m > 0 {
            log::info!(target: "egressd::worker", "worker {}: reset {n} TCP flows, ended {m} UDP sessions of {cidr}", self.id);
        }
    }

    /// Per-tunnel counters of this worker, created on first use.
    fn tally(&mut self, tunnel: &str, source: Option<Cidr>) -> Tally {
        let t = match self.per_tunnel.get(tunnel) {
            Some(c) => Arc::clone(c),
            None => {
                let c = self.registry.tunnel(tunnel);
                self.per_tunnel.insert(tunnel.to_string(), Arc::clone(&c));
                c
            }
        };
        let s = match self.per_source.get(&source) {
            Some(c) => Arc::clone(c),
            None => {
                let label = source.map_or_else(|| "(default)".to_string(), |c| c.to_string());
                let c = self.registry.source(&label);
                self.per_source.insert(source, Arc::clone(&c));
                c
            }
        };
        Tally { tunnel: t, source: s }
    }

    /// Resets a client whose flow was admitted but never started.
    fn refuse(
        &mut self,
        s: &std::net::TcpStream,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Tunnel,
        tc: &Tally,
        why: &str,
    ) {
        self.tcp_sources.close(client.ip(), &TcpLimits::of(&self.settings), &self.limits, self.now);
        Counters::inc(&self.counters.tcp_upstream_failed);
        tc.inc(|c| &c.tcp_upstream_failed);
        self.log_failure(client, dst, t, why);
        reset(&SockRef::from(s));
    }

    /// Resets a client its source's limits refused, and counts it (for the
    /// process and for the route source); warns once a minute per kind.
    fn refuse_source(
        &mut self,
        s: &std::net::TcpStream,
        client: SocketAddr,
        dst: SocketAddr,
        t: &Tunnel,
        tc: &Tally,
        why: Refused,
    ) {
        Counters::inc(why.counter(&self.counters));
        tc.inc(|c| why.counter(c));
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
        Counters::inc(&self.counters.udp_drop_source_cap);
        tc.inc(|c| &c.udp_drop_source_cap);
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
    pub(super) fn udp_source_gone(&mut self, ip: std::net::IpAddr) {
        self.udp_cap.gone(&self.limits.cap, ip);
    }

    /// At most one warning per tunnel per minute; the rest go to debug.
    fn should_warn(&mut self, tunnel: &str) -> bool {
        self.fail_log.due(tunnel, self.now)
    }

    fn log_failure(&mut self, client: SocketAddr, dst: SocketAddr, t: &Tunnel, why: &str) {
        if self.should_warn(&t.name) {
            warn!(target: "egressd::worker", "{client} -> tcp {dst} via {}: {why}; client reset", t.name);
        } else {
            debug!(target: "egressd::worker", "{client} -> tcp {dst} via {}: {why}; client reset", t.name);
        }
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
                    None => self.watch_half_close(slot, generation),
                }
            }
            Kind::UdpControl | Kind::UdpData | Kind::DnsTcp => self.on_udp_event(kind, slot, generation, ev),
            Kind::Warm => self.on_warm_event(slot, generation, ev),
        }
    }

    /// Moves a flow on after an event; `Some` when the flow is over.
    fn advance(&mut self, slot: usize, side: Kind, ev: &mio::event::Event) -> Option<End> {
        let now = self.now;
        let early_max = self.settings.tcp.early_bytes_per_worker;
        let early_held = &mut self.early_held;
        let relay = &mut self.relay;
        let f = self.flows.get_mut(slot)?;
        let Stage::Opening(o) = &mut f.stage else {
            let (up, down) = directions(side, ev);
            return relay_some(f, relay, &self.counters, now, up, down);
        };
        if o.connecting {
            if side != Kind::Upstream || !(ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
                o.client_unread |= side == Kind::Client && may_read(ev);
                return None;
            }
            match f.upstream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    return Some(End::Failed("connect", connect_error(&f.tunnel, e)));
                }
            }
            // Writable with no error is connected; only other wake-ups
            // (hang-up, error flags) need the getpeername to tell.
            if !ev.is_writable() || ev.is_error() {
                match f.upstream.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotConnected => return None,
                    Err(e) => return Some(End::Failed("connect", connect_error(&f.tunnel, e))),
                }
            }
            let _ = keepalive(&SockRef::from(&f.upstream));
            let _ = f.upstream.set_nodelay(true);
            o.connecting = false;
            f.last_active = now;
            // Fall through: send the greeting / start relaying now.
        }
        if let Some(hs) = &mut o.handshake {
            if o.hold_early {
                if o.client_unread || (side == Kind::Client && may_read(ev)) {
                    let budget = early_max.saturating_sub(*early_held);
                    let Ok((n, held_back)) =
                        read_early(&mut f.client, &mut o.early, &mut relay.scratch, budget)
                    else {
                        return Some(End::Reset("read error"));
                    };
                    *early_held += n;
                    // Held back by the budget: read again when it has room,
                    // or by the relay once the tunnel is open (never dropped).
                    o.client_unread = held_back;
                    if held_back && !o.early_waited {
                        o.early_waited = true;
                        Counters::inc(&self.counters.tcp_early_waits);
                    }
                    if n > 0 {
                        Counters::set(&self.counters.tcp_early_bytes, *early_held as u64);
                    }
                }
            } else if side != Kind::Upstream {
                return None;
            }
            let server_spoke = side == Kind::Upstream && may_read(ev);
            // Early bytes ride behind a pipelined request in the same write:
            // written apart, the exit could answer (or read) between them.
            let behind = if o.pipe_data { &o.early[..] } else { &[][..] };
            let step = drive_handshake_then(
                &mut f.upstream,
                hs,
                auth_of(&f.tunnel),
                &mut relay.scratch,
                server_spoke,
                behind,
                &mut o.early_sent,
            );
            match step {
                Drive::Pending => {
                    if o.pipe_data && hs.request_out() && o.early_sent < o.early.len() {
                        match write_early(&mut f.upstream, &o.early[o.early_sent..]) {
                            Ok(n) => o.early_sent += n,
                            Err(_) if o.retry => return Some(End::Retry),
                            Err(e) => {
                                let why = handshake_error(&f.tunnel, format!("write to server: {e}"));
                                return Some(End::Failed("handshake", why));
                            }
                        }
                    }
                    return None;
                }
                Drive::Failed(_, _, true) if o.retry => return Some(End::Retry),
                Drive::Failed(why, auth, _) => {
                    let kind = if auth { "auth" } else { "handshake" };
                    return Some(End::Failed(kind, handshake_error(&f.tunnel, why)));
                }
                Drive::Done(extra) => {
                    f.down.preload(&relay.scratch[extra]);
                    // Early bytes: those sent were taken with the request; the rest go first.
                    if o.early_sent < o.early.len() {
                        f.up.preload(&o.early[o.early_sent..]);
                    }
                    let sent = o.early_sent as u64;
                    if sent > 0 {
                        f.up.bytes += sent;
                        Counters::add(&self.counters.tcp_bytes_up, sent);
                        f.tc.add(|c| &c.tcp_bytes_up, sent);
                    }
                }
            }
            debug!(target: "egressd::worker", "{} -> tcp {} via {}: open", f.client_addr, f.orig_dst, f.tunnel.name);
        }
        // Open: the handshake's state and early bytes are freed here.
        if !o.early.is_empty() {
            *early_held = early_held.saturating_sub(o.early.len());
            Counters::set(&self.counters.tcp_early_bytes, *early_held as u64);
        }
        f.stage = Stage::Relaying;
        f.last_active = now;
        relay_some(f, relay, &self.counters, now, true, true)
    }

    /// When one direction of a relaying flow has just ended, its (shorter)
    /// half-close timer starts: a second timer entry, once per flow.
    fn watch_half_close(&mut self, slot: usize, generation: u32) {
        let Some(f) = self.flows.get_mut(slot) else { return };
        if f.half_closed || !(f.up.is_done() || f.down.is_done()) {
            return;
        }
        f.half_closed = true;
        let due = f.last_active + self.settings.tcp.half_close_timeout.min(self.settings.tcp.idle_timeout);
        self.timers.push(Reverse((due, slab::token(slot, generation, Kind::Client))));
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
            if kind != Kind::Client {
                self.expire_udp(kind, slot, generation);
                continue;
            }
            if !self.flows.is_live(slot, generation) {
                continue;
            }
            let f = self.flows.get_mut(slot).expect("live");
            let (due, end) = match &f.stage {
                Stage::Relaying if f.half_closed => {
                    let limit = self.settings.tcp.half_close_timeout.min(self.settings.tcp.idle_timeout);
                    (f.last_active + limit, End::Reset("half-close timeout"))
                }
                Stage::Relaying => {
                    (f.last_active + self.settings.tcp.idle_timeout, End::Reset("idle timeout"))
                }
                Stage::Opening(o) => {
                    let why = format!(
                        "no answer from the tunnel within {}s (connect_timeout_secs)",
                        self.settings.tcp.connect_timeout.as_secs()
                    );
                    (o.started + self.settings.tcp.connect_timeout, End::Failed("timeout", why))
                }
            };
            if due > self.now {
                self.timers.push(Reverse((due, token)));
            } else {
                self.end(slot, end);
            }
        }
    }

    fn end(&mut self, slot: usize, end: End) {
        let Some(mut f) = self.flows.remove(slot) else { return };
        self.tcp_sources.close(f.client_addr.ip(), &TcpLimits::of(&self.settings), &self.limits, self.now);
        if let Stage::Opening(o) = &f.stage
            && !o.early.is_empty()
        {
            self.early_held = self.early_held.saturating_sub(o.early.len());
            Counters::set(&self.counters.tcp_early_bytes, self.early_held as u64);
        }
        Counters::dec(&self.counters.tcp_flows_active);
        f.tc.dec(|c| &c.tcp_flows_active);
        f.up.release(&mut self.relay.pipes);
        f.down.release(&mut self.relay.pipes);
        match end {
            // Handled by `retry_fresh` before it comes here; as an end, a reset.
            End::Closed | End::Retry => {
                debug!(target: "egressd::worker", "{} -> tcp {} via {}: closed, {} bytes up, {} down",
                    f.client_addr, f.orig_dst, f.tunnel.name, f.up.bytes, f.down.bytes);
            }
            End::Failed(kind, why) => {
                Counters::inc(&self.counters.tcp_upstream_failed);
                f.tc.inc(|c| &c.tcp_upstream_failed);
                match kind {
                    "timeout" => {
                        Counters::inc(&self.counters.tcp_connect_timeout);
                        f.tc.inc(|c| &c.tcp_connect_timeout);
                    }
                    "handshake" => {
                        Counters::inc(&self.counters.tcp_handshake_failed);
                        f.tc.inc(|c| &c.tcp_handshake_failed);
                    }
                    "auth" => {
                        Counters::inc(&self.counters.tcp_handshake_failed);
                        Counters::inc(&self.counters.tcp_auth_rejected);
                        f.tc.inc(|c| &c.tcp_handshake_failed);
                        f.tc.inc(|c| &c.tcp_auth_rejected);
                    }
                    _ => {}
                }
                self.log_failure(f.client_addr, f.orig_dst, &f.tunnel, &why);
                reset(&SockRef::from(&f.client));
            }
            End::Reset(why) => {
                if why == "idle timeout" || why == "half-close timeout" {
                    Counters::inc(&self.counters.tcp_idle_closed);
                }
                debug!(target: "egressd::worker", "{} -> tcp {} via {}: {why}; both sides reset",
                    f.client_addr, f.orig_dst, f.tunnel.name);
                reset(&SockRef::from(&f.client));
                reset(&SockRef::from(&f.upstream));
            }
        }
        // Dropping the streams closes them (and removes them from epoll).
    }
}

/// The event says the socket may have bytes (or an EOF, or an error) to read.
fn may_read(ev: &mio::event::Event) -> bool {
    ev.is_readable() || ev.is_read_closed() || ev.is_error()
}

/// The directions an event on one side can move: readable on a side feeds
/// the direction reading it, writable the direction writing to it; errors
/// and hang-ups are looked at both ways.
fn directions(side: Kind, ev: &mio::event::Event) -> (bool, bool) {
    let both = ev.is_error();
    let readable = may_read(ev);
    let writable = both || ev.is_writable() || ev.is_write_closed();
    match side {
        // client → upstream is `up`.
        Kind::Client => (readable, writable),
        _ => (writable, readable),
    }
}

/// Relays the directions asked for and counts the bytes; `Some` when the
/// flow is over.
fn relay_some(
    f: &mut Flow,
    relay: &mut RelayCtx,
    counters: &Counters,
    now: Instant,
    up: bool,
    down: bool,
) -> Option<End> {
    let (up0, down0) = (f.up.bytes, f.down.bytes);
    let r = pump_some(f, relay, up, down);
    if f.up.bytes != up0 || f.down.bytes != down0 {
        f.last_active = now;
        Counters::add(&counters.tcp_bytes_up, f.up.bytes - up0);
        Counters::add(&counters.tcp_bytes_down, f.down.bytes - down0);
        f.tc.add(|c| &c.tcp_bytes_up, f.up.bytes - up0);
        f.tc.add(|c| &c.tcp_bytes_down, f.down.bytes - down0);
    }
    r
}

/// Pumps the directions asked for (each until it would block); `Some`
/// when the flow is over. A direction not asked for keeps its last state:
/// edge-triggered readiness wakes it when it can move again.
fn pump_some(f: &mut Flow, relay: &mut RelayCtx, up: bool, down: bool) -> Option<End> {
    let up = if up { f.up.pump(&mut f.client, &mut f.upstream, relay) } else { Ok(f.up.state()) };
    let down = if down { f.down.pump(&mut f.upstream, &mut f.client, relay) } else { Ok(f.down.state()) };
    match (up, down) {
        (Err(e), _) | (_, Err(e)) => {
            let why = match e {
                PumpError::Read(_) => "read error",
                PumpError::Write(_) | PumpError::Unsupported => "write error",
            };
            Some(End::Reset(why))
        }
        (Ok(Pumped::Done), Ok(Pumped::Done)) => Some(End::Closed),
        _ => None,
    }
}

fn connect_error(t: &Tunnel, e: io::Error) -> String {
    match t.kind.server() {
        Some(s) => format!("cannot connect to the tunnel server {s}: {e}"),
        None => format!("cannot connect: {e}"),
    }
}

fn handshake_error(t: &Tunnel, e: String) -> String {
    match t.kind.server() {
        Some(s) => format!("{e} (server {s})"),
        None => e,
    }
}

/// The credentials a tunnel's handshake offers.
fn auth_of(t: &Tunnel) -> Option<&Credentials> {
    match &t.kind {
        TunnelKind::Socks5 { auth, .. } | TunnelKind::HttpConnect { auth, .. } => auth.as_ref(),
        TunnelKind::Direct { .. } => None,
    }
}

/// How far a handshake got on this readiness event.
enum Drive {
    /// Waiting for the server (or for room to write).
    Pending,
    /// Open; bytes of `scratch` in this range arrived after the handshake.
    Done(std::ops::Range<usize>),
    /// Why; whether it was the credentials the server rejected; whether
    /// the connection was lost with no answer (closed, reset).
    Failed(String, bool, bool),
}

/// Sends what the handshake holds and feeds it what the server sent, until
/// either would block or the handshake ends. `may_read`: the event says the
/// server may have sent something. When it does not, or a short read has
/// just drained the socket, the server's next bytes come with an event of
/// their own (edge-triggered epoll reports every arrival), so the read that
/// could only find nothing is skipped.
fn drive_handshake(
    s: &mut TcpStream,
    hs: &mut Handshake,
    auth: Option<&Credentials>,
    scratch: &mut [u8],
    may_read: bool,
) -> Drive {
    drive_handshake_then(s, hs, auth, scratch, may_read, &[], &mut 0)
}

/// [`drive_handshake`], with `early[*early_sent..]`: client bytes sent right
/// behind the request, in the same write (one segment).
fn drive_handshake_then(
    s: &mut TcpStream,
    hs: &mut Handshake,
    auth: Option<&Credentials>,
    scratch: &mut [u8],
    mut may_read: bool,
    early: &[u8],
    early_sent: &mut usize,
) -> Drive {
    loop {
        while !hs.transmit().is_empty() {
            let behind = early.get(*early_sent..).unwrap_or_default();
            let wrote = if hs.request_queued() && !behind.is_empty() {
                s.write_vectored(&[IoSlice::new(hs.transmit()), IoSlice::new(behind)])
            } else {
                s.write(hs.transmit())
            };
            match wrote {
                Ok(n) => {
                    let head = n.min(hs.transmit().len());
                    hs.sent(head);
                    *early_sent += n - head;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Drive::Pending,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Drive::Failed(format!("write to server: {e}"), false, true),
            }
        }
        if !may_read {
            return Drive::Pending;
        }
        let n = match s.read(scratch) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Drive::Pending,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Drive::Failed(format!("read from server: {e}"), false, true),
        };
        // A short read took all the socket had (handshakes carry no urgent data).
        may_read = n == scratch.len();
        match hs.on_input(&scratch[..n], auth) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Connected { consumed }) => return Drive::Done(consumed..n),
            Err(e) => return Drive::Failed(e.to_string(), e.is_auth_rejected(), e == HandshakeError::Closed),
        }
    }
}

/// Reads what the client sent before the tunnel opened, up to EARLY_MAX
/// and at most `budget` bytes (the worker's early-byte budget left). How
/// many bytes it read, and whether the budget stopped it with the client
/// perhaps still readable (its edge is spent: the caller reads again later).
fn read_early(
    c: &mut TcpStream,
    early: &mut Vec<u8>,
    scratch: &mut [u8],
    budget: usize,
) -> io::Result<(usize, bool)> {
    let mut n = 0;
    loop {
        let room = EARLY_MAX.saturating_sub(early.len()).min(scratch.len());
        if room == 0 {
            return Ok((n, false));
        }
        let room = room.min(budget - n);
        if room == 0 {
            return Ok((n, true));
        }
        match c.read(&mut scratch[..room]) {
            Ok(0) => return Ok((n, false)),
            Ok(m) => {
                // Exactly what is held, so the budget counts the memory.
                early.reserve_exact(m);
                early.extend_from_slice(&scratch[..m]);
                n += m;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((n, false)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes early bytes behind the request; how many went.
fn write_early(s: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < bytes.len() {
        match s.write(&bytes[n..]) {
            Ok(m) => n += m,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A non-blocking connect to `target` with the tunnel's socket options.
fn connect(target: SocketAddr, kind: &TunnelKind) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(target), Type::STREAM.nonblocking().cloexec(), None)?;
    // Urgent bytes from the server stay in the stream (see front::tcp_listener).
    s.set_out_of_band_inline(true)?;
    if let TunnelKind::Direct { interface, mark, bind } = kind {
        if let Some(i) = interface {
            s.bind_device(Some(i.as_bytes()))?;
        }
        if let Some(m) = mark {
            s.set_mark(*m)?;
        }
        if let Some(ip) = bind {
            s.bind(&SocketAddr::new(*ip, 0).into())?;
        }
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 5's budget: an idle TCP flow costs well under 1 KiB of user
    /// space (its slab entry plus one timer entry), with no buffer or pipe.
    #[test]
    fn an_idle_flow_is_small() {
        let per_flow = std::mem::size_of::<Flow>() + std::mem::size_of::<Reverse<(Instant, Token)>>();
        // 248 bytes: handshake state boxed until the tunnel opens, 48-byte
        // pumps. Debug builds of mio add a selector id to each stream.
        let most = if cfg!(debug_assertions) { 288 } else { 256 };
        assert!(per_flow <= most, "a flow takes {per_flow} bytes");
        eprintln!("an idle TCP flow: {per_flow} bytes of user space");
        assert_eq!(Pump::default().held_capacity(), 0);
    }

    /// The live routes a worker reads, for a worker made alone in a test.
    fn live(s: &Arc<Settings>) -> Arc<dyn Routing> {
        Arc::new(crate::front::Live::new(crate::front::Shared::new(Arc::clone(s))))
    }

    fn settings(extra: &str) -> Arc<Settings> {
        let text = format!(
            r#"(listen: ["10.8.0.1:10900"], tunnels: {{ "a": Direct() }},
                routes: [(source: "10.8.0.10", tunnel: "a")], threads: 1, {extra})"#
        );
        Arc::new(Settings::parse("t.ron", &text).unwrap())
    }

    /// Issue 14: a reload reaches what the worker built at start-up.
    #[test]
    fn a_reload_applies_live() {
        let a = settings("");
        let b = settings(
            "tcp: (idle_timeout_secs: 7, splice: false), \
             udp: (idle_timeout_secs: 9, max_sessions: 5, pending_datagrams: 3, dns_over_tcp: false)",
        );
        let (mut w, h) =
            WorkerLoop::new(0, Arc::clone(&a), live(&a), Arc::default(), Arc::default(), Arc::default())
                .unwrap();
        assert!(w.relay.splice);
        assert!(h.command(Command::Settings(b), Duration::from_secs(1)));
        w.take_handoffs();
        assert!(!w.relay.splice, "tcp.splice");
        assert_eq!(w.settings.tcp.idle_timeout, Duration::from_secs(7));
        assert_eq!(w.udp.pending_max, 3, "udp.pending_datagrams");
        let l = w.udp.table.limits();
        assert_eq!((l.max_sessions, l.idle_timeout), (5, Duration::from_secs(9)), "udp table limits");
    }

    /// Issue 23: a UDP session of a new source takes a place under its
    /// route's cap (shared with TCP and the other workers); the source's
    /// last session ending gives it back.
    #[test]
    fn udp_sessions_count_against_the_sources_per_route_cap() {
        let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() },
            routes: [(source: "10.8.0.0/24", tunnel: "a")], threads: 1, max_sources_per_route: 2)"#;
        let s = Arc::new(Settings::parse("t.ron", text).unwrap());
        let limits = Arc::new(SharedLimits::default());
        let (mut w, _h) =
            WorkerLoop::new(0, Arc::clone(&s), live(&s), Arc::default(), Arc::default(), Arc::clone(&limits))
                .unwrap();
        let tunnels: Arc<[Arc<Tunnel>]> = s.tunnels.iter().cloned().map(Arc::new).collect();
        let net: Cidr = "10.8.0.0/24".parse().unwrap();
        let send = |w: &mut WorkerLoop, from: &str| {
            let mut b = Box::new(UdpBatch::new(Arc::clone(&tunnels)));
            b.push(from.parse().unwrap(), "127.0.0.1:9".parse().unwrap(), (Some(net), 0), b"x");
            w.on_batch(b);
        };
        send(&mut w, "10.8.0.10:1000");
        send(&mut w, "10.8.0.10:1001"); // the same source again: not new
        send(&mut w, "10.8.0.11:1000");
        send(&mut w, "10.8.0.12:1000"); // a third address: past the cap
        assert_eq!(limits.cap.sources(Some(net)), 2);
        assert_eq!(w.udp.table.len(), 3);
        assert_eq!(w.counters.udp_drop_source_cap.load(std::sync::atomic::Ordering::Relaxed), 1);
        // .10's sessions end: its place goes to .12.
        assert_eq!(w.end_sessions_of("10.8.0.10/32".parse().unwrap()), 2);
        assert_eq!(limits.cap.sources(Some(net)), 1);
        send(&mut w, "10.8.0.12:1000");
        assert_eq!(limits.cap.sources(Some(net)), 2);
        assert_eq!(w.udp.table.len(), 2);
        assert_eq!(w.counters.udp_drop_source_cap.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// Issue 14: `--reset-flows` is delivered even when the hand-off queue
    /// is full, and says so when it cannot be.
    #[test]
    fn a_reset_survives_a_full_queue_or_says_it_did_not() {
        use crate::control::{Control, Request};
        use crate::front::{Live, Shared};
        let s = settings("");
        let live = Arc::new(Live::new(Shared::new(Arc::clone(&s))));
        let routing: Arc<dyn Routing> = live.clone();
        let (w, h) =
            WorkerLoop::new(0, Arc::clone(&s), routing, Arc::default(), Arc::default(), Arc::default())
                .unwrap();
        let tunnels: Arc<[Arc<Tunnel>]> = s.tunnels.iter().cloned().map(Arc::new).collect();
        let mut full = 0;
        while h.try_send(Handoff::Udp(Box::new(UdpBatch::new(Arc::clone(&tunnels))))).is_ok() {
            full += 1;
        }
        assert_eq!(full, QUEUE, "the hand-off queue is full");
        let ctl = Control { live, workers: vec![h], registry: Arc::default() };
        let source: Cidr = "10.8.0.11/32".parse().unwrap();
        let set = Request::RouteSet { source, tunnel: "a".into(), reset: true };
        let body = ctl.handle(set.clone()).unwrap();
        assert!(body.contains("its flows were reset"), "{body}");
        assert!(matches!(w.commands.try_recv(), Ok(Command::ResetSource(c)) if c == source));
        // A worker that never takes its commands: the answer says so.
        while ctl.workers[0].command(Command::ResetSource(source), Duration::ZERO) {}
        let e = ctl.handle(set).unwrap_err();
        assert!(e.contains("did not reach 1 of 1 workers"), "{e}");
        assert!(e.contains("(set)"), "{e}");
    }
}
