//! What the kernel can do for one device, found by behaviour.
//!
//! Export (VFIO_DEVICE_FEATURE_DMA_BUF) is mainline; mmap of a buffer and
//! the REVOKE and MEMATTR features are proposed, and their numbers are not
//! final (published as 13/14; mainline 7.3 gave 13 to ZPCI_ERROR; the test
//! kernel uses 14/15). So nothing is trusted by number:
//!
//! - export and mmap are tried on a test buffer (one page no reservation
//!   touches);
//! - REVOKE and MEMATTR are tried first under the configured numbers, each on
//!   a fresh test buffer; when those do not behave, other numbers are
//!   searched: a PROBE first (harmless: the kernel answers ENOTTY for a
//!   number it does not know, EINVAL for one that does not take SET, 0 for
//!   one that does), then the same behaviour test. A number the newest known
//!   uAPI header ([`ASSIGNED`]) gives to another feature is never SET by the
//!   search: only an operator's configuration can make barkeep use it.
//!
//! Every ioctl goes through [`Kernel`], so tests can run the whole logic
//! against a fake kernel.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use barkeep_protocol::{BarInfo, Capabilities, Range};
use nix::errno::Errno;

use super::error::SetupError;
use super::uapi::{self, NoPayload};
use super::FeatureNumbers;

/// An unknown memory attribute, used to check that MEMATTR really is MEMATTR.
const BOGUS_MEMATTR: u32 = 0x7fff;

/// VFIO_DEVICE_FEATURE numbers that Linux 7.3's include/uapi/linux/vfio.h
/// (the newest header known here) assigns. The search never SETs these.
pub const ASSIGNED: &[(u32, &str)] = &[
    (0, "PCI_VF_TOKEN"),
    (1, "MIGRATION"),
    (2, "MIG_DEVICE_STATE"),
    (3, "LOW_POWER_ENTRY"),
    (4, "LOW_POWER_ENTRY_WITH_WAKEUP"),
    (5, "LOW_POWER_EXIT"),
    (6, "DMA_LOGGING_START"),
    (7, "DMA_LOGGING_STOP"),
    (8, "DMA_LOGGING_REPORT"),
    (9, "MIG_DATA_SIZE"),
    (10, "BUS_MASTER"),
    (11, "DMA_BUF"),
    (12, "MIG_PRECOPY_INFOv2"),
    (13, "ZPCI_ERROR"),
];

/// The numbers the search looks at: the first after DMA_BUF up to a margin
/// for features merged or posted since. Assigned ones are only PROBEd (to
/// tell the operator when one answers like a published numbering would).
const SEARCH: std::ops::RangeInclusive<u32> = 12..=31;

/// What [`ASSIGNED`] says feature `n` is, if anything.
pub fn assigned(n: u32) -> Option<&'static str> {
    ASSIGNED
        .iter()
        .find(|(a, _)| *a == n)
        .map(|(_, name)| *name)
}

