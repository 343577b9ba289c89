//! `nft list ruleset` read into the model of `model.rs`.
//!
//! Pure. Tables of the ip, ip6 and inet families (bridge, netdev and arp
//! ones are not on the routed path); base chains with their hook, priority
//! and policy; named sets of addresses; each rule tokenised (`{ ... }` and
//! `"..."` kept whole) into the matches doctor understands (`ct status
//! dnat` among them), the rest kept as unknown. The tables iptables-nft manages are left out when its
//! `iptables-save` was read (they would be counted twice, and nft shows
//! their TPROXY/REDIRECT targets only as opaque `xt target`).

use std::collections::HashMap;

use super::model::{Base, Chain, Match, Range, Rule, Ruleset, Verdict, port_range, proto_number};
use super::parse::{parse_range, parse_u32};
use crate::config::IfacePattern;

const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// Adds `nft list ruleset` to `rs`; `skip_ipt[v6]`: leave out iptables-nft's
/// tables of that family (their `iptables-save` was read).
pub(super) fn add_nft(rs: &mut Ruleset, text: &str, skip_ipt: [bool; 2]) {
    enum Block {
        None,
        Chain(Chain),
        Set(String, String),
    }
    let mut sets: HashMap<String, Vec<Range>> = HashMap::new();
    let first = rs.chains.len();
    let (mut depth, mut table, mut fam, mut skip) = (0i32, String::new(), None, false);
    let mut block = Block::None;
    for raw in text.lines() {
        let line = raw.trim();
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if depth == 0 {
            if let Some(t) = line.strip_prefix("table ") {
                table = t.trim_end_matches('{').trim().to_string();
                let (family, name) = table.split_once(' ').unwrap_or(("", ""));
                fam = match family {
                    "ip6" => Some(true),
                    _ => Some(false),
                };
                if family == "inet" {
                    fam = None;
                }
                let managed = IPTABLES_TABLES.contains(&name)
                    && ((family == "ip" && skip_ipt[0]) || (family == "ip6" && skip_ipt[1]));
                skip = !matches!(family, "ip" | "ip6" | "inet") || managed;
            }
        } else if depth == 1 && !skip {
            if let Some(n) = line.strip_prefix("chain ") {
                let name = n.trim_end_matches('{').trim().to_string();
                block = Block::Chain(Chain {
                    table: table.clone(),
                    name,
                    fam,
                    ipt: false,
                    base: None,
                    rules: Vec::new(),
                });
            } else if let Some(n) = line.strip_prefix("set ") {
                block = Block::Set(n.trim_end_matches('{').trim().to_string(), String::new());
            }
        } else if depth >= 2 {
            match &mut block {
                Block::Chain(c) if line.starts_with("type ") => c.base = base(line),
                Block::Chain(c)
                    if depth == 2 && !line.is_empty() && line != "}" && !line.starts_with('#') =>
                {
                    c.rules.push(Rule {
                        matches: Vec::new(),
                        verdict: Verdict::Continue,
                        text: line.to_string(),
                    });
                }
                Block::Set(_, body) => {
                    body.push_str(line);
                    body.push(' ');
                }
                _ => {}
            }
        }
        depth = (depth + opens - closes).max(0);
        if depth <= 1 {
            match std::mem::replace(&mut block, Block::None) {
                Block::Chain(c) if depth == 1 && opens == 0 => rs.chains.push(c),
                Block::Set(name, body) if depth == 1 && opens == 0 => {
                    sets.insert(format!("{table}/{name}"), set_elements(&body));
                }
                other => block = other,
            }
        }
    }
    // Rules are parsed once the sets they name are known.
    for c in &mut rs.chains[first..] {
        let table = c.table.clone();
        for r in &mut c.rules {
            *r = nft_rule(&r.text, &table, &sets);
        }
    }
}

/// `type filter hook forward priority mangle; policy accept;`
fn base(line: &str) -> Option<Base> {
    let w: Vec<&str> =
        line.split(|c: char| c.is_whitespace() || c == ';').filter(|s| !s.is_empty()).collect();
    let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1)).copied();
    let hook = after("hook")?.to_string();
    let mut prio = match after("priority")? {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        n => n.parse().unwrap_or(0),
    };
    if let Some(i) = w.iter().position(|x| *x == "priority") {
        match (w.get(i + 2), w.get(i + 3).and_then(|n| n.parse::<i32>().ok())) {
            (Some(&"+"), Some(n)) => prio += n,
            (Some(&"-"), Some(n)) => prio -= n,
            _ => {}
        }
    }
    Some(Base { hook, prio, nat: after("type") == Some("nat"), policy_drop: after("policy") == Some("drop") })
}

