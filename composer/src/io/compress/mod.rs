//! Compressors for finished artefacts (initramfs, disk images): xz and zstd.
//!
//! [`encoder`] wraps any [`Write`] in an [`Encoder`] that compresses what is written to it and
//! gives the inner writer back from [`Encoder::finish`] (the initramfs's compressed segment).
//! [`compress_file`] compresses a whole finished file (the `.xz` and `.zst` output wrappers):
//! it cuts the file into fixed-size pieces, stores the ranges the caller names as compressed
//! already and the blocks a cheap probe finds incompressible (`stored.rs`), compresses the rest
//! on every thread, and writes the container itself (`xz.rs`:
//! one block per piece; `zstd.rs`: one frame per piece), so its output does not
//! depend on the thread count; see `pieces.rs`. Holes in a sparse input are not read.
//!
//! The streaming [`encoder`]:
//! - xz uses liblzma. With one thread it is the single-stream encoder (byte-identical to
//!   `xz -T1`); with more it is the multi-threaded encoder (`MtStreamBuilder`, byte-identical to
//!   `xz -T<n>`), which cuts the input into independent blocks of 3 × the dictionary size
//!   (24 MiB at preset 6) and is about 0.6 % larger. Linux initramfs must use
//!   [`XzCheck::Crc32`]: the kernel's xz decoder cannot verify CRC64 or SHA-256 checks.
//! - zstd uses the zstd crate, with a content checksum. `threads > 1` asks libzstd for worker
//!   threads; libzstd only has them when built with `ZSTD_MULTITHREAD` (the zstd crate's
//!   `zstdmt` feature, no extra dependency). Without it the encoder falls back to one thread;
//!   [`Encoder::threads`] says which happened.
//!
//! Not supported: gzip, bzip2, lz4, xz BCJ filters, xz presets with the "extreme" flag.

pub mod deflate;
mod pieces;
mod stored;
mod xz;
mod zstd;

use pieces::{Kind, Piece, Source, ZeroMemo};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use liblzma::stream::{Check, MtStreamBuilder};
use liblzma::write::XzEncoder;

/// Errors from setting up an encoder.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// liblzma refused the settings (for example not enough memory for the threads).
    #[error("cannot start the xz encoder (preset {preset}, {threads} threads)")]
    XzInit {
        /// The preset asked for.
        preset: u32,
        /// The thread count asked for.
        threads: u32,
        /// liblzma's reason.
        #[source]
        source: liblzma::stream::Error,
    },
    /// The xz preset is outside 0..=9.
    #[error("xz preset {preset} is out of range; hint: use 0 to 9 (6 is xz's default)")]
    XzPreset {
        /// The preset asked for.
        preset: u32,
    },
    /// A thread count of zero.
    #[error("compression thread count is 0; hint: use 1 or more")]
    ZeroThreads,
    /// libzstd refused to start.
    #[error("cannot start the zstd encoder (level {level})")]
    ZstdInit {
        /// The level asked for.
        level: i32,
        /// libzstd's reason.
        #[source]
        source: io::Error,
    },
    /// The zstd level is outside what libzstd accepts.
    #[error(
        "zstd level {level} is out of range; hint: use {min} to {max} (19 is the usual maximum)"
    )]
    ZstdLevel {
        /// The level asked for.
        level: i32,
        /// Lowest accepted level.
        min: i32,
        /// Highest accepted level.
        max: i32,
    },
}

