//! The daemon's side of an upgrade (issue 28): what `run` hands over when
//! asked, and what the new process takes over (see [`crate::upgrade`]).

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};

use super::run::{REPORT_WAIT, Served};
use crate::config::RouteTarget;
use crate::front::{UdpHold, worker_for};
use crate::quota::{Keeper, Ledger};
use crate::route::Cidr;
use crate::snapshot::{LabelRoute, Labels, Live};
use crate::stats::Registry;
use crate::upgrade::notify::{self, State};
use crate::upgrade::{self, Report};
use crate::worker::{Command, Common, Levels, Moved, Used, WorkerHandle};

/// Serving: takes in the old process's UDP sessions, tells it (if any)
/// and systemd; the older processes still draining, and the link to the
/// one replaced.
pub(super) fn confirm(
    inherited: Option<upgrade::Inherited>,
    taken: Option<&mut upgrade::Taken>,
    (common, keep): (&Common, Duration),
    (workers, hold, fronts): (&[WorkerHandle], &UdpHold, &[Arc<mio::Waker>]),
) -> (Vec<u32>, Option<std::thread::JoinHandle<()>>) {
    let (Some(i), Some(t)) = (inherited, taken) else {
        tell_systemd(&[State::Ready, State::Status("running".into())]);
        return (Vec::new(), None);
    };
    // The old sessions and buckets in, then UDP is read (what queued meanwhile first).
    adopt_buckets(&t.state.buckets, workers);
    adopt_sessions(std::mem::take(&mut t.sessions), workers);
    hold.release(fronts);
    let old = match i.ready(t.old, t.meters, sink(common, keep, workers)) {
        Ok(h) => Some(h),
        Err(e) => {
            error!(target: "egressd", "upgrade: cannot confirm to the old process {}: {e}", t.old);
            None
        }
    };
    info!(target: "egressd", "upgrade: serving on the sockets of process {}", t.old);
    tell_systemd(&[State::MainPid(std::process::id()), State::Ready, State::Status("running".into())]);
    (t.draining.clone(), old)
}

/// What this process does with what another one of an upgrade tells it.
pub(super) fn sink(common: &Common, keep: Duration, workers: &[WorkerHandle]) -> upgrade::Sink {
    upgrade::Sink {
        ledger: Arc::clone(&common.ledger),
        registry: Arc::clone(&common.registry),
        keep,
        meters: Arc::clone(&common.meters),
        apply: Arc::new(Shared {
            workers: workers.to_vec(),
            ledger: Arc::clone(&common.ledger),
            dropped: Default::default(),
        }),
    }
}

/// Another process's report applied here: each source's bytes to the
/// worker its flows live in (its gate's buckets take them), each quota
/// identity's to the ledger.
struct Shared {
    workers: Vec<WorkerHandle>,
    ledger: Arc<Ledger>,
    /// Reports a worker could not take (its queue full), warned once a
    /// minute. A worker that has ended (this process drained) takes none,
    /// and needs none.
    dropped: std::sync::Mutex<crate::lograte::Every>,
}

/// How long a report waits for a worker's command queue.
const DEBIT_WAIT: Duration = Duration::from_millis(20);

impl upgrade::Apply for Shared {
    fn apply(&self, used: &Used) {
        let per = per_worker(used.rates.iter().copied(), |r| r.0, self.workers.len());
        for (w, rates) in self.workers.iter().zip(per) {
            if !rates.is_empty() && w.command_or_why(Command::Debit(rates), DEBIT_WAIT) == Err(false) {
                let mut every = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = every.due(std::time::Instant::now()) {
                    warn!(target: "egressd::upgrade", "a worker's command queue is full: a rate report from the other process is dropped{}", crate::lograte::more(n));
                }
            }
        }
        for (id, n) in &used.quota {
            // An identity unknown here has no flow here to hold back.
            self.ledger.credit(id, *n);
        }
    }
}

