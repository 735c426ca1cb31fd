//! The per-layer checks the report rests on.
//!
//! * **mounted**: the layer's mount point is one of the lower directories of
//!   the overlay mounted on the merged root, according to the kernel
//!   (`/proc/self/mountinfo`), not according to what the init asked for.
//! * **visible**: one regular file the layer ships reads back identically
//!   through the merged root. The probe is chosen deterministically: walk
//!   the layer depth-first with each directory's entries sorted by name
//!   (bytes), and take the first regular file that no later layer shadows.
//!   A later layer shadows a path when it has any entry at that path
//!   (including a whiteout), a non-directory at one of its parent paths, or
//!   an opaque directory (`trusted.overlay.opaque=y`) at one of them.
//!   Paths the init mounts over in the merged root (`etc/extensions.yaml`)
//!   are never probes. Files are compared in chunks, never read whole.
//!   An upper layer may be scoped to a subtree ([`Upper::at`]): a sysext
//!   image merged on `/usr` shadows paths under `usr/` only, and never the
//!   `usr` directory itself (the merge is a mount on it, not a replacement).
//!
//! Not supported: xattr or metadata comparison, redirects, metacopy.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::mountinfo::{self, MountEntry};
use crate::sys::{cpath, error_chain};

const CHUNK: usize = 64 * 1024;
const OPAQUE_XATTR: &std::ffi::CStr = c"trusted.overlay.opaque";

/// A check could not be carried out (as opposed to: it ran and said no).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The merged root is not an overlay, per mountinfo.
    #[error(
        "no overlay with lowerdir= is mounted on {merged} according to {}",
        mountinfo::MOUNTINFO
    )]
    NoOverlay {
        /// The merged root.
        merged: PathBuf,
    },
    /// Reading a file or directory failed.
    #[error("cannot read {path}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// The outcome of the visibility check for one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// The probe matched.
    pub visible: bool,
    /// The probe, as an absolute path in the merged root.
    pub probe: Option<String>,
    /// Why it failed, when it did.
    pub detail: Option<String>,
}

impl Visibility {
    /// The check could not run (e.g. the layer never mounted).
    pub fn failed(detail: String) -> Visibility {
        Visibility {
            visible: false,
            probe: None,
            detail: Some(detail),
        }
    }
}

/// True when `layer` is a lower directory of the overlay on `merged`.
pub fn in_root_overlay(entries: &[MountEntry], merged: &Path, layer: &Path) -> Result<bool, Error> {
    let lowerdirs = mountinfo::top_mount_at(entries, merged)
        .and_then(MountEntry::overlay_lowerdirs)
        .ok_or_else(|| Error::NoOverlay {
            merged: merged.to_path_buf(),
        })?;
    Ok(lowerdirs.iter().any(|dir| dir == layer))
}

/// The mounted check: `None` when `layer` is a lower directory of the
/// overlay on `merged`, otherwise why not.
pub fn check_mounted(entries: &[MountEntry], merged: &Path, layer: &Path) -> Option<String> {
    match in_root_overlay(entries, merged, layer) {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "{} is not a lower directory of the overlay on {}",
            layer.display(),
            merged.display()
        )),
        Err(err) => Some(error_chain(&err)),
    }
}

/// A layer stacked above the one being probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upper {
    /// Where its tree is mounted.
    pub dir: PathBuf,
    /// The relative path its tree is shown at (empty: the whole tree).
    pub at: PathBuf,
}

impl Upper {
    /// A layer that covers the whole tree (a Talos layer over the root).
    pub fn whole(dir: &Path) -> Upper {
        Upper {
            dir: dir.to_path_buf(),
            at: PathBuf::new(),
        }
    }

    /// A layer merged on the subtree `at` (a sysext image's `usr/`).
    pub fn scoped(dir: &Path, at: &Path) -> Upper {
        Upper {
            dir: dir.to_path_buf(),
            at: at.to_path_buf(),
        }
    }
}

/// Picks a probe in `layer` (see the module doc), `later` being the mount
/// points of the layers stacked above it and `skip` relative paths that
/// must not be chosen. Returns the probe relative to the layer root.
pub fn find_probe(
    layer: &Path,
    later: &[PathBuf],
    skip: &[&Path],
) -> Result<Option<PathBuf>, Error> {
    let later: Vec<Upper> = later.iter().map(|dir| Upper::whole(dir)).collect();
    find_probe_under(layer, &later, skip)
}

