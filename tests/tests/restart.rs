//! Restarts that break no mapping, against the real `barkeepd` on a
//! simulated device: a test plays systemd (notification socket, fd store,
//! socket activation), SIGKILLs the daemon while a client holds a mapping,
//! starts it again with the stored fds, and checks that the mapping kept
//! working, that the client reclaimed its lease, and that a lease nobody
//! reclaimed is revoked after `reclaim_grace`. Also: READY/STATUS/WATCHDOG
//! and RELOADING around SIGHUP, SIGTERM under the fd store (nothing
//! revoked), and `barkeepd --takeover` without systemd.

use barkeep_client::{
    Access, Client, ConnectOptions, LeaseState, MemAttrRequest, RevokeReason, SliceRequest,
};
use barkeep_tests::fakesystemd::FakeSystemd;
use barkeep_tests::{build_binaries, SIM_DEVICE};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const SECOND: Duration = Duration::from_secs(1);

fn req(offset: u64) -> SliceRequest {
    SliceRequest {
        device: "sim0".into(),
        bar: 0,
        offset,
        length: PAGE,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::Uncached,
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_size(fd: impl AsFd) -> u64 {
    nix::sys::stat::fstat(fd.as_fd()).unwrap().st_size as u64
}

/// A config for `sim0` with rw grants and admin for this uid.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    let path = dir.join("barkeep.toml");
    std::fs::write(
        &path,
        format!(
            "socket = {:?}\n{extra}\n{SIM_DEVICE}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\naccess = \"rw\"\nuids = [{uid}]\n[admin]\nuids = [{uid}]\n",
            dir.join("barkeep.sock").display().to_string()
        ),
    )
    .unwrap();
    path
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Kills and reaps a daemon on drop, printing its log if the test failed.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn kill(&mut self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "barkeepd did not exit; log:\n{}",
                log_of(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), log_of(&self.log));
        }
    }
}

