//! Applying image layers, bottom first, to a [`Tree`], the way overlayfs would stack them.
//!
//! Supported: plain, gzip, zstd (and xz) layer tars, detected by their magic bytes (the media
//! type only decides whether a blob is a layer at all); OCI whiteouts: `.wh.<name>` hides
//! `<name>` from lower layers, `.wh..wh..opq` hides everything lower layers put in its
//! directory (entries of the same layer stay); ustar, GNU and PAX headers including long names
//! and PAX `uid`/`gid`; modes (with setuid/setgid/sticky) and owners are kept as numbers, so no
//! root privileges are needed. Regular file contents are streamed into a scratch directory, never
//! held in memory. A hard link becomes a copy of its target's entry (squashfs deduplicates).
//!
//! Refused, naming the layer and the entry: names with `..` or a leading `/`; hard links whose
//! target has `..`, a leading `/`, or is not an earlier file, symlink or FIFO; any entry below a
//! symlink (writing through a symlink could land anywhere once the symlink is resolved);
//! character and block devices (extensions must not ship device nodes); encrypted layers.
//! Symlink *targets* are stored verbatim, absolute or not: they are resolved inside the guest.
//!
//! Not supported: extended attributes (file capabilities are lost), timestamps (every writer
//! uses a fixed mtime), the aufs `.wh..wh.plnk` hard-link directory (its entries are skipped).
//!
//! [`Tree`]: crate::fs::tree::Tree

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use tempfile::TempDir;

use super::image::LayerBlob;
use crate::fs::tree::{Entry, EntryKind, FileData, Tree, TreeError, PERMISSION_BITS};

/// Name prefix of whiteout files.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of aufs metadata entries, which carry nothing for the flattened tree.
const AUFS_META_PREFIX: &str = ".wh..wh.";

