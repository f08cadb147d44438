//! barkeep's wire protocol: the messages a client and `barkeepd` exchange, the
//! framing limits, and the stable error codes.
//!
//! This crate is "sans-I/O": pure data and pure functions, no sockets, no
//! async runtime and no `unsafe`. Transport rules (see `PROTOCOL.md`):
//!
//! * one message per `SOCK_SEQPACKET` datagram, postcard-encoded, at most
//!   [`MAX_DATAGRAM`] bytes;
//! * the client speaks first with [`Hello`]; the daemon answers [`Welcome`] or
//!   [`DaemonMessage::Refused`] and closes;
//! * every [`Request`] carries an id that its [`DaemonMessage::Reply`] echoes;
//! * the daemon may push [`Event`]s at any time after `Welcome`;
//! * only the reply to [`Request::Acquire`] that carries
//!   [`Response::Granted`] has a file descriptor attached (exactly one, via
//!   `SCM_RIGHTS`); no other message ever carries one.

#![forbid(unsafe_code)]

mod codec;
mod error;
mod kinds;
mod number;

pub use codec::{
    decode_client, decode_daemon, decode_hello_prefix, encode_client, encode_daemon, encoded_len,
    request_id_hint, DecodeError, EncodeError,
};
pub use error::{ErrorCode, ErrorReply};
pub use kinds::{RequestKind, Who, REQUEST_KINDS};
pub use number::{parse_number, parse_range, NumberError};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Hard limit on the size of one datagram, in either direction.
pub const MAX_DATAGRAM: usize = 64 * 1024;

/// Largest `Peek` a daemon answers (the reply must fit in one datagram).
pub const MAX_PEEK: u64 = 32 * 1024;

/// Largest `Poke` payload.
pub const MAX_POKE: usize = 32 * 1024;

/// Longest device name accepted anywhere.
pub const MAX_NAME: usize = 64;

/// Longest client name in [`Hello`].
pub const MAX_CLIENT_NAME: usize = 128;

/// Highest PCI BAR index (BARs are 0..=5).
pub const MAX_BAR: u32 = 5;

/// Default socket path of the daemon.
pub const DEFAULT_SOCKET: &str = "/run/barkeep/barkeep.sock";

/// Environment variable naming the socket, used by clients when set.
pub const SOCKET_ENV: &str = "BARKEEP_SOCKET";

/// A lease identifier: 128 random bits, never reused by a daemon.
///
/// Displayed and parsed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseId(pub [u8; 16]);

impl fmt::Display for LeaseId {
    /// 32 lowercase hex digits, written at once (ids are in the audit line
    /// of every grant and release).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            s[2 * i] = HEX[usize::from(b >> 4)];
            s[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&s).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({self})")
    }
}

impl FromStr for LeaseId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "lease id {s:?} is not 32 hex digits (as printed by `barkeep leases`)"
            ));
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(LeaseId(out))
    }
}

/// How a slice may be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// The buffer is exported `O_RDONLY`: `PROT_READ` mappings only.
    ReadOnly,
    /// The buffer is exported `O_RDWR`.
    ReadWrite,
}

impl Access {
    /// Short name: "ro" or "rw".
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "ro",
            Access::ReadWrite => "rw",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Memory attribute of a granted slice's CPU mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemAttr {
    /// Uncached (the kernel's default for BAR mappings).
    Uncached,
    /// Write-combining.
    WriteCombining,
}

impl MemAttr {
    /// Short name: "uc" or "wc".
    pub fn as_str(self) -> &'static str {
        match self {
            MemAttr::Uncached => "uc",
            MemAttr::WriteCombining => "wc",
        }
    }
}

impl fmt::Display for MemAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The memory attribute a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemAttrRequest {
    /// Uncached.
    Uncached,
    /// Write-combining; the request fails if the kernel cannot do it or policy
    /// does not allow it.
    WriteCombining,
    /// Write-combining when possible, else uncached (the lease says which).
    PreferWriteCombining,
}

