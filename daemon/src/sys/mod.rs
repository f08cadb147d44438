//! Small raw helpers around file descriptors: page size, peer credentials,
//! supplementary groups, pidfd and LSM label of a Unix socket's peer,
//! pidfds, the fd limit, memfds for the simulated backend. The only `unsafe`
//! in the daemon outside `backend/vfio/`.

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::MFdFlags;
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The system page size (the unit of slice offsets and lengths).
pub fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

/// uid, gid and pid of the peer of a connected Unix socket (SO_PEERCRED),
/// as they were when the peer connected.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> Result<(u32, u32, i32), Errno> {
    let cred = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok((cred.uid(), cred.gid(), cred.pid()))
}

/// Supplementary groups of the peer of a connected Unix socket
/// (SO_PEERGROUPS, Linux 4.13+), as they were when the peer connected.
pub fn peer_groups(fd: BorrowedFd<'_>) -> Result<Vec<u32>, Errno> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a live buffer of `len` bytes that getsockopt
        // fills with at most `len` bytes and updates `len` to what it wrote
        // (or, on ERANGE, to what it needs).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = Errno::last();
        if err == Errno::ERANGE && count > groups.len() && count <= 65536 {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// A pidfd for the peer of a connected Unix socket (SO_PEERPIDFD, Linux
/// 6.5+): the process that connected, whatever happened to its pid since.
/// `ENOPROTOOPT` on older kernels.
pub fn peer_pidfd(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` is a live c_int and `len` its size; the kernel writes
    // at most that many bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    if pidfd < 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// The LSM label of the peer of a connected Unix socket (SO_PEERSEC), or
/// `None` when no LSM provides one.
pub fn peer_security(fd: BorrowedFd<'_>) -> Result<Option<String>, Errno> {
    let mut buf = vec![0u8; 256];
    loop {
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: `buf` is a live buffer of `len` bytes; the kernel writes at
        // most `len` bytes and updates `len` (on ERANGE, to what it needs).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERSEC,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            buf.truncate(len as usize);
            while buf.last() == Some(&0) {
                buf.pop();
            }
            if buf.is_empty() {
                return Ok(None);
            }
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        match Errno::last() {
            Errno::ENOPROTOOPT => return Ok(None),
            Errno::ERANGE if (len as usize) > buf.len() && (len as usize) <= 65536 => {
                buf.resize(len as usize, 0);
            }
            e => return Err(e),
        }
    }
}

/// `pidfd_open(pid, 0)` (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

/// Whether the process behind a pidfd is still alive (signal 0: checks
/// only; EPERM means alive but not ours to signal).
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> Result<bool, Errno> {
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks
    // that the process exists and may be signalled.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::ESRCH => Ok(false),
        Errno::EPERM => Ok(true),
        e => Err(e),
    }
}

/// Time since boot (CLOCK_BOOTTIME) in clock ticks, the unit of a
/// process's start time in /proc/PID/stat.
pub fn boot_ticks() -> Result<u64, Errno> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec the call fills.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Err(Errno::last());
    }
    let hz = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 100,
    };
    Ok(ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000)
}

/// Raises the soft limit on open files towards `want` (up to the hard
/// limit); returns the soft limit now in force.
// rlim_t is u64 here but not on every target.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit(want: u64) -> Result<u64, Errno> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit the call fills.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(Errno::last());
    }
    if lim.rlim_cur >= want as libc::rlim_t {
        return Ok(lim.rlim_cur as u64);
    }
    let new = libc::rlimit {
        rlim_cur: (want as libc::rlim_t).min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit that only raises the soft limit
    // within the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(Errno::last());
    }
    Ok(new.rlim_cur as u64)
}

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

/// Sets the permission bits of the file behind `fd`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode as libc::mode_t))
}

/// Opens the file behind `fd` again, read-only, as a new open file
/// description (so its access mode is O_RDONLY whatever `fd`'s is).
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
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

/// The most datagrams [`recv_batch`] takes in one call.
pub const RECV_BATCH_MAX: usize = 8;

/// Receives up to `bufs.len()` (at most [`RECV_BATCH_MAX`]) datagrams
/// without waiting, in one `recvmmsg(2)`: their lengths go to `lens`, the
/// count is returned. A count below `bufs.len()` means the socket's queue
/// was empty when the call returned (no further `EAGAIN` call is needed to
/// learn it); `EAGAIN` when nothing was queued. A datagram longer than its
/// buffer is cut to the buffer's length (give one byte more than the
/// largest allowed to recognise them). No ancillary data is taken: fds a
/// peer attaches are closed by the kernel, never installed here.
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    lens: &mut [usize],
) -> Result<usize, Errno> {
    let n = bufs.len().min(lens.len()).min(RECV_BATCH_MAX);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; RECV_BATCH_MAX];
    // SAFETY: mmsghdr is plain data (pointers, lengths, flags) for which
    // all-zero bytes are a valid value: no name, no control, no iovec.
    let mut hdrs: [libc::mmsghdr; RECV_BATCH_MAX] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iov[i].iov_base = bufs[i].as_mut_ptr().cast();
        iov[i].iov_len = bufs[i].len();
        hdrs[i].msg_hdr.msg_iov = &mut iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdrs[..n]` point at `n` iovecs that each describe a live,
    // writable buffer of the stated length; the kernel writes only within
    // them and into `hdrs`. No timeout pointer.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let got = usize::try_from(Errno::result(got)?).unwrap_or(0);
    for i in 0..got {
        lens[i] = hdrs[i].msg_len as usize;
    }
    Ok(got)
}

/// Size of the file behind `fd`.
pub fn file_size(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    Ok(nix::sys::stat::fstat(fd)?.st_size as u64)
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

    #[test]
    fn pidfds_of_ourselves_and_of_a_dead_child() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        match peer_pidfd(a.as_fd()) {
            Ok(fd) => assert!(pidfd_alive(fd.as_fd()).unwrap()),
            Err(e) => assert_eq!(e, Errno::ENOPROTOOPT, "only old kernels lack it"),
        }
        let me = pidfd_open(std::process::id() as i32).unwrap();
        assert!(pidfd_alive(me.as_fd()).unwrap());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(!pidfd_alive(fd.as_fd()).unwrap(), "a reaped child is gone");
        assert!(peer_security(a.as_fd()).is_ok());
        assert!(boot_ticks().unwrap() > 0);
    }

    #[test]
    fn peer_credentials_of_a_socketpair_are_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (uid, gid, pid) = peer_credentials(a.as_fd()).unwrap();
        assert_eq!(uid, nix::unistd::geteuid().as_raw());
        assert_eq!(gid, nix::unistd::getegid().as_raw());
        assert_eq!(pid, std::process::id() as i32);
        let groups = peer_groups(a.as_fd()).unwrap();
        let ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut g1 = groups.clone();
        let mut g2 = ours.clone();
        g1.sort();
        g2.sort();
        assert_eq!(g1, g2);
    }
}