/// The ranges of `elements = { a, b-c, d/24 }` in a set body.
fn set_elements(body: &str) -> Vec<Range> {
    let Some(start) = body.find("elements = {") else { return Vec::new() };
    let rest = &body[start + "elements = {".len()..];
    let inner = rest.split('}').next().unwrap_or("");
    inner.split(',').filter_map(|e| parse_range(e.trim())).collect()
}

/// Words of a rule; `{ a, b }` and `"x y"` are one token each (quotes dropped).
fn tokens(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = rule.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                    cur.push(d);
                }
            }
            '{' => {
                cur.push('{');
                for d in chars.by_ref() {
                    cur.push(d);
                    if d == '}' {
                        break;
                    }
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The elements of a value: `{ a, b }` or a single one (quotes dropped).
fn list(v: &str) -> Vec<String> {
    match v.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
        Some(inner) => inner
            .split(',')
            .map(|x| x.trim().trim_matches('"').to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        None => vec![v.trim_matches('"').to_string()],
    }
}

const KEYWORDS: [&str; 22] = [
    "iifname", "iif", "oifname", "oif", "meta", "ip", "ip6", "tcp", "udp", "th", "ct", "fib", "counter",
    "accept", "drop", "reject", "return", "jump", "goto", "tproxy", "redirect", "xt",
];

/// One rule of `nft list ruleset` read into doctor's matches and verdict.
fn nft_rule(text: &str, table: &str, sets: &HashMap<String, Vec<Range>>) -> Rule {
    let words = RuleWords { t: tokens(text), table, sets };
    let mut parts = RuleParts { matches: Vec::new(), verdict: Verdict::Continue, mark: None };
    let mut i = 0;
    while i < words.t.len() {
        i = parts
            .read_match(&words, i)
            .or_else(|| parts.read_verdict(&words, i))
            .or_else(|| parts.read_statement(&words, i))
            .unwrap_or_else(|| parts.read_unknown(&words, i));
    }
    Rule { matches: parts.matches, verdict: parts.verdict, text: counterless(text) }
}

/// A rule's words, and the named sets of its table.
struct RuleWords<'a> {
    t: Vec<String>,
    table: &'a str,
    sets: &'a HashMap<String, Vec<Range>>,
}

impl RuleWords<'_> {
    fn word(&self, j: usize) -> &str {
        self.t.get(j).map(String::as_str).unwrap_or("")
    }

    /// `[!=|==] VALUE` at j: (negated, value, index after it).
    fn op(&self, j: usize) -> (bool, String, usize) {
        match self.t.get(j).map(String::as_str) {
            Some("!=") => (true, self.t.get(j + 1).cloned().unwrap_or_default(), j + 2),
            Some("==") => (false, self.t.get(j + 1).cloned().unwrap_or_default(), j + 2),
            Some(v) => (false, v.to_string(), j + 1),
            None => (false, String::new(), j),
        }
    }

    fn addrs(&self, v: &str) -> Option<Vec<Range>> {
        match v.strip_prefix('@') {
            Some(set) => self.sets.get(&format!("{}/{set}", self.table)).cloned(),
            None => Some(list(v).iter().filter_map(|e| parse_range(e)).collect()),
        }
    }
}

fn ports(v: &str) -> Vec<(u16, u16)> {
    list(v).iter().filter_map(|p| port_range(p)).collect()
}

/// What a rule says, filled in as its words are read. `mark` is what a
/// `meta mark set` earlier in the rule gives a `tproxy` verdict.
struct RuleParts {
    matches: Vec<Match>,
    verdict: Verdict,
    mark: Option<(u32, u32)>,
}