/// [`find_probe`] with upper layers that may be scoped to a subtree.
pub fn find_probe_under(
    layer: &Path,
    later: &[Upper],
    skip: &[&Path],
) -> Result<Option<PathBuf>, Error> {
    walk(layer, Path::new(""), later, skip)
}

fn walk(
    layer: &Path,
    rel: &Path,
    later: &[Upper],
    skip: &[&Path],
) -> Result<Option<PathBuf>, Error> {
    let dir = layer.join(rel);
    let read_fail = |source| Error::Read {
        path: dir.clone(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(read_fail)? {
        let entry = entry.map_err(read_fail)?;
        let kind = entry.file_type().map_err(read_fail)?;
        entries.push((entry.file_name(), kind));
    }
    entries.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    for (name, kind) in entries {
        let child = rel.join(&name);
        if kind.is_file() && !skip.contains(&child.as_path()) && !shadowed(later, &child, true) {
            return Ok(Some(child));
        }
        if kind.is_dir() && !shadowed(later, &child, false) {
            if let Some(found) = walk(layer, &child, later, skip)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// Whether a layer above hides `rel`: a file is hidden by any entry at its
/// path; a directory's whole subtree is hidden by a non-directory or an
/// opaque directory at its path. Both are hidden by a non-directory or an
/// opaque directory at a parent path. A plain directory over a directory
/// merges with it, so its files are judged one by one.
fn shadowed(later: &[Upper], rel: &Path, is_file: bool) -> bool {
    later.iter().any(|upper| hides(upper, rel, is_file))
}

fn hides(upper: &Upper, rel: &Path, is_file: bool) -> bool {
    let Ok(rel) = rel.strip_prefix(&upper.at) else {
        return false;
    };
    let mut at = upper.dir.clone();
    let mut components = rel.components().peekable();
    while let Some(component) = components.next() {
        at.push(component);
        let Ok(meta) = at.symlink_metadata() else {
            return false;
        };
        let last = components.peek().is_none();
        if (last && is_file) || !meta.is_dir() || is_opaque(&at) {
            return true;
        }
    }
    false
}

fn is_opaque(path: &Path) -> bool {
    let Ok(c_path) = cpath(path) else {
        return false;
    };
    let mut value = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // kernel writes at most `value.len()` bytes into `value`.
    let len = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            OPAQUE_XATTR.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    len == 1 && value[0] == b'y'
}

/// True when the two files have the same bytes.
pub fn same_content(a: &Path, b: &Path) -> Result<bool, Error> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let (mut file_a, mut file_b) = (open(a)?, open(b)?);
    let mut buf_a = vec![0u8; CHUNK];
    let mut buf_b = vec![0u8; CHUNK];
    loop {
        let n_a = fill(&mut file_a, &mut buf_a).map_err(|source| Error::Read {
            path: a.to_path_buf(),
            source,
        })?;
        let n_b = fill(&mut file_b, &mut buf_b).map_err(|source| Error::Read {
            path: b.to_path_buf(),
            source,
        })?;
        if buf_a[..n_a] != buf_b[..n_b] {
            return Ok(false);
        }
        if n_a == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn fill(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Runs the visibility check for the layer mounted at `layer`.
pub fn check_visible(layer: &Path, later: &[PathBuf], merged: &Path, skip: &[&Path]) -> Visibility {
    let later: Vec<Upper> = later.iter().map(|dir| Upper::whole(dir)).collect();
    check_visible_under(layer, &later, merged, skip)
}

/// [`check_visible`] with upper layers that may be scoped to a subtree.
pub fn check_visible_under(
    layer: &Path,
    later: &[Upper],
    merged: &Path,
    skip: &[&Path],
) -> Visibility {
    let probe = match find_probe_under(layer, later, skip) {
        Ok(Some(probe)) => probe,
        Ok(None) => {
            return Visibility {
                visible: false,
                probe: None,
                detail: Some(format!(
                    "layer {} ships no regular file that later layers leave visible",
                    layer.display()
                )),
            }
        }
        Err(err) => {
            return Visibility {
                visible: false,
                probe: None,
                detail: Some(error_chain(&err)),
            }
        }
    };
    compare_probe(layer, &probe, merged, format!("/{}", probe.display()))
}

/// Compares `probe` (relative) in `layer` and in `merged`; `shown` is how
/// the report names it (its absolute path in the booted system).
pub fn compare_probe(layer: &Path, probe: &Path, merged: &Path, shown: String) -> Visibility {
    let (visible, detail) = match same_content(&layer.join(probe), &merged.join(probe)) {
        Ok(true) => (true, None),
        Ok(false) => (false, Some(format!("{shown} differs in the merged root"))),
        Err(err) => (false, Some(error_chain(&err))),
    };
    Visibility {
        visible,
        probe: Some(shown),
        detail,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory removed on drop (the crate has no tempfile dependency).
    pub(crate) struct TestDir(pub PathBuf);

    impl TestDir {
        pub(crate) fn new(tag: &str) -> TestDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("strata-boot-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        pub(crate) fn file(&self, rel: &str, content: &[u8]) -> &Self {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
            self
        }

        pub(crate) fn dir(&self, rel: &str) -> &Self {
            fs::create_dir_all(self.0.join(rel)).unwrap();
            self
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn probe(layer: &TestDir, later: &[&TestDir], skip: &[&Path]) -> Option<PathBuf> {
        let later: Vec<PathBuf> = later.iter().map(|d| d.0.clone()).collect();
        find_probe(&layer.0, &later, skip).unwrap()
    }

    fn sample_layer() -> TestDir {
        let layer = TestDir::new("layer");
        layer
            .file("usr/local/share/b.txt", b"b")
            .file("usr/local/bin/hello", b"#!/bin/sh\n")
            .file("zz", b"z");
        layer
    }

    #[test]
    fn the_probe_is_the_first_file_in_sorted_depth_first_order() {
        let layer = sample_layer();
        assert_eq!(
            probe(&layer, &[], &[]),
            Some(PathBuf::from("usr/local/bin/hello"))
        );
    }

    #[test]
    fn a_later_entry_at_the_same_path_shadows_the_file() {
        let layer = sample_layer();
        let upper = TestDir::new("upper");
        upper.file("usr/local/bin/hello", b"other");
        assert_eq!(
            probe(&layer, &[&upper], &[]),
            Some(PathBuf::from("usr/local/share/b.txt"))
        );
        let upper = TestDir::new("upper");
        upper.dir("usr/local/bin");
        std::os::unix::fs::symlink("/nowhere", upper.0.join("usr/local/bin/hello")).unwrap();
        assert_eq!(
            probe(&layer, &[&upper], &[]),
            Some(PathBuf::from("usr/local/share/b.txt"))
        );
    }

    #[test]
    fn a_later_plain_directory_merges_instead_of_hiding() {
        let layer = sample_layer();
        let upper = TestDir::new("upper");
        upper.file("usr/local/bin/other", b"x");
        assert_eq!(
            probe(&layer, &[&upper], &[]),
            Some(PathBuf::from("usr/local/bin/hello"))
        );
    }

    #[test]
    fn a_later_non_directory_hides_a_whole_subtree() {
        let layer = sample_layer();
        let upper = TestDir::new("upper");
        upper.file("usr", b"not a dir");
        assert_eq!(probe(&layer, &[&upper], &[]), Some(PathBuf::from("zz")));
    }

    #[test]
    fn a_scoped_upper_hides_only_inside_its_subtree() {
        let layer = TestDir::new("layer");
        layer
            .file("etc/a", b"a")
            .file("usr/bin/x", b"x")
            .file("usr/bin/y", b"y");
        let sysext_usr = TestDir::new("sysext-usr");
        sysext_usr
            .file("bin/x", b"other")
            .file("etc/a", b"not merged");
        let later = [Upper::scoped(&sysext_usr.0, Path::new("usr"))];
        // etc/a is outside the scope: the image's etc/ is never merged.
        assert_eq!(
            find_probe_under(&layer.0, &later, &[]).unwrap(),
            Some(PathBuf::from("etc/a"))
        );
        let skip = [Path::new("etc/a")];
        assert_eq!(
            find_probe_under(&layer.0, &later, &skip).unwrap(),
            Some(PathBuf::from("usr/bin/y"))
        );
        // A scoped upper whose tree is a file does not hide the mount point.
        let file_upper = TestDir::new("file-upper");
        file_upper.file("f", b"f");
        let later = [Upper::scoped(&file_upper.0.join("f"), Path::new("usr"))];
        assert_eq!(
            find_probe_under(&layer.0, &later, &skip).unwrap(),
            Some(PathBuf::from("usr/bin/x"))
        );
    }

    #[test]
    fn skipped_paths_are_never_probes() {
        let layer = TestDir::new("layer");
        layer.file("etc/extensions.yaml", b"x").file("etc/z", b"z");
        let skip = [Path::new("etc/extensions.yaml")];
        assert_eq!(probe(&layer, &[], &skip), Some(PathBuf::from("etc/z")));
    }

    #[test]
    fn an_opaque_later_directory_hides_the_subtree() {
        let layer = sample_layer();
        let upper = TestDir::new("upper");
        upper.dir("usr");
        let c_path = cpath(&upper.0.join("usr")).unwrap();
        // SAFETY: NUL-terminated strings and a 1-byte value, all outliving the call.
        let ret = unsafe {
            libc::lsetxattr(
                c_path.as_ptr(),
                OPAQUE_XATTR.as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        let why = format!(
            "cannot set trusted xattrs here: {}",
            io::Error::last_os_error()
        );
        if !crate::test_support::require(ret == 0, &why, "run the tests as root") {
            return;
        }
        assert_eq!(probe(&layer, &[&upper], &[]), Some(PathBuf::from("zz")));
    }

    #[test]
    fn visibility_compares_contents_through_the_merged_root() {
        let layer = sample_layer();
        let merged = TestDir::new("merged");
        merged.file("usr/local/bin/hello", b"#!/bin/sh\n");
        let v = check_visible(&layer.0, &[], &merged.0, &[]);
        assert_eq!(
            v,
            Visibility {
                visible: true,
                probe: Some("/usr/local/bin/hello".into()),
                detail: None
            }
        );
        merged.file("usr/local/bin/hello", b"#!/bin/sh\nchanged\n");
        let v = check_visible(&layer.0, &[], &merged.0, &[]);
        assert!(!v.visible);
        assert_eq!(
            v.detail.as_deref(),
            Some("/usr/local/bin/hello differs in the merged root")
        );
        fs::remove_file(merged.0.join("usr/local/bin/hello")).unwrap();
        let v = check_visible(&layer.0, &[], &merged.0, &[]);
        assert!(!v.visible);
        assert!(v.detail.unwrap().starts_with(&format!(
            "cannot read {}/usr/local/bin/hello: ",
            merged.0.display()
        )));
    }

    #[test]
    fn a_layer_without_files_is_not_visible() {
        let layer = TestDir::new("layer");
        layer.dir("usr/empty");
        let v = check_visible(&layer.0, &[], Path::new("/nonexistent"), &[]);
        assert!(!v.visible);
        assert_eq!(v.probe, None);
        assert!(v
            .detail
            .unwrap()
            .ends_with("ships no regular file that later layers leave visible"));
    }

    #[test]
    fn content_comparison_spans_chunks() {
        let dir = TestDir::new("cmp");
        let mut big = vec![7u8; CHUNK * 2 + 5];
        dir.file("a", &big);
        dir.file("b", &big);
        assert!(same_content(&dir.0.join("a"), &dir.0.join("b")).unwrap());
        *big.last_mut().unwrap() = 8;
        dir.file("b", &big);
        assert!(!same_content(&dir.0.join("a"), &dir.0.join("b")).unwrap());
        dir.file("b", &big[..CHUNK]);
        assert!(!same_content(&dir.0.join("a"), &dir.0.join("b")).unwrap());
    }

    #[test]
    fn mounted_means_listed_in_the_root_overlay() {
        let text = "1 1 0:2 / / rw - rootfs none rw\n\
                    33 1 0:30 / /strata/root ro - overlay overlay ro,lowerdir=/strata/layers/1:/strata/rootfs\n";
        let entries = mountinfo::parse(text).unwrap();
        let merged = Path::new("/strata/root");
        assert!(in_root_overlay(&entries, merged, Path::new("/strata/layers/1")).unwrap());
        assert!(!in_root_overlay(&entries, merged, Path::new("/strata/layers/0")).unwrap());
        assert_eq!(
            check_mounted(&entries, merged, Path::new("/strata/layers/1")),
            None
        );
        assert_eq!(
            check_mounted(&entries, merged, Path::new("/strata/layers/0")).as_deref(),
            Some("/strata/layers/0 is not a lower directory of the overlay on /strata/root")
        );
        let err =
            in_root_overlay(&entries, Path::new("/"), Path::new("/strata/layers/1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no overlay with lowerdir= is mounted on / according to /proc/self/mountinfo"
        );
    }
}
