//! UEFI firmware for the guest: Debian's OVMF (amd64) and AAVMF (arm64) builds.
//!
//! Supported: the plain pflash images that the `ovmf` and `qemu-efi-aarch64`
//! packages install, and their Secure Boot builds with Debian's "snakeoil"
//! test keys enrolled ([`find_secure_boot_firmware`]: the variable store's
//! PK, KEK and db hold `/usr/share/ovmf/PkKek-1-snakeoil.pem`, so an image
//! signed with that key boots and any other does not), and that code with
//! the plain, empty variable store for setup mode
//! ([`find_setup_mode_firmware`]: no PK, so the firmware runs anything and
//! lets the guest enrol its own keys). Not supported: the
//! Microsoft-keyed stores (`*.ms.fd`), firmware from other locations,
//! 32-bit ARM.
//!
//! The VARS image is writable flash: the firmware stores boot entries in it.
//! Each run therefore gets its own copy in the work directory, so the system
//! file is never modified and runs cannot influence each other.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::Arch;

/// The two flash images QEMU maps: read-only code and a per-run variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// Firmware code, mapped read-only as pflash unit 0.
    pub code: PathBuf,
    /// The pristine variable store; copy it with [`copy_vars`] before use.
    pub vars: PathBuf,
}

/// Why the firmware could not be found or prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The per-run copy of the variable store could not be written.
    #[error("cannot copy firmware variables {from} to {to}")]
    CopyVars {
        /// The system VARS image.
        from: PathBuf,
        /// The copy in the work directory.
        to: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A firmware file is absent: its Debian package is not installed.
    #[error("firmware file {path} is missing; install it with `apt-get install {package}`")]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
        /// The Debian package that ships it.
        package: &'static str,
    },
}

/// Where Debian puts the firmware for `arch`, and which package ships it.
fn layout(arch: Arch) -> (&'static str, &'static str, &'static str) {
    match arch {
        Arch::Amd64 => (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "ovmf",
        ),
        Arch::Arm64 => (
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
            "qemu-efi-aarch64",
        ),
    }
}

/// The Secure Boot build for `arch` with the snakeoil keys enrolled, and
/// its package. amd64's needs SMM (`-machine q35,smm=on` and secure pflash).
fn secure_boot_layout(arch: Arch) -> (&'static str, &'static str, &'static str) {
    match arch {
        Arch::Amd64 => (
            "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
            "ovmf",
        ),
        Arch::Arm64 => (
            "/usr/share/AAVMF/AAVMF_CODE.snakeoil.fd",
            "/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd",
            "qemu-efi-aarch64",
        ),
    }
}

/// Finds the Secure Boot firmware for `arch` (snakeoil keys enrolled).
pub fn find_secure_boot_firmware(arch: Arch) -> Result<Firmware, Error> {
    locate(Path::new("/"), secure_boot_layout(arch))
}

/// The Secure Boot code of [`secure_boot_layout`] with the empty variable
/// store of [`layout`]: the firmware starts in setup mode.
fn setup_mode_layout(arch: Arch) -> (&'static str, &'static str, &'static str) {
    let (code, _, package) = secure_boot_layout(arch);
    (code, layout(arch).1, package)
}

/// Finds the Secure Boot firmware for `arch` with an empty variable store
/// (setup mode), for booting an image that enrols its own keys.
pub fn find_setup_mode_firmware(arch: Arch) -> Result<Firmware, Error> {
    locate(Path::new("/"), setup_mode_layout(arch))
}

/// Finds the firmware for `arch` in the system's Debian locations.
pub fn find_firmware(arch: Arch) -> Result<Firmware, Error> {
    find_under(Path::new("/"), arch)
}

/// Finds the firmware below `root`, which stands in for `/` (tests use a
/// scratch tree so they do not depend on the host's packages).
fn find_under(root: &Path, arch: Arch) -> Result<Firmware, Error> {
    locate(root, layout(arch))
}

