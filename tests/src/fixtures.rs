//! Fixtures shared by the end-to-end tests (and the CLI crate's tests):
//! policy snippets that grant the user running the tests, a
//! [`SliceRequest`] builder, an in-process daemon, and the rule for tests
//! that need root.
//!
//! Tests run as whoever runs `cargo test`: a contributor's normal account
//! or root in CI. Policies therefore grant [`me()`], never a fixed uid; a
//! test that must act as another uid or create cgroups asks
//! [`needs_root`] first.

use barkeep_client::{Access, MemAttrRequest, SliceRequest};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The effective uid running the tests (the uid the daemon sees on a
/// connection from this process).
pub fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The effective gid running the tests.
pub fn my_gid() -> u32 {
    nix::unistd::getegid().as_raw()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The environment variable that turns a root-only test's skip into a
/// failure (`.ci/run` sets it: CI runs as root, so nothing may skip there).
pub const REQUIRE_ROOT_VAR: &str = "BARKEEP_REQUIRE_ROOT";

/// For a test that truly needs root (`why`: acting as other uids, creating
/// cgroups): true when running as root. Otherwise writes
/// `SKIPPED: TEST needs root to WHY` on stderr and returns false, so the
/// test returns early, unless `BARKEEP_REQUIRE_ROOT=1`, which makes the skip
/// a failure.
pub fn needs_root(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, &format!("needs root to {why}"));
    false
}

/// Reports a skipped test (`SKIPPED: TEST REASON`), or fails it when
/// `BARKEEP_REQUIRE_ROOT=1` says that nothing may be skipped.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {test} {reason}");
    if std::env::var_os(REQUIRE_ROOT_VAR).is_some_and(|v| v == "1") {
        panic!("{line}, and {REQUIRE_ROOT_VAR}=1 forbids skipping");
    }
    // Straight to the process's stderr, past libtest's capture, so that a
    // passing run still shows what it did not test.
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Makes `cmd` run as `uid` (primary gid the same, no supplementary
/// groups). Only root can; see [`needs_root`]. The daemon's socket must be
/// reachable by that uid (e.g. its directory mode 0755).
pub fn run_as(cmd: &mut std::process::Command, uid: u32) -> &mut std::process::Command {
    // SAFETY: setgroups, setgid and setuid are async-signal-safe system
    // calls that touch no state of this process shared with other threads.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(uid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        })
    }
}

/// A `[[grant]]` of `device` BAR `bar` to the running user, with extra
/// TOML lines (`windows = [..]`, `access = "rw"`, `wc = true`, ...).
pub fn grant_me(device: &str, bar: u32, extra: &str) -> String {
    format!(
        "\n[[grant]]\ndevice = \"{device}\"\nbar = {bar}\nuids = [{}]\n{extra}\n",
        me()
    )
}

/// An `[admin]` section naming the running user.
pub fn admin_me() -> String {
    format!("\n[admin]\nuids = [{}]\n", me())
}

/// The common policy: [`crate::SIM_DEVICE`], the whole of sim0's BAR0
/// read-write (and write-combining) for the running user, who is also
/// admin.
pub fn sim_policy() -> String {
    format!(
        "{}{}{}",
        crate::SIM_DEVICE,
        grant_me("sim0", 0, "access = \"rw\"\nwc = true"),
        admin_me()
    )
}

/// Starts building a [`SliceRequest`]: read-write, uncached unless told.
///
/// ```
/// use barkeep_client::Access;
/// let req = barkeep_tests::fixtures::slice("sim0", 0, 0x10000, 0x1000).ro().build();
/// assert_eq!(req.access, Access::ReadOnly);
/// ```
pub fn slice(device: &str, bar: u32, offset: u64, length: u64) -> SliceBuilder {
    SliceBuilder(SliceRequest {
        device: device.into(),
        bar,
        offset,
        length,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::Uncached,
    })
}

/// See [`slice`].
#[derive(Clone, Debug)]
pub struct SliceBuilder(SliceRequest);

impl SliceBuilder {
    /// Read-only.
    pub fn ro(mut self) -> Self {
        self.0.access = Access::ReadOnly;
        self
    }

    /// With the given access.
    pub fn access(mut self, access: Access) -> Self {
        self.0.access = access;
        self
    }

    /// Write-combining, or fail.
    pub fn wc(mut self) -> Self {
        self.0.memattr = MemAttrRequest::WriteCombining;
        self
    }

    /// Write-combining when the device can, else uncached.
    pub fn prefer_wc(mut self) -> Self {
        self.0.memattr = MemAttrRequest::PreferWriteCombining;
        self
    }

    /// The request.
    pub fn build(self) -> SliceRequest {
        self.0
    }
}

impl From<SliceBuilder> for SliceRequest {
    fn from(b: SliceBuilder) -> SliceRequest {
        b.0
    }
}

/// A daemon running in this process (`barkeep_daemon::spawn`) on a socket
/// in its own temporary directory: faster than [`crate::TestDaemon`] and
/// enough when the test is about the client side. Stopped on drop.
pub struct InProcessDaemon {
    daemon: Option<barkeep_daemon::RunningDaemon>,
    dir: tempfile::TempDir,
}

impl InProcessDaemon {
    /// Starts a daemon with `config_body` (devices, grants, admin...); the
    /// `socket` key is added here. Panics with the daemon's explanation if
    /// the configuration is refused.
    pub fn start(config_body: &str) -> InProcessDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("barkeep.sock");
        let toml = format!("socket = {:?}\n{config_body}", socket.display().to_string());
        let config = barkeep_daemon::Config::from_toml_str(&toml)
            .unwrap_or_else(|e| panic!("test configuration refused: {e}\n{toml}"));
        let daemon = barkeep_daemon::spawn(config).expect("start the in-process daemon");
        InProcessDaemon {
            daemon: Some(daemon),
            dir,
        }
    }

    /// The listening socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("barkeep.sock")
    }

    /// The temporary directory holding the socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for InProcessDaemon {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }
}
