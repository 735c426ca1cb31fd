//! The contracts between strata's three programs, in one place so that they
//! cannot drift apart:
//!
//! * [`report`]: the events the guest init prints on the console, which the
//!   boot runner (`strata-qemu`) and `strata boot` read;
//! * [`initramfs`]: the paths and formats of the files the composer writes
//!   into the initramfs and the guest init reads;
//! * [`ExtensionKind`] and [`Arch`]: the names every side spells the same way;
//! * [`osrelease`], [`extrelease`], [`strverscmp`] and [`rootpath`]: systemd's
//!   os-release format and sysext/confext rules, which the composer checks an
//!   image against before it ships and the guest init before it merges it.
//!
//! Dependencies stay at serde, serde_json and thiserror: the guest init is a
//! small static binary and links all of this.

pub mod arch;
pub mod extrelease;
pub mod initramfs;
pub mod kind;
pub mod osrelease;
pub mod report;
pub mod rootpath;
pub mod strverscmp;

pub use arch::Arch;
pub use kind::ExtensionKind;
