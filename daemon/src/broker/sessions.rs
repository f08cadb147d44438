//! Sessions: admission against the connection limits, opening and closing.

use super::*;
use std::os::fd::OwnedFd;

/// A connected peer: its identity and a pidfd for its process (found by
/// [`crate::server::identity::of_peer`]).
#[derive(Debug)]
pub struct Peer {
    /// Who it is.
    pub identity: PeerIdentity,
    /// Its process, whatever becomes of the pid number (kept for the
    /// session's life).
    pub pidfd: OwnedFd,
}

/// A connection counted against the session limits; dropping it gives the
/// slot back.
pub struct Admission {
    broker: Arc<Broker>,
    uid: u32,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut st = self.broker.state();
        st.connections = st.connections.saturating_sub(1);
        if let Some(n) = st.connections_per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                st.connections_per_uid.remove(&self.uid);
            }
        }
    }
}

impl Broker {
    /// Puts the descriptor budget in force (see [`crate::fdbudget`]):
    /// `budget.base` counted what the daemon held, leases included, so
    /// they are taken out of it (they count as leases). Logs the budget,
    /// and warns when `[limits]` promise more than it holds.
    pub fn set_fd_budget(&self, mut budget: FdBudget) {
        let mut st = self.state();
        budget.base = budget
            .base
            .saturating_sub(st.leases.len() as u64 * crate::fdbudget::LEASE_FDS);
        let l = st.config.limits;
        tracing::info!(
            limit = budget.limit,
            held = budget.base,
            reserve = crate::fdbudget::RESERVE,
            tenants = budget.tenants(),
            "file descriptor budget for sessions and leases"
        );
        if let Some(w) = budget.overpromise(l.sessions, l.leases) {
            if crate::fdbudget::limit_matters(&l) {
                tracing::warn!("{w}");
            } else {
                tracing::debug!("{w}");
            }
        }
        st.fds = Some(budget);
    }

    /// Descriptors held for sessions and leases, in all and for `uid`.
    pub(super) fn fds_held(st: &State, uid: u32) -> (u64, u64) {
        use crate::fdbudget::{LEASE_FDS, SESSION_FDS};
        let total = st.connections as u64 * SESSION_FDS + st.leases.len() as u64 * LEASE_FDS;
        let sessions = st.connections_per_uid.get(&uid).copied().unwrap_or(0) as u64;
        let mine = sessions * SESSION_FDS + st.leases.uid_usage(uid).0 * LEASE_FDS;
        (total, mine)
    }

    /// Counts a new connection from `uid` against `[limits] sessions` and
    /// `sessions_per_uid`, and against the descriptor budget (where an
    /// administrator by uid may use the reserve); `LimitExceeded` when
    /// either is reached.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Admission, ErrorReply> {
        let mut st = self.state();
        let limits = st.config.limits;
        if st.connections >= limits.sessions {
            return Err(ErrorReply::new(
                ErrorCode::LimitExceeded,
                format!(
                    "barkeepd already serves {} sessions, its limit ([limits] sessions); try again later",
                    st.connections
                ),
            ));
        }
        let mine = st.connections_per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= limits.sessions_per_uid {
            return Err(ErrorReply::new(
                ErrorCode::LimitExceeded,
                format!(
                    "uid {uid} already has {mine} sessions open, the most one uid may have ([limits] sessions_per_uid); close some first"
                ),
            ));
        }
        if let Some(budget) = st.fds {
            // Only the uid is known yet: administrators by uid (or uid 0)
            // may use the reserve.
            let who = PeerIdentity {
                uid,
                ..Default::default()
            };
            let admin = policy::is_admin(&who, &st.config.admin);
            let (total, mine) = Self::fds_held(&st, uid);
            budget
                .admit(total, mine, crate::fdbudget::SESSION_FDS, admin)
                .map_err(|m| ErrorReply::new(ErrorCode::LimitExceeded, m))?;
        }
        st.connections += 1;
        *st.connections_per_uid.entry(uid).or_insert(0) += 1;
        Ok(Admission {
            broker: self.clone(),
            uid,
        })
    }

    /// Registers a session for a peer that completed the handshake.
    pub fn open_session(&self, peer: Peer, client_name: String, sink: EventSink) -> Welcome {
        let mut st = self.state();
        let identity = peer.identity.clone();
        let admin = policy::is_admin(&identity, &st.config.admin);
        let id = st.next_session;
        st.next_session += 1;
        tracing::info!(
            session = id,
            uid = identity.uid,
            pid = identity.pid,
            cgroup = identity.cgroup.as_deref().unwrap_or("-"),
            label = identity.label.as_deref().unwrap_or("-"),
            client = %client_name,
            admin,
            "session opened"
        );
        st.sessions.insert(
            id,
            Session {
                peer,
                client_name,
                admin,
                sink,
            },
        );
        Welcome {
            protocol_version: PROTOCOL_VERSION,
            daemon_version: DAEMON_VERSION.to_string(),
            session_id: id,
            page_size: self.page_size as u32,
            capabilities: self.capabilities(),
            identity,
            admin,
        }
    }

    /// Ends a session: each lease it holds is revoked (reason
    /// `Disconnected`), or kept when its grant says `on_disconnect =
    /// "keep"`. Safe to call twice.
    pub fn close_session(&self, session: u64) {
        let mut st = self.state();
        if st.frozen {
            // Handed on: the next daemon restores these leases.
            st.sessions.remove(&session);
            return;
        }
        let ids = st.leases.of_session(session);
        let mut kept = 0;
        for id in &ids {
            let Some(e) = st.leases.get(id) else { continue };
            if e.keep {
                audit::keep(session, &e.holder, &e.lease);
                st.leases.keep(id);
                kept += 1;
            } else {
                self.end_lease(&mut st, id, RevokeReason::Disconnected);
            }
        }
        if st.sessions.remove(&session).is_some() {
            tracing::info!(session, revoked = ids.len() - kept, kept, "session closed");
        }
        if !ids.is_empty() {
            self.record(&mut st);
        }
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.state().sessions.len()
    }
}
