//! A tunnel's `rate` shared by weight among its busy sources, across
//! workers, without a lock: the tunnel's board ([`TunnelShare`], behind an
//! `Arc` every worker holds) and each source's part in it ([`SharePart`],
//! owned by the source's worker).
//!
//! Time is cut into windows of [`WINDOW`] from the board's start. For each
//! window and direction the board sums, in three atomics, what the sources
//! active in it said about themselves:
//!
//! - `active`: the weights of all of them (a source is active in a window
//!   when it asked to move bytes in it);
//! - `busy`: the weights of those their share held back (they want more:
//!   their bucket gave nothing, or less than asked and all of it moved);
//! - `light`: the rates the others used (their own demand, or their class
//!   cap, keeps them below their share), in 2^-24 of the tunnel's rate.
//!
//! A source's limit is then weighted max-min fairness computed from the
//! others' sums: the capacity the light ones leave, split by weight among
//! the busy ones and itself, and never less than its weight's share among
//! all active sources:
//!
//! ```text
//!   limit = max( w · (R − light) / (busy + w),   w · R / (active + w) )
//! ```
//!
//! Two greedy sources of weights 1 and 3 are both busy: R/4 and 3R/4. A
//! source capped by its class below its share is light at its cap, and the
//! rest goes to the busy ones: what one does not use, the others get
//! (work-conserving). A source alone gets R. The floor (its share among the
//! active ones) is at most what the first term gives once the sums agree;
//! it only keeps a source from being starved by sums still out of date.
//!
//! A source's part, at each call (both on the owner worker, no lock):
//!
//! ```text
//!  first call in window e ─► put weight in active[e], and in busy[e] if held back in e−1,
//!        │                   else its rate in e−1 in light[e] (0 when new or back from idle);
//!        │                   limit from the others' sums (below)
//!  held back by its share ─► move from light[e] to busy[e] (once), and look at the sums
//!                            again (at once the first time in a window, then every REFRESH)
//!  silent for a window    ─► on the board no longer: slots age out, nothing to remove
//! ```
//!
//! The others' sums are, field by field, the larger of the last window
//! (complete: every source active then wrote it at its first call) and the
//! current one (filling as sources call), each without the source's own
//! contribution. So a newcomer is counted as soon as it writes, a source
//! that left is forgotten after two windows, and a change costs the
//! others one REFRESH (when it makes them wait) or one window.
//!
//! Accuracy. In steady state the limits are the exact weighted max-min
//! shares (integer arithmetic; `light` to 6 parts in 10^8 of the rate),
//! and each bucket holds its source to its limit within a burst: two
//! greedy sources of weights 1 and 3 on 40 Mbit/s get 10.00 and 29.99
//! Mbit/s over seconds 1 to 10 in the simulation (`tests.rs`: two
//! workers, clocks 3 ms apart, wake-ups up to 2 ms late), 10.1 and 30.1
//! over the first 10 s. The errors are transients, each bounded:
//!
//! - a start or a change (a source arrives, turns busy, stops) is seen by
//!   a waiting source within REFRESH, by the others within a window; until
//!   then the sum of the limits may exceed the rate by the newcomer's
//!   share (a newcomer also brings a full bucket, 20 ms of its limit);
//! - a source that stops keeps its weight on the board for up to two
//!   windows (the others ramp up to all of it within 0.2 s);
//! - a light source's rate is last window's: if it grows, the others
//!   still get what it left for up to a window (and a source that began
//!   mid-window reports less than it used, once);
//! - a source held back once in a window counts as busy for all of it: a
//!   bursty source that now and then wants more than its share, but less
//!   on average, keeps its weight's share that window; what it leaves
//!   unused is not passed on until it is light again (work conservation is
//!   exact for steady sources, approximate for bursty ones);
//! - the atomics are relaxed: a worker may read a sum a moment old, which
//!   is one of the delays above, never a wrong total (each change is one
//!   compare-and-swap).
//!
//! Over 10 s these come to about 1 % at the start and nothing after;
//! the issue's bound is ±10 %.
//!
//! Each atomic holds a window's tag and its sum (32 bits each): a writer
//! that finds an older tag starts the sum afresh, one that finds a newer
//! tag is too late and writes nothing, a reader takes a wrong tag as 0; a
//! ring of four windows keeps the last one readable while the next fills.
//! A source's share costs it at most a few compare-and-swaps per window
//! and direction, a few loads when it is held back; the path of each read
//! or write stays its own bucket. Dropping a part needs no clean-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::Dir;

