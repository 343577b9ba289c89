//! `egressd rules`: the host-side shell script that sends the containers'
//! traffic to egressd, or removes it again.
//!
//! Pure: [`script`] turns [`Settings`] and the container interfaces
//! ([`host::Scope`], read by the CLI) into text and touches nothing; the
//! operator pipes it to `sh -e` (the daemon never changes netfilter itself).
//!
//! Every rule is scoped to the container interfaces by ingress interface, so
//! the host's other forwarded traffic is never touched, whatever the sources.
//! What the script sets up, per address family:
//!
//! ```text
//! raw PREROUTING     ─► -i IF: a source the interface cannot have (forged) is dropped (rpfilter)
//! PREROUTING         ─► -i IF, every packet but replies of published ports (conntrack REPLY of a
//!                        DNAT'd connection); nat sees only connections' first packets:
//!                        port 53 to anywhere ─► egressd (DNS never leaves outside a tunnel)
//!                        TCP: nat REDIRECT (or mangle TPROXY) ─► egressd listener
//!                        UDP: mangle TPROXY + mark ─► ip rule fwmark → table: local default dev lo
//!                        (an answer to a remote that wrote first, conntrack REPLY, is UDP like any)
//!                        (reserved ranges, bypass and the host's own addresses: left alone)
//! mangle FORWARD     ─► -i IF: kill switch: whatever else would be forwarded (ICMP, other
//!                        protocols, a family without a listener, replies of inbound connections
//!                        that were not DNAT'd) is dropped, except replies of published ports and
//!                        reserved/bypass destinations; Docker never touches mangle, so it cannot
//!                        get ahead of it
//! sysctl             ─► bridge-nf-call-iptables=0 (else TPROXY'd UDP dies as UdpNoPorts)
//! ```
//!
//! Both backends (`iptables.rs`, `nft.rs`) write the same plan, computed once
//! here; the script is idempotent and converges: run over an older config's
//! or an older egressd's install it leaves what a fresh install would (the
//! new rules are in before the old ones go). `Delete` undoes `Install` (also
//! when run twice, with nothing installed, or after an older egressd's install).

pub mod host;
mod iptables;
mod nft;

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::config::{IfacePattern, Settings, TcpIntercept};
use crate::route::Cidr;
pub use host::Scope;

/// Which firewall tool the script drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// iptables/ip6tables (legacy or nf_tables flavour), as the article.
    Iptables,
    /// One `table inet egressd` of nftables, replaced atomically.
    Nft,
}

/// Whether the script sets the host side up or takes it down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Install,
    Delete,
}

/// The host-side shell script for these settings and container interfaces.
/// Pure: no I/O. `Delete` needs no interfaces (it removes whatever egressd's
/// chains are jumped to from), so `scope` may be empty then.
pub fn script(settings: &Settings, scope: &Scope, backend: Backend, action: Action) -> String {
    let plan = Plan::new(settings, scope);
    let mut out = Out::default();
    header(&plan, backend, action, &mut out);
    match (backend, action) {
        (Backend::Iptables, Action::Install) => iptables::install(&plan, &mut out),
        (Backend::Iptables, Action::Delete) => iptables::delete(&plan, &mut out),
        (Backend::Nft, Action::Install) => nft::install(&plan, &mut out),
        (Backend::Nft, Action::Delete) => nft::delete(&plan, &mut out),
    }
    out.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(cidr: &Cidr) -> Family {
        if cidr.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The `ip` command for this family's rules and routes.
    fn ip(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip -6",
        }
    }

    /// The family's word in nft (`ip saddr`, `tproxy ip to`).
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    fn bridge_sysctl(self) -> &'static str {
        match self {
            Family::V4 => "/proc/sys/net/bridge/bridge-nf-call-iptables",
            Family::V6 => "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
        }
    }

    fn reserved(self) -> Vec<Cidr> {
        let list: &[&str] = match self {
            Family::V4 => &crate::route::RESERVED_V4,
            Family::V6 => &crate::route::RESERVED_V6,
        };
        list.iter().map(|s| s.parse().expect("reserved range literal")).collect()
    }
}

