//! Step keys: the sha256 of everything that decides a step's output.
//!
//! A [`KeyBuilder`] is fed labelled fields, each as its label, its length and its bytes, so
//! no two different field lists hash alike (`("ab", "c")` is not `("a", "bc")`). Every key
//! starts with the cache [`SCHEMA`], the strata version and the step's name.
//!
//! **Files.** A file's contents are named by [`file_identity`]: always its sha256, so a key
//! depends on contents alone (the same on every machine, after a checkout or a `touch`),
//! never on where or when a file was written. The digest comes from the step cache when the
//! file is an entry (verified when found, [`crate::io::hash::remember`]), else from the
//! persistent [`super::memo`] (stat -> digest, in the cache directory) when the file's stat
//! has not moved since it was last hashed, else from reading it. A build that changed
//! nothing therefore stats each input file and reads none.
//!
//! **Extracted trees.** Contents unpacked from an archive (an OCI image, a tar root, a sysext
//! image) get new inodes on every build, so their fingerprints would never match. A tree
//! whose sources are content-addressed is keyed by those sources' digests instead
//! ([`KeyBuilder::tree`] with `sources`), and a file in one of the tree's scratch directories
//! by its place there and size: unpacking is deterministic, so equal sources give equal
//! files. Without sources such files fall back to fingerprints (always rebuilt, still right).

use crate::fs::tree::{EntryKind, FileData, Tree};
use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bumped whenever a step's output changes for the same inputs without the strata version
/// changing, or the entry layout changes: every older entry then misses.
/// 3: squashfs images keep one copy of identical files shorter than a block.
/// 4: the initramfs's compressed segment at xz preset 2 / zstd level 12 (was 6 / 19).
pub const SCHEMA: u32 = 4;

/// A step key: 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key read back from an entry's name; `None` unless 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Key> {
        (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Key(s.to_string()))
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Accumulates the fields of one step's key.
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// A key for step `step` (`squashfs`, `initramfs`, `disk`, `output`), starting with the
    /// schema and the strata version.
    pub fn new(step: &str) -> Self {
        let mut k = KeyBuilder(Sha256::new());
        k.u64("schema", u64::from(SCHEMA));
        k.str("strata", env!("CARGO_PKG_VERSION"));
        k.str("step", step);
        k
    }

    /// A labelled byte field.
    pub fn bytes(&mut self, label: &str, value: &[u8]) -> &mut Self {
        for part in [label.as_bytes(), value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
        self
    }

    /// A labelled text field.
    pub fn str(&mut self, label: &str, value: &str) -> &mut Self {
        self.bytes(label, value.as_bytes())
    }

    /// A labelled number.
    pub fn u64(&mut self, label: &str, value: u64) -> &mut Self {
        self.bytes(label, &value.to_le_bytes())
    }

    /// Options given as their `Debug` text: exact, and covered by the version in the key.
    pub fn debug(&mut self, label: &str, value: &impl std::fmt::Debug) -> &mut Self {
        self.str(label, &format!("{value:?}"))
    }

    /// The contents of the file at `path`, by [`file_identity`].
    pub fn file(&mut self, label: &str, path: &Path) -> io::Result<&mut Self> {
        let id = file_identity(path)?;
        Ok(self.str(label, &id))
    }

    /// Another step's key (an artefact made of parts is keyed by its parts' keys).
    pub fn key(&mut self, label: &str, key: &Key) -> &mut Self {
        self.str(label, key.as_str())
    }

    /// A whole tree: every entry's path, kind, mode, owner, link target or device numbers,
    /// and each regular file's contents (see the module documentation). `sources`: the
    /// digests of the content-addressed inputs the tree's scratch directories were unpacked
    /// from; empty when there are none.
    pub fn tree(&mut self, label: &str, tree: &Tree, sources: &[String]) -> io::Result<&mut Self> {
        self.u64(label, tree.len() as u64);
        for s in sources {
            self.str("source", s);
        }
        let scratch: Vec<&Path> = if sources.is_empty() {
            Vec::new()
        } else {
            tree.scratch_dirs().collect()
        };
        for (path, entry) in tree.iter() {
            self.bytes("path", path.as_os_str().as_bytes());
            self.u64("mode", u64::from(entry.mode));
            self.u64("uid", u64::from(entry.uid));
            self.u64("gid", u64::from(entry.gid));
            match &entry.kind {
                EntryKind::Dir => self.str("kind", "dir"),
                EntryKind::File(FileData::Bytes(b)) => self.bytes("bytes", b),
                EntryKind::File(FileData::Host(host)) => {
                    let id = scratch_identity(host, &scratch)?
                        .map_or_else(|| file_identity(host), Ok)?;
                    self.str("file", &id)
                }
                EntryKind::Symlink(target) => self.bytes("symlink", target.as_os_str().as_bytes()),
                EntryKind::CharDev { major, minor } => {
                    self.u64("chr", (u64::from(*major) << 32) | u64::from(*minor))
                }
                EntryKind::BlockDev { major, minor } => {
                    self.u64("blk", (u64::from(*major) << 32) | u64::from(*minor))
                }
                EntryKind::Fifo => self.str("kind", "fifo"),
                EntryKind::Socket => self.str("kind", "socket"),
            };
        }
        Ok(self)
    }

    /// The key.
    pub fn finish(&self) -> Key {
        Key(hex::encode(self.0.clone().finalize()))
    }
}

