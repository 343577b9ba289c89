//! The listen address checks: is each address assigned here, is something
//! listening on it (TCP and UDP), is that egressd, and may it use
//! IP_TRANSPARENT.

use std::net::SocketAddr;

use super::Check;
use super::checks::Host;
use super::parse;
use crate::config::TcpIntercept;

impl Host<'_> {
    pub(super) fn address(&self, l: SocketAddr) -> Check {
        let name = format!("address {}", l.ip());
        let entries = match &self.addrs {
            Ok(a) => a,
            Err(e) => {
                // No `ip`: a bind says whether the address is local.
                let sock = socket2::Socket::new(socket2::Domain::for_address(l), socket2::Type::DGRAM, None);
                let bound = sock.and_then(|s| s.bind(&SocketAddr::new(l.ip(), 0).into()));
                return match bound {
                    Ok(()) => Check::ok(name, format!("assigned to this host ({e}, so no interface shown)")),
                    Err(b) => Check::fail(
                        name,
                        format!("not an address of this host ({b})"),
                        format!("ip addr add {}/PREFIX dev BRIDGE   (the containers' bridge)", l.ip()),
                    ),
                };
            }
        };
        let Some(a) = entries.iter().find(|a| a.addr == l.ip()) else {
            return Check::fail(
                name,
                "not assigned to any interface here: egressd cannot listen on it and nothing reaches it",
                format!(
                    "ip addr add {}/PREFIX dev BRIDGE   (the containers' bridge), or fix `listen` in {}",
                    l.ip(),
                    self.config
                ),
            );
        };
        if a.tentative {
            return Check::fail(
                name,
                format!(
                    "on {} but tentative/dadfailed (IPv6 duplicate address detection): not usable",
                    a.ifname
                ),
                format!("ip addr change {}/PREFIX dev {} nodad   (or fix the duplicate)", l.ip(), a.ifname),
            );
        }
        if a.secondary && l.is_ipv4() && self.settings.intercept.tcp == TcpIntercept::Redirect {
            let primary = entries
                .iter()
                .find(|p| p.ifname == a.ifname && p.addr.is_ipv4() && !p.secondary)
                .map_or("another address".to_string(), |p| p.addr.to_string());
            return Check::warn(
                name,
                format!(
                    "on {} as a secondary address: REDIRECT sends TCP to the interface's primary address \
                     ({primary}), where egressd does not listen",
                    a.ifname
                ),
                Some(format!("listen on {primary}:{} too, or use intercept: (tcp: Tproxy)", l.port())),
            );
        }
        Check::ok(name, format!("assigned to {}", a.ifname))
    }

    /// Whether containers can read the metrics (every source's counters).
    pub(super) fn metrics(&self) -> Option<Check> {
        let m = self.settings.control.metrics_listen?;
        let name = format!("metrics {m}");
        let mut why = crate::control::metrics_exposure(m, self.settings);
        if why.is_none()
            && let Ok(addrs) = &self.addrs
            && let Some(a) = addrs.iter().find(|a| a.addr == m.ip())
            && addrs
                .iter()
                .any(|b| b.ifname == a.ifname && self.settings.listen.iter().any(|l| l.ip() == b.addr))
        {
            why = Some(format!(
                "control.metrics_listen {m} is on {}, the containers' interface, so containers can read \
                 every source's counters",
                a.ifname
            ));
        }
        Some(match why {
            Some(w) => Check::warn(
                name,
                w,
                Some(format!(
                    "set control.metrics_listen to 127.0.0.1:{} (or a management address) in {}",
                    m.port(),
                    self.config
                )),
            ),
            None => Check::ok(name, "not on an address the containers reach"),
        })
    }

    pub(super) fn listener(&self, l: SocketAddr) -> Vec<Check> {
        let name = format!("listener {l}");
        let read = |p: &str| std::fs::read_to_string(p).map(|t| parse::parse_proc_net(&t));
        let (tcp, udp) = if l.is_ipv4() {
            (read("/proc/net/tcp"), read("/proc/net/udp"))
        } else {
            (read("/proc/net/tcp6"), read("/proc/net/udp6"))
        };
        let (Ok(tcp), Ok(udp)) = (tcp, udp) else {
            return vec![Check::warn(name, "could not check: /proc/net/tcp or udp unreadable", None)];
        };
        let tcp: Vec<_> =
            tcp.iter().filter(|s| s.state == parse::TCP_LISTEN && parse::serves(s.local, l)).collect();
        let udp: Vec<_> = udp.iter().filter(|s| parse::serves(s.local, l)).collect();
        let start = format!("egressd run --config {}", self.config);
        if tcp.is_empty() && udp.is_empty() {
            self.no_udp.set(true);
            return vec![Check::fail(
                name,
                "nothing listens there (TCP or UDP): egressd is not running",
                start,
            )];
        }
        if udp.is_empty() {
            self.no_udp.set(true);
            return vec![Check::fail(
                name,
                "a TCP listener but no UDP socket: TPROXY'd UDP is dropped (UdpNoPorts)",
                format!("restart egressd: {start}"),
            )];
        }
        if tcp.is_empty() {
            return vec![Check::fail(
                name,
                "a UDP socket but no TCP listener: TCP is reset",
                format!("restart egressd: {start}"),
            )];
        }
        let inode = tcp[0].inode;
        let mut v = Vec::new();
        match owner(inode) {
            Some((pid, comm)) if comm == "egressd" => {
                v.push(Check::ok(name, format!("TCP and UDP, held by egressd (pid {pid})")));
                v.push(daemon_capability(pid));
            }
            Some((pid, comm)) => v.push(Check::warn(
                name,
                format!("TCP and UDP, but held by `{comm}` (pid {pid}), not egressd"),
                Some(format!("stop {comm} (pid {pid}), then: {start}")),
            )),
            None => v.push(Check::ok(name, "TCP and UDP sockets are there (owner not found)")),
        }
        v
    }
}

/// The process holding socket `inode`: (pid, comm).
fn owner(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_string()));
            }
        }
    }
    None
}

/// Whether the running egressd has CAP_NET_ADMIN.
fn daemon_capability(pid: u32) -> Check {
    let name = "egressd capability";
    let Some(eff) =
        std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| parse::cap_eff(&s))
    else {
        return Check::warn(name, format!("could not read /proc/{pid}/status"), None);
    };
    if eff & (1 << parse::CAP_NET_ADMIN) != 0 {
        Check::ok(name, format!("egressd (pid {pid}) has CAP_NET_ADMIN"))
    } else {
        let raw = if eff & (1 << parse::CAP_NET_RAW) != 0 {
            " (it has CAP_NET_RAW, which is not enough for SO_MARK)"
        } else {
            ""
        };
        Check::fail(
            name,
            format!("egressd (pid {pid}) runs without CAP_NET_ADMIN{raw}: IP_TRANSPARENT and SO_MARK fail"),
            "restart it as root, or with systemd `AmbientCapabilities=CAP_NET_ADMIN`, or after `setcap cap_net_admin+ep $(command -v egressd)`",
        )
    }
}
