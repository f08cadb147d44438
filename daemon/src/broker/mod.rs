//! The request handler, free of any transport: sessions and their admission
//! limits, and for each request validate -> policy -> limits and quotas ->
//! leases -> backend, with the fd handed back to the caller; lease endings
//! (release, disconnect, admin, policy, device, shutdown) and policy reload.
//! The server (or a test) owns the sockets; this module owns what the daemon
//! promised to whom.
//!
//! One lock guards the policy in force, the sessions and the lease table, so
//! that a reload is atomic with respect to every decision. Nothing under the
//! lock waits for a client: events go into bounded per-session queues with
//! `try_send`, and a session whose queue is full is evicted.

use crate::audit;
use crate::backend::{
    buffer_name, BackendError, Buffer, Device, ExportRequest, RevokeOutcome, SharedFd,
};
use crate::config::pattern::CgroupPattern;
use crate::config::{Config, ConfigSource, OnDisconnect};
use crate::decide::policy::{self, Rule};
use crate::decide::validate;
use crate::fdbudget::FdBudget;
use crate::leases::{Entry, LeaseTable};
use crate::metrics::{self, Metrics};
use crate::persist::journal::Journal;
use barkeep_protocol::{
    Capabilities, DeviceInfo, DeviceStatus, ErrorCode, ErrorReply, Event, ExplainRequest, Lease,
    LeaseId, LeaseState, MemAttr, MemAttrRequest, PeerIdentity, ReclaimToken, Request, Response,
    RevokeReason, RevokeTarget, SliceRequest, StatusInfo, Welcome, Who, PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

pub use crate::DAEMON_VERSION;

/// The broker's end of a session's event queue. The broker never blocks on
/// it: when the queue is full (a client that does not read its socket), the
/// session is evicted, which ends it as a disconnect would.
#[derive(Debug)]
pub struct EventSink {
    events: mpsc::Sender<Event>,
    evicted: Arc<Notify>,
}

/// The session's end of its event queue: the events, and the signal that
/// the broker evicted the session.
#[derive(Debug)]
pub struct EventSource {
    /// Events to send, in order.
    pub events: mpsc::Receiver<Event>,
    /// Notified when the session must close.
    pub evicted: Arc<Notify>,
}

/// A bounded event queue for one session.
pub fn event_channel(capacity: usize) -> (EventSink, EventSource) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let evicted = Arc::new(Notify::new());
    (
        EventSink {
            events: tx,
            evicted: evicted.clone(),
        },
        EventSource {
            events: rx,
            evicted,
        },
    )
}

impl EventSink {
    /// Queues an event; evicts the session when its queue is full.
    fn send(&self, session: u64, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    session,
                    queued = self.events.max_capacity(),
                    "closing the session: it does not read its socket and its event queue is full ([limits] events_queued)"
                );
                self.evicted.notify_one();
            }
            // The session task is gone already.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A successful outcome: the response, plus the fd that rides with it
/// (only ever for [`Response::Granted`]).
pub type Outcome = Result<(Response, Option<SharedFd>), ErrorReply>;

struct Session {
    peer: Peer,
    client_name: String,
    admin: bool,
    sink: EventSink,
}

struct State {
    /// The policy in force (replaced whole on reload).
    config: Arc<Config>,
    leases: LeaseTable<Buffer>,
    sessions: BTreeMap<u64, Session>,
    next_session: u64,
    /// Admitted connections (handshaking or established), in all and per uid.
    connections: usize,
    connections_per_uid: HashMap<u32, usize>,
    /// What sessions and leases may hold of the daemon's descriptors
    /// (`None`: not measured, as in tests in one process).
    fds: Option<FdBudget>,
    /// Set when this process hands its leases on (a restart under the fd
    /// store, or a takeover): from then on nothing is revoked or recorded.
    frozen: bool,
}

/// Devices, policy, sessions and leases, behind one lock.
pub struct Broker {
    devices: Vec<Box<dyn Device>>,
    /// Device descriptions, read once at start (BARs do not change).
    infos: Vec<DeviceInfo>,
    page_size: u64,
    started: Instant,
    /// Where to read the configuration again on reload.
    source: Option<ConfigSource>,
    /// The durable record of leases (state file, fd store), if any.
    journal: Option<Arc<Journal>>,
    /// Counters, outside the lock (atomics).
    metrics: Metrics,
    state: Mutex<State>,
}

