//! Session state shared by the blocking and the async client: request ids,
//! routing of replies (and the fd of a grant) to the waiting caller, the
//! revocation flags and reclaim tokens of live slices, the queue of daemon
//! events, and reconnection after a daemon restart.
//!
//! The transports (`blocking`, `nonblocking`) only move datagrams: they feed
//! every received datagram to [`Conn::dispatch`] and send what
//! [`Conn::submit`] hands to their [`Outbox`] ([`outbox`]: the one place
//! here that touches a socket). The messages themselves, `Hello` and one
//! [`Call`] per request, are in [`calls`].
//!
//! Reconnection: when the connection breaks while the session holds live
//! leases (a restart under systemd's fd store or a takeover leaves them
//! alive), the transport's reader connects again with backoff (50 ms
//! doubling to 2 s, for up to the reclaim grace) and [`Conn::resume`]
//! reclaims every lease with its token. Mappings never notice: the buffer
//! and its fd did not change. Requests made meanwhile wait and are sent
//! once reconnected; requests in flight when it broke fail with
//! `Disconnected` (the daemon may or may not have handled them).

mod calls;
mod outbox;

pub(crate) use calls::*;
pub(crate) use outbox::{AsyncWriter, NewSocket, Outbox, Reconnect};

use crate::error::{Error, Result};
use crate::mapping::RevokeFlag;
use barkeep_protocol::{
    decode_daemon, encode_client, ClientMessage, DaemonMessage, Event, LeaseId, ReclaimToken,
    Request, Response, RevokeReason, Welcome,
};
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Events kept for a caller that does not read them; older ones are dropped.
const MAX_QUEUED_EVENTS: usize = 1024;

/// A reply as handed to the caller that sent the request.
pub(crate) struct Delivery {
    pub(crate) response: Response,
    /// The fd and revocation flag of a `Granted` reply.
    pub(crate) grant: Option<(OwnedFd, Arc<RevokeFlag>)>,
}

type Waiter = Option<oneshot::Sender<Result<Delivery>>>;

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
        self.outbox.send_reclaims(all);
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
