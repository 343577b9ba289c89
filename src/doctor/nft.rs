//! The nft side of the intercept check: `nft list ruleset` parsed into
//! base chains and named sets, and searched for egressd's rules (see
//! `firewall.rs` for what counts).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::firewall::{Hook, Want};
use super::parse::{parse_mark, parse_range, range_covers};

/// One chain of `nft list ruleset`.
#[derive(Debug, Clone, Default)]
pub(super) struct NftChain {
    pub table: String,
    pub name: String,
    /// `prerouting`, `forward`, ... for a base chain.
    pub hook: Option<String>,
    pub rules: Vec<String>,
}

/// The ruleset: chains, and each table's named sets (key `family name/set`).
#[derive(Debug, Clone, Default)]
pub(super) struct NftRuleset {
    pub chains: Vec<NftChain>,
    pub sets: HashMap<String, Vec<(bool, u128, u128)>>,
}

impl NftRuleset {
    pub(super) fn has_table(&self, table: &str) -> bool {
        self.chains.iter().any(|c| c.table == table)
            || self.sets.keys().any(|k| k.rsplit_once('/').is_some_and(|(t, _)| t == table))
    }
}

/// `nft list ruleset` as nft 1.0 prints it.
pub(super) fn parse_nft(text: &str) -> NftRuleset {
    enum Block {
        None,
        Chain(NftChain),
        Set(String, String),
    }
    let mut rs = NftRuleset::default();
    let (mut depth, mut table) = (0i32, String::new());
    let mut block = Block::None;
    for raw in text.lines() {
        let line = raw.trim();
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if depth == 0 {
            if let Some(t) = line.strip_prefix("table ") {
                table = t.trim_end_matches('{').trim().to_string();
            }
        } else if depth == 1 {
            if let Some(n) = line.strip_prefix("chain ") {
                let name = n.trim_end_matches('{').trim().to_string();
                block = Block::Chain(NftChain { table: table.clone(), name, ..NftChain::default() });
            } else if let Some(n) = line.strip_prefix("set ") {
                block = Block::Set(n.trim_end_matches('{').trim().to_string(), String::new());
            }
        } else {
            match &mut block {
                Block::Chain(c) if line.starts_with("type ") => {
                    let w: Vec<&str> = line.split_whitespace().collect();
                    c.hook =
                        w.iter().position(|x| *x == "hook").and_then(|i| w.get(i + 1)).map(|h| h.to_string());
                }
                Block::Chain(c) if depth == 2 && !line.is_empty() && line != "}" => {
                    c.rules.push(line.to_string())
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
                    rs.sets.insert(format!("{table}/{name}"), set_elements(&body));
                }
                other => block = other,
            }
        }
    }
    rs
}

/// The ranges of `elements = { a, b-c, d/24 }` in a set body.
fn set_elements(body: &str) -> Vec<(bool, u128, u128)> {
    let Some(start) = body.find("elements = {") else { return Vec::new() };
    let rest = &body[start + "elements = {".len()..];
    let inner = rest.split('}').next().unwrap_or("");
    inner.split(',').filter_map(|e| parse_range(e.trim())).collect()
}

/// The words after `key` in a rule (`ip saddr` → `@sources_v4` or `{ ... }`).
fn value_after<'a>(rule: &'a str, key: &str) -> Option<&'a str> {
    let i = rule.find(key)? + key.len();
    Some(rule[i..].trim_start())
}

/// The source ranges of a rule's `ip saddr ...`; the whole family when it
/// has no source match; `None` for a negated one.
fn nft_sources(rs: &NftRuleset, table: &str, rule: &str, w: &Want) -> Option<Vec<(bool, u128, u128)>> {
    let fam = if w.v6 { "ip6" } else { "ip" };
    let Some(v) = value_after(rule, &format!("{fam} saddr ")) else {
        return Some(vec![w.whole_family()]);
    };
    if v.starts_with("!=") {
        return None;
    }
    if let Some(set) = v.strip_prefix('@') {
        let name = set.split_whitespace().next().unwrap_or("");
        return Some(rs.sets.get(&format!("{table}/{name}")).cloned().unwrap_or_default());
    }
    if let Some(anon) = v.strip_prefix('{') {
        let inner = anon.split('}').next().unwrap_or("");
        return Some(inner.split(',').filter_map(|e| parse_range(e.trim())).collect());
    }
    Some(v.split_whitespace().next().and_then(parse_range).into_iter().collect())
}

/// Whether an nft rule is about this family at all (an `inet` table holds both).
fn nft_family(table: &str, rule: &str, v6: bool) -> bool {
    let fam = if v6 { "ip6" } else { "ip" };
    let other = if v6 { "ip" } else { "ip6" };
    if table.starts_with(&format!("{other} ")) {
        return false;
    }
    let words: Vec<&str> = rule.split_whitespace().collect();
    let mentions = |f: &str| {
        words.contains(&f) || rule.contains(&format!("nfproto ipv{}", if f == "ip" { 4 } else { 6 }))
    };
    mentions(fam) || (!mentions(other) && !table.starts_with("inet "))
}

