//! Slices handed down by `barkeep exec`: the `BARKEEP_SLICES` description,
//! taking ownership of the inherited fds, and the status page through which
//! the parent tells its child that a lease has ended.
//!
//! `barkeep exec` holds the session (and so the leases) while its command
//! runs; the command only gets the buffer fds. It cannot hear the daemon's
//! revocation events itself, so the parent writes each lease's state into a
//! one-page memfd (the *status page*) that the child maps read-only: one
//! native-endian `u32` per slice at `status_offset`, 0 while the lease is
//! live, else the [`revoke_reason_code`] of why it ended.

use crate::error::{Error, Result};
use crate::mapping::{
    check_map_range, page_size, revoke_reason_code, Mapping, RevokeFlag, StatusWord,
};
use barkeep_protocol::{Access, Lease, LeaseId, MemAttr, RevokeReason};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The environment variable `barkeep exec` sets for its command: a JSON
/// array of [`InheritedSliceInfo`].
pub const SLICES_ENV: &str = "BARKEEP_SLICES";

/// One entry of `$BARKEEP_SLICES`, as `barkeep exec` writes it:
///
/// ```json
/// [{"fd":4,"device":"sim0","bar":0,"offset":65536,"length":4096,
///   "access":"rw","memattr":"uc","lease":"<32 hex>","buffer_name":"bk:sim0:b0:10000+1000",
///   "ino":1234,"status_fd":3,"status_offset":0}]
/// ```
///
/// `fd` is open in the command (not close-on-exec), `offset`/`length` are
/// the slice's place in the BAR (byte 0 of the buffer is BAR byte
/// `offset`), `ino` is the buffer's inode number (so a stale variable cannot
/// make a process adopt an unrelated fd), and `status_fd`/`status_offset`
/// locate the lease's word in the status page (absent: no revocation
/// reporting).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InheritedSliceInfo {
    /// The inherited buffer fd.
    pub fd: RawFd,
    /// Device name.
    pub device: String,
    /// BAR index.
    pub bar: u32,
    /// Offset of the slice in the BAR.
    pub offset: u64,
    /// Length of the slice (the buffer's size).
    pub length: u64,
    /// "ro" or "rw".
    pub access: String,
    /// "uc" or "wc".
    pub memattr: String,
    /// Lease id (32 hex digits).
    pub lease: String,
    /// The buffer's name.
    pub buffer_name: String,
    /// Inode number of the buffer (`fstat().st_ino`).
    pub ino: u64,
    /// The status page's fd, if the parent reports revocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_fd: Option<RawFd>,
    /// Byte offset of this lease's `u32` in the status page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_offset: Option<u64>,
}

impl InheritedSliceInfo {
    /// Describes `lease`, whose buffer is `fd`, for the environment.
    pub fn new(lease: &Lease, fd: BorrowedFd<'_>) -> Result<InheritedSliceInfo> {
        let st =
            nix::sys::stat::fstat(fd).map_err(|e| Error::io("cannot fstat the buffer fd", e))?;
        Ok(InheritedSliceInfo {
            fd: fd.as_raw_fd(),
            device: lease.device.clone(),
            bar: lease.bar,
            offset: lease.offset,
            length: lease.length,
            access: lease.access.as_str().into(),
            memattr: lease.memattr.as_str().into(),
            lease: lease.id.to_string(),
            buffer_name: lease.buffer_name.clone(),
            ino: st.st_ino,
            status_fd: None,
            status_offset: None,
        })
    }

    /// The lease this entry describes.
    pub fn to_lease(&self) -> Result<Lease> {
        let bad = |what: &str| {
            Error::Environment(format!(
                "${SLICES_ENV}: fd {}: {what} (the variable must come from `barkeep exec`)",
                self.fd
            ))
        };
        Ok(Lease {
            id: self.lease.parse::<LeaseId>().map_err(|e| bad(&e))?,
            device: self.device.clone(),
            bar: self.bar,
            offset: self.offset,
            length: self.length,
            access: match self.access.as_str() {
                "ro" => Access::ReadOnly,
                "rw" => Access::ReadWrite,
                a => return Err(bad(&format!("access {a:?} is neither \"ro\" nor \"rw\""))),
            },
            memattr: match self.memattr.as_str() {
                "uc" => MemAttr::Uncached,
                "wc" => MemAttr::WriteCombining,
                m => return Err(bad(&format!("memattr {m:?} is neither \"uc\" nor \"wc\""))),
            },
            buffer_name: self.buffer_name.clone(),
        })
    }
}

