//! The UDP session table: one session per client socket, two idle
//! timeouts, a hard size bound. See the module doc of [`crate::udp`] for a
//! session's life.
//!
//! Both kinds of session live in one [`Arena`] under one index (one hash
//! lookup per datagram), threaded on two lists, DNS-only and ordinary.
//! Every list has a single timeout and is kept in activity order, so its
//! head is both its least recently used session and its next expiry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::hash::FoldState;
use super::lru::{Arena, List, NIL};

/// Destination port of the sessions that get the short timeout.
pub const DNS_PORT: u16 = 53;

/// The table's bounds (SPEC §3 `udp:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Idle time after which an ordinary session ends.
    pub idle_timeout: Duration,
    /// Idle time after which a session that only ever sent to port 53 ends.
    pub dns_idle_timeout: Duration,
    /// Sessions at most; a new one past this evicts the least recently used.
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(300),
            dns_idle_timeout: Duration::from_secs(20),
            max_sessions: 65536,
        }
    }
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
    /// The table was full and none had expired; this least recently used
    /// session made room (count it as evicted).
    Evicted(SocketAddr, V),
}

struct Entry<V> {
    value: V,
    /// Last activity, either direction. Never earlier than that of the
    /// session before it in its list (see `stamp`).
    last: Instant,
    /// Global use order: picks the LRU across the two lists, ties included.
    seq: u64,
    kind: Kind,
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
    seq: u64,
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
        // Grow on demand: a 65536-session bound should not cost its full
        // size on a host with three containers. Freed slots are reused.
        SessionTable {
            limits,
            arena: Arena::with_capacity(0),
            index: HashMap::with_hasher(hasher),
            dns: List::EMPTY,
            ordinary: List::EMPTY,
            seq: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// New limits (a reload). Sessions beyond a lower `max_sessions` stay
    /// until they end; the table does not grow past it again.
    pub fn set_limits(&mut self, mut limits: Limits) {
        limits.max_sessions = limits.max_sessions.clamp(1, (NIL - 1) as usize);
        self.limits = limits;
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
        self.stamp(kind, i, now);
        {
            let (arena, list) = self.split(kind);
            arena.move_to_back(list, i);
        };
        self.arena.node_mut(i).map(|n| &mut n.value.value)
    }

    /// A new session for `client`, whose first datagram goes to `dst_port`
    /// at `now`. Says what left the table to make room; see [`Insert`].
    /// When the table is full, a session already past its timeout goes
    /// first (the one with the earliest deadline), else the least recently
    /// used of either kind.
    pub fn insert(&mut self, client: SocketAddr, dst_port: u16, value: V, now: Instant) -> Insert<V> {
        let kind = Kind::of_port(dst_port);
        if let Some(&i) = self.index.get(&client) {
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
        let made_room = if self.len() >= self.limits.max_sessions {
            match self.pop_expired(now) {
                Some((k, v)) => Insert::Expired(k, v),
                None => match self.pop_lru() {
                    Some((k, v)) => Insert::Evicted(k, v),
                    None => Insert::Added,
                },
            }
        } else {
            Insert::Added
        };
        let entry = Entry { value, last: now, seq: 0, kind };
        let i = self.arena.alloc(client, entry);
        self.index.insert(client, i);
        self.stamp(kind, i, now);
        {
            let (arena, list) = self.split(kind);
            arena.push_back(list, i);
        };
        made_room
    }

    pub fn remove(&mut self, client: &SocketAddr) -> Option<V> {
        let i = self.index.remove(client)?;
        let kind = self.arena.node(i)?.value.kind;
        {
            let (arena, list) = self.split(kind);
            arena.unlink(list, i);
        };
        self.arena.release(i).map(|(_, e)| e.value)
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

    /// Removes and returns the least recently used session of either kind.
    fn pop_lru(&mut self) -> Option<(SocketAddr, V)> {
        let d = self.arena.node(self.dns.head).map(|n| n.value.seq);
        let o = self.arena.node(self.ordinary.head).map(|n| n.value.seq);
        let kind = match (d, o) {
            (Some(d), Some(o)) if o < d => Kind::Ordinary,
            (Some(_), _) => Kind::DnsOnly,
            (None, Some(_)) => Kind::Ordinary,
            (None, None) => return None,
        };
        self.pop_head(kind)
    }

    fn pop_head(&mut self, kind: Kind) -> Option<(SocketAddr, V)> {
        let i = self.list(kind).head;
        let key = self.arena.node(i)?.key;
        self.index.remove(&key);
        {
            let (arena, list) = self.split(kind);
            arena.unlink(list, i);
        };
        self.arena.release(i).map(|(k, e)| (k, e.value))
    }

    /// Marks node `i` active at `now` as the next newest of `kind`'s list
    /// (which it is about to be pushed to or moved within). `last` is
    /// clamped to the list's current newest, so a `now` that runs backwards
    /// (a caller mixing clocks) cannot break the head-is-next-expiry order.
    fn stamp(&mut self, kind: Kind, i: u32, now: Instant) {
        let tail = self.list(kind).tail;
        let floor = self.arena.node(tail).map(|n| n.value.last);
        self.seq += 1;
        let seq = self.seq;
        if let Some(n) = self.arena.node_mut(i) {
            n.value.last = floor.map_or(now, |f| now.max(f));
            n.value.seq = seq;
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
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
