//! The quota counters while egressd runs: one [`Meter`] per identity,
//! shared by every worker thread, and the periods that renew them.
//!
//! ```text
//!  workers (any thread)            Ledger (one Mutex, off the data path)
//!  ───────────────────            ─────────────────────────────────────
//!  flow/session starts ─ meter(identity, quota, now) ─▶ map: identity → Slot
//!        │  ◀── Arc<Meter> ───────────────────────────     { meter, start, len,
//!  bytes moved: meter.add(n)   (one relaxed fetch_add)       next_len, limit, open }
//!  before more: meter.spent()  (relaxed loads)            tick(now_wall, now_mono)
//!                                                          every few seconds:
//!   ──────────── period of len ─────────────┬──────────    jump? shift starts;
//!   start                          start+len│ used = 0     ended? used = 0,
//!                                           ▼ start += k·len  start += k·len
//! ```
//!
//! Time: periods are in wall-clock milliseconds (that is all there is across
//! restarts), but while running, elapsed time is the monotonic clock's: when
//! the wall clock moved more than [`JUMP_MS`] differently from it since the
//! last tick, the difference is a jump, period starts move with it, and no
//! counter is reset by it. A changed `every_days` applies from the next
//! boundary. (`Instant` is CLOCK_MONOTONIC, which stops while the host is
//! suspended: a suspend longer than [`JUMP_MS`] looks like a forward jump,
//! and the periods are lengthened by it rather than cut short.)
//!
//! Fail closed: after a corrupt state file ([`Ledger::closed`]), every
//! metered identity is spent until it is [`reset`](Ledger::reset) (or all
//! are). Only identities that have been reset are saved while closed, and
//! the `closed` mark is saved too, so a restart stays closed.
//!
//! Pure: no clock is read here; callers pass `now`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::state::{Entry, MAX_LEN_MS, MAX_START_MS, MIN_LEN_MS, State};
use crate::config::Quota;

/// How far the wall clock may drift from the monotonic clock between two
/// ticks before it counts as a jump (NTP's slews stay well below this).
pub const JUMP_MS: i64 = 60_000;

/// A restored counter is capped here, so that adds can never wrap it
/// (2^62 bytes is four exbibytes).
const USED_CAP: u64 = 1 << 62;

/// Identities kept at most: past this, a new one takes the place of one
/// no flow holds (the one that used least), so that a host churning
/// container names within a period does not grow the ledger (and the state
/// file saved every few seconds) without bound. Identities all held by
/// flows are never dropped: then there are as many as live containers.
pub const MAX_IDENTITIES: usize = 65_536;

/// One identity's counter, shared by the threads that move its bytes.
#[derive(Debug)]
pub struct Meter {
    used: AtomicU64,
    /// The bytes at which it is spent: the quota, 0 while failed closed,
    /// `u64::MAX` while no quota is known (restored, not yet configured).
    gate: AtomicU64,
}

impl Meter {
    fn new(used: u64, gate: u64) -> Meter {
        Meter { used: AtomicU64::new(used.min(USED_CAP)), gate: AtomicU64::new(gate) }
    }

    /// Counts `n` payload bytes (either direction).
    pub fn add(&self, n: u64) {
        self.used.fetch_add(n, Relaxed);
    }

    /// Whether the quota is used up (or the ledger failed closed).
    pub fn spent(&self) -> bool {
        self.used.load(Relaxed) >= self.gate.load(Relaxed)
    }

    /// Bytes left before it is spent (0 once spent or failed closed).
    pub fn left(&self) -> u64 {
        self.gate.load(Relaxed).saturating_sub(self.used.load(Relaxed))
    }

    /// Bytes counted this period.
    pub fn used(&self) -> u64 {
        self.used.load(Relaxed)
    }
}

/// What the ledger keeps per identity besides its meter.
#[derive(Debug)]
struct Slot {
    meter: Arc<Meter>,
    start_ms: u64,
    len_ms: u64,
    /// A changed period length, taking effect at the next boundary.
    next_len_ms: Option<u64>,
    /// The quota in bytes, once a config has named it.
    limit: Option<u64>,
    /// False while failed closed and not reset.
    open: bool,
    /// Made since the last tick: its start is already in the current wall
    /// clock, so a jump found at that tick does not move it.
    fresh: bool,
}

impl Slot {
    fn gate(&self) -> u64 {
        if self.open { self.limit.unwrap_or(u64::MAX) } else { 0 }
    }

    fn end_ms(&self) -> u64 {
        self.start_ms.saturating_add(self.len_ms)
    }

    /// Moves to the period holding `now_ms` in whole periods, the pending
    /// length from the first boundary on. True if a period ended.
    fn advance(&mut self, now_ms: u64) -> bool {
        if now_ms < self.end_ms() {
            return false;
        }
        self.start_ms = self.end_ms();
        if let Some(len) = self.next_len_ms.take() {
            self.len_ms = len;
        }
        let k = (now_ms - self.start_ms) / self.len_ms;
        self.start_ms = self.start_ms.saturating_add(k.saturating_mul(self.len_ms)).min(MAX_START_MS);
        self.meter.used.store(0, Relaxed);
        true
    }

