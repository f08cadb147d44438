//! The transport: the listening socket, one task per connection, admission
//! (session limits), the peer's identity, the handshake, datagrams in and
//! out (with the one fd of a grant), and events. Everything a request means
//! is decided by the [`Broker`].
//!
//! Each session reads requests, answers them and sends each reply (and the
//! events a request caused) at once, without waiting; what the socket
//! cannot take waits in the session's queue, and at `[limits]
//! requests_in_flight` waiting messages, or [`QUEUED_BYTES`] waiting bytes,
//! the daemon stops reading that session (the kernel then blocks the
//! client's sends). So a session that does not read pins at most
//! [`QUEUED_BYTES`] plus one reply (64 KiB) of queued replies, plus the at
//! most [`BATCH`] requests read ahead (each at most 64 KiB): under 400 KiB
//! however large its replies, and the daemon's total at most `[limits]
//! sessions` times that. Events wait in
//! their own bounded queue; a client that lets it fill is evicted. No send
//! ever happens under the broker's lock, so a client that stops reading
//! stalls only itself.
//!
//! Fairness: a session answers one request, then yields to every other
//! task that is ready (connects, handshakes, other sessions), so a
//! pipelining client waits its turn after each request instead of running
//! its whole batch. And the sessions of one uid take turns ([`Turns`]):
//! one request of a uid is answered at a time, its sessions in the order
//! they asked, so the uids with requests waiting are served round-robin
//! however many sessions each one pipelines on, and the admin's request
//! waits for at most one request of each other busy uid.

pub mod identity;
pub mod metrics;
pub mod socket;
use crate::backend::SharedFd;
use crate::broker::{event_channel, Broker, EventSource};

use barkeep_protocol::{
    decode_client, decode_hello_prefix, encode_daemon, request_id_hint, ClientMessage,
    DaemonMessage, ErrorCode, ErrorReply, Hello, MAX_CLIENT_NAME, MAX_DATAGRAM, PROTOCOL_VERSION,
};
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// How long a client may take to say Hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a refused connection stays open for the peer's Hello to
/// arrive, so that the peer reads the refusal instead of failing to send.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Refused connections lingering at once; beyond it, refusals are silent
/// closes (a connection flood must not pile up tasks).
const MAX_LINGERING_REFUSALS: usize = 64;

/// How long sessions get to flush their last events at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Creates the listening socket at `path`: makes the parent directory,
/// removes a stale socket (refusing to steal a live one), binds, and sets
/// the permission bits to `mode`. Must run inside a tokio runtime.
pub fn bind(path: &Path, mode: u32) -> Result<UnixSeqpacketListener, String> {
    socket::bind_unix(
        path,
        mode,
        &socket::Role {
            name: "socket",
            busy: "another barkeepd is already listening on {}: stop it, or use another --socket",
            elsewhere: "choose another socket path",
        },
        |p| connect_probe(p).is_ok(),
        |p| UnixSeqpacketListener::bind(p),
    )
}

/// Whether something accepts SOCK_SEQPACKET connections at `path`.
fn connect_probe(path: &Path) -> std::io::Result<()> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(())
}

/// How the daemon leaves when it stops serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Revoke every lease (telling the holders) and remove the socket file.
    Revoke,
    /// Hand the leases on to a successor (a restart under systemd's fd
    /// store, or a takeover): freeze the broker (nothing is revoked), close
    /// the sessions so that clients reconnect, and leave the socket file.
    HandOver,
}

/// Accepts sessions on `listener` until `shutdown` resolves; then revokes
/// every lease (telling the holders), lets sessions flush, and removes the
/// socket file at `path`.
pub async fn serve(
    listener: UnixSeqpacketListener,
    path: PathBuf,
    broker: Arc<Broker>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_until(listener, path, broker, async {
        shutdown.await;
        Exit::Revoke
    })
    .await;
}

