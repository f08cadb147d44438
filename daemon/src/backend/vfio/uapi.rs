//! The kernel uAPI barkeep uses: `#[repr(C)]` structures, every ioctl number,
//! and one thin safe function per ioctl. Nothing else in barkeep spells an
//! ioctl number or calls `ioctl(2)`.
//!
//! Sources: include/uapi/linux/vfio.h, iommufd.h and dma-buf.h of Linux 7.3,
//! plus the proposed DMABUF REVOKE/MEMATTR features (whose numbers are not
//! final: they come from [`super::FeatureNumbers`], never from here).

use std::ffi::CStr;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

// ---- ioctl numbers: nix's request-code macros encode them for the target
// architecture (the layout tests below pin the x86_64/arm64 values) ----

/// An ioctl request number, as `ioctl(2)` takes it on this target.
type Request = nix::sys::ioctl::ioctl_num_type;

/// `_IO(ty, nr)`.
const fn io(ty: u8, nr: u32) -> Request {
    nix::request_code_none!(ty, nr)
}

// ---- VFIO (linux/vfio.h) ----

/// `VFIO_TYPE`.
const VFIO_TYPE: u8 = b';';
/// `VFIO_BASE`.
const VFIO_BASE: u32 = 100;

/// `VFIO_API_VERSION`, answered by `VFIO_GET_API_VERSION`.
pub const VFIO_API_VERSION: i32 = 0;
/// `VFIO_TYPE1v2_IOMMU` container type.
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
/// `VFIO_NOIOMMU_IOMMU` container type (no isolation at all).
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;

const VFIO_GET_API_VERSION: Request = io(VFIO_TYPE, VFIO_BASE);
const VFIO_CHECK_EXTENSION: Request = io(VFIO_TYPE, VFIO_BASE + 1);
const VFIO_SET_IOMMU: Request = io(VFIO_TYPE, VFIO_BASE + 2);
const VFIO_GROUP_GET_STATUS: Request = io(VFIO_TYPE, VFIO_BASE + 3);
const VFIO_GROUP_SET_CONTAINER: Request = io(VFIO_TYPE, VFIO_BASE + 4);
const VFIO_GROUP_GET_DEVICE_FD: Request = io(VFIO_TYPE, VFIO_BASE + 6);
const VFIO_DEVICE_GET_INFO: Request = io(VFIO_TYPE, VFIO_BASE + 7);
const VFIO_DEVICE_GET_REGION_INFO: Request = io(VFIO_TYPE, VFIO_BASE + 8);
const VFIO_DEVICE_FEATURE: Request = io(VFIO_TYPE, VFIO_BASE + 17);
const VFIO_DEVICE_BIND_IOMMUFD: Request = io(VFIO_TYPE, VFIO_BASE + 18);
const VFIO_DEVICE_ATTACH_IOMMUFD_PT: Request = io(VFIO_TYPE, VFIO_BASE + 19);

/// `VFIO_GROUP_FLAGS_VIABLE`: every device of the group is bound to a VFIO
/// driver (or unbound).
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;

/// `VFIO_DEVICE_FLAGS_PCI`.
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// `VFIO_REGION_INFO_FLAG_READ`.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_REGION_INFO_FLAG_CAPS`: a capability chain follows at `cap_offset`.
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

/// `VFIO_PCI_BAR5_REGION_INDEX`: BARs are regions 0..=5.
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

/// `VFIO_DEVICE_FEATURE_MASK`: the feature number part of `flags`.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
/// `VFIO_DEVICE_FEATURE_GET`.
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
/// `VFIO_DEVICE_FEATURE_SET`.
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
/// `VFIO_DEVICE_FEATURE_PROBE`.
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;

/// Proposed `VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_NC` (uncached, the default).
pub const DMA_BUF_MEMATTR_NC: u32 = 0;
/// Proposed `VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR_WC` (write-combining).
pub const DMA_BUF_MEMATTR_WC: u32 = 1;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioGroupStatus {
    pub argsz: u32,
    pub flags: u32,
}

