//! Squashfs v4 images from a [`Tree`], and a superblock check for prebuilt images.
//!
//! [`write`] turns a tree listing into a little-endian squashfs 4.0 image with backhand. It keeps
//! directories, regular files, symlinks, character and block devices, FIFOs and sockets with
//! their permission bits (setuid/setgid/sticky included), uid and gid. Every inode and the
//! superblock get the same modification time from [`SquashOptions::mtime`], so identical trees
//! give byte-identical images. File contents are opened one at a time while the image is written
//! and read block by block, so memory use does not grow with file sizes. Identical files are
//! stored once; blocks of zeros become holes (as mksquashfs does). A file of a block or more
//! that equals an earlier one shares its data blocks (backhand's own check: length and xxh64 of
//! the whole file); a file shorter than a block that equals an earlier one shares its place in a
//! fragment block (length and SHA-256; our patch of backhand, vendor/backhand/PATCHES.md). An
//! empty file has no fragment. backhand has no tail-end packing, so the last partial block of a
//! longer file never lands in a fragment block and never matches a small file.
//!
//! Compression: xz (preset 6, dictionary = block size, no BCJ filter; what mksquashfs
//! `-comp xz` does) or zstd at a chosen level (default 15, the mksquashfs default; backhand's own
//! default is 3, so the level is always written explicitly into the image's compression options).
//!
//! Threads: backhand's writer compresses on the thread that calls it; [`super::squashfs_ahead`]
//! compresses the data and fragment blocks ahead of it on [`crate::par::jobs`] threads and hands
//! them over in order, so the image is byte-identical on any thread count (and to backhand's own
//! single-threaded output). Metadata blocks (inodes, directories, tables) stay on the calling
//! thread; they are a small part of an image.
//!
//! Not supported: extended attributes, hard links (a tree has none: they are separate files that
//! deduplication stores once), NFS export tables, tail-end packing of a long file's last partial
//! block into a fragment (mksquashfs does not do it by default either).
//!
//! [`inspect`] validates the superblock of an existing image (for a user-supplied prebuilt root)
//! without reading its contents. Format reference:
//! <https://dr-emann.github.io/squashfs/squashfs.html>.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use backhand::compression::{CompressionOptions, Compressor, Zstd};
use backhand::{
    BackhandError, FilesystemCompressor, FilesystemReader, FilesystemWriter, NodeHeader,
};

use super::squashfs_ahead;
use super::tree::{EntryKind, FileData, Tree};
use crate::io::count::{Counted, Meter};

/// Largest name of one directory entry the Linux squashfs driver accepts (`SQUASHFS_NAME_LEN`).
const MAX_NAME_LEN: usize = 256;
/// Size of the on-disk superblock.
const SUPERBLOCK_LEN: usize = 96;
/// `hsqs`: the little-endian magic, the only byte order Linux mounts.
const MAGIC: [u8; 4] = *b"hsqs";

/// Errors from writing or inspecting squashfs images.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    /// The block size is not one squashfs allows.
    #[error(
        "squashfs block size {size} is invalid; hint: use a power of two from 4096 to 1048576 \
         (131072 is the usual choice)"
    )]
    BlockSize {
        /// The size asked for.
        size: u32,
    },
    /// A device number does not fit squashfs's 32-bit encoding.
    #[error(
        "device {path} has number {major}:{minor}, which squashfs cannot store \
         (major must be below 4096 and minor below 1048576)"
    )]
    DeviceNumber {
        /// The device's path in the tree.
        path: PathBuf,
        /// Its major number.
        major: u32,
        /// Its minor number.
        minor: u32,
    },
    /// The existing image uses a compressor Linux cannot mount, or an unknown one.
    #[error(
        "{path} uses {name} compression, which the Linux squashfs driver cannot mount; \
         hint: rebuild it with mksquashfs -comp xz or -comp zstd"
    )]
    InspectCompression {
        /// The image.
        path: PathBuf,
        /// The compressor's name (or its numeric id).
        name: String,
    },
    /// The existing image's superblock is inconsistent.
    #[error("{path} is not a valid squashfs image: {reason}")]
    InspectCorrupt {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading the existing image failed.
    #[error("cannot read squashfs image {path}")]
    InspectIo {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The existing image is not a little-endian squashfs 4.0 image.
    #[error("{path} is not a squashfs 4.0 image: {reason}")]
    InspectNotSquashfs {
        /// The image.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// A path component is longer than squashfs allows.
    #[error("name of {path} is longer than {MAX_NAME_LEN} bytes, the squashfs limit")]
    NameTooLong {
        /// The offending path in the tree.
        path: PathBuf,
    },
    /// Creating or finishing the output file failed.
    #[error("cannot write squashfs image {path}")]
    Output {
        /// The output file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// backhand refused an entry of the tree.
    #[error("cannot add {path} to the squashfs image: {detail}")]
    Push {
        /// The path in the tree.
        path: PathBuf,
        /// What backhand reported.
        detail: &'static str,
    },
    /// Writing the image failed (output error, unreadable host file, compressor error).
    #[error("cannot write the squashfs image: {detail}")]
    Write {
        /// What backhand reported.
        detail: &'static str,
        /// The I/O error behind it, if any; it names the host file when reading one failed.
        #[source]
        source: Option<io::Error>,
    },
    /// The zstd level is outside what zstd accepts.
    #[error("zstd level {level} is out of range; hint: use 1 to 22 (15 is the default)")]
    ZstdLevel {
        /// The level asked for.
        level: i32,
    },
}

/// Result alias for this module.
pub type Result<T, E = SquashError> = std::result::Result<T, E>;

/// How data and metadata blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquashCompression {
    /// xz, preset 6, dictionary size = block size.
    Xz,
    /// zstd at `level` (1..=22).
    Zstd {
        /// Compression level; 15 matches mksquashfs's default.
        level: i32,
    },
}

impl Default for SquashCompression {
    fn default() -> Self {
        Self::Zstd { level: 15 }
    }
}

/// Parameters of [`write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquashOptions {
    /// Compressor for data and metadata.
    pub compression: SquashCompression,
    /// Data block size in bytes: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    /// Modification time (seconds since the epoch) of every inode and of the superblock.
    pub mtime: u32,
}

impl Default for SquashOptions {
    /// zstd level 15, 128 KiB blocks, mtime 0.
    fn default() -> Self {
        Self {
            compression: SquashCompression::default(),
            block_size: 128 * 1024,
            mtime: 0,
        }
    }
}

/// Figures about a written image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquashStats {
    /// Bytes written, including the padding to a multiple of 4 KiB.
    pub bytes: u64,
    /// Number of inodes (tree entries, root included).
    pub inodes: u32,
}