/// Errors from [`compress_file`], naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CompressFileError {
    /// The compressor refused its settings.
    #[error("cannot compress into {path}")]
    Init {
        /// The output.
        path: PathBuf,
        /// Which setting was refused.
        #[source]
        source: CompressError,
    },
    /// Reading the input failed.
    #[error("cannot read {path}")]
    Read {
        /// The input.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The compressor failed on data it was given.
    #[error("cannot compress into {path}")]
    Encode {
        /// The output.
        path: PathBuf,
        /// libzstd's or liblzma's reason.
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write {path}")]
    Write {
        /// The output.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Integrity check stored in an xz stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XzCheck {
    /// CRC32: the only check the Linux initramfs decoder verifies.
    Crc32,
    /// CRC64: xz's default, for files decompressed in user space.
    Crc64,
}

/// What compression to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Pass bytes through unchanged.
    None,
    /// xz (LZMA2).
    Xz {
        /// Worker threads; 1 uses the single-threaded encoder.
        threads: u32,
        /// Preset 0..=9.
        preset: u32,
        /// Integrity check.
        check: XzCheck,
    },
    /// zstd.
    Zstd {
        /// Level, within `zstd::compression_level_range()` (1..=22 for positive levels).
        level: i32,
        /// Worker threads; 1 compresses on the calling thread.
        threads: u32,
    },
}

/// A compressing writer; see [`encoder`].
pub struct Encoder<W: Write> {
    inner: Inner<W>,
    threads: u32,
}

enum Inner<W: Write> {
    None(W),
    Xz(XzEncoder<W>),
    Zstd(::zstd::stream::write::Encoder<'static, W>),
}

/// Starts compressing into `w` with the settings in `c`.
pub fn encoder<W: Write>(w: W, c: &Compression) -> Result<Encoder<W>, CompressError> {
    match *c {
        Compression::None => Ok(Encoder {
            inner: Inner::None(w),
            threads: 1,
        }),
        Compression::Xz {
            threads,
            preset,
            check,
        } => xz(w, threads, preset, check),
        Compression::Zstd { level, threads } => zstd_encoder(w, level, threads),
    }
}

fn xz<W: Write>(
    w: W,
    threads: u32,
    preset: u32,
    check: XzCheck,
) -> Result<Encoder<W>, CompressError> {
    check_xz(preset, threads)?;
    let check = match check {
        XzCheck::Crc32 => Check::Crc32,
        XzCheck::Crc64 => Check::Crc64,
    };
    // Always the multi-threaded encoder, even on one thread: its stream layout (blocks of a
    // fixed size, sizes in each block header) does not depend on the thread count, so
    // `STRATA_JOBS=1` gives the bytes every core gives.
    let stream = MtStreamBuilder::new()
        .threads(threads)
        .preset(preset)
        .check(check)
        .encoder();
    let stream = stream.map_err(|source| CompressError::XzInit {
        preset,
        threads,
        source,
    })?;
    Ok(Encoder {
        inner: Inner::Xz(XzEncoder::new_stream(w, stream)),
        threads,
    })
}

/// Refuses an xz preset or thread count liblzma would refuse.
fn check_xz(preset: u32, threads: u32) -> Result<(), CompressError> {
    if preset > 9 {
        return Err(CompressError::XzPreset { preset });
    }
    if threads == 0 {
        return Err(CompressError::ZeroThreads);
    }
    Ok(())
}

/// Refuses a zstd level or thread count libzstd would refuse.
fn check_zstd(level: i32, threads: u32) -> Result<(), CompressError> {
    let range = ::zstd::compression_level_range();
    if !range.contains(&level) || level == 0 {
        let (min, max) = (*range.start(), *range.end());
        return Err(CompressError::ZstdLevel { level, min, max });
    }
    if threads == 0 {
        return Err(CompressError::ZeroThreads);
    }
    Ok(())
}

fn zstd_encoder<W: Write>(w: W, level: i32, threads: u32) -> Result<Encoder<W>, CompressError> {
    check_zstd(level, threads)?;
    let init = |source| CompressError::ZstdInit { level, source };
    let mut enc = ::zstd::stream::write::Encoder::new(w, level).map_err(init)?;
    enc.include_checksum(true).map_err(init)?;
    // Workers even for one thread: with one worker or more, libzstd's output does not depend
    // on how many (with none it writes another layout). Setting them fails with "parameter
    // out of bound" when libzstd was built without threads; the encoder then stays
    // single-threaded (reported through `Encoder::threads`).
    let mut used = 1;
    let workers = ::zstd::zstd_safe::CParameter::NbWorkers(threads);
    if enc.set_parameter(workers).is_ok() {
        used = threads;
    }
    Ok(Encoder {
        inner: Inner::Zstd(enc),
        threads: used,
    })
}

/// Read and write buffer of [`compress_file`]: the encoders work best on big writes.
const FILE_BUF: usize = 1 << 20;

/// Compresses the file `input` into `output` (created or truncated) and syncs it.
/// Returns the output size in bytes.
///
/// `stored` lists byte ranges `(offset, length)` of `input` that hold data compressed already
/// (squashfs images, xz or zstd streams): they, and every 64 KiB block that zstd level 1
/// cannot shrink by 2 % (`stored.rs`: the kernel, say), are kept as they are (LZMA2 uncompressed chunks;
/// zstd level 1 with long-distance matching, which stores incompressible blocks raw and only
/// finds long repeats) and only the rest is compressed, on the thread count of `c`. The output is
/// the same whatever that count (see `pieces.rs`, `xz.rs` and `zstd.rs` beside this module).
pub fn compress_file(
    input: &Path,
    output: &Path,
    c: &Compression,
    stored: &[(u64, u64)],
) -> Result<u64, CompressFileError> {
    compress_file_metered(input, output, c, stored, &())
}

/// [`compress_file`], telling `read` how many bytes of `input` have been read so far (the
/// build's progress: the total is the input's length).
pub fn compress_file_metered(
    input: &Path,
    output: &Path,
    c: &Compression,
    stored: &[(u64, u64)],
    read: &dyn crate::io::count::Meter,
) -> Result<u64, CompressFileError> {
    let read_err = |source| CompressFileError::Read {
        path: input.to_path_buf(),
        source,
    };
    let write_err = |source| CompressFileError::Write {
        path: output.to_path_buf(),
        source,
    };
    let init_err = |source| CompressFileError::Init {
        path: output.to_path_buf(),
        source,
    };
    let src = File::open(input).map_err(read_err)?;
    let mut dst = BufWriter::with_capacity(FILE_BUF, File::create(output).map_err(write_err)?);
    let job = Job {
        src: &src,
        input,
        output,
        stored,
        read,
    };
    match *c {
        Compression::None => copy(&src, &mut dst).map_err(read_err)?,
        Compression::Xz {
            threads,
            preset,
            check,
        } => {
            check_xz(preset, threads).map_err(init_err)?;
            let s = xz::Settings::new(preset, check).map_err(read_err)?;
            let per_thread = s.memory_per_thread().map_err(|e| job.encode_err(e))?;
            job.xz(&mut dst, threads, within_budget(threads, per_thread), s)?;
        }
        Compression::Zstd { level, threads } => {
            check_zstd(level, threads).map_err(init_err)?;
            let per_thread = zstd::memory_per_thread(level).map_err(|e| job.encode_err(e))?;
            job.zstd(&mut dst, threads, within_budget(threads, per_thread), level)?;
        }
    }
    let file = dst.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_data().map_err(write_err)?;
    Ok(file.metadata().map_err(write_err)?.len())
}

/// Memory the threads of one [`compress_file`] may hold together. Each holds an encoder, a
/// piece and its encoding: about 140 MiB at xz preset 6 or zstd level 19, so the wrappers
/// encode on one thread (lighter settings get more). Almost everything a wrapper reads is
/// stored, not compressed (the squashfs images, the probe's finds), so one thread writes a
/// `.raw.xz` as fast as two did (measured on the bench disk: 1.3–1.8 s either way) and the
/// build's peak drops by the second thread's 140 MiB. Uncut, a 16-core machine held 2 GiB
/// for one `.raw.xz`. The output does not depend on the thread count.
const ENCODER_BUDGET: u64 = 160 << 20;

/// `threads`, fewer if that many threads of `per_thread` bytes would exceed [`ENCODER_BUDGET`];
/// at least one.
fn within_budget(threads: u32, per_thread: u64) -> u32 {
    let fit = (ENCODER_BUDGET / per_thread.max(1)).max(1);
    threads.min(u32::try_from(fit).unwrap_or(u32::MAX)).max(1)
}

/// Copies `src` to `dst` unchanged.
fn copy(mut src: &File, dst: &mut impl Write) -> io::Result<()> {
    io::copy(&mut src, dst).map(|_| ())
}

/// One [`compress_file`] call: its input and where its stored ranges are.
struct Job<'a> {
    src: &'a File,
    input: &'a Path,
    output: &'a Path,
    stored: &'a [(u64, u64)],
    /// Told the length of each piece as it is written (the build's progress).
    read: &'a dyn crate::io::count::Meter,
}

impl Job<'_> {
    fn read_err(&self, source: io::Error) -> CompressFileError {
        CompressFileError::Read {
            path: self.input.to_path_buf(),
            source,
        }
    }

    fn write_err(&self, source: io::Error) -> CompressFileError {
        CompressFileError::Write {
            path: self.output.to_path_buf(),
            source,
        }
    }

    fn encode_err(&self, source: io::Error) -> CompressFileError {
        CompressFileError::Encode {
            path: self.output.to_path_buf(),
            source,
        }
    }

    /// The input's pieces, cut at `chunk`, and the input ready to read. The stored ones are
    /// the caller's ranges and what the probe finds, probed on `threads` threads.
    fn plan(
        &self,
        chunk: u64,
        threads: u32,
    ) -> Result<(Vec<Piece>, Source<'_>), CompressFileError> {
        let size = self.src.metadata().map_err(|e| self.read_err(e))?.len();
        let source = Source::new(self.src).map_err(|e| self.read_err(e))?;
        let stored =
            stored::probe(self.src, self.stored, threads as usize).map_err(|e| self.read_err(e))?;
        Ok((pieces::pieces(size, &stored, chunk), source))
    }

    /// The .xz stream: header, one block per piece, index and footer. The probe runs on
    /// `threads` threads, the encoders on `encoders` ([`within_budget`]).
    fn xz(
        &self,
        dst: &mut impl Write,
        threads: u32,
        encoders: u32,
        s: xz::Settings,
    ) -> Result<(), CompressFileError> {
        let (pieces, source) = self.plan(s.chunk().map_err(|e| self.encode_err(e))?, threads)?;
        let zeros = ZeroMemo::new();
        let encode = |p: &Piece| -> Result<Arc<xz::Block>, CompressFileError> {
            let data = source.read(p).map_err(|e| self.read_err(e))?;
            match (p.kind, data) {
                (Kind::Stored, Some(d)) => Ok(Arc::new(xz::stored_block(&d, &s))),
                (Kind::Packed, Some(d)) => xz::packed_block(&d, &s)
                    .map(Arc::new)
                    .map_err(|e| self.encode_err(e)),
                (_, None) => zeros.get(p.len, |z| {
                    xz::packed_block(z, &s).map_err(|e| self.encode_err(e))
                }),
            }
        };
        dst.write_all(&xz::stream_header(s.check))
            .map_err(|e| self.write_err(e))?;
        let mut records = Vec::with_capacity(pieces.len());
        pieces::run(&pieces, encoders as usize, encode, |p, b| {
            self.read.add(p.len);
            records.push((b.unpadded, b.uncompressed));
            dst.write_all(&b.bytes).map_err(|e| self.write_err(e))
        })?;
        dst.write_all(&xz::index_and_footer(&records, s.check))
            .map_err(|e| self.write_err(e))
    }

    /// Concatenated zstd frames, one per piece; threads as in [`Job::xz`].
    fn zstd(
        &self,
        dst: &mut impl Write,
        threads: u32,
        encoders: u32,
        level: i32,
    ) -> Result<(), CompressFileError> {
        let (pieces, source) = self.plan(ZSTD_CHUNK, threads)?;
        let zeros = ZeroMemo::new();
        let frames = zstd::Frames::new(level);
        let encode = |p: &Piece| -> Result<Arc<Vec<u8>>, CompressFileError> {
            let data = source.read(p).map_err(|e| self.read_err(e))?;
            match (p.kind, data) {
                (Kind::Stored, Some(d)) => frames
                    .deduped(&d)
                    .map(Arc::new)
                    .map_err(|e| self.encode_err(e)),
                (Kind::Packed, Some(d)) => frames
                    .packed(&d)
                    .map(Arc::new)
                    .map_err(|e| self.encode_err(e)),
                (_, None) => zeros.get(p.len, |z| frames.packed(z).map_err(|e| self.encode_err(e))),
            }
        };
        if pieces.is_empty() {
            // An empty file is one empty frame: `zstd -t` refuses a file with no frame.
            return dst
                .write_all(&frames.deduped(&[]).map_err(|e| self.encode_err(e))?)
                .map_err(|e| self.write_err(e));
        }
        pieces::run(&pieces, encoders as usize, encode, |p, f| {
            self.read.add(p.len);
            dst.write_all(&f).map_err(|e| self.write_err(e))
        })
    }
}

