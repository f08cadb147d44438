//! Memfds and file calls of the simulated backend: create, size, seal,
//! reopen read-only, positioned reads and writes, holes.

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::MFdFlags;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Creates a close-on-exec memfd that allows sealing, named `name` (shows
/// as `/memfd:NAME` in /proc/PID/maps), with size `len`.
pub fn memfd(name: &str, len: u64) -> Result<OwnedFd, Errno> {
    let fd =
        nix::sys::memfd::memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    ftruncate(fd.as_fd(), len)?;
    Ok(fd)
}

/// Sets the size of a file.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EFBIG)?;
    nix::unistd::ftruncate(fd, len)
}

/// Forbids growing the file behind `fd` (F_SEAL_GROW), so a client cannot
/// make its slice larger than the lease.
pub fn seal_grow(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::fcntl::fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).map(drop)
}

/// Forbids growing the file behind `fd` and adding any seal after this one
/// (F_SEAL_GROW | F_SEAL_SEAL): seals belong to the file, not to an open
/// file, so without F_SEAL_SEAL a client holding a writable fd could add
/// F_SEAL_SHRINK and make the daemon's truncating revoke fail.
pub fn seal_grow_for_good(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::fcntl::fcntl(
        fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL),
    )
    .map(drop)
}

/// Sets the permission bits of the file behind `fd`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode as libc::mode_t))
}

/// Opens the file behind `fd` again, read-only, as a new open file
/// description (so its access mode is O_RDONLY whatever `fd`'s is).
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    reopen(fd, OFlag::O_RDONLY)
}

/// Opens the file behind `fd` again, read-write, as a new open file
/// description: what is done to it (O_APPEND, O_NONBLOCK, its offset)
/// does not reach `fd`'s.
pub fn reopen_read_write(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    reopen(fd, OFlag::O_RDWR)
}

fn reopen(fd: BorrowedFd<'_>, access: OFlag) -> Result<OwnedFd, Errno> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::fcntl::open(path.as_str(), access | OFlag::O_CLOEXEC, Mode::empty())
}

/// Reads exactly `out.len()` bytes at `offset` (short reads past the end of
/// the file are an error).
pub fn pread_exact(fd: BorrowedFd<'_>, out: &mut [u8], offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < out.len() {
        let off = libc::off_t::try_from(offset + done as u64).map_err(|_| Errno::EFBIG)?;
        match nix::sys::uio::pread(fd, &mut out[done..], off) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `data` at `offset`.
pub fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < data.len() {
        let off = libc::off_t::try_from(offset + done as u64).map_err(|_| Errno::EFBIG)?;
        match nix::sys::uio::pwrite(fd, &data[done..], off) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `len` bytes at `offset` of the file behind `fd` are a hole: no
/// data was ever written there (or it was punched), so they read as zeros
/// and hold no memory (SEEK_DATA; page-granular on tmpfs and memfds).
pub fn is_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<bool, Errno> {
    let off = libc::off_t::try_from(offset).map_err(|_| Errno::EFBIG)?;
    match nix::unistd::lseek(fd, off, nix::unistd::Whence::SeekData) {
        Ok(data) => Ok(data as u64 >= offset.saturating_add(len)),
        // No data at or after `offset` (or `offset` is past the end).
        Err(Errno::ENXIO) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Turns `len` bytes at `offset` into a hole (they read as zeros and free
/// their memory); the size stays.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<(), Errno> {
    use nix::fcntl::FallocateFlags;
    let off = libc::off_t::try_from(offset).map_err(|_| Errno::EFBIG)?;
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EFBIG)?;
    nix::fcntl::fallocate(
        fd,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
}

/// Size of the file behind `fd`.
pub fn file_size(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    Ok(nix::sys::stat::fstat(fd)?.st_size as u64)
}

/// Maps the first page of `buf` shared and read-only, then unmaps it:
/// `Ok` when the fd can be mapped (a DMABUF probe).
pub fn try_mmap(buf: BorrowedFd<'_>, page: u64) -> nix::Result<()> {
    let len = NonZeroUsize::new(page as usize).ok_or(Errno::EINVAL)?;
    // SAFETY: a fresh mapping at an address the kernel picks; nothing reads
    // through it, and it is unmapped right away with its own length.
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            buf,
            0,
        )
    }?;
    // SAFETY: `ptr` is the mapping made above, `len` long, not used after.
    unsafe { munmap(ptr, len.get()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_what_was_never_written_or_was_punched() {
        let fd = memfd("bk:test", 4 * 4096).unwrap();
        assert!(is_hole(fd.as_fd(), 0, 4 * 4096).unwrap());
        pwrite_all(fd.as_fd(), b"x", 4096 + 7).unwrap();
        assert!(is_hole(fd.as_fd(), 0, 4096).unwrap());
        assert!(!is_hole(fd.as_fd(), 0, 2 * 4096).unwrap());
        assert!(!is_hole(fd.as_fd(), 4096, 4096).unwrap());
        assert!(is_hole(fd.as_fd(), 2 * 4096, 2 * 4096).unwrap());
        assert!(is_hole(fd.as_fd(), 8 * 4096, 4096).unwrap(), "past the end");
        punch_hole(fd.as_fd(), 4096, 4096).unwrap();
        assert!(is_hole(fd.as_fd(), 0, 4 * 4096).unwrap());
        assert_eq!(file_size(fd.as_fd()).unwrap(), 4 * 4096, "size kept");
        let mut b = [1u8; 8];
        pread_exact(fd.as_fd(), &mut b, 4096).unwrap();
        assert_eq!(b, [0; 8]);
    }

    #[test]
    fn memfd_has_the_asked_size_and_cannot_grow_once_sealed() {
        let fd = memfd("bk:test", 8192).unwrap();
        assert_eq!(file_size(fd.as_fd()).unwrap(), 8192);
        seal_grow(fd.as_fd()).unwrap();
        assert_eq!(ftruncate(fd.as_fd(), 16384), Err(Errno::EPERM));
        ftruncate(fd.as_fd(), 0).unwrap();
        assert_eq!(file_size(fd.as_fd()).unwrap(), 0);
    }
}
