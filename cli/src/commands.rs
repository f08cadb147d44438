//! The CLI's commands: each talks to the daemon through the blocking client
//! and returns what to print (both as JSON and as text).

use crate::render::{self, buffer_info, hexdump};
use crate::{exit, AcquireArgs, Cli, Command, Failure, HexBytes, Hold, Outcome, WcMode};
use barkeep_client::hex::to_hex;
use barkeep_client::{
    Access, Client, ConnectOptions, Error, Event, Mapping, MemAttrRequest, RevokeReason,
    SliceRequest,
};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One `--write` or `--read`, in command-line order.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Write { offset: u64, data: Vec<u8> },
    Read { offset: u64, length: u64 },
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::Read { .. } => "read",
        }
    }
}

/// Positions of the `--write` (true) and `--read` (false) values on the
/// command line, as (is_write, nth occurrence), sorted by position.
pub fn op_order(m: &clap::ArgMatches) -> Vec<(bool, usize)> {
    let mut v: Vec<(usize, bool, usize)> = Vec::new();
    for (id, is_write) in [("write", true), ("read", false)] {
        if let Some(idx) = m.indices_of(id) {
            v.extend(idx.enumerate().map(|(n, i)| (i, is_write, n)));
        }
    }
    v.sort();
    v.into_iter().map(|(_, w, n)| (w, n)).collect()
}

pub fn ordered_ops(a: &AcquireArgs, order: &[(bool, usize)]) -> Vec<Op> {
    order
        .iter()
        .filter_map(|&(is_write, n)| {
            if is_write {
                a.write.get(n).map(|(offset, data)| Op::Write {
                    offset: *offset,
                    data: data.clone(),
                })
            } else {
                a.read
                    .get(n)
                    .map(|&(offset, length)| Op::Read { offset, length })
            }
        })
        .collect()
}

fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket
        .clone()
        .unwrap_or_else(barkeep_client::default_socket_path)
}

pub fn connect(path: &std::path::Path) -> Result<Client, Failure> {
    ConnectOptions::new()
        .name("barkeep")
        // A holder (`acquire --hold`) tells its user why it is waiting.
        .on_reconnect(|step| eprintln!("barkeep: {step}"))
        .connect(path)
        .map_err(|e| {
            let mut f = Failure::from(e);
            f.exit = exit::UNREACHABLE;
            f
        })
}

pub fn run(cli: &Cli, order: Vec<(bool, usize)>) -> Result<Outcome, Failure> {
    if let Command::Demo = &cli.command {
        return crate::demo::run();
    }
    let client = connect(&socket_path(cli))?;
    let done = |json: Value, human: String| {
        Ok(Outcome {
            json,
            human,
            exit: exit::OK,
        })
    };
    match &cli.command {
        Command::Status => {
            let s = client.status()?;
            let w = client.welcome();
            done(render::status(&s, w), render::human_status(&s, w))
        }
        Command::Devices => {
            let d = client.devices()?;
            done(render::devices(&d), render::human_devices(&d))
        }
        Command::Leases { all } => {
            // An admin sees everything, as loginctl list-sessions does.
            let l = client.leases(*all || client.welcome().admin)?;
            let list: Vec<Value> = l.iter().map(render::lease_info).collect();
            done(json!({ "leases": list }), render::human_leases(&l))
        }
        Command::Release { lease } => {
            client.release(*lease)?;
            done(
                json!({ "released": lease.to_string() }),
                format!("released lease {lease}\n"),
            )
        }
        Command::Revoke(r) => crate::policy::revoke(&client, r),
        Command::Explain(a) => crate::policy::explain(&client, a),
        Command::Reload => crate::policy::reload(&client),
        Command::Peek {
            device,
            bar,
            offset,
            length,
        } => {
            let bytes = client.peek(device, *bar, *offset, *length)?;
            done(
                json!({"device": device, "bar": bar, "offset": offset, "length": bytes.len(), "hex": to_hex(&bytes)}),
                hexdump(*offset, &bytes),
            )
        }
        Command::Poke {
            device,
            bar,
            offset,
            hexbytes: HexBytes(hexbytes),
        } => {
            client.poke(device, *bar, *offset, hexbytes)?;
            done(
                json!({"device": device, "bar": bar, "offset": offset, "length": hexbytes.len(), "hex": to_hex(hexbytes)}),
                format!(
                    "wrote {} byte(s) to {device} BAR{bar} at {offset:#x}: {}\n",
                    hexbytes.len(),
                    to_hex(hexbytes)
                ),
            )
        }
        Command::Acquire(a) => acquire(&client, a, &ordered_ops(a, &order), cli.json),
        Command::Demo => unreachable!("handled above"),
        Command::Exec(_)
        | Command::Cdi(_)
        | Command::Metrics
        | Command::Completions { .. }
        | Command::GenerateMan { .. } => unreachable!("run by integrations::run"),
    }
}