/// A byte range inside a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Range {
    /// First byte, from the start of the BAR.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl Range {
    /// Creates a range.
    pub const fn new(offset: u64, length: u64) -> Self {
        Range { offset, length }
    }

    /// One past the last byte, or `None` if that overflows `u64`.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.length)
    }

    /// Whether `other` lies entirely inside `self` (both must not overflow).
    pub fn contains(&self, other: &Range) -> bool {
        match (self.end(), other.end()) {
            (Some(se), Some(oe)) => other.offset >= self.offset && oe <= se,
            _ => false,
        }
    }

    /// Whether the two ranges share at least one byte.
    pub fn overlaps(&self, other: &Range) -> bool {
        let (Some(se), Some(oe)) = (self.end(), other.end()) else {
            return true;
        };
        self.length != 0 && other.length != 0 && self.offset < oe && other.offset < se
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{:#x}", self.offset, self.length)
    }
}

/// What the backend and the running kernel can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Slices can be exported as buffers (VFIO_DEVICE_FEATURE_DMA_BUF).
    pub export: bool,
    /// Exported buffers can be mmap()ed by the client.
    pub mmap: bool,
    /// One buffer can be revoked on its own (per-lease revoke).
    pub revoke: bool,
    /// Write-combining mappings can be requested.
    pub write_combining: bool,
    /// Every buffer of a device can be revoked at once (decode off/on, reset).
    pub device_revoke: bool,
}

impl Capabilities {
    /// Capabilities shared by every device in `caps` (all false when empty).
    pub fn intersection<'a>(caps: impl IntoIterator<Item = &'a Capabilities>) -> Capabilities {
        let mut iter = caps.into_iter();
        let Some(first) = iter.next() else {
            return Capabilities::default();
        };
        iter.fold(*first, |a, b| Capabilities {
            export: a.export && b.export,
            mmap: a.mmap && b.mmap,
            revoke: a.revoke && b.revoke,
            write_combining: a.write_combining && b.write_combining,
            device_revoke: a.device_revoke && b.device_revoke,
        })
    }
}

/// Client's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks ([`PROTOCOL_VERSION`]).
    pub protocol_version: u32,
    /// Free-form name for logs and `barkeep leases` (at most [`MAX_CLIENT_NAME`] bytes).
    pub client_name: String,
}

/// Who the daemon believes the peer is, as established at connect time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// Effective uid (SO_PEERCRED).
    pub uid: u32,
    /// Effective gid (SO_PEERCRED).
    pub gid: u32,
    /// Process id at connect time (SO_PEERCRED).
    pub pid: i32,
    /// Supplementary groups (SO_PEERGROUPS).
    pub groups: Vec<u32>,
    /// cgroup v2 path, when known.
    pub cgroup: Option<String>,
    /// LSM label (SO_PEERSEC), when available.
    pub label: Option<String>,
}

/// Daemon's answer to an accepted [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the daemon will speak on this session.
    pub protocol_version: u32,
    /// The daemon's version string.
    pub daemon_version: String,
    /// Identifier of this session (unique while the daemon runs).
    pub session_id: u64,
    /// Page size that slice offsets and lengths must be multiples of.
    pub page_size: u32,
    /// What every configured, usable device supports (intersection).
    pub capabilities: Capabilities,
    /// Who the daemon thinks the client is.
    pub identity: PeerIdentity,
    /// Whether this peer may use admin requests.
    pub admin: bool,
}

/// A request for a slice of a BAR.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SliceRequest {
    /// Configured device name.
    pub device: String,
    /// BAR index, 0..=5.
    pub bar: u32,
    /// Offset of the slice in the BAR, page aligned.
    pub offset: u64,
    /// Length of the slice, page aligned, > 0.
    pub length: u64,
    /// Read-only or read-write.
    pub access: Access,
    /// Memory attribute wanted.
    pub memattr: MemAttrRequest,
}

impl SliceRequest {
    /// The requested range.
    pub fn range(&self) -> Range {
        Range::new(self.offset, self.length)
    }
}

/// A granted slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease id.
    pub id: LeaseId,
    /// Device name.
    pub device: String,
    /// BAR index.
    pub bar: u32,
    /// Offset of the slice in the BAR (byte 0 of the buffer).
    pub offset: u64,
    /// Length of the slice (the buffer's size).
    pub length: u64,
    /// Access mode of the buffer.
    pub access: Access,
    /// Memory attribute in effect for mappings of the buffer.
    pub memattr: MemAttr,
    /// The name the buffer carries (shows in /proc/PID/maps and fdinfo).
    pub buffer_name: String,
}

