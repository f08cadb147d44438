//! Patterns that policy matches identities with: cgroup v2 paths (exact,
//! `*` inside one path component, `/**` for a whole subtree) and LSM labels
//! (`*` anywhere). Pure; parsed once at config load, so a bad pattern is a
//! config error and never a surprise at request time.

use std::fmt;

/// Longest pattern or matched text (PATH_MAX; also bounds matching cost).
pub const MAX_PATTERN: usize = 4096;

/// Whether `text` matches `glob`, where `*` matches any run of characters
/// (possibly empty) and everything else matches itself.
///
/// Greedy with one backtrack point: linear in practice, O(len(text) x
/// len(glob)) at worst, and both are bounded by [`MAX_PATTERN`].
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t) = (glob.as_bytes(), text.as_bytes());
    let (mut gi, mut ti) = (0usize, 0usize);
    // Where the last `*` was, and where in the text it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, ti));
            gi += 1;
        } else if gi < g.len() && g[gi] == t[ti] {
            gi += 1;
            ti += 1;
        } else if let Some((sg, st)) = star {
            // Let the last `*` swallow one more character and retry.
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

/// A cgroup v2 path pattern, e.g. `/system.slice/foo.service`,
/// `/kubepods.slice/*/cri-containerd-*.scope` or `/user.slice/**`.
///
/// Components are matched one by one; `*` never matches across a `/`. A
/// last component `**` (or a trailing `/`) matches the cgroup itself and
/// every cgroup below it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CgroupPattern {
    text: String,
    components: Vec<String>,
    subtree: bool,
}

impl CgroupPattern {
    /// Parses a pattern; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<CgroupPattern, String> {
        if text.len() > MAX_PATTERN {
            return Err(format!(
                "cgroup pattern of {} bytes is too long (at most {MAX_PATTERN})",
                text.len()
            ));
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a cgroup path: start with '/', as in /proc/PID/cgroup (e.g. \"/system.slice/foo.service\")"
            ));
        };
        if text.contains('\0') {
            return Err(format!("{text:?} contains a NUL byte"));
        }
        let (body, subtree) = if body.is_empty() {
            ("", false)
        } else if let Some(b) = body.strip_suffix("/**") {
            (b, true)
        } else if body == "**" {
            ("", true)
        } else if let Some(b) = body.strip_suffix('/') {
            (b, true)
        } else {
            (body, false)
        };
        let components: Vec<String> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').map(str::to_string).collect()
        };
        for c in &components {
            if c.is_empty() {
                return Err(format!(
                    "{text:?} has an empty path component ('//'): write each component once"
                ));
            }
            if c == "." || c == ".." {
                return Err(format!(
                    "{text:?} has a {c:?} component: write the path as /proc/PID/cgroup shows it"
                ));
            }
            if c.contains("**") {
                return Err(format!(
                    "{text:?}: '**' is only allowed as the last component (\"/a/**\" = /a and everything below it); use '*' inside a component"
                ));
            }
        }
        Ok(CgroupPattern {
            text: text.to_string(),
            components,
            subtree,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the cgroup path `path` (as in `/proc/PID/cgroup`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        if path.len() > MAX_PATTERN {
            return false;
        }
        let mut parts = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect::<Vec<_>>()
        };
        if parts.iter().any(|p| p.is_empty()) {
            return false;
        }
        if parts.len() < self.components.len() {
            return false;
        }
        if parts.len() > self.components.len() {
            if !self.subtree {
                return false;
            }
            parts.truncate(self.components.len());
        }
        self.components
            .iter()
            .zip(parts)
            .all(|(g, p)| glob_match(g, p))
    }
}

impl fmt::Display for CgroupPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An LSM label pattern (SO_PEERSEC), e.g.
/// `system_u:system_r:container_t:*`; `*` matches anything, `:` included.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LabelPattern(String);

