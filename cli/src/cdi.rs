//! `barkeep cdi`: a Container Device Interface spec that gives a container
//! the daemon's socket and tells it which slices to acquire.
//!
//! The spec grants nothing by itself: the daemon still decides every
//! acquire from the caller's identity (uid, groups, cgroup) against its
//! policy. What the spec does is put the socket where the in-container
//! client looks (`$BARKEEP_SOCKET`) and name the slices meant for this
//! device (`$BARKEEP_CDI_SLICES`, which `barkeep exec` acquires when given
//! no `--slice`). See docs/containers.md.
//!
//! Before writing, each `--slice` is checked against the daemon (device,
//! BAR, range, alignment; with `--uid`, the policy for the container's
//! identity), so a typo shows up here and not as a failed container start.

use crate::{exit, Failure, Outcome};
use barkeep_client::{
    format_slice_spec, ClientCode, ErrorCode, ExplainRequest, PeerIdentity, SliceRequest,
    CDI_SLICES_ENV,
};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The CDI kind of every device barkeep describes.
pub(crate) const KIND: &str = "barkeep.io/slice";

/// CDI spec versions this command can declare. Our edits (env and mounts)
/// exist since 0.3.0; runtimes reject versions newer than they know.
const KNOWN_VERSIONS: [&str; 9] = [
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0", "1.1.1",
];

/// The default `cdiVersion`: understood by the CDI library in podman 5,
/// containerd 2 and CRI-O 1.30 and later (1.x only by the newest).
pub(crate) const DEFAULT_VERSION: &str = "0.8.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// YAML (a file under /etc/cdi ending in .yaml)
    Yaml,
    /// JSON (a file under /etc/cdi ending in .json)
    Json,
}

#[derive(Args, Debug)]
pub(crate) struct CdiArgs {
    /// CDI device name, used as `--device barkeep.io/slice=NAME`
    #[arg(long, value_name = "NAME")]
    pub device: String,
    /// A slice the container should acquire, DEVICE:BAR:OFFSET:LENGTH[:ro][:wc]
    /// (repeatable); passed in $BARKEEP_CDI_SLICES
    #[arg(long = "slice", value_name = "SPEC", value_parser = barkeep_client::parse_slice_spec)]
    pub slices: Vec<SliceRequest>,
    /// The daemon's socket on the host [default: --socket, $BARKEEP_SOCKET, else /run/barkeep/barkeep.sock]
    #[arg(long, value_name = "PATH")]
    pub host_socket: Option<PathBuf>,
    /// The directory where the host socket's directory appears in the
    /// container; the socket keeps its file name [default: /run/barkeep]
    #[arg(long, value_name = "DIR", conflicts_with = "container_socket")]
    pub container_dir: Option<PathBuf>,
    /// Where the socket appears in the container; its file name must be
    /// the host socket's [default: --container-dir + the host socket's file name]
    #[arg(long, value_name = "PATH")]
    pub container_socket: Option<PathBuf>,
    /// The container's uid (number or user name): each --slice is checked
    /// against the policy for it. Without it, only device, BAR, range and
    /// alignment are checked
    #[arg(long, value_name = "UID|USER")]
    pub uid: Option<String>,
    /// The container's primary gid [default: the user's, from the password database]
    #[arg(long, value_name = "GID|GROUP", requires = "uid")]
    pub gid: Option<String>,
    /// The container's supplementary groups, comma separated ("" for none)
    /// [default: the user's, from the group database]
    #[arg(long, value_name = "G,G...", value_delimiter = ',', requires = "uid")]
    pub groups: Option<Vec<String>>,
    /// The container's cgroup v2 path (e.g. under its --cgroup-parent)
    #[arg(long, value_name = "PATH", requires = "uid")]
    pub cgroup: Option<String>,
    /// The container's LSM label
    #[arg(long, value_name = "LABEL", requires = "uid")]
    pub label: Option<String>,
    /// Write the spec without asking the daemon about the slices
    #[arg(long)]
    pub no_check: bool,
    /// The `cdiVersion` to declare
    #[arg(long, value_name = "X.Y.Z", default_value = DEFAULT_VERSION, value_parser = parse_version)]
    pub cdi_version: String,
    /// Output format
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: Format,
    /// Write the spec to FILE instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Where the host socket's directory is mounted in the container unless
/// told otherwise.
const DEFAULT_CONTAINER_DIR: &str = "/run/barkeep";

/// The container's socket: `--container-socket` as given, else the host
/// socket's file name in `--container-dir` (default /run/barkeep).
fn container_socket(a: &CdiArgs, host_socket: &Path) -> PathBuf {
    if let Some(p) = &a.container_socket {
        return p.clone();
    }
    let dir = a
        .container_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINER_DIR));
    match host_socket.file_name() {
        Some(name) => dir.join(name),
        // spec() refuses a host socket without a file name.
        None => dir,
    }
}

