//! Session state shared by the blocking and the async client: request ids,
//! routing of replies (and the fd of a grant) to the waiting caller, the
//! revocation flags and reclaim tokens of live slices, the queue of daemon
//! events, and reconnection after a daemon restart.
//!
//! The transports (`blocking`, `nonblocking`) only move datagrams: they feed
//! every received datagram to [`Conn::dispatch`] and send what
//! [`Conn::submit`] hands to their [`Outbox`].
//!
//! Reconnection: when the connection breaks while the session holds live
//! leases (a restart under systemd's fd store or a takeover leaves them
//! alive), the transport's reader connects again with backoff (50 ms
//! doubling to 2 s, for up to the reclaim grace) and [`Conn::resume`]
//! reclaims every lease with its token. Mappings never notice: the buffer
//! and its fd did not change. Requests made meanwhile wait and are sent
//! once reconnected; requests in flight when it broke fail with
//! `Disconnected` (the daemon may or may not have handled them).

use crate::error::{Error, Result};
use barkeep_protocol::{
    decode_daemon, encode_client, ClientMessage, DaemonMessage, DeviceInfo, Event, Hello, LeaseId,
    LeaseInfo, ReclaimToken, Request, Response, RevokeReason, RevokeTarget, SliceRequest,
    StatusInfo, Welcome, PROTOCOL_VERSION,
};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// Events kept for a caller that does not read them; older ones are dropped.
const MAX_QUEUED_EVENTS: usize = 1024;

/// Whether (and why) a lease has ended, shared by a [`crate::Slice`], its
/// [`crate::Mapping`]s and the reader that hears the daemon's events.
#[derive(Debug, Default)]
pub(crate) struct RevokeFlag {
    local: OnceLock<RevokeReason>,
    /// For a slice inherited from `barkeep exec`: the word in the status
    /// page where the parent reports the lease's end.
    status: Option<crate::inherited::StatusWord>,
}

impl RevokeFlag {
    /// A flag that also reads a `barkeep exec` parent's status word.
    pub(crate) fn with_status(status: Option<crate::inherited::StatusWord>) -> RevokeFlag {
        RevokeFlag {
            local: OnceLock::new(),
            status,
        }
    }

    /// Marks the lease ended; the first reason wins.
    pub(crate) fn set(&self, reason: RevokeReason) {
        let _ = self.local.set(reason);
    }

    pub(crate) fn get(&self) -> Option<RevokeReason> {
        self.local
            .get()
            .copied()
            .or_else(|| self.status.as_ref().and_then(|s| s.get()))
    }
}

/// A reply as handed to the caller that sent the request.
pub(crate) struct Delivery {
    pub(crate) response: Response,
    /// The fd and revocation flag of a `Granted` reply.
    pub(crate) grant: Option<(OwnedFd, Arc<RevokeFlag>)>,
}

type Waiter = Option<oneshot::Sender<Result<Delivery>>>;

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

