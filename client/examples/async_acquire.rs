//! The async client (tokio): acquire two slices concurrently on one
//! connection, write through both, and wait for events such as a
//! revocation.
//!
//! ```sh
//! cargo run -p barkeep-client --example async_acquire -- sim0 0 0x10000
//! ```
//!
//! Arguments: DEVICE BAR OFFSET; takes the page at OFFSET and the next one.
//! Connects to `$BARKEEP_SOCKET` (else /run/barkeep/barkeep.sock).

use barkeep_client::nonblocking::AsyncClient;
use barkeep_client::{page_size, parse_number, Access, MemAttrRequest, SliceRequest};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("async_acquire: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [device, bar, offset] = args.as_slice() else {
        return Err("usage: async_acquire DEVICE BAR OFFSET".into());
    };
    let bar: u32 = parse_number(bar)?.try_into()?;
    let offset = parse_number(offset)?;
    let page = page_size();
    let request = |n: u64| SliceRequest {
        device: device.clone(),
        bar,
        offset: offset + n * page,
        length: page,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::PreferWriteCombining,
    };

    let client = AsyncClient::connect_default().await?;
    // Both requests are in flight at once; replies are matched by id.
    let (a, b) = tokio::join!(client.acquire(request(0)), client.acquire(request(1)));
    let (a, b) = (a?, b?);
    for (i, slice) in [&a, &b].into_iter().enumerate() {
        let map = slice.map()?;
        map.write_u64(0, 0x0102_0304_0506_0708 + i as u64)?;
        println!(
            "lease {} at {:#x} ({}): wrote {:#x}",
            slice.lease().id,
            slice.lease().offset,
            slice.lease().memattr.as_str(),
            map.read_u64(0)?
        );
    }

    // Events (revocations) arrive whenever the daemon sends them; here we
    // wait briefly for one before releasing.
    match tokio::time::timeout(Duration::from_millis(100), client.next_event()).await {
        Ok(event) => println!("event: {:?}", event?),
        Err(_) => println!("no event within 100 ms"),
    }
    client.release(a.lease().id).await?;
    drop(b); // dropping a slice releases its lease too
    Ok(())
}
