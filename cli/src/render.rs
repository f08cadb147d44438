//! The stable JSON shapes of the CLI (documented in `main.rs`) and its
//! human-readable tables.

use barkeep_client::{BarInfo, Capabilities, DeviceInfo, Lease, LeaseInfo, StatusInfo, Welcome};
use serde_json::{json, Value};
use std::fmt::Write;
use std::os::fd::{AsRawFd, BorrowedFd};

pub fn caps(c: &Capabilities) -> Value {
    json!({
        "export": c.export,
        "mmap": c.mmap,
        "revoke": c.revoke,
        "write_combining": c.write_combining,
        "device_revoke": c.device_revoke,
    })
}

pub fn lease(l: &Lease) -> Value {
    json!({
        "id": l.id.to_string(),
        "device": l.device,
        "bar": l.bar,
        "offset": l.offset,
        "length": l.length,
        "access": l.access.as_str(),
        "memattr": l.memattr.as_str(),
        "buffer_name": l.buffer_name,
    })
}

pub fn lease_info(i: &LeaseInfo) -> Value {
    let mut v = lease(&i.lease);
    let m = v.as_object_mut().expect("object");
    m.insert("session".into(), json!(i.session));
    m.insert("client_name".into(), json!(i.client_name));
    m.insert("uid".into(), json!(i.holder.uid));
    m.insert("gid".into(), json!(i.holder.gid));
    m.insert("pid".into(), json!(i.holder.pid));
    m.insert("groups".into(), json!(i.holder.groups));
    m.insert("cgroup".into(), json!(i.holder.cgroup));
    m.insert("label".into(), json!(i.holder.label));
    m.insert("age_ms".into(), json!(i.age_ms));
    m.insert("state".into(), json!(i.state.as_str()));
    v
}

pub fn welcome(w: &Welcome) -> Value {
    json!({
        "session_id": w.session_id,
        "admin": w.admin,
        "uid": w.identity.uid,
        "gid": w.identity.gid,
        "pid": w.identity.pid,
        "groups": w.identity.groups,
        "cgroup": w.identity.cgroup,
        "label": w.identity.label,
    })
}

pub fn status(s: &StatusInfo, w: &Welcome) -> Value {
    let devices: Vec<Value> = s
        .devices
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "backend": d.backend.to_string(),
                "capabilities": caps(&d.capabilities),
                "leases": d.leases,
                "problem": d.problem,
                "notes": d.notes,
            })
        })
        .collect();
    json!({
        "daemon_version": s.daemon_version,
        "protocol_version": s.protocol_version,
        "uptime_ms": s.uptime_ms,
        "sessions": s.sessions,
        "leases": s.leases,
        "page_size": s.page_size,
        "capabilities": caps(&s.capabilities),
        "devices": devices,
        "session": welcome(w),
    })
}

fn bar(b: &BarInfo) -> Value {
    json!({
        "index": b.index,
        "size": b.size,
        "readable": b.readable,
        "writable": b.writable,
        "mmap": b.mmap,
        "mappable": b.mappable.iter().map(|r| json!({"offset": r.offset, "length": r.length})).collect::<Vec<_>>(),
        "reserved": b.reserved.iter().map(|r| json!({"offset": r.range.offset, "length": r.range.length, "what": r.what})).collect::<Vec<_>>(),
    })
}

pub fn devices(ds: &[DeviceInfo]) -> Value {
    let list: Vec<Value> = ds
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "backend": d.backend.to_string(),
                "pci": d.pci,
                "ownership": d.ownership,
                "problem": d.problem,
                "capabilities": caps(&d.capabilities),
                "bars": d.bars.iter().map(bar).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "devices": list })
}

