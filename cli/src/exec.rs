//! `barkeep exec`: acquire slices, run a command that inherits their fds
//! (described in `$BARKEEP_SLICES`), forward signals to it, and release the
//! leases when it ends.
//!
//! barkeep stays the command's parent for its whole life: it holds the
//! session with the daemon (a lease lives as long as its session), tells the
//! command about revocations through the status page (see
//! `barkeep_client::StatusPage`), and exits with the command's status.

use crate::{exit, Cli, Failure, Outcome};
use barkeep_client::{
    encode_slices_env, Client, ClientCode, ConnectOptions, Error, Event, InheritedSliceInfo,
    RevokeReason, Slice, SliceRequest, StatusPage, CDI_SLICES_ENV, SLICES_ENV,
};
use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};

/// Signals barkeep passes on to the command.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Exit status when COMMAND cannot be found (as sh and env do).
const NOT_FOUND: i32 = 127;
/// Exit status when COMMAND exists but cannot be run.
const CANNOT_RUN: i32 = 126;

#[derive(Args, Debug)]
pub(crate) struct ExecArgs {
    /// A slice to acquire, DEVICE:BAR:OFFSET:LENGTH[:ro|:rw][:uc|:wc|:wc=prefer]
    /// (repeatable) [default: the slices in $BARKEEP_CDI_SLICES]
    #[arg(long = "slice", value_name = "SPEC", value_parser = barkeep_client::parse_slice_spec)]
    pub slices: Vec<SliceRequest>,
    /// Map each slice once before running COMMAND, so a kernel that cannot
    /// mmap these buffers fails here (mmap-unsupported, exit 1) rather than
    /// in the command
    #[arg(long)]
    pub map: bool,
    /// The command to run, and its arguments (after `--`)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// Where the command is in its life, shared with the signal thread.
enum ChildState {
    /// Not spawned yet: the first signal that arrives cancels the run.
    NotStarted(Option<Signal>),
    /// Running (or a zombie not yet reaped: its pid cannot be reused).
    Running(Pid),
    /// Reaped: signals are no longer forwarded.
    Reaped,
}

type Shared = Arc<Mutex<ChildState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, ChildState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Revocations seen while the command ran, in order.
type Revocations = Arc<Mutex<Vec<(barkeep_client::LeaseId, RevokeReason)>>>;

/// Runs `barkeep exec`. Its exit code is the command's status (128 + signal
/// number if a signal killed it), or barkeep's own failure. With `--json`,
/// barkeep's one object (printed after the command's own output) describes
/// the run: `{"command":"..","exit":N,"signal":null|N,"leases":[LEASE..],
/// "revoked":[{"lease":"ID","reason":".."}]}`.
pub(crate) fn run(cli: &Cli, a: &ExecArgs) -> Result<Outcome, Failure> {
    let (requests, from_cdi) = requested(a)?;

    // Block the forwarded signals before any thread exists (the client's
    // reader thread inherits the mask), so only the signal thread takes
    // them. The command gets an empty mask: std resets it in the child.
    let state = forward_signals_to_child()?;

    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(barkeep_client::default_socket_path);
    let program = a.command[0].to_string_lossy().into_owned();
    let client = ConnectOptions::new()
        .name(format!("barkeep exec {program}"))
        .on_reconnect(|step| eprintln!("barkeep exec: {step}"))
        .connect(&socket)
        .map_err(|e| {
            let mut f = Failure::from(e);
            f.exit = exit::UNREACHABLE;
            f
        })?;
    let client = Arc::new(client);

    // Acquire everything first; dropping `slices` on an error releases
    // whatever was granted.
    let slices = acquire_all(&client, &requests, a.map)?;

    let (page, infos) = status_page(&slices)?;
    let page = Arc::new(page);
    let revoked: Revocations = Arc::default();

    // Watch for revocations for the command's lifetime.
    watch(&client, &page, &slices, &revoked)?;

    let mut cmd = std::process::Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    cmd.env(SLICES_ENV, encode_slices_env(&infos));
    if from_cdi {
        // A nested `barkeep exec` must not try to acquire them again.
        cmd.env_remove(CDI_SLICES_ENV);
    }

    let mut child = {
        let mut st = lock(&state);
        if let ChildState::NotStarted(Some(sig)) = *st {
            drop(st);
            release_all(&client, &slices);
            return Err(Failure::new(
                ClientCode::Io,
                format!("{sig} before {program} started; released the leases"),
                128 + sig as i32,
            ));
        }
        match cmd.spawn() {
            Ok(child) => {
                *st = ChildState::Running(Pid::from_raw(child.id() as i32));
                child
            }
            Err(e) => {
                drop(st);
                release_all(&client, &slices);
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    NOT_FOUND
                } else {
                    CANNOT_RUN
                };
                return Err(Failure::new(
                    ClientCode::Io,
                    format!("cannot run {program}: {e}"),
                    code,
                ));
            }
        }
    };

