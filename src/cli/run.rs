//! `egressd run`: start the front loops and workers, then wait for signals:
//! SIGHUP reloads the config, SIGTERM/SIGINT drain and stop, SIGUSR2 (or
//! `egressd upgrade`) hands everything to a new binary, then drains.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::config::{Settings, UdpSettings};
use crate::control::Control;
use crate::docker::client::Docker;
use crate::front::{self, FrontLoop, FrontSockets, UdpHold};
use crate::pool::Pools;
use crate::quota::Keeper;

use super::handover::tell_systemd;
use crate::snapshot::{Live, Routing, Shared};
use crate::stats::Registry;
use crate::sys;
use crate::upgrade::notify::State;
use crate::upgrade::{self, Report};
use crate::worker::{Command, Common, FailLog, SharedLimits, Stop, WorkerHandle, WorkerLoop};

/// Stack of each loop thread: they keep their state on the heap, and a
/// small stack keeps the resident set small.
const STACK: usize = 256 * 1024;

/// How long a report line waits for the control thread to take it.
pub(super) const REPORT_WAIT: Duration = Duration::from_secs(2);

/// How long flows may drain after SIGTERM/SIGINT.
const DRAIN: Duration = Duration::from_secs(5);

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let env = env_logger::Env::default().default_filter_or(default);
    let _ = env_logger::Builder::from_env(env).format_timestamp_millis().try_init();
}

