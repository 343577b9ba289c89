//! `egressd run`: start the front loops and workers, wait for signals.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use log::{error, info, warn};

use crate::front::{self, FrontLoop, Shared};
use crate::stats::{self, Counters};
use crate::sys;
use crate::worker::WorkerLoop;

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
    match sys::raise_fd_limit() {
        Ok(n) => info!(target: "egressd", "open file limit {n}"),
        Err(e) => warn!(target: "egressd", "cannot raise the open file limit: {e}"),
    }
    // Before any thread starts, so that every thread inherits the mask.
    if let Err(e) = sys::block_signals() {
        error!(target: "egressd", "cannot block signals: {e}");
        return ExitCode::from(1);
    }
    front::log_summary(&settings);

    let shared = Arc::new(Shared::new(Arc::clone(&settings)));
    let n = settings.threads;
    let stop = Arc::new(AtomicBool::new(false));
    let mut all_counters = Vec::new();
    let mut workers = Vec::new();
    let mut handles = Vec::new();
    for i in 0..n {
        let c = Arc::new(Counters::default());
        all_counters.push(Arc::clone(&c));
        let (w, h) = match WorkerLoop::new(i, Arc::clone(&settings), c) {
            Ok(x) => x,
            Err(e) => {
                error!(target: "egressd", "cannot start worker {i}: {e}");
                return ExitCode::from(1);
            }
        };
        handles.push(h);
        workers.push(w);
    }
    let mut fronts = Vec::new();
    for i in 0..n {
        let c = Arc::new(Counters::default());
        all_counters.push(Arc::clone(&c));
        match FrontLoop::new(i, Arc::clone(&shared), handles.clone(), c) {
            Ok(f) => fronts.push(f),
            Err(e) => {
                error!(target: "egressd", "{e}; is the address assigned to a local interface (the bridge) and the port free?");
                return ExitCode::from(1);
            }
        }
    }
    drop(handles);

    let mut threads = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        let t = thread::Builder::new().name(format!("egressd-w{i}")).spawn(move || w.run(&stop, DRAIN));
        threads.push(t);
    }
    for (i, f) in fronts.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        threads.push(thread::Builder::new().name(format!("egressd-f{i}")).spawn(move || f.run(&stop)));
    }
    info!(target: "egressd", "running");

    loop {
        match sys::wait_signal() {
            Ok(sys::Signal::Stop) => break,
            Ok(sys::Signal::Reload) => {
                warn!(target: "egressd", "SIGHUP: live reload is not implemented yet; keeping the running config")
            }
            Err(e) => {
                error!(target: "egressd", "waiting for signals: {e}");
                break;
            }
        }
    }
    info!(target: "egressd", "stopping: no new connections; flows drain for up to {DRAIN:?}");
    stop.store(true, Ordering::Relaxed);
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
    let s = stats::snapshot(all_counters.iter().map(|c| c.as_ref()));
    info!(
        target: "egressd",
        "stopped: {} TCP flows, {} bytes up, {} bytes down, {} no-route resets",
        s.tcp_flows_total, s.tcp_bytes_up, s.tcp_bytes_down, s.drop_no_route
    );
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
