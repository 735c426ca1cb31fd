//! FAT32 writer for the EFI system partition (ESP).
//!
//! [`write`] formats a FAT32 volume of a given size at offset 0 of any
//! `Read + Write + Seek` device (a file, or a window onto a partition of a
//! larger disk image) and copies a list of files into it; [`required_size`]
//! says how large that volume must be. Formatting and copying are done by
//! `hadris-fat` (pinned): the research found it fsck-clean, bootable by
//! OVMF/AAVMF and reproducible, while `fatfs` 0.3.6 writes broken
//! subdirectories. This module adds what the ESP needs on top: a fixed
//! layout (cluster size, aligned data region) that [`required_size`] can
//! predict exactly, path checks with useful errors, and determinism.
//!
//! Supported: FAT32 only (UEFI expects FAT32 on an ESP), volumes from
//! 33 MiB (the FAT32 minimum of 65525 clusters with 512-byte clusters) up
//! to FAT32's limits; regular files and directories; 8.3 names, with the
//! NT case bits for all-lowercase 8.3 names (`readme.txt`) and VFAT long
//! names otherwise. Every entry gets the same timestamp, the volume serial
//! and label come from [`FatOptions`], and files are laid out in sorted path
//! order, so identical inputs give identical bytes.
//!
//! Not supported: FAT12/16, exFAT, symlinks, attributes (hidden, system,
//! read-only), files of 4 GiB or more, and updating an existing volume.
//! Clusters no file or directory uses are not written: the caller passes a
//! zeroed region (a fresh or `set_len`-extended file) when the whole image
//! must be reproducible. The boot sector's hidden-sectors field is 0, which
//! UEFI firmware, Linux and `fsck.fat` ignore.
//!
//! Contents are streamed: a [`FatSource::Path`] is read in 64 KiB chunks
//! while it is copied, so the memory used does not grow with the volume.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use hadris_fat::{FatKind, VolumeLabel};
use hadris_fs::{Content, DateTime, Node, PathError, Tree};
use hadris_io::StdIo;
use hadris_storage::sync::StreamDevice;
use hadris_storage::BlockSize;

const MIB: u64 = 1 << 20;
/// Sector size of the volume. 512 is what every firmware reads.
const SECTOR: u64 = 512;
/// Size of one directory entry (short or long-name slot).
const ENTRY: u64 = 32;
/// Reserved sectors FAT32 volumes conventionally start with (boot sector,
/// FSInfo, backup boot sector at 6); alignment padding is added to them.
const RESERVED_SECTORS: u64 = 32;
const FAT_COUNT: u64 = 2;
/// Fewer clusters than this make a volume FAT16 by definition, whatever
/// its boot sector says; firmware would then misread it.
const MIN_CLUSTERS: u64 = 65_525;
/// The largest cluster count FAT32 can address.
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5;
/// The smallest volume `write` accepts: below it even 512-byte clusters
/// are fewer than [`MIN_CLUSTERS`].
const MIN_VOLUME: u64 = 33 * MIB;
/// The largest file FAT can describe (its size field is 32 bits).
const MAX_FILE: u64 = u32::MAX as u64;
/// The largest name, in UTF-16 code units, a VFAT long name can hold.
const MAX_NAME_UNITS: usize = 255;
/// UTF-16 code units one long-name slot holds.
const UNITS_PER_SLOT: usize = 13;
/// 1980-01-01T00:00:00Z, the earliest time a FAT entry can hold.
const FAT_EPOCH: i64 = 315_532_800;
/// 2107-12-31T23:59:58Z, the latest time a FAT entry can hold.
const FAT_END: i64 = 4_354_819_198;
/// Symbols an 8.3 short name may hold besides letters and digits.
const SHORT_SYMBOLS: &[u8] = b"$%'-_@~`!(){}^#&";

/// Where a file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FatSource {
    /// A host file, read while the volume is written (not held in memory).
    Path(PathBuf),
    /// Bytes in memory (small files such as loader entries).
    Bytes(Vec<u8>),
}

/// One file to put on the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatFile {
    /// Path inside the volume, `/`-separated, without a leading `/`, e.g.
    /// `EFI/BOOT/BOOTX64.EFI`. Missing directories are created.
    pub path: String,
    /// The content.
    pub source: FatSource,
}

/// Volume-wide settings; everything that would otherwise come from a clock
/// or a random generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// The volume serial number.
    pub volume_id: u32,
    /// The volume label, at most 11 ASCII characters (stored uppercase), e.g.
    /// `ESP`. Empty means no label (`NO NAME`).
    pub label: String,
    /// Unix seconds stamped on every directory entry; clamped to the range
    /// FAT can store (1980-01-01 to 2107-12-31).
    pub timestamp: i64,
}