/// What the script does for one address family.
#[derive(Debug)]
struct FamilyPlan {
    family: Family,
    /// `intercept.sources` of this family, without ones inside another, or
    /// `None`: every source on the interfaces is intercepted.
    narrow: Option<Vec<Cidr>>,
    /// This family's listen addresses, in config order; the first is used.
    listen: Vec<SocketAddr>,
    /// The family's reserved ranges (left alone, port 53 aside).
    reserved: Vec<Cidr>,
    /// `bypass` CIDRs of this family not already inside a reserved range
    /// or an earlier bypass (left alone, port 53 included).
    bypass: Vec<Cidr>,
    /// `bypass` CIDRs of this family dropped as already covered.
    bypass_covered: Vec<Cidr>,
    /// Container subnets whose stale UDP conntrack entries are forgotten.
    forget: Vec<Cidr>,
}

impl FamilyPlan {
    fn listener(&self) -> Option<SocketAddr> {
        self.listen.first().copied()
    }

    /// A listener and something to intercept (else only the kill switch).
    fn intercepts(&self) -> bool {
        self.listener().is_some() && self.narrow.as_ref().is_none_or(|n| !n.is_empty())
    }

    /// The `-s` selectors of the intercept jumps: one per narrowing source,
    /// or one that matches every source.
    /// A /0 source is every source: no `-s` (which `iptables -S` would not
    /// print back, so `prune` would delete the jump it was compared to).
    fn source_selectors(&self) -> Vec<Option<Cidr>> {
        match &self.narrow {
            None => vec![None],
            Some(n) => n.iter().map(|c| (c.len() > 0).then_some(*c)).collect(),
        }
    }

    /// A comment naming the listener used when there are several.
    fn listeners_note(&self) -> Option<String> {
        let first = self.listener()?;
        if self.listen.len() < 2 {
            return None;
        }
        let all: Vec<String> = self.listen.iter().map(SocketAddr::to_string).collect();
        Some(format!(
            "{} has several listen addresses ({}): TPROXY uses the first, {first}; REDIRECT goes to the \
             incoming interface's primary address at port {} anyway.",
            self.family.name(),
            all.join(", "),
            first.port()
        ))
    }
}

/// The whole script's inputs, computed once for both backends.
#[derive(Debug)]
struct Plan {
    /// The container interfaces, as configured or found.
    interfaces: Vec<IfacePattern>,
    /// IPv4 then IPv6: both always, so that a family without a listener is
    /// kill-switched on the interfaces rather than forwarded.
    families: Vec<FamilyPlan>,
    tcp: TcpIntercept,
    mark: u32,
    table: u32,
}

impl Plan {
    fn new(settings: &Settings, scope: &Scope) -> Plan {
        let narrow = settings.intercepted_sources();
        let families = [Family::V4, Family::V6]
            .into_iter()
            .map(|family| {
                let reserved = family.reserved();
                let mut bypass: Vec<Cidr> = Vec::new();
                let mut bypass_covered = Vec::new();
                for b in settings.bypass.iter().filter(|c| Family::of(c) == family) {
                    if reserved.iter().chain(&bypass).any(|r| covers(r, b)) {
                        bypass_covered.push(*b);
                    } else {
                        bypass.push(*b);
                    }
                }
                let narrow = narrow.map(|n| outermost(n.iter().copied().filter(|c| Family::of(c) == family)));
                let forget = match &narrow {
                    Some(n) => n.clone(),
                    None => scope.subnets.iter().copied().filter(|c| Family::of(c) == family).collect(),
                };
                FamilyPlan {
                    family,
                    narrow,
                    listen: settings
                        .listen
                        .iter()
                        .copied()
                        .filter(|a| a.is_ipv4() == (family == Family::V4))
                        .collect(),
                    reserved,
                    bypass,
                    bypass_covered,
                    forget,
                }
            })
            .collect();
        Plan {
            interfaces: scope.interfaces.clone(),
            families,
            tcp: settings.intercept.tcp,
            mark: settings.intercept.mark,
            table: settings.intercept.table,
        }
    }

