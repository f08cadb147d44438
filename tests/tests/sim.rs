//! End to end against the real `barkeepd` binary with a simulated device:
//! what a client relies on, through the public client library and raw
//! sockets.

use barkeep_client::{
    Access, Client, Error, ErrorCode, MemAttrRequest, RevokeReason, RevokeTarget, SliceRequest,
};
use barkeep_tests::{needs_root, TestDaemon, SIM_DEVICE};
use nix::sys::mman::{mmap, MapFlags, ProtFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// The user running the tests is granted and admin; uid 65534 exists
/// nowhere in the policy.
fn policy() -> String {
    format!(
        r#"{SIM_DEVICE}
[[grant]]
device = "sim0"
bar = 0
windows = ["0x10000..0x40000"]
access = "rw"
wc = true
uids = [{me}]

[[grant]]
device = "sim0"
bar = 2
access = "ro"
uids = [{me}]

[admin]
uids = [{me}]
"#,
        me = barkeep_tests::me()
    )
}

fn req(device: &str, bar: u32, offset: u64, length: u64, access: Access) -> SliceRequest {
    SliceRequest {
        device: device.into(),
        bar,
        offset,
        length,
        access,
        memattr: MemAttrRequest::Uncached,
    }
}

fn daemon_code(err: &Error) -> ErrorCode {
    err.daemon_code()
        .unwrap_or_else(|| panic!("expected a daemon error, got {err:?}"))
}

#[test]
fn slice_maps_at_its_own_offset_zero_and_peek_sees_the_writes() {
    let d = TestDaemon::start(&policy());
    let client = Client::connect(d.socket()).unwrap();
    let slice = client
        .acquire(req("sim0", 0, 0x20000, 4 * PAGE, Access::ReadWrite))
        .unwrap();
    assert_eq!(slice.lease().offset, 0x20000);
    assert_eq!(slice.lease().length, 4 * PAGE);
    assert_eq!(slice.lease().buffer_name, "bk:sim0:b0:20000+4000");

    // The buffer is exactly the slice: its size is the slice length.
    let st = nix::sys::stat::fstat(slice.as_fd()).unwrap();
    assert_eq!(st.st_size as u64, 4 * PAGE);

    let whole = slice.map().unwrap();
    assert_eq!(whole.len(), 4 * PAGE);
    whole.write_u32(0, 0x1122_3344).unwrap();
    whole.write_bytes(0x10, b"barkeep").unwrap();

    // A mapping from a page offset inside the slice aliases the same bytes.
    let tail = slice.map_range(2 * PAGE, 2 * PAGE).unwrap();
    tail.write_u64(8, 0xdead_beef_cafe_f00d).unwrap();
    assert_eq!(whole.read_u64(2 * PAGE + 8).unwrap(), 0xdead_beef_cafe_f00d);

    // peek goes through the backend: slice byte k is BAR byte 0x20000 + k.
    let peeked = client.peek("sim0", 0, 0x20000, 4).unwrap();
    assert_eq!(peeked, 0x1122_3344u32.to_ne_bytes());
    let peeked = client.peek("sim0", 0, 0x20010, 7).unwrap();
    assert_eq!(&peeked, b"barkeep");
    let peeked = client.peek("sim0", 0, 0x20000 + 2 * PAGE + 8, 8).unwrap();
    assert_eq!(peeked, 0xdead_beef_cafe_f00du64.to_ne_bytes());
    // ... and nothing leaked before the slice.
    assert_eq!(client.peek("sim0", 0, 0x1f000, 16).unwrap(), vec![0; 16]);

    // poke reaches a live slice.
    client.poke("sim0", 0, 0x20020, &[0xab, 0xcd]).unwrap();
    assert_eq!(
        whole.read_u16(0x20).unwrap(),
        u16::from_ne_bytes([0xab, 0xcd])
    );

    // Mapping past the slice is refused, whatever the offset.
    for (off, len) in [
        (0, 5 * PAGE),
        (4 * PAGE, PAGE),
        (3 * PAGE, 2 * PAGE),
        (!(PAGE - 1), PAGE),
    ] {
        let err = slice.map_range(off, len).unwrap_err();
        assert!(
            matches!(err, Error::OutOfRange { .. }),
            "{off:#x}+{len:#x}: {err:?}"
        );
    }
    // Unaligned mapping offsets are refused too.
    assert!(matches!(
        slice.map_range(0x800, PAGE).unwrap_err(),
        Error::Unaligned { .. }
    ));
    // Accesses past the mapping are refused, not performed.
    assert!(matches!(
        tail.read_u32(2 * PAGE).unwrap_err(),
        Error::OutOfRange { .. }
    ));
}

#[test]
fn read_only_slice_cannot_be_written() {
    let d = TestDaemon::start(&policy());
    let client = Client::connect(d.socket()).unwrap();
    client.poke("sim0", 2, 0x1000, &[1, 2, 3, 4]).unwrap();
    let slice = client
        .acquire(req("sim0", 2, 0x1000, PAGE, Access::ReadOnly))
        .unwrap();
    let map = slice.map().unwrap();
    assert_eq!(map.read_u32(0).unwrap(), u32::from_ne_bytes([1, 2, 3, 4]));
    assert!(matches!(
        map.write_u32(0, 7).unwrap_err(),
        Error::ReadOnly { .. }
    ));
    // The kernel refuses a writable shared mapping of the fd itself.
    // SAFETY: a fresh mapping of a file we own; unmapped when dropped below.
    let res = unsafe {
        mmap(
            None,
            NonZeroUsize::new(PAGE as usize).unwrap(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            slice.as_fd(),
            0,
        )
    };
    assert_eq!(res.unwrap_err(), nix::errno::Errno::EACCES);
    // rw on a BAR whose grant is ro is refused by policy.
    let err = client
        .acquire(req("sim0", 2, 0x2000, PAGE, Access::ReadWrite))
        .unwrap_err();
    assert_eq!(daemon_code(&err), ErrorCode::AccessDenied);
}

#[test]
fn each_invalid_request_gets_its_own_error_and_the_session_goes_on() {
    let d = TestDaemon::start(&policy());
    let client = Client::connect(d.socket()).unwrap();
    let cases: Vec<(SliceRequest, ErrorCode, &str)> = vec![
        (
            req("sim0", 0, 0x10800, PAGE, Access::ReadWrite),
            ErrorCode::Unaligned,
            "0x10800",
        ),
        (
            req("sim0", 0, 0x10000, 0x800, Access::ReadWrite),
            ErrorCode::Unaligned,
            "0x800",
        ),
        (
            req("sim0", 0, 0x10000, 0, Access::ReadWrite),
            ErrorCode::ZeroLength,
            "",
        ),
        (
            req("sim0", 0, u64::MAX - PAGE + 1, PAGE, Access::ReadWrite),
            ErrorCode::Overflow,
            "",
        ),
        (
            req("sim0", 0, 0xff000, 2 * PAGE, Access::ReadWrite),
            ErrorCode::OutOfBounds,
            "",
        ),
        (
            req("sim0", 6, 0, PAGE, Access::ReadWrite),
            ErrorCode::BadBar,
            "6",
        ),
        (
            req("sim0", 1, 0, PAGE, Access::ReadWrite),
            ErrorCode::NoSuchBar,
            "",
        ),
        (
            req("nosuch", 0, 0, PAGE, Access::ReadWrite),
            ErrorCode::UnknownDevice,
            "nosuch",
        ),
        // Granted window is 0x10000..0x40000: last page in, first page out.
        (
            req("sim0", 0, 0x40000, PAGE, Access::ReadWrite),
            ErrorCode::OutsideWindow,
            "",
        ),
        (
            req("sim0", 0, 0xf000, 2 * PAGE, Access::ReadWrite),
            ErrorCode::OutsideWindow,
            "",
        ),
        // BAR2's mappable area is 0x0..0x8000.
        (
            req("sim0", 2, 0x7000, 2 * PAGE, Access::ReadOnly),
            ErrorCode::NotMappable,
            "",
        ),
    ];
    for (request, code, mention) in cases {
        let err = client.acquire(request.clone()).unwrap_err();
        assert_eq!(daemon_code(&err), code, "{request:?}: {err}");
        assert!(
            err.to_string().contains(mention),
            "{err} should mention {mention}"
        );
    }
    // Same session, valid request at the edges of what is allowed.
    let last = client
        .acquire(req("sim0", 0, 0x3f000, PAGE, Access::ReadWrite))
        .unwrap();
    let first = client
        .acquire(req("sim0", 0, 0x10000, PAGE, Access::ReadWrite))
        .unwrap();
    let area_end = client
        .acquire(req("sim0", 2, 0x7000, PAGE, Access::ReadOnly))
        .unwrap();
    assert_eq!(client.leases(false).unwrap().len(), 3);
    drop((last, first, area_end));
}

#[test]
fn unaligned_error_says_what_to_do() {
    let d = TestDaemon::start(&policy());
    let client = Client::connect(d.socket()).unwrap();
    let err = client
        .acquire(req("sim0", 0, 0x11800, PAGE, Access::ReadWrite))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("0x11800") && msg.contains("page"), "{msg}");
}

#[test]
fn unauthorised_uid_is_denied_and_gets_no_fd() {
    if !needs_root("unauthorised_uid_is_denied_and_gets_no_fd", "setuid(65534)") {
        return;
    }
    let d = TestDaemon::start(&policy());
    let sock = d.socket().to_path_buf();
    // The child runs the library as uid 65534 and reports through its exit code.
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_denied_probe",
        "--nocapture",
        "--include-ignored",
    ])
    .env("BK_CHILD_SOCKET", &sock);
    // SAFETY: setuid/setgid are async-signal-safe and touch no Rust state.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
            Ok(())
        });
    }
    // The socket must be reachable by nobody: its directory is a private tempdir.
    std::fs::set_permissions(d.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("CHILD-OK"), "{text}");
}