/// Sums are kept per window of this length: short enough that a source
/// that stopped is forgotten within 0.2 s, long enough that its rate is
/// measured over many round trips and a source writes ~10 times a second.
pub const WINDOW: Duration = Duration::from_millis(100);
/// A source held back by its share looks at the others' sums again at
/// most this often (and at once the first time in a window).
pub const REFRESH: Duration = Duration::from_millis(10);
/// Windows kept: the current one, the last one, and two in case a worker's
/// clock lags the others' by a window.
const RING: u64 = 4;
/// `light` counts in 2^-24 of the tunnel's rate: 32 bits hold 256 tunnel
/// rates, exact to 6 parts in 10^8.
const WHOLE: u64 = 1 << 24;

/// A tunnel's board: its rate and, per direction, the sums of the last
/// windows. One per tunnel with a `rate`, shared by every worker.
#[derive(Debug)]
pub struct TunnelShare {
    /// Bytes per second, each direction; reloads may change it.
    rate: AtomicU64,
    /// Window 0 starts here.
    origin: Instant,
    /// By [`Dir::index`].
    boards: [Board; 2],
}

#[derive(Debug, Default)]
struct Board {
    slots: [Slot; RING as usize],
}

/// One window's sums, each `(tag << 32) | sum` (see the module doc).
#[derive(Debug, Default)]
struct Slot {
    active: AtomicU64,
    busy: AtomicU64,
    light: AtomicU64,
}

/// A window's sums, or one source's contribution to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub active: u32,
    pub busy: u32,
    /// In 2^-24 of the tunnel's rate.
    pub light: u32,
}

impl Counts {
    fn minus(self, o: Counts) -> Counts {
        Counts {
            active: self.active.saturating_sub(o.active),
            busy: self.busy.saturating_sub(o.busy),
            light: self.light.saturating_sub(o.light),
        }
    }

    fn max(self, o: Counts) -> Counts {
        Counts {
            active: self.active.max(o.active),
            busy: self.busy.max(o.busy),
            light: self.light.max(o.light),
        }
    }
}

impl TunnelShare {
    /// A board for a tunnel of `rate` bytes/s (at least 1) each direction.
    pub fn new(rate: u64, now: Instant) -> TunnelShare {
        TunnelShare { rate: AtomicU64::new(rate.max(1)), origin: now, boards: Default::default() }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Relaxed)
    }

    /// A reloaded rate: each source's limit follows at its next window.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate.max(1), Relaxed);
    }

    /// The window `now` is in and when it ends (a clock behind the
    /// board's start is in window 0).
    fn window(&self, now: Instant) -> (u64, Instant) {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        let e = u64::try_from(since / WINDOW.as_nanos()).unwrap_or(u64::MAX / 2);
        let end = u64::try_from(WINDOW.as_nanos()).unwrap_or(u64::MAX).saturating_mul(e + 1);
        (e, self.origin.checked_add(Duration::from_nanos(end)).unwrap_or(now + WINDOW))
    }
}

impl Board {
    fn slot(&self, epoch: u64) -> &Slot {
        &self.slots[(epoch % RING) as usize]
    }

    /// A window's sums as they stand (0 for a slot holding another window).
    fn read(&self, epoch: u64) -> Counts {
        let s = self.slot(epoch);
        Counts { active: read(&s.active, epoch), busy: read(&s.busy, epoch), light: read(&s.light, epoch) }
    }

    /// Adds `add` to a window's sums and takes `sub` off.
    fn change(&self, epoch: u64, add: Counts, sub: Counts) {
        let s = self.slot(epoch);
        let d = |a: u32, b: u32| i64::from(a) - i64::from(b);
        change(&s.active, epoch, d(add.active, sub.active));
        change(&s.busy, epoch, d(add.busy, sub.busy));
        change(&s.light, epoch, d(add.light, sub.light));
    }
}

/// The sum in `cell` if it is `epoch`'s, else 0.
fn read(cell: &AtomicU64, epoch: u64) -> u32 {
    let x = cell.load(Relaxed);
    // The tag is the epoch's low 32 bits: windows 13 years apart share
    // one, and the ring rewrites a slot every 0.4 s.
    if (x >> 32) as u32 == epoch as u32 { x as u32 } else { 0 }
}

/// Adds `delta` to `epoch`'s sum in `cell` (lock-free, saturating at 0
/// and `u32::MAX`): a cell of an older window starts afresh, one already
/// taken by a newer window is left alone.
fn change(cell: &AtomicU64, epoch: u64, delta: i64) {
    if delta == 0 {
        return;
    }
    let tag = epoch as u32;
    let mut old = cell.load(Relaxed);
    loop {
        let (t, v) = ((old >> 32) as u32, old as u32);
        let base = match t.wrapping_sub(tag) as i32 {
            0 => i64::from(v),
            newer if newer > 0 => return,
            _ => 0,
        };
        let sum = (base + delta).clamp(0, i64::from(u32::MAX)) as u64;
        match cell.compare_exchange_weak(old, (u64::from(tag) << 32) | sum, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(now) => old = now,
        }
    }
}

