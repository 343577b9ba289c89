//! A worker's own statistics: its counters per tunnel and per route
//! source (the [`Tally`] a flow or session counts into), forgetting a
//! source gone idle, and the longest turn of its loop (issue 25).
//!
//! The first flow or session of a tunnel or source registers counters for
//! this worker in the registry; later ones find them here. A source is
//! forgotten by the worker that counted it: a sweep every `SWEEP_EVERY`
//! looks at up to `SWEEP_BATCH` sources (bounded work per turn) and reads
//! the source's gauges:
//!
//! ```text
//!            tally()                sweep: no flow, no session open
//!   new ───────────────► busy ───────────────────────────────► idle since t
//!                         ▲                                        │
//!                         │ tally(), or a sweep finding            │ sweep: now - t ≥ forget
//!                         │ a flow or session open                 ▼
//!                         └────────────────────────────────── forgotten
//! ```
//!
//! `t` is the first sweep that found the source idle, so its last flow or
//! session ended before `t`: a source is forgotten after at least
//! `forget` (`control.forget_sources_secs`) without any (at most two sweep rounds more). Forgetting
//! drops this worker's cache entry and hands its counters to
//! [`Registry::forget_sources`], which keeps them summed while a flow or a
//! DNS connection still holds them and drops the source's series once no
//! worker and nothing else does. Tunnels are configured, not churned: their
//! counters stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::route::Cidr;
use crate::stats::{Counters, Registry, Tally};
use crate::udp::FoldState;

/// How long a route source goes without a flow or session before its
/// counters and series are forgotten, by default (`control.forget_sources_secs`).
#[cfg(test)]
pub(super) const FORGET_IDLE: Duration = Duration::from_secs(600);
/// How often a worker looks for idle sources, and at most how many it looks
/// at each time: a round over 10 000 sources takes 10 s.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_BATCH: usize = 1024;
/// The longest turn is kept over windows of this length (see `Turns`).
const TURN_WINDOW: Duration = Duration::from_secs(10);

/// This worker's counters per tunnel and per route source, and its turns.
pub(super) struct Tallies {
    /// Keyed by a fast keyed hash: looked up for every new flow.
    per_tunnel: HashMap<String, Arc<Counters>, FoldState>,
    /// Route source (`None`: the default route) → its place in `sources`.
    per_source: HashMap<Option<Cidr>, usize, FoldState>,
    sources: Vec<SourceTally>,
    /// Where the next sweep starts in `sources`.
    cursor: usize,
    next_sweep: Instant,
    turns: Turns,
}

struct SourceTally {
    key: Option<Cidr>,
    counters: Arc<Counters>,
    /// `None` while busy; else when a sweep first found it idle.
    idle_since: Option<Instant>,
}

impl Tallies {
    pub(super) fn new(now: Instant) -> Tallies {
        Tallies {
            per_tunnel: HashMap::default(),
            per_source: HashMap::default(),
            sources: Vec::new(),
            cursor: 0,
            next_sweep: now + SWEEP_EVERY,
            turns: Turns { window_start: now, current: 0, previous: 0 },
        }
    }

    /// The counters a new flow or session of `source` through `tunnel`
    /// counts into, registered on first use.
    pub(super) fn tally(&mut self, registry: &Registry, tunnel: &str, source: Option<Cidr>) -> Tally {
        let t = match self.per_tunnel.get(tunnel) {
            Some(c) => Arc::clone(c),
            None => {
                let c = registry.tunnel(tunnel);
                self.per_tunnel.insert(tunnel.to_string(), Arc::clone(&c));
                c
            }
        };
        let s = match self.per_source.get(&source) {
            Some(&i) => {
                let e = &mut self.sources[i];
                e.idle_since = None;
                Arc::clone(&e.counters)
            }
            None => {
                let c = registry.source(&label(source));
                self.per_source.insert(source, self.sources.len());
                self.sources.push(SourceTally { key: source, counters: Arc::clone(&c), idle_since: None });
                c
            }
        };
        Tally { tunnel: t, source: s }
    }

    /// When the loop must wake for the next sweep even if nothing else is
    /// due: only while there are sources to forget.
    pub(super) fn next_due(&self) -> Option<Instant> {
        (!self.sources.is_empty()).then_some(self.next_sweep)
    }

    /// At the end of a loop turn that started (poll returned) at `started`:
    /// a sweep for idle sources when one is due, and the turn's length.
    pub(super) fn end_turn(
        &mut self,
        registry: &Registry,
        counters: &Counters,
        started: Instant,
        forget: Duration,
    ) {
        if started >= self.next_sweep {
            self.next_sweep = started + SWEEP_EVERY;
            self.forget_idle(registry, started, forget);
        }
        self.turns.record(started, Instant::now(), &counters.worker_turn_max_us);
    }

    /// Looks at the next `SWEEP_BATCH` sources (see the module doc) and
    /// forgets those idle for `forget` (`control.forget_sources_secs`).
    pub(super) fn forget_idle(&mut self, registry: &Registry, now: Instant, forget: Duration) {
        let mut gone = Vec::new();
        let mut i = self.cursor;
        for _ in 0..SWEEP_BATCH.min(self.sources.len()) {
            if i >= self.sources.len() {
                i = 0;
                if self.sources.is_empty() {
                    break;
                }
            }
            let e = &mut self.sources[i];
            let open =
                e.counters.tcp_flows_active.load(Relaxed) + e.counters.udp_sessions_active.load(Relaxed);
            match e.idle_since {
                _ if open > 0 => e.idle_since = None,
                None => e.idle_since = Some(now),
                Some(t) if now.saturating_duration_since(t) >= forget => {
                    // The last one moves here: looked at next.
                    let e = self.sources.swap_remove(i);
                    self.per_source.remove(&e.key);
                    if let Some(moved) = self.sources.get(i) {
                        self.per_source.insert(moved.key, i);
                    }
                    gone.push((label(e.key), e.counters));
                    continue;
                }
                Some(_) => {}
            }
            i += 1;
        }
        self.cursor = i;
        if !gone.is_empty() {
            registry.forget_sources(gone);
        }
        // Memory follows the sources there are now, not the most there were.
        let keep = self.sources.len() * 2;
        if keep < self.sources.capacity() / 2 {
            self.sources.shrink_to(keep);
            self.per_source.shrink_to(keep);
        }
    }
}

/// A route source's label in the statistics.
fn label(source: Option<Cidr>) -> String {
    source.map_or_else(|| "(default)".to_string(), |c| c.to_string())
}

/// The longest turn of the loop: the longest of the current window and of
/// the one before, published in microseconds (`worker_turn_max_us`), so a
/// reader sees the last 10 to 20 seconds whenever it reads and readers do
/// not take it from each other. The loop turns at least twice a second (its
/// poll waits 500 ms at most), so windows roll on time.
struct Turns {
    window_start: Instant,
    current: u64,
    previous: u64,
}

impl Turns {
    fn record(&mut self, started: Instant, ended: Instant, out: &AtomicU64) {
        if ended.saturating_duration_since(self.window_start) >= TURN_WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.window_start = ended;
        }
        let us = u64::try_from(ended.saturating_duration_since(started).as_micros()).unwrap_or(u64::MAX);
        self.current = self.current.max(us);
        let longest = self.current.max(self.previous);
        if out.load(Relaxed) != longest {
            Counters::set(out, longest);
        }
    }
}

#[cfg(test)]
mod tests;
