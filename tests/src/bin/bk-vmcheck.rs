//! The guest half of the real-kernel suite (tests/vm): runs the scenarios of
//! one boot and prints one `BKTEST <scenario> PASS|FAIL <detail>` line each.
//!
//! `bk-vmcheck run BOOT` runs as root in the guest (started by /init): it
//! writes barkeepd configs, starts and stops the daemons, drives the
//! `barkeep` CLI (`--json`) as the unprivileged users `tenant` (1000) and
//! `tenant2` (1001), and does the admin steps (revoke, peek, poke) as root.
//! Where the CLI cannot check something precisely (the received fd's size,
//! mmap past the slice, SIGBUS after revoke, /proc/PID/maps), it re-runs
//! itself as the tenant (`bk-vmcheck client CHECK ...`) and makes the check
//! with the client library and raw system calls.
//!
//! Every pattern written into the ivshmem BAR is announced with
//! `BKWRITE <scenario> <slice start> <k> <hex>`: the host then finds exactly
//! those bytes at slice start + k in the backing file, and zeros elsewhere.

use barkeep_client::{Client, Error as ClientError, Slice};
use barkeep_protocol::{Access, MemAttrRequest, SliceRequest};
use barkeep_tests::mapping::probe_in_child;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TENANT: u32 = 1000;
const TENANT2: u32 = 1001;
const ROOT: u32 = 0;
const PAGE: u64 = 4096;
/// Longest any one CLI or client step may take under TCG.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

