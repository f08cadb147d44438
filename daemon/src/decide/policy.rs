//! Pure access decisions: identity x slice request x grants -> allow (which
//! grant, which memory attribute) or deny (which code, why, which rule).
//! Default deny: without a matching grant there is no fd.
//!
//! [`check`] is the whole pure path a slice request takes before the lease
//! table (validation against the devices, then the grants); `Acquire` and
//! `Explain` both go through it, so an explanation is what a request gets.

use crate::config::{Admin, Grant};
use crate::decide::validate;
use barkeep_protocol::{
    Access, DeviceInfo, ErrorCode, ErrorReply, MemAttr, MemAttrRequest, PeerIdentity, Range,
    SliceRequest,
};

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by grant `grant` (0-based index into the config's grants).
    Allow {
        /// The deciding grant.
        grant: usize,
        /// The memory attribute to apply.
        memattr: MemAttr,
    },
    /// Denied.
    Deny {
        /// Error code for the client.
        code: ErrorCode,
        /// Why, in words, with what to do.
        reason: String,
        /// The grant that came closest, when one matched the peer, device and BAR.
        rule: Option<usize>,
    },
}

impl Decision {
    /// The error reply for a denial (`None` when allowed).
    pub fn error(&self) -> Option<ErrorReply> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { code, reason, .. } => Some(ErrorReply::new(*code, reason.clone())),
        }
    }
}

fn who_text(id: &PeerIdentity) -> String {
    let mut s = format!("uid {} (gid {}, groups {:?}", id.uid, id.gid, id.groups);
    if let Some(c) = &id.cgroup {
        s.push_str(&format!(", cgroup {c}"));
    }
    if let Some(l) = &id.label {
        s.push_str(&format!(", label {l}"));
    }
    s.push(')');
    s
}

fn matches_peer(grant: &Grant, id: &PeerIdentity) -> bool {
    grant.who.iter().any(|s| s.matches(id))
}