/// Raises this process's soft open file limit to its hard one (a client
/// holding thousands of buffers).
fn raise_own_fd_limit() -> u64 {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

fn start(sd: &mut FakeSystemd, config: &Path, log: PathBuf) -> Daemon {
    let bins = build_binaries("dev");
    // What the last daemon said before it died counts (systemd reads
    // notifications before it handles the death).
    sd.pump(Duration::from_millis(200));
    let child = sd.spawn(
        &bins.daemon,
        &["--config", config.to_str().unwrap(), "--log", "stderr"],
        &log,
    );
    let mut d = Daemon { child, log };
    if sd.wait_line(20 * SECOND, "READY=1").is_none() {
        let st = d.child.try_wait().unwrap();
        panic!(
            "no READY=1 from barkeepd (exit: {st:?}); log:\n{}",
            log_of(&d.log)
        );
    }
    d
}

#[test]
fn sigkill_restart_keeps_mappings_and_leases_are_reclaimed_or_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("barkeep.sock");
    let config = write_config(dir.path(), "reclaim_grace = \"3s\"");
    let mut sd = FakeSystemd::new(dir.path(), Some(&socket));
    let mut d = start(&mut sd, &config, dir.path().join("first.log"));
    let status = sd.last_status().unwrap_or_default();
    assert!(
        status.contains("serving 1 of 1 device(s) [sim0]") && status.contains("kernel: export"),
        "STATUS= says what is served: {status:?}"
    );

    // A client that will reclaim, and one that will not.
    let a = ConnectOptions::new()
        .name("keeper")
        .reconnect(Some(20 * SECOND))
        .connect(&socket)
        .unwrap();
    let first_session = a.session_id();
    let kept = a.acquire(req(0x1000)).unwrap();
    let map = kept.map().unwrap();
    map.write_bytes(0, b"before").unwrap();
    // A detached slice's lease still belongs to the session.
    let (_detached_fd, detached) = a.acquire(req(0x2000)).unwrap().detach();
    let b = ConnectOptions::new()
        .name("leaver")
        .reconnect(None)
        .connect(&socket)
        .unwrap();
    let orphan = b.acquire(req(0x8000)).unwrap();
    let orphan_id = orphan.lease().id;
    let (orphan_fd, _) = orphan.detach();

    // The fd store holds the BAR memfds and one stash segment (which
    // holds the buffers), with FDPOLL=0; no fd per lease.
    sd.pump(Duration::from_millis(300));
    let names = sd.stored_names();
    for want in ["dev-sim0-bar0", "dev-sim0-bar2", "stash-1"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not stored: {names:?}"
        );
    }
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(sd.store.iter().all(|s| s.no_poll), "FDPOLL=0 with every fd");
    assert!(
        !names.iter().any(|n| n == "barkeep"),
        "an activated socket is systemd's, not stored again: {names:?}"
    );
    let state = std::fs::read_to_string(dir.path().join("state")).unwrap();
    assert!(
        state.contains(&kept.lease().id.to_string()) && state.contains("\"reclaim\""),
        "the state file records the leases"
    );

    // SIGKILL: no chance to save anything.
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(10 * SECOND);
    // The mapping goes on working while no daemon runs.
    map.write_bytes(0, b"during").unwrap();
    assert!(!kept.is_revoked());

    let mut d2 = start(&mut sd, &config, dir.path().join("second.log"));
    // The client reconnects and reclaims its lease: listed, active, in a
    // new session.
    wait_until("the leases to be reclaimed", 15 * SECOND, || {
        a.leases(false).is_ok_and(|l| {
            [kept.lease().id, detached.id].iter().all(|id| {
                l.iter()
                    .any(|i| i.lease.id == *id && i.state == LeaseState::Active)
            })
        })
    });
    assert_ne!(a.session_id(), first_session, "a new session");
    assert!(!kept.is_revoked());
    // Same buffer: what was written while the daemon was dead is in the
    // BAR as the new daemon sees it, and new writes show too.
    assert_eq!(a.peek("sim0", 0, 0x1000, 6).unwrap(), b"during");
    map.write_bytes(0, b"after!").unwrap();
    assert_eq!(a.peek("sim0", 0, 0x1000, 6).unwrap(), b"after!");
    // The new daemon tracks the lease: an overlapping acquire conflicts.
    let e = a.acquire(req(0x1000)).unwrap_err();
    assert_eq!(e.daemon_code(), Some(barkeep_client::ErrorCode::Conflict));

    // The other lease waits for its holder, then is revoked as unclaimed.
    let all = a.leases(true).unwrap();
    let waiting = all.iter().find(|i| i.lease.id == orphan_id).unwrap();
    assert_eq!(waiting.state, LeaseState::AwaitingReclaim);
    assert!(sd
        .last_status()
        .is_some_and(|s| s.contains("awaiting reclaim") || s.contains("lease")));
    wait_until("the unclaimed lease to be revoked", 10 * SECOND, || {
        a.leases(true)
            .is_ok_and(|l| !l.iter().any(|i| i.lease.id == orphan_id))
    });
    assert_eq!(file_size(&orphan_fd), 0, "its buffer is revoked");
    sd.pump(Duration::from_millis(300));
    // The successor copied the buffers into its own segment and let the
    // old one go.
    let names = sd.stored_names();
    assert!(
        !names.contains(&"stash-1".to_string())
            && names.iter().filter(|n| n.starts_with("stash-")).count() == 1,
        "{names:?}"
    );
    let log = log_of(&d2.log);
    assert!(log.contains("reason=\"unclaimed\""), "audited:\n{log}");
    assert!(log.contains("action=\"reclaim\""), "audited:\n{log}");

    // SIGTERM under the fd store: a stop or a restart, the store decides;
    // the daemon revokes nothing.
    d2.kill(nix::sys::signal::Signal::SIGTERM);
    assert!(d2.wait_exit(10 * SECOND).success());
    sd.pump(Duration::from_millis(100));
    assert!(
        sd.log.iter().any(|n| n.get("STOPPING") == Some("1")),
        "STOPPING=1"
    );
    assert_eq!(file_size(kept.as_fd()), PAGE, "not revoked by SIGTERM");
    assert!(socket.exists(), "systemd's socket is not unlinked");
    map.write_bytes(0, b"again!").unwrap();
    let _d3 = start(&mut sd, &config, dir.path().join("third.log"));
    wait_until("the lease to be reclaimed again", 15 * SECOND, || {
        a.leases(false)
            .is_ok_and(|l| l.iter().any(|i| i.lease.id == kept.lease().id))
    });
    assert_eq!(a.peek("sim0", 0, 0x1000, 6).unwrap(), b"again!");
    assert!(!kept.is_revoked());
}

