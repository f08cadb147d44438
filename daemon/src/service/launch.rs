//! barkeepd as a service that restarts without breaking mappings: starting
//! from the fds a predecessor left (systemd's `LISTEN_FDS` with the fd
//! store's fds, or a takeover), restoring devices and leases from them and
//! the state file, and telling systemd how it goes (READY=1, STATUS=,
//! WATCHDOG=1, RELOADING=1, STOPPING=1).
//!
//! What survives a restart: a device restored from its stored fds keeps
//! every buffer alive, so clients' mappings never stop working; each lease
//! recorded in the state file whose buffer came back waits
//! (`AwaitingReclaim`) for its holder to reclaim it with its token, and is
//! revoked (reason `Unclaimed`) after `reclaim_grace`. A lease recorded
//! without its buffer lingers (its range stays busy until a device-wide
//! revoke), because a client may still map it. A device that had to be
//! opened anew has no live buffers, so its old leases are dropped.

use crate::backend::{self, Buffer, Device, ExportRequest};
use crate::broker::Broker;
use crate::config::{Config, ConfigSource, DeviceKind};
use crate::persist::journal::{self, FdStore, Journal, LISTENER_FD_NAME};
use crate::persist::sdnotify::{self, Notifier};
use crate::persist::state::{Snapshot, StateFile};
use crate::server::{self, Exit};
use crate::service::inherited::{listener_from, Inherited};
use barkeep_protocol::{LeaseId, LeaseState, Range};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_seqpacket::UnixSeqpacketListener;

/// How often STATUS= is refreshed at most (it is sent only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// A daemon ready to serve.
pub struct Started {
    /// Where clients connect.
    pub listener: UnixSeqpacketListener,
    /// Devices, policy and leases.
    pub broker: Arc<Broker>,
    /// Leases waiting for their holders to reclaim them.
    pub awaiting: usize,
    /// Whether the socket file is this daemon's to remove at exit (bound
    /// here, or taken over; not when systemd passed it).
    pub bound: bool,
}

/// Opens (or restores) the devices, restores the leases, and gets the
/// listening socket (inherited, or bound at `config.socket`). `store` is
/// systemd's fd store when running under one.
pub fn start(
    config: Config,
    source: Option<ConfigSource>,
    mut inherited: Inherited,
    store: Option<FdStore>,
) -> Result<Started, String> {
    let snapshot = inherited.snapshot.take();
    let devices = open_devices(&config, &mut inherited, snapshot.as_ref(), store.as_ref());

    let (listener, bound) = listener(&config, &mut inherited, store.as_ref())?;

    // The state file is only for a restart under the fd store (a takeover
    // gets the state over its socket): without the store, nothing is
    // written on the request path, and a file left by an earlier run goes.
    let state_file = StateFile::new(config.state_path());
    let state_file = match &store {
        Some(_) => Some(state_file),
        None => {
            state_file.remove();
            None
        }
    };
    let journal = Arc::new(Journal::new(state_file, store));
    let mut broker = Broker::new(config, devices).with_journal(journal.clone());
    if let Some(source) = source {
        broker = broker.with_source(source);
    }
    let broker = Arc::new(broker);
    crate::service::in_process::log_devices(&broker);

    // Device fds into the store: restored ones are there already.
    let from_store = inherited.from_store;
    for (i, info) in broker.devices().iter().enumerate() {
        let Some(dev) = broker.device(i) else {
            continue;
        };
        match (journal.fd_store(), dev.restored() && from_store) {
            (Some(s), true) => {
                for (kind, _) in dev.kernel_fds() {
                    s.note_stored(&journal::device_fd_name(&info.name, &kind));
                }
            }
            (Some(_), false) => journal.device_fds_changed(&info.name, dev),
            (None, _) => {}
        }
    }

    // Buffers stored one by one (`lease-ID`, before the stash) move into
    // the stash; their names leave the store once restored.
    let legacy: Vec<LeaseId> = if from_store {
        inherited.leases.keys().copied().collect()
    } else {
        Vec::new()
    };
    let stashed = !inherited.segments.is_empty();
    take_stash(
        &journal,
        snapshot.as_ref(),
        std::mem::take(&mut inherited.segments),
        &mut inherited.leases,
    )?;
    let wiped = revoke_unrecorded(&broker, snapshot.as_ref(), &mut inherited.leases, &journal);
    let entries = restore_entries(
        &broker,
        snapshot.as_ref(),
        &mut inherited.leases,
        &journal,
        &wiped,
        stashed,
    );
    // Buffers of devices that were opened anew or wiped are dead; those of
    // devices no longer configured die with their device fds.
    drop(std::mem::take(&mut inherited.leases));
    let live: std::collections::BTreeSet<LeaseId> = entries
        .iter()
        .filter(|e| e.payload.is_some())
        .map(|e| e.lease.id)
        .collect();
    journal.retain_stash(&live);
    if let Some(s) = journal.fd_store() {
        for id in &legacy {
            s.remove(&journal::lease_fd_name(id));
        }
    }
    let next_session = snapshot.as_ref().map_or(1, |s| s.next_session);
    let awaiting = broker.restore(next_session, entries);
    // Measured now: devices, sockets and restored buffers are open.
    broker.set_fd_budget(crate::fdbudget::measure());
    if awaiting > 0 {
        tracing::info!(
            leases = awaiting,
            grace = ?broker.config().reclaim_grace,
            "leases restored; their holders may reclaim them"
        );
    }
    Ok(Started {
        listener,
        broker,
        awaiting,
        bound,
    })
}

