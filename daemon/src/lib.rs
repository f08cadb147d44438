//! barkeepd as a library: configuration, the broker and its server, and the
//! device backends. The `barkeepd` binary is a thin wrapper; `barkeep demo`
//! and the tests run the same code in-process.
//!
//! A request travels one way: server (transport) -> identity -> policy ->
//! leases -> backend, and the fd goes back the same way.

pub mod backend;
pub mod config;

pub use config::Config;

/// A daemon running on its own thread (used by `barkeep demo` and tests).
pub struct RunningDaemon {
    _private: (),
}

impl RunningDaemon {
    /// Path of the listening socket.
    pub fn socket_path(&self) -> &std::path::Path {
        todo!("daemon helper")
    }
}

/// Starts a daemon for `config` on a thread of its own, bound to
/// `config.socket`; returns once the socket accepts connections.
pub fn spawn(_config: Config) -> Result<RunningDaemon, String> {
    todo!("daemon helper")
}
