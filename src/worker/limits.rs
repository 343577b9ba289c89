//! Per-source TCP limits, the descriptors the workers share, and the cap on
//! distinct sources per route prefix. Sans-IO: no socket, no clock (every
//! call that cares about time takes `now`).
//!
//! A *source* is one container address (SPEC §4). A source's flows all live
//! in one worker (the fronts hand them to `worker_for(source)`), so what is
//! kept per source is the worker's own ([`TcpSources`]); what several
//! sources share across workers is in [`SharedLimits`]: the process's
//! descriptors ([`FdShare`], one atomic) and the distinct sources of each
//! prefix route ([`SourceCap`], a lock taken only when a source gets its
//! first flow or session and when it is forgotten, never per packet).
//!
//! A new flow is checked in this order (the first refusal wins, and a
//! refused flow costs the source no token):
//!
//! ```text
//!  new flow from S ─► S has max_flows_per_source open? ─► yes: Refused::Flows    (tcp_drop_source_flows)
//!                   ─► S's descriptor share spent?      ─► yes: Refused::FdShare  (tcp_drop_fd_share)
//!                   ─► S new, its route's cap full?     ─► yes: Refused::SourceCap (tcp_drop_source_cap)
//!                   ─► S's bucket empty?                ─► yes: Refused::Rate     (tcp_drop_source_rate)
//!                   ─► S's quota spent (Reject)?        ─► yes: Refused::Quota    (drop_quota; its
//!                                                              descriptors and flow given back)
//!                   ─► open (2 descriptors taken)
//! ```
//!
//! A source's entry (its flow count and its bucket) outlives its flows:
//!
//! ```text
//!  first flow ──► active (flows ≥ 1) ──last flow ends──► idle (bucket refilling, in the idle LRU)
//!                     ▲                                    │  bucket full again (burst ÷ rate s), or
//!                     └──────────── a new flow ────────────┘  pushed out by IDLE_MAX newer idle ones
//!                                                          ▼
//!                                               forgotten (its cap slot released)
//! ```
//!
//! so a source whose flows fail at once (an exit that resets, a dead
//! route) still meets its rate, and a sprayed address keeps its cap slot
//! until its bucket has refilled.
//!
//! The descriptor share: TCP flows together may hold `budget` descriptors,
//! the process's limit less a reserve (an eighth, at least 256, at most half) for
//! egressd's own sockets, pipes and UDP. A source may hold at most as many
//! as remain free after it, i.e. half of what the other sources leave:
//! alone it gets `budget / 2`; k sources flooding at once get
//! `budget / (k + 1)` each and leave as much free for a newcomer, so
//! neither one source nor several can take the last descriptor.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::bucket::Bucket;
use crate::config::Settings;
use crate::route::Cidr;
use crate::stats::Counters;
use crate::udp::{FoldState, Lru};

/// Descriptors a TCP flow holds: the client's socket and the upstream's.
pub const FDS_PER_FLOW: usize = 2;
/// Idle sources (no flow, bucket refilling) a worker remembers at most.
const IDLE_MAX: usize = 4096;
/// The reserve of descriptors TCP flows never take: at least this many...
const RESERVE_MIN: u64 = 256;
/// ... and at least this fraction (1/8) of the limit.
const RESERVE_DIV: u64 = 8;

/// The per-source limits in force (from the settings; reloads apply them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    pub max_flows: u32,
    pub rate: u32,
    pub burst: u32,
    pub fd_share: bool,
    pub max_sources: usize,
}

impl TcpLimits {
    pub fn of(s: &Settings) -> TcpLimits {
        TcpLimits {
            max_flows: s.tcp.max_flows_per_source,
            rate: s.tcp.new_flows_per_source_per_sec.max(1),
            burst: s.tcp.new_flows_per_source_burst.max(1),
            fd_share: s.tcp.fd_share,
            max_sources: s.max_sources_per_route,
        }
    }

    /// How long an empty bucket takes to fill: an idle source older than
    /// this has a full bucket and can be forgotten.
    fn refill(&self) -> Duration {
        Duration::from_micros(u64::from(self.burst) * 1_000_000 / u64::from(self.rate.max(1)))
    }
}

