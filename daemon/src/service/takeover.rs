//! Upgrades by hand, without systemd: a running barkeepd listening on its
//! takeover socket (`takeover_socket`, or `--takeover-listen PATH`) hands a
//! successor (`barkeepd --takeover PATH`) everything it needs to go on
//! where it stops: the listening socket, each device's kernel fds, each
//! live lease's buffer, and the state (the state file's JSON). The old
//! daemon then exits without revoking anything; clients reconnect to the
//! same socket and reclaim their leases as after a restart.
//!
//! The exchange, one JSON message per SOCK_SEQPACKET datagram (only a peer
//! with the daemon's uid, or root, may connect):
//!
//! 1. old -> new: `{"State":{"chunk":"..."}}` as many times as the state's
//!    JSON needs (at most [`CHUNK`] bytes each);
//! 2. old -> new: `{"Fds":{"names":[...]}}` with the named fds attached
//!    (`SCM_RIGHTS`, at most 253 per message), as many as needed;
//! 3. old -> new: `{"Done":{"fds":N}}`;
//! 4. new -> old: `"Ok"` once it restored everything (or
//!    `{"Error":{"message":"..."}}`, and the old daemon goes on serving).
//!
//! From step 1 the old daemon is frozen: it refuses requests that would
//! change leases and new connections, so nothing changes behind the
//! successor's back.

use crate::broker::Broker;
use crate::persist::journal::LISTENER_FD_NAME;
use crate::persist::sdnotify::MAX_FDS_PER_MESSAGE;
use crate::persist::state::Snapshot;
use crate::service::inherited::Inherited;
use nix::sys::socket::MsgFlags;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// Largest state chunk per message.
pub const CHUNK: usize = 32 * 1024;

/// How long the old daemon waits for the successor's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the successor waits for the old daemon to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Room for a datagram of the exchange.
const BUF: usize = CHUNK + 64 * 1024;

/// One message of the exchange.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    State { chunk: String },
    Fds { names: Vec<String> },
    Done { fds: usize },
    Ok,
    Error { message: String },
}