/// The ioctls probing needs, one fn each, so that tests can put a fake
/// kernel behind them.
pub trait Kernel {
    /// `VFIO_DEVICE_FEATURE` with PROBE | `dir` (GET or SET) | `feature`.
    fn probe(&self, feature: u32, dir: u32) -> nix::Result<()>;
    /// A DMABUF of one range of `bar` (GET of feature `feature`).
    fn export(&self, feature: u32, bar: u32, range: Range, access: i32) -> nix::Result<OwnedFd>;
    /// SET of `feature` with the REVOKE payload for `buf`.
    fn revoke(&self, feature: u32, buf: BorrowedFd<'_>) -> nix::Result<()>;
    /// SET of `feature` with the MEMATTR payload for `buf`.
    fn set_memattr(&self, feature: u32, buf: BorrowedFd<'_>, memattr: u32) -> nix::Result<()>;
    /// A MAP_SHARED, PROT_READ mapping of `len` bytes of `buf`, unmapped at once.
    fn try_mmap(&self, buf: BorrowedFd<'_>, len: u64) -> nix::Result<()>;
}

/// The real kernel, through a VFIO device fd.
pub struct Vfio<'a>(pub BorrowedFd<'a>);

impl Kernel for Vfio<'_> {
    fn probe(&self, feature: u32, dir: u32) -> nix::Result<()> {
        let flags = uapi::VFIO_DEVICE_FEATURE_PROBE | dir | feature;
        uapi::device_feature(self.0, flags, NoPayload).map(drop)
    }

    fn export(&self, feature: u32, bar: u32, range: Range, access: i32) -> nix::Result<OwnedFd> {
        export_one(self.0, feature, bar, range, access)
    }

    fn revoke(&self, feature: u32, buf: BorrowedFd<'_>) -> nix::Result<()> {
        revoke_one(self.0, feature, buf)
    }

    fn set_memattr(&self, feature: u32, buf: BorrowedFd<'_>, memattr: u32) -> nix::Result<()> {
        set_memattr(self.0, feature, buf, memattr)
    }

    fn try_mmap(&self, buf: BorrowedFd<'_>, len: u64) -> nix::Result<()> {
        crate::sys::try_mmap(buf, len)
    }
}

/// Exports one range of `bar` as a DMABUF opened with `access`.
pub fn export_one(
    device: BorrowedFd<'_>,
    feature: u32,
    bar: u32,
    r: Range,
    access: i32,
) -> nix::Result<OwnedFd> {
    let data = uapi::VfioDeviceFeatureDmaBuf1 {
        region_index: bar,
        open_flags: (access | libc::O_CLOEXEC) as u32,
        flags: 0,
        nr_ranges: 1,
        dma_ranges: [uapi::VfioRegionDmaRange {
            offset: r.offset,
            length: r.length,
        }],
    };
    uapi::device_feature_dma_buf(device, feature, data)
}

/// Revokes one buffer of the device for good (proposed REVOKE).
pub fn revoke_one(device: BorrowedFd<'_>, feature: u32, buf: BorrowedFd<'_>) -> nix::Result<()> {
    let data = uapi::VfioDeviceFeatureDmaBufRevoke {
        dmabuf_fd: buf.as_raw_fd(),
    };
    uapi::device_feature(device, uapi::VFIO_DEVICE_FEATURE_SET | feature, data).map(drop)
}

/// Sets the memory attribute of later mmaps of one buffer (proposed MEMATTR).
pub fn set_memattr(
    device: BorrowedFd<'_>,
    feature: u32,
    buf: BorrowedFd<'_>,
    memattr: u32,
) -> nix::Result<()> {
    let data = uapi::VfioDeviceFeatureDmaBufMemattr {
        dmabuf_fd: buf.as_raw_fd(),
        memattr,
    };
    uapi::device_feature(device, uapi::VFIO_DEVICE_FEATURE_SET | feature, data).map(drop)
}

/// The first page of the mappable BARs that no reservation touches.
pub fn test_page(bars: &[BarInfo], page: u64) -> Option<(u32, Range)> {
    for bar in bars.iter().filter(|b| b.mmap) {
        for area in &bar.mappable {
            let Some(area_end) = area.end() else { continue };
            let mut starts = vec![area.offset.div_ceil(page) * page];
            starts.extend(bar.reserved.iter().filter_map(|r| r.range.end()));
            starts.sort_unstable();
            for s in starts {
                let cand = Range::new(s, page);
                let inside = s >= area.offset && s.checked_add(page).is_some_and(|e| e <= area_end);
                if s % page == 0 && inside && !bar.reserved.iter().any(|r| r.range.overlaps(&cand))
                {
                    return Some((bar.index, cand));
                }
            }
        }
    }
    None
}

/// What probing found.
#[derive(Debug)]
pub struct Probed {
    /// What the device can do.
    pub caps: Capabilities,
    /// The numbers to use from now on: REVOKE and MEMATTR as confirmed or
    /// found, [`FeatureNumbers::OFF`] when absent.
    pub features: FeatureNumbers,
    /// For the log and `barkeep status`: what was tried and found, and how.
    pub notes: Vec<String>,
    /// Why the device cannot export at all.
    pub problem: Option<SetupError>,
}

/// The two proposed features probing looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Revoke,
    Memattr,
}

impl Wanted {
    fn label(self) -> &'static str {
        match self {
            Wanted::Revoke => "revoke",
            Wanted::Memattr => "wc",
        }
    }
    fn feature(self) -> &'static str {
        match self {
            Wanted::Revoke => "DMA_BUF_REVOKE",
            Wanted::Memattr => "DMA_BUF_MEMATTR",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Wanted::Revoke => "revoke_feature",
            Wanted::Memattr => "memattr_feature",
        }
    }
    fn without(self) -> &'static str {
        match self {
            Wanted::Revoke => "released leases whose buffer cannot be revoked keep their range until a device-wide revoke",
            Wanted::Memattr => "write-combining mappings are refused",
        }
    }
}

/// Behaviour tests, each on a fresh test buffer (a wrong candidate may have
/// revoked or changed the previous one).
struct Tester<'k> {
    kernel: &'k dyn Kernel,
    dma_buf: u32,
    bar: u32,
    range: Range,
    page: u64,
    mmap: bool,
}

