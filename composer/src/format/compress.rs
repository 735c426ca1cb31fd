//! Compressed wrappers around a finished artefact file: `.xz` and `.zst`.
//!
//! Formats are written first and compressed afterwards, so every format can be shipped
//! compressed the same way (AWS takes `raw.zst`, Azure `vhd.zst`, ...).
//!
//! - xz: liblzma at preset 6. With more than one thread, the multi-threaded encoder
//!   (`MtStreamBuilder`, byte-identical to `xz -T<n>`: the input is cut into blocks of
//!   3 × the dictionary, 24 MiB); with one thread the single-stream encoder (byte-identical
//!   to `xz -T1`). Integrity check CRC64 by default (what `xz` writes), CRC32 selectable.
//! - zstd: libzstd with a content checksum. Threads > 1 use libzstd's worker threads (the
//!   zstd crate's `zstdmt` feature, built into the bundled libzstd). libzstd's output
//!   with workers does not depend on their number, but differs from its output without
//!   workers, so 1 thread and 2 threads give different (both valid) files.
//!
//! Both read the input in 1 MiB pieces and never hold it whole. Holes in a sparse input are
//! read (and compressed) as zeros: neither format can say "hole".
//!
//! Not supported: gzip (see `gcp`), xz presets other than 6, BCJ filters, zstd dictionaries.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use liblzma::stream::{Check, MtStreamBuilder, Stream};
use liblzma::write::XzEncoder;

/// xz preset: xz's default, a good ratio at moderate speed.
const XZ_PRESET: u32 = 6;
/// Read and write buffer size.
const BUF: usize = 1 << 20;

/// Errors from wrapping a file.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    /// The compressor refused its settings.
    #[error(
        "cannot start the {what} encoder for {path}; hint: check threads (1 or more) and the level"
    )]
    Init {
        /// "xz" or "zstd".
        what: &'static str,
        /// The output.
        path: PathBuf,
        /// The compressor's reason.
        #[source]
        source: io::Error,
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
    /// A thread count of zero.
    #[error("compression thread count is 0 for {path}; hint: use 1 or more")]
    ZeroThreads {
        /// The output.
        path: PathBuf,
    },
    /// The zstd level is outside what libzstd accepts.
    #[error("zstd level {level} is out of range; hint: use 1 to 22 (3 is fast, 19 is small)")]
    ZstdLevel {
        /// The level asked for.
        level: i32,
    },
}

/// Integrity check stored in an `.xz` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XzCheck {
    /// CRC32: what the Linux kernel's xz decoder can verify.
    Crc32,
    /// CRC64: what `xz` writes by default.
    #[default]
    Crc64,
}

/// Which wrapper, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    /// `.xz` at preset 6.
    Xz {
        /// Encoder threads (1 = single-stream encoder).
        threads: u32,
        /// Integrity check.
        check: XzCheck,
    },
    /// `.zst` with a content checksum.
    Zstd {
        /// Compression level, 1 to 22.
        level: i32,
        /// Worker threads (1 = none).
        threads: u32,
    },
}

impl Wrapper {
    /// File name extension of the wrapped file, without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            Wrapper::Xz { .. } => "xz",
            Wrapper::Zstd { .. } => "zst",
        }
    }
}

/// Compress `input` into `output` (created or truncated). Returns the output size in bytes.
pub fn wrap(input: &Path, output: &Path, w: &Wrapper) -> Result<u64, WrapError> {
    let threads = match *w {
        Wrapper::Xz { threads, .. } | Wrapper::Zstd { threads, .. } => threads,
    };
    if threads == 0 {
        return Err(WrapError::ZeroThreads {
            path: output.to_path_buf(),
        });
    }
    let read_err = |source| WrapError::Read {
        path: input.to_path_buf(),
        source,
    };
    let write_err = |source| WrapError::Write {
        path: output.to_path_buf(),
        source,
    };
    let mut src = File::open(input).map_err(read_err)?;
    let dst = BufWriter::with_capacity(BUF, File::create(output).map_err(write_err)?);
    let dst = match *w {
        Wrapper::Xz { threads, check } => {
            let mut enc = XzEncoder::new_stream(
                dst,
                xz_stream(threads, check).map_err(|source| init_err("xz", output, source))?,
            );
            pump(&mut src, &mut enc).map_err(|e| e.with_paths(input, output))?;
            enc.finish().map_err(write_err)?
        }
        Wrapper::Zstd { level, threads } => {
            let mut enc = zstd_encoder(dst, level, threads, output)?;
            pump(&mut src, &mut enc).map_err(|e| e.with_paths(input, output))?;
            enc.finish().map_err(write_err)?
        }
    };
    let file = dst.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_data().map_err(write_err)?;
    Ok(file.metadata().map_err(write_err)?.len())
}

/// An xz stream encoder: single-stream for one thread, multi-threaded otherwise.
fn xz_stream(threads: u32, check: XzCheck) -> io::Result<Stream> {
    let check = match check {
        XzCheck::Crc32 => Check::Crc32,
        XzCheck::Crc64 => Check::Crc64,
    };
    let stream = if threads == 1 {
        Stream::new_easy_encoder(XZ_PRESET, check)
    } else {
        MtStreamBuilder::new()
            .threads(threads)
            .preset(XZ_PRESET)
            .check(check)
            .encoder()
    };
    stream.map_err(io::Error::other)
}

