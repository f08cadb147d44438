//! TOML configuration -> validated [`Config`]: every key, its default, and
//! the cross-checks that make a loaded config safe to serve from.
//!
//! The reference for every key is `docs/config.md`. Unknown keys are
//! rejected (with the key named) so that a typo never silently widens or
//! narrows a policy.
//!
//! Here the model and loading; [`raw`] holds the TOML shapes serde reads,
//! [`validate`] turns them into the model, [`explain`] is check-config's
//! account, and [`pattern`] the cgroup and label patterns grants match.

mod explain;
pub mod pattern;
mod raw;
mod validate;

use crate::backend::sim::{SimBarConfig, SimConfig};
use crate::backend::vfio::{FeatureNumbers, Ownership, VfioOptions};
use crate::sys;
use barkeep_protocol::{parse_range, Access, PeerIdentity, Range, Reserved, MAX_BAR, MAX_NAME};
use pattern::{CgroupPattern, LabelPattern};
use raw::RawConfig;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest simulated BAR: simulated BARs live in the daemon's memory.
pub const MAX_SIM_BAR: u64 = 1 << 30;

/// Validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Path of the listening socket (`socket`).
    pub socket: PathBuf,
    /// Permission bits of the socket file (`socket_mode`).
    pub socket_mode: u32,
    /// Configured devices, in file order (`[[device]]`).
    pub devices: Vec<DeviceConfig>,
    /// VFIO feature numbers (`[kernel]`).
    pub kernel: FeatureNumbers,
    /// Grants, in file order (`[[grant]]`); rule numbers in messages are
    /// 1-based positions in this list.
    pub grants: Vec<Grant>,
    /// Who may use admin requests (`[admin]`).
    pub admin: Admin,
    /// Limits that protect the daemon (`[limits]`).
    pub limits: Limits,
    /// Who may read the metrics, and where else they are served
    /// (`[metrics]`).
    pub metrics: MetricsConfig,
    /// Where lease metadata is kept for restarts (`state_file`); `None`:
    /// `state` next to the socket (see [`Config::state_path`]).
    pub state_file: Option<PathBuf>,
    /// How long leases restored after a restart wait for their holders to
    /// reclaim them before they are revoked (`reclaim_grace`).
    pub reclaim_grace: std::time::Duration,
    /// A socket on which a successor (`barkeepd --takeover PATH`) may take
    /// the daemon's fds and leases over (`takeover_socket`); none by default.
    pub takeover_socket: Option<PathBuf>,
    /// Whether leases are kept in systemd's fd store across restarts
    /// (`fd_store`).
    pub fd_store: FdStoreMode,
}

/// `fd_store`: whether barkeepd keeps its device fds and stash segments in
/// systemd's fd store, so that leases survive a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FdStoreMode {
    /// When systemd offers one: `$NOTIFY_SOCKET` is set and `$FDSTORE`
    /// (systemd >= 254: FileDescriptorStoreMax=) is unset or not 0.
    #[default]
    Auto,
    /// Whenever `$NOTIFY_SOCKET` is set, whatever `$FDSTORE` says.
    Yes,
    /// Never: a restart revokes every lease.
    No,
}

impl FdStoreMode {
    /// Whether to use the store, given `$NOTIFY_SOCKET` (`notify`) and
    /// `$FDSTORE` (`capacity`).
    pub fn wanted(self, notify: bool, capacity: Option<usize>) -> bool {
        notify
            && match self {
                FdStoreMode::Auto => capacity != Some(0),
                FdStoreMode::Yes => true,
                FdStoreMode::No => false,
            }
    }
}

/// Default of `reclaim_grace`.
pub const DEFAULT_RECLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest `reclaim_grace`: restored buffers must not outlive their
/// holders' interest by much.
pub const MAX_RECLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// `[metrics]`: the Prometheus text the daemon answers `barkeep metrics`
/// with, and an optional stream socket that serves the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// A SOCK_STREAM socket that writes the metrics to each connection and
    /// closes it (`socket`); none by default.
    pub socket: Option<PathBuf>,
    /// Permission bits of that socket file (`socket_mode`).
    pub socket_mode: u32,
    /// Whether only administrators may ask for the metrics over the main
    /// socket (`admin_only`).
    pub admin_only: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            socket: None,
            socket_mode: 0o660,
            admin_only: false,
        }
    }
}

