//! Resolving a path inside a tree that is not `/`, the way systemd's
//! `chase(..., CHASE_PREFIX_ROOT)` does: absolute link targets and `..`
//! are resolved against the tree's root and can never leave it.
//!
//! The composer resolves paths in an image held in memory (checking an
//! extension before it ships); the guest init resolves them in a mounted
//! image or the merged root (deciding whether to merge it). Both walk with
//! this one function, each with its own lookup, so a release file the
//! composer finds through a symlink is the one the guest finds.
//!
//! Supported: symlinks anywhere in the path (at most 40, like the kernel),
//! `.` and `..`, components that do not exist (the rest is kept unresolved
//! and the result says so). Not supported: mount-point or
//! `openat2(RESOLVE_IN_ROOT)` guarantees (the trees walked are read-only).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up, as the kernel's limit.
pub const MAX_LINKS: usize = 40;

/// What a lookup found at one path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Nothing is there.
    Missing,
    /// A symbolic link, with its target as written.
    Symlink(PathBuf),
    /// A file, a directory or anything else that is not a link.
    Other,
}

/// A path resolved inside the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chased {
    /// Absolute inside the tree (`/usr/lib/os-release`).
    pub path: PathBuf,
    /// False when a component was missing: the rest of `path` is the
    /// unresolved remainder, `..` dropped.
    pub complete: bool,
}

/// Why a path could not be resolved.
#[derive(Debug)]
pub enum ChaseError<E> {
    /// More than [`MAX_LINKS`] links; the link (inside the tree) where it stopped.
    Loop(PathBuf),
    /// The lookup failed.
    Lookup(E),
}

/// Resolves `path` (absolute or not, as the tree sees it) with `lookup`,
/// which is asked about absolute paths inside the tree, parents first.
pub fn chase<E>(
    path: &Path,
    mut lookup: impl FnMut(&Path) -> Result<Node, E>,
) -> Result<Chased, ChaseError<E>> {
    let mut todo: VecDeque<OsString> = components(path).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        let candidate = inside(&done).join(&name);
        match lookup(&candidate).map_err(ChaseError::Lookup)? {
            Node::Symlink(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(ChaseError::Loop(candidate));
                }
                if target.is_absolute() {
                    done.clear();
                }
                for (at, part) in components(&target).enumerate() {
                    todo.insert(at, part);
                }
            }
            Node::Other => done.push(name),
            Node::Missing => {
                done.push(name);
                done.extend(todo.drain(..).filter(|part| part != ".."));
                return Ok(Chased {
                    path: inside(&done),
                    complete: false,
                });
            }
        }
    }
    Ok(Chased {
        path: inside(&done),
        complete: true,
    })
}

/// The normal and `..` components of `path`; the root and `.` vanish.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|component| match component {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn inside(parts: &[OsString]) -> PathBuf {
    let mut path = PathBuf::from("/");
    path.extend(parts);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tree as a map: path → link target (`Some`) or plain entry (`None`).
    fn lookup<'a>(
        tree: &'a BTreeMap<&str, Option<&str>>,
    ) -> impl FnMut(&Path) -> Result<Node, ()> + 'a {
        |p| {
            Ok(match tree.get(p.to_str().unwrap()) {
                None => Node::Missing,
                Some(None) => Node::Other,
                Some(Some(target)) => Node::Symlink(PathBuf::from(target)),
            })
        }
    }

    fn tree(
        links: &[(&'static str, Option<&'static str>)],
    ) -> BTreeMap<&'static str, Option<&'static str>> {
        let mut t: BTreeMap<_, _> = [
            ("/usr", None),
            ("/usr/lib", None),
            ("/usr/lib/os-release", None),
            ("/etc", None),
        ]
        .into_iter()
        .collect();
        t.extend(links.iter().copied());
        t
    }

    fn resolved(t: &BTreeMap<&str, Option<&str>>, path: &str) -> (String, bool) {
        let c = chase(Path::new(path), lookup(t)).unwrap();
        (c.path.to_string_lossy().into_owned(), c.complete)
    }

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let t = tree(&[
            ("/lib", Some("/usr/lib")),
            ("/etc/os-release", Some("/usr/lib/os-release")),
        ]);
        assert_eq!(
            resolved(&t, "/etc/os-release"),
            ("/usr/lib/os-release".into(), true)
        );
        assert_eq!(
            resolved(&t, "lib/os-release"),
            ("/usr/lib/os-release".into(), true)
        );
    }

    #[test]
    fn relative_links_and_dot_dot_cannot_escape() {
        let t = tree(&[
            ("/etc/os-release", Some("../usr/lib/os-release")),
            ("/etc/up", Some("../../../../usr")),
        ]);
        assert_eq!(
            resolved(&t, "/etc/os-release"),
            ("/usr/lib/os-release".into(), true)
        );
        assert_eq!(resolved(&t, "/etc/up/lib"), ("/usr/lib".into(), true));
        assert_eq!(resolved(&t, "/../../usr/./lib"), ("/usr/lib".into(), true));
    }

    #[test]
    fn missing_components_are_kept_and_flagged() {
        let t = tree(&[("/lib", Some("/usr/lib"))]);
        assert_eq!(
            resolved(&t, "/lib/modules/../x/6.1"),
            ("/usr/lib/modules/x/6.1".into(), false)
        );
        assert_eq!(resolved(&t, "/opt"), ("/opt".into(), false));
    }

    #[test]
    fn loops_fail_at_the_link() {
        let t = tree(&[("/loop", Some("loop"))]);
        let err = chase(Path::new("/loop/x"), lookup(&t)).unwrap_err();
        assert!(matches!(err, ChaseError::Loop(p) if p == Path::new("/loop")));
    }

    #[test]
    fn lookup_errors_are_passed_on() {
        let err = chase(Path::new("/a/b"), |_| Err::<Node, _>("denied")).unwrap_err();
        assert!(matches!(err, ChaseError::Lookup("denied")));
    }
}
