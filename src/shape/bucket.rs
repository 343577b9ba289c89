//! A byte token bucket: how many payload bytes one direction of a source
//! may move now, and when it may move more. Sans-IO: every call takes `now`.
//!
//! Tokens are kept in billionths of a byte (nano-bytes): `dt` nanoseconds
//! at `rate` bytes/s refill exactly `dt × rate` of them, so no remainder is
//! ever dropped and a bucket does not drift however long it runs (the
//! per-source flow bucket, `crate::bucket`, does the same in thousandths).
//!
//! The caller asks before it moves bytes ([`ByteBucket::allow`]: nothing
//! is taken) and says what actually moved afterwards
//! ([`ByteBucket::consume`]): a socket that had fewer bytes than granted
//! costs only what it had, and bytes that moved without asking (a datagram
//! larger than the grant, a handshake's leftovers) put the bucket in debt,
//! repaid before the next grant.
//!
//! ```text
//!   level ──refill at rate, up to burst──► level
//!   allow(want):  level ≥ want            ─► Grant { bytes: want, wake: None }
//!                 level ≥ min(want,chunk) ─► Grant { bytes: level, wake: Some(next chunk) }
//!                 else (empty or in debt) ─► Grant { bytes: 0, wake: Some(next chunk) }
//!   consume(n):   level −= n, down to −debt_max (the rest is forgiven)
//! ```

use std::time::{Duration, Instant};

/// Nano-bytes per byte.
const NANO: i128 = 1_000_000_000;

/// The burst is this much time at the rate: small (the issue asks for
/// bytes ≤ rate × time + burst, and 20 ms adds 0.2 % over 10 s), yet long
/// enough that a wake-up up to ¾ of it late loses nothing (see
/// [`ByteBucket::chunk`]): a worker busy with other sockets for a few
/// milliseconds, or epoll's millisecond timeouts, cost no rate.
pub const BURST_TIME: Duration = Duration::from_millis(20);
/// The least burst: below about a dozen TCP segments a slow source would
/// move a fraction of a segment per wake-up.
pub const BURST_MIN: u64 = 16 * 1024;
/// How far in debt a bucket may go: a second at its rate, ...
pub const DEBT_TIME: Duration = Duration::from_secs(1);
/// ... and at least this much, more than any one read or datagram the
/// relay moves (its scratch buffer is 256 KiB, a datagram at most 64 KiB),
/// so that what moved unasked is repaid in full; only a caller that moves
/// far more than it asks for has the excess forgiven (and told so).
pub const DEBT_MIN: u64 = 256 * 1024;
/// The longest wait a grant names: at absurdly low rates (a few bytes a
/// second in debt) the caller comes back after this and is told to wait again.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The default burst for a rate: [`BURST_TIME`] of it, at least [`BURST_MIN`].
pub fn burst_for(rate: u64) -> u64 {
    bytes_in(rate, BURST_TIME).max(BURST_MIN)
}

/// Bytes `rate` moves in `t`, floored, saturating at `u64::MAX`.
fn bytes_in(rate: u64, t: Duration) -> u64 {
    let nb = u128::from(rate).saturating_mul(t.as_nanos()) / NANO as u128;
    u64::try_from(nb).unwrap_or(u64::MAX)
}

/// What a direction may move now.
///
/// A caller moves at most `bytes` and reports what moved with `consume`.
/// `wake` is `Some` exactly when fewer bytes than asked were granted: if
/// the caller used the whole grant and still has bytes to move, it arms a
/// timer for `wake` and leaves that direction alone until then (the socket
/// stays unread, so TCP's window closes and the sender slows down: that is
/// the backpressure). At `wake` the bucket holds a useful chunk again, so
/// a starved direction costs one wake-up per chunk, never a busy loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Bytes that may move now: 0 to what was asked.
    pub bytes: usize,
    /// When the next chunk beyond `bytes` is there; `None`: all was granted.
    pub wake: Option<Instant>,
}

impl Grant {
    /// Everything asked for (no bucket, or enough tokens).
    pub fn all(want: usize) -> Grant {
        Grant { bytes: want, wake: None }
    }
}

