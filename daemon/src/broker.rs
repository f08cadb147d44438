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
use crate::config::{Config, ConfigSource, OnDisconnect};
use crate::identity::Peer;
use crate::journal::Journal;
use crate::leases::{Entry, LeaseTable};
use crate::metrics::{self, Metrics};
use crate::pattern::CgroupPattern;
use crate::policy::{self, Allowed, Rule};
use crate::validate;
use barkeep_protocol::{
    Capabilities, DeviceInfo, DeviceStatus, ErrorCode, ErrorReply, Event, ExplainRequest, Lease,
    LeaseId, LeaseState, MemAttr, MemAttrRequest, PeerIdentity, ReclaimToken, Request, Response,
    RevokeReason, RevokeTarget, SliceRequest, StatusInfo, Welcome, PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

/// The daemon's version string.
pub const DAEMON_VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// A connection counted against the session limits; dropping it gives the
/// slot back.
pub struct Admission {
    broker: Arc<Broker>,
    uid: u32,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut st = self.broker.state();
        st.connections = st.connections.saturating_sub(1);
        if let Some(n) = st.connections_per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                st.connections_per_uid.remove(&self.uid);
            }
        }
    }
}

fn backend_error(device: &str, e: BackendError) -> ErrorReply {
    let code = match &e {
        BackendError::Unsupported(_) => ErrorCode::Unsupported,
        BackendError::Kernel { .. } => ErrorCode::Kernel,
        BackendError::Unavailable(_) => ErrorCode::DeviceUnavailable,
        BackendError::Invalid(_) => ErrorCode::BadArgument,
    };
    ErrorReply::new(code, format!("device {device:?}: {e}"))
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
            page_size: crate::fdutil::page_size(),
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

    /// Counts a new connection from `uid` against `[limits] sessions` and
    /// `sessions_per_uid`; `LimitExceeded` when either is reached.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Admission, ErrorReply> {
        let mut st = self.state();
        let limits = st.config.limits;
        if st.connections >= limits.sessions {
            return Err(ErrorReply::new(
                ErrorCode::LimitExceeded,
                format!(
                    "barkeepd already serves {} sessions, its limit ([limits] sessions); try again later",
                    st.connections
                ),
            ));
        }
        let mine = st.connections_per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= limits.sessions_per_uid {
            return Err(ErrorReply::new(
                ErrorCode::LimitExceeded,
                format!(
                    "uid {uid} already has {mine} sessions open, the most one uid may have ([limits] sessions_per_uid); close some first"
                ),
            ));
        }
        st.connections += 1;
        *st.connections_per_uid.entry(uid).or_insert(0) += 1;
        Ok(Admission {
            broker: self.clone(),
            uid,
        })
    }

    /// Registers a session for a peer that completed the handshake.
    pub fn open_session(&self, peer: Peer, client_name: String, sink: EventSink) -> Welcome {
        let mut st = self.state();
        let identity = peer.identity.clone();
        let admin = policy::is_admin(&identity, &st.config.admin);
        let id = st.next_session;
        st.next_session += 1;
        tracing::info!(
            session = id,
            uid = identity.uid,
            pid = identity.pid,
            cgroup = identity.cgroup.as_deref().unwrap_or("-"),
            label = identity.label.as_deref().unwrap_or("-"),
            client = %client_name,
            admin,
            "session opened"
        );
        st.sessions.insert(
            id,
            Session {
                peer,
                client_name,
                admin,
                sink,
            },
        );
        Welcome {
            protocol_version: PROTOCOL_VERSION,
            daemon_version: DAEMON_VERSION.to_string(),
            session_id: id,
            page_size: self.page_size as u32,
            capabilities: self.capabilities(),
            identity,
            admin,
        }
    }

    /// Ends a session: each lease it holds is revoked (reason
    /// `Disconnected`), or kept when its grant says `on_disconnect =
    /// "keep"`. Safe to call twice.
    pub fn close_session(&self, session: u64) {
        let mut st = self.state();
        if st.frozen {
            // Handed on: the next daemon restores these leases.
            st.sessions.remove(&session);
            return;
        }
        let ids = st.leases.of_session(session);
        let mut kept = 0;
        for id in &ids {
            let Some(e) = st.leases.get(id) else { continue };
            if e.keep {
                audit::keep(session, &e.holder, &e.lease);
                st.leases.keep(id);
                kept += 1;
            } else {
                self.end_lease(&mut st, id, RevokeReason::Disconnected);
            }
        }
        if st.sessions.remove(&session).is_some() {
            tracing::info!(session, revoked = ids.len() - kept, kept, "session closed");
        }
        if !ids.is_empty() {
            self.record(&mut st);
        }
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.state().sessions.len()
    }

    /// Revokes every lease, kept ones too (reason `Shutdown`), then clears
    /// what lingers with device-wide revokes.
    pub fn shutdown(&self) {
        let mut st = self.state();
        if st.frozen {
            return;
        }
        for id in st.leases.active() {
            self.end_lease(&mut st, &id, RevokeReason::Shutdown);
        }
        for (i, dev) in self.devices.iter().enumerate() {
            let name = &self.infos[i].name;
            if st.leases.entries().any(|e| &e.lease.device == name) {
                match dev.revoke_all() {
                    Ok(()) => {
                        st.leases.clear_lingering(name);
                        self.device_reopened(i);
                    }
                    Err(e) => {
                        tracing::error!(device = %name, "device-wide revoke at shutdown failed: {e}")
                    }
                }
            }
        }
        self.record(&mut st);
    }

    /// Ends one lease: tells its holder if connected (before the buffer
    /// dies, so a client learns why its mapping faults), revokes the
    /// buffer, and frees the range only if the buffer is known dead.
    fn end_lease(&self, st: &mut State, id: &LeaseId, reason: RevokeReason) {
        let Some(entry) = st.leases.get(id) else {
            return;
        };
        let session = entry.session;
        let holder = entry.holder.clone();
        let lease = entry.lease.clone();
        self.metrics.revoked(reason);
        // A kept lease's session is gone: nobody to tell.
        if entry.state == LeaseState::Active {
            if let Some(s) = st.sessions.get(&session) {
                s.sink.send(session, Event::Revoked { lease: *id, reason });
            }
        }
        let Some(buffer) = st.leases.take_payload(id) else {
            st.leases.remove(id);
            audit::end(session, &holder, &lease, reason, "dead");
            return;
        };
        if let Some(j) = &self.journal {
            j.lease_ended(id);
        }
        let outcome = match self.device_index(&lease.device) {
            Some(i) => self.devices[i].revoke(buffer),
            None => Err(BackendError::Invalid(format!(
                "lease of unknown device {:?}",
                lease.device
            ))),
        };
        match outcome {
            Ok(RevokeOutcome::Dead) => {
                st.leases.remove(id);
                audit::end(session, &holder, &lease, reason, "dead");
            }
            Ok(RevokeOutcome::MayLinger) => {
                st.leases.linger(id);
                audit::end(session, &holder, &lease, reason, "lingering");
                tracing::warn!(lease = %id, "its buffer may stay mapped until a device-wide revoke (`barkeep revoke --device {}`); range kept busy", lease.device);
            }
            Err(e) => {
                st.leases.linger(id);
                audit::end(
                    session,
                    &holder,
                    &lease,
                    reason,
                    &format!("revoke-failed: {e}"),
                );
                tracing::error!(lease = %id, "revoking the buffer failed, range kept busy: {e}");
            }
        }
    }

    /// Handles one request of a session, timed for the latency histogram.
    pub fn handle(&self, session: u64, request: Request) -> Outcome {
        let kind = metrics::request_kind(&request);
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
        let name = request.name();
        if self.is_frozen() && changes_leases(&request) {
            return Err(ErrorReply::new(
                ErrorCode::DeviceUnavailable,
                "barkeepd is handing its leases to its successor (a restart or takeover): reconnect and ask again",
            ));
        }
        let result = match request {
            Request::Status => Ok((Response::Status(self.status()), None)),
            Request::ListDevices => Ok((Response::Devices(self.infos.clone()), None)),
            // Audited (grant or deny) inside.
            Request::Acquire(req) => return self.acquire(session, &identity, &client_name, req),
            Request::Release { lease } | Request::ReleaseNoReply { lease } => {
                self.release(session, lease)
            }
            Request::ListLeases { all } => {
                if all && !admin {
                    return Err(admin_only("listing every session's leases"));
                }
                let st = self.state();
                Ok((
                    Response::Leases(st.leases.list((!all).then_some(session))),
                    None,
                ))
            }
            Request::Revoke(target) => {
                if !admin {
                    return Err(admin_only("revoke"));
                }
                self.revoke(target)
            }
            Request::Peek {
                device,
                bar,
                offset,
                length,
            } => {
                if !admin {
                    return Err(admin_only("peek"));
                }
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
                if !admin {
                    return Err(admin_only("poke"));
                }
                validate::bytes(&self.infos, &device, bar, offset, data.len() as u64, true)?;
                let i = self.device_index(&device).expect("validated");
                self.devices[i]
                    .poke(bar, offset, &data)
                    .map_err(|e| backend_error(&device, e))?;
                tracing::info!(session, %device, bar, offset, len = data.len(), "poke");
                Ok((Response::Poked, None))
            }
            Request::Explain(x) => self.explain(&identity, admin, x),
            Request::Reload => {
                if !admin {
                    return Err(admin_only("reload"));
                }
                self.reload(Some((session, &identity)))
                    .map(|(grants, revoked)| (Response::Reloaded { grants, revoked }, None))
            }
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

    /// The metrics in Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        let gauges = {
            let st = self.state();
            metrics::Gauges {
                sessions: st.sessions.len(),
                connections: st.connections,
                leases: metrics::count_leases(&self.infos, &st.leases),
            }
        };
        self.metrics.render(&self.infos, &gauges)
    }

    fn status(&self) -> StatusInfo {
        let st = self.state();
        StatusInfo {
            daemon_version: DAEMON_VERSION.to_string(),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            sessions: st.sessions.len() as u32,
            leases: st.leases.active_count() as u32,
            page_size: self.page_size as u32,
            capabilities: self.capabilities(),
            devices: self
                .infos
                .iter()
                .zip(&self.devices)
                .map(|(info, dev)| DeviceStatus {
                    name: info.name.clone(),
                    backend: info.backend,
                    capabilities: info.capabilities,
                    leases: st.leases.active_on(&info.name) as u32,
                    problem: info.problem.clone(),
                    notes: dev.notes(),
                })
                .collect(),
        }
    }

    fn explain(&self, me: &PeerIdentity, admin: bool, x: ExplainRequest) -> Outcome {
        if !admin && !is_own_identity(&x.who, me) {
            return Err(ErrorReply::new(
                ErrorCode::AdminOnly,
                format!(
                    "explaining the policy for another identity is for administrators only; ask about your own (uid {}, gid {}, groups within {:?}, cgroup {}, label {})",
                    me.uid,
                    me.gid,
                    me.groups,
                    me.cgroup.as_deref().unwrap_or("none"),
                    me.label.as_deref().unwrap_or("none"),
                ),
            ));
        }
        let config = self.config();
        let d = policy::explain(
            &x.who,
            &x.slice,
            &config.grants,
            &self.infos,
            self.page_size,
        );
        Ok((Response::Decision(d), None))
    }

    /// Daemon limits and the deciding grant's quotas, for a request `a`
    /// of `session` (whose peer is `who`).
    fn limits_and_quotas(
        &self,
        st: &State,
        session: u64,
        who: &PeerIdentity,
        a: &Allowed,
    ) -> Result<(), ErrorReply> {
        let config = &st.config;
        let l = &config.limits;
        let limit = |m: String| Err(ErrorReply::new(ErrorCode::LimitExceeded, m));
        if st.leases.len() >= l.leases {
            return limit(format!(
                "barkeepd holds {} leases, its limit ([limits] leases); try again later",
                st.leases.len()
            ));
        }
        let (n, _) = st.leases.session_usage(session, |_| true);
        if n as usize >= l.leases_per_session {
            return limit(format!(
                "this session holds {n} leases, the most one session may hold ([limits] leases_per_session); release some first"
            ));
        }
        let (n, _) = st.leases.uid_usage(who.uid);
        if n as usize >= l.leases_per_uid {
            return limit(format!(
                "uid {} holds {n} leases (active and kept), the most one uid may hold ([limits] leases_per_uid); release some first",
                who.uid
            ));
        }
        let q = config.grants[a.grant].quota;
        let g = a.grant;
        let want = a.range.length;
        let quota = |m: String| Err(ErrorReply::new(ErrorCode::QuotaExceeded, m));
        let (n, bytes) = st.leases.session_usage(session, |e| e.grant == g);
        if let Some(max) = q.leases_per_session.filter(|&m| n >= m) {
            return quota(format!(
                "grant #{} allows {max} lease(s) per session and this session holds {n}; release one first",
                g + 1
            ));
        }
        if let Some(max) = q
            .bytes_per_session
            .filter(|&m| bytes.saturating_add(want) > m)
        {
            return quota(format!(
                "grant #{} allows {max:#x} bytes per session; this session holds {bytes:#x} and asks for {want:#x} more",
                g + 1
            ));
        }
        // A walk over every lease: only when the grant has a per-uid quota.
        if q.leases_per_uid.is_none() && q.bytes_per_uid.is_none() {
            return Ok(());
        }
        let (n, bytes) = st.leases.usage(|e| e.holder.uid == who.uid && e.grant == g);
        if let Some(max) = q.leases_per_uid.filter(|&m| n >= m) {
            return quota(format!(
                "grant #{} allows {max} lease(s) per uid and uid {} holds {n} (active and kept); release one first",
                g + 1,
                who.uid
            ));
        }
        if let Some(max) = q.bytes_per_uid.filter(|&m| bytes.saturating_add(want) > m) {
            return quota(format!(
                "grant #{} allows {max:#x} bytes per uid; uid {} holds {bytes:#x} and asks for {want:#x} more",
                g + 1,
                who.uid
            ));
        }
        Ok(())
    }

    fn acquire(
        &self,
        session: u64,
        identity: &PeerIdentity,
        client_name: &str,
        req: SliceRequest,
    ) -> Outcome {
        // Under the lock from decision to insertion, so a reload cannot
        // slip between them.
        let mut st = self.state();
        if st.frozen {
            // Checked under the lock: a lease granted now would not reach
            // the successor's record.
            return Err(ErrorReply::new(
                ErrorCode::DeviceUnavailable,
                "barkeepd is handing its leases to its successor: reconnect and ask again",
            ));
        }
        let config = st.config.clone();
        let refuse = |error: ErrorReply, rule: &str| -> Outcome {
            audit::deny(session, identity, &req, &error, rule);
            self.metrics.denied(error.code);
            Err(error)
        };
        let a = match policy::check(identity, &req, &config.grants, &self.infos, self.page_size) {
            Ok(a) => a,
            Err(d) => return refuse(d.error, &d.rule.text(&config.grants)),
        };
        let rule = Rule::Grant(a.grant).text(&config.grants);
        if let Err(e) = self.limits_and_quotas(&st, session, identity, &a) {
            return refuse(e, &rule);
        }
        let grant = &config.grants[a.grant];
        let exclusive = grant.exclusive_for(req.access);
        if let Err(e) = st
            .leases
            .check(&req.device, req.bar, a.range, req.access, exclusive)
        {
            return refuse(e, &rule);
        }
        if let Some(Err(e)) = self.journal.as_ref().map(|j| j.room_for_lease()) {
            return refuse(e, &rule);
        }
        let id = match st.leases.new_id() {
            Ok(id) => id,
            Err(e) => return refuse(e, &rule),
        };
        let reclaim = match new_token() {
            Ok(t) => t,
            Err(e) => return refuse(e, &rule),
        };
        let name = buffer_name(&req.device, req.bar, a.range);
        let exported = match self.devices[a.device].export(&ExportRequest {
            bar: req.bar,
            range: a.range,
            access: req.access,
            memattr: a.memattr,
            name: name.clone(),
        }) {
            Ok(x) => x,
            Err(e) => return refuse(backend_error(&req.device, e), &rule),
        };
        let lease = Lease {
            id,
            device: req.device.clone(),
            bar: req.bar,
            offset: a.range.offset,
            length: a.range.length,
            access: req.access,
            memattr: a.memattr,
            buffer_name: name,
        };
        st.leases.insert(Entry {
            lease: lease.clone(),
            session,
            client_name: client_name.to_string(),
            holder: identity.clone(),
            granted: Instant::now(),
            state: LeaseState::Active,
            payload: Some(exported.buffer),
            grant: a.grant,
            exclusive,
            keep: grant.on_disconnect == OnDisconnect::Keep,
            reclaim,
        });
        // Recorded, then into the fd store, then to the client: a crash
        // between the first two leaves a record without a buffer, which the
        // next daemon keeps as lingering (safe); never a buffer it does not
        // know.
        self.record(&mut st);
        if let (Some(j), Some(b)) = (
            &self.journal,
            st.leases.get(&id).and_then(|e| e.payload.as_ref()),
        ) {
            j.lease_granted(&id, std::os::fd::AsFd::as_fd(&b.fd));
        }
        audit::grant(session, identity, &lease, &rule);
        self.metrics.granted(a.device);
        Ok((Response::Granted(lease, reclaim), Some(exported.client_fd)))
    }

    fn release(&self, session: u64, lease: LeaseId) -> Outcome {
        let mut st = self.state();
        let ours = st
            .leases
            .get(&lease)
            .is_some_and(|e| e.session == session && e.state == LeaseState::Active);
        if !ours {
            return Err(ErrorReply::new(
                ErrorCode::UnknownLease,
                format!(
                    "lease {lease} is not one of this session's live leases (see `barkeep leases`)"
                ),
            ));
        }
        self.end_lease(&mut st, &lease, RevokeReason::Released);
        self.record(&mut st);
        Ok((Response::Released, None))
    }

    fn revoke(&self, target: RevokeTarget) -> Outcome {
        let mut st = self.state();
        let ids = match target {
            RevokeTarget::Lease(id) => {
                if !st.leases.get(&id).is_some_and(|e| e.is_live()) {
                    return Err(ErrorReply::new(
                        ErrorCode::UnknownLease,
                        format!("no live lease {id} (see `barkeep leases --all`)"),
                    ));
                }
                vec![id]
            }
            RevokeTarget::Device(name) => return self.revoke_device(&mut st, name),
            RevokeTarget::Session(n) => {
                // An open session's leases are all active and indexed; a
                // closed one may have left kept leases behind.
                let ids = if st.sessions.contains_key(&n) {
                    st.leases.of_session(n)
                } else {
                    st.leases.select(|e| e.session == n)
                };
                if ids.is_empty() && !st.sessions.contains_key(&n) {
                    return Err(ErrorReply::new(
                        ErrorCode::BadArgument,
                        format!("no session {n} is open and no kept lease belongs to it (see `barkeep leases --all`)"),
                    ));
                }
                ids
            }
            RevokeTarget::Uid(uid) => st.leases.select(|e| e.holder.uid == uid),
            RevokeTarget::Cgroup(p) => {
                let pattern = CgroupPattern::parse(&p)
                    .map_err(|m| ErrorReply::new(ErrorCode::BadArgument, m))?;
                st.leases.select(|e| {
                    e.holder
                        .cgroup
                        .as_deref()
                        .is_some_and(|c| pattern.matches(c))
                })
            }
        };
        for id in &ids {
            self.end_lease(&mut st, id, RevokeReason::Admin);
        }
        self.record(&mut st);
        Ok((
            Response::Revoked {
                count: ids.len() as u32,
            },
            None,
        ))
    }

    fn revoke_device(&self, st: &mut State, name: String) -> Outcome {
        validate::device_name(&name)?;
        let Some(i) = self.device_index(&name) else {
            return Err(ErrorReply::new(
                ErrorCode::UnknownDevice,
                format!("no device named {name:?} is configured (see `barkeep devices`)"),
            ));
        };
        let ids = st.leases.of_device(&name);
        for id in &ids {
            self.end_lease(st, id, RevokeReason::Device);
        }
        self.record(st);
        if st.leases.entries().any(|e| e.lease.device == name) {
            self.devices[i]
                .revoke_all()
                .map_err(|e| backend_error(&name, e))?;
            self.device_reopened(i);
            let cleared = st.leases.clear_lingering(&name);
            self.record(st);
            tracing::info!(device = %name, cleared, "device-wide revoke cleared lingering buffers");
        }
        Ok((
            Response::Revoked {
                count: ids.len() as u32,
            },
            None,
        ))
    }

    /// Reads the configuration file again and puts its policy in force
    /// ([`Broker::apply`]). `by`: the session and peer that asked (`None`
    /// for SIGHUP). An invalid file changes nothing.
    pub fn reload(&self, by: Option<(u64, &PeerIdentity)>) -> Result<(u32, u32), ErrorReply> {
        let Some(source) = &self.source else {
            let e = ErrorReply::new(
                ErrorCode::Unsupported,
                "this barkeepd was started without a configuration file (e.g. by `barkeep demo`): there is nothing to reload",
            );
            audit::reload(by, &e.message, 0, 0);
            return Err(e);
        };
        match source.load() {
            Ok(config) => self.apply(config, by),
            Err(e) => {
                let e = ErrorReply::new(
                    ErrorCode::ConfigInvalid,
                    format!("{e}; the old policy stays in force"),
                );
                audit::reload(by, &e.message, 0, 0);
                Err(e)
            }
        }
    }

    /// Replaces the policy (grants, admins, limits) atomically with that of
    /// `new`, and revokes (reason `Policy`) every lease the new grants no
    /// longer allow, and kept leases whose grant no longer keeps them.
    /// Refused (`ConfigInvalid`, nothing changed) when `new` changes the
    /// socket, devices or kernel feature numbers, which need a restart.
    /// Returns the number of grants and of leases revoked.
    pub fn apply(
        &self,
        new: Config,
        by: Option<(u64, &PeerIdentity)>,
    ) -> Result<(u32, u32), ErrorReply> {
        let mut st = self.state();
        let old = st.config.clone();
        let mut fixed = Vec::new();
        if new.socket != old.socket {
            fixed.push("socket");
        }
        if new.socket_mode != old.socket_mode {
            fixed.push("socket_mode");
        }
        if new.devices != old.devices {
            fixed.push("[[device]]");
        }
        if new.kernel != old.kernel {
            fixed.push("[kernel]");
        }
        if new.state_path() != old.state_path() {
            fixed.push("state_file");
        }
        if new.takeover_socket != old.takeover_socket {
            fixed.push("takeover_socket");
        }
        if (&new.metrics.socket, new.metrics.socket_mode)
            != (&old.metrics.socket, old.metrics.socket_mode)
        {
            fixed.push("[metrics] socket");
        }
        if !fixed.is_empty() {
            let e = ErrorReply::new(
                ErrorCode::ConfigInvalid,
                format!(
                    "the new configuration changes {}, which only a restart of barkeepd can change (devices are not reopened on reload): restart it, or put them back; the old policy stays in force",
                    fixed.join(", ")
                ),
            );
            audit::reload(by, &e.message, 0, 0);
            return Err(e);
        }
        let mut revoked = 0u32;
        for id in st.leases.active() {
            let Some(e) = st.leases.get(&id) else {
                continue;
            };
            let kept = e.state == LeaseState::Kept;
            let verdict = policy::check(
                &e.holder,
                &request_of(&e.lease),
                &new.grants,
                &self.infos,
                self.page_size,
            );
            match verdict {
                Ok(a) => {
                    let keep = new.grants[a.grant].on_disconnect == OnDisconnect::Keep;
                    if kept && !keep {
                        tracing::info!(lease = %id, "kept lease: its grant no longer keeps leases after disconnect");
                        self.end_lease(&mut st, &id, RevokeReason::Policy);
                        revoked += 1;
                    } else {
                        st.leases.regrant(&id, a.grant, keep);
                    }
                }
                Err(d) => {
                    tracing::info!(lease = %id, "no longer allowed: {}", d.error.message);
                    self.end_lease(&mut st, &id, RevokeReason::Policy);
                    revoked += 1;
                }
            }
        }
        let grants = new.grants.len() as u32;
        st.config = Arc::new(new);
        self.record(&mut st);
        audit::reload(by, "ok", grants as usize, revoked as usize);
        Ok((grants, revoked))
    }
}

