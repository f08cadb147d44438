//! A VFIO PCI device as a [`Device`]: opening and describing it, probing
//! what its kernel can do, exporting slices as DMABUFs, revoking them, and
//! BAR peek/poke through the device fd.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use barkeep_protocol::{Access, BackendKind, BarInfo, Capabilities, DeviceInfo, MemAttr, Range};
use nix::errno::Errno;
use nix::sys::uio::{pread, pwrite};

use super::error::{Malformed, SetupError};
use super::owner::{self, Owner};
use super::probe::{self, export_one, revoke_one, set_memattr};
use super::regions::{self, Region};
use super::sysfs::PciDevice;
use super::uapi;
use super::{FeatureNumbers, VfioOptions};
use crate::backend::{BackendError, Buffer, Device, ExportRequest, Exported, RevokeOutcome};

/// What can change at run time: the owned device (gone after a failed
/// reopen) and the reason it is unusable.
struct State {
    owner: Option<Owner>,
    problem: Option<String>,
    /// Bumped by every device-wide revoke; buffers of older generations are dead.
    generation: u32,
}

/// A real VFIO PCI device.
pub struct VfioDevice {
    name: String,
    pci: String,
    ownership: String,
    features: FeatureNumbers,
    page: u64,
    bars: Vec<BarInfo>,
    /// Region info for each present BAR (same order as `bars`).
    regions: Vec<(u32, Region)>,
    caps: Capabilities,
    notes: Vec<String>,
    state: RwLock<State>,
    next_buffer: AtomicU64,
    /// Whether it was taken over from stored fds (not opened anew).
    restored: bool,
}

/// The fds an earlier daemon owned a device with (see
/// [`Owner::from_fds`]), and the IOAS id of the cdev path.
#[derive(Debug, Default)]
pub struct StoredOwner {
    /// Fds by kind: "container", "group", "device", "iommufd".
    pub fds: std::collections::BTreeMap<String, OwnedFd>,
    /// The IOAS the device is attached to (cdev path).
    pub ioas: Option<u32>,
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

fn kernel(what: impl Into<String>) -> impl FnOnce(Errno) -> BackendError {
    let what = what.into();
    move |source| BackendError::Kernel { what, source }
}

impl VfioDevice {
    /// Opens and probes the device at `opts.pci`, with sysfs at `sysfs` and
    /// device nodes under `devfs`. Never fails: see [`super::open`].
    pub fn open_at(name: &str, opts: &VfioOptions, sysfs: &Path, devfs: &Path) -> VfioDevice {
        VfioDevice::restore_at(name, opts, sysfs, devfs, None)
    }

    /// Like [`VfioDevice::open_at`], taking the device over from `stored`
    /// fds when given (a restart): nothing is reopened, so the buffers an
    /// earlier daemon exported stay alive. Falls back to opening the device
    /// when the stored fds are unusable.
    pub fn restore_at(
        name: &str,
        opts: &VfioOptions,
        sysfs: &Path,
        devfs: &Path,
        stored: Option<StoredOwner>,
    ) -> VfioDevice {
        let mut dev = VfioDevice {
            name: name.to_string(),
            pci: opts.pci.clone(),
            ownership: "none".to_string(),
            features: opts.features,
            page: page_size(),
            bars: Vec::new(),
            regions: Vec::new(),
            caps: Capabilities::default(),
            notes: Vec::new(),
            state: RwLock::new(State {
                owner: None,
                problem: None,
                generation: 0,
            }),
            next_buffer: AtomicU64::new(1),
            restored: false,
        };
        let problem = dev
            .setup(opts, sysfs, devfs, stored)
            .err()
            .map(|e| e.to_string());
        if let Some(p) = &problem {
            tracing::error!(device = name, pci = %opts.pci, "unusable: {p}");
            dev.caps = Capabilities::default();
        }
        dev.state
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .problem = problem;
        dev
    }

    fn note(&mut self, note: String) {
        tracing::info!(device = %self.name, "{note}");
        self.notes.push(note);
    }

