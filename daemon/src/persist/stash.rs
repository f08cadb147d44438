//! The stash: lease buffers kept in flight in barkeepd's own Unix sockets,
//! so that a restart (even after SIGKILL) gets every live buffer back while
//! systemd's fd store holds only a few sockets.
//!
//! A *segment* is a `SOCK_DGRAM` socketpair. Its receiving end goes into
//! the fd store once, when the segment is made (`FDNAME=stash-<n>`,
//! `FDPOLL=0`); barkeepd keeps only the sending end. Each message in a
//! segment carries buffer fds (`SCM_RIGHTS`) and a payload naming their
//! lease ids, one id per fd in the same order. The kernel keeps the queued
//! fds alive for as long as somebody (systemd) holds the receiving end.
//!
//! - **Grant**: before the client gets its fd, one `sendmsg` of
//!   `[id]` + `[buffer]` to the *hot* segment. No message to PID 1.
//! - **Hot segment full** (`EAGAIN`: its send buffer is spent): its live
//!   entries are packed into the current *cold* segment, up to 253 fds
//!   (`SCM_MAX_FD`) per message; then a new hot segment is stored and the
//!   old one removed from the store (systemd closes it, the kernel drops
//!   its queue). Two notifications to PID 1 per few hundred grants.
//! - **Release**: the entry is only marked dead (the buffer was revoked, so
//!   a dead fd in flight is harmless). A cold segment that is more than
//!   half dead is repacked into the current cold one and removed.
//! - **Restart**: each inherited segment is read message by message with
//!   `MSG_PEEK` (which hands out duplicates and leaves the message queued),
//!   the entries are sent into new, already stored segments, and only then
//!   is the message dequeued; the old segments leave the store last. At
//!   every instant each buffer is in at least one stored segment; copies
//!   in several are merged by lease id.
//!
//! The promise this keeps: after a SIGKILL at any instant, every buffer a
//! client holds is in a stored segment (so the restarted daemon can revoke
//! it) or dead.
//!
//! Limits: fds in flight count against the sending user's RLIMIT_NOFILE
//! (the kernel's `too_many_unix_fds`, `ETOOMANYREFS`) unless it has
//! CAP_SYS_RESOURCE; live entries plus dead ones not yet repacked must fit.
//! The unix garbage collector is not involved: it counts only AF_UNIX
//! sockets in flight, and the stash carries none.

use crate::backend::SharedFd;
use barkeep_protocol::LeaseId;
use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, setsockopt, socketpair, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// Where segments' receiving ends are kept: systemd's fd store
/// ([`crate::persist::journal::FdStore`]), or this process ([`LocalKeeper`]).
pub trait Keeper {
    /// Keeps `fd` under `name`; an error means it is not kept.
    fn keep(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), String>;
    /// Lets go of what is kept under `name`.
    fn forget(&self, name: &str);
}

/// Keeps receiving ends in this process: for tests, and for segments
/// inherited by a daemon that does not use the fd store.
#[derive(Debug, Default)]
pub struct LocalKeeper(Mutex<BTreeMap<String, OwnedFd>>);

impl LocalKeeper {
    /// Dups of what is kept, as `LISTEN_FDS` would pass them.
    pub fn segments(&self) -> Vec<(u64, OwnedFd)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter_map(|(name, fd)| Some((parse_segment_name(name)?, fd.try_clone().ok()?)))
            .collect()
    }
}

impl Keeper for LocalKeeper {
    fn keep(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), String> {
        let fd = fd
            .try_clone_to_owned()
            .map_err(|e| format!("cannot keep {name}: {e}"))?;
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(name.to_string(), fd);
        Ok(())
    }
    fn forget(&self, name: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(name);
    }
}

/// Fds per message: the kernel's SCM_MAX_FD.
pub const MAX_FDS: usize = crate::sys::SCM_MAX_FD;

/// A message's payload starts with this (format version 1).
const MAGIC: &[u8; 8] = b"bkstash1";

/// Bytes of one lease id in a payload.
const ID_LEN: usize = 16;

