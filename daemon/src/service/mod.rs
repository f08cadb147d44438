//! barkeepd as a service: the one launcher ([`launch`]: from scratch, from
//! systemd's fd store, or by [`takeover`]), the fds it inherits
//! ([`inherited`]), and the in-process daemon of `barkeep demo` and the
//! tests ([`in_process`]). The durable record it restores from is
//! [`crate::persist`].

pub mod in_process;
pub mod inherited;
pub mod launch;
pub mod takeover;
