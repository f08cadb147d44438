//! The `barkeep` CLI's promises, each driven through the real `barkeepd`
//! and `barkeep` binaries on a simulated device: what a holder says when
//! its daemon goes away, which leases `leases` shows and `release` may
//! end, and how a device that could not be opened is reported.

use barkeep_tests::{build_binaries, sim_policy, TestDaemon};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn a_holder_whose_daemon_went_away_says_so_while_it_reconnects() {
    let d = TestDaemon::start(&sim_policy());
    let mut holder = Command::new(build_binaries("dev").cli)
        .arg("--socket")
        .arg(d.socket())
        .args(["acquire", "sim0", "0", "0x10000", "4K", "--hold", "forever"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("holding lease"), "{first}");
    // SIGKILL: the daemon leaves without a word; nothing restarts it. The
    // holder keeps trying (30 s by default) and says so at each attempt.
    drop(d);
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let third = line.contains("reconnecting, attempt 3");
        said.push(line);
        if third {
            break;
        }
    }
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        said.last()
            .is_some_and(|l| l.contains("reconnecting, attempt 3")),
        "{said:#?}"
    );
    assert!(
        said[0].starts_with("barkeep: barkeepd went away (")
            && said[0].contains("reconnecting, attempt 1"),
        "{said:#?}"
    );
}
