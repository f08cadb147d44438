//! What a device's regions look like: BAR sizes and flags from
//! VFIO_DEVICE_GET_REGION_INFO, mappable areas from its capability chain, and
//! the MSI-X table and PBA from PCI config space (which the daemon never
//! grants, even where the kernel would let them be mapped).
//!
//! The parsers work on plain bytes and are tested on synthetic input.

use std::os::fd::BorrowedFd;

use barkeep_protocol::{BarInfo, Range, Reserved};

use super::error::{Malformed, SetupError};
use super::uapi::{self, VfioRegionInfo};

/// A region as VFIO describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// The fixed part of the region info (size, flags, offset in the device fd).
    pub info: VfioRegionInfo,
    /// Sparse-mmap areas, when the region has that capability.
    pub sparse: Option<Vec<Range>>,
    /// The MSIX_MAPPABLE capability is present.
    pub msix_mappable: bool,
}

/// Capabilities found in a region info buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionCaps {
    /// Sparse-mmap areas, if present.
    pub sparse: Option<Vec<Range>>,
    /// MSIX_MAPPABLE present.
    pub msix_mappable: bool,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Walks a VFIO capability chain starting at `first` (offsets count from the
/// start of `info`). Malformed chains (out of bounds, loops) end the walk
/// with what was read so far: they are reported, never trusted.
pub fn parse_region_caps(info: &[u8], first: u32) -> Result<RegionCaps, Malformed> {
    let mut caps = RegionCaps::default();
    let mut off = first as usize;
    let mut seen = 0;
    while off != 0 {
        seen += 1;
        if seen > 64 {
            return Err(Malformed::CapLoop);
        }
        let (Some(id), Some(next)) = (u16_at(info, off), u32_at(info, off + 4)) else {
            return Err(Malformed::CapPastEnd(off));
        };
        match id {
            uapi::VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let n = u32_at(info, off + 8).ok_or(Malformed::SparseTruncated(off))?;
                let mut areas = Vec::new();
                for i in 0..n as usize {
                    let a = off + 16 + i * 16;
                    let (Some(offset), Some(size)) = (u64_at(info, a), u64_at(info, a + 8)) else {
                        return Err(Malformed::SparsePastEnd(i));
                    };
                    if size > 0 {
                        areas.push(Range::new(offset, size));
                    }
                }
                caps.sparse = Some(areas);
            }
            uapi::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => caps.msix_mappable = true,
            _ => {}
        }
        off = next as usize;
    }
    Ok(caps)
}

/// Reads one region's info and capabilities.
pub fn region(device: BorrowedFd<'_>, index: u32) -> Result<Region, SetupError> {
    let (info, bytes) = uapi::device_get_region_info(device, index).map_err(SetupError::ioctl(
        format!("VFIO_DEVICE_GET_REGION_INFO for region {index}"),
    ))?;
    let caps = if info.flags & uapi::VFIO_REGION_INFO_FLAG_CAPS != 0 && info.cap_offset != 0 {
        parse_region_caps(&bytes, info.cap_offset).map_err(|e| Malformed::Region {
            index,
            cause: Box::new(e),
        })?
    } else {
        RegionCaps::default()
    };
    Ok(Region {
        info,
        sparse: caps.sparse,
        msix_mappable: caps.msix_mappable,
    })
}

/// The MSI-X capability of a function, from its config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msix {
    /// Number of vectors.
    pub entries: u32,
    /// BAR holding the table.
    pub table_bar: u32,
    /// Table offset in that BAR.
    pub table_offset: u64,
    /// BAR holding the pending-bit array.
    pub pba_bar: u32,
    /// PBA offset in that BAR.
    pub pba_offset: u64,
}

impl Msix {
    /// Table size in bytes (16 per vector).
    pub fn table_len(&self) -> u64 {
        u64::from(self.entries) * 16
    }
    /// PBA size in bytes (one bit per vector, in 64-bit words).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.entries).div_ceil(64) * 8
    }
}

