//! The hand-off queue from the front loops to one worker: a crossbeam
//! channel, bounded by a counter.
//!
//! crossbeam's bounded channel is an array that lays out and writes every
//! slot when it is made: a queue deep enough for a burst of thousands of
//! connects would be ~100 KiB resident per worker at rest. Its list flavour
//! holds blocks of 31 slots only while they carry hand-offs, so an idle
//! worker's queue is one block; the bound is the same, kept here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};

/// The sending side, one clone per front loop.
pub struct QueueTx<T> {
    tx: Sender<T>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        QueueTx { tx: self.tx.clone(), queued: Arc::clone(&self.queued), cap: self.cap }
    }
}

/// The worker's side.
pub struct QueueRx<T> {
    rx: Receiver<T>,
    queued: Arc<AtomicUsize>,
}

/// A queue that holds at most `cap` values.
pub fn queue<T>(cap: usize) -> (QueueTx<T>, QueueRx<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    (QueueTx { tx, queued: Arc::clone(&queued), cap }, QueueRx { rx, queued })
}

impl<T> QueueTx<T> {
    /// Queues without blocking; gives the value back when `cap` are queued
    /// (or the worker is gone).
    pub fn try_send(&self, v: T) -> Result<(), T> {
        // Room is taken before sending, so senders racing for the last slot
        // cannot overfill it; the loser gives it back.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(v);
        }
        self.tx.send(v).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.into_inner()
        })
    }
}

impl<T> QueueRx<T> {
    pub fn try_recv(&self) -> Option<T> {
        let v = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(v)
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_cap_and_frees_room_as_it_is_read() {
        let (tx, rx) = queue::<u32>(3);
        let tx2 = tx.clone();
        assert!(tx.try_send(1).is_ok() && tx2.try_send(2).is_ok() && tx.try_send(3).is_ok());
        assert_eq!(tx2.try_send(4), Err(4), "a fourth value is refused");
        assert_eq!(rx.try_recv(), Some(1));
        assert!(tx2.try_send(5).is_ok(), "reading one makes room for one");
        assert_eq!(tx.try_send(6), Err(6));
        let rest: Vec<u32> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(rest, [2, 3, 5], "in order, nothing lost");
        assert!(rx.is_empty());
    }

    #[test]
    fn a_gone_worker_gives_the_value_back() {
        let (tx, rx) = queue::<u32>(3);
        drop(rx);
        assert_eq!(tx.try_send(7), Err(7));
        assert_eq!(tx.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn racing_senders_never_overfill() {
        let (tx, rx) = queue::<u32>(100);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || (0..1000).filter(|i| tx.try_send(*i).is_ok()).count())
            })
            .collect();
        let sent: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(sent, 100);
        assert_eq!(std::iter::from_fn(|| rx.try_recv()).count(), 100);
    }
}
