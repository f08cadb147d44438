//! The floor: the least a grant server can do on this kernel. One thread,
//! epoll, SOCK_SEQPACKET; every request datagram gets a reply datagram of
//! barkeep's Granted size carrying one fresh memfd (memfd_create +
//! ftruncate to the slice size) by SCM_RIGHTS. It runs as a child process
//! (`barkeep-bench floor-server`) so that its CPU time is read from /proc
//! exactly like barkeepd's.

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{
    accept4, bind, listen, recv, sendmsg, socket, AddressFamily, Backlog, ControlMessage, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// epoll data of the listening socket (connections use their fd number).
const LISTENER: u64 = u64::MAX;

/// Serves forever on `path`: one reply of `reply_len` bytes with one memfd
/// of `slice_len` bytes per request. Returns only on a setup error.
pub fn serve(path: &Path, reply_len: usize, slice_len: u64) -> Result<(), String> {
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    bind(listener.as_raw_fd(), &addr).map_err(|e| format!("bind {}: {e}", path.display()))?;
    listen(&listener, Backlog::MAXCONN).map_err(|e| format!("listen: {e}"))?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
    epoll
        .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
        .map_err(|e| format!("epoll add: {e}"))?;

    let reply = vec![0x5au8; reply_len];
    let mut buf = vec![0u8; barkeep_protocol::MAX_DATAGRAM + 1];
    let mut conns: HashMap<RawFd, OwnedFd> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 256];
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for ev in &events[..n] {
            if ev.data() == LISTENER {
                accept_all(&listener, &epoll, &mut conns);
                continue;
            }
            let fd = ev.data() as RawFd;
            // Level-triggered, one datagram per ready connection per
            // round: every session gets its turn.
            let done = match recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => true,
                Ok(_) => answer(fd, &reply, slice_len).is_err(),
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
                Err(_) => true,
            };
            if done {
                if let Some(conn) = conns.remove(&fd) {
                    let _ = epoll.delete(conn.as_fd());
                }
            }
        }
    }
}

fn accept_all(listener: &OwnedFd, epoll: &Epoll, conns: &mut HashMap<RawFd, OwnedFd>) {
    loop {
        match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: accept4 just returned this fd; nothing else owns it.
                let conn = unsafe { OwnedFd::from_raw_fd(raw) };
                if epoll
                    .add(&conn, EpollEvent::new(EpollFlags::EPOLLIN, raw as u64))
                    .is_ok()
                {
                    conns.insert(raw, conn);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // EAGAIN: none left; anything else (EMFILE): try again later.
            Err(_) => return,
        }
    }
}

/// One grant: a fresh kernel object sized like the slice, sent with the
/// reply (blocking send: the bench's clients always read).
fn answer(fd: RawFd, reply: &[u8], slice_len: u64) -> nix::Result<()> {
    let memfd = memfd_create(c"floor", MFdFlags::MFD_CLOEXEC)?;
    nix::unistd::ftruncate(&memfd, slice_len as libc::off_t)?;
    let fds = [memfd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        fd,
        &[IoSlice::new(reply)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    // `memfd` closes here: the client holds its own reference now.
    Ok(())
}
