//! barkeepd as a service: the one launcher ([`launch`]: from scratch, from
//! systemd's fd store, or by [`takeover`]), the fds it inherits
//! ([`inherited`]), the durable record of leases ([`journal`] writing the
//! [`state`] file and the fd store), lease buffers kept in flight for a
//! restart ([`stash`]), systemd's side channel ([`sdnotify`]),
//! and the in-process daemon of `barkeep demo` and the tests
//! ([`in_process`]).

pub mod in_process;
pub mod inherited;
pub mod journal;
pub mod launch;
pub mod sdnotify;
pub mod stash;
pub mod state;
pub mod takeover;
