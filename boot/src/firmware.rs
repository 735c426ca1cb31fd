//! Making firmware that extensions ship reachable while the init still runs
//! in the initramfs.
//!
//! The kernel looks for firmware in `firmware_class.path` first, then in
//! `/lib/firmware/updates/<release>`, `/lib/firmware/updates`,
//! `/lib/firmware/<release>` and `/lib/firmware` of the *current* root,
//! which is the initramfs until the switch. So before loading extension
//! modules the init writes the merged root's firmware directory
//! (`<root>/usr/lib/firmware`, else `<root>/lib/firmware`, symlinks resolved
//! inside the root) into `/sys/module/firmware_class/parameters/path`, and
//! reads it back: the report says what the kernel holds.
//! After the switch that path no longer exists and the kernel falls back to
//! the default directories, which are then the merged root's own.
//! Not supported: several directories (the kernel takes one), firmware
//! loaded by user space helpers.

use std::io;
use std::path::{Path, PathBuf};

use crate::rootpath;

/// The kernel parameter holding the extra firmware directory.
pub const SEARCH_PATH_PARAM: &str = "/sys/module/firmware_class/parameters/path";

/// The parameter's buffer is 256 bytes, NUL included.
const MAX_LEN: usize = 255;

/// Setting the firmware directory failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path does not fit the kernel's buffer.
    #[error("firmware directory {dir} is longer than {MAX_LEN} bytes, the limit of {SEARCH_PATH_PARAM}; use a shorter mount point")]
    TooLong {
        /// The directory.
        dir: PathBuf,
    },
    /// The kernel holds something else than what was written.
    #[error("{param} reads back {read:?} after writing {dir}")]
    Mismatch {
        /// The parameter file.
        param: PathBuf,
        /// What was written.
        dir: PathBuf,
        /// What it holds.
        read: String,
    },
    /// The parameter could not be read back.
    #[error("cannot read back {param}")]
    Read {
        /// The parameter file.
        param: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The parameter could not be written.
    #[error("cannot write {param}; is the kernel built with CONFIG_FW_LOADER?")]
    Write {
        /// The parameter file.
        param: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// The merged root's firmware directory, when it has one.
pub fn find_dir(root: &Path) -> Option<PathBuf> {
    ["/usr/lib/firmware", "/lib/firmware"]
        .iter()
        .filter_map(|dir| rootpath::resolve(root, Path::new(dir)).ok())
        .find(|dir| dir.is_dir())
}

/// Writes `dir` into the kernel parameter file `param` and checks that
/// it reads back (the kernel shows it with a trailing newline).
pub fn set_search_path(param: &Path, dir: &Path) -> Result<(), Error> {
    let bytes = dir.as_os_str().as_encoded_bytes();
    if bytes.len() > MAX_LEN {
        return Err(Error::TooLong {
            dir: dir.to_path_buf(),
        });
    }
    // One write without a newline: older kernels keep a trailing newline
    // as part of the path.
    std::fs::write(param, bytes).map_err(|source| Error::Write {
        param: param.to_path_buf(),
        source,
    })?;
    let read = std::fs::read(param).map_err(|source| Error::Read {
        param: param.to_path_buf(),
        source,
    })?;
    let held = read.strip_suffix(b"\n").unwrap_or(&read);
    if held != bytes {
        return Err(Error::Mismatch {
            param: param.to_path_buf(),
            dir: dir.to_path_buf(),
            read: String::from_utf8_lossy(&read).into_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;
    use crate::sys::error_chain;

    #[test]
    fn usr_lib_firmware_wins_over_lib_firmware() {
        let root = TestDir::new("fw");
        assert_eq!(find_dir(&root.0), None);
        root.dir("lib/firmware");
        assert_eq!(find_dir(&root.0), Some(root.0.join("lib/firmware")));
        root.dir("usr/lib/firmware");
        assert_eq!(find_dir(&root.0), Some(root.0.join("usr/lib/firmware")));
    }

    #[test]
    fn the_path_is_written_without_a_newline_and_bounded() {
        let dir = TestDir::new("fw-param");
        let param = dir.0.join("path");
        set_search_path(&param, Path::new("/strata/root/usr/lib/firmware")).unwrap();
        assert_eq!(
            std::fs::read(&param).unwrap(),
            b"/strata/root/usr/lib/firmware"
        );
        let long = PathBuf::from(format!("/{}", "x".repeat(255)));
        assert!(matches!(
            set_search_path(&param, &long),
            Err(Error::TooLong { .. })
        ));
        let err = set_search_path(&dir.0.join("no/such/param"), Path::new("/x")).unwrap_err();
        assert!(error_chain(&err).contains("is the kernel built with CONFIG_FW_LOADER?: "));
    }
}
