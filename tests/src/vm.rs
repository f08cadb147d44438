//! The real-kernel suite's host side: finds QEMU and the test kernel, builds
//! the guest initramfs, boots it and parses what the guest reports.
//!
//! The guest half lives in `tests/vm/` (`init`, `scenarios.sh`); the cargo
//! test that drives both is `tests/tests/vm.rs`. See `tests/vm/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// PCI address of QEMU's `edu` device in the guest (pinned with `addr=`).
pub const EDU_BDF: &str = "0000:00:03.0";
/// PCI address of the `ivshmem-plain` device; its BAR2 is the host file.
pub const SHM_BDF: &str = "0000:00:04.0";
/// PCI address of the `nvme` device (BAR0 16 KiB, MSI-X table at 0x2000).
pub const NVME_BDF: &str = "0000:00:05.0";
/// Size of the ivshmem memory backend (= the size of its BAR2).
pub const SHM_SIZE: usize = 1 << 20;

/// The binaries the guest needs, by cargo target name.
pub const GUEST_BINARIES: &[&str] = &["barkeepd", "barkeep", "bk-vmcheck"];

/// Root of the cargo workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory with the guest side (`init`, `scenarios.sh`).
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm")
}

/// The test kernel: `$BARKEEP_TEST_KERNEL`, else where
/// `tests/vm/kernel/build.sh` builds it (a cache directory keyed by the
/// recipe: config, patch and source version).
pub fn kernel_path() -> PathBuf {
    if let Some(k) = std::env::var_os("BARKEEP_TEST_KERNEL") {
        return PathBuf::from(k);
    }
    Command::new("sh")
        .arg(guest_dir().join("kernel/build.sh"))
        .arg("--path")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| PathBuf::from("tests/vm/kernel/build.sh --path failed"))
}

/// What the host needs to run the suite.
#[derive(Debug, Clone)]
pub struct Prerequisites {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// The test kernel (bzImage).
    pub kernel: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Prerequisites {
    /// Looks for QEMU, the kernel ([`kernel_path`]) and busybox;
    /// `Err` says what is missing and how to get it.
    pub fn find() -> Result<Prerequisites, String> {
        let mut missing = Vec::new();
        let qemu = find_in_path("qemu-system-x86_64");
        if qemu.is_none() {
            missing.push("qemu-system-x86_64 (apt-get install qemu-system-x86)".to_string());
        }
        let kernel = kernel_path();
        if !kernel.is_file() {
            missing.push(format!(
                "the test kernel at {} (build it with tests/vm/kernel/build.sh, or set BARKEEP_TEST_KERNEL to a bzImage)",
                kernel.display()
            ));
        }
        let busybox = ["busybox", "busybox-static"]
            .iter()
            .find_map(|n| find_in_path(n))
            .filter(|p| is_static(p));
        if busybox.is_none() {
            missing.push("a static busybox (apt-get install busybox-static)".to_string());
        }
        if !missing.is_empty() {
            return Err(format!("missing {}", missing.join(", ")));
        }
        Ok(Prerequisites {
            qemu: qemu.unwrap_or_default(),
            kernel,
            busybox: busybox.unwrap_or_default(),
        })
    }
}

/// True if `ldd` finds no shared libraries (the guest has none but ours).
fn is_static(path: &Path) -> bool {
    match shared_libraries(path) {
        Ok(libs) => libs.is_empty(),
        Err(_) => false,
    }
}

/// Shared libraries (and the loader) that `ldd` lists for an executable.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| format!("running ldd {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to copy.
        return Ok(Vec::new());
    }
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Builds the guest's binaries in release mode with the cargo that runs the
/// tests (same target dir), returning target name -> executable path.
pub fn build_release_binaries() -> Result<BTreeMap<String, PathBuf>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "barkeep-daemon",
            "-p",
            "barkeep-cli",
            "-p",
            "barkeep-tests",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo build --release: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --release of the guest binaries failed ({}); see the compiler output above",
            out.status
        ));
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for want in GUEST_BINARIES {
        if !found.contains_key(*want) {
            return Err(format!(
                "cargo build --release did not produce the `{want}` binary (found: {:?})",
                found.keys().collect::<Vec<_>>()
            ));
        }
    }
    Ok(found)
}