pub fn run(config: Option<&Path>, verbose: u8) -> ExitCode {
    init_logging(verbose);
    let Some((settings, limits, inherited, mut taken)) = prepare(config) else {
        return ExitCode::from(1);
    };
    front::log_summary(&settings);

    let (registry, pools) = counters_and_pools(&settings);
    // Quota counters (issue 27): loaded before any flow can count (after an
    // upgrade, from the file the old process saved last).
    let keeper = Arc::new(Keeper::start(settings.state_dir.clone(), settings.metered()));
    keeper.configure(&settings);
    let ledger = Arc::clone(&keeper.ledger);
    let common = Common {
        registry: Arc::clone(&registry),
        pools: Arc::clone(&pools),
        fail_log: Arc::new(FailLog::default()),
        limits,
        boards: Arc::default(),
        ledger: Arc::clone(&ledger),
        meters: Arc::default(),
    };
    let live = Arc::new(Live::new(Shared::new(Arc::clone(&settings))));
    if let Some(t) = &taken {
        super::handover::adopt_state(&live, &registry, &t.state);
    }
    let Some((workers, handles)) = new_workers(&settings, &live, &common) else {
        return ExitCode::from(1);
    };
    let Some(sockets) =
        taken.as_mut().map(|t| std::mem::take(&mut t.fronts)).or_else(|| open_fronts(&settings))
    else {
        return ExitCode::from(1);
    };
    let front_fds: Vec<Vec<OwnedFd>> = sockets.iter().filter_map(|s| s.fds().ok()).collect();
    // After an upgrade the fronts read no UDP until the old sessions are in.
    let hold = Arc::new(if taken.is_some() { UdpHold::held() } else { UdpHold::default() });
    let Some(fronts) = new_fronts(sockets, (&live, &handles, &registry), &hold) else {
        return ExitCode::from(1);
    };
    let served = serve_control(
        &settings,
        (&live, &handles, &common, &keeper),
        taken.as_mut().map(|t| (t.control.take(), t.metrics.take())),
    );
    let upgrades = Arc::clone(&served.upgrades);

    // The bridge sysctl can be set back to 1 while egressd runs (br_netfilter
    // loaded later): said within seconds, not only by `doctor`.
    if let Err(e) = crate::hostwatch::spawn(registry.thread()) {
        warn!(target: "egressd", "cannot watch the bridge sysctl: {e}");
    }
    let mut docker = Docker::new(Arc::clone(&live), handles.clone(), Arc::clone(&registry));
    if let Err(e) = docker.apply(settings.docker.as_ref()) {
        warn!(target: "egressd", "{e}; running with the config routes only");
    }

    let front_wakers: Vec<_> = fronts.iter().map(FrontLoop::waker).collect();
    let stops = Stops::default();
    let threads = spawn_loops(workers, fronts, &stops);
    info!(target: "egressd", "running");
    let (draining, predecessor) = super::handover::confirm(
        inherited,
        taken.as_mut(),
        (&common, settings.control.forget_sources),
        (&handles, &hold, &front_wakers),
    );
    let udp = super::handover::UdpOut { hold: &hold, wakers: &front_wakers, workers: &handles };
    let exe = std::env::current_exe().ok();
    let ended = loop {
        if !wait_for_stop(config, &live, &handles, (&pools, &keeper), &mut docker) {
            break None;
        }
        let ctx = super::handover::Serving {
            live: &live,
            front_fds: &front_fds,
            served: &served,
            keeper: &keeper,
            draining: &draining,
            udp: &udp,
            registry: &registry,
        };
        if let Some(h) = super::handover::try_upgrade(&ctx, upgrades.take(), exe.as_deref()) {
            break Some(h);
        }
    };
    let running = Running { stops, handles, front_wakers, threads, served, keeper, common, predecessor };
    let ok = match ended {
        None => running.stop(&settings),
        Some((h, report)) => {
            running.drain(&settings, live.load().settings.tcp.drain_timeout, h, report.as_ref())
        }
    };
    let s = registry.total();
    info!(
        target: "egressd",
        "stopped: {} TCP flows, {} bytes up, {} bytes down; {} UDP sessions, {} datagrams up, {} down",
        s.tcp_flows_total, s.tcp_bytes_up, s.tcp_bytes_down, s.udp_sessions_total, s.udp_dgrams_up, s.udp_dgrams_down
    );
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// The counters, every tunnel with its series from the start (not from
/// its first flow), and the warm pools (filled by the workers) with the
/// pipelining probes, whose gauges the counters show.
fn counters_and_pools(settings: &Settings) -> (Arc<Registry>, Arc<Pools>) {
    let registry = Arc::new(Registry::default());
    for t in &settings.tunnels {
        registry.tunnel(&t.name);
    }
    let pools = Arc::new(Pools::default());
    pools.apply(&settings.tunnels);
    registry.publish(pools.clone());
    (registry, pools)
}

/// The settings and the file limit; started by an upgrade, the link to
/// the old process and what it handed over. `None`: said in the log.
type Prepared = (Arc<Settings>, Arc<SharedLimits>, Option<upgrade::Inherited>, Option<upgrade::Taken>);

fn prepare(config: Option<&Path>) -> Option<Prepared> {
    // Started by an upgrade: the link to the process this one replaces.
    let mut inherited = match upgrade::Inherited::from_env() {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(e)) => {
            error!(target: "egressd", "upgrade: {e}");
            return None;
        }
    };
    let settings = match super::load(config) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            error!(target: "egressd", "config error: {e}");
            if let Some(i) = &inherited {
                i.refuse(&format!("config error: {e}"));
            }
            return None;
        }
    };
    if config.is_none() {
        info!(target: "egressd", "no --config given: running the embedded demo config");
    }
    if let Some(w) = config.and_then(|p| super::secrets_exposed(p, &settings)) {
        warn!(target: "egressd", "{w}");
    }
    let limits = Arc::new(raise_fd_limit(&settings));
    // Before any thread starts, so that every thread inherits the mask.
    if let Err(e) = sys::block_signals() {
        error!(target: "egressd", "cannot block signals: {e}");
        return None;
    }
    let taken = match inherited.as_mut().map(|i| i.receive(&settings)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            error!(target: "egressd", "upgrade: {e}");
            return None;
        }
    };
    Some((settings, limits, inherited, taken))
}

/// The loops and servers of a running daemon, for its end.
struct Running {
    stops: Stops,
    handles: Vec<WorkerHandle>,
    front_wakers: Vec<Arc<mio::Waker>>,
    threads: Vec<LoopThread>,
    served: Served,
    keeper: Arc<Keeper>,
    common: Common,
    /// The link to the process this one replaced, while it drains.
    predecessor: Option<thread::JoinHandle<()>>,
}