fn write_op(m: &Mapping, offset: u64, data: &[u8]) -> Result<(), Error> {
    // One access of the natural width when the device would see one.
    match data.len() {
        1 => m.write_u8(offset, data[0]),
        2 if offset % 2 == 0 => m.write_u16(offset, u16::from_ne_bytes([data[0], data[1]])),
        4 if offset % 4 == 0 => {
            m.write_u32(offset, u32::from_ne_bytes(data.try_into().expect("4")))
        }
        8 if offset % 8 == 0 => {
            m.write_u64(offset, u64::from_ne_bytes(data.try_into().expect("8")))
        }
        _ => m.write_bytes(offset, data),
    }
}

fn read_op(m: &Mapping, offset: u64, length: u64) -> Result<Vec<u8>, Error> {
    Ok(match length {
        1 => vec![m.read_u8(offset)?],
        2 if offset % 2 == 0 => m.read_u16(offset)?.to_ne_bytes().to_vec(),
        4 if offset % 4 == 0 => m.read_u32(offset)?.to_ne_bytes().to_vec(),
        8 if offset % 8 == 0 => m.read_u64(offset)?.to_ne_bytes().to_vec(),
        _ => {
            let n = usize::try_from(length).map_err(|_| Error::OutOfRange {
                what: "access",
                offset,
                length,
                size: m.len(),
                within: "mapping",
            })?;
            if offset.checked_add(length).is_none_or(|end| end > m.len()) {
                return Err(Error::OutOfRange {
                    what: "access",
                    offset,
                    length,
                    size: m.len(),
                    within: "mapping",
                });
            }
            let mut buf = vec![0u8; n];
            m.read_bytes(offset, &mut buf)?;
            buf
        }
    })
}

fn acquire(
    client: &Client,
    a: &AcquireArgs,
    ops: &[Op],
    json_out: bool,
) -> Result<Outcome, Failure> {
    let req = slice_request(a);
    let slice = client.acquire(req)?;
    let lease = slice.lease().clone();
    let fd = slice.as_raw_fd();
    let mut human = String::new();
    let _ = writeln!(
        human,
        "lease {} on {} BAR{} {:#x}+{:#x} (BAR {:#x}..{:#x}), {} {}",
        lease.id,
        lease.device,
        lease.bar,
        lease.offset,
        lease.length,
        lease.offset,
        lease.offset + lease.length,
        lease.access,
        lease.memattr
    );
    let (buffer_json, buffer_human) = buffer_info(slice.as_fd());
    let _ = writeln!(human, "buffer {}, {buffer_human}", lease.buffer_name);

    let mut lease_json = render::lease(&lease);
    lease_json
        .as_object_mut()
        .expect("object")
        .insert("fd".into(), json!(fd));

    let mut ops_json = Vec::new();
    let mut reads_json = Vec::new();
    let mut mapping_json = Value::Null;
    let mapping = if a.no_map {
        None
    } else {
        let len = a
            .map_len
            .unwrap_or_else(|| lease.length.saturating_sub(a.map_at));
        let m = slice.map_range(a.map_at, len)?;
        mapping_json = json!({"offset": a.map_at, "length": m.len()});
        let _ = writeln!(
            human,
            "mapped slice {:#x}+{:#x} (BAR {:#x})",
            a.map_at,
            m.len(),
            lease.offset + a.map_at
        );
        Some(m)
    };
    if let Some(m) = &mapping {
        run_ops(
            m,
            ops,
            lease.offset + a.map_at,
            &mut human,
            &mut ops_json,
            &mut reads_json,
        )?;
    }

    let mut revoked: Option<RevokeReason> = None;
    let hold_json = match a.hold {
        None => Value::Null,
        Some(Hold::Forever) => json!("forever"),
        Some(Hold::Seconds(s)) => json!(s),
    };
    if let Some(hold) = a.hold {
        revoked = hold_lease(client, &slice, hold, json_out, &mut human)?;
    }
    drop(mapping);
    let released = revoked.is_none();
    if released {
        client.release(lease.id)?;
        let _ = writeln!(human, "released lease {}", lease.id);
    } else if let Some(r) = revoked {
        let _ = writeln!(human, "lease {} was revoked ({r})", lease.id);
    }
    drop(slice);
    let json = json!({
        "lease": lease_json,
        "buffer": buffer_json,
        "mapping": mapping_json,
        "ops": ops_json,
        "reads": reads_json,
        "hold": hold_json,
        "released": released,
        "revoked": revoked.map(|r| json!({"reason": r.as_str()})),
    });
    Ok(Outcome {
        json,
        human,
        exit: if revoked.is_some() {
            exit::REVOKED
        } else {
            exit::OK
        },
    })
}

