//! What linking the client library costs: `barkeep-client` depends on
//! neither the daemon nor clap (the CLI is the separate `barkeep-cli`
//! crate), in any feature.

use barkeep_tests::workspace_root;
use std::process::Command;

#[test]
fn the_client_library_pulls_in_neither_the_daemon_nor_clap() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "barkeep-client",
            "-e",
            "normal",
            "--all-features",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"barkeep-protocol"), "{tree}");
    for unwanted in ["barkeep-daemon", "clap", "barkeep-cli"] {
        assert!(
            !crates.contains(&unwanted),
            "barkeep-client depends on {unwanted}:\n{tree}"
        );
    }
}
