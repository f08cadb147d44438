//! Man pages and completions: `barkeep generate-man DIR` writes barkeep(1)
//! naming every subcommand (each with its own page), barkeepd(8) and
//! barkeep.toml(5) covering every section and key of docs/config.md; the
//! pages render without roff warnings where groff is installed, every page
//! they point to exists, and no Markdown leaks into roff.

use barkeep_tests::{build_binaries, workspace_root};
use std::process::Command;

fn barkeep(args: &[&str]) -> std::process::Output {
    let out = Command::new(build_binaries("dev").cli)
        .args(args)
        .output()
        .expect("run barkeep");
    assert!(out.status.success(), "barkeep {args:?}: {out:?}");
    out
}

/// The visible subcommands, from `barkeep --help`.
fn subcommands() -> Vec<String> {
    let help = String::from_utf8(barkeep(&["--help"]).stdout).unwrap();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect()
}

/// The (page, section) pairs a roff page refers to: `\fBname\fR(N)` and
/// clap's `name(N)` lines under SUBCOMMANDS.
fn references(page: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let text = page
        .replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\-", "-");
    for word in text.split(|c: char| c.is_whitespace() || c == ',') {
        let Some((name, rest)) = word.split_once('(') else {
            continue;
        };
        let Some(section) = rest.strip_suffix(')') else {
            continue;
        };
        if !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && section.len() == 1
            && section.chars().all(|c| c.is_ascii_digit())
        {
            found.push((name.to_string(), section.to_string()));
        }
    }
    found
}

#[test]
fn the_man_pages_cover_every_command_and_config_key() {
    let dir = tempfile::tempdir().unwrap();
    barkeep(&["generate-man", dir.path().to_str().unwrap()]);
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name} was not written: {e}"))
    };

    let subs = subcommands();
    for expected in [
        "exec",
        "cdi",
        "metrics",
        "acquire",
        "status",
        "completions",
        "generate-man",
    ] {
        assert!(
            subs.iter().any(|s| s == expected),
            "{expected} missing from {subs:?}"
        );
    }
    let main = read("barkeep.1");
    assert!(
        main.starts_with(".ie \\n(.g") || main.contains(".TH barkeep 1"),
        "{main}"
    );
    for sub in &subs {
        assert!(
            main.contains(&format!("barkeep\\-{}", sub.replace('-', "\\-"))),
            "barkeep.1 does not name {sub}"
        );
        let page = read(&format!("barkeep-{sub}.1"));
        assert!(page.contains(".SH SYNOPSIS"), "barkeep-{sub}.1");
    }
    assert!(read("barkeep-exec.1").contains("\\-\\-slice"));
    assert!(main.contains("BARKEEP_SLICES"));

    let daemon = read("barkeepd.8");
    assert!(daemon.contains(".TH barkeepd 8"), "{daemon}");
    assert!(daemon.contains("check\\-config"));
    assert!(daemon.contains("\\-\\-config"));

    let config = read("barkeep.toml.5");
    let md = std::fs::read_to_string(workspace_root().join("docs/config.md")).unwrap();
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            let h = h.replace('`', "").to_uppercase();
            assert!(
                config.contains(&format!(".SH \"{}\"", h.replace('-', "\\-"))),
                "section {h}"
            );
        }
        if line.starts_with("| `") {
            let key = line.split('`').nth(1).unwrap().replace('-', "\\-");
            assert!(config.contains(&format!(".TP\n\\fB{key}\\fR")), "key {key}");
        }
    }

    // Every page a page points to (SEE ALSO, SUBCOMMANDS) is one of ours
    // that was written, or a well-known page of another package.
    let written: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let elsewhere = ["systemd.socket.5"];
    for name in &written {
        let page = read(name);
        for (target, section) in references(&page) {
            let file = format!("{target}.{section}");
            assert!(
                written.contains(&file) || elsewhere.contains(&file.as_str()),
                "{name} refers to {target}({section}), which is not generated"
            );
        }
        // No Markdown left: code spans, strong emphasis, links.
        for line in page.lines() {
            assert!(
                !line.contains('`') && !line.contains("](") && !line.contains(" **"),
                "{name}: Markdown in {line:?}"
            );
        }
    }
    // barkeep(1)'s NAME says what the command does, not what the crate is.
    let name_line = main
        .lines()
        .skip_while(|l| *l != ".SH NAME")
        .nth(1)
        .unwrap();
    assert!(
        name_line.starts_with("barkeep \\- ") && name_line.contains("slices"),
        "{name_line}"
    );
    assert!(
        !name_line.contains("crate") && !name_line.contains("library"),
        "{name_line}"
    );

    // Render them as man(1) would, where groff is installed.
    if Command::new("groff").arg("-v").output().is_ok() {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&path)
                .output()
                .unwrap();
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && warnings.trim().is_empty(),
                "{}: {warnings}",
                path.display()
            );
        }
    }
}

#[test]
fn completions_know_the_subcommands() {
    let bash = String::from_utf8(barkeep(&["completions", "bash"]).stdout).unwrap();
    for sub in ["exec", "cdi", "metrics"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        barkeep(&["completions", shell, "--dir", dir.path().to_str().unwrap()]);
    }
    for name in ["barkeep.bash", "_barkeep", "barkeep.fish"] {
        assert!(dir.path().join(name).exists(), "{name} not written");
    }
}
