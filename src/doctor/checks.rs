//! The host checks: read /proc and /sys, run `ip`, `iptables-save`,
//! `ip6tables-save` and `nft`, and judge what they say with the pure
//! parsers of `parse.rs` and `firewall.rs`.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use super::Check;
use super::fwcheck::{self, FwInput};
use super::model::Ruleset;
use super::parse::{self, AddrEntry};
use super::{firewall, nft};
use crate::config::Settings;
use crate::rules::Scope;

/// What the checks share: the settings and what was read once.
pub(super) struct Host<'a> {
    pub(super) settings: &'a Settings,
    /// The config path as the fix commands write it.
    pub config: String,
    /// `ip -o addr show`, or why it could not be read.
    pub(super) addrs: Result<Vec<AddrEntry>, String>,
    /// The container interfaces (as `rules` finds them), or why unknown.
    pub(super) scope: Result<Scope, String>,
    /// IPv4 then IPv6.
    pub(super) fams: Vec<Fam>,
    /// dns.upstream was not written in the config (its default is used).
    pub(super) upstream_default: bool,
    /// Whether the bridge trap was seen (for the NoPorts hint).
    pub(super) bridge_trap: std::cell::Cell<bool>,
    /// Listeners with no UDP socket (for the NoPorts hint).
    pub(super) no_udp: std::cell::Cell<bool>,
}

/// One address family as the config has it.
pub(super) struct Fam {
    pub v6: bool,
    pub listen: Vec<SocketAddr>,
    /// A listener and sources to intercept (else only the kill switch).
    pub intercepts: bool,
}

fn fam(v6: bool) -> &'static str {
    if v6 { "v6" } else { "v4" }
}

/// Runs a tool; `Err` says why it gave no output (missing, failed).
pub(super) fn command(prog: &str, args: &[&str]) -> Result<String, String> {
    let shown = std::iter::once(prog).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    match Command::new(prog).args(args).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("`{prog}` is not installed")),
        Err(e) => Err(format!("`{shown}` failed to start: {e}")),
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            Err(format!("`{shown}` failed: {}", first.trim()))
        }
    }
}

/// `UdpNoPorts` and `Udp6NoPorts` now (absent ones as `None`).
pub(super) use crate::hostwatch::noports;

impl<'a> Host<'a> {
    pub(super) fn read(settings: &'a Settings, config: String, upstream_default: bool) -> Host<'a> {
        let addrs = command("ip", &["-o", "addr", "show"]).map(|t| parse::parse_ip_addr(&t));
        let scope = match &addrs {
            Ok(a) => crate::rules::host::scope(settings, a),
            Err(e) => Err(e.clone()),
        };
        let fams = [false, true]
            .into_iter()
            .map(|v6| {
                let listen: Vec<SocketAddr> =
                    settings.listen.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
                let sources =
                    settings.intercepted_sources().map(|n| n.iter().filter(|c| c.is_ipv4() != v6).count());
                Fam { v6, intercepts: !listen.is_empty() && sources != Some(0), listen }
            })
            .collect();
        Host {
            settings,
            config,
            addrs,
            scope,
            fams,
            upstream_default,
            bridge_trap: false.into(),
            no_udp: false.into(),
        }
    }

    pub(super) fn rules_fix(&self, nft: bool) -> String {
        let b = if nft { " --backend nft" } else { "" };
        format!("egressd rules --config {}{b} | sh -e", self.config)
    }

    /// Every check that looks only at this host, in report order.
    pub(super) fn local_checks(&self) -> Vec<Check> {
        let mut v = vec![self.capability()];
        for &l in &self.settings.listen {
            v.push(self.address(l));
            v.extend(self.listener(l));
        }
        v.extend(self.metrics());
        v.extend(super::quota::check(self.settings));
        for f in &self.fams {
            v.extend(self.bridge(f));
        }
        for f in self.fams.iter().filter(|f| f.intercepts) {
            v.extend(self.policy_routing(f));
        }
        v.extend(self.firewall());
        v
    }

    // ------------------------------------------------------------ capability

    fn capability(&self) -> Check {
        let name = "capability";
        let sock = match socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) {
            Ok(s) => s,
            Err(e) => {
                return Check::warn(name, format!("could not check: cannot open a UDP socket: {e}"), None);
            }
        };
        match sock.set_ip_transparent_v4(true) {
            Ok(()) => Check::ok(name, "this process may set IP_TRANSPARENT (CAP_NET_ADMIN), as egressd must"),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Check::fail(
                name,
                "setting IP_TRANSPARENT was refused (EPERM): without CAP_NET_ADMIN egressd cannot take \
                 TPROXY'd traffic or answer UDP from the remote's address",
                "run egressd (and doctor) as root, or give it the capability: `setcap cap_net_admin+ep \
                 $(command -v egressd)` or systemd `AmbientCapabilities=CAP_NET_ADMIN`",
            ),
            Err(e) => Check::warn(name, format!("could not check: setting IP_TRANSPARENT failed: {e}"), None),
        }
    }

