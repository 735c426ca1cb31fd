//! Flattening extension layers onto a base tree with overlayfs semantics, at build time.
//!
//! [`flatten`] gives the tree that a read-only overlay mount of the same layers would show
//! (`mount -t overlay -o lowerdir=extN:...:ext1:base`), so an image can ship one squashfs instead
//! of a stack of layers. Rules, layer by layer, later layers winning:
//! - a non-directory replaces whatever was below it; a directory replaces a non-directory below
//!   it together with nothing underneath (overlayfs does not merge through a type change);
//! - a directory over a directory merges: the children of both are visible, and the mode and
//!   owner of the upper directory win (as overlayfs reports them), including for `/`;
//! - whiteouts delete the lower path and everything below it: a character device 0:0 (what
//!   overlayfs writes) or an OCI `.wh.<name>` entry (any kind); neither appears in the result;
//! - an opaque directory hides the lower children of that directory. Overlayfs marks it with the
//!   `trusted.overlay.opaque` xattr, which a [`Tree`] cannot hold, so only the OCI marker entry
//!   `.wh..wh..opq` is understood; other `.wh..wh.` names are OCI-reserved and dropped.
//!
//! Whiteouts and opaque markers apply to the layers below only, never to entries of their own
//! layer (as in OCI layers), so "delete then re-create" within one layer works. Whiteouts in the
//! base tree are left as they are: nothing lies below the base.
//!
//! Besides the tree, a [`Report`] says which paths a later extension took over from an earlier
//! one ([`Conflict`]: the case to warn about) and which base paths extensions replaced or deleted
//! ([`Shadow`]: normal, but type changes such as a directory over the base's `/lib -> usr/lib`
//! symlink break a merged-/usr system and deserve a warning). Directory merges are never
//! reported. Contents are compared only between extensions: sizes first, then bytes streamed from
//! the host files, and only when the sizes match.
//!
//! Not supported: overlayfs xattr-based opaque directories and redirects (`trusted.overlay.*`),
//! metacopy, and extended attributes in general (a [`Tree`] has none).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::mem::discriminant;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fs::tree::{Entry, EntryKind, FileData, Tree, TreeError};

/// Prefix of an OCI whiteout entry: `.wh.foo` deletes the lower `foo`.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// OCI opaque marker: its directory hides every lower child.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix the OCI spec reserves for markers; unknown ones are dropped.
const RESERVED_PREFIX: &str = ".wh..wh.";
/// Chunk size for streaming content comparisons.
const COMPARE_CHUNK: usize = 64 * 1024;

/// Errors from flattening layers.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// A file's contents could not be read for the comparison with another extension's file.
    #[error(
        "cannot compare {path} of extension {layer} with the earlier one: cannot read {host}; \
         hint: was a temporary directory of the layer removed?"
    )]
    Compare {
        /// The path in the tree.
        path: PathBuf,
        /// The extension whose file was being compared.
        layer: String,
        /// The host file that could not be read.
        host: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry of the layer could not be placed in the result.
    #[error("cannot apply extension {layer}")]
    Insert {
        /// The extension being applied.
        layer: String,
        /// The cause.
        #[source]
        source: TreeError,
    },
}

/// Result alias for this module.
pub type Result<T, E = FlattenError> = std::result::Result<T, E>;

/// How a later extension's object relates to the earlier extension's object it replaced.
///
/// Ordered by severity: when several extensions provide one path, the report keeps the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConflictKind {
    /// The same object: same kind, same bytes (or link target, or device numbers), same mode and
    /// owner. Harmless duplication.
    SameContent,
    /// Same kind, different contents, mode or owner: the later extension silently wins.
    DifferentContent,
    /// A whiteout or opaque directory of the later extension deleted it.
    Removed,
    /// Different kinds (file over directory, symlink over file, ...).
    TypeChange,
}

/// A path that more than one extension provided; only the last one is in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The path in the tree.
    pub path: PathBuf,
    /// Every extension that provided the path (for a directory: contributed to it by a merge)
    /// or deleted it, in layer order.
    pub layers: Vec<String>,
    /// The worst relation found between consecutive providers.
    pub kind: ConflictKind,
}

