//! The initramfs: two concatenated newc cpio segments, which the kernel
//! unpacks one after the other.
//!
//! 1. *stored* (not compressed): `rootfs.sqsh`, one `.sqsh` per extension and
//!    `extensions.yaml`. squashfs is compressed already; compressing it again
//!    would cost build and boot time for nothing.
//! 2. *compressed* (xz with a CRC32 check, as the kernel's unpacker requires,
//!    or zstd): the init, `/dev/console`, the module closure and
//!    `/etc/strata/modules.load` (load order, dependencies first).
//!
//! The contract with the guest init is [`strata_proto::initramfs`] (described in
//! `boot/README.md`).

use crate::fs::cpio::CpioWriter;
use crate::io::compress::{self, Compression, XzCheck};
use crate::io::hash::HashWriter;
use crate::kmod::ModuleRef;
use crate::profile::InitramfsCompressor;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use strata_proto::initramfs as guest;

/// What goes into the initramfs.
pub struct Contents<'a> {
    /// The guest init binary (static).
    pub init: &'a Path,
    /// Kernel release: modules live under `lib/modules/<release>/`.
    pub release: &'a str,
    /// The kernel's `lib/modules/<release>` directory.
    pub modules_dir: &'a Path,
    /// The module closure, dependencies first.
    pub modules: &'a [ModuleRef],
    /// The root filesystem image.
    pub rootfs: &'a Path,
    /// Extension layers, lowest first: (file name in the initramfs, squashfs).
    pub layers: &'a [(String, PathBuf)],
    /// sysext/confext images: (path in the initramfs, e.g. `sysext/tools.raw`, file).
    pub images: &'a [(String, PathBuf)],
    /// Small files for the init (`etc/strata/modules.check`, `etc/strata/extensions.json`).
    pub files: &'a [(String, Vec<u8>)],
    /// `extensions.yaml` text.
    pub extensions_yaml: &'a str,
    /// mtime of every entry.
    pub mtime: u32,
    /// Compressor of the second segment.
    pub compression: InitramfsCompressor,
}

/// Sizes of the two segments, for the build report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of the stored segment.
    pub stored: u64,
    /// Bytes of the compressed segment.
    pub compressed: u64,
}

/// Writes the initramfs to `out`: the stored segment, then the compressed segment already
/// written to `boot` by [`write_boot`] (its own step, so a build that changed only an
/// extension does not compress the modules again).
///
/// The file is written front to back in one pass, so it is hashed on its way out and its
/// sha256 [`remember`](crate::io::hash::remember)ed: the step cache seals it, and the disk's
/// key names it, without reading its 100-odd MB back.
pub fn write(out: &Path, c: &Contents<'_>, boot: &Path) -> std::io::Result<Stats> {
    let file = File::create(out)?;
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, HashWriter::new(file)),
        count: 0,
    };
    write_stored(&mut w, c)?;
    let stored = w.count;
    let boot = File::open(boot)?;
    let boot_len = boot.metadata()?.len();
    crate::io::copy_chunked(&mut &boot, boot_len, &mut w)?;
    let compressed = w.count - stored;
    let hashed = w.inner.into_inner().map_err(|e| e.into_error())?;
    let sha256 = hashed.sha256_hex();
    hashed.into_inner().sync_all()?;
    crate::io::hash::remember(out, &sha256)?;
    Ok(Stats { stored, compressed })
}

/// Writes the compressed segment alone to `out`: the init, `/dev/console`, the modules,
/// `modules.load` and the small files, compressed. It depends on none of the squashfs
/// images; its bytes do not depend on where they are written, so the initramfs that
/// [`write`] assembles is the one a single pass would write.
pub fn write_boot(out: &Path, c: &Contents<'_>) -> std::io::Result<u64> {
    let file = File::create(out)?;
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        count: 0,
    };
    let settings = compression(c.compression, crate::par::jobs_u32());
    let enc = compress::encoder(&mut w, &settings).map_err(std::io::Error::other)?;
    let enc = write_boot_part(enc, c)?;
    enc.finish()?;
    let written = w.count;
    w.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(written)
}

