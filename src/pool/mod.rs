//! Warm pools: per tunnel, a few SOCKS5 connections that have finished
//! the greeting (and authentication) and wait for a request, so that a new
//! flow sends its CONNECT at once — one round trip to the exit instead of
//! three before its first byte (see `state` for the rules).
//!
//! A pool belongs to one tunnel's name and is shared by every worker (its
//! size counts for all of them): the worker that takes a connection starts
//! the refill on its own loop and hands the greeted connection back. An
//! idle pooled connection stays registered with that worker's loop
//! ([`Watched`]): a close or a byte out of turn is an event there, and the
//! worker that takes it for a flow unregisters it first. Nothing looks at
//! idle connections on a timer; a pool is due only when one reaches its
//! refresh age, or when nothing used it for `warm_idle_secs` (then it
//! closes them all and makes no more until the next use). A pool grows to
//! the largest burst of new flows it has seen, up to `warm_max` (see
//! `state`), so a container's later bursts find their connections ready.
//!
//! Each pool also holds what the probe learned about the server: whether
//! it takes a pipelined handshake (see `probe`).

pub mod probe;
mod state;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::config::{Credentials, Tunnel, TunnelKind};
use crate::stats::{Gauges, Snapshot};
pub use state::{CHECK_EVERY, Events, Liveness, Miss, Pool};

/// What the probe found out about a server's handling of pipelined bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipelining {
    /// Not probed yet, or the probe could not tell: handshakes wait for each answer.
    Unknown = 0,
    Yes = 1,
    /// The server drops what follows a message in the same read (microsocks).
    No = 2,
    /// `pipeline: false` in the config.
    Off = 3,
}

impl Pipelining {
    pub fn text(self) -> &'static str {
        match self {
            Pipelining::Unknown => "unknown",
            Pipelining::Yes => "yes",
            Pipelining::No => "no",
            Pipelining::Off => "off",
        }
    }

    fn from_u8(v: u8) -> Pipelining {
        match v {
            1 => Pipelining::Yes,
            2 => Pipelining::No,
            3 => Pipelining::Off,
            _ => Pipelining::Unknown,
        }
    }
}

/// What pooled connections were greeted with; a reload that changes any
/// of it drains the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    server: SocketAddr,
    auth: Option<Credentials>,
    pipeline: bool,
    udp_relay: Option<SocketAddr>,
}

impl Key {
    /// Whether `kind` is what this key was made from (no copy: asked for every new flow).
    fn matches(&self, kind: &TunnelKind) -> bool {
        match kind {
            TunnelKind::Socks5 { server, auth, pipeline, udp_relay, .. } => {
                server.addr == Some(self.server)
                    && *auth == self.auth
                    && *pipeline == self.pipeline
                    && *udp_relay == self.udp_relay
            }
            _ => false,
        }
    }

    fn of(kind: &TunnelKind) -> Option<Key> {
        match kind {
            TunnelKind::Socks5 { server, auth, pipeline, udp_relay, .. } => Some(Key {
                server: server.addr?,
                auth: auth.clone(),
                pipeline: *pipeline,
                udp_relay: *udp_relay,
            }),
            _ => None,
        }
    }
}

/// Counted under the pool's lock (taken once per new flow anyway).
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolStats {
    pub hits: u64,
    pub misses: u64,
    pub refills: u64,
    pub discards: u64,
    pub disabled: u64,
}

impl PoolStats {
    pub fn add(&mut self, ev: Events) {
        self.discards += ev.discards;
        self.disabled += ev.disabled;
    }
}

/// A ready UDP association: the control connection that keeps it alive and
/// a socket of egressd's own, connected to the relay.
#[derive(Debug)]
pub struct Assoc {
    pub ctrl: TcpStream,
    pub data: UdpSocket,
}

/// A pooled value: its TCP connection (the one a server closes).
pub trait Pooled {
    fn stream(&self) -> &TcpStream;

    /// One peek at the connection.
    fn liveness(&self) -> Liveness {
        liveness(self.stream())
    }
}

impl Pooled for TcpStream {
    fn stream(&self) -> &TcpStream {
        self
    }
}

