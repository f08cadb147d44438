//! Granting and ending leases: acquire, release, admin revoke, the end of one
//! lease, and shutdown.

use super::*;

impl Broker {
    /// Revokes every lease, kept ones too (reason `Shutdown`), then clears
    /// what lingers with device-wide revokes.
    pub fn shutdown(&self) {
        let mut st = self.state();
        if st.frozen {
            return;
        }
        for id in st.leases.active() {
            self.end_lease(&mut st, &id, RevokeReason::Shutdown);
        }
        for (i, dev) in self.devices.iter().enumerate() {
            let name = &self.infos[i].name;
            if st.leases.entries().any(|e| &e.lease.device == name) {
                match dev.revoke_all() {
                    Ok(()) => {
                        st.leases.clear_lingering(name);
                        self.device_reopened(i);
                    }
                    Err(e) => {
                        tracing::error!(device = %name, "device-wide revoke at shutdown failed: {e}")
                    }
                }
            }
        }
        self.record(&mut st);
    }

    /// Ends one lease: tells its holder if connected (before the buffer
    /// dies, so a client learns why its mapping faults), revokes the
    /// buffer, and frees the range only if the buffer is known dead.
    /// Returns why the revoke failed, if it did: the buffer may still be
    /// mapped, the lease lingers (counted for its holder) and the failure
    /// is logged as an error.
    pub(super) fn end_lease(
        &self,
        st: &mut State,
        id: &LeaseId,
        reason: RevokeReason,
    ) -> Option<String> {
        let entry = st.leases.get(id)?;
        let session = entry.session;
        let holder = entry.holder.clone();
        let lease = entry.lease.clone();
        self.metrics.revoked(reason);
        // A kept lease's session is gone: nobody to tell.
        if entry.state == LeaseState::Active {
            if let Some(s) = st.sessions.get(&session) {
                s.sink.send(session, Event::Revoked { lease: *id, reason });
            }
        }
        let Some(buffer) = st.leases.take_payload(id) else {
            st.leases.remove(id);
            audit::end(session, &holder, &lease, reason, "dead");
            return None;
        };
        let outcome = match self.device_index(&lease.device) {
            Some(i) => self.devices[i].revoke(buffer),
            None => Err(BackendError::Invalid(format!(
                "lease of unknown device {:?}",
                lease.device
            ))),
        };
        // Out of the stash only once revoked: compacting may drop the
        // entry's segment, and a buffer must not leave the stash alive.
        if let Some(j) = &self.journal {
            j.lease_ended(id);
        }
        match outcome {
            Ok(RevokeOutcome::Dead) => {
                st.leases.remove(id);
                audit::end(session, &holder, &lease, reason, "dead");
            }
            Ok(RevokeOutcome::MayLinger) => {
                st.leases.linger(id);
                audit::end(session, &holder, &lease, reason, "lingering");
                tracing::warn!(lease = %id, "its buffer may stay mapped until a device-wide revoke (`barkeep revoke --device {}`); range kept busy", lease.device);
            }
            Err(e) => {
                st.leases.linger(id);
                audit::end(
                    session,
                    &holder,
                    &lease,
                    reason,
                    &format!("revoke-failed: {e}"),
                );
                tracing::error!(lease = %id, "revoking the buffer failed, range kept busy: {e}");
                return Some(format!("lease {id}: {e}"));
            }
        }
        None
    }

