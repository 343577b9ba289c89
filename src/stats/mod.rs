//! Counters. Each thread owns one [`Counters`] and is its only writer, so
//! the relaxed atomic adds never contend; readers sum all threads' values.

mod help;
mod registry;

pub use registry::{Counted, Registry};

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
            fn add_each(&self, s: &mut Snapshot) {
                $(s.$name = s.$name.saturating_add(self.$name.load(Relaxed));)*
            }

            /// Adds `from`'s counts to these (a worker's counters that
            /// nothing holds any more, kept in its source's totals).
            pub fn absorb(&self, from: &Counters) {
                $(self.$name.fetch_add(from.$name.load(Relaxed), Relaxed);)*
            }

            /// Adds `s`'s values to these.
            pub fn add_snapshot(&self, s: &Snapshot) {
                // Saturating: these are counts another process handed over.
                $(let _ = self.$name.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_add(s.$name)));)*
            }
        }

        impl Snapshot {
            /// How many counters there are.
            pub const LEN: usize = [$(stringify!($name)),*].len();

            /// The values, in declaration order (as [`Snapshot::fields`]).
            pub fn values(&self) -> [u64; Self::LEN] {
                [$(self.$name,)*]
            }

            /// (name, value) pairs, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }

            /// Adds `v` to the counter `name`; false for a name this
            /// build does not have.
            fn add_named(&mut self, name: &str, v: u64) -> bool {
                match name {
                    $(stringify!($name) => self.$name = self.$name.saturating_add(v),)*
                    _ => return false,
                }
                true
            }
        }
    };
}

/// What a counter grew by since it read `was`; one that went down (reset,
/// forgotten and back, a quota period renewed) counts from 0.
pub fn growth(was: u64, now: u64) -> u64 {
    if now >= was { now - was } else { now }
}

/// A carried count (another process's number) is capped here, so that
/// adding it to this process's counters and summing them cannot overflow:
/// 2^62 bytes is four exbibytes.
pub const MAX_CARRIED: u64 = 1 << 62;

