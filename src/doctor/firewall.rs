//! Reading the intercept back out of `iptables-save` and `nft list ruleset`.
//!
//! Pure: text in, a verdict out. What counts as "the intercept" is what
//! `egressd rules` writes (see `src/rules/`), and also the article's hand-made
//! form, so a setup that works is recognised however it was typed in:
//!
//! ```text
//! iptables:  <table> PREROUTING [-s SRC] [-p P] -j CHAIN   CHAIN: [-p P] -j TPROXY/REDIRECT ...
//!            <table> PREROUTING [-s SRC] [-p P] -j TPROXY/REDIRECT ...      (no chain)
//!            filter FORWARD -s SRC -j EGRESSD_KILL             EGRESSD_KILL: ... -j DROP
//! nft:       any table: a prerouting rule with `saddr` covering SRC, the protocol and
//!            `tproxy ... to ADDR:PORT` (+ `meta mark set M`) or `redirect to :PORT`;
//!            a forward rule with `saddr` covering SRC ending in `drop`
//! ```
//!
//! This file: what is wanted, and the iptables side; `nft.rs`: the nft side.

use std::net::SocketAddr;

use super::parse::{parse_mark, parse_range, range_covers};
use crate::route::Cidr;

/// What one family's intercept should look like.
#[derive(Debug, Clone)]
pub(super) struct Want {
    pub v6: bool,
    /// The intercepted sources of this family (outermost ones).
    pub sources: Vec<Cidr>,
    /// This family's listen addresses.
    pub listen: Vec<SocketAddr>,
    pub mark: u32,
}

impl Want {
    pub(super) fn whole_family(&self) -> (bool, u128, u128) {
        (self.v6, 0, if self.v6 { u128::MAX } else { u128::from(u32::MAX) })
    }

    pub(super) fn listener_on_port(&self, port: u16) -> Option<SocketAddr> {
        self.listen.iter().copied().find(|a| a.port() == port)
    }

    pub(super) fn ports(&self) -> String {
        let v: Vec<String> = self.listen.iter().map(SocketAddr::to_string).collect();
        v.join(", ")
    }
}

/// What is being intercepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hook {
    TcpRedirect,
    TcpTproxy,
    UdpTproxy,
    /// The FORWARD drop of the kill switch.
    Kill,
}

impl Hook {
    pub(super) fn proto(self) -> Option<&'static str> {
        match self {
            Hook::TcpRedirect | Hook::TcpTproxy => Some("tcp"),
            Hook::UdpTproxy => Some("udp"),
            Hook::Kill => None,
        }
    }

    fn ipt_table(self) -> &'static str {
        match self {
            Hook::TcpRedirect => "nat",
            Hook::TcpTproxy | Hook::UdpTproxy => "mangle",
            Hook::Kill => "filter",
        }
    }

    fn ipt_hook(self) -> &'static str {
        if self == Hook::Kill { "FORWARD" } else { "PREROUTING" }
    }

    fn target(self) -> &'static str {
        match self {
            Hook::TcpRedirect => "REDIRECT",
            Hook::TcpTproxy | Hook::UdpTproxy => "TPROXY",
            Hook::Kill => "DROP",
        }
    }
}

// ---------------------------------------------------------------- iptables

/// One `-A CHAIN ...` line of `iptables-save`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IptRule {
    pub table: String,
    pub chain: String,
    pub args: Vec<String>,
}

impl IptRule {
    /// The value after `flag` (either spelling), unless negated with `!`.
    fn opt(&self, flags: &[&str]) -> Option<Result<&str, ()>> {
        let i = self.args.iter().position(|a| flags.contains(&a.as_str()))?;
        let negated = i > 0 && self.args[i - 1] == "!";
        match self.args.get(i + 1) {
            Some(v) if !negated => Some(Ok(v)),
            _ => Some(Err(())),
        }
    }

    /// The source range it matches (`None` for a negated source).
    fn source(&self, w: &Want) -> Option<(bool, u128, u128)> {
        match self.opt(&["-s", "--source"]) {
            None => Some(w.whole_family()),
            Some(Ok(s)) => parse_range(s),
            Some(Err(())) => None,
        }
    }

    /// Whether it matches protocol `p` (or every protocol).
    fn takes(&self, p: Option<&str>) -> bool {
        match (self.opt(&["-p", "--protocol"]), p) {
            (None, _) => true,
            (Some(Ok(v)), Some(p)) => v == p,
            _ => false,
        }
    }

    fn jump(&self) -> Option<&str> {
        self.opt(&["-j", "--jump"]).and_then(Result::ok)
    }

    /// A final rule of a chain: no destination match (RETURNs have one).
    fn catch_all(&self) -> bool {
        self.opt(&["-d", "--destination"]).is_none()
    }
}

/// The `-A` lines of `iptables-save` (or `ip6tables-save`), with their table.
pub(super) fn parse_iptables_save(text: &str) -> Vec<IptRule> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if line.starts_with("-A ") {
            let mut words = split_quoted(line).into_iter().skip(1);
            let Some(chain) = words.next() else { continue };
            out.push(IptRule { table: table.clone(), chain, args: words.collect() });
        }
    }
    out
}

