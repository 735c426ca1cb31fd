//! Small helpers shared by the modules that make raw system calls.
//!
//! Supported: turning paths into C strings, turning `-1` returns into
//! `io::Error`, rendering an error with its whole `source()` chain (the
//! init has no logger; the chain is what ends up on the console), and
//! `uname`.

use std::error::Error as StdError;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a path for a system call. A path with an interior NUL byte
/// cannot name a file, so it is reported as invalid input.
pub(crate) fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Converts a string argument (file system type, mount options) for a system call.
pub(crate) fn cstr(text: &str) -> io::Result<CString> {
    CString::new(text)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))
}

/// Maps the C convention (negative return, reason in `errno`) to `io::Result`.
pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Renders an error followed by its causes, `outer: inner: innermost`.
///
/// Error types here keep the cause out of their own message (it is in
/// `source()`), so this is how a report gets the full story on one line.
pub fn error_chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// `uname -r` and `uname -m`; empty strings if the call fails.
pub fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we own; its fields are NUL-terminated.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (String::new(), String::new());
    }
    let field = |chars: &[libc::c_char]| {
        // SAFETY: the kernel NUL-terminates every utsname field within its array.
        unsafe { CStr::from_ptr(chars.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (field(&uts.release), field(&uts.machine))
}

/// Seconds since the kernel started (`CLOCK_BOOTTIME`, the clock of the
/// kernel's log stamps), rounded to the millisecond; 0 if the call fails.
pub fn boot_clock() -> f64 {
    // SAFETY: timespec is plain old data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0.0;
    }
    let millis = ts.tv_sec as f64 * 1000.0 + (ts.tv_nsec / 1_000_000) as f64;
    millis / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x")]
    struct Outer {
        #[source]
        source: io::Error,
    }

    #[test]
    fn error_chain_joins_every_cause() {
        let err = Outer {
            source: io::Error::new(io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(error_chain(&err), "cannot read /x: gone");
    }

    #[test]
    fn nul_bytes_are_rejected() {
        assert!(cpath(Path::new("a\0b")).is_err());
        assert!(cstr("ro\0").is_err());
        assert_eq!(cpath(Path::new("/dev")).unwrap().as_bytes(), b"/dev");
    }

    #[test]
    fn uname_names_this_kernel() {
        let (release, machine) = uname();
        assert!(!release.is_empty());
        assert_eq!(machine, std::env::consts::ARCH);
    }

    #[test]
    fn the_boot_clock_runs() {
        let a = boot_clock();
        assert!(a > 0.0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(boot_clock() > a);
    }

    #[test]
    fn negative_returns_become_errors() {
        assert_eq!(check(3).unwrap(), 3);
        assert!(check(-1).is_err());
    }
}
