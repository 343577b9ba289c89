//! The worker loop's own tests; each room's are beside it.

use std::cmp::Reverse;
use std::time::Instant;

use mio::Token;

use super::*;
use crate::config::Tunnel;
use crate::relay::Pump;

/// Issue 5's budget: an idle TCP flow costs well under 1 KiB of user
/// space (its slab entry plus one timer entry), with no buffer or pipe.
#[test]
fn an_idle_flow_is_small() {
    let per_flow = std::mem::size_of::<Flow>() + std::mem::size_of::<Reverse<(Instant, Token)>>();
    // 264 bytes: handshake state boxed until the tunnel opens, 48-byte
    // pumps, and shaping's wake-up (16 bytes, issue 26). Debug builds of
    // mio add a selector id to each stream.
    let most = if cfg!(debug_assertions) { 296 } else { 264 };
    assert!(per_flow <= most, "a flow takes {per_flow} bytes");
    eprintln!("an idle TCP flow: {per_flow} bytes of user space");
    assert_eq!(Pump::default().held_capacity(), 0);
}

/// The live routes a worker reads, for a worker made alone in a test.
fn live(s: &Arc<Settings>) -> Arc<dyn Routing> {
    Arc::new(crate::snapshot::Live::new(crate::snapshot::Shared::new(Arc::clone(s))))
}

fn settings(extra: &str) -> Arc<Settings> {
    let text = format!(
        r#"(listen: ["10.8.0.1:10900"], tunnels: {{ "a": Direct() }},
            routes: [(source: "10.8.0.10", tunnel: "a")], threads: 1, {extra})"#
    );
    Arc::new(Settings::parse("t.ron", &text).unwrap())
}

/// Issue 14: a reload reaches what the worker built at start-up.
#[test]
fn a_reload_applies_live() {
    let a = settings("");
    let b = settings(
        "tcp: (idle_timeout_secs: 7, splice: false), \
         udp: (idle_timeout_secs: 9, max_sessions: 5, pending_datagrams: 3, dns_over_tcp: false)",
    );
    let (mut w, h) = WorkerLoop::new(0, Arc::clone(&a), live(&a), &Common::default()).unwrap();
    assert!(w.relay.splice);
    assert!(h.command(Command::Settings(b), Duration::from_secs(1)));
    w.take_handoffs(usize::MAX);
    assert!(!w.relay.splice, "tcp.splice");
    assert_eq!(w.settings.tcp.idle_timeout, Duration::from_secs(7));
    assert_eq!(w.udp.pending_max, 3, "udp.pending_datagrams");
    let l = w.udp.table.limits();
    assert_eq!((l.max_sessions, l.idle_timeout), (5, Duration::from_secs(9)), "udp table limits");
}