/// The bytes of `LeaseInfo` one `LeasesPage` carries at most: a datagram
/// less room for the reply around them (tags, request id, `next`).
const LEASES_PAGE_BYTES: usize = barkeep_protocol::MAX_DATAGRAM - 64;

fn backend_error(device: &str, e: BackendError) -> ErrorReply {
    let code = match &e {
        BackendError::Unsupported(_) => ErrorCode::Unsupported,
        BackendError::Kernel { .. } => ErrorCode::Kernel,
        BackendError::Unavailable(_) => ErrorCode::DeviceUnavailable,
        BackendError::Invalid(_) => ErrorCode::BadArgument,
    };
    ErrorReply::new(code, format!("device {device:?}: {e}"))
}

/// The answer to a revoke of `asked` leases of which some (`failed`,
/// each "lease ID: why") could not be revoked.
fn revoke_failed(asked: usize, failed: &[String]) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Kernel,
        format!(
            "{} of {asked} lease(s) could not be revoked and may still be mapped (they linger, \
             their ranges stay busy and they count for their holders; `barkeep revoke --device` \
             tries again device-wide): {}",
            failed.len(),
            failed.join("; ")
        ),
    )
}

fn admin_only(what: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::AdminOnly,
        format!("{what} is for administrators only (see [admin] in the barkeepd config)"),
    )
}

/// Whether `who` says nothing about a peer that `me` is not: a peer may
/// explain the policy for itself, or for a part of itself (matching is
/// monotone, so that reveals nothing it could not learn by asking).
fn is_own_identity(who: &PeerIdentity, me: &PeerIdentity) -> bool {
    who.uid == me.uid
        && who.gid == me.gid
        && who.groups.iter().all(|g| me.groups.contains(g))
        && (who.cgroup.is_none() || who.cgroup == me.cgroup)
        && (who.label.is_none() || who.label == me.label)
}

/// The request a live lease would make now (for re-deciding it on reload).
fn request_of(lease: &Lease) -> SliceRequest {
    SliceRequest {
        device: lease.device.clone(),
        bar: lease.bar,
        offset: lease.offset,
        length: lease.length,
        access: lease.access,
        memattr: match lease.memattr {
            MemAttr::Uncached => MemAttrRequest::Uncached,
            MemAttr::WriteCombining => MemAttrRequest::WriteCombining,
        },
    }
}

impl Broker {
    /// A broker for these devices (opened from `config.devices`, same order).
    pub fn new(config: Config, devices: Vec<Box<dyn Device>>) -> Broker {
        let infos = devices.iter().map(|d| d.info()).collect();
        Broker {
            metrics: Metrics::new(devices.len()),
            devices,
            infos,
            page_size: crate::sys::page_size(),
            started: Instant::now(),
            source: None,
            journal: None,
            state: Mutex::new(State {
                config: Arc::new(config),
                leases: LeaseTable::new(),
                sessions: BTreeMap::new(),
                next_session: 1,
                connections: 0,
                connections_per_uid: HashMap::new(),
                fds: None,
                frozen: false,
            }),
        }
    }

    /// Records every lease change in `journal` (state file and fd store).
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Broker {
        if journal.state_file().is_some() {
            self.state
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .leases
                .track_changes();
        }
        self.journal = Some(journal);
        self
    }

    /// The journal, if the broker has one.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// Device `i` (in config order).
    pub fn device(&self, i: usize) -> Option<&dyn Device> {
        self.devices.get(i).map(|d| &**d)
    }

    /// Remembers where the configuration came from, which makes it
    /// reloadable ([`Broker::reload`]).
    pub fn with_source(mut self, source: ConfigSource) -> Broker {
        self.source = Some(source);
        self
    }

    /// The configuration in force (a snapshot: a reload replaces it).
    pub fn config(&self) -> Arc<Config> {
        self.state().config.clone()
    }

    /// The devices, as described at start-up.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    /// Human notes of device `i`.
    pub fn notes(&self, i: usize) -> Vec<String> {
        self.devices.get(i).map(|d| d.notes()).unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while handling one request must not stop every other
        // session: take the state as it is (each step leaves it consistent).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn device_index(&self, name: &str) -> Option<usize> {
        self.infos.iter().position(|d| d.name == name)
    }

