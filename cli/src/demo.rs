//! `barkeep demo`: starts an in-process daemon with a simulated device and a
//! policy for the current user, walks through what barkeep does, checks that
//! each step behaves as documented, and prints an account of it.

use crate::render::buffer_info;
use crate::{exit, Failure, Outcome};
use barkeep_client::hex::to_hex;
use barkeep_client::{
    Access, Client, ClientCode, Error, ErrorCode, Event, Mapping, MemAttrRequest, RevokeReason,
    RevokeTarget, Slice, SliceRequest,
};
use serde_json::json;
use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::time::Duration;

/// Where the demo's rw slice starts in BAR0: deliberately not 0, so that
/// "mapping offset 0 is the slice start" is visible.
const SLICE_AT: u64 = 0x10000;
const SLICE_LEN: u64 = 0x4000;

struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report {
    steps: Vec<Step>,
}

impl Report {
    /// Records a step; `Err` aborts the walk when later steps depend on it.
    fn step(&mut self, name: &'static str, r: Result<String, String>) -> Result<(), ()> {
        let ok = r.is_ok();
        let detail = r.unwrap_or_else(|e| e);
        self.steps.push(Step { name, ok, detail });
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }
}

fn config(socket: &std::path::Path, uid: u32) -> String {
    format!(
        r#"
socket = "{socket}"

[[device]]
name = "sim0"
# BAR2's last page plays an MSI-X table: it is outside the mappable area.
sim = {{ bars = [ {{ index = 0, size = "1M" }}, {{ index = 2, size = "64K", mappable = ["0x0..0xf000"] }} ] }}

[[grant]]
device = "sim0"
bar = 0
access = "rw"
uids = [{uid}]

[[grant]]
device = "sim0"
bar = 2
access = "ro"
uids = [{uid}]

[admin]
uids = [{uid}]
"#,
        socket = socket.display()
    )
}

fn e(err: Error) -> String {
    format!("unexpected error: {err}")
}

fn req(bar: u32, offset: u64, length: u64, access: Access) -> SliceRequest {
    SliceRequest {
        device: "sim0".into(),
        bar,
        offset,
        length,
        access,
        memattr: MemAttrRequest::Uncached,
    }
}

pub fn run() -> Result<Outcome, Failure> {
    let dir = tempfile::Builder::new()
        .prefix("barkeep-demo-")
        .tempdir()
        .map_err(|e| {
            Failure::new(
                ClientCode::Io,
                format!("cannot create a temporary directory: {e}"),
                exit::FAILED,
            )
        })?;
    let socket = dir.path().join("barkeep.sock");
    let uid = nix::unistd::getuid().as_raw();
    let mut report = Report::default();
    let started = barkeep_daemon::Config::from_toml_str(&config(&socket, uid))
        .map_err(|e| e.to_string())
        .and_then(barkeep_daemon::spawn);
    match started {
        Ok(daemon) => {
            let _ = report.step(
                "start",
                Ok(format!(
                    "barkeepd runs in this process on {}, with simulated device sim0 \
                     (BAR0 1M, BAR2 64K whose last page is not mappable) and grants for uid {uid}",
                    socket.display()
                )),
            );
            let _ = walk(&mut report, daemon.socket_path());
            daemon.stop();
        }
        Err(why) => {
            let _ = report.step("start", Err(format!("cannot start the daemon: {why}")));
        }
    }

    let ok = report.steps.iter().all(|s| s.ok);
    let mut human = String::new();
    let _ = writeln!(human, "barkeep demo\n");
    for s in &report.steps {
        let _ = writeln!(
            human,
            "{} {}: {}",
            if s.ok { "✓" } else { "✗" },
            s.name,
            s.detail
        );
    }
    let _ = writeln!(
        human,
        "\n{}",
        if ok {
            format!("all {} steps behaved as expected", report.steps.len())
        } else {
            "a step did not behave as expected (✗ above)".to_string()
        }
    );
    let steps: Vec<_> = report
        .steps
        .iter()
        .map(|s| json!({"step": s.name, "ok": s.ok, "detail": s.detail}))
        .collect();
    Ok(Outcome {
        json: json!({"ok": ok, "socket": socket.display().to_string(), "steps": steps}),
        human,
        exit: if ok { exit::OK } else { exit::DEMO_FAILED },
    })
}

