//! The label routes of Docker containers (`docker/` keeps them current):
//! each container address, the tunnel its label names, and the verdict a
//! lookup gives. Pure: a table, built from a list, read by every loop.

use std::net::IpAddr;

use crate::config::{Settings, TunnelId};
use crate::route::{Cidr, RouteTable};

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

/// The live label routes, looked up before the config's routes.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    table: RouteTable<u32>,
    entries: Vec<(LabelRoute, Option<TunnelId>)>,
}

/// A label route's verdict for a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelVerdict {
    /// No label route for this source: config routes and `default` decide.
    None,
    /// The container's tunnel.
    Tunnel(Cidr, TunnelId),
    /// The label names no tunnel of the config: rejected.
    Reject,
}

impl Labels {
    /// The table for these routes, tunnels resolved by name in `settings`.
    pub fn new(routes: Vec<LabelRoute>, settings: &Settings) -> Labels {
        let mut table = RouteTable::new();
        let mut entries = Vec::with_capacity(routes.len());
        for r in routes {
            let id = settings.tunnel_id(&r.tunnel);
            table.insert(Cidr::host(r.addr), entries.len() as u32);
            entries.push((r, id));
        }
        Labels { table, entries }
    }

    /// The same routes against reloaded settings (tunnel indexes may move).
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
            Some((r, Some(id))) => LabelVerdict::Tunnel(Cidr::host(r.addr), *id),
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
        };
        let l = Labels::new(vec![r("10.8.0.2", "b"), r("10.8.0.3", "typo")], &s);
        assert_eq!(
            l.lookup("10.8.0.2".parse().unwrap()),
            LabelVerdict::Tunnel("10.8.0.2".parse().unwrap(), 1)
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
            LabelVerdict::Tunnel("10.8.0.2".parse().unwrap(), 0)
        );
    }
}
