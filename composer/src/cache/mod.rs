//! The step cache: every expensive step's output stored under a key that is the hash of
//! everything that decides it, so a build that changed nothing does no work, and one changed
//! extension re-squashes only that extension.
//!
//! # Steps and keys
//!
//! | step | key ([`key::KeyBuilder`]) |
//! |---|---|
//! | `squashfs` (root, each layer, each DDI tree, each disabled extension, `files:`) | the tree: every path, kind, mode, owner, link target, and each file's contents ([`key`]); the digests of the archives it was unpacked from; the squashfs options |
//! | `initramfs-boot` (its compressed segment) | init binary, kernel release, each module file, the guest files, mtime, compressor settings (preset or level, check) |
//! | `initramfs` | the `initramfs-boot` key, the root and layer images (their keys' digests), `extensions.yaml`, mtime |
//! | `uki` | stub, kernel and initramfs contents, `.osrel`/`.cmdline`/`.uname`, the signer's and the PCR key's fingerprints, the PCR phases, architecture |
//! | `disk` | the layout (sizes, GUIDs), each ESP file, the FAT options |
//! | `output` | the disk's key, the format and its options (wrap, qcow2 cluster size), name, platform, architecture, epoch, seed |
//!
//! Every key also holds [`key::SCHEMA`] and the strata version, so an upgrade never reads an
//! older strata's entry. What does *not* go into a key cannot change an output: the cache
//! and output directories, the scratch and work directories, the thread count, the time.
//!
//! # Layout
//!
//! ```text
//! <cache>/steps/<key>/data        the step's output, one file
//! <cache>/steps/<key>/entry.json  schema, key, step, size, sha256, sparse digest, stat
//!                                 fingerprint, extra
//! <cache>/steps/.lock             builds share it; `strata cache prune` takes it alone
//! <cache>/digests                 the digest memo: input files' sha256 by stat ([`memo`])
//! <cache>/tmp/.partial-<pid>-*    an entry being written
//! ```
//!
//! `entry.json`'s modification time is the entry's last use (age pruning goes by it).
//!
//! # Writes are atomic
//!
//! An entry is written in a `.partial-<pid>-*` directory under `<cache>/tmp/`
//! ([`crate::signals`] names: a build killed by a signal removes its own, the next build
//! removes a dead one's), its data and metadata fsynced, then renamed to `steps/<key>/` in one
//! step and the directory fsynced. A directory in `steps/` therefore always holds a complete
//! entry, or is not trusted: an entry without a readable `entry.json` whose key, size and
//! digest agree with its data is removed and rebuilt, never used.
//!
//! # Verification
//!
//! A dense entry is sealed with its sha256; one its step hashed while writing it
//! ([`crate::io::hash::remember`], tied to the file's inode, size and mtime: the initramfs)
//! is not read back for that, and is checked like any other entry afterwards.
//!
//! Before use, an entry's data must have the recorded size. Entries up to
//! [`HASH_ALWAYS`] are hashed every time. Hashing reads only the data ranges the file
//! system reports ([`crate::io::hash::file_digests`]), never the holes: a 2 GiB disk image
//! holding 150 MB costs 150 MB of reading, not 2 GiB of zero-filled reads. A dense entry is
//! checked by its sha256; a mostly sparse one (the raw disk: more than half holes) by its
//! *sparse digest*, the sha256 of its size and of each non-zero 64 KiB chunk with its offset,
//! which does not hash the holes' zeros either and depends on the contents only (a copy that
//! allocated the zeros verifies alike). Its plain sha256, which the manifest and an OCI blob
//! digest name, is computed only when first asked for ([`Cache::sha256`]: beside the formats
//! being written, not before them) and then recorded in the entry.
//!
//! Hashing larger entries on every use would still cost the one-second budget of a no-op
//! build several times over (a 200 MB root, a same-size initramfs, the raw disk's data and
//! its formats: about 800 MB, 1–2 s of sha256 on one core), so
//! for them the *stat fingerprint* recorded when the entry was sealed (inode, size,
//! modification time in ns) is checked instead, and any difference — a truncation, a write
//! through an output hard-linked to the entry, a copy of the cache to another disk — leads to a
//! full hash: a match renews the fingerprint, a mismatch removes the entry. What this misses
//! is damage that leaves size and timestamps alone (a flipped bit on the disk): `strata cache
//! verify` hashes every entry.
//!
//! # Outputs
//!
//! An artefact hit is hard-linked into the output directory (copied across file systems or
//! when the umask asks for another mode), so a no-op build writes no image bytes. An
//! artefact the user then changes in place (a VM booted on the raw disk) changes the entry's
//! fingerprint, and the entry is rebuilt rather than used.
//!
//! # A shared cache later
//!
//! An entry is one blob (`data`) plus small metadata (`entry.json`), addressed by a key that
//! is a pure function of the inputs: it maps onto an OCI artifact — the data as its one layer
//! (digest = the recorded sha256), `entry.json`'s fields as annotations — pushed to a
//! registry with the key as its tag. A remote lookup is then a manifest `HEAD` of
//! `<repo>:<key>`, and a pulled blob is digest-checked on its way in as any OCI blob
//! (`source/oci/`). Keys hold no machine-local paths and name input files by their sha256
//! ([`memo`] only saves re-reading them), so machines of the same strata version share
//! entries. Not done yet.