/// A compressor the Linux squashfs driver can mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquashCodec {
    /// zlib/gzip (id 1).
    Gzip,
    /// lzo (id 3).
    Lzo,
    /// xz (id 4).
    Xz,
    /// lz4 (id 5).
    Lz4,
    /// zstd (id 6).
    Zstd,
}

/// What [`inspect`] found in a superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquashInfo {
    /// The image's compressor.
    pub compression: SquashCodec,
    /// Data block size in bytes.
    pub block_size: u32,
    /// Number of inodes.
    pub inodes: u32,
    /// Bytes of the file that belong to the image (the rest is padding).
    pub bytes_used: u64,
}

/// Writes `tree` as a squashfs image to `out` and returns its size and inode count.
///
/// The image starts at `out`'s position 0 (backhand seeks back there to write the superblock).
/// `out` should be buffered (e.g. a `BufWriter<File>`): the writer issues many small writes for
/// metadata. Host files named by the tree are opened only while their data is written; an
/// unreadable one fails the whole write with an error naming it.
///
/// Like mksquashfs, backhand writes a file's data before it knows the file is a duplicate, then
/// seeks back over it. When that happens near the end, `out` holds stale bytes after the image;
/// they are overwritten with zeros, but the stream may stay longer than [`SquashStats::bytes`].
/// [`write_file`] truncates the file to the image size.
///
/// Data and fragment blocks are compressed on [`crate::par::jobs`] threads (see
/// [`super::squashfs_ahead`]); the bytes do not depend on the thread count.
pub fn write<W: Write + Seek>(tree: &Tree, out: W, opts: &SquashOptions) -> Result<SquashStats> {
    write_metered(tree, out, opts, &())
}

/// [`write`], telling `read` how many bytes of file content have been read so far (the
/// build's progress: the total is the tree's file sizes).
pub fn write_metered<'t, W: Write + Seek>(
    tree: &'t Tree,
    out: W,
    opts: &SquashOptions,
    read: &'t dyn Meter,
) -> Result<SquashStats> {
    let workers = match crate::par::jobs() {
        1 => 0,
        jobs => jobs,
    };
    write_on(tree, out, opts, workers, read).map(|(stats, _)| stats)
}

/// [`write_metered`] with `workers` threads compressing data blocks ahead of the writer, or none
/// (every block compressed on the calling thread, as backhand alone does) when `workers` is 0.
fn write_on<'t, W: Write + Seek>(
    tree: &'t Tree,
    out: W,
    opts: &SquashOptions,
    workers: usize,
    read: &'t dyn Meter,
) -> Result<(SquashStats, squashfs_ahead::Counts)> {
    let block_size = checked_block_size(opts.block_size)?;
    let compressor = compressor(opts.compression)?;
    let header_of =
        |e: &super::tree::Entry| NodeHeader::new(mode_u16(e.mode), e.uid, e.gid, opts.mtime);
    let root = tree
        .iter()
        .next()
        .map(|(_, e)| header_of(e))
        .unwrap_or_default();
    let seed = root_seed(root);
    let seed = FilesystemReader::from_reader(io::Cursor::new(seed)).map_err(write_error)?;
    let mut fs = FilesystemWriter::from_fs_reader(&seed).map_err(write_error)?;
    fs.set_block_size(block_size);
    fs.set_time(opts.mtime);
    fs.set_compressor(compressor);
    fs.set_no_duplicate_files(true);
    for (path, entry) in tree.iter().filter(|(path, _)| *path != Path::new("/")) {
        check_name(path)?;
        push(&mut fs, path, &entry.kind, header_of(entry), read)?;
    }
    let mut tracked = Tracked::new(out);
    let (written, counts) = if workers == 0 {
        (fs.write(&mut tracked), squashfs_ahead::Counts::default())
    } else {
        fs.set_kind(squashfs_ahead::kind());
        squashfs_ahead::run(tree, compressor, block_size, workers, || {
            fs.write(&mut tracked)
        })
    };
    let (superblock, bytes) = written.map_err(write_error)?;
    tracked
        .zero_after(bytes)
        .map_err(|e| write_error(e.into()))?;
    let stats = SquashStats {
        bytes,
        inodes: superblock.inode_count,
    };
    Ok((stats, counts))
}

/// A squashfs image holding only a root directory with `root`'s mode, owner and mtime, with
/// uncompressed metadata.
///
/// backhand's writer can set the root's mode and owner but not its mtime, and does not add the
/// root's uid/gid to the id table. A writer made from a reader copies the root header and the id
/// table, so [`write`] starts from this image. Layout: superblock, inode table (one root inode),
/// empty directory table, id table (one metadata block plus its pointer).
fn root_seed(root: NodeHeader) -> Vec<u8> {
    let mut ids = vec![root.uid];
    if root.gid != root.uid {
        ids.push(root.gid);
    }
    let gid_index = (ids.len() - 1) as u16;
    let mut inode = Vec::with_capacity(32);
    // Basic directory inode (type 1): type, mode, uid index, gid index.
    for field in [1u16, root.permissions, 0, gid_index] {
        inode.extend_from_slice(&field.to_le_bytes());
    }
    // mtime, inode number 1, directory block index 0, link count 2.
    for field in [root.mtime, 1, 0, 2] {
        inode.extend_from_slice(&field.to_le_bytes());
    }
    // Listing size 3 (empty), offset 0 in the block, parent inode 2 (as mksquashfs does).
    inode.extend_from_slice(&3u16.to_le_bytes());
    inode.extend_from_slice(&0u16.to_le_bytes());
    inode.extend_from_slice(&2u32.to_le_bytes());
    let id_bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();

    let mut body = uncompressed_metadata(&inode);
    let dir_table = (SUPERBLOCK_LEN + body.len()) as u64;
    body.extend(uncompressed_metadata(&id_bytes));
    let id_table = (SUPERBLOCK_LEN + body.len()) as u64;
    body.extend_from_slice(&dir_table.to_le_bytes());
    let bytes_used = (SUPERBLOCK_LEN + body.len()) as u64;

    let mut image = Vec::with_capacity(bytes_used as usize);
    image.extend_from_slice(&MAGIC);
    for field in [1u32, root.mtime, backhand::DEFAULT_BLOCK_SIZE, 0] {
        image.extend_from_slice(&field.to_le_bytes());
    }
    // Compressor xz (unused: the metadata is stored uncompressed), block_log, flags, id count,
    // version 4.0.
    let block_log = backhand::DEFAULT_BLOCK_SIZE.ilog2() as u16;
    for field in [4u16, block_log, 0, ids.len() as u16, 4, 0] {
        image.extend_from_slice(&field.to_le_bytes());
    }
    let not_set = u64::MAX;
    let inode_table = SUPERBLOCK_LEN as u64;
    for field in [
        0,
        bytes_used,
        id_table,
        not_set,
        inode_table,
        dir_table,
        not_set,
        not_set,
    ] {
        image.extend_from_slice(&field.to_le_bytes());
    }
    image.extend(body);
    image
}

