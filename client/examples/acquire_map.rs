//! Acquire a slice of a BAR, map it, write and read through the mapping.
//!
//! ```sh
//! cargo run -p barkeep-client --example acquire_map -- sim0 0 0x10000 4096
//! ```
//!
//! Connects to `$BARKEEP_SOCKET` (else /run/barkeep/barkeep.sock); the
//! daemon's policy must grant the slice to the user running this.
//! Arguments: DEVICE BAR OFFSET LENGTH (decimal, 0x hex, K/M suffixes).
//! Prints what it wrote and read back, and exits 1 with the library's
//! explanation when the daemon refuses.

use barkeep_client::{parse_number, Access, Client, MemAttrRequest, SliceRequest};

fn main() {
    if let Err(e) = run() {
        eprintln!("acquire_map: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [device, bar, offset, length] = args.as_slice() else {
        return Err("usage: acquire_map DEVICE BAR OFFSET LENGTH".into());
    };
    let client = Client::connect_default()?;
    let slice = client.acquire(SliceRequest {
        device: device.clone(),
        bar: parse_number(bar)?.try_into()?,
        offset: parse_number(offset)?,
        length: parse_number(length)?,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::Uncached,
    })?;
    println!(
        "lease {} ({} bytes at BAR offset {:#x})",
        slice.lease().id,
        slice.lease().length,
        slice.lease().offset
    );

    // Offset 0 of the mapping is the first byte of the slice, not of the
    // BAR. Accesses are bounds- and alignment-checked volatile accesses.
    let map = slice.map()?;
    map.write_u32(0x10, 0xdead_beef)?;
    let back = map.read_u32(0x10)?;
    println!("wrote 0xdeadbeef at slice offset 0x10, read back {back:#x}");
    // An access past the slice is an error, not a fault.
    assert!(map.read_u32(map.len()).is_err());

    // Dropping the slice releases the lease (the mapping first: it borrows
    // nothing, but unmapping before releasing is the tidy order).
    drop(map);
    drop(slice);
    Ok(())
}
