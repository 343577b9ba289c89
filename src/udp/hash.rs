//! A keyed, cheap hasher for the per-datagram `SocketAddr` lookups.
//!
//! Why not FxHash: the keys are client socket addresses, and a hostile
//! container chooses its own source ports (and, with IPv6 or a wide route
//! prefix, its source addresses). An unkeyed hash lets it compute offline a
//! set of addresses that share one probe sequence; with up to `max_sessions`
//! of them, every datagram lookup on the front loop (shared with the other
//! containers) scans them all.
//!
//! Why not SipHash: it is keyed but costs tens of nanoseconds for a
//! `SocketAddrV6`, on every datagram. This is the folded-multiply
//! construction of foldhash/ahash's fallback: each word is mixed with a
//! 64×64→128-bit multiply whose halves are xored, under a per-table random
//! key. It is not a cryptographic PRF, but the container never sees a hash
//! value, only (at most) timing, so it cannot aim its collisions.

use std::hash::{BuildHasher, Hasher, RandomState};

/// Builds [`FoldHasher`]s with one random key per table.
#[derive(Debug, Clone, Copy)]
pub struct FoldState {
    seed: u64,
    key: u64,
}

impl FoldState {
    /// A fresh random key (from std's per-process random source).
    pub fn new() -> Self {
        let rs = RandomState::new();
        FoldState::with_seeds(rs.hash_one(0x6567_7265_7373_6431_u64), rs.hash_one(0x7564_7020_7461_626c_u64))
    }

    /// A fixed key: for tests and fuzzing, where runs must repeat.
    pub fn with_seeds(seed: u64, key: u64) -> Self {
        // A zero multiplier would map every word to zero.
        FoldState { seed, key: key | 1 }
    }
}

impl Default for FoldState {
    fn default() -> Self {
        FoldState::new()
    }
}

impl BuildHasher for FoldState {
    type Hasher = FoldHasher;

    #[inline]
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { acc: self.seed, key: self.key }
    }
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct FoldHasher {
    acc: u64,
    key: u64,
}

/// An odd constant with well-spread bits (2^64 / golden ratio).
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.acc = folded_mul(self.acc ^ x, self.key ^ MIX);
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The top byte is free (at most 7 bytes here): it holds the
            // length, so "a" and "a\0" differ.
            self.write_u64(u64::from_le_bytes(w) | (rest.len() as u64) << 56);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One more round so the last word reaches the top bits (hashbrown
        // takes its 7-bit tag from there) as well as the low ones.
        folded_mul(self.acc, self.key ^ MIX.rotate_left(32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, SocketAddr};

    #[test]
    fn udp_hash_is_keyed_and_deterministic() {
        let a: SocketAddr = "10.8.0.10:5353".parse().unwrap();
        let s = FoldState::with_seeds(1, 2);
        assert_eq!(s.hash_one(a), s.hash_one(a));
        assert_ne!(s.hash_one(a), FoldState::with_seeds(3, 4).hash_one(a));
        assert_ne!(FoldState::new().hash_one(a), FoldState::new().hash_one(a));
    }

    #[test]
    fn udp_hash_spreads_ports_over_low_and_high_bits() {
        // One container, every source port: the bucket index (low bits) and
        // the tag (top 7 bits) should both be spread.
        let s = FoldState::with_seeds(7, 11);
        let mut low = HashSet::new();
        let mut top = HashSet::new();
        for port in 0..4096u16 {
            let h = s.hash_one(SocketAddr::from((Ipv4Addr::new(10, 8, 0, 10), port)));
            low.insert(h & 0xfff);
            top.insert(h >> 57);
        }
        assert!(low.len() > 2400, "{} distinct low buckets", low.len());
        assert_eq!(top.len(), 128);
    }

    #[test]
    fn udp_hash_write_tail_includes_length() {
        let s = FoldState::with_seeds(5, 9);
        let h = |b: &[u8]| {
            let mut h = s.build_hasher();
            h.write(b);
            h.finish()
        };
        assert_ne!(h(b"a"), h(b"a\0"));
        assert_ne!(h(b"12345678"), h(b"12345678\0"));
    }
}