/// The uncompressed size of a full zstd piece: 4 × the 8 MiB window of level 19, the job size
/// `zstd -T` uses at that level.
const ZSTD_CHUNK: u64 = 32 << 20;

impl<W: Write> Encoder<W> {
    /// Threads actually compressing (1 when zstd threads are not available).
    pub fn threads(&self) -> u32 {
        self.threads
    }

    /// Ends the compressed stream, flushes, and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::None(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Inner::Xz(enc) => enc.finish(),
            Inner::Zstd(enc) => enc.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::None(w) => w.write(buf),
            Inner::Xz(enc) => enc.write(buf),
            Inner::Zstd(enc) => enc.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::None(w) => w.flush(),
            Inner::Xz(enc) => enc.flush(),
            Inner::Zstd(enc) => enc.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// The wrappers' settings get one encoder thread whatever the core count; settings that
    /// need less memory get more.
    #[test]
    fn the_encoder_budget_holds_one_thread_of_the_wrappers_settings() {
        let xz = xz::Settings::new(6, XzCheck::Crc64)
            .unwrap()
            .memory_per_thread()
            .unwrap();
        let zst = zstd::memory_per_thread(19).unwrap();
        for per_thread in [xz, zst] {
            assert!(per_thread > ENCODER_BUDGET / 2, "{per_thread}");
            assert_eq!(within_budget(64, per_thread), 1, "{per_thread}");
        }
        let light = xz::Settings::new(0, XzCheck::Crc64)
            .unwrap()
            .memory_per_thread()
            .unwrap();
        assert!(within_budget(64, light) > 1, "{light}");
        assert!(zstd::memory_per_thread(1).unwrap() < zst);
        assert_eq!(within_budget(8, u64::MAX), 1);
        assert_eq!(within_budget(8, 0), 8);
    }

