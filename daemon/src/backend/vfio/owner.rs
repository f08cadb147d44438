//! Owning a VFIO device: group + container (TYPE1v2, or NOIOMMU when the
//! config allows it) or cdev + iommufd, reopening the device fd for a
//! device-wide revoke, and handing the fds to a successor (or taking them
//! from a predecessor) across a restart.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::error::SetupError;
use super::sysfs::{self, PciDevice};
use super::{uapi, Ownership};

/// How a device is reached, decided from the config and what the host has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// /dev/vfio/GROUP (or /dev/vfio/noiommu-GROUP) + /dev/vfio/vfio.
    Group {
        /// Group number.
        group: u32,
        /// Use a NOIOMMU container (no isolation).
        noiommu: bool,
    },
    /// /dev/vfio/devices/NAME + /dev/iommu.
    Cdev {
        /// cdev name ("vfio0").
        name: String,
    },
}

impl Method {
    /// How `barkeep devices` shows it.
    pub fn label(&self) -> &'static str {
        match self {
            Method::Group { noiommu: false, .. } => "group",
            Method::Group { noiommu: true, .. } => "group-noiommu",
            Method::Cdev { .. } => "cdev",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Group {
                group,
                noiommu: false,
            } => {
                write!(f, "group {group} (/dev/vfio/{group}, TYPE1v2 container)")
            }
            Method::Group {
                group,
                noiommu: true,
            } => {
                write!(
                    f,
                    "no-IOMMU group {group} (/dev/vfio/noiommu-{group}, NOIOMMU container)"
                )
            }
            Method::Cdev { name } => {
                write!(f, "cdev /dev/vfio/devices/{name} with iommufd /dev/iommu")
            }
        }
    }
}

/// Chooses the ownership path. `Auto` takes cdev + iommufd when both nodes
/// exist, else the group.
pub fn choose(
    dev: &PciDevice,
    devfs: &Path,
    ownership: Ownership,
    allow_noiommu: bool,
) -> Result<Method, SetupError> {
    let cdev = dev
        .vfio_cdev()
        .filter(|n| sysfs::exists(&devfs.join("vfio/devices").join(n)));
    let iommufd = sysfs::exists(&devfs.join("iommu"));
    let group = || -> Result<Method, SetupError> {
        let Some(g) = dev.iommu_group() else {
            return Err(SetupError::NoIommuGroup(dev.bdf.clone()));
        };
        if sysfs::exists(&devfs.join("vfio").join(g.to_string())) {
            return Ok(Method::Group {
                group: g,
                noiommu: false,
            });
        }
        if sysfs::exists(&devfs.join(format!("vfio/noiommu-{g}"))) {
            if allow_noiommu {
                return Ok(Method::Group {
                    group: g,
                    noiommu: true,
                });
            }
            return Err(SetupError::NoIommuRefused {
                bdf: dev.bdf.clone(),
                group: g,
            });
        }
        Err(SetupError::NoNode {
            bdf: dev.bdf.clone(),
            devfs: devfs.to_path_buf(),
            group: g,
        })
    };
    match ownership {
        Ownership::Group => group(),
        Ownership::Cdev => match (cdev, iommufd) {
            (Some(name), true) => Ok(Method::Cdev { name }),
            (None, _) => Err(SetupError::NoCdev {
                bdf: dev.bdf.clone(),
                devfs: devfs.to_path_buf(),
            }),
            (Some(_), false) => Err(SetupError::NoIommufd {
                devfs: devfs.to_path_buf(),
            }),
        },
        Ownership::Auto => match (cdev, iommufd) {
            (Some(name), true) => Ok(Method::Cdev { name }),
            _ => group(),
        },
    }
}

/// What keeps the device's IOMMU context alive besides the device fd.
#[derive(Debug)]
enum Context {
    Group {
        /// Closing the container drops the IOMMU context: keep it first.
        _container: OwnedFd,
        group: OwnedFd,
    },
    Cdev {
        iommufd: OwnedFd,
        ioas: u32,
        path: PathBuf,
    },
}

/// An owned device: its fd and the files that keep it usable.
#[derive(Debug)]
pub struct Owner {
    /// The device fd (never leaves the daemon).
    pub device: OwnedFd,
    context: Context,
    bdf: String,
}

fn open_rw(path: &Path) -> Result<OwnedFd, SetupError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| SetupError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn errno(what: impl std::fmt::Display) -> impl FnOnce(Errno) -> SetupError {
    SetupError::ioctl(what)
}

