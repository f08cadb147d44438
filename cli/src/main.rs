//! `barkeep`: the command-line client of `barkeepd` (argument parsing,
//! dispatch, exit codes and error output; the commands live in `commands`,
//! the JSON and table shapes in `render`, the walkthrough in `demo`).
//!
//! # Common options
//!
//! * `--socket PATH`: the daemon's socket (default: `$BARKEEP_SOCKET`, else
//!   `/run/barkeep/barkeep.sock`).
//! * `--json`: print exactly one JSON object on stdout (described below),
//!   and nothing else on stdout. Human-readable output otherwise.
//!
//! Numbers (BAR indexes, offsets, lengths) accept decimal, `0x` hex and
//! K/M/G suffixes (`4096`, `0x1000`, `4K`). HEXBYTES are bytes in memory
//! order (`deadbeef` = de ad be ef), without `0x`.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the request failed (the daemon refused it, or a client-side error) |
//! | 2 | bad command line |
//! | 3 | the lease was revoked (while `acquire --hold` held it, or during an access) |
//! | 4 | cannot reach the daemon, or the connection broke |
//! | 5 | `demo`: a step did not behave as expected |
//! | 6 | `explain`: the policy would deny the request (the decision is printed) |
//!
//! `barkeep exec` exits with its command's status instead (128+N when
//! signal N killed it, 126 when it cannot be run, 127 when it is not found);
//! the codes above apply only to failures before the command starts.
//!
//! # JSON
//!
//! Errors (any command, non-zero exit):
//! `{"error":{"code":N,"slug":"...","message":"..."}}` — `code`/`slug` are
//! the daemon's stable error codes (PROTOCOL.md, e.g. 14 "unaligned",
//! 20 "denied", 24 "admin-only") or the client's own from 100 up:
//! 100 io, 101 protocol, 102 disconnected, 103 revoked, 104 read-only,
//! 105 out-of-range, 106 unaligned-access, 107 mmap-unsupported, 108 usage,
//! 109 unexpected, 110 environment (a malformed `$BARKEEP_SLICES`).
//!
//! Shared shapes: `LEASE` =
//! `{"id":"32 hex","device":"sim0","bar":0,"offset":N,"length":N,"access":"ro"|"rw","memattr":"uc"|"wc","buffer_name":"..."}`;
//! `CAPS` = `{"export":bool,"mmap":bool,"revoke":bool,"write_combining":bool,"device_revoke":bool}`;
//! `RANGE` = `{"offset":N,"length":N}`. All numbers are JSON integers.
//!
//! * `status`: `{"daemon_version":"..","protocol_version":N,"uptime_ms":N,
//!   "sessions":N,"leases":N,"page_size":N,"capabilities":CAPS,
//!   "devices":[{"name":"..","backend":"sim"|"vfio","capabilities":CAPS,
//!   "leases":N,"problem":null|"..","notes":[".."]}],
//!   "session":{"session_id":N,"admin":bool,"uid":N,"gid":N,"pid":N,"groups":[N],
//!   "cgroup":null|"..","label":null|".."}}`
//! * `devices`: `{"devices":[{"name":"..","backend":"sim"|"vfio","pci":null|"..",
//!   "ownership":"..","problem":null|"..","capabilities":CAPS,"bars":[{"index":N,
//!   "size":N,"readable":bool,"writable":bool,"mmap":bool,"mappable":[RANGE],
//!   "reserved":[{"offset":N,"length":N,"what":".."}]}]}]}`
//! * `leases [--all]`: the caller's uid's leases from all its sessions;
//!   an admin's, or with `--all`: every lease.
//!   `{"leases":[LEASE + {"session":N,"client_name":"..",
//!   "uid":N,"gid":N,"pid":N,"groups":[N],"cgroup":null|"..","label":null|"..",
//!   "age_ms":N,"state":"active"|"kept"|"lingering"|"awaiting-reclaim"}]}`
//! * `acquire`: `{"lease":LEASE + {"fd":N},
//!   "buffer":{"fd":N,"size":N|null,"size_from":"fdinfo"|"fstat"|null,"exp_name":null|".."},
//!   "mapping":null|{"offset":N,"length":N},
//!   "ops":[{"op":"write"|"read","offset":N,"length":N,"hex":".."}],
//!   "reads":[".."], "hold":null|"forever"|SECONDS,
//!   "released":bool, "revoked":null|{"reason":"admin"|"device"|"policy"|"shutdown"|"disconnected"|"released"}}`.
//!   `ops` are in command-line order, offsets relative to the mapping;
//!   `reads` holds just the hex of each `--read`, in order. With `--hold`,
//!   the object is printed when the hold ends; a line
//!   `barkeep: holding lease ID ...` goes to stderr as soon as the lease is
//!   held. Exit 3 (with this object, `revoked` set) if the lease is revoked.
//! * `release LEASE`: `{"released":"ID"}`
//! * `revoke LEASE` / `revoke --device NAME` / `--session N` / `--uid UID` /
//!   `--cgroup PATTERN`: `{"revoked":N,"target":{"lease":"ID"}|{"device":"NAME"}|
//!   {"session":N}|{"uid":N}|{"cgroup":".."}}`
//! * `explain`: `{"allowed":bool,"code":null|N,"slug":null|"..","rule":"..",
//!   "reason":"..","memattr":null|"uc"|"wc","who":{"uid":N,"gid":N,"groups":[N],
//!   "cgroup":null|"..","label":null|".."},"slice":{"device":"..","bar":N,
//!   "offset":N,"length":N,"access":"ro"|"rw","memattr":"uc"|"wc"|"prefer-wc"}}`;
//!   exit 0 if allowed, 6 if denied.
//! * `reload`: `{"reloaded":true,"grants":N,"revoked":N}`
//! * `peek`: `{"device":"..","bar":N,"offset":N,"length":N,"hex":".."}`
//! * `poke`: `{"device":"..","bar":N,"offset":N,"length":N,"hex":".."}`
//! * `demo`: `{"ok":bool,"socket":"..","steps":[{"step":"..","ok":bool,"detail":".."}]}`
//! * `exec`: after the command's own output (stdout is shared with it),
//!   one object: `{"command":"..","exit":N|null,"signal":null|N,
//!   "leases":[LEASE],"revoked":[{"lease":"ID","reason":".."}]}` (`revoked`:
//!   leases that ended while the command ran). Errors as above, including
//!   a command that cannot be run (code 100 io, exit 126 or 127). The
//!   command sees
//!   `$BARKEEP_SLICES` = `[{"fd":N,"device":"..","bar":N,"offset":N,
//!   "length":N,"access":"ro"|"rw","memattr":"uc"|"wc","lease":"32 hex",
//!   "buffer_name":"..","ino":N,"status_fd":N,"status_offset":N}]` (see
//!   `barkeep_client::InheritedSliceInfo`).
//! * `cdi`: the spec itself (`{"cdiVersion":..,"kind":"barkeep.io/slice",
//!   "devices":[..]}`), or with `--output FILE`: `{"written":"FILE","spec":{..}}`.
//! * `metrics`: `{"metrics":"<Prometheus text>"}`.
//! * `completions SHELL`: `{"shell":"..","script":".."}`, or with `--dir`:
//!   `{"written":["PATH"]}`; `generate-man DIR`: `{"written":["PATH",..]}`.

