//! sha256, streamed: of a file, of a reader, and of whatever passes through a writer.
//!
//! The one implementation behind the manifest's artefact sums, the OVA manifest, the kernel
//! cache keys, the layer probes and the OCI blob digests.
//!
//! Files whose digest is already known (a step cache entry, verified when it was found, and
//! the outputs linked to it) are [`remember`]ed, so [`file_sha256`] does not read hundreds of
//! megabytes again to write the manifest of a build that changed nothing. A remembered digest
//! is tied to the file's inode, size and modification time: a file written since is hashed
//! again.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// What identifies a file's contents for [`remember`]: (device, inode) -> (size, mtime in ns).
type Known = HashMap<(u64, u64), (u64, i128, String)>;

static KNOWN: Mutex<Option<Known>> = Mutex::new(None);

/// The (device, inode) key and the (size, mtime ns) a remembered digest is tied to.
fn identity(meta: &std::fs::Metadata) -> ((u64, u64), (u64, i128)) {
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    ((meta.dev(), meta.ino()), (meta.len(), mtime))
}

/// Records that the file at `path`, as it is now, hashes to `sha256` (hex). Its other names
/// (hard links, a rename) share the record; a write to it since voids it.
pub fn remember(path: &Path, sha256: &str) -> io::Result<()> {
    let (inode, (size, mtime)) = identity(&std::fs::metadata(path)?);
    let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    known
        .get_or_insert_with(HashMap::new)
        .insert(inode, (size, mtime, sha256.to_string()));
    Ok(())
}

/// The remembered digest of the file at `path`, if it has not changed since.
pub fn known_sha256(path: &Path) -> Option<String> {
    let (inode, (size, mtime)) = identity(&std::fs::metadata(path).ok()?);
    let known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
    match known.as_ref()?.get(&inode) {
        Some((s, m, sha)) if *s == size && *m == mtime => Some(sha.clone()),
        _ => None,
    }
}

/// The hex sha256 of a file, read in 1 MiB chunks (or [`remember`]ed).
pub fn file_sha256(path: &Path) -> io::Result<String> {
    if let Some(sha) = known_sha256(path) {
        return Ok(sha);
    }
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
    fn a_remembered_digest_holds_until_the_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        remember(&path, "not-the-real-digest").unwrap();
        assert_eq!(file_sha256(&path).unwrap(), "not-the-real-digest");
        let link = dir.path().join("link");
        std::fs::hard_link(&path, &link).unwrap();
        assert_eq!(known_sha256(&link).as_deref(), Some("not-the-real-digest"));
        std::fs::write(&path, b"abcd").unwrap();
        assert_eq!(known_sha256(&path), None, "a different size voids it");
        assert_ne!(file_sha256(&path).unwrap(), "not-the-real-digest");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = file_sha256(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