fn walk(report: &mut Report, socket: &std::path::Path) -> Result<(), ()> {
    // 1. Handshake.
    let client = Client::with_name("barkeep-demo").connect(socket);
    report.step("handshake", handshake(&client))?;
    let client = client.map_err(|_| ())?;

    // 2. Devices.
    report.step("devices", devices(&client))?;

    // 3. Acquire at a non-zero offset.
    let slice = client.acquire(req(0, SLICE_AT, SLICE_LEN, Access::ReadWrite));
    report.step("acquire", acquired(&slice))?;
    let slice = slice.map_err(|_| ())?;

    // 4. Map and write.
    let map = slice.map();
    let pattern = 0xdead_beef_u32;
    report.step("map + write", map_and_write(&map, pattern))?;
    let map = map.map_err(|_| ())?;

    // 5. Peek through the daemon: slice offset k is BAR offset SLICE_AT + k.
    report.step("peek", peek(&client, pattern))?;

    // 6. Map at a page offset inside the slice.
    report.step(
        "map at a page offset",
        map_at_page_offset(&client, &slice, &map),
    )?;

    // 7. A read-only slice.
    let ro = client.acquire(req(2, 0x1000, 0x1000, Access::ReadOnly));
    report.step("read-only slice", read_only(&ro))?;
    let ro = ro.map_err(|_| ())?;

    // 8. The kernel itself refuses a writable mapping of the O_RDONLY fd.
    report.step("kernel refuses PROT_WRITE", kernel_refuses_write(&ro))?;

    // 9. Bad requests get specific errors, and the session goes on.
    report.step(
        "bad request: unaligned",
        expect_code(
            client.acquire(req(0, SLICE_AT + 0x800, 0x1000, Access::ReadWrite)),
            ErrorCode::Unaligned,
        ),
    )?;
    report.step(
        "bad request: not mappable",
        expect_code(
            client.acquire(req(2, 0xf000, 0x1000, Access::ReadOnly)),
            ErrorCode::NotMappable,
        ),
    )?;

    // 10. An administrator revokes the rw lease from another connection.
    report.step("revoke", revoke(socket, &client, &slice, &map))?;
    drop((map, slice, ro));
    Ok(())
}

/// Step 1: what the daemon's `Welcome` says.
fn handshake(client: &Result<Client, Error>) -> Result<String, String> {
    match client {
        Ok(c) => {
            let w = c.welcome();
            Ok(format!(
                "Hello -> Welcome: barkeepd {}, protocol {}, session {}, page size {}, \
                 uid {}, admin {}",
                w.daemon_version,
                w.protocol_version,
                w.session_id,
                w.page_size,
                w.identity.uid,
                w.admin
            ))
        }
        Err(err) => Err(format!("cannot connect: {err}")),
    }
}

/// Step 2: sim0 is listed with the demo's BARs.
fn devices(client: &Client) -> Result<String, String> {
    client.devices().map_err(e).and_then(|ds| {
        let d = ds
            .iter()
            .find(|d| d.name == "sim0")
            .ok_or("sim0 is not listed")?;
        let bars: Vec<String> = d
            .bars
            .iter()
            .map(|b| {
                let m: Vec<String> = b
                    .mappable
                    .iter()
                    .map(|r| format!("{:#x}..{:#x}", r.offset, r.offset + r.length))
                    .collect();
                format!(
                    "BAR{} {:#x} bytes (mappable {})",
                    b.index,
                    b.size,
                    m.join(", ")
                )
            })
            .collect();
        let sizes: Vec<(u32, u64)> = d.bars.iter().map(|b| (b.index, b.size)).collect();
        if sizes != [(0, 0x100000), (2, 0x10000)] {
            return Err(format!("unexpected BARs: {}", bars.join("; ")));
        }
        Ok(format!("sim0 ({}): {}", d.backend, bars.join("; ")))
    })
}

/// Step 3: the lease and its buffer are the slice, not the BAR.
fn acquired(slice: &Result<Slice, Error>) -> Result<String, String> {
    match slice {
        Ok(s) => {
            let l = s.lease();
            let (info, _) = buffer_info(s.as_fd());
            let size = info["size"].as_u64();
            if l.offset != SLICE_AT || l.length != SLICE_LEN || size != Some(SLICE_LEN) {
                Err(format!(
                    "lease {:#x}+{:#x} with a buffer of {size:?} bytes; wanted {SLICE_AT:#x}+{SLICE_LEN:#x}",
                    l.offset, l.length
                ))
            } else {
                Ok(format!(
                    "lease {} = sim0 BAR0 {:#x}+{:#x} rw, buffer {:?}; its fd is {:#x} bytes: \
                     the slice, not the BAR",
                    l.id, l.offset, l.length, l.buffer_name, SLICE_LEN
                ))
            }
        }
        Err(err) => Err(e_ref(err)),
    }
}

/// Step 4: writes through the mapping read back.
fn map_and_write(map: &Result<Mapping, Error>, pattern: u32) -> Result<String, String> {
    map.as_ref().map_err(e_ref).and_then(|m| {
        m.write_u32(0x20, pattern).map_err(e)?;
        m.write_bytes(0x100, b"barkeep!").map_err(e)?;
        if m.read_u32(0x20).map_err(e)? != pattern {
            return Err("the mapping does not read back what was written".into());
        }
        Ok(format!(
            "mapped {:#x} bytes; wrote u32 {pattern:#x} at mapping offset 0x20 and \
             \"barkeep!\" at 0x100",
            m.len()
        ))
    })
}

