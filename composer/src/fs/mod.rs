//! Filesystems and archives, written and read natively: the in-memory
//! [`tree`] every layer is built as, [`tar`] (the tar reader), [`squashfs`] (writer) and
//! [`squashfs_read`], [`erofs`] (reader), [`cpio`] (newc), [`fat`] (FAT32
//! ESP) and [`flatten`] (overlayfs semantics applied to trees).

pub mod cpio;
pub mod erofs;
pub mod fat;
pub mod flatten;
pub mod squashfs;
mod squashfs_ahead;
pub mod squashfs_read;
pub mod tar;
pub mod tree;