pub mod key;
pub mod memo;
pub mod prune;

use crate::error::{Error, Result};
pub use key::{Key, KeyBuilder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Entries up to this size are hashed on every use; larger ones when their stat
/// fingerprint changed (see the module documentation).
pub const HASH_ALWAYS: u64 = 16 << 20;

/// The metadata file of an entry.
const META: &str = "entry.json";
/// The data file of an entry.
const DATA: &str = "data";

/// Whether a step's output came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Found, verified, used: the step did no work.
    Hit,
    /// Made now, and stored.
    Miss,
    /// Made now; the cache is off (`--no-cache`).
    Bypassed,
}

/// One step's result: the file and how it came about.
#[derive(Debug, Clone)]
pub struct Product {
    /// The output file: in the cache, or (bypassed) where the caller asked.
    pub path: PathBuf,
    /// Hit, miss or bypassed.
    pub outcome: Outcome,
    /// Small figures the step reported when it was made (sizes for the progress line).
    pub extra: BTreeMap<String, u64>,
}

impl Product {
    /// Whether the product came from the cache (the step did no work).
    pub fn is_hit(&self) -> bool {
        self.outcome == Outcome::Hit
    }
}

/// One step as the build met it, for reports (never for anything reproducible).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Step kind (`squashfs`, `initramfs`, `disk`, `output`).
    pub step: String,
    /// What it made (`rootfs.sqsh`, `metal-amd64.qcow2`).
    pub name: String,
    /// Hit, miss or bypassed.
    pub outcome: Outcome,
}

/// `entry.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// [`key::SCHEMA`] when written.
    pub schema: u32,
    /// The entry's key (its directory's name).
    pub key: String,
    /// Step kind.
    pub step: String,
    /// What it made, for `strata cache`.
    pub name: String,
    /// Bytes of `data`.
    pub size: u64,
    /// Hex sha256 of `data`, holes included: what the manifest and an OCI blob digest name.
    /// `None` for a mostly sparse entry (a raw disk) until first asked for
    /// ([`Cache::sha256`]): hashing 2 GiB of holes' zeros would delay every output made
    /// from the disk, and a build that ships no plain raw image never needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Hex sparse digest of `data` ([`crate::io::hash::file_digests`]), recorded instead of
    /// the sha256 for a mostly sparse entry, and then what verification checks: it reads
    /// neither the holes nor hashes their zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<String>,
    /// `data`'s inode when the fingerprint was taken.
    pub inode: u64,
    /// `data`'s modification time (ns since the epoch) then.
    pub mtime_ns: i128,
    /// The step's figures.
    #[serde(default)]
    pub extra: BTreeMap<String, u64>,
}