/// Errors from applying layers. `layer` reads like `layer sha256:… (2 of 3)`.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A device node: extensions and images built by strata never need one.
    #[error(
        "{layer}: entry {entry:?} is a {kind} device node, which strata refuses; hint: create \
         device nodes at boot (devtmpfs) instead of shipping them"
    )]
    DeviceNode {
        /// The layer.
        layer: String,
        /// The entry name as stored.
        entry: PathBuf,
        /// `character` or `block`.
        kind: &'static str,
    },
    /// An entry name that would land outside the root.
    #[error(
        "{layer}: entry {entry:?} escapes the root (absolute path or `..`); hint: rebuild the \
         image with relative paths"
    )]
    EscapingEntry {
        /// The layer.
        layer: String,
        /// The entry name as stored.
        entry: PathBuf,
    },
    /// A hard link whose target is outside the root or not an earlier entry.
    #[error(
        "{layer}: hard link {entry:?} points to {target:?}, which {reason}; hint: hard links \
         must name an earlier file of the image by its path from the root"
    )]
    HardlinkTarget {
        /// The layer.
        layer: String,
        /// The link's name.
        entry: PathBuf,
        /// The target as stored.
        target: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An entry field does not fit the tree's 32-bit fields.
    #[error("{layer}: entry {entry:?} has {field} {value}, above the 32-bit limit")]
    HeaderOverflow {
        /// The layer.
        layer: String,
        /// The entry.
        entry: PathBuf,
        /// `uid` or `gid`.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Reading the blob or writing extracted contents failed.
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
    /// The blob is not a filesystem layer (an artifact, a signature, an encrypted layer).
    #[error(
        "{layer} has media type {media_type:?}, which is not a filesystem layer strata can \
         apply; hint: use an image whose layers are (gzip/zstd) tar archives"
    )]
    NotALayer {
        /// The layer.
        layer: String,
        /// Its media type.
        media_type: String,
    },
    /// The layer tar is malformed or truncated, or decompression failed.
    #[error("{layer}: cannot read the tar stream{}: {source}", entry_suffix(.entry))]
    Tar {
        /// The layer.
        layer: String,
        /// The entry being read, when known.
        entry: Option<PathBuf>,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry lies below a symlink of this or a lower layer.
    #[error(
        "{layer}: entry {entry:?} lies below symlink {symlink}, and writing through symlinks is \
         refused; hint: put the entry at the symlink's target path instead"
    )]
    ThroughSymlink {
        /// The layer.
        layer: String,
        /// The entry name as stored.
        entry: PathBuf,
        /// The symlink in the tree.
        symlink: PathBuf,
    },
    /// The tree refused the entry (e.g. its parent is a regular file).
    #[error("{layer}: cannot apply entry {entry:?}: {source}")]
    Tree {
        /// The layer.
        layer: String,
        /// The entry name as stored.
        entry: PathBuf,
        /// The cause (boxed: tree errors are large).
        #[source]
        source: Box<TreeError>,
    },
    /// A tar entry type a filesystem tree cannot hold.
    #[error("{layer}: entry {entry:?} has unsupported tar type {kind:?}")]
    UnsupportedEntry {
        /// The layer.
        layer: String,
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

/// A tree flattened from image layers, and the directory its file contents live in.
///
/// Keep `contents` alive as long as `tree`: its [`FileData::Host`] entries point into it.
#[derive(Debug)]
pub struct Unpacked {
    /// The flattened filesystem.
    pub tree: Tree,
    /// Extracted regular file contents.
    pub contents: TempDir,
}

/// Flattens `layers` (bottom first) into a new tree; contents go to a new temporary
/// directory below `scratch_parent` (pick one on the disk the build writes to).
pub fn unpack(layers: &[LayerBlob], scratch_parent: &Path) -> Result<Unpacked, UnpackError> {
    let contents = TempDir::with_prefix_in("strata-oci-", scratch_parent)
        .map_err(|e| io_err("create a temporary directory in", scratch_parent, e))?;
    let mut tree = Tree::new();
    apply_layers(&mut tree, layers, contents.path())?;
    Ok(Unpacked { tree, contents })
}

/// Applies `layers` in order onto `tree`, extracting file contents into `contents_dir`, which
/// must outlive the tree.
pub fn apply_layers(
    tree: &mut Tree,
    layers: &[LayerBlob],
    contents_dir: &Path,
) -> Result<(), UnpackError> {
    let mut files = 0u64;
    for (i, layer) in layers.iter().enumerate() {
        let label = format!("layer {} ({} of {})", layer.digest, i + 1, layers.len());
        check_media_type(layer, &label)?;
        let reader = open_layer(&layer.path, &label)?;
        let mut applier = LayerApplier {
            label: &label,
            tree,
            contents_dir,
            files: &mut files,
            added: HashSet::new(),
        };
        applier.apply(reader)?;
    }
    Ok(())
}

/// Refuses blobs that are not layers; an empty media type (docker archives) is a layer.
fn check_media_type(layer: &LayerBlob, label: &str) -> Result<(), UnpackError> {
    let mt = &layer.media_type;
    let is_layer = mt.is_empty() || mt.contains(".image.layer.") || mt.contains(".image.rootfs.");
    if !is_layer || mt.contains("encrypted") {
        return Err(UnpackError::NotALayer {
            layer: label.to_string(),
            media_type: mt.clone(),
        });
    }
    Ok(())
}

/// Opens a layer blob with the decoder its magic bytes call for.
fn open_layer(path: &Path, label: &str) -> Result<Box<dyn Read>, UnpackError> {
    open_decompressed(path).map_err(|e| match e.kind() {
        io::ErrorKind::Other => tar_err(label, None, e),
        _ => io_err("open", path, e),
    })
}

/// Opens `path` through a gzip, zstd or xz decoder when its magic bytes say so.
pub(crate) fn open_decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 6];
    let got = read_up_to(&mut file, &mut magic)?;
    let file = BufReader::with_capacity(1 << 20, File::open(path)?);
    Ok(match &magic[..got] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io::Error::other)?)
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0] => {
            Box::new(liblzma::read::XzDecoder::new_multi_decoder(file))
        }
        _ => Box::new(file),
    })
}

/// Reads until `buf` is full or the input ends.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// State while applying one layer.
struct LayerApplier<'a> {
    label: &'a str,
    tree: &'a mut Tree,
    contents_dir: &'a Path,
    /// Extracted files so far (all layers); names the content files.
    files: &'a mut u64,
    /// Paths this layer created, and their ancestors: whiteouts and opaque markers only hide
    /// what lower layers put there.
    added: HashSet<PathBuf>,
}

