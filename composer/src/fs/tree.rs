//! In-memory listing of a filesystem tree: paths, kinds, modes and owners, not the contents.
//!
//! A [`Tree`] describes the root filesystem or an extension layer before it is written out as
//! squashfs (see `squashfs`) or cpio. File contents stay where they are: an entry points at a
//! host file ([`FileData::Host`]) that the writer streams later, or carries small contents inline
//! ([`FileData::Bytes`]). This keeps memory use proportional to the number of entries, not to
//! their size.
//!
//! Supported sources:
//! - a host directory ([`Tree::from_dir`]): modes, owners, symlinks, devices, FIFOs and sockets
//!   are recorded as they are on disk; symlinks are not followed; hard links become separate
//!   files (squashfs deduplicates identical contents anyway);
//! - a tar archive ([`Tree::from_tar`]), plain or gzip/xz/zstd-compressed (detected by magic
//!   bytes, [`crate::io::decompress`]), read by the same reader as OCI layers
//!   ([`crate::fs::tar`]): regular file contents are extracted into a temporary directory owned
//!   by the tree, while modes and owners stay in the listing (so no root privileges are
//!   needed); hard links become copies of an earlier entry; device nodes are kept.
//!
//! Not supported: extended attributes, ACLs, timestamps (every writer uses one fixed mtime for
//! reproducibility), bzip2 tar archives (no decoder among our dependencies; decompress them
//! first); tar entries that escape the root or write through a symlink are refused.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;

use crate::fs::tar::{read_tar, TarOptions, TarTarget};

/// Permission bits kept in [`Entry::mode`]: rwx for user/group/other plus setuid, setgid, sticky.
pub const PERMISSION_BITS: u32 = 0o7777;

/// Errors from building or editing a [`Tree`].
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A path given to the tree is not a clean path below `/`.
    #[error("path {path:?} is not valid in a tree: {reason}")]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Reading the host filesystem failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was attempted (`read directory`, `stat`, ...).
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry would be placed below something that is not a directory.
    #[error("cannot add {path}: its parent {parent} is not a directory in the tree")]
    NotADirectory {
        /// The path being added.
        path: PathBuf,
        /// The ancestor that is a file, symlink or special file.
        parent: PathBuf,
    },
    /// The root of the tree can only be a directory.
    #[error("cannot make the root `/` a non-directory (from {source_name})")]
    RootNotDirectory {
        /// Where the offending entry came from.
        source_name: String,
    },
    /// The source given to [`Tree::from_dir`] is not a directory.
    #[error("{path} is not a directory; hint: give the directory holding the tree")]
    SourceNotDirectory {
        /// The host path.
        path: PathBuf,
    },
    /// The tar archive is compressed with a format we cannot decode.
    #[error(
        "{archive} is {format}-compressed, which strata cannot read; \
         hint: decompress it first or recompress it with xz or zstd"
    )]
    UnsupportedCompression {
        /// The archive.
        archive: PathBuf,
        /// `gzip`, `bzip2`, ...
        format: &'static str,
    },
    /// A tar archive's entry was refused or could not be read (see [`crate::fs::tar`]).
    #[error(transparent)]
    Tar(Box<crate::fs::tar::TarError>),
}

/// Where a regular file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Streamed from this host file when the tree is written.
    Host(PathBuf),
    /// Held in memory; meant for small generated files (configuration, markers).
    Bytes(Vec<u8>),
}

impl FileData {
    /// The first `n` bytes (or fewer) of the contents, without reading the rest of a host file:
    /// enough to recognise a header (ELF, a YAML size check) in a tree of large files.
    pub fn head(&self, n: usize) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        match self {
            FileData::Bytes(b) => Ok(b[..b.len().min(n)].to_vec()),
            FileData::Host(path) => {
                let mut buf = Vec::with_capacity(n);
                std::fs::File::open(path)?
                    .take(n as u64)
                    .read_to_end(&mut buf)?;
                Ok(buf)
            }
        }
    }
}

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory; its children are the entries below its path.
    Dir,
    /// A regular file.
    File(FileData),
    /// A symbolic link with its target, stored verbatim (never resolved).
    Symlink(PathBuf),
    /// A character device node.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device node.
    BlockDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
}

