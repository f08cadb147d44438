//! The audit trail: exactly one structured tracing event (target
//! [`TARGET`]) per grant, denial, release, revoke, keep, reclaim and reload, with the
//! holder's identity, the slice and the outcome as fields, so that
//! journald (or a log shipper) can filter on them.
//!
//! Fields, always present ("-" when not applicable): `action` (grant, deny,
//! release, revoke, keep, reclaim, reload), `uid`, `gid`, `pid`, `cgroup`, `label`,
//! `session`, `device`, `bar`, `offset`, `length`, `range`, `access`,
//! `memattr`, `lease`, `outcome`, `reason`, `rule`.

//!
//! Values a client chose (a device name, its cgroup's name) are quoted and
//! escaped by every sink unless they are one plain token (see
//! [`crate::logfmt`]; journald keeps each field apart), so no request can
//! make its line read as another action's record. A name longer than the
//! protocol allows ([`MAX_NAME`]) is refused before any lookup; its denial
//! logs the first [`MAX_NAME`] bytes followed by `...` and the `reason`
//! gives its full length, so a flood of long names cannot fill the log.

use barkeep_protocol::{ErrorReply, Lease, PeerIdentity, RevokeReason, SliceRequest, MAX_NAME};
use std::borrow::Cow;

/// The tracing target of every audit event (`RUST_LOG=barkeep::audit=info`).
pub const TARGET: &str = "barkeep::audit";

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// `name` as the log shows it: whole when the protocol allows it, else its
/// first [`MAX_NAME`] bytes (cut at a character boundary) and `...`.
pub fn bounded(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_NAME {
        return Cow::Borrowed(name);
    }
    let mut end = MAX_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &name[..end]))
}

/// A slice was granted.
pub fn grant(session: u64, who: &PeerIdentity, lease: &Lease, rule: &str) {
    tracing::info!(
        target: TARGET,
        action = "grant",
        uid = who.uid,
        gid = who.gid,
        pid = who.pid,
        cgroup = opt(&who.cgroup),
        label = opt(&who.label),
        session,
        device = %lease.device,
        bar = lease.bar,
        offset = lease.offset,
        length = lease.length,
        range = %lease.range(),
        access = %lease.access,
        memattr = %lease.memattr,
        lease = %lease.id,
        outcome = "granted",
        reason = "-",
        rule,
        "grant {} {:?} bar {} {} {} {} to uid {} pid {} ({})",
        lease.id, lease.device, lease.bar, lease.range(), lease.access, lease.memattr,
        who.uid, who.pid, opt(&who.cgroup)
    );
}

/// A slice request was refused (validation, policy, quota, limit,
/// conflict or the backend).
pub fn deny(session: u64, who: &PeerIdentity, req: &SliceRequest, error: &ErrorReply, rule: &str) {
    // The only event whose device name was not checked: it may be the
    // reason for the denial.
    let device = bounded(&req.device);
    tracing::info!(
        target: TARGET,
        action = "deny",
        uid = who.uid,
        gid = who.gid,
        pid = who.pid,
        cgroup = opt(&who.cgroup),
        label = opt(&who.label),
        session,
        device = %device,
        bar = req.bar,
        offset = req.offset,
        length = req.length,
        range = %req.range(),
        access = %req.access,
        memattr = ?req.memattr,
        lease = "-",
        outcome = error.code.slug(),
        reason = error.message.as_str(),
        rule,
        "deny {:?} bar {} {} {} to uid {} pid {} ({}): {} ({rule})",
        device, req.bar, req.range(), req.access, who.uid, who.pid, opt(&who.cgroup),
        error.message
    );
}

/// A lease ended (`reason` released: action "release"; else "revoke").
/// `outcome` says what became of the buffer: "dead", "lingering" or
/// "revoke-failed: ...".
pub fn end(session: u64, who: &PeerIdentity, lease: &Lease, reason: RevokeReason, outcome: &str) {
    let action = if reason == RevokeReason::Released {
        "release"
    } else {
        "revoke"
    };
    tracing::info!(
        target: TARGET,
        action,
        uid = who.uid,
        gid = who.gid,
        pid = who.pid,
        cgroup = opt(&who.cgroup),
        label = opt(&who.label),
        session,
        device = %lease.device,
        bar = lease.bar,
        offset = lease.offset,
        length = lease.length,
        range = %lease.range(),
        access = %lease.access,
        memattr = %lease.memattr,
        lease = %lease.id,
        outcome,
        reason = reason.as_str(),
        rule = "-",
        "{action} {} {:?} bar {} {} of uid {} pid {} ({}): {reason}, buffer {outcome}",
        lease.id, lease.device, lease.bar, lease.range(), who.uid, who.pid, opt(&who.cgroup)
    );
}

/// A lease outlived its session (`on_disconnect = "keep"`).
pub fn keep(session: u64, who: &PeerIdentity, lease: &Lease) {
    tracing::info!(
        target: TARGET,
        action = "keep",
        uid = who.uid,
        gid = who.gid,
        pid = who.pid,
        cgroup = opt(&who.cgroup),
        label = opt(&who.label),
        session,
        device = %lease.device,
        bar = lease.bar,
        offset = lease.offset,
        length = lease.length,
        range = %lease.range(),
        access = %lease.access,
        memattr = %lease.memattr,
        lease = %lease.id,
        outcome = "kept",
        reason = "disconnected",
        rule = "-",
        "keep {} {:?} bar {} {} of uid {} pid {} ({}): session ended, on_disconnect = keep",
        lease.id, lease.device, lease.bar, lease.range(), who.uid, who.pid, opt(&who.cgroup)
    );
}

/// The policy was reloaded (`outcome` "ok" or the error), by `who` (`None`:
/// SIGHUP).
pub fn reload(who: Option<(u64, &PeerIdentity)>, outcome: &str, grants: usize, revoked: usize) {
    let (session, uid, pid) = match who {
        Some((s, id)) => (s.to_string(), id.uid.to_string(), id.pid.to_string()),
        None => ("-".into(), "-".into(), "-".into()),
    };
    tracing::info!(
        target: TARGET,
        action = "reload",
        uid = %uid,
        gid = "-",
        pid = %pid,
        cgroup = "-",
        label = "-",
        session = %session,
        device = "-",
        bar = "-",
        offset = "-",
        length = "-",
        range = "-",
        access = "-",
        memattr = "-",
        lease = "-",
        outcome,
        reason = if who.is_some() { "request" } else { "SIGHUP" },
        rule = "-",
        "reload: {outcome}; {grants} grant(s), {revoked} lease(s) revoked by the new policy"
    );
}

/// A lease restored after a restart (or kept) was taken over by a new
/// session of its holder.
pub fn reclaim(session: u64, who: &PeerIdentity, lease: &Lease) {
    tracing::info!(
        target: TARGET,
        action = "reclaim",
        uid = who.uid,
        gid = who.gid,
        pid = who.pid,
        cgroup = opt(&who.cgroup),
        label = opt(&who.label),
        session,
        device = %lease.device,
        bar = lease.bar,
        offset = lease.offset,
        length = lease.length,
        range = %lease.range(),
        access = %lease.access,
        memattr = %lease.memattr,
        lease = %lease.id,
        outcome = "reclaimed",
        reason = "-",
        rule = "-",
        "reclaim {} {:?} bar {} {} by uid {} pid {} ({}), session {session}",
        lease.id, lease.device, lease.bar, lease.range(), who.uid, who.pid, opt(&who.cgroup)
    );
}
