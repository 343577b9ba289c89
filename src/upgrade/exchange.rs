//! After the handover, over the same link: the meter exchange while the
//! old process drains (see [`crate::worker::Meters`]), then what its drain
//! counted once it ends (`Spent`).
//!
//! ```text
//!   old (draining)                       new (serving)
//!    │ Used (its workers, every 100 ms) ─►  │ buckets of the same sources, ledger
//!    │ buckets, ledger ◄─ Used (its workers) │
//!    │ ... its last flow ends: a last Used   │
//!    │ Spent {counts[, bytes]}          ─►  │ counters (and quota bytes without meters)
//!    ╳                                       │ logs the old process's end
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{info, warn};

use super::{Got, Link, Msg};
use crate::quota::Ledger;
use crate::stats::Registry;
use crate::worker::{Meters, Used};

/// Where a report from another process goes here: its bytes come off the
/// same sources' buckets and count in the same quotas.
pub trait Apply: Send + Sync {
    fn apply(&self, used: &Used);
}

/// What a process does with what another one of the upgrade tells it.
#[derive(Clone)]
pub struct Sink {
    pub ledger: Arc<Ledger>,
    pub registry: Arc<Registry>,
    /// How long carried sources are kept (`control.forget_sources_secs`).
    pub keep: Duration,
    pub meters: Arc<Meters>,
    pub apply: Arc<dyn Apply>,
}

impl Sink {
    /// The other process's report: applied here, passed on to the other
    /// links (`from`: the one it came over).
    fn used(&self, from: u64, used: &Used) {
        self.apply.apply(used);
        self.meters.send(Some(from), used);
    }

    /// The old process's end: what its drain counted.
    fn spent(&self, old: u32, bytes: &[(String, u64)], counts: &super::wire::Counts) {
        self.registry.carry(&counts.counted(), Instant::now() + self.keep);
        let n = bytes.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b));
        for (name, b) in bytes {
            if !self.ledger.credit(name, *b) {
                warn!(target: "egressd::upgrade", "old process counted {b} bytes for unknown quota identity {name}");
            }
        }
        if n > 0 {
            info!(target: "egressd::upgrade", "old process {old}: its draining flows counted {n} more quota bytes, added");
        }
    }
}

/// Quota bytes that came over one link in reports, per identity.
pub(super) type Received = HashMap<String, u64>;

/// What [`run`] does with a message that is not a report, given the
/// quota bytes the reports brought so far.
pub(super) type Other<'a> = dyn FnMut(Msg, &Received) + 'a;

/// How a link's exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// The other side closed the link (or it failed).
    Closed,
    /// `stop` fired: this side has more to say (its `Spent`).
    Stopped,
}

/// Exchanges reports over `link` (when `meters`: else only reads) until
/// the other side closes it or `stop` fires; every other message goes to
/// `other`, with the quota bytes reports brought so far (`received`).
pub(super) fn run(
    link: &mut Link,
    sink: &Sink,
    meters: bool,
    stop: &Receiver<()>,
    (received, other): (&mut Received, &mut Other<'_>),
) -> Ended {
    let every = crate::worker::REPORT_EVERY;
    let (id, mine) = if meters { sink.meters.link() } else { (u64::MAX, crossbeam_channel::never()) };
    let mut next = Instant::now() + every;
    let ended = loop {
        if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
            flush(link, &mine);
            break Ended::Stopped;
        }
        if Instant::now() >= next {
            next = Instant::now() + every;
            if !flush(link, &mine) {
                break Ended::Closed;
            }
        }
        // Not waiting past the next report, nor long past a stop.
        let wait = if meters { next } else { Instant::now() + every };
        match link.got(Some(wait)) {
            Got::Msg(Msg::Used(u), _) if meters => {
                for (name, n) in &u.quota {
                    let r = received.entry(name.clone()).or_default();
                    *r = r.saturating_add(*n);
                }
                sink.used(id, &u);
            }
            Got::Msg(m, _) => other(m, received),
            Got::TimedOut => {}
            Got::Closed => break Ended::Closed,
            Got::Failed(e) => {
                warn!(target: "egressd::upgrade", "the link to the other process failed ({e}): no more rate and quota reports");
                break Ended::Closed;
            }
        }
    };
    if meters {
        sink.meters.unlink(id);
    }
    ended
}

