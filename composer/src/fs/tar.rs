//! Reading a tar stream into a [`Tree`]: the one tar reader, for `rootfs: {tar: …}`
//! ([`Tree::from_tar`]) and for OCI image layers (`source::oci::unpack`, with whiteouts).
//!
//! Supported: ustar, GNU and PAX headers, including long names and PAX `uid`/`gid` (ids above
//! 2^21); modes (with setuid/setgid/sticky) and owners are kept as numbers, so no root
//! privileges are needed. Regular file contents are streamed into a contents directory the
//! caller keeps alive as long as the tree, never held in memory. A hard link becomes a copy of
//! its target's entry (squashfs deduplicates). Later entries replace earlier ones with the same
//! path, as `tar -x` does. With [`TarOptions::whiteouts`], OCI whiteouts: `.wh.<name>` hides
//! `<name>` from lower layers, `.wh..wh..opq` hides everything lower layers put in its
//! directory (entries of the same layer stay), other `.wh..wh.` aufs metadata is skipped.
//!
//! Refused, naming the origin and the entry: names with `..` or a leading `/`; hard links whose
//! target has `..`, a leading `/`, is a directory or is not an earlier entry; any entry below a
//! symlink (writing through a symlink could land anywhere once the symlink is resolved); ids
//! above 32 bits; device nodes unless [`TarOptions::device_nodes`] (a root filesystem may ship
//! `/dev` entries; extensions and images must not). Symlink *targets* are stored verbatim,
//! absolute or not: they are resolved inside the guest.
//!
//! Not supported: extended attributes (file capabilities are lost), timestamps (every writer
//! uses a fixed mtime).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::fs::tree::{Entry, EntryKind, FileData, Tree, TreeError, PERMISSION_BITS};

/// Name prefix of whiteout files.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of aufs metadata entries, which carry nothing for the flattened tree.
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// What a tar stream may hold beyond plain files, directories, symlinks, hard links and FIFOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarOptions {
    /// Apply OCI whiteouts to what the tree held before this stream (image layers).
    pub whiteouts: bool,
    /// Keep character and block device nodes instead of refusing them.
    pub device_nodes: bool,
}

/// Errors from reading a tar stream. `origin` names the stream: `tar archive /x/rootfs.tar`,
/// `layer sha256:… (2 of 3)`.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// A device node where none is allowed.
    #[error(
        "{origin}: entry {entry:?} is a {kind} device node, which strata refuses; hint: create \
         device nodes at boot (devtmpfs) instead of shipping them"
    )]
    DeviceNode {
        /// The stream.
        origin: String,
        /// The entry name as stored.
        entry: PathBuf,
        /// `character` or `block`.
        kind: &'static str,
    },
    /// An entry name that would land outside the root.
    #[error(
        "{origin}: entry {entry:?} escapes the root (absolute path or `..`); hint: re-create \
         the archive with relative paths (tar -C DIR -cf ARCHIVE .)"
    )]
    EscapingEntry {
        /// The stream.
        origin: String,
        /// The entry name as stored.
        entry: PathBuf,
    },
    /// A hard link whose target is outside the root or not an earlier entry.
    #[error(
        "{origin}: hard link {entry:?} points to {target:?}, which {reason}; hint: hard links \
         must name an earlier file of the archive by its path from the root"
    )]
    HardlinkTarget {
        /// The stream.
        origin: String,
        /// The link's name.
        entry: PathBuf,
        /// The target as stored.
        target: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An entry field does not fit the tree's 32-bit fields.
    #[error("{origin}: entry {entry:?} has {field} {value}, above the 32-bit limit")]
    HeaderOverflow {
        /// The stream.
        origin: String,
        /// The entry.
        entry: PathBuf,
        /// `uid` or `gid`.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Writing extracted contents failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The tar stream is malformed or truncated, or decompression failed.
    #[error("{origin}: cannot read the tar stream{}: {source}", entry_suffix(.entry))]
    Tar {
        /// The stream.
        origin: String,
        /// The entry being read, when known.
        entry: Option<PathBuf>,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry lies below a symlink of the tree.
    #[error(
        "{origin}: entry {entry:?} lies below symlink {symlink}, and writing through symlinks is \
         refused; hint: put the entry at the symlink's target path instead"
    )]
    ThroughSymlink {
        /// The stream.
        origin: String,
        /// The entry name as stored.
        entry: PathBuf,
        /// The symlink in the tree.
        symlink: PathBuf,
    },
    /// The tree refused the entry (e.g. its parent is a regular file).
    #[error("{origin}: cannot apply entry {entry:?}: {source}")]
    Tree {
        /// The stream.
        origin: String,
        /// The entry name as stored.
        entry: PathBuf,
        /// The cause (boxed: tree errors are large).
        #[source]
        source: Box<TreeError>,
    },
    /// A tar entry type a filesystem tree cannot hold.
    #[error("{origin}: entry {entry:?} has unsupported tar type {kind:?}")]
    UnsupportedEntry {
        /// The stream.
        origin: String,
        /// The entry.
        entry: PathBuf,
        /// The tar type flag as a character.
        kind: char,
    },
}

