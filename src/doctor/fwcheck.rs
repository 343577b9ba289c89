//! Judging the firewall: sample packets from each container interface and
//! family walked through the model (`model.rs`) of whatever iptables and
//! nft hold, egressd's rules or equivalent hand-written ones.
//!
//! ```text
//! per interface pattern and family:
//!   tcp REDIRECT|TPROXY  a new TCP connection to a public address reaches egressd's listener
//!   udp TPROXY           the same for UDP (TPROXY, with the mark the ip rule looks for)
//!   dns                  port 53 (UDP and TCP) to a public, a private (the host's resolver) and a
//!                        local address, all intercepted: no reserved/local RETURN comes first
//!   kill switch          ICMP, TCP, UDP and DNS that would be forwarded are dropped, and not after
//!                        an ACCEPT (Docker's filter FORWARD): says which rule comes first
//!   published ports      replies of connections DNAT'd into a container (conntrack REPLY, status
//!                        DNAT: docker -p) are neither diverted nor dropped
//!   stranger replies     replies without DNAT (an answer to a remote that wrote first to a
//!                        container's full-cone mapping, a reply of an inbound connection that
//!                        was not published), UDP and TCP, are intercepted or dropped: passing the
//!                        kill switch they would leave from the container's own address
//!   forged sources       a source the interface has no route back to is dropped (rpfilter)
//! once: ipv6 (an interface with IPv6 but nothing intercepting it), dns path (which resolver answers)
//! ```
//!
//! Pure: [`firewall_checks`] takes what `checks.rs` read.

use std::net::{IpAddr, SocketAddr};

use super::Check;
use super::model::{At, Decision, HookResult, ICMP, ICMPV6, Packet, Range, Ruleset, TCP, UDP, Verdict};
use super::parse::{AddrEntry, cidr_range};
use crate::config::{IfacePattern, Settings, TcpIntercept};
use crate::route::{Cidr, is_reserved};
use crate::rules::Scope;

/// What the firewall checks judge, read off the host by `checks.rs`.
pub(super) struct FwInput<'a> {
    pub settings: &'a Settings,
    pub scope: &'a Scope,
    pub addrs: &'a [AddrEntry],
    pub rs: &'a Ruleset,
    /// The host's resolvers, as Docker's embedded DNS forwards to them.
    pub resolvers: Vec<IpAddr>,
    /// dns.upstream is the default (not written in the config).
    pub upstream_default: bool,
    /// Interfaces with strict IPv4 reverse-path filtering (rp_filter = 1).
    pub rp_strict: Vec<String>,
    /// The fix command that installs egressd's rules.
    pub fix: String,
}

/// One interface pattern and family, with the samples' common parts.
struct Side<'a> {
    pattern: &'a IfacePattern,
    v6: bool,
    /// A real interface matching the pattern, or a name it matches.
    ifname: String,
    /// The containers' subnets on it (or the whole family).
    src: Range,
    src_text: String,
}

fn fam(v6: bool) -> &'static str {
    if v6 { "v6" } else { "v4" }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

