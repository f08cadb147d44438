//! The real-systemd suite: boots the test kernel under QEMU with a Debian
//! trixie root file system whose PID 1 is systemd 257, installs barkeep from
//! the project's .deb and checks the units and the daemon under the real
//! service manager (see tests/vm/README.md, "The real-systemd suite").
//!
//! Skips (one `SKIPPED:` line, passing) when QEMU, the kernel, the root file
//! system or cargo-deb is missing, unless `BARKEEP_REQUIRE_VM=1`.
//! Every figure measured in the guest is printed as
//! `sdvm-figure BOOT NAME VALUE` on stderr and kept in
//! `target/sdvm-figures.txt`.

#[path = "../src/vm.rs"]
#[allow(dead_code)]
mod vm;

#[path = "../src/sdvm.rs"]
#[allow(dead_code)]
mod sdvm;

use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

enum Setup {
    Ready(
        sdvm::SdPrereqs,
        std::path::PathBuf,
        std::path::PathBuf,
        Vec<u8>,
    ),
    Skip(String),
    Broken(String),
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let pre = match sdvm::SdPrereqs::find() {
            Ok(p) => p,
            Err(why) => return Setup::Skip(why),
        };
        let built = sdvm::build_deb_and_driver().and_then(|(deb, release)| {
            let image = sdvm::image_tar(&release, &pre.busybox)?;
            Ok((deb, release, image))
        });
        match built {
            Ok((deb, release, image)) => Setup::Ready(pre, deb, release, image),
            Err(e) => Setup::Broken(e),
        }
    })
}

/// The prerequisites, or `None` after saying (once) why the suite skips.
type Built = (
    &'static sdvm::SdPrereqs,
    &'static std::path::Path,
    &'static std::path::Path,
    &'static [u8],
);

fn ready() -> Option<Built> {
    static SAID: OnceLock<()> = OnceLock::new();
    match setup() {
        Setup::Ready(p, d, r, i) => Some((p, d, r, i)),
        Setup::Broken(e) => panic!("cannot build the real-systemd guest: {e}"),
        Setup::Skip(why) => {
            if std::env::var_os("BARKEEP_REQUIRE_VM").is_some_and(|v| v == "1") {
                panic!("BARKEEP_REQUIRE_VM=1 but the real-systemd suite cannot run: {why}");
            }
            SAID.get_or_init(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: real-systemd suite (tests/tests/systemd_vm.rs): {why}; enable it with: {}",
                    sdvm::ENABLE
                );
            });
            None
        }
    }
}

/// One boot at a time: both use 2 vCPUs on the host's cores, and the
/// figures are CPU times and latencies.
static ONE_BOOT: Mutex<()> = Mutex::new(());

fn timeout(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("BARKEEP_VM_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

fn run(boot: &str, env: &str, mem: u32, limit: Duration, expected: &[&str], min_writes: usize) {
    let Some((pre, deb, release, image)) = ready() else {
        return;
    };
    let _one = ONE_BOOT.lock().unwrap_or_else(|e| e.into_inner());
    let overlay = sdvm::overlay(deb, release, image, boot, env).expect("guest overlay");
    let mut out =
        sdvm::boot(pre, &overlay, boot, mem, limit).unwrap_or_else(|e| panic!("boot {boot}: {e}"));
    let mut figs = String::new();
    figs.push_str(&format!(
        "sdvm-figure {boot} qemu_s {:.1}\n",
        out.elapsed.as_secs_f64()
    ));
    if let Some(b) = out.booted_after {
        figs.push_str(&format!("sdvm-figure {boot} boot_to_multi_user_s {b:.1}\n"));
    }
    for (k, v) in &out.figures {
        figs.push_str(&format!("sdvm-figure {boot} {k} {v}\n"));
    }
    let _ = std::io::stderr().write_all(figs.as_bytes());
    let target = vm::workspace_root().join("target/sdvm-figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&target)
    {
        let _ = f.write_all(figs.as_bytes());
    }
    for (c, s, d) in &out.checks {
        let _ = writeln!(std::io::stderr(), "sdvm-check {boot} {c} {s} {d}");
    }

    let mut problems = Vec::new();
    if out.timed_out {
        problems.push(format!(
            "QEMU was killed after {:.0} s (BARKEEP_VM_TIMEOUT)",
            out.elapsed.as_secs_f64()
        ));
    } else if !out.done {
        problems.push("the guest stopped before SDDONE".to_string());
    }
    for (c, s, d) in &out.checks {
        if s != "PASS" {
            problems.push(format!("{s} {c}: {d}"));
        }
    }
    for e in expected {
        if !out.checks.iter().any(|(c, s, _)| c == e && s == "PASS") {
            problems.push(format!("{e}: no PASS reported"));
        }
    }
    if out.writes.len() < min_writes {
        problems.push(format!(
            "{} writes through the ivshmem slice announced, {min_writes} expected: the backing-file check proves too little",
            out.writes.len()
        ));
    }
    if let Err(e) = vm::check_shm_image(&out.shm_image, &out.writes) {
        problems.push(format!(
            "the ivshmem backing file does not hold the guest's writes:\n{e}"
        ));
    }
    if !problems.is_empty() {
        out.work_dir.keep();
        panic!(
            "real-systemd boot {boot}: {} problem(s):\n  {}\n---- console (kept in {}) ----\n{}",
            problems.len(),
            problems.join("\n  "),
            out.work_dir.path().display(),
            out.serial
        );
    }
}

/// The units as shipped: socket activation, READY, exposure, reload with a
/// policy change, and a mapped slice of the VFIO ivshmem device through
/// SIGKILL, `systemctl restart` and a watchdog restart, whose bytes the host
/// finds in the backing file; then `systemctl stop` revokes it.
#[test]
fn systemd_units() {
    run(
        "units",
        "",
        1536,
        timeout(600),
        &[
            "install",
            "socket-activation",
            "ready",
            "security",
            "reload",
            "kill-restart",
            "restart",
            "watchdog",
            "stop-revokes",
            "container",
        ],
        // Before and after SIGKILL, after the reclaim, after `systemctl
        // restart`, after the watchdog restart, from the container.
        6,
    );
}

/// Scale: PID 1's CPU per grant+release at 0, 10,000 and 100,000 live
/// leases (target: at most 2 % of barkeepd's), no audit record lost in a
/// 50,000-grant storm, and 10,000 and 100,000 leases surviving SIGKILL.
#[test]
fn systemd_scale() {
    // BARKEEP_SDVM_SCALE=SMALL,BIG,STORM lowers the sizes for a quick run
    // (the check names carry the sizes).
    let sizes: Vec<u64> = std::env::var("BARKEEP_SDVM_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| v.len() == 3 && v[0] < v[1])
        .unwrap_or_else(|| vec![10_000, 100_000, 50_000]);
    let (small, big, storm) = (sizes[0], sizes[1], sizes[2]);
    let names = [
        "install".to_string(),
        "pid1-cpu-0".into(),
        "audit-storm".into(),
        format!("hold-{small}"),
        format!("pid1-cpu-{small}"),
        format!("reclaim-{small}"),
        format!("hold-{big}"),
        format!("pid1-cpu-{big}"),
        format!("reclaim-{big}"),
    ];
    let expected: Vec<&str> = names.iter().map(String::as_str).collect();
    run(
        "scale",
        &format!("SMALL={small} BIG={big} STORM={storm}"),
        2048,
        timeout(3600),
        &expected,
        0,
    );
}
