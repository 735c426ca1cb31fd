//! Checking the profile's `files:` in the merged root.
//!
//! The composer ships them as `/files.sqsh`, stacked above every layer
//! (and above sysext/confext images on their hierarchies), and lists them
//! in `guest.json` with their type, digest, mode and owner. The init checks
//! that the merged root shows each one exactly so: an extension or the
//! state layer hiding a profile file is reported, not silently accepted.
//! The path's parent is resolved inside the root (its symlinks cannot lead
//! out of it); the last component is not followed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use strata_proto::initramfs::{FileKind, ProfileFile};

use crate::rootpath;
use crate::shipped::{hex, sha256_file};

/// What differs between the profile's `file` and the merged root under
/// `root`; `None` when nothing does.
pub fn check(root: &Path, file: &ProfileFile) -> Option<String> {
    let path = Path::new(&file.path);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Some("not a file path".into());
    };
    let at = match rootpath::resolve(root, parent) {
        Ok(dir) => dir.join(name),
        Err(err) => return Some(format!("cannot resolve its directory: {err}")),
    };
    let meta = match at.symlink_metadata() {
        Ok(meta) => meta,
        Err(err) => return Some(format!("missing from the merged root: {err}")),
    };
    let kind = if meta.is_dir() {
        FileKind::Dir
    } else if meta.file_type().is_symlink() {
        FileKind::Symlink
    } else if meta.is_file() {
        FileKind::File
    } else {
        return Some("is neither a file, a directory nor a symlink".into());
    };
    let mut diffs = Vec::new();
    if kind != file.kind {
        diffs.push(format!("is a {kind:?}, not a {:?}", file.kind).to_lowercase());
    } else {
        if let Some(diff) = content(&at, file) {
            diffs.push(diff);
        }
        let mode = meta.permissions().mode() & 0o7777;
        if kind != FileKind::Symlink && mode != file.mode {
            diffs.push(format!("mode {mode:04o}, not {:04o}", file.mode));
        }
    }
    if (meta.uid(), meta.gid()) != (file.uid, file.gid) {
        diffs.push(format!(
            "owner {}:{}, not {}:{}",
            meta.uid(),
            meta.gid(),
            file.uid,
            file.gid
        ));
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

/// A file's or symlink's content against the recorded digest.
fn content(at: &Path, file: &ProfileFile) -> Option<String> {
    let digest = match file.kind {
        FileKind::Dir => return None,
        FileKind::File => sha256_file(at).map_err(|e| e.to_string()),
        FileKind::Symlink => std::fs::read_link(at)
            .map(|target| {
                use sha2::{Digest, Sha256};
                hex(&Sha256::digest(target.as_os_str().as_encoded_bytes()))
            })
            .map_err(|e| e.to_string()),
    };
    match digest {
        Ok(d) if d.eq_ignore_ascii_case(&file.sha256) => None,
        Ok(d) => Some(format!("sha256 {d}, not {}", file.sha256)),
        Err(err) => Some(format!("cannot read it: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    fn entry(path: &str, kind: FileKind, sha256: &str, mode: u32) -> ProfileFile {
        let me = std::fs::metadata("/proc/self").unwrap();
        ProfileFile {
            path: path.into(),
            kind,
            sha256: sha256.into(),
            mode,
            uid: me.uid(),
            gid: me.gid(),
        }
    }

    #[test]
    fn files_dirs_and_symlinks_are_checked_for_what_the_profile_says() {
        let root = TestDir::new("profile-files");
        root.file("etc/hostname", b"box\n");
        std::fs::set_permissions(
            root.0.join("etc/hostname"),
            PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        root.dir("etc/ssh");
        std::fs::set_permissions(root.0.join("etc/ssh"), PermissionsExt::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.0.join("etc/name")).unwrap();
        let box_sha = "4c8ae46a4e6daff8f5a8aaff1e1c5c1e5f4bd7d6c90ae7fe4de4bfe5b6bd7c07";
        let real = sha256_file(&root.0.join("etc/hostname")).unwrap();
        assert_ne!(real, box_sha);
        assert_eq!(
            check(
                &root.0,
                &entry("/etc/hostname", FileKind::File, &real, 0o644)
            ),
            None
        );
        assert_eq!(
            check(
                &root.0,
                &entry("/etc/hostname", FileKind::File, box_sha, 0o600)
            )
            .unwrap(),
            format!("sha256 {real}, not {box_sha}, mode 0644, not 0600")
        );
        assert_eq!(
            check(&root.0, &entry("/etc/ssh", FileKind::Dir, "", 0o700)),
            None
        );
        let link_sha = hex(&<sha2::Sha256 as sha2::Digest>::digest(b"/etc/hostname"));
        assert_eq!(
            check(
                &root.0,
                &entry("/etc/name", FileKind::Symlink, &link_sha, 0o777)
            ),
            None
        );
        assert_eq!(
            check(&root.0, &entry("/etc/ssh", FileKind::File, &real, 0o700)).unwrap(),
            "is a dir, not a file"
        );
        assert!(
            check(&root.0, &entry("/etc/motd", FileKind::File, &real, 0o644))
                .unwrap()
                .starts_with("missing from the merged root")
        );
        let mut other = entry("/etc/ssh", FileKind::Dir, "", 0o700);
        other.uid += 1;
        assert!(check(&root.0, &other).unwrap().starts_with("owner "));
    }
}
