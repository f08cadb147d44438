//! Random bits for lease ids and reclaim tokens: the kernel's CSPRNG
//! (getrandom), fetched a block at a time so that a grant does not make
//! two system calls for its 32 bytes. Every byte is handed out once.

use std::cell::RefCell;

/// Bytes fetched per getrandom call (32 grants' worth).
const BLOCK: usize = 1024;

struct Pool {
    bytes: [u8; BLOCK],
    /// Bytes of `bytes` not handed out yet (at its end).
    left: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            bytes: [0; BLOCK],
            left: 0,
        })
    };
}

/// 16 fresh random bytes.
pub fn bytes16() -> Result<[u8; 16], getrandom::Error> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.left < 16 {
            getrandom::fill(&mut pool.bytes)?;
            pool.left = BLOCK;
        }
        let at = BLOCK - pool.left;
        let mut out = [0u8; 16];
        out.copy_from_slice(&pool.bytes[at..at + 16]);
        // Handed out: not kept around for anyone to read again.
        pool.bytes[at..at + 16].fill(0);
        pool.left -= 16;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_draws_are_alike_across_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 * BLOCK / 16 {
            let b = bytes16().unwrap();
            assert_ne!(b, [0; 16]);
            assert!(seen.insert(b), "a repeated draw");
        }
    }
}