/// A zstd encoder with a content checksum and `threads` workers when more than one.
fn zstd_encoder<W: Write>(
    dst: W,
    level: i32,
    threads: u32,
    output: &Path,
) -> Result<zstd::Encoder<'static, W>, WrapError> {
    if !(1..=22).contains(&level) {
        return Err(WrapError::ZstdLevel { level });
    }
    let mut enc =
        zstd::Encoder::new(dst, level).map_err(|source| init_err("zstd", output, source))?;
    enc.include_checksum(true)
        .map_err(|source| init_err("zstd", output, source))?;
    if threads > 1 {
        enc.multithread(threads)
            .map_err(|source| init_err("zstd", output, source))?;
    }
    Ok(enc)
}

fn init_err(what: &'static str, output: &Path, source: io::Error) -> WrapError {
    WrapError::Init {
        what,
        path: output.to_path_buf(),
        source,
    }
}

/// Which side of the copy failed.
enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

impl PumpError {
    fn with_paths(self, input: &Path, output: &Path) -> WrapError {
        match self {
            PumpError::Read(source) => WrapError::Read {
                path: input.to_path_buf(),
                source,
            },
            PumpError::Write(source) => WrapError::Write {
                path: output.to_path_buf(),
                source,
            },
        }
    }
}

/// Copy all of `src` into `dst` in 1 MiB pieces (the encoders work best on big writes).
fn pump(src: &mut impl Read, dst: &mut impl Write) -> Result<(), PumpError> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Read(e)),
        };
        dst.write_all(&buf[..n]).map_err(PumpError::Write)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sparse::testutil::{self, MIB};

    fn wrap_small(w: &Wrapper) -> (tempfile::NamedTempFile, tempfile::TempDir, PathBuf) {
        let raw = testutil::small_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(format!("img.{}", w.extension()));
        let n = wrap(raw.path(), &out, w).unwrap();
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
    fn xz_round_trips_with_both_checks_and_thread_counts() {
        for (threads, check, name) in [(2, XzCheck::Crc64, "CRC64"), (1, XzCheck::Crc32, "CRC32")] {
            let (raw, _dir, out) = wrap_small(&Wrapper::Xz { threads, check });
            judge("xz", raw.path(), &out);
            if testutil::have("xz") {
                let list = testutil::run("xz", &["-lvv", &out.to_string_lossy()]);
                assert!(String::from_utf8_lossy(&list.stdout).contains(name));
            }
        }
    }

    #[test]
    fn zstd_round_trips_single_and_multi_threaded() {
        for threads in [1, 2] {
            let (raw, _dir, out) = wrap_small(&Wrapper::Zstd { level: 3, threads });
            judge("zstd", raw.path(), &out);
            assert!(std::fs::metadata(&out).unwrap().len() < 64 * MIB / 8);
        }
    }

    #[test]
    fn output_is_deterministic() {
        for w in [
            Wrapper::Xz {
                threads: 2,
                check: XzCheck::Crc64,
            },
            Wrapper::Zstd {
                level: 3,
                threads: 2,
            },
            Wrapper::Zstd {
                level: 3,
                threads: 1,
            },
        ] {
            let (_raw, _d1, a) = wrap_small(&w);
            let (_raw, _d2, b) = wrap_small(&w);
            assert_eq!(testutil::bytes(&a), testutil::bytes(&b), "{w:?}");
        }
        // libzstd's worker output does not depend on how many workers there are.
        let (_raw, _d1, a) = wrap_small(&Wrapper::Zstd {
            level: 3,
            threads: 2,
        });
        let (_raw, _d2, b) = wrap_small(&Wrapper::Zstd {
            level: 3,
            threads: 4,
        });
        assert_eq!(testutil::bytes(&a), testutil::bytes(&b));
    }

    /// The 2 GiB sparse image: holes are read as zeros and must come back as zeros.
    fn large_round_trip(w: &Wrapper, tool: &str) {
        let raw = testutil::large_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(format!("big.{}", w.extension()));
        wrap(raw.path(), &out, w).unwrap();
        if !testutil::have(tool) {
            return;
        }
        // Decompress into cmp through a pipe: no 2 GiB file is written.
        let script = format!("{tool} -dc \"$1\" | cmp - \"$2\"");
        let (out, raw) = (out.to_string_lossy(), raw.path().to_string_lossy());
        testutil::run("sh", &["-c", &script, "sh", &out, &raw]);
    }

    #[test]
    fn zstd_large_sparse_image_round_trips() {
        large_round_trip(
            &Wrapper::Zstd {
                level: 3,
                threads: 2,
            },
            "zstd",
        );
    }

    /// About a minute on two cores: xz compresses the 2 GiB of holes as zeros.
    #[test]
    #[ignore]
    fn xz_large_sparse_image_round_trips() {
        let raw = testutil::large_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.xz");
        wrap(
            raw.path(),
            &out,
            &Wrapper::Xz {
                threads: 2,
                check: XzCheck::Crc64,
            },
        )
        .unwrap();
        if testutil::have("xz") {
            testutil::run("xz", &["-t", &out.to_string_lossy()]);
            let list = testutil::run("xz", &["--robot", "-l", &out.to_string_lossy()]);
            let text = String::from_utf8_lossy(&list.stdout);
            assert!(text.contains(&(2048 * MIB).to_string()), "{text}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let raw = testutil::raw_image(MIB, &[], &[]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x");
        let e = wrap(
            raw.path(),
            &out,
            &Wrapper::Zstd {
                level: 23,
                threads: 1,
            },
        )
        .unwrap_err();
        assert!(matches!(e, WrapError::ZstdLevel { level: 23 }), "{e}");
        let e = wrap(
            raw.path(),
            &out,
            &Wrapper::Xz {
                threads: 0,
                check: XzCheck::Crc64,
            },
        )
        .unwrap_err();
        assert!(matches!(e, WrapError::ZeroThreads { .. }), "{e}");
        let e = wrap(
            &dir.path().join("missing"),
            &out,
            &Wrapper::Zstd {
                level: 3,
                threads: 1,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
