//! Policy reload: the file read again, the new policy applied atomically.

use super::*;

impl Broker {
    /// Reads the configuration file again and puts its policy in force
    /// ([`Broker::apply`]). `by`: the session and peer that asked (`None`
    /// for SIGHUP). An invalid file changes nothing.
    pub fn reload(&self, by: Option<(u64, &PeerIdentity)>) -> Result<(u32, u32), ErrorReply> {
        let Some(source) = &self.source else {
            let e = ErrorReply::new(
                ErrorCode::Unsupported,
                "this barkeepd was started without a configuration file (e.g. by `barkeep demo`): there is nothing to reload",
            );
            audit::reload(by, &e.message, 0, 0);
            return Err(e);
        };
        match source.load() {
            Ok(config) => self.apply(config, by),
            Err(e) => {
                let e = ErrorReply::new(
                    ErrorCode::ConfigInvalid,
                    format!("{e}; the old policy stays in force"),
                );
                audit::reload(by, &e.message, 0, 0);
                Err(e)
            }
        }
    }

    /// Replaces the policy (grants, admins, limits) atomically with that of
    /// `new`, and revokes (reason `Policy`) every lease the new grants no
    /// longer allow, and kept leases whose grant no longer keeps them.
    /// Refused (`ConfigInvalid`, nothing changed) when `new` changes the
    /// socket, devices or kernel feature numbers, which need a restart.
    /// Returns the number of grants and of leases revoked.
    pub fn apply(
        &self,
        new: Config,
        by: Option<(u64, &PeerIdentity)>,
    ) -> Result<(u32, u32), ErrorReply> {
        let mut st = self.state();
        let old = st.config.clone();
        let mut fixed = Vec::new();
        if new.socket != old.socket {
            fixed.push("socket");
        }
        if new.socket_mode != old.socket_mode {
            fixed.push("socket_mode");
        }
        if new.devices != old.devices {
            fixed.push("[[device]]");
        }
        if new.kernel != old.kernel {
            fixed.push("[kernel]");
        }
        if new.state_path() != old.state_path() {
            fixed.push("state_file");
        }
        if new.fd_store != old.fd_store {
            fixed.push("fd_store");
        }
        if new.takeover_socket != old.takeover_socket {
            fixed.push("takeover_socket");
        }
        if (&new.metrics.socket, new.metrics.socket_mode)
            != (&old.metrics.socket, old.metrics.socket_mode)
        {
            fixed.push("[metrics] socket");
        }
        if !fixed.is_empty() {
            let e = ErrorReply::new(
                ErrorCode::ConfigInvalid,
                format!(
                    "the new configuration changes {}, which only a restart of barkeepd can change (devices are not reopened on reload): restart it, or put them back; the old policy stays in force",
                    fixed.join(", ")
                ),
            );
            audit::reload(by, &e.message, 0, 0);
            return Err(e);
        }
        let mut revoked = 0u32;
        for id in st.leases.active() {
            let Some(e) = st.leases.get(&id) else {
                continue;
            };
            let kept = e.state == LeaseState::Kept;
            let verdict = policy::check(
                &e.holder,
                &request_of(&e.lease),
                &new.grants,
                &self.infos,
                self.page_size,
            );
            match verdict {
                Ok(a) => {
                    let keep = new.grants[a.grant].on_disconnect == OnDisconnect::Keep;
                    if kept && !keep {
                        tracing::info!(lease = %id, "kept lease: its grant no longer keeps leases after disconnect");
                        self.end_lease(&mut st, &id, RevokeReason::Policy);
                        revoked += 1;
                    } else {
                        st.leases.regrant(&id, a.grant, keep);
                    }
                }
                Err(d) => {
                    tracing::info!(lease = %id, "no longer allowed: {}", d.error.message);
                    self.end_lease(&mut st, &id, RevokeReason::Policy);
                    revoked += 1;
                }
            }
        }
        let grants = new.grants.len() as u32;
        st.config = Arc::new(new);
        self.record(&mut st);
        audit::reload(by, "ok", grants as usize, revoked as usize);
        Ok((grants, revoked))
    }
}
