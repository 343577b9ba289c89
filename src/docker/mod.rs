//! Containers choose their exit by a Docker label
//! (`docker run --label egressd.tunnel=hk0`), followed live from the Docker
//! Engine API over its Unix socket.
//!
//! ```text
//!  dockerd ── GET /containers/json?filters={"label":[...]} ──► model::parse_list ─┐
//!          ── GET /events (chunked, one JSON per event) ──► model::event_matters ─┤ resync
//!                                                                                 ▼
//!  model::sync(current, containers) ──► Labels (Live snapshot) + flows of changed addresses reset
//! ```
//!
//! `model` and [`Labels`] are pure; `conn` makes one bounded GET over the
//! socket; `client` is the one thread that talks to it (synchronous, no
//! async runtime): it reads the event stream's head before it lists, lists
//! again at least every 30 s and at once on reconnect, and gives every step
//! a deadline, so a lost event or a hung dockerd leaves a route at most one
//! resync period (plus one list) behind Docker.
//! Precedence: a container's label route (its own addresses, /32 and /128)
//! comes before config routes and `route set`; a label naming an unknown
//! tunnel rejects the container, never falls back to another tunnel or to
//! `default`. Label routes come from Docker, so they survive SIGHUP; a
//! SIGHUP that changes `docker:` itself restarts the follower
//! ([`client::Docker::apply`]).

pub mod client;
mod conn;
#[cfg(test)]
mod fake;
pub mod model;

use std::net::IpAddr;

use crate::config::{Settings, TunnelId};
use crate::route::{Cidr, RouteTable};
pub use model::LabelRoute;

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
