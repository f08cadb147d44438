//! Tests against a real VFIO device, for a VM with the test kernel (see
//! tests/vm/README.md and tests/vm/kernel/). Ignored by default; run as root in the
//! guest with the daemon's unit-test binary:
//!
//! ```text
//! BARKEEP_VFIO_PCI=0000:00:04.0 BARKEEP_VFIO_MODE=cdev \
//!   ./barkeep_daemon-HASH --ignored --test-threads=1 backend::vfio::realtest
//! ```
//!
//! - `BARKEEP_VFIO_PCI`: a device bound to vfio-pci with a mappable BAR of
//!   at least 64 KiB (ivshmem); the test skips (passes) without it.
//! - `BARKEEP_VFIO_MODE`: `group`, `cdev` or `auto` (default).
//! - `BARKEEP_VFIO_EDU`: the `edu` device, for peek/poke of its liveness register;
//!   with `BARKEEP_VFIO_EDU_UNBOUND=1` it starts unbound and is bound by `bind = true`.
//! - `BARKEEP_VFIO_MSIX`: a device whose BAR holds an MSI-X table (nvme).
//! - `BARKEEP_VFIO_EXPECT_MMAP`: `0` when booted with `vfio_pci_core.dmabuf_mmap=0`.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use barkeep_protocol::{Access, MemAttr, Range};
use nix::errno::Errno;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use super::{open, Ownership, VfioOptions};
use crate::backend::{buffer_name, ExportRequest, RevokeOutcome};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

fn options(pci: String) -> VfioOptions {
    let ownership = match env("BARKEEP_VFIO_MODE").as_deref() {
        Some("group") => Ownership::Group,
        Some("cdev") => Ownership::Cdev,
        _ => Ownership::Auto,
    };
    VfioOptions {
        pci,
        ownership,
        noiommu: false,
        bind: true,
        features: Default::default(),
    }
}

/// A shared mapping of a buffer fd, unmapped on drop.
struct Map {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Map {
    fn new(fd: BorrowedFd<'_>, len: usize, offset: i64, prot: ProtFlags) -> nix::Result<Map> {
        let n = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a new shared mapping at a kernel-chosen address; accessed
        // only through `Map`, which knows its length.
        let ptr = unsafe { mmap(None, n, prot, MapFlags::MAP_SHARED, fd, offset) }?;
        Ok(Map { ptr, len })
    }
    fn write_u32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len);
        // SAFETY: inside the mapping, 4-byte aligned (callers pass multiples of 4).
        unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(off)
                .cast::<u32>()
                .write_volatile(v)
        }
    }
    fn read_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len);
        // SAFETY: as in write_u32.
        unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(off)
                .cast::<u32>()
                .read_volatile()
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its length.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

fn fdinfo(fd: BorrowedFd<'_>) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
}

/// Whether reading the first word of `map` in a child process dies of SIGBUS.
fn faults(map: &Map) -> bool {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the child only reads memory and exits; it touches no locks.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let _ = map.read_u32(0);
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
            WaitStatus::Signaled(_, sig, _) => sig == nix::sys::signal::Signal::SIGBUS,
            _ => false,
        },
    }
}

fn request(name: &str, bar: u32, range: Range, access: Access, memattr: MemAttr) -> ExportRequest {
    ExportRequest {
        bar,
        range,
        access,
        memattr,
        name: buffer_name(name, bar, range),
    }
}

