//! One tunnel's warm pool as a sans-IO state machine: connections are
//! opaque values, time is passed in. The worker does the IO (connects,
//! greets, peeks at idle connections) and tells the pool what came of it.
//!
//! ```text
//!  claim_refills ──► (worker connects + greets) ──► refilled ──► ready ──take──► a flow's request
//!        ▲                     └─ error/timeout ─► refill_failed (backoff)     │
//!        └────────── the pool is short: target − ready − pending ◄─────────────┘
//!  take within BURST of a burst's first ──► target = the largest burst (≤ learn_max),
//!        worn down by a quarter per FORGET_EVERY while bursts stay smaller
//!  ready ──older than refresh_after──► expire (closed, refilled)
//!  ready ──found closed by the server──► learn its idle limit; under MIN_USEFUL: disabled
//!  no flow took or asked for one for `warm_idle` ──► drained, no refills until the next use
//! ```
//!
//! A pool that nothing is due in (idle, disabled, or refills under way)
//! says so through [`Pool::next_due`], so workers need not look at it: a
//! thousand unused tunnels cost no wake-up and hold no connection.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Refresh pooled connections after this long until the server's idle
/// limit is known (a little under the 30 s negotiate timeout danted has
/// by default).
pub const REFRESH_DEFAULT: Duration = Duration::from_secs(25);
/// A server that closes idle greeted connections sooner than this makes
/// pooling pointless (a refill every few seconds per pooled connection):
/// the pool stops until the next reload.
pub const MIN_USEFUL: Duration = Duration::from_secs(3);
/// Idle connections are looked at (one peek each) at most this often.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Takes (hits and misses) within this long count as one burst, whose size
/// the pool learns (see [`Pool::used`]).
pub const BURST: Duration = Duration::from_secs(1);
/// A learned burst not seen again wears down by a quarter at most this often.
pub const FORGET_EVERY: Duration = Duration::from_secs(30);
/// Short-lived pooled connections in a row that disable the pool.
pub const SHORT_DEATHS: u32 = 3;
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What a look at an idle pooled connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Closed by the server (EOF or reset), or it sent bytes out of turn.
    Dead,
}

/// Why a flow got no pooled connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Every pooled connection is in use or still being made.
    Empty,
    /// This source already holds its share of the pool until refills come back.
    FairShare,
    /// The server closes idle connections too soon for a pool to help.
    Disabled,
}

/// What changed in a call, for the caller's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// Pooled connections closed unused: found dead, refreshed, or drained.
    pub discards: u64,
    /// Pooling was stopped for this server (at most once per pool).
    pub disabled: u64,
}

struct Idle<C> {
    conn: C,
    born: Instant,
    /// Refreshed at `refresh_after` less this many eighths of a quarter of
    /// it, so that connections made together are not all replaced at once.
    stagger: u8,
    /// When it was last seen alive.
    seen: Instant,
}

pub struct Pool<C> {
    size: usize,
    ready: Vec<Idle<C>>,
    /// Refills claimed by a worker and not yet come back.
    pending: usize,
    /// Sources whose hits are not refilled yet, oldest first (≤ size).
    debts: VecDeque<IpAddr>,
    refresh_after: Duration,
    /// The server's idle limit as learned (the longest age seen alive
    /// before a pooled connection was found closed).
    idle_limit: Option<Duration>,
    disabled: bool,
    /// Pooled connections in a row found closed younger than MIN_USEFUL.
    short_deaths: u32,
    failures: u32,
    retry_at: Option<Instant>,
    last_check: Option<Instant>,
    /// Refills so far (for the stagger).
    refills: u64,
    /// Drained after this long without use (`None`: never).
    idle_after: Option<Duration>,
    /// When a flow last took (or asked for) a pooled connection, or the
    /// pool was made.
    last_use: Option<Instant>,
    /// The caller hears of a closed idle connection as an event
    /// ([`look`](Self::look)) instead of looking every CHECK_EVERY: the pool
    /// is due only when a connection's refresh age comes.
    events: bool,
    /// The largest burst of takes learned (decaying, at most `learn_max`),
    /// and the current burst: when it started and how many takes it had.
    learned: usize,
    learn_max: usize,
    /// When a burst last reached `learned` (or it last wore down).
    peak_at: Option<Instant>,
    burst_start: Option<Instant>,
    burst_takes: usize,
}