impl Owner {
    /// Opens the device by `method`.
    pub fn open(devfs: &Path, bdf: &str, method: &Method) -> Result<Owner, SetupError> {
        match method {
            Method::Group { group, noiommu } => {
                let container = open_rw(&devfs.join("vfio/vfio"))?;
                let version = uapi::get_api_version(container.as_fd())
                    .map_err(errno("VFIO_GET_API_VERSION"))?;
                if version != uapi::VFIO_API_VERSION {
                    return Err(SetupError::ApiVersion(version));
                }
                let iommu_type = if *noiommu {
                    uapi::VFIO_NOIOMMU_IOMMU
                } else {
                    uapi::VFIO_TYPE1V2_IOMMU
                };
                let offered = uapi::check_extension(container.as_fd(), iommu_type)
                    .map_err(errno("VFIO_CHECK_EXTENSION"))?;
                if !offered {
                    return Err(SetupError::IommuType { noiommu: *noiommu });
                }
                let node = if *noiommu {
                    format!("vfio/noiommu-{group}")
                } else {
                    format!("vfio/{group}")
                };
                let group_fd = open_rw(&devfs.join(node))?;
                let status = uapi::group_get_status(group_fd.as_fd())
                    .map_err(errno("VFIO_GROUP_GET_STATUS"))?;
                if status & uapi::VFIO_GROUP_FLAGS_VIABLE == 0 {
                    return Err(SetupError::NotViable(*group));
                }
                uapi::group_set_container(group_fd.as_fd(), container.as_fd())
                    .map_err(errno(format!("VFIO_GROUP_SET_CONTAINER for group {group}")))?;
                uapi::set_iommu(container.as_fd(), iommu_type).map_err(errno("VFIO_SET_IOMMU"))?;
                let device = group_device_fd(&group_fd, bdf)?;
                Ok(Owner {
                    device,
                    context: Context::Group {
                        _container: container,
                        group: group_fd,
                    },
                    bdf: bdf.to_string(),
                })
            }
            Method::Cdev { name } => {
                let path = devfs.join("vfio/devices").join(name);
                let iommufd = open_rw(&devfs.join("iommu"))?;
                let ioas =
                    uapi::iommu_ioas_alloc(iommufd.as_fd()).map_err(errno("IOMMU_IOAS_ALLOC"))?;
                let device = cdev_device_fd(&path, &iommufd, ioas)?;
                Ok(Owner {
                    device,
                    context: Context::Cdev {
                        iommufd,
                        ioas,
                        path,
                    },
                    bdf: bdf.to_string(),
                })
            }
        }
    }

    /// Takes over the fds an earlier daemon owned the device with, by
    /// kind: `container` + `group` + `device` for the group path, or
    /// `iommufd` + `device` (and the IOAS id) for the cdev path. Nothing is
    /// reopened: the IOMMU context and every buffer stay as they were.
    pub fn from_fds(
        bdf: &str,
        method: &Method,
        fds: &mut std::collections::BTreeMap<String, OwnedFd>,
        ioas: Option<u32>,
        devfs: &Path,
    ) -> Result<Owner, SetupError> {
        let mut take =
            |kind: &'static str| fds.remove(kind).ok_or(SetupError::MissingStoredFd(kind));
        match method {
            Method::Group { .. } => {
                let container = take("container")?;
                let group = take("group")?;
                let device = take("device")?;
                uapi::device_get_info(device.as_fd())
                    .map_err(errno("VFIO_DEVICE_GET_INFO on the stored device fd"))?;
                Ok(Owner {
                    device,
                    context: Context::Group {
                        _container: container,
                        group,
                    },
                    bdf: bdf.to_string(),
                })
            }
            Method::Cdev { name } => {
                let iommufd = take("iommufd")?;
                let device = take("device")?;
                let ioas = ioas.ok_or(SetupError::NoStoredIoas)?;
                uapi::device_get_info(device.as_fd())
                    .map_err(errno("VFIO_DEVICE_GET_INFO on the stored device fd"))?;
                Ok(Owner {
                    device,
                    context: Context::Cdev {
                        iommufd,
                        ioas,
                        path: devfs.join("vfio/devices").join(name),
                    },
                    bdf: bdf.to_string(),
                })
            }
        }
    }

    /// Dups of the fds that own the device, by kind (see
    /// [`Owner::from_fds`]).
    pub fn fds(&self) -> Vec<(String, OwnedFd)> {
        let mut out = Vec::new();
        let mut add = |kind: &str, fd: &OwnedFd| match fd.try_clone() {
            Ok(d) => out.push((kind.to_string(), d)),
            Err(e) => tracing::error!(pci = %self.bdf, "cannot dup the {kind} fd: {e}"),
        };
        match &self.context {
            Context::Group { _container, group } => {
                add("container", _container);
                add("group", group);
            }
            Context::Cdev { iommufd, .. } => add("iommufd", iommufd),
        }
        add("device", &self.device);
        out
    }

    /// The IOAS the device is attached to (cdev path).
    pub fn ioas(&self) -> Option<u32> {
        match &self.context {
            Context::Cdev { ioas, .. } => Some(*ioas),
            Context::Group { .. } => None,
        }
    }

