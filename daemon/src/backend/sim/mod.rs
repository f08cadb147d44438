//! Simulated devices: BARs kept in memory, one memfd per exported slice.
//!
//! A [`SimDevice`] honours the same contract as a VFIO DMABUF export:
//!
//! * the fd handed out covers exactly the slice: its size is the slice
//!   length and mmap offset 0 is the first byte of the slice (never an fd of
//!   the whole BAR);
//! * a read-only slice is handed out as an `O_RDONLY` open file, so
//!   `mmap(PROT_WRITE, MAP_SHARED)` fails with `EACCES`;
//! * revoke truncates the memfd to 0 bytes, so existing mappings fault with
//!   `SIGBUS` on their next access, like a revoked DMABUF;
//! * peek reads what clients wrote through live slices, and poke reaches
//!   live slices.
//!
//! Where a BAR's bytes live (coherence by construction, not by copying):
//! every byte has exactly one writable home, either the BAR's store or the
//! one live read-write slice over it (read-write leases are exclusive by
//! default, so nothing else overlaps them). Read-only slices are copies of
//! the store made at grant time, and only a poke changes the store under
//! them, which writes through to every live slice it overlaps. So:
//!
//! * a grant copies from the store only, never from other live slices: its
//!   cost is the written part of its own range, whatever else is leased
//!   (4,096 overlapping read-only leases cost a new grant nothing);
//! * peek reads the store, then the live read-write slices over the range;
//! * releasing a read-write slice writes it back to the store; releasing a
//!   read-only one only truncates it (it holds what the store holds).
//!
//! Revocation a client cannot defeat:
//!
//! * the daemon keeps its own read-write open file of each slice; the client
//!   gets a separate open file description of the same memfd (reopened
//!   through `/proc/self/fd`), so file status flags it sets (`O_APPEND`,
//!   `O_NONBLOCK`) never reach the daemon's reads and writes;
//! * the seals are fixed when the slice is made: `F_SEAL_GROW` (the slice
//!   cannot grow past its lease) and `F_SEAL_SEAL` (no seal can be added
//!   after, so a client cannot add `F_SEAL_SHRINK` and make the truncating
//!   revoke fail). A client may shrink or punch its own slice: that only
//!   zeroes bytes of its lease;
//! * a slice whose truncation fails anyway (a buffer taken over from an
//!   older daemon that did not seal) stays registered: its revoke returns
//!   the error, and every later device-wide revoke tries it again and fails
//!   until it is dead, so it is never reported as cleared.
//!
//! What the simulation cannot do:
//!
//! * with a grant that makes read-write leases shared (`exclusive =
//!   false`), overlapping slices are separate memfds: a write through one
//!   is not seen through the other (nor by read-only slices granted
//!   meanwhile) until it is written back at release; a poke reaches all;
//! * `mmap` of a revoked slice still succeeds (a revoked DMABUF refuses it
//!   with `ENODEV`); only accesses fault;
//! * write-combining is accepted and has no effect;
//! * it is not a security boundary: the client's fd is a memfd, and a
//!   process running as the daemon's user (or root) can reopen it read-write
//!   through /proc. The memfd is made mode 0600 so other users cannot;
//! * BAR contents start as zeros; nothing reacts to writes the way device
//!   registers do.
//!
//! Each BAR's contents live in a memfd of its own (not in the heap), so
//! that a restart can keep them: the BAR memfds go into the fd store like a
//! VFIO device's fds, and [`SimDevice::restore`] takes them back with the
//! buffers of live slices ([`Device::adopt`]).

mod config;
pub use config::{SimBarConfig, SimConfig};

use super::{BackendError, Buffer, Device, ExportRequest, Exported, RevokeOutcome, SharedFd};
use crate::sys;
use barkeep_protocol::{Access, BackendKind, BarInfo, Capabilities, DeviceInfo, Range};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// A simulated PCI device.
pub struct SimDevice {
    info: DeviceInfo,
    state: Mutex<SimState>,
    /// Whether every BAR came from an earlier daemon's memfds.
    restored: bool,
}

struct SimState {
    /// BAR contents by index (what is not in a live slice), one memfd each.
    store: BTreeMap<u32, OwnedFd>,
    /// By BAR index, the ranges of the store that may hold data (what was
    /// ever written back or poked); the rest is known to be a hole, so a
    /// grant there copies nothing and asks the kernel nothing.
    written: BTreeMap<u32, Extents>,
    /// Live slices by token; later tokens win where slices overlap.
    slices: BTreeMap<u64, LiveSlice>,
    /// The live slices by (bar, offset, token), to find those overlapping
    /// a range without looking at every one (a poke writes through them).
    by_offset: BTreeSet<(u32, u64, u64)>,
    /// The same for the read-write slices only: the ones holding bytes the
    /// store does not (a peek reads through them).
    rw_by_offset: BTreeSet<(u32, u64, u64)>,
    /// The longest slice ever live: one overlapping a range starts at most
    /// this far before it.
    longest: u64,
    next_token: u64,
}