#![deny(unsafe_code)]

mod cdi;
mod commands;
mod demo;
mod exec;
mod integrations;
mod manpages;
mod policy;
mod render;

use barkeep_client::{ClientCode, Error};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Exit codes (see the module documentation).
pub(crate) mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const REVOKED: i32 = 3;
    pub const UNREACHABLE: i32 = 4;
    pub const DEMO_FAILED: i32 = 5;
    pub const DENIED: i32 = 6;
}

/// barkeep: ask barkeepd for narrow slices of PCI BARs, map them, and
/// manage leases.
#[derive(Parser, Debug)]
#[command(
    name = "barkeep",
    version,
    // The command, not the crate: this is also the NAME line of barkeep(1).
    about = "Ask barkeepd for narrow slices of PCI BARs, map them, run commands with them, and manage leases",
    long_about = None,
    after_help = "Numbers: decimal, 0x hex, K/M/G suffixes. HEXBYTES: bytes in memory order (deadbeef).\n\
Exit codes: 0 ok, 1 request failed, 2 bad command line, 3 lease revoked, \
4 daemon unreachable or connection lost, 5 demo step failed, 6 explain: denied."
)]
pub(crate) struct Cli {
    /// The daemon's socket [default: $BARKEEP_SOCKET, else /run/barkeep/barkeep.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print exactly one JSON object on stdout (errors too)
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Daemon status: versions, sessions, capabilities and notes per device
    Status,
    /// Configured devices and their BARs (size, mappable areas, reserved ranges)
    Devices,
    /// Your live leases, from all your sessions (every lease when you are an admin)
    Leases {
        /// Every lease of every uid (admin only; what an admin gets anyway)
        #[arg(long)]
        all: bool,
    },
    /// Acquire a slice, map it, write and read through the mapping, hold it
    Acquire(AcquireArgs),
    /// Release a lease held by your uid, from any of your sessions (an admin: any lease)
    Release {
        /// Lease id (32 hex digits, as printed by `barkeep leases`)
        #[arg(value_parser = parse_lease)]
        lease: barkeep_client::LeaseId,
    },
    /// Revoke a lease, or every lease of a device, session, uid or cgroup (admin)
    Revoke(policy::RevokeArgs),
    /// What the policy would decide for an identity and a slice, and which rule decides (acquires nothing)
    Explain(policy::ExplainArgs),
    /// Make barkeepd read its configuration again: new policy, same devices (admin)
    Reload,
    /// Read BAR bytes through the daemon, not through a mapping (admin); prints hex
    Peek {
        /// Device name
        device: String,
        /// BAR index
        #[arg(value_parser = parse_bar)]
        bar: u32,
        /// Offset in the BAR
        #[arg(value_parser = parse_num)]
        offset: u64,
        /// Number of bytes (at most 32K)
        #[arg(value_parser = parse_num)]
        length: u64,
    },
    /// Write BAR bytes through the daemon (admin); 1/2/4/8 aligned bytes are one access
    Poke {
        /// Device name
        device: String,
        /// BAR index
        #[arg(value_parser = parse_bar)]
        bar: u32,
        /// Offset in the BAR
        #[arg(value_parser = parse_num)]
        offset: u64,
        /// Bytes in memory order, e.g. deadbeef
        #[arg(value_parser = parse_hex)]
        hexbytes: HexBytes,
    },
    /// Run an in-process daemon with a simulated device and walk through barkeep
    Demo,
    /// Run COMMAND holding slices: their fds are inherited and described in
    /// $BARKEEP_SLICES; signals are forwarded; the leases end with COMMAND
    #[command(
        after_help = "Exit status: COMMAND's (128+N if signal N killed it), 126/127 if it \
cannot be run or found; before COMMAND starts, barkeep's own codes (1, 2, 4).\n\
Example: barkeep exec --slice nic0:2:0x10000:4K -- ./driver --regs-from-env"
    )]
    Exec(exec::ExecArgs),
    /// Write a Container Device Interface spec that gives containers the socket and their slices
    Cdi(cdi::CdiArgs),
    /// The daemon's metrics, in Prometheus text exposition format
    Metrics,
    /// Print (or write into --dir) a shell completion script
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
        /// Write the script into DIR under its conventional name instead
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Write the man pages into DIR: barkeep(1) and one per subcommand, barkeepd(8), barkeep.toml(5)
    GenerateMan {
        /// Output directory (created if missing)
        dir: PathBuf,
    },
}