#[test]
#[ignore = "needs a VFIO device: run in the test VM"]
fn real_slice_export_map_revoke() {
    let Some(pci) = env("BARKEEP_VFIO_PCI") else {
        eprintln!("SKIPPED: BARKEEP_VFIO_PCI not set");
        return;
    };
    let expect_mmap = env("BARKEEP_VFIO_EXPECT_MMAP").as_deref() != Some("0");
    let dev = open("shm", &options(pci));
    let info = dev.info();
    for n in dev.notes() {
        eprintln!("note: {n}");
    }
    eprintln!("info: {info:?}");
    assert_eq!(info.problem, None);
    let caps = dev.capabilities();
    assert!(caps.export && caps.device_revoke, "{caps:?}");
    assert_eq!(caps.mmap, expect_mmap, "{caps:?}");
    assert!(caps.revoke, "the test kernel has REVOKE: {caps:?}");
    assert!(
        caps.write_combining,
        "the test kernel has MEMATTR: {caps:?}"
    );
    let bar = info
        .bars
        .iter()
        .find(|b| b.mmap && b.size >= 0x10000)
        .expect("a mappable BAR of 64 KiB")
        .index;
    let page = 0x1000usize;

    // A narrow read-write slice at a non-zero offset.
    let range = Range::new(0x3000, 0x2000);
    let ex = dev
        .export(&request(
            "shm",
            bar,
            range,
            Access::ReadWrite,
            MemAttr::Uncached,
        ))
        .unwrap();
    let fi = fdinfo(ex.client_fd.as_fd());
    assert!(fi.contains("size:\t8192"), "{fi}");
    assert!(
        fi.contains("bk:shm:b"),
        "buffer named after its slice: {fi}"
    );
    assert!(fdinfo(ex.buffer.fd.as_fd()).contains("size:\t8192"));

    let map = Map::new(
        ex.client_fd.as_fd(),
        2 * page,
        0,
        ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
    );
    if !expect_mmap {
        assert_eq!(map.err(), Some(Errno::EINVAL));
    } else {
        let map = map.unwrap();
        let second = Map::new(
            ex.client_fd.as_fd(),
            page,
            page as i64,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        )
        .unwrap();
        map.write_u32(0, 0xb0a7_0001);
        second.write_u32(16, 0xb0a7_0002);
        assert_eq!(
            map.read_u32(page + 16),
            0xb0a7_0002,
            "both mappings alias the buffer"
        );
        let mut word = [0u8; 4];
        dev.peek(bar, range.offset, &mut word).unwrap();
        assert_eq!(
            u32::from_ne_bytes(word),
            0xb0a7_0001,
            "byte 0 of the buffer is byte 0 of the slice"
        );
        dev.peek(bar, range.offset + page as u64 + 16, &mut word)
            .unwrap();
        assert_eq!(u32::from_ne_bytes(word), 0xb0a7_0002);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.lines().any(|l| l.contains("bk:shm:b")), "{maps}");
        // Mapping past the end of the buffer fails.
        assert_eq!(
            Map::new(ex.client_fd.as_fd(), 3 * page, 0, ProtFlags::PROT_READ).err(),
            Some(Errno::EINVAL)
        );

        // Per-buffer revoke: the mapping faults, a new mmap fails.
        assert!(!faults(&map));
        assert_eq!(dev.revoke(ex.buffer).unwrap(), RevokeOutcome::Dead);
        assert!(faults(&map), "a revoked mapping must SIGBUS");
        assert_eq!(
            Map::new(ex.client_fd.as_fd(), page, 0, ProtFlags::PROT_READ).err(),
            Some(Errno::ENODEV)
        );
        drop(second);
    }

    // Read-only slices cannot be mapped writable.
    let ro = dev
        .export(&request(
            "shm",
            bar,
            Range::new(0x8000, 0x1000),
            Access::ReadOnly,
            MemAttr::Uncached,
        ))
        .unwrap();
    if expect_mmap {
        assert_eq!(
            Map::new(
                ro.client_fd.as_fd(),
                page,
                0,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
            )
            .err(),
            Some(Errno::EACCES)
        );
        assert!(Map::new(ro.client_fd.as_fd(), page, 0, ProtFlags::PROT_READ).is_ok());
    }
    assert_eq!(dev.revoke(ro.buffer).unwrap(), RevokeOutcome::Dead);

    // Write-combining slices are accepted.
    let wc = dev
        .export(&request(
            "shm",
            bar,
            Range::new(0x9000, 0x1000),
            Access::ReadWrite,
            MemAttr::WriteCombining,
        ))
        .unwrap();
    if expect_mmap {
        let m = Map::new(
            wc.client_fd.as_fd(),
            page,
            0,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        )
        .unwrap();
        m.write_u32(0, 0x5757_5757);
        let mut word = [0u8; 4];
        dev.peek(bar, 0x9000, &mut word).unwrap();
        assert_eq!(u32::from_ne_bytes(word), 0x5757_5757);
    }

    // Device-wide revoke: every earlier buffer is dead for good, new exports work.
    let keep = Map::new(wc.client_fd.as_fd(), page, 0, ProtFlags::PROT_READ);
    dev.revoke_all().unwrap();
    assert_eq!(dev.info().problem, None);
    if let Ok(m) = &keep {
        assert!(faults(m), "mapping after device-wide revoke must SIGBUS");
        assert_eq!(
            Map::new(wc.client_fd.as_fd(), page, 0, ProtFlags::PROT_READ).err(),
            Some(Errno::ENODEV)
        );
    }
    assert_eq!(dev.revoke(wc.buffer).unwrap(), RevokeOutcome::Dead);
    let again = dev
        .export(&request(
            "shm",
            bar,
            Range::new(0x3000, 0x1000),
            Access::ReadWrite,
            MemAttr::Uncached,
        ))
        .unwrap();
    if expect_mmap {
        let m = Map::new(again.client_fd.as_fd(), page, 0, ProtFlags::PROT_READ).unwrap();
        assert!(!faults(&m));
    }
    assert_eq!(dev.revoke(again.buffer).unwrap(), RevokeOutcome::Dead);
    eprintln!("real_slice_export_map_revoke: ok (mmap {expect_mmap})");
}

