//! Decompression, by magic bytes or by a name the caller trusts: gzip, xz and zstd.
//!
//! [`sniff`] reads the first bytes of a stream, names the compression they announce and gives
//! back a reader of the decompressed bytes (the sniffed bytes are not lost: they are chained in
//! front of the rest). [`open`] does that for a file. [`decoder`] wraps a stream whose format
//! the caller already knows (a `.deb` member's suffix, a module's `.ko.xz`).
//!
//! - gzip: multi-member, as `gzip -d` reads it (OCI layers, GCE's `disk.raw` tarball);
//! - xz: concatenated streams, as `xz -d` reads them; [`xz_threaded`] decodes the blocks of a
//!   multi-block stream on several threads (dpkg's `data.tar.xz`), for one stream only;
//! - zstd: every frame.
//!
//! bzip2 is recognised, to name it in errors, but not decoded: there is no decoder among our
//! dependencies. Callers that refuse a format (bzip2 everywhere, gzip for kernel modules) say so
//! themselves, with their own hint.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// Memory the threaded xz decoder may use; it runs fewer threads when more would need more
/// (one at least). dpkg's blocks are 24 MiB, so a thread needs about 40 MiB and three fit.
/// The kernel package is decoded beside the squashfs step, inside the build's 512 MiB.
const XZ_THREAD_MEMLIMIT: u64 = 128 << 20;

/// Bytes [`sniff`] looks at: the longest magic (xz) is 6.
const MAGIC_LEN: usize = 6;

/// A compression format, as its magic bytes announce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No known magic: the bytes are taken as they are.
    Plain,
    /// `1f 8b`.
    Gzip,
    /// `fd 37 7a 58 5a 00`.
    Xz,
    /// `28 b5 2f fd`.
    Zstd,
    /// `BZh`: recognised, never decoded.
    Bzip2,
}

impl Format {
    /// The format the first bytes of a stream announce.
    pub fn of_magic(head: &[u8]) -> Format {
        match head {
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Format::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Format::Zstd,
            [0x1f, 0x8b, ..] => Format::Gzip,
            [b'B', b'Z', b'h', ..] => Format::Bzip2,
            _ => Format::Plain,
        }
    }

    /// The name users know it by, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "uncompressed",
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Bzip2 => "bzip2",
        }
    }
}

/// Reads the magic bytes of `r` and returns its format with a reader of the decompressed
/// bytes. A [`Format::Bzip2`] stream is an [`io::ErrorKind::Unsupported`] error; callers
/// that want their own message check [`Format::of_magic`] first or match the kind.
pub fn sniff<'a>(mut r: impl Read + 'a) -> io::Result<(Format, Box<dyn Read + 'a>)> {
    let mut head = [0u8; MAGIC_LEN];
    let got = super::read_up_to(&mut r, &mut head)?;
    let format = Format::of_magic(&head[..got]);
    let whole = io::Cursor::new(head).take(got as u64).chain(r);
    Ok((format, decoder(format, whole)?))
}

/// [`sniff`] on the file at `path`, read through a 1 MiB buffer.
pub fn open(path: &Path) -> io::Result<(Format, Box<dyn Read>)> {
    sniff(BufReader::with_capacity(1 << 20, File::open(path)?))
}

/// A reader of the decompressed bytes of `r`, known to be in `format`.
pub fn decoder<'a>(format: Format, r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match format {
        Format::Plain => Box::new(r),
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Format::Bzip2 => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "bzip2 is not supported; hint: recompress it with xz or zstd",
            ))
        }
    })
}

/// An xz decoder that decodes independent blocks on up to 8 threads (fewer when they would
/// need more than 512 MiB). It reads a single stream, unlike [`decoder`].
pub fn xz_threaded<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let threads = crate::par::jobs_u32().min(8);
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(XZ_THREAD_MEMLIMIT)
        .memlimit_stop(u64::MAX)
        .decoder()
        .map_err(io::Error::other)?;
    Ok(Box::new(liblzma::read::XzDecoder::new_stream(r, stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decoded(input: &[u8]) -> (Format, Vec<u8>) {
        let (format, mut r) = sniff(input).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        (format, out)
    }

    #[test]
    fn every_format_is_recognised_and_decoded() {
        let data = sample();
        let cases = [
            (gzip(&data), Format::Gzip),
            (liblzma::encode_all(&data[..], 1).unwrap(), Format::Xz),
            (zstd::encode_all(&data[..], 1).unwrap(), Format::Zstd),
            (data.clone(), Format::Plain),
        ];
        for (input, want) in cases {
            assert_eq!(decoded(&input), (want, data.clone()), "{want:?}");
        }
    }

    #[test]
    fn concatenated_members_and_streams_are_read_whole() {
        let (a, b) = (b"first ".to_vec(), b"second".to_vec());
        let mut gz = gzip(&a);
        gz.extend(gzip(&b));
        assert_eq!(decoded(&gz).1, b"first second");
        let mut xz = liblzma::encode_all(&a[..], 1).unwrap();
        xz.extend(liblzma::encode_all(&b[..], 1).unwrap());
        assert_eq!(decoded(&xz).1, b"first second");
    }

    #[test]
    fn short_inputs_pass_through_and_bzip2_is_refused() {
        for short in [&b""[..], b"a", b"\x1f", b"\xfd7zX"] {
            assert_eq!(decoded(short), (Format::Plain, short.to_vec()));
        }
        let e = sniff(&b"BZh91AY&SY"[..]).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("bzip2"), "{e}");
    }

    #[test]
    fn the_threaded_xz_decoder_reads_multi_block_streams() {
        let data = sample();
        let mut enc = crate::io::compress::encoder(
            Vec::new(),
            &crate::io::compress::Compression::Xz {
                threads: 2,
                preset: 0,
                check: crate::io::compress::XzCheck::Crc64,
            },
        )
        .unwrap();
        enc.write_all(&data).unwrap();
        let xz = enc.finish().unwrap();
        let mut out = Vec::new();
        xz_threaded(&xz[..]).unwrap().read_to_end(&mut out).unwrap();
        assert!(out == data);
    }
}