/// A metadata block stored uncompressed: a length word with bit 15 set, then the bytes.
fn uncompressed_metadata(bytes: &[u8]) -> Vec<u8> {
    let mut block = Vec::with_capacity(bytes.len() + 2);
    // Callers pass at most a few dozen bytes, far below the 8 KiB metadata block limit.
    block.extend_from_slice(&(0x8000 | bytes.len() as u16).to_le_bytes());
    block.extend_from_slice(bytes);
    block
}

/// Writes `tree` as a squashfs image into a new file at `path` (replacing any file there),
/// truncated to the image size. See [`write`].
pub fn write_file(
    tree: &Tree,
    path: impl AsRef<Path>,
    opts: &SquashOptions,
) -> Result<SquashStats> {
    write_file_metered(tree, path, opts, &())
}

/// [`write_file`], counting the file content read into `read` (see [`write_metered`]).
pub fn write_file_metered(
    tree: &Tree,
    path: impl AsRef<Path>,
    opts: &SquashOptions,
    read: &dyn Meter,
) -> Result<SquashStats> {
    let path = path.as_ref();
    let out_err = |source| SquashError::Output {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(out_err)?;
    let mut out = io::BufWriter::new(file);
    let stats = write_metered(tree, &mut out, opts, read)?;
    let file = out.into_inner().map_err(|e| out_err(e.into_error()))?;
    file.set_len(stats.bytes).map_err(out_err)?;
    Ok(stats)
}

/// Passes writes through, remembering the position (so that backhand's frequent
/// `stream_position` calls do not flush a `BufWriter`) and the furthest byte written.
struct Tracked<W> {
    inner: W,
    pos: u64,
    high: u64,
}

impl<W: Write + Seek> Tracked<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            pos: 0,
            high: 0,
        }
    }

    /// Zeros whatever was written after `end` and leaves the position at `end`.
    fn zero_after(&mut self, end: u64) -> io::Result<()> {
        if self.high > end {
            self.seek(io::SeekFrom::Start(end))?;
            io::copy(&mut io::repeat(0).take(self.high - end), self)?;
            self.seek(io::SeekFrom::Start(end))?;
        }
        self.flush()
    }
}

impl<W: Write> Write for Tracked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        self.high = self.high.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Seek> Seek for Tracked<W> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        if to != io::SeekFrom::Current(0) {
            self.pos = self.inner.seek(to)?;
        }
        Ok(self.pos)
    }
}

fn checked_block_size(size: u32) -> Result<u32> {
    let valid = size.is_power_of_two()
        && (backhand::MIN_BLOCK_SIZE..=backhand::MAX_BLOCK_SIZE).contains(&size);
    if valid {
        Ok(size)
    } else {
        Err(SquashError::BlockSize { size })
    }
}

fn compressor(compression: SquashCompression) -> Result<FilesystemCompressor> {
    let made = match compression {
        SquashCompression::Xz => FilesystemCompressor::new(Compressor::Xz, None),
        SquashCompression::Zstd { level } => {
            let compression_level = u32::try_from(level)
                .ok()
                .filter(|l| (1..=22).contains(l))
                .ok_or(SquashError::ZstdLevel { level })?;
            let options = CompressionOptions::Zstd(Zstd { compression_level });
            FilesystemCompressor::new(Compressor::Zstd, Some(options))
        }
    };
    // backhand only refuses mismatched compressor/options pairs, which cannot happen here.
    made.map_err(write_error)
}

/// Permission bits as squashfs stores them (12 bits; the file type comes from the inode type).
fn mode_u16(mode: u32) -> u16 {
    // Masked to 12 bits, so the conversion cannot lose anything.
    (mode & super::tree::PERMISSION_BITS) as u16
}

fn check_name(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    match path.file_name() {
        Some(name) if name.as_bytes().len() > MAX_NAME_LEN => Err(SquashError::NameTooLong {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Adds one tree entry to the backhand writer.
fn push<'t>(
    fs: &mut FilesystemWriter<'_, '_, 't>,
    path: &'t Path,
    kind: &'t EntryKind,
    header: NodeHeader,
    read: &'t dyn Meter,
) -> Result<()> {
    let pushed = match kind {
        EntryKind::Dir => fs.push_dir(path, header),
        EntryKind::File(FileData::Host(host)) => fs.push_file(
            Counted::new(HostFile::new(host.clone()), read),
            path,
            header,
        ),
        EntryKind::File(FileData::Bytes(bytes)) => {
            fs.push_file(Counted::new(bytes.as_slice(), read), path, header)
        }
        EntryKind::Symlink(target) => fs.push_symlink(target.clone(), path, header),
        EntryKind::CharDev { major, minor } => {
            fs.push_char_device(encode_dev(path, *major, *minor)?, path, header)
        }
        EntryKind::BlockDev { major, minor } => {
            fs.push_block_device(encode_dev(path, *major, *minor)?, path, header)
        }
        EntryKind::Fifo => fs.push_fifo(path, header),
        EntryKind::Socket => fs.push_socket(path, header),
    };
    pushed.map_err(|e| SquashError::Push {
        path: path.to_path_buf(),
        detail: describe(&e),
    })
}

/// Encodes a device number as Linux's `new_encode_dev`, which squashfs stores verbatim.
fn encode_dev(path: &Path, major: u32, minor: u32) -> Result<u32> {
    if major >= 1 << 12 || minor >= 1 << 20 {
        return Err(SquashError::DeviceNumber {
            path: path.to_path_buf(),
            major,
            minor,
        });
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// A host file opened on first read and closed at end of file, so that the writer never holds
/// more than one open descriptor. Errors name the file.
struct HostFile {
    path: PathBuf,
    file: Option<File>,
    done: bool,
}

impl HostFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            done: false,
        }
    }

    fn annotate(&self, op: &str, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("cannot {op} {}: {e}", self.path.display()),
        )
    }
}

impl Read for HostFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let opened = File::open(&self.path).map_err(|e| self.annotate("open", e))?;
                self.file.insert(opened)
            }
        };
        let n = match file.read(buf) {
            Ok(n) => n,
            Err(e) => return Err(self.annotate("read", e)),
        };
        if n == 0 && !buf.is_empty() {
            self.file = None;
            self.done = true;
        }
        Ok(n)
    }
}

fn write_error(e: BackhandError) -> SquashError {
    let detail = describe(&e);
    let source = match e {
        BackhandError::StdIo(io) => Some(io),
        _ => None,
    };
    SquashError::Write { detail, source }
}

