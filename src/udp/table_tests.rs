//! Unit tests for [`SessionTable`]: each timeout, DNS-only demotion,
//! eviction across kinds, exact deadlines, replies keeping sessions alive.

use super::*;

const S: Duration = Duration::from_secs(1);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 8, 0, 10], port))
}

fn table(max: usize) -> SessionTable<u32> {
    let limits = Limits { max_sessions: max, ..Limits::default() };
    SessionTable::with_hasher(limits, FoldState::with_seeds(3, 5))
}

fn drain(t: &mut SessionTable<u32>, now: Instant) -> Vec<(SocketAddr, u32)> {
    std::iter::from_fn(|| t.pop_expired(now)).collect()
}

#[test]
fn defaults_match_spec() {
    let l = Limits::default();
    assert_eq!(l.idle_timeout, 300 * S);
    assert_eq!(l.dns_idle_timeout, 20 * S);
    assert_eq!(l.max_sessions, 65536);
}

#[test]
fn ordinary_session_expires_after_idle_timeout() {
    let t0 = Instant::now();
    let mut t = table(8);
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.insert(addr(1), 443, 7, t0), Insert::Added);
    assert_eq!(t.kind(&addr(1)), Some(Kind::Ordinary));
    assert_eq!(t.next_deadline(), Some(t0 + 300 * S));
    assert_eq!(t.deadline(&addr(1)), Some(t0 + 300 * S));
    assert!(drain(&mut t, t0 + 300 * S - Duration::from_nanos(1)).is_empty());
    // Expired exactly at the deadline, so a timer set for it makes progress.
    assert_eq!(drain(&mut t, t0 + 300 * S), [(addr(1), 7)]);
    assert!(t.is_empty());
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn dns_only_session_expires_after_dns_timeout() {
    let t0 = Instant::now();
    let mut t = table(8);
    let _ = t.insert(addr(1), 53, 1, t0);
    let _ = t.insert(addr(2), 443, 2, t0);
    assert_eq!(t.kind(&addr(1)), Some(Kind::DnsOnly));
    assert_eq!(t.dns_only_len(), 1);
    assert_eq!(t.next_deadline(), Some(t0 + 20 * S));
    // More DNS keeps it DNS-only, refreshed.
    assert!(t.touch_outbound(&addr(1), 53, t0 + 10 * S).is_some());
    assert_eq!(t.kind(&addr(1)), Some(Kind::DnsOnly));
    assert_eq!(t.next_deadline(), Some(t0 + 30 * S));
    assert!(drain(&mut t, t0 + 29 * S).is_empty());
    assert_eq!(drain(&mut t, t0 + 30 * S), [(addr(1), 1)]);
    assert_eq!(t.next_deadline(), Some(t0 + 300 * S));
    assert_eq!(t.len(), 1);
}

#[test]
fn dns_only_becomes_ordinary_for_good() {
    let t0 = Instant::now();
    let mut t = table(8);
    let _ = t.insert(addr(1), 53, 1, t0);
    assert_eq!(t.touch_outbound(&addr(1), 123, t0 + 5 * S).copied(), Some(1));
    assert_eq!(t.kind(&addr(1)), Some(Kind::Ordinary));
    assert_eq!(t.dns_only_len(), 0);
    assert_eq!(t.next_deadline(), Some(t0 + 305 * S));
    // Port 53 again does not bring the short timeout back.
    let _ = t.touch_outbound(&addr(1), 53, t0 + 6 * S);
    assert_eq!(t.kind(&addr(1)), Some(Kind::Ordinary));
    assert_eq!(t.next_deadline(), Some(t0 + 306 * S));
    assert!(drain(&mut t, t0 + 100 * S).is_empty());
}

#[test]
fn replies_keep_a_session_alive() {
    let t0 = Instant::now();
    let mut t = table(8);
    let _ = t.insert(addr(1), 443, 1, t0);
    let _ = t.insert(addr(2), 53, 2, t0);
    // Only replies, every 200 s / 15 s, for a long time.
    let mut now = t0;
    for _ in 0..10 {
        now += 15 * S;
        assert!(t.touch_inbound(&addr(2), now).is_some());
        assert!(drain(&mut t, now).is_empty());
    }
    assert_eq!(t.kind(&addr(2)), Some(Kind::DnsOnly));
    for _ in 0..10 {
        now += 200 * S;
        assert!(t.touch_inbound(&addr(1), now).is_some());
        let gone = drain(&mut t, now);
        assert!(gone.iter().all(|(a, _)| *a == addr(2)));
    }
    assert!(t.contains(&addr(1)));
    assert!(!t.contains(&addr(2)));
    assert_eq!(t.next_deadline(), Some(now + 300 * S));
    assert!(t.touch_inbound(&addr(9), now).is_none());
    assert!(t.touch_outbound(&addr(9), 53, now).is_none());
}