    // ------------------------------------------------------------ bridge netfilter

    fn bridge(&self, w: &Fam) -> Vec<Check> {
        let (key, name) = if w.v6 {
            ("bridge-nf-call-ip6tables", "bridge-nf-call-ip6tables")
        } else {
            ("bridge-nf-call-iptables", "bridge-nf-call-iptables")
        };
        if w.listen.is_empty() {
            return Vec::new();
        }
        let value = match std::fs::read_to_string(format!("/proc/sys/net/bridge/{key}")) {
            Err(_) => {
                return vec![Check::ok(name, "br_netfilter is not loaded: bridged packets meet no iptables")];
            }
            Ok(v) => v.trim().to_string(),
        };
        let bridges: Vec<(IpAddr, String)> = match &self.addrs {
            Ok(a) => w
                .listen
                .iter()
                .filter_map(|l| a.iter().find(|e| e.addr == l.ip()))
                .filter(|e| std::path::Path::new(&format!("/sys/class/net/{}/bridge", e.ifname)).exists())
                .map(|e| (e.addr, e.ifname.clone()))
                .collect(),
            Err(e) => {
                return vec![Check::warn(
                    name,
                    format!("= {value}; could not find the listener's interface: {e}"),
                    None,
                )];
            }
        };
        let sysctl = format!("net.bridge.{key}");
        match bridges.first() {
            None => vec![Check::ok(name, format!("{sysctl} = {value}; no listen address sits on a bridge"))],
            Some((ip, br)) if value != "0" => {
                self.bridge_trap.set(true);
                vec![Check::fail(
                    name,
                    format!(
                        "{sysctl} = {value} and {ip} is on bridge {br}: the bridge runs PREROUTING itself, TPROXY's \
                         socket is lost when the packet re-enters IP, and intercepted UDP is dropped as UdpNoPorts. \
                         Trade-off of 0: iptables no longer filters traffic bridged between containers"
                    ),
                    format!(
                        "sysctl -w {sysctl}=0   (persist: echo {sysctl}=0 > /etc/sysctl.d/90-egressd.conf)"
                    ),
                )]
            }
            Some((ip, br)) => vec![Check::ok(name, format!("{sysctl} = 0 ({ip} is on bridge {br})"))],
        }
    }

    // ------------------------------------------------------------ ip rule / route