/// `struct vfio_device_info` (the fields of Linux 4.x onwards).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfioRegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `struct vfio_info_cap_header` (parsed from bytes; kept for its layout test).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioInfoCapHeader {
    pub id: u16,
    pub version: u16,
    /// Offset of the next capability from the start of the info buffer; 0 ends.
    pub next: u32,
}

/// `struct vfio_region_sparse_mmap_area`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioRegionSparseMmapArea {
    pub offset: u64,
    pub size: u64,
}

/// `struct vfio_region_info_cap_sparse_mmap` without its flexible `areas[]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioRegionInfoCapSparseMmap {
    pub header: VfioInfoCapHeader,
    pub nr_areas: u32,
    pub reserved: u32,
}

/// `struct vfio_device_bind_iommufd` (the Linux 6.6 fields; the kernel
/// accepts this `argsz` as its minimum).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceBindIommufd {
    pub argsz: u32,
    pub flags: u32,
    pub iommufd: i32,
    pub out_devid: u32,
}

/// `struct vfio_device_attach_iommufd_pt` (the Linux 6.6 fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceAttachIommufdPt {
    pub argsz: u32,
    pub flags: u32,
    pub pt_id: u32,
}

/// `struct vfio_device_feature` with its payload: the kernel's `argsz`
/// counts the 8-byte header plus the payload.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VfioDeviceFeature<T> {
    pub argsz: u32,
    pub flags: u32,
    pub data: T,
}

/// `struct vfio_region_dma_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioRegionDmaRange {
    pub offset: u64,
    pub length: u64,
}

/// `struct vfio_device_feature_dma_buf` with exactly one range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceFeatureDmaBuf1 {
    pub region_index: u32,
    pub open_flags: u32,
    pub flags: u32,
    pub nr_ranges: u32,
    pub dma_ranges: [VfioRegionDmaRange; 1],
}

/// Proposed `struct vfio_device_feature_dma_buf_revoke`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceFeatureDmaBufRevoke {
    pub dmabuf_fd: i32,
}

/// Proposed `struct vfio_device_feature_dma_buf_memattr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfioDeviceFeatureDmaBufMemattr {
    pub dmabuf_fd: i32,
    pub memattr: u32,
}

/// No payload (used with `VFIO_DEVICE_FEATURE_PROBE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPayload;

// ---- iommufd (linux/iommufd.h) ----

const IOMMUFD_TYPE: u8 = b';';
const IOMMUFD_CMD_IOAS_ALLOC: u32 = 0x81;
const IOMMU_IOAS_ALLOC: Request = io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuIoasAlloc {
    pub size: u32,
    pub flags: u32,
    pub out_ioas_id: u32,
}

// ---- dma-buf (linux/dma-buf.h) ----

const DMA_BUF_BASE: u8 = b'b';
/// `DMA_BUF_SET_NAME_B`: `_IOW('b', 1, __u64)`; the argument is a pointer to
/// a NUL-terminated name. (The `_A` variant encodes a 32-bit size; the kernel
/// accepts both, and on 64-bit `DMA_BUF_SET_NAME` equals `_B`.)
const DMA_BUF_SET_NAME_B: Request = nix::request_code_write!(DMA_BUF_BASE, 1, size_of::<u64>());

/// `DMA_BUF_NAME_LEN`: the kernel keeps at most this many bytes, NUL included.
pub const DMA_BUF_NAME_LEN: usize = 32;

// ---- thin safe wrappers, one per ioctl ----

/// Payloads that may ride in `VFIO_DEVICE_FEATURE`: plain `#[repr(C)]` data
/// the kernel only reads.
pub trait FeaturePayload: Copy + sealed::Sealed {}
mod sealed {
    pub trait Sealed {}
}
macro_rules! payload {
    ($($t:ty),*) => {$(impl sealed::Sealed for $t {} impl FeaturePayload for $t {})*};
}
payload!(
    NoPayload,
    VfioDeviceFeatureDmaBuf1,
    VfioDeviceFeatureDmaBufRevoke,
    VfioDeviceFeatureDmaBufMemattr
);

