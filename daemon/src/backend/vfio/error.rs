//! Why a VFIO device could not be set up: one typed error for the sysfs,
//! ownership and region steps, each variant with the explanation and the
//! remedy an operator sees in `barkeep status` and the log.
//!
//! A setup error makes the device unusable (its *problem*); the daemon keeps
//! serving its other devices. Variants carry what the message needs, so that
//! tests and callers can match on the cause instead of parsing text.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use super::sysfs::VFIO_PCI;

/// A device's driver binding, as the messages describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Bound to this driver.
    Driver(String),
    /// Bound to no driver.
    Unbound,
}

impl Binding {
    /// From sysfs's `driver` link name.
    pub fn of(driver: Option<String>) -> Binding {
        driver.map_or(Binding::Unbound, Binding::Driver)
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Binding::Driver(d) => write!(f, "bound to {d}"),
            Binding::Unbound => f.write_str("not bound to any driver"),
        }
    }
}

/// What `open(2)` of a VFIO or iommufd node most likely ran into.
fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) => " (in use by another process: another barkeepd, or a VM?)",
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (barkeepd must run as root, or as the owner of this node)"
        }
        _ => "",
    }
}

/// Why a VFIO device could not be found, bound, owned or described.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configured PCI address is malformed.
    #[error("PCI address {0:?} is not of the form 0000:bb:dd.f (see `lspci -D`)")]
    BadAddress(String),
    /// No such device in sysfs.
    #[error("no PCI device {bdf} on this host ({} does not exist; check the address with `lspci -D`)", dir.display())]
    NoDevice {
        /// Normalised address.
        bdf: String,
        /// The sysfs directory that is missing.
        dir: PathBuf,
    },
    /// Not bound to vfio-pci, and the config does not let barkeepd bind it.
    #[error(
        "{bdf} is {now}, not {VFIO_PCI}; bind it (echo {VFIO_PCI} > {dir}/driver_override; \
         echo {bdf} > {dir}/driver/unbind; echo {bdf} > {root}/bus/pci/drivers_probe) \
         or set `bind = true` for this device",
        dir = dir.display(),
        root = root.display()
    )]
    NotBound {
        /// Normalised address.
        bdf: String,
        /// Its binding now.
        now: Binding,
        /// Its sysfs directory.
        dir: PathBuf,
        /// The sysfs root.
        root: PathBuf,
    },
    /// A step of binding to vfio-pci failed.
    #[error("binding {bdf} to {VFIO_PCI} ({now}): {step} failed: writing {value:?} to {}: {source}", path.display())]
    Bind {
        /// Normalised address.
        bdf: String,
        /// Its binding before.
        now: Binding,
        /// `driver_override`, `unbind` or `drivers_probe`.
        step: &'static str,
        /// What was written.
        value: String,
        /// Where.
        path: PathBuf,
        /// The write's error.
        source: io::Error,
    },
    /// The device is still not on vfio-pci after reprobing.
    #[error("binding {bdf} to {VFIO_PCI}: after reprobing it is {now} (is vfio-pci built in or loaded? `modprobe vfio-pci`)")]
    StillNotBound {
        /// Normalised address.
        bdf: String,
        /// Its binding after the reprobe.
        now: Binding,
    },
    /// No IOMMU group: the IOMMU is off.
    #[error(
        "{0} has no IOMMU group: turn the IOMMU on (intel_iommu=on or amd_iommu=on) \
         or, without isolation, enable vfio.enable_unsafe_noiommu_mode and set `noiommu = true`"
    )]
    NoIommuGroup(String),
    /// A no-IOMMU group that the config does not accept.
    #[error("{bdf} is in no-IOMMU group {group} (no DMA isolation); set `noiommu = true` for this device to accept that")]
    NoIommuRefused {
        /// Normalised address.
        bdf: String,
        /// Its group.
        group: u32,
    },
    /// Neither a group node nor a cdev exists.
    #[error("{bdf}: neither {}/vfio/{group} nor a cdev exists; is the device bound to vfio-pci?", devfs.display())]
    NoNode {
        /// Normalised address.
        bdf: String,
        /// The /dev root.
        devfs: PathBuf,
        /// Its group.
        group: u32,
    },
    /// `vfio = "cdev"` without a cdev.
    #[error(
        "{bdf} has no VFIO cdev under {}/vfio/devices (`vfio = \"cdev\"` needs CONFIG_VFIO_DEVICE_CDEV, Linux >= 6.6); \
         use `vfio = \"group\"`",
        devfs.display()
    )]
    NoCdev {
        /// Normalised address.
        bdf: String,
        /// The /dev root.
        devfs: PathBuf,
    },
    /// `vfio = "cdev"` without /dev/iommu.
    #[error("{}/iommu does not exist (`vfio = \"cdev\"` needs CONFIG_IOMMUFD); use `vfio = \"group\"`", devfs.display())]
    NoIommufd {
        /// The /dev root.
        devfs: PathBuf,
    },
    /// Opening a VFIO or iommufd node failed.
    #[error("opening {}: {source}{}", path.display(), open_hint(source))]
    Open {
        /// The node.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{what}: {} ({errno})", errno.desc())]
    Ioctl {
        /// Which ioctl, on what.
        what: String,
        /// Its errno.
        errno: Errno,
    },
    /// The container speaks another VFIO API.
    #[error("VFIO API version {0} is not {api}", api = super::uapi::VFIO_API_VERSION)]
    ApiVersion(i32),
    /// The container lacks the IOMMU type needed.
    #[error("{}", if *noiommu {
        "the VFIO container does not offer NOIOMMU (load vfio with enable_unsafe_noiommu_mode=1)"
    } else {
        "the VFIO container does not offer the TYPE1v2 IOMMU (is vfio_iommu_type1 loaded?)"
    })]
    IommuType {
        /// Whether NOIOMMU was asked for.
        noiommu: bool,
    },
    /// Another device of the group is on a host driver.
    #[error(
        "IOMMU group {0} is not viable: every device in it must be bound to vfio-pci \
         or to no driver (see /sys/kernel/iommu_groups/{0}/devices)"
    )]
    NotViable(u32),
    /// The address cannot be passed to the kernel.
    #[error("PCI address {0:?} contains a NUL")]
    NulInAddress(String),
    /// A takeover's stored fds lack one.
    #[error("no stored {0} fd")]
    MissingStoredFd(&'static str),
    /// A takeover of a cdev device without its IOAS id.
    #[error("the state file does not say which IOAS the device is attached to")]
    NoStoredIoas,
    /// VFIO_DEVICE_GET_INFO says this is not a PCI device.
    #[error("{bdf} is not a vfio-pci device (flags {flags:#x})")]
    NotPci {
        /// Normalised address.
        bdf: String,
        /// The device's flags.
        flags: u32,
    },
    /// The kernel cannot export DMABUFs at all.
    #[error(
        "kernel lacks VFIO_DEVICE_FEATURE_DMA_BUF (Linux >= 6.19 with CONFIG_VFIO_PCI_DMABUF)"
    )]
    NoDmaBuf,
    /// DMA_BUF is offered, but a test export of one page failed.
    #[error(
        "VFIO_DEVICE_FEATURE_DMA_BUF is offered but exporting one page of bar {bar} failed ({}); \
         the kernel cannot export this device's BARs (needs CONFIG_PCI_P2PDMA)",
        errno.desc()
    )]
    ExportFails {
        /// The BAR tried.
        bar: u32,
        /// The export's errno.
        errno: Errno,
    },
    /// Reading config space failed.
    #[error("reading PCI config space: {}", .0.desc())]
    Config(Errno),
    /// Config space or a region's capability chain is malformed.
    #[error("{0}")]
    Malformed(#[from] Malformed),
}

