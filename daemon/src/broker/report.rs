//! What the broker tells: status, the systemd status line, metrics text and
//! policy explanations.

use super::*;

impl Broker {
    /// The metrics in Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        let gauges = {
            let st = self.state();
            metrics::Gauges {
                sessions: st.sessions.len(),
                connections: st.connections,
                leases: metrics::count_leases(&self.infos, &st.leases),
            }
        };
        self.metrics.render(&self.infos, &gauges)
    }

    pub(super) fn status(&self) -> StatusInfo {
        let st = self.state();
        StatusInfo {
            daemon_version: DAEMON_VERSION.to_string(),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            sessions: st.sessions.len() as u32,
            leases: st.leases.active_count() as u32,
            page_size: self.page_size as u32,
            capabilities: self.capabilities(),
            devices: self
                .infos
                .iter()
                .zip(&self.devices)
                .map(|(info, dev)| DeviceStatus {
                    name: info.name.clone(),
                    backend: info.backend,
                    capabilities: info.capabilities,
                    leases: st.leases.active_on(&info.name) as u32,
                    problem: info.problem.clone(),
                    notes: {
                        let mut notes = dev.notes();
                        notes.extend(lingering_notes(&st.leases, &info.name));
                        notes
                    },
                })
                .collect(),
        }
    }

    pub(super) fn explain(&self, me: &PeerIdentity, admin: bool, x: ExplainRequest) -> Outcome {
        if !admin && !is_own_identity(&x.who, me) {
            return Err(ErrorReply::new(
                ErrorCode::AdminOnly,
                format!(
                    "explaining the policy for another identity is for administrators only; ask about your own (uid {}, gid {}, groups within {:?}, cgroup {}, label {})",
                    me.uid,
                    me.gid,
                    me.groups,
                    me.cgroup.as_deref().unwrap_or("none"),
                    me.label.as_deref().unwrap_or("none"),
                ),
            ));
        }
        let config = self.config();
        let d = policy::explain(
            &x.who,
            &x.slice,
            &config.grants,
            &self.infos,
            self.page_size,
        );
        Ok((Response::Decision(d), None))
    }

    /// One line for systemd's STATUS=: devices, sessions, leases and what
    /// the kernel offers.
    pub fn status_line(&self) -> String {
        let st = self.state();
        let usable: Vec<&str> = self
            .infos
            .iter()
            .filter(|d| d.problem.is_none())
            .map(|d| d.name.as_str())
            .collect();
        let c = self.capabilities();
        let caps: Vec<&str> = [
            (c.export, "export"),
            (c.mmap, "mmap"),
            (c.revoke, "revoke"),
            (c.write_combining, "wc"),
            (c.device_revoke, "device-revoke"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        let waiting = st
            .leases
            .entries()
            .filter(|e| e.state == LeaseState::AwaitingReclaim)
            .count();
        let mut line = format!(
            "serving {} of {} device(s) [{}], {} session(s), {} lease(s)",
            usable.len(),
            self.infos.len(),
            usable.join(" "),
            st.sessions.len(),
            st.leases.active_count(),
        );
        if waiting > 0 {
            line.push_str(&format!(" ({waiting} awaiting reclaim)"));
        }
        if let Some((live, segments, in_flight)) =
            self.journal.as_ref().and_then(|j| j.stash_usage())
        {
            line.push_str(&format!(
                "; stash: {live} buffer(s), {in_flight} fd(s) in flight, {segments} segment(s)"
            ));
        }
        line.push_str(&format!(
            "; kernel: {}",
            if caps.is_empty() {
                "none".to_string()
            } else {
                caps.join(" ")
            }
        ));
        line
    }
}

/// One status note per lingering lease of `device`: a released lease whose
/// buffer this kernel cannot revoke on its own, so its range stays out of
/// exclusive and read-write grants until the device is revoked as a whole.
fn lingering_notes<B>(leases: &crate::leases::LeaseTable<B>, device: &str) -> Vec<String> {
    let mut lingering: Vec<&crate::leases::Entry<B>> = leases
        .entries()
        .filter(|e| e.state == barkeep_protocol::LeaseState::Lingering && e.lease.device == device)
        .collect();
    lingering.sort_by_key(|e| (e.lease.bar, e.lease.offset));
    lingering
        .iter()
        .map(|e| {
            let l = &e.lease;
            format!(
                "lingering: bar {} {} ({}) of ended lease {} (uid {}): its buffer cannot be revoked on its own and may still be in use; \
                 the range is not granted again ({}) until `barkeep revoke --device {device}`",
                l.bar,
                l.range(),
                l.access,
                l.id,
                e.holder.uid,
                if l.access == barkeep_protocol::Access::ReadWrite {
                    "to anyone"
                } else {
                    "read-write or exclusive"
                },
            )
        })
        .collect()
}