type Check = Result<String, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match args.as_slice() {
        ["run", boot] => run(boot),
        ["client", check, rest @ ..] => client_main(check, rest),
        _ => {
            eprintln!("usage: bk-vmcheck run BOOT | bk-vmcheck client CHECK ARGS...");
            2
        }
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------
// Orchestration (root)
// ---------------------------------------------------------------------------

fn report(scenario: &str, result: &Check) -> bool {
    match result {
        Ok(detail) => println!("BKTEST {scenario} PASS {}", one_line(detail)),
        Err(detail) => println!("BKTEST {scenario} FAIL {}", one_line(detail)),
    }
    let _ = std::io::stdout().flush();
    result.is_ok()
}

fn one_line(s: &str) -> String {
    s.replace('\n', " | ")
}

fn bkwrite(scenario: &str, slice_start: u64, k: u64, bytes: &[u8]) {
    println!("BKWRITE {scenario} {slice_start:#x} {k:#x} {}", hex(bytes));
    let _ = std::io::stdout().flush();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A distinct 16-byte pattern per (tag, write).
fn pattern(tag: u8, n: u8) -> Vec<u8> {
    (0..16u8)
        .map(|i| match i % 4 {
            0 => tag,
            1 => n,
            2 => 0x5a ^ i,
            _ => 0xc0 | i,
        })
        .collect()
}

/// A running barkeepd, stopped (and its log shown on failure) by the caller.
struct Daemon {
    name: String,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    failed: bool,
}

struct DeviceCfg<'a> {
    name: &'a str,
    pci: String,
}

fn daemon_config(socket: &Path, ownership: &str, devices: &[DeviceCfg<'_>]) -> String {
    let mut c = format!(
        "socket = {:?}\nsocket_mode = \"0666\"\n\n",
        socket.display().to_string()
    );
    for d in devices {
        c.push_str(&format!(
            "[[device]]\nname = {:?}\npci = {:?}\nvfio = {:?}\n\n",
            d.name, d.pci, ownership
        ));
    }
    // shm0: both tenants, read-write, write-combining allowed.
    // nvme0 and edu0: tenant only, read-only, whole BAR0 (so that a refusal
    // of the MSI-X table comes from the daemon's own check, not the policy).
    c.push_str(
        "[[grant]]\ndevice = \"shm0\"\nbar = 2\naccess = \"rw\"\nwc = true\nusers = [\"tenant\", \"tenant2\"]\n\n",
    );
    if devices.iter().any(|d| d.name == "nvme0") {
        c.push_str("[[grant]]\ndevice = \"nvme0\"\nbar = 0\naccess = \"ro\"\nuids = [1000]\n\n");
    }
    if devices.iter().any(|d| d.name == "edu0") {
        c.push_str("[[grant]]\ndevice = \"edu0\"\nbar = 0\naccess = \"ro\"\nuids = [1000]\n\n");
    }
    c
}

fn env_bdf(key: &str) -> String {
    let text = std::fs::read_to_string("/bk/env").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
        .to_string()
}

impl Daemon {
    fn start(name: &str, ownership: &str, devices: &[DeviceCfg<'_>]) -> Result<Daemon, String> {
        Daemon::start_with(name, ownership, devices, "")
    }

    /// Like `start`, with `extra` appended to the config (e.g. `[kernel]`).
    fn start_with(
        name: &str,
        ownership: &str,
        devices: &[DeviceCfg<'_>],
        extra: &str,
    ) -> Result<Daemon, String> {
        let dir = PathBuf::from("/run/barkeep");
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let socket = dir.join(format!("{name}.sock"));
        let config = dir.join(format!("{name}.toml"));
        let log = PathBuf::from(format!("/tmp/barkeepd-{name}.log"));
        let text = daemon_config(&socket, ownership, devices) + extra;
        std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
        let logf = std::fs::File::create(&log).map_err(|e| format!("creating log: {e}"))?;
        let child = Command::new("/usr/bin/barkeepd")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("starting barkeepd: {e}"))?;
        let mut d = Daemon {
            name: name.to_string(),
            child,
            socket,
            log,
            failed: false,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                d.failed = true;
                return Err(format!(
                    "barkeepd ({name}) exited during start-up ({st}); log:\n{}",
                    d.log_text()
                ));
            }
            if d.socket.exists() && Client::connect(&d.socket).is_ok() {
                println!(
                    "BKTEST daemon-{name} INFO ready after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(d);
            }
            if start.elapsed() > STEP_TIMEOUT {
                let _ = d.child.kill();
                let _ = d.child.wait();
                return Err(format!(
                    "barkeepd ({name}) did not accept connections within {} s; log:\n{}",
                    STEP_TIMEOUT.as_secs(),
                    d.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Records a scenario result; a failure makes `stop` print the log.
    fn check(&mut self, scenario: &str, result: Check) -> bool {
        let ok = report(scenario, &result);
        self.failed |= !ok;
        ok
    }

    /// Runs `barkeep --socket S --json ARGS` as `uid`.
    fn cli(&self, uid: u32, args: &[&str]) -> Cli {
        let mut cmd = Command::new("/usr/bin/barkeep");
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .args(args);
        run_as(cmd, uid, args.join(" "))
    }

    /// Runs `bk-vmcheck client CHECK SOCKET ARGS` as `uid`; forwards its
    /// BKWRITE lines and returns its verdict.
    fn client(&self, uid: u32, check: &str, args: &[&str]) -> Check {
        let mut cmd = Command::new(self_exe());
        cmd.arg("client").arg(check).arg(&self.socket).args(args);
        let out = run_as(cmd, uid, format!("client {check}"));
        client_verdict(&out)
    }

    fn stop(mut self) {
        // SAFETY: kill() with a pid we own (our child) and a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        let mut status = None;
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                status = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            println!(
                "BKTEST daemon-{} FAIL did not exit within 10 s of SIGTERM",
                self.name
            );
            self.failed = true;
        }
        if self.failed {
            println!("---- barkeepd ({}) log ----", self.name);
            print!("{}", self.log_text());
            println!("---- end of barkeepd ({}) log ----", self.name);
        }
    }
}

fn self_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/bk-vmcheck"))
}

/// What a CLI run printed.
struct Cli {
    what: String,
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
    json: Value,
}

impl Cli {
    fn describe(&self) -> String {
        format!(
            "`barkeep {}` -> {} stdout={} stderr={}",
            self.what,
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }

    /// The JSON, if the command succeeded.
    fn success(&self) -> Result<&Value, String> {
        if self.ok && !self.json.is_null() {
            Ok(&self.json)
        } else {
            Err(format!("expected success: {}", self.describe()))
        }
    }

    /// The `error` object, if the command failed as it should.
    fn failure(&self) -> Result<&Value, String> {
        match self.json.get("error") {
            Some(e) if !self.ok => Ok(e),
            _ => Err(format!("expected an error: {}", self.describe())),
        }
    }
}

fn run_as(mut cmd: Command, uid: u32, what: String) -> Cli {
    if uid != ROOT {
        cmd.uid(uid).gid(uid);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Cli {
                what,
                ok: false,
                status: format!("could not start: {e}"),
                stdout: String::new(),
                stderr: String::new(),
                json: Value::Null,
            }
        }
    };
    let (stdout, stderr) = collect(&mut child);
    let status = wait_timeout(&mut child, STEP_TIMEOUT);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    Cli {
        what,
        ok: status.as_ref().is_ok_and(|s| s.success()),
        status: match status {
            Ok(s) => s.to_string(),
            Err(e) => e,
        },
        stdout,
        stderr,
        json,
    }
}

type Reader = std::thread::JoinHandle<String>;

fn collect(child: &mut Child) -> (Reader, Reader) {
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    )
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {} s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// A client check prints BKWRITE lines, then `OK detail` or `FAIL detail`.
fn client_verdict(out: &Cli) -> Check {
    let mut verdict = None;
    for line in out.stdout.lines() {
        if line.starts_with("BKWRITE ") {
            println!("{line}");
        } else if let Some(d) = line.strip_prefix("OK ") {
            verdict = Some(Ok(d.to_string()));
        } else if let Some(d) = line.strip_prefix("FAIL ") {
            verdict = Some(Err(d.to_string()));
        }
    }
    let _ = std::io::stdout().flush();
    match verdict {
        Some(Ok(d)) if out.ok => Ok(d),
        Some(Err(d)) => Err(d),
        _ => Err(format!(
            "client check gave no verdict ({}); stderr: {}",
            out.status,
            out.stderr.trim()
        )),
    }
}

/// Finds the first value under `key` anywhere in `v` (depth first).
fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|x| find(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

fn find_str(v: &Value, key: &str) -> Option<String> {
    find(v, key).and_then(|x| match x {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// The bytes a command read, as hex: the `reads` of `acquire` (each
/// `--read`, concatenated) or the `hex` of `peek`.
fn read_hex(v: &Value) -> String {
    match (v.get("reads"), v.get("hex")) {
        (Some(Value::Array(reads)), _) => reads.iter().filter_map(Value::as_str).collect(),
        (_, Some(Value::String(h))) => h.clone(),
        _ => String::new(),
    }
    .to_lowercase()
}

fn error_slug(e: &Value) -> String {
    find_str(e, "slug")
        .or_else(|| find_str(e, "name"))
        .or_else(|| find_str(e, "kind"))
        .unwrap_or_default()
}

fn run(boot: &str) -> i32 {
    let edu = env_bdf("BK_EDU");
    let shm = env_bdf("BK_SHM");
    let nvme = env_bdf("BK_NVME");
    let all = [
        DeviceCfg {
            name: "shm0",
            pci: shm.clone(),
        },
        DeviceCfg {
            name: "edu0",
            pci: edu,
        },
        DeviceCfg {
            name: "nvme0",
            pci: nvme,
        },
    ];
    match boot {
        "main" => {
            let shm_bdf = shm.clone();
            // Scenario 10: the group path, then (below) everything on cdev.
            match Daemon::start(
                "group",
                "group",
                &[DeviceCfg {
                    name: "shm0",
                    pci: shm,
                }],
            ) {
                Ok(mut d) => {
                    let r = scenario_pattern(&d, "s10-group", "group", 0x20000, 0x21);
                    d.check("s10-group", r);
                    d.stop();
                }
                Err(e) => {
                    report("s10-group", &Err(e));
                }
            }
            match Daemon::start("cdev", "cdev", &all) {
                Ok(mut d) => {
                    let r = scenario_status(&d, true);
                    d.check("s0-status", r);
                    let r = scenario_pattern(&d, "s1-pattern", "cdev", 0x40000, 0x11);
                    d.check("s1-pattern", r);
                    let r = d.client(TENANT, "size", &["shm0", "2", "0x50000", "0x3000"]);
                    d.check("s2-size", r);
                    let r = scenario_readonly(&d);
                    d.check("s3-readonly", r);
                    let r = scenario_msix(&d);
                    d.check("s4-msix", r);
                    let r = scenario_revoke(&d);
                    d.check("s5-revoke", r);
                    let r = scenario_disconnect(&d);
                    d.check("s6-disconnect", r);
                    let r = scenario_wc(&d);
                    d.check("s8-wc", r);
                    let r = scenario_edu(&d);
                    d.check("s9-edu", r);
                    d.stop();
                }
                Err(e) => {
                    for s in [
                        "s0-status",
                        "s1-pattern",
                        "s2-size",
                        "s3-readonly",
                        "s4-msix",
                        "s5-revoke",
                        "s6-disconnect",
                        "s8-wc",
                        "s9-edu",
                    ] {
                        report(s, &Err(format!("no daemon: {e}")));
                    }
                }
            }
            // Scenario 11: its own daemon, under a played systemd, for each
            // way of owning the device (each restores different fds).
            report(
                "s11-restart",
                &scenario_restart(&shm_bdf, "s11-restart", "cdev", 0x60000, 0x68000),
            );
            report(
                "s11-restart-group",
                &scenario_restart(&shm_bdf, "s11-restart-group", "group", 0xa0000, 0xa8000),
            );
        }
        "nommap" => {
            match Daemon::start("nommap", "cdev", &all) {
                Ok(mut d) => {
                    let r = scenario_status(&d, false);
                    d.check("s7-status", r);
                    let r = scenario_nommap(&d);
                    d.check("s7-nommap", r);
                    d.stop();
                }
                Err(e) => {
                    report("s7-status", &Err(e.clone()));
                    report("s7-nommap", &Err(e));
                }
            }
            // Scenario 12: a stock kernel (export only). mmap is off by the
            // boot parameter; the test kernel's REVOKE and MEMATTR are
            // hidden from barkeepd by configuration.
            let stock = "\n[kernel]\nrevoke_feature = 0\nmemattr_feature = 0\n";
            match Daemon::start_with("stock", "cdev", &all, stock) {
                Ok(mut d) => {
                    let r = scenario_stock_status(&d);
                    d.check("s12-stock-status", r);
                    let r = scenario_linger(&d);
                    d.check("s12-linger", r);
                    let r = scenario_import(&d);
                    d.check("s12-import", r);
                    d.stop();
                }
                Err(e) => {
                    for s in ["s12-stock-status", "s12-linger", "s12-import"] {
                        report(s, &Err(format!("no daemon: {e}")));
                    }
                }
            }
            // Scenario 13: REVOKE and MEMATTR configured swapped; barkeepd
            // finds each by behaviour under the other's number.
            let swapped = "\n[kernel]\nrevoke_feature = 15\nmemattr_feature = 14\n";
            match Daemon::start_with("search", "cdev", &all, swapped) {
                Ok(mut d) => {
                    let r = scenario_search(&d);
                    d.check("s13-search", r);
                    d.stop();
                }
                Err(e) => {
                    report("s13-search", &Err(format!("no daemon: {e}")));
                }
            }
        }
        other => {
            report("boot", &Err(format!("unknown boot {other:?}")));
        }
    }
    0
}

/// Status shows the kernel's capabilities: export always; mmap only when
/// the kernel can map DMABUFs; revoke and wc from the patched kernel.
fn scenario_status(d: &Daemon, mmap: bool) -> Check {
    let out = d.cli(TENANT, &["status"]);
    let v = out.success()?;
    let caps = &v["capabilities"];
    let flag = |k: &str| caps.get(k).and_then(Value::as_bool);
    let want = [
        ("export", true),
        ("mmap", mmap),
        ("revoke", true),
        ("write_combining", true),
    ];
    for (k, w) in want {
        if flag(k) != Some(w) {
            return Err(format!("capabilities.{k} should be {w}: {caps}"));
        }
    }
    Ok(format!("capabilities {caps}"))
}

/// Scenarios 1 and 10: a tenant maps a slice at offset 0 and at a page
/// offset, writes through both; the CLI maps at a page offset and writes.
/// The host checks the ivshmem file for the BKWRITE patterns.
fn scenario_pattern(d: &Daemon, scenario: &str, ownership: &str, start: u64, tag: u8) -> Check {
    let len = 0x4000u64;
    // The daemon owns the device the way this scenario means to test.
    let devices = d.cli(ROOT, &["devices"]);
    let owned = devices.success()?["devices"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == "shm0"))
        .map(|d| d["ownership"].clone())
        .unwrap_or(Value::Null);
    if owned != ownership {
        return Err(format!(
            "shm0 is owned via {owned}, expected {ownership:?}: {}",
            devices.describe()
        ));
    }
    let client = d.client(
        TENANT,
        "pattern",
        &[
            scenario,
            "shm0",
            "2",
            &format!("{start:#x}"),
            &format!("{len:#x}"),
            &tag.to_string(),
        ],
    )?;
    // Through the CLI: map from slice offset 0x3000, write at mapping 0x40.
    let bytes = pattern(tag, 9);
    let out = d.cli(
        TENANT,
        &[
            "acquire",
            "shm0",
            "2",
            &format!("{start:#x}"),
            &format!("{len:#x}"),
            "--map-at",
            "0x3000",
            "--write",
            &format!("0x40={}", hex(&bytes)),
            "--read",
            "0x40:16",
        ],
    );
    let v = out.success()?;
    bkwrite(scenario, start, 0x3040, &bytes);
    let buffer = &v["buffer"];
    if buffer["size"].as_u64() != Some(len) || buffer["exp_name"] != "vfio_pci_core" {
        return Err(format!(
            "the CLI's buffer is not a {len:#x}-byte vfio_pci_core DMABUF: {buffer}"
        ));
    }
    if read_hex(v) != hex(&bytes) {
        return Err(format!(
            "CLI read back {} after writing {}",
            read_hex(v),
            hex(&bytes)
        ));
    }
    Ok(format!(
        "{ownership}: {client}; CLI --map-at 0x3000 wrote and read back 16 bytes"
    ))
}

/// Scenario 3: a read-only slice cannot be mapped writable.
fn scenario_readonly(d: &Daemon) -> Check {
    let out = d.cli(
        TENANT,
        &[
            "acquire", "shm0", "2", "0x60000", "0x1000", "--ro", "--write", "0=aa",
        ],
    );
    let e = out.failure()?;
    let client = d.client(TENANT, "readonly", &["shm0", "2", "0x60000", "0x1000"])?;
    Ok(format!("CLI write refused ({}); {client}", error_slug(e)))
}

/// Scenario 4: slices overlapping nvme's MSI-X table (0x2000) or PBA
/// (0x3000) are refused by the daemon although the grant covers all of BAR0
/// and the kernel reports the whole BAR mappable; the first page is granted.
fn scenario_msix(d: &Daemon) -> Check {
    let ok = d.cli(
        TENANT,
        &[
            "acquire", "nvme0", "0", "0x0", "0x1000", "--ro", "--read", "0:8",
        ],
    );
    ok.success()?;
    let mut refused = Vec::new();
    for (off, len) in [
        ("0x2000", "0x1000"),
        ("0x1000", "0x2000"),
        ("0x0", "0x4000"),
        ("0x3000", "0x1000"),
    ] {
        let out = d.cli(
            TENANT,
            &["acquire", "nvme0", "0", off, len, "--ro", "--no-map"],
        );
        let e = out.failure()?;
        let code = find_str(e, "code").unwrap_or_default();
        if code != "18" && error_slug(e) != "reserved" {
            return Err(format!(
                "{off}+{len} refused, but not as reserved (code 18): {}",
                out.describe()
            ));
        }
        refused.push(format!("{off}+{len}"));
    }
    // `barkeep devices` shows why: nvme0's BAR0 lists the MSI-X table.
    let devices = d.cli(ROOT, &["devices"]);
    let v = devices.success()?;
    let bar0 = v["devices"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == "nvme0"))
        .and_then(|d| d["bars"].as_array())
        .and_then(|b| b.iter().find(|b| b["index"] == 0))
        .ok_or_else(|| format!("no nvme0 BAR0 in {}", devices.describe()))?;
    let reserved = &bar0["reserved"];
    let covers_table = reserved.as_array().is_some_and(|r| {
        r.iter().any(|x| {
            let (o, l) = (
                x["offset"].as_u64().unwrap_or(0),
                x["length"].as_u64().unwrap_or(0),
            );
            o <= 0x2000 && 0x2000 < o + l
        })
    });
    if !covers_table {
        return Err(format!(
            "`barkeep devices` lists no reserved range at 0x2000 for nvme0 BAR0: {bar0}"
        ));
    }
    Ok(format!(
        "first page granted; {} refused as reserved; devices shows reserved {reserved}",
        refused.join(", ")
    ))
}

/// Scenario 5: an admin revokes a lease; the holder's mapping faults
/// (SIGBUS for raw accesses, Error::Revoked through the library), a new
/// mmap of the fd fails, and another tenant can then acquire the range.
fn scenario_revoke(d: &Daemon) -> Check {
    let (start, len) = (0x70000u64, 0x2000u64);
    let mut cmd = Command::new(self_exe());
    cmd.arg("client")
        .arg("victim")
        .arg(&d.socket)
        .args(["shm0", "2", &format!("{start:#x}"), &format!("{len:#x}")])
        .uid(TENANT)
        .gid(TENANT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the victim: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut verdict: Option<Check> = None;
    let mut revoked = String::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => break,
        };
        if line.starts_with("BKWRITE ") {
            println!("{line}");
        } else if let Some(lease) = line.strip_prefix("READY ") {
            let out = d.cli(ROOT, &["revoke", lease.trim()]);
            if let Err(e) = out.success() {
                let _ = child.kill();
                return Err(format!("admin revoke failed: {e}"));
            }
            revoked = out.stdout.trim().to_string();
            let _ = writeln!(stdin, "go");
            let _ = stdin.flush();
        } else if let Some(dd) = line.strip_prefix("OK ") {
            verdict = Some(Ok(dd.to_string()));
        } else if let Some(dd) = line.strip_prefix("FAIL ") {
            verdict = Some(Err(dd.to_string()));
        }
    }
    let status = wait_timeout(&mut child, Duration::from_secs(5));
    let stderr = err_reader.join().unwrap_or_default();
    let victim = match verdict {
        Some(v) => v,
        None => Err(format!(
            "the victim gave no verdict ({status:?}); stderr: {}",
            stderr.trim()
        )),
    }?;
    // The range is free again: tenant2 gets it and writes to it.
    let bytes = pattern(0x55, 2);
    let out = d.cli(
        TENANT2,
        &[
            "acquire",
            "shm0",
            "2",
            &format!("{start:#x}"),
            &format!("{len:#x}"),
            "--write",
            &format!("0x100={}", hex(&bytes)),
            "--read",
            "0x100:16",
        ],
    );
    out.success()?;
    bkwrite("s5-revoke", start, 0x100, &bytes);
    Ok(format!(
        "{victim}; revoke said {revoked}; tenant2 then acquired the range and wrote to it"
    ))
}

/// Scenario 6: a client that disconnects without releasing loses its
/// leases: the mapping another process holds faults, the lease is gone.
fn scenario_disconnect(d: &Daemon) -> Check {
    let r = d.client(TENANT, "disconnect", &["shm0", "2", "0x90000", "0x1000"])?;
    let out = d.cli(ROOT, &["leases", "--all"]);
    let v = out.success()?;
    let leases = v["leases"]
        .as_array()
        .ok_or_else(|| format!("no leases list: {}", out.describe()))?;
    if let Some(l) = leases
        .iter()
        .find(|l| l["device"] == "shm0" && l["offset"] == 0x90000)
    {
        return Err(format!("the lease is still listed after disconnect: {l}"));
    }
    Ok(format!("{r}; `leases --all` no longer lists it"))
}

/// Scenario 8: a write-combining slice is granted on the test kernel.
fn scenario_wc(d: &Daemon) -> Check {
    let bytes = pattern(0x88, 1);
    let out = d.cli(
        TENANT,
        &[
            "acquire",
            "shm0",
            "2",
            "0x80000",
            "0x1000",
            "--wc",
            "--write",
            &format!("0x20={}", hex(&bytes)),
            "--read",
            "0x20:16",
        ],
    );
    let v = out.success()?;
    bkwrite("s8-wc", 0x80000, 0x20, &bytes);
    let memattr = v["lease"]["memattr"].as_str().unwrap_or_default();
    if memattr != "wc" {
        return Err(format!(
            "lease memattr is {memattr:?}, expected \"wc\": {}",
            out.describe()
        ));
    }
    if read_hex(v) != hex(&bytes) {
        return Err(format!(
            "read back {} after writing {}",
            read_hex(v),
            hex(&bytes)
        ));
    }
    Ok(format!("memattr {memattr}, wrote and read back 16 bytes"))
}

/// Scenario 9: peek and poke on edu: its liveness register at 0x04 returns
/// the bitwise NOT of what was written; its id register reads 0x010000ed
/// through peek and through a tenant's read-only slice.
fn scenario_edu(d: &Daemon) -> Check {
    let x: u32 = 0x1234_5678;
    let out = d.cli(ROOT, &["poke", "edu0", "0", "0x4", &hex(&x.to_le_bytes())]);
    out.success()?;
    let out = d.cli(ROOT, &["peek", "edu0", "0", "0x4", "4"]);
    let v = out.success()?;
    let want = hex(&(!x).to_le_bytes());
    if read_hex(v) != want {
        return Err(format!(
            "liveness: peek read {} after poke of {x:#x}, expected {want}: {}",
            read_hex(v),
            out.describe()
        ));
    }
    let out = d.cli(ROOT, &["peek", "edu0", "0", "0x0", "4"]);
    let id = read_hex(out.success()?);
    if id != "ed000001" {
        return Err(format!("edu id via peek is {id}, expected ed000001"));
    }
    let out = d.cli(
        TENANT,
        &[
            "acquire", "edu0", "0", "0x0", "0x1000", "--ro", "--read", "0:4",
        ],
    );
    let mapped = read_hex(out.success()?);
    if mapped != "ed000001" {
        return Err(format!(
            "edu id through the slice mapping is {mapped}, expected ed000001"
        ));
    }
    Ok(format!(
        "poke {x:#x} -> peek {want}; id ed000001 via peek and via the mapping"
    ))
}

/// Scenario 7 (dmabuf_mmap=0): acquire still delivers the fd, mapping fails
/// with an error naming the missing kernel feature.
fn scenario_nommap(d: &Daemon) -> Check {
    let out = d.cli(
        TENANT,
        &["acquire", "shm0", "2", "0x10000", "0x1000", "--no-map"],
    );
    out.success()?;
    let out = d.cli(
        TENANT,
        &["acquire", "shm0", "2", "0x10000", "0x1000", "--read", "0:4"],
    );
    let e = out.failure()?;
    let msg = find_str(e, "message").unwrap_or_default();
    if !(msg.contains("mmap") && msg.contains("kernel")) {
        return Err(format!(
            "the map error does not name the kernel feature: {}",
            out.describe()
        ));
    }
    let client = d.client(TENANT, "nomap", &["shm0", "2", "0x10000", "0x1000"])?;
    Ok(format!("--no-map acquire ok; map refused: {msg}; {client}"))
}

/// The notes `barkeep status` gives for shm0.
fn shm0_notes(d: &Daemon, uid: u32) -> Result<Vec<String>, String> {
    let out = d.cli(uid, &["status"]);
    let v = out.success()?;
    let dev = v["devices"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == "shm0"))
        .ok_or_else(|| format!("no shm0 in status: {}", out.describe()))?;
    Ok(dev["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Scenario 12: on an export-only kernel, status says export and nothing
/// else, and the notes say why (REVOKE and MEMATTR turned off).
fn scenario_stock_status(d: &Daemon) -> Check {
    let out = d.cli(TENANT, &["status"]);
    let v = out.success()?;
    let caps = &v["capabilities"];
    let flag = |k: &str| caps.get(k).and_then(Value::as_bool);
    for (k, w) in [
        ("export", true),
        ("mmap", false),
        ("revoke", false),
        ("write_combining", false),
    ] {
        if flag(k) != Some(w) {
            return Err(format!("capabilities.{k} should be {w}: {caps}"));
        }
    }
    let notes = shm0_notes(d, TENANT)?.join(" | ");
    for want in [
        "DMA_BUF_REVOKE turned off by configuration",
        "kernel features in use: DMA_BUF 11, DMA_BUF_REVOKE none, DMA_BUF_MEMATTR none",
    ] {
        if !notes.contains(want) {
            return Err(format!("status notes lack {want:?}: {notes}"));
        }
    }
    Ok(format!("capabilities {caps}"))
}

/// Scenario 13: with the test kernel's REVOKE (14) and MEMATTR (15)
/// configured the wrong way round, both are found by search and work.
fn scenario_search(d: &Daemon) -> Check {
    let out = d.cli(TENANT, &["status"]);
    let caps = out.success()?["capabilities"].clone();
    let notes = shm0_notes(d, TENANT)?;
    let joined = notes.join(" | ");
    for want in [
        "revoke: feature 15 (DMA_BUF_REVOKE) is offered but",
        "DMA_BUF_REVOKE found by search as feature 14",
        "DMA_BUF_MEMATTR found by search as feature 15",
        "kernel features in use: DMA_BUF 11, DMA_BUF_REVOKE 14, DMA_BUF_MEMATTR 15",
    ] {
        if !joined.contains(want) {
            return Err(format!("status notes lack {want:?}: {joined}"));
        }
    }
    if caps["revoke"] != true || caps["write_combining"] != true {
        return Err(format!("revoke and wc should be found: {caps}"));
    }
    // The found numbers are the ones in use: a write-combining slice is
    // granted (MEMATTR 15), and a release revokes it (REVOKE 14), so the
    // range is free again at once rather than lingering.
    let wc = [
        "acquire", "shm0", "2", "0xc0000", "0x1000", "--wc", "--no-map",
    ];
    d.cli(TENANT, &wc).success()?;
    let again = ["acquire", "shm0", "2", "0xc0000", "0x1000", "--no-map"];
    d.cli(TENANT2, &again).success()?;
    let found: Vec<&String> = notes
        .iter()
        .filter(|n| n.contains("found by search"))
        .collect();
    Ok(format!(
        "{found:?}; wc slice granted, range free again after release"
    ))
}

/// Scenario 12: a released lease whose buffer cannot be revoked lingers:
/// its range is refused (range-busy) and shown in status until the device
/// is revoked as a whole; then it is granted again.
fn scenario_linger(d: &Daemon) -> Check {
    let args = ["acquire", "shm0", "2", "0x80000", "0x2000", "--no-map"];
    d.cli(TENANT, &args).success()?;
    // The CLI has exited: its lease ended, its buffer may live on.
    let again = ["acquire", "shm0", "2", "0x81000", "0x1000", "--no-map"];
    let out = d.cli(TENANT2, &again);
    let e = out.failure()?;
    let code = find_str(e, "code").unwrap_or_default();
    if code != "43" && error_slug(e) != "range-busy" {
        return Err(format!("expected range-busy (43): {}", out.describe()));
    }
    let leases = d.cli(ROOT, &["leases", "--all"]);
    if !leases.success()?.to_string().contains("lingering") {
        return Err(format!("no lingering lease: {}", leases.describe()));
    }
    let notes = shm0_notes(d, ROOT)?;
    let busy = notes
        .iter()
        .find(|n| n.starts_with("lingering: bar 2 0x80000+0x2000"))
        .ok_or_else(|| format!("status does not show the lingering range: {notes:?}"))?
        .clone();
    d.cli(ROOT, &["revoke", "--device", "shm0"]).success()?;
    if shm0_notes(d, ROOT)?
        .iter()
        .any(|n| n.starts_with("lingering:"))
    {
        return Err("status still shows a lingering range after the device revoke".into());
    }
    let out = d.cli(TENANT2, &again);
    out.success()?;
    Ok(format!(
        "refused as range-busy ({code}); status: {busy}; granted again after `revoke --device`"
    ))
}

/// Scenario 12: what a client can do with an export-only buffer: import it
/// into iommufd (IOMMU_IOAS_MAP_FILE), as a VMM would for its guest.
fn scenario_import(d: &Daemon) -> Check {
    // On a host the packaged udev rule gives /dev/iommu to a group; here
    // the tenant simply gets it.
    std::fs::set_permissions(
        "/dev/iommu",
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .map_err(|e| format!("chmod /dev/iommu: {e}"))?;
    d.client(TENANT, "import", &["shm0", "2", "0x90000", "0x2000"])
}

// ---------------------------------------------------------------------------
// Client-side checks (run as the tenant)
// ---------------------------------------------------------------------------

fn client_main(check: &str, args: &[&str]) -> i32 {
    let result = match (check, args) {
        ("pattern", [sock, scenario, dev, bar, off, len, tag]) => {
            with_slice(sock, dev, bar, off, len, Access::ReadWrite, |s| {
                check_pattern(s, scenario, tag.parse().unwrap_or(0))
            })
        }
        ("size", [sock, dev, bar, off, len]) => {
            with_slice(sock, dev, bar, off, len, Access::ReadWrite, check_size)
        }
        ("readonly", [sock, dev, bar, off, len]) => {
            with_slice(sock, dev, bar, off, len, Access::ReadOnly, check_readonly)
        }
        ("victim", [sock, dev, bar, off, len]) => {
            with_slice(sock, dev, bar, off, len, Access::ReadWrite, check_victim)
        }
        ("nomap", [sock, dev, bar, off, len]) => {
            with_slice(sock, dev, bar, off, len, Access::ReadWrite, check_nomap)
        }
        ("import", [sock, dev, bar, off, len]) => {
            with_slice(sock, dev, bar, off, len, Access::ReadWrite, check_import)
        }
        ("disconnect", [sock, dev, bar, off, len]) => check_disconnect(sock, dev, bar, off, len),
        ("restart", [sock, scenario, kept, orphan]) => check_restart(sock, scenario, kept, orphan),
        _ => Err(format!("bad client check {check} {args:?}")),
    };
    match result {
        Ok(d) => {
            println!("OK {}", one_line(&d));
            0
        }
        Err(e) => {
            println!("FAIL {}", one_line(&e));
            1
        }
    }
}

fn num(s: &str) -> Result<u64, String> {
    barkeep_protocol::parse_number(s).map_err(|e| format!("{s}: {e}"))
}

fn connect_and_acquire(
    sock: &str,
    dev: &str,
    bar: &str,
    off: &str,
    len: &str,
    access: Access,
) -> Result<(Client, Slice), String> {
    let client = Client::connect(sock).map_err(|e| format!("connect {sock}: {e}"))?;
    let req = SliceRequest {
        device: dev.to_string(),
        bar: num(bar)? as u32,
        offset: num(off)?,
        length: num(len)?,
        access,
        memattr: MemAttrRequest::Uncached,
    };
    let slice = client
        .acquire(req.clone())
        .map_err(|e| format!("acquire {dev} bar {bar} {off}+{len}: {e} [{}]", e.slug()))?;
    let l = slice.lease();
    if l.offset != req.offset || l.length != req.length || l.bar != req.bar {
        return Err(format!("lease {l:?} does not match the request {req:?}"));
    }
    Ok((client, slice))
}

fn with_slice(
    sock: &str,
    dev: &str,
    bar: &str,
    off: &str,
    len: &str,
    access: Access,
    f: impl FnOnce(&Slice) -> Check,
) -> Check {
    let (_client, slice) = connect_and_acquire(sock, dev, bar, off, len, access)?;
    f(&slice)
}

/// `size:` and `name:` of an fd in /proc/self/fdinfo.
fn fdinfo(fd: &impl AsRawFd) -> Result<(u64, String), String> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .map_err(|e| format!("reading fdinfo: {e}"))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let size = field("size:")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no size: in fdinfo:\n{text}"))?;
    Ok((size, field("name:").unwrap_or_default()))
}

/// Lines of /proc/self/maps that mention `needle`.
fn maps_lines(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A raw mmap of `fd`; Ok(address) or Err(errno).
fn raw_mmap(
    fd: &impl AsFd,
    offset: u64,
    len: u64,
    prot: libc::c_int,
) -> Result<usize, nix::errno::Errno> {
    // SAFETY: a fresh mapping chosen by the kernel (NULL hint, no MAP_FIXED)
    // cannot replace existing memory; the fd is valid for the call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            prot,
            libc::MAP_SHARED,
            fd.as_fd().as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        Err(nix::errno::Errno::last())
    } else {
        Ok(p as usize)
    }
}

fn raw_munmap(addr: usize, len: u64) {
    // SAFETY: `addr`/`len` come from a successful raw_mmap and nothing
    // references that memory any more.
    unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
}

/// Scenario 1/10 client side: map at 0 and at a page offset, write through
/// both, check they alias, check the buffer name in /proc/self/maps.
fn check_pattern(slice: &Slice, scenario: &str, tag: u8) -> Check {
    let lease = slice.lease().clone();
    let whole = slice.map().map_err(|e| format!("map(): {e}"))?;
    let part = slice
        .map_range(0x2000, lease.length - 0x2000)
        .map_err(|e| format!("map_range(0x2000): {e}"))?;
    let a = pattern(tag, 1);
    let b = pattern(tag, 2);
    whole
        .write_bytes(0x10, &a)
        .map_err(|e| format!("write at 0x10: {e}"))?;
    bkwrite(scenario, lease.offset, 0x10, &a);
    part.write_bytes(0x100, &b)
        .map_err(|e| format!("write at part+0x100: {e}"))?;
    bkwrite(scenario, lease.offset, 0x2100, &b);
    // The two mappings alias: what went in through one shows in the other.
    let mut got = vec![0u8; 16];
    whole
        .read_bytes(0x2100, &mut got)
        .map_err(|e| e.to_string())?;
    if got != b {
        return Err(format!(
            "map() at 0x2100 reads {} after map_range(0x2000) wrote {} at 0x100",
            hex(&got),
            hex(&b)
        ));
    }
    let c = pattern(tag, 3);
    whole.write_bytes(0x2200, &c).map_err(|e| e.to_string())?;
    bkwrite(scenario, lease.offset, 0x2200, &c);
    part.read_bytes(0x200, &mut got)
        .map_err(|e| e.to_string())?;
    if got != c {
        return Err(format!(
            "map_range(0x2000) at 0x200 reads {} after map() wrote {} at 0x2200",
            hex(&got),
            hex(&c)
        ));
    }
    let lines = maps_lines(&lease.buffer_name);
    if lines.len() < 2 {
        return Err(format!(
            "/proc/self/maps shows {} line(s) with the buffer name {:?} (expected one per mapping): {lines:?}",
            lines.len(),
            lease.buffer_name
        ));
    }
    Ok(format!(
        "mapped at 0 and 0x2000, aliasing ok, maps: {}",
        lines[0].split_whitespace().last().unwrap_or("")
    ))
}

/// Scenario 2: the fd's size is the slice's, nothing maps past it.
fn check_size(slice: &Slice) -> Check {
    let lease = slice.lease().clone();
    let (size, name) = fdinfo(slice)?;
    if size != lease.length {
        return Err(format!(
            "fdinfo size: {size} but the slice is {:#x} bytes",
            lease.length
        ));
    }
    if name != lease.buffer_name {
        return Err(format!(
            "fdinfo name: {name:?}, expected the buffer name {:?}",
            lease.buffer_name
        ));
    }
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let mut refused = Vec::new();
    for (off, len) in [
        (0, lease.length + PAGE),
        (lease.length, PAGE),
        (lease.length - PAGE, 2 * PAGE),
    ] {
        match raw_mmap(slice, off, len, rw) {
            Ok(a) => {
                raw_munmap(a, len);
                return Err(format!(
                    "mmap of {off:#x}+{len:#x} of a {:#x}-byte buffer worked",
                    lease.length
                ));
            }
            Err(e) => refused.push(format!("{off:#x}+{len:#x}: {e}")),
        }
    }
    match slice.map_range(lease.length - PAGE, 2 * PAGE) {
        Err(ClientError::OutOfRange { .. }) => {}
        other => {
            return Err(format!(
                "map_range past the end gave {other:?}, expected OutOfRange"
            ))
        }
    }
    let whole = raw_mmap(slice, 0, lease.length, rw)
        .map_err(|e| format!("mmap of the exact size failed: {e}"))?;
    raw_munmap(whole, lease.length);
    Ok(format!(
        "fdinfo size: {size} name: {name}; raw mmap refused {}",
        refused.join(", ")
    ))
}

/// Scenario 3 client side: PROT_WRITE fails with EACCES, PROT_READ works,
/// the library refuses writes.
fn check_readonly(slice: &Slice) -> Check {
    let len = slice.lease().length;
    match raw_mmap(slice, 0, len, libc::PROT_READ | libc::PROT_WRITE) {
        Ok(a) => {
            raw_munmap(a, len);
            return Err("a writable mapping of a read-only slice worked".into());
        }
        Err(nix::errno::Errno::EACCES) => {}
        Err(e) => return Err(format!("writable mapping failed with {e}, expected EACCES")),
    }
    let r = raw_mmap(slice, 0, len, libc::PROT_READ)
        .map_err(|e| format!("read-only mapping failed: {e}"))?;
    raw_munmap(r, len);
    let m = slice.map().map_err(|e| format!("map(): {e}"))?;
    match m.write_u32(0, 1) {
        Err(ClientError::ReadOnly { .. }) => {}
        other => return Err(format!("write through a read-only mapping gave {other:?}")),
    }
    m.read_u32(0).map_err(|e| format!("read: {e}"))?;
    Ok("PROT_WRITE EACCES, PROT_READ maps, library write -> ReadOnly".into())
}

/// Scenario 5 client side: map and write, say READY, wait for the admin's
/// revoke, then check every way the revoke must show.
fn check_victim(slice: &Slice) -> Check {
    let lease = slice.lease().clone();
    let m = slice.map().map_err(|e| format!("map(): {e}"))?;
    let bytes = pattern(0x5e, 1);
    m.write_bytes(0x40, &bytes).map_err(|e| e.to_string())?;
    bkwrite("s5-revoke", lease.offset, 0x40, &bytes);
    let raw = raw_mmap(slice, 0, lease.length, libc::PROT_READ | libc::PROT_WRITE)
        .map_err(|e| format!("raw mmap: {e}"))?;
    match probe_in_child(raw + 0x40) {
        Ok(v) if v.to_le_bytes() == bytes[..4] => {}
        other => {
            return Err(format!(
                "before revoke, a read of the mapping gave {other:?}"
            ))
        }
    }
    println!("READY {}", lease.id);
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    // The daemon has revoked the buffer; its event may still be on its way.
    let start = Instant::now();
    while !slice.is_revoked() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !slice.is_revoked() {
        return Err("the library did not report the lease revoked within 10 s".into());
    }
    let reason = format!("{:?}", slice.revoked_reason());
    match m.read_u32(0x40) {
        Err(ClientError::Revoked { .. }) => {}
        other => {
            return Err(format!(
                "library read after revoke gave {other:?}, expected Revoked"
            ))
        }
    }
    match probe_in_child(raw + 0x40) {
        Err(s) if s == "SIGBUS" => {}
        other => {
            return Err(format!(
                "a raw read after revoke gave {other:?}, expected SIGBUS"
            ))
        }
    }
    raw_munmap(raw, lease.length);
    match raw_mmap(slice, 0, PAGE, libc::PROT_READ) {
        Ok(a) => {
            raw_munmap(a, PAGE);
            Err("mmap of the revoked buffer worked".into())
        }
        Err(e) => Ok(format!(
            "revoked ({reason}): library read -> Revoked, raw read -> SIGBUS, new mmap -> {e}"
        )),
    }
}

/// Scenario 6: a child acquires a slice, passes the fd to us and exits
/// without releasing; the daemon must then revoke the buffer.
fn check_disconnect(sock: &str, dev: &str, bar: &str, off: &str, len: &str) -> Check {
    use nix::sys::socket::{
        recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
        SockFlag, SockType,
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    // SAFETY: this process is single-threaded here (no client yet); the
    // child runs ordinary Rust code and leaves with _exit().
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork failed".into());
    }
    if pid == 0 {
        drop(ours);
        let code = match connect_and_acquire(sock, dev, bar, off, len, Access::ReadWrite) {
            Ok((_client, slice)) => {
                let bytes = pattern(0x66, 1);
                let ok = slice.map().and_then(|m| m.write_bytes(0, &bytes)).is_ok();
                if ok {
                    bkwrite("s6-disconnect", slice.lease().offset, 0, &bytes);
                }
                let raw = [slice.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let msg = [std::io::IoSlice::new(if ok { b"k" } else { b"e" })];
                let _ = sendmsg::<()>(theirs.as_raw_fd(), &msg, &cmsg, MsgFlags::empty(), None);
                let mut go = [0u8; 1];
                let _ = nix::unistd::read(&theirs, &mut go);
                // Leave without releasing: the kernel closes the connection.
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
        // SAFETY: ending the child at once, without running destructors
        // (which would release the lease politely).
        unsafe { libc::_exit(code) };
    }
    drop(theirs);
    let mut buf = [0u8; 1];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let received = recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    let mut fd = None;
    for c in received.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these fds in our table.
            fd = fds.first().map(|&f| unsafe { OwnedFd::from_raw_fd(f) });
        }
    }
    let fd = fd.ok_or("the child sent no fd (acquire failed? see its stderr)")?;
    if buf[0] != b'k' {
        return Err("the child could not map and write its slice".into());
    }
    let length = num(len)?;
    let raw = raw_mmap(&fd, 0, length, libc::PROT_READ)
        .map_err(|e| format!("mmap of the passed fd: {e}"))?;
    let before = probe_in_child(raw);
    if before.as_ref().map(|v| v.to_le_bytes()[0]) != Ok(0x66) {
        return Err(format!(
            "before the disconnect the passed fd read {before:?}"
        ));
    }
    let _ = nix::unistd::write(&ours, b"g");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // The daemon notices the closed socket and revokes asynchronously.
    let start = Instant::now();
    let mut after = probe_in_child(raw);
    while after.is_ok() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        after = probe_in_child(raw);
    }
    if after != Err("SIGBUS".into()) {
        return Err(format!(
            "after the holder disconnected, a read of the mapping gave {after:?}, expected SIGBUS"
        ));
    }
    raw_munmap(raw, length);
    match raw_mmap(&fd, 0, PAGE, libc::PROT_READ) {
        Ok(a) => {
            raw_munmap(a, PAGE);
            Err("after disconnect, a new mmap of the buffer worked".into())
        }
        Err(e) => Ok(format!(
            "revoked {:.1} s after disconnect: read -> SIGBUS, new mmap -> {e}",
            start.elapsed().as_secs_f64()
        )),
    }
}

/// Scenario 7 client side: the fd is delivered with the slice's size, but
/// mapping fails with MapUnsupported.
fn check_nomap(slice: &Slice) -> Check {
    let (size, name) = fdinfo(slice)?;
    if size != slice.lease().length {
        return Err(format!(
            "fdinfo size: {size}, expected {:#x}",
            slice.lease().length
        ));
    }
    match slice.map() {
        Err(e @ ClientError::MapUnsupported { .. }) => Ok(format!(
            "fd delivered (size: {size}, name: {name}); map() -> {e}"
        )),
        other => Err(format!(
            "map() on a kernel without DMABUF mmap gave {other:?}"
        )),
    }
}

/// `struct iommu_ioas_alloc` (linux/iommufd.h).
#[repr(C)]
struct IoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

/// `struct iommu_ioas_map_file` (linux/iommufd.h, since 6.13).
#[repr(C)]
struct IoasMapFile {
    size: u32,
    flags: u32,
    ioas_id: u32,
    fd: i32,
    start: u64,
    length: u64,
    iova: u64,
}

/// `_IO(';', 0x81)`: IOMMU_IOAS_ALLOC.
const IOMMU_IOAS_ALLOC: libc::c_ulong = 0x3b81;
/// `_IO(';', 0x8f)`: IOMMU_IOAS_MAP_FILE.
const IOMMU_IOAS_MAP_FILE: libc::c_ulong = 0x3b8f;
const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// The buffer cannot be mapped here, but a new IOAS of the tenant's own
/// iommufd takes it (the kernel then maps the BAR range for devices
/// attached to that IOAS).
fn check_import(slice: &Slice) -> Check {
    let unmappable = check_nomap(slice)?;
    let iommu = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/iommu")
        .map_err(|e| format!("opening /dev/iommu: {e}"))?;
    let mut alloc = IoasAlloc {
        size: std::mem::size_of::<IoasAlloc>() as u32,
        flags: 0,
        out_ioas_id: 0,
    };
    // SAFETY: IOMMU_IOAS_ALLOC takes a pointer to a struct iommu_ioas_alloc,
    // which lives across the call.
    if unsafe { libc::ioctl(iommu.as_raw_fd(), IOMMU_IOAS_ALLOC as _, &mut alloc) } != 0 {
        return Err(format!("IOMMU_IOAS_ALLOC: {}", nix::errno::Errno::last()));
    }
    let mut map = IoasMapFile {
        size: std::mem::size_of::<IoasMapFile>() as u32,
        flags: IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: alloc.out_ioas_id,
        fd: slice.as_fd().as_raw_fd(),
        start: 0,
        length: slice.lease().length,
        iova: 0,
    };
    // SAFETY: IOMMU_IOAS_MAP_FILE takes a pointer to a struct
    // iommu_ioas_map_file, which lives across the call.
    if unsafe { libc::ioctl(iommu.as_raw_fd(), IOMMU_IOAS_MAP_FILE as _, &mut map) } != 0 {
        return Err(format!(
            "IOMMU_IOAS_MAP_FILE of the slice's buffer: {}",
            nix::errno::Errno::last()
        ));
    }
    Ok(format!(
        "{unmappable}; imported into iommufd IOAS {} at iova {:#x} ({:#x} bytes)",
        alloc.out_ioas_id, map.iova, map.length
    ))
}

// ---------------------------------------------------------------------------
// Scenario 11: SIGKILL and restart under a (played) systemd fd store
// ---------------------------------------------------------------------------

/// Runs `barkeep --socket S --json ARGS` as `uid`.
fn cli_at(socket: &Path, uid: u32, args: &[&str]) -> Cli {
    let mut cmd = Command::new("/usr/bin/barkeep");
    cmd.arg("--socket").arg(socket).arg("--json").args(args);
    run_as(cmd, uid, args.join(" "))
}

/// The tenant process of scenario 11, driven line by line.
struct Driven {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Driven {
    fn spawn(socket: &Path, args: &[String]) -> Result<Driven, String> {
        let mut cmd = Command::new(self_exe());
        cmd.arg("client")
            .arg("restart")
            .arg(socket)
            .args(args)
            .uid(TENANT)
            .gid(TENANT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting the client: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("BKWRITE ") {
                    println!("{line}");
                    let _ = std::io::stdout().flush();
                } else if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Driven {
            child,
            stdin,
            lines,
        })
    }

    /// Waits for the client's next line; it must start with `want`.
    fn expect(&mut self, want: &str) -> Result<String, String> {
        match self.lines.recv_timeout(STEP_TIMEOUT) {
            Ok(line) if line.starts_with(want) => Ok(line),
            Ok(line) => Err(format!("the client said {line:?}, expected {want}")),
            Err(_) => {
                let st = self.child.try_wait().ok().flatten();
                Err(format!(
                    "no {want} from the client (it {}) ",
                    match st {
                        Some(s) => format!("ended: {s}"),
                        None => "is still running".into(),
                    }
                ))
            }
        }
    }

    fn say(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}").map_err(|e| format!("telling the client {line}: {e}"))
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// barkeepd under the played systemd, for scenario 11.
fn start_under(
    sd: &mut barkeep_tests::fakesystemd::FakeSystemd,
    config: &Path,
    log: &Path,
) -> Result<Child, String> {
    let child = sd.spawn(
        Path::new("/usr/bin/barkeepd"),
        &["--config", config.to_str().unwrap_or(""), "--log", "stderr"],
        log,
    );
    match sd.wait_line(STEP_TIMEOUT, "READY=1") {
        Some(_) => Ok(child),
        None => Err(format!(
            "no READY=1 from barkeepd; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )),
    }
}

/// A daemon that is killed when the scenario ends early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn kill_and_wait(
    child: &mut Child,
    signal: libc::c_int,
) -> Result<std::process::ExitStatus, String> {
    // SAFETY: kill() with a pid we own (our child) and a valid signal.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    wait_timeout(child, Duration::from_secs(10))
}

/// Scenario 11: a tenant maps two slices of shm0's BAR2 (one client will
/// reconnect, one will not); barkeepd is SIGKILLed with its fds in the
/// (played) fd store; the tenant writes through both mappings while no
/// daemon runs (on this kernel, closing the device fds would revoke every
/// buffer: a SIGBUS here means the store did not keep them); barkeepd
/// starts again from the stored fds; the first client reclaims its lease
/// and the new daemon's peek sees its writes; the second lease is revoked
/// after reclaim_grace and its mapping faults. The host checks every write
/// in the ivshmem backing file.
fn scenario_restart(
    shm: &str,
    scenario: &str,
    ownership: &str,
    kept_at: u64,
    orphan_at: u64,
) -> Check {
    use barkeep_tests::fakesystemd::FakeSystemd;
    let dir = PathBuf::from(format!("/run/bk-{scenario}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let socket = dir.join("barkeep.sock");
    let config = dir.join("restart.toml");
    let devices = [DeviceCfg {
        name: "shm0",
        pci: shm.to_string(),
    }];
    std::fs::write(
        &config,
        format!(
            "reclaim_grace = \"3s\"\n{}",
            daemon_config(&socket, ownership, &devices)
        ),
    )
    .map_err(|e| e.to_string())?;
    let (log1, log2) = (dir.join("first.log"), dir.join("second.log"));
    let logs = || {
        format!(
            "\n---- first barkeepd ----\n{}\n---- second barkeepd ----\n{}",
            std::fs::read_to_string(&log1).unwrap_or_default(),
            std::fs::read_to_string(&log2).unwrap_or_default()
        )
    };
    let mut sd = FakeSystemd::new(&dir, Some(&socket));
    let mut first = start_under(&mut sd, &config, &log1)?;
    let mut tenant = Driven::spawn(
        &socket,
        &[
            scenario.to_string(),
            format!("{kept_at:#x}"),
            format!("{orphan_at:#x}"),
        ],
    )?;
    let result = (|| -> Check {
        let acquired = tenant.expect("ACQUIRED")?;
        let ids: Vec<&str> = acquired.split_whitespace().skip(1).collect();
        let [kept, orphan] = ids[..] else {
            return Err(format!("bad line {acquired:?}"));
        };
        sd.pump(Duration::from_millis(300));
        let names = sd.stored_names();
        let owner_fds: &[&str] = if ownership == "group" {
            &["dev-shm0-container", "dev-shm0-group", "dev-shm0-device"]
        } else {
            &["dev-shm0-iommufd", "dev-shm0-device"]
        };
        for want in owner_fds.iter().map(|n| n.to_string()) {
            if !names.contains(&want) {
                return Err(format!("{want} is not in the fd store: {names:?}"));
            }
        }
        // The buffers are in the stash: one segment, not one fd per lease.
        let _ = (kept, orphan);
        if !names.iter().any(|n| n.starts_with("stash-"))
            || names.iter().any(|n| n.starts_with("lease-"))
        {
            return Err(format!(
                "the leases' buffers are not in a stash segment: {names:?}"
            ));
        }
        let st = kill_and_wait(&mut first, libc::SIGKILL)?;
        if st.success() {
            return Err("SIGKILL did not kill barkeepd".into());
        }
        tenant.say("KILLED")?;
        tenant.expect("WROTE")?;
        let mut second = KillOnDrop(start_under(&mut sd, &config, &log2)?);
        let restored = std::fs::read_to_string(&log2)
            .unwrap_or_default()
            .contains("restored from the previous daemon's fds");
        if !restored {
            return Err("the second barkeepd did not restore shm0 from the stored fds".into());
        }
        tenant.say("RESTARTED")?;
        let reclaimed = tenant.expect("RECLAIMED")?;
        // The new daemon reads (through its device fd) what the tenant
        // wrote through a mapping that predates it.
        let out = cli_at(
            &socket,
            ROOT,
            &["peek", "shm0", "2", &format!("{:#x}", kept_at + 0x30), "16"],
        );
        let got = read_hex(out.success()?);
        if got != hex(&pattern(0x31, 3)) {
            return Err(format!(
                "peek after the restart read {got}, expected {}",
                hex(&pattern(0x31, 3))
            ));
        }
        // The lease nobody reclaimed goes after reclaim_grace.
        let start = Instant::now();
        loop {
            let out = cli_at(&socket, ROOT, &["leases", "--all"]);
            if !out.stdout.contains(orphan) {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "the unclaimed lease {orphan} is still listed: {}",
                    out.stdout
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        tenant.say("CHECKB")?;
        tenant.expect("BREVOKED")?;
        tenant.say("DONE")?;
        let st = wait_timeout(&mut tenant.child, STEP_TIMEOUT)?;
        if !st.success() {
            return Err(format!("the tenant ended with {st}"));
        }
        let st = kill_and_wait(&mut second.0, libc::SIGTERM)?;
        if !st.success() {
            return Err(format!(
                "SIGTERM under the fd store: barkeepd ended with {st}"
            ));
        }
        Ok(format!(
            "{ownership}: SIGKILL, mappings kept, restart restored shm0 and {reclaimed}; unclaimed lease revoked after 3 s"
        ))
    })();
    if let Ok(None) = first.try_wait() {
        let _ = first.kill();
        let _ = first.wait();
    }
    // What `systemctl stop` does last: closing the store's device fds
    // revokes whatever is left.
    drop(sd);
    result.map_err(|e| format!("{e}{}", logs()))
}

/// Scenario 11, the tenant's side (see [`scenario_restart`]).
fn check_restart(sock: &str, scenario: &str, kept_at: &str, orphan_at: &str) -> Check {
    let (kept_at, orphan_at) = (num(kept_at)?, num(orphan_at)?);
    use barkeep_client::ConnectOptions;
    let line = |want: &str| -> Result<(), String> {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .map_err(|e| e.to_string())?;
        if s.trim() == want {
            Ok(())
        } else {
            Err(format!("expected {want}, got {s:?}"))
        }
    };
    let req = |offset: u64, length: u64| SliceRequest {
        device: "shm0".into(),
        bar: 2,
        offset,
        length,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::Uncached,
    };
    let a = ConnectOptions::new()
        .name("restart-a")
        .reconnect(Some(Duration::from_secs(30)))
        .connect(sock)
        .map_err(|e| format!("connect: {e}"))?;
    let first_session = a.session_id();
    let kept = a
        .acquire(req(kept_at, 0x4000))
        .map_err(|e| format!("acquire: {e}"))?;
    let map = kept.map().map_err(|e| format!("map: {e}"))?;
    let b = ConnectOptions::new()
        .name("restart-b")
        .reconnect(None)
        .connect(sock)
        .map_err(|e| format!("connect: {e}"))?;
    let orphan = b
        .acquire(req(orphan_at, PAGE))
        .map_err(|e| format!("acquire: {e}"))?;
    let orphan_id = orphan.lease().id;
    let (orphan_fd, _) = orphan.detach();
    let omap = raw_mmap(&orphan_fd, 0, PAGE, libc::PROT_READ | libc::PROT_WRITE)
        .map_err(|e| format!("mmap of the second slice: {e}"))?;
    let p1 = pattern(0x31, 1);
    map.write_bytes(0x10, &p1).map_err(|e| e.to_string())?;
    bkwrite(scenario, kept_at, 0x10, &p1);
    let q1 = pattern(0x32, 1);
    // SAFETY: `omap` is a live PAGE-long read-write mapping; 16 bytes at 0x10.
    unsafe { std::ptr::copy_nonoverlapping(q1.as_ptr(), (omap + 0x10) as *mut u8, q1.len()) };
    bkwrite(scenario, orphan_at, 0x10, &q1);
    println!("ACQUIRED {} {orphan_id}", kept.lease().id);
    line("KILLED")?;
    // No daemon runs now: these writes land only if the buffers survived.
    let p2 = pattern(0x31, 2);
    map.write_bytes(0x20, &p2).map_err(|e| e.to_string())?;
    bkwrite(scenario, kept_at, 0x20, &p2);
    let q2 = pattern(0x32, 2);
    // SAFETY: as above, 16 bytes at 0x20.
    unsafe { std::ptr::copy_nonoverlapping(q2.as_ptr(), (omap + 0x20) as *mut u8, q2.len()) };
    bkwrite(scenario, orphan_at, 0x20, &q2);
    let mut got = vec![0u8; 16];
    map.read_bytes(0x10, &mut got).map_err(|e| e.to_string())?;
    if got != p1 || kept.is_revoked() {
        return Err(format!(
            "while no daemon ran, the mapping read {} (revoked: {})",
            hex(&got),
            kept.is_revoked()
        ));
    }
    println!("WROTE");
    line("RESTARTED")?;
    let start = Instant::now();
    loop {
        let mine = a.leases(false).unwrap_or_default();
        if mine.iter().any(|l| l.lease.id == kept.lease().id) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the lease was not reclaimed within 30 s (revoked: {:?})",
                kept.revoked_reason()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if a.session_id() == first_session || kept.is_revoked() {
        return Err("the reclaim did not happen in a new session".into());
    }
    let p3 = pattern(0x31, 3);
    map.write_bytes(0x30, &p3).map_err(|e| e.to_string())?;
    bkwrite(scenario, kept_at, 0x30, &p3);
    println!(
        "RECLAIMED lease in session {} (was {first_session}) after {:.1} s",
        a.session_id(),
        start.elapsed().as_secs_f64()
    );
    line("CHECKB")?;
    match probe_in_child(omap) {
        Err(e) if e == "SIGBUS" => println!("BREVOKED"),
        other => {
            return Err(format!(
                "the unclaimed lease's mapping still reads: {other:?}"
            ))
        }
    }
    line("DONE")?;
    raw_munmap(omap, PAGE);
    drop(map);
    drop(kept);
    Ok("restart".into())
}
