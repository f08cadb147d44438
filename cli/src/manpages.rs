//! Man pages and shell completions: barkeep(1) and one page per
//! subcommand, barkeepd(8) from the daemon's clap definition,
//! barkeep.toml(5) from docs/config.md, and completion scripts.
//!
//! Packaging runs `barkeep generate-man DIR` and `barkeep completions SHELL
//! --dir DIR` after the build; nothing here needs a daemon.

use crate::{exit, Cli, Failure, Outcome};
use barkeep_client::ClientCode;
use clap::CommandFactory;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The configuration reference that barkeep.toml(5) is made from.
const CONFIG_MD: &str = include_str!("../../docs/config.md");

fn io_failure(what: String, e: std::io::Error) -> Failure {
    Failure::new(ClientCode::Io, format!("{what}: {e}"), exit::FAILED)
}

/// `barkeep completions SHELL [--dir DIR]`.
pub(crate) fn completions(
    shell: clap_complete::Shell,
    dir: Option<&Path>,
) -> Result<Outcome, Failure> {
    let mut cmd = Cli::command();
    match dir {
        None => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "barkeep", &mut buf);
            Ok(Outcome {
                json: json!({ "shell": shell.to_string(), "script": String::from_utf8_lossy(&buf) }),
                human: String::from_utf8_lossy(&buf).into_owned(),
                exit: exit::OK,
            })
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| io_failure(format!("cannot create {}", dir.display()), e))?;
            let path = clap_complete::generate_to(shell, &mut cmd, "barkeep", dir)
                .map_err(|e| io_failure(format!("cannot write into {}", dir.display()), e))?;
            Ok(Outcome {
                json: json!({ "written": [path.display().to_string()] }),
                human: format!("wrote {}\n", path.display()),
                exit: exit::OK,
            })
        }
    }
}

/// `barkeep generate-man DIR`: writes every page and lists them.
pub(crate) fn generate(dir: &Path) -> Result<Outcome, Failure> {
    let written = write_pages(dir)
        .map_err(|e| io_failure(format!("cannot write into {}", dir.display()), e))?;
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    Ok(Outcome {
        human: names.iter().map(|n| format!("wrote {n}\n")).collect(),
        json: json!({ "written": names }),
        exit: exit::OK,
    })
}

fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    // barkeep(1), with the environment and files it uses.
    let path = dir.join("barkeep.1");
    std::fs::write(&path, render(man(cmd.clone()), BARKEEP_EXTRA)?)?;
    written.push(path);
    // barkeep-SUBCOMMAND(1), as git does: barkeep(1) lists them by these
    // names, so each one it lists exists.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let path = dir.join(format!("barkeep-{}.1", sub.get_name()));
        let page = render(man(sub.clone()), ".SH \"SEE ALSO\"\n\\fBbarkeep\\fR(1)\n")?;
        std::fs::write(&path, page)?;
        written.push(path);
    }
    // barkeepd(8) and barkeepd-SUBCOMMAND(8) for the pages it lists.
    let mut daemon = barkeep_daemon::cli::Cli::command().disable_help_subcommand(true);
    daemon.build();
    let path = dir.join("barkeepd.8");
    std::fs::write(
        &path,
        render(man(daemon.clone()).section("8"), BARKEEPD_EXTRA)?,
    )?;
    written.push(path);
    for sub in daemon.get_subcommands().filter(|s| !s.is_hide_set()) {
        let path = dir.join(format!("barkeepd-{}.8", sub.get_name()));
        let page = render(
            man(sub.clone()).section("8"),
            ".SH \"SEE ALSO\"\n\\fBbarkeepd\\fR(8), \\fBbarkeep.toml\\fR(5)\n",
        )?;
        std::fs::write(&path, page)?;
        written.push(path);
    }
    // barkeep.toml(5).
    let path = dir.join("barkeep.toml.5");
    std::fs::write(&path, config_page(CONFIG_MD))?;
    written.push(path);
    Ok(written)
}

/// A clap page with `extra` sections appended, and the help texts'
/// Markdown code spans (`--wc`) in bold rather than as literal backticks.
fn render(man: clap_mangen::Man, extra: &str) -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    man.render(&mut page)?;
    let text = String::from_utf8_lossy(&page);
    let mut out = String::with_capacity(text.len() + extra.len());
    for line in text.lines() {
        out.push_str(&code_spans(line));
        out.push('\n');
    }
    out.push_str(extra);
    Ok(out.into_bytes())
}

