//! Always-on equivalents of the cargo-fuzz targets in `fuzz/` (which need
//! nightly): arbitrary bytes, mutated valid messages and arbitrary
//! structured requests through decode + validate + policy against a fixed
//! configuration, and arbitrary configuration text. Never a panic, never an
//! accepted request that breaks alignment, bounds, mappable areas, reserved
//! ranges or windows (the checks live in `barkeep_daemon::fuzzing`).

use barkeep_daemon::fuzzing;
use barkeep_protocol::{
    encode_client, Access, ClientMessage, ExplainRequest, Hello, MemAttrRequest, PeerIdentity,
    Request, SliceRequest,
};
use proptest::prelude::*;

/// Offsets and lengths that hit the interesting places: page multiples near
/// the fixed config's edges (0, windows, reserved range, BAR ends), odd
/// values, and anything at all (overflow).
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..0x110).prop_map(|p| p * 0x1000),
        prop::sample::select(vec![
            0, 0x1000, 0xf000, 0x10000, 0x1f000, 0x20000, 0x2f000, 0x30000, 0x3f000, 0x40000,
            0x7f000, 0x80000, 0xc0000, 0xcf000, 0xd0000, 0xff000, 0x100000, 0x101000,
        ]),
        any::<u64>(),
        (0u64..0x100000),
        Just(u64::MAX),
        Just(u64::MAX - 0xfff),
    ]
}

fn slice() -> impl Strategy<Value = SliceRequest> {
    (
        prop::sample::select(vec!["sim0", "sim1", "sim2", "", "SIM0"]).prop_map(String::from),
        prop_oneof![0u32..7, any::<u32>()],
        number(),
        number(),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(device, bar, offset, length, rw, wc)| SliceRequest {
            device,
            bar,
            offset,
            length,
            access: if rw {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            },
            memattr: match wc {
                0 => MemAttrRequest::Uncached,
                1 => MemAttrRequest::WriteCombining,
                _ => MemAttrRequest::PreferWriteCombining,
            },
        })
}

fn identity() -> impl Strategy<Value = PeerIdentity> {
    (
        prop::sample::select(vec![0u32, 100, 1000, 2000, 3000, 65534]),
        prop::sample::select(vec![0u32, 100, 1000]),
        prop::collection::vec(prop::sample::select(vec![0u32, 100, 1000, 4242]), 0..4),
        prop::option::of(prop_oneof![
            Just("/kubepods.slice/pod1/cri-containerd-ab.scope".to_string()),
            Just("/kubepods.slice/cri-containerd-ab.scope".to_string()),
            "/[a-z./*-]{0,30}",
            ".{0,20}",
        ]),
        prop::option::of(prop_oneof![
            Just("system_u:system_r:container_t:s0".to_string()),
            ".{0,20}",
        ]),
    )
        .prop_map(|(uid, gid, groups, cgroup, label)| PeerIdentity {
            uid,
            gid,
            pid: 1,
            groups,
            cgroup,
            label,
        })
}

fn encoded(id: u64, request: Request) -> Vec<u8> {
    encode_client(&ClientMessage::Request { id, request }).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::decode_validate(&data);
        fuzzing::config(&data);
    }

    #[test]
    fn structured_requests_are_decided_soundly(who in identity(), req in slice()) {
        fuzzing::check_slice(&who, &req);
        // The same through the wire, as Acquire (for the fixed identities)
        // and as Explain (for this one).
        fuzzing::decode_validate(&encoded(7, Request::Acquire(req.clone())));
        fuzzing::decode_validate(&encoded(8, Request::Explain(ExplainRequest { who, slice: req })));
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        req in slice(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = encoded(9, Request::Acquire(req));
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] = v;
        }
        fuzzing::decode_validate(&bytes);
        let cut = cut % (bytes.len() + 1);
        fuzzing::decode_validate(&bytes[..cut]);
        let hello = encode_client(&ClientMessage::Hello(Hello {
            protocol_version: 1,
            client_name: "x".into(),
        }))
        .unwrap();
        fuzzing::decode_validate(&hello);
    }

    #[test]
    fn mutated_configs_never_panic(
        at in any::<usize>(),
        insert in prop::sample::select(vec![
            "\"", "[", "]", "=", "\n", "0x", "..", "*", "/", "**", "-1", "\u{0}", "é",
            "\n[[grant]]\n", "\n[limits]\nsessions = 0\n", "windows = []", "cgroups = [\"/a//b\"]",
            "max_bytes_per_uid = 1", "exclusive = 3", "on_disconnect = \"keep\"",
        ]),
        cut in any::<usize>(),
    ) {
        let base = fuzzing::CONFIG;
        let mut at = at % (base.len() + 1);
        while !base.is_char_boundary(at) {
            at -= 1;
        }
        let text = format!("{}{insert}{}", &base[..at], &base[at..]);
        fuzzing::config(text.as_bytes());
        let mut cut = cut % (text.len() + 1);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        fuzzing::config(&text.as_bytes()[..cut]);
    }
}