/// Words, with `"..."` (iptables-save's quoting of comments) kept whole.
fn split_quoted(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '"' => (quoted, any) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => (cur, any) = (cur + &c.to_string(), true),
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Whether the iptables dump holds `hook` for every source of `w`:
/// `Ok(how)` or `Err(what is missing or wrong)`.
pub(super) fn ipt_check(rules: &[IptRule], hook: Hook, w: &Want) -> Result<String, String> {
    let (table, base) = (hook.ipt_table(), hook.ipt_hook());
    let mut how = Vec::new();
    for src in &w.sources {
        let mut problem = None;
        let mut found = None;
        let jumps = rules.iter().filter(|r| {
            r.table == table
                && r.chain == base
                && r.takes(hook.proto())
                && r.source(w).is_some_and(|s| range_covers(s, src))
        });
        for r in jumps {
            let Some(target) = r.jump() else { continue };
            let verdict = if target == hook.target() {
                ipt_target(r, hook, w).map(|t| format!("{table} {base} -s {src} -> {t}"))
            } else {
                let finals: Vec<&IptRule> = rules
                    .iter()
                    .filter(|f| f.table == table && f.chain == target && f.jump() == Some(hook.target()))
                    .collect();
                let usable = finals.iter().find(|f| f.takes(hook.proto()) && f.catch_all());
                match usable {
                    Some(f) => {
                        ipt_target(f, hook, w).map(|t| format!("{table} {base} -s {src} -> {target} -> {t}"))
                    }
                    None if rules.iter().any(|x| x.table == table && x.chain == target) => Err(format!(
                        "{table} {target} (where {src} jumps) has no final `{}` rule",
                        want_rule(hook, w)
                    )),
                    None => continue,
                }
            };
            match verdict {
                Ok(h) => {
                    found = Some(h);
                    break;
                }
                Err(e) => problem = problem.or(Some(e)),
            }
        }
        match (found, problem) {
            (Some(h), _) => how.push(h),
            (None, Some(e)) => return Err(e),
            (None, None) => {
                let p = hook.proto().map(|p| format!(" {}", p.to_uppercase())).unwrap_or_default();
                return Err(format!("no {table} {base} rule sends{p} from {src} to {}", hook.target()));
            }
        }
    }
    Ok(how.join("; "))
}

/// The rule `egressd rules` writes at the end of the chain, for messages.
fn want_rule(hook: Hook, w: &Want) -> String {
    let l = w.listen.first().map(|a| (a.ip().to_string(), a.port())).unwrap_or_default();
    match hook {
        Hook::TcpRedirect => format!("-p tcp -j REDIRECT --to-ports {}", l.1),
        Hook::TcpTproxy | Hook::UdpTproxy => format!(
            "-p {} -j TPROXY --on-port {} --on-ip {} --tproxy-mark {:#x}/{:#x}",
            hook.proto().unwrap_or("udp"),
            l.1,
            l.0,
            w.mark,
            w.mark
        ),
        Hook::Kill => "-j DROP".to_string(),
    }
}

/// `ip:port` / `[ip]:port` for a TPROXY target (`*:port` without --on-ip).
fn on(ip: Option<&str>, port: &str) -> String {
    match ip.and_then(|i| i.parse::<std::net::IpAddr>().ok()) {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => format!("*:{port}"),
    }
}

/// Checks a final TPROXY/REDIRECT rule's parameters against the config.
fn ipt_target(r: &IptRule, hook: Hook, w: &Want) -> Result<String, String> {
    let at = format!("{} {}", r.table, r.chain);
    match hook {
        Hook::Kill => Ok("DROP".into()),
        Hook::TcpRedirect => {
            let ports = r.opt(&["--to-ports"]).and_then(Result::ok).unwrap_or("");
            let port = ports.split(['-', ':']).next().and_then(|p| p.parse().ok());
            match port.and_then(|p| w.listener_on_port(p)) {
                Some(_) => Ok(format!("REDIRECT --to-ports {ports}")),
                None => {
                    Err(format!("{at}: REDIRECT --to-ports {ports}, but egressd listens on {}", w.ports()))
                }
            }
        }
        Hook::TcpTproxy | Hook::UdpTproxy => {
            let port = r.opt(&["--on-port"]).and_then(Result::ok).unwrap_or("");
            let ip = r.opt(&["--on-ip"]).and_then(Result::ok);
            let mark = r.opt(&["--tproxy-mark"]).and_then(Result::ok).and_then(parse_mark);
            let listener = port.parse().ok().and_then(|p| w.listener_on_port(p));
            let ip_ok = match (ip, listener) {
                (Some(ip), Some(l)) => ip.parse().ok() == Some(l.ip()),
                (None, Some(_)) => true,
                _ => false,
            };
            if !ip_ok {
                let on = ip.map(|i| format!(" --on-ip {i}")).unwrap_or_default();
                return Err(format!(
                    "{at}: TPROXY --on-port {port}{on}, but egressd listens on {}",
                    w.ports()
                ));
            }
            match mark {
                Some((v, _)) if v == w.mark => Ok(format!("TPROXY {} mark {v:#x}", on(ip, port))),
                Some((v, m)) => Err(format!(
                    "{at}: TPROXY marks {v:#x}/{m:#x}, but intercept.mark is {} ({:#x}), which the ip rule looks for",
                    w.mark, w.mark
                )),
                None => {
                    Err(format!("{at}: TPROXY sets no --tproxy-mark, so its packets miss the local route"))
                }
            }
        }
    }
}