counters! {
    /// TCP connections accepted from clients.
    tcp_accepted,
    /// Reset: no route for the source and default is Reject.
    drop_no_route,
    /// Reset: the source's quota is spent (`on_quota: Reject`).
    drop_quota,
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
    /// Of those, handshakes the server refused or broke (any reason).
    tcp_handshake_failed,
    /// Of those, credentials rejected (SOCKS5 auth status, HTTP 401/407).
    tcp_auth_rejected,
    /// Flows closed by the idle timeout.
    tcp_idle_closed,
    /// Bytes from clients to upstreams.
    tcp_bytes_up,
    /// Bytes from upstreams to clients.
    tcp_bytes_down,
    /// Flows currently open (incremented and decremented by the owner).
    tcp_flows_active,
    /// Reset: the source had tcp.max_flows_per_source flows open.
    tcp_drop_source_flows,
    /// Reset: the source was over tcp.new_flows_per_source_per_sec.
    tcp_drop_source_rate,
    /// Reset: the source held its share of the file descriptors.
    tcp_drop_fd_share,
    /// Reset: a new source past its route's max_sources_per_route.
    tcp_drop_source_cap,
    /// Client bytes held while tunnels open (gauge), and the flows whose
    /// client was left unread because the worker's early-byte budget was spent.
    tcp_early_bytes,
    tcp_early_waits,
    /// Times a shaped source's TCP flow stopped at its class's or tunnel
    /// share's rate and waited for its bucket (issue 26).
    tcp_shaped_waits,
    /// Open TCP flows ended: their source's quota was spent (issue 27).
    tcp_quota_ended,
    /// Bytes waiting in the kernel for a shaped source's TCP flows while
    /// they wait for their rate, as of each flow's last wait (a gauge).
    tcp_held_bytes,
    /// The rate a shaped source is held to now, bytes per second, per
    /// direction: the lower of its class's cap and its tunnel share, summed
    /// over the source's shaped addresses (gauges; 0: not shaped).
    shape_rate_up,
    shape_rate_down,
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
    /// Dropped: queued while the association was set up, past the worker's
    /// or the source's share of pending bytes.
    udp_drop_pending_bytes,
    /// Dropped: a new session from a source over new_sessions_per_source_per_sec.
    udp_drop_source_rate,
    /// Dropped: a new source past its route's max_sources_per_route.
    udp_drop_source_cap,
    /// Sessions a source gave up at max_sessions_per_source (its own oldest).
    udp_source_full,
    /// Dropped: a reply naming a host, loopback or container address as its source.
    udp_drop_reply_source,
    /// Dropped: an unsolicited datagram to a Direct session with no reply socket to spare.
    udp_drop_unsolicited,
    /// Dropped at the front while the workers were behind, from a source over its limits.
    udp_drop_shed,
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
    /// Dropped: over the source's class or tunnel share rate (UDP is policed).
    udp_drop_shaped,
    /// Dropped: the source's quota is spent (`on_quota: Reject`).
    udp_drop_quota,
    /// Their payload bytes.
    udp_bytes_shaped,
    /// Replies not delivered because the reply socket could not bind.
    udp_reply_bind_failed,
    /// Reply sockets currently open.
    udp_reply_sockets,
    /// DNS queries carried over TCP, and their answers.
    dns_tcp_queries,
    dns_tcp_answers,
    /// DNS over TCP: connections opened (pooled per tunnel, source address
    /// and resolver), and queries dropped unanswered after
    /// udp.dns_answer_timeout_secs (each on its own; the connection stays).
    dns_tcp_connections,
    dns_tcp_timeouts,
    /// DNS over TCP, dropped: a query longer than udp.dns_max_query_bytes;
    /// a query its connection could not take (udp.dns_queue_bytes_per_connection
    /// unwritten, or 1 024 in flight).
    dns_tcp_drop_too_big,
    dns_tcp_drop_queue_full,
    /// DNS-over-TCP connections closed because queries went late and the
    /// server answered nothing for udp.dns_answer_timeout_secs; queries in
    /// flight lost when their connection closed (stalled, closed by the
    /// server, failed, or not open in time).
    dns_tcp_stalled,
    dns_tcp_lost,
    /// Labelled containers whose label names no tunnel (each counted once).
    docker_unknown_tunnel,
    /// Labelled containers whose class label names no class (each counted once).
    docker_unknown_class,
    /// Label routes (container addresses) live now.
    docker_label_routes,
    /// Warm pools (published to the registry by the pools as [`Gauges`], never counted by a thread):
    /// flows that found a greeted connection ready, and those that did not.
    pool_hits,
    pool_misses,
    /// Greeted connections added to a pool.
    pool_refills,
    /// Pooled connections closed unused: closed by the server, refreshed before its idle limit, drained on reload.
    pool_discards,
    /// Times pooling stopped for a server that closes idle connections within seconds.
    pool_disabled,
    /// Greeted connections ready now, and the pools' configured size.
    pool_ready,
    pool_size,
    /// The same for warm UDP associations (`warm_udp`).
    pool_udp_hits,
    pool_udp_misses,
    pool_udp_refills,
    pool_udp_discards,
    pool_udp_ready,
    pool_udp_size,
    /// TCP flows whose first bytes followed the request without waiting for its answer.
    tcp_pipelined,
    /// The host's net.bridge.bridge-nf-call-ip(6)tables (1: the bridge trap,
    /// every container's UDP is dropped), and its UdpNoPorts + Udp6NoPorts,
    /// read every few seconds (`hostwatch`).
    bridge_nf_call_iptables,
    bridge_nf_call_ip6tables,
    host_udp_noports,
    /// The longest turn of a worker loop (from poll returning to the next
    /// poll, in microseconds) in the last 10 to 20 seconds: each worker
    /// keeps the longest of the current and the previous 10-second window;
    /// summing takes the longest over workers, not the sum.
    worker_turn_max_us,
}

