//! The firewall as doctor reads it: every chain of `iptables-save`,
//! `ip6tables-save` and `nft list ruleset` in one model, and a walk of a
//! sample packet through a hook's base chains, jumps followed, in the
//! kernel's order (priority; a drop anywhere is final, an accept ends only
//! its own base chain).
//!
//! Pure. A match doctor cannot judge (`-m mark`, `limit`, ...) is a maybe:
//! the walk then takes whichever branch is worse for the question asked
//! (`bad`), so an unknown rule never makes a setup look safer than it is.
//! Parsers: `firewall.rs` (iptables) and `nft.rs`.

use std::net::IpAddr;

use super::parse::cidr_range;
use crate::config::IfacePattern;
use crate::route::Cidr;

/// An address range: (is IPv6, first, last) as integers.
pub(super) type Range = (bool, u128, u128);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn of(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }

    fn neg(self, negated: bool) -> Tri {
        match (self, negated) {
            (Tri::Yes, true) => Tri::No,
            (Tri::No, true) => Tri::Yes,
            (t, _) => t,
        }
    }

    fn and(self, o: Tri) -> Tri {
        match (self, o) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Yes, Tri::Yes) => Tri::Yes,
            _ => Tri::Maybe,
        }
    }
}

/// One match of a rule; the `bool` after the values is "negated" (`!`, `!=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Match {
    /// IPv6 (true) or IPv4 only (`meta nfproto`, an `ip`/`ip6` expression).
    Family(bool),
    Iif(Vec<IfacePattern>, bool),
    Oif(Vec<IfacePattern>, bool),
    Saddr(Vec<Range>, bool),
    Daddr(Vec<Range>, bool),
    /// IP protocol numbers.
    Proto(Vec<u8>, bool),
    Dport(Vec<(u16, u16)>, bool),
    Sport(Vec<(u16, u16)>, bool),
    /// conntrack direction: reply (true) or original.
    CtDir(bool, bool),
    /// conntrack states, lower case (`new`, `established`, ...), with
    /// iptables' virtual `dnat` and `snat` (`--ctstate DNAT`): any of them.
    CtState(Vec<String>, bool),
    /// conntrack status bits, lower case as nft names them (`dnat`,
    /// `seen-reply`, ...; `--ctstatus`, `ct status`): any of them set.
    CtStatus(Vec<String>, bool),
    /// `-m addrtype --dst-type LOCAL`, `fib daddr type local`.
    DstLocal(bool),
    /// rpfilter: true when it matches a forged source (`--invert`, `oif missing`).
    Rpfilter(bool),
    Unknown(String),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// A non-terminal statement (MARK, LOG, counter) or none.
    Continue,
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    Tproxy {
        addr: Option<IpAddr>,
        port: Option<u16>,
        mark: Option<(u32, u32)>,
    },
    Redirect {
        port: Option<u16>,
    },
    /// Another terminal target (DNAT, MASQUERADE, queue, an opaque `xt target`).
    Other(String),
}

#[derive(Clone, Debug)]
pub(super) struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    /// As printed (`-A FORWARD -i br0 -j EGRESSD_KILL`, an nft rule line).
    pub text: String,
}

