//! The hand-off of datagrams from the front loops to a worker: batches,
//! their process-wide bound, and shedding of sources over their limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::heavy;
use crate::config::Tunnel;
use crate::route::Cidr;

/// Datagrams a front loop received and routed for one worker, packed into
/// one buffer: one hand-off (and one wake) per batch, and the batch comes
/// back to the fronts empty through the worker's recycle channel, so the
/// steady path allocates nothing per datagram.
///
/// Batches are the memory a UDP flood fills when the workers fall behind
/// (a hand-off queue holds thousands), so there are at most
/// [`UdpBatch::max_alive`] of them in the process, each of a fixed size (its
/// buffer never grows):
/// past that, the front drops datagrams (counted as `udp_drop_queue_full`)
/// instead of queueing more.
///
/// Dropping at the front hits every source alike, so before it comes to
/// that — once half the batches are alive — the front sheds the datagrams
/// of the sources a worker found over their limits in the last second
/// (`udp_drop_shed`; see [`heavy`]).
pub struct UdpBatch {
    /// The tunnels `UdpItem::tunnel` indexes (one Arc clone per batch).
    pub tunnels: Arc<[Arc<Tunnel>]>,
    pub items: Vec<UdpItem>,
    pub data: Vec<u8>,
}

/// A batch's payload buffer; it is full when a largest datagram might not fit.
const BATCH_DATA: usize = 128 * 1024;
const BATCH_ITEMS: usize = 256;
/// The batches alive now. Process-wide by design: the bound is on the
/// process's memory, and batches travel between every front and worker.
static BATCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for UdpBatch {
    fn drop(&mut self) {
        BATCHES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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
    /// Batches alive at most, process-wide: 16 per worker, at least 64
    /// (64 × ~140 KiB ≈ 9 MiB).
    pub fn max_alive(workers: usize) -> usize {
        (workers * 16).max(64)
    }

    /// A new batch, or `None` when `max` are alive (drop the datagram: the
    /// workers are behind).
    pub fn bounded(tunnels: Arc<[Arc<Tunnel>]>, max: usize) -> Option<Box<UdpBatch>> {
        use std::sync::atomic::Ordering::Relaxed;
        BATCHES.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Box::new(UdpBatch::unbounded(tunnels)))
    }

    /// A new batch whatever the bound (it still counts towards it).
    pub fn new(tunnels: Arc<[Arc<Tunnel>]>) -> UdpBatch {
        BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        UdpBatch::unbounded(tunnels)
    }

    fn unbounded(tunnels: Arc<[Arc<Tunnel>]>) -> UdpBatch {
        UdpBatch { tunnels, items: Vec::with_capacity(BATCH_ITEMS), data: Vec::with_capacity(BATCH_DATA) }
    }

    /// Whether a front should drop this source's datagram now rather than
    /// queue it: the workers are behind (half the batches alive) and a
    /// worker named the source as over its limits.
    pub fn sheds(source: IpAddr, workers: usize) -> bool {
        BATCHES.load(std::sync::atomic::Ordering::Relaxed) * 2 >= UdpBatch::max_alive(workers)
            && heavy::named(source)
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

    /// Whether the batch should go now: before its buffers would grow.
    pub fn is_full(&self) -> bool {
        self.items.len() >= BATCH_ITEMS || self.data.len() + 65_535 > self.data.capacity()
    }
}
