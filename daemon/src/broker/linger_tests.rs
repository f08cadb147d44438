//! Export-only kernels: a released lease whose buffer cannot be revoked on
//! its own lingers, keeps its range from other grants, and shows in status
//! until the device is revoked as a whole.

use super::*;
use crate::backend::sim::SimDevice;
use crate::backend::{BackendError, Buffer, ExportRequest, Exported, RevokeOutcome};
use crate::config::DeviceKind;
use barkeep_protocol::{Access, Capabilities, DeviceInfo, MemAttrRequest};

/// The sim device as a stock kernel would offer it: no per-buffer revoke.
struct NoRevoke(SimDevice);

// Nothing of a restart is needed here: the trait's defaults.
impl crate::backend::Restart for NoRevoke {}

impl Device for NoRevoke {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            capabilities: self.capabilities(),
            ..self.0.info()
        }
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            revoke: false,
            ..self.0.capabilities()
        }
    }
    fn notes(&self) -> Vec<String> {
        self.0.notes()
    }
    fn export(&self, req: &ExportRequest) -> Result<Exported, BackendError> {
        self.0.export(req)
    }
    fn revoke(&self, _buffer: Buffer) -> Result<RevokeOutcome, BackendError> {
        Ok(RevokeOutcome::MayLinger)
    }
    fn revoke_all(&self) -> Result<(), BackendError> {
        self.0.revoke_all()
    }
    fn peek(&self, bar: u32, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.0.peek(bar, offset, out)
    }
    fn poke(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.poke(bar, offset, data)
    }
}

fn broker() -> Broker {
    let text = r#"
        [[device]]
        name = "sim0"
        sim = { bars = [ { index = 0, size = "64K" } ] }
        [[grant]]
        device = "sim0"
        bar = 0
        access = "rw"
        uids = [1000, 1001]
        [admin]
        uids = [0]
    "#;
    let config = Config::from_toml_str(text).unwrap();
    let DeviceKind::Sim(s) = &config.devices[0].kind else {
        unreachable!()
    };
    let dev = Box::new(NoRevoke(SimDevice::new("sim0", s))) as Box<dyn Device>;
    Broker::new(config, vec![dev])
}

fn session(b: &Broker, uid: u32) -> u64 {
    let (sink, _source) = event_channel(8);
    let peer = Peer {
        identity: PeerIdentity {
            uid,
            gid: uid,
            pid: std::process::id() as i32,
            ..Default::default()
        },
        pidfd: crate::sys::pidfd_open(std::process::id() as i32).unwrap(),
    };
    b.open_session(peer, "test".into(), sink).session_id
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

fn lingering_notes(b: &Broker, s: u64) -> Vec<String> {
    let Ok((Response::Status(st), None)) = b.handle(s, Request::Status) else {
        panic!("no status")
    };
    st.devices[0]
        .notes
        .iter()
        .filter(|n| n.starts_with("lingering:"))
        .cloned()
        .collect()
}

#[test]
fn an_unrevocable_released_lease_keeps_its_range_until_a_device_revoke() {
    let b = broker();
    let (tenant, other, admin) = (session(&b, 1000), session(&b, 1001), session(&b, 0));
    let Ok((Response::Granted(lease, _), Some(_fd))) =
        b.handle(tenant, acquire(0x2000, 0x2000, Access::ReadWrite))
    else {
        panic!("not granted")
    };
    assert!(matches!(
        b.handle(tenant, Request::Release { lease: lease.id }),
        Ok((Response::Released, None))
    ));

    // The buffer may still be mapped or imported: its range stays busy, for
    // read-only requests too (the lingering buffer is writable).
    for access in [Access::ReadWrite, Access::ReadOnly] {
        let e = b
            .handle(other, acquire(0x3000, 0x1000, access))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::RangeBusy, "{access}: {e:?}");
        assert!(e.message.contains("revoking device"), "{}", e.message);
    }
    // Elsewhere in the BAR, grants go on.
    assert!(b
        .handle(other, acquire(0x8000, 0x1000, Access::ReadWrite))
        .is_ok());

    // Status names the range, and how to free it.
    let notes = lingering_notes(&b, admin);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("bar 0 0x2000+0x2000")
            && notes[0].contains("barkeep revoke --device sim0"),
        "{notes:?}"
    );

    // The device-wide revoke kills every buffer: the range is free again.
    assert!(b
        .handle(admin, Request::Revoke(RevokeTarget::Device("sim0".into())))
        .is_ok());
    assert!(lingering_notes(&b, admin).is_empty());
    assert!(b
        .handle(other, acquire(0x3000, 0x1000, Access::ReadWrite))
        .is_ok());
}

#[test]
fn a_lingering_read_only_buffer_still_allows_shared_read_only_slices() {
    let b = broker();
    let (tenant, other, admin) = (session(&b, 1000), session(&b, 1001), session(&b, 0));
    let Ok((Response::Granted(lease, _), Some(_fd))) =
        b.handle(tenant, acquire(0x4000, 0x1000, Access::ReadOnly))
    else {
        panic!("not granted")
    };
    assert!(b
        .handle(tenant, Request::Release { lease: lease.id })
        .is_ok());
    // A shared read-only slice of the same range: both buffers are read-only.
    let Ok((Response::Granted(shared, _), Some(_fd2))) =
        b.handle(other, acquire(0x4000, 0x1000, Access::ReadOnly))
    else {
        panic!("shared read-only not granted next to a lingering read-only buffer")
    };
    // Released (revoke refused by this kernel too), a read-write slice is
    // still refused: the lingering buffers may be read by their holders.
    assert!(b
        .handle(other, Request::Release { lease: shared.id })
        .is_ok());
    let e = b
        .handle(other, acquire(0x4000, 0x1000, Access::ReadWrite))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::RangeBusy);
    let notes = lingering_notes(&b, admin);
    assert!(
        notes.len() == 2
            && notes[0].contains("(ro)")
            && notes[0].contains("read-write or exclusive"),
        "{notes:?}"
    );
}