/// The segment's compressor settings. The levels sit at the knee of the size/time curve of
/// this segment, not at the codec's maximum: on Debian's kernel (5.6 MB: init, 36 modules)
/// xz preset 2 takes 0.44 s of CPU for 1.38 MB where preset 6 takes 1.85 s for 1.27 MB,
/// and zstd level 12 takes 0.20 s for 1.56 MB where level 19 takes 1.77 s for 1.40 MB.
/// The 0.1-0.16 MB they add is 0.1 % of a disk whose bulk is the stored squashfs images,
/// and the 1.4-1.6 s they save is a tenth of what a cold build spends beyond compressing
/// those images (docs/performance.md).
///
/// The bytes do not depend on `threads` (the encoders keep their multi-threaded layout on one
/// thread), so the segment's cache key holds these settings at one thread: every setting, and
/// never the thread count.
pub fn compression(c: InitramfsCompressor, threads: u32) -> Compression {
    match c {
        InitramfsCompressor::Xz => Compression::Xz {
            threads,
            preset: SEGMENT_XZ_PRESET,
            check: XzCheck::Crc32,
        },
        InitramfsCompressor::Zstd => Compression::Zstd {
            level: SEGMENT_ZSTD_LEVEL,
            threads,
        },
    }
}

/// xz preset of the compressed segment (see [`compression`]).
const SEGMENT_XZ_PRESET: u32 = 2;
/// zstd level of the compressed segment (see [`compression`]).
const SEGMENT_ZSTD_LEVEL: i32 = 12;

fn write_stored<W: Write>(w: W, c: &Contents<'_>) -> std::io::Result<()> {
    let mut cpio = CpioWriter::new(w, c.mtime);
    cpio.file_from_path("rootfs.sqsh", c.rootfs, 0o444)?;
    for (name, path) in c.layers {
        cpio.file_from_path(name, path, 0o444)?;
    }
    let mut dirs: Vec<&str> = c
        .images
        .iter()
        .filter_map(|(n, _)| n.split_once('/').map(|(d, _)| d))
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    for d in dirs {
        cpio.dir(d, 0o755)?;
    }
    for (name, path) in c.images {
        cpio.file_from_path(name, path, 0o444)?;
    }
    let yaml = c.extensions_yaml.as_bytes();
    let name = guest::archive_name(guest::EXTENSIONS_YAML);
    cpio.file(name, 0o444, yaml.len() as u64, yaml)?;
    cpio.finish()?;
    Ok(())
}

fn write_boot_part<W: Write>(w: W, c: &Contents<'_>) -> std::io::Result<W> {
    let mut cpio = CpioWriter::new(w, c.mtime);
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc",
        "etc/strata",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.char_dev("dev/console", 0o600, 5, 1)?;
    cpio.file_from_path("init", c.init, 0o755)?;
    let base = format!("lib/modules/{}", c.release);
    let mut dirs = std::collections::BTreeSet::new();
    let mut load = Vec::new();
    for m in c.modules {
        let target = format!("{base}/{}", m.rel_path.display());
        for anc in Path::new(&target).ancestors().skip(1) {
            let a = anc.to_string_lossy();
            if a.len() > "lib/modules".len() {
                dirs.insert(a.into_owned());
            }
        }
        load.push(format!("/{target}"));
    }
    let load = guest::modules_load_text(&load);
    for d in &dirs {
        cpio.dir(d, 0o755)?;
    }
    for m in c.modules {
        let target = format!("{base}/{}", m.rel_path.display());
        cpio.file_from_path(&target, c.modules_dir.join(&m.rel_path), 0o644)?;
    }
    cpio.file(
        guest::archive_name(guest::MODULES_LOAD),
        0o644,
        load.len() as u64,
        load.as_bytes(),
    )?;
    for (name, data) in c.files {
        cpio.file(name, 0o644, data.len() as u64, &data[..])?;
    }
    cpio.finish()
}

/// The byte ranges `(offset, length)` of the initramfs at `path` that hold data compressed
/// already: every entry of the stored segment that is a squashfs with compressed data (the
/// root, the layers, the squashfs written for each DDI extension, a bare squashfs extension),
/// and the whole compressed segment. What remains (cpio headers, `extensions.yaml`, an
/// extension image that is not compressed squashfs) is left for an output wrapper to compress.
///
/// Read from the file rather than recorded when it is written, so an initramfs from any
/// earlier build answers the same way. Only the headers and each entry's first bytes are read.
pub fn compressed_ranges(path: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let (spans, end) = crate::fs::cpio::data_spans(std::io::BufReader::new(&mut file))?;
    let mut out = Vec::new();
    for span in spans {
        if compressed_squashfs(&file, span.offset, span.size)? {
            out.push((span.offset, span.size));
        }
    }
    if end < len {
        out.push((end, len - end));
    }
    Ok(out)
}