    fn policy_routing(&self, w: &Fam) -> Vec<Check> {
        let (mark, table) = (self.settings.intercept.mark, self.settings.intercept.table);
        // -N: tables as numbers in `ip rule` (not for routes: it prints the type `local` as 2).
        let ip: &[&str] = if w.v6 { &["-N", "-6"] } else { &["-N"] };
        let ipw = if w.v6 { "ip -6" } else { "ip" };
        let rule_name = format!("ip rule {}", fam(w.v6));
        let add = format!("{ipw} rule add fwmark {mark}/{mark} lookup {table}");
        let mut v = Vec::new();
        match command("ip", &[ip, &["rule", "show"]].concat()) {
            Err(e) => v.push(Check::warn(rule_name, format!("could not check: {e}"), None)),
            Ok(text) => v.push(judge_rules(&parse::parse_ip_rules(&text), mark, table, &rule_name, &add)),
        }
        let route_name = format!("local route {}", fam(w.v6));
        let tbl = table.to_string();
        let fix = format!("{ipw} route replace local default dev lo table {table}");
        match command("ip", &[&ip[1..], &["route", "show", "table", tbl.as_str()]].concat()) {
            Ok(t) if parse::has_local_default_lo(&t) => {
                v.push(Check::ok(route_name, format!("table {table}: local default dev lo")))
            }
            Ok(_) => v.push(Check::fail(
                route_name,
                format!("table {table} has no `local default dev lo`: marked packets are forwarded, not delivered to egressd"),
                fix,
            )),
            Err(e) if e.contains("does not exist") => v.push(Check::fail(
                route_name,
                format!("table {table} does not exist: marked packets are forwarded, not delivered to egressd"),
                fix,
            )),
            Err(e) => v.push(Check::warn(route_name, format!("could not check: {e}"), None)),
        }
        v
    }

    // ------------------------------------------------------------ firewall

    /// Reads iptables, ip6tables and nft, then judges them (`fwcheck.rs`).
    fn firewall(&self) -> Vec<Check> {
        let scope = match &self.scope {
            Ok(s) => s,
            Err(e) => {
                return vec![Check::fail(
                    "interfaces",
                    format!("the container interfaces are unknown: {e}"),
                    format!("fix `listen` or intercept.interfaces in {}", self.config),
                )];
            }
        };
        let mut v = vec![Check::ok(
            "interfaces",
            format!(
                "{} (subnets: {})",
                scope.interfaces.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                if scope.subnets.is_empty() {
                    "none yet".to_string()
                } else {
                    scope.subnets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                }
            ),
        )];
        let ipt4 = command("iptables-save", &[]);
        let ipt6 = command("ip6tables-save", &[]);
        let nft_text = command("nft", &["list", "ruleset"]);
        let mut rs = Ruleset::default();
        let mut unread = Vec::new();
        for (r, v6) in [(&ipt4, false), (&ipt6, true)] {
            match r {
                Ok(t) => firewall::add_iptables(&mut rs, t, v6),
                Err(e) => unread.push(e.clone()),
            }
        }
        let flavour = |r: &Result<String, String>| r.as_ref().is_ok_and(|t| firewall::is_nft_flavour(t));
        match &nft_text {
            Ok(t) => nft::add_nft(&mut rs, t, [flavour(&ipt4), flavour(&ipt6)]),
            Err(e) => unread.push(e.clone()),
        }
        if unread.len() == 3 {
            v.push(Check::warn("firewall", format!("could not check: {}", unread.join("; ")), None));
            return v;
        }
        if !unread.is_empty() {
            v.push(Check::warn("firewall", format!("read in part: {}", unread.join("; ")), None));
        }
        let nft_ours = rs.chains.iter().any(|c| !c.ipt && c.table == "inet egressd");
        let ifaces: Vec<String> =
            self.addrs.as_deref().unwrap_or(&[]).iter().map(|e| e.ifname.clone()).collect();
        let rp = |i: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{i}/rp_filter"))
                .ok()
                .map(|t| t.trim().to_string())
        };
        let all_strict = rp("all").as_deref() == Some("1");
        let rp_strict = ifaces
            .into_iter()
            .filter(|i| rp(i).as_deref() == Some("1") || (all_strict && rp(i).as_deref() != Some("2")))
            .collect();
        let input = FwInput {
            settings: self.settings,
            scope,
            addrs: self.addrs.as_deref().unwrap_or(&[]),
            rs: &rs,
            resolvers: resolvers(),
            upstream_default: self.upstream_default,
            rp_strict,
            fix: self.rules_fix(nft_ours),
        };
        v.extend(fwcheck::firewall_checks(&input));
        v
    }

    // ------------------------------------------------------------ UdpNoPorts

    pub(super) fn noports_checks(
        &self,
        before: (Option<u64>, Option<u64>),
        after: (Option<u64>, Option<u64>),
    ) -> Vec<Check> {
        let has_v6 = self.settings.listen.iter().any(SocketAddr::is_ipv6);
        let mut v = vec![self.noports_one("UdpNoPorts", before.0, after.0)];
        if has_v6 {
            v.push(self.noports_one("Udp6NoPorts", before.1, after.1));
        }
        v
    }

    fn noports_one(&self, counter: &str, before: Option<u64>, after: Option<u64>) -> Check {
        let name = counter.to_string();
        let (Some(b), Some(a)) = (before, after) else {
            return Check::warn(name, "could not check: counter not found in /proc/net/snmp(6)", None);
        };
        if a <= b {
            return Check::ok(name, format!("{a}, not growing over 1 s"));
        }
        let cause = if self.bridge_trap.get() {
            "likely the bridge trap above (bridge-nf-call-iptables = 1)".to_string()
        } else if self.no_udp.get() {
            "likely egressd's missing UDP socket (see listener above)".to_string()
        } else {
            "datagrams reach no socket: the bridge trap (br_netfilter), egressd's UDP socket missing, or just \
             ordinary traffic to closed ports of this host"
                .to_string()
        };
        let fix = if self.bridge_trap.get() {
            Some(
                "sysctl -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0".into(),
            )
        } else {
            None
        };
        Check::warn(name, format!("grew {b} -> {a} in 1 s: {cause}"), fix)
    }
}

