//! The durable record of what the daemon holds, kept up to date by the
//! broker on every change: the state file (lease metadata) and systemd's fd
//! store (device fds and a reference to every live buffer), so that a
//! restart, even after SIGKILL, finds every lease and every buffer again.
//!
//! Lease buffers are not stored one by one: they go into the stash
//! ([`crate::persist::stash`]), whose few segments are what the store holds.
//!
//! fd store names (FDNAME=, printable ASCII without ':'):
//! `dev-<device>-<kind>` for a device's kernel fds (kinds `container`,
//! `group`, `device`, `iommufd` for VFIO, `bar<N>` for a simulated BAR),
//! `stash-<n>` for a stash segment, and `barkeep` for a listening socket
//! barkeepd bound itself. `lease-<32 hex digits>` (one lease's buffer) is
//! what barkeepd 0.x before the stash stored; it is still read, and moved
//! into the stash.

use crate::backend::{Device, SharedFd};
use crate::leases::LeaseTable;
use crate::persist::sdnotify::Notifier;
use crate::persist::stash::{LocalKeeper, Stash};
use crate::persist::state::{Change, Snapshot, StateFile};
use barkeep_protocol::{ErrorCode, ErrorReply, LeaseId};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

/// The fd store name of a device's kernel fd of `kind`.
pub fn device_fd_name(device: &str, kind: &str) -> String {
    format!("dev-{device}-{kind}")
}

/// The fd store name of a lease's buffer.
pub fn lease_fd_name(id: &LeaseId) -> String {
    format!("lease-{id}")
}

/// The name under which the listening socket is passed (the socket unit's
/// FileDescriptorName=, and what barkeepd stores when it bound the socket).
pub const LISTENER_FD_NAME: &str = "barkeep";

/// Fds the store keeps free for device fds a device-wide revoke reopens.
const STORE_SPARE: usize = 4;

/// systemd's fd store for this service.
#[derive(Debug)]
pub struct FdStore {
    notifier: Notifier,
    /// FileDescriptorStoreMax=, when systemd says ($FDSTORE).
    capacity: Option<usize>,
    /// Names currently stored.
    names: Mutex<BTreeSet<String>>,
}

impl FdStore {
    /// The store reached through `notifier`, holding at most `capacity` fds.
    pub fn new(notifier: Notifier, capacity: Option<usize>) -> FdStore {
        FdStore {
            notifier,
            capacity,
            names: Mutex::new(BTreeSet::new()),
        }
    }

