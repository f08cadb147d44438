//! Probing against fake kernels: the numberings barkeep meets in the wild.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use barkeep_protocol::{BarInfo, Range, Reserved};
use nix::errno::Errno;

use super::*;

/// What a fake kernel does under one feature number, modelled on
/// vfio_pci_core_ioctl_feature and vfio_check_feature: an unknown number
/// gives ENOTTY; a known one asked in a direction it does not take, EINVAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feat {
    DmaBuf,
    Revoke,
    Memattr,
    /// GET only (ZPCI_ERROR, say).
    GetOnly,
    /// Takes any SET and does nothing barkeep could see.
    SetOther,
}

/// The payloads barkeep SETs; their sizes matter as they do to the
/// kernel: a payload shorter than the feature's struct is EINVAL, a longer
/// one is read as the feature's struct.
enum Payload {
    Revoke(i32),
    Memattr(i32, u32),
}

struct Fake {
    feats: BTreeMap<u32, Feat>,
    mmap: bool,
    /// Buffers by fd number: revoked or not.
    bufs: RefCell<HashMap<i32, bool>>,
    /// Every (non-PROBE) SET, by feature number.
    sets: RefCell<Vec<u32>>,
}

impl Fake {
    fn new(feats: &[(u32, Feat)], mmap: bool) -> Fake {
        Fake {
            feats: feats.iter().copied().collect(),
            mmap,
            bufs: RefCell::default(),
            sets: RefCell::default(),
        }
    }

    fn set(&self, feature: u32, payload: Payload) -> nix::Result<()> {
        self.sets.borrow_mut().push(feature);
        match self.feats.get(&feature) {
            None => Err(Errno::ENOTTY),
            Some(Feat::DmaBuf | Feat::GetOnly) => Err(Errno::EINVAL),
            Some(Feat::SetOther) => Ok(()),
            Some(Feat::Revoke) => {
                let fd = match payload {
                    Payload::Revoke(fd) | Payload::Memattr(fd, _) => fd,
                };
                let mut bufs = self.bufs.borrow_mut();
                let revoked = bufs.get_mut(&fd).ok_or(Errno::ENODEV)?;
                if *revoked {
                    return Err(Errno::EBADFD);
                }
                *revoked = true;
                Ok(())
            }
            Some(Feat::Memattr) => match payload {
                Payload::Revoke(_) => Err(Errno::EINVAL),
                Payload::Memattr(_, m) if m > 1 => Err(Errno::ENOENT),
                Payload::Memattr(fd, _) => self
                    .bufs
                    .borrow()
                    .contains_key(&fd)
                    .then_some(())
                    .ok_or(Errno::ENODEV),
            },
        }
    }

    /// Whether any SET went to a number Linux 7.3 assigns elsewhere.
    fn set_assigned(&self) -> Vec<u32> {
        let sets = self.sets.borrow();
        sets.iter()
            .copied()
            .filter(|n| assigned(*n).is_some())
            .collect()
    }
}