/// A cpio archive in the kernel's "newc" format, built in memory so that
/// ownership and modes are exactly ours whoever runs the host side.
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            body.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            let _ = write!(header, "{f:08x}");
        }
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    /// Adds a directory and its parents (once each).
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, &[]);
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.trim_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// Adds a regular file with `mode` permission bits.
    pub fn file(&mut self, path: &str, mode: u32, body: &[u8]) {
        self.parent(path);
        self.entry(path, S_IFREG | mode, body);
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, S_IFLNK | 0o777, target.as_bytes());
    }

    /// Ends the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        // The kernel reads the archive in 512-byte blocks happily either way,
        // but cpio(1) tools expect it.
        while !self.data.len().is_multiple_of(512) {
            self.data.push(0);
        }
        self.data
    }
}

/// The executable without its DWARF line tables (a quarter of the size, so
/// the initramfs loads faster; symbols stay for backtraces), or as it is
/// when `strip` is not installed.
fn without_debug_info(exe: &Path) -> Result<Vec<u8>, String> {
    let tmp = tempfile::NamedTempFile::new().map_err(|e| format!("temporary file: {e}"))?;
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(tmp.path())
        .arg(exe)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let path = if stripped { tmp.path() } else { exe };
    std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// Users of the guest: root runs barkeepd; scenarios run as `tenant` (1000)
/// and `tenant2` (1001), neither of them admin.
pub const GUEST_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
tenant:x:1000:1000:tenant:/tmp:/bin/sh\n\
tenant2:x:1001:1001:tenant2:/tmp:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// Groups of the guest.
pub const GUEST_GROUP: &str = "root:x:0:\ntenant:x:1000:\ntenant2:x:1001:\nnogroup:x:65534:\n";

/// Builds the guest initramfs: busybox, the binaries and their libraries,
/// users, `/init`, the scenario script and `/bk/env`.
pub fn build_initramfs(
    prereqs: &Prerequisites,
    binaries: &BTreeMap<String, PathBuf>,
) -> Result<Vec<u8>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let mut cpio = Cpio::default();
    for d in [
        "proc", "sys", "dev", "tmp", "run", "root", "etc", "usr/bin", "bk",
    ] {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", 0o755, &read(&prereqs.busybox)?);
    // The init installs the applet links itself, but `sh` must exist for `#!`.
    cpio.symlink("bin/sh", "busybox");

    let mut libs = std::collections::BTreeSet::new();
    for name in GUEST_BINARIES {
        let exe = &binaries[*name];
        cpio.file(&format!("usr/bin/{name}"), 0o755, &without_debug_info(exe)?);
        libs.extend(shared_libraries(exe)?);
    }
    for lib in libs {
        // ldd prints the path the loader uses; store the file's content there.
        cpio.file(&lib.to_string_lossy(), 0o755, &read(&lib)?);
    }

    cpio.file("etc/passwd", 0o644, GUEST_PASSWD.as_bytes());
    cpio.file("etc/group", 0o644, GUEST_GROUP.as_bytes());
    let env =
        format!("BK_EDU={EDU_BDF}\nBK_SHM={SHM_BDF}\nBK_NVME={NVME_BDF}\nBK_SHM_SIZE={SHM_SIZE}\n");
    cpio.file("bk/env", 0o644, env.as_bytes());
    let guest = guest_dir();
    cpio.file("init", 0o755, &read(&guest.join("init"))?);
    cpio.file(
        "bk/scenarios.sh",
        0o755,
        &read(&guest.join("scenarios.sh"))?,
    );
    Ok(cpio.finish())
}

/// One boot of the test kernel.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// Passed to the guest as `bkboot=NAME`; selects the scenarios.
    pub name: String,
    /// Extra kernel command-line parameters.
    pub extra_append: String,
    /// Hard limit for the whole QEMU run.
    pub timeout: Duration,
}

/// What the guest reported for one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Scenario name (`s1-slice-pattern`, `bind`, ...).
    pub scenario: String,
    /// PASS, FAIL or INFO.
    pub status: String,
    /// The rest of the line.
    pub detail: String,
}

/// A byte pattern the guest wrote into the ivshmem BAR through a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmWrite {
    /// Scenario that wrote it.
    pub scenario: String,
    /// BAR offset of the slice.
    pub slice_start: u64,
    /// Offset inside the slice.
    pub k: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Outcome of a boot.
