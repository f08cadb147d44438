//! A granted slice: the lease, the buffer's fd, its revocation state, and
//! release of the lease when dropped.

use crate::conn::Session;
use crate::error::{Error, Result};
use crate::mapping::{check_map_range, page_size, Mapping, RevokeFlag};
use barkeep_protocol::{Lease, RevokeReason};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

/// A slice of a BAR granted by the daemon: its [`Lease`] and the buffer fd
/// (a DMABUF on real hardware, a memfd on the simulator) whose byte 0 is
/// the first byte of the slice.
///
/// Dropping the slice releases the lease without waiting (a
/// `ReleaseNoReply` request; the daemon's only answer is the
/// `Revoked { reason: Released }` event) unless it was
/// [`detach`](Slice::detach)ed. The lease also ends
/// when the connection to the daemon closes, or when an administrator
/// revokes it; [`Slice::is_revoked`] then turns true and accesses through
/// its [`Mapping`]s return [`Error::Revoked`].
///
/// ```no_run
/// # fn f(client: &barkeep_client::Client, req: barkeep_client::SliceRequest)
/// # -> Result<(), barkeep_client::Error> {
/// let slice = client.acquire(req)?;
/// println!("lease {} covers BAR{} {:#x}+{:#x}",
///     slice.lease().id, slice.lease().bar, slice.lease().offset, slice.lease().length);
/// let whole = slice.map()?;
/// whole.write_u64(0, 0x1122_3344_5566_7788)?;
/// drop(whole);
/// drop(slice); // releases the lease
/// # Ok(()) }
/// ```
pub struct Slice {
    lease: Lease,
    /// `None` only after `detach` took it.
    fd: Option<OwnedFd>,
    flag: Arc<RevokeFlag>,
    session: Arc<Session>,
}

impl std::fmt::Debug for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slice")
            .field("lease", &self.lease)
            .field("fd", &self.fd)
            .field("revoked", &self.flag.get())
            .finish()
    }
}

impl Slice {
    pub(crate) fn new(
        lease: Lease,
        fd: OwnedFd,
        flag: Arc<RevokeFlag>,
        session: Arc<Session>,
    ) -> Slice {
        Slice {
            lease,
            fd: Some(fd),
            flag,
            session,
        }
    }

    /// The slices a `barkeep exec` parent handed this process (see
    /// [`crate::inherited_slices`]): mappable like a `Slice`, but without a
    /// session of their own, so they cannot be released and learn of
    /// revocation only through the parent.
    pub fn from_env() -> Result<Vec<crate::InheritedSlice>> {
        crate::inherited_slices()
    }

    /// The lease: id, device, BAR, offset and length in the BAR, access,
    /// memory attribute and the buffer's name.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Length of the slice (the buffer's size) in bytes.
    pub fn len(&self) -> u64 {
        self.lease.length
    }

    /// Always false: the daemon never grants an empty slice.
    pub fn is_empty(&self) -> bool {
        self.lease.length == 0
    }

    /// Whether the lease has ended (revoked by an administrator, by the
    /// device, by a disconnect, or released).
    pub fn is_revoked(&self) -> bool {
        self.flag.get().is_some()
    }

    /// Why the lease ended, once it has.
    pub fn revoked_reason(&self) -> Option<RevokeReason> {
        self.flag.get()
    }

    /// `Ok` while the lease is live, else [`Error::Revoked`].
    pub fn check(&self) -> Result<()> {
        match self.flag.get() {
            None => Ok(()),
            Some(reason) => Err(Error::Revoked {
                lease: self.lease.id,
                reason,
            }),
        }
    }

    /// Maps the whole slice (read-only for an `ro` lease).
    pub fn map(&self) -> Result<Mapping> {
        self.map_range(0, self.lease.length)
    }

    /// Maps `len` bytes from `offset` in the slice (not in the BAR):
    /// `offset` must be page aligned and `offset + len` inside the slice.
    ///
    /// On a kernel without DMABUF mmap this fails with
    /// [`Error::MapUnsupported`]; the fd is still usable for P2P imports.
    pub fn map_range(&self, offset: u64, len: u64) -> Result<Mapping> {
        self.check()?;
        check_map_range(self.lease.length, page_size(), offset, len)?;
        Mapping::map(
            self.as_fd(),
            offset,
            len,
            self.lease.access,
            self.lease.id,
            Some(self.flag.clone()),
        )
    }

    /// Gives up the automatic release: returns the fd and the lease. The
    /// lease stays with the session until it is released by id
    /// ([`crate::Client::release`]), revoked, or the connection closes
    /// (after a daemon restart the client still reclaims it).
    pub fn detach(mut self) -> (OwnedFd, Lease) {
        let fd = self.fd.take().expect("a slice owns its fd until detached");
        self.session.conn.detach_lease(&self.lease.id);
        let lease = self.lease.clone();
        (fd, lease)
    }
}

impl AsFd for Slice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("a slice owns its fd until detached")
            .as_fd()
    }
}

impl AsRawFd for Slice {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Slice {
    fn drop(&mut self) {
        if self.fd.is_none() {
            return; // detached
        }
        let live = self.flag.get().is_none();
        // Mappings that outlive the slice must refuse accesses from now on.
        self.flag.set(RevokeReason::Released);
        self.session.conn.forget_lease(&self.lease.id);
        if live {
            self.session.conn.release_detached(self.lease.id);
        }
    }
}