/// Like [`serve`], leaving as the [`Exit`] that `shutdown` resolves to says.
pub async fn serve_until(
    mut listener: UnixSeqpacketListener,
    path: PathBuf,
    broker: Arc<Broker>,
    shutdown: impl std::future::Future<Output = Exit>,
) -> Exit {
    let (stop_tx, stop_rx) = watch::channel(false);
    let refusals = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
    let turns = Arc::new(Turns::default());
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    let exit = loop {
        tokio::select! {
            exit = &mut shutdown => break exit,
            accepted = listener.accept() => match accepted {
                Ok(socket) => {
                    let broker = broker.clone();
                    let stop = stop_rx.clone();
                    let refusals = refusals.clone();
                    let turns = turns.clone();
                    sessions.spawn(async move {
                        session(socket, broker, stop, refusals, turns).await
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished sessions so the set does not grow.
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!("a session task panicked; the daemon keeps serving");
                    }
                }
            }
        }
    };
    drop(listener);
    match exit {
        Exit::Revoke => {
            tracing::info!("shutting down: revoking every lease");
            let _ = std::fs::remove_file(&path);
            broker.shutdown();
        }
        Exit::HandOver => {
            let leases = broker.freeze().leases.len();
            tracing::info!(
                leases,
                "handing over: leases stay for the next barkeepd to restore"
            );
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        sessions.abort_all();
    }
    exit
}

/// The turns of each uid: its sessions answer one request at a time, in
/// the order they asked (a FIFO lock per uid, kept while a session of the
/// uid lives).
#[derive(Default)]
struct Turns(Mutex<HashMap<u32, Weak<tokio::sync::Mutex<()>>>>);

impl Turns {
    /// The turn lock of `uid`'s sessions.
    fn of(&self, uid: u32) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(turn) = map.get(&uid).and_then(Weak::upgrade) {
            return turn;
        }
        // Forget the uids without sessions (as often as a new uid comes).
        map.retain(|_, t| t.strong_count() > 0);
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(uid, Arc::downgrade(&turn));
        turn
    }
}

/// Closes the broker's session however the task ends (return, error, panic,
/// abort), so its leases are always revoked (or kept).
struct SessionGuard {
    broker: Arc<Broker>,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.broker.close_session(self.id);
    }
}

enum Received {
    /// A datagram (possibly empty).
    Datagram(Vec<u8>),
    /// The datagram was larger than the protocol allows (its start is kept
    /// for the request id).
    Oversized(Vec<u8>),
    /// The peer is gone.
    Closed,
}

/// Bytes of replies a session may have waiting for its peer to read before
/// the daemon stops reading its requests (one more reply may come on top).
pub const QUEUED_BYTES: usize = 64 * 1024;

/// Datagrams a session's reader takes from its socket in one system call.
const BATCH: usize = 4;

thread_local! {
    /// [`BATCH`] buffers (and lengths) for [`receive`], one set per
    /// runtime thread.
    static BATCH_SCRATCH: std::cell::RefCell<(Vec<Vec<u8>>, [usize; BATCH])> =
        std::cell::RefCell::new((vec![vec![0u8; MAX_DATAGRAM + 1]; BATCH], [0; BATCH]));
}

/// The next datagram: from `inbox`, else up to `max` (at most [`BATCH`])
/// taken at once from the socket, the rest left in `inbox`: one
/// `recvmmsg`, which also tells an emptied queue without an extra `EAGAIN`
/// call (a session's release and its next request usually arrive
/// together). Datagrams land in a per-thread buffer, so that neither idle
/// sessions nor each request pay for (and zero) room for the largest one.
async fn receive(socket: &UnixSeqpacket, inbox: &mut VecDeque<Received>, max: usize) -> Received {
    use crate::sys;
    let max = max.clamp(1, BATCH);
    loop {
        if let Some(r) = inbox.pop_front() {
            return r;
        }
        let Ok(mut guard) = socket.as_async_fd().readable().await else {
            return Received::Closed;
        };
        let got = BATCH_SCRATCH.with(|scratch| {
            let (bufs, lens) = &mut *scratch.borrow_mut();
            let n = sys::recv_batch(socket.as_fd(), &mut bufs[..max], lens)?;
            for (buf, &len) in bufs.iter().zip(lens.iter()).take(n) {
                // A 0-byte datagram is the end of the stream or an empty
                // datagram; after the end, the rest are ends too.
                if len == 0 && peer_hung_up(socket) {
                    inbox.push_back(Received::Closed);
                    break;
                }
                inbox.push_back(if len > MAX_DATAGRAM {
                    // One byte more than the protocol allows: too long.
                    Received::Oversized(buf[..len].to_vec())
                } else {
                    Received::Datagram(buf[..len].to_vec())
                });
            }
            Ok::<usize, nix::Error>(n)
        });
        match got {
            // The queue is empty now: wait for the next edge.
            Ok(n) if n < max => guard.clear_ready(),
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Received::Closed,
        }
    }
}

