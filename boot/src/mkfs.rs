//! A minimal ext2 `mkfs`, so the init can format the persistent state
//! partition on first boot without any tool in the image.
//!
//! Why ext2: the kernel's ext4 driver (built into Debian's kernel, and
//! mounting ext2 through `CONFIG_EXT4_USE_FOR_EXT2`) reads it, overlayfs
//! accepts it as an upper layer (it has xattrs and `d_type`), and its
//! on-disk format needs no journal and no checksums, so a writer stays
//! small enough to check by eye and by `e2fsck -fn` (see the tests).
//!
//! Layout: 4 KiB blocks, 32768 blocks (128 MiB) per group, 256-byte
//! inodes, one inode per 16 KiB. Every group starts with a copy of the
//! superblock and the group descriptor table (no `sparse_super`), then its
//! block bitmap, inode bitmap and inode table; group 0 also holds the
//! data blocks of `/` and `/lost+found`. Features: `ext_attr`, `filetype`,
//! `large_file`. A last group too small for its own metadata is left out.
//! Every metadata block is written (the inode tables are zeroed), so the
//! old content of the device does not matter.
//! Not supported: block sizes other than 4 KiB, devices over 16 TiB.

use std::io::{self, Seek, SeekFrom, Write};

/// Block size in bytes.
pub const BLOCK: u64 = 4096;
/// Blocks per group: one bitmap block's bits.
const BLOCKS_PER_GROUP: u64 = BLOCK * 8;
/// Bytes of device per inode.
const BYTES_PER_INODE: u64 = 16384;
/// On-disk inode size.
const INODE_SIZE: u64 = 256;
/// Extra inode bytes in use beyond the first 128 (ext4's `i_extra_isize`).
const EXTRA_ISIZE: u16 = 32;
/// The superblock's offset in the device and in group 0's first block.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// The superblock's magic number, at byte 56 of it.
pub const MAGIC: u16 = 0xEF53;
/// The first inode that is not reserved; lost+found takes it.
const FIRST_INO: u32 = 11;
const ROOT_INO: u32 = 2;
const LOST_FOUND_INO: u32 = 11;
/// Smallest group worth having: its metadata plus some room.
const MIN_GROUP_BLOCKS: u64 = 64;

/// Why a file system could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device is too small or too large for this writer.
    #[error(
        "a device of {size} bytes cannot hold an ext2 file system here (need 1 MiB to 16 TiB)"
    )]
    Size {
        /// The device size.
        size: u64,
    },
    /// Writing failed.
    #[error("cannot write the file system")]
    Write(#[source] io::Error),
}

/// The shape of the file system for one device size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the file system.
    pub blocks: u64,
    /// Block groups.
    pub groups: u64,
    /// Inodes per group (a multiple of 16: whole inode-table blocks).
    pub inodes_per_group: u64,
    /// Blocks of the group descriptor table.
    pub gdt_blocks: u64,
    /// Blocks of one group's inode table.
    pub itable_blocks: u64,
}

impl Geometry {
    /// The geometry for a device of `size` bytes.
    pub fn for_size(size: u64) -> Result<Geometry, Error> {
        let mut blocks = size / BLOCK;
        if !(256..=(1 << 32) - 1).contains(&blocks) {
            return Err(Error::Size { size });
        }
        let inodes_per_block = BLOCK / INODE_SIZE;
        let inodes_per_group = (BLOCKS_PER_GROUP.min(blocks) * BLOCK / BYTES_PER_INODE)
            .next_multiple_of(inodes_per_block)
            .clamp(inodes_per_block, BLOCK * 8);
        let itable_blocks = inodes_per_group / inodes_per_block;
        let mut groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let gdt_blocks = (groups * 32).div_ceil(BLOCK);
        let overhead = 1 + gdt_blocks + 2 + itable_blocks;
        let last = blocks - (groups - 1) * BLOCKS_PER_GROUP;
        if groups > 1 && last < overhead + MIN_GROUP_BLOCKS {
            groups -= 1;
            blocks = groups * BLOCKS_PER_GROUP;
        }
        if blocks < overhead + MIN_GROUP_BLOCKS {
            return Err(Error::Size { size });
        }
        Ok(Geometry {
            blocks,
            groups,
            inodes_per_group,
            gdt_blocks,
            itable_blocks,
        })
    }

