//! The client's error type, and the stable codes the CLI prints for it.

use barkeep_protocol::{ErrorCode, ErrorReply, LeaseId, RevokeReason};
use std::io;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to `barkeepd` or using a slice.
///
/// [`Error::code`] and [`Error::slug`] give a stable number and name for each
/// case: the daemon's own [`ErrorCode`] for [`Error::Daemon`] and
/// [`Error::Refused`], and client-side codes from 100 up for the rest (see
/// [`ClientCode`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon answered the request with an error.
    #[error("{}", .0.message)]
    Daemon(ErrorReply),
    /// The daemon refused the handshake (e.g. unsupported protocol version).
    #[error("barkeepd refused the connection: {}", .0.message)]
    Refused(ErrorReply),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the values involved.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The daemon sent something the protocol does not allow.
    #[error("protocol violation by barkeepd: {0}")]
    Protocol(String),
    /// The connection to the daemon is gone; every lease of the session has
    /// ended with it.
    #[error("disconnected from barkeepd: {0}")]
    Disconnected(String),
    /// The lease was revoked (or released); its buffer must not be used.
    #[error("lease {lease} was revoked ({reason}); acquire a new slice")]
    Revoked {
        /// The lease.
        lease: LeaseId,
        /// Why it ended.
        reason: RevokeReason,
    },
    /// A write through a mapping of a read-only slice.
    #[error("lease {lease} is read-only: writes through its mapping are refused (acquire it read-write)")]
    ReadOnly {
        /// The lease (all zeros for a mapping made with [`crate::Mapping::from_fd`]).
        lease: LeaseId,
    },
    /// An offset or length outside the slice or mapping.
    #[error("{what} {offset:#x}+{length:#x} is outside the {size:#x}-byte {within}")]
    OutOfRange {
        /// What was being accessed ("access", "mapping").
        what: &'static str,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        length: u64,
        /// Size of the slice or mapping.
        size: u64,
        /// "slice" or "mapping".
        within: &'static str,
    },
    /// An offset not aligned as the operation requires.
    #[error("{what} offset {offset:#x} is not aligned to {align} bytes")]
    Unaligned {
        /// What was being done ("mapping", "u32 access").
        what: &'static str,
        /// The offset.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
    /// `mmap()` of the buffer is not supported by the running kernel.
    #[error(
        "this kernel cannot mmap DMABUFs ({errno}): vfio-pci DMABUF mmap is not in mainline \
         (see docs/operators.md); the fd still works for P2P/DMA import, and `barkeep status` shows \
         what this kernel supports"
    )]
    MapUnsupported {
        /// The errno mmap() returned (EINVAL or ENODEV).
        errno: nix::errno::Errno,
    },
    /// An environment variable meant for this library (`$BARKEEP_SLICES`)
    /// is malformed or does not match this process's fds.
    #[error("{0}")]
    Environment(String),
}

/// Client-side error codes, numbered from 100 so they never collide with the
/// daemon's [`ErrorCode`]s. Stable: numbers never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ClientCode {
    /// A system call failed ("io").
    Io = 100,
    /// The daemon violated the protocol ("protocol").
    Protocol = 101,
    /// The connection is gone, or could not be made ("disconnected").
    Disconnected = 102,
    /// The lease was revoked ("revoked").
    Revoked = 103,
    /// Write to a read-only slice ("read-only").
    ReadOnly = 104,
    /// Access outside a slice or mapping ("out-of-range").
    OutOfRange = 105,
    /// Misaligned access or mapping offset ("unaligned-access").
    Unaligned = 106,
    /// The kernel cannot mmap these buffers ("mmap-unsupported").
    MapUnsupported = 107,
    /// Bad command line (CLI only: "usage").
    Usage = 108,
    /// Something a CLI step expected did not happen (CLI only: "unexpected").
    Unexpected = 109,
    /// `$BARKEEP_SLICES` is malformed or stale ("environment").
    Environment = 110,
}

impl ClientCode {
    /// The stable number.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// The stable short name.
    pub fn slug(self) -> &'static str {
        match self {
            ClientCode::Io => "io",
            ClientCode::Protocol => "protocol",
            ClientCode::Disconnected => "disconnected",
            ClientCode::Revoked => "revoked",
            ClientCode::ReadOnly => "read-only",
            ClientCode::OutOfRange => "out-of-range",
            ClientCode::Unaligned => "unaligned-access",
            ClientCode::MapUnsupported => "mmap-unsupported",
            ClientCode::Usage => "usage",
            ClientCode::Unexpected => "unexpected",
            ClientCode::Environment => "environment",
        }
    }
}

impl Error {
    /// The daemon's error code, for [`Error::Daemon`] and [`Error::Refused`].
    pub fn daemon_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Daemon(r) | Error::Refused(r) => Some(r.code),
            _ => None,
        }
    }

    /// The client-side code, for every other variant.
    pub fn client_code(&self) -> Option<ClientCode> {
        Some(match self {
            Error::Daemon(_) | Error::Refused(_) => return None,
            Error::Io { .. } => ClientCode::Io,
            Error::Protocol(_) => ClientCode::Protocol,
            Error::Disconnected(_) => ClientCode::Disconnected,
            Error::Revoked { .. } => ClientCode::Revoked,
            Error::ReadOnly { .. } => ClientCode::ReadOnly,
            Error::OutOfRange { .. } => ClientCode::OutOfRange,
            Error::Unaligned { .. } => ClientCode::Unaligned,
            Error::MapUnsupported { .. } => ClientCode::MapUnsupported,
            Error::Environment(_) => ClientCode::Environment,
        })
    }

    /// Stable number: the daemon's code, or a [`ClientCode`] (>= 100).
    pub fn code(&self) -> u16 {
        match (self.daemon_code(), self.client_code()) {
            (Some(c), _) => c.number(),
            (None, Some(c)) => c.number(),
            (None, None) => unreachable!("every error has a daemon or a client code"),
        }
    }

    /// Stable short name matching [`Error::code`].
    pub fn slug(&self) -> &'static str {
        match (self.daemon_code(), self.client_code()) {
            (Some(c), _) => c.slug(),
            (None, Some(c)) => c.slug(),
            (None, None) => unreachable!("every error has a daemon or a client code"),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}