/// A token bucket of bytes (see the module doc).
#[derive(Debug, Clone)]
pub struct ByteBucket {
    /// Bytes per second, at least 1.
    rate: u64,
    /// The most tokens kept, bytes, at least 1.
    burst: u64,
    /// Nano-bytes; negative while in debt.
    level: i128,
    /// When `level` was last refilled.
    at: Instant,
}

impl ByteBucket {
    /// A full bucket with the default burst ([`burst_for`]).
    pub fn new(rate: u64, now: Instant) -> ByteBucket {
        ByteBucket::with_burst(rate, burst_for(rate), now)
    }

    /// A full bucket; a rate or burst of 0 is taken as 1.
    pub fn with_burst(rate: u64, burst: u64, now: Instant) -> ByteBucket {
        let burst = burst.max(1);
        ByteBucket { rate: rate.max(1), burst, level: i128::from(burst) * NANO, at: now }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// A new rate and burst from `now` on: the time until `now` refills at
    /// the old rate; tokens over a lowered burst are dropped.
    pub fn set(&mut self, rate: u64, burst: u64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1);
        self.burst = burst.max(1);
        self.level = self.level.min(i128::from(self.burst) * NANO);
    }

    /// The debt the bucket may carry, bytes: [`DEBT_TIME`] at its rate, at
    /// least [`DEBT_MIN`].
    pub fn debt_max(&self) -> u64 {
        bytes_in(self.rate, DEBT_TIME).max(DEBT_MIN)
    }

    /// The least a wake-up waits for: a quarter of the burst (5 ms at the
    /// rate with the default burst, so at most ~200 wake-ups a second, and
    /// a wake-up may come 15 ms late before tokens spill over the burst),
    /// but no more than a second's worth (one wake-up a second at tiny rates).
    pub fn chunk(&self) -> u64 {
        (self.burst / 4).min(self.rate).max(1)
    }

    /// How many of `want` bytes may move now (nothing is taken: see
    /// [`ByteBucket::consume`]). Grants nothing until a useful chunk,
    /// `min(want, chunk)`, is there, so that a starved direction is not
    /// woken for a few bytes at a time.
    pub fn allow(&mut self, want: usize, now: Instant) -> Grant {
        self.refill(now);
        if want == 0 {
            return Grant::all(0);
        }
        // 0 ≤ have ≤ burst: fits in u64.
        let have = u64::try_from(self.level.max(0) / NANO).unwrap_or(u64::MAX);
        let want64 = u64::try_from(want).unwrap_or(u64::MAX);
        if have >= want64 {
            return Grant::all(want);
        }
        let useful = want64.min(self.chunk());
        let bytes = if have >= useful { have } else { 0 };
        // After `bytes` go, the level is this; the next chunk comes on top.
        let left = self.level - i128::from(bytes) * NANO;
        let need = i128::from(useful) * NANO - left;
        // bytes ≤ have < want: fits in usize.
        Grant { bytes: usize::try_from(bytes).unwrap_or(want), wake: Some(now + self.time_for(need)) }
    }

    /// Takes `n` bytes that moved (granted or not). Below the most debt
    /// allowed the rest is forgiven: returns how many bytes were.
    pub fn consume(&mut self, n: usize, now: Instant) -> u64 {
        self.refill(now);
        let n = i128::try_from(n).unwrap_or(i128::MAX / NANO);
        self.level -= n * NANO;
        let floor = -i128::from(self.debt_max()) * NANO;
        if self.level >= floor {
            return 0;
        }
        let forgiven = (floor - self.level) / NANO;
        self.level = floor;
        u64::try_from(forgiven).unwrap_or(u64::MAX)
    }

