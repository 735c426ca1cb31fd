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

/// The hex sha256 of a file (or [`remember`]ed): its data read in 1 MiB chunks, its holes
/// hashed as zeros without being read ([`file_digests`]).
pub fn file_sha256(path: &Path) -> io::Result<String> {
    if let Some(sha) = known_sha256(path) {
        return Ok(sha);
    }
    let d = file_digests(&std::fs::File::open(path)?, true, false)?;
    Ok(d.sha256.unwrap_or_default())
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

/// Chunks of [`file_digests`]' sparse digest: an all-zero chunk counts as a hole.
pub const SPARSE_CHUNK: u64 = 64 << 10;

/// Zeros fed to the plain sha256 for a hole, so holes are hashed without being read.
static ZEROS: [u8; SPARSE_CHUNK as usize] = [0; SPARSE_CHUNK as usize];

/// What [`file_digests`] finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    /// Hex sha256 of every byte (holes included), what `sha256sum` prints; `None` when not
    /// asked for.
    pub sha256: Option<String>,
    /// Hex sparse digest: sha256 of the size and of each [`SPARSE_CHUNK`]-aligned chunk
    /// that is not all zeros, with its offset. A function of the contents only (however the
    /// file system allocated them), computed without reading holes or hashing zeros. `None`
    /// when not asked for.
    pub sparse: Option<String>,
    /// Bytes in the file.
    pub size: u64,
}

/// The sha256 of `file` (with `plain`) and its sparse digest (with `sparse`), from one read
/// of its data ranges ([`crate::io::sparse::data_ranges`]). A 2 GiB disk image holding 150 MB reads
/// 150 MB: reading its holes would make the kernel zero-fill 2 GiB of buffers, the largest
/// cost of sealing a disk in the step cache. The plain sha256 still hashes the holes' zeros
/// (from memory), which no shortcut avoids.
pub fn file_digests(file: &std::fs::File, plain: bool, sparse: bool) -> io::Result<FileDigests> {
    use std::os::unix::fs::FileExt;
    let size = file.metadata()?.len();
    let mut whole = plain.then(Sha256::new);
    let mut chunks = sparse.then(|| Sha256::new_with_prefix(b"strata-sparse-sha256-v1"));
    // A buffer no longer than the file: most files of a root are a few KiB, and zeroing a
    // MiB for each cost more than hashing them. Such a file has no holes worth asking the
    // kernel about (two lseek calls each); read whole, its zero chunks are still left out of
    // the sparse digest, so the digests do not change.
    let mut buf = vec![0u8; size.clamp(1, 1 << 20) as usize];
    let spans = if size <= 1 << 20 {
        vec![(0, size)]
    } else {
        chunk_spans(&crate::io::sparse::data_ranges(file)?, size)
    };
    let mut pos = 0u64;
    for (start, end) in spans {
        if let Some(h) = whole.as_mut() {
            zeros(h, start - pos);
        }
        pos = start;
        while pos < end {
            let n = (end - pos).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], pos)?;
            if let Some(h) = whole.as_mut() {
                h.update(&buf[..n]);
            }
            if let Some(h) = chunks.as_mut() {
                for (i, chunk) in buf[..n].chunks(SPARSE_CHUNK as usize).enumerate() {
                    if !crate::io::sparse::is_zero(chunk) {
                        h.update((pos + i as u64 * SPARSE_CHUNK).to_le_bytes());
                        h.update(chunk);
                    }
                }
            }
            pos += n as u64;
        }
    }
    if let Some(h) = whole.as_mut() {
        zeros(h, size - pos);
    }
    Ok(FileDigests {
        sha256: whole.map(|h| hex::encode(h.finalize())),
        sparse: chunks.map(|mut h| {
            h.update(size.to_le_bytes());
            hex::encode(h.finalize())
        }),
        size,
    })
}

/// `ranges` (data ranges of a file of `size` bytes) widened to whole [`SPARSE_CHUNK`]s
/// (the last one ends at `size`) and merged, as (start, end) pairs: the spans to read.
fn chunk_spans(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in ranges {
        let start = off / SPARSE_CHUNK * SPARSE_CHUNK;
        let end = (off + len)
            .div_ceil(SPARSE_CHUNK)
            .saturating_mul(SPARSE_CHUNK)
            .min(size);
        match spans.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ if start < end => spans.push((start, end)),
            _ => {}
        }
    }
    spans
}

/// Feeds `n` zero bytes to `h`.
fn zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(SPARSE_CHUNK);
        h.update(&ZEROS[..k as usize]);
        n -= k;
    }
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

    /// The sparse digest depends on the contents only: the same bytes written densely or
    /// with holes agree, one changed byte or a longer file does not; the plain digest is
    /// `sha256sum`'s.
    #[test]
    fn sparse_digests_follow_the_contents_not_the_allocation() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let size = 5 * SPARSE_CHUNK + 123;
        let mut dense = vec![0u8; size as usize];
        dense[70_000..70_010].copy_from_slice(b"0123456789");
        dense[size as usize - 1] = 9;
        let dense_path = dir.path().join("dense");
        std::fs::write(&dense_path, &dense).unwrap();
        let holey_path = dir.path().join("holey");
        let holey = std::fs::File::create(&holey_path).unwrap();
        holey.set_len(size).unwrap();
        holey.write_all_at(b"0123456789", 70_000).unwrap();
        holey.write_all_at(&[9], size - 1).unwrap();
        let d = |p: &Path| file_digests(&std::fs::File::open(p).unwrap(), true, true).unwrap();
        let (a, b) = (d(&dense_path), d(&holey_path));
        assert_eq!(a, b);
        assert_eq!(a.sha256.as_deref(), Some(bytes_sha256(&dense).as_str()));
        assert_eq!(a.size, size);
        holey.write_all_at(b"x", 3 * SPARSE_CHUNK).unwrap();
        assert_ne!(d(&holey_path).sparse, a.sparse);
        let longer = dir.path().join("longer");
        std::fs::write(&longer, [&dense[..], &[0]].concat()).unwrap();
        assert_ne!(d(&longer).sparse, a.sparse);
        let no_plain =
            file_digests(&std::fs::File::open(&dense_path).unwrap(), false, true).unwrap();
        assert_eq!((no_plain.sha256, no_plain.sparse), (None, a.sparse));
        let plain = file_digests(&std::fs::File::open(&holey_path).unwrap(), true, false).unwrap();
        assert_eq!((plain.sha256.is_some(), plain.sparse), (true, None));
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = file_sha256(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