/// Issue 23: a UDP session of a new source takes a place under its
/// route's cap (shared with TCP and the other workers); the source's
/// last session ending gives it back.
#[test]
fn udp_sessions_count_against_the_sources_per_route_cap() {
    let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() },
        routes: [(source: "10.8.0.0/24", tunnel: "a")], threads: 1, max_sources_per_route: 2)"#;
    let s = Arc::new(Settings::parse("t.ron", text).unwrap());
    let limits = Arc::new(SharedLimits::default());
    let (mut w, _h) = WorkerLoop::new(
        0,
        Arc::clone(&s),
        live(&s),
        &Common { limits: Arc::clone(&limits), ..Default::default() },
    )
    .unwrap();
    let tunnels: Arc<[Arc<Tunnel>]> = s.tunnels.iter().cloned().map(Arc::new).collect();
    let net: Cidr = "10.8.0.0/24".parse().unwrap();
    let send = |w: &mut WorkerLoop, from: &str| {
        let mut b = Box::new(UdpBatch::new(Arc::clone(&tunnels)));
        b.push(from.parse().unwrap(), "127.0.0.1:9".parse().unwrap(), (Some(net), 0), b"x");
        w.on_batch(b);
    };
    send(&mut w, "10.8.0.10:1000");
    send(&mut w, "10.8.0.10:1001"); // the same source again: not new
    send(&mut w, "10.8.0.11:1000");
    send(&mut w, "10.8.0.12:1000"); // a third address: past the cap
    assert_eq!(limits.cap.sources(Some(net)), 2);
    assert_eq!(w.udp.table.len(), 3);
    assert_eq!(w.counters.udp_drop_source_cap.load(std::sync::atomic::Ordering::Relaxed), 1);
    // .10's sessions end: its place goes to .12.
    assert_eq!(w.end_sessions_of("10.8.0.10/32".parse().unwrap()), 2);
    assert_eq!(limits.cap.sources(Some(net)), 1);
    send(&mut w, "10.8.0.12:1000");
    assert_eq!(limits.cap.sources(Some(net)), 2);
    assert_eq!(w.udp.table.len(), 2);
    assert_eq!(w.counters.udp_drop_source_cap.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Issue 14: `--reset-flows` is delivered even when the hand-off queue
/// is full, and says so when it cannot be.
#[test]
fn a_reset_survives_a_full_queue_or_says_it_did_not() {
    use crate::control::{Control, Request};
    use crate::snapshot::{Live, Shared};
    let s = settings("");
    let live = Arc::new(Live::new(Shared::new(Arc::clone(&s))));
    let routing: Arc<dyn Routing> = live.clone();
    let (w, h) = WorkerLoop::new(0, Arc::clone(&s), routing, &Common::default()).unwrap();
    let tunnels: Arc<[Arc<Tunnel>]> = s.tunnels.iter().cloned().map(Arc::new).collect();
    let mut full = 0;
    while h.try_send(Handoff::Udp(Box::new(UdpBatch::new(Arc::clone(&tunnels))))).is_ok() {
        full += 1;
    }
    assert_eq!(full, QUEUE, "the hand-off queue is full");
    let ctl = Control {
        live,
        workers: vec![h],
        registry: Arc::default(),
        pools: Arc::default(),
        quota: Arc::new(crate::quota::Keeper::detached()),
        upgrades: Arc::default(),
    };
    let source: Cidr = "10.8.0.11/32".parse().unwrap();
    let set = Request::RouteSet { source, tunnel: "a".into(), reset: true };
    // The answer waits until the worker has done the reset: here a thread
    // stands in for the worker's loop, and says when it has.
    let commands = w.commands.clone();
    let did = std::thread::spawn(move || match commands.recv_timeout(Duration::from_secs(10)) {
        Ok(Command::ResetSource(c, done)) => {
            std::thread::sleep(Duration::from_millis(200));
            let at = Instant::now();
            done.send(()).unwrap();
            (c, at)
        }
        other => panic!("not a reset: {other:?}"),
    });
    let body = ctl.handle(set.clone()).unwrap();
    let answered = Instant::now();
    let (c, done_at) = did.join().unwrap();
    assert_eq!(c, source);
    assert!(answered >= done_at, "route set answered before the worker had reset the flows");
    assert!(body.contains("its flows were reset"), "{body}");
    // A worker that takes the order but never does it: the answer says so.
    let e = ctl.handle(set.clone()).unwrap_err();
    assert!(e.contains("was not done by 1 of 1 workers"), "{e}");
    assert!(matches!(w.commands.try_recv(), Ok(Command::ResetSource(c, _)) if c == source));
    // A worker that never takes its commands (its queue full): so too.
    let (tx, _rx) = crossbeam_channel::bounded(1);
    while ctl.workers[0].command(Command::ResetSource(source, tx.clone()), Duration::ZERO) {}
    let e = ctl.handle(set).unwrap_err();
    assert!(e.contains("was not done by 1 of 1 workers"), "{e}");
    assert!(e.contains("(set)"), "{e}");
}
