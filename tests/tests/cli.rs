//! The `barkeep` CLI's promises, each driven through the real `barkeepd`
//! and `barkeep` binaries on a simulated device: what a holder says when
//! its daemon goes away, which leases `leases` shows and `release` may
//! end, and how a device that could not be opened is reported.

use barkeep_tests::{build_binaries, sim_policy, TestDaemon};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn a_holder_whose_daemon_went_away_says_so_while_it_reconnects() {
    let d = TestDaemon::start(&sim_policy());
    let mut holder = Command::new(build_binaries("dev").cli)
        .arg("--socket")
        .arg(d.socket())
        .args(["acquire", "sim0", "0", "0x10000", "4K", "--hold", "forever"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("holding lease"), "{first}");
    // SIGKILL: the daemon leaves without a word; nothing restarts it. The
    // holder keeps trying (30 s by default) and says so at each attempt.
    drop(d);
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let third = line.contains("reconnecting, attempt 3");
        said.push(line);
        if third {
            break;
        }
    }
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        said.last()
            .is_some_and(|l| l.contains("reconnecting, attempt 3")),
        "{said:#?}"
    );
    assert!(
        said[0].starts_with("barkeep: barkeepd went away (")
            && said[0].contains("reconnecting, attempt 1"),
        "{said:#?}"
    );
}

#[test]
fn acquiring_on_a_device_that_could_not_be_opened_names_its_problem() {
    // No PCI device has this address: barkeepd starts anyway and keeps the
    // device listed with its problem.
    let d = TestDaemon::start(&format!(
        "[[device]]\nname = \"nic0\"\npci = \"0000:ff:1f.7\"\n{}",
        barkeep_tests::grant_me("nic0", 0, "")
    ));
    let (ok, v) = d.cli_json(&["acquire", "nic0", "0", "0", "4K"]);
    assert!(!ok);
    assert_eq!(v["error"]["slug"], "device-unavailable", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("0000:ff:1f.7"), "{message}");
    let (_, status) = d.cli_json(&["status"]);
    let problem = status["devices"][0]["problem"].as_str().unwrap();
    assert!(message.contains(problem), "{message} vs {problem}");
    // explain says the same.
    let me = barkeep_tests::me().to_string();
    let (ok, v) = d.cli_json(&["explain", "--uid", &me, "nic0", "0", "0", "4K"]);
    assert!(!ok);
    assert_eq!(v["slug"], "device-unavailable", "{v}");
}

/// barkeepd's stderr from a start by hand (default log level) under an
/// open file limit of 512, until it listens.
fn hand_start_log(config_body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bk.sock");
    let config = dir.path().join("bk.toml");
    std::fs::write(
        &config,
        format!("socket = {:?}\n{config_body}", socket.display().to_string()),
    )
    .unwrap();
    let log = dir.path().join("stderr");
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -n 512 && exec \"$0\" --config \"$1\""])
        .arg(build_binaries("dev").daemon)
        .arg(&config)
        .env_remove("RUST_LOG")
        // By hand: not a systemd service.
        .env_remove("INVOCATION_ID")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() && std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "barkeepd exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn a_hand_start_warns_about_the_open_file_limit_only_for_configured_limits() {
    let device =
        "[[device]]\nname = \"sim0\"\nsim = { bars = [ { index = 0, size = \"64K\" } ] }\n";
    let log = hand_start_log(device);
    assert!(log.contains("barkeepd starting"), "{log}");
    assert!(!log.contains("open file limit"), "{log}");
    // Limits set in the file that 512 fds cannot serve: worth a warning.
    let log = hand_start_log(&format!(
        "{device}[limits]\nsessions = 1000\nleases = 2000\n"
    ));
    assert!(
        log.contains("WARN")
            && log.contains("open file limit is 512, below the")
            && log.contains("sessions = 1000"),
        "{log}"
    );
}

/// A tenant for the leases and release tests: not an administrator. As
/// root (always an administrator) that is uid 4050; otherwise the running
/// user, with no [admin] naming it.
fn tenant() -> u32 {
    if barkeep_tests::is_root() {
        4050
    } else {
        barkeep_tests::me()
    }
}

/// `barkeep --socket S ARGS` as the tenant.
fn as_tenant(d: &TestDaemon, args: &[&str]) -> Command {
    let mut cmd = Command::new(build_binaries("dev").cli);
    cmd.arg("--socket").arg(d.socket()).args(args);
    if barkeep_tests::is_root() {
        barkeep_tests::fixtures::run_as(&mut cmd, tenant());
    }
    cmd
}

