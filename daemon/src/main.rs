//! `barkeepd`: the command line around [`barkeep_daemon::service::launch::run`].

#![deny(unsafe_code)]

use barkeep_daemon::cli::{Cli, Command, LogTarget};
use barkeep_daemon::{Config, ConfigSource};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = cli.command {
        return match Config::load(&file) {
            Ok(config) => {
                println!("{}: OK", file.display());
                print!("{}", config.explain());
                // Run as ExecReload= it sees the unit's LimitNOFILE=.
                let (open, in_flight) = barkeep_daemon::persist::stash::fds_needed(&config);
                if let Ok(limit) = barkeep_daemon::sys::raise_fd_limit(open.max(in_flight)) {
                    if fd_limit_matters(&config) {
                        for warning in
                            barkeep_daemon::persist::stash::fd_limit_warnings(&config, limit)
                        {
                            println!("warning: {warning}");
                        }
                    }
                }
                for w in barkeep_daemon::decide::policy::overlap_warnings(&config.grants) {
                    println!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("barkeepd: {e}");
                ExitCode::FAILURE
            }
        };
    }

    init_logging(cli.log);
    // Before any thread starts: this reads and unsets LISTEN_* variables.
    let listen_fds = barkeep_daemon::persist::sdnotify::take_listen_fds();

    let Some(path) = cli.config else {
        eprintln!("barkeepd: no configuration: run `barkeepd --config FILE` (or `barkeepd check-config FILE` to check one)");
        return ExitCode::from(2);
    };
    let source = ConfigSource {
        path: path.clone(),
        socket: cli.socket,
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("barkeepd: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Up to the hard limit: each session holds a socket and a pidfd, each
    // lease a buffer fd, and under the fd store the stash keeps up to about
    // two buffers per lease in flight, which the kernel counts against the
    // same limit (see barkeep_daemon::persist::stash).
    let (open, in_flight) = barkeep_daemon::persist::stash::fds_needed(&config);
    // (Under the shipped unit LimitNOFILE= sets the soft limit already:
    // its sandbox forbids setrlimit.)
    match barkeep_daemon::sys::raise_fd_limit(open.max(in_flight)) {
        Ok(n) => {
            for warning in barkeep_daemon::persist::stash::fd_limit_warnings(&config, n) {
                if fd_limit_matters(&config) {
                    tracing::warn!("{warning}");
                } else {
                    tracing::debug!("{warning} (the default limits; fewer at once is fine)");
                }
            }
        }
        Err(e) => tracing::warn!("cannot read or raise the open file limit: {e}"),
    }

    // One thread: every request takes the broker's lock anyway, so more
    // threads only contend for it (futex sleeps, cross-thread wake-ups) and
    // serve sessions less fairly; the benchmark (BENCHMARKS.md) shows it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barkeepd: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), "barkeepd starting");
        let launch = barkeep_daemon::service::launch::Launch {
            listen_fds,
            takeover_from: cli.takeover,
            takeover_listen: cli.takeover_listen,
        };
        barkeep_daemon::service::launch::run(source, config, launch, shutdown_signal()).await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("barkeepd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether an open file limit below `config`'s needs is worth a warning.
/// The default limits are a ceiling, not a promise: started (or checked) by
/// hand under an ordinary hard limit, barkeepd serves fewer, which is no
/// news. Limits set in the file, or a run by systemd (whose unit sets
/// LimitNOFILE=), that the limit cannot serve are.
fn fd_limit_matters(config: &Config) -> bool {
    barkeep_daemon::fdbudget::limit_matters(&config.limits)
}

/// Sets up logging to journald or stderr (see `--log`); the filter comes
/// from RUST_LOG (default `info`, which includes the audit events).
fn init_logging(target: LogTarget) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let journald = match target {
        LogTarget::Stderr => None,
        LogTarget::Auto if !stderr_is_journal() => None,
        LogTarget::Auto | LogTarget::Journald => match tracing_journald::layer() {
            Ok(layer) => Some(layer.with_field_prefix(Some("BARKEEP".into()))),
            Err(e) => {
                if target == LogTarget::Journald {
                    eprintln!("barkeepd: cannot log to journald ({e}); logging to stderr");
                }
                None
            }
        },
    };
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter())
            .with(layer)
            .init(),
        // One line per event (barkeep_daemon::logfmt); colours only on a
        // terminal, not in the journal or a test's pipe.
        None => tracing_subscriber::registry()
            .with(filter())
            .with(barkeep_daemon::logfmt::stderr(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ))
            .init(),
    }
}

/// Whether systemd connected our stderr to the journal: $JOURNAL_STREAM is
/// "DEV:INODE" of that stream (see systemd.exec(5)).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop barkeepd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