/// `ioctl(fd, request, arg)` for a request that takes a pointer.
///
/// # Safety
/// `request` must be an ioctl whose argument is a `T` (or, for a
/// variable-sized argument, starts with one and `arg` points at enough
/// bytes), and `arg` must point at a live, writable `T` for the whole call.
/// The kernel never keeps the pointer.
unsafe fn ioctl_ptr<T>(fd: BorrowedFd<'_>, request: Request, arg: *mut T) -> nix::Result<i32> {
    // SAFETY: the caller upholds the contract above.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    Errno::result(ret)
}

/// `ioctl(fd, request, arg)` for a request that takes an integer.
///
/// # Safety
/// `request` must be an ioctl whose argument is an integer, not a pointer
/// (else the kernel would read or write memory at address `arg`).
unsafe fn ioctl_val(fd: BorrowedFd<'_>, request: Request, arg: libc::c_ulong) -> nix::Result<i32> {
    // SAFETY: the caller upholds the contract above.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    Errno::result(ret)
}

/// `VFIO_GET_API_VERSION` on the container.
pub fn get_api_version(container: BorrowedFd<'_>) -> nix::Result<i32> {
    // SAFETY: VFIO_GET_API_VERSION takes an integer argument.
    unsafe { ioctl_val(container, VFIO_GET_API_VERSION, 0) }
}

/// `VFIO_CHECK_EXTENSION`: whether the container offers an IOMMU type.
pub fn check_extension(container: BorrowedFd<'_>, iommu_type: u32) -> nix::Result<bool> {
    // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument.
    unsafe { ioctl_val(container, VFIO_CHECK_EXTENSION, iommu_type.into()) }.map(|r| r > 0)
}

