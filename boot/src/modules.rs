//! Kernel modules: the list the composer wrote, and loading each file.
//!
//! The list (`/etc/strata/modules.load`) has one absolute `.ko` path per
//! line, dependencies first; blank lines and lines starting with `#` are
//! skipped. Each file is loaded with `finit_module(2)`; a module that is
//! already present (`EEXIST`) counts as loaded.
//! Supported: uncompressed `.ko` files. Not supported: compressed modules
//! (`.ko.xz`, `.ko.zst`, `.ko.gz`: the composer must decompress them),
//! module parameters, dependency resolution (the list's order is trusted).
//!
//! The initramfs's modules load with the kernel's `async_probe` flag
//! ([`load_probing_async`]): `finit_module` returns once the module's init
//! ran, and the devices its driver finds are probed in the background
//! (without it, the kernel waits for every probe, e.g. AHCI's link
//! detection on each port, before returning). The init needs no disk for
//! its root (that is in the initramfs); the disk scan and the persistent
//! state wait for the disks they need.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use strata_proto::initramfs::list_entries;
pub use strata_proto::initramfs::MODULES_LOAD;

/// Reading the list or loading a module failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A compressed module file.
    #[error("module {path} is compressed; put the uncompressed .ko in the initramfs")]
    Compressed {
        /// The file.
        path: PathBuf,
    },
    /// The kernel refused the module.
    #[error("kernel refused module {path}")]
    Load {
        /// The file.
        path: PathBuf,
        /// errno from finit_module (the kernel log says more).
        #[source]
        source: io::Error,
    },
    /// The module file could not be opened.
    #[error("cannot open module {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The list could not be read.
    #[error("cannot read module list {path}")]
    ReadList {
        /// The list file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// A list entry is not an absolute path.
    #[error(
        "{list} line {line}: module path {entry:?} is not absolute; write it as /lib/modules/..."
    )]
    RelativePath {
        /// The list file.
        list: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The entry as written.
        entry: String,
    },
}

/// How a module ended up loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// This call loaded it.
    Now,
    /// It was already in the kernel.
    Already,
    /// The module refused with ENODEV: what it drives is absent here (a
    /// CPU-specific crypto driver under emulation, a controller the machine
    /// lacks). modprobe treats this as "not applicable", and so do we.
    NotApplicable,
}

/// Parses the list text; `list` only names the file in errors.
pub fn parse_list(text: &str, list: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut paths = Vec::new();
    for (line, entry) in list_entries(text) {
        if !entry.starts_with('/') {
            return Err(Error::RelativePath {
                list: list.to_path_buf(),
                line,
                entry: entry.to_string(),
            });
        }
        paths.push(PathBuf::from(entry));
    }
    Ok(paths)
}

/// Reads and parses the list; a missing list means nothing to load.
pub fn read_list(list: &Path) -> Result<Vec<PathBuf>, Error> {
    match std::fs::read_to_string(list) {
        Ok(text) => parse_list(&text, list),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::ReadList {
            path: list.to_path_buf(),
            source,
        }),
    }
}

/// The module's name as the kernel spells it: file name without `.ko`
/// (or a compression suffix), dashes turned into underscores.
pub fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .unwrap_or(&file);
    stem.replace('-', "_")
}

fn is_compressed(path: &Path) -> bool {
    let name = path.as_os_str().to_string_lossy();
    [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Loads one module file; its devices are probed before this returns.
pub fn load(path: &Path) -> Result<Loaded, Error> {
    load_with(path, c"")
}

/// Loads one module file with the kernel's `async_probe` flag: its driver's
/// devices are probed in the background (see the module documentation).
pub fn load_probing_async(path: &Path) -> Result<Loaded, Error> {
    load_with(path, c"async_probe=1")
}

fn load_with(path: &Path, params: &std::ffi::CStr) -> Result<Loaded, Error> {
    if is_compressed(path) {
        return Err(Error::Compressed {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: finit_module reads the open fd and the NUL-terminated
    // parameter string, which outlive the call; flags 0 asks for no tricks.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if ret == 0 {
        return Ok(Loaded::Now);
    }
    let source = io::Error::last_os_error();
    match source.raw_os_error() {
        Some(libc::EEXIST) => return Ok(Loaded::Already),
        Some(libc::ENODEV) => return Ok(Loaded::NotApplicable),
        _ => {}
    }
    Err(Error::Load {
        path: path.to_path_buf(),
        source,
    })
}

/// The kernel's list of loaded modules.
pub const PROC_MODULES: &str = "/proc/modules";

/// True when `/proc/modules`' text (`text`) lists module `name` (underscores),
/// in any state but `Unloading`.
pub fn listed(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.next() == Some(name) && !line.contains(" Unloading ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_modules_is_read_by_first_field() {
        let text = "dummy 16384 0 - Live 0x0000000000000000\nmacvtap 32768 0 - Unloading 0x0\nloop 32768 4 - Live 0x0\n";
        assert!(listed(text, "dummy"));
        assert!(listed(text, "loop"));
        assert!(
            !listed(text, "macvtap"),
            "an unloading module is not loaded"
        );
        assert!(!listed(text, "dumm"));
        assert!(!listed("", "dummy"));
    }
    use crate::sys::error_chain;

    #[test]
    fn list_skips_comments_and_blank_lines_and_keeps_order() {
        let text = "# deps first\n\n/lib/modules/6.1/kernel/fs/squashfs/squashfs.ko\n  /lib/modules/6.1/kernel/drivers/block/loop.ko  \r\n#/x.ko\n";
        let paths = parse_list(text, Path::new("/etc/strata/modules.load")).unwrap();
        assert_eq!(
            paths,
            vec![
                PathBuf::from("/lib/modules/6.1/kernel/fs/squashfs/squashfs.ko"),
                PathBuf::from("/lib/modules/6.1/kernel/drivers/block/loop.ko"),
            ]
        );
    }

    #[test]
    fn relative_entries_are_rejected_with_their_line() {
        let err = parse_list("/a.ko\nkernel/b.ko\n", Path::new("/l")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/l line 2: module path \"kernel/b.ko\" is not absolute; write it as /lib/modules/..."
        );
    }

    #[test]
    fn names_follow_the_kernel_spelling() {
        assert_eq!(module_name(Path::new("/m/nvme-core.ko")), "nvme_core");
        assert_eq!(module_name(Path::new("/m/loop.ko")), "loop");
        assert_eq!(module_name(Path::new("/m/virtio_blk.ko.xz")), "virtio_blk");
        assert_eq!(module_name(Path::new("/m/odd")), "odd");
    }

    #[test]
    fn a_missing_list_means_no_modules() {
        assert!(read_list(Path::new("/nonexistent/strata/modules.load"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn compressed_and_missing_files_fail_before_the_kernel() {
        let err = load(Path::new("/nonexistent/x.ko.zst")).unwrap_err();
        assert!(matches!(err, Error::Compressed { .. }));
        let err = load(Path::new("/nonexistent/x.ko")).unwrap_err();
        assert!(error_chain(&err).starts_with("cannot open module /nonexistent/x.ko: "));
    }
}