/// Runs only as the child of `unauthorised_uid_is_denied_and_gets_no_fd`.
#[test]
#[ignore = "helper run by unauthorised_uid_is_denied_and_gets_no_fd"]
fn child_denied_probe() {
    let Some(sock) = std::env::var_os("BK_CHILD_SOCKET") else {
        return;
    };
    assert_eq!(nix::unistd::getuid().as_raw(), 65534);
    let client = Client::connect(&sock).unwrap();
    assert_eq!(client.welcome().identity.uid, 65534);
    assert!(!client.welcome().admin);
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let err = client
        .acquire(req("sim0", 0, 0x10000, PAGE, Access::ReadOnly))
        .unwrap_err();
    assert_eq!(daemon_code(&err), ErrorCode::Denied);
    // Admin requests are refused too.
    let err = client.peek("sim0", 0, 0, 4).unwrap_err();
    assert_eq!(daemon_code(&err), ErrorCode::AdminOnly);
    let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert_eq!(fds_before, fds_after, "a denial must not deliver an fd");
    println!("CHILD-OK");
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn disconnect_releases_leases_and_revokes_mappings_held_elsewhere() {
    let d = TestDaemon::start(&policy());
    let admin = Client::connect(d.socket()).unwrap();

    // Another process that will hold a mapping of the fd.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    // SAFETY: the child only uses async-signal-safe calls until it _exits.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            holder_process(theirs)
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(theirs);

    let tenant = Client::connect(d.socket()).unwrap();
    let slice = tenant
        .acquire(req("sim0", 0, 0x30000, PAGE, Access::ReadWrite))
        .unwrap();
    slice.map().unwrap().write_u32(0, 0xfeed_f00d).unwrap();
    sendfd(&ours, slice.as_fd().as_raw_fd());
    let mut buf = [0u8; 1];
    use std::io::{Read, Write};
    (&ours).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"R", "holder mapped the slice and read it");
    assert_eq!(admin.leases(true).unwrap().len(), 1);

    // Abrupt end of the tenant's session: no polite release, only the
    // disconnect. (detach keeps the fd and stops release-on-drop.)
    let (_fd, _lease) = slice.detach();
    drop(tenant);
    wait_until("leases to empty after disconnect", || {
        admin.leases(true).unwrap().is_empty()
    });
    (&ours).write_all(b"G").unwrap();
    let status = nix::sys::wait::waitpid(child, None).unwrap();
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Signaled(child, nix::sys::signal::Signal::SIGBUS, false),
        "the other process's mapping must fault once the lease is gone"
    );
}

