//! Pure: Docker's container list and inspect answers (JSON) → the label
//! routes egressd wants, and what changed since the last sync (which
//! addresses must have their flows reset so that a later owner of the
//! address never inherits them); events → which containers to look at again.
//!
//! ```text
//!  list  ─► parse_list ───► Known::replace ─┐
//!  event ─► EventLines ─► Due: each (id, Look) ─► inspect ─► parse_inspect ─► Known::set ─┤
//!                       └─► Due::all (no id to trust) ─► list                             ▼
//!                                                     sync(current routes, Known) ─► routes, reset, added
//! ```

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
    /// The class label's value, when it carries one: the class it asks for.
    pub class: Option<String>,
    /// Its addresses on every network it is attached to (v4 and v6).
    pub addrs: Vec<IpAddr>,
}

/// The containers of a `GET /containers/json?filters={"label":[LABEL]}`
/// answer that carry `label`, with their addresses and the value of
/// `class_label` if they carry it too. Entries that are not shaped like
/// containers are skipped; a body that is not a JSON array is an error.
pub fn parse_list(body: &[u8], label: &str, class_label: &str) -> Result<Vec<Container>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("container list is not JSON: {e}"))?;
    let list = v.as_array().ok_or("container list is not a JSON array")?;
    let mut out = Vec::new();
    for c in list {
        let Some(id) = c.get("Id").and_then(Value::as_str) else { continue };
        let labels = c.get("Labels");
        let Some(tunnel) = labels.and_then(|l| l.get(label)).and_then(Value::as_str) else {
            continue;
        };
        let class = labels.and_then(|l| l.get(class_label)).and_then(Value::as_str);
        // Its own name, as inspect's `Name` says it: a legacy link adds
        // aliases ("/app/db") to the list's names, in no promised order.
        let names = c.get("Names").and_then(Value::as_array);
        let own = |v: &&Value| v.as_str().is_some_and(|n| !n.trim_start_matches('/').contains('/'));
        let name = names.and_then(|n| n.iter().find(own).or_else(|| n.first()));
        out.push(container(id, name, (tunnel, class), c));
    }
    Ok(out)
}

/// A `GET /containers/{id}/json` answer: the container if it runs and
/// carries `label` (what a list would show of it, `class_label` too),
/// `None` if not (stopped, exited, or without the label). Docker's list
/// shows a container while `State.Running` holds (paused and restarting
/// ones too), so that decides here. A body that is not a JSON object with
/// an `Id` is an error.
pub fn parse_inspect(body: &[u8], label: &str, class_label: &str) -> Result<Option<Container>, String> {
    let c: Value = serde_json::from_slice(body).map_err(|e| format!("container inspect is not JSON: {e}"))?;
    let id = c.get("Id").and_then(Value::as_str).ok_or("container inspect has no Id")?;
    if c.pointer("/State/Running").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let labels = c.pointer("/Config/Labels");
    let Some(tunnel) = labels.and_then(|l| l.get(label)).and_then(Value::as_str) else {
        return Ok(None);
    };
    let class = labels.and_then(|l| l.get(class_label)).and_then(Value::as_str);
    Ok(Some(container(id, c.get("Name"), (tunnel, class), &c)))
}

/// One container from the fields a list entry and an inspect answer share
/// (`NetworkSettings.Networks`); `name` is the list's first name or the
/// inspect's `Name`, the short id without one; `choice` the values of its
/// tunnel label and class label. A class label that is not a string is
/// taken as absent, as a tunnel label that is not one is.
fn container(id: &str, name: Option<&Value>, choice: (&str, Option<&str>), c: &Value) -> Container {
    let (tunnel, class) = choice;
    let name = name
        .and_then(Value::as_str)
        .map_or_else(|| id.get(..12).unwrap_or(id).to_string(), |n| n.trim_start_matches('/').to_string());
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
    Container {
        id: id.to_string(),
        name,
        tunnel: tunnel.trim().to_string(),
        class: class.map(|c| c.trim().to_string()),
        addrs,
    }
}