    /// Closes the device fd and opens it again. Closing the last device fd
    /// makes vfio-pci revoke every DMABUF of the device for good; the IOMMU
    /// context (container or iommufd) is kept.
    pub fn reopen(self) -> Result<Owner, SetupError> {
        let Owner {
            device,
            context,
            bdf,
        } = self;
        drop(device);
        let device = match &context {
            Context::Group { group, .. } => group_device_fd(group, &bdf)?,
            Context::Cdev {
                iommufd,
                ioas,
                path,
            } => cdev_device_fd(path, iommufd, *ioas)?,
        };
        Ok(Owner {
            device,
            context,
            bdf,
        })
    }
}

fn group_device_fd(group: &OwnedFd, bdf: &str) -> Result<OwnedFd, SetupError> {
    let name = CString::new(bdf).map_err(|_| SetupError::NulInAddress(bdf.to_string()))?;
    uapi::group_get_device_fd(group.as_fd(), &name)
        .map_err(errno(format!("VFIO_GROUP_GET_DEVICE_FD for {bdf}")))
}

fn cdev_device_fd(path: &Path, iommufd: &OwnedFd, ioas: u32) -> Result<OwnedFd, SetupError> {
    let device = open_rw(path)?;
    uapi::device_bind_iommufd(device.as_fd(), iommufd.as_fd()).map_err(errno(format!(
        "VFIO_DEVICE_BIND_IOMMUFD of {}",
        path.display()
    )))?;
    uapi::device_attach_iommufd_pt(device.as_fd(), ioas).map_err(errno(format!(
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT of {} to IOAS {ioas}",
        path.display()
    )))?;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    struct Host {
        sys: tempfile::TempDir,
        dev: tempfile::TempDir,
    }

    /// A device in group 3 with cdev vfio0; `nodes` are created under /dev.
    fn host(nodes: &[&str]) -> Host {
        let sys = tempfile::tempdir().unwrap();
        let d = sys.path().join("bus/pci/devices/0000:00:03.0");
        fs::create_dir_all(d.join("vfio-dev/vfio0")).unwrap();
        fs::create_dir_all(sys.path().join("kernel/iommu_groups/3")).unwrap();
        symlink(
            sys.path().join("kernel/iommu_groups/3"),
            d.join("iommu_group"),
        )
        .unwrap();
        let dev = tempfile::tempdir().unwrap();
        for n in nodes {
            let p = dev.path().join(n);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "").unwrap();
        }
        Host { sys, dev }
    }

    fn pick(h: &Host, o: Ownership, noiommu: bool) -> Result<Method, SetupError> {
        let dev = PciDevice::find(h.sys.path(), "0000:00:03.0").unwrap();
        choose(&dev, h.dev.path(), o, noiommu)
    }

    #[test]
    fn auto_prefers_cdev_when_iommufd_exists() {
        let h = host(&["vfio/vfio", "vfio/3", "vfio/devices/vfio0", "iommu"]);
        assert_eq!(
            pick(&h, Ownership::Auto, false).unwrap(),
            Method::Cdev {
                name: "vfio0".into()
            }
        );
        assert_eq!(
            pick(&h, Ownership::Group, false).unwrap(),
            Method::Group {
                group: 3,
                noiommu: false
            }
        );
    }

    #[test]
    fn auto_falls_back_to_the_group() {
        let h = host(&["vfio/vfio", "vfio/3", "vfio/devices/vfio0"]);
        assert_eq!(
            pick(&h, Ownership::Auto, false).unwrap(),
            Method::Group {
                group: 3,
                noiommu: false
            }
        );
        let err = pick(&h, Ownership::Cdev, false).unwrap_err();
        assert!(matches!(err, SetupError::NoIommufd { .. }), "{err:?}");
        assert!(err.to_string().contains("CONFIG_IOMMUFD"), "{err}");
    }

    #[test]
    fn forced_cdev_without_a_cdev_says_what_is_missing() {
        let h = host(&["vfio/vfio", "vfio/3", "iommu"]);
        let err = pick(&h, Ownership::Cdev, false).unwrap_err();
        assert!(matches!(err, SetupError::NoCdev { .. }), "{err:?}");
        assert!(err.to_string().contains("CONFIG_VFIO_DEVICE_CDEV"), "{err}");
    }

    #[test]
    fn noiommu_groups_need_consent() {
        let h = host(&["vfio/vfio", "vfio/noiommu-3"]);
        let err = pick(&h, Ownership::Auto, false).unwrap_err();
        assert!(
            matches!(err, SetupError::NoIommuRefused { group: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("noiommu = true"), "{err}");
        assert_eq!(
            pick(&h, Ownership::Auto, true).unwrap(),
            Method::Group {
                group: 3,
                noiommu: true
            }
        );
    }

    #[test]
    fn no_group_node_is_reported() {
        let h = host(&["vfio/vfio"]);
        let err = pick(&h, Ownership::Group, false).unwrap_err();
        assert!(
            matches!(err, SetupError::NoNode { group: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("bound to vfio-pci"), "{err}");
    }
}