/// What an extension did to a path of the base tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowKind {
    /// Replaced by an object of the same kind (the usual way to override a base file).
    Replaced,
    /// Replaced by an object of another kind.
    TypeChange,
    /// Deleted by a whiteout or an opaque directory.
    Removed,
}

/// A base path an extension replaced or deleted. Directory merges are not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The path in the tree.
    pub path: PathBuf,
    /// The extension that replaced or deleted it.
    pub layer: String,
    /// What happened.
    pub kind: ShadowKind,
}

/// What flattening found, plus the bookkeeping needed to apply further layers.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Paths provided by more than one extension, in the order they were first overridden.
    pub conflicts: Vec<Conflict>,
    /// Base paths replaced or deleted by extensions, in layer order.
    pub shadows_base: Vec<Shadow>,
    /// Extensions that provided the object now at each path (absent: it comes from the base).
    provided: BTreeMap<PathBuf, Vec<String>>,
    /// Index into `conflicts` by path, so a third provider extends the existing record.
    conflict_at: HashMap<PathBuf, usize>,
}

/// Applies layers in order (first = lowest) onto `base` and returns the result with a report.
///
/// The result shares the layers' temporary directories (see [`Tree::share_scratch`]), so it
/// stays valid after the layers are dropped.
pub fn flatten(mut base: Tree, layers: &[(String, Tree)]) -> Result<(Tree, Report)> {
    let mut report = Report::default();
    for (name, layer) in layers {
        apply(&mut base, layer, name, &mut report)?;
    }
    Ok((base, report))
}

/// Applies one extension layer onto `base` (see the module documentation for the rules),
/// recording conflicts with earlier extensions applied through the same `report`.
pub fn apply(base: &mut Tree, layer: &Tree, layer_name: &str, report: &mut Report) -> Result<()> {
    // Deletions first: they target the lower layers only, whatever their sort position.
    for (path, entry) in layer.iter() {
        match marker(path, entry) {
            Marker::Whiteout(target) => remove_lower(base, &target, layer_name, report),
            Marker::Opaque(dir) => hide_lower_children(base, &dir, layer_name, report),
            Marker::Reserved | Marker::None => {}
        }
    }
    for (path, entry) in layer.iter() {
        if matches!(marker(path, entry), Marker::None) {
            place(base, path, entry, layer_name, report)?;
        }
    }
    base.share_scratch(layer);
    Ok(())
}

/// What a layer entry means besides being an object.
enum Marker {
    /// An ordinary entry.
    None,
    /// Deletes this lower path.
    Whiteout(PathBuf),
    /// Hides the lower children of this directory.
    Opaque(PathBuf),
    /// An OCI-reserved `.wh..wh.` name other than the opaque marker: dropped.
    Reserved,
}

fn marker(path: &Path, entry: &Entry) -> Marker {
    if entry.kind == (EntryKind::CharDev { major: 0, minor: 0 }) {
        return Marker::Whiteout(path.to_path_buf());
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Marker::None;
    };
    let name = name.as_bytes();
    if name == OPAQUE_MARKER.as_bytes() {
        Marker::Opaque(parent.to_path_buf())
    } else if name.starts_with(RESERVED_PREFIX.as_bytes()) {
        Marker::Reserved
    } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        Marker::Whiteout(parent.join(std::ffi::OsStr::from_bytes(target)))
    } else {
        Marker::None
    }
}

/// Deletes `path` (and its subtree) from `base`, recording whose object it was.
fn remove_lower(base: &mut Tree, path: &Path, layer: &str, report: &mut Report) {
    if base.remove(path).is_some() {
        report.record_replacement(path, layer, ConflictKind::Removed);
        report.forget_subtree(path);
    }
}

/// Deletes every child of `dir` in `base`, if `dir` is a directory there.
fn hide_lower_children(base: &mut Tree, dir: &Path, layer: &str, report: &mut Report) {
    if !base.get(dir).is_some_and(Entry::is_dir) {
        return;
    }
    let children: Vec<PathBuf> = base
        .iter()
        .filter(|(path, _)| path.parent() == Some(dir) && *path != dir)
        .map(|(path, _)| path.to_path_buf())
        .collect();
    for child in children {
        remove_lower(base, &child, layer, report);
    }
}