/// Takes the buffers out of a predecessor's stash segments (each stashed
/// again first, see [`crate::persist::stash`]) into `leases`. With a state file,
/// a stashed buffer it does not describe belongs to a lease that ended
/// (released or revoked: the buffer is dead, its entry was only marked
/// dead), and is closed; without one, every buffer is kept for
/// [`revoke_unrecorded`].
fn take_stash(
    journal: &Journal,
    snapshot: Option<&Snapshot>,
    segments: Vec<(u64, OwnedFd)>,
    leases: &mut BTreeMap<LeaseId, OwnedFd>,
) -> Result<(), String> {
    if segments.is_empty() {
        return Ok(());
    }
    let recorded: Option<std::collections::BTreeSet<LeaseId>> =
        snapshot.map(|s| s.leases.iter().filter_map(|r| r.lease_id().ok()).collect());
    let known = |id: &LeaseId| recorded.as_ref().is_none_or(|r| r.contains(id));
    let found = journal.restore_stash(segments, known)?;
    let (mut taken, mut ended) = (0usize, 0usize);
    for (id, fd) in found {
        if !known(&id) {
            ended += 1;
            continue;
        }
        if leases.contains_key(&id) {
            continue;
        }
        let fd = fd.try_clone().map_err(|e| {
            format!("cannot take a stashed buffer ({e}); raise LimitNOFILE= in barkeepd.service")
        })?;
        leases.insert(id, fd);
        taken += 1;
    }
    tracing::info!(buffers = taken, ended, "took the stashed buffers back");
    Ok(())
}

/// Each configured device, restored from the fds it left (its buffers
/// live on) or opened anew; the fds of devices no longer configured, and
/// of unknown names, are closed and leave the store.
fn open_devices(
    config: &Config,
    inherited: &mut Inherited,
    snapshot: Option<&Snapshot>,
    store: Option<&FdStore>,
) -> Vec<Box<dyn Device>> {
    let mut devices: Vec<Box<dyn Device>> = Vec::new();
    for d in &config.devices {
        let fds = inherited.devices.remove(&d.name);
        let dev: Box<dyn Device> = match (&d.kind, fds) {
            (DeviceKind::Sim(sim), Some(fds)) => {
                let bars = fds
                    .into_iter()
                    .filter_map(|(kind, fd)| Some((kind.strip_prefix("bar")?.parse().ok()?, fd)))
                    .collect();
                Box::new(backend::sim::SimDevice::restore(&d.name, sim, bars))
            }
            (DeviceKind::Pci(opts), Some(fds)) => {
                let data = snapshot
                    .and_then(|s| s.device(&d.name))
                    .and_then(|r| r.data.as_deref());
                backend::vfio::restore(&d.name, opts, fds, data)
            }
            (DeviceKind::Sim(sim), None) => Box::new(backend::sim::SimDevice::new(&d.name, sim)),
            (DeviceKind::Pci(opts), None) => backend::vfio::open(&d.name, opts),
        };
        if dev.restored() {
            tracing::info!(device = %d.name, "restored from the previous daemon's fds: its buffers live on");
        }
        devices.push(dev);
    }
    for (name, kinds) in std::mem::take(&mut inherited.devices) {
        tracing::warn!(device = %name, "inherited fds of a device that is no longer configured: closing them (its buffers die)");
        if let Some(s) = store {
            for kind in kinds.keys() {
                s.remove(&journal::device_fd_name(&name, kind));
            }
        }
    }
    if let Some(s) = store {
        for name in &inherited.unknown {
            s.remove(name);
        }
    }
    devices
}

