//! `barkeep exec` against the real daemon on a simulated device: the
//! command inherits exactly its slices, writes through them (seen with
//! peek), barkeep exits with its status, forwards SIGTERM, reports
//! revocations, and the leases end with the command.

use barkeep_client::{Client, RevokeTarget};
use barkeep_tests::{build_binaries, TestDaemon, SIM_DEVICE};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = env!("CARGO_BIN_EXE_bk-inherit");

fn policy() -> String {
    format!(
        r#"{SIM_DEVICE}
[[grant]]
device = "sim0"
bar = 0
windows = ["0x10000..0x40000"]
access = "rw"
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

fn exec(d: &TestDaemon, slices: &[&str], command: &[&str]) -> Command {
    let mut cmd = Command::new(build_binaries("dev").cli);
    cmd.arg("--socket").arg(d.socket()).arg("exec");
    for s in slices {
        cmd.args(["--slice", s]);
    }
    cmd.arg("--").args(command);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run barkeep exec")
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {text:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn all_leases(client: &Client) -> usize {
    client.leases(true).expect("leases --all").len()
}

#[test]
fn the_command_writes_through_its_inherited_slice_and_the_lease_ends_with_it() {
    let d = TestDaemon::start(&policy());
    let admin = Client::connect(d.socket()).unwrap();
    let out = run(exec(
        &d,
        &["sim0:0:0x10000:8K", "sim0:2:0:4K:ro"],
        &[CHILD, "write", "0", "0x1004", "cafebabe"],
    ));
    assert!(
        out.status.success(),
        "status {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    let leases = v["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(leases[0]["offset"], 0x10000);
    assert_eq!(leases[0]["length"], 0x2000);
    assert_eq!(leases[0]["access"], "rw");
    assert_eq!(leases[1]["bar"], 2);
    assert_eq!(leases[1]["access"], "ro");
    assert_eq!(v["ro_refused"], serde_json::json!([false, true]));
    // Slice offset 0x1004 is BAR offset 0x11004.
    assert_eq!(
        admin.peek("sim0", 0, 0x11004, 4).unwrap(),
        [0xca, 0xfe, 0xba, 0xbe]
    );
    // barkeep released both leases before exiting.
    assert_eq!(all_leases(&admin), 0);
}

#[test]
fn the_command_inherits_the_slice_fds_and_no_other() {
    let d = TestDaemon::start(&policy());
    let out = run(exec(&d, &["sim0:0:0x20000:4K"], &[CHILD, "fds"]));
    assert!(out.status.success(), "{out:?}");
    let v = stdout_json(&out);
    let slices = v["slices"]
        .as_array()
        .expect("BARKEEP_SLICES is a JSON array");
    assert_eq!(slices.len(), 1);
    let s = &slices[0];
    assert_eq!(s["device"], "sim0");
    assert_eq!(s["bar"], 0);
    assert_eq!(s["offset"], 0x20000);
    assert_eq!(s["length"], 4096);
    assert_eq!(s["access"], "rw");
    assert_eq!(s["memattr"], "uc");
    assert_eq!(s["buffer_name"], "bk:sim0:b0:20000+1000");
    assert_eq!(s["lease"].as_str().unwrap().len(), 32);
    // The command has what barkeep itself inherited (stdio, and whatever
    // the test harness leaks), plus the buffer and the status page: the
    // daemon socket and barkeep's other fds stay behind.
    let fds = |v: &Value| -> Vec<i64> {
        v["open"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let direct = Command::new(CHILD).arg("fds").output().unwrap();
    let mut expected = fds(&stdout_json(&direct));
    expected.push(s["fd"].as_i64().unwrap());
    expected.push(s["status_fd"].as_i64().unwrap());
    expected.sort();
    assert_eq!(fds(&v), expected);
}

#[test]
fn barkeep_exits_with_the_command_status() {
    let d = TestDaemon::start(&policy());
    let slice = ["sim0:0:0x10000:4K"];
    assert_eq!(
        run(exec(&d, &slice, &[CHILD, "exit", "7"])).status.code(),
        Some(7)
    );
    assert_eq!(
        run(exec(&d, &slice, &[CHILD, "exit", "0"])).status.code(),
        Some(0)
    );
    // Killed by a signal: 128 + its number, as a shell reports it.
    let out = run(exec(&d, &slice, &["sh", "-c", "kill -KILL $$"]));
    assert_eq!(out.status.code(), Some(128 + 9));
    let out = run(exec(&d, &slice, &["/nonexistent/command"]));
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/command"));
    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(all_leases(&admin), 0);
}

#[test]
fn a_denied_slice_fails_before_the_command_runs() {
    let d = TestDaemon::start(&policy());
    let marker = d.dir().join("ran");
    let out = run(exec(
        &d,
        &["sim0:0:0x10000:4K", "sim0:0:0x80000:4K"],
        &["touch", marker.to_str().unwrap()],
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sim0:0:0x80000:0x1000"), "{err}");
    assert!(
        !marker.exists(),
        "the command ran although a slice was denied"
    );
    // The slice granted before the denial was given back.
    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(all_leases(&admin), 0);
    // A bad spec is a usage error.
    let out = run(exec(&d, &["sim0:0:0x10000"], &["true"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_is_forwarded_and_the_leases_end_after_the_command() {
    let d = TestDaemon::start(&policy());
    let admin = Client::connect(d.socket()).unwrap();
    let mut cmd = exec(&d, &["sim0:0:0x10000:4K"], &[CHILD, "wait-term", "9"]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").expect("stdout");
    assert_eq!(first, "ready 1");
    assert_eq!(
        all_leases(&admin),
        1,
        "the lease is held while the command runs"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    // The command caught SIGTERM and chose its exit status: barkeep waited
    // for it and passed the status on.
    assert_eq!(status.code(), Some(9));
    assert_eq!(all_leases(&admin), 0);
}

#[test]
fn a_revocation_reaches_the_command_through_the_status_page() {
    let d = TestDaemon::start(&policy());
    let admin = Client::connect(d.socket()).unwrap();
    let mut cmd = exec(&d, &["sim0:0:0x30000:4K"], &[CHILD, "wait-revoke", "0"]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let leases = admin.leases(true).unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        admin
            .revoke(RevokeTarget::Lease(leases[0].lease.id))
            .unwrap(),
        1
    );
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(lines.next().unwrap().unwrap(), "revoked admin");
    assert!(status.success(), "{status:?}");
}

#[test]
fn without_slices_it_acquires_what_the_cdi_spec_asked_for() {
    let d = TestDaemon::start(&policy());
    let admin = Client::connect(d.socket()).unwrap();
    let out = run({
        let mut c = exec(&d, &[], &[CHILD, "write", "1", "0x10", "0102"]);
        c.env(
            "BARKEEP_CDI_SLICES",
            "sim0:0:0x10000:4K:ro  sim0:0:0x38000:4K",
        );
        c
    });
    assert!(out.status.success(), "{out:?}");
    let v = stdout_json(&out);
    assert_eq!(v["leases"][1]["offset"], 0x38000);
    assert_eq!(admin.peek("sim0", 0, 0x38010, 2).unwrap(), [1, 2]);
    // Neither --slice nor the variable: a usage error.
    let out = run(exec(&d, &[], &["true"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn map_checks_that_each_slice_maps_before_running_the_command() {
    let d = TestDaemon::start(&policy());
    let mut cmd = Command::new(build_binaries("dev").cli);
    cmd.arg("--socket").arg(d.socket()).args([
        "exec",
        "--map",
        "--slice",
        "sim0:2:0:4K:ro",
        "--",
        CHILD,
        "exit",
        "3",
    ]);
    assert_eq!(run(cmd).status.code(), Some(3));
}

fn wait_timeout(child: &mut std::process::Child, t: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("barkeep exec did not exit within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn with_json_barkeep_prints_one_object_about_the_run() {
    let d = TestDaemon::start(&policy());
    let json_exec = |slices: &[&str], command: &[&str]| {
        let mut cmd = Command::new(build_binaries("dev").cli);
        cmd.arg("--socket").arg(d.socket()).args(["--json", "exec"]);
        for s in slices {
            cmd.args(["--slice", s]);
        }
        run({
            cmd.arg("--").args(command);
            cmd
        })
    };
    // The command prints nothing: stdout is barkeep's one object.
    let out = json_exec(
        &["sim0:0:0x10000:4K", "sim0:2:0:4K:ro"],
        &[CHILD, "exit", "3"],
    );
    assert_eq!(out.status.code(), Some(3));
    let v = stdout_json(&out);
    assert_eq!(v["command"], CHILD, "{v}");
    assert_eq!((v["exit"].as_i64(), v["signal"].is_null()), (Some(3), true));
    let leases = v["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 2, "{v}");
    assert_eq!(
        (leases[0]["offset"].as_u64(), leases[1]["bar"].as_u64()),
        (Some(0x10000), Some(2))
    );
    assert_eq!(leases[1]["access"], "ro");
    assert_eq!(v["revoked"], serde_json::json!([]));
    // Killed by a signal.
    let out = json_exec(&["sim0:0:0x10000:4K"], &["sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    let v = stdout_json(&out);
    assert_eq!((v["exit"].is_null(), v["signal"].as_i64()), (true, Some(9)));
    // A command that cannot be run is an error object, with exit 127.
    let out = json_exec(&["sim0:0:0x10000:4K"], &["/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
    let v = stdout_json(&out);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot run /nonexistent/command"),
        "{v}"
    );
    // A revocation while the command runs is in the object.
    let admin = Client::connect(d.socket()).unwrap();
    let mut cmd = Command::new(build_binaries("dev").cli);
    cmd.arg("--socket")
        .arg(d.socket())
        .args(["--json", "exec", "--slice", "sim0:0:0x30000:4K", "--"])
        .args([CHILD, "wait-revoke", "0"]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let id = admin.leases(true).unwrap()[0].lease.id;
    admin.revoke(RevokeTarget::Lease(id)).unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(lines.next().unwrap().unwrap(), "revoked admin");
    let last = lines.next().unwrap().unwrap();
    let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last:?}"));
    assert_eq!(
        v["revoked"],
        serde_json::json!([{"lease": id.to_string(), "reason": "admin"}])
    );
    assert!(lines.next().is_none(), "one object, nothing after it");
}

#[test]
fn a_usage_error_in_json_carries_clap_s_whole_message() {
    let d = TestDaemon::start(&policy());
    let usage = |args: &[&str]| {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stderr.is_empty(), "{out:?}");
        let v = stdout_json(&out);
        assert_eq!(v["error"]["slug"], "usage");
        v["error"]["message"].as_str().unwrap().to_string()
    };
    // No command: the error, the missing argument and the usage line.
    let message = usage(&["--json", "exec", "--slice", "sim0:0:0:4K"]);
    assert!(
        message.contains("required arguments were not provided"),
        "{message}"
    );
    assert!(message.contains("<COMMAND>"), "{message}");
    assert!(message.contains("Usage: barkeep exec"), "{message}");
    // A misspelt subcommand: clap's suggestion is part of the message.
    let message = usage(&["--json", "acquier", "sim0", "0", "0", "4K"]);
    assert!(
        message.contains("unrecognized subcommand 'acquier'"),
        "{message}"
    );
    assert!(message.contains("'acquire'"), "{message}");
}
