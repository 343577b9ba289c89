//! The worker's side of the warm pools (see `crate::pool`): taking a
//! greeted connection (or a ready UDP association) for a new flow or
//! session, making new ones on this loop, and the periodic look at idle
//! ones.
//!
//! ```text
//!  claim ──► connect ──writable──► greet (+auth) [+ UDP ASSOCIATE, relay socket] ──► into the pool
//!               └──── error / timeout / bytes out of turn ────────────────────────► refill_failed
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use log::debug;
use mio::Interest;
use mio::net::TcpStream;
use socket2::SockRef;

use super::connect::{Connect, connect_result};
use super::slab::{self, Kind};
use super::udp::{associate_handshake, relay_addr, relay_socket};
use super::{Drive, WorkerLoop, connect, drive_handshake, keepalive, may_read};
use crate::config::{Credentials, Tunnel};
use crate::pool::{self, Assoc, TunnelPool, Watched};
use crate::upstream::{Handshake, Socks5Handshake};

/// Pools due now that one loop turn looks at: when a thousand go cold (or
/// fill at start) together, each turn drains or refills this many and the
/// flows' events come in between (issue 25: a turn stays short).
const POOLS_PER_TURN: usize = 32;
/// How long pools leave descriptors to flows after a flow found none.
const FDS_SHORT: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection being made ready for a pool.
pub(super) struct Warm {
    stream: TcpStream,
    hs: Box<Handshake>,
    pool: Arc<TunnelPool>,
    /// The pool's generation when the refill was claimed.
    generation: u64,
    auth: Option<Credentials>,
    connected: bool,
    /// For the UDP pool: the handshake ends with UDP ASSOCIATE.
    udp: bool,
}

/// What a refill needs to know, read under the pool's lock (only when
/// there is a refill to start: the credentials are cloned).
struct Refill {
    generation: u64,
    server: SocketAddr,
    auth: Option<Credentials>,
    /// The tunnel as the pool knows it: the upstream socket's options.
    tunnel: Arc<Tunnel>,
}

impl WorkerLoop {
    /// The tunnel's pool, from this worker's cache (cleared on reload).
    pub(super) fn pool_of(&mut self, name: &str) -> Option<Arc<TunnelPool>> {
        if let Some(p) = self.pool_cache.get(name) {
            return p.clone();
        }
        let p = self.pools.get(name);
        self.pool_cache.insert(name.to_string(), p.clone());
        p
    }

    /// A greeted connection for a new flow of `tunnel` from `source`, and
    /// whether the server takes bytes behind a request (pipelining).
    pub(super) fn take_pooled(
        &mut self,
        tunnel: &Tunnel,
        source: IpAddr,
    ) -> (Option<std::net::TcpStream>, pool::Pipelining) {
        let Some(p) = self.pool_of(&tunnel.name) else { return (None, pool::Pipelining::Unknown) };
        let pipelining = p.pipelining();
        // No lock for a tunnel without a pool.
        let taken = if tunnel.kind.warm() == 0 {
            None
        } else {
            self.take_from(&p, tunnel, source, false, |i| &mut i.tcp)
        };
        (taken, pipelining)
    }

    /// A ready UDP association for a new session of `tunnel` from `source`.
    pub(super) fn take_pooled_udp(&mut self, tunnel: &Tunnel, source: IpAddr) -> Option<Assoc> {
        if tunnel.kind.warm_udp() == 0 {
            return None;
        }
        let p = self.pool_of(&tunnel.name)?;
        self.take_from(&p, tunnel, source, true, |i| &mut i.udp)
    }

    /// Takes from one side of `p` (counted as a hit or a miss) and starts
    /// the refills that makes due.
    fn take_from<C: pool::Pooled>(
        &mut self,
        p: &Arc<TunnelPool>,
        tunnel: &Tunnel,
        source: IpAddr,
        udp: bool,
        side: impl Fn(&mut pool::Inner) -> &mut pool::Side<C>,
    ) -> Option<C> {
        let mut i = p.lock();
        if !i.serves(&tunnel.kind) {
            return None;
        }
        let s = side(&mut i);
        if s.pool.size() == 0 {
            return None;
        }
        let taken = s.take(source, self.now);
        let n = s.pool.claim_refills(self.now);
        let due = s.pool.next_due(self.now);
        let r = (n > 0).then(|| refill_of(&i));
        drop(i);
        self.arm_pool(p, due);
        if let Some(r) = r {
            for _ in 0..n {
                self.start_warm(p, &r, udp);
            }
        }
        taken
    }

    /// Whether the tunnel's server takes pipelined handshakes (probed).
    pub(super) fn pipelines(&mut self, tunnel: &Tunnel) -> bool {
        self.pool_of(&tunnel.name).is_some_and(|p| p.pipelining() == pool::Pipelining::Yes)
    }

