//! Socket calls std and nix lack: batched receive (`recvmmsg(2)`).

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd};

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
