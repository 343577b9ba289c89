//! The daemon's quota keeper: loads the state at start, then a thread
//! ticks the ledger and saves it every [`SAVE_EVERY`], and once more at
//! exit. The one writer of `state_dir`.
//!
//! ```text
//!  start ─ store::load ─► Ledger (Fresh | Loaded | failed closed: logged)
//!  every SAVE_EVERY ─ tick (periods renewed, clock jumps logged)
//!                   ─ save, when the counters changed since the last save
//!  stop ─ tick, save
//! ```
//!
//! Nothing is written while no class carries a quota and the ledger is
//! empty (a config without quotas leaves `state_dir` alone).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{error, info, warn};

use super::store::{self, Load, SAVE_EVERY, now_ms};
use super::{Ledger, ledger_for, state};
use crate::config::Settings;

/// The running keeper: the ledger the workers share, and its thread.
pub struct Keeper {
    pub ledger: Arc<Ledger>,
    shared: Arc<Shared>,
    stop: Mutex<Option<Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the thread and the control socket share.
struct Shared {
    dir: PathBuf,
    /// Whether the config now has a quota (a reload may change it).
    metered: AtomicBool,
    /// The text last saved, so an unchanged ledger is not written again.
    saved: Mutex<String>,
    /// Handed over to the new process of an upgrade: never written again.
    handed: AtomicBool,
}

impl Keeper {
    /// Loads `dir`'s state (logging a corrupt file) and starts the saver.
    pub fn start(dir: PathBuf, metered: bool) -> Keeper {
        let load = store::load(&dir);
        match &load {
            Load::Fresh => {}
            Load::Loaded(s) => {
                info!(target: "egressd::quota", "quota state: {} counters from {}", s.entries.len(), dir.display())
            }
            Load::Corrupt { kept_aside, why } => error!(
                target: "egressd::quota",
                "quota state: {why}; kept aside as {}: metered classes are refused until `egressd quota reset \
                 NAME` (or --all), or the file is restored",
                kept_aside.display()
            ),
        }
        let ledger = Arc::new(ledger_for(load));
        ledger.tick(now_ms(), Instant::now());
        let shared = Arc::new(Shared {
            dir,
            metered: AtomicBool::new(metered),
            saved: Mutex::new(String::new()),
            handed: AtomicBool::new(false),
        });
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (l, s) = (Arc::clone(&ledger), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("egressd-quota".into())
            .spawn(move || saver(&l, &s, &rx))
            .map_err(|e| warn!(target: "egressd::quota", "cannot start the quota saver: {e}"))
            .ok();
        Keeper { ledger, shared, stop: Mutex::new(Some(tx)), thread: Mutex::new(thread) }
    }

    /// A keeper of an empty ledger that never touches the disk (tests).
    #[cfg(test)]
    pub fn detached() -> Keeper {
        let shared = Arc::new(Shared {
            dir: PathBuf::new(),
            metered: AtomicBool::new(false),
            saved: Mutex::default(),
            handed: AtomicBool::new(false),
        });
        Keeper { ledger: Arc::default(), shared, stop: Mutex::new(None), thread: Mutex::new(None) }
    }

    /// At start and at each reload: whether the config has a quota, and
    /// every config route whose class has one gets its counter (made, or
    /// restored, with the quota now), so `quota list` shows them all
    /// before any flow. A labelled container's appears at its first flow.
    pub fn configure(&self, s: &Settings) {
        self.shared.metered.store(s.metered(), Ordering::Relaxed);
        let now = now_ms();
        for (cidr, target) in s.routes.iter() {
            if let Some(q) = target.class.and_then(|c| s.class(c)).and_then(|c| c.quota) {
                self.ledger.meter(&super::route_identity(&cidr), &q, now);
            }
        }
    }

    /// Saves now (after `quota reset`); the error, said.
    pub fn save_now(&self) -> Result<(), String> {
        save(&self.ledger, &self.shared, true)
    }

    /// Stops the saver and saves a last time (at exit, after the workers
    /// stopped counting). Nothing after [`Keeper::hand_over`].
    pub fn stop(&self) {
        if self.shared.handed.load(Ordering::SeqCst) {
            return;
        }
        self.stop_saver();
        self.ledger.tick(now_ms(), Instant::now());
        if let Err(e) = save(&self.ledger, &self.shared, false) {
            error!(target: "egressd::quota", "{e}");
        }
    }

    fn stop_saver(&self) {
        drop(self.stop.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// An upgrade: saves a last time, then writes no more (the new process
    /// loads the file and is `state_dir`'s one writer from now on). The
    /// counters as saved, so that what draining flows add can be sent on.
    pub fn hand_over(&self) -> Result<Vec<(String, u64)>, String> {
        self.stop_saver();
        self.ledger.tick(now_ms(), Instant::now());
        // The counts as written, not as they are after the write: what
        // flows add meanwhile is the old process's to report.
        let snap = self.ledger.snapshot();
        if self.shared.metered.load(Ordering::Relaxed) || !snap.entries.is_empty() || snap.closed.is_some() {
            store::save(&self.shared.dir, &snap)
                .map_err(|e| format!("cannot save the quota state in {}: {e}", self.shared.dir.display()))?;
        }
        self.shared.handed.store(true, Ordering::SeqCst);
        Ok(snap.entries.into_iter().map(|e| (e.identity, e.used)).collect())
    }

    /// Whether [`Keeper::hand_over`] ran (and no resume since).
    pub fn handed(&self) -> bool {
        self.shared.handed.load(Ordering::SeqCst)
    }

    /// A handover that failed after [`Keeper::hand_over`]: this process
    /// writes again.
    pub fn resume(self: &Arc<Self>) {
        self.shared.handed.store(false, Ordering::SeqCst);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (l, s) = (Arc::clone(&self.ledger), Arc::clone(&self.shared));
        let thread = std::thread::Builder::new()
            .name("egressd-quota".into())
            .spawn(move || saver(&l, &s, &rx))
            .map_err(|e| warn!(target: "egressd::quota", "cannot start the quota saver: {e}"))
            .ok();
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = thread;
    }
}

/// The saver thread: every SAVE_EVERY until the sender is dropped.
fn saver(ledger: &Ledger, shared: &Shared, stop: &Receiver<()>) {
    let mut failing = false;
    loop {
        match stop.recv_timeout(SAVE_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let t = ledger.tick(now_ms(), Instant::now());
        if let Some(j) = t.jump_ms {
            warn!(target: "egressd::quota", "the wall clock jumped {j} ms: quota periods moved with it, no counter reset");
        }
        for name in &t.renewed {
            info!(target: "egressd::quota", "quota of {name}: a new period, nothing used");
        }
        match save(ledger, shared, false) {
            Ok(()) => failing = false,
            // Said once per run of failures, and when it recovers.
            Err(e) if !failing => {
                failing = true;
                error!(target: "egressd::quota", "{e} (counts since the last save are lost if egressd stops now)");
            }
            Err(_) => {}
        }
    }
}

/// Writes the ledger when it changed (or `force`), and only when there is
/// something to keep: a quota in the config, or counters already.
fn save(ledger: &Ledger, shared: &Shared, force: bool) -> Result<(), String> {
    let snap = ledger.snapshot();
    if !shared.metered.load(Ordering::Relaxed) && snap.entries.is_empty() && snap.closed.is_none() {
        return Ok(());
    }
    let text = state::encode(&snap);
    let mut saved = shared.saved.lock().unwrap_or_else(|e| e.into_inner());
    if !force && *saved == text {
        return Ok(());
    }
    store::save(&shared.dir, &snap)
        .map_err(|e| format!("cannot save the quota state in {}: {e}", shared.dir.display()))?;
    *saved = text;
    Ok(())
}
