//! The lease table: who holds which slice, the overlap rules, usage counts
//! for quotas, and leases whose buffers may outlive them. Pure: the
//! backend's buffer rides along as an opaque payload `B`.
//!
//! Overlap rules (same device and BAR): an exclusive lease (by default every
//! read-write lease; a grant's `exclusive` says otherwise) conflicts with
//! every overlapping lease; shared leases (by default read-only ones) may
//! overlap each other. A lingering lease (ended, but its buffer may still be
//! mapped because the kernel cannot revoke one buffer) blocks overlapping
//! ranges with `RangeBusy` when either side is read-write or exclusive,
//! until a device-wide revoke clears it.
//!
//! States: `Active` (held by a session), `Kept` (its session ended and its
//! grant said `on_disconnect = "keep"`: buffer live, no session),
//! `AwaitingReclaim` (restored after a daemon restart: buffer live, waiting
//! for its holder to reclaim it with its token) and `Lingering` (ended,
//! buffer maybe live).

use barkeep_protocol::{
    Access, ErrorCode, ErrorReply, Lease, LeaseId, LeaseInfo, LeaseState, PeerIdentity, Range,
    ReclaimToken,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// One entry of the table.
#[derive(Debug)]
pub struct Entry<B> {
    /// The lease as the client sees it.
    pub lease: Lease,
    /// Holder's session.
    pub session: u64,
    /// Holder's client name.
    pub client_name: String,
    /// Holder's identity.
    pub holder: PeerIdentity,
    /// When it was granted.
    pub granted: Instant,
    /// Active, kept or lingering.
    pub state: LeaseState,
    /// The backend's buffer while the lease is active or kept.
    pub payload: Option<B>,
    /// The grant that decided it (0-based index into the policy in force;
    /// re-decided on reload).
    pub grant: usize,
    /// Whether it may overlap no other lease.
    pub exclusive: bool,
    /// Whether it stays (`Kept`) when its session ends.
    pub keep: bool,
    /// The secret its holder presents to take it over from a new session.
    pub reclaim: ReclaimToken,
}

impl<B> Entry<B> {
    /// Active, kept or awaiting reclaim: the buffer is live and belongs to
    /// someone.
    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            LeaseState::Active | LeaseState::Kept | LeaseState::AwaitingReclaim
        )
    }
}

impl<B> Entry<B> {
    /// The entry as [`barkeep_protocol::Request::ListLeases`] shows it.
    pub fn info(&self) -> LeaseInfo {
        LeaseInfo {
            lease: self.lease.clone(),
            session: self.session,
            client_name: self.client_name.clone(),
            holder: self.holder.clone(),
            age_ms: self.granted.elapsed().as_millis() as u64,
            state: self.state,
        }
    }
}

/// The entries of one BAR by offset, so that finding the leases a range
/// overlaps looks at those near it, not at every lease of the daemon.
#[derive(Debug, Default)]
struct BarIndex {
    by_offset: BTreeSet<(u64, LeaseId)>,
    /// The entries that can refuse a shared lease (exclusive or lingering
    /// ones), so that checking a shared request over thousands of shared
    /// leases looks at none of them.
    strong: BTreeSet<(u64, LeaseId)>,
    /// The longest lease ever indexed here: a lease overlapping a range
    /// starts at most this far before it.
    longest: u64,
}

/// All leases of the daemon.
#[derive(Debug)]
pub struct LeaseTable<B> {
    entries: HashMap<LeaseId, Entry<B>>,
    /// Active leases per session, in grant order.
    by_session: BTreeMap<u64, Vec<LeaseId>>,
    /// Every entry by device, BAR and offset.
    by_bar: HashMap<String, HashMap<u32, BarIndex>>,
    /// Number and bytes of the leases (live and lingering) of each holder
    /// uid.
    by_uid: HashMap<u32, (u64, u64)>,
    /// Every entry's place in grant order (a number never reused), and the
    /// entries by it: what listing pages go by.
    seq: HashMap<LeaseId, u64>,
    order: BTreeMap<u64, LeaseId>,
    next_seq: u64,
    /// Leases added, changed or removed since [`LeaseTable::take_changed`],
    /// when asked to keep track ([`LeaseTable::track_changes`]).
    changed: Option<Vec<LeaseId>>,
}

impl<B> Default for LeaseTable<B> {
    fn default() -> Self {
        LeaseTable {
            entries: HashMap::new(),
            by_session: BTreeMap::new(),
            by_bar: HashMap::new(),
            by_uid: HashMap::new(),
            seq: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 1,
            changed: None,
        }
    }
}

