//! The meter exchange of an upgrade (issue 28): while an old process
//! drains, its flows and the new process's share each source's class rate
//! and quota. Every worker reports, about ten times a second, what its
//! shaped and metered sources moved; the report goes to every process
//! linked to this one, whose workers take it off the same sources'
//! buckets and whose ledger counts it in the same quotas.
//!
//! ```text
//!  worker (Shapers::report, every 100 ms) ─► Meters::send(None) ─► each link's queue
//!        link's thread: queue ─► Msg::Used ─► the other process
//!        Msg::Used from the other process ─► apply here (workers' buckets, ledger)
//!                                         └► Meters::send(Some(that link)) ─► the other links
//! ```
//!
//! Links form a chain (each process has at most its predecessor and its
//! successor), and a report is passed on to every link but the one it
//! came from, so it reaches every process once. Without a link (no
//! upgrade under way) nothing is reported: the workers only add to two
//! counters per read, as they count anyway.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crossbeam_channel::{Receiver, Sender};

/// Reports a link's queue holds before more are dropped (its thread
/// stuck): ten seconds' worth from two workers.
const QUEUE: usize = 256;

/// What one process's shaped and metered flows moved since its last report.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Used {
    /// Per source address, bytes up and down through its gate.
    pub rates: Vec<(IpAddr, [u64; 2])>,
    /// Per quota identity, bytes counted.
    pub quota: Vec<(String, u64)>,
}

impl Used {
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty() && self.quota.is_empty()
    }

    /// The rows of `parts` summed, one per source and one per identity.
    pub fn sum(parts: impl IntoIterator<Item = Used>) -> Used {
        let mut rates: HashMap<IpAddr, [u64; 2]> = HashMap::new();
        let mut quota: HashMap<String, u64> = HashMap::new();
        for p in parts {
            for (ip, b) in p.rates {
                let have = rates.entry(ip).or_default();
                have[0] = have[0].saturating_add(b[0]);
                have[1] = have[1].saturating_add(b[1]);
            }
            for (id, n) in p.quota {
                let have = quota.entry(id).or_default();
                *have = have.saturating_add(n);
            }
        }
        let mut u = Used { rates: rates.into_iter().collect(), quota: quota.into_iter().collect() };
        u.rates.sort_unstable();
        u.quota.sort_unstable();
        u
    }
}

impl Used {
    /// In records of at most `rows` rows each (a report never exceeds a record).
    pub fn chunks(self, rows: usize) -> Vec<Used> {
        let rows = rows.max(1);
        let mut out = Vec::new();
        let (mut rates, mut quota) = (self.rates.into_iter().peekable(), self.quota.into_iter().peekable());
        while rates.peek().is_some() || quota.peek().is_some() {
            out.push(Used {
                rates: rates.by_ref().take(rows).collect(),
                quota: quota.by_ref().take(rows).collect(),
            });
        }
        out
    }
}

/// A process's links to the others of an upgrade (see the module doc).
#[derive(Debug, Default)]
pub struct Meters {
    /// Some link exists: the workers report.
    on: AtomicBool,
    links: Mutex<Vec<(u64, Sender<Used>)>>,
    next_id: AtomicU64,
    /// Reports dropped on a full queue.
    dropped: AtomicU64,
}

impl Meters {
    /// Whether the workers report (a link exists).
    pub fn on(&self) -> bool {
        self.on.load(Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Sender<Used>)>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new link: its id, and the queue of what to send over it.
    pub fn link(&self) -> (u64, Receiver<Used>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let id = self.next_id.fetch_add(1, Relaxed);
        let mut links = self.lock();
        links.push((id, tx));
        self.on.store(true, Relaxed);
        (id, rx)
    }

    /// The link `id` is gone.
    pub fn unlink(&self, id: u64) {
        let mut links = self.lock();
        links.retain(|(i, _)| *i != id);
        self.on.store(!links.is_empty(), Relaxed);
    }

    /// Queues `used` for every link but `from` (`None`: this process's own).
    pub fn send(&self, from: Option<u64>, used: &Used) {
        if used.is_empty() {
            return;
        }
        for (id, tx) in self.lock().iter() {
            if Some(*id) != from && tx.try_send(used.clone()).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Reports dropped because a link's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(ip: &str, up: u64, id: &str, q: u64) -> Used {
        Used { rates: vec![(ip.parse().unwrap(), [up, 0])], quota: vec![(id.into(), q)] }
    }

    #[test]
    fn reports_go_to_every_link_but_the_one_they_came_from() {
        let m = Meters::default();
        assert!(!m.on());
        m.send(None, &used("10.8.0.10", 5, "a", 5)); // no link: nowhere
        let (a, ra) = m.link();
        let (b, rb) = m.link();
        assert!(m.on());
        m.send(None, &used("10.8.0.10", 5, "a", 5));
        m.send(Some(a), &used("10.8.0.11", 7, "b", 7));
        assert_eq!(ra.try_iter().count(), 1, "its own report, not the one it sent");
        assert_eq!(rb.try_iter().count(), 2);
        m.send(None, &Used::default());
        assert!(ra.is_empty(), "nothing to say, nothing sent");
        m.unlink(a);
        m.unlink(b);
        assert!(!m.on());
    }

    #[test]
    fn a_stuck_link_drops_reports_instead_of_growing() {
        let m = Meters::default();
        let (_, rx) = m.link();
        for _ in 0..QUEUE + 10 {
            m.send(None, &used("10.8.0.10", 1, "a", 1));
        }
        assert_eq!((rx.len(), m.dropped()), (QUEUE, 10));
    }

    #[test]
    fn summing_adds_by_source_and_identity() {
        let u = Used::sum([
            used("10.8.0.10", 5, "a", 5),
            used("10.8.0.10", 3, "b", 1),
            used("10.8.0.11", 1, "a", 2),
        ]);
        assert_eq!(
            u.rates,
            vec![("10.8.0.10".parse().unwrap(), [8, 0]), ("10.8.0.11".parse().unwrap(), [1, 0])]
        );
        assert_eq!(u.quota, vec![("a".to_string(), 7), ("b".to_string(), 1)]);
    }

    #[test]
    fn a_report_goes_in_records_of_bounded_rows() {
        let u = Used {
            rates: (0..5u32).map(|i| (IpAddr::from(i.to_be_bytes()), [1, 1])).collect(),
            quota: vec![("a".into(), 1)],
        };
        let parts = u.clone().chunks(2);
        assert_eq!(parts.len(), 3);
        assert_eq!(Used::sum(parts), Used::sum([u]));
        assert!(Used::default().chunks(2).is_empty());
    }
}