struct LiveSlice {
    bar: u32,
    range: Range,
    /// Read-write slices hold bytes the store does not.
    access: Access,
    /// The device's own read-write open file of the memfd (never the
    /// client's).
    fd: SharedFd,
}

const CAPABILITIES: Capabilities = Capabilities {
    export: true,
    mmap: true,
    revoke: true,
    write_combining: true,
    device_revoke: true,
};

impl SimDevice {
    /// Creates a simulated device from its (already validated) configuration.
    pub fn new(name: &str, config: &SimConfig) -> SimDevice {
        SimDevice::restore(name, config, BTreeMap::new())
    }

    /// Creates a simulated device whose BAR contents are the memfds in
    /// `bars` (by BAR index, from an earlier daemon); BARs without one (or
    /// with one of the wrong size) start as zeros.
    pub fn restore(name: &str, config: &SimConfig, mut kept: BTreeMap<u32, OwnedFd>) -> SimDevice {
        let bars = config
            .bars
            .iter()
            .map(|b| BarInfo {
                index: b.index,
                size: b.size,
                readable: true,
                writable: true,
                mmap: true,
                mappable: if b.mappable.is_empty() {
                    vec![Range::new(0, b.size)]
                } else {
                    b.mappable.clone()
                },
                reserved: b.reserved.clone(),
            })
            .collect();
        let mut store = BTreeMap::new();
        let mut written = BTreeMap::new();
        let mut problem = None;
        let mut restored = !config.bars.is_empty();
        for b in &config.bars {
            let old = kept
                .remove(&b.index)
                .filter(|fd| sys::file_size(fd.as_fd()) == Ok(b.size));
            restored &= old.is_some();
            let mut extents = Extents::default();
            let fd = match old {
                Some(fd) => {
                    // An earlier daemon's bytes: anything may be written.
                    extents.insert(0, b.size);
                    fd
                }
                None => match sys::memfd(&format!("bk-sim:{name}:bar{}", b.index), b.size) {
                    Ok(fd) => fd,
                    Err(e) => {
                        problem = Some(format!(
                            "cannot create the memfd of simulated bar {}: {e}",
                            b.index
                        ));
                        continue;
                    }
                },
            };
            store.insert(b.index, fd);
            written.insert(b.index, extents);
        }
        SimDevice {
            info: DeviceInfo {
                name: name.to_string(),
                backend: BackendKind::Sim,
                pci: None,
                ownership: "sim".to_string(),
                bars,
                capabilities: CAPABILITIES,
                problem,
            },
            state: Mutex::new(SimState {
                store,
                written,
                slices: BTreeMap::new(),
                by_offset: BTreeSet::new(),
                rw_by_offset: BTreeSet::new(),
                longest: 0,
                next_token: 1,
            }),
            restored,
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        // A panic elsewhere must not make the device unusable: the state is
        // plain bytes and a map, always consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_range(&self, bar: u32, offset: u64, len: usize) -> Result<(), BackendError> {
        let size = self
            .info
            .bars
            .iter()
            .find(|b| b.index == bar)
            .map(|b| b.size)
            .ok_or_else(|| BackendError::Invalid(format!("simulated device has no bar {bar}")))?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BackendError::Invalid(format!(
                "{:#x}+{:#x} is outside bar {bar} ({size:#x} bytes)",
                offset, len
            ))),
        }
    }
}

/// A kernel error of step `what`, which is formatted only on failure.
fn kernel<W: Into<String>>(what: impl FnOnce() -> W) -> impl FnOnce(nix::Error) -> BackendError {
    move |source| BackendError::Kernel {
        what: what().into(),
        source,
    }
}

/// The part of `[offset, offset+len)` that `slice` covers, as
/// (offset in the slice, offset in the request, length).
fn overlap(slice: Range, offset: u64, len: u64) -> Option<(u64, u64, u64)> {
    let start = slice.offset.max(offset);
    let end = (slice.offset + slice.length).min(offset + len);
    (start < end).then(|| (start - slice.offset, start - offset, end - start))
}

/// Reads up to `dst.len()` bytes of a live slice at `at`, returning how
/// many it read: a read-write client may have shrunk its memfd (it cannot
/// grow it), and bytes past the end are then not the slice's.
fn read_live(fd: &OwnedFd, dst: &mut [u8], at: u64) -> Result<usize, nix::Error> {
    let size = sys::file_size(fd.as_fd())?;
    let n = size.saturating_sub(at).min(dst.len() as u64) as usize;
    sys::pread_exact(fd.as_fd(), &mut dst[..n], at)?;
    Ok(n)
}