/// Every page-granular slice of up to 3 pages over every BAR (and past
/// their ends), for every identity, access and memory attribute: all
/// decided soundly, and enough of them granted for that to mean something.
#[test]
fn a_grid_of_slices_is_decided_soundly() {
    let page = 0x1000u64;
    let mut granted = 0;
    let mut total = 0;
    for who in fuzzing::identities() {
        for (device, bar) in [("sim0", 0u32), ("sim0", 2), ("sim1", 4), ("sim0", 1)] {
            for p in 0..0x110u64 {
                for pages in 1..=3u64 {
                    for rw in [false, true] {
                        for memattr in [
                            MemAttrRequest::Uncached,
                            MemAttrRequest::WriteCombining,
                            MemAttrRequest::PreferWriteCombining,
                        ] {
                            let req = SliceRequest {
                                device: device.into(),
                                bar,
                                offset: p * page,
                                length: pages * page,
                                access: if rw {
                                    Access::ReadWrite
                                } else {
                                    Access::ReadOnly
                                },
                                memattr,
                            };
                            fuzzing::check_slice(&who, &req);
                            let f = fuzzing::fixture();
                            total += 1;
                            if barkeep_daemon::decide::policy::check(
                                &who,
                                &req,
                                &f.config.grants,
                                &f.devices,
                                f.page,
                            )
                            .is_ok()
                            {
                                granted += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        granted > 1000 && granted < total / 2,
        "{granted} of {total} granted"
    );
}

#[test]
fn the_seed_corpora_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("fuzz/corpus");
    let mut seen = 0;
    for (target, run) in [
        ("decode", fuzzing::decode as fn(&[u8])),
        ("decode_validate", fuzzing::decode_validate),
        ("config", fuzzing::config),
    ] {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("no seed corpus at {}", dir.display());
        };
        for e in entries {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            run(&data);
            seen += 1;
        }
    }
    assert!(seen >= 10, "only {seen} seeds");
}

/// Regenerates the seed corpora in fuzz/corpus/ (run with
/// `cargo test -p barkeep-daemon --test hostile -- --ignored write_seed_corpora`).
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a protocol or config change"]
fn write_seed_corpora() {
    use barkeep_protocol::{
        encode_daemon, DaemonMessage, ErrorCode, ErrorReply, LeaseId, RevokeTarget,
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("fuzz/corpus");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let acquire = |device: &str, bar, offset, length, rw: bool, memattr| {
        Request::Acquire(SliceRequest {
            device: device.into(),
            bar,
            offset,
            length,
            access: if rw {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            },
            memattr,
        })
    };
    let uc = MemAttrRequest::Uncached;
    let requests = vec![
        ("status", Request::Status),
        ("devices", Request::ListDevices),
        ("acquire-ok", acquire("sim0", 0, 0x1000, 0x1000, true, uc)),
        (
            "acquire-window-end",
            acquire(
                "sim0",
                0,
                0x3f000,
                0x1000,
                true,
                MemAttrRequest::WriteCombining,
            ),
        ),
        (
            "acquire-reserved",
            acquire("sim0", 0, 0x20000, 0x1000, false, uc),
        ),
        (
            "acquire-overflow",
            acquire("sim0", 0, u64::MAX - 0xfff, 0x2000, false, uc),
        ),
        (
            "acquire-unaligned",
            acquire(
                "sim0",
                0,
                0x800,
                0x1000,
                false,
                MemAttrRequest::PreferWriteCombining,
            ),
        ),
        (
            "acquire-bar4",
            acquire("sim1", 4, 0x10000, 0x10000, true, uc),
        ),
        (
            "release",
            Request::Release {
                lease: LeaseId([7; 16]),
            },
        ),
        ("leases", Request::ListLeases { all: true }),
        (
            "revoke-lease",
            Request::Revoke(RevokeTarget::Lease(LeaseId([1; 16]))),
        ),
        (
            "revoke-device",
            Request::Revoke(RevokeTarget::Device("sim0".into())),
        ),
        ("revoke-session", Request::Revoke(RevokeTarget::Session(3))),
        ("revoke-uid", Request::Revoke(RevokeTarget::Uid(1000))),
        (
            "revoke-cgroup",
            Request::Revoke(RevokeTarget::Cgroup("/kubepods.slice/**".into())),
        ),
        (
            "peek",
            Request::Peek {
                device: "sim0".into(),
                bar: 0,
                offset: 0,
                length: 4,
            },
        ),
        (
            "poke",
            Request::Poke {
                device: "sim0".into(),
                bar: 0,
                offset: 0,
                data: vec![1, 2, 3, 4],
            },
        ),
        (
            "explain",
            Request::Explain(ExplainRequest {
                who: fuzzing::identities()[2].clone(),
                slice: SliceRequest {
                    device: "sim0".into(),
                    bar: 2,
                    offset: 0,
                    length: 0x1000,
                    access: Access::ReadWrite,
                    memattr: uc,
                },
            }),
        ),
        ("reload", Request::Reload),
        ("metrics", Request::Metrics),
    ];
    for (name, r) in &requests {
        let bytes = encoded(1, r.clone());
        write("decode", name, &bytes);
        write("decode_validate", name, &bytes);
    }
    let hello = encode_client(&ClientMessage::Hello(Hello {
        protocol_version: 1,
        client_name: "seed".into(),
    }))
    .unwrap();
    write("decode", "hello", &hello);
    let refused = encode_daemon(&DaemonMessage::Refused(ErrorReply::new(
        ErrorCode::LimitExceeded,
        "full",
    )))
    .unwrap();
    write("decode", "refused", &refused);
    write("config", "fixed.toml", fuzzing::CONFIG.as_bytes());
    for example in ["sim.toml", "vfio.toml"] {
        let path = root.join("../../systemd/examples").join(example);
        if let Ok(text) = std::fs::read(&path) {
            write("config", example, &text);
        }
    }
    write("config", "limits.toml", b"[limits]\nsessions = 100\nsessions_per_uid = 10\nleases = 1000\nleases_per_session = 20\nleases_per_uid = 50\nrequests_in_flight = 4\nevents_queued = 16\n");
    write("config", "bad-cgroup.toml", b"[[device]]\nname = \"a\"\nsim = { bars = [ { index = 0, size = \"4K\" } ] }\n[[grant]]\ndevice = \"a\"\nbar = 0\ncgroups = [\"/a/**/b\"]\n");
}
