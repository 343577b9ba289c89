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
    let limits = Limits {
        idle_timeout: Duration::MAX,
        dns_idle_timeout: Duration::MAX,
        max_sessions: 2,
        ..Limits::default()
    };
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

fn src_addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 8, 0, host], port))
}

fn fair_table(max: usize, per_source: usize) -> SessionTable<u32> {
    let limits = Limits { max_sessions: max, max_per_source: per_source, ..Limits::default() };
    SessionTable::with_hasher(limits, FoldState::with_seeds(3, 5))
}

#[test]
fn per_source_limit_evicts_the_sources_own_lru() {
    let t0 = Instant::now();
    let mut t = fair_table(100, 3);
    let _ = t.insert(src_addr(20, 1), 443, 100, t0);
    for p in 1..=3u16 {
        let _ = t.insert(src_addr(10, p), 53, u32::from(p), t0 + u32::from(p) * S);
    }
    // Port 1 is refreshed: port 2 becomes this source's least recently used.
    let _ = t.touch_outbound(&src_addr(10, 1), 53, t0 + 4 * S);
    assert_eq!(t.insert(src_addr(10, 4), 53, 4, t0 + 5 * S), Insert::SourceFull(src_addr(10, 2), 2));
    assert_eq!(t.source_len(&src_addr(10, 0).ip()), 3);
    // The other source is untouched, though its session is the oldest.
    assert_eq!(t.get(&src_addr(20, 1)), Some(&100));
    assert_eq!(t.sources_len(), 2);
}

#[test]
fn full_table_evicts_from_the_heaviest_source_not_global_lru() {
    let t0 = Instant::now();
    let mut t = fair_table(6, 100);
    // B: one old session (the global LRU), and a second one.
    let _ = t.insert(src_addr(20, 1), 443, 200, t0);
    let _ = t.insert(src_addr(20, 2), 443, 201, t0 + S);
    // A floods four new sessions: the table is full.
    for p in 1..=4u16 {
        let _ = t.insert(src_addr(10, p), 443, u32::from(p), t0 + (1 + u32::from(p)) * S);
    }
    // Each new session from A evicts A's own oldest, never B's.
    for p in 5..=20u16 {
        let got = t.insert(src_addr(10, p), 443, u32::from(p), t0 + (10 + u32::from(p)) * S);
        assert_eq!(got, Insert::Evicted(src_addr(10, p - 4), u32::from(p - 4)));
    }
    assert_eq!(t.get(&src_addr(20, 1)), Some(&200));
    assert_eq!(t.get(&src_addr(20, 2)), Some(&201));
    // A third source's new session also comes out of A's share.
    assert_eq!(t.insert(src_addr(30, 1), 443, 300, t0 + 40 * S), Insert::Evicted(src_addr(10, 17), 17));
    assert_eq!(t.source_len(&src_addr(10, 0).ip()), 3);
    // Once B holds the most, B gives up its own least recently used.
    let _ = t.touch_inbound(&src_addr(20, 1), t0 + 41 * S);
    assert_eq!(t.insert(src_addr(20, 3), 443, 202, t0 + 42 * S), Insert::Evicted(src_addr(10, 18), 18));
    assert_eq!(t.source_len(&src_addr(20, 0).ip()), 3);
    assert_eq!(t.source_len(&src_addr(10, 0).ip()), 2);
    assert_eq!(t.insert(src_addr(30, 2), 443, 301, t0 + 44 * S), Insert::Evicted(src_addr(20, 2), 201));
}

