//! What sysfs says about a PCI device: its IOMMU group, its VFIO cdev, its
//! current driver, and binding it to vfio-pci. The sysfs root is a parameter
//! so that the logic is tested against a fake tree.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::{Binding, SetupError};

/// The driver barkeep needs a device bound to.
pub const VFIO_PCI: &str = "vfio-pci";

/// Checks and normalises a PCI address: "0000:00:03.0", or "00:03.0" (domain
/// 0 assumed). Returns the full lowercase form.
pub fn normalize_bdf(bdf: &str) -> Result<String, SetupError> {
    let bdf = bdf.trim().to_ascii_lowercase();
    let full = if bdf.len() == 7 {
        format!("0000:{bdf}")
    } else {
        bdf
    };
    let b = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let ok = b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11]);
    if ok {
        Ok(full)
    } else {
        Err(SetupError::BadAddress(full))
    }
}

/// One PCI device in a sysfs tree.
#[derive(Clone, Debug)]
pub struct PciDevice {
    /// Normalised address.
    pub bdf: String,
    sysfs: PathBuf,
}

impl PciDevice {
    /// Finds the device under `sysfs` (normally "/sys").
    pub fn find(sysfs: &Path, bdf: &str) -> Result<Self, SetupError> {
        let bdf = normalize_bdf(bdf)?;
        let dev = PciDevice {
            bdf,
            sysfs: sysfs.to_path_buf(),
        };
        if !dev.dir().exists() {
            return Err(SetupError::NoDevice {
                dir: dev.dir(),
                bdf: dev.bdf,
            });
        }
        Ok(dev)
    }

    fn dir(&self) -> PathBuf {
        self.sysfs.join("bus/pci/devices").join(&self.bdf)
    }

    /// The driver the device is bound to, if any.
    pub fn driver(&self) -> Option<String> {
        link_name(&self.dir().join("driver"))
    }

    /// The IOMMU group number, if the device is in one.
    pub fn iommu_group(&self) -> Option<u32> {
        link_name(&self.dir().join("iommu_group"))?.parse().ok()
    }

    /// The VFIO cdev name ("vfio3") when the kernel created one
    /// (CONFIG_VFIO_DEVICE_CDEV and the device bound to vfio-pci).
    pub fn vfio_cdev(&self) -> Option<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir().join("vfio-dev"))
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("vfio"))
            .collect();
        names.sort();
        names.into_iter().next()
    }

    /// Makes sure the device is bound to vfio-pci. With `bind`, sets
    /// driver_override, unbinds the current driver and reprobes; without it,
    /// refuses with an error naming the current driver.
    pub fn ensure_vfio_pci(&self, bind: bool) -> Result<(), SetupError> {
        let current = self.driver();
        if current.as_deref() == Some(VFIO_PCI) {
            return Ok(());
        }
        let now = Binding::of(current.clone());
        if !bind {
            return Err(SetupError::NotBound {
                bdf: self.bdf.clone(),
                now,
                dir: self.dir(),
                root: self.sysfs.clone(),
            });
        }
        let step = |step: &'static str, path: PathBuf, value: &str| {
            fs::write(&path, value).map_err(|source| SetupError::Bind {
                bdf: self.bdf.clone(),
                now: now.clone(),
                step,
                value: value.to_string(),
                path,
                source,
            })
        };
        step(
            "driver_override",
            self.dir().join("driver_override"),
            VFIO_PCI,
        )?;
        if current.is_some() {
            step("unbind", self.dir().join("driver/unbind"), &self.bdf)?;
        }
        step(
            "drivers_probe",
            self.sysfs.join("bus/pci/drivers_probe"),
            &self.bdf,
        )?;
        match self.driver() {
            Some(d) if d == VFIO_PCI => Ok(()),
            other => Err(SetupError::StillNotBound {
                bdf: self.bdf.clone(),
                now: Binding::of(other),
            }),
        }
    }
}