impl Kernel for Fake {
    fn probe(&self, feature: u32, dir: u32) -> nix::Result<()> {
        let takes = match self.feats.get(&feature) {
            None => return Err(Errno::ENOTTY),
            Some(Feat::DmaBuf | Feat::GetOnly) => uapi::VFIO_DEVICE_FEATURE_GET,
            Some(_) => uapi::VFIO_DEVICE_FEATURE_SET,
        };
        if dir == takes {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    fn export(&self, feature: u32, _bar: u32, _range: Range, _access: i32) -> nix::Result<OwnedFd> {
        if self.feats.get(&feature) != Some(&Feat::DmaBuf) {
            return Err(Errno::ENOTTY);
        }
        let fd: OwnedFd = std::fs::File::open("/dev/null")
            .map_err(|_| Errno::EMFILE)?
            .into();
        self.bufs.borrow_mut().insert(fd.as_raw_fd(), false);
        Ok(fd)
    }

    fn revoke(&self, feature: u32, buf: BorrowedFd<'_>) -> nix::Result<()> {
        self.set(feature, Payload::Revoke(buf.as_raw_fd()))
    }

    fn set_memattr(&self, feature: u32, buf: BorrowedFd<'_>, memattr: u32) -> nix::Result<()> {
        self.set(feature, Payload::Memattr(buf.as_raw_fd(), memattr))
    }

    fn try_mmap(&self, buf: BorrowedFd<'_>, _len: u64) -> nix::Result<()> {
        if !self.mmap {
            return Err(Errno::EINVAL);
        }
        match self.bufs.borrow().get(&buf.as_raw_fd()) {
            Some(true) => Err(Errno::ENODEV),
            Some(false) => Ok(()),
            None => Err(Errno::EBADF),
        }
    }
}

const PAGE: u64 = 0x1000;

fn bars() -> Vec<BarInfo> {
    vec![BarInfo {
        index: 2,
        size: 0x10000,
        readable: true,
        writable: true,
        mmap: true,
        mappable: vec![Range::new(0, 0x10000)],
        reserved: vec![],
    }]
}

/// Linux 7.3 as released: DMA_BUF 11, ZPCI_ERROR 13 (GET only).
fn mainline() -> Vec<(u32, Feat)> {
    vec![(11, Feat::DmaBuf), (13, Feat::GetOnly)]
}

fn with(mut base: Vec<(u32, Feat)>, more: &[(u32, Feat)]) -> Vec<(u32, Feat)> {
    base.extend_from_slice(more);
    base
}

fn run(fake: &Fake, f: FeatureNumbers) -> Probed {
    let p = probe(fake, f, &bars(), PAGE);
    for n in &p.notes {
        eprintln!("note: {n}");
    }
    p
}

fn notes(p: &Probed) -> String {
    p.notes.join("\n")
}

#[test]
fn the_test_kernel_numbering_is_confirmed_without_a_search() {
    let fake = Fake::new(
        &with(mainline(), &[(14, Feat::Revoke), (15, Feat::Memattr)]),
        true,
    );
    let p = run(&fake, FeatureNumbers::default());
    assert!(p.caps.export && p.caps.mmap && p.caps.revoke && p.caps.write_combining);
    assert_eq!((p.features.revoke, p.features.memattr), (14, 15));
    assert!(p.problem.is_none(), "{:?}", p.problem);
    let n = notes(&p);
    assert!(
        n.contains("revoke: feature 14 (DMA_BUF_REVOKE) confirmed"),
        "{n}"
    );
    assert!(
        n.contains("wc: feature 15 (DMA_BUF_MEMATTR) confirmed"),
        "{n}"
    );
    assert!(!n.contains("search"), "{n}");
    // No number but the two confirmed ones was ever SET.
    assert!(fake.sets.borrow().iter().all(|s| [14, 15].contains(s)));
}

#[test]
fn the_published_numbering_on_an_older_base_is_found_or_named() {
    // v4 on 7.1: REVOKE 13, MEMATTR 14, no ZPCI_ERROR.
    let published = [(11, Feat::DmaBuf), (13, Feat::Revoke), (14, Feat::Memattr)];
    let fake = Fake::new(&published, true);
    let p = run(&fake, FeatureNumbers::default());
    // MEMATTR is found at 14; 13 is ZPCI_ERROR in the newest header, so the
    // search never SETs it and says how to opt in.
    assert_eq!(p.features.memattr, 14);
    assert!(p.caps.write_combining && !p.caps.revoke);
    assert_eq!(p.features.revoke, FeatureNumbers::OFF);
    let n = notes(&p);
    assert!(
        n.contains("wc: DMA_BUF_MEMATTR found by search as feature 14"),
        "{n}"
    );
    assert!(n.contains("assigns 13 to ZPCI_ERROR: not tried"), "{n}");
    assert!(n.contains("[kernel] revoke_feature = 13"), "{n}");
    assert_eq!(fake.set_assigned(), Vec::<u32>::new());

    // The operator opts in: 13 is used, and confirmed by behaviour.
    let fake = Fake::new(&published, true);
    let f = FeatureNumbers {
        revoke: 13,
        ..FeatureNumbers::default()
    };
    let p = run(&fake, f);
    assert!(p.caps.revoke && p.caps.write_combining, "{:?}", p.caps);
    assert_eq!((p.features.revoke, p.features.memattr), (13, 14));
    let n = notes(&p);
    assert!(n.contains("feature 13 (DMA_BUF_REVOKE) confirmed"), "{n}");
    assert!(
        n.contains("assigns 13 to ZPCI_ERROR, used as configured"),
        "{n}"
    );
}

#[test]
fn a_renumbered_kernel_is_found_by_behaviour_not_by_probe_alone() {
    // A vendor kernel: MEMATTR 16, REVOKE 18, and a SET feature at 17 that
    // accepts anything (PROBE alone would mistake it for either).
    let fake = Fake::new(
        &with(
            mainline(),
            &[
                (16, Feat::Memattr),
                (17, Feat::SetOther),
                (18, Feat::Revoke),
            ],
        ),
        true,
    );
    let p = run(&fake, FeatureNumbers::default());
    assert_eq!((p.features.revoke, p.features.memattr), (18, 16));
    assert!(p.caps.revoke && p.caps.write_combining);
    let n = notes(&p);
    assert!(
        n.contains("revoke: DMA_BUF_REVOKE found by search as feature 18"),
        "{n}"
    );
    assert!(
        n.contains("candidate feature 17 is offered but does not behave"),
        "{n}"
    );
    assert!(
        n.contains("kernel features in use: DMA_BUF 11, DMA_BUF_REVOKE 18, DMA_BUF_MEMATTR 16"),
        "{n}"
    );
    assert_eq!(fake.set_assigned(), Vec::<u32>::new());

    // Without mmap, a second revoke (EBADFD) tells REVOKE apart.
    let fake = Fake::new(
        &with(mainline(), &[(17, Feat::SetOther), (18, Feat::Revoke)]),
        false,
    );
    let p = run(&fake, FeatureNumbers::default());
    assert_eq!(p.features.revoke, 18);
    assert!(notes(&p).contains("second revoke failed with EBADFD"));
}

#[test]
fn swapped_numbers_are_not_trusted_and_the_right_ones_are_found() {
    let kernel = with(mainline(), &[(14, Feat::Revoke), (15, Feat::Memattr)]);
    let swapped = FeatureNumbers {
        revoke: 15,
        memattr: 14,
        ..FeatureNumbers::default()
    };
    let p = run(&Fake::new(&kernel, true), swapped);
    assert_eq!((p.features.revoke, p.features.memattr), (14, 15));

    // With the search off, the configuration is all there is.
    let p = run(
        &Fake::new(&kernel, true),
        FeatureNumbers {
            search: false,
            ..swapped
        },
    );
    assert!(!p.caps.revoke && !p.caps.write_combining, "{:?}", p.caps);
    let n = notes(&p);
    assert!(
        n.contains("revoke: feature 15 (DMA_BUF_REVOKE) is offered but"),
        "{n}"
    );
    assert!(n.contains("search_features = false"), "{n}");
}

#[test]
fn a_feature_turned_off_is_neither_used_nor_searched() {
    let fake = Fake::new(
        &with(mainline(), &[(14, Feat::Revoke), (15, Feat::Memattr)]),
        false,
    );
    let f = FeatureNumbers {
        revoke: FeatureNumbers::OFF,
        ..FeatureNumbers::default()
    };
    let p = run(&fake, f);
    assert!(p.caps.export && !p.caps.mmap && !p.caps.revoke && p.caps.write_combining);
    assert!(
        !fake.sets.borrow().contains(&14),
        "REVOKE was SET while off"
    );
    assert!(notes(&p).contains("DMA_BUF_REVOKE turned off by configuration"));
}

#[test]
fn no_revoke_at_all_leaves_export_and_mmap() {
    let fake = Fake::new(&mainline(), true);
    let p = run(&fake, FeatureNumbers::default());
    assert!(p.caps.export && p.caps.mmap && p.caps.device_revoke);
    assert!(!p.caps.revoke && !p.caps.write_combining);
    assert!(p.problem.is_none(), "{:?}", p.problem);
    let n = notes(&p);
    assert!(
        n.contains("revoke: feature 14 (DMA_BUF_REVOKE) not offered for SET (PROBE: ENOTTY"),
        "{n}"
    );
    assert!(
        n.contains("no feature number in 12..=31 behaves as DMA_BUF_REVOKE"),
        "{n}"
    );
    assert!(
        n.contains("keep their range until a device-wide revoke"),
        "{n}"
    );
    assert!(fake.sets.borrow().is_empty(), "{:?}", fake.sets.borrow());
}

#[test]
fn stock_mainline_exports_only() {
    let fake = Fake::new(&mainline(), false);
    let p = run(&fake, FeatureNumbers::default());
    assert!(p.caps.export && p.caps.device_revoke);
    assert!(!p.caps.mmap && !p.caps.revoke && !p.caps.write_combining);
    assert!(p.problem.is_none(), "{:?}", p.problem);
    let n = notes(&p);
    assert!(n.contains("mmap: not supported by this kernel"), "{n}");
    assert!(
        n.contains("DMA_BUF_REVOKE none, DMA_BUF_MEMATTR none"),
        "{n}"
    );
    assert!(fake.sets.borrow().is_empty());
}

#[test]
fn a_kernel_without_dma_buf_is_a_problem() {
    let fake = Fake::new(&[(13, Feat::GetOnly)], false);
    let p = run(&fake, FeatureNumbers::default());
    assert_eq!(p.caps, Capabilities::default());
    assert!(
        matches!(p.problem, Some(SetupError::NoDmaBuf)),
        "{:?}",
        p.problem
    );
}

fn bar(index: u32, size: u64, mappable: Vec<Range>, reserved: Vec<Range>) -> BarInfo {
    BarInfo {
        index,
        size,
        readable: true,
        writable: true,
        mmap: !mappable.is_empty(),
        mappable,
        reserved: reserved
            .into_iter()
            .map(|range| Reserved {
                range,
                what: "MSI-X".into(),
            })
            .collect(),
    }
}

#[test]
fn the_test_page_avoids_reserved_ranges_and_unmappable_bars() {
    let p = 0x1000;
    let bars = vec![
        bar(0, 0x1000, vec![], vec![]),
        bar(
            2,
            0x4000,
            vec![Range::new(0, 0x4000)],
            vec![Range::new(0, 0x2000)],
        ),
    ];
    assert_eq!(test_page(&bars, p), Some((2, Range::new(0x2000, 0x1000))));
    let bars = vec![bar(
        1,
        0x2000,
        vec![Range::new(0, 0x2000)],
        vec![Range::new(0, 0x2000)],
    )];
    assert_eq!(test_page(&bars, p), None);
    let bars = vec![bar(4, 0x8000, vec![Range::new(0x3000, 0x1000)], vec![])];
    assert_eq!(test_page(&bars, p), Some((4, Range::new(0x3000, 0x1000))));
}
