//! The file descriptor budget: what tenants may make barkeepd hold, so
//! that no tenant (nor two) can run it out of descriptors and lock out
//! everyone else, the administrator included.
//!
//! Every session holds [`SESSION_FDS`] descriptors (its socket and the
//! peer's pidfd) and every lease [`LEASE_FDS`] (the daemon's reference to
//! its buffer: a memfd on the simulated backend, a DMABUF on VFIO; kept and
//! lingering leases count too). The budget is derived from the real
//! `RLIMIT_NOFILE` at start-up:
//!
//! * `limit`: the soft limit, raised to the hard one;
//! * `base`: what the daemon holds before serving (devices, sockets, logs);
//! * [`RESERVE`]: kept free for the daemon itself (accepting a connection
//!   before its uid is known, the second fd of an export while it is sent,
//!   a device-wide revoke reopening a device, refusals on their way out);
//!   half of it ([`ADMIN_RESERVE`]) admin sessions and leases may use;
//! * `tenants = limit - base - RESERVE`: what sessions and leases may hold.
//!
//! A tenant's new session or lease is admitted only if, after it, the
//! daemon holds no more than `tenants`, and its uid holds no more than what
//! is left free for everyone else: one uid alone gets at most half the
//! budget, a second at most a quarter, a third an eighth, and so on, so a
//! newcomer always finds room, whatever the others hoard. Administrators
//! (uid 0 and `[admin]` uids) are not held to a share and may also use
//! [`ADMIN_RESERVE`]: their `status`, `leases --all` and `revoke` work at
//! any load.

/// Descriptors a session holds: its socket and the peer's pidfd.
pub const SESSION_FDS: u64 = 2;

/// Descriptors a lease holds: the daemon's reference to its buffer.
pub const LEASE_FDS: u64 = 1;

/// Descriptors kept free of tenants' sessions and leases.
pub const RESERVE: u64 = 512;

/// The part of [`RESERVE`] administrators' sessions and leases may use.
pub const ADMIN_RESERVE: u64 = RESERVE / 2;

/// The descriptors sessions and leases may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` in force.
    pub limit: u64,
    /// What the daemon held before serving.
    pub base: u64,
}

impl FdBudget {
    /// What tenants' sessions and leases may hold in all.
    pub fn tenants(&self) -> u64 {
        self.limit.saturating_sub(self.base).saturating_sub(RESERVE)
    }

    /// Whether one more session or lease (`need` descriptors) fits, when
    /// the daemon holds `total` descriptors for sessions and leases and
    /// the asking uid `mine` of them; `Err` says why not.
    pub fn admit(&self, total: u64, mine: u64, need: u64, admin: bool) -> Result<(), String> {
        let tenants = self.tenants();
        let after = total.saturating_add(need);
        if admin {
            return if after <= tenants + ADMIN_RESERVE {
                Ok(())
            } else {
                Err(format!(
                    "barkeepd's file descriptors are exhausted even for administrators ({total} held for sessions and leases, open file limit {}); raise LimitNOFILE",
                    self.limit
                ))
            };
        }
        if after > tenants {
            return Err(format!(
                "barkeepd holds {total} file descriptors for sessions and leases, all its open file limit ({}) allows beside its reserve; try again later",
                self.limit
            ));
        }
        let free = tenants - after;
        if mine.saturating_add(need) > free {
            return Err(format!(
                "this uid holds {mine} of barkeepd's file descriptors (2 per session, 1 per lease); one uid may hold at most what stays free for the others ({free}); release some first"
            ));
        }
        Ok(())
    }

    /// The descriptors `[limits]` may ask for at most: every session and
    /// every lease at once.
    pub fn promised(sessions: usize, leases: usize) -> u64 {
        sessions as u64 * SESSION_FDS + leases as u64 * LEASE_FDS
    }

    /// A warning when `[limits]` promise more sessions and leases than
    /// this budget holds (then the budget refuses first, with an
    /// explanation), else `None`.
    pub fn overpromise(&self, sessions: usize, leases: usize) -> Option<String> {
        let want = Self::promised(sessions, leases);
        (want > self.tenants()).then(|| {
            format!(
                "[limits] sessions = {sessions} and leases = {leases} may need {want} file descriptors (2 per session, 1 per lease), but the open file limit {} leaves {} beside what barkeepd holds and its reserve of {RESERVE}: sessions and leases are refused past that (and one uid gets at most half of what is free); raise LimitNOFILE to {} or lower [limits]",
                self.limit,
                self.tenants(),
                want + self.base + RESERVE
            )
        })
    }
}

/// The soft `RLIMIT_NOFILE` raised to the hard limit (the soft limit in
/// force if it cannot be raised), and the descriptors open now.
pub fn measure() -> FdBudget {
    // Where setrlimit is forbidden (the shipped unit's sandbox), the soft
    // limit in force (asking for 0 only reads it).
    let limit = crate::sys::raise_fd_limit(u64::MAX)
        .or_else(|_| crate::sys::raise_fd_limit(0))
        .unwrap_or(1024);
    let base = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count() as u64);
    FdBudget { limit, base }
}

/// Whether an open file limit below what `limits` need is worth a
/// warning. The default limits are a ceiling, not a promise: started (or
/// checked) by hand under an ordinary hard limit, barkeepd serves fewer,
/// which is no news. Limits set in the file, or a run by systemd (whose unit
/// sets LimitNOFILE=), that the limit cannot serve are.
pub fn limit_matters(limits: &crate::config::Limits) -> bool {
    let defaults = crate::config::Limits::default();
    let configured = limits.sessions != defaults.sessions || limits.leases != defaults.leases;
    let by_systemd =
        std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some();
    configured || by_systemd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uid_leaves_room_for_the_next_and_admins_for_themselves() {
        let b = FdBudget {
            limit: 20_000 + 512 + 100,
            base: 100,
        };
        assert_eq!(b.tenants(), 20_000);
        // Three uids take what they can, one descriptor at a time.
        let mut total = 0;
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut mine = 0;
            while b.admit(total, mine, 1, false).is_ok() {
                mine += 1;
                total += 1;
            }
            got.push(mine);
        }
        assert_eq!(got, [10_000, 5_000, 2_500]);
        // The next still gets something, and the admin gets its reserve.
        assert!(b.admit(total, 0, 2, false).is_ok());
        let mut admin = 0;
        while b.admit(total, 0, 2, true).is_ok() {
            total += 2;
            admin += 1;
        }
        assert!(admin >= 1_000, "{admin} admin sessions");
        // Past the whole budget, nobody.
        let e = b.admit(b.tenants(), 0, 1, false).unwrap_err();
        assert!(e.contains("try again later"), "{e}");
        let e = b.admit(5, 5, 1, false);
        assert!(e.is_ok());
    }

    #[test]
    fn limits_that_need_more_than_the_budget_are_named() {
        let b = FdBudget {
            limit: 20_000,
            base: 50,
        };
        let w = b.overpromise(16_384, 65_536).unwrap();
        assert!(w.contains("may need 98304 file descriptors"), "{w}");
        assert!(w.contains("raise LimitNOFILE to 98866"), "{w}");
        assert_eq!(b.overpromise(1_000, 10_000), None);
    }
}
