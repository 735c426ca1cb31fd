//! Block devices and the drivers behind them, read from sysfs.
//!
//! This is how a boot test proves that the guest really used the
//! platform's device model (NVMe for AWS, PVSCSI for VMware, ...): the
//! runner may attach the image twice (a read-only virtio-blk view for a
//! firmware that lacks the platform's driver), so "it booted" alone says
//! nothing about the platform's disk.
//!
//! Supported: every entry of `/sys/block` except `loop*`, `ram*` and
//! `zram*` (the init's own loop devices and RAM disks are no disks);
//! the drivers found walking up from `/sys/block/<dev>/device` to
//! `/sys/devices`, each ancestor's `driver` link, nearest first (`sda` on
//! PVSCSI: `["sd", "vmw_pvscsi"]`; `vda`: `["virtio_blk", "virtio-pci"]`;
//! `nvme0n1`: `["nvme"]`); an NVMe multipath disk, whose parent is a
//! virtual `nvme-subsystem` device, gets the drivers of the subsystem's
//! controllers (its `nvme<N>` links). Disks appear asynchronously after
//! their drivers load, so [`wait_and_scan`] polls until the set has been
//! stable for a while ([`Settle`]). Not supported: partitions, device
//! mapper or MD stacking (reported with the drivers sysfs shows, usually
//! none), hot-plug after the scan.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_proto::report::Event;

/// Where the kernel lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";
/// Where the device tree of sysfs starts; the driver walk stops there.
pub const SYS_DEVICES: &str = "/sys/devices";
/// The longest the init waits for a first disk (and for the set to settle).
pub const WAIT_LIMIT: Duration = Duration::from_secs(5);
/// How long the set of disks must stay unchanged to count as complete.
pub const QUIET: Duration = Duration::from_secs(1);
/// How often `/sys/block` is listed while waiting.
pub const POLL: Duration = Duration::from_millis(100);

/// Sysfs could not be read as expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block device list is unreadable.
    #[error("cannot list {dir}; sysfs must be mounted on /sys")]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// A disk attribute is unreadable.
    #[error("cannot read {path}")]
    Read {
        /// The attribute file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The size attribute is not a number of sectors.
    #[error("{path} holds {text:?}, not a count of 512-byte sectors")]
    Size {
        /// The attribute file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
}

/// One disk as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `sda`.
    pub name: String,
    /// Driver names from the disk up, nearest first.
    pub drivers: Vec<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// The removable flag.
    pub removable: bool,
}

impl Disk {
    /// The report event for this disk.
    pub fn event(&self) -> Event {
        Event::Disk {
            name: self.name.clone(),
            drivers: self.drivers.clone(),
            size_bytes: self.size_bytes,
            removable: self.removable,
        }
    }
}

