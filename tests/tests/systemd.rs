//! The systemd units and the Debian package metadata: `systemd-analyze
//! verify` and `systemd-analyze security --offline=yes` on the shipped units
//! (exposure at most 2.0), the shipped configuration is valid, units, config
//! and clients agree on paths, and cargo-deb packages every file in
//! systemd/ and every man page and completion packaging/build-deb.sh makes.
//!
//! The systemd-analyze tests print `SKIPPED:` and pass when systemd-analyze
//! is missing, unless `BARKEEP_REQUIRE_VM=1` (CI), where that is a failure.

use barkeep_tests::{build_binaries, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The highest `systemd-analyze security` exposure the service may have.
const MAX_EXPOSURE: f64 = 2.0;

fn systemd_dir() -> PathBuf {
    workspace_root().join("systemd")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Writes past libtest's capture, so that a plain `cargo test` shows it.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `systemd-analyze`, or `None` after printing why the test is skipped.
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = "systemd-analyze not found (Debian package `systemd`)";
        if std::env::var_os("BARKEEP_REQUIRE_VM").is_some_and(|v| v == "1") {
            panic!("BARKEEP_REQUIRE_VM=1 but the systemd unit checks cannot run: {why}");
        }
        say(&format!("SKIPPED: systemd unit checks: {why}"));
    }
    found
}

/// The two units in a temporary directory, with `/usr/bin/barkeepd` replaced
/// by the freshly built binary so that `verify` finds an executable.
fn units_with_built_binary() -> tempfile::TempDir {
    let daemon = build_binaries("dev").daemon;
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["barkeepd.service", "barkeepd.socket"] {
        let text = read(&systemd_dir().join(name))
            .replace("/usr/bin/barkeepd", daemon.to_str().expect("UTF-8 path"));
        std::fs::write(dir.path().join(name), text).expect("write unit copy");
    }
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn units_pass_systemd_analyze_verify_without_warnings() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = units_with_built_binary();
    let out = run(Command::new(&analyze)
        .args(["verify", "--man=no", "--generators=no"])
        .arg(dir.path().join("barkeepd.socket"))
        .arg(dir.path().join("barkeepd.service")));
    let all = text(&out);
    // verify exits 0 on unknown keys and bad values; they only show up as
    // lines naming the file. Lines about the host's own units are not ours.
    let ours: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("barkeepd.service") || l.contains("barkeepd.socket"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify on barkeepd.socket + barkeepd.service ({}):\n{all}",
        out.status
    );
}

#[test]
fn service_exposure_is_at_most_2() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = units_with_built_binary();
    let out = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(dir.path().join("barkeepd.service")));
    let all = text(&out);
    // "→ Overall exposure level for barkeepd.service: 0.7 SAFE 😀"
    let score = all
        .lines()
        .find_map(|l| {
            let rest = l
                .split("Overall exposure level for barkeepd.service:")
                .nth(1)?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no exposure score in the output of systemd-analyze security ({}):\n{all}",
                out.status
            )
        });
    say(&format!(
        "systemd-analyze security: barkeepd.service exposure {score:.1} (limit {MAX_EXPOSURE:.1})"
    ));
    assert!(
        score <= MAX_EXPOSURE,
        "barkeepd.service exposure {score} is above {MAX_EXPOSURE}; the settings that cost most:\n{all}"
    );
}

/// The value of `key=` in a unit file (the last one, as systemd reads it).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().to_string())
}

/// The `socket = "..."` of a barkeep configuration.
fn config_socket(config: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let rest = l
            .trim()
            .strip_prefix("socket")?
            .trim_start()
            .strip_prefix('=')?;
        Some(rest.trim().trim_matches('"').to_string())
    })
}