/// The value of `$BARKEEP_SLICES` for these entries.
pub fn encode_slices_env(slices: &[InheritedSliceInfo]) -> String {
    serde_json::to_string(slices).expect("plain data serializes")
}

/// The parent's side of the status page: a sealed one-page memfd, mapped
/// read-write here; the child can only map it read-only.
pub struct StatusPage {
    fd: OwnedFd,
    map: Mapping,
}

impl std::fmt::Debug for StatusPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusPage").field("fd", &self.fd).finish()
    }
}

impl StatusPage {
    /// A page with room for `page_size() / 4` slices, all live.
    pub fn new() -> Result<StatusPage> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create(
            c"barkeep-exec-status",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Error::io("cannot create the status page (memfd_create)", e))?;
        nix::unistd::ftruncate(&fd, page_size() as i64)
            .map_err(|e| Error::io("cannot size the status page", e))?;
        let map = Mapping::from_fd(fd.as_fd(), 0, page_size(), Access::ReadWrite)?;
        // The child gets this fd: it may read the page, never write it.
        // Kernels before 5.1 lack F_SEAL_FUTURE_WRITE; the page then stays
        // writable by the child, which can only fool itself.
        let _ = fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_FUTURE_WRITE,
            ),
        );
        Ok(StatusPage { fd, map })
    }

    /// How many slices the page has room for.
    pub fn capacity(&self) -> usize {
        (self.map.len() / 4) as usize
    }

    /// Byte offset of slot `index`.
    pub fn offset_of(index: usize) -> u64 {
        index as u64 * 4
    }

    /// Records that the lease in slot `index` ended; the first reason stays.
    pub fn set(&self, index: usize, reason: RevokeReason) -> Result<()> {
        let at = Self::offset_of(index);
        if self.map.read_u32(at)? == 0 {
            self.map.write_u32(at, revoke_reason_code(reason))?;
        }
        Ok(())
    }
}

impl AsFd for StatusPage {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A slice inherited from `barkeep exec` (see [`inherited_slices`]): the
/// lease's description and the buffer fd, mappable like a [`crate::Slice`].
///
/// It has no session: it cannot be released (the lease ends when the
/// `barkeep exec` parent ends it, after this process exits) and it hears of
/// revocation only through the parent's status page. [`Self::is_revoked`]
/// and every [`Mapping`] access check that page, so a revoked slice returns
/// [`Error::Revoked`]; an access racing with the revocation may still fault
/// (SIGBUS on a DMABUF whose pages were zapped), as with any revocable
/// buffer.
pub struct InheritedSlice {
    lease: Lease,
    fd: OwnedFd,
    flag: Arc<RevokeFlag>,
}

impl std::fmt::Debug for InheritedSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InheritedSlice")
            .field("lease", &self.lease)
            .field("fd", &self.fd)
            .field("revoked", &self.flag.get())
            .finish()
    }
}

impl InheritedSlice {
    /// The lease: id, device, BAR, offset and length in the BAR, access,
    /// memory attribute, buffer name.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Length of the slice in bytes.
    pub fn len(&self) -> u64 {
        self.lease.length
    }

    /// Always false: the daemon never grants an empty slice.
    pub fn is_empty(&self) -> bool {
        self.lease.length == 0
    }

    /// Whether the parent reported that the lease ended (always false when
    /// the parent gave no status page).
    pub fn is_revoked(&self) -> bool {
        self.flag.get().is_some()
    }

    /// Why the lease ended, once the parent reported it.
    pub fn revoked_reason(&self) -> Option<RevokeReason> {
        self.flag.get()
    }

    /// Maps the whole slice (read-only for an `ro` lease).
    pub fn map(&self) -> Result<Mapping> {
        self.map_range(0, self.lease.length)
    }

