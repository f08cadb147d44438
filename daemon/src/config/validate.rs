//! Raw TOML -> the validated model: defaults, cross-checks (grants name
//! configured devices and ranges inside their BARs), and an error that names
//! the key for everything else.

use super::raw::*;
use super::*;

impl Config {
    /// Validates the raw TOML into the model; `page` is the page size that
    /// windows must be aligned to.
    pub(super) fn from_raw(raw: RawConfig, page: u64) -> Result<Config, ConfigError> {
        let socket = raw
            .socket
            .unwrap_or_else(|| PathBuf::from(barkeep_protocol::DEFAULT_SOCKET));
        if socket.as_os_str().is_empty() {
            return Err(err(
                "socket",
                "is empty: give the path of the socket to create",
            ));
        }
        let socket_mode = match raw.socket_mode {
            None => 0o666,
            Some(s) => parse_mode(&s).map_err(|m| err("socket_mode", m))?,
        };

        let kernel = feature_numbers(raw.kernel)?;
        let devices = devices(raw.device, kernel, page)?;

        let mut grants = Vec::new();
        for (i, g) in raw.grant.into_iter().enumerate() {
            // Counted from 1, as check-config's explanation and the policy's
            // decisions ("grant #2") count them.
            grants.push(grant(&format!("grant #{}", i + 1), g, &devices, page)?);
        }

        let mut admin = Admin::default();
        if let Some(w) = raw.admin {
            for s in who("admin", w)? {
                if !admin.who.contains(&s) {
                    admin.who.push(s);
                }
            }
        }

        let limits = match raw.limits {
            None => Limits::default(),
            Some(l) => limits(l)?,
        };

        let metrics = match raw.metrics {
            None => MetricsConfig::default(),
            Some(m) => metrics(m, &socket)?,
        };

        let reclaim_grace = match raw.reclaim_grace {
            None => DEFAULT_RECLAIM_GRACE,
            Some(d) => duration("reclaim_grace", d)?,
        };
        for (key, path) in [
            ("state_file", &raw.state_file),
            ("takeover_socket", &raw.takeover_socket),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(err(key, "is empty: give a path, or leave the key out"));
            }
        }

        let fd_store = match raw.fd_store.as_deref() {
            None | Some("auto") => FdStoreMode::Auto,
            Some("yes") => FdStoreMode::Yes,
            Some("no") => FdStoreMode::No,
            Some(other) => {
                return Err(err(
                    "fd_store",
                    format!("is {other:?}: write \"auto\", \"yes\" or \"no\""),
                ))
            }
        };

        Ok(Config {
            fd_store,
            socket,
            socket_mode,
            devices,
            kernel,
            grants,
            admin,
            limits,
            metrics,
            state_file: raw.state_file,
            reclaim_grace,
            takeover_socket: raw.takeover_socket,
        })
    }
}

/// `[kernel]`: the feature numbers, defaulted, and all different.
fn feature_numbers(raw: Option<RawKernel>) -> Result<FeatureNumbers, ConfigError> {
    let kernel = match raw {
        None => FeatureNumbers::default(),
        Some(k) => {
            let d = FeatureNumbers::default();
            FeatureNumbers {
                dma_buf: k.dma_buf_feature.unwrap_or(d.dma_buf),
                revoke: k.revoke_feature.unwrap_or(d.revoke),
                memattr: k.memattr_feature.unwrap_or(d.memattr),
                search: k.search_features.unwrap_or(d.search),
            }
        }
    };
    // 0 turns REVOKE or MEMATTR off; any other number names one feature.
    let on = |n: u32| n != FeatureNumbers::OFF;
    if (on(kernel.revoke) && kernel.revoke == kernel.memattr)
        || kernel.revoke == kernel.dma_buf
        || kernel.memattr == kernel.dma_buf
    {
        return Err(err(
            "kernel",
            format!(
                "dma_buf_feature ({}), revoke_feature ({}) and memattr_feature ({}) must differ",
                kernel.dma_buf, kernel.revoke, kernel.memattr
            ),
        ));
    }
    Ok(kernel)
}

