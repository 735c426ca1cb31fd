//! Mount system calls with errors that name what was being mounted where.
//!
//! Supported: creating mount points, plain mounts, read-only bind mounts
//! (of directories and of single files), moving mounts, lazy detaching, and
//! the API file systems the init needs before anything else (/proc, /sys,
//! /dev as devtmpfs, /run as tmpfs).
//! Not supported: mount namespaces, propagation changes, the new mount API
//! (`fsopen`/`move_mount`): the classic calls work on every kernel we boot.

use std::io;
use std::path::{Path, PathBuf};
use std::ptr;

use crate::sys::{check, cpath, cstr};

/// A mount operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `mount --bind`.
    #[error("cannot bind-mount {from} on {target}")]
    Bind {
        /// What was to be bound.
        from: PathBuf,
        /// Where.
        target: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// Creating a mount point.
    #[error("cannot create mount point {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// `umount -l`.
    #[error("cannot detach {target}")]
    Detach {
        /// The mount point.
        target: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// A plain mount.
    #[error("cannot mount {fstype} {device} on {target}")]
    Mount {
        /// File system type.
        fstype: String,
        /// The device or pseudo source.
        device: String,
        /// Where.
        target: PathBuf,
        /// Why not (the kernel log often says more).
        #[source]
        source: io::Error,
    },
    /// `mount --move`.
    #[error("cannot move mount {from} to {target}")]
    Move {
        /// The mount point being moved.
        from: PathBuf,
        /// Where it should go.
        target: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// Making a bind mount read-only.
    #[error("cannot make {target} read-only")]
    Remount {
        /// The mount point.
        target: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// One API file system the init mounts first.
struct ApiMount {
    fstype: &'static str,
    target: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

/// /dev first: it holds the console and, later, the loop devices.
const API_MOUNTS: [ApiMount; 4] = [
    ApiMount {
        fstype: "devtmpfs",
        target: "/dev",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    ApiMount {
        fstype: "proc",
        target: "/proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    ApiMount {
        fstype: "sysfs",
        target: "/sys",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    ApiMount {
        fstype: "tmpfs",
        target: "/run",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
];

/// The mount points the init moves into the new root before switching.
pub const API_MOUNT_POINTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// Mounts /dev, /proc, /sys and /run; stops at the first failure.
pub fn mount_api_filesystems() -> Result<(), Error> {
    for api in &API_MOUNTS {
        let target = Path::new(api.target);
        create_dir(target)?;
        let data = (!api.data.is_empty()).then_some(api.data);
        mount(api.fstype, target, api.fstype, api.flags, data)?;
    }
    Ok(())
}

/// Creates a directory and its parents (mode 0755) if missing.
pub fn create_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Mounts `device` of type `fstype` on `target`.
pub fn mount(
    device: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), Error> {
    let fail = |source| Error::Mount {
        fstype: fstype.to_string(),
        device: device.to_string(),
        target: target.to_path_buf(),
        source,
    };
    let c_device = cstr(device).map_err(fail)?;
    let c_target = cpath(target).map_err(fail)?;
    let c_fstype = cstr(fstype).map_err(fail)?;
    let c_data = data.map(cstr).transpose().map_err(fail)?;
    let data_ptr = c_data
        .as_ref()
        .map_or(ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call (or NULL for no data); the kernel copies them.
    let ret = unsafe {
        libc::mount(
            c_device.as_ptr(),
            c_target.as_ptr(),
            c_fstype.as_ptr(),
            flags,
            data_ptr,
        )
    };
    check(ret).map(drop).map_err(fail)
}

/// Bind-mounts `from` (a directory or a single file) on `target`, then makes
/// the bind read-only: a plain bind ignores `MS_RDONLY`, so it takes a remount.
pub fn bind_read_only(from: &Path, target: &Path) -> Result<(), Error> {
    let bind_fail = |source| Error::Bind {
        from: from.to_path_buf(),
        target: target.to_path_buf(),
        source,
    };
    let c_from = cpath(from).map_err(bind_fail)?;
    let c_target = cpath(target).map_err(bind_fail)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // type and data may be NULL for a bind.
    let ret = unsafe {
        libc::mount(
            c_from.as_ptr(),
            c_target.as_ptr(),
            ptr::null(),
            libc::MS_BIND,
            ptr::null(),
        )
    };
    check(ret).map_err(bind_fail)?;
    // SAFETY: as above; the remount only changes the bind's flags.
    let ret = unsafe {
        libc::mount(
            ptr::null(),
            c_target.as_ptr(),
            ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            ptr::null(),
        )
    };
    check(ret).map(drop).map_err(|source| Error::Remount {
        target: target.to_path_buf(),
        source,
    })
}

/// Moves the mount at `from` (with everything mounted below it) to `target`.
pub fn move_mount(from: &Path, target: &Path) -> Result<(), Error> {
    let fail = |source| Error::Move {
        from: from.to_path_buf(),
        target: target.to_path_buf(),
        source,
    };
    let c_from = cpath(from).map_err(fail)?;
    let c_target = cpath(target).map_err(fail)?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let ret = unsafe {
        libc::mount(
            c_from.as_ptr(),
            c_target.as_ptr(),
            ptr::null(),
            libc::MS_MOVE,
            ptr::null(),
        )
    };
    check(ret).map(drop).map_err(fail)
}

/// Detaches a mount lazily: it disappears now, and is freed when unused.
pub fn detach(target: &Path) -> Result<(), Error> {
    let fail = |source| Error::Detach {
        target: target.to_path_buf(),
        source,
    };
    let c_target = cpath(target).map_err(fail)?;
    // SAFETY: the string is NUL-terminated and outlives the call.
    let ret = unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) };
    check(ret).map(drop).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::error_chain;

    #[test]
    fn api_mounts_put_dev_first_and_match_the_move_list() {
        let targets: Vec<&str> = API_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(targets, API_MOUNT_POINTS);
        assert_eq!(API_MOUNTS[0].fstype, "devtmpfs");
    }

    #[test]
    fn a_failed_mount_names_type_device_and_target() {
        // An unknown file system type fails before any privilege check
        // matters (ENODEV or EPERM): either way it must be an error.
        let dir = std::env::temp_dir();
        let err = mount("none", &dir, "strata-no-such-fs", 0, None).unwrap_err();
        let text = error_chain(&err);
        assert!(
            text.starts_with(&format!(
                "cannot mount strata-no-such-fs none on {}: ",
                dir.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn a_nul_in_options_is_an_error_not_a_truncation() {
        let err = mount("none", Path::new("/x"), "tmpfs", 0, Some("a\0b")).unwrap_err();
        assert!(matches!(err, Error::Mount { .. }));
    }
}
