//! The few raw system calls of the blocking transport: a SOCK_SEQPACKET
//! connect, and recvmsg() of one datagram with the fds riding on it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use tokio_seqpacket::ancillary::{AncillaryMessageReader, OwnedAncillaryMessage};

/// Room for the control data of a few fds: a daemon must send at most one,
/// but any extra ones must still be received (and closed), not left behind.
pub(crate) const CMSG_BUF: usize = 128;

/// One received datagram.
pub(crate) struct Received {
    /// Data bytes (0 means end of connection).
    pub(crate) len: usize,
    /// The datagram did not fit in the buffer.
    pub(crate) truncated: bool,
    /// File descriptors that came with it (close-on-exec).
    pub(crate) fds: Vec<OwnedFd>,
    /// The kernel dropped fds that came with it (MSG_CTRUNC: this process
    /// is at its open file limit).
    pub(crate) fds_dropped: bool,
}

/// Takes ownership of every fd in received control data.
/// The fds of a received datagram, and whether the kernel dropped some
/// (MSG_CTRUNC: it could not install them, e.g. at RLIMIT_NOFILE).
pub(crate) fn collect_fds(ancillary: AncillaryMessageReader<'_>) -> (Vec<OwnedFd>, bool) {
    let dropped = ancillary.is_truncated();
    let mut fds = Vec::new();
    for msg in ancillary.into_messages() {
        if let OwnedAncillaryMessage::FileDescriptors(owned) = msg {
            fds.extend(owned);
        }
    }
    (fds, dropped)
}

/// Connects a blocking SOCK_SEQPACKET socket to `path`.
pub(crate) fn connect(path: &Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    loop {
        match nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(fd),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one datagram (blocking), with its fds.
pub(crate) fn recv(
    fd: &OwnedFd,
    buf: &mut [u8],
    cmsg: &mut [u8; CMSG_BUF],
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header; the pointers set
    // below stay valid for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len() as _;
    // SAFETY: `msg` points at `iov` (covering `buf`) and `cmsg`, both live
    // and exclusively borrowed for the call; the kernel writes at most their
    // lengths.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let control_len = (msg.msg_controllen as usize).min(cmsg.len());
    let ctrunc = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: the first `control_len` bytes of `cmsg` are control messages
    // the kernel just wrote for this datagram, and nothing else owns the fds
    // in them: the reader takes ownership exactly once.
    let ancillary = unsafe { AncillaryMessageReader::new(&mut cmsg[..control_len], ctrunc) };
    let (fds, fds_dropped) = collect_fds(ancillary);
    Ok(Received {
        len: n as usize,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds,
        fds_dropped,
    })
}

/// Sets (or with `None` clears) the receive timeout of a blocking socket.
pub(crate) fn set_recv_timeout(fd: &OwnedFd, t: Option<std::time::Duration>) -> io::Result<()> {
    let tv = match t {
        Some(t) => nix::sys::time::TimeVal::new(
            t.as_secs() as libc::time_t,
            t.subsec_micros() as libc::suseconds_t,
        ),
        None => nix::sys::time::TimeVal::new(0, 0),
    };
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
    Ok(())
}
