//! The profile's `files:` and `state:`, checked against the root and the
//! host, into what the build ships: the files layer's tree (stacked above
//! every layer at boot, `/files.sqsh`) and the list the guest checks.
//!
//! Why a layer of its own: profile files must win over every extension
//! (the init puts the layer on top of the root overlay and on top of the
//! sysext/confext overlays of `/usr`, `/opt` and `/etc`), they must not
//! change the root squashfs (its digest stays the root's), and the guest
//! can check each one against the list.
//!
//! Checks, each blamed on `files[i].<field>` with its line and column:
//! the path is absolute and normalised (no `.`, `..`, `//`, trailing `/`,
//! control characters), not under the API mounts (`/dev`, `/proc`, `/sys`,
//! `/run`, which hide it at boot) nor `/etc/extensions.yaml`, unique, and
//! none of its parents is a symlink or a file in the root or in another
//! entry (a directory there would shadow the root's symlink: `/lib/x` on a
//! merged-usr root must be written `/usr/lib/x`); exactly the fields of its
//! type (`content` or `source` for a file, `target` for a symlink, neither
//! for a directory); a `source` is a regular file of at most
//! [`MAX_FILE`] bytes; the mode is an octal string within 07777, and a
//! file is not world-writable; the owner is `uid:gid` or names found in
//! the root's /etc/passwd and /etc/group. Parent directories the layer
//! needs take the mode and owner of the root's own directories, so
//! `/root/.ssh/authorized_keys` does not open up `/root`.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use strata_proto::initramfs::{FileKind, ProfileFile};

use super::{Blame, PlatformPlan};
use crate::error::{Error, Result};
use crate::fs::tree::{Entry, EntryKind, FileData, Tree};
use crate::profile::files::{FileSpec, FileType, ModeText, StateMode};
use crate::profile::platform::PartitionKind;
use crate::profile::LoadedProfile;

/// The largest file a `files:` entry may ship (content or source).
pub const MAX_FILE: u64 = 16 << 20;

/// Top-level directories the init mounts over: a file there is hidden.
const HIDDEN_UNDER: [&str; 4] = ["dev", "proc", "sys", "run"];

/// What the build ships for `files:`.
#[derive(Debug, Clone, Default)]
pub struct FilesPlan {
    /// The layer: every entry, and its parents as the root has them.
    pub tree: Tree,
    /// What the guest checks, in the profile's order.
    pub records: Vec<ProfileFile>,
}

