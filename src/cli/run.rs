//! `egressd run`: start the front loops and workers, then wait for signals:
//! SIGHUP reloads the config, SIGTERM/SIGINT drain and stop.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use log::{error, info, warn};

use crate::config::{Settings, UdpSettings};
use crate::control::Control;
use crate::docker::client::Docker;
use crate::front::{self, FrontLoop};
use crate::pool::Pools;
use crate::quota::Keeper;
use crate::snapshot::{Live, Routing, Shared};
use crate::stats::Registry;
use crate::sys;
use crate::upgrade::notify::{self, State};
use crate::worker::{Command, Common, FailLog, SharedLimits, WorkerHandle, WorkerLoop};

/// Stack of each loop thread: they keep their state on the heap, and a
/// small stack keeps the resident set small.
const STACK: usize = 256 * 1024;

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
    let settings = match super::load(config) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            error!(target: "egressd", "config error: {e}");
            return ExitCode::from(1);
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
        return ExitCode::from(1);
    }
    front::log_summary(&settings);

    let registry = Arc::new(Registry::default());
    // Every tunnel has its series from the start, not from its first flow.
    for t in &settings.tunnels {
        registry.tunnel(&t.name);
    }
    // Warm pools (filled by the workers) and the pipelining probes.
    let pools = Arc::new(Pools::default());
    pools.apply(&settings.tunnels);
    registry.publish(pools.clone());
    // Quota counters (issue 27): loaded before any flow can count.
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
    };
    let live = Arc::new(Live::new(Shared::new(Arc::clone(&settings))));
    let stop = Arc::new(AtomicBool::new(false));
    let Some((workers, handles)) = new_workers(&settings, &live, &common) else {
        return ExitCode::from(1);
    };
    let Some(fronts) = new_fronts(settings.threads, &live, &handles, &registry) else {
        return ExitCode::from(1);
    };
    let own_socket = serve_control(&settings, &live, &handles, &common, &keeper);

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
    let threads = spawn_loops(workers, fronts, &stop);
    info!(target: "egressd", "running");
    tell_systemd(&[State::Ready, State::Status("running".into())]);
    wait_for_stop(config, &live, &handles, (&pools, &keeper), &mut docker);
    info!(target: "egressd", "stopping: no new connections; flows drain for up to {DRAIN:?}");
    tell_systemd(&[State::Stopping, State::Status(format!("draining flows for up to {DRAIN:?}"))]);
    let ok = stop_loops(&stop, &handles, &front_wakers, threads);
    keeper.stop();
    if own_socket {
        let _ = std::fs::remove_file(&settings.control.socket);
    }
    let s = registry.total();
    info!(
        target: "egressd",
        "stopped: {} TCP flows, {} bytes up, {} bytes down; {} UDP sessions, {} datagrams up, {} down",
        s.tcp_flows_total, s.tcp_bytes_up, s.tcp_bytes_down, s.udp_sessions_total, s.udp_dgrams_up, s.udp_dgrams_down
    );
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Tells systemd (`Type=notify` in contrib/egressd.service) what the daemon
/// is doing: without `READY=1` a `Type=notify` start would time out. Nothing
/// happens outside systemd; a failure is only worth a warning.
fn tell_systemd(state: &[State]) {
    if let Err(e) = notify::notify(state) {
        warn!(target: "egressd", "cannot notify systemd: {e}");
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

/// `n` front loops, each with its own listeners; `None` (said in the log,
/// with a hint for the usual causes) when one cannot listen.
fn new_fronts(
    n: usize,
    live: &Arc<Live>,
    handles: &[WorkerHandle],
    registry: &Registry,
) -> Option<Vec<FrontLoop>> {
    let mut fronts = Vec::new();
    for i in 0..n {
        match FrontLoop::new(i, Arc::clone(live), handles.to_vec(), registry.thread()) {
            Ok(f) => fronts.push(f),
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
    Some(fronts)
}

/// The control socket and the Prometheus listener. Whether the socket is
/// ours to remove at exit: never a file we refused to touch.
fn serve_control(
    settings: &Settings,
    live: &Arc<Live>,
    handles: &[WorkerHandle],
    common: &Common,
    keeper: &Arc<Keeper>,
) -> bool {
    let registry = &common.registry;
    let ctl = Control {
        live: Arc::clone(live),
        workers: handles.to_vec(),
        registry: Arc::clone(registry),
        pools: Arc::clone(&common.pools),
        quota: Arc::clone(keeper),
    };
    let socket = &settings.control.socket;
    let own_socket = match ctl.spawn(socket) {
        Ok(_) => {
            info!(target: "egressd", "control socket {}", socket.display());
            true
        }
        Err(e) => {
            warn!(target: "egressd", "no control socket at {}: {e} (stats and route changes unavailable)", socket.display());
            false
        }
    };
    if let Some(w) =
        settings.control.metrics_listen.and_then(|m| crate::control::metrics_exposure(m, settings))
    {
        warn!(target: "egressd", "{w}");
    }
    if let Some(addr) = settings.control.metrics_listen {
        match crate::control::spawn_metrics(addr, Arc::clone(registry), Arc::clone(&keeper.ledger)) {
            Ok(_) => info!(target: "egressd", "Prometheus metrics on http://{addr}/metrics"),
            Err(e) => warn!(target: "egressd", "cannot serve metrics on {addr}: {e}"),
        }
    }
    own_socket
}

/// A loop's thread: the error that kept it from starting, or its handle.
type LoopThread = std::io::Result<thread::JoinHandle<std::io::Result<()>>>;

/// Starts the workers' threads, then the front loops'.
fn spawn_loops(workers: Vec<WorkerLoop>, fronts: Vec<FrontLoop>, stop: &Arc<AtomicBool>) -> Vec<LoopThread> {
    let mut threads = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let stop = Arc::clone(stop);
        threads.push(
            thread::Builder::new()
                .name(format!("egressd-w{i}"))
                .stack_size(STACK)
                .spawn(move || w.run(&stop, DRAIN)),
        );
    }
    for (i, f) in fronts.into_iter().enumerate() {
        let stop = Arc::clone(stop);
        threads.push(
            thread::Builder::new()
                .name(format!("egressd-f{i}"))
                .stack_size(STACK)
                .spawn(move || f.run(&stop)),
        );
    }
    threads
}

/// Reloads on SIGHUP until SIGTERM/SIGINT (or a failure to wait).
fn wait_for_stop(
    config: Option<&Path>,
    live: &Live,
    handles: &[WorkerHandle],
    (pools, keeper): (&Pools, &Keeper),
    docker: &mut Docker,
) {
    loop {
        match sys::wait_signal() {
            Ok(sys::Signal::Stop) => break,
            Ok(sys::Signal::Reload) => {
                if let Some(new) = reload(config, live, handles, pools, docker) {
                    keeper.configure(&new);
                }
            }
            Err(e) => {
                error!(target: "egressd", "waiting for signals: {e}");
                break;
            }
        }
    }
}

/// Tells every loop to stop, wakes the workers and waits for all of them;
/// whether every one ended well.
/// Sets the stop flag and wakes every loop to see it (they sleep until an
/// event otherwise), then waits for them; false if one failed.
fn stop_loops(
    stop: &AtomicBool,
    handles: &[WorkerHandle],
    fronts: &[Arc<mio::Waker>],
    threads: Vec<LoopThread>,
) -> bool {
    stop.store(true, Ordering::SeqCst);
    for f in fronts {
        let _ = f.wake();
    }
    for h in handles {
        h.wake_now();
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