/// Whether the peer has closed its end (POLLRDHUP/POLLHUP), which tells an
/// end of stream from an empty datagram.
fn peer_hung_up(socket: &UnixSeqpacket) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // nix has no name for POLLRDHUP (peer shut down its writing side).
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let mut fds = [PollFd::new(socket.as_fd(), rdhup)];
    match poll(&mut fds, PollTimeout::ZERO) {
        // nix reads revents with `from_bits`, which gives `None` exactly
        // when POLLRDHUP (a bit it cannot name) is set.
        Ok(_) => fds[0].revents().is_none_or(|r| {
            r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => true,
    }
}

/// Encodes a message for the peer; a reply too large for one datagram
/// becomes a `limit-exceeded` error with the same id.
fn encode_outgoing(msg: &DaemonMessage) -> std::io::Result<Vec<u8>> {
    Ok(match encode_daemon(msg) {
        Ok(b) => b,
        Err(e) => {
            // Only a reply can grow past the limit (e.g. a huge lease list).
            let id = match msg {
                DaemonMessage::Reply { id, .. } => *id,
                _ => 0,
            };
            let fallback = DaemonMessage::Reply {
                id,
                result: Err(ErrorReply::new(
                    ErrorCode::LimitExceeded,
                    format!("the reply does not fit in one datagram ({e}); ask for less"),
                )),
            };
            encode_daemon(&fallback).map_err(std::io::Error::other)?
        }
    })
}

/// Sends one message (with its fd), waiting while the socket is full.
async fn send(
    socket: &UnixSeqpacket,
    msg: &DaemonMessage,
    fd: Option<SharedFd>,
) -> std::io::Result<()> {
    send_bytes(socket, &encode_outgoing(msg)?, fd.as_ref()).await
}

fn refused(code: ErrorCode, message: String) -> DaemonMessage {
    DaemonMessage::Refused(ErrorReply::new(code, message))
}

/// Refuses a connection before the handshake: sends `Refused`, then keeps
/// the socket open until the peer's Hello (or its end) arrives, at most
/// [`REFUSAL_LINGER`], so the peer reads why instead of failing to send.
async fn refuse_connection(socket: &UnixSeqpacket, error: ErrorReply, refusals: &Semaphore) {
    let Ok(_permit) = refusals.try_acquire() else {
        return;
    };
    if send(socket, &DaemonMessage::Refused(error), None)
        .await
        .is_err()
    {
        return;
    }
    // Read (and drop) the Hello: closing with it unread would make the
    // kernel report ECONNRESET to the peer instead of our refusal.
    let mut hello = [0u8; 64];
    let _ = tokio::time::timeout(REFUSAL_LINGER, socket.recv(&mut hello)).await;
}

/// Reads the Hello. `Err(msg)` is a refusal to send before closing;
/// `Ok(None)` means the peer left.
async fn handshake(socket: &UnixSeqpacket) -> Result<Option<Hello>, DaemonMessage> {
    // Exactly one datagram: what follows the Hello is the session's.
    let bytes = match receive(socket, &mut VecDeque::new(), 1).await {
        Received::Closed => return Ok(None),
        Received::Oversized(_) => {
            return Err(refused(
                ErrorCode::Oversized,
                format!(
                    "the first datagram exceeds the {MAX_DATAGRAM}-byte limit; send Hello first"
                ),
            ))
        }
        Received::Datagram(b) => b,
    };
    match decode_hello_prefix(&bytes) {
        Some(v) if v != PROTOCOL_VERSION => Err(refused(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol version {v}, this barkeepd {} speaks version {PROTOCOL_VERSION}: use a client from the same release",
                crate::broker::DAEMON_VERSION
            ),
        )),
        _ => match decode_client(&bytes) {
            Ok(ClientMessage::Hello(h)) if h.client_name.len() > MAX_CLIENT_NAME => Err(refused(
                ErrorCode::BadArgument,
                format!(
                    "client name of {} bytes is too long: at most {MAX_CLIENT_NAME}",
                    h.client_name.len()
                ),
            )),
            Ok(ClientMessage::Hello(h)) => Ok(Some(h)),
            Ok(ClientMessage::Request { .. }) => Err(refused(
                ErrorCode::HandshakeRequired,
                "a request came before Hello: send Hello { protocol_version, client_name } first".into(),
            )),
            Err(e) => Err(DaemonMessage::Refused(e.to_reply())),
        },
    }
}

/// One connection, from accept to close.
async fn session(
    socket: UnixSeqpacket,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
    refusals: Arc<Semaphore>,
    turns: Arc<Turns>,
) {
    // Admission first, on the cheap credentials: a flood is refused before
    // any further work.
    let uid = match identity::credentials(&socket) {
        Ok((uid, _, _)) => uid,
        Err(e) => {
            tracing::info!("closing a connection: {e}");
            return;
        }
    };
    let _admission = match broker.admit(uid) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(uid, "connection refused: {}", e.message);
            refuse_connection(&socket, e, &refusals).await;
            return;
        }
    };
    let peer = match identity::of_peer(&socket) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(uid, "connection refused: {e}");
            let e = ErrorReply::new(ErrorCode::IdentityUnavailable, e.0);
            refuse_connection(&socket, e, &refusals).await;
            return;
        }
    };
    if broker.is_frozen() {
        // Handing over: the successor serves this client once it reconnects.
        return;
    }
    let (pid, cgroup) = (peer.identity.pid, peer.identity.cgroup.clone());
    let cgroup = cgroup.as_deref().unwrap_or("-");
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&socket)).await {
        Err(_) => {
            tracing::info!(uid, pid, cgroup, "no Hello in time, closing");
            let _ = send(
                &socket,
                &refused(
                    ErrorCode::HandshakeRequired,
                    format!("no Hello within {HANDSHAKE_TIMEOUT:?}"),
                ),
                None,
            )
            .await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(refusal)) => {
            if let DaemonMessage::Refused(e) = &refusal {
                tracing::info!(uid, pid, cgroup, code = %e.code, "handshake refused: {}", e.message);
            }
            let _ = send(&socket, &refusal, None).await;
            return;
        }
        Ok(Ok(Some(h))) => h,
    };

    let limits = broker.config().limits;
    let (sink, source) = event_channel(limits.events_queued);
    let welcome = broker.open_session(peer, hello.client_name, sink);
    let id = welcome.session_id;
    let _guard = SessionGuard {
        broker: broker.clone(),
        id,
    };
    if send(&socket, &DaemonMessage::Welcome(welcome), None)
        .await
        .is_err()
    {
        return;
    }

    let turn = turns.of(uid);
    drop(turns);
    exchange(
        &socket,
        &broker,
        id,
        source,
        &mut stop,
        limits.requests_in_flight,
        &turn,
    )
    .await;
}

