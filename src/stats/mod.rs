//! Counters. Each thread owns one [`Counters`] and is its only writer, so
//! the relaxed atomic adds never contend; readers sum all threads' values.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// One thread's counters.
        #[derive(Debug, Default)]
        pub struct Counters { $($(#[$m])* pub $name: AtomicU64,)* }

        /// A summed, plain copy of counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl Counters {
            pub fn add_to(&self, s: &mut Snapshot) {
                $(s.$name += self.$name.load(Relaxed);)*
            }
        }

        impl Snapshot {
            /// (name, value) pairs, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// TCP connections accepted from clients.
    tcp_accepted,
    /// Reset: no route for the source and default is Reject.
    drop_no_route,
    /// Closed: the original destination was egressd's own listener.
    drop_loop_guard,
    /// Reset: the worker's hand-off queue was full.
    drop_queue_full,
    /// Times accept paused on EMFILE/ENFILE.
    accept_paused,
    /// TCP flows handed to workers.
    tcp_flows_total,
    /// TCP flows ending in a reset because the tunnel failed.
    tcp_upstream_failed,
    /// Of those, connect or handshake timeouts.
    tcp_connect_timeout,
    /// Flows closed by the idle timeout.
    tcp_idle_closed,
    /// Bytes from clients to upstreams.
    tcp_bytes_up,
    /// Bytes from upstreams to clients.
    tcp_bytes_down,
    /// Flows currently open (incremented and decremented by the owner).
    tcp_flows_active,
    /// Datagrams from clients accepted for a tunnel, and their bytes.
    udp_dgrams_up,
    udp_bytes_up,
    /// Datagrams delivered to clients, and their bytes.
    udp_dgrams_down,
    udp_bytes_down,
    /// UDP sessions created; currently open.
    udp_sessions_total,
    udp_sessions_active,
    /// Dropped: no route for the source and default is Reject.
    udp_drop_no_route,
    /// Dropped: sent straight to the listener, not TPROXY'd (no original destination).
    udp_drop_not_tproxied,
    /// Dropped: longer than the receive buffer, or control data truncated.
    udp_drop_truncated,
    /// Dropped: the worker's hand-off queue was full.
    udp_drop_queue_full,
    /// Dropped: queued while the association was set up, past pending_datagrams.
    udp_drop_pending,
    /// Sessions evicted to stay within max_sessions.
    udp_sessions_evicted,
    /// Sessions that ended because the association failed or closed.
    udp_assoc_failed,
    /// Dropped: the tunnel carries no UDP (and it was not DNS to carry over TCP).
    udp_drop_no_udp,
    /// Dropped: a relay datagram with FRAG != 0.
    udp_drop_frag,
    /// Dropped: a relay datagram with a bad header.
    udp_drop_bad_header,
    /// Dropped: sending failed (socket buffer full or an error).
    udp_drop_send,
    /// Replies not delivered because the reply socket could not bind.
    udp_reply_bind_failed,
    /// Reply sockets currently open.
    udp_reply_sockets,
    /// DNS queries carried over TCP, and their answers.
    dns_tcp_queries,
    dns_tcp_answers,
}

impl Counters {
    #[inline]
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// For gauges owned by one thread.
    #[inline]
    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Relaxed);
    }

    #[inline]
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Relaxed);
    }
}

/// Sums every thread's counters.
pub fn snapshot<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Snapshot {
    let mut s = Snapshot::default();
    for c in all {
        c.add_to(&mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_threads() {
        let a = Counters::default();
        let b = Counters::default();
        Counters::inc(&a.tcp_accepted);
        Counters::add(&b.tcp_accepted, 2);
        Counters::add(&b.tcp_bytes_up, 10);
        let s = snapshot([&a, &b]);
        assert_eq!(s.tcp_accepted, 3);
        assert_eq!(s.tcp_bytes_up, 10);
        assert!(s.fields().contains(&("tcp_accepted", 3)));
    }
}
