//! The state file: what the daemon promised to whom, written atomically on
//! every change so that a restarted daemon (or a successor taking over) can
//! restore its leases and let their holders reclaim them.
//!
//! The file is JSON (`/run/barkeep/state` by default, `state_file` in the
//! config). It holds secrets (the reclaim tokens), so it is created mode
//! 0600. It describes leases only; the buffers themselves live in the fd
//! store (or come with a takeover), named `lease-<id>`.

use crate::backend::Buffer;
use crate::leases::Entry;
use barkeep_protocol::{Access, Lease, LeaseId, LeaseState, MemAttr, PeerIdentity, ReclaimToken};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Version of the file's format.
pub const FORMAT_VERSION: u32 = 1;

/// Everything the state file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Process that wrote it.
    pub pid: u32,
    /// When it was written (milliseconds since the Unix epoch).
    pub written_ms: u64,
    /// The next session id the writer would have given.
    pub next_session: u64,
    /// The devices, in config order.
    pub devices: Vec<DeviceRecord>,
    /// Every lease (active, kept, awaiting reclaim, lingering).
    pub leases: Vec<LeaseRecord>,
}

/// A device as the state file remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Configured name.
    pub name: String,
    /// Backend data for a restore (see `Device::restore_data`).
    pub data: Option<String>,
}

/// A lease as the state file remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Lease id (32 hex digits).
    pub id: String,
    /// Reclaim token (32 hex digits).
    pub reclaim: String,
    /// The holder's session in the writing daemon.
    pub session: u64,
    /// The holder's client name.
    pub client_name: String,
    /// The holder's identity when it was granted (or reclaimed).
    pub holder: PeerIdentity,
    /// Device name.
    pub device: String,
    /// BAR index.
    pub bar: u32,
    /// Offset in the BAR.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Access of the buffer.
    pub access: Access,
    /// Memory attribute in effect.
    pub memattr: MemAttr,
    /// The buffer's name.
    pub buffer_name: String,
    /// Index of the grant that allowed it (re-decided on restore).
    pub grant: usize,
    /// Whether it may overlap no other lease.
    pub exclusive: bool,
    /// Whether it stays when its session ends.
    pub keep: bool,
    /// Its state when written.
    pub state: LeaseState,
    /// Its age when written, in milliseconds.
    pub age_ms: u64,
}

fn hex(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<[u8; 16], String> {
    s.parse::<LeaseId>().map(|id| id.0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Snapshot {
    /// A snapshot written now by this process.
    pub fn new(next_session: u64, devices: Vec<DeviceRecord>, leases: Vec<LeaseRecord>) -> Self {
        Snapshot {
            version: FORMAT_VERSION,
            pid: std::process::id(),
            written_ms: now_ms(),
            next_session,
            devices,
            leases,
        }
    }

    /// The JSON text of the file (compact: it is rewritten on every change;
    /// `jq . /run/barkeep/state` shows it readably).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    /// Parses the JSON text of the file.
    pub fn from_json(text: &str) -> Result<Snapshot, String> {
        let s: Snapshot = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if s.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not {FORMAT_VERSION} (written by another barkeepd release)",
                s.version
            ));
        }
        Ok(s)
    }

    /// The record of device `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceRecord> {
        self.devices.iter().find(|d| d.name == name)
    }
}

impl LeaseRecord {
    /// The record of a lease table entry.
    pub fn of<B>(e: &Entry<B>) -> LeaseRecord {
        let l = &e.lease;
        LeaseRecord {
            id: l.id.to_string(),
            reclaim: hex(&e.reclaim.0),
            session: e.session,
            client_name: e.client_name.clone(),
            holder: e.holder.clone(),
            device: l.device.clone(),
            bar: l.bar,
            offset: l.offset,
            length: l.length,
            access: l.access,
            memattr: l.memattr,
            buffer_name: l.buffer_name.clone(),
            grant: e.grant,
            exclusive: e.exclusive,
            keep: e.keep,
            state: e.state,
            age_ms: e.granted.elapsed().as_millis() as u64,
        }
    }

    /// The lease id.
    pub fn lease_id(&self) -> Result<LeaseId, String> {
        unhex(&self.id).map(LeaseId)
    }

