//! Values by value in a vector, with a generation per slot so that a token
//! for a flow or session that has ended (and whose slot was reused) is
//! ignored.

use mio::Token;

/// Which socket of which kind of entry a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP flow's client (container) side.
    Client = 0,
    /// A TCP flow's upstream (tunnel) side.
    Upstream = 1,
    /// A UDP session's control connection (SOCKS5 UDP ASSOCIATE).
    UdpControl = 2,
    /// A UDP session's datagram socket (relay, or Direct).
    UdpData = 3,
    /// A DNS-over-TCP connection.
    DnsTcp = 4,
    /// A connection being greeted for a tunnel's warm pool.
    Warm = 5,
    /// An idle pooled value this worker made, watched for a close: the slot
    /// is the pool's place in the worker's list, the generation its id.
    Pooled = 6,
    /// A shaped flow's wake-up (a timer only, never an epoll event).
    Shape = 7,
}

const KIND_BITS: u32 = 3;
const KIND_MASK: usize = (1 << KIND_BITS) - 1;
const SLOT_MASK: usize = 0xffff_ffff;

/// `generation << 32 | slot << 3 | kind`.
pub fn token(slot: usize, generation: u32, kind: Kind) -> Token {
    Token(((generation as usize) << 32) | (slot << KIND_BITS) | kind as usize)
}

/// The kind, slot and generation in a token (`None` for foreign tokens).
pub fn decode(t: Token) -> Option<(Kind, usize, u32)> {
    let kind = match t.0 & KIND_MASK {
        0 => Kind::Client,
        1 => Kind::Upstream,
        2 => Kind::UdpControl,
        3 => Kind::UdpData,
        4 => Kind::DnsTcp,
        5 => Kind::Warm,
        6 => Kind::Pooled,
        7 => Kind::Shape,
        _ => return None,
    };
    Some((kind, (t.0 & SLOT_MASK) >> KIND_BITS, (t.0 >> 32) as u32))
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
        assert!(self.entries.len() < (SLOT_MASK >> KIND_BITS), "slab full");
        self.entries.push(Entry { generation: 0, value: Some(value) });
        (self.entries.len() - 1, 0)
    }

    /// Whether `slot` still holds the entry of this generation.
    pub fn is_live(&self, slot: usize, generation: u32) -> bool {
        self.entries.get(slot).is_some_and(|e| e.generation == generation && e.value.is_some())
    }

    pub fn get(&self, slot: usize) -> Option<&T> {
        self.entries.get(slot)?.value.as_ref()
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

    /// The slots of every live value for which `f` holds.
    pub fn slots_where(&self, mut f: impl FnMut(&T) -> bool) -> Vec<usize> {
        let live = self.entries.iter().enumerate().filter_map(|(i, e)| e.value.as_ref().map(|v| (i, v)));
        live.filter(|(_, v)| f(v)).map(|(i, _)| i).collect()
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
        let ta = token(a, gen_a, Kind::Upstream);
        assert_eq!(decode(ta), Some((Kind::Upstream, a, gen_a)));
        assert!(s.is_live(a, gen_a));
        assert_eq!(s.remove(a), Some("a"));
        assert!(!s.is_live(a, gen_a));
        let (b, gen_b) = s.insert("b");
        assert_eq!(b, a, "slot reused");
        assert_ne!(gen_b, gen_a);
        assert!(!s.is_live(a, gen_a), "old generation must not reach the new entry");
        assert!(s.is_live(b, gen_b));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn every_kind_round_trips() {
        let kinds = [
            Kind::Client,
            Kind::Upstream,
            Kind::UdpControl,
            Kind::UdpData,
            Kind::DnsTcp,
            Kind::Warm,
            Kind::Pooled,
            Kind::Shape,
        ];
        for kind in kinds {
            let t = token(12345, 0xdead_beef, kind);
            assert_eq!(decode(t), Some((kind, 12345, 0xdead_beef)));
        }
        // Every kind value is taken: a foreign token (the waker's) is told
        // apart by the loop, and `Shape` (a timer only) is ignored as an event.
    }
}