impl FwInput<'_> {
    fn listen(&self, v6: bool) -> Vec<SocketAddr> {
        self.settings.listen.iter().copied().filter(|a| a.is_ipv6() == v6).collect()
    }

    /// The family's intercepted sources, `None` when every source is.
    fn narrow(&self, v6: bool) -> Option<Vec<Cidr>> {
        self.settings.intercepted_sources().map(|n| n.iter().copied().filter(|c| c.is_ipv4() != v6).collect())
    }

    fn intercepts(&self, v6: bool) -> bool {
        !self.listen(v6).is_empty() && self.narrow(v6).is_none_or(|n| !n.is_empty())
    }

    fn bypassed(&self, a: IpAddr) -> bool {
        self.settings.bypass.iter().any(|c| c.contains(a))
    }

    fn local(&self, a: IpAddr) -> bool {
        self.addrs.iter().any(|e| e.addr == a) || a.is_loopback()
    }

    /// A public sample destination not in `bypass`.
    fn public(&self, v6: bool, host: u16) -> IpAddr {
        let cands = if v6 {
            [format!("2001:db8:203::{host}"), format!("2001:db8:100::{host}")]
        } else {
            [format!("203.0.113.{host}"), format!("198.51.100.{host}")]
        };
        cands.iter().map(|s| ip(s)).find(|a| !self.bypassed(*a)).unwrap_or_else(|| ip(&cands[0]))
    }

    /// Non-public resolvers containers' DNS may be sent to (the host's, or a sample).
    fn private_resolvers(&self, v6: bool) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .resolvers
            .iter()
            .copied()
            .filter(|a| a.is_ipv6() == v6 && is_reserved(*a) && !a.is_loopback() && !self.bypassed(*a))
            .collect();
        if v.is_empty() {
            v.push(ip(if v6 { "fd00::53" } else { "192.168.0.53" }));
        }
        v
    }

    fn packet(&self, s: &Side, proto: u8, dst: IpAddr, dport: u16) -> Packet {
        Packet {
            v6: s.v6,
            iif: s.ifname.clone(),
            src: s.src,
            forged: false,
            dst,
            dst_local: self.local(dst),
            proto,
            sport: 40000,
            dport,
            reply: false,
            dnat: false,
        }
    }

    fn sides(&self) -> Vec<Side<'_>> {
        let mut v = Vec::new();
        for v6 in [false, true] {
            for p in &self.scope.interfaces {
                let ifname = self.addrs.iter().find(|e| p.matches(&e.ifname)).map_or_else(
                    || format!("{}{}", p.prefix, if p.wildcard { "0" } else { "" }),
                    |e| e.ifname.clone(),
                );
                let subnet = self.scope.subnets.iter().find(|c| {
                    c.is_ipv4() != v6 && self.addrs.iter().any(|e| p.matches(&e.ifname) && c.contains(e.addr))
                });
                let (src, src_text) = match subnet {
                    Some(c) => (cidr_range(c), c.to_string()),
                    None if v6 => ((true, 0, u128::MAX), "any source".into()),
                    None => ((false, 0, u128::from(u32::MAX)), "any source".into()),
                };
                v.push(Side { pattern: p, v6, ifname, src, src_text });
            }
        }
        v
    }
}

/// `mangle PREROUTING -> EGRESSD_TPROXY`: a decision's chains.
fn route(rs: &Ruleset, path: &[At]) -> String {
    let mut s = String::new();
    for (k, at) in path.iter().enumerate() {
        let c = &rs.chains[at.0];
        if k == 0 {
            s.push_str(if c.ipt { "iptables: " } else { "nft: " });
            if c.ipt && c.fam == Some(true) {
                s.push_str("ip6tables ");
            }
            s.push_str(&format!("{} {}", c.table, c.name));
        } else {
            s.push_str(&format!(" -> {}", c.name));
        }
    }
    s
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Tproxy { addr, port, mark } => {
            let to = match (addr, port) {
                (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
                (Some(a), Some(p)) => format!("{a}:{p}"),
                (None, Some(p)) => format!(":{p}"),
                _ => "(parameters not shown)".into(),
            };
            let m = mark.map(|(v, _)| format!(" mark {v:#x}")).unwrap_or_default();
            format!("TPROXY {to}{m}")
        }
        Verdict::Redirect { port: Some(p) } => format!("REDIRECT to port {p}"),
        Verdict::Redirect { port: None } => "REDIRECT".into(),
        Verdict::Drop => "DROP".into(),
        Verdict::Accept => "ACCEPT".into(),
        other => format!("{other:?}"),
    }
}

fn describe(p: &Packet) -> String {
    let proto = match p.proto {
        TCP => "TCP",
        UDP => "UDP",
        _ => "ICMP",
    };
    let dst = if p.proto == TCP || p.proto == UDP {
        SocketAddr::new(p.dst, p.dport).to_string()
    } else {
        p.dst.to_string()
    };
    format!("{proto} to {dst}")
}

/// What a setup that intercepts `proto` must do with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Tproxy,
    Redirect,
}

