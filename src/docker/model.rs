//! Pure: Docker's container list (JSON) → the label routes egressd wants,
//! and what changed since the last sync (which addresses must have their
//! flows reset so that a later owner of the address never inherits them).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

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

/// One label route: a container address and the tunnel its label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRoute {
    pub addr: IpAddr,
    pub id: String,
    pub name: String,
    /// The tunnel named by the label ("" when the address is claimed by two
    /// containers with different choices: rejected rather than guessed).
    pub tunnel: String,
}

impl LabelRoute {
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
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
}