    fn tcp_word(&self) -> &'static str {
        match self.tcp {
            TcpIntercept::Redirect => "REDIRECT",
            TcpIntercept::Tproxy => "TPROXY",
        }
    }

    fn interfaces_text(&self) -> String {
        self.interfaces.iter().map(IfacePattern::iptables).collect::<Vec<_>>().join(", ")
    }
}

/// Whether prefix `outer` contains all of prefix `inner`.
fn covers(outer: &Cidr, inner: &Cidr) -> bool {
    outer.len() <= inner.len() && outer.contains(inner.addr())
}

/// The prefixes not inside another one (first of equal ones), in order.
/// Prefixes either nest or are disjoint, so the result never overlaps.
fn outermost(cidrs: impl Iterator<Item = Cidr>) -> Vec<Cidr> {
    let all: Vec<Cidr> = cidrs.collect();
    let mut kept: Vec<Cidr> = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let inside_other = all.iter().enumerate().any(|(j, o)| {
            j != i && covers(o, c) && (o.len() < c.len() || j < i) // equal ones: keep the first
        });
        if !inside_other {
            kept.push(*c);
        }
    }
    kept
}

/// `ip:port` or `[ip]:port`, without an IPv6 scope id (no tool here takes one).
fn sockaddr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn join(cidrs: &[Cidr]) -> String {
    cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>().join(", ")
}

/// The script being written.
#[derive(Default)]
struct Out(String);

impl Out {
    fn line(&mut self, s: impl AsRef<str>) {
        self.0.push_str(s.as_ref());
        self.0.push('\n');
    }

    /// A `#` comment line, at the given indent (nft blocks indent by tabs).
    fn comment(&mut self, indent: &str, s: impl AsRef<str>) {
        let _ = writeln!(self.0, "{indent}# {}", s.as_ref());
    }

    fn blank(&mut self) {
        self.0.push('\n');
    }
}

fn header(plan: &Plan, backend: Backend, action: Action, out: &mut Out) {
    let flag = match backend {
        Backend::Iptables => "",
        Backend::Nft => " --backend nft",
    };
    out.line("#!/bin/sh");
    match action {
        Action::Install => {
            out.comment(
                "",
                format!("Generated by egressd (`egressd rules{flag}`): the host side of egressd."),
            );
            out.comment(
                "",
                format!(
                    "It sends what containers on the container interfaces send (TCP by {}, UDP by TPROXY, DNS always) \
                     to egressd's listener, routes marked packets to the local stack,",
                    plan.tcp_word()
                ),
            );
            out.comment(
                "",
                "and drops whatever else they would send past this host (kill switch). Idempotent: running it \
                 again changes nothing.",
            );
            match backend {
                Backend::Iptables => out.comment(
                    "",
                    "After a config change run it again: jumps and chains no longer wanted (an older egressd's \
                     too) are removed once the new ones are in; if mark/table changed, remove the old setup first.",
                ),
                Backend::Nft => out.comment(
                    "",
                    "After a config change run it again (egressd's table is replaced whole); if mark/table \
                     changed, remove the old setup first.",
                ),
            }
            out.comment("", format!("Remove it with: egressd rules --config FILE{flag} --delete | sh -e"));
        }
        Action::Delete => {
            out.comment(
                "",
                format!("Generated by egressd (`egressd rules{flag} --delete`): removes what `egressd rules` set up."),
            );
            out.comment("", "Safe to run twice, or when nothing is installed.");
            out.comment("", format!("Set it up again with: egressd rules --config FILE{flag} | sh -e"));
        }
    }
    if action == Action::Install {
        out.comment("", format!("Container interfaces: {}", plan.interfaces_text()));
        for f in &plan.families {
            let listen: Vec<String> = f.listen.iter().map(SocketAddr::to_string).collect();
            let sources = match &f.narrow {
                None => "all".to_string(),
                Some(n) => format!("[{}]", join(n)),
            };
            out.comment(
                "",
                format!("{}: sources {sources}, listen [{}]", f.family.name(), listen.join(", ")),
            );
        }
    }
    out.line("set -e");
}