    /// About 2 MiB of text-like, compressible but not trivial data.
    fn sample() -> Vec<u8> {
        let mut x: u32 = 12345;
        let words = [
            "kernel ",
            "initramfs ",
            "squashfs ",
            "strata ",
            "boot ",
            "\n",
            "0x1f ",
            "ext ",
        ];
        let mut out = Vec::with_capacity(2 << 20);
        while out.len() < 2 << 20 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.extend_from_slice(words[(x % 8) as usize].as_bytes());
            out.push((x >> 24) as u8);
        }
        out
    }

    fn compress(data: &[u8], c: &Compression, one_byte_writes: bool) -> Vec<u8> {
        let mut enc = encoder(Vec::new(), c).unwrap();
        if one_byte_writes {
            for chunk in data.chunks(1).take(10_000) {
                enc.write_all(chunk).unwrap();
            }
            enc.write_all(&data[10_000.min(data.len())..]).unwrap();
        } else {
            enc.write_all(data).unwrap();
        }
        enc.finish().unwrap()
    }

    /// Runs `tool args` with `input` on stdin; `None` (and a printed reason) if absent.
    fn pipe(tool: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
        if !crate::test_support::require_tool(tool) {
            return None;
        }
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out.stdout)
    }

    /// `xz -lvv` on a file holding `xz`.
    fn xz_list(xz: &[u8]) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.xz");
        std::fs::write(&path, xz).unwrap();
        let out = Command::new("xz").arg("-lvv").arg(&path).output().ok()?;
        assert!(out.status.success());
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The value of the first `key:` line of `xz -lvv` output that has one.
    fn field<'a>(listing: &'a str, key: &str) -> Option<&'a str> {
        listing
            .lines()
            .filter_map(|l| l.trim().strip_prefix(key).map(str::trim))
            .find(|v| !v.is_empty())
    }

    #[test]
    fn xz_output_decompresses_and_carries_the_check() {
        let data = sample();
        let cases = [
            (1, 6, XzCheck::Crc32, "CRC32"),
            (2, 0, XzCheck::Crc32, "CRC32"),
            (1, 0, XzCheck::Crc64, "CRC64"),
        ];
        for (threads, preset, check, name) in cases {
            let c = Compression::Xz {
                threads,
                preset,
                check,
            };
            let xz = compress(&data, &c, threads == 1);
            let Some(back) = pipe("xz", &["-dc"], &xz) else {
                return;
            };
            assert!(back == data, "xz -dc gave different bytes for {c:?}");
            let Some(listing) = xz_list(&xz) else { return };
            assert_eq!(field(&listing, "Check:"), Some(name), "{listing}");
            // Blocks follow the preset, whatever the thread count: preset 0's small dictionary
            // makes blocks of about 1 MiB, so 2 MiB needs several; preset 6's are 24 MiB.
            let blocks: usize = field(&listing, "Blocks:").unwrap().parse().unwrap();
            if preset == 0 {
                assert!(blocks >= 2, "preset 0 cuts blocks: {listing}");
            } else {
                assert_eq!(blocks, 1, "{listing}");
            }
        }
    }

    #[test]
    fn zstd_output_decompresses() {
        let data = sample();
        for (level, threads) in [(3, 1), (19, 2)] {
            let c = Compression::Zstd { level, threads };
            let enc = encoder(Vec::new(), &c).unwrap();
            println!(
                "zstd level {level}: {} thread(s) requested, {} used",
                threads,
                enc.threads()
            );
            let zst = compress(&data, &c, level == 3);
            let Some(back) = pipe("zstd", &["-dc"], &zst) else {
                return;
            };
            assert!(back == data, "zstd -dc gave different bytes for {c:?}");
            assert!(
                zst.len() < data.len() / 2,
                "{c:?} compressed to {}",
                zst.len()
            );
        }
    }

    #[test]
    fn output_is_deterministic_and_none_is_identity() {
        let data = sample();
        for c in [
            Compression::Xz {
                threads: 2,
                preset: 0,
                check: XzCheck::Crc32,
            },
            Compression::Zstd {
                level: 5,
                threads: 2,
            },
        ] {
            assert_eq!(
                compress(&data, &c, false),
                compress(&data, &c, true),
                "{c:?}"
            );
        }
        assert_eq!(compress(&data, &Compression::None, true), data);
    }

    /// The initramfs's encoders give the same bytes on one thread as on several, so a build's
    /// output does not depend on `STRATA_JOBS`.
    #[test]
    fn one_thread_writes_the_bytes_several_do() {
        let data = sample();
        for (one, three) in [
            (
                Compression::Xz {
                    threads: 1,
                    preset: 6,
                    check: XzCheck::Crc32,
                },
                Compression::Xz {
                    threads: 3,
                    preset: 6,
                    check: XzCheck::Crc32,
                },
            ),
            (
                Compression::Zstd {
                    level: 19,
                    threads: 1,
                },
                Compression::Zstd {
                    level: 19,
                    threads: 3,
                },
            ),
        ] {
            assert_eq!(
                compress(&data, &one, false),
                compress(&data, &three, false),
                "{one:?} and {three:?}"
            );
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let err = |c| {
            encoder(Vec::new(), &c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let xz = |threads, preset| Compression::Xz {
            threads,
            preset,
            check: XzCheck::Crc32,
        };
        assert!(err(xz(1, 10)).starts_with("xz preset 10 is out of range; hint:"));
        assert!(err(xz(0, 6)).starts_with("compression thread count is 0"));
        assert!(err(Compression::Zstd {
            level: 23,
            threads: 1
        })
        .starts_with("zstd level 23 is out of range"));
        assert!(err(Compression::Zstd {
            level: 0,
            threads: 1
        })
        .starts_with("zstd level 0 is out of range"));
        assert!(err(Compression::Zstd {
            level: 3,
            threads: 0
        })
        .starts_with("compression thread count is 0"));
    }
}

/// [`compress_file`] on the sparse test images of `io::sparse`.
#[cfg(test)]
mod file_tests {
    use super::*;
    use crate::io::sparse::testutil::{self, MIB};

    fn xz(threads: u32, check: XzCheck) -> Compression {
        Compression::Xz {
            threads,
            preset: 6,
            check,
        }
    }

    fn compress_small(c: &Compression) -> (tempfile::NamedTempFile, tempfile::TempDir, PathBuf) {
        let raw = testutil::small_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.c");
        let n = compress_file(raw.path(), &out, c, &[]).unwrap();
        assert_eq!(n, std::fs::metadata(&out).unwrap().len());
        (raw, dir, out)
    }

    /// Decompress with the command-line tool and compare with the input.
    fn judge(tool: &str, raw: &Path, out: &Path) {
        if !testutil::have(tool) {
            return;
        }
        testutil::run(tool, &["-t", &out.to_string_lossy()]);
        let back = std::process::Command::new(tool)
            .args(["-dc", &out.to_string_lossy()])
            .output()
            .unwrap();
        assert!(back.status.success());
        assert_eq!(back.stdout, testutil::bytes(raw));
    }

    #[test]
    fn xz_files_round_trip_with_both_checks_and_thread_counts() {
        for (threads, check, name) in [(2, XzCheck::Crc64, "CRC64"), (1, XzCheck::Crc32, "CRC32")] {
            let (raw, _dir, out) = compress_small(&xz(threads, check));
            judge("xz", raw.path(), &out);
            if testutil::have("xz") {
                let list = testutil::run("xz", &["-lvv", &out.to_string_lossy()]);
                assert!(String::from_utf8_lossy(&list.stdout).contains(name));
            }
        }
    }

    #[test]
    fn zstd_files_round_trip_single_and_multi_threaded() {
        for threads in [1, 2] {
            let (raw, _dir, out) = compress_small(&Compression::Zstd { level: 3, threads });
            judge("zstd", raw.path(), &out);
            assert!(std::fs::metadata(&out).unwrap().len() < 64 * MIB / 8);
        }
    }

    #[test]
    fn compressed_files_are_deterministic() {
        let zstd = |threads| Compression::Zstd { level: 3, threads };
        for c in [xz(2, XzCheck::Crc64), zstd(2), zstd(1)] {
            let (_raw, _d1, a) = compress_small(&c);
            let (_raw, _d2, b) = compress_small(&c);
            assert_eq!(testutil::bytes(&a), testutil::bytes(&b), "{c:?}");
        }
        // Pieces are cut at fixed sizes: the thread count does not show in the bytes.
        for (one, four) in [
            (zstd(1), zstd(4)),
            (xz(1, XzCheck::Crc64), xz(4, XzCheck::Crc64)),
        ] {
            let (_raw, _d1, a) = compress_small(&one);
            let (_raw, _d2, b) = compress_small(&four);
            assert_eq!(testutil::bytes(&a), testutil::bytes(&b), "{one:?}");
        }
    }

    /// The 2 GiB sparse image: holes are read as zeros and must come back as zeros.
    #[test]
    fn zstd_large_sparse_file_round_trips() {
        let raw = testutil::large_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.zst");
        compress_file(
            raw.path(),
            &out,
            &Compression::Zstd {
                level: 3,
                threads: 2,
            },
            &[],
        )
        .unwrap();
        if !testutil::have("zstd") {
            return;
        }
        // Decompress into cmp through a pipe: no 2 GiB file is written.
        let script = "zstd -dc \"$1\" | cmp - \"$2\"";
        let (out, raw) = (out.to_string_lossy(), raw.path().to_string_lossy());
        testutil::run("sh", &["-c", script, "sh", &out, &raw]);
    }

    /// About a minute on two cores: the holes cost nothing (an all-zero block is compressed
    /// once and reused), but the 24 MiB blocks around the 27 scattered data ranges are
    /// compressed whole, about 650 MB at preset 6.
    #[test]
    #[ignore]
    fn xz_large_sparse_file_round_trips() {
        let raw = testutil::large_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.xz");
        compress_file(raw.path(), &out, &xz(2, XzCheck::Crc64), &[]).unwrap();
        if testutil::have("xz") {
            testutil::run("xz", &["-t", &out.to_string_lossy()]);
            let list = testutil::run("xz", &["--robot", "-l", &out.to_string_lossy()]);
            let text = String::from_utf8_lossy(&list.stdout);
            assert!(text.contains(&(2048 * MIB).to_string()), "{text}");
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let raw = testutil::raw_image(MIB, &[], &[]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x");
        let zstd = |level| Compression::Zstd { level, threads: 1 };
        let e = compress_file(raw.path(), &out, &zstd(23), &[]).unwrap_err();
        assert!(
            matches!(
                &e,
                CompressFileError::Init {
                    source: CompressError::ZstdLevel { level: 23, .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&*out.to_string_lossy()), "{e}");
        let e = compress_file(raw.path(), &out, &xz(0, XzCheck::Crc64), &[]).unwrap_err();
        assert!(
            matches!(
                &e,
                CompressFileError::Init {
                    source: CompressError::ZeroThreads,
                    ..
                }
            ),
            "{e}"
        );
        let e = compress_file(&dir.path().join("missing"), &out, &zstd(3), &[]).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}

/// [`compress_file`] with stored ranges: random files (data, allocated zeros and holes) with
/// random stored ranges, judged by the liblzma and libzstd decoders and by the `xz` and `zstd`
/// command-line tools.
#[cfg(test)]
mod stored_tests {
    use super::*;
    use crate::io::sparse::testutil::{self, Rng, MIB};
    use std::io::Read;

    /// A random sparse file of up to 12 MiB and random stored ranges in it.
    fn case(seed: u64) -> (tempfile::NamedTempFile, Vec<(u64, u64)>) {
        let mut rng = Rng::new(seed);
        let size = 1 + rng.next_u64() % (12 * MIB);
        let mut extents = |n: u64, max: u64| -> Vec<(u64, u64)> {
            (0..n)
                .map(|_| (rng.next_u64() % size, 1 + rng.next_u64() % max))
                .map(|(off, len)| (off, len.min(size - off)))
                .collect()
        };
        let data = extents(6, 2 * MIB);
        let zeros = extents(2, MIB);
        let stored = extents(5, 3 * MIB);
        (testutil::raw_image(size, &data, &zeros), stored)
    }

    fn compress(raw: &Path, c: &Compression, stored: &[(u64, u64)]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let n = compress_file(raw, &out, c, stored).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(n, bytes.len() as u64);
        bytes
    }

    /// Decodes with the library decoder (which checks every CRC and checksum).
    fn decode(c: &Compression, bytes: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        match c {
            Compression::Xz { .. } => {
                liblzma::read::XzDecoder::new(bytes)
                    .read_to_end(&mut back)
                    .unwrap();
            }
            Compression::Zstd { .. } => back = ::zstd::stream::decode_all(bytes).unwrap(),
            Compression::None => back = bytes.to_vec(),
        }
        back
    }

    /// `tool -t`, then `tool -dc` compared with `raw`.
    fn cli_judge(tool: &str, bytes: &[u8], raw: &Path) {
        assert!(testutil::have(tool), "{tool} is needed to judge");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        std::fs::write(&file, bytes).unwrap();
        let file = file.to_string_lossy().into_owned();
        testutil::run(tool, &["-t", &file]);
        let script = "\"$1\" -dc \"$2\" | cmp - \"$3\"";
        let raw = raw.to_string_lossy();
        testutil::run("sh", &["-c", script, "sh", tool, &file, &raw]);
    }

    fn settings() -> [Compression; 3] {
        [
            // Preset 0: 256 KiB dictionary, 768 KiB pieces, so files hold many blocks.
            Compression::Xz {
                threads: 1,
                preset: 0,
                check: XzCheck::Crc64,
            },
            Compression::Xz {
                threads: 1,
                preset: 1,
                check: XzCheck::Crc32,
            },
            Compression::Zstd {
                level: 3,
                threads: 1,
            },
        ]
    }

    fn with_threads(c: &Compression, n: u32) -> Compression {
        match *c {
            Compression::Xz { preset, check, .. } => Compression::Xz {
                threads: n,
                preset,
                check,
            },
            Compression::Zstd { level, .. } => Compression::Zstd { level, threads: n },
            Compression::None => Compression::None,
        }
    }

    #[test]
    fn random_files_round_trip_identically_on_one_and_three_threads() {
        for seed in 1..=6 {
            let (raw, stored) = case(seed);
            let want = testutil::bytes(raw.path());
            for c in settings() {
                let one = compress(raw.path(), &c, &stored);
                let three = compress(raw.path(), &with_threads(&c, 3), &stored);
                assert!(
                    one == three,
                    "seed {seed} {c:?}: thread count changed the bytes"
                );
                assert!(decode(&c, &one) == want, "seed {seed} {c:?}");
                if seed <= 2 {
                    let tool = if matches!(c, Compression::Zstd { .. }) {
                        "zstd"
                    } else {
                        "xz"
                    };
                    cli_judge(tool, &one, raw.path());
                }
            }
        }
    }

    /// xz: compressible data in a stored range costs its full size; outside, it shrinks.
    /// (zstd's stored pieces still find long repeats: see `zstd.rs`.)
    #[test]
    fn stored_ranges_are_not_compressed() {
        let raw = tempfile::NamedTempFile::new().unwrap();
        let text: Vec<u8> = b"strata stores what it compressed already. "
            .iter()
            .copied()
            .cycle()
            .take(4 * MIB as usize)
            .collect();
        std::fs::write(raw.path(), &text).unwrap();
        for c in settings()
            .into_iter()
            .filter(|c| matches!(c, Compression::Xz { .. }))
        {
            let plain = compress(raw.path(), &c, &[]);
            let stored = compress(raw.path(), &c, &[(MIB, 2 * MIB)]);
            assert!(plain.len() < 64 << 10, "{c:?}: {}", plain.len());
            let overhead = stored.len() as u64 - 2 * MIB;
            assert!(overhead < 64 << 10, "{c:?}: {} bytes", stored.len());
            assert!(decode(&c, &stored) == text, "{c:?}");
        }
    }

    /// Noise nobody named (a kernel image, say) is found by the probe and stored: the zstd
    /// output cuts a frame of its own around it, and both decoders give the input back.
    #[test]
    fn incompressible_data_nobody_named_is_stored() {
        let raw = tempfile::NamedTempFile::new().unwrap();
        let text: Vec<u8> = b"text around a kernel. "
            .iter()
            .copied()
            .cycle()
            .take(MIB as usize)
            .collect();
        let mut rng = Rng::new(11);
        let noise: Vec<u8> = (0..MIB).map(|_| rng.next_u64() as u8).collect();
        let data = [&text[..], &noise[..], &text[..]].concat();
        std::fs::write(raw.path(), &data).unwrap();
        let zstd = Compression::Zstd {
            level: 3,
            threads: 2,
        };
        let out = compress(raw.path(), &zstd, &[]);
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let n = ::zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            frames.push(n);
            rest = &rest[n..];
        }
        assert_eq!(frames.len(), 3, "packed, stored, packed: {frames:?}");
        assert!(frames[1] as u64 >= MIB, "{frames:?}");
        assert!(decode(&zstd, &out) == data);
        cli_judge("zstd", &out, raw.path());
        let xz = settings()[1];
        let out = compress(raw.path(), &xz, &[]);
        assert!(decode(&xz, &out) == data);
        cli_judge("xz", &out, raw.path());
    }

    /// `xz -l` sees one block per piece with sizes in the headers, and the empty file works.
    #[test]
    fn xz_lists_the_blocks_and_empty_files_work() {
        let (raw, stored) = case(7);
        let c = &settings()[0];
        let xz = compress(raw.path(), c, &stored);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.xz");
        std::fs::write(&file, &xz).unwrap();
        assert!(testutil::have("xz"), "xz is needed to judge");
        let list = testutil::run("xz", &["--robot", "-lvv", &file.to_string_lossy()]);
        let text = String::from_utf8_lossy(&list.stdout);
        let size = std::fs::metadata(raw.path()).unwrap().len();
        let blocks = text.lines().filter(|l| l.starts_with("block\t")).count();
        assert!(blocks as u64 >= size / (768 << 10), "{text}");
        assert!(text.contains(&format!("\t{size}\t")), "{text}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        for c in settings() {
            let bytes = compress(empty.path(), &c, &[(0, 10)]);
            assert!(decode(&c, &bytes).is_empty(), "{c:?}");
            let tool = if matches!(c, Compression::Zstd { .. }) {
                "zstd"
            } else {
                "xz"
            };
            cli_judge(tool, &bytes, empty.path());
        }
    }
}
