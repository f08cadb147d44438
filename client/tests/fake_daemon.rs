//! The client library against a tiny in-test daemon that speaks the protocol
//! and hands out memfds: reply routing, fd passing, mapping with
//! slice-relative offsets, read-only slices, revocation events, release on
//! drop, and the protocol rules the client enforces (fds only on grants).

use barkeep_client::nonblocking::AsyncClient;
use barkeep_client::{
    Access, Client, Error, Event, LeaseId, MemAttrRequest, RevokeReason, RevokeTarget, SliceRequest,
};
use barkeep_protocol::{
    decode_client, encode_daemon, Capabilities, ClientMessage, DaemonMessage, ErrorCode,
    ErrorReply, Lease, MemAttr, PeerIdentity, Request, Response, Welcome,
};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_seqpacket::ancillary::AncillaryMessageWriter;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// How the fake daemon misbehaves, if at all.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Honest,
    /// Refuse every handshake.
    Refuse,
    /// Attach an fd to the `Status` reply.
    FdOnStatus,
    /// A daemon from before `ReleaseNoReply`: answers it `unknown-request`.
    NoQuietRelease,
}

struct FakeDaemon {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Requests received, in order.
    log: Arc<Mutex<Vec<Request>>>,
}

impl FakeDaemon {
    fn start(mode: Mode) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.sock");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (p, l) = (path.clone(), log.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut listener = UnixSeqpacketListener::bind(&p).unwrap();
                ready_tx.send(()).unwrap();
                while let Ok(sock) = listener.accept().await {
                    tokio::spawn(serve(sock, mode, l.clone()));
                }
            });
        });
        ready_rx.recv().unwrap();
        FakeDaemon {
            _dir: dir,
            path,
            log,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

fn memfd(len: u64) -> OwnedFd {
    let fd =
        nix::sys::memfd::memfd_create(c"fake-slice", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    fd
}

async fn send(sock: &UnixSeqpacket, msg: &DaemonMessage, fd: Option<&OwnedFd>) {
    let bytes = encode_daemon(msg).unwrap();
    let mut buf = [0u8; 64];
    let mut anc = AncillaryMessageWriter::new(&mut buf);
    if let Some(fd) = fd {
        anc.add_fds([fd.as_fd()]).unwrap();
    }
    sock.send_with_ancillary(&bytes, &mut anc).await.unwrap();
}

async fn serve(sock: UnixSeqpacket, mode: Mode, log: Arc<Mutex<Vec<Request>>>) {
    let mut buf = vec![0u8; 65536];
    let n = sock.recv(&mut buf).await.unwrap().bytes_read();
    let Ok(ClientMessage::Hello(_)) = decode_client(&buf[..n]) else {
        panic!("expected Hello");
    };
    if mode == Mode::Refuse {
        let r = ErrorReply::new(ErrorCode::UnsupportedVersion, "speak version 1");
        send(&sock, &DaemonMessage::Refused(r), None).await;
        return;
    }
    let welcome = Welcome {
        protocol_version: 1,
        daemon_version: "fake".into(),
        session_id: 7,
        page_size: 4096,
        capabilities: Capabilities {
            export: true,
            mmap: true,
            ..Default::default()
        },
        identity: PeerIdentity::default(),
        admin: true,
    };
    send(&sock, &DaemonMessage::Welcome(welcome), None).await;
    // Live slices: lease -> (BAR offset, memfd).
    let mut slices: HashMap<LeaseId, (u64, OwnedFd)> = HashMap::new();
    let mut next = 1u8;
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(i) if i.bytes_read() > 0 => i.bytes_read(),
            _ => return,
        };
        let Ok(ClientMessage::Request { id, request }) = decode_client(&buf[..n]) else {
            panic!("undecodable request");
        };
        log.lock().unwrap().push(request.clone());
        let mut fd = None;
        let result = match request {
            Request::Status if mode == Mode::FdOnStatus => {
                fd = Some(memfd(4096));
                Ok(Response::Released)
            }
            Request::Acquire(req) if req.offset % 4096 != 0 => Err(ErrorReply::new(
                ErrorCode::Unaligned,
                format!(
                    "offset {:#x} is not page aligned (page size 4096)",
                    req.offset
                ),
            )),
            Request::Acquire(req) => {
                let id = LeaseId([next; 16]);
                next += 1;
                let f = memfd(req.length);
                let lease = Lease {
                    id,
                    device: req.device,
                    bar: req.bar,
                    offset: req.offset,
                    length: req.length,
                    access: req.access,
                    memattr: MemAttr::Uncached,
                    buffer_name: "fake".into(),
                };
                // The client must get an fd of the right mode, like the kernel's.
                let flags = match req.access {
                    Access::ReadOnly => nix::fcntl::OFlag::O_RDONLY,
                    Access::ReadWrite => nix::fcntl::OFlag::O_RDWR,
                };
                let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
                let reopened =
                    nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()).unwrap();
                fd = Some(reopened);
                slices.insert(id, (req.offset, f));
                Ok(Response::Granted(
                    lease,
                    barkeep_protocol::ReclaimToken([1; 16]),
                ))
            }
            Request::Peek { offset, length, .. } => {
                // Reads the first slice containing the range (enough here).
                let hit = slices.values().find(|(o, f)| {
                    let size = nix::sys::stat::fstat(f).unwrap().st_size as u64;
                    offset >= *o && offset + length <= o + size
                });
                match hit {
                    Some((o, f)) => {
                        let mut out = vec![0u8; length as usize];
                        nix::sys::uio::pread(f, &mut out, (offset - o) as i64).unwrap();
                        Ok(Response::Bytes(out))
                    }
                    None => Ok(Response::Bytes(vec![0; length as usize])),
                }
            }
            Request::ReleaseNoReply { lease } if mode != Mode::NoQuietRelease => {
                // No reply: the event is the confirmation.
                if slices.remove(&lease).is_some() {
                    let ev = Event::Revoked {
                        lease,
                        reason: RevokeReason::Released,
                    };
                    send(&sock, &DaemonMessage::Event(ev), None).await;
                }
                continue;
            }
            Request::Release { lease } => match slices.remove(&lease) {
                Some(_) => Ok(Response::Released),
                None => Err(ErrorReply::new(ErrorCode::UnknownLease, "no such lease")),
            },
            Request::Revoke(RevokeTarget::Lease(lease)) => {
                slices.remove(&lease);
                let ev = Event::Revoked {
                    lease,
                    reason: RevokeReason::Admin,
                };
                send(&sock, &DaemonMessage::Event(ev), None).await;
                Ok(Response::Revoked { count: 1 })
            }
            _ => Err(ErrorReply::new(
                ErrorCode::UnknownRequest,
                "not in the fake",
            )),
        };
        send(&sock, &DaemonMessage::Reply { id, result }, fd.as_ref()).await;
    }
}