impl Counters {
    /// Adds these counts to `s`; for the longest-turn gauge, the longest.
    pub fn add_to(&self, s: &mut Snapshot) {
        let longest = s.worker_turn_max_us.max(self.worker_turn_max_us.load(Relaxed));
        self.add_each(s);
        s.worker_turn_max_us = longest;
    }
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

    /// Moves a gauge owned by one thread from `was` to `now`.
    #[inline]
    pub fn shift(c: &AtomicU64, was: u64, now: u64) {
        if now >= was {
            c.fetch_add(now - was, Relaxed);
        } else {
            c.fetch_sub(was - now, Relaxed);
        }
    }
}

/// Counters kept outside the thread counters by a feature that owns them
/// (the warm pools), published through here so that `stats` names no
/// feature: a snapshot read from the registry asks each for its part.
pub trait Gauges: Send + Sync + std::fmt::Debug {
    /// Adds the gauges of the tunnel `name` (all tunnels for `None`) to `s`.
    fn fill(&self, name: Option<&str>, s: &mut Snapshot);
}

/// One flow's counters besides its thread's: its tunnel's and its route
/// source's (both this worker's own, so never contended).
#[derive(Debug, Clone)]
pub struct Tally {
    pub tunnel: std::sync::Arc<Counters>,
    pub source: std::sync::Arc<Counters>,
}

impl Tally {
    #[inline]
    pub fn inc(&self, f: impl Fn(&Counters) -> &AtomicU64) {
        Counters::inc(f(&self.tunnel));
        Counters::inc(f(&self.source));
    }

    #[inline]
    pub fn add(&self, f: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        Counters::add(f(&self.tunnel), n);
        Counters::add(f(&self.source), n);
    }

    #[inline]
    pub fn dec(&self, f: impl Fn(&Counters) -> &AtomicU64) {
        Counters::dec(f(&self.tunnel));
        Counters::dec(f(&self.source));
    }

    /// Counts one in the thread's totals (`all`) and in this tunnel and
    /// source: the pair of calls nearly every event of a flow makes.
    #[inline]
    pub fn inc_all(&self, all: &Counters, f: impl Fn(&Counters) -> &AtomicU64) {
        Counters::inc(f(all));
        self.inc(f);
    }

    /// [`Tally::inc_all`] for `n`.
    #[inline]
    pub fn add_all(&self, all: &Counters, f: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        Counters::add(f(all), n);
        self.add(f, n);
    }

    /// Moves a gauge of this tunnel and source, and the thread's, from
    /// `was` to `now`.
    #[inline]
    pub fn shift_all(&self, all: &Counters, f: impl Fn(&Counters) -> &AtomicU64, was: u64, now: u64) {
        Counters::shift(f(all), was, now);
        Counters::shift(f(&self.tunnel), was, now);
        Counters::shift(f(&self.source), was, now);
    }

    /// [`Tally::inc_all`] for a gauge going down.
    #[inline]
    pub fn dec_all(&self, all: &Counters, f: impl Fn(&Counters) -> &AtomicU64) {
        Counters::dec(f(all));
        self.dec(f);
    }
}

impl Snapshot {
    /// The totals (gauges left out) that are not 0, by name: what an
    /// upgrade carries to the new process (names, so that a build with
    /// other counters takes the ones it knows).
    pub fn totals(&self) -> Vec<(String, u64)> {
        self.fields()
            .into_iter()
            .filter(|&(n, v)| v > 0 && !is_gauge(n))
            .map(|(n, v)| (n.to_string(), v))
            .collect()
    }