/// Puts one ordinary layer entry into `base`.
fn place(
    base: &mut Tree,
    path: &Path,
    entry: &Entry,
    layer: &str,
    report: &mut Report,
) -> Result<()> {
    let insert_err = |source| FlattenError::Insert {
        layer: layer.to_string(),
        source,
    };
    let old = base.get(path);
    let merges = old.is_some_and(Entry::is_dir) && entry.is_dir();
    if let Some(old) = old.filter(|_| !merges) {
        let kind = if discriminant(&old.kind) != discriminant(&entry.kind) {
            ConflictKind::TypeChange
        } else if report.provided.contains_key(path) && !same_object(old, entry, path, layer)? {
            ConflictKind::DifferentContent
        } else {
            ConflictKind::SameContent
        };
        report.record_replacement(path, layer, kind);
        if old.is_dir() {
            report.forget_subtree(path);
        }
    }
    base.insert(path, entry.clone()).map_err(insert_err)?;
    if path != Path::new("/") {
        report.note_provider(path, layer, merges);
    }
    Ok(())
}

impl Report {
    /// Records that `layer` replaced (or, with [`ConflictKind::Removed`], deleted) the object at
    /// `path`: a conflict if an extension provided it, else a base shadow. Same-kind
    /// replacements of base objects are not compared, so `kind` is only trusted for extensions.
    fn record_replacement(&mut self, path: &Path, layer: &str, kind: ConflictKind) {
        let Some(providers) = self.provided.get(path) else {
            let kind = match kind {
                ConflictKind::Removed => ShadowKind::Removed,
                ConflictKind::TypeChange => ShadowKind::TypeChange,
                ConflictKind::SameContent | ConflictKind::DifferentContent => ShadowKind::Replaced,
            };
            self.shadows_base.push(Shadow {
                path: path.to_path_buf(),
                layer: layer.to_string(),
                kind,
            });
            return;
        };
        if let Some(&at) = self.conflict_at.get(path) {
            let conflict = &mut self.conflicts[at];
            conflict.layers.push(layer.to_string());
            conflict.kind = conflict.kind.max(kind);
            return;
        }
        let mut layers = providers.clone();
        layers.push(layer.to_string());
        self.conflict_at
            .insert(path.to_path_buf(), self.conflicts.len());
        self.conflicts.push(Conflict {
            path: path.to_path_buf(),
            layers,
            kind,
        });
    }

    /// Notes that `layer` now provides `path`; a merged directory keeps its earlier providers.
    fn note_provider(&mut self, path: &Path, layer: &str, merged: bool) {
        let providers = self.provided.entry(path.to_path_buf()).or_default();
        if !merged {
            providers.clear();
        }
        providers.push(layer.to_string());
    }

    /// Forgets the providers of `path` and everything below it (the objects are gone).
    fn forget_subtree(&mut self, path: &Path) {
        let doomed: Vec<PathBuf> = self
            .provided
            .range::<Path, _>((Bound::Included(path), Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in doomed {
            self.provided.remove(&p);
        }
    }
}

/// Whether two entries of the same kind are the same object (contents, mode, owner).
fn same_object(old: &Entry, new: &Entry, path: &Path, layer: &str) -> Result<bool> {
    if (old.mode, old.uid, old.gid) != (new.mode, new.uid, new.gid) {
        return Ok(false);
    }
    match (&old.kind, &new.kind) {
        (EntryKind::File(a), EntryKind::File(b)) => same_data(a, b, path, layer),
        (a, b) => Ok(a == b),
    }
}

/// Compares two file contents: sizes first, then bytes in chunks.
fn same_data(a: &FileData, b: &FileData, path: &Path, layer: &str) -> Result<bool> {
    if let (FileData::Host(x), FileData::Host(y)) = (a, b) {
        if x == y {
            return Ok(true);
        }
    }
    let mut a = DataReader::open(a, path, layer)?;
    let mut b = DataReader::open(b, path, layer)?;
    if a.len != b.len {
        return Ok(false);
    }
    let (mut buf_a, mut buf_b) = (vec![0u8; COMPARE_CHUNK], vec![0u8; COMPARE_CHUNK]);
    loop {
        let got_a = a.fill(&mut buf_a)?;
        let got_b = b.fill(&mut buf_b)?;
        if buf_a[..got_a] != buf_b[..got_b] {
            return Ok(false);
        }
        if got_a == 0 {
            return Ok(true);
        }
    }
}

/// A readable file content with its length and what to name in errors.
struct DataReader<'a> {
    len: u64,
    source: Box<dyn Read + 'a>,
    host: Option<PathBuf>,
    path: &'a Path,
    layer: &'a str,
}

impl<'a> DataReader<'a> {
    fn open(data: &'a FileData, path: &'a Path, layer: &'a str) -> Result<Self> {
        let fail = |host: &Path, source| FlattenError::Compare {
            path: path.to_path_buf(),
            layer: layer.to_string(),
            host: host.to_path_buf(),
            source,
        };
        match data {
            FileData::Bytes(bytes) => Ok(Self {
                len: bytes.len() as u64,
                source: Box::new(bytes.as_slice()),
                host: None,
                path,
                layer,
            }),
            FileData::Host(host) => {
                let file = File::open(host).map_err(|e| fail(host, e))?;
                let len = file.metadata().map_err(|e| fail(host, e))?.len();
                Ok(Self {
                    len,
                    source: Box::new(file),
                    host: Some(host.clone()),
                    path,
                    layer,
                })
            }
        }
    }

