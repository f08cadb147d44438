//! What survives a restart, below the broker that records into it: the
//! durable record of leases ([`journal`], writing the [`state`] file and
//! systemd's fd store), lease buffers kept in flight for a restart
//! ([`stash`]), and systemd's side channel ([`sdnotify`]: readiness,
//! status, the fd store itself).
//!
//! The broker records every lease change here; the launcher
//! ([`crate::service`]) builds the journal and reads it back on start.

pub mod journal;
pub mod sdnotify;
pub mod stash;
pub mod state;