impl SetupError {
    /// An ioctl's failure, for `map_err`.
    pub fn ioctl(what: impl std::fmt::Display) -> impl FnOnce(Errno) -> SetupError {
        move |errno| SetupError::Ioctl {
            what: what.to_string(),
            errno,
        }
    }
}

/// A malformed structure the kernel or the device handed over: reported,
/// never trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A region's capability chain loops.
    #[error("region capability chain loops")]
    CapLoop,
    /// A capability header lies past the info buffer.
    #[error("region capability at {0:#x} is past the info buffer")]
    CapPastEnd(usize),
    /// A sparse-mmap capability is cut short.
    #[error("sparse-mmap capability at {0:#x} is truncated")]
    SparseTruncated(usize),
    /// A sparse-mmap area lies past the info buffer.
    #[error("sparse-mmap area {0} is past the info buffer")]
    SparsePastEnd(usize),
    /// A region's chain, with its index.
    #[error("region {index}: {cause}")]
    Region {
        /// The region.
        index: u32,
        /// What is wrong.
        cause: Box<Malformed>,
    },
    /// Config space is shorter than its header.
    #[error("config space is shorter than its header")]
    ConfigShort,
    /// The PCI capability list loops or points into the header.
    #[error("PCI capability list is malformed (pointer {0:#x})")]
    CapList(usize),
    /// A PCI capability lies past config space.
    #[error("PCI capability at {0:#x} is past config space")]
    PciCapPastEnd(usize),
    /// The MSI-X capability is cut short.
    #[error("MSI-X capability at {0:#x} is truncated")]
    MsixTruncated(usize),
    /// Without the MSI-X table's place, no slice is safe.
    #[error(
        "{0}: cannot tell where the MSI-X table is, so no slice of this device is safe to grant"
    )]
    NoMsixPlace(Box<Malformed>),
}