#[test]
fn socket_service_config_and_clients_agree_on_paths() {
    let socket = read(&systemd_dir().join("barkeepd.socket"));
    let service = read(&systemd_dir().join("barkeepd.service"));
    let config = read(&systemd_dir().join("barkeep.toml"));

    let listen = unit_value(&socket, "ListenSequentialPacket").expect("ListenSequentialPacket=");
    assert_eq!(
        listen,
        barkeep_protocol::DEFAULT_SOCKET,
        "the socket unit must listen where clients look by default"
    );
    assert_eq!(
        config_socket(&config).as_deref(),
        Some(listen.as_str()),
        "systemd/barkeep.toml's `socket` must be the socket unit's path"
    );
    // The daemon picks its socket out of LISTEN_FDS by this name.
    assert_eq!(
        unit_value(&socket, "FileDescriptorName").as_deref(),
        Some("barkeep")
    );
    // The socket's directory is the service's RuntimeDirectory=, which is
    // kept across restarts for the state file.
    let runtime = unit_value(&service, "RuntimeDirectory").expect("RuntimeDirectory=");
    assert_eq!(
        Path::new(&listen).parent(),
        Some(Path::new("/run").join(&runtime).as_path())
    );
    assert_eq!(
        unit_value(&service, "RuntimeDirectoryPreserve").as_deref(),
        Some("yes")
    );
    let exec = unit_value(&service, "ExecStart").expect("ExecStart=");
    assert_eq!(exec, "/usr/bin/barkeepd --config /etc/barkeep/barkeep.toml");
    assert_eq!(unit_value(&service, "Type").as_deref(), Some("notify"));
    // The fd store is what keeps clients' mappings across a restart.
    let store: u32 = unit_value(&service, "FileDescriptorStoreMax")
        .and_then(|v| v.parse().ok())
        .expect("FileDescriptorStoreMax= with a number");
    // Device fds plus the stash's segments (one per 8096 leases, and a
    // few while repacking): 100,000 leases need about 15.
    assert!(store >= 64, "FileDescriptorStoreMax={store} is too small");
    // The stash's fds in flight count against RLIMIT_NOFILE: about twice
    // the live leases, 100,000 of them.
    let nofile: u64 = unit_value(&service, "LimitNOFILE")
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE= with a number");
    assert!(
        nofile >= 400_000,
        "LimitNOFILE={nofile} cannot hold 100,000 leases"
    );
    // Audit lines are not dropped by journald's rate limit: a non-zero
    // interval (0 would mean journald's default, 10,000 per 30 s) with a
    // burst no grant storm reaches.
    assert_eq!(
        unit_value(&service, "LogRateLimitIntervalSec").as_deref(),
        Some("1s")
    );
    let burst: u64 = unit_value(&service, "LogRateLimitBurst")
        .and_then(|v| v.parse().ok())
        .expect("LogRateLimitBurst= with a number");
    assert!(burst >= 1_000_000, "LogRateLimitBurst={burst} per second");
    let user = unit_value(&service, "User").expect("User=");
    let sysusers = read(&systemd_dir().join("sysusers.d/barkeep.conf"));
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user.as_str()])),
        "sysusers.d/barkeep.conf must create the service's User={user}"
    );
}

#[test]
fn shipped_configurations_pass_check_config() {
    let daemon = build_binaries("dev").daemon;
    let dir = systemd_dir();
    for file in [
        dir.join("barkeep.toml"),
        dir.join("examples/sim.toml"),
        dir.join("examples/vfio.toml"),
    ] {
        let out = run(Command::new(&daemon).arg("check-config").arg(&file));
        assert!(
            out.status.success(),
            "barkeepd check-config {} failed ({}):\n{}",
            file.display(),
            out.status,
            text(&out)
        );
    }
}

