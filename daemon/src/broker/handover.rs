//! Restarts and hand-overs: the journal record, restore, reclaim, freeze and
//! thaw, and the fds a successor needs.

use super::*;

/// Compares tokens in time independent of where they differ.
fn same_token(a: &ReclaimToken, b: &ReclaimToken) -> bool {
    a.0.iter()
        .zip(b.0.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Restarts and hand-overs: reclaim, restored leases and their expiry, the
/// journal, and freezing for a successor.
impl Broker {
    /// Writes the lease table to the journal (state file), unless frozen.
    /// Only the leases that changed since the last record are appended;
    /// the whole table is written when the journal asks for it.
    pub(super) fn record(&self, st: &mut State) {
        // Frozen: a successor owns the file; what changes meanwhile is
        // recorded if this daemon thaws.
        if st.frozen {
            return;
        }
        let changed = st.leases.take_changed();
        // Without a state file (not under systemd's fd store) there is
        // nothing to write: do not build the snapshot either.
        let Some(j) = self.journal.as_ref().filter(|j| j.state_file().is_some()) else {
            return;
        };
        if !j.append_changes(&changed, &st.leases, st.next_session) {
            j.write_state(&self.snapshot_of(st));
        }
    }

    /// Writes the lease ends the journal holds back (each second, from the
    /// service's timer): a restart then sees them.
    pub fn flush_journal(&self) {
        let st = self.state();
        if st.frozen {
            return;
        }
        if let Some(j) = &self.journal {
            if !j.flush() {
                j.write_state(&self.snapshot_of(&st));
            }
        }
    }

    /// Tells the journal that device `i` has new kernel fds (a device-wide
    /// revoke reopened it).
    pub(super) fn device_reopened(&self, i: usize) {
        if let Some(j) = &self.journal {
            j.device_fds_changed(&self.infos[i].name, &*self.devices[i]);
        }
    }

    /// What the state file holds: every lease but the lingering ones whose
    /// buffers are known dead.
    pub(super) fn snapshot_of(&self, st: &State) -> crate::persist::state::Snapshot {
        crate::persist::state::Snapshot::new(
            st.next_session,
            self.infos
                .iter()
                .zip(&self.devices)
                .map(|(info, dev)| crate::persist::state::DeviceRecord {
                    name: info.name.clone(),
                    data: dev.restore_data(),
                })
                .collect(),
            st.leases
                .entries()
                .map(crate::persist::state::LeaseRecord::of)
                .collect(),
        )
    }

    /// The current state, as the state file holds it.
    pub fn snapshot(&self) -> crate::persist::state::Snapshot {
        self.snapshot_of(&self.state())
    }

    /// Adds leases restored after a restart: those with a buffer wait for
    /// their holders to reclaim them (kept ones stay kept), those without
    /// linger (their buffer may be live in a client, so their range stays
    /// busy). Leases the policy in force no longer allows are revoked.
    /// Session ids continue after `next_session`. Returns the number of
    /// leases awaiting reclaim.
    pub fn restore(&self, next_session: u64, entries: Vec<Entry<Buffer>>) -> usize {
        let mut st = self.state();
        st.next_session = st.next_session.max(next_session);
        let config = st.config.clone();
        let mut waiting = 0;
        for mut entry in entries {
            let id = entry.lease.id;
            if entry.payload.is_none() {
                entry.state = LeaseState::Lingering;
                st.leases.restore(entry);
                tracing::warn!(lease = %id, "restored without its buffer: it may still be mapped, so its range stays busy until a device-wide revoke");
                continue;
            }
            let verdict = policy::check(
                &entry.holder,
                &request_of(&entry.lease),
                &config.grants,
                &self.infos,
                self.page_size,
            );
            let kept = entry.state == LeaseState::Kept;
            if !kept {
                entry.state = LeaseState::AwaitingReclaim;
            }
            st.leases.restore(entry);
            match verdict {
                Ok(a) => {
                    let keep = config.grants[a.grant].on_disconnect == OnDisconnect::Keep;
                    st.leases.regrant(&id, a.grant, keep);
                    if !kept {
                        waiting += 1;
                    }
                }
                Err(d) => {
                    tracing::info!(lease = %id, "restored lease no longer allowed: {}", d.error.message);
                    self.end_lease(&mut st, &id, RevokeReason::Policy);
                }
            }
        }
        self.record(&mut st);
        waiting
    }

    /// Revokes (reason `Unclaimed`) every restored lease that its holder
    /// did not reclaim; returns how many.
    pub fn expire_unclaimed(&self) -> usize {
        let mut st = self.state();
        if st.frozen {
            return 0;
        }
        let ids = st.leases.select(|e| e.state == LeaseState::AwaitingReclaim);
        for id in &ids {
            self.end_lease(&mut st, id, RevokeReason::Unclaimed);
        }
        if !ids.is_empty() {
            self.record(&mut st);
        }
        ids.len()
    }

    /// Number of leases awaiting reclaim.
    pub fn awaiting_reclaim(&self) -> usize {
        self.state()
            .leases
            .entries()
            .filter(|e| e.state == LeaseState::AwaitingReclaim)
            .count()
    }

    /// Takes over a restored or kept lease for `session`, whose peer must
    /// present the lease's token, have the holder's uid, and be allowed the
    /// slice by the policy in force.
    pub(super) fn reclaim(
        &self,
        session: u64,
        identity: &PeerIdentity,
        client_name: &str,
        id: LeaseId,
        token: ReclaimToken,
    ) -> Outcome {
        let mut st = self.state();
        let unknown = || {
            ErrorReply::new(
                ErrorCode::UnknownLease,
                format!("no lease {id} awaits reclaim with this token (leases not reclaimed within reclaim_grace of a restart are revoked)"),
            )
        };
        let Some(e) = st.leases.get(&id) else {
            return Err(unknown());
        };
        if !matches!(e.state, LeaseState::AwaitingReclaim | LeaseState::Kept)
            || !same_token(&e.reclaim, &token)
        {
            return Err(unknown());
        }
        if e.holder.uid != identity.uid {
            return Err(ErrorReply::new(
                ErrorCode::Denied,
                format!(
                    "lease {id} was granted to uid {}, not uid {}: only its holder may reclaim it",
                    e.holder.uid, identity.uid
                ),
            ));
        }
        let config = st.config.clone();
        let a = policy::check(
            identity,
            &request_of(&e.lease),
            &config.grants,
            &self.infos,
            self.page_size,
        )
        .map_err(|d| d.error)?;
        let lease = e.lease.clone();
        st.leases
            .adopt(&id, session, identity.clone(), client_name.to_string());
        let keep = config.grants[a.grant].on_disconnect == OnDisconnect::Keep;
        st.leases.regrant(&id, a.grant, keep);
        self.record(&mut st);
        audit::reclaim(session, identity, &lease);
        Ok((Response::Reclaimed(lease), None))
    }

    /// Stops recording and revoking: this process hands its leases to a
    /// successor (a restart under the fd store, or a takeover). Writes the
    /// state one last time and returns it.
    pub fn freeze(&self) -> crate::persist::state::Snapshot {
        let mut st = self.state();
        let snapshot = self.snapshot_of(&st);
        if !st.frozen {
            if let Some(j) = &self.journal {
                j.write_state(&snapshot);
            }
            st.frozen = true;
        }
        snapshot
    }

    /// Whether [`Broker::freeze`] was called.
    pub fn is_frozen(&self) -> bool {
        self.state().frozen
    }

    /// Undoes [`Broker::freeze`] (a takeover that failed): the daemon
    /// serves and records again.
    pub fn thaw(&self) {
        let mut st = self.state();
        st.frozen = false;
        self.record(&mut st);
    }

    /// Dups of every fd a successor needs to keep the leases alive: each
    /// device's kernel fds (`dev-NAME-KIND`) and each live lease's buffer
    /// (`lease-ID`). Call after [`Broker::freeze`].
    pub fn handoff_fds(&self) -> Vec<(String, OwnedFd)> {
        let st = self.state();
        let mut out = Vec::new();
        for (info, dev) in self.infos.iter().zip(&self.devices) {
            for (kind, fd) in dev.kernel_fds() {
                out.push((
                    crate::persist::journal::device_fd_name(&info.name, &kind),
                    fd,
                ));
            }
        }
        for e in st.leases.entries() {
            if let Some(b) = &e.payload {
                match b.fd.try_clone() {
                    Ok(fd) => out.push((crate::persist::journal::lease_fd_name(&e.lease.id), fd)),
                    Err(err) => {
                        tracing::error!(lease = %e.lease.id, "cannot dup its buffer for the successor: {err}")
                    }
                }
            }
        }
        out
    }
}