fn request(offset: u64, length: u64, access: Access) -> SliceRequest {
    SliceRequest {
        device: "sim0".into(),
        bar: 0,
        offset,
        length,
        access,
        memattr: MemAttrRequest::Uncached,
    }
}

#[test]
fn blocking_client_maps_slices_relative_to_the_slice_and_sees_revocation() {
    let d = FakeDaemon::start(Mode::Honest);
    let client = Client::connect(&d.path).unwrap();
    assert_eq!(client.welcome().session_id, 7);

    let slice = client
        .acquire(request(0x3000, 0x2000, Access::ReadWrite))
        .unwrap();
    assert_eq!(slice.lease().offset, 0x3000);
    let whole = slice.map().unwrap();
    assert_eq!(whole.len(), 0x2000);
    whole
        .write_u32(0x10, u32::from_ne_bytes([0xde, 0xad, 0xbe, 0xef]))
        .unwrap();
    // Slice offset 0x10 is BAR offset 0x3010.
    assert_eq!(
        client.peek("sim0", 0, 0x3010, 4).unwrap(),
        [0xde, 0xad, 0xbe, 0xef]
    );

    let second_page = slice.map_range(0x1000, 0x1000).unwrap();
    second_page.write_bytes(4, b"barkeep").unwrap();
    assert_eq!(client.peek("sim0", 0, 0x4004, 7).unwrap(), b"barkeep");
    let mut back = [0u8; 4];
    whole.read_bytes(0x10, &mut back).unwrap();
    assert_eq!(back, [0xde, 0xad, 0xbe, 0xef]);

    assert!(matches!(
        slice.map_range(0x800, 0x800),
        Err(Error::Unaligned { .. })
    ));
    assert!(matches!(
        slice.map_range(0x1000, 0x1001),
        Err(Error::OutOfRange { .. })
    ));

    // An error reply reaches its caller and the session goes on.
    match client.acquire(request(0x1800, 0x1000, Access::ReadWrite)) {
        Err(e @ Error::Daemon(_)) => {
            assert_eq!(e.code(), 14);
            assert_eq!(e.slug(), "unaligned");
            assert!(e.to_string().contains("0x1800"), "{e}");
        }
        other => panic!("expected an unaligned error, got {other:?}"),
    }

    let id = slice.lease().id;
    assert_eq!(client.revoke(RevokeTarget::Lease(id)).unwrap(), 1);
    // The event precedes the reply, so the flag is set by now.
    assert!(slice.is_revoked());
    assert_eq!(slice.revoked_reason(), Some(RevokeReason::Admin));
    assert!(matches!(
        whole.read_u32(0),
        Err(Error::Revoked {
            reason: RevokeReason::Admin,
            ..
        })
    ));
    assert!(matches!(slice.map(), Err(Error::Revoked { .. })));
    match client.next_event(Some(Duration::from_secs(5))).unwrap() {
        Some(Event::Revoked { lease, reason }) => {
            assert_eq!(lease, id);
            assert_eq!(reason, RevokeReason::Admin);
        }
        other => panic!("expected the revocation event, got {other:?}"),
    }
    assert!(client
        .next_event(Some(Duration::from_millis(10)))
        .unwrap()
        .is_none());
}