impl Outbox {
    /// Sends one datagram. `detached` sends never block (they come from
    /// `Drop` and from the reader, which must not wait on the daemon).
    fn send(&self, bytes: Vec<u8>, detached: bool) -> Result<()> {
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
    fn shutdown(&self) {
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
    fn replace(&self, new: NewSocket) {
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

struct State {
    next_id: u64,
    pending: HashMap<u64, Waiter>,
    leases: HashMap<LeaseId, Arc<RevokeFlag>>,
    /// Reclaim tokens of the live leases.
    tokens: HashMap<LeaseId, ReclaimToken>,
    /// Reclaim requests in flight after a reconnect, by request id.
    reclaims: HashMap<u64, LeaseId>,
    /// Releases sent as `ReleaseNoReply`, by lease, with their request id,
    /// until the daemon's `Revoked` event confirms them. A daemon older
    /// than that request answers `unknown-request` instead; the release is
    /// then sent again as a plain `Release`.
    quiet: HashMap<LeaseId, u64>,
    /// The daemon answered a `ReleaseNoReply` with `unknown-request`.
    quiet_unsupported: bool,
    /// Set while the reader connects again; requests wait in `queued`.
    reconnecting: bool,
    queued: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

/// One session with the daemon, after a successful handshake.
pub(crate) struct Conn {
    welcome: Welcome,
    /// The current session id (changes when the client reconnects).
    session_id: AtomicU64,
    state: Mutex<State>,
    event_cv: Condvar,
    event_notify: Notify,
    outbox: Outbox,
    reconnect: Option<Reconnect>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not turn every later call into a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    pub(crate) fn new(welcome: Welcome, outbox: Outbox, reconnect: Option<Reconnect>) -> Arc<Conn> {
        Arc::new(Conn {
            session_id: AtomicU64::new(welcome.session_id),
            welcome,
            state: Mutex::new(State {
                next_id: 1,
                pending: HashMap::new(),
                leases: HashMap::new(),
                tokens: HashMap::new(),
                reclaims: HashMap::new(),
                quiet: HashMap::new(),
                quiet_unsupported: false,
                reconnecting: false,
                queued: Vec::new(),
                events: VecDeque::new(),
                closed: None,
            }),
            event_cv: Condvar::new(),
            event_notify: Notify::new(),
            outbox,
            reconnect,
        })
    }

    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The current session id (a reconnect gets a new one).
    pub(crate) fn session_id(&self) -> u64 {
        self.session_id.load(Ordering::Relaxed)
    }

    /// How to reconnect, if the client may.
    pub(crate) fn reconnect_options(&self) -> Option<&Reconnect> {
        self.reconnect.as_ref()
    }

    /// Called by the reader when the connection broke: `true` when it
    /// should connect again (the client may, and the session holds live
    /// leases to reclaim); requests in flight fail, new ones wait.
    pub(crate) fn begin_reconnect(&self, why: &str) -> bool {
        if self.reconnect.is_none() {
            return false;
        }
        let pending = {
            let mut st = lock(&self.state);
            // Every live lease of the session has a token (detached ones
            // too: they still belong to it).
            if st.closed.is_some() || st.tokens.is_empty() {
                return false;
            }
            st.reconnecting = true;
            st.reclaims.clear();
            std::mem::take(&mut st.pending)
        };
        for tx in pending.into_values().flatten() {
            let _ = tx.send(Err(Error::Disconnected(format!(
                "{why}; reconnecting to reclaim this session's leases (the request may or may not have been handled)"
            ))));
        }
        true
    }

    /// Whether the client was closed (by its owner) meanwhile.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed.is_some()
    }

    /// Switches to a new connection after a reconnect: reclaims every live
    /// lease with its token, then sends the requests that waited. `false`
    /// when the client was closed meanwhile (the new socket is unused).
    pub(crate) fn resume(&self, welcome: Welcome, socket: NewSocket) -> bool {
        let (reclaims, queued) = {
            let mut st = lock(&self.state);
            if st.closed.is_some() {
                return false;
            }
            self.outbox.replace(socket);
            self.session_id.store(welcome.session_id, Ordering::Relaxed);
            let mut reclaims = Vec::new();
            let leases: Vec<(LeaseId, ReclaimToken)> =
                st.tokens.iter().map(|(id, t)| (*id, *t)).collect();
            for (lease, token) in leases {
                let id = st.next_id;
                st.next_id += 1;
                st.reclaims.insert(id, lease);
                let msg = ClientMessage::Request {
                    id,
                    request: Request::Reclaim { lease, token },
                };
                if let Ok(bytes) = encode_client(&msg) {
                    reclaims.push(bytes);
                }
            }
            st.reconnecting = false;
            (reclaims, std::mem::take(&mut st.queued))
        };
        let all: Vec<Vec<u8>> = reclaims.into_iter().chain(queued).collect();
        match &self.outbox {
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
                    let _ = self.outbox.send(bytes, true);
                }
            }
        }
        true
    }

    /// Sends a request; the receiver yields its reply.
    pub(crate) fn submit(&self, request: Request) -> Result<oneshot::Receiver<Result<Delivery>>> {
        let (tx, rx) = oneshot::channel();
        self.send_request(request, Some(tx), false)?;
        Ok(rx)
    }

    /// Sends a request whose reply is discarded.
    pub(crate) fn submit_detached(&self, request: Request) {
        let _ = self.send_request(request, None, true);
    }

    /// Releases a lease without waiting: `ReleaseNoReply`, so that the
    /// daemon sends back only the `Revoked` event (or `Release` to a daemon
    /// that does not know it).
    pub(crate) fn release_detached(&self, lease: LeaseId) {
        let request = if lock(&self.state).quiet_unsupported {
            Request::Release { lease }
        } else {
            Request::ReleaseNoReply { lease }
        };
        self.submit_detached(request);
    }

    fn send_request(&self, request: Request, waiter: Waiter, detached: bool) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(why) = &st.closed {
            return Err(Error::Disconnected(why.clone()));
        }
        let id = st.next_id;
        st.next_id += 1;
        let msg = ClientMessage::Request { id, request };
        let bytes = encode_client(&msg)
            .map_err(|e| Error::Protocol(format!("cannot encode request: {e}")))?;
        // Registered before sending, so the reply cannot overtake it.
        match &msg {
            ClientMessage::Request {
                request: Request::ReleaseNoReply { lease },
                ..
            } => {
                st.quiet.insert(*lease, id);
            }
            _ => {
                st.pending.insert(id, waiter);
            }
        }
        if st.reconnecting {
            // Sent once reconnected (see `resume`).
            st.queued.push(bytes);
            return Ok(());
        }
        drop(st);
        let sent = self.outbox.send(bytes, detached);
        if sent.is_err() {
            let mut st = lock(&self.state);
            st.pending.remove(&id);
            st.quiet.retain(|_, i| *i != id);
        }
        sent
    }

    /// Stops tracking a lease (its slice was dropped: it is released).
    pub(crate) fn forget_lease(&self, lease: &LeaseId) {
        let mut st = lock(&self.state);
        st.leases.remove(lease);
        st.tokens.remove(lease);
    }

    /// Stops tracking a detached slice's revocation; the lease still
    /// belongs to the session, so a reconnect still reclaims it.
    pub(crate) fn detach_lease(&self, lease: &LeaseId) {
        lock(&self.state).leases.remove(lease);
    }

    /// Routes one received datagram. An `Err` is a fatal protocol violation:
    /// the transport must [`Conn::close`] the connection with it.
    pub(crate) fn dispatch(
        &self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        truncated: bool,
        fds_dropped: bool,
    ) -> std::result::Result<(), String> {
        if truncated {
            return Err(format!(
                "a datagram exceeded the {}-byte limit",
                barkeep_protocol::MAX_DATAGRAM
            ));
        }
        let msg = decode_daemon(bytes).map_err(|e| format!("undecodable message: {e}"))?;
        match msg {
            DaemonMessage::Reply { id, result } => {
                self.route_reply(id, result, fds, fds_dropped);
                Ok(())
            }
            DaemonMessage::Event(event) => {
                if !fds.is_empty() {
                    return Err(format!("{} fd(s) attached to an event", fds.len()));
                }
                self.on_event(event);
                Ok(())
            }
            DaemonMessage::Welcome(_) | DaemonMessage::Refused(_) => {
                Err("a handshake message after the handshake".into())
            }
        }
    }

    fn route_reply(
        &self,
        id: u64,
        result: std::result::Result<Response, barkeep_protocol::ErrorReply>,
        mut fds: Vec<OwnedFd>,
        fds_dropped: bool,
    ) {
        if let Some(lease) = {
            let mut st = lock(&self.state);
            st.reclaims.remove(&id)
        } {
            return self.reclaimed(lease, result);
        }
        if let Err(e) = &result {
            if e.code == barkeep_protocol::ErrorCode::UnknownRequest {
                let mut st = lock(&self.state);
                let quiet = st.quiet.iter().find(|&(_, &i)| i == id).map(|(l, _)| *l);
                if let Some(lease) = quiet {
                    // An older daemon: release the plain way from now on.
                    st.quiet.remove(&lease);
                    st.quiet_unsupported = true;
                    drop(st);
                    return self.submit_detached(Request::Release { lease });
                }
            }
        }
        let outcome = match result {
            Ok(Response::Granted(lease, token)) if fds.len() == 1 => {
                let fd = fds.pop().expect("one fd");
                let flag = Arc::new(RevokeFlag::default());
                let mut st = lock(&self.state);
                st.leases.insert(lease.id, flag.clone());
                st.tokens.insert(lease.id, token);
                drop(st);
                Ok(Delivery {
                    response: Response::Granted(lease, token),
                    grant: Some((fd, flag)),
                })
            }
            Ok(Response::Granted(lease, _)) if fds_dropped => {
                // The kernel could not give us the fd: this process is at
                // its open file limit. Give the lease back.
                self.release_detached(lease.id);
                Err(Error::Io {
                    context: format!(
                        "barkeepd granted lease {} but the kernel dropped its buffer fd on the way in, because this process is at its open file limit (RLIMIT_NOFILE, `ulimit -n`); the lease was released: close fds or raise the limit",
                        lease.id
                    ),
                    source: std::io::Error::from_raw_os_error(libc::EMFILE),
                })
            }
            Ok(Response::Granted(lease, _)) => {
                // No usable buffer: give the lease back rather than leak it.
                self.release_detached(lease.id);
                Err(Error::Protocol(format!(
                    "the grant of lease {} carried {} fds instead of exactly one",
                    lease.id,
                    fds.len()
                )))
            }
            // Dropping `fds` closes them: only a grant may carry one.
            Ok(_) | Err(_) if !fds.is_empty() => Err(Error::Protocol(format!(
                "{} fd(s) attached to a reply that is not a grant",
                fds.len()
            ))),
            Ok(response) => Ok(Delivery {
                response,
                grant: None,
            }),
            Err(reply) => Err(Error::Daemon(reply)),
        };
        let waiter = lock(&self.state).pending.remove(&id);
        let undelivered = match waiter {
            Some(Some(tx)) => tx.send(outcome).err(),
            // Detached request, or an id we never sent (e.g. 0).
            _ => Some(outcome),
        };
        // A grant nobody is waiting for (cancelled future, detached request):
        // release it so the lease does not outlive its only fd.
        if let Some(Ok(Delivery {
            response: Response::Granted(lease, _),
            ..
        })) = undelivered
        {
            self.forget_lease(&lease.id);
            self.release_detached(lease.id);
        }
    }

    /// The answer to a reclaim after a reconnect: a lease the new daemon
    /// does not give back has ended.
    fn reclaimed(
        &self,
        lease: LeaseId,
        result: std::result::Result<Response, barkeep_protocol::ErrorReply>,
    ) {
        if matches!(result, Ok(Response::Reclaimed(_))) {
            return;
        }
        // Told at once, as an event: a holder waiting for events (e.g.
        // `barkeep acquire --hold`) learns now, not at its next request.
        self.on_event(Event::Revoked {
            lease,
            reason: RevokeReason::Disconnected,
        });
    }

    fn on_event(&self, event: Event) {
        let mut st = lock(&self.state);
        match &event {
            Event::Revoked { lease, reason } => {
                st.quiet.remove(lease);
                st.tokens.remove(lease);
                if let Some(flag) = st.leases.remove(lease) {
                    flag.set(*reason);
                }
            }
        }
        if st.events.len() >= MAX_QUEUED_EVENTS {
            st.events.pop_front();
        }
        st.events.push_back(event);
        drop(st);
        self.event_cv.notify_all();
        self.event_notify.notify_waiters();
    }

    /// Ends the session: fails pending requests, marks every live slice
    /// revoked (the daemon ends a session's leases with its connection) and
    /// wakes event waiters. Idempotent.
    pub(crate) fn close(&self, why: String) {
        let (pending, leases) = {
            let mut st = lock(&self.state);
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(why.clone());
            st.reconnecting = false;
            st.queued.clear();
            st.quiet.clear();
            st.tokens.clear();
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.leases),
            )
        };
        for flag in leases.values() {
            flag.set(RevokeReason::Disconnected);
        }
        for tx in pending.into_values().flatten() {
            let _ = tx.send(Err(Error::Disconnected(why.clone())));
        }
        self.outbox.shutdown();
        self.event_cv.notify_all();
        self.event_notify.notify_waiters();
    }

    /// Closes the connection because the last handle to it is gone.
    pub(crate) fn hang_up(&self) {
        self.close("the client closed the connection".into());
    }

    /// The next queued event, without waiting.
    pub(crate) fn try_next_event(&self) -> Result<Option<Event>> {
        let mut st = lock(&self.state);
        match st.events.pop_front() {
            Some(e) => Ok(Some(e)),
            None => match &st.closed {
                Some(why) => Err(Error::Disconnected(why.clone())),
                None => Ok(None),
            },
        }
    }

    /// Waits for the next event, up to `timeout` (forever with `None`).
    /// Must not be called from async code.
    pub(crate) fn next_event_blocking(&self, timeout: Option<Duration>) -> Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.state);
        loop {
            if let Some(e) = st.events.pop_front() {
                return Ok(Some(e));
            }
            if let Some(why) = &st.closed {
                return Err(Error::Disconnected(why.clone()));
            }
            st = match deadline {
                None => self.event_cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    self.event_cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Waits for the next event (async).
    pub(crate) async fn next_event(&self) -> Result<Event> {
        loop {
            let notified = self.event_notify.notified();
            tokio::pin!(notified);
            // Register interest before looking, so a wake-up between the look
            // and the await is not lost.
            notified.as_mut().enable();
            if let Some(e) = self.try_next_event()? {
                return Ok(e);
            }
            notified.await;
        }
    }
}

/// The connection as held by clients and slices: when the last holder is
/// gone the socket is shut down, which ends the session (and its leases).
pub(crate) struct Session {
    pub(crate) conn: Arc<Conn>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.hang_up();
    }
}