/// `[[device]]`: each device validated; names and PCI addresses unique.
fn devices(
    raw: Vec<RawDevice>,
    kernel: FeatureNumbers,
    page: u64,
) -> Result<Vec<DeviceConfig>, ConfigError> {
    let mut devices: Vec<DeviceConfig> = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let key = format!("device[{i}]");
        let dev = device(&key, d, kernel, page)?;
        if devices.iter().any(|x| x.name == dev.name) {
            return Err(err(
                format!("{key}.name"),
                format!(
                    "device name {:?} is used twice: give each device its own name",
                    dev.name
                ),
            ));
        }
        if let DeviceKind::Pci(o) = &dev.kind {
            if let Some(other) = devices
                .iter()
                .find(|x| matches!(&x.kind, DeviceKind::Pci(p) if p.pci == o.pci))
            {
                return Err(err(
                    format!("{key}.pci"),
                    format!("{} is already configured as device {:?}", o.pci, other.name),
                ));
            }
        }
        devices.push(dev);
    }
    Ok(devices)
}

fn metrics(m: RawMetrics, main_socket: &Path) -> Result<MetricsConfig, ConfigError> {
    let d = MetricsConfig::default();
    if let Some(p) = &m.socket {
        if p.as_os_str().is_empty() {
            return Err(err(
                "metrics.socket",
                "is empty: give the path of the metrics socket, or leave the key out for none",
            ));
        }
        if p == main_socket {
            return Err(err(
                "metrics.socket",
                format!(
                    "{} is the main socket's path: give the metrics socket its own, e.g. /run/barkeep/metrics.sock",
                    p.display()
                ),
            ));
        }
    }
    Ok(MetricsConfig {
        socket: m.socket,
        socket_mode: match m.socket_mode {
            None => d.socket_mode,
            Some(s) => parse_mode(&s).map_err(|e| err("metrics.socket_mode", e))?,
        },
        admin_only: m.admin_only.unwrap_or(d.admin_only),
    })
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let body = s.trim();
    let digits = body.strip_prefix("0o").unwrap_or(body);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?} is not a file mode: write octal permission bits as a string, e.g. \"0666\" or \"0660\""
        )),
    }
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if name.is_empty() || name.len() > MAX_NAME || !ok_chars {
        return Err(err(
            key,
            format!(
                "{name:?} is not a device name: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
            ),
        ));
    }
    Ok(())
}

fn check_pci(key: &str, pci: &str) -> Result<String, ConfigError> {
    crate::backend::vfio::sysfs::normalize_bdf(pci).map_err(|e| err(key, e.to_string()))
}

fn device(
    key: &str,
    d: RawDevice,
    kernel: FeatureNumbers,
    page: u64,
) -> Result<DeviceConfig, ConfigError> {
    check_name(&format!("{key}.name"), &d.name)?;
    let key = format!("{key} ({:?})", d.name);
    let kind = match (d.pci, d.sim) {
        (Some(_), Some(_)) => {
            return Err(err(key, "has both pci and sim: a device is either real (pci = \"0000:bb:dd.f\") or simulated (sim = { ... })"));
        }
        (None, None) => {
            return Err(err(key, "has neither pci nor sim: add pci = \"0000:bb:dd.f\" for a real device or sim = { bars = [...] } for a simulated one"));
        }
        (Some(pci), None) => DeviceKind::Pci(VfioOptions {
            pci: check_pci(&format!("{key}.pci"), &pci)?,
            ownership: match d.vfio.unwrap_or(RawOwnership::Auto) {
                RawOwnership::Auto => Ownership::Auto,
                RawOwnership::Group => Ownership::Group,
                RawOwnership::Cdev => Ownership::Cdev,
            },
            noiommu: d.noiommu.unwrap_or(false),
            bind: d.bind.unwrap_or(false),
            features: kernel,
        }),
        (None, Some(sim)) => {
            for (set, what) in [
                (d.vfio.is_some(), "vfio"),
                (d.noiommu.is_some(), "noiommu"),
                (d.bind.is_some(), "bind"),
            ] {
                if set {
                    return Err(err(
                        format!("{key}.{what}"),
                        "only applies to pci devices: remove it from this simulated device",
                    ));
                }
            }
            DeviceKind::Sim(sim_config(&format!("{key}.sim"), sim, page)?)
        }
    };
    Ok(DeviceConfig { name: d.name, kind })
}

