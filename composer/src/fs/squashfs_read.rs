//! Reading a squashfs image into a [`Tree`]: systemd-sysext `.raw` images and prebuilt roots.
//!
//! [`read`] lists every inode of a little-endian squashfs 4.0 image (through backhand's reader)
//! with its kind, permission bits, uid and gid, symlink target and device numbers, and extracts
//! regular file contents into a temporary directory that the returned tree owns (a [`Tree`]
//! refers to contents by host path, so they must exist somewhere). Files that share their data
//! in the image (hard links, and duplicates mksquashfs or strata stored once) are extracted
//! once and referenced by every entry.
//!
//! Compression: all five codecs a squashfs 4.0 image can use and Linux mounts (gzip, the
//! default of mksquashfs, lzo, xz, lz4, zstd): backhand is built with each of them.
//!
//! [`read_range_in`] reads an image that is one partition of a disk image (a DDI's `usr` or
//! `root` partition): the squashfs lies at an offset, with a length it must fit in.
//!
//! Not supported: extended attributes (dropped), timestamps (a tree has none), squashfs 3.x and
//! big-endian images, and images with names a tree refuses (`..`, NUL bytes).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use backhand::{BackhandError, FilesystemReader, InnerNode, SquashfsFileReader};
use tempfile::TempDir;

use crate::fs::squashfs::{self, SquashCodec, SquashError};
use crate::fs::tree::{Entry, EntryKind, FileData, Tree, TreeError, PERMISSION_BITS};

/// Errors from reading a squashfs image.
#[derive(Debug, thiserror::Error)]
pub enum SqfsReadError {
    /// The image's superblock is not one of a mountable squashfs 4.0 image.
    #[error("cannot read squashfs image {path}")]
    Inspect {
        /// The image.
        path: PathBuf,
        /// What the superblock check found.
        #[source]
        source: SquashError,
    },
    /// The image is compressed with a codec backhand cannot decompress (the superblock names
    /// one of the five, so only a backhand without that feature gets here).
    #[error(
        "squashfs image {path} is {codec}-compressed, which this strata cannot read; \
         hint: rebuild it with `mksquashfs ... -comp zstd` (or -comp xz)"
    )]
    Codec {
        /// The image.
        path: PathBuf,
        /// The codec's name.
        codec: &'static str,
    },
    /// backhand could not parse the image's tables.
    #[error("squashfs image {path} is corrupt or unsupported: {detail}")]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// backhand's description.
        detail: String,
    },
    /// A file's data could not be read from the image or written to the scratch directory.
    #[error("cannot extract {inner} from squashfs image {path} to {host}")]
    Extract {
        /// The image.
        path: PathBuf,
        /// The file's path inside the image.
        inner: PathBuf,
        /// Where it was being written.
        host: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image could not be opened, or the scratch directory not created.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An inode cannot be represented in a tree (bad name, non-directory parent).
    #[error("squashfs image {path} holds an entry strata cannot use")]
    Tree {
        /// The image.
        path: PathBuf,
        /// The cause, naming the entry.
        #[source]
        source: TreeError,
    },
}

/// Result alias for this module.
pub type Result<T, E = SqfsReadError> = std::result::Result<T, E>;

/// Reads the squashfs image at `path`, extracting file contents below the system temporary
/// directory. See [`read_in`].
pub fn read(path: &Path) -> Result<Tree> {
    read_in(path, &std::env::temp_dir())
}

/// Reads the squashfs image at `path` into a tree whose file contents are extracted into a new
/// temporary directory below `scratch_parent` (pick one on the same disk as the build output for
/// large images). The directory lives as long as the tree or any clone of it.
pub fn read_in(path: &Path, scratch_parent: &Path) -> Result<Tree> {
    let len = std::fs::metadata(path)
        .map_err(|source| io_err("stat", path, source))?
        .len();
    read_range_in(path, 0, len, scratch_parent)
}

