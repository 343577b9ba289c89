//! The registry: every thread's counters, and every worker's counters per
//! tunnel and per route source, summed on read.
//!
//! Cost follows what is active (issue 25). Writers never lock on the data
//! path: a worker holds its own `Arc<Counters>` per tunnel and per source
//! and adds to the atomics in place. It takes a registry lock only on its
//! first flow of a tunnel or source (to register them) and when it forgets
//! sources gone idle. A reader (`egressd stats`, `top` every second, a
//! scrape) takes the same lock only to copy the list of `Arc`s, one clone
//! each, and sums after letting go: a worker may wait for a copy, never
//! for a sum. Summing is linear: entries are kept by name in order, and a
//! name's parts are next to each other in the copy.
//!
//! A source's entry, and so its series, lives while something counts into
//! it. The workers own forgetting: when a source has had no flow and no
//! session for a while, a worker drops its counters of it and says so
//! ([`Registry::forget_sources`]):
//!
//! ```text
//!                source()                  forget_sources()
//!   (no entry) ──────────► holders: [w0, w1] ────────────► released: [w1]
//!       ▲                         │                              │ nothing else holds w1
//!       │                         │ w0 forgotten as well         │ (Arc::try_unwrap)
//!       │                         ▼                              ▼
//!       └──── holders and released both empty ◄──── its counts added to `retired`
//! ```
//!
//! A released `Arc` that a flow, a session or a DNS connection still holds
//! stays summed as it is until the last holder drops it (looked at again on
//! each read and each forget), so no count is lost while anything can still
//! add to it; its final counts then go to the entry's `retired` counters,
//! so the source's totals never go down while the entry lives. When no
//! worker and nothing else holds the source's counters, the entry goes, and
//! a source that comes back starts from 0 (a counter reset to Prometheus).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{Counters, Gauges, Snapshot, snapshot};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every thread's counters, and every worker's per-tunnel and per-source
/// counters. Threads register once; the hot path never locks.
#[derive(Debug, Default)]
pub struct Registry {
    /// Gauges kept elsewhere (the warm pools'), added to a snapshot when read.
    gauges: Mutex<Vec<Arc<dyn Gauges>>>,
    threads: Mutex<Vec<Arc<Counters>>>,
    tunnels: Mutex<Named>,
    sources: Mutex<Named>,
}

impl Registry {
    /// Adds `g`'s gauges to every snapshot read from now on.
    pub fn publish(&self, g: Arc<dyn Gauges>) {
        lock(&self.gauges).push(g);
    }

    fn fill(&self, name: Option<&str>, s: &mut Snapshot) {
        for g in lock(&self.gauges).iter() {
            g.fill(name, s);
        }
    }

    /// Counters for a new thread.
    pub fn thread(&self) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        lock(&self.threads).push(Arc::clone(&c));
        c
    }

    /// Counters for one worker's flows through the tunnel `name`.
    pub fn tunnel(&self, name: &str) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        lock(&self.tunnels).add(name, Arc::clone(&c));
        c
    }

    /// Counters for one worker's flows from the route source `label`.
    pub fn source(&self, label: &str) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        lock(&self.sources).add(label, Arc::clone(&c));
        c
    }

    /// A worker no longer counts into these (label, counters) from
    /// [`Registry::source`]: each goes once nothing else holds it, and a
    /// source goes once none of its counters is held (see the module doc).
    pub fn forget_sources(&self, gone: Vec<(String, Arc<Counters>)>) {
        let mut named = lock(&self.sources);
        for (label, c) in gone {
            named.release(&label, c);
        }
        named.settle();
        named.expire(Instant::now());
    }

    /// Per route source, summed over workers, sorted by label.
    pub fn per_source(&self) -> Vec<(String, Snapshot)> {
        let parts = {
            let mut named = lock(&self.sources);
            named.settle();
            named.expire(Instant::now());
            named.parts()
        };
        sum_by_name(&parts)
    }

    /// Everything counted so far: what an upgrade hands to the new process.
    pub fn counted(&self) -> Counted {
        Counted { total: self.total(), tunnels: self.per_tunnel(), sources: self.per_source() }
    }

    /// Adds the counts of another process (the one this one took over from
    /// in an upgrade, then what its drain counted) to the totals, tunnels
    /// and sources here, gauges left out. A carried source no worker here
    /// has counted into by `until` is let go then, as its own worker would
    /// have forgotten it; one a worker took up lives and goes as any other.
    pub fn carry(&self, c: &Counted, until: Instant) {
        self.thread().add_snapshot(&c.total.since(&Snapshot::default()));
        lock(&self.tunnels).carry(&c.tunnels, None);
        lock(&self.sources).carry(&c.sources, Some(until));
    }

    /// The sum over all threads.
    pub fn total(&self) -> Snapshot {
        let threads = lock(&self.threads).clone();
        let mut s = snapshot(threads.iter().map(|c| c.as_ref()));
        self.fill(None, &mut s);
        s
    }

    /// Per tunnel, summed over workers, sorted by name.
    pub fn per_tunnel(&self) -> Vec<(String, Snapshot)> {
        let parts = lock(&self.tunnels).parts();
        let mut v = sum_by_name(&parts);
        for (name, s) in &mut v {
            self.fill(Some(name), s);
        }
        v
    }
}

/// The counts of a process, as an upgrade hands them over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counted {
    pub total: Snapshot,
    pub tunnels: Vec<(String, Snapshot)>,
    pub sources: Vec<(String, Snapshot)>,
}