    /// A new period from `now_ms`, at the configured length, nothing used.
    fn renew(&mut self, now_ms: u64) {
        if let Some(len) = self.next_len_ms.take() {
            self.len_ms = len;
        }
        self.start_ms = now_ms.min(MAX_START_MS);
        self.meter.used.store(0, Relaxed);
    }
}

/// One row of `egressd quota list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub identity: String,
    pub used: u64,
    /// The quota in bytes (`None`: restored, no config has named it yet).
    pub limit: Option<u64>,
    /// `limit - used`, 0 once spent (and while failed closed).
    pub left: Option<u64>,
    /// When the current period ends, unix seconds (rounded up).
    pub period_end: u64,
    pub spent: bool,
    /// Spent because the state file was corrupt, until reset.
    pub closed: bool,
}

/// What a tick found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// The wall clock jumped by this many milliseconds (worth a log line);
    /// period starts moved with it.
    pub jump_ms: Option<i64>,
    /// Identities whose period ended (their counters are 0 again).
    pub renewed: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<String, Slot>,
    /// Identities dropped for a new one past [`MAX_IDENTITIES`], and the
    /// warning about it (once a minute).
    dropped: u64,
    dropped_log: crate::lograte::Every,
    /// The kept-aside corrupt file, while failed closed.
    closed: Option<String>,
    /// The clocks at the last tick.
    clock: Option<(u64, Instant)>,
}

/// Every identity's counter; shared (`Arc<Ledger>`) by all workers.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

impl Inner {
    /// Drops the unheld identity that used least, for `identity`.
    fn make_room(&mut self, identity: &str) {
        let victim = self
            .slots
            .iter()
            .filter(|(_, s)| Arc::strong_count(&s.meter) == 1)
            .min_by_key(|(_, s)| s.meter.used())
            .map(|(n, _)| n.clone());
        let Some(victim) = victim else { return };
        let used = self.slots.remove(&victim).map_or(0, |s| s.meter.used());
        self.dropped += 1;
        if let Some(n) = self.dropped_log.due(Instant::now()) {
            log::warn!(
                target: "egressd::quota",
                "{MAX_IDENTITIES} quota identities kept: {victim} (no flow, {used} bytes used) dropped for {identity}{}",
                crate::lograte::more(n)
            );
        }
    }
}

impl Ledger {
    /// Identities dropped to keep at most [`MAX_IDENTITIES`].
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// No counters yet (no state file).
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// The counters a state file held (closed if it says so).
    pub fn restore(state: State) -> Ledger {
        let slots = state.entries.into_iter().map(|e| (e.identity.clone(), restored(e))).collect();
        Ledger { inner: Mutex::new(Inner { slots, closed: state.closed, ..Inner::default() }) }
    }

