//! The HELP line of each counter in the Prometheus text (promtool wants
//! one per metric): what it counts, in an operator's words.

/// (counter name, help text).
const HELP: &[(&str, &str)] = &[
    ("tcp_accepted", "TCP connections accepted from clients"),
    ("drop_no_route", "TCP connections reset: no route for the source and default is Reject"),
    ("drop_quota", "TCP connections reset: the source's quota is spent (on_quota: Reject)"),
    ("drop_loop_guard", "TCP connections closed: the original destination was egressd's own listener"),
    ("drop_queue_full", "TCP connections reset: the worker's hand-off queue was full"),
    ("accept_paused", "Times accepting paused on EMFILE/ENFILE"),
    ("tcp_flows_total", "TCP flows handed to tunnel workers"),
    ("tcp_upstream_failed", "TCP flows reset because the tunnel failed"),
    ("tcp_connect_timeout", "TCP flows reset by a connect or handshake timeout"),
    ("tcp_handshake_failed", "TCP flows reset because the tunnel's handshake was refused or broken"),
    ("tcp_auth_rejected", "TCP flows reset because the tunnel rejected the credentials"),
    ("tcp_idle_closed", "TCP flows closed by the idle timeout"),
    ("tcp_bytes_up", "TCP bytes from clients to tunnels"),
    ("tcp_bytes_down", "TCP bytes from tunnels to clients"),
    ("tcp_flows_active", "TCP flows open now"),
    ("tcp_drop_source_flows", "TCP connections reset: the source had tcp.max_flows_per_source open"),
    ("tcp_drop_source_rate", "TCP connections reset: the source was over tcp.new_flows_per_source_per_sec"),
    (
        "tcp_drop_fd_share",
        "TCP connections reset: the source held its share of the file descriptors (tcp.fd_share)",
    ),
    ("tcp_drop_source_cap", "TCP connections reset: a new source past its route's max_sources_per_route"),
    ("tcp_early_bytes", "Client bytes held while TCP tunnels open now"),
    (
        "tcp_early_waits",
        "TCP flows whose client was left unread while opening: the worker's early-byte budget was spent",
    ),
    ("tcp_quota_ended", "Open TCP flows ended: their source's quota was spent (on_quota: Reject)"),
    ("tcp_shaped_waits", "Times a shaped source's TCP flow waited for its rate (class cap or tunnel share)"),
    (
        "tcp_held_bytes",
        "Bytes held back: waiting in the kernel for shaped TCP flows at their rate, as of each flow's last wait",
    ),
    (
        "shape_rate_up",
        "Rate a shaped source is held to now, client to exit, bytes per second (0: not shaped)",
    ),
    (
        "shape_rate_down",
        "Rate a shaped source is held to now, exit to client, bytes per second (0: not shaped)",
    ),
    ("udp_dgrams_up", "UDP datagrams from clients accepted for a tunnel"),
    ("udp_bytes_up", "UDP payload bytes from clients accepted for a tunnel"),
    ("udp_dgrams_down", "UDP datagrams delivered to clients"),
    ("udp_bytes_down", "UDP payload bytes delivered to clients"),
    ("udp_sessions_total", "UDP sessions created"),
    ("udp_sessions_active", "UDP sessions open now"),
    ("udp_drop_no_route", "UDP datagrams dropped: no route for the source and default is Reject"),
    ("udp_drop_not_tproxied", "UDP datagrams dropped: sent to the listener itself, not TPROXY'd"),
    ("udp_drop_truncated", "UDP datagrams dropped: longer than the buffer or control data truncated"),
    ("udp_drop_queue_full", "UDP datagrams dropped: the worker's hand-off queue was full"),
    ("udp_drop_pending", "UDP datagrams dropped: queued while associating, past pending_datagrams"),
    (
        "udp_drop_pending_bytes",
        "UDP datagrams dropped: queued while associating, past the worker's or the source's pending bytes",
    ),
    ("udp_drop_source_rate", "UDP datagrams dropped: a new session over new_sessions_per_source_per_sec"),
    ("udp_drop_source_cap", "UDP datagrams dropped: a new source past its route's max_sources_per_route"),
    ("udp_source_full", "UDP sessions a source gave up at max_sessions_per_source (its own oldest)"),
    (
        "udp_drop_reply_source",
        "UDP replies dropped: their source was loopback, the host's own or a container's address",
    ),
    ("udp_drop_unsolicited", "UDP datagrams dropped: unsolicited, no reply socket to spare"),
    ("udp_drop_shed", "UDP datagrams shed at the front while workers were behind: source over its limits"),
    ("udp_sessions_evicted", "UDP sessions evicted to stay within max_sessions"),
    ("udp_assoc_failed", "UDP sessions ended because the association failed or closed"),
    ("udp_drop_no_udp", "UDP datagrams dropped: the tunnel carries no UDP"),
    ("udp_drop_frag", "UDP relay datagrams dropped: fragmented (FRAG != 0)"),
    ("udp_drop_bad_header", "UDP relay datagrams dropped: bad header"),
    ("udp_drop_send", "UDP datagrams dropped: sending failed"),
    ("udp_drop_quota", "UDP datagrams dropped: the source's quota is spent (on_quota: Reject)"),
    ("udp_drop_shaped", "UDP datagrams dropped: over the source's rate (class cap or tunnel share)"),
    ("udp_bytes_shaped", "UDP payload bytes dropped: over the source's rate (class cap or tunnel share)"),
    ("udp_reply_bind_failed", "UDP replies not delivered: the reply socket could not bind"),
    ("udp_reply_sockets", "UDP reply sockets open now"),
    ("dns_tcp_queries", "DNS queries carried over the tunnel's TCP"),
    ("dns_tcp_answers", "DNS answers received over the tunnel's TCP"),
    (
        "dns_tcp_connections",
        "DNS-over-TCP connections opened (pooled per tunnel, source address and resolver)",
    ),
    ("dns_tcp_timeouts", "DNS queries over TCP dropped unanswered after udp.dns_answer_timeout_secs"),
    ("dns_tcp_drop_too_big", "DNS queries over TCP dropped: longer than udp.dns_max_query_bytes"),
    (
        "dns_tcp_drop_queue_full",
        "DNS queries over TCP dropped: their connection's queue was full (unwritten bytes or queries in flight)",
    ),
    (
        "dns_tcp_stalled",
        "DNS-over-TCP connections closed: queries late and no answer from the server for dns_answer_timeout_secs",
    ),
    ("dns_tcp_lost", "DNS queries over TCP lost in flight when their connection closed"),
    ("docker_unknown_tunnel", "Labelled containers whose label names no tunnel"),
    ("docker_unknown_class", "Labelled containers whose class label names no class"),
    ("docker_label_routes", "Docker label routes (container addresses) live now"),
    ("pool_hits", "TCP flows that found a greeted connection ready in the tunnel's warm pool"),
    ("pool_misses", "TCP flows of pooled tunnels that found none ready (empty, fair share, or disabled)"),
    ("pool_refills", "Greeted connections added to warm pools"),
    (
        "pool_discards",
        "Pooled connections closed unused (closed by the server, refreshed, or drained on reload)",
    ),
    ("pool_disabled", "Times a warm pool stopped: the server closes idle connections within seconds"),
    ("pool_ready", "Greeted connections ready in warm pools now"),
    ("pool_size", "Configured size of warm pools (warm)"),
    ("pool_udp_hits", "UDP sessions that found a ready association in the tunnel's warm pool"),
    ("pool_udp_misses", "UDP sessions of pooled tunnels that found no association ready"),
    ("pool_udp_refills", "Ready UDP associations added to warm pools"),
    (
        "pool_udp_discards",
        "Pooled UDP associations closed unused (closed by the server, refreshed, or drained)",
    ),
    ("pool_udp_ready", "UDP associations ready in warm pools now"),
    ("pool_udp_size", "Configured size of warm UDP association pools (warm_udp)"),
    ("tcp_pipelined", "TCP flows whose first bytes followed the request without waiting for its answer"),
    (
        "bridge_nf_call_iptables",
        "net.bridge.bridge-nf-call-iptables in egressd's namespace (1: bridged UDP to egressd is dropped)",
    ),
    (
        "bridge_nf_call_ip6tables",
        "net.bridge.bridge-nf-call-ip6tables in egressd's namespace (1: bridged UDP to egressd is dropped)",
    ),
    ("host_udp_noports", "The host's UdpNoPorts + Udp6NoPorts (datagrams to a closed port, any port)"),
    (
        "worker_turn_max_us",
        "The longest turn of any worker loop (poll returning to the next poll) in the last 10 to 20 s, in seconds",
    ),
];

/// The help text of the counter `name`.
pub(super) fn of(name: &str) -> &'static str {
    HELP.iter().find(|(n, _)| *n == name).map_or("egressd counter", |(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter has its own text, and no text names a counter that
    /// does not exist.
    #[test]
    fn every_counter_has_help() {
        let names: Vec<&str> =
            super::super::Snapshot::default().fields().into_iter().map(|(n, _)| n).collect();
        for n in &names {
            assert_ne!(of(n), "egressd counter", "{n} has no HELP text");
        }
        for (n, _) in HELP {
            assert!(names.contains(n), "HELP for unknown counter {n}");
        }
    }
}