/// Errors of the FAT32 writer.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    /// A file path is empty, absolute, has an empty/`.`/`..` component or a
    /// character FAT forbids.
    #[error("esp path `{path}` is invalid: {reason}; write relative '/'-separated names such as `EFI/BOOT/BOOTX64.EFI`")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two files have the same path; FAT compares names ignoring case.
    #[error("esp path `{path}` is given twice (FAT names ignore case); keep only one of them")]
    Duplicate {
        /// The second occurrence.
        path: String,
    },
    /// A path is used both as a file and as a directory.
    #[error("esp path `{path}` is both a file and a directory; rename one of them")]
    FileDirConflict {
        /// The path of the file that is also a directory.
        path: String,
    },
    /// A source file could not be inspected.
    #[error("cannot read esp source file {path} for `{target}`: {source}")]
    Source {
        /// The host file.
        path: PathBuf,
        /// Where it was to go on the volume.
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A source is not a regular file.
    #[error(
        "esp source {path} for `{target}` is not a regular file; pass a file, not a directory"
    )]
    NotAFile {
        /// The host path.
        path: PathBuf,
        /// Where it was to go on the volume.
        target: String,
    },
    /// A file is larger than FAT can store.
    #[error("esp file `{path}` is {len} bytes; FAT32 files must be smaller than 4 GiB")]
    FileTooLarge {
        /// Path on the volume.
        path: String,
        /// Its length.
        len: u64,
    },
    /// The label is not a valid FAT volume label.
    #[error("esp label `{label}` is invalid: use at most 11 ASCII letters, digits, spaces or `-_`, not starting with a space")]
    BadLabel {
        /// The label as given.
        label: String,
    },
    /// The volume size is not a whole number of sectors.
    #[error("esp size {size} bytes is not a multiple of 512; round it to whole MiB")]
    UnalignedSize {
        /// The size given.
        size: u64,
    },
    /// The files do not fit, or the size is below the FAT32 minimum.
    #[error("esp of {given} bytes is too small: the files need a FAT32 volume of at least {required} bytes ({} MiB); raise the esp size", required / MIB)]
    TooSmall {
        /// What [`required_size`] gives for the files.
        required: u64,
        /// The size passed to [`write`].
        given: u64,
    },
    /// The volume is beyond what FAT32 can address.
    #[error("esp of {size} bytes is too large for FAT32; use at most 2 TiB")]
    TooLarge {
        /// The size given.
        size: u64,
    },
    /// [`file_ranges`] found no file at that path.
    #[error("esp path `{path}` is not a file on the volume")]
    NotFound {
        /// The path looked for.
        path: String,
    },
    /// Reading or writing the device failed after the copy.
    #[error("updating the esp directories at volume offset {offset} failed: {source}")]
    Io {
        /// Byte offset in the volume.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The volume written does not have the expected structure (a bug, or
    /// the device did not keep what was written).
    #[error("the esp just written is inconsistent at volume offset {offset}: {what}; check that the device reads back what is written to it")]
    Corrupt {
        /// Byte offset in the volume.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// Formatting or copying failed (device I/O, or a source file that
    /// changed while it was copied).
    #[error("writing the FAT32 esp failed: {0}")]
    Write(#[source] PathError),
}

/// The bytes of `files`' contents, without directories, FAT tables or
/// cluster slack (what `du -cb` counts).
pub fn content_size(files: &[FatFile]) -> Result<u64, FatError> {
    Ok(Plan::new(files)?.content_bytes())
}

/// The smallest FAT32 volume (bytes, a multiple of 1 MiB) that holds
/// `files` with the cluster size [`write`] chooses for it.
///
/// Any larger size holds them as well, because [`write`] falls back to
/// smaller clusters when its preferred size does not fit.
pub fn required_size(files: &[FatFile]) -> Result<u64, FatError> {
    let plan = Plan::new(files)?;
    required_for(&plan)
}

/// Formats a FAT32 volume of exactly `size` bytes at offset 0 of `dev` and
/// copies `files` in, in sorted path order, so the same inputs give the same
/// bytes.
///
/// `dev` may be longer than `size` (a window onto a larger disk is fine);
/// nothing at or past `size` is touched. Bytes of unused clusters are not
/// written. Fails with [`FatError::TooSmall`] naming the required size when
/// the files do not fit.
pub fn write<D: Read + Write + Seek>(
    dev: &mut D,
    size: u64,
    files: &[FatFile],
    opts: &FatOptions,
) -> Result<(), FatError> {
    if !size.is_multiple_of(SECTOR) {
        return Err(FatError::UnalignedSize { size });
    }
    let label = volume_label(&opts.label)?;
    let plan = Plan::new(files)?;
    let layout = match choose_layout(size, &plan)? {
        Some(layout) => layout,
        None => {
            return Err(FatError::TooSmall {
                required: required_for(&plan)?,
                given: size,
            })
        }
    };
    let tree = build_tree(files, &plan.paths)?;
    let mut options = hadris_fat::FatOptions::new()
        .with_kind(FatKind::Fat32)
        .with_size(size)
        .with_sector_size(SECTOR as u32)
        .with_cluster_size(layout.cluster as u32)
        .with_reserved_sectors(layout.reserved as u16)
        .with_fat_count(FAT_COUNT as u8)
        .with_partition_offset(0)
        .with_oem_name(*b"MSWIN4.1")
        .with_serial(opts.volume_id)
        .with_time(fat_time(opts.timestamp));
    if let Some(label) = label {
        options = options.with_label(label);
    }
    let block = BlockSize::new(SECTOR as u32).ok_or_else(|| {
        FatError::Write(PathError::new(
            hadris_fs::ErrorKind::InvalidInput,
            "512 is not a block size",
        ))
    })?;
    let mut io = ZeroFill(dev);
    let mut device = StreamDevice::with_block_count(StdIo::new(&mut io), block, size / SECTOR);
    hadris_fat::sync::write(&mut device, &tree, &options).map_err(FatError::Write)?;
    stamp_dot_entries(&mut io, &layout)?;
    extend_to(io.0, size)
}

/// A device whose bytes past its end read as zeros.
///
/// hadris-fat reads sectors back before it fills them; a freshly created
/// image file has no bytes there yet, and they would read as zeros once
/// the file is extended, so that is what they read as here.
struct ZeroFill<'a, D>(&'a mut D);

impl<D: Read> Read for ZeroFill<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf)? {
            0 => {
                buf.fill(0);
                Ok(buf.len())
            }
            n => Ok(n),
        }
    }
}

impl<D: Write> Write for ZeroFill<'_, D> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<D: Seek> Seek for ZeroFill<'_, D> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(pos)
    }
}

/// Makes a device that ends before the volume does `size` bytes long, so
/// the volume is complete even when its last clusters are unused. Writes
/// one zero byte, which is what a missing byte reads as.
fn extend_to<D: Write + Seek>(dev: &mut D, size: u64) -> Result<(), FatError> {
    let end = dev
        .seek(std::io::SeekFrom::End(0))
        .map_err(|source| FatError::Io { offset: 0, source })?;
    if end < size {
        write_at(dev, size - 1, &[0])?;
    }
    dev.flush()
        .map_err(|source| FatError::Io { offset: 0, source })
}

/// What the files need: their lengths and, per directory, the 32-byte
/// entries it holds. Built once, used to size and to check the volume.
#[derive(Debug, Default)]
struct Plan {
    file_lens: Vec<u64>,
    dir_entries: Vec<u64>,
    /// Each file's path with its directories spelled as they were first
    /// seen, so `EFI/x` and `efi/y` land in one directory, as FAT's
    /// case-insensitive names require.
    paths: Vec<String>,
}

/// A directory while the plan is built: children by case-folded name.
#[derive(Default)]
struct DirNode {
    /// The name as first spelled.
    name: String,
    /// Entries its own names need (`.`/`..` or the root's label included).
    entries: u64,
    children: BTreeMap<String, Child>,
}

enum Child {
    Dir(DirNode),
    File,
}

impl Plan {
    /// Checks every path and measures every source.
    fn new(files: &[FatFile]) -> Result<Plan, FatError> {
        let mut plan = Plan::default();
        // The root holds the volume label entry; subdirectories hold `.`
        // and `..`. Counting the label even without one costs at most one
        // cluster in a directory that is exactly full.
        let mut root = DirNode {
            entries: 1,
            ..DirNode::default()
        };
        for file in files {
            let parts = split_path(&file.path)?;
            plan.paths.push(insert(&mut root, &parts, &file.path)?);
            let len = source_len(file)?;
            if len > MAX_FILE {
                return Err(FatError::FileTooLarge {
                    path: file.path.clone(),
                    len,
                });
            }
            plan.file_lens.push(len);
        }
        collect_dirs(&root, &mut plan.dir_entries);
        Ok(plan)
    }

    /// Clusters of `cluster` bytes the files and directories occupy.
    fn clusters(&self, cluster: u64) -> u64 {
        let files: u64 = self.file_lens.iter().map(|len| len.div_ceil(cluster)).sum();
        let dirs: u64 = self
            .dir_entries
            .iter()
            .map(|entries| (entries * ENTRY).div_ceil(cluster).max(1))
            .sum();
        files + dirs
    }

    /// Bytes of content, a lower bound for the volume size.
    fn content_bytes(&self) -> u64 {
        self.file_lens.iter().sum()
    }
}

/// Splits a volume path into its components, rejecting what FAT cannot
/// name.
fn split_path(path: &str) -> Result<Vec<&str>, FatError> {
    let bad = |reason| FatError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.starts_with('/') {
        return Err(bad("it starts with '/'"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        check_name(part).map_err(bad)?;
    }
    Ok(parts)
}

/// Checks one component against the VFAT long-name rules.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it has an empty component");
    }
    if name == "." || name == ".." {
        return Err("it has a `.` or `..` component");
    }
    if name.ends_with(['.', ' ']) {
        return Err("a component ends with '.' or a space");
    }
    if name.encode_utf16().count() > MAX_NAME_UNITS {
        return Err("a component is longer than 255 characters");
    }
    let forbidden = |c: char| c < ' ' || "\"*:<>?\\|".contains(c);
    if name.chars().any(forbidden) {
        return Err("it contains a control character or one of \" * : < > ? \\ |");
    }
    Ok(())
}

