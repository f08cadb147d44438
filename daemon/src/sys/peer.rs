//! Who is on the other end of a Unix socket: credentials, supplementary
//! groups, pidfd and LSM label, as the kernel recorded them.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

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
