//! Seeded, deterministic simulation of the session table against a naive
//! reference model, on a virtual clock.
//!
//! The model is a `Vec` in use order (front = least recently used) holding
//! each session's value, last activity and kind; every question about it is
//! an O(n) scan, so it is obviously right. Each step applies one random
//! operation to both and then checks, after EVERY step:
//! - `len() <= max_sessions`, `len()` and `dns_only_len()` equal the model's;
//! - `next_deadline()` equals the model's minimum `last + timeout`;
//! - every session in the model is in the table with the same value, kind and
//!   deadline, and `iter()` yields exactly the model's sessions (so nothing
//!   the model says is alive has gone);
//!
//! and, for the operations that remove sessions:
//! - each `pop_expired` result was past its deadline in the model and had the
//!   earliest deadline; when it returns None, nothing in the model is past;
//! - a full-table `insert` drops an expired session (earliest deadline) if
//!   the model has one, else the least recently used session of a source
//!   holding the most sessions; a source at `max_per_source` gives up its
//!   own least recently used session.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{FoldState, Insert, Kind, Limits, SessionTable};

/// Sources without a session a simulated table keeps (for their buckets).
const MAX_IDLE: usize = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Session {
    addr: SocketAddr,
    value: u64,
    last: Instant,
    kind: Kind,
}

struct Sim {
    rng: Rng,
    limits: Limits,
    now: Instant,
    table: SessionTable<u64>,
    /// Use order: front is least recently used.
    model: Vec<Session>,
    pool: Vec<SocketAddr>,
    next_value: u64,
    counts: [u64; 4],
}

impl Sim {
    fn new(seed: u64, limits: Limits, pool_size: usize) -> Sim {
        let mut rng = Rng(seed);
        let pool = (0..pool_size)
            .map(|i| {
                let port = 1024 + rng.below(60000) as u16;
                if i % 3 == 0 {
                    SocketAddr::from(([0xfd08, 0, 0, 0, 0, 0, 0, 10 + (i % 7) as u16], port))
                } else {
                    SocketAddr::from(([10, 8, 0, 10 + (i % 5) as u8], port))
                }
            })
            .collect();
        let mut table = SessionTable::with_hasher(limits, FoldState::with_seeds(seed, seed.rotate_left(17)));
        // Small, so that sources move between active, idle and forgotten.
        table.set_max_idle_sources(MAX_IDLE);
        Sim {
            rng,
            limits,
            now: Instant::now(),
            table,
            model: Vec::new(),
            pool,
            next_value: 0,
            counts: [0; 4],
        }
    }

    fn timeout(&self, kind: Kind) -> Duration {
        match kind {
            Kind::DnsOnly => self.limits.dns_idle_timeout,
            Kind::Ordinary => self.limits.idle_timeout,
        }
    }

    fn deadline(&self, s: &Session) -> Instant {
        s.last + self.timeout(s.kind)
    }

    fn pos(&self, a: &SocketAddr) -> Option<usize> {
        self.model.iter().position(|s| s.addr == *a)
    }

    fn min_deadline(&self) -> Option<Instant> {
        self.model.iter().map(|s| self.deadline(s)).min()
    }

    fn pick_addr(&mut self) -> SocketAddr {
        self.pool[self.rng.below(self.pool.len() as u64) as usize]
    }

    fn pick_port(&mut self) -> u16 {
        if self.rng.below(2) == 0 { 53 } else { [443, 123, 3478, 54, 52][self.rng.below(5) as usize] }
    }

    /// Removes from the model the session the table said it dropped to make
    /// room at `now`, after checking that it was the right one.
    fn source_count(&self, ip: std::net::IpAddr) -> usize {
        self.model.iter().filter(|s| s.addr.ip() == ip).count()
    }

    /// The model's least recently used session of this source.
    fn source_lru(&self, ip: std::net::IpAddr) -> Option<usize> {
        self.model.iter().position(|s| s.addr.ip() == ip)
    }

