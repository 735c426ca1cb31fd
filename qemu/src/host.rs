//! The QEMU system emulator binaries, looked up on `PATH`.
//!
//! Supported: Debian's `qemu-system-x86_64` (package `qemu-system-x86`) and
//! `qemu-system-aarch64` (package `qemu-system-arm`), QEMU 7.2 or newer.
//! Not supported: picking a binary outside `PATH`.

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::Arch;

/// Why no emulator could be found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No executable of that name on `PATH`.
    #[error("`{binary}` was not found on PATH; install it with `apt-get install {package}`")]
    QemuMissing {
        /// The binary that was looked for.
        binary: &'static str,
        /// The Debian package that ships it.
        package: &'static str,
    },
}

/// The emulator binary for `arch` and its Debian package.
pub fn qemu_binary(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
    }
}

/// Finds the emulator for `arch` on `PATH`.
pub fn find_qemu(arch: Arch) -> Result<PathBuf, Error> {
    let (binary, package) = qemu_binary(arch);
    let path = env::var_os("PATH").unwrap_or_default();
    search(&path, binary).ok_or(Error::QemuMissing { binary, package })
}

/// The first executable file called `binary` in the `PATH`-style list `path`.
fn search(path: &OsStr, binary: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Memory QEMU itself needs beside the guest's RAM (its code, TCG's translation cache, device
/// state), so a guest of `memory_mib` is budgeted at `memory_mib + QEMU_OVERHEAD_MIB`.
pub const QEMU_OVERHEAD_MIB: u64 = 256;

/// The memory the kernel says new processes can have without swapping (`MemAvailable` of
/// `/proc/meminfo`), in MiB; `None` where that is unknown.
pub fn available_memory_mib() -> Option<u64> {
    mem_available_mib(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemAvailable` of a `/proc/meminfo` text, in MiB.
fn mem_available_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn search_skips_non_executables() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let plain = a.path().join("qemu-system-x86_64");
        fs::write(&plain, b"").unwrap();
        let exe = b.path().join("qemu-system-x86_64");
        fs::write(&exe, b"").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let path = env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(search(&path, "qemu-system-x86_64"), Some(exe));
        assert_eq!(search(&path, "qemu-system-aarch64"), None);
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(mem_available_mib(text), Some(2048));
        assert_eq!(mem_available_mib("MemTotal: 1 kB\n"), None);
        assert!(available_memory_mib().is_some_and(|m| m > 0));
    }

    #[test]
    fn missing_binary_names_the_package() {
        let err = Error::QemuMissing {
            binary: "qemu-system-aarch64",
            package: "qemu-system-arm",
        };
        assert_eq!(
            err.to_string(),
            "`qemu-system-aarch64` was not found on PATH; install it with `apt-get install qemu-system-arm`"
        );
    }
}