fn entry_suffix(entry: &Option<PathBuf>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" at entry {e:?}"))
        .unwrap_or_default()
}

/// Where a tar stream's entries go.
pub struct TarTarget<'a> {
    /// The tree the entries are added to (on top of what it holds, for layers).
    pub tree: &'a mut Tree,
    /// Where regular file contents are written; must outlive the tree.
    pub contents_dir: &'a Path,
    /// Files extracted so far into `contents_dir` (shared by the layers of one image);
    /// names the content files.
    pub files: &'a mut u64,
}

/// Reads every entry of the tar stream `reader` into `target.tree`. `origin` names the stream
/// in errors.
pub fn read_tar(
    reader: impl Read,
    target: TarTarget<'_>,
    origin: &str,
    options: TarOptions,
) -> Result<(), TarError> {
    let mut loader = Loader {
        origin,
        options,
        target,
        added: HashSet::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| loader.tar_err(None, e))?;
    for item in entries {
        let entry = item.map_err(|e| loader.tar_err(None, e))?;
        loader.add(entry)?;
    }
    Ok(())
}

/// A tar entry's owner: the header's uid/gid, overridden by PAX `uid`/`gid`
/// records (ids above 2^21).
pub fn tar_owner<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<(u64, u64)> {
    let header = entry.header();
    let mut uid = header.uid()?;
    let mut gid = header.gid()?;
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let value = std::str::from_utf8(ext.value_bytes())
                .ok()
                .and_then(|v| v.parse().ok());
            match (ext.key_bytes(), value) {
                (b"uid", Some(v)) => uid = v,
                (b"gid", Some(v)) => gid = v,
                _ => {}
            }
        }
    }
    Ok((uid, gid))
}

/// `/`-rooted form of a tar name; `None` if it is absolute or has `..` anywhere.
fn normalize_relative(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in raw.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// State while reading one stream.
struct Loader<'a> {
    origin: &'a str,
    options: TarOptions,
    target: TarTarget<'a>,
    /// Paths this stream created, and their ancestors: whiteouts and opaque markers only hide
    /// what lower layers put there.
    added: HashSet<PathBuf>,
}

