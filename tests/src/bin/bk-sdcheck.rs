//! Guest-side driver of the real-systemd suite (tests/tests/systemd_vm.rs,
//! tests/vm/systemd/checks.sh): runs inside the QEMU guest, where systemd is
//! PID 1 and barkeepd comes from the project's .deb.
//!
//! Subcommands (every figure is printed as `SDFIG name value`):
//! - `hold DEVICE BAR START COUNT SESSIONS [--map]`: acquire COUNT one-page
//!   slices from START on, spread over SESSIONS reconnecting sessions, and
//!   keep them; then read commands on stdin (`status`, `write K`, `probe`,
//!   `release`, `quit`), answering each with one line that ends in
//!   `#SEQ` (the command's line number).
//! - `reclaimed OLDPID EXPECT TIMEOUT_S`: wait for a barkeepd with another
//!   MainPID to be active (READY), then until the daemon holds EXPECT active
//!   and no awaiting-reclaim leases; prints the time from READY.
//! - `storm DEVICE BAR OFFSET COUNT SESSIONS LABEL`: COUNT acquire+release
//!   round trips, and the CPU (cgroup `cpu.stat` usage_usec) that PID 1,
//!   barkeepd and journald spent on them.
//! - `audit`: reads `journalctl -o json` on stdin and counts barkeepd's
//!   audit records by action.

use barkeep_client::{Access, Client, ConnectOptions, MemAttrRequest, Slice, SliceRequest};
use barkeep_tests::mapping::probe_in_child;
use std::io::{BufRead, Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
const SOCK: &str = "/run/barkeep/barkeep.sock";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["hold", dev, bar, start, count, sessions, rest @ ..] => hold(
            dev,
            num(bar) as u32,
            num(start),
            num(count),
            num(sessions),
            rest.contains(&"--map"),
        ),
        ["reclaimed", oldpid, expect, timeout] => {
            reclaimed(oldpid, num(expect), Duration::from_secs(num(timeout)))
        }
        ["storm", dev, bar, off, count, sessions, label] => storm(
            dev,
            num(bar) as u32,
            num(off),
            num(count),
            num(sessions),
            label,
        ),
        ["audit"] => audit(),
        _ => Err(format!("usage: see the module documentation ({args:?})")),
    };
    if let Err(e) = r {
        eprintln!("bk-sdcheck: {e}");
        std::process::exit(1);
    }
}

fn num(s: &str) -> u64 {
    let parsed = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("not a number: {s}"))
}

fn req(dev: &str, bar: u32, offset: u64) -> SliceRequest {
    SliceRequest {
        device: dev.into(),
        bar,
        offset,
        length: PAGE,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::Uncached,
    }
}

fn connect(name: &str, reconnect: Option<Duration>) -> Result<Client, String> {
    ConnectOptions::new()
        .name(name)
        .reconnect(reconnect)
        .connect(SOCK)
        .map_err(|e| format!("connect: {e}"))
}

