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

/// Writes the initramfs to `out`.
pub fn write(out: &Path, c: &Contents<'_>) -> std::io::Result<Stats> {
    let file = File::create(out)?;
    let mut w = CountingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        count: 0,
    };
    write_stored(&mut w, c)?;
    let stored = w.count;
    let enc =
        compress::encoder(&mut w, &compression(c.compression)).map_err(std::io::Error::other)?;
    let enc = write_boot_part(enc, c)?;
    enc.finish()?;
    let compressed = w.count - stored;
    w.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(Stats { stored, compressed })
}

fn compression(c: InitramfsCompressor) -> Compression {
    let threads = crate::par::jobs_u32();
    match c {
        InitramfsCompressor::Xz => Compression::Xz {
            threads,
            preset: 6,
            check: XzCheck::Crc32,
        },
        InitramfsCompressor::Zstd => Compression::Zstd { level: 19, threads },
    }
}

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