/// A fresh reclaim token: 128 random bits.
fn new_token() -> Result<ReclaimToken, ErrorReply> {
    let bytes = crate::random::bytes16().map_err(|e| {
        ErrorReply::new(
            ErrorCode::Internal,
            format!("no random bytes for a reclaim token: {e}"),
        )
    })?;
    Ok(ReclaimToken(bytes))
}

/// Whether a request may change the lease table (refused while frozen).
fn changes_leases(r: &Request) -> bool {
    matches!(
        r,
        Request::Acquire(_)
            | Request::Release { .. }
            | Request::ReleaseNoReply { .. }
            | Request::Revoke(_)
            | Request::Reclaim { .. }
            | Request::Reload
    )
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &ReclaimToken, b: &ReclaimToken) -> bool {
    a.0.iter()
        .zip(b.0.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Restarts and hand-overs: reclaim, restored leases and their expiry, the
/// journal, and freezing for a successor.
impl Broker {
    /// Writes the lease table to the journal (state file), unless frozen.
    /// Only the leases that changed since the last record are appended;
    /// the whole table is written when the journal asks for it.
    fn record(&self, st: &mut State) {
        // Frozen: a successor owns the file; what changes meanwhile is
        // recorded if this daemon thaws.
        if st.frozen {
            return;
        }
        let changed = st.leases.take_changed();
        // Without a state file (not under systemd's fd store) there is
        // nothing to write: do not build the snapshot either.
        let Some(j) = self.journal.as_ref().filter(|j| j.state_file().is_some()) else {
            return;
        };
        let changes = changed
            .iter()
            .map(|id| match st.leases.get(id) {
                Some(e) => crate::state::Change::Put(Box::new(crate::state::LeaseRecord::of(e))),
                None => crate::state::Change::Del(id.to_string()),
            })
            .collect();
        if !j.append_changes(changes, st.next_session, st.leases.len()) {
            j.write_state(&self.snapshot_of(st));
        }
    }

    /// Tells the journal that device `i` has new kernel fds (a device-wide
    /// revoke reopened it).
    fn device_reopened(&self, i: usize) {
        if let Some(j) = &self.journal {
            j.device_fds_changed(&self.infos[i].name, &*self.devices[i]);
        }
    }

    /// What the state file holds: every lease but the lingering ones whose
    /// buffers are known dead.
    fn snapshot_of(&self, st: &State) -> crate::state::Snapshot {
        crate::state::Snapshot::new(
            st.next_session,
            self.infos
                .iter()
                .zip(&self.devices)
                .map(|(info, dev)| crate::state::DeviceRecord {
                    name: info.name.clone(),
                    data: dev.restore_data(),
                })
                .collect(),
            st.leases
                .entries()
                .map(crate::state::LeaseRecord::of)
                .collect(),
        )
    }

    /// The current state, as the state file holds it.
    pub fn snapshot(&self) -> crate::state::Snapshot {
        self.snapshot_of(&self.state())
    }

    /// Adds leases restored after a restart: those with a buffer wait for
    /// their holders to reclaim them (kept ones stay kept), those without
    /// linger (their buffer may be live in a client, so their range stays
    /// busy). Leases the policy in force no longer allows are revoked.
    /// Session ids continue after `next_session`. Returns the number of
    /// leases awaiting reclaim.
    pub fn restore(&self, next_session: u64, entries: Vec<Entry<Buffer>>) -> usize {
        let mut st = self.state();
        st.next_session = st.next_session.max(next_session);
        let config = st.config.clone();
        let mut waiting = 0;
        for mut entry in entries {
            let id = entry.lease.id;
            if entry.payload.is_none() {
                entry.state = LeaseState::Lingering;
                st.leases.restore(entry);
                tracing::warn!(lease = %id, "restored without its buffer: it may still be mapped, so its range stays busy until a device-wide revoke");
                continue;
            }
            let verdict = policy::check(
                &entry.holder,
                &request_of(&entry.lease),
                &config.grants,
                &self.infos,
                self.page_size,
            );
            let kept = entry.state == LeaseState::Kept;
            if !kept {
                entry.state = LeaseState::AwaitingReclaim;
            }
            st.leases.restore(entry);
            match verdict {
                Ok(a) => {
                    let keep = config.grants[a.grant].on_disconnect == OnDisconnect::Keep;
                    st.leases.regrant(&id, a.grant, keep);
                    if !kept {
                        waiting += 1;
                    }
                }
                Err(d) => {
                    tracing::info!(lease = %id, "restored lease no longer allowed: {}", d.error.message);
                    self.end_lease(&mut st, &id, RevokeReason::Policy);
                }
            }
        }
        self.record(&mut st);
        waiting
    }

    /// Revokes (reason `Unclaimed`) every restored lease that its holder
    /// did not reclaim; returns how many.
    pub fn expire_unclaimed(&self) -> usize {
        let mut st = self.state();
        if st.frozen {
            return 0;
        }
        let ids = st.leases.select(|e| e.state == LeaseState::AwaitingReclaim);
        for id in &ids {
            self.end_lease(&mut st, id, RevokeReason::Unclaimed);
        }
        if !ids.is_empty() {
            self.record(&mut st);
        }
        ids.len()
    }

    /// Number of leases awaiting reclaim.
    pub fn awaiting_reclaim(&self) -> usize {
        self.state()
            .leases
            .entries()
            .filter(|e| e.state == LeaseState::AwaitingReclaim)
            .count()
    }

    /// Takes over a restored or kept lease for `session`, whose peer must
    /// present the lease's token, have the holder's uid, and be allowed the
    /// slice by the policy in force.
    fn reclaim(
        &self,
        session: u64,
        identity: &PeerIdentity,
        client_name: &str,
        id: LeaseId,
        token: ReclaimToken,
    ) -> Outcome {
        let mut st = self.state();
        let unknown = || {
            ErrorReply::new(
                ErrorCode::UnknownLease,
                format!("no lease {id} awaits reclaim with this token (leases not reclaimed within reclaim_grace of a restart are revoked)"),
            )
        };
        let Some(e) = st.leases.get(&id) else {
            return Err(unknown());
        };
        if !matches!(e.state, LeaseState::AwaitingReclaim | LeaseState::Kept)
            || !same_token(&e.reclaim, &token)
        {
            return Err(unknown());
        }
        if e.holder.uid != identity.uid {
            return Err(ErrorReply::new(
                ErrorCode::Denied,
                format!(
                    "lease {id} was granted to uid {}, not uid {}: only its holder may reclaim it",
                    e.holder.uid, identity.uid
                ),
            ));
        }
        let config = st.config.clone();
        let a = policy::check(
            identity,
            &request_of(&e.lease),
            &config.grants,
            &self.infos,
            self.page_size,
        )
        .map_err(|d| d.error)?;
        let lease = e.lease.clone();
        st.leases
            .adopt(&id, session, identity.clone(), client_name.to_string());
        let keep = config.grants[a.grant].on_disconnect == OnDisconnect::Keep;
        st.leases.regrant(&id, a.grant, keep);
        self.record(&mut st);
        audit::reclaim(session, identity, &lease);
        Ok((Response::Reclaimed(lease), None))
    }

    /// Stops recording and revoking: this process hands its leases to a
    /// successor (a restart under the fd store, or a takeover). Writes the
    /// state one last time and returns it.
    pub fn freeze(&self) -> crate::state::Snapshot {
        let mut st = self.state();
        let snapshot = self.snapshot_of(&st);
        if !st.frozen {
            if let Some(j) = &self.journal {
                j.write_state(&snapshot);
            }
            st.frozen = true;
        }
        snapshot
    }

    /// Whether [`Broker::freeze`] was called.
    pub fn is_frozen(&self) -> bool {
        self.state().frozen
    }

    /// Undoes [`Broker::freeze`] (a takeover that failed): the daemon
    /// serves and records again.
    pub fn thaw(&self) {
        let mut st = self.state();
        st.frozen = false;
        self.record(&mut st);
    }

    /// Dups of every fd a successor needs to keep the leases alive: each
    /// device's kernel fds (`dev-NAME-KIND`) and each live lease's buffer
    /// (`lease-ID`). Call after [`Broker::freeze`].
    pub fn handoff_fds(&self) -> Vec<(String, OwnedFd)> {
        let st = self.state();
        let mut out = Vec::new();
        for (info, dev) in self.infos.iter().zip(&self.devices) {
            for (kind, fd) in dev.kernel_fds() {
                out.push((crate::journal::device_fd_name(&info.name, &kind), fd));
            }
        }
        for e in st.leases.entries() {
            if let Some(b) = &e.payload {
                match b.fd.try_clone() {
                    Ok(fd) => out.push((crate::journal::lease_fd_name(&e.lease.id), fd)),
                    Err(err) => {
                        tracing::error!(lease = %e.lease.id, "cannot dup its buffer for the successor: {err}")
                    }
                }
            }
        }
        out
    }

    /// One line for systemd's STATUS=: devices, sessions, leases and what
    /// the kernel offers.
    pub fn status_line(&self) -> String {
        let st = self.state();
        let usable: Vec<&str> = self
            .infos
            .iter()
            .filter(|d| d.problem.is_none())
            .map(|d| d.name.as_str())
            .collect();
        let c = self.capabilities();
        let caps: Vec<&str> = [
            (c.export, "export"),
            (c.mmap, "mmap"),
            (c.revoke, "revoke"),
            (c.write_combining, "wc"),
            (c.device_revoke, "device-revoke"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        let waiting = st
            .leases
            .entries()
            .filter(|e| e.state == LeaseState::AwaitingReclaim)
            .count();
        let mut line = format!(
            "serving {} of {} device(s) [{}], {} session(s), {} lease(s)",
            usable.len(),
            self.infos.len(),
            usable.join(" "),
            st.sessions.len(),
            st.leases.active_count(),
        );
        if waiting > 0 {
            line.push_str(&format!(" ({waiting} awaiting reclaim)"));
        }
        line.push_str(&format!(
            "; kernel: {}",
            if caps.is_empty() {
                "none".to_string()
            } else {
                caps.join(" ")
            }
        ));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sim::SimDevice;
    use crate::config::DeviceKind;
    use barkeep_protocol::{Access, MemAttr, MemAttrRequest};
    use std::os::fd::AsFd;

    const SIM: &str = r#"
        [[device]]
        name = "sim0"
        sim = { bars = [ { index = 0, size = "64K" }, { index = 2, size = "16K" } ] }
    "#;

    fn config(text: &str) -> Config {
        Config::from_toml_str(&format!("{SIM}\n{text}")).unwrap()
    }

    /// A broker with the simulated device and the grants in `text`.
    fn policy_broker(text: &str) -> Broker {
        let config = config(text);
        let DeviceKind::Sim(s) = &config.devices[0].kind else {
            unreachable!()
        };
        let dev = Box::new(SimDevice::new("sim0", s)) as Box<dyn Device>;
        Broker::new(config, vec![dev])
    }

    fn broker(extra: &str) -> Broker {
        let uid = nix::unistd::geteuid().as_raw();
        let text = format!(
            r#"
            [[device]]
            name = "sim0"
            sim = {{ bars = [ {{ index = 0, size = "64K" }}, {{ index = 2, size = "16K" }} ] }}
            [[grant]]
            device = "sim0"
            bar = 0
            windows = ["0x0..0x8000"]
            access = "rw"
            uids = [{uid}]
            [[grant]]
            device = "sim0"
            bar = 2
            uids = [{uid}]
            {extra}
            "#
        );
        let config = Config::from_toml_str(&text).unwrap();
        let devices = config
            .devices
            .iter()
            .map(|d| match &d.kind {
                DeviceKind::Sim(s) => Box::new(SimDevice::new(&d.name, s)) as Box<dyn Device>,
                DeviceKind::Pci(_) => unreachable!(),
            })
            .collect();
        Broker::new(config, devices)
    }

    fn me(uid: u32) -> PeerIdentity {
        PeerIdentity {
            uid,
            gid: uid,
            pid: std::process::id() as i32,
            ..Default::default()
        }
    }

    fn session(b: &Broker, uid: u32) -> (u64, mpsc::Receiver<Event>) {
        session_as(b, me(uid)).0
    }

    fn session_as(b: &Broker, id: PeerIdentity) -> ((u64, mpsc::Receiver<Event>), Arc<Notify>) {
        let (sink, source) = event_channel(8);
        let peer = Peer {
            identity: id,
            pidfd: crate::fdutil::pidfd_open(std::process::id() as i32).unwrap(),
        };
        let w = b.open_session(peer, "test".into(), sink);
        ((w.session_id, source.events), source.evicted)
    }

    fn acquire(offset: u64, length: u64, access: Access) -> Request {
        Request::Acquire(SliceRequest {
            device: "sim0".into(),
            bar: 0,
            offset,
            length,
            access,
            memattr: MemAttrRequest::Uncached,
        })
    }

    fn granted(o: Outcome) -> (Lease, SharedFd) {
        match o.unwrap() {
            (Response::Granted(l, _), Some(fd)) => (l, fd),
            other => panic!("{other:?}"),
        }
    }

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn acquire_release_and_events() {
        let b = broker("");
        let (s, mut rx) = session(&b, uid());
        let (lease, fd) = granted(b.handle(s, acquire(0x2000, 0x2000, Access::ReadWrite)));
        assert_eq!(
            (lease.offset, lease.length, lease.memattr),
            (0x2000, 0x2000, MemAttr::Uncached)
        );
        assert_eq!(lease.buffer_name, "bk:sim0:b0:2000+2000");
        assert_eq!(crate::fdutil::file_size(fd.as_fd()).unwrap(), 0x2000);
        let e = b
            .handle(s, acquire(0x3000, 0x1000, Access::ReadOnly))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let Ok((Response::Leases(l), None)) = b.handle(s, Request::ListLeases { all: false })
        else {
            panic!()
        };
        assert_eq!(l.len(), 1);
        assert!(matches!(
            b.handle(s, Request::Release { lease: lease.id }),
            Ok((Response::Released, None))
        ));
        assert_eq!(
            rx.try_recv().unwrap(),
            Event::Revoked {
                lease: lease.id,
                reason: RevokeReason::Released
            }
        );
        assert_eq!(
            crate::fdutil::file_size(fd.as_fd()).unwrap(),
            0,
            "released buffers are revoked"
        );
        assert_eq!(
            b.handle(s, Request::Release { lease: lease.id })
                .unwrap_err()
                .code,
            ErrorCode::UnknownLease
        );
        granted(b.handle(s, acquire(0x3000, 0x1000, Access::ReadOnly)));
    }

    #[test]
    fn disconnect_revokes_and_frees() {
        let b = broker("");
        let (s1, _rx1) = session(&b, uid());
        let (s2, _rx2) = session(&b, uid());
        let (_, fd) = granted(b.handle(s1, acquire(0, 0x1000, Access::ReadWrite)));
        assert_eq!(
            b.handle(s2, acquire(0, 0x1000, Access::ReadWrite))
                .unwrap_err()
                .code,
            ErrorCode::Conflict
        );
        b.close_session(s1);
        assert_eq!(crate::fdutil::file_size(fd.as_fd()).unwrap(), 0);
        granted(b.handle(s2, acquire(0, 0x1000, Access::ReadWrite)));
        assert_eq!(b.session_count(), 1);
    }

    #[test]
    fn denials_in_order() {
        let b = broker("");
        let (s, _rx) = session(&b, uid());
        assert_eq!(
            b.handle(s, acquire(0x8000, 0x1000, Access::ReadOnly))
                .unwrap_err()
                .code,
            ErrorCode::OutsideWindow
        );
        assert_eq!(
            b.handle(s, acquire(0x1800, 0x1000, Access::ReadOnly))
                .unwrap_err()
                .code,
            ErrorCode::Unaligned
        );
        let mut r = SliceRequest {
            device: "sim0".into(),
            bar: 2,
            offset: 0,
            length: 0x1000,
            access: Access::ReadWrite,
            memattr: MemAttrRequest::Uncached,
        };
        assert_eq!(
            b.handle(s, Request::Acquire(r.clone())).unwrap_err().code,
            ErrorCode::AccessDenied
        );
        r.access = Access::ReadOnly;
        r.memattr = MemAttrRequest::WriteCombining;
        assert_eq!(
            b.handle(s, Request::Acquire(r.clone())).unwrap_err().code,
            ErrorCode::WcDenied
        );
        r.memattr = MemAttrRequest::PreferWriteCombining;
        let (l, _fd) = granted(b.handle(s, Request::Acquire(r)));
        assert_eq!(l.memattr, MemAttr::Uncached);
        let (other, _rx) = session(&b, uid() + 1);
        assert_eq!(
            b.handle(other, acquire(0, 0x1000, Access::ReadOnly))
                .unwrap_err()
                .code,
            ErrorCode::Denied
        );
    }

    #[test]
    fn admin_requests() {
        let b = broker("");
        let (user, mut rx) = session(&b, 4242);
        let (admin, _rx) = session(&b, 0);
        for req in [
            Request::ListLeases { all: true },
            Request::Peek {
                device: "sim0".into(),
                bar: 0,
                offset: 0,
                length: 4,
            },
            Request::Poke {
                device: "sim0".into(),
                bar: 0,
                offset: 0,
                data: vec![1],
            },
            Request::Revoke(RevokeTarget::Device("sim0".into())),
        ] {
            assert_eq!(b.handle(user, req).unwrap_err().code, ErrorCode::AdminOnly);
        }
        // Root holds a slice, writes through it, and the admin peek sees it.
        let (lease, fd) = granted(b.handle(admin, acquire(0x1000, 0x1000, Access::ReadWrite)));
        crate::fdutil::pwrite_all(fd.as_fd(), &[0xaa, 0xbb], 0x10).unwrap();
        let Ok((Response::Bytes(bytes), None)) = b.handle(
            admin,
            Request::Peek {
                device: "sim0".into(),
                bar: 0,
                offset: 0x1010,
                length: 2,
            },
        ) else {
            panic!()
        };
        assert_eq!(bytes, [0xaa, 0xbb]);
        assert_eq!(
            b.handle(
                admin,
                Request::Peek {
                    device: "sim0".into(),
                    bar: 0,
                    offset: 0,
                    length: 40000
                }
            )
            .unwrap_err()
            .code,
            ErrorCode::BadArgument
        );
        let Ok((Response::Leases(all), _)) = b.handle(admin, Request::ListLeases { all: true })
        else {
            panic!()
        };
        assert_eq!(all.len(), 1);
        assert!(matches!(
            b.handle(admin, Request::Revoke(RevokeTarget::Lease(lease.id))),
            Ok((Response::Revoked { count: 1 }, None))
        ));
        assert_eq!(crate::fdutil::file_size(fd.as_fd()).unwrap(), 0);
        assert!(rx.try_recv().is_err(), "other sessions hear nothing");
        let Ok((Response::Status(st), None)) = b.handle(user, Request::Status) else {
            panic!()
        };
        assert_eq!((st.sessions, st.leases), (2, 0));
        assert!(st.capabilities.export && st.capabilities.revoke);
    }

    #[test]
    fn device_revoke_and_shutdown_notify_holders() {
        let b = broker("");
        let (s, mut rx) = session(&b, 0);
        let (a, _fa) = granted(b.handle(s, acquire(0, 0x1000, Access::ReadOnly)));
        let (c, _fc) = granted(b.handle(s, acquire(0, 0x1000, Access::ReadOnly)));
        assert!(matches!(
            b.handle(s, Request::Revoke(RevokeTarget::Device("sim0".into()))),
            Ok((Response::Revoked { count: 2 }, None))
        ));
        let got: Vec<Event> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                Event::Revoked {
                    lease: a.id,
                    reason: RevokeReason::Device
                },
                Event::Revoked {
                    lease: c.id,
                    reason: RevokeReason::Device
                }
            ]
        );
        let (d, fd) = granted(b.handle(s, acquire(0, 0x1000, Access::ReadWrite)));
        b.shutdown();
        assert_eq!(
            rx.try_recv().unwrap(),
            Event::Revoked {
                lease: d.id,
                reason: RevokeReason::Shutdown
            }
        );
        assert_eq!(crate::fdutil::file_size(fd.as_fd()).unwrap(), 0);
    }

    fn code(o: Outcome) -> ErrorCode {
        o.unwrap_err().code
    }

    #[test]
    fn quotas_per_session_and_per_uid() {
        let b = policy_broker(
            r#"
            [[grant]]
            device = "sim0"
            bar = 0
            access = "rw"
            uids = [1000, 1001]
            max_leases_per_session = 2
            max_bytes_per_uid = "12K"
            [[grant]]
            device = "sim0"
            bar = 2
            uids = [1000]
            [limits]
            leases_per_session = 3
            "#,
        );
        let (s1, _r1) = session(&b, 1000);
        let (s2, _r2) = session(&b, 1000);
        let (_a, _fa) = granted(b.handle(s1, acquire(0, 0x1000, Access::ReadWrite)));
        let (_c, _fc) = granted(b.handle(s1, acquire(0x1000, 0x1000, Access::ReadWrite)));
        let e = b
            .handle(s1, acquire(0x2000, 0x1000, Access::ReadWrite))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(
            e.message.contains("grant #1 allows 2 lease(s) per session"),
            "{}",
            e.message
        );
        // Another session of the same uid: per-session quota is fresh, the
        // per-uid byte quota (12K, 8K used) is not.
        let e = b
            .handle(s2, acquire(0x2000, 0x2000, Access::ReadWrite))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded);
        assert!(e.message.contains("0x3000 bytes per uid"), "{}", e.message);
        let (_d, _fd) = granted(b.handle(s2, acquire(0x2000, 0x1000, Access::ReadWrite)));
        // Another uid has its own byte quota.
        let (s3, _r3) = session(&b, 1001);
        granted(b.handle(s3, acquire(0x8000, 0x3000, Access::ReadWrite)));
        // The daemon's own per-session limit counts leases of every grant.
        let bar2 = |offset| {
            Request::Acquire(SliceRequest {
                device: "sim0".into(),
                bar: 2,
                offset,
                length: 0x1000,
                access: Access::ReadOnly,
                memattr: MemAttrRequest::Uncached,
            })
        };
        granted(b.handle(s1, bar2(0)));
        assert_eq!(code(b.handle(s1, bar2(0x1000))), ErrorCode::LimitExceeded);
        // Releasing gives quota back.
        b.handle(s1, Request::Release { lease: _a.id }).unwrap();
        granted(b.handle(s1, bar2(0x1000)));
    }

    #[test]
    fn shared_and_exclusive_grants() {
        let b = policy_broker(
            r#"
            [[grant]]
            device = "sim0"
            bar = 0
            windows = ["0x0..0x4000"]
            access = "rw"
            exclusive = false
            uids = [1000]
            [[grant]]
            device = "sim0"
            bar = 0
            windows = ["0x4000..0x8000"]
            exclusive = true
            uids = [1000]
            "#,
        );
        let (s, _r) = session(&b, 1000);
        let (t, _r2) = session(&b, 1000);
        granted(b.handle(s, acquire(0, 0x2000, Access::ReadWrite)));
        granted(b.handle(t, acquire(0x1000, 0x2000, Access::ReadWrite)));
        granted(b.handle(t, acquire(0x1000, 0x1000, Access::ReadOnly)));
        granted(b.handle(s, acquire(0x4000, 0x1000, Access::ReadOnly)));
        let e = b
            .handle(t, acquire(0x4000, 0x1000, Access::ReadOnly))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(
            e.message.contains("ro exclusive, uid 1000"),
            "{}",
            e.message
        );
    }

    #[test]
    fn kept_leases_survive_disconnect_until_an_admin_revokes_them() {
        let b = policy_broker(
            r#"
            [[grant]]
            device = "sim0"
            bar = 0
            access = "rw"
            on_disconnect = "keep"
            uids = [1000]
            [[grant]]
            device = "sim0"
            bar = 2
            uids = [1000]
            "#,
        );
        let (s, _r) = session(&b, 1000);
        let (kept, fd) = granted(b.handle(s, acquire(0, 0x1000, Access::ReadWrite)));
        let (_, fd2) = granted(b.handle(
            s,
            Request::Acquire(SliceRequest {
                device: "sim0".into(),
                bar: 2,
                offset: 0,
                length: 0x1000,
                access: Access::ReadOnly,
                memattr: MemAttrRequest::Uncached,
            }),
        ));
        b.close_session(s);
        assert_eq!(
            crate::fdutil::file_size(fd.as_fd()).unwrap(),
            0x1000,
            "kept: buffer live"
        );
        assert_eq!(
            crate::fdutil::file_size(fd2.as_fd()).unwrap(),
            0,
            "the other grant revokes"
        );
        let (admin, _ra) = session(&b, 0);
        let Ok((Response::Leases(all), _)) = b.handle(admin, Request::ListLeases { all: true })
        else {
            panic!()
        };
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].lease.id, all[0].state), (kept.id, LeaseState::Kept));
        // Its range stays taken.
        let (t, _rt) = session(&b, 1000);
        assert_eq!(
            code(b.handle(t, acquire(0, 0x1000, Access::ReadOnly))),
            ErrorCode::Conflict
        );
        // Revoke by uid reaches it.
        assert!(matches!(
            b.handle(admin, Request::Revoke(RevokeTarget::Uid(1000))),
            Ok((Response::Revoked { count: 1 }, None))
        ));
        assert_eq!(crate::fdutil::file_size(fd.as_fd()).unwrap(), 0);
        granted(b.handle(t, acquire(0, 0x1000, Access::ReadOnly)));
    }

    #[test]
    fn revoke_by_session_uid_and_cgroup() {
        let b = policy_broker("[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1000, 1001]\n");
        let mut a_id = me(1000);
        a_id.cgroup = Some("/system.slice/a.service".into());
        let mut b_id = me(1001);
        b_id.cgroup = Some("/user.slice/user-1001.slice/x.scope".into());
        let ((sa, mut ra), _) = session_as(&b, a_id);
        let ((sb, mut rb), _) = session_as(&b, b_id);
        let (admin, _) = session(&b, 0);
        let take = |s, off| granted(b.handle(s, acquire(off, 0x1000, Access::ReadOnly))).0;
        let a1 = take(sa, 0);
        let b1 = take(sb, 0x1000);
        let b2 = take(sb, 0x2000);
        let revoke = |t| match b.handle(admin, Request::Revoke(t)) {
            Ok((Response::Revoked { count }, None)) => count,
            other => panic!("{other:?}"),
        };
        assert_eq!(revoke(RevokeTarget::Cgroup("/user.slice/**".into())), 2);
        assert_eq!(
            rb.try_recv().unwrap(),
            Event::Revoked {
                lease: b1.id,
                reason: RevokeReason::Admin
            }
        );
        assert_eq!(
            rb.try_recv().unwrap(),
            Event::Revoked {
                lease: b2.id,
                reason: RevokeReason::Admin
            }
        );
        assert_eq!(revoke(RevokeTarget::Uid(1001)), 0);
        assert_eq!(revoke(RevokeTarget::Session(sa)), 1);
        assert_eq!(
            ra.try_recv().unwrap(),
            Event::Revoked {
                lease: a1.id,
                reason: RevokeReason::Admin
            }
        );
        assert_eq!(
            code(b.handle(admin, Request::Revoke(RevokeTarget::Session(999)))),
            ErrorCode::BadArgument
        );
        assert_eq!(
            code(b.handle(
                admin,
                Request::Revoke(RevokeTarget::Cgroup("user.slice".into()))
            )),
            ErrorCode::BadArgument
        );
        assert_eq!(
            code(b.handle(sa, Request::Revoke(RevokeTarget::Uid(1000)))),
            ErrorCode::AdminOnly
        );
    }

    #[test]
    fn explain_is_for_admins_or_about_oneself() {
        let b = policy_broker(
            "[[grant]]\ndevice = \"sim0\"\nbar = 0\nwindows = [\"0x0..0x4000\"]\nuids = [1000]\n",
        );
        let (user, _) = session(&b, 1000);
        let (admin, _) = session(&b, 0);
        let ask = |s, who: PeerIdentity, offset| {
            b.handle(
                s,
                Request::Explain(ExplainRequest {
                    who,
                    slice: SliceRequest {
                        device: "sim0".into(),
                        bar: 0,
                        offset,
                        length: 0x1000,
                        access: Access::ReadOnly,
                        memattr: MemAttrRequest::Uncached,
                    },
                }),
            )
        };
        let Ok((Response::Decision(d), None)) = ask(user, me(1000), 0x3000) else {
            panic!()
        };
        assert!(d.allowed && d.rule.starts_with("grant #1"), "{d:?}");
        let Ok((Response::Decision(d), None)) = ask(admin, me(1000), 0x4000) else {
            panic!()
        };
        assert_eq!((d.allowed, d.code), (false, Some(ErrorCode::OutsideWindow)));
        assert_eq!(code(ask(user, me(1001), 0)), ErrorCode::AdminOnly);
        let mut more = me(1000);
        more.groups = vec![0];
        assert_eq!(
            code(ask(user, more, 0)),
            ErrorCode::AdminOnly,
            "no borrowed groups"
        );
        // Explaining acquires nothing.
        let Ok((Response::Status(st), _)) = b.handle(admin, Request::Status) else {
            panic!()
        };
        assert_eq!(st.leases, 0);
    }

    #[test]
    fn reload_narrows_atomically_and_refuses_device_changes() {
        let wide = "[[grant]]\ndevice = \"sim0\"\nbar = 0\naccess = \"rw\"\nuids = [1000]\n";
        let b = policy_broker(wide);
        let (s, mut rx) = session(&b, 1000);
        let (inside, _f1) = granted(b.handle(s, acquire(0x1000, 0x1000, Access::ReadWrite)));
        let (outside, f2) = granted(b.handle(s, acquire(0x9000, 0x1000, Access::ReadWrite)));
        let (ro, _f3) = granted(b.handle(s, acquire(0x2000, 0x1000, Access::ReadOnly)));
        let narrow = config(
            "[[grant]]\ndevice = \"sim0\"\nbar = 0\nwindows = [\"0x0..0x4000\"]\nuids = [1000]\n",
        );
        assert_eq!(b.apply(narrow, None).unwrap(), (1, 2));
        let got: Vec<Event> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            vec![
                Event::Revoked {
                    lease: inside.id,
                    reason: RevokeReason::Policy
                },
                Event::Revoked {
                    lease: outside.id,
                    reason: RevokeReason::Policy
                },
            ],
            "rw is no longer granted anywhere, and 0x9000 is outside the window"
        );
        assert_eq!(crate::fdutil::file_size(f2.as_fd()).unwrap(), 0);
        let Ok((Response::Leases(l), _)) = b.handle(s, Request::ListLeases { all: false }) else {
            panic!()
        };
        assert_eq!(
            l.iter().map(|i| i.lease.id).collect::<Vec<_>>(),
            vec![ro.id]
        );
        assert_eq!(
            code(b.handle(s, acquire(0x1000, 0x1000, Access::ReadWrite))),
            ErrorCode::AccessDenied
        );
        // Devices cannot change on reload: refused, policy untouched.
        let mut other = config(wide);
        other.devices.clear();
        other.grants.clear();
        let e = b.apply(other, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::ConfigInvalid);
        assert!(
            e.message.contains("[[device]]") && e.message.contains("restart"),
            "{}",
            e.message
        );
        assert_eq!(
            b.config().grants[0].windows,
            Some(vec![barkeep_protocol::Range::new(0, 0x4000)])
        );
        // Without a file there is nothing to reload.
        assert_eq!(b.reload(None).unwrap_err().code, ErrorCode::Unsupported);
    }

    #[test]
    fn reload_from_the_file_keeps_the_old_policy_when_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bk.toml");
        let write = |grants: &str| std::fs::write(&path, format!("{SIM}\n{grants}")).unwrap();
        write("[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1000]\n");
        let config = crate::ConfigSource::file(&path).load().unwrap();
        let DeviceKind::Sim(sim) = &config.devices[0].kind else {
            unreachable!()
        };
        let dev = Box::new(SimDevice::new("sim0", sim)) as Box<dyn Device>;
        let b = Broker::new(config, vec![dev]).with_source(crate::ConfigSource::file(&path));
        let (admin, _) = session(&b, 0);
        write("[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1000]\nbogus = 1\n");
        let e = b.handle(admin, Request::Reload).unwrap_err();
        assert_eq!(e.code, ErrorCode::ConfigInvalid);
        assert!(
            e.message.contains("bogus") && e.message.contains("old policy stays"),
            "{}",
            e.message
        );
        assert_eq!(b.config().grants.len(), 1);
        write("[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1000]\n[[grant]]\ndevice = \"sim0\"\nbar = 2\nuids = [1000]\n");
        assert!(matches!(
            b.handle(admin, Request::Reload),
            Ok((
                Response::Reloaded {
                    grants: 2,
                    revoked: 0
                },
                None
            ))
        ));
        let (user, _) = session(&b, 1000);
        assert_eq!(code(b.handle(user, Request::Reload)), ErrorCode::AdminOnly);
    }

    #[test]
    fn admission_limits_count_connections() {
        let b = Arc::new(policy_broker(
            "[limits]\nsessions = 3\nsessions_per_uid = 2\n",
        ));
        let a1 = b.admit(1000).unwrap();
        let _a2 = b.admit(1000).unwrap();
        let e = b.admit(1000).err().unwrap();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(e.message.contains("sessions_per_uid"), "{}", e.message);
        let _b1 = b.admit(1001).unwrap();
        let e = b.admit(1002).err().unwrap();
        assert!(e.message.contains("[limits] sessions"), "{}", e.message);
        drop(a1);
        let _a3 = b.admit(1000).unwrap();
    }

    #[test]
    fn a_full_event_queue_evicts_its_session() {
        let b = policy_broker("[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1000]\n");
        let ((s, _rx), evicted) = session_as(&b, me(1000));
        let (admin, _) = session(&b, 0);
        // The queue holds 8 events; nobody reads it.
        for i in 0..9u64 {
            granted(b.handle(s, acquire(i * 0x1000, 0x1000, Access::ReadOnly)));
        }
        b.handle(admin, Request::Revoke(RevokeTarget::Uid(1000)))
            .unwrap();
        let notified = evicted.notified();
        tokio::pin!(notified);
        assert!(
            futures_poll_once(notified.as_mut()),
            "the 9th event found the queue full: the session is told to close"
        );
    }

    /// Whether a future is ready on its first poll.
    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx).is_ready()
    }
}
