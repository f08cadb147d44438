//! A command for `barkeep exec` to run in the tests: it takes over the
//! inherited slices with `barkeep_client::inherited_slices()` and does one
//! thing with them.
//!
//! * `write INDEX OFFSET HEX`: map slice INDEX, write the bytes at OFFSET
//!   (in the slice), print the leases as JSON;
//! * `fds`: print the open fds and `$BARKEEP_SLICES` as JSON;
//! * `exit CODE`: exit with CODE without touching anything;
//! * `wait-term CODE`: print `ready`, wait for SIGTERM, exit with CODE;
//! * `wait-revoke INDEX`: map slice INDEX, print `ready`, wait until the
//!   parent reports the lease revoked, check that the mapping refuses
//!   accesses, print the reason.

use barkeep_client::{inherited_slices, Error, InheritedSlice};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let code = match arg(0) {
        "write" => write(arg(1), arg(2), arg(3)),
        "fds" => fds(),
        "exit" => arg(1).parse().unwrap_or(99),
        "wait-term" => wait_term(arg(1).parse().unwrap_or(99)),
        "wait-revoke" => wait_revoke(arg(1)),
        other => {
            eprintln!("bk-inherit: unknown step {other:?}");
            99
        }
    };
    std::process::exit(code);
}

fn take() -> Vec<InheritedSlice> {
    match inherited_slices() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bk-inherit: {e}");
            std::process::exit(98);
        }
    }
}

fn write(index: &str, offset: &str, hex: &str) -> i32 {
    let slices = take();
    let index: usize = index.parse().expect("index");
    let offset = barkeep_client::parse_number(offset).expect("offset");
    let bytes = barkeep_client::hex::parse_hex_bytes(hex).expect("hex");
    let map = match slices[index].map() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bk-inherit: map: {e}");
            return 1;
        }
    };
    if let Err(e) = map.write_bytes(offset, &bytes) {
        eprintln!("bk-inherit: write: {e}");
        return 1;
    }
    // A read-only slice must refuse writes.
    let ro_refused: Vec<bool> = slices
        .iter()
        .map(|s| match s.map() {
            Ok(m) => matches!(m.write_u8(0, 1), Err(Error::ReadOnly { .. })),
            Err(_) => false,
        })
        .collect();
    let leases: Vec<_> = slices
        .iter()
        .map(|s| {
            let l = s.lease();
            json!({"device": l.device, "bar": l.bar, "offset": l.offset, "length": l.length,
                   "access": l.access.as_str(), "lease": l.id.to_string(), "revoked": s.is_revoked()})
        })
        .collect();
    println!("{}", json!({"leases": leases, "ro_refused": ro_refused}));
    0
}

fn fds() -> i32 {
    // Every open fd but the directory handle this listing uses.
    let mut open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|t| !t.starts_with("/proc/"))
                .unwrap_or(false)
        })
        .collect();
    open.sort();
    let env: serde_json::Value = std::env::var("BARKEEP_SLICES")
        .ok()
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or(serde_json::Value::Null);
    println!("{}", json!({"open": open, "slices": env}));
    0
}

fn wait_term(code: i32) -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.thread_block().expect("block SIGTERM");
    let slices = take();
    println!("ready {}", slices.len());
    let _ = std::io::stdout().flush();
    let sig = set.wait().expect("sigwait");
    eprintln!("bk-inherit: got {sig}, exiting with {code}");
    code
}

fn wait_revoke(index: &str) -> i32 {
    let slices = take();
    let slice = &slices[index.parse::<usize>().expect("index")];
    let map = slice.map().expect("map");
    map.write_u32(0, 0x1234_5678).expect("write while live");
    println!("ready");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !slice.is_revoked() {
        if Instant::now() > deadline {
            eprintln!("bk-inherit: the lease was not reported revoked in 20 s");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match map.read_u32(0) {
        Err(Error::Revoked { reason, .. }) => {
            println!("revoked {reason}");
            0
        }
        other => {
            eprintln!("bk-inherit: access after revocation gave {other:?}");
            1
        }
    }
}