    /// Everything `open_at` does; an `Err` becomes the device's problem.
    fn setup(
        &mut self,
        opts: &VfioOptions,
        sysfs: &Path,
        devfs: &Path,
        stored: Option<StoredOwner>,
    ) -> Result<(), SetupError> {
        let pci = PciDevice::find(sysfs, &opts.pci)?;
        self.pci = pci.bdf.clone();
        pci.ensure_vfio_pci(opts.bind)?;
        let method = owner::choose(&pci, devfs, opts.ownership, opts.noiommu)?;
        let restored = stored.and_then(|mut s| {
            match Owner::from_fds(&pci.bdf, &method, &mut s.fds, s.ioas, devfs) {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::warn!(device = %self.name, "cannot take the device over from its stored fds ({e}); opening it anew, which revokes the buffers of the previous daemon");
                    None
                }
            }
        });
        self.restored = restored.is_some();
        let owner = match restored {
            Some(o) => o,
            None => Owner::open(devfs, &pci.bdf, &method)?,
        };
        if self.restored {
            self.note("restored: taken over from the previous daemon's fds (buffers kept)".into());
        }
        self.ownership = method.label().to_string();
        self.note(format!("ownership: {method}"));
        if matches!(method, owner::Method::Group { noiommu: true, .. }) {
            self.note("WARNING: no-IOMMU mode, the device can DMA anywhere in memory".into());
        }

        let info = uapi::device_get_info(owner.device.as_fd())
            .map_err(SetupError::ioctl("VFIO_DEVICE_GET_INFO"))?;
        if info.flags & uapi::VFIO_DEVICE_FLAGS_PCI == 0
            || info.num_regions <= uapi::VFIO_PCI_CONFIG_REGION_INDEX
        {
            return Err(SetupError::NotPci {
                bdf: pci.bdf,
                flags: info.flags,
            });
        }
        self.describe_bars(owner.device.as_fd())?;
        let probed = probe::probe(
            &probe::Vfio(owner.device.as_fd()),
            self.features,
            &self.bars,
            self.page,
        );
        self.caps = probed.caps;
        self.features = probed.features;
        for n in probed.notes {
            self.note(n);
        }
        self.state
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .owner = Some(owner);
        match probed.problem {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Reads config space and every BAR's region info: `self.bars` and
    /// `self.regions`, with a note per BAR and for the MSI-X table.
    fn describe_bars(&mut self, device: BorrowedFd<'_>) -> Result<(), SetupError> {
        let cfg_region = regions::region(device, uapi::VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut config = vec![0u8; cfg_region.info.size.min(256) as usize];
        let n = pread(device, &mut config, cfg_region.info.offset as i64)
            .map_err(SetupError::Config)?;
        config.truncate(n);
        let msix = regions::parse_msix(&config).map_err(|e| Malformed::NoMsixPlace(Box::new(e)))?;
        if let Some(m) = &msix {
            self.note(format!(
                "MSI-X: {} vectors, table in bar {} at {:#x}, PBA in bar {} at {:#x} (never granted)",
                m.entries, m.table_bar, m.table_offset, m.pba_bar, m.pba_offset
            ));
        }
        for index in 0..=uapi::VFIO_PCI_BAR5_REGION_INDEX {
            let region = match regions::region(device, index) {
                Ok(r) => r,
                Err(e) => {
                    self.note(format!("bar {index}: skipped ({e})"));
                    continue;
                }
            };
            let Some(bar) = regions::bar_info(index, &region, &config, msix.as_ref(), self.page)
            else {
                continue;
            };
            let areas: Vec<String> = bar.mappable.iter().map(Range::to_string).collect();
            let reserved: Vec<String> = bar
                .reserved
                .iter()
                .map(|r| format!("{} {}", r.range, r.what))
                .collect();
            self.note(format!(
                "bar {index}: {:#x} bytes, {}{}, mappable [{}]{}{}",
                bar.size,
                if bar.readable { "r" } else { "-" },
                if bar.writable { "w" } else { "-" },
                areas.join(", "),
                if region.msix_mappable {
                    ", MSI-X mappable"
                } else {
                    ""
                },
                if reserved.is_empty() {
                    String::new()
                } else {
                    format!(", reserved [{}]", reserved.join(", "))
                },
            ));
            self.regions.push((index, region));
            self.bars.push(bar);
        }
        Ok(())
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn region(&self, bar: u32) -> Result<(&BarInfo, &Region), BackendError> {
        let b = self.bars.iter().find(|b| b.index == bar);
        let r = self.regions.iter().find(|(i, _)| *i == bar).map(|(_, r)| r);
        match (b, r) {
            (Some(b), Some(r)) => Ok((b, r)),
            _ => Err(BackendError::Invalid(format!(
                "device {} has no memory BAR {bar}",
                self.name
            ))),
        }
    }

    fn usable<'a>(&self, state: &'a State) -> Result<&'a Owner, BackendError> {
        match (&state.owner, &state.problem) {
            (Some(o), None) => Ok(o),
            (Some(_), Some(p)) => Err(BackendError::Unsupported(format!(
                "device {}: {p}",
                self.name
            ))),
            (None, p) => Err(BackendError::Unavailable(format!(
                "device {}: {}",
                self.name,
                p.as_deref().unwrap_or("not open")
            ))),
        }
    }

    /// The owner for peek/poke: works even when exports are refused.
    fn owned<'a>(&self, state: &'a State) -> Result<&'a Owner, BackendError> {
        state.owner.as_ref().ok_or_else(|| {
            BackendError::Unavailable(format!(
                "device {}: {}",
                self.name,
                state.problem.as_deref().unwrap_or("not open")
            ))
        })
    }