const PCI_STATUS: usize = 0x06;
const PCI_STATUS_CAP_LIST: u16 = 0x10;
const PCI_CAPABILITY_LIST: usize = 0x34;
const PCI_CAP_ID_MSIX: u8 = 0x11;
/// First BAR register in a type 0 header.
const PCI_BASE_ADDRESS_0: usize = 0x10;
const PCI_BASE_ADDRESS_SPACE_IO: u32 = 0x01;

/// Finds the MSI-X capability in the standard capability list of `config`
/// (at least the first 256 bytes of config space). `None` when the
/// function has none.
pub fn parse_msix(config: &[u8]) -> Result<Option<Msix>, Malformed> {
    let status = u16_at(config, PCI_STATUS).ok_or(Malformed::ConfigShort)?;
    if status & PCI_STATUS_CAP_LIST == 0 {
        return Ok(None);
    }
    let mut ptr = usize::from(
        *config
            .get(PCI_CAPABILITY_LIST)
            .ok_or(Malformed::ConfigShort)?,
    ) & !3;
    let mut seen = 0;
    while ptr != 0 {
        seen += 1;
        // 48 capabilities of 4 bytes fill the 192 bytes after the header.
        if seen > 48 || ptr < 0x40 {
            return Err(Malformed::CapList(ptr));
        }
        let (Some(&id), Some(&next)) = (config.get(ptr), config.get(ptr + 1)) else {
            return Err(Malformed::PciCapPastEnd(ptr));
        };
        if id == PCI_CAP_ID_MSIX {
            let (Some(ctrl), Some(table), Some(pba)) = (
                u16_at(config, ptr + 2),
                u32_at(config, ptr + 4),
                u32_at(config, ptr + 8),
            ) else {
                return Err(Malformed::MsixTruncated(ptr));
            };
            return Ok(Some(Msix {
                entries: u32::from(ctrl & 0x7ff) + 1,
                table_bar: table & 7,
                table_offset: u64::from(table & !7),
                pba_bar: pba & 7,
                pba_offset: u64::from(pba & !7),
            }));
        }
        ptr = usize::from(next) & !3;
    }
    Ok(None)
}

/// Whether BAR `index` is an I/O-port BAR, from its config-space register.
pub fn is_io_bar(config: &[u8], index: u32) -> bool {
    u32_at(config, PCI_BASE_ADDRESS_0 + 4 * index as usize)
        .is_some_and(|v| v & PCI_BASE_ADDRESS_SPACE_IO != 0)
}

fn round_out(r: Range, page: u64, limit: u64) -> Range {
    let start = r.offset / page * page;
    let end = r
        .offset
        .saturating_add(r.length)
        .div_ceil(page)
        .saturating_mul(page)
        .min(limit);
    Range::new(start, end.saturating_sub(start))
}

/// The reserved ranges of BAR `bar`: the MSI-X table and PBA, rounded out to
/// whole pages (a slice sharing a page with them would map them too) and
/// merged where they overlap.
pub fn reserved_for_bar(msix: Option<&Msix>, bar: u32, bar_size: u64, page: u64) -> Vec<Reserved> {
    let Some(m) = msix else { return Vec::new() };
    let mut out: Vec<Reserved> = Vec::new();
    let parts = [
        (
            m.table_bar,
            m.table_offset,
            m.table_len(),
            format!("MSI-X table ({} vectors)", m.entries),
        ),
        (
            m.pba_bar,
            m.pba_offset,
            m.pba_len(),
            "MSI-X PBA".to_string(),
        ),
    ];
    for (b, offset, len, what) in parts {
        if b != bar || offset >= bar_size {
            continue;
        }
        let range = round_out(Range::new(offset, len), page, bar_size);
        if let Some(prev) = out.iter_mut().find(|p| {
            let (Some(pe), Some(re)) = (p.range.end(), range.end()) else {
                return false;
            };
            p.range.offset < re && range.offset < pe
        }) {
            let start = prev.range.offset.min(range.offset);
            let end = prev
                .range
                .end()
                .unwrap_or(u64::MAX)
                .max(range.end().unwrap_or(u64::MAX));
            prev.range = Range::new(start, end - start);
            prev.what = format!("{} and {}", prev.what, what);
        } else {
            out.push(Reserved { range, what });
        }
    }
    out
}