/// False for the block devices that are no disks: loop devices (the
/// init's own), RAM disks and zram.
pub fn is_disk_name(name: &str) -> bool {
    !["loop", "ram", "zram"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// The disk names in `sys_block`, sorted.
pub fn list(sys_block: &Path) -> Result<Vec<String>, Error> {
    let err = |source| Error::List {
        dir: sys_block.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(sys_block).map_err(err)? {
        let name = entry.map_err(err)?.file_name();
        let name = name.to_string_lossy();
        if is_disk_name(&name) {
            names.push(name.into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads one disk's size, removable flag and drivers.
pub fn read(sys_block: &Path, devices: &Path, name: &str) -> Result<Disk, Error> {
    let dir = sys_block.join(name);
    let size_path = dir.join("size");
    let text = fs::read_to_string(&size_path).map_err(|source| Error::Read {
        path: size_path.clone(),
        source,
    })?;
    let sectors: u64 = text.trim().parse().map_err(|_| Error::Size {
        path: size_path.clone(),
        text: text.trim().to_string(),
    })?;
    // Kernels without the attribute (none we boot) would mean "fixed".
    let removable = fs::read_to_string(dir.join("removable")).is_ok_and(|t| t.trim() == "1");
    Ok(Disk {
        name: name.to_string(),
        drivers: drivers(&dir.join("device"), devices),
        size_bytes: sectors.saturating_mul(512),
        removable,
    })
}

/// The `driver` link names of `device` and each of its ancestors below
/// `devices`, nearest first; consecutive repeats are kept once. A device
/// that does not resolve (no `device` link: a virtual disk) has none.
pub fn drivers(device: &Path, devices: &Path) -> Vec<String> {
    let Ok(start) = fs::canonicalize(device) else {
        return Vec::new();
    };
    let stop = fs::canonicalize(devices).unwrap_or_else(|_| devices.to_path_buf());
    let mut found = walk_up(&start, &stop);
    if found.is_empty() && is_nvme_subsystem(&start) {
        for controller in nvme_controllers(&start) {
            for name in walk_up(&controller, &stop) {
                if !found.contains(&name) {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// The driver names from `start` up to (not including) `stop`.
fn walk_up(start: &Path, stop: &Path) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut at = Some(start);
    while let Some(dir) = at {
        if dir == stop || !dir.starts_with(stop) {
            break;
        }
        let name = fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
        if let Some(name) = name {
            if found.last() != Some(&name) {
                found.push(name);
            }
        }
        at = dir.parent();
    }
    found
}

/// A multipath NVMe disk hangs off a virtual `nvme-subsystem` device.
fn is_nvme_subsystem(dir: &Path) -> bool {
    fs::read_link(dir.join("subsystem"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n == "nvme-subsystem"))
        .unwrap_or(false)
}

/// The controllers an `nvme-subsystem` device links to (`nvme0`, ...),
/// resolved, sorted by link name.
fn nvme_controllers(subsystem: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(subsystem) else {
        return Vec::new();
    };
    let mut links: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| {
            name.strip_prefix("nvme")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    links.sort();
    links
        .into_iter()
        .filter_map(|(_, link)| fs::canonicalize(link).ok())
        .collect()
}

/// Decides when the set of disks is complete: once at least one disk is
/// there and no new one appeared for `quiet`, or at `limit` regardless.
/// Pure (times are passed in), so it is tested without waiting.
#[derive(Debug, Clone)]
pub struct Settle {
    limit: Duration,
    quiet: Duration,
    seen: BTreeSet<String>,
    changed_at: Duration,
}

impl Settle {
    /// A fresh wait with the given limits.
    pub fn new(limit: Duration, quiet: Duration) -> Settle {
        Settle {
            limit,
            quiet,
            seen: BTreeSet::new(),
            changed_at: Duration::ZERO,
        }
    }

    /// Takes the names listed `at` after the start; true when the wait is over.
    pub fn observe(&mut self, names: &[String], at: Duration) -> bool {
        let mut new = false;
        for name in names {
            new |= self.seen.insert(name.clone());
        }
        if new {
            self.changed_at = at;
        }
        at >= self.limit
            || (!self.seen.is_empty() && at.saturating_sub(self.changed_at) >= self.quiet)
    }
}

/// Waits for the disks to settle (see [`Settle`]) and reads each one.
/// An unreadable disk attribute fails the whole scan: the report would
/// otherwise hide a disk.
pub fn wait_and_scan(sys_block: &Path, devices: &Path) -> Result<Vec<Disk>, Error> {
    let start = Instant::now();
    let mut settle = Settle::new(WAIT_LIMIT, QUIET);
    while !settle.observe(&list(sys_block)?, start.elapsed()) {
        std::thread::sleep(POLL);
    }
    list(sys_block)?
        .iter()
        .map(|name| read(sys_block, devices, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;
    use crate::sys::error_chain;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: `devices/...` directories with `driver` links into
    /// `bus/.../drivers/<name>`, and `block/<dev>` with `size`,
    /// `removable` and a `device` link.
    struct FakeSys(TestDir);

    impl FakeSys {
        fn new() -> FakeSys {
            let dir = TestDir::new("sysfs");
            dir.dir("devices").dir("block");
            FakeSys(dir)
        }
        fn root(&self) -> &Path {
            &self.0 .0
        }
        /// A device directory, optionally bound to `driver`.
        fn device(&self, path: &str, driver: Option<&str>) -> &Self {
            let dir = self.root().join("devices").join(path);
            fs::create_dir_all(&dir).unwrap();
            if let Some(driver) = driver {
                let target = self.root().join("bus/x/drivers").join(driver);
                fs::create_dir_all(&target).unwrap();
                symlink(&target, dir.join("driver")).unwrap();
            }
            self
        }
        /// `block/<name>` whose `device` link points at `devices/<device>`.
        fn disk(&self, name: &str, device: Option<&str>, sectors: &str, removable: &str) -> &Self {
            let dir = self.root().join("block").join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(dir.join("removable"), format!("{removable}\n")).unwrap();
            if let Some(device) = device {
                symlink(self.root().join("devices").join(device), dir.join("device")).unwrap();
            }
            self
        }
        fn scan(&self) -> Vec<Disk> {
            let block = self.root().join("block");
            list(&block)
                .unwrap()
                .iter()
                .map(|n| read(&block, &self.root().join("devices"), n).unwrap())
                .collect()
        }
    }

    fn summary(disks: &[Disk]) -> Vec<(String, Vec<String>, u64, bool)> {
        disks
            .iter()
            .map(|d| (d.name.clone(), d.drivers.clone(), d.size_bytes, d.removable))
            .collect()
    }

    fn row(
        name: &str,
        drivers: &[&str],
        size: u64,
        removable: bool,
    ) -> (String, Vec<String>, u64, bool) {
        (
            name.into(),
            drivers.iter().map(|d| d.to_string()).collect(),
            size,
            removable,
        )
    }

    #[test]
    fn drivers_are_collected_walking_up_the_device_path() {
        let sys = FakeSys::new();
        let pci = "pci0000:00";
        sys.device(pci, None)
            // PVSCSI: scsi disk <- target <- host <- PCI function.
            .device(&format!("{pci}/0000:00:15.0"), Some("vmw_pvscsi"))
            .device(&format!("{pci}/0000:00:15.0/host0/target0:0:0"), None)
            .device(
                &format!("{pci}/0000:00:15.0/host0/target0:0:0/0:0:0:0"),
                Some("sd"),
            )
            // virtio-blk: virtio device <- PCI function.
            .device(&format!("{pci}/0000:00:02.0"), Some("virtio-pci"))
            .device(&format!("{pci}/0000:00:02.0/virtio1"), Some("virtio_blk"))
            // NVMe: class device (no driver) <- PCI function.
            .device(&format!("{pci}/0000:00:04.0"), Some("nvme"))
            .device(&format!("{pci}/0000:00:04.0/nvme/nvme0"), None)
            // AHCI CD-ROM: sr <- ... <- ata port <- PCI function.
            .device(&format!("{pci}/0000:00:1f.2"), Some("ahci"))
            .device(
                &format!("{pci}/0000:00:1f.2/ata1/host1/target1:0:0/1:0:0:0"),
                Some("sr"),
            );
        sys.disk(
            "sda",
            Some(&format!("{pci}/0000:00:15.0/host0/target0:0:0/0:0:0:0")),
            "2097152",
            "0",
        )
        .disk(
            "vda",
            Some(&format!("{pci}/0000:00:02.0/virtio1")),
            "8",
            "0",
        )
        .disk(
            "nvme0n1",
            Some(&format!("{pci}/0000:00:04.0/nvme/nvme0")),
            "16",
            "0",
        )
        .disk(
            "sr0",
            Some(&format!(
                "{pci}/0000:00:1f.2/ata1/host1/target1:0:0/1:0:0:0"
            )),
            "0",
            "1",
        )
        .disk("loop0", None, "100", "0")
        .disk("ram0", None, "100", "0")
        .disk("zram0", None, "100", "0")
        .disk("md0", None, "4", "0");
        assert_eq!(
            summary(&sys.scan()),
            [
                row("md0", &[], 2048, false),
                row("nvme0n1", &["nvme"], 8192, false),
                row("sda", &["sd", "vmw_pvscsi"], 1 << 30, false),
                row("sr0", &["sr", "ahci"], 0, true),
                row("vda", &["virtio_blk", "virtio-pci"], 4096, false),
            ]
        );
    }

    #[test]
    fn a_multipath_nvme_disk_gets_its_controllers_drivers() {
        let sys = FakeSys::new();
        sys.device("pci0000:00/0000:00:04.0", Some("nvme"))
            .device("pci0000:00/0000:00:04.0/nvme/nvme0", None)
            .device("virtual/nvme-subsystem/nvme-subsys0", None);
        let subsys = sys
            .root()
            .join("devices/virtual/nvme-subsystem/nvme-subsys0");
        fs::create_dir_all(sys.root().join("class/nvme-subsystem")).unwrap();
        symlink(
            sys.root().join("class/nvme-subsystem"),
            subsys.join("subsystem"),
        )
        .unwrap();
        symlink(
            sys.root()
                .join("devices/pci0000:00/0000:00:04.0/nvme/nvme0"),
            subsys.join("nvme0"),
        )
        .unwrap();
        sys.disk(
            "nvme0n1",
            Some("virtual/nvme-subsystem/nvme-subsys0"),
            "8",
            "0",
        );
        assert_eq!(
            summary(&sys.scan()),
            [row("nvme0n1", &["nvme"], 4096, false)]
        );
    }

    #[test]
    fn the_walk_stops_at_the_devices_root() {
        let sys = FakeSys::new();
        // A driver link above devices/ must not be picked up.
        fs::create_dir_all(sys.root().join("bus/x/drivers/outside")).unwrap();
        symlink(
            sys.root().join("bus/x/drivers/outside"),
            sys.root().join("driver"),
        )
        .unwrap();
        sys.device("platform/blk", Some("inside"));
        sys.disk("xvda", Some("platform/blk"), "1", "0");
        assert_eq!(summary(&sys.scan()), [row("xvda", &["inside"], 512, false)]);
    }

    #[test]
    fn a_bad_size_names_the_file() {
        let sys = FakeSys::new();
        sys.disk("vda", None, "lots", "0");
        let block = sys.root().join("block");
        let err = read(&block, &sys.root().join("devices"), "vda").unwrap_err();
        assert_eq!(
            error_chain(&err),
            format!(
                "{}/vda/size holds \"lots\", not a count of 512-byte sectors",
                block.display()
            )
        );
        let err = list(&sys.root().join("nope")).unwrap_err();
        assert!(error_chain(&err).contains("sysfs must be mounted on /sys"));
    }

    #[test]
    fn settling_waits_for_a_quiet_second_or_the_limit() {
        let ms = Duration::from_millis;
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut s = Settle::new(ms(5000), ms(1000));
        assert!(!s.observe(&[], ms(0)));
        assert!(!s.observe(&[], ms(900)), "nothing yet: keep waiting");
        assert!(!s.observe(&names(&["vda"]), ms(1000)));
        assert!(!s.observe(&names(&["vda"]), ms(1900)));
        assert!(
            !s.observe(&names(&["sda", "vda"]), ms(1950)),
            "a new disk restarts the quiet time"
        );
        assert!(!s.observe(&names(&["sda", "vda"]), ms(2900)));
        assert!(s.observe(&names(&["sda", "vda"]), ms(2950)));

        let mut s = Settle::new(ms(5000), ms(1000));
        assert!(!s.observe(&[], ms(4900)));
        assert!(
            s.observe(&[], ms(5000)),
            "no disk at all: give up at the limit"
        );

        let mut s = Settle::new(ms(5000), ms(1000));
        for at in (0..5000).step_by(500) {
            assert!(!s.observe(&names(&[&format!("sd{at}")]), ms(at)));
        }
        assert!(
            s.observe(&names(&["late"]), ms(5000)),
            "the limit caps a disk storm"
        );
    }

    #[test]
    fn only_disks_count() {
        for name in ["sda", "vda", "nvme0n1", "sr0", "xvda", "mmcblk0"] {
            assert!(is_disk_name(name), "{name}");
        }
        for name in ["loop0", "loop12", "ram0", "zram0"] {
            assert!(!is_disk_name(name), "{name}");
        }
    }
}
