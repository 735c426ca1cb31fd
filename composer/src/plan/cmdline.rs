//! The kernel command line and the boot entry that carries it.

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

/// The Boot Loader Specification entry of an image.
pub fn boot_entry(name: &str, os: &(String, String), release: &str, cmdline: &str) -> BootEntry {
    BootEntry {
        id: format!("strata-{name}"),
        title: format!("{} {} ({name})", os.0, os.1),
        version: release.to_string(),
        cmdline: cmdline.to_string(),
    }
}
