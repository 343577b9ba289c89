//! Forgetting idle sources, on a virtual clock; the longest turn.

use super::*;

fn cidr(s: &str) -> Option<Cidr> {
    Some(s.parse().unwrap())
}

fn labels(r: &Registry) -> Vec<String> {
    r.per_source().into_iter().map(|(n, _)| n).collect()
}

/// Sweeps until every source has been looked at, at `now`.
fn sweep_all(t: &mut Tallies, r: &Registry, now: Instant) {
    for _ in 0..=t.sources.len() / SWEEP_BATCH {
        t.forget_idle(r, now, FORGET_IDLE);
    }
}

#[test]
fn an_idle_source_is_forgotten_after_the_interval_and_comes_back_from_zero() {
    let r = Registry::default();
    let t0 = Instant::now();
    let mut t = Tallies::new(t0);
    let tc = t.tally(&r, "a", cidr("10.8.0.10/32"));
    tc.add(|c| &c.tcp_bytes_up, 5);
    drop(tc);
    t.tally(&r, "a", None);
    sweep_all(&mut t, &r, t0); // first found idle now
    sweep_all(&mut t, &r, t0 + FORGET_IDLE - Duration::from_secs(1));
    assert_eq!(labels(&r), ["(default)", "10.8.0.10/32"]);
    // The default route's flow comes back in time: busy again.
    t.tally(&r, "a", None);
    sweep_all(&mut t, &r, t0 + FORGET_IDLE);
    assert_eq!(labels(&r), ["(default)"]);
    assert_eq!(t.sources.len(), 1);
    assert_eq!(r.per_tunnel().len(), 1, "tunnels stay");
    // It comes back: counted from 0, into new counters.
    let tc = t.tally(&r, "a", cidr("10.8.0.10/32"));
    tc.inc(|c| &c.tcp_flows_total);
    let back = r.per_source().into_iter().find(|(n, _)| n == "10.8.0.10/32").map(|(_, s)| s);
    assert_eq!(back.map(|s| (s.tcp_bytes_up, s.tcp_flows_total)), Some((0, 1)));
}

#[test]
fn a_source_with_a_flow_or_session_open_is_never_forgotten() {
    let r = Registry::default();
    let t0 = Instant::now();
    let mut t = Tallies::new(t0);
    let flow = t.tally(&r, "a", cidr("10.8.0.11/32"));
    flow.inc(|c| &c.tcp_flows_active);
    let session = t.tally(&r, "a", cidr("fd00::12/128"));
    session.inc(|c| &c.udp_sessions_active);
    for hour in 0..48 {
        sweep_all(&mut t, &r, t0 + Duration::from_secs(3600) * hour);
    }
    assert_eq!(labels(&r), ["10.8.0.11/32", "fd00::12/128"]);
    // The flow ends: forgotten only FORGET_IDLE after a sweep saw it end.
    flow.dec(|c| &c.tcp_flows_active);
    drop(flow);
    let seen = t0 + Duration::from_secs(3600) * 48;
    sweep_all(&mut t, &r, seen);
    sweep_all(&mut t, &r, seen + FORGET_IDLE - Duration::from_secs(1));
    assert_eq!(labels(&r), ["10.8.0.11/32", "fd00::12/128"]);
    sweep_all(&mut t, &r, seen + FORGET_IDLE);
    assert_eq!(labels(&r), ["fd00::12/128"]);
}

/// A DNS connection keeps a session's tally after the session ended: the
/// source is forgotten by the worker, but what the connection counts is
/// still summed until it closes.
#[test]
fn counts_of_a_holder_outliving_the_worker_entry_are_kept() {
    let r = Registry::default();
    let t0 = Instant::now();
    let mut t = Tallies::new(t0);
    let dns = t.tally(&r, "a", cidr("10.8.0.13/32"));
    dns.add(|c| &c.udp_bytes_down, 40);
    sweep_all(&mut t, &r, t0);
    dns.add(|c| &c.udp_bytes_down, 2); // just before forgetting
    sweep_all(&mut t, &r, t0 + FORGET_IDLE);
    assert!(t.sources.is_empty());
    dns.add(|c| &c.udp_bytes_down, 1);
    let s = r.per_source();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].1.udp_bytes_down, 43);
    drop(dns);
    assert!(r.per_source().is_empty());
}

#[test]
fn a_sweep_looks_at_a_bounded_number_of_sources() {
    let r = Registry::default();
    let t0 = Instant::now();
    let mut t = Tallies::new(t0);
    let n = SWEEP_BATCH * 2 + 100;
    for i in 0..n {
        let ip = std::net::Ipv6Addr::from(0xfd00_u128 << 112 | i as u128);
        t.tally(&r, "a", Some(Cidr::new(ip.into(), 128).unwrap()));
    }
    sweep_all(&mut t, &r, t0);
    let later = t0 + FORGET_IDLE;
    t.forget_idle(&r, later, FORGET_IDLE);
    assert_eq!(t.sources.len(), n - SWEEP_BATCH);
    assert_eq!(r.per_source().len(), n - SWEEP_BATCH);
    // The index stays right for what is left.
    for (i, e) in t.sources.iter().enumerate() {
        assert_eq!(t.per_source.get(&e.key), Some(&i));
    }
    t.forget_idle(&r, later, FORGET_IDLE);
    t.forget_idle(&r, later, FORGET_IDLE);
    assert!(t.sources.is_empty() && t.per_source.is_empty());
    assert!(r.per_source().is_empty());
    assert_eq!((t.sources.capacity(), t.per_source.capacity()), (0, 0), "memory given back");
}

#[test]
fn the_longest_turn_covers_the_last_one_or_two_windows() {
    let out = AtomicU64::new(0);
    let t0 = Instant::now();
    let mut turns = Turns { window_start: t0, current: 0, previous: 0 };
    let us = Duration::from_micros;
    turns.record(t0, t0 + us(900), &out);
    turns.record(t0 + us(1000), t0 + us(1100), &out);
    assert_eq!(out.load(Relaxed), 900);
    // The next window: the last one's longest is still shown.
    let w1 = t0 + TURN_WINDOW + us(5);
    turns.record(w1, w1 + us(300), &out);
    assert_eq!(out.load(Relaxed), 900);
    // Two windows on: only the last window's.
    let w2 = w1 + TURN_WINDOW + us(1000);
    turns.record(w2, w2 + us(50), &out);
    assert_eq!(out.load(Relaxed), 300);
    let w3 = w2 + TURN_WINDOW + us(1000);
    turns.record(w3, w3 + us(20), &out);
    assert_eq!(out.load(Relaxed), 50);
}
