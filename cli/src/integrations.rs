//! Dispatch of the commands that serve other ecosystems (`exec`, `cdi`,
//! `metrics`, `completions`, `generate-man`), and `metrics` itself.

use crate::{exit, Cli, Command, Failure, Outcome};
use serde_json::json;

/// Runs one of this module's commands; `None` for every other command.
pub(crate) fn run(cli: &Cli) -> Option<Result<Outcome, Failure>> {
    Some(match &cli.command {
        Command::Exec(a) => crate::exec::run(cli, a),
        Command::Cdi(a) => crate::cdi::run(a, cli.socket.as_deref()),
        Command::Metrics => metrics(cli),
        Command::Completions { shell, dir } => crate::manpages::completions(*shell, dir.as_deref()),
        Command::GenerateMan { dir } => crate::manpages::generate(dir),
        _ => return None,
    })
}

/// `barkeep metrics`: the daemon's Prometheus text, printed as is.
fn metrics(cli: &Cli) -> Result<Outcome, Failure> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(barkeep_client::default_socket_path);
    let client = crate::commands::connect(&socket)?;
    let text = client.metrics()?;
    Ok(Outcome {
        json: json!({ "metrics": text }),
        human: text,
        exit: exit::OK,
    })
}