#[test]
fn full_table_evicts_lru_across_kinds() {
    let t0 = Instant::now();
    let mut t = table(3);
    let _ = t.insert(addr(1), 443, 1, t0);
    let _ = t.insert(addr(2), 53, 2, t0 + S);
    let _ = t.insert(addr(3), 443, 3, t0 + 2 * S);
    // addr(1) is the oldest, but a reply made it the newest: the DNS-only
    // addr(2) is now least recently used.
    let _ = t.touch_inbound(&addr(1), t0 + 3 * S);
    assert_eq!(t.insert(addr(4), 443, 4, t0 + 4 * S), Insert::Evicted(addr(2), 2));
    assert_eq!(t.insert(addr(5), 53, 5, t0 + 5 * S), Insert::Evicted(addr(3), 3));
    assert_eq!(t.insert(addr(6), 53, 6, t0 + 6 * S), Insert::Evicted(addr(1), 1));
    assert_eq!(t.len(), 3);
    // Same instant everywhere: use order still decides.
    let mut t = table(2);
    let _ = t.insert(addr(1), 53, 1, t0);
    let _ = t.insert(addr(2), 443, 2, t0);
    let _ = t.touch_outbound(&addr(1), 53, t0);
    assert_eq!(t.insert(addr(3), 53, 3, t0), Insert::Evicted(addr(2), 2));
}

#[test]
fn full_table_drops_an_expired_session_before_a_live_one() {
    let t0 = Instant::now();
    let mut t = table(2);
    let _ = t.insert(addr(1), 443, 1, t0);
    let _ = t.insert(addr(2), 53, 2, t0 + S);
    // At +30 s addr(2) (DNS) has expired though addr(1) is older.
    assert_eq!(t.insert(addr(3), 443, 3, t0 + 30 * S), Insert::Expired(addr(2), 2));
    assert_eq!(t.insert(addr(4), 443, 4, t0 + 31 * S), Insert::Evicted(addr(1), 1));
}

#[test]
fn insert_existing_replaces_value_and_kind() {
    let t0 = Instant::now();
    let mut t = table(2);
    let _ = t.insert(addr(1), 443, 1, t0);
    let _ = t.insert(addr(2), 443, 2, t0);
    assert_eq!(t.insert(addr(1), 53, 10, t0 + S), Insert::Replaced(1));
    assert_eq!(t.len(), 2);
    assert_eq!(t.get(&addr(1)), Some(&10));
    assert_eq!(t.kind(&addr(1)), Some(Kind::DnsOnly));
    assert_eq!(t.next_deadline(), Some(t0 + 21 * S));
    // It became the most recently used.
    assert_eq!(t.insert(addr(3), 443, 3, t0 + 2 * S), Insert::Evicted(addr(2), 2));
}

#[test]
fn remove_and_iter() {
    let t0 = Instant::now();
    let mut t = table(8);
    let _ = t.insert(addr(1), 443, 1, t0);
    let _ = t.insert(addr(2), 53, 2, t0);
    let _ = t.insert(addr(3), 443, 3, t0);
    *t.get_mut(&addr(3)).unwrap() = 30;
    let all: Vec<_> = t.iter().map(|(a, v)| (*a, *v)).collect();
    assert_eq!(all, [(addr(2), 2), (addr(1), 1), (addr(3), 30)]);
    assert_eq!(t.remove(&addr(1)), Some(1));
    assert_eq!(t.remove(&addr(1)), None);
    assert_eq!(t.remove(&addr(2)), Some(2));
    assert_eq!(t.next_deadline(), Some(t0 + 300 * S));
    assert_eq!(t.len(), 1);
}

#[test]
fn zero_max_sessions_holds_one() {
    let t0 = Instant::now();
    let mut t = table(0);
    assert_eq!(t.limits().max_sessions, 1);
    assert_eq!(t.insert(addr(1), 443, 1, t0), Insert::Added);
    assert_eq!(t.insert(addr(2), 443, 2, t0), Insert::Evicted(addr(1), 1));
}

#[test]
fn huge_timeouts_never_expire_and_do_not_panic() {
    let t0 = Instant::now();
    let limits = Limits { idle_timeout: Duration::MAX, dns_idle_timeout: Duration::MAX, max_sessions: 2 };
    let mut t = SessionTable::new(limits);
    let _ = t.insert(addr(1), 53, (), t0);
    let _ = t.insert(addr(2), 443, (), t0);
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.pop_expired(t0 + 1_000_000 * S), None);
    assert_eq!(t.insert(addr(3), 443, (), t0 + S), Insert::Evicted(addr(1), ()));
}

#[test]
fn clock_running_backwards_keeps_order() {
    let t0 = Instant::now() + 1000 * S;
    let mut t = table(8);
    let _ = t.insert(addr(1), 443, 1, t0);
    // A stale `now` is clamped to the newest activity in its list.
    let _ = t.insert(addr(2), 443, 2, t0 - 10 * S);
    assert_eq!(t.deadline(&addr(2)), Some(t0 + 300 * S));
    assert_eq!(t.next_deadline(), Some(t0 + 300 * S));
    assert_eq!(drain(&mut t, t0 + 300 * S).len(), 2);
}
