//! Building the merged root: root squashfs + extension layers + the
//! profile's files as one writable overlay, the way Talos stacks them.
//!
//! Layout (all under [`Layout::base`], `/strata` in the guest):
//! `rootfs/` (the root squashfs), `layers/<index>/` (extension `<index>` of
//! `extensions.yaml`), `files/` (the profile's `files:`, `/files.sqsh`),
//! `state/` (the writable layer's file system, see `state`), `root/` (the
//! merged tree that becomes `/`).
//! The overlay is `lowerdir=files:layers/N-1:...:layers/0:rootfs` (the
//! profile's files on top, then the last layer, the root at the bottom),
//! `upperdir=state/upper,workdir=state/work`: a distro root writes under
//! /etc and /var at boot, and a read-only root made systemd units fail.
//! `/extensions.yaml` is then bind-mounted read-only over `etc/extensions.yaml`
//! of the merged root (made there when the root lacks it).
//! sysext and confext images are mounted on `sysext/<name>/` and
//! `confext/<name>/` and merged onto the root by `sysext`; the root's own
//! hierarchies they cover are bound to `base/<hierarchy>/` first.

use std::path::{Path, PathBuf};

use crate::{loopdev, mounts};

/// Where the extensions list is shown in the merged root.
pub const EXTENSIONS_TARGET: &str = "etc/extensions.yaml";

/// Building the root failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Attaching an image to a loop device failed.
    #[error("cannot attach {image}")]
    Attach {
        /// The squashfs image.
        image: PathBuf,
        /// Why not.
        #[source]
        source: loopdev::Error,
    },
    /// The merged root has no file to bind the extensions list on.
    #[error("{target} is not a file and cannot be made one; the root must ship an empty /etc/extensions.yaml or none")]
    MissingTarget {
        /// The expected mount point.
        target: PathBuf,
    },
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] mounts::Error),
    /// A directory cannot be put in `lowerdir=` as is.
    #[error(
        "overlay lower directory {path} contains ':', ',' or '\\'; choose a plainer mount point"
    )]
    UnsafeLowerdir {
        /// The directory.
        path: PathBuf,
    },
}

/// Where the pieces of the root are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The directory holding all of them.
    pub base: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            base: PathBuf::from("/strata"),
        }
    }
}

impl Layout {
    /// The root squashfs mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.base.join("rootfs")
    }

    /// The mount point of layer `index`.
    pub fn layer(&self, index: usize) -> PathBuf {
        self.base.join("layers").join(index.to_string())
    }

    /// Where the writable layer's file system is mounted (see `state`).
    pub fn state(&self) -> PathBuf {
        self.base.join("state")
    }

    /// The mount point of the profile's files (`/files.sqsh`).
    pub fn files(&self) -> PathBuf {
        self.base.join("files")
    }

    /// The merged root.
    pub fn merged(&self) -> PathBuf {
        self.base.join("root")
    }

    /// The mount point of a sysext or confext image (`kind` is `sysext`
    /// or `confext`).
    pub fn extension_image(&self, kind: &str, name: &str) -> PathBuf {
        self.base.join(kind).join(name)
    }

    /// Where the root's own `hierarchy` (`usr`, `opt`, `etc`) stays
    /// reachable once an extension overlay is mounted over it.
    pub fn hierarchy_base(&self, hierarchy: &str) -> PathBuf {
        self.base.join("base").join(hierarchy)
    }
}

/// The `lowerdir=` value: `layers` given lowest first, listed top first,
/// then the root.
pub fn lowerdir(layers: &[PathBuf], rootfs: &Path) -> Result<String, Error> {
    let ordered: Vec<&Path> = layers
        .iter()
        .rev()
        .map(PathBuf::as_path)
        .chain(std::iter::once(rootfs))
        .collect();
    let mut parts = Vec::with_capacity(ordered.len());
    for dir in ordered {
        let text = dir.to_str().filter(|t| !t.contains([':', ',', '\\']));
        match text {
            Some(text) => parts.push(text),
            None => {
                return Err(Error::UnsafeLowerdir {
                    path: dir.to_path_buf(),
                })
            }
        }
    }
    Ok(parts.join(":"))
}

/// Attaches `image` to a loop device and mounts it read-only on `target`.
/// Returns the loop device used.
pub fn mount_squashfs(image: &Path, target: &Path) -> Result<PathBuf, Error> {
    mount_image(image, target, "squashfs")
}

/// Attaches `image` to a loop device and mounts it read-only on `target`
/// as file system type `fstype` (`squashfs`, `erofs`). Returns the loop
/// device used.
pub fn mount_image(image: &Path, target: &Path, fstype: &str) -> Result<PathBuf, Error> {
    mounts::create_dir(target)?;
    let device = loopdev::attach_read_only(image).map_err(|source| Error::Attach {
        image: image.to_path_buf(),
        source,
    })?;
    let device_name = device.path().to_string_lossy().into_owned();
    mounts::mount(&device_name, target, fstype, libc::MS_RDONLY, None)?;
    // The mount now holds the device; dropping our handle lets autoclear
    // detach it when the mount goes away.
    Ok(device.path().to_path_buf())
}

/// Mounts the merged root on `merged`, writable: `layers` (lowest first)
/// over `rootfs`, with `state`'s upper and work directories on top.
pub fn mount_merged(
    layers: &[PathBuf],
    rootfs: &Path,
    merged: &Path,
    state: &crate::state::Prepared,
) -> Result<(), Error> {
    mounts::create_dir(merged)?;
    mounts::mount(
        "overlay",
        merged,
        "overlay",
        0,
        Some(&options(layers, rootfs, state)?),
    )?;
    Ok(())
}