fn sim_config(key: &str, sim: RawSim, page: u64) -> Result<SimConfig, ConfigError> {
    if sim.bars.is_empty() {
        return Err(err(
            format!("{key}.bars"),
            "is empty: give at least one BAR, e.g. bars = [ { index = 0, size = \"1M\" } ]",
        ));
    }
    let mut bars: Vec<SimBarConfig> = Vec::new();
    for (i, b) in sim.bars.into_iter().enumerate() {
        let key = format!("{key}.bars[{i}]");
        if b.index > MAX_BAR {
            return Err(err(
                format!("{key}.index"),
                format!("{} is not a BAR index: use 0 to {MAX_BAR}", b.index),
            ));
        }
        if bars.iter().any(|x| x.index == b.index) {
            return Err(err(
                format!("{key}.index"),
                format!("bar {} is listed twice", b.index),
            ));
        }
        let size = b.size.0.map_err(|m| err(format!("{key}.size"), m))?;
        if !size.is_power_of_two() || !(4096..=MAX_SIM_BAR).contains(&size) {
            return Err(err(
                format!("{key}.size"),
                format!("{size:#x} is not a BAR size: use a power of two from 4K to 1G, like a real BAR (e.g. \"64K\", \"1M\")"),
            ));
        }
        let bar_range = Range::new(0, size);
        let mut mappable = Vec::new();
        for (j, s) in b.mappable.iter().enumerate() {
            let mkey = format!("{key}.mappable[{j}]");
            let r = range(&mkey, s)?;
            check_aligned(&mkey, &r, page)?;
            check_inside(&mkey, &r, size)?;
            if let Some(o) = mappable.iter().find(|o: &&Range| o.overlaps(&r)) {
                return Err(err(
                    mkey,
                    format!(
                        "{} overlaps mappable area {}: list each area once",
                        range_text(&r),
                        range_text(o)
                    ),
                ));
            }
            mappable.push(r);
        }
        mappable.sort_by_key(|r| r.offset);
        let mut reserved = Vec::new();
        for (j, s) in b.reserved.iter().enumerate() {
            let rkey = format!("{key}.reserved[{j}]");
            let r = range(&rkey, s)?;
            check_inside(&rkey, &r, size)?;
            reserved.push(Reserved {
                range: r,
                what: "reserved by the simulated device's configuration".to_string(),
            });
        }
        debug_assert!(bar_range.length == size);
        bars.push(SimBarConfig {
            index: b.index,
            size,
            mappable,
            reserved,
        });
    }
    bars.sort_by_key(|b| b.index);
    Ok(SimConfig { bars })
}

fn range(key: &str, s: &str) -> Result<Range, ConfigError> {
    let (offset, length) = parse_range(s).map_err(|m| err(key, m))?;
    Ok(Range::new(offset, length))
}

fn check_aligned(key: &str, r: &Range, page: u64) -> Result<(), ConfigError> {
    if r.offset % page != 0 || r.length % page != 0 {
        return Err(err(
            key,
            format!("{} is not page aligned (page size {page}): start and end must be multiples of {page:#x}", range_text(r)),
        ));
    }
    Ok(())
}

fn check_inside(key: &str, r: &Range, size: u64) -> Result<(), ConfigError> {
    if !Range::new(0, size).contains(r) {
        return Err(err(
            key,
            format!(
                "{} ends past the end of the BAR ({size:#x} bytes)",
                range_text(r)
            ),
        ));
    }
    Ok(())
}

