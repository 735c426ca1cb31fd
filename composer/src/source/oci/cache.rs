//! A content-addressed blob cache and a tag → digest index, so builds can run `--offline`.
//!
//! Layout below the root (by default `$XDG_CACHE_HOME/strata`, else `~/.cache/strata`):
//! - `blobs/sha256/<hex>`: manifests, indexes, configs and layers, each named by its digest;
//! - `refs/<registry>/<repository>/_tags/<tag>`: the descriptor (JSON) of the manifest or index
//!   a tag pointed at when it was last pulled (`_` cannot start a repository component, so the
//!   `_tags` directory never collides with a nested repository);
//! - `tmp/`: blobs being written.
//!
//! A blob only enters `blobs/` after its digest and size were checked: it is streamed into a
//! temporary file in `tmp/` (same filesystem) and renamed into place, so an interrupted or
//! corrupt download leaves nothing behind. Blobs already present are trusted and reused.
//!
//! Not supported: garbage collection (delete the directory to reclaim space), locking between
//! concurrent strata processes (harmless: renames are atomic and contents are identical).

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::image::{self, Descriptor, Digest, HashWriter, ImageError};
use super::reference::Reference;

/// Errors from the blob cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A blob failed verification, or an image document is malformed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Reading or writing the cache failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path in the cache.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither `XDG_CACHE_HOME` nor `HOME` is set.
    #[error(
        "cannot find a cache directory: neither XDG_CACHE_HOME nor HOME is set; hint: set \
         XDG_CACHE_HOME or give the cache directory explicitly"
    )]
    NoCacheDir,
    /// A tag record in `refs/` is unreadable.
    #[error("tag record {path} is damaged: {reason}; hint: delete it and pull the image again")]
    BadTagRecord {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blob is longer than its descriptor says (the download is cut off early).
    #[error(
        "{what} is longer than the {expected} bytes its descriptor states; the source is \
         sending something else"
    )]
    Oversized {
        /// The blob.
        what: String,
        /// The size the descriptor states.
        expected: u64,
    },
}

/// A blob cache rooted at a directory (created on first write).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The per-user cache: `$XDG_CACHE_HOME/strata`, else `$HOME/.cache/strata`.
    pub fn user_default() -> Result<Self, CacheError> {
        let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let base = match (non_empty("XDG_CACHE_HOME"), non_empty("HOME")) {
            (Some(xdg), _) => PathBuf::from(xdg),
            (None, Some(home)) => PathBuf::from(home).join(".cache"),
            (None, None) => return Err(CacheError::NoCacheDir),
        };
        Ok(Self::new(base.join("strata")))
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The blob's path if it is in the cache.
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.blob_path(digest);
        path.is_file().then_some(path)
    }

    /// The blob's path if it is in the cache and still hashes to `desc`. A damaged entry
    /// (cut short by a crash or a full disk, changed by hand) is removed and returned as the
    /// mismatch, so the caller fetches it again or, offline, names the damage: it is never
    /// used. Costs one read of the blob, which is small next to unpacking it.
    pub fn get_verified(
        &self,
        desc: &Descriptor,
        what: &str,
    ) -> Result<Option<PathBuf>, ImageError> {
        let Some(path) = self.get(&desc.digest) else {
            return Ok(None);
        };
        let (digest, size) = image::hash_file(&path)?;
        if let Err(damage) = image::check_blob(desc, &digest, size, &format!("cached {what}")) {
            fs::remove_file(&path).map_err(|e| image::io_err("remove damaged", &path, e))?;
            return Err(damage);
        }
        Ok(Some(path))
    }

    /// Starts writing the blob `desc`; nothing appears in the cache until
    /// [`BlobWriter::finish`] has verified it. `what` names the blob in errors.
    pub fn writer(&self, desc: &Descriptor, what: &str) -> Result<BlobWriter, CacheError> {
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| io_err("create directory", &tmp_dir, e))?;
        let file = NamedTempFile::with_prefix_in(crate::signals::temp_prefix("blob-"), &tmp_dir)
            .map_err(|e| io_err("create a temporary file in", &tmp_dir, e))?;
        let out = BufWriter::with_capacity(1 << 20, file);
        Ok(BlobWriter {
            dest: self.blob_path(&desc.digest),
            desc: desc.clone(),
            what: what.to_string(),
            out: HashWriter::new(out),
        })
    }

    /// Streams `reader` into the cache as blob `desc`, verifying it; returns its path.
    pub fn insert_from(
        &self,
        desc: &Descriptor,
        reader: &mut impl Read,
        what: &str,
    ) -> Result<PathBuf, CacheError> {
        let mut writer = self.writer(desc, what)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read the source of", Path::new(what), e)),
            };
            writer.write_chunk(&buf[..n])?;
        }
        writer.finish()
    }

    /// Stores in-memory bytes (a manifest) as blob `desc`, verifying them.
    pub fn insert_bytes(
        &self,
        desc: &Descriptor,
        bytes: &[u8],
        what: &str,
    ) -> Result<PathBuf, CacheError> {
        let mut writer = self.writer(desc, what)?;
        writer.write_chunk(bytes)?;
        writer.finish()
    }

    /// Records that `reference`'s tag points at `top` (a manifest or index descriptor).
    /// References without a tag record nothing: their digest already names the blob.
    pub fn record_tag(&self, reference: &Reference, top: &Descriptor) -> Result<(), CacheError> {
        let Some(path) = self.tag_path(reference) else {
            return Ok(());
        };
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| io_err("create directory", dir, e))?;
        let mut tmp = NamedTempFile::with_prefix_in(".tag-", dir)
            .map_err(|e| io_err("create a temporary file in", dir, e))?;
        tmp.write_all(&image::to_json(top))
            .map_err(|e| io_err("write", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| io_err("rename a temporary file to", &path, e.error))?;
        Ok(())
    }

    /// The descriptor `reference`'s tag pointed at when last pulled, if recorded.
    pub fn lookup_tag(&self, reference: &Reference) -> Result<Option<Descriptor>, CacheError> {
        let Some(path) = self.tag_path(reference) else {
            return Ok(None);
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CacheError::BadTagRecord {
                path,
                reason: e.to_string(),
            })
    }

    /// The record file of a tagged reference. Reference parsing guarantees that registry,
    /// repository and tag are plain names (no `..`, no empty components).
    fn tag_path(&self, reference: &Reference) -> Option<PathBuf> {
        let tag = reference.tag.as_ref()?;
        Some(
            self.root
                .join("refs")
                .join(&reference.registry)
                .join(&reference.repository)
                .join("_tags")
                .join(tag),
        )
    }
}