/// The `Hello` datagram.
pub(crate) fn hello(client_name: &str) -> Result<Vec<u8>> {
    let name: String = truncate_name(client_name);
    encode_client(&ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: name,
    }))
    .map_err(|e| Error::Protocol(format!("cannot encode hello: {e}")))
}

fn truncate_name(name: &str) -> String {
    let mut end = name.len().min(barkeep_protocol::MAX_CLIENT_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Interprets the daemon's answer to `Hello`.
pub(crate) fn handshake_reply(bytes: &[u8], fds: Vec<OwnedFd>, truncated: bool) -> Result<Welcome> {
    if bytes.is_empty() && !truncated {
        return Err(Error::Disconnected(
            "barkeepd closed the connection during the handshake".into(),
        ));
    }
    if !fds.is_empty() {
        return Err(Error::Protocol(format!(
            "{} fd(s) attached to the handshake reply",
            fds.len()
        )));
    }
    if truncated {
        return Err(Error::Protocol("oversized handshake reply".into()));
    }
    match decode_daemon(bytes) {
        Ok(DaemonMessage::Welcome(w)) => Ok(w),
        Ok(DaemonMessage::Refused(r)) => Err(Error::Refused(r)),
        Ok(other) => Err(Error::Protocol(format!(
            "expected Welcome or Refused, got {other:?}"
        ))),
        Err(e) => Err(Error::Protocol(format!("undecodable handshake reply: {e}"))),
    }
}

/// The client name used when none is given: the program's file name.
pub(crate) fn default_client_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "barkeep-client".into())
}

