//! The UDP session table: one session per client socket, two idle
//! timeouts, a hard size bound. See the module doc of [`crate::udp`] for a
//! session's life.
//!
//! Both kinds of session live in one [`Arena`] under one index (one hash
//! lookup per datagram), threaded on two lists, DNS-only and ordinary.
//! Every list has a single timeout and is kept in activity order, so its
//! head is both its least recently used session and its next expiry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::hash::FoldState;
use super::lru::{Arena, List, NIL};
use super::source::Sources;

/// Destination port of the sessions that get the short timeout.
pub const DNS_PORT: u16 = 53;

/// Sources holding no session whose token buckets a table keeps, unless
/// told otherwise ([`SessionTable::set_max_idle_sources`]).
pub const MAX_IDLE_SOURCES: usize = 4096;

/// The table's bounds (SPEC §3 `udp:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Idle time after which an ordinary session ends.
    pub idle_timeout: Duration,
    /// Idle time after which a session that only ever sent to port 53 ends.
    pub dns_idle_timeout: Duration,
    /// Sessions at most; a new one past this evicts the least recently
    /// used session of the source that holds the most.
    pub max_sessions: usize,
    /// Sessions one source address may hold; a new one past this evicts
    /// that source's own least recently used session.
    pub max_per_source: usize,
    /// New sessions a source may open per second, on average ...
    pub new_per_source_per_sec: u32,
    /// ... and at once (the bucket's size).
    pub new_per_source_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(300),
            dns_idle_timeout: Duration::from_secs(20),
            max_sessions: 65536,
            max_per_source: 16384,
            new_per_source_per_sec: 2000,
            new_per_source_burst: 4096,
        }
    }
}

/// What [`SessionTable::admit`] says about a new session from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The source opens new sessions faster than its rate: refuse (count it).
    OverRate,
}

/// Which timeout a session gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has only ever sent to port 53: `dns_idle_timeout`.
    DnsOnly,
    /// Has sent to some other port: `idle_timeout`, for good.
    Ordinary,
}

impl Kind {
    fn of_port(dst_port: u16) -> Kind {
        if dst_port == DNS_PORT { Kind::DnsOnly } else { Kind::Ordinary }
    }
}

/// What [`SessionTable::insert`] did to make room, if anything.
#[must_use = "a session that left the table must have its sockets closed"]
#[derive(Debug, PartialEq, Eq)]
pub enum Insert<V> {
    /// There was room.
    Added,
    /// The client already had a session: the new one replaces it (fresh
    /// activity, kind from this `dst_port`); here is the old value.
    Replaced(V),
    /// The table was full; this session, already idle past its timeout,
    /// made room (count it as expired).
    Expired(SocketAddr, V),
    /// The table was full and none had expired; this session, the least
    /// recently used of the source holding the most sessions, made room
    /// (count it as evicted).
    Evicted(SocketAddr, V),
    /// The client's source already held `max_per_source` sessions; its own
    /// least recently used one made room (count it against the source).
    SourceFull(SocketAddr, V),
}

struct Entry<V> {
    value: V,
    /// Last activity, either direction. Never earlier than that of the
    /// session before it in its list (see `stamp`).
    last: Instant,
    kind: Kind,
    /// The source's slot in `sources`, and this session's links in the
    /// source's own list (activity order).
    src: u32,
    sprev: u32,
    snext: u32,
}

/// UDP sessions keyed by the client's socket address (endpoint-independent:
/// one per client socket, whatever the remote). Sans-IO: the caller passes
/// `now`, asks [`next_deadline`](Self::next_deadline) when to come back, and
/// drains [`pop_expired`](Self::pop_expired) when it does.
pub struct SessionTable<V> {
    limits: Limits,
    arena: Arena<SocketAddr, Entry<V>>,
    index: HashMap<SocketAddr, u32, FoldState>,
    dns: List,
    ordinary: List,
    sources: Sources,
}

impl<V> SessionTable<V> {
    /// A `max_sessions` of 0 is taken as 1 (a table must hold the session
    /// it is inserting).
    pub fn new(limits: Limits) -> Self {
        SessionTable::with_hasher(limits, FoldState::new())
    }

