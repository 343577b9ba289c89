use std::time::Duration;

use super::*;
use crate::config::OnQuota;

const T0: u64 = 1_765_000_000_000;
const DAY: u64 = 86_400_000;

fn quota(bytes: u64, every_ms: u64) -> Quota {
    Quota { bytes, every: Duration::from_millis(every_ms), on: OnQuota::Reject }
}

/// A wall clock and a monotonic clock that move together unless told.
struct Clocks {
    wall: u64,
    mono: Instant,
}

impl Clocks {
    fn new() -> Clocks {
        Clocks { wall: T0, mono: Instant::now() }
    }

    fn pass(&mut self, ms: u64) {
        self.wall += ms;
        self.mono += Duration::from_millis(ms);
    }

    fn tick(&self, l: &Ledger) -> Tick {
        l.tick(self.wall, self.mono)
    }
}

#[test]
fn a_meter_counts_until_spent() {
    let l = Ledger::new();
    let m = l.meter("web", &quota(1000, DAY), T0);
    assert!(!m.spent());
    m.add(999);
    assert!(!m.spent());
    m.add(1);
    assert!(m.spent(), "spent at the quota, not past it");
    let again = l.meter("web", &quota(1000, DAY), T0 + 5);
    assert!(Arc::ptr_eq(&m, &again), "one meter per identity");
    // A raised quota (config reload) applies at once.
    l.meter("web", &quota(2000, DAY), T0 + 6);
    assert!(!m.spent());
    let rows = l.rows();
    assert_eq!(
        rows,
        [Row {
            identity: "web".into(),
            used: 1000,
            limit: Some(2000),
            left: Some(1000),
            period_end: (T0 + DAY) / 1000,
            spent: false,
            closed: false
        }]
    );
}

#[test]
fn periods_advance_in_whole_periods_of_fractional_days() {
    // every_days: 0.0002 is 17.28 s.
    let len = 17_280;
    let mut c = Clocks::new();
    let l = Ledger::new();
    let m = l.meter("web", &quota(100, len), c.wall);
    c.tick(&l);
    m.add(100);
    c.pass(len - 1);
    assert_eq!(c.tick(&l).renewed, Vec::<String>::new());
    assert!(m.spent(), "one millisecond before the boundary it is still spent");
    c.pass(1);
    assert_eq!(c.tick(&l).renewed, ["web"]);
    assert!(!m.spent() && m.used() == 0, "renewed at the boundary");
    m.add(7);
    // Three and a half periods later (egressd was busy, or ticks were late):
    // the period is the one holding now, started on a whole boundary.
    c.pass(len * 3 + len / 2);
    c.tick(&l);
    assert_eq!(m.used(), 0);
    let start = l.snapshot().entries[0].start_ms;
    assert_eq!(start, T0 + 4 * len);
    assert_eq!(l.rows()[0].period_end, (T0 + 5 * len).div_ceil(1000));
}

#[test]
fn wall_clock_jumps_do_not_reset_counters() {
    for jump in [DAY as i64 * 40, -(DAY as i64) * 3, 61_000, -61_000] {
        let mut c = Clocks::new();
        let l = Ledger::new();
        let m = l.meter("web", &quota(1000, 30 * DAY), c.wall);
        c.tick(&l);
        m.add(600);
        c.pass(10_000);
        c.wall = c.wall.checked_add_signed(jump).unwrap();
        let t = c.tick(&l);
        assert_eq!(t.jump_ms, Some(jump), "{jump}");
        assert!(t.renewed.is_empty(), "{jump}");
        assert_eq!(m.used(), 600, "a jump of {jump} ms kept the counter");
        // The period keeps its real length: it ends 30 days after it began,
        // as the monotonic clock measures them.
        let end = l.rows()[0].period_end * 1000;
        assert_eq!(end as i64, (T0 + 30 * DAY) as i64 + jump, "{jump}");
        c.pass(30 * DAY - 10_000 - 1);
        assert!(c.tick(&l).renewed.is_empty(), "{jump}");
        c.pass(1);
        assert_eq!(c.tick(&l).renewed, ["web"], "{jump}");
    }
}

