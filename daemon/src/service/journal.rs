//! The durable record of what the daemon holds, kept up to date by the
//! broker on every change: the state file (lease metadata) and systemd's fd
//! store (device fds and a reference to every live buffer), so that a
//! restart, even after SIGKILL, finds every lease and every buffer again.
//!
//! fd store names (FDNAME=, printable ASCII without ':'):
//! `dev-<device>-<kind>` for a device's kernel fds (kinds `container`,
//! `group`, `device`, `iommufd` for VFIO, `bar<N>` for a simulated BAR),
//! `lease-<32 hex digits>` for a lease's buffer, and `barkeep` for a
//! listening socket barkeepd bound itself.

use crate::backend::Device;
use crate::leases::LeaseTable;
use crate::service::sdnotify::Notifier;
use crate::service::state::{Change, Snapshot, StateFile};
use barkeep_protocol::{ErrorCode, ErrorReply, LeaseId};
use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd};
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

/// Where the broker records its leases: a state file, the fd store, both or
/// neither.
#[derive(Debug, Default)]
pub struct Journal {
    file: Option<StateFile>,
    store: Option<FdStore>,
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
        let Some(file) = &self.file else { return true };
        let leases = table.len();
        let mut changes = Change::of_leases(changed, table);
        let mut appender = self.appender();
        if appender.next_session != next_session {
            changes.push(Change::NextSession(next_session));
        }
        if changes.is_empty() {
            return appender.file.is_some();
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

    /// A lease was granted: its buffer (the daemon's own reference) goes
    /// into the fd store.
    pub fn lease_granted(&self, id: &LeaseId, fd: BorrowedFd<'_>) {
        if let Some(s) = &self.store {
            s.add(&lease_fd_name(id), fd);
        }
    }

    /// A lease's buffer was revoked or let go: out of the fd store.
    pub fn lease_ended(&self, id: &LeaseId) {
        if let Some(s) = &self.store {
            s.remove(&lease_fd_name(id));
        }
    }

    /// `Ok` when the fd store has room for one more buffer.
    pub fn room_for_lease(&self) -> Result<(), ErrorReply> {
        let Some(s) = &self.store else { return Ok(()) };
        let Some(max) = s.capacity() else {
            return Ok(());
        };
        let n = s.len();
        if n + STORE_SPARE >= max {
            tracing::warn!(
                stored = n,
                max,
                "refusing a lease: systemd's fd store is full (raise FileDescriptorStoreMax= in barkeepd.service)"
            );
            return Err(ErrorReply::new(
                ErrorCode::LimitExceeded,
                format!(
                    "barkeepd keeps {n} fds in systemd's fd store, the most its unit allows (FileDescriptorStoreMax={max}) so that leases survive restarts; try again later"
                ),
            ));
        }
        Ok(())
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
