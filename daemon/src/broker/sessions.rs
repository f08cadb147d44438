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
    /// Counts a new connection from `uid` against `[limits] sessions` and
    /// `sessions_per_uid`; `LimitExceeded` when either is reached.
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
