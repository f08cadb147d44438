//! Round trips of every message, malformed input of every kind, and a
//! property test that decoding arbitrary bytes never panics.

use super::*;
use proptest::prelude::*;

fn lease() -> Lease {
    Lease {
        id: LeaseId([0xab; 16]),
        device: "gpu0".into(),
        bar: 2,
        offset: 0x10000,
        length: 0x1000,
        access: Access::ReadWrite,
        memattr: MemAttr::WriteCombining,
        buffer_name: "bk:gpu0:b2:10000+1000".into(),
    }
}

fn identity() -> PeerIdentity {
    PeerIdentity {
        uid: 1000,
        gid: 1000,
        pid: 4242,
        groups: vec![27, 1000],
        cgroup: Some("/system.slice/a.service".into()),
        label: None,
    }
}

fn caps() -> Capabilities {
    Capabilities {
        export: true,
        mmap: true,
        revoke: false,
        write_combining: true,
        device_revoke: true,
    }
}

fn bar() -> BarInfo {
    BarInfo {
        index: 0,
        size: 0x4000,
        readable: true,
        writable: true,
        mmap: true,
        mappable: vec![Range::new(0, 0x4000)],
        reserved: vec![Reserved {
            range: Range::new(0x2000, 0x1000),
            what: "MSI-X table".into(),
        }],
    }
}

fn every_client_message() -> Vec<ClientMessage> {
    let requests = vec![
        Request::Status,
        Request::ListDevices,
        Request::Acquire(SliceRequest {
            device: "gpu0".into(),
            bar: 0,
            offset: 0x2000,
            length: u64::MAX,
            access: Access::ReadOnly,
            memattr: MemAttrRequest::PreferWriteCombining,
        }),
        Request::Release {
            lease: LeaseId([7; 16]),
        },
        Request::ReleaseNoReply {
            lease: LeaseId([8; 16]),
        },
        Request::ListLeases { all: true },
        Request::ListLeasesPage {
            all: true,
            after: u64::MAX,
        },
        Request::Revoke(RevokeTarget::Lease(LeaseId([1; 16]))),
        Request::Revoke(RevokeTarget::Device("gpu0".into())),
        Request::Peek {
            device: "edu".into(),
            bar: 0,
            offset: 4,
            length: 4,
        },
        Request::Poke {
            device: "edu".into(),
            bar: 0,
            offset: 4,
            data: vec![0xde, 0xad, 0xbe, 0xef],
        },
        Request::Revoke(RevokeTarget::Session(3)),
        Request::Revoke(RevokeTarget::Uid(1000)),
        Request::Revoke(RevokeTarget::Cgroup("/kubepods.slice/".into())),
        Request::Explain(ExplainRequest {
            who: identity(),
            slice: SliceRequest {
                device: "gpu0".into(),
                bar: 2,
                offset: 0,
                length: 4096,
                access: Access::ReadWrite,
                memattr: MemAttrRequest::WriteCombining,
            },
        }),
        Request::Reload,
        Request::Reclaim {
            lease: LeaseId([3; 16]),
            token: ReclaimToken([4; 16]),
        },
        Request::Metrics,
    ];
    let mut all = vec![ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "test".into(),
    })];
    all.extend(
        requests
            .into_iter()
            .enumerate()
            .map(|(i, request)| ClientMessage::Request {
                id: i as u64 * 1_000_003,
                request,
            }),
    );
    all
}

