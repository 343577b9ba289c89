//! Pure: Docker's container list (JSON) → the label routes egressd wants,
//! and what changed since the last sync (which addresses must have their
//! flows reset so that a later owner of the address never inherits them).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde_json::Value;

pub use crate::snapshot::LabelRoute;

/// A running container that carries the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The full id.
    pub id: String,
    /// The name without Docker's leading `/`.
    pub name: String,
    /// The label's value: the tunnel it asks for.
    pub tunnel: String,
    /// Its addresses on every network it is attached to (v4 and v6).
    pub addrs: Vec<IpAddr>,
}

/// The containers of a `GET /containers/json?filters={"label":[LABEL]}`
/// answer that carry `label`, with their addresses. Entries that are not
/// shaped like containers are skipped; a body that is not a JSON array is
/// an error.
pub fn parse_list(body: &[u8], label: &str) -> Result<Vec<Container>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("container list is not JSON: {e}"))?;
    let list = v.as_array().ok_or("container list is not a JSON array")?;
    let mut out = Vec::new();
    for c in list {
        let Some(id) = c.get("Id").and_then(Value::as_str) else { continue };
        let Some(tunnel) = c.get("Labels").and_then(|l| l.get(label)).and_then(Value::as_str) else {
            continue;
        };
        let name = c
            .get("Names")
            .and_then(Value::as_array)
            .and_then(|n| n.first())
            .and_then(Value::as_str)
            .map_or_else(
                || id.get(..12).unwrap_or(id).to_string(),
                |n| n.trim_start_matches('/').to_string(),
            );
        let mut addrs = Vec::new();
        if let Some(nets) = c.pointer("/NetworkSettings/Networks").and_then(Value::as_object) {
            for n in nets.values() {
                for key in ["IPAddress", "GlobalIPv6Address"] {
                    if let Some(a) = n.get(key).and_then(Value::as_str).and_then(|s| s.parse::<IpAddr>().ok())
                        && !a.is_unspecified()
                        && !addrs.contains(&a)
                    {
                        addrs.push(a);
                    }
                }
            }
        }
        out.push(Container { id: id.to_string(), name, tunnel: tunnel.trim().to_string(), addrs });
    }
    Ok(out)
}

/// What one sync changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sync {
    /// The whole new set of label routes, by address.
    pub routes: Vec<LabelRoute>,
    /// Addresses whose flows must end: gone, or now another container's or
    /// another tunnel's.
    pub reset: Vec<IpAddr>,
    /// Routes added or changed (for the log).
    pub added: Vec<LabelRoute>,
}

/// The routes `containers` want, against the `current` ones.
pub fn sync(current: &[LabelRoute], containers: &[Container]) -> Sync {
    let mut want: BTreeMap<IpAddr, LabelRoute> = BTreeMap::new();
    for c in containers {
        for &addr in &c.addrs {
            let r = LabelRoute { addr, id: c.id.clone(), name: c.name.clone(), tunnel: c.tunnel.clone() };
            match want.get_mut(&addr) {
                // Two containers claim one address (overlapping networks):
                // neither choice can be trusted for it.
                Some(other) if other.id != r.id && other.tunnel != r.tunnel => other.tunnel.clear(),
                Some(_) => {}
                None => {
                    want.insert(addr, r);
                }
            }
        }
    }
    let mut reset = Vec::new();
    for old in current {
        match want.get(&old.addr) {
            Some(new) if new.id == old.id && new.tunnel == old.tunnel => {}
            _ => reset.push(old.addr),
        }
    }
    let added =
        want.values().filter(|r| !current.iter().any(|o| o == *r)).cloned().collect::<Vec<LabelRoute>>();
    Sync { routes: want.into_values().collect(), reset, added }
}

/// Whether an event from `GET /events` can change the label routes.
pub fn event_matters(event: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(event) else { return false };
    let ty = v.get("Type").and_then(Value::as_str).unwrap_or("");
    let action = v.get("Action").and_then(Value::as_str).unwrap_or("");
    match ty {
        "container" => matches!(
            action,
            "start"
                | "restart"
                | "die"
                | "stop"
                | "kill"
                | "destroy"
                | "rename"
                | "pause"
                | "unpause"
                | "update"
        ),
        "network" => matches!(action, "connect" | "disconnect" | "destroy"),
        _ => false,
    }
}

/// The longest event line kept; a longer one ends the session (the next
/// starts with a full resync).
pub const MAX_EVENT: usize = 1 << 20;