/// `code` -> \fBcode\fR in one line of roff that is already escaped.
fn code_spans(line: &str) -> String {
    if line.matches('`').count() < 2 {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len() + 8);
    let mut open = false;
    for c in line.chars() {
        if c == '`' {
            out.push_str(if open { "\\fR" } else { "\\fB" });
            open = !open;
        } else {
            out.push(c);
        }
    }
    if open {
        out.push_str("\\fR");
    }
    out
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .source(format!("barkeep {}", env!("CARGO_PKG_VERSION")))
        .manual("barkeep")
}

const BARKEEP_EXTRA: &str = r#".SH ENVIRONMENT
.TP
\fBBARKEEP_SOCKET\fR
The daemon's socket when \fB\-\-socket\fR is not given (default
/run/barkeep/barkeep.sock).
.TP
\fBBARKEEP_SLICES\fR
Set by \fBbarkeep exec\fR for its command: a JSON array describing each
inherited slice (fd, device, bar, offset, length, access, memattr, lease,
buffer_name, ino, status_fd, status_offset).
.TP
\fBBARKEEP_CDI_SLICES\fR
Set in containers by a CDI spec from \fBbarkeep cdi\fR: space-separated
slice specs that \fBbarkeep exec\fR acquires when given no \fB\-\-slice\fR.
.SH "SEE ALSO"
\fBbarkeepd\fR(8), \fBbarkeep.toml\fR(5), \fBbarkeep\-exec\fR(1),
\fBbarkeep\-cdi\fR(1)
"#;

const BARKEEPD_EXTRA: &str = r#".SH FILES
.TP
/etc/barkeep/barkeep.toml
The configuration (see \fBbarkeep.toml\fR(5)).
.TP
/run/barkeep/barkeep.sock
The default socket clients connect to.
.SH "SEE ALSO"
\fBbarkeep\fR(1), \fBbarkeep.toml\fR(5), \fBsystemd.socket\fR(5)
"#;

/// Escapes text for roff and turns Markdown's `code` and **strong** into
/// bold and a [link](target) into its text (with the address when it
/// leaves the documentation).
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    let mut strong = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        if !in_code && c == '*' && rest.starts_with('*') {
            rest = &rest[1..];
            out.push_str(if strong { "\\fR" } else { "\\fB" });
            strong = !strong;
            continue;
        }
        if !in_code && c == '[' {
            if let Some((label, target, after)) = link(rest) {
                out.push_str(&inline(label));
                if target.starts_with("http://") || target.starts_with("https://") {
                    out.push_str(&format!(" <{}>", inline(target)));
                }
                rest = after;
                continue;
            }
        }
        match c {
            '`' => {
                out.push_str(if in_code { "\\fR" } else { "\\fB" });
                in_code = !in_code;
            }
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c if !c.is_ascii() => out.push_str(&format!("\\[u{:04X}]", c as u32)),
            _ => out.push(c),
        }
    }
    if in_code || strong {
        out.push_str("\\fR");
    }
    // A line starting with . or ' would be a roff request.
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// After a `[`: the label, the target and what follows `[label](target)`.
fn link(rest: &str) -> Option<(&str, &str, &str)> {
    let close = rest.find("](")?;
    let label = &rest[..close];
    if label.contains('[') || label.contains(']') {
        return None;
    }
    let tail = &rest[close + 2..];
    let end = tail.find(')')?;
    let target = &tail[..end];
    if target.contains(' ') {
        return None;
    }
    Some((label, target, &tail[end + 1..]))
}

fn table_cells(line: &str) -> Vec<&str> {
    line.trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split(" | ")
        .map(str::trim)
        .collect()
}

