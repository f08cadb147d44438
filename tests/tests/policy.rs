//! End to end against the real `barkeepd`: identity and policy (each rule
//! kind, ro/rw, wc, windows), quotas, exclusive and shared leases, every
//! revoke reason reaching the client, reload, session limits under a flood,
//! and a client that stops reading. The policies grant the user running
//! the tests; tests that need other uids or a cgroup print a SKIPPED line
//! when they cannot run (not root, which `BARKEEP_REQUIRE_ROOT=1` turns into
//! a failure; no writable cgroup v2 hierarchy).

use barkeep_client::{
    Access, Client, Error, ErrorCode, MemAttr, MemAttrRequest, RevokeReason, RevokeTarget,
    SliceRequest,
};
use barkeep_tests::{needs_root, TestDaemon, SIM_DEVICE};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

fn req(bar: u32, offset: u64, length: u64, access: Access) -> SliceRequest {
    SliceRequest {
        device: "sim0".into(),
        bar,
        offset,
        length,
        access,
        memattr: MemAttrRequest::Uncached,
    }
}

fn code(err: &Error) -> ErrorCode {
    err.daemon_code()
        .unwrap_or_else(|| panic!("expected a daemon error, got {err:?}"))
}

/// Releases a lease and waits for the daemon's answer (dropping a slice
/// releases it in the background).
fn release(client: &Client, slice: barkeep_client::Slice) {
    let (_fd, lease) = slice.detach();
    client.release(lease.id).unwrap();
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- probes: a child process with another identity -------------------------

/// Who a probe runs as.
struct As {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// A cgroup.procs file to move the child into before it connects.
    cgroup: Option<PathBuf>,
}

impl As {
    fn user(uid: u32, gid: u32, groups: &[u32]) -> As {
        As {
            uid,
            gid,
            groups: groups.to_vec(),
            cgroup: None,
        }
    }
}

/// Runs the `child_probe` helper as `who`: it connects once told to (after
/// the move into a cgroup), acquires BAR0 `offset`+1 page read-only, and
/// reports "ok" or the error's slug.
fn probe(d: &TestDaemon, who: &As, offset: u64) -> String {
    // The socket must be reachable by other uids: its directory is a
    // private tempdir.
    std::fs::set_permissions(d.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_probe", "--nocapture", "--include-ignored"])
        .env("BK_PROBE_SOCKET", d.socket())
        .env("BK_PROBE_OFFSET", offset.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (uid, gid) = (who.uid, who.gid);
    let groups: Vec<nix::unistd::Gid> = who
        .groups
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    // SAFETY: setgroups/setgid/setuid are async-signal-safe and touch no
    // Rust state; `groups` was built before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(procs) = &who.cgroup {
        std::fs::write(procs, child.id().to_string())
            .unwrap_or_else(|e| panic!("move the probe into {}: {e}", procs.display()));
    }
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("PROBE-RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "probe printed no result: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split_whitespace().next().unwrap().to_string()
}

/// Runs only as the child of `probe`.
#[test]
#[ignore = "helper run by the identity tests"]
fn child_probe() {
    let Some(sock) = std::env::var_os("BK_PROBE_SOCKET") else {
        return;
    };
    let offset: u64 = std::env::var("BK_PROBE_OFFSET").unwrap().parse().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let client = Client::connect(&sock).unwrap();
    let id = &client.welcome().identity;
    let seen = format!(
        "uid={} gid={} groups={:?} cgroup={:?}",
        id.uid, id.gid, id.groups, id.cgroup
    );
    match client.acquire(req(0, offset, PAGE, Access::ReadOnly)) {
        Ok(_) => println!("PROBE-RESULT ok {seen}"),
        Err(e) => println!(
            "PROBE-RESULT {} {seen} {e}",
            e.daemon_code().map(|c| c.slug()).unwrap_or("client-error")
        ),
    }
}

/// A group that exists on this system, with its gid.
fn some_group() -> Option<(String, u32)> {
    ["nogroup", "nobody", "daemon", "users", "bin"]
        .iter()
        .find_map(|n| {
            nix::unistd::Group::from_name(n)
                .ok()
                .flatten()
                .map(|g| (n.to_string(), g.gid.as_raw()))
        })
}

#[test]
fn each_rule_kind_matches_its_peers_and_only_them() {
    if !needs_root(
        "each_rule_kind_matches_its_peers_and_only_them",
        "run probes as other uids",
    ) {
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        println!(
            "SKIPPED: each_rule_kind_matches_its_peers_and_only_them needs a user named nobody"
        );
        return;
    };
    let (group, group_gid) = some_group().expect("a common group");
    let config = format!(
        r#"{SIM_DEVICE}
[[grant]]
device = "sim0"
bar = 0
windows = ["0x0..0x10000"]
uids = [4001]
[[grant]]
device = "sim0"
bar = 0
windows = ["0x10000..0x20000"]
users = ["nobody"]
[[grant]]
device = "sim0"
bar = 0
windows = ["0x20000..0x30000"]
gids = [4003]
[[grant]]
device = "sim0"
bar = 0
windows = ["0x30000..0x40000"]
groups = ["{group}"]
"#
    );
    let d = TestDaemon::start(&config);
    let nobody_uid = nobody.uid.as_raw();
    // uid
    assert_eq!(probe(&d, &As::user(4001, 4001, &[]), 0), "ok");
    assert_eq!(probe(&d, &As::user(4002, 4002, &[]), 0), "denied");
    assert_eq!(
        probe(&d, &As::user(4001, 4001, &[]), 0x10000),
        "outside-window",
        "a grant for uid 4001 matched, but not this window"
    );
    // user (resolved to its uid at load)
    assert_eq!(probe(&d, &As::user(nobody_uid, 4100, &[]), 0x10000), "ok");
    // gid: primary or supplementary
    assert_eq!(probe(&d, &As::user(4004, 4003, &[]), 0x20000), "ok");
    assert_eq!(probe(&d, &As::user(4005, 4005, &[4003]), 0x20000), "ok");
    assert_eq!(probe(&d, &As::user(4006, 4006, &[4007]), 0x20000), "denied");
    // group (resolved to its gid at load)
    assert_eq!(
        probe(&d, &As::user(4008, 4008, &[group_gid]), 0x30000),
        "ok"
    );
    assert_eq!(probe(&d, &As::user(4009, 4009, &[]), 0x30000), "denied");
    // Every probe's identity and decision is in the audit trail.
    let log = d.log_text();
    assert!(
        log.contains("action=\"grant\" uid=4001") && log.contains("action=\"deny\" uid=4002"),
        "{log}"
    );
}

#[test]
fn a_tenant_may_explain_the_policy_only_for_itself() {
    if !needs_root(
        "a_tenant_may_explain_the_policy_only_for_itself",
        "run the CLI as another uid",
    ) {
        return;
    }
    let d = TestDaemon::start(&format!(
        "{SIM_DEVICE}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\nwindows = [\"0x0..0x10000\"]\nuids = [4030]\n"
    ));
    std::fs::set_permissions(d.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let as_tenant = |args: &[&str]| {
        let bins = barkeep_tests::build_binaries("dev");
        let mut cmd = Command::new(&bins.cli);
        cmd.arg("--socket").arg(d.socket()).arg("--json").args(args);
        // SAFETY: setgroups/setgid/setuid are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(4030))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(4030))?;
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    // Its own uid alone: its session's identity.
    let (exit, v) = as_tenant(&["explain", "--uid", "4030", "sim0", "0", "0x1000", "4K"]);
    assert_eq!((exit, v["allowed"].as_bool()), (Some(0), Some(true)), "{v}");
    assert_eq!(v["who"]["gid"], 4030);
    let (exit, v) = as_tenant(&["explain", "--uid", "4030", "sim0", "0", "0x10000", "4K"]);
    assert_eq!(
        (exit, v["slug"].as_str()),
        (Some(6), Some("outside-window")),
        "{v}"
    );
    // Someone else's, or borrowed groups: administrators only.
    let (exit, v) = as_tenant(&[
        "explain", "--uid", "4031", "--gid", "4031", "sim0", "0", "0", "4K",
    ]);
    assert_eq!(
        (exit, v["error"]["slug"].as_str()),
        (Some(1), Some("admin-only")),
        "{v}"
    );
    let (_, v) = as_tenant(&[
        "explain", "--uid", "4030", "--gid", "4030", "--groups", "0", "sim0", "0", "0", "4K",
    ]);
    assert_eq!(v["error"]["slug"], "admin-only", "{v}");
    // And reload and revoke are refused.
    let (_, v) = as_tenant(&["reload"]);
    assert_eq!(v["error"]["slug"], "admin-only", "{v}");
    let (_, v) = as_tenant(&["revoke", "--uid", "0"]);
    assert_eq!(v["error"]["slug"], "admin-only", "{v}");
}

/// The cgroup v2 hierarchy's mount point (possibly /sys/fs/cgroup/unified
/// on a hybrid host) and our own cgroup in it.
fn cgroup2() -> Option<(PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })?;
    let ours = std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))?;
    Some((mount, ours))
}

/// A child cgroup made for one test, removed on drop.
struct TestCgroup {
    dirs: Vec<PathBuf>,
    /// Its path as /proc/PID/cgroup shows it.
    path: String,
}

impl TestCgroup {
    fn create(name: &str) -> Result<TestCgroup, String> {
        let (mount, ours) = cgroup2().ok_or("no cgroup v2 hierarchy")?;
        let parent_path = format!(
            "{}/bk-{name}-{}",
            ours.trim_end_matches('/'),
            std::process::id()
        );
        let parent = mount.join(parent_path.trim_start_matches('/'));
        std::fs::create_dir(&parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        let leaf = parent.join("tenant");
        let mut cg = TestCgroup {
            dirs: vec![parent],
            path: format!("{parent_path}/tenant"),
        };
        std::fs::create_dir(&leaf).map_err(|e| format!("mkdir {}: {e}", leaf.display()))?;
        cg.dirs.insert(0, leaf);
        Ok(cg)
    }

    fn procs(&self) -> PathBuf {
        self.dirs[0].join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            // Empty once the probe is reaped; the kernel may lag a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn cgroup_rule_matches_a_process_moved_into_the_cgroup() {
    if !needs_root(
        "cgroup_rule_matches_a_process_moved_into_the_cgroup",
        "create a cgroup and move a process into it",
    ) {
        return;
    }
    let cg = match TestCgroup::create("policy") {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED: cgroup_rule_matches_a_process_moved_into_the_cgroup: cannot create a child cgroup ({e})");
            return;
        }
    };
    // Exact path in one window, a glob over the last component in another.
    let parent = cg.path.trim_end_matches("/tenant");
    let config = format!(
        r#"{SIM_DEVICE}
[[grant]]
device = "sim0"
bar = 0
windows = ["0x40000..0x50000"]
cgroups = ["{}"]
[[grant]]
device = "sim0"
bar = 0
windows = ["0x50000..0x60000"]
cgroups = ["{parent}/*"]
[[grant]]
device = "sim0"
bar = 0
windows = ["0x60000..0x70000"]
cgroups = ["{parent}/**"]
"#,
        cg.path
    );
    let d = TestDaemon::start(&config);
    let inside = As {
        cgroup: Some(cg.procs()),
        ..As::user(4010, 4010, &[])
    };
    assert_eq!(probe(&d, &inside, 0x40000), "ok");
    assert_eq!(probe(&d, &inside, 0x50000), "ok");
    assert_eq!(probe(&d, &inside, 0x60000), "ok");
    let outside = As::user(4010, 4010, &[]);
    assert_eq!(probe(&d, &outside, 0x40000), "denied");
    assert_eq!(probe(&d, &outside, 0x60000), "denied");
    let log = d.log_text();
    assert!(log.contains(&format!("cgroup=\"{}\"", cg.path)), "{log}");
}

// ---- ro/rw, wc, windows, explain -----------------------------------------------

fn admin_policy(extra: &str) -> String {
    format!(
        r#"{SIM_DEVICE}
[[grant]]
device = "sim0"
bar = 0
windows = ["0x10000..0x20000"]
access = "rw"
wc = true
uids = [{me}]
[[grant]]
device = "sim0"
bar = 0
windows = ["0x20000..0x30000"]
access = "ro"
uids = [{me}]
{extra}
[admin]
uids = [{me}]
"#,
        me = barkeep_tests::me()
    )
}

#[test]
fn ro_rw_wc_and_window_edges_acquire_as_explained() {
    let d = TestDaemon::start(&admin_policy(""));
    let client = Client::connect(d.socket()).unwrap();
    let uid = nix::unistd::geteuid().as_raw().to_string();
    let explain = |args: &[&str]| {
        let mut all = vec!["explain", "--uid", &uid, "--gid", "0", "--groups", ""];
        all.extend_from_slice(args);
        let out = d.cli(&{
            let mut v = vec!["--json"];
            v.extend_from_slice(&all);
            v
        });
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    // (offset, rw, wc, expected slug or "ok")
    let cases: &[(u64, bool, Option<MemAttrRequest>, &str)] = &[
        (0x10000, true, None, "ok"),
        (0x1f000, true, None, "ok"),              // last page in
        (0x30000, false, None, "outside-window"), // first page out
        (0xf000, false, None, "outside-window"),  // page before
        (0x20000, false, None, "ok"),             // ro window
        (0x21000, true, None, "access-denied"),   // rw on ro
        (0x11000, true, Some(MemAttrRequest::WriteCombining), "ok"),
        (
            0x22000,
            false,
            Some(MemAttrRequest::WriteCombining),
            "wc-denied",
        ),
        (
            0x23000,
            false,
            Some(MemAttrRequest::PreferWriteCombining),
            "ok",
        ),
        (0x10800, false, None, "unaligned"),
    ];
    for &(offset, rw, wc, want) in cases {
        let off = format!("{offset:#x}");
        let mut args = vec!["sim0", "0", &off, "4K"];
        if rw {
            args.push("--rw");
        }
        match wc {
            Some(MemAttrRequest::WriteCombining) => args.push("--wc"),
            Some(MemAttrRequest::PreferWriteCombining) => args.push("--wc=prefer"),
            _ => {}
        }
        let (exit, v) = explain(&args);
        let got = v["slug"].as_str().unwrap_or("ok");
        assert_eq!(got, want, "explain {args:?}: {v}");
        assert_eq!(exit, Some(if want == "ok" { 0 } else { 6 }), "{v}");
        // The real request gets what explain said.
        let mut r = req(
            0,
            offset,
            PAGE,
            if rw {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            },
        );
        r.memattr = wc.unwrap_or(MemAttrRequest::Uncached);
        match client.acquire(r) {
            Ok(slice) => {
                assert_eq!(want, "ok", "{offset:#x} was granted");
                let expect = if wc == Some(MemAttrRequest::WriteCombining) {
                    MemAttr::WriteCombining
                } else {
                    MemAttr::Uncached
                };
                assert_eq!(slice.lease().memattr, expect);
                release(&client, slice);
            }
            Err(e) => assert_eq!(code(&e).slug(), want, "{offset:#x}: {e}"),
        }
    }
    let (_, v) = explain(&["sim0", "0", "0x10000", "4K", "--rw"]);
    assert_eq!(
        v["rule"].as_str().unwrap(),
        format!(
            "grant #1 (device \"sim0\" bar 0, uid {})",
            barkeep_tests::me()
        )
    );
    // Explaining acquires nothing.
    assert!(client.leases(true).unwrap().is_empty());
}

// ---- quotas, exclusive and shared leases ---------------------------------------

#[test]
fn quotas_per_session_and_per_uid() {
    let d = TestDaemon::start(&format!(
        r#"{SIM_DEVICE}
[[grant]]
device = "sim0"
bar = 0
access = "rw"
uids = [{me}]
max_leases_per_session = 2
max_bytes_per_uid = "16K"
"#,
        me = barkeep_tests::me()
    ));
    let a = Client::connect(d.socket()).unwrap();
    let b = Client::connect(d.socket()).unwrap();
    let _a1 = a.acquire(req(0, 0, PAGE, Access::ReadWrite)).unwrap();
    let a2 = a.acquire(req(0, PAGE, PAGE, Access::ReadWrite)).unwrap();
    let err = a
        .acquire(req(0, 2 * PAGE, PAGE, Access::ReadWrite))
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::QuotaExceeded);
    assert!(err.to_string().contains("per session"), "{err}");
    // Same uid, other session: 8K of the uid's 16K are in use.
    let err = b
        .acquire(req(0, 0x10000, 3 * PAGE, Access::ReadWrite))
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::QuotaExceeded);
    assert!(err.to_string().contains("per uid"), "{err}");
    let _b1 = b
        .acquire(req(0, 0x10000, 2 * PAGE, Access::ReadWrite))
        .unwrap();
    release(&a, a2);
    let _a3 = a
        .acquire(req(0, 2 * PAGE, PAGE, Access::ReadWrite))
        .unwrap();
    assert!(d.log_text().contains("outcome=\"quota\""));
}

#[test]
fn exclusive_conflicts_name_the_holder_and_ro_overlaps_are_shared() {
    let d = TestDaemon::start(&admin_policy(&format!(
        r#"
[[grant]]
device = "sim0"
bar = 0
uids = [{me}]
windows = ["0x40000..0x50000"]
access = "rw"
exclusive = false
"#,
        me = barkeep_tests::me()
    )));
    let a = Client::connect(d.socket()).unwrap();
    let b = Client::connect(d.socket()).unwrap();
    let held = a
        .acquire(req(0, 0x10000, 2 * PAGE, Access::ReadWrite))
        .unwrap();
    let err = b
        .acquire(req(0, 0x11000, PAGE, Access::ReadOnly))
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::Conflict);
    let msg = err.to_string();
    let holder = &a.welcome().identity;
    assert!(
        msg.contains(&format!("overlaps lease {}", held.lease().id))
            && msg.contains("rw exclusive")
            && msg.contains(&format!("uid {}", holder.uid))
            && msg.contains(&format!("pid {}", holder.pid)),
        "{msg}"
    );
    if let Some(cg) = &holder.cgroup {
        assert!(msg.contains(cg.as_str()), "{msg}");
    }
    // Read-only leases share.
    let _r1 = a
        .acquire(req(0, 0x20000, 2 * PAGE, Access::ReadOnly))
        .unwrap();
    let _r2 = b
        .acquire(req(0, 0x21000, 2 * PAGE, Access::ReadOnly))
        .unwrap();
    // A grant with exclusive = false lets read-write leases share too.
    let _s1 = a
        .acquire(req(0, 0x40000, 2 * PAGE, Access::ReadWrite))
        .unwrap();
    let _s2 = b
        .acquire(req(0, 0x41000, 2 * PAGE, Access::ReadWrite))
        .unwrap();
}

