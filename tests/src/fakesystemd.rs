//! systemd's side of barkeepd's service contract, played by a test: the
//! notification socket (READY=1, STATUS=, WATCHDOG=1, RELOADING=1,
//! STOPPING=1, FDSTORE=1 with fds, FDSTOREREMOVE=1), the fd store, and
//! socket activation (a listening socket and the stored fds passed as
//! `LISTEN_FDS`/`LISTEN_FDNAMES` with `LISTEN_PID` set to the daemon's own
//! pid). Used by `tests/tests/restart.rs` and, inside the QEMU guest, by
//! `bk-vmcheck`.
//!
//! It keeps the constraints of the real one that matter to barkeepd:
//! - the stored fds are passed as `LISTEN_FDS` 3..3+n, which must fit the
//!   daemon's soft RLIMIT_NOFILE at exec (`nofile`, systemd's default
//!   1024:524288): beyond it the start fails, as systemd's does with
//!   status=202/FDS, and nothing runs;
//! - FileDescriptorStoreMax= (`capacity`): fds beyond it are closed, not
//!   stored;
//! - an fd stored without FDPOLL=0 is dropped once it polls POLLHUP or
//!   POLLERR.

use nix::sys::socket::{
    bind, recvmsg, socket, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One notification as received.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The datagram's text (`KEY=VALUE` lines).
    pub text: String,
    /// Number of fds that came with it.
    pub fds: usize,
}

impl Notification {
    /// The value of `key`, if the notification has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// A stored fd and how it was stored.
#[derive(Debug)]
pub struct Stored {
    /// FDNAME=.
    pub name: String,
    /// The fd (systemd's own reference).
    pub fd: OwnedFd,
    /// FDPOLL=0 was given (systemd would otherwise drop fds that poll
    /// POLLHUP/POLLERR).
    pub no_poll: bool,
}

/// A datagram as the reader thread got it.
type Datagram = (String, Vec<OwnedFd>);

/// systemd, as far as barkeepd can tell.
pub struct FakeSystemd {
    notify_path: PathBuf,
    /// Datagrams from the reader thread, which drains the notification
    /// socket at once as PID 1 does (the kernel queues only
    /// net.unix.max_dgram_qlen, 10 by default, before a sender blocks).
    inbox: std::sync::mpsc::Receiver<Datagram>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The listening socket (as barkeepd.socket would make it).
    pub listener: Option<OwnedFd>,
    /// The fd store.
    pub store: Vec<Stored>,
    /// Every notification, in order.
    pub log: Vec<Notification>,
    /// `$FDSTORE` given to the daemon (FileDescriptorStoreMax=).
    pub capacity: usize,
    /// `$WATCHDOG_USEC` given to the daemon, if any.
    pub watchdog_usec: Option<u64>,
    /// The daemon's RLIMIT_NOFILE (soft, hard) at exec (LimitNOFILE=);
    /// the hard one is lowered to this process's own when above it.
    pub nofile: (u64, u64),
    /// Whether `$FDSTORE` is passed (systemd >= 254 does; 252 does not).
    pub pass_fdstore: bool,
    /// FDSTORE=1 messages received, and fds refused for lack of room.
    pub store_messages: usize,
    /// Fds closed because the store was full.
    pub refused: usize,
}

impl FakeSystemd {
    /// A notification socket at `dir/notify.sock`, and when `socket` is
    /// given a listening SOCK_SEQPACKET socket there (mode 0666).
    pub fn new(dir: &Path, socket: Option<&Path>) -> FakeSystemd {
        let notify_path = dir.join("notify.sock");
        let notify = socket_of(SockType::Datagram);
        bind(notify.as_raw_fd(), &UnixAddr::new(&notify_path).unwrap()).unwrap();
        let (tx, inbox) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || read_notifications(notify, tx, stopped));
        let listener = socket.map(|p| {
            let l = socket_of(SockType::SeqPacket);
            bind(l.as_raw_fd(), &UnixAddr::new(p).unwrap()).unwrap();
            nix::sys::socket::listen(&l, nix::sys::socket::Backlog::new(128).unwrap()).unwrap();
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .unwrap();
            l
        });
        FakeSystemd {
            notify_path,
            inbox,
            stop,
            listener,
            store: Vec::new(),
            log: Vec::new(),
            capacity: 4096,
            watchdog_usec: None,
            nofile: (1024, 524288),
            pass_fdstore: true,
            store_messages: 0,
            refused: 0,
        }
    }

    /// Starts `daemon` with `args` as systemd would: NOTIFY_SOCKET, FDSTORE,
    /// WATCHDOG_USEC/WATCHDOG_PID when set, and LISTEN_FDS/LISTEN_FDNAMES/
    /// LISTEN_PID with the listening socket (`barkeep`) then every stored fd.
    /// stderr goes to `log`.
    pub fn spawn(&self, daemon: &Path, args: &[&str], log: &Path) -> Child {
        self.try_spawn(daemon, args, log)
            .expect("spawn barkeepd (status=202/FDS: LISTEN_FDS beyond the soft RLIMIT_NOFILE?)")
    }