    pub(super) fn acquire(
        &self,
        session: u64,
        identity: &PeerIdentity,
        client_name: &str,
        req: SliceRequest,
    ) -> Outcome {
        // Under the lock from decision to insertion, so a reload cannot
        // slip between them.
        let mut st = self.state();
        if st.frozen {
            // Checked under the lock: a lease granted now would not reach
            // the successor's record.
            return Err(ErrorReply::new(
                ErrorCode::DeviceUnavailable,
                "barkeepd is handing its leases to its successor: reconnect and ask again",
            ));
        }
        let config = st.config.clone();
        let refuse = |error: ErrorReply, rule: &str| -> Outcome {
            audit::deny(session, identity, &req, &error, rule);
            self.metrics.denied(error.code);
            Err(error)
        };
        let a = match policy::check(identity, &req, &config.grants, &self.infos, self.page_size) {
            Ok(a) => a,
            Err(d) => return refuse(d.error, &d.rule.text(&config.grants)),
        };
        let rule = Rule::Grant(a.grant).text(&config.grants);
        if let Err(e) = crate::decide::quota::check(&st.config, &st.leases, session, identity, &a) {
            return refuse(e, &rule);
        }
        if let Some(budget) = st.fds {
            let (total, mine) = Self::fds_held(&st, identity.uid);
            let admin = policy::is_admin(identity, &config.admin);
            if let Err(m) = budget.admit(total, mine, crate::fdbudget::LEASE_FDS, admin) {
                return refuse(ErrorReply::new(ErrorCode::LimitExceeded, m), &rule);
            }
        }
        let grant = &config.grants[a.grant];
        let exclusive = grant.exclusive_for(req.access);
        if let Err(e) = st
            .leases
            .check(&req.device, req.bar, a.range, req.access, exclusive)
        {
            return refuse(e, &rule);
        }
        let id = match st.leases.new_id() {
            Ok(id) => id,
            Err(e) => return refuse(e, &rule),
        };
        let reclaim = match new_token() {
            Ok(t) => t,
            Err(e) => return refuse(e, &rule),
        };
        let name = buffer_name(&req.device, req.bar, a.range);
        let exported = match self.export_and_stash(a.device, &req, &a, &id, &name) {
            Ok(x) => x,
            Err(e) => return refuse(e, &rule),
        };
        let lease = Lease {
            id,
            device: req.device.clone(),
            bar: req.bar,
            offset: a.range.offset,
            length: a.range.length,
            access: req.access,
            memattr: a.memattr,
            buffer_name: name,
        };
        st.leases.insert(Entry {
            lease: lease.clone(),
            session,
            client_name: client_name.to_string(),
            holder: identity.clone(),
            granted: Instant::now(),
            state: LeaseState::Active,
            payload: Some(exported.buffer),
            grant: a.grant,
            exclusive,
            keep: grant.on_disconnect == OnDisconnect::Keep,
            reclaim,
        });
        // Stashed, then recorded, then to the client. A crash before the
        // record leaves a stashed buffer nobody holds, which the next
        // daemon closes; a lease the state file could not describe would
        // look released to it, so it is not granted.
        self.record(&mut st);
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.stashes() && j.failing())
        {
            self.take_back_unrecorded(&mut st, &id, a.device);
            return refuse(
                ErrorReply::new(
                    ErrorCode::Kernel,
                    "barkeepd cannot write its state file (see its log), so a restart would not know this lease; try again later",
                ),
                &rule,
            );
        }
        audit::grant(session, identity, &lease, &rule);
        self.metrics.granted(a.device);
        Ok((Response::Granted(lease, reclaim), Some(exported.client_fd)))
    }

    /// Exports the slice `a` allows for `req` and stashes its buffer
    /// before anything else: a restart finds the buffer, or (refused)
    /// nobody ever gets it.
    fn export_and_stash(
        &self,
        device: usize,
        req: &SliceRequest,
        a: &policy::Allowed,
        id: &LeaseId,
        name: &str,
    ) -> Result<crate::backend::Exported, ErrorReply> {
        let exported = self.devices[device]
            .export(&ExportRequest {
                bar: req.bar,
                range: a.range,
                access: req.access,
                memattr: a.memattr,
                name: name.to_string(),
            })
            .map_err(|e| backend_error(&req.device, e))?;
        if let Some(j) = &self.journal {
            if let Err(e) = j.lease_granted(id, &exported.buffer.fd) {
                if let Err(re) = self.devices[device].revoke(exported.buffer) {
                    tracing::warn!(lease = %id, "cannot revoke a buffer nobody got: {re}");
                }
                return Err(e);
            }
        }
        Ok(exported)
    }

    /// Takes back a lease just granted whose record the state file could
    /// not take (a restart would not know it): its buffer is revoked (or
    /// lingers, its range busy) before anybody got it, and the table is
    /// recorded again.
    fn take_back_unrecorded(&self, st: &mut State, id: &LeaseId, device: usize) {
        if let Some(buffer) = st.leases.take_payload(id) {
            match self.devices[device].revoke(buffer) {
                Ok(RevokeOutcome::Dead) => {
                    st.leases.remove(id);
                }
                _ => st.leases.linger(id),
            }
            if let Some(j) = &self.journal {
                j.lease_ended(id);
            }
        }
        self.record(st);
    }

    /// Ends a live lease held by `uid` (from any of its sessions), or any
    /// live lease for an administrator; the error says which of those it
    /// is not.
    pub(super) fn release(&self, session: u64, uid: u32, admin: bool, lease: LeaseId) -> Outcome {
        let mut st = self.state();
        let refuse = |code, message: String| Err(ErrorReply::new(code, message));
        match st.leases.get(&lease) {
            None => {
                return refuse(
                    ErrorCode::UnknownLease,
                    format!("no lease {lease}: it was released or revoked, or never existed (see `barkeep leases`)"),
                )
            }
            Some(e) if e.state == LeaseState::Lingering => {
                return refuse(
                    ErrorCode::UnknownLease,
                    format!("lease {lease} has already ended; its buffer lingers until a device-wide revoke"),
                )
            }
            Some(e) if e.holder.uid != uid && !admin => {
                return refuse(
                    ErrorCode::UnknownLease,
                    format!(
                        "lease {lease} is held by uid {} (session {}), not by uid {uid}: only its uid or an administrator may release it",
                        e.holder.uid, e.session
                    ),
                )
            }
            Some(e) if e.session != session => {
                tracing::info!(lease = %lease, by_session = session, holder_session = e.session, "released from another session");
            }
            Some(_) => {}
        }
        self.end_lease(&mut st, &lease, RevokeReason::Released);
        self.record(&mut st);
        Ok((Response::Released, None))
    }

    pub(super) fn revoke(&self, target: RevokeTarget) -> Outcome {
        let mut st = self.state();
        let ids = match target {
            RevokeTarget::Lease(id) => {
                if !st.leases.get(&id).is_some_and(|e| e.is_live()) {
                    return Err(ErrorReply::new(
                        ErrorCode::UnknownLease,
                        format!("no live lease {id} (see `barkeep leases --all`)"),
                    ));
                }
                vec![id]
            }
            RevokeTarget::Device(name) => return self.revoke_device(&mut st, name),
            RevokeTarget::Session(n) => {
                // An open session's leases are all active and indexed; a
                // closed one may have left kept leases behind.
                let ids = if st.sessions.contains_key(&n) {
                    st.leases.of_session(n)
                } else {
                    st.leases.select(|e| e.session == n)
                };
                if ids.is_empty() && !st.sessions.contains_key(&n) {
                    return Err(ErrorReply::new(
                        ErrorCode::BadArgument,
                        format!("no session {n} is open and no kept lease belongs to it (see `barkeep leases --all`)"),
                    ));
                }
                ids
            }
            RevokeTarget::Uid(uid) => st.leases.select(|e| e.holder.uid == uid),
            RevokeTarget::Cgroup(p) => {
                let pattern = CgroupPattern::parse(&p)
                    .map_err(|m| ErrorReply::new(ErrorCode::BadArgument, m))?;
                st.leases.select(|e| {
                    e.holder
                        .cgroup
                        .as_deref()
                        .is_some_and(|c| pattern.matches(c))
                })
            }
        };
        let failed: Vec<String> = ids
            .iter()
            .filter_map(|id| self.end_lease(&mut st, id, RevokeReason::Admin))
            .collect();
        self.record(&mut st);
        if !failed.is_empty() {
            return Err(revoke_failed(ids.len(), &failed));
        }
        Ok((
            Response::Revoked {
                count: ids.len() as u32,
            },
            None,
        ))
    }

    pub(super) fn revoke_device(&self, st: &mut State, name: String) -> Outcome {
        validate::device_name(&name)?;
        let Some(i) = self.device_index(&name) else {
            return Err(ErrorReply::new(
                ErrorCode::UnknownDevice,
                format!("no device named {name:?} is configured (see `barkeep devices`)"),
            ));
        };
        let ids = st.leases.of_device(&name);
        // A buffer whose own revoke failed gets the device-wide one below,
        // whose failure is the answer.
        for id in &ids {
            self.end_lease(st, id, RevokeReason::Device);
        }
        self.record(st);
        if st.leases.entries().any(|e| e.lease.device == name) {
            if let Err(e) = self.devices[i].revoke_all() {
                let lingering = st
                    .leases
                    .entries()
                    .filter(|e| e.lease.device == name && e.state == LeaseState::Lingering)
                    .count();
                tracing::error!(device = %name, lingering, "device-wide revoke failed, nothing cleared: {e}");
                let mut reply = backend_error(&name, e);
                reply.message = format!(
                    "device-wide revoke failed, {lingering} lingering lease(s) not cleared and possibly still mapped: {}",
                    reply.message
                );
                return Err(reply);
            }
            self.device_reopened(i);
            let cleared = st.leases.clear_lingering(&name);
            self.record(st);
            tracing::info!(device = %name, cleared, "device-wide revoke cleared lingering buffers");
        }
        Ok((
            Response::Revoked {
                count: ids.len() as u32,
            },
            None,
        ))
    }
}

/// A fresh reclaim token: 128 random bits.
fn new_token() -> Result<ReclaimToken, ErrorReply> {
    let bytes = crate::random::bytes16().map_err(|e| {
        ErrorReply::new(
            ErrorCode::Internal,
            format!("no random bytes for a reclaim token: {e}"),
        )
    })?;
    Ok(ReclaimToken(bytes))
}