/// One object of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What the object is.
    pub kind: EntryKind,
    /// Permission bits, including setuid/setgid/sticky ([`PERMISSION_BITS`]); no file type bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
}

impl Entry {
    /// A directory owned by root.
    pub fn dir(mode: u32) -> Self {
        Self::root_owned(EntryKind::Dir, mode)
    }

    /// A regular file streamed from `host` at write time, owned by root.
    pub fn host_file(host: impl Into<PathBuf>, mode: u32) -> Self {
        Self::root_owned(EntryKind::File(FileData::Host(host.into())), mode)
    }

    /// A regular file with in-memory contents, owned by root.
    pub fn bytes_file(bytes: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self::root_owned(EntryKind::File(FileData::Bytes(bytes.into())), mode)
    }

    /// A symlink owned by root with mode 0777 (the mode of a symlink is ignored by Linux).
    pub fn symlink(target: impl Into<PathBuf>) -> Self {
        Self::root_owned(EntryKind::Symlink(target.into()), 0o777)
    }

    /// Returns the entry with the given owner.
    pub fn owned_by(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Whether this entry is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    fn root_owned(kind: EntryKind, mode: u32) -> Self {
        Self {
            kind,
            mode: mode & PERMISSION_BITS,
            uid: 0,
            gid: 0,
        }
    }
}

/// A listing of a filesystem tree keyed by normalised absolute path (`/usr/bin/x`).
///
/// The root `/` always exists and is always a directory. Iteration is sorted by path
/// component, so a directory always comes before its contents.
#[derive(Debug, Clone)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
    /// Temporary directories holding contents extracted from archives; [`FileData::Host`]
    /// entries point into them, so they live as long as any clone of the tree.
    scratch: Vec<Arc<TempDir>>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty tree: only the root directory, mode 0755, owned by root.
    pub fn new() -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(PathBuf::from("/"), Entry::dir(0o755));
        Self {
            entries,
            scratch: Vec::new(),
        }
    }

    /// Lists the host directory `dir` recursively.
    ///
    /// The root entry takes the mode and owner of `dir` itself, as mksquashfs does; override it
    /// with [`Tree::insert`] of `/` if needed. File contents are referenced, not read.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TreeError> {
        let dir = dir.as_ref();
        let dir = std::path::absolute(dir).map_err(|e| io_err("resolve", dir, e))?;
        let meta = fs::symlink_metadata(&dir).map_err(|e| io_err("stat", &dir, e))?;
        if !meta.is_dir() {
            return Err(TreeError::SourceNotDirectory { path: dir });
        }
        let mut tree = Self::new();
        tree.entries
            .insert(PathBuf::from("/"), entry_from_metadata(&dir, &meta)?);
        let mut pending = vec![(dir, PathBuf::from("/"))];
        while let Some((host, inner)) = pending.pop() {
            for name in sorted_names(&host)? {
                let host_child = host.join(&name);
                let meta = fs::symlink_metadata(&host_child)
                    .map_err(|e| io_err("stat", &host_child, e))?;
                let entry = entry_from_metadata(&host_child, &meta)?;
                let inner_child = inner.join(&name);
                if entry.is_dir() {
                    pending.push((host_child, inner_child.clone()));
                }
                tree.entries.insert(inner_child, entry);
            }
        }
        Ok(tree)
    }

    /// Lists a tar archive, extracting regular file contents into a new temporary directory
    /// under the system temporary directory. See [`Tree::from_tar_in`].
    pub fn from_tar(archive: impl AsRef<Path>) -> Result<Self, TreeError> {
        Self::from_tar_in(archive, std::env::temp_dir())
    }

    /// Lists a tar archive, extracting regular file contents into a new temporary directory
    /// below `scratch_parent` (choose one on the same disk as the output for large layers).
    ///
    /// Later entries replace earlier ones with the same path, as `tar -x` does.
    pub fn from_tar_in(
        archive: impl AsRef<Path>,
        scratch_parent: impl AsRef<Path>,
    ) -> Result<Self, TreeError> {
        let archive = archive.as_ref();
        let parent = scratch_parent.as_ref();
        let scratch = TempDir::with_prefix_in("strata-tar-", parent)
            .map_err(|e| io_err("create temporary directory in", parent, e))?;
        let reader = open_maybe_compressed(archive)?;
        let mut tree = Self::new();
        let mut files = 0;
        let target = TarTarget {
            tree: &mut tree,
            contents_dir: scratch.path(),
            files: &mut files,
        };
        // A root filesystem may carry its /dev nodes; whiteouts mean nothing outside layers.
        let options = TarOptions {
            whiteouts: false,
            device_nodes: true,
        };
        let origin = format!("tar archive {}", archive.display());
        read_tar(reader, target, &origin, options).map_err(|e| TreeError::Tar(Box::new(e)))?;
        tree.scratch.push(Arc::new(scratch));
        Ok(tree)
    }

    /// Adds or replaces the entry at `path`, creating missing parent directories (mode 0755,
    /// owned by root).
    ///
    /// Replacing a directory by a non-directory removes everything below it; replacing a
    /// directory by a directory only updates its mode and owner.
    pub fn insert(&mut self, path: impl AsRef<Path>, entry: Entry) -> Result<(), TreeError> {
        let path = normalize(path.as_ref())?;
        let entry = Entry {
            mode: entry.mode & PERMISSION_BITS,
            ..entry
        };
        if path == Path::new("/") && !entry.is_dir() {
            return Err(TreeError::RootNotDirectory {
                source_name: "Tree::insert".into(),
            });
        }
        self.create_parents(&path)?;
        let is_dir = entry.is_dir();
        if let Some(old) = self.entries.insert(path.clone(), entry) {
            if old.is_dir() && !is_dir {
                self.remove_descendants(&path);
            }
        }
        Ok(())
    }

    /// The entry at `path`, if any (`None` as well for a path that cannot be normalised).
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Entry> {
        let path = normalize(path.as_ref()).ok()?;
        self.entries.get(&path)
    }

    /// Removes the entry at `path` and, for a directory, everything below it.
    ///
    /// Returns the removed entry. The root cannot be removed (`None`).
    pub fn remove(&mut self, path: impl AsRef<Path>) -> Option<Entry> {
        let path = normalize(path.as_ref()).ok()?;
        if path == Path::new("/") {
            return None;
        }
        let removed = self.entries.remove(&path)?;
        if removed.is_dir() {
            self.remove_descendants(&path);
        }
        Some(removed)
    }

    /// All entries, sorted by path component (parents before their children), root first.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Entry)> {
        self.entries
            .iter()
            .map(|(path, entry)| (path.as_path(), entry))
    }

    /// Number of entries, including the root.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: the root is always present. Provided for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps `dir` alive as long as this tree or any clone of it exists.
    ///
    /// For readers that extract file contents into a temporary directory (squashfs and erofs
    /// images): the tree's [`FileData::Host`] entries point into it.
    pub fn hold_scratch(&mut self, dir: TempDir) {
        self.scratch.push(Arc::new(dir));
    }

    /// Shares `other`'s temporary directories with this tree, so [`FileData::Host`] entries
    /// copied from `other` stay readable after `other` is dropped (flattening layers).
    pub fn share_scratch(&mut self, other: &Tree) {
        for dir in &other.scratch {
            if !self.scratch.iter().any(|held| Arc::ptr_eq(held, dir)) {
                self.scratch.push(Arc::clone(dir));
            }
        }
    }

    /// The temporary directories the tree's extracted contents live in (the step cache names
    /// a file there by its place inside, not by its inode, which changes every build).
    pub fn scratch_dirs(&self) -> impl Iterator<Item = &Path> {
        self.scratch.iter().map(|d| d.path())
    }

    /// Makes every entry owned by uid 0 and gid 0 (like `mksquashfs -all-root`).
    pub fn all_root(&mut self) {
        for entry in self.entries.values_mut() {
            entry.uid = 0;
            entry.gid = 0;
        }
    }

    fn create_parents(&mut self, path: &Path) -> Result<(), TreeError> {
        let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        ancestors.reverse();
        for parent in ancestors {
            match self.entries.get(parent) {
                Some(entry) if entry.is_dir() => {}
                Some(_) => {
                    return Err(TreeError::NotADirectory {
                        path: path.to_path_buf(),
                        parent: parent.to_path_buf(),
                    })
                }
                None => {
                    self.entries.insert(parent.to_path_buf(), Entry::dir(0o755));
                }
            }
        }
        Ok(())
    }

    fn remove_descendants(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = self
            .entries
            .range::<Path, _>((Bound::Excluded(dir), Bound::Unbounded))
            .map(|(path, _)| path)
            .take_while(|path| path.starts_with(dir))
            .cloned()
            .collect();
        for path in below {
            self.entries.remove(&path);
        }
    }
}

