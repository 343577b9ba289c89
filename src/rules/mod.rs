//! `egressd rules`: the host-side shell script that sends the intercepted
//! sources' traffic to egressd, or removes it again.
//!
//! Pure: [`script`] turns [`Settings`] into text and touches nothing; the
//! operator pipes it to `sh -e` (the daemon never changes netfilter itself).
//!
//! What the script sets up, per address family that has intercepted sources:
//!
//! ```text
//! PREROUTING ─► TCP: nat REDIRECT (or mangle TPROXY) ─► egressd listener
//!            ─► UDP: mangle TPROXY + mark ─► ip rule fwmark → table: local default dev lo
//!            (reserved ranges, bypass and the host's own addresses: left alone)
//! FORWARD    ─► kill switch: anything else the sources send past the host is dropped
//! sysctl     ─► bridge-nf-call-iptables=0 (else TPROXY'd UDP dies as UdpNoPorts)
//! ```
//!
//! Both backends (`iptables.rs`, `nft.rs`) write the same plan, computed once
//! here; the script is idempotent, and `Delete` undoes `Install` (also when
//! run twice, or with nothing installed).

mod iptables;
mod nft;

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::config::{Settings, TcpIntercept};
use crate::route::Cidr;

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

/// The host-side shell script for these settings. Pure: no I/O.
pub fn script(settings: &Settings, backend: Backend, action: Action) -> String {
    let plan = Plan::new(settings);
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

/// Reserved IPv4 ranges (the article's list): this network, private,
/// loopback, link-local, multicast, future use. Never the internet.
const RESERVED_V4: [&str; 8] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Reserved IPv6 ranges: loopback, unique local, link-local, multicast.
const RESERVED_V6: [&str; 4] = ["::1/128", "fc00::/7", "fe80::/10", "ff00::/8"];

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
            Family::V4 => &RESERVED_V4,
            Family::V6 => &RESERVED_V6,
        };
        list.iter().map(|s| s.parse().expect("reserved range literal")).collect()
    }
}

/// What the script does for one address family.
#[derive(Debug)]
struct FamilyPlan {
    family: Family,
    /// Intercepted sources of this family, without ones inside another.
    sources: Vec<Cidr>,
    /// This family's listen addresses, in config order; the first is used.
    listen: Vec<SocketAddr>,
    /// The family's reserved ranges (always left alone).
    reserved: Vec<Cidr>,
    /// `bypass` CIDRs of this family not already inside a reserved range
    /// or an earlier bypass.
    bypass: Vec<Cidr>,
    /// `bypass` CIDRs of this family dropped as already covered.
    bypass_covered: Vec<Cidr>,
}

impl FamilyPlan {
    fn listener(&self) -> Option<SocketAddr> {
        self.listen.first().copied()
    }

    /// Sources and a listener: traffic is intercepted (else only killed).
    fn intercepts(&self) -> bool {
        !self.sources.is_empty() && self.listener().is_some()
    }

    /// Everything the intercept and the kill switch leave alone, as
    /// non-overlapping prefixes (an nft interval set rejects overlaps).
    fn pass(&self) -> Vec<Cidr> {
        outermost(self.reserved.iter().chain(&self.bypass).copied())
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
    /// Families with a listen address or a source, IPv4 first.
    families: Vec<FamilyPlan>,
    tcp: TcpIntercept,
    mark: u32,
    table: u32,
}

impl Plan {
    fn new(settings: &Settings) -> Plan {
        let sources = settings.intercepted_sources();
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
                FamilyPlan {
                    family,
                    sources: outermost(sources.iter().copied().filter(|c| Family::of(c) == family)),
                    listen: settings
                        .listen
                        .iter()
                        .copied()
                        .filter(|a| a.is_ipv4() == (family == Family::V4))
                        .collect(),
                    reserved,
                    bypass,
                    bypass_covered,
                }
            })
            .filter(|f| !f.sources.is_empty() || !f.listen.is_empty())
            .collect();
        Plan {
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
                    "It sends the intercepted sources' TCP ({}) and UDP (TPROXY) to egressd's listener, routes \
                     marked packets to the local stack,",
                    plan.tcp_word()
                ),
            );
            out.comment(
                "",
                "and drops whatever else those sources would send past this host (kill switch). Idempotent: \
                 running it again changes nothing.",
            );
            match backend {
                Backend::Iptables => out.comment(
                    "",
                    "After a config change run it again; if the change removes sources, switches intercept.tcp \
                     or changes mark/table, remove the old setup first.",
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
    for f in &plan.families {
        let listen: Vec<String> = f.listen.iter().map(SocketAddr::to_string).collect();
        out.comment(
            "",
            format!("{}: sources [{}], listen [{}]", f.family.name(), join(&f.sources), listen.join(", ")),
        );
    }
    out.line("set -e");
}

/// A family with a listener but no sources gets nothing; say so.
fn nothing_to_intercept(f: &FamilyPlan, out: &mut Out) {
    out.comment(
        "",
        format!(
            "{0}: a listen address but no intercepted {0} source, so nothing to intercept or kill-switch.",
            f.family.name()
        ),
    );
}

/// The fail-closed note for sources whose family has no listener.
fn no_listener_note(f: &FamilyPlan, out: &mut Out, indent: &str) {
    out.comment(
        indent,
        format!(
            "{0}: no {0} listen address, so nothing is intercepted for {1}; the kill switch drops \
             all their {0} traffic past this host (fail closed).",
            f.family.name(),
            join(&f.sources)
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
    out.comment(
        "",
        "UDP flows that began before these rules keep their old (NATed) conntrack entries and would miss egressd: forget them (needs conntrack-tools; without it they recover when the entries expire).",
    );
    let fam = match f.family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    for src in &f.sources {
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
