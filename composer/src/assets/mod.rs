//! Boot assets made from the resolved inputs: the squashfs [`layers`] of the
//! root and the extensions, the [`initramfs`] that carries them, and the
//! [`esp`] contents (bootloader, kernel, BLS entry).

pub mod esp;
pub mod initramfs;
pub mod layers;