/// Whether to ask for write-combining.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum WcMode {
    /// Write-combining or fail
    Require,
    /// Write-combining when possible, else uncached
    Prefer,
}

#[derive(Args, Debug)]
pub(crate) struct AcquireArgs {
    /// Device name
    pub device: String,
    /// BAR index (0..5)
    #[arg(value_parser = parse_bar)]
    pub bar: u32,
    /// Offset of the slice in the BAR (page aligned)
    #[arg(value_parser = parse_num)]
    pub offset: u64,
    /// Length of the slice (page aligned)
    #[arg(value_parser = parse_num)]
    pub length: u64,
    /// Read-only slice
    #[arg(long)]
    pub ro: bool,
    /// Write-combining: `--wc` requires it, `--wc=prefer` takes it when possible
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "require")]
    pub wc: Option<WcMode>,
    /// Map from this slice offset (page aligned)
    #[arg(long, value_name = "OFF", value_parser = parse_num, default_value = "0")]
    pub map_at: u64,
    /// Map this many bytes [default: to the end of the slice]
    #[arg(long, value_name = "LEN", value_parser = parse_num)]
    pub map_len: Option<u64>,
    /// Do not map: only receive the fd (for P2P use) and print its size
    #[arg(long, conflicts_with_all = ["write", "read", "map_len"])]
    pub no_map: bool,
    /// Write HEXBYTES at mapping offset OFF (repeatable; in order with --read)
    #[arg(long, value_name = "OFF=HEXBYTES", value_parser = parse_write)]
    pub write: Vec<(u64, Vec<u8>)>,
    /// Read LEN bytes at mapping offset OFF (repeatable; in order with --write)
    #[arg(long, value_name = "OFF:LEN", value_parser = parse_read)]
    pub read: Vec<(u64, u64)>,
    /// Hold the lease for SECONDS (or `forever`) before releasing it, watching for revocation
    #[arg(long, value_name = "SECONDS|forever", value_parser = parse_hold)]
    pub hold: Option<Hold>,
}

