//! The servers under test as child processes: the real `barkeepd` binary
//! (built by cargo with the bench's own profile unless given) on a
//! simulated device, and the floor server (this binary, re-executed).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A temporary directory on tmpfs (/dev/shm) when there is one, like
/// barkeepd's /run/barkeep in production (the state file lives next to the
/// socket), else in the default temporary directory.
pub fn tempdir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("barkeep-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| format!("cannot make a temporary directory: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What systemd does with barkeepd's notifications, as far as the bench
/// needs: notes when READY=1 arrives, and keeps every fd barkeepd puts in
/// its fd store (FDSTORE=1) by name until FDSTOREREMOVE=1, as systemd does,
/// reading at once so that the daemon's sends never back up.
struct NotifyListener {
    ready: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifyListener {
    fn bind(path: &Path) -> Result<NotifyListener, String> {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path).map_err(|e| format!("notify socket: {e}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| format!("notify socket: {e}"))?;
        let ready = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ready, stop) = (ready.clone(), stop.clone());
            std::thread::Builder::new()
                .name("notify".into())
                .spawn(move || drain(socket, ready, stop))
                .map_err(|e| format!("notify thread: {e}"))?
        };
        Ok(NotifyListener {
            ready,
            stop,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn drain(socket: UnixDatagram, ready: Arc<Mutex<Option<Instant>>>, stop: Arc<AtomicBool>) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 253]);
    let mut store: std::collections::HashMap<String, Vec<OwnedFd>> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) else {
            continue; // the read timeout, to look at `stop`
        };
        let n = msg.bytes;
        let mut got = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: SCM_RIGHTS just gave us this fd; nothing
                        // else owns it.
                        got.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        // Kept by name as systemd keeps them (a stash segment whose
        // receiving end were closed would refuse barkeepd's sends), and
        // closed on FDSTOREREMOVE=1.
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("")
            .to_string();
        if text.lines().any(|l| l == "FDSTORE=1") {
            store.entry(name.clone()).or_default().extend(got);
        }
        if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
            store.remove(&name);
        }
        if text.lines().any(|l| l == "READY=1") {
            lock(&ready).get_or_insert_with(Instant::now);
        }
    }
}

/// The workspace root.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => workspace_root().join(p),
        None => workspace_root().join("target"),
    }
}

/// The `barkeepd` to measure: `explicit`, else `$BARKEEPD`, else built now
/// by cargo with the profile this bench was built with (a no-op when up to
/// date), so the numbers are always of the current source.
pub fn barkeepd_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("BARKEEPD") {
        return Ok(PathBuf::from(p));
    }
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--profile",
            profile,
            "-p",
            "barkeep-daemon",
            "--bin",
            "barkeepd",
        ])
        .current_dir(workspace_root())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {cargo} to build barkeepd: {e}; pass --daemon PATH"))?;
    if !status.success() {
        return Err(format!(
            "cargo build of barkeepd failed ({status}); pass --daemon PATH to use a built one"
        ));
    }
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(target_dir().join(dir).join("barkeepd"))
}

/// A server process under test, killed on drop.
pub struct Server {
    child: Child,
    /// Its listening socket.
    pub socket: PathBuf,
    /// Our stand-in for systemd's notify socket (barkeepd only).
    notify: Option<NotifyListener>,
}

impl Server {
    /// The process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server with SIGTERM (a clean barkeepd shutdown) and waits.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(n) = self.notify.take() {
            n.stop();
        }
    }

    fn check_alive(&mut self, what: &str) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{what} exited early ({status})")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Where barkeepd's log goes: the production level (`info`, audit events
/// included) written to `log` or discarded.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub binary: PathBuf,
    pub log: Option<PathBuf>,
    /// RUST_LOG for the daemon; `None` keeps the production default (info).
    pub rust_log: Option<String>,
}

/// The bench's barkeepd configuration: `devices` simulated devices
/// (`sim0`...) each with one BAR0 of `bar_size` bytes, read-write for our
/// uid, us as admin, and limits high enough for the scale runs.
pub fn config_text(socket: &Path, devices: usize, bar_size: u64, limits: &Limits) -> String {
    let uid = nix::unistd::geteuid().as_raw();
    let mut text = format!("socket = {:?}\n", socket.display().to_string());
    for i in 0..devices {
        text.push_str(&format!(
            "[[device]]\nname = \"sim{i}\"\nsim = {{ bars = [ {{ index = 0, size = \"{bar_size:#x}\" }} ] }}\n[[grant]]\ndevice = \"sim{i}\"\nbar = 0\naccess = \"rw\"\nuids = [{uid}]\n"
        ));
    }
    text.push_str(&format!("[admin]\nuids = [{uid}]\n"));
    text.push_str(&format!(
        "[limits]\nsessions = {s}\nsessions_per_uid = {s}\nleases = {l}\nleases_per_session = {lps}\nleases_per_uid = {l}\nevents_queued = {eq}\n",
        s = limits.sessions,
        l = limits.leases,
        lps = limits.leases_per_session,
        eq = limits.events_queued,
    ));
    text
}

