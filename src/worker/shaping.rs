//! Bandwidth shaping in a worker (issue 26): the shapers of the sources
//! whose flows and sessions live here, and the tunnels' shared boards.
//!
//! ```text
//!  start_flow / open_session ─► Shapers::open(source) ─► shaped? (Flow.shaped, Session.shaped)
//!      one Shaper per source and worker, counted by its flows and sessions;
//!      the last one to end (Shapers::close) drops it
//!  relay: grant = shaper.allow(dir, want) ─► pump_within(grant) ─► consume(read)
//!      Pumped::Shaped with a wake ─► one Kind::Shape timer per flow ─► pumped again
//!  UDP: a datagram the bucket cannot take whole is dropped (udp_drop_shaped)
//!  reload ─► Shapers::apply: boards take the new tunnel rates, every shaper
//!      is built again with its source's class now (open flows follow at once)
//!  every second (Shapers::publish) ─► shape_rate_up/down gauges of the source:
//!      the rate each shaped address is held to now (moved by the difference,
//!      taken back when its last flow ends)
//! ```
//!
//! Unused, it costs nothing: with no class and no tunnel `rate` in the
//! config, `open` returns false without a lookup, a flow's pumps test one
//! `bool` and take the unshaped path they always took.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::gate::{Gate, Metered};
use super::meters::{Meters, Used};
use crate::config::{Quota, Settings, Tunnel};
use crate::quota::Ledger;
use crate::shape::{ClassLimits, Dir, Shaper, TunnelShare};
use crate::snapshot::RouteView;
use crate::stats::{Counters, Tally};
use crate::udp::FoldState;

/// What the route view says of a source when its shaper is built: its
/// class's limits, and its quota with whose it is (identity).
pub(super) type Holds = (Option<ClassLimits>, Option<(String, Quota)>);

/// [`Holds`] of `ip` in `view`.
pub(super) fn holds(view: &dyn RouteView, ip: IpAddr) -> Holds {
    (view.class(ip), view.quota(ip))
}

/// How often the rate gauges follow the shapers' rates.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes a pump asks its shaper for at a time: one scratch buffer.
pub(super) const WANT: usize = super::SCRATCH;

/// The tunnels' boards, by tunnel name, shared by every worker: a board
/// lives as long as the process (a reload sets its rate, never replaces it,
/// so open shapers keep sharing with the new ones). Locked only when a
/// source's shaper is built.
#[derive(Debug, Default)]
pub struct Boards(Mutex<HashMap<String, Arc<TunnelShare>>>);

impl Boards {
    /// The board of the tunnel `name` if it has a `rate` (made at the
    /// first ask).
    fn of(&self, name: &str, rate: Option<u64>, now: Instant) -> Option<Arc<TunnelShare>> {
        let rate = rate?;
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let b = m.entry(name.to_string()).or_insert_with(|| Arc::new(TunnelShare::new(rate, now)));
        Some(Arc::clone(b))
    }

    /// The reloaded tunnels' rates (boards of tunnels without one now stay,
    /// unused).
    fn apply(&self, s: &Settings) {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for t in &s.tunnels {
            if let (Some(rate), Some(b)) = (t.rate, m.get(&t.name)) {
                b.set_rate(rate);
            }
        }
    }
}

/// A source's gate (shaper and quota) and what built it.
struct Entry {
    gate: Gate,
    /// Flows and sessions of the source in this worker that use it.
    users: u32,
    tunnel: Arc<Tunnel>,
    /// The source's counters (the first user's tally), and the rates up
    /// and down last added to their `shape_rate_*` gauges.
    tally: Tally,
    published: [u64; 2],
    /// Its quota identity, when metered (for the meter exchange).
    identity: Option<String>,
    /// Said refused once since its last new user: its flows were ended
    /// then, and a refused source opens no new one (no sweep every second).
    swept: bool,
}

impl Entry {
    /// The rates the shaper holds the source to now, as the gauges show them.
    fn rates(&self) -> [u64; 2] {
        [shown(&self.gate, Dir::Up), shown(&self.gate, Dir::Down)]
    }

