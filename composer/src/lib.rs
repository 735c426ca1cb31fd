//! strata composes bootable Linux images — a kernel, a squashfs root, an
//! initramfs and system extensions — into UEFI disk images, without root,
//! loop devices or external tools, and boot-tests them in QEMU.
//!
//! The path of one build is in `docs/architecture.md`; [`build::build`] is
//! the entry point, and the `strata` binary only parses arguments.
#![warn(missing_docs)]

pub mod arch;
pub mod assets;
pub mod binary;
pub mod boot;
pub mod build;
pub mod cache;
pub mod date;
pub mod disk;
pub mod error;
pub mod extension;
pub mod format;
pub mod fs;
pub mod io;
pub mod kmod;
pub mod manifest;
pub mod par;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod signals;
pub mod source;
#[cfg(test)]
pub(crate) mod test_support;
pub mod trust;

pub use arch::Arch;
pub use error::{Error, ErrorKind, InputError, Result};
