//! The async client on tokio: a reader task feeds every datagram to the
//! shared session state; requests are sent from the caller without
//! waiting (so that a [`Slice`] can release its lease from `Drop`), and a
//! writer task sends, in order, what the socket could not take at once.

use crate::conn::{self, AsyncWriter, Call, Conn, NewSocket, Outbox, Reconnect, Session};
use crate::error::{Error, Result};
use crate::progress::{ReconnectHook, Reconnecting};
use crate::{sys, ConnectOptions, Decision, ExplainRequest, Slice};
use barkeep_protocol::{
    DeviceInfo, Event, LeaseId, LeaseInfo, RevokeTarget, SliceRequest, StatusInfo, Welcome,
    MAX_DATAGRAM,
};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_seqpacket::UnixSeqpacket;

/// An async connection to `barkeepd` (tokio).
///
/// The same operations as [`crate::Client`], as `async fn`s. The reader and
/// writer tasks run on the runtime that called [`AsyncClient::connect`].
/// Slices it returns are the same [`Slice`] type as the blocking client's.
///
/// ```no_run
/// # async fn demo() -> Result<(), barkeep_client::Error> {
/// use barkeep_client::nonblocking::AsyncClient;
/// use barkeep_client::{SliceRequest, Access, MemAttrRequest, Event};
///
/// let client = AsyncClient::connect_default().await?;
/// let slice = client
///     .acquire(SliceRequest {
///         device: "nic0".into(),
///         bar: 0,
///         offset: 0x4000,
///         length: 0x2000,
///         access: Access::ReadOnly,
///         memattr: MemAttrRequest::Uncached,
///     })
///     .await?;
/// let map = slice.map()?;
/// println!("id register: {:#x}", map.read_u32(0)?);
/// // Wait until an administrator revokes it.
/// let Event::Revoked { lease, reason } = client.next_event().await?;
/// assert_eq!(lease, slice.lease().id);
/// assert!(slice.is_revoked());
/// # let _ = reason; Ok(()) }
/// ```
pub struct AsyncClient {
    session: Arc<Session>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("session_id", &self.welcome().session_id)
            .finish_non_exhaustive()
    }
}

impl AsyncClient {
    /// Connects to the daemon listening at `path` and performs the handshake.
    pub async fn connect(path: impl AsRef<Path>) -> Result<AsyncClient> {
        ConnectOptions::new().connect_async(path).await
    }

    /// Connects to `$BARKEEP_SOCKET`, or to the default socket.
    pub async fn connect_default() -> Result<AsyncClient> {
        ConnectOptions::new().connect_default_async().await
    }

    /// Options for a connection whose `Hello` carries `name`.
    pub fn with_name(name: impl Into<String>) -> ConnectOptions {
        ConnectOptions::new().name(name)
    }

    pub(crate) async fn connect_with(path: &Path, opts: &ConnectOptions) -> Result<AsyncClient> {
        let socket = UnixSeqpacket::connect(path).await.map_err(|e| {
            Error::io(
                format!(
                    "cannot connect to barkeepd at {} (is barkeepd running? point \
                     BARKEEP_SOCKET at its socket)",
                    path.display()
                ),
                e,
            )
        })?;
        let welcome = handshake(&socket, &opts.name, opts.handshake_timeout).await?;
        let socket = Arc::new(socket);
        let reconnect = opts.reconnect.map(|grace| Reconnect {
            path: path.to_path_buf(),
            name: opts.name.clone(),
            handshake_timeout: opts.handshake_timeout,
            grace,
            hook: opts.on_reconnect.clone(),
        });
        let conn = Conn::new(
            welcome,
            Outbox::Async {
                tx: Mutex::new(Some(writer(&socket))),
                socket: Mutex::new(socket.clone()),
            },
            reconnect,
        );
        tokio::spawn(read_loop(conn.clone(), socket));
        Ok(AsyncClient {
            session: Arc::new(Session { conn }),
        })
    }