/// [`read_in`] for the squashfs image of `len` bytes at byte `offset` of `path` (a partition of
/// a disk image); the image must fit in that range.
pub fn read_range_in(path: &Path, offset: u64, len: u64, scratch_parent: &Path) -> Result<Tree> {
    let info =
        squashfs::inspect_at(path, offset, len).map_err(|source| SqfsReadError::Inspect {
            path: path.to_path_buf(),
            source,
        })?;
    let file = File::open(path).map_err(|source| io_err("open", path, source))?;
    let fs = FilesystemReader::from_reader_with_offset(BufReader::new(file), offset)
        .map_err(|e| backhand_error(path, info.compression, e))?;
    let scratch = TempDir::with_prefix_in("strata-sqfs-", scratch_parent)
        .map_err(|source| io_err("create a temporary directory in", scratch_parent, source))?;
    let mut loader = Loader {
        image: path,
        codec: info.compression,
        fs: &fs,
        scratch: scratch.path(),
        extracted: HashMap::new(),
        tree: Tree::new(),
    };
    for node in fs.files() {
        loader.add(
            &node.fullpath,
            node.header.permissions,
            node.header.uid,
            node.header.gid,
            &node.inner,
        )?;
    }
    let mut tree = loader.tree;
    tree.hold_scratch(scratch);
    Ok(tree)
}

/// Identifies a file's data in the image: files with the same key have the same contents.
type DataKey = (u64, u32, usize, usize, Vec<(u32, bool)>);

struct Loader<'a, 'b> {
    image: &'a Path,
    codec: SquashCodec,
    fs: &'a FilesystemReader<'b>,
    scratch: &'a Path,
    /// Host file already holding the data with this key.
    extracted: HashMap<DataKey, PathBuf>,
    tree: Tree,
}

impl Loader<'_, '_> {
    fn add(
        &mut self,
        inner: &Path,
        permissions: u16,
        uid: u32,
        gid: u32,
        node: &InnerNode<SquashfsFileReader>,
    ) -> Result<()> {
        let kind = match node {
            InnerNode::Dir(_) => EntryKind::Dir,
            InnerNode::File(file) => EntryKind::File(FileData::Host(self.extract(inner, file)?)),
            InnerNode::Symlink(link) => EntryKind::Symlink(link.link.clone()),
            InnerNode::CharacterDevice(dev) => {
                let (major, minor) = split_dev(dev.device_number);
                EntryKind::CharDev { major, minor }
            }
            InnerNode::BlockDevice(dev) => {
                let (major, minor) = split_dev(dev.device_number);
                EntryKind::BlockDev { major, minor }
            }
            InnerNode::NamedPipe => EntryKind::Fifo,
            InnerNode::Socket => EntryKind::Socket,
        };
        let entry = Entry {
            kind,
            mode: u32::from(permissions) & PERMISSION_BITS,
            uid,
            gid,
        };
        self.tree
            .insert(inner, entry)
            .map_err(|source| SqfsReadError::Tree {
                path: self.image.to_path_buf(),
                source,
            })
    }

    /// Extracts one file's data (once per distinct data location) and returns its host path.
    fn extract(&mut self, inner: &Path, file: &SquashfsFileReader) -> Result<PathBuf> {
        let key: DataKey = (
            file.blocks_start(),
            file.block_offset(),
            file.frag_index(),
            file.file_len(),
            file.block_sizes()
                .iter()
                .map(|b| (b.size(), b.uncompressed()))
                .collect(),
        );
        if let Some(host) = self.extracted.get(&key) {
            return Ok(host.clone());
        }
        let host = self.scratch.join(self.extracted.len().to_string());
        let fail = |source| SqfsReadError::Extract {
            path: self.image.to_path_buf(),
            inner: inner.to_path_buf(),
            host: host.clone(),
            source,
        };
        let reader = self
            .fs
            .file(file)
            .reader_checked()
            .map_err(|e| backhand_error(self.image, self.codec, e))?;
        let out = File::create(&host).map_err(fail)?;
        let mut out = BufWriter::new(out);
        let copied = io::copy(&mut { reader }, &mut out).map_err(fail)?;
        out.flush().map_err(fail)?;
        if copied != file.file_len() as u64 {
            let short = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("got {copied} of {} bytes", file.file_len()),
            );
            return Err(fail(short));
        }
        self.extracted.insert(key, host.clone());
        Ok(host)
    }
}