/// The labelled running containers as the follower last saw them: a list
/// replaces them all, an event's inspect one. Kept sorted by id, so that
/// an address two containers claim comes out the same whichever way the
/// follower learnt them (a periodic list then finds nothing changed).
#[derive(Debug, Default)]
pub struct Known {
    list: Vec<Container>,
}

impl Known {
    /// A whole list.
    pub fn replace(&mut self, mut list: Vec<Container>) {
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list.dedup_by(|a, b| a.id == b.id);
        self.list = list;
    }

    /// What container `id` is now (`None`: not running, unlabelled or
    /// gone); whether that changed anything. An answer under another id
    /// (Docker's full id for a short one) replaces `id`'s entry too.
    pub fn set(&mut self, id: &str, now: Option<Container>) -> bool {
        let mut changed = false;
        if now.as_ref().is_some_and(|c| c.id != id) {
            changed = self.remove(id);
        }
        let key = now.as_ref().map_or(id, |c| c.id.as_str());
        match (self.list.binary_search_by(|c| c.id.as_str().cmp(key)), now) {
            (Ok(i), Some(c)) => {
                if let Some(old) = self.list.get_mut(i)
                    && *old != c
                {
                    *old = c;
                    changed = true;
                }
            }
            (Ok(i), None) => {
                self.list.remove(i);
                changed = true;
            }
            (Err(i), Some(c)) => {
                self.list.insert(i, c);
                changed = true;
            }
            (Err(_), None) => {}
        }
        changed
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.list.binary_search_by(|c| c.id.as_str().cmp(id)) {
            Ok(i) => {
                self.list.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn containers(&self) -> &[Container] {
        &self.list
    }
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
            let r = LabelRoute {
                addr,
                id: c.id.clone(),
                name: c.name.clone(),
                tunnel: c.tunnel.clone(),
                class: c.class.clone(),
            };
            match want.get_mut(&addr) {
                // Two containers claim one address (overlapping networks):
                // neither choice (of tunnel or of class) can be trusted for it.
                Some(other) if other.id != r.id && (other.tunnel != r.tunnel || other.class != r.class) => {
                    other.tunnel.clear()
                }
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
            // Another class alone (a new class_label) is no reset: the
            // flows keep their exit, the route takes the new class.
            Some(new) if new.id == old.id && new.tunnel == old.tunnel => {}
            _ => reset.push(old.addr),
        }
    }
    // By address: a thousand containers make thousands of routes, and
    // every event syncs them all.
    let old: HashMap<IpAddr, &LabelRoute> = current.iter().map(|r| (r.addr, r)).collect();
    let added = want.values().filter(|r| old.get(&r.addr) != Some(r)).cloned().collect::<Vec<LabelRoute>>();
    Sync { routes: want.into_values().collect(), reset, added }
}

/// What an event from `GET /events` asks of the follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Nothing: it cannot change a label route.
    None,
    /// This container may have changed: ask Docker about it.
    Inspect(String),
    /// This container is destroyed: its routes go, no need to ask.
    Gone(String),
    /// It names no container that can be trusted in a request path (a
    /// network destroyed, an odd id): list them all.
    All,
}

/// Which container an event names and what to do about it. A container
/// event names it by `Actor.ID` (or the older top-level `id`), a network
/// connect or disconnect by `Actor.Attributes.container`.
pub fn event_target(event: &[u8]) -> Target {
    let Ok(v) = serde_json::from_slice::<Value>(event) else { return Target::None };
    let ty = v.get("Type").and_then(Value::as_str).unwrap_or("");
    let action = v.get("Action").and_then(Value::as_str).unwrap_or("");
    let id = match (ty, action) {
        ("container", "destroy") => return actor(&v).map_or(Target::All, Target::Gone),
        (
            "container",
            "start" | "restart" | "die" | "stop" | "kill" | "rename" | "pause" | "unpause" | "update",
        ) => actor(&v),
        ("network", "connect" | "disconnect") => v
            .pointer("/Actor/Attributes/container")
            .and_then(Value::as_str)
            .filter(|id| valid_id(id))
            .map(str::to_string),
        ("network", "destroy") => None,
        _ => return Target::None,
    };
    id.map_or(Target::All, Target::Inspect)
}

/// A container event's container id.
fn actor(v: &Value) -> Option<String> {
    let id = v.pointer("/Actor/ID").or_else(|| v.get("id")).and_then(Value::as_str)?;
    valid_id(id).then(|| id.to_string())
}

/// Whether `id` can go into a request path as it is: Docker's ids are 64
/// hex digits; names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

const MAX_ID: usize = 128;

/// Whether an event from `GET /events` can change the label routes.
pub fn event_matters(event: &[u8]) -> bool {
    event_target(event) != Target::None
}

/// What to do about one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    Inspect,
    Gone,
}

