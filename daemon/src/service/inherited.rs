//! The fds a daemon starts with (systemd's `LISTEN_FDS` or a takeover's),
//! sorted by what they are.

use crate::persist::journal::LISTENER_FD_NAME;
use crate::persist::state::Snapshot;
use barkeep_protocol::LeaseId;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use tokio_seqpacket::UnixSeqpacketListener;

/// The fds a daemon starts with, sorted by what they are.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The listening socket (`barkeep`, or the only listening socket).
    pub listener: Option<OwnedFd>,
    /// Device fds: device name -> kind -> fd.
    pub devices: BTreeMap<String, BTreeMap<String, OwnedFd>>,
    /// Lease buffers by lease id (`lease-ID`: a takeover's, or what an
    /// older barkeepd stored one by one).
    pub leases: BTreeMap<LeaseId, OwnedFd>,
    /// Stash segments (`stash-N`), holding the other lease buffers.
    pub segments: Vec<(u64, OwnedFd)>,
    /// The state that goes with them (state file, or a takeover's).
    pub snapshot: Option<Snapshot>,
    /// Whether the device and lease fds are in systemd's fd store already.
    pub from_store: bool,
    /// Names that meant nothing (closed, and removed from the store).
    pub unknown: Vec<String>,
}

impl Inherited {
    /// Sorts named fds (from `LISTEN_FDS`/`LISTEN_FDNAMES` or a takeover).
    pub fn from_named(fds: Vec<(String, OwnedFd)>, from_store: bool) -> Inherited {
        let mut me = Inherited {
            from_store,
            ..Inherited::default()
        };
        let mut sockets = Vec::new();
        for (name, fd) in fds {
            if let Some(rest) = name.strip_prefix("dev-") {
                if let Some((device, kind)) = rest.rsplit_once('-') {
                    me.devices
                        .entry(device.to_string())
                        .or_default()
                        .insert(kind.to_string(), fd);
                    continue;
                }
            }
            if let Some(n) = crate::persist::stash::parse_segment_name(&name) {
                me.segments.push((n, fd));
                continue;
            }
            if let Some(id) = name.strip_prefix("lease-").and_then(|h| h.parse().ok()) {
                me.leases.insert(id, fd);
                continue;
            }
            if is_listening_seqpacket(&fd) {
                sockets.push((name, fd));
                continue;
            }
            tracing::warn!(fd = %name, "ignoring an inherited fd of unknown purpose");
            me.unknown.push(name);
        }
        // The one named `barkeep` (the socket unit's FileDescriptorName=),
        // else the first listening socket.
        let pick = sockets
            .iter()
            .position(|(n, _)| n == LISTENER_FD_NAME)
            .unwrap_or(0);
        if !sockets.is_empty() {
            let (name, fd) = sockets.swap_remove(pick);
            tracing::info!(fd = %name, "using the inherited listening socket");
            me.listener = Some(fd);
        }
        for (name, _) in sockets {
            tracing::warn!(fd = %name, "ignoring an extra inherited listening socket");
        }
        me
    }

    /// Whether any device or lease fd came with it.
    pub fn has_state(&self) -> bool {
        !self.devices.is_empty() || !self.leases.is_empty() || !self.segments.is_empty()
    }
}

/// Whether `fd` is a listening SOCK_SEQPACKET socket.
fn is_listening_seqpacket(fd: &OwnedFd) -> bool {
    use nix::sys::socket::{getsockopt, sockopt};
    matches!(
        getsockopt(fd, sockopt::SockType),
        Ok(nix::sys::socket::SockType::SeqPacket)
    ) && getsockopt(fd, sockopt::AcceptConn).unwrap_or(false)
}

/// A tokio listener for an inherited listening socket (made non-blocking).
pub fn listener_from(fd: OwnedFd) -> Result<UnixSeqpacketListener, String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(&fd, FcntlArg::F_GETFL)
        .map_err(|e| format!("cannot read the inherited socket's flags: {e}"))?;
    fcntl(
        &fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("cannot make the inherited socket non-blocking: {e}"))?;
    UnixSeqpacketListener::try_from(fd)
        .map_err(|e| format!("cannot serve on the inherited socket: {e}"))
}