fn who(key: &str, w: RawWho) -> Result<Vec<Subject>, ConfigError> {
    let mut out: Vec<Subject> = w.uids.into_iter().map(Subject::Uid).collect();
    for name in w.users {
        match nix::unistd::User::from_name(&name) {
            Ok(Some(u)) => out.push(Subject::User { name, uid: u.uid.as_raw() }),
            Ok(None) => {
                return Err(err(
                    format!("{key}.users"),
                    format!("user {name:?} does not exist on this system: create it, fix the name, or use uids = [N]"),
                ))
            }
            Err(e) => return Err(err(format!("{key}.users"), format!("cannot look up user {name:?}: {e}"))),
        }
    }
    out.extend(w.gids.into_iter().map(Subject::Gid));
    for (i, p) in w.cgroups.iter().enumerate() {
        let pat = CgroupPattern::parse(p).map_err(|m| err(format!("{key}.cgroups[{i}]"), m))?;
        out.push(Subject::Cgroup(pat));
    }
    for (i, p) in w.labels.iter().enumerate() {
        let pat = LabelPattern::parse(p).map_err(|m| err(format!("{key}.labels[{i}]"), m))?;
        out.push(Subject::Label(pat));
    }
    for name in w.groups {
        match nix::unistd::Group::from_name(&name) {
            Ok(Some(g)) => out.push(Subject::Group { name, gid: g.gid.as_raw() }),
            Ok(None) => {
                return Err(err(
                    format!("{key}.groups"),
                    format!("group {name:?} does not exist on this system: create it, fix the name, or use gids = [N]"),
                ))
            }
            Err(e) => return Err(err(format!("{key}.groups"), format!("cannot look up group {name:?}: {e}"))),
        }
    }
    Ok(out)
}

fn grant(
    key: &str,
    g: RawGrant,
    devices: &[DeviceConfig],
    page: u64,
) -> Result<Grant, ConfigError> {
    let Some(dev) = devices.iter().find(|d| d.name == g.device) else {
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        return Err(err(
            format!("{key}.device"),
            format!("{:?} is not a configured device (configured: {}): add a [[device]] or fix the name", g.device, if names.is_empty() { "none".to_string() } else { names.join(", ") }),
        ));
    };
    if g.bar > MAX_BAR {
        return Err(err(
            format!("{key}.bar"),
            format!("{} is not a BAR index: use 0 to {MAX_BAR}", g.bar),
        ));
    }
    let bar_size = match &dev.kind {
        DeviceKind::Sim(s) => match s.bars.iter().find(|b| b.index == g.bar) {
            Some(b) => Some(b.size),
            None => {
                let have: Vec<String> = s.bars.iter().map(|b| b.index.to_string()).collect();
                return Err(err(
                    format!("{key}.bar"),
                    format!(
                        "simulated device {:?} has no bar {} (it has {})",
                        g.device,
                        g.bar,
                        have.join(", ")
                    ),
                ));
            }
        },
        // Real BAR sizes are known once the device is opened; the daemon
        // checks every slice against them at request time.
        DeviceKind::Pci(_) => None,
    };
    let windows = grant_windows(key, g.windows, bar_size, page)?;
    let subjects = who(
        key,
        RawWho {
            uids: g.uids,
            users: g.users,
            gids: g.gids,
            groups: g.groups,
            cgroups: g.cgroups,
            labels: g.labels,
        },
    )?;
    if subjects.is_empty() {
        return Err(err(
            key,
            "names nobody: add uids, users, gids, groups, cgroups or labels (a grant for everyone must say so, e.g. gids = [100])",
        ));
    }
    let quota = grant_quota(
        key,
        [
            g.max_leases_per_session,
            g.max_leases_per_uid,
            g.max_bytes_per_session,
            g.max_bytes_per_uid,
        ],
        page,
    )?;
    Ok(Grant {
        device: g.device,
        bar: g.bar,
        windows,
        access: match g.access.unwrap_or(RawAccess::Ro) {
            RawAccess::Ro => Access::ReadOnly,
            RawAccess::Rw => Access::ReadWrite,
        },
        wc: g.wc.unwrap_or(false),
        who: subjects,
        exclusive: g.exclusive,
        on_disconnect: match g.on_disconnect {
            None | Some(RawOnDisconnect::Revoke) => OnDisconnect::Revoke,
            Some(RawOnDisconnect::Keep) => OnDisconnect::Keep,
        },
        quota,
    })
}

