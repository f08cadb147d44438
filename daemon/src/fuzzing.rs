//! Hostile-input entry points shared by the cargo-fuzz targets (`fuzz/`)
//! and their always-on proptest equivalents (`daemon/tests/hostile.rs`): a
//! fixed configuration, and checks that panic when decoding, validation or
//! policy misbehaves (a panic, or an accepted request that breaks
//! alignment, bounds, mappable areas, reserved ranges, windows, access or
//! write-combining rules). Not part of the daemon's behaviour.

use crate::backend::sim::SimDevice;
use crate::backend::Device;
use crate::config::{Config, DeviceKind};
use crate::decide::policy::{self, Allowed};
use barkeep_protocol::{
    decode_client, decode_daemon, decode_hello_prefix, encode_client, request_id_hint, Access,
    ClientMessage, DeviceInfo, MemAttr, MemAttrRequest, PeerIdentity, Request, SliceRequest,
};
use std::sync::OnceLock;

/// The fixed configuration: two simulated devices with sparse mappable
/// areas and a reserved range, and grants of every subject kind. Every
/// number is a multiple of 64 KiB, so it loads whatever the page size.
pub const CONFIG: &str = r#"
[[device]]
name = "sim0"
sim = { bars = [ { index = 0, size = "1M", mappable = ["0x0..0x80000", "0xc0000..0x100000"], reserved = ["0x20000..0x30000"] }, { index = 2, size = "64K" } ] }
[[device]]
name = "sim1"
sim = { bars = [ { index = 4, size = "256K" } ] }

[[grant]]
device = "sim0"
bar = 0
windows = ["0x0..0x40000", "0xd0000..0x100000"]
access = "rw"
wc = true
uids = [1000]
max_leases_per_session = 4

[[grant]]
device = "sim0"
bar = 0
access = "ro"
gids = [100]

[[grant]]
device = "sim0"
bar = 2
access = "rw"
cgroups = ["/kubepods.slice/*/cri-containerd-*.scope"]
exclusive = false

[[grant]]
device = "sim1"
bar = 4
windows = ["0x10000..0x20000"]
access = "rw"
labels = ["*:container_t:*"]
on_disconnect = "keep"
"#;

/// Identities the fixed policy tells apart.
pub fn identities() -> Vec<PeerIdentity> {
    let id = |uid, gid, groups: &[u32], cgroup: Option<&str>, label: Option<&str>| PeerIdentity {
        uid,
        gid,
        pid: 4242,
        groups: groups.to_vec(),
        cgroup: cgroup.map(str::to_string),
        label: label.map(str::to_string),
    };
    vec![
        id(1000, 1000, &[], None, None),
        id(2000, 2000, &[100], None, None),
        id(
            3000,
            3000,
            &[],
            Some("/kubepods.slice/pod1/cri-containerd-ab.scope"),
            None,
        ),
        id(
            4000,
            4000,
            &[],
            None,
            Some("system_u:system_r:container_t:s0"),
        ),
        id(65534, 65534, &[], Some("/"), Some("unconfined")),
    ]
}

/// The loaded fixed configuration, its devices and the page size.
pub struct Fixture {
    /// [`CONFIG`], loaded.
    pub config: Config,
    /// The devices as the daemon describes them.
    pub devices: Vec<DeviceInfo>,
    /// The page size requests are checked against.
    pub page: u64,
}

/// The fixture, built once.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let config = Config::from_toml_str(CONFIG).expect("the fixed config loads");
        let devices = config
            .devices
            .iter()
            .map(|d| match &d.kind {
                DeviceKind::Sim(s) => SimDevice::new(&d.name, s).info(),
                DeviceKind::Pci(_) => unreachable!("the fixed config is simulated"),
            })
            .collect();
        Fixture {
            config,
            devices,
            page: crate::sys::page_size(),
        }
    })
}

/// Protocol decoding of arbitrary bytes: never a panic, and whatever
/// decodes encodes back to something that decodes the same.
pub fn decode(data: &[u8]) {
    let _ = decode_hello_prefix(data);
    let _ = request_id_hint(data);
    let _ = decode_daemon(data);
    if let Ok(msg) = decode_client(data) {
        if let Ok(bytes) = encode_client(&msg) {
            assert_eq!(decode_client(&bytes).as_ref(), Ok(&msg));
        }
    }
}

