//! The daemon's limits and a grant's quotas, as pure checks over the lease
//! table: whether one more lease of the request's size fits.

use crate::config::Config;
use crate::decide::policy::Allowed;
use crate::leases::LeaseTable;
use barkeep_protocol::{ErrorCode, ErrorReply, PeerIdentity};

/// Daemon limits and the deciding grant's quotas, for a request allowed as
/// `a` of `session` (whose peer is `who`), given the leases held now.
pub fn check<B>(
    config: &Config,
    leases: &LeaseTable<B>,
    session: u64,
    who: &PeerIdentity,
    a: &Allowed,
) -> Result<(), ErrorReply> {
    let l = &config.limits;
    let limit = |m: String| Err(ErrorReply::new(ErrorCode::LimitExceeded, m));
    if leases.len() >= l.leases {
        return limit(format!(
            "barkeepd holds {} leases, its limit ([limits] leases); try again later",
            leases.len()
        ));
    }
    let n = leases.session_count(session);
    if n >= l.leases_per_session {
        return limit(format!(
            "this session holds {n} leases, the most one session may hold ([limits] leases_per_session); release some first"
        ));
    }
    let (n, _) = leases.uid_usage(who.uid);
    if n as usize >= l.leases_per_uid {
        return limit(format!(
            "uid {} holds {n} leases (active and kept), the most one uid may hold ([limits] leases_per_uid); release some first",
            who.uid
        ));
    }
    let q = config.grants[a.grant].quota;
    let g = a.grant;
    let want = a.range.length;
    let quota = |m: String| Err(ErrorReply::new(ErrorCode::QuotaExceeded, m));
    // Walks of the session's (or uid's) leases: only when the grant has
    // such a quota.
    let session_quota = q.leases_per_session.is_some() || q.bytes_per_session.is_some();
    let (n, bytes) = if session_quota {
        leases.session_usage(session, |e| e.grant == g)
    } else {
        (0, 0)
    };
    if let Some(max) = q.leases_per_session.filter(|&m| n >= m) {
        return quota(format!(
            "grant #{} allows {max} lease(s) per session and this session holds {n}; release one first",
            g + 1
        ));
    }
    if let Some(max) = q
        .bytes_per_session
        .filter(|&m| bytes.saturating_add(want) > m)
    {
        return quota(format!(
            "grant #{} allows {max:#x} bytes per session; this session holds {bytes:#x} and asks for {want:#x} more",
            g + 1
        ));
    }
    // A walk over every lease: only when the grant has a per-uid quota.
    if q.leases_per_uid.is_none() && q.bytes_per_uid.is_none() {
        return Ok(());
    }
    let (n, bytes) = leases.usage(|e| e.holder.uid == who.uid && e.grant == g);
    if let Some(max) = q.leases_per_uid.filter(|&m| n >= m) {
        return quota(format!(
            "grant #{} allows {max} lease(s) per uid and uid {} holds {n} (active and kept); release one first",
            g + 1,
            who.uid
        ));
    }
    if let Some(max) = q.bytes_per_uid.filter(|&m| bytes.saturating_add(want) > m) {
        return quota(format!(
            "grant #{} allows {max:#x} bytes per uid; uid {} holds {bytes:#x} and asks for {want:#x} more",
            g + 1,
            who.uid
        ));
    }
    Ok(())
}