#[derive(Debug)]
pub struct BootOutcome {
    /// Everything QEMU printed (serial console), `\r` removed.
    pub serial: String,
    /// `BKTEST` lines in order.
    pub reports: Vec<Report>,
    /// `BKWRITE` lines: what the host must find in the ivshmem file.
    pub shm_writes: Vec<ShmWrite>,
    /// Whether the guest reached `BKDONE`.
    pub done: bool,
    /// Whether the hard timeout killed QEMU.
    pub timed_out: bool,
    /// The ivshmem backing file after QEMU exited.
    pub shm_image: Vec<u8>,
    /// Wall time of the QEMU run.
    pub elapsed: Duration,
    /// Where the initramfs, the serial log, the ivshmem file and the QEMU
    /// command line are (removed with the outcome unless kept).
    pub work_dir: WorkDir,
}

impl BootOutcome {
    /// Reports with status FAIL.
    pub fn failures(&self) -> Vec<&Report> {
        self.reports.iter().filter(|r| r.status == "FAIL").collect()
    }

    /// True if `scenario` reported PASS and never FAIL.
    pub fn passed(&self, scenario: &str) -> bool {
        let mine: Vec<_> = self
            .reports
            .iter()
            .filter(|r| r.scenario == scenario)
            .collect();
        mine.iter().any(|r| r.status == "PASS") && !mine.iter().any(|r| r.status == "FAIL")
    }

    /// Checks the ivshmem image: every reported write is at slice start + k,
    /// and every other byte is still zero. `Err` lists the differences.
    pub fn check_shm(&self) -> Result<usize, String> {
        check_shm_image(&self.shm_image, &self.shm_writes)
    }
}

/// Compares an ivshmem image with the writes the guest reported (the file
/// starts zeroed). Returns the number of pattern bytes checked.
pub fn check_shm_image(image: &[u8], writes: &[ShmWrite]) -> Result<usize, String> {
    let mut expected = vec![0u8; image.len()];
    let mut checked = 0;
    let mut problems = Vec::new();
    for w in writes {
        let at = (w.slice_start + w.k) as usize;
        if at + w.bytes.len() > expected.len() {
            problems.push(format!(
                "{}: write at 0x{at:x} is past the end of the 0x{:x}-byte file",
                w.scenario,
                image.len()
            ));
            continue;
        }
        expected[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
        checked += w.bytes.len();
    }
    for (off, (got, want)) in image.iter().zip(&expected).enumerate() {
        if got != want {
            let owner = writes
                .iter()
                .find(|w| {
                    let s = (w.slice_start + w.k) as usize;
                    (s..s + w.bytes.len()).contains(&off)
                })
                .map(|w| format!(" (expected from {})", w.scenario))
                .unwrap_or_else(|| " (stray byte: nothing was written here)".into());
            problems.push(format!(
                "byte 0x{off:x}: found 0x{got:02x}, expected 0x{want:02x}{owner}"
            ));
            if problems.len() >= 20 {
                problems.push("...".into());
                break;
            }
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems.join("\n"))
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses the guest's serial output.
pub fn parse_serial(serial: &str) -> (Vec<Report>, Vec<ShmWrite>, bool) {
    let mut reports = Vec::new();
    let mut writes = Vec::new();
    let mut done = false;
    for line in serial.lines() {
        // Kernel messages can share a line with ours; find our marker.
        if let Some(pos) = line.find("BKTEST ") {
            let mut parts = line[pos + 7..].splitn(3, ' ');
            let scenario = parts.next().unwrap_or("").to_string();
            let status = parts.next().unwrap_or("").to_string();
            let detail = parts.next().unwrap_or("").to_string();
            reports.push(Report {
                scenario,
                status,
                detail,
            });
        } else if let Some(pos) = line.find("BKWRITE ") {
            // BKWRITE <scenario> <slice_start> <k> <hex>
            let f: Vec<&str> = line[pos + 8..].split_whitespace().collect();
            let parsed = (f.len() == 4)
                .then(|| Some((parse_u64(f[1])?, parse_u64(f[2])?, parse_hex(f[3])?)))
                .flatten();
            match parsed {
                Some((slice_start, k, bytes)) => writes.push(ShmWrite {
                    scenario: f[0].to_string(),
                    slice_start,
                    k,
                    bytes,
                }),
                None => reports.push(Report {
                    scenario: "harness".into(),
                    status: "FAIL".into(),
                    detail: format!("malformed BKWRITE line: {line}"),
                }),
            }
        } else if line.contains("BKDONE ") {
            done = true;
        }
    }
    (reports, writes, done)
}

/// A built guest: the initramfs, ready to boot any number of times.
pub struct Guest {
    /// What was found on the host.
    pub prereqs: Prerequisites,
    /// The uncompressed initramfs.
    pub initrd: Vec<u8>,
}

/// A boot's work directory: initramfs, ivshmem file, serial log and the QEMU
/// command. Removed on drop unless kept (`BARKEEP_VM_KEEP=1`, or
/// [`WorkDir::keep`] after a failure).
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    tmp: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// A fresh directory `barkeep-vm-BOOT-XXXX` in the temporary directory.
    pub fn new(boot: &str) -> Result<WorkDir, String> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("barkeep-vm-{boot}-"))
            .tempdir()
            .map_err(|e| format!("creating a work directory: {e}"))?;
        let mut dir = WorkDir {
            path: tmp.path().to_path_buf(),
            tmp: Some(tmp),
        };
        if std::env::var_os("BARKEEP_VM_KEEP").is_some_and(|v| v == "1") {
            dir.keep();
        }
        Ok(dir)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after the process ends (for debugging).
    pub fn keep(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.keep();
        }
    }
}