    fn check_made_room(&mut self, dropped: SocketAddr, value: u64, expired: bool) {
        let p = self.pos(&dropped).expect("dropped a session the model lacks");
        assert_eq!(self.model[p].value, value);
        let min_expired = self.model.iter().map(|s| self.deadline(s)).filter(|&d| d <= self.now).min();
        if expired {
            assert_eq!(Some(self.deadline(&self.model[p])), min_expired, "expired the wrong session");
            self.counts[2] += 1;
        } else {
            assert_eq!(min_expired, None, "evicted a live session while an expired one was there");
            let ip = dropped.ip();
            let heaviest = self.model.iter().map(|s| self.source_count(s.addr.ip())).max();
            assert_eq!(Some(self.source_count(ip)), heaviest, "evicted from {ip}, not a heaviest source");
            assert_eq!(Some(p), self.source_lru(ip), "evicted {dropped}, not its source's LRU");
            self.counts[3] += 1;
        }
        self.model.remove(p);
    }

    fn insert(&mut self, addr: SocketAddr, port: u16) {
        let value = self.next_value;
        self.next_value += 1;
        let kind = if port == 53 { Kind::DnsOnly } else { Kind::Ordinary };
        let full = self.model.len() >= self.limits.max_sessions;
        let own_full = self.source_count(addr.ip()) >= self.limits.max_per_source;
        match self.table.insert(addr, port, value, self.now) {
            Insert::Added => {
                assert!(self.pos(&addr).is_none() && !full && !own_full);
            }
            Insert::SourceFull(a, v) => {
                assert!(own_full && self.pos(&addr).is_none());
                assert_eq!(a.ip(), addr.ip());
                let p = self.pos(&a).expect("dropped a session the model lacks");
                assert_eq!(self.model[p].value, v);
                assert_eq!(Some(p), self.source_lru(addr.ip()), "not the source's LRU");
                self.model.remove(p);
                self.counts[3] += 1;
            }
            Insert::Replaced(old) => {
                let p = self.pos(&addr).expect("replaced a session the model lacks");
                assert_eq!(self.model.remove(p).value, old);
            }
            Insert::Expired(a, v) => {
                assert!(full && !own_full && self.pos(&addr).is_none());
                self.check_made_room(a, v, true);
            }
            Insert::Evicted(a, v) => {
                assert!(full && !own_full && self.pos(&addr).is_none());
                self.check_made_room(a, v, false);
            }
        }
        self.model.push(Session { addr, value, last: self.now, kind });
    }

    fn touch(&mut self, addr: SocketAddr, dst_port: Option<u16>) {
        let got = match dst_port {
            Some(port) => self.table.touch_outbound(&addr, port, self.now).copied(),
            None => self.table.touch_inbound(&addr, self.now).copied(),
        };
        match self.pos(&addr) {
            Some(p) => {
                let mut s = self.model.remove(p);
                assert_eq!(got, Some(s.value));
                s.last = self.now;
                if dst_port.is_some_and(|port| port != 53) {
                    s.kind = Kind::Ordinary;
                }
                self.model.push(s);
            }
            None => assert_eq!(got, None),
        }
    }

