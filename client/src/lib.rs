//! Client library for `barkeepd`: connect over its Unix socket, acquire
//! narrow slices of PCI BARs as buffer fds (DMABUFs on real hardware), and
//! map them with offsets relative to the slice.
//!
//! Two front ends share one implementation of the session (request ids,
//! reply routing, revocation events):
//!
//! * [`Client`]: blocking, with a reader thread;
//! * [`nonblocking::AsyncClient`]: tokio, with reader and writer tasks.
//!
//! Both return the same [`Slice`] (lease + fd, released on drop) whose
//! [`Mapping`]s do volatile, bounds- and alignment-checked accesses and
//! return [`Error::Revoked`] once the daemon has revoked the lease.
//!
//! ```no_run
//! use barkeep_client::{Access, Client, MemAttrRequest, SliceRequest};
//!
//! let client = Client::connect_default()?; // $BARKEEP_SOCKET or /run/barkeep/barkeep.sock
//! let slice = client.acquire(SliceRequest {
//!     device: "gpu0".into(),
//!     bar: 0,
//!     offset: 0x10_000, // in the BAR
//!     length: 0x4000,
//!     access: Access::ReadWrite,
//!     memattr: MemAttrRequest::Uncached,
//! })?;
//! let map = slice.map()?;            // offset 0 = BAR0 + 0x10000
//! map.write_u32(0x20, 1)?;           // BAR0 + 0x10020
//! if slice.is_revoked() { /* an administrator took it back */ }
//! # Ok::<(), barkeep_client::Error>(())
//! ```

#![deny(unsafe_code)]

mod blocking;
mod conn;
mod error;
pub mod hex;
// Adopts the fds `barkeep exec` left open and maps their status pages.
#[allow(unsafe_code)]
mod inherited;
// mmap and volatile access to a mapped slice.
#[allow(unsafe_code)]
mod mapping;
pub mod nonblocking;
mod progress;
mod slice;
mod spec;
// recvmsg with SCM_RIGHTS.
#[allow(unsafe_code)]
mod sys;

pub use blocking::Client;
pub use error::{ClientCode, Error, Result};
pub use inherited::{
    adopt, encode_slices_env, inherited_slices, InheritedSlice, InheritedSliceInfo, StatusPage,
    SLICES_ENV,
};
pub use mapping::{page_size, revoke_reason_code, revoke_reason_from_code, Mapping};
pub use progress::Reconnecting;
pub use slice::Slice;
pub use spec::{cdi_requested_slices, format_slice_spec, parse_slice_spec, CDI_SLICES_ENV};

pub use barkeep_protocol::{
    parse_number, Access, BarInfo, Capabilities, Decision, DeviceInfo, DeviceStatus, ErrorCode,
    ErrorReply, Event, ExplainRequest, Lease, LeaseId, LeaseInfo, LeaseState, MemAttr,
    MemAttrRequest, PeerIdentity, Range, RevokeReason, RevokeTarget, SliceRequest, StatusInfo,
    Welcome,
};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket a client uses by default: `$BARKEEP_SOCKET` when set and not
/// empty, else `/run/barkeep/barkeep.sock`.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os(barkeep_protocol::SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(barkeep_protocol::DEFAULT_SOCKET),
    }
}

/// How to connect: the client name sent in `Hello` and the handshake
/// timeout. Build with [`ConnectOptions::new`] or [`Client::with_name`].
///
/// ```no_run
/// use std::time::Duration;
/// let client = barkeep_client::ConnectOptions::new()
///     .name("dpdk-worker-3")
///     .handshake_timeout(Duration::from_secs(2))
///     .connect("/run/barkeep/barkeep.sock")?;
/// # Ok::<(), barkeep_client::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    name: String,
    handshake_timeout: Duration,
    reconnect: Option<Duration>,
    on_reconnect: Option<progress::ReconnectHook>,
}

/// How long a client tries to reconnect by default: the daemon's default
/// `reclaim_grace`.
pub const DEFAULT_RECONNECT: Duration = Duration::from_secs(30);

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::new()
    }
}

impl ConnectOptions {
    /// Defaults: the program's file name as client name, 10 s handshake
    /// timeout, reconnect for up to 30 s.
    pub fn new() -> ConnectOptions {
        ConnectOptions {
            name: conn::default_client_name(),
            handshake_timeout: Duration::from_secs(10),
            reconnect: Some(DEFAULT_RECONNECT),
            on_reconnect: None,
        }
    }

    /// How long to try to reconnect when the connection breaks while the
    /// session holds leases (barkeepd restarted, or a successor took over):
    /// the client connects again with backoff (50 ms doubling to 2 s) and
    /// reclaims each lease with its token, so slices and their mappings go
    /// on working. Match the daemon's `reclaim_grace`. `None`: never; the
    /// leases then end with the connection, as
    /// [`RevokeReason::Disconnected`].
    pub fn reconnect(mut self, within: Option<Duration>) -> ConnectOptions {
        self.reconnect = within;
        self
    }

    /// Calls `f` at each step of a reconnect (each attempt, then resumed or
    /// gave up), from the client's reader, so a program can tell its user
    /// why it is waiting. `f` must not block.
    ///
    /// ```no_run
    /// let client = barkeep_client::ConnectOptions::new()
    ///     .on_reconnect(|step| eprintln!("worker: {step}"))
    ///     .connect_default()?;
    /// # Ok::<(), barkeep_client::Error>(())
    /// ```
    pub fn on_reconnect(
        mut self,
        f: impl Fn(&Reconnecting) + Send + Sync + 'static,
    ) -> ConnectOptions {
        self.on_reconnect = Some(progress::ReconnectHook(std::sync::Arc::new(f)));
        self
    }

    /// The client name (at most 128 bytes are sent).
    pub fn name(mut self, name: impl Into<String>) -> ConnectOptions {
        self.name = name.into();
        self
    }

    /// How long to wait for the daemon's answer to `Hello`.
    pub fn handshake_timeout(mut self, timeout: Duration) -> ConnectOptions {
        self.handshake_timeout = timeout;
        self
    }

    /// Connects a blocking [`Client`] to `path`.
    pub fn connect(&self, path: impl AsRef<Path>) -> Result<Client> {
        Client::connect_with(path.as_ref(), self)
    }

    /// Connects a blocking [`Client`] to [`default_socket_path`].
    pub fn connect_default(&self) -> Result<Client> {
        self.connect(default_socket_path())
    }

    /// Connects an [`nonblocking::AsyncClient`] to `path`.
    pub async fn connect_async(&self, path: impl AsRef<Path>) -> Result<nonblocking::AsyncClient> {
        nonblocking::AsyncClient::connect_with(path.as_ref(), self).await
    }

    /// Connects an [`nonblocking::AsyncClient`] to [`default_socket_path`].
    pub async fn connect_default_async(&self) -> Result<nonblocking::AsyncClient> {
        self.connect_async(default_socket_path()).await
    }
}
