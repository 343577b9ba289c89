//! The route snapshot: the routes, tunnels and label routes a flow is
//! routed by, swapped whole by a reload, a `route set` or the Docker
//! follower, and read by the front loops (every wake-up) and the workers
//! (reply checks, hand-offs routed before a reset).
//!
//! It lives below all of its readers and writers (`front`, `worker`,
//! `docker`, `control`, `cli`), so none of them imports another to reach it.

mod labels;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Quota, RouteTarget, Settings, Tunnel};
use crate::quota;
use crate::route::Cidr;
use crate::shape::ClassLimits;
pub use labels::{LabelRoute, LabelVerdict, Labels, Rejection};

/// A snapshot of the routing view (implemented by [`Shared`]; a trait so a worker can be tested with a view of its own).
pub trait RouteView: Send + Sync {
    /// The route that matched (`None`: the default) and the index of the
    /// client's tunnel in [`RouteView::tunnels`], or `None` to reject it.
    fn route(&self, client: IpAddr) -> Option<(Option<Cidr>, u16)>;
    /// The tunnels route indexes point into.
    fn tunnels(&self) -> &Arc<[Arc<Tunnel>]>;
    /// Whether `addr` belongs to a container: inside `intercept.sources`, a
    /// route's source (config or `route set`, not a /0) or a label route.
    fn holds_container(&self, addr: IpAddr) -> bool;
    /// What the class of the client's route asks (issue 26); `None`: the
    /// route has no class (or the client none).
    fn class(&self, _client: IpAddr) -> Option<ClassLimits> {
        None
    }
    /// The quota of the client's class and whose it is (issue 27): a
    /// labelled container's name, else the route's prefix; `None`: no quota.
    fn quota(&self, _client: IpAddr) -> Option<(String, Quota)> {
        None
    }
}

/// The live routing view (implemented by [`Live`]).
pub trait Routing: Send + Sync {
    /// Moves on every change of the view.
    fn generation(&self) -> u64;
    /// The current view, at least as new as a generation read before.
    fn view(&self) -> Arc<dyn RouteView>;
}

/// The current [`Shared`], replaced whole by a reload or a route change.
/// Front loops check the generation once per wake-up and take the new
/// snapshot only when it moved: no lock per connection or datagram.
pub struct Live {
    generation: AtomicU64,
    current: Mutex<Arc<Shared>>,
}

impl Live {
    pub fn new(s: Shared) -> Live {
        Live { generation: AtomicU64::new(0), current: Mutex::new(Arc::new(s)) }
    }

