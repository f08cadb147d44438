//! The backend boundary: what the broker asks of a device, and nothing more.
//!
//! Everything above this module (server, identity, policy, leases, broker) is
//! the same for simulated and real devices. A backend device describes its
//! BARs and capabilities, exports a validated slice as a buffer fd, revokes
//! buffers, and reads and writes BAR bytes for admins. Validation (alignment,
//! bounds, mappable areas, policy) happens before a backend is called; a
//! backend still refuses what its kernel would misuse, but it never has to
//! explain a bad request to a user.

pub mod sim;
pub mod vfio;

use barkeep_protocol::{Access, BarInfo, Capabilities, DeviceInfo, MemAttr, Range};
use std::os::fd::OwnedFd;

/// Errors from a backend operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel (or backend) lacks a feature; the message names it.
    #[error("{0}")]
    Unsupported(String),
    /// A system call failed; `what` says which operation, with context.
    #[error("{what}: {source}")]
    Kernel {
        /// What was being done ("VFIO_DEVICE_FEATURE_DMA_BUF export of bar 0 0x1000+0x1000").
        what: String,
        /// The errno.
        source: nix::Error,
    },
    /// The device cannot be used (e.g. not bound to vfio-pci); the message says why and what to do.
    #[error("{0}")]
    Unavailable(String),
    /// The request is not valid for this device (should have been caught by validation).
    #[error("{0}")]
    Invalid(String),
}

/// What to export: a validated slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRequest {
    /// BAR index.
    pub bar: u32,
    /// The slice, already checked to be page aligned and inside a mappable area.
    pub range: Range,
    /// Access mode of the client's fd.
    pub access: Access,
    /// Memory attribute to apply (already checked against capabilities).
    pub memattr: MemAttr,
    /// Name to give the buffer (at most 32 bytes kept by the kernel),
    /// e.g. `bk:gpu0:b0:10000+1000`.
    pub name: String,
}

/// An fd shared by the parts of the daemon that need it (the backend, the
/// lease table, the reply that carries it to the client), so that sharing
/// it costs no `dup(2)`: it closes when the last holder drops it.
pub type SharedFd = std::sync::Arc<OwnedFd>;

/// An exported buffer: the daemon's own reference, plus the fd for the client.
#[derive(Debug)]
pub struct Exported {
    /// Kept by the daemon for the life of the lease; passed back to
    /// [`Device::revoke`]. Dropping it does not revoke anything.
    pub buffer: Buffer,
    /// Sent to the client with SCM_RIGHTS, then dropped. For a read-write
    /// slice it may be the same open file as `buffer.fd`.
    pub client_fd: SharedFd,
}

/// The daemon's reference to an exported buffer.
#[derive(Debug)]
pub struct Buffer {
    /// The daemon's own fd of the buffer (the open file the client got, or
    /// the same file opened with more access).
    pub fd: SharedFd,
    /// Backend-private identifier (e.g. the simulated slice's slot).
    pub token: u64,
}

/// Result of revoking one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The buffer is dead: mappings fault, new mmaps fail. The range is free.
    Dead,
    /// This kernel cannot revoke one buffer; it may stay live until a
    /// device-wide revoke. The range must not be granted again before that.
    MayLinger,
}

/// A device as the broker sees it; what a restart needs of it is the
/// supertrait [`Restart`].
pub trait Device: Restart + Send + Sync {
    /// Static description: name, backend kind, BARs, capabilities, problem.
    fn info(&self) -> DeviceInfo;

    /// What this device supports on this kernel.
    fn capabilities(&self) -> Capabilities;

    /// Human notes from start-up probing, for `barkeep status` and the log.
    fn notes(&self) -> Vec<String>;

    /// The BAR with this index, if present.
    fn bar(&self, index: u32) -> Option<BarInfo> {
        self.info().bars.into_iter().find(|b| b.index == index)
    }

