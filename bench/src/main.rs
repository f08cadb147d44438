//! `barkeep-bench`: barkeepd against the floor (a minimal epoll server
//! that creates a memfd per request) and the floor with barkeep's datagrams
//! (`floor4`: also a release answered by an event), side by side and
//! interleaved, at 1, 16 and 256 sessions; then scale (sessions, leases,
//! memory, revoke, start-up). See BENCHMARKS.md.

mod daemon;
mod floor;
mod load;
mod procfs;
mod report;
mod scale;

use barkeep_protocol::{
    decode_daemon, encode_client, encode_daemon, ClientMessage, DaemonMessage, Event, Hello,
    Request, Response, RevokeReason, PROTOCOL_VERSION,
};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Measures barkeepd's grant latency, throughput, fairness and CPU cost
/// against the floor, and its scale.
#[derive(Parser)]
#[command(name = "barkeep-bench")]
struct Cli {
    /// A short version of everything (well under a minute), same output.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Measured window of each run in ms (default 2000, quick 300).
    #[arg(long, value_name = "MS")]
    run_ms: Option<u64>,
    /// Unmeasured warm-up before each window in ms (default 300, quick 100).
    #[arg(long, value_name = "MS")]
    warm_ms: Option<u64>,
    /// Repetitions of each configuration (default 5, quick 3).
    #[arg(long)]
    reps: Option<usize>,
    /// Concurrent sessions to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    sessions: Vec<usize>,
    /// Idle sessions for the scale figures (default 10000, quick 1000).
    #[arg(long)]
    scale_sessions: Option<usize>,
    /// Live leases for the scale figures (default 100000, quick 5000).
    #[arg(long)]
    scale_leases: Option<usize>,
    /// Daemon starts for the READY figure (default 5, quick 3).
    #[arg(long)]
    ready_runs: Option<usize>,
    /// Skip the scale figures.
    #[arg(long)]
    no_scale: bool,
    /// Skip the latency runs (scale only).
    #[arg(long)]
    no_load: bool,
    /// Measure only one server (for profiling): `floor`, `floor4`,
    /// `barkeep` or `fdstore`.
    #[arg(long, value_name = "SERVER", hide = true)]
    only: Option<String>,
    /// Threads of the clients' tokio runtime (default: one per CPU).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Skip barkeepd as under systemd (fd store).
    #[arg(long)]
    no_fdstore: bool,
    /// The barkeepd binary (default: $BARKEEPD, else built by cargo).
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// Write barkeepd's log here (default: discarded; the level stays the
    /// production default, info, audit events included).
    #[arg(long, value_name = "FILE")]
    daemon_log: Option<PathBuf>,
    /// RUST_LOG for barkeepd (default: unset, i.e. info).
    #[arg(long, value_name = "FILTER")]
    daemon_rust_log: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The floor server (started by the bench itself).
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        reply_len: usize,
        #[arg(long)]
        slice_len: u64,
        /// Also answer every second request (a release) with an event of
        /// this many bytes (`floor4`).
        #[arg(long)]
        event_len: Option<usize>,
    },
}

/// The datagrams the floors mimic, as barkeepd has them.
struct WireSizes {
    /// An acquire request for a typical session.
    request: Vec<u8>,
    /// Length of barkeepd's Granted reply to it.
    reply_len: usize,
    /// A release of the granted lease (as the client library encodes it).
    release: Vec<u8>,
    /// Length of the `Revoked { released }` event that answers it.
    event_len: usize,
}

