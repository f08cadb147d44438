//! The CLI's policy and administration commands: `explain` (what the policy
//! would decide, without acquiring), `reload` and `revoke` (by lease,
//! device, session, uid or cgroup).

use crate::{exit, Failure, Outcome, WcMode};
use barkeep_client::{
    Access, Client, ClientCode, Decision, ExplainRequest, MemAttr, MemAttrRequest, PeerIdentity,
    RevokeTarget, SliceRequest,
};
use clap::Args;
use serde_json::{json, Value};

/// Arguments of `barkeep explain`.
#[derive(Args, Debug)]
pub(crate) struct ExplainArgs {
    /// The peer's uid (a number or a user name); your own uid with none of the options below means your session's identity (groups, cgroup, label)
    #[arg(long, value_name = "UID|USER")]
    pub uid: String,
    /// Its primary gid (number or group name) [default: the user's, from the password database]
    #[arg(long, value_name = "GID|GROUP")]
    pub gid: Option<String>,
    /// Its supplementary groups, comma separated (numbers or names; "" for none) [default: the user's, from the group database]
    #[arg(long, value_name = "G,G...", value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Its cgroup v2 path, as in /proc/PID/cgroup [default: none]
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Its LSM label (SO_PEERSEC) [default: none]
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// Device name
    pub device: String,
    /// BAR index (0..5)
    #[arg(value_parser = crate::parse_bar)]
    pub bar: u32,
    /// Offset of the slice in the BAR
    #[arg(value_parser = crate::parse_num)]
    pub offset: u64,
    /// Length of the slice
    #[arg(value_parser = crate::parse_num)]
    pub length: u64,
    /// A read-write slice [default: read-only]
    #[arg(long)]
    pub rw: bool,
    /// Write-combining: `--wc` requires it, `--wc=prefer` takes it when possible
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "require")]
    pub wc: Option<WcMode>,
}

/// Arguments of `barkeep revoke`: exactly one target.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct RevokeArgs {
    /// Lease id (32 hex digits, as printed by `barkeep leases --all`)
    #[arg(value_parser = crate::parse_lease)]
    pub lease: Option<barkeep_client::LeaseId>,
    /// Every lease of this device (with a device-wide revoke when buffers linger)
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Every lease of this session (kept ones too)
    #[arg(long, value_name = "N")]
    pub session: Option<u64>,
    /// Every lease held by this uid (a number or a user name)
    #[arg(long, value_name = "UID|USER")]
    pub uid: Option<String>,
    /// Every lease held from this cgroup: an exact path, `*` inside one component, or PATH/** for a subtree
    #[arg(long, value_name = "PATTERN")]
    pub cgroup: Option<String>,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(ClientCode::Usage, message, exit::USAGE)
}

fn resolve_uid(s: &str) -> Result<u32, Failure> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(usage(format!(
            "no user named {s:?} on this system: give a number"
        ))),
        Err(e) => Err(usage(format!("cannot look up user {s:?}: {e}"))),
    }
}

fn resolve_gid(s: &str) -> Result<u32, Failure> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(usage(format!(
            "no group named {s:?} on this system: give a number"
        ))),
        Err(e) => Err(usage(format!("cannot look up group {s:?}: {e}"))),
    }
}

/// The identity to explain for: what was given, the rest from the user
/// and group databases (what a login of that user would have). `--uid`
/// alone with one's own uid means exactly this session's identity.
fn identity(a: &ExplainArgs, me: &PeerIdentity) -> Result<PeerIdentity, Failure> {
    resolve_identity(
        &a.uid,
        a.gid.as_deref(),
        a.groups.as_deref(),
        a.cgroup.as_deref(),
        a.label.as_deref(),
        me,
    )
}

/// [`identity`] from its parts (`barkeep cdi --uid ...` asks the same way).
pub(crate) fn resolve_identity(
    uid: &str,
    gid: Option<&str>,
    groups: Option<&[String]>,
    cgroup: Option<&str>,
    label: Option<&str>,
    me: &PeerIdentity,
) -> Result<PeerIdentity, Failure> {
    let uid = resolve_uid(uid)?;
    if uid == me.uid && gid.is_none() && groups.is_none() && cgroup.is_none() && label.is_none() {
        return Ok(PeerIdentity {
            pid: 0,
            ..me.clone()
        });
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    let gid = match (gid, &user) {
        (Some(g), _) => resolve_gid(g)?,
        (None, Some(u)) => u.gid.as_raw(),
        (None, None) => {
            return Err(usage(format!(
                "uid {uid} has no entry in the password database: give its primary group with --gid"
            )))
        }
    };
    let groups = match (groups, &user) {
        (Some(list), _) => list
            .iter()
            .filter(|g| !g.is_empty())
            .map(|g| resolve_gid(g))
            .collect::<Result<Vec<u32>, Failure>>()?,
        (None, Some(u)) => std::ffi::CString::new(u.name.as_str())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok())
            .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
        (None, None) => Vec::new(),
    };
    Ok(PeerIdentity {
        uid,
        gid,
        pid: 0,
        groups,
        cgroup: cgroup.map(String::from),
        label: label.map(String::from),
    })
}