/// The listening socket: inherited, or bound at `config.socket` (and put in
/// the store); and whether its file is this daemon's to remove at exit.
fn listener(
    config: &Config,
    inherited: &mut Inherited,
    store: Option<&FdStore>,
) -> Result<(UnixSeqpacketListener, bool), String> {
    // Ours to remove at exit when bound here or taken over from a
    // predecessor; systemd's (socket unit or store) never.
    let bound = inherited.listener.is_none() || !inherited.from_store;
    let listener = match inherited.listener.take() {
        Some(fd) => listener_from(fd)?,
        None => {
            let l = server::bind(&config.socket, config.socket_mode)?;
            if let Some(s) = store {
                // So that the socket (and its backlog) outlives a restart.
                s.add(LISTENER_FD_NAME, l.as_fd());
            }
            l
        }
    };
    Ok((listener, bound))
}

/// Revokes inherited buffers that no record describes (the state file was
/// lost or could not be written): they may be mapped by clients nobody
/// knows, so they must not stay alive. Each goes to the restored device
/// that can revoke it; when one cannot be revoked alone, every restored
/// device is revoked as a whole (returned: their leases are not restored).
fn revoke_unrecorded(
    broker: &Broker,
    snapshot: Option<&Snapshot>,
    fds: &mut BTreeMap<LeaseId, OwnedFd>,
    journal: &Journal,
) -> Vec<String> {
    let recorded: std::collections::BTreeSet<LeaseId> = snapshot
        .map(|s| s.leases.iter().filter_map(|r| r.lease_id().ok()).collect())
        .unwrap_or_default();
    let unknown: Vec<LeaseId> = fds
        .keys()
        .filter(|id| !recorded.contains(id))
        .copied()
        .collect();
    let restored: Vec<usize> = (0..broker.devices().len())
        .filter(|&i| broker.device(i).is_some_and(|d| d.restored()))
        .collect();
    let mut stuck = false;
    for id in unknown {
        let Some(fd) = fds.remove(&id) else { continue };
        let dead = restored.iter().any(|&i| {
            broker.device(i).is_some_and(|d| {
                matches!(
                    d.revoke_unknown(fd.as_fd()),
                    Ok(backend::RevokeOutcome::Dead)
                )
            })
        });
        if dead {
            tracing::warn!(lease = %id, "an inherited buffer no record describes was revoked");
        } else {
            tracing::error!(lease = %id, "an inherited buffer no record describes cannot be revoked alone");
            stuck = true;
        }
        if let Some(s) = journal.fd_store() {
            s.remove(&journal::lease_fd_name(&id));
        }
    }
    if !stuck {
        return Vec::new();
    }
    let mut wiped = Vec::new();
    for i in restored {
        let (Some(dev), Some(info)) = (broker.device(i), broker.devices().get(i)) else {
            continue;
        };
        match dev.revoke_all() {
            Ok(()) => {
                tracing::warn!(device = %info.name, "revoked every buffer of the device: the state file did not describe them all, so its leases are not restored");
                journal.device_fds_changed(&info.name, dev);
                wiped.push(info.name.clone());
            }
            Err(e) => tracing::error!(device = %info.name, "device-wide revoke failed: {e}"),
        }
    }
    wiped
}