/// Where a base chain hangs.
#[derive(Clone, Debug)]
pub(super) struct Base {
    /// `prerouting`, `forward`, ...
    pub hook: String,
    pub prio: i32,
    /// A nat chain sees only a connection's first packet.
    pub nat: bool,
    pub policy_drop: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Chain {
    /// `mangle` (iptables) or `inet egressd` (nft).
    pub table: String,
    pub name: String,
    /// IPv6 only, IPv4 only, or both (an nft inet table).
    pub fam: Option<bool>,
    /// From iptables(-save) rather than nft.
    pub ipt: bool,
    pub base: Option<Base>,
    pub rules: Vec<Rule>,
}

impl Chain {
    /// `mangle FORWARD`, `ip6tables mangle FORWARD`, `inet egressd kill`.
    pub(super) fn label(&self) -> String {
        if self.ipt && self.fam == Some(true) {
            format!("ip6tables {} {}", self.table, self.name)
        } else {
            format!("{} {}", self.table, self.name)
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct Ruleset {
    pub chains: Vec<Chain>,
}

/// The sample packet walked through the rules.
#[derive(Clone, Debug)]
pub(super) struct Packet {
    pub v6: bool,
    /// The ingress interface (a container interface).
    pub iif: String,
    /// Its source: a container subnet (or the whole family).
    pub src: Range,
    /// A source the interface has no route back to.
    pub forged: bool,
    pub dst: IpAddr,
    pub dst_local: bool,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// A reply: conntrack REPLY, ESTABLISHED (of a connection that entered
    /// the container, or an answer to a remote that wrote to it first);
    /// else a new connection the container opens.
    pub reply: bool,
    /// Its connection's destination was rewritten on the way in (conntrack
    /// status DNAT: a published port's).
    pub dnat: bool,
}

pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;
pub(super) const ICMP: u8 = 1;
pub(super) const ICMPV6: u8 = 58;

fn has_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 33 | 132 | 136)
}

fn in_ranges(ranges: &[Range], src: Range) -> Tri {
    let mut partial = false;
    for r in ranges {
        if r.0 != src.0 || r.2 < src.1 || src.2 < r.1 {
            continue;
        }
        if r.1 <= src.1 && src.2 <= r.2 {
            return Tri::Yes;
        }
        partial = true;
    }
    if partial { Tri::Maybe } else { Tri::No }
}

impl Match {
    fn eval(&self, p: &Packet) -> Tri {
        let ports = |v: &[(u16, u16)], port: u16, neg: bool| {
            if !has_ports(p.proto) {
                return Tri::No;
            }
            Tri::of(v.iter().any(|(a, b)| *a <= port && port <= *b)).neg(neg)
        };
        match self {
            Match::Family(v6) => Tri::of(*v6 == p.v6),
            Match::Iif(pats, neg) => Tri::of(pats.iter().any(|x| x.matches(&p.iif))).neg(*neg),
            // The packet leaves by some other interface (the uplink, whose
            // name is not known here), never the one it came in by.
            Match::Oif(pats, neg) => {
                if pats.iter().any(|x| x.matches(&p.iif)) {
                    Tri::No.neg(*neg)
                } else {
                    Tri::Maybe
                }
            }
            Match::Saddr(r, neg) => in_ranges(r, p.src).neg(*neg),
            Match::Daddr(r, neg) => in_ranges(r, cidr_range(&Cidr::host(p.dst))).neg(*neg),
            Match::Proto(v, neg) => Tri::of(v.contains(&p.proto)).neg(*neg),
            Match::Dport(v, neg) => ports(v, p.dport, *neg),
            Match::Sport(v, neg) => ports(v, p.sport, *neg),
            Match::CtDir(reply, neg) => Tri::of(*reply == p.reply).neg(*neg),
            Match::CtState(states, neg) => any(states, |s| ct_state(s, p)).neg(*neg),
            Match::CtStatus(bits, neg) => any(bits, |b| ct_status(b, p)).neg(*neg),
            Match::DstLocal(neg) => Tri::of(p.dst_local).neg(*neg),
            Match::Rpfilter(forged) => Tri::of(p.forged == *forged),
            Match::Unknown(_) => Tri::Maybe,
        }
    }
}

/// Yes when one of `items` is, else Maybe when one may be, else No.
fn any(items: &[String], f: impl Fn(&str) -> Tri) -> Tri {
    items.iter().fold(Tri::No, |t, x| match (t, f(x)) {
        (Tri::Yes, _) | (_, Tri::Yes) => Tri::Yes,
        (Tri::Maybe, _) | (_, Tri::Maybe) => Tri::Maybe,
        _ => Tri::No,
    })
}

/// A sample is a connection's first packet (`new`, no NAT set up yet) or
/// a reply (`established`, DNAT as sampled). SNAT happens after the hooks
/// doctor walks, and is not known here.
fn ct_state(state: &str, p: &Packet) -> Tri {
    match state {
        "new" => Tri::of(!p.reply),
        "established" => Tri::of(p.reply),
        "related" | "invalid" | "untracked" => Tri::No,
        "dnat" => Tri::of(p.dnat),
        _ => Tri::Maybe,
    }
}

/// Status bits: a first packet has none yet (not even `confirmed`); a
/// reply's connection is confirmed and has seen a reply.
fn ct_status(bit: &str, p: &Packet) -> Tri {
    match bit {
        "dnat" => Tri::of(p.dnat),
        "confirmed" | "seen-reply" => Tri::of(p.reply),
        // `--ctstatus NONE` tests no bit: it never matches.
        "expected" | "dying" | "none" => Tri::No,
        _ => Tri::Maybe,
    }
}

impl Rule {
    fn eval(&self, p: &Packet) -> Tri {
        self.matches.iter().fold(Tri::Yes, |t, m| if t == Tri::No { t } else { t.and(m.eval(p)) })
    }
}

/// A rule of the ruleset: (chain index, rule index).
pub(super) type At = (usize, usize);

/// Where a walk through one base chain ended.
#[derive(Clone, Debug)]
pub(super) struct Decision {
    /// Accept, Drop, Return (fell off the base chain), Tproxy, Redirect, Other.
    pub verdict: Verdict,
    /// The rules taken, jumps first, the deciding rule last.
    pub path: Vec<At>,
    /// The explicit RETURNs met on the way (a chain that gave it back).
    pub returned: Vec<At>,
    /// It depended on a match doctor could not judge.
    pub maybe: bool,
    /// Dropped by the base chain's policy.
    pub policy: bool,
}

impl Decision {
    fn new(verdict: Verdict) -> Decision {
        Decision { verdict, path: Vec::new(), returned: Vec::new(), maybe: false, policy: false }
    }
}

/// A packet's fate at one hook.
#[derive(Clone, Debug, Default)]
pub(super) struct HookResult {
    /// (base chain, decision) of the drop, TPROXY or REDIRECT that settled it.
    pub decided: Option<(usize, Decision)>,
    /// Base chains it passed before (or without) that, in order.
    pub passed: Vec<(usize, Decision)>,
}

const BUDGET: u32 = 100_000;
const MAX_DEPTH: usize = 32;

impl Ruleset {
    pub(super) fn rule(&self, at: At) -> &Rule {
        &self.chains[at.0].rules[at.1]
    }

