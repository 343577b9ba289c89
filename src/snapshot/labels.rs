//! The label routes of Docker containers (`docker/` keeps them current):
//! each container address, the tunnel and class its labels name, and the
//! verdict a lookup gives. Pure: a table, built from a list, read by every loop.

use std::fmt;
use std::net::IpAddr;

use crate::config::{RouteTarget, Settings};
use crate::route::{Cidr, RouteTable};

/// One label route: a container address and the tunnel (and class) its
/// labels name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRoute {
    pub addr: IpAddr,
    pub id: String,
    pub name: String,
    /// The tunnel named by the label ("" when the address is claimed by two
    /// containers with different choices: rejected rather than guessed).
    pub tunnel: String,
    /// The class named by the class label; `None` without one (no class).
    pub class: Option<String>,
}

impl LabelRoute {
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// Where the route sends its address, resolved by name in `settings`,
    /// or why it rejects it: an unknown class rejects as an unknown tunnel
    /// does (never uncapped, never another class).
    pub fn judge(&self, settings: &Settings) -> Result<RouteTarget, Rejection> {
        if self.tunnel.is_empty() {
            return Err(Rejection::Claimed);
        }
        let tunnel =
            settings.tunnel_id(&self.tunnel).ok_or_else(|| Rejection::UnknownTunnel(self.tunnel.clone()))?;
        let class = match &self.class {
            None => None,
            Some(c) => Some(settings.class_id(c).ok_or_else(|| Rejection::UnknownClass(c.clone()))?),
        };
        Ok(RouteTarget { tunnel, class })
    }
}

/// Why a label route rejects its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Two containers claim the address with different choices.
    Claimed,
    /// The tunnel label names no tunnel of the config.
    UnknownTunnel(String),
    /// The class label names no class of the config.
    UnknownClass(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Claimed => f.write_str("address claimed by two containers"),
            Rejection::UnknownTunnel(t) => write!(f, "label names unknown tunnel {t:?}"),
            Rejection::UnknownClass(c) => write!(f, "class label names unknown class {c:?}"),
        }
    }
}

/// The live label routes, looked up before the config's routes.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    table: RouteTable<u32>,
    entries: Vec<(LabelRoute, Option<RouteTarget>)>,
}

/// A label route's verdict for a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelVerdict {
    /// No label route for this source: config routes and `default` decide.
    None,
    /// The container's tunnel and class.
    Tunnel(Cidr, RouteTarget),
    /// The labels name no tunnel or no class of the config (or two
    /// containers claim the address): rejected.
    Reject,
}

impl Labels {
    /// The table for these routes, tunnels and classes resolved by name in `settings`.
    pub fn new(routes: Vec<LabelRoute>, settings: &Settings) -> Labels {
        let mut table = RouteTable::new();
        let mut entries = Vec::with_capacity(routes.len());
        for r in routes {
            let target = r.judge(settings).ok();
            table.insert(Cidr::host(r.addr), entries.len() as u32);
            entries.push((r, target));
        }
        Labels { table, entries }
    }

    /// The same routes against reloaded settings (tunnel and class indexes may move).
    pub fn resolved(&self, settings: &Settings) -> Labels {
        Labels::new(self.routes().cloned().collect(), settings)
    }