impl Guest {
    /// Builds the release binaries and the initramfs.
    pub fn build(prereqs: Prerequisites) -> Result<Guest, String> {
        let binaries = build_release_binaries()?;
        Guest::with_binaries(prereqs, &binaries)
    }

    /// Builds the initramfs around already built binaries.
    pub fn with_binaries(
        prereqs: Prerequisites,
        binaries: &BTreeMap<String, PathBuf>,
    ) -> Result<Guest, String> {
        let initrd = build_initramfs(&prereqs, binaries)?;
        Ok(Guest { prereqs, initrd })
    }

    /// The QEMU command line for a boot (also saved as `run-NAME.sh`).
    pub fn qemu_args(&self, spec: &BootSpec, initrd: &Path, shm_file: &Path) -> Vec<String> {
        let append = format!(
            "console=ttyS0 quiet panic=-1 intel_iommu=on no_timer_check bkboot={} {}",
            spec.name, spec.extra_append
        );
        let mut args: Vec<String> = [
            "-machine",
            "q35,kernel-irqchip=split",
            "-cpu",
            "max",
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "-kernel".into(),
            self.prereqs.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append.trim_end().to_string(),
            "-device".into(),
            "intel-iommu,intremap=on".into(),
            "-device".into(),
            "edu,addr=03.0".into(),
            "-object".into(),
            format!(
                "memory-backend-file,id=hostmem,share=on,mem-path={},size={}",
                shm_file.display(),
                SHM_SIZE
            ),
            "-device".into(),
            "ivshmem-plain,memdev=hostmem,addr=04.0".into(),
            "-device".into(),
            "nvme,serial=bk0,addr=05.0".into(),
        ]);
        args
    }

    /// Boots the kernel once and collects what the guest reported.
    pub fn boot(&self, spec: &BootSpec) -> Result<BootOutcome, String> {
        let dir = WorkDir::new(&spec.name)?;
        let initrd = dir.path().join("initrd.cpio");
        std::fs::write(&initrd, &self.initrd)
            .map_err(|e| format!("writing {}: {e}", initrd.display()))?;
        let shm_file = dir.path().join(format!("ivshmem-{}", spec.name));
        let f = std::fs::File::create(&shm_file)
            .map_err(|e| format!("creating {}: {e}", shm_file.display()))?;
        f.set_len(SHM_SIZE as u64)
            .map_err(|e| format!("sizing {}: {e}", shm_file.display()))?;
        drop(f);
        let args = self.qemu_args(spec, &initrd, &shm_file);
        let script = format!(
            "#!/bin/sh\n# Boot '{}' of the barkeep real-kernel suite by hand (Ctrl-A X quits).\nexec {} {}\n",
            spec.name,
            self.prereqs.qemu.display(),
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = std::fs::write(dir.path().join(format!("run-{}.sh", spec.name)), script);

        let start = Instant::now();
        let mut child = Command::new(&self.prereqs.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.prereqs.qemu.display()))?;
        let Console {
            serial, timed_out, ..
        } = read_console(&mut child, &spec.name, start + spec.timeout, None);
        let elapsed = start.elapsed();
        let _ = std::fs::write(
            dir.path().join(format!("serial-{}.log", spec.name)),
            &serial,
        );
        let shm_image =
            std::fs::read(&shm_file).map_err(|e| format!("reading {}: {e}", shm_file.display()))?;
        let (reports, shm_writes, done) = parse_serial(&serial);
        Ok(BootOutcome {
            serial,
            reports,
            shm_writes,
            done,
            timed_out,
            shm_image,
            elapsed,
            work_dir: dir,
        })
    }
}