/// Checks a prebuilt image to its last table before it is shipped as it is. Without this a
/// damaged image passes the superblock check and fails only in the guest, at mount time or at
/// the first read of a damaged file. backhand parses the id, fragment, export, inode and
/// directory tables; the export table must then cover every inode and point into the inode
/// table; finally every file's data is read and decompressed (each distinct run of blocks
/// once) and its length checked against its inode.
pub fn verify(path: &Path) -> Result<()> {
    let info = squashfs::inspect(path).map_err(|source| SqfsReadError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    let file = File::open(path).map_err(|source| io_err("open", path, source))?;
    let broken = |e| backhand_error(path, info.compression, e);
    let image = backhand::Squashfs::from_reader(BufReader::new(file)).map_err(broken)?;
    verify_export_table(path, &image.superblock, image.export.as_deref())?;
    let fs = image.into_filesystem_reader().map_err(broken)?;
    let mut seen = std::collections::HashSet::new();
    for node in fs.files() {
        let InnerNode::File(file) = &node.inner else {
            continue;
        };
        let run = (
            file.blocks_start(),
            file.frag_index(),
            file.block_offset(),
            file.file_len(),
        );
        if !seen.insert(run) {
            continue;
        }
        let corrupt = |detail: String| SqfsReadError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{}: {detail}", node.fullpath.display()),
        };
        let mut reader = fs.file(file).reader_checked().map_err(broken)?;
        let read = io::copy(&mut reader, &mut io::sink()).map_err(|e| corrupt(e.to_string()))?;
        if read != file.file_len() as u64 {
            return Err(corrupt(format!(
                "its data holds {read} bytes, its inode says {}",
                file.file_len()
            )));
        }
    }
    Ok(())
}

