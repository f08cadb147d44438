//! A program started by `barkeep exec`: take the slices it inherited, map
//! the first and write to it. It never talks to the daemon; `barkeep exec`
//! holds the leases while it runs and tells it about revocations through
//! a status page the library reads.
//!
//! ```sh
//! cargo build -p barkeep-client --example inherited
//! barkeep exec --slice sim0:0:0x10000:4K -- target/debug/examples/inherited 0x40 0xc0ffee
//! ```
//!
//! Arguments: OFFSET VALUE, written as a 32-bit value at OFFSET of the
//! first slice; prints what it read back.

use barkeep_client::{inherited_slices, parse_number};

fn main() {
    if let Err(e) = run() {
        eprintln!("inherited: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [offset, value] = args.as_slice() else {
        return Err("usage: barkeep exec --slice SPEC -- inherited OFFSET VALUE".into());
    };
    let offset = parse_number(offset)?;
    let value: u32 = parse_number(value)?.try_into()?;

    // $BARKEEP_SLICES describes each inherited fd; the library checks that
    // each fd is the buffer described and takes ownership of it.
    let slices = inherited_slices()?;
    let Some(first) = slices.first() else {
        return Err("no inherited slices: run me under `barkeep exec --slice ...`".into());
    };
    let lease = first.lease();
    println!(
        "{} slice(s); the first is {}:{}:{:#x}:{:#x}",
        slices.len(),
        lease.device,
        lease.bar,
        lease.offset,
        lease.length
    );
    let map = first.map()?;
    map.write_u32(offset, value)?;
    println!("read back {:#x}", map.read_u32(offset)?);
    // A revocation shows up here (and accesses then fail with Revoked).
    if let Some(reason) = first.revoked_reason() {
        println!("the lease was revoked: {reason}");
    }
    Ok(())
}
