//! The daemon's wire: every datagram it sends or receives with fds
//! attached (`SCM_RIGHTS`) goes through [`send_with_fds`] and
//! [`recv_with_fds`] (the server's grants, the takeover, sd_notify's fd
//! store), and requests come in batches through [`recv_batch`]
//! (`recvmmsg(2)`, which std and nix lack).

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most fds the kernel passes in one message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// Sends `bytes` as one datagram with `fds` attached (none: a plain send),
/// to `to` when the socket is not connected. Retried on `EINTR`; `flags`
/// say whether to wait (`MSG_DONTWAIT`) and to raise no SIGPIPE
/// (`MSG_NOSIGNAL`).
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: MsgFlags,
    to: Option<&UnixAddr>,
) -> Result<usize, Errno> {
    if fds.len() > SCM_MAX_FD {
        return Err(Errno::EINVAL);
    }
    // No allocation for the common cases (no fd, or a grant's one fd).
    let one;
    let many: Vec<RawFd>;
    let raw: &[RawFd] = match fds {
        [fd] => {
            one = [fd.as_raw_fd()];
            &one
        }
        _ => {
            many = fds.iter().map(|f| f.as_raw_fd()).collect();
            &many
        }
    };
    let cmsg = [ControlMessage::ScmRights(raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(bytes)];
    loop {
        match sendmsg(socket.as_raw_fd(), &iov, cmsgs, flags, to) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// One datagram received by [`recv_with_fds`].
#[derive(Debug)]
pub struct Datagram {
    /// Bytes written to the buffer (0: the peer closed a stream of
    /// datagrams).
    pub len: usize,
    /// The datagram or its fds did not fit (`MSG_TRUNC`, `MSG_CTRUNC`).
    pub truncated: bool,
    /// The fds that came with it, close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Receives one datagram into `buf` with up to [`SCM_MAX_FD`] fds, taking
/// ownership of the fds (close-on-exec). Retried on `EINTR`.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> Result<Datagram, Errno> {
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: SCM_RIGHTS just installed these fds in this
                // process; nothing else knows their numbers, so each is
                // owned once, here.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    Ok(Datagram {
        len: msg.bytes,
        truncated,
        fds,
    })
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
