//! Whether the firmware booted this system under UEFI Secure Boot: the
//! `SecureBoot` variable of the EFI global namespace, read through
//! efivarfs (Debian builds efivarfs as a module: the initramfs of a signed
//! image carries it). The report lets a boot test prove the firmware
//! checked the signatures, instead of assuming it.

use std::path::Path;

use crate::mounts;

/// Where efivarfs is mounted.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

/// `SecureBoot` in the EFI global variable namespace.
pub const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Reads the variable below `efivars`, mounting efivarfs there first when
/// it is not. `Err` says why the state is unknown.
pub fn read(efivars: &Path) -> Result<bool, String> {
    if !efivars.parent().is_some_and(Path::exists) {
        return Err("no /sys/firmware/efi: the kernel was not booted through UEFI".into());
    }
    let var = efivars.join(SECURE_BOOT_VAR);
    if !var.exists() {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        mounts::mount("efivarfs", efivars, "efivarfs", flags, None)
            .map_err(|e| format!("cannot mount efivarfs on {}: {e}", efivars.display()))?;
    }
    let bytes = std::fs::read(&var).map_err(|e| format!("cannot read {}: {e}", var.display()))?;
    parse(&bytes)
}

/// An efivarfs file is the variable's 4 attribute bytes, then its data:
/// one byte, 1 for Secure Boot on.
pub fn parse(bytes: &[u8]) -> Result<bool, String> {
    match bytes {
        [_, _, _, _, value] => Ok(*value == 1),
        _ => Err(format!(
            "{SECURE_BOOT_VAR} holds {} bytes, not 4 attribute bytes and 1 value byte",
            bytes.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_byte_follows_the_attributes() {
        assert_eq!(parse(&[6, 0, 0, 0, 1]), Ok(true));
        assert_eq!(parse(&[6, 0, 0, 0, 0]), Ok(false));
        assert!(parse(&[1]).is_err());
    }

    #[test]
    fn without_uefi_the_state_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(&dir.path().join("missing/efivars")).unwrap_err();
        assert!(e.contains("not booted through UEFI"), "{e}");
    }
}