    fn io_range(
        &self,
        bar: u32,
        offset: u64,
        len: usize,
        write: bool,
    ) -> Result<i64, BackendError> {
        let (b, r) = self.region(bar)?;
        let ok = if write { b.writable } else { b.readable };
        if !ok {
            return Err(BackendError::Unsupported(format!(
                "bar {bar} of {} cannot be {} through VFIO",
                self.name,
                if write { "written" } else { "read" }
            )));
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= b.size => {}
            _ => {
                return Err(BackendError::Invalid(format!(
                    "{offset:#x}+{len:#x} is past the end of bar {bar} ({:#x} bytes)",
                    b.size
                )))
            }
        }
        i64::try_from(r.info.offset + offset)
            .map_err(|_| BackendError::Invalid(format!("offset {offset:#x} is out of range")))
    }
}

/// The part of `name` the kernel keeps (DMA_BUF_NAME_LEN with its NUL), cut
/// at a character boundary.
fn kernel_name(name: &str) -> &str {
    let mut end = name.len().min(uapi::DMA_BUF_NAME_LEN - 1);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Whether `len` bytes at `offset` make one naturally aligned access.
fn single_access(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8) && offset % len as u64 == 0
}

impl Device for VfioDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: self.name.clone(),
            backend: BackendKind::Vfio,
            pci: Some(self.pci.clone()),
            ownership: self.ownership.clone(),
            bars: self.bars.clone(),
            capabilities: self.capabilities(),
            problem: self.state().problem.clone(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        if self.state().owner.is_none() {
            return Capabilities::default();
        }
        self.caps
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn export(&self, req: &ExportRequest) -> Result<Exported, BackendError> {
        let state = self.state();
        let owner = self.usable(&state)?;
        if !self.caps.export {
            return Err(BackendError::Unsupported(SetupError::NoDmaBuf.to_string()));
        }
        let (bar, _) = self.region(req.bar)?;
        let r = req.range;
        let aligned = r.offset % self.page == 0 && r.length % self.page == 0 && r.length > 0;
        if !aligned || r.end().is_none_or(|e| e > bar.size) {
            return Err(BackendError::Invalid(format!(
                "slice {r} of bar {} is not page aligned (page size {}) or not inside the bar ({:#x} bytes)",
                req.bar, self.page, bar.size
            )));
        }
        let wc = req.memattr == MemAttr::WriteCombining;
        if wc && !self.caps.write_combining {
            return Err(BackendError::Unsupported(format!(
                "write-combining needs the proposed VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR (feature {}), which this kernel lacks",
                self.features.memattr
            )));
        }
        let access = match req.access {
            Access::ReadOnly => libc::O_RDONLY,
            Access::ReadWrite => libc::O_RDWR,
        };
        let what = format!(
            "VFIO_DEVICE_FEATURE_DMA_BUF export of bar {} {r} ({})",
            req.bar, req.access
        );
        let fd = export_one(
            owner.device.as_fd(),
            self.features.dma_buf,
            req.bar,
            r,
            access,
        )
        .map_err(kernel(what))?;
        match CString::new(kernel_name(&req.name)) {
            Ok(c) => {
                if let Err(e) = uapi::dma_buf_set_name(&fd, &c) {
                    // The name only makes /proc/PID/maps readable; the slice is still right.
                    tracing::warn!(device = %self.name, "DMA_BUF_SET_NAME {c:?}: {}", e.desc());
                }
            }
            Err(_) => {
                tracing::warn!(device = %self.name, "buffer name {:?} contains a NUL; left unnamed", req.name)
            }
        }
        if wc {
            set_memattr(
                owner.device.as_fd(),
                self.features.memattr,
                fd.as_fd(),
                uapi::DMA_BUF_MEMATTR_WC,
            )
            .map_err(kernel(format!(
                "VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR (feature {}) WC on bar {} {r}",
                self.features.memattr, req.bar
            )))?;
        }
        // The lease table's reference and the client's are the same open
        // file (the client gets the access mode it asked for): no dup.
        let fd = std::sync::Arc::new(fd);
        let seq = self.next_buffer.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        Ok(Exported {
            buffer: Buffer {
                fd: fd.clone(),
                token: (u64::from(state.generation) << 32) | seq,
            },
            client_fd: fd,
        })
    }

    fn revoke(&self, buffer: Buffer) -> Result<RevokeOutcome, BackendError> {
        if !self.caps.revoke {
            return Ok(RevokeOutcome::MayLinger);
        }
        let state = self.state();
        let Some(owner) = &state.owner else {
            // The device fd is closed: vfio-pci revoked every buffer for good.
            return Ok(RevokeOutcome::Dead);
        };
        if (buffer.token >> 32) as u32 != state.generation {
            // Exported before a device-wide revoke (device fd reopened): dead.
            return Ok(RevokeOutcome::Dead);
        }
        match revoke_one(
            owner.device.as_fd(),
            self.features.revoke,
            buffer.fd.as_fd(),
        ) {
            Ok(()) | Err(Errno::EBADFD) => Ok(RevokeOutcome::Dead),
            Err(e) => Err(kernel(format!(
                "VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE (feature {})",
                self.features.revoke
            ))(e)),
        }
    }

    /// Closes and reopens the device fd. vfio-pci revokes every DMABUF of a
    /// device for good when its last device fd closes. Turning memory decode
    /// off and on, or VFIO_DEVICE_RESET, revoke only while they last: the
    /// buffers work again afterwards, which is not what a revoke promises.
    /// The close also resets the device (vfio-pci does on last close).
    fn revoke_all(&self) -> Result<(), BackendError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let Some(owner) = state.owner.take() else {
            return Ok(()); // already closed: nothing can be live
        };
        state.generation = state.generation.wrapping_add(1);
        match owner.reopen() {
            Ok(o) => {
                state.owner = Some(o);
                tracing::info!(device = %self.name, "device-wide revoke: device fd closed and reopened; every earlier buffer is dead");
            }
            Err(e) => {
                // Every buffer is still dead (the fd was closed), but the device is gone.
                let p = format!("reopening the device after a device-wide revoke failed: {e}");
                tracing::error!(device = %self.name, "{p}");
                state.problem = Some(p);
            }
        }
        Ok(())
    }

    fn peek(&self, bar: u32, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let state = self.state();
        let owner = self.owned(&state)?;
        let at = self.io_range(bar, offset, out.len(), false)?;
        let len = out.len();
        let what = || format!("read of bar {bar} at {offset:#x}+{len:#x}");
        if single_access(offset, out.len()) {
            let n = pread(owner.device.as_fd(), out, at).map_err(kernel(what()))?;
            return short(n, out.len(), what);
        }
        let mut done = 0;
        while done < out.len() {
            let n = pread(owner.device.as_fd(), &mut out[done..], at + done as i64)
                .map_err(kernel(what()))?;
            if n == 0 {
                return short(done, out.len(), what);
            }
            done += n;
        }
        Ok(())
    }

    fn poke(&self, bar: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let state = self.state();
        let owner = self.owned(&state)?;
        let at = self.io_range(bar, offset, data.len(), true)?;
        let what = || format!("write of bar {bar} at {offset:#x}+{:#x}", data.len());
        if single_access(offset, data.len()) {
            let n = pwrite(owner.device.as_fd(), data, at).map_err(kernel(what()))?;
            return short(n, data.len(), what);
        }
        let mut done = 0;
        while done < data.len() {
            let n = pwrite(owner.device.as_fd(), &data[done..], at + done as i64)
                .map_err(kernel(what()))?;
            if n == 0 {
                return short(done, data.len(), what);
            }
            done += n;
        }
        Ok(())
    }
}