/// An export table (NFS file handles) lists one inode reference per inode; each reference is
/// a metadata block offset inside the inode table and an offset inside that 8 KiB block.
fn verify_export_table(
    path: &Path,
    sb: &backhand::SuperBlock,
    export: Option<&[backhand::Export]>,
) -> Result<()> {
    let Some(export) = export else {
        return Ok(());
    };
    let corrupt = |detail: String| SqfsReadError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("export table: {detail}"),
    };
    if export.len() != sb.inode_count as usize {
        return Err(corrupt(format!(
            "{} entries for {} inodes",
            export.len(),
            sb.inode_count
        )));
    }
    let table_len = sb.dir_table.saturating_sub(sb.inode_table);
    for (i, entry) in export.iter().enumerate() {
        let (block, offset) = (entry.num >> 16, entry.num & 0xffff);
        if block >= table_len || offset >= 8192 {
            return Err(corrupt(format!(
                "inode {} points at block {block} offset {offset}, outside the {table_len}-byte inode table",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Splits a squashfs device number (Linux `new_encode_dev` layout) into major and minor.
fn split_dev(dev: u32) -> (u32, u32) {
    let major = (dev >> 8) & 0xfff;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xf_ff00);
    (major, minor)
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> SqfsReadError {
    SqfsReadError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Maps a backhand error, telling "codec not built in" apart from corruption.
fn backhand_error(path: &Path, codec: SquashCodec, error: BackhandError) -> SqfsReadError {
    if matches!(error, BackhandError::UnsupportedCompression(_)) {
        return SqfsReadError::Codec {
            path: path.to_path_buf(),
            codec: codec_name(codec),
        };
    }
    SqfsReadError::Corrupt {
        path: path.to_path_buf(),
        detail: error.to_string(),
    }
}

fn codec_name(codec: SquashCodec) -> &'static str {
    match codec {
        SquashCodec::Gzip => "gzip",
        SquashCodec::Lzo => "lzo",
        SquashCodec::Xz => "xz",
        SquashCodec::Lz4 => "lz4",
        SquashCodec::Zstd => "zstd",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// Kind, mode, owner and contents of every entry, comparable across sources.
    fn describe(tree: &Tree) -> Vec<String> {
        tree.iter()
            .map(|(path, entry)| {
                let what = match &entry.kind {
                    EntryKind::File(FileData::Host(h)) => {
                        let bytes = fs::read(h).unwrap();
                        format!("file {} {:x}", bytes.len(), crc(&bytes))
                    }
                    EntryKind::File(FileData::Bytes(b)) => format!("file {} {:x}", b.len(), crc(b)),
                    other => format!("{other:?}"),
                };
                format!(
                    "{} {what} {:o} {}:{}",
                    path.display(),
                    entry.mode,
                    entry.uid,
                    entry.gid
                )
            })
            .collect()
    }

    /// A cheap checksum so listings stay short.
    fn crc(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    fn sample_dir(root: &Path) {
        fs::create_dir_all(root.join("usr/lib/extension-release.d")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(
            root.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs::write(
            root.join("usr/lib/extension-release.d/extension-release.x"),
            b"ID=_any\n",
        )
        .unwrap();
        let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 / 3) as u8).collect();
        fs::write(root.join("usr/lib/big"), &big).unwrap();
        fs::write(root.join("usr/lib/big-copy"), &big).unwrap();
        fs::write(root.join("usr/lib/zeros"), vec![0u8; 300_000]).unwrap();
        fs::write(root.join("usr/lib/empty"), b"").unwrap();
        fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-link")).unwrap();
        std::os::unix::fs::symlink("tool", root.join("usr/bin/sym")).unwrap();
        std::os::unix::fs::symlink("../../nowhere", root.join("usr/lib/dangling")).unwrap();
        fs::create_dir(root.join("usr/share")).unwrap();
        fs::set_permissions(root.join("usr/share"), fs::Permissions::from_mode(0o1777)).unwrap();
        let made = Command::new("mknod")
            .arg(root.join("usr/null"))
            .args(["c", "1", "3"])
            .status();
        assert!(made.is_ok_and(|s| s.success()), "mknod (tests run as root)");
        let made = Command::new("mknod")
            .arg(root.join("usr/blk"))
            .args(["b", "259", "300000"])
            .status();
        assert!(made.is_ok_and(|s| s.success()));
        let made = Command::new("mkfifo").arg(root.join("usr/fifo")).status();
        assert!(made.is_ok_and(|s| s.success()));
        std::os::unix::fs::chown(root.join("usr/lib/big"), Some(1000), Some(100)).unwrap();
    }

    /// Judge: mksquashfs's image of a directory reads back as that directory's tree.
    #[test]
    fn reads_mksquashfs_images_like_the_source_directory() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
        sample_dir(&src);
        let want = describe(&Tree::from_dir(&src).unwrap());
        if !crate::test_support::require_tool("mksquashfs") {
            return;
        }
        // Every codec Linux mounts; gzip is mksquashfs' default.
        for comp in ["gzip", "lzo", "lz4", "xz", "zstd"] {
            let image = dir.path().join(format!("{comp}.raw"));
            let status = Command::new("mksquashfs")
                .arg(&src)
                .arg(&image)
                .args(["-comp", comp, "-noappend", "-quiet", "-no-progress"])
                .status()
                .expect("run mksquashfs");
            assert!(status.success());
            let tree = read(&image).unwrap();
            assert_eq!(describe(&tree), want, "{comp}");
            let hosts: std::collections::BTreeSet<_> = tree
                .iter()
                .filter_map(|(_, e)| match &e.kind {
                    EntryKind::File(FileData::Host(h)) => Some(h.clone()),
                    _ => None,
                })
                .collect();
            // Five distinct contents: tool + tool-link and big + big-copy share their data.
            assert_eq!(hosts.len(), 5, "{comp}: {hosts:?}");
        }
    }

    #[test]
    fn round_trips_strata_written_images_and_outlives_clones() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        sample_dir(&src);
        let tree = Tree::from_dir(&src).unwrap();
        let image = dir.path().join("s.img");
        squashfs::write_file(&tree, &image, &squashfs::SquashOptions::default()).unwrap();
        let back = read_in(&image, dir.path()).unwrap();
        assert_eq!(describe(&back), describe(&tree));
        let copy = back.clone();
        drop(back);
        assert_eq!(
            describe(&copy),
            describe(&tree),
            "a clone keeps the contents"
        );
    }

    #[test]
    fn reads_an_image_inside_a_larger_file_by_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        sample_dir(&src);
        let tree = Tree::from_dir(&src).unwrap();
        let image = dir.path().join("s.img");
        squashfs::write_file(&tree, &image, &squashfs::SquashOptions::default()).unwrap();
        let bytes = fs::read(&image).unwrap();
        let mut disk = vec![0xa5u8; 1 << 20];
        disk.extend_from_slice(&bytes);
        disk.extend(vec![0x5au8; 4096]);
        let disk_path = dir.path().join("disk");
        fs::write(&disk_path, &disk).unwrap();
        let back =
            read_range_in(&disk_path, 1 << 20, bytes.len() as u64 + 4096, dir.path()).unwrap();
        assert_eq!(describe(&back), describe(&tree));
        // A range shorter than the bytes the superblock says it uses is refused: the partition
        // is cut (the file itself is padded to 4 KiB, so its length is not the measure).
        let used = u64::from_le_bytes(bytes[40..48].try_into().unwrap());
        let err = read_range_in(&disk_path, 1 << 20, used - 1, dir.path()).unwrap_err();
        assert!(
            crate::error::chain_line(&err).contains("truncated"),
            "{}",
            crate::error::chain_line(&err)
        );
    }

    /// Corrupt inputs end in an error naming the image, never a panic or a partial tree, and
    /// leave no scratch directory behind.
    #[test]
    fn refuses_damaged_tables_truncation_and_garbage_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::new();
        for i in 0..400 {
            let name = format!("/usr/share/many/file-with-a-long-name-{i:04}");
            tree.insert(&name, Entry::bytes_file(format!("{i}").into_bytes(), 0o644))
                .unwrap();
        }
        let image = dir.path().join("t.raw");
        squashfs::write_file(&tree, &image, &squashfs::SquashOptions::default()).unwrap();
        let pristine = fs::read(&image).unwrap();
        let le64 =
            |at: usize| u64::from_le_bytes(pristine[at..at + 8].try_into().unwrap()) as usize;
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        // Damage the inode table, the directory table and the id table in turn.
        for (table, at) in [
            ("inode", le64(64)),
            ("directory", le64(72)),
            ("id", le64(48)),
        ] {
            let mut bytes = pristine.clone();
            for b in &mut bytes[at + 2..(at + 34).min(pristine.len())] {
                *b ^= 0x5a;
            }
            fs::write(&image, &bytes).unwrap();
            let err = read_in(&image, &scratch).unwrap_err();
            let text = crate::error::chain_line(&err);
            assert!(text.contains("t.raw"), "{table} table: {text}");
            assert_eq!(
                fs::read_dir(&scratch).unwrap().count(),
                0,
                "{table}: scratch left"
            );
        }
        fs::write(&image, &pristine[..pristine.len() / 2]).unwrap();
        let err = crate::error::chain_line(&read_in(&image, &scratch).unwrap_err());
        assert!(err.contains("t.raw") && err.contains("truncated"), "{err}");
        let junk = dir.path().join("junk.raw");
        fs::write(&junk, vec![7u8; 4096]).unwrap();
        let err = read(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.raw"), "{err}");
    }
}

#[cfg(test)]
mod verify_tests {
    use super::*;
    use std::fs;

    /// mksquashfs with an export table, or `None` (and a panic under STRATA_E2E=1) without it.
    fn image(dir: &Path) -> Option<PathBuf> {
        if !crate::test_support::require_tool("mksquashfs") {
            return None;
        }
        let src = dir.join("src");
        fs::create_dir_all(src.join("usr/lib")).unwrap();
        let big: Vec<u8> = (0..400_000u32).map(|i| (i * 31 / 7) as u8).collect();
        fs::write(src.join("usr/lib/big"), &big).unwrap();
        fs::write(src.join("usr/lib/small"), b"a fragment").unwrap();
        let img = dir.join("root.squashfs");
        let ok = std::process::Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args([
                "-comp",
                "zstd",
                "-exports",
                "-noappend",
                "-quiet",
                "-no-progress",
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mksquashfs failed");
        Some(img)
    }

    fn damaged(img: &Path, at: u64, len: usize) -> PathBuf {
        let mut bytes = fs::read(img).unwrap();
        for b in &mut bytes[at as usize..at as usize + len] {
            *b ^= 0x5a;
        }
        let out = img.with_extension("damaged");
        fs::write(&out, bytes).unwrap();
        out
    }

    fn sb_u64(img: &Path, at: usize) -> u64 {
        let bytes = fs::read(img).unwrap();
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_and_every_block_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = image(dir.path()) else {
            return;
        };
        verify(&img).unwrap();
        // The big file's first data block, right after the superblock: its zstd frame
        // header. (squashfs has no checksums: damage that still decompresses to the right
        // length cannot be told from data.)
        let err = verify(&damaged(&img, 96, 8)).unwrap_err().to_string();
        assert!(err.contains("root.damaged"), "{err}");
        // Inode, directory, fragment, export and id tables (superblock offsets 64, 72, 80,
        // 88, 48): each pointer's table is damaged in place.
        for (table, at) in [
            ("inode", 64),
            ("directory", 72),
            ("fragment", 80),
            ("export", 88),
            ("id", 48),
        ] {
            let start = sb_u64(&img, at);
            let len = if table == "inode" || table == "directory" {
                16
            } else {
                8
            };
            let bad = damaged(&img, start, len);
            assert!(
                verify(&bad).is_err(),
                "damage to the {table} table was not noticed"
            );
        }
        // Truncated: the superblock says more bytes than the file has.
        let bytes = fs::read(&img).unwrap();
        let cut = dir.path().join("cut.squashfs");
        fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = verify(&cut).unwrap_err();
        assert!(format!("{err:?}").contains("truncated"), "{err:?}");
    }
}