/// Why a new flow was refused; mapped here, in one place, to its counter
/// and its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Flows,
    FdShare,
    SourceCap,
    Rate,
    /// Its class's quota is spent (`on_quota: Reject`, issue 27).
    Quota,
}

impl Refused {
    pub const ALL: [Refused; 5] =
        [Refused::Flows, Refused::FdShare, Refused::SourceCap, Refused::Rate, Refused::Quota];

    pub fn counter(self, c: &Counters) -> &AtomicU64 {
        match self {
            Refused::Flows => &c.tcp_drop_source_flows,
            Refused::FdShare => &c.tcp_drop_fd_share,
            Refused::SourceCap => &c.tcp_drop_source_cap,
            Refused::Rate => &c.tcp_drop_source_rate,
            Refused::Quota => &c.drop_quota,
        }
    }

    pub fn why(self) -> &'static str {
        match self {
            Refused::Flows => {
                "the source has tcp.max_flows_per_source flows open (counted: tcp_drop_source_flows)"
            }
            Refused::FdShare => {
                "the source holds its share of the file descriptors (half of what the other sources leave free; \
                 counted: tcp_drop_fd_share)"
            }
            Refused::SourceCap => {
                "its route already has max_sources_per_route source addresses (counted: tcp_drop_source_cap)"
            }
            Refused::Rate => {
                "the source is over tcp.new_flows_per_source_per_sec (counted: tcp_drop_source_rate)"
            }
            Refused::Quota => "its class's quota is spent (on_quota: Reject; counted: drop_quota)",
        }
    }

    /// Index into a per-kind array (log rate limiters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The process's descriptors as TCP flows hold them, shared by every
/// worker: one counter, taken and given back once per flow.
#[derive(Debug)]
pub struct FdShare {
    budget: usize,
    held: AtomicUsize,
}

impl FdShare {
    /// The budget for a process whose open-file limit is `limit`.
    pub fn new(limit: u64) -> FdShare {
        let budget = limit.saturating_sub(Self::reserve(limit));
        FdShare { budget: usize::try_from(budget).unwrap_or(usize::MAX), held: AtomicUsize::new(0) }
    }

    /// Descriptors kept from TCP flows: egressd's own sockets, pipes, UDP;
    /// never more than half (a tiny limit still relays some TCP).
    pub fn reserve(limit: u64) -> u64 {
        (limit / RESERVE_DIV).max(RESERVE_MIN).min(limit / 2)
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Descriptors TCP flows hold now, process-wide.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// Takes `n` descriptors for a source that holds `mine`; with `share`,
    /// only within its fair share (see [`fits`]). Exact across workers
    /// (compare-and-swap), so the budget is never overrun by a race.
    pub fn take(&self, mine: usize, n: usize, share: bool) -> bool {
        let mut total = self.held.load(Relaxed);
        loop {
            if share && !fits(self.budget, total, mine, n) {
                return false;
            }
            match self.held.compare_exchange_weak(total, total.saturating_add(n), Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(now) => total = now,
            }
        }
    }

    pub fn put(&self, n: usize) {
        let _ = self.held.fetch_update(Relaxed, Relaxed, |h| Some(h.saturating_sub(n)));
    }
}

/// Whether a source holding `mine` of the `total` held may take `n` more
/// out of `budget`: after it, it holds no more than remains free, i.e. at
/// most half of what the other sources leave.
pub fn fits(budget: usize, total: usize, mine: usize, n: usize) -> bool {
    let others = total.saturating_sub(mine);
    (mine + n).saturating_mul(2) <= budget.saturating_sub(others)
}

/// Distinct source addresses per prefix route (and the default route),
/// across workers and across TCP and UDP. Each *holder* — a worker's TCP
/// state for an address, or its UDP state — admits the address once, on
/// its first flow or session, and (when it was [`Cap::Counted`]) releases
/// it once, when it forgets the address: an address is counted once
/// however many holders it has.
#[derive(Debug, Default)]
pub struct SourceCap {
    inner: Mutex<CapInner>,
}

/// What [`SourceCap::admit`] says about a holder's new source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Counted under its route: release it when done with it.
    Counted,
    /// A host route: not capped, nothing to release.
    Uncapped,
    /// New, and its route already has its maximum of sources.
    Full,
}