/// barkeep.toml(5) from the configuration reference's Markdown: headings,
/// paragraphs, `key | default | meaning` tables, lists and code blocks.
pub(crate) fn config_page(md: &str) -> String {
    let mut out = format!(
        ".TH BARKEEP.TOML 5 \"\" \"barkeep {}\" \"barkeep\"\n.SH NAME\nbarkeep.toml \\- barkeepd configuration file\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut lines = md.lines().peekable();
    let mut in_fence = false;
    let mut first_heading_done = false;
    let mut description_started = false;
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            if in_fence {
                out.push_str(".fi\n.RE\n");
            } else {
                out.push_str(".PP\n.RS 4\n.nf\n");
            }
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            out.push_str(&format!("{}\n", verbatim(line)));
            continue;
        }
        if let Some(title) = line.strip_prefix("# ") {
            let _ = title;
            first_heading_done = true;
            continue;
        }
        if !description_started && first_heading_done && !line.trim().is_empty() {
            out.push_str(".SH DESCRIPTION\n");
            description_started = true;
        }
        if let Some(h) = line.strip_prefix("## ") {
            out.push_str(&format!(
                ".SH \"{}\"\n",
                inline(&h.replace('`', "")).to_uppercase()
            ));
        } else if let Some(h) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS \"{}\"\n", inline(&h.replace('`', ""))));
        } else if line.starts_with('|') {
            let cells = table_cells(line);
            let header = cells.first().is_some_and(|c| *c == "key")
                || cells
                    .iter()
                    .all(|c| c.chars().all(|ch| ch == '-' || ch == ' '));
            if header || cells.len() < 3 {
                continue;
            }
            let default = match cells[1] {
                "required" => " (required)".to_string(),
                "–" | "-" | "" => String::new(),
                d => format!(" (default: {})", inline(d)),
            };
            out.push_str(&format!(
                ".TP\n{}{default}\n{}\n",
                inline(cells[0]),
                inline(&cells[2..].join(" | "))
            ));
        } else if let Some(item) = line.strip_prefix("- ") {
            out.push_str(&format!(".IP \\(bu 2\n{}\n", inline(item)));
            while let Some(next) = lines.peek() {
                if next.starts_with("  ") && !next.trim().is_empty() {
                    out.push_str(&format!("{}\n", inline(next.trim())));
                    lines.next();
                } else {
                    break;
                }
            }
        } else if line.starts_with("    ") {
            out.push_str(".PP\n.RS 4\n.nf\n");
            out.push_str(&format!("{}\n", verbatim(line.trim_start())));
            while let Some(next) = lines.peek() {
                if next.starts_with("    ") {
                    out.push_str(&format!("{}\n", verbatim(next.trim_start())));
                    lines.next();
                } else {
                    break;
                }
            }
            out.push_str(".fi\n.RE\n");
        } else if line.trim().is_empty() {
            continue;
        } else {
            // A paragraph: this line and the following non-blank ones.
            out.push_str(&format!(".PP\n{}\n", inline(line)));
            while let Some(next) = lines.peek() {
                if next.trim().is_empty()
                    || next.starts_with('|')
                    || next.starts_with("- ")
                    || next.starts_with('#')
                    || next.starts_with("```")
                    || next.starts_with("    ")
                {
                    break;
                }
                out.push_str(&format!("{}\n", inline(next)));
                lines.next();
            }
        }
    }
    out.push_str(".SH \"SEE ALSO\"\n\\fBbarkeepd\\fR(8), \\fBbarkeep\\fR(1)\n");
    out
}

/// A line of a code block: only escapes, no formatting.
fn verbatim(line: &str) -> String {
    let s: String = line
        .replace('\\', "\\e")
        .replace('-', "\\-")
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\[u{:04X}]", c as u32)
            }
        })
        .collect();
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_markdown_becomes_roff_sections_and_tagged_paragraphs() {
        let md = "# Title\n\nIntro `x` text\nmore.\n\n## `[kernel]`\n\n| key | default | meaning |\n| --- | --- | --- |\n| `a_b` | `11` | The thing. |\n\n- one\n  two\n\n    barkeepd check-config f\n\n```toml\n.dot = 1\n```\n";
        let page = config_page(md);
        assert!(page.starts_with(".TH BARKEEP.TOML 5"));
        assert!(page.contains(".SH DESCRIPTION\n.PP\nIntro \\fBx\\fR text\nmore.\n"));
        assert!(page.contains(".SH \"[KERNEL]\"\n"));
        assert!(page.contains(".TP\n\\fBa_b\\fR (default: \\fB11\\fR)\nThe thing.\n"));
        assert!(page.contains(".IP \\(bu 2\none\ntwo\n"));
        assert!(page.contains(".nf\nbarkeepd check\\-config f\n.fi\n"));
        assert!(page.contains("\\&.dot = 1\n"));
        assert!(!page.contains("| key"));
    }

    #[test]
    fn strong_text_and_links_become_roff() {
        assert_eq!(
            inline("**Devices are not reopened** on reload. See [operators.md](operators.md#7-restarts)."),
            "\\fBDevices are not reopened\\fR on reload. See operators.md."
        );
        assert_eq!(
            inline("the [CDI](https://example.org/cdi) spec, `a**b` and [x]"),
            "the CDI <https://example.org/cdi> spec, \\fBa**b\\fR and [x]"
        );
        assert_eq!(
            code_spans("Write\\-combining: `\\-\\-wc` requires it"),
            "Write\\-combining: \\fB\\-\\-wc\\fR requires it"
        );
    }
}