    /// `` `RULE` (TABLE) ``: a rule as a message shows it.
    pub(super) fn show(&self, at: At) -> String {
        let c = &self.chains[at.0];
        if c.ipt {
            let tool = if c.fam == Some(true) { "ip6tables " } else { "" };
            format!("`{}` ({tool}{} {} rule {})", self.rule(at).text, c.table, c.name, at.1 + 1)
        } else {
            format!("`{}` ({} {})", self.rule(at).text, c.table, c.name)
        }
    }

    /// The chain `name` a rule of chain `from` jumps to.
    pub(super) fn find(&self, from: usize, name: &str) -> Option<usize> {
        let f = &self.chains[from];
        self.chains
            .iter()
            .position(|c| c.table == f.table && c.fam == f.fam && c.ipt == f.ipt && c.name == name)
    }

    /// Whether chain `c`, or one it jumps to, has a rule whose verdict is `pred`.
    pub(super) fn reaches(&self, c: usize, pred: &dyn Fn(&Verdict) -> bool, depth: usize) -> bool {
        depth < MAX_DEPTH
            && self.chains[c].rules.iter().any(|r| match &r.verdict {
                Verdict::Jump(t) | Verdict::Goto(t) => {
                    self.find(c, t).is_some_and(|t| self.reaches(t, pred, depth + 1))
                }
                v => pred(v),
            })
    }

    /// The base chains of `hook` for this packet, in the kernel's order.
    fn bases(&self, hook: &str, p: &Packet) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.chains.len())
            .filter(|&i| {
                let c = &self.chains[i];
                c.base.as_ref().is_some_and(|b| b.hook == hook && !(b.nat && p.reply))
                    && c.fam.is_none_or(|f| f == p.v6)
            })
            .collect();
        v.sort_by_key(|&i| self.chains[i].base.as_ref().map_or(0, |b| b.prio));
        v
    }