impl LabelPattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<LabelPattern, String> {
        if text.is_empty() {
            return Err("an empty label matches nothing: write the label as `ps -Z` or /proc/PID/attr/current shows it".into());
        }
        if text.len() > MAX_PATTERN {
            return Err(format!(
                "label pattern of {} bytes is too long (at most {MAX_PATTERN})",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Err(format!("{text:?} contains a NUL byte"));
        }
        Ok(LabelPattern(text.to_string()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `label` matches.
    pub fn matches(&self, label: &str) -> bool {
        label.len() <= MAX_PATTERN && glob_match(&self.0, label)
    }
}

impl fmt::Display for LabelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        assert!(glob_match("abc", "abc"));
        assert!(!glob_match("abc", "abd"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*", "a"));
        assert!(glob_match(
            "cri-containerd-*.scope",
            "cri-containerd-12ab.scope"
        ));
        assert!(!glob_match(
            "cri-containerd-*.scope",
            "cri-containerd-12ab.slice"
        ));
        assert!(glob_match("*a*b", "xxaxxab"));
        assert!(!glob_match("*a*b", "xxaxxa"));
        assert!(glob_match("a**b", "ab"));
        assert!(!glob_match("", "a"));
    }

    fn cg(p: &str) -> CgroupPattern {
        CgroupPattern::parse(p).unwrap()
    }

    #[test]
    fn cgroup_patterns() {
        let exact = cg("/system.slice/foo.service");
        assert!(exact.matches("/system.slice/foo.service"));
        assert!(!exact.matches("/system.slice/foo.service/child"));
        assert!(!exact.matches("/system.slice/foo.servicex"));
        assert!(!exact.matches("/system.slice"));
        assert!(!exact.matches("system.slice/foo.service"));

        let k8s = cg("/kubepods.slice/*/cri-containerd-*.scope");
        assert!(k8s.matches("/kubepods.slice/kubepods-besteffort.slice/cri-containerd-ab12.scope"));
        assert!(
            !k8s.matches("/kubepods.slice/a/b/cri-containerd-ab12.scope"),
            "* is one component"
        );
        assert!(!k8s.matches("/kubepods.slice/cri-containerd-ab12.scope"));

        let tree = cg("/user.slice/**");
        assert!(tree.matches("/user.slice"));
        assert!(tree.matches("/user.slice/user-1000.slice/session-2.scope"));
        assert!(!tree.matches("/user.slicex"));
        assert!(!tree.matches("/system.slice"));
        assert_eq!(
            cg("/user.slice/"),
            CgroupPattern {
                text: "/user.slice/".into(),
                ..tree.clone()
            }
        );

        let root = cg("/");
        assert!(root.matches("/"));
        assert!(!root.matches("/a"));
        assert!(cg("/**").matches("/a/b"));
        assert!(!cg("/a").matches("/a//"), "empty components never match");
    }

    #[test]
    fn bad_cgroup_patterns_say_why() {
        for (p, why) in [
            ("system.slice", "start with '/'"),
            ("/a//b", "empty path component"),
            ("/a/../b", "\"..\""),
            ("/a/**/b", "last component"),
            ("/a/x**", "last component"),
        ] {
            let e = CgroupPattern::parse(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
        assert!(CgroupPattern::parse(&format!("/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn labels() {
        let l = LabelPattern::parse("system_u:system_r:container_t:*").unwrap();
        assert!(l.matches("system_u:system_r:container_t:s0:c1,c2"));
        assert!(!l.matches("system_u:system_r:init_t:s0"));
        assert!(LabelPattern::parse("unconfined")
            .unwrap()
            .matches("unconfined"));
        assert!(LabelPattern::parse("").is_err());
    }

    /// Reference: the textbook recursive definition.
    fn reference(g: &[u8], t: &[u8]) -> bool {
        match (g.first(), t.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(b'*'), _) => reference(&g[1..], t) || (!t.is_empty() && reference(g, &t[1..])),
            (Some(c), Some(d)) => c == d && reference(&g[1..], &t[1..]),
            (Some(_), None) => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(g in "[ab*]{0,8}", t in "[ab]{0,10}") {
            prop_assert_eq!(glob_match(&g, &t), reference(g.as_bytes(), t.as_bytes()));
        }

        #[test]
        fn cgroup_matching_never_panics(p in "[/a*.]{0,12}", t in "[/a.]{0,16}") {
            if let Ok(pat) = CgroupPattern::parse(&p) {
                let _ = pat.matches(&t);
            }
        }
    }
}
