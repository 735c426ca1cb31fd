//! Reading os-release(5) files from the merged root and from extension
//! images: the root's `/etc/os-release` (or `/usr/lib/os-release`) and the
//! extension-release files of sysext and confext images. The format and its
//! parser are [`strata_proto::osrelease`], shared with the composer.

use std::io;
use std::path::{Path, PathBuf};

pub use strata_proto::osrelease::Release;

use crate::rootpath;

/// Reading an os-release file failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither location exists in the tree.
    #[error("{root} has no os-release file (/etc/os-release or /usr/lib/os-release); the root file system must ship one for system extensions to be checked against it")]
    Missing {
        /// The tree searched.
        root: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// Reads `path` as an os-release-format file.
pub fn read(path: &Path) -> Result<Release, Error> {
    std::fs::read_to_string(path)
        .map(|text| Release::parse(&text))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads the os-release of the tree at `root`: `/etc/os-release`, else
/// `/usr/lib/os-release`, symlinks resolved inside the tree. Returns the
/// file used (host path) and its contents.
pub fn read_root(root: &Path) -> Result<(PathBuf, Release), Error> {
    for candidate in ["/etc/os-release", "/usr/lib/os-release"] {
        let path = rootpath::resolve(root, Path::new(candidate)).map_err(|source| Error::Read {
            path: root.join(&candidate[1..]),
            source,
        })?;
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok((path, Release::parse(&text))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Read { path, source }),
        }
    }
    Err(Error::Missing {
        root: root.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    #[test]
    fn the_root_file_falls_back_to_usr_lib_and_follows_links_inside() {
        let dir = TestDir::new("osrel");
        dir.file("usr/lib/os-release", b"ID=base\n").dir("etc");
        let (path, rel) = read_root(&dir.0).unwrap();
        assert_eq!(path, dir.0.join("usr/lib/os-release"));
        assert_eq!(rel.get("ID"), Some("base"));
        std::os::unix::fs::symlink("/usr/lib/os-release", dir.0.join("etc/os-release")).unwrap();
        let (path, _) = read_root(&dir.0).unwrap();
        assert_eq!(path, dir.0.join("usr/lib/os-release"));
        std::fs::remove_file(dir.0.join("etc/os-release")).unwrap();
        dir.file("etc/os-release", b"ID=etc\n");
        assert_eq!(read_root(&dir.0).unwrap().1.get("ID"), Some("etc"));
    }

    #[test]
    fn a_root_without_os_release_is_named() {
        let dir = TestDir::new("osrel-none");
        let err = read_root(&dir.0).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("{} has no os-release file", dir.0.display())));
    }
}