fn every_daemon_message() -> Vec<DaemonMessage> {
    let responses = vec![
        Response::Status(StatusInfo {
            daemon_version: "0.1.0".into(),
            protocol_version: 1,
            uptime_ms: 5,
            sessions: 2,
            leases: 3,
            page_size: 4096,
            capabilities: caps(),
            devices: vec![DeviceStatus {
                name: "gpu0".into(),
                backend: BackendKind::Vfio,
                capabilities: caps(),
                leases: 1,
                problem: None,
                notes: vec!["mmap: supported".into()],
            }],
        }),
        Response::Devices(vec![DeviceInfo {
            name: "gpu0".into(),
            backend: BackendKind::Sim,
            pci: Some("0000:00:04.0".into()),
            ownership: "cdev".into(),
            bars: vec![bar()],
            capabilities: caps(),
            problem: Some("not bound to vfio-pci".into()),
        }]),
        Response::Granted(lease(), ReclaimToken([7; 16])),
        Response::Released,
        Response::Leases(vec![LeaseInfo {
            lease: lease(),
            session: 9,
            client_name: "x".into(),
            holder: identity(),
            age_ms: 1234,
            state: LeaseState::AwaitingReclaim,
        }]),
        Response::Revoked { count: 3 },
        Response::Bytes(vec![1, 2, 3]),
        Response::Poked,
        Response::Decision(Decision {
            allowed: false,
            code: Some(ErrorCode::OutsideWindow),
            rule: "grant #1".into(),
            reason: "outside".into(),
            memattr: None,
        }),
        Response::Reloaded {
            grants: 4,
            revoked: 1,
        },
        Response::Reclaimed(lease()),
        Response::Metrics("barkeep_sessions 1\n".into()),
        Response::LeasesPage {
            leases: vec![],
            next: Some(7),
        },
        Response::LeasesPage {
            leases: vec![],
            next: None,
        },
    ];
    let mut all = vec![
        DaemonMessage::Refused(ErrorReply::new(ErrorCode::UnsupportedVersion, "v9")),
        DaemonMessage::Welcome(Welcome {
            protocol_version: 1,
            daemon_version: "0.1.0".into(),
            session_id: 77,
            page_size: 4096,
            capabilities: caps(),
            identity: identity(),
            admin: true,
        }),
        DaemonMessage::Reply {
            id: 3,
            result: Err(ErrorReply::new(ErrorCode::Unaligned, "offset 0x1800 ...")),
        },
        DaemonMessage::Reply {
            id: 4,
            result: Err(ErrorReply::new(ErrorCode::Other(9999), "from the future")),
        },
    ];
    for reason in [
        RevokeReason::Released,
        RevokeReason::Disconnected,
        RevokeReason::Admin,
        RevokeReason::Policy,
        RevokeReason::Device,
        RevokeReason::Shutdown,
        RevokeReason::Unclaimed,
    ] {
        all.push(DaemonMessage::Event(Event::Revoked {
            lease: LeaseId([9; 16]),
            reason,
        }));
    }
    all.extend(
        responses
            .into_iter()
            .enumerate()
            .map(|(i, r)| DaemonMessage::Reply {
                id: u64::MAX - i as u64,
                result: Ok(r),
            }),
    );
    all
}

#[test]
fn every_client_message_round_trips() {
    for msg in every_client_message() {
        let bytes = encode_client(&msg).unwrap();
        assert_eq!(decode_client(&bytes).unwrap(), msg);
    }
}

#[test]
fn every_daemon_message_round_trips() {
    for msg in every_daemon_message() {
        let bytes = encode_daemon(&msg).unwrap();
        assert_eq!(decode_daemon(&bytes).unwrap(), msg);
    }
}

#[test]
fn every_prefix_of_every_message_is_a_decode_error() {
    // A truncated datagram is never mistaken for a shorter valid message.
    for msg in every_client_message() {
        let bytes = encode_client(&msg).unwrap();
        for cut in 0..bytes.len() {
            let err = decode_client(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, DecodeError::Empty | DecodeError::Truncated),
                "{msg:?} cut at {cut}: {err:?}"
            );
        }
    }
    for msg in every_daemon_message() {
        let bytes = encode_daemon(&msg).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode_daemon(&bytes[..cut]).is_err(),
                "{msg:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = encode_client(&ClientMessage::Request {
        id: 1,
        request: Request::Status,
    })
    .unwrap();
    bytes.extend_from_slice(&[0, 0]);
    assert_eq!(
        decode_client(&bytes),
        Err(DecodeError::TrailingBytes { extra: 2 })
    );
}

#[test]
fn empty_and_oversized_datagrams_are_typed_errors() {
    assert_eq!(decode_client(&[]), Err(DecodeError::Empty));
    let big = vec![0u8; MAX_DATAGRAM + 1];
    let err = decode_client(&big).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Oversized {
            len: MAX_DATAGRAM + 1
        }
    );
    assert_eq!(err.code(), ErrorCode::Oversized);
}