/// The step cache of one build (or of `strata cache`).
pub struct Cache {
    /// The cache directory (the digest memo's home).
    root: PathBuf,
    steps: PathBuf,
    tmp: PathBuf,
    enabled: bool,
    records: Mutex<Vec<Record>>,
    /// Shared lock on `steps/.lock`, held while this cache is open.
    _lock: Option<File>,
}

impl Cache {
    /// The step cache under `root` (the build's cache directory); `enabled: false`
    /// (`--no-cache`) makes every step in place and reads and writes nothing here.
    pub fn open(root: &Path, enabled: bool) -> Result<Cache> {
        let steps = root.join("steps");
        let tmp = root.join("tmp");
        let lock = if enabled {
            fs::create_dir_all(&steps).map_err(Error::io("creating", &steps))?;
            fs::create_dir_all(&tmp).map_err(Error::io("creating", &tmp))?;
            let path = steps.join(".lock");
            let held = lock(&steps, libc::LOCK_SH).map_err(Error::io("locking", &path))?;
            memo::load(root);
            Some(held)
        } else {
            None
        };
        Ok(Cache {
            root: root.to_path_buf(),
            steps,
            tmp,
            enabled,
            records: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    /// Whether steps are looked up and stored (not `--no-cache`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The step `step` making `name`, keyed by `key` (computed only when the cache is on):
    /// from the cache if a verified entry exists, else made by `make` (into the path it is
    /// given) and stored. Bypassed, `make` writes `fallback` and that is the product. `make`
    /// returns the step's figures.
    pub fn get_or_make(
        &self,
        step: &str,
        name: &str,
        key: impl FnOnce() -> Result<Key>,
        fallback: &Path,
        make: impl FnOnce(&Path) -> Result<BTreeMap<String, u64>>,
    ) -> Result<Product> {
        let product = if !self.enabled {
            let extra = make(fallback)?;
            Product {
                path: fallback.to_path_buf(),
                outcome: Outcome::Bypassed,
                extra,
            }
        } else {
            self.cached(step, name, &key()?, make)?
        };
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Record {
                step: step.into(),
                name: name.into(),
                outcome: product.outcome,
            });
        Ok(product)
    }

    /// [`Cache::get_or_make`] with the cache on.
    fn cached(
        &self,
        step: &str,
        name: &str,
        key: &Key,
        make: impl FnOnce(&Path) -> Result<BTreeMap<String, u64>>,
    ) -> Result<Product> {
        if let Some(meta) = self.lookup(key)? {
            Ok(Product {
                path: self.steps.join(key.as_str()).join(DATA),
                outcome: Outcome::Hit,
                extra: meta.extra,
            })
        } else {
            let partial = tempfile::Builder::new()
                .prefix(&crate::signals::temp_prefix(".partial-"))
                .tempdir_in(&self.tmp)
                .map_err(Error::io("creating an entry in", &self.tmp))?;
            let data = partial.path().join(DATA);
            let extra = crate::io::pages::written_back_while(&data, || make(&data))?;
            let meta = self.seal(partial, key, step, name, extra)?;
            Ok(Product {
                path: self.steps.join(key.as_str()).join(DATA),
                outcome: Outcome::Miss,
                extra: meta.extra,
            })
        }
    }

    /// Whether a verified entry for `key` exists (without recording a step).
    pub fn contains(&self, key: &Key) -> Result<bool> {
        Ok(self.enabled && self.lookup(key)?.is_some())
    }

    /// Every step met so far, in order.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The verified entry of `key`, or `None` (an entry that fails verification is removed).
    fn lookup(&self, key: &Key) -> Result<Option<Meta>> {
        let dir = self.steps.join(key.as_str());
        match verify(&dir, key, false) {
            Check::Good(meta) => {
                let data = dir.join(DATA);
                if let Some(sha) = &meta.sha256 {
                    crate::io::hash::remember(&data, sha).map_err(Error::io("reading", &data))?;
                }
                touch(&dir.join(META));
                Ok(Some(meta))
            }
            Check::Absent => Ok(None),
            Check::Bad => {
                discard(&dir)?;
                Ok(None)
            }
        }
    }

    /// Hashes and fsyncs `partial`'s data, writes its metadata, and renames it into place.
    fn seal(
        &self,
        partial: tempfile::TempDir,
        key: &Key,
        step: &str,
        name: &str,
        extra: BTreeMap<String, u64>,
    ) -> Result<Meta> {
        let data = partial.path().join(DATA);
        let digests = {
            let f = File::open(&data).map_err(Error::io("reading", &data))?;
            let m = f.metadata().map_err(Error::io("reading", &data))?;
            // Mostly holes: the plain sha256 waits until someone asks (see `Meta::sha256`).
            let dense = m.blocks().saturating_mul(512) >= m.len() / 2;
            let d = match dense
                .then(|| crate::io::hash::known_sha256(&data))
                .flatten()
            {
                // Hashed by its step as it was written (and not written since): not read back.
                Some(sha) => crate::io::hash::FileDigests {
                    sha256: Some(sha),
                    sparse: None,
                    size: m.len(),
                },
                None => crate::io::hash::file_digests(&f, dense, !dense)
                    .map_err(Error::io("reading", &data))?,
            };
            f.sync_all().map_err(Error::io("syncing", &data))?;
            d
        };
        let m = fs::metadata(&data).map_err(Error::io("reading", &data))?;
        let meta = Meta {
            schema: key::SCHEMA,
            key: key.to_string(),
            step: step.into(),
            name: name.into(),
            size: digests.size,
            sha256: digests.sha256,
            sparse: digests.sparse,
            inode: m.ino(),
            mtime_ns: mtime_ns(&m),
            extra,
        };
        write_meta(partial.path(), &meta)?;
        sync_dir(partial.path())?;
        let dest = self.steps.join(key.as_str());
        if let Err(e) = fs::rename(partial.path(), &dest) {
            // Another build sealed the same key first: its entry is as good as ours.
            if let Check::Good(theirs) = verify(&dest, key, true) {
                return Ok(theirs);
            }
            discard(&dest)?;
            fs::rename(partial.path(), &dest).map_err(|_| Error::io("renaming into", &dest)(e))?;
        }
        let _moved = partial.keep();
        sync_dir(&self.steps)?;
        let data = dest.join(DATA);
        if let Some(sha) = &meta.sha256 {
            crate::io::hash::remember(&data, sha).map_err(Error::io("reading", &data))?;
        }
        Ok(meta)
    }

    /// The plain sha256 of a step's product: recorded in its entry, or computed now (holes
    /// from memory, [`crate::io::hash::file_digests`]) and recorded there for every later
    /// build, when the data still has the fingerprint it was sealed (or last verified) with. Either way remembered ([`crate::io::hash::remember`]), so the manifest's sum of
    /// an output linked to the entry reads nothing. Meant to run beside other work: the
    /// outputs step asks for the disk's while the formats are written.
    pub fn sha256(&self, product: &Product) -> Result<String> {
        let data = &product.path;
        if let Some(sha) = crate::io::hash::known_sha256(data) {
            return Ok(sha);
        }
        let f = File::open(data).map_err(Error::io("reading", data))?;
        let stat = |f: &File| -> Result<(u64, u64, i128)> {
            let m = f.metadata().map_err(Error::io("reading", data))?;
            Ok((m.ino(), m.len(), mtime_ns(&m)))
        };
        let before = stat(&f)?;
        // The plain sum alone: the entry's data was checked when it was sealed or found, and
        // its fingerprint, compared below, says it is still that data (hashing its sparse
        // digest again would read and hash its 150 MB a second time).
        let d =
            crate::io::hash::file_digests(&f, true, false).map_err(Error::io("reading", data))?;
        let sha = d.sha256.unwrap_or_default();
        if stat(&f)? != before {
            // Written to while hashed: neither recorded nor remembered.
            return Ok(sha);
        }
        let entry = data
            .parent()
            .filter(|_| product.outcome != Outcome::Bypassed);
        if let Some(dir) = entry {
            // Best effort: an entry that cannot record it is hashed again next time.
            if let Ok(mut meta) = serde_json::from_slice::<Meta>(
                &fs::read(dir.join(META)).map_err(Error::io("reading", dir.join(META)))?,
            ) {
                let sealed = (meta.inode, meta.size, meta.mtime_ns) == before;
                if sealed && meta.sha256.is_none() {
                    meta.sha256 = Some(sha.clone());
                    let _ = write_meta(dir, &meta);
                }
            }
        }
        crate::io::hash::remember(data, &sha).map_err(Error::io("reading", data))?;
        Ok(sha)
    }
}

impl Drop for Cache {
    /// Writes the digest memo back (best effort: a memo not written costs reads next time).
    fn drop(&mut self) {
        if self.enabled {
            let _ = memo::save(&self.root);
        }
    }
}

/// What verifying an entry found.
pub(crate) enum Check {
    /// Complete and intact.
    Good(Meta),
    /// No entry.
    Absent,
    /// Something is there but it cannot be trusted.
    Bad,
}

/// Verifies the entry in `dir` for `key` (see the module documentation); `full`: hash the
/// data whatever its size and fingerprint.
pub(crate) fn verify(dir: &Path, key: &Key, full: bool) -> Check {
    let bytes = match fs::read(dir.join(META)) {
        Ok(b) => b,
        Err(_) if !dir.exists() => return Check::Absent,
        Err(_) => return Check::Bad,
    };
    let Ok(mut meta) = serde_json::from_slice::<Meta>(&bytes) else {
        return Check::Bad;
    };
    if meta.schema != key::SCHEMA || meta.key != key.as_str() {
        return Check::Bad;
    }
    let data = dir.join(DATA);
    let Ok(m) = fs::symlink_metadata(&data) else {
        return Check::Bad;
    };
    if !m.is_file() || m.len() != meta.size {
        return Check::Bad;
    }
    let same_stat = m.ino() == meta.inode && mtime_ns(&m) == meta.mtime_ns;
    if same_stat && !full && meta.size > HASH_ALWAYS {
        return Check::Good(meta);
    }
    let Ok(f) = File::open(&data) else {
        return Check::Bad;
    };
    // The sparse digest when one was recorded, else the sha256; neither: not trusted.
    let sparse = meta.sparse.is_some();
    match crate::io::hash::file_digests(&f, !sparse, sparse) {
        Ok(d) if d.size == meta.size => {
            let (got, want) = if sparse {
                (d.sparse, &meta.sparse)
            } else {
                (d.sha256, &meta.sha256)
            };
            if got.is_none() || got != *want {
                return Check::Bad;
            }
        }
        _ => return Check::Bad,
    }
    if !same_stat {
        // Intact, moved or copied: renew the fingerprint (best effort; it is checked again).
        meta.inode = m.ino();
        meta.mtime_ns = mtime_ns(&m);
        let _ = write_meta(dir, &meta);
    }
    Check::Good(meta)
}

/// Removes an entry: its metadata first, so no reader trusts what is left if this stops half
/// way.
pub(crate) fn discard(dir: &Path) -> Result<()> {
    match fs::remove_file(dir.join(META)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing", dir.join(META))(e)),
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", dir)(e)),
    }
}

fn mtime_ns(m: &fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Writes `entry.json` in `dir` through a temporary file and a rename, fsynced.
fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let path = dir.join(META);
    // Named by pid: two builds renewing one entry's fingerprint must not share a file.
    let tmp = dir.join(format!("{META}.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(meta)
        .map_err(|e| Error::io("writing", &tmp)(std::io::Error::other(e)))?;
    let mut f = File::create(&tmp).map_err(Error::io("writing", &tmp))?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(Error::io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("renaming into", &path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing", dir))
}

/// Marks an entry used now (its `entry.json`'s mtime); best effort: a read-only cache still
/// serves hits.
fn touch(meta: &Path) {
    if let Ok(f) = fs::OpenOptions::new().append(true).open(meta) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Takes `flock(how)` on `steps/.lock`.
fn lock(steps: &Path, how: libc::c_int) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(steps.join(".lock"))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), how) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        let mut k = KeyBuilder::new("test");
        k.u64("n", n);
        k.finish()
    }

    /// A step that writes `bytes` and counts its runs.
    fn step<'a>(
        bytes: &'a [u8],
        runs: &'a std::cell::Cell<u32>,
    ) -> impl FnOnce(&Path) -> Result<BTreeMap<String, u64>> + 'a {
        move |p: &Path| {
            runs.set(runs.get() + 1);
            fs::write(p, bytes).map_err(Error::io("writing", p))?;
            Ok(BTreeMap::from([("bytes".to_string(), bytes.len() as u64)]))
        }
    }

    fn get(c: &Cache, k: &Key, bytes: &[u8], runs: &std::cell::Cell<u32>) -> Product {
        c.get_or_make(
            "test",
            "t",
            || Ok(k.clone()),
            Path::new("/nonexistent"),
            step(bytes, runs),
        )
        .unwrap()
    }

    #[test]
    fn a_second_lookup_is_a_hit_with_the_same_bytes() {
        let root = tempfile::tempdir().unwrap();
        let c = Cache::open(root.path(), true).unwrap();
        let runs = std::cell::Cell::new(0);
        let a = get(&c, &key(1), b"hello", &runs);
        assert_eq!(a.outcome, Outcome::Miss);
        let b = get(&c, &key(1), b"other", &runs);
        assert_eq!((b.outcome, runs.get()), (Outcome::Hit, 1));
        assert_eq!(fs::read(&b.path).unwrap(), b"hello");
        assert_eq!(b.extra["bytes"], 5);
        assert_eq!(
            c.records().iter().map(|r| r.outcome).collect::<Vec<_>>(),
            [Outcome::Miss, Outcome::Hit]
        );
        // Nothing left behind in tmp/.
        assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn bypassed_steps_write_where_asked_and_store_nothing() {
        let root = tempfile::tempdir().unwrap();
        let c = Cache::open(&root.path().join("cache"), false).unwrap();
        let out = root.path().join("made");
        let runs = std::cell::Cell::new(0);
        for _ in 0..2 {
            let p = c
                .get_or_make("test", "t", || Ok(key(1)), &out, step(b"x", &runs))
                .unwrap();
            assert_eq!(
                (p.outcome, p.path.as_path()),
                (Outcome::Bypassed, out.as_path())
            );
        }
        assert_eq!(runs.get(), 2);
        assert!(!root.path().join("cache").exists());
    }

    /// Truncated, same-size corruption, a missing or garbled entry.json, a wrong key inside:
    /// each entry is rebuilt, never used.
    #[test]
    fn damaged_entries_are_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let c = Cache::open(root.path(), true).unwrap();
        let runs = std::cell::Cell::new(0);
        let damage: [&dyn Fn(&Path); 5] = [
            &|d| {
                File::options()
                    .write(true)
                    .open(d.join(DATA))
                    .unwrap()
                    .set_len(2)
                    .unwrap()
            },
            &|d| {
                // Same size, same mtime: only the hash can tell.
                let m = fs::metadata(d.join(DATA)).unwrap();
                fs::write(d.join(DATA), b"HELLO").unwrap();
                let f = File::options().write(true).open(d.join(DATA)).unwrap();
                f.set_modified(m.modified().unwrap()).unwrap();
            },
            &|d| fs::remove_file(d.join(META)).unwrap(),
            &|d| fs::write(d.join(META), b"{\"schema\":").unwrap(),
            &|d| {
                let text = fs::read_to_string(d.join(META)).unwrap();
                fs::write(d.join(META), text.replace(key(1).as_str(), key(2).as_str())).unwrap()
            },
        ];
        for (i, hurt) in damage.iter().enumerate() {
            let first = get(&c, &key(1), b"hello", &runs);
            hurt(first.path.parent().unwrap());
            let again = get(&c, &key(1), b"hello", &runs);
            assert_eq!(again.outcome, Outcome::Miss, "damage {i} went unnoticed");
            assert_eq!(fs::read(&again.path).unwrap(), b"hello");
            assert_eq!(get(&c, &key(1), b"hello", &runs).outcome, Outcome::Hit);
        }
    }

    /// Large entries are not hashed on every use, but any change of size or fingerprint is
    /// seen, and a mere move (a new inode, same bytes) keeps the entry.
    #[test]
    fn large_entries_are_checked_by_fingerprint_then_hash() {
        let root = tempfile::tempdir().unwrap();
        let c = Cache::open(root.path(), true).unwrap();
        let runs = std::cell::Cell::new(0);
        let big = vec![7u8; (HASH_ALWAYS + 1) as usize];
        let p = get(&c, &key(3), &big, &runs);
        // A write in place (as through a hard-linked output): the mtime moves.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let f = File::options().write(true).open(&p.path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", 100).unwrap();
        drop(f);
        assert_eq!(get(&c, &key(3), &big, &runs).outcome, Outcome::Miss);
        // Copied to a new inode: hashed once, still good, fingerprint renewed.
        let p = get(&c, &key(3), &big, &runs);
        let copy = p.path.with_extension("copy");
        fs::copy(&p.path, &copy).unwrap();
        fs::rename(&copy, &p.path).unwrap();
        assert_eq!(get(&c, &key(3), &big, &runs).outcome, Outcome::Hit);
        assert_eq!(runs.get(), 2);
    }

    /// A step that hashed its output while writing it ([`crate::io::hash::remember`]) is
    /// sealed with that digest, not read back; the entry is still checked as any other (same
    /// size and mtime, one byte changed: rebuilt). A digest remembered before a later write
    /// (another size or mtime) is not used: the data is read back.
    #[test]
    fn a_digest_hashed_while_writing_seals_the_entry() {
        let root = tempfile::tempdir().unwrap();
        let c = Cache::open(root.path(), true).unwrap();
        let runs = std::cell::Cell::new(0);
        let hashed = |bytes: &'static [u8], stale: bool| {
            let runs = &runs;
            move |p: &Path| {
                runs.set(runs.get() + 1);
                fs::write(p, bytes).map_err(Error::io("writing", p))?;
                let sha = crate::io::hash::bytes_sha256(bytes);
                crate::io::hash::remember(p, &sha).map_err(Error::io("reading", p))?;
                if stale {
                    fs::write(p, b"rewritten after").map_err(Error::io("writing", p))?;
                }
                Ok(BTreeMap::new())
            }
        };
        let meta = |p: &Product| -> Meta {
            let dir = p.path.parent().unwrap();
            serde_json::from_slice(&fs::read(dir.join(META)).unwrap()).unwrap()
        };
        let nowhere = Path::new("/nonexistent");
        let p = c
            .get_or_make("t", "t", || Ok(key(11)), nowhere, hashed(b"hello", false))
            .unwrap();
        let hello = crate::io::hash::bytes_sha256(b"hello");
        assert_eq!(meta(&p).sha256.as_deref(), Some(hello.as_str()));
        let m = fs::metadata(&p.path).unwrap();
        fs::write(&p.path, b"HELLO").unwrap();
        File::options()
            .write(true)
            .open(&p.path)
            .unwrap()
            .set_modified(m.modified().unwrap())
            .unwrap();
        let again = c
            .get_or_make("t", "t", || Ok(key(11)), nowhere, hashed(b"hello", false))
            .unwrap();
        assert_eq!((again.outcome, runs.get()), (Outcome::Miss, 2));
        assert_eq!(fs::read(&again.path).unwrap(), b"hello");
        let p = c
            .get_or_make("t", "t", || Ok(key(12)), nowhere, hashed(b"hi", true))
            .unwrap();
        let rewritten = crate::io::hash::bytes_sha256(b"rewritten after");
        assert_eq!(meta(&p).sha256.as_deref(), Some(rewritten.as_str()));
    }