// ---- human output -----------------------------------------------------------

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1M`, `64K`, or hex when not a whole number of KiB.
pub fn size(n: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    const K: u64 = 1 << 10;
    match n {
        0 => "0".into(),
        n if n % G == 0 => format!("{}G", n / G),
        n if n % M == 0 => format!("{}M", n / M),
        n if n % K == 0 => format!("{}K", n / K),
        n => format!("{n:#x}"),
    }
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

pub fn human_status(s: &StatusInfo, w: &Welcome) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "barkeepd {} (protocol {}), up {:.1}s, {} session(s), {} lease(s), page size {}",
        s.daemon_version,
        s.protocol_version,
        s.uptime_ms as f64 / 1000.0,
        s.sessions,
        s.leases,
        s.page_size
    );
    let _ = writeln!(
        out,
        "you: uid {} gid {} pid {} cgroup {}, session {}, admin: {}",
        w.identity.uid,
        w.identity.gid,
        w.identity.pid,
        w.identity.cgroup.as_deref().unwrap_or("-"),
        w.session_id,
        yes(w.admin)
    );
    let _ = writeln!(out, "common capabilities: {}", caps_words(&s.capabilities));
    out.push('\n');
    let mut rows = vec![vec![
        "DEVICE".into(),
        "BACKEND".into(),
        "LEASES".into(),
        "EXPORT".into(),
        "MMAP".into(),
        "REVOKE".into(),
        "WC".into(),
        "DEVICE-REVOKE".into(),
    ]];
    for d in &s.devices {
        let c = &d.capabilities;
        rows.push(vec![
            d.name.clone(),
            d.backend.to_string(),
            d.leases.to_string(),
            yes(c.export),
            yes(c.mmap),
            yes(c.revoke),
            yes(c.write_combining),
            yes(c.device_revoke),
        ]);
    }
    out.push_str(&table(&rows));
    for d in &s.devices {
        if let Some(p) = &d.problem {
            let _ = writeln!(out, "{}: problem: {p}", d.name);
        }
        for n in &d.notes {
            let _ = writeln!(out, "{}: note: {n}", d.name);
        }
    }
    out
}

fn caps_words(c: &Capabilities) -> String {
    let mut w = Vec::new();
    for (on, name) in [
        (c.export, "export"),
        (c.mmap, "mmap"),
        (c.revoke, "revoke"),
        (c.write_combining, "write-combining"),
        (c.device_revoke, "device-revoke"),
    ] {
        w.push(if on {
            name.to_string()
        } else {
            format!("no-{name}")
        });
    }
    w.join(" ")
}

pub fn human_devices(ds: &[DeviceInfo]) -> String {
    if ds.is_empty() {
        return "no devices configured\n".into();
    }
    let mut out = String::new();
    for d in ds {
        let _ = writeln!(
            out,
            "{} ({}{}{}): {}",
            d.name,
            d.backend,
            d.pci
                .as_deref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default(),
            // "sim (sim)" says nothing; "vfio 0000:00:04.0, owned via cdev" does.
            if d.ownership == d.backend.to_string() {
                String::new()
            } else {
                format!(", owned via {}", d.ownership)
            },
            caps_words(&d.capabilities)
        );
        if let Some(p) = &d.problem {
            let _ = writeln!(out, "  problem: {p}");
        }
        let mut rows = Vec::new();
        for b in &d.bars {
            let access = match (b.readable, b.writable) {
                (true, true) => "rw",
                (true, false) => "ro",
                (false, true) => "wo",
                (false, false) => "--",
            };
            let mappable = if b.mappable.is_empty() {
                "nothing mappable".to_string()
            } else {
                let v: Vec<String> = b
                    .mappable
                    .iter()
                    .map(|r| format!("{:#x}..{:#x}", r.offset, r.offset + r.length))
                    .collect();
                format!("mappable {}", v.join(", "))
            };
            let reserved: Vec<String> = b
                .reserved
                .iter()
                .map(|r| {
                    format!(
                        "reserved {:#x}..{:#x} ({})",
                        r.range.offset,
                        r.range.offset + r.range.length,
                        r.what
                    )
                })
                .collect();
            rows.push(vec![
                format!("  BAR{}", b.index),
                format!("{:#x} ({})", b.size, size(b.size)),
                access.into(),
                if b.mmap { "mmap" } else { "no-mmap" }.into(),
                mappable,
                reserved.join(", "),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

pub fn human_leases(ls: &[LeaseInfo]) -> String {
    if ls.is_empty() {
        return "no leases\n".into();
    }
    let mut rows = vec![[
        "LEASE", "DEVICE", "BAR", "RANGE", "ACCESS", "MEMATTR", "STATE", "SESSION", "CLIENT",
        "UID", "PID", "AGE", "CGROUP",
    ]
    .map(String::from)
    .to_vec()];
    for i in ls {
        let l = &i.lease;
        rows.push(vec![
            l.id.to_string(),
            l.device.clone(),
            l.bar.to_string(),
            format!("{:#x}+{:#x}", l.offset, l.length),
            l.access.to_string(),
            l.memattr.to_string(),
            i.state.as_str().into(),
            i.session.to_string(),
            i.client_name.clone(),
            i.holder.uid.to_string(),
            i.holder.pid.to_string(),
            format!("{:.1}s", i.age_ms as f64 / 1000.0),
            i.holder.cgroup.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows)
}

/// Hex dump, 16 bytes a line, addressed from `base`.
pub fn hexdump(base: u64, bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(out, "{:#010x}: {}", base + 16 * i as u64, hex.join(" "));
    }
    out
}

/// What the fd says about itself: a DMABUF's fdinfo has `size:` and
/// `exp_name:`; a memfd (simulated device) only has a file size.
pub fn buffer_info(buffer: BorrowedFd<'_>) -> (Value, String) {
    let fd = buffer.as_raw_fd();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let field = |name: &str| {
        fdinfo.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(|r| r.trim().to_string())
        })
    };
    let exp_name = field("exp_name");
    let (size, from) = match field("size").and_then(|s| s.parse::<u64>().ok()) {
        Some(s) => (Some(s), Some("fdinfo")),
        None => match nix::sys::stat::fstat(buffer) {
            Ok(st) => (Some(st.st_size as u64), Some("fstat")),
            Err(_) => (None, None),
        },
    };
    let human = format!(
        "fd {fd}: size {} ({}){}",
        size.map(|s| format!("{s:#x}"))
            .unwrap_or_else(|| "unknown".into()),
        from.unwrap_or("no size"),
        exp_name
            .as_deref()
            .map(|e| format!(", exporter {e}"))
            .unwrap_or_default()
    );
    (
        json!({"fd": fd, "size": size, "size_from": from, "exp_name": exp_name}),
        human,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tables() {
        assert_eq!(size(1 << 20), "1M");
        assert_eq!(size(64 << 10), "64K");
        assert_eq!(size(0x1800), "6K");
        assert_eq!(size(100), "0x64");
        let t = table(&[
            vec!["A".into(), "BB".into()],
            vec!["CCC".into(), "D".into()],
        ]);
        assert_eq!(t, "A    BB\nCCC  D\n");
        assert_eq!(hexdump(0x1000, &[0xde, 0xad]), "0x00001000: de ad\n");
    }
}