#[test]
fn watchdog_pings_and_reload_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("barkeep.sock");
    let config = write_config(dir.path(), "");
    let mut sd = FakeSystemd::new(dir.path(), Some(&socket));
    sd.watchdog_usec = Some(200_000);
    let mut d = start(&mut sd, &config, dir.path().join("d.log"));
    assert!(
        sd.wait_line(2 * SECOND, "WATCHDOG=1").is_some(),
        "WATCHDOG=1 at half of WATCHDOG_USEC"
    );
    d.kill(nix::sys::signal::Signal::SIGHUP);
    let reloading = sd
        .wait_line(5 * SECOND, "RELOADING=1")
        .expect("RELOADING=1 on SIGHUP");
    let usec: u64 = reloading
        .get("MONOTONIC_USEC")
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert!(
        sd.wait_line(5 * SECOND, "READY=1").is_some(),
        "READY=1 after the reload"
    );
    // Without the fd store's stored state, a client's leases end as before
    // when the daemon stops for good (SIGTERM with nothing stored is still
    // a hand-over under a store; here we only check it exits cleanly).
    d.kill(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(10 * SECOND).success());
}

#[test]
fn takeover_without_systemd_hands_everything_over() {
    let bins = build_binaries("dev");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("barkeep.sock");
    let takeover = dir.path().join("takeover.sock");
    let config = write_config(dir.path(), "reclaim_grace = \"10s\"");
    let spawn = |args: &[&str], log: &str| {
        let log = dir.path().join(log);
        let child = std::process::Command::new(&bins.daemon)
            .args(["--config", config.to_str().unwrap(), "--log", "stderr"])
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "debug")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    };
    let mut old = spawn(
        &["--takeover-listen", takeover.to_str().unwrap()],
        "old.log",
    );
    wait_until("the first daemon", 20 * SECOND, || {
        Client::connect(&socket).is_ok() && takeover.exists()
    });
    let a = ConnectOptions::new()
        .reconnect(Some(20 * SECOND))
        .connect(&socket)
        .unwrap();
    let slice = a.acquire(req(0x4000)).unwrap();
    let map = slice.map().unwrap();
    map.write_u64(0, 0x1122_3344_5566_7788).unwrap();
    let first = a.session_id();

    let _new = spawn(&["--takeover", takeover.to_str().unwrap()], "new.log");
    let st = old.wait_exit(20 * SECOND);
    assert!(st.success(), "the old daemon leaves cleanly: {st:?}");
    assert!(
        log_of(&old.log).contains("taken over by a successor"),
        "{}",
        log_of(&old.log)
    );
    wait_until(
        "the lease to be reclaimed by the successor",
        15 * SECOND,
        || {
            a.leases(false)
                .is_ok_and(|l| l.iter().any(|i| i.lease.id == slice.lease().id))
        },
    );
    assert_ne!(a.session_id(), first);
    assert!(!slice.is_revoked());
    assert_eq!(map.read_u64(0).unwrap(), 0x1122_3344_5566_7788);
    assert_eq!(
        a.peek("sim0", 0, 0x4000, 8).unwrap(),
        0x1122_3344_5566_7788u64.to_le_bytes(),
        "the successor sees the same BAR and buffer"
    );
    // The successor serves new requests, and releasing works as usual.
    let more = a.acquire(req(0x6000)).unwrap();
    drop(more);
    let (_, lease) = slice.detach();
    a.release(lease.id).unwrap();
    assert!(a.leases(false).unwrap().is_empty());
}

