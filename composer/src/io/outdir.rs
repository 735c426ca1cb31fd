//! The output-directory transaction: every artefact is written to a
//! temporary file inside the output directory and renamed into place only
//! when the whole build has succeeded. On failure the temporary files
//! vanish, and the directory itself is removed if this build created it
//! and it is still empty; nothing of the user's is ever deleted.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

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
        tempfile::Builder::new()
            .prefix(&crate::signals::temp_prefix(".strata-"))
            .suffix(".tmp")
            .tempfile_in(&self.path)
            .map_err(Error::io("creating a file in", &self.path))
    }

    /// Renames `tmp` to `name` in the directory; returns the final path.
    pub fn persist(&self, tmp: NamedTempFile, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        tmp.persist(&path)
            .map_err(|e| Error::io("renaming into place", &path)(e.error))?;
        Ok(path)
    }

    /// The build succeeded: keep the directory.
    pub fn commit(mut self) {
        self.committed = true;
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
}
