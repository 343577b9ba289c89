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

    /// A bucket holding `milli` thousandths of a token (at most `burst`
    /// tokens) at `now`: one another process kept (an upgrade).
    pub fn with_level(milli: u64, burst: u32, now: Instant) -> Bucket {
        Bucket { milli: milli.min(u64::from(burst) * 1000), at: now }
    }

    /// Refills at `rate` per second up to `burst`; the thousandths of a
    /// token it holds now.
    pub fn level(&mut self, rate: u32, burst: u32, now: Instant) -> u64 {
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
        self.milli
    }

    /// No more than `milli` thousandths of a token left (what another
    /// process's bucket of the same source holds).
    pub fn lower_to(&mut self, milli: u64) {
        self.milli = self.milli.min(milli);
    }

    /// Refills at `rate` per second up to `burst`, then takes one token if
    /// there is one.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        if self.level(rate, burst, now) >= 1000 {
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
    fn a_level_handed_over_goes_on_refilling_from_there() {
        let t0 = Instant::now();
        let mut b = Bucket::new_spent(5, t0);
        for _ in 0..4 {
            assert!(b.take(1, 5, t0));
        }
        // Spent; read (refilled to now) and rebuilt elsewhere.
        let half = t0 + Duration::from_millis(500);
        assert_eq!(b.level(1, 5, half), 500);
        let mut c = Bucket::with_level(500, 5, half);
        assert!(!c.take(1, 5, half), "no fresh burst after the move");
        assert!(c.take(1, 5, t0 + Duration::from_secs(1)), "the refill goes on");
        assert_eq!(Bucket::with_level(u64::MAX, 5, t0).level(1, 5, t0), 5000, "at most the burst");
        let mut full = Bucket::with_level(5000, 5, t0);
        full.lower_to(1200);
        assert_eq!(full.level(1, 5, t0), 1200);
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
