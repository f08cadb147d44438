//! Real VFIO PCI devices: the only place in barkeep that issues VFIO ioctls.
//!
//! - [`uapi`]: kernel structures, ioctl numbers, one thin safe fn per ioctl;
//! - [`error`]: why a device could not be set up ([`error::SetupError`]);
//! - [`sysfs`]: PCI address -> IOMMU group, cdev, driver; binding to vfio-pci;
//! - [`owner`]: group + container or cdev + iommufd ownership;
//! - [`regions`]: BARs, sparse-mmap areas and the MSI-X table and PBA;
//! - [`probe`]: what the kernel can do, found by behaviour (feature numbers
//!   included);
//! - [`device`]: the [`Device`] itself: export, revoke, peek/poke.

pub mod device;
pub mod error;
pub mod owner;
pub mod probe;
// Tests on real hardware map BARs and fork children.
#[cfg(test)]
#[allow(unsafe_code)]
mod realtest;
pub mod regions;
pub mod sysfs;
// The ioctl wrappers: with `crate::sys`, the only place allowed `unsafe`.
#[allow(unsafe_code)]
pub mod uapi;

use super::Device;
use std::path::Path;

/// How to own the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ownership {
    /// cdev + iommufd when the host has it, else group + container.
    #[default]
    Auto,
    /// Legacy /dev/vfio/GROUP + /dev/vfio/vfio container.
    Group,
    /// /dev/vfio/devices/vfioN + /dev/iommu (iommufd).
    Cdev,
}

/// VFIO_DEVICE_FEATURE numbers. The proposed REVOKE and MEMATTR numbers are
/// not final upstream, so they are configurable (`[kernel]` in the config),
/// and searched for by behaviour when the configured ones do not behave (see
/// [`probe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureNumbers {
    /// VFIO_DEVICE_FEATURE_DMA_BUF (mainline: 11).
    pub dma_buf: u32,
    /// Proposed VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE (test kernel: 14;
    /// [`FeatureNumbers::OFF`]: never used).
    pub revoke: u32,
    /// Proposed VFIO_DEVICE_FEATURE_DMA_BUF_MEMATTR (test kernel: 15;
    /// [`FeatureNumbers::OFF`]: never used).
    pub memattr: u32,
    /// Search other numbers when `revoke` or `memattr` does not behave as
    /// that feature (`[kernel] search_features`, default true).
    pub search: bool,
}

impl FeatureNumbers {
    /// A REVOKE or MEMATTR number of 0 turns the feature off: barkeep
    /// neither uses nor searches for it. 0 is VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
    /// so it can never be either feature.
    pub const OFF: u32 = 0;
}

impl Default for FeatureNumbers {
    fn default() -> Self {
        FeatureNumbers {
            dma_buf: 11,
            revoke: 14,
            memattr: 15,
            search: true,
        }
    }
}

/// Everything the config says about one `pci = "..."` device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioOptions {
    /// PCI address, "0000:bb:dd.f".
    pub pci: String,
    /// Ownership path (`vfio = "group" | "cdev"`, default auto).
    pub ownership: Ownership,
    /// Allow a NOIOMMU container (`noiommu = true`).
    pub noiommu: bool,
    /// Bind the device to vfio-pci at start-up (`bind = true`).
    pub bind: bool,
    /// Feature numbers (from `[kernel]`).
    pub features: FeatureNumbers,
}

/// Opens (and probes) a VFIO device. Never fails: a device that cannot be
/// used is returned with [`barkeep_protocol::DeviceInfo::problem`] set and
/// refuses every export, so `barkeep status` can say why.
pub fn open(name: &str, opts: &VfioOptions) -> Box<dyn Device> {
    Box::new(device::VfioDevice::open_at(
        name,
        opts,
        Path::new("/sys"),
        Path::new("/dev"),
    ))
}

/// Like [`open`], taking the device over from an earlier daemon's fds
/// (`fds` by kind, `data` as `Device::restore_data` gave it) so that the
/// buffers it exported stay alive.
pub fn restore(
    name: &str,
    opts: &VfioOptions,
    fds: std::collections::BTreeMap<String, std::os::fd::OwnedFd>,
    data: Option<&str>,
) -> Box<dyn Device> {
    let ioas = data
        .and_then(|d| d.strip_prefix("ioas="))
        .and_then(|n| n.parse().ok());
    Box::new(device::VfioDevice::restore_at(
        name,
        opts,
        Path::new("/sys"),
        Path::new("/dev"),
        Some(device::StoredOwner { fds, ioas }),
    ))
}