/// Builds the description of BAR `index` from its region, or `None` when the
/// BAR is absent (size 0, e.g. the upper half of a 64-bit BAR) or I/O ports.
pub fn bar_info(
    index: u32,
    region: &Region,
    config: &[u8],
    msix: Option<&Msix>,
    page: u64,
) -> Option<BarInfo> {
    let size = region.info.size;
    if size == 0 || is_io_bar(config, index) {
        return None;
    }
    let flags = region.info.flags;
    let mmap = flags & uapi::VFIO_REGION_INFO_FLAG_MMAP != 0;
    let mappable = if !mmap {
        Vec::new()
    } else if let Some(areas) = &region.sparse {
        areas.clone()
    } else {
        vec![Range::new(0, size)]
    };
    Some(BarInfo {
        index,
        size,
        readable: flags & uapi::VFIO_REGION_INFO_FLAG_READ != 0,
        writable: flags & uapi::VFIO_REGION_INFO_FLAG_WRITE != 0,
        mmap,
        mappable,
        reserved: reserved_for_bar(msix, index, size, page),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config space with the given capabilities chained from 0x40.
    fn config_with_caps(caps: &[(u8, &[u8])]) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..4].copy_from_slice(&[0xf4, 0x1a, 0x10, 0x11]);
        if !caps.is_empty() {
            c[PCI_STATUS] = PCI_STATUS_CAP_LIST as u8;
            c[PCI_CAPABILITY_LIST] = 0x40;
        }
        let mut ptr = 0x40;
        for (i, (id, body)) in caps.iter().enumerate() {
            let next = if i + 1 == caps.len() { 0 } else { ptr + 0x10 };
            c[ptr] = *id;
            c[ptr + 1] = next as u8;
            c[ptr + 2..ptr + 2 + body.len()].copy_from_slice(body);
            ptr = next;
        }
        c
    }

    fn msix_body(entries: u16, table: u32, pba: u32) -> Vec<u8> {
        let mut b = (entries - 1).to_le_bytes().to_vec();
        b.extend(table.to_le_bytes());
        b.extend(pba.to_le_bytes());
        b
    }

    #[test]
    fn finds_msix_behind_other_capabilities() {
        // PM (0x01), MSI (0x05), then MSI-X: 64 vectors, table in BAR0 at
        // 0x2000, PBA in BAR0 at 0x3000 (QEMU's nvme layout).
        let body = msix_body(64, 0x2000, 0x3000);
        let c = config_with_caps(&[(0x01, &[0; 6]), (0x05, &[0; 6]), (0x11, &body)]);
        let m = parse_msix(&c).unwrap().unwrap();
        assert_eq!(
            m,
            Msix {
                entries: 64,
                table_bar: 0,
                table_offset: 0x2000,
                pba_bar: 0,
                pba_offset: 0x3000
            }
        );
        assert_eq!(m.table_len(), 1024);
        assert_eq!(m.pba_len(), 8);
    }

    #[test]
    fn decodes_bir_and_offset_bits() {
        let body = msix_body(3, 0x1_0000 | 4, 0x800 | 2);
        let c = config_with_caps(&[(0x11, &body)]);
        let m = parse_msix(&c).unwrap().unwrap();
        assert_eq!((m.table_bar, m.table_offset), (4, 0x1_0000));
        assert_eq!((m.pba_bar, m.pba_offset), (2, 0x800));
        assert_eq!(m.entries, 3);
        assert_eq!(m.pba_len(), 8);
    }

    #[test]
    fn no_msix_without_a_capability_list_or_the_capability() {
        assert_eq!(parse_msix(&config_with_caps(&[])).unwrap(), None);
        assert_eq!(
            parse_msix(&config_with_caps(&[(0x05, &[0; 6])])).unwrap(),
            None
        );
    }

    #[test]
    fn a_looping_capability_list_is_an_error() {
        let mut c = config_with_caps(&[(0x05, &[0; 6])]);
        c[0x41] = 0x40; // points at itself
        assert_eq!(parse_msix(&c).unwrap_err(), Malformed::CapList(0x40));
        let mut c = config_with_caps(&[(0x05, &[0; 6])]);
        c[0x41] = 0x10; // into the header
        assert_eq!(parse_msix(&c).unwrap_err(), Malformed::CapList(0x10));
    }

    #[test]
    fn reserved_ranges_are_page_rounded_and_merged() {
        let m = Msix {
            entries: 64,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x2400,
        };
        let r = reserved_for_bar(Some(&m), 0, 0x4000, 0x1000);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].range, Range::new(0x2000, 0x1000));
        assert!(
            r[0].what.contains("table") && r[0].what.contains("PBA"),
            "{}",
            r[0].what
        );

        let m = Msix {
            entries: 2048,
            table_bar: 2,
            table_offset: 0x100,
            pba_bar: 4,
            pba_offset: 0x1ff8,
        };
        let r = reserved_for_bar(Some(&m), 2, 0x10_0000, 0x1000);
        assert_eq!(r.len(), 1);
        // 2048 * 16 = 0x8000 bytes from 0x100 -> pages 0..0x9000.
        assert_eq!(r[0].range, Range::new(0, 0x9000));
        let r = reserved_for_bar(Some(&m), 4, 0x2000, 0x1000);
        // PBA 0x1ff8 + 256 bytes crosses into the next page, clipped at the BAR end.
        assert_eq!(r[0].range, Range::new(0x1000, 0x1000));
        assert!(reserved_for_bar(Some(&m), 0, 0x1000, 0x1000).is_empty());
        assert!(reserved_for_bar(None, 0, 0x1000, 0x1000).is_empty());
    }

    /// An info buffer: the 32-byte fixed part, then the given capabilities.
    fn info_with(caps: &[Vec<u8>]) -> (Vec<u8>, u32) {
        let mut b = vec![0u8; 32];
        let mut offs = Vec::new();
        for c in caps {
            offs.push(b.len());
            b.extend(c);
        }
        for (i, &o) in offs.iter().enumerate() {
            let next = offs.get(i + 1).copied().unwrap_or(0) as u32;
            b[o + 4..o + 8].copy_from_slice(&next.to_le_bytes());
        }
        (b, offs.first().copied().unwrap_or(0) as u32)
    }

    fn sparse_cap(areas: &[(u64, u64)]) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend(1u16.to_le_bytes());
        c.extend(1u16.to_le_bytes());
        c.extend(0u32.to_le_bytes());
        c.extend((areas.len() as u32).to_le_bytes());
        c.extend(0u32.to_le_bytes());
        for (o, s) in areas {
            c.extend(o.to_le_bytes());
            c.extend(s.to_le_bytes());
        }
        c
    }

    fn msix_mappable_cap() -> Vec<u8> {
        let mut c = Vec::new();
        c.extend(3u16.to_le_bytes());
        c.extend(1u16.to_le_bytes());
        c.extend(0u32.to_le_bytes());
        c
    }

    #[test]
    fn parses_sparse_areas_and_msix_mappable() {
        let (b, first) = info_with(&[
            msix_mappable_cap(),
            sparse_cap(&[(0, 0x2000), (0x3000, 0x1000), (0x5000, 0)]),
        ]);
        let caps = parse_region_caps(&b, first).unwrap();
        assert!(caps.msix_mappable);
        // The empty area is dropped.
        assert_eq!(
            caps.sparse,
            Some(vec![Range::new(0, 0x2000), Range::new(0x3000, 0x1000)])
        );

        let (b, first) = info_with(&[msix_mappable_cap()]);
        let caps = parse_region_caps(&b, first).unwrap();
        assert!(caps.msix_mappable);
        assert_eq!(caps.sparse, None);
    }

    #[test]
    fn malformed_chains_are_errors() {
        let (mut b, first) = info_with(&[sparse_cap(&[(0, 0x1000)])]);
        b[first as usize + 8] = 9; // nine areas claimed, one present
        assert_eq!(
            parse_region_caps(&b, first).unwrap_err(),
            Malformed::SparsePastEnd(1)
        );

        let (mut b, first) = info_with(&[msix_mappable_cap()]);
        b[first as usize + 4..first as usize + 8].copy_from_slice(&first.to_le_bytes());
        assert_eq!(
            parse_region_caps(&b, first).unwrap_err(),
            Malformed::CapLoop
        );

        assert_eq!(
            parse_region_caps(&[0u8; 32], 40).unwrap_err(),
            Malformed::CapPastEnd(40)
        );
    }

    fn region(size: u64, flags: u32, sparse: Option<Vec<Range>>) -> Region {
        Region {
            info: VfioRegionInfo {
                size,
                flags,
                ..Default::default()
            },
            sparse,
            msix_mappable: false,
        }
    }

    #[test]
    fn bar_info_takes_sparse_areas_whole_bar_or_nothing() {
        let rw = uapi::VFIO_REGION_INFO_FLAG_READ | uapi::VFIO_REGION_INFO_FLAG_WRITE;
        let mm = rw | uapi::VFIO_REGION_INFO_FLAG_MMAP;
        let cfg = config_with_caps(&[]);
        let b = bar_info(0, &region(0x4000, mm, None), &cfg, None, 0x1000).unwrap();
        assert_eq!(b.mappable, vec![Range::new(0, 0x4000)]);
        assert!(b.mmap && b.readable && b.writable);

        let sparse = vec![Range::new(0, 0x2000)];
        let b = bar_info(
            0,
            &region(0x4000, mm, Some(sparse.clone())),
            &cfg,
            None,
            0x1000,
        )
        .unwrap();
        assert_eq!(b.mappable, sparse);

        let b = bar_info(1, &region(0x4000, rw, None), &cfg, None, 0x1000).unwrap();
        assert!(b.mappable.is_empty() && !b.mmap);

        assert!(bar_info(1, &region(0, mm, None), &cfg, None, 0x1000).is_none());
    }

    #[test]
    fn io_port_bars_are_skipped() {
        let mut cfg = config_with_caps(&[]);
        cfg[0x14] = 0x01; // BAR1 is I/O space
        let rw = uapi::VFIO_REGION_INFO_FLAG_READ | uapi::VFIO_REGION_INFO_FLAG_WRITE;
        assert!(bar_info(1, &region(0x20, rw, None), &cfg, None, 0x1000).is_none());
        assert!(bar_info(0, &region(0x20, rw, None), &cfg, None, 0x1000).is_some());
    }

    #[test]
    fn bar_info_carries_the_msix_reservation() {
        let m = Msix {
            entries: 64,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        };
        let mm = uapi::VFIO_REGION_INFO_FLAG_READ | uapi::VFIO_REGION_INFO_FLAG_MMAP;
        let b = bar_info(
            0,
            &region(0x4000, mm, None),
            &config_with_caps(&[]),
            Some(&m),
            0x1000,
        )
        .unwrap();
        let got: Vec<Range> = b.reserved.iter().map(|r| r.range).collect();
        assert_eq!(
            got,
            vec![Range::new(0x2000, 0x1000), Range::new(0x3000, 0x1000)]
        );
    }
}