#[test]
fn unknown_variants_are_typed_errors_with_the_request_id() {
    // Message tag 1 (Request), id 42, request variant 200 (unknown).
    let bytes = [1u8, 42, 200, 1];
    let err = decode_client(&bytes).unwrap_err();
    assert_eq!(err, DecodeError::UnknownVariant);
    assert_eq!(err.code(), ErrorCode::UnknownRequest);
    assert_eq!(request_id_hint(&bytes), Some(42));
    // Unknown top-level message tag.
    assert_eq!(decode_client(&[9, 0]), Err(DecodeError::UnknownVariant));
    assert_eq!(request_id_hint(&[9, 0]), None);
}

#[test]
fn bad_utf8_and_bad_bool_are_malformed() {
    // Hello with a client name that is not UTF-8.
    let bytes = [0u8, 1, 2, 0xff, 0xfe];
    assert!(matches!(
        decode_client(&bytes),
        Err(DecodeError::Malformed(_))
    ));
    // ListLeases { all: 7 }: 7 is not a bool.
    let bytes = [1u8, 5, 4, 7];
    assert!(matches!(
        decode_client(&bytes),
        Err(DecodeError::Malformed(_))
    ));
    // A varint that never ends.
    let bytes = [
        1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(decode_client(&bytes).is_err());
}

#[test]
fn any_version_hello_is_readable() {
    // A future client's Hello with fields this version does not know still
    // tells the daemon its version.
    let mut bytes = encode_client(&ClientMessage::Hello(Hello {
        protocol_version: 7,
        client_name: "future".into(),
    }))
    .unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_eq!(decode_hello_prefix(&bytes), Some(7));
    assert!(decode_client(&bytes).is_err());
    let req = encode_client(&ClientMessage::Request {
        id: 5,
        request: Request::Status,
    })
    .unwrap();
    assert_eq!(decode_hello_prefix(&req), None);
}

#[test]
fn refused_is_variant_zero_so_old_clients_can_read_it() {
    let bytes = encode_daemon(&DaemonMessage::Refused(ErrorReply::new(
        ErrorCode::UnsupportedVersion,
        "x",
    )))
    .unwrap();
    assert_eq!(bytes[0], 0);
    assert_eq!(bytes[1], 3, "error code 3 on the wire");
}

#[test]
fn error_codes_are_stable_and_unique() {
    let mut seen = std::collections::HashSet::new();
    for code in ErrorCode::ALL {
        assert!(seen.insert(code.number()), "duplicate {code:?}");
        assert_eq!(ErrorCode::from(code.number()), *code);
        assert_ne!(code.slug(), "unknown");
    }
    // Spot-check the published numbers (PROTOCOL.md).
    assert_eq!(ErrorCode::Malformed.number(), 1);
    assert_eq!(ErrorCode::Unaligned.number(), 14);
    assert_eq!(ErrorCode::Denied.number(), 20);
    assert_eq!(ErrorCode::RangeBusy.number(), 43);
    assert_eq!(ErrorCode::from(4242), ErrorCode::Other(4242));
}

#[test]
fn encoding_refuses_messages_over_the_limit() {
    let msg = DaemonMessage::Reply {
        id: 1,
        result: Ok(Response::Bytes(vec![0; MAX_DATAGRAM])),
    };
    assert!(matches!(
        encode_daemon(&msg),
        Err(EncodeError::TooLarge { .. })
    ));
    // The largest peek fits.
    let msg = DaemonMessage::Reply {
        id: u64::MAX,
        result: Ok(Response::Bytes(vec![0xff; MAX_PEEK as usize])),
    };
    assert!(encode_daemon(&msg).is_ok());
}

#[test]
fn lease_ids_print_and_parse() {
    let id = LeaseId([
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 0xff,
    ]);
    let s = id.to_string();
    assert_eq!(s, "0123456789abcdef00010203040506ff");
    assert_eq!(s.parse::<LeaseId>().unwrap(), id);
    assert!("0123".parse::<LeaseId>().is_err());
    assert!("zz23456789abcdef00010203040506ff"
        .parse::<LeaseId>()
        .is_err());
}

#[test]
fn ranges_use_checked_arithmetic() {
    let bar = Range::new(0, 0x4000);
    assert!(bar.contains(&Range::new(0x3000, 0x1000)));
    assert!(!bar.contains(&Range::new(0x3000, 0x2000)));
    assert!(!bar.contains(&Range::new(u64::MAX, 2)));
    assert!(Range::new(0x1000, 0x1000).overlaps(&Range::new(0x1fff, 1)));
    assert!(!Range::new(0x1000, 0x1000).overlaps(&Range::new(0x2000, 1)));
    assert_eq!(Range::new(u64::MAX, 1).end(), None);
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_client(&bytes);
        let _ = decode_daemon(&bytes);
        let _ = decode_hello_prefix(&bytes);
        let _ = request_id_hint(&bytes);
    }

    #[test]
    fn flipping_bytes_of_valid_messages_never_panics(
        which in 0usize..10,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let msgs = every_client_message();
        let mut bytes = encode_client(&msgs[which % msgs.len()]).unwrap();
        for (pos, val) in flips {
            let n = bytes.len();
            bytes[pos % n] = val;
        }
        if let Ok(msg) = decode_client(&bytes) {
            // Whatever decodes must encode again to something decodable.
            let again = encode_client(&msg).unwrap();
            prop_assert_eq!(decode_client(&again).unwrap(), msg);
        }
    }

    #[test]
    fn slice_requests_round_trip(device in "[a-z0-9]{1,64}", bar in any::<u32>(), offset in any::<u64>(), length in any::<u64>(), ro in any::<bool>()) {
        let msg = ClientMessage::Request { id: offset ^ length, request: Request::Acquire(SliceRequest {
            device, bar, offset, length,
            access: if ro { Access::ReadOnly } else { Access::ReadWrite },
            memattr: MemAttrRequest::Uncached,
        })};
        let bytes = encode_client(&msg).unwrap();
        prop_assert_eq!(decode_client(&bytes).unwrap(), msg);
    }
}