/// The request `barkeep acquire` makes.
fn slice_request(a: &AcquireArgs) -> SliceRequest {
    SliceRequest {
        device: a.device.clone(),
        bar: a.bar,
        offset: a.offset,
        length: a.length,
        access: if a.ro {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
        memattr: match a.wc {
            None => MemAttrRequest::Uncached,
            Some(WcMode::Require) => MemAttrRequest::WriteCombining,
            Some(WcMode::Prefer) => MemAttrRequest::PreferWriteCombining,
        },
    }
}

/// Runs `--write`/`--read` ops on the mapping `m`, whose byte 0 is BAR
/// offset `bar_base`.
fn run_ops(
    m: &Mapping,
    ops: &[Op],
    bar_base: u64,
    human: &mut String,
    ops_json: &mut Vec<Value>,
    reads_json: &mut Vec<Value>,
) -> Result<(), Failure> {
    let bar_at = |off: u64| bar_base + off;
    for op in ops {
        match op {
            Op::Write { offset, data } => {
                write_op(m, *offset, data)?;
                ops_json.push(json!({"op": op.kind(), "offset": offset, "length": data.len(), "hex": to_hex(data)}));
                let _ = writeln!(
                    human,
                    "wrote {} at mapping {offset:#x} (BAR {:#x})",
                    to_hex(data),
                    bar_at(*offset)
                );
            }
            Op::Read { offset, length } => {
                let bytes = read_op(m, *offset, *length)?;
                let hex = to_hex(&bytes);
                ops_json
                    .push(json!({"op": op.kind(), "offset": offset, "length": length, "hex": hex}));
                reads_json.push(json!(hex));
                let _ = writeln!(
                    human,
                    "read  mapping {offset:#x}+{length:#x} (BAR {:#x}): {hex}",
                    bar_at(*offset)
                );
            }
        }
    }
    Ok(())
}

/// `--hold`: says so on stderr, prints what there is so far, and waits;
/// the reason when the lease is revoked meanwhile.
fn hold_lease(
    client: &Client,
    slice: &barkeep_client::Slice,
    hold: Hold,
    json_out: bool,
    human: &mut String,
) -> Result<Option<RevokeReason>, Failure> {
    let lease = slice.lease();
    // Tell whoever runs us that the lease is live (stdout is reserved for
    // the single JSON object in --json mode).
    eprintln!(
        "barkeep: holding lease {} ({}); exit 3 if it is revoked",
        lease.id,
        match hold {
            Hold::Forever => "until interrupted".to_string(),
            Hold::Seconds(s) => format!("for {s}s"),
        }
    );
    if !json_out {
        print!("{human}");
        human.clear();
        let _ = std::io::stdout().flush();
    }
    let deadline = match hold {
        Hold::Forever => None,
        Hold::Seconds(s) => Some(Instant::now() + Duration::from_secs_f64(s)),
    };
    hold_until(client, slice, deadline)
}

/// Waits until `deadline` (forever with `None`) or until the lease is
/// revoked; returns the reason in the latter case. A lost connection is an
/// error (exit 4), not a revocation.
fn hold_until(
    client: &Client,
    slice: &barkeep_client::Slice,
    deadline: Option<Instant>,
) -> Result<Option<RevokeReason>, Failure> {
    let id = slice.lease().id;
    loop {
        match slice.revoked_reason() {
            Some(RevokeReason::Disconnected) => {
                return Err(Failure::from(Error::Disconnected(
                    "barkeepd went away while the lease was held".into(),
                )))
            }
            Some(r) => return Ok(Some(r)),
            None => {}
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if timeout == Some(Duration::ZERO) {
            return Ok(None);
        }
        match client.next_event(timeout) {
            Ok(Some(Event::Revoked { lease, reason })) if lease == id => return Ok(Some(reason)),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}