/// Policy refusals that say nothing about the slice itself: without
/// `--uid` the checking identity is the caller's, not the container's.
fn is_policy_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Denied
            | ErrorCode::OutsideWindow
            | ErrorCode::AccessDenied
            | ErrorCode::WcDenied
    )
}

/// Asks the daemon about each slice: an error names the first slice it
/// would refuse and why.
fn check_slices(a: &CdiArgs, host_socket: &Path) -> Result<(), Failure> {
    let client = crate::commands::connect(host_socket).map_err(|mut f| {
        f.message = format!(
            "{}; cannot check the slices against the daemon (--no-check writes the spec without asking)",
            f.message
        );
        f
    })?;
    let me = &client.welcome().identity;
    let who: PeerIdentity = match &a.uid {
        Some(uid) => crate::policy::resolve_identity(
            uid,
            a.gid.as_deref(),
            a.groups.as_deref(),
            a.cgroup.as_deref(),
            a.label.as_deref(),
            me,
        )?,
        None => PeerIdentity {
            pid: 0,
            ..me.clone()
        },
    };
    for slice in &a.slices {
        let d = client.explain(ExplainRequest {
            who: who.clone(),
            slice: slice.clone(),
        })?;
        let Some(code) = d.code.filter(|_| !d.allowed) else {
            continue;
        };
        if a.uid.is_none() && is_policy_refusal(code) {
            continue;
        }
        let whose = if a.uid.is_some() {
            format!(" for uid {}", who.uid)
        } else {
            String::new()
        };
        return Err(Failure {
            code: code.number(),
            slug: code.slug(),
            message: format!(
                "--slice {}: the daemon would refuse it{whose}: {} ({})",
                format_slice_spec(slice),
                d.reason,
                d.rule
            ),
            exit: exit::FAILED,
        });
    }
    Ok(())
}

fn parse_version(s: &str) -> Result<String, String> {
    if KNOWN_VERSIONS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a CDI spec version: use one of {}",
            KNOWN_VERSIONS.join(", ")
        ))
    }
}

/// CDI device names: start and end alphanumeric, `-`, `_`, `.` between.
fn check_device_name(name: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(f), Some(l))
            if f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && bytes.iter().all(|&b| ok(b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{name:?} is not a CDI device name: use letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit"
        )),
    }
}

/// The spec as a JSON value (YAML is written from the same value).
pub(crate) fn spec(
    device: &str,
    slices: &[SliceRequest],
    host_socket: &Path,
    container_socket: &Path,
    version: &str,
) -> Result<Value, String> {
    check_device_name(device)?;
    let (Some(host_dir), Some(host_name)) = (host_socket.parent(), host_socket.file_name()) else {
        return Err(format!(
            "{}: give the daemon's socket as a file path",
            host_socket.display()
        ));
    };
    let (Some(ctr_dir), Some(ctr_name)) = (container_socket.parent(), container_socket.file_name())
    else {
        return Err(format!(
            "{}: give the container's socket as a file path",
            container_socket.display()
        ));
    };
    if !host_socket.is_absolute() || !container_socket.is_absolute() {
        return Err("socket paths in a CDI spec must be absolute".into());
    }
    if host_name != ctr_name {
        return Err(format!(
            "the container socket must have the host socket's file name ({}): the whole \
             directory {} is mounted, so the socket survives a daemon restart",
            host_name.to_string_lossy(),
            host_dir.display()
        ));
    }
    let mut env = vec![
        json!(format!("BARKEEP_SOCKET={}", container_socket.display())),
        json!(format!("BARKEEP_CDI_DEVICE={device}")),
    ];
    if !slices.is_empty() {
        let specs: Vec<String> = slices.iter().map(format_slice_spec).collect();
        env.push(json!(format!("{CDI_SLICES_ENV}={}", specs.join(" "))));
    }
    Ok(json!({
        "cdiVersion": version,
        "kind": KIND,
        "devices": [{
            "name": device,
            "containerEdits": {
                "env": env,
                "mounts": [{
                    "hostPath": host_dir.display().to_string(),
                    "containerPath": ctr_dir.display().to_string(),
                    "type": "none",
                    // Read-only is enough: connect() needs no write access
                    // to the mount, and the container cannot replace the
                    // socket.
                    "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
                }],
            },
        }],
    }))
}