#[test]
fn without_a_store_a_dead_daemons_leases_end_for_the_client() {
    // Plain barkeepd (no systemd, no takeover): SIGTERM revokes every
    // lease, and the client tells its slices at once (no reconnect: no
    // live lease is left to reclaim).
    let bins = build_binaries("dev");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("barkeep.sock");
    let config = write_config(dir.path(), "");
    let log = dir.path().join("d.log");
    let child = std::process::Command::new(&bins.daemon)
        .args(["--config", config.to_str().unwrap(), "--log", "stderr"])
        .env_remove("NOTIFY_SOCKET")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut d = Daemon { child, log };
    wait_until("barkeepd", 20 * SECOND, || Client::connect(&socket).is_ok());
    let a = Client::connect(&socket).unwrap();
    let slice = a.acquire(req(0)).unwrap();
    d.kill(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(10 * SECOND);
    let started = Instant::now();
    wait_until("the slice to learn of the revoke", 5 * SECOND, || {
        slice.is_revoked()
    });
    assert_eq!(slice.revoked_reason(), Some(RevokeReason::Shutdown));
    assert!(started.elapsed() < 2 * SECOND);
    assert_eq!(file_size(slice.as_fd()), 0);
}

#[test]
fn thousands_of_leases_survive_sigkill_with_a_small_fd_store() {
    // More leases than systemd's default soft RLIMIT_NOFILE (1024, which
    // LISTEN_FDS must fit) and than a small FileDescriptorStoreMax=: the
    // buffers live in the stash, so the store holds a few fds.
    const LEASES: usize = 3000;
    let hard = raise_own_fd_limit();
    if hard < (LEASES as u64) * 3 {
        eprintln!("skipped: this process's hard open file limit ({hard}) is too small for {LEASES} leases held on both sides");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("barkeep.sock");
    let uid = nix::unistd::geteuid().as_raw();
    let config = dir.path().join("barkeep.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nreclaim_grace = \"60s\"\n[limits]\nleases_per_session = 10000\n[[device]]\nname = \"sim0\"\nsim = {{ bars = [ {{ index = 0, size = \"16M\" }} ] }}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\naccess = \"rw\"\nuids = [{uid}]\n[admin]\nuids = [{uid}]\n",
            socket.display().to_string()
        ),
    )
    .unwrap();
    let mut sd = FakeSystemd::new(dir.path(), Some(&socket));
    sd.capacity = 64;
    let mut d = start(&mut sd, &config, dir.path().join("first.log"));
    let a = ConnectOptions::new()
        .name("many")
        .reconnect(Some(30 * SECOND))
        .connect(&socket)
        .unwrap();
    // The stand-in reads its notification socket meanwhile, as PID 1 does
    // (the daemon's STATUS= lines would fill it otherwise).
    let held = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut held = Vec::new();
            for i in 0..LEASES {
                let (fd, lease) = a.acquire(req(i as u64 * PAGE)).unwrap().detach();
                nix::sys::uio::pwrite(&fd, &(i as u64).to_le_bytes(), 0).unwrap();
                held.push((fd, lease));
            }
            // Release a third: their stash entries die without a word to
            // PID 1.
            // (Lease 0 last: its end is likely not in the state file yet
            // when the SIGKILL comes.)
            for (_, lease) in held.iter().step_by(3).rev() {
                a.release(lease.id).unwrap();
            }
            held
        });
        while !client.is_finished() {
            sd.pump(Duration::from_millis(50));
        }
        client.join().unwrap()
    });
    sd.pump(Duration::from_millis(300));
    let names = sd.stored_names();
    assert!(
        names.len() < 16,
        "a few segments, not an fd per lease: {names:?}"
    );
    assert_eq!(sd.refused, 0, "nothing beyond FileDescriptorStoreMax");
    assert!(
        sd.store_messages < 16,
        "{} FDSTORE messages for {LEASES} grants",
        sd.store_messages
    );

    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(10 * SECOND);
    let _d2 = start(&mut sd, &config, dir.path().join("second.log"));
    let live: Vec<_> = held
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, h)| h)
        .collect();
    // (Too many to list in one reply: the count of active leases.)
    wait_until("every live lease to be reclaimed", 30 * SECOND, || {
        a.status().is_ok_and(|s| s.leases as usize == live.len())
    });
    // Same buffers: what each holder wrote is in the BAR the new daemon
    // reads, and the new daemon can revoke them.
    for (i, (fd, lease)) in held.iter().enumerate().step_by(97) {
        if i % 3 == 0 {
            assert_eq!(file_size(fd), 0, "released lease {i} stays dead");
            continue;
        }
        assert_eq!(
            a.peek("sim0", 0, lease.offset, 8).unwrap(),
            (i as u64).to_le_bytes()
        );
    }
    // A range released just before the SIGKILL is free at once (not
    // kept busy by a record whose end was not written yet).
    let again = a.acquire(req(0)).unwrap();
    drop(again);
    let (fd, lease) = live[0];
    a.release(lease.id).unwrap();
    assert_eq!(file_size(fd), 0, "the new daemon revokes a restored buffer");
    let names = sd.stored_names();
    assert!(names.len() < 16, "{names:?}");
}