#[test]
fn small_drift_is_not_a_jump() {
    let mut c = Clocks::new();
    let l = Ledger::new();
    l.meter("web", &quota(1000, DAY), c.wall);
    c.tick(&l);
    c.pass(5_000);
    c.wall += 59_000;
    assert_eq!(c.tick(&l).jump_ms, None, "NTP-sized corrections are the wall clock's to make");
    assert_eq!(l.snapshot().entries[0].start_ms, T0);
}

#[test]
fn a_meter_made_after_a_jump_is_not_moved_by_it() {
    let mut c = Clocks::new();
    let l = Ledger::new();
    c.tick(&l);
    c.pass(1000);
    c.wall += 3 * DAY;
    l.meter("new", &quota(1000, DAY), c.wall);
    assert_eq!(c.tick(&l).jump_ms, Some(3 * DAY as i64));
    assert_eq!(l.snapshot().entries[0].start_ms, c.wall, "its start was taken after the jump");
}

#[test]
fn a_changed_period_applies_from_the_next_boundary() {
    let mut c = Clocks::new();
    let l = Ledger::new();
    let m = l.meter("web", &quota(1000, 10_000), c.wall);
    c.tick(&l);
    c.pass(4_000);
    m.add(5);
    l.meter("web", &quota(1000, 30_000), c.wall);
    assert_eq!(l.rows()[0].period_end, (T0 + 10_000) / 1000, "this period keeps its end");
    c.pass(6_000);
    assert_eq!(c.tick(&l).renewed, ["web"]);
    assert_eq!(
        l.snapshot().entries[0],
        Entry { identity: "web".into(), start_ms: T0 + 10_000, len_ms: 30_000, used: 0 }
    );
    // Changed back before the boundary: nothing pending.
    l.meter("web", &quota(1000, 20_000), c.wall);
    l.meter("web", &quota(1000, 30_000), c.wall);
    c.pass(30_000);
    c.tick(&l);
    assert_eq!(l.snapshot().entries[0].len_ms, 30_000);
    assert_eq!(l.snapshot().entries[0].start_ms, T0 + 40_000);
}

#[test]
fn restored_counters_carry_on_and_expired_periods_renew() {
    let state = State {
        closed: None,
        entries: vec![
            Entry { identity: "web".into(), start_ms: T0 - DAY / 2, len_ms: DAY, used: 900 },
            Entry { identity: "old".into(), start_ms: T0 - 3 * DAY - 5, len_ms: DAY, used: 900 },
        ],
    };
    let l = Ledger::restore(state);
    assert_eq!(l.rows().iter().map(|r| r.limit).collect::<Vec<_>>(), [None, None], "no quota known yet");
    let c = Clocks::new();
    assert_eq!(c.tick(&l).renewed, ["old"]);
    let web = l.meter("web", &quota(1000, DAY), c.wall);
    assert_eq!(web.used(), 900);
    web.add(100);
    assert!(web.spent(), "the allowance used before the restart counts");
    let old = l.snapshot().entries.into_iter().find(|e| e.identity == "old").unwrap();
    assert_eq!((old.start_ms, old.used), (T0 - 5, 0));
    // A restored counter near u64::MAX cannot wrap.
    let l = Ledger::restore(State {
        closed: None,
        entries: vec![Entry { identity: "x".into(), start_ms: T0, len_ms: DAY, used: u64::MAX }],
    });
    let m = l.meter("x", &quota(u64::MAX, DAY), T0);
    m.add(u64::MAX / 4);
    assert!(m.used() > 1 << 62);
}

#[test]
fn another_process_credit_cannot_wrap_a_counter() {
    let l = Ledger::new();
    let m = l.meter("web", &quota(1000, DAY), T0);
    m.add(1000);
    assert!(m.spent());
    // What an upgrade's other process reports, however large, never wraps
    // the counter back under the quota.
    assert!(l.credit("web", u64::MAX));
    assert!(l.credit("web", u64::MAX));
    assert!(m.spent(), "used {}", m.used());
    assert_eq!(m.used(), 1 << 62);
    assert!(!l.credit("nobody", 1), "an unknown identity is not made");
}