    /// The gauges move from what was last added to `rates`.
    fn publish(&mut self, all: &Counters, rates: [u64; 2]) {
        let [up, down] = self.published;
        self.tally.shift_all(all, |c| &c.shape_rate_up, up, rates[0]);
        self.tally.shift_all(all, |c| &c.shape_rate_down, down, rates[1]);
        self.published = rates;
    }
}

/// The rate a gauge shows for a direction: 0 when it is not held (no
/// lane, or an uncapped one left by a reload).
fn shown(g: &Gate, dir: Dir) -> u64 {
    g.rate(dir).filter(|&r| r < UNCAPPED).unwrap_or(0)
}

/// A worker's shapers, by source address.
pub(super) struct Shapers {
    /// The config has a class or a tunnel rate: without, nothing is shaped.
    on: bool,
    /// A class has a quota: without, no flow asks for its quota.
    metered: bool,
    boards: Arc<Boards>,
    /// The quota counters, shared by every worker (issue 27).
    ledger: Arc<Ledger>,
    map: HashMap<IpAddr, Entry, FoldState>,
    next_publish: Instant,
    /// The meter exchange of an upgrade (see `meters`): while it is on,
    /// what the gates moved is reported every [`REPORT_EVERY`]; `pending`
    /// holds what gates dropped since the last report moved.
    meters: Arc<Meters>,
    reporting: bool,
    pending: Used,
    next_report: Instant,
}