/// What stands for a file's contents in a key: `sha256:<hex>`, from the step cache's
/// records, the digest memo, or a read (see the module documentation).
pub fn file_identity(path: &Path) -> io::Result<String> {
    let sha = match crate::io::hash::known_sha256(path) {
        Some(sha) => sha,
        None => super::memo::sha256(path)?,
    };
    Ok(format!("sha256:{sha}"))
}

/// A file inside one of `scratch`: its place there and its size.
fn scratch_identity(host: &Path, scratch: &[&Path]) -> io::Result<Option<String>> {
    let Some(rel) = scratch.iter().find_map(|d| host.strip_prefix(d).ok()) else {
        return Ok(None);
    };
    let size = std::fs::metadata(host)?.len();
    Ok(Some(format!("scratch:{}:{size}", rel.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::Entry;
    use std::os::unix::fs::PermissionsExt;

    fn key_of(tree: &Tree, sources: &[String]) -> Key {
        let mut k = KeyBuilder::new("squashfs");
        k.tree("tree", tree, sources).unwrap();
        k.str("options", "zstd-15");
        k.finish()
    }

    /// A directory with two files, as a tree read from disk.
    fn sample() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/a"), b"alpha").unwrap();
        std::fs::write(dir.path().join("etc/b"), b"beta").unwrap();
        let tree = Tree::from_dir(dir.path()).unwrap();
        (dir, tree)
    }

    #[test]
    fn the_same_tree_read_twice_has_the_same_key() {
        let (dir, tree) = sample();
        let again = Tree::from_dir(dir.path()).unwrap();
        assert_eq!(key_of(&tree, &[]), key_of(&again, &[]));
        assert_eq!(key_of(&tree, &[]).as_str().len(), 64);
    }

    #[test]
    fn content_mode_name_and_options_each_change_the_key() {
        let (dir, tree) = sample();
        let base = key_of(&tree, &[]);
        let reread = |d: &Path| key_of(&Tree::from_dir(d).unwrap(), &[]);

        // Content, same size.
        std::fs::write(dir.path().join("etc/a"), b"ALPHA").unwrap();
        let content = reread(dir.path());
        assert_ne!(content, base);

        // Mode.
        let a = dir.path().join("etc/a");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mode = reread(dir.path());
        assert_ne!(mode, content);

        // Name.
        std::fs::rename(dir.path().join("etc/b"), dir.path().join("etc/c")).unwrap();
        let name = reread(dir.path());
        assert_ne!(name, mode);

        // Owner, in the tree.
        let mut owned = Tree::from_dir(dir.path()).unwrap();
        owned.all_root();
        let mut other = owned.clone();
        let e = other.get("/etc/a").unwrap().clone().owned_by(1000, 1000);
        other.insert("/etc/a", e).unwrap();
        assert_ne!(key_of(&other, &[]), key_of(&owned, &[]));

        // An option.
        let mut k = KeyBuilder::new("squashfs");
        k.tree("tree", &owned, &[]).unwrap();
        k.str("options", "xz");
        assert_ne!(k.finish(), key_of(&owned, &[]));

        // The step, the sources.
        let mut k = KeyBuilder::new("initramfs");
        k.tree("tree", &owned, &[]).unwrap();
        k.str("options", "zstd-15");
        assert_ne!(k.finish(), key_of(&owned, &[]));
        assert_ne!(key_of(&owned, &["sha256:1".into()]), key_of(&owned, &[]));
    }

    #[test]
    fn in_memory_contents_are_keyed_by_their_bytes() {
        let mut t = Tree::new();
        t.insert("/f", Entry::bytes_file(b"one".to_vec(), 0o644))
            .unwrap();
        let one = key_of(&t, &[]);
        t.insert("/f", Entry::bytes_file(b"two".to_vec(), 0o644))
            .unwrap();
        assert_ne!(key_of(&t, &[]), one);
        t.insert("/f", Entry::bytes_file(b"one".to_vec(), 0o644))
            .unwrap();
        assert_eq!(key_of(&t, &[]), one);
    }

    #[test]
    fn fields_are_framed() {
        let mut a = KeyBuilder::new("x");
        a.str("l", "ab").str("l", "c");
        let mut b = KeyBuilder::new("x");
        b.str("l", "a").str("l", "bc");
        assert_ne!(a.finish(), b.finish());
    }

    /// The same archive unpacked twice, into different scratch directories with new inodes:
    /// the same key when the source digest is given, and a change of the digest changes it.
    #[test]
    fn unpacked_trees_are_keyed_by_their_source() {
        let unpack = |bytes: &[u8]| {
            let scratch = tempfile::tempdir().unwrap();
            std::fs::write(scratch.path().join("0001"), bytes).unwrap();
            let mut t = Tree::new();
            t.insert(
                "/usr/bin/tool",
                Entry::host_file(scratch.path().join("0001"), 0o755),
            )
            .unwrap();
            t.hold_scratch(scratch);
            t
        };
        let (a, b) = (unpack(b"tool v1"), unpack(b"tool v1"));
        let src = ["sha256:aaaa".to_string()];
        assert_eq!(key_of(&a, &src), key_of(&b, &src));
        // Without a source, each file stands for itself (here: just written, so hashed).
        assert_ne!(key_of(&a, &[]), key_of(&unpack(b"tool v2"), &[]));
        assert_ne!(key_of(&a, &src), key_of(&a, &["sha256:bbbb".to_string()]));
    }

    #[test]
    fn keys_parse_back() {
        let k = KeyBuilder::new("x").finish();
        assert_eq!(Key::parse(k.as_str()), Some(k));
        assert_eq!(Key::parse("tmp"), None);
        assert_eq!(Key::parse(&"A".repeat(64)), None);
    }
}