    /// Tokens for the time since the last refill, up to the burst.
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at);
        if dt.is_zero() {
            return;
        }
        self.at = now;
        let cap = i128::from(self.burst) * NANO;
        if self.level >= cap {
            return;
        }
        // Exact: nanoseconds × bytes/s = nano-bytes. Saturating only past
        // 2^128, then capped to the room below the burst.
        let room = (cap - self.level) as u128;
        let add = dt.as_nanos().saturating_mul(u128::from(self.rate)).min(room);
        self.level += add as i128;
    }

    /// How long `need` nano-bytes take at the rate, rounded up (so that at
    /// the end of it they are there), at most [`MAX_WAIT`].
    fn time_for(&self, need: i128) -> Duration {
        let need = u128::try_from(need.max(0)).unwrap_or(0);
        let ns = need.div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).min(MAX_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// 20 Mbit/s in bytes per second.
    const MBIT20: u64 = 2_500_000;

    /// A greedy direction: asks for `want` at every turn, moves all it is
    /// granted, sleeps until the wake-up (plus `late`) when short. Returns
    /// the bytes moved by `t0 + secs` and the wake-ups taken.
    fn greedy(b: &mut ByteBucket, t0: Instant, secs: u64, want: usize, late: Duration) -> (u64, u64) {
        let (end, mut now) = (t0 + Duration::from_secs(secs), t0);
        let (mut moved, mut wakes) = (0u64, 0u64);
        while now < end {
            let g = b.allow(want, now);
            assert!(g.bytes <= want);
            assert_eq!(b.consume(g.bytes, now), 0, "granted bytes are never forgiven");
            moved += g.bytes as u64;
            match g.wake {
                Some(w) => {
                    assert!(w > now, "a wake-up is in the future");
                    now = w + late;
                    wakes += 1;
                }
                None => now += MS / 10,
            }
        }
        (moved, wakes)
    }

    #[test]
    fn twenty_mbit_over_ten_seconds_is_the_rate_within_the_burst() {
        let t0 = Instant::now();
        for (want, late) in [(256 * 1024, Duration::ZERO), (64 * 1024, 3 * MS), (1500, Duration::ZERO)] {
            let mut b = ByteBucket::new(MBIT20, t0);
            assert_eq!(b.burst(), 50_000, "20 ms of 2.5 MB/s");
            let (moved, _) = greedy(&mut b, t0, 10, want, late);
            let ideal = MBIT20 * 10;
            assert!(moved <= ideal + b.burst(), "want {want}: {moved} > {ideal} + burst");
            assert!(moved * 100 >= ideal * 99, "want {want}, {late:?} late: {moved} < 99 % of {ideal}");
        }
    }

    #[test]
    fn no_drift_over_a_long_run() {
        // 1 KiB/s in steps of an uneven number of nanoseconds for an hour:
        // what moved and what is left add up to rate × time exactly.
        let t0 = Instant::now();
        let mut b = ByteBucket::with_burst(1024, 1 << 30, t0);
        b.consume(1 << 30, t0);
        let (mut now, mut moved) = (t0, 0i128);
        let step = Duration::from_nanos(333_333_337);
        while now + step <= t0 + Duration::from_secs(3600) {
            now += step;
            let g = b.allow(usize::MAX, now);
            b.consume(g.bytes, now);
            moved += g.bytes as i128;
        }
        assert!(moved > 3_600_000, "tokens were granted along the way");
        let exact = (now - t0).as_nanos() as i128 * 1024;
        assert_eq!(moved * NANO + b.level, exact, "every nano-byte is kept");
    }

    #[test]
    fn an_empty_bucket_names_its_wake_up_and_then_grants_a_chunk() {
        let t0 = Instant::now();
        let mut b = ByteBucket::new(MBIT20, t0);
        let g = b.allow(1 << 20, t0);
        assert_eq!((g.bytes, g.wake.is_some()), (50_000, true), "the burst, and when to come back");
        b.consume(g.bytes, t0);
        let g = b.allow(1 << 20, t0);
        assert_eq!(g.bytes, 0);
        let wake = g.wake.expect("a wake-up when empty");
        // A chunk is a quarter of the burst: 12 500 bytes, 5 ms at 2.5 MB/s.
        assert_eq!(b.chunk(), 12_500);
        assert_eq!(wake - t0, 5 * MS);
        let just_before = b.allow(1 << 20, wake - Duration::from_nanos(1));
        assert_eq!(just_before.bytes, 0, "no crumbs before the chunk");
        assert_eq!(just_before.wake, Some(wake), "the same wake-up again");
        assert_eq!(b.allow(1 << 20, wake).bytes, 12_500, "a useful chunk at the wake-up");
        // A small want is granted as soon as it is there.
        let mut b = ByteBucket::new(MBIT20, t0);
        b.consume(50_000, t0);
        let g = b.allow(100, t0);
        assert_eq!((g.bytes, g.wake), (0, Some(t0 + Duration::from_micros(40))));
        assert_eq!(b.allow(100, t0 + Duration::from_micros(40)), Grant::all(100));
    }

    #[test]
    fn a_starved_direction_wakes_once_per_chunk() {
        let t0 = Instant::now();
        let mut b = ByteBucket::new(MBIT20, t0);
        let (moved, wakes) = greedy(&mut b, t0, 1, 1 << 20, Duration::ZERO);
        let chunks = moved / b.chunk();
        assert!(wakes <= chunks + 1, "{wakes} wake-ups for {chunks} chunks");
        assert!(wakes >= 190, "{wakes}: about 200 a second");
    }

    #[test]
    fn debt_is_repaid_before_the_next_grant() {
        let t0 = Instant::now();
        let mut b = ByteBucket::new(MBIT20, t0);
        // The burst (50 000) and 200 000 more: 80 ms of debt at 2.5 MB/s.
        assert_eq!(b.consume(250_000, t0), 0);
        let g = b.allow(1000, t0);
        assert_eq!(g.bytes, 0);
        // Debt plus the 1000 wanted: 201 000 bytes, 80.4 ms.
        assert_eq!(g.wake, Some(t0 + Duration::from_micros(80_400)));
        assert_eq!(b.allow(1000, t0 + 80 * MS).bytes, 0, "still repaying");
        assert_eq!(b.allow(1000, t0 + Duration::from_micros(80_400)).bytes, 1000);
    }

    #[test]
    fn debt_is_bounded_and_the_excess_forgiven() {
        let t0 = Instant::now();
        let mut b = ByteBucket::new(1024, t0);
        assert_eq!(b.debt_max(), DEBT_MIN, "1 KiB/s: a second is less than the floor");
        // Full (16 KiB), then 16 KiB + 256 KiB + 10 more.
        assert_eq!(b.consume(2 * 16 * 1024 + 256 * 1024 + 10, t0), 16 * 1024 + 10);
        let g = b.allow(1, t0);
        assert_eq!(g.wake, Some(t0 + MAX_WAIT), "256 s of debt: the wait is capped, not the debt");
        assert_eq!(b.allow(1, t0 + Duration::from_secs(256)).bytes, 0);
        assert_eq!(b.allow(1, t0 + Duration::from_secs(256) + MS).bytes, 1);
        let fast = ByteBucket::new(MBIT20, t0);
        assert_eq!(fast.debt_max(), MBIT20, "a second at 2.5 MB/s");
    }

    #[test]
    fn tiny_and_huge_rates_neither_overflow_nor_divide_by_zero() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(10 * 365 * 24 * 3600);
        for rate in [0, 1, 7, 1024, MBIT20, 12_500_000_000, 1 << 62, u64::MAX - 1, u64::MAX] {
            let mut b = ByteBucket::new(rate, t0);
            assert!(b.burst() >= BURST_MIN && b.chunk() >= 1 && b.debt_max() >= DEBT_MIN);
            for want in [0, 1, 1500, 1 << 20, usize::MAX] {
                let g = b.allow(want, t0);
                assert!(g.bytes <= want, "rate {rate}");
                assert_eq!(g.wake.is_some(), g.bytes < want, "rate {rate}, want {want}");
                b.consume(g.bytes, t0);
            }
            b.consume(usize::MAX, t0 + MS);
            let g = b.allow(usize::MAX, far);
            assert!(g.bytes > 0, "rate {rate}: ten years repay any debt");
            b.set(rate / 3, burst_for(rate / 3), far + MS);
            b.allow(usize::MAX, far + 2 * MS);
        }
    }

    #[test]
    fn a_new_rate_applies_from_now_and_a_lowered_burst_at_once() {
        let t0 = Instant::now();
        let mut b = ByteBucket::with_burst(1000, 1000, t0);
        b.consume(1000, t0);
        // 0.5 s at 1000/s, then 0.5 s at 100/s: 550 bytes.
        b.set(100, 1000, t0 + 500 * MS);
        assert_eq!(b.allow(10_000, t0 + 1000 * MS).bytes, 550);
        b.set(100, 200, t0 + 1000 * MS);
        assert_eq!(b.allow(10_000, t0 + 1000 * MS).bytes, 200, "cut to the new burst");
    }
}
