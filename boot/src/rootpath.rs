//! Resolving a path inside a tree that is not (yet) `/`, the way systemd's
//! `chase(..., CHASE_PREFIX_ROOT)` does.
//!
//! The merged root is mounted on `/strata/root` while the init still runs
//! in the initramfs, so its symlinks are relative to a root that is not
//! ours: `/etc/os-release -> ../usr/lib/os-release` works as is, but
//! `/lib -> /usr/lib` would leave the tree. Here absolute link targets and
//! `..` are resolved against the tree's root and can never leave it.
//!
//! Supported: symlinks anywhere in the path (at most 40, like the kernel),
//! `.` and `..`, components that do not exist (the rest is appended
//! unresolved, so callers learn of absence when they open the result).
//! Not supported: mount-point or `openat2(RESOLVE_IN_ROOT)` guarantees: a
//! tree that changes while it is resolved could race (ours is read-only).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// Resolves `path` (as the tree sees it, absolute or not) inside `root`
/// and returns the host path. Fails only on a symlink loop or an
/// unreadable link.
pub fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut todo: VecDeque<OsString> = components(path).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        let candidate = joined(root, &done).join(&name);
        match candidate.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "too many levels of symbolic links at {}",
                            candidate.display()
                        ),
                    ));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    done.clear();
                }
                for (at, part) in components(&target).enumerate() {
                    todo.insert(at, part);
                }
            }
            Ok(_) => done.push(name),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                done.push(name);
                done.extend(todo.drain(..).filter(|part| part != ".."));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(joined(root, &done))
}

/// The normal and `..` components of `path`; the root and `.` vanish.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|component| match component {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn joined(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
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