    fn group_start(&self, group: u64) -> u64 {
        group * BLOCKS_PER_GROUP
    }

    fn group_blocks(&self, group: u64) -> u64 {
        (self.blocks - self.group_start(group)).min(BLOCKS_PER_GROUP)
    }

    /// Blocks at a group's start used by metadata.
    fn overhead(&self) -> u64 {
        1 + self.gdt_blocks + 2 + self.itable_blocks
    }

    fn block_bitmap(&self, group: u64) -> u64 {
        self.group_start(group) + 1 + self.gdt_blocks
    }

    fn inode_table(&self, group: u64) -> u64 {
        self.block_bitmap(group) + 2
    }

    /// The data block of `/` (group 0, right after its metadata).
    fn root_block(&self) -> u64 {
        self.overhead()
    }

    fn inodes(&self) -> u64 {
        self.groups * self.inodes_per_group
    }

    /// Blocks used in `group`: its metadata, and for group 0 the two directories.
    fn used_blocks(&self, group: u64) -> u64 {
        self.overhead() + if group == 0 { 2 } else { 0 }
    }

    /// Inodes used in `group`: the reserved ones and lost+found, all in group 0.
    fn used_inodes(&self, group: u64) -> u64 {
        if group == 0 {
            u64::from(LOST_FOUND_INO)
        } else {
            0
        }
    }

    fn free_blocks(&self) -> u64 {
        (0..self.groups)
            .map(|g| self.group_blocks(g) - self.used_blocks(g))
            .sum()
    }
}

/// What varies between file systems of the same geometry.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// The file system UUID.
    pub uuid: [u8; 16],
    /// Creation time (Unix seconds), for the superblock and both directories.
    pub time: u32,
}

/// True when `superblock_area` (the device's first 2 KiB, or more) holds an
/// ext2/3/4 superblock magic: the device was formatted before.
pub fn has_magic(superblock_area: &[u8]) -> bool {
    let at = SUPERBLOCK_OFFSET as usize + 56;
    superblock_area
        .get(at..at + 2)
        .is_some_and(|b| u16::from_le_bytes([b[0], b[1]]) == MAGIC)
}

/// Writes a fresh ext2 file system over a device (or file) of `size` bytes.
/// The label is `strata-state`.
pub fn format<W: Write + Seek>(dev: &mut W, size: u64, id: Identity) -> Result<Geometry, Error> {
    let geo = Geometry::for_size(size)?;
    write_all(dev, &geo, id).map_err(Error::Write)?;
    Ok(geo)
}

fn write_all<W: Write + Seek>(dev: &mut W, geo: &Geometry, id: Identity) -> io::Result<()> {
    let gdt = group_descriptors(geo);
    for group in 0..geo.groups {
        let start = geo.group_start(group);
        let mut first = vec![0u8; BLOCK as usize];
        let sb = superblock(geo, id, group);
        first[SUPERBLOCK_OFFSET as usize..SUPERBLOCK_OFFSET as usize + sb.len()]
            .copy_from_slice(&sb);
        write_at(dev, start, &first)?;
        write_at(dev, start + 1, &gdt)?;
        write_at(dev, geo.block_bitmap(group), &block_bitmap(geo, group))?;
        write_at(dev, geo.block_bitmap(group) + 1, &inode_bitmap(geo, group))?;
        let zeros = vec![0u8; BLOCK as usize * 16];
        let table = geo.inode_table(group);
        let mut done = 0;
        while done < geo.itable_blocks {
            let n = (geo.itable_blocks - done).min(16);
            write_at(dev, table + done, &zeros[..(n * BLOCK) as usize])?;
            done += n;
        }
    }
    write_inode(
        dev,
        geo,
        ROOT_INO,
        &dir_inode(0o755, 3, geo.root_block(), id.time),
    )?;
    write_inode(
        dev,
        geo,
        LOST_FOUND_INO,
        &dir_inode(0o700, 2, geo.root_block() + 1, id.time),
    )?;
    let root = dir_block(&[
        (ROOT_INO, "."),
        (ROOT_INO, ".."),
        (LOST_FOUND_INO, "lost+found"),
    ]);
    write_at(dev, geo.root_block(), &root)?;
    let lost = dir_block(&[(LOST_FOUND_INO, "."), (ROOT_INO, "..")]);
    write_at(dev, geo.root_block() + 1, &lost)?;
    dev.flush()
}

