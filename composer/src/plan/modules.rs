//! The initramfs module set: strata's defaults, the platform's, the
//! profile's, closed over their dependencies in the unpacked kernel.
//!
//! The names are fixed by the plan; the closure needs the kernel's module
//! index, so it runs after the kernel step (an unknown name in
//! `kernel.modules` is blamed here, still before any output is written).

use super::{Plan, PlatformPlan};
use crate::error::{Error, ErrorKind, Result};
use crate::kmod::ModuleRef;
use crate::source::kernel::Kernel;

/// Modules every initramfs carries: disk and CD controllers of the platforms
/// strata targets, and the filesystems the init mounts.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "nvme",
    "ahci",
    "sd_mod",
    "sr_mod",
    "cdrom",
    "isofs",
    "loop",
    "squashfs",
    "erofs",
    "overlay",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// The names a platform's initramfs asks for, before the closure.
pub fn wanted(platform_modules: Vec<String>, profile_modules: &[String]) -> Vec<String> {
    let mut wanted: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(platform_modules);
    wanted.extend(profile_modules.iter().cloned());
    wanted
}

/// The closure of `pp.modules` in `kernel`, dependencies first, each module written as a file
/// out of the kernel cache's pack ([`Kernel::unpack`]).
pub fn closure(plan: &Plan, pp: &PlatformPlan, kernel: &Kernel) -> Result<Vec<ModuleRef>> {
    let closure = kernel.index.closure(&pp.modules).map_err(|e| -> Error {
        plan.blame
            .error(
                "kernel.modules",
                "a module is not in the kernel",
                "check the module name (`ls lib/modules/<release>/kernel`), or remove it",
            )
            .caused_by(e)
            .into()
    })?;
    kernel
        .unpack(closure.iter().map(|m| m.rel_path.as_path()))
        .map_err(|e| Error::step(ErrorKind::Io, "unpacking the kernel's modules", e))?;
    Ok(closure)
}