#[derive(Debug, Default)]
struct CapInner {
    /// Each counted address: the route it is counted under, and its holders.
    by_addr: HashMap<IpAddr, (Option<Cidr>, u32)>,
    /// Addresses counted per route.
    by_route: HashMap<Option<Cidr>, usize>,
}

impl SourceCap {
    /// Whether `route`'s sources are capped: prefix routes and the default
    /// (`None`); a host route (/32, /128: one container) has one address.
    pub fn applies(route: Option<Cidr>) -> bool {
        route.is_none_or(|c| c.len() < if c.is_ipv4() { 32 } else { 128 })
    }

    /// A holder takes `ip` (matched by `route`). A host route is not capped
    /// (and takes no lock).
    pub fn admit(&self, ip: IpAddr, route: Option<Cidr>, max: usize) -> Cap {
        if !Self::applies(route) {
            return Cap::Uncapped;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        if let Some((_, holders)) = inner.by_addr.get_mut(&ip) {
            *holders += 1;
            return Cap::Counted;
        }
        let n = inner.by_route.entry(route).or_insert(0);
        if *n >= max {
            if *n == 0 {
                inner.by_route.remove(&route);
            }
            return Cap::Full;
        }
        *n += 1;
        inner.by_addr.insert(ip, (route, 1));
        Cap::Counted
    }

    /// A holder whose [`admit`](Self::admit) said [`Cap::Counted`] lets
    /// `ip` go.
    pub fn release(&self, ip: IpAddr) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        let Some((counted, holders)) = inner.by_addr.get_mut(&ip) else { return };
        *holders = holders.saturating_sub(1);
        if *holders > 0 {
            return;
        }
        let counted = *counted;
        inner.by_addr.remove(&ip);
        if let Some(n) = inner.by_route.get_mut(&counted) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.by_route.remove(&counted);
            }
        }
    }

    /// Addresses counted under `route` now.
    pub fn sources(&self, route: Option<Cidr>) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.by_route.get(&route).copied().unwrap_or(0)
    }
}

/// What every worker shares: made once at start (the open-file limit is
/// known then) and handed to each.
#[derive(Debug)]
pub struct SharedLimits {
    pub fds: FdShare,
    pub cap: SourceCap,
}

impl SharedLimits {
    pub fn new(fd_limit: u64) -> SharedLimits {
        SharedLimits { fds: FdShare::new(fd_limit), cap: SourceCap::default() }
    }
}

impl Default for SharedLimits {
    /// No known limit: the share never refuses (tests, and a process whose
    /// limit could not be read).
    fn default() -> Self {
        SharedLimits::new(u64::MAX)
    }
}

struct Entry {
    flows: u32,
    bucket: Bucket,
    /// Counted by the source cap (see [`SourceCap`]): released when forgotten.
    counted: bool,
}

/// One worker's TCP sources: flows open and the bucket of each, kept while
/// it has flows and, idle, until its bucket is full again (at most
/// [`IDLE_MAX`] idle ones).
pub struct TcpSources {
    entries: HashMap<IpAddr, Entry, FoldState>,
    /// Sources without flows, by when their last flow ended, oldest first.
    idle: Lru<IpAddr, Instant>,
}

impl Default for TcpSources {
    fn default() -> Self {
        TcpSources { entries: HashMap::with_hasher(FoldState::new()), idle: Lru::new() }
    }
}

