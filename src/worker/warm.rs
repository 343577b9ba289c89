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

use log::debug;
use mio::Interest;
use mio::net::TcpStream;
use socket2::SockRef;

use super::connect::{Connect, connect_result};
use super::slab::{self, Kind};
use super::udp::{associate_handshake, relay_addr, relay_socket};
use super::{Drive, WorkerLoop, connect, drive_handshake, keepalive, may_read};
use crate::config::{Credentials, Tunnel};
use crate::pool::{self, Assoc, TunnelPool};
use crate::upstream::{Handshake, Socks5Handshake};

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
        let taken = s.take(source);
        let n = s.pool.claim_refills(self.now);
        let r = (n > 0).then(|| refill_of(&i));
        drop(i);
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

    fn warm_failed(&mut self, p: &TunnelPool, generation: u64, udp: bool) {
        let mut i = p.lock();
        if i.generation == generation {
            let now = self.now;
            if udp { i.udp.pool.refill_failed(now) } else { i.tcp.pool.refill_failed(now) }
        }
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
    /// with the address the server bound), or counts the failure.
    fn warm_end(&mut self, slot: usize, done: Option<Option<crate::wire::socks5::Bound>>) {
        let Some(mut w) = self.warming.remove(slot) else { return };
        let _ = self.poll.registry().deregister(&mut w.stream);
        let mut i = w.pool.lock();
        if i.generation != w.generation {
            // Made for settings a reload replaced: closed here.
            return;
        }
        let now = self.now;
        let ctrl = std::net::TcpStream::from(std::os::fd::OwnedFd::from(w.stream));
        match (done, w.udp) {
            (Some(_), false) => i.tcp.refilled(now, ctrl),
            (Some(Some(bound)), true) => {
                let relay = relay_addr(bound, &i.tunnel);
                match relay_socket(relay) {
                    Ok(data) => i.udp.refilled(now, Assoc { ctrl, data }),
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

    /// Every CHECK_EVERY: idle pooled values are looked at (dead and old
    /// ones closed), and pools short of their size are refilled.
    pub(super) fn tick_pools(&mut self) {
        if self.now < self.next_pool_tick {
            return;
        }
        self.next_pool_tick = self.now + pool::CHECK_EVERY;
        let now = self.now;
        for p in self.pools.all() {
            let mut i = p.lock();
            let (tcp, udp) = (i.tcp.tick(now), i.udp.tick(now));
            if tcp + udp == 0 {
                continue;
            }
            let r = refill_of(&i);
            drop(i);
            for k in 0..tcp + udp {
                self.start_warm(&p, &r, k >= tcp);
            }
        }
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
