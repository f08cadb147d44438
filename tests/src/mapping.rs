//! Touching a slice's mapping from a test without dying of it.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

/// Reads a u32 at `addr` in a forked child, so that a revoked mapping's
/// SIGBUS kills the child and not the test: `Ok(value)` when the read
/// worked, else `Err("SIGBUS")`, `Err("signal N")` or how the child ended.
pub fn probe_in_child(addr: usize) -> Result<u32, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe() fills the two-element array we pass.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err("pipe failed".into());
    }
    // SAFETY: the child only does a volatile read, write() and _exit(), all
    // of which are safe after fork() in a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `addr` is a live mapping inherited from the parent; a
        // revoked one raises SIGBUS, which kills this child (the point).
        let v = unsafe { std::ptr::read_volatile(addr as *const u32) };
        let b = v.to_le_bytes();
        // SAFETY: writing 4 bytes from a local array to our pipe, then exiting.
        unsafe {
            libc::write(fds[1], b.as_ptr().cast(), 4);
            libc::_exit(0);
        }
    }
    // SAFETY: closing the write end we own; the child has its own copy.
    unsafe { libc::close(fds[1]) };
    // SAFETY: fds[0] is the read end we own; OwnedFd closes it once.
    let mut rd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let mut b = [0u8; 4];
    let got = rd.read_exact(&mut b).is_ok();
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        return Err(if sig == libc::SIGBUS {
            "SIGBUS".into()
        } else {
            format!("signal {sig}")
        });
    }
    if got {
        Ok(u32::from_le_bytes(b))
    } else {
        Err(format!("child exited with status {status:#x}"))
    }
}