/// A grant's `windows`: none for the whole BAR, else page-aligned ranges
/// inside the BAR (when its size is known from the config).
fn grant_windows(
    key: &str,
    list: Option<Vec<String>>,
    bar_size: Option<u64>,
    page: u64,
) -> Result<Option<Vec<Range>>, ConfigError> {
    Ok(match list {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(err(
                    format!("{key}.windows"),
                    "is empty, which would grant nothing: remove the key to grant the whole BAR, or list windows",
                ));
            }
            let mut out = Vec::new();
            for (j, s) in list.iter().enumerate() {
                let wkey = format!("{key}.windows[{j}]");
                let r = range(&wkey, s)?;
                check_aligned(&wkey, &r, page)?;
                if let Some(size) = bar_size {
                    check_inside(&wkey, &r, size)?;
                }
                out.push(r);
            }
            Some(out)
        }
    })
}

/// A grant's quota from `max_leases_per_session`, `max_leases_per_uid`,
/// `max_bytes_per_session` and `max_bytes_per_uid` (in that order): each
/// at least 1, byte quotas in whole pages.
fn grant_quota(key: &str, raw: [Option<Num>; 4], page: u64) -> Result<Quota, ConfigError> {
    let positive = |name: &str, v: Option<Num>| -> Result<Option<u64>, ConfigError> {
        match v {
            None => Ok(None),
            Some(Num(Err(m))) => Err(err(format!("{key}.{name}"), m)),
            Some(Num(Ok(0))) => Err(err(
                format!("{key}.{name}"),
                "is 0, which would grant nothing: remove the grant, or give at least 1",
            )),
            Some(Num(Ok(n))) => Ok(Some(n)),
        }
    };
    let [leases_per_session, leases_per_uid, bytes_per_session, bytes_per_uid] = raw;
    let quota = Quota {
        leases_per_session: positive("max_leases_per_session", leases_per_session)?,
        leases_per_uid: positive("max_leases_per_uid", leases_per_uid)?,
        bytes_per_session: positive("max_bytes_per_session", bytes_per_session)?,
        bytes_per_uid: positive("max_bytes_per_uid", bytes_per_uid)?,
    };
    for (name, bytes) in [
        ("max_bytes_per_session", quota.bytes_per_session),
        ("max_bytes_per_uid", quota.bytes_per_uid),
    ] {
        if let Some(b) = bytes.filter(|b| b % page != 0) {
            return Err(err(
                format!("{key}.{name}"),
                format!(
                    "{b:#x} is not a multiple of the page size ({page}): slices are whole pages"
                ),
            ));
        }
    }
    Ok(quota)
}

fn limits(l: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let get =
        |name: &str, v: Option<Num>, default: usize, max: usize| -> Result<usize, ConfigError> {
            match v {
                None => Ok(default),
                Some(Num(Err(m))) => Err(err(format!("limits.{name}"), m)),
                Some(Num(Ok(n))) if n == 0 || n > max as u64 => Err(err(
                    format!("limits.{name}"),
                    format!("{n} is out of range: give 1 to {max} (default {default})"),
                )),
                Some(Num(Ok(n))) => Ok(n as usize),
            }
        };
    Ok(Limits {
        sessions: get("sessions", l.sessions, d.sessions, 1 << 20)?,
        sessions_per_uid: get(
            "sessions_per_uid",
            l.sessions_per_uid,
            d.sessions_per_uid,
            1 << 20,
        )?,
        leases: get("leases", l.leases, d.leases, 1 << 24)?,
        leases_per_session: get(
            "leases_per_session",
            l.leases_per_session,
            d.leases_per_session,
            1 << 24,
        )?,
        leases_per_uid: get(
            "leases_per_uid",
            l.leases_per_uid,
            d.leases_per_uid,
            1 << 24,
        )?,
        requests_in_flight: get(
            "requests_in_flight",
            l.requests_in_flight,
            d.requests_in_flight,
            4096,
        )?,
        events_queued: get("events_queued", l.events_queued, d.events_queued, 65536)?,
    })
}