fn windows_text(grant: &Grant) -> String {
    match &grant.windows {
        None => "the whole BAR".to_string(),
        Some(w) => w
            .iter()
            .map(|r| format!("{:#x}..{:#x}", r.offset, r.offset + r.length))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn in_window(grant: &Grant, range: &Range) -> bool {
    match &grant.windows {
        // Bounds against the BAR are validation's job.
        None => true,
        Some(w) => w.iter().any(|win| win.contains(range)),
    }
}

/// Warnings for `barkeepd check-config`: pairs of grants whose windows on
/// the same BAR overlap while their access differs. A peer matching the
/// read-write grant may then write where the other grant's holders may
/// only read, and its (by default exclusive) leases conflict with theirs:
/// legal, but rarely meant. Grants are counted from 1, as everywhere.
pub fn overlap_warnings(grants: &[Grant]) -> Vec<String> {
    let windows = |g: &Grant| -> Vec<(u64, u64)> {
        match &g.windows {
            None => vec![(0, u64::MAX)],
            Some(w) => w
                .iter()
                .map(|r| (r.offset, r.offset.saturating_add(r.length)))
                .collect(),
        }
    };
    let access = |a: Access| match a {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    };
    let mut out = Vec::new();
    for (i, a) in grants.iter().enumerate() {
        for (j, b) in grants.iter().enumerate().skip(i + 1) {
            if a.device != b.device || a.bar != b.bar || a.access == b.access {
                continue;
            }
            let shared: Vec<String> = windows(a)
                .iter()
                .flat_map(|&(s1, e1)| {
                    windows(b).into_iter().filter_map(move |(s2, e2)| {
                        let (s, e) = (s1.max(s2), e1.min(e2));
                        (s < e).then_some((s, e))
                    })
                })
                .map(|(s, e)| {
                    if (s, e) == (0, u64::MAX) {
                        "the whole BAR".to_string()
                    } else if e == u64::MAX {
                        format!("{s:#x} to the end of the BAR")
                    } else {
                        format!("{s:#x}..{e:#x}")
                    }
                })
                .collect();
            if shared.is_empty() {
                continue;
            }
            let (rw, ro) = if a.access == Access::ReadWrite {
                (i, j)
            } else {
                (j, i)
            };
            out.push(format!(
                "grant #{} ({}) and grant #{} ({}) both cover {} of {:?} bar {}: whoever matches grant #{} may write where grant #{} lets its holders only read, and read-write leases there conflict with their read-only ones; make the windows disjoint unless that is meant",
                i + 1,
                access(a.access),
                j + 1,
                access(b.access),
                shared.join(", "),
                a.device,
                a.bar,
                rw + 1,
                ro + 1,
            ));
        }
    }
    out
}

/// Decides whether `id` may have `req`. `wc_supported` says whether the
/// device can do write-combining on this kernel.
///
/// Checks, narrowing the candidate grants at each step so that the reason
/// names the closest rule: grants for this peer, device and BAR (else
/// `Denied`); whose windows contain the slice (else `OutsideWindow`); that
/// allow the access (else `AccessDenied`); that allow write-combining when
/// it is required (else `WcDenied`, or `Unsupported` when policy allows it
/// but the device cannot).
pub fn decide(
    id: &PeerIdentity,
    req: &SliceRequest,
    grants: &[Grant],
    wc_supported: bool,
) -> Decision {
    let range = req.range();
    let peer: Vec<usize> = grants
        .iter()
        .enumerate()
        .filter(|(_, g)| g.device == req.device && g.bar == req.bar && matches_peer(g, id))
        .map(|(i, _)| i)
        .collect();
    if peer.is_empty() {
        return Decision::Deny {
            code: ErrorCode::Denied,
            reason: format!(
                "no grant gives {} access to {:?} bar {}; ask the administrator for a [[grant]] in the barkeepd config",
                who_text(id),
                req.device,
                req.bar
            ),
            rule: None,
        };
    }
    let windowed: Vec<usize> = peer
        .iter()
        .copied()
        .filter(|&i| in_window(&grants[i], &range))
        .collect();
    if windowed.is_empty() {
        let listed: Vec<String> = peer
            .iter()
            .map(|&i| format!("grant #{}: {}", i + 1, windows_text(&grants[i])))
            .collect();
        return Decision::Deny {
            code: ErrorCode::OutsideWindow,
            reason: format!(
                "slice {range} is not inside a window granted to {} on {:?} bar {} ({}); ask for a slice inside one window",
                who_text(id),
                req.device,
                req.bar,
                listed.join("; ")
            ),
            rule: Some(peer[0]),
        };
    }
    let accessible: Vec<usize> = windowed
        .iter()
        .copied()
        .filter(|&i| req.access == Access::ReadOnly || grants[i].access == Access::ReadWrite)
        .collect();
    if accessible.is_empty() {
        return Decision::Deny {
            code: ErrorCode::AccessDenied,
            reason: format!(
                "slice {range} of {:?} bar {} is granted read-only to {} (grant #{}); ask for a read-only slice",
                req.device,
                req.bar,
                who_text(id),
                windowed[0] + 1
            ),
            rule: Some(windowed[0]),
        };
    }
    let wc_grant = accessible.iter().copied().find(|&i| grants[i].wc);
    match req.memattr {
        MemAttrRequest::Uncached => Decision::Allow {
            grant: accessible[0],
            memattr: MemAttr::Uncached,
        },
        MemAttrRequest::PreferWriteCombining => match wc_grant {
            Some(g) if wc_supported => Decision::Allow {
                grant: g,
                memattr: MemAttr::WriteCombining,
            },
            _ => Decision::Allow {
                grant: accessible[0],
                memattr: MemAttr::Uncached,
            },
        },
        MemAttrRequest::WriteCombining => match wc_grant {
            None => Decision::Deny {
                code: ErrorCode::WcDenied,
                reason: format!(
                    "write-combining is not granted to {} for slice {range} of {:?} bar {} (grant #{} has wc = false); ask for an uncached slice",
                    who_text(id),
                    req.device,
                    req.bar,
                    accessible[0] + 1
                ),
                rule: Some(accessible[0]),
            },
            Some(g) if !wc_supported => Decision::Deny {
                code: ErrorCode::Unsupported,
                reason: format!(
                    "device {:?} cannot map write-combining on this kernel (no VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR, see `barkeep status`); ask for uncached or prefer-wc",
                    req.device
                ),
                rule: Some(g),
            },
            Some(g) => Decision::Allow {
                grant: g,
                memattr: MemAttr::WriteCombining,
            },
        },
    }
}

/// Whether `id` may use admin requests (revoke, peek, poke, list all leases).
/// uid 0 always may.
pub fn is_admin(id: &PeerIdentity, admin: &Admin) -> bool {
    id.uid == 0 || admin.who.iter().any(|s| s.matches(id))
}

/// Which rule decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The request is malformed for the device (alignment, bounds...).
    Validation,
    /// The device cannot serve it (unusable, or no export on this kernel).
    Device,
    /// No grant matches the peer, device and BAR.
    DefaultDeny,
    /// This grant (0-based index).
    Grant(usize),
}

impl Rule {
    /// Words for logs and `barkeep explain`: "grant #2 (device \"sim0\" bar
    /// 0, uid 1000)", "validation", "device", "default deny".
    pub fn text(self, grants: &[Grant]) -> String {
        match self {
            Rule::Validation => "validation".into(),
            Rule::Device => "device".into(),
            Rule::DefaultDeny => "default deny".into(),
            Rule::Grant(i) => match grants.get(i) {
                Some(g) => format!("grant #{} ({})", i + 1, g.summary()),
                None => format!("grant #{}", i + 1),
            },
        }
    }
}

/// A request that passed [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Index of the device in the device list.
    pub device: usize,
    /// The slice.
    pub range: Range,
    /// The deciding grant (0-based).
    pub grant: usize,
    /// The memory attribute to apply.
    pub memattr: MemAttr,
}

