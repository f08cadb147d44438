//! The socket side of a session: how a request's datagram reaches the
//! daemon ([`Outbox`]: the blocking client's socket, or the async client's
//! writer task), the socket a reconnect brings ([`NewSocket`]), and where to
//! reconnect ([`Reconnect`]). The session core in [`super`] never touches a
//! socket but through these.

use super::lock;
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How requests reach the socket (replaced when the client reconnects).
pub(crate) enum Outbox {
    /// Blocking client: `send()` on the socket, from the caller's thread.
    Blocking(Mutex<Arc<OwnedFd>>),
    /// Async client: datagrams go straight to the socket when nothing is
    /// queued, else to the writer task, which sends them in order.
    Async {
        tx: Mutex<Option<AsyncWriter>>,
        socket: Mutex<Arc<tokio_seqpacket::UnixSeqpacket>>,
    },
}

/// The queue of the async client's writer task.
pub(crate) struct AsyncWriter {
    /// Datagrams for the writer task.
    pub(crate) tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Datagrams queued and not yet sent; the writer task decrements it
    /// after each send. While it is not zero, a new datagram must queue
    /// behind them.
    pub(crate) queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// A new connection for [`Conn::resume`].
pub(crate) enum NewSocket {
    /// For the blocking client.
    Blocking(Arc<OwnedFd>),
    /// For the async client: the socket and its writer's queue.
    Async {
        tx: AsyncWriter,
        socket: Arc<tokio_seqpacket::UnixSeqpacket>,
    },
}

/// Where and how to connect again after the connection broke.
#[derive(Clone, Debug)]
pub(crate) struct Reconnect {
    /// The daemon's socket.
    pub(crate) path: PathBuf,
    /// The client name for `Hello`.
    pub(crate) name: String,
    /// How long to wait for each handshake.
    pub(crate) handshake_timeout: Duration,
    /// How long to keep trying: the daemon's reclaim grace.
    pub(crate) grace: Duration,
    /// Told about each step (ConnectOptions::on_reconnect).
    pub(crate) hook: Option<crate::progress::ReconnectHook>,
}

impl Reconnect {
    /// First wait between attempts; doubles up to [`Reconnect::MAX_DELAY`].
    pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(50);
    /// Longest wait between attempts.
    pub(crate) const MAX_DELAY: Duration = Duration::from_secs(2);
}

impl Outbox {
    /// Sends the reclaims (and the requests queued meanwhile) of a
    /// reconnect, in order, without blocking the caller.
    pub(super) fn send_reclaims(&self, all: Vec<Vec<u8>>) {
        match self {
            // The blocking client's reader calls this, and must go back to
            // reading: the daemon reads a session's requests only while it
            // can send their replies, so a reader that blocked sending
            // thousands of reclaims would wait forever, and one that
            // dropped those that do not fit (a full socket) would lose
            // leases. A thread sends them, waiting for room.
            Outbox::Blocking(current) => {
                let sock = lock(current).clone();
                let fd = sock.clone();
                let sent = std::thread::Builder::new()
                    .name("barkeep-reclaim".into())
                    .spawn(move || {
                        for bytes in all {
                            if send_blocking(&fd, &bytes).is_err() {
                                // The connection broke again: the reader
                                // reconnects and reclaims anew.
                                return;
                            }
                        }
                    });
                if sent.is_err() {
                    // No thread: the connection cannot reclaim; break it so
                    // that the reader reconnects and tries again.
                    let _ = nix::sys::socket::shutdown(
                        sock.as_raw_fd(),
                        nix::sys::socket::Shutdown::Both,
                    );
                }
            }
            // The async writer task queues and waits for room.
            Outbox::Async { .. } => {
                for bytes in all {
                    let _ = self.send(bytes, true);
                }
            }
        }
    }

    /// Sends one datagram. `detached` sends never block (they come from
    /// `Drop` and from the reader, which must not wait on the daemon).
    pub(super) fn send(&self, bytes: Vec<u8>, detached: bool) -> Result<()> {
        match self {
            Outbox::Blocking(fd) => {
                let fd = lock(fd).clone();
                let mut flags = nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
                if detached {
                    flags |= nix::sys::socket::MsgFlags::MSG_DONTWAIT;
                }
                loop {
                    match nix::sys::socket::send(fd.as_raw_fd(), &bytes, flags) {
                        Ok(_) => return Ok(()),
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(e) => return Err(Error::io("cannot send to barkeepd", e)),
                    }
                }
            }
            Outbox::Async { tx, socket } => {
                // Held until the datagram is sent or queued, so that
                // datagrams leave in the order they were submitted.
                let writer = lock(tx);
                let writer = writer
                    .as_ref()
                    .ok_or_else(|| Error::Disconnected("the connection is closed".into()))?;
                if writer.queued.load(Ordering::Acquire) == 0 {
                    // Nothing waits: send from here, sparing a wake-up of
                    // the writer task (and often of another thread).
                    // (A clone, so the fd stays open even if a reconnect
                    // replaces the socket meanwhile.)
                    let sock = lock(socket).clone();
                    let flags = nix::sys::socket::MsgFlags::MSG_NOSIGNAL
                        | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
                    if nix::sys::socket::send(sock.as_raw_fd(), &bytes, flags).is_ok() {
                        return Ok(());
                    }
                    // Full (or broken): the writer task waits for room,
                    // or meets the error and shuts the socket down.
                }
                writer.queued.fetch_add(1, Ordering::AcqRel);
                writer
                    .tx
                    .send(bytes)
                    .map_err(|_| Error::Disconnected("the connection is closed".into()))
            }
        }
    }

    /// Shuts the socket down so the reader sees end-of-file and stops.
    pub(super) fn shutdown(&self) {
        match self {
            Outbox::Blocking(fd) => {
                let fd = lock(fd).clone();
                let _ =
                    nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            }
            Outbox::Async { tx, socket } => {
                lock(tx).take();
                let _ = lock(socket).shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Switches to a new connection.
    pub(super) fn replace(&self, new: NewSocket) {
        match (self, new) {
            (Outbox::Blocking(fd), NewSocket::Blocking(new)) => *lock(fd) = new,
            (
                Outbox::Async { tx, socket },
                NewSocket::Async {
                    tx: new_tx,
                    socket: new_socket,
                },
            ) => {
                *lock(tx) = Some(new_tx);
                *lock(socket) = new_socket;
            }
            _ => unreachable!("a client never changes transport"),
        }
    }
}

/// Sends one datagram on a blocking socket, waiting for room.
fn send_blocking(fd: &OwnedFd, bytes: &[u8]) -> nix::Result<()> {
    loop {
        match nix::sys::socket::send(
            fd.as_raw_fd(),
            bytes,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