    /// Totals by name, as [`Snapshot::totals`] gives them: gauges and
    /// names this build does not know are left out.
    pub fn from_totals(totals: &[(String, u64)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (n, v) in totals {
            if !is_gauge(n) {
                s.add_named(n, (*v).min(MAX_CARRIED));
            }
        }
        s
    }

    /// What was counted since `then` (an earlier read of the same
    /// counters), totals only; a counter that went down (a source forgotten
    /// and back) counts from 0.
    pub fn since(&self, then: &Snapshot) -> Snapshot {
        let mut d = Snapshot::default();
        for ((n, now), (_, was)) in self.fields().into_iter().zip(then.fields()) {
            if !is_gauge(n) {
                d.add_named(n, growth(was, now));
            }
        }
        d
    }
}

/// Whether a counter is a gauge (goes up and down) rather than a total.
pub fn is_gauge(name: &str) -> bool {
    name.ends_with("_active")
        || matches!(
            name,
            "udp_reply_sockets"
                | "tcp_early_bytes"
                | "tcp_held_bytes"
                | "shape_rate_up"
                | "shape_rate_down"
                | "docker_label_routes"
                | "pool_ready"
                | "pool_size"
                | "pool_udp_ready"
                | "pool_udp_size"
                | "bridge_nf_call_iptables"
                | "bridge_nf_call_ip6tables"
                | "worker_turn_max_us"
        )
}

/// The counters as a readable table: per tunnel, then totals and drops.
pub fn table(total: &Snapshot, tunnels: &[(String, Snapshot)], sources: &[(String, Snapshot)]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<14} {:>9} {:>7} {:>13} {:>13} {:>7} {:>9} {:>7} {:>11} {:>11}",
        "tunnel",
        "tcp flows",
        "active",
        "bytes up",
        "bytes down",
        "failed",
        "udp sess",
        "active",
        "dgrams up",
        "dgrams down"
    );
    let row = |o: &mut String, name: &str, s: &Snapshot| {
        let _ = writeln!(
            o,
            "{:<14} {:>9} {:>7} {:>13} {:>13} {:>7} {:>9} {:>7} {:>11} {:>11}",
            name,
            s.tcp_flows_total,
            s.tcp_flows_active,
            s.tcp_bytes_up + s.udp_bytes_up,
            s.tcp_bytes_down + s.udp_bytes_down,
            s.tcp_upstream_failed + s.udp_assoc_failed,
            s.udp_sessions_total,
            s.udp_sessions_active,
            s.udp_dgrams_up,
            s.udp_dgrams_down
        );
    };
    for (name, s) in tunnels {
        row(&mut o, name, s);
    }
    row(&mut o, "(all)", total);
    if !sources.is_empty() {
        let _ = writeln!(o, "\nper route source:");
        for (name, s) in sources {
            row(&mut o, name, s);
        }
    }
    let _ = writeln!(o, "\ncounters (all threads):");
    for (name, v) in total.fields() {
        let _ = writeln!(o, "  {name:<24} {v}");
    }
    o
}

/// The counters in Prometheus text format (version 0.0.4).
pub fn prometheus(
    total: &Snapshot,
    tunnels: &[(String, Snapshot)],
    sources: &[(String, Snapshot)],
) -> String {
    use std::fmt::Write;
    // Each row's values and label once, not once per counter.
    let lists = [("tunnel", labelled(tunnels)), ("source", labelled(sources))];
    let rows = tunnels.len() + sources.len();
    let mut o = String::with_capacity((rows + 1) * Snapshot::LEN * 64);
    for (i, (name, v)) in total.fields().into_iter().enumerate() {
        let (metric, kind) = exposed(name);
        let _ = writeln!(
            o,
            "# HELP {metric} {} (no label: all of egressd; tunnel: per tunnel; source: per route source)",
            help::of(name)
        );
        let _ = writeln!(o, "# TYPE {metric} {kind}");
        if name == TURN {
            // Promtool wants seconds; no per-tunnel or per-source series.
            let _ = writeln!(o, "{metric} {}.{:06}", v / 1_000_000, v % 1_000_000);
            continue;
        }
        let _ = writeln!(o, "{metric} {v}");
        for (key, rows) in &lists {
            // Pools belong to tunnels: no per-source series that would only read 0.
            if *key == "source" && name.starts_with("pool_") {
                continue;
            }
            // Pieces pushed, not formatted: 10 000 sources make 700 000 lines.
            let head = format!("{metric}{{{key}=\"");
            for (label, values) in rows {
                o.push_str(&head);
                o.push_str(label);
                o.push_str("\"} ");
                push_u64(&mut o, values[i]);
                o.push('\n');
            }
        }
    }
    o
}