/// The datagrams the floors mimic, as barkeepd has them: an acquire
/// request for a typical session (ids and offsets of the sizes a run has),
/// and the length of barkeepd's Granted reply to it (asked over a raw
/// connection; the lease ends when it closes); the release of that lease
/// and the event answering it, from the protocol's encoder (a lease id has
/// a fixed size, so these do not depend on the run).
async fn wire_sizes(socket: &std::path::Path) -> Result<WireSizes, String> {
    let io = |what: &'static str| move |e: std::io::Error| format!("probe {what}: {e}");
    let sock = tokio_seqpacket::UnixSeqpacket::connect(socket)
        .await
        .map_err(io("connect"))?;
    let hello = encode_client(&ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "barkeep-bench".into(),
    }))
    .map_err(|e| e.to_string())?;
    sock.send(&hello).await.map_err(io("send"))?;
    let mut buf = vec![0u8; barkeep_protocol::MAX_DATAGRAM];
    sock.recv(&mut buf).await.map_err(io("recv"))?;
    let request = encode_client(&ClientMessage::Request {
        id: 5000,
        request: Request::Acquire(load::slice_request(200)),
    })
    .map_err(|e| e.to_string())?;
    sock.send(&request).await.map_err(io("send"))?;
    let mut cmsg = [0u8; 128];
    let (info, ancillary) = sock
        .recv_with_ancillary(&mut buf, &mut cmsg)
        .await
        .map_err(io("recv"))?;
    let fds = ancillary.into_messages().count();
    let reply = decode_daemon(&buf[..info.bytes_read()]);
    let lease = match &reply {
        Ok(DaemonMessage::Reply {
            result: Ok(Response::Granted(lease, _)),
            ..
        }) if fds == 1 => lease.id,
        _ => {
            return Err(format!(
                "barkeepd answered the probe acquire with {fds} fds: {reply:?}"
            ))
        }
    };
    let release = encode_client(&ClientMessage::Request {
        id: 5001,
        request: Request::Release { lease },
    })
    .map_err(|e| e.to_string())?;
    let event = encode_daemon(&DaemonMessage::Event(Event::Revoked {
        lease,
        reason: RevokeReason::Released,
    }))
    .map_err(|e| e.to_string())?;
    Ok(WireSizes {
        request,
        reply_len: info.bytes_read(),
        release,
        event_len: event.len(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fd_limit = procfs::raise_nofile();
    if let Some(Cmd::FloorServer {
        socket,
        reply_len,
        slice_len,
        event_len,
    }) = &cli.command
    {
        return match floor::serve(socket, *reply_len, *slice_len, *event_len) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match bench(&cli, fd_limit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("barkeep-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(cli: &Cli, fd_limit: u64) -> Result<(), String> {
    let q = cli.quick;
    let window = Duration::from_millis(cli.run_ms.unwrap_or(if q { 300 } else { 2000 }));
    let warm = Duration::from_millis(cli.warm_ms.unwrap_or(if q { 100 } else { 300 }));
    let reps = cli.reps.unwrap_or(if q { 3 } else { 5 }).max(1);
    let target = scale::ScaleTarget {
        sessions: cli.scale_sessions.unwrap_or(if q { 1000 } else { 10_000 }),
        leases: cli.scale_leases.unwrap_or(if q { 5000 } else { 100_000 }),
        revoke: 10_000,
        ready_runs: cli.ready_runs.unwrap_or(if q { 3 } else { 5 }),
    };
    let opts = daemon::DaemonOptions {
        binary: daemon::barkeepd_binary(cli.daemon.as_deref())?,
        log: cli.daemon_log.clone(),
        rust_log: cli.daemon_rust_log.clone(),
    };
    let nproc = cli
        .client_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(nproc)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let meta = serde_json::json!({
        "machine": procfs::machine(),
        "quick": q,
        "window_ms": window.as_millis() as u64,
        "warm_ms": warm.as_millis() as u64,
        "reps": reps,
        "daemon": opts.binary.display().to_string(),
        "daemon_log": opts.log.as_ref().map_or("discarded (level info)".to_string(), |p| p.display().to_string()),
        "daemon_rust_log": opts.rust_log.clone().unwrap_or_else(|| "unset (info)".into()),
        "client_threads": nproc,
    });

    let mut meta = meta;
    let results = if cli.no_load {
        Vec::new()
    } else {
        let (results, sizes) = runtime.block_on(load_runs(cli, &opts, window, warm, reps))?;
        meta["request_bytes"] = serde_json::json!(sizes.request.len());
        meta["reply_bytes"] = serde_json::json!(sizes.reply_len);
        meta["release_bytes"] = serde_json::json!(sizes.release.len());
        meta["event_bytes"] = serde_json::json!(sizes.event_len);
        results
    };
    let scale = if cli.no_scale {
        None
    } else {
        progress(
            cli,
            &format!(
                "scale: {} sessions, {} leases (fd limit {fd_limit})",
                target.sessions, target.leases
            ),
        );
        Some(runtime.block_on(scale::measure(&opts, target, fd_limit))?)
    };
    meta["loadavg_at_end"] = serde_json::json!(procfs::loadavg1());
    if cli.json {
        let v = report::json_report(&results, scale.as_ref(), meta);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "barkeep-bench: {} ({} CPUs), kernel {}, load {} -> {}",
            meta["machine"]["cpu"].as_str().unwrap_or("?"),
            meta["machine"]["nproc"],
            meta["machine"]["kernel"].as_str().unwrap_or("?"),
            meta["machine"]["loadavg_at_start"].as_str().unwrap_or("?"),
            meta["loadavg_at_end"],
        );
        println!(
            "{} ms windows after {} ms warm-up, median of {reps} interleaved runs; request {} bytes, reply {} bytes + 1 fd; floor4 also: release {} bytes, event {} bytes\n",
            window.as_millis(),
            warm.as_millis(),
            meta["request_bytes"],
            meta["reply_bytes"],
            meta["release_bytes"],
            meta["event_bytes"],
        );
        print!("{}", report::table(&results, scale.as_ref()));
    }
    Ok(())
}

fn progress(cli: &Cli, what: &str) {
    if !cli.json || std::env::var_os("BARKEEP_BENCH_PROGRESS").is_some() {
        eprintln!("... {what}");
    }
}

/// Every concurrency, `reps` times, the servers interleaved (the order
/// rotating from one repetition to the next): the floor, the floor with
/// barkeep's datagrams, barkeepd started by hand, and barkeepd as under
/// systemd (fd store), each one process for the whole measurement.
async fn load_runs(
    cli: &Cli,
    opts: &daemon::DaemonOptions,
    window: Duration,
    warm: Duration,
    reps: usize,
) -> Result<(Vec<report::Conc>, WireSizes), String> {
    let dir = daemon::tempdir()?;
    let most = cli.sessions.iter().copied().max().unwrap_or(1);
    let bar = (most as u64 * load::SLICE_LEN)
        .next_power_of_two()
        .max(1 << 20);
    let start = |name: &str, systemd: bool| -> Result<daemon::Server, String> {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        let config = daemon::config_text(
            &sub.join("barkeep.sock"),
            1,
            bar,
            &daemon::Limits::default(),
        );
        Ok(daemon::start_barkeepd(opts, &sub, &config, systemd)?.0)
    };
    let barkeepd = start("plain", false)?;
    let fdstore = if cli.no_fdstore {
        None
    } else {
        Some(start("systemd", true)?)
    };
    let sizes = wire_sizes(&barkeepd.socket).await?;
    let floor = daemon::start_floor(
        &dir.path().join("floor.sock"),
        sizes.reply_len,
        load::SLICE_LEN,
        None,
    )?;
    let floor4 = daemon::start_floor(
        &dir.path().join("floor4.sock"),
        sizes.reply_len,
        load::SLICE_LEN,
        Some(sizes.event_len),
    )?;
    let mut servers: Vec<(&str, load::Target, u32)> = vec![
        (
            "floor",
            load::Target::Floor {
                socket: floor.socket.clone(),
                request: sizes.request.clone(),
            },
            floor.pid(),
        ),
        (
            "floor4",
            load::Target::FloorProtocol {
                socket: floor4.socket.clone(),
                request: sizes.request.clone(),
                release: sizes.release.clone(),
                event_len: sizes.event_len,
            },
            floor4.pid(),
        ),
        (
            "barkeep",
            load::Target::Barkeep {
                socket: barkeepd.socket.clone(),
            },
            barkeepd.pid(),
        ),
    ];
    if let Some(s) = &fdstore {
        servers.push((
            "fdstore",
            load::Target::Barkeep {
                socket: s.socket.clone(),
            },
            s.pid(),
        ));
    }
    if let Some(only) = &cli.only {
        let names: Vec<&str> = servers.iter().map(|(name, _, _)| *name).collect();
        servers.retain(|(name, _, _)| name == only);
        if servers.is_empty() {
            return Err(format!(
                "--only {only}: no such server in this run; pick one of {}",
                names.join(", ")
            ));
        }
    }
    let mut out = Vec::new();
    for &n in &cli.sessions {
        let mut conc = report::Conc {
            sessions: n,
            ..Default::default()
        };
        for rep in 0..reps {
            for k in 0..servers.len() {
                let (name, target, pid) = &servers[(rep + k) % servers.len()];
                let r = load::run(target, n, warm, window, *pid).await?;
                progress(
                    cli,
                    &format!(
                        "{name:>7} {n:>4} sessions run {}: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, {:.0}/s, fairness {:.2}, server {:.2} us CPU per round trip",
                        rep + 1,
                        r.p50_us,
                        r.p99_us,
                        r.p999_us,
                        r.rps,
                        r.fairness,
                        r.server_cpu_us
                    ),
                );
                match *name {
                    "floor" => conc.floor.push(r),
                    "floor4" => conc.floor4.push(r),
                    "barkeep" => conc.barkeep.push(r),
                    _ => conc.fdstore.push(r),
                }
            }
        }
        out.push(conc);
    }
    floor.stop();
    floor4.stop();
    barkeepd.stop();
    if let Some(s) = fdstore {
        s.stop();
    }
    Ok((out, sizes))
}
