//! egressd: per-container egress tunnels.
//!
//! The module list is the map of the data path:
//! a container's connection arrives at a [`front`] loop, which finds its
//! original destination and its route in the [`snapshot`] (source-CIDR
//! routes: [`route`]; Docker label routes, kept current by [`docker`]), and
//! hands it to a [`worker`]; the worker opens the tunnel through an
//! [`upstream`] handshake (bytes framed by [`wire`]), on a greeted
//! connection from the tunnel's warm [`pool`] when one is ready, and then
//! [`relay`]s both directions; UDP sessions live in [`udp`]'s table. [`sys`]
//! holds the only `unsafe` code; [`stats`] counts. [`config`], [`rules`],
//! [`doctor`], [`control`] and [`cli`] are the operator's side. Per-source
//! limits take tokens from a [`bucket`], bandwidth classes and a tunnel's
//! shared rate from [`shape`]'s byte buckets; [`hostwatch`] watches the host
//! while egressd runs; [`lograte`] keeps warnings about outside events to
//! one a minute. [`quota`] keeps each container's byte allowance across
//! restarts. [`upgrade`] replaces the running binary without dropping
//! flows, and tells systemd which process is the daemon.
//!
//! Each layer imports only the layers below it (`scripts/structure.py`
//! checks it on every test run):
//! `cli` → `control` `doctor` `upgrade` → `front` `hostwatch` → `docker` →
//! `worker` → `snapshot` → `relay` `upstream` `pool` `rules` `quota` →
//! `config` → `bucket` `shape` `lograte` `sys` `wire` `route` `stats` `udp`.
#![deny(unsafe_code)]

pub mod bucket;
pub mod cli;
pub mod config;
pub mod control;
pub mod docker;
pub mod doctor;
pub mod front;
pub mod hostwatch;
pub mod lograte;
pub mod pool;
pub mod quota;
pub mod relay;
pub mod route;
pub mod rules;
pub mod shape;
pub mod snapshot;
pub mod stats;
pub mod sys;
pub mod udp;
pub mod upgrade;
pub mod upstream;
pub mod wire;
pub mod worker;