    // Wait without reaping first, so the pid stays ours (a zombie) while
    // the signal thread may still be sending to it.
    let pid = Pid::from_raw(child.id() as i32);
    while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitid(
        nix::sys::wait::Id::Pid(pid),
        nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
    ) {}
    *lock(&state) = ChildState::Reaped;
    let status = child.wait().map_err(|e| {
        Failure::from(Error::Io {
            context: format!("cannot wait for {program}"),
            source: e,
        })
    })?;
    release_all(&client, &slices);
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => exit::FAILED,
    };
    let revoked: Vec<Value> = lock_revoked(&revoked)
        .iter()
        .map(|(lease, reason)| json!({"lease": lease.to_string(), "reason": reason.as_str()}))
        .collect();
    Ok(Outcome {
        json: json!({
            "command": program,
            "exit": status.code(),
            "signal": status.signal(),
            "leases": slices.iter().map(|s| crate::render::lease(s.lease())).collect::<Vec<_>>(),
            "revoked": revoked,
        }),
        // stdout and stderr belong to the command.
        human: String::new(),
        exit: code,
    })
}

/// The status page the command reads revocations from, and what the
/// command inherits of each slice (its fd and its word in the page); every
/// fd made inheritable.
fn status_page(slices: &[Slice]) -> Result<(StatusPage, Vec<InheritedSliceInfo>), Failure> {
    let page = StatusPage::new()?;
    let mut infos = Vec::with_capacity(slices.len());
    for (i, slice) in slices.iter().enumerate() {
        let mut info = InheritedSliceInfo::new(slice.lease(), slice.as_fd())?;
        info.status_fd = Some(page.as_fd().as_raw_fd());
        info.status_offset = Some(StatusPage::offset_of(i));
        infos.push(info);
        inheritable(slice.as_fd())?;
    }
    inheritable(page.as_fd())?;
    Ok((page, infos))
}

/// The slices to acquire: `--slice`s, else the CDI spec's (`from_cdi`).
fn requested(a: &ExecArgs) -> Result<(Vec<SliceRequest>, bool), Failure> {
    let from_cdi = a.slices.is_empty();
    let requests = if from_cdi {
        barkeep_client::cdi_requested_slices()
            .map_err(|e| Failure::new(ClientCode::Usage, e, exit::USAGE))?
    } else {
        a.slices.clone()
    };
    if requests.is_empty() {
        return Err(Failure::new(
            ClientCode::Usage,
            format!(
                "no slice to acquire: give --slice DEVICE:BAR:OFFSET:LENGTH (repeatable), or run \
                 in a container whose CDI spec sets ${CDI_SLICES_ENV}"
            ),
            exit::USAGE,
        ));
    }
    if requests.len() > 1024 {
        return Err(Failure::new(
            ClientCode::Usage,
            "at most 1024 slices per `barkeep exec`",
            exit::USAGE,
        ));
    }
    Ok((requests, from_cdi))
}

/// Blocks the forwarded signals before any thread exists (the client's
/// reader thread inherits the mask), so that only the signal thread, started
/// here, takes them. The command gets an empty mask: std resets it in the
/// child.
fn forward_signals_to_child() -> Result<Shared, Failure> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.thread_block().map_err(|e| {
        Failure::from(Error::Io {
            context: "cannot block signals".into(),
            source: e.into(),
        })
    })?;
    let state: Shared = Arc::new(Mutex::new(ChildState::NotStarted(None)));
    {
        let state = state.clone();
        std::thread::Builder::new()
            .name("barkeep-signals".into())
            .spawn(move || forward_signals(set, &state))
            .map_err(|e| {
                Failure::from(Error::Io {
                    context: "cannot start the signal thread".into(),
                    source: e,
                })
            })?;
    }
    Ok(state)
}

/// Acquires every slice (and maps it once with `map`); on an error, the
/// slices granted so far are dropped, which releases them.
fn acquire_all(
    client: &Client,
    requests: &[SliceRequest],
    map: bool,
) -> Result<Vec<Slice>, Failure> {
    let mut slices: Vec<Slice> = Vec::with_capacity(requests.len());
    for req in requests {
        let slice = client.acquire(req.clone()).map_err(|e| {
            let mut f = Failure::from(e);
            f.message = format!("{}: {}", barkeep_client::format_slice_spec(req), f.message);
            f
        })?;
        if map {
            drop(slice.map().map_err(|e| {
                let mut f = Failure::from(e);
                f.message = format!("--map: lease {}: {}", slice.lease().id, f.message);
                f
            })?);
        }
        slices.push(slice);
    }
    Ok(slices)
}