/// What a QEMU run printed on its serial console, and how it ended.
pub struct Console {
    /// Every console line (carriage returns removed), then QEMU's stderr
    /// and a failed exit status, each under a `---` heading.
    pub serial: String,
    /// QEMU was killed at the deadline.
    pub timed_out: bool,
    /// When the first line holding the marker arrived.
    pub marker_at: Option<Instant>,
}

/// Reads a started QEMU's console (its stdout) and stderr until it exits,
/// or kills it at `deadline`. With `BARKEEP_VM_ECHO=1` every line also goes
/// to stderr as it comes, tagged `[tag]` (past libtest's capture, which
/// would hold it until the end).
pub fn read_console(
    child: &mut std::process::Child,
    tag: &str,
    deadline: Instant,
    marker: Option<&str>,
) -> Console {
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    let stdout = child.stdout.take().expect("piped");
    let echo = std::env::var_os("BARKEEP_VM_ECHO").is_some_and(|v| v == "1");
    let tag = tag.to_string();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let line = String::from_utf8_lossy(&buf).replace('\r', "");
            if echo {
                eprint!("[{tag}] {line}");
            }
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (mut serial, mut timed_out, mut marker_at) = (String::new(), false, None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok((line, at)) => {
                if marker_at.is_none() && marker.is_some_and(|m| line.contains(m)) {
                    marker_at = Some(at);
                }
                serial.push_str(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                    let _ = child.kill();
                    break;
                }
            }
        }
    }
    let status = child.wait();
    let _ = reader.join();
    while let Ok((line, _)) = rx.try_recv() {
        serial.push_str(&line);
    }
    let qemu_err = err_reader.join().unwrap_or_default();
    if !qemu_err.trim().is_empty() {
        let _ = writeln!(serial, "--- qemu stderr ---\n{qemu_err}");
    }
    if let Ok(st) = &status {
        if !st.success() && !timed_out {
            let _ = writeln!(serial, "--- qemu exited with {st} ---");
        }
    }
    Console {
        serial,
        timed_out,
        marker_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_lines_parse_with_kernel_noise() {
        let serial = "[    1.0] random: crng init done\n\
            BKTEST s1 PASS mapped at 0x1000\n\
            [    1.1] x BKTEST s2 FAIL size: 8192 != 4096\n\
            BKWRITE s1 0x10000 0x1000 a5b6\n\
            BKDONE main\n";
        let (reports, writes, done) = parse_serial(serial);
        assert!(done);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].scenario, "s2");
        assert_eq!(reports[1].status, "FAIL");
        assert_eq!(reports[1].detail, "size: 8192 != 4096");
        assert_eq!(
            writes,
            vec![ShmWrite {
                scenario: "s1".into(),
                slice_start: 0x10000,
                k: 0x1000,
                bytes: vec![0xa5, 0xb6]
            }]
        );
    }

    #[test]
    fn shm_check_finds_misplaced_and_stray_bytes() {
        let w = ShmWrite {
            scenario: "s1".into(),
            slice_start: 0x2000,
            k: 0x10,
            bytes: vec![1, 2],
        };
        let mut image = vec![0u8; 0x4000];
        image[0x2010] = 1;
        image[0x2011] = 2;
        assert_eq!(check_shm_image(&image, std::slice::from_ref(&w)), Ok(2));
        image[0x10] = 1; // as if the slice were mapped at BAR offset 0
        let err = check_shm_image(&image, std::slice::from_ref(&w)).unwrap_err();
        assert!(err.contains("byte 0x10") && err.contains("stray"), "{err}");
        image[0x10] = 0;
        image[0x2011] = 0;
        let err = check_shm_image(&image, &[w]).unwrap_err();
        assert!(err.contains("byte 0x2011"), "{err}");
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("a/b", 0o644, b"hello");
        let data = c.finish();
        assert!(data.starts_with(b"070701"));
        assert_eq!(data.len() % 512, 0);
        // "a" directory first, then "a/b".
        let text = String::from_utf8_lossy(&data);
        assert!(text.find("a\0").unwrap() < text.find("a/b\0").unwrap());
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
    }
}