/// Decoding then validation and policy, as the daemon does for a request
/// datagram, for every identity of [`identities`].
pub fn decode_validate(data: &[u8]) {
    decode(data);
    let Ok(ClientMessage::Request { request, .. }) = decode_client(data) else {
        return;
    };
    match request {
        Request::Acquire(req) => {
            for id in identities() {
                check_slice(&id, &req);
            }
        }
        Request::Explain(x) => {
            check_slice(&x.who, &x.slice);
        }
        _ => {}
    }
}

/// [`policy::check`] and [`policy::explain`] on one request: they agree,
/// and an accepted request obeys every rule.
pub fn check_slice(id: &PeerIdentity, req: &SliceRequest) {
    let f = fixture();
    let grants = &f.config.grants;
    let verdict = policy::check(id, req, grants, &f.devices, f.page);
    let explained = policy::explain(id, req, grants, &f.devices, f.page);
    assert_eq!(
        explained.allowed,
        verdict.is_ok(),
        "explain disagrees: {explained:?}"
    );
    match verdict {
        Ok(a) => assert_sound(id, req, &a),
        Err(d) => {
            assert_eq!(explained.code, Some(d.error.code));
            assert!(!d.error.message.is_empty());
        }
    }
}

fn assert_sound(id: &PeerIdentity, req: &SliceRequest, a: &Allowed) {
    let f = fixture();
    let dev = &f.devices[a.device];
    assert_eq!(dev.name, req.device);
    let bar = dev
        .bars
        .iter()
        .find(|b| b.index == req.bar)
        .expect("granted on a BAR that exists");
    let r = a.range;
    assert_eq!(r, req.range(), "the granted range is the requested one");
    assert!(r.length > 0, "empty slice granted: {req:?}");
    assert!(
        r.offset % f.page == 0 && r.length % f.page == 0,
        "unaligned slice granted: {req:?}"
    );
    let end = r
        .offset
        .checked_add(r.length)
        .expect("overflowing slice granted");
    assert!(end <= bar.size, "slice past the BAR granted: {req:?}");
    assert!(
        bar.mappable.iter().any(|m| m.contains(&r)),
        "slice outside the mappable areas granted: {req:?}"
    );
    assert!(
        !bar.reserved.iter().any(|x| x.range.overlaps(&r)),
        "slice over a reserved range granted: {req:?}"
    );
    let g = &f.config.grants[a.grant];
    assert!(
        g.device == req.device && g.bar == req.bar,
        "wrong grant {g:?}"
    );
    assert!(g.who.iter().any(|s| s.matches(id)), "grant not for {id:?}");
    if let Some(w) = &g.windows {
        assert!(
            w.iter().any(|w| w.contains(&r)),
            "slice outside the windows granted: {req:?}"
        );
    }
    assert!(
        req.access == Access::ReadOnly || g.access == Access::ReadWrite,
        "rw granted on a ro grant: {req:?}"
    );
    if a.memattr == MemAttr::WriteCombining {
        assert!(
            g.wc && dev.capabilities.write_combining,
            "wc granted without wc: {req:?}"
        );
        assert_ne!(req.memattr, MemAttrRequest::Uncached);
    }
    if req.memattr == MemAttrRequest::WriteCombining {
        assert_eq!(a.memattr, MemAttr::WriteCombining);
    }
}

/// Configuration parsing of arbitrary text: never a panic, and a config
/// that loads can be explained.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Config::from_toml_str(&text) {
        let _ = c.explain();
        for g in &c.grants {
            assert!(!g.who.is_empty(), "a grant for nobody loaded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_loads_and_tells_identities_apart() {
        let f = fixture();
        assert_eq!(f.config.grants.len(), 4);
        let req = |device: &str, bar, offset| SliceRequest {
            device: device.into(),
            bar,
            offset,
            length: 0x10000,
            access: Access::ReadOnly,
            memattr: MemAttrRequest::Uncached,
        };
        let ids = identities();
        let allowed = |i: usize, r: &SliceRequest| {
            policy::check(&ids[i], r, &f.config.grants, &f.devices, f.page).is_ok()
        };
        assert!(allowed(0, &req("sim0", 0, 0)));
        assert!(allowed(1, &req("sim0", 0, 0x40000)));
        assert!(allowed(2, &req("sim0", 2, 0)));
        assert!(allowed(3, &req("sim1", 4, 0x10000)));
        assert!(!allowed(4, &req("sim0", 0, 0)));
        assert!(!allowed(1, &req("sim0", 0, 0x20000)), "reserved");
        for id in &ids {
            check_slice(id, &req("sim0", 0, 0x80000));
        }
    }
}
