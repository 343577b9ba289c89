//! A token bucket per source: new UDP sessions (udp/source.rs), new TCP
//! flows (worker/limits.rs). Sans-IO: every call takes `now`.

use std::time::Instant;

/// Tokens in thousandths, so that any rate refills exactly in integer
/// arithmetic.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    milli: u64,
    at: Instant,
}

impl Bucket {
    /// A full bucket less the token taken by what is being opened now.
    pub fn new_spent(burst: u32, now: Instant) -> Bucket {
        Bucket { milli: u64::from(burst).saturating_sub(1) * 1000, at: now }
    }

    /// Refills at `rate` per second up to `burst`, then takes one token if
    /// there is one.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let cap = u64::from(burst) * 1000;
        let dt = now.saturating_duration_since(self.at);
        // micro-seconds × tokens/s ÷ 1000 = milli-tokens.
        let add = (dt.as_micros().saturating_mul(u128::from(rate)) / 1000).min(u128::from(cap)) as u64;
        if add > 0 {
            self.milli = (self.milli + add).min(cap);
            self.at = now;
        }
        // A reload may have lowered the burst.
        self.milli = self.milli.min(cap);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new_spent(3, t0);
        assert!(b.take(2, 3, t0));
        assert!(b.take(2, 3, t0));
        assert!(!b.take(2, 3, t0), "the burst is spent");
        assert!(!b.take(2, 3, t0 + Duration::from_millis(499)));
        assert!(b.take(2, 3, t0 + Duration::from_millis(500)), "2/s: one token after 0.5 s");
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(2, 3, later));
        }
        assert!(!b.take(2, 3, later), "never more than the burst");
    }

    #[test]
    fn a_lowered_burst_applies_at_once() {
        let t0 = Instant::now();
        let mut b = Bucket::new_spent(100, t0);
        assert!(b.take(1, 2, t0), "capped to the new burst of 2");
        assert!(b.take(1, 2, t0));
        assert!(!b.take(1, 2, t0));
        assert!(b.take(1, 2, t0 + Duration::from_secs(1)));
    }
}