impl Lease {
    /// The leased range.
    pub fn range(&self) -> Range {
        Range::new(self.offset, self.length)
    }
}

/// Lifecycle state of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    /// Granted and live.
    Active,
    /// Ended, but its buffer may still be live (no per-buffer revoke on this
    /// kernel); its range is not granted again until the buffer is dead.
    Lingering,
    /// Its session ended and the grant says `on_disconnect = "keep"`: the
    /// buffer stays live until an admin revokes it or a session reclaims it.
    Kept,
    /// Restored after a daemon restart, waiting for its holder to reclaim it
    /// within the grace period.
    AwaitingReclaim,
}

impl LeaseState {
    /// Short name: "active", "lingering", "kept", "awaiting-reclaim".
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Lingering => "lingering",
            LeaseState::Kept => "kept",
            LeaseState::AwaitingReclaim => "awaiting-reclaim",
        }
    }
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lease as listed by [`Request::ListLeases`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease.
    pub lease: Lease,
    /// Holder's session id.
    pub session: u64,
    /// Holder's client name.
    pub client_name: String,
    /// Holder's identity.
    pub holder: PeerIdentity,
    /// Milliseconds since the grant.
    pub age_ms: u64,
    /// Lifecycle state.
    pub state: LeaseState,
}

/// Kind of backend a device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendKind {
    /// Simulated device (memfd per slice); not a security boundary.
    Sim,
    /// A real VFIO PCI device.
    Vfio,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Sim => "sim",
            BackendKind::Vfio => "vfio",
        })
    }
}

/// A range of a BAR the daemon never grants, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// The range.
    pub range: Range,
    /// Why (e.g. "MSI-X table").
    pub what: String,
}

/// One BAR of a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarInfo {
    /// BAR index.
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
    /// The region can be read.
    pub readable: bool,
    /// The region can be written.
    pub writable: bool,
    /// The region (or parts of it) can be mapped.
    pub mmap: bool,
    /// Areas that may be sliced (sparse-mmap areas; the whole BAR when not
    /// sparse). Empty when nothing is mappable.
    pub mappable: Vec<Range>,
    /// Ranges inside `mappable` that are never granted (MSI-X table, PBA).
    pub reserved: Vec<Reserved>,
}

/// A configured device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Configured name.
    pub name: String,
    /// Backend kind.
    pub backend: BackendKind,
    /// PCI address for VFIO devices.
    pub pci: Option<String>,
    /// How the device is owned ("group", "cdev", "sim").
    pub ownership: String,
    /// BARs present on the device.
    pub bars: Vec<BarInfo>,
    /// What this device supports on this kernel.
    pub capabilities: Capabilities,
    /// Why the device cannot be used, when it cannot.
    pub problem: Option<String>,
}

/// A device's line in [`StatusInfo`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Configured name.
    pub name: String,
    /// Backend kind.
    pub backend: BackendKind,
    /// Capabilities on this kernel.
    pub capabilities: Capabilities,
    /// Live leases on this device.
    pub leases: u32,
    /// Why the device cannot be used, when it cannot.
    pub problem: Option<String>,
    /// Human notes from capability probing (e.g. "mmap: not supported by this kernel").
    pub notes: Vec<String>,
}

/// Reply to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Daemon version.
    pub daemon_version: String,
    /// Protocol version.
    pub protocol_version: u32,
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Connected sessions.
    pub sessions: u32,
    /// Live leases (all sessions).
    pub leases: u32,
    /// Page size.
    pub page_size: u32,
    /// Intersection of the usable devices' capabilities.
    pub capabilities: Capabilities,
    /// Per-device status.
    pub devices: Vec<DeviceStatus>,
}

/// What to revoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeTarget {
    /// One lease.
    Lease(LeaseId),
    /// Every lease of a device, with a device-wide revoke (decode off/on or
    /// reset) when the kernel cannot revoke buffers one by one.
    Device(String),
    /// Every lease of one session.
    Session(u64),
    /// Every lease held by sessions of this uid.
    Uid(u32),
    /// Every lease held by sessions in this cgroup (exact path or a prefix
    /// ending in `/`).
    Cgroup(String),
}