fn json_of(out: std::process::Output) -> (Option<i32>, serde_json::Value) {
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}, {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// A holder: the process, its lease id, and its stderr (kept open).
type Holder = (
    std::process::Child,
    String,
    BufReader<std::process::ChildStderr>,
);

/// Starts `acquire --hold forever` as the tenant; returns it once the lease
/// is held.
fn hold(d: &TestDaemon, offset: &str) -> Holder {
    let mut child = as_tenant(
        d,
        &[
            "--json", "acquire", "sim0", "0", offset, "4K", "--hold", "forever",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let id = line
        .split_whitespace()
        .skip_while(|w| *w != "lease")
        .nth(1)
        .unwrap_or_else(|| panic!("no lease id in {line:?}"))
        .to_string();
    (child, id, err)
}

#[test]
fn leases_and_release_work_from_any_session_of_the_uid() {
    let d = TestDaemon::start(&format!(
        "{}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\naccess = \"rw\"\nuids = [{}]\n",
        barkeep_tests::SIM_DEVICE,
        tenant()
    ));
    std::fs::set_permissions(d.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (first, id1, _first_err) = hold(&d, "0x10000");
    let (second, id2, _second_err) = hold(&d, "0x20000");
    // A fresh CLI run (a third session) sees both: they are its uid's.
    let (code, v) = json_of(as_tenant(&d, &["--json", "leases"]).output().unwrap());
    assert_eq!(code, Some(0), "{v}");
    let mut ids: Vec<&str> = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![id1.as_str(), id2.as_str()];
    want.sort();
    assert_eq!(ids, want, "{v}");
    assert!(v["leases"][0]["uid"] == tenant(), "{v}");
    // ...and may release one of them; its holder learns why.
    let (code, v) = json_of(
        as_tenant(&d, &["--json", "release", &id1])
            .output()
            .unwrap(),
    );
    assert_eq!(
        (code, &v["released"]),
        (Some(0), &serde_json::json!(id1)),
        "{v}"
    );
    let out = first.wait_with_output().unwrap();
    let (code, v) = json_of(out);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["revoked"]["reason"], "released", "{v}");
    // A lease that does not exist: said so, not "not this session's".
    let gone = "0123456789abcdef0123456789abcdef";
    let (code, v) = json_of(
        as_tenant(&d, &["--json", "release", gone])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(1));
    assert_eq!(v["error"]["slug"], "unknown-lease", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no lease") && !message.contains("session"),
        "{message}"
    );
    // Released already: the same.
    let (_, v) = json_of(
        as_tenant(&d, &["--json", "release", &id1])
            .output()
            .unwrap(),
    );
    assert_eq!(v["error"]["slug"], "unknown-lease", "{v}");

    if barkeep_tests::needs_root(
        "leases_and_release_work_from_any_session_of_the_uid (admin part)",
        "hold a lease as another uid than the administrator",
    ) {
        // The administrator (root) sees every lease without --all, and
        // may release the tenant's.
        let (ok, v) = d.cli_json(&["leases"]);
        assert!(ok, "{v}");
        assert_eq!(v["leases"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["leases"][0]["id"], id2.as_str());
        // Another non-admin uid may not, and is told whose it is.
        let mut cmd = Command::new(build_binaries("dev").cli);
        cmd.arg("--socket")
            .arg(d.socket())
            .args(["--json", "release", &id2]);
        barkeep_tests::fixtures::run_as(&mut cmd, 4051);
        let (code, v) = json_of(cmd.output().unwrap());
        assert_eq!(code, Some(1), "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("uid 4050"), "{message}");
        let (ok, v) = d.cli_json(&["release", &id2]);
        assert!(ok, "{v}");
    } else {
        let (ok, v) = d.cli_json(&["release", &id2]);
        assert!(ok, "{v}");
    }
    let (code, v) = json_of(second.wait_with_output().unwrap());
    assert_eq!(
        (code, &v["revoked"]["reason"]),
        (Some(3), &serde_json::json!("released"))
    );
}

/// `barkeepd check-config` on a file with `body`: (success, stdout, stderr).
fn check_config(body: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("barkeep.toml");
    std::fs::write(
        &file,
        format!(
            "socket = \"/run/barkeep/barkeep.sock\"\n{}{body}",
            barkeep_tests::SIM_DEVICE
        ),
    )
    .unwrap();
    let out = Command::new(build_binaries("dev").daemon)
        .arg("check-config")
        .arg(&file)
        // By hand, with the default limits: no open-file-limit warnings.
        .env_remove("INVOCATION_ID")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn grant(bar: u32, windows: &str, access: &str, uid: u32) -> String {
    format!(
        "[[grant]]\ndevice = \"sim0\"\nbar = {bar}\nwindows = [{windows}]\naccess = \"{access}\"\nuids = [{uid}]\n"
    )
}

#[test]
fn check_config_warns_about_overlaps_hints_the_grant_array_and_counts_from_one() {
    // rw and ro windows that share 0x4000..0x8000 of the same BAR.
    let (ok, out, err) = check_config(&format!(
        "{}{}",
        grant(0, "\"0x0..0x8000\"", "rw", 1000),
        grant(0, "\"0x4000..0x10000\"", "ro", 1001)
    ));
    assert!(ok, "{err}");
    let warning = out
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning:\n{out}"));
    assert!(
        warning.contains("grant #1")
            && warning.contains("grant #2")
            && warning.contains("0x4000..0x8000"),
        "{warning}"
    );
    // Same access, or another BAR: nothing to warn about.
    for body in [
        format!(
            "{}{}",
            grant(0, "\"0x0..0x8000\"", "ro", 1000),
            grant(0, "\"0x4000..0x10000\"", "ro", 1001)
        ),
        format!(
            "{}{}",
            grant(0, "\"0x0..0x8000\"", "rw", 1000),
            grant(2, "\"0x0..0x8000\"", "ro", 1001)
        ),
    ] {
        let (ok, out, err) = check_config(&body);
        assert!(ok, "{err}");
        assert!(!out.contains("warning:"), "{out}");
    }
    // [grant] (one table) instead of [[grant]] (an array of tables).
    let (ok, _, err) = check_config("[grant]\ndevice = \"sim0\"\nbar = 0\nuids = [1]\n");
    assert!(!ok);
    assert!(err.contains("[[grant]]"), "{err}");
    // The second grant is grant #2 in errors as in the explanation.
    let (ok, _, err) = check_config(&format!(
        "{}[[grant]]\ndevice = \"sim9\"\nbar = 0\nuids = [1]\n",
        grant(0, "\"0x0..0x8000\"", "rw", 1000)
    ));
    assert!(!ok);
    assert!(
        err.contains("grant #2") && !err.contains("grant[1]"),
        "{err}"
    );
}
