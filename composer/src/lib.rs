//! strata composes bootable Linux images — a kernel, a squashfs root, an
//! initramfs and system extensions — into UEFI disk images, without root,
//! loop devices or external tools, and boot-tests them in QEMU.
//!
//! The path of one build is in `docs/architecture.md`; [`build::build`] is
//! the entry point, and the `strata` binary only parses arguments.
#![warn(missing_docs)]

pub mod arch;
pub mod binaries;
pub mod bootcmd;
pub mod build;
pub mod compress;
pub mod cpio;
pub mod deb;
pub mod digest;
pub mod disk;
pub mod erofs;
pub mod error;
pub mod esp;
pub mod extension;
pub mod fat;
pub mod flatten;
pub mod format;
pub mod guid;
pub mod initramfs;
pub mod io;
pub mod kernel;
pub mod kmod;
pub mod kmod_meta;
pub mod layers;
pub mod manifest;
pub mod oci;
pub mod output;
pub mod par;
pub mod platform;
pub mod profile;
pub mod sqfsread;
pub mod squashfs;
pub mod tree;
pub mod units;
pub mod unpack;
pub mod yamlpos;

pub use arch::Arch;
pub use error::{Error, ErrorKind, InputError, Result};