    /// Failed closed: the state file was corrupt and kept aside at
    /// `kept_aside`; every metered identity is spent until reset.
    pub fn failed_closed(kept_aside: String) -> Ledger {
        Ledger { inner: Mutex::new(Inner { closed: Some(kept_aside), ..Inner::default() }) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it left whole values behind: carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The meter of `identity` under `quota`, made on first use (its period
    /// starts at `now_ms`, unix ms). Called when a flow or session starts:
    /// a changed quota takes effect at once, a changed period at the next
    /// boundary.
    pub fn meter(&self, identity: &str, quota: &Quota, now_ms: u64) -> Arc<Meter> {
        let len = period_ms(quota);
        let mut inner = self.lock();
        if inner.slots.len() >= MAX_IDENTITIES && !inner.slots.contains_key(identity) {
            inner.make_room(identity);
        }
        let open = inner.closed.is_none();
        let slot = inner.slots.entry(identity.to_string()).or_insert_with(|| Slot {
            meter: Arc::new(Meter::new(0, 0)),
            start_ms: now_ms.min(MAX_START_MS),
            len_ms: len,
            next_len_ms: None,
            limit: None,
            open,
            fresh: true,
        });
        slot.limit = Some(quota.bytes);
        slot.next_len_ms = (len != slot.len_ms).then_some(len);
        slot.meter.gate.store(slot.gate(), Relaxed);
        Arc::clone(&slot.meter)
    }

    /// Advances the periods to `now_ms` (unix ms) in whole periods; a wall
    /// clock jump since the last tick (measured against `now_mono`) moves
    /// every period's start with it instead of ending or stretching it. A
    /// counter that ends a whole period unused, with no flow holding its
    /// meter, is forgotten.
    pub fn tick(&self, now_ms: u64, now_mono: Instant) -> Tick {
        let mut inner = self.lock();
        let jump = inner.clock.and_then(|(wall, mono)| jump_ms(wall, mono, now_ms, now_mono));
        let mut renewed = Vec::new();
        inner.slots.retain(|name, slot| {
            if let Some(j) = jump.filter(|_| !slot.fresh) {
                slot.start_ms =
                    (i128::from(slot.start_ms) + i128::from(j)).clamp(0, MAX_START_MS.into()) as u64;
            }
            slot.fresh = false;
            let used = slot.meter.used();
            if !slot.advance(now_ms) {
                return true;
            }
            // A whole period unused and held by no flow: forgotten (its next
            // use starts a period with nothing used, as renewing would), so
            // names of containers long gone do not pile up.
            if used == 0 && slot.open && Arc::strong_count(&slot.meter) == 1 {
                return false;
            }
            renewed.push(name.clone());
            true
        });
        inner.clock = Some((now_ms, now_mono));
        renewed.sort();
        Tick { jump_ms: jump, renewed }
    }

    /// What to save: every counter, or while failed closed only those reset
    /// since (the others are spent anyway, and stay so after a restart).
    pub fn snapshot(&self) -> State {
        let inner = self.lock();
        let mut entries: Vec<Entry> = inner
            .slots
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(name, s)| Entry {
                identity: name.clone(),
                start_ms: s.start_ms,
                len_ms: s.len_ms,
                used: s.meter.used(),
            })
            .collect();
        entries.sort_by(|a, b| a.identity.cmp(&b.identity));
        State { closed: inner.closed.clone(), entries }
    }

    /// One row per identity, by name, for `quota list`, stats and metrics.
    pub fn rows(&self) -> Vec<Row> {
        let inner = self.lock();
        let mut rows: Vec<Row> = inner.slots.iter().map(|(name, s)| row(name, s)).collect();
        rows.sort_by(|a, b| a.identity.cmp(&b.identity));
        rows
    }

    /// Starts a new period for `identity` at `now_ms`, nothing used, and
    /// lifts its fail-closed state. False if the ledger does not know it
    /// (no flow has started for it, and the state file did not hold it).
    pub fn reset(&self, identity: &str, now_ms: u64) -> bool {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(identity) else { return false };
        slot.renew(now_ms);
        slot.open = true;
        slot.meter.gate.store(slot.gate(), Relaxed);
        true
    }

    /// [`reset`](Ledger::reset) for every identity, and leaves the
    /// fail-closed state for good. Returns how many were reset.
    pub fn reset_all(&self, now_ms: u64) -> usize {
        let mut inner = self.lock();
        inner.closed = None;
        for slot in inner.slots.values_mut() {
            slot.renew(now_ms);
            slot.open = true;
            slot.meter.gate.store(slot.gate(), Relaxed);
        }
        inner.slots.len()
    }

    /// Bytes used per identity now (an upgrade's old process reports what
    /// its draining flows add after the handover).
    pub fn used_by(&self) -> Vec<(String, u64)> {
        self.lock().slots.iter().map(|(n, s)| (n.clone(), s.meter.used())).collect()
    }

    /// Adds `n` bytes to a known identity's counter (what the old process
    /// of an upgrade counted after the handover); false if unknown.
    pub fn credit(&self, identity: &str, n: u64) -> bool {
        let inner = self.lock();
        let Some(slot) = inner.slots.get(identity) else { return false };
        // Another process's number: capped as a restored one is, so that
        // no report can wrap the counter (and un-spend a quota).
        let _ = slot.meter.used.fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_add(n).min(USED_CAP)));
        true
    }

    /// The kept-aside state file, while failed closed.
    pub fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }
}

fn restored(e: Entry) -> Slot {
    Slot {
        meter: Arc::new(Meter::new(e.used, u64::MAX)),
        start_ms: e.start_ms.min(MAX_START_MS),
        len_ms: e.len_ms.clamp(MIN_LEN_MS, MAX_LEN_MS),
        next_len_ms: None,
        limit: None,
        open: true,
        fresh: false,
    }
}

/// A quota's period in milliseconds, within what the state file takes.
fn period_ms(q: &Quota) -> u64 {
    u64::try_from(q.every.as_millis()).unwrap_or(u64::MAX).clamp(MIN_LEN_MS, MAX_LEN_MS)
}

/// How far the wall clock jumped between two ticks, if it did: its move
/// less the monotonic clock's, when that is more than [`JUMP_MS`] either way.
fn jump_ms(wall0: u64, mono0: Instant, wall: u64, mono: Instant) -> Option<i64> {
    let mono_ms = i128::try_from(mono.saturating_duration_since(mono0).as_millis()).unwrap_or(i128::MAX);
    let drift = (i128::from(wall) - i128::from(wall0)).saturating_sub(mono_ms);
    (drift.abs() > i128::from(JUMP_MS)).then(|| drift.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
}

fn row(name: &str, s: &Slot) -> Row {
    let used = s.meter.used();
    let gate = s.gate();
    Row {
        identity: name.to_string(),
        used,
        limit: s.limit,
        left: s.limit.map(|_| gate.saturating_sub(used)),
        period_end: s.end_ms().div_ceil(1000),
        spent: used >= gate,
        closed: !s.open,
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
