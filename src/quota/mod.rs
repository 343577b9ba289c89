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
/// A name the state file cannot hold (longer than [`state::MAX_NAME`]
/// bytes, or empty) is shortened to its head and a stable hash of the
/// whole (FNV-1a, the same in every run): saved as it is, it would make the
/// next start read the file as corrupt and fail every quota closed.
pub fn container_identity(name: &str) -> String {
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        return "(unnamed)".into();
    }
    if name.len() <= state::MAX_NAME {
        return name.to_string();
    }
    let hash = name
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let mut cut = state::MAX_NAME - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &name[..cut])
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
        assert_eq!(container_identity("/"), "(unnamed)");
    }

    #[test]
    fn a_name_too_long_for_the_state_file_is_shortened_and_still_saves() {
        let long = format!("/{}", "é".repeat(700));
        let id = container_identity(&long);
        assert!(id.len() <= state::MAX_NAME, "{}", id.len());
        assert_eq!(id, container_identity(&long), "stable");
        assert_ne!(id, container_identity(&format!("{long}x")), "another name, another identity");
        let st =
            State { closed: None, entries: vec![Entry { identity: id, start_ms: 1, len_ms: 1000, used: 5 }] };
        assert_eq!(state::parse(&state::encode(&st)), Ok(st), "the file reads back");
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