impl Running {
    /// SIGTERM/SIGINT: flows drain for [`DRAIN`], the quota state is saved.
    fn stop(self, settings: &Settings) -> bool {
        info!(target: "egressd", "stopping: no new connections; flows drain for up to {DRAIN:?}");
        tell_systemd(&[State::Stopping, State::Status(format!("draining flows for up to {DRAIN:?}"))]);
        self.stops.workers.set(DRAIN, Duration::ZERO);
        let ok = stop_loops(&self.stops, &self.handles, &self.front_wakers, self.threads, None);
        self.keeper.stop();
        if self.served.own_socket {
            let _ = std::fs::remove_file(&settings.control.socket);
        }
        ok
    }

    /// Handed over: stops accepting, relays the open flows until they end
    /// or `drain` passes, tells the new process what they counted.
    fn drain(
        self,
        settings: &Settings,
        drain: Duration,
        mut h: upgrade::Handed,
        report: Option<&crossbeam_channel::Sender<Report>>,
    ) -> bool {
        // While this process drains, it and the new one hold each source
        // to one class rate and one quota between them.
        h.share(super::handover::sink(&self.common, settings.control.forget_sources, &self.handles));
        let open = self.common.registry.total().tcp_flows_active;
        let say = |l: String| {
            info!(target: "egressd::upgrade", "{l}");
            if let Some(r) = report {
                let _ = r.send_timeout(Report::Line(l), REPORT_WAIT);
            }
        };
        let me = std::process::id();
        say(format!(
            "old process {me} stopped accepting; it relays its {open} open TCP flows until they end, for up to \
             {}s (tcp.drain_timeout_secs)",
            drain.as_secs()
        ));
        let t0 = Instant::now();
        self.stops.workers.set(drain, upgrade::LINGER);
        let ok = stop_loops(
            &self.stops,
            &self.handles,
            &self.front_wakers,
            self.threads,
            Some(&self.stops.workers),
        );
        let left = self.common.registry.total().tcp_flows_active;
        let handed_control = h.control;
        // What an older process drains is counted here once it ends, then passed on.
        if let Some(p) = self.predecessor.filter(|p| !p.is_finished()) {
            say("waiting for the older process this one replaced to end, to pass its quota counts on".into());
            while !p.is_finished() {
                if let Ok(Some(sys::Signal::Stop)) = sys::wait_signal_timeout(Duration::from_millis(200)) {
                    break;
                }
            }
        }
        h.finish(&self.keeper.ledger, &self.common.registry);
        if self.served.own_socket && !handed_control {
            let _ = std::fs::remove_file(&settings.control.socket);
        }
        let cut = if t0.elapsed() >= drain && left > 0 {
            format!("; {left} flows were still open at the deadline and were reset")
        } else {
            String::new()
        };
        say(format!(
            "old process {me} ended after {:.1}s: {open} TCP flows drained{cut}",
            t0.elapsed().as_secs_f64()
        ));
        if let Some(r) = report {
            let _ = r.send_timeout(Report::End(Ok(())), REPORT_WAIT);
            let _ = r.send_timeout(Report::Sync, REPORT_WAIT);
        }
        ok
    }
}

/// Raises the open file limit and says what it allows; the TCP descriptor
/// share is taken from the limit as raised here.
fn raise_fd_limit(settings: &Settings) -> SharedLimits {
    let mut limits = SharedLimits::default();
    match sys::raise_fd_limit() {
        Ok(n) => {
            info!(target: "egressd", "open file limit {n}");
            limits = SharedLimits::new(n);
            info!(
                target: "egressd",
                "TCP flows may hold {} of them (the rest is egressd's reserve); one source at most half of what \
                 the others leave free{}",
                limits.fds.budget(),
                if settings.tcp.fd_share { "" } else { " (off: tcp.fd_share is false)" }
            );
            // A UDP session holds up to two descriptors (control connection and relay socket);
            // both bounds are split across the workers (at least 1 each).
            let u = &settings.udp;
            let total = |n: usize| (UdpSettings::per_worker(n, settings.threads) * settings.threads) as u64;
            let want = total(u.max_sessions) * 2 + total(u.max_reply_sockets);
            if want > n {
                warn!(
                    target: "egressd",
                    "udp.max_sessions {} and max_reply_sockets {} may need {want} file descriptors, more than the limit {n}: \
                     raise LimitNOFILE / ulimit -n, or lower udp.max_sessions",
                    settings.udp.max_sessions, settings.udp.max_reply_sockets
                );
            }
        }
        Err(e) => warn!(target: "egressd", "cannot raise the open file limit: {e}"),
    }
    limits
}