/// A request that [`check`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// What the client gets.
    pub error: ErrorReply,
    /// Which rule refused it.
    pub rule: Rule,
}

/// Validates `req` against the devices and decides it against the grants:
/// everything about a request that does not depend on the moment (live
/// leases and quotas are the lease table's business).
pub fn check(
    id: &PeerIdentity,
    req: &SliceRequest,
    grants: &[Grant],
    devices: &[DeviceInfo],
    page_size: u64,
) -> Result<Allowed, Denied> {
    // A device that could not be opened has no BARs to validate against:
    // its problem is the answer (validation says the same for peek/poke).
    if let Some(problem) = devices
        .iter()
        .find(|d| d.name == req.device)
        .and_then(|d| d.problem.as_ref())
    {
        return Err(Denied {
            error: ErrorReply::new(
                ErrorCode::DeviceUnavailable,
                format!(
                    "device {:?} is unavailable: {problem} (see `barkeep status`)",
                    req.device
                ),
            ),
            rule: Rule::Device,
        });
    }
    let (info, range) = validate::slice(req, devices, page_size).map_err(|error| Denied {
        error,
        rule: Rule::Validation,
    })?;
    let device = devices
        .iter()
        .position(|d| d.name == info.name)
        .expect("validate::slice returns one of `devices`");
    if !info.capabilities.export {
        return Err(Denied {
            error: ErrorReply::new(
                ErrorCode::Unsupported,
                format!(
                    "device {:?} cannot export slices on this kernel (no VFIO_DEVICE_FEATURE_DMA_BUF; needs Linux 6.19 or later)",
                    info.name
                ),
            ),
            rule: Rule::Device,
        });
    }
    match decide(id, req, grants, info.capabilities.write_combining) {
        Decision::Allow { grant, memattr } => Ok(Allowed {
            device,
            range,
            grant,
            memattr,
        }),
        Decision::Deny { code, reason, rule } => Err(Denied {
            error: ErrorReply::new(code, reason),
            rule: rule.map_or(Rule::DefaultDeny, Rule::Grant),
        }),
    }
}