impl crate::backend::Restart for VfioDevice {
    fn kernel_fds(&self) -> Vec<(String, OwnedFd)> {
        self.state()
            .owner
            .as_ref()
            .map(Owner::fds)
            .unwrap_or_default()
    }

    fn restore_data(&self) -> Option<String> {
        let ioas = self.state().owner.as_ref()?.ioas()?;
        Some(format!("ioas={ioas}"))
    }

    fn restored(&self) -> bool {
        self.restored
    }

    fn revoke_unknown(&self, fd: BorrowedFd<'_>) -> Result<RevokeOutcome, BackendError> {
        if !self.caps.revoke {
            return Err(BackendError::Unsupported(format!(
                "device {} cannot revoke one buffer",
                self.name
            )));
        }
        let state = self.state();
        let owner = self.owned(&state)?;
        // The kernel refuses a buffer of another device.
        match revoke_one(owner.device.as_fd(), self.features.revoke, fd) {
            Ok(()) | Err(Errno::EBADFD) => Ok(RevokeOutcome::Dead),
            Err(e) => Err(kernel(format!(
                "VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE of an unrecorded buffer on {}",
                self.name
            ))(e)),
        }
    }

    fn adopt(&self, req: &ExportRequest, fd: OwnedFd) -> Result<Buffer, BackendError> {
        let state = self.state();
        self.usable(&state)?;
        let (bar, _) = self.region(req.bar)?;
        if req.range.end().is_none_or(|e| e > bar.size) {
            return Err(BackendError::Invalid(format!(
                "restored slice {} is not inside bar {} ({:#x} bytes)",
                req.range, req.bar, bar.size
            )));
        }
        // A DMABUF's inode size is the buffer's size.
        let size = nix::sys::stat::fstat(&fd)
            .map_err(kernel(format!(
                "fstat of the restored buffer of {}",
                req.range
            )))?
            .st_size as u64;
        if size != req.range.length {
            return Err(BackendError::Invalid(format!(
                "restored buffer has {size:#x} bytes, not the {:#x} of slice {}: it is not this lease's",
                req.range.length, req.range
            )));
        }
        let seq = self.next_buffer.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        Ok(Buffer {
            fd: std::sync::Arc::new(fd),
            token: (u64::from(state.generation) << 32) | seq,
        })
    }
}