// ---- revoke reasons, reload ---------------------------------------------------

#[test]
fn every_revoke_reason_reaches_the_client() {
    let config = admin_policy(&format!(
        "[[device]]\nname = \"sim1\"\nsim = {{ bars = [ {{ index = 0, size = \"64K\" }} ] }}\n{}",
        barkeep_tests::grant_me("sim1", 0, "")
    ));
    let mut d = TestDaemon::start(&config);
    let admin = Client::connect(d.socket()).unwrap();
    let tenant = Client::connect(d.socket()).unwrap();
    let take = |offset| {
        tenant
            .acquire(req(0, offset, PAGE, Access::ReadWrite))
            .unwrap()
    };
    let reason_of = |s: &barkeep_client::Slice| {
        wait_until("the revocation to reach the client", || s.is_revoked());
        s.revoked_reason().unwrap()
    };

    let released = take(0x10000);
    let id = released.lease().id;
    tenant.release(id).unwrap();
    assert_eq!(reason_of(&released), RevokeReason::Released);

    let by_lease = take(0x11000);
    admin
        .revoke(RevokeTarget::Lease(by_lease.lease().id))
        .unwrap();
    assert_eq!(reason_of(&by_lease), RevokeReason::Admin);

    let tenant_session = tenant.welcome().session_id;
    let tenant_uid = tenant.welcome().identity.uid;
    let tenant_cgroup = tenant.welcome().identity.cgroup.clone();
    for target in [
        RevokeTarget::Session(tenant_session),
        RevokeTarget::Uid(tenant_uid),
        RevokeTarget::Cgroup(tenant_cgroup.clone().unwrap_or("/".into())),
    ] {
        let s = take(0x12000);
        if matches!(target, RevokeTarget::Cgroup(_)) && tenant_cgroup.is_none() {
            continue;
        }
        // Every lease of the uid/cgroup: the admin's own (none here) too.
        assert_eq!(admin.revoke(target.clone()).unwrap(), 1, "{target:?}");
        assert_eq!(reason_of(&s), RevokeReason::Admin, "{target:?}");
    }

    let by_device = take(0x13000);
    assert_eq!(
        admin.revoke(RevokeTarget::Device("sim0".into())).unwrap(),
        1
    );
    assert_eq!(reason_of(&by_device), RevokeReason::Device);

    // Policy: a reload that drops the rw window revokes what it allowed.
    let policy = take(0x14000);
    let other = tenant
        .acquire(SliceRequest {
            device: "sim1".into(),
            ..req(0, 0, PAGE, Access::ReadOnly)
        })
        .unwrap();
    let path = d.dir().join("barkeep.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("0x10000..0x20000", "0x18000..0x20000")).unwrap();
    assert_eq!(admin.reload().unwrap(), (3, 1));
    assert_eq!(reason_of(&policy), RevokeReason::Policy);
    assert!(!other.is_revoked(), "a lease the new policy allows stays");

    // Disconnect: nobody left to tell, but the lease is gone.
    let gone = Client::connect(d.socket()).unwrap();
    let s = gone
        .acquire(req(0, 0x19000, PAGE, Access::ReadWrite))
        .unwrap();
    let (_fd, _lease) = s.detach();
    drop(gone);
    wait_until("the disconnected session's lease to end", || {
        admin.leases(true).unwrap().len() == 1
    });

    let shut = take(0x1a000);
    let pid = daemon_pid(d.socket());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(reason_of(&shut), RevokeReason::Shutdown);
    wait_until("barkeepd to exit", || !d.is_running());
    let log = d.log_text();
    for reason in [
        "released",
        "admin",
        "device",
        "policy",
        "disconnected",
        "shutdown",
    ] {
        assert!(
            log.contains(&format!("reason=\"{reason}\"")),
            "no {reason} audit event:\n{log}"
        );
    }
}

/// The daemon's pid, from the credentials of a connection to it.
fn daemon_pid(socket: &Path) -> nix::unistd::Pid {
    let fd = raw_socket(socket);
    let cred =
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials).unwrap();
    nix::unistd::Pid::from_raw(cred.pid())
}