    /// The lease as clients see it.
    pub fn lease(&self) -> Result<Lease, String> {
        Ok(Lease {
            id: self.lease_id()?,
            device: self.device.clone(),
            bar: self.bar,
            offset: self.offset,
            length: self.length,
            access: self.access,
            memattr: self.memattr,
            buffer_name: self.buffer_name.clone(),
        })
    }

    /// A lease table entry for this record, with `buffer` (the state is
    /// the recorded one; the broker decides what it becomes).
    pub fn entry(&self, buffer: Option<Buffer>) -> Result<Entry<Buffer>, String> {
        let age = Duration::from_millis(self.age_ms);
        Ok(Entry {
            lease: self.lease()?,
            session: self.session,
            client_name: self.client_name.clone(),
            holder: self.holder.clone(),
            granted: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            state: self.state,
            payload: buffer,
            grant: self.grant,
            exclusive: self.exclusive,
            keep: self.keep,
            reclaim: ReclaimToken(unhex(&self.reclaim)?),
        })
    }
}

/// The state file at a path.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file atomically: writes a temporary file in the same
    /// directory, fsyncs it, renames it over the file, and fsyncs the
    /// directory.
    pub fn write(&self, snapshot: &Snapshot) -> Result<(), String> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(".{name}.tmp"));
        let what = |step: &str, e: std::io::Error| {
            format!(
                "cannot {step} the state file {}: {e} (leases cannot survive a restart until it is writable)",
                self.path.display()
            )
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| what("create a temporary file for", e))?;
        f.write_all(snapshot.to_json().as_bytes())
            .map_err(|e| what("write", e))?;
        f.sync_all().map_err(|e| what("fsync", e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| what("rename into", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads the file: `Ok(None)` when there is none.
    pub fn load(&self) -> Result<Option<Snapshot>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Snapshot::from_json(&text)
                .map(Some)
                .map_err(|e| format!("the state file {} is unreadable: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read the state file {}: {e}",
                self.path.display()
            )),
        }
    }

    /// Removes the file (nothing to restore any more).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry() -> Entry<()> {
        Entry {
            lease: Lease {
                id: LeaseId([0xab; 16]),
                device: "sim0".into(),
                bar: 2,
                offset: 0x1000,
                length: 0x2000,
                access: Access::ReadWrite,
                memattr: MemAttr::WriteCombining,
                buffer_name: "bk:sim0:b2:1000+2000".into(),
            },
            session: 4,
            client_name: "app".into(),
            holder: PeerIdentity {
                uid: 1000,
                gid: 1000,
                pid: 77,
                groups: vec![10, 20],
                cgroup: Some("/a.slice/b.service".into()),
                label: None,
            },
            granted: Instant::now() - Duration::from_secs(5),
            state: LeaseState::Active,
            payload: Some(()),
            grant: 1,
            exclusive: true,
            keep: false,
            reclaim: ReclaimToken([7; 16]),
        }
    }

    #[test]
    fn records_round_trip_through_the_file_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state"));
        assert_eq!(file.load().unwrap(), None);
        let snap = Snapshot::new(
            9,
            vec![DeviceRecord {
                name: "sim0".into(),
                data: Some("ioas=3".into()),
            }],
            vec![LeaseRecord::of(&entry())],
        );
        file.write(&snap).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "reclaim tokens are secrets");
        let back = file.load().unwrap().unwrap();
        assert_eq!(back, snap);
        let e = back.leases[0].entry(None).unwrap();
        assert_eq!(e.lease, entry().lease);
        assert_eq!(e.reclaim, ReclaimToken([7; 16]));
        assert_eq!(e.holder, entry().holder);
        assert!(
            e.granted.elapsed() >= Duration::from_secs(5),
            "age survives"
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
    }

    #[test]
    fn a_foreign_or_broken_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, "{ not json").unwrap();
        let e = StateFile::new(&path).load().unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        let mut snap = Snapshot::new(1, vec![], vec![]);
        snap.version = 99;
        std::fs::write(&path, snap.to_json()).unwrap();
        let e = StateFile::new(&path).load().unwrap_err();
        assert!(e.contains("version 99"), "{e}");
    }
}
