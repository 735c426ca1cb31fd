//! Output files with the permissions the user's umask allows.
//!
//! `tempfile` creates files mode 0600, so an artefact renamed into place from one is
//! unreadable for a CI uploader or web server running as another user. Creating the
//! temporary file with mode 0666 lets the kernel apply the umask, as `open(2)` does for any
//! new file: 0644 under the usual 022.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tempfile::NamedTempFile;

/// A new temporary file in `dir` named `PREFIX…SUFFIX`, created with mode 0666 less the
/// umask.
pub fn temp_file_in(dir: &Path, prefix: &str, suffix: &str) -> std::io::Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// The umask of this process, read without changing it (Linux reports it in
/// `/proc/self/status`): tests run in parallel, so none may set it.
#[cfg(test)]
pub fn current_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_take_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let f = temp_file_in(dir.path(), ".t-", ".tmp").unwrap();
        let mode = f.as_file().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !current_umask());
        assert!(f.path().to_str().unwrap().ends_with(".tmp"));
    }
}
