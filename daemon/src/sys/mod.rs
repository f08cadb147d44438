//! The raw system calls the daemon needs beyond std and nix, each module
//! for one user: peer credentials ([`peer`], for the server's identity),
//! memfds and file calls ([`file`], for the sim backend), batched receive
//! ([`socket`], for the server), processes and limits ([`process`]). With
//! `backend/vfio/uapi.rs`, the only modules of the daemon allowed `unsafe`.

pub mod file;
pub mod peer;
pub mod process;
pub mod socket;

pub use file::*;
pub use peer::*;
pub use process::*;
pub use socket::*;
