//! CPU mappings of a slice's buffer: `mmap()`, and volatile, bounds- and
//! alignment-checked accesses that refuse to touch a revoked lease; and
//! what says a lease was revoked ([`RevokeFlag`], set by the session's
//! events or read from a `barkeep exec` parent's status page), which a
//! mapping checks and a status page is itself a mapping of.

use crate::error::{Error, Result};
use barkeep_protocol::{Access, LeaseId, RevokeReason};
use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

/// Whether (and why) a lease has ended, shared by a [`crate::Slice`], its
/// [`crate::Mapping`]s and the reader that hears the daemon's events.
#[derive(Debug, Default)]
pub(crate) struct RevokeFlag {
    local: OnceLock<RevokeReason>,
    /// For a slice inherited from `barkeep exec`: the word in the status
    /// page where the parent reports the lease's end.
    status: Option<StatusWord>,
}

impl RevokeFlag {
    /// A flag that also reads a `barkeep exec` parent's status word.
    pub(crate) fn with_status(status: Option<StatusWord>) -> RevokeFlag {
        RevokeFlag {
            local: OnceLock::new(),
            status,
        }
    }

    /// Marks the lease ended; the first reason wins.
    pub(crate) fn set(&self, reason: RevokeReason) {
        let _ = self.local.set(reason);
    }

    pub(crate) fn get(&self) -> Option<RevokeReason> {
        self.local
            .get()
            .copied()
            .or_else(|| self.status.as_ref().and_then(|s| s.get()))
    }
}

/// A lease's word in a status page mapped by the child.
#[derive(Debug)]
pub(crate) struct StatusWord {
    pub(crate) page: Arc<Mapping>,
    pub(crate) offset: u64,
}

impl StatusWord {
    pub(crate) fn get(&self) -> Option<RevokeReason> {
        self.page
            .read_u32(self.offset)
            .ok()
            .and_then(revoke_reason_from_code)
    }
}

/// The status page's code for a reason (never 0, which means "live"):
/// 1 released, 2 disconnected, 3 admin, 4 policy, 5 device, 6 shutdown,
/// 7 unclaimed.
pub fn revoke_reason_code(reason: RevokeReason) -> u32 {
    match reason {
        RevokeReason::Released => 1,
        RevokeReason::Disconnected => 2,
        RevokeReason::Admin => 3,
        RevokeReason::Policy => 4,
        RevokeReason::Device => 5,
        RevokeReason::Shutdown => 6,
        RevokeReason::Unclaimed => 7,
    }
}

/// The reason for a status page code; `None` for 0 (live). An unknown
/// non-zero code (a newer parent) reads as `Admin`: ended, cause unknown.
pub fn revoke_reason_from_code(code: u32) -> Option<RevokeReason> {
    Some(match code {
        0 => return None,
        1 => RevokeReason::Released,
        2 => RevokeReason::Disconnected,
        4 => RevokeReason::Policy,
        5 => RevokeReason::Device,
        6 => RevokeReason::Shutdown,
        7 => RevokeReason::Unclaimed,
        _ => RevokeReason::Admin,
    })
}

/// The system page size: mapping offsets must be multiples of it.
pub fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

/// Checks a mapping request `offset`+`len` against a buffer of `size` bytes:
/// `offset` page aligned, `len` > 0, the end inside the buffer.
pub(crate) fn check_map_range(size: u64, page: u64, offset: u64, len: u64) -> Result<()> {
    if offset % page != 0 {
        return Err(Error::Unaligned {
            what: "mapping",
            offset,
            align: page,
        });
    }
    match offset.checked_add(len) {
        Some(end) if len > 0 && end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            what: "mapping",
            offset,
            length: len,
            size,
            within: "slice",
        }),
    }
}

/// Checks an access of `size` bytes at `offset` in a mapping of `len` bytes,
/// aligned to `align`. `size` may be 0 (an empty copy) when in bounds.
pub(crate) fn check_access(len: u64, offset: u64, size: u64, align: u64) -> Result<()> {
    match offset.checked_add(size) {
        Some(end) if end <= len => {}
        _ => {
            return Err(Error::OutOfRange {
                what: "access",
                offset,
                length: size,
                size: len,
                within: "mapping",
            })
        }
    }
    if offset % align != 0 {
        return Err(Error::Unaligned {
            what: match align {
                2 => "u16 access",
                4 => "u32 access",
                8 => "u64 access",
                _ => "access",
            },
            offset,
            align,
        });
    }
    Ok(())
}

