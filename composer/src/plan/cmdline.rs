//! The kernel command line and the boot entry that carries it.
//!
//! The command line is checked against the kernel's limit here, at plan
//! time: the kernel silently truncates a longer one, so the last arguments
//! (the profile's) would be lost without a word.

use crate::arch::Arch;
use crate::assets::esp::BootEntry;
use crate::profile::platform::Platform;

/// The platform's arguments, then strata's, then the profile's (so the profile wins).
pub fn cmdline(platform: &Platform, arch: Arch, profile_args: &[String]) -> String {
    let mut args: Vec<String> = platform.args(arch).to_vec();
    args.push(format!("strata.platform={}", platform.name));
    args.extend(profile_args.iter().cloned());
    args.join(" ")
}

/// The kernel's `COMMAND_LINE_SIZE` on x86 and arm64 (the two
/// architectures strata builds for), the terminating NUL included.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// Refuses a command line the kernel would truncate: its length and the limit.
pub fn check_length(cmdline: &str) -> Result<(), String> {
    let need = cmdline.len() + 1;
    if need > COMMAND_LINE_SIZE {
        return Err(format!(
            "the kernel command line would be {need} bytes with its terminating NUL (the platform's arguments, strata's and `kernel.args`), over the kernel's limit of {COMMAND_LINE_SIZE}"
        ));
    }
    Ok(())
}

/// The Boot Loader Specification entry of an image.
pub fn boot_entry(name: &str, os: &(String, String), release: &str, cmdline: &str) -> BootEntry {
    BootEntry {
        id: format!("strata-{name}"),
        title: format!("{} {} ({name})", os.0, os.1),
        version: release.to_string(),
        cmdline: cmdline.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_the_terminating_nul() {
        assert!(check_length(&"x".repeat(COMMAND_LINE_SIZE - 1)).is_ok());
        let e = check_length(&"x".repeat(COMMAND_LINE_SIZE)).unwrap_err();
        assert!(e.contains("would be 2049 bytes"), "{e}");
        assert!(e.contains("limit of 2048"), "{e}");
    }
}