/// The overlay's mount options.
fn options(
    layers: &[PathBuf],
    rootfs: &Path,
    state: &crate::state::Prepared,
) -> Result<String, Error> {
    let plain = |dir: &Path| {
        dir.to_str()
            .filter(|t| !t.contains([':', ',', '\\']))
            .map(str::to_string)
            .ok_or_else(|| Error::UnsafeLowerdir {
                path: dir.to_path_buf(),
            })
    };
    Ok(format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir(layers, rootfs)?,
        plain(&state.upper)?,
        plain(&state.work)?
    ))
}

/// Binds `list` over `etc/extensions.yaml` in `merged`, read-only, making
/// the mount point first when the root lacks it (the root is writable).
/// Returns false (and mounts nothing) when `list` does not exist.
pub fn bind_extensions_list(list: &Path, merged: &Path) -> Result<bool, Error> {
    if !list.exists() {
        return Ok(false);
    }
    let target = merged.join(EXTENSIONS_TARGET);
    if target.symlink_metadata().is_err() {
        if let Some(dir) = target.parent() {
            mounts::create_dir(dir)?;
        }
        // A failure shows as MissingTarget below.
        let _ = std::fs::File::create(&target);
    }
    let is_file = target
        .symlink_metadata()
        .map(|meta| meta.file_type().is_file())
        .unwrap_or(false);
    if !is_file {
        return Err(Error::MissingTarget { target });
    }
    mounts::bind_read_only(list, &target)?;
    Ok(true)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_every_mount_point() {
        let layout = Layout::default();
        assert_eq!(layout.rootfs(), PathBuf::from("/strata/rootfs"));
        assert_eq!(layout.layer(10), PathBuf::from("/strata/layers/10"));
        assert_eq!(layout.merged(), PathBuf::from("/strata/root"));
        assert_eq!(
            layout.extension_image("sysext", "tools"),
            PathBuf::from("/strata/sysext/tools")
        );
        assert_eq!(
            layout.hierarchy_base("usr"),
            PathBuf::from("/strata/base/usr")
        );
    }

    #[test]
    fn lowerdir_puts_the_last_layer_on_top_and_the_root_at_the_bottom() {
        let layers: Vec<PathBuf> = (0..3).map(|i| Layout::default().layer(i)).collect();
        assert_eq!(
            lowerdir(&layers, Path::new("/strata/rootfs")).unwrap(),
            "/strata/layers/2:/strata/layers/1:/strata/layers/0:/strata/rootfs"
        );
        assert_eq!(lowerdir(&[], Path::new("/r")).unwrap(), "/r");
    }

    #[test]
    fn lowerdir_round_trips_through_the_mountinfo_parser() {
        let layers = vec![PathBuf::from("/l/0"), PathBuf::from("/l/1")];
        let value = lowerdir(&layers, Path::new("/root")).unwrap();
        assert_eq!(
            crate::mountinfo::split_lowerdir(&value),
            vec![
                PathBuf::from("/l/1"),
                PathBuf::from("/l/0"),
                PathBuf::from("/root")
            ]
        );
    }

    #[test]
    fn separators_in_paths_are_refused() {
        for bad in ["/a:b", "/a,b", "/a\\b"] {
            let err = lowerdir(&[PathBuf::from(bad)], Path::new("/r")).unwrap_err();
            assert!(matches!(err, Error::UnsafeLowerdir { .. }), "{bad}");
        }
    }

    #[test]
    fn a_missing_list_binds_nothing_and_a_target_that_is_no_file_is_named() {
        let merged =
            std::env::temp_dir().join(format!("strata-boot-overlay-{}", std::process::id()));
        std::fs::create_dir_all(merged.join("etc/extensions.yaml")).unwrap();
        assert!(!bind_extensions_list(Path::new("/nonexistent/extensions.yaml"), &merged).unwrap());
        let list = merged.join("list.yaml");
        std::fs::write(&list, "layers: []\n").unwrap();
        let err = bind_extensions_list(&list, &merged).unwrap_err();
        let expected = format!(
            "{}/etc/extensions.yaml is not a file and cannot be made one; the root must ship an empty /etc/extensions.yaml or none",
            merged.display()
        );
        assert_eq!(err.to_string(), expected);
        std::fs::remove_dir_all(&merged).unwrap();
    }

    #[test]
    fn the_overlay_is_writable_through_the_state_layer() {
        let state = crate::state::Prepared {
            upper: PathBuf::from("/strata/state/upper"),
            work: PathBuf::from("/strata/state/work"),
            device: None,
            formatted: false,
        };
        let layers = vec![
            PathBuf::from("/strata/layers/0"),
            PathBuf::from("/strata/files"),
        ];
        assert_eq!(
            options(&layers, Path::new("/strata/rootfs"), &state).unwrap(),
            "lowerdir=/strata/files:/strata/layers/0:/strata/rootfs,upperdir=/strata/state/upper,workdir=/strata/state/work"
        );
        assert_eq!(
            options(&[], Path::new("/r"), &state).unwrap(),
            "lowerdir=/r,upperdir=/strata/state/upper,workdir=/strata/state/work"
        );
        let bad = crate::state::Prepared {
            upper: PathBuf::from("/a,b"),
            ..state
        };
        assert!(options(&[], Path::new("/r"), &bad).is_err());
    }
}
