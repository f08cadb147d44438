//! Who is on the other end of a session: captured once, right after accept,
//! from the kernel (SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD or pidfd_open,
//! /proc/PID/cgroup confirmed against the pidfd, SO_PEERSEC), never from
//! anything the client says. A peer whose identity cannot be established is
//! refused.
//!
//! Everything is as it was when the peer connected (credentials) or was
//! accepted (cgroup, label): a later setuid() or cgroup move in the peer
//! does not change the session's identity, which is what makes it usable
//! for a session's lifetime.

use crate::sys;
use barkeep_protocol::PeerIdentity;
use nix::errno::Errno;
use std::os::fd::{AsFd, OwnedFd};

pub use crate::broker::Peer;

/// Why a peer could not be identified (the text goes to the peer in
/// `Refused` and to the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(pub String);

fn fail(s: impl Into<String>) -> IdentityError {
    IdentityError(s.into())
}

/// uid, gid and pid of the peer (SO_PEERCRED): cheap, for admission
/// before the rest of the identity is read.
pub fn credentials(socket: &impl AsFd) -> Result<(u32, u32, i32), IdentityError> {
    sys::peer_credentials(socket.as_fd()).map_err(|e| {
        fail(format!(
            "cannot read the peer's credentials (SO_PEERCRED): {e}"
        ))
    })
}

/// Reads the peer's full identity from a connected Unix socket. Call it
/// right after accept.
pub fn of_peer(socket: &impl AsFd) -> Result<Peer, IdentityError> {
    let fd = socket.as_fd();
    let (uid, gid, pid) = credentials(&fd)?;
    if pid <= 0 {
        return Err(fail(
            "the peer's process is not visible from barkeepd's pid namespace (SO_PEERCRED pid 0); connect from a namespace below the daemon's",
        ));
    }
    let groups = match sys::peer_groups(fd) {
        Ok(g) => g,
        // Kernels before 4.13 lack SO_PEERGROUPS: group grants then match
        // only the primary gid, which is stricter, not looser.
        Err(Errno::ENOPROTOOPT) => Vec::new(),
        Err(e) => {
            return Err(fail(format!(
                "cannot read the peer's groups (SO_PEERGROUPS): {e}"
            )))
        }
    };
    let pidfd = match sys::peer_pidfd(fd) {
        Ok(p) => p,
        // Before Linux 6.5: open a pidfd by number, and check that the
        // process it names existed when we looked (see `started_before`).
        Err(Errno::ENOPROTOOPT) | Err(Errno::EINVAL) => pidfd_by_number(pid)?,
        Err(Errno::ESRCH) => return Err(exited(pid)),
        Err(e) => {
            return Err(fail(format!(
                "cannot get a pidfd for peer pid {pid} (SO_PEERPIDFD): {e}"
            )))
        }
    };
    let cgroup = cgroup_of(pid)?;
    // The cgroup was read by pid number: it belongs to the peer only if
    // the peer still lives (a live process keeps its pid, so the number
    // was not recycled in between).
    match sys::pidfd_alive(pidfd.as_fd()) {
        Ok(true) => {}
        Ok(false) => return Err(exited(pid)),
        Err(e) => {
            return Err(fail(format!(
                "cannot check that peer pid {pid} is alive: {e}"
            )))
        }
    }
    let label = sys::peer_security(fd).map_err(|e| {
        fail(format!(
            "cannot read the peer's security label (SO_PEERSEC): {e}"
        ))
    })?;
    Ok(Peer {
        identity: PeerIdentity {
            uid,
            gid,
            pid,
            groups,
            cgroup,
            label,
        },
        pidfd,
    })
}

fn exited(pid: i32) -> IdentityError {
    fail(format!(
        "peer pid {pid} exited before barkeepd could identify it; connect from a process that stays alive"
    ))
}