/// How often a worker reports what its gates moved while an upgrade's
/// processes share the sources' rates and quotas.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Shapers {
    pub(super) fn new(
        s: &Settings,
        boards: Arc<Boards>,
        ledger: Arc<Ledger>,
        meters: Arc<Meters>,
    ) -> Shapers {
        let (on, metered) = (in_use(s), s.metered());
        let now = Instant::now();
        Shapers {
            on,
            metered,
            boards,
            ledger,
            map: HashMap::default(),
            next_publish: now,
            meters,
            reporting: false,
            pending: Used::default(),
            next_report: now,
        }
    }

    /// Whether `source`'s quota is spent and rejects (a new flow or session
    /// is refused before anything opens for it); `quota` is asked only
    /// when the source has no gate here yet and shaping is in use.
    pub(super) fn refuses(&self, source: IpAddr, quota: impl FnOnce() -> Option<(String, Quota)>) -> bool {
        if !self.metered {
            return false;
        }
        if let Some(e) = self.map.get(&source) {
            return e.gate.refused();
        }
        let Some((identity, q)) = quota() else { return false };
        q.on == crate::config::OnQuota::Reject
            && self.ledger.meter(&identity, &q, crate::quota::store::now_ms()).spent()
    }

    /// The gate of `source` from what its route says (`holds`).
    fn build(&self, tunnel: (&str, Option<u64>), holds: Holds, now: Instant) -> Option<Gate> {
        let (limits, quota) = holds;
        let board = self.boards.of(tunnel.0, tunnel.1, now);
        let shaper = Shaper::new(limits.unwrap_or(ClassLimits::NONE), board.as_ref(), now);
        let metered = quota.map(|(identity, q)| {
            Metered::new(self.ledger.meter(&identity, &q, crate::quota::store::now_ms()), q.on, now)
        });
        Gate::new(shaper, metered)
    }

    /// A flow or session of `source` on `tunnel`, counting in `tally`,
    /// starts: true when it is shaped or metered (it then holds the
    /// source's gate until `close`). `holds` is asked only when shaping is
    /// in use.
    pub(super) fn open(
        &mut self,
        source: IpAddr,
        (tunnel, tally): (&Arc<Tunnel>, &Tally),
        holds: impl FnOnce() -> Holds,
        now: Instant,
    ) -> bool {
        if !self.on {
            return false;
        }
        if let Some(e) = self.map.get_mut(&source) {
            e.users += 1;
            e.swept = false;
            return true;
        }
        let holds = holds();
        let identity = holds.1.as_ref().map(|(id, _)| id.clone());
        let Some(gate) = self.build((&tunnel.name, tunnel.rate), holds, now) else { return false };
        let e = Entry {
            gate,
            users: 1,
            tunnel: Arc::clone(tunnel),
            tally: tally.clone(),
            published: [0, 0],
            identity,
            swept: false,
        };
        self.map.insert(source, e);
        true
    }

    /// A shaped flow or session of `source` ended; the last one takes the
    /// source's rates back from the gauges (`all`: the worker's counters).
    pub(super) fn close(&mut self, source: IpAddr, all: &Counters) {
        if let Some(e) = self.map.get_mut(&source) {
            e.users = e.users.saturating_sub(1);
            if e.users == 0 {
                e.publish(all, [0, 0]);
                if let Some(mut e) = self.map.remove(&source)
                    && self.reporting
                {
                    add_used(&mut self.pending, source, &mut e);
                }
            }
        }
    }

    /// Once a second (at the end of a loop turn): the `shape_rate_*`
    /// gauges follow the rates the shapers hold their sources to now; the
    /// sources whose quota now refuses are pushed to `refused` (their open
    /// flows end, even idle ones), once until a new flow or session joins.
    pub(super) fn publish(&mut self, all: &Counters, now: Instant, refused: &mut Vec<IpAddr>) {
        if self.map.is_empty() || now < self.next_publish {
            return;
        }
        self.next_publish = now + PUBLISH_EVERY;
        for (ip, e) in &mut self.map {
            let rates = e.rates();
            e.publish(all, rates);
            if e.gate.refused() && !e.swept {
                e.swept = true;
                refused.push(*ip);
            }
        }
    }

    /// Every [`REPORT_EVERY`] while the meter exchange is on (and once
    /// more with `last`, as the worker ends): what the gates moved goes to
    /// the processes linked to this one. Turned on, it starts from 0.
    pub(super) fn report(&mut self, now: Instant, last: bool) {
        let on = self.meters.on();
        if on != self.reporting {
            self.reporting = on;
            // What moved before the exchange began is no one's business.
            self.pending = Used::default();
            for e in self.map.values_mut() {
                e.gate.take_used();
            }
            self.next_report = now + REPORT_EVERY;
            return;
        }
        if !on || (now < self.next_report && !last) {
            return;
        }
        self.next_report = now + REPORT_EVERY;
        for (ip, e) in &mut self.map {
            add_used(&mut self.pending, *ip, e);
        }
        // A source may have two rows (one from a closed gate): the link's
        // sender sums what it sends.
        self.meters.send(None, &std::mem::take(&mut self.pending));
    }

    /// When the next report is due (for the worker's poll timeout).
    pub(super) fn next_report(&self) -> Option<Instant> {
        (self.reporting && !(self.map.is_empty() && self.pending.is_empty())).then_some(self.next_report)
    }

    /// What another process's flows of these sources moved: their gates'
    /// buckets here take it (sources without a gate here move nothing).
    pub(super) fn debit(&mut self, rates: &[(IpAddr, [u64; 2])], now: Instant) {
        for (ip, [up, down]) in rates {
            if let Some(e) = self.map.get_mut(ip) {
                e.gate.debit(Dir::Up, *up, now);
                e.gate.debit(Dir::Down, *down, now);
            }
        }
    }

    /// No source of this worker is shaped: the per-datagram test that
    /// keeps unshaped UDP free (one load).
    pub(super) fn none(&self) -> bool {
        self.map.is_empty()
    }

    /// The gate of a shaped or metered source.
    pub(super) fn get(&mut self, source: IpAddr) -> Option<&mut Gate> {
        self.map.get_mut(&source).map(|e| &mut e.gate)
    }

    /// Reloaded settings: the boards take the tunnels' new rates and every
    /// shaper is built again with its source's class and tunnel rate now
    /// (`class`), so a changed rate applies to open flows, a rate given to
    /// a tunnel by the reload too. A source whose new class caps
    /// nothing keeps an uncapping shaper until its flows end.
    pub(super) fn apply(&mut self, s: &Settings, holds: impl Fn(IpAddr) -> Holds, now: Instant) {
        (self.on, self.metered) = (in_use(s), s.metered());
        self.boards.apply(s);
        let ips: Vec<IpAddr> = self.map.keys().copied().collect();
        for ip in ips {
            let Some(e) = self.map.get(&ip) else { continue };
            // The tunnel's rate now: one that gained a rate shares it at once.
            let rate = s.tunnels.iter().find(|t| t.name == e.tunnel.name).and_then(|t| t.rate);
            let holds = holds(ip);
            let identity = holds.1.as_ref().map(|(id, _)| id.clone());
            let gate = self.build((&e.tunnel.name, rate), holds, now);
            if let Some(e) = self.map.get_mut(&ip) {
                // What the old gate moved is still to be reported.
                let (used, metered) = e.gate.take_used();
                e.gate = gate.unwrap_or_else(|| uncapped(now));
                e.gate.restore_used(used, metered);
                e.identity = identity.or(e.identity.take());
            }
        }
    }

    /// Sources with a shaper here.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Adds what `e`'s gate moved since its last report to `u`.
