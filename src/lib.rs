//! egressd: per-container egress tunnels.
//!
//! The module list is the map of the data path:
//! a container's connection arrives at a [`front`] loop, which finds its
//! original destination and its [`route`], and hands it to a [`worker`];
//! the worker opens the tunnel through an [`upstream`] handshake (bytes
//! framed by [`wire`]), on a greeted connection from the tunnel's warm
//! [`pool`] when one is ready, and then [`relay`]s both directions. [`sys`] holds
//! the only `unsafe` code. [`config`], [`rules`] and [`cli`] are the
//! operator's side. Per-source limits take tokens from a [`bucket`];
//! [`hostwatch`] watches the host while egressd runs; [`lograte`] keeps
//! warnings about outside events to one a minute.
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
pub mod relay;
pub mod route;
pub mod rules;
pub mod snapshot;
pub mod stats;
pub mod sys;
pub mod udp;
pub mod upstream;
pub mod wire;
pub mod worker;
