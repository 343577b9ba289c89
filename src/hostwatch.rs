//! What egressd watches on the host while it runs: the bridge sysctl.
//!
//! With `net.bridge.bridge-nf-call-iptables=1` (or `-ip6tables`) the bridge
//! runs PREROUTING itself and TPROXY'd datagrams are dropped as UdpNoPorts:
//! every container's UDP and DNS is gone (fail closed, but an outage), and
//! nothing in egressd's own counters says why. `egressd rules` sets it to 0,
//! but something can set it back while egressd runs: br_netfilter loaded
//! later (Docker up to 27.2 at daemon start, `--icc=false` networks on any
//! version, kubelet) starts every namespace at 1. So a thread reads the two
//! sysctls every [`PERIOD`] and says so at once — an ERROR naming the fix,
//! again every [`REPEAT`] while it lasts — and keeps them, with the host's
//! UdpNoPorts, as gauges for the metrics (NoPorts only as a number: it also
//! counts datagrams to any closed port, so it is no alarm by itself).
//!
//! The sysctls are per network namespace; egressd reads those of its own,
//! which is where its listeners and the container bridges are.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info};

use crate::stats::Counters;

/// How often the sysctls are read (the promise: said within 10 s).
pub const PERIOD: Duration = Duration::from_secs(5);
/// How often the ERROR repeats while the sysctl stays at 1.
pub const REPEAT: Duration = Duration::from_secs(300);

const SYSCTLS: [(&str, &str); 2] = [
    ("net.bridge.bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-iptables"),
    ("net.bridge.bridge-nf-call-ip6tables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
];

/// Starts the watching thread (it lives as long as the process).
pub fn spawn(counters: Arc<Counters>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("egressd-watch".into()).spawn(move || {
        let mut w = Watch::default();
        loop {
            let values = SYSCTLS.map(|(_, path)| std::fs::read_to_string(path).ok().and_then(|t| flag(&t)));
            w.observe(values, Instant::now());
            Counters::set(&counters.bridge_nf_call_iptables, u64::from(values[0] == Some(true)));
            Counters::set(&counters.bridge_nf_call_ip6tables, u64::from(values[1] == Some(true)));
            let (v4, v6) = noports();
            Counters::set(&counters.host_udp_noports, v4.unwrap_or(0) + v6.unwrap_or(0));
            std::thread::sleep(PERIOD);
        }
    })
}

/// The watcher's memory: what each sysctl was, and when the ERROR was said.
#[derive(Debug, Default)]
struct Watch {
    on: [bool; 2],
    said: [Option<Instant>; 2],
}

impl Watch {
    /// Logs what changed; returns which sysctls were reported now (tests).
    fn observe(&mut self, values: [Option<bool>; 2], now: Instant) -> [bool; 2] {
        let mut reported = [false; 2];
        for (i, v) in values.into_iter().enumerate() {
            let on = v == Some(true);
            let (name, _) = SYSCTLS[i];
            if on {
                let due =
                    !self.on[i] || self.said[i].is_none_or(|t| now.saturating_duration_since(t) >= REPEAT);
                if due {
                    error!(target: "egressd::watch",
                        "{name} is 1: the bridge passes the containers' traffic through iptables itself and every \
                         TPROXY'd datagram is dropped (UdpNoPorts): the containers have no UDP and no DNS. Fix: \
                         sysctl -w {name}=0, and install contrib/99-egressd-bridge.conf in /etc/sysctl.d so it \
                         stays 0 when br_netfilter is loaded again (egressd_bridge_nf_call_* metrics)");
                    self.said[i] = Some(now);
                    reported[i] = true;
                }
            } else if self.on[i] {
                info!(target: "egressd::watch", "{name} is back to 0: bridged UDP reaches egressd again");
                self.said[i] = None;
            }
            self.on[i] = on;
        }
        reported
    }
}

/// A sysctl file's value: `Some(true)` for a non-zero number.
fn flag(text: &str) -> Option<bool> {
    text.trim().parse::<u64>().ok().map(|v| v != 0)
}

/// `UdpNoPorts` and `Udp6NoPorts` now (absent ones as `None`).
pub fn noports() -> (Option<u64>, Option<u64>) {
    let v4 = std::fs::read_to_string("/proc/net/snmp").ok().and_then(|t| snmp_udp_noports(&t));
    let v6 = std::fs::read_to_string("/proc/net/snmp6").ok().and_then(|t| snmp6_udp_noports(&t));
    (v4, v6)
}

/// `Udp: ... NoPorts ...` from `/proc/net/snmp` (a header line, then values).
pub fn snmp_udp_noports(text: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let header = lines.next()?;
    let values = lines.next()?;
    let col = header.split_whitespace().position(|w| w == "NoPorts")?;
    values.split_whitespace().nth(col)?.parse().ok()
}

/// `Udp6NoPorts   N` from `/proc/net/snmp6`.
pub fn snmp6_udp_noports(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "Udp6NoPorts").then_some(())?;
        w.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_at_once_repeated_while_it_lasts_and_not_for_zero() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        assert_eq!(w.observe([Some(false), None], t0), [false, false]);
        assert_eq!(w.observe([Some(true), Some(false)], t0 + PERIOD), [true, false]);
        assert_eq!(w.observe([Some(true), Some(false)], t0 + PERIOD * 2), [false, false]);
        assert_eq!(w.observe([Some(true), Some(true)], t0 + PERIOD + REPEAT), [true, true]);
        // Back to 0 and up again: said again at once.
        assert_eq!(w.observe([Some(false), Some(true)], t0 + PERIOD * 3 + REPEAT), [false, false]);
        assert_eq!(w.observe([Some(true), Some(true)], t0 + PERIOD * 4 + REPEAT), [true, false]);
        // No br_netfilter (no file): nothing to say.
        let mut w = Watch::default();
        assert_eq!(w.observe([None, None], t0), [false, false]);
    }

    #[test]
    fn sysctl_values_and_noports() {
        assert_eq!(flag("1\n"), Some(true));
        assert_eq!(flag("0\n"), Some(false));
        assert_eq!(flag("x"), None);
        let snmp = "Udp: InDatagrams NoPorts InErrors\nUdp: 10 42 0\n";
        assert_eq!(snmp_udp_noports(snmp), Some(42));
        assert_eq!(snmp_udp_noports("Udp: InDatagrams\nUdp: 1\n"), None);
        assert_eq!(snmp_udp_noports(""), None);
        assert_eq!(snmp6_udp_noports("Udp6InDatagrams \t12\nUdp6NoPorts \t7\n"), Some(7));
        assert_eq!(snmp6_udp_noports("Udp6NoPorts x"), None);
    }
}
