//! Resolving a path inside the merged root or a mounted image while the
//! init still runs in the initramfs: [`strata_proto::rootpath::chase`] over
//! the real file system.
//!
//! The merged root is mounted on `/strata/root`, so its symlinks are
//! relative to a root that is not ours: `/etc/os-release ->
//! ../usr/lib/os-release` works as is, but `/lib -> /usr/lib` would leave
//! the tree. The walk itself (and its rules) is the composer's too.

use std::io;
use std::path::{Path, PathBuf};

use strata_proto::rootpath::{chase, ChaseError, Node};

/// Resolves `path` (as the tree sees it, absolute or not) inside `root`
/// and returns the host path. Fails only on a symlink loop or an
/// unreadable link; a missing component is kept, so callers learn of
/// absence when they open the result.
pub fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let host = |inside: &Path| root.join(inside.strip_prefix("/").unwrap_or(inside));
    match chase(path, |inside| lookup(&host(inside))) {
        Ok(chased) => Ok(host(&chased.path)),
        Err(ChaseError::Lookup(err)) => Err(err),
        Err(ChaseError::Loop(at)) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "too many levels of symbolic links at {}",
                host(&at).display()
            ),
        )),
    }
}

/// One path of the real file system, links not followed.
fn lookup(path: &Path) -> io::Result<Node> {
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => Ok(Node::Symlink(std::fs::read_link(path)?)),
        Ok(_) => Ok(Node::Other),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Node::Missing),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;
    use std::os::unix::fs::symlink;

    fn tree() -> TestDir {
        let dir = TestDir::new("rootpath");
        dir.file("usr/lib/os-release", b"ID=x\n").dir("etc");
        dir
    }

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let dir = tree();
        symlink("/usr/lib", dir.0.join("lib")).unwrap();
        symlink("/usr/lib/os-release", dir.0.join("etc/os-release")).unwrap();
        let got = resolve(&dir.0, Path::new("/etc/os-release")).unwrap();
        assert_eq!(got, dir.0.join("usr/lib/os-release"));
        let got = resolve(&dir.0, Path::new("/lib/modules/6.1")).unwrap();
        assert_eq!(got, dir.0.join("usr/lib/modules/6.1"));
    }

    #[test]
    fn relative_links_and_dot_dot_cannot_escape() {
        let dir = tree();
        symlink("../usr/lib/os-release", dir.0.join("etc/os-release")).unwrap();
        assert_eq!(
            resolve(&dir.0, Path::new("etc/os-release")).unwrap(),
            dir.0.join("usr/lib/os-release")
        );
        symlink("../../../../usr", dir.0.join("etc/up")).unwrap();
        assert_eq!(
            resolve(&dir.0, Path::new("/etc/up/lib")).unwrap(),
            dir.0.join("usr/lib")
        );
        assert_eq!(
            resolve(&dir.0, Path::new("/../../usr/./lib")).unwrap(),
            dir.0.join("usr/lib")
        );
    }

    #[test]
    fn missing_components_are_kept_and_loops_fail() {
        let dir = tree();
        assert_eq!(
            resolve(&dir.0, Path::new("/opt/x")).unwrap(),
            dir.0.join("opt/x")
        );
        symlink("loop", dir.0.join("loop")).unwrap();
        let err = resolve(&dir.0, Path::new("/loop/x")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("too many levels of symbolic links at "));
    }
}
