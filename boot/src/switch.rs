//! Handing the machine over to the merged root's init.
//!
//! Like busybox `switch_root`, minus deleting the initramfs (its squashfs
//! files back the loop devices): move /dev, /proc, /sys and /run into the
//! new root, `chdir` there, move the new root onto `/`, `chroot .`, and exec
//! the init with the arguments the kernel gave us.
//! Supported: a new root that lacks one of those directories (the mount is
//! detached instead, with a warning; it cannot be created in a read-only
//! root). Not supported: pivot_root (the initramfs root cannot be pivoted).

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mounts::{self, API_MOUNT_POINTS};
use crate::sys::{check, cpath};

/// Switching root failed; the machine cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `chdir` into the new root failed.
    #[error("cannot change directory to {path}")]
    Chdir {
        /// The directory.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// `chroot` failed.
    #[error("cannot chroot into the new root")]
    Chroot {
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// `execve` of the init failed.
    #[error("cannot execute {init} in the new root")]
    Exec {
        /// The init program.
        init: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The init program does not exist in the new root.
    #[error("{init} does not exist in the root file system; install it or pass init=<path> on the kernel command line")]
    MissingInit {
        /// The init program.
        init: PathBuf,
    },
    /// Moving a mount failed.
    #[error(transparent)]
    Mount(#[from] mounts::Error),
}

/// `path` (absolute, as the guest will see it) inside `new_root`.
pub fn inside(new_root: &Path, path: &Path) -> PathBuf {
    new_root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Checks that `init` exists in `new_root` without following a final
/// symlink (an absolute link only resolves after the chroot).
pub fn check_init(new_root: &Path, init: &Path) -> Result<(), Error> {
    match inside(new_root, init).symlink_metadata() {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::MissingInit {
            init: init.to_path_buf(),
        }),
    }
}

/// Switches into `new_root` and execs `init` with `args`. Returns only on
/// failure. `warn` receives non-fatal problems.
pub fn switch_root(
    new_root: &Path,
    init: &Path,
    args: &[OsString],
    warn: &mut dyn FnMut(String),
) -> Error {
    match try_switch_root(new_root, init, args, warn) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

fn try_switch_root(
    new_root: &Path,
    init: &Path,
    args: &[OsString],
    warn: &mut dyn FnMut(String),
) -> Result<std::convert::Infallible, Error> {
    check_init(new_root, init)?;
    for mount_point in API_MOUNT_POINTS {
        let from = Path::new(mount_point);
        let target = inside(new_root, from);
        if target.symlink_metadata().is_ok_and(|meta| meta.is_dir()) {
            mounts::move_mount(from, &target)?;
        } else {
            warn(format!(
                "{} has no directory {mount_point}; detaching {mount_point} instead of moving it",
                new_root.display()
            ));
            if let Err(err) = mounts::detach(from) {
                warn(crate::sys::error_chain(&err));
            }
        }
    }
    chdir(new_root)?;
    mounts::move_mount(Path::new("."), Path::new("/"))?;
    // SAFETY: the argument is a static NUL-terminated string.
    check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(|source| Error::Chroot { source })?;
    chdir(Path::new("/"))?;
    let source = Command::new(init).args(args).exec();
    Err(Error::Exec {
        init: init.to_path_buf(),
        source,
    })
}

fn chdir(path: &Path) -> Result<(), Error> {
    let fail = |source| Error::Chdir {
        path: path.to_path_buf(),
        source,
    };
    let c_path = cpath(path).map_err(fail)?;
    // SAFETY: the string is NUL-terminated and outlives the call.
    check(unsafe { libc::chdir(c_path.as_ptr()) })
        .map(drop)
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    #[test]
    fn paths_are_resolved_inside_the_new_root() {
        assert_eq!(
            inside(Path::new("/strata/root"), Path::new("/sbin/init")),
            PathBuf::from("/strata/root/sbin/init")
        );
        assert_eq!(
            inside(Path::new("/r"), Path::new("bin/sh")),
            PathBuf::from("/r/bin/sh")
        );
    }

    #[test]
    fn init_may_be_a_dangling_absolute_symlink_but_must_exist() {
        let root = TestDir::new("switch");
        root.dir("sbin");
        std::os::unix::fs::symlink("/bin/busybox", root.0.join("sbin/init")).unwrap();
        check_init(&root.0, Path::new("/sbin/init")).unwrap();
        let err = check_init(&root.0, Path::new("/lib/systemd/systemd")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/lib/systemd/systemd does not exist in the root file system; install it or pass init=<path> on the kernel command line"
        );
    }
}
