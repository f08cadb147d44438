//! systemd's side of barkeepd's service contract, played by a test: the
//! notification socket (READY=1, STATUS=, WATCHDOG=1, RELOADING=1,
//! STOPPING=1, FDSTORE=1 with fds, FDSTOREREMOVE=1), the fd store, and
//! socket activation (a listening socket and the stored fds passed as
//! `LISTEN_FDS`/`LISTEN_FDNAMES` with `LISTEN_PID` set to the daemon's own
//! pid). Used by `tests/tests/restart.rs` and, inside the QEMU guest, by
//! `bk-vmcheck`.

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

/// systemd, as far as barkeepd can tell.
pub struct FakeSystemd {
    notify_path: PathBuf,
    notify: OwnedFd,
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
}

impl FakeSystemd {
    /// A notification socket at `dir/notify.sock`, and when `socket` is
    /// given a listening SOCK_SEQPACKET socket there (mode 0666).
    pub fn new(dir: &Path, socket: Option<&Path>) -> FakeSystemd {
        let notify_path = dir.join("notify.sock");
        let notify = socket_of(SockType::Datagram);
        bind(notify.as_raw_fd(), &UnixAddr::new(&notify_path).unwrap()).unwrap();
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
            notify,
            listener,
            store: Vec::new(),
            log: Vec::new(),
            capacity: 4096,
            watchdog_usec: None,
        }
    }

    /// Starts `daemon` with `args` as systemd would: NOTIFY_SOCKET, FDSTORE,
    /// WATCHDOG_USEC/WATCHDOG_PID when set, and LISTEN_FDS/LISTEN_FDNAMES/
    /// LISTEN_PID with the listening socket (`barkeep`) then every stored fd.
    /// stderr goes to `log`.
    pub fn spawn(&self, daemon: &Path, args: &[&str], log: &Path) -> Child {
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
            .env("FDSTORE", self.capacity.to_string())
            .env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        if let Some(usec) = self.watchdog_usec {
            cmd.env("WATCHDOG_USEC", usec.to_string())
                .env("BK_WATCHDOG", "1");
        }
        // SAFETY: dup2 is async-signal-safe; `raw` was built before the
        // fork and is only read here.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn barkeepd");
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
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut pfd = [PollFd::new(self.notify.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut pfd,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.notify.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .ok()?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: SCM_RIGHTS just gave us these fds.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let len = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        let n = Notification {
            text,
            fds: fds.len(),
        };
        if n.get("FDSTORE") == Some("1") {
            let name = n.get("FDNAME").unwrap_or("stored").to_string();
            let no_poll = n.get("FDPOLL") == Some("0");
            for fd in fds {
                self.store.push(Stored {
                    name: name.clone(),
                    fd,
                    no_poll,
                });
            }
        }
        if n.get("FDSTOREREMOVE") == Some("1") {
            if let Some(name) = n.get("FDNAME") {
                self.store.retain(|s| s.name != name);
            }
        }
        self.log.push(n.clone());
        Some(n)
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

fn socket_of(kind: SockType) -> OwnedFd {
    socket(AddressFamily::Unix, kind, SockFlag::SOCK_CLOEXEC, None).unwrap()
}