/// A request to evaluate policy without acquiring anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainRequest {
    /// The identity to evaluate (uid, gid, groups, cgroup, label).
    pub who: PeerIdentity,
    /// The slice that identity would ask for.
    pub slice: SliceRequest,
}

/// The outcome of a policy evaluation, with the rule that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the request would be granted (before conflicts and quotas
    /// with live leases, which depend on the moment).
    pub allowed: bool,
    /// The error a real request would get, when denied.
    pub code: Option<ErrorCode>,
    /// Which rule decided ("grant #2 (device gpu0 bar 0, uids [1000])",
    /// "validation", "default deny").
    pub rule: String,
    /// Why, in words.
    pub reason: String,
    /// Memory attribute a grant would have.
    pub memattr: Option<MemAttr>,
}

/// A secret that lets a new session take over a lease after a reconnect
/// (e.g. across a daemon restart). Returned only to the lease's holder.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReclaimToken(pub [u8; 16]);

impl fmt::Debug for ReclaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReclaimToken(..)")
    }
}

/// A request, carried in [`ClientMessage::Request`].
///
/// Variant order is the wire format; every variant has a row in the
/// request kinds table ([`RequestKind`]), in the same order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Daemon status: [`Response::Status`].
    Status,
    /// Configured devices: [`Response::Devices`].
    ListDevices,
    /// Acquire a slice: [`Response::Granted`] plus one fd.
    Acquire(SliceRequest),
    /// End a live lease held by the caller's uid (from any of its
    /// sessions; any lease for an admin): [`Response::Released`]. The
    /// holding session gets [`Event::Revoked`] with
    /// [`RevokeReason::Released`].
    Release {
        /// The lease.
        lease: LeaseId,
    },
    /// List leases: the caller's uid's live leases from all its sessions,
    /// or every lease when `all` (admin).
    ListLeases {
        /// List every lease of every uid (admin only).
        all: bool,
    },
    /// Revoke leases (admin): [`Response::Revoked`].
    Revoke(RevokeTarget),
    /// Read BAR bytes through the backend (admin): [`Response::Bytes`].
    Peek {
        /// Device name.
        device: String,
        /// BAR index.
        bar: u32,
        /// Byte offset in the BAR.
        offset: u64,
        /// Number of bytes (at most [`MAX_PEEK`]).
        length: u64,
    },
    /// Write BAR bytes through the backend (admin): [`Response::Poked`].
    /// Accesses of 1, 2, 4 or 8 naturally aligned bytes are done as one
    /// access of that width.
    Poke {
        /// Device name.
        device: String,
        /// BAR index.
        bar: u32,
        /// Byte offset in the BAR.
        offset: u64,
        /// Bytes, in memory order.
        data: Vec<u8>,
    },
    /// Evaluate policy for an identity and slice without acquiring:
    /// [`Response::Decision`]. Admin, or anyone for their own identity.
    Explain(ExplainRequest),
    /// Reload the configuration's policy (admin): [`Response::Reloaded`].
    Reload,
    /// Take over a lease of an ended session (e.g. after a daemon restart):
    /// [`Response::Reclaimed`]. No fd: the client still holds its buffer.
    Reclaim {
        /// The lease.
        lease: LeaseId,
        /// The token received when the lease was granted.
        token: ReclaimToken,
    },
    /// Prometheus text exposition of the daemon's metrics: [`Response::Metrics`].
    Metrics,
    /// End one of this session's leases, like [`Request::Release`], but the
    /// daemon sends no reply, not even an error: what a client sends when
    /// it drops a slice and will not wait. The holder still gets
    /// [`Event::Revoked`] with [`RevokeReason::Released`] once the buffer is
    /// dead, which is the confirmation; a lease that is not this session's
    /// is left alone (and logged).
    ReleaseNoReply {
        /// The lease.
        lease: LeaseId,
    },
    /// One page of [`Request::ListLeases`]: the leases listed after
    /// `after` (0: from the first), as many as fit in one datagram, in
    /// grant order: [`Response::LeasesPage`]. A listing of any length is
    /// read by asking again with the page's `next` until it is `None`.
    ListLeasesPage {
        /// List every session's leases (admin only).
        all: bool,
        /// The `next` of the previous page (0 for the first page).
        after: u64,
    },
}

