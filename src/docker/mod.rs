//! Containers choose their exit by a Docker label
//! (`docker run --label egressd.tunnel=hk0`), followed live from the Docker
//! Engine API over its Unix socket.
//!
//! ```text
//!  dockerd ── GET /containers/json?filters={"label":[...]} ──► model::parse_list ──► Known::replace ─┐
//!          ── GET /events (chunked, one JSON per event) ──► model::event_target                    │
//!               └─ the container it names ─► GET /containers/{id}/json ─► model::parse_inspect ─► Known::set
//!                                                                                                   ▼
//!  model::sync(current, Known) ──► snapshot::Labels (in the Live snapshot) + flows of changed addresses reset
//! ```
//!
//! `model` and the labels' table ([`crate::snapshot::Labels`]) are pure; `conn` makes one bounded GET over the
//! socket; `client` is the one thread that talks to it (synchronous, no
//! async runtime): it reads the event stream's head before it lists, asks
//! about each container an event names (one request, whatever the number of
//! containers), lists again at least every 30 s and at once on reconnect,
//! and gives every step
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