/// The send buffer asked for: the kernel caps it at `net.core.wmem_max`
/// (the unit has no CAP_NET_ADMIN to go beyond).
const SNDBUF: usize = 64 << 20;

/// Entries a hot segment takes before it rolls (also when its send buffer
/// fills first): two notifications to PID 1 per this many grants, and at
/// most this many single-fd messages to read on a restart.
pub const HOT_MAX: usize = 1024;

/// Entries a cold segment takes (32 full messages), so that repacking one
/// stays short.
pub const COLD_MAX: usize = 32 * MAX_FDS;

/// The current cold segment is repacked only once it holds this many
/// entries (smaller ones are cheap to keep).
const REPACK_MIN: usize = 2 * MAX_FDS;

/// Open files the daemon needs besides sessions and leases.
const FD_SPARE: u64 = 256;

/// The open file limit that holds `config`'s limits: each session a socket
/// and a pidfd, each lease a buffer fd, plus the spare; and, in flight in
/// the stash (the kernel counts those against the same limit, per user),
/// each lease once, the dead entries not yet repacked (at most about as
/// many again) and a hot and a cold segment.
pub fn fds_needed(config: &crate::config::Config) -> (u64, u64) {
    let sessions = config.limits.sessions as u64;
    let leases = config.limits.leases as u64;
    let open = sessions * 2 + leases + FD_SPARE;
    let in_flight = 2 * leases + (HOT_MAX + 2 * COLD_MAX) as u64;
    (open, in_flight)
}

/// What to tell an operator when the open file limit `limit` cannot hold
/// `config`'s limits (empty when it can).
pub fn fd_limit_warnings(config: &crate::config::Config, limit: u64) -> Vec<String> {
    let (open, in_flight) = fds_needed(config);
    let mut out = Vec::new();
    if limit < open {
        out.push(format!(
            "the open file limit is {limit}, below the {open} that [limits] sessions = {} and leases = {} need; raise LimitNOFILE= (connections and grants beyond it fail)",
            config.limits.sessions, config.limits.leases
        ));
    }
    if config.fd_store != crate::config::FdStoreMode::No && limit < in_flight {
        out.push(format!(
            "the open file limit is {limit}, below the {in_flight} fds that [limits] leases = {} may keep in flight in the stash under systemd's fd store; raise LimitNOFILE= (grants beyond it are refused)",
            config.limits.leases
        ));
    }
    out
}

/// The fd store name of stash segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("stash-{n}")
}

/// Segment number of a stored name `stash-<n>`.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("stash-")?.parse().ok()
}

#[derive(Debug)]
struct Segment {
    /// The sending end (the receiving end is systemd's).
    tx: OwnedFd,
    /// Entries ever sent to it.
    total: usize,
    /// Live entries in it.
    ids: HashSet<LeaseId>,
}

/// The segments and where each live lease's buffer is.
#[derive(Debug, Default)]
pub struct Stash {
    segs: BTreeMap<u64, Segment>,
    hot: Option<u64>,
    cold: Option<u64>,
    next: u64,
    /// Live lease -> (segment, the daemon's own reference to its buffer).
    live: HashMap<LeaseId, (u64, SharedFd)>,
    /// Counters for STATUS and tests.
    stats: Stats,
}

/// What the stash did so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Segments put into the fd store.
    pub stored: u64,
    /// Segments removed from it.
    pub removed: u64,
    /// Entries moved from one segment into another.
    pub moved: u64,
}

fn err(what: &str, e: Errno) -> String {
    match e {
        Errno::ETOOMANYREFS => format!(
            "{what}: too many fds in flight for barkeepd's user (the kernel counts them against RLIMIT_NOFILE; raise LimitNOFILE= in barkeepd.service)"
        ),
        Errno::ECONNREFUSED => format!(
            "{what}: systemd closed the stash segment (is FileDescriptorStoreMax= too small, or 0? see `fd_store` in docs/config.md)"
        ),
        e => format!("{what}: {e}"),
    }
}

