//! An LRU map: an intrusive doubly linked list over a `Vec` of slots with
//! `u32` links and a free list, plus a `HashMap` from key to slot.
//!
//! ```text
//!   index: HashMap<K, u32>          slots: Vec<Slot>
//!     k1 -> 2  k2 -> 0  k3 -> 3     [0: k2] [1: free] [2: k1] [3: k3]
//!
//!   list:  head (oldest) 2 <-> 0 <-> 3 tail (newest)     free: 1 -> NIL
//! ```
//!
//! Every operation is O(1): one hash lookup plus a few link writes. Freed
//! slots go on the free list and are reused before the `Vec` grows, so once
//! the map has reached its working size it allocates nothing more.
//!
//! The [`Arena`] (slots + free list + list surgery) is shared with the
//! session table, which threads two lists through one arena and one index.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};
use std::mem;

use super::hash::FoldState;

/// The null link.
pub(super) const NIL: u32 = u32::MAX;

pub(super) struct Node<K, V> {
    pub(super) key: K,
    pub(super) value: V,
    prev: u32,
    next: u32,
}

enum Slot<K, V> {
    Used(Node<K, V>),
    Free { next: u32 },
}

/// One list threaded through an [`Arena`]: head is the oldest.
#[derive(Debug, Clone, Copy)]
pub(super) struct List {
    pub(super) head: u32,
    pub(super) tail: u32,
    pub(super) len: usize,
}

impl List {
    pub(super) const EMPTY: List = List { head: NIL, tail: NIL, len: 0 };
}

/// Slots, a free list, and the link surgery on [`List`]s.
pub(super) struct Arena<K, V> {
    slots: Vec<Slot<K, V>>,
    free: u32,
}

impl<K, V> Arena<K, V> {
    pub(super) fn with_capacity(n: usize) -> Self {
        Arena { slots: Vec::with_capacity(n), free: NIL }
    }

    /// Stores a node, linked into no list yet.
    ///
    /// # Panics
    /// With more than `u32::MAX - 1` live nodes (callers bound their size
    /// far below that).
    pub(super) fn alloc(&mut self, key: K, value: V) -> u32 {
        let node = Slot::Used(Node { key, value, prev: NIL, next: NIL });
        if self.free != NIL {
            let i = self.free;
            if let Some(slot) = self.slots.get_mut(i as usize) {
                if let Slot::Free { next } = mem::replace(slot, node) {
                    self.free = next;
                }
                return i;
            }
        }
        let i = u32::try_from(self.slots.len()).ok().filter(|&i| i != NIL).expect("LRU arena over u32 slots");
        self.slots.push(node);
        i
    }

    /// Frees a node that is linked into no list.
    pub(super) fn release(&mut self, i: u32) -> Option<(K, V)> {
        let slot = self.slots.get_mut(i as usize)?;
        if let Slot::Free { .. } = slot {
            return None;
        }
        match mem::replace(slot, Slot::Free { next: self.free }) {
            Slot::Used(n) => {
                self.free = i;
                Some((n.key, n.value))
            }
            Slot::Free { .. } => None,
        }
    }

    #[inline]
    pub(super) fn node(&self, i: u32) -> Option<&Node<K, V>> {
        match self.slots.get(i as usize) {
            Some(Slot::Used(n)) => Some(n),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn node_mut(&mut self, i: u32) -> Option<&mut Node<K, V>> {
        match self.slots.get_mut(i as usize) {
            Some(Slot::Used(n)) => Some(n),
            _ => None,
        }
    }

    /// Links `i` (in no list) as `list`'s newest.
    pub(super) fn push_back(&mut self, list: &mut List, i: u32) {
        let old_tail = list.tail;
        if let Some(n) = self.node_mut(i) {
            n.prev = old_tail;
            n.next = NIL;
        }
        match self.node_mut(old_tail) {
            Some(t) => t.next = i,
            None => list.head = i,
        }
        list.tail = i;
        list.len += 1;
    }

    /// Unlinks `i` from `list` (which must hold it).
    pub(super) fn unlink(&mut self, list: &mut List, i: u32) {
        let Some(n) = self.node_mut(i) else { return };
        let (prev, next) = (n.prev, n.next);
        n.prev = NIL;
        n.next = NIL;
        match self.node_mut(prev) {
            Some(p) => p.next = next,
            None => list.head = next,
        }
        match self.node_mut(next) {
            Some(nx) => nx.prev = prev,
            None => list.tail = prev,
        }
        list.len -= 1;
    }

    /// Makes `i` (in `list`) its newest.
    #[inline]
    pub(super) fn move_to_back(&mut self, list: &mut List, i: u32) {
        if list.tail != i {
            self.unlink(list, i);
            self.push_back(list, i);
        }
    }

    /// Oldest to newest.
    pub(super) fn iter(&self, list: List) -> Iter<'_, K, V> {
        Iter { arena: self, at: list.head, left: list.len }
    }

    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.free = NIL;
    }
}