    /// Like [`FakeSystemd::spawn`], but a start that fails (as systemd's
    /// does with status=202/FDS when `LISTEN_FDS` do not fit the soft
    /// RLIMIT_NOFILE) is returned as an error.
    pub fn try_spawn(&self, daemon: &Path, args: &[&str], log: &Path) -> std::io::Result<Child> {
        let mut fds: Vec<(&str, RawFd)> = Vec::new();
        if let Some(l) = &self.listener {
            fds.push(("barkeep", l.as_raw_fd()));
        }
        for s in &self.store {
            fds.push((s.name.as_str(), s.fd.as_raw_fd()));
        }
        // Moved above the target range first, so that dup2 to 3.. never
        // overwrites a source.
        let high: Vec<OwnedFd> = fds
            .iter()
            .map(|(_, fd)| {
                // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd
                // (or -1); nothing else is touched.
                let n = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 1000) };
                assert!(n >= 0, "dup: {}", std::io::Error::last_os_error());
                // SAFETY: `n` is the new fd just made, owned by nobody else.
                unsafe { OwnedFd::from_raw_fd(n) }
            })
            .collect();
        let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
        let names: Vec<&str> = fds.iter().map(|(n, _)| *n).collect();
        // LISTEN_PID must be the daemon's own pid: the shell's $$, which
        // `exec` keeps.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$; export LISTEN_PID; [ -n \"$BK_WATCHDOG\" ] && { WATCHDOG_PID=$$; export WATCHDOG_PID; }; exec \"$0\" \"$@\"")
            .arg(daemon)
            .args(args)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        if self.pass_fdstore {
            cmd.env("FDSTORE", self.capacity.to_string());
        } else {
            cmd.env_remove("FDSTORE");
        }
        let mut hard_now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the rlimit we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard_now) };
        let limit = libc::rlimit {
            rlim_cur: self.nofile.0.min(hard_now.rlim_max),
            rlim_max: self.nofile.1.min(hard_now.rlim_max),
        };
        if let Some(usec) = self.watchdog_usec {
            cmd.env("WATCHDOG_USEC", usec.to_string())
                .env("BK_WATCHDOG", "1");
        }
        // SAFETY: dup2 is async-signal-safe; `raw` was built before the
        // fork and is only read here.
        unsafe {
            cmd.pre_exec(move || {
                // As systemd: the limits first, then the fds; an fd past
                // the soft limit fails the start (EBADF from dup2).
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn();
        drop(high);
        child
    }

    /// Receives notifications for up to `timeout`, until `stop` says one is
    /// what the caller waits for (returned). Applies FDSTORE and
    /// FDSTOREREMOVE to the store as it goes.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&Notification) -> bool,
    ) -> Option<Notification> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = self.receive(left)?;
            if stop(&n) {
                return Some(n);
            }
        }
    }

    /// Handles every notification that arrives within `time`.
    pub fn pump(&mut self, time: Duration) {
        let _ = self.wait_for(time, |_| false);
    }

    /// Waits for a notification that has `key=value` (a line).
    pub fn wait_line(&mut self, timeout: Duration, line: &str) -> Option<Notification> {
        self.wait_for(timeout, |n| n.text.lines().any(|l| l == line))
    }

    /// One notification, applied to the store; `None` on timeout.
    fn receive(&mut self, timeout: Duration) -> Option<Notification> {
        let (text, fds) = self.inbox.recv_timeout(timeout).ok()?;
        let n = Notification {
            text,
            fds: fds.len(),
        };
        if n.get("FDSTORE") == Some("1") {
            self.store_messages += 1;
            let name = n.get("FDNAME").unwrap_or("stored").to_string();
            let no_poll = n.get("FDPOLL") == Some("0");
            for fd in fds {
                if self.store.len() >= self.capacity {
                    // systemd: "Cannot store more fds than
                    // FileDescriptorStoreMax=..., closing."
                    self.refused += 1;
                    continue;
                }
                self.store.push(Stored {
                    name: name.clone(),
                    fd,
                    no_poll,
                });
            }
        }
        self.drop_hung_up();
        if n.get("FDSTOREREMOVE") == Some("1") {
            if let Some(name) = n.get("FDNAME") {
                self.store.retain(|s| s.name != name);
            }
        }
        self.log.push(n.clone());
        Some(n)
    }

    /// Drops stored fds that poll POLLHUP or POLLERR, unless stored with
    /// FDPOLL=0 (systemd watches them and drops them so).
    fn drop_hung_up(&mut self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let polled: Vec<usize> = (0..self.store.len())
            .filter(|&i| !self.store[i].no_poll)
            .collect();
        if polled.is_empty() {
            return;
        }
        let mut pfds: Vec<PollFd<'_>> = polled
            .iter()
            .map(|&i| PollFd::new(self.store[i].fd.as_fd(), PollFlags::empty()))
            .collect();
        if poll(&mut pfds, PollTimeout::ZERO).unwrap_or(0) <= 0 {
            return;
        }
        let hung: Vec<usize> = polled
            .iter()
            .zip(&pfds)
            .filter(|(_, p)| {
                p.revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
            })
            .map(|(&i, _)| i)
            .collect();
        drop(pfds);
        for i in hung.into_iter().rev() {
            self.store.remove(i);
        }
    }

    /// Names in the store, sorted.
    pub fn stored_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.store.iter().map(|s| s.name.clone()).collect();
        v.sort();
        v
    }

    /// The last STATUS= line seen.
    pub fn last_status(&self) -> Option<String> {
        self.log
            .iter()
            .rev()
            .find_map(|n| n.get("STATUS").map(str::to_string))
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Drains the notification socket into `tx` until `stop` is set.
fn read_notifications(
    notify: OwnedFd,
    tx: std::sync::mpsc::Sender<Datagram>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 4096];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut pfd = [PollFd::new(notify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, PollTimeout::from(100u16)) {
            Ok(0) | Err(_) => continue,
            Ok(_) => {}
        }
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<()>(
            notify.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) else {
            continue;
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(v) = c {
                    // SAFETY: SCM_RIGHTS just gave us these fds.
                    fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        let len = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if tx.send((text, fds)).is_err() {
            return;
        }
    }
}

fn socket_of(kind: SockType) -> OwnedFd {
    socket(AddressFamily::Unix, kind, SockFlag::SOCK_CLOEXEC, None).unwrap()
}
