//! The blocking client: a SOCK_SEQPACKET socket, and a reader thread that
//! feeds every datagram to the shared session state (replies to their
//! callers, events to the queue and to the slices' revocation flags).

use crate::conn::{self, Call, Conn, NewSocket, Outbox, Reconnect, Session};
use crate::error::{Error, Result};
use crate::progress::{ReconnectHook, Reconnecting};
use crate::{sys, ConnectOptions, Decision, ExplainRequest, Slice};
use barkeep_protocol::{
    DeviceInfo, Event, LeaseId, LeaseInfo, RevokeTarget, SliceRequest, StatusInfo, Welcome,
    MAX_DATAGRAM,
};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A blocking connection to `barkeepd`.
///
/// Every method sends one request and waits for its reply; the client may be
/// shared between threads (`&self` everywhere). Dropping the client closes
/// the connection once no [`Slice`] from it is alive either; the daemon then
/// ends every lease of the session.
///
/// Do not call its methods from inside an async runtime (they block the
/// thread and panic there); use [`crate::nonblocking::AsyncClient`] instead.
///
/// ```no_run
/// use barkeep_client::{Client, SliceRequest, Access, MemAttrRequest};
///
/// let client = Client::connect_default()?;
/// println!("daemon {}", client.welcome().daemon_version);
/// let slice = client.acquire(SliceRequest {
///     device: "nic0".into(),
///     bar: 2,
///     offset: 0x1000,
///     length: 0x1000,
///     access: Access::ReadWrite,
///     memattr: MemAttrRequest::Uncached,
/// })?;
/// let map = slice.map()?;
/// map.write_u32(0x10, 0xdead_beef)?; // BAR2 offset 0x1010
/// let status = map.read_u32(0x14)?;
/// # let _ = status;
/// # Ok::<(), barkeep_client::Error>(())
/// ```
pub struct Client {
    session: Arc<Session>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.welcome().session_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the daemon listening at `path` and performs the handshake.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        ConnectOptions::new().connect(path)
    }

    /// Connects to `$BARKEEP_SOCKET`, or to the default socket
    /// (`/run/barkeep/barkeep.sock`) when it is not set.
    pub fn connect_default() -> Result<Client> {
        ConnectOptions::new().connect_default()
    }

    /// Options for a connection whose `Hello` carries `name` (shown in
    /// `barkeep leases` and the daemon's logs).
    ///
    /// ```no_run
    /// let client = barkeep_client::Client::with_name("fw-loader").connect_default()?;
    /// # Ok::<(), barkeep_client::Error>(())
    /// ```
    pub fn with_name(name: impl Into<String>) -> ConnectOptions {
        ConnectOptions::new().name(name)
    }

    pub(crate) fn connect_with(path: &Path, opts: &ConnectOptions) -> Result<Client> {
        let fd = sys::connect(path).map_err(|e| {
            Error::io(
                format!(
                    "cannot connect to barkeepd at {} (is barkeepd running? point --socket or \
                     BARKEEP_SOCKET at its socket)",
                    path.display()
                ),
                e,
            )
        })?;
        let welcome = handshake(&fd, &opts.name, opts.handshake_timeout)?;
        let fd = Arc::new(fd);
        let reconnect = opts.reconnect.map(|grace| Reconnect {
            path: path.to_path_buf(),
            name: opts.name.clone(),
            handshake_timeout: opts.handshake_timeout,
            grace,
            hook: opts.on_reconnect.clone(),
        });
        let conn = Conn::new(welcome, Outbox::Blocking(Mutex::new(fd.clone())), reconnect);
        let reader_conn = conn.clone();
        std::thread::Builder::new()
            .name("barkeep-reader".into())
            .spawn(move || read_loop(&reader_conn, fd))
            .map_err(|e| Error::io("cannot start the reader thread", e))?;
        Ok(Client {
            session: Arc::new(Session { conn }),
        })
    }

    fn call<T>(&self, call: Call<T>) -> Result<T> {
        let rx = self.session.conn.submit(call.request)?;
        let delivery = rx
            .blocking_recv()
            .map_err(|_| Error::Disconnected("the reply was lost".into()))??;
        (call.finish)(&self.session, delivery)
    }

    /// What the daemon said in the handshake: its version, this session's id,
    /// the page size, capabilities, who it thinks we are and whether we are
    /// an administrator. After a reconnect this is still the first
    /// handshake's; [`Client::session_id`] is the current session.
    pub fn welcome(&self) -> &Welcome {
        self.session.conn.welcome()
    }

    /// The current session id: the Welcome's, or a newer one once the client
    /// reconnected after a daemon restart.
    pub fn session_id(&self) -> u64 {
        self.session.conn.session_id()
    }

    /// The daemon's status, with per-device capabilities and notes.
    pub fn status(&self) -> Result<StatusInfo> {
        self.call(conn::status())
    }

    /// The configured devices and their BARs.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.call(conn::devices())
    }

    /// Acquires a slice of a BAR. The returned [`Slice`] owns the buffer's
    /// fd and releases the lease when dropped.
    pub fn acquire(&self, request: SliceRequest) -> Result<Slice> {
        self.call(conn::acquire(request))
    }

    /// Releases a lease by id: one held by this uid, from any of its
    /// sessions (any lease for an admin); see also [`Slice::release`].
    pub fn release(&self, lease: LeaseId) -> Result<()> {
        self.call(conn::release(lease))
    }

    /// Lists this uid's live leases from all its sessions, or every lease
    /// when `all` (admin only), in grant order. A listing longer than one
    /// datagram holds comes in pages, which this follows to the end (a
    /// daemon too old to page is asked for the whole list at once).
    pub fn leases(&self, all: bool) -> Result<Vec<LeaseInfo>> {
        let mut leases = Vec::new();
        let mut after = 0;
        loop {
            match self.call(conn::leases_page(all, after)) {
                Ok((page, next)) => {
                    leases.extend(page);
                    match next {
                        Some(n) => after = n,
                        None => return Ok(leases),
                    }
                }
                Err(e) if after == 0 && conn::unknown_request(&e) => {
                    return self.call(conn::leases(all))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Revokes a lease or every lease of a device (admin only); returns how
    /// many leases ended.
    pub fn revoke(&self, target: RevokeTarget) -> Result<u32> {
        self.call(conn::revoke(target))
    }

    /// Reads BAR bytes through the daemon's backend, not through any mapping
    /// (admin only).
    pub fn peek(&self, device: &str, bar: u32, offset: u64, length: u64) -> Result<Vec<u8>> {
        self.call(conn::peek(device, bar, offset, length))
    }

    /// Writes BAR bytes (in memory order) through the daemon's backend
    /// (admin only). 1, 2, 4 or 8 aligned bytes are written as one access of
    /// that width.
    pub fn poke(&self, device: &str, bar: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.call(conn::poke(device, bar, offset, data))
    }

    /// How the daemon's policy decides `request` (an identity and a slice),
    /// without acquiring anything: allowed or not, the error a real request
    /// would get, and which rule decided. Administrators may ask about any
    /// identity, others only about their own.
    pub fn explain(&self, request: ExplainRequest) -> Result<Decision> {
        self.call(conn::explain(request))
    }

    /// Makes the daemon read its configuration file again (admin only);
    /// returns the number of grants in force and of leases the new policy
    /// revoked.
    pub fn reload(&self) -> Result<(u32, u32)> {
        self.call(conn::reload())
    }

    /// The daemon's metrics in Prometheus text exposition format (sessions,
    /// leases, grant/denial/revocation counters, request latencies), as
    /// `barkeep metrics` prints them.
    pub fn metrics(&self) -> Result<String> {
        self.call(conn::metrics())
    }

    /// The next event from the daemon (e.g. a lease revoked), waiting up to
    /// `timeout` (`None`: until one arrives). `Ok(None)` on timeout;
    /// [`Error::Disconnected`] once the connection is gone and no event is
    /// left.
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Option<Event>> {
        self.session.conn.next_event_blocking(timeout)
    }

    /// The next queued event, if any, without waiting.
    pub fn try_next_event(&self) -> Result<Option<Event>> {
        self.session.conn.try_next_event()
    }
}

fn handshake(fd: &OwnedFd, name: &str, timeout: Duration) -> Result<Welcome> {
    let hello = conn::hello(name)?;
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(fd),
        &hello,
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(|e| Error::io("cannot send the handshake to barkeepd", e))?;
    // A daemon that accepts but never answers must not hang us forever.
    sys::set_recv_timeout(fd, Some(timeout))
        .map_err(|e| Error::io("cannot set a receive timeout", e))?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = [0u8; sys::CMSG_BUF];
    let got = loop {
        match sys::recv(fd, &mut buf, &mut cmsg) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(Error::Disconnected(format!(
                    "barkeepd did not answer the handshake within {timeout:?}"
                )))
            }
            Err(e) => return Err(Error::io("cannot receive the handshake reply", e)),
            Ok(r) => break r,
        }
    };
    let welcome = conn::handshake_reply(&buf[..got.len], got.fds, got.truncated)?;
    sys::set_recv_timeout(fd, None)
        .map_err(|e| Error::io("cannot clear the receive timeout", e))?;
    Ok(welcome)
}

fn read_loop(conn: &Conn, mut fd: Arc<OwnedFd>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = [0u8; sys::CMSG_BUF];
    loop {
        let why = match sys::recv(&fd, &mut buf, &mut cmsg) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => format!("cannot receive from barkeepd: {e}"),
            Ok(r) if r.len == 0 && !r.truncated && r.fds.is_empty() => {
                "barkeepd closed the connection".to_string()
            }
            Ok(r) => {
                if let Err(why) = conn.dispatch(&buf[..r.len], r.fds, r.truncated, r.fds_dropped) {
                    return conn.close(format!("protocol violation by barkeepd: {why}"));
                }
                continue;
            }
        };
        match reconnect(conn, &why) {
            Some(new) => fd = new,
            None => return conn.close(why),
        }
    }
}

/// Connects again after the connection broke, when the session holds
/// leases to reclaim; `None` when it should not or could not.
fn reconnect(conn: &Conn, why: &str) -> Option<Arc<OwnedFd>> {
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
        if let Ok(fd) = sys::connect(&opts.path) {
            if let Ok(welcome) = handshake(&fd, &opts.name, opts.handshake_timeout) {
                let fd = Arc::new(fd);
                let resumed = conn.resume(welcome, NewSocket::Blocking(fd.clone()));
                if resumed {
                    let step = Reconnecting::Resumed { attempts: attempt };
                    ReconnectHook::call(opts.hook.as_ref(), step);
                }
                return resumed.then_some(fd);
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
        std::thread::sleep(delay.min(left));
        delay = (delay * 2).min(Reconnect::MAX_DELAY);
    }
}