/// Each `read_` method reads the expression starting at word `i` and
/// returns the word after it, or `None` when `i` starts none of its kind.
impl RuleParts {
    fn read_match(&mut self, r: &RuleWords, i: usize) -> Option<usize> {
        let w = r.word(i);
        let next = match w {
            "iifname" | "iif" | "oifname" | "oif" => {
                let (neg, v, next) = r.op(i + 1);
                let pats = list(&v)
                    .iter()
                    .map(|x| IfacePattern::parse(x).unwrap_or_else(|| IfacePattern::exact(x)))
                    .collect();
                self.matches.push(if w.starts_with('i') {
                    Match::Iif(pats, neg)
                } else {
                    Match::Oif(pats, neg)
                });
                next
            }
            "meta" if r.word(i + 1) == "nfproto" => {
                let (neg, v, next) = r.op(i + 2);
                self.matches.push(Match::Family((v == "ipv6") != neg));
                next
            }
            "meta" if r.word(i + 1) == "l4proto" => {
                let (neg, v, next) = r.op(i + 2);
                self.matches
                    .push(Match::Proto(list(&v).iter().filter_map(|p| proto_number(p)).collect(), neg));
                next
            }
            "ip" | "ip6" => self.read_ip(r, i),
            "tcp" | "udp" | "th" | "sctp" | "udplite" | "dccp"
                if matches!(r.word(i + 1), "dport" | "sport") =>
            {
                let protos =
                    if w == "th" { vec![6, 17, 33, 132, 136] } else { proto_number(w).into_iter().collect() };
                self.matches.push(Match::Proto(protos, false));
                let (neg, v, next) = r.op(i + 2);
                let p = ports(&v);
                self.matches.push(if r.word(i + 1) == "dport" {
                    Match::Dport(p, neg)
                } else {
                    Match::Sport(p, neg)
                });
                next
            }
            "ct" if matches!(r.word(i + 1), "direction" | "state") => {
                let (neg, v, next) = r.op(i + 2);
                if r.word(i + 1) == "direction" {
                    self.matches.push(Match::CtDir(v == "reply", neg));
                } else {
                    let states =
                        v.trim_matches(['{', '}']).split(',').map(|s| s.trim().to_string()).collect();
                    self.matches.push(Match::CtState(states, neg));
                }
                next
            }
            "ct" if r.word(i + 1) == "status" => {
                let (m, next) = ct_status(&r.t, i + 2);
                self.matches.push(m);
                next
            }
            "fib" => self.read_fib(r, i),
            _ => return None,
        };
        Some(next)
    }

    /// `ip|ip6 saddr|daddr|protocol|nexthdr [!=] VALUE`; always a match.
    fn read_ip(&mut self, r: &RuleWords, i: usize) -> usize {
        let w = r.word(i);
        self.matches.push(Match::Family(w == "ip6"));
        let (neg, v, next) = r.op(i + 2);
        match r.word(i + 1) {
            "saddr" | "daddr" => {
                let m = match r.addrs(&v) {
                    Some(a) if r.word(i + 1) == "saddr" => Match::Saddr(a, neg),
                    Some(a) => Match::Daddr(a, neg),
                    None => Match::Unknown(format!("{w} {} {v}", r.word(i + 1))),
                };
                self.matches.push(m);
                next
            }
            "protocol" | "nexthdr" => {
                self.matches
                    .push(Match::Proto(list(&v).iter().filter_map(|p| proto_number(p)).collect(), neg));
                next
            }
            other => {
                self.matches.push(Match::Unknown(format!("{w} {other}")));
                i + 2
            }
        }
    }

    /// `fib daddr type [!=] local`, `fib saddr . iif oif missing|0|exists`.
    fn read_fib(&mut self, r: &RuleWords, i: usize) -> usize {
        let end = (i + 1..r.t.len()).find(|&j| matches!(r.word(j), "type" | "oif")).unwrap_or(r.t.len());
        let daddr = r.word(i + 1) == "daddr";
        let (neg, v, next) = r.op(end + 1);
        self.matches.push(match r.word(end) {
            "type" if daddr && v == "local" => Match::DstLocal(neg),
            "oif" if !daddr && matches!(v.as_str(), "missing" | "0") => Match::Rpfilter(!neg),
            "oif" if !daddr && v == "exists" => Match::Rpfilter(neg),
            _ => Match::Unknown(r.t[i..next.min(r.t.len())].join(" ")),
        });
        next
    }

    fn read_verdict(&mut self, r: &RuleWords, i: usize) -> Option<usize> {
        let w = r.word(i);
        let next = match w {
            "accept" => {
                if self.verdict == Verdict::Continue {
                    self.verdict = Verdict::Accept;
                }
                i + 1
            }
            "drop" | "reject" => {
                self.verdict = Verdict::Drop;
                r.t.len()
            }
            "return" => {
                self.verdict = Verdict::Return;
                i + 1
            }
            "jump" | "goto" => {
                let c = r.word(i + 1).to_string();
                self.verdict = if w == "jump" { Verdict::Jump(c) } else { Verdict::Goto(c) };
                i + 2
            }
            "tproxy" => {
                let mut j = i + 1;
                if matches!(r.word(j), "ip" | "ip6") {
                    j += 1;
                }
                let to = if r.word(j) == "to" { r.word(j + 1) } else { "" };
                let (addr, port) = tproxy_to(to);
                self.verdict = Verdict::Tproxy { addr, port, mark: self.mark };
                j + 2
            }
            "redirect" => {
                let port = if r.word(i + 1) == "to" {
                    r.word(i + 2).trim_start_matches(':').split('-').next().and_then(|p| p.parse().ok())
                } else {
                    None
                };
                self.verdict = Verdict::Redirect { port };
                r.t.len()
            }
            "dnat" | "snat" | "masquerade" | "queue" => {
                self.verdict = Verdict::Other(w.to_string());
                r.t.len()
            }
            "xt" if r.word(i + 1) == "target" => {
                self.verdict = match r.word(i + 2) {
                    "TPROXY" => Verdict::Tproxy { addr: None, port: None, mark: None },
                    "REDIRECT" => Verdict::Redirect { port: None },
                    "MARK" | "CONNMARK" | "LOG" | "CT" | "TCPMSS" => Verdict::Continue,
                    x => Verdict::Other(format!("xt target {x}")),
                };
                i + 3
            }
            _ => return None,
        };
        Some(next)
    }