    /// Opens a connection to make ready for `p`; a failure to even start
    /// counts as a failed refill.
    fn start_warm(&mut self, p: &Arc<TunnelPool>, r: &Refill, udp: bool) {
        // Out of descriptors lately: flows first. The refill counts as
        // failed (the pool backs off) and takes no descriptor a flow needs.
        if self.now < self.fds_short_until {
            return self.warm_failed(p, r.generation, udp);
        }
        let stream = match connect(r.server, &r.tunnel.kind) {
            Ok(s) => s,
            Err(e) => {
                debug!(target: "egressd::pool", "tunnel \"{}\": cannot open a pooled connection to {}: {e}", p.name, r.server);
                return self.warm_failed(p, r.generation, udp);
            }
        };
        let hs = if udp {
            associate_handshake(r.server, r.auth.as_ref(), p.pipelining() == pool::Pipelining::Yes)
        } else {
            Socks5Handshake::greet(r.auth.is_some())
        };
        let w = Warm {
            stream,
            hs: Box::new(Handshake::Socks5(hs)),
            pool: Arc::clone(p),
            generation: r.generation,
            auth: r.auth.clone(),
            connected: false,
            udp,
        };
        let (slot, g) = self.warming.insert(w);
        let token = slab::token(slot, g, Kind::Warm);
        let w = self.warming.get_mut(slot).expect("just inserted");
        if self
            .poll
            .registry()
            .register(&mut w.stream, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            self.warm_end(slot, None);
            return;
        }
        let deadline = self.now + self.settings.tcp.connect_timeout;
        self.timers.push(std::cmp::Reverse((deadline, token)));
    }

