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
//!     insert(other)      its source at max_per_source: that source's own
//!                        least recently used (Insert::SourceFull); else,
//!                        table full: an expired session, else the least
//!                        recently used of the source holding the most
//!                        sessions (Insert::Evicted)
//!     insert(client)     same client again: replaced (Insert::Replaced)
//!     remove(client)     the caller's decision (upstream failed, reset)
//! ```
//!
//! Before a new session is created (and costs a connect to the exit), the
//! caller asks [`SessionTable::admit`]: each source address has a token
//! bucket of new sessions (`new_per_source_per_sec`, `new_per_source_burst`).
//!
//! Whatever leaves is handed back to the caller, which closes its sockets and
//! counts it; the table never drops a value silently.

mod alias;
pub mod dns_tcp;
mod hash;
mod lru;
mod source;
mod table;

#[cfg(test)]
mod sim_tests;

pub use alias::DnsAliases;
pub use hash::{FoldHasher, FoldState};
pub use lru::Lru;
pub use table::{Admit, DNS_PORT, Insert, Kind, Limits, SessionTable};