/// True when the `size` bytes at `offset` of `file` start with a squashfs 4 superblock whose
/// flags do not say the data blocks are stored uncompressed.
fn compressed_squashfs(file: &File, offset: u64, size: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    /// `SQUASHFS_NOD` of the superblock flags: data blocks not compressed.
    const UNCOMPRESSED_DATA: u16 = 0x0002;
    let mut sb = [0u8; 32];
    if size < sb.len() as u64 {
        return Ok(false);
    }
    file.read_exact_at(&mut sb, offset)?;
    let flags = u16::from_le_bytes([sb[24], sb[25]]);
    let major = u16::from_le_bytes([sb[28], sb[29]]);
    Ok(&sb[..4] == b"hsqs" && major == 4 && flags & UNCOMPRESSED_DATA == 0)
}

/// Counts bytes on their way to a file.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::InitramfsCompressor;

    /// A file that starts like a squashfs 4 superblock with `flags`, then `len` bytes.
    fn squashfs_like(dir: &Path, name: &str, flags: u16, len: usize) -> PathBuf {
        let mut data = vec![0u8; 96];
        data[..4].copy_from_slice(b"hsqs");
        data[24..26].copy_from_slice(&flags.to_le_bytes());
        data[28..30].copy_from_slice(&4u16.to_le_bytes());
        data.extend((0..len).map(|i| (i * 7 % 251) as u8));
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn compressed_ranges_are_the_squashfs_images_and_the_compressed_segment() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let init = d.join("init");
        std::fs::write(&init, b"#!/bin/sh\n").unwrap();
        let rootfs = squashfs_like(d, "root", 0, 10_000);
        let layer = squashfs_like(d, "layer", 0, 3_001);
        // Squashfs whose data blocks are stored, and an image that is no squashfs at all.
        let plain_sqsh = squashfs_like(d, "plain", 0x0002, 500);
        let raw = d.join("raw");
        std::fs::write(&raw, vec![9u8; 700]).unwrap();
        let layers = vec![
            ("00-a.sqsh".to_string(), layer.clone()),
            ("01-b.sqsh".to_string(), plain_sqsh),
        ];
        let images = vec![("sysext/x.raw".to_string(), raw)];
        let out = d.join("initrd.img");
        let contents = Contents {
            init: &init,
            release: "6.1.0",
            modules_dir: d,
            modules: &[],
            rootfs: &rootfs,
            layers: &layers,
            images: &images,
            files: &[],
            extensions_yaml: "layers: []\n",
            mtime: 0,
            compression: InitramfsCompressor::Zstd,
        };
        let boot = d.join("initrd.boot");
        let boot_len = write_boot(&boot, &contents).unwrap();
        let stats = write(&out, &contents, &boot).unwrap();
        assert_eq!(stats.compressed, boot_len);
        // Hashed while written: the digest it leaves for the step cache is the file's.
        assert_eq!(
            crate::io::hash::known_sha256(&out),
            Some(crate::io::hash::bytes_sha256(&std::fs::read(&out).unwrap()))
        );
        let ranges = compressed_ranges(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let at = |(off, len): (u64, u64)| bytes[off as usize..(off + len) as usize].to_vec();
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert_eq!(at(ranges[0]), std::fs::read(&rootfs).unwrap());
        assert_eq!(at(ranges[1]), std::fs::read(&layer).unwrap());
        // The last range runs from the stored segment's trailer to the end of the file.
        let (tail, tail_len) = ranges[2];
        assert_eq!(tail + tail_len, bytes.len() as u64);
        assert!(stats.stored - tail < 512, "{tail} vs {}", stats.stored);
        let boot = ::zstd::stream::decode_all(&bytes[stats.stored as usize..]).unwrap();
        assert!(boot.starts_with(b"070701"));
    }
}
