//! Boot assets made from the resolved inputs: the squashfs [`layers`] of the
//! root and the extensions, the [`initramfs`] that carries them, and the
//! [`esp`] contents (bootloader, kernel, BLS entry); the [`guest_files`] the init reads.

pub mod esp;
pub mod guest_files;
pub mod initramfs;
pub mod layers;