impl Pooled for Assoc {
    fn stream(&self) -> &TcpStream {
        &self.ctrl
    }
}

/// An idle pooled value, watched for readability in the loop of the worker
/// that made it: a close or a byte out of turn is an event there, not
/// something looked for every 250 ms.
pub struct Watched<C> {
    pub conn: C,
    /// Names it in that worker's tokens.
    pub id: u32,
    registry: Arc<mio::Registry>,
}

impl<C: Pooled> Watched<C> {
    /// `conn`, registered as `id` with `registry` by the caller.
    pub fn new(conn: C, id: u32, registry: Arc<mio::Registry>) -> Self {
        Watched { conn, id, registry }
    }

    /// The value, no longer watched: its taker registers it with its own loop.
    fn unwatch(self) -> C {
        let fd = self.conn.stream().as_raw_fd();
        let _ = self.registry.deregister(&mut mio::unix::SourceFd(&fd));
        self.conn
    }
}

/// A number for a new pooled value (its token in the watching loop).
pub fn next_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A pool's configured size (`warm`) and the most it may learn to hold
/// after bursts (`warm_max`, never below `warm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    warm: usize,
    max: usize,
}

impl Size {
    const NONE: Size = Size { warm: 0, max: 0 };

    fn new(warm: usize, max: usize) -> Size {
        Size { warm, max: max.max(warm) }
    }

    fn of<C>(p: &Pool<C>) -> Size {
        Size { warm: p.size(), max: p.learn_max() }
    }

    fn pool<C>(self, idle: Option<Duration>, now: Instant) -> Pool<C> {
        Pool::new(self.warm).with_learning(self.max).with_idle(idle, now).with_events()
    }
}

/// One kind of pooled value (greeted TCP connections, or UDP associations)
/// and its counters.
pub struct Side<C> {
    pub pool: Pool<Watched<C>>,
    pub stats: PoolStats,
}

impl<C: Pooled> Side<C> {
    fn new(size: Size, idle: Option<Duration>, now: Instant) -> Self {
        Side { pool: size.pool(idle, now), stats: PoolStats::default() }
    }

    /// Drains and resizes (the counters go on).
    fn reset(&mut self, size: Size, idle: Option<Duration>, now: Instant) {
        let ev = self.pool.drain();
        self.stats.add(ev);
        self.pool = size.pool(idle, now);
    }

    /// A pooled value for a flow from `source`, counted as a hit or a miss;
    /// either way the pool is in use.
    pub fn take(&mut self, source: std::net::IpAddr, now: Instant) -> Option<C> {
        self.pool.used(now);
        // No peek: a close while it waited was an event (`look`); one in the
        // last instant costs the flow a retry on a fresh connection.
        let (taken, ev) = self.pool.take(source, |_| Liveness::Alive);
        self.stats.add(ev);
        match taken {
            Ok(w) => {
                self.stats.hits += 1;
                Some(w.unwatch())
            }
            Err(_) => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// The periodic look at idle values; how many refills to start.
    pub fn tick(&mut self, now: Instant) -> usize {
        if self.pool.size() == 0 {
            return 0;
        }
        if self.pool.check_due(now) {
            // Closes come as events: this only drops connections at their
            // refresh age, or all of them once the pool is idle.
            let ev = self.pool.check(now, |_| Liveness::Alive);
            self.stats.add(ev);
        }
        self.pool.claim_refills(now)
    }

    /// An event on the idle value `id` (if it is this side's): dropped if
    /// the server closed it or spoke out of turn. True when it was here.
    pub fn look(&mut self, now: Instant, id: u32) -> bool {
        let mut here = false;
        let ev = self.pool.look(
            now,
            |w| w.id == id,
            |w| {
                here = true;
                w.conn.liveness()
            },
        );
        self.stats.add(ev);
        here
    }

    /// A refill came back ready.
    pub fn refilled(&mut self, now: Instant, c: Watched<C>) {
        self.stats.refills += 1;
        if self.pool.refilled(now, c).is_some() {
            self.stats.discards += 1;
        }
    }
}

pub struct Inner {
    key: Key,
    /// The tunnel as the last reload saw it (for the UDP relay address).
    pub tunnel: Arc<Tunnel>,
    /// Bumped when the key or a size changes: a refill made under an older
    /// one is closed.
    pub generation: u64,
    pub tcp: Side<TcpStream>,
    pub udp: Side<Assoc>,
}

/// One tunnel's pools.
pub struct TunnelPool {
    pub name: String,
    inner: Mutex<Inner>,
    pipelining: AtomicU8,
    /// A probe thread is on it (see `probe::spawn`).
    probing: AtomicBool,
}

impl std::fmt::Debug for TunnelPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelPool").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TunnelPool {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pipelining(&self) -> Pipelining {
        Pipelining::from_u8(self.pipelining.load(Ordering::Relaxed))
    }