#[test]
fn variant_counts_match_the_enums() {
    // codec.rs keeps the number of variants to recognise newer peers; a new
    // variant must bump it. The last variant of each must decode, one past
    // it must be "unknown".
    let last_req = encode_client(&ClientMessage::Request {
        id: 1,
        request: Request::ListLeasesPage {
            all: false,
            after: 0,
        },
    })
    .unwrap();
    assert_eq!(last_req[2], 13);
    assert!(decode_client(&last_req).is_ok());
    let mut next = last_req[..3].to_vec();
    next[2] = 14;
    assert_eq!(decode_client(&next), Err(DecodeError::UnknownVariant));
    let ev = encode_daemon(&DaemonMessage::Event(Event::Revoked {
        lease: LeaseId([0; 16]),
        reason: RevokeReason::Admin,
    }))
    .unwrap();
    assert_eq!(ev[0], 3);
    assert_eq!(decode_daemon(&[4, 0]), Err(DecodeError::UnknownVariant));
}

#[test]
#[ignore]
fn print_golden() {
    // Prints the golden table below, to review and paste after a deliberate
    // wire change.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let short = |d: String| d.split(['(', ' ', '{']).next().unwrap().to_string();
    for m in golden_client_messages() {
        let name = match &m {
            ClientMessage::Hello(_) => "hello".to_string(),
            ClientMessage::Request { request, .. } => format!("request {}", request.name()),
        };
        println!(
            "    (\"{name}\", \"{}\"),",
            hex(&encode_client(&m).unwrap())
        );
    }
    for m in golden_daemon_messages() {
        let name = match &m {
            DaemonMessage::Reply { result: Ok(r), .. } => {
                format!("reply {}", short(format!("{r:?}")))
            }
            DaemonMessage::Reply { result: Err(e), .. } => format!("reply error {}", e.code.slug()),
            DaemonMessage::Event(Event::Revoked { reason, .. }) => {
                format!("event revoked {reason}")
            }
            other => short(format!("{other:?}")).to_lowercase(),
        };
        println!(
            "    (\"{name}\", \"{}\"),",
            hex(&encode_daemon(&m).unwrap())
        );
    }
}

