//! The TPM's PCR 11 as the guest sees it, for the boot test's verdict.
//!
//! Why: a UKI's stub measures its sections into PCR 11; the host predicted
//! that value at build time (`manifest.json`), and a boot under swtpm proves
//! the prediction by reading it back. The kernel's TPM driver publishes the
//! PCR banks in sysfs (`/sys/class/tpm/tpm0/pcr-<bank>/<n>`, Linux 5.12 and
//! later), so no TPM command is needed. Debian's amd64 kernel has the TIS
//! and CRB drivers built in; its arm64 kernel lacks the MMIO TIS driver
//! QEMU's `tpm-tis-device` needs, so arm64 guests report no TPM.

use std::path::Path;

/// The first TPM's sysfs directory.
pub const TPM0: &str = "/sys/class/tpm/tpm0";

/// PCR 11 of the SHA-256 bank below `tpm0` (a sysfs TPM directory), as
/// lowercase hex; `None` when there is no TPM at all.
pub fn read_pcr11(tpm0: &Path) -> Option<Result<String, String>> {
    if !tpm0.exists() {
        return None;
    }
    let file = tpm0.join("pcr-sha256/11");
    Some(match std::fs::read_to_string(&file) {
        Ok(text) => parse(&text).ok_or_else(|| format!("{} holds {text:?}", file.display())),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    })
}

/// The 64 hex digits of a sysfs PCR file (upper case, newline-terminated).
fn parse(text: &str) -> Option<String> {
    let t = text.trim();
    (t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sysfs_pcr() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_pcr11(&dir.path().join("tpm0")), None);
        let bank = dir.path().join("tpm0/pcr-sha256");
        std::fs::create_dir_all(&bank).unwrap();
        assert!(matches!(read_pcr11(&dir.path().join("tpm0")), Some(Err(_))));
        let hex = "3F960DEF2B75FA867EC732AC2C78F6F80378CE729927E33834E64736D4F58D6B";
        std::fs::write(bank.join("11"), format!("{hex}\n")).unwrap();
        assert_eq!(
            read_pcr11(&dir.path().join("tpm0")),
            Some(Ok(hex.to_ascii_lowercase()))
        );
        std::fs::write(bank.join("11"), "zz\n").unwrap();
        assert!(matches!(read_pcr11(&dir.path().join("tpm0")), Some(Err(_))));
    }
}