#[test]
#[ignore = "needs a VFIO device: run in the test VM"]
fn real_edu_peek_poke() {
    let Some(pci) = env("BARKEEP_VFIO_EDU") else {
        eprintln!("SKIPPED: BARKEEP_VFIO_EDU not set");
        return;
    };
    if env("BARKEEP_VFIO_EDU_UNBOUND").is_some() {
        // The device starts with no driver: refused without `bind = true`.
        let mut opts = options(pci.clone());
        opts.bind = false;
        let problem = open("edu", &opts).info().problem.unwrap_or_default();
        assert!(
            problem.contains("not bound to any driver") && problem.contains("bind = true"),
            "{problem}"
        );
    }
    let dev = open("edu", &options(pci));
    assert_eq!(dev.info().problem, None, "{:?}", dev.notes());
    let mut id = [0u8; 4];
    dev.peek(0, 0, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x010000ed);
    for x in [0x1234_5678u32, 0xdead_beef] {
        dev.poke(0, 4, &x.to_le_bytes()).unwrap();
        let mut back = [0u8; 4];
        dev.peek(0, 4, &mut back).unwrap();
        assert_eq!(u32::from_le_bytes(back), !x);
    }
    // Past the end of the BAR is refused.
    assert!(dev
        .peek(0, dev.bar(0).unwrap().size - 2, &mut [0; 4])
        .is_err());
    eprintln!("real_edu_peek_poke: ok");
}

#[test]
#[ignore = "needs a VFIO device: run in the test VM"]
fn real_msix_table_is_reserved() {
    let Some(pci) = env("BARKEEP_VFIO_MSIX") else {
        eprintln!("SKIPPED: BARKEEP_VFIO_MSIX not set");
        return;
    };
    let dev = open("msix", &options(pci));
    let info = dev.info();
    for n in dev.notes() {
        eprintln!("note: {n}");
    }
    assert_eq!(info.problem, None);
    let reserved: Vec<_> = info
        .bars
        .iter()
        .flat_map(|b| b.reserved.iter().map(move |r| (b.index, r.clone())))
        .collect();
    assert!(!reserved.is_empty(), "{info:?}");
    assert!(
        reserved.iter().any(|(_, r)| r.what.contains("MSI-X table")),
        "{reserved:?}"
    );
    eprintln!("real_msix_table_is_reserved: ok {reserved:?}");
}

#[test]
#[ignore = "needs a VFIO device: run in the test VM"]
fn real_wrong_feature_numbers_are_not_trusted() {
    let Some(pci) = env("BARKEEP_VFIO_PCI") else {
        eprintln!("SKIPPED: BARKEEP_VFIO_PCI not set");
        return;
    };
    // REVOKE and MEMATTR swapped: both PROBE fine, neither behaves as named;
    // the search finds each under the other's number, by behaviour.
    let mut opts = options(pci.clone());
    opts.features.revoke = 15;
    opts.features.memattr = 14;
    let dev = open("swapped", &opts);
    let notes = dev.notes().join("\n");
    eprintln!("notes:\n{notes}");
    let caps = dev.capabilities();
    assert!(
        caps.export && caps.revoke && caps.write_combining,
        "{caps:?}"
    );
    assert!(
        notes.contains("DMA_BUF_REVOKE found by search as feature 14")
            && notes.contains("DMA_BUF_MEMATTR found by search as feature 15"),
        "{notes}"
    );
    assert_eq!(dev.info().problem, None);
    drop(dev);

    // With the search off, the wrong numbers are simply not trusted.
    opts.features.search = false;
    let dev = open("swapped-nosearch", &opts);
    let caps = dev.capabilities();
    assert!(
        caps.export && !caps.revoke && !caps.write_combining,
        "{caps:?}"
    );
    assert_eq!(dev.info().problem, None);
    drop(dev);

    // No DMA_BUF feature under this number: the device says why and refuses.
    let mut opts = options(pci);
    opts.features.dma_buf = 0x7ff0;
    let dev = open("nodmabuf", &opts);
    let problem = dev.info().problem.unwrap_or_default();
    assert!(problem.contains("VFIO_DEVICE_FEATURE_DMA_BUF"), "{problem}");
    assert!(!dev.capabilities().export);
    let req = request(
        "nodmabuf",
        2,
        Range::new(0, 0x1000),
        Access::ReadOnly,
        MemAttr::Uncached,
    );
    let err = dev.export(&req).unwrap_err().to_string();
    assert!(err.contains("Linux >= 6.19"), "{err}");
    // Admin peek still works through the device fd.
    dev.peek(2, 0, &mut [0u8; 4]).unwrap();
    eprintln!("real_wrong_feature_numbers_are_not_trusted: ok");
}