#[test]
fn new_sessions_per_source_are_rate_limited_with_a_burst() {
    let t0 = Instant::now();
    let limits = Limits { new_per_source_per_sec: 10, new_per_source_burst: 5, ..Limits::default() };
    let mut t: SessionTable<u32> = SessionTable::with_hasher(limits, FoldState::with_seeds(3, 5));
    let a = src_addr(10, 0).ip();
    let b = src_addr(20, 0).ip();
    // A source with no session: always admitted; its first insert spends one.
    let mut admitted = 0;
    for p in 0..20u16 {
        if t.admit(a, t0) == Admit::Yes {
            let _ = t.insert(src_addr(10, p), 53, 0, t0);
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "the burst");
    assert_eq!(t.admit(a, t0), Admit::OverRate);
    // Another source is not affected.
    assert_eq!(t.admit(b, t0), Admit::Yes);
    // 10 per second: one more every 100 ms, and not before.
    assert_eq!(t.admit(a, t0 + Duration::from_millis(99)), Admit::OverRate);
    assert_eq!(t.admit(a, t0 + Duration::from_millis(100)), Admit::Yes);
    assert_eq!(t.admit(a, t0 + Duration::from_millis(150)), Admit::OverRate);
    assert_eq!(t.admit(a, t0 + Duration::from_millis(200)), Admit::Yes);
    // A long pause refills to the burst, no more.
    let later = t0 + 3600 * S;
    let n = (0..20).filter(|_| t.admit(a, later) == Admit::Yes).count();
    assert_eq!(n, 5);
    // A source whose sessions all left keeps its bucket (issue 23): an
    // exit that fails every association at once cannot refill it.
    for p in 0..5u16 {
        let _ = t.remove(&src_addr(10, p));
    }
    assert_eq!((t.sources_len(), t.idle_sources_len()), (0, 2), "a idle, b admitted but never inserted");
    assert_eq!(t.admit(a, later), Admit::OverRate);
    assert_eq!(t.admit(a, later + Duration::from_millis(100)), Admit::Yes);
}

/// Issue 23: sessions that fail before they are even inserted (refused at
/// once by the exit, or by a socket error) spend the bucket all the same.
#[test]
fn sessions_that_fail_at_once_still_spend_the_bucket() {
    let t0 = Instant::now();
    let limits = Limits { new_per_source_per_sec: 20, new_per_source_burst: 40, ..Limits::default() };
    let mut t: SessionTable<u32> = SessionTable::with_hasher(limits, FoldState::with_seeds(3, 5));
    let a = src_addr(10, 0).ip();
    // 200 attempts a second for 3 s, each session gone before the next.
    let mut admitted = 0;
    for i in 0..600u32 {
        let now = t0 + Duration::from_millis(u64::from(i) * 5);
        if t.admit(a, now) == Admit::Yes {
            admitted += 1;
            if i % 2 == 0 {
                // Half of them get as far as the table, then fail.
                let _ = t.insert(src_addr(10, 1), 5000, i, now);
                let _ = t.remove(&src_addr(10, 1));
            }
        }
    }
    // burst + rate × 3 s, give or take the last refill.
    assert!((99..=100).contains(&admitted), "{admitted}");
    // With the rate state forgotten (max_idle 0, the old behaviour) every
    // attempt that reached the table came back with a full burst.
    t.set_max_idle_sources(0);
    assert_eq!(t.idle_sources_len(), 0);
    let b = src_addr(11, 0).ip();
    let n = (0..600u32).filter(|_| t.admit(b, t0) == Admit::Yes).count();
    assert_eq!(n, 600);
}

#[test]
fn idle_sources_are_bounded_least_recently_active_first() {
    let t0 = Instant::now();
    let limits = Limits { new_per_source_per_sec: 1, new_per_source_burst: 1, ..Limits::default() };
    let mut t: SessionTable<u32> = SessionTable::with_hasher(limits, FoldState::with_seeds(3, 5));
    t.set_max_idle_sources(3);
    let ip = |h: u8| src_addr(h, 0).ip();
    // Each spends its only token.
    for h in 1..=3 {
        assert_eq!(t.admit(ip(h), t0), Admit::Yes);
    }
    // 1 is active again (its attempt refused, but remembered as recent).
    assert_eq!(t.admit(ip(1), t0), Admit::OverRate);
    // A fourth idle source: the least recently active (2) is forgotten.
    assert_eq!(t.admit(ip(4), t0), Admit::Yes);
    assert_eq!(t.idle_sources_len(), 3);
    assert_eq!(t.admit(ip(2), t0), Admit::Yes, "forgotten: a full bucket");
    assert_eq!(t.admit(ip(1), t0), Admit::OverRate, "kept");
    // A source holding a session is not idle and not counted against the bound.
    let _ = t.insert(src_addr(1, 9), 443, 1, t0);
    assert_eq!((t.sources_len(), t.idle_sources_len()), (1, 2));
    let _ = t.remove(&src_addr(1, 9));
    assert_eq!((t.sources_len(), t.idle_sources_len()), (0, 3));
    assert_eq!(t.admit(ip(1), t0), Admit::OverRate, "its bucket survived its session");
    // Lowering the bound applies at once.
    t.set_max_idle_sources(1);
    assert_eq!(t.idle_sources_len(), 1);
    assert_eq!(t.admit(ip(1), t0), Admit::OverRate, "the most recently active is the one kept");
}

/// What a source costs while it is kept for its bucket alone: its arena
/// node and its index entry (README: the memory of `max_idle_sources`).
#[test]
fn an_idle_source_is_small() {
    use std::net::IpAddr;
    let node = std::mem::size_of::<super::super::lru::Node<IpAddr, super::super::source::Source>>();
    // The index: a key, a slot number and a control byte, at a load of 7/8.
    let entry = (std::mem::size_of::<(IpAddr, u32)>() + 1) * 8 / 7;
    eprintln!("idle source: node {node} + index {entry} bytes");
    assert!(node + 8 + entry <= 128, "{node} + {entry}");
}

#[test]
fn a_new_session_bucket_handed_over_gives_no_fresh_burst() {
    let t0 = Instant::now();
    let limits = Limits { new_per_source_per_sec: 10, new_per_source_burst: 5, ..Limits::default() };
    let mut old: SessionTable<u32> = SessionTable::with_hasher(limits, FoldState::with_seeds(3, 5));
    let (a, b) = (src_addr(10, 0).ip(), src_addr(20, 0).ip());
    for p in 0..5u16 {
        assert_eq!(old.admit(a, t0), Admit::Yes);
        let _ = old.insert(src_addr(10, p), 53, 0, t0);
    }
    assert_eq!(old.admit(a, t0), Admit::OverRate);
    // b spent one of its 5 then (a source's first admit): not full at t0,
    // full again a second later and then not worth handing over.
    assert_eq!(old.admit(b, t0), Admit::Yes);
    let levels = old.bucket_levels(t0);
    assert!(levels.contains(&(a, 0)) && levels.contains(&(b, 4000)), "{levels:?}");
    let later = old.bucket_levels(t0 + S);
    assert!(later.is_empty(), "{later:?}");
    let mut new: SessionTable<u32> = SessionTable::with_hasher(limits, FoldState::with_seeds(7, 9));
    for &(ip, milli) in &levels {
        new.adopt_bucket(ip, milli, t0);
    }
    assert_eq!(new.admit(a, t0), Admit::OverRate, "spent stays spent in the new process");
    assert_eq!(new.admit(a, t0 + Duration::from_millis(100)), Admit::Yes, "and refills from there");
    assert_eq!(new.idle_sources_len(), 2, "kept as idle sources until a session joins");
}