impl FwInput<'_> {
    fn want(&self, proto: u8) -> Want {
        if proto == TCP && self.settings.intercept.tcp == TcpIntercept::Redirect {
            Want::Redirect
        } else {
            Want::Tproxy
        }
    }

    /// Whether `v` hands the packet to egressd as configured: `Ok(text)` or why not.
    fn delivers(&self, v: &Verdict, want: Want, v6: bool) -> Result<String, String> {
        let listen = self.listen(v6);
        let ports = listen.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ");
        let mark = self.settings.intercept.mark;
        match (v, want) {
            (Verdict::Tproxy { addr: None, port: None, .. }, Want::Tproxy) => Ok(verdict_text(v)),
            (Verdict::Tproxy { addr, port, mark: m }, Want::Tproxy) => {
                let l = listen.iter().find(|l| Some(l.port()) == *port);
                let addr_ok = l.is_some_and(|l| addr.is_none_or(|a| a == l.ip() || a.is_unspecified()));
                if !addr_ok {
                    return Err(format!("{}, but egressd listens on {ports}", verdict_text(v)));
                }
                match m {
                    Some((value, _)) if value & mark == mark => Ok(verdict_text(v)),
                    Some((value, _)) => Err(format!(
                        "TPROXY marks {value:#x}, but intercept.mark is {mark} ({mark:#x}), which the ip rule looks for"
                    )),
                    None => Err("TPROXY sets no mark, so its packets miss the local route".into()),
                }
            }
            (Verdict::Redirect { port: None }, Want::Redirect) => Ok(verdict_text(v)),
            (Verdict::Redirect { port: Some(p) }, Want::Redirect)
                if listen.iter().any(|l| l.port() == *p) =>
            {
                Ok(verdict_text(v))
            }
            (Verdict::Redirect { .. }, Want::Redirect) => {
                Err(format!("{}, but egressd listens on {ports}", verdict_text(v)))
            }
            (Verdict::Tproxy { .. }, Want::Redirect) => {
                Err("TCP is TPROXY'd, but intercept.tcp is Redirect (egressd reads REDIRECT's destination)"
                    .into())
            }
            (Verdict::Redirect { .. }, Want::Tproxy) => {
                Err(format!("{} where TPROXY is wanted", verdict_text(v)))
            }
            (other, _) => Err(format!("{other:?}")),
        }
    }

    /// One intercept sample: `Ok(how)` or what is wrong.
    fn intercepted(&self, p: &Packet, s: &Side) -> Result<String, String> {
        let want = self.want(p.proto);
        let rs = self.rs;
        let res =
            rs.hook("prerouting", p, &|v| !matches!(v, Verdict::Tproxy { .. } | Verdict::Redirect { .. }));
        let what = format!("{} from {} ({})", describe(p), s.ifname, s.src_text);
        match res.decided {
            Some((_, d)) if d.verdict == Verdict::Drop => {
                Err(format!("{what} is dropped by {}", rs.show(*d.path.last().unwrap_or(&(0, 0)))))
            }
            Some((_, d)) => {
                let at = *d.path.last().expect("a decided verdict has a rule");
                self.delivers(&d.verdict, want, s.v6)
                    .map(|t| format!("{} -> {t}", route(rs, &d.path)))
                    .map_err(|e| format!("{what}: {}: {e}", rs.show(at)))
            }
            None => Err(format!("{what} is not intercepted: {}", left_alone(rs, &res, want))),
        }
    }
}

/// Why nothing intercepted it: the RETURN that gave it back first, in a chain
/// that would have intercepted it.
fn left_alone(rs: &Ruleset, res: &HookResult, want: Want) -> String {
    let kind = |v: &Verdict| match want {
        Want::Tproxy => matches!(v, Verdict::Tproxy { .. }),
        Want::Redirect => matches!(v, Verdict::Redirect { .. }),
    };
    let ret = res.passed.iter().flat_map(|(_, d)| d.returned.iter()).find(|at| rs.reaches(at.0, &kind, 0));
    match ret {
        Some(at) => format!("{} returns it first", rs.show(*at)),
        None => format!(
            "no prerouting rule for this interface sends it to {}",
            if want == Want::Tproxy { "TPROXY" } else { "REDIRECT" }
        ),
    }
}

fn first_rule(d: &Decision) -> Option<At> {
    d.path.last().copied()
}