/// Adds the file `parts` below `root`, creating directories and counting
/// the entries each directory needs. Returns the path with the directory
/// names as first spelled.
fn insert(root: &mut DirNode, parts: &[&str], path: &str) -> Result<String, FatError> {
    let Some((file, dirs)) = parts.split_last() else {
        return Ok(String::new());
    };
    let mut canonical = String::new();
    let mut dir = root;
    for (depth, name) in dirs.iter().enumerate() {
        let key = name.to_uppercase();
        if !dir.children.contains_key(&key) {
            dir.entries += name_slots(name);
            let sub = DirNode {
                name: (*name).to_owned(),
                entries: 2,
                ..DirNode::default()
            };
            dir.children.insert(key.clone(), Child::Dir(sub));
        }
        dir = match dir.children.get_mut(&key) {
            Some(Child::Dir(sub)) => sub,
            Some(Child::File) | None => {
                return Err(FatError::FileDirConflict {
                    path: parts[..=depth].join("/"),
                })
            }
        };
        canonical.push_str(&dir.name);
        canonical.push('/');
    }
    canonical.push_str(file);
    let key = file.to_uppercase();
    match dir.children.get(&key) {
        Some(Child::Dir(_)) => Err(FatError::FileDirConflict {
            path: path.to_owned(),
        }),
        Some(Child::File) => Err(FatError::Duplicate {
            path: path.to_owned(),
        }),
        None => {
            dir.entries += name_slots(file);
            dir.children.insert(key, Child::File);
            Ok(canonical)
        }
    }
}

/// Directory entries of every directory, depth first.
fn collect_dirs(dir: &DirNode, out: &mut Vec<u64>) {
    out.push(dir.entries);
    for child in dir.children.values() {
        if let Child::Dir(sub) = child {
            collect_dirs(sub, out);
        }
    }
}

/// Entries a name takes: one when it is an 8.3 name that the NT case bits
/// can express (all upper or all lower case per part), else the long-name
/// slots plus the short entry. Mirrors `hadris-fat`, which decides the same
/// way, so the size prediction is exact.
fn name_slots(name: &str) -> u64 {
    if fits_short(name) {
        1
    } else {
        name.encode_utf16().count().div_ceil(UNITS_PER_SLOT) as u64 + 1
    }
}

/// Whether `name` is a valid 8.3 name with one case per part.
fn fits_short(name: &str) -> bool {
    let (base, ext) = match name.rfind('.') {
        Some(pos) if pos > 0 => (&name[..pos], &name[pos + 1..]),
        _ => (name, ""),
    };
    let valid = |part: &str| {
        let upper = part.bytes().any(|b| b.is_ascii_uppercase());
        let lower = part.bytes().any(|b| b.is_ascii_lowercase());
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || SHORT_SYMBOLS.contains(&b))
            && !(upper && lower)
    };
    !base.is_empty() && base.len() <= 8 && ext.len() <= 3 && valid(base) && valid(ext)
}

/// The length of a file's content, without reading it.
fn source_len(file: &FatFile) -> Result<u64, FatError> {
    match &file.source {
        FatSource::Bytes(bytes) => Ok(bytes.len() as u64),
        FatSource::Path(path) => {
            let meta = std::fs::metadata(path).map_err(|source| FatError::Source {
                path: path.clone(),
                target: file.path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(FatError::NotAFile {
                    path: path.clone(),
                    target: file.path.clone(),
                });
            }
            Ok(meta.len())
        }
    }
}

/// The geometry `write` uses for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Cluster size in bytes.
    cluster: u64,
    /// Reserved sectors, including the padding that aligns the data region.
    reserved: u64,
    /// Sectors of one FAT.
    fat_sectors: u64,
    /// Data clusters.
    clusters: u64,
}

impl Layout {
    /// Byte offset of data cluster `cluster` (numbered from 2) in the volume.
    fn cluster_offset(&self, cluster: u64) -> u64 {
        (self.reserved + FAT_COUNT * self.fat_sectors) * SECTOR
            + (cluster - ROOT_CLUSTER) * self.cluster
    }
}

/// The smallest whole-MiB size whose layout holds `plan`.
fn required_for(plan: &Plan) -> Result<u64, FatError> {
    let start = (plan.content_bytes().div_ceil(MIB) * MIB).max(MIN_VOLUME);
    let mut size = start;
    loop {
        if choose_layout(size, plan)?.is_some() {
            return Ok(size);
        }
        size += MIB;
    }
}

/// The layout for `size` bytes that holds `plan`: the cluster size
/// Microsoft's table gives for the size, or a smaller one when the files
/// fit only with less slack. `None` when nothing fits.
fn choose_layout(size: u64, plan: &Plan) -> Result<Option<Layout>, FatError> {
    let sectors = size / SECTOR;
    if sectors > u64::from(u32::MAX) {
        return Err(FatError::TooLarge { size });
    }
    let mut cluster = preferred_cluster(size);
    loop {
        if let Some(layout) = layout(sectors, cluster) {
            let fat32 = (MIN_CLUSTERS..=MAX_CLUSTERS).contains(&layout.clusters);
            if fat32 && plan.clusters(cluster) <= layout.clusters {
                return Ok(Some(layout));
            }
        }
        if cluster == SECTOR {
            return Ok(None);
        }
        cluster /= 2;
    }
}

/// Cluster size by volume size, as Windows and `hadris-fat` pick it for
/// FAT32: 512 B up to 64 MiB, doubling per size doubling up to 4 KiB at
/// 256 MiB–8 GiB, then larger for volumes an ESP never reaches.
fn preferred_cluster(size: u64) -> u64 {
    const TABLE: [(u64, u64); 6] = [
        (64 * MIB, 512),
        (128 * MIB, 1024),
        (256 * MIB, 2048),
        (8 * 1024 * MIB, 4096),
        (16 * 1024 * MIB, 8192),
        (32 * 1024 * MIB, 16384),
    ];
    TABLE
        .iter()
        .find(|(limit, _)| size <= *limit)
        .map_or(32768, |&(_, cluster)| cluster)
}

/// Plans a volume of `sectors` with `cluster`-byte clusters, padding the
/// reserved area so the data region starts on a multiple of 4 KiB (or of
/// the cluster when larger), which keeps clusters aligned to the 4 KiB
/// pages and physical sectors of the disk below. Returns `None` when the
/// FATs do not fit.
fn layout(sectors: u64, cluster: u64) -> Option<Layout> {
    let align = cluster.max(4096) / SECTOR;
    let mut reserved = RESERVED_SECTORS;
    let mut fat = fat_sectors(sectors.checked_sub(reserved)?, cluster / SECTOR)?;
    // Padding shrinks the FATs, which can move the data start again; a few
    // rounds settle it (`hadris-fat` plans alignment the same way).
    for _ in 0..8 {
        let short = (align - (reserved + FAT_COUNT * fat.0) % align) % align;
        if short == 0 {
            break;
        }
        reserved += short;
        fat = fat_sectors(sectors.checked_sub(reserved)?, cluster / SECTOR)?;
    }
    if reserved > u64::from(u16::MAX) {
        return None;
    }
    Some(Layout {
        cluster,
        reserved,
        fat_sectors: fat.0,
        clusters: fat.1,
    })
}