/// (source, destination) of each `[package.metadata.deb]` asset in
/// daemon/Cargo.toml, read line by line (one `["src", "dest", "mode"]` per
/// line, as written there).
fn deb_assets(manifest: &str) -> Vec<(String, String)> {
    let section = manifest
        .split("\n[package.metadata.deb]\n")
        .nth(1)
        .expect("daemon/Cargo.toml has [package.metadata.deb]");
    let assets = section
        .split("\nassets = [\n")
        .nth(1)
        .expect("[package.metadata.deb] has an assets list")
        .split("\n]")
        .next()
        .unwrap_or_default();
    assets
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[\""))
        .map(|l| {
            let strings: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            assert!(strings.len() >= 2, "unreadable asset line {l:?}");
            (strings[0].to_string(), strings[1].to_string())
        })
        .collect()
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path, prefix: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let rel = prefix.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            files_under(&entry.path(), &rel, out);
        } else {
            out.push(rel);
        }
    }
}

#[test]
fn deb_metadata_packages_every_systemd_file_and_names_existing_ones() {
    let daemon_dir = workspace_root().join("daemon");
    let manifest = read(&daemon_dir.join("Cargo.toml"));
    let assets = deb_assets(&manifest);

    let mut built = Vec::new();
    for (src, dest) in &assets {
        // Made by packaging/build-deb.sh: checked by
        // deb_metadata_packages_the_generated_man_pages_and_completions.
        if src.starts_with("target/release/assets/") {
            continue;
        }
        if let Some(bin) = src.strip_prefix("target/release/") {
            built.push(bin.to_string());
            assert_eq!(dest, "usr/bin/", "{src} goes to /usr/bin");
            continue;
        }
        let path = daemon_dir.join(src);
        assert!(
            path.is_file(),
            "asset {src} -> {dest}: {} does not exist",
            path.display()
        );
    }
    built.sort();
    assert_eq!(built, ["barkeep", "barkeepd"]);

    // The units are found by name: unit-scripts holds
    // `<unit-name>.service` and `.socket`, which cargo-deb installs and
    // writes the enable/start/restart scripts for.
    let units = manifest
        .split("\n[package.metadata.deb.systemd-units]")
        .nth(1)
        .expect("daemon/Cargo.toml has [package.metadata.deb.systemd-units]");
    assert!(units.contains("\nunit-scripts = \"../systemd/\"\n"));
    assert!(units.contains("\nunit-name = \"barkeepd\"\n"));
    let by_unit_name = ["barkeepd.service", "barkeepd.socket"];

    // Every other file in systemd/ is an asset, except the maintainer
    // scripts, which cargo-deb takes from maintainer-scripts.
    let mut files = Vec::new();
    files_under(&systemd_dir(), Path::new(""), &mut files);
    for rel in files {
        if rel.starts_with("debian") || by_unit_name.iter().any(|u| rel == Path::new(u)) {
            continue;
        }
        let src = format!("../systemd/{}", rel.display());
        assert!(
            assets.iter().any(|(s, _)| *s == src),
            "systemd/{} is not in [package.metadata.deb] assets",
            rel.display()
        );
    }

    // Where sysusers, tmpfiles and udev look for them, and the config where
    // the unit reads it (under /etc, so a conffile).
    let dest_of = |src: &str| {
        assets
            .iter()
            .find(|(s, _)| s == src)
            .map(|(_, d)| d.as_str())
            .unwrap_or_else(|| panic!("{src} is not packaged"))
    };
    assert!(dest_of("../systemd/sysusers.d/barkeep.conf").starts_with("usr/lib/sysusers.d/"));
    // cargo-deb runs systemd-tmpfiles in postinst only for files named
    // after unit-name, under the source's file name.
    assert_eq!(
        dest_of("../systemd/tmpfiles.d/barkeepd.conf"),
        "usr/lib/tmpfiles.d/barkeepd.conf"
    );
    assert!(dest_of("../systemd/udev/70-barkeep.rules").starts_with("usr/lib/udev/rules.d/"));
    assert_eq!(
        dest_of("../systemd/barkeep.toml"),
        "etc/barkeep/barkeep.toml"
    );

    // cargo-deb replaces every #DEBHELPER# with its generated snippets
    // (user, /run/barkeep, units): exactly one, or they run twice or never.
    let postinst = read(&systemd_dir().join("debian/postinst"));
    assert_eq!(postinst.matches("#DEBHELPER#").count(), 1);
    assert!(manifest.contains("maintainer-scripts = \"../systemd/debian/\""));
}

