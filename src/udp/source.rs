//! Per-source bookkeeping for the session table: how many sessions each
//! source address holds (in a list of its own, least recently used first),
//! which source holds the most, and each source's token bucket of new
//! sessions.
//!
//! A source exists here while it holds at least one session; its bucket is
//! forgotten with it (a source with no session starts with a full burst).
//! So there are never more sources than sessions, whatever addresses a
//! container sprays.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use super::hash::FoldState;
use super::lru::{Arena, List};

/// A token bucket in thousandths of a session, so that rates below one per
/// millisecond refill exactly in integer arithmetic.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    milli: u64,
    at: Instant,
}

impl Bucket {
    /// A full bucket less the session being created now.
    pub(super) fn new_spent(burst: u32, now: Instant) -> Bucket {
        Bucket { milli: u64::from(burst).saturating_sub(1) * 1000, at: now }
    }

    /// Refills at `rate` per second up to `burst`, then takes one token if
    /// there is one.
    pub(super) fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let cap = u64::from(burst) * 1000;
        let dt = now.saturating_duration_since(self.at);
        // micro-seconds × sessions/s ÷ 1000 = milli-sessions.
        let add = (dt.as_micros().saturating_mul(u128::from(rate)) / 1000).min(u128::from(cap)) as u64;
        if add > 0 {
            self.milli = (self.milli + add).min(cap);
            self.at = now;
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

pub(super) struct Source {
    /// Its sessions, threaded through the table's arena, oldest first.
    pub(super) sessions: List,
    pub(super) bucket: Bucket,
}

/// Every source holding a session.
pub(super) struct Sources {
    pub(super) arena: Arena<IpAddr, Source>,
    index: HashMap<IpAddr, u32, FoldState>,
    /// (sessions held, source slot): the last is the heaviest source.
    by_count: BTreeSet<(usize, u32)>,
}

impl Sources {
    pub(super) fn new(hasher: FoldState) -> Sources {
        Sources {
            arena: Arena::with_capacity(0),
            index: HashMap::with_hasher(hasher),
            by_count: BTreeSet::new(),
        }
    }

    pub(super) fn find(&self, ip: &IpAddr) -> Option<u32> {
        self.index.get(ip).copied()
    }

    /// The source's slot, created (with a bucket spent by one) if new.
    pub(super) fn get_or_add(&mut self, ip: IpAddr, burst: u32, now: Instant) -> u32 {
        if let Some(&s) = self.index.get(&ip) {
            return s;
        }
        let s = self.arena.alloc(ip, Source { sessions: List::EMPTY, bucket: Bucket::new_spent(burst, now) });
        self.index.insert(ip, s);
        self.by_count.insert((0, s));
        s
    }

    pub(super) fn len_of(&self, s: u32) -> usize {
        self.arena.node(s).map_or(0, |n| n.value.sessions.len)
    }

    /// Call before a session joins or leaves `s`'s list (`len` is the
    /// count before), and `settle` after, to keep `by_count` in order.
    pub(super) fn unrank(&mut self, s: u32) {
        let len = self.len_of(s);
        self.by_count.remove(&(len, s));
    }

    /// Re-ranks `s` after its count changed; forgets it at zero.
    pub(super) fn settle(&mut self, s: u32) {
        let len = self.len_of(s);
        if len == 0 {
            if let Some((ip, _)) = self.arena.release(s) {
                self.index.remove(&ip);
            }
        } else {
            self.by_count.insert((len, s));
        }
    }

    /// The source holding the most sessions (ties: the later slot).
    pub(super) fn heaviest(&self) -> Option<u32> {
        self.by_count.last().map(|&(_, s)| s)
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }
}
