//! barkeepd as a library: configuration, the broker and its server, and the
//! device backends. The `barkeepd` binary is a thin wrapper; `barkeep demo`
//! and the tests run the same code in-process.
//!
//! A request travels one way: [`server`] (transport, peer identity) ->
//! [`broker`] -> [`decide`] (validate, policy, quotas) -> [`leases`] ->
//! [`backend`], and the fd goes back the same way. Every grant, denial,
//! release and revoke is one audit event ([`audit`]). [`service`] starts
//! the daemon (from scratch, from systemd's fd store, or by takeover);
//! [`persist`] keeps its leases across restarts (the journal, the state
//! file, sd_notify); [`sys`] holds the raw syscalls.

#![deny(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod broker;
pub mod cli;
pub mod config;
pub mod decide;
pub mod fdbudget;
#[doc(hidden)]
pub mod fuzzing;
pub mod leases;
pub mod logfmt;
pub mod metrics;
pub mod persist;
pub mod random;
pub mod server;
pub mod service;
// The raw syscalls: the one place of the daemon, with the VFIO uAPI, that
// may use `unsafe`.
#[allow(unsafe_code)]
pub mod sys;

/// The daemon's version string.
pub const DAEMON_VERSION: &str = env!("CARGO_PKG_VERSION");

pub use broker::Broker;
pub use config::{Config, ConfigSource};
pub use service::in_process::{open_devices, spawn, spawn_with_devices, RunningDaemon};