/// `[limits]`: bounds on what peers can make the daemon hold. Over a limit
/// the peer gets `limit` (27) and everyone else is served as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, handshaking or established (`sessions`).
    pub sessions: usize,
    /// Connections at once per uid (`sessions_per_uid`).
    pub sessions_per_uid: usize,
    /// Leases the daemon holds in all, active, kept or lingering (`leases`).
    pub leases: usize,
    /// Active leases per session (`leases_per_session`).
    pub leases_per_session: usize,
    /// Active and kept leases per uid (`leases_per_uid`).
    pub leases_per_uid: usize,
    /// Requests of one session read but not yet answered on its socket
    /// (`requests_in_flight`): beyond it the daemon stops reading that
    /// session until the client takes its replies.
    pub requests_in_flight: usize,
    /// Events queued for one session (`events_queued`): a session that lets
    /// more pile up is not reading its socket and is closed.
    pub events_queued: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sessions: 16384,
            sessions_per_uid: 1024,
            leases: 65536,
            leases_per_session: 4096,
            leases_per_uid: 16384,
            requests_in_flight: 32,
            events_queued: 256,
        }
    }
}

/// One `[[device]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Name clients use.
    pub name: String,
    /// Real or simulated.
    pub kind: DeviceKind,
}

/// The backend of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceKind {
    /// `pci = "0000:bb:dd.f"`: a real device through VFIO.
    Pci(VfioOptions),
    /// `sim = { ... }`: a simulated device.
    Sim(SimConfig),
}

/// Someone a grant or the admin list names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `uids = [N]`.
    Uid(u32),
    /// `users = ["name"]`, resolved at load.
    User {
        /// The name in the config.
        name: String,
        /// Its uid on this system.
        uid: u32,
    },
    /// `gids = [N]`: matches the primary or a supplementary group.
    Gid(u32),
    /// `groups = ["name"]`, resolved at load.
    Group {
        /// The name in the config.
        name: String,
        /// Its gid on this system.
        gid: u32,
    },
    /// `cgroups = ["/path", "/glob/*/x.scope", "/tree/**"]`: the peer's
    /// cgroup v2 path at connect time.
    Cgroup(CgroupPattern),
    /// `labels = ["pattern"]`: the peer's LSM label (SO_PEERSEC).
    Label(LabelPattern),
}

impl Subject {
    /// Whether a peer matches: uid, primary or supplementary group, cgroup
    /// or label. A peer without a cgroup or label matches no such subject.
    pub fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            Subject::Uid(u) | Subject::User { uid: u, .. } => *u == id.uid,
            Subject::Gid(g) | Subject::Group { gid: g, .. } => {
                *g == id.gid || id.groups.contains(g)
            }
            Subject::Cgroup(p) => id.cgroup.as_deref().is_some_and(|c| p.matches(c)),
            Subject::Label(p) => id.label.as_deref().is_some_and(|l| p.matches(l)),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Uid(u) => write!(f, "uid {u}"),
            Subject::User { name, uid } => write!(f, "user {name} (uid {uid})"),
            Subject::Gid(g) => write!(f, "gid {g}"),
            Subject::Group { name, gid } => write!(f, "group {name} (gid {gid})"),
            Subject::Cgroup(p) => write!(f, "cgroup {p}"),
            Subject::Label(p) => write!(f, "label {p}"),
        }
    }
}

/// One `[[grant]]`: who may have which slices of one BAR, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Device name.
    pub device: String,
    /// BAR index.
    pub bar: u32,
    /// Windows a slice must lie in (each slice inside one window); `None`
    /// means the whole BAR.
    pub windows: Option<Vec<Range>>,
    /// Most access allowed (`rw` also allows `ro`).
    pub access: Access,
    /// Whether write-combining may be asked for.
    pub wc: bool,
    /// Who: any match.
    pub who: Vec<Subject>,
    /// Whether leases of this grant may overlap no other lease (`exclusive`);
    /// `None`: read-write leases are exclusive, read-only ones shared.
    pub exclusive: Option<bool>,
    /// What happens to a lease when its session ends (`on_disconnect`).
    pub on_disconnect: OnDisconnect,
    /// Per-session and per-uid limits on this grant's leases.
    pub quota: Quota,
}