    /// With a given hasher key: tests and fuzzing, where runs must repeat.
    pub fn with_hasher(mut limits: Limits, hasher: FoldState) -> Self {
        limits.max_sessions = limits.max_sessions.clamp(1, (NIL - 1) as usize);
        limits.max_per_source = limits.max_per_source.max(1);
        limits.new_per_source_burst = limits.new_per_source_burst.max(1);
        // Grow on demand: a 65536-session bound should not cost its full
        // size on a host with three containers. Freed slots are reused.
        SessionTable {
            limits,
            arena: Arena::with_capacity(0),
            index: HashMap::with_hasher(hasher),
            dns: List::EMPTY,
            ordinary: List::EMPTY,
            sources: Sources::new(hasher, MAX_IDLE_SOURCES),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// New limits (a reload). Sessions beyond a lower `max_sessions` stay
    /// until they end; the table does not grow past it again.
    pub fn set_limits(&mut self, mut limits: Limits) {
        limits.max_sessions = limits.max_sessions.clamp(1, (NIL - 1) as usize);
        limits.max_per_source = limits.max_per_source.max(1);
        limits.new_per_source_burst = limits.new_per_source_burst.max(1);
        self.limits = limits;
    }

    /// How many sources holding no session keep their token bucket (least
    /// recently active forgotten first). 0 forgets a source with its last
    /// session, and with it the rate it was held to.
    pub fn set_max_idle_sources(&mut self, n: usize) {
        self.sources.set_max_idle(n);
    }

    pub fn len(&self) -> usize {
        self.dns.len + self.ordinary.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions that are still DNS-only (for stats).
    pub fn dns_only_len(&self) -> usize {
        self.dns.len
    }

    pub fn contains(&self, client: &SocketAddr) -> bool {
        self.index.contains_key(client)
    }

    /// The session's value; its activity is left alone.
    pub fn get(&self, client: &SocketAddr) -> Option<&V> {
        let &i = self.index.get(client)?;
        self.arena.node(i).map(|n| &n.value.value)
    }

    /// The session's value; its activity is left alone.
    pub fn get_mut(&mut self, client: &SocketAddr) -> Option<&mut V> {
        let &i = self.index.get(client)?;
        self.arena.node_mut(i).map(|n| &mut n.value.value)
    }

    pub fn kind(&self, client: &SocketAddr) -> Option<Kind> {
        let &i = self.index.get(client)?;
        self.arena.node(i).map(|n| n.value.kind)
    }

    /// When the session will expire if nothing happens (None: never, when
    /// the timeout is too large for `Instant`).
    pub fn deadline(&self, client: &SocketAddr) -> Option<Instant> {
        let &i = self.index.get(client)?;
        self.arena.node(i).and_then(|n| self.deadline_of(&n.value))
    }

    /// A datagram from the client to `dst_port` at `now`: refreshes the
    /// session and, if `dst_port` is not 53, makes it ordinary for good.
    /// Returns the session's value, or None if the client has no session.
    pub fn touch_outbound(&mut self, client: &SocketAddr, dst_port: u16, now: Instant) -> Option<&mut V> {
        let &i = self.index.get(client)?;
        let kind = self.arena.node(i)?.value.kind;
        self.src_move_to_back(i);
        if kind == Kind::DnsOnly && dst_port != DNS_PORT {
            self.arena.unlink(&mut self.dns, i);
            self.stamp(Kind::Ordinary, i, now);
            self.arena.push_back(&mut self.ordinary, i);
        } else {
            self.stamp(kind, i, now);
            {
                let (arena, list) = self.split(kind);
                arena.move_to_back(list, i);
            };
        }
        self.arena.node_mut(i).map(|n| &mut n.value.value)
    }

    /// A datagram to the client (a reply) at `now`: refreshes the session,
    /// keeping its kind. Returns its value, or None if there is no session.
    pub fn touch_inbound(&mut self, client: &SocketAddr, now: Instant) -> Option<&mut V> {
        let &i = self.index.get(client)?;
        let kind = self.arena.node(i)?.value.kind;
        self.src_move_to_back(i);
        self.stamp(kind, i, now);
        {
            let (arena, list) = self.split(kind);
            arena.move_to_back(list, i);
        };
        self.arena.node_mut(i).map(|n| &mut n.value.value)
    }

    /// Whether `source` may open a new session (or anything else its
    /// token bucket stands for: a DNS-over-TCP connection) at `now`. Call
    /// before creating what it will cost; takes a token when it says yes.
    /// A source seen for the first time has a full bucket; one whose
    /// sessions all ended keeps what it had (see `source`), so sessions
    /// that fail at once still spend it.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Admit {
        let (rate, burst) = (self.limits.new_per_source_per_sec, self.limits.new_per_source_burst);
        if self.sources.admit(source, rate, burst, now) { Admit::Yes } else { Admit::OverRate }
    }

    /// The sources whose new-session bucket is not full at `now`, and
    /// the thousandths of a token each holds (for an upgrade's new process).
    pub fn bucket_levels(&mut self, now: Instant) -> Vec<(IpAddr, u64)> {
        let (rate, burst) = (self.limits.new_per_source_per_sec, self.limits.new_per_source_burst);
        self.sources.levels(rate, burst, now)
    }

    /// `source`'s new-session bucket holds no more than `milli` thousandths
    /// of a token (its level in the process this one took over from).
    pub fn adopt_bucket(&mut self, source: IpAddr, milli: u64, now: Instant) {
        self.sources.adopt(source, milli, self.limits.new_per_source_burst, now);
    }

    /// Sessions `source` holds.
    pub fn source_len(&self, source: &IpAddr) -> usize {
        self.sources.find(source).map_or(0, |s| self.sources.len_of(s))
    }

    /// Source addresses holding sessions.
    pub fn sources_len(&self) -> usize {
        self.sources.len()
    }

    /// Source addresses holding no session, kept for their token bucket.
    pub fn idle_sources_len(&self) -> usize {
        self.sources.idle_len()
    }

    /// A new session for `client`, whose first datagram goes to `dst_port`
    /// at `now`. Says what left the table to make room; see [`Insert`].
    /// A source at `max_per_source` gives up its own least recently used
    /// session. Otherwise, when the table is full, a session already past
    /// its timeout goes first (the one with the earliest deadline), else
    /// the least recently used session of the source that holds the most:
    /// one source's flood evicts its own sessions before anyone else's.
    pub fn insert(&mut self, client: SocketAddr, dst_port: u16, value: V, now: Instant) -> Insert<V> {
        let kind = Kind::of_port(dst_port);
        if let Some(&i) = self.index.get(&client) {
            self.src_move_to_back(i);
            let old_kind = self.arena.node(i).map_or(kind, |n| n.value.kind);
            {
                let (arena, list) = self.split(old_kind);
                arena.unlink(list, i);
            };
            self.stamp(kind, i, now);
            let old = self.arena.node_mut(i).map(|n| {
                n.value.kind = kind;
                std::mem::replace(&mut n.value.value, value)
            });
            {
                let (arena, list) = self.split(kind);
                arena.push_back(list, i);
            };
            return match old {
                Some(v) => Insert::Replaced(v),
                None => Insert::Added,
            };
        }
        let own =
            self.sources.find(&client.ip()).filter(|&s| self.sources.len_of(s) >= self.limits.max_per_source);
        let made_room = if let Some(s) = own {
            match self.take_source_lru(s) {
                Some((k, v)) => Insert::SourceFull(k, v),
                None => Insert::Added,
            }
        } else if self.len() >= self.limits.max_sessions {
            match self.pop_expired(now) {
                Some((k, v)) => Insert::Expired(k, v),
                None => match self.sources.heaviest().and_then(|s| self.take_source_lru(s)) {
                    Some((k, v)) => Insert::Evicted(k, v),
                    None => Insert::Added,
                },
            }
        } else {
            Insert::Added
        };
        let src = self.sources.get_or_add(client.ip(), self.limits.new_per_source_burst, now);
        let entry = Entry { value, last: now, kind, src, sprev: NIL, snext: NIL };
        let i = self.arena.alloc(client, entry);
        self.index.insert(client, i);
        self.sources.unrank(src);
        self.src_push_back(src, i);
        self.sources.settle(src);
        self.stamp(kind, i, now);
        {
            let (arena, list) = self.split(kind);
            arena.push_back(list, i);
        };
        made_room
    }

    pub fn remove(&mut self, client: &SocketAddr) -> Option<V> {
        let &i = self.index.get(client)?;
        self.take(i).map(|(_, v)| v)
    }

    /// The earliest instant at which a session expires, if any session can.
    pub fn next_deadline(&self) -> Option<Instant> {
        let d = self.head_deadline(Kind::DnsOnly);
        let o = self.head_deadline(Kind::Ordinary);
        match (d, o) {
            (Some(d), Some(o)) => Some(d.min(o)),
            (d, o) => d.or(o),
        }
    }

    /// Removes and returns a session whose idle time has run out at `now`
    /// (deadline `<= now`), earliest deadline first. Call until None.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(SocketAddr, V)> {
        let d = self.head_deadline(Kind::DnsOnly).filter(|&t| t <= now);
        let o = self.head_deadline(Kind::Ordinary).filter(|&t| t <= now);
        let kind = match (d, o) {
            (Some(d), Some(o)) if o < d => Kind::Ordinary,
            (Some(_), _) => Kind::DnsOnly,
            (None, Some(_)) => Kind::Ordinary,
            (None, None) => return None,
        };
        self.pop_head(kind)
    }

    /// Every session, DNS-only ones first, each kind from least to most
    /// recently active.
    pub fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &V)> + '_ {
        self.arena.iter(self.dns).chain(self.arena.iter(self.ordinary)).map(|n| (&n.key, &n.value.value))
    }

    fn pop_head(&mut self, kind: Kind) -> Option<(SocketAddr, V)> {
        let i = self.list(kind).head;
        self.take(i)
    }

    /// Removes and returns source `s`'s least recently used session.
    fn take_source_lru(&mut self, s: u32) -> Option<(SocketAddr, V)> {
        let i = self.sources.arena.node(s)?.value.sessions.head;
        self.take(i)
    }

    /// Takes node `i` out of the index, its kind's list and its source.
    fn take(&mut self, i: u32) -> Option<(SocketAddr, V)> {
        let n = self.arena.node(i)?;
        let (key, kind, src) = (n.key, n.value.kind, n.value.src);
        self.index.remove(&key);
        {
            let (arena, list) = self.split(kind);
            arena.unlink(list, i);
        };
        self.sources.unrank(src);
        self.src_unlink(src, i);
        self.sources.settle(src);
        self.arena.release(i).map(|(k, e)| (k, e.value))
    }

    /// Links session `i` as the newest of source `s`'s list.
    fn src_push_back(&mut self, s: u32, i: u32) {
        let Some(src) = self.sources.arena.node_mut(s) else { return };
        let list = &mut src.value.sessions;
        let old_tail = list.tail;
        list.tail = i;
        list.len += 1;
        if old_tail == NIL {
            list.head = i;
        }
        if let Some(t) = self.arena.node_mut(old_tail) {
            t.value.snext = i;
        }
        if let Some(n) = self.arena.node_mut(i) {
            n.value.sprev = old_tail;
            n.value.snext = NIL;
        }
    }

    /// Unlinks session `i` from source `s`'s list.
    fn src_unlink(&mut self, s: u32, i: u32) {
        let Some(n) = self.arena.node_mut(i) else { return };
        let (prev, next) = (n.value.sprev, n.value.snext);
        n.value.sprev = NIL;
        n.value.snext = NIL;
        let Some(src) = self.sources.arena.node_mut(s) else { return };
        let list = &mut src.value.sessions;
        list.len -= 1;
        if prev == NIL {
            list.head = next;
        }
        if next == NIL {
            list.tail = prev;
        }
        if let Some(p) = self.arena.node_mut(prev) {
            p.value.snext = next;
        }
        if let Some(nx) = self.arena.node_mut(next) {
            nx.value.sprev = prev;
        }
    }

    /// Makes session `i` the newest of its source's list (one compare when
    /// it already is: the common case of a busy session).
    #[inline]
    fn src_move_to_back(&mut self, i: u32) {
        let Some(n) = self.arena.node(i) else { return };
        let s = n.value.src;
        if self.sources.arena.node(s).is_some_and(|src| src.value.sessions.tail != i) {
            self.src_unlink(s, i);
            self.src_push_back(s, i);
        }
    }

    /// Marks node `i` active at `now` as the next newest of `kind`'s list
    /// (which it is about to be pushed to or moved within). `last` is
    /// clamped to the list's current newest, so a `now` that runs backwards
    /// (a caller mixing clocks) cannot break the head-is-next-expiry order.
    fn stamp(&mut self, kind: Kind, i: u32, now: Instant) {
        let tail = self.list(kind).tail;
        let floor = self.arena.node(tail).map(|n| n.value.last);
        if let Some(n) = self.arena.node_mut(i) {
            n.value.last = floor.map_or(now, |f| now.max(f));
            n.value.kind = kind;
        }
    }

    fn head_deadline(&self, kind: Kind) -> Option<Instant> {
        self.arena.node(self.list(kind).head).and_then(|n| self.deadline_of(&n.value))
    }

    fn deadline_of(&self, e: &Entry<V>) -> Option<Instant> {
        let timeout = match e.kind {
            Kind::DnsOnly => self.limits.dns_idle_timeout,
            Kind::Ordinary => self.limits.idle_timeout,
        };
        e.last.checked_add(timeout)
    }

    fn list(&self, kind: Kind) -> List {
        match kind {
            Kind::DnsOnly => self.dns,
            Kind::Ordinary => self.ordinary,
        }
    }

    fn split(&mut self, kind: Kind) -> (&mut Arena<SocketAddr, Entry<V>>, &mut List) {
        let list = match kind {
            Kind::DnsOnly => &mut self.dns,
            Kind::Ordinary => &mut self.ordinary,
        };
        (&mut self.arena, list)
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for SessionTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("limits", &self.limits)
            .field("dns_only", &self.dns.len)
            .field("ordinary", &self.ordinary.len)
            .field("sources", &self.sources.len())
            .field("idle_sources", &self.sources.idle_len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
