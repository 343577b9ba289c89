//! The hand-off of datagrams from the front loops to a worker: batches,
//! their process-wide bound, and shedding of sources over their limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::heavy;
use crate::config::Tunnel;
use crate::route::Cidr;
use crate::snapshot::RouteView;

/// Datagrams a front loop received and routed for one worker, packed into
/// one buffer: one hand-off (and one wake) per batch, and the batch comes
/// back to the fronts empty through the worker's recycle channel, so the
/// steady path allocates nothing per datagram.
///
/// Batches are the memory a UDP flood fills when the workers fall behind
/// (a hand-off queue holds thousands), so the bytes handed over and not yet
/// handled are bounded ([`UdpBatch::in_flight_max`], charged when a front
/// hands a batch over, released when the worker has handled it), and so is
/// the number of batches alive ([`UdpBatch::max_alive`]; buffers grow with
/// what they carry, to 128 KiB at most, so a batch of one small datagram is
/// small). Past either, the front drops datagrams (counted as
/// `udp_drop_queue_full`) instead of queueing more.
///
/// Dropping at the front hits every source alike, so before it comes to
/// that — from half the bytes in flight on — the front sheds the datagrams
/// of the sources a worker found over their limits in the last second
/// (`udp_drop_shed`; see [`heavy`]).
pub struct UdpBatch {
    /// The tunnels `UdpItem::tunnel` indexes (one Arc clone per batch).
    pub tunnels: Arc<[Arc<Tunnel>]>,
    /// The generation of the routes its items were routed with: one for
    /// the whole batch, which a front fills within one snapshot (see
    /// [`UdpBatch::routed_with`] and the worker's `routing`).
    pub generation: u64,
    pub items: Vec<UdpItem>,
    pub data: Vec<u8>,
    /// What this batch was charged against [`IN_FLIGHT`] when handed over.
    charged: usize,
}

/// A batch's buffers start small (a batch often carries one datagram) and
/// grow with use; a batch is full from `BATCH_FULL` bytes on, so its
/// payload buffer never grows past 128 KiB.
const BATCH_DATA: usize = 16 * 1024;
const BATCH_FULL: usize = 64 * 1024;
const BATCH_ITEMS: usize = 256;
/// A tunnel index no tunnel list reaches (an item rejected by `reroute`).
const REJECTED: u16 = u16::MAX;
/// The batches alive now, and the bytes handed over and not yet handled.
/// Process-wide by design: the bound is on the process's memory, and
/// batches travel between every front and worker.
static BATCHES: AtomicUsize = AtomicUsize::new(0);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

impl Drop for UdpBatch {
    fn drop(&mut self) {
        self.release();
        BATCHES.fetch_sub(1, Relaxed);
    }
}

/// One datagram of a batch; its payload is `data[start..start + len]`.
#[derive(Debug, Clone, Copy)]
pub struct UdpItem {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub tunnel: u16,
    /// The route that matched (`None`: the default tunnel), for counters.
    pub source: Option<Cidr>,
    pub start: u32,
    pub len: u32,
}

impl UdpBatch {
    /// Batches alive at most, process-wide: enough for a burst of small
    /// datagrams that each come in a wake-up of their own.
    pub fn max_alive(workers: usize) -> usize {
        (workers * 256).max(1024)
    }

    /// Bytes handed over and not yet handled, at most, process-wide:
    /// 2 MiB per worker.
    pub fn in_flight_max(workers: usize) -> usize {
        workers.max(1) * (2 << 20)
    }

