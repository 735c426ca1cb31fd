//! What runs inside the guest: the strata init (PID 1 of the initramfs).
//! What it shares with the composer and the boot runner (the report it
//! prints, the initramfs files it reads, systemd's extension rules) is the
//! `strata-proto` crate.
//!
//! The init's job, in order: mount the API file systems, load the listed
//! kernel modules, stack the root squashfs and the extension squashfs images
//! into one read-only overlay, merge systemd sysext/confext images onto it,
//! check each layer and the extensions flattened into the root or shipped
//! disabled, point the firmware loader at the merged root, load the
//! modules extensions ship by name, report the disks and their drivers
//! over the console, then power off
//! (`strata.smoke=1`) or switch into the merged root.
//! [`init::run`] is the whole sequence; the other modules each do one job
//! and are unit-tested on the host.

pub mod checks;
pub mod cmdline;
pub mod console;
pub mod disks;
pub mod extensions;
pub mod extrelease;
pub mod firmware;
pub mod init;
pub mod kmod;
pub mod loopdev;
pub mod mkfs;
pub mod modules;
pub mod mountinfo;
pub mod mounts;
pub mod osrelease;
pub mod overlay;
pub mod power;
pub mod profile_files;
pub mod rootpath;
pub mod secureboot;
pub mod services;
pub mod shipped;
pub mod stack;
pub mod state;
pub mod switch;
pub mod sys;
pub mod sysext;
pub mod sysreport;
#[cfg(test)]
mod test_support;
pub mod tpm;