/// A message for a backhand error: its own `Display` is empty without its `error-strings`
/// feature, which we leave off to avoid the `tracing` dependency.
fn describe(e: &BackhandError) -> &'static str {
    use BackhandError as B;
    match e {
        B::StdIo(_) => "i/o error",
        B::InvalidFilePath => "invalid path or parent is not a directory",
        B::DuplicatedFileName => "duplicate path",
        B::IdNotFoundInTable => "uid/gid missing from the id table",
        B::InvalidCompressionOption => "invalid compression options",
        B::CompressionInit(_) => "compressor initialisation failed",
        B::UnsupportedCompression(_) => "compressor not built in",
        B::NumericConversion(_) => "a size or count overflowed",
        B::MutexPoisoned => "internal lock poisoned",
        _ => "internal backhand error",
    }
}

/// Checks that `path` holds a squashfs 4.0 image that Linux can mount, reading only its
/// superblock (the contents are not verified).
pub fn inspect(path: impl AsRef<Path>) -> Result<SquashInfo> {
    let path = path.as_ref();
    let io_err = |source| SquashError::InspectIo {
        path: path.to_path_buf(),
        source,
    };
    let file_len = std::fs::metadata(path).map_err(io_err)?.len();
    inspect_at(path, 0, file_len)
}

/// [`inspect`] for an image of `len` bytes at byte `offset` of `path` (a disk image's partition).
pub fn inspect_at(path: impl AsRef<Path>, offset: u64, len: u64) -> Result<SquashInfo> {
    let path = path.as_ref();
    let io_err = |source| SquashError::InspectIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    if len < SUPERBLOCK_LEN as u64 {
        return Err(not_squashfs(path, format!("only {len} bytes long")));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    file.read_exact(&mut sb).map_err(io_err)?;
    Superblock(&sb).validate(path, len)
}

fn not_squashfs(path: &Path, reason: String) -> SquashError {
    SquashError::InspectNotSquashfs {
        path: path.to_path_buf(),
        reason,
    }
}

fn corrupt(path: &Path, reason: String) -> SquashError {
    SquashError::InspectCorrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// Little-endian field access to a raw superblock.
struct Superblock<'a>(&'a [u8; SUPERBLOCK_LEN]);

impl Superblock<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }

    fn validate(&self, path: &Path, file_len: u64) -> Result<SquashInfo> {
        let magic = &self.0[..4];
        if magic == b"sqsh" {
            return Err(not_squashfs(
                path,
                "big-endian image, Linux mounts little-endian only".into(),
            ));
        }
        if magic != MAGIC {
            return Err(not_squashfs(
                path,
                format!("magic is {magic:02x?}, expected \"hsqs\""),
            ));
        }
        let (major, minor) = (self.u16(28), self.u16(30));
        if (major, minor) != (4, 0) {
            return Err(not_squashfs(path, format!("version {major}.{minor}")));
        }
        let compression = codec(path, self.u16(20))?;
        let block_size = self.u32(12);
        let block_log = self.u16(22);
        if checked_block_size(block_size).is_err() || block_size.ilog2() != u32::from(block_log) {
            return Err(corrupt(
                path,
                format!("block size {block_size} with block_log {block_log}"),
            ));
        }
        let bytes_used = self.u64(40);
        if bytes_used > file_len {
            return Err(corrupt(
                path,
                format!(
                    "superblock says {bytes_used} bytes but the file has {file_len}; truncated?"
                ),
            ));
        }
        for (name, at) in [
            ("inode table", 64),
            ("directory table", 72),
            ("id table", 48),
        ] {
            let offset = self.u64(at);
            if offset < SUPERBLOCK_LEN as u64 || offset >= bytes_used {
                return Err(corrupt(
                    path,
                    format!("{name} offset {offset} is outside the image"),
                ));
            }
        }
        Ok(SquashInfo {
            compression,
            block_size,
            inodes: self.u32(4),
            bytes_used,
        })
    }
}