/// The new process of an upgrade takes the old one's `route set` routes
/// (onto its own config's) and label routes (until its follower syncs).
pub(super) fn adopt_state(live: &Live, registry: &Registry, state: &upgrade::wire::State) {
    // Counters go on from where they were (a carried source no flow here
    // counts into goes when a worker would have forgotten it).
    let keep = live.load().settings.control.forget_sources;
    registry.carry(&state.counts.counted(), std::time::Instant::now() + keep);
    let _ = live.update(|cur| {
        let mut s = (*cur.settings).clone();
        let mut manual = Vec::new();
        for (cidr, tunnel) in &state.routes {
            match (cidr.parse::<Cidr>(), s.tunnel_id(tunnel)) {
                (Ok(c), Some(id)) => {
                    s.routes.insert(c, RouteTarget::tunnel(id));
                    manual.push(c);
                }
                _ => warn!(target: "egressd::upgrade", "route set {cidr} -> {tunnel} not kept: no such tunnel here"),
            }
        }
        let labels: Vec<LabelRoute> = state
            .labels
            .iter()
            .map(|l| LabelRoute {
                addr: l.addr,
                id: l.id.clone(),
                name: l.name.clone(),
                tunnel: l.tunnel.clone(),
                class: l.class.clone(),
            })
            .collect();
        let mut next = cur.with_settings(s);
        for c in manual {
            next = next.with_manual(c, true);
        }
        let labels = Labels::new(labels, &next.settings);
        Ok::<_, ()>(next.with_labels(labels))
    });
    info!(
        target: "egressd::upgrade",
        "taken over: {} route set routes, {} label routes",
        state.routes.len(),
        state.labels.len()
    );
}

/// What a running daemon hands over.
pub(super) struct Serving<'a> {
    pub live: &'a Live,
    pub front_fds: &'a [Vec<OwnedFd>],
    pub served: &'a Served,
    pub keeper: &'a Arc<Keeper>,
    pub draining: &'a [u32],
    pub udp: &'a UdpOut<'a>,
    pub registry: &'a Registry,
}

/// How long the fronts and workers have to stop reading and hand out
/// their sessions.
const UDP_WAIT: Duration = Duration::from_secs(2);

/// The old process's UDP sessions leaving (see [`upgrade::UdpMove`]).
pub(super) struct UdpOut<'a> {
    pub hold: &'a Arc<UdpHold>,
    pub wakers: &'a [Arc<mio::Waker>],
    pub workers: &'a [WorkerHandle],
}

impl upgrade::UdpMove for UdpOut<'_> {
    fn export(&self) -> Result<Vec<Moved>, String> {
        if !self.hold.hold(self.wakers, UDP_WAIT) {
            return Err(format!("the front loops did not stop reading UDP within {UDP_WAIT:?}"));
        }
        let mut out = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if !w.command(Command::ExportUdp(tx), UDP_WAIT) {
                return Err(format!("worker {i} did not take the session export within {UDP_WAIT:?}"));
            }
            match rx.recv_timeout(UDP_WAIT) {
                Ok(m) => out.extend(m),
                Err(_) => {
                    return Err(format!("worker {i} did not hand out its UDP sessions within {UDP_WAIT:?}"));
                }
            }
        }
        Ok(out)
    }

    fn release(&self) {
        self.hold.release(self.wakers);
    }

    fn buckets(&self) -> upgrade::wire::Buckets {
        let mut b = upgrade::wire::Buckets::default();
        for w in self.workers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if w.command(Command::ExportLevels(tx), UDP_WAIT)
                && let Ok(l) = rx.recv_timeout(UDP_WAIT)
            {
                b.tcp.extend(l.tcp);
                b.udp.extend(l.udp);
            }
        }
        b
    }
}

/// The new process of an upgrade: each source's buckets to the worker its
/// flows and datagrams go to.
fn adopt_buckets(b: &upgrade::wire::Buckets, workers: &[WorkerHandle]) {
    let tcp = per_worker(b.tcp.iter().copied(), |r| r.0, workers.len());
    let udp = per_worker(b.udp.iter().copied(), |r| r.0, workers.len());
    for ((w, tcp), udp) in workers.iter().zip(tcp).zip(udp) {
        let l = Levels { tcp, udp };
        if l != Levels::default() {
            let _ = w.command(Command::AdoptLevels(l), UDP_WAIT);
        }
    }
    info!(
        target: "egressd::upgrade",
        "taken over: the new-flow buckets of {} sources and the new-session buckets of {} (spent ones stay spent)",
        b.tcp.len(),
        b.udp.len()
    );
}

/// Rows split by the worker their address belongs to (`worker_for`).
fn per_worker<T>(
    rows: impl IntoIterator<Item = T>,
    ip: impl Fn(&T) -> IpAddr,
    workers: usize,
) -> Vec<Vec<T>> {
    let mut per: Vec<Vec<T>> = (0..workers).map(|_| Vec::new()).collect();
    for r in rows {
        per[worker_for(ip(&r), workers)].push(r);
    }
    per
}

