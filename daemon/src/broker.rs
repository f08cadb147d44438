//! The request handler, free of any transport: sessions, and for each request
//! validate -> policy -> leases -> backend, with the fd handed back to the
//! caller. The server (or a test) owns the sockets; this module owns what the
//! daemon promised to whom.

use crate::backend::{buffer_name, BackendError, Buffer, Device, ExportRequest, RevokeOutcome};
use crate::config::Config;
use crate::leases::{Entry, LeaseTable};
use crate::policy::{self, Decision};
use crate::validate;
use barkeep_protocol::{
    Capabilities, DeviceInfo, DeviceStatus, ErrorCode, ErrorReply, Event, Lease, LeaseId,
    LeaseState, PeerIdentity, Request, Response, RevokeReason, RevokeTarget, SliceRequest,
    StatusInfo, Welcome, PROTOCOL_VERSION,
};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::mpsc;

/// The daemon's version string.
pub const DAEMON_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a session's events go. The broker never blocks on it: a session
/// whose queue is full (a client that does not read) loses the event, and
/// still finds its buffer revoked.
pub type EventSink = mpsc::Sender<Event>;

/// A successful outcome: the response, plus the fd that rides with it
/// (only ever for [`Response::Granted`]).
pub type Outcome = Result<(Response, Option<OwnedFd>), ErrorReply>;

struct Session {
    identity: PeerIdentity,
    client_name: String,
    admin: bool,
    events: EventSink,
}

struct State {
    leases: LeaseTable<Buffer>,
    sessions: BTreeMap<u64, Session>,
    next_session: u64,
}