/// [`check`] as an answer to `Explain`.
pub fn explain(
    id: &PeerIdentity,
    req: &SliceRequest,
    grants: &[Grant],
    devices: &[DeviceInfo],
    page_size: u64,
) -> barkeep_protocol::Decision {
    match check(id, req, grants, devices, page_size) {
        Ok(a) => {
            let g = &grants[a.grant];
            let window = match &g.windows {
                None => "the whole BAR".to_string(),
                Some(w) => w
                    .iter()
                    .find(|w| w.contains(&a.range))
                    .map(|w| format!("window {:#x}..{:#x}", w.offset, w.offset + w.length))
                    .unwrap_or_default(),
            };
            barkeep_protocol::Decision {
                allowed: true,
                code: None,
                rule: Rule::Grant(a.grant).text(grants),
                reason: format!(
                    "{} may map {} ({}) of {:?} bar {} in {window}, {}; {}{}",
                    who_text(id),
                    a.range,
                    req.access,
                    req.device,
                    req.bar,
                    a.memattr,
                    if g.exclusive_for(req.access) {
                        "exclusive"
                    } else {
                        "shared"
                    },
                    match g.on_disconnect {
                        crate::config::OnDisconnect::Revoke => ", revoked on disconnect",
                        crate::config::OnDisconnect::Keep => ", kept after disconnect",
                    }
                ),
                memattr: Some(a.memattr),
            }
        }
        Err(d) => barkeep_protocol::Decision {
            allowed: false,
            code: Some(d.error.code),
            rule: d.rule.text(grants),
            reason: d.error.message,
            memattr: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Subject;

    fn id(uid: u32, gid: u32, groups: &[u32]) -> PeerIdentity {
        PeerIdentity {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
            ..Default::default()
        }
    }

    fn grant(who: Vec<Subject>, windows: Option<Vec<Range>>, access: Access, wc: bool) -> Grant {
        Grant {
            device: "sim0".into(),
            bar: 0,
            windows,
            access,
            wc,
            who,
            exclusive: None,
            on_disconnect: Default::default(),
            quota: Default::default(),
        }
    }

    fn req(offset: u64, length: u64, access: Access, memattr: MemAttrRequest) -> SliceRequest {
        SliceRequest {
            device: "sim0".into(),
            bar: 0,
            offset,
            length,
            access,
            memattr,
        }
    }

    const RO: Access = Access::ReadOnly;
    const RW: Access = Access::ReadWrite;
    const UC: MemAttrRequest = MemAttrRequest::Uncached;

    #[test]
    fn overlapping_windows_with_different_access_are_warned_about() {
        let w = |o: u64, l: u64| Some(vec![Range::new(o, l)]);
        let who = || vec![Subject::Uid(1)];
        let grants = [
            grant(who(), w(0, 0x8000), RW, false),
            grant(who(), w(0x4000, 0xc000), RO, false),
            grant(who(), w(0x8000, 0x1000), RO, false),
            grant(who(), None, RO, false),
        ];
        let warnings = overlap_warnings(&grants);
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("grant #1 (read-write) and grant #2 (read-only) both cover 0x4000..0x8000 of \"sim0\" bar 0"),
            "{}",
            warnings[0]
        );
        assert!(warnings[1]
            .contains("grant #1 (read-write) and grant #4 (read-only) both cover 0x0..0x8000"));
        // #2, #3 and #4 are all read-only; #1 and #3 only touch.
        let mut other_bar = grant(who(), w(0, 0x8000), RO, false);
        other_bar.bar = 2;
        assert!(overlap_warnings(&[grants[0].clone(), other_bar]).is_empty());
    }

    fn code(d: Decision) -> ErrorCode {
        match d {
            Decision::Deny { code, .. } => code,
            Decision::Allow { .. } => panic!("allowed"),
        }
    }

    #[test]
    fn default_deny() {
        let d = decide(&id(1000, 1000, &[]), &req(0, 0x1000, RO, UC), &[], true);
        assert_eq!(code(d), ErrorCode::Denied);
    }

    #[test]
    fn each_match_kind() {
        let cases = [
            (Subject::Uid(1000), id(1000, 5, &[]), true),
            (Subject::Uid(1000), id(1001, 5, &[]), false),
            (
                Subject::User {
                    name: "a".into(),
                    uid: 1000,
                },
                id(1000, 5, &[]),
                true,
            ),
            (Subject::Gid(44), id(1, 44, &[]), true),
            (Subject::Gid(44), id(1, 5, &[7, 44]), true),
            (Subject::Gid(44), id(1, 5, &[7]), false),
            (
                Subject::Group {
                    name: "video".into(),
                    gid: 44,
                },
                id(1, 5, &[44]),
                true,
            ),
            (
                Subject::Group {
                    name: "video".into(),
                    gid: 44,
                },
                id(44, 5, &[]),
                false,
            ),
        ];
        for (subject, peer, allowed) in cases {
            let g = [grant(vec![subject.clone()], None, RO, false)];
            let d = decide(&peer, &req(0, 0x1000, RO, UC), &g, false);
            assert_eq!(
                matches!(d, Decision::Allow { .. }),
                allowed,
                "{subject} vs {peer:?}: {d:?}"
            );
        }
    }

    #[test]
    fn other_device_or_bar_is_denied() {
        let g = [grant(vec![Subject::Uid(1)], None, RW, true)];
        let mut r = req(0, 0x1000, RO, UC);
        r.bar = 2;
        assert_eq!(
            code(decide(&id(1, 1, &[]), &r, &g, true)),
            ErrorCode::Denied
        );
        r.bar = 0;
        r.device = "sim1".into();
        assert_eq!(
            code(decide(&id(1, 1, &[]), &r, &g, true)),
            ErrorCode::Denied
        );
    }

    #[test]
    fn window_edges() {
        let g = [grant(
            vec![Subject::Uid(1)],
            Some(vec![Range::new(0x1000, 0x8000)]),
            RO,
            false,
        )];
        let p = id(1, 1, &[]);
        assert!(matches!(
            decide(&p, &req(0x1000, 0x1000, RO, UC), &g, false),
            Decision::Allow { grant: 0, .. }
        ));
        assert!(
            matches!(
                decide(&p, &req(0x8000, 0x1000, RO, UC), &g, false),
                Decision::Allow { .. }
            ),
            "last page in"
        );
        assert_eq!(
            code(decide(&p, &req(0x9000, 0x1000, RO, UC), &g, false)),
            ErrorCode::OutsideWindow,
            "first page out"
        );
        assert_eq!(
            code(decide(&p, &req(0x0, 0x1000, RO, UC), &g, false)),
            ErrorCode::OutsideWindow,
            "page before"
        );
        assert_eq!(
            code(decide(&p, &req(0x8000, 0x2000, RO, UC), &g, false)),
            ErrorCode::OutsideWindow,
            "straddles the end"
        );
        let Decision::Deny { reason, rule, .. } =
            decide(&p, &req(0x9000, 0x1000, RO, UC), &g, false)
        else {
            panic!()
        };
        assert!(reason.contains("grant #1: 0x1000..0x9000"), "{reason}");
        assert_eq!(rule, Some(0));
    }

    #[test]
    fn ro_versus_rw() {
        let p = id(1, 1, &[]);
        let ro = [grant(vec![Subject::Uid(1)], None, RO, false)];
        assert!(matches!(
            decide(&p, &req(0, 0x1000, RO, UC), &ro, false),
            Decision::Allow { .. }
        ));
        let d = decide(&p, &req(0, 0x1000, RW, UC), &ro, false);
        assert!(d.error().unwrap().message.contains("read-only"));
        assert_eq!(code(d), ErrorCode::AccessDenied);
        let rw = [grant(vec![Subject::Uid(1)], None, RW, false)];
        assert!(matches!(
            decide(&p, &req(0, 0x1000, RW, UC), &rw, false),
            Decision::Allow { .. }
        ));
        assert!(
            matches!(
                decide(&p, &req(0, 0x1000, RO, UC), &rw, false),
                Decision::Allow { .. }
            ),
            "rw implies ro"
        );
        // A second grant can widen the first: ro everywhere, rw in a window.
        let both = [
            grant(vec![Subject::Uid(1)], None, RO, false),
            grant(
                vec![Subject::Gid(1)],
                Some(vec![Range::new(0x4000, 0x1000)]),
                RW,
                false,
            ),
        ];
        assert!(matches!(
            decide(&p, &req(0x4000, 0x1000, RW, UC), &both, false),
            Decision::Allow { grant: 1, .. }
        ));
        assert_eq!(
            code(decide(&p, &req(0x5000, 0x1000, RW, UC), &both, false)),
            ErrorCode::AccessDenied
        );
    }

    #[test]
    fn write_combining() {
        let p = id(1, 1, &[]);
        let wc = MemAttrRequest::WriteCombining;
        let prefer = MemAttrRequest::PreferWriteCombining;
        let no = [grant(vec![Subject::Uid(1)], None, RO, false)];
        let yes = [grant(vec![Subject::Uid(1)], None, RO, true)];
        assert_eq!(
            code(decide(&p, &req(0, 0x1000, RO, wc), &no, true)),
            ErrorCode::WcDenied
        );
        assert_eq!(
            code(decide(&p, &req(0, 0x1000, RO, wc), &yes, false)),
            ErrorCode::Unsupported
        );
        assert_eq!(
            decide(&p, &req(0, 0x1000, RO, wc), &yes, true),
            Decision::Allow {
                grant: 0,
                memattr: MemAttr::WriteCombining
            }
        );
        assert_eq!(
            decide(&p, &req(0, 0x1000, RO, prefer), &no, true),
            Decision::Allow {
                grant: 0,
                memattr: MemAttr::Uncached
            }
        );
        assert_eq!(
            decide(&p, &req(0, 0x1000, RO, prefer), &yes, false),
            Decision::Allow {
                grant: 0,
                memattr: MemAttr::Uncached
            }
        );
        assert_eq!(
            decide(&p, &req(0, 0x1000, RO, prefer), &yes, true),
            Decision::Allow {
                grant: 0,
                memattr: MemAttr::WriteCombining
            }
        );
        assert_eq!(
            decide(&p, &req(0, 0x1000, RO, UC), &yes, true),
            Decision::Allow {
                grant: 0,
                memattr: MemAttr::Uncached
            }
        );
    }

    #[test]
    fn cgroup_and_label_subjects() {
        use crate::config::pattern::{CgroupPattern, LabelPattern};
        let mut peer = id(5000, 5000, &[]);
        let g = [
            grant(
                vec![Subject::Cgroup(
                    CgroupPattern::parse("/kubepods.slice/*/cri-containerd-*.scope").unwrap(),
                )],
                None,
                RO,
                false,
            ),
            grant(
                vec![Subject::Label(
                    LabelPattern::parse("*:container_t:*").unwrap(),
                )],
                None,
                RW,
                false,
            ),
        ];
        let r = req(0, 0x1000, RO, UC);
        assert_eq!(
            code(decide(&peer, &r, &g, false)),
            ErrorCode::Denied,
            "no cgroup, no label"
        );
        peer.cgroup = Some("/kubepods.slice/pod1/cri-containerd-9f.scope".into());
        assert!(matches!(
            decide(&peer, &r, &g, false),
            Decision::Allow { grant: 0, .. }
        ));
        peer.cgroup = Some("/kubepods.slice/pod1/x/cri-containerd-9f.scope".into());
        assert_eq!(code(decide(&peer, &r, &g, false)), ErrorCode::Denied);
        peer.label = Some("system_u:system_r:container_t:s0".into());
        assert!(matches!(
            decide(&peer, &req(0, 0x1000, RW, UC), &g, false),
            Decision::Allow { grant: 1, .. }
        ));
        let d = decide(&id(1, 1, &[]), &r, &g, false);
        assert!(d.error().unwrap().message.contains("no grant gives uid 1"));
    }

    fn devices() -> Vec<DeviceInfo> {
        use barkeep_protocol::{BackendKind, BarInfo, Capabilities};
        vec![DeviceInfo {
            name: "sim0".into(),
            backend: BackendKind::Sim,
            pci: None,
            ownership: "sim".into(),
            bars: vec![BarInfo {
                index: 0,
                size: 0x10000,
                readable: true,
                writable: true,
                mmap: true,
                mappable: vec![Range::new(0, 0x10000)],
                reserved: vec![],
            }],
            capabilities: Capabilities {
                export: true,
                ..Default::default()
            },
            problem: None,
        }]
    }

    #[test]
    fn explain_names_the_rule() {
        let g = [
            grant(
                vec![Subject::Uid(7)],
                Some(vec![Range::new(0, 0x4000)]),
                RO,
                false,
            ),
            grant(
                vec![Subject::Uid(1)],
                Some(vec![Range::new(0x4000, 0x4000)]),
                RW,
                false,
            ),
        ];
        let devs = devices();
        let d = explain(
            &id(1, 1, &[]),
            &req(0x5000, 0x1000, RW, UC),
            &g,
            &devs,
            4096,
        );
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.rule, "grant #2 (device \"sim0\" bar 0, uid 1)");
        assert!(
            d.reason.contains("window 0x4000..0x8000") && d.reason.contains("exclusive"),
            "{}",
            d.reason
        );
        assert_eq!(d.memattr, Some(MemAttr::Uncached));
        let d = explain(
            &id(1, 1, &[]),
            &req(0x8000, 0x1000, RW, UC),
            &g,
            &devs,
            4096,
        );
        assert_eq!((d.allowed, d.code), (false, Some(ErrorCode::OutsideWindow)));
        assert!(d.rule.starts_with("grant #2"), "{}", d.rule);
        let d = explain(&id(2, 2, &[]), &req(0, 0x1000, RO, UC), &g, &devs, 4096);
        assert_eq!(
            (d.rule.as_str(), d.code),
            ("default deny", Some(ErrorCode::Denied))
        );
        let d = explain(&id(1, 1, &[]), &req(0x800, 0x1000, RO, UC), &g, &devs, 4096);
        assert_eq!(
            (d.rule.as_str(), d.code),
            ("validation", Some(ErrorCode::Unaligned))
        );
        let mut broken = devices();
        broken[0].problem = Some("gone".into());
        let d = explain(
            &id(1, 1, &[]),
            &req(0x4000, 0x1000, RO, UC),
            &g,
            &broken,
            4096,
        );
        assert_eq!(
            (d.rule.as_str(), d.code),
            ("device", Some(ErrorCode::DeviceUnavailable))
        );
        // As a device that could not be opened at all is: no BARs known.
        broken[0].bars.clear();
        let d = explain(
            &id(1, 1, &[]),
            &req(0x4000, 0x1000, RO, UC),
            &g,
            &broken,
            4096,
        );
        assert_eq!(
            (d.rule.as_str(), d.code),
            ("device", Some(ErrorCode::DeviceUnavailable))
        );
        assert!(d.reason.contains("gone"), "{}", d.reason);
    }

    #[test]
    fn admins() {
        let admin = Admin::default();
        assert!(is_admin(&id(0, 0, &[]), &admin));
        assert!(!is_admin(&id(1000, 1000, &[0]), &admin));
        let admin = Admin {
            who: vec![Subject::Group {
                name: "wheel".into(),
                gid: 10,
            }],
        };
        assert!(is_admin(&id(1000, 1000, &[10]), &admin));
        assert!(is_admin(&id(0, 0, &[]), &admin), "root always is");
        assert!(!is_admin(&id(1000, 1000, &[]), &admin));
    }
}