    /// Walks `p` through `hook`. `bad` says which verdicts are the worse
    /// outcome for the question asked (taken when a match is a maybe).
    pub(super) fn hook(&self, hook: &str, p: &Packet, bad: &dyn Fn(&Verdict) -> bool) -> HookResult {
        let mut out = HookResult::default();
        let mut budget = BUDGET;
        for b in self.bases(hook, p) {
            let mut d = self.walk(b, 0, p, bad, 0, &mut budget);
            if d.verdict == Verdict::Return && self.chains[b].base.as_ref().is_some_and(|x| x.policy_drop) {
                d.verdict = Verdict::Drop;
                d.policy = true;
            }
            match d.verdict {
                Verdict::Drop | Verdict::Tproxy { .. } | Verdict::Redirect { .. } => {
                    out.decided = Some((b, d));
                    return out;
                }
                _ => out.passed.push((b, d)),
            }
        }
        out
    }

    /// The walk of chain `c` from rule `from` on (what comes after a rule).
    pub(super) fn walk_from(
        &self,
        c: usize,
        from: usize,
        p: &Packet,
        bad: &dyn Fn(&Verdict) -> bool,
    ) -> Decision {
        let mut budget = BUDGET;
        self.walk(c, from, p, bad, 0, &mut budget)
    }

    fn walk(
        &self,
        c: usize,
        from: usize,
        p: &Packet,
        bad: &dyn Fn(&Verdict) -> bool,
        depth: usize,
        budget: &mut u32,
    ) -> Decision {
        let mut returned = Vec::new();
        let rules = &self.chains[c].rules;
        for (i, r) in rules.iter().enumerate().skip(from) {
            if *budget == 0 || depth > MAX_DEPTH {
                let mut d = Decision::new(Verdict::Other("too many rules or jumps to follow".into()));
                d.maybe = true;
                return d;
            }
            *budget -= 1;
            let m = r.eval(p);
            if m == Tri::No {
                continue;
            }
            // What happens when this rule matches: None = go on in this chain.
            let taken: Option<Decision> = match &r.verdict {
                Verdict::Continue => None,
                Verdict::Jump(t) | Verdict::Goto(t) => match self.find(c, t) {
                    None => None,
                    Some(tc) => {
                        let mut sub = self.walk(tc, 0, p, bad, depth + 1, budget);
                        sub.path.insert(0, (c, i));
                        let goto = matches!(r.verdict, Verdict::Goto(_));
                        if sub.verdict == Verdict::Return && !goto {
                            if m == Tri::Yes {
                                returned.extend(sub.returned);
                            }
                            None
                        } else {
                            Some(sub)
                        }
                    }
                },
                Verdict::Return => {
                    let mut d = Decision::new(Verdict::Return);
                    d.path.push((c, i));
                    d.returned.push((c, i));
                    Some(d)
                }
                v => {
                    let mut d = Decision::new(v.clone());
                    d.path.push((c, i));
                    Some(d)
                }
            };
            let Some(mut taken) = taken else { continue };
            if m == Tri::Yes {
                let mut r = returned;
                r.append(&mut taken.returned);
                taken.returned = r;
                return taken;
            }
            let mut rest = self.walk(c, i + 1, p, bad, depth, budget);
            let mut pick = match (bad(&taken.verdict), bad(&rest.verdict)) {
                (true, false) => {
                    taken.maybe = true;
                    taken
                }
                (false, true) => {
                    rest.maybe = true;
                    rest
                }
                _ => rest,
            };
            let mut r = returned;
            r.append(&mut pick.returned);
            pick.returned = r;
            return pick;
        }
        let mut d = Decision::new(Verdict::Return);
        d.returned = returned;
        d
    }
}

/// `tcp`, `udp`, `icmp`, `ipv6-icmp`, ... or a number.
pub(super) fn proto_number(s: &str) -> Option<u8> {
    Some(match s.to_ascii_lowercase().as_str() {
        "tcp" => TCP,
        "udp" => UDP,
        "icmp" => ICMP,
        "ipv6-icmp" | "icmpv6" | "icmp6" => ICMPV6,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        n => return n.parse().ok(),
    })
}

/// `53`, `1024:65535` (iptables), `1024-65535` (nft).
pub(super) fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once([':', '-']) {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => s.parse().ok().map(|p| (p, p)),
    }
}