/// Walks one list from oldest to newest.
pub(super) struct Iter<'a, K, V> {
    arena: &'a Arena<K, V>,
    at: u32,
    left: usize,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = &'a Node<K, V>;

    fn next(&mut self) -> Option<&'a Node<K, V>> {
        let n = self.arena.node(self.at)?;
        self.at = n.next;
        self.left = self.left.saturating_sub(1);
        Some(n)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

/// A map that remembers use order: O(1) lookup, touch, insert, remove and
/// pop-oldest. It does not bound itself; the caller checks [`Lru::len`] and
/// pops the oldest when it wants room.
///
/// Reading with [`get`](Lru::get)/[`get_mut`](Lru::get_mut) leaves the order
/// alone; [`touch`](Lru::touch) and [`insert`](Lru::insert) make the entry
/// the newest.
pub struct Lru<K, V, S = FoldState> {
    arena: Arena<K, V>,
    list: List,
    index: HashMap<K, u32, S>,
}

impl<K: Hash + Eq + Copy, V> Lru<K, V> {
    pub fn new() -> Self {
        Lru::with_capacity(0)
    }

    /// Room for `n` entries before anything allocates.
    pub fn with_capacity(n: usize) -> Self {
        Lru::with_capacity_and_hasher(n, FoldState::new())
    }
}

impl<K: Hash + Eq + Copy, V> Default for Lru<K, V> {
    fn default() -> Self {
        Lru::new()
    }
}

impl<K: Hash + Eq + Copy, V, S: BuildHasher> Lru<K, V, S> {
    pub fn with_capacity_and_hasher(n: usize, hasher: S) -> Self {
        Lru {
            arena: Arena::with_capacity(n),
            list: List::EMPTY,
            index: HashMap::with_capacity_and_hasher(n, hasher),
        }
    }

    pub fn len(&self) -> usize {
        self.list.len
    }

    pub fn is_empty(&self) -> bool {
        self.list.len == 0
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// The value, without changing the order.
    pub fn get(&self, key: &K) -> Option<&V> {
        let &i = self.index.get(key)?;
        self.arena.node(i).map(|n| &n.value)
    }

    /// The value, without changing the order.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let &i = self.index.get(key)?;
        self.arena.node_mut(i).map(|n| &mut n.value)
    }

    /// Makes the entry the newest and returns its value.
    pub fn touch(&mut self, key: &K) -> Option<&mut V> {
        let &i = self.index.get(key)?;
        self.arena.move_to_back(&mut self.list, i);
        self.arena.node_mut(i).map(|n| &mut n.value)
    }

    /// Inserts `value` as the newest entry. If `key` was present, its value
    /// is replaced (and returned) and it becomes the newest.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.index.entry(key) {
            Entry::Occupied(e) => {
                let i = *e.get();
                self.arena.move_to_back(&mut self.list, i);
                self.arena.node_mut(i).map(|n| mem::replace(&mut n.value, value))
            }
            Entry::Vacant(e) => {
                let i = self.arena.alloc(key, value);
                e.insert(i);
                self.arena.push_back(&mut self.list, i);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.index.remove(key)?;
        self.arena.unlink(&mut self.list, i);
        self.arena.release(i).map(|(_, v)| v)
    }

    /// The least recently used entry, left in place.
    pub fn peek_oldest(&self) -> Option<(&K, &V)> {
        self.arena.node(self.list.head).map(|n| (&n.key, &n.value))
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let i = self.list.head;
        let key = self.arena.node(i)?.key;
        self.index.remove(&key);
        self.arena.unlink(&mut self.list, i);
        self.arena.release(i)
    }

    /// Oldest to newest.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, &V)> + '_ {
        self.arena.iter(self.list).map(|n| (&n.key, &n.value))
    }

    /// Drops every entry; keeps the allocations.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.index.clear();
        self.list = List::EMPTY;
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug, S> std::fmt::Debug for Lru<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.arena.iter(self.list).map(|n| (&n.key, &n.value))).finish()
    }
}

#[cfg(test)]
#[path = "lru_tests.rs"]
mod tests;