    pub fn routes(&self) -> impl Iterator<Item = &LabelRoute> {
        self.entries.iter().map(|(r, _)| r)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn lookup(&self, client: IpAddr) -> LabelVerdict {
        if self.entries.is_empty() {
            return LabelVerdict::None;
        }
        match self.table.lookup(client).and_then(|i| self.entries.get(i as usize)) {
            None => LabelVerdict::None,
            Some((r, Some(target))) => LabelVerdict::Tunnel(Cidr::host(r.addr), *target),
            Some((_, None)) => LabelVerdict::Reject,
        }
    }

    /// The container owning a source address, for `route list` and `stats`.
    pub fn owner(&self, source: &Cidr) -> Option<&LabelRoute> {
        let i = self.table.lookup(source.addr())?;
        self.entries.get(i as usize).map(|(r, _)| r).filter(|r| Cidr::host(r.addr) == *source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_routes_resolve_by_name_and_reject_unknown_tunnels() {
        let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct(), "b": Direct() },
                      routes: [(source: "10.8.0.0/24", tunnel: "a")])"#;
        let s = Settings::parse("t.ron", text).unwrap();
        let r = |addr: &str, tunnel: &str| LabelRoute {
            addr: addr.parse().unwrap(),
            id: format!("id-{addr}"),
            name: format!("n-{addr}"),
            tunnel: tunnel.into(),
            class: None,
        };
        let l = Labels::new(vec![r("10.8.0.2", "b"), r("10.8.0.3", "typo")], &s);
        assert_eq!(
            l.lookup("10.8.0.2".parse().unwrap()),
            LabelVerdict::Tunnel("10.8.0.2".parse().unwrap(), RouteTarget::tunnel(1))
        );
        assert_eq!(l.lookup("10.8.0.3".parse().unwrap()), LabelVerdict::Reject);
        assert_eq!(l.lookup("10.8.0.4".parse().unwrap()), LabelVerdict::None);
        assert_eq!(l.owner(&"10.8.0.2".parse().unwrap()).unwrap().name, "n-10.8.0.2");
        // After a reload that reorders tunnels, names still decide.
        let s2 = Settings::parse(
            "t.ron",
            &text.replace(r#""a": Direct(), "b": Direct()"#, r#""b": Direct(), "a": Direct()"#),
        )
        .unwrap();
        assert_eq!(
            l.resolved(&s2).lookup("10.8.0.2".parse().unwrap()),
            LabelVerdict::Tunnel("10.8.0.2".parse().unwrap(), RouteTarget::tunnel(0))
        );
    }

    /// Issue 26: a class label resolves to a class of the config by name;
    /// one naming no class rejects the container as an unknown tunnel does;
    /// without one, no class.
    #[test]
    fn class_labels_resolve_by_name_and_reject_unknown_classes() {
        let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct() }, routes: [],
                      classes: { "slow": (rate: "20mbit"), "bulk": (weight: 1) }, docker: ())"#;
        let s = Settings::parse("t.ron", text).unwrap();
        let r = |addr: &str, tunnel: &str, class: Option<&str>| LabelRoute {
            addr: addr.parse().unwrap(),
            id: format!("id-{addr}"),
            name: format!("n-{addr}"),
            tunnel: tunnel.into(),
            class: class.map(str::to_string),
        };
        let routes = vec![
            r("10.8.0.2", "a", Some("bulk")),
            r("10.8.0.3", "a", Some("fast")),
            r("10.8.0.4", "a", None),
            r("10.8.0.5", "typo", Some("fast")),
            r("10.8.0.6", "", Some("slow")),
        ];
        let l = Labels::new(routes.clone(), &s);
        let at = |a: &str| l.lookup(a.parse().unwrap());
        let host = |a: &str| a.parse::<Cidr>().unwrap();
        assert_eq!(
            at("10.8.0.2"),
            LabelVerdict::Tunnel(host("10.8.0.2"), RouteTarget { tunnel: 0, class: Some(1) })
        );
        assert_eq!(at("10.8.0.3"), LabelVerdict::Reject);
        assert_eq!(at("10.8.0.4"), LabelVerdict::Tunnel(host("10.8.0.4"), RouteTarget::tunnel(0)));
        assert_eq!(at("10.8.0.5"), LabelVerdict::Reject);
        // The reasons, as `route list` and the log give them: the tunnel
        // is judged first.
        let why: Vec<String> =
            routes.iter().map(|r| r.judge(&s).map_or_else(|e| e.to_string(), |_| "ok".into())).collect();
        assert_eq!(
            why,
            [
                "ok",
                "class label names unknown class \"fast\"",
                "ok",
                "label names unknown tunnel \"typo\"",
                "address claimed by two containers"
            ]
        );
        // A reload that defines the class lets the container out; one that
        // reorders the classes keeps names deciding.
        let s2 = Settings::parse(
            "t.ron",
            &text.replace(
                r#""slow": (rate: "20mbit")"#,
                r#""fast": (rate: "1gbit"), "slow": (rate: "20mbit")"#,
            ),
        )
        .unwrap();
        let l2 = l.resolved(&s2);
        assert_eq!(
            l2.lookup("10.8.0.3".parse().unwrap()),
            LabelVerdict::Tunnel(host("10.8.0.3"), RouteTarget { tunnel: 0, class: Some(0) })
        );
        assert_eq!(
            l2.lookup("10.8.0.2".parse().unwrap()),
            LabelVerdict::Tunnel(host("10.8.0.2"), RouteTarget { tunnel: 0, class: Some(2) })
        );
    }
}
