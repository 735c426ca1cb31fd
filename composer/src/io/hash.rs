//! sha256, streamed: of a file, of a reader, and of whatever passes through a writer.
//!
//! The one implementation behind the manifest's artefact sums, the OVA manifest, the kernel
//! cache keys, the layer probes and the OCI blob digests.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::Path;

/// The hex sha256 of a file, read in 1 MiB chunks.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    reader_sha256(&mut std::fs::File::open(path)?).map(|(hex, _)| hex)
}

/// The hex sha256 of everything `reader` yields, and how many bytes that was.
pub fn reader_sha256(reader: &mut impl Read) -> io::Result<(String, u64)> {
    let mut w = HashWriter::new(io::sink());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
    }
    Ok((w.sha256_hex(), w.written()))
}

/// The hex sha256 of bytes.
pub fn bytes_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A writer that hashes everything written through it, so a file is hashed while it is
/// written instead of read back.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
}

impl<W> HashWriter<W> {
    /// The hex sha256 of what was written so far.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives back the inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc"), from FIPS 180-2 appendix B.1.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn every_form_gives_the_published_digest() {
        assert_eq!(bytes_sha256(b"abc"), ABC);
        assert_eq!(
            reader_sha256(&mut &b"abc"[..]).unwrap(),
            (ABC.to_string(), 3)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(file_sha256(&path).unwrap(), ABC);
        let mut w = HashWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        assert_eq!((w.sha256_hex(), w.written()), (ABC.to_string(), 3));
        assert_eq!(w.into_inner(), b"abc");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = file_sha256(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