impl Grant {
    /// Whether a lease with `access` granted by this grant is exclusive.
    pub fn exclusive_for(&self, access: Access) -> bool {
        self.exclusive.unwrap_or(access == Access::ReadWrite)
    }

    /// One line saying who and what, for explanations: `device "sim0" bar 0,
    /// uid 1000 or cgroup /a/**`.
    pub fn summary(&self) -> String {
        let who: Vec<String> = self.who.iter().map(|s| s.to_string()).collect();
        format!(
            "device {:?} bar {}, {}",
            self.device,
            self.bar,
            who.join(" or ")
        )
    }
}

/// `on_disconnect`: what becomes of a lease when its session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDisconnect {
    /// `"revoke"` (default): the lease ends with reason `disconnected`.
    #[default]
    Revoke,
    /// `"keep"`: the lease stays (state `kept`, buffer live) until an
    /// administrator revokes it.
    Keep,
}

/// `max_leases_per_session`, `max_leases_per_uid`, `max_bytes_per_session`,
/// `max_bytes_per_uid` of a grant: counted over the leases that grant
/// decided. `None` is unlimited (the daemon's `[limits]` still apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Leases of this grant one session may hold.
    pub leases_per_session: Option<u64>,
    /// Leases of this grant one uid may hold (active and kept).
    pub leases_per_uid: Option<u64>,
    /// Bytes of this grant's leases one session may hold.
    pub bytes_per_session: Option<u64>,
    /// Bytes of this grant's leases one uid may hold (active and kept).
    pub bytes_per_uid: Option<u64>,
}

/// `[admin]`: who may revoke, peek, poke, reload and list every lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Any match. uid 0 is always an administrator (it owns the device anyway).
    pub who: Vec<Subject>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            who: vec![Subject::Uid(0)],
        }
    }
}

/// A configuration error: where, which key, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, when loaded from one.
    pub file: Option<PathBuf>,
    /// The key, as a path like `device[2].sim.bars[0].size` (empty when the
    /// TOML itself is broken; the message then says where).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        } else {
            f.write_str("config: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: None,
        key: key.into(),
        message: message.into(),
    }
}

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

/// Where the configuration comes from, so that it can be read again on
/// reload (SIGHUP or `barkeep reload`) with the same command-line overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The file given to `--config`.
    pub path: PathBuf,
    /// `--socket`, which overrides the file's `socket`.
    pub socket: Option<PathBuf>,
}

impl ConfigSource {
    /// A source reading `path` with no overrides.
    pub fn file(path: impl Into<PathBuf>) -> ConfigSource {
        ConfigSource {
            path: path.into(),
            socket: None,
        }
    }

    /// Reads and validates the file, then applies the overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(&self.path)?;
        if let Some(socket) = &self.socket {
            config.socket = socket.clone();
        }
        Ok(config)
    }
}

/// `start..end` in hex, as the config writes a range.
fn range_text(r: &Range) -> String {
    format!("{:#x}..{:#x}", r.offset, r.offset + r.length)
}