    fn names(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `fd` under `name` (FDSTORE=1, FDPOLL=0 so that systemd keeps
    /// fds that poll as hung up, like a revoked buffer).
    pub fn add(&self, name: &str, fd: BorrowedFd<'_>) {
        let msg = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0");
        match self.notifier.notify_with_fds(&msg, &[fd]) {
            Ok(()) => {
                self.names().insert(name.to_string());
            }
            Err(e) => tracing::error!(
                fd = name,
                "cannot put the fd into systemd's fd store ({e}); a restart will lose it"
            ),
        }
    }

    /// Stores `fd` under `name` when the store has room for it (its
    /// capacity, when systemd says, less the spare kept for device fds).
    pub fn add_checked(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), String> {
        if let Some(max) = self.capacity {
            let n = self.len();
            if n + 1 + STORE_SPARE > max {
                return Err(format!(
                    "systemd's fd store holds {n} of barkeepd's fds, the most its unit allows (FileDescriptorStoreMax={max}); raise it in barkeepd.service"
                ));
            }
        }
        let msg = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0");
        self.notifier
            .notify_with_fds(&msg, &[fd])
            .map_err(|e| format!("cannot put {name} into systemd's fd store: {e}"))?;
        self.names().insert(name.to_string());
        Ok(())
    }

    /// Notes that `name` is stored already (it came back from the store).
    pub fn note_stored(&self, name: &str) {
        self.names().insert(name.to_string());
    }

    /// Removes every fd stored under `name` (FDSTOREREMOVE=1).
    pub fn remove(&self, name: &str) {
        let msg = format!("FDSTOREREMOVE=1\nFDNAME={name}");
        if let Err(e) = self.notifier.notify(&msg) {
            tracing::warn!(
                fd = name,
                "cannot remove the fd from systemd's fd store: {e}"
            );
        }
        self.names().remove(name);
    }

    /// Number of fds stored.
    pub fn len(&self) -> usize {
        self.names().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.names().is_empty()
    }

    /// FileDescriptorStoreMax=, when known.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// The names stored.
    pub fn stored(&self) -> Vec<String> {
        self.names().iter().cloned().collect()
    }
}

impl crate::persist::stash::Keeper for FdStore {
    fn keep(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), String> {
        self.add_checked(name, fd)
    }
    fn forget(&self, name: &str) {
        self.remove(name)
    }
}

/// Where the broker records its leases: a state file, the fd store, both or
/// neither.
#[derive(Debug, Default)]
pub struct Journal {
    file: Option<StateFile>,
    store: Option<FdStore>,
    /// Lease buffers in flight (only with a store).
    stash: Option<Mutex<Stash>>,
    /// Whether the last state write failed (to log once per failure run).
    failing: Mutex<bool>,
    /// Where changes are appended since the last whole write.
    appender: Mutex<Appender>,
}

/// The state file as open for appending since its last whole write.
#[derive(Debug, Default)]
struct Appender {
    /// `None` until the file is written whole (and again when it must be).
    file: Option<std::fs::File>,
    /// Lines appended since.
    lines: usize,
    /// The next session id the file holds.
    next_session: u64,
    /// Ends of leases not written yet (see [`Journal::append_changes`]).
    deferred: Vec<Change>,
}

/// Changes appended before the file is written whole again: at least this
/// many, and at least as many as there are leases (so rewriting stays a
/// small share of the work).
const MIN_APPENDED: usize = 64;

impl Journal {
    /// A journal writing `file` and filling `store`.
    pub fn new(file: Option<StateFile>, store: Option<FdStore>) -> Journal {
        Journal {
            file,
            stash: store.as_ref().map(|_| Mutex::new(Stash::new(1))),
            store,
            failing: Mutex::new(false),
            appender: Mutex::new(Appender::default()),
        }
    }

    /// The state file, if any.
    pub fn state_file(&self) -> Option<&StateFile> {
        self.file.as_ref()
    }

    /// systemd's fd store, if the daemon runs under one.
    pub fn fd_store(&self) -> Option<&FdStore> {
        self.store.as_ref()
    }

    fn appender(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state file whole (errors are logged, once until it works
    /// again); later changes are appended to it.
    pub fn write_state(&self, snapshot: &Snapshot) {
        let Some(file) = &self.file else { return };
        let mut appender = self.appender();
        *appender = Appender::default();
        let result = file.write(snapshot).and_then(|()| {
            appender.file = Some(file.appender()?);
            appender.next_session = snapshot.next_session;
            Ok(())
        });
        drop(appender);
        self.outcome(file, result);
    }

    /// Appends the records of the leases `changed` in `table` (and the next
    /// session id, when it moved) to the state file. `false` when the file
    /// must be written whole instead: never written yet, too many lines
    /// appended for the table's size, a device's data changed, or appending
    /// failed.
    pub fn append_changes<B>(
        &self,
        changed: &[LeaseId],
        table: &LeaseTable<B>,
        next_session: u64,
    ) -> bool {
        if self.file.is_none() {
            return true;
        }
        self.append_list(Change::of_leases(changed, table), table.len(), next_session)
    }

    /// [`Journal::append_changes`] for a list of changes, `leases` leases.
    fn append_list(&self, mut changes: Vec<Change>, leases: usize, next_session: u64) -> bool {
        let Some(file) = &self.file else { return true };
        let mut appender = self.appender();
        if appender.next_session != next_session {
            changes.push(Change::NextSession(next_session));
        }
        if changes.is_empty() {
            return appender.file.is_some();
        }
        // Under the stash, an end waits for the next write (a grant's, or
        // the flush each second): a crash before it leaves the lease
        // recorded with a buffer that is already revoked, which the next
        // daemon restores as awaiting reclaim and revokes again after
        // `reclaim_grace` (its holder let it go and has no token). So a
        // grant and a release cost one write between them, not two. What
        // must be written before the reply (a grant) never waits.
        if self.stash.is_some() && appender.file.is_some() {
            if changes.iter().all(|c| matches!(c, Change::Del(_))) {
                appender.deferred.append(&mut changes);
                return true;
            }
            if !appender.deferred.is_empty() {
                let mut all = std::mem::take(&mut appender.deferred);
                all.append(&mut changes);
                changes = all;
            }
        }
        if appender.lines + changes.len() > leases.max(MIN_APPENDED) {
            return false;
        }
        let Some(f) = appender.file.as_mut() else {
            return false;
        };
        let result = file.append(f, &changes);
        let ok = result.is_ok();
        if ok {
            appender.lines += changes.len();
            appender.next_session = next_session;
        } else {
            appender.file = None;
        }
        drop(appender);
        self.outcome(file, result);
        ok
    }

    /// Writes the ends of leases that wait (see [`Journal::append_changes`]);
    /// `false` when the file must be written whole instead.
    pub fn flush(&self) -> bool {
        let Some(file) = &self.file else { return true };
        let mut appender = self.appender();
        if appender.deferred.is_empty() {
            return true;
        }
        let changes = std::mem::take(&mut appender.deferred);
        let Some(f) = appender.file.as_mut() else {
            return false;
        };
        let result = file.append(f, &changes);
        let ok = result.is_ok();
        if ok {
            appender.lines += changes.len();
        } else {
            appender.file = None;
        }
        drop(appender);
        self.outcome(file, result);
        ok
    }

    /// Logs a failed write once per run of failures.
    fn outcome(&self, file: &StateFile, result: Result<(), String>) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if *failing {
                    tracing::info!(path = %file.path().display(), "the state file is written again");
                }
                *failing = false;
            }
            Err(e) => {
                if !*failing {
                    tracing::error!("{e}");
                }
                *failing = true;
            }
        }
    }

    fn stash(&self) -> Option<MutexGuard<'_, Stash>> {
        Some(
            self.stash
                .as_ref()?
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Whether lease buffers go into the stash (under systemd's fd store).
    pub fn stashes(&self) -> bool {
        self.stash.is_some()
    }

    /// Whether the last write of the state file failed (a lease granted
    /// now would not be described to a successor).
    pub fn failing(&self) -> bool {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lease is being granted: its buffer (the daemon's own reference)
    /// goes into the stash, before the client gets its fd. An error means
    /// a restart could not find it: the lease must be refused.
    pub fn lease_granted(&self, id: &LeaseId, fd: &SharedFd) -> Result<(), ErrorReply> {
        let (Some(store), Some(mut stash)) = (&self.store, self.stash()) else {
            return Ok(());
        };
        stash.put(*id, fd, store).map_err(|e| {
            tracing::error!(lease = %id, "refusing a lease: {e}");
            ErrorReply::new(
                ErrorCode::LimitExceeded,
                format!("barkeepd cannot keep the buffer where a restart would find it ({e}); try again later"),
            )
        })
    }

    /// A restored (or taken over) lease's buffer: stashed unless it is
    /// already, and shared with the stash.
    pub fn lease_restored(&self, id: &LeaseId, fd: &SharedFd) {
        let (Some(store), Some(mut stash)) = (&self.store, self.stash()) else {
            return;
        };
        if stash.contains(id) {
            stash.share(id, fd);
        } else if let Err(e) = stash.put(*id, fd, store) {
            tracing::error!(lease = %id, "cannot stash a restored buffer ({e}); a crash now would leave it to a device-wide revoke");
        }
    }

    /// A lease's buffer was revoked or let go: its stash entry is dead.
    pub fn lease_ended(&self, id: &LeaseId) {
        if let (Some(store), Some(mut stash)) = (&self.store, self.stash()) {
            stash.mark_dead(id, store);
        }
    }

    /// Takes back what a predecessor stashed in `segments` (from the fd
    /// store): buffers `keep` accepts are stashed again first (see
    /// [`Stash::restore`]). Every buffer found is returned by lease id.
    pub fn restore_stash(
        &self,
        segments: Vec<(u64, OwnedFd)>,
        keep: impl Fn(&LeaseId) -> bool,
    ) -> Result<BTreeMap<LeaseId, SharedFd>, String> {
        if segments.is_empty() {
            return Ok(BTreeMap::new());
        }
        match (&self.store, self.stash()) {
            (Some(store), Some(mut stash)) => stash.restore(segments, keep, store),
            // No store this time: read them, keep nothing.
            _ => Stash::new(1).restore(segments, |_| false, &LocalKeeper::default()),
        }
    }

    /// Marks dead every stash entry that `live` does not name.
    pub fn retain_stash(&self, live: &BTreeSet<LeaseId>) {
        if let (Some(store), Some(mut stash)) = (&self.store, self.stash()) {
            stash.retain(|id| live.contains(id), store);
        }
    }

    /// Live stash entries, segments, entries in flight (live and dead).
    pub fn stash_usage(&self) -> Option<(usize, usize, usize)> {
        let stash = self.stash()?;
        Some((stash.len(), stash.segments(), stash.in_flight()))
    }

    /// Puts a device's kernel fds into the fd store.
    pub fn store_device(&self, name: &str, dev: &dyn Device) {
        let Some(s) = &self.store else { return };
        for (kind, fd) in dev.kernel_fds() {
            s.add(&device_fd_name(name, &kind), fd.as_fd());
        }
    }

    /// A device's kernel fds changed (a device-wide revoke reopened it):
    /// replaces them in the fd store.
    pub fn device_fds_changed(&self, name: &str, dev: &dyn Device) {
        // The device's restore data is in the snapshot: write it whole.
        self.appender().file = None;
        let Some(s) = &self.store else { return };
        let prefix = device_fd_name(name, "");
        // Kinds have no '-' (device names may): "dev-a-group" is not a
        // kind of device "a-b".
        let mine = |n: &String| n.strip_prefix(&prefix).is_some_and(|k| !k.contains('-'));
        for stored in s.stored().into_iter().filter(mine) {
            s.remove(&stored);
        }
        self.store_device(name, dev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::state::LeaseRecord;
    use barkeep_protocol::{Access, LeaseState, MemAttr, PeerIdentity};

    fn record(id: u8) -> LeaseRecord {
        LeaseRecord {
            id: LeaseId([id; 16]).to_string(),
            reclaim: "00".repeat(16),
            session: 1,
            client_name: "t".into(),
            holder: PeerIdentity::default(),
            device: "sim0".into(),
            bar: 0,
            offset: u64::from(id) * 0x1000,
            length: 0x1000,
            access: Access::ReadWrite,
            memattr: MemAttr::Uncached,
            buffer_name: "bk:t".into(),
            grant: 0,
            exclusive: false,
            keep: false,
            state: LeaseState::Active,
            age_ms: 0,
        }
    }

    #[test]
    fn under_the_stash_ends_wait_for_the_next_write_and_grants_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        // A store nobody listens on: nothing is stored in this test.
        let store = FdStore::new(
            Notifier::new(dir.path().join("nobody").to_str().unwrap()).unwrap(),
            None,
        );
        let j = Journal::new(Some(StateFile::new(path.clone())), Some(store));
        j.write_state(&Snapshot::new(1, Vec::new(), Vec::new()));
        let put = |id| Change::Put(Box::new(record(id)));
        let del = |id: u8| Change::Del(LeaseId([id; 16]).to_string());
        let holds = |id: u8| {
            StateFile::new(path.clone())
                .load()
                .unwrap()
                .unwrap()
                .leases
                .iter()
                .any(|r| r.id == LeaseId([id; 16]).to_string())
        };
        assert!(j.append_list(vec![put(1), put(2)], 2, 1));
        assert!(holds(1) && holds(2), "a grant is written at once");
        assert!(j.append_list(vec![del(1)], 1, 1));
        assert!(holds(1), "an end waits");
        assert!(j.append_list(vec![put(3)], 2, 1));
        assert!(!holds(1) && holds(3), "and goes with the next grant");
        assert!(j.append_list(vec![del(2)], 1, 1));
        assert!(holds(2));
        assert!(j.flush());
        assert!(!holds(2), "or with the flush");
    }
}