/// A request and how to turn its reply into the caller's type; shared by the
/// blocking and async clients so each operation is written once.
pub(crate) struct Call<T> {
    pub(crate) request: Request,
    pub(crate) finish: Finish<T>,
}

/// Turns a delivered reply into the caller's value.
pub(crate) type Finish<T> = Box<dyn FnOnce(&Arc<Session>, Delivery) -> Result<T> + Send>;

fn unexpected(want: &str, got: &Response) -> Error {
    Error::Protocol(format!("expected a {want} reply, got {got:?}"))
}

pub(crate) fn status() -> Call<StatusInfo> {
    Call {
        request: Request::Status,
        finish: Box::new(|_, d| match d.response {
            Response::Status(s) => Ok(s),
            other => Err(unexpected("Status", &other)),
        }),
    }
}

pub(crate) fn devices() -> Call<Vec<DeviceInfo>> {
    Call {
        request: Request::ListDevices,
        finish: Box::new(|_, d| match d.response {
            Response::Devices(v) => Ok(v),
            other => Err(unexpected("Devices", &other)),
        }),
    }
}

pub(crate) fn acquire(req: SliceRequest) -> Call<crate::Slice> {
    Call {
        request: Request::Acquire(req),
        finish: Box::new(|session, d| match (d.response, d.grant) {
            (Response::Granted(lease, _), Some((fd, flag))) => {
                Ok(crate::Slice::new(lease, fd, flag, session.clone()))
            }
            (other, _) => Err(unexpected("Granted", &other)),
        }),
    }
}