impl<C> Pool<C> {
    pub fn new(size: usize) -> Self {
        Pool {
            size,
            ready: Vec::with_capacity(size),
            pending: 0,
            debts: VecDeque::with_capacity(size),
            refresh_after: REFRESH_DEFAULT,
            idle_limit: None,
            disabled: false,
            short_deaths: 0,
            failures: 0,
            retry_at: None,
            last_check: None,
            refills: 0,
            idle_after: None,
            last_use: None,
            events: false,
            learned: 0,
            learn_max: size,
            peak_at: None,
            burst_start: None,
            burst_takes: 0,
        }
    }

    /// The pool grows past its size, up to `max`, to what bursts of takes
    /// taught it (see [`used`](Self::used)); without it the size is fixed.
    pub fn with_learning(mut self, max: usize) -> Self {
        self.learn_max = max.max(self.size);
        self
    }

    /// Idle connections are watched for events (see [`look`](Self::look)).
    pub fn with_events(mut self) -> Self {
        self.events = true;
        self
    }

    /// Drains the pool after `after` without use, counted from `now`.
    pub fn with_idle(mut self, after: Option<Duration>, now: Instant) -> Self {
        self.set_idle(after, now);
        self
    }

    /// [`with_idle`](Self::with_idle) on a pool in place (a reload).
    pub fn set_idle(&mut self, after: Option<Duration>, now: Instant) {
        self.idle_after = after;
        self.last_use = Some(now);
    }

    /// A flow took or asked for a pooled connection: the pool is in use
    /// (warmed again if it had gone idle), and the take counts towards the
    /// current burst (the takes within BURST of its first). The pool grows
    /// to the largest burst it has seen (up to its `learn_max`), so that the
    /// next burst of a container that opens many connections at once finds
    /// them ready. While bursts stay smaller, what was learned wears down by
    /// a quarter every FORGET_EVERY, never on time alone: a pool nothing
    /// uses keeps its size until it goes cold (`idle_after`), and the first
    /// take of a later burst finds what the last one taught.
    pub fn used(&mut self, now: Instant) {
        self.last_use = Some(now);
        if self.size == 0 || self.learn_max == self.size {
            return;
        }
        if self.burst_start.is_none_or(|t| now.saturating_duration_since(t) >= BURST) {
            if self.learned > self.size
                && self.peak_at.is_some_and(|t| now.saturating_duration_since(t) >= FORGET_EVERY)
            {
                self.learned -= self.learned.div_ceil(4);
                self.peak_at = Some(now);
            }
            self.burst_start = Some(now);
            self.burst_takes = 0;
        }
        self.burst_takes += 1;
        if self.burst_takes >= self.learned {
            self.learned = self.burst_takes.min(self.learn_max);
            self.peak_at = Some(now);
        }
    }

    /// How many ready connections the pool aims at now: its configured size,
    /// or more while it has learned larger bursts (none when disabled).
    pub fn target(&self) -> usize {
        if self.size == 0 { 0 } else { self.size.max(self.learned) }
    }

    /// Unused for `idle_after`: no refills, and what is ready is closed.
    pub fn is_idle(&self, now: Instant) -> bool {
        match (self.idle_after, self.last_use) {
            (Some(after), Some(used)) => now.saturating_duration_since(used) >= after,
            _ => false,
        }
    }