/// A reply (or event) and the fd that rides with it.
type Reply = (DaemonMessage, Option<SharedFd>);

/// Whether a non-blocking send went out.
enum Sent {
    Yes,
    /// The socket's buffer is full: the peer is not reading.
    Full,
    /// The peer is gone (or the message cannot be sent at all).
    Broken,
}

/// Sends one encoded message without waiting (and its fd by SCM_RIGHTS).
fn send_now(socket: &UnixSeqpacket, bytes: &[u8], fd: Option<&SharedFd>) -> Sent {
    let fd = fd.map(|f| f.as_fd());
    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
    match crate::sys::send_with_fds(socket.as_fd(), bytes, fd.as_slice(), flags, None) {
        Ok(_) => Sent::Yes,
        Err(nix::errno::Errno::EAGAIN) => Sent::Full,
        Err(_) => Sent::Broken,
    }
}

/// Serves an established session until it ends: answers its requests in
/// order and passes on its events, each message sent as soon as it exists,
/// in the order it came to be (a release's `Revoked` event before its
/// reply). What the socket cannot take at once (the peer is not reading)
/// waits in a queue; at `in_flight` queued messages the session's requests
/// are no longer read, and events are no longer taken from the session's
/// bounded event queue, so a peer that never reads is evicted by the
/// broker when that queue fills, and costs the daemon a bounded amount of
/// memory meanwhile.
async fn exchange(
    socket: &UnixSeqpacket,
    broker: &Broker,
    session: u64,
    mut source: EventSource,
    stop: &mut watch::Receiver<bool>,
    in_flight: usize,
    turn: &tokio::sync::Mutex<()>,
) {
    let in_flight = in_flight.max(1);
    let mut inbox = VecDeque::new();
    // Encoded messages the socket could not take yet, oldest first.
    let mut waiting: VecDeque<(Vec<u8>, Option<SharedFd>)> = VecDeque::new();
    let evicted = source.evicted.clone();
    let mut evicted_wait = std::pin::pin!(evicted.notified());
    let mut stopped = std::pin::pin!(stop.changed());
    // Sends `msg` now if nothing waits before it, else queues it.
    let out = |waiting: &mut VecDeque<(Vec<u8>, Option<SharedFd>)>, (msg, fd): Reply| {
        let Ok(bytes) = encode_outgoing(&msg) else {
            return false;
        };
        if waiting.is_empty() {
            match send_now(socket, &bytes, fd.as_ref()) {
                Sent::Yes => return true,
                Sent::Broken => return false,
                Sent::Full => {}
            }
        }
        waiting.push_back((bytes, fd));
        true
    };
    loop {
        let ok = tokio::select! {
            biased;
            _ = &mut evicted_wait => {
                if !waiting.is_empty() {
                    tracing::info!(session, "session evicted while its peer was not reading");
                }
                return;
            }
            _ = &mut stopped => {
                // Shutdown: the broker has queued the last Revoked events.
                for (bytes, fd) in std::mem::take(&mut waiting) {
                    if send_bytes(socket, &bytes, fd.as_ref()).await.is_err() {
                        return;
                    }
                }
                while let Ok(event) = source.events.try_recv() {
                    if send(socket, &DaemonMessage::Event(event), None).await.is_err() {
                        break;
                    }
                }
                return;
            }
            // Room again: send what waited, as far as it goes.
            guard = socket.as_async_fd().writable(), if !waiting.is_empty() => {
                let Ok(mut guard) = guard else { return };
                while let Some((bytes, fd)) = waiting.front() {
                    match send_now(socket, bytes, fd.as_ref()) {
                        Sent::Yes => {
                            waiting.pop_front();
                        }
                        Sent::Full => {
                            guard.clear_ready();
                            break;
                        }
                        Sent::Broken => return,
                    }
                }
                true
            }
            Some(event) = source.events.recv(), if waiting.is_empty() => {
                out(&mut waiting, (DaemonMessage::Event(event), None))
            }
            received = receive(socket, &mut inbox, BATCH),
                if waiting.len() < in_flight
                    && waiting.iter().map(|(b, _)| b.len()).sum::<usize>() < QUEUED_BYTES =>
            {
                match received {
                    Received::Closed => return,
                    Received::Oversized(buf) => out(&mut waiting, (
                        DaemonMessage::Reply {
                            id: request_id_hint(&buf).unwrap_or(0),
                            result: Err(ErrorReply::new(
                                ErrorCode::Oversized,
                                format!(
                                    "datagram exceeds the {MAX_DATAGRAM}-byte limit and was dropped"
                                ),
                            )),
                        },
                        None,
                    )),
                    Received::Datagram(bytes) => {
                        // This uid's turn, then the others' (see the
                        // module doc).
                        let reply = {
                            let _turn = turn.lock().await;
                            answer(broker, session, &bytes)
                        };
                        tokio::task::yield_now().await;
                        // Events the request caused (a release's Revoked)
                        // go out before its reply.
                        let mut ok = true;
                        while let Ok(event) = source.events.try_recv() {
                            ok &= out(&mut waiting, (DaemonMessage::Event(event), None));
                        }
                        match reply {
                            Some(reply) => ok && out(&mut waiting, reply),
                            // A request that is not answered (ReleaseNoReply).
                            None => ok,
                        }
                    }
                }
            }
        };
        if !ok {
            return;
        }
    }
}