/// How long `acquire` holds its lease.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Hold {
    Seconds(f64),
    Forever,
}

fn parse_num(s: &str) -> Result<u64, String> {
    barkeep_client::parse_number(s).map_err(|e| e.to_string())
}

fn parse_bar(s: &str) -> Result<u32, String> {
    let n = parse_num(s)?;
    u32::try_from(n).map_err(|_| format!("BAR index {n} is too large (BARs are 0..5)"))
}

fn parse_lease(s: &str) -> Result<barkeep_client::LeaseId, String> {
    s.parse()
}

/// Bytes given as hex on the command line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HexBytes(pub Vec<u8>);

fn parse_hex(s: &str) -> Result<HexBytes, String> {
    barkeep_client::hex::parse_hex_bytes(s).map(HexBytes)
}

fn parse_write(s: &str) -> Result<(u64, Vec<u8>), String> {
    let (off, hex) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write OFF=HEXBYTES, e.g. 0x10=deadbeef"))?;
    Ok((parse_num(off)?, parse_hex(hex)?.0))
}

fn parse_read(s: &str) -> Result<(u64, u64), String> {
    let (off, len) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: write OFF:LEN, e.g. 0x10:4"))?;
    let len = parse_num(len)?;
    if len == 0 {
        return Err(format!("{s:?}: LEN must be at least 1"));
    }
    Ok((parse_num(off)?, len))
}

fn parse_hold(s: &str) -> Result<Hold, String> {
    if s.eq_ignore_ascii_case("forever") {
        return Ok(Hold::Forever);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Hold::Seconds(v)),
        _ => Err(format!(
            "{s:?}: give a number of seconds (e.g. 30, 0.5) or `forever`"
        )),
    }
}

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: u16,
    pub slug: &'static str,
    pub message: String,
    pub exit: i32,
}