/// Lease table entries for the snapshot's leases on restored devices, with
/// their buffers taken back by the backends. With `stashed` (the buffers
/// came from stash segments), a lease recorded live whose buffer is in no
/// segment had ended: every live buffer is in a stored segment at every
/// instant, and only the state file's line of its end was still to be
/// written. It is dropped rather than kept lingering.
fn restore_entries(
    broker: &Broker,
    snapshot: Option<&Snapshot>,
    fds: &mut BTreeMap<LeaseId, OwnedFd>,
    journal: &Journal,
    wiped: &[String],
    stashed: bool,
) -> Vec<crate::leases::Entry<Buffer>> {
    let Some(snapshot) = snapshot else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for rec in &snapshot.leases {
        let Ok(id) = rec.lease_id() else {
            tracing::warn!(lease = %rec.id, "a state file record with a malformed id: skipped");
            continue;
        };
        let Some(i) = broker.devices().iter().position(|d| d.name == rec.device) else {
            tracing::info!(lease = %id, device = %rec.device, "the lease's device is no longer configured: dropped");
            continue;
        };
        let dev = broker.device(i).expect("index from devices()");
        if !dev.restored() || wiped.contains(&rec.device) {
            // Opened anew: every buffer of the previous daemon is dead.
            continue;
        }
        let buffer = match (rec.state, fds.remove(&id)) {
            (LeaseState::Lingering, fd) => {
                drop(fd);
                None
            }
            (_, None) if stashed => {
                tracing::debug!(lease = %id, "recorded live but in no stash segment: it ended before the restart");
                continue;
            }
            (_, None) => None,
            // A revoked simulated buffer (truncated): its lease ended and
            // only the line saying so was still to be written.
            (_, Some(fd)) if stashed && crate::sys::file_size(fd.as_fd()) == Ok(0) => {
                tracing::debug!(lease = %id, "its stashed buffer is revoked: it ended before the restart");
                continue;
            }
            (_, Some(fd)) => {
                let req = ExportRequest {
                    bar: rec.bar,
                    range: Range::new(rec.offset, rec.length),
                    access: rec.access,
                    memattr: rec.memattr,
                    name: rec.buffer_name.clone(),
                };
                match dev.adopt(&req, fd) {
                    Ok(b) => {
                        // Into the stash unless it came from there.
                        journal.lease_restored(&id, &b.fd);
                        Some(b)
                    }
                    Err(e) => {
                        tracing::error!(lease = %id, "cannot take its buffer back: {e}");
                        None
                    }
                }
            }
        };
        match rec.entry(buffer) {
            Ok(e) => out.push(e),
            Err(e) => {
                tracing::warn!(lease = %id, "a state file record is malformed ({e}): skipped")
            }
        }
    }
    out
}

/// How barkeepd starts: the fds systemd passed, and whether to take over
/// from a running daemon.
#[derive(Debug, Default)]
pub struct Launch {
    /// `LISTEN_FDS` as [`sdnotify::take_listen_fds`] returned them.
    pub listen_fds: Vec<(String, OwnedFd)>,
    /// `--takeover PATH`: the running daemon's takeover socket.
    pub takeover_from: Option<PathBuf>,
    /// `--takeover-listen PATH` (overrides `takeover_socket`).
    pub takeover_listen: Option<PathBuf>,
}