    /// Statements that neither match nor decide: counters, comments, logs, marks.
    fn read_statement(&mut self, r: &RuleWords, i: usize) -> Option<usize> {
        let next = match r.word(i) {
            "meta" if r.word(i + 1) == "mark" && r.word(i + 2) == "set" => {
                // `meta mark set meta mark | 0x2a94` (keeps other bits) or `meta mark set 0x2a94`.
                let (v, next) =
                    if r.word(i + 3) == "meta" { (r.word(i + 6), i + 7) } else { (r.word(i + 3), i + 4) };
                self.mark = parse_u32(v).map(|m| (m, m));
                next
            }
            "counter" => {
                let mut j = i + 1;
                while matches!(r.word(j), "packets" | "bytes" | "name") {
                    j += 2;
                }
                j
            }
            "comment" => i + 2,
            "log" => {
                let mut j = i + 1;
                while matches!(
                    r.word(j),
                    "prefix" | "level" | "flags" | "group" | "snaplen" | "queue-threshold"
                ) {
                    j += 2;
                }
                j
            }
            "notrack" => i + 1,
            // Other statements that set something (`ct mark set 1`, `meta priority set ...`): no match.
            "meta" | "ct" if r.word(i + 2) == "set" => i + 4,
            _ => return None,
        };
        Some(next)
    }

    /// A word doctor does not know: an unknown match, skipped up to the next keyword.
    fn read_unknown(&mut self, r: &RuleWords, i: usize) -> usize {
        self.matches.push(Match::Unknown(r.word(i).to_string()));
        let mut j = i + 1;
        while j < r.t.len() && !KEYWORDS.contains(&r.word(j)) {
            j += 1;
        }
        j
    }
}

/// `ct status` from word `j` on, as nft prints it: `dnat`, `snat,dnat`
/// (any of them set), `! dnat` (not set), `& dnat == dnat`, `& dnat != 0`,
/// `& dnat == 0`. An exact comparison (`!= dnat`, `== dnat`) or a set is
/// a match doctor cannot judge. Returns the match and the word after it.
fn ct_status(t: &[String], j: usize) -> (Match, usize) {
    let word = |k: usize| t.get(k).map(String::as_str).unwrap_or("");
    let bits = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
    let plain = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_lowercase() || c == '-' || c == ',');
    let unknown =
        |n: usize| Match::Unknown(format!("ct status {}", t[j.min(t.len())..(j + n).min(t.len())].join(" ")));
    match word(j) {
        "!" if plain(word(j + 1)) => (Match::CtStatus(bits(word(j + 1)), true), j + 2),
        "&" => {
            let (mask, op, val) = (word(j + 1), word(j + 2), word(j + 3));
            let single = plain(mask) && !mask.contains(',');
            let neg = match (op, val) {
                ("==", v) if v == mask && single => Some(false),
                ("!=", "0") if plain(mask) => Some(false),
                ("==", "0") if plain(mask) => Some(true),
                _ => None,
            };
            (neg.map_or_else(|| unknown(4), |n| Match::CtStatus(bits(mask), n)), j + 4)
        }
        "==" | "!=" => (unknown(2), j + 2),
        v if plain(v) => (Match::CtStatus(bits(v), false), j + 1),
        _ => (unknown(1), j + 1),
    }
}

/// `10.8.0.1:10900`, `[fd08::1]:10900`, `:10900`, `10.8.0.1`.
fn tproxy_to(to: &str) -> (Option<std::net::IpAddr>, Option<u16>) {
    if let Ok(a) = to.parse::<std::net::SocketAddr>() {
        return (Some(a.ip()), Some(a.port()));
    }
    if let Some(p) = to.strip_prefix(':') {
        return (None, p.parse().ok());
    }
    (to.trim_matches(['[', ']']).parse().ok(), None)
}

/// The rule without its `counter packets N bytes M` (they change).
fn counterless(text: &str) -> String {
    let mut w: Vec<&str> = text.split_whitespace().collect();
    if let Some(i) = w.iter().position(|x| *x == "counter")
        && w.get(i + 1) == Some(&"packets")
    {
        w.drain(i..(i + 5).min(w.len()));
    }
    w.join(" ")
}