/// Sends what this process's workers (and the other links) queued for
/// this link in one report; false when the link is gone.
fn flush(link: &Link, mine: &Receiver<Used>) -> bool {
    Used::sum(mine.try_iter()).chunks(ROWS).into_iter().all(|u| send_used(link, u))
}

/// Sends a report, in halves until each fits a record of the link.
fn send_used(link: &Link, u: Used) -> bool {
    let rows = u.rates.len().max(u.quota.len());
    let msg = Msg::Used(u);
    match msg {
        Msg::Used(u) if rows > 1 && !link.fits(&msg) => {
            u.chunks(rows.div_ceil(2)).into_iter().all(|half| send_used(link, half))
        }
        _ => link.send(&msg, &[]).is_ok(),
    }
}

/// Rows of a report per record (a record holds more, [`send_used`]
/// splits one that does not fit).
const ROWS: usize = 16 * 1024;

/// The new process's side, on a thread of its own: reports both ways
/// while the old process drains, then its `Spent`, until it ends.
pub(super) fn successor(
    mut link: Link,
    old: u32,
    meters: bool,
    sink: Sink,
) -> Result<std::thread::JoinHandle<()>, String> {
    let started = Instant::now();
    std::thread::Builder::new()
        .name("egressd-handover".into())
        .spawn(move || {
            let never = crossbeam_channel::never();
            let mut other = |m: Msg, received: &Received| {
                if let Msg::Spent { bytes, counts } = m {
                    // Its reports' quota bytes are counted here already.
                    let bytes: Vec<(String, u64)> = bytes
                        .into_iter()
                        .map(|(name, b)| {
                            let b = b.saturating_sub(received.get(&name).copied().unwrap_or(0));
                            (name, b)
                        })
                        .collect();
                    sink.spent(old, &bytes, &counts);
                }
            };
            run(&mut link, &sink, meters, &never, (&mut Received::new(), &mut other));
            info!(target: "egressd::upgrade", "old process {old} ended {:.1} s after the handover", started.elapsed().as_secs_f64());
        })
        .map_err(|e| e.to_string())
}

/// The old process's side while it drains: reports both ways on a thread
/// of its own until [`Sharing::stop`].
pub(super) struct Sharing {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<Option<(Link, Received)>>,
}

impl Sharing {
    /// The exchange on `link`; the link back if no thread could start.
    pub(super) fn start(link: Link, sink: Sink) -> Result<Sharing, (Link, String)> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        // The link goes to the thread once it runs, so a failed spawn keeps it.
        let (tx, rx) = crossbeam_channel::bounded::<Link>(1);
        let spawned = std::thread::Builder::new().name("egressd-meters".into()).spawn(move || {
            let mut link = rx.recv().ok()?;
            let mut received = Received::new();
            run(&mut link, &sink, true, &stopped, (&mut received, &mut |_, _| {}));
            Some((link, received))
        });
        match spawned {
            Ok(thread) => {
                let _ = tx.send(link);
                Ok(Sharing { stop, thread })
            }
            Err(e) => Err((link, e.to_string())),
        }
    }

    /// Ends the exchange after a last report; the link back, and the
    /// quota bytes the other process's reports brought.
    pub(super) fn stop(self) -> (Option<Link>, Received) {
        let _ = self.stop.send(());
        match self.thread.join().ok().flatten() {
            Some((link, received)) => (Some(link), received),
            None => (None, Received::new()),
        }
    }
}
