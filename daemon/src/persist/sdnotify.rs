//! systemd's side channel, as sd_notify(3) and sd_listen_fds(3) define it:
//! notification datagrams to `$NOTIFY_SOCKET` (READY=1, STATUS=,
//! WATCHDOG=1, RELOADING=1, STOPPING=1, FDSTORE=1 with fds), the watchdog
//! interval, and the sockets and stored fds passed in as `$LISTEN_FDS`.
//!
//! Written by hand (a datagram and an environment convention) rather than
//! with a crate, so that the fd store's `SCM_RIGHTS` and the abstract
//! socket addresses are in plain sight.

use nix::sys::socket::{socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

/// First fd systemd passes (sd_listen_fds(3): SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;

/// Fds per notification datagram: the kernel's SCM_MAX_FD is 253.
pub const MAX_FDS_PER_MESSAGE: usize = crate::sys::SCM_MAX_FD;

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: OwnedFd,
    addr: UnixAddr,
    path: String,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names (a path, or `@name` for an
    /// abstract socket); `None` when it is unset (not started by systemd
    /// with `Type=notify`).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty())?;
        match Notifier::new(&path) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={path} is unusable ({e}); systemd will not hear from barkeepd"
                );
                None
            }
        }
    }

    /// A notifier for the socket at `path` (`@name`: abstract).
    pub fn new(path: &str) -> std::io::Result<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => UnixAddr::new_abstract(name.as_bytes())?,
            None => UnixAddr::new(path)?,
        };
        let socket = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        Ok(Notifier {
            socket,
            addr,
            path: path.to_string(),
        })
    }

    /// The socket's path as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Sends one notification (newline-separated `KEY=VALUE` lines).
    pub fn notify(&self, text: &str) -> std::io::Result<()> {
        self.notify_with_fds(text, &[])
    }

    /// Sends one notification with fds attached (at most
    /// [`MAX_FDS_PER_MESSAGE`]), as `FDSTORE=1` needs.
    pub fn notify_with_fds(&self, text: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(std::io::Error::other(format!(
                "{} fds in one notification, the kernel passes at most {MAX_FDS_PER_MESSAGE}",
                fds.len()
            )));
        }
        crate::sys::send_with_fds(
            self.socket.as_fd(),
            text.as_bytes(),
            fds,
            MsgFlags::MSG_NOSIGNAL,
            Some(&self.addr),
        )
        .map(drop)
        .map_err(Into::into)
    }
}

/// Replaces characters that would end a STATUS= line.
pub fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `MONOTONIC_USEC=` for RELOADING=1: CLOCK_MONOTONIC in microseconds.
pub fn monotonic_usec() -> u64 {
    crate::sys::monotonic_usec()
}

/// How often to send WATCHDOG=1: half of `$WATCHDOG_USEC`, when it is set
/// for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Capacity of systemd's fd store for this service: `$FDSTORE` (systemd >=
/// 254 sets it to FileDescriptorStoreMax=), else `None` (unknown).
pub fn fd_store_capacity() -> Option<usize> {
    std::env::var("FDSTORE").ok()?.parse().ok()
}

/// The fds systemd passed: `(name, fd)` for each of `$LISTEN_FDS` when
/// `$LISTEN_PID` is this process, named by `$LISTEN_FDNAMES` ("unknown"
/// where it gives no name). Takes ownership of fds 3.. (marking them
/// close-on-exec) and unsets the variables so that children do not see
/// them. Empty when the variables are absent or meant for another process.
/// Call before starting threads (it changes the environment).
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // barkeepd calls this before it starts any thread.
        std::env::remove_var(v);
    }
    let (Some(pid), Some(count)) = (pid, count) else {
        return Vec::new();
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        tracing::warn!("LISTEN_PID={pid} is not this process; ignoring LISTEN_FDS={count}");
        return Vec::new();
    }
    let Ok(count) = count.trim().parse::<usize>() else {
        tracing::warn!("LISTEN_FDS={count} is not a number; ignoring it");
        return Vec::new();
    };
    let names: Vec<String> = names
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let raw = LISTEN_FDS_START + i as RawFd;
        let Some(fd) = crate::sys::adopt_inherited_fd(raw) else {
            tracing::warn!("LISTEN_FDS promised fd {raw}, which is not open");
            continue;
        };
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let name = names
            .get(i)
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string());
        out.push((name, fd));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::bind;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn notifications_carry_text_and_fds_to_an_abstract_socket() {
        let name = format!("barkeep-test-notify-{}", std::process::id());
        let server = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            server.as_raw_fd(),
            &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
        )
        .unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        let memfd = crate::sys::memfd("x", 4096).unwrap();
        n.notify_with_fds("FDSTORE=1\nFDNAME=lease-1\nFDPOLL=0", &[memfd.as_fd()])
            .unwrap();
        let mut buf = [0u8; 256];
        let got = crate::sys::recv_with_fds(server.as_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(&buf[..got.len], b"FDSTORE=1\nFDNAME=lease-1\nFDPOLL=0");
        assert_eq!(got.fds.len(), 1);
        let got = &got.fds[0];
        assert_eq!(crate::sys::file_size(got.as_fd()).unwrap(), 4096);
    }

    #[test]
    fn status_lines_stay_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }
}