impl Failure {
    pub fn new(code: ClientCode, message: impl Into<String>, exit: i32) -> Failure {
        Failure {
            code: code.number(),
            slug: code.slug(),
            message: message.into(),
            exit,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let exit = match &e {
            Error::Revoked { .. } => exit::REVOKED,
            Error::Disconnected(_) | Error::Refused(_) => exit::UNREACHABLE,
            _ => exit::FAILED,
        };
        Failure {
            code: e.code(),
            slug: e.slug(),
            message: e.to_string(),
            exit,
        }
    }
}

/// What a successful command prints, and its exit code (non-zero only for
/// `acquire --hold` ending in a revocation and a failed demo).
pub(crate) struct Outcome {
    pub json: serde_json::Value,
    pub human: String,
    pub exit: i32,
}

fn main() {
    // Only barkeep's own arguments: `exec -- cmd --json` is the command's.
    let json_wanted = std::env::args()
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            if json_wanted
                && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
            {
                // clap's whole message: the error, the usage line and the
                // hint (e.g. "tip: to pass '--x' as a value, use '-- --x'").
                let rendered = e.render().to_string();
                let message = rendered.trim();
                let message = message.strip_prefix("error: ").unwrap_or(message);
                let f = Failure::new(ClientCode::Usage, message, exit::USAGE);
                print_failure(&f, true);
                std::process::exit(exit::USAGE);
            }
            e.exit();
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let json = cli.json;
    // `--write` and `--read` run in the order given, across both options.
    let order = matches
        .subcommand_matches("acquire")
        .map(commands::op_order)
        .unwrap_or_default();
    let result = integrations::run(&cli).unwrap_or_else(|| commands::run(&cli, order));
    let code = match result {
        Ok(out) => {
            if json && !out.json.is_null() {
                println!("{}", out.json);
            } else if !out.human.is_empty() {
                print!("{}", out.human);
                if !out.human.ends_with('\n') {
                    println!();
                }
            }
            out.exit
        }
        Err(f) => {
            print_failure(&f, json);
            f.exit
        }
    };
    std::process::exit(code);
}

fn print_failure(f: &Failure, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"error": {"code": f.code, "slug": f.slug, "message": f.message}})
        );
    } else {
        eprintln!("barkeep: error: {} [{} {}]", f.message, f.slug, f.code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_read_arguments() {
        assert_eq!(
            parse_write("0x10=deadbeef").unwrap(),
            (0x10, vec![0xde, 0xad, 0xbe, 0xef])
        );
        assert_eq!(parse_write("4K=00").unwrap(), (4096, vec![0]));
        assert!(parse_write("0x10").is_err());
        assert!(parse_write("0x10=0xdead").is_err());
        assert_eq!(parse_read("0x10:4").unwrap(), (0x10, 4));
        assert_eq!(parse_read("1K:1K").unwrap(), (1024, 1024));
        assert!(parse_read("0x10:0").is_err());
        assert!(parse_read("0x10").is_err());
    }

    #[test]
    fn hold_and_bar_arguments() {
        assert_eq!(parse_hold("forever").unwrap(), Hold::Forever);
        assert_eq!(parse_hold("2.5").unwrap(), Hold::Seconds(2.5));
        assert!(parse_hold("-1").is_err());
        assert!(parse_hold("soon").is_err());
        assert_eq!(parse_bar("0x2").unwrap(), 2);
        assert!(parse_bar("0x100000000").is_err());
    }

    #[test]
    fn writes_and_reads_keep_command_line_order() {
        let m = Cli::command()
            .try_get_matches_from([
                "barkeep",
                "acquire",
                "sim0",
                "0",
                "0x1000",
                "4K",
                "--read",
                "0:4",
                "--write",
                "0=01",
                "--read",
                "0:1",
                "--wc=prefer",
            ])
            .unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        let Command::Acquire(a) = &cli.command else {
            panic!("acquire expected")
        };
        assert_eq!(a.wc, Some(WcMode::Prefer));
        let order = commands::op_order(m.subcommand_matches("acquire").unwrap());
        let ops = commands::ordered_ops(a, &order);
        let kinds: Vec<&str> = ops.iter().map(|o| o.kind()).collect();
        assert_eq!(kinds, ["read", "write", "read"]);
        let m = Cli::command()
            .try_get_matches_from(["barkeep", "acquire", "sim0", "0", "0", "4K", "--wc"])
            .unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        let Command::Acquire(a) = &cli.command else {
            panic!("acquire expected")
        };
        assert_eq!(a.wc, Some(WcMode::Require));
    }
}