    /// Capabilities shared by every usable device.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::intersection(
            self.infos
                .iter()
                .filter(|d| d.problem.is_none())
                .map(|d| &d.capabilities),
        )
    }

    /// Handles one request of a session, timed for the latency histogram.
    pub fn handle(&self, session: u64, request: Request) -> Outcome {
        let kind = request.kind();
        let started = Instant::now();
        let outcome = self.handle_request(session, request);
        self.metrics.observe(kind, started.elapsed());
        outcome
    }

    fn handle_request(&self, session: u64, request: Request) -> Outcome {
        let (identity, client_name, admin) = {
            let st = self.state();
            let s = st.sessions.get(&session).ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Internal,
                    format!("session {session} is not open"),
                )
            })?;
            (s.peer.identity.clone(), s.client_name.clone(), s.admin)
        };
        let kind = request.kind();
        let name = kind.name();
        if self.is_frozen() && kind.changes_leases() {
            return Err(ErrorReply::new(
                ErrorCode::DeviceUnavailable,
                "barkeepd is handing its leases to its successor (a restart or takeover): reconnect and ask again",
            ));
        }
        // Admin-only kinds are refused here; the kinds whose fields decide
        // (`Who::Depends`) are checked in their arms below.
        if kind.who() == Who::Admin && !admin {
            return Err(admin_only(name));
        }
        let result = match request {
            Request::Status => Ok((Response::Status(self.status()), None)),
            Request::ListDevices => Ok((Response::Devices(self.infos.clone()), None)),
            // Audited (grant or deny) inside.
            Request::Acquire(req) => return self.acquire(session, &identity, &client_name, req),
            Request::Release { lease } | Request::ReleaseNoReply { lease } => {
                self.release(session, identity.uid, admin, lease)
            }
            Request::ListLeases { all } => {
                if all && !admin {
                    return Err(admin_only("listing every uid's leases"));
                }
                let st = self.state();
                // Without `all`: the caller's uid's leases, from all its
                // sessions (a CLI run is a session of its own).
                let list = if all {
                    st.leases.list(None)
                } else {
                    st.leases.list_of_uid(identity.uid)
                };
                Ok((Response::Leases(list), None))
            }
            Request::ListLeasesPage { all, after } => {
                if all && !admin {
                    return Err(admin_only("listing every uid's leases"));
                }
                let st = self.state();
                // Without `all`: the caller's uid's live leases, from all its
                // sessions, as ListLeases.
                let (leases, next) =
                    st.leases
                        .page((!all).then_some(identity.uid), after, LEASES_PAGE_BYTES);
                Ok((Response::LeasesPage { leases, next }, None))
            }
            Request::Revoke(target) => self.revoke(target),
            Request::Peek {
                device,
                bar,
                offset,
                length,
            } => {
                validate::bytes(&self.infos, &device, bar, offset, length, false)?;
                let i = self.device_index(&device).expect("validated");
                let mut out = vec![0u8; length as usize];
                self.devices[i]
                    .peek(bar, offset, &mut out)
                    .map_err(|e| backend_error(&device, e))?;
                Ok((Response::Bytes(out), None))
            }
            Request::Poke {
                device,
                bar,
                offset,
                data,
            } => {
                validate::bytes(&self.infos, &device, bar, offset, data.len() as u64, true)?;
                let i = self.device_index(&device).expect("validated");
                self.devices[i]
                    .poke(bar, offset, &data)
                    .map_err(|e| backend_error(&device, e))?;
                tracing::info!(session, %device, bar, offset, len = data.len(), "poke");
                Ok((Response::Poked, None))
            }
            Request::Explain(x) => self.explain(&identity, admin, x),
            Request::Reload => self
                .reload(Some((session, &identity)))
                .map(|(grants, revoked)| (Response::Reloaded { grants, revoked }, None)),
            Request::Metrics => {
                if !admin && self.config().metrics.admin_only {
                    return Err(admin_only("reading the metrics ([metrics] admin_only)"));
                }
                Ok((Response::Metrics(self.metrics_text()), None))
            }
            Request::Reclaim { lease, token } => {
                self.reclaim(session, &identity, &client_name, lease, token)
            }
        };
        if let Err(e) = &result {
            tracing::info!(session, request = name, code = %e.code, "refused: {}", e.message);
        }
        result
    }
}

mod grant;
mod handover;
mod reload;
mod report;
mod sessions;

pub use sessions::{Admission, Peer};

#[cfg(test)]
mod linger_tests;
#[cfg(test)]
mod tests;
