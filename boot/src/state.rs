//! The merged root's writable layer: where overlayfs' `upperdir` and
//! `workdir` live.
//!
//! A distro root expects to write under `/etc` and `/var` (machine-id,
//! logind's and journald's state, tmpfiles), so the root overlay always
//! gets an upper layer, on one of:
//! - `tmpfs` (default): a tmpfs on [`Layout::state`]; every change is gone
//!   at the next boot, the image stays the single source of truth;
//! - `persistent`: the GPT partition named `DATA` of the boot disk,
//!   mounted there as ext2 (through the ext4 driver). A partition without
//!   an ext2/3/4 superblock magic is "not yet formatted": the init writes a
//!   fresh file system on it first ([`crate::mkfs`]). One with the magic is
//!   never formatted again, even when it will not mount (that is an error:
//!   the data may matter).
//!
//! The partition is found by its GPT name in `/sys/class/block/*/uevent`
//! (`PARTNAME=DATA`), waiting up to [`WAIT`] for the disk driver to probe.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_proto::initramfs::{StateMode, STATE_PARTITION};

use crate::mkfs::{self, Identity};
use crate::mounts;
use crate::overlay::Layout;

/// How long the state partition may take to appear.
pub const WAIT: Duration = Duration::from_secs(10);
/// Where the kernel lists block devices and partitions.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// Preparing the writable layer failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No partition carries the state partition's name.
    #[error("no partition named {name} appeared within {secs} s; `state: persistent` needs a platform with a DATA partition (nocloud, aws, ...)")]
    NoPartition {
        /// The GPT partition name looked for.
        name: String,
        /// How long the init waited.
        secs: u64,
    },
    /// The partition could not be read, sized or written.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The device or file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// Formatting failed.
    #[error("cannot format {device}")]
    Format {
        /// The device.
        device: PathBuf,
        /// Why not.
        #[source]
        source: mkfs::Error,
    },
    /// A mount or directory failed.
    #[error(transparent)]
    Mount(#[from] mounts::Error),
}

/// The writable layer, ready for overlayfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// overlayfs' `upperdir`.
    pub upper: PathBuf,
    /// overlayfs' `workdir` (same file system as `upper`).
    pub work: PathBuf,
    /// The state partition, in persistent mode.
    pub device: Option<PathBuf>,
    /// True when the partition was formatted this boot.
    pub formatted: bool,
}

/// Mounts the writable layer's file system on `layout.state()` and makes
/// its `upper` and `work` directories.
pub fn prepare(mode: StateMode, layout: &Layout) -> Result<Prepared, Error> {
    let base = layout.state();
    mounts::create_dir(&base)?;
    let (device, formatted) = match mode {
        StateMode::Tmpfs => {
            mounts::mount("tmpfs", &base, "tmpfs", 0, Some("mode=0755"))?;
            (None, false)
        }
        StateMode::Persistent => {
            let device = wait_for_partition(Path::new(SYS_CLASS_BLOCK), STATE_PARTITION, WAIT)?;
            let formatted = format_if_blank(&device)?;
            mounts::mount(&device.to_string_lossy(), &base, "ext2", 0, None)?;
            (Some(device), formatted)
        }
    };
    let upper = base.join("upper");
    let work = base.join("work");
    mounts::create_dir(&upper)?;
    mounts::create_dir(&work)?;
    Ok(Prepared {
        upper,
        work,
        device,
        formatted,
    })
}

/// Where persistent state counts the boots that used it, in the merged root.
pub const BOOT_COUNT: &str = "/var/lib/strata/boot-count";

/// Adds this boot to the count in `merged` (a missing or unreadable count
/// is 0), writes it back and syncs; the new count.
pub fn count_boot(merged: &Path) -> std::io::Result<u64> {
    let path = merged.join(BOOT_COUNT.trim_start_matches('/'));
    let before: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, format!("{}\n", before + 1))?;
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(before + 1)
}

/// Polls `sys_class_block` until a partition named `name` shows up;
/// returns its `/dev` node.
pub fn wait_for_partition(
    sys_class_block: &Path,
    name: &str,
    wait: Duration,
) -> Result<PathBuf, Error> {
    let started = Instant::now();
    loop {
        if let Some(dev) = find_partition(sys_class_block, name) {
            return Ok(Path::new("/dev").join(dev));
        }
        if started.elapsed() >= wait {
            return Err(Error::NoPartition {
                name: name.to_string(),
                secs: wait.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel name (`vda2`) of the partition whose GPT name is `name`.
pub fn find_partition(sys_class_block: &Path, name: &str) -> Option<String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(sys_class_block)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    entries.iter().find_map(|dir| {
        let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
        partition_of(&uevent, name)
    })
}

/// `DEVNAME` of a uevent whose `PARTNAME` is `name`.
fn partition_of(uevent: &str, name: &str) -> Option<String> {
    let field = |key: &str| {
        uevent
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    };
    (field("PARTNAME")? == name).then(|| field("DEVNAME").map(str::to_string))?
}

/// Formats `device` unless it already has an ext2/3/4 superblock; true
/// when it formatted.
pub fn format_if_blank(device: &Path) -> Result<bool, Error> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: device.to_path_buf(),
            source,
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(io("open"))?;
    let mut head = vec![0u8; 2048];
    file.read_exact(&mut head).map_err(io("read"))?;
    if mkfs::has_magic(&head) {
        return Ok(false);
    }
    let size = device_size(&mut file).map_err(io("size"))?;
    mkfs::format(&mut file, size, identity()).map_err(|source| Error::Format {
        device: device.to_path_buf(),
        source,
    })?;
    file.sync_all().map_err(io("sync"))?;
    Ok(true)
}

/// A block device's size: seeking to its end tells it.
fn device_size(file: &mut File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let size = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// A fresh UUID from the kernel, and the current time.
fn identity() -> Identity {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    let hex: Vec<u8> = text.trim().bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut uuid = [0u8; 16];
    for (i, pair) in hex.chunks(2).take(16).enumerate() {
        let digits = std::str::from_utf8(pair).unwrap_or("0");
        uuid[i] = u8::from_str_radix(digits, 16).unwrap_or(0);
    }
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    Identity { uuid, time }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    #[test]
    fn the_partition_is_found_by_its_gpt_name() {
        let sys = TestDir::new("state-sys");
        sys.file(
            "vda/uevent",
            b"MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        );
        sys.file(
            "vda1/uevent",
            b"MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=EFI\n",
        );
        sys.file(
            "vda2/uevent",
            b"MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=DATA\n",
        );
        assert_eq!(find_partition(&sys.0, "DATA").as_deref(), Some("vda2"));
        assert_eq!(find_partition(&sys.0, "DAT"), None);
        let err = wait_for_partition(&sys.0, "STATE", Duration::ZERO).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("no partition named STATE appeared within 0 s"));
        assert_eq!(
            wait_for_partition(&sys.0, "DATA", Duration::ZERO).unwrap(),
            PathBuf::from("/dev/vda2")
        );
    }

    #[test]
    fn boots_are_counted_in_the_merged_root() {
        let root = TestDir::new("state-count");
        assert_eq!(count_boot(&root.0).unwrap(), 1);
        assert_eq!(count_boot(&root.0).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(root.0.join("var/lib/strata/boot-count")).unwrap(),
            "2\n"
        );
    }

    #[test]
    fn a_blank_device_is_formatted_once() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(16 << 20).unwrap();
        assert!(format_if_blank(file.path()).unwrap());
        assert!(!format_if_blank(file.path()).unwrap());
    }
}
