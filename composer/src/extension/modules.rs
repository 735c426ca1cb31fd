//! Kernel modules that extensions ship: an extension may put `.ko` files
//! under `/usr/lib/modules/<release>/` (or `/lib/modules/…`), and each must be
//! built for the image's kernel — its directory and its vermagic name the
//! release. The plan checks them before the kernel is unpacked; the assets
//! step builds the module layer from the same list
//! ([`crate::assets::layers::module_layer`]).

use crate::extension::source::Resolved;
use crate::fs::tree::{Entry, EntryKind};
use std::path::{Path, PathBuf};

/// Why an extension's modules do not fit the image's kernel.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// An extension ships a module under another kernel's directory.
    #[error("extension `{ext}` ships {} for kernel {found}, but the image's kernel is {release}", path.display())]
    Release {
        /// The extension.
        ext: String,
        /// The module's path in it.
        path: PathBuf,
        /// The release directory it sits in.
        found: String,
        /// The image's kernel release.
        release: String,
    },
    /// An extension module's vermagic names another kernel.
    #[error("extension `{ext}` ships a module for another kernel")]
    Vermagic {
        /// The extension.
        ext: String,
        /// The module reader's finding.
        #[source]
        source: crate::kmod::depmod::KmodMetaError,
    },
}

/// The `.ko` files extensions ship, each checked against `release` (its
/// directory and its vermagic): what the plan runs before the kernel is
/// unpacked. Returns them as (path below the release directory, entry).
pub fn extension_modules(
    exts: &[Resolved],
    release: &str,
) -> Result<Vec<(PathBuf, Entry)>, ModuleError> {
    let mut ext_modules: Vec<(PathBuf, Entry)> = Vec::new();
    for e in exts {
        for (path, entry) in e.tree.iter() {
            let Some((rel_release, rest)) = module_rel_path(path) else {
                continue;
            };
            if !matches!(entry.kind, EntryKind::File(_)) || !is_module(path) {
                continue;
            }
            if rel_release != *release {
                return Err(ModuleError::Release {
                    ext: e.name.clone(),
                    path: path.to_path_buf(),
                    found: rel_release,
                    release: release.to_string(),
                });
            }
            if let EntryKind::File(data) = &entry.kind {
                crate::kmod::depmod::check_vermagic_data(path, data, release).map_err(
                    |source| ModuleError::Vermagic {
                        ext: e.name.clone(),
                        source,
                    },
                )?;
            }
            ext_modules.push((rest, entry.clone()));
        }
    }
    Ok(ext_modules)
}

/// The names the guest loads for `modules` (as [`extension_modules`] returns them).
pub fn module_names(modules: &[(PathBuf, Entry)]) -> Vec<String> {
    modules.iter().map(|(p, _)| module_name(p)).collect()
}

/// `(release, path below the release dir)` for a path under `/usr/lib/modules/<r>/` or `/lib/modules/<r>/`.
fn module_rel_path(path: &Path) -> Option<(String, PathBuf)> {
    let rest = path
        .strip_prefix("/usr/lib/modules")
        .or_else(|_| path.strip_prefix("/lib/modules"))
        .ok()?;
    let mut parts = rest.components();
    let release = parts.next()?.as_os_str().to_string_lossy().into_owned();
    let below: PathBuf = parts.collect();
    (!below.as_os_str().is_empty()).then_some((release, below))
}

/// Whether a path is a kernel module file, as the kernel build names them.
fn is_module(path: &Path) -> bool {
    let n = path.to_string_lossy();
    n.ends_with(".ko") || n.ends_with(".ko.xz") || n.ends_with(".ko.zst")
}

/// The name modprobe knows a module by (`-` normalised to `_`).
fn module_name(rel: &Path) -> String {
    let f = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = [".ko.xz", ".ko.zst", ".ko"]
        .iter()
        .find_map(|s| f.strip_suffix(s))
        .unwrap_or(&f)
        .to_string();
    crate::kmod::normalize(&stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_are_recognised() {
        assert_eq!(
            module_rel_path(Path::new(
                "/usr/lib/modules/6.1.0-test-amd64/kernel/drivers/net/dummy.ko"
            )),
            Some((
                "6.1.0-test-amd64".into(),
                PathBuf::from("kernel/drivers/net/dummy.ko")
            ))
        );
        assert_eq!(
            module_rel_path(Path::new("/usr/lib/modules-load.d/x.conf")),
            None
        );
        assert_eq!(module_name(Path::new("kernel/a/tcp-bbr.ko.xz")), "tcp_bbr");
    }
}
