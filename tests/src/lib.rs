//! Shared helpers for the end-to-end tests: building the real binaries,
//! running a real `barkeepd` on a temporary socket, and the fixtures in
//! [`fixtures`] (policies granting the running user, a slice request
//! builder, an in-process daemon, the rule for root-only tests). See
//! tests/TESTING.md for the test layers and how to add a case.

pub mod fakesystemd;
pub mod fixtures;
pub mod mapping;

pub use fixtures::{admin_me, grant_me, is_root, me, needs_root, sim_policy, slice};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Paths of the project's binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `barkeepd`.
    pub daemon: PathBuf,
    /// `barkeep`.
    pub cli: PathBuf,
}

/// Builds `barkeepd` and `barkeep` once per test process with the given
/// cargo profile ("dev" or "release") and returns their paths. Cargo
/// releases its build lock before running tests, so a nested build into the
/// same target directory works and costs nothing when up to date.
pub fn build_binaries(profile: &str) -> Binaries {
    static DEV: OnceLock<Binaries> = OnceLock::new();
    static RELEASE: OnceLock<Binaries> = OnceLock::new();
    let cell = if profile == "release" { &RELEASE } else { &DEV };
    cell.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--profile",
                profile,
                "-p",
                "barkeep-daemon",
                "-p",
                "barkeep-cli",
                "--bins",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        let dir = target_dir().join(if profile == "dev" { "debug" } else { profile });
        Binaries {
            daemon: dir.join("barkeepd"),
            cli: dir.join("barkeep"),
        }
    })
    .clone()
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A simulated device description used by most tests: `sim0` with BAR0 of
/// 1 MiB (all mappable) and BAR2 of 64 KiB whose mappable area is only its
/// first 32 KiB.
pub const SIM_DEVICE: &str = r#"
[[device]]
name = "sim0"
sim = { bars = [ { index = 0, size = "1M" }, { index = 2, size = "64K", mappable = ["0x0..0x8000"] } ] }
"#;

/// A `barkeepd` process on a socket in a temporary directory, killed on drop.
pub struct TestDaemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
}

impl TestDaemon {
    /// Starts `barkeepd` with `config_body` (devices, grants, admin...); the
    /// `socket` key is added by this function.
    pub fn start(config_body: &str) -> TestDaemon {
        let bins = build_binaries("dev");
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("barkeep.sock");
        let config = dir.path().join("barkeep.toml");
        std::fs::write(
            &config,
            format!("socket = {:?}\n{config_body}", socket.display().to_string()),
        )
        .expect("write config");
        let log = dir.path().join("barkeepd.log");
        let child = Command::new(&bins.daemon)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn barkeepd");
        let mut daemon = TestDaemon {
            child: Some(child),
            dir,
            socket,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "barkeepd exited early ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if self.socket.exists() && barkeep_client::Client::connect(&self.socket).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "barkeepd did not accept connections in 20 s; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The listening socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory (socket, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs the `barkeep` CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        let bins = build_binaries("dev");
        Command::new(&bins.cli)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run barkeep")
    }

    /// Runs the CLI with `--json` and parses its stdout.
    pub fn cli_json(&self, args: &[&str]) -> (bool, serde_json::Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        let text = String::from_utf8_lossy(&out.stdout);
        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "barkeep {args:?} printed no JSON ({e}): stdout {text:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), value)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- barkeepd log ----\n{}", self.log_text());
        }
    }
}