#[test]
fn a_store_beyond_the_soft_fd_limit_fails_to_start_as_under_systemd() {
    // Other tests of this binary hold thousands of fds in this process
    // at the same time: a normal user's soft limit would not do.
    raise_own_fd_limit();
    // The stand-in's own constraint, which bit the one-fd-per-lease store:
    // LISTEN_FDS past the soft RLIMIT_NOFILE fail the start.
    let bins = build_binaries("dev");
    let dir = tempfile::tempdir().unwrap();
    let mut sd = FakeSystemd::new(dir.path(), None);
    sd.nofile = (64, 64);
    for _ in 0..70 {
        sd.store.push(barkeep_tests::fakesystemd::Stored {
            name: "x".into(),
            fd: nix::sys::memfd::memfd_create("x", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap(),
            no_poll: true,
        });
    }
    let r = sd.try_spawn(&bins.daemon, &["--version"], &dir.path().join("d.log"));
    assert!(r.is_err(), "70 fds from 3 do not fit a soft limit of 64");
    sd.store.truncate(40);
    let mut child = sd
        .try_spawn(&bins.daemon, &["--version"], &dir.path().join("d.log"))
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_holder_whose_reclaim_is_refused_hears_it_at_once() {
    // Other tests of this binary hold thousands of fds in this process
    // at the same time: a normal user's soft limit would not do.
    raise_own_fd_limit();
    // `systemctl stop` closes the store (the buffers die with the device
    // fds); the next start opens the device anew and knows none of the
    // leases. A holder reconnecting to reclaim must learn at once, not at
    // its next request.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("barkeep.sock");
    let config = write_config(dir.path(), "reclaim_grace = \"30s\"");
    let mut sd = FakeSystemd::new(dir.path(), Some(&socket));
    let mut d = start(&mut sd, &config, dir.path().join("first.log"));
    let a = ConnectOptions::new()
        .name("holder")
        .reconnect(Some(20 * SECOND))
        .connect(&socket)
        .unwrap();
    let slice = a.acquire(req(0x3000)).unwrap();
    let id = slice.lease().id;
    d.kill(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(10 * SECOND);
    sd.pump(Duration::from_millis(200));
    sd.store.clear();
    let _d2 = start(&mut sd, &config, dir.path().join("second.log"));
    let started = Instant::now();
    let event = a
        .next_event(Some(15 * SECOND))
        .unwrap()
        .expect("an event, not a timeout");
    assert!(
        matches!(event, barkeep_client::Event::Revoked { lease, .. } if lease == id),
        "{event:?}"
    );
    assert!(slice.is_revoked());
    assert!(started.elapsed() < 10 * SECOND);
}