impl TcpSources {
    /// A new flow from `ip` (routed by `route`) at `now`: counted and its
    /// descriptors taken, or refused (and nothing taken).
    pub fn open(
        &mut self,
        ip: IpAddr,
        route: Option<Cidr>,
        lim: &TcpLimits,
        shared: &SharedLimits,
        now: Instant,
    ) -> Result<(), Refused> {
        self.forget_idle(lim, shared, now);
        let flows = self.entries.get(&ip).map_or(0, |e| e.flows);
        if flows >= lim.max_flows {
            return Err(Refused::Flows);
        }
        let mine = flows as usize * FDS_PER_FLOW;
        if !shared.fds.take(mine, FDS_PER_FLOW, lim.fd_share) {
            return Err(Refused::FdShare);
        }
        match self.entries.get_mut(&ip) {
            Some(e) => {
                if !e.bucket.take(lim.rate, lim.burst, now) {
                    shared.fds.put(FDS_PER_FLOW);
                    return Err(Refused::Rate);
                }
                e.flows += 1;
                if e.flows == 1 {
                    self.idle.remove(&ip);
                }
            }
            None => {
                let counted = match shared.cap.admit(ip, route, lim.max_sources) {
                    Cap::Counted => true,
                    Cap::Uncapped => false,
                    Cap::Full => {
                        shared.fds.put(FDS_PER_FLOW);
                        return Err(Refused::SourceCap);
                    }
                };
                let bucket = Bucket::new_spent(lim.burst, now);
                self.entries.insert(ip, Entry { flows: 1, bucket, counted });
            }
        }
        Ok(())
    }

    /// A flow of `ip` that [`open`](Self::open) counted has ended.
    pub fn close(&mut self, ip: IpAddr, lim: &TcpLimits, shared: &SharedLimits, now: Instant) {
        let Some(e) = self.entries.get_mut(&ip) else { return };
        if e.flows == 0 {
            return;
        }
        shared.fds.put(FDS_PER_FLOW);
        e.flows -= 1;
        if e.flows == 0 {
            self.idle.insert(ip, now);
            self.forget_idle(lim, shared, now);
        }
    }

    /// The sources whose new-flow bucket is not full at `now`, and the
    /// thousandths of a token each holds (for an upgrade's new process).
    pub fn levels(&mut self, lim: &TcpLimits, now: Instant) -> Vec<(IpAddr, u64)> {
        let full = u64::from(lim.burst) * 1000;
        let mut out = Vec::new();
        for (ip, e) in &mut self.entries {
            let l = e.bucket.level(lim.rate, lim.burst, now);
            if l < full {
                out.push((*ip, l));
            }
        }
        out
    }

    /// `ip`'s bucket holds no more than `milli` (its level in the process
    /// this one took over from). An unknown source is kept as idle, in the
    /// source cap of `route` like any other (not kept when that is full).
    pub fn adopt(
        &mut self,
        (ip, milli): (IpAddr, u64),
        route: Option<Cidr>,
        lim: &TcpLimits,
        shared: &SharedLimits,
        now: Instant,
    ) {
        if let Some(e) = self.entries.get_mut(&ip) {
            e.bucket.lower_to(milli);
            return;
        }
        let counted = match shared.cap.admit(ip, route, lim.max_sources) {
            Cap::Counted => true,
            Cap::Uncapped => false,
            Cap::Full => return,
        };
        let bucket = Bucket::with_level(milli, lim.burst, now);
        self.entries.insert(ip, Entry { flows: 0, bucket, counted });
        self.idle.insert(ip, now);
        self.forget_idle(lim, shared, now);
    }

    /// Flows `ip` has open in this worker.
    #[cfg(test)]
    fn flows_of(&self, ip: &IpAddr) -> u32 {
        self.entries.get(ip).map_or(0, |e| e.flows)
    }

    /// Sources remembered (with flows, or idle).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets idle sources whose bucket is full again, and the oldest idle
    /// ones past [`IDLE_MAX`].
    fn forget_idle(&mut self, lim: &TcpLimits, shared: &SharedLimits, now: Instant) {
        let refill = lim.refill();
        while let Some((&ip, &since)) = self.idle.peek_oldest() {
            if self.idle.len() <= IDLE_MAX && now.saturating_duration_since(since) < refill {
                return;
            }
            self.idle.remove(&ip);
            if self.entries.remove(&ip).is_some_and(|e| e.counted) {
                shared.cap.release(ip);
            }
        }
    }
}