impl<B> LeaseTable<B> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps track of the leases that change, for a journal that records
    /// only those ([`LeaseTable::take_changed`]).
    pub fn track_changes(&mut self) {
        self.changed.get_or_insert_with(Vec::new);
    }

    /// The leases added, changed or removed since the last call (each
    /// once); empty unless tracking.
    pub fn take_changed(&mut self) -> Vec<LeaseId> {
        let Some(changed) = self.changed.as_mut() else {
            return Vec::new();
        };
        let mut ids = std::mem::take(changed);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn touch(&mut self, id: &LeaseId) {
        if let Some(changed) = self.changed.as_mut() {
            changed.push(*id);
        }
    }

    /// A fresh lease id: 128 random bits, distinct from every id in the table.
    pub fn new_id(&self) -> Result<LeaseId, ErrorReply> {
        loop {
            let bytes = crate::random::bytes16().map_err(|e| {
                ErrorReply::new(
                    ErrorCode::Internal,
                    format!("no random bytes for a lease id: {e}"),
                )
            })?;
            let id = LeaseId(bytes);
            if !self.entries.contains_key(&id) {
                return Ok(id);
            }
        }
    }

    /// Checks that a new lease of `range` with `access` on `device` `bar`
    /// (`exclusive` or shared) would not conflict: `Conflict` names the
    /// live holder, `RangeBusy` the lingering one.
    pub fn check(
        &self,
        device: &str,
        bar: u32,
        range: Range,
        access: Access,
        exclusive: bool,
    ) -> Result<(), ErrorReply> {
        let Some(index) = self.by_bar.get(device).and_then(|b| b.get(&bar)) else {
            return Ok(());
        };
        let from = (range.offset.saturating_sub(index.longest), LeaseId([0; 16]));
        // A shared request can only clash with exclusive or lingering
        // entries: the cost of the check does not grow with the shared
        // leases around it.
        let set = if exclusive {
            &index.by_offset
        } else {
            &index.strong
        };
        let nearby: Box<dyn Iterator<Item = &(u64, LeaseId)>> = match range.end() {
            Some(end) => Box::new(set.range(from..(end, LeaseId([0; 16])))),
            None => Box::new(set.iter()),
        };
        let mut clashes = nearby
            .filter_map(|(_, id)| self.entries.get(id))
            .filter(|e| {
                exclusive
                    || e.exclusive
                    || (e.state == LeaseState::Lingering
                        && (access == Access::ReadWrite || e.lease.access == Access::ReadWrite))
            })
            .filter(|e| e.lease.range().overlaps(&range));
        // Report a live holder first (the one a user can ask), but stop at
        // the first one: an exclusive request over thousands of leases is
        // refused after one look.
        let mut clash = None;
        for e in clashes.by_ref() {
            if e.is_live() {
                clash = Some(e);
                break;
            }
            clash.get_or_insert(e);
        }
        let Some(e) = clash else { return Ok(()) };
        let l = &e.lease;
        match e.state {
            LeaseState::Active | LeaseState::Kept | LeaseState::AwaitingReclaim => Err(ErrorReply::new(
                ErrorCode::Conflict,
                format!(
                    "{range} ({access}) overlaps {}lease {} ({}, {}{}, {}); {}",
                    if e.state == LeaseState::Kept { "kept " } else { "" },
                    l.id,
                    l.range(),
                    l.access,
                    if e.exclusive { " exclusive" } else { "" },
                    holder_text(e),
                    if exclusive {
                        "this slice is exclusive and cannot overlap another lease: wait for its release or pick another range"
                    } else {
                        "that lease is exclusive: wait for its release or pick another range"
                    }
                ),
            )),
            LeaseState::Lingering => Err(ErrorReply::new(
                ErrorCode::RangeBusy,
                format!(
                    "{range} overlaps ended lease {} ({}, {}), whose buffer this kernel cannot revoke on its own and may still be mapped; an administrator frees it by revoking device {:?} as a whole",
                    l.id,
                    l.range(),
                    l.access,
                    l.device
                ),
            )),
        }
    }

    /// Adds an active lease (its `session` must be set).
    pub fn insert(&mut self, entry: Entry<B>) {
        self.by_session
            .entry(entry.session)
            .or_default()
            .push(entry.lease.id);
        self.add(entry);
    }

    /// Adds an entry to the table and its indexes (not to a session).
    fn add(&mut self, entry: Entry<B>) {
        let l = &entry.lease;
        let index = self
            .by_bar
            .entry(l.device.clone())
            .or_default()
            .entry(l.bar)
            .or_default();
        index.by_offset.insert((l.offset, l.id));
        if entry.exclusive || entry.state == LeaseState::Lingering {
            index.strong.insert((l.offset, l.id));
        }
        index.longest = index.longest.max(l.length);
        self.count(entry.holder.uid, l.length, true);
        let id = l.id;
        self.touch(&id);
        if let Some(old) = self.entries.insert(id, entry) {
            // Ids are unique; should one come twice, forget the first.
            self.unindex(&old);
        }
        self.seq.insert(id, self.next_seq);
        self.order.insert(self.next_seq, id);
        self.next_seq += 1;
    }

    /// Takes an entry out of the indexes (not out of its session).
    fn unindex(&mut self, e: &Entry<B>) {
        let l = &e.lease;
        if let Some(bars) = self.by_bar.get_mut(&l.device) {
            if let Some(index) = bars.get_mut(&l.bar) {
                index.by_offset.remove(&(l.offset, l.id));
                index.strong.remove(&(l.offset, l.id));
                if index.by_offset.is_empty() {
                    bars.remove(&l.bar);
                }
            }
            if bars.is_empty() {
                self.by_bar.remove(&l.device);
            }
        }
        self.count(e.holder.uid, l.length, false);
        if let Some(seq) = self.seq.remove(&l.id) {
            self.order.remove(&seq);
        }
    }

    /// Puts an entry in its BAR's strong index, or takes it out, as its
    /// exclusivity and state say (after a change of state).
    fn restrong(&mut self, id: &LeaseId) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        let l = &e.lease;
        let strong = e.exclusive || e.state == LeaseState::Lingering;
        if let Some(index) = self
            .by_bar
            .get_mut(&l.device)
            .and_then(|b| b.get_mut(&l.bar))
        {
            if strong {
                index.strong.insert((l.offset, l.id));
            } else {
                index.strong.remove(&(l.offset, l.id));
            }
        }
    }

    /// Counts a lease (live or lingering) of `length` bytes for `uid` in
    /// or out.
    fn count(&mut self, uid: u32, length: u64, add: bool) {
        let usage = self.by_uid.entry(uid).or_insert((0, 0));
        if add {
            usage.0 += 1;
            usage.1 = usage.1.saturating_add(length);
        } else {
            usage.0 = usage.0.saturating_sub(1);
            usage.1 = usage.1.saturating_sub(length);
        }
        if usage.0 == 0 {
            self.by_uid.remove(&uid);
        }
    }

    /// The entry with this id.
    pub fn get(&self, id: &LeaseId) -> Option<&Entry<B>> {
        self.entries.get(id)
    }

    /// Ends a lease: removes it from its session and takes its buffer.
    /// The entry stays (as active) until [`LeaseTable::remove`] or
    /// [`LeaseTable::linger`] says what became of the buffer.
    pub fn take_payload(&mut self, id: &LeaseId) -> Option<B> {
        self.entries.get_mut(id)?.payload.take()
    }

    /// Forgets a lease whose buffer is dead.
    pub fn remove(&mut self, id: &LeaseId) -> Option<Entry<B>> {
        let entry = self.entries.remove(id)?;
        self.unlink(entry.session, id);
        self.unindex(&entry);
        self.touch(id);
        Some(entry)
    }

    /// Marks a lease lingering: it no longer belongs to its session, but its
    /// range stays busy until [`LeaseTable::clear_lingering`].
    pub fn linger(&mut self, id: &LeaseId) {
        if let Some(e) = self.entries.get_mut(id) {
            e.state = LeaseState::Lingering;
            e.payload = None;
            // Still counted for its uid: a buffer that may be mapped is
            // the holder's until a device-wide revoke kills it.
            let session = e.session;
            self.restrong(id);
            self.unlink(session, id);
            self.touch(id);
        }
    }

    /// Marks a lease kept: its session ended, its buffer stays live, and it
    /// belongs to no session until an administrator revokes it.
    pub fn keep(&mut self, id: &LeaseId) {
        if let Some(e) = self.entries.get_mut(id) {
            e.state = LeaseState::Kept;
            let session = e.session;
            self.restrong(id);
            self.unlink(session, id);
            self.touch(id);
        }
    }

    /// Gives a kept or restored lease to `session`: it becomes active, held
    /// by `holder` (the reclaiming peer).
    pub fn adopt(&mut self, id: &LeaseId, session: u64, holder: PeerIdentity, client_name: String) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        let (old, old_uid, length) = (e.session, e.holder.uid, e.lease.length);
        let uid = holder.uid;
        e.session = session;
        e.holder = holder;
        e.client_name = client_name;
        e.state = LeaseState::Active;
        self.unlink(old, id);
        self.by_session.entry(session).or_default().push(*id);
        self.count(old_uid, length, false);
        self.count(uid, length, true);
        self.restrong(id);
        self.touch(id);
    }

    /// Adds a lease restored after a restart, in its state (awaiting
    /// reclaim, kept or lingering): no session holds it until its holder
    /// reclaims it.
    pub fn restore(&mut self, entry: Entry<B>) {
        self.add(entry);
    }

    /// Records the grant that allows a lease under a new policy.
    pub fn regrant(&mut self, id: &LeaseId, grant: usize, keep: bool) {
        if let Some(e) = self.entries.get_mut(id) {
            e.grant = grant;
            e.keep = keep;
            self.touch(id);
        }
    }

    /// Live (active and kept) leases for which `select` is true, oldest
    /// first.
    pub fn select(&self, select: impl Fn(&Entry<B>) -> bool) -> Vec<LeaseId> {
        let mut v: Vec<&Entry<B>> = self
            .entries
            .values()
            .filter(|e| e.is_live() && select(e))
            .collect();
        v.sort_by_key(|e| e.granted);
        v.into_iter().map(|e| e.lease.id).collect()
    }

    /// Number and total bytes of the leases (live and lingering) for which
    /// `select` is true: what quotas count.
    pub fn usage(&self, select: impl Fn(&Entry<B>) -> bool) -> (u64, u64) {
        self.entries
            .values()
            .filter(|e| select(e))
            .fold((0, 0), |(n, b), e| {
                (n + 1, b.saturating_add(e.lease.length))
            })
    }

    /// Number and total bytes of the leases held by `uid`, lingering ones
    /// included (a lease whose revoke failed is still its holder's, so a
    /// uid cannot exceed its quota by making revokes fail); cheap: kept up
    /// to date as leases come and go.
    pub fn uid_usage(&self, uid: u32) -> (u64, u64) {
        self.by_uid.get(&uid).copied().unwrap_or((0, 0))
    }

    /// Number of a session's active leases (cheap).
    pub fn session_count(&self, session: u64) -> usize {
        self.by_session.get(&session).map_or(0, Vec::len)
    }

    /// Number and total bytes of a session's active leases for which
    /// `select` is true (cheap: looks at that session's leases only).
    pub fn session_usage(&self, session: u64, select: impl Fn(&Entry<B>) -> bool) -> (u64, u64) {
        self.by_session
            .get(&session)
            .into_iter()
            .flatten()
            .filter_map(|id| self.entries.get(id))
            .filter(|e| select(e))
            .fold((0, 0), |(n, b), e| {
                (n + 1, b.saturating_add(e.lease.length))
            })
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<B>> {
        self.entries.values()
    }

    /// Number of entries (live and lingering): what the daemon holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn unlink(&mut self, session: u64, id: &LeaseId) {
        if let Some(list) = self.by_session.get_mut(&session) {
            list.retain(|x| x != id);
            if list.is_empty() {
                self.by_session.remove(&session);
            }
        }
    }

    /// Drops the lingering leases of a device (after a device-wide revoke
    /// killed every buffer); returns how many.
    pub fn clear_lingering(&mut self, device: &str) -> usize {
        let ids: Vec<LeaseId> = self
            .entries
            .values()
            .filter(|e| e.state == LeaseState::Lingering && e.lease.device == device)
            .map(|e| e.lease.id)
            .collect();
        for id in &ids {
            if let Some(e) = self.entries.remove(id) {
                self.unindex(&e);
                self.touch(id);
            }
        }
        ids.len()
    }

    /// One page of a listing: every lease (`uid` `None`, as
    /// [`LeaseTable::list`] with `None`) or the live leases of one uid from
    /// all its sessions (as [`LeaseTable::list_of_uid`]), the entries after
    /// place `after` (0: from the first) in grant order, as many as `budget`
    /// encoded bytes hold (at least one), and the place to go on from
    /// (`None` after the last). Every lease costs the page; a uid's page
    /// also walks past other uids' leases.
    pub fn page(
        &self,
        uid: Option<u32>,
        after: u64,
        budget: usize,
    ) -> (Vec<LeaseInfo>, Option<u64>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let entries = self
            .order
            .range((Excluded(after), Unbounded))
            .filter_map(|(&s, id)| Some((s, self.entries.get(id)?)))
            .filter(|(_, e)| uid.is_none_or(|u| e.holder.uid == u && e.is_live()));
        let mut page = Vec::new();
        let mut used = 0usize;
        let mut last = after;
        for (seq, e) in entries {
            let info = e.info();
            let n = barkeep_protocol::encoded_len(&info);
            if !page.is_empty() && used.saturating_add(n) > budget {
                return (page, Some(last));
            }
            used = used.saturating_add(n);
            page.push(info);
            last = seq;
        }
        (page, None)
    }

    /// Active leases of a session, in grant order.
    pub fn of_session(&self, session: u64) -> Vec<LeaseId> {
        self.by_session.get(&session).cloned().unwrap_or_default()
    }

    /// Live (active and kept) leases of a device, oldest first.
    pub fn of_device(&self, device: &str) -> Vec<LeaseId> {
        self.select(|e| e.lease.device == device)
    }

    /// Every live (active and kept) lease id, oldest first.
    pub fn active(&self) -> Vec<LeaseId> {
        self.select(|_| true)
    }

    /// Number of live (active and kept) leases.
    pub fn active_count(&self) -> usize {
        self.entries.values().filter(|e| e.is_live()).count()
    }

    /// Number of live (active and kept) leases of a device.
    pub fn active_on(&self, device: &str) -> usize {
        self.entries
            .values()
            .filter(|e| e.is_live() && e.lease.device == device)
            .count()
    }

    /// Listing: one session's active leases, or every lease (active, kept
    /// and lingering) when `session` is `None`; oldest first.
    pub fn list(&self, session: Option<u64>) -> Vec<LeaseInfo> {
        let mut v: Vec<&Entry<B>> = match session {
            Some(s) => self
                .of_session(s)
                .iter()
                .filter_map(|id| self.entries.get(id))
                .collect(),
            None => self.entries.values().collect(),
        };
        v.sort_by_key(|e| e.granted);
        v.into_iter().map(Entry::info).collect()
    }

    /// The live leases held by `uid`, from all its sessions, oldest first
    /// (what `barkeep leases` shows a user: every CLI run is a new session).
    pub fn list_of_uid(&self, uid: u32) -> Vec<LeaseInfo> {
        let mut v: Vec<&Entry<B>> = self
            .entries
            .values()
            .filter(|e| e.holder.uid == uid && e.is_live())
            .collect();
        v.sort_by_key(|e| e.granted);
        v.into_iter().map(Entry::info).collect()
    }
}

