//! Deciding a request, free of sessions and sockets: its shape
//! ([`validate`]), the grants that allow it ([`policy`], matching with
//! [`pattern`]), and whether one more lease fits the limits and quotas
//! ([`quota`]).

pub mod pattern;
pub mod policy;
pub mod quota;
pub mod validate;