impl Tester<'_> {
    fn buffer(&self) -> Result<OwnedFd, String> {
        self.kernel
            .export(self.dma_buf, self.bar, self.range, libc::O_RDONLY)
            .map_err(|e| format!("could not export a test buffer ({e})"))
    }

    /// Whether feature `n` behaves as `want`: Ok says how it was confirmed,
    /// Err why not.
    fn check(&self, want: Wanted, n: u32) -> Result<String, String> {
        self.kernel
            .probe(n, uapi::VFIO_DEVICE_FEATURE_SET)
            .map_err(|e| format!("not offered for SET (PROBE: {e})"))?;
        let buf = self.buffer()?;
        let buf = buf.as_fd();
        let shown = |r: nix::Result<()>| r.err().map_or("success".to_string(), |e| e.to_string());
        match want {
            Wanted::Revoke => {
                self.kernel.revoke(n, buf).map_err(|e| {
                    format!("is offered but revoking a test buffer failed with {e}")
                })?;
                let (what, got, expect) = if self.mmap {
                    (
                        "mmap after revoke",
                        self.kernel.try_mmap(buf, self.page),
                        Errno::ENODEV,
                    )
                } else {
                    ("second revoke", self.kernel.revoke(n, buf), Errno::EBADFD)
                };
                if got == Err(expect) {
                    Ok(format!(
                        "a revoked test buffer's {what} failed with {expect}"
                    ))
                } else {
                    Err(format!(
                        "is offered but does not behave as {} ({what} gave {} instead of {expect})",
                        want.feature(),
                        shown(got)
                    ))
                }
            }
            Wanted::Memattr => {
                let bogus = self.kernel.set_memattr(n, buf, BOGUS_MEMATTR);
                let wc = self.kernel.set_memattr(n, buf, uapi::DMA_BUF_MEMATTR_WC);
                if bogus == Err(Errno::ENOENT) && wc.is_ok() {
                    Ok("an unknown memattr gave ENOENT, WC was accepted".into())
                } else {
                    Err(format!(
                        "is offered but does not behave as {} (unknown memattr: {}, WC: {})",
                        want.feature(),
                        shown(bogus),
                        shown(wc)
                    ))
                }
            }
        }
    }

    /// The number of `want`: the configured one if it behaves, else one
    /// found by searching (unless the search is off). `taken` numbers are
    /// known to be something else.
    fn find(
        &self,
        want: Wanted,
        f: FeatureNumbers,
        taken: &[u32],
        notes: &mut Vec<String>,
    ) -> Option<u32> {
        let (label, name) = (want.label(), want.feature());
        let configured = match want {
            Wanted::Revoke => f.revoke,
            Wanted::Memattr => f.memattr,
        };
        if configured == FeatureNumbers::OFF {
            notes.push(format!(
                "{label}: {name} turned off by configuration ([kernel] {} = 0); {}",
                want.key(),
                want.without()
            ));
            return None;
        }
        if taken.contains(&configured) {
            notes.push(format!(
                "{label}: feature {configured} is taken by another feature here; not tried as {name}"
            ));
        } else {
            match self.check(want, configured) {
                Ok(how) => {
                    let clash = assigned(configured).map_or(String::new(), |a| {
                        format!("; Linux 7.3 assigns {configured} to {a}, used as configured")
                    });
                    notes.push(format!(
                        "{label}: feature {configured} ({name}) confirmed: {how}{clash}"
                    ));
                    return Some(configured);
                }
                Err(why) => notes.push(format!("{label}: feature {configured} ({name}) {why}")),
            }
        }
        if !f.search {
            notes.push(format!(
                "{label}: other numbers not searched ([kernel] search_features = false); {}",
                want.without()
            ));
            return None;
        }
        self.search(want, configured, taken, notes)
    }

    fn search(
        &self,
        want: Wanted,
        configured: u32,
        taken: &[u32],
        notes: &mut Vec<String>,
    ) -> Option<u32> {
        let (label, name) = (want.label(), want.feature());
        for n in SEARCH.filter(|n| *n != configured && !taken.contains(n)) {
            if self.kernel.probe(n, uapi::VFIO_DEVICE_FEATURE_SET).is_err() {
                continue;
            }
            if let Some(other) = assigned(n) {
                notes.push(format!(
                    "{label}: feature {n} answers PROBE for SET, but Linux 7.3 assigns {n} to {other}: not tried \
                     (the published REVOKE/MEMATTR series numbered them 13 and 14; on such a kernel set [kernel] {} = {})",
                    want.key(),
                    if want == Wanted::Revoke { 13 } else { 14 }
                ));
                continue;
            }
            match self.check(want, n) {
                Ok(how) => {
                    notes.push(format!(
                        "{label}: {name} found by search as feature {n}: PROBE offers it for SET and {how} \
                         (set [kernel] {} = {n} to skip the search)",
                        want.key()
                    ));
                    return Some(n);
                }
                Err(why) => notes.push(format!("{label}: candidate feature {n} {why}")),
            }
        }
        notes.push(format!(
            "{label}: no feature number in {}..={} behaves as {name}; {}",
            SEARCH.start(),
            SEARCH.end(),
            want.without()
        ));
        None
    }
}