/// Maps a compressor id to a mountable codec, refusing lzma (never merged into Linux).
fn codec(path: &Path, id: u16) -> Result<SquashCodec> {
    let refuse = |name: String| SquashError::InspectCompression {
        path: path.to_path_buf(),
        name,
    };
    match id {
        1 => Ok(SquashCodec::Gzip),
        2 => Err(refuse("lzma".into())),
        3 => Ok(SquashCodec::Lzo),
        4 => Ok(SquashCodec::Xz),
        5 => Ok(SquashCodec::Lz4),
        6 => Ok(SquashCodec::Zstd),
        other => Err(refuse(format!("unknown (id {other})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::Entry;
    use super::*;
    use backhand::InnerNode;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::{BufReader, Cursor};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    /// Deterministic, poorly compressible bytes.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// A host directory with every size class of file, plus a tree over it with owners,
    /// devices and special files added.
    fn sample() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        let files: [(&str, Vec<u8>, u32); 10] = [
            ("empty", vec![], 0o644),
            ("one", vec![b'1'], 0o600),
            ("bin/suid", noise(4095, 1), 0o4755),
            ("bin/sgid-sticky", noise(4096, 2), 0o3755),
            ("data/block", noise(128 * 1024, 3), 0o644),
            ("data/block-plus-one", noise(128 * 1024 + 1, 4), 0o644),
            ("data/big", noise(700_000, 5), 0o444),
            ("data/zeros", vec![0; 512 * 1024], 0o644),
            ("data/text", b"hello squashfs\n".repeat(20_000), 0o644),
            (
                "data/dup-of-text",
                b"hello squashfs\n".repeat(20_000),
                0o644,
            ),
        ];
        for (name, bytes, mode) in &files {
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        }
        fs::create_dir(root.join("private")).unwrap();
        fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::hard_link(root.join("data/big"), root.join("data/big-hardlink")).unwrap();
        std::os::unix::fs::symlink("../data/text", root.join("bin/rel-link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/abs", root.join("abs-link")).unwrap();
        let mut tree = Tree::from_dir(root).unwrap();
        tree.all_root();
        let owned = Entry::bytes_file(b"owned".to_vec(), 0o640).owned_by(1000, 2000);
        tree.insert("/home/user/file", owned).unwrap();
        tree.insert("/home/user", Entry::dir(0o750).owned_by(1000, 1000))
            .unwrap();
        let dev = |kind, mode| Entry {
            kind,
            mode,
            uid: 0,
            gid: 6,
        };
        tree.insert(
            "/dev/null",
            dev(EntryKind::CharDev { major: 1, minor: 3 }, 0o666),
        )
        .unwrap();
        tree.insert(
            "/dev/big",
            dev(
                EntryKind::CharDev {
                    major: 259,
                    minor: 70_000,
                },
                0o600,
            ),
        )
        .unwrap();
        tree.insert(
            "/dev/sda1",
            dev(EntryKind::BlockDev { major: 8, minor: 1 }, 0o660),
        )
        .unwrap();
        tree.insert("/run/fifo", dev(EntryKind::Fifo, 0o620))
            .unwrap();
        tree.insert("/run/sock", dev(EntryKind::Socket, 0o777))
            .unwrap();
        tree.insert("/", Entry::dir(0o755).owned_by(7, 8)).unwrap();
        (dir, tree)
    }

    fn contents(data: &FileData) -> Vec<u8> {
        match data {
            FileData::Host(p) => fs::read(p).unwrap(),
            FileData::Bytes(b) => b.clone(),
        }
    }

    fn write_to(tree: &Tree, path: &Path, opts: &SquashOptions) -> SquashStats {
        write_file(tree, path, opts).unwrap()
    }

    fn have(tool: &str) -> bool {
        crate::test_support::require_tool(tool)
    }

    /// `ls -l` style type and permission string.
    fn perm_string(entry: &Entry) -> String {
        let t = match entry.kind {
            EntryKind::Dir => 'd',
            EntryKind::File(_) => '-',
            EntryKind::Symlink(_) => 'l',
            EntryKind::CharDev { .. } => 'c',
            EntryKind::BlockDev { .. } => 'b',
            EntryKind::Fifo => 'p',
            EntryKind::Socket => 's',
        };
        let m = entry.mode;
        let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
        let special = |x: u32, s: u32, on: char, off: char| match (m & x != 0, m & s != 0) {
            (true, true) => on,
            (false, true) => off,
            (true, false) => 'x',
            (false, false) => '-',
        };
        format!(
            "{t}{}{}{}{}{}{}{}{}{}",
            bit(0o400, 'r'),
            bit(0o200, 'w'),
            special(0o100, 0o4000, 's', 'S'),
            bit(0o040, 'r'),
            bit(0o020, 'w'),
            special(0o010, 0o2000, 's', 'S'),
            bit(0o004, 'r'),
            bit(0o002, 'w'),
            special(0o001, 0o1000, 't', 'T'),
        )
    }

    /// What `unsquashfs -lln` should print for each entry: perms, owner, size or device, link.
    fn expected_listing(tree: &Tree) -> BTreeMap<String, String> {
        tree.iter()
            .map(|(path, e)| {
                let size = match &e.kind {
                    EntryKind::File(data) => contents(data).len().to_string(),
                    EntryKind::Symlink(t) => t.as_os_str().len().to_string(),
                    EntryKind::CharDev { major, minor } | EntryKind::BlockDev { major, minor } => {
                        // unsquashfs prints the stored word as `word >> 8, word & 0xff`, which
                        // is the real major/minor only for minors below 256 (see
                        // `device_numbers_match_mksquashfs`).
                        let word = encode_dev(path, *major, *minor).unwrap();
                        format!("{},{}", word >> 8, word & 0xff)
                    }
                    _ => String::new(),
                };
                let link = match &e.kind {
                    EntryKind::Symlink(t) => format!(" -> {}", t.display()),
                    _ => String::new(),
                };
                let name = format!("squashfs-root{}", path.display())
                    .trim_end_matches('/')
                    .into();
                (
                    name,
                    format!("{} {}/{} {size}{link}", perm_string(e), e.uid, e.gid),
                )
            })
            .collect()
    }

    /// Parses `unsquashfs -lln` into the same shape (directory sizes are dropped).
    fn parse_listing(out: &str) -> BTreeMap<String, String> {
        out.lines()
            .filter_map(|line| {
                let at = line.find(" squashfs-root")?;
                let (meta, name) = (&line[..at], &line[at + 1..]);
                let tokens: Vec<&str> = meta.split_whitespace().collect();
                let (name, link) = match name.split_once(" -> ") {
                    Some((n, l)) => (n, format!(" -> {l}")),
                    None => (name, String::new()),
                };
                let size = if tokens[0].starts_with('d')
                    || tokens[0].starts_with('p')
                    || tokens[0].starts_with('s')
                {
                    String::new()
                } else {
                    tokens[2..tokens.len() - 2].join("")
                };
                Some((
                    name.to_string(),
                    format!("{} {} {size}{link}", tokens[0], tokens[1]),
                ))
            })
            .collect()
    }

    /// Reads the image back with backhand and compares it with the tree entry by entry.
    fn compare_with_backhand(tree: &Tree, image: &Path) {
        let reader = BufReader::new(File::open(image).unwrap());
        let fs = FilesystemReader::from_reader(reader).unwrap();
        let nodes: Vec<_> = fs.files().collect();
        assert_eq!(nodes.len(), tree.len());
        for (node, (path, entry)) in nodes.iter().zip(tree.iter()) {
            assert_eq!(node.fullpath, path);
            let h = node.header;
            assert_eq!(
                (u32::from(h.permissions), h.uid, h.gid, h.mtime),
                (entry.mode, entry.uid, entry.gid, 1_700_000_000),
                "{path:?}"
            );
            match (&node.inner, &entry.kind) {
                (InnerNode::File(f), EntryKind::File(data)) => {
                    let mut got = Vec::new();
                    fs.file(f).reader().read_to_end(&mut got).unwrap();
                    assert!(got == contents(data), "contents of {path:?}");
                }
                (InnerNode::Dir(_), EntryKind::Dir)
                | (InnerNode::NamedPipe, EntryKind::Fifo)
                | (InnerNode::Socket, EntryKind::Socket) => {}
                (InnerNode::Symlink(s), EntryKind::Symlink(t)) => assert_eq!(&s.link, t),
                (InnerNode::CharacterDevice(d), EntryKind::CharDev { major, minor }) => {
                    assert_eq!(d.device_number, encode_dev(path, *major, *minor).unwrap())
                }
                (InnerNode::BlockDevice(d), EntryKind::BlockDev { major, minor }) => {
                    assert_eq!(d.device_number, encode_dev(path, *major, *minor).unwrap())
                }
                (got, want) => panic!("{path:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn judge_with_unsquashfs(tree: &Tree, image: &Path, comp: &str) {
        if !have("unsquashfs") {
            return;
        }
        let sb = Command::new("unsquashfs")
            .arg("-s")
            .arg(image)
            .output()
            .unwrap();
        let sb = String::from_utf8_lossy(&sb.stdout);
        assert!(sb.contains(&format!("Compression {comp}")), "{sb}");
        assert!(sb.contains("Block size 131072"), "{sb}");
        assert!(
            sb.contains(&format!("Number of inodes {}", tree.len())),
            "{sb}"
        );
        let list = Command::new("unsquashfs")
            .arg("-lln")
            .arg(image)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let got = parse_listing(&String::from_utf8_lossy(&list.stdout));
        assert_eq!(got, expected_listing(tree));
        let text = String::from_utf8_lossy(&list.stdout);
        let entries: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" squashfs-root"))
            .collect();
        assert_eq!(entries.len(), tree.len());
        assert!(
            entries.iter().all(|l| l.contains(" 2023-11-14 22:13 ")),
            "mtime of every inode:\n{text}"
        );

        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("x");
        let extract = Command::new("unsquashfs")
            .arg("-d")
            .arg(&dest)
            .arg(image)
            .output()
            .unwrap();
        // Recreating devices and owners needs root; without it only the contents are judged.
        let is_root = fs::metadata(out.path()).unwrap().uid() == 0;
        let stderr = String::from_utf8_lossy(&extract.stderr);
        assert!(
            !is_root || extract.status.success(),
            "unsquashfs -d failed: {stderr}"
        );
        for (path, entry) in tree.iter() {
            if let EntryKind::File(data) = &entry.kind {
                let rel = path.strip_prefix("/").unwrap();
                let got = fs::read(dest.join(rel)).unwrap();
                assert!(
                    got == contents(data),
                    "unsquashfs extracted different bytes for {path:?}"
                );
            }
        }
    }

    #[test]
    fn round_trip_zstd_and_xz_judged_by_backhand_and_unsquashfs() {
        let (_dir, tree) = sample();
        let out = tempfile::tempdir().unwrap();
        for (compression, name) in [
            (SquashCompression::Zstd { level: 15 }, "zstd"),
            (SquashCompression::Xz, "xz"),
        ] {
            let opts = SquashOptions {
                compression,
                mtime: 1_700_000_000,
                ..Default::default()
            };
            let image = out.path().join(format!("{name}.sqfs"));
            let stats = write_to(&tree, &image, &opts);
            assert_eq!(stats.bytes, fs::metadata(&image).unwrap().len());
            assert_eq!(stats.bytes % 4096, 0);
            assert_eq!(stats.inodes as usize, tree.len());
            compare_with_backhand(&tree, &image);
            judge_with_unsquashfs(&tree, &image, name);
            let info = inspect(&image).unwrap();
            let codec = if name == "xz" {
                SquashCodec::Xz
            } else {
                SquashCodec::Zstd
            };
            assert_eq!(
                (info.compression, info.block_size, info.inodes),
                (codec, 131_072, stats.inodes)
            );
            assert!(info.bytes_used <= stats.bytes && info.bytes_used > stats.bytes - 4096);
        }
    }

    /// `files` (path, bytes) written into a new directory, read back as a root-owned tree.
    fn root_owned_tree(files: &[(String, Vec<u8>)]) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let mut tree = Tree::from_dir(dir.path()).unwrap();
        tree.all_root();
        (dir, tree)
    }

    /// A tree that meets every way backhand cuts data, and how many data blocks (fragment blocks
    /// aside) it compresses: files of several blocks, poorly and well compressible (6 + 3), one
    /// with two blocks of zeros, which become holes, between two others (2), one of zeros only
    /// (0), one of exactly one block (1), a duplicate of a big file (written before the writer
    /// finds it to be one: 6, queued uncompressed), a file of its length with other bytes (6),
    /// an empty file, and small files that fill
    /// several fragment blocks, some before, between and after the big ones, one a duplicate.
    /// Returns the data blocks and, of them, those of the duplicate.
    fn blocky() -> (tempfile::TempDir, Tree, u64, u64) {
        const BS: usize = 128 * 1024;
        let mut files: Vec<(String, Vec<u8>)> = vec![
            ("a".into(), noise(3000, 20)),
            (
                "big/holes".into(),
                [noise(BS, 21), vec![0; 2 * BS], noise(BS / 2, 22)].concat(),
            ),
            ("big/noise".into(), noise(5 * BS + 1000, 23)),
            ("big/one-block".into(), noise(BS, 24)),
            ("big/readme".into(), b"small text\n".repeat(500)),
            ("big/text".into(), b"strata squashfs\n".repeat(3 * BS / 16)),
            ("big/zeros".into(), vec![0; 3 * BS]),
            ("dup/big-copy".into(), noise(5 * BS + 1000, 23)),
            ("dup/big-same-length".into(), noise(5 * BS + 1000, 25)),
            ("empty".into(), Vec::new()),
        ];
        for i in 0..40 {
            files.push((
                format!("small/{i:02}"),
                noise(9000 + 97 * i, 100 + i as u32),
            ));
        }
        files.push(("small/copy-of-07".into(), noise(9000 + 97 * 7, 107)));
        let (dir, tree) = root_owned_tree(&files);
        (dir, tree, 6 + 3 + 2 + 1 + 6 + 6, 6)
    }

    /// Writes `tree` (zstd and xz) on no worker (backhand alone) and on 1, 2 and 5 workers,
    /// checks that every image is byte for byte backhand's own, that the writer took every
    /// block the reader cut (`data_blocks` plus the fragment blocks: no guess was wrong) and
    /// that `copies` of them, the blocks of duplicates, went uncompressed, and judges the image
    /// with backhand and unsquashfs. Returns the images' fragment block counts.
    fn assert_threads_agree(tree: &Tree, data_blocks: u64, copies: u64) -> Vec<u64> {
        assert!(have("unsquashfs"), "unsquashfs judges this test");
        let out = tempfile::tempdir().unwrap();
        let mut fragment_counts = Vec::new();
        for (compression, name) in [
            (SquashCompression::Zstd { level: 15 }, "zstd"),
            (SquashCompression::Xz, "xz"),
        ] {
            let opts = SquashOptions {
                compression,
                mtime: 1_700_000_000,
                ..Default::default()
            };
            let image = |workers| {
                let mut cursor = Cursor::new(Vec::new());
                let (stats, counts) = write_on(tree, &mut cursor, &opts, workers, &()).unwrap();
                let mut bytes = cursor.into_inner();
                assert!(bytes[stats.bytes as usize..].iter().all(|b| *b == 0));
                bytes.truncate(stats.bytes as usize);
                (bytes, counts)
            };
            // No workers: the writer compresses every block itself, as backhand alone does.
            let (alone, counts) = image(0);
            assert_eq!(counts, squashfs_ahead::Counts::default());
            let fragments = fragment_count(&alone);
            let blocks = data_blocks + fragments;
            for workers in [1, 2, 5] {
                let (bytes, counts) = image(workers);
                assert!(
                    bytes == alone,
                    "{name}: {workers} workers changed the image"
                );
                // Every block was queued ahead, and the writer used every one; the duplicates'
                // blocks were not compressed.
                assert_eq!(
                    (counts.cut, counts.used, counts.spared),
                    (blocks, blocks, copies),
                    "{name}, {workers}"
                );
            }
            let path = out.path().join(format!("{name}.sqfs"));
            fs::write(&path, &alone).unwrap();
            compare_with_backhand(tree, &path);
            judge_with_unsquashfs(tree, &path, name);
            fragment_counts.push(fragments);
        }
        fragment_counts
    }

    /// The superblock's fragment block count (offset 16), which includes the last, partial one.
    fn fragment_count(image: &[u8]) -> u64 {
        u64::from(u32::from_le_bytes(image[16..20].try_into().unwrap()))
    }

    #[test]
    fn threads_do_not_change_the_image() {
        let (_dir, tree, data_blocks, copies) = blocky();
        for fragments in assert_threads_agree(&tree, data_blocks, copies) {
            assert!(fragments >= 4, "{fragments} fragment blocks");
        }
    }

    /// A tree full of identical files shorter than a block, and the pairs (copy, original):
    /// 30 files of about 9 KB filling three fragment blocks (`a/`), a copy of one right after
    /// it (same fragment block, still being filled) and a file of the same length but other
    /// bytes; two files one byte short of a block, one a copy (a fragment block each, so `b/`
    /// starts a new one); copies of all 30 in `b/` (their originals in earlier fragment blocks),
    /// interleaved with unique small files and empty files; a file one block long and its copy
    /// (the data path's own deduplication), and a file of two blocks whose tail has the bytes
    /// of `a/00`, with a small copy of `a/00` after it. Also returns the number of data blocks
    /// backhand writes (the long file's 2, the one-block file and its copy, written before it
    /// is found to be one; the read-ahead queues that one uncompressed).
    #[allow(clippy::type_complexity)]
    fn small_copies() -> (tempfile::TempDir, Tree, u64, Vec<(String, String)>) {
        const BS: usize = 128 * 1024;
        let small = |i: usize| noise(9000 + 13 * i, 200 + i as u32);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut copies = Vec::new();
        let mut copy = |files: &mut Vec<(String, Vec<u8>)>, to: String, from: String| {
            let bytes = files
                .iter()
                .find(|(name, _)| *name == from)
                .unwrap()
                .1
                .clone();
            files.push((to.clone(), bytes));
            copies.push((to, from));
        };
        for i in 0..30 {
            files.push((format!("a/{i:02}"), small(i)));
        }
        copy(&mut files, "a/05-copy".into(), "a/05".into());
        files.push(("a/05-empty".into(), Vec::new()));
        files.push(("a/same-length-as-03".into(), noise(small(3).len(), 999)));
        files.push(("am/almost".into(), noise(BS - 1, 500)));
        copy(&mut files, "am/almost-copy".into(), "am/almost".into());
        for i in 0..30 {
            copy(&mut files, format!("b/{i:02}"), format!("a/{i:02}"));
            if i % 5 == 0 {
                files.push((format!("b/{i:02}-empty"), Vec::new()));
                files.push((format!("b/{i:02}-unique"), noise(5000 + i, 600 + i as u32)));
            }
        }
        files.push(("c/one-block".into(), noise(BS, 700)));
        copy(&mut files, "c/one-block-copy".into(), "c/one-block".into());
        files.push(("c/tail".into(), [noise(BS, 701), small(0)].concat()));
        copy(&mut files, "c/tail-z".into(), "a/00".into());
        let (dir, tree) = root_owned_tree(&files);
        (dir, tree, 2 + 1 + 1, copies)
    }

    #[test]
    fn threads_agree_on_small_identical_files() {
        let (_dir, tree, data_blocks, _) = small_copies();
        for fragments in assert_threads_agree(&tree, data_blocks, 1) {
            // a/ (3 or 4), am/ (2), b/'s unique files (1); none for the copies in b/.
            assert!((5..=7).contains(&fragments), "{fragments} fragment blocks");
        }
    }

    /// The inode of each file of `image`, by path.
    fn file_inodes(image: &Path) -> BTreeMap<String, backhand::SquashfsFileReader> {
        let reader = BufReader::new(File::open(image).unwrap());
        let fs = FilesystemReader::from_reader(reader).unwrap();
        fs.files()
            .filter_map(|node| match &node.inner {
                InnerNode::File(f) => Some((node.fullpath.display().to_string(), f.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn small_identical_files_are_stored_once() {
        assert!(have("unsquashfs"), "unsquashfs judges this test");
        let (_dir, tree, _, copies) = small_copies();
        let out = tempfile::tempdir().unwrap();
        let opts = SquashOptions {
            mtime: 1_700_000_000,
            ..Default::default()
        };
        let once = out.path().join("once.sqfs");
        write_to(&tree, &once, &opts);

        // Each copy shares its original's fragment (or, a block long, its data blocks); empty
        // files have no fragment (0xffffffff, what the kernel expects), and a file of the same
        // length with other bytes has its own.
        let inodes = file_inodes(&once);
        let at = |path: &str| {
            let f = &inodes[path];
            (
                f.frag_index(),
                f.block_offset(),
                f.blocks_start(),
                f.file_len(),
            )
        };
        for (copy, original) in &copies {
            assert_eq!(
                at(&format!("/{copy}")),
                at(&format!("/{original}")),
                "{copy}"
            );
        }
        for path in ["/a/05-empty", "/b/00-empty", "/b/25-empty"] {
            assert_eq!(inodes[path].frag_index(), u32::MAX as usize, "{path}");
        }
        assert_ne!(at("/a/same-length-as-03"), at("/a/03"));
        assert_eq!(inodes["/c/tail"].frag_index(), u32::MAX as usize);
        assert_eq!(inodes["/c/tail"].block_sizes().len(), 2);

        // The same tree with every copy one byte off its original: now they count.
        let mut twice_tree = tree.clone();
        let mut copied = 0;
        for (copy, _) in &copies {
            let path = format!("/{copy}");
            let EntryKind::File(data) = &tree.get(&path).unwrap().kind else {
                panic!("{path} is a file");
            };
            let mut bytes = contents(data);
            bytes[0] ^= 0xff;
            copied += bytes.len() as u64;
            twice_tree
                .insert(&path, Entry::bytes_file(bytes, 0o644))
                .unwrap();
        }
        let twice = out.path().join("twice.sqfs");
        write_to(&twice_tree, &twice, &opts);
        let (once_len, twice_len) = (
            fs::metadata(&once).unwrap().len(),
            fs::metadata(&twice).unwrap().len(),
        );
        // The copies are noise: stored again they take about their size, save those that land
        // in their original's fragment block (a/05-copy) or are a block long (deduplicated
        // either way).
        assert!(
            twice_len - once_len > copied - 2 * 128 * 1024,
            "once {once_len}, twice {twice_len}, copies {copied} bytes"
        );

        // unsquashfs reads the layout as the kernel does: the fragment count of the superblock,
        // and every file's bytes (judge_with_unsquashfs extracts and compares them).
        let stat = crate::test_support::judge_ok(Command::new("unsquashfs").arg("-s").arg(&once));
        let stat = String::from_utf8_lossy(&stat.stdout);
        let fragments = fragment_count(&fs::read(&once).unwrap());
        assert!(
            stat.contains(&format!("Number of fragments {fragments}")),
            "{stat}"
        );
        judge_with_unsquashfs(&tree, &once, "zstd");
        judge_with_unsquashfs(&twice_tree, &twice, "zstd");
    }

    #[test]
    fn zstd_level_is_stored_and_respected() {
        let (_dir, tree) = sample();
        let sizes: Vec<u64> = [1, 19]
            .iter()
            .map(|&level| {
                let opts = SquashOptions {
                    compression: SquashCompression::Zstd { level },
                    ..Default::default()
                };
                let mut image = Cursor::new(Vec::new());
                write(&tree, &mut image, &opts).unwrap();
                let bytes = image.into_inner();
                // Compression options follow the 96-byte superblock: a metadata header, then the level.
                assert_eq!(
                    u32::from_le_bytes(bytes[98..102].try_into().unwrap()),
                    level as u32
                );
                bytes.len() as u64
            })
            .collect();
        assert!(sizes[1] <= sizes[0], "{sizes:?}");
    }

    #[test]
    fn device_numbers_match_mksquashfs() {
        if !have("mksquashfs") || !have("unsquashfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (src, theirs, ours) = (
            dir.path().join("src"),
            dir.path().join("t"),
            dir.path().join("o"),
        );
        fs::create_dir(&src).unwrap();
        let devices = [(1, 3), (8, 17), (259, 70_000), (4095, 1_048_575)];
        let mut cmd = Command::new("mksquashfs");
        cmd.arg(&src)
            .arg(&theirs)
            .args(["-noappend", "-quiet", "-no-progress"]);
        let mut tree = Tree::new();
        for (major, minor) in devices {
            cmd.arg("-p")
                .arg(format!("d{major}-{minor} c 600 0 0 {major} {minor}"));
            let kind = EntryKind::CharDev { major, minor };
            tree.insert(
                format!("/d{major}-{minor}"),
                Entry {
                    kind,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            )
            .unwrap();
        }
        assert!(cmd.status().unwrap().success());
        write_to(&tree, &ours, &SquashOptions::default());
        let list = |image: &Path| {
            let out = Command::new("unsquashfs")
                .arg("-lln")
                .arg(image)
                .env("TZ", "UTC")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // Drop the date columns, which differ (mksquashfs uses the current time).
            text.lines()
                .filter(|l| l.starts_with('c'))
                .map(|l| {
                    l.split(" 19")
                        .next()
                        .unwrap()
                        .split(" 20")
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (list(&theirs), list(&ours));
        assert_eq!(a.len(), devices.len());
        assert_eq!(a, b);
    }

    #[test]
    fn identical_input_gives_identical_bytes() {
        let (_dir, tree) = sample();
        let out = tempfile::tempdir().unwrap();
        for compression in [SquashCompression::Xz, SquashCompression::default()] {
            let opts = SquashOptions {
                compression,
                mtime: 42,
                ..Default::default()
            };
            let digest = |name: &str| {
                let path = out.path().join(name);
                write_to(&tree.clone(), &path, &opts);
                hex::encode(Sha256::digest(fs::read(path).unwrap()))
            };
            assert_eq!(digest("a.sqfs"), digest("b.sqfs"), "{compression:?}");
        }
    }

    #[test]
    fn bad_options_and_entries_are_refused() {
        let tree = Tree::new();
        let sink = || Cursor::new(Vec::new());
        let opts = SquashOptions {
            block_size: 3000,
            ..Default::default()
        };
        let err = write(&tree, sink(), &opts).unwrap_err().to_string();
        assert!(
            err.starts_with("squashfs block size 3000 is invalid; hint:"),
            "{err}"
        );
        let opts = SquashOptions {
            compression: SquashCompression::Zstd { level: 0 },
            ..Default::default()
        };
        assert!(matches!(
            write(&tree, sink(), &opts),
            Err(SquashError::ZstdLevel { level: 0 })
        ));

        let mut tree = Tree::new();
        tree.insert(
            "/dev/x",
            Entry {
                kind: EntryKind::CharDev {
                    major: 4096,
                    minor: 0,
                },
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        )
        .unwrap();
        let err = write(&tree, sink(), &SquashOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("device /dev/x has number 4096:0"), "{err}");

        let mut tree = Tree::new();
        tree.insert(format!("/{}", "n".repeat(257)), Entry::dir(0o755))
            .unwrap();
        assert!(matches!(
            write(&tree, sink(), &SquashOptions::default()),
            Err(SquashError::NameTooLong { .. })
        ));

        let mut tree = Tree::new();
        tree.insert(
            "/gone",
            Entry::host_file("/nonexistent/strata-test-file", 0o644),
        )
        .unwrap();
        let err = write(&tree, sink(), &SquashOptions::default()).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("cannot open /nonexistent/strata-test-file"),
            "{chain}"
        );
    }

    #[test]
    fn inspect_refuses_bad_images_naming_them() {
        let (_dir, tree) = sample();
        let out = tempfile::tempdir().unwrap();
        let good = out.path().join("good.sqfs");
        write_to(&tree, &good, &SquashOptions::default());
        let bytes = fs::read(&good).unwrap();
        let variant = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = bytes.clone();
            edit(&mut b);
            let path = out.path().join(name);
            fs::write(&path, b).unwrap();
            let err = inspect(&path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            err
        };
        assert!(
            variant("magic", &|b| b[..4].copy_from_slice(b"nope")).contains("expected \"hsqs\"")
        );
        assert!(variant("big-endian", &|b| b[..4].copy_from_slice(b"sqsh")).contains("big-endian"));
        assert!(variant("v3", &|b| b[28] = 3).contains("version 3.0"));
        assert!(variant("lzma", &|b| b[20] = 2).contains("uses lzma compression"));
        assert!(variant("unknown", &|b| b[20] = 9).contains("unknown (id 9)"));
        assert!(variant("blocklog", &|b| b[22] = 16).contains("block_log 16"));
        assert!(variant("truncated", &|b| b.truncate(b.len() / 2)).contains("truncated?"));
        assert!(variant("tiny", &|b| b.truncate(10)).contains("only 10 bytes long"));
        let missing = out.path().join("missing");
        assert!(inspect(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    #[test]
    fn inspect_accepts_mksquashfs_images() {
        if !have("mksquashfs") {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"x").unwrap();
        let out = tempfile::tempdir().unwrap();
        for (comp, codec) in [
            ("gzip", SquashCodec::Gzip),
            ("lzo", SquashCodec::Lzo),
            ("lz4", SquashCodec::Lz4),
            ("xz", SquashCodec::Xz),
        ] {
            let image = out.path().join(comp);
            let status = Command::new("mksquashfs")
                .arg(src.path())
                .arg(&image)
                .args(["-comp", comp, "-b", "65536", "-quiet", "-no-progress"])
                .output()
                .unwrap();
            assert!(
                status.status.success(),
                "{}",
                String::from_utf8_lossy(&status.stderr)
            );
            let info = inspect(&image).unwrap();
            assert_eq!(
                (info.compression, info.block_size, info.inodes),
                (codec, 65536, 2)
            );
        }
    }
}
