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

/// sim0 with BAR0 0x0..0x8000 read-write for the running user and for uid
/// 0 (the tests' administrator sessions are uid 0, whoever runs them), and
/// BAR2 for the running user.
fn broker(extra: &str) -> Broker {
    let uid = nix::unistd::geteuid().as_raw();
    let uids = if uid == 0 {
        "0".to_string()
    } else {
        format!("{uid}, 0")
    };
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
        uids = [{uids}]
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
        pidfd: crate::sys::pidfd_open(std::process::id() as i32).unwrap(),
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
    assert_eq!(crate::sys::file_size(fd.as_fd()).unwrap(), 0x2000);
    let e = b
        .handle(s, acquire(0x3000, 0x1000, Access::ReadOnly))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    let Ok((Response::Leases(l), None)) = b.handle(s, Request::ListLeases { all: false }) else {
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
        crate::sys::file_size(fd.as_fd()).unwrap(),
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
    assert_eq!(crate::sys::file_size(fd.as_fd()).unwrap(), 0);
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
fn a_uid_lists_and_releases_its_leases_from_any_of_its_sessions() {
    let b = policy_broker(
        "[[grant]]\ndevice = \"sim0\"\nbar = 0\naccess = \"rw\"\nuids = [4242, 4243]\n",
    );
    let (holder, mut holder_rx) = session(&b, 4242);
    let (cli, _) = session(&b, 4242);
    let (other, _) = session(&b, 4243);
    let (admin, _) = session(&b, 0);
    let (a, _fa) = granted(b.handle(holder, acquire(0, 0x1000, Access::ReadWrite)));
    let (c, _fc) = granted(b.handle(holder, acquire(0x1000, 0x1000, Access::ReadWrite)));
    let ids = |s| match b.handle(s, Request::ListLeases { all: false }) {
        Ok((Response::Leases(l), None)) => l.iter().map(|i| i.lease.id).collect::<Vec<LeaseId>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ids(cli), [a.id, c.id], "another session of the same uid");
    assert!(ids(other).is_empty(), "another uid");
    // Another uid may not release it, and is told whose it is.
    let e = b
        .handle(other, Request::Release { lease: a.id })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownLease);
    assert!(e.message.contains("held by uid 4242"), "{}", e.message);
    // The same uid may, from another session; the holder hears of it.
    assert!(matches!(
        b.handle(cli, Request::Release { lease: a.id }),
        Ok((Response::Released, None))
    ));
    assert_eq!(
        holder_rx.try_recv().unwrap(),
        Event::Revoked {
            lease: a.id,
            reason: RevokeReason::Released
        }
    );
    let e = b.handle(cli, Request::Release { lease: a.id }).unwrap_err();
    assert!(e.message.starts_with("no lease"), "{}", e.message);
    // An administrator may release anyone's.
    assert!(b.handle(admin, Request::Release { lease: c.id }).is_ok());
    assert!(ids(cli).is_empty());
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
    crate::sys::pwrite_all(fd.as_fd(), &[0xaa, 0xbb], 0x10).unwrap();
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
    let Ok((Response::Leases(all), _)) = b.handle(admin, Request::ListLeases { all: true }) else {
        panic!()
    };
    assert_eq!(all.len(), 1);
    assert!(matches!(
        b.handle(admin, Request::Revoke(RevokeTarget::Lease(lease.id))),
        Ok((Response::Revoked { count: 1 }, None))
    ));
    assert_eq!(crate::sys::file_size(fd.as_fd()).unwrap(), 0);
    assert!(rx.try_recv().is_err(), "other sessions hear nothing");
    let Ok((Response::Status(st), None)) = b.handle(user, Request::Status) else {
        panic!()
    };
    assert_eq!((st.sessions, st.leases), (2, 0));
    assert!(st.capabilities.export && st.capabilities.revoke);
}

/// A simulated device whose revokes fail while `fail` is set, as when
/// a client found a way to keep its buffer alive.
struct Stubborn {
    sim: SimDevice,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Stubborn {
    fn refuse(&self) -> Result<(), BackendError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BackendError::Kernel {
                what: "truncating a slice".into(),
                source: nix::Error::EPERM,
            });
        }
        Ok(())
    }
}