/// Runs barkeepd as a service until `shutdown` resolves: restores what a
/// predecessor left, serves, keeps systemd informed, and on shutdown either
/// revokes every lease or (under the fd store, or after a takeover) leaves
/// them for the next daemon.
pub async fn run(
    source: ConfigSource,
    config: Config,
    launch: Launch,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let notifier = Notifier::from_env().map(Arc::new);
    let capacity = sdnotify::fd_store_capacity();
    let store = match &notifier {
        Some(n) if config.fd_store.wanted(true, capacity) => {
            if capacity == Some(0) {
                tracing::error!("fd_store = \"yes\" but systemd says FileDescriptorStoreMax=0: every lease will be refused; raise it in barkeepd.service");
            }
            Some(FdStore::new(
                Notifier::new(n.path()).map_err(|e| format!("NOTIFY_SOCKET: {e}"))?,
                capacity,
            ))
        }
        Some(_) => {
            tracing::info!(
                fd_store = ?config.fd_store,
                fdstore_env = ?capacity,
                "not using systemd's fd store: a restart revokes every lease"
            );
            None
        }
        None => None,
    };
    let (inherited, takeover_conn) =
        inherit(launch.takeover_from.as_deref(), launch.listen_fds, &config).await?;
    let uses_store = store.is_some();
    let started = start(config, Some(source), inherited, store);
    let Started {
        listener,
        broker,
        awaiting,
        bound,
    } = match (started, takeover_conn) {
        (Ok(s), Some(conn)) => {
            crate::service::takeover::finish(conn).await;
            s
        }
        (Ok(s), None) => s,
        (Err(e), Some(conn)) => {
            crate::service::takeover::abort(conn, e.clone()).await;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let config = broker.config();
    tracing::info!(socket = %config.socket.display(), inherited = !bound, "listening");
    // systemd's socket is never unlinked: an empty path makes the removal
    // at exit a no-op.
    let path = if bound {
        config.socket.clone()
    } else {
        PathBuf::new()
    };
    let _metrics = crate::server::metrics::listen(&broker)?;

    let (handed_tx, handed_rx) = tokio::sync::oneshot::channel::<()>();
    let takeover_path = launch.takeover_listen.or(config.takeover_socket.clone());
    let tasks = spawn_tasks(
        &broker,
        &listener,
        notifier.as_ref(),
        awaiting,
        takeover_path,
        handed_tx,
    )?;

    let exit = server::serve_until(listener, path, broker.clone(), async {
        tokio::select! {
            _ = shutdown => {
                if let Some(n) = &notifier {
                    let _ = n.notify("STOPPING=1");
                }
                if uses_store {
                    Exit::HandOver
                } else {
                    Exit::Revoke
                }
            }
            Ok(()) = handed_rx => Exit::HandOver,
        }
    })
    .await;
    for t in tasks {
        t.abort();
    }
    if exit == Exit::HandOver {
        tracing::info!(
            "left every lease for the next barkeepd (systemd's fd store keeps the buffers on a restart; a stop closes it, which revokes them)"
        );
    }
    Ok(())
}

/// What the daemon starts from: a running daemon's fds and state over
/// `takeover_from` (with the connection to finish or abort the takeover),
/// else the fds systemd passed (`listen_fds`) and the state file.
async fn inherit(
    takeover_from: Option<&std::path::Path>,
    listen_fds: Vec<(String, OwnedFd)>,
    config: &Config,
) -> Result<(Inherited, Option<crate::service::takeover::Handshake>), String> {
    let mut takeover_conn = None;
    let inherited = match takeover_from {
        Some(path) => {
            let (inh, conn) = crate::service::takeover::receive(path).await?;
            takeover_conn = Some(conn);
            inh
        }
        None => {
            let mut inh = Inherited::from_named(listen_fds, true);
            if inh.has_state() {
                match StateFile::new(config.state_path()).load() {
                    Ok(s) => inh.snapshot = s,
                    Err(e) => tracing::error!("{e}; leases cannot be restored"),
                }
            }
            inh
        }
    };
    Ok((inherited, takeover_conn))
}

/// Starts what runs beside the server: the takeover socket (at
/// `takeover_path`), the expiry of unreclaimed leases (when `awaiting`),
/// the journal's flush of held-back lease ends (every second), READY=1 with the status line and the watchdog (under systemd), and
/// reload on SIGHUP.
fn spawn_tasks(
    broker: &Arc<Broker>,
    listener: &UnixSeqpacketListener,
    notifier: Option<&Arc<Notifier>>,
    awaiting: usize,
    takeover_path: Option<PathBuf>,
    handed_tx: tokio::sync::oneshot::Sender<()>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let config = broker.config();
    let mut tasks = Vec::new();
    if let Some(p) = takeover_path {
        let dup = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("cannot dup the listening socket for takeovers: {e}"))?;
        let l = server::bind(&p, 0o600)?;
        tracing::info!(path = %p.display(), "a successor may take over here (barkeepd --takeover)");
        tasks.push(tokio::spawn(crate::service::takeover::serve(
            l,
            p,
            broker.clone(),
            dup,
            handed_tx,
        )));
    }
    if awaiting > 0 {
        let b = broker.clone();
        let grace = config.reclaim_grace;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let n = b.expire_unclaimed();
            if n > 0 {
                tracing::info!(
                    leases = n,
                    "revoked restored leases nobody reclaimed within reclaim_grace"
                );
            }
        }));
    }
    {
        // Lease ends held back by the journal are written within a second.
        let b = broker.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                b.flush_journal();
            }
        }));
    }
    if let Some(n) = notifier {
        let status = broker.status_line();
        if let Err(e) = n.notify(&format!("READY=1\nSTATUS={}", sdnotify::one_line(&status))) {
            tracing::warn!("cannot tell systemd that barkeepd is ready: {e}");
        }
        tasks.push(tokio::spawn(report_status(
            n.clone(),
            broker.clone(),
            status,
        )));
        if let Some(every) = sdnotify::watchdog_interval() {
            tasks.push(tokio::spawn(watchdog(n.clone(), broker.clone(), every)));
        }
    }
    tasks.push(tokio::spawn(reload_on_sighup(
        broker.clone(),
        notifier.cloned(),
    )));
    Ok(tasks)
}