    /// Reads until `buf` is full or the input ends; returns the number of bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(FlattenError::Compare {
                        path: self.path.to_path_buf(),
                        layer: self.layer.to_string(),
                        host: self.host.clone().unwrap_or_default(),
                        source,
                    })
                }
            }
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;
    use std::time::Instant;

    fn file(bytes: &[u8]) -> Entry {
        Entry::bytes_file(bytes.to_vec(), 0o644)
    }

    fn tree(entries: &[(&str, Entry)]) -> Tree {
        let mut tree = Tree::new();
        for (path, entry) in entries {
            tree.insert(path, entry.clone()).unwrap();
        }
        tree
    }

    fn whiteout() -> Entry {
        Entry {
            kind: EntryKind::CharDev { major: 0, minor: 0 },
            mode: 0,
            uid: 0,
            gid: 0,
        }
    }

    fn paths(tree: &Tree) -> Vec<String> {
        tree.iter().map(|(p, _)| p.display().to_string()).collect()
    }

    fn layers(list: Vec<(&str, Tree)>) -> Vec<(String, Tree)> {
        list.into_iter().map(|(n, t)| (n.to_string(), t)).collect()
    }

    #[test]
    fn later_layers_win_and_directories_merge() {
        let base = tree(&[
            ("/etc/a", file(b"base")),
            ("/etc/b", file(b"base")),
            ("/usr", Entry::dir(0o755)),
        ]);
        let one = tree(&[("/etc/a", file(b"one")), ("/etc/c", file(b"one"))]);
        let two = tree(&[
            ("/etc", Entry::dir(0o700).owned_by(1, 2)),
            ("/etc/a", file(b"two")),
        ]);
        let (out, report) = flatten(base, &layers(vec![("one", one), ("two", two)])).unwrap();
        assert_eq!(
            paths(&out),
            ["/", "/etc", "/etc/a", "/etc/b", "/etc/c", "/usr"]
        );
        assert_eq!(out.get("/etc/a").unwrap().kind, file(b"two").kind);
        let etc = out.get("/etc").unwrap();
        assert_eq!(
            (etc.mode, etc.uid, etc.gid),
            (0o700, 1, 2),
            "upper dir attributes win"
        );
        assert_eq!(
            report.conflicts,
            [Conflict {
                path: "/etc/a".into(),
                layers: vec!["one".into(), "two".into()],
                kind: ConflictKind::DifferentContent,
            }]
        );
        assert_eq!(
            report.shadows_base,
            [Shadow {
                path: "/etc/a".into(),
                layer: "one".into(),
                kind: ShadowKind::Replaced,
            }]
        );
    }

    #[test]
    fn same_content_is_told_apart_and_three_providers_make_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("x");
        fs::write(&host, b"same").unwrap();
        let a = tree(&[("/opt/x", file(b"same"))]);
        let b = tree(&[("/opt/x", Entry::host_file(&host, 0o644))]);
        let c = tree(&[("/opt/x", Entry::symlink("/elsewhere"))]);
        let (_, report) = flatten(Tree::new(), &layers(vec![("a", a.clone()), ("b", b)])).unwrap();
        assert_eq!(report.conflicts[0].kind, ConflictKind::SameContent);
        let b = tree(&[("/opt/x", Entry::host_file(&host, 0o600))]);
        let (_, report) = flatten(Tree::new(), &layers(vec![("a", a.clone()), ("b", b)])).unwrap();
        assert_eq!(
            report.conflicts[0].kind,
            ConflictKind::DifferentContent,
            "mode differs"
        );
        let b = tree(&[("/opt/x", file(b"same"))]);
        let (_, report) =
            flatten(Tree::new(), &layers(vec![("a", a), ("b", b), ("c", c)])).unwrap();
        assert_eq!(
            report.conflicts,
            [Conflict {
                path: "/opt/x".into(),
                layers: vec!["a".into(), "b".into(), "c".into()],
                kind: ConflictKind::TypeChange,
            }]
        );
        assert!(report.shadows_base.is_empty());
    }

    #[test]
    fn comparing_a_vanished_host_file_names_it() {
        let a = tree(&[("/x", file(b"1234"))]);
        let b = tree(&[("/x", Entry::host_file("/nonexistent/strata-x", 0o644))]);
        let err = flatten(Tree::new(), &layers(vec![("a", a), ("b", b)])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/strata-x") && text.contains("extension b"),
            "{text}"
        );
    }

    #[test]
    fn whiteouts_delete_lower_paths_in_both_forms() {
        let base = tree(&[
            ("/etc/motd", file(b"hi")),
            ("/etc/issue", file(b"hi")),
            ("/opt/tool/bin/t", file(b"t")),
            ("/opt/keep", file(b"k")),
        ]);
        let one = tree(&[("/opt/tool/lib/l", file(b"l"))]);
        let two = tree(&[
            ("/etc/motd", whiteout()),
            ("/etc/.wh.issue", file(b"")),
            ("/opt/.wh.tool", file(b"")),
            ("/opt/.wh.absent", file(b"")),
            ("/opt/.wh..wh.plnk", file(b"")),
        ]);
        let (out, report) = flatten(base, &layers(vec![("one", one), ("two", two)])).unwrap();
        assert_eq!(paths(&out), ["/", "/etc", "/opt", "/opt/keep"]);
        let removed: Vec<_> = report
            .shadows_base
            .iter()
            .map(|s| (s.path.display().to_string(), s.kind))
            .collect();
        assert_eq!(
            removed,
            [
                ("/etc/issue".to_string(), ShadowKind::Removed),
                ("/etc/motd".to_string(), ShadowKind::Removed),
            ]
        );
        // Extension `one` contributed to /opt/tool, so its deletion is a conflict.
        assert_eq!(
            report.conflicts,
            [Conflict {
                path: "/opt/tool".into(),
                layers: vec!["one".into(), "two".into()],
                kind: ConflictKind::Removed,
            }]
        );
    }

    #[test]
    fn whiteout_of_an_extension_file_is_a_removed_conflict_and_same_layer_recreates() {
        let one = tree(&[("/srv/a", file(b"1")), ("/srv/d/x", file(b"x"))]);
        let two = tree(&[
            ("/srv/.wh.a", file(b"")),
            ("/srv/a", file(b"2")),
            ("/srv/.wh.d", file(b"")),
            ("/srv/d/y", file(b"y")),
        ]);
        let (out, report) =
            flatten(Tree::new(), &layers(vec![("one", one), ("two", two)])).unwrap();
        assert_eq!(paths(&out), ["/", "/srv", "/srv/a", "/srv/d", "/srv/d/y"]);
        assert_eq!(out.get("/srv/a").unwrap().kind, file(b"2").kind);
        let kinds: Vec<_> = report
            .conflicts
            .iter()
            .map(|c| (c.path.display().to_string(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("/srv/a".to_string(), ConflictKind::Removed),
                ("/srv/d".to_string(), ConflictKind::Removed),
            ]
        );
    }

    #[test]
    fn opaque_directories_hide_lower_children_only() {
        let base = tree(&[
            ("/etc/conf.d/a", file(b"a")),
            ("/etc/conf.d/sub/b", file(b"b")),
            ("/etc/other", file(b"o")),
        ]);
        // `-` sorts before `.`: the layer's own child comes before the marker.
        let one = tree(&[
            ("/etc/conf.d/-mine", file(b"m")),
            ("/etc/conf.d/.wh..wh..opq", file(b"")),
            ("/etc/conf.d/z", file(b"z")),
        ]);
        let (out, report) = flatten(base, &layers(vec![("one", one)])).unwrap();
        assert_eq!(
            paths(&out),
            [
                "/",
                "/etc",
                "/etc/conf.d",
                "/etc/conf.d/-mine",
                "/etc/conf.d/z",
                "/etc/other"
            ]
        );
        assert_eq!(report.shadows_base.len(), 2, "{:?}", report.shadows_base);
    }

    #[test]
    fn type_changes_replace_whole_subtrees() {
        let base = tree(&[
            ("/lib", Entry::symlink("usr/lib")),
            ("/usr/lib/x", file(b"x")),
            ("/data/deep/f", file(b"f")),
        ]);
        let one = tree(&[
            ("/lib/modules/m.ko", file(b"ko")),
            ("/data", Entry::symlink("/var/data")),
        ]);
        let two = tree(&[("/lib/modules", file(b"now a file"))]);
        let (out, report) = flatten(base, &layers(vec![("one", one), ("two", two)])).unwrap();
        assert_eq!(
            paths(&out),
            [
                "/",
                "/data",
                "/lib",
                "/lib/modules",
                "/usr",
                "/usr/lib",
                "/usr/lib/x"
            ]
        );
        assert!(
            out.get("/lib").unwrap().is_dir(),
            "dir over symlink does not merge"
        );
        let shadows: Vec<_> = report
            .shadows_base
            .iter()
            .map(|s| (s.path.display().to_string(), s.kind))
            .collect();
        assert_eq!(
            shadows,
            [
                ("/data".to_string(), ShadowKind::TypeChange),
                ("/lib".to_string(), ShadowKind::TypeChange),
            ]
        );
        assert_eq!(
            report.conflicts,
            [Conflict {
                path: "/lib/modules".into(),
                layers: vec!["one".into(), "two".into()],
                kind: ConflictKind::TypeChange,
            }]
        );
    }

    #[test]
    fn result_keeps_layer_scratch_alive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("l.tar");
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "etc/x", &b"hello"[..])
            .unwrap();
        fs::write(&archive, builder.into_inner().unwrap()).unwrap();
        let layer = Tree::from_tar(&archive).unwrap();
        let (out, _) = flatten(Tree::new(), &layers(vec![("l", layer)])).unwrap();
        let EntryKind::File(FileData::Host(host)) = &out.get("/etc/x").unwrap().kind else {
            panic!("expected an extracted host file");
        };
        assert_eq!(
            fs::read(host).unwrap(),
            b"hello",
            "the layer itself was dropped"
        );
    }

    /// 10 000 files in the base, a layer overriding 2 000 of them with identical sizes (so
    /// contents are compared) and adding 2 000.
    #[test]
    fn flattening_ten_thousand_files_is_quick() {
        let dir = tempfile::tempdir().unwrap();
        let mut base = Tree::new();
        let mut one = Tree::new();
        let mut two = Tree::new();
        for i in 0..10_000 {
            base.insert(format!("/usr/share/d{}/f{i}", i % 100), file(b"base"))
                .unwrap();
        }
        for i in 0..2_000 {
            let host = dir.path().join(format!("h{i}"));
            fs::write(&host, format!("{i:08}")).unwrap();
            let path = format!("/usr/share/d{}/f{i}", i % 100);
            one.insert(&path, Entry::host_file(&host, 0o644)).unwrap();
            two.insert(&path, file(format!("{:08}", i + (i % 2)).as_bytes()))
                .unwrap();
            two.insert(format!("/opt/new/f{i}"), file(b"n")).unwrap();
        }
        let start = Instant::now();
        let (out, report) = flatten(base, &layers(vec![("one", one), ("two", two)])).unwrap();
        let took = start.elapsed();
        println!("flatten of 10000 + 2x2000 entries: {took:?}");
        assert_eq!(out.len(), 1 + 2 + 100 + 10_000 + 2 + 2_000);
        assert_eq!(report.conflicts.len(), 2_000);
        let same = report
            .conflicts
            .iter()
            .filter(|c| c.kind == ConflictKind::SameContent)
            .count();
        assert_eq!(same, 1_000);
        assert!(took.as_secs() < 10, "{took:?}");
    }

    /// Tree listing comparable across sources: kind, mode, owner and file contents.
    fn describe(tree: &Tree) -> Vec<String> {
        tree.iter()
            .map(|(path, entry)| {
                let what = match &entry.kind {
                    EntryKind::File(FileData::Host(h)) => {
                        format!("file {:?}", String::from_utf8_lossy(&fs::read(h).unwrap()))
                    }
                    EntryKind::File(FileData::Bytes(b)) => {
                        format!("file {:?}", String::from_utf8_lossy(b))
                    }
                    other => format!("{other:?}"),
                };
                format!(
                    "{} {what} {:o} {}:{}",
                    path.display(),
                    entry.mode,
                    entry.uid,
                    entry.gid
                )
            })
            .collect()
    }

    fn sh(script: &str) -> bool {
        Command::new("sh")
            .arg("-ec")
            .arg(script)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Judge: the kernel's overlayfs. The layers are made by overlayfs itself (changes through a
    /// mount with an upper directory leave real whiteouts and opaque directories), then mounted
    /// read-only as a stack and compared with the flattened tree.
    #[test]
    fn matches_a_real_overlay_mount() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let setup = format!(
            "cd {d}; mkdir -p base/etc/conf.d base/opt/tool/bin base/lib64 m w1 w2 l1 l2 chk
             echo base > base/etc/motd; echo a > base/etc/conf.d/a; echo b > base/etc/issue
             echo t > base/opt/tool/bin/t; echo keep > base/opt/keep; ln -s lib64 base/lib
             mount -t overlay ov -o lowerdir=base,upperdir=l1,workdir=w1 m
             echo one > m/etc/motd; echo new > m/etc/conf.d/n; rm m/etc/issue
             rm -r m/lib; mkdir m/lib; echo real > m/lib/x; chmod 700 m/opt
             umount m
             mount -t overlay ov -o lowerdir=l1:base,upperdir=l2,workdir=w2 m
             rm -r m/etc/conf.d; mkdir m/etc/conf.d; echo only > m/etc/conf.d/z
             rm -r m/opt/tool; echo two > m/etc/motd; ln -s x m/lib/y
             umount m
             mount -t overlay ov -o ro,lowerdir=l2:l1:base chk"
        );
        if !crate::test_support::require_root("the overlayfs judge") {
            return;
        }
        let mounted = sh(&setup);
        if !mounted {
            let _ = sh(&format!(
                "umount {d}/m 2>/dev/null; umount {d}/chk 2>/dev/null"
            ));
        }
        if !crate::test_support::require(
            mounted,
            "mounting overlayfs failed",
            "run the tests as root where overlayfs mounts are allowed",
        ) {
            return;
        }
        let mounted = Tree::from_dir(dir.path().join("chk"));
        let base = Tree::from_dir(dir.path().join("base")).unwrap();
        let l1 = Tree::from_dir(dir.path().join("l1")).unwrap();
        let mut l2 = Tree::from_dir(dir.path().join("l2")).unwrap();
        let want = describe(&mounted.unwrap());
        assert!(sh(&format!("umount {d}/chk")));
        // The opaque xattr overlayfs set on l2/etc/conf.d, in its OCI form.
        l2.insert("/etc/conf.d/.wh..wh..opq", file(b"")).unwrap();
        let (flat, report) = flatten(base, &layers(vec![("l1", l1), ("l2", l2)])).unwrap();
        assert_eq!(describe(&flat), want);
        assert!(want.iter().any(|l| l.starts_with("/lib Dir")), "{want:#?}");
        assert!(
            !want.iter().any(|l| l.contains("/etc/conf.d/a")),
            "{want:#?}"
        );
        let motd = report
            .conflicts
            .iter()
            .find(|c| c.path == Path::new("/etc/motd"));
        assert_eq!(motd.unwrap().kind, ConflictKind::DifferentContent);
    }
}