    pub fn set_pipelining(&self, p: Pipelining) {
        self.pipelining.store(p as u8, Ordering::Relaxed);
    }
}

impl Inner {
    /// The server the pooled connections go to.
    pub fn server(&self) -> SocketAddr {
        self.key.server
    }

    pub fn auth(&self) -> Option<&Credentials> {
        self.key.auth.as_ref()
    }

    /// Whether this pool's connections were greeted for `kind` as it is now.
    pub fn serves(&self, kind: &TunnelKind) -> bool {
        self.key.matches(kind)
    }
}

/// Every tunnel's pool, by tunnel name.
#[derive(Debug, Default)]
pub struct Pools {
    map: RwLock<HashMap<String, Arc<TunnelPool>>>,
}

impl Pools {
    /// Brings the pools in line with the tunnels (start and reload): a
    /// tunnel whose server, credentials or pipeline setting changed has its
    /// pool drained; a removed tunnel's pool is closed. Returns the pools
    /// whose server should be probed for pipelining.
    pub fn reconcile(&self, tunnels: &[Tunnel]) -> Vec<Arc<TunnelPool>> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut probe = Vec::new();
        let mut keep = std::collections::HashSet::new();
        let now = Instant::now();
        for t in tunnels {
            let Some(key) = Key::of(&t.kind) else { continue };
            keep.insert(t.name.clone());
            let max = t.kind.warm_max();
            let size = Size::new(t.kind.warm(), max);
            let size_udp = Size::new(t.kind.warm_udp(), max);
            let idle = t.kind.warm_idle();
            let pipelining = if key.pipeline { Pipelining::Unknown } else { Pipelining::Off };
            let tunnel = Arc::new(t.clone());
            match map.get(&t.name) {
                Some(p) => {
                    let mut inner = p.lock();
                    let sizes = (Size::of(&inner.tcp.pool), Size::of(&inner.udp.pool));
                    if inner.key != key || sizes != (size, size_udp) {
                        inner.tcp.reset(size, idle, now);
                        inner.udp.reset(size_udp, idle, now);
                        inner.generation += 1;
                    } else {
                        // A reload counts as a use: what it kept warms again.
                        inner.tcp.pool.set_idle(idle, now);
                        inner.udp.pool.set_idle(idle, now);
                    }
                    if inner.key != key {
                        inner.key = key;
                        p.set_pipelining(pipelining);
                    }
                    inner.tunnel = tunnel;
                    if p.pipelining() == Pipelining::Unknown {
                        probe.push(Arc::clone(p));
                    }
                }
                None => {
                    let p = Arc::new(TunnelPool {
                        name: t.name.clone(),
                        inner: Mutex::new(Inner {
                            key: key.clone(),
                            tunnel,
                            generation: 0,
                            tcp: Side::new(size, idle, now),
                            udp: Side::new(size_udp, idle, now),
                        }),
                        pipelining: AtomicU8::new(pipelining as u8),
                        probing: AtomicBool::new(false),
                    });
                    if pipelining == Pipelining::Unknown {
                        probe.push(Arc::clone(&p));
                    }
                    map.insert(t.name.clone(), p);
                }
            }
        }
        map.retain(|name, p| {
            let k = keep.contains(name);
            if !k {
                // Closed, and never refilled by a worker still holding it.
                let mut i = p.lock();
                i.tcp.reset(Size::NONE, None, now);
                i.udp.reset(Size::NONE, None, now);
                i.generation += 1;
            }
            k
        });
        probe
    }

    /// [`reconcile`](Self::reconcile), then probe the servers not known yet
    /// in the background.
    pub fn apply(&self, tunnels: &[Tunnel]) {
        probe::spawn(self.reconcile(tunnels));
    }

    pub fn get(&self, name: &str) -> Option<Arc<TunnelPool>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Calls `f` on every pool, in no order, without copying the list (the
    /// workers' tick: `f` must not reconcile).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<TunnelPool>)) {
        for p in self.map.read().unwrap_or_else(|e| e.into_inner()).values() {
            f(p);
        }
    }

    /// Every pool, sorted by tunnel name.
    pub fn all(&self) -> Vec<Arc<TunnelPool>> {
        let mut v: Vec<_> = self.map.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// `egressd stats`' section: one line per tunnel with a pool or a probe.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let all = self.all();
        if all.is_empty() {
            return String::new();
        }
        let mut o = String::from("\nwarm pools:\n");
        for p in all {
            let i = p.lock();
            let mut notes = Vec::new();
            let _ = write!(o, "  {}", p.name);
            side(&mut o, &mut notes, "", &i.tcp.pool, &i.tcp.stats);
            let _ = write!(o, " pipelining {}", p.pipelining().text());
            if i.udp.pool.size() > 0 || i.udp.stats.hits + i.udp.stats.misses > 0 {
                side(&mut o, &mut notes, " udp", &i.udp.pool, &i.udp.stats);
            }
            if !notes.is_empty() {
                let _ = write!(o, " ({})", notes.join("; "));
            }
            o.push('\n');
        }
        o
    }
}

