//! The client library's examples (client/examples/) run against the real
//! daemon on a simulated device and do what their documentation says: the
//! bytes they write are where the daemon's peek finds them.

use barkeep_client::Client;
use barkeep_tests::{build_binaries, sim_policy, target_dir, workspace_root, TestDaemon};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Builds the examples once; returns their directory.
fn examples() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "barkeep-client", "--examples"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --examples failed");
        target_dir().join("debug/examples")
    })
    .clone()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{:?}: stdout {stdout}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn acquire_map_writes_through_its_mapping() {
    let d = TestDaemon::start(&sim_policy());
    let out = ok(Command::new(examples().join("acquire_map"))
        .env("BARKEEP_SOCKET", d.socket())
        .args(["sim0", "0", "0x10000", "4096"])
        .output()
        .unwrap());
    assert!(out.contains("read back 0xdeadbeef"), "{out}");
    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(
        admin.peek("sim0", 0, 0x10010, 4).unwrap(),
        0xdead_beef_u32.to_ne_bytes()
    );
    assert!(
        admin.leases(true).unwrap().is_empty(),
        "the lease was released"
    );
    // A refusal is the library's explanation, exit 1.
    let out = Command::new(examples().join("acquire_map"))
        .env("BARKEEP_SOCKET", d.socket())
        .args(["sim0", "0", "0x10800", "4096"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0x10800"),
        "{out:?}"
    );
}

#[test]
fn inherited_writes_through_the_slice_barkeep_exec_handed_it() {
    let d = TestDaemon::start(&sim_policy());
    let out = ok(Command::new(build_binaries("dev").cli)
        .arg("--socket")
        .arg(d.socket())
        .args(["exec", "--slice", "sim0:0:0x20000:4K", "--"])
        .arg(examples().join("inherited"))
        .args(["0x40", "0xc0ffee"])
        .output()
        .unwrap());
    assert!(
        out.contains("sim0:0:0x20000:0x1000") && out.contains("read back 0xc0ffee"),
        "{out}"
    );
    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(
        admin.peek("sim0", 0, 0x20040, 4).unwrap(),
        0xc0ffee_u32.to_ne_bytes()
    );
    // Without barkeep exec it says what to do.
    let out = Command::new(examples().join("inherited"))
        .args(["0x40", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("barkeep exec"));
}

#[test]
fn async_acquire_writes_both_slices() {
    let d = TestDaemon::start(&sim_policy());
    let out = ok(Command::new(examples().join("async_acquire"))
        .env("BARKEEP_SOCKET", d.socket())
        .args(["sim0", "0", "0x30000"])
        .output()
        .unwrap());
    assert_eq!(out.matches("wrote 0x10203040506070").count(), 2, "{out}");
    let admin = Client::connect(d.socket()).unwrap();
    let page = barkeep_client::page_size();
    for (i, at) in [0x30000, 0x30000 + page].into_iter().enumerate() {
        assert_eq!(
            admin.peek("sim0", 0, at, 8).unwrap(),
            (0x0102_0304_0506_0708_u64 + i as u64).to_ne_bytes()
        );
    }
    assert!(
        admin.leases(true).unwrap().is_empty(),
        "both leases released"
    );
}
