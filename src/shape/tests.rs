//! Shapers in simulated time: sources on one tunnel, each as in its own
//! worker (its own `Shaper`, sharing only the `TunnelShare`), greedy or at
//! a steady rate, woken a little late, some with a skewed clock.

use super::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per second in a Mbit/s.
const MBIT: u64 = 125_000;
/// What a pump asks for at a time (the worker's scratch buffer).
const WANT: u64 = 256 * 1024;
/// Measurements are kept per tenth of a second.
const BIN: Duration = Duration::from_millis(100);

/// What a simulated source would move if it could.
#[derive(Debug, Clone, Copy)]
enum Demand {
    /// Always more than it is given (iperf3).
    Greedy,
    /// Bytes per second from its application, no more.
    Steady(u64),
}

struct Src {
    shaper: Shaper,
    demand: Demand,
    /// Bytes its application has written and it has not moved yet.
    pending: u64,
    /// When it runs next, and when it last did.
    next: Instant,
    last: Instant,
    /// When it stops for good.
    stop: Option<Instant>,
    /// Its worker's clock is this much behind.
    skew: Duration,
    /// Bytes moved per BIN.
    bins: Vec<u64>,
}

struct Sim {
    t0: Instant,
    srcs: Vec<Src>,
    /// A small LCG for wake-up lateness (deterministic).
    seed: u64,
}

impl Sim {
    fn new(t0: Instant) -> Sim {
        Sim { t0, srcs: Vec::new(), seed: 0x2545_f491_4f6c_dd1d }
    }

    /// A source shaped by `shaper`, running from `start` until `stop`, its
    /// clock 3 ms further behind than the last one added (another worker).
    fn add(
        &mut self,
        shaper: Option<Shaper>,
        demand: Demand,
        start: Duration,
        stop: Option<Duration>,
    ) -> usize {
        let shaper = shaper.expect("a shaped source");
        let (next, stop) = (self.t0 + start, stop.map(|s| self.t0 + s));
        let skew = Duration::from_millis(3 * self.srcs.len() as u64);
        self.srcs.push(Src { shaper, demand, pending: 0, next, last: next, stop, skew, bins: Vec::new() });
        self.srcs.len() - 1
    }

    /// 0 to 2 ms: how late a worker gets to a timer.
    fn late(&mut self) -> Duration {
        self.seed = self.seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        Duration::from_micros((self.seed >> 33) % 2000)
    }

    fn run(&mut self, length: Duration) {
        let end = self.t0 + length;
        while let Some(i) =
            (0..self.srcs.len()).filter(|&i| self.srcs[i].next < end).min_by_key(|&i| self.srcs[i].next)
        {
            let late = self.late();
            let t0 = self.t0;
            let s = &mut self.srcs[i];
            if s.stop.is_some_and(|stop| s.next >= stop) {
                s.next = end;
                continue;
            }
            step(s, t0, late);
        }
    }

    /// Source `i`'s average over `[from, to)`, Mbit/s.
    fn mbit(&self, i: usize, from: Duration, to: Duration) -> f64 {
        let bins = &self.srcs[i].bins;
        let (a, b) =
            ((from.as_millis() / BIN.as_millis()) as usize, (to.as_millis() / BIN.as_millis()) as usize);
        let bytes: u64 = bins.iter().take(b).skip(a).sum();
        bytes as f64 * 8.0 / 1e6 / (to - from).as_secs_f64()
    }

    /// Source `i`'s rate in each BIN from `from` on, Mbit/s.
    fn per_bin(&self, i: usize, from: Duration) -> Vec<f64> {
        let skip = (from.as_millis() / BIN.as_millis()) as usize;
        self.srcs[i].bins.iter().skip(skip).map(|&b| b as f64 * 8.0 / 1e6 / BIN.as_secs_f64()).collect()
    }
}