/// The byte pattern number `k` (16 bytes), as announced to the host.
fn pattern(k: u64) -> Vec<u8> {
    (0..16u64)
        .map(|i| (0x5a ^ (k * 16 + i) as u8).wrapping_add(k as u8))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hold(
    dev: &str,
    bar: u32,
    start: u64,
    count: u64,
    sessions: u64,
    map: bool,
) -> Result<(), String> {
    let sessions = sessions.max(1);
    let t0 = Instant::now();
    let per = count.div_ceil(sessions);
    let failed = Arc::new(std::sync::Mutex::new(None::<(u64, String)>));
    let mut handles = Vec::new();
    for s in 0..sessions {
        let dev = dev.to_string();
        let failed = failed.clone();
        handles.push(std::thread::spawn(move || {
            let client = connect(&format!("sdcheck-hold-{s}"), Some(Duration::from_secs(600)))?;
            let mut slices = Vec::new();
            let first = s * per;
            let last = ((s + 1) * per).min(count);
            for i in first..last {
                if failed.lock().unwrap().is_some() {
                    break;
                }
                match client.acquire(req(&dev, bar, start + i * PAGE)) {
                    Ok(sl) => slices.push(sl),
                    Err(e) => {
                        failed.lock().unwrap().get_or_insert((i, e.to_string()));
                        break;
                    }
                }
            }
            Ok::<_, String>((client, slices))
        }));
    }
    let mut clients = Vec::new();
    let mut slices: Vec<Slice> = Vec::new();
    for h in handles {
        let (c, s) = h.join().map_err(|_| "a holder thread panicked")??;
        clients.push(c);
        slices.extend(s);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("SDFIG hold_acquired {}", slices.len());
    println!("SDFIG hold_acquire_s {secs:.2}");
    if let Some((i, e)) = failed.lock().unwrap().take() {
        println!(
            "HOLD-FAILED after {} leases (request {i}): {e}",
            slices.len()
        );
    }
    let mut mapping = match (map, slices.first()) {
        (true, Some(s)) => Some(s.map().map_err(|e| format!("map: {e}"))?),
        _ => None,
    };
    println!("HELD {}", slices.len());
    std::io::stdout().flush().ok();
    let stdin = std::io::stdin();
    for (seq, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["status"] => {
                let revoked = slices.iter().filter(|s| s.is_revoked()).count();
                let mine = clients
                    .iter()
                    .map(|c| c.leases(false).map(|l| l.len()).unwrap_or(0))
                    .sum::<usize>();
                let sessions: Vec<String> =
                    clients.iter().map(|c| c.session_id().to_string()).collect();
                format!(
                    "STATUS held={} revoked={revoked} listed={mine} sessions={}",
                    slices.len(),
                    sessions.join(",")
                )
            }
            ["write", k] => match &mapping {
                Some(m) => {
                    let k = num(k);
                    let p = pattern(k);
                    let at = 0x10 * k;
                    match m.write_bytes(at, &p) {
                        Ok(()) => {
                            let off = slices[0].lease().offset + at;
                            format!("SDWRITE {off:#x} {}", hex(&p))
                        }
                        Err(e) => format!("WRITE-FAILED {e}"),
                    }
                }
                None => "WRITE-FAILED no mapping (hold without --map)".into(),
            },
            ["probe"] => match &mapping {
                Some(m) => match probe_in_child(m.as_ptr() as usize) {
                    Ok(v) => format!("PROBE reads {v:#010x}"),
                    Err(e) => format!("PROBE {e}"),
                },
                None => "PROBE no mapping".into(),
            },
            ["release"] => {
                let n = slices.len();
                drop(mapping.take());
                slices.clear();
                format!("RELEASED {n}")
            }
            ["quit"] => break,
            _ => format!("UNKNOWN {line}"),
        };
        println!("{answer} #{seq}");
        std::io::stdout().flush().ok();
    }
    drop(mapping);
    drop(slices);
    drop(clients);
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, systemd's `*TimestampMonotonic` clock.
fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

fn unit_props(unit: &str, props: &str) -> std::collections::HashMap<String, String> {
    let out = Command::new("systemctl")
        .args(["show", "-p", props, unit])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Leases the daemon reports per state, summed over devices (metrics).
fn lease_states(c: &Client) -> Result<(u64, u64), String> {
    let text = c.metrics().map_err(|e| format!("metrics: {e}"))?;
    let (mut active, mut awaiting) = (0, 0);
    for l in text.lines().filter(|l| l.starts_with("barkeep_leases{")) {
        let v: u64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if l.contains("state=\"active\"") {
            active += v;
        } else if l.contains("state=\"awaiting-reclaim\"") {
            awaiting += v;
        }
    }
    Ok((active, awaiting))
}

fn reclaimed(oldpid: &str, expect: u64, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    let ready_mono = loop {
        let p = unit_props(
            "barkeepd.service",
            "MainPID,ActiveState,ActiveEnterTimestampMonotonic,NRestarts",
        );
        let pid = p.get("MainPID").map(String::as_str).unwrap_or("0");
        if pid != "0" && pid != oldpid && p.get("ActiveState").map(String::as_str) == Some("active")
        {
            println!(
                "RESTARTED pid={pid} nrestarts={}",
                p.get("NRestarts").cloned().unwrap_or_default()
            );
            break p
                .get("ActiveEnterTimestampMonotonic")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if t0.elapsed() > timeout || p.get("ActiveState").map(String::as_str) == Some("failed") {
            let st = Command::new("systemctl")
                .args(["status", "--no-pager", "-n", "20", "barkeepd.service"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            return Err(format!(
                "barkeepd did not come back (READY) within {:.1} s: {p:?}\n{st}",
                t0.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let c = connect("sdcheck-watch", None)?;
    loop {
        let (active, awaiting) = lease_states(&c)?;
        if awaiting == 0 && active >= expect {
            let done = mono_us();
            let secs = done.saturating_sub(ready_mono) as f64 / 1e6;
            println!("RECLAIMED {active} leases, {secs:.3} s after READY");
            println!("SDFIG reclaim_s {secs:.3}");
            return Ok(());
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "after {timeout:?}: {active} active, {awaiting} awaiting reclaim, {expect} expected"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cpu_usec(cgroup: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{cgroup}/cpu.stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("usage_usec ").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

const CGROUPS: [(&str, &str); 3] = [
    ("pid1", "init.scope"),
    ("barkeepd", "system.slice/barkeepd.service"),
    ("journald", "system.slice/systemd-journald.service"),
];

fn storm(
    dev: &str,
    bar: u32,
    off: u64,
    count: u64,
    sessions: u64,
    label: &str,
) -> Result<(), String> {
    let sessions = sessions.max(1);
    let clients = (0..sessions)
        .map(|s| connect(&format!("sdcheck-storm-{s}"), None))
        .collect::<Result<Vec<_>, _>>()?;
    let granted = Arc::new(AtomicU64::new(0));
    let before: Vec<u64> = CGROUPS.iter().map(|(_, c)| cpu_usec(c)).collect();
    let t0 = Instant::now();
    let per = count / sessions;
    std::thread::scope(|scope| {
        let mut hs = Vec::new();
        for (s, c) in clients.iter().enumerate() {
            let granted = granted.clone();
            let dev = dev.to_string();
            hs.push(scope.spawn(move || -> Result<(), String> {
                for _ in 0..per {
                    let sl = c
                        .acquire(req(&dev, bar, off + s as u64 * PAGE))
                        .map_err(|e| format!("acquire: {e}"))?;
                    granted.fetch_add(1, Ordering::Relaxed);
                    c.release(sl.lease().id)
                        .map_err(|e| format!("release: {e}"))?;
                }
                Ok(())
            }));
        }
        hs.into_iter()
            .try_for_each(|h| h.join().map_err(|_| "storm thread panicked".to_string())?)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let after: Vec<u64> = CGROUPS.iter().map(|(_, c)| cpu_usec(c)).collect();
    let n = granted.load(Ordering::Relaxed);
    println!("SDFIG {label}_grants {n}");
    println!("SDFIG {label}_rt_per_s {:.0}", n as f64 / secs);
    let mut per_rt = Vec::new();
    for (i, (name, _)) in CGROUPS.iter().enumerate() {
        let us = after[i].saturating_sub(before[i]) as f64 / n.max(1) as f64;
        per_rt.push(us);
        println!("SDFIG {label}_{name}_us_per_rt {us:.2}");
    }
    println!(
        "SDFIG {label}_pid1_pct_of_barkeepd {:.2}",
        100.0 * per_rt[0] / per_rt[1].max(1e-9)
    );
    Ok(())
}

fn audit() -> Result<(), String> {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(o) = v.as_object() else { continue };
        // tracing-journald puts the event's fields as upper-case journal
        // fields, with or without a prefix: ACTION or F_ACTION.
        let action = o
            .iter()
            .find(|(k, _)| *k == "ACTION" || k.ends_with("_ACTION"))
            .and_then(|(_, v)| v.as_str());
        if let Some(a) = action {
            *counts.entry(a.to_string()).or_default() += 1;
        }
    }
    for (a, n) in &counts {
        println!("SDFIG audit_{a} {n}");
    }
    if counts.is_empty() {
        println!("SDFIG audit_grant 0");
    }
    Ok(())
}