fn memattr_request_str(m: MemAttrRequest) -> &'static str {
    match m {
        MemAttrRequest::Uncached => "uc",
        MemAttrRequest::WriteCombining => "wc",
        MemAttrRequest::PreferWriteCombining => "prefer-wc",
    }
}

/// `barkeep explain`: exit 0 when the request would be allowed, 6 when
/// denied (the decision is printed either way).
pub(crate) fn explain(client: &Client, a: &ExplainArgs) -> Result<Outcome, Failure> {
    let who = identity(a, &client.welcome().identity)?;
    let slice = SliceRequest {
        device: a.device.clone(),
        bar: a.bar,
        offset: a.offset,
        length: a.length,
        access: if a.rw {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        },
        memattr: match a.wc {
            None => MemAttrRequest::Uncached,
            Some(WcMode::Require) => MemAttrRequest::WriteCombining,
            Some(WcMode::Prefer) => MemAttrRequest::PreferWriteCombining,
        },
    };
    let d = client.explain(ExplainRequest {
        who: who.clone(),
        slice: slice.clone(),
    })?;
    Ok(Outcome {
        json: decision_json(&d, &who, &slice),
        human: decision_human(&d, &who, &slice),
        exit: if d.allowed { exit::OK } else { exit::DENIED },
    })
}

fn decision_json(d: &Decision, who: &PeerIdentity, slice: &SliceRequest) -> Value {
    json!({
        "allowed": d.allowed,
        "code": d.code.map(|c| c.number()),
        "slug": d.code.map(|c| c.slug()),
        "rule": d.rule,
        "reason": d.reason,
        "memattr": d.memattr.map(MemAttr::as_str),
        "who": {
            "uid": who.uid,
            "gid": who.gid,
            "groups": who.groups,
            "cgroup": who.cgroup,
            "label": who.label,
        },
        "slice": {
            "device": slice.device,
            "bar": slice.bar,
            "offset": slice.offset,
            "length": slice.length,
            "access": slice.access.as_str(),
            "memattr": memattr_request_str(slice.memattr),
        },
    })
}

fn decision_human(d: &Decision, who: &PeerIdentity, slice: &SliceRequest) -> String {
    let mut who_text = format!("uid {} gid {} groups {:?}", who.uid, who.gid, who.groups);
    if let Some(c) = &who.cgroup {
        who_text.push_str(&format!(" cgroup {c}"));
    }
    if let Some(l) = &who.label {
        who_text.push_str(&format!(" label {l}"));
    }
    let what = format!(
        "{} bar {} {:#x}+{:#x} {} {}",
        slice.device,
        slice.bar,
        slice.offset,
        slice.length,
        slice.access,
        memattr_request_str(slice.memattr)
    );
    match d.code {
        None => format!(
            "ALLOWED: {what} for {who_text}\n  rule:   {}\n  reason: {}\n",
            d.rule, d.reason
        ),
        Some(code) => format!(
            "DENIED ({} {}): {what} for {who_text}\n  rule:   {}\n  reason: {}\n",
            code.slug(),
            code.number(),
            d.rule,
            d.reason
        ),
    }
}

/// `barkeep reload`.
pub(crate) fn reload(client: &Client) -> Result<Outcome, Failure> {
    let (grants, revoked) = client.reload()?;
    Ok(Outcome {
        json: json!({"reloaded": true, "grants": grants, "revoked": revoked}),
        human: format!(
            "reloaded: {grants} grant(s) in force, {revoked} lease(s) revoked by the new policy\n"
        ),
        exit: exit::OK,
    })
}

/// `barkeep revoke`.
pub(crate) fn revoke(client: &Client, r: &RevokeArgs) -> Result<Outcome, Failure> {
    let (target, target_json) = match (&r.lease, &r.device, r.session, &r.uid, &r.cgroup) {
        (Some(l), None, None, None, None) => {
            (RevokeTarget::Lease(*l), json!({ "lease": l.to_string() }))
        }
        (None, Some(d), None, None, None) => {
            (RevokeTarget::Device(d.clone()), json!({ "device": d }))
        }
        (None, None, Some(s), None, None) => (RevokeTarget::Session(s), json!({ "session": s })),
        (None, None, None, Some(u), None) => {
            let uid = resolve_uid(u)?;
            (RevokeTarget::Uid(uid), json!({ "uid": uid }))
        }
        (None, None, None, None, Some(c)) => {
            (RevokeTarget::Cgroup(c.clone()), json!({ "cgroup": c }))
        }
        _ => return Err(usage(
            "give exactly one of LEASE, --device NAME, --session N, --uid UID or --cgroup PATTERN",
        )),
    };
    let n = client.revoke(target)?;
    Ok(Outcome {
        json: json!({ "revoked": n, "target": target_json }),
        human: format!("revoked {n} lease(s)\n"),
        exit: exit::OK,
    })
}