/// `[limits]` of the bench daemon.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub sessions: usize,
    pub leases: usize,
    pub leases_per_session: usize,
    pub events_queued: usize,
}

impl Default for Limits {
    /// The daemon's defaults where they suffice; the load runs need no more.
    fn default() -> Self {
        Limits {
            sessions: 16384,
            leases: 65536,
            leases_per_session: 4096,
            events_queued: 256,
        }
    }
}

/// How the daemon signalled that it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyVia {
    /// `READY=1` on $NOTIFY_SOCKET.
    Notify,
    /// A successful connect and handshake (the daemon sent no READY=1).
    Handshake,
}

impl ReadyVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyVia::Notify => "sd_notify READY=1",
            ReadyVia::Handshake => "first handshake",
        }
    }
}

/// Starts barkeepd on `config` (written to `dir`) and waits until it is
/// ready; returns the server and the time from spawn to READY.
///
/// With `systemd`, it runs as under its unit: $NOTIFY_SOCKET names our
/// stand-in for systemd ([`NotifyListener`]) and $FDSTORE says the fd store
/// holds 512 fds (the unit's FileDescriptorStoreMax=), so barkeepd keeps
/// its state file and every lease's buffer in its stash (whose segments go
/// into the fd store). READY is
/// then `READY=1` when the daemon sends it. Without `systemd` (started by
/// hand), READY is the first connection that completes the handshake.
pub fn start_barkeepd(
    opts: &DaemonOptions,
    dir: &Path,
    config: &str,
    systemd: bool,
) -> Result<(Server, Duration, ReadyVia), String> {
    let socket = config_socket(config).ok_or("the bench config has no socket")?;
    let path = dir.join("barkeep.toml");
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    let notify_path = dir.join("notify.sock");
    let notify = if systemd {
        Some(NotifyListener::bind(&notify_path)?)
    } else {
        None
    };
    let stderr = match &opts.log {
        Some(p) => {
            Stdio::from(std::fs::File::create(p).map_err(|e| format!("log {}: {e}", p.display()))?)
        }
        None => Stdio::null(),
    };
    let mut cmd = Command::new(&opts.binary);
    cmd.arg("--config")
        .arg(&path)
        .arg("--log")
        .arg("stderr")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("FDSTORE")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if systemd {
        cmd.env("NOTIFY_SOCKET", &notify_path).env("FDSTORE", "512");
    }
    match &opts.rust_log {
        Some(l) => cmd.env("RUST_LOG", l),
        None => cmd.env_remove("RUST_LOG"),
    };
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", opts.binary.display()))?;
    let ready = notify.as_ref().map(|n| n.ready.clone());
    let mut server = Server {
        child,
        socket: socket.clone(),
        notify,
    };
    let deadline = t0 + Duration::from_secs(20);
    let mut handshake_at: Option<Duration> = None;
    loop {
        if let Some(at) = ready.as_ref().and_then(|r| *lock(r)) {
            return Ok((server, at.saturating_duration_since(t0), ReadyVia::Notify));
        }
        if handshake_at.is_none() && socket.exists() {
            if let Ok(c) = barkeep_client::Client::connect(&socket) {
                handshake_at = Some(t0.elapsed());
                drop(c);
            }
        }
        if let Some(h) = handshake_at {
            if ready.is_none() || t0.elapsed() > h + Duration::from_millis(500) {
                return Ok((server, h, ReadyVia::Handshake));
            }
        }
        server.check_alive("barkeepd")?;
        if Instant::now() > deadline {
            return Err("barkeepd was not ready within 20 s".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn config_socket(config: &str) -> Option<PathBuf> {
    let line = config.lines().find(|l| l.starts_with("socket = "))?;
    let quoted = line.strip_prefix("socket = ")?;
    Some(PathBuf::from(quoted.trim_matches('"')))
}

/// Starts the floor server (this executable, `floor-server`) on `socket`;
/// with `event_len`, the floor with barkeep's datagrams (`floor4`).
pub fn start_floor(
    socket: &Path,
    reply_len: usize,
    slice_len: u64,
    event_len: Option<usize>,
) -> Result<Server, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("floor-server")
        .arg("--socket")
        .arg(socket)
        .arg("--reply-len")
        .arg(reply_len.to_string())
        .arg("--slice-len")
        .arg(slice_len.to_string());
    if let Some(n) = event_len {
        cmd.arg("--event-len").arg(n.to_string());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the floor server: {e}"))?;
    let mut server = Server {
        child,
        socket: socket.to_path_buf(),
        notify: None,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if socket.exists() && connect_probe(socket) {
            return Ok(server);
        }
        server.check_alive("the floor server")?;
        if Instant::now() > deadline {
            return Err("the floor server did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn connect_probe(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).is_ok()
}
