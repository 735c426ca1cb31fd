//! The plan of a build: every input resolved and checked before anything is
//! written. [`binaries`] finds the guest init and the bootloader.

pub mod binaries;