    /// When a worker should next look at this pool (`tick`): to look at the
    /// ready connections, to refill it, or to drain it gone idle; `None`
    /// while nothing will be due without a use or a refill coming back.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.disabled || self.size == 0 {
            return None;
        }
        if self.is_idle(now) {
            return (!self.ready.is_empty()).then_some(now);
        }
        let look = if self.events {
            self.ready.iter().map(|i| self.refresh_at(i)).min()
        } else {
            (!self.ready.is_empty()).then(|| self.last_check.map_or(now, |t| t + CHECK_EVERY))
        };
        // As `claim_refills` will see it: short of the size, and after a
        // failure only once the attempt under way has come back.
        let short =
            self.ready.len() + self.pending < self.target() && (self.failures == 0 || self.pending == 0);
        let refill = short.then(|| self.retry_at.map_or(now, |t| t.max(now)));
        match (look, refill) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The most the pool may learn to hold (its size when it does not learn).
    pub fn learn_max(&self) -> usize {
        self.learn_max
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// The server's idle limit, once a pooled connection was seen closed.
    pub fn idle_limit(&self) -> Option<Duration> {
        self.idle_limit
    }

    /// How many pooled connections one source may hold before refills come
    /// back: half of the configured size, and whatever bursts taught the
    /// pool beyond it (a container's own burst is served by what it taught).
    fn share(&self) -> usize {
        self.size.div_ceil(2).max(1) + (self.target() - self.size)
    }

    /// A pooled connection for a new flow from `source`: the newest one that
    /// `alive` passes (dead ones are dropped and teach the idle limit).
    pub fn take(
        &mut self,
        source: IpAddr,
        mut alive: impl FnMut(&C) -> Liveness,
    ) -> (Result<C, Miss>, Events) {
        let mut ev = Events::default();
        if self.disabled {
            return (Err(Miss::Disabled), ev);
        }
        if self.debts.iter().filter(|s| **s == source).count() >= self.share() {
            return (Err(Miss::FairShare), ev);
        }
        while let Some(idle) = self.ready.pop() {
            match alive(&idle.conn) {
                Liveness::Alive => {
                    self.debts.push_back(source);
                    if self.debts.len() > self.target() {
                        self.debts.pop_front();
                    }
                    return (Ok(idle.conn), ev);
                }
                Liveness::Dead => self.found_dead(&idle, &mut ev),
            }
        }
        (Err(Miss::Empty), ev)
    }

    /// How many refills the caller should start now; they count as pending
    /// until [`refilled`](Self::refilled) or [`refill_failed`](Self::refill_failed).
    pub fn claim_refills(&mut self, now: Instant) -> usize {
        if self.disabled || self.is_idle(now) || self.retry_at.is_some_and(|t| now < t) {
            return 0;
        }
        let mut n = self.target().saturating_sub(self.ready.len() + self.pending);
        if self.failures > 0 {
            // A server that failed: one attempt at a time until one works.
            n = n.min(1).saturating_sub(self.pending);
        }
        self.pending += n;
        n
    }

    /// A refill came back greeted. The connection is returned when the pool
    /// has no room for it any more (drained, disabled or shrunk meanwhile).
    pub fn refilled(&mut self, now: Instant, conn: C) -> Option<C> {
        self.pending = self.pending.saturating_sub(1);
        self.failures = 0;
        self.retry_at = None;
        self.debts.pop_front();
        if self.disabled || self.ready.len() >= self.target() {
            return Some(conn);
        }
        let stagger = (self.refills % 8) as u8;
        self.refills = self.refills.wrapping_add(1);
        self.ready.push(Idle { conn, born: now, stagger, seen: now });
        None
    }

    /// A refill failed (connect, greeting or auth): back off, doubling.
    pub fn refill_failed(&mut self, now: Instant) {
        self.pending = self.pending.saturating_sub(1);
        self.debts.pop_front();
        self.failures = self.failures.saturating_add(1);
        let wait = BACKOFF_FIRST.saturating_mul(1 << self.failures.min(8)).min(BACKOFF_MAX);
        self.retry_at = Some(now + wait);
    }

    /// Whether the idle connections are due for a look (and marks it done).
    pub fn check_due(&mut self, now: Instant) -> bool {
        if self.ready.is_empty() {
            return false;
        }
        if self.is_idle(now) {
            return true;
        }
        if self.events {
            return self.ready.iter().any(|i| self.refresh_at(i) <= now);
        }
        if self.last_check.is_some_and(|t| now.duration_since(t) < CHECK_EVERY) {
            return false;
        }
        self.last_check = Some(now);
        true
    }

    /// Looks at every idle connection: dead ones are dropped (teaching the
    /// idle limit), and those older than the refresh age are closed so that
    /// fresh ones replace them before the server's limit.
    pub fn check(&mut self, now: Instant, mut alive: impl FnMut(&C) -> Liveness) -> Events {
        if self.is_idle(now) {
            return self.drain();
        }
        let mut ev = Events::default();
        let mut i = 0;
        while i < self.ready.len() {
            let idle = &mut self.ready[i];
            if alive(&idle.conn) == Liveness::Dead {
                let idle = self.ready.swap_remove(i);
                self.found_dead(&idle, &mut ev);
                continue;
            }
            idle.seen = now;
            if now >= refresh_time(self.refresh_after, idle) {
                self.ready.swap_remove(i);
                ev.discards += 1;
                continue;
            }
            i += 1;
        }
        ev
    }

    /// When an idle connection is to be replaced: at the refresh age, less
    /// its stagger (so that connections made together go one by one).
    fn refresh_at(&self, idle: &Idle<C>) -> Instant {
        refresh_time(self.refresh_after, idle)
    }

    /// An event on the idle connection `pick` chooses: looked at once
    /// (`alive`), and dropped when closed or talking out of turn (teaching
    /// the idle limit: it was alive until now). Nothing when it was taken
    /// meanwhile.
    pub fn look(
        &mut self,
        now: Instant,
        pick: impl Fn(&C) -> bool,
        alive: impl FnOnce(&C) -> Liveness,
    ) -> Events {
        let mut ev = Events::default();
        let Some(at) = self.ready.iter().position(|i| pick(&i.conn)) else { return ev };
        if alive(&self.ready[at].conn) == Liveness::Alive {
            return ev;
        }
        let mut idle = self.ready.swap_remove(at);
        idle.seen = now;
        self.found_dead(&idle, &mut ev);
        ev
    }

    /// Closes every idle connection (reload, shutdown); refills start over.
    pub fn drain(&mut self) -> Events {
        let n = self.ready.len() as u64;
        self.ready.clear();
        self.debts.clear();
        Events { discards: n, disabled: 0 }
    }

    fn found_dead(&mut self, idle: &Idle<C>, ev: &mut Events) {
        ev.discards += 1;
        // It lived at least this long: the server's limit is no shorter.
        let lived = idle.seen.duration_since(idle.born);
        if lived >= MIN_USEFUL {
            self.short_deaths = 0;
            self.idle_limit = Some(lived);
            // Refresh well before the limit (a quarter early, and at least 1 s).
            self.refresh_after = (lived * 3 / 4).min(lived.saturating_sub(Duration::from_secs(1)));
            return;
        }
        // One short life may be a server restart; several in a row are its policy.
        self.short_deaths += 1;
        if self.short_deaths >= SHORT_DEATHS && !self.disabled {
            self.idle_limit = Some(lived);
            self.disabled = true;
            ev.disabled = 1;
            ev.discards += self.ready.len() as u64;
            self.ready.clear();
        }
    }
}