fn nft_takes(rule: &str, proto: Option<&str>) -> bool {
    let Some(p) = proto else { return true };
    ["l4proto", "protocol", "nexthdr"].iter().any(|k| {
        value_after(rule, &format!("{k} ")).is_some_and(|v| {
            let v = v
                .strip_prefix("{")
                .map(|x| x.split('}').next().unwrap_or(""))
                .unwrap_or_else(|| v.split_whitespace().next().unwrap_or(""));
            v.split([',', ' ']).any(|x| x.trim() == p)
        })
    }) || rule.starts_with(&format!("{p} "))
        || rule.contains(&format!(" {p} dport"))
        || rule.contains(&format!(" {p} sport"))
}

/// Whether the nft ruleset holds `hook` for every source of `w`.
pub(super) fn nft_check(rs: &NftRuleset, hook: Hook, w: &Want) -> Result<String, String> {
    let chain_hook = if hook == Hook::Kill { "forward" } else { "prerouting" };
    let mut how = Vec::new();
    for src in &w.sources {
        let mut problem = None;
        let mut found = None;
        // Base chains only: a chain reached by a jump (iptables-nft's own
        // EGRESSD_KILL, say) says nothing unless the jump is there too.
        for c in rs.chains.iter().filter(|c| c.hook.as_deref() == Some(chain_hook)) {
            for r in &c.rules {
                let target_word = match hook {
                    Hook::TcpRedirect => " redirect to ",
                    Hook::TcpTproxy | Hook::UdpTproxy => " tproxy ",
                    Hook::Kill => " drop",
                };
                if !(r.contains(target_word) || hook == Hook::Kill && r.ends_with("drop")) {
                    continue;
                }
                if !nft_family(&c.table, r, w.v6) || !nft_takes(r, hook.proto()) {
                    continue;
                }
                let covered =
                    nft_sources(rs, &c.table, r, w).is_some_and(|v| v.iter().any(|s| range_covers(*s, src)));
                if !covered {
                    continue;
                }
                match nft_target(r, hook, w) {
                    Ok(t) => {
                        found = Some(format!("{} {}: {src} -> {t}", c.table, c.name));
                        break;
                    }
                    Err(e) => problem = problem.or(Some(format!("{} {}: {e}", c.table, c.name))),
                }
            }
            if found.is_some() {
                break;
            }
        }
        match (found, problem) {
            (Some(h), _) => how.push(h),
            (None, Some(e)) => return Err(e),
            (None, None) => {
                let p = hook.proto().map(|p| format!(" {p}")).unwrap_or_default();
                let what = match hook {
                    Hook::TcpRedirect => "redirect",
                    Hook::TcpTproxy | Hook::UdpTproxy => "tproxy",
                    Hook::Kill => "drop",
                };
                return Err(format!("no nft {chain_hook} rule sends{p} from {src} to {what}"));
            }
        }
    }
    Ok(how.join("; "))
}

fn nft_target(rule: &str, hook: Hook, w: &Want) -> Result<String, String> {
    match hook {
        Hook::Kill => Ok("drop".into()),
        Hook::TcpRedirect => {
            let to =
                value_after(rule, "redirect to ").and_then(|v| v.split_whitespace().next()).unwrap_or("");
            let port = to.trim_start_matches(':').split('-').next().and_then(|p| p.parse().ok());
            match port.and_then(|p| w.listener_on_port(p)) {
                Some(_) => Ok(format!("redirect to {to}")),
                None => Err(format!("redirect to {to}, but egressd listens on {}", w.ports())),
            }
        }
        Hook::TcpTproxy | Hook::UdpTproxy => {
            let after = value_after(rule, " tproxy ").unwrap_or("");
            let to = value_after(after, "to ").and_then(|v| v.split_whitespace().next()).unwrap_or("");
            let ok = match to.parse::<SocketAddr>() {
                Ok(a) => w.listen.contains(&a),
                Err(_) => to
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .and_then(|p| w.listener_on_port(p))
                    .is_some(),
            };
            if !ok {
                return Err(format!("tproxy to {to}, but egressd listens on {}", w.ports()));
            }
            let mark = value_after(rule, "meta mark set ").and_then(|v| v.split_whitespace().next());
            match mark.and_then(parse_mark) {
                Some((v, _)) if v == w.mark => Ok(format!("tproxy to {to} mark {v:#x}")),
                Some((v, _)) => Err(format!(
                    "tproxy marks {v:#x}, but intercept.mark is {} ({:#x}), which the ip rule looks for",
                    w.mark, w.mark
                )),
                None => {
                    Err(format!("tproxy to {to} sets no `meta mark`, so its packets miss the local route"))
                }
            }
        }
    }
}