/// The UDP side of one worker as a holder of the source cap: the sources
/// its sessions had counted. A source is admitted when it opens its first
/// session ([`first`](Self::first)) and let go when its last one ends
/// ([`gone`](Self::gone)); both are no-ops when repeated.
#[derive(Default)]
pub struct UdpCapHolds {
    counted: std::collections::HashSet<IpAddr, FoldState>,
}

impl UdpCapHolds {
    /// `ip`, holding no session, opens one: false when its route (`route`)
    /// already has `max` other sources (the caller drops the datagram).
    pub fn first(&mut self, cap: &SourceCap, ip: IpAddr, route: Option<Cidr>, max: usize) -> bool {
        if self.counted.contains(&ip) {
            return true;
        }
        match cap.admit(ip, route, max) {
            Cap::Counted => {
                self.counted.insert(ip);
                true
            }
            Cap::Uncapped => true,
            Cap::Full => false,
        }
    }

    /// `ip` holds no session any more (or its first never opened).
    pub fn gone(&mut self, cap: &SourceCap, ip: IpAddr) {
        if self.counted.remove(&ip) {
            cap.release(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(max_flows: u32, rate: u32, burst: u32, max_sources: usize) -> TcpLimits {
        TcpLimits { max_flows, rate, burst, fd_share: true, max_sources }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Option<Cidr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_fair_share_leaves_a_newcomer_as_much_as_each_flooder() {
        // Alone: half the budget.
        assert!(fits(1000, 498, 498, 2));
        assert!(!fits(1000, 500, 500, 2));
        // A newcomer next to a source holding half: up to a quarter more.
        assert!(fits(1000, 500, 0, 250));
        assert!(!fits(1000, 500, 0, 252));
        // k flooders, each taking 2 at a time in turn, settle at about
        // budget / (k + 1) each and leave as much free.
        for k in [1usize, 2, 3, 9] {
            let budget = 10_000;
            let mut held = vec![0usize; k];
            loop {
                let mut moved = false;
                for i in 0..k {
                    let total: usize = held.iter().sum();
                    if fits(budget, total, held[i], 2) {
                        held[i] += 2;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
            let total: usize = held.iter().sum();
            let free = budget - total;
            let share = budget / (k + 1);
            assert!(free + 2 * k >= share, "k={k}: {free} free, want about {share}");
            assert!(held.iter().all(|&h| h.abs_diff(share) <= 2 * k + 2), "k={k}: {held:?} vs {share}");
            // The newcomer gets in.
            assert!(fits(budget, total, 0, 2), "k={k}");
        }
    }

    #[test]
    fn the_budget_keeps_a_reserve() {
        assert_eq!(FdShare::new(2000).budget(), 2000 - 256);
        assert_eq!(FdShare::new(20_000).budget(), 20_000 - 2500);
        assert_eq!(FdShare::new(1_048_576).budget(), 1_048_576 - 131_072);
        assert_eq!(FdShare::new(100).budget(), 50, "a tiny limit: half of it");
        let f = FdShare::new(2000);
        // One source alone: (2000 - 256) / 2 = 872 descriptors, 436 flows.
        let mut flows = 0;
        while f.take(flows * 2, 2, true) {
            flows += 1;
        }
        assert_eq!(flows, 436);
        assert_eq!(f.held(), 872);
        // With the share off, the same source takes the whole budget and more.
        assert!(f.take(flows * 2, 2, false));
        f.put(2);
        f.put(872);
        assert_eq!(f.held(), 0);
        f.put(2);
        assert_eq!(f.held(), 0, "never below zero");
    }

    #[test]
    fn flows_per_source_and_rate_are_per_address() {
        let shared = SharedLimits::default();
        let mut t = TcpSources::default();
        let l = lim(3, 10, 5, 100);
        let now = Instant::now();
        let a = ip("10.8.0.10");
        let b = ip("10.8.0.11");
        for _ in 0..3 {
            assert_eq!(t.open(a, cidr("10.8.0.10/32"), &l, &shared, now), Ok(()));
        }
        assert_eq!(t.open(a, cidr("10.8.0.10/32"), &l, &shared, now), Err(Refused::Flows));
        assert_eq!(t.open(b, cidr("10.8.0.11/32"), &l, &shared, now), Ok(()));
        assert_eq!(shared.fds.held(), 8);
        // The burst (5) is spent by a's 3 and two more after closing.
        t.close(a, &l, &shared, now);
        t.close(a, &l, &shared, now);
        assert_eq!(t.open(a, None, &l, &shared, now), Ok(()));
        assert_eq!(t.open(a, None, &l, &shared, now), Ok(()));
        t.close(a, &l, &shared, now);
        assert_eq!(t.open(a, None, &l, &shared, now), Err(Refused::Rate), "burst of 5 spent");
        assert_eq!(shared.fds.held(), 6, "a refused flow holds nothing");
        // 10/s: one token every 100 ms.
        assert_eq!(t.open(a, None, &l, &shared, now + Duration::from_millis(100)), Ok(()));
        assert_eq!(t.flows_of(&a), 3);
        assert_eq!(t.flows_of(&b), 1);
    }

    #[test]
    fn a_source_that_fails_fast_still_meets_its_rate() {
        let shared = SharedLimits::default();
        let mut t = TcpSources::default();
        let l = lim(100, 10, 4, 100);
        let a = ip("10.8.0.10");
        let t0 = Instant::now();
        // Every flow ends at once (an exit that resets): the bucket stays.
        let mut opened = 0;
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(i * 10); // 100 a second for 1 s
            if t.open(a, None, &l, &shared, now).is_ok() {
                opened += 1;
                t.close(a, &l, &shared, now);
            }
        }
        assert!((4..=4 + 10 + 1).contains(&opened), "burst 4 + 10/s over 1 s, got {opened}");
        assert_eq!(t.len(), 1, "remembered while idle");
        // Idle past the refill time (burst / rate = 0.4 s): forgotten.
        t.open(ip("10.8.0.11"), None, &l, &shared, t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.flows_of(&a), 0);
    }

    #[test]
    fn a_bucket_handed_over_gives_no_fresh_burst() {
        let (l, shared) = (lim(10, 1, 3, 100), SharedLimits::default());
        let t0 = Instant::now();
        let mut old = TcpSources::default();
        for _ in 0..3 {
            let r = old.open(ip("10.8.0.10"), None, &l, &shared, t0);
            assert!(r.is_ok(), "{r:?}");
        }
        assert_eq!(old.open(ip("10.8.0.10"), None, &l, &shared, t0), Err(Refused::Rate));
        // A source with a full bucket is not worth handing over.
        assert!(old.open(ip("10.8.0.11"), None, &l, &shared, t0 - Duration::from_secs(10)).is_ok());
        let levels = old.levels(&l, t0);
        assert_eq!(levels, vec![(ip("10.8.0.10"), 0)]);
        let (mut new, shared2) = (TcpSources::default(), SharedLimits::default());
        // One flow slipped in before the levels came: the lower level wins.
        assert!(new.open(ip("10.8.0.10"), None, &l, &shared2, t0).is_ok());
        for lv in levels {
            new.adopt(lv, None, &l, &shared2, t0);
        }
        assert_eq!(new.open(ip("10.8.0.10"), None, &l, &shared2, t0), Err(Refused::Rate));
        assert!(
            new.open(ip("10.8.0.10"), None, &l, &shared2, t0 + Duration::from_secs(1)).is_ok(),
            "refills on"
        );
        // An unknown source is adopted idle, in its route's cap.
        let capped = lim(10, 1, 3, 1);
        let c = cidr("10.8.0.0/24");
        let mut other = TcpSources::default();
        other.adopt((ip("10.8.0.20"), 0), c, &capped, &shared2, t0);
        assert_eq!(shared2.cap.sources(c), 1);
        assert_eq!(other.open(ip("10.8.0.20"), c, &capped, &shared2, t0), Err(Refused::Rate));
        // The cap full: not kept (a newcomer would be refused anyway).
        other.adopt((ip("10.8.0.21"), 0), c, &capped, &shared2, t0);
        assert_eq!(other.len(), 1);
    }

    #[test]
    fn idle_sources_are_bounded() {
        let shared = SharedLimits::default();
        let mut t = TcpSources::default();
        // A slow refill: idle entries stay for their bucket.
        let l = lim(10, 1, 1000, usize::MAX);
        let now = Instant::now();
        for i in 0..(IDLE_MAX as u32 + 100) {
            let a = IpAddr::from(std::net::Ipv6Addr::from(0xfd08_u128 << 112 | u128::from(i)));
            t.open(a, None, &l, &shared, now).unwrap();
            t.close(a, &l, &shared, now);
        }
        assert_eq!(t.len(), IDLE_MAX);
        assert_eq!(shared.cap.sources(None), IDLE_MAX, "forgotten ones gave their cap slot back");
        assert_eq!(shared.fds.held(), 0);
    }

    #[test]
    fn the_cap_counts_distinct_sources_per_prefix_route() {
        let shared = SharedLimits::default();
        let mut t = TcpSources::default();
        let l = lim(10, 1000, 10, 2);
        let now = Instant::now();
        let net = cidr("10.8.0.0/24");
        assert_eq!(t.open(ip("10.8.0.10"), net, &l, &shared, now), Ok(()));
        assert_eq!(t.open(ip("10.8.0.11"), net, &l, &shared, now), Ok(()));
        assert_eq!(t.open(ip("10.8.0.10"), net, &l, &shared, now), Ok(()), "a counted source is not new");
        assert_eq!(t.open(ip("10.8.0.12"), net, &l, &shared, now), Err(Refused::SourceCap));
        assert_eq!(shared.fds.held(), 6);
        // Another prefix, the default route: counted apart; host routes never.
        assert_eq!(t.open(ip("10.9.0.1"), cidr("10.9.0.0/16"), &l, &shared, now), Ok(()));
        assert_eq!(t.open(ip("10.7.0.1"), None, &l, &shared, now), Ok(()));
        assert_eq!(t.open(ip("10.7.0.2"), None, &l, &shared, now), Ok(()));
        assert_eq!(t.open(ip("10.7.0.3"), None, &l, &shared, now), Err(Refused::SourceCap));
        for i in 20..30 {
            let a = ip(&format!("10.8.0.{i}"));
            assert_eq!(t.open(a, cidr(&format!("10.8.0.{i}/32")), &l, &shared, now), Ok(()));
        }
        // The same address held by another holder (UDP, another worker) counts once.
        let mut udp = UdpCapHolds::default();
        assert!(udp.first(&shared.cap, ip("10.8.0.11"), net, 2));
        assert!(udp.first(&shared.cap, ip("10.8.0.11"), net, 2), "again: still one hold");
        assert!(!udp.first(&shared.cap, ip("10.8.0.13"), net, 2));
        assert!(udp.first(&shared.cap, ip("10.8.0.13"), cidr("10.8.0.13/32"), 2), "a host route");
        udp.gone(&shared.cap, ip("10.8.0.13"));
        assert_eq!(shared.cap.sources(net), 2);
        // .11's TCP flow ends and is forgotten (bucket refilled): UDP still holds it.
        t.close(ip("10.8.0.11"), &l, &shared, now);
        let later = now + Duration::from_secs(1);
        t.open(ip("10.8.0.10"), net, &l, &shared, later).unwrap();
        assert_eq!(t.flows_of(&ip("10.8.0.11")), 0);
        assert_eq!(shared.cap.sources(net), 2);
        assert_eq!(t.open(ip("10.8.0.12"), net, &l, &shared, later), Err(Refused::SourceCap));
        udp.gone(&shared.cap, ip("10.8.0.11"));
        udp.gone(&shared.cap, ip("10.8.0.11"));
        assert_eq!(shared.cap.sources(net), 1);
        assert_eq!(t.open(ip("10.8.0.12"), net, &l, &shared, later), Ok(()));
        assert!(SourceCap::applies(cidr("fd08::/64")));
        assert!(!SourceCap::applies(cidr("fd08::10/128")));
        assert!(SourceCap::applies(None));
    }
}