/// A `MAP_SHARED` mapping of (part of) a slice's buffer; unmapped on drop.
///
/// Offsets are relative to the start of the mapping, which is
/// [`Mapping::slice_offset`] bytes into the slice. Every access is volatile
/// (device registers care about each load and store), bounds checked,
/// alignment checked (`read_u32` needs a 4-byte aligned offset), and checked
/// against the lease: once the daemon has told the client that the lease was
/// revoked, accesses return [`Error::Revoked`] instead of faulting.
///
/// The check cannot close the window between the daemon revoking the buffer
/// and the client hearing about it: an access in that window may fault
/// (SIGBUS), as with any revocable DMABUF.
///
/// ```no_run
/// # fn f(slice: &barkeep_client::Slice) -> Result<(), barkeep_client::Error> {
/// let regs = slice.map_range(0x1000, 0x1000)?; // second page of the slice
/// regs.write_u32(0x0, 1)?;                    // slice offset 0x1000
/// let mut buf = [0u8; 16];
/// regs.read_bytes(0x100, &mut buf)?;
/// # Ok(()) }
/// ```
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    slice_offset: u64,
    lease: LeaseId,
    flag: Option<Arc<RevokeFlag>>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("writable", &self.writable)
            .field("slice_offset", &self.slice_offset)
            .field("lease", &self.lease)
            .finish()
    }
}

