//! The closed-loop load: N sessions (separate connections, one task each on
//! a multi-threaded runtime), each doing one round trip after another for a
//! fixed window after a warm-up, recording every round trip's latency and
//! how many each session completed; the server's CPU time is read from /proc
//! at the window's edges.
//!
//! A round trip is, for the floor, request -> reply + fd; for barkeep,
//! `AsyncClient::acquire` (request -> Granted + fd, through the public
//! client library) followed by dropping the `Slice`, which sends the release
//! without waiting: the daemon handles that release before the session's
//! next acquire, so each measured round trip includes a release's work.
//! For the floor with barkeep's datagrams (`floor4`) it is the same as
//! barkeep's without the library: request -> reply + fd, close the fd, send
//! the release without waiting; the event answering the release arrives
//! before the next reply and is read and discarded then. The clock stops
//! where barkeep's does (after the release is sent), so both columns time
//! the same client steps.

use crate::procfs;
use barkeep_client::nonblocking::AsyncClient;
use barkeep_client::{Access, ConnectOptions, MemAttrRequest, SliceRequest};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_seqpacket::ancillary::OwnedAncillaryMessage;
use tokio_seqpacket::UnixSeqpacket;

/// Slice length of every grant (one page, like the floor's memfd).
pub const SLICE_LEN: u64 = 4096;

/// The server a run measures.
#[derive(Clone, Debug)]
pub enum Target {
    /// The floor server, sent `request` (as long as barkeep's acquire).
    Floor { socket: PathBuf, request: Vec<u8> },
    /// barkeepd, through the client library, on device `sim0`.
    Barkeep { socket: PathBuf },
    /// The floor with barkeep's datagrams: sent `request`, then `release`
    /// (as long as barkeep's release) without waiting, answered by an event
    /// of `event_len` bytes.
    FloorProtocol {
        socket: PathBuf,
        request: Vec<u8>,
        release: Vec<u8>,
        event_len: usize,
    },
}

/// One run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunResult {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub rps: f64,
    pub fairness: f64,
    pub server_cpu_us: f64,
    pub round_trips: u64,
}

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Session `i`'s slice: its own page, so that sessions never conflict.
pub fn slice_request(i: usize) -> SliceRequest {
    SliceRequest {
        device: "sim0".into(),
        bar: 0,
        offset: i as u64 * SLICE_LEN,
        length: SLICE_LEN,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::Uncached,
    }
}

enum Conn {
    Floor(UnixSeqpacket),
    Barkeep(AsyncClient),
}

async fn connect(target: &Target) -> Result<Conn, String> {
    match target {
        Target::Floor { socket, .. } | Target::FloorProtocol { socket, .. } => {
            UnixSeqpacket::connect(socket)
                .await
                .map(Conn::Floor)
                .map_err(|e| format!("connect to the floor: {e}"))
        }
        Target::Barkeep { socket } => ConnectOptions::new()
            .name("barkeep-bench")
            .connect_async(socket)
            .await
            .map(Conn::Barkeep)
            .map_err(|e| format!("connect to barkeepd: {e}")),
    }
}

/// Connects `n` sessions, at most 64 handshakes at a time.
pub async fn connect_many(socket: &Path, n: usize) -> Result<Vec<AsyncClient>, String> {
    let target = Target::Barkeep {
        socket: socket.to_path_buf(),
    };
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(64);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let t = target.clone();
            set.spawn(async move { connect(&t).await });
        }
        while let Some(r) = set.join_next().await {
            match r.map_err(|e| e.to_string())?? {
                Conn::Barkeep(c) => out.push(c),
                Conn::Floor(_) => unreachable!(),
            }
        }
        left -= batch;
    }
    Ok(out)
}

