//! The host checks: read /proc and /sys, run `ip`, `iptables-save`,
//! `ip6tables-save` and `nft`, and judge what they say with the pure
//! parsers of `parse.rs` and `firewall.rs`.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use super::Check;
use super::firewall::{self, Hook, Want};
use super::nft;
use super::parse::{self, AddrEntry};
use crate::config::{Settings, TcpIntercept};
use crate::route::Cidr;

/// What the checks share: the settings and what was read once.
pub(super) struct Host<'a> {
    pub(super) settings: &'a Settings,
    /// The config path as the fix commands write it.
    pub config: String,
    /// `ip -o addr show`, or why it could not be read.
    pub(super) addrs: Result<Vec<AddrEntry>, String>,
    /// Per family: its intercept (sources and listener both present).
    pub(super) wants: Vec<Want>,
    /// Whether the bridge trap was seen (for the NoPorts hint).
    pub(super) bridge_trap: std::cell::Cell<bool>,
    /// Listeners with no UDP socket (for the NoPorts hint).
    pub(super) no_udp: std::cell::Cell<bool>,
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
pub(super) fn noports() -> (Option<u64>, Option<u64>) {
    let v4 = std::fs::read_to_string("/proc/net/snmp").ok().and_then(|t| parse::snmp_udp_noports(&t));
    let v6 = std::fs::read_to_string("/proc/net/snmp6").ok().and_then(|t| parse::snmp6_udp_noports(&t));
    (v4, v6)
}

/// The outermost of some prefixes (as `rules` intercepts them).
fn outermost(cidrs: &[Cidr]) -> Vec<Cidr> {
    let mut kept: Vec<Cidr> = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        let inside = cidrs.iter().enumerate().any(|(j, o)| {
            j != i && o.len() <= c.len() && o.contains(c.addr()) && (o.len() < c.len() || j < i)
        });
        if !inside {
            kept.push(*c);
        }
    }
    kept
}

impl<'a> Host<'a> {
    pub(super) fn read(settings: &'a Settings, config: String) -> Host<'a> {
        let addrs = command("ip", &["-o", "addr", "show"]).map(|t| parse::parse_ip_addr(&t));
        let sources = match settings.intercepted_sources() {
            Some(n) => outermost(n),
            None => crate::rules::host::scope(settings, addrs.as_deref().unwrap_or(&[]))
                .map(|s| s.subnets)
                .unwrap_or_default(),
        };
        let wants = [false, true]
            .into_iter()
            .map(|v6| Want {
                v6,
                sources: sources.iter().copied().filter(|c| c.is_ipv4() != v6).collect(),
                listen: settings.listen.iter().copied().filter(|a| a.is_ipv6() == v6).collect(),
                mark: settings.intercept.mark,
            })
            .filter(|w| !w.sources.is_empty() || !w.listen.is_empty())
            .collect();
        Host { settings, config, addrs, wants, bridge_trap: false.into(), no_udp: false.into() }
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
        for w in &self.wants {
            v.extend(self.bridge(w));
        }
        for w in self.wants.iter().filter(|w| !w.sources.is_empty() && !w.listen.is_empty()) {
            v.extend(self.policy_routing(w));
        }
        v.extend(self.intercept());
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

    fn bridge(&self, w: &Want) -> Vec<Check> {
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

    fn policy_routing(&self, w: &Want) -> Vec<Check> {
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

    // ------------------------------------------------------------ intercept

    fn intercept(&self) -> Vec<Check> {
        let nft = command("nft", &["list", "ruleset"]).map(|t| nft::parse_nft(&t));
        let tcp = match self.settings.intercept.tcp {
            TcpIntercept::Redirect => Hook::TcpRedirect,
            TcpIntercept::Tproxy => Hook::TcpTproxy,
        };
        let mut v = Vec::new();
        for w in self.wants.iter().filter(|w| !w.sources.is_empty()) {
            let tool = if w.v6 { "ip6tables-save" } else { "iptables-save" };
            let ipt = command(tool, &[]).map(|t| firewall::parse_iptables_save(&t));
            let hooks: &[Hook] =
                if w.listen.is_empty() { &[Hook::Kill] } else { &[tcp, Hook::UdpTproxy, Hook::Kill] };
            for &hook in hooks {
                v.push(self.judge_intercept(hook, w, &ipt, &nft));
            }
        }
        v
    }

    fn judge_intercept(
        &self,
        hook: Hook,
        w: &Want,
        ipt: &Result<Vec<firewall::IptRule>, String>,
        nft: &Result<nft::NftRuleset, String>,
    ) -> Check {
        let name = match hook {
            Hook::TcpRedirect => format!("tcp REDIRECT {}", fam(w.v6)),
            Hook::TcpTproxy => format!("tcp TPROXY {}", fam(w.v6)),
            Hook::UdpTproxy => format!("udp TPROXY {}", fam(w.v6)),
            Hook::Kill => format!("kill switch {}", fam(w.v6)),
        };
        let by_ipt = ipt.as_ref().map(|r| firewall::ipt_check(r, hook, w));
        let by_nft = nft.as_ref().map(|r| nft::nft_check(r, hook, w));
        if let Ok(Ok(how)) = &by_ipt {
            return Check::ok(name, format!("iptables: {how}"));
        }
        if let Ok(Ok(how)) = &by_nft {
            return Check::ok(name, format!("nft: {how}"));
        }
        let why = match hook {
            Hook::TcpRedirect | Hook::TcpTproxy => "their TCP would not reach egressd",
            Hook::UdpTproxy => "their UDP would not reach egressd",
            Hook::Kill => "what the intercept misses would leave through this host's own uplink",
        };
        // Which backend to blame: the one holding egressd's own rules.
        let nft_ours = nft.as_ref().is_ok_and(|r| r.has_table("inet egressd"));
        match (&by_ipt, &by_nft) {
            (Err(a), Err(b)) => Check::warn(name, format!("could not check: {a}; {b}"), None),
            (_, Ok(Err(e))) if nft_ours => Check::fail(name, format!("{e}: {why}"), self.rules_fix(true)),
            (Ok(Err(e)), _) => Check::fail(name, format!("{e}: {why}"), self.rules_fix(false)),
            (_, Ok(Err(e))) => Check::fail(name, format!("{e}: {why}"), self.rules_fix(false)),
            _ => unreachable!("an Ok(Ok) returned above"),
        }
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
