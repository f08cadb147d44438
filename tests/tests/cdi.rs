//! `barkeep cdi`: the spec it writes is valid against the CDI schema
//! (tests/fixtures/cdi-schema.json, written from the CDI specification), and
//! its container edits are enough for the in-container client: with only
//! the spec's environment, `barkeep exec` acquires the listed slices.

use barkeep_client::Client;
use barkeep_tests::{build_binaries, workspace_root, TestDaemon, SIM_DEVICE};
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