/// Splits the `/events` payload (one JSON object a line, in reads split
/// anywhere) into events.
#[derive(Debug, Default)]
pub struct EventLines {
    line: Vec<u8>,
}

impl EventLines {
    /// Takes payload bytes; whether a completed event [matters](event_matters).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<bool, String> {
        let mut relevant = false;
        for &b in bytes {
            if b == b'\n' {
                relevant |= event_matters(&self.line);
                self.line.clear();
            } else if self.line.len() < MAX_EVENT {
                self.line.push(b);
            } else {
                return Err(format!("an event longer than {MAX_EVENT} bytes"));
            }
        }
        Ok(relevant)
    }
}

/// How many containers that left the list stay remembered in [`Warned`]:
/// enough that one restarting (briefly not listed) is not reported again.
pub const WARNED_UNLISTED: usize = 256;

/// The containers already reported as naming no tunnel, so that each is
/// logged and counted once. Bounded: entries of containers in the current
/// list, and of the [`WARNED_UNLISTED`] most recently listed others.
#[derive(Debug, Default)]
pub struct Warned {
    /// (container id, tunnel) → the sync it was last listed in.
    seen: HashMap<(String, String), u64>,
    sync: u64,
}

impl Warned {
    /// One sync: `unknown` are the listed containers whose label names no
    /// tunnel, as (id, tunnel). Returns those not reported before.
    pub fn sync<'a>(
        &mut self,
        unknown: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<(String, String)> {
        self.sync += 1;
        let mut new = Vec::new();
        for (id, tunnel) in unknown {
            let key = (id.to_string(), tunnel.to_string());
            if self.seen.insert(key.clone(), self.sync).is_none() {
                new.push(key);
            }
        }
        let mut gone: Vec<u64> = self.seen.values().copied().filter(|&s| s < self.sync).collect();
        if gone.len() > WARNED_UNLISTED {
            gone.sort_unstable();
            // The newest sync number to forget: everything up to it goes
            // (ties too: the bound holds, at worst one more report).
            let cut = gone.get(gone.len() - WARNED_UNLISTED - 1).copied().unwrap_or(0);
            let now = self.sync;
            self.seen.retain(|_, s| *s == now || *s > cut);
        }
        new
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"[
      {"Id":"aaaaaaaaaaaa1111","Names":["/web"],"Labels":{"egressd.tunnel":"hk0","x":"y"},
       "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.2","GlobalIPv6Address":"fd08::2"},
                                      "other":{"IPAddress":"172.18.0.5","GlobalIPv6Address":""}}}},
      {"Id":"bbbbbbbbbbbb2222","Names":["/db"],"Labels":{"egressd.tunnel":" hk1 "},
       "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.3"}}}},
      {"Id":"cccc","Names":["/plain"],"Labels":{},"NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.4"}}}},
      {"Id":"dddd","Labels":{"egressd.tunnel":"hk0"},"NetworkSettings":{"Networks":{"host":{"IPAddress":""}}}},
      "not a container", 7
    ]"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_labelled_containers_and_their_addresses() {
        let l = parse_list(LIST.as_bytes(), "egressd.tunnel").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].name, "web");
        assert_eq!(l[0].tunnel, "hk0");
        assert_eq!(l[0].addrs.len(), 3);
        assert!(l[0].addrs.contains(&ip("fd08::2")) && l[0].addrs.contains(&ip("172.18.0.5")));
        assert_eq!(l[1].tunnel, "hk1");
        assert_eq!(l[2].name, "dddd");
        assert!(l[2].addrs.is_empty());
        assert!(parse_list(b"{}", "egressd.tunnel").is_err());
        assert!(parse_list(b"[", "egressd.tunnel").is_err());
        assert_eq!(parse_list(b"[]", "other.label").unwrap(), vec![]);
    }

    fn c(id: &str, tunnel: &str, addrs: &[&str]) -> Container {
        Container {
            id: id.into(),
            name: format!("n-{id}"),
            tunnel: tunnel.into(),
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        }
    }

    #[test]
    fn start_stop_restart_and_ip_reuse() {
        let s = sync(&[], &[c("a", "hk0", &["10.8.0.2", "fd08::2"])]);
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.added.len(), 2);
        assert!(s.reset.is_empty());
        // Nothing changed: nothing to do.
        let same = sync(&s.routes, &[c("a", "hk0", &["10.8.0.2", "fd08::2"])]);
        assert!(same.reset.is_empty() && same.added.is_empty());
        // Stopped: its addresses go and their flows are reset.
        let stopped = sync(&s.routes, &[]);
        assert!(stopped.routes.is_empty());
        assert_eq!(stopped.reset, [ip("10.8.0.2"), ip("fd08::2")]);
        // Another container got the address: reset, then the new owner's route.
        let reused = sync(&s.routes, &[c("b", "hk0", &["10.8.0.2"])]);
        assert_eq!(reused.reset, [ip("10.8.0.2"), ip("fd08::2")]);
        assert_eq!(reused.routes[0].id, "b");
        // Restarted with a new address: the old one reset, the new one routed.
        let moved = sync(&s.routes, &[c("a", "hk0", &["10.8.0.9", "fd08::2"])]);
        assert_eq!(moved.reset, [ip("10.8.0.2")]);
        assert_eq!(moved.added.len(), 1);
        // Relabelled (re-created): a new tunnel resets.
        let relabel = sync(&s.routes, &[c("a", "hk1", &["10.8.0.2", "fd08::2"])]);
        assert_eq!(relabel.reset.len(), 2);
    }

    #[test]
    fn an_address_two_containers_claim_is_rejected() {
        let s = sync(&[], &[c("a", "hk0", &["10.8.0.2"]), c("b", "hk1", &["10.8.0.2"])]);
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.routes[0].tunnel, "");
        // The same choice twice is no conflict.
        let s = sync(&[], &[c("a", "hk0", &["10.8.0.2"]), c("b", "hk0", &["10.8.0.2"])]);
        assert_eq!(s.routes[0].tunnel, "hk0");
    }

    #[test]
    fn events_that_matter() {
        assert!(event_matters(br#"{"Type":"container","Action":"start","Actor":{"ID":"x"}}"#));
        assert!(event_matters(br#"{"Type":"network","Action":"disconnect"}"#));
        assert!(!event_matters(br#"{"Type":"container","Action":"exec_start: sh"}"#));
        assert!(!event_matters(br#"{"Type":"image","Action":"pull"}"#));
        assert!(!event_matters(b"garbage"));
    }

    #[test]
    fn event_lines_split_anywhere() {
        let stream = concat!(
            r#"{"Type":"container","Action":"exec_start: sh"}"#,
            "\n",
            r#"{"Type":"container","Action":"die","Actor":{"ID":"x"}}"#,
            "\n",
            r#"{"Type":"image","Action":"pull"}"#,
            "\n"
        )
        .as_bytes();
        // Whole: one event matters.
        assert_eq!(EventLines::default().feed(stream), Ok(true));
        // Split at every byte: it matters exactly when its newline arrives.
        let die_end = stream.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(1).map(|(i, _)| i).unwrap();
        let mut l = EventLines::default();
        for (i, b) in stream.iter().enumerate() {
            assert_eq!(l.feed(std::slice::from_ref(b)), Ok(i == die_end), "byte {i}");
        }
        // Irrelevant events, a partial line: nothing to do yet.
        let mut l = EventLines::default();
        assert_eq!(l.feed(br#"{"Type":"image","Action":"pull"}"#), Ok(false));
        assert_eq!(l.feed(b"\n{\"Type\":\"network\",\"Action\":\"connect\""), Ok(false));
        assert_eq!(l.feed(b"}\n"), Ok(true));
        // An endless line is refused, not buffered.
        let mut l = EventLines::default();
        assert!(l.feed(&vec![b'x'; MAX_EVENT]).is_ok());
        assert!(l.feed(b"x").is_err());
    }

    #[test]
    fn warned_once_per_container_and_bounded() {
        let mut w = Warned::default();
        assert_eq!(w.sync([("a", "typo")]), [("a".to_string(), "typo".to_string())]);
        assert!(w.sync([("a", "typo")]).is_empty());
        // Restarting: not listed for a sync, then back: not reported again.
        assert!(w.sync([]).is_empty());
        assert!(w.sync([("a", "typo")]).is_empty());
        // Many containers come and go: the entries stay bounded, the listed
        // ones are kept whatever the churn.
        for i in 0..(3 * WARNED_UNLISTED) {
            let id = format!("c{i}");
            assert_eq!(w.sync([("a", "typo"), (id.as_str(), "typo")]).len(), 1);
            assert!(w.len() <= WARNED_UNLISTED + 2, "{} entries", w.len());
        }
        assert!(w.sync([("a", "typo")]).is_empty());
        // The newest unlisted are remembered, the oldest forgotten.
        let last = format!("c{}", 3 * WARNED_UNLISTED - 1);
        assert!(w.sync([(last.as_str(), "typo")]).is_empty());
        assert_eq!(w.sync([("c0", "typo")]).len(), 1);
    }
}