    pub fn load(&self) -> Arc<Shared> {
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the snapshot; `f` builds the new one from the current one.
    /// The snapshot is swapped before the generation moves, so whoever
    /// reads the generation and then loads never gets a snapshot older
    /// than that generation (the stamps of the workers' `routing` rely on it).
    pub fn update<E>(&self, f: impl FnOnce(&Shared) -> Result<Shared, E>) -> Result<(), E> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let next = f(&cur)?;
        *cur = Arc::new(next);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The routing view a front loop needs, shared read-only by all of them.
pub struct Shared {
    pub settings: Arc<Settings>,
    pub tunnels: Arc<[Arc<Tunnel>]>,
    /// Docker label routes, looked up first (`docker/`).
    pub labels: Arc<Labels>,
    /// Routes set through the control socket since the last (re)load.
    pub manual: Arc<HashSet<Cidr>>,
}

impl Shared {
    pub fn new(settings: Arc<Settings>) -> Shared {
        let tunnels = settings.tunnels.iter().cloned().map(Arc::new).collect();
        Shared { settings, tunnels, labels: Arc::default(), manual: Arc::default() }
    }

    /// The same snapshot with other settings (routes changed live).
    pub fn with_settings(&self, settings: Settings) -> Shared {
        Shared {
            settings: Arc::new(settings),
            tunnels: Arc::clone(&self.tunnels),
            labels: Arc::clone(&self.labels),
            manual: Arc::clone(&self.manual),
        }
    }

    /// Notes a route set (or deleted) through the control socket.
    pub fn with_manual(mut self, source: Cidr, set: bool) -> Shared {
        let mut m = (*self.manual).clone();
        if set {
            m.insert(source);
        } else {
            m.remove(&source);
        }
        self.manual = Arc::new(m);
        self
    }

    /// The same snapshot with other label routes.
    pub fn with_labels(&self, labels: Labels) -> Shared {
        Shared {
            settings: Arc::clone(&self.settings),
            tunnels: Arc::clone(&self.tunnels),
            labels: Arc::new(labels),
            manual: Arc::clone(&self.manual),
        }
    }

    /// New settings, keeping the `Arc` of every tunnel that did not change,
    /// so sessions on it see the same tunnel.
    pub fn reloaded(&self, settings: Arc<Settings>) -> Shared {
        let tunnels = settings
            .tunnels
            .iter()
            .map(|t| match self.tunnels.iter().find(|old| ***old == *t) {
                Some(old) => Arc::clone(old),
                None => Arc::new(t.clone()),
            })
            .collect();
        // Label routes come from Docker, not the file: they stay, resolved
        // against the new tunnels by name.
        let labels =
            if self.labels.is_empty() { Arc::default() } else { Arc::new(self.labels.resolved(&settings)) };
        // Routes set through the control socket last until a reload.
        Shared { settings, tunnels, labels, manual: Arc::default() }
    }

    /// The route that matched (`None` for the default) and the client's
    /// tunnel, or `None` to reject it.
    pub fn route(&self, client: IpAddr) -> Option<(Option<Cidr>, &Arc<Tunnel>)> {
        let (source, id) = self.route_id(client)?;
        Some((source, self.tunnels.get(usize::from(id))?))
    }

    /// The route that matched and the index of the client's tunnel in
    /// `tunnels`, or `None` to reject it.
    pub fn route_id(&self, client: IpAddr) -> Option<(Option<Cidr>, u16)> {
        self.target(client).map(|(source, t)| (source, t.tunnel))
    }

    /// The route that matched (`None` for the default) and where it sends
    /// the client: its tunnel and class (the default has none), or `None`
    /// to reject it. A prefix route's class applies to each of its
    /// addresses on its own.
    pub fn target(&self, client: IpAddr) -> Option<(Option<Cidr>, RouteTarget)> {
        match self.labels.lookup(client) {
            LabelVerdict::Tunnel(c, target) => return Some((Some(c), target)),
            // A label naming no tunnel or class rejects: a typo must not
            // pick an exit, nor leave a container uncapped.
            LabelVerdict::Reject => return None,
            LabelVerdict::None => {}
        }
        match self.settings.routes.lookup_route(client) {
            Some((c, target)) => Some((Some(c), target)),
            None => self.settings.default.map(|id| (None, RouteTarget::tunnel(id))),
        }
    }
}

impl RouteView for Shared {
    fn route(&self, client: IpAddr) -> Option<(Option<Cidr>, u16)> {
        self.route_id(client)
    }

    fn tunnels(&self) -> &Arc<[Arc<Tunnel>]> {
        &self.tunnels
    }

    fn holds_container(&self, addr: IpAddr) -> bool {
        // A /0 is "every source", not a container network; the longest
        // route containing the address stands for all of them.
        let inside = |c: &Cidr| c.len() > 0 && c.contains(addr);
        self.settings.intercept.sources.iter().any(inside)
            || self.settings.routes.lookup_route(addr).is_some_and(|(c, _)| inside(&c))
            || self.labels.lookup(addr) != LabelVerdict::None
    }

    fn class(&self, client: IpAddr) -> Option<ClassLimits> {
        let id = self.target(client)?.1.class?;
        let c = self.settings.class(id)?;
        Some(ClassLimits { rate_up: c.rate_up, rate_down: c.rate_down, weight: c.weight })
    }

    fn quota(&self, client: IpAddr) -> Option<(String, Quota)> {
        let (source, target) = self.target(client)?;
        let quota = self.settings.class(target.class?)?.quota?;
        let source = source?;
        let identity = match self.labels.owner(&source) {
            Some(r) => quota::container_identity(&r.name),
            None => quota::route_identity(&source),
        };
        Some((identity, quota))
    }
}

impl Routing for Live {
    fn generation(&self) -> u64 {
        Live::generation(self)
    }

    fn view(&self) -> Arc<dyn RouteView> {
        self.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: the class a source gets, as the enforcement will look it
    /// up: its label route's, else its config route's (each address of a
    /// prefix on its own), never the default's.
    #[test]
    fn a_source_gets_the_class_of_its_route() {
        let text = r#"(listen: ["10.8.0.1:10900"], tunnels: { "a": Direct(), "b": Direct() },
            classes: { "slow": (rate: "20mbit"), "live": (weight: 4) },
            routes: [(source: "10.8.0.0/24", tunnel: "a", class: "slow"), (source: "10.8.0.9", tunnel: "b")],
            default: Tunnel("b"), docker: ())"#;
        let s = Arc::new(Settings::parse("t.ron", text).unwrap());
        let label = |addr: &str, class: Option<&str>| LabelRoute {
            addr: addr.parse().unwrap(),
            id: format!("id-{addr}"),
            name: format!("n-{addr}"),
            tunnel: "b".into(),
            class: class.map(str::to_string),
        };
        let labels = Labels::new(
            vec![label("10.8.0.2", Some("live")), label("10.8.0.3", None), label("10.8.0.4", Some("gold"))],
            &s,
        );
        let shared = Shared::new(Arc::clone(&s)).with_labels(labels);
        let at = |a: &str| shared.target(a.parse().unwrap()).map(|(_, t)| t);
        let to = |tunnel, class| Some(RouteTarget { tunnel, class });
        assert_eq!(at("10.8.0.2"), to(1, Some(1)), "the label's class");
        assert_eq!(
            at("10.8.0.3"),
            to(1, None),
            "a label route without a class label: none, not the prefix's"
        );
        assert_eq!(at("10.8.0.4"), None, "an unknown class rejects");
        assert_eq!(shared.route_id("10.8.0.4".parse().unwrap()), None);
        assert_eq!(at("10.8.0.5"), to(0, Some(0)), "the prefix route's");
        assert_eq!(at("10.8.0.200"), to(0, Some(0)));
        assert_eq!(at("10.8.0.9"), to(1, None), "a longer route without a class");
        assert_eq!(at("192.0.2.1"), to(1, None), "the default has no class");
        assert_eq!(
            shared.route_id("10.8.0.5".parse().unwrap()),
            Some((Some("10.8.0.0/24".parse().unwrap()), 0))
        );
    }
}