// SAFETY: the mapping is process-wide memory owned by this value; every
// access through it is a volatile load or store of plain integers, which is
// as safe from several threads as the device (or memfd) behind it allows.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&self` methods only do volatile accesses.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of a buffer fd from `offset` (page aligned),
    /// read-only or read-write. This is what [`crate::Slice::map_range`]
    /// does; use it directly for an fd received some other way (e.g. from a
    /// process that acquired the slice). Such a mapping knows nothing of
    /// revocation. The range is checked against the buffer's size as
    /// `fstat()` reports it (a DMABUF's inode size is the buffer's size).
    pub fn from_fd(fd: BorrowedFd<'_>, offset: u64, len: u64, access: Access) -> Result<Mapping> {
        let size = nix::sys::stat::fstat(fd)
            .map_err(|e| Error::io("cannot fstat the buffer fd", e))?
            .st_size;
        let size = u64::try_from(size).unwrap_or(0);
        check_map_range(size, page_size(), offset, len)?;
        Self::map(fd, offset, len, access, LeaseId([0; 16]), None)
    }

    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        access: Access,
        lease: LeaseId,
        flag: Option<Arc<RevokeFlag>>,
    ) -> Result<Mapping> {
        use nix::sys::mman::{MapFlags, ProtFlags};
        let too_big = || Error::OutOfRange {
            what: "mapping",
            offset,
            length: len,
            size: isize::MAX as u64,
            within: "address space",
        };
        let length = usize::try_from(len)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(too_big)?;
        let file_offset = libc::off_t::try_from(offset).map_err(|_| too_big())?;
        let writable = access == Access::ReadWrite;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh MAP_SHARED mapping chosen by the kernel (no fixed
        // address), so no existing memory is replaced; it is only accessed
        // through volatile raw-pointer operations, never as a Rust reference.
        let mapped = unsafe {
            nix::sys::mman::mmap(None, length, prot, MapFlags::MAP_SHARED, fd, file_offset)
        };
        let ptr = match mapped {
            Ok(p) => p.cast::<u8>(),
            Err(errno) => {
                if let Some(reason) = flag.as_ref().and_then(|f| f.get()) {
                    return Err(Error::Revoked { lease, reason });
                }
                return Err(match errno {
                    nix::errno::Errno::EINVAL | nix::errno::Errno::ENODEV => {
                        Error::MapUnsupported { errno }
                    }
                    nix::errno::Errno::EACCES => Error::io(
                        format!(
                            "the kernel refused a {} mapping of this buffer (EACCES): a \
                             read-only buffer cannot be mapped writable",
                            if writable { "writable" } else { "readable" }
                        ),
                        errno,
                    ),
                    _ => Error::io(
                        format!("cannot mmap {len:#x} bytes at buffer offset {offset:#x}"),
                        errno,
                    ),
                });
            }
        };
        Ok(Mapping {
            ptr,
            len: length.get(),
            writable,
            slice_offset: offset,
            lease,
            flag,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the mapping starts, relative to the slice.
    pub fn slice_offset(&self) -> u64 {
        self.slice_offset
    }

    /// Whether writes are allowed (a read-write slice).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Address of the first byte, for code that does its own accesses (e.g.
    /// a driver's register macros). Such accesses skip every check here.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Pointer to `size` bytes at `offset`, after every check.
    fn at(&self, offset: u64, size: u64, align: u64, write: bool) -> Result<*mut u8> {
        if let Some(reason) = self.flag.as_ref().and_then(|f| f.get()) {
            return Err(Error::Revoked {
                lease: self.lease,
                reason,
            });
        }
        if write && !self.writable {
            return Err(Error::ReadOnly { lease: self.lease });
        }
        check_access(self.len as u64, offset, size, align)?;
        // `offset < len <= isize::MAX`, so the cast and the add stay in bounds.
        // SAFETY: checked above: offset + size <= len, so the result lies
        // inside (or one past) the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(offset as usize) })
    }

    fn read<T: Copy>(&self, offset: u64) -> Result<T> {
        let size = std::mem::size_of::<T>() as u64;
        let p = self.at(offset, size, size, false)?;
        // SAFETY: `at` checked bounds and natural alignment (the mapping is
        // page aligned); the memory is mapped readable; any bit pattern is a
        // valid integer.
        Ok(unsafe { p.cast::<T>().read_volatile() })
    }

    fn write<T: Copy>(&self, offset: u64, value: T) -> Result<()> {
        let size = std::mem::size_of::<T>() as u64;
        let p = self.at(offset, size, size, true)?;
        // SAFETY: `at` checked bounds, alignment and that the mapping is
        // writable; no Rust reference aliases device memory.
        unsafe { p.cast::<T>().write_volatile(value) };
        Ok(())
    }

    /// One 8-bit load.
    pub fn read_u8(&self, offset: u64) -> Result<u8> {
        self.read(offset)
    }
    /// One 16-bit load (offset 2-byte aligned).
    pub fn read_u16(&self, offset: u64) -> Result<u16> {
        self.read(offset)
    }
    /// One 32-bit load (offset 4-byte aligned).
    pub fn read_u32(&self, offset: u64) -> Result<u32> {
        self.read(offset)
    }
    /// One 64-bit load (offset 8-byte aligned).
    pub fn read_u64(&self, offset: u64) -> Result<u64> {
        self.read(offset)
    }
    /// One 8-bit store.
    pub fn write_u8(&self, offset: u64, value: u8) -> Result<()> {
        self.write(offset, value)
    }
    /// One 16-bit store (offset 2-byte aligned).
    pub fn write_u16(&self, offset: u64, value: u16) -> Result<()> {
        self.write(offset, value)
    }
    /// One 32-bit store (offset 4-byte aligned).
    pub fn write_u32(&self, offset: u64, value: u32) -> Result<()> {
        self.write(offset, value)
    }
    /// One 64-bit store (offset 8-byte aligned).
    pub fn write_u64(&self, offset: u64, value: u64) -> Result<()> {
        self.write(offset, value)
    }

    /// Copies `buf.len()` bytes from `offset`, with the widest naturally
    /// aligned volatile loads (up to 8 bytes) that fit.
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.at(offset, buf.len() as u64, 1, false)?;
        let mut i = 0;
        while i < buf.len() {
            let at = offset + i as u64;
            let w = chunk_width(at, buf.len() - i);
            let dst = &mut buf[i..i + w];
            match w {
                8 => dst.copy_from_slice(&self.read_u64(at)?.to_ne_bytes()),
                4 => dst.copy_from_slice(&self.read_u32(at)?.to_ne_bytes()),
                2 => dst.copy_from_slice(&self.read_u16(at)?.to_ne_bytes()),
                _ => dst[0] = self.read_u8(at)?,
            }
            i += w;
        }
        Ok(())
    }

    /// Copies `data` to `offset`, with the widest naturally aligned volatile
    /// stores (up to 8 bytes) that fit. Bytes are in memory order.
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.at(offset, data.len() as u64, 1, true)?;
        let mut i = 0;
        while i < data.len() {
            let at = offset + i as u64;
            let w = chunk_width(at, data.len() - i);
            let src = &data[i..i + w];
            match w {
                8 => self.write_u64(at, u64::from_ne_bytes(src.try_into().expect("8 bytes")))?,
                4 => self.write_u32(at, u32::from_ne_bytes(src.try_into().expect("4 bytes")))?,
                2 => self.write_u16(at, u16::from_ne_bytes(src.try_into().expect("2 bytes")))?,
                _ => self.write_u8(at, src[0])?,
            }
            i += w;
        }
        Ok(())
    }
}

/// Widest access (8, 4, 2 or 1 bytes) naturally aligned at `at` that fits in
/// `left` bytes.
pub(crate) fn chunk_width(at: u64, left: usize) -> usize {
    [8usize, 4, 2]
        .into_iter()
        .find(|&w| at % w as u64 == 0 && left >= w)
        .unwrap_or(1)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, unmapped once;
        // no reference into the mapping can outlive `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_range_must_be_page_aligned_and_inside_the_slice() {
        let page = 4096;
        assert!(check_map_range(0x4000, page, 0, 0x4000).is_ok());
        assert!(check_map_range(0x4000, page, 0x1000, 0x3000).is_ok());
        assert!(check_map_range(0x4000, page, 0x3000, 0x10).is_ok());
        assert!(matches!(
            check_map_range(0x4000, page, 0x800, 0x1000),
            Err(Error::Unaligned {
                offset: 0x800,
                align: 4096,
                ..
            })
        ));
        assert!(matches!(
            check_map_range(0x4000, page, 0x1000, 0x3001),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_map_range(0x4000, page, 0x4000, 0x1000),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_map_range(0x4000, page, 0, 0),
            Err(Error::OutOfRange { .. })
        ));
        // offset + len overflowing u64 is out of range, not a wrap-around.
        assert!(matches!(
            check_map_range(u64::MAX, page, u64::MAX - 0xfff, 0x2000),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn accesses_are_bounds_and_alignment_checked() {
        assert!(check_access(0x1000, 0xffc, 4, 4).is_ok());
        assert!(check_access(0x1000, 0x1000, 0, 1).is_ok());
        assert!(matches!(
            check_access(0x1000, 0xffd, 4, 4),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_access(0x1000, 0x1000, 1, 1),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            check_access(0x1000, 2, 4, 4),
            Err(Error::Unaligned {
                what: "u32 access",
                offset: 2,
                align: 4
            })
        ));
        assert!(matches!(
            check_access(0x1000, 4, 8, 8),
            Err(Error::Unaligned { .. })
        ));
        assert!(matches!(
            check_access(0x1000, u64::MAX, 2, 1),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn copies_use_the_widest_aligned_access() {
        assert_eq!(chunk_width(0, 16), 8);
        assert_eq!(chunk_width(0, 7), 4);
        assert_eq!(chunk_width(4, 8), 4);
        assert_eq!(chunk_width(6, 8), 2);
        assert_eq!(chunk_width(1, 8), 1);
        assert_eq!(chunk_width(8, 1), 1);
    }

    fn memfd(size: u64) -> std::os::fd::OwnedFd {
        let fd = nix::sys::memfd::memfd_create(c"barkeep-test", nix::sys::memfd::MFdFlags::empty())
            .expect("memfd");
        nix::unistd::ftruncate(&fd, size as i64).expect("ftruncate");
        fd
    }

    #[test]
    fn mapping_reads_back_writes_and_refuses_writes_when_read_only() {
        use std::os::fd::AsFd;
        let fd = memfd(0x2000);
        let rw = Mapping::from_fd(fd.as_fd(), 0x1000, 0x1000, Access::ReadWrite).unwrap();
        rw.write_u32(0x10, 0xdead_beef).unwrap();
        rw.write_bytes(0x21, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
            .unwrap();
        let ro = Mapping::from_fd(fd.as_fd(), 0, 0x2000, Access::ReadOnly).unwrap();
        assert_eq!(ro.read_u32(0x1010).unwrap(), 0xdead_beef);
        let mut got = [0u8; 11];
        ro.read_bytes(0x1021, &mut got).unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert!(matches!(ro.write_u8(0, 1), Err(Error::ReadOnly { .. })));
        assert!(matches!(rw.read_u64(0x1000), Err(Error::OutOfRange { .. })));
        assert!(matches!(rw.read_u16(1), Err(Error::Unaligned { .. })));
        // Past the end of the buffer is refused before mmap is asked.
        assert!(matches!(
            Mapping::from_fd(fd.as_fd(), 0x1000, 0x2000, Access::ReadOnly),
            Err(Error::OutOfRange { size: 0x2000, .. })
        ));
    }

    #[test]
    fn a_revoked_lease_refuses_every_access() {
        use std::os::fd::AsFd;
        let fd = memfd(0x1000);
        let flag = Arc::new(RevokeFlag::default());
        let lease = LeaseId([7; 16]);
        let m = Mapping::map(
            fd.as_fd(),
            0,
            0x1000,
            Access::ReadWrite,
            lease,
            Some(flag.clone()),
        )
        .unwrap();
        m.write_u8(0, 1).unwrap();
        flag.set(barkeep_protocol::RevokeReason::Admin);
        assert!(matches!(
            m.read_u8(0),
            Err(Error::Revoked {
                reason: barkeep_protocol::RevokeReason::Admin,
                ..
            })
        ));
        let mut b = [0u8; 4];
        assert!(matches!(
            m.read_bytes(0, &mut b),
            Err(Error::Revoked { .. })
        ));
    }
}