/// The last component of a symlink's target.
fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Whether a path exists (a device node, typically).
pub fn exists(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /sys with one device, optionally bound, in a group, with a cdev.
    fn fake_sysfs(
        driver: Option<&str>,
        group: Option<u32>,
        cdev: Option<&str>,
    ) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let dev = r.join("devices/pci0000:00/0000:00:03.0");
        fs::create_dir_all(&dev).unwrap();
        fs::create_dir_all(r.join("bus/pci/devices")).unwrap();
        symlink(&dev, r.join("bus/pci/devices/0000:00:03.0")).unwrap();
        fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        fs::write(r.join("bus/pci/drivers_probe"), "").unwrap();
        for d in ["vfio-pci", "e1000e"] {
            let dir = r.join("bus/pci/drivers").join(d);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("unbind"), "").unwrap();
        }
        if let Some(d) = driver {
            symlink(r.join("bus/pci/drivers").join(d), dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            let gdir = r.join("kernel/iommu_groups").join(g.to_string());
            fs::create_dir_all(&gdir).unwrap();
            symlink(&gdir, dev.join("iommu_group")).unwrap();
        }
        if let Some(c) = cdev {
            fs::create_dir_all(dev.join("vfio-dev").join(c)).unwrap();
        }
        root
    }

    #[test]
    fn addresses_are_normalised_and_checked() {
        assert_eq!(normalize_bdf("00:03.0").unwrap(), "0000:00:03.0");
        assert_eq!(normalize_bdf("0000:0A:1f.7").unwrap(), "0000:0a:1f.7");
        for bad in ["", "0000:00:03", "0000:00:03.8", "00:3.0", "zz00:00:03.0"] {
            let err = normalize_bdf(bad).unwrap_err();
            assert!(matches!(err, SetupError::BadAddress(_)), "{bad}: {err:?}");
            let err = err.to_string();
            assert!(err.contains("0000:bb:dd.f"), "{bad}: {err}");
        }
    }

    #[test]
    fn finds_group_cdev_and_driver() {
        let root = fake_sysfs(Some("vfio-pci"), Some(3), Some("vfio0"));
        let dev = PciDevice::find(root.path(), "00:03.0").unwrap();
        assert_eq!(dev.bdf, "0000:00:03.0");
        assert_eq!(dev.driver().as_deref(), Some("vfio-pci"));
        assert_eq!(dev.iommu_group(), Some(3));
        assert_eq!(dev.vfio_cdev().as_deref(), Some("vfio0"));
        assert!(dev.ensure_vfio_pci(false).is_ok());
    }

    #[test]
    fn a_missing_device_is_named() {
        let root = fake_sysfs(None, None, None);
        let err = PciDevice::find(root.path(), "0000:00:09.0").unwrap_err();
        assert!(matches!(err, SetupError::NoDevice { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("no PCI device 0000:00:09.0"), "{err}");
    }

    #[test]
    fn no_group_and_no_cdev_when_absent() {
        let root = fake_sysfs(None, None, None);
        let dev = PciDevice::find(root.path(), "0000:00:03.0").unwrap();
        assert_eq!(dev.iommu_group(), None);
        assert_eq!(dev.vfio_cdev(), None);
        assert_eq!(dev.driver(), None);
    }

    #[test]
    fn refuses_a_device_bound_elsewhere_and_names_the_driver() {
        let root = fake_sysfs(Some("e1000e"), Some(4), None);
        let dev = PciDevice::find(root.path(), "0000:00:03.0").unwrap();
        let err = dev.ensure_vfio_pci(false).unwrap_err();
        assert!(
            matches!(&err, SetupError::NotBound { now: Binding::Driver(d), .. } if d == "e1000e"),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(err.contains("bound to e1000e"), "{err}");
        assert!(err.contains("bind = true"), "{err}");
        // Nothing was written without `bind = true`.
        let ov = fs::read_to_string(dev.dir().join("driver_override")).unwrap();
        assert_eq!(ov, "(null)\n");
    }

    #[test]
    fn bind_writes_override_unbind_and_probe() {
        let root = fake_sysfs(Some("e1000e"), Some(4), None);
        let dev = PciDevice::find(root.path(), "0000:00:03.0").unwrap();
        // The fake kernel does not rebind, so the final check fails and says so.
        let err = dev.ensure_vfio_pci(true).unwrap_err().to_string();
        assert!(
            err.contains("after reprobing it is bound to e1000e"),
            "{err}"
        );
        let r = root.path();
        assert_eq!(
            fs::read_to_string(dev.dir().join("driver_override")).unwrap(),
            "vfio-pci"
        );
        assert_eq!(
            fs::read_to_string(r.join("bus/pci/drivers/e1000e/unbind")).unwrap(),
            "0000:00:03.0"
        );
        assert_eq!(
            fs::read_to_string(r.join("bus/pci/drivers_probe")).unwrap(),
            "0000:00:03.0"
        );
    }

    #[test]
    fn bind_of_an_unbound_device_skips_unbind() {
        let root = fake_sysfs(None, Some(4), None);
        let dev = PciDevice::find(root.path(), "0000:00:03.0").unwrap();
        let err = dev.ensure_vfio_pci(true).unwrap_err().to_string();
        assert!(err.contains("not bound to any driver"), "{err}");
        assert_eq!(
            fs::read_to_string(root.path().join("bus/pci/drivers_probe")).unwrap(),
            "0000:00:03.0"
        );
    }
}