/// A blob being written into the cache; verified and moved into place by [`Self::finish`].
/// Dropping it without finishing deletes the partial file.
pub struct BlobWriter {
    dest: PathBuf,
    desc: Descriptor,
    what: String,
    out: HashWriter<BufWriter<NamedTempFile>>,
}

impl BlobWriter {
    /// Appends a chunk, refusing to grow past the descriptor's size.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        if self.out.written() + chunk.len() as u64 > self.desc.size {
            return Err(CacheError::Oversized {
                what: self.what.clone(),
                expected: self.desc.size,
            });
        }
        let path = self.out.get_mut().get_ref().path().to_path_buf();
        self.out
            .write_all(chunk)
            .map_err(|e| io_err("write", &path, e))
    }

    /// The digest of the bytes written so far.
    pub fn digest(&self) -> Digest {
        self.out.digest()
    }

    /// Verifies digest and size, then renames the blob into the cache.
    pub fn finish(self) -> Result<PathBuf, CacheError> {
        let actual = self.out.digest();
        let size = self.out.written();
        image::check_blob(&self.desc, &actual, size, &self.what)?;
        let file = self.out.into_inner();
        let tmp_path = file.get_ref().path().to_path_buf();
        let file = file
            .into_inner()
            .map_err(|e| io_err("write", &tmp_path, e.into_error()))?;
        let parent = self.dest.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(|e| io_err("create directory", parent, e))?;
        file.persist(&self.dest)
            .map_err(|e| io_err("rename a temporary file to", &self.dest, e.error))?;
        Ok(self.dest)
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> CacheError {
    CacheError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::oci::image::OCI_LAYER_TAR;

    fn desc(bytes: &[u8]) -> Descriptor {
        Descriptor::new(OCI_LAYER_TAR, Digest::of_bytes(bytes), bytes.len() as u64)
    }

    fn tmp_is_empty(cache: &Cache) -> bool {
        fs::read_dir(cache.root().join("tmp"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }

    #[test]
    fn verified_blobs_land_under_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let d = desc(b"hello");
        assert_eq!(cache.get(&d.digest), None);
        let path = cache.insert_from(&d, &mut &b"hello"[..], "blob").unwrap();
        assert_eq!(path, dir.path().join("blobs/sha256").join(d.digest.hex()));
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(cache.get(&d.digest), Some(path));
        assert!(tmp_is_empty(&cache));
    }

    #[test]
    fn corrupt_blobs_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let d = desc(b"hello");
        let err = cache
            .insert_bytes(&d, b"jello", "layer x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "layer x is corrupt: expected digest {}, got {}; hint: the source is damaged \
                 or was tampered with; fetch the image again from a trusted source",
                d.digest,
                Digest::of_bytes(b"jello")
            )
        );
        let err = cache
            .insert_bytes(&d, b"hello!", "layer y")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("layer y is longer than the 5 bytes"),
            "{err}"
        );
        let short = Descriptor {
            size: 6,
            ..d.clone()
        };
        let err = cache
            .insert_bytes(&short, b"hello", "layer z")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("layer z is 5 bytes but its descriptor says 6"),
            "{err}"
        );
        assert_eq!(cache.get(&d.digest), None);
        assert!(tmp_is_empty(&cache));
    }

    #[test]
    fn tags_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let reference = Reference::parse("127.0.0.1:5000/ext/hello:v1").unwrap();
        assert_eq!(cache.lookup_tag(&reference).unwrap(), None);
        let d = desc(b"manifest");
        cache.record_tag(&reference, &d).unwrap();
        assert_eq!(cache.lookup_tag(&reference).unwrap(), Some(d.clone()));
        let record = dir.path().join("refs/127.0.0.1:5000/ext/hello/_tags/v1");
        assert!(record.is_file());
        let pinned = reference.with_digest(d.digest.clone());
        let untagged = Reference {
            tag: None,
            ..pinned
        };
        cache.record_tag(&untagged, &d).unwrap();
        assert_eq!(cache.lookup_tag(&untagged).unwrap(), None);
        fs::write(&record, b"{").unwrap();
        let err = cache.lookup_tag(&reference).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("tag record {} is damaged", record.display())),
            "{err}"
        );
    }
}