/// The code and vars files of `(code, vars, package)` below `root`.
fn locate(
    root: &Path,
    (code, vars, package): (&'static str, &'static str, &'static str),
) -> Result<Firmware, Error> {
    let located = |abs: &str| {
        let path = root.join(abs.trim_start_matches('/'));
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Missing { path, package })
        }
    };
    Ok(Firmware {
        code: located(code)?,
        vars: located(vars)?,
    })
}

/// Copies the variable store into `work_dir` and makes the copy writable,
/// since QEMU opens pflash unit 1 read-write. Returns the copy's path.
pub fn copy_vars(firmware: &Firmware, work_dir: &Path) -> Result<PathBuf, Error> {
    let name = firmware
        .vars
        .file_name()
        .map_or_else(|| "VARS.fd".into(), |n| n.to_os_string());
    let to = work_dir.join(name);
    let fail = |source| Error::CopyVars {
        from: firmware.vars.clone(),
        to: to.clone(),
        source,
    };
    // A stale copy from an earlier run may be read-only; replace it.
    match fs::remove_file(&to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    fs::copy(&firmware.vars, &to).map_err(fail)?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).map_err(fail)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for f in files {
            let p = root.path().join(f.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, b"flash").unwrap();
        }
        root
    }

    #[test]
    fn secure_boot_firmware_is_the_snakeoil_pair() {
        let root = fake_root(&[
            "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
        ]);
        let fw = locate(root.path(), secure_boot_layout(Arch::Amd64)).unwrap();
        assert!(fw.vars.ends_with("OVMF_VARS_4M.snakeoil.fd"));
        let e = locate(root.path(), secure_boot_layout(Arch::Arm64)).unwrap_err();
        assert!(e.to_string().contains("AAVMF_CODE.snakeoil.fd"), "{e}");
    }

    #[test]
    fn setup_mode_is_the_secure_boot_code_with_the_empty_store() {
        let root = fake_root(&[
            "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "/usr/share/AAVMF/AAVMF_CODE.snakeoil.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
        ]);
        let fw = locate(root.path(), setup_mode_layout(Arch::Amd64)).unwrap();
        assert!(fw.code.ends_with("OVMF/OVMF_CODE_4M.snakeoil.fd"));
        assert!(fw.vars.ends_with("OVMF/OVMF_VARS_4M.fd"));
        let fw = locate(root.path(), setup_mode_layout(Arch::Arm64)).unwrap();
        assert!(fw.code.ends_with("AAVMF/AAVMF_CODE.snakeoil.fd"));
        assert!(fw.vars.ends_with("AAVMF/AAVMF_VARS.fd"));
    }

    #[test]
    fn finds_ovmf_4m_pair() {
        let root = fake_root(&[
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ]);
        let fw = find_under(root.path(), Arch::Amd64).unwrap();
        assert!(fw.code.ends_with("usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert!(fw.vars.ends_with("usr/share/OVMF/OVMF_VARS_4M.fd"));
    }

    #[test]
    fn missing_aavmf_names_path_and_package() {
        let root = fake_root(&["/usr/share/AAVMF/AAVMF_CODE.fd"]);
        let err = find_under(root.path(), Arch::Arm64).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("usr/share/AAVMF/AAVMF_VARS.fd"), "{msg}");
        assert!(msg.contains("apt-get install qemu-efi-aarch64"), "{msg}");
    }

    #[test]
    fn vars_copy_is_writable_and_leaves_original_alone() {
        let root = fake_root(&[
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ]);
        let fw = find_under(root.path(), Arch::Amd64).unwrap();
        fs::set_permissions(&fw.vars, fs::Permissions::from_mode(0o444)).unwrap();
        let work = tempfile::tempdir().unwrap();
        let copy = copy_vars(&fw, work.path()).unwrap();
        // A second run replaces the first copy.
        let copy = {
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o444)).unwrap();
            copy_vars(&fw, work.path()).unwrap()
        };
        assert_eq!(copy, work.path().join("OVMF_VARS_4M.fd"));
        assert_eq!(fs::read(&copy).unwrap(), b"flash");
        let mode = fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let orig = fs::metadata(&fw.vars).unwrap().permissions().mode() & 0o777;
        assert_eq!(orig, 0o444);
    }
}
