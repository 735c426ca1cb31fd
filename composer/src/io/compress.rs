//! Streaming compressors for finished artefacts (initramfs, disk images): xz and zstd.
//!
//! [`encoder`] wraps any [`Write`] in an [`Encoder`] that compresses what is written to it and
//! gives the inner writer back from [`Encoder::finish`]. [`compress_file`] compresses a whole
//! finished file with it (the `.xz` and `.zst` output wrappers), reading 1 MiB at a time so the
//! input is never held whole; holes in a sparse input are read (and compressed) as zeros. Output is deterministic for given
//! settings (threads included: liblzma and zstd split work at fixed block boundaries).
//!
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

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use liblzma::stream::{Check, MtStreamBuilder, Stream};
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
    Zstd(zstd::stream::write::Encoder<'static, W>),
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
    if preset > 9 {
        return Err(CompressError::XzPreset { preset });
    }
    if threads == 0 {
        return Err(CompressError::ZeroThreads);
    }
    let check = match check {
        XzCheck::Crc32 => Check::Crc32,
        XzCheck::Crc64 => Check::Crc64,
    };
    let stream = if threads == 1 {
        Stream::new_easy_encoder(preset, check)
    } else {
        MtStreamBuilder::new()
            .threads(threads)
            .preset(preset)
            .check(check)
            .encoder()
    };
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

fn zstd_encoder<W: Write>(w: W, level: i32, threads: u32) -> Result<Encoder<W>, CompressError> {
    let range = zstd::compression_level_range();
    if !range.contains(&level) || level == 0 {
        let (min, max) = (*range.start(), *range.end());
        return Err(CompressError::ZstdLevel { level, min, max });
    }
    if threads == 0 {
        return Err(CompressError::ZeroThreads);
    }
    let init = |source| CompressError::ZstdInit { level, source };
    let mut enc = zstd::stream::write::Encoder::new(w, level).map_err(init)?;
    enc.include_checksum(true).map_err(init)?;
    let mut used = 1;
    if threads > 1 {
        // Fails with "parameter out of bound" when libzstd was built without threads; the
        // encoder then stays single-threaded (reported through `Encoder::threads`).
        let workers = zstd::zstd_safe::CParameter::NbWorkers(threads);
        if enc.set_parameter(workers).is_ok() {
            used = threads;
        }
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
pub fn compress_file(
    input: &Path,
    output: &Path,
    c: &Compression,
) -> Result<u64, CompressFileError> {
    compress_file_metered(input, output, c, &())
}

/// [`compress_file`], telling `read` how many bytes of `input` have been read so far (the
/// build's progress: the total is the input's length).
pub fn compress_file_metered(
    input: &Path,
    output: &Path,
    c: &Compression,
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
    let mut src = crate::io::count::Counted::new(File::open(input).map_err(read_err)?, read);
    let dst = BufWriter::with_capacity(FILE_BUF, File::create(output).map_err(write_err)?);
    let mut enc = encoder(dst, c).map_err(|source| CompressFileError::Init {
        path: output.to_path_buf(),
        source,
    })?;
    let mut buf = vec![0u8; FILE_BUF];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        enc.write_all(&buf[..n]).map_err(write_err)?;
    }
    let dst = enc.finish().map_err(write_err)?;
    let file = dst.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_data().map_err(write_err)?;
    Ok(file.metadata().map_err(write_err)?.len())
}

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
            // Preset 0 has a 256 KiB dictionary, thus 768 KiB blocks: 2 MiB needs several.
            let blocks: usize = field(&listing, "Blocks:").unwrap().parse().unwrap();
            if threads == 1 {
                assert_eq!(blocks, 1, "{listing}");
            } else {
                assert!(
                    blocks >= 2,
                    "the multi-threaded encoder makes blocks: {listing}"
                );
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
        let n = compress_file(raw.path(), &out, c).unwrap();
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
        // libzstd's worker output does not depend on how many workers there are.
        let (_raw, _d1, a) = compress_small(&zstd(2));
        let (_raw, _d2, b) = compress_small(&zstd(4));
        assert_eq!(testutil::bytes(&a), testutil::bytes(&b));
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

    /// About a minute on two cores: xz compresses the 2 GiB of holes as zeros.
    #[test]
    #[ignore]
    fn xz_large_sparse_file_round_trips() {
        let raw = testutil::large_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.xz");
        compress_file(raw.path(), &out, &xz(2, XzCheck::Crc64)).unwrap();
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
        let e = compress_file(raw.path(), &out, &zstd(23)).unwrap_err();
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
        let e = compress_file(raw.path(), &out, &xz(0, XzCheck::Crc64)).unwrap_err();
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
        let e = compress_file(&dir.path().join("missing"), &out, &zstd(3)).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