/// A source's limit from the others' sums (see the module doc); at least
/// 1 byte/s, at most the tunnel's rate.
pub(super) fn share_of(rate: u64, weight: u32, others: Counts) -> u64 {
    let (r, w) = (u128::from(rate), u128::from(weight.max(1)));
    let light = u128::from(others.light).min(u128::from(WHOLE));
    let free = r * (u128::from(WHOLE) - light) / u128::from(WHOLE);
    let share = free * w / (u128::from(others.busy) + w);
    let floor = r * w / (u128::from(others.active) + w);
    u64::try_from(share.max(floor)).unwrap_or(u64::MAX).max(1)
}

/// One source's part in a tunnel's share, one direction; lives in the
/// source's worker (see the module doc).
#[derive(Debug)]
pub(super) struct SharePart {
    tunnel: Arc<TunnelShare>,
    dir: Dir,
    weight: u32,
    /// The window this part counts in (`None` before its first call), and
    /// when that window ends.
    epoch: Option<u64>,
    ends: Instant,
    /// Bytes moved in `epoch`; whether the share held the source back in it.
    used: u64,
    held: bool,
    /// What this source put on the board for `epoch` and for the window
    /// before (zero if it was not active then): left out of the others' sums.
    mine: Counts,
    mine_prev: Counts,
    /// Bytes per second, from the sums last looked at, and when.
    limit: u64,
    refreshed: Instant,
}

impl SharePart {
    pub(super) fn new(tunnel: Arc<TunnelShare>, dir: Dir, weight: u32, now: Instant) -> SharePart {
        let mut p = SharePart {
            tunnel,
            dir,
            weight: weight.max(1),
            epoch: None,
            ends: now,
            used: 0,
            held: false,
            mine: Counts::default(),
            mine_prev: Counts::default(),
            limit: 1,
            refreshed: now,
        };
        p.limit = p.compute(p.tunnel.window(now).0);
        p
    }

    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    /// A new window has begun: [`SharePart::roll`] before anything else.
    pub(super) fn due(&self, now: Instant) -> bool {
        now >= self.ends
    }

    fn board(&self) -> &Board {
        &self.tunnel.boards[self.dir.index()]
    }

    /// Opens the window `now` is in: says on the board how the last one
    /// went (busy, or the rate used), then takes a limit from the sums.
    pub(super) fn roll(&mut self, now: Instant) {
        let (e, ends) = self.tunnel.window(now);
        self.ends = ends;
        if self.epoch.is_some_and(|p| p >= e) {
            return;
        }
        let was_active = e > 0 && self.epoch == Some(e - 1);
        let put = Counts {
            active: self.weight,
            busy: if was_active && self.held { self.weight } else { 0 },
            light: if was_active && !self.held { self.used_part() } else { 0 },
        };
        self.board().change(e, put, Counts::default());
        self.mine_prev = if was_active { self.mine } else { Counts::default() };
        self.mine = put;
        (self.epoch, self.used, self.held) = (Some(e), 0, false);
        self.limit = self.compute(e);
        self.refreshed = now;
    }

    pub(super) fn used(&mut self, n: u64) {
        self.used = self.used.saturating_add(n);
    }

    /// The share (not a class cap) made the source wait: it is busy in
    /// this window. Looks at the sums again if it is time to; true when
    /// it did (the limit may have changed).
    pub(super) fn held_back(&mut self, now: Instant) -> bool {
        let Some(e) = self.epoch else { return false };
        let first = !self.held;
        self.held = true;
        if self.mine.busy == 0 {
            let busy = Counts { busy: self.weight, ..Counts::default() };
            self.board().change(e, busy, Counts { light: self.mine.light, ..Counts::default() });
            (self.mine.busy, self.mine.light) = (self.weight, 0);
        }
        if !first && now < self.refreshed + REFRESH {
            return false;
        }
        self.limit = self.compute(e);
        self.refreshed = now;
        true
    }

    /// The rate used in the window closing, in 2^-24 of the tunnel's rate.
    fn used_part(&self) -> u32 {
        let per_sec = u128::from(self.used) * Duration::from_secs(1).as_nanos() / WINDOW.as_nanos();
        let part = per_sec * u128::from(WHOLE) / u128::from(self.tunnel.rate().max(1));
        u32::try_from(part).unwrap_or(u32::MAX)
    }

