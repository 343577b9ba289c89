//! The routes a worker sees, and hand-offs routed before a reset.
//!
//! A front loop routes each connection and datagram with the snapshot it
//! loaded at its last wake-up and stamps the hand-off with that snapshot's
//! generation. A reset (`route set --reset-flows`, a labelled container
//! gone) first replaces the snapshot, then orders every worker to end the
//! source's flows — on the command queue, which a worker reads before its
//! hand-offs. Hand-offs a front routed before the change can still sit in
//! the queue behind that order, or be sent just after it by a front that
//! has not woken since: started as routed, they would put a source that was
//! just moved (or an address's next owner) on the old tunnel again.
//!
//! So a worker remembers the generation it saw when it took its last reset
//! order, and routes again every hand-off stamped before it, with a snapshot
//! at least that new:
//!
//! ```text
//!   front:   load snapshot g ── route ── stamp g ── send ─────────────┐
//!   control: update → g+1 ── ResetSource ──────────────┐             │
//!   worker:                          reset: reset_gen = g+1      hand-off g < g+1:
//!                                    (flows of the source end)   routed again with g+1
//! ```
//!
//! Generations only grow, and a front reads the generation before the
//! snapshot (`Live::update` swaps the snapshot before it bumps the
//! generation), so a stamp is never newer than the routes that made it.
//! Routing again is idempotent, so stamps older than the reset for other
//! sources cost only a second lookup, and only just after a reset.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Tunnel;
use crate::route::Cidr;
use crate::snapshot::{RouteView, Routing};

/// A worker's copy of the view, refreshed when the generation moves.
pub(super) struct Routes {
    routing: Arc<dyn Routing>,
    view: Arc<dyn RouteView>,
    view_gen: u64,
    /// Hand-offs stamped before this were routed before the last reset.
    reset_gen: u64,
}

impl Routes {
    pub(super) fn new(routing: Arc<dyn Routing>) -> Routes {
        let view_gen = routing.generation();
        let view = routing.view();
        Routes { routing, view, view_gen, reset_gen: 0 }
    }

    /// Once per turn of the loop: one atomic load while nothing changes.
    pub(super) fn refresh(&mut self) {
        let g = self.routing.generation();
        if g != self.view_gen {
            self.view = self.routing.view();
            self.view_gen = g;
        }
    }

    /// A reset order arrived: what was stamped before now is routed again.
    pub(super) fn on_reset(&mut self) {
        let g = self.routing.generation();
        self.view = self.routing.view();
        self.view_gen = g;
        self.reset_gen = self.reset_gen.max(g);
    }

    /// Whether a hand-off stamped `generation` must be routed again.
    pub(super) fn stale(&self, generation: u64) -> bool {
        generation < self.reset_gen
    }

    pub(super) fn view(&self) -> &dyn RouteView {
        &*self.view
    }

    /// The client's route and tunnel now, or `None` to reject it.
    pub(super) fn route(&self, client: IpAddr) -> Option<(Option<Cidr>, Arc<Tunnel>)> {
        let (source, id) = self.view.route(client)?;
        Some((source, Arc::clone(self.view.tunnels().get(usize::from(id))?)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::config::Settings;

    /// One source, routed to a tunnel by index (`None`: rejected).
    struct View {
        tunnels: Arc<[Arc<Tunnel>]>,
        to: Option<u16>,
    }

    impl RouteView for View {
        fn route(&self, _: IpAddr) -> Option<(Option<Cidr>, u16)> {
            self.to.map(|id| (Some("10.8.0.10/32".parse().unwrap()), id))
        }
        fn tunnels(&self) -> &Arc<[Arc<Tunnel>]> {
            &self.tunnels
        }
        fn holds_container(&self, _: IpAddr) -> bool {
            false
        }
    }

    /// A `Live` in miniature: swap the view, then bump the generation.
    struct Fake {
        generation: AtomicU64,
        view: Mutex<Arc<View>>,
    }

    impl Routing for Fake {
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::Acquire)
        }
        fn view(&self) -> Arc<dyn RouteView> {
            self.view.lock().unwrap().clone()
        }
    }

    impl Fake {
        fn set(&self, to: Option<u16>) -> u64 {
            let mut v = self.view.lock().unwrap();
            *v = Arc::new(View { tunnels: Arc::clone(&v.tunnels), to });
            self.generation.fetch_add(1, Ordering::Release) + 1
        }
    }

    fn fake(to: Option<u16>) -> Arc<Fake> {
        let s = Settings::parse(
            "t.ron",
            r#"(listen: ["10.8.0.1:10900"], tunnels: { "old": Direct(), "new": Direct() }, routes: [], default: Tunnel("old"))"#,
        )
        .unwrap();
        let tunnels: Arc<[Arc<Tunnel>]> = s.tunnels.iter().cloned().map(Arc::new).collect();
        Arc::new(Fake { generation: AtomicU64::new(0), view: Mutex::new(Arc::new(View { tunnels, to })) })
    }

    fn client() -> IpAddr {
        "10.8.0.10".parse().unwrap()
    }

    #[test]
    fn a_hand_off_routed_before_a_reset_is_routed_again() {
        let live = fake(Some(0));
        let mut w = Routes::new(live.clone());
        // A front loads generation 0 and routes the client to "old" ...
        let stamped = live.generation();
        // ... the route moves and the reset order reaches the worker first ...
        live.set(Some(1));
        w.on_reset();
        // ... then the hand-off: routed again, to "new".
        assert!(w.stale(stamped));
        assert_eq!(w.route(client()).unwrap().1.name, "new");
        // A hand-off routed after the change is taken as routed.
        assert!(!w.stale(live.generation()));
    }

    #[test]
    fn an_address_whose_container_left_is_rejected_when_routed_again() {
        let live = fake(Some(0));
        let mut w = Routes::new(live.clone());
        let stamped = live.generation();
        live.set(None);
        w.on_reset();
        assert!(w.stale(stamped));
        assert!(w.route(client()).is_none());
    }

    #[test]
    fn without_a_reset_nothing_is_routed_again() {
        let live = fake(Some(0));
        let mut w = Routes::new(live.clone());
        let stamped = live.generation();
        // A route change without --reset-flows: flows already routed keep
        // their tunnel, as existing flows do.
        live.set(Some(1));
        w.refresh();
        assert!(!w.stale(stamped));
        // The worker's view still follows the change (reply checks use it).
        assert_eq!(w.route(client()).unwrap().1.name, "new");
    }

    #[test]
    fn the_reset_generation_never_goes_back() {
        let live = fake(Some(0));
        let mut w = Routes::new(live.clone());
        let g1 = live.set(Some(1));
        w.on_reset();
        let stamped = live.generation();
        assert_eq!(stamped, g1);
        live.set(Some(0));
        w.on_reset();
        // Stamped between the two resets: routed again too.
        assert!(w.stale(stamped));
        // A reset order handled late (after a refresh) keeps the newest.
        w.refresh();
        assert!(w.stale(g1));
    }
}
