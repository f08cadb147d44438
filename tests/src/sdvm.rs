//! The real-systemd suite's host side: finds the test kernel and the systemd
//! root file system in the cache (`tests/vm/kernel/build.sh`,
//! `tests/vm/rootfs/build.sh`), builds barkeep's .deb
//! (`packaging/build-deb.sh`) and the guest driver (`bk-sdcheck`), boots the
//! guest with systemd as PID 1 and parses what `tests/vm/systemd/checks.sh`
//! reports. See tests/vm/README.md.

use crate::vm::{self, Cpio, WorkDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The ivshmem device's address in this guest (the nvme device comes first).
pub const SHM_BDF: &str = "0000:00:05.0";

/// What one skipped suite needs, as one line's worth of text.
pub const ENABLE: &str = "tests/vm/kernel/build.sh && tests/vm/rootfs/build.sh && cargo install cargo-deb --locked (apt-get install qemu-system-x86 busybox-static mmdebstrap cpio gcc make flex bison bc libelf-dev libssl-dev)";

/// Runs one of the cache scripts with `--path`: where its product is.
fn cache_path(script: &str) -> Result<PathBuf, String> {
    let out = Command::new("sh")
        .arg(vm::workspace_root().join(script))
        .arg("--path")
        .output()
        .map_err(|e| format!("running {script} --path: {e}"))?;
    if !out.status.success() {
        return Err(format!("{script} --path failed"));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// What the suite needs on the host.
#[derive(Debug, Clone)]
pub struct SdPrereqs {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// The test kernel.
    pub kernel: PathBuf,
    /// The systemd root file system (uncompressed newc archive).
    pub rootfs: PathBuf,
    /// A static busybox for the container image.
    pub busybox: PathBuf,
}

impl SdPrereqs {
    /// Looks for everything; `Err` lists what is missing.
    pub fn find() -> Result<SdPrereqs, String> {
        let mut missing = Vec::new();
        let qemu = find_in_path("qemu-system-x86_64");
        if qemu.is_none() {
            missing.push("qemu-system-x86_64".to_string());
        }
        let kernel = vm::kernel_path();
        if !kernel.is_file() {
            missing.push(format!("the test kernel {}", kernel.display()));
        }
        let rootfs = match std::env::var_os("BARKEEP_TEST_ROOTFS") {
            Some(r) => PathBuf::from(r),
            None => cache_path("tests/vm/rootfs/build.sh")?,
        };
        if !rootfs.is_file() {
            missing.push(format!("the systemd root file system {}", rootfs.display()));
        }
        let busybox = ["busybox", "busybox-static"]
            .iter()
            .find_map(|n| find_in_path(n));
        if busybox.is_none() {
            missing.push("busybox (static, for the container image)".to_string());
        }
        if find_in_path("cargo-deb").is_none() {
            missing.push("cargo-deb".to_string());
        }
        if !missing.is_empty() {
            return Err(format!("missing {}", missing.join(", ")));
        }
        Ok(SdPrereqs {
            qemu: qemu.unwrap_or_default(),
            kernel,
            rootfs,
            busybox: busybox.unwrap_or_default(),
        })
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Builds barkeep's .deb with packaging/build-deb.sh (cargo-deb) and the
/// guest driver; returns (the .deb, the release directory with bk-sdcheck
/// and bk-inherit).
pub fn build_deb_and_driver() -> Result<(PathBuf, PathBuf), String> {
    let root = vm::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new("sh")
        .arg(root.join("packaging/build-deb.sh"))
        .current_dir(&root)
        .env("CARGO", &cargo)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("running packaging/build-deb.sh: {e}"))?;
    if !st.success() {
        return Err(format!("packaging/build-deb.sh failed ({st})"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    // The newest barkeep_*.deb is the one just built.
    let deb = std::fs::read_dir(target.join("debian"))
        .map_err(|e| format!("reading {}: {e}", target.join("debian").display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("barkeep_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .ok_or("packaging/build-deb.sh left no target/debian/barkeep_*.deb")?;
    let out = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "barkeep-tests",
            "--bin",
            "bk-sdcheck",
            "--bin",
            "bk-inherit",
        ])
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cargo build bk-sdcheck: {e}"))?;
    if !out.success() {
        return Err("cargo build --release --bin bk-sdcheck --bin bk-inherit failed".into());
    }
    Ok((deb, target.join("release")))
}

/// The container image for `podman import`: a tar of a small root file
/// system with a static busybox, the `barkeep` CLI and `bk-inherit` (the
/// command `barkeep exec` runs: it maps its inherited slice and writes),
/// with the shared libraries `ldd` names for them.
pub fn image_tar(release: &Path, busybox: &Path) -> Result<Vec<u8>, String> {
    let stage = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let root = stage.path();
    let put = |src: &Path, dest: &str| -> Result<(), String> {
        let to = root.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("has a parent")).map_err(|e| e.to_string())?;
        std::fs::copy(src, &to).map_err(|e| format!("copying {}: {e}", src.display()))?;
        Ok(())
    };
    put(busybox, "bin/busybox")?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| e.to_string())?;
    let mut libs = std::collections::BTreeSet::new();
    for exe in ["barkeep", "bk-inherit"] {
        let path = release.join(exe);
        put(&path, &format!("usr/bin/{exe}"))?;
        libs.extend(vm::shared_libraries(&path)?);
    }
    for lib in libs {
        put(&lib, &lib.to_string_lossy())?;
    }
    for d in ["proc", "sys", "dev", "tmp", "run", "etc"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    let out = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--owner=0", "--group=0", "-cf", "-", "."])
        .output()
        .map_err(|e| format!("running tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// The second initramfs archive: the .deb, the driver, the checks and the
/// command for sd-test.service.
pub fn overlay(
    deb: &Path,
    release: &Path,
    image: &[u8],
    boot: &str,
    env: &str,
) -> Result<Vec<u8>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let mut cpio = Cpio::default();
    cpio.file("opt/sdsuite/barkeep.deb", 0o644, &read(deb)?);
    cpio.file("opt/sdsuite/image.tar", 0o644, image);
    cpio.file(
        "usr/local/bin/bk-sdcheck",
        0o755,
        &read(&release.join("bk-sdcheck"))?,
    );
    let checks = vm::guest_dir().join("systemd/checks.sh");
    cpio.file("opt/sdsuite/checks.sh", 0o755, &read(&checks)?);
    // udev gives `barkeep` the nodes of the ivshmem device (docs/install.md).
    let rules = format!(
        "SUBSYSTEM==\"vfio-dev\", KERNELS==\"{SHM_BDF}\", OWNER=\"barkeep\", GROUP=\"barkeep\", MODE=\"0600\"\n\
         SUBSYSTEM==\"vfio\", KERNEL==\"[0-9]*\", TEST==\"/sys/kernel/iommu_groups/$kernel/devices/{SHM_BDF}\", OWNER=\"barkeep\", GROUP=\"barkeep\", MODE=\"0600\"\n"
    );
    cpio.file("etc/udev/rules.d/71-sdsuite.rules", 0o644, rules.as_bytes());
    cpio.file(
        "etc/sd-test/cmd",
        0o644,
        format!("{env} /bin/sh /opt/sdsuite/checks.sh {boot}\n").as_bytes(),
    );
    Ok(cpio.finish())
}

/// One boot's results.
#[derive(Debug)]
pub struct SdOutcome {
    /// The console.
    pub serial: String,
    /// (check, PASS|FAIL, detail).
    pub checks: Vec<(String, String, String)>,
    /// (name, value).
    pub figures: Vec<(String, String)>,
    /// Bytes written through the ivshmem slice.
    pub writes: Vec<vm::ShmWrite>,
    /// `SDDONE` seen.
    pub done: bool,
    /// Killed at the time limit.
    pub timed_out: bool,
    /// The ivshmem backing file afterwards.
    pub shm_image: Vec<u8>,
    /// QEMU's wall time.
    pub elapsed: Duration,
    /// Host seconds from QEMU start to `SDTEST-START` (multi-user.target).
    pub booted_after: Option<f64>,
    /// The work directory (kept on failure).
    pub work_dir: WorkDir,
}

/// What the console said: checks (name, PASS|FAIL, detail), figures
/// (name, value), ivshmem writes, and whether `SDDONE` came.
pub type Parsed = (
    Vec<(String, String, String)>,
    Vec<(String, String)>,
    Vec<vm::ShmWrite>,
    bool,
);

/// Parses the console.
pub fn parse(serial: &str) -> Parsed {
    let (mut checks, mut figs, mut writes, mut done) = (Vec::new(), Vec::new(), Vec::new(), false);
    for line in serial.lines() {
        if let Some(pos) = line.find("SDTEST ") {
            let mut p = line[pos + 7..].splitn(3, ' ');
            let name = p.next().unwrap_or("").to_string();
            let status = p.next().unwrap_or("").to_string();
            checks.push((name, status, p.next().unwrap_or("").to_string()));
        } else if let Some(pos) = line.find("SDFIG ") {
            let mut p = line[pos + 6..].split_whitespace();
            if let (Some(k), Some(v)) = (p.next(), p.next()) {
                figs.push((k.to_string(), v.to_string()));
            }
        } else if let Some(pos) = line.find("SDWRITE ") {
            let f: Vec<&str> = line[pos + 8..].split_whitespace().collect();
            let off = f
                .first()
                .and_then(|o| u64::from_str_radix(o.trim_start_matches("0x"), 16).ok());
            let bytes = f.get(1).and_then(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()
            });
            match (off, bytes) {
                (Some(off), Some(bytes)) => writes.push(vm::ShmWrite {
                    scenario: "sdvm".into(),
                    slice_start: off,
                    k: 0,
                    bytes,
                }),
                _ => checks.push(("harness".into(), "FAIL".into(), format!("bad line: {line}"))),
            }
        } else if line.contains("SDDONE ") {
            done = true;
        }
    }
    (checks, figs, writes, done)
}

/// Boots the guest once: `boot` names the checks.sh part; `mem` in MB.
pub fn boot(
    pre: &SdPrereqs,
    overlay: &[u8],
    boot: &str,
    mem: u32,
    timeout: Duration,
) -> Result<SdOutcome, String> {
    let dir = WorkDir::new(&format!("sd-{boot}"))?;
    let initrd = dir.path().join("initrd");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&initrd).map_err(|e| e.to_string())?;
        let mut r = std::fs::File::open(&pre.rootfs)
            .map_err(|e| format!("{}: {e}", pre.rootfs.display()))?;
        std::io::copy(&mut r, &mut f).map_err(|e| e.to_string())?;
        f.write_all(overlay).map_err(|e| e.to_string())?;
    }
    let shm = dir.path().join(format!("ivshmem-{boot}"));
    std::fs::File::create(&shm)
        .and_then(|f| f.set_len(vm::SHM_SIZE as u64))
        .map_err(|e| format!("{}: {e}", shm.display()))?;
    let args: Vec<String> = [
        "-machine",
        "q35,kernel-irqchip=split",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        &mem.to_string(),
        "-smp",
        "2",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        &pre.kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        // no_timer_check: on a host busy enough, TCG is too slow for the
        // kernel's check of the timer through the remapped IO-APIC, which
        // then panics ("timer doesn't work through Interrupt-remapped
        // IO-APIC").
        "console=ttyS0 quiet panic=-1 intel_iommu=on no_timer_check rdinit=/sbin/init systemd.getty_auto=0",
        "-device",
        "intel-iommu,intremap=on",
        "-device",
        "edu,addr=03.0",
        "-device",
        "nvme,serial=x,addr=04.0",
        "-object",
        &format!(
            "memory-backend-file,id=hostmem,share=on,mem-path={},size={}",
            shm.display(),
            vm::SHM_SIZE
        ),
        "-device",
        "ivshmem-plain,memdev=hostmem,addr=05.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _ = std::fs::write(
        dir.path().join(format!("run-{boot}.sh")),
        format!(
            "#!/bin/sh\nexec {} {}\n",
            pre.qemu.display(),
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let start = Instant::now();
    let mut child = Command::new(&pre.qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", pre.qemu.display()))?;
    let vm::Console {
        serial,
        timed_out,
        marker_at,
    } = vm::read_console(
        &mut child,
        &format!("sd-{boot}"),
        start + timeout,
        Some("SDTEST-START"),
    );
    let booted_after = marker_at.map(|at| (at - start).as_secs_f64());
    let elapsed = start.elapsed();
    let _ = std::fs::write(dir.path().join(format!("serial-{boot}.log")), &serial);
    let shm_image = std::fs::read(&shm).map_err(|e| format!("{}: {e}", shm.display()))?;
    let (checks, figures, writes, done) = parse(&serial);
    Ok(SdOutcome {
        serial,
        checks,
        figures,
        writes,
        done,
        timed_out,
        shm_image,
        elapsed,
        booted_after,
        work_dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_parse_with_noise() {
        let serial = "[   3.1] random: crng init done\n\
            SDTEST install PASS dpkg -i of barkeep 0.1.0-1 in 27 s\n\
            [sd] SDFIG ready_s 0.650\n\
            SDTEST kill-restart FAIL restart: status=202/FDS\n\
            SDWRITE 0x40010 a5b6\n\
            SDWRITE 0x40020 zz\n\
            SDDONE units\n";
        let (checks, figs, writes, done) = parse(serial);
        assert!(done);
        assert_eq!(checks[0].0, "install");
        assert_eq!(checks[0].1, "PASS");
        assert_eq!(checks[1].1, "FAIL");
        assert_eq!(checks[1].2, "restart: status=202/FDS");
        // A malformed SDWRITE is a harness failure, not ignored.
        assert_eq!(checks[2].0, "harness");
        assert_eq!(figs, vec![("ready_s".to_string(), "0.650".to_string())]);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].slice_start, 0x40010);
        assert_eq!(writes[0].bytes, vec![0xa5, 0xb6]);
    }
}
