//! `barkeepd check-config`'s plain-words account of a configuration.

use super::*;
use std::fmt::Write;

impl Config {
    /// A plain-words account of what this configuration does, for
    /// `barkeepd check-config`.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "socket {} (mode {:04o}; access is decided by the grants below)",
            self.socket.display(),
            self.socket_mode
        );
        if self.devices.is_empty() {
            let _ = writeln!(
                out,
                "no devices: every acquire will fail with unknown-device"
            );
        }
        for d in &self.devices {
            explain_device(&mut out, d);
        }
        let _ = writeln!(
            out,
            "feature numbers: DMA_BUF {}, DMA_BUF_REVOKE {}, DMA_BUF_MEMATTR {}",
            self.kernel.dma_buf, self.kernel.revoke, self.kernel.memattr
        );
        if self.grants.is_empty() {
            let _ = writeln!(out, "no grants: every acquire is denied (default deny)");
        }
        for (i, g) in self.grants.iter().enumerate() {
            explain_grant(&mut out, i, g);
        }
        let admins: Vec<String> = self.admin.who.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(
            out,
            "administrators (revoke, reload, peek, poke, all leases): {}",
            admins.join(", ")
        );
        explain_limits(&mut out, &self.limits, &self.metrics);
        out
    }
}

/// One device: how it is reached and, for a simulated one, its BARs.
fn explain_device(out: &mut String, d: &DeviceConfig) {
    match &d.kind {
        DeviceKind::Pci(o) => {
            let own = match o.ownership {
                Ownership::Auto => "cdev+iommufd if available, else group+container",
                Ownership::Group => "group+container",
                Ownership::Cdev => "cdev+iommufd",
            };
            let _ = writeln!(
                    out,
                    "device {:?}: PCI {} through VFIO ({own}{}{}); BARs are read from the device at start-up",
                    d.name,
                    o.pci,
                    if o.noiommu { ", NOIOMMU allowed" } else { "" },
                    if o.bind { ", bound to vfio-pci at start-up" } else { "" },
                );
        }
        DeviceKind::Sim(s) => {
            let _ = writeln!(
                out,
                "device {:?}: simulated (memfd per slice; not a security boundary)",
                d.name
            );
            for b in &s.bars {
                let mappable = if b.mappable.is_empty() {
                    "all mappable".to_string()
                } else {
                    let v: Vec<String> = b.mappable.iter().map(range_text).collect();
                    format!("mappable {}", v.join(", "))
                };
                let _ = write!(
                    out,
                    "  bar {}: {} ({:#x} bytes), {mappable}",
                    b.index,
                    size_text(b.size),
                    b.size
                );
                for r in &b.reserved {
                    let _ = write!(out, ", reserved {}", range_text(&r.range));
                }
                let _ = writeln!(out);
            }
        }
    }
}

/// One grant (`i` counted from 0): who may map what, and on which terms.
fn explain_grant(out: &mut String, i: usize, g: &Grant) {
    let who: Vec<String> = g.who.iter().map(|s| s.to_string()).collect();
    let windows = match &g.windows {
        None => "the whole BAR".to_string(),
        Some(w) => {
            let v: Vec<String> = w.iter().map(range_text).collect();
            format!("windows {}", v.join(", "))
        }
    };
    let _ = writeln!(
        out,
        "grant #{}: {} may map {} of {:?} bar {} {}{}",
        i + 1,
        who.join(" or "),
        windows,
        g.device,
        g.bar,
        match g.access {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        },
        if g.wc {
            ", write-combining allowed"
        } else {
            ""
        }
    );
    let mut terms = vec![
        if g.exclusive_for(g.access) {
            "leases exclusive (no overlap)".to_string()
        } else {
            "leases may overlap other shared leases".to_string()
        },
        match g.on_disconnect {
            OnDisconnect::Revoke => "revoked on disconnect".to_string(),
            OnDisconnect::Keep => "kept after disconnect until an admin revokes them".to_string(),
        },
    ];
    let q = &g.quota;
    for (v, what) in [
        (
            q.leases_per_session.map(|n| n.to_string()),
            "leases per session",
        ),
        (q.leases_per_uid.map(|n| n.to_string()), "leases per uid"),
        (q.bytes_per_session.map(size_text), "bytes per session"),
        (q.bytes_per_uid.map(size_text), "bytes per uid"),
    ] {
        if let Some(v) = v {
            terms.push(format!("at most {v} {what}"));
        }
    }
    let _ = writeln!(out, "  {}", terms.join("; "));
}

/// The daemon-wide limits and who sees the metrics.
fn explain_limits(out: &mut String, l: &Limits, m: &MetricsConfig) {
    let _ = writeln!(
            out,
            "limits: {} sessions ({} per uid), {} leases ({} per session, {} per uid), {} requests in flight and {} queued events per session",
            l.sessions,
            l.sessions_per_uid,
            l.leases,
            l.leases_per_session,
            l.leases_per_uid,
            l.requests_in_flight,
            l.events_queued
        );
    let _ = writeln!(
        out,
        "metrics: `barkeep metrics` for {}; {}",
        if m.admin_only {
            "administrators only"
        } else {
            "anyone who can connect"
        },
        match &m.socket {
            Some(p) => format!(
                "also served on {} (mode {:04o})",
                p.display(),
                m.socket_mode
            ),
            None => "no metrics socket".to_string(),
        }
    );
}
