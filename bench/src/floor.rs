//! The floor: the least a grant server can do on this kernel. One thread,
//! epoll, SOCK_SEQPACKET; every request datagram gets a reply datagram of
//! barkeep's Granted size carrying one fresh memfd (memfd_create +
//! ftruncate to the slice size) by SCM_RIGHTS. It runs as a child process
//! (`barkeep-bench floor-server`) so that its CPU time is read from /proc
//! exactly like barkeepd's.
//!
//! With an event length (`floor4`, "the floor with barkeep's datagrams") it
//! also does the least barkeep's protocol needs per round trip: it keeps
//! the memfd it granted, and the connection's next datagram (the release)
//! truncates it to 0 (the revoke), closes it and is answered by one
//! event-sized datagram (barkeep's `Revoked { released }`), no reply. Four
//! datagrams per round trip, as barkeepd with a no-reply release.

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

/// One client connection; `held` is the memfd granted and not yet released
/// (only with an event length).
struct Conn {
    sock: OwnedFd,
    held: Option<OwnedFd>,
}

/// Serves forever on `path`: one reply of `reply_len` bytes with one memfd
/// of `slice_len` bytes per request; with `event_len`, every second request
/// is a release answered by an event of `event_len` bytes (see the module
/// doc). Returns only on a setup error.
pub fn serve(
    path: &Path,
    reply_len: usize,
    slice_len: u64,
    event_len: Option<usize>,
) -> Result<(), String> {
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
    let event = event_len.map(|n| vec![0xa5u8; n]);
    let mut buf = vec![0u8; barkeep_protocol::MAX_DATAGRAM + 1];
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
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
                Ok(_) => match (&event, conns.get_mut(&fd)) {
                    (None, _) => answer(fd, &reply, slice_len).map(drop).is_err(),
                    (Some(event), Some(conn)) => match conn.held.take() {
                        Some(memfd) => release(fd, memfd, event).is_err(),
                        None => match answer(fd, &reply, slice_len) {
                            Ok(memfd) => {
                                conn.held = Some(memfd);
                                false
                            }
                            Err(_) => true,
                        },
                    },
                    (Some(_), None) => true,
                },
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
                Err(_) => true,
            };
            if done {
                if let Some(conn) = conns.remove(&fd) {
                    let _ = epoll.delete(conn.sock.as_fd());
                }
            }
        }
    }
}

fn accept_all(listener: &OwnedFd, epoll: &Epoll, conns: &mut HashMap<RawFd, Conn>) {
    loop {
        match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(raw) => {
                // SAFETY: accept4 just returned this fd; nothing else owns it.
                let conn = unsafe { OwnedFd::from_raw_fd(raw) };
                if epoll
                    .add(&conn, EpollEvent::new(EpollFlags::EPOLLIN, raw as u64))
                    .is_ok()
                {
                    conns.insert(
                        raw,
                        Conn {
                            sock: conn,
                            held: None,
                        },
                    );
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // EAGAIN: none left; anything else (EMFILE): try again later.
            Err(_) => return,
        }
    }
}

/// One grant: a fresh kernel object sized like the slice, sent with the
/// reply (blocking send: the bench's clients always read). Returns the
/// server's own reference, which the plain floor closes at once.
fn answer(fd: RawFd, reply: &[u8], slice_len: u64) -> nix::Result<OwnedFd> {
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
    Ok(memfd)
}

/// One release: the revoke a real server must do (the holder's pages go
/// away: truncate to 0), its reference closed, and the event that tells the
/// holder, without a reply.
fn release(fd: RawFd, memfd: OwnedFd, event: &[u8]) -> nix::Result<()> {
    nix::unistd::ftruncate(&memfd, 0)?;
    drop(memfd);
    sendmsg::<()>(
        fd,
        &[IoSlice::new(event)],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}