/// Step 5: the daemon's peek sees what the mapping wrote.
fn peek(client: &Client, pattern: u32) -> Result<String, String> {
    let a = client.peek("sim0", 0, SLICE_AT + 0x20, 4).map_err(e)?;
    let b = client.peek("sim0", 0, SLICE_AT + 0x100, 8).map_err(e)?;
    if a != pattern.to_ne_bytes() || b != b"barkeep!" {
        return Err(format!(
            "peek at BAR0 {:#x} gave {}, at {:#x} gave {}",
            SLICE_AT + 0x20,
            to_hex(&a),
            SLICE_AT + 0x100,
            to_hex(&b)
        ));
    }
    Ok(format!(
        "the daemon reads u32 {pattern:#x} at BAR0 {:#x} and \"barkeep!\" at BAR0 {:#x}: \
                 mapping offset k is BAR offset {SLICE_AT:#x} + k",
        SLICE_AT + 0x20,
        SLICE_AT + 0x100
    ))
}

/// Step 6: a mapping at a page offset is the same bytes; past the end is
/// refused.
fn map_at_page_offset(client: &Client, slice: &Slice, map: &Mapping) -> Result<String, String> {
    let page = slice.map_range(0x2000, 0x1000).map_err(e)?;
    page.write_u64(0x8, 0x0123_4567_89ab_cdef).map_err(e)?;
    let whole = map.read_u64(0x2008).map_err(e)?;
    let peeked = client.peek("sim0", 0, SLICE_AT + 0x2008, 8).map_err(e)?;
    if whole != 0x0123_4567_89ab_cdef || peeked != whole.to_ne_bytes() {
        return Err(format!(
            "wrote 0x0123456789abcdef at map_range(0x2000) + 8, but the whole mapping \
                     reads {whole:#x} at 0x2008 and peek gives {}",
            to_hex(&peeked)
        ));
    }
    let past = slice.map_range(0x3000, 0x2000);
    if !matches!(past, Err(Error::OutOfRange { .. })) {
        return Err(format!("mapping past the slice was not refused: {past:?}"));
    }
    Ok(format!(
        "map_range(0x2000, 0x1000) + 8 is slice offset 0x2008 = BAR0 {:#x}; \
                 map_range(0x3000, 0x2000) is refused: it would pass the slice's end",
        SLICE_AT + 0x2008
    ))
}

/// Step 7: a read-only slice maps PROT_READ and refuses writes.
fn read_only(ro: &Result<Slice, Error>) -> Result<String, String> {
    ro.as_ref().map_err(e_ref).and_then(|s| {
        let m = s.map().map_err(e)?;
        let v = m.read_u32(0).map_err(e)?;
        match m.write_u32(0, 1) {
            Err(err @ Error::ReadOnly { .. }) => Ok(format!(
                "sim0 BAR2 0x1000+0x1000 ro maps PROT_READ (reads {v:#x}); a write through \
                 it is refused: {err}"
            )),
            other => Err(format!("a write to a read-only slice gave {other:?}")),
        }
    })
}

/// Step 8: the kernel refuses a writable mapping of the read-only fd.
fn kernel_refuses_write(ro: &Slice) -> Result<String, String> {
    match Mapping::from_fd(ro.as_fd(), 0, 0x1000, Access::ReadWrite) {
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EACCES) => Ok(
            "mmap(PROT_READ|PROT_WRITE, MAP_SHARED) of the read-only fd fails with EACCES, \
             whoever holds the fd"
                .into(),
        ),
        other => Err(format!(
            "a writable mapping of the read-only fd gave {:?}",
            other.map(|m| m.len())
        )),
    }
}

fn e_ref(err: &Error) -> String {
    format!("unexpected error: {err}")
}

fn expect_code(r: Result<Slice, Error>, want: ErrorCode) -> Result<String, String> {
    match r {
        Err(Error::Daemon(reply)) if reply.code == want => Ok(format!(
            "{} ({}): \"{}\"",
            want.slug(),
            want.number(),
            reply.message
        )),
        Err(err) => Err(format!("expected {want}, got: {err}")),
        Ok(s) => Err(format!(
            "expected {want}, but lease {} was granted",
            s.lease().id
        )),
    }
}

fn revoke(
    socket: &std::path::Path,
    holder: &Client,
    slice: &Slice,
    map: &Mapping,
) -> Result<String, String> {
    let admin = Client::with_name("barkeep-demo-admin")
        .connect(socket)
        .map_err(e)?;
    let id = slice.lease().id;
    let n = admin.revoke(RevokeTarget::Lease(id)).map_err(e)?;
    if n != 1 {
        return Err(format!("revoke reported {n} leases"));
    }
    let event = loop {
        match holder.next_event(Some(Duration::from_secs(5))) {
            Ok(Some(Event::Revoked { lease, reason })) if lease == id => break reason,
            Ok(Some(_)) => continue,
            Ok(None) => return Err("no Revoked event within 5 s".into()),
            Err(err) => return Err(e(err)),
        }
    };
    if event != RevokeReason::Admin || !slice.is_revoked() {
        return Err(format!(
            "event reason {event}, Slice::is_revoked() = {}",
            slice.is_revoked()
        ));
    }
    match map.read_u32(0x20) {
        Err(err @ Error::Revoked { .. }) => Ok(format!(
            "an admin connection revoked lease {id}; the holder got Revoked {{ reason: {event} }}, \
             Slice::is_revoked() = true, and read_u32 now returns: {err}"
        )),
        other => Err(format!("an access after revocation gave {other:?}")),
    }
}
