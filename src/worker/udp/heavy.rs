//! The sources a worker found over their limits (new-session rate, pending
//! bytes) in the last second, named where every front loop can see them
//! without a lock: a small process-wide array of keyed address hashes.
//!
//! ```text
//!   worker: over_limit(A) ──► Named (A, when) ──► NAMED[h(A) % 16] = h(A)
//!           each batch: entries older than 1 s are cleared again
//!   front:  under pressure, NAMED[h(ip) % 16] == h(ip) ──► shed the datagram
//! ```
//!
//! A slot holds one source; two named sources that share a slot take turns
//! (each worker re-names its sources while they stay over). The hash key is
//! random per process, so a container cannot choose an address that
//! collides with a neighbour's and have the neighbour shed.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::udp::FoldState;

const SLOTS: usize = 16;
/// How long a source stays named after it last went over a limit.
const NAMED_FOR: Duration = Duration::from_secs(1);
/// Sources one worker keeps named at once.
const PER_WORKER: usize = 4;

static NAMED: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static KEY: OnceLock<FoldState> = OnceLock::new();

/// Never 0 (an empty slot).
fn hash(ip: IpAddr) -> u64 {
    KEY.get_or_init(FoldState::new).hash_one(ip) | 1
}

/// Whether some worker names `ip` now.
pub(in crate::worker) fn named(ip: IpAddr) -> bool {
    let h = hash(ip);
    NAMED[(h % SLOTS as u64) as usize].load(Relaxed) == h
}

/// One worker's named sources and when each last went over.
#[derive(Default)]
pub(in crate::worker) struct Named {
    entries: [Option<(u64, Instant)>; PER_WORKER],
}

impl Named {
    pub(in crate::worker) fn name(&mut self, ip: IpAddr, now: Instant) {
        let h = hash(ip);
        let i = match self.entries.iter().position(|e| e.is_some_and(|(x, _)| x == h)) {
            Some(i) => i,
            // A free entry, else the one named longest ago.
            None => {
                let i = (0..PER_WORKER).min_by_key(|&i| self.entries[i].map(|(_, at)| at)).unwrap_or(0);
                if let Some((old, _)) = self.entries[i] {
                    clear(old);
                }
                i
            }
        };
        self.entries[i] = Some((h, now));
        NAMED[(h % SLOTS as u64) as usize].store(h, Relaxed);
    }

    /// Un-names the sources that have stayed within their limits a second.
    pub(in crate::worker) fn expire(&mut self, now: Instant) {
        for e in &mut self.entries {
            if let Some((h, at)) = *e
                && now.saturating_duration_since(at) >= NAMED_FOR
            {
                clear(h);
                *e = None;
            }
        }
    }
}

fn clear(h: u64) {
    let _ = NAMED[(h % SLOTS as u64) as usize].compare_exchange(h, 0, Relaxed, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_sources_expire_after_a_second() {
        let t0 = Instant::now();
        let a: IpAddr = "10.99.0.1".parse().unwrap();
        let b: IpAddr = "10.99.0.2".parse().unwrap();
        let mut n = Named::default();
        n.name(a, t0);
        assert!(named(a));
        assert!(!named(b) || hash(a) % SLOTS as u64 == hash(b) % SLOTS as u64);
        n.expire(t0 + Duration::from_millis(999));
        assert!(named(a));
        n.expire(t0 + NAMED_FOR);
        assert!(!named(a));
    }
}