/// One worker per thread, and the handles front loops reach them by;
/// `None` (said in the log) when one cannot start.
fn new_workers(
    settings: &Arc<Settings>,
    live: &Arc<Live>,
    common: &Common,
) -> Option<(Vec<WorkerLoop>, Vec<WorkerHandle>)> {
    let mut workers = Vec::new();
    let mut handles = Vec::new();
    for i in 0..settings.threads {
        let routing: Arc<dyn Routing> = live.clone();
        match WorkerLoop::new(i, Arc::clone(settings), routing, common) {
            Ok((w, h)) => {
                workers.push(w);
                handles.push(h);
            }
            Err(e) => {
                error!(target: "egressd", "cannot start worker {i}: {e}");
                return None;
            }
        }
    }
    Some((workers, handles))
}

/// Opens every front loop's sockets; `None` (said in the log, with a
/// hint for the usual causes) when one cannot listen.
fn open_fronts(settings: &Settings) -> Option<Vec<FrontSockets>> {
    let mut out = Vec::new();
    for _ in 0..settings.threads {
        match FrontSockets::open(&settings.listen, settings.threads) {
            Ok(s) => out.push(s),
            Err(e) => {
                let hint = match e.kind() {
                    std::io::ErrorKind::AddrNotAvailable => {
                        "; is the address assigned to a local interface (the bridge)?"
                    }
                    std::io::ErrorKind::AddrInUse => {
                        "; is another egressd (or another program) using the port?"
                    }
                    _ => "",
                };
                error!(target: "egressd", "{e}{hint}");
                return None;
            }
        }
    }
    Some(out)
}

/// A front loop on each set of sockets; `None` (said in the log) when one
/// cannot start.
fn new_fronts(
    sockets: Vec<FrontSockets>,
    (live, handles, registry): (&Arc<Live>, &[WorkerHandle], &Registry),
    hold: &Arc<UdpHold>,
) -> Option<Vec<FrontLoop>> {
    let mut fronts = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        match FrontLoop::new(i, Arc::clone(live), handles.to_vec(), registry.thread(), s, Arc::clone(hold)) {
            Ok(f) => fronts.push(f),
            Err(e) => {
                error!(target: "egressd", "front loop {i}: {e}");
                return None;
            }
        }
    }
    Some(fronts)
}

/// The control socket and the Prometheus listener as served: copies of
/// their descriptors (for an upgrade) and what stops them.
pub(super) struct Served {
    /// Whether the socket file is ours to remove at exit: never a file we
    /// refused to touch.
    own_socket: bool,
    pub(super) control: Option<OwnedFd>,
    pub(super) metrics: Option<OwnedFd>,
    stoppers: Vec<crate::control::Stopper>,
    upgrades: Arc<upgrade::Desk>,
}

impl Served {
    /// Stops accepting on both (after a handover).
    pub(super) fn stop(&self) {
        for s in &self.stoppers {
            s.stop();
        }
    }
}