#[test]
fn reload_by_request_and_sighup_keeps_the_old_policy_when_invalid() {
    let d = TestDaemon::start(&admin_policy(""));
    let path = d.dir().join("barkeep.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let admin = Client::connect(d.socket()).unwrap();
    let held = admin
        .acquire(req(0, 0x20000, PAGE, Access::ReadOnly))
        .unwrap();

    // Invalid: refused with the file's error, old policy in force.
    std::fs::write(&path, format!("{good}\nbogus_key = 1\n")).unwrap();
    let (ok, v) = d.cli_json(&["reload"]);
    assert!(!ok);
    assert_eq!(v["error"]["slug"], "config", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus_key"),
        "{v}"
    );
    admin
        .acquire(req(0, 0x10000, PAGE, Access::ReadWrite))
        .unwrap();
    // A change of devices is refused too.
    std::fs::write(&path, good.replace("size = \"1M\"", "size = \"2M\"")).unwrap();
    let (ok, v) = d.cli_json(&["reload"]);
    assert!(
        !ok && v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[[device]]"),
        "{v}"
    );

    // SIGHUP with a valid file that widens the policy: a new grant for bar 2.
    std::fs::write(
        &path,
        format!("{good}{}", barkeep_tests::grant_me("sim0", 2, "")),
    )
    .unwrap();
    nix::sys::signal::kill(daemon_pid(d.socket()), nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_until("the SIGHUP reload", || {
        admin.acquire(req(2, 0, PAGE, Access::ReadOnly)).is_ok()
    });
    assert!(!held.is_revoked());
    // A valid reload through the CLI reports what it did.
    let (ok, v) = d.cli_json(&["reload"]);
    assert!(ok, "{v}");
    assert_eq!(
        (v["grants"].as_u64(), v["revoked"].as_u64()),
        (Some(3), Some(0))
    );
    let log = d.log_text();
    assert!(
        log.contains("action=\"reload\"") && log.contains("reason=\"SIGHUP\""),
        "{log}"
    );
}

#[test]
fn leases_show_holder_identity_age_and_state() {
    let d = TestDaemon::start(&admin_policy(&barkeep_tests::grant_me(
        "sim0",
        2,
        "on_disconnect = \"keep\"",
    )));
    let tenant = Client::connect(d.socket()).unwrap();
    let active = tenant
        .acquire(req(0, 0x10000, PAGE, Access::ReadWrite))
        .unwrap();
    let kept = tenant.acquire(req(2, 0, PAGE, Access::ReadOnly)).unwrap();
    let kept_id = kept.lease().id.to_string();
    let (_fd, _l) = kept.detach();
    std::thread::sleep(Duration::from_millis(50));
    let (ok, v) = d.cli_json(&["leases", "--all"]);
    assert!(ok, "{v}");
    let l = &v["leases"][0];
    let me = tenant.welcome().identity.clone();
    assert_eq!(l["id"], active.lease().id.to_string());
    assert_eq!(l["uid"], me.uid);
    assert_eq!(l["pid"], me.pid);
    assert_eq!(l["cgroup"], serde_json::json!(me.cgroup));
    assert_eq!(l["state"], "active");
    assert!(l["age_ms"].as_u64().unwrap() >= 50, "{l}");
    // The session ends: the kept lease stays, and shows so.
    drop(active);
    drop(tenant);
    wait_until("the session to end", || {
        let (_, v) = d.cli_json(&["leases", "--all"]);
        v["leases"].as_array().unwrap().len() == 1 && v["leases"][0]["state"] == "kept"
    });
    let (_, v) = d.cli_json(&["leases", "--all"]);
    assert_eq!(v["leases"][0]["id"], kept_id);
    let (ok, v) = d.cli_json(&["revoke", "--uid", &me.uid.to_string()]);
    assert!(ok && v["revoked"] == 1, "{v}");
    assert!(d.log_text().contains("action=\"keep\""));
}

// ---- limits and slow readers ----------------------------------------------------

fn raw_socket(path: &Path) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    fd
}

#[test]
fn a_flood_of_sessions_hits_the_limits_and_everyone_else_is_served() {
    let d = TestDaemon::start(&admin_policy(
        "[limits]\nsessions = 40\nsessions_per_uid = 8\n",
    ));
    // Eight sessions of one uid fill its share.
    let mine: Vec<Client> = (0..8)
        .map(|_| Client::connect(d.socket()).unwrap())
        .collect();
    let Err(err) = Client::connect(d.socket()) else {
        panic!("a ninth session is refused")
    };
    assert_eq!(code(&err), ErrorCode::LimitExceeded);
    assert!(err.to_string().contains("sessions_per_uid"), "{err}");
    // Connections that never say Hello count too, and a flood of them is
    // refused without hurting the daemon.
    drop(mine);
    let flood: Vec<_> = (0..200).map(|_| raw_socket(d.socket())).collect();
    std::thread::sleep(Duration::from_millis(200));
    drop(flood);
    wait_until("the flood's slots to be given back", || {
        Client::connect(d.socket()).is_ok()
    });
    let c = Client::connect(d.socket()).unwrap();
    c.status().unwrap();
    let s = c.acquire(req(0, 0x10000, PAGE, Access::ReadWrite)).unwrap();
    release(&c, s);
    if needs_root(
        "a_flood_of_sessions_hits_the_limits_and_everyone_else_is_served (another uid's share)",
        "connect as another uid",
    ) {
        // Another uid has its own share while this one is at its limit.
        let full: Vec<Client> = (0..7)
            .map(|_| Client::connect(d.socket()).unwrap())
            .collect();
        assert!(Client::connect(d.socket()).is_err());
        assert_eq!(probe(&d, &As::user(4020, 4020, &[]), 0), "denied");
        drop(full);
    }
    assert!(d.log_text().contains("connection refused"));
}

#[test]
fn a_client_that_stops_reading_stalls_nobody_and_is_evicted() {
    use barkeep_protocol::{encode_client, ClientMessage, Hello, Request};
    let d = TestDaemon::start(&admin_policy("[limits]\nevents_queued = 8\n"));
    let admin = Client::connect(d.socket()).unwrap();

    // A raw session that takes leases, then pipelines requests and never
    // reads a reply again.
    let slow = raw_socket(d.socket());
    let send = |msg: &ClientMessage, flags| {
        nix::sys::socket::send(slow.as_raw_fd(), &encode_client(msg).unwrap(), flags)
    };
    let blocking = nix::sys::socket::MsgFlags::empty();
    send(
        &ClientMessage::Hello(Hello {
            protocol_version: barkeep_protocol::PROTOCOL_VERSION,
            client_name: "slow".into(),
        }),
        blocking,
    )
    .unwrap();
    for i in 0..12u64 {
        send(
            &ClientMessage::Request {
                id: i + 1,
                request: Request::Acquire(req(0, 0x20000 + i * PAGE, PAGE, Access::ReadOnly)),
            },
            blocking,
        )
        .unwrap();
    }
    wait_until("the slow session's leases", || {
        admin.leases(true).unwrap().len() == 12
    });
    let mut sent = 0;
    while sent < 100_000 {
        let r = send(
            &ClientMessage::Request {
                id: 1000 + sent,
                request: Request::ListDevices,
            },
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        );
        if r.is_err() {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < 100_000,
        "the daemon stopped reading the slow session"
    );

    // Everyone else is served promptly meanwhile.
    let other = Client::connect(d.socket()).unwrap();
    let t = Instant::now();
    for i in 0..20 {
        other.status().unwrap();
        let s = other
            .acquire(req(0, 0x10000 + (i % 8) * PAGE, PAGE, Access::ReadWrite))
            .unwrap();
        release(&other, s);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Revoking its 12 leases queues 12 events it will never read: it is
    // evicted, not waited for.
    let leases = admin.leases(true).unwrap();
    let slow_session = leases
        .iter()
        .find(|l| l.client_name == "slow")
        .expect("the slow session's leases")
        .session;
    let t = Instant::now();
    assert_eq!(
        admin.revoke(RevokeTarget::Session(slow_session)).unwrap(),
        12
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    wait_until("the eviction", || {
        d.log_text().contains("does not read its socket")
    });
    // The slow socket sees its end once it drains what was sent.
    let mut buf = vec![0u8; barkeep_protocol::MAX_DATAGRAM];
    let tv = nix::sys::time::TimeVal::new(5, 0);
    nix::sys::socket::setsockopt(&slow, nix::sys::socket::sockopt::ReceiveTimeout, &tv).unwrap();
    let mut reads = 0;
    loop {
        match nix::sys::socket::recv(slow.as_raw_fd(), &mut buf, blocking) {
            Ok(0) => break,
            Ok(_) => reads += 1,
            // Closed with our requests unread: the kernel says so this way.
            Err(nix::errno::Errno::ECONNRESET) => break,
            Err(e) => panic!("the evicted session was not closed ({e}) after {reads} reads"),
        }
    }
    other.status().unwrap();
}