    /// Maps `len` bytes from `offset` in the slice (page aligned, inside the
    /// slice), exactly as [`crate::Slice::map_range`].
    pub fn map_range(&self, offset: u64, len: u64) -> Result<Mapping> {
        if let Some(reason) = self.flag.get() {
            return Err(Error::Revoked {
                lease: self.lease.id,
                reason,
            });
        }
        check_map_range(self.lease.length, page_size(), offset, len)?;
        Mapping::map(
            self.fd.as_fd(),
            offset,
            len,
            self.lease.access,
            self.lease.id,
            Some(self.flag.clone()),
        )
    }

    /// The buffer fd, for uses other than mapping (e.g. a P2P import).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for InheritedSlice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for InheritedSlice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes over the slices `barkeep exec` handed this process: parses
/// `$BARKEEP_SLICES`, checks that each fd is open and is the buffer it
/// describes, marks the fds close-on-exec (they are this process's now) and
/// maps the status page. An empty list when the variable is unset.
///
/// The fds can be owned once per process: a second call fails with
/// [`Error::Environment`].
///
/// ```no_run
/// // Run as: barkeep exec --slice sim0:0:0x10000:4K -- ./worker
/// let slices = barkeep_client::inherited_slices()?;
/// let regs = slices[0].map()?;
/// regs.write_u32(0x10, 1)?;
/// # Ok::<(), barkeep_client::Error>(())
/// ```
pub fn inherited_slices() -> Result<Vec<InheritedSlice>> {
    let Some(text) = std::env::var_os(SLICES_ENV) else {
        return Ok(Vec::new());
    };
    let text = text
        .into_string()
        .map_err(|_| Error::Environment(format!("${SLICES_ENV} is not valid UTF-8")))?;
    adopt(&text)
}

/// [`inherited_slices`] for a `$BARKEEP_SLICES` value given directly.
pub fn adopt(text: &str) -> Result<Vec<InheritedSlice>> {
    let infos: Vec<InheritedSliceInfo> = serde_json::from_str(text).map_err(|e| {
        Error::Environment(format!(
            "${SLICES_ENV} is not the JSON `barkeep exec` writes: {e}"
        ))
    })?;
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Error::Environment(format!(
            "the slices in ${SLICES_ENV} were already taken by this process (take them once \
             and share the InheritedSlice values)"
        )));
    }
    let result = adopt_checked(&infos);
    if result.is_err() {
        // Nothing was taken: a corrected retry may take them.
        TAKEN.store(false, Ordering::SeqCst);
    }
    result
}

fn adopt_checked(infos: &[InheritedSliceInfo]) -> Result<Vec<InheritedSlice>> {
    let mut leases = Vec::with_capacity(infos.len());
    let mut seen = std::collections::HashSet::new();
    for info in infos {
        let lease = info.to_lease()?;
        if !seen.insert(info.fd) || Some(info.fd) == info.status_fd {
            return Err(Error::Environment(format!(
                "${SLICES_ENV} names fd {} twice",
                info.fd
            )));
        }
        let st = fstat_raw(info.fd)?;
        if st.st_ino != info.ino {
            return Err(Error::Environment(format!(
                "fd {} is not the buffer ${SLICES_ENV} describes (inode {} instead of {}): \
                 the variable was inherited past the process `barkeep exec` started",
                info.fd, st.st_ino, info.ino
            )));
        }
        leases.push(lease);
    }
    // Map each status page once; its fd is not needed after that.
    let mut pages: std::collections::HashMap<RawFd, Arc<Mapping>> = Default::default();
    for info in infos {
        if let Some(sfd) = info.status_fd {
            if let std::collections::hash_map::Entry::Vacant(e) = pages.entry(sfd) {
                fstat_raw(sfd)?;
                // SAFETY: `sfd` is open (fstat_raw succeeded) and is not one
                // of the buffer fds (checked above); it is borrowed only for
                // the mmap call.
                let fd = unsafe { BorrowedFd::borrow_raw(sfd) };
                let map = Mapping::from_fd(fd, 0, page_size(), Access::ReadOnly)?;
                e.insert(Arc::new(map));
            }
        }
    }
    let mut words = Vec::with_capacity(infos.len());
    for info in infos {
        words.push(match (info.status_fd, info.status_offset) {
            (Some(sfd), Some(offset)) if offset % 4 == 0 && offset < page_size() => {
                Some(StatusWord {
                    page: pages[&sfd].clone(),
                    offset,
                })
            }
            (None, _) => None,
            (Some(_), offset) => {
                return Err(Error::Environment(format!(
                    "${SLICES_ENV}: fd {}: status_offset {offset:?} is not a u32 slot in a page",
                    info.fd
                )))
            }
        });
    }
    // Everything is checked: take ownership of the fds now.
    let mut out = Vec::with_capacity(infos.len());
    for ((info, lease), shared) in infos.iter().zip(leases).zip(words) {
        // SAFETY: the fd is open and is the buffer described (same inode,
        // checked above), no two entries name it, and TAKEN guarantees this
        // process adopts the variable's fds once, so nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(info.fd) };
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        out.push(InheritedSlice {
            lease,
            fd,
            flag: Arc::new(RevokeFlag::with_status(shared)),
        });
    }
    for sfd in pages.keys() {
        // The page stays mapped; the fd itself is no longer needed.
        // SAFETY: the status fd was handed to this process for this purpose
        // only and is closed once, here (after its mapping was made).
        drop(unsafe { OwnedFd::from_raw_fd(*sfd) });
    }
    Ok(out)
}