    /// The limit window `e`'s sums give this source.
    fn compute(&self, e: u64) -> u64 {
        let b = self.board();
        let prev = if e > 0 { b.read(e - 1).minus(self.mine_prev) } else { Counts::default() };
        let cur = b.read(e).minus(self.mine);
        share_of(self.tunnel.rate(), self.weight, prev.max(cur))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u64 = 5_000_000; // 40 Mbit/s

    fn counts(active: u32, busy: u32, light: u32) -> Counts {
        Counts { active, busy, light }
    }

    #[test]
    fn the_formula() {
        assert_eq!(share_of(R, 1, Counts::default()), R, "alone: all of it");
        assert_eq!(share_of(R, 1, counts(3, 3, 0)), R / 4, "weight 1 beside a busy 3");
        assert_eq!(share_of(R, 3, counts(1, 1, 0)), R * 3 / 4, "weight 3 beside a busy 1");
        // Beside a source capped at 5 Mbit/s (1/8 of the rate): 35 Mbit/s.
        assert_eq!(share_of(R, 1, counts(1, 0, (WHOLE / 8) as u32)), R * 7 / 8);
        // The capped one, beside the busy one: 20 (it keeps to its cap).
        assert_eq!(share_of(R, 1, counts(1, 1, 0)), R / 2);
        // Light sources using more than the rate (sums out of date): the
        // floor, a weight's share among the active ones.
        assert_eq!(share_of(R, 1, counts(4, 0, u32::MAX)), R / 5);
        assert_eq!(share_of(R, 0, Counts::default()), R, "weight 0 is 1");
        assert_eq!(share_of(1, 1, counts(u32::MAX, u32::MAX, u32::MAX)), 1, "never 0");
        assert_eq!(share_of(u64::MAX, 1000, counts(0, 0, 0)), u64::MAX);
        assert!(share_of(u64::MAX, 1000, counts(u32::MAX, u32::MAX, 0)) > 0);
    }

    #[test]
    fn cells_keep_one_window_and_refuse_late_writers() {
        let c = AtomicU64::new(0);
        change(&c, 7, 5);
        change(&c, 7, 3);
        assert_eq!((read(&c, 7), read(&c, 3), read(&c, 11)), (8, 0, 0));
        change(&c, 11, 2);
        assert_eq!((read(&c, 7), read(&c, 11)), (0, 2), "a newer window starts afresh");
        change(&c, 7, -8);
        assert_eq!(read(&c, 11), 2, "too late for window 7: nothing written");
        change(&c, 11, -5);
        assert_eq!(read(&c, 11), 0, "saturates at 0");
        change(&c, 11, i64::MAX);
        assert_eq!(read(&c, 11), u32::MAX, "and at u32::MAX");
        // Tags are the epoch's low 32 bits: 2^32 windows apart look alike.
        let far = (1u64 << 32) + 15;
        change(&c, far, 1);
        assert_eq!((read(&c, far), read(&c, 15), read(&c, 11)), (1, 1, 0));
    }

    #[test]
    fn windows_from_the_start_of_the_board() {
        let t0 = Instant::now();
        let t = TunnelShare::new(R, t0 + WINDOW);
        assert_eq!(t.window(t0), (0, t0 + 2 * WINDOW), "a clock behind the start is in window 0");
        assert_eq!(t.window(t0 + WINDOW), (0, t0 + 2 * WINDOW));
        assert_eq!(t.window(t0 + 3 * WINDOW + REFRESH), (2, t0 + 4 * WINDOW));
        t.set_rate(0);
        assert_eq!(t.rate(), 1);
    }

    #[test]
    fn a_part_says_how_its_last_window_went() {
        let t0 = Instant::now();
        let t = Arc::new(TunnelShare::new(R, t0));
        let b = &t.boards[Dir::Down.index()];
        let mut p = SharePart::new(Arc::clone(&t), Dir::Down, 2, t0);
        assert!(p.due(t0));
        p.roll(t0);
        assert_eq!(b.read(0), counts(2, 0, 0), "new: active, neither busy nor light yet");
        p.used(R / 10 / 4); // a quarter of the rate for 100 ms
        p.roll(t0 + WINDOW);
        assert_eq!(b.read(1), counts(2, 0, (WHOLE / 4) as u32), "light at the rate it used");
        assert!(p.held_back(t0 + WINDOW), "the first hold looks at the sums at once");
        assert_eq!(b.read(1), counts(2, 2, 0), "moved from light to busy");
        assert!(!p.held_back(t0 + WINDOW + REFRESH / 2), "then every REFRESH");
        assert!(p.held_back(t0 + WINDOW + REFRESH));
        p.roll(t0 + 2 * WINDOW);
        assert_eq!(b.read(2), counts(2, 2, 0), "held back last window: busy from the start");
        p.roll(t0 + 5 * WINDOW);
        assert_eq!(b.read(5), counts(2, 0, 0), "back from idle: new again");
        assert_eq!(p.limit(), R, "alone on the board");
    }
}