/// The most containers one [`Due`] names; more in one read is a burst a
/// single list answers more cheaply than that many inspects.
pub const MAX_DUE: usize = 64;

/// What the events of one read ask for: each container named once (a
/// destroy wins over the rest: the container cannot come back), or, when
/// one event names no usable container or there are more than
/// [`MAX_DUE`], a whole list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Due {
    pub all: bool,
    /// In the order first named; empty when `all`.
    pub each: Vec<(String, Look)>,
}

impl Due {
    pub fn is_empty(&self) -> bool {
        !self.all && self.each.is_empty()
    }

    fn add(&mut self, t: Target) {
        let (id, look) = match t {
            Target::None => return,
            Target::All => return self.everything(),
            Target::Inspect(id) => (id, Look::Inspect),
            Target::Gone(id) => (id, Look::Gone),
        };
        if self.all {
            return;
        }
        let full = self.each.len() >= MAX_DUE;
        match self.each.iter_mut().find(|(i, _)| *i == id) {
            Some((_, l)) => {
                if look == Look::Gone {
                    *l = Look::Gone;
                }
            }
            None if full => self.everything(),
            None => self.each.push((id, look)),
        }
    }

    fn everything(&mut self) {
        self.all = true;
        self.each = Vec::new();
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
    /// Takes payload bytes; what the events they complete ask for (empty:
    /// none [matters](event_matters)).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Due, String> {
        let mut due = Due::default();
        for &b in bytes {
            if b == b'\n' {
                due.add(event_target(&self.line));
                self.line.clear();
            } else if self.line.len() < MAX_EVENT {
                self.line.push(b);
            } else {
                return Err(format!("an event longer than {MAX_EVENT} bytes"));
            }
        }
        Ok(due)
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
        let l = parse_list(LIST.as_bytes(), "egressd.tunnel", "egressd.class").unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].name, "web");
        assert_eq!(l[0].tunnel, "hk0");
        assert_eq!(l[0].addrs.len(), 3);
        assert!(l[0].addrs.contains(&ip("fd08::2")) && l[0].addrs.contains(&ip("172.18.0.5")));
        assert_eq!(l[1].tunnel, "hk1");
        assert_eq!(l[2].name, "dddd");
        assert!(l[2].addrs.is_empty());
        assert!(parse_list(b"{}", "egressd.tunnel", "egressd.class").is_err());
        assert!(parse_list(b"[", "egressd.tunnel", "egressd.class").is_err());
        assert_eq!(parse_list(b"[]", "other.label", "egressd.class").unwrap(), vec![]);
    }

    fn c(id: &str, tunnel: &str, addrs: &[&str]) -> Container {
        Container {
            id: id.into(),
            name: format!("n-{id}"),
            tunnel: tunnel.into(),
            class: None,
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

    /// Issue 26: the class label is read beside the tunnel label (trimmed;
    /// absent or not a string: no class); it does not make a container
    /// followed on its own.
    #[test]
    fn class_labels_are_read_beside_the_tunnel_label() {
        let list = r#"[
          {"Id":"a1","Names":["/web"],"Labels":{"egressd.tunnel":"hk0","egressd.class":" slow "}},
          {"Id":"b2","Names":["/db"],"Labels":{"egressd.tunnel":"hk0"}},
          {"Id":"c3","Names":["/odd"],"Labels":{"egressd.tunnel":"hk0","egressd.class":7}},
          {"Id":"d4","Names":["/lone"],"Labels":{"egressd.class":"slow"}},
          {"Id":"e5","Names":["/blank"],"Labels":{"egressd.tunnel":"hk0","egressd.class":""}}
        ]"#;
        let l = parse_list(list.as_bytes(), "egressd.tunnel", "egressd.class").unwrap();
        let got: Vec<(&str, Option<&str>)> =
            l.iter().map(|c| (c.name.as_str(), c.class.as_deref())).collect();
        assert_eq!(got, [("web", Some("slow")), ("db", None), ("odd", None), ("blank", Some(""))]);
        // Another class_label: another value (or none).
        let l = parse_list(list.as_bytes(), "egressd.tunnel", "x.class").unwrap();
        assert!(l.iter().all(|c| c.class.is_none()));
        let inspect = INSPECT.replace(r#""x":"y""#, r#""egressd.class":"live""#);
        let c = parse_inspect(inspect.as_bytes(), "egressd.tunnel", "egressd.class").unwrap().unwrap();
        assert_eq!(c.class.as_deref(), Some("live"));
        let c = parse_inspect(INSPECT.as_bytes(), "egressd.tunnel", "egressd.class").unwrap().unwrap();
        assert_eq!(c.class, None);
    }

    #[test]
    fn a_class_is_carried_on_the_route_and_a_new_one_resets_nothing() {
        let classed = |id: &str, class: Option<&str>, addr: &str| Container {
            class: class.map(str::to_string),
            ..c(id, "hk0", &[addr])
        };
        let s = sync(&[], &[classed("a", Some("slow"), "10.8.0.2")]);
        assert_eq!(s.routes[0].class.as_deref(), Some("slow"));
        // The same container with another class (a new class_label): the
        // route changes, its flows keep their exit.
        let again = sync(&s.routes, &[classed("a", Some("live"), "10.8.0.2")]);
        assert!(again.reset.is_empty());
        assert_eq!(again.added.len(), 1);
        assert_eq!(again.routes[0].class.as_deref(), Some("live"));
        // Two containers claim an address with one tunnel but two classes:
        // neither is trusted, as with two tunnels.
        let both = sync(&[], &[classed("a", Some("slow"), "10.8.0.2"), classed("b", None, "10.8.0.2")]);
        assert_eq!(both.routes[0].tunnel, "");
        let same =
            sync(&[], &[classed("a", Some("slow"), "10.8.0.2"), classed("b", Some("slow"), "10.8.0.2")]);
        assert_eq!(same.routes[0].tunnel, "hk0");
    }

    #[test]
    fn events_that_matter() {
        assert!(event_matters(br#"{"Type":"container","Action":"start","Actor":{"ID":"x"}}"#));
        assert!(event_matters(br#"{"Type":"network","Action":"disconnect"}"#));
        assert!(event_matters(br#"{"Type":"container","Action":"destroy","Actor":{"ID":"x"}}"#));
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
        let die = Due { all: false, each: vec![("x".into(), Look::Inspect)] };
        // Whole: one event matters.
        assert_eq!(EventLines::default().feed(stream), Ok(die.clone()));
        // Split at every byte: it matters exactly when its newline arrives.
        let die_end = stream.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(1).map(|(i, _)| i).unwrap();
        let mut l = EventLines::default();
        for (i, b) in stream.iter().enumerate() {
            let want = if i == die_end { die.clone() } else { Due::default() };
            assert_eq!(l.feed(std::slice::from_ref(b)), Ok(want), "byte {i}");
        }
        // Irrelevant events, a partial line: nothing to do yet.
        let mut l = EventLines::default();
        assert!(l.feed(br#"{"Type":"image","Action":"pull"}"#).unwrap().is_empty());
        assert!(l.feed(b"\n{\"Type\":\"network\",\"Action\":\"destroy\"").unwrap().is_empty());
        assert_eq!(l.feed(b"}\n").map(|d| d.all), Ok(true));
        // An endless line is refused, not buffered.
        let mut l = EventLines::default();
        assert!(l.feed(&vec![b'x'; MAX_EVENT]).is_ok());
        assert!(l.feed(b"x").is_err());
    }

    const ID_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn an_event_names_its_container() {
        let t = |e: &str| event_target(e.as_bytes());
        let a = || ID_A.to_string();
        assert_eq!(
            t(&format!(r#"{{"Type":"container","Action":"start","Actor":{{"ID":"{ID_A}"}}}}"#)),
            Target::Inspect(a())
        );
        // The older top-level id, when Actor has none.
        assert_eq!(
            t(&format!(r#"{{"Type":"container","Action":"die","id":"{ID_A}"}}"#)),
            Target::Inspect(a())
        );
        assert_eq!(
            t(&format!(r#"{{"Type":"container","Action":"destroy","Actor":{{"ID":"{ID_A}"}}}}"#)),
            Target::Gone(a())
        );
        // A network event names the network; the container is an attribute.
        let connect = format!(
            r#"{{"Type":"network","Action":"connect","Actor":{{"ID":"net1","Attributes":{{"container":"{ID_A}","name":"egress"}}}}}}"#
        );
        assert_eq!(t(&connect), Target::Inspect(a()));
        assert_eq!(t(r#"{"Type":"network","Action":"disconnect","Actor":{"ID":"net1"}}"#), Target::All);
        assert_eq!(t(r#"{"Type":"network","Action":"destroy","Actor":{"ID":"net1"}}"#), Target::All);
        // No id, or one that must not go into a request path: list them all.
        assert_eq!(t(r#"{"Type":"container","Action":"start"}"#), Target::All);
        for bad in ["", "../../version", "a b", "a?b", "a%2Fb", "a\r\nb", &"a".repeat(MAX_ID + 1)] {
            let e = serde_json::json!({"Type": "container", "Action": "start", "Actor": {"ID": bad}});
            assert_eq!(t(&e.to_string()), Target::All, "{bad:?}");
        }
        assert_eq!(t(r#"{"Type":"container","Action":"create","Actor":{"ID":"x"}}"#), Target::None);
        assert_eq!(t(r#"{"Type":"container","Action":"start","Actor":{"ID":7}}"#), Target::All);
        assert_eq!(t("[]"), Target::None);
    }

    #[test]
    fn a_read_asks_for_each_container_once_or_for_a_list() {
        let ev = |action: &str, id: &str| {
            format!("{{\"Type\":\"container\",\"Action\":\"{action}\",\"Actor\":{{\"ID\":\"{id}\"}}}}\n")
        };
        let mut l = EventLines::default();
        let read =
            [ev("kill", "a"), ev("die", "a"), ev("start", "b"), ev("destroy", "a"), ev("stop", "a")].concat();
        let due = l.feed(read.as_bytes()).unwrap();
        // A destroy wins: the container cannot come back.
        assert_eq!(
            due,
            Due { all: false, each: vec![("a".into(), Look::Gone), ("b".into(), Look::Inspect)] }
        );
        // A burst of more containers than MAX_DUE: one list instead.
        let burst: String = (0..=MAX_DUE).map(|i| ev("start", &format!("c{i}"))).collect();
        assert_eq!(l.feed(burst.as_bytes()).unwrap(), Due { all: true, each: vec![] });
        let most: String = (0..MAX_DUE).map(|i| ev("start", &format!("c{i}"))).collect();
        assert_eq!(l.feed(most.as_bytes()).unwrap().each.len(), MAX_DUE);
        // A list asked for swallows the rest.
        let mixed =
            [ev("start", "a"), "{\"Type\":\"network\",\"Action\":\"destroy\"}\n".into(), ev("die", "b")]
                .concat();
        assert_eq!(l.feed(mixed.as_bytes()).unwrap(), Due { all: true, each: vec![] });
    }

    const INSPECT: &str = r#"{"Id":"aaaaaaaaaaaa1111","Name":"/web","State":{"Status":"running","Running":true,"Paused":false},
      "Config":{"Labels":{"egressd.tunnel":" hk0 ","x":"y"},"Image":"egbb"},
      "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.2","GlobalIPv6Address":"fd08::2"},
                                     "other":{"IPAddress":"172.18.0.5","GlobalIPv6Address":""}}}}"#;

    #[test]
    fn parses_an_inspect_answer_as_the_list_would_show_it() {
        let c = parse_inspect(INSPECT.as_bytes(), "egressd.tunnel", "egressd.class").unwrap().unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str(), c.tunnel.as_str()), ("aaaaaaaaaaaa1111", "web", "hk0"));
        assert_eq!(c.addrs, [ip("10.8.0.2"), ip("fd08::2"), ip("172.18.0.5")]);
        // The same container in list shape gives the same Container (its
        // own name, not a legacy link's alias).
        let listed = r#"[{"Id":"aaaaaaaaaaaa1111","Names":["/app/web","/web"],"Labels":{"egressd.tunnel":" hk0 "},
            "NetworkSettings":{"Networks":{"egress":{"IPAddress":"10.8.0.2","GlobalIPv6Address":"fd08::2"},
                                           "other":{"IPAddress":"172.18.0.5"}}}}]"#;
        assert_eq!(parse_list(listed.as_bytes(), "egressd.tunnel", "egressd.class").unwrap(), [c]);
        // Paused and restarting containers run (a list shows them too).
        let paused = INSPECT.replace(r#""Paused":false"#, r#""Paused":true"#);
        assert!(parse_inspect(paused.as_bytes(), "egressd.tunnel", "egressd.class").unwrap().is_some());
        // Stopped (after a die: no addresses either), or without the label: none.
        let exited = INSPECT.replace(r#""Running":true"#, r#""Running":false"#);
        assert_eq!(parse_inspect(exited.as_bytes(), "egressd.tunnel", "egressd.class"), Ok(None));
        assert_eq!(parse_inspect(INSPECT.as_bytes(), "egressd.exit", "egressd.class"), Ok(None));
        let no_state = r#"{"Id":"a","Config":{"Labels":{"egressd.tunnel":"hk0"}}}"#;
        assert_eq!(parse_inspect(no_state.as_bytes(), "egressd.tunnel", "egressd.class"), Ok(None));
        // No name, no networks: the short id, no addresses.
        let bare = r#"{"Id":"bbbbbbbbbbbb2222","State":{"Running":true},"Config":{"Labels":{"egressd.tunnel":"hk1"}}}"#;
        let b = parse_inspect(bare.as_bytes(), "egressd.tunnel", "egressd.class").unwrap().unwrap();
        assert_eq!((b.name.as_str(), b.addrs.len()), ("bbbbbbbbbbbb", 0));
        // Not an inspect answer.
        for bad in ["", "[", "[]", "{}", r#"{"Id":7}"#, r#"{"message":"No such container: x"}"#] {
            assert!(parse_inspect(bad.as_bytes(), "egressd.tunnel", "egressd.class").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn known_containers_follow_lists_and_inspects() {
        let mut k = Known::default();
        k.replace(vec![c("b", "hk0", &["10.8.0.3"]), c("a", "hk0", &["10.8.0.2"]), c("b", "hk1", &[])]);
        let ids = |k: &Known| k.containers().iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&k), ["a", "b"]);
        // Started, changed, the same again, stopped, stopped again.
        assert!(k.set("c", Some(c("c", "hk0", &["10.8.0.4"]))));
        assert_eq!(ids(&k), ["a", "b", "c"]);
        assert!(k.set("a", Some(c("a", "hk0", &["10.8.0.9"]))));
        assert!(!k.set("a", Some(c("a", "hk0", &["10.8.0.9"]))));
        assert!(k.set("b", None));
        assert!(!k.set("b", None));
        assert_eq!(ids(&k), ["a", "c"]);
        // Asked by one id, answered under another: the old entry goes.
        assert!(k.set("c", Some(c("cfull", "hk0", &["10.8.0.4"]))));
        assert_eq!(ids(&k), ["a", "cfull"]);
        // Whichever way they were learnt, the same routes: an address two
        // containers claim keeps the same owner.
        let (x, y) = (c("x", "hk0", &["10.8.0.7"]), c("y", "hk0", &["10.8.0.7"]));
        let mut by_list = Known::default();
        by_list.replace(vec![y.clone(), x.clone()]);
        let mut by_events = Known::default();
        by_events.set("y", Some(y));
        by_events.set("x", Some(x));
        assert_eq!(sync(&[], by_list.containers()), sync(&[], by_events.containers()));
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
