//! Who is on the other end of a session: captured once, at accept, from the
//! kernel (SO_PEERCRED, SO_PEERGROUPS), never from anything the client says.
//!
//! Room for more: pidfd, cgroup and LSM label fill the remaining fields of
//! [`PeerIdentity`] later.

use crate::fdutil;
use barkeep_protocol::PeerIdentity;
use std::os::fd::AsFd;

/// Reads the peer's identity from a connected Unix socket.
///
/// The credentials are those the peer had when it connected; a later
/// setuid() in the peer does not change them (which is what makes them
/// trustworthy for a session's lifetime).
pub fn of_peer(socket: &impl AsFd) -> std::io::Result<PeerIdentity> {
    let fd = socket.as_fd();
    let (uid, gid, pid) = fdutil::peer_credentials(fd)?;
    let groups = match fdutil::peer_groups(fd) {
        Ok(g) => g,
        // Kernels before 4.13 lack SO_PEERGROUPS: group grants then match
        // only the primary gid, which is stricter, not looser.
        Err(nix::Error::ENOPROTOOPT) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(PeerIdentity {
        uid,
        gid,
        pid,
        groups,
        cgroup: None,
        label: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_a_local_peer_is_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let id = of_peer(&a).unwrap();
        assert_eq!(id.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(id.gid, nix::unistd::getegid().as_raw());
        assert_eq!(id.pid, std::process::id() as i32);
    }
}