/// The fallback for kernels without SO_PEERPIDFD. Weaker: a pid recycled
/// between the peer's connect and our accept would go unnoticed, which
/// needs the peer to exit and the pid space to wrap in that window.
fn pidfd_by_number(pid: i32) -> Result<OwnedFd, IdentityError> {
    let now = sys::boot_ticks().map_err(|e| fail(format!("cannot read the clock: {e}")))?;
    let pidfd = match sys::pidfd_open(pid) {
        Ok(p) => p,
        Err(Errno::ESRCH) => return Err(exited(pid)),
        Err(e) => {
            return Err(fail(format!(
                "cannot open a pidfd for peer pid {pid} (pidfd_open, Linux 5.3+): {e}"
            )))
        }
    };
    match start_ticks(pid) {
        Some(start) if start <= now => Ok(pidfd),
        Some(_) => Err(fail(format!(
            "pid {pid} belongs to a process that started after the connection was accepted (the peer exited and its pid was reused)"
        ))),
        None => Err(exited(pid)),
    }
}

/// Start time of a process in clock ticks since boot (/proc/PID/stat
/// field 22), read after the command name, which may contain anything.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); starttime is 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The cgroup v2 path of a process (the `0::` line of /proc/PID/cgroup),
/// `None` when the host has no cgroup v2 hierarchy or hides it from us
/// (cgroup grants then never match: stricter, not looser).
fn cgroup_of(pid: i32) -> Result<Option<String>, IdentityError> {
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => Ok(parse_cgroup(&text)),
        // The peer exited, or /proc does not show it (not mounted, another
        // pid namespace's /proc): the liveness check that follows tells
        // the two apart.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(exited(pid)),
        Err(e) => {
            tracing::debug!(
                pid,
                "cannot read /proc/{pid}/cgroup ({e}); cgroup grants will not match this peer"
            );
            Ok(None)
        }
    }
}

/// The path of the `0::PATH` line, if any.
pub fn parse_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
        .filter(|p| p.starts_with('/'))
}

// The tests fork a child to connect from another process.
#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_a_local_peer_is_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = of_peer(&a).unwrap();
        let id = peer.identity;
        assert_eq!(id.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(id.gid, nix::unistd::getegid().as_raw());
        assert_eq!(id.pid, std::process::id() as i32);
        let ours = parse_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
        assert_eq!(id.cgroup, ours);
        assert!(sys::pidfd_alive(peer.pidfd.as_fd()).unwrap());
    }

    #[test]
    fn cgroup_lines() {
        assert_eq!(
            parse_cgroup("0::/system.slice/a.service\n"),
            Some("/system.slice/a.service".into())
        );
        assert_eq!(
            parse_cgroup("12:pids:/x\n1:name=systemd:/y\n0::/\n"),
            Some("/".into()),
            "hybrid hosts have a 0:: line too"
        );
        assert_eq!(parse_cgroup("12:pids:/x\n"), None, "v1 only");
        assert_eq!(parse_cgroup("0::garbage\n"), None);
    }

    #[test]
    fn start_time_of_ourselves_is_in_the_past() {
        let start = start_ticks(std::process::id() as i32).unwrap();
        assert!(start <= sys::boot_ticks().unwrap());
        assert!(pidfd_by_number(std::process::id() as i32).is_ok());
        assert_eq!(start_ticks(-5), None);
    }

    #[test]
    fn a_peer_that_is_gone_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // A child connects and exits (and is reaped) before we accept.
        let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
        // SAFETY: the child only makes raw syscalls (socket, connect, _exit).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType};
                let ok = socket(
                    AddressFamily::Unix,
                    SockType::Stream,
                    SockFlag::empty(),
                    None,
                )
                .and_then(|fd| connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map(|_| fd))
                .map(std::mem::forget)
                .is_ok();
                // SAFETY: leaving the forked child without running destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        let (conn, _) = listener.accept().unwrap();
        let e = of_peer(&conn).unwrap_err();
        assert!(
            e.0.contains("exited before barkeepd could identify it"),
            "{e}"
        );
    }
}