/// Serves the control socket and the Prometheus listener: opened here, or
/// (after an upgrade) those received, when the config names the same.
fn serve_control(
    settings: &Settings,
    (live, handles, common, keeper): (&Arc<Live>, &[WorkerHandle], &Common, &Arc<Keeper>),
    taken: Option<(Option<UnixListener>, Option<TcpListener>)>,
) -> Served {
    let registry = &common.registry;
    let upgrades = Arc::new(upgrade::Desk::default());
    let (taken_control, taken_metrics) = taken.unwrap_or((None, None));
    let ctl = Control {
        live: Arc::clone(live),
        workers: handles.to_vec(),
        registry: Arc::clone(registry),
        pools: Arc::clone(&common.pools),
        quota: Arc::clone(keeper),
        upgrades: Arc::clone(&upgrades),
    };
    let mut served =
        Served { own_socket: false, control: None, metrics: None, stoppers: Vec::new(), upgrades };
    let socket = &settings.control.socket;
    let listener = match taken_control {
        Some(l) => Ok(l),
        None => crate::control::bind_unix(socket),
    };
    match listener
        .and_then(|l| Ok((l.try_clone()?, l)))
        .and_then(|(copy, l)| Ok((copy, ctl.spawn(l, socket)?)))
    {
        Ok((copy, stopper)) => {
            info!(target: "egressd", "control socket {}", socket.display());
            served.own_socket = true;
            served.control = Some(copy.into());
            served.stoppers.push(stopper);
        }
        Err(e) => {
            warn!(target: "egressd", "no control socket at {}: {e} (stats and route changes unavailable)", socket.display());
        }
    }
    if let Some(w) =
        settings.control.metrics_listen.and_then(|m| crate::control::metrics_exposure(m, settings))
    {
        warn!(target: "egressd", "{w}");
    }
    if let Some(addr) = settings.control.metrics_listen {
        let listener = match taken_metrics {
            Some(l) => Ok(l),
            None => TcpListener::bind(addr),
        };
        let spawned = listener.and_then(|l| Ok((l.try_clone()?, l))).and_then(|(copy, l)| {
            Ok((copy, crate::control::spawn_metrics(l, Arc::clone(registry), Arc::clone(&keeper.ledger))?))
        });
        match spawned {
            Ok((copy, stopper)) => {
                info!(target: "egressd", "Prometheus metrics on http://{addr}/metrics");
                served.metrics = Some(copy.into());
                served.stoppers.push(stopper);
            }
            Err(e) => warn!(target: "egressd", "cannot serve metrics on {addr}: {e}"),
        }
    }
    served
}

/// A loop's thread: the error that kept it from starting, or its handle.
type LoopThread = std::io::Result<thread::JoinHandle<std::io::Result<()>>>;

/// How the loops stop: front loops first (at a handover they stop while
/// the workers drain), workers with a grace.
#[derive(Default)]
struct Stops {
    fronts: Arc<AtomicBool>,
    workers: Arc<Stop>,
}

/// Starts the workers' threads, then the front loops'.
fn spawn_loops(workers: Vec<WorkerLoop>, fronts: Vec<FrontLoop>, stops: &Stops) -> Vec<LoopThread> {
    let mut threads = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let stop = Arc::clone(&stops.workers);
        threads.push(
            thread::Builder::new()
                .name(format!("egressd-w{i}"))
                .stack_size(STACK)
                .spawn(move || w.run(&stop)),
        );
    }
    for (i, f) in fronts.into_iter().enumerate() {
        let stop = Arc::clone(&stops.fronts);
        threads.push(
            thread::Builder::new()
                .name(format!("egressd-f{i}"))
                .stack_size(STACK)
                .spawn(move || f.run(&stop)),
        );
    }
    threads
}

/// Reloads on SIGHUP until SIGTERM/SIGINT (false) or SIGUSR2 (true: an
/// upgrade is asked), or a failure to wait (false).
fn wait_for_stop(
    config: Option<&Path>,
    live: &Live,
    handles: &[WorkerHandle],
    (pools, keeper): (&Pools, &Keeper),
    docker: &mut Docker,
) -> bool {
    loop {
        match sys::wait_signal() {
            Ok(sys::Signal::Stop) => return false,
            Ok(sys::Signal::Upgrade) => return true,
            Ok(sys::Signal::Reload) => {
                if let Some(new) = reload(config, live, handles, pools, docker) {
                    keeper.configure(&new);
                }
            }
            Err(e) => {
                error!(target: "egressd", "waiting for signals: {e}");
                return false;
            }
        }
    }
}