fn short(n: usize, want: usize, what: impl FnOnce() -> String) -> Result<(), BackendError> {
    if n == want {
        Ok(())
    } else {
        Err(BackendError::Unsupported(format!(
            "{}: only {n} of {want} bytes transferred",
            what()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_fit_and_never_split_a_character() {
        assert_eq!(
            kernel_name("bk:gpu0:b0:10000+1000"),
            "bk:gpu0:b0:10000+1000"
        );
        let long = "bk:".to_string() + &"é".repeat(20);
        let cut = kernel_name(&long);
        assert!(cut.len() <= 31 && long.starts_with(cut), "{cut}");
        assert_eq!(cut.len(), 31);
    }

    #[test]
    fn single_accesses_are_naturally_aligned_power_of_two_widths() {
        assert!(single_access(4, 4));
        assert!(single_access(8, 8));
        assert!(single_access(3, 1));
        assert!(!single_access(2, 4));
        assert!(!single_access(0, 3));
        assert!(!single_access(0, 16));
    }

    #[test]
    fn a_missing_device_is_reported_not_panicked() {
        let sys = tempfile::tempdir().unwrap();
        let opts = VfioOptions {
            pci: "0000:00:09.0".into(),
            ownership: Default::default(),
            noiommu: false,
            bind: false,
            features: Default::default(),
        };
        let dev = VfioDevice::open_at("gpu0", &opts, sys.path(), sys.path());
        let info = dev.info();
        assert!(info.problem.unwrap().contains("no PCI device 0000:00:09.0"));
        assert!(info.bars.is_empty());
        assert_eq!(dev.capabilities(), Capabilities::default());
        let req = ExportRequest {
            bar: 0,
            range: Range::new(0, 0x1000),
            access: Access::ReadOnly,
            memattr: MemAttr::Uncached,
            name: "bk:gpu0:b0:0+1000".into(),
        };
        assert!(matches!(
            dev.export(&req),
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            dev.peek(0, 0, &mut [0; 4]),
            Err(BackendError::Unavailable(_))
        ));
        assert!(dev.revoke_all().is_ok());
    }
}