/// Sends `ids` with their `fds` as one message; `EAGAIN` when the segment
/// is full.
fn send(tx: &OwnedFd, ids: &[LeaseId], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
    debug_assert_eq!(ids.len(), fds.len());
    let mut payload = Vec::with_capacity(MAGIC.len() + ids.len() * ID_LEN);
    payload.extend_from_slice(MAGIC);
    for id in ids {
        payload.extend_from_slice(&id.0);
    }
    crate::sys::send_with_fds(
        tx.as_fd(),
        &payload,
        fds,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
}

/// One message read from a segment: its ids and fds.
type Message = (Vec<LeaseId>, Vec<OwnedFd>);

/// Reads the first message of `rx` without dequeuing it (the fds are
/// duplicates); `None` when the segment is empty.
fn peek(rx: &OwnedFd) -> Result<Option<Message>, String> {
    let mut buf = vec![0u8; MAGIC.len() + MAX_FDS * ID_LEN + 1];
    let got = match crate::sys::recv_with_fds(
        rx.as_fd(),
        &mut buf,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(d) => d,
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(err("cannot read a stash segment", e)),
    };
    if got.truncated {
        return Err(
            "cannot take the buffers out of a stash segment: the kernel dropped fds (MSG_CTRUNC), barkeepd is at its open file limit (raise LimitNOFILE= in barkeepd.service)".into(),
        );
    }
    let data = &buf[..got.len];
    let ids = match data.strip_prefix(MAGIC.as_slice()) {
        Some(rest) if rest.len() % ID_LEN == 0 => rest
            .chunks_exact(ID_LEN)
            .map(|c| LeaseId(c.try_into().expect("chunk of ID_LEN")))
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    Ok(Some((ids, got.fds)))
}

/// Dequeues the first message of `rx`; its fds are not taken (the kernel
/// closes them: no control buffer is offered).
fn drop_first(rx: &OwnedFd) -> Result<(), String> {
    let mut buf = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    loop {
        match recvmsg::<()>(rx.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(err("cannot dequeue a stash message", e)),
        }
    }
}

impl Stash {
    /// An empty stash whose first segment will be numbered `first`.
    pub fn new(first: u64) -> Stash {
        Stash {
            next: first,
            ..Stash::default()
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Whether `id` is stashed.
    pub fn contains(&self, id: &LeaseId) -> bool {
        self.live.contains_key(id)
    }

    /// Segments in use.
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// Entries in flight, live and dead (what counts against the fd limit).
    pub fn in_flight(&self) -> usize {
        self.segs.values().map(|s| s.total).sum()
    }

    /// What the stash did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Makes a segment and puts its receiving end into the store.
    fn new_segment(&mut self, store: &dyn Keeper) -> Result<u64, String> {
        let (tx, rx) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| err("cannot make a stash segment", e))?;
        // Capped by the kernel at net.core.wmem_max; the default
        // (wmem_default) is fine too, only rolls come more often.
        let _ = setsockopt(&tx, sockopt::SndBuf, &SNDBUF);
        let n = self.next;
        self.next += 1;
        store.keep(&segment_name(n), rx.as_fd())?;
        self.stats.stored += 1;
        self.segs.insert(
            n,
            Segment {
                tx,
                total: 0,
                ids: HashSet::new(),
            },
        );
        Ok(n)
    }

    /// Takes segment `n` out of the store; its queued fds die with it.
    fn remove_segment(&mut self, n: u64, store: &dyn Keeper) {
        if self.segs.remove(&n).is_some() {
            store.forget(&segment_name(n));
            self.stats.removed += 1;
        }
        if self.hot == Some(n) {
            self.hot = None;
        }
        if self.cold == Some(n) {
            self.cold = None;
        }
    }

    /// Stashes a newly granted lease's buffer. Call before the client gets
    /// its fd: an error means the lease must not be granted.
    pub fn put(&mut self, id: LeaseId, fd: &SharedFd, store: &dyn Keeper) -> Result<(), String> {
        if self.live.contains_key(&id) {
            return Ok(());
        }
        loop {
            let hot = match self.hot {
                Some(h) => h,
                None => {
                    let h = self.new_segment(store)?;
                    self.hot = Some(h);
                    h
                }
            };
            let seg = self.segs.get_mut(&hot).expect("hot segment exists");
            if seg.total >= HOT_MAX {
                self.roll(store)?;
                continue;
            }
            match send(&seg.tx, &[id], &[fd.as_fd()]) {
                Ok(()) => {
                    seg.total += 1;
                    seg.ids.insert(id);
                    self.live.insert(id, (hot, fd.clone()));
                    return Ok(());
                }
                Err(Errno::EAGAIN) if seg.total > 0 => self.roll(store)?,
                Err(e) => return Err(err("cannot stash the buffer", e)),
            }
        }
    }

    /// The hot segment is full: its live entries go to the cold segments,
    /// and the next put makes a new hot one.
    fn roll(&mut self, store: &dyn Keeper) -> Result<(), String> {
        let Some(old) = self.hot else { return Ok(()) };
        let ids: Vec<LeaseId> = self.segs[&old].ids.iter().copied().collect();
        // Packed first, removed after: each entry is in a stored segment
        // at every instant.
        self.hot = None;
        if let Err(e) = self.pack(&ids, store) {
            self.hot = Some(old);
            return Err(e);
        }
        self.remove_segment(old, store);
        Ok(())
    }

    /// Sends the live entries `ids` to the current cold segment (new ones
    /// as they fill), up to [`MAX_FDS`] per message, and moves them there.
    fn pack(&mut self, ids: &[LeaseId], store: &dyn Keeper) -> Result<(), String> {
        for chunk in ids.chunks(MAX_FDS) {
            let shared: Vec<SharedFd> = chunk.iter().map(|id| self.live[id].1.clone()).collect();
            let fds: Vec<BorrowedFd<'_>> = shared.iter().map(|f| f.as_fd()).collect();
            loop {
                let cold = match self.cold {
                    Some(c) => c,
                    None => {
                        let c = self.new_segment(store)?;
                        self.cold = Some(c);
                        c
                    }
                };
                let seg = self.segs.get_mut(&cold).expect("cold segment exists");
                if seg.total + chunk.len() > COLD_MAX {
                    self.cold = None;
                    continue;
                }
                match send(&seg.tx, chunk, &fds) {
                    Ok(()) => {
                        seg.total += chunk.len();
                        seg.ids.extend(chunk.iter().copied());
                        for id in chunk {
                            let entry = self.live.get_mut(id).expect("live entry");
                            let from = std::mem::replace(&mut entry.0, cold);
                            if let Some(s) = self.segs.get_mut(&from) {
                                s.ids.remove(id);
                            }
                        }
                        self.stats.moved += chunk.len() as u64;
                        break;
                    }
                    Err(Errno::EAGAIN) if seg.total > 0 => self.cold = None,
                    Err(e) => return Err(err("cannot move stashed buffers", e)),
                }
            }
        }
        Ok(())
    }

    /// A lease ended (its buffer revoked or let go): its entry is dead. A
    /// cold segment more than half dead is repacked and removed.
    pub fn mark_dead(&mut self, id: &LeaseId, store: &dyn Keeper) {
        let Some((n, _fd)) = self.live.remove(id) else {
            return;
        };
        let Some(seg) = self.segs.get_mut(&n) else {
            return;
        };
        seg.ids.remove(id);
        if self.hot == Some(n) || seg.ids.len() * 2 >= seg.total {
            return;
        }
        if self.cold == Some(n) {
            if seg.total < REPACK_MIN {
                return;
            }
            self.cold = None;
        }
        let ids: Vec<LeaseId> = seg.ids.iter().copied().collect();
        match self.pack(&ids, store) {
            Ok(()) => self.remove_segment(n, store),
            Err(e) => tracing::warn!("cannot compact the stash (tried again later): {e}"),
        }
    }

    /// Marks dead every live entry `keep` rejects.
    pub fn retain(&mut self, keep: impl Fn(&LeaseId) -> bool, store: &dyn Keeper) {
        let dead: Vec<LeaseId> = self.live.keys().filter(|id| !keep(id)).copied().collect();
        for id in dead {
            self.mark_dead(&id, store);
        }
    }

    /// Gives the stash the daemon's reference to a stashed buffer (so that
    /// it does not keep a second fd of its own).
    pub fn share(&mut self, id: &LeaseId, fd: &SharedFd) {
        if let Some(entry) = self.live.get_mut(id) {
            entry.1 = fd.clone();
        }
    }

    /// Takes back what a predecessor stashed in the segments `old` (from
    /// `LISTEN_FDS`): every buffer `keep` accepts is first sent into this
    /// stash's own (stored) segments, and only then dequeued from the old
    /// one; the old segments leave the store at the end. Returns every
    /// buffer found, by lease id (copies in several segments merged).
    pub fn restore(
        &mut self,
        old: Vec<(u64, OwnedFd)>,
        keep: impl Fn(&LeaseId) -> bool,
        store: &dyn Keeper,
    ) -> Result<BTreeMap<LeaseId, SharedFd>, String> {
        if let Some(max) = old.iter().map(|(n, _)| *n).max() {
            self.next = self.next.max(max + 1);
        }
        let mut found: BTreeMap<LeaseId, SharedFd> = BTreeMap::new();
        for (n, rx) in &old {
            let mut messages = 0usize;
            while let Some((ids, fds)) = peek(rx)? {
                messages += 1;
                if ids.len() != fds.len() {
                    tracing::error!(
                        segment = n,
                        ids = ids.len(),
                        fds = fds.len(),
                        "a stash message whose ids and fds do not match: its buffers are closed"
                    );
                }
                let mut fresh = Vec::new();
                for (id, fd) in ids.into_iter().zip(fds) {
                    if found.contains_key(&id) || self.live.contains_key(&id) {
                        continue;
                    }
                    let fd: SharedFd = Arc::new(fd);
                    if keep(&id) {
                        self.live.insert(id, (u64::MAX, fd.clone()));
                        fresh.push(id);
                    }
                    found.insert(id, fd);
                }
                if let Err(e) = self.pack(&fresh, store) {
                    for id in &fresh {
                        self.live.remove(id);
                    }
                    return Err(e);
                }
                drop_first(rx)?;
            }
            tracing::debug!(segment = n, messages, "stash segment read");
        }
        for (n, _) in &old {
            store.forget(&segment_name(*n));
            self.stats.removed += 1;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(i: usize) -> SharedFd {
        Arc::new(crate::sys::memfd(&format!("bk:t{i}"), 4096).unwrap())
    }

    fn id(i: usize) -> LeaseId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        b[15] = 0xbb;
        LeaseId(b)
    }

    fn size(fd: &SharedFd) -> u64 {
        crate::sys::file_size(fd.as_fd()).unwrap()
    }

    /// These tests hold a few thousand buffers at once, and the tests of
    /// this crate share one process: a normal user's soft limit (often
    /// 1024) is raised to the hard one, as barkeepd does at start.
    fn enough_fds() {
        crate::sys::raise_fd_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    }

    #[test]
    fn grants_roll_into_packed_segments_and_deaths_compact_them() {
        enough_fds();
        let keeper = LocalKeeper::default();
        let mut stash = Stash::new(1);
        let fds: Vec<SharedFd> = (0..3000).map(memfd).collect();
        for (i, fd) in fds.iter().enumerate() {
            stash.put(id(i), fd, &keeper).unwrap();
        }
        assert_eq!(stash.len(), 3000);
        // Rolled: the hot segment holds a few hundred at most, the rest is
        // packed 253 to a message into few segments.
        assert!(stash.stats().moved > 0, "{:?}", stash.stats());
        assert!(stash.segments() <= 3, "{} segments", stash.segments());
        assert_eq!(keeper.segments().len(), stash.segments());
        for i in 0..2900 {
            stash.mark_dead(&id(i), &keeper);
        }
        assert_eq!(stash.len(), 100);
        // Compaction keeps the dead in flight bounded.
        assert!(
            stash.in_flight() < 100 + 2 * REPACK_MIN + 1000,
            "{} in flight",
            stash.in_flight()
        );
        assert_eq!(keeper.segments().len(), stash.segments());
    }

    #[test]
    fn a_successor_gets_every_live_buffer_back_and_the_old_segments_go_last() {
        enough_fds();
        let keeper = LocalKeeper::default();
        let mut first = Stash::new(1);
        let fds: Vec<SharedFd> = (0..2000).map(memfd).collect();
        for (i, fd) in fds.iter().enumerate() {
            first.put(id(i), fd, &keeper).unwrap();
        }
        for i in (0..2000).step_by(3) {
            first.mark_dead(&id(i), &keeper);
        }
        let live: BTreeMap<LeaseId, ()> = (0..2000)
            .filter(|i| i % 3 != 0)
            .map(|i| (id(i), ()))
            .collect();
        // The daemon dies: only the kept receiving ends remain.
        let old = keeper.segments();
        let old_names: Vec<u64> = old.iter().map(|(n, _)| *n).collect();
        drop(first);
        // Write through the original fds; the restored ones are the same
        // files.
        crate::sys::pwrite_all(fds[1].as_fd(), b"xyz", 0).unwrap();

        let mut second = Stash::new(1);
        let found = second
            .restore(old, |i| live.contains_key(i), &keeper)
            .unwrap();
        for i in 0..2000 {
            assert!(
                i % 3 == 0 || found.contains_key(&id(i)),
                "live lease {i} came back"
            );
        }
        let mut got = [0u8; 3];
        crate::sys::pread_exact(found[&id(1)].as_fd(), &mut got, 0).unwrap();
        assert_eq!(&got, b"xyz");
        assert_eq!(second.len(), live.len());
        // Only the new segments are kept now, numbered after the old ones.
        let now: Vec<u64> = keeper.segments().iter().map(|(n, _)| *n).collect();
        assert!(now.iter().all(|n| !old_names.contains(n)), "{now:?}");
        assert!(now.iter().all(|n| n > old_names.iter().max().unwrap()));

        // And a third daemon finds them in the second's segments.
        let again = keeper.segments();
        drop(second);
        let mut third = Stash::new(1);
        let found = third.restore(again, |_| true, &keeper).unwrap();
        assert_eq!(found.len(), live.len());
        assert!(found.values().all(|fd| size(fd) == 4096));
    }

    #[test]
    fn a_restore_cut_short_leaves_every_buffer_in_some_kept_segment() {
        enough_fds();
        let keeper = LocalKeeper::default();
        let mut first = Stash::new(1);
        let fds: Vec<SharedFd> = (0..1000).map(memfd).collect();
        for (i, fd) in fds.iter().enumerate() {
            first.put(id(i), fd, &keeper).unwrap();
        }
        drop(first);
        // A successor dies half way through: it copied the first segment
        // and dequeued part of it, then nothing more.
        let old = keeper.segments();
        let (n0, rx0) = &old[0];
        let mut partial = Stash::new(100);
        let mut copied = 0;
        for _ in 0..2 {
            let Some((ids, fds)) = peek(rx0).unwrap() else {
                break;
            };
            let fresh: Vec<LeaseId> = ids.clone();
            for (i, fd) in ids.into_iter().zip(fds) {
                partial.live.insert(i, (u64::MAX, Arc::new(fd)));
            }
            partial.pack(&fresh, &keeper).unwrap();
            drop_first(rx0).unwrap();
            copied += fresh.len();
        }
        assert!(copied > 0);
        let _ = n0;
        drop(partial);
        drop(old);
        // Old and new segments are both kept: all 1000 are there, once.
        let mut third = Stash::new(1);
        let found = third.restore(keeper.segments(), |_| true, &keeper).unwrap();
        assert_eq!(found.len(), 1000);
    }
}
