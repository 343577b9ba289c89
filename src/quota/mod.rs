//! Per-identity byte quotas (issue 27) that survive restarts and crashes,
//! and fail closed when spent or when their state is lost.
//!
//! ```text
//! config Class.quota ─┐
//!                     ▼
//!  store::load(dir) ─▶ Ledger ◀── meter(identity, quota, now): Arc<Meter> ── workers
//!        ▲              │   tick(now_wall, now_mono) every few seconds      add(n), spent()
//!        └── save(dir, ledger.snapshot()) every SAVE_EVERY and at exit
//! ```
//!
//! Identities: a labelled container's quota follows its container name
//! ([`container_identity`]); a config route's belongs to its prefix
//! ([`route_identity`]), shared by the addresses under it. The two never
//! collide: a prefix always has a `/`, which a container name cannot.
//!
//! [`state`] is the file format (pure), [`ledger`] the shared counters
//! (pure: callers pass the clocks), [`store`] the thin file I/O.

pub mod keeper;
pub mod ledger;
pub mod state;
pub mod store;

pub use keeper::Keeper;
pub use ledger::{Ledger, Meter, Row, Tick};
pub use state::{Entry, State, StateError};
pub use store::Load;

use crate::route::Cidr;

/// The identity of a labelled container's quota: its name (without
/// Docker's leading `/`), so a re-created container keeps its allowance.
pub fn container_identity(name: &str) -> String {
    name.trim_start_matches('/').to_string()
}

/// The identity of a config route's quota: its prefix (`10.8.0.0/24`).
pub fn route_identity(prefix: &Cidr) -> String {
    prefix.to_string()
}

/// A ledger for what [`store::load`] found (fail closed on `Corrupt`).
pub fn ledger_for(load: Load) -> Ledger {
    match load {
        Load::Fresh => Ledger::new(),
        Load::Loaded(state) => Ledger::restore(state),
        Load::Corrupt { kept_aside, .. } => Ledger::failed_closed(kept_aside.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(container_identity("/web"), "web");
        assert_eq!(container_identity("web"), "web");
        assert_eq!(route_identity(&"10.8.0.0/24".parse().unwrap()), "10.8.0.0/24");
        assert_eq!(route_identity(&"10.8.0.10".parse().unwrap()), "10.8.0.10/32");
        assert_eq!(route_identity(&"fd08::/64".parse().unwrap()), "fd08::/64");
    }

    #[test]
    fn a_corrupt_load_fails_closed() {
        let l =
            ledger_for(Load::Corrupt { kept_aside: "/x/quota.state.corrupt-1".into(), why: "bad".into() });
        assert_eq!(l.closed().as_deref(), Some("/x/quota.state.corrupt-1"));
        assert_eq!(ledger_for(Load::Fresh).closed(), None);
    }
}
