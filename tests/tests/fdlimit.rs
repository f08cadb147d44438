//! A client at its own open file limit: the kernel drops the buffer fd that
//! comes with a grant (MSG_CTRUNC). The client must say that its
//! RLIMIT_NOFILE is the cause, not blame barkeepd.

use barkeep_tests::{build_binaries, TestDaemon, SIM_DEVICE};
use std::os::unix::process::CommandExt;
use std::process::Command;

#[test]
fn a_client_out_of_fds_is_told_its_fd_limit_is_the_cause() {
    let uid = nix::unistd::geteuid().as_raw();
    let d = TestDaemon::start(&format!(
        "{SIM_DEVICE}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\naccess = \"rw\"\nuids = [{uid}]\n"
    ));
    let bins = build_binaries("dev");
    // The CLI needs a few fds of its own before the grant arrives; the
    // limit that leaves none for the buffer is found by trying.
    let mut outcomes = Vec::new();
    for limit in 4..24u64 {
        let mut cmd = Command::new(&bins.cli);
        cmd.arg("--socket")
            .arg(d.socket())
            .args(["acquire", "sim0", "0", "0", "4K"]);
        // SAFETY: setrlimit is async-signal-safe; it only lowers this
        // child's own limit before exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("protocol violation"),
            "limit {limit}: the daemon is blamed: {text}"
        );
        outcomes.push((limit, out.status.success(), text));
        if out.status.success() {
            break;
        }
    }
    assert!(
        outcomes
            .iter()
            .any(|(_, ok, text)| !ok && text.contains("RLIMIT_NOFILE")),
        "no run met the limit at the grant: {outcomes:#?}"
    );
    assert!(
        outcomes.last().is_some_and(|(_, ok, _)| *ok),
        "with enough fds the acquire works: {outcomes:#?}"
    );
}