/// Sends one encoded message (with its fd), waiting while the socket is full.
async fn send_bytes(
    socket: &UnixSeqpacket,
    bytes: &[u8],
    fd: Option<&SharedFd>,
) -> std::io::Result<()> {
    loop {
        let mut guard = socket.as_async_fd().writable().await?;
        match send_now(socket, bytes, fd) {
            Sent::Yes => return Ok(()),
            Sent::Full => guard.clear_ready(),
            Sent::Broken => return Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
}

/// Decodes one datagram of an established session and answers it; `None`
/// for a request that gets no answer.
fn answer(broker: &Broker, session: u64, bytes: &[u8]) -> Option<Reply> {
    let (id, request) = match decode_client(bytes) {
        Ok(ClientMessage::Request { id, request }) => (id, request),
        Ok(ClientMessage::Hello(_)) => {
            return Some((
                DaemonMessage::Reply {
                    id: 0,
                    result: Err(ErrorReply::new(
                        ErrorCode::HandshakeRequired,
                        "Hello was already sent on this session; send requests",
                    )),
                },
                None,
            ))
        }
        Err(e) => {
            tracing::info!(session, "undecodable datagram: {e}");
            return Some((
                DaemonMessage::Reply {
                    id: request_id_hint(bytes).unwrap_or(0),
                    result: Err(e.to_reply()),
                },
                None,
            ));
        }
    };
    let replies = request.expects_reply();
    let kind = request.name();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| broker.handle(session, request)));
    if !replies {
        // Nobody waits for this answer; a refusal is worth a log line.
        match &outcome {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::info!(session, request = id, code = %e.code, "{kind} refused (no reply sent): {}", e.message)
            }
            Err(_) => tracing::error!(session, request = id, "handling {kind} panicked"),
        }
        return None;
    }
    Some(match outcome {
        Ok(Ok((response, fd))) => (
            DaemonMessage::Reply {
                id,
                result: Ok(response),
            },
            fd,
        ),
        Ok(Err(e)) => (DaemonMessage::Reply { id, result: Err(e) }, None),
        Err(_) => {
            tracing::error!(
                session,
                request = id,
                "handling the request panicked; the session continues"
            );
            (
                DaemonMessage::Reply {
                    id,
                    result: Err(ErrorReply::new(
                        ErrorCode::Internal,
                        "barkeepd hit a bug handling this request (it is in the daemon's log); the session continues",
                    )),
                },
                None,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use barkeep_protocol::{
        encode_client, Access, ClientMessage, DaemonMessage, ErrorCode, Hello, MemAttrRequest,
        Request, Response, SliceRequest, MAX_DATAGRAM, PROTOCOL_VERSION,
    };
    use nix::sys::socket::{
        connect, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
    };

    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::path::Path;

    /// A minimal blocking client speaking raw datagrams.
    struct Raw(OwnedFd);

    impl Raw {
        fn connect(path: &Path) -> Raw {
            let fd = socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
            let tv = nix::sys::time::TimeVal::new(5, 0);
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
                .unwrap();
            Raw(fd)
        }

        fn send_bytes(&self, bytes: &[u8]) {
            send(self.0.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL).unwrap();
        }

        fn send(&self, msg: &ClientMessage) {
            self.send_bytes(&encode_client(msg).unwrap());
        }

        /// Next message and the fds that came with it; `None` at end of stream.
        fn recv(&self) -> Option<(DaemonMessage, Vec<OwnedFd>)> {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let got =
                crate::sys::recv_with_fds(self.0.as_fd(), &mut buf, MsgFlags::empty()).unwrap();
            let (n, fds) = (got.len, got.fds);
            if n == 0 {
                return None;
            }
            Some((barkeep_protocol::decode_daemon(&buf[..n]).unwrap(), fds))
        }

        fn hello(path: &Path) -> Raw {
            let c = Raw::connect(path);
            c.send(&ClientMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "t".into(),
            }));
            let (m, fds) = c.recv().unwrap();
            assert!(matches!(m, DaemonMessage::Welcome(_)), "{m:?}");
            assert!(fds.is_empty());
            c
        }

        fn request(
            &self,
            id: u64,
            request: Request,
        ) -> (Result<Response, barkeep_protocol::ErrorReply>, Vec<OwnedFd>) {
            self.send(&ClientMessage::Request { id, request });
            loop {
                match self.recv().unwrap() {
                    (DaemonMessage::Reply { id: got, result }, fds) => {
                        assert_eq!(got, id);
                        return (result, fds);
                    }
                    (DaemonMessage::Event(_), _) => continue,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    fn daemon() -> (tempfile::TempDir, crate::RunningDaemon) {
        let dir = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let text = format!(
            r#"
            socket = "{}/run/bk.sock"
            socket_mode = "0660"
            [[device]]
            name = "sim0"
            sim = {{ bars = [ {{ index = 0, size = "64K" }} ] }}
            [[grant]]
            device = "sim0"
            bar = 0
            access = "rw"
            uids = [{uid}]
            [admin]
            uids = [{uid}]
            "#,
            dir.path().display()
        );
        let d = crate::spawn(Config::from_toml_str(&text).unwrap()).unwrap();
        (dir, d)
    }

    fn acquire(offset: u64, length: u64) -> Request {
        Request::Acquire(SliceRequest {
            device: "sim0".into(),
            bar: 0,
            offset,
            length,
            access: Access::ReadWrite,
            memattr: MemAttrRequest::Uncached,
        })
    }

    #[test]
    fn socket_is_created_with_its_mode_and_removed_at_stop() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, d) = daemon();
        let path = d.socket_path().to_path_buf();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        // A second daemon on the same live socket is refused.
        let mut again = crate::Config::from_toml_str("").unwrap();
        again.socket = path.clone();
        let e = crate::spawn(again).err().unwrap();
        assert!(e.contains("already listening"), "{e}");
        d.stop();
        assert!(!path.exists());
    }

    #[test]
    fn grant_passes_exactly_one_fd_and_peek_sees_writes() {
        let (_dir, d) = daemon();
        let c = Raw::hello(d.socket_path());
        let (r, fds) = c.request(1, acquire(0x3000, 0x2000));
        let Ok(Response::Granted(lease, _)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(fds.len(), 1);
        assert_eq!(crate::sys::file_size(fds[0].as_fd()).unwrap(), 0x2000);
        crate::sys::pwrite_all(fds[0].as_fd(), b"hi", 0x1004).unwrap();
        let (r, fds2) = c.request(
            2,
            Request::Peek {
                device: "sim0".into(),
                bar: 0,
                offset: 0x4004,
                length: 2,
            },
        );
        assert_eq!(r, Ok(Response::Bytes(b"hi".to_vec())));
        assert!(fds2.is_empty(), "only a grant carries an fd");
        let (r, _) = c.request(3, Request::Release { lease: lease.id });
        assert_eq!(r, Ok(Response::Released));
    }

    #[test]
    fn datagrams_sent_back_to_back_are_answered_in_order() {
        let (_dir, d) = daemon();
        let c = Raw::hello(d.socket_path());
        // More than one batch, with an empty and an oversized datagram
        // among them: each gets its answer, in order.
        let mut expect = Vec::new();
        for id in 1..=11u64 {
            match id {
                4 => {
                    c.send_bytes(&[]);
                    expect.push((0, Some(ErrorCode::Malformed)));
                }
                7 => {
                    c.send_bytes(&vec![0u8; MAX_DATAGRAM + 10]);
                    expect.push((0, Some(ErrorCode::Oversized)));
                }
                _ => {
                    c.send(&ClientMessage::Request {
                        id,
                        request: Request::Status,
                    });
                    expect.push((id, None));
                }
            }
        }
        for (want_id, want_err) in expect {
            let (m, _) = c.recv().unwrap();
            let DaemonMessage::Reply { id, result } = m else {
                panic!("{m:?}")
            };
            match want_err {
                None => {
                    assert_eq!(id, want_id);
                    assert!(matches!(result, Ok(Response::Status(_))), "{result:?}");
                }
                Some(code) => assert_eq!(result.unwrap_err().code, code),
            }
        }
    }

    #[test]
    fn a_release_without_reply_is_confirmed_by_the_event_alone() {
        let (_dir, d) = daemon();
        let c = Raw::hello(d.socket_path());
        let (r, _fds) = c.request(1, acquire(0x3000, 0x1000));
        let Ok(Response::Granted(lease, _)) = r else {
            panic!("{r:?}")
        };
        c.send(&ClientMessage::Request {
            id: 2,
            request: Request::ReleaseNoReply { lease: lease.id },
        });
        // Releasing again (now unknown) and a lease that never existed:
        // refused silently, no reply either.
        for (id, l) in [(3, lease.id), (4, barkeep_protocol::LeaseId([9; 16]))] {
            c.send(&ClientMessage::Request {
                id,
                request: Request::ReleaseNoReply { lease: l },
            });
        }
        c.send(&ClientMessage::Request {
            id: 5,
            request: Request::Status,
        });
        // Exactly: the event, then the status reply.
        let (m, _) = c.recv().unwrap();
        assert_eq!(
            m,
            DaemonMessage::Event(barkeep_protocol::Event::Revoked {
                lease: lease.id,
                reason: barkeep_protocol::RevokeReason::Released,
            })
        );
        let (m, _) = c.recv().unwrap();
        assert!(
            matches!(
                m,
                DaemonMessage::Reply {
                    id: 5,
                    result: Ok(Response::Status(_))
                }
            ),
            "{m:?}"
        );
        // The range is free again.
        let (r, _) = c.request(6, acquire(0x3000, 0x1000));
        assert!(matches!(r, Ok(Response::Granted(..))), "{r:?}");
    }

    #[test]
    fn handshake_rules() {
        let (_dir, d) = daemon();
        let c = Raw::connect(d.socket_path());
        c.send(&ClientMessage::Hello(Hello {
            protocol_version: 99,
            client_name: "future".into(),
        }));
        let (m, _) = c.recv().unwrap();
        let DaemonMessage::Refused(e) = m else {
            panic!("{m:?}")
        };
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
        assert!(
            e.message.contains("99") && e.message.contains(&format!("version {PROTOCOL_VERSION}")),
            "{}",
            e.message
        );
        assert!(c.recv().is_none(), "the daemon closes after refusing");

        let c = Raw::connect(d.socket_path());
        c.send(&ClientMessage::Request {
            id: 5,
            request: Request::Status,
        });
        let (m, _) = c.recv().unwrap();
        assert!(
            matches!(m, DaemonMessage::Refused(ref e) if e.code == ErrorCode::HandshakeRequired),
            "{m:?}"
        );
        assert!(c.recv().is_none());
    }

    #[test]
    fn bad_datagrams_get_errors_and_the_session_goes_on() {
        let (_dir, d) = daemon();
        let c = Raw::hello(d.socket_path());
        // Garbage.
        c.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
        let (m, _) = c.recv().unwrap();
        assert!(
            matches!(
                m,
                DaemonMessage::Reply {
                    id: 0,
                    result: Err(_)
                }
            ),
            "{m:?}"
        );
        // Oversized, with a readable request id.
        let mut big = encode_client(&ClientMessage::Request {
            id: 77,
            request: Request::Status,
        })
        .unwrap();
        big.resize(MAX_DATAGRAM + 100, 0);
        c.send_bytes(&big);
        let (m, _) = c.recv().unwrap();
        assert!(
            matches!(m, DaemonMessage::Reply { id: 77, result: Err(ref e) } if e.code == ErrorCode::Oversized),
            "{m:?}"
        );
        // Truncated.
        let full = encode_client(&ClientMessage::Request {
            id: 9,
            request: acquire(0, 0x1000),
        })
        .unwrap();
        c.send_bytes(&full[..full.len() - 3]);
        let (m, _) = c.recv().unwrap();
        assert!(
            matches!(m, DaemonMessage::Reply { id: 9, result: Err(ref e) } if e.code == ErrorCode::Malformed),
            "{m:?}"
        );
        // Empty.
        c.send_bytes(&[]);
        let (m, _) = c.recv().unwrap();
        assert!(
            matches!(
                m,
                DaemonMessage::Reply {
                    id: 0,
                    result: Err(_)
                }
            ),
            "{m:?}"
        );
        // A second Hello.
        c.send(&ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "x".into(),
        }));
        let (m, _) = c.recv().unwrap();
        assert!(
            matches!(m, DaemonMessage::Reply { result: Err(ref e), .. } if e.code == ErrorCode::HandshakeRequired),
            "{m:?}"
        );
        // Still serving.
        let (r, _) = c.request(10, Request::Status);
        assert!(matches!(r, Ok(Response::Status(_))), "{r:?}");
    }

    #[test]
    fn a_peer_that_stops_writing_is_closed_not_answered() {
        let (_dir, d) = daemon();
        let c = Raw::hello(d.socket_path());
        nix::sys::socket::shutdown(c.0.as_raw_fd(), nix::sys::socket::Shutdown::Write).unwrap();
        assert!(
            c.recv().is_none(),
            "end of stream, not an empty-datagram error"
        );
    }

    #[test]
    fn disconnect_releases_and_revokes() {
        let (_dir, d) = daemon();
        let a = Raw::hello(d.socket_path());
        let (r, fds) = a.request(1, acquire(0, 0x1000));
        assert!(matches!(r, Ok(Response::Granted(..))));
        // A client that connects and vanishes without a word.
        drop(Raw::connect(d.socket_path()));
        drop(a);
        let b = Raw::hello(d.socket_path());
        let mut left = usize::MAX;
        for _ in 0..100 {
            let (r, _) = b.request(2, Request::ListLeases { all: true });
            let Ok(Response::Leases(l)) = r else {
                panic!("{r:?}")
            };
            left = l.len();
            if left == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(left, 0, "the closed session's lease is gone");
        assert_eq!(
            crate::sys::file_size(fds[0].as_fd()).unwrap(),
            0,
            "and its buffer revoked"
        );
        let (r, _) = b.request(3, acquire(0, 0x1000));
        assert!(
            matches!(r, Ok(Response::Granted(..))),
            "the range is free again: {r:?}"
        );
    }

    /// A simulated device whose export panics for one BAR, to show that a
    /// bug in one request leaves the daemon (and its lock) usable.
    struct Fragile(crate::backend::sim::SimDevice);

    impl crate::backend::Restart for Fragile {}

    impl crate::backend::Device for Fragile {
        fn info(&self) -> barkeep_protocol::DeviceInfo {
            self.0.info()
        }
        fn capabilities(&self) -> barkeep_protocol::Capabilities {
            self.0.capabilities()
        }
        fn notes(&self) -> Vec<String> {
            vec![]
        }
        fn export(
            &self,
            req: &crate::backend::ExportRequest,
        ) -> Result<crate::backend::Exported, crate::backend::BackendError> {
            assert!(req.range.offset != 0xf000, "deliberate test panic");
            self.0.export(req)
        }
        fn revoke(
            &self,
            b: crate::backend::Buffer,
        ) -> Result<crate::backend::RevokeOutcome, crate::backend::BackendError> {
            self.0.revoke(b)
        }
        fn revoke_all(&self) -> Result<(), crate::backend::BackendError> {
            self.0.revoke_all()
        }
        fn peek(
            &self,
            bar: u32,
            offset: u64,
            out: &mut [u8],
        ) -> Result<(), crate::backend::BackendError> {
            self.0.peek(bar, offset, out)
        }
        fn poke(
            &self,
            bar: u32,
            offset: u64,
            data: &[u8],
        ) -> Result<(), crate::backend::BackendError> {
            self.0.poke(bar, offset, data)
        }
    }

    #[test]
    fn a_panic_in_one_request_leaves_everyone_served() {
        let dir = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let text = format!(
            "socket = \"{}/bk.sock\"\n[[device]]\nname = \"sim0\"\nsim = {{ bars = [ {{ index = 0, size = \"64K\" }} ] }}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\naccess = \"rw\"\nuids = [{uid}]\n",
            dir.path().display()
        );
        let config = Config::from_toml_str(&text).unwrap();
        let crate::config::DeviceKind::Sim(sim) = &config.devices[0].kind else {
            unreachable!()
        };
        let dev = Fragile(crate::backend::sim::SimDevice::new("sim0", sim));
        let d = crate::spawn_with_devices(config.clone(), vec![Box::new(dev)]).unwrap();
        let a = Raw::hello(d.socket_path());
        let b = Raw::hello(d.socket_path());
        let (r, _) = a.request(1, acquire(0x1000, 0x1000));
        assert!(matches!(r, Ok(Response::Granted(..))), "{r:?}");
        // The export panics with the broker's lock held.
        let (r, fds) = a.request(2, acquire(0xf000, 0x1000));
        assert!(
            matches!(r, Err(ref e) if e.code == ErrorCode::Internal),
            "{r:?}"
        );
        assert!(fds.is_empty());
        // Same session and another session keep working.
        let (r, _) = a.request(3, acquire(0x2000, 0x1000));
        assert!(matches!(r, Ok(Response::Granted(..))), "{r:?}");
        let (r, _) = b.request(1, Request::Status);
        let Ok(Response::Status(st)) = r else {
            panic!("{r:?}")
        };
        assert_eq!((st.sessions, st.leases), (2, 2));
    }

    #[test]
    fn stopping_the_daemon_tells_holders_and_revokes() {
        let (_dir, d) = daemon();
        let c = Raw::hello(d.socket_path());
        let (r, fds) = c.request(1, acquire(0, 0x1000));
        let Ok(Response::Granted(lease, _)) = r else {
            panic!("{r:?}")
        };
        d.stop();
        let (m, _) = c.recv().unwrap();
        assert_eq!(
            m,
            DaemonMessage::Event(barkeep_protocol::Event::Revoked {
                lease: lease.id,
                reason: barkeep_protocol::RevokeReason::Shutdown
            })
        );
        assert!(c.recv().is_none(), "then the session closes");
        assert_eq!(crate::sys::file_size(fds[0].as_fd()).unwrap(), 0);
    }
}
