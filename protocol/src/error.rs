//! Stable error codes and the error reply that carries them.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $slug:literal; )*) => {
        /// A stable numeric error code. Numbers never change meaning; new codes
        /// are only added. A code this version does not know decodes as
        /// [`ErrorCode::Other`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
            /// A code unknown to this version of the protocol crate.
            Other(u16),
        }

        impl ErrorCode {
            /// Every known code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The stable number.
            pub fn number(self) -> u16 {
                match self {
                    $( ErrorCode::$name => $num, )*
                    ErrorCode::Other(n) => n,
                }
            }

            /// A short stable name ("unaligned", "denied", ...).
            pub fn slug(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $slug, )*
                    ErrorCode::Other(_) => "unknown",
                }
            }
        }

        impl From<u16> for ErrorCode {
            fn from(n: u16) -> Self {
                match n {
                    $( $num => ErrorCode::$name, )*
                    n => ErrorCode::Other(n),
                }
            }
        }
    };
}

error_codes! {
    /// The message could not be decoded.
    Malformed = 1, "malformed";
    /// The datagram was larger than the protocol allows.
    Oversized = 2, "oversized";
    /// The client's protocol version is not supported.
    UnsupportedVersion = 3, "unsupported-version";
    /// A request was sent before `Hello`, or `Hello` twice.
    HandshakeRequired = 4, "handshake";
    /// The request kind is unknown to this daemon.
    UnknownRequest = 5, "unknown-request";
    /// A field is out of its allowed range (too long name, peek too large...).
    BadArgument = 6, "bad-argument";
    /// No device of that name is configured.
    UnknownDevice = 10, "unknown-device";
    /// BAR index outside 0..=5.
    BadBar = 11, "bad-bar";
    /// The device has no such BAR (absent, or not memory).
    NoSuchBar = 12, "no-such-bar";
    /// The slice length is zero.
    ZeroLength = 13, "zero-length";
    /// Offset or length is not page aligned.
    Unaligned = 14, "unaligned";
    /// offset + length overflows a 64-bit integer.
    Overflow = 15, "overflow";
    /// The slice extends past the end of the BAR.
    OutOfBounds = 16, "out-of-bounds";
    /// The slice leaves the BAR's mappable (sparse-mmap) areas.
    NotMappable = 17, "not-mappable";
    /// The slice overlaps a range that is never granted (MSI-X table, PBA).
    Reserved = 18, "reserved";
    /// No grant in the policy allows this peer this device and BAR.
    Denied = 20, "denied";
    /// The slice leaves every window the policy grants this peer.
    OutsideWindow = 21, "outside-window";
    /// The policy grants this range read-only, and read-write was asked.
    AccessDenied = 22, "access-denied";
    /// The policy does not allow write-combining here.
    WcDenied = 23, "wc-denied";
    /// The request is for administrators only.
    AdminOnly = 24, "admin-only";
    /// The slice conflicts with a live lease.
    Conflict = 25, "conflict";
    /// A quota (leases or bytes) would be exceeded.
    QuotaExceeded = 26, "quota";
    /// A daemon limit (sessions, in-flight requests) was reached.
    LimitExceeded = 27, "limit";
    /// The daemon could not establish who the peer is (its process exited
    /// before it could be identified, or it lives where the daemon cannot
    /// see it); the connection is refused.
    IdentityUnavailable = 28, "identity";
    /// A reload found the configuration file invalid, or changing what
    /// only a restart can change; the old policy stays in force.
    ConfigInvalid = 29, "config";
    /// No such lease (or not one of this session's).
    UnknownLease = 30, "unknown-lease";
    /// The kernel or backend lacks a feature the request needs.
    Unsupported = 40, "unsupported";
    /// The device is configured but unusable (see `barkeep status`).
    DeviceUnavailable = 41, "device-unavailable";
    /// The kernel refused an operation.
    Kernel = 42, "kernel";
    /// The range may still be mapped through an earlier buffer that this
    /// kernel cannot revoke on its own.
    RangeBusy = 43, "range-busy";
    /// A bug or unexpected condition in the daemon.
    Internal = 50, "internal";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.slug(), self.number())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.number())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u16::deserialize(d).map(ErrorCode::from)
    }
}

/// An error reply: a stable code and a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    /// Stable code.
    pub code: ErrorCode,
    /// Human explanation, with the values involved and what to do.
    pub message: String,
}

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}
