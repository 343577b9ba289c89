//! The registry's sums and its forgetting of idle sources.

use std::sync::Arc;

use super::super::{Counters, Registry, Snapshot, prometheus};

/// The sum before issue 25: a linear search per entry, then a sort.
fn quadratic_sum(list: &[(String, Arc<Counters>)]) -> Vec<(String, Snapshot)> {
    let mut out: Vec<(String, Snapshot)> = Vec::new();
    for (name, c) in list {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => c.add_to(s),
            None => {
                let mut s = Snapshot::default();
                c.add_to(&mut s);
                out.push((name.clone(), s));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn source(r: &Registry, label: &str) -> Option<Snapshot> {
    r.per_source().into_iter().find(|(n, _)| n == label).map(|(_, s)| s)
}

#[test]
fn per_source_sums_as_before_with_many_sources() {
    let r = Registry::default();
    let mut list = Vec::new();
    // Three workers, 3 000 sources (v4 and v6, the default route), each
    // worker seeing most of them, in an order unlike the labels'.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for w in 0..3u64 {
        for i in 0..3000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 5 == w {
                continue;
            }
            let label = match i % 3 {
                0 => format!("10.{}.{}.0/24", i >> 8, i & 0xff),
                1 => format!("fd00::{i:x}/128"),
                _ if i == 2 => "(default)".to_string(),
                _ => format!("172.16.{}.{}/32", i >> 8, i & 0xff),
            };
            let c = r.source(&label);
            Counters::add(&c.tcp_bytes_up, x % 1000);
            Counters::add(&c.udp_dgrams_down, i + w);
            Counters::inc(&c.tcp_flows_active);
            list.push((label, c));
        }
    }
    let new = r.per_source();
    assert!(new.len() > 2000, "{}", new.len());
    assert_eq!(new, quadratic_sum(&list));
}

#[test]
fn per_tunnel_sums_by_name_in_order() {
    let r = Registry::default();
    let b = r.tunnel("b");
    let a1 = r.tunnel("a");
    let a2 = r.tunnel("a");
    Counters::add(&a1.tcp_bytes_up, 3);
    Counters::add(&a2.tcp_bytes_up, 4);
    Counters::add(&b.tcp_bytes_up, 1);
    let per = r.per_tunnel();
    let names: Vec<&str> = per.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!((per[0].1.tcp_bytes_up, per[1].1.tcp_bytes_up), (7, 1));
}

#[test]
fn a_forgotten_source_vanishes_with_its_series() {
    let r = Registry::default();
    let gone = r.source("10.8.0.10/32");
    let kept = r.source("10.8.0.11/32");
    Counters::add(&gone.tcp_bytes_up, 5);
    Counters::add(&kept.tcp_bytes_up, 6);
    let text = |r: &Registry| prometheus(&r.total(), &r.per_tunnel(), &r.per_source());
    assert!(text(&r).contains("egressd_tcp_bytes_up_total{source=\"10.8.0.10/32\"} 5"));
    r.forget_sources(vec![("10.8.0.10/32".to_string(), gone)]);
    let labels: Vec<String> = r.per_source().into_iter().map(|(n, _)| n).collect();
    assert_eq!(labels, ["10.8.0.11/32"]);
    let t = text(&r);
    assert!(!t.contains("10.8.0.10/32"), "{t}");
    assert!(t.contains("egressd_tcp_bytes_up_total{source=\"10.8.0.11/32\"} 6"), "{t}");
    // It comes back: a new series, from 0.
    let again = r.source("10.8.0.10/32");
    Counters::add(&again.tcp_bytes_up, 1);
    assert_eq!(source(&r, "10.8.0.10/32").map(|s| s.tcp_bytes_up), Some(1));
}

#[test]
fn one_worker_forgetting_loses_no_count_of_a_source() {
    let r = Registry::default();
    let w0 = r.source("fd00::5/128");
    let w1 = r.source("fd00::5/128");
    Counters::add(&w0.tcp_bytes_down, 100);
    Counters::add(&w1.tcp_bytes_down, 20);
    // Counted just before w0 forgets it: kept while w1 holds the source.
    Counters::add(&w0.tcp_bytes_down, 3);
    r.forget_sources(vec![("fd00::5/128".to_string(), w0)]);
    assert_eq!(source(&r, "fd00::5/128").map(|s| s.tcp_bytes_down), Some(123));
    Counters::add(&w1.tcp_bytes_down, 1);
    assert_eq!(source(&r, "fd00::5/128").map(|s| s.tcp_bytes_down), Some(124));
    r.forget_sources(vec![("fd00::5/128".to_string(), w1)]);
    assert_eq!(source(&r, "fd00::5/128"), None);
}

#[test]
fn counters_a_flow_still_holds_stay_until_it_ends() {
    let r = Registry::default();
    let worker = r.source("10.8.0.12/32");
    // A flow (or a DNS connection) holds a clone; the worker forgets.
    let flow = Arc::clone(&worker);
    Counters::add(&flow.udp_bytes_up, 7);
    r.forget_sources(vec![("10.8.0.12/32".to_string(), worker)]);
    Counters::add(&flow.udp_bytes_up, 1);
    assert_eq!(source(&r, "10.8.0.12/32").map(|s| s.udp_bytes_up), Some(8));
    // Another worker's first flow of the source meanwhile.
    let w1 = r.source("10.8.0.12/32");
    Counters::add(&w1.udp_bytes_up, 2);
    assert_eq!(source(&r, "10.8.0.12/32").map(|s| s.udp_bytes_up), Some(10));
    // The flow ends: its counts stay in the source's totals (w1 holds it).
    Counters::add(&flow.udp_bytes_up, 1);
    drop(flow);
    assert_eq!(source(&r, "10.8.0.12/32").map(|s| s.udp_bytes_up), Some(11));
    r.forget_sources(vec![("10.8.0.12/32".to_string(), w1)]);
    assert_eq!(source(&r, "10.8.0.12/32"), None);
}

#[test]
fn the_last_holder_ending_lets_the_source_go() {
    let r = Registry::default();
    let worker = r.source("10.8.0.13/32");
    let flow = Arc::clone(&worker);
    r.forget_sources(vec![("10.8.0.13/32".to_string(), worker)]);
    assert!(source(&r, "10.8.0.13/32").is_some());
    drop(flow);
    // Looked at again on the next read.
    assert_eq!(source(&r, "10.8.0.13/32"), None);
    // Forgetting what is unknown, or twice, is harmless.
    r.forget_sources(vec![("10.8.0.13/32".to_string(), Arc::default())]);
    assert!(r.per_source().is_empty());
}

/// A worker registers and forgets its counters of a source again and
/// again while another worker holds it and a reader sums: the source's
/// total never goes down, and ends at what was counted.
#[test]
fn totals_never_go_down_while_workers_forget_and_readers_read() {
    let r = Arc::new(Registry::default());
    let held = r.source("10.8.0.14/32");
    Counters::inc(&held.tcp_flows_total);
    let reader = {
        let r = Arc::clone(&r);
        std::thread::spawn(move || {
            let mut last = 0;
            for _ in 0..2000 {
                let now = source(&r, "10.8.0.14/32").map_or(0, |s| s.tcp_flows_total);
                assert!(now >= last, "went down from {last} to {now}");
                last = now;
            }
        })
    };
    for _ in 0..2000 {
        let c = r.source("10.8.0.14/32");
        Counters::inc(&c.tcp_flows_total);
        let flow = Arc::clone(&c);
        r.forget_sources(vec![("10.8.0.14/32".to_string(), c)]);
        Counters::inc(&flow.tcp_flows_total);
    }
    reader.join().unwrap();
    assert_eq!(source(&r, "10.8.0.14/32").map(|s| s.tcp_flows_total), Some(4001));
}

#[test]
fn the_longest_turn_is_the_longest_over_workers() {
    let r = Registry::default();
    let (a, b) = (r.thread(), r.thread());
    Counters::set(&a.worker_turn_max_us, 1500);
    Counters::set(&b.worker_turn_max_us, 700);
    Counters::add(&a.tcp_accepted, 2);
    Counters::add(&b.tcp_accepted, 3);
    let t = r.total();
    assert_eq!((t.worker_turn_max_us, t.tcp_accepted), (1500, 5));
    let text = prometheus(&t, &r.per_tunnel(), &r.per_source());
    assert!(
        text.contains(
            "# TYPE egressd_worker_turn_max_seconds gauge\negressd_worker_turn_max_seconds 0.001500\n"
        ),
        "{text}"
    );
}

#[test]
fn carried_counts_add_to_totals_tunnels_and_sources_but_not_gauges() {
    use std::time::{Duration, Instant};
    // The old process of an upgrade.
    let old = Registry::default();
    let t = old.thread();
    Counters::add(&t.tcp_bytes_up, 700);
    Counters::add(&t.tcp_flows_active, 3);
    let tun = old.tunnel("exit1");
    Counters::add(&tun.tcp_bytes_up, 700);
    let src = old.source("10.8.0.10/32");
    Counters::add(&src.tcp_bytes_up, 700);
    Counters::add(&src.tcp_flows_active, 3);
    let handed = old.counted();
    // Only totals travel, by name.
    let names = handed.total.totals();
    assert_eq!(names, vec![("tcp_bytes_up".to_string(), 700)]);
    assert_eq!(Snapshot::from_totals(&names).tcp_bytes_up, 700);
    assert_eq!(
        Snapshot::from_totals(&[("no_such_counter".into(), 5), ("tcp_flows_active".into(), 9)]),
        Snapshot::default()
    );

    let new = Registry::default();
    new.tunnel("exit1");
    let later = Instant::now() + Duration::from_secs(600);
    new.carry(&handed, later);
    assert_eq!(new.total().tcp_bytes_up, 700);
    assert_eq!(new.total().tcp_flows_active, 0, "gauges are the new process's own");
    assert_eq!(
        new.per_tunnel(),
        vec![("exit1".to_string(), Snapshot { tcp_bytes_up: 700, ..Snapshot::default() })]
    );
    assert_eq!(source(&new, "10.8.0.10/32").map(|s| (s.tcp_bytes_up, s.tcp_flows_active)), Some((700, 0)));
    // The new process counts on top; the drain's counts come at the end.
    let w = new.source("10.8.0.10/32");
    Counters::add(&w.tcp_bytes_up, 5);
    Counters::add(&src.tcp_bytes_up, 40);
    let drained = old.counted().since(&handed);
    assert_eq!(
        drained.sources,
        vec![("10.8.0.10/32".to_string(), Snapshot { tcp_bytes_up: 40, ..Snapshot::default() })]
    );
    new.carry(&drained, later);
    assert_eq!(source(&new, "10.8.0.10/32").unwrap().tcp_bytes_up, 745);
}

#[test]
fn a_carried_count_cannot_overflow_the_sums() {
    use std::time::{Duration, Instant};
    // Another process's numbers, however large: capped as they come in, so
    // reading the sums (which check for overflow in tests) never wraps.
    let big = Snapshot::from_totals(&[("tcp_bytes_up".into(), u64::MAX)]);
    assert_eq!(big.tcp_bytes_up, super::super::MAX_CARRIED);
    let huge =
        super::Counted { total: big, tunnels: Vec::new(), sources: vec![("10.8.0.10/32".into(), big)] };
    let r = Registry::default();
    let later = Instant::now() + Duration::from_secs(600);
    for _ in 0..3 {
        r.carry(&huge, later);
    }
    Counters::add(&r.thread().tcp_bytes_up, u64::MAX >> 2);
    assert_eq!(r.total().tcp_bytes_up, u64::MAX);
    assert_eq!(source(&r, "10.8.0.10/32").unwrap().tcp_bytes_up, 3 * super::super::MAX_CARRIED);
    // One more: the counts saturate, they do not wrap.
    r.carry(&huge, later);
    assert_eq!(r.total().tcp_bytes_up, u64::MAX);
    assert_eq!(source(&r, "10.8.0.10/32").unwrap().tcp_bytes_up, u64::MAX);
}

#[test]
fn a_carried_source_no_worker_takes_up_goes_in_time() {
    use std::time::{Duration, Instant};
    let counted = |label: &str| super::Counted {
        sources: vec![(label.to_string(), Snapshot { udp_dgrams_up: 9, ..Snapshot::default() })],
        ..super::Counted::default()
    };
    let r = Registry::default();
    // Due already: let go at the next read.
    r.carry(&counted("10.8.0.20/32"), Instant::now() - Duration::from_millis(1));
    // A worker takes this one up before its time: it stays.
    r.carry(&counted("10.8.0.21/32"), Instant::now() - Duration::from_millis(1));
    let w = r.source("10.8.0.21/32");
    // Not due: stays.
    r.carry(&counted("10.8.0.22/32"), Instant::now() + Duration::from_secs(600));
    let left: Vec<String> = r.per_source().into_iter().map(|(n, _)| n).collect();
    assert_eq!(left, vec!["10.8.0.21/32".to_string(), "10.8.0.22/32".to_string()]);
    assert_eq!(source(&r, "10.8.0.21/32").unwrap().udp_dgrams_up, 9);
    // Forgotten by its worker, it goes as any source does.
    r.forget_sources(vec![("10.8.0.21/32".to_string(), w)]);
    assert!(source(&r, "10.8.0.21/32").is_none());
}