/// Writes what fits of `src` into a live slice at `at` (see [`read_live`]).
fn write_live(fd: &OwnedFd, src: &[u8], at: u64) -> Result<(), nix::Error> {
    let size = sys::file_size(fd.as_fd())?;
    let n = size.saturating_sub(at).min(src.len() as u64) as usize;
    sys::pwrite_all(fd.as_fd(), &src[..n], at)
}

impl SimState {
    /// Adds a live slice under a new token.
    fn add_slice(&mut self, slice: LiveSlice) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.by_offset
            .insert((slice.bar, slice.range.offset, token));
        if slice.access == Access::ReadWrite {
            self.rw_by_offset
                .insert((slice.bar, slice.range.offset, token));
        }
        self.longest = self.longest.max(slice.range.length);
        self.slices.insert(token, slice);
        token
    }

    fn remove_slice(&mut self, token: u64) -> Option<LiveSlice> {
        let slice = self.slices.remove(&token)?;
        self.by_offset
            .remove(&(slice.bar, slice.range.offset, token));
        self.rw_by_offset
            .remove(&(slice.bar, slice.range.offset, token));
        Some(slice)
    }

    /// The live slices of `bar` overlapping `len` bytes at `offset` (only
    /// the read-write ones if `rw_only`), oldest first (later ones win
    /// where they overlap each other).
    fn overlapping(&self, bar: u32, offset: u64, len: u64, rw_only: bool) -> Vec<&LiveSlice> {
        let from = (bar, offset.saturating_sub(self.longest), 0);
        let to = (bar, offset.saturating_add(len), 0);
        let index = if rw_only {
            &self.rw_by_offset
        } else {
            &self.by_offset
        };
        let mut tokens: Vec<u64> = index.range(from..to).map(|&(_, _, token)| token).collect();
        tokens.sort_unstable();
        tokens
            .iter()
            .filter_map(|t| self.slices.get(t))
            .filter(|s| overlap(s.range, offset, len).is_some())
            .collect()
    }

    fn bar(&self, bar: u32) -> Result<&OwnedFd, BackendError> {
        self.store
            .get(&bar)
            .ok_or_else(|| BackendError::Invalid(format!("no bar {bar}")))
    }

    /// The ranges of `bar`'s store that may hold data.
    fn written(&mut self, bar: u32) -> &mut Extents {
        self.written.entry(bar).or_default()
    }

    /// Copies a live read-write slice's content back into the BAR store.
    fn write_back(&mut self, slice: &LiveSlice) -> Result<(), BackendError> {
        let what = || format!("reading back simulated slice {}", slice.range);
        let (at, len) = (slice.range.offset, slice.range.length);
        // One lseek(SEEK_DATA) answers the common case: a slice nobody
        // wrote (or shrank to nothing) holds only zeros.
        if sys::is_hole(slice.fd.as_fd(), 0, len).map_err(kernel(what))? {
            // The store's range becomes zeros too: punch it only if it may
            // hold data, and then it no longer does.
            if self.written(slice.bar).intersects(at, at + len) {
                let store = self.bar(slice.bar)?;
                sys::punch_hole(store.as_fd(), at, len).map_err(kernel(what))?;
                self.written(slice.bar).remove(at, at + len);
            }
            return Ok(());
        }
        let store = self.bar(slice.bar)?;
        // What the slice still has (a read-write client may have shrunk it).
        let size = sys::file_size(slice.fd.as_fd()).map_err(kernel(what))?;
        let n = size.min(len);
        let mut buf = vec![0u8; n as usize];
        sys::pread_exact(slice.fd.as_fd(), &mut buf, 0).map_err(kernel(what))?;
        sys::pwrite_all(store.as_fd(), &buf, at).map_err(kernel(what))?;
        self.written(slice.bar).insert(at, at + n);
        Ok(())
    }

    /// Kills a live slice: writes a read-write one back, then truncates it
    /// to nothing. A slice that cannot be truncated stays registered (and
    /// the error is returned), so that a device-wide revoke tries it again
    /// and fails rather than calling it cleared.
    fn revoke_token(&mut self, token: u64) -> Result<RevokeOutcome, BackendError> {
        let Some(slice) = self.slices.get(&token) else {
            // Already revoked (e.g. by revoke_all): nothing lives.
            return Ok(RevokeOutcome::Dead);
        };
        let slice = LiveSlice {
            bar: slice.bar,
            range: slice.range,
            access: slice.access,
            fd: slice.fd.clone(),
        };
        // A read-only slice holds what the store holds.
        let saved = match slice.access {
            Access::ReadWrite => self.write_back(&slice),
            Access::ReadOnly => Ok(()),
        };
        // Truncate even if the read-back failed: the contract is that the
        // client's mappings are dead after revoke.
        sys::ftruncate(slice.fd.as_fd(), 0).map_err(kernel(|| {
            format!(
                "truncating simulated slice {} (its mappings stay live)",
                slice.range
            )
        }))?;
        self.remove_slice(token);
        if let Err(e) = saved {
            // The buffer is dead, which is what revoke promises; what its
            // holder wrote did not reach the bar.
            tracing::error!(
                "simulated slice {} revoked, but its bytes were lost: {e}",
                slice.range
            );
        }
        Ok(RevokeOutcome::Dead)
    }
}