/// Sends STATUS= whenever the status line changes (at most every
/// [`STATUS_EVERY`]).
async fn report_status(n: Arc<Notifier>, broker: Arc<Broker>, mut last: String) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tick.tick().await;
        let now = broker.status_line();
        if now != last {
            let _ = n.notify(&format!("STATUS={}", sdnotify::one_line(&now)));
            last = now;
        }
    }
}

/// Pings the watchdog; each ping first takes the broker's lock, so a
/// daemon stuck inside it stops pinging and systemd restarts it.
async fn watchdog(n: Arc<Notifier>, broker: Arc<Broker>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let b = broker.clone();
        if tokio::task::spawn_blocking(move || b.session_count())
            .await
            .is_ok()
        {
            let _ = n.notify("WATCHDOG=1");
        }
    }
}

/// Reloads the policy on SIGHUP, with RELOADING=1 and READY=1 around it
/// for systemd (`Type=notify` reload protocol, systemd >= 253).
async fn reload_on_sighup(broker: Arc<Broker>, notifier: Option<Arc<Notifier>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; reload with `barkeep reload`");
        return;
    };
    while hup.recv().await.is_some() {
        if let Some(n) = &notifier {
            let _ = n.notify(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}",
                sdnotify::monotonic_usec()
            ));
        }
        match broker.reload(None) {
            Ok((grants, revoked)) => {
                tracing::info!(grants, revoked, "SIGHUP: policy reloaded")
            }
            Err(e) => tracing::error!("SIGHUP: reload failed: {}", e.message),
        }
        if let Some(n) = &notifier {
            let _ = n.notify(&format!(
                "READY=1\nSTATUS={}",
                sdnotify::one_line(&broker.status_line())
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::event_channel;
    use crate::server::identity::Peer;
    use barkeep_protocol::{
        Access, ErrorCode, MemAttrRequest, PeerIdentity, ReclaimToken, Request, Response,
        SliceRequest,
    };

    fn config(dir: &std::path::Path) -> Config {
        let uid = nix::unistd::geteuid().as_raw();
        Config::from_toml_str(&format!(
            r#"
            socket = "{}/bk.sock"
            [[device]]
            name = "sim0"
            sim = {{ bars = [ {{ index = 0, size = "64K" }} ] }}
            [[grant]]
            device = "sim0"
            bar = 0
            access = "rw"
            uids = [{uid}]
            "#,
            dir.display()
        ))
        .unwrap()
    }

    fn session(b: &Broker, uid: u32) -> u64 {
        let (sink, _source) = event_channel(8);
        let peer = Peer {
            identity: PeerIdentity {
                uid,
                gid: uid,
                pid: std::process::id() as i32,
                ..Default::default()
            },
            pidfd: crate::sys::pidfd_open(std::process::id() as i32).unwrap(),
        };
        b.open_session(peer, "t".into(), sink).session_id
    }

    fn acquire(
        b: &Broker,
        s: u64,
        offset: u64,
    ) -> (
        barkeep_protocol::Lease,
        ReclaimToken,
        crate::backend::SharedFd,
    ) {
        let r = b.handle(
            s,
            Request::Acquire(SliceRequest {
                device: "sim0".into(),
                bar: 0,
                offset,
                length: 0x1000,
                access: Access::ReadWrite,
                memattr: MemAttrRequest::Uncached,
            }),
        );
        match r.unwrap() {
            (Response::Granted(l, t), Some(fd)) => (l, t, fd),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_successor_restores_leases_that_only_their_token_reclaims() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let uid = nix::unistd::geteuid().as_raw();

        // The first daemon grants two leases, then hands over.
        let first = start(config(dir.path()), None, Inherited::default(), None).unwrap();
        let s = session(&first.broker, uid);
        let (kept, token, kept_fd) = acquire(&first.broker, s, 0x1000);
        let (_, _, lost_fd) = acquire(&first.broker, s, 0x4000);
        crate::sys::pwrite_all(kept_fd.as_fd(), b"abc", 0).unwrap();
        let snapshot = first.broker.freeze();
        let mut fds = first.broker.handoff_fds();
        fds.push((
            LISTENER_FD_NAME.into(),
            first.listener.as_fd().try_clone_to_owned().unwrap(),
        ));
        // Frozen: the session ending revokes nothing.
        first.broker.close_session(s);
        drop(first);
        assert_eq!(crate::sys::file_size(kept_fd.as_fd()).unwrap(), 0x1000);

        let mut inherited = Inherited::from_named(fds, false);
        assert!(inherited.listener.is_some() && inherited.has_state());
        inherited.snapshot = Some(snapshot);
        let second = start(config(dir.path()), None, inherited, None).unwrap();
        let b = &second.broker;
        assert_eq!(second.awaiting, 2);
        assert!(b.device(0).unwrap().restored());

        let s2 = session(b, uid);
        let wrong = b.handle(
            s2,
            Request::Reclaim {
                lease: kept.id,
                token: ReclaimToken([0; 16]),
            },
        );
        assert_eq!(wrong.unwrap_err().code, ErrorCode::UnknownLease);
        let other = session(b, uid + 1);
        let stranger = b.handle(
            other,
            Request::Reclaim {
                lease: kept.id,
                token,
            },
        );
        assert_eq!(stranger.unwrap_err().code, ErrorCode::Denied);
        let ok = b.handle(
            s2,
            Request::Reclaim {
                lease: kept.id,
                token,
            },
        );
        assert!(matches!(ok, Ok((Response::Reclaimed(ref l), None)) if l.id == kept.id));
        let again = b.handle(
            s2,
            Request::Reclaim {
                lease: kept.id,
                token,
            },
        );
        assert_eq!(
            again.unwrap_err().code,
            ErrorCode::UnknownLease,
            "once only"
        );

        // The BAR and the buffer are the same.
        let mut out = [0u8; 3];
        b.device(0).unwrap().peek(0, 0x1000, &mut out).unwrap();
        assert_eq!(&out, b"abc");
        // The lease nobody reclaimed is revoked; the reclaimed one stays
        // and belongs to the new session: releasing it works.
        assert_eq!(b.expire_unclaimed(), 1);
        assert_eq!(crate::sys::file_size(lost_fd.as_fd()).unwrap(), 0);
        assert_eq!(crate::sys::file_size(kept_fd.as_fd()).unwrap(), 0x1000);
        let r = b.handle(s2, Request::Release { lease: kept.id });
        assert!(matches!(r, Ok((Response::Released, None))), "{r:?}");
        assert_eq!(crate::sys::file_size(kept_fd.as_fd()).unwrap(), 0);
    }

    #[test]
    fn buffers_without_a_record_are_revoked_not_left_alive() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let uid = nix::unistd::geteuid().as_raw();
        let first = start(config(dir.path()), None, Inherited::default(), None).unwrap();
        let s = session(&first.broker, uid);
        let (_, _, fd) = acquire(&first.broker, s, 0x1000);
        let mut snapshot = first.broker.freeze();
        let fds = first.broker.handoff_fds();
        drop(first);
        // The state file lost its records (deleted, or never writable).
        snapshot.leases.clear();
        let mut inherited = Inherited::from_named(fds, false);
        inherited.snapshot = Some(snapshot);
        std::fs::remove_file(dir.path().join("bk.sock")).unwrap();
        let second = start(config(dir.path()), None, inherited, None).unwrap();
        assert_eq!(second.awaiting, 0);
        assert_eq!(
            crate::sys::file_size(fd.as_fd()).unwrap(),
            0,
            "a buffer nobody can account for is revoked"
        );
        // The range is free again.
        let s2 = session(&second.broker, uid);
        acquire(&second.broker, s2, 0x1000);
    }

    #[test]
    fn named_fds_are_sorted_by_what_they_are() {
        let memfd = || crate::sys::memfd("x", 4096).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let inh = Inherited::from_named(
            vec![
                ("dev-gpu-0-device".into(), memfd()),
                ("dev-gpu-0-group".into(), memfd()),
                (format!("lease-{id}"), memfd()),
                ("something".into(), memfd()),
            ],
            true,
        );
        assert_eq!(
            inh.devices["gpu-0"].keys().collect::<Vec<_>>(),
            ["device", "group"]
        );
        assert!(inh.leases.contains_key(&id.parse().unwrap()));
        assert_eq!(inh.unknown, ["something"]);
        assert!(inh.listener.is_none());
    }
}