pub(crate) fn release(lease: LeaseId) -> Call<()> {
    Call {
        request: Request::Release { lease },
        finish: Box::new(move |session, d| match d.response {
            Response::Released => {
                // A slice of this lease in this process must stop using it.
                let flag = {
                    let mut st = lock(&session.conn.state);
                    st.tokens.remove(&lease);
                    st.leases.remove(&lease)
                };
                if let Some(flag) = flag {
                    flag.set(RevokeReason::Released);
                }
                Ok(())
            }
            other => Err(unexpected("Released", &other)),
        }),
    }
}

pub(crate) fn leases(all: bool) -> Call<Vec<LeaseInfo>> {
    Call {
        request: Request::ListLeases { all },
        finish: Box::new(|_, d| match d.response {
            Response::Leases(v) => Ok(v),
            other => Err(unexpected("Leases", &other)),
        }),
    }
}

/// One page of a listing ([`Request::ListLeasesPage`]): the leases after
/// `after`, and where the next page starts (`None` after the last).
pub(crate) fn leases_page(all: bool, after: u64) -> Call<(Vec<LeaseInfo>, Option<u64>)> {
    Call {
        request: Request::ListLeasesPage { all, after },
        finish: Box::new(|_, d| match d.response {
            Response::LeasesPage { leases, next } => Ok((leases, next)),
            other => Err(unexpected("LeasesPage", &other)),
        }),
    }
}