    /// Exports exactly `req.range` of the BAR as a buffer whose byte 0 is the
    /// first byte of the slice and whose size is the slice length.
    fn export(&self, req: &ExportRequest) -> Result<Exported, BackendError>;

    /// Revokes one buffer. On `Err` the buffer must be treated as possibly live.
    fn revoke(&self, buffer: Buffer) -> Result<RevokeOutcome, BackendError>;

    /// Revokes every buffer of the device at once (memory decode off/on or
    /// reset on VFIO). After `Ok`, every buffer ever exported is dead.
    fn revoke_all(&self) -> Result<(), BackendError>;

    /// Reads BAR bytes through the backend (not through any mapping).
    fn peek(&self, bar: u32, offset: u64, out: &mut [u8]) -> Result<(), BackendError>;

    /// Writes BAR bytes through the backend. Accesses of 1, 2, 4 or 8
    /// naturally aligned bytes are done as one access of that width.
    fn poke(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), BackendError>;
}

/// What a restart needs of a device: the kernel fds that keep it and its
/// buffers alive, the data to reopen it with, and taking back (or revoking)
/// the buffers an earlier daemon exported. Every method has a default for
/// a backend that cannot survive a restart (its leases are then dropped).
pub trait Restart {
    /// Dups of the kernel fds that keep this device and its buffers alive,
    /// by kind ("container", "group", "device", "iommufd", "bar0", ...):
    /// what a restart must get back to keep clients' mappings working.
    fn kernel_fds(&self) -> Vec<(String, OwnedFd)> {
        Vec::new()
    }

    /// Small backend data the state file keeps for a restore (e.g. the
    /// iommufd IOAS id).
    fn restore_data(&self) -> Option<String> {
        None
    }

    /// Whether the device was taken over from an earlier daemon's fds (so
    /// the buffers that daemon exported are still alive), rather than
    /// opened anew.
    fn restored(&self) -> bool {
        false
    }

    /// Revokes a buffer an earlier daemon exported that no record
    /// describes (its lease is unknown): `Ok(Dead)` when it was this
    /// device's and is dead now; `Err` when it is not this device's or
    /// cannot be revoked alone.
    fn revoke_unknown(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<RevokeOutcome, BackendError> {
        let _ = fd;
        Err(BackendError::Unsupported(
            "this backend cannot revoke a buffer it does not know".into(),
        ))
    }

    /// Takes back a buffer that an earlier daemon exported for `req`
    /// (`fd` is that daemon's own reference, from the fd store or a
    /// takeover), so that it can be revoked like one exported here.
    fn adopt(&self, req: &ExportRequest, fd: OwnedFd) -> Result<Buffer, BackendError> {
        let _ = (req, fd);
        Err(BackendError::Unsupported(
            "this backend cannot take buffers back after a restart".into(),
        ))
    }
}

/// Builds the buffer name for a slice: `bk:DEVICE:bBAR:OFFSET+LENGTH` in hex,
/// cut to the 32 bytes the kernel keeps (the device name is shortened first,
/// so the range always survives).
pub fn buffer_name(device: &str, bar: u32, range: Range) -> String {
    const KEEP: usize = 31; // DMA_BUF_NAME_LEN is 32 including the NUL
    let tail = format!(":b{bar}:{:x}+{:x}", range.offset, range.length);
    let room = KEEP.saturating_sub(3 + tail.len());
    let dev: String = device.chars().take(room).collect();
    let mut name = format!("bk:{dev}{tail}");
    name.truncate(KEEP);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_names_fit_and_keep_the_range() {
        assert_eq!(
            buffer_name("gpu0", 0, Range::new(0x10000, 0x1000)),
            "bk:gpu0:b0:10000+1000"
        );
        let long = buffer_name(
            "a-very-long-device-name-indeed",
            5,
            Range::new(0x1000, 0x2000),
        );
        assert!(long.len() <= 31, "{long}");
        assert!(long.ends_with(":b5:1000+2000"), "{long}");
    }
}
