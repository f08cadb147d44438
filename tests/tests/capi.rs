//! The C library from C: examples/c/slice.c, built with the system `cc`
//! through the pkg-config file made from capi/barkeep.pc.in (and once more
//! linked statically), acquires a slice of the simulated device, writes
//! through its mapping, and the daemon's peek sees the bytes;
//! examples/c/inherited.c does the same with a slice `barkeep exec` hands
//! it.

use barkeep_client::Client;
use barkeep_tests::{build_binaries, target_dir, workspace_root, TestDaemon, SIM_DEVICE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn policy() -> String {
    format!(
        r#"{SIM_DEVICE}
[[grant]]
device = "sim0"
bar = 0
windows = ["0x10000..0x20000"]
access = "rw"
uids = [{me}]

[admin]
uids = [{me}]
"#,
        me = barkeep_tests::me()
    )
}

/// Builds libbarkeep (debug) once; returns the directory holding it.
fn libdir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "barkeep-capi", "--lib"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p barkeep-capi failed");
        target_dir().join("debug")
    })
    .clone()
}

fn checked(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// barkeep.pc for the build tree: the template with its placeholders
/// filled in, as an install would.
fn pc_dir(tmp: &Path) -> PathBuf {
    let template = std::fs::read_to_string(workspace_root().join("capi/barkeep.pc.in"))
        .expect("capi/barkeep.pc.in");
    let pc = template
        .replace("@PREFIX@", &workspace_root().display().to_string())
        .replace("@LIBDIR@", &libdir().display().to_string())
        .replace(
            "@INCLUDEDIR@",
            &workspace_root().join("capi/include").display().to_string(),
        )
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    assert!(
        !pc.contains('@'),
        "a placeholder is left in barkeep.pc:\n{pc}"
    );
    std::fs::write(tmp.join("barkeep.pc"), pc).unwrap();
    tmp.to_path_buf()
}

fn pkg_config(tmp: &Path, args: &[&str]) -> Vec<String> {
    let out = checked(
        Command::new("pkg-config")
            .args(args)
            .arg("barkeep")
            .env("PKG_CONFIG_PATH", pc_dir(tmp))
            .output()
            .expect("run pkg-config"),
        "pkg-config",
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn example() -> PathBuf {
    workspace_root().join("examples/c/slice.c")
}

/// Builds an example against libbarkeep.so through pkg-config.
fn build(tmp: &Path, source: &str, exe: &str) -> PathBuf {
    let exe = tmp.join(exe);
    let flags = pkg_config(tmp, &["--cflags", "--libs"]);
    checked(
        Command::new("cc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe)
            .arg(workspace_root().join(source))
            .args(&flags)
            .arg(format!("-Wl,-rpath,{}", libdir().display()))
            .output()
            .expect("run cc"),
        "cc",
    );
    exe
}

#[test]
fn the_c_example_writes_through_its_slice() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(
        pkg_config(tmp.path(), &["--modversion"]),
        [env!("CARGO_PKG_VERSION")]
    );
    let exe = build(tmp.path(), "examples/c/slice.c", "slice");

    let d = TestDaemon::start(&policy());
    let out = checked(
        Command::new(&exe)
            .arg(d.socket())
            .arg("sim0:0:0x10000:8K")
            .output()
            .unwrap(),
        "the C example",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("read back 0xfeedf00d"), "{text}");
    assert!(
        text.contains("write past the end: out-of-range (105)"),
        "{text}"
    );
    assert!(text.contains("revoked: 0"), "{text}");
    assert!(text.contains("released, fd now -1"), "{text}");
    assert!(text.contains("on sim0 BAR0 0x10000+0x2000"), "{text}");

    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(
        admin.peek("sim0", 0, 0x10010, 4).unwrap(),
        0xfeed_f00du32.to_ne_bytes()
    );
    assert_eq!(
        admin.peek("sim0", 0, 0x10020, 8).unwrap(),
        0x0123_4567_89ab_cdefu64.to_ne_bytes()
    );
    assert!(admin.leases(true).unwrap().is_empty());

    // A refused slice: the daemon's reason reaches C with its code.
    let out = Command::new(&exe)
        .arg(d.socket())
        .arg("sim0:0:0x80000:4K")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[outside-window 21]"), "{err}");
}

#[test]
fn the_c_example_links_statically_too() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("slice-static");
    let mut private = pkg_config(tmp.path(), &["--static", "--libs-only-l"]);
    private.retain(|l| l != "-lbarkeep");
    checked(
        Command::new("cc")
            .args(["-std=c11", "-Wall", "-Werror", "-o"])
            .arg(&exe)
            .arg(example())
            .args(pkg_config(tmp.path(), &["--cflags"]))
            .arg(libdir().join("libbarkeep.a"))
            .args(&private)
            .output()
            .expect("run cc"),
        "cc (static)",
    );
    let d = TestDaemon::start(&policy());
    checked(
        Command::new(&exe)
            .arg("-")
            .arg("sim0:0:0x1f000:4K")
            .env("BARKEEP_SOCKET", d.socket())
            .output()
            .unwrap(),
        "the statically linked example",
    );
    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(
        admin.peek("sim0", 0, 0x1f010, 4).unwrap(),
        0xfeed_f00du32.to_ne_bytes()
    );
}

#[test]
fn a_c_program_started_by_barkeep_exec_uses_its_inherited_slice() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path(), "examples/c/inherited.c", "inherited");
    let d = TestDaemon::start(&policy());
    let out = checked(
        Command::new(build_binaries("dev").cli)
            .arg("--socket")
            .arg(d.socket())
            .args(["exec", "--slice", "sim0:0:0x12000:4K", "--"])
            .arg(&exe)
            .args(["0x40", "0xc0ffee00"])
            .output()
            .unwrap(),
        "barkeep exec inherited",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sim0 BAR0 0x12000+0x1000"), "{text}");
    assert!(
        text.contains("wrote 0xc0ffee00 at 0x40, revoked: 0"),
        "{text}"
    );
    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(
        admin.peek("sim0", 0, 0x12040, 4).unwrap(),
        0xc0ff_ee00u32.to_ne_bytes()
    );
    assert!(admin.leases(true).unwrap().is_empty());

    // Run directly, it has nothing to work with and says how to fix it.
    let out = Command::new(&exe).args(["0", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("barkeep exec"));
}