impl Device for SimDevice {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "simulated device: one memfd per slice; not a security boundary".to_string(),
            "write-combining is accepted and has no effect".to_string(),
        ]
    }

    fn export(&self, req: &ExportRequest) -> Result<Exported, BackendError> {
        let len = usize::try_from(req.range.length)
            .map_err(|_| BackendError::Invalid(format!("slice {} is too large", req.range)))?;
        self.check_range(req.bar, req.range.offset, len)?;
        if req.range.length == 0 {
            return Err(BackendError::Invalid("zero-length slice".to_string()));
        }
        let what = |step: &'static str| {
            move || format!("{step} for simulated slice {} ({})", req.range, req.name)
        };
        let fd = sys::memfd(&req.name, req.range.length).map_err(kernel(what("memfd_create")))?;
        // Only the owner (the daemon's user) may reopen the memfd through
        // /proc; that is what keeps a read-only fd read-only for others.
        sys::fchmod(fd.as_fd(), 0o600).map_err(kernel(what("fchmod")))?;

        let mut state = self.state();
        let (start, end) = (req.range.offset, req.range.offset + req.range.length);
        if state.written(req.bar).intersects(start, end) {
            // A fresh memfd reads as zeros: copy only a range that may hold
            // data (a never-written range costs no page on either side,
            // as a BAR costs no memory when exported).
            let store = state.bar(req.bar)?;
            let hole = sys::is_hole(store.as_fd(), req.range.offset, req.range.length)
                .map_err(kernel(what("reading the bar")))?;
            if !hole {
                let mut bytes = vec![0u8; len];
                sys::pread_exact(store.as_fd(), &mut bytes, req.range.offset)
                    .map_err(kernel(what("reading the bar")))?;
                sys::pwrite_all(fd.as_fd(), &bytes, 0).map_err(kernel(what("filling")))?;
            }
        }
        // Nothing is copied from live slices: the store holds every byte
        // that no live read-write slice holds, and a read-write slice
        // overlaps nothing unless its grant says `exclusive = false` (see
        // the module doc).
        sys::seal_grow_for_good(fd.as_fd()).map_err(kernel(what("F_SEAL_GROW | F_SEAL_SEAL")))?;

        // The client's own open file: nothing it does to it (O_APPEND,
        // O_NONBLOCK) reaches the daemon's.
        let client_fd = Arc::new(match req.access {
            Access::ReadWrite => {
                sys::reopen_read_write(fd.as_fd()).map_err(kernel(what("reopen O_RDWR")))?
            }
            Access::ReadOnly => {
                sys::reopen_read_only(fd.as_fd()).map_err(kernel(what("reopen O_RDONLY")))?
            }
        });
        let fd: SharedFd = Arc::new(fd);
        let token = state.add_slice(LiveSlice {
            bar: req.bar,
            range: req.range,
            access: req.access,
            fd: fd.clone(),
        });
        Ok(Exported {
            buffer: Buffer { fd, token },
            client_fd,
        })
    }

    fn revoke(&self, buffer: Buffer) -> Result<RevokeOutcome, BackendError> {
        self.state().revoke_token(buffer.token)
    }

    fn revoke_all(&self) -> Result<(), BackendError> {
        let mut state = self.state();
        let tokens: Vec<u64> = state.slices.keys().copied().collect();
        let mut first_err = None;
        for token in tokens {
            if let Err(e) = state.revoke_token(token) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn peek(&self, bar: u32, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.check_range(bar, offset, out.len())?;
        let state = self.state();
        sys::pread_exact(state.bar(bar)?.as_fd(), out, offset)
            .map_err(kernel(|| format!("peek of simulated bar {bar}")))?;
        for s in state.overlapping(bar, offset, out.len() as u64, true) {
            if let Some((in_slice, in_out, n)) = overlap(s.range, offset, out.len() as u64) {
                let dst = &mut out[in_out as usize..(in_out + n) as usize];
                read_live(&s.fd, dst, in_slice).map_err(kernel(|| {
                    format!("peek through simulated slice {}", s.range)
                }))?;
            }
        }
        Ok(())
    }

    fn poke(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.check_range(bar, offset, data.len())?;
        let mut state = self.state();
        sys::pwrite_all(state.bar(bar)?.as_fd(), data, offset)
            .map_err(kernel(|| format!("poke of simulated bar {bar}")))?;
        state
            .written(bar)
            .insert(offset, offset + data.len() as u64);
        for s in state.overlapping(bar, offset, data.len() as u64, false) {
            if let Some((in_slice, in_data, n)) = overlap(s.range, offset, data.len() as u64) {
                let src = &data[in_data as usize..(in_data + n) as usize];
                write_live(&s.fd, src, in_slice).map_err(kernel(|| {
                    format!("poke through simulated slice {}", s.range)
                }))?;
            }
        }
        Ok(())
    }
}

impl crate::backend::Restart for SimDevice {
    fn restored(&self) -> bool {
        self.restored
    }

    fn revoke_unknown(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<RevokeOutcome, BackendError> {
        use std::os::fd::AsRawFd;
        // A memfd named like a slice (`bk:...`): which simulated device's
        // does not matter, truncating it kills it either way.
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !link.starts_with("/memfd:bk:") {
            return Err(BackendError::Invalid(format!(
                "{link} is not a buffer of simulated device {}",
                self.info.name
            )));
        }
        sys::ftruncate(fd, 0).map_err(kernel(|| "truncating an unrecorded simulated slice"))?;
        Ok(RevokeOutcome::Dead)
    }

    fn kernel_fds(&self) -> Vec<(String, OwnedFd)> {
        let state = self.state();
        state
            .store
            .iter()
            .filter_map(|(index, fd)| Some((format!("bar{index}"), fd.try_clone().ok()?)))
            .collect()
    }

    fn adopt(&self, req: &ExportRequest, fd: OwnedFd) -> Result<Buffer, BackendError> {
        self.check_range(req.bar, req.range.offset, req.range.length as usize)?;
        let size = sys::file_size(fd.as_fd())
            .map_err(kernel(|| format!("fstat of restored slice {}", req.range)))?;
        if size != req.range.length {
            return Err(BackendError::Invalid(format!(
                "restored buffer of slice {} has {size:#x} bytes, not {:#x}: it is not this lease's",
                req.range, req.range.length
            )));
        }
        // An older daemon may have left the seals open: close them now if
        // they still are (this fails harmlessly once F_SEAL_SEAL is set).
        let _ = sys::seal_grow_for_good(fd.as_fd());
        let fd: SharedFd = Arc::new(fd);
        let mut state = self.state();
        let token = state.add_slice(LiveSlice {
            bar: req.bar,
            range: req.range,
            access: req.access,
            fd: fd.clone(),
        });
        Ok(Buffer { fd, token })
    }
}

/// A set of byte ranges, kept merged: where a simulated BAR's store may
/// hold data.
#[derive(Debug, Default)]
struct Extents {
    /// start -> end, disjoint and not touching.
    ranges: BTreeMap<u64, u64>,
}

impl Extents {
    /// Adds `[start, end)`.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Absorb every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Removes `[start, end)`.
    fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|&(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
        }
    }

    /// Whether any of `[start, end)` is in the set.
    fn intersects(&self, start: u64, end: u64) -> bool {
        start < end
            && self
                .ranges
                .range(..end)
                .next_back()
                .is_some_and(|(_, &e)| e > start)
    }
}

// The tests map buffers and fork a child to watch them.
#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::SimBarConfig;
    use super::*;
    use crate::backend::Restart;
    use barkeep_protocol::MemAttr;
    use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
    use std::num::NonZeroUsize;

    fn device() -> SimDevice {
        SimDevice::new(
            "sim0",
            &SimConfig {
                bars: vec![SimBarConfig {
                    index: 0,
                    size: 0x10000,
                    mappable: vec![],
                    reserved: vec![],
                }],
            },
        )
    }

    fn export(dev: &SimDevice, offset: u64, length: u64, access: Access) -> Exported {
        let range = Range::new(offset, length);
        dev.export(&ExportRequest {
            bar: 0,
            range,
            access,
            memattr: MemAttr::Uncached,
            name: super::super::buffer_name("sim0", 0, range),
        })
        .unwrap()
    }

    #[test]
    fn exported_fd_is_exactly_the_slice() {
        let dev = device();
        dev.poke(0, 0x2000, b"start").unwrap();
        dev.poke(0, 0x2ffc, b"end!").unwrap();
        let ex = export(&dev, 0x2000, 0x1000, Access::ReadWrite);
        assert_eq!(sys::file_size(ex.client_fd.as_fd()).unwrap(), 0x1000);
        let mut buf = [0u8; 5];
        sys::pread_exact(ex.client_fd.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(
            &buf, b"start",
            "offset 0 of the fd is the first byte of the slice"
        );
        let mut end = [0u8; 4];
        sys::pread_exact(ex.client_fd.as_fd(), &mut end, 0xffc).unwrap();
        assert_eq!(&end, b"end!");
        // The client cannot grow its slice.
        assert!(sys::ftruncate(ex.client_fd.as_fd(), 0x2000).is_err());
    }

    #[test]
    fn the_memfd_carries_the_buffer_name() {
        let dev = device();
        let ex = export(&dev, 0x1000, 0x1000, Access::ReadWrite);
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&ex.client_fd)
        ))
        .unwrap();
        assert_eq!(
            link.to_string_lossy(),
            "/memfd:bk:sim0:b0:1000+1000 (deleted)"
        );
    }

    #[test]
    fn peek_sees_client_writes_and_poke_reaches_live_slices() {
        let dev = device();
        let ex = export(&dev, 0x3000, 0x2000, Access::ReadWrite);
        sys::pwrite_all(ex.client_fd.as_fd(), &[0xde, 0xad, 0xbe, 0xef], 0x10).unwrap();
        let mut out = [0u8; 4];
        dev.peek(0, 0x3010, &mut out).unwrap();
        assert_eq!(out, [0xde, 0xad, 0xbe, 0xef]);

        dev.poke(0, 0x4000, &[1, 2, 3]).unwrap();
        let mut got = [0u8; 3];
        sys::pread_exact(ex.client_fd.as_fd(), &mut got, 0x1000).unwrap();
        assert_eq!(got, [1, 2, 3]);

        // A peek straddling the slice's start mixes store and slice bytes.
        dev.poke(0, 0x2fff, &[9]).unwrap();
        let mut two = [0u8; 2];
        sys::pread_exact(ex.client_fd.as_fd(), &mut two[..1], 0).unwrap();
        dev.peek(0, 0x2fff, &mut two).unwrap();
        assert_eq!(two, [9, 0]);
    }

    #[test]
    fn revoke_keeps_the_bytes_and_kills_the_buffer() {
        let dev = device();
        let ex = export(&dev, 0x1000, 0x1000, Access::ReadWrite);
        sys::pwrite_all(ex.client_fd.as_fd(), b"kept", 0).unwrap();
        assert_eq!(dev.revoke(ex.buffer).unwrap(), RevokeOutcome::Dead);
        // Size 0: every page of an existing mapping now faults with SIGBUS.
        assert_eq!(sys::file_size(ex.client_fd.as_fd()).unwrap(), 0);
        let mut out = [0u8; 4];
        dev.peek(0, 0x1000, &mut out).unwrap();
        assert_eq!(&out, b"kept");
        // A new slice starts from what the old one left.
        let again = export(&dev, 0x1000, 0x1000, Access::ReadOnly);
        let mut buf = [0u8; 4];
        sys::pread_exact(again.client_fd.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf, b"kept");
    }

    #[test]
    fn slices_nobody_wrote_cost_no_memory_and_zeroed_slices_zero_the_bar() {
        let dev = device();
        let store_hole = |at, len| {
            let st = dev.state();
            sys::is_hole(st.bar(0).unwrap().as_fd(), at, len).unwrap()
        };
        // Never written: no page on either side, before or after revoke.
        let ex = export(&dev, 0x5000, 0x1000, Access::ReadWrite);
        assert!(sys::is_hole(ex.client_fd.as_fd(), 0, 0x1000).unwrap());
        assert_eq!(dev.revoke(ex.buffer).unwrap(), RevokeOutcome::Dead);
        assert!(store_hole(0x5000, 0x1000));
        // A slice of bytes the bar holds starts with them; once its client
        // zeroes them (here by punching), the bar holds zeros again.
        dev.poke(0, 0x3000, b"old").unwrap();
        let ex = export(&dev, 0x3000, 0x1000, Access::ReadWrite);
        let mut buf = [0u8; 3];
        sys::pread_exact(ex.client_fd.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf, b"old");
        sys::punch_hole(ex.client_fd.as_fd(), 0, 0x1000).unwrap();
        assert_eq!(dev.revoke(ex.buffer).unwrap(), RevokeOutcome::Dead);
        dev.peek(0, 0x3000, &mut buf).unwrap();
        assert_eq!(buf, [0; 3]);
        assert!(store_hole(0x3000, 0x1000));
    }

    #[test]
    fn a_client_shrinking_its_slice_does_not_break_the_device() {
        let dev = device();
        let ex = export(&dev, 0x1000, 0x2000, Access::ReadWrite);
        sys::pwrite_all(ex.client_fd.as_fd(), b"ab", 0).unwrap();
        sys::ftruncate(ex.client_fd.as_fd(), 1).unwrap();
        dev.poke(0, 0x1000, b"xyz").unwrap();
        let mut out = [0u8; 3];
        dev.peek(0, 0x1000, &mut out).unwrap();
        assert_eq!(&out, b"xyz");
        assert_eq!(dev.revoke(ex.buffer).unwrap(), RevokeOutcome::Dead);
        dev.peek(0, 0x1000, &mut out).unwrap();
        assert_eq!(&out, b"xyz");
    }

    /// Adds seals through `fd` as a client would; the error if refused.
    fn add_seals(fd: std::os::fd::BorrowedFd<'_>, seals: nix::fcntl::SealFlag) -> nix::Result<()> {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_ADD_SEALS(seals)).map(drop)
    }

    #[test]
    fn a_read_write_client_cannot_stop_its_revoke() {
        use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
        let dev = device();
        let ex = export(&dev, 0x1000, 0x2000, Access::ReadWrite);
        let client = ex.client_fd.as_fd();
        // The seals were fixed when the slice was made.
        for seal in [
            SealFlag::F_SEAL_SHRINK,
            SealFlag::F_SEAL_WRITE,
            SealFlag::F_SEAL_FUTURE_WRITE,
        ] {
            assert_eq!(add_seals(client, seal), Err(nix::Error::EPERM), "{seal:?}");
        }
        // Its status flags are its own: O_APPEND does not make the
        // daemon's writes append.
        fcntl(client, FcntlArg::F_SETFL(OFlag::O_APPEND)).unwrap();
        dev.poke(0, 0x1800, b"poke").unwrap();
        let mut got = [0u8; 4];
        sys::pread_exact(client, &mut got, 0x800).unwrap();
        assert_eq!(&got, b"poke");
        assert_eq!(sys::file_size(client).unwrap(), 0x2000);
        let mut out = [0u8; 4];
        dev.peek(0, 0x1800, &mut out).unwrap();
        assert_eq!(&out, b"poke");
        assert_eq!(dev.revoke(ex.buffer).unwrap(), RevokeOutcome::Dead);
        assert_eq!(sys::file_size(client).unwrap(), 0);
        dev.peek(0, 0x1800, &mut out).unwrap();
        assert_eq!(&out, b"poke", "written back at revoke");
    }

    #[test]
    fn a_slice_that_cannot_be_truncated_is_never_reported_dead() {
        use nix::fcntl::SealFlag;
        // A buffer taken over from an older daemon that did not seal it,
        // and that its client sealed against shrinking.
        let dev = device();
        let range = Range::new(0x4000, 0x1000);
        let req = ExportRequest {
            bar: 0,
            range,
            access: Access::ReadWrite,
            memattr: MemAttr::Uncached,
            name: super::super::buffer_name("sim0", 0, range),
        };
        let fd = sys::memfd(&req.name, 0x1000).unwrap();
        add_seals(fd.as_fd(), SealFlag::F_SEAL_SHRINK).unwrap();
        let buffer = dev.adopt(&req, fd).unwrap();
        let mine = buffer.fd.clone();
        assert!(dev.revoke(buffer).is_err());
        assert_eq!(sys::file_size(mine.as_fd()).unwrap(), 0x1000);
        // Still registered: a device-wide revoke fails too, every time.
        assert!(dev.revoke_all().is_err());
        assert!(dev.revoke_all().is_err());
        // Other slices are revoked all the same.
        let other = export(&dev, 0x8000, 0x1000, Access::ReadOnly);
        assert!(dev.revoke_all().is_err());
        assert_eq!(sys::file_size(other.client_fd.as_fd()).unwrap(), 0);
    }

    #[test]
    fn grants_copy_nothing_from_overlapping_read_only_slices() {
        let dev = device();
        dev.poke(0, 0x2000, b"bar").unwrap();
        let held: Vec<Exported> = (0..64)
            .map(|_| export(&dev, 0x2000, 0x1000, Access::ReadOnly))
            .collect();
        // Each holds the store's bytes; the store alone fills a new one.
        let new = export(&dev, 0x1000, 0x2000, Access::ReadOnly);
        let mut got = [0u8; 3];
        sys::pread_exact(new.client_fd.as_fd(), &mut got, 0x1000).unwrap();
        assert_eq!(&got, b"bar");
        // A poke reaches them all; releasing them writes nothing back.
        dev.poke(0, 0x2001, b"A").unwrap();
        for h in &held {
            sys::pread_exact(h.client_fd.as_fd(), &mut got, 0).unwrap();
            assert_eq!(&got, b"bAr");
        }
        for h in held {
            assert_eq!(dev.revoke(h.buffer).unwrap(), RevokeOutcome::Dead);
        }
        dev.peek(0, 0x2000, &mut got).unwrap();
        assert_eq!(&got, b"bAr");
        assert_eq!(dev.state().slices.len(), 1);
        assert_eq!(dev.state().by_offset.len(), 1);
        assert!(dev.state().rw_by_offset.is_empty());
    }

    #[test]
    fn revoke_all_kills_every_slice() {
        let dev = device();
        let a = export(&dev, 0x0, 0x1000, Access::ReadWrite);
        let b = export(&dev, 0x8000, 0x2000, Access::ReadOnly);
        dev.revoke_all().unwrap();
        assert_eq!(sys::file_size(a.client_fd.as_fd()).unwrap(), 0);
        assert_eq!(sys::file_size(b.client_fd.as_fd()).unwrap(), 0);
        // Revoking a buffer that revoke_all already killed is fine.
        assert_eq!(dev.revoke(a.buffer).unwrap(), RevokeOutcome::Dead);
    }

    #[test]
    fn read_only_fd_cannot_be_mapped_writable() {
        let dev = device();
        let ex = export(&dev, 0x1000, 0x1000, Access::ReadOnly);
        let len = NonZeroUsize::new(0x1000).unwrap();
        // SAFETY: mapping a fresh file with no address hint; nothing aliases it.
        let rw = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                ex.client_fd.as_fd(),
                0,
            )
        };
        assert_eq!(rw.unwrap_err(), nix::Error::EACCES);
        // SAFETY: as above, read-only.
        let ro = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                ex.client_fd.as_fd(),
                0,
            )
        }
        .unwrap();
        // SAFETY: `ro` was mapped above with this length and is not used after.
        unsafe { munmap(ro, 0x1000) }.unwrap();
        // Writing through the read-only fd fails too.
        assert!(sys::pwrite_all(ex.client_fd.as_fd(), b"x", 0).is_err());
    }

    #[test]
    fn a_revoked_mapping_faults() {
        // Checked in a child process: the access must die with SIGBUS.
        let dev = device();
        let ex = export(&dev, 0x1000, 0x1000, Access::ReadWrite);
        let len = NonZeroUsize::new(0x1000).unwrap();
        // SAFETY: fresh shared mapping of our own memfd; only read below
        // through a volatile pointer while it is mapped.
        let map = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                ex.client_fd.as_fd(),
                0,
            )
        }
        .unwrap();
        dev.revoke(ex.buffer).unwrap();
        // SAFETY: fork in a test; the child only touches the mapping and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: the mapping is still in our address space; touching
                // it after revoke is exactly what we expect to fault.
                let v = unsafe { std::ptr::read_volatile(map.as_ptr().cast::<u8>()) };
                // SAFETY: _exit is async-signal-safe; the forked child must
                // not run the parent's exit handlers.
                unsafe { libc::_exit(i32::from(v) + 10) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert!(
                    matches!(
                        status,
                        nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::SIGBUS, _)
                    ),
                    "touching a revoked slice gave {status:?}, not SIGBUS"
                );
            }
        }
        // SAFETY: mapped above with this length.
        unsafe { munmap(map, 0x1000) }.unwrap();
    }

    #[test]
    fn extents_match_a_byte_model() {
        use proptest::prelude::*;
        // Every sequence of inserts and removes agrees with a set of bytes.
        let ops = proptest::collection::vec((any::<bool>(), 0u64..64, 0u64..64), 0..40);
        proptest!(|(ops in ops)| {
            let mut e = Extents::default();
            let mut model = [false; 64];
            for (add, a, b) in ops {
                let (start, end) = (a.min(b), a.max(b));
                if add {
                    e.insert(start, end);
                } else {
                    e.remove(start, end);
                }
                for byte in &mut model[start as usize..end as usize] {
                    *byte = add;
                }
            }
            for start in 0..64u64 {
                for end in start..=64 {
                    let any = model[start as usize..end as usize].iter().any(|&b| b);
                    prop_assert_eq!(e.intersects(start, end), any, "[{}, {})", start, end);
                }
            }
            // Kept merged: no two ranges touch.
            let ranges: Vec<_> = e.ranges.iter().collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
        });
    }

    #[test]
    fn bytes_written_back_or_poked_reach_later_grants_and_zeroing_frees_them() {
        let dev = device();
        // Written through a slice, read by a later grant of an overlapping range.
        let a = export(&dev, 0x1000, 0x2000, Access::ReadWrite);
        sys::pwrite_all(a.client_fd.as_fd(), b"back", 0x1000).unwrap();
        dev.revoke(a.buffer).unwrap();
        let b = export(&dev, 0x2000, 0x1000, Access::ReadOnly);
        let mut got = [0u8; 4];
        sys::pread_exact(b.client_fd.as_fd(), &mut got, 0).unwrap();
        assert_eq!(&got, b"back");
        dev.revoke(b.buffer).unwrap();
        // Poked, then seen by a grant.
        dev.poke(0, 0x5008, b"poke").unwrap();
        let c = export(&dev, 0x5000, 0x1000, Access::ReadWrite);
        sys::pread_exact(c.client_fd.as_fd(), &mut got, 8).unwrap();
        assert_eq!(&got, b"poke");
        // The holder zeroes its slice by truncating it to nothing... it
        // cannot grow it back, so the range reads as zeros afterwards.
        sys::ftruncate(c.client_fd.as_fd(), 0).unwrap();
        dev.revoke(c.buffer).unwrap();
        let mut bar = [0xffu8; 16];
        dev.peek(0, 0x5000, &mut bar).unwrap();
        assert_eq!(bar, [0u8; 16]);
        let d = export(&dev, 0x5000, 0x1000, Access::ReadOnly);
        sys::pread_exact(d.client_fd.as_fd(), &mut got, 8).unwrap();
        assert_eq!(got, [0u8; 4]);
    }
}