impl Loader<'_> {
    fn add<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), TarError> {
        let raw = entry
            .path()
            .map_err(|e| self.tar_err(None, e))?
            .into_owned();
        let path = self.inside(&raw)?;
        if self.options.whiteouts {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if name.starts_with(WHITEOUT_PREFIX) {
                    return self.whiteout(&path, name, &raw);
                }
            }
        }
        self.check_no_symlink_above(&path, &raw)?;
        let header = entry.header().clone();
        let mode = header.mode().map_err(|e| self.tar_err(Some(&raw), e))? & PERMISSION_BITS;
        let (uid, gid) = self.owner(&mut entry, &raw)?;
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                EntryKind::File(FileData::Host(self.extract(&mut entry, &raw)?))
            }
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(self.link_name(&entry, &raw)?),
            tar::EntryType::Link => return self.hardlink(&entry, &raw, path),
            tar::EntryType::Fifo => EntryKind::Fifo,
            tar::EntryType::Char => {
                let (major, minor) = self.device(&header, &raw, "character")?;
                EntryKind::CharDev { major, minor }
            }
            tar::EntryType::Block => {
                let (major, minor) = self.device(&header, &raw, "block")?;
                EntryKind::BlockDev { major, minor }
            }
            // Global PAX headers carry defaults such as comments; nothing to list.
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => {
                return Err(TarError::UnsupportedEntry {
                    origin: self.origin.to_string(),
                    entry: raw,
                    kind: char::from(other.as_byte()),
                })
            }
        };
        let new = Entry {
            kind,
            mode,
            uid,
            gid,
        };
        self.insert(path, new, &raw)
    }

    /// The absolute in-tree path of an entry name, refusing escapes.
    fn inside(&self, raw: &Path) -> Result<PathBuf, TarError> {
        normalize_relative(raw).ok_or_else(|| self.escaping(raw))
    }

    fn escaping(&self, raw: &Path) -> TarError {
        TarError::EscapingEntry {
            origin: self.origin.to_string(),
            entry: raw.to_path_buf(),
        }
    }

    /// Handles `.wh.<name>` and `.wh..wh..opq`; whiteouts are never added to the tree.
    fn whiteout(&mut self, path: &Path, name: &str, raw: &Path) -> Result<(), TarError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if name == OPAQUE_MARKER {
            return self.make_opaque(parent, raw);
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(self.escaping(raw));
        }
        let target = parent.join(hidden);
        if !self.added.contains(&target) {
            self.target.tree.remove(&target);
        }
        Ok(())
    }

    /// Removes what lower layers put below `dir`, keeping this layer's entries.
    fn make_opaque(&mut self, dir: &Path, raw: &Path) -> Result<(), TarError> {
        self.check_no_symlink_above(&dir.join(OPAQUE_MARKER), raw)?;
        let lower: Vec<PathBuf> = self
            .target
            .tree
            .iter()
            .map(|(p, _)| p)
            .filter(|p| p.starts_with(dir) && *p != dir && !self.added.contains(*p))
            .map(Path::to_path_buf)
            .collect();
        for path in lower {
            self.target.tree.remove(&path);
        }
        if self.target.tree.get(dir).is_none_or(|e| !e.is_dir()) {
            self.insert(dir.to_path_buf(), Entry::dir(0o755), raw)?;
        }
        Ok(())
    }

    /// Refuses entries whose parent chain holds a symlink of the tree.
    fn check_no_symlink_above(&self, path: &Path, raw: &Path) -> Result<(), TarError> {
        for ancestor in path.ancestors().skip(1) {
            if let Some(Entry {
                kind: EntryKind::Symlink(_),
                ..
            }) = self.target.tree.get(ancestor)
            {
                return Err(TarError::ThroughSymlink {
                    origin: self.origin.to_string(),
                    entry: raw.to_path_buf(),
                    symlink: ancestor.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: PathBuf, entry: Entry, raw: &Path) -> Result<(), TarError> {
        if path == Path::new("/") && !entry.is_dir() {
            return Err(self.escaping(raw));
        }
        self.target
            .tree
            .insert(&path, entry)
            .map_err(|source| TarError::Tree {
                origin: self.origin.to_string(),
                entry: raw.to_path_buf(),
                source: Box::new(source),
            })?;
        for ancestor in path.ancestors() {
            if !self.added.insert(ancestor.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    /// A hard link becomes a copy of its target's entry, which must already be in the tree.
    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        raw: &Path,
        path: PathBuf,
    ) -> Result<(), TarError> {
        let target_raw = self.link_name(entry, raw)?;
        let refuse = |reason| TarError::HardlinkTarget {
            origin: self.origin.to_string(),
            entry: raw.to_path_buf(),
            target: target_raw.clone(),
            reason,
        };
        let target = normalize_relative(&target_raw).ok_or_else(|| refuse("escapes the root"))?;
        let copy = match self.target.tree.get(&target) {
            Some(found) if !found.is_dir() => found.clone(),
            Some(_) => return Err(refuse("is a directory")),
            None => return Err(refuse("is not an earlier entry of the archive")),
        };
        self.check_no_symlink_above(&path, raw)?;
        self.insert(path, copy, raw)
    }

    fn link_name<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<PathBuf, TarError> {
        let name = entry.link_name().map_err(|e| self.tar_err(Some(raw), e))?;
        Ok(name.map(|n| n.into_owned()).unwrap_or_default())
    }

    /// Owner from the header, overridden by PAX `uid`/`gid` records (ids above 2^21).
    fn owner<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<(u32, u32), TarError> {
        let (uid, gid) = tar_owner(entry).map_err(|e| self.tar_err(Some(raw), e))?;
        Ok((self.fit(uid, "uid", raw)?, self.fit(gid, "gid", raw)?))
    }

    fn fit(&self, value: u64, field: &'static str, raw: &Path) -> Result<u32, TarError> {
        u32::try_from(value).map_err(|_| TarError::HeaderOverflow {
            origin: self.origin.to_string(),
            entry: raw.to_path_buf(),
            field,
            value,
        })
    }

    /// Major and minor of a device node, or the refusal when device nodes are not allowed.
    fn device(
        &self,
        header: &tar::Header,
        raw: &Path,
        kind: &'static str,
    ) -> Result<(u32, u32), TarError> {
        if !self.options.device_nodes {
            return Err(TarError::DeviceNode {
                origin: self.origin.to_string(),
                entry: raw.to_path_buf(),
                kind,
            });
        }
        let major = header
            .device_major()
            .map_err(|e| self.tar_err(Some(raw), e))?;
        let minor = header
            .device_minor()
            .map_err(|e| self.tar_err(Some(raw), e))?;
        Ok((major.unwrap_or(0), minor.unwrap_or(0)))
    }

    /// Streams a regular file's contents to a new file in the contents directory.
    fn extract<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<PathBuf, TarError> {
        let (dest, mut out) = loop {
            *self.target.files += 1;
            let dest = self
                .target
                .contents_dir
                .join(format!("{:08}", self.target.files));
            match File::create_new(&dest) {
                Ok(file) => break (dest, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(TarError::Io {
                        op: "create",
                        path: dest,
                        source,
                    })
                }
            }
        };
        io::copy(entry, &mut out).map_err(|e| self.tar_err(Some(raw), e))?;
        Ok(dest)
    }

    fn tar_err(&self, entry: Option<&Path>, source: io::Error) -> TarError {
        TarError::Tar {
            origin: self.origin.to_string(),
            entry: entry.map(Path::to_path_buf),
            source,
        }
    }
}