/// "uid 1001, pid 77, /system.slice/a.service, session 3": who holds a lease.
fn holder_text<B>(e: &Entry<B>) -> String {
    let mut s = format!("uid {}", e.holder.uid);
    if e.holder.pid > 0 {
        s.push_str(&format!(", pid {}", e.holder.pid));
    }
    if let Some(c) = &e.holder.cgroup {
        s.push_str(&format!(", {c}"));
    }
    s.push_str(&format!(", session {}", e.session));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use barkeep_protocol::MemAttr;

    fn add(
        t: &mut LeaseTable<u32>,
        session: u64,
        dev: &str,
        bar: u32,
        range: Range,
        access: Access,
    ) -> Result<LeaseId, ErrorReply> {
        add_with(
            t,
            session,
            dev,
            bar,
            range,
            access,
            access == Access::ReadWrite,
        )
    }

    fn add_with(
        t: &mut LeaseTable<u32>,
        session: u64,
        dev: &str,
        bar: u32,
        range: Range,
        access: Access,
        exclusive: bool,
    ) -> Result<LeaseId, ErrorReply> {
        t.check(dev, bar, range, access, exclusive)?;
        let id = t.new_id().unwrap();
        t.insert(Entry {
            lease: Lease {
                id,
                device: dev.into(),
                bar,
                offset: range.offset,
                length: range.length,
                access,
                memattr: MemAttr::Uncached,
                buffer_name: String::new(),
            },
            session,
            client_name: "t".into(),
            holder: PeerIdentity {
                uid: 1000 + session as u32,
                ..Default::default()
            },
            granted: Instant::now(),
            state: LeaseState::Active,
            payload: Some(7),
            grant: session as usize % 2,
            exclusive,
            keep: false,
            reclaim: ReclaimToken([session as u8; 16]),
        });
        Ok(id)
    }

    const RO: Access = Access::ReadOnly;
    const RW: Access = Access::ReadWrite;

    #[test]
    fn a_uid_lists_its_live_leases_from_every_session_and_no_one_elses() {
        let mut t = LeaseTable::new();
        let a = add(&mut t, 3, "d", 0, Range::new(0x0, 0x1000), RW).unwrap();
        let b = add(&mut t, 4, "d", 0, Range::new(0x1000, 0x1000), RW).unwrap();
        let other = add(&mut t, 5, "d", 0, Range::new(0x2000, 0x1000), RW).unwrap();
        // Session 4 belongs to uid 1003 too (the helper gives 1000 + session).
        t.entries.get_mut(&b).unwrap().holder.uid = 1003;
        let ids: Vec<LeaseId> = t.list_of_uid(1003).iter().map(|i| i.lease.id).collect();
        assert_eq!(ids, [a, b]);
        assert_eq!(t.list_of_uid(1005)[0].lease.id, other);
        assert!(t.list_of_uid(1004).is_empty());
        // A lingering lease is no longer live.
        t.entries.get_mut(&a).unwrap().state = LeaseState::Lingering;
        let ids: Vec<LeaseId> = t.list_of_uid(1003).iter().map(|i| i.lease.id).collect();
        assert_eq!(ids, [b]);
    }

    #[test]
    fn overlap_rules() {
        let mut t = LeaseTable::new();
        let a = add(&mut t, 3, "d", 0, Range::new(0x2000, 0x2000), RW).unwrap();
        let e = add(&mut t, 4, "d", 0, Range::new(0x3000, 0x1000), RW).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(
            e.message.contains(&format!(
                "0x3000+0x1000 (rw) overlaps lease {a} (0x2000+0x2000, rw exclusive, uid 1003, session 3)"
            )),
            "{}",
            e.message
        );
        assert_eq!(
            add(&mut t, 4, "d", 0, Range::new(0x2000, 0x1000), RO)
                .unwrap_err()
                .code,
            ErrorCode::Conflict
        );
        // Adjacent ranges, other BARs and other devices do not conflict.
        add(&mut t, 4, "d", 0, Range::new(0x4000, 0x1000), RW).unwrap();
        add(&mut t, 4, "d", 0, Range::new(0x1000, 0x1000), RW).unwrap();
        add(&mut t, 4, "d", 2, Range::new(0x2000, 0x1000), RW).unwrap();
        add(&mut t, 4, "e", 0, Range::new(0x2000, 0x1000), RW).unwrap();
        // Read-only may overlap read-only, not read-write.
        add(&mut t, 5, "d", 0, Range::new(0x8000, 0x2000), RO).unwrap();
        add(&mut t, 6, "d", 0, Range::new(0x9000, 0x2000), RO).unwrap();
        assert_eq!(
            add(&mut t, 6, "d", 0, Range::new(0x9000, 0x1000), RW)
                .unwrap_err()
                .code,
            ErrorCode::Conflict
        );
        // Releasing frees the range.
        t.take_payload(&a);
        t.remove(&a);
        add(&mut t, 4, "d", 0, Range::new(0x3000, 0x1000), RW).unwrap();
    }

    #[test]
    fn sessions_and_listing() {
        let mut t = LeaseTable::new();
        let a = add(&mut t, 1, "d", 0, Range::new(0, 0x1000), RO).unwrap();
        let b = add(&mut t, 1, "d", 0, Range::new(0x1000, 0x1000), RO).unwrap();
        let c = add(&mut t, 2, "d", 0, Range::new(0x2000, 0x1000), RO).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.of_session(1), vec![a, b]);
        assert_eq!(t.of_session(2), vec![c]);
        assert_eq!(t.list(Some(1)).len(), 2);
        assert_eq!(t.list(None).len(), 3);
        assert_eq!(t.active_count(), 3);
        assert_eq!(t.take_payload(&a), Some(7));
        assert_eq!(t.take_payload(&a), None, "a buffer is revoked once");
        t.remove(&a);
        t.remove(&b);
        assert!(t.of_session(1).is_empty());
        assert_eq!(t.active_count(), 1);
    }

    /// Every page of a listing, followed from the first.
    fn pages(t: &LeaseTable<u32>, uid: Option<u32>, budget: usize) -> Vec<Vec<LeaseId>> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let (page, next) = t.page(uid, after, budget);
            out.push(page.iter().map(|i| i.lease.id).collect());
            match next {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    #[test]
    fn listings_page_in_grant_order_within_a_byte_budget() {
        let mut t = LeaseTable::new();
        let mut ids = Vec::new();
        for k in 0..300u64 {
            let session = 1 + k % 3;
            ids.push(add(&mut t, session, "d", 0, Range::new(k * 0x1000, 0x1000), RO).unwrap());
        }
        let one = barkeep_protocol::encoded_len(&t.get(&ids[0]).unwrap().info());
        // Ten entries' worth a page: 30 pages of every lease, in order.
        let all = pages(&t, None, 10 * one + one / 2);
        assert!(all.len() >= 30, "{} pages", all.len());
        assert!(all.iter().all(|p| !p.is_empty() && p.len() <= 10));
        assert_eq!(all.concat(), ids);
        let s2: Vec<LeaseId> = ids.iter().skip(1).step_by(3).copied().collect();
        // uid 1002 is session 2's holder (see `add_with`).
        assert_eq!(pages(&t, Some(1002), 10 * one).concat(), s2);
        // A budget smaller than one entry still makes progress.
        assert_eq!(pages(&t, Some(1003), 1).len(), 100);
        // Leases ending and coming between pages: the rest is listed once,
        // newcomers at the end.
        let (first, next) = t.page(None, 0, 100 * one);
        let n = first.len();
        assert!((50..=100).contains(&n), "{n}");
        for id in &ids[n / 2..n + 50] {
            t.remove(id);
        }
        let new = add(&mut t, 1, "d", 1, Range::new(0, 0x1000), RO).unwrap();
        let mut rest = Vec::new();
        let mut after = next.unwrap();
        loop {
            let (page, next) = t.page(None, after, 7 * one);
            rest.extend(page.iter().map(|i| i.lease.id));
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        let mut want: Vec<LeaseId> = ids[n + 50..].to_vec();
        want.push(new);
        assert_eq!(rest, want);
        // Nothing left of the removed ones in the order index.
        assert_eq!(t.order.len(), t.len());
        assert_eq!(t.seq.len(), t.len());
    }

    #[test]
    fn the_default_limit_of_leases_lists_in_datagram_sized_pages() {
        let mut t = LeaseTable::new();
        let n = 65_536u64;
        for k in 0..n {
            add(
                &mut t,
                1 + k % 64,
                "d",
                0,
                Range::new(k % 256 * 0x1000, 0x1000),
                RO,
            )
            .unwrap();
        }
        let budget = barkeep_protocol::MAX_DATAGRAM - 64;
        let all = pages(&t, None, budget);
        assert_eq!(all.iter().map(Vec::len).sum::<usize>(), n as usize);
        assert!(all.len() < 300, "{} pages", all.len());
        // Each page fits in one reply datagram.
        let (first, next) = t.page(None, 0, budget);
        let reply = barkeep_protocol::DaemonMessage::Reply {
            id: u64::MAX,
            result: Ok(barkeep_protocol::Response::LeasesPage {
                leases: first,
                next,
            }),
        };
        assert!(barkeep_protocol::encode_daemon(&reply).is_ok());
    }

    #[test]
    fn lingering_blocks_until_device_revoke() {
        let mut t = LeaseTable::new();
        let a = add(&mut t, 1, "d", 0, Range::new(0x2000, 0x1000), RW).unwrap();
        t.take_payload(&a);
        t.linger(&a);
        assert!(
            t.of_session(1).is_empty(),
            "a lingering lease belongs to no session"
        );
        assert_eq!(t.active_count(), 0);
        assert_eq!(
            t.uid_usage(1001),
            (1, 0x1000),
            "a lingering lease still counts for its holder"
        );
        assert_eq!(t.usage(|e| e.holder.uid == 1001), (1, 0x1000));
        assert_eq!(t.list(None)[0].state, LeaseState::Lingering);
        assert!(t.list(Some(1)).is_empty());
        let e = add(&mut t, 2, "d", 0, Range::new(0x2000, 0x1000), RO).unwrap_err();
        assert_eq!(e.code, ErrorCode::RangeBusy);
        assert!(e.message.contains("revoking device \"d\""), "{}", e.message);
        // Elsewhere is fine.
        add(&mut t, 2, "d", 0, Range::new(0x3000, 0x1000), RW).unwrap();
        assert_eq!(t.clear_lingering("e"), 0);
        assert_eq!(t.clear_lingering("d"), 1);
        assert_eq!(t.uid_usage(1001), (0, 0));
        add(&mut t, 2, "d", 0, Range::new(0x2000, 0x1000), RW).unwrap();
    }

    #[test]
    fn exclusivity_is_per_lease() {
        let mut t = LeaseTable::new();
        // Shared read-write leases (a grant with exclusive = false) overlap
        // each other and read-only leases...
        add_with(&mut t, 1, "d", 0, Range::new(0, 0x2000), RW, false).unwrap();
        add_with(&mut t, 2, "d", 0, Range::new(0x1000, 0x2000), RW, false).unwrap();
        add(&mut t, 3, "d", 0, Range::new(0x1000, 0x1000), RO).unwrap();
        // ...but not an exclusive one, whatever its access.
        let e = add_with(&mut t, 4, "d", 0, Range::new(0x2000, 0x1000), RO, true).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(
            e.message.contains("this slice is exclusive"),
            "{}",
            e.message
        );
        let x = add_with(&mut t, 4, "d", 0, Range::new(0x8000, 0x1000), RO, true).unwrap();
        let e = add(&mut t, 5, "d", 0, Range::new(0x8000, 0x1000), RO).unwrap_err();
        assert!(
            e.message.contains(&format!(
                "overlaps lease {x} (0x8000+0x1000, ro exclusive, uid 1004, session 4)"
            )) && e.message.contains("that lease is exclusive"),
            "{}",
            e.message
        );
    }

    #[test]
    fn kept_leases_outlive_their_session_and_count() {
        let mut t = LeaseTable::new();
        let a = add(&mut t, 1, "d", 0, Range::new(0, 0x1000), RW).unwrap();
        let b = add(&mut t, 1, "d", 0, Range::new(0x1000, 0x2000), RO).unwrap();
        let c = add(&mut t, 2, "d", 0, Range::new(0x4000, 0x1000), RO).unwrap();
        assert_eq!(t.session_usage(1, |_| true), (2, 0x3000));
        assert_eq!(t.usage(|e| e.holder.uid == 1001), (2, 0x3000));
        assert_eq!(
            t.usage(|e| e.grant == 0),
            (1, 0x1000),
            "session 2's lease has grant 0"
        );
        t.keep(&a);
        assert_eq!(t.get(&a).unwrap().state, LeaseState::Kept);
        assert_eq!(
            t.of_session(1),
            vec![b],
            "a kept lease belongs to no session"
        );
        assert_eq!(t.session_usage(1, |_| true), (1, 0x2000));
        assert_eq!(
            t.usage(|e| e.holder.uid == 1001),
            (2, 0x3000),
            "but still counts for its uid"
        );
        assert_eq!(t.active_count(), 3);
        // It still blocks its range, naming itself as kept.
        let e = add(&mut t, 3, "d", 0, Range::new(0, 0x1000), RO).unwrap_err();
        assert!(e.message.contains("overlaps kept lease"), "{}", e.message);
        // Selection by session finds kept leases too (admin revoke by session).
        assert_eq!(t.select(|e| e.session == 1), vec![a, b]);
        assert_eq!(t.of_device("d"), vec![a, b, c]);
        t.regrant(&c, 5, true);
        assert_eq!(
            (t.get(&c).unwrap().grant, t.get(&c).unwrap().keep),
            (5, true)
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn ids_are_random_and_distinct() {
        let t: LeaseTable<()> = LeaseTable::new();
        let a = t.new_id().unwrap();
        let b = t.new_id().unwrap();
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        let many: std::collections::HashSet<LeaseId> =
            (0..10_000).map(|_| t.new_id().unwrap()).collect();
        assert_eq!(many.len(), 10_000);
    }

    /// The indexes answer exactly what a walk over every entry answers,
    /// through grants, releases, lingering, keeping, adoption and clearing.
    #[test]
    fn indexes_agree_with_a_walk_over_every_entry() {
        let mut t = LeaseTable::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let devices = ["d0", "d1"];
        for step in 0..3000 {
            let dev = devices[next(2) as usize];
            let bar = next(2) as u32;
            let range = Range::new(next(64) * 0x1000, (1 + next(4)) * 0x1000);
            let access = if next(2) == 0 { RO } else { RW };
            let exclusive = next(3) == 0 || access == RW;
            // What a walk over every entry says about the new range.
            let walk = t
                .entries()
                .filter(|e| e.lease.device == dev && e.lease.bar == bar)
                .filter(|e| {
                    exclusive
                        || e.exclusive
                        || (e.state == LeaseState::Lingering
                            && (access == RW || e.lease.access == RW))
                })
                .any(|e| e.lease.range().overlaps(&range));
            let session = 1 + next(5);
            let got = add_with(&mut t, session, dev, bar, range, access, exclusive);
            assert_eq!(
                got.is_err(),
                walk,
                "step {step}: {range} on {dev} bar {bar}"
            );
            // Now and then, end or change a random lease.
            let pick = t.entries().map(|e| e.lease.id).nth(next(8) as usize);
            if let Some(id) = pick {
                match next(6) {
                    0 => drop(t.remove(&id)),
                    1 => t.linger(&id),
                    2 => t.keep(&id),
                    3 => t.adopt(
                        &id,
                        9,
                        PeerIdentity {
                            uid: 1000 + next(5) as u32,
                            ..Default::default()
                        },
                        "x".into(),
                    ),
                    4 if next(10) == 0 => drop(t.clear_lingering(dev)),
                    _ => {}
                }
            }
            for uid in 1000..1007 {
                assert_eq!(
                    t.uid_usage(uid),
                    t.usage(|e| e.holder.uid == uid),
                    "step {step}: uid {uid}"
                );
            }
        }
        let indexed: usize = t
            .by_bar
            .values()
            .flat_map(|b| b.values())
            .map(|i| i.by_offset.len())
            .sum();
        assert_eq!(indexed, t.len(), "every entry indexed once");
        let strong: usize = t
            .by_bar
            .values()
            .flat_map(|b| b.values())
            .map(|i| i.strong.len())
            .sum();
        assert_eq!(
            strong,
            t.entries()
                .filter(|e| e.exclusive || e.state == LeaseState::Lingering)
                .count(),
            "exclusive and lingering entries are in the strong index"
        );
    }
}
