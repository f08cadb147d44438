//! The configuration file's raw TOML shapes, as serde reads them: every key
//! optional, sizes and durations in any of their spellings. [`super::validate`]
//! turns them into the model.

use super::{err, ConfigError, MAX_RECLAIM_GRACE};
use barkeep_protocol::parse_number;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// A size or offset: a TOML integer or a string like "0x1000", "64K".
#[derive(Debug, Clone)]
pub(super) struct Num(pub(super) Result<u64, String>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number: an integer, or a string like \"0x1000\" or \"64K\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(Ok(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(u64::try_from(v).map_err(|_| format!("{v} is negative"))))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Num, E> {
                Ok(Num(parse_number(v).map_err(|e| e.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) socket: Option<PathBuf>,
    pub(super) socket_mode: Option<String>,
    #[serde(default)]
    pub(super) device: Vec<RawDevice>,
    pub(super) kernel: Option<RawKernel>,
    #[serde(default)]
    pub(super) grant: Vec<RawGrant>,
    pub(super) admin: Option<RawWho>,
    pub(super) limits: Option<RawLimits>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) state_file: Option<PathBuf>,
    pub(super) reclaim_grace: Option<RawDuration>,
    pub(super) takeover_socket: Option<PathBuf>,
    pub(super) fd_store: Option<String>,
}

/// A duration: seconds as a TOML integer, or a string like "30s", "500ms",
/// "2m".
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(u64),
    Text(String),
}

pub(super) fn duration(key: &str, d: RawDuration) -> Result<std::time::Duration, ConfigError> {
    use std::time::Duration;
    let parsed = match &d {
        RawDuration::Seconds(n) => Some(Duration::from_secs(*n)),
        RawDuration::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            match (num.parse::<u64>(), unit.trim()) {
                (Ok(n), "ms") => Some(Duration::from_millis(n)),
                (Ok(n), "s" | "") => Some(Duration::from_secs(n)),
                (Ok(n), "m" | "min") => n.checked_mul(60).map(Duration::from_secs),
                _ => None,
            }
        }
    };
    match parsed {
        Some(d) if d <= MAX_RECLAIM_GRACE => Ok(d),
        Some(d) => Err(err(
            key,
            format!("{d:?} is longer than the {MAX_RECLAIM_GRACE:?} allowed"),
        )),
        None => Err(err(
            key,
            "is not a duration: write seconds (30), or a string like \"30s\", \"500ms\" or \"2m\"",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) socket: Option<PathBuf>,
    pub(super) socket_mode: Option<String>,
    pub(super) admin_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) sessions: Option<Num>,
    pub(super) sessions_per_uid: Option<Num>,
    pub(super) leases: Option<Num>,
    pub(super) leases_per_session: Option<Num>,
    pub(super) leases_per_uid: Option<Num>,
    pub(super) requests_in_flight: Option<Num>,
    pub(super) events_queued: Option<Num>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawOnDisconnect {
    Revoke,
    Keep,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawOwnership {
    Auto,
    Group,
    Cdev,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub(super) name: String,
    pub(super) pci: Option<String>,
    pub(super) vfio: Option<RawOwnership>,
    pub(super) noiommu: Option<bool>,
    pub(super) bind: Option<bool>,
    pub(super) sim: Option<RawSim>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSim {
    pub(super) bars: Vec<RawSimBar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimBar {
    pub(super) index: u32,
    pub(super) size: Num,
    #[serde(default)]
    pub(super) mappable: Vec<String>,
    #[serde(default)]
    pub(super) reserved: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKernel {
    pub(super) dma_buf_feature: Option<u32>,
    pub(super) revoke_feature: Option<u32>,
    pub(super) memattr_feature: Option<u32>,
    pub(super) search_features: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAccess {
    Ro,
    Rw,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    pub(super) device: String,
    pub(super) bar: u32,
    pub(super) windows: Option<Vec<String>>,
    pub(super) access: Option<RawAccess>,
    pub(super) wc: Option<bool>,
    #[serde(default)]
    pub(super) uids: Vec<u32>,
    #[serde(default)]
    pub(super) users: Vec<String>,
    #[serde(default)]
    pub(super) gids: Vec<u32>,
    #[serde(default)]
    pub(super) groups: Vec<String>,
    #[serde(default)]
    pub(super) cgroups: Vec<String>,
    #[serde(default)]
    pub(super) labels: Vec<String>,
    pub(super) exclusive: Option<bool>,
    pub(super) on_disconnect: Option<RawOnDisconnect>,
    pub(super) max_leases_per_session: Option<Num>,
    pub(super) max_leases_per_uid: Option<Num>,
    pub(super) max_bytes_per_session: Option<Num>,
    pub(super) max_bytes_per_uid: Option<Num>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWho {
    #[serde(default)]
    pub(super) uids: Vec<u32>,
    #[serde(default)]
    pub(super) users: Vec<String>,
    #[serde(default)]
    pub(super) gids: Vec<u32>,
    #[serde(default)]
    pub(super) groups: Vec<String>,
    #[serde(default)]
    pub(super) cgroups: Vec<String>,
    #[serde(default)]
    pub(super) labels: Vec<String>,
}
