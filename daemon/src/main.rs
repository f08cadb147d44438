//! `barkeepd`: the command line around [`barkeep_daemon::run`].

use barkeep_daemon::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Brokers narrow slices of PCI BARs to unprivileged clients over a Unix
/// socket, as DMABUF file descriptors (or memfds for simulated devices).
#[derive(Parser)]
#[command(name = "barkeepd", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Configuration file (TOML; see docs/config.md).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this socket instead of the config's `socket`.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file and explain it in plain words.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = cli.command {
        return match Config::load(&file) {
            Ok(config) => {
                println!("{}: OK", file.display());
                print!("{}", config.explain());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("barkeepd: {e}");
                ExitCode::FAILURE
            }
        };
    }

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal, not in the journal or a test's pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let Some(path) = cli.config else {
        eprintln!("barkeepd: no configuration: run `barkeepd --config FILE` (or `barkeepd check-config FILE` to check one)");
        return ExitCode::from(2);
    };
    let mut config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("barkeepd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(socket) = cli.socket {
        config.socket = socket;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        barkeep_daemon::run(config, shutdown_signal()).await
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
