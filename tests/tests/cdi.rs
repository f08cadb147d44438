//! `barkeep cdi`: the spec it writes is valid against the CDI schema
//! (tests/fixtures/cdi-schema.json, written from the CDI specification), and
//! its container edits are enough for the in-container client: with only
//! the spec's environment, `barkeep exec` acquires the listed slices. Each
//! `--slice` is checked against the daemon before anything is written, and
//! the container's socket keeps the host socket's file name.

use barkeep_client::Client;
use barkeep_tests::{admin_me, build_binaries, grant_me, workspace_root, TestDaemon, SIM_DEVICE};
use serde_json::{json, Value};
use std::process::{Command, Output};

fn barkeep(args: &[&str]) -> Output {
    Command::new(build_binaries("dev").cli)
        .args(args)
        .output()
        .expect("run barkeep")
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(workspace_root().join("tests/fixtures/cdi-schema.json"))
        .expect("the CDI schema");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON schema")
}

fn errors(v: &jsonschema::Validator, spec: &Value) -> Vec<String> {
    v.iter_errors(spec).map(|e| e.to_string()).collect()
}

fn yaml_spec(args: &[&str]) -> Value {
    let out = barkeep(args);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

const ARGS: &[&str] = &[
    "cdi",
    "--device",
    "worker-1",
    "--slice",
    "sim0:0:0x10000:4K:wc",
    "--slice",
    "sim0:2:0:4K:ro",
    "--host-socket",
    "/run/barkeep/barkeep.sock",
    // No daemon behind that socket: these tests are about the spec.
    "--no-check",
];

#[test]
fn the_spec_validates_against_the_cdi_schema() {
    let v = validator();
    let spec = yaml_spec(ARGS);
    assert_eq!(errors(&v, &spec), Vec::<String>::new(), "{spec:#}");
    assert_eq!(spec["kind"], "barkeep.io/slice");
    assert_eq!(spec["cdiVersion"], "0.8.0");
    assert_eq!(spec["devices"][0]["name"], "worker-1");

    // JSON output is the same spec.
    let mut args = ARGS.to_vec();
    args.extend(["--format", "json"]);
    let out = barkeep(&args);
    let json_spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json_spec, spec);

    // Every version it offers validates too.
    for version in ["0.6.0", "1.1.0"] {
        let mut args = ARGS.to_vec();
        args.extend(["--cdi-version", version]);
        let spec = yaml_spec(&args);
        assert_eq!(spec["cdiVersion"], version);
        assert!(v.is_valid(&spec));
    }
}

