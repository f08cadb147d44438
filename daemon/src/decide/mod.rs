//! Deciding a request, free of sessions and sockets: its shape
//! ([`validate`]), the grants that allow it ([`policy`], matching with the
//! config's [`pattern`](crate::config::pattern)s), and whether one more lease fits the limits and quotas
//! ([`quota`]).

pub mod policy;
pub mod quota;
pub mod validate;
