//! Processes and limits: page size, pidfds, boot time of a process, the
//! fd limit.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The system page size (the unit of slice offsets and lengths).
pub fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
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

/// CLOCK_MONOTONIC in microseconds (systemd's `MONOTONIC_USEC=`); 0 if
/// the clock cannot be read.
pub fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    if rc != 0 {
        return 0;
    }
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1_000
}

/// Takes ownership of fd `raw`, which a parent (systemd) passed to this
/// process; `None` when no such fd is open. Call once per fd, for fds that
/// nothing else in the process owns.
pub fn adopt_inherited_fd(raw: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only asks whether `raw` is open; it touches nothing.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `raw` is open and was passed to this process by its parent
    // (the caller checked LISTEN_PID); nothing else in the process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::peer::{peer_pidfd, peer_security};
    use std::os::fd::AsFd;

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
}