/// The sectors of one FAT and the cluster count for `available` sectors
/// after the reserved area. The same fixed-point iteration as
/// `hadris-fat-raw`'s `layout::fat_sectors`, so both agree on the count.
fn fat_sectors(available: u64, cluster_sectors: u64) -> Option<(u64, u64)> {
    let mut fat = 1u64;
    loop {
        let data = available.saturating_sub(FAT_COUNT * fat);
        let clusters = data / cluster_sectors;
        let needed = ((clusters + 2) * 4).div_ceil(SECTOR);
        if needed <= fat {
            return Some((fat, clusters));
        }
        fat = needed;
        if fat * FAT_COUNT > available {
            return None;
        }
    }
}

/// Checks and converts the label; empty means none.
fn volume_label(label: &str) -> Result<Option<VolumeLabel>, FatError> {
    if label.is_empty() {
        return Ok(None);
    }
    VolumeLabel::new(label)
        .map(Some)
        .map_err(|_| FatError::BadLabel {
            label: label.to_owned(),
        })
}

/// The timestamp as hadris wants it, clamped to what FAT can store.
fn fat_time(timestamp: i64) -> DateTime {
    let seconds = timestamp.clamp(FAT_EPOCH, FAT_END);
    DateTime::from_unix_seconds(seconds).unwrap_or(DateTime::UNIX_EPOCH)
}

/// The FAT32 root directory's first cluster.
const ROOT_CLUSTER: u64 = 2;
/// FAT entries at or above this end a chain.
const END_OF_CHAIN: u64 = 0x0FFF_FFF8;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
/// Byte ranges of a directory entry holding times and dates (creation,
/// access; write), around the high cluster word at 20..22.
const TIME_FIELDS: [std::ops::Range<usize>; 2] = [13..20, 22..26];

/// Gives the `.` and `..` entries of every directory the times of the
/// directory's own entry, as `mkdir` does: hadris-fat leaves them at
/// 1980-01-01, and every entry is meant to carry the caller's timestamp.
fn stamp_dot_entries<D: Read + Write + Seek>(dev: &mut D, layout: &Layout) -> Result<(), FatError> {
    let mut pending = vec![ROOT_CLUSTER];
    let mut cluster_buf = vec![0u8; layout.cluster as usize];
    // Each directory is entered once; a count above the cluster count
    // can only come from a cycle.
    let mut budget = layout.clusters;
    while let Some(first) = pending.pop() {
        for cluster in chain(dev, layout, first)? {
            let offset = layout.cluster_offset(cluster);
            read_at(dev, offset, &mut cluster_buf)?;
            for entry in cluster_buf.chunks_exact(ENTRY as usize) {
                if entry[0] == 0 {
                    break;
                }
                let Some(sub) = subdirectory(entry) else {
                    continue;
                };
                budget = budget.checked_sub(1).ok_or(FatError::Corrupt {
                    offset,
                    what: "directories form a cycle",
                })?;
                if sub < ROOT_CLUSTER || sub >= layout.clusters + ROOT_CLUSTER {
                    return Err(FatError::Corrupt {
                        offset,
                        what: "a directory starts outside the data region",
                    });
                }
                stamp_dots(dev, layout, sub, entry)?;
                pending.push(sub);
            }
        }
    }
    Ok(())
}

/// The first cluster of the subdirectory `entry` names, skipping long-name
/// slots, deleted entries, the label and the dot entries.
fn subdirectory(entry: &[u8]) -> Option<u64> {
    let attr = entry[11];
    let is_dir =
        attr != ATTR_LONG_NAME && attr & (ATTR_DIRECTORY | ATTR_VOLUME_ID) == ATTR_DIRECTORY;
    if !is_dir || entry[0] == 0xE5 || entry[0] == b'.' {
        return None;
    }
    let high = u64::from(u16::from_le_bytes([entry[20], entry[21]]));
    let low = u64::from(u16::from_le_bytes([entry[26], entry[27]]));
    Some(high << 16 | low)
}

/// Copies the time fields of `entry` into the `.` and `..` entries at the
/// start of directory cluster `first`.
fn stamp_dots<D: Read + Write + Seek>(
    dev: &mut D,
    layout: &Layout,
    first: u64,
    entry: &[u8],
) -> Result<(), FatError> {
    let offset = layout.cluster_offset(first);
    let mut dots = [0u8; 2 * ENTRY as usize];
    read_at(dev, offset, &mut dots)?;
    if &dots[..11] != b".          " || &dots[32..43] != b"..         " {
        return Err(FatError::Corrupt {
            offset,
            what: "a directory does not start with `.` and `..`",
        });
    }
    for dot in dots.chunks_exact_mut(ENTRY as usize) {
        for range in TIME_FIELDS {
            dot[range.clone()].copy_from_slice(&entry[range]);
        }
    }
    write_at(dev, offset, &dots)
}

/// Where the file `path` lies on the FAT32 volume at offset 0 of `dev`: byte ranges
/// `(offset, length)` of the volume, in file order, adding up to the file's length.
///
/// This is how the disk step tells the output wrappers where a file's bytes landed (the
/// initramfs, whose squashfs images must not be compressed again). Only what the lookup needs
/// is read: the boot sector, the directories along `path` and the file's cluster chain. Names
/// compare as FAT compares them, ignoring case, by long name where there is one, else by the
/// 8.3 name. Fails with [`FatError::NotFound`] when there is no such file.
pub fn file_ranges<D: Read + Seek>(dev: &mut D, path: &str) -> Result<Vec<(u64, u64)>, FatError> {
    let layout = read_layout(dev)?;
    let parts = split_path(path)?;
    let mut dir = ROOT_CLUSTER;
    for (depth, part) in parts.iter().enumerate() {
        let last = depth + 1 == parts.len();
        let entry = find_entry(dev, &layout, dir, part)?
            .filter(|e| e.is_dir != last)
            .ok_or_else(|| FatError::NotFound {
                path: path.to_owned(),
            })?;
        if !last {
            dir = entry.first;
            continue;
        }
        if entry.size == 0 {
            return Ok(Vec::new());
        }
        return Ok(runs(
            &layout,
            &chain(dev, &layout, entry.first)?,
            entry.size,
        ));
    }
    Err(FatError::NotFound {
        path: path.to_owned(),
    })
}

/// The volume geometry, read from the boot sector.
fn read_layout<D: Read + Seek>(dev: &mut D) -> Result<Layout, FatError> {
    let mut boot = [0u8; 512];
    read_at(dev, 0, &mut boot)?;
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([boot[i], boot[i + 1]]));
    let u32_at = |i: usize| {
        u64::from(u32::from_le_bytes([
            boot[i],
            boot[i + 1],
            boot[i + 2],
            boot[i + 3],
        ]))
    };
    let cluster_sectors = u64::from(boot[13]);
    let (reserved, fat_sectors, total) = (u16_at(14), u32_at(36), u32_at(32));
    let fat32 = u16_at(11) == SECTOR && u64::from(boot[16]) == FAT_COUNT && u32_at(44) == 2;
    let data = total.checked_sub(reserved + FAT_COUNT * fat_sectors);
    match data {
        Some(data) if fat32 && cluster_sectors > 0 => Ok(Layout {
            cluster: cluster_sectors * SECTOR,
            reserved,
            fat_sectors,
            clusters: data / cluster_sectors,
        }),
        _ => Err(FatError::Corrupt {
            offset: 0,
            what: "the boot sector is not one this writer makes (512-byte sectors, two FATs, root at cluster 2)",
        }),
    }
}

/// A directory entry found by name.
struct Found {
    first: u64,
    size: u64,
    is_dir: bool,
}