/// YAML for a JSON value: block style, every string double-quoted (JSON
/// string syntax is valid YAML), so no value can be misread.
pub(crate) fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_value(v, 0, &mut out);
    out
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn yaml_value(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                let key = Value::String(k.clone()).to_string();
                let key = if k.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    k.clone()
                } else {
                    key
                };
                if is_block(val) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    let child = if val.is_array() { indent } else { indent + 2 };
                    yaml_value(val, child, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", yaml_scalar(val)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // "- " then the item's first line; the rest indented.
                    let mut inner = String::new();
                    yaml_value(item, indent + 2, &mut inner);
                    let trimmed = inner.trim_start_matches(' ');
                    out.push_str(&format!("{pad}- {trimmed}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", yaml_scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", yaml_scalar(other))),
    }
}

pub(crate) fn run(a: &CdiArgs, socket: Option<&Path>) -> Result<Outcome, Failure> {
    let host_socket = a
        .host_socket
        .clone()
        .or_else(|| socket.map(Path::to_path_buf))
        .unwrap_or_else(barkeep_client::default_socket_path);
    let usage = |m: String| Failure::new(ClientCode::Usage, m, exit::USAGE);
    let spec = spec(
        &a.device,
        &a.slices,
        &host_socket,
        &container_socket(a, &host_socket),
        &a.cdi_version,
    )
    .map_err(usage)?;
    if !a.no_check && !a.slices.is_empty() {
        check_slices(a, &host_socket)?;
    }
    let text = match a.format {
        Format::Yaml => format!(
            "# CDI spec written by `barkeep cdi`: podman run --device {KIND}={}\n---\n{}",
            a.device,
            to_yaml(&spec)
        ),
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&spec).expect("json")),
    };
    match &a.output {
        None => Ok(Outcome {
            json: spec,
            human: text,
            exit: exit::OK,
        }),
        Some(path) => {
            std::fs::write(path, &text).map_err(|e| {
                Failure::new(
                    ClientCode::Io,
                    format!("cannot write {}: {e}", path.display()),
                    exit::FAILED,
                )
            })?;
            Ok(Outcome {
                json: json!({"written": path.display().to_string(), "spec": spec}),
                human: format!(
                    "wrote {}: run containers with --device {KIND}={}\n",
                    path.display(),
                    a.device
                ),
                exit: exit::OK,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_follow_the_cdi_rules() {
        assert!(check_device_name("nic0").is_ok());
        assert!(check_device_name("gpu-0.vf_1").is_ok());
        for bad in ["", "-a", "a-", "a/b", "a b", "a=b"] {
            assert!(check_device_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_socket_directory_is_mounted_and_the_slices_are_in_the_environment() {
        let s = spec(
            "worker",
            &[barkeep_client::parse_slice_spec("sim0:0:64K:4K:wc").unwrap()],
            Path::new("/run/barkeep/barkeep.sock"),
            Path::new("/run/barkeep/barkeep.sock"),
            DEFAULT_VERSION,
        )
        .unwrap();
        let edits = &s["devices"][0]["containerEdits"];
        assert_eq!(edits["mounts"][0]["hostPath"], "/run/barkeep");
        let env: Vec<&str> = edits["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.contains(&"BARKEEP_SOCKET=/run/barkeep/barkeep.sock"));
        assert!(env.contains(&"BARKEEP_CDI_SLICES=sim0:0:0x10000:0x1000:wc"));
        assert!(spec(
            "w",
            &[],
            Path::new("/run/barkeep/barkeep.sock"),
            Path::new("/run/other.sock"),
            DEFAULT_VERSION
        )
        .is_err());
    }

    #[test]
    fn yaml_output_nests_maps_and_lists() {
        let v = json!({"a": "x:y", "list": [{"k": 1, "m": ["p", "q"]}], "e": []});
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "a: \"x:y\"\ne: []\nlist:\n- k: 1\n  m:\n  - \"p\"\n  - \"q\"\n"
        );
    }
}