/// Appends `v` in decimal.
fn push_u64(o: &mut String, mut v: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    o.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// The longest worker-loop turn, in microseconds (exposed in seconds).
const TURN: &str = "worker_turn_max_us";

/// The Prometheus name and type of the counter `name`.
fn exposed(name: &str) -> (String, &'static str) {
    if name == TURN {
        ("egressd_worker_turn_max_seconds".to_string(), "gauge")
    } else if is_gauge(name) {
        (format!("egressd_{name}"), "gauge")
    } else if name.ends_with("_total") {
        (format!("egressd_{name}"), "counter")
    } else {
        (format!("egressd_{name}_total"), "counter")
    }
}

/// Each row's label value, escaped, and its values.
fn labelled(list: &[(String, Snapshot)]) -> Vec<(String, [u64; Snapshot::LEN])> {
    list.iter().map(|(t, s)| (t.replace('\\', "\\\\").replace('"', "\\\""), s.values())).collect()
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
    fn registry_sums_per_tunnel_and_formats() {
        let r = Registry::default();
        let t = r.thread();
        Counters::add(&t.tcp_bytes_up, 5);
        let a1 = r.tunnel("hk0");
        let a2 = r.tunnel("hk0");
        let b = r.tunnel("hk1");
        let s1 = r.source("10.8.0.10/32");
        Counters::add(&s1.tcp_bytes_down, 7);
        Counters::inc(&a1.tcp_flows_total);
        Counters::inc(&a2.tcp_flows_total);
        Counters::inc(&b.udp_sessions_active);
        let per = r.per_tunnel();
        assert_eq!(per.len(), 2);
        assert_eq!(per[0].0, "hk0");
        assert_eq!(per[0].1.tcp_flows_total, 2);
        assert_eq!(r.total().tcp_bytes_up, 5);
        let src = r.per_source();
        let prom = prometheus(&r.total(), &per, &src);
        assert!(prom.contains("# TYPE egressd_tcp_flows_total counter"), "{prom}");
        assert!(prom.contains("egressd_tcp_flows_total{tunnel=\"hk0\"} 2"), "{prom}");
        assert!(prom.contains("egressd_tcp_bytes_up_total 5"), "{prom}");
        assert!(prom.contains("# TYPE egressd_udp_sessions_active gauge"));
        assert!(prom.contains("egressd_udp_sessions_active{tunnel=\"hk1\"} 1"));
        assert!(prom.contains("egressd_tcp_bytes_down_total{source=\"10.8.0.10/32\"} 7"), "{prom}");
        // promtool: every metric has HELP (its own, not the fallback) and TYPE.
        let helps = prom.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(helps, Snapshot::default().fields().len(), "{prom}");
        assert!(!prom.contains("egressd counter ("), "a counter without its own HELP text:\n{prom}");
        assert!(prom.contains("# TYPE egressd_docker_label_routes gauge"), "{prom}");
        let tab = table(&r.total(), &per, &src);
        assert!(tab.lines().nth(1).unwrap().starts_with("hk0"), "{tab}");
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for v in [0, 7, 10, 1_000_001, u64::MAX] {
            let mut o = String::from("x ");
            push_u64(&mut o, v);
            assert_eq!(o, format!("x {v}"));
        }
    }

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
