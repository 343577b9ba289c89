//! Flows by value in a vector, with a generation per slot so that a token
//! for a flow that has ended (and whose slot was reused) is ignored.

use mio::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Upstream = 1,
}

/// `generation << 32 | slot << 1 | side`.
pub fn token(slot: usize, generation: u32, side: Side) -> Token {
    Token(((generation as usize) << 32) | (slot << 1) | side as usize)
}

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    /// Stores `value`; returns its slot and generation.
    pub fn insert(&mut self, value: T) -> (usize, u32) {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            let e = &mut self.entries[slot];
            e.generation = e.generation.wrapping_add(1);
            e.value = Some(value);
            return (slot, e.generation);
        }
        assert!(self.entries.len() < (1 << 31), "slab full");
        self.entries.push(Entry { generation: 0, value: Some(value) });
        (self.entries.len() - 1, 0)
    }

    /// The slot and side a token names, if it is still the same flow.
    pub fn resolve(&self, t: Token) -> Option<(usize, Side)> {
        let slot = (t.0 & 0xffff_ffff) >> 1;
        let generation = (t.0 >> 32) as u32;
        let side = if t.0 & 1 == 0 { Side::Client } else { Side::Upstream };
        let e = self.entries.get(slot)?;
        (e.generation == generation && e.value.is_some()).then_some((slot, side))
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.entries.get_mut(slot)?.value.as_mut()
    }

    pub fn remove(&mut self, slot: usize) -> Option<T> {
        let v = self.entries.get_mut(slot)?.value.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_are_ignored_after_reuse() {
        let mut s = Slab::default();
        let (a, gen_a) = s.insert("a");
        let ta = token(a, gen_a, Side::Upstream);
        assert_eq!(s.resolve(ta), Some((a, Side::Upstream)));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.resolve(ta), None);
        let (b, gen_b) = s.insert("b");
        assert_eq!(b, a, "slot reused");
        assert_ne!(gen_b, gen_a);
        assert_eq!(s.resolve(ta), None, "old generation must not reach the new flow");
        assert_eq!(s.resolve(token(b, gen_b, Side::Client)), Some((b, Side::Client)));
        assert_eq!(s.len(), 1);
    }
}