/// One turn of a source at `s.next`: ask, move what is granted, sleep.
fn step(s: &mut Src, t0: Instant, late: Duration) {
    let now = s.next;
    if let Demand::Steady(rate) = s.demand {
        s.pending += ((now - s.last).as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
    }
    s.last = now;
    let want = match s.demand {
        Demand::Greedy => WANT,
        Demand::Steady(_) => s.pending.min(WANT),
    } as usize;
    let clock = now - s.skew;
    let g = s.shaper.allow(Dir::Down, want, clock);
    assert!(g.bytes <= want);
    assert_eq!(s.shaper.consume(Dir::Down, g.bytes, clock), 0);
    s.pending = s.pending.saturating_sub(g.bytes as u64);
    let bin = ((now - t0).as_nanos() / BIN.as_nanos()) as usize;
    if s.bins.len() <= bin {
        s.bins.resize(bin + 1, 0);
    }
    s.bins[bin] += g.bytes as u64;
    s.next = match g.wake {
        Some(wake) if g.bytes < want => {
            assert!(wake > clock, "a wake-up in the future, never a busy loop");
            wake + s.skew + late
        }
        // All granted: the application writes more in a while.
        _ => now + Duration::from_millis(1),
    };
}

fn tunnel(mbit: u64, t0: Instant) -> Arc<TunnelShare> {
    Arc::new(TunnelShare::new(mbit * MBIT, t0))
}

fn weight(w: u32) -> ClassLimits {
    ClassLimits { weight: w, ..ClassLimits::NONE }
}

fn within(got: f64, want: f64, pct: f64) -> bool {
    (got - want).abs() <= want * pct / 100.0
}

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn weights_1_and_3_get_10_and_30_of_40_mbit() {
    let t0 = Instant::now();
    let t = tunnel(40, t0);
    let mut sim = Sim::new(t0);
    let a = sim.add(Shaper::new(weight(1), Some(&t), t0), Demand::Greedy, S(0), None);
    let b = sim.add(Shaper::new(weight(3), Some(&t), t0), Demand::Greedy, S(0), None);
    sim.run(S(10));
    let (ra, rb) = (sim.mbit(a, S(0), S(10)), sim.mbit(b, S(0), S(10)));
    assert!(within(ra, 10.0, 5.0) && within(rb, 30.0, 5.0), "{ra:.2} and {rb:.2} Mbit/s");
    // Past the start, closer still.
    let (ra, rb) = (sim.mbit(a, S(1), S(10)), sim.mbit(b, S(1), S(10)));
    assert!(within(ra, 10.0, 1.0) && within(rb, 30.0, 1.0), "{ra:.2} and {rb:.2} Mbit/s after 1 s");
}

#[test]
fn one_alone_gets_all_40() {
    let t0 = Instant::now();
    let t = tunnel(40, t0);
    let mut sim = Sim::new(t0);
    let a = sim.add(Shaper::new(weight(1), Some(&t), t0), Demand::Greedy, S(0), None);
    sim.run(S(10));
    let ra = sim.mbit(a, S(0), S(10));
    assert!(within(ra, 40.0, 5.0), "{ra:.2} Mbit/s");
    // Within the bucket's promise: rate × time + a burst (20 ms).
    assert!(ra <= 40.0 * 10.02 / 10.0, "{ra:.3} Mbit/s");
}

#[test]
fn when_the_busy_one_stops_the_other_takes_it_all_within_a_second() {
    let t0 = Instant::now();
    let t = tunnel(40, t0);
    let mut sim = Sim::new(t0);
    let a = sim.add(Shaper::new(weight(1), Some(&t), t0), Demand::Greedy, S(0), None);
    let b = sim.add(Shaper::new(weight(3), Some(&t), t0), Demand::Greedy, S(0), Some(S(5)));
    sim.run(S(10));
    let before = sim.mbit(a, S(1), S(5));
    assert!(within(before, 10.0, 5.0), "{before:.2} Mbit/s while sharing");
    assert_eq!(sim.mbit(b, MS(5100), S(10)), 0.0);
    let bins = sim.per_bin(a, S(5));
    let took = bins.iter().position(|&r| r >= 38.0).expect("it ramps up");
    assert!(took <= 10, "{took} tenths of a second to take it all: {bins:?}");
    assert!(bins[took..].iter().all(|&r| r >= 36.0), "and keeps it: {bins:?}");
    let after = sim.mbit(a, S(6), S(10));
    assert!(within(after, 40.0, 5.0), "{after:.2} Mbit/s alone");
}

#[test]
fn a_newcomer_gets_its_share_at_once() {
    let t0 = Instant::now();
    let t = tunnel(40, t0);
    let mut sim = Sim::new(t0);
    let a = sim.add(Shaper::new(weight(1), Some(&t), t0), Demand::Greedy, S(0), None);
    let b = sim.add(Shaper::new(weight(1), Some(&t), t0 + S(3)), Demand::Greedy, S(3), None);
    sim.run(S(6));
    let (ra, rb) = (sim.mbit(a, MS(3200), S(6)), sim.mbit(b, MS(3200), S(6)));
    assert!(within(ra, 20.0, 5.0) && within(rb, 20.0, 5.0), "{ra:.2} and {rb:.2} Mbit/s");
    let first = sim.per_bin(b, S(3))[1];
    assert!(first >= 15.0, "{first:.2} Mbit/s in its second tenth of a second");
}

#[test]
fn a_capped_source_leaves_the_rest_to_its_neighbour() {
    let t0 = Instant::now();
    let t = tunnel(40, t0);
    let mut sim = Sim::new(t0);
    let capped = ClassLimits { rate_down: Some(5 * MBIT), ..weight(1) };
    let a = sim.add(Shaper::new(capped, Some(&t), t0), Demand::Greedy, S(0), None);
    let b = sim.add(Shaper::new(weight(1), Some(&t), t0), Demand::Greedy, S(0), None);
    sim.run(S(10));
    let (ra, rb) = (sim.mbit(a, S(0), S(10)), sim.mbit(b, S(0), S(10)));
    assert!(within(ra, 5.0, 5.0) && within(rb, 35.0, 5.0), "{ra:.2} and {rb:.2} Mbit/s");
}

#[test]
fn a_light_source_leaves_what_it_does_not_use() {
    let t0 = Instant::now();
    let t = tunnel(40, t0);
    let mut sim = Sim::new(t0);
    let a = sim.add(Shaper::new(weight(1), Some(&t), t0), Demand::Steady(15 * MBIT), S(0), None);
    let b = sim.add(Shaper::new(weight(1), Some(&t), t0), Demand::Greedy, S(0), None);
    sim.run(S(10));
    let (ra, rb) = (sim.mbit(a, S(0), S(10)), sim.mbit(b, S(0), S(10)));
    assert!(within(ra, 15.0, 5.0) && within(rb, 25.0, 5.0), "{ra:.2} and {rb:.2} Mbit/s");
}

#[test]
fn a_20_mbit_class_without_a_tunnel_rate() {
    let t0 = Instant::now();
    let class = ClassLimits { rate_up: Some(20 * MBIT), rate_down: Some(20 * MBIT), weight: 1 };
    let mut sim = Sim::new(t0);
    let a = sim.add(Shaper::new(class, None, t0), Demand::Greedy, S(0), None);
    sim.run(S(10));
    let ra = sim.mbit(a, S(0), S(10));
    let bound = (20 * MBIT * 10 + burst_for(20 * MBIT)) as f64 * 8.0 / 1e6 / 10.0;
    assert!(ra <= bound && ra >= 20.0 * 0.99, "{ra:.3} Mbit/s (at most {bound:.3})");
}

#[test]
fn no_class_and_no_tunnel_rate_is_no_shaper() {
    let t0 = Instant::now();
    assert!(Shaper::new(ClassLimits::NONE, None, t0).is_none(), "nothing to shape: no shaper at all");
    let weight_only = ClassLimits { weight: 7, ..ClassLimits::NONE };
    assert!(Shaper::new(weight_only, None, t0).is_none(), "a weight without a tunnel rate shapes nothing");
    // Only one direction capped: the other is not shaped.
    let up_only = ClassLimits { rate_up: Some(MBIT), ..ClassLimits::NONE };
    let mut s = Shaper::new(up_only, None, t0).expect("up is capped");
    assert_eq!((s.rate(Dir::Up), s.rate(Dir::Down)), (Some(MBIT), None));
    assert_eq!(s.allow(Dir::Down, usize::MAX, t0), Grant::all(usize::MAX));
    assert_eq!(s.consume(Dir::Down, usize::MAX, t0), 0);
    // A tunnel rate shapes both directions of every source on it.
    let t = tunnel(40, t0);
    let s = Shaper::new(ClassLimits::NONE, Some(&t), t0).expect("shared");
    assert_eq!((s.rate(Dir::Up), s.rate(Dir::Down)), (Some(40 * MBIT), Some(40 * MBIT)));
}

#[test]
fn directions_are_shared_apart() {
    // A source greedy downstream does not take the upstream share.
    let t0 = Instant::now();
    let t = tunnel(40, t0);
    let mut down = Shaper::new(weight(1), Some(&t), t0).unwrap();
    let mut up = Shaper::new(weight(1), Some(&t), t0).unwrap();
    let mut now = t0;
    for _ in 0..2000 {
        let g = down.allow(Dir::Down, 1 << 20, now);
        down.consume(Dir::Down, g.bytes, now);
        up.allow(Dir::Up, 1000, now);
        up.consume(Dir::Up, 1000, now);
        now = g.wake.unwrap_or(now + MS(1));
    }
    assert_eq!(down.rate(Dir::Down), Some(40 * MBIT), "busy alone downstream");
    assert_eq!(up.rate(Dir::Up), Some(40 * MBIT), "light alone upstream");
}

#[test]
fn tiny_and_huge_rates_neither_overflow_nor_divide_by_zero() {
    let t0 = Instant::now();
    for (tunnel_rate, cap) in [
        (1, Some(1)),
        (1024, Some(1024)),
        (1024, None),
        (12_500_000_000, None),
        (u64::MAX, Some(u64::MAX)),
        (u64::MAX, Some(1)),
    ] {
        let t = Arc::new(TunnelShare::new(tunnel_rate, t0));
        let mut sim = Sim::new(t0);
        for w in [0, 1, 1000, u32::MAX] {
            let limits = ClassLimits { rate_down: cap, weight: w, ..ClassLimits::NONE };
            sim.add(Shaper::new(limits, Some(&t), t0), Demand::Greedy, S(0), None);
        }
        sim.run(S(1));
        for i in 0..4 {
            let moved: u64 = sim.srcs[i].bins.iter().sum();
            let most = tunnel_rate.saturating_mul(2).saturating_add(4 * burst_for(tunnel_rate));
            assert!(moved <= most, "rate {tunnel_rate}: {moved} > {most}");
            assert!(sim.srcs[i].shaper.rate(Dir::Down).is_some_and(|r| r >= 1));
        }
    }
}

#[test]
fn another_process_bytes_come_off_the_bucket() {
    // An upgrade's other process moved a burst for the same source: this
    // process's bucket has none of it left to grant.
    let t0 = Instant::now();
    let class = ClassLimits { rate_up: Some(MBIT), rate_down: Some(MBIT), weight: 1 };
    let mut here = Shaper::new(class, None, t0).unwrap();
    let mut there = Shaper::new(class, None, t0).unwrap();
    let burst = there.allow(Dir::Down, usize::MAX, t0).bytes;
    assert!(burst > 0);
    here.debit(Dir::Down, burst, t0);
    let g = here.allow(Dir::Down, usize::MAX, t0);
    assert_eq!(g.bytes, 0, "the burst went in the other process");
    assert!(g.wake.is_some());
    // The other direction is its own.
    assert_eq!(here.allow(Dir::Up, usize::MAX, t0).bytes, burst);
}