    /// A flow could not open a socket for lack of descriptors: pools make
    /// no refill for `FDS_SHORT`, so what flows close goes to flows (a
    /// pool would take each freed descriptor first, and flows would keep
    /// failing while the pools refill).
    pub(super) fn note_fds_short(&mut self, e: &std::io::Error) {
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            self.fds_short_until = self.now + FDS_SHORT;
        }
    }

    fn warm_failed(&mut self, p: &Arc<TunnelPool>, generation: u64, udp: bool) {
        let mut i = p.lock();
        if i.generation == generation {
            let now = self.now;
            if udp { i.udp.pool.refill_failed(now) } else { i.tcp.pool.refill_failed(now) }
        }
        drop(i);
        self.arm_pool(p, Some(self.now));
    }

    pub(super) fn on_warm_event(&mut self, slot: usize, generation: u32, ev: &mio::event::Event) {
        if !self.warming.is_live(slot, generation) {
            return;
        }
        let w = self.warming.get_mut(slot).expect("live");
        if !w.connected {
            match connect_result(&w.stream, ev) {
                Connect::Pending => return,
                Connect::Failed(_) | Connect::Unknown(_) => return self.warm_end(slot, None),
                Connect::Connected => {}
            }
            let _ = keepalive(&SockRef::from(&w.stream));
            let _ = w.stream.set_nodelay(true);
            w.connected = true;
        }
        match drive_handshake(
            &mut w.stream,
            &mut w.hs,
            w.auth.as_ref(),
            &mut self.relay.scratch,
            may_read(ev),
        ) {
            Drive::Pending => {}
            // Bytes after the answers are out of turn: not a connection to pool.
            Drive::Done(extra) if extra.is_empty() => {
                let bound = w.hs.bound();
                self.warm_end(slot, Some(bound));
            }
            Drive::Done(_) => self.warm_end(slot, None),
            Drive::Failed(why, ..) => {
                debug!(target: "egressd::pool", "tunnel \"{}\": making a pooled connection ready: {why}", w.pool.name);
                self.warm_end(slot, None);
            }
        }
    }

    /// A refill did not get ready within connect_timeout_secs.
    pub(super) fn expire_warm(&mut self, slot: usize, generation: u32) {
        if self.warming.is_live(slot, generation) {
            debug!(target: "egressd::pool", "a pooled connection was not ready within connect_timeout_secs");
            self.warm_end(slot, None);
        }
    }

    /// Hands a ready connection to its pool (`done`: the handshake ended,
    /// with the address the server bound), or counts the failure. A ready
    /// one stays registered with this loop, watched for a close.
    fn warm_end(&mut self, slot: usize, done: Option<Option<crate::wire::socks5::Bound>>) {
        let Some(mut w) = self.warming.remove(slot) else { return };
        // Back or failed: the pool has something due (a look, a retry).
        self.arm_pool(&w.pool, Some(self.now));
        let id = pool::next_id();
        let token = slab::token(self.pool_slot(&w.pool), id, Kind::Pooled);
        let reg = self.poll.registry();
        let watched = done.is_some() && reg.reregister(&mut w.stream, token, Interest::READABLE).is_ok();
        if !watched {
            let _ = reg.deregister(&mut w.stream);
        }
        let mut i = w.pool.lock();
        if i.generation != w.generation {
            // Made for settings a reload replaced: closed here.
            return;
        }
        let now = self.now;
        let ctrl = std::net::TcpStream::from(std::os::fd::OwnedFd::from(w.stream));
        let reg = &self.watch_registry;
        match (done.filter(|_| watched), w.udp) {
            (Some(_), false) => i.tcp.refilled(now, Watched::new(ctrl, id, Arc::clone(reg))),
            (Some(Some(bound)), true) => {
                let relay = relay_addr(bound, &i.tunnel);
                match relay_socket(relay) {
                    Ok(data) => i.udp.refilled(now, Watched::new(Assoc { ctrl, data }, id, Arc::clone(reg))),
                    Err(e) => {
                        debug!(target: "egressd::pool", "tunnel \"{}\": UDP socket to relay {relay}: {e}", w.pool.name);
                        i.udp.pool.refill_failed(now);
                    }
                }
            }
            (_, true) => i.udp.pool.refill_failed(now),
            (None, false) => i.tcp.pool.refill_failed(now),
        }
    }

    /// An idle pooled value this worker watches was heard from: dropped if
    /// the server closed it or spoke out of turn (the pool then refills).
    pub(super) fn on_pooled_event(&mut self, at: usize, id: u32) {
        let Some(p) = self.pool_slots.get(at).cloned() else { return };
        let now = self.now;
        let mut i = p.lock();
        if !i.tcp.look(now, id) {
            i.udp.look(now, id);
        }
        drop(i);
        self.arm_pool(&p, Some(now));
    }

    /// The pool's place in this worker's list (its pooled values' tokens
    /// name it); the list only grows, by the tunnels reloads add.
    fn pool_slot(&mut self, p: &Arc<TunnelPool>) -> usize {
        match self.pool_slots.iter().position(|q| Arc::ptr_eq(q, p)) {
            Some(at) => at,
            None => {
                self.pool_slots.push(Arc::clone(p));
                self.pool_slots.len() - 1
            }
        }
    }

    /// When a pool this worker armed is due: its idle pooled values are
    /// looked at (dead and old ones closed; all of them once nothing used
    /// the pool for `warm_idle_secs`), and it is refilled if short. Only
    /// armed pools are looked at, and a pool leaves the list when nothing in
    /// it will be due without a use or a refill coming back: unused tunnels
    /// cost this loop no wake-up and no lock.
    pub(super) fn tick_pools(&mut self) {
        if self.next_pool_tick.is_none_or(|t| self.now < t) {
            return;
        }
        let now = self.now;
        let mut armed = std::mem::take(&mut self.armed_pools);
        self.next_pool_tick = None;
        let mut next = None;
        let mut worked = 0;
        armed.retain(|p| {
            if worked >= POOLS_PER_TURN {
                // The rest wait for the next turn, which comes at once.
                next = Some(now);
                return true;
            }
            let mut i = p.lock();
            if earliest(i.tcp.pool.next_due(now), i.udp.pool.next_due(now)).is_some_and(|t| t <= now) {
                worked += 1;
            }
            let (tcp, udp) = (i.tcp.tick(now), i.udp.tick(now));
            let due = earliest(i.tcp.pool.next_due(now), i.udp.pool.next_due(now));
            next = earliest(next, due);
            if tcp + udp > 0 {
                let r = refill_of(&i);
                drop(i);
                for k in 0..tcp + udp {
                    self.start_warm(p, &r, k >= tcp);
                }
            }
            due.is_some()
        });
        // Pools armed meanwhile (a refill that failed at once) join the list.
        for p in std::mem::take(&mut self.armed_pools) {
            if !armed.iter().any(|q| Arc::ptr_eq(q, &p)) {
                armed.push(p);
            }
        }
        self.armed_pools = armed;
        self.next_pool_tick = earliest(self.next_pool_tick, next);
    }

    /// Puts `p` on the list `tick_pools` looks at, due at `at`.
    fn arm_pool(&mut self, p: &Arc<TunnelPool>, at: Option<Instant>) {
        let Some(at) = at else { return };
        if !self.armed_pools.iter().any(|q| Arc::ptr_eq(q, p)) {
            self.armed_pools.push(Arc::clone(p));
        }
        self.next_pool_tick = earliest(self.next_pool_tick, Some(at));
    }

    /// Every pool, due now: at start and after a reload, when pools fill.
    pub(super) fn arm_all_pools(&mut self) {
        self.armed_pools.clear();
        let pools = Arc::clone(&self.pools);
        pools.for_each(|p| self.armed_pools.push(Arc::clone(p)));
        self.next_pool_tick = Some(self.now);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn refill_of(i: &pool::Inner) -> Refill {
    Refill {
        generation: i.generation,
        server: i.server(),
        auth: i.auth().cloned(),
        tunnel: Arc::clone(&i.tunnel),
    }
}