/// Finds out what the kernel can do for this device (see the module doc).
pub fn probe(kernel: &dyn Kernel, f: FeatureNumbers, bars: &[BarInfo], page: u64) -> Probed {
    let mut p = Probed {
        caps: Capabilities::default(),
        features: FeatureNumbers {
            revoke: FeatureNumbers::OFF,
            memattr: FeatureNumbers::OFF,
            ..f
        },
        notes: Vec::new(),
        problem: None,
    };
    if let Err(e) = kernel.probe(f.dma_buf, uapi::VFIO_DEVICE_FEATURE_GET) {
        p.notes.push(format!(
            "export: PROBE of feature {} (DMA_BUF) failed with {e}",
            f.dma_buf
        ));
        p.problem = Some(SetupError::NoDmaBuf);
        return p;
    }
    p.caps.export = true;
    p.caps.device_revoke = true;
    p.notes.push(format!(
        "export: VFIO_DEVICE_FEATURE_DMA_BUF (feature {}) offered",
        f.dma_buf
    ));
    p.notes.push("device revoke: closes and reopens the device fd, which revokes every buffer of the device for good (and resets it)".into());

    let Some((bar, range)) = test_page(bars, page) else {
        p.notes.push("mmap, revoke, wc: not checked (no mappable BAR page to test with); treated as unsupported".into());
        return p;
    };
    let buf = match kernel.export(f.dma_buf, bar, range, libc::O_RDONLY) {
        Ok(b) => b,
        Err(e) => {
            p.caps = Capabilities::default();
            p.notes.push(format!(
                "export: test export of bar {bar} {range} failed with {e}"
            ));
            p.problem = Some(SetupError::ExportFails { bar, errno: e });
            return p;
        }
    };
    p.notes.push(format!(
        "export: confirmed (one page of bar {bar} at {:#x})",
        range.offset
    ));
    p.caps.mmap = check_mmap(kernel, buf.as_fd(), page, &mut p.notes);
    drop(buf);

    let tester = Tester {
        kernel,
        dma_buf: f.dma_buf,
        bar,
        range,
        page,
        mmap: p.caps.mmap,
    };
    let revoke = tester.find(Wanted::Revoke, f, &[f.dma_buf], &mut p.notes);
    let mut taken = vec![f.dma_buf];
    taken.extend(revoke);
    let memattr = tester.find(Wanted::Memattr, f, &taken, &mut p.notes);
    p.caps.revoke = revoke.is_some();
    p.caps.write_combining = memattr.is_some();
    p.features.revoke = revoke.unwrap_or(FeatureNumbers::OFF);
    p.features.memattr = memattr.unwrap_or(FeatureNumbers::OFF);
    p.notes.push(format!(
        "kernel features in use: DMA_BUF {}, DMA_BUF_REVOKE {}, DMA_BUF_MEMATTR {}",
        f.dma_buf,
        revoke.map_or("none".to_string(), |n| n.to_string()),
        memattr.map_or("none".to_string(), |n| n.to_string()),
    ));
    p
}

fn check_mmap(
    kernel: &dyn Kernel,
    buf: BorrowedFd<'_>,
    page: u64,
    notes: &mut Vec<String>,
) -> bool {
    match kernel.try_mmap(buf, page) {
        Ok(()) => {
            notes.push("mmap: supported (a test buffer mapped MAP_SHARED)".into());
            true
        }
        Err(Errno::EINVAL) => {
            notes.push(
                "mmap: not supported by this kernel (DMABUF mmap fails with EINVAL; needs the proposed \
                 \"vfio/pci: Add mmap() for DMABUFs\"); clients get fds for P2P import only"
                    .into(),
            );
            false
        }
        Err(e) => {
            notes.push(format!(
                "mmap: not supported (mmap of a test buffer failed with {e})"
            ));
            false
        }
    }
}

#[cfg(test)]
mod tests;