/// Every firewall check, in report order.
pub(super) fn firewall_checks(inp: &FwInput) -> Vec<Check> {
    let mut v = Vec::new();
    let sides = inp.sides();
    let mut kill_ok = [true, true];
    for s in &sides {
        let tag = format!("{} {}", fam(s.v6), s.pattern);
        if inp.intercepts(s.v6) {
            v.extend(intercept_checks(inp, s, &tag));
        }
        let k = kill_check(inp, s, &tag);
        kill_ok[usize::from(s.v6)] &= k.status != super::Status::Fail;
        v.push(k);
        v.push(published_check(inp, s, &tag));
        v.push(answers_check(inp, s, &tag));
        v.push(forged_check(inp, s, &tag));
    }
    v.extend(ipv6_check(inp, kill_ok[1]));
    v.push(dns_path(inp));
    v
}

fn intercept_checks(inp: &FwInput, s: &Side, tag: &str) -> Vec<Check> {
    let sources: Vec<(Range, String)> = match inp.narrow(s.v6) {
        Some(n) => n.iter().map(|c| (cidr_range(c), c.to_string())).collect(),
        None => vec![(s.src, s.src_text.clone())],
    };
    let each = |proto: u8, dsts: &[(IpAddr, u16)]| -> Result<String, String> {
        let mut how = None;
        for (range, text) in &sources {
            let side = Side {
                pattern: s.pattern,
                v6: s.v6,
                ifname: s.ifname.clone(),
                src: *range,
                src_text: text.clone(),
            };
            for &(dst, port) in dsts {
                let h = inp.intercepted(&inp.packet(&side, proto, dst, port), &side)?;
                how.get_or_insert(h);
            }
        }
        Ok(how.unwrap_or_default())
    };
    let tcp_name = match inp.settings.intercept.tcp {
        TcpIntercept::Redirect => "tcp REDIRECT",
        TcpIntercept::Tproxy => "tcp TPROXY",
    };
    let public = inp.public(s.v6, 10);
    let mut dns: Vec<(IpAddr, u16)> = vec![(inp.public(s.v6, 53), 53)];
    dns.extend(inp.private_resolvers(s.v6).into_iter().map(|a| (a, 53)));
    dns.extend(inp.listen(s.v6).first().map(|l| (l.ip(), 53)));
    let judge = |name: String, r: Result<String, String>, why: &str| match r {
        Ok(how) => Check::ok(name, how),
        Err(e) => Check::fail(name, format!("{e}: {why}"), inp.fix.clone()),
    };
    let dns_all = each(UDP, &dns).and_then(|h| each(TCP, &dns).map(|_| h));
    let resolvers: Vec<String> = dns.iter().map(|(a, _)| a.to_string()).collect();
    let tcp = each(TCP, &[(public, 443)]).and_then(|h| redirect_target(inp, s).map(|_| h));
    vec![
        judge(format!("{tcp_name} {tag}"), tcp, "their TCP would not reach egressd"),
        judge(format!("udp TPROXY {tag}"), each(UDP, &[(public, 5000)]), "their UDP would not reach egressd"),
        judge(
            format!("dns {tag}"),
            dns_all.map(|h| format!("port 53 to {} (UDP and TCP) intercepted: {h}", resolvers.join(", "))),
            "their DNS would leave outside the tunnels (or not at all)",
        ),
    ]
}