/// The new process of an upgrade: each moved session to the worker its
/// client's datagrams go to.
fn adopt_sessions(moved: Vec<Moved>, workers: &[WorkerHandle]) {
    let n = moved.len();
    let per = per_worker(moved, |m| m.client.ip(), workers.len());
    let mut taken = 0;
    for (w, moved) in workers.iter().zip(per) {
        if moved.is_empty() {
            continue;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        if w.command(Command::AdoptUdp(moved, tx), UDP_WAIT) {
            taken += rx.recv_timeout(UDP_WAIT).unwrap_or(0);
        }
    }
    info!(target: "egressd::upgrade", "taken over: {taken} of {n} UDP sessions (same associations, same exit ports)");
}

/// An upgrade, asked over the control socket or by SIGUSR2. `Some` once
/// the new process serves: this one then drains and ends.
pub(super) fn try_upgrade(
    ctx: &Serving<'_>,
    req: Option<upgrade::Request>,
    exe: Option<&Path>,
) -> Option<(upgrade::Handed, Option<crossbeam_channel::Sender<Report>>)> {
    let (binary, wait, report) = match req {
        Some(r) => (r.binary, r.wait, Some(r.report)),
        None => (None, true, None),
    };
    let tell = |l: String| {
        info!(target: "egressd::upgrade", "{l}");
        if let Some(r) = &report {
            let _ = r.send_timeout(Report::Line(l), REPORT_WAIT);
        }
    };
    let Some(binary) = binary.or_else(|| exe.map(Path::to_path_buf)) else {
        let why = "the path this process was started from is unknown: give --binary".to_string();
        error!(target: "egressd::upgrade", "upgrade failed: {why}");
        if let Some(r) = &report {
            let _ = r.send_timeout(Report::End(Err(why)), REPORT_WAIT);
        }
        return None;
    };
    let shared = ctx.live.load();
    let routes = shared
        .settings
        .routes
        .iter()
        .filter(|(c, _)| shared.manual.contains(c))
        .map(|(c, t)| (c.to_string(), shared.settings.tunnels[usize::from(t.tunnel)].name.clone()))
        .collect();
    let labels = shared
        .labels
        .routes()
        .map(|r| upgrade::wire::Label {
            addr: r.addr,
            id: r.id.clone(),
            name: r.name.clone(),
            tunnel: r.tunnel.clone(),
            class: r.class.clone(),
        })
        .collect();
    let counted = ctx.registry.counted();
    let fronts =
        ctx.front_fds.iter().map(|f| f.iter().filter_map(|d| d.try_clone().ok()).collect()).collect();
    let handing = upgrade::Handing {
        settings: &shared.settings,
        fronts,
        control: ctx.served.control.as_ref().map(AsFd::as_fd),
        metrics: ctx.served.metrics.as_ref().map(AsFd::as_fd),
        state: upgrade::wire::State {
            routes,
            labels,
            counts: upgrade::wire::Counts::of(&counted),
            buckets: upgrade::wire::Buckets::default(),
        },
        counted,
        keeper: ctx.keeper,
        draining: ctx.draining.to_vec(),
        udp: ctx.udp,
    };
    let mut say = |l: String| tell(l);
    match upgrade::hand_over(&handing, &binary, &mut say) {
        Ok(h) => {
            // Before the client hears of it: no request reaches this process any more.
            ctx.served.stop();
            tell_systemd(&[
                State::MainPid(h.pid),
                State::Status(format!("handed over to {}; draining", h.pid)),
            ]);
            let report = if wait {
                report
            } else {
                if let Some(r) = report {
                    let _ = r.send_timeout(Report::End(Ok(())), REPORT_WAIT);
                }
                None
            };
            Some((h, report))
        }
        Err(why) => {
            let why = format!("{why}; still serving (PID {})", std::process::id());
            error!(target: "egressd::upgrade", "upgrade failed: {why}");
            if let Some(r) = &report {
                let _ = r.send_timeout(Report::End(Err(why)), REPORT_WAIT);
            }
            None
        }
    }
}

/// Tells systemd (`Type=notify` in contrib/egressd.service) what the daemon
/// is doing: without `READY=1` a `Type=notify` start would time out. Nothing
/// happens outside systemd; a failure is only worth a warning.
pub(super) fn tell_systemd(state: &[State]) {
    if let Err(e) = notify::notify(state) {
        warn!(target: "egressd", "cannot notify systemd: {e}");
    }
}