impl FilesPlan {
    /// True when the profile has no files.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Checks every `files:` entry and builds the layer. `root` is the root
/// tree (absent for a prebuilt squashfs, which cannot take files).
pub(crate) fn resolve(lp: &LoadedProfile, blame: &Blame, root: Option<&Tree>) -> Result<FilesPlan> {
    let specs = &lp.profile.files;
    if specs.is_empty() {
        return Ok(FilesPlan::default());
    }
    let Some(root) = root else {
        return Err(blame
            .error(
                "files",
                "`files:` needs the root as `dir` or `tar`: strata reads the root's directories and users to place them",
                "give `rootfs.dir` or `rootfs.tar`, or drop `files:`",
            )
            .into());
    };
    let mut plan = FilesPlan::default();
    for (i, spec) in specs.iter().enumerate() {
        let field = |name: &str| format!("files[{i}].{name}");
        let bad = |name: &str, message: String, hint: &str| -> Error {
            blame.error(&field(name), message, hint).into()
        };
        let path = check_path(&spec.path).map_err(|m| {
            bad(
                "path",
                m,
                "give an absolute, normalised path such as /etc/hostname",
            )
        })?;
        if plan.records.iter().any(|r| r.path == spec.path) {
            return Err(bad(
                "path",
                format!("{} is listed twice", spec.path),
                "keep one entry per path",
            ));
        }
        parents(&plan.tree, root, &path).map_err(|m| {
            bad(
                "path",
                m,
                "write the path the symlink leads to, or drop the entry",
            )
        })?;
        let (entry, kind, sha256) =
            entry(lp, spec).map_err(|(name, m, hint)| bad(name, m, hint))?;
        let mode = mode(spec).map_err(|m| {
            bad(
                "mode",
                m,
                "write the mode as a quoted octal string, e.g. mode: \"0644\"",
            )
        })?;
        if kind == FileKind::File && mode & 0o002 != 0 {
            return Err(bad(
                "mode",
                format!("{:04o} makes the file world-writable", mode),
                "drop the write bit for others (e.g. \"0644\")",
            ));
        }
        let (uid, gid) = owner(spec.owner.as_deref(), root).map_err(|m| {
            bad(
                "owner",
                m,
                "give `uid:gid` (e.g. \"0:0\") or user and group names the root's /etc/passwd and /etc/group list",
            )
        })?;
        let entry = Entry { mode, ..entry }.owned_by(uid, gid);
        plan.tree
            .insert(&path, entry)
            .map_err(|e| Error::step(crate::error::ErrorKind::Io, "building the files layer", e))?;
        plan.records.push(ProfileFile {
            path: spec.path.clone(),
            kind,
            sha256,
            mode: if kind == FileKind::Symlink {
                0o777
            } else {
                mode
            },
            uid,
            gid,
        });
    }
    let listed: Vec<PathBuf> = plan
        .records
        .iter()
        .map(|r| PathBuf::from(&r.path))
        .collect();
    copy_parents(&mut plan.tree, root, &listed);
    Ok(plan)
}

/// Persistent state needs a `DATA` partition on every platform.
pub(crate) fn check_state(
    lp: &LoadedProfile,
    blame: &Blame,
    platforms: &[PlatformPlan],
) -> Result<()> {
    if lp.profile.state != StateMode::Persistent {
        return Ok(());
    }
    for pp in platforms {
        let has_data = pp.platform.disk.partitions.iter().any(|p| {
            p.kind == PartitionKind::Linux && p.label == strata_proto::initramfs::STATE_PARTITION
        });
        if !has_data {
            return Err(blame
                .error(
                    "state",
                    format!(
                        "`state: persistent` keeps the state on the DATA partition, and platform `{}` has none",
                        pp.platform.name
                    ),
                    "use a platform with a DATA partition (nocloud, aws, azure, gcp, vmware), or `state: tmpfs`",
                )
                .into());
        }
    }
    Ok(())
}

/// The path, checked and normalised; or why not.
pub fn check_path(p: &str) -> std::result::Result<PathBuf, String> {
    if p.chars().any(char::is_control) {
        return Err(format!("{p:?} contains a control character"));
    }
    if !p.starts_with('/') || p == "/" {
        return Err(format!("{p:?} is not an absolute path below /"));
    }
    if p.contains("//") || p.ends_with('/') {
        return Err(format!("{p:?} is not normalised (`//` or a trailing `/`)"));
    }
    let path = PathBuf::from(p);
    if path
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || p.split('/').any(|c| c == ".")
    {
        return Err(format!("{p:?} contains `.` or `..`"));
    }
    let first = p.split('/').nth(1).unwrap_or_default();
    if HIDDEN_UNDER.contains(&first) {
        return Err(format!(
            "{p} is under /{first}, which the init mounts over at boot: the file would never be seen"
        ));
    }
    if p == "/etc/extensions.yaml" {
        return Err("/etc/extensions.yaml is where strata shows the extension list".into());
    }
    Ok(path)
}

/// Gives each parent of `path` in `layer` the root's mode and owner;
/// refuses a parent that is a symlink or a non-directory (in the root or
/// in the layer).
fn parents(layer: &Tree, root: &Tree, path: &Path) -> std::result::Result<(), String> {
    for parent in path.ancestors().skip(1) {
        if parent == Path::new("/") {
            break;
        }
        for (tree, whose) in [(layer, "another `files:` entry"), (root, "the root")] {
            match tree.get(parent).map(|e| &e.kind) {
                None | Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink(target)) => {
                    return Err(format!(
                        "{} goes through {}, a symlink to {} in {whose}",
                        path.display(),
                        parent.display(),
                        target.display()
                    ))
                }
                Some(_) => {
                    return Err(format!(
                        "{} goes through {}, which is not a directory in {whose}",
                        path.display(),
                        parent.display()
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Gives the layer's directories that are not `listed` (made only as
/// parents, `/` included) the root's mode and owner: overlayfs shows a
/// directory with the attributes of its topmost layer.
pub fn copy_parents(layer: &mut Tree, root: &Tree, listed: &[PathBuf]) {
    let dirs: Vec<PathBuf> = layer
        .iter()
        .filter(|(p, e)| e.is_dir() && !listed.iter().any(|l| l == p))
        .map(|(p, _)| p.to_path_buf())
        .collect();
    for dir in dirs {
        if let Some(e) = root.get(&dir).filter(|e| e.is_dir()) {
            let _ = layer.insert(&dir, e.clone());
        }
    }
}

type Refusal = (&'static str, String, &'static str);

/// The entry's kind and content, the guest's kind and the digest it checks.
fn entry(
    lp: &LoadedProfile,
    spec: &FileSpec,
) -> std::result::Result<(Entry, FileKind, String), Refusal> {
    let extra = |name: &'static str, kind: &str| -> Refusal {
        (
            name,
            format!("`{name}` does not apply to a {kind}"),
            "remove it, or change `type`",
        )
    };
    match spec.kind {
        FileType::Dir => {
            if spec.content.is_some() {
                return Err(extra("content", "directory"));
            }
            if spec.source.is_some() {
                return Err(extra("source", "directory"));
            }
            if spec.target.is_some() {
                return Err(extra("target", "directory"));
            }
            Ok((Entry::dir(0o755), FileKind::Dir, String::new()))
        }
        FileType::Symlink => {
            if spec.content.is_some() {
                return Err(extra("content", "symlink"));
            }
            if spec.source.is_some() {
                return Err(extra("source", "symlink"));
            }
            let Some(target) = spec.target.as_deref().filter(|t| !t.is_empty()) else {
                return Err((
                    "path",
                    "a symlink needs `target`".into(),
                    "add `target: <where it points>`",
                ));
            };
            if target.chars().any(char::is_control) || target.len() > 4095 {
                return Err((
                    "target",
                    format!("{target:?} is not a usable symlink target"),
                    "give a path without control characters",
                ));
            }
            let sha = hex(&Sha256::digest(target.as_bytes()));
            Ok((Entry::symlink(target), FileKind::Symlink, sha))
        }
        FileType::File => {
            if spec.target.is_some() {
                return Err(extra("target", "file"));
            }
            let bytes = match (&spec.content, &spec.source) {
                (Some(text), None) => {
                    if text.len() as u64 > MAX_FILE {
                        return Err((
                            "content",
                            format!(
                                "{} bytes is more than the {} MiB a file may have",
                                text.len(),
                                MAX_FILE >> 20
                            ),
                            "ship large files in an extension",
                        ));
                    }
                    text.clone().into_bytes()
                }
                (None, Some(source)) => read_source(lp, source)?,
                _ => {
                    return Err((
                        "path",
                        "a file needs exactly one of `content` and `source`".into(),
                        "add `content: ...` or `source: <file next to the profile>`",
                    ))
                }
            };
            let sha = hex(&Sha256::digest(&bytes));
            Ok((Entry::bytes_file(bytes, 0o644), FileKind::File, sha))
        }
    }
}

/// A `source:` file: regular, at most [`MAX_FILE`] bytes.
fn read_source(lp: &LoadedProfile, source: &str) -> std::result::Result<Vec<u8>, Refusal> {
    let path = lp.resolve(source);
    let hint = "give a regular file, relative to the profile's directory";
    let meta = std::fs::metadata(&path).map_err(|e| {
        (
            "source",
            format!("cannot read {}: {e}", path.display()),
            hint,
        )
    })?;
    if !meta.is_file() {
        return Err((
            "source",
            format!("{} is not a regular file", path.display()),
            hint,
        ));
    }
    if meta.len() > MAX_FILE {
        return Err((
            "source",
            format!(
                "{} has {} bytes, more than the {} MiB a file may have",
                path.display(),
                meta.len(),
                MAX_FILE >> 20
            ),
            "ship large files in an extension",
        ));
    }
    std::fs::read(&path).map_err(|e| {
        (
            "source",
            format!("cannot read {}: {e}", path.display()),
            hint,
        )
    })
}

/// The mode bits: the profile's, else 0644 (0755 for a directory).
fn mode(spec: &FileSpec) -> std::result::Result<u32, String> {
    let text = match &spec.mode {
        None => {
            return Ok(if spec.kind == FileType::Dir {
                0o755
            } else {
                0o644
            })
        }
        Some(ModeText::Number(n)) => {
            return Err(format!(
                "{n} is a YAML number; YAML parsers disagree on whether 0644 is octal"
            ))
        }
        Some(ModeText::Text(t)) => t,
    };
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode =
        u32::from_str_radix(digits, 8).map_err(|_| format!("{text:?} is not an octal mode"))?;
    if digits.is_empty() || mode > 0o7777 {
        return Err(format!("{text:?} is not a mode between 0000 and 7777"));
    }
    Ok(mode)
}

/// `uid:gid`, `user:group` or `user` (with the user's group), resolved
/// against the root's /etc/passwd and /etc/group.
fn owner(text: Option<&str>, root: &Tree) -> std::result::Result<(u32, u32), String> {
    let Some(text) = text else {
        return Ok((0, 0));
    };
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let passwd = || table(root, "/etc/passwd");
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let row = lookup(&passwd()?, user, "/etc/passwd")?;
            let field = |n: usize| row.get(n).and_then(|v| v.parse::<u32>().ok());
            match (field(2), field(3)) {
                (Some(uid), Some(gid)) => (uid, Some(gid)),
                _ => return Err(format!("the root's /etc/passwd line for {user} is damaged")),
            }
        }
    };
    let gid = match group {
        None => primary.ok_or_else(|| {
            format!("{text:?} gives a numeric user without a group; write `{text}:<gid>`")
        })?,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let row = lookup(&table(root, "/etc/group")?, g, "/etc/group")?;
                row.get(2)
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| format!("the root's /etc/group line for {g} is damaged"))?
            }
        },
    };
    Ok((uid, gid))
}

/// The text of a small file of the root.
fn table(root: &Tree, path: &str) -> std::result::Result<String, String> {
    let data = match root.get(path).map(|e| &e.kind) {
        Some(EntryKind::File(data)) => data,
        _ => return Err(format!("the root has no {path} to look names up in")),
    };
    let bytes = match data {
        FileData::Bytes(b) => b.clone(),
        FileData::Host(_) => data
            .head(1 << 20)
            .map_err(|e| format!("cannot read the root's {path}: {e}"))?,
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The `:`-separated fields of the line for `name`.
fn lookup(text: &str, name: &str, file: &str) -> std::result::Result<Vec<String>, String> {
    text.lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(name))
        .ok_or_else(|| format!("{name} is not in the root's {file}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_normalised_and_visible() {
        assert_eq!(
            check_path("/etc/hostname").unwrap(),
            PathBuf::from("/etc/hostname")
        );
        for (bad, why) in [
            ("etc/hostname", "not an absolute path"),
            ("/", "not an absolute path"),
            ("/etc//x", "not normalised"),
            ("/etc/", "not normalised"),
            ("/etc/../x", "`.` or `..`"),
            ("/etc/./x", "`.` or `..`"),
            ("/etc/a\nb", "control character"),
            ("/run/x", "mounts over at boot"),
            ("/proc", "mounts over at boot"),
            ("/etc/extensions.yaml", "extension list"),
        ] {
            let err = check_path(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    fn root() -> Tree {
        let mut t = Tree::new();
        t.insert("/root", Entry::dir(0o700)).unwrap();
        t.insert("/usr/lib", Entry::dir(0o755)).unwrap();
        t.insert("/lib", Entry::symlink("usr/lib")).unwrap();
        t.insert("/etc/hostname", Entry::bytes_file(b"x".to_vec(), 0o644))
            .unwrap();
        t.insert(
            "/etc/passwd",
            Entry::bytes_file(
                b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:100::/home/alice:/bin/sh\n".to_vec(),
                0o644,
            ),
        )
        .unwrap();
        t.insert(
            "/etc/group",
            Entry::bytes_file(
                b"root:x:0:\nusers:x:100:\nwheel:x:10:alice\n".to_vec(),
                0o644,
            ),
        )
        .unwrap();
        t
    }

    #[test]
    fn parents_may_not_be_symlinks_or_files() {
        let r = root();
        let layer = Tree::new();
        parents(&layer, &r, Path::new("/root/.ssh/authorized_keys")).unwrap();
        assert_eq!(
            parents(&layer, &r, Path::new("/lib/x.conf")).unwrap_err(),
            "/lib/x.conf goes through /lib, a symlink to usr/lib in the root"
        );
        assert_eq!(
            parents(&layer, &r, Path::new("/etc/hostname/x")).unwrap_err(),
            "/etc/hostname/x goes through /etc/hostname, which is not a directory in the root"
        );
    }

    #[test]
    fn the_layer_keeps_the_roots_directory_modes() {
        let r = root();
        let mut layer = Tree::new();
        layer
            .insert(
                "/root/.ssh/authorized_keys",
                Entry::bytes_file(b"k".to_vec(), 0o600),
            )
            .unwrap();
        layer.insert("/etc/ssh", Entry::dir(0o700)).unwrap();
        copy_parents(&mut layer, &r, &[PathBuf::from("/etc/ssh")]);
        assert_eq!(layer.get("/root").unwrap().mode, 0o700);
        assert_eq!(layer.get("/root/.ssh").unwrap().mode, 0o755);
        assert_eq!(layer.get("/etc/ssh").unwrap().mode, 0o700);
    }

    #[test]
    fn owners_are_numbers_or_names_from_the_root() {
        let r = root();
        assert_eq!(owner(None, &r).unwrap(), (0, 0));
        assert_eq!(owner(Some("1000:100"), &r).unwrap(), (1000, 100));
        assert_eq!(owner(Some("alice"), &r).unwrap(), (1000, 100));
        assert_eq!(owner(Some("alice:wheel"), &r).unwrap(), (1000, 10));
        assert_eq!(
            owner(Some("bob"), &r).unwrap_err(),
            "bob is not in the root's /etc/passwd"
        );
        assert!(owner(Some("1000"), &r)
            .unwrap_err()
            .contains("without a group"));
        assert_eq!(
            owner(Some("alice:admins"), &r).unwrap_err(),
            "admins is not in the root's /etc/group"
        );
    }

    #[test]
    fn modes_are_octal_strings_within_07777() {
        let spec = |mode: Option<ModeText>, kind| FileSpec {
            path: "/x".into(),
            kind,
            content: None,
            source: None,
            target: None,
            mode,
            owner: None,
        };
        assert_eq!(mode(&spec(None, FileType::File)).unwrap(), 0o644);
        assert_eq!(mode(&spec(None, FileType::Dir)).unwrap(), 0o755);
        assert_eq!(
            mode(&spec(Some(ModeText::Text("0600".into())), FileType::File)).unwrap(),
            0o600
        );
        assert_eq!(
            mode(&spec(Some(ModeText::Text("0o4755".into())), FileType::File)).unwrap(),
            0o4755
        );
        assert!(mode(&spec(Some(ModeText::Text("0999".into())), FileType::File)).is_err());
        assert!(mode(&spec(Some(ModeText::Text("17777".into())), FileType::File)).is_err());
        assert!(mode(&spec(Some(ModeText::Number(644)), FileType::File))
            .unwrap_err()
            .contains("YAML number"));
    }
}