/// The entry named `name` (case ignored) in the directory starting at cluster `dir`.
fn find_entry<D: Read + Seek>(
    dev: &mut D,
    layout: &Layout,
    dir: u64,
    name: &str,
) -> Result<Option<Found>, FatError> {
    let want = name.to_uppercase();
    let mut buf = vec![0u8; layout.cluster as usize];
    // Long-name slots come before their short entry, last part first.
    let mut long: Vec<u16> = Vec::new();
    for cluster in chain(dev, layout, dir)? {
        read_at(dev, layout.cluster_offset(cluster), &mut buf)?;
        for e in buf.chunks_exact(ENTRY as usize) {
            if e[0] == 0 {
                return Ok(None);
            }
            if e[0] == 0xE5 {
                long.clear();
                continue;
            }
            if e[11] == ATTR_LONG_NAME {
                let units = [1..11, 14..26, 28..32].into_iter().flat_map(|r| {
                    e[r].chunks_exact(2)
                        .map(|u| u16::from_le_bytes([u[0], u[1]]))
                        .collect::<Vec<_>>()
                });
                let part: Vec<u16> = units.take_while(|&u| u != 0 && u != 0xFFFF).collect();
                long.splice(0..0, part);
                continue;
            }
            let entry_name = if long.is_empty() {
                short_name(e)
            } else {
                String::from_utf16_lossy(&long)
            };
            long.clear();
            if e[11] & ATTR_VOLUME_ID != 0 || entry_name.to_uppercase() != want {
                continue;
            }
            let high = u64::from(u16::from_le_bytes([e[20], e[21]]));
            let low = u64::from(u16::from_le_bytes([e[26], e[27]]));
            return Ok(Some(Found {
                first: high << 16 | low,
                size: u64::from(u32::from_le_bytes([e[28], e[29], e[30], e[31]])),
                is_dir: e[11] & ATTR_DIRECTORY != 0,
            }));
        }
    }
    Ok(None)
}

/// The 8.3 name of a short entry as `BASE.EXT` (or `BASE`).
fn short_name(e: &[u8]) -> String {
    let base = String::from_utf8_lossy(&e[..8]).trim_end().to_owned();
    let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_owned();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Byte ranges of `clusters`, adjacent clusters merged, clipped to `size` bytes.
fn runs(layout: &Layout, clusters: &[u64], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut left = size;
    for &c in clusters {
        if left == 0 {
            break;
        }
        let (offset, len) = (layout.cluster_offset(c), layout.cluster.min(left));
        left -= len;
        match out.last_mut() {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => out.push((offset, len)),
        }
    }
    out
}

/// The clusters of the chain starting at `first`, read from the first FAT.
///
/// The FAT is read [`FAT_WINDOW`] bytes at a time rather than entry by entry: a file's
/// clusters mostly follow each other, and with 512-byte clusters the initramfs alone has
/// some 280,000 of them, which read one 4-byte entry each cost twice as many system calls
/// (a seek and a read) on the outputs step's path.
fn chain<D: Read + Seek>(dev: &mut D, layout: &Layout, first: u64) -> Result<Vec<u64>, FatError> {
    let fat = layout.reserved * SECTOR;
    let fat_len = layout.fat_sectors * SECTOR;
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = 0;
    let mut clusters = vec![first];
    let mut current = first;
    loop {
        let at = current * 4;
        let offset = fat + at;
        if at + 4 > fat_len {
            return Err(FatError::Corrupt {
                offset,
                what: "a cluster chain leaves the FAT",
            });
        }
        if !(window_start..window_start + window.len() as u64).contains(&at) {
            window_start = at - at % FAT_WINDOW;
            window.resize(FAT_WINDOW.min(fat_len - window_start) as usize, 0);
            read_at(dev, fat + window_start, &mut window)?;
        }
        let i = (at - window_start) as usize;
        let raw = [window[i], window[i + 1], window[i + 2], window[i + 3]];
        let next = u64::from(u32::from_le_bytes(raw) & 0x0FFF_FFFF);
        if next >= END_OF_CHAIN {
            return Ok(clusters);
        }
        if next < ROOT_CLUSTER
            || next >= layout.clusters + ROOT_CLUSTER
            || clusters.len() as u64 > layout.clusters
        {
            return Err(FatError::Corrupt {
                offset,
                what: "a cluster chain is broken",
            });
        }
        clusters.push(next);
        current = next;
    }
}

/// Bytes of the FAT [`chain`] reads at once: 16,384 entries, a whole number of sectors, so
/// that a window never splits an entry.
const FAT_WINDOW: u64 = 64 << 10;

fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), FatError> {
    dev.seek(std::io::SeekFrom::Start(offset))
        .and_then(|_| dev.read_exact(buf))
        .map_err(|source| FatError::Io { offset, source })
}

fn write_at<D: Write + Seek>(dev: &mut D, offset: u64, buf: &[u8]) -> Result<(), FatError> {
    dev.seek(std::io::SeekFrom::Start(offset))
        .and_then(|_| dev.write_all(buf))
        .map_err(|source| FatError::Io { offset, source })
}