/// A size in the largest unit that divides it (for check-config).
fn size_text(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// For a parse error in a file that writes `[grant]` or `[device]` (one
/// table) where an array of tables is expected: how to write it.
fn array_table_hint(text: &str) -> String {
    let single: Vec<&str> = ["grant", "device"]
        .into_iter()
        .filter(|t| {
            text.lines()
                .any(|l| l.split('#').next().unwrap_or("").trim() == format!("[{t}]"))
        })
        .collect();
    single
        .iter()
        .map(|n| {
            format!("; [{n}] is one table, but {n}s are an array of tables: write [[{n}]] (two brackets) above each {n}")
        })
        .collect()
}

// ---- loading ---------------------------------------------------------------

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            key: String::new(),
            message: format!(
                "cannot read the configuration file: {e} (check the path given to --config)"
            ),
        })?;
        Config::from_toml_str(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// Parses and validates a configuration file's text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            err(
                "",
                format!(
                    "{}{} (see docs/config.md for every key)",
                    e.to_string().trim_end(),
                    array_table_hint(text)
                ),
            )
        })?;
        Config::from_raw(raw, sys::page_size())
    }

    /// The state file: `state_file`, or `state` in the socket's directory.
    pub fn state_path(&self) -> PathBuf {
        match &self.state_file {
            Some(p) => p.clone(),
            None => self
                .socket
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join("state"),
        }
    }

    /// The configured device with this name.
    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| err("", e.to_string()))?;
        Config::from_raw(raw, 4096)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_single_grant_table_gets_a_hint_and_grants_count_from_one() {
        let load = |text: &str| Config::from_toml_str(text).unwrap_err().to_string();
        let e = load(&format!(
            "{SIM}\n[grant]\ndevice = \"sim0\"\nbar = 0\nuids = [1]\n"
        ));
        assert!(e.contains("write [[grant]] (two brackets)"), "{e}");
        let e = load("[device]\nname = \"a\"\n");
        assert!(
            e.contains("write [[device]]") && !e.contains("[[grant]]"),
            "{e}"
        );
        let g = "[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1]\n";
        let e = error(&format!("{SIM}\n{g}{}", g.replace("sim0", "sim9")));
        assert!(e.contains("grant #2.device"), "{e}");
    }

    const SIM: &str = r#"
        [[device]]
        name = "sim0"
        sim = { bars = [ { index = 0, size = "64K", mappable = ["0x0..0x8000", "0xc000..0x10000"], reserved = ["0x2000..0x2100"] }, { index = 2, size = 0x1000 } ] }
    "#;

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/barkeep/barkeep.sock"));
        assert_eq!(c.socket_mode, 0o666);
        assert!(c.devices.is_empty() && c.grants.is_empty());
        assert_eq!(c.kernel, FeatureNumbers::default());
        assert_eq!(c.kernel.dma_buf, 11);
        assert_eq!(c.admin.who, vec![Subject::Uid(0)]);
    }

    #[test]
    fn fd_store_is_auto_yes_or_no_and_auto_heeds_fdstore_0() {
        assert_eq!(parse("").unwrap().fd_store, FdStoreMode::Auto);
        assert_eq!(
            parse("fd_store = \"no\"").unwrap().fd_store,
            FdStoreMode::No
        );
        assert_eq!(
            parse("fd_store = \"yes\"").unwrap().fd_store,
            FdStoreMode::Yes
        );
        let e = parse("fd_store = \"maybe\"").unwrap_err().to_string();
        assert!(e.contains("fd_store") && e.contains("\"auto\""), "{e}");
        // systemd >= 254 with FileDescriptorStoreMax=0; 252 sets nothing.
        assert!(!FdStoreMode::Auto.wanted(true, Some(0)));
        assert!(FdStoreMode::Auto.wanted(true, None));
        assert!(FdStoreMode::Auto.wanted(true, Some(512)));
        assert!(FdStoreMode::Yes.wanted(true, Some(0)));
        assert!(!FdStoreMode::No.wanted(true, Some(512)));
        assert!(!FdStoreMode::Yes.wanted(false, None), "no NOTIFY_SOCKET");
    }

    #[test]
    fn zero_turns_revoke_and_memattr_off() {
        let c = parse("[kernel]\nrevoke_feature = 0\nmemattr_feature = 0").unwrap();
        assert_eq!(c.kernel.revoke, FeatureNumbers::OFF);
        assert_eq!(c.kernel.memattr, FeatureNumbers::OFF);
        assert!(c.kernel.search, "the search stays on unless turned off");
    }

    #[test]
    fn every_key() {
        let text = format!(
            r#"
            socket = "/tmp/x/bk.sock"
            socket_mode = "0660"
            [kernel]
            dma_buf_feature = 11
            revoke_feature = 20
            memattr_feature = 21
            search_features = false
            [[device]]
            name = "gpu0"
            pci = "0000:01:00.0"
            vfio = "cdev"
            noiommu = true
            bind = true
            {SIM}
            [[grant]]
            device = "sim0"
            bar = 0
            windows = ["0x1000..0x3000", "4K..8K"]
            access = "rw"
            wc = true
            uids = [1000]
            users = ["root"]
            gids = [44]
            groups = ["root"]
            [[grant]]
            device = "gpu0"
            bar = 4
            gids = [0]
            [admin]
            uids = [1000]
            users = ["root"]
            gids = [10]
            groups = ["root"]
            "#
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x/bk.sock"));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(
            c.kernel,
            FeatureNumbers {
                dma_buf: 11,
                revoke: 20,
                memattr: 21,
                search: false,
            }
        );
        let DeviceKind::Pci(o) = &c.devices[0].kind else {
            panic!()
        };
        assert_eq!(o.pci, "0000:01:00.0");
        assert_eq!(o.ownership, Ownership::Cdev);
        assert!(o.noiommu && o.bind);
        assert_eq!(o.features.revoke, 20);
        let DeviceKind::Sim(s) = &c.devices[1].kind else {
            panic!()
        };
        assert_eq!(s.bars.len(), 2);
        assert_eq!(s.bars[0].size, 0x10000);
        assert_eq!(
            s.bars[0].mappable,
            vec![Range::new(0, 0x8000), Range::new(0xc000, 0x4000)]
        );
        assert_eq!(s.bars[0].reserved[0].range, Range::new(0x2000, 0x100));
        assert_eq!(s.bars[1].index, 2);
        assert_eq!(s.bars[1].size, 0x1000);
        let g = &c.grants[0];
        assert_eq!(
            g.windows,
            Some(vec![Range::new(0x1000, 0x2000), Range::new(0x1000, 0x1000)])
        );
        assert_eq!(g.access, Access::ReadWrite);
        assert!(g.wc);
        assert_eq!(
            g.who,
            vec![
                Subject::Uid(1000),
                Subject::User {
                    name: "root".into(),
                    uid: 0
                },
                Subject::Gid(44),
                Subject::Group {
                    name: "root".into(),
                    gid: 0
                },
            ]
        );
        let g2 = &c.grants[1];
        assert_eq!(
            (g2.windows.clone(), g2.access, g2.wc),
            (None, Access::ReadOnly, false)
        );
        assert_eq!(
            c.admin.who.len(),
            5,
            "uid 0 stays an administrator: {:?}",
            c.admin.who
        );
        let text = c.explain();
        assert!(
            text.contains("grant #1: uid 1000 or user root (uid 0)"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(error("sockett = \"/x\"").contains("sockett"));
        let e = error(&format!(
            "{SIM}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1]\nacess = \"rw\""
        ));
        assert!(e.contains("acess"), "{e}");
        let e = error("[[device]]\nname = \"a\"\nsim = { bars = [ { index = 0, size = \"4K\", mapable = [] } ] }");
        assert!(e.contains("mapable"), "{e}");
        assert!(error("[kernel]\nrevoke = 3").contains("revoke"));
        assert!(error("[admin]\nuid = [3]").contains("uid"));
    }

    #[test]
    fn bad_sizes() {
        for (size, why) in [
            ("\"3K\"", "not a BAR size"),
            ("\"2K\"", "not a BAR size"),
            ("\"2G\"", "not a BAR size"),
            ("0", "not a BAR size"),
            ("\"12Q\"", "is not a number"),
            ("-4096", "negative"),
        ] {
            let e = error(&format!(
                "[[device]]\nname = \"a\"\nsim = {{ bars = [ {{ index = 0, size = {size} }} ] }}"
            ));
            assert!(e.contains(why) && e.contains("bars[0].size"), "{size}: {e}");
        }
        let e =
            error("[[device]]\nname = \"a\"\nsim = { bars = [ { index = 6, size = \"4K\" } ] }");
        assert!(e.contains("not a BAR index"), "{e}");
        let e = error("[[device]]\nname = \"a\"\nsim = { bars = [ { index = 1, size = \"4K\" }, { index = 1, size = \"8K\" } ] }");
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn bad_windows_and_mappable_areas() {
        let grant = |w: &str| {
            format!("{SIM}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\nuids = [1]\nwindows = [{w}]")
        };
        let e = error(&grant("\"0x800..0x1800\""));
        assert!(
            e.contains("not page aligned (page size 4096)") && e.contains("windows[0]"),
            "{e}"
        );
        let e = error(&grant("\"0x0..0x11000\""));
        assert!(e.contains("past the end of the BAR"), "{e}");
        assert!(
            parse(&grant("\"0xf000..0x10000\"")).is_ok(),
            "last page of the BAR is fine"
        );
        let e = error(&grant("\"0x2000..0x1000\""));
        assert!(e.contains("reversed"), "{e}");
        let e = error(&grant(""));
        assert!(
            e.contains("grants nothing") || e.contains("would grant nothing"),
            "{e}"
        );
        let e = error("[[device]]\nname = \"a\"\nsim = { bars = [ { index = 0, size = \"16K\", mappable = [\"0x0..0x2000\", \"0x1000..0x3000\"] } ] }");
        assert!(e.contains("overlaps mappable area"), "{e}");
        let e = error("[[device]]\nname = \"a\"\nsim = { bars = [ { index = 0, size = \"16K\", mappable = [\"0x0..0x5000\"] } ] }");
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn cross_checks() {
        let e = error("[[grant]]\ndevice = \"nope\"\nbar = 0\nuids = [1]");
        assert!(
            e.contains("grant #1.device") && e.contains("not a configured device"),
            "{e}"
        );
        let e = error(&format!(
            "{SIM}\n[[grant]]\ndevice = \"sim0\"\nbar = 1\nuids = [1]"
        ));
        assert!(e.contains("has no bar 1"), "{e}");
        let e = error(&format!("{SIM}\n[[grant]]\ndevice = \"sim0\"\nbar = 0"));
        assert!(e.contains("names nobody"), "{e}");
        let e = error(&format!("{SIM}{SIM}"));
        assert!(e.contains("used twice"), "{e}");
        let e = error("[[device]]\nname = \"a\"\npci = \"0000:01:00.0\"\n[[device]]\nname = \"b\"\npci = \"0000:01:00.0\"");
        assert!(e.contains("already configured"), "{e}");
        // The short form (domain 0) is the same device: still a duplicate.
        let e = error("[[device]]\nname = \"a\"\npci = \"0000:01:00.0\"\n[[device]]\nname = \"b\"\npci = \"01:00.0\"");
        assert!(e.contains("already configured"), "{e}");
        let e = error("[[device]]\nname = \"a\"\npci = \"1:00.0\"");
        assert!(e.contains("0000:bb:dd.f"), "{e}");
        let e = error("[[device]]\nname = \"a\"");
        assert!(e.contains("neither pci nor sim"), "{e}");
        let e = error("[[device]]\nname = \"a b\"\npci = \"0000:01:00.0\"");
        assert!(e.contains("not a device name"), "{e}");
        let e = error("[[device]]\nname = \"a\"\nvfio = \"group\"\nsim = { bars = [ { index = 0, size = \"4K\" } ] }");
        assert!(e.contains("only applies to pci devices"), "{e}");
        let e = error("[[device]]\nname = \"a\"\npci = \"0000:01:00.0\"\nvfio = \"legacy\"");
        assert!(e.contains("legacy"), "{e}");
        let e = error("socket_mode = \"0999\"");
        assert!(
            e.contains("socket_mode") && e.contains("not a file mode"),
            "{e}"
        );
        let e = error("[kernel]\nrevoke_feature = 15");
        assert!(e.contains("must differ"), "{e}");
        let e = error("[kernel]\nrevoke_feature = 11");
        assert!(e.contains("must differ"), "{e}");
    }

    #[test]
    fn unknown_names_are_named() {
        let e = error(&format!(
            "{SIM}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\nusers = [\"no-such-user-bk\"]"
        ));
        assert!(e.contains("\"no-such-user-bk\" does not exist"), "{e}");
        let e = error("[admin]\ngroups = [\"no-such-group-bk\"]");
        assert!(
            e.contains("admin.groups") && e.contains("no-such-group-bk"),
            "{e}"
        );
    }

    #[test]
    fn policy_keys_and_limits() {
        let c = parse(&format!(
            r#"{SIM}
            [[grant]]
            device = "sim0"
            bar = 0
            access = "rw"
            cgroups = ["/system.slice/foo.service", "/kubepods.slice/*/cri-containerd-*.scope", "/user.slice/**"]
            labels = ["system_u:system_r:container_t:*"]
            exclusive = false
            on_disconnect = "keep"
            max_leases_per_session = 4
            max_leases_per_uid = 8
            max_bytes_per_session = "64K"
            max_bytes_per_uid = "1M"
            [[grant]]
            device = "sim0"
            bar = 2
            uids = [7]
            [limits]
            sessions = 100
            sessions_per_uid = 10
            leases = 1000
            leases_per_session = 20
            leases_per_uid = 50
            requests_in_flight = 4
            events_queued = 16
            [admin]
            cgroups = ["/system.slice/barkeep-admin.service"]
            "#
        ))
        .unwrap();
        let g = &c.grants[0];
        assert_eq!(g.who.len(), 4);
        assert!(
            matches!(&g.who[1], Subject::Cgroup(p) if p.as_str() == "/kubepods.slice/*/cri-containerd-*.scope")
        );
        assert!(matches!(&g.who[3], Subject::Label(_)));
        assert_eq!(g.exclusive, Some(false));
        assert!(!g.exclusive_for(Access::ReadWrite));
        assert_eq!(g.on_disconnect, OnDisconnect::Keep);
        assert_eq!(
            g.quota,
            Quota {
                leases_per_session: Some(4),
                leases_per_uid: Some(8),
                bytes_per_session: Some(0x10000),
                bytes_per_uid: Some(0x100000),
            }
        );
        let d = &c.grants[1];
        assert_eq!(
            (d.exclusive, d.on_disconnect, d.quota),
            (None, OnDisconnect::Revoke, Quota::default())
        );
        assert!(d.exclusive_for(Access::ReadWrite) && !d.exclusive_for(Access::ReadOnly));
        assert_eq!(
            c.limits,
            Limits {
                sessions: 100,
                sessions_per_uid: 10,
                leases: 1000,
                leases_per_session: 20,
                leases_per_uid: 50,
                requests_in_flight: 4,
                events_queued: 16,
            }
        );
        assert_eq!(c.admin.who.len(), 2);
        assert_eq!(parse("").unwrap().limits, Limits::default());
        let text = c.explain();
        assert!(text.contains("cgroup /user.slice/**"), "{text}");
        assert!(text.contains("at most 4 leases per session"), "{text}");
        assert!(text.contains("kept after disconnect"), "{text}");
        assert!(text.contains("limits: 100 sessions (10 per uid)"), "{text}");
    }

    #[test]
    fn bad_policy_keys_are_named() {
        let g = |extra: &str| format!("{SIM}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\n{extra}");
        let e = error(&g("cgroups = [\"system.slice\"]"));
        assert!(
            e.contains("grant #1.cgroups[0]") && e.contains("start with '/'"),
            "{e}"
        );
        let e = error(&g("labels = [\"\"]"));
        assert!(e.contains("grant #1.labels[0]"), "{e}");
        let e = error(&g("uids = [1]\non_disconnect = \"linger\""));
        assert!(e.contains("linger"), "{e}");
        let e = error(&g("uids = [1]\nmax_leases_per_uid = 0"));
        assert!(
            e.contains("max_leases_per_uid") && e.contains("grant nothing"),
            "{e}"
        );
        let e = error(&g("uids = [1]\nmax_bytes_per_session = 100"));
        assert!(
            e.contains("max_bytes_per_session") && e.contains("page size"),
            "{e}"
        );
        let e = error("[limits]\nsessions = 0");
        assert!(e.contains("limits.sessions") && e.contains("1 to"), "{e}");
        let e = error("[limits]\nrequests_in_flight = 100000");
        assert!(e.contains("limits.requests_in_flight"), "{e}");
        let e = error("[limits]\nsesions = 3");
        assert!(e.contains("sesions"), "{e}");
        let e = error(&g("cgroups = []"));
        assert!(e.contains("names nobody"), "{e}");
    }

    #[test]
    fn metrics_keys() {
        let c = parse("").unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.metrics.socket, None);
        assert_eq!(c.metrics.socket_mode, 0o660);
        assert!(!c.metrics.admin_only);
        let c = parse(
            "[metrics]\nsocket = \"/run/x/metrics.sock\"\nsocket_mode = \"0644\"\nadmin_only = true\n",
        )
        .unwrap();
        assert_eq!(
            c.metrics,
            MetricsConfig {
                socket: Some(PathBuf::from("/run/x/metrics.sock")),
                socket_mode: 0o644,
                admin_only: true,
            }
        );
        assert!(c.explain().contains("metrics: `barkeep metrics` for administrators only; also served on /run/x/metrics.sock (mode 0644)"));
        let e = error("[metrics]\nsocket_mode = \"rw\"");
        assert!(e.contains("metrics.socket_mode"), "{e}");
        let e = error("[metrics]\nsocket = \"\"");
        assert!(e.contains("metrics.socket"), "{e}");
        let e = error("socket = \"/tmp/a.sock\"\n[metrics]\nsocket = \"/tmp/a.sock\"");
        assert!(e.contains("main socket"), "{e}");
        let e = error("[metrics]\nport = 9100");
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bk.toml");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string()) && e.contains("bogus"),
            "{e}"
        );
        let e = Config::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