    /// A new batch, or `None` when `max` are alive (drop the datagram: the
    /// workers are behind).
    pub fn bounded(tunnels: Arc<[Arc<Tunnel>]>, max: usize) -> Option<Box<UdpBatch>> {
        BATCHES.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Box::new(UdpBatch::unbounded(tunnels)))
    }

    /// A new batch whatever the bound (it still counts towards it).
    pub fn new(tunnels: Arc<[Arc<Tunnel>]>) -> UdpBatch {
        BATCHES.fetch_add(1, Relaxed);
        UdpBatch::unbounded(tunnels)
    }

    fn unbounded(tunnels: Arc<[Arc<Tunnel>]>) -> UdpBatch {
        UdpBatch {
            tunnels,
            generation: 0,
            items: Vec::with_capacity(16),
            data: Vec::with_capacity(BATCH_DATA),
            charged: 0,
        }
    }

    /// Charges the batch against the bytes in flight before a front hands
    /// it over; false: over the bound (drop it).
    pub fn charge(&mut self, workers: usize) -> bool {
        let w = self.data.len() + self.items.len() * std::mem::size_of::<UdpItem>();
        let max = UdpBatch::in_flight_max(workers);
        if IN_FLIGHT.fetch_update(Relaxed, Relaxed, |n| (n + w <= max).then_some(n + w)).is_err() {
            return false;
        }
        self.charged = w;
        true
    }

    /// Gives back what the batch was charged (the worker has handled it,
    /// or it was never handed over).
    pub fn release(&mut self) {
        IN_FLIGHT.fetch_sub(std::mem::take(&mut self.charged), Relaxed);
    }

    /// Whether a front should drop this source's datagram now rather than
    /// queue it: the workers are behind (half the bytes in flight) and a
    /// worker named the source as over its limits.
    pub fn sheds(source: IpAddr, workers: usize) -> bool {
        IN_FLIGHT.load(Relaxed) * 2 >= UdpBatch::in_flight_max(workers) && heavy::named(source)
    }

    /// Makes an empty batch carry the routes of `generation` (the tunnels
    /// its items will index). A batch that still holds items routed with
    /// other routes must be sent first: `false`, nothing changed. Items of
    /// one batch always index the tunnels they were routed against, even
    /// when a reload reorders the tunnels between two datagrams.
    pub fn routed_with(&mut self, generation: u64, tunnels: &Arc<[Arc<Tunnel>]>) -> bool {
        if self.generation == generation && Arc::ptr_eq(&self.tunnels, tunnels) {
            return true;
        }
        if !self.items.is_empty() {
            return false;
        }
        self.generation = generation;
        self.tunnels = Arc::clone(tunnels);
        true
    }

    /// Routes every item again with `view` (the batch was routed before a
    /// reset); items the view rejects are marked so that no tunnel matches
    /// them. Returns how many were rejected.
    pub fn reroute(&mut self, view: &dyn RouteView) -> usize {
        let mut rejected = 0;
        for it in &mut self.items {
            match view.route(it.client.ip()) {
                Some((source, tunnel)) => (it.source, it.tunnel) = (source, tunnel),
                None => {
                    it.tunnel = REJECTED;
                    rejected += 1;
                }
            }
        }
        self.tunnels = Arc::clone(view.tunnels());
        rejected
    }

    pub fn push(
        &mut self,
        client: SocketAddr,
        orig_dst: SocketAddr,
        route: (Option<Cidr>, u16),
        payload: &[u8],
    ) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(payload);
        let (source, tunnel) = route;
        self.items.push(UdpItem { client, orig_dst, tunnel, source, start, len: payload.len() as u32 });
    }

    /// Whether the batch should go now (its buffers stay under 128 KiB).
    pub fn is_full(&self) -> bool {
        self.items.len() >= BATCH_ITEMS || self.data.len() >= BATCH_FULL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn tunnels(names: &[&str]) -> Arc<[Arc<Tunnel>]> {
        let list: Vec<String> = names.iter().map(|n| format!(r#""{n}": Direct()"#)).collect();
        let text = format!(
            r#"(listen: ["10.8.0.1:10900"], tunnels: {{ {} }}, routes: [], default: Tunnel("a"))"#,
            list.join(", ")
        );
        Settings::parse("t.ron", &text).unwrap().tunnels.iter().cloned().map(Arc::new).collect()
    }

    fn push(b: &mut UdpBatch, client: &str, tunnel: u16) {
        b.push(client.parse().unwrap(), "203.0.113.10:53".parse().unwrap(), (None, tunnel), b"q");
    }

    /// Issue 21: a batch kept (empty) after a failed budget charge, then a
    /// SIGHUP that reorders the tunnels: a new datagram's index must point
    /// into the new list, not the one the batch was made with.
    #[test]
    fn a_kept_batch_takes_the_tunnels_of_the_routes_that_fill_it() {
        let old = tunnels(&["a", "b"]);
        let new = tunnels(&["b", "a"]);
        let mut b = UdpBatch::new(Arc::clone(&old));
        assert!(b.routed_with(0, &old));
        push(&mut b, "10.8.0.10:5000", 1); // "b" in the old order
        // Routed with the old snapshot and not yet sent: it must go first.
        assert!(!b.routed_with(1, &new));
        assert!(Arc::ptr_eq(&b.tunnels, &old));
        // Sent (or dropped: the front clears it and keeps it for reuse).
        b.items.clear();
        b.data.clear();
        assert!(b.routed_with(1, &new));
        assert_eq!(b.generation, 1);
        push(&mut b, "10.8.0.10:5000", 0); // "b" in the new order
        let it = b.items[0];
        assert_eq!(b.tunnels[usize::from(it.tunnel)].name, "b");
    }

    struct OneRoute(Arc<[Arc<Tunnel>]>, Option<u16>);

    impl RouteView for OneRoute {
        fn route(&self, client: IpAddr) -> Option<(Option<Cidr>, u16)> {
            self.1.filter(|_| client == "10.8.0.10".parse::<IpAddr>().unwrap()).map(|t| (None, t))
        }
        fn tunnels(&self) -> &Arc<[Arc<Tunnel>]> {
            &self.0
        }
        fn holds_container(&self, _: IpAddr) -> bool {
            false
        }
    }

    /// Issue 21: a batch routed before a reset is routed again, every item,
    /// against the new view's tunnels; what the view rejects matches none.
    #[test]
    fn a_batch_routed_before_a_reset_is_routed_again() {
        let old = tunnels(&["a", "b"]);
        let mut b = UdpBatch::new(Arc::clone(&old));
        push(&mut b, "10.8.0.10:5000", 0);
        push(&mut b, "10.8.0.11:5000", 0);
        let new = tunnels(&["a", "b", "c"]);
        assert_eq!(b.reroute(&OneRoute(Arc::clone(&new), Some(2))), 1);
        assert!(Arc::ptr_eq(&b.tunnels, &new));
        assert_eq!(b.tunnels.get(usize::from(b.items[0].tunnel)).map(|t| t.name.as_str()), Some("c"));
        assert!(b.tunnels.get(usize::from(b.items[1].tunnel)).is_none(), "rejected");
    }
}