impl Counted {
    /// What was counted since `then`, totals only (see [`Snapshot::since`]).
    pub fn since(&self, then: &Counted) -> Counted {
        let diff = |now: &[(String, Snapshot)], was: &[(String, Snapshot)]| -> Vec<(String, Snapshot)> {
            let was: std::collections::HashMap<&str, &Snapshot> =
                was.iter().map(|(n, s)| (n.as_str(), s)).collect();
            now.iter()
                .map(|(n, s)| {
                    (n.clone(), s.since(was.get(n.as_str()).copied().unwrap_or(&Snapshot::default())))
                })
                .filter(|(_, d)| *d != Snapshot::default())
                .collect()
        };
        Counted {
            total: self.total.since(&then.total),
            tunnels: diff(&self.tunnels, &then.tunnels),
            sources: diff(&self.sources, &then.sources),
        }
    }
}

/// Counters by name: one entry per tunnel or route source.
#[derive(Debug, Default)]
struct Named {
    entries: BTreeMap<Arc<str>, Entry>,
    /// Names whose `released` is not empty, to look at again.
    lingering: Vec<Arc<str>>,
    /// Names carried from another process that no worker here had taken
    /// up when carried, and when to let them go if none has by then.
    carried: Vec<(Arc<str>, Instant)>,
}

/// The counters of one name.
#[derive(Debug, Default)]
struct Entry {
    /// One per worker counting into it.
    holders: Vec<Arc<Counters>>,
    /// Given up by their worker, still held by a flow, session or DNS
    /// connection that may count into them.
    released: Vec<Arc<Counters>>,
    /// The counts of released counters nothing held any more.
    retired: Option<Arc<Counters>>,
}

impl Entry {
    /// Moves the released counters nothing else holds into `retired`.
    fn settle(&mut self) {
        for c in std::mem::take(&mut self.released) {
            // try_unwrap, not strong_count: it synchronises with the last
            // holder's drop, so its last adds are seen.
            match Arc::try_unwrap(c) {
                Ok(c) => self.retired.get_or_insert_with(Arc::default).absorb(&c),
                Err(c) => self.released.push(c),
            }
        }
    }

    fn is_gone(&self) -> bool {
        self.holders.is_empty() && self.released.is_empty()
    }
}

impl Named {
    fn add(&mut self, name: &str, c: Arc<Counters>) {
        match self.entries.get_mut(name) {
            Some(e) => e.holders.push(c),
            None => {
                self.entries.insert(Arc::from(name), Entry { holders: vec![c], ..Entry::default() });
            }
        }
    }

    /// `c`, a holder of `name`, is given up by its worker.
    fn release(&mut self, name: &str, c: Arc<Counters>) {
        let Some(e) = self.entries.get_mut(name) else { return };
        let Some(i) = e.holders.iter().position(|h| Arc::ptr_eq(h, &c)) else { return };
        drop(c);
        let was_lingering = !e.released.is_empty();
        e.released.push(e.holders.swap_remove(i));
        e.settle();
        if e.is_gone() {
            self.entries.remove(name);
        } else if !was_lingering
            && !e.released.is_empty()
            && let Some((key, _)) = self.entries.get_key_value(name)
        {
            self.lingering.push(Arc::clone(key));
        }
    }

    /// Looks again at the released counters still held at the last look.
    fn settle(&mut self) {
        for name in std::mem::take(&mut self.lingering) {
            let Some(e) = self.entries.get_mut(&name) else { continue };
            e.settle();
            if e.is_gone() {
                self.entries.remove(&name);
            } else if !e.released.is_empty() {
                self.lingering.push(name);
            }
        }
    }

    /// Adds another process's counts (totals only) to each name's retired
    /// counters; a name no worker holds is let go after `until` (never
    /// for `None`) unless a worker takes it up before.
    fn carry(&mut self, counts: &[(String, Snapshot)], until: Option<Instant>) {
        for (name, s) in counts {
            let totals = s.since(&Snapshot::default());
            if totals == Snapshot::default() {
                continue;
            }
            let key: Arc<str> = match self.entries.get_key_value(name.as_str()) {
                Some((k, _)) => Arc::clone(k),
                None => Arc::from(name.as_str()),
            };
            let e = self.entries.entry(Arc::clone(&key)).or_default();
            e.retired.get_or_insert_with(Arc::default).add_snapshot(&totals);
            if let Some(until) = until
                && e.is_gone()
            {
                self.carried.push((key, until));
            }
        }
    }

    /// Lets go of the carried names past their time that no worker took up.
    fn expire(&mut self, now: Instant) {
        if self.carried.first().is_none_or(|(_, until)| now < *until) {
            return;
        }
        let (due, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.carried).into_iter().partition(|(_, u)| now >= *u);
        self.carried = kept;
        for (name, _) in due {
            if self.entries.get(&name).is_some_and(Entry::is_gone) {
                self.entries.remove(&name);
            }
        }
    }

    /// Every counters of every name, in name order: the short copy a reader
    /// makes under the lock.
    fn parts(&self) -> Vec<(Arc<str>, Arc<Counters>)> {
        let mut v = Vec::with_capacity(self.entries.len() * 2);
        for (name, e) in &self.entries {
            for c in e.retired.iter().chain(&e.holders).chain(&e.released) {
                v.push((Arc::clone(name), Arc::clone(c)));
            }
        }
        v
    }
}

/// Sums the parts of each name; `parts` is in name order, so a name's
/// parts are next to each other.
fn sum_by_name(parts: &[(Arc<str>, Arc<Counters>)]) -> Vec<(String, Snapshot)> {
    let mut out: Vec<(String, Snapshot)> = Vec::new();
    let mut last: Option<&Arc<str>> = None;
    for (name, c) in parts {
        if last != Some(name) {
            out.push((name.to_string(), Snapshot::default()));
            last = Some(name);
        }
        if let Some((_, s)) = out.last_mut() {
            c.add_to(s);
        }
    }
    out
}

#[cfg(test)]
mod tests;