/// When `idle` is to be replaced, refreshing after `after`: less a stagger
/// of up to a quarter of it.
fn refresh_time<C>(after: Duration, idle: &Idle<C>) -> Instant {
    idle.born + after - after / 4 * u32::from(idle.stagger) / 8
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 8, 0, 10));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 8, 0, 11));

    fn live(_: &u32) -> Liveness {
        Liveness::Alive
    }

    /// Fills the pool to its size with connections 1, 2, …
    fn filled(size: usize, now: Instant) -> Pool<u32> {
        let mut p = Pool::new(size);
        assert_eq!(p.claim_refills(now), size);
        for c in 1..=size as u32 {
            assert_eq!(p.refilled(now, c), None);
        }
        p
    }

    #[test]
    fn refill_never_exceeds_the_size() {
        let t = Instant::now();
        let mut p = Pool::new(3);
        assert_eq!(p.claim_refills(t), 3);
        assert_eq!(p.claim_refills(t), 0, "pending refills count against the size");
        for c in 0..3 {
            assert_eq!(p.refilled(t, c), None);
        }
        assert_eq!((p.ready(), p.pending()), (3, 0));
        // A stray refill beyond the size is handed back to be closed.
        assert_eq!(p.refilled(t, 9), Some(9));
        assert_eq!(p.ready(), 3);
        let (c, _) = p.take(A, live);
        assert_eq!(c, Ok(2), "the newest connection is taken first");
        assert_eq!(p.claim_refills(t), 1);
        assert_eq!(p.claim_refills(t), 0);
    }

    #[test]
    fn empty_pool_misses_and_size_zero_never_refills() {
        let t = Instant::now();
        let mut p: Pool<u32> = Pool::new(0);
        assert_eq!(p.claim_refills(t), 0);
        assert_eq!(p.take(A, live).0, Err(Miss::Empty));
        let mut p = filled(1, t);
        assert_eq!(p.take(A, live).0, Ok(1));
        assert_eq!(p.take(B, live).0, Err(Miss::Empty));
    }

    #[test]
    fn one_source_gets_its_share_and_leaves_the_rest() {
        let t = Instant::now();
        let mut p = filled(4, t);
        assert!(p.take(A, live).0.is_ok());
        assert!(p.take(A, live).0.is_ok());
        assert_eq!(p.take(A, live).0, Err(Miss::FairShare), "A's share of 4 is 2");
        assert!(p.take(B, live).0.is_ok(), "B still finds one");
        // Refills pay the oldest debt first: A may take again.
        assert_eq!(p.claim_refills(t), 3);
        assert_eq!(p.refilled(t, 10), None);
        assert!(p.take(A, live).0.is_ok());
        // A pool of one: every source may hold it.
        let mut p = filled(1, t);
        assert!(p.take(A, live).0.is_ok());
    }

    #[test]
    fn dead_connections_are_skipped_and_teach_the_idle_limit() {
        let t0 = Instant::now();
        let mut p = filled(2, t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(p.check(t1, live), Events::default());
        // Connection 2 is closed by the server; 1 is fine.
        let t2 = t0 + Duration::from_secs(11);
        let (c, ev) = p.take(A, |c| if *c == 2 { Liveness::Dead } else { Liveness::Alive });
        assert_eq!(c, Ok(1));
        assert_eq!(ev, Events { discards: 1, disabled: 0 });
        assert_eq!(p.idle_limit(), Some(Duration::from_secs(10)));
        // Refreshed a quarter before the limit from now on.
        assert_eq!(p.claim_refills(t2), 2);
        p.refilled(t2, 3);
        // The pool's third refill: refreshed 2/8 of a quarter early (7.03 s).
        let ev = p.check(t2 + Duration::from_millis(7000), live);
        assert_eq!(ev.discards, 0);
        let ev = p.check(t2 + Duration::from_millis(7100), live);
        assert_eq!(ev.discards, 1, "older than 7.03 s: closed and refilled");
        assert_eq!(p.ready(), 0);
    }

    #[test]
    fn connections_made_together_are_not_refreshed_together() {
        let t0 = Instant::now();
        let mut p = filled(8, t0);
        assert_eq!(
            p.check(t0 + Duration::from_millis(18_700), live).discards,
            0,
            "none before 3/4 of the age"
        );
        assert_eq!(p.check(t0 + Duration::from_secs(22), live).discards, 4, "half by 22 s");
        assert_eq!(p.check(t0 + REFRESH_DEFAULT, live).discards, 4, "the rest at 25 s");
    }

    #[test]
    fn a_server_closing_idle_connections_quickly_disables_the_pool() {
        let t0 = Instant::now();
        let mut p = filled(3, t0);
        let t1 = t0 + Duration::from_secs(1);
        p.check(t1, live);
        // Two short lives may be a restart: the pool keeps going.
        let ev =
            p.check(
                t1 + Duration::from_millis(300),
                |c| if *c == 3 { Liveness::Alive } else { Liveness::Dead },
            );
        assert_eq!(ev, Events { discards: 2, disabled: 0 });
        assert!(!p.is_disabled());
        let ev = p.check(t1 + Duration::from_millis(600), |_| Liveness::Dead);
        assert_eq!(ev, Events { discards: 1, disabled: 1 }, "the third in a row disables it");
        assert!(p.is_disabled());
        assert_eq!(p.idle_limit(), Some(Duration::from_millis(1300)));
        assert_eq!(p.claim_refills(t1 + Duration::from_secs(5)), 0);
        assert_eq!(p.take(A, live).0, Err(Miss::Disabled));
        // A refill that was under way when it was disabled is handed back.
        let mut p = filled(4, t0);
        p.take(A, live).0.unwrap();
        assert_eq!(p.claim_refills(t0), 1);
        let ev = p.check(t1, |_| Liveness::Dead);
        assert_eq!(ev, Events { discards: 3, disabled: 1 });
        assert_eq!(p.refilled(t1, 7), Some(7));
        // A long life in between resets the count.
        let mut p = filled(3, t0);
        p.check(t1, live);
        p.take(A, |c| if *c == 3 { Liveness::Dead } else { Liveness::Alive }).0.unwrap();
        let t9 = t0 + Duration::from_secs(9);
        p.check(t9, live);
        p.check(t9 + Duration::from_millis(300), |_| Liveness::Dead);
        assert!(!p.is_disabled());
        assert_eq!(p.idle_limit(), Some(Duration::from_secs(9)));
    }

    #[test]
    fn failures_back_off_and_retry_one_at_a_time() {
        let t0 = Instant::now();
        let mut p: Pool<u32> = Pool::new(3);
        assert_eq!(p.claim_refills(t0), 3);
        for _ in 0..3 {
            p.refill_failed(t0);
        }
        assert_eq!(p.claim_refills(t0 + Duration::from_millis(100)), 0, "backing off");
        let later = t0 + Duration::from_secs(2);
        assert_eq!(p.claim_refills(later), 1, "one probe at a time while failing");
        assert_eq!(p.claim_refills(later), 0);
        assert_eq!(p.refilled(later, 1), None);
        assert_eq!(p.claim_refills(later), 2, "a success ends the backoff");
        // The backoff is bounded.
        let mut p: Pool<u32> = Pool::new(1);
        let mut t = t0;
        for _ in 0..40 {
            t += BACKOFF_MAX;
            if p.claim_refills(t) == 1 {
                p.refill_failed(t);
            }
        }
        assert_eq!(p.claim_refills(t + BACKOFF_MAX), 1);
    }

    #[test]
    fn drain_closes_every_idle_connection_and_refills_start_over() {
        let t = Instant::now();
        let mut p = filled(3, t);
        p.take(A, live).0.unwrap();
        assert_eq!(p.drain(), Events { discards: 2, disabled: 0 });
        assert_eq!(p.ready(), 0);
        assert_eq!(p.claim_refills(t), 3);
        assert!(!p.check_due(t), "nothing idle: nothing to check");
        p.refilled(t, 1);
        assert!(p.check_due(t));
        assert!(!p.check_due(t + Duration::from_millis(100)));
        assert!(p.check_due(t + CHECK_EVERY));
    }

    /// Issue 25: a pool no flow used for `warm_idle` closes what it holds,
    /// asks for no refill and says nothing is due; the next use warms it.
    #[test]
    fn an_unused_pool_goes_cold_and_warms_again_on_use() {
        let t = Instant::now();
        let idle = Duration::from_secs(300);
        let mut p = Pool::new(2).with_idle(Some(idle), t);
        assert_eq!(p.next_due(t), Some(t), "a new pool fills at once");
        assert_eq!(p.claim_refills(t), 2);
        assert_eq!(p.next_due(t), None, "refills under way: nothing to do until they come back");
        p.refilled(t, 1);
        p.refilled(t, 2);
        assert_eq!(p.next_due(t), Some(t), "never looked at yet");
        assert!(p.check_due(t));
        assert_eq!(p.check(t, live), Events::default());
        assert_eq!(p.next_due(t), Some(t + CHECK_EVERY));
        // Unused past the limit: drained at the next look, and cold.
        let later = t + idle;
        assert!(p.is_idle(later));
        assert_eq!(p.next_due(later), Some(later));
        assert!(p.check_due(later));
        assert_eq!(p.check(later, live).discards, 2);
        assert_eq!(p.ready(), 0);
        assert_eq!(p.claim_refills(later), 0, "no refills while cold");
        assert_eq!(p.next_due(later + idle), None, "a cold pool costs no look");
        // The next flow misses, and warms it again.
        let (taken, _) = p.take(A, live);
        assert_eq!(taken.err(), Some(Miss::Empty));
        p.used(later + idle);
        assert_eq!(p.claim_refills(later + idle), 2);
        // Without an idle limit a pool never goes cold.
        let forever = Pool::<u32>::new(2).with_idle(None, t);
        assert!(!forever.is_idle(t + idle * 100));
    }

    /// Issue 25: a pool told of closes by events looks at nothing on a
    /// timer: it is due only when a connection reaches its refresh age, and
    /// an event on a closed connection drops it and teaches the idle limit.
    #[test]
    fn an_evented_pool_is_due_only_at_refresh_ages() {
        let t = Instant::now();
        let mut p = Pool::new(2).with_events();
        assert_eq!(p.claim_refills(t), 2);
        p.refilled(t, 1);
        p.refilled(t, 2);
        let first = p.next_due(t).expect("a refresh is due some day");
        assert!(first > t + REFRESH_DEFAULT * 3 / 4, "no look before the refresh age: {:?}", first - t);
        assert!(!p.check_due(t + CHECK_EVERY), "no periodic look");
        // The server closes connection 1 after 10 s: heard as an event.
        let later = t + Duration::from_secs(10);
        assert_eq!(
            p.look(later, |c| *c == 2, live),
            Events::default(),
            "an event on a live one changes nothing"
        );
        let ev = p.look(later, |c| *c == 1, |_| Liveness::Dead);
        assert_eq!(ev.discards, 1);
        assert_eq!(p.idle_limit(), Some(Duration::from_secs(10)));
        assert_eq!(p.ready(), 1);
        assert_eq!(
            p.look(later, |c| *c == 7, |_| Liveness::Dead),
            Events::default(),
            "taken meanwhile: nothing"
        );
        // Short of its size (and the survivor past the new, shorter refresh age): due now.
        assert!(p.next_due(later).is_some_and(|d| d <= later));
    }

    /// Issue 25: a burst of 64 takes teaches the pool to hold 64, so the
    /// next burst finds them ready (one source may take what its burst
    /// taught, plus half of the configured size); quieter bursts shrink it.
    #[test]
    fn a_pool_learns_bursts_and_forgets_them_slowly() {
        let t = Instant::now();
        let mut p: Pool<u32> = filled(2, t).with_learning(64);
        for _ in 0..64 {
            p.used(t);
            let _ = p.take(A, live);
        }
        assert_eq!(p.target(), 64);
        assert_eq!(p.claim_refills(t), 64, "refilled to the burst it saw");
        for c in 0..64 {
            assert_eq!(p.refilled(t, c), None);
        }
        let later = t + BURST * 3;
        let mut hits = 0;
        for _ in 0..64 {
            p.used(later);
            hits += usize::from(p.take(A, live).0.is_ok());
        }
        // Its share: half of warm (1) and the 62 the burst taught.
        assert_eq!(hits, 63, "the next burst of 64 is served from the pool but one");
        // Nothing on time alone, nor within FORGET_EVERY of the last burst.
        p.used(later + FORGET_EVERY - BURST);
        assert_eq!(p.target(), 64);
        // Single flows FORGET_EVERY apart: a quarter back each time, back
        // to the configured size within ~5 minutes (64 48 36 27 20 15 11 8 6 4 3 2).
        let mut now = later;
        let mut seen = vec![];
        for _ in 0..12 {
            now += FORGET_EVERY;
            p.used(now);
            seen.push(p.target());
        }
        assert_eq!(seen, [48, 36, 27, 20, 15, 11, 8, 6, 4, 3, 2, 2], "the pool wears down to warm");
        // A later burst is learned again at once.
        for _ in 0..40 {
            p.used(now + BURST);
        }
        assert_eq!(p.target(), 40);
        // A fresh pool has its configured size until it sees a burst.
        let q: Pool<u32> = Pool::new(4).with_learning(64);
        assert_eq!((q.target(), q.share()), (4, 2));
        assert_eq!(Pool::<u32>::new(0).with_learning(64).target(), 0, "warm: 0 learns nothing");
        // Without learning (warm_max = warm) the size is fixed.
        let mut f: Pool<u32> = filled(2, t);
        for _ in 0..64 {
            f.used(t);
            let _ = f.take(A, live);
        }
        assert_eq!(f.target(), 2);
        // A smaller ceiling holds.
        let mut g: Pool<u32> = filled(2, t).with_learning(8);
        for _ in 0..64 {
            g.used(t);
            let _ = g.take(A, live);
        }
        assert_eq!(g.target(), 8);
    }
}