/// Stops the front loops, then the workers (they drain as `stops.workers`
/// says; the caller set it), and waits for all of them; whether every one
/// ended well. While draining after an upgrade (`drain`), SIGTERM/SIGINT
/// cut the drain short.
fn stop_loops(
    stops: &Stops,
    handles: &[WorkerHandle],
    fronts: &[Arc<mio::Waker>],
    threads: Vec<LoopThread>,
    drain: Option<&Stop>,
) -> bool {
    stops.fronts.store(true, Ordering::SeqCst);
    for f in fronts {
        let _ = f.wake();
    }
    for h in handles {
        h.wake_now();
    }
    if let Some(stop) = drain {
        while threads.iter().any(|t| t.as_ref().is_ok_and(|h| !h.is_finished())) {
            match sys::wait_signal_timeout(Duration::from_millis(200)) {
                Ok(Some(sys::Signal::Stop)) => {
                    warn!(target: "egressd::upgrade", "told to stop while draining: the open flows are reset now");
                    stop.set(Duration::ZERO, Duration::ZERO);
                    for h in handles {
                        h.wake_now();
                    }
                }
                Ok(Some(_)) => {
                    warn!(target: "egressd::upgrade", "this process is draining after an upgrade: ask the new one")
                }
                Ok(None) | Err(_) => {}
            }
        }
    }
    let mut ok = true;
    for t in threads {
        match t.map(|h| h.join()) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                error!(target: "egressd", "thread failed: {e}");
                ok = false;
            }
            _ => ok = false,
        }
    }
    ok
}

/// SIGHUP: new flows get the new routes, tunnels and timeouts; existing
/// flows and sessions keep going; a bad config changes nothing.
/// The new settings, when they were taken.
fn reload(
    config: Option<&Path>,
    live: &Live,
    workers: &[WorkerHandle],
    pools: &Pools,
    docker: &mut Docker,
) -> Option<Arc<Settings>> {
    let new: Settings = match super::load(config) {
        Ok(s) => s,
        Err(e) => {
            error!(target: "egressd", "reload failed, keeping the running config: {e}");
            return None;
        }
    };
    let new = Arc::new(new);
    let cur = live.load();
    let mut restart = Vec::new();
    if cur.settings.listen != new.listen {
        restart.push("listen");
    }
    if cur.settings.threads != new.threads {
        restart.push("threads");
    }
    if cur.settings.control.socket != new.control.socket {
        restart.push("control.socket");
    }
    if cur.settings.control.metrics_listen != new.control.metrics_listen {
        restart.push("control.metrics_listen");
    }
    if cur.settings.state_dir != new.state_dir {
        restart.push("state_dir");
    }
    let _ = live.update(|cur| Ok::<_, ()>(cur.reloaded(Arc::clone(&new))));
    // A tunnel whose server or credentials changed has its pool drained here.
    pools.apply(&new.tunnels);
    let missed = workers
        .iter()
        .filter(|w| !w.command(Command::Settings(Arc::clone(&new)), Duration::from_secs(2)))
        .count();
    if missed > 0 {
        warn!(target: "egressd", "reload: {missed} workers did not take the new settings (stuck?); they keep the old ones");
    }
    info!(
        target: "egressd",
        "reloaded: {} tunnels, {} routes; routes, tunnels, docker, warm pools, timeouts, tcp.splice (new flows) and the \
         tcp and udp limits apply now; {RESTART_ONLY} only on restart",
        new.tunnels.len(),
        new.routes.len()
    );
    if !restart.is_empty() {
        warn!(target: "egressd", "reload: {} changed, which applies only on restart", restart.join(", "));
    }
    // After the new settings are live: a restarted follower resolves
    // labels against the new tunnels.
    match docker.apply(new.docker.as_ref()) {
        Ok(Some(what)) => info!(target: "egressd", "reload: {what}"),
        Ok(None) => {}
        Err(e) => warn!(target: "egressd", "reload: {e}; label routes are not followed"),
    }
    Some(new)
}

/// What a reload cannot change (named in the log and in README "Operating").
const RESTART_ONLY: &str = "listen, threads, control.socket, control.metrics_listen and state_dir change";