#[test]
fn failed_closed_until_reset() {
    let l = Ledger::failed_closed("/var/lib/egressd/quota.state.corrupt-9".into());
    let web = l.meter("web", &quota(1000, DAY), T0);
    let db = l.meter("db", &quota(1000, DAY), T0);
    assert!(web.spent() && db.spent(), "every metered identity is refused");
    assert_eq!(l.rows()[1].left, Some(0));
    assert!(l.rows().iter().all(|r| r.closed && r.spent));
    // Only reset identities are saved, under the closed mark.
    assert_eq!(
        l.snapshot(),
        State { closed: Some("/var/lib/egressd/quota.state.corrupt-9".into()), entries: vec![] }
    );
    assert!(!l.reset("nobody", T0), "unknown identities are not made up");
    assert!(l.reset("web", T0 + 1000));
    assert!(!web.spent() && db.spent());
    let saved = l.snapshot();
    assert_eq!(saved.entries.iter().map(|e| e.identity.as_str()).collect::<Vec<_>>(), ["web"]);
    // After a restart: still closed for db, open for web.
    let l = Ledger::restore(saved);
    assert!(!l.meter("web", &quota(1000, DAY), T0 + 2000).spent());
    let db = l.meter("db", &quota(1000, DAY), T0 + 2000);
    assert!(db.spent());
    assert_eq!(l.reset_all(T0 + 3000), 2);
    assert!(!db.spent());
    assert_eq!(l.closed(), None);
    assert!(!l.meter("new", &quota(1000, DAY), T0 + 4000).spent(), "closed no more");
}

#[test]
fn reset_starts_a_new_period_now() {
    let l = Ledger::new();
    let m = l.meter("web", &quota(10, DAY), T0);
    m.add(50);
    assert!(m.spent());
    assert!(l.reset("web", T0 + 5000));
    assert_eq!(m.used(), 0);
    assert_eq!(l.snapshot().entries[0].start_ms, T0 + 5000);
}

#[test]
fn concurrent_adds_sum_exactly() {
    let l = Arc::new(Ledger::new());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    let name = if i % 2 == 0 { "even" } else { "odd" };
                    l.meter(name, &quota(u64::MAX, DAY), T0).add(t + 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rows = l.rows();
    // Each thread adds t+1 five thousand times to each.
    let each: u64 = (1..=8).map(|t| t * 5_000).sum();
    assert_eq!(rows.iter().map(|r| r.used).collect::<Vec<_>>(), [each, each]);
}

/// An identity unused for a whole period and held by no flow is dropped
/// (container names do not pile up); one in use, or used, is kept.
#[test]
fn idle_identities_are_forgotten_after_an_unused_period() {
    let mut c = Clocks::new();
    let l = Ledger::new();
    c.tick(&l);
    let gone = l.meter("gone", &quota(1000, DAY), c.wall);
    gone.add(10);
    drop(gone);
    let held = l.meter("held", &quota(1000, DAY), c.wall);
    // First boundary: "gone" was used, so it renews.
    c.pass(DAY + 1);
    assert_eq!(c.tick(&l).renewed, vec!["gone".to_string(), "held".to_string()]);
    // A second, unused: "gone" is forgotten; "held" is held by a flow.
    c.pass(DAY);
    assert_eq!(c.tick(&l).renewed, vec!["held".to_string()]);
    let names: Vec<String> = l.rows().into_iter().map(|r| r.identity).collect();
    assert_eq!(names, vec!["held".to_string()]);
    drop(held);
}

#[test]
fn identities_are_bounded_by_dropping_the_least_used_one_no_flow_holds() {
    let l = Ledger::new();
    let q = quota(1 << 30, 3_600_000);
    // The first two are held by flows; the rest used 1 byte or more each.
    let held_idle = l.meter("held-idle", &q, 1_000);
    let held = l.meter("held", &q, 1_000);
    held.add(5);
    for i in 0..MAX_IDENTITIES - 2 {
        l.meter(&format!("c{i}"), &q, 1_000).add(10 + i as u64);
    }
    assert_eq!(l.used_by().len(), MAX_IDENTITIES);
    // A new one: the least used unheld one (c0) makes room.
    l.meter("newcomer", &q, 1_000);
    let names: std::collections::HashSet<String> = l.used_by().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), MAX_IDENTITIES);
    assert!(names.contains("newcomer") && !names.contains("c0"));
    assert!(names.contains("held-idle") && names.contains("held"), "held ones stay, used or not");
    assert_eq!(l.dropped(), 1);
    // A known one makes no room.
    l.meter("c1", &q, 1_000);
    assert_eq!(l.dropped(), 1);
    drop((held_idle, held));
}
