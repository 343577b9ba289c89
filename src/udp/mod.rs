//! UDP sessions, sans-IO: the [`SessionTable`] that maps each client socket
//! to its session, and the [`Lru`] map it is built from (which the worker
//! also uses for its pool of reply sockets keyed by remote address).
//!
//! Nothing here touches a socket or reads the clock: every call that cares
//! about time takes `now`, and the table says when it next needs a call
//! ([`SessionTable::next_deadline`]). That is what lets the simulation test
//! drive it with a seeded RNG and a virtual clock.
//!
//! A session's life (one per client socket, endpoint-independent: whatever
//! remotes it talks to, replies from any of them refresh it):
//!
//! ```text
//!             insert(client, dst_port, now)
//!                         │
//!          dst_port == 53 │ dst_port != 53
//!             ┌───────────┴────────────┐
//!             ▼                        ▼
//!      ┌─────────────┐  out to     ┌──────────┐
//!      │  DNS-only   │ ──────────▶ │ ordinary │   (never back)
//!      │ timeout 20s │ port != 53  │ tmo 300s │
//!      └─────────────┘             └──────────┘
//!        ▲  │                          ▲  │
//!        └──┘ touch_outbound(53),      └──┘ touch_outbound(any),
//!             touch_inbound                 touch_inbound
//!             (refresh `last`)              (refresh `last`)
//!
//!   from either state, the session leaves the table by:
//!     pop_expired(now)   now >= last + its kind's timeout
//!     insert(other)      table full: an expired session, else the least
//!                        recently used of either kind (Insert::Evicted)
//!     insert(client)     same client again: replaced (Insert::Replaced)
//!     remove(client)     the caller's decision (upstream failed, reset)
//! ```
//!
//! Whatever leaves is handed back to the caller, which closes its sockets and
//! counts it; the table never drops a value silently.

mod hash;
mod lru;
mod table;

#[cfg(test)]
mod sim_tests;

pub use hash::{FoldHasher, FoldState};
pub use lru::Lru;
pub use table::{DNS_PORT, Insert, Kind, Limits, SessionTable};