/// Devices, configuration, sessions and leases, behind one lock.
pub struct Broker {
    config: Config,
    devices: Vec<Box<dyn Device>>,
    /// Device descriptions, read once at start (BARs do not change).
    infos: Vec<DeviceInfo>,
    page_size: u64,
    started: Instant,
    state: Mutex<State>,
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

impl Broker {
    /// A broker for these devices (opened from `config.devices`, same order).
    pub fn new(config: Config, devices: Vec<Box<dyn Device>>) -> Broker {
        let infos = devices.iter().map(|d| d.info()).collect();
        Broker {
            config,
            devices,
            infos,
            page_size: crate::fdutil::page_size(),
            started: Instant::now(),
            state: Mutex::new(State {
                leases: LeaseTable::new(),
                sessions: BTreeMap::new(),
                next_session: 1,
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
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

    /// Registers a session for a peer that completed the handshake.
    pub fn open_session(
        &self,
        identity: PeerIdentity,
        client_name: String,
        events: EventSink,
    ) -> Welcome {
        let admin = policy::is_admin(&identity, &self.config.admin);
        let mut st = self.state();
        let id = st.next_session;
        st.next_session += 1;
        tracing::info!(session = id, uid = identity.uid, pid = identity.pid, client = %client_name, admin, "session opened");
        st.sessions.insert(
            id,
            Session {
                identity: identity.clone(),
                client_name,
                admin,
                events,
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

    /// Ends a session: every lease it holds is revoked (reason
    /// `Disconnected`). Safe to call twice.
    pub fn close_session(&self, session: u64) {
        let mut st = self.state();
        let ids = st.leases.of_session(session);
        for id in &ids {
            self.end_lease(&mut st, id, RevokeReason::Disconnected);
        }
        if st.sessions.remove(&session).is_some() {
            tracing::info!(session, released = ids.len(), "session closed");
        }
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.state().sessions.len()
    }

    /// Revokes every lease (reason `Shutdown`), then clears what lingers
    /// with device-wide revokes.
    pub fn shutdown(&self) {
        let mut st = self.state();
        for id in st.leases.active() {
            self.end_lease(&mut st, &id, RevokeReason::Shutdown);
        }
        for (i, dev) in self.devices.iter().enumerate() {
            let name = &self.infos[i].name;
            if st.leases.list(None).iter().any(|l| &l.lease.device == name) {
                match dev.revoke_all() {
                    Ok(()) => {
                        st.leases.clear_lingering(name);
                    }
                    Err(e) => {
                        tracing::error!(device = %name, "device-wide revoke at shutdown failed: {e}")
                    }
                }
            }
        }
    }

    /// Ends one lease: tells its holder (before the buffer dies, so a
    /// client learns why its mapping faults), then revokes the buffer.
    fn end_lease(&self, st: &mut State, id: &LeaseId, reason: RevokeReason) {
        let Some(entry) = st.leases.get(id) else {
            return;
        };
        let session = entry.session;
        let device = entry.lease.device.clone();
        if let Some(s) = st.sessions.get(&session) {
            if let Err(e) = s.events.try_send(Event::Revoked { lease: *id, reason }) {
                tracing::warn!(session, lease = %id, "revoke event not delivered: {e}");
            }
        }
        let Some(buffer) = st.leases.take_payload(id) else {
            st.leases.remove(id);
            return;
        };
        let outcome = match self.device_index(&device) {
            Some(i) => self.devices[i].revoke(buffer),
            None => Err(BackendError::Invalid(format!(
                "lease of unknown device {device:?}"
            ))),
        };
        match outcome {
            Ok(RevokeOutcome::Dead) => {
                st.leases.remove(id);
                tracing::info!(lease = %id, session, %reason, "lease ended, buffer revoked");
            }
            Ok(RevokeOutcome::MayLinger) => {
                st.leases.linger(id);
                tracing::warn!(lease = %id, session, %reason, "lease ended; its buffer may stay mapped until a device-wide revoke, range kept busy");
            }
            Err(e) => {
                st.leases.linger(id);
                tracing::error!(lease = %id, session, %reason, "revoking the buffer failed, range kept busy: {e}");
            }
        }
    }

    /// Handles one request of a session.
    pub fn handle(&self, session: u64, request: Request) -> Outcome {
        let (identity, client_name, admin) = {
            let st = self.state();
            let s = st.sessions.get(&session).ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Internal,
                    format!("session {session} is not open"),
                )
            })?;
            (s.identity.clone(), s.client_name.clone(), s.admin)
        };
        let name = request.name();
        let result = match request {
            Request::Status => Ok((Response::Status(self.status()), None)),
            Request::ListDevices => Ok((Response::Devices(self.infos.clone()), None)),
            Request::Acquire(req) => self.acquire(session, &identity, &client_name, req),
            Request::Release { lease } => self.release(session, lease),
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
            Request::Explain(_) | Request::Reload | Request::Reclaim { .. } | Request::Metrics => {
                Err(ErrorReply::new(
                    ErrorCode::UnknownRequest,
                    format!("{name} is not implemented by this daemon version"),
                ))
            }
        };
        if let Err(e) = &result {
            tracing::info!(session, request = name, code = %e.code, "refused: {}", e.message);
        }
        result
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

    fn acquire(
        &self,
        session: u64,
        identity: &PeerIdentity,
        client_name: &str,
        req: SliceRequest,
    ) -> Outcome {
        let (info, range) = validate::slice(&req, &self.infos, self.page_size)?;
        if let Some(problem) = &info.problem {
            return Err(ErrorReply::new(
                ErrorCode::DeviceUnavailable,
                format!("device {:?} cannot be used: {problem}", info.name),
            ));
        }
        let caps = info.capabilities;
        if !caps.export {
            return Err(ErrorReply::new(
                ErrorCode::Unsupported,
                format!(
                    "device {:?} cannot export slices on this kernel (no VFIO_DEVICE_FEATURE_DMA_BUF; needs Linux 6.19 or later)",
                    info.name
                ),
            ));
        }
        let memattr = match policy::decide(
            identity,
            &req,
            &self.config.grants,
            caps.write_combining,
        ) {
            Decision::Allow { grant, memattr } => {
                tracing::debug!(session, grant = grant + 1, "allowed by grant");
                memattr
            }
            Decision::Deny { code, reason, rule } => {
                tracing::info!(session, uid = identity.uid, rule = rule.map(|r| r + 1), %code, "denied: {reason}");
                return Err(ErrorReply::new(code, reason));
            }
        };
        let i = self.device_index(&req.device).expect("validated");
        let mut st = self.state();
        st.leases.check(&req.device, req.bar, range, req.access)?;
        let id = st.leases.new_id()?;
        let name = buffer_name(&req.device, req.bar, range);
        let exported = self.devices[i]
            .export(&ExportRequest {
                bar: req.bar,
                range,
                access: req.access,
                memattr,
                name: name.clone(),
            })
            .map_err(|e| backend_error(&req.device, e))?;
        let lease = Lease {
            id,
            device: req.device.clone(),
            bar: req.bar,
            offset: range.offset,
            length: range.length,
            access: req.access,
            memattr,
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
        });
        tracing::info!(session, uid = identity.uid, lease = %id, device = %req.device, bar = req.bar, %range, access = %req.access, %memattr, "granted");
        Ok((Response::Granted(lease), Some(exported.client_fd)))
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
        Ok((Response::Released, None))
    }

    fn revoke(&self, target: RevokeTarget) -> Outcome {
        let mut st = self.state();
        match target {
            RevokeTarget::Lease(id) => {
                let active = st
                    .leases
                    .get(&id)
                    .is_some_and(|e| e.state == LeaseState::Active);
                if !active {
                    return Err(ErrorReply::new(
                        ErrorCode::UnknownLease,
                        format!("no live lease {id} (see `barkeep leases --all`)"),
                    ));
                }
                self.end_lease(&mut st, &id, RevokeReason::Admin);
                Ok((Response::Revoked { count: 1 }, None))
            }
            RevokeTarget::Device(name) => {
                validate::device_name(&name)?;
                let Some(i) = self.device_index(&name) else {
                    return Err(ErrorReply::new(
                        ErrorCode::UnknownDevice,
                        format!("no device named {name:?} is configured (see `barkeep devices`)"),
                    ));
                };
                let ids = st.leases.of_device(&name);
                for id in &ids {
                    self.end_lease(&mut st, id, RevokeReason::Device);
                }
                let lingering = st.leases.list(None).iter().any(|l| l.lease.device == name);
                if lingering {
                    self.devices[i]
                        .revoke_all()
                        .map_err(|e| backend_error(&name, e))?;
                    let cleared = st.leases.clear_lingering(&name);
                    tracing::info!(device = %name, cleared, "device-wide revoke cleared lingering buffers");
                }
                Ok((
                    Response::Revoked {
                        count: ids.len() as u32,
                    },
                    None,
                ))
            }
            RevokeTarget::Session(_) | RevokeTarget::Uid(_) | RevokeTarget::Cgroup(_) => {
                Err(ErrorReply::new(
                    ErrorCode::UnknownRequest,
                    "revoke by session, uid or cgroup is not implemented by this daemon version",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sim::SimDevice;
    use crate::config::DeviceKind;
    use barkeep_protocol::{Access, MemAttr, MemAttrRequest};
    use std::os::fd::AsFd;

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
        let (tx, rx) = mpsc::channel(8);
        let w = b.open_session(me(uid), "test".into(), tx);
        (w.session_id, rx)
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

    fn granted(o: Outcome) -> (Lease, OwnedFd) {
        match o.unwrap() {
            (Response::Granted(l), Some(fd)) => (l, fd),
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
}