/// One session's loop; returns its completed round trips in the window
/// and their latencies (ns).
async fn session_loop(
    i: usize,
    conn: Conn,
    target: Arc<Target>,
    phase: Arc<AtomicU8>,
) -> Result<(u64, Vec<u32>), String> {
    let mut lat = Vec::with_capacity(4096);
    let mut done = 0u64;
    let mut buf = vec![0u8; barkeep_protocol::MAX_DATAGRAM];
    let mut cmsg = [0u8; 128];
    let (request, release, event_len) = match &*target {
        Target::Floor { request, .. } => (request.clone(), None, 0),
        Target::FloorProtocol {
            request,
            release,
            event_len,
            ..
        } => (request.clone(), Some(release.clone()), *event_len),
        Target::Barkeep { .. } => (Vec::new(), None, 0),
    };
    // floor4: a release was sent whose event has not been read yet.
    let mut event_due = false;
    let slice = slice_request(i);
    loop {
        let t = Instant::now();
        match &conn {
            Conn::Floor(sock) => {
                sock.send(&request)
                    .await
                    .map_err(|e| format!("floor send: {e}"))?;
                let fds = loop {
                    let (info, ancillary) = sock
                        .recv_with_ancillary(&mut buf, &mut cmsg)
                        .await
                        .map_err(|e| format!("floor recv: {e}"))?;
                    let mut fds: Vec<OwnedFd> = Vec::with_capacity(1);
                    for m in ancillary.into_messages() {
                        if let OwnedAncillaryMessage::FileDescriptors(f) = m {
                            fds.extend(f);
                        }
                    }
                    let n = info.bytes_read();
                    if event_due && fds.is_empty() && n == event_len {
                        // The previous release's event, as barkeep's
                        // library reads it: discarded.
                        event_due = false;
                        continue;
                    }
                    if n == 0 || fds.len() != 1 || event_due {
                        return Err(format!(
                            "floor replied {n} bytes and {} fds{}",
                            fds.len(),
                            if event_due {
                                " before the event of the previous release"
                            } else {
                                ""
                            }
                        ));
                    }
                    break fds;
                };
                if let Some(release) = &release {
                    // As dropping a Slice: close our fd, release, don't wait.
                    drop(fds);
                    sock.send(release)
                        .await
                        .map_err(|e| format!("floor send: {e}"))?;
                    event_due = true;
                }
            }
            Conn::Barkeep(client) => {
                let granted = client
                    .acquire(slice.clone())
                    .await
                    .map_err(|e| format!("acquire in session {i}: {e}"))?;
                // Releases (without waiting) and closes our fd.
                drop(granted);
            }
        }
        let elapsed = t.elapsed();
        match phase.load(Ordering::Relaxed) {
            WARM => {}
            MEASURE => {
                done += 1;
                lat.push(elapsed.as_nanos().min(u32::MAX as u128) as u32);
            }
            _ => return Ok((done, lat)),
        }
    }
}

/// Measures `sessions` concurrent sessions against `target` (whose server
/// process is `server_pid`): `warm` unmeasured, then `window` measured.
pub async fn run(
    target: &Target,
    sessions: usize,
    warm: Duration,
    window: Duration,
    server_pid: u32,
) -> Result<RunResult, String> {
    let mut conns = Vec::with_capacity(sessions);
    match target {
        Target::Barkeep { socket } => {
            for c in connect_many(socket, sessions).await? {
                conns.push(Conn::Barkeep(c));
            }
        }
        Target::Floor { .. } | Target::FloorProtocol { .. } => {
            for _ in 0..sessions {
                conns.push(connect(target).await?);
            }
        }
    }
    let phase = Arc::new(AtomicU8::new(WARM));
    let target = Arc::new(target.clone());
    let mut tasks = Vec::with_capacity(sessions);
    for (i, conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(session_loop(
            i,
            conn,
            target.clone(),
            phase.clone(),
        )));
    }
    tokio::time::sleep(warm).await;
    let cpu0 = procfs::cpu_ns(server_pid).ok_or("cannot read the server's CPU time")?;
    let t0 = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let cpu1 = procfs::cpu_ns(server_pid).ok_or("cannot read the server's CPU time")?;

    let mut counts = Vec::with_capacity(sessions);
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        let (n, lat) = t.await.map_err(|e| format!("session task: {e}"))??;
        counts.push(n);
        all.extend(lat);
    }
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return Err("no round trip completed in the window".into());
    }
    all.sort_unstable();
    let pct = |q: f64| -> f64 {
        let idx = ((q * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1;
        all[idx] as f64 / 1000.0
    };
    let min = *counts.iter().min().unwrap_or(&0) as f64;
    let max = *counts.iter().max().unwrap_or(&1) as f64;
    Ok(RunResult {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        rps: total as f64 / elapsed.as_secs_f64(),
        fairness: if max > 0.0 { min / max } else { 0.0 },
        server_cpu_us: cpu1.saturating_sub(cpu0) as f64 / 1000.0 / total as f64,
        round_trips: total,
    })
}