#[test]
fn read_only_slices_refuse_writes_in_the_api_and_in_the_kernel() {
    let d = FakeDaemon::start(Mode::Honest);
    let client = Client::connect(&d.path).unwrap();
    let slice = client
        .acquire(request(0, 0x1000, Access::ReadOnly))
        .unwrap();
    let map = slice.map().unwrap();
    assert_eq!(map.read_u64(0).unwrap(), 0);
    assert!(matches!(map.write_u8(0, 1), Err(Error::ReadOnly { .. })));
    // The fd itself is read-only: a writable shared mapping is refused.
    let err =
        barkeep_client::Mapping::from_fd(slice.as_fd(), 0, 0x1000, Access::ReadWrite).unwrap_err();
    assert!(err.to_string().contains("EACCES"), "{err}");
}

#[test]
fn dropping_a_slice_releases_it_and_detach_keeps_it() {
    let d = FakeDaemon::start(Mode::Honest);
    let client = Client::connect(&d.path).unwrap();
    let slice = client
        .acquire(request(0, 0x1000, Access::ReadWrite))
        .unwrap();
    let id = slice.lease().id;
    let map = slice.map().unwrap();
    drop(slice);
    // A mapping outliving its slice refuses accesses instead of faulting.
    assert!(matches!(
        map.read_u8(0),
        Err(Error::Revoked {
            reason: RevokeReason::Released,
            ..
        })
    ));
    let kept = client
        .acquire(request(0x1000, 0x1000, Access::ReadWrite))
        .unwrap();
    let kept_id = kept.lease().id;
    let (_fd, lease) = kept.detach();
    assert_eq!(lease.id, kept_id);
    // A round trip after the drops: the fake has seen everything sent before.
    client.peek("sim0", 0, 0, 1).unwrap();
    let released: Vec<LeaseId> = d
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            Request::ReleaseNoReply { lease } => Some(lease),
            _ => None,
        })
        .collect();
    assert_eq!(
        released,
        [id],
        "a dropped slice is released without a reply"
    );
    // The daemon's confirmation arrives as the Revoked event.
    let ev = client
        .next_event(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        ev,
        Some(Event::Revoked {
            lease: id,
            reason: RevokeReason::Released
        })
    );
}

#[test]
fn an_older_daemon_gets_a_plain_release_after_refusing_the_quiet_one() {
    let d = FakeDaemon::start(Mode::NoQuietRelease);
    let client = Client::connect(&d.path).unwrap();
    let first = client
        .acquire(request(0, 0x1000, Access::ReadWrite))
        .unwrap();
    let first_id = first.lease().id;
    drop(first);
    // The refusal arrives and the client sends the plain Release; wait
    // for it with round trips (each one flushes what was sent before).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let plain = |d: &FakeDaemon| {
        d.requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::Release { lease } => Some(lease),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    while plain(&d).is_empty() && std::time::Instant::now() < deadline {
        client.peek("sim0", 0, 0, 1).unwrap();
    }
    assert_eq!(plain(&d), [first_id]);
    // From then on the client releases the plain way at once.
    let second = client
        .acquire(request(0x1000, 0x1000, Access::ReadWrite))
        .unwrap();
    let second_id = second.lease().id;
    drop(second);
    client.peek("sim0", 0, 0, 1).unwrap();
    assert_eq!(plain(&d), [first_id, second_id]);
    let quiet = d
        .requests()
        .into_iter()
        .filter(|r| matches!(r, Request::ReleaseNoReply { .. }))
        .count();
    assert_eq!(quiet, 1, "only the first release tried ReleaseNoReply");
}

#[test]
fn an_fd_on_a_reply_that_is_not_a_grant_is_a_protocol_violation() {
    let d = FakeDaemon::start(Mode::FdOnStatus);
    let client = Client::connect(&d.path).unwrap();
    let err = client.status().unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
}

#[test]
fn a_refused_handshake_is_a_typed_error() {
    let d = FakeDaemon::start(Mode::Refuse);
    match Client::connect(&d.path) {
        Err(Error::Refused(r)) => assert_eq!(r.code, ErrorCode::UnsupportedVersion),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn connecting_to_nothing_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    let err = Client::connect(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("absent.sock") && msg.contains("BARKEEP_SOCKET"),
        "{msg}"
    );
}

#[tokio::test]
async fn async_client_acquires_maps_and_hears_revocation() {
    let d = FakeDaemon::start(Mode::Honest);
    let client = AsyncClient::connect(&d.path).await.unwrap();
    let slice = client
        .acquire(request(0x2000, 0x1000, Access::ReadWrite))
        .await
        .unwrap();
    let map = slice.map().unwrap();
    map.write_u16(2, 0xabcd).unwrap();
    let bytes = client.peek("sim0", 0, 0x2002, 2).await.unwrap();
    assert_eq!(bytes, 0xabcd_u16.to_ne_bytes());
    client
        .revoke(RevokeTarget::Lease(slice.lease().id))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), client.next_event())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        ev,
        Event::Revoked {
            reason: RevokeReason::Admin,
            ..
        }
    ));
    assert!(slice.is_revoked());
    assert!(matches!(map.write_u16(2, 1), Err(Error::Revoked { .. })));
}