/// Child side: receive the fd, map it, report, wait, touch it again.
fn holder_process(sock: std::os::unix::net::UnixStream) -> ! {
    use std::io::{Read, Write};
    let fd = recvfd(&sock);
    // SAFETY: mapping a received fd; the process exits without unmapping.
    let ptr = unsafe {
        mmap(
            None,
            NonZeroUsize::new(PAGE as usize).unwrap(),
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            fd.as_fd(),
            0,
        )
    };
    let Ok(ptr) = ptr else { std::process::exit(3) };
    let p = ptr.as_ptr() as *const u32;
    // SAFETY: p points into a live page-sized mapping.
    let v = unsafe { std::ptr::read_volatile(p) };
    if v != 0xfeed_f00d {
        std::process::exit(4);
    }
    let _ = (&sock).write_all(b"R");
    let mut b = [0u8; 1];
    let _ = (&sock).read_exact(&mut b);
    // SAFETY: as above; after revocation this faults with SIGBUS, which is
    // what the parent checks.
    let _ = unsafe { std::ptr::read_volatile(p) };
    std::process::exit(0);
}

fn sendfd(sock: &std::os::unix::net::UnixStream, fd: i32) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(b"F")];
    let fds = [fd];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

fn recvfd(sock: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!([i32; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap_or_else(|_| std::process::exit(5));
    for c in msg.cmsgs().unwrap_or_else(|_| std::process::exit(5)) {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed this fd in our table.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    std::process::exit(6)
}

#[test]
fn admin_revoke_reaches_the_client_and_faults_its_mapping() {
    let d = TestDaemon::start(&policy());
    let admin = Client::connect(d.socket()).unwrap();
    let tenant = Client::connect(d.socket()).unwrap();
    let slice = tenant
        .acquire(req("sim0", 0, 0x10000, PAGE, Access::ReadWrite))
        .unwrap();
    let map = slice.map().unwrap();
    map.write_u8(0, 1).unwrap();
    let id = slice.lease().id;
    assert_eq!(admin.revoke(RevokeTarget::Lease(id)).unwrap(), 1);
    wait_until("the client to see the revocation", || slice.is_revoked());
    assert_eq!(slice.revoked_reason(), Some(RevokeReason::Admin));
    assert!(matches!(map.read_u8(0).unwrap_err(), Error::Revoked { .. }));
    assert!(matches!(slice.map().unwrap_err(), Error::Revoked { .. }));
    // The buffer is dead: its size is 0, so any mapping faults.
    let st = nix::sys::stat::fstat(slice.as_fd()).unwrap();
    assert_eq!(st.st_size, 0);
    // Revoking it again is an unknown lease; the range can be granted again.
    let err = admin.revoke(RevokeTarget::Lease(id)).unwrap_err();
    assert_eq!(daemon_code(&err), ErrorCode::UnknownLease);
    let again = tenant
        .acquire(req("sim0", 0, 0x10000, PAGE, Access::ReadWrite))
        .unwrap();
    // What was written before the revoke is still in the BAR.
    assert_eq!(again.map().unwrap().read_u8(0).unwrap(), 1);
}

#[test]
fn rw_leases_do_not_overlap() {
    let d = TestDaemon::start(&policy());
    let a = Client::connect(d.socket()).unwrap();
    let b = Client::connect(d.socket()).unwrap();
    let _held = a
        .acquire(req("sim0", 0, 0x20000, 2 * PAGE, Access::ReadWrite))
        .unwrap();
    let err = b
        .acquire(req("sim0", 0, 0x21000, 2 * PAGE, Access::ReadWrite))
        .unwrap_err();
    assert_eq!(daemon_code(&err), ErrorCode::Conflict);
    assert!(err.to_string().contains("0x21000"), "{err}");
    b.acquire(req("sim0", 0, 0x22000, PAGE, Access::ReadWrite))
        .unwrap();
}

fn raw_socket(path: &std::path::Path) -> std::os::fd::OwnedFd {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    fd
}

fn raw_send(fd: &std::os::fd::OwnedFd, bytes: &[u8]) {
    nix::sys::socket::send(fd.as_raw_fd(), bytes, nix::sys::socket::MsgFlags::empty()).unwrap();
}

fn raw_recv(fd: &std::os::fd::OwnedFd) -> barkeep_protocol::DaemonMessage {
    let mut buf = vec![0u8; barkeep_protocol::MAX_DATAGRAM];
    let tv = nix::sys::time::TimeVal::new(10, 0);
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv).unwrap();
    let n = nix::sys::socket::recv(
        fd.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    barkeep_protocol::decode_daemon(&buf[..n]).unwrap()
}

fn raw_hello(fd: &std::os::fd::OwnedFd) {
    use barkeep_protocol::{encode_client, ClientMessage, DaemonMessage, Hello};
    raw_send(
        fd,
        &encode_client(&ClientMessage::Hello(Hello {
            protocol_version: barkeep_protocol::PROTOCOL_VERSION,
            client_name: "raw".into(),
        }))
        .unwrap(),
    );
    assert!(matches!(raw_recv(fd), DaemonMessage::Welcome(_)));
}

fn expect_error(msg: barkeep_protocol::DaemonMessage, code: ErrorCode) {
    match msg {
        barkeep_protocol::DaemonMessage::Reply { result: Err(e), .. } => {
            assert_eq!(e.code, code, "{}", e.message)
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

#[test]
fn hostile_datagrams_and_abrupt_disconnects_leave_the_daemon_serving() {
    use barkeep_protocol::{encode_client, ClientMessage, DaemonMessage, Request};
    let mut d = TestDaemon::start(&policy());
    let bystander = Client::connect(d.socket()).unwrap();
    let held = bystander
        .acquire(req("sim0", 0, 0x10000, PAGE, Access::ReadWrite))
        .unwrap();

    let raw = raw_socket(d.socket());
    raw_hello(&raw);
    // Garbage.
    raw_send(&raw, &[0xff, 0xfe, 0xfd, 0x00, 0x42]);
    expect_error(raw_recv(&raw), ErrorCode::UnknownRequest);
    raw_send(&raw, &[1, 9, 4, 7]); // ListLeases { all: 7 }
    expect_error(raw_recv(&raw), ErrorCode::Malformed);
    // Truncated: a valid request cut short; the reply echoes its id.
    let full = encode_client(&ClientMessage::Request {
        id: 77,
        request: Request::Peek {
            device: "sim0".into(),
            bar: 0,
            offset: 0,
            length: 4,
        },
    })
    .unwrap();
    raw_send(&raw, &full[..full.len() - 1]);
    match raw_recv(&raw) {
        DaemonMessage::Reply { id, result: Err(e) } => {
            assert_eq!(id, 77);
            assert_eq!(e.code, ErrorCode::Malformed);
        }
        other => panic!("{other:?}"),
    }
    // Oversized: one byte over the limit.
    raw_send(&raw, &vec![0u8; barkeep_protocol::MAX_DATAGRAM + 1]);
    expect_error(raw_recv(&raw), ErrorCode::Oversized);
    // The same raw session still works.
    raw_send(
        &raw,
        &encode_client(&ClientMessage::Request {
            id: 5,
            request: Request::Status,
        })
        .unwrap(),
    );
    assert!(matches!(
        raw_recv(&raw),
        DaemonMessage::Reply {
            id: 5,
            result: Ok(_)
        }
    ));

    // A request before Hello is refused with a typed error, not a hang.
    let early = raw_socket(d.socket());
    raw_send(
        &early,
        &encode_client(&ClientMessage::Request {
            id: 1,
            request: Request::Status,
        })
        .unwrap(),
    );
    match raw_recv(&early) {
        DaemonMessage::Refused(e) => assert_eq!(e.code, ErrorCode::HandshakeRequired),
        other => panic!("{other:?}"),
    }
    // An unsupported protocol version is refused with a typed error.
    let future = raw_socket(d.socket());
    raw_send(
        &future,
        &encode_client(&ClientMessage::Hello(barkeep_protocol::Hello {
            protocol_version: 99,
            client_name: "future".into(),
        }))
        .unwrap(),
    );
    match raw_recv(&future) {
        DaemonMessage::Refused(e) => {
            assert_eq!(e.code, ErrorCode::UnsupportedVersion);
            assert!(e.message.contains("99"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    // Connect-and-vanish, mid-handshake, and a client that never reads.
    for _ in 0..50 {
        drop(raw_socket(d.socket()));
    }
    let silent = raw_socket(d.socket());
    raw_hello(&silent);
    for i in 0..200 {
        let _ = nix::sys::socket::send(
            silent.as_raw_fd(),
            &encode_client(&ClientMessage::Request {
                id: i,
                request: Request::ListDevices,
            })
            .unwrap(),
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        );
    }

    // Everyone else is still served, and the bystander's lease is intact.
    assert!(d.is_running(), "daemon died: {}", d.log_text());
    let fresh = Client::connect(d.socket()).unwrap();
    fresh.status().unwrap();
    assert!(!held.is_revoked());
    held.map().unwrap().write_u8(0, 9).unwrap();
    assert_eq!(bystander.peek("sim0", 0, 0x10000, 1).unwrap(), vec![9]);
    drop(raw);
    drop(silent);
    fresh.status().unwrap();
}

#[test]
fn demo_exits_zero() {
    let bins = barkeep_tests::build_binaries("dev");
    let out = std::process::Command::new(&bins.cli)
        .arg("demo")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "barkeep demo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
