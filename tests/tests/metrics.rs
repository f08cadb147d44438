//! `barkeep metrics` prints the daemon's Prometheus text as is; a daemon
//! that does not serve metrics yet is reported with its own error.

use barkeep_tests::{TestDaemon, SIM_DEVICE};

#[test]
fn metrics_prints_the_daemon_text_or_its_error() {
    let d = TestDaemon::start(&format!("{SIM_DEVICE}\n[admin]\nuids = [0]\n"));
    let (ok, v) = d.cli_json(&["metrics"]);
    if ok {
        let text = v["metrics"].as_str().expect("metrics text");
        assert!(text.lines().any(|l| l.starts_with("# TYPE ")), "{text}");
        let human = d.cli(&["metrics"]);
        assert_eq!(String::from_utf8_lossy(&human.stdout), text);
    } else {
        assert_eq!(v["error"]["slug"], "unknown-request", "{v}");
        let out = d.cli(&["metrics"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
    }
}
