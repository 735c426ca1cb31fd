//! Temporary files that do not outlive their build, however it ends.
//!
//! Every temporary file or directory strata makes in a shared place (the output directory,
//! the cache's `tmp/` and `kernels/`) is named `<prefix><pid>-<random>` ([`temp_prefix`]), so
//! its owner can be told from its name:
//!
//! - on SIGINT or SIGTERM during a build, a dedicated thread (the signals are blocked in every
//!   other thread, so no async-signal-safety rules bind the cleanup) removes this process's
//!   temporaries in the [`watch`]ed directories and exits with 130 or 143 (128 + signal), the
//!   shell's convention;
//! - after a SIGKILL (or a power cut) nothing can run, so the next build [`watch`]ing the same
//!   directory removes the temporaries whose owner is no longer alive before it starts. A pid
//!   reused by another live process keeps its files until that process ends: a delay, never
//!   a wrong deletion.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The prefixes of strata's temporary names; only names with one of these and a pid are ever
/// removed by a sweep.
const PREFIXES: [&str; 5] = [".strata-", "build-", "ext-", "blob-", ".partial-"];

/// Directories whose temporaries this process owns; `true`: remove the directory too if it is
/// empty afterwards (an output directory this build created).
static WATCHED: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());

/// `prefix` followed by this process's id, for a temporary name: `build-4242-`.
pub fn temp_prefix(prefix: &str) -> String {
    debug_assert!(PREFIXES.contains(&prefix), "{prefix} is not swept");
    format!("{prefix}{}-", std::process::id())
}

/// The pid a temporary's name records, if it is one of strata's.
fn owner(name: &str) -> Option<u32> {
    let rest = PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    let (pid, random) = rest.split_once('-')?;
    (!random.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether process `pid` exists (EPERM: it exists, owned by someone else).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the entries of `dir` whose owner `doomed` picks; missing directories are fine.
fn sweep(dir: &Path, doomed: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !owner(&name.to_string_lossy()).is_some_and(&doomed) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        // Best effort: a file another run removed first is already gone.
        let _ = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Removes temporaries left in `dir` by strata processes that are gone, and remembers `dir`
/// so a SIGINT or SIGTERM removes this process's own there. `remove_if_empty`: also remove
/// `dir` itself on a signal if it is then empty (this build created it).
pub fn watch(dir: &Path, remove_if_empty: bool) {
    let me = std::process::id();
    sweep(dir, |pid| pid != me && !alive(pid));
    if let Ok(mut watched) = WATCHED.lock() {
        watched.push((dir.to_path_buf(), remove_if_empty));
    }
}

/// Removes this process's temporaries from every watched directory.
fn clean_own() {
    let me = std::process::id();
    let watched = match WATCHED.lock() {
        Ok(w) => w.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for (dir, remove_if_empty) in watched {
        sweep(&dir, |pid| pid == me);
        if remove_if_empty {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it starts later) and
/// starts the thread that waits for them. Call it first thing in `main`, before any thread
/// exists; a thread started earlier would still take the signal's default action.
pub fn install() -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises before any other use.
    let set = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    };
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` and `sig` are valid for the call; the signals are blocked, as
            // sigwait requires.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            clean_own();
            // Threads still writing may have made a file since: one more pass.
            clean_own();
            eprintln!("strata: stopped by signal {sig}; temporary files removed");
            // SAFETY: _exit ends the process at once; nothing else is left to run.
            unsafe { libc::_exit(128 + sig) }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_strata_names_only() {
        assert_eq!(owner("build-4242-AbCdEf"), Some(4242));
        assert_eq!(owner(".strata-7-x.tmp"), Some(7));
        assert_eq!(
            owner("build-AbCdEf"),
            None,
            "names without a pid are not ours to judge"
        );
        assert_eq!(owner("build-12-"), None);
        assert_eq!(owner("blobs"), None);
        assert_eq!(owner("metal-amd64.raw"), None);
        assert!(temp_prefix("ext-").starts_with(&format!("ext-{}-", std::process::id())));
    }

    #[test]
    fn a_sweep_removes_the_dead_owners_files_only() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        let dead = "build-99999999-abc";
        let live = format!("build-{}-abc", std::process::id());
        std::fs::create_dir(dir.path().join(dead)).unwrap();
        std::fs::write(dir.path().join(dead).join("f"), b"x").unwrap();
        std::fs::write(dir.path().join(".strata-99999999-q.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join(&live), b"x").unwrap();
        std::fs::write(dir.path().join("build-1-abc"), b"init is alive").unwrap();
        std::fs::write(dir.path().join("user-file"), b"x").unwrap();
        watch(dir.path(), false);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["build-1-abc", live.as_str(), "user-file"]);
    }
}