/// Whether an error says the daemon does not know a request (an older
/// daemon: the client asks the old way).
pub(crate) fn unknown_request(e: &Error) -> bool {
    e.daemon_code() == Some(barkeep_protocol::ErrorCode::UnknownRequest)
}

pub(crate) fn revoke(target: RevokeTarget) -> Call<u32> {
    Call {
        request: Request::Revoke(target),
        finish: Box::new(|_, d| match d.response {
            Response::Revoked { count } => Ok(count),
            other => Err(unexpected("Revoked", &other)),
        }),
    }
}

pub(crate) fn peek(device: &str, bar: u32, offset: u64, length: u64) -> Call<Vec<u8>> {
    Call {
        request: Request::Peek {
            device: device.to_string(),
            bar,
            offset,
            length,
        },
        finish: Box::new(|_, d| match d.response {
            Response::Bytes(b) => Ok(b),
            other => Err(unexpected("Bytes", &other)),
        }),
    }
}

pub(crate) fn poke(device: &str, bar: u32, offset: u64, data: &[u8]) -> Call<()> {
    Call {
        request: Request::Poke {
            device: device.to_string(),
            bar,
            offset,
            data: data.to_vec(),
        },
        finish: Box::new(|_, d| match d.response {
            Response::Poked => Ok(()),
            other => Err(unexpected("Poked", &other)),
        }),
    }
}

pub(crate) fn explain(
    request: barkeep_protocol::ExplainRequest,
) -> Call<barkeep_protocol::Decision> {
    Call {
        request: Request::Explain(request),
        finish: Box::new(|_, d| match d.response {
            Response::Decision(decision) => Ok(decision),
            other => Err(unexpected("Decision", &other)),
        }),
    }
}

pub(crate) fn reload() -> Call<(u32, u32)> {
    Call {
        request: Request::Reload,
        finish: Box::new(|_, d| match d.response {
            Response::Reloaded { grants, revoked } => Ok((grants, revoked)),
            other => Err(unexpected("Reloaded", &other)),
        }),
    }
}

pub(crate) fn metrics() -> Call<String> {
    Call {
        request: Request::Metrics,
        finish: Box::new(|_, d| match d.response {
            Response::Metrics(text) => Ok(text),
            other => Err(unexpected("Metrics", &other)),
        }),
    }
}