/// Whether `name` matches `pattern`, whose only wildcard is `*` (any run of
/// characters), as cargo-deb's globs are used in the asset list.
fn glob_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.starts_with(head)
                && (head.len()..=name.len()).any(|i| glob_matches(tail, &name[i..]))
        }
    }
}

#[test]
fn deb_metadata_packages_the_generated_man_pages_and_completions() {
    let root = workspace_root();
    let manifest = read(&root.join("daemon/Cargo.toml"));
    let generated: Vec<(String, String)> = deb_assets(&manifest)
        .into_iter()
        .filter_map(|(src, dest)| {
            src.strip_prefix("target/release/assets/")
                .map(|s| (s.to_string(), dest))
        })
        .collect();

    // Generate them as packaging/build-deb.sh does (with the dev build).
    let script = read(&root.join("packaging/build-deb.sh"));
    for step in [
        "generate-man \"$assets/man\"",
        "gzip -9n \"$assets\"/man/*",
        "completions \"$shell\" --dir \"$assets/completions\"",
        "for shell in bash zsh fish",
        "cargo deb -p barkeep-daemon --no-build",
    ] {
        assert!(script.contains(step), "build-deb.sh does not run {step:?}");
    }
    let cli = build_binaries("dev").cli;
    let dir = tempfile::tempdir().unwrap();
    let ok = |out: Output| assert!(out.status.success(), "{}", text(&out));
    ok(run(Command::new(&cli)
        .arg("generate-man")
        .arg(dir.path().join("man"))));
    for shell in ["bash", "zsh", "fish"] {
        ok(run(Command::new(&cli)
            .args(["completions", shell, "--dir"])
            .arg(dir.path().join("completions"))));
    }
    let mut files = Vec::new();
    files_under(dir.path(), Path::new(""), &mut files);
    // The script gzips every man page.
    let files: Vec<String> = files
        .iter()
        .map(|f| {
            let f = f.display().to_string();
            if f.starts_with("man/") {
                format!("{f}.gz")
            } else {
                f
            }
        })
        .collect();
    for expected in [
        "man/barkeep.1.gz",
        "man/barkeep-metrics.1.gz",
        "man/barkeepd.8.gz",
        "man/barkeep.toml.5.gz",
        "completions/barkeep.bash",
        "completions/_barkeep",
        "completions/barkeep.fish",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} not generated: {files:?}"
        );
    }

    // Every generated file is packaged, where man(1) and the shells look.
    for f in &files {
        let dest = generated
            .iter()
            .find(|(src, _)| glob_matches(src, f))
            .map(|(_, d)| d.as_str())
            .unwrap_or_else(|| panic!("generated {f} is not in [package.metadata.deb] assets"));
        let name = f.rsplit('/').next().unwrap();
        if let Some(page) = name.strip_suffix(".gz") {
            let section = page.rsplit('.').next().unwrap();
            assert_eq!(dest, format!("usr/share/man/man{section}/"), "{f}");
        } else {
            let want = match name {
                "barkeep.bash" => "usr/share/bash-completion/completions/barkeep",
                "_barkeep" => "usr/share/zsh/vendor-completions/_barkeep",
                "barkeep.fish" => "usr/share/fish/vendor_completions.d/barkeep.fish",
                other => panic!("unexpected completion file {other}"),
            };
            assert_eq!(dest, want, "{f}");
        }
    }
    // And every generated asset names something that is generated.
    for (src, _) in &generated {
        assert!(
            files.iter().any(|f| glob_matches(src, f)),
            "asset target/release/assets/{src} matches no generated file: {files:?}"
        );
    }
    assert!(glob_matches("man/*.1.gz", "man/barkeep-exec.1.gz"));
    assert!(!glob_matches("man/*.1.gz", "man/barkeepd.8.gz"));
}