/// Normalises `path` to an absolute path without `.`, empty components or trailing slash.
///
/// `usr/bin/`, `/usr//bin` and `./usr/bin` all become `/usr/bin`; the empty path is `/`.
/// Paths with `..` or NUL bytes are refused, so no entry can name something outside the tree.
pub fn normalize(path: &Path) -> Result<PathBuf, TreeError> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(invalid(path, "it contains a NUL byte"));
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir => return Err(invalid(path, "it contains `..`")),
            Component::Prefix(_) => return Err(invalid(path, "it has a Windows prefix")),
        }
    }
    Ok(out)
}

fn invalid(path: &Path, reason: &'static str) -> TreeError {
    TreeError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> TreeError {
    TreeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Names in `dir`, sorted bytewise so the walk order never depends on the filesystem.
fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>, TreeError> {
    let mut names = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| io_err("read directory", dir, e))? {
        names.push(
            item.map_err(|e| io_err("read directory", dir, e))?
                .file_name(),
        );
    }
    names.sort();
    Ok(names)
}

/// Builds the entry for the host object at `path` from its (not followed) metadata.
fn entry_from_metadata(path: &Path, meta: &fs::Metadata) -> Result<Entry, TreeError> {
    let file_type = meta.file_type();
    let (major, minor) = split_dev(meta.rdev());
    let kind = if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File(FileData::Host(path.to_path_buf()))
    } else if file_type.is_symlink() {
        EntryKind::Symlink(fs::read_link(path).map_err(|e| io_err("read symlink", path, e))?)
    } else if file_type.is_char_device() {
        EntryKind::CharDev { major, minor }
    } else if file_type.is_block_device() {
        EntryKind::BlockDev { major, minor }
    } else if file_type.is_fifo() {
        EntryKind::Fifo
    } else {
        EntryKind::Socket
    };
    Ok(Entry {
        kind,
        mode: meta.mode() & PERMISSION_BITS,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Splits a Linux `dev_t` into major and minor (glibc's `gnu_dev_major`/`gnu_dev_minor`).
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    // Both expressions keep at most 32 significant bits.
    (major as u32, minor as u32)
}

/// Opens `archive` through the decoder its magic bytes call for; bzip2 is refused with a hint.
fn open_maybe_compressed(archive: &Path) -> Result<Box<dyn Read>, TreeError> {
    use crate::io::decompress::{self, Format};
    let mut head = [0u8; 3];
    let mut file = File::open(archive).map_err(|e| io_err("open", archive, e))?;
    let got =
        crate::io::read_up_to(&mut file, &mut head).map_err(|e| io_err("read", archive, e))?;
    if Format::of_magic(&head[..got]) == Format::Bzip2 {
        return Err(TreeError::UnsupportedCompression {
            archive: archive.to_path_buf(),
            format: Format::Bzip2.name(),
        });
    }
    let (_, reader) = decompress::open(archive).map_err(|e| io_err("open", archive, e))?;
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn kinds(tree: &Tree) -> Vec<(String, String)> {
        tree.iter()
            .map(|(p, e)| {
                let kind = match &e.kind {
                    EntryKind::Dir => "dir".to_string(),
                    EntryKind::File(_) => "file".to_string(),
                    EntryKind::Symlink(t) => format!("-> {}", t.display()),
                    EntryKind::CharDev { major, minor } => format!("c {major},{minor}"),
                    EntryKind::BlockDev { major, minor } => format!("b {major},{minor}"),
                    EntryKind::Fifo => "fifo".into(),
                    EntryKind::Socket => "sock".into(),
                };
                (
                    p.display().to_string(),
                    format!("{kind} {:o} {}:{}", e.mode, e.uid, e.gid),
                )
            })
            .collect()
    }

    fn file_contents(tree: &Tree, path: &str) -> Vec<u8> {
        match &tree.get(path).map(|e| &e.kind) {
            Some(EntryKind::File(FileData::Host(host))) => fs::read(host).unwrap(),
            Some(EntryKind::File(FileData::Bytes(b))) => b.clone(),
            other => panic!("{path} is not a file: {other:?}"),
        }
    }

    #[test]
    fn normalize_cleans_and_refuses() {
        assert_eq!(
            normalize(Path::new("usr//bin/./x/")).unwrap(),
            Path::new("/usr/bin/x")
        );
        assert_eq!(normalize(Path::new("")).unwrap(), Path::new("/"));
        assert_eq!(normalize(Path::new("/")).unwrap(), Path::new("/"));
        let err = normalize(Path::new("/usr/../etc")).unwrap_err().to_string();
        assert_eq!(
            err,
            "path \"/usr/../etc\" is not valid in a tree: it contains `..`"
        );
    }

    #[test]
    fn insert_creates_parents_and_iter_is_sorted() {
        let mut tree = Tree::new();
        tree.insert(
            "usr/bin/x",
            Entry::bytes_file(b"x".to_vec(), 0o4755).owned_by(1, 2),
        )
        .unwrap();
        tree.insert("/usr-local", Entry::dir(0o700)).unwrap();
        tree.insert("/usr/a", Entry::symlink("bin/x")).unwrap();
        let got = kinds(&tree);
        let want = [
            ("/", "dir 755 0:0"),
            ("/usr", "dir 755 0:0"),
            ("/usr/a", "-> bin/x 777 0:0"),
            ("/usr/bin", "dir 755 0:0"),
            ("/usr/bin/x", "file 4755 1:2"),
            ("/usr-local", "dir 700 0:0"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(tree.len(), 6);
    }

    #[test]
    fn insert_below_a_file_fails_naming_both() {
        let mut tree = Tree::new();
        tree.insert("/etc", Entry::bytes_file(Vec::new(), 0o644))
            .unwrap();
        let err = tree
            .insert("/etc/passwd", Entry::dir(0o755))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cannot add /etc/passwd: its parent /etc is not a directory in the tree"
        );
    }

    #[test]
    fn replacing_a_dir_by_a_file_drops_its_children_and_remove_is_recursive() {
        let mut tree = Tree::new();
        tree.insert("/a/b/c", Entry::dir(0o755)).unwrap();
        tree.insert("/a/b/c/f", Entry::bytes_file(vec![1], 0o644))
            .unwrap();
        tree.insert("/a/bb", Entry::dir(0o755)).unwrap();
        tree.insert("/a/b", Entry::dir(0o700)).unwrap();
        assert!(
            tree.get("/a/b/c/f").is_some(),
            "dir over dir keeps children"
        );
        assert_eq!(tree.get("a/b").unwrap().mode, 0o700);
        tree.insert("/a/b", Entry::bytes_file(vec![2], 0o600))
            .unwrap();
        assert!(tree.get("/a/b/c").is_none());
        assert!(
            tree.get("/a/bb").is_some(),
            "a sibling sharing a prefix survives"
        );
        let removed = tree.remove("/a").unwrap();
        assert!(removed.is_dir());
        assert_eq!(tree.len(), 1);
        assert!(tree.remove("/").is_none());
        assert!(tree.insert("/", Entry::symlink("x")).is_err());
    }

    #[test]
    fn all_root_clears_owners() {
        let mut tree = Tree::new();
        tree.insert("/x", Entry::dir(0o755).owned_by(5, 6)).unwrap();
        tree.all_root();
        assert!(tree.iter().all(|(_, e)| e.uid == 0 && e.gid == 0));
    }

    #[test]
    fn from_dir_lists_kinds_modes_and_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(root.join("b/sub")).unwrap();
        fs::write(root.join("b/sub/f"), b"hello").unwrap();
        fs::set_permissions(root.join("b/sub/f"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::hard_link(root.join("b/sub/f"), root.join("a-hard")).unwrap();
        std::os::unix::fs::symlink("../nowhere", root.join("b/dangling")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        let tree = Tree::from_dir(root).unwrap();
        let got: Vec<_> = kinds(&tree)
            .into_iter()
            .map(|(p, k)| format!("{p} {k}"))
            .collect();
        let (uid, gid) = (
            fs::metadata(root).unwrap().uid(),
            fs::metadata(root).unwrap().gid(),
        );
        let id = format!("{uid}:{gid}");
        let want = vec![
            format!("/ dir 755 {id}"),
            format!("/a-hard file 4750 {id}"),
            format!("/b dir 755 {id}"),
            format!("/b/dangling -> ../nowhere 777 {id}"),
            format!("/b/sub dir 755 {id}"),
            format!("/b/sub/f file 4750 {id}"),
            format!("/sock sock 755 {id}"),
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(&want) {
            // The socket's mode depends on the umask; compare everything but it.
            if w.starts_with("/sock") {
                assert!(g.starts_with("/sock sock "), "{g}");
            } else {
                assert_eq!(g, w);
            }
        }
        assert_eq!(file_contents(&tree, "/a-hard"), b"hello");
    }

    #[test]
    fn from_dir_refuses_a_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = Tree::from_dir(file.path()).unwrap_err();
        assert!(matches!(err, TreeError::SourceNotDirectory { .. }), "{err}");
    }

    /// Appends one raw ustar entry with an arbitrary (possibly hostile) name.
    fn raw_entry(
        out: &mut Vec<u8>,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        data: &[u8],
        mode: u32,
        ids: (u64, u64),
    ) {
        let mut header = tar::Header::new_ustar();
        {
            let bytes = header.as_old_mut();
            bytes.name[..name.len()].copy_from_slice(name);
            bytes.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(ids.0);
        header.set_gid(ids.1);
        header.set_mtime(0);
        header
            .set_device_major(if kind == tar::EntryType::Char { 1 } else { 0 })
            .unwrap();
        header
            .set_device_minor(if kind == tar::EntryType::Char { 3 } else { 0 })
            .unwrap();
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn write_tar(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(&[0; 1024]);
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn from_tar_keeps_metadata_and_copies_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = Vec::new();
        let t = tar::EntryType::Regular;
        raw_entry(
            &mut body,
            b"./",
            tar::EntryType::Directory,
            b"",
            b"",
            0o751,
            (0, 0),
        );
        raw_entry(
            &mut body,
            b"./etc/shadow",
            t,
            b"",
            b"secret",
            0o640,
            (0, 42),
        );
        raw_entry(&mut body, b"bin/su", t, b"", b"su!", 0o4755, (0, 0));
        raw_entry(
            &mut body,
            b"bin/su2",
            tar::EntryType::Link,
            b"./bin/su",
            b"",
            0o4755,
            (0, 0),
        );
        raw_entry(
            &mut body,
            b"bin/sh",
            tar::EntryType::Symlink,
            b"/bin/busybox",
            b"",
            0o777,
            (0, 0),
        );
        raw_entry(
            &mut body,
            b"dev/null",
            tar::EntryType::Char,
            b"",
            b"",
            0o666,
            (0, 0),
        );
        raw_entry(
            &mut body,
            b"dev/fifo",
            tar::EntryType::Fifo,
            b"",
            b"",
            0o600,
            (7, 8),
        );
        raw_entry(&mut body, b"bin/su", t, b"", b"later wins", 0o4711, (0, 0));
        let archive = write_tar(dir.path(), "a.tar", &body);
        let tree = Tree::from_tar_in(&archive, dir.path()).unwrap();
        let got: Vec<_> = kinds(&tree)
            .into_iter()
            .map(|(p, k)| format!("{p} {k}"))
            .collect();
        assert_eq!(
            got,
            [
                "/ dir 751 0:0",
                "/bin dir 755 0:0",
                "/bin/sh -> /bin/busybox 777 0:0",
                "/bin/su file 4711 0:0",
                "/bin/su2 file 4755 0:0",
                "/dev dir 755 0:0",
                "/dev/fifo fifo 600 7:8",
                "/dev/null c 1,3 666 0:0",
                "/etc dir 755 0:0",
                "/etc/shadow file 640 0:42",
            ]
        );
        assert_eq!(file_contents(&tree, "/etc/shadow"), b"secret");
        assert_eq!(file_contents(&tree, "/bin/su"), b"later wins");
        assert_eq!(file_contents(&tree, "/bin/su2"), b"su!");
        let scratch = tree.scratch[0].path().to_path_buf();
        let copy = tree.clone();
        drop(tree);
        assert!(
            scratch.exists(),
            "a clone keeps the extracted contents alive"
        );
        drop(copy);
        assert!(
            !scratch.exists(),
            "the last clone removes the extracted contents"
        );
    }

    #[test]
    fn from_tar_reads_builder_output_with_long_names_devices_and_compression() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o600);
        header.set_uid(3_000_000);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, &long, &b"abc"[..])
            .unwrap();
        builder
            .append_pax_extensions([("uid", &b"4000000"[..]), ("gid", b"4000001")])
            .unwrap();
        let mut pax = tar::Header::new_ustar();
        pax.set_size(0);
        pax.set_mode(0o644);
        pax.set_uid(1);
        pax.set_gid(1);
        builder
            .append_data(&mut pax, "pax-owned", io::empty())
            .unwrap();
        let mut dev = tar::Header::new_gnu();
        dev.set_uid(0);
        dev.set_gid(0);
        dev.set_entry_type(tar::EntryType::Block);
        dev.set_device_major(8).unwrap();
        dev.set_device_minor(17).unwrap();
        dev.set_mode(0o660);
        dev.set_size(0);
        builder
            .append_data(&mut dev, "dev/sdb1", io::empty())
            .unwrap();
        let plain = builder.into_inner().unwrap();

        let xz = {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
            enc.write_all(&plain).unwrap();
            enc.finish().unwrap()
        };
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        for (name, bytes) in [("p.tar", &plain), ("x.tar.xz", &xz), ("z.tar.zst", &zst)] {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            let tree = Tree::from_tar(&path).unwrap();
            let entry = tree.get(format!("/{long}")).unwrap();
            assert_eq!((entry.mode, entry.uid), (0o600, 3_000_000), "{name}");
            assert_eq!(file_contents(&tree, &format!("/{long}")), b"abc", "{name}");
            let pax = tree.get("/pax-owned").unwrap();
            assert_eq!((pax.uid, pax.gid), (4_000_000, 4_000_001), "{name}");
            let dev = tree.get("/dev/sdb1").unwrap();
            assert_eq!(
                dev.kind,
                EntryKind::BlockDev {
                    major: 8,
                    minor: 17
                },
                "{name}"
            );
        }
    }

    #[test]
    fn from_tar_refuses_hostile_entries_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = tar::EntryType::Regular;
        let cases: [(&[u8], tar::EntryType, &[u8], &str); 5] = [
            (b"../evil", r, b"", "entry \"../evil\" escapes the root"),
            (b"a/../../evil", r, b"", "entry \"a/../../evil\" escapes"),
            (b"/etc/passwd", r, b"", "entry \"/etc/passwd\" escapes"),
            (
                b"x",
                tar::EntryType::Link,
                b"../../etc/shadow",
                "hard link \"x\" points to \"../../etc/shadow\", which escapes the root",
            ),
            (
                b"y",
                tar::EntryType::Link,
                b"missing",
                "hard link \"y\" points to \"missing\", which is not an earlier entry",
            ),
        ];
        for (i, (name, kind, link, want)) in cases.into_iter().enumerate() {
            let mut body = Vec::new();
            raw_entry(&mut body, name, kind, link, b"data", 0o644, (0, 0));
            let archive = write_tar(dir.path(), &format!("{i}.tar"), &body);
            let err = Tree::from_tar(&archive).unwrap_err().to_string();
            let origin = format!("tar archive {}: ", archive.display());
            assert!(err.starts_with(&origin), "{err}");
            assert!(err[origin.len()..].starts_with(want), "{err}");
        }
        let mut body = Vec::new();
        raw_entry(
            &mut body,
            b"link",
            tar::EntryType::Symlink,
            b"/etc",
            b"",
            0o777,
            (0, 0),
        );
        raw_entry(&mut body, b"link/passwd", r, b"", b"x", 0o644, (0, 0));
        let archive = write_tar(dir.path(), "through-symlink.tar", &body);
        let err = Tree::from_tar(&archive).unwrap_err().to_string();
        assert!(
            err.contains(": entry \"link/passwd\" lies below symlink /link"),
            "{err}"
        );
    }

    #[test]
    fn from_tar_matches_from_dir_for_gnu_tar_archives() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let deep = src.join("d".repeat(90)).join("e".repeat(90));
        fs::create_dir_all(&deep).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(deep.join("f".repeat(120)), b"long name").unwrap();
        fs::write(src.join("suid"), b"s").unwrap();
        fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4711)).unwrap();
        fs::hard_link(src.join("suid"), src.join("suid-link")).unwrap();
        std::os::unix::fs::symlink("suid", src.join("sym")).unwrap();
        let from_dir = Tree::from_dir(&src).unwrap();
        if !crate::test_support::require_tool("tar") {
            return;
        }
        for format in ["gnu", "pax", "ustar"] {
            let archive = dir.path().join(format!("{format}.tar"));
            let status = Command::new("tar")
                .arg(format!("--format={format}"))
                .arg("-C")
                .arg(&src)
                .arg("-cf")
                .arg(&archive)
                .arg(".")
                .status()
                .expect("run tar");
            if format == "ustar" {
                // ustar cannot store the 120-byte name: tar must fail, not truncate.
                assert!(!status.success());
                continue;
            }
            assert!(status.success(), "tar --format={format}");
            let from_tar = Tree::from_tar(&archive).unwrap();
            assert_eq!(kinds(&from_tar), kinds(&from_dir), "{format}");
            for (path, entry) in from_dir.iter() {
                if let EntryKind::File(_) = entry.kind {
                    let p = path.to_str().unwrap();
                    assert_eq!(file_contents(&from_tar, p), file_contents(&from_dir, p));
                }
            }
        }
    }

    #[test]
    fn from_tar_refuses_bzip2_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.bz2");
        fs::write(&path, b"BZh91AY&SY\0\0").unwrap();
        let err = Tree::from_tar(&path).unwrap_err().to_string();
        assert!(
            err.contains("is bzip2-compressed") && err.contains("hint:"),
            "{err}"
        );
    }

    /// Like OCI layers, a gzip'd `rootfs: {tar: …}` is read (it used to be refused).
    #[test]
    fn from_tar_reads_gzip() {
        use std::io::Write;
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "etc/hi", &b"hi"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar.gz");
        fs::write(&path, gz.finish().unwrap()).unwrap();
        let tree = Tree::from_tar(&path).unwrap();
        assert_eq!(file_contents(&tree, "/etc/hi"), b"hi");
    }
}
