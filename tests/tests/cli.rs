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
