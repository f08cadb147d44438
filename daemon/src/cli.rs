//! The `barkeepd` command line (a library item so that `barkeep
//! generate-man` can write barkeepd(8) from it).

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Brokers narrow slices of PCI BARs to unprivileged clients over a Unix
/// socket, as DMABUF file descriptors (or memfds for simulated devices).
#[derive(Parser)]
#[command(name = "barkeepd", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Configuration file (TOML; see docs/config.md).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen on this socket instead of the config's `socket`.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Take over from the barkeepd listening on this takeover socket: get
    /// its listening socket, device fds, lease buffers and state, and serve
    /// on while it exits without revoking anything (upgrades without
    /// systemd; see docs/operators.md).
    #[arg(long, value_name = "SOCKET")]
    pub takeover: Option<PathBuf>,
    /// Let a successor (`barkeepd --takeover PATH`) take over through this
    /// socket (overrides the config's `takeover_socket`). Only the daemon's
    /// own uid and root may connect.
    #[arg(long, value_name = "PATH")]
    pub takeover_listen: Option<PathBuf>,
    /// Where logs and audit events go: `journald` (structured fields,
    /// BARKEEP_ACTION=grant...), `stderr`, or `auto` (journald when systemd
    /// connected stderr to the journal, i.e. $JOURNAL_STREAM matches).
    #[arg(long, value_enum, env = "BARKEEPD_LOG", default_value = "auto")]
    pub log: LogTarget,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTarget {
    /// journald when systemd connected stderr to the journal, else stderr
    Auto,
    /// The systemd journal, with structured fields
    Journald,
    /// Standard error
    Stderr,
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate a configuration file and explain it in plain words.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
}