    /// A mostly sparse entry (a raw disk) is sealed and verified by its sparse digest; its
    /// plain sha256 is computed when asked for, is `sha256sum`'s, and is recorded for the
    /// next build; a change inside its data is still caught.
    #[test]
    fn sparse_entries_get_their_plain_sum_on_demand() {
        use std::os::unix::fs::FileExt;
        let root = tempfile::tempdir().unwrap();
        let size = 4 * HASH_ALWAYS;
        let make = |p: &Path| {
            let f = File::create(p).map_err(Error::io("creating", p))?;
            f.set_len(size).map_err(Error::io("sizing", p))?;
            f.write_all_at(b"gpt", 512)
                .map_err(Error::io("writing", p))?;
            Ok(BTreeMap::new())
        };
        let c = Cache::open(root.path(), true).unwrap();
        let p = c
            .get_or_make("disk", "d", || Ok(key(7)), Path::new("/nonexistent"), make)
            .unwrap();
        let dir = p.path.parent().unwrap().to_path_buf();
        let meta = |d: &Path| -> Meta {
            serde_json::from_slice(&fs::read(d.join(META)).unwrap()).unwrap()
        };
        assert!(meta(&dir).sha256.is_none() && meta(&dir).sparse.is_some());
        let mut dense = vec![0u8; size as usize];
        dense[512..515].copy_from_slice(b"gpt");
        let want = crate::io::hash::bytes_sha256(&dense);
        assert_eq!(c.sha256(&p).unwrap(), want);
        assert_eq!(meta(&dir).sha256.as_deref(), Some(want.as_str()));
        assert!(matches!(verify(&dir, &key(7), true), Check::Good(_)));
        // Data whose fingerprint moved since it was sealed: its sum is computed, not recorded.
        let q = c
            .get_or_make("disk", "e", || Ok(key(8)), Path::new("/nonexistent"), make)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let g = File::options().write(true).open(&q.path).unwrap();
        g.write_all_at(b"GPT", 512).unwrap();
        drop(g);
        dense[512..515].copy_from_slice(b"GPT");
        assert_eq!(c.sha256(&q).unwrap(), crate::io::hash::bytes_sha256(&dense));
        assert!(meta(q.path.parent().unwrap()).sha256.is_none());
        let again = c.get_or_make("disk", "e", || Ok(key(8)), Path::new("/nonexistent"), make);
        assert_eq!(
            again.unwrap().outcome,
            Outcome::Miss,
            "the changed entry is rebuilt"
        );
        // Same size, same mtime, one byte changed: the full check sees it.
        let m = fs::metadata(&p.path).unwrap();
        let f = File::options().write(true).open(&p.path).unwrap();
        f.write_all_at(b"x", 3 * HASH_ALWAYS).unwrap();
        f.set_modified(m.modified().unwrap()).unwrap();
        assert!(matches!(verify(&dir, &key(7), true), Check::Bad));
    }

    /// A build killed while writing leaves a `.partial-*` directory (never looked at) or,
    /// had it got that far without its metadata, an entry directory without `entry.json`:
    /// neither is trusted, and the next build's sweep removes the dead one's partial.
    #[test]
    fn a_half_written_entry_is_not_trusted() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join("tmp/.partial-99999999-abc");
        fs::create_dir_all(&dead).unwrap();
        fs::write(dead.join(DATA), b"half").unwrap();
        let half = root.path().join("steps").join(key(5).as_str());
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join(DATA), b"half").unwrap();
        crate::signals::watch(&root.path().join("tmp"), false);
        assert!(!dead.exists(), "the dead build's partial entry is swept");
        let c = Cache::open(root.path(), true).unwrap();
        let runs = std::cell::Cell::new(0);
        let p = get(&c, &key(5), b"whole", &runs);
        assert_eq!(
            (p.outcome, fs::read(&p.path).unwrap()),
            (Outcome::Miss, b"whole".to_vec())
        );
    }
}