    async fn call<T>(&self, call: Call<T>) -> Result<T> {
        let rx = self.session.conn.submit(call.request)?;
        let delivery = rx
            .await
            .map_err(|_| Error::Disconnected("the reply was lost".into()))??;
        (call.finish)(&self.session, delivery)
    }

    /// What the daemon said in the handshake (the first one, after a
    /// reconnect; see [`AsyncClient::session_id`]).
    pub fn welcome(&self) -> &Welcome {
        self.session.conn.welcome()
    }

    /// The current session id (newer after a reconnect).
    pub fn session_id(&self) -> u64 {
        self.session.conn.session_id()
    }

    /// The daemon's status, with per-device capabilities and notes.
    pub async fn status(&self) -> Result<StatusInfo> {
        self.call(conn::status()).await
    }

    /// The configured devices and their BARs.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.call(conn::devices()).await
    }

    /// Acquires a slice of a BAR (released when the [`Slice`] is dropped).
    /// Cancelling this future after the daemon granted the slice releases it.
    pub async fn acquire(&self, request: SliceRequest) -> Result<Slice> {
        self.call(conn::acquire(request)).await
    }

    /// Releases a lease by id: one held by this uid, from any of its
    /// sessions (any lease for an admin).
    pub async fn release(&self, lease: LeaseId) -> Result<()> {
        self.call(conn::release(lease)).await
    }

    /// Lists this uid's live leases from all its sessions, or every lease
    /// when `all` (admin only), in grant order, following the daemon's pages
    /// to the end (see [`crate::Client::leases`]).
    pub async fn leases(&self, all: bool) -> Result<Vec<LeaseInfo>> {
        let mut leases = Vec::new();
        let mut after = 0;
        loop {
            match self.call(conn::leases_page(all, after)).await {
                Ok((page, next)) => {
                    leases.extend(page);
                    match next {
                        Some(n) => after = n,
                        None => return Ok(leases),
                    }
                }
                Err(e) if after == 0 && conn::unknown_request(&e) => {
                    return self.call(conn::leases(all)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Revokes a lease or a device's leases (admin only); returns the count.
    pub async fn revoke(&self, target: RevokeTarget) -> Result<u32> {
        self.call(conn::revoke(target)).await
    }

    /// Reads BAR bytes through the daemon's backend (admin only).
    pub async fn peek(&self, device: &str, bar: u32, offset: u64, length: u64) -> Result<Vec<u8>> {
        self.call(conn::peek(device, bar, offset, length)).await
    }

    /// Writes BAR bytes through the daemon's backend (admin only).
    pub async fn poke(&self, device: &str, bar: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.call(conn::poke(device, bar, offset, data)).await
    }

    /// How the daemon's policy decides `request`, without acquiring
    /// anything (see [`crate::Client::explain`]).
    pub async fn explain(&self, request: ExplainRequest) -> Result<Decision> {
        self.call(conn::explain(request)).await
    }

    /// Makes the daemon reload its configuration (admin only); returns the
    /// number of grants and of leases revoked by the new policy.
    pub async fn reload(&self) -> Result<(u32, u32)> {
        self.call(conn::reload()).await
    }

    /// The daemon's metrics in Prometheus text exposition format.
    pub async fn metrics(&self) -> Result<String> {
        self.call(conn::metrics()).await
    }

    /// Waits for the next event from the daemon; [`Error::Disconnected`] once
    /// the connection is gone and no event is left.
    pub async fn next_event(&self) -> Result<Event> {
        self.session.conn.next_event().await
    }

    /// The next queued event, if any, without waiting.
    pub fn try_next_event(&self) -> Result<Option<Event>> {
        self.session.conn.try_next_event()
    }
}

async fn handshake(socket: &UnixSeqpacket, name: &str, timeout: Duration) -> Result<Welcome> {
    tokio::time::timeout(timeout, handshake_inner(socket, name))
        .await
        .map_err(|_| {
            Error::Disconnected(format!(
                "barkeepd did not answer the handshake within {timeout:?}"
            ))
        })?
}

async fn handshake_inner(socket: &UnixSeqpacket, name: &str) -> Result<Welcome> {
    let hello = conn::hello(name)?;
    socket
        .send(&hello)
        .await
        .map_err(|e| Error::io("cannot send the handshake to barkeepd", e))?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = [0u8; sys::CMSG_BUF];
    let (info, ancillary) = socket
        .recv_with_ancillary(&mut buf, &mut cmsg)
        .await
        .map_err(|e| Error::io("cannot receive the handshake reply", e))?;
    let (fds, _) = sys::collect_fds(ancillary);
    conn::handshake_reply(&buf[..info.bytes_read()], fds, info.truncated())
}

/// Starts the writer task of `socket` and returns its queue.
fn writer(socket: &Arc<UnixSeqpacket>) -> AsyncWriter {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    tokio::spawn(write_loop(socket.clone(), rx, queued.clone()));
    AsyncWriter { tx, queued }
}

/// Sends what could not be sent at once (see [`Outbox`]), in order.
async fn write_loop(
    socket: Arc<UnixSeqpacket>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(bytes) = rx.recv().await {
        let sent = socket.send(&bytes).await;
        queued.fetch_sub(1, Ordering::AcqRel);
        if sent.is_err() {
            // The reader sees the end too, and reconnects or closes.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

async fn read_loop(conn: Arc<Conn>, mut socket: Arc<UnixSeqpacket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = [0u8; sys::CMSG_BUF];
    loop {
        let why = match socket.recv_with_ancillary(&mut buf, &mut cmsg).await {
            Ok((info, ancillary)) => {
                let (len, truncated) = (info.bytes_read(), info.truncated());
                let (fds, fds_dropped) = sys::collect_fds(ancillary);
                if len == 0 && !truncated && fds.is_empty() {
                    "barkeepd closed the connection".to_string()
                } else {
                    if let Err(why) = conn.dispatch(&buf[..len], fds, truncated, fds_dropped) {
                        return conn.close(format!("protocol violation by barkeepd: {why}"));
                    }
                    continue;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => format!("cannot receive from barkeepd: {e}"),
        };
        match reconnect(&conn, &why).await {
            Some(new) => socket = new,
            None => return conn.close(why),
        }
    }
}

/// Connects again after the connection broke, when the session holds
/// leases to reclaim (see `conn`); `None` when it should not or could not.
async fn reconnect(conn: &Arc<Conn>, why: &str) -> Option<Arc<UnixSeqpacket>> {
    if !conn.begin_reconnect(why) {
        return None;
    }
    let opts = conn.reconnect_options()?.clone();
    let start = Instant::now();
    let deadline = start + opts.grace;
    let mut delay = Reconnect::FIRST_DELAY;
    let mut attempt = 0;
    loop {
        if conn.is_closed() {
            return None;
        }
        attempt += 1;
        ReconnectHook::call(
            opts.hook.as_ref(),
            Reconnecting::Attempt {
                attempt,
                why: why.to_string(),
                elapsed: start.elapsed(),
                within: opts.grace,
            },
        );
        if let Ok(socket) = UnixSeqpacket::connect(&opts.path).await {
            if let Ok(welcome) = handshake(&socket, &opts.name, opts.handshake_timeout).await {
                let socket = Arc::new(socket);
                let resumed = conn.resume(
                    welcome,
                    NewSocket::Async {
                        tx: writer(&socket),
                        socket: socket.clone(),
                    },
                );
                if !resumed {
                    return None;
                }
                let step = Reconnecting::Resumed { attempts: attempt };
                ReconnectHook::call(opts.hook.as_ref(), step);
                return Some(socket);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let step = Reconnecting::GaveUp {
                attempts: attempt,
                why: why.to_string(),
            };
            ReconnectHook::call(opts.hook.as_ref(), step);
            return None;
        }
        tokio::time::sleep(delay.min(left)).await;
        delay = (delay * 2).min(Reconnect::MAX_DELAY);
    }
}