fn fstat_raw(fd: RawFd) -> Result<nix::sys::stat::FileStat> {
    // SAFETY: fcntl(F_GETFD) on any integer is harmless: it reports EBADF
    // for a number that is not an open fd.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(Error::Environment(format!(
            "fd {fd} named in ${SLICES_ENV} is not open: run the program through \
             `barkeep exec`, which keeps the slice fds open across exec"
        )));
    }
    // SAFETY: `fd` is open (checked just above) and only borrowed for fstat.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(fd).map_err(|e| Error::io("cannot fstat an inherited fd", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::revoke_reason_from_code;

    #[test]
    fn reason_codes_round_trip_and_zero_is_live() {
        for r in [
            RevokeReason::Released,
            RevokeReason::Disconnected,
            RevokeReason::Admin,
            RevokeReason::Policy,
            RevokeReason::Device,
            RevokeReason::Shutdown,
            RevokeReason::Unclaimed,
        ] {
            assert_ne!(revoke_reason_code(r), 0);
            assert_eq!(revoke_reason_from_code(revoke_reason_code(r)), Some(r));
        }
        assert_eq!(revoke_reason_from_code(0), None);
    }

    #[test]
    fn the_status_page_keeps_the_first_reason() {
        let page = StatusPage::new().unwrap();
        assert!(page.capacity() >= 1024);
        page.set(1, RevokeReason::Admin).unwrap();
        page.set(1, RevokeReason::Released).unwrap();
        let ro = Mapping::from_fd(page.as_fd(), 0, page_size(), Access::ReadOnly).unwrap();
        assert_eq!(ro.read_u32(0).unwrap(), 0);
        assert_eq!(
            ro.read_u32(4).unwrap(),
            revoke_reason_code(RevokeReason::Admin)
        );
    }

    #[test]
    fn entries_round_trip_through_json() {
        let info = InheritedSliceInfo {
            fd: 7,
            device: "sim0".into(),
            bar: 2,
            offset: 0x1000,
            length: 0x2000,
            access: "ro".into(),
            memattr: "wc".into(),
            lease: "00112233445566778899aabbccddeeff".into(),
            buffer_name: "bk:sim0:b2:1000+2000".into(),
            ino: 42,
            status_fd: Some(3),
            status_offset: Some(8),
        };
        let text = encode_slices_env(std::slice::from_ref(&info));
        let back: Vec<InheritedSliceInfo> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, std::slice::from_ref(&info));
        let lease = info.to_lease().unwrap();
        assert_eq!(lease.access, Access::ReadOnly);
        assert_eq!(lease.memattr, MemAttr::WriteCombining);
        let mut bad = info;
        bad.access = "rwx".into();
        assert!(matches!(bad.to_lease(), Err(Error::Environment(_))));
    }
}
