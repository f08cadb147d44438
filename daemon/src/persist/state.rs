//! The state file: what the daemon promised to whom, kept current on every
//! change so that a restarted daemon (or a successor taking over) can
//! restore its leases and let their holders reclaim them.
//!
//! The file is JSON lines (`/run/barkeep/state` by default, `state_file` in
//! the config): a [`Snapshot`] written atomically (temporary file, fsync,
//! rename), then one [`Change`] per line appended as leases come and go, so
//! that a grant costs one small `write` however many leases there are. The
//! whole file is rewritten when the appended lines outnumber the leases. It holds secrets (the reclaim tokens), so it is created mode
//! 0600. It describes leases only; the buffers themselves live in the fd
//! store (or come with a takeover), named `lease-<id>`.

use crate::backend::Buffer;
use crate::leases::{Entry, LeaseTable};
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

/// A change to the snapshot, appended as one line after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A lease as it is now (new, or changed: state, holder, grant).
    Put(Box<LeaseRecord>),
    /// A lease that is gone (its id).
    Del(String),
    /// The next session id the writer would give.
    NextSession(u64),
}

/// One appended line: a change and when it was written (ages in a `Put`
/// are as of then).
#[derive(Debug, Serialize, Deserialize)]
struct ChangeLine {
    at_ms: u64,
    change: Change,
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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
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

    /// Parses the file: the snapshot line and the changes after it, applied
    /// in order. Ages come out as of the last line written. A last line cut
    /// short (the writer died in the middle of it) is ignored.
    pub fn from_lines(text: &str) -> Result<Snapshot, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or("the file is empty")?;
        let mut snap = match Snapshot::from_json(first) {
            Ok(s) => s,
            // One snapshot over several lines (pretty-printed).
            Err(_) => return Snapshot::from_json(text),
        };
        // Each lease with the time its age was taken.
        let base = snap.written_ms;
        let mut order: Vec<String> = Vec::new();
        let mut leases: std::collections::HashMap<String, (LeaseRecord, u64)> =
            std::collections::HashMap::new();
        for r in std::mem::take(&mut snap.leases) {
            order.push(r.id.clone());
            leases.insert(r.id.clone(), (r, base));
        }
        let mut latest = base;
        let mut lines = lines.peekable();
        while let Some(line) = lines.next() {
            let parsed: ChangeLine = match serde_json::from_str(line) {
                Ok(c) => c,
                Err(_) if lines.peek().is_none() => break,
                Err(e) => return Err(format!("a change line is not valid: {e}")),
            };
            latest = latest.max(parsed.at_ms);
            match parsed.change {
                Change::Put(r) => {
                    let r = *r;
                    if !leases.contains_key(&r.id) {
                        order.push(r.id.clone());
                    }
                    leases.insert(r.id.clone(), (r, parsed.at_ms));
                }
                Change::Del(id) => {
                    leases.remove(&id);
                }
                Change::NextSession(n) => snap.next_session = n,
            }
        }
        snap.leases = order
            .into_iter()
            .filter_map(|id| leases.remove(&id))
            .map(|(mut r, taken)| {
                r.age_ms += latest.saturating_sub(taken);
                r
            })
            .collect();
        snap.written_ms = latest;
        Ok(snap)
    }

    /// The record of device `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceRecord> {
        self.devices.iter().find(|d| d.name == name)
    }
}

impl Change {
    /// The records of the leases `changed` in `table`: each as it is now,
    /// or deleted when it left the table.
    pub fn of_leases<B>(changed: &[LeaseId], table: &LeaseTable<B>) -> Vec<Change> {
        changed
            .iter()
            .map(|id| match table.get(id) {
                Some(e) => Change::Put(Box::new(LeaseRecord::of(e))),
                None => Change::Del(id.to_string()),
            })
            .collect()
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
        let mut text = snapshot.to_json();
        text.push('\n');
        f.write_all(text.as_bytes()).map_err(|e| what("write", e))?;
        f.sync_all().map_err(|e| what("fsync", e))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| what("rename into", e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Opens the file for appending changes (after [`StateFile::write`]).
    pub fn appender(&self) -> Result<std::fs::File, String> {
        std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| {
                format!(
                    "cannot open the state file {} to append: {e}",
                    self.path.display()
                )
            })
    }

    /// Appends `changes` in one write to `file` (from
    /// [`StateFile::appender`]). Not fsynced: the file is for a restart of
    /// the daemon, which the page cache survives (and it lives on tmpfs).
    pub fn append(&self, file: &mut std::fs::File, changes: &[Change]) -> Result<(), String> {
        let at_ms = now_ms();
        let mut text = String::new();
        for change in changes {
            let line = ChangeLine {
                at_ms,
                change: change.clone(),
            };
            text.push_str(&serde_json::to_string(&line).expect("plain data serializes"));
            text.push('\n');
        }
        file.write_all(text.as_bytes()).map_err(|e| {
            format!(
                "cannot append to the state file {}: {e} (leases cannot survive a restart until it is writable)",
                self.path.display()
            )
        })
    }

    /// Reads the file: `Ok(None)` when there is none.
    pub fn load(&self) -> Result<Option<Snapshot>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Snapshot::from_lines(&text)
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
    fn appended_changes_apply_in_order_and_a_cut_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("state"));
        let a = LeaseRecord::of(&entry());
        let mut b = a.clone();
        b.id = LeaseId([0xcd; 16]).to_string();
        file.write(&Snapshot::new(3, vec![], vec![a.clone()]))
            .unwrap();
        let mut f = file.appender().unwrap();
        let mut kept = a.clone();
        kept.state = LeaseState::Kept;
        file.append(
            &mut f,
            &[
                Change::Put(Box::new(b.clone())),
                Change::Put(Box::new(kept)),
            ],
        )
        .unwrap();
        file.append(&mut f, &[Change::Del(b.id.clone()), Change::NextSession(8)])
            .unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!(back.next_session, 8);
        assert_eq!(back.leases.len(), 1, "{:?}", back.leases);
        assert_eq!(back.leases[0].id, a.id);
        assert_eq!(back.leases[0].state, LeaseState::Kept, "the last put wins");
        assert!(back.leases[0].age_ms >= a.age_ms);
        // The writer died in the middle of a line: what came before stands.
        std::io::Write::write_all(&mut f, b"{\"at_ms\":1,\"change\":{\"del").unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!(back.leases.len(), 1);
        // A whole write starts over.
        file.write(&Snapshot::new(9, vec![], vec![b.clone()]))
            .unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!((back.next_session, back.leases.len()), (9, 1));
        assert_eq!(back.leases[0].id, b.id);
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