/// `VFIO_SET_IOMMU` on the container (after a group was added).
pub fn set_iommu(container: BorrowedFd<'_>, iommu_type: u32) -> nix::Result<()> {
    // SAFETY: VFIO_SET_IOMMU takes an integer argument.
    unsafe { ioctl_val(container, VFIO_SET_IOMMU, iommu_type.into()) }.map(drop)
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags.
pub fn group_get_status(group: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut status = VfioGroupStatus {
        argsz: size_of::<VfioGroupStatus>() as u32,
        flags: 0,
    };
    // SAFETY: VFIO_GROUP_GET_STATUS takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(group, VFIO_GROUP_GET_STATUS, &mut status) }?;
    Ok(status.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`.
pub fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> nix::Result<()> {
    let mut fd: i32 = container.as_raw_fd();
    // SAFETY: VFIO_GROUP_SET_CONTAINER takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(group, VFIO_GROUP_SET_CONTAINER, &mut fd) }.map(drop)
}

/// `VFIO_GROUP_GET_DEVICE_FD` for a device name ("0000:00:03.0").
pub fn group_get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    // SAFETY: VFIO_GROUP_GET_DEVICE_FD takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    let fd = unsafe { ioctl_ptr(group, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr().cast_mut()) }?;
    // SAFETY: on success the ioctl returns a new file descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `VFIO_DEVICE_BIND_IOMMUFD`: binds a cdev device fd to an iommufd; returns
/// the device id.
pub fn device_bind_iommufd(device: BorrowedFd<'_>, iommufd: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut bind = VfioDeviceBindIommufd {
        argsz: size_of::<VfioDeviceBindIommufd>() as u32,
        flags: 0,
        iommufd: iommufd.as_raw_fd(),
        out_devid: 0,
    };
    // SAFETY: VFIO_DEVICE_BIND_IOMMUFD takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_BIND_IOMMUFD, &mut bind) }?;
    Ok(bind.out_devid)
}

/// `IOMMU_IOAS_ALLOC`: a new I/O address space; returns its id.
pub fn iommu_ioas_alloc(iommufd: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut alloc = IommuIoasAlloc {
        size: size_of::<IommuIoasAlloc>() as u32,
        flags: 0,
        out_ioas_id: 0,
    };
    // SAFETY: IOMMU_IOAS_ALLOC takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(iommufd, IOMMU_IOAS_ALLOC, &mut alloc) }?;
    Ok(alloc.out_ioas_id)
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attaches the device to an IOAS or HWPT.
pub fn device_attach_iommufd_pt(device: BorrowedFd<'_>, pt_id: u32) -> nix::Result<()> {
    let mut attach = VfioDeviceAttachIommufdPt {
        argsz: size_of::<VfioDeviceAttachIommufdPt>() as u32,
        flags: 0,
        pt_id,
    };
    // SAFETY: VFIO_DEVICE_ATTACH_IOMMUFD_PT takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut attach) }.map(drop)
}

/// `VFIO_DEVICE_GET_INFO`.
pub fn device_get_info(device: BorrowedFd<'_>) -> nix::Result<VfioDeviceInfo> {
    let mut info = VfioDeviceInfo {
        argsz: size_of::<VfioDeviceInfo>() as u32,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_INFO takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_GET_INFO, &mut info) }?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO`, with the capability chain: returns the
/// fixed part and the whole info buffer (fixed part + capabilities), so that
/// `cap_offset` and each `next` index into the returned bytes.
pub fn device_get_region_info(
    device: BorrowedFd<'_>,
    index: u32,
) -> nix::Result<(VfioRegionInfo, Vec<u8>)> {
    const FIXED: usize = size_of::<VfioRegionInfo>();
    let mut argsz = FIXED;
    // The kernel says how much room the chain needs by raising argsz; retry
    // once with that much (twice in case it grew, which it does not today).
    for _ in 0..3 {
        // u64 words keep the buffer aligned for `VfioRegionInfo`.
        let mut buf = vec![0u64; argsz.div_ceil(8)];
        let head = VfioRegionInfo {
            argsz: argsz as u32,
            index,
            ..Default::default()
        };
        let head_ptr = buf.as_mut_ptr().cast::<VfioRegionInfo>();
        // SAFETY: `buf` is 8-byte aligned and at least FIXED bytes long.
        unsafe { head_ptr.write(head) };
        // SAFETY: VFIO_DEVICE_GET_REGION_INFO takes a pointer to the argument given (layout tests
        // below), which lives across the call.
        unsafe { ioctl_ptr(device, VFIO_DEVICE_GET_REGION_INFO, head_ptr) }?;
        // SAFETY: as above; the kernel filled in the fixed part.
        let info = unsafe { head_ptr.read() };
        let wanted = info.argsz as usize;
        if info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && wanted > argsz {
            argsz = wanted;
            continue;
        }
        let bytes: Vec<u8> = buf
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(argsz)
            .collect();
        return Ok((info, bytes));
    }
    Err(Errno::EMSGSIZE)
}

/// `VFIO_DEVICE_FEATURE` with a payload; returns the ioctl's value (a new fd
/// for the DMA_BUF GET, else 0).
pub fn device_feature<T: FeaturePayload>(
    device: BorrowedFd<'_>,
    flags: u32,
    data: T,
) -> nix::Result<i32> {
    let mut arg = VfioDeviceFeature {
        argsz: size_of::<VfioDeviceFeature<T>>() as u32,
        flags,
        data,
    };
    // SAFETY: VFIO_DEVICE_FEATURE takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(device, VFIO_DEVICE_FEATURE, &mut arg) }
}

/// `VFIO_DEVICE_FEATURE` GET of the DMA_BUF feature: a new DMABUF fd.
pub fn device_feature_dma_buf(
    device: BorrowedFd<'_>,
    feature: u32,
    data: VfioDeviceFeatureDmaBuf1,
) -> nix::Result<OwnedFd> {
    let fd = device_feature(device, VFIO_DEVICE_FEATURE_GET | feature, data)?;
    // SAFETY: on success the DMA_BUF feature returns a new file descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `DMA_BUF_SET_NAME` on a DMABUF fd.
pub fn dma_buf_set_name(dmabuf: impl AsFd, name: &CStr) -> nix::Result<()> {
    // SAFETY: DMA_BUF_SET_NAME_B takes a pointer to the argument given (layout tests
    // below), which lives across the call.
    unsafe { ioctl_ptr(dmabuf.as_fd(), DMA_BUF_SET_NAME_B, name.as_ptr().cast_mut()) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of};

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values computed by the C preprocessor from Linux 7.3's headers.
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_FEATURE, 0x3b75);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
        assert_eq!(IOMMU_IOAS_ALLOC, 0x3b81);
        assert_eq!(DMA_BUF_SET_NAME_B, 0x4008_6201);
    }

    #[test]
    fn vfio_structs_have_the_kernel_layout() {
        assert_eq!(size_of::<VfioGroupStatus>(), 8);
        assert_eq!(size_of::<VfioDeviceInfo>(), 24);
        assert_eq!(offset_of!(VfioDeviceInfo, num_regions), 8);
        assert_eq!(offset_of!(VfioDeviceInfo, cap_offset), 16);

        assert_eq!(size_of::<VfioRegionInfo>(), 32);
        assert_eq!(offset_of!(VfioRegionInfo, index), 8);
        assert_eq!(offset_of!(VfioRegionInfo, cap_offset), 12);
        assert_eq!(offset_of!(VfioRegionInfo, size), 16);
        assert_eq!(offset_of!(VfioRegionInfo, offset), 24);

        assert_eq!(size_of::<VfioInfoCapHeader>(), 8);
        assert_eq!(offset_of!(VfioInfoCapHeader, next), 4);
        assert_eq!(size_of::<VfioRegionSparseMmapArea>(), 16);
        assert_eq!(size_of::<VfioRegionInfoCapSparseMmap>(), 16);
        assert_eq!(offset_of!(VfioRegionInfoCapSparseMmap, nr_areas), 8);

        assert_eq!(size_of::<VfioDeviceBindIommufd>(), 16);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, iommufd), 8);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, out_devid), 12);
        assert_eq!(size_of::<VfioDeviceAttachIommufdPt>(), 12);
        assert_eq!(offset_of!(VfioDeviceAttachIommufdPt, pt_id), 8);
        assert_eq!(size_of::<IommuIoasAlloc>(), 12);
        assert_eq!(offset_of!(IommuIoasAlloc, out_ioas_id), 8);
    }

    #[test]
    fn feature_payloads_have_the_kernel_layout() {
        assert_eq!(size_of::<VfioDeviceFeature<NoPayload>>(), 8);
        assert_eq!(size_of::<VfioRegionDmaRange>(), 16);
        assert_eq!(size_of::<VfioDeviceFeatureDmaBuf1>(), 32);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBuf1, open_flags), 4);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBuf1, nr_ranges), 12);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBuf1, dma_ranges), 16);
        // The payload follows the 8-byte header directly: no padding.
        type Export = VfioDeviceFeature<VfioDeviceFeatureDmaBuf1>;
        assert_eq!(offset_of!(Export, data), 8);
        assert_eq!(size_of::<Export>(), 40);
        assert_eq!(align_of::<Export>(), 8);

        assert_eq!(size_of::<VfioDeviceFeatureDmaBufRevoke>(), 4);
        assert_eq!(
            size_of::<VfioDeviceFeature<VfioDeviceFeatureDmaBufRevoke>>(),
            12
        );
        assert_eq!(size_of::<VfioDeviceFeatureDmaBufMemattr>(), 8);
        assert_eq!(offset_of!(VfioDeviceFeatureDmaBufMemattr, memattr), 4);
        assert_eq!(
            size_of::<VfioDeviceFeature<VfioDeviceFeatureDmaBufMemattr>>(),
            16
        );
    }

    #[test]
    fn feature_flags_match_the_kernel_headers() {
        assert_eq!(VFIO_DEVICE_FEATURE_GET, 0x1_0000);
        assert_eq!(VFIO_DEVICE_FEATURE_SET, 0x2_0000);
        assert_eq!(VFIO_DEVICE_FEATURE_PROBE, 0x4_0000);
        assert_eq!(VFIO_DEVICE_FEATURE_MASK, 0xffff);
    }
}