/// Every message of [`every_client_message`] with request id 7, so that a
/// message's golden bytes do not depend on its place in the list.
fn golden_client_messages() -> Vec<ClientMessage> {
    every_client_message()
        .into_iter()
        .map(|m| match m {
            ClientMessage::Request { request, .. } => ClientMessage::Request { id: 7, request },
            hello => hello,
        })
        .collect()
}

/// Every message of [`every_daemon_message`] with reply id 7.
fn golden_daemon_messages() -> Vec<DaemonMessage> {
    every_daemon_message()
        .into_iter()
        .map(|m| match m {
            DaemonMessage::Reply { result, .. } => DaemonMessage::Reply { id: 7, result },
            other => other,
        })
        .collect()
}

/// The encoding of every message of [`golden_client_messages`], in order.
/// A change here is a wire-format change: old peers would misread the new
/// bytes (reordering `Request`'s variants, say, changes their tags).
const GOLDEN_CLIENT: &[(&str, &str)] = &[
    ("hello", "00010474657374"),
    ("request status", "010700"),
    ("request list-devices", "010701"),
    ("request acquire", "0107020467707530008040ffffffffffffffffff010002"),
    ("request release", "01070307070707070707070707070707070707"),
    ("request release-no-reply", "01070c08080808080808080808080808080808"),
    ("request list-leases", "01070401"),
    ("request list-leases-page", "01070d01ffffffffffffffffff01"),
    ("request revoke", "0107050001010101010101010101010101010101"),
    ("request revoke", "010705010467707530"),
    ("request peek", "01070603656475000404"),
    ("request poke", "01070703656475000404deadbeef"),
    ("request revoke", "0107050203"),
    ("request revoke", "01070503e807"),
    ("request revoke", "01070504102f6b756265706f64732e736c6963652f"),
    ("request explain", "010708e807e807a442021be80701172f73797374656d2e736c6963652f612e73657276696365000467707530020080200101"),
    ("request reload", "010709"),
    ("request reclaim", "01070a0303030303030303030303030303030304040404040404040404040404040404"),
    ("request metrics", "01070b"),
];