    fn pop_all_expired(&mut self) {
        let mut prev = None;
        while let Some((a, v)) = self.table.pop_expired(self.now) {
            let p = self.pos(&a).expect("expired a session the model lacks");
            let d = self.deadline(&self.model[p]);
            assert_eq!(self.model[p].value, v);
            assert!(d <= self.now, "{a} expired {:?} early", d - self.now);
            assert_eq!(Some(d), self.min_deadline(), "not the earliest deadline");
            assert!(prev <= Some(d));
            prev = Some(d);
            self.model.remove(p);
            self.counts[1] += 1;
        }
        assert!(self.min_deadline().is_none_or(|d| d > self.now), "a session past its deadline stayed");
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            // The front loop's path: a datagram out, new session if needed.
            0..=34 => {
                let (a, port) = (self.pick_addr(), self.pick_port());
                if self.table.get_mut(&a).is_some() {
                    self.touch(a, Some(port));
                } else {
                    // As the worker does: the source's bucket first (the
                    // default rate never refuses at the simulation's pace).
                    let _ = self.table.admit(a.ip(), self.now);
                    self.insert(a, port);
                }
            }
            // An insert on a possibly live key (Replaced).
            35..=39 => {
                let (a, port) = (self.pick_addr(), self.pick_port());
                self.insert(a, port);
            }
            40..=59 => {
                let a = self.pick_addr();
                self.touch(a, None);
            }
            60..=64 => {
                let a = self.pick_addr();
                let want = self.pos(&a).map(|p| self.model.remove(p).value);
                assert_eq!(self.table.remove(&a), want);
            }
            65..=69 => {
                let a = self.pick_addr();
                let v = self.next_value;
                self.next_value += 1;
                if let Some(x) = self.table.get_mut(&a) {
                    *x = v;
                    let p = self.pos(&a).expect("get_mut found a session the model lacks");
                    self.model[p].value = v;
                }
            }
            70..=89 => {
                let ms = match self.rng.below(20) {
                    0 => self.rng.below(400_000),
                    1..=5 => self.rng.below(30_000),
                    _ => self.rng.below(2_000),
                };
                self.now += Duration::from_millis(ms);
            }
            // Sometimes the timer fires exactly at the deadline.
            90..=92 => {
                if let Some(d) = self.table.next_deadline() {
                    self.now = self.now.max(d);
                }
                self.pop_all_expired();
            }
            _ => self.pop_all_expired(),
        }
        self.counts[0] += 1;
    }

    fn check(&self) {
        let t = &self.table;
        assert!(t.len() <= self.limits.max_sessions);
        assert_eq!(t.len(), self.model.len());
        assert_eq!(t.is_empty(), self.model.is_empty());
        assert_eq!(t.dns_only_len(), self.model.iter().filter(|s| s.kind == Kind::DnsOnly).count());
        assert_eq!(t.next_deadline(), self.min_deadline());
        for s in &self.model {
            assert_eq!(t.get(&s.addr), Some(&s.value), "{} lost", s.addr);
            assert_eq!(t.kind(&s.addr), Some(s.kind));
            assert_eq!(t.deadline(&s.addr), Some(self.deadline(s)));
            assert_eq!(t.source_len(&s.addr.ip()), self.source_count(s.addr.ip()));
            assert!(t.source_len(&s.addr.ip()) <= self.limits.max_per_source);
        }
        let mut ips: Vec<_> = self.model.iter().map(|s| s.addr.ip()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(t.sources_len(), ips.len(), "a source holding sessions is counted once");
        assert!(t.idle_sources_len() <= MAX_IDLE, "idle sources beyond their bound");
        let mut n = 0;
        for (a, v) in t.iter() {
            let p = self.pos(a).expect("iter yields a session the model lacks");
            assert_eq!(self.model[p].value, *v);
            n += 1;
        }
        assert_eq!(n, self.model.len());
    }
}

fn run(seed: u64, limits: Limits, pool: usize, steps: usize) -> [u64; 4] {
    let mut sim = Sim::new(seed, limits, pool);
    for _ in 0..steps {
        sim.step();
        sim.check();
    }
    sim.counts
}

const SEEDS: [u64; 6] = [1, 0x5eed, 0xdead_beef, 0x0123_4567_89ab_cdef, 99, 0xffff_0000_ffff];

#[test]
fn udp_sim_default_timeouts() {
    let mut total = [0u64; 4];
    for (i, seed) in SEEDS.into_iter().enumerate() {
        let max = [1, 2, 8, 32, 64, 16][i];
        let limits = Limits { max_sessions: max, ..Limits::default() };
        let c = run(seed, limits, max * 2 + 5, 25_000);
        for (t, c) in total.iter_mut().zip(c) {
            *t += c;
        }
    }
    // The run exercised every way out (steps, expired, made room by expiry, evicted).
    assert!(total.iter().all(|&c| c > 100), "{total:?}");
}

#[test]
fn udp_sim_other_timeouts() {
    let shapes = [
        (Duration::from_secs(10), Duration::from_secs(10)),
        (Duration::from_secs(5), Duration::from_secs(60)),
        (Duration::from_millis(1500), Duration::ZERO),
    ];
    for (i, (idle, dns)) in shapes.into_iter().enumerate() {
        for seed in &SEEDS[..3] {
            let limits = Limits {
                idle_timeout: idle,
                dns_idle_timeout: dns,
                max_sessions: 4 + 6 * i,
                // Below the table's bound, so both ways out are exercised.
                max_per_source: 3 + 2 * i,
                ..Limits::default()
            };
            run(seed.wrapping_mul(31) ^ i as u64, limits, 20 + 10 * i, 20_000);
        }
    }
}