impl LayerApplier<'_> {
    fn apply(&mut self, reader: Box<dyn Read>) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| tar_err(self.label, None, e))?;
        for item in entries {
            let entry = item.map_err(|e| tar_err(self.label, None, e))?;
            self.add(entry)?;
        }
        Ok(())
    }

    fn add<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry
            .path()
            .map_err(|e| tar_err(self.label, None, e))?
            .into_owned();
        let path = self.inside(&raw)?;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if name.starts_with(WHITEOUT_PREFIX) {
                return self.whiteout(&path, name, &raw);
            }
        }
        self.check_no_symlink_above(&path, &raw)?;
        let header = entry.header().clone();
        let mode = header
            .mode()
            .map_err(|e| tar_err(self.label, Some(&raw), e))?
            & PERMISSION_BITS;
        let (uid, gid) = self.owner(&mut entry, &raw)?;
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                EntryKind::File(FileData::Host(self.extract(&mut entry, &raw)?))
            }
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(self.link_name(&entry, &raw)?),
            tar::EntryType::Link => return self.hardlink(&entry, &raw, path),
            tar::EntryType::Fifo => EntryKind::Fifo,
            tar::EntryType::Char => return Err(self.device(&raw, "character")),
            tar::EntryType::Block => return Err(self.device(&raw, "block")),
            tar::EntryType::XGlobalHeader => return Ok(()),
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    layer: self.label.to_string(),
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
    fn inside(&self, raw: &Path) -> Result<PathBuf, UnpackError> {
        normalize_relative(raw).ok_or_else(|| UnpackError::EscapingEntry {
            layer: self.label.to_string(),
            entry: raw.to_path_buf(),
        })
    }

    /// Handles `.wh.<name>` and `.wh..wh..opq`; whiteouts are never added to the tree.
    fn whiteout(&mut self, path: &Path, name: &str, raw: &Path) -> Result<(), UnpackError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if name == OPAQUE_MARKER {
            return self.make_opaque(parent, raw);
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(UnpackError::EscapingEntry {
                layer: self.label.to_string(),
                entry: raw.to_path_buf(),
            });
        }
        let target = parent.join(hidden);
        if !self.added.contains(&target) {
            self.tree.remove(&target);
        }
        Ok(())
    }

    /// Removes what lower layers put below `dir`, keeping this layer's entries.
    fn make_opaque(&mut self, dir: &Path, raw: &Path) -> Result<(), UnpackError> {
        self.check_no_symlink_above(&dir.join(OPAQUE_MARKER), raw)?;
        let lower: Vec<PathBuf> = self
            .tree
            .iter()
            .map(|(p, _)| p)
            .filter(|p| p.starts_with(dir) && *p != dir && !self.added.contains(*p))
            .map(Path::to_path_buf)
            .collect();
        for path in lower {
            self.tree.remove(&path);
        }
        if self.tree.get(dir).is_none_or(|e| !e.is_dir()) {
            self.insert(dir.to_path_buf(), Entry::dir(0o755), raw)?;
        }
        Ok(())
    }

    /// Refuses entries whose parent chain holds a symlink of the tree.
    fn check_no_symlink_above(&self, path: &Path, raw: &Path) -> Result<(), UnpackError> {
        for ancestor in path.ancestors().skip(1) {
            if let Some(Entry {
                kind: EntryKind::Symlink(_),
                ..
            }) = self.tree.get(ancestor)
            {
                return Err(UnpackError::ThroughSymlink {
                    layer: self.label.to_string(),
                    entry: raw.to_path_buf(),
                    symlink: ancestor.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: PathBuf, entry: Entry, raw: &Path) -> Result<(), UnpackError> {
        if path == Path::new("/") && !entry.is_dir() {
            return Err(UnpackError::EscapingEntry {
                layer: self.label.to_string(),
                entry: raw.to_path_buf(),
            });
        }
        self.tree
            .insert(&path, entry)
            .map_err(|source| UnpackError::Tree {
                layer: self.label.to_string(),
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
    ) -> Result<(), UnpackError> {
        let target_raw = self.link_name(entry, raw)?;
        let refuse = |reason| UnpackError::HardlinkTarget {
            layer: self.label.to_string(),
            entry: raw.to_path_buf(),
            target: target_raw.clone(),
            reason,
        };
        let target = normalize_relative(&target_raw).ok_or_else(|| refuse("escapes the root"))?;
        let copy = match self.tree.get(&target) {
            Some(found) if !found.is_dir() => found.clone(),
            Some(_) => return Err(refuse("is a directory")),
            None => return Err(refuse("is not an earlier entry of the image")),
        };
        self.check_no_symlink_above(&path, raw)?;
        self.insert(path, copy, raw)
    }

    fn link_name<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<PathBuf, UnpackError> {
        let name = entry
            .link_name()
            .map_err(|e| tar_err(self.label, Some(raw), e))?;
        Ok(name.map(|n| n.into_owned()).unwrap_or_default())
    }

    /// Owner from the header, overridden by PAX `uid`/`gid` records (ids above 2^21).
    fn owner<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<(u32, u32), UnpackError> {
        let (uid, gid) =
            crate::fs::tree::tar_owner(entry).map_err(|e| tar_err(self.label, Some(raw), e))?;
        Ok((self.fit(uid, "uid", raw)?, self.fit(gid, "gid", raw)?))
    }

    fn fit(&self, value: u64, field: &'static str, raw: &Path) -> Result<u32, UnpackError> {
        u32::try_from(value).map_err(|_| UnpackError::HeaderOverflow {
            layer: self.label.to_string(),
            entry: raw.to_path_buf(),
            field,
            value,
        })
    }

    /// Streams a regular file's contents to a new file in the contents directory.
    fn extract<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<PathBuf, UnpackError> {
        let (dest, mut out) = loop {
            *self.files += 1;
            let dest = self.contents_dir.join(format!("{:08}", self.files));
            match File::create_new(&dest) {
                Ok(file) => break (dest, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &dest, e)),
            }
        };
        io::copy(entry, &mut out).map_err(|e| tar_err(self.label, Some(raw), e))?;
        Ok(dest)
    }

    fn device(&self, raw: &Path, kind: &'static str) -> UnpackError {
        UnpackError::DeviceNode {
            layer: self.label.to_string(),
            entry: raw.to_path_buf(),
            kind,
        }
    }
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

fn tar_err(label: &str, entry: Option<&Path>, source: io::Error) -> UnpackError {
    UnpackError::Tar {
        layer: label.to_string(),
        entry: entry.map(Path::to_path_buf),
        source,
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::source::oci::image::{Digest, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD};
    use std::fs;
    use std::io::Write;

    /// A raw tar entry for tests: name, type, link target, data, mode, uid/gid.
    pub(crate) struct E<'a>(
        pub &'a str,
        pub tar::EntryType,
        pub &'a str,
        pub &'a [u8],
        pub u32,
        pub (u64, u64),
    );

    pub(crate) fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
        E(name, tar::EntryType::Regular, "", data, 0o644, (0, 0))
    }

    pub(crate) fn directory(name: &str) -> E<'_> {
        E(name, tar::EntryType::Directory, "", b"", 0o755, (0, 0))
    }

    /// Builds a tar from raw headers (names are written verbatim, hostile ones included).
    pub(crate) fn tar_bytes(entries: &[E<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for E(name, kind, link, data, mode, (uid, gid)) in entries {
            let mut header = tar::Header::new_ustar();
            {
                let bytes = header.as_old_mut();
                bytes.name[..name.len()].copy_from_slice(name.as_bytes());
                bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_uid(*uid);
            header.set_gid(*gid);
            header.set_mtime(0);
            header.set_device_major(0).unwrap();
            header.set_device_minor(0).unwrap();
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn layer(dir: &Path, name: &str, bytes: &[u8], media_type: &str) -> LayerBlob {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        LayerBlob {
            path,
            media_type: media_type.to_string(),
            digest: Digest::of_bytes(bytes),
            size: bytes.len() as u64,
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    pub(crate) fn listing(tree: &Tree) -> Vec<String> {
        tree.iter()
            .map(|(p, e)| {
                let kind = match &e.kind {
                    EntryKind::Dir => "dir".to_string(),
                    EntryKind::File(FileData::Host(h)) => {
                        format!("file {:?}", String::from_utf8_lossy(&fs::read(h).unwrap()))
                    }
                    EntryKind::File(FileData::Bytes(b)) => {
                        format!("file {:?}", String::from_utf8_lossy(b))
                    }
                    EntryKind::Symlink(t) => format!("-> {}", t.display()),
                    EntryKind::Fifo => "fifo".into(),
                    other => format!("{other:?}"),
                };
                format!("{} {kind} {:o} {}:{}", p.display(), e.mode, e.uid, e.gid)
            })
            .collect()
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let lower = tar_bytes(&[
            directory("./"),
            directory("etc/"),
            file("etc/keep", b"keep"),
            file("etc/gone", b"gone"),
            directory("opt/"),
            directory("opt/old/"),
            file("opt/old/x", b"x"),
            file("opt/y", b"y"),
            E(
                "bin/su",
                tar::EntryType::Regular,
                "",
                b"su",
                0o4750,
                (0, 42),
            ),
            E("bin/link", tar::EntryType::Link, "bin/su", b"", 0, (0, 0)),
            E(
                "bin/sh",
                tar::EntryType::Symlink,
                "/bin/busybox",
                b"",
                0o777,
                (0, 0),
            ),
            directory("var/"),
            file("var/f", b"f"),
        ]);
        let upper = tar_bytes(&[
            file("opt/new", b"new"),
            file("etc/.wh.gone", b""),
            file("opt/.wh..wh..opq", b""),
            file(".wh.var", b""),
            file("etc/.wh..wh.plnk", b""),
            E(
                "etc/keep",
                tar::EntryType::Regular,
                "",
                b"KEEP",
                0o600,
                (7, 8),
            ),
            E("fifo", tar::EntryType::Fifo, "", b"", 0o600, (0, 0)),
        ]);
        let layers = [
            layer(
                dir.path(),
                "l1",
                &zstd::encode_all(&lower[..], 3).unwrap(),
                OCI_LAYER_ZSTD,
            ),
            layer(dir.path(), "l2", &gzip(&upper), OCI_LAYER_GZIP),
        ];
        let unpacked = unpack(&layers, dir.path()).unwrap();
        assert_eq!(
            listing(&unpacked.tree),
            [
                "/ dir 755 0:0",
                "/bin dir 755 0:0",
                "/bin/link file \"su\" 4750 0:42",
                "/bin/sh -> /bin/busybox 777 0:0",
                "/bin/su file \"su\" 4750 0:42",
                "/etc dir 755 0:0",
                "/etc/keep file \"KEEP\" 600 7:8",
                "/fifo fifo 600 0:0",
                "/opt dir 755 0:0",
                "/opt/new file \"new\" 644 0:0",
            ]
        );
        let contents = unpacked.contents.path().to_path_buf();
        assert!(fs::read_dir(&contents).unwrap().count() >= 7);
        drop(unpacked);
        assert!(!contents.exists());
    }

    #[test]
    fn hostile_entries_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = tar::EntryType::Regular;
        let sym = tar::EntryType::Symlink;
        let link = tar::EntryType::Link;
        let cases: Vec<(Vec<E<'_>>, &str)> = vec![
            (
                vec![file("../evil", b"x")],
                "entry \"../evil\" escapes the root",
            ),
            (
                vec![file("a/../../evil", b"x")],
                "entry \"a/../../evil\" escapes",
            ),
            (
                vec![file("/etc/passwd", b"x")],
                "entry \"/etc/passwd\" escapes",
            ),
            (
                vec![file("etc/.wh...", b"")],
                "entry \"etc/.wh...\" escapes",
            ),
            (
                vec![E("x", link, "../../etc/shadow", b"", 0, (0, 0))],
                "hard link \"x\" points to \"../../etc/shadow\", which escapes the root",
            ),
            (
                vec![E("x", link, "/etc/shadow", b"", 0, (0, 0))],
                "hard link \"x\" points to \"/etc/shadow\", which escapes the root",
            ),
            (
                vec![E("x", link, "missing", b"", 0, (0, 0))],
                "hard link \"x\" points to \"missing\", which is not an earlier entry",
            ),
            (
                vec![directory("d/"), E("x", link, "d", b"", 0, (0, 0))],
                "hard link \"x\" points to \"d\", which is a directory",
            ),
            (
                vec![
                    E("link", sym, "/etc", b"", 0o777, (0, 0)),
                    E("link/passwd", r, "", b"x", 0o644, (0, 0)),
                ],
                "entry \"link/passwd\" lies below symlink /link",
            ),
            (
                vec![
                    E("a", sym, ".", b"", 0o777, (0, 0)),
                    E("a/b", sym, "/", b"", 0o777, (0, 0)),
                ],
                "entry \"a/b\" lies below symlink /a",
            ),
            (
                vec![
                    file("f", b"f"),
                    E("l", sym, "/", b"", 0o777, (0, 0)),
                    E("l/x", link, "f", b"", 0, (0, 0)),
                ],
                "entry \"l/x\" lies below symlink /l",
            ),
            (
                vec![E("dev/null", tar::EntryType::Char, "", b"", 0o666, (0, 0))],
                "entry \"dev/null\" is a character device node",
            ),
            (
                vec![E("dev/sda", tar::EntryType::Block, "", b"", 0o660, (0, 0))],
                "entry \"dev/sda\" is a block device node",
            ),
            (
                vec![file("f", b"f"), file("f/g", b"g")],
                "cannot apply entry \"f/g\"",
            ),
        ];
        for (i, (entries, want)) in cases.into_iter().enumerate() {
            let blob = layer(
                dir.path(),
                &format!("{i}"),
                &tar_bytes(&entries),
                OCI_LAYER_TAR,
            );
            let err = unpack(std::slice::from_ref(&blob), dir.path())
                .unwrap_err()
                .to_string();
            let prefix = format!("layer {} (1 of 1): ", blob.digest);
            assert!(err.starts_with(&prefix), "{err}");
            assert!(err[prefix.len()..].starts_with(want), "case {i}: {err}");
        }
        // A lower layer's symlink guards later layers too.
        let lower = layer(
            dir.path(),
            "lower",
            &tar_bytes(&[E("etc", sym, "/host/etc", b"", 0o777, (0, 0))]),
            OCI_LAYER_TAR,
        );
        let upper = layer(dir.path(), "upper", &tar_bytes(&[file("etc/x", b"x")]), "");
        let err = unpack(&[lower, upper], dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("(2 of 2): entry \"etc/x\" lies below symlink /etc"),
            "{err}"
        );
        // Only the extraction scratch directory may be left: all were removed on error.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("strata-oci-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn non_layers_and_broken_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_bytes(&[file("f", b"f")]);
        let blob = layer(
            dir.path(),
            "sig",
            &bytes,
            "application/vnd.dev.cosign.simplesigning.v1+json",
        );
        let err = unpack(&[blob], dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a filesystem layer"), "{err}");
        let enc = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
        let blob = layer(dir.path(), "enc", &gzip(&bytes), enc);
        assert!(unpack(&[blob], dir.path()).is_err());
        let gz = gzip(&bytes);
        let blob = layer(dir.path(), "cut", &gz[..gz.len() / 2], OCI_LAYER_GZIP);
        let err = unpack(&[blob], dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read the tar stream"), "{err}");
    }

    #[test]
    fn large_files_are_streamed_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 3 << 20];
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(big.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, "big", &big[..]).unwrap();
        let blob = layer(
            dir.path(),
            "big",
            &builder.into_inner().unwrap(),
            OCI_LAYER_TAR,
        );
        let unpacked = unpack(&[blob], dir.path()).unwrap();
        let Some(Entry {
            kind: EntryKind::File(FileData::Host(host)),
            ..
        }) = unpacked.tree.get("/big")
        else {
            panic!("/big is not a host file");
        };
        assert!(host.starts_with(unpacked.contents.path()));
        assert_eq!(fs::metadata(host).unwrap().len(), big.len() as u64);
    }
}