/// A change that makes a spec invalid.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn the_schema_refuses_what_runtimes_refuse() {
    let v = validator();
    let good = yaml_spec(ARGS);
    assert!(v.is_valid(&good));
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "unknown field",
            Box::new(|s| s["devices"][0]["containerEdits"]["volumes"] = json!([])),
        ),
        (
            "kind without vendor",
            Box::new(|s| s["kind"] = json!("slice")),
        ),
        (
            "bad device name",
            Box::new(|s| s["devices"][0]["name"] = json!("-w")),
        ),
        ("no devices", Box::new(|s| s["devices"] = json!([]))),
        (
            "env without =",
            Box::new(|s| s["devices"][0]["containerEdits"]["env"][0] = json!("BARKEEP_SOCKET")),
        ),
        (
            "mount without hostPath",
            Box::new(|s| {
                s["devices"][0]["containerEdits"]["mounts"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("hostPath");
            }),
        ),
        (
            "version not semver",
            Box::new(|s| s["cdiVersion"] = json!("0.8")),
        ),
    ];
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!v.is_valid(&bad), "the schema accepted a spec with {what}");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["cdi", "--device", "bad name"][..],
        &["cdi", "--device", "w", "--cdi-version", "9.9.9"][..],
        &[
            "cdi",
            "--device",
            "w",
            "--container-socket",
            "/run/x/other.sock",
        ][..],
        &["cdi", "--device", "w", "--slice", "sim0:0"][..],
    ] {
        let out = barkeep(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn the_spec_environment_is_all_the_in_container_client_needs() {
    let d = TestDaemon::start(&format!(
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
    ));
    let socket = d.socket().to_str().unwrap();
    let file = d.dir().join("barkeep.yaml");
    let out = barkeep(&[
        "cdi",
        "--device",
        "w",
        "--slice",
        "sim0:0:0x14000:4K",
        "--host-socket",
        socket,
        "--container-socket",
        socket,
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let spec: Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(validator().is_valid(&spec));
    let edits = &spec["devices"][0]["containerEdits"];
    assert_eq!(
        edits["mounts"][0]["hostPath"],
        d.dir().to_str().unwrap(),
        "the socket's directory is mounted"
    );

    // A "container": nothing but the spec's environment, no --socket, no
    // --slice.
    let mut cmd = Command::new(build_binaries("dev").cli);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap());
    for e in edits["env"].as_array().unwrap() {
        let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
        cmd.env(k, v);
    }
    let out = cmd
        .args([
            "exec",
            "--",
            env!("CARGO_BIN_EXE_bk-inherit"),
            "write",
            "0",
            "8",
            "0a0b",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let admin = Client::connect(d.socket()).unwrap();
    assert_eq!(admin.peek("sim0", 0, 0x14008, 2).unwrap(), [0x0a, 0x0b]);
}

#[test]
fn the_container_socket_keeps_the_host_socket_file_name() {
    let spec = yaml_spec(&[
        "cdi",
        "--device",
        "w",
        "--host-socket",
        "/srv/bk/custom.sock",
        "--no-check",
    ]);
    let edits = &spec["devices"][0]["containerEdits"];
    assert_eq!(edits["mounts"][0]["hostPath"], "/srv/bk");
    assert_eq!(edits["mounts"][0]["containerPath"], "/run/barkeep");
    assert_eq!(edits["env"][0], "BARKEEP_SOCKET=/run/barkeep/custom.sock");
    let spec = yaml_spec(&[
        "cdi",
        "--device",
        "w",
        "--host-socket",
        "/srv/bk/custom.sock",
        "--container-dir",
        "/var/run/bk",
        "--no-check",
    ]);
    let edits = &spec["devices"][0]["containerEdits"];
    assert_eq!(edits["mounts"][0]["containerPath"], "/var/run/bk");
    assert_eq!(edits["env"][0], "BARKEEP_SOCKET=/var/run/bk/custom.sock");
}

#[test]
fn each_slice_is_checked_against_the_daemon_before_the_spec_is_written() {
    let d = TestDaemon::start(&format!(
        "{SIM_DEVICE}{}{}",
        grant_me(
            "sim0",
            0,
            "windows = [\"0x10000..0x20000\"]\naccess = \"rw\""
        ),
        admin_me()
    ));
    let socket = d.socket().to_str().unwrap().to_string();
    let socket = socket.as_str();
    let keep = tempfile::tempdir().unwrap();
    let file = keep.path().join("spec.yaml");
    let cdi = |slice: &str, extra: &[&str]| {
        let mut args = vec![
            "--json",
            "cdi",
            "--device",
            "w",
            "--host-socket",
            socket,
            "--output",
            file.to_str().unwrap(),
            "--slice",
            slice,
        ];
        args.extend_from_slice(extra);
        let out = barkeep(&args);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
        (out.status.code(), v)
    };
    let me = barkeep_tests::me().to_string();
    // Good: written; with the container's uid (the granted one) too.
    let (code, v) = cdi("sim0:0:0x10000:4K", &["--uid", &me]);
    assert_eq!(code, Some(0), "{v}");
    assert!(file.exists());
    std::fs::remove_file(&file).unwrap();
    // Without --uid, the policy is not the question (the caller is not the
    // container), so a slice outside this user's window still passes.
    let (code, v) = cdi("sim0:0:0x40000:4K", &[]);
    assert_eq!(code, Some(0), "{v}");
    std::fs::remove_file(&file).unwrap();
    // Each problem is named, and nothing is written.
    for (slice, extra, slug) in [
        ("nic9:0:0x10000:4K", &[][..], "unknown-device"),
        ("sim0:4:0:4K", &[][..], "no-such-bar"),
        ("sim0:0:0x10800:4K", &[][..], "unaligned"),
        ("sim0:2:0x8000:4K", &[][..], "not-mappable"),
        (
            "sim0:0:0x10000:4K",
            &["--uid", "4242", "--gid", "4242", "--groups", ""][..],
            "denied",
        ),
        (
            "sim0:0:0x40000:4K",
            &["--uid", me.as_str()][..],
            "outside-window",
        ),
    ] {
        let (code, v) = cdi(slice, extra);
        assert_eq!(code, Some(1), "{slice} {extra:?}: {v}");
        assert_eq!(v["error"]["slug"], slug, "{slice} {extra:?}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(slice) || message.contains("--slice"),
            "{message}"
        );
        assert!(!file.exists(), "{slice}: a spec was written anyway");
    }
    // No daemon: says so, and how to write the spec anyway.
    drop(d);
    let out = barkeep(&[
        "cdi",
        "--device",
        "w",
        "--host-socket",
        socket,
        "--slice",
        "sim0:0:0x10000:4K",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-check"),
        "{out:?}"
    );
}
