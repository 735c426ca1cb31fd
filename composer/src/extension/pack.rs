//! `strata ext pack`: make extensions without Docker.
//!
//! - A Talos extension directory becomes a single-layer OCI image in an
//!   image-layout directory (deterministic: same input, same digest), which
//!   can then be pushed to a registry.
//! - A directory tree (`usr/…`, `opt/…`, or `etc/…` for a confext) becomes a
//!   systemd-sysext/confext `.raw` squashfs image, with its
//!   `extension-release.NAME` written from the options.

use crate::arch::Arch;
use crate::extension::source::Kind;
use crate::extension::TalosExtension;
use crate::fs::squashfs::{self, SquashCompression, SquashOptions};
use crate::fs::tree::{Entry, Tree};
use std::path::Path;

/// What goes into a sysext/confext release file.
#[derive(Debug, Clone)]
pub struct ReleaseFields {
    /// `ID` (`_any` matches every OS).
    pub id: String,
    /// `VERSION_ID`, when the image is tied to one OS release.
    pub version_id: Option<String>,
    /// `SYSEXT_LEVEL` / `CONFEXT_LEVEL`, the usual way to survive OS updates.
    pub level: Option<String>,
    /// `SYSEXT_VERSION_ID` / `CONFEXT_VERSION_ID`: the extension's own version.
    pub extension_version: Option<String>,
    /// Target architecture (`ARCHITECTURE`).
    pub arch: Arch,
}

/// Packs a Talos extension directory as an OCI image into `layout`, tagged
/// `tag`; returns the manifest digest.
pub fn talos_to_layout(
    dir: &Path,
    layout: &Path,
    tag: &str,
    arch: Arch,
    epoch: u64,
) -> Result<String, String> {
    TalosExtension::read_dir(dir).map_err(|e| e.to_string())?;
    let mut tree = Tree::new();
    let manifest = Tree::from_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (path, entry) in manifest.iter() {
        if path == Path::new("/") {
            continue;
        }
        tree.insert(path, entry.clone())
            .map_err(|e| e.to_string())?;
    }
    tree.share_scratch(&manifest);
    tree.all_root();
    let digest = crate::source::oci::layout::write_image(
        layout,
        crate::source::oci::layout::LayerSource::Tree(&tree),
        arch.debian(),
        tag,
        epoch,
    )
    .map_err(|e| e.to_string())?;
    Ok(digest.to_string())
}

/// The release file's text for `kind`.
pub fn release_text(kind: Kind, f: &ReleaseFields) -> String {
    let prefix = if kind == Kind::Confext {
        "CONFEXT"
    } else {
        "SYSEXT"
    };
    let mut s = format!("ID={}\n", f.id);
    if let Some(v) = &f.version_id {
        s.push_str(&format!("VERSION_ID={v}\n"));
    }
    if let Some(l) = &f.level {
        s.push_str(&format!("{prefix}_LEVEL={l}\n"));
    }
    if let Some(v) = &f.extension_version {
        s.push_str(&format!("{prefix}_VERSION_ID={v}\n"));
    }
    let arch = match f.arch {
        Arch::Amd64 => "x86-64",
        Arch::Arm64 => "arm64",
    };
    s.push_str(&format!("ARCHITECTURE={arch}\n"));
    s
}

/// Packs `dir` as a sysext/confext `.raw` image named `name` at `out`
/// (written to a temporary file and renamed when complete).
pub fn tree_to_raw(
    dir: &Path,
    out: &Path,
    name: &str,
    kind: Kind,
    fields: &ReleaseFields,
    epoch: u64,
) -> Result<(), String> {
    let mut tree = Tree::from_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tree.all_root();
    let release_dir = if kind == Kind::Confext {
        "/etc/extension-release.d"
    } else {
        "/usr/lib/extension-release.d"
    };
    let path = format!("{release_dir}/extension-release.{name}");
    tree.insert(
        &path,
        Entry::bytes_file(release_text(kind, fields).into_bytes(), 0o644),
    )
    .map_err(|e| e.to_string())?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".strata-")
        .tempfile_in(parent)
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    let opts = SquashOptions {
        compression: SquashCompression::Zstd { level: 15 },
        block_size: 128 * 1024,
        mtime: u32::try_from(epoch).unwrap_or(u32::MAX),
    };
    squashfs::write_file(&tree, tmp.path(), &opts).map_err(|e| e.to_string())?;
    tmp.persist(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_follow_systemd() {
        let f = ReleaseFields {
            id: "_any".into(),
            version_id: None,
            level: None,
            extension_version: Some("1.2".into()),
            arch: Arch::Arm64,
        };
        assert_eq!(
            release_text(Kind::Sysext, &f),
            "ID=_any\nSYSEXT_VERSION_ID=1.2\nARCHITECTURE=arm64\n"
        );
        let f = ReleaseFields {
            id: "strata".into(),
            version_id: Some("1.0.0".into()),
            level: Some("1.0".into()),
            extension_version: None,
            arch: Arch::Amd64,
        };
        assert_eq!(
            release_text(Kind::Confext, &f),
            "ID=strata\nVERSION_ID=1.0.0\nCONFEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n"
        );
    }

    #[test]
    fn a_packed_sysext_validates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/usr/share/tools")).unwrap();
        std::fs::write(dir.path().join("src/usr/share/tools/hello.txt"), "hi").unwrap();
        let out = dir.path().join("tools.raw");
        let f = ReleaseFields {
            id: "_any".into(),
            version_id: None,
            level: None,
            extension_version: Some("2.0".into()),
            arch: Arch::Amd64,
        };
        tree_to_raw(&dir.path().join("src"), &out, "tools", Kind::Sysext, &f, 0).unwrap();
        let tree = crate::extension::source::read_image(&out, dir.path()).unwrap();
        let findings = crate::extension::sysext::check_tree(
            crate::extension::sysext::ImageKind::Sysext,
            "tools",
            &tree,
            None,
        );
        assert!(findings.iter().all(|f| !f.is_error()), "{findings:?}");
    }
}