/// The tree hadris copies; its maps are ordered, so the volume is laid out
/// in sorted path order whatever order `files` has.
fn build_tree(files: &[FatFile], paths: &[String]) -> Result<Tree, FatError> {
    let mut tree = Tree::new();
    for (file, path) in files.iter().zip(paths) {
        let content = match &file.source {
            FatSource::Bytes(bytes) => Content::bytes(bytes.clone()),
            FatSource::Path(path) => hadris_fs::host::file(path).map_err(FatError::Write)?,
        };
        tree.insert(path.as_bytes(), Node::file(content))
            .map_err(FatError::Write)?;
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs::{self, File, OpenOptions};
    use std::io::{self, SeekFrom};
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    /// Sizes of the real ESP's kernel and initramfs, for the round trip
    /// and the timing.
    const FULL: (usize, usize) = (8 << 20, 20 << 20);
    /// Still several MiB, but quick in debug builds, for the other tests.
    const SMALL: (usize, usize) = (2 << 20, 3 << 20);

    /// Deterministic pseudo-random bytes (xorshift64), so content errors
    /// cannot hide behind repeated patterns.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect()
    }

    fn bytes(path: &str, data: &[u8]) -> FatFile {
        FatFile {
            path: path.to_owned(),
            source: FatSource::Bytes(data.to_vec()),
        }
    }

    fn host(dir: &Path, path: &str, data: &[u8]) -> FatFile {
        let host = dir.join(path.replace('/', "_"));
        fs::write(&host, data).unwrap();
        FatFile {
            path: path.to_owned(),
            source: FatSource::Path(host),
        }
    }

    fn options() -> FatOptions {
        FatOptions {
            volume_id: 0x1234_ABCD,
            label: "ESP".to_owned(),
            timestamp: 1_700_000_000,
        }
    }

    /// An ESP like strata's (~30 MB), plus the awkward cases: lowercase and
    /// mixed-case names, long names, an empty file, a directory spanning
    /// several clusters. Given unsorted on purpose.
    fn sample(dir: &Path, (kernel, initrd): (usize, usize)) -> Vec<FatFile> {
        let mut files = vec![
            host(dir, "strata/vmlinuz", &pattern(kernel, 1)),
            host(dir, "strata/initrd.img", &pattern(initrd, 2)),
            bytes("loader/loader.conf", b"timeout 0\ndefault strata.conf\n"),
            bytes("EFI/BOOT/BOOTX64.EFI", &pattern(120_000, 3)),
            bytes(
                "loader/entries/strata.conf",
                b"title strata\nlinux /strata/vmlinuz\ninitrd /strata/initrd.img\n",
            ),
            bytes("EFI/systemd/systemd-bootx64.efi", &pattern(90_001, 4)),
            bytes("readme.txt", b"lowercase 8.3 name\n"),
            bytes("MixedCase.Txt", b"mixed case needs a long name\n"),
            bytes(
                "EFI/Linux/A Long File Name, With Spaces (and more).conf",
                b"long\n",
            ),
            bytes("empty.bin", b""),
        ];
        // Exactly one 512-byte cluster: `.`, `..` and 14 short names.
        for i in 0..14 {
            files.push(bytes(&format!("full/F{i:02}.TXT"), b"x"));
        }
        for i in 0..40 {
            let name = format!("many/entry-number-{i:03}.txt");
            let data = pattern(i * 97, 100 + i as u64);
            files.push(bytes(&name, &data));
        }
        files
    }

    /// What each path must contain after a round trip.
    fn expected(files: &[FatFile]) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|file| {
                let data = match &file.source {
                    FatSource::Bytes(data) => data.clone(),
                    FatSource::Path(path) => fs::read(path).unwrap(),
                };
                (file.path.clone(), data)
            })
            .collect()
    }

    /// Writes a standalone image file of `size` bytes.
    fn write_image(path: &Path, size: u64, files: &[FatFile]) -> Result<(), FatError> {
        let mut file = create(path);
        file.set_len(size).unwrap();
        write(&mut file, size, files, &options())
    }

    /// A new empty image file, readable (the writer reads back what it
    /// wrote) and writable.
    fn create(path: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap()
    }

    /// Whole-file contents, for byte-for-byte comparisons (cheaper than
    /// hashing in debug builds, and stronger).
    fn image(path: &Path) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    /// Runs `fsck.vfat -n`; false (after saying why) when it is missing.
    fn fsck(img: &Path) -> bool {
        if !crate::test_support::require_tool("fsck.vfat") {
            return false;
        }
        let out = match Command::new("fsck.vfat").arg("-n").arg(img).output() {
            Ok(out) => out,
            Err(err) => panic!("running fsck.vfat: {err}"),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "fsck.vfat -n failed:\n{text}");
        // A clean run prints only the version line and the summary line.
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let known = line.starts_with("fsck.fat ") || line.contains(" files, ");
            assert!(known, "fsck.vfat -n reported: {line}\n{text}");
        }
        true
    }

    /// Extracts the volume with `mcopy` and returns every file by path;
    /// `None` when mtools is missing.
    fn mtools_read(img: &Path, out: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
        if !crate::test_support::require_tool("mcopy") {
            return None;
        }
        let status = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(img)
            .args(["-s", "-n", "-Q", "::/"])
            .arg(out)
            .status();
        match status {
            Err(err) => panic!("running mcopy: {err}"),
            Ok(status) => assert!(status.success(), "mcopy failed: {status}"),
        }
        let mut found = BTreeMap::new();
        collect_host(out, out, &mut found);
        Some(found)
    }

    fn collect_host(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                collect_host(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                out.insert(rel.to_owned(), fs::read(&path).unwrap());
            }
        }
    }

    /// Boot sector fields and the FSInfo free count of an image.
    struct Bpb {
        cluster: u64,
        reserved: u64,
        fat_sectors: u64,
        total_sectors: u64,
        free: u64,
        serial: u32,
        label: [u8; 11],
    }

    fn read_bpb(img: &Path, offset: u64) -> Bpb {
        let mut file = File::open(img).unwrap();
        let mut boot = [0u8; 1024];
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.read_exact(&mut boot).unwrap();
        let u16_at = |i: usize| u64::from(u16::from_le_bytes([boot[i], boot[i + 1]]));
        let u32_at = |i: usize| u32::from_le_bytes(boot[i..i + 4].try_into().unwrap());
        assert_eq!(&boot[82..90], b"FAT32   ");
        assert_eq!(u16_at(48), 1, "FSInfo sector");
        assert_eq!(&boot[512..516], b"RRaA");
        Bpb {
            cluster: u16_at(11) * u64::from(boot[13]),
            reserved: u16_at(14),
            fat_sectors: u64::from(u32_at(36)),
            total_sectors: u64::from(u32_at(32)),
            free: u64::from(u32_at(512 + 488)),
            serial: u32_at(67),
            label: boot[71..82].try_into().unwrap(),
        }
    }

    /// A `Read + Write + Seek` view of `len` bytes at `start` of a file,
    /// like the one the disk writer hands to `write`.
    struct Window<F> {
        inner: F,
        start: u64,
        len: u64,
        pos: u64,
    }

    impl<F: Read + Write + Seek> Window<F> {
        fn room(&mut self, want: usize) -> io::Result<usize> {
            self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
            Ok(want.min(self.len.saturating_sub(self.pos) as usize))
        }
    }

    impl<F: Read + Write + Seek> Read for Window<F> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.room(buf.len())?;
            let n = self.inner.read(&mut buf[..n])?;
            self.pos += n as u64;
            Ok(n)
        }
    }

    impl<F: Read + Write + Seek> Write for Window<F> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.room(buf.len())?;
            if n == 0 && !buf.is_empty() {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "past window"));
            }
            let n = self.inner.write(&buf[..n])?;
            self.pos += n as u64;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    impl<F: Read + Write + Seek> Seek for Window<F> {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            let new = match pos {
                SeekFrom::Start(n) => Some(n),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d),
                SeekFrom::End(d) => self.len.checked_add_signed(d),
            };
            self.pos = new.ok_or_else(|| io::Error::other("seek before window"))?;
            Ok(self.pos)
        }
    }

    #[test]
    fn roundtrip_fsck_mtools_and_timing() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample(dir.path(), FULL);
        let img = dir.path().join("esp.img");
        let size = 64 * MIB;
        let started = Instant::now();
        write_image(&img, size, &files).unwrap();
        let elapsed = started.elapsed();
        let total: usize = expected(&files).values().map(Vec::len).sum();
        eprintln!("wrote a {size}-byte esp holding {total} bytes in {elapsed:?}");
        assert_eq!(fs::metadata(&img).unwrap().len(), size);
        fsck(&img);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        if let Some(found) = mtools_read(&img, &out) {
            assert_eq!(
                found.keys().collect::<Vec<_>>(),
                expected(&files).keys().collect::<Vec<_>>()
            );
            assert!(found == expected(&files), "mcopy content differs");
        }
        // Every entry, `.` and `..` included, carries the timestamp
        // (1_700_000_000 is 2023-11-14 22:13:20 UTC).
        if let Ok(out) = Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .args(["-/", "-a", "::/"])
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            let dated: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" 20") || l.contains(" 19"))
                .collect();
            assert!(dated.len() > 50, "mdir listed too little:\n{text}");
            for line in dated {
                assert!(line.contains("2023-11-14  22:13"), "wrong time: {line}");
            }
        }
    }

    /// `file_ranges` finds every file, whatever its name form, and its ranges read back
    /// exactly the file's bytes.
    #[test]
    fn file_ranges_read_back_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample(dir.path(), SMALL);
        let img = dir.path().join("esp.img");
        write_image(&img, 40 * MIB, &files).unwrap();
        let mut dev = File::open(&img).unwrap();
        let volume = image(&img);
        for (path, data) in expected(&files) {
            // FAT ignores case: look some names up in the other case.
            let asked = if path.len() % 2 == 0 {
                path.to_lowercase()
            } else {
                path.clone()
            };
            let ranges = file_ranges(&mut dev, &asked).unwrap();
            let mut back = Vec::new();
            for (off, len) in ranges {
                back.extend_from_slice(&volume[off as usize..(off + len) as usize]);
            }
            assert!(back == data, "{path}");
        }
        for missing in ["nope", "strata", "strata/vmlinuz/x", "loader/missing.conf"] {
            let e = file_ranges(&mut dev, missing).unwrap_err();
            assert!(matches!(e, FatError::NotFound { .. }), "{missing}: {e}");
        }
        let mut not_fat = io::Cursor::new(vec![0u8; 4096]);
        assert!(matches!(
            file_ranges(&mut not_fat, "a"),
            Err(FatError::Corrupt { .. })
        ));
    }

    #[test]
    fn chains_are_followed_across_fat_windows_both_ways() {
        // A FAT of three windows, and a chain jumping forward and back between them.
        let entries = 3 * FAT_WINDOW / 4;
        let layout = Layout {
            cluster: SECTOR,
            reserved: RESERVED_SECTORS,
            fat_sectors: entries * 4 / SECTOR,
            clusters: entries - ROOT_CLUSTER,
        };
        let hops = [5, 40_000, 6, 20_000, 45_000, 16_383, 16_384, 7];
        let mut volume = vec![0u8; ((layout.reserved + layout.fat_sectors) * SECTOR) as usize];
        let mut set = |cluster: u64, next: u32| {
            let at = (layout.reserved * SECTOR + cluster * 4) as usize;
            volume[at..at + 4].copy_from_slice(&next.to_le_bytes());
        };
        for hop in hops.windows(2) {
            set(hop[0], hop[1] as u32);
        }
        set(7, 0x0FFF_FFFF);
        set(8, 1);
        let mut dev = io::Cursor::new(&volume);
        assert_eq!(chain(&mut dev, &layout, 5).unwrap(), hops);
        for (first, what) in [(8, "broken"), (entries, "leaves the FAT")] {
            match chain(&mut dev, &layout, first) {
                Err(FatError::Corrupt { what: w, .. }) => assert!(w.contains(what), "{w}"),
                other => panic!("chain from {first}: {other:?}"),
            }
        }
    }

    #[test]
    fn layout_matches_the_prediction() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample(dir.path(), SMALL);
        let img = dir.path().join("esp.img");
        let size = 64 * MIB;
        write_image(&img, size, &files).unwrap();
        let plan = Plan::new(&files).unwrap();
        let predicted = choose_layout(size, &plan).unwrap().unwrap();
        let bpb = read_bpb(&img, 0);
        assert_eq!(bpb.cluster, predicted.cluster);
        assert_eq!(bpb.reserved, predicted.reserved);
        assert_eq!(bpb.fat_sectors, predicted.fat_sectors);
        assert_eq!(bpb.total_sectors, size / SECTOR);
        assert_eq!(
            (bpb.reserved + 2 * bpb.fat_sectors) % 8,
            0,
            "data region not 4 KiB aligned"
        );
        // Every cluster the plan counts is used, and no other.
        assert_eq!(
            bpb.free,
            predicted.clusters - plan.clusters(predicted.cluster)
        );
        assert_eq!(bpb.serial, 0x1234_ABCD);
        assert_eq!(&bpb.label, b"ESP        ");
    }

    #[test]
    fn identical_inputs_give_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample(dir.path(), SMALL);
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write_image(&a, 40 * MIB, &files).unwrap();
        let mut reversed = files.clone();
        reversed.reverse();
        write_image(&b, 40 * MIB, &reversed).unwrap();
        let first = image(&a);
        assert!(first == image(&b), "file order changed the bytes");
        // A fresh, empty file comes out the same: missing bytes are zeros
        // and the file is extended to the volume size.
        write(&mut create(&b), 40 * MIB, &files, &options()).unwrap();
        assert_eq!(fs::metadata(&b).unwrap().len(), 40 * MIB);
        assert!(first == image(&b), "a fresh file gave other bytes");
        let mut other = options();
        other.timestamp += 2;
        let mut file = create(&b);
        file.set_len(40 * MIB).unwrap();
        write(&mut file, 40 * MIB, &files, &other).unwrap();
        assert!(first != image(&b), "timestamp not written");
    }

    #[test]
    fn writes_into_a_window_of_a_larger_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample(dir.path(), SMALL);
        let size = 40 * MIB;
        let alone = dir.path().join("alone.img");
        write_image(&alone, size, &files).unwrap();

        let disk = dir.path().join("disk.img");
        let guard = vec![0xA5u8; MIB as usize];
        let mut file = create(&disk);
        file.write_all(&guard).unwrap();
        file.seek(SeekFrom::Start(MIB + size)).unwrap();
        file.write_all(&guard).unwrap();
        let mut window = Window {
            inner: &mut file,
            start: MIB,
            len: size + MIB,
            pos: 0,
        };
        write(&mut window, size, &files, &options()).unwrap();
        drop(file);

        let all = fs::read(&disk).unwrap();
        assert_eq!(all.len() as u64, 2 * MIB + size);
        assert!(
            all[..MIB as usize] == guard[..],
            "bytes before the window changed"
        );
        assert!(
            all[(MIB + size) as usize..] == guard[..],
            "bytes after the volume changed"
        );
        let inner = &all[MIB as usize..(MIB + size) as usize];
        assert!(
            inner == image(&alone),
            "window holds other bytes than a file"
        );
    }

    #[test]
    fn garbage_in_free_space_does_not_leak_into_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let files = sample(dir.path(), SMALL);
        let size = 40 * MIB;
        let img = dir.path().join("dirty.img");
        fs::write(&img, vec![0xFFu8; size as usize]).unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        write(&mut file, size, &files, &options()).unwrap();
        drop(file);
        fsck(&img);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        if let Some(found) = mtools_read(&img, &out) {
            assert!(found == expected(&files), "mcopy content differs");
        }
    }

    #[test]
    fn reads_back_with_hadris() {
        use hadris_fs::sync::Volume;
        use hadris_fs::MountOptions;

        let dir = tempfile::tempdir().unwrap();
        let mut files = sample(dir.path(), SMALL);
        files.push(bytes("EFI/Linux/ünïcödé name.txt", b"unicode\n"));
        let img = dir.path().join("esp.img");
        let mut opts = options();
        opts.timestamp = 0; // clamped to 1980-01-01
        let mut file = create(&img);
        file.set_len(40 * MIB).unwrap();
        write(&mut file, 40 * MIB, &files, &opts).unwrap();
        drop(file);

        let dev = hadris_storage::host::FileDevice::open(&img).unwrap();
        let fs = hadris_fat::sync::FatFs::mount(dev, MountOptions::new()).unwrap();
        let vol = Volume::new(fs);
        for (path, data) in expected(&files) {
            let read = vol.read(format!("/{path}")).unwrap();
            assert!(read == data, "content of {path} differs");
        }
        let meta = vol.metadata("/loader/entries/strata.conf").unwrap();
        assert_eq!(meta.modified().unwrap().unix_seconds(), FAT_EPOCH);
        let meta = vol.metadata("/loader/entries").unwrap();
        assert_eq!(meta.modified().unwrap().unix_seconds(), FAT_EPOCH);
        let names: Vec<String> = vol
            .read_dir("/")
            .unwrap()
            .map(|entry| entry.unwrap().name().to_str().unwrap().to_owned())
            .collect();
        for name in ["readme.txt", "MixedCase.Txt", "EFI", "loader", "strata"] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
    }

    #[test]
    fn too_small_names_required_and_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = sample(dir.path(), SMALL);
        files.push(bytes("big/filler.bin", &pattern(31 << 20, 9)));
        let required = required_size(&files).unwrap();
        assert_eq!(required % MIB, 0);
        assert!(
            required > MIN_VOLUME,
            "sample must exceed the FAT32 minimum"
        );
        let img = dir.path().join("esp.img");
        let err = write_image(&img, required - MIB, &files).unwrap_err();
        match &err {
            FatError::TooSmall { required: r, given } => {
                assert_eq!((*r, *given), (required, required - MIB));
            }
            other => panic!("expected TooSmall, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&required.to_string()) && text.contains(&(required - MIB).to_string())
        );
        // The required size itself is enough, and the result is clean.
        write_image(&img, required, &files).unwrap();
        fsck(&img);
    }

    #[test]
    fn tiny_content_needs_the_fat32_minimum() {
        let files = vec![bytes("EFI/BOOT/BOOTX64.EFI", b"x")];
        assert_eq!(required_size(&files).unwrap(), MIN_VOLUME);
        let mut dev = io::Cursor::new(Vec::new());
        let err = write(&mut dev, 32 * MIB, &files, &options()).unwrap_err();
        assert!(
            matches!(err, FatError::TooSmall { required, given } if required == MIN_VOLUME && given == 32 * MIB)
        );
        assert!(
            dev.get_ref().is_empty(),
            "a failed write must not touch the device"
        );
    }

    #[test]
    fn larger_volumes_use_larger_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            bytes("EFI/BOOT/BOOTX64.EFI", &pattern(70_000, 5)),
            bytes("loader/loader.conf", b"timeout 3\n"),
        ];
        for (size, cluster) in [(100 * MIB, 1024), (300 * MIB, 4096), (2048 * MIB, 4096)] {
            let img = dir.path().join(format!("esp-{size}.img"));
            write_image(&img, size, &files).unwrap();
            let bpb = read_bpb(&img, 0);
            assert_eq!(bpb.cluster, cluster, "cluster size for {size}");
            assert!(
                (bpb.total_sectors - bpb.reserved - 2 * bpb.fat_sectors) * SECTOR / cluster
                    >= MIN_CLUSTERS
            );
            fsck(&img);
            fs::remove_file(&img).unwrap();
        }
    }

    #[test]
    fn smaller_clusters_when_the_preferred_ones_do_not_fit() {
        // 80 MiB prefers 1 KiB clusters; 150,000 files of 1 byte need
        // 150,000 clusters, which only 512-byte clusters provide there.
        let plan = Plan {
            file_lens: vec![1; 150_000],
            dir_entries: vec![3; 1],
            ..Plan::default()
        };
        let layout = choose_layout(80 * MIB, &plan).unwrap().unwrap();
        assert_eq!(layout.cluster, 512);
        assert_eq!(choose_layout(60 * MIB, &plan).unwrap(), None);
        // Once the files fit, every larger size fits too.
        let required = required_for(&plan).unwrap();
        for size in (required..required + 300 * MIB).step_by(3 * MIB as usize) {
            assert!(choose_layout(size, &plan).unwrap().is_some(), "{size}");
        }
        assert!(choose_layout(required - MIB, &plan).unwrap().is_none());
    }

    #[test]
    fn directories_differing_in_case_are_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            bytes("EFI/BOOT/BOOTX64.EFI", b"boot"),
            bytes("efi/Boot/grub.cfg", b"cfg"),
        ];
        let img = dir.path().join("esp.img");
        write_image(&img, 40 * MIB, &files).unwrap();
        fsck(&img);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        if let Some(found) = mtools_read(&img, &out) {
            let paths: Vec<&str> = found.keys().map(String::as_str).collect();
            assert_eq!(paths, ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grub.cfg"]);
        }
    }

    #[test]
    fn duplicate_and_conflicting_paths_are_errors() {
        let dup = [bytes("EFI/BOOT/a.efi", b"1"), bytes("efi/boot/A.EFI", b"2")];
        let err = required_size(&dup).unwrap_err();
        assert!(matches!(&err, FatError::Duplicate { path } if path == "efi/boot/A.EFI"));
        assert!(err.to_string().contains("efi/boot/A.EFI"));

        let file_then_dir = [bytes("EFI", b"1"), bytes("EFI/BOOT/x", b"2")];
        let err = required_size(&file_then_dir).unwrap_err();
        assert!(
            matches!(&err, FatError::FileDirConflict { path } if path == "EFI"),
            "{err}"
        );

        let dir_then_file = [bytes("EFI/BOOT/x", b"1"), bytes("efi/boot", b"2")];
        let err = required_size(&dir_then_file).unwrap_err();
        assert!(
            matches!(&err, FatError::FileDirConflict { path } if path == "efi/boot"),
            "{err}"
        );
    }

    #[test]
    fn bad_paths_labels_and_sources_are_errors() {
        for path in [
            "", "/EFI/x", "a//b", "a/./b", "a/../b", "a/b?", "a/b.", "a/ b ",
        ] {
            let err = required_size(&[bytes(path, b"1")]).unwrap_err();
            assert!(
                matches!(&err, FatError::BadPath { path: p, .. } if p == path),
                "{path}: {err}"
            );
        }
        let long = "x".repeat(256);
        assert!(matches!(
            required_size(&[bytes(&long, b"")]),
            Err(FatError::BadPath { .. })
        ));

        let files = [bytes("a", b"1")];
        let mut dev = io::Cursor::new(Vec::new());
        for label in ["TOO LONG LABEL", "A/B", " LEAD"] {
            let opts = FatOptions {
                label: label.to_owned(),
                ..options()
            };
            let err = write(&mut dev, 40 * MIB, &files, &opts).unwrap_err();
            assert!(
                matches!(&err, FatError::BadLabel { label: l } if l == label),
                "{err}"
            );
        }
        let err = write(&mut dev, 40 * MIB + 1, &files, &options()).unwrap_err();
        assert!(matches!(err, FatError::UnalignedSize { .. }));

        let missing = FatFile {
            path: "EFI/BOOT/BOOTX64.EFI".to_owned(),
            source: FatSource::Path("/nonexistent/strata/bootx64.efi".into()),
        };
        let err = required_size(&[missing]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/strata/bootx64.efi"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let not_file = FatFile {
            path: "x".to_owned(),
            source: FatSource::Path(dir.path().to_owned()),
        };
        assert!(matches!(
            required_size(&[not_file]),
            Err(FatError::NotAFile { .. })
        ));
    }

    #[test]
    fn short_name_rules_match_fat() {
        for name in [
            "BOOTX64.EFI",
            "readme.txt",
            "vmlinuz",
            "README",
            "A-B_C~1.X",
        ] {
            assert_eq!(name_slots(name), 1, "{name}");
        }
        // Mixed case, too long, two dots, spaces, non-ASCII: long names.
        assert_eq!(name_slots("MixedCase.Txt"), 2);
        assert_eq!(name_slots("systemd-bootx64.efi"), 3);
        assert_eq!(name_slots("initrd.img.old"), 3);
        assert_eq!(name_slots("a b"), 2);
        assert_eq!(name_slots("é"), 2);
        assert_eq!(name_slots(".hidden"), 2);
    }

    #[test]
    fn timestamps_are_clamped() {
        assert_eq!(fat_time(-5).unix_seconds(), FAT_EPOCH);
        assert_eq!(fat_time(i64::MAX).unix_seconds(), FAT_END);
        assert_eq!(fat_time(1_700_000_000).unix_seconds(), 1_700_000_000);
    }
}