impl crate::backend::Restart for Stubborn {}

impl Device for Stubborn {
    fn info(&self) -> DeviceInfo {
        self.sim.info()
    }
    fn capabilities(&self) -> barkeep_protocol::Capabilities {
        self.sim.capabilities()
    }
    fn notes(&self) -> Vec<String> {
        self.sim.notes()
    }
    fn export(&self, req: &ExportRequest) -> Result<crate::backend::Exported, BackendError> {
        self.sim.export(req)
    }
    fn revoke(&self, buffer: crate::backend::Buffer) -> Result<RevokeOutcome, BackendError> {
        self.refuse()?;
        self.sim.revoke(buffer)
    }
    fn revoke_all(&self) -> Result<(), BackendError> {
        self.refuse()?;
        self.sim.revoke_all()
    }
    fn peek(&self, bar: u32, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.sim.peek(bar, offset, out)
    }
    fn poke(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.sim.poke(bar, offset, data)
    }
}

#[test]
fn a_failed_revoke_is_an_error_never_cleared_and_counts_for_its_holder() {
    let config = config(
        r#"
        [limits]
        leases_per_uid = 2
        [[grant]]
        device = "sim0"
        bar = 0
        access = "rw"
        uids = [4242]
        "#,
    );
    let DeviceKind::Sim(sc) = &config.devices[0].kind else {
        unreachable!()
    };
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let dev = Stubborn {
        sim: SimDevice::new("sim0", sc),
        fail: fail.clone(),
    };
    let b = Broker::new(config, vec![Box::new(dev) as Box<dyn Device>]);
    let (user, _rx) = session(&b, 4242);
    let (admin, _arx) = session(&b, 0);
    let (a, fa) = granted(b.handle(user, acquire(0, 0x1000, Access::ReadWrite)));
    let (_c, _fc) = granted(b.handle(user, acquire(0x1000, 0x1000, Access::ReadWrite)));
    // The admin's revoke says it failed, naming the lease.
    let e = b
        .handle(admin, Request::Revoke(RevokeTarget::Lease(a.id)))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Kernel, "{}", e.message);
    assert!(e.message.contains(&a.id.to_string()), "{}", e.message);
    // Lingering, it still counts for uid 4242: no third lease.
    let e = b
        .handle(user, acquire(0x4000, 0x1000, Access::ReadWrite))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitExceeded, "{}", e.message);
    // A device-wide revoke that fails clears nothing and says so.
    let e = b
        .handle(admin, Request::Revoke(RevokeTarget::Device("sim0".into())))
        .unwrap_err();
    assert!(e.message.contains("not cleared"), "{}", e.message);
    let Ok((Response::Leases(all), _)) = b.handle(admin, Request::ListLeases { all: true }) else {
        panic!()
    };
    assert!(all.iter().any(|l| l.lease.id == a.id), "{all:?}");
    assert_eq!(crate::sys::file_size(fa.as_fd()).unwrap(), 0x1000);
    // Once the buffers can be killed, the device-wide revoke clears them.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    b.handle(admin, Request::Revoke(RevokeTarget::Device("sim0".into())))
        .unwrap();
    assert_eq!(crate::sys::file_size(fa.as_fd()).unwrap(), 0);
    granted(b.handle(user, acquire(0x4000, 0x1000, Access::ReadWrite)));
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
    assert_eq!(crate::sys::file_size(fd.as_fd()).unwrap(), 0);
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
        crate::sys::file_size(fd.as_fd()).unwrap(),
        0x1000,
        "kept: buffer live"
    );
    assert_eq!(
        crate::sys::file_size(fd2.as_fd()).unwrap(),
        0,
        "the other grant revokes"
    );
    let (admin, _ra) = session(&b, 0);
    let Ok((Response::Leases(all), _)) = b.handle(admin, Request::ListLeases { all: true }) else {
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
    assert_eq!(crate::sys::file_size(fd.as_fd()).unwrap(), 0);
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
    assert_eq!(crate::sys::file_size(f2.as_fd()).unwrap(), 0);
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
