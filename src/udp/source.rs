//! Per-source bookkeeping for the session table: how many sessions each
//! source address holds (in a list of its own, least recently used first),
//! which source holds the most, and each source's token bucket of new
//! sessions.
//!
//! A source's bucket outlives its sessions: a source that holds none is
//! kept, bucket and all, on an idle list (least recently active first) of
//! at most `max_idle` sources, so an exit that fails every association at
//! once (a refused UDP ASSOCIATE, a reset) cannot hand the source a full
//! burst again with each failure. Past `max_idle` the oldest idle source is
//! forgotten (its bucket would be nearly full again by then anyway).
//!
//! ```text
//!   admit / insert (unknown) ──► idle or active ──last session leaves──► idle (newest)
//!                     idle ──a session joins──► active (ranked in by_count)
//!                     idle list over max_idle ──► its oldest forgotten
//! ```
//!
//! So there are never more sources than sessions plus `max_idle`, whatever
//! addresses a container sprays.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use super::hash::FoldState;
use super::lru::{Arena, List};
use crate::bucket::Bucket;

pub(super) struct Source {
    /// Its sessions, threaded through the table's arena, oldest first.
    pub(super) sessions: List,
    pub(super) bucket: Bucket,
    /// On the idle list (holds no session).
    idle: bool,
}

/// Every source holding a session, and up to `max_idle` that held one (or
/// asked for one) and hold none now.
pub(super) struct Sources {
    pub(super) arena: Arena<IpAddr, Source>,
    index: HashMap<IpAddr, u32, FoldState>,
    /// (sessions held, source slot) of the sources holding any: the last is
    /// the heaviest source.
    by_count: BTreeSet<(usize, u32)>,
    /// Sources holding no session, threaded through `arena`, least recently
    /// active first.
    idle: List,
    max_idle: usize,
}

impl Sources {
    pub(super) fn new(hasher: FoldState, max_idle: usize) -> Sources {
        Sources {
            arena: Arena::with_capacity(0),
            index: HashMap::with_hasher(hasher),
            by_count: BTreeSet::new(),
            idle: List::EMPTY,
            max_idle,
        }
    }

    pub(super) fn find(&self, ip: &IpAddr) -> Option<u32> {
        self.index.get(ip).copied()
    }

    /// Whether a new session of `ip` may start at `now` (rate per second,
    /// bucket size `burst`); takes a token if so. A source seen for the
    /// first time starts with a full bucket (less this session) and is kept
    /// as idle until its session joins.
    pub(super) fn admit(&mut self, ip: IpAddr, rate: u32, burst: u32, now: Instant) -> bool {
        let Some(s) = self.find(&ip) else {
            let s = self.alloc(ip, burst, now);
            self.make_idle(s);
            return true;
        };
        if self.arena.node(s).is_some_and(|n| n.value.idle) {
            // Recently active: it moves to the idle list's newest end.
            self.arena.move_to_back(&mut self.idle, s);
        }
        self.arena.node_mut(s).is_none_or(|n| n.value.bucket.take(rate, burst, now))
    }

    /// The source's slot for a session about to join it: created (with a
    /// bucket spent by one) if unknown, taken off the idle list if idle.
    pub(super) fn get_or_add(&mut self, ip: IpAddr, burst: u32, now: Instant) -> u32 {
        let s = match self.find(&ip) {
            Some(s) => s,
            None => self.alloc(ip, burst, now),
        };
        if let Some(n) = self.arena.node_mut(s)
            && n.value.idle
        {
            n.value.idle = false;
            self.arena.unlink(&mut self.idle, s);
        }
        s
    }

    fn alloc(&mut self, ip: IpAddr, burst: u32, now: Instant) -> u32 {
        let source = Source { sessions: List::EMPTY, bucket: Bucket::new_spent(burst, now), idle: false };
        let s = self.arena.alloc(ip, source);
        self.index.insert(ip, s);
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

    /// Re-ranks `s` after its count changed; at zero it becomes idle.
    pub(super) fn settle(&mut self, s: u32) {
        let len = self.len_of(s);
        if len == 0 {
            self.make_idle(s);
        } else {
            self.by_count.insert((len, s));
        }
    }

    /// Puts `s` (holding no session, on no list) on the idle list as its
    /// newest; forgets the oldest idle sources past `max_idle`.
    fn make_idle(&mut self, s: u32) {
        let Some(n) = self.arena.node_mut(s) else { return };
        if n.value.idle {
            return;
        }
        n.value.idle = true;
        self.arena.push_back(&mut self.idle, s);
        self.trim_idle();
    }

    fn trim_idle(&mut self) {
        while self.idle.len > self.max_idle {
            let oldest = self.idle.head;
            self.arena.unlink(&mut self.idle, oldest);
            if let Some((ip, _)) = self.arena.release(oldest) {
                self.index.remove(&ip);
            }
        }
    }

    /// The sources whose bucket is not full at `now`, with the thousandths
    /// of a token each holds (for the new process of an upgrade).
    pub(super) fn levels(&mut self, rate: u32, burst: u32, now: Instant) -> Vec<(IpAddr, u64)> {
        let full = u64::from(burst) * 1000;
        let mut out = Vec::new();
        for (&ip, &s) in &self.index {
            if let Some(n) = self.arena.node_mut(s) {
                let l = n.value.bucket.level(rate, burst, now);
                if l < full {
                    out.push((ip, l));
                }
            }
        }
        out
    }

    /// `ip`'s bucket holds no more than `milli` (its level in the process
    /// this one took over from); an unknown source is kept as idle.
    pub(super) fn adopt(&mut self, ip: IpAddr, milli: u64, burst: u32, now: Instant) {
        match self.find(&ip) {
            Some(s) => {
                if let Some(n) = self.arena.node_mut(s) {
                    n.value.bucket.lower_to(milli);
                }
            }
            None => {
                let s = self.alloc(ip, burst, now);
                if let Some(n) = self.arena.node_mut(s) {
                    n.value.bucket = Bucket::with_level(milli, burst, now);
                }
                self.make_idle(s);
            }
        }
    }

    /// A new bound for the idle list (a reload); applies at once.
    pub(super) fn set_max_idle(&mut self, max_idle: usize) {
        self.max_idle = max_idle;
        self.trim_idle();
    }

    /// The source holding the most sessions (ties: the later slot).
    pub(super) fn heaviest(&self) -> Option<u32> {
        self.by_count.last().map(|&(_, s)| s)
    }

    /// Sources holding sessions.
    pub(super) fn len(&self) -> usize {
        self.index.len() - self.idle.len
    }

    /// Sources kept for their bucket alone.
    pub(super) fn idle_len(&self) -> usize {
        self.idle.len
    }
}