/// The encoding of every message of [`golden_daemon_messages`], in order.
const GOLDEN_DAEMON: &[(&str, &str)] = &[
    ("refused", "0003027639"),
    ("welcome", "010105302e312e304d80200101000101e807e807a442021be80701172f73797374656d2e736c6963652f612e736572766963650001"),
    ("reply error unaligned", "0207010e116f666673657420307831383030202e2e2e"),
    ("reply error unknown", "0207018f4e0f66726f6d2074686520667574757265"),
    ("event revoked released", "03000909090909090909090909090909090900"),
    ("event revoked disconnected", "03000909090909090909090909090909090901"),
    ("event revoked admin", "03000909090909090909090909090909090902"),
    ("event revoked policy", "03000909090909090909090909090909090903"),
    ("event revoked device", "03000909090909090909090909090909090904"),
    ("event revoked shutdown", "03000909090909090909090909090909090905"),
    ("event revoked unclaimed", "03000909090909090909090909090909090906"),
    ("reply Status", "0207000005302e312e3001050203802001010001010104677075300101010001010100010f6d6d61703a20737570706f72746564"),
    ("reply Devices", "0207000101046770753000010c303030303a30303a30342e3004636465760100808001010101010080800101804080200b4d53492d58207461626c65010100010101156e6f7420626f756e6420746f207666696f2d706369"),
    ("reply Granted", "02070002abababababababababababababababab0467707530028080048020010115626b3a677075303a62323a31303030302b3130303007070707070707070707070707070707"),
    ("reply Released", "02070003"),
    ("reply Leases", "0207000401abababababababababababababababab0467707530028080048020010115626b3a677075303a62323a31303030302b31303030090178e807e807a442021be80701172f73797374656d2e736c6963652f612e7365727669636500d20903"),
    ("reply Revoked", "0207000503"),
    ("reply Bytes", "0207000603010203"),
    ("reply Poked", "02070007"),
    ("reply Decision", "02070008000115086772616e74202331076f75747369646500"),
    ("reply Reloaded", "020700090401"),
    ("reply Reclaimed", "0207000aabababababababababababababababab0467707530028080048020010115626b3a677075303a62323a31303030302b31303030"),
    ("reply Metrics", "0207000b136261726b6565705f73657373696f6e7320310a"),
    ("reply LeasesPage", "0207000c000107"),
    ("reply LeasesPage", "0207000c0000"),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_client_message_encodes_to_its_golden_bytes() {
    let all = golden_client_messages();
    assert_eq!(
        all.len(),
        GOLDEN_CLIENT.len(),
        "one golden encoding per message"
    );
    for (m, (name, golden)) in all.iter().zip(GOLDEN_CLIENT) {
        assert_eq!(&hex(&encode_client(m).unwrap()), golden, "{name}: {m:?}");
        assert_eq!(&decode_client(&h2b(golden)).unwrap(), m, "{name}");
    }
}

#[test]
fn every_daemon_message_encodes_to_its_golden_bytes() {
    let all = golden_daemon_messages();
    assert_eq!(
        all.len(),
        GOLDEN_DAEMON.len(),
        "one golden encoding per message"
    );
    for (m, (name, golden)) in all.iter().zip(GOLDEN_DAEMON) {
        assert_eq!(&hex(&encode_daemon(m).unwrap()), golden, "{name}: {m:?}");
        assert_eq!(&decode_daemon(&h2b(golden)).unwrap(), m, "{name}");
    }
}

fn h2b(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The index of a response variant (an exhaustive match: a new variant
/// must be added here, and then to the golden messages).
fn response_variant(r: &Response) -> usize {
    match r {
        Response::Status(_) => 0,
        Response::Devices(_) => 1,
        Response::Granted(..) => 2,
        Response::Released => 3,
        Response::Leases(_) => 4,
        Response::Revoked { .. } => 5,
        Response::Bytes(_) => 6,
        Response::Poked => 7,
        Response::Decision(_) => 8,
        Response::Reloaded { .. } => 9,
        Response::Reclaimed(_) => 10,
        Response::Metrics(_) => 11,
        Response::LeasesPage { .. } => 12,
    }
}
const RESPONSE_VARIANTS: usize = 13;

#[test]
fn the_golden_messages_cover_every_request_response_and_event() {
    let kinds: std::collections::BTreeSet<u32> = every_client_message()
        .iter()
        .filter_map(|m| match m {
            ClientMessage::Request { request, .. } => Some(request.kind().wire_index()),
            ClientMessage::Hello(_) => None,
        })
        .collect();
    assert_eq!(kinds.len(), RequestKind::ALL.len(), "every request kind");
    let daemon = every_daemon_message();
    let responses: std::collections::BTreeSet<usize> = daemon
        .iter()
        .filter_map(|m| match m {
            DaemonMessage::Reply { result: Ok(r), .. } => Some(response_variant(r)),
            _ => None,
        })
        .collect();
    assert_eq!(responses.len(), RESPONSE_VARIANTS, "every response");
    let reasons = daemon
        .iter()
        .filter(|m| matches!(m, DaemonMessage::Event(Event::Revoked { .. })))
        .count();
    assert_eq!(reasons, 7, "an event for every revoke reason");
}

#[test]
fn each_request_is_tagged_with_its_kinds_wire_index() {
    // `Request`'s variant order must be the kinds table's: the tag after
    // the message tag (1) and the request id (0: one byte) is the index.
    for m in every_client_message() {
        if let ClientMessage::Request { request, .. } = m {
            let kind = request.kind();
            let bytes = encode_client(&ClientMessage::Request { id: 0, request }).unwrap();
            assert_eq!(bytes[..2], [1, 0]);
            assert_eq!(u32::from(bytes[2]), kind.wire_index(), "{}", kind.name());
        }
    }
    for (i, kind) in RequestKind::ALL.iter().enumerate() {
        assert_eq!(kind.wire_index() as usize, i);
    }
}