impl Request {
    /// Short name for logs ([`RequestKind::name`]).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether the daemon answers this request (every request but
    /// [`Request::ReleaseNoReply`]; [`RequestKind::answered`]).
    pub fn expects_reply(&self) -> bool {
        self.kind().answered()
    }
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Reply to `Status`.
    Status(StatusInfo),
    /// Reply to `ListDevices`.
    Devices(Vec<DeviceInfo>),
    /// Reply to `Acquire`; exactly one fd rides with this datagram. The
    /// [`ReclaimToken`] lets the holder take the lease over from a new
    /// session ([`Request::Reclaim`]) after a daemon restart; keep it secret.
    Granted(Lease, ReclaimToken),
    /// Reply to `Release`.
    Released,
    /// Reply to `ListLeases`.
    Leases(Vec<LeaseInfo>),
    /// Reply to `Revoke`: how many leases were revoked.
    Revoked {
        /// Number of leases revoked.
        count: u32,
    },
    /// Reply to `Peek`.
    Bytes(Vec<u8>),
    /// Reply to `Poke`.
    Poked,
    /// Reply to `Explain`.
    Decision(Decision),
    /// Reply to `Reload`.
    Reloaded {
        /// Grants in the new policy.
        grants: u32,
        /// Leases revoked because the new policy no longer allows them.
        revoked: u32,
    },
    /// Reply to `Reclaim`: the lease now belongs to this session.
    Reclaimed(Lease),
    /// Reply to `Metrics`: Prometheus text exposition format.
    Metrics(String),
    /// Reply to `ListLeasesPage`.
    LeasesPage {
        /// The leases of this page, in grant order.
        leases: Vec<LeaseInfo>,
        /// What to pass as `after` for the next page; `None` when this page
        /// is the last. Leases granted while a client pages come on later
        /// pages; ended ones are not listed again.
        next: Option<u64>,
    },
}

/// Why a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// The holder released it.
    Released,
    /// The holder's session ended.
    Disconnected,
    /// An administrator revoked it.
    Admin,
    /// A policy change no longer allows it.
    Policy,
    /// Every buffer of the device was revoked (decode off/on, reset).
    Device,
    /// The daemon is shutting down.
    Shutdown,
    /// Restored after a daemon restart, it was not reclaimed by its holder
    /// within the grace period (`reclaim_grace`).
    Unclaimed,
}

impl RevokeReason {
    /// Short name for logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Released => "released",
            RevokeReason::Disconnected => "disconnected",
            RevokeReason::Admin => "admin",
            RevokeReason::Policy => "policy",
            RevokeReason::Device => "device",
            RevokeReason::Shutdown => "shutdown",
            RevokeReason::Unclaimed => "unclaimed",
        }
    }
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the daemon tells a session without being asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A lease of this session ended; its buffer is (or is being) revoked.
    Revoked {
        /// The lease.
        lease: LeaseId,
        /// Why.
        reason: RevokeReason,
    },
}

/// Every message a client sends.
///
/// Variant order is part of the wire format: `Hello` must stay variant 0 and
/// its first field must stay `protocol_version`, so that any daemon can read
/// the version of any client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Handshake (first message only).
    Hello(Hello),
    /// A request.
    Request {
        /// Chosen by the client; echoed in the reply.
        id: u64,
        /// The request.
        request: Request,
    },
}

/// Every message the daemon sends.
///
/// `Refused` must stay variant 0 (and [`ErrorReply`] stable) so that a client
/// of any version can read why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DaemonMessage {
    /// The handshake was refused; the daemon closes the connection.
    Refused(ErrorReply),
    /// The handshake was accepted.
    Welcome(Welcome),
    /// Reply to the request with this id.
    Reply {
        /// The request id (0 when the request could not be decoded).
        id: u64,
        /// Outcome.
        result: Result<Response, ErrorReply>,
    },
    /// An unsolicited event.
    Event(Event),
}

#[cfg(test)]
mod tests;