/// The fail-closed note for a family that is only kill-switched.
fn kill_only_note(f: &FamilyPlan, out: &mut Out, indent: &str) {
    let why = if f.listener().is_none() {
        format!("no {} listen address", f.family.name())
    } else {
        format!("intercept.sources names no {} source", f.family.name())
    };
    out.comment(
        indent,
        format!(
            "{0}: {why}, so nothing is intercepted; the kill switch drops all {0} traffic the containers \
             would send past this host (fail closed).",
            f.family.name()
        ),
    );
}

/// Install: turn off br_netfilter's PREROUTING for this family.
fn bridge_sysctl(f: &FamilyPlan, out: &mut Out) {
    let path = f.family.bridge_sysctl();
    out.comment(
        "",
        "The article's trap: with br_netfilter, the bridge runs PREROUTING at L2, where TPROXY assigns \
         egressd's socket (skb->sk);",
    );
    out.comment(
        "",
        "re-entering IP the shared skb is cloned (skb->sk cleared) and PREROUTING is not run again, so \
         TPROXY'd UDP is dropped as UdpNoPorts.",
    );
    out.comment(
        "",
        "0 lets the IP layer run PREROUTING instead (it also stops iptables filtering of traffic bridged \
         between containers). Loading br_netfilter later sets it back to 1: `egressd doctor` checks.",
    );
    out.line(format!("if [ -e {path} ]; then echo 0 > {path}; fi"));
}

/// Install, after the intercept is in place: UDP flows that began before it
/// have conntrack entries (often NATed by the host's MASQUERADE) that would
/// keep rewriting their datagrams past the intercept; forget them so their
/// next datagram is intercepted like a new one.
fn forget_udp_conntrack(f: &FamilyPlan, out: &mut Out) {
    if f.forget.is_empty() {
        return;
    }
    out.comment(
        "",
        "UDP flows that began before these rules keep their old (NATed) conntrack entries and would miss egressd: forget them (needs conntrack-tools; without it they recover when the entries expire).",
    );
    let fam = match f.family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    for src in &f.forget {
        out.line(format!(
            "if command -v conntrack >/dev/null 2>&1; then conntrack -D -f {fam} -p udp -s {src} >/dev/null 2>&1 || true; fi"
        ));
    }
}

/// Delete leaves the bridge sysctl alone; say so.
fn bridge_sysctl_note(f: &FamilyPlan, out: &mut Out) {
    out.comment(
        "",
        format!(
            "{} is left as it is (install set it to 0 if it existed): other tools may rely on either \
             value; write 1 to it yourself if you need bridge filtering back.",
            f.family.bridge_sysctl()
        ),
    );
}

/// Install: the fwmark rule and the local route table that TPROXY needs.
fn policy_routing(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let (ip, mark, table) = (f.family.ip(), plan.mark, plan.table);
    out.comment(
        "",
        format!(
            "TPROXY marks what it takes {mark}/{mark}: look such packets up in table {table} (added once; \
             re-running finds it) ..."
        ),
    );
    out.line(format!(
        "{ip} rule show fwmark {mark}/{mark} lookup {table} | grep -q . || {ip} rule add fwmark {mark}/{mark} lookup {table}"
    ));
    out.comment(
        "",
        "... whose default route is local, so they are delivered to egressd's socket on this host \
         instead of being forwarded.",
    );
    out.line(format!("{ip} route replace local default dev lo table {table}"));
}

/// Delete: the fwmark rule (every copy) and the local route.
fn policy_routing_delete(plan: &Plan, f: &FamilyPlan, out: &mut Out) {
    let (ip, mark, table) = (f.family.ip(), plan.mark, plan.table);
    out.comment(
        "",
        format!(
            "TPROXY's mark routing for {}: the fwmark rule (every copy) and the local route.",
            f.family.name()
        ),
    );
    out.line(format!("while {ip} rule del fwmark {mark}/{mark} lookup {table} 2>/dev/null; do :; done"));
    out.line(format!("{ip} route del local default dev lo table {table} 2>/dev/null || true"));
}

#[cfg(test)]
mod netns_tests;
#[cfg(test)]
mod tests;