fn add_used(u: &mut Used, ip: IpAddr, e: &mut Entry) {
    let (used, metered) = e.gate.take_used();
    if used != [0, 0] {
        u.rates.push((ip, used));
    }
    if let (Some(id), true) = (&e.identity, metered > 0) {
        u.quota.push((id.clone(), metered));
    }
}

/// Whether a config shapes or meters anything: a class (a quota is a
/// class's), or a tunnel with a rate.
fn in_use(s: &Settings) -> bool {
    !s.classes.is_empty() || s.tunnels.iter().any(|t| t.rate.is_some())
}

/// The rate of a lane that holds nothing back.
const UNCAPPED: u64 = u64::MAX / 4;

/// A shaper that lets everything through (a source whose class was
/// lifted by a reload, until its flows end).
fn uncapped(now: Instant) -> Gate {
    let limits = ClassLimits { rate_up: Some(UNCAPPED), rate_down: Some(UNCAPPED), weight: 1 };
    Gate::new(Shaper::new(limits, None, now), None).expect("a capped class has a shaper")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn tally() -> Tally {
        Tally { tunnel: Arc::default(), source: Arc::default() }
    }

    fn settings(text: &str) -> Settings {
        Settings::parse("t.ron", text).unwrap()
    }

    const PLAIN: &str =
        r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() }, routes: [], default: Tunnel("a"))"#;
    const RATED: &str = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct(rate: "40mbit") },
        classes: { "slow": (rate: "20mbit") }, routes: [], default: Tunnel("a"))"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_classes_or_rates_nothing_is_shaped_nor_looked_up() {
        let s = settings(PLAIN);
        let mut sh = Shapers::new(&s, Arc::default(), Arc::default(), Arc::default());
        let t = Arc::new(s.tunnels[0].clone());
        let looked = std::cell::Cell::new(false);
        let class = || {
            looked.set(true);
            (None, None)
        };
        assert!(!sh.open(ip("10.8.0.10"), (&t, &tally()), class, Instant::now()));
        assert!(!looked.get(), "no class lookup when shaping is off");
        assert_eq!(sh.len(), 0);
    }

    #[test]
    fn a_source_shares_one_shaper_until_its_last_user_ends() {
        let s = settings(RATED);
        let boards = Arc::new(Boards::default());
        let mut sh = Shapers::new(&s, Arc::clone(&boards), Arc::default(), Arc::default());
        let t = Arc::new(s.tunnels[0].clone());
        let now = Instant::now();
        // No class, but the tunnel's rate is shared: shaped.
        let (tc, all) = (tally(), Counters::default());
        assert!(sh.open(ip("10.8.0.10"), (&t, &tc), || (None, None), now));
        assert!(sh.open(ip("10.8.0.10"), (&t, &tc), || (None, None), now));
        assert_eq!(sh.len(), 1);
        // The gauges show the rate it is held to: alone, all of the tunnel's.
        sh.publish(&all, now, &mut Vec::new());
        assert_eq!(tc.source.shape_rate_down.load(Relaxed), 5_000_000);
        assert_eq!(all.shape_rate_up.load(Relaxed), 5_000_000);
        sh.close(ip("10.8.0.10"), &all);
        assert_eq!(sh.len(), 1);
        sh.close(ip("10.8.0.10"), &all);
        assert_eq!(sh.len(), 0);
        // The last user gone, its rates leave the gauges.
        assert_eq!(tc.source.shape_rate_down.load(Relaxed), 0);
        assert_eq!(tc.tunnel.shape_rate_up.load(Relaxed), 0);
        assert_eq!(all.shape_rate_up.load(Relaxed), 0);
        // Another worker's shapers share the same board.
        let other = Shapers::new(&s, Arc::clone(&boards), Arc::default(), Arc::default());
        assert!(Arc::ptr_eq(&boards, &other.boards));
        assert_eq!(boards.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_reload_applies_the_new_class_rate_to_open_shapers() {
        let s = settings(RATED);
        let mut sh = Shapers::new(&s, Arc::default(), Arc::default(), Arc::default());
        let plain = Arc::new(settings(PLAIN).tunnels[0].clone());
        let now = Instant::now();
        let cap = |r: u64| Some(ClassLimits { rate_up: Some(r), rate_down: Some(r), weight: 1 });
        let (tc, all) = (tally(), Counters::default());
        assert!(sh.open(ip("10.8.0.10"), (&plain, &tc), || (cap(2_500_000), None), now));
        assert_eq!(sh.get(ip("10.8.0.10")).unwrap().rate(Dir::Down), Some(2_500_000));
        sh.publish(&all, now, &mut Vec::new());
        assert_eq!(tc.source.shape_rate_down.load(Relaxed), 2_500_000);
        sh.apply(&s, |_| (cap(1_250_000), None), now);
        assert_eq!(sh.get(ip("10.8.0.10")).unwrap().rate(Dir::Down), Some(1_250_000));
        // Published again a second later, not at once.
        sh.publish(&all, now, &mut Vec::new());
        assert_eq!(tc.source.shape_rate_down.load(Relaxed), 2_500_000);
        sh.publish(&all, now + PUBLISH_EVERY, &mut Vec::new());
        assert_eq!(tc.source.shape_rate_down.load(Relaxed), 1_250_000);
        // Lifted: lets everything through until the flows end, and the
        // gauge says it is not held.
        sh.apply(&settings(PLAIN), |_| (None, None), now);
        let g = sh.get(ip("10.8.0.10")).unwrap().allow(Dir::Up, 1 << 20, now);
        assert_eq!(g.bytes, 1 << 20);
        sh.publish(&all, now + 2 * PUBLISH_EVERY, &mut Vec::new());
        assert_eq!(tc.source.shape_rate_down.load(Relaxed), 0);
        // The flow's tunnel gains a rate by a reload: its open flow shares it.
        let rated = settings(
            r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct(rate: "8mbit") },
            routes: [], default: Tunnel("a"))"#,
        );
        sh.apply(&rated, |_| (None, None), now);
        assert_eq!(sh.get(ip("10.8.0.10")).unwrap().rate(Dir::Down), Some(1_000_000));
    }

    #[test]
    fn with_the_meter_exchange_on_gates_report_and_take_the_other_process_bytes() {
        let s = settings(RATED);
        let meters = Arc::new(Meters::default());
        let mut sh = Shapers::new(&s, Arc::default(), Arc::default(), Arc::clone(&meters));
        let plain = Arc::new(settings(PLAIN).tunnels[0].clone());
        let now = Instant::now();
        let cap = Some(ClassLimits { rate_up: Some(1_000_000), rate_down: Some(1_000_000), weight: 1 });
        let (a, tc, all) = (ip("10.8.0.10"), tally(), Counters::default());
        assert!(sh.open(a, (&plain, &tc), || (cap, None), now));
        // Before any link: bytes move, nothing is reported.
        sh.get(a).unwrap().consume(Dir::Down, 5000, now);
        sh.report(now, false);
        assert_eq!(sh.next_report(), None);
        let (_, rx) = meters.link();
        // Turned on: it starts from 0.
        sh.report(now, false);
        sh.get(a).unwrap().consume(Dir::Down, 700, now);
        sh.get(a).unwrap().consume(Dir::Up, 30, now);
        assert_eq!(sh.next_report(), Some(now + REPORT_EVERY));
        sh.report(now + REPORT_EVERY / 2, false);
        assert!(rx.is_empty(), "not due yet");
        sh.report(now + REPORT_EVERY, false);
        assert_eq!(rx.try_recv().unwrap(), Used { rates: vec![(a, [30, 700])], quota: vec![] });
        // A gate closing says what it moved at the next report.
        sh.get(a).unwrap().consume(Dir::Down, 11, now);
        sh.close(a, &all);
        sh.report(now, true);
        assert_eq!(rx.try_recv().unwrap(), Used { rates: vec![(a, [0, 11])], quota: vec![] });
        // The other process's bytes: this gate's bucket takes them, and
        // holds its own flows back.
        assert!(sh.open(a, (&plain, &tc), || (cap, None), now));
        assert!(sh.get(a).unwrap().allow(Dir::Down, 1 << 16, now).bytes > 0);
        sh.debit(&[(a, [0, 200_000])], now);
        let g = sh.get(a).unwrap().allow(Dir::Down, 1 << 16, now);
        assert_eq!(g.bytes, 0, "in debt: {g:?}");
        assert!(g.wake.is_some());
        // An address without a gate here is not affected (nothing to hold).
        sh.debit(&[(ip("10.8.0.99"), [1, 1])], now);
        assert_eq!(sh.len(), 1);
        // A metered source reports its quota bytes by identity, DNS over
        // TCP (counted, not shaped) included.
        let q = Quota {
            bytes: 1 << 30,
            every: std::time::Duration::from_secs(3600),
            on: crate::config::OnQuota::Reject,
        };
        let b = ip("10.8.0.11");
        assert!(sh.open(b, (&plain, &tc), || (None, Some(("web".to_string(), q))), now));
        sh.get(b).unwrap().consume(Dir::Up, 100, now);
        sh.get(b).unwrap().count(23);
        let _ = rx.try_iter().count();
        sh.report(now + 3 * REPORT_EVERY, false);
        let u = rx.try_recv().unwrap();
        assert_eq!(u.quota, vec![("web".to_string(), 123)]);
        assert!(u.rates.contains(&(b, [100, 0])), "{u:?}");
    }

    #[test]
    fn a_refused_source_is_swept_once_until_something_joins_it() {
        let s = settings(RATED);
        let ledger = Arc::new(Ledger::new());
        let mut sh = Shapers::new(&s, Arc::default(), Arc::clone(&ledger), Arc::default());
        let plain = Arc::new(settings(PLAIN).tunnels[0].clone());
        let now = Instant::now();
        let q = Quota {
            bytes: 100,
            every: std::time::Duration::from_secs(3600),
            on: crate::config::OnQuota::Reject,
        };
        let (a, tc, all) = (ip("10.8.0.10"), tally(), Counters::default());
        let holds = || (None, Some(("web".to_string(), q)));
        assert!(sh.open(a, (&plain, &tc), holds, now));
        sh.get(a).unwrap().consume(Dir::Down, 100, now);
        let sweep = |sh: &mut Shapers, at| {
            let mut refused = Vec::new();
            sh.publish(&all, at, &mut refused);
            refused
        };
        assert_eq!(sweep(&mut sh, now), vec![a], "spent: its flows end");
        assert!(sweep(&mut sh, now + PUBLISH_EVERY).is_empty(), "not again every second");
        // A session joins (it sends nothing: over quota): swept again.
        assert!(sh.open(a, (&plain, &tc), holds, now));
        assert_eq!(sweep(&mut sh, now + 2 * PUBLISH_EVERY), vec![a]);
    }
}