/// Watches for revocations for the command's lifetime.
fn watch(
    client: &Arc<Client>,
    page: &Arc<StatusPage>,
    slices: &[Slice],
    revoked: &Revocations,
) -> Result<(), Failure> {
    {
        let client = client.clone();
        let page = page.clone();
        let revoked = revoked.clone();
        let ids: Vec<_> = slices.iter().map(|s| s.lease().id).collect();
        std::thread::Builder::new()
            .name("barkeep-events".into())
            .spawn(move || watch_events(&client, &page, &ids, &revoked))
            .map_err(|e| {
                Failure::from(Error::Io {
                    context: "cannot start the event thread".into(),
                    source: e,
                })
            })?;
    }
    Ok(())
}

fn lock_revoked(
    r: &Revocations,
) -> std::sync::MutexGuard<'_, Vec<(barkeep_client::LeaseId, RevokeReason)>> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Clears close-on-exec on one fd so the command inherits it.
fn inheritable(fd: BorrowedFd<'_>) -> Result<(), Failure> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map(drop)
        .map_err(|e| {
            Failure::from(Error::Io {
                context: format!("cannot make fd {} inheritable", fd.as_raw_fd()),
                source: e.into(),
            })
        })
}

/// Releases every still-live lease and waits for the daemon to confirm, so
/// the leases are gone when barkeep exits.
fn release_all(client: &Client, slices: &[Slice]) {
    for s in slices {
        if s.is_revoked() {
            continue;
        }
        if let Err(e) = client.release(s.lease().id) {
            if !matches!(e, Error::Revoked { .. } | Error::Disconnected(_)) {
                eprintln!("barkeep exec: cannot release lease {}: {e}", s.lease().id);
            }
        }
    }
}

/// Takes the forwarded signals (blocked everywhere else) one at a time.
fn forward_signals(set: SigSet, state: &Shared) {
    loop {
        let (sig, from_kernel) = match wait_signal(&set) {
            Some(s) => s,
            None => continue,
        };
        let mut st = lock(state);
        match &mut *st {
            ChildState::NotStarted(pending) => {
                pending.get_or_insert(sig);
            }
            ChildState::Running(pid) => {
                // A terminal's ^C or ^\ reaches the whole foreground process
                // group, the command included: sending it again would
                // deliver it twice.
                if !(from_kernel && same_process_group(*pid)) {
                    let _ = nix::sys::signal::kill(*pid, sig);
                }
            }
            ChildState::Reaped => {}
        }
    }
}

/// Waits for one signal of `set`; returns it and whether the kernel (e.g. a
/// terminal) rather than a process sent it. The CLI's only `unsafe`: nix
/// has no sigwaitinfo that returns the sender.
#[allow(unsafe_code)]
fn wait_signal(set: &SigSet) -> Option<(Signal, bool)> {
    // SAFETY: an all-zero siginfo_t is valid plain data for the kernel to
    // fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let raw: &libc::sigset_t = set.as_ref();
    // SAFETY: `raw` is a valid signal set and `info` a writable siginfo_t,
    // both live for the call.
    let n = unsafe { libc::sigwaitinfo(raw, &mut info) };
    if n < 0 {
        return None; // EINTR
    }
    let sig = Signal::try_from(n).ok()?;
    Some((sig, info.si_code == libc::SI_KERNEL))
}

fn same_process_group(child: Pid) -> bool {
    matches!(nix::unistd::getpgid(Some(child)), Ok(g) if g == nix::unistd::getpgrp())
}

/// Records revocations in the status page (and says so on stderr) until
/// the session ends.
fn watch_events(
    client: &Client,
    page: &StatusPage,
    ids: &[barkeep_client::LeaseId],
    revoked: &Revocations,
) {
    loop {
        match client.next_event(None) {
            Ok(Some(Event::Revoked { lease, reason })) => {
                if let Some(i) = ids.iter().position(|l| *l == lease) {
                    let _ = page.set(i, reason);
                    if reason != RevokeReason::Released {
                        lock_revoked(revoked).push((lease, reason));
                    }
                    if reason != RevokeReason::Released {
                        eprintln!(
                            "barkeep exec: lease {lease} was revoked ({reason}); the command's \
                             accesses to it now fail or fault"
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                for (i, lease) in ids.iter().enumerate() {
                    let _ = page.set(i, RevokeReason::Disconnected);
                    lock_revoked(revoked).push((*lease, RevokeReason::Disconnected));
                }
                eprintln!("barkeep exec: {e}; the daemon ended every lease of this session");
                return;
            }
        }
    }
}
