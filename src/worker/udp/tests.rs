//! Unit tests for the worker's UDP budgets.

use super::*;
use std::time::Duration;

fn settings(worker: usize, source: usize) -> UdpSettings {
    UdpSettings {
        idle_timeout: Duration::from_secs(300),
        dns_idle_timeout: Duration::from_secs(20),
        max_sessions: 10,
        max_reply_sockets: 4,
        pending_datagrams: 16,
        dns_over_tcp: true,
        dns_answer_timeout: Duration::from_secs(5),
        max_sessions_per_source: 10,
        new_sessions_per_source_per_sec: 10,
        new_sessions_per_source_burst: 10,
        pending_bytes_per_worker: worker,
        pending_bytes_per_source: source,
        dns_max_query_bytes: 4096,
        dns_queue_bytes_per_connection: 64 << 10,
        max_idle_sources: 4096,
    }
}

#[test]
fn pending_bytes_have_a_worker_budget_and_a_source_share() {
    let mut u = Udp::new(&settings(1000, 400), 2);
    let (a, b, c): (IpAddr, IpAddr, IpAddr) =
        ("10.8.0.10".parse().unwrap(), "10.8.0.11".parse().unwrap(), "10.8.0.12".parse().unwrap());
    // A takes its share and no more.
    assert!(u.reserve_pending(a, 300));
    assert!(!u.reserve_pending(a, 101));
    assert!(u.reserve_pending(a, 100));
    // B and C share what is left of the worker's budget.
    assert!(u.reserve_pending(b, 400));
    assert!(!u.reserve_pending(c, 201));
    assert!(u.reserve_pending(c, 200));
    assert!(!u.reserve_pending(c, 1));
    // Released bytes are free again; a source at zero is forgotten.
    u.release_pending(a, 400);
    assert!(!u.pending_by_source.contains_key(&a));
    assert!(u.reserve_pending(c, 200));
    assert_eq!(u.pending_bytes, 800);
    assert!(!u.reserve_pending(c, 1), "C at its share");
}

#[test]
fn process_wide_bounds_are_split_across_workers() {
    let u = Udp::new(&settings(1000, 400), 3);
    assert_eq!(u.table.limits().max_sessions, 3);
    assert_eq!(idle_sources_per_worker(4096, 3), 1365);
    assert_eq!(idle_sources_per_worker(0, 3), 0, "0: forgotten with the last session");
    assert_eq!(UdpSettings::per_worker(65536, 2), 32768);
    assert_eq!(UdpSettings::per_worker(1, 4), 1);
}

#[test]
fn a_reload_applies_what_a_fresh_start_would() {
    let mut fresh = settings(1000, 400);
    fresh.max_sessions = 40;
    fresh.idle_timeout = Duration::from_secs(9);
    fresh.new_sessions_per_source_burst = 3;
    fresh.pending_datagrams = 5;
    fresh.dns_over_tcp = false;
    let mut u = Udp::new(&settings(2000, 800), 2);
    u.apply(&fresh, 2);
    let want = Udp::new(&fresh, 2);
    assert_eq!(u.table.limits(), want.table.limits());
    assert_eq!((u.pending_max, u.dns_over_tcp), (5, false));
    assert_eq!((u.pending_bytes_max, u.pending_source_max), (1000, 400));
}
