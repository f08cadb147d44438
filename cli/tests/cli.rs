//! The `barkeep` binary's contract: JSON shapes, error objects and exit
//! codes, against an in-process daemon with a simulated device.

use barkeep_tests::fixtures::InProcessDaemon;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn barkeep(socket: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_barkeep"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout:?}"));
    (out.status.code().unwrap(), v)
}

/// sim0 with BAR0 granted to (and administered by) the running user.
fn daemon() -> InProcessDaemon {
    InProcessDaemon::start(&barkeep_tests::sim_policy())
}

#[test]
fn demo_exits_zero_with_every_step_ok() {
    let out = Command::new(env!("CARGO_BIN_EXE_barkeep"))
        .args(["demo", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["ok"], true);
    let steps = v["steps"].as_array().unwrap();
    assert!(
        steps.len() >= 10 && steps.iter().all(|s| s["ok"] == true),
        "{v}"
    );
}

#[test]
fn acquire_writes_and_reads_in_order_through_the_mapping() {
    let d = daemon();
    let s = &d.socket();
    let (code, v) = barkeep(
        s,
        &[
            "acquire",
            "sim0",
            "0",
            "0x3000",
            "8K",
            "--map-at",
            "4K",
            "--read",
            "0x10:4",
            "--write",
            "0x10=deadbeef",
            "--read",
            "0x10:4",
            "--read",
            "0x12:2",
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["lease"]["offset"], 0x3000);
    assert_eq!(v["lease"]["length"], 0x2000);
    assert_eq!(v["lease"]["access"], "rw");
    assert_eq!(v["buffer"]["size"], 0x2000);
    assert_eq!(v["mapping"]["offset"], 0x1000);
    assert_eq!(v["mapping"]["length"], 0x1000);
    assert_eq!(
        v["reads"],
        serde_json::json!(["00000000", "deadbeef", "beef"])
    );
    assert_eq!(v["released"], true);
    // Mapping offset 0x10 at slice offset 0x1000 is BAR offset 0x4010.
    let (code, v) = barkeep(s, &["peek", "sim0", "0", "0x4010", "4"]);
    assert_eq!((code, v["hex"].as_str()), (0, Some("deadbeef")), "{v}");
    // The lease was released on exit.
    let (_, v) = barkeep(s, &["leases", "--all"]);
    assert_eq!(v["leases"], serde_json::json!([]));
}

#[test]
fn errors_are_one_json_object_with_a_stable_code_and_exit_status() {
    let d = daemon();
    let (code, v) = barkeep(&d.socket(), &["acquire", "sim0", "0", "0x1800", "4K"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["code"], 14);
    assert_eq!(v["error"]["slug"], "unaligned");
    assert!(v["error"]["message"].as_str().unwrap().contains("0x1800"));

    let (code, v) = barkeep(
        &d.socket(),
        &["acquire", "sim0", "0", "0", "4K", "--map-at", "8K"],
    );
    assert_eq!(
        (code, &v["error"]["slug"]),
        (1, &Value::from("out-of-range")),
        "{v}"
    );

    let (code, v) = barkeep(&d.socket(), &["poke", "sim0", "0", "0", "0xdead"]);
    assert_eq!((code, &v["error"]["code"]), (2, &Value::from(108)), "{v}");

    let (code, v) = barkeep(&d.dir().join("nothing.sock"), &["status"]);
    assert_eq!((code, &v["error"]["slug"]), (4, &Value::from("io")), "{v}");
}

#[test]
fn a_held_lease_that_is_revoked_exits_3_with_the_reason() {
    let d = daemon();
    let mut child = Command::new(env!("CARGO_BIN_EXE_barkeep"))
        .arg("--socket")
        .arg(d.socket())
        .args([
            "acquire", "sim0", "0", "0x8000", "4K", "--hold", "forever", "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The holding line on stderr says the lease is live, and names it.
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no lease id in {line:?}"))
        .to_string();
    let (code, v) = barkeep(&d.socket(), &["revoke", &id]);
    assert_eq!((code, &v["revoked"]), (0, &Value::from(1)), "{v}");
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{v}");
    assert_eq!(v["revoked"]["reason"], "admin");
    assert_eq!(v["lease"]["id"], id.as_str());
    assert_eq!(v["released"], false);
}
