//! Talos extensions in directory form: exactly `manifest.yaml` and `rootfs/`.
//!
//! The manifest (`version: v1alpha1`, `metadata.{name,version,author,
//! description,compatibility}`) is kept whole, because `extensions.yaml`
//! carries it into the image for the guest to report. Talos' rules are in
//! [`rules`].

pub mod paths;
pub mod rules;
pub mod semver;
pub mod service;
pub mod yaml;

use crate::error::InputError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The manifest schema version Talos accepts.
pub const MANIFEST_VERSION: &str = "v1alpha1";

/// A Talos extension read from a directory.
#[derive(Debug, Clone)]
pub struct TalosExtension {
    /// The extension directory.
    pub dir: PathBuf,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: String,
    /// The whole `metadata` mapping, as written.
    pub metadata: serde_norway::Value,
    /// `dir/rootfs`.
    pub rootfs: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: String,
    metadata: serde_norway::Value,
}

impl TalosExtension {
    /// Reads and checks an extension directory. Errors name the file and the fix.
    pub fn read_dir(dir: &Path) -> Result<TalosExtension, InputError> {
        let manifest_path = dir.join("manifest.yaml");
        if !manifest_path.is_file() {
            return Err(InputError::new(
                dir,
                "manifest.yaml",
                "extension directory has no manifest.yaml",
                "a Talos extension holds exactly `manifest.yaml` and `rootfs/`; add the manifest (docs/extensions.md)",
            ));
        }
        check_top_level(dir)?;
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            InputError::new(
                &manifest_path,
                "",
                format!("cannot read: {e}"),
                "check the file's permissions",
            )
        })?;
        crate::profile::yaml_guard::check(&text, crate::profile::yaml_guard::LIMITS).map_err(
            |e| InputError::new(&manifest_path, "", e.to_string(), e.hint()).at(e.position()),
        )?;
        let m: Manifest = serde_norway::from_str(&text).map_err(|e| {
            InputError::new(
                &manifest_path,
                "",
                e.to_string(),
                "the manifest has `version: v1alpha1` and a `metadata` mapping",
            )
            .at(e.location().map(|l| (l.line(), l.column())))
        })?;
        if m.version != MANIFEST_VERSION {
            return Err(InputError::new(
                &manifest_path,
                "version",
                format!("`{}` is not a manifest version Talos knows", m.version),
                "write `version: v1alpha1`",
            ));
        }
        let field = |key: &str| -> Result<String, InputError> {
            match m.metadata.get(key) {
                Some(serde_norway::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(serde_norway::Value::Number(n)) => Err(InputError::new(
                    &manifest_path,
                    format!("metadata.{key}"),
                    format!("`{n}` is a number, not a string"),
                    format!("quote it: `{key}: \"{n}\"`"),
                )),
                _ => Err(InputError::new(
                    &manifest_path,
                    format!("metadata.{key}"),
                    "missing or empty",
                    format!("add `metadata.{key}`"),
                )),
            }
        };
        let name = field("name")?;
        let version = field("version")?;
        let rootfs = dir.join("rootfs");
        if !has_regular_file(&rootfs) {
            return Err(InputError::new(
                &rootfs,
                "",
                "the extension's rootfs holds no file",
                "put the files the extension ships under rootfs/ (e.g. rootfs/usr/local/bin/…)",
            ));
        }
        Ok(TalosExtension {
            dir: dir.to_path_buf(),
            name,
            version,
            metadata: m.metadata,
            rootfs,
        })
    }
}

/// Talos requires exactly `manifest.yaml` and `rootfs/` at the top.
fn check_top_level(dir: &Path) -> Result<(), InputError> {
    let rootfs = dir.join("rootfs");
    if !rootfs.is_dir() {
        return Err(InputError::new(
            dir,
            "rootfs",
            "extension directory has no rootfs/ directory",
            "put the extension's files under rootfs/",
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| {
        InputError::new(
            dir,
            "",
            format!("cannot list: {e}"),
            "check the permissions",
        )
    })?;
    let mut extra: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.yaml" && n != "rootfs")
        .collect();
    extra.sort();
    if !extra.is_empty() {
        return Err(InputError::new(
            dir,
            "",
            format!("unexpected entries beside manifest.yaml and rootfs/: {}", extra.join(", ")),
            "a Talos extension holds exactly manifest.yaml and rootfs/; move the rest under rootfs/ or out of the directory",
        ));
    }
    Ok(())
}

fn has_regular_file(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| match e.file_type() {
        Ok(t) if t.is_file() => true,
        Ok(t) if t.is_dir() => has_regular_file(&e.path()),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn ext(manifest: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if let Some(m) = manifest {
            fs::write(d.path().join("manifest.yaml"), m).unwrap();
        }
        fs::create_dir_all(d.path().join("rootfs/usr/local/bin")).unwrap();
        fs::write(d.path().join("rootfs/usr/local/bin/hello"), "#!/bin/sh\n").unwrap();
        d
    }

    const GOOD: &str = "version: v1alpha1\nmetadata:\n  name: hello\n  version: 1.0.0\n  author: me\n  description: hi\n";

    #[test]
    fn reads_a_good_extension() {
        let d = ext(Some(GOOD));
        let e = TalosExtension::read_dir(d.path()).unwrap();
        assert_eq!((e.name.as_str(), e.version.as_str()), ("hello", "1.0.0"));
    }

    #[test]
    fn refuses_missing_manifest_with_a_fix() {
        let d = ext(None);
        let e = TalosExtension::read_dir(d.path()).unwrap_err();
        assert!(e.to_string().contains("has no manifest.yaml"), "{e}");
        assert!(!e.hint.is_empty(), "no fix given: {e}");
    }

    #[test]
    fn refuses_float_versions_and_extra_entries() {
        let d = ext(Some(&GOOD.replace("1.0.0", "4.2")));
        let e = TalosExtension::read_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("metadata.version: `4.2` is a number"), "{e}");
        let d = ext(Some(GOOD));
        fs::write(d.path().join("README"), "x").unwrap();
        let e = TalosExtension::read_dir(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("unexpected entries beside manifest.yaml and rootfs/: README"),
            "{e}"
        );
    }
}