/// REDIRECT sends IPv4 TCP to the incoming interface's primary address:
/// egressd must listen there on every interface the pattern matches.
fn redirect_target(inp: &FwInput, s: &Side) -> Result<(), String> {
    if s.v6 || inp.want(TCP) != Want::Redirect {
        return Ok(());
    }
    let listen = inp.listen(false);
    let Some(port) = listen.first().map(SocketAddr::port) else { return Ok(()) };
    let v4 = |e: &&AddrEntry| e.addr.is_ipv4() && !e.secondary && s.pattern.matches(&e.ifname);
    for (k, e) in inp.addrs.iter().filter(v4).enumerate() {
        // The interface's first IPv4 address is the one REDIRECT uses.
        let first = !inp.addrs.iter().filter(v4).take(k).any(|o| o.ifname == e.ifname);
        if first && !listen.iter().any(|l| l.ip() == e.addr || l.ip().is_unspecified()) {
            return Err(format!(
                "REDIRECT sends TCP from {} to its primary address {}:{port}, where egressd does not listen \
                 (listen: {}); add it to `listen` (or 0.0.0.0:{port}), or use intercept: (tcp: Tproxy)",
                e.ifname,
                e.addr,
                listen.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

fn kill_check(inp: &FwInput, s: &Side, tag: &str) -> Check {
    let rs = inp.rs;
    let name = format!("kill switch {tag}");
    let public = inp.public(s.v6, 10);
    let private = inp.private_resolvers(s.v6)[0];
    let icmp = if s.v6 { ICMPV6 } else { ICMP };
    let samples =
        [(icmp, public, 0), (TCP, public, 443), (UDP, public, 5000), (UDP, private, 53), (TCP, private, 53)];
    let mut how = None;
    let mut filter_kill = None;
    for (proto, dst, port) in samples {
        let p = inp.packet(s, proto, dst, port);
        let what = format!("{} from {} ({})", describe(&p), s.ifname, s.src_text);
        let res = rs.hook("forward", &p, &|v| *v != Verdict::Drop);
        match res.decided {
            Some((b, d)) if d.policy => {
                return Check::warn(
                    name,
                    format!(
                        "{what} is dropped only by the policy of {}: there is no kill switch, and an ACCEPT added \
                         for this interface (Docker adds them) would let it leave",
                        rs.chains[b].label()
                    ),
                    Some(inp.fix.clone()),
                );
            }
            Some((b, d)) => {
                if rs.chains[b].ipt && rs.chains[b].table == "filter" {
                    filter_kill.get_or_insert_with(|| rs.show(d.path[0]));
                }
                how.get_or_insert_with(|| format!("{}: DROP", route(rs, &d.path)));
            }
            None => {
                let accept = res
                    .passed
                    .iter()
                    .find(|(_, d)| d.verdict == Verdict::Accept && !d.path.is_empty())
                    .map(|(b, d)| (*b, d.clone()));
                let saw = match accept {
                    Some((b, d)) => {
                        let at = first_rule(&d).unwrap_or((b, 0));
                        let later = rs.walk_from(b, d.path[0].1 + 1, &p, &|v| *v != Verdict::Drop);
                        let after = match (later.verdict, later.path.first()) {
                            (Verdict::Drop, Some(k)) => {
                                format!(", before the kill switch {}", rs.show(*k))
                            }
                            _ => String::new(),
                        };
                        let first = if d.path.len() > 1 {
                            format!(" (reached by {})", rs.show(d.path[0]))
                        } else {
                            String::new()
                        };
                        format!("{what} is accepted by {}{first}{after}", rs.show(at))
                    }
                    None => format!("{what}: nothing drops it (no kill switch for {})", s.pattern),
                };
                return Check::fail(
                    name,
                    format!("{saw}: what the intercept misses leaves through this host's own uplink"),
                    inp.fix.clone(),
                );
            }
        }
    }
    let how = how.unwrap_or_default();
    match filter_kill {
        Some(k) => Check::warn(
            name,
            format!(
                "{how}; but it is in filter FORWARD ({k}), where Docker inserts its ACCEPTs above it when it \
                 creates a network or restarts (older egressd): now in mangle FORWARD"
            ),
            Some(format!("{} ; {}", inp.fix.replace(" | sh -e", " --delete | sh -e"), inp.fix)),
        ),
        None => {
            let why = if how.starts_with("nft") {
                "a drop in a base chain is final, whatever another table accepts"
            } else {
                "before filter FORWARD, where Docker's ACCEPTs are"
            };
            Check::ok(name, format!("{how} (ICMP, TCP, UDP, DNS to {private}): {why}"))
        }
    }
}

fn published_check(inp: &FwInput, s: &Side, tag: &str) -> Check {
    let rs = inp.rs;
    let name = format!("published ports {tag}");
    for (proto, sport) in [(TCP, 80), (UDP, 5000)] {
        let mut p = inp.packet(s, proto, inp.public(s.v6, 77), 40000);
        p.sport = sport;
        p.reply = true;
        p.dnat = true;
        let what = format!(
            "a reply from {}:{sport} ({}) to a client of a published port (docker -p)",
            s.ifname,
            if proto == TCP { "TCP" } else { "UDP" }
        );
        let pre = rs.hook("prerouting", &p, &|v| {
            matches!(v, Verdict::Tproxy { .. } | Verdict::Redirect { .. } | Verdict::Drop)
        });
        if let Some((_, d)) = pre.decided
            && let Some(at) = first_rule(&d)
        {
            return Check::fail(
                name,
                format!(
                    "{what} is taken by {}: replies of DNAT'd connections (conntrack REPLY, status DNAT) must be \
                     left alone before the intercept",
                    rs.show(at)
                ),
                inp.fix.clone(),
            );
        }
        let fwd = rs.hook("forward", &p, &|v| *v == Verdict::Drop);
        match fwd.decided {
            Some((b, d)) if d.policy => {
                return Check::warn(
                    name,
                    format!("{what} is dropped by the policy of {}", rs.chains[b].label()),
                    None,
                );
            }
            Some((_, d)) => {
                let at = first_rule(&d).unwrap_or((0, 0));
                return Check::fail(
                    name,
                    format!(
                        "{what} is dropped by {}: published ports break; the kill switch must RETURN replies of \
                         DNAT'd connections (conntrack REPLY, status DNAT) before its DROP",
                        rs.show(at)
                    ),
                    inp.fix.clone(),
                );
            }
            None => {}
        }
    }
    Check::ok(
        name,
        "replies of connections DNAT'd into the containers (conntrack REPLY, status DNAT) are neither \
         intercepted nor dropped",
    )
}

/// A container's answer to a remote that wrote to it first (egressd hands
/// it a datagram from a full-cone session's stranger, conntrack records
/// that remote as the originator) or a reply of an inbound connection that
/// was not DNAT'd: conntrack REPLY without DNAT. Forwarded, it leaves by
/// the host's uplink from the container's own address; it must be
/// intercepted (UDP: egressd sends it through the container's session) or
/// dropped.
fn answers_check(inp: &FwInput, s: &Side, tag: &str) -> Check {
    let rs = inp.rs;
    let name = format!("stranger replies {tag}");
    let mut how = Vec::new();
    for (proto, sport, dport) in [(UDP, 40000, 5001), (TCP, 80, 40000)] {
        let mut p = inp.packet(s, proto, inp.public(s.v6, 11), dport);
        p.sport = sport;
        p.reply = true;
        let what = format!(
            "{} from {} ({}) port {sport}, a reply without DNAT (conntrack REPLY: {})",
            describe(&p),
            s.ifname,
            s.src_text,
            if proto == UDP {
                "an answer to a remote that wrote first"
            } else {
                "an inbound connection not published"
            }
        );
        let taken =
            |v: &Verdict| matches!(v, Verdict::Tproxy { .. } | Verdict::Redirect { .. } | Verdict::Drop);
        let pre = rs.hook("prerouting", &p, &|v| !taken(v));
        if let Some((_, d)) = &pre.decided {
            how.push(format!("{}: {}", describe(&p), verdict_text(&d.verdict)));
            continue;
        }
        let fwd = rs.hook("forward", &p, &|v| *v != Verdict::Drop);
        match fwd.decided {
            Some((b, d)) if d.policy => {
                how.push(format!("{}: DROP (policy of {})", describe(&p), rs.chains[b].label()))
            }
            Some((_, d)) => how.push(format!("{}: {} DROP", describe(&p), route(rs, &d.path))),
            None => {
                return Check::fail(
                    name,
                    format!(
                        "{what} passes the kill switch{}: it would leave by this host's uplink from the \
                         container's own address, around its tunnel",
                        lets_out(rs, &fwd)
                    ),
                    inp.fix.clone(),
                );
            }
        }
    }
    Check::ok(name, format!("replies without DNAT are intercepted or dropped ({})", how.join("; ")))
}

/// `: RULE lets it out`: the RETURN of a chain that would have dropped it,
/// or the ACCEPT that ended its walk.
fn lets_out(rs: &Ruleset, res: &HookResult) -> String {
    let drops = |v: &Verdict| *v == Verdict::Drop;
    let ret = res.passed.iter().flat_map(|(_, d)| d.returned.iter()).find(|at| rs.reaches(at.0, &drops, 0));
    let accept =
        res.passed.iter().find(|(_, d)| d.verdict == Verdict::Accept).and_then(|(_, d)| first_rule(d));
    match ret.copied().or(accept) {
        Some(at) => format!(": {} lets it out", rs.show(at)),
        None => String::new(),
    }
}

fn forged_check(inp: &FwInput, s: &Side, tag: &str) -> Check {
    let rs = inp.rs;
    let name = format!("forged sources {tag}");
    let forged = inp.public(s.v6, 66);
    let mut p = inp.packet(s, UDP, inp.public(s.v6, 10), 5000);
    p.src = cidr_range(&Cidr::host(forged));
    p.forged = true;
    let res = rs.hook("prerouting", &p, &|v| *v != Verdict::Drop);
    match res.decided {
        Some((_, d)) if d.verdict == Verdict::Drop && !d.path.is_empty() => Check::ok(
            name,
            format!("{}: DROP (a source {} has no route back to)", route(rs, &d.path), s.ifname),
        ),
        _ if !s.v6 && inp.rp_strict.iter().any(|i| s.pattern.matches(i)) => {
            Check::ok(name, format!("net.ipv4.conf.{}.rp_filter = 1 (strict)", s.ifname))
        }
        _ => Check::warn(
            name,
            format!(
                "nothing drops a packet from {} with a source it has no route back to ({forged}): a container with \
                 CAP_NET_RAW (Docker's default) can send as another address",
                s.ifname
            ),
            Some(inp.fix.clone()),
        ),
    }
}

/// A container interface with IPv6 while nothing intercepts IPv6.
fn ipv6_check(inp: &FwInput, kill_v6_ok: bool) -> Option<Check> {
    if inp.intercepts(true) {
        return None;
    }
    let global: Vec<String> = inp
        .addrs
        .iter()
        .filter(|e| {
            e.addr.is_ipv6()
                && !e.tentative
                && inp.scope.interfaces.iter().any(|p| p.matches(&e.ifname))
                && !matches!(e.addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 || a.is_loopback())
        })
        .map(|e| format!("{} {}/{}", e.ifname, e.addr, e.prefix))
        .collect();
    if global.is_empty() {
        return None;
    }
    let why = if inp.listen(true).is_empty() {
        "egressd has no IPv6 listen address"
    } else {
        "intercept.sources names no IPv6 source"
    };
    let saw = format!(
        "{} but {why}: the containers' IPv6 is not tunnelled, only dropped by the IPv6 kill switch",
        global.join(", ")
    );
    Some(if kill_v6_ok {
        Check::ok("ipv6", saw)
    } else {
        Check::fail(
            "ipv6",
            format!("{saw}, which is missing (see kill switch v6): it leaves natively"),
            format!("{}   (or add an IPv6 listen address)", inp.fix),
        )
    })
}

/// Which resolver containers' queries reach.
fn dns_path(inp: &FwInput) -> Check {
    let up = inp.settings.dns.upstream;
    let host: Vec<IpAddr> = inp.resolvers.iter().copied().filter(|a| !a.is_loopback()).collect();
    let private: Vec<String> = host.iter().filter(|a| is_reserved(**a)).map(IpAddr::to_string).collect();
    let public: Vec<String> = host.iter().filter(|a| !is_reserved(**a)).map(IpAddr::to_string).collect();
    let unrouted = match inp.settings.default {
        Some(id) => format!("tunnel {}", inp.settings.tunnels[usize::from(id)].name),
        None => "Reject: their queries are dropped (UDP) or reset (TCP)".into(),
    };
    let mut saw = String::from("queries to a public resolver go to it through the container's own tunnel");
    if !public.is_empty() {
        saw.push_str(&format!(" (this host's {})", public.join(", ")));
    }
    saw.push_str(&format!(
        "; to a non-public one{} to dns.upstream {up} through the tunnel, answered from the address asked; \
         containers without a route: default {unrouted}",
        if private.is_empty() {
            String::new()
        } else {
            format!(" (this host's {}, where Docker's embedded DNS forwards them)", private.join(", "))
        }
    ));
    let default_up: SocketAddr = "1.1.1.1:53".parse().expect("literal");
    if inp.upstream_default && up == default_up && !private.is_empty() {
        return Check::warn(
            "dns path",
            format!(
                "{saw}. dns.upstream is the default: names only {} knows (LAN, split-horizon) will not resolve in \
                 containers",
                private.join(", ")
            ),
            Some("write dns: (upstream: \"IP:53\") in the config with the public resolver you want (an exit cannot \
                  reach a private one)"
                .into()),
        );
    }
    Check::ok("dns path", saw)
}

/// The `nameserver` addresses of a resolv.conf.
pub(super) fn parse_resolv(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then_some(())?;
            w.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}
