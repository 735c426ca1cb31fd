//! The output-directory transaction: every artefact is written to a
//! temporary file inside the output directory and renamed into place only
//! when the whole build has succeeded. On failure the temporary files
//! vanish, and the directory itself is removed if this build created it
//! and it is still empty; nothing of the user's is ever deleted.
//!
//! Every artefact strata writes for the user (images, `manifest.json`,
//! `ext pack` output) is created through [`artefact_temp_file`], which asks
//! for mode 0666 and lets the umask take away what it takes (0644 under the
//! usual 022, 0600 under 077), as `open(2)` does for any other tool. A plain
//! temporary file would be 0600 and stay so after the rename, unreadable to
//! the CI uploader or web server that serves the artefacts.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// A new temporary file in `dir`, named `.strata-*.tmp`, with the mode the
/// umask gives a new file (see the module documentation); renamed into
/// place, it keeps that mode.
pub fn artefact_temp_file(dir: &Path) -> std::io::Result<NamedTempFile> {
    // The owner's pid in the name is what signals.rs cleans up by.
    super::perm::temp_file_in(dir, &crate::signals::temp_prefix(".strata-"), ".tmp")
}

/// An output directory with a pending set of files.
pub struct OutDir {
    path: PathBuf,
    created: bool,
    committed: bool,
}

impl OutDir {
    /// Opens (creating if needed) `path`.
    pub fn open(path: &Path) -> Result<OutDir> {
        let created = !path.exists();
        std::fs::create_dir_all(path).map_err(Error::io("creating", path))?;
        Ok(OutDir {
            path: path.to_path_buf(),
            created,
            committed: false,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new temporary file in the directory (same filesystem: the rename is atomic).
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        artefact_temp_file(&self.path).map_err(Error::io("creating a file in", &self.path))
    }

    /// Renames `tmp` to `name` in the directory; returns the final path.
    pub fn persist(&self, tmp: NamedTempFile, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        if same_file(tmp.path(), &path) {
            // Both names link to one cached artefact (a rebuild that changed nothing), and
            // rename(2) of a file onto another link of itself does nothing: drop the
            // temporary name instead.
            return tmp
                .close()
                .map(|()| path.clone())
                .map_err(Error::io("removing a temporary file in", &self.path));
        }
        tmp.persist(&path)
            .map_err(|e| Error::io("renaming into place", &path)(e.error))?;
        Ok(path)
    }

    /// The build succeeded: keep the directory.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

/// Whether `a` and `b` are one file (hard links to the same inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.committed && self.created {
            // Only an empty directory is removed: nothing of the user's is ever deleted.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        {
            let out = OutDir::open(&dir).unwrap();
            let t = out.temp_file().unwrap();
            std::fs::write(t.path(), b"partial").unwrap();
        }
        assert!(!dir.exists());
        let out = OutDir::open(&dir).unwrap();
        let t = out.temp_file().unwrap();
        std::fs::write(t.path(), b"done").unwrap();
        let p = out.persist(t, "a.raw").unwrap();
        out.commit();
        assert_eq!(std::fs::read(p).unwrap(), b"done");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn persisting_a_link_to_the_file_in_place_leaves_one_name() {
        let root = tempfile::tempdir().unwrap();
        let out = OutDir::open(root.path()).unwrap();
        let cached = root.path().join("a.raw");
        std::fs::write(&cached, b"image").unwrap();
        let t = out.temp_file().unwrap();
        std::fs::remove_file(t.path()).unwrap();
        std::fs::hard_link(&cached, t.path()).unwrap();
        out.persist(t, "a.raw").unwrap();
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(std::fs::read(&cached).unwrap(), b"image");
    }

    #[test]
    fn artefacts_get_the_mode_the_umask_gives() {
        // The end-to-end test builds under two umasks.
        let umask = crate::io::perm::current_umask();
        let want = 0o666 & !umask;
        let root = tempfile::tempdir().unwrap();
        let t = artefact_temp_file(root.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(t.path()), want, "umask {umask:o}");
        let p = root.path().join("a.raw");
        t.persist(&p).unwrap();
        assert_eq!(mode(&p), want, "umask {umask:o}, after the rename");
    }
}