/// The host's resolvers as Docker's embedded DNS forwards to them: those
/// of /etc/resolv.conf, or systemd-resolved's upstreams behind 127.0.0.53.
fn resolvers() -> Vec<std::net::IpAddr> {
    let read = |p: &str| std::fs::read_to_string(p).map(|t| fwcheck::parse_resolv(&t)).unwrap_or_default();
    let etc = read("/etc/resolv.conf");
    if etc.iter().all(|a| a.is_loopback()) {
        let resolved = read("/run/systemd/resolve/resolv.conf");
        if !resolved.is_empty() {
            return resolved;
        }
    }
    etc
}

/// The fwmark rule among `ip rule show`'s rules, judged.
pub(super) fn judge_rules(rules: &[parse::IpRule], mark: u32, table: u32, name: &str, add: &str) -> Check {
    let t = table.to_string();
    let main_prio = rules.iter().find(|r| matches!(r.table.as_deref(), Some("254" | "main"))).map(|r| r.prio);
    let marks = |r: &&parse::IpRule| {
        r.fwmark.is_some_and(|(v, m)| v == mark & m && (m & !mark == 0 || m == u32::MAX) && m != 0)
            && !r.narrowed
    };
    let ours: Vec<&parse::IpRule> = rules.iter().filter(marks).collect();
    match ours.iter().find(|r| r.table.as_deref() == Some(t.as_str())) {
        Some(r) if main_prio.is_some_and(|m| r.prio > m) => Check::fail(
            name,
            format!(
                "`{}` has priority {}, after the main table's {}: marked packets are routed by main first",
                r.text,
                r.prio,
                main_prio.unwrap_or(0)
            ),
            format!("{} ; {add} priority 100", add.replace(" add ", " del ")),
        ),
        Some(r) => Check::ok(name, format!("{}: {}", r.prio, r.text)),
        None => match ours.first() {
            Some(r) => Check::fail(
                name,
                format!("`{}` looks up another table than intercept.table {table}", r.text),
                format!("{add}   (and remove the stale one: ip rule del priority {})", r.prio),
            ),
            None => Check::fail(
                name,
                format!(
                    "no rule sends fwmark {mark:#x}/{mark:#x} (intercept.mark {mark}) to table {table}: TPROXY'd packets are forwarded instead of delivered to egressd"
                ),
                add,
            ),
        },
    }
}