fn write_at<W: Write + Seek>(dev: &mut W, block: u64, bytes: &[u8]) -> io::Result<()> {
    dev.seek(SeekFrom::Start(block * BLOCK))?;
    dev.write_all(bytes)
}

fn write_inode<W: Write + Seek>(
    dev: &mut W,
    geo: &Geometry,
    ino: u32,
    inode: &[u8],
) -> io::Result<()> {
    // Both inodes live in group 0.
    let offset = geo.inode_table(0) * BLOCK + u64::from(ino - 1) * INODE_SIZE;
    dev.seek(SeekFrom::Start(offset))?;
    dev.write_all(inode)
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Narrows a count the geometry keeps under 2^32.
fn n32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The superblock (1024 bytes) as group `group` stores its copy.
fn superblock(geo: &Geometry, id: Identity, group: u64) -> Vec<u8> {
    let mut sb = vec![0u8; 1024];
    put32(&mut sb, 0, n32(geo.inodes()));
    put32(&mut sb, 4, n32(geo.blocks));
    put32(&mut sb, 12, n32(geo.free_blocks()));
    put32(&mut sb, 16, n32(geo.inodes() - u64::from(LOST_FOUND_INO)));
    put32(&mut sb, 20, 0); // first data block: 0 with 4 KiB blocks
    put32(&mut sb, 24, 2); // log2(block size) - 10
    put32(&mut sb, 28, 2); // fragment size = block size
    put32(&mut sb, 32, n32(BLOCKS_PER_GROUP));
    put32(&mut sb, 36, n32(BLOCKS_PER_GROUP));
    put32(&mut sb, 40, n32(geo.inodes_per_group));
    put32(&mut sb, 48, id.time); // last write
    put16(&mut sb, 54, 0xFFFF); // max mount count: -1, no forced checks
    put16(&mut sb, 56, MAGIC);
    put16(&mut sb, 58, 1); // state: clean
    put16(&mut sb, 60, 1); // errors: continue
    put32(&mut sb, 64, id.time); // last check
    put32(&mut sb, 76, 1); // revision 1: dynamic inode sizes, features
    put32(&mut sb, 84, FIRST_INO);
    put16(&mut sb, 88, INODE_SIZE as u16);
    put16(&mut sb, 90, group as u16);
    put32(&mut sb, 92, 0x0008); // compat: ext_attr
    put32(&mut sb, 96, 0x0002); // incompat: filetype
    put32(&mut sb, 100, 0x0002); // ro_compat: large_file
    sb[104..120].copy_from_slice(&id.uuid);
    sb[120..120 + 12].copy_from_slice(b"strata-state");
    put32(&mut sb, 264, id.time); // mkfs time
    put16(&mut sb, 0x15C, EXTRA_ISIZE); // min extra isize
    put16(&mut sb, 0x15E, EXTRA_ISIZE); // want extra isize
    sb
}

/// The group descriptor table, padded to whole blocks.
fn group_descriptors(geo: &Geometry) -> Vec<u8> {
    let mut gdt = vec![0u8; (geo.gdt_blocks * BLOCK) as usize];
    for group in 0..geo.groups {
        let d = &mut gdt[(group * 32) as usize..(group * 32 + 32) as usize];
        put32(d, 0, n32(geo.block_bitmap(group)));
        put32(d, 4, n32(geo.block_bitmap(group) + 1));
        put32(d, 8, n32(geo.inode_table(group)));
        put16(
            d,
            12,
            (geo.group_blocks(group) - geo.used_blocks(group)) as u16,
        );
        put16(
            d,
            14,
            (geo.inodes_per_group - geo.used_inodes(group)) as u16,
        );
        put16(d, 16, if group == 0 { 2 } else { 0 });
    }
    gdt
}

/// A bitmap block with the first `used` bits set, and every bit from
/// `valid` on (past the end of the group) set too, as ext2 requires.
fn bitmap(used: u64, valid: u64) -> Vec<u8> {
    let mut map = vec![0u8; BLOCK as usize];
    for bit in (0..used).chain(valid..BLOCK * 8) {
        map[(bit / 8) as usize] |= 1 << (bit % 8);
    }
    map
}

fn block_bitmap(geo: &Geometry, group: u64) -> Vec<u8> {
    bitmap(geo.used_blocks(group), geo.group_blocks(group))
}

fn inode_bitmap(geo: &Geometry, group: u64) -> Vec<u8> {
    bitmap(geo.used_inodes(group), geo.inodes_per_group)
}

/// A directory inode with one data block.
fn dir_inode(perm: u16, links: u16, block: u64, time: u32) -> Vec<u8> {
    let mut inode = vec![0u8; INODE_SIZE as usize];
    put16(&mut inode, 0, 0o040000 | perm);
    put32(&mut inode, 4, BLOCK as u32);
    for at in [8, 12, 16] {
        put32(&mut inode, at, time);
    }
    put16(&mut inode, 26, links);
    put32(&mut inode, 28, (BLOCK / 512) as u32);
    put32(&mut inode, 40, n32(block));
    put16(&mut inode, 128, EXTRA_ISIZE);
    inode
}

/// A directory block holding `entries`; the last one's record runs to the
/// block's end.
fn dir_block(entries: &[(u32, &str)]) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK as usize];
    let mut at = 0usize;
    for (i, (ino, name)) in entries.iter().enumerate() {
        let len = (8 + name.len()).next_multiple_of(4);
        let rec_len = if i + 1 == entries.len() {
            BLOCK as usize - at
        } else {
            len
        };
        put32(&mut block, at, *ino);
        put16(&mut block, at + 4, rec_len as u16);
        block[at + 6] = name.len() as u8;
        block[at + 7] = 2; // file type: directory
        block[at + 8..at + 8 + name.len()].copy_from_slice(name.as_bytes());
        at += len;
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    fn id() -> Identity {
        Identity {
            uuid: *b"strata-test-uuid",
            time: 1_700_000_000,
        }
    }

    /// Formats a sparse file of `size` bytes full of stale bytes at the
    /// metadata's places, and returns it with e2fsck's verdict.
    fn formatted(size: u64) -> (tempfile::NamedTempFile, Geometry) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(size).unwrap();
        // Stale content where the inode table goes must not matter.
        file.write_all(&vec![0xA5; 4 * MIB as usize]).unwrap();
        let geo = format(file.as_file_mut(), size, id()).unwrap();
        (file, geo)
    }

    /// e2fsck's verdict on `path`; `None` when e2fsck is missing (and
    /// that may be skipped).
    fn e2fsck(path: &std::path::Path) -> Option<()> {
        let tool = ["/usr/sbin/e2fsck", "/sbin/e2fsck"]
            .into_iter()
            .find(|t| std::path::Path::new(t).exists());
        let ok = crate::test_support::require(
            tool.is_some(),
            "e2fsck is not installed",
            "install e2fsprogs (make deps)",
        );
        let tool = tool.filter(|_| ok)?;
        let out = Command::new(tool).arg("-fn").arg(path).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "e2fsck -fn refused it:\n{text}");
        assert!(text.contains("strata-state: 11/"), "{text}");
        Some(())
    }

    #[test]
    fn one_small_group_passes_e2fsck() {
        let (file, geo) = formatted(8 * MIB);
        assert_eq!(geo.groups, 1);
        assert_eq!(geo.blocks, 2048);
        let _ = e2fsck(file.path());
        let mut head = vec![0u8; 2048];
        use std::io::Read;
        let mut f = std::fs::File::open(file.path()).unwrap();
        f.read_exact(&mut head).unwrap();
        assert!(has_magic(&head));
        assert!(!has_magic(&[0u8; 2048]));
        assert!(!has_magic(&[0u8; 100]));
    }

    #[test]
    fn several_groups_and_a_short_last_one_pass_e2fsck() {
        // 3 full groups and a partial one of 1000 blocks.
        let (file, geo) = formatted(3 * 128 * MIB + 1000 * BLOCK + 123);
        assert_eq!(geo.groups, 4);
        assert_eq!(geo.blocks, 3 * 32768 + 1000);
        let _ = e2fsck(file.path());
    }

    #[test]
    fn a_last_group_too_small_for_its_metadata_is_left_out() {
        let (file, geo) = formatted(2 * 128 * MIB + 10 * BLOCK);
        assert_eq!(geo.groups, 2);
        assert_eq!(geo.blocks, 2 * 32768);
        let _ = e2fsck(file.path());
    }

    #[test]
    fn tiny_devices_are_refused() {
        let err = Geometry::for_size(512 * 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a device of 524288 bytes cannot hold an ext2 file system here (need 1 MiB to 16 TiB)"
        );
    }
}