/// Why a takeover failed, on either side. The old daemon serves on after
/// any of them; the successor exits with it.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// The takeover socket could not be waited on for sending.
    #[error("takeover: cannot send: {0}")]
    Send(#[source] std::io::Error),
    /// A message (with `fds` fds) could not be sent.
    #[error("takeover: cannot send {fds} fds: {source}")]
    SendFds {
        /// How many fds rode with it.
        fds: usize,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// A message could not be received.
    #[error("takeover: cannot receive: {0}")]
    Receive(#[source] std::io::Error),
    /// A message did not fit the buffer.
    #[error("takeover: a message was truncated")]
    Truncated,
    /// The other side closed the connection.
    #[error("takeover: the other daemon closed the connection")]
    Closed,
    /// A message was not JSON of a known kind.
    #[error("takeover: undecodable message: {0}")]
    Undecodable(#[source] serde_json::Error),
    /// The old daemon could not dup its listening socket.
    #[error("cannot dup the listening socket: {0}")]
    DupListener(#[source] std::io::Error),
    /// The successor did not answer in time.
    #[error("the successor did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The successor said it failed.
    #[error("the successor failed: {0}")]
    SuccessorFailed(String),
    /// The successor could not reach the old daemon's takeover socket.
    #[error("cannot connect to the takeover socket {}: {source} (is the running barkeepd started with takeover_socket or --takeover-listen?)", path.display())]
    Connect {
        /// The takeover socket.
        path: PathBuf,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// The other side broke the protocol (message order, counts).
    #[error("{0}")]
    Protocol(String),
    /// The state that came over could not be read.
    #[error("takeover: the state: {0}")]
    State(String),
}

impl From<TakeoverError> for String {
    fn from(e: TakeoverError) -> String {
        e.to_string()
    }
}

fn encode(m: &Message) -> Vec<u8> {
    serde_json::to_vec(m).expect("plain data serializes")
}

async fn send(socket: &UnixSeqpacket, m: &Message, fds: &[OwnedFd]) -> Result<(), TakeoverError> {
    let bytes = encode(m);
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    loop {
        let mut ready = socket
            .as_async_fd()
            .writable()
            .await
            .map_err(TakeoverError::Send)?;
        let sent = ready.try_io(|_| {
            crate::sys::send_with_fds(socket.as_fd(), &bytes, &borrowed, flags, None)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => {
                return Err(TakeoverError::SendFds {
                    fds: fds.len(),
                    source: e,
                });
            }
            Err(_would_block) => continue,
        }
    }
}

async fn recv(socket: &UnixSeqpacket) -> Result<(Message, Vec<OwnedFd>), TakeoverError> {
    let mut buf = vec![0u8; BUF];
    let got = loop {
        let mut ready = socket
            .as_async_fd()
            .readable()
            .await
            .map_err(TakeoverError::Receive)?;
        let got = ready.try_io(|_| {
            crate::sys::recv_with_fds(socket.as_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        });
        match got {
            Ok(Ok(d)) => break d,
            Ok(Err(e)) => return Err(TakeoverError::Receive(e)),
            Err(_would_block) => continue,
        }
    };
    if got.truncated {
        return Err(TakeoverError::Truncated);
    }
    if got.len == 0 {
        return Err(TakeoverError::Closed);
    }
    let m = serde_json::from_slice(&buf[..got.len]).map_err(TakeoverError::Undecodable)?;
    Ok((m, got.fds))
}

/// The old daemon's side: accepts successors on `listener` (at `path`)
/// until one takes over, then signals `done` (the daemon leaves with
/// `Exit::HandOver`). `socket` is a dup of the clients' listening socket.
pub async fn serve(
    mut listener: UnixSeqpacketListener,
    path: PathBuf,
    broker: Arc<Broker>,
    socket: OwnedFd,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), "takeover socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match crate::server::identity::credentials(&conn) {
            Ok((uid, _, _)) => uid,
            Err(e) => {
                tracing::warn!("takeover socket: {e}");
                continue;
            }
        };
        if uid != me && uid != 0 {
            tracing::warn!(
                uid,
                "takeover refused: only uid {me} or root may take barkeepd over"
            );
            continue;
        }
        match hand_over(&conn, &broker, &socket).await {
            Ok(n) => {
                tracing::info!(
                    fds = n,
                    "taken over by a successor: leaving without revoking"
                );
                let _ = done.send(());
                // Keep the connection open until this process exits, so
                // that the successor sees it go.
                std::mem::forget(conn);
                return;
            }
            Err(e) => {
                tracing::error!("takeover failed, serving on: {e}");
                broker.thaw();
            }
        }
    }
}

/// Sends the state and every fd; `Ok(number of fds)` once the successor
/// said it took everything.
async fn hand_over(
    conn: &UnixSeqpacket,
    broker: &Broker,
    socket: &OwnedFd,
) -> Result<usize, TakeoverError> {
    let snapshot = broker.freeze();
    let mut fds = vec![(
        LISTENER_FD_NAME.to_string(),
        socket.try_clone().map_err(TakeoverError::DupListener)?,
    )];
    fds.extend(broker.handoff_fds());
    let json = snapshot.to_json();
    let mut rest = json.as_str();
    while !rest.is_empty() {
        let mut end = rest.len().min(CHUNK);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        send(
            conn,
            &Message::State {
                chunk: chunk.to_string(),
            },
            &[],
        )
        .await?;
        rest = tail;
    }
    let total = fds.len();
    let mut it = fds.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<(String, OwnedFd)> = it.by_ref().take(MAX_FDS_PER_MESSAGE).collect();
        let (names, owned): (Vec<String>, Vec<OwnedFd>) = batch.into_iter().unzip();
        send(conn, &Message::Fds { names }, &owned).await?;
    }
    send(conn, &Message::Done { fds: total }, &[]).await?;
    match tokio::time::timeout(ANSWER_TIMEOUT, recv(conn)).await {
        Err(_) => Err(TakeoverError::NoAnswer(ANSWER_TIMEOUT)),
        Ok(Err(e)) => Err(e),
        Ok(Ok((Message::Ok, _))) => Ok(total),
        Ok(Ok((Message::Error { message }, _))) => Err(TakeoverError::SuccessorFailed(message)),
        Ok(Ok((other, _))) => Err(TakeoverError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// The successor's connection to the old daemon, to answer once it has
/// restored everything ([`finish`]).
pub struct Handshake {
    socket: UnixSeqpacket,
}

/// The successor's side: connects to the old daemon's takeover socket and
/// receives its fds and state.
pub async fn receive(path: &Path) -> Result<(Inherited, Handshake), TakeoverError> {
    let socket = UnixSeqpacket::connect(path)
        .await
        .map_err(|source| TakeoverError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut json = String::new();
    let mut named = Vec::new();
    loop {
        let (m, fds) = recv(&socket).await?;
        match m {
            Message::State { chunk } => json.push_str(&chunk),
            Message::Fds { names } => {
                if names.len() != fds.len() {
                    return Err(TakeoverError::Protocol(format!(
                        "takeover: {} names came with {} fds",
                        names.len(),
                        fds.len()
                    )));
                }
                named.extend(names.into_iter().zip(fds));
            }
            Message::Done { fds } => {
                if fds != named.len() {
                    return Err(TakeoverError::Protocol(format!(
                        "takeover: the old daemon sent {} fds, it said {fds}",
                        named.len()
                    )));
                }
                break;
            }
            other => {
                return Err(TakeoverError::Protocol(format!(
                    "takeover: unexpected message {other:?}"
                )))
            }
        }
    }
    let snapshot = Snapshot::from_json(&json).map_err(|e| TakeoverError::State(e.to_string()))?;
    tracing::info!(
        fds = named.len(),
        leases = snapshot.leases.len(),
        from = snapshot.pid,
        "received the running daemon's fds and state"
    );
    let mut inherited = Inherited::from_named(named, false);
    inherited.snapshot = Some(snapshot);
    Ok((inherited, Handshake { socket }))
}

/// Tells the old daemon that everything was taken over, and waits (a
/// bounded time) for it to exit.
pub async fn finish(h: Handshake) {
    if let Err(e) = send(&h.socket, &Message::Ok, &[]).await {
        tracing::warn!("{e}");
        return;
    }
    let mut buf = [0u8; 16];
    match tokio::time::timeout(EXIT_TIMEOUT, h.socket.recv(&mut buf)).await {
        Ok(_) => tracing::info!("the previous barkeepd has exited"),
        Err(_) => tracing::warn!(
            "the previous barkeepd did not exit within {EXIT_TIMEOUT:?}; serving anyway"
        ),
    }
}

/// Tells the old daemon that the takeover failed (it serves on).
pub async fn abort(h: Handshake, message: String) {
    let _ = send(&h.socket, &Message::Error { message }, &[]).await;
}