impl Gauges for Pools {
    /// Fills a snapshot's pool fields from the pool of `name` (all pools for `None`).
    fn fill(&self, name: Option<&str>, s: &mut Snapshot) {
        let pools = match name {
            Some(n) => self.get(n).into_iter().collect(),
            None => self.all(),
        };
        for p in pools {
            let i = p.lock();
            let (t, u) = (i.tcp.stats, i.udp.stats);
            s.pool_hits += t.hits;
            s.pool_misses += t.misses;
            s.pool_refills += t.refills;
            s.pool_discards += t.discards;
            s.pool_disabled += t.disabled + u.disabled;
            s.pool_ready += i.tcp.pool.ready() as u64;
            s.pool_size += i.tcp.pool.size() as u64;
            s.pool_udp_hits += u.hits;
            s.pool_udp_misses += u.misses;
            s.pool_udp_refills += u.refills;
            s.pool_udp_discards += u.discards;
            s.pool_udp_ready += i.udp.pool.ready() as u64;
            s.pool_udp_size += i.udp.pool.size() as u64;
        }
    }
}

/// One pool's figures on a `stats` line; a note on the server's idle
/// limit goes into `notes` (printed at the end of the line).
fn side<C>(o: &mut String, notes: &mut Vec<String>, what: &str, pool: &Pool<C>, st: &PoolStats) {
    use std::fmt::Write;
    let _ = write!(
        o,
        "{what} ready {}/{} hits {} misses {} refills {} discards {}",
        pool.ready(),
        pool.target(),
        st.hits,
        st.misses,
        st.refills,
        st.discards
    );
    let who = if what.is_empty() { "tcp" } else { what.trim() };
    if pool.target() > pool.size() {
        notes.push(format!("{who} pool grown to a burst of {} (warm {})", pool.target(), pool.size()));
    }
    if pool.is_disabled() {
        let limit = pool.idle_limit().unwrap_or_default();
        notes.push(format!(
            "{who} pool disabled: the server closes idle connections after ~{:.1}s",
            limit.as_secs_f64()
        ));
    } else if let Some(l) = pool.idle_limit() {
        notes.push(format!("{who}: server idle limit ~{:.1}s", l.as_secs_f64()));
    }
}

/// Whether an idle pooled connection is still open: one peek (pooled
/// sockets are non-blocking). Bytes from the server while it waits for
/// our request are out of turn.
pub fn liveness(s: &TcpStream) -> Liveness {
    let mut b = [0u8; 1];
    match s.peek(&mut b) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Liveness::Alive,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Liveness::Alive,
        _ => Liveness::Dead,
    }
}
