//! Talos extension rules: layout, manifest and rootfs contents, checked at compose time.
//!
//! The rules follow Talos (`pkg/machinery/extensions`) and its build-time extensions-validator,
//! as the project's extension-rules research describes them, with three deliberate differences:
//! - allowed paths match by whole path component: `/usr/localx/…`, `/etc/vulkansc/…`,
//!   `/usr/lib/modules-load.d/…` and `/etc/ld.so.conf.d/…` are refused although Talos' plain
//!   string-prefix check lets them through (the finding says so);
//! - world-writable files and directories are refused (Talos means to, but its check reads
//!   the type bits only and never fires);
//! - leftovers of templating (`{{ … }}`, `$VERSION`, `${…}`) are refused: Talos loads such a
//!   manifest happily and reports `{{ .VERSION }}` as the extension's version.
//!
//! Also checked: YAML types (an unquoted `version: 4.2` is a float, and `1.10` would become
//! `1.1`), unknown keys (Talos ignores them silently), the compatibility range against the
//! target Talos version, ELF programs built for another architecture (the shared rule of
//! [`crate::extension::arch`]: ELF files outside the program directories, such as firmware for
//! GPUs, DSPs or emulated machines, are only noted), setuid/setgid files, and every service
//! spec in `/usr/local/etc/containers` (see `service`). A check that cannot run for want of a
//! target (no Talos version for a compatibility range, no architecture) is reported as
//! "not checked".
//!
//! Not checked: symlink targets (Talos does not either; links into `/usr/local` are common),
//! kernel module vermagic, and duplicates across extensions.

use std::path::{Path, PathBuf};

use serde_norway::Value;

use super::paths::under;
use super::semver::{self, version_format_ok};
use super::service;
use super::yaml::{
    find_placeholders, first_document, placeholder_finding, scalar_or_type, type_name, unknown_keys,
};
use crate::binary::elf_machine_for_arch;
use crate::extension::arch::elf_finding;
use crate::extension::findings::{Finding, Severity};
use crate::fs::tree::{EntryKind, FileData, Tree};

/// The manifest file name at the top of a Talos extension.
pub const MANIFEST: &str = "manifest.yaml";
/// The only manifest schema version Talos accepts.
pub const MANIFEST_VERSION: &str = "v1alpha1";
/// Where Talos reads extension service specs from.
pub const SERVICES_DIR: &str = "/usr/local/etc/containers";

/// Paths an extension may ship files under (Talos >= 1.10, after the usr-merge).
pub const ALLOWED_PATHS: &[&str] = &[
    "/etc/cri/conf.d",
    "/usr/lib/firmware",
    "/usr/lib/modules",
    "/usr/lib/ld-linux-x86-64.so.2",
    "/usr/lib/ld-linux-aarch64.so.1",
    "/usr/bin/ldconfig",
    "/etc/ld.so.conf",
    "/etc/ld.so.cache",
    "/usr/bin/nvidia-modprobe",
    "/usr/bin/nvidia-pcc",
    "/usr/bin/nvidia-smi",
    "/usr/bin/nvidia-ctk",
    "/usr/bin/nvidia-cdi-hook",
    "/usr/bin/nvme",
    "/usr/lib/udev/rules.d",
    "/usr/local",
    "/usr/share/glvnd",
    "/usr/share/egl",
    "/etc/vulkan",
];

/// The same list before the usr-merge (Talos < 1.10).
pub const ALLOWED_PATHS_BEFORE_1_10: &[&str] = &[
    "/etc/cri/conf.d",
    "/lib/firmware",
    "/lib/modules",
    "/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/ld-linux-aarch64.so.1",
    "/sbin/ldconfig",
    "/etc/ld.so.conf",
    "/etc/ld.so.cache",
    "/usr/bin/nvidia-modprobe",
    "/usr/bin/nvidia-pcc",
    "/usr/bin/nvidia-smi",
    "/usr/bin/nvidia-ctk",
    "/usr/bin/nvidia-cdi-hook",
    "/usr/bin/nvme",
    "/usr/lib/udev/rules.d",
    "/usr/local",
    "/usr/share/glvnd",
    "/usr/share/egl",
    "/etc/vulkan",
];

/// At most this many findings of one content rule are listed; the rest are counted.
const MAX_PER_RULE: usize = 20;

/// Largest manifest or service file read into memory.
pub const MAX_TEXT: u64 = 1 << 20;

/// What the manifest told us, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    /// `metadata.name`, when it is a non-empty string.
    pub name: Option<String>,
    /// `metadata.version`, when it is a non-empty string.
    pub version: Option<String>,
    /// `metadata.compatibility.talos.version`, when set.
    pub constraint: Option<String>,
}

/// The target a Talos extension is checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// Talos version the image claims compatibility with (`1.11.0`).
    pub os_version: Option<&'a str>,
    /// `amd64` or `arm64` (also `x86_64`, `x86-64`, `aarch64`).
    pub arch: Option<&'a str>,
    /// Extra allowed paths from the profile, matched by component like the built-in list.
    pub allow_paths: &'a [String],
}

/// Checks the top level of an extension: exactly `manifest.yaml` (a file) and `rootfs/`.
///
/// `entries` are the top-level names with whether each is a directory.
pub fn check_layout(entries: &[(String, bool)]) -> Vec<Finding> {
    let mut out = Vec::new();
    let hint = "a Talos extension holds exactly manifest.yaml and rootfs/";
    match entries.iter().find(|(n, _)| n == MANIFEST) {
        None => out.push(Finding::error(
            MANIFEST,
            "talos.layout",
            "extension manifest is missing",
            format!("{hint}; add manifest.yaml"),
        )),
        Some((_, true)) => out.push(Finding::error(
            MANIFEST,
            "talos.layout",
            "manifest.yaml is a directory",
            format!("{hint}; make manifest.yaml a file"),
        )),
        Some(_) => {}
    }
    match entries.iter().find(|(n, _)| n == "rootfs") {
        None => out.push(Finding::error(
            "rootfs",
            "talos.layout",
            "extension rootfs is missing",
            format!("{hint}; put the extension's files under rootfs/"),
        )),
        Some((_, false)) => out.push(Finding::error(
            "rootfs",
            "talos.layout",
            "rootfs is not a directory",
            format!("{hint}; make rootfs a directory"),
        )),
        Some(_) => {}
    }
    for (name, _) in entries {
        if name != MANIFEST && name != "rootfs" {
            out.push(Finding::error(
                name.clone(),
                "talos.layout",
                format!("unexpected file {name:?}: Talos refuses to load the extension"),
                format!("{hint}; move it under rootfs/ or out of the extension"),
            ));
        }
    }
    out
}

/// Checks a manifest's text. `label` names the file in findings; `pkg_name`, when the caller
/// knows the name the extension must have (the extensions-validator's `--pkg-name`; an
/// `@commit` suffix is ignored), is compared with `metadata.name`. Directory names are not
/// passed here: upstream directories differ from package names (drivers/chelsio ships
/// chelsio-drivers), and so do users' build directories.
pub fn check_manifest(
    text: &str,
    label: &str,
    pkg_name: Option<&str>,
    os_version: Option<&str>,
) -> (ManifestInfo, Vec<Finding>) {
    let mut out = Vec::new();
    let mut info = ManifestInfo::default();
    let placeholders = find_placeholders(text, true);
    if !placeholders.is_empty() {
        out.push(placeholder_finding(
            label,
            "talos.template-placeholder",
            &placeholders,
        ));
    }
    let doc = match first_document(text) {
        Ok((doc, count)) => {
            if count > 1 {
                out.push(Finding::warning(
                    label,
                    "talos.manifest-parse",
                    format!("{count} YAML documents; Talos reads only the first"),
                    "keep one document in manifest.yaml",
                ));
            }
            doc
        }
        Err(e) => {
            out.push(Finding::error(
                label,
                "talos.manifest-parse",
                format!("not valid YAML: {e}"),
                "fix the YAML syntax (a rendered template must not leave unquoted `{{ }}`)",
            ));
            return (info, out);
        }
    };
    let Value::Mapping(top) = doc else {
        let found = match doc {
            Value::Null => String::new(),
            other => type_name(&other).to_string(),
        };
        out.push(unsupported_version(label, &found));
        return (info, out);
    };
    check_top_keys(&top, label, &mut out);
    let Some(meta) = top.get("metadata") else {
        out.push(Finding::error(
            label,
            "talos.metadata",
            "metadata is missing",
            "add a metadata mapping with name, version, author, description",
        ));
        return (info, out);
    };
    let Value::Mapping(meta) = meta else {
        out.push(Finding::error(
            label,
            "talos.metadata-type",
            format!("metadata is {}, not a mapping", type_name(meta)),
            "write metadata as a mapping with name, version, author, description",
        ));
        return (info, out);
    };
    check_metadata(
        meta,
        label,
        pkg_name,
        os_version,
        &placeholders,
        &mut info,
        &mut out,
    );
    (info, out)
}

fn unsupported_version(label: &str, found: &str) -> Finding {
    Finding::error(
        label,
        "talos.manifest-version",
        format!("unsupported manifest version: {found:?}"),
        format!("start the manifest with `version: {MANIFEST_VERSION}`"),
    )
}

fn check_top_keys(top: &serde_norway::Mapping, label: &str, out: &mut Vec<Finding>) {
    match top.get("version") {
        Some(Value::String(v)) if v == MANIFEST_VERSION => {}
        Some(Value::String(v)) => out.push(unsupported_version(label, v)),
        Some(Value::Null) | None => out.push(unsupported_version(label, "")),
        Some(other) => out.push(unsupported_version(label, &scalar_or_type(other))),
    }
    unknown_keys(
        top,
        &["version", "metadata"],
        label,
        "",
        "talos.unknown-key",
        out,
    );
}

fn check_metadata(
    meta: &serde_norway::Mapping,
    label: &str,
    pkg_name: Option<&str>,
    os_version: Option<&str>,
    placeholders: &[(usize, String)],
    info: &mut ManifestInfo,
    out: &mut Vec<Finding>,
) {
    unknown_keys(
        meta,
        &[
            "name",
            "version",
            "author",
            "description",
            "compatibility",
            "extraInfo",
        ],
        label,
        "metadata.",
        "talos.unknown-key",
        out,
    );
    info.name = required_string(meta, "name", label, out);
    info.version = required_string(meta, "version", label, out);
    for key in ["author", "description", "extraInfo"] {
        optional_string(meta, key, label, out);
    }
    if let (Some(name), Some(dir)) = (&info.name, pkg_name) {
        let dir = dir.split('@').next().unwrap_or(dir);
        if name != dir {
            out.push(Finding::warning(
                label,
                "talos.name-mismatch",
                format!("metadata.name {name:?} differs from the package name {dir:?}"),
                "the extensions-validator (--pkg-name) requires them to be equal; rename one",
            ));
        }
    }
    let version_is_template = placeholders.iter().any(|(_, p)| {
        info.version
            .as_deref()
            .is_some_and(|v| v.contains(p.as_str()))
    });
    if let Some(version) = info.version.as_deref().filter(|_| !version_is_template) {
        if !version_format_ok(version) {
            out.push(Finding::warning(
                label,
                "talos.version-format",
                format!(
                    "metadata.version {version:?} matches none of the extensions-validator formats"
                ),
                "use semver (1.2.3, v1.2.3-rc.1), a date (20240101, 20240101.1), \
                 X.Y.Z-vTAG, <commit>-vTAG or X.Y",
            ));
        }
    }
    info.constraint = compatibility(meta, label, out);
    match (&info.constraint, os_version) {
        (Some(constraint), Some(os)) => check_constraint(constraint, os, label, out),
        (Some(constraint), None) => out.push(Finding::not_checked(
            label,
            "talos.compatibility",
            format!("the compatibility range {constraint:?} was not checked: no Talos version"),
            "give the target Talos version (`strata ext validate --os-version 1.11.0`)",
        )),
        (None, _) => {}
    }
}

/// A required string field of `metadata`; records findings and returns it when usable.
fn required_string(
    map: &serde_norway::Mapping,
    key: &str,
    label: &str,
    out: &mut Vec<Finding>,
) -> Option<String> {
    match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_)) | Some(Value::Null) | None => {
            out.push(Finding::error(
                label,
                "talos.metadata",
                format!("metadata.{key} is missing or empty"),
                format!("add `{key}:` under metadata"),
            ));
            None
        }
        Some(v @ (Value::Number(_) | Value::Bool(_))) => {
            let text = scalar_or_type(v);
            out.push(Finding::error(
                label,
                "talos.metadata-type",
                format!(
                    "metadata.{key} `{text}` is a {}, not a string (YAML reads an unquoted \
                     1.10 as 1.1)",
                    type_name(v)
                ),
                format!("quote it: `{key}: \"{text}\"`"),
            ));
            None
        }
        Some(other) => {
            out.push(type_error(
                label,
                &format!("metadata.{key}"),
                other,
                "a string",
            ));
            None
        }
    }
}

fn optional_string(map: &serde_norway::Mapping, key: &str, label: &str, out: &mut Vec<Finding>) {
    match map.get(key) {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push(Finding::warning(
            label,
            "talos.metadata-type",
            format!("metadata.{key} is a {}, not a string", type_name(v)),
            format!("quote it: `{key}: \"{}\"`", scalar_or_type(v)),
        )),
        Some(other) => out.push(type_error(
            label,
            &format!("metadata.{key}"),
            other,
            "a string",
        )),
    }
}

fn type_error(label: &str, field: &str, v: &Value, want: &str) -> Finding {
    Finding::error(
        label,
        "talos.metadata-type",
        format!(
            "{field} is {}, not {want}: Talos fails to load the manifest",
            type_name(v)
        ),
        format!("write {field} as {want}"),
    )
}

/// Reads `compatibility.talos.version`, checking the shape of the mappings around it.
fn compatibility(
    meta: &serde_norway::Mapping,
    label: &str,
    out: &mut Vec<Finding>,
) -> Option<String> {
    let compat = match meta.get("compatibility") {
        None | Some(Value::Null) => return None,
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            out.push(type_error(
                label,
                "metadata.compatibility",
                other,
                "a mapping",
            ));
            return None;
        }
    };
    unknown_keys(
        compat,
        &["talos"],
        label,
        "metadata.compatibility.",
        "talos.unknown-key",
        out,
    );
    let talos = match compat.get("talos") {
        None | Some(Value::Null) => return None,
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            out.push(type_error(
                label,
                "metadata.compatibility.talos",
                other,
                "a mapping",
            ));
            return None;
        }
    };
    let prefix = "metadata.compatibility.talos.";
    unknown_keys(talos, &["version"], label, prefix, "talos.unknown-key", out);
    match talos.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            out.push(type_error(
                label,
                "metadata.compatibility.talos.version",
                other,
                "a string",
            ));
            None
        }
    }
}

fn check_constraint(constraint: &str, os_version: &str, label: &str, out: &mut Vec<Finding>) {
    match semver::talos_compatible(constraint, os_version) {
        Ok(true) => {}
        Ok(false) => out.push(Finding::error(
            label,
            "talos.compatibility",
            format!(
                "version constraint {constraint:?} can't be satisfied with Talos version {os_version}"
            ),
            "use an extension build made for this Talos version, or change the profile's version",
        )),
        Err(e) => out.push(Finding::error(
            label,
            "talos.compatibility-syntax",
            format!("error parsing Talos version constraint {constraint:?}: {e}"),
            "write a blang/semver range such as \">= v1.9.0\"",
        )),
    }
}

/// Checks rootfs contents: allowed paths, special files, permissions and ELF architecture.
/// `rootfs` is rooted at the extension's rootfs; findings name paths as `rootfs/...`.
pub fn check_contents(rootfs: &Tree, target: &Target<'_>) -> Vec<Finding> {
    let allowed = allowed_paths_for(target.os_version);
    let machine = target.arch.and_then(elf_machine_for_arch);
    let mut limiter = Limiter::default();
    let mut regular_files = 0usize;
    for (path, entry) in rootfs.iter() {
        if path == Path::new("/") {
            continue;
        }
        let shown = format!("rootfs{}", path.display());
        let text = path.to_string_lossy();
        match &entry.kind {
            EntryKind::Dir => {
                if let Some(f) = world_writable(&shown, entry.mode, true) {
                    limiter.push(f);
                }
            }
            EntryKind::CharDev { .. }
            | EntryKind::BlockDev { .. }
            | EntryKind::Fifo
            | EntryKind::Socket => limiter.push(Finding::error(
                shown,
                "talos.special-file",
                "special files (devices, FIFOs, sockets) are not allowed in extensions",
                "remove it; create device nodes at runtime (udev) instead",
            )),
            EntryKind::Symlink(_) => {
                if let Some(f) = path_finding(&shown, &text, allowed, target.allow_paths) {
                    limiter.push(f);
                }
            }
            EntryKind::File(data) => {
                regular_files += 1;
                if let Some(f) = path_finding(&shown, &text, allowed, target.allow_paths) {
                    limiter.push(f);
                }
                for f in file_mode_findings(&shown, entry.mode) {
                    limiter.push(f);
                }
                if let Some(m) = machine {
                    if let Some(f) = elf_finding(&shown, &text, data, m, "talos.arch") {
                        limiter.push(f);
                    }
                }
            }
        }
    }
    let mut out = limiter.finish();
    if machine.is_none() && regular_files > 0 {
        out.push(Finding::not_checked(
            "rootfs",
            "talos.arch",
            "the architecture of ELF programs was not checked: no target architecture",
            "give the target architecture (`--arch amd64` or `--arch arm64`)",
        ));
    }
    if regular_files == 0 {
        out.push(Finding::warning(
            "rootfs",
            "talos.empty-rootfs",
            "the extension's rootfs holds no regular file",
            "put the files the extension ships under rootfs/ (e.g. rootfs/usr/local/bin/...)",
        ));
    }
    out
}

/// The allowlist for a Talos version: the pre-usr-merge list before 1.10.
pub fn allowed_paths_for(os_version: Option<&str>) -> &'static [&'static str] {
    let old = os_version
        .and_then(|v| semver::Version::parse_core(v).ok())
        .is_some_and(|v| (v.major, v.minor) < (1, 10));
    if old {
        ALLOWED_PATHS_BEFORE_1_10
    } else {
        ALLOWED_PATHS
    }
}

/// How a path fares against the allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathVerdict {
    /// Under an allowed path, by whole component.
    Allowed,
    /// Refused by component, but Talos' string-prefix check would accept it via this entry.
    PrefixOnly(String),
    /// Refused by Talos too.
    Denied,
}

/// Judges `path` (absolute, inside the rootfs) against `allowed` plus `extra`.
pub fn judge_path(path: &str, allowed: &[&str], extra: &[String]) -> PathVerdict {
    let extra_norm: Vec<String> = extra.iter().map(|e| normalize_allow(e)).collect();
    let by_component =
        allowed.iter().any(|a| under(path, a)) || extra_norm.iter().any(|a| under(path, a));
    if by_component {
        return PathVerdict::Allowed;
    }
    match allowed.iter().find(|a| path.starts_with(**a)) {
        Some(a) => PathVerdict::PrefixOnly(a.to_string()),
        None => PathVerdict::Denied,
    }
}

/// `/usr/local/` → `/usr/local`; `usr/local` → `/usr/local`.
fn normalize_allow(p: &str) -> String {
    let trimmed = p.trim().trim_end_matches('/');
    if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

fn path_finding(shown: &str, path: &str, allowed: &[&str], extra: &[String]) -> Option<Finding> {
    let hint = "move it under /usr/local (or another allowed path), or add its directory to the \
                profile's allow_paths";
    match judge_path(path, allowed, extra) {
        PathVerdict::Allowed => None,
        PathVerdict::PrefixOnly(entry) => Some(Finding::error(
            shown,
            "talos.allowed-path",
            format!(
                "path {path} is not under an allowed path (compared by component); Talos' own \
                 prefix check would have let it pass because it starts with {entry}"
            ),
            hint,
        )),
        PathVerdict::Denied => Some(Finding::error(
            shown,
            "talos.allowed-path",
            format!("path {path} is not allowed in extensions (Talos refuses it too)"),
            hint,
        )),
    }
}

fn world_writable(shown: &str, mode: u32, is_dir: bool) -> Option<Finding> {
    if mode & 0o002 == 0 {
        return None;
    }
    let what = if is_dir { "directory" } else { "file" };
    let hint = "remove write permission for others (chmod o-w)";
    if is_dir && mode & 0o1000 != 0 {
        return Some(Finding::warning(
            shown,
            "talos.world-writable",
            format!(
                "sticky world-writable {what} (mode {mode:04o}); the layer is read-only anyway"
            ),
            hint,
        ));
    }
    Some(Finding::error(
        shown,
        "talos.world-writable",
        format!("world-writable {what} (mode {mode:04o}) is not allowed in extensions"),
        hint,
    ))
}

fn file_mode_findings(shown: &str, mode: u32) -> Vec<Finding> {
    let mut out: Vec<Finding> = world_writable(shown, mode, false).into_iter().collect();
    if mode & 0o6000 != 0 {
        let bits = match mode & 0o6000 {
            0o4000 => "setuid",
            0o2000 => "setgid",
            _ => "setuid and setgid",
        };
        out.push(Finding::warning(
            shown,
            "talos.setuid",
            format!(
                "{bits} file (mode {mode:04o}); layers are built -all-root, so it runs as root"
            ),
            "drop the bit unless the program really needs root (chmod u-s,g-s)",
        ));
    }
    out
}

/// Counts findings per rule and keeps the first [`MAX_PER_RULE`] of each.
#[derive(Default)]
struct Limiter {
    kept: Vec<Finding>,
    dropped: Vec<(&'static str, usize)>,
}

impl Limiter {
    fn push(&mut self, f: Finding) {
        let shown = self.kept.iter().filter(|k| k.rule == f.rule).count();
        if shown < MAX_PER_RULE {
            self.kept.push(f);
            return;
        }
        match self.dropped.iter_mut().find(|(r, _)| *r == f.rule) {
            Some((_, n)) => *n += 1,
            None => self.dropped.push((f.rule, 1)),
        }
    }

    fn finish(mut self) -> Vec<Finding> {
        for (rule, n) in self.dropped {
            let severity = self
                .kept
                .iter()
                .filter(|k| k.rule == rule)
                .map(|k| k.severity)
                .min()
                .unwrap_or(Severity::Warning);
            let (message, hint) = if severity == Severity::Info {
                (
                    format!("{n} more paths like these (only the first {MAX_PER_RULE} are listed)"),
                    "",
                )
            } else {
                (
                    format!(
                        "{n} more paths break this rule (only the first {MAX_PER_RULE} are listed)"
                    ),
                    "fix the listed paths the same way",
                )
            };
            self.kept
                .push(Finding::new(severity, "rootfs", rule, message, hint));
        }
        self.kept
    }
}

/// A file's contents as text, refusing files above [`MAX_TEXT`] bytes and invalid UTF-8.
pub(crate) fn read_text(data: &FileData) -> Result<String, String> {
    let bytes = data
        .head(MAX_TEXT as usize + 1)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_TEXT {
        return Err(format!("it is larger than {MAX_TEXT} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8".to_string())
}

/// Checks every service spec in `/usr/local/etc/containers` of `rootfs`, with entrypoints
/// resolved inside the container rootfs.
pub fn check_rootfs_services(rootfs: &Tree) -> Vec<Finding> {
    let mut files = Vec::new();
    let mut out = Vec::new();
    for (path, entry) in rootfs.iter() {
        if path.parent() != Some(Path::new(SERVICES_DIR)) {
            continue;
        }
        let shown = format!("rootfs{}", path.display());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match (&entry.kind, name.ends_with(".yaml")) {
            (EntryKind::Dir, _) => {}
            (_, false) => out.push(Finding::warning(
                shown,
                "service.ignored-file",
                "Talos reads only *.yaml files here and ignores this one",
                "rename it to NAME.yaml if it is a service spec, or move it elsewhere",
            )),
            (EntryKind::File(data), true) => match read_text(data) {
                Ok(text) => files.push(service::ServiceFile {
                    label: shown,
                    file_name: name,
                    text,
                }),
                Err(e) => out.push(Finding::error(
                    shown,
                    "service.parse",
                    format!("cannot read the service spec: {e}"),
                    "ship the spec as a UTF-8 YAML file",
                )),
            },
            (_, true) => out.push(Finding::warning(
                shown,
                "service.not-a-file",
                "this service spec is not a regular file, so strata cannot check it",
                "ship the spec as a regular file",
            )),
        }
    }
    out.extend(service::check_services(&files, Some(rootfs)));
    out
}

/// Everything about one Talos extension whose parts are already at hand.
pub struct TalosInput<'a> {
    /// Manifest text.
    pub manifest: &'a str,
    /// How findings name the manifest (`manifest.yaml`).
    pub manifest_label: &'a str,
    /// Package name the extension must have, compared with `metadata.name`.
    pub pkg_name: Option<&'a str>,
    /// The rootfs, rooted at the extension's `rootfs/`; `None` when only metadata is at hand.
    pub rootfs: Option<&'a Tree>,
}

/// Runs the manifest, content and service checks. Layout is checked separately
/// ([`check_layout`]) because only the caller knows the top-level entries.
pub fn check_talos(input: &TalosInput<'_>, target: &Target<'_>) -> (ManifestInfo, Vec<Finding>) {
    let (info, mut out) = check_manifest(
        input.manifest,
        input.manifest_label,
        input.pkg_name,
        target.os_version,
    );
    if let Some(rootfs) = input.rootfs {
        out.extend(check_contents(rootfs, target));
        out.extend(check_rootfs_services(rootfs));
    }
    (info, out)
}

/// Builds a tree holding the entries below `prefix` of `tree`, re-rooted at `/`.
pub fn subtree(tree: &Tree, prefix: &Path) -> Result<Tree, crate::fs::tree::TreeError> {
    let mut out = Tree::new();
    for (path, entry) in tree.iter() {
        let Ok(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        let inner = PathBuf::from("/").join(rest);
        out.insert(inner, entry.clone())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::Entry;

    const GOOD: &str = "version: v1alpha1\nmetadata:\n  name: hello\n  version: 1.0.0\n  author: me\n  description: hi\n  compatibility:\n    talos:\n      version: \">= v1.9.0\"\n";

    fn rules(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn good_manifest_passes_and_is_read() {
        let (info, out) = check_manifest(GOOD, MANIFEST, Some("hello"), Some("1.11.0"));
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(info.name.as_deref(), Some("hello"));
        assert_eq!(info.constraint.as_deref(), Some(">= v1.9.0"));
    }

    #[test]
    fn manifest_problems_are_each_reported() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "---\n",
                "talos.manifest-version",
                "unsupported manifest version: \"\"",
            ),
            (
                "",
                "talos.manifest-version",
                "unsupported manifest version: \"\"",
            ),
            (
                "version: v1\nmetadata: {}\n",
                "talos.manifest-version",
                "\"v1\"",
            ),
            ("version: [\n", "talos.manifest-parse", "not valid YAML"),
            (
                &GOOD.replace("1.0.0", "4.2"),
                "talos.metadata-type",
                "`4.2` is a number (float)",
            ),
            (
                &GOOD.replace("1.0.0", "\"{{ .VERSION }}\""),
                "talos.template-placeholder",
                "`{{ .VERSION }}` (line 4)",
            ),
            (
                &GOOD.replace("1.0.0", "\"$VERSION\""),
                "talos.template-placeholder",
                "`$VERSION` (line 4)",
            ),
            (
                &GOOD.replace("1.0.0", "microcode-20220207-v1.0.0"),
                "talos.version-format",
                "microcode-20220207-v1.0.0",
            ),
            (
                &GOOD.replace("v1.9.0", "v1.12.0"),
                "talos.compatibility",
                "\">= v1.12.0\" can't be satisfied with Talos version 1.11.0",
            ),
            (
                &GOOD.replace(">= v1.9.0", "~ 1.0"),
                "talos.compatibility-syntax",
                "error parsing Talos version constraint",
            ),
            (
                &GOOD.replace("author: me", "author: me\n  tier: core"),
                "talos.unknown-key",
                "`metadata.tier`",
            ),
            (
                &GOOD.replace("name: hello", "name: other"),
                "talos.name-mismatch",
                "\"other\"",
            ),
            (
                &GOOD.replace("  name: hello\n", ""),
                "talos.metadata",
                "metadata.name is missing",
            ),
            (
                &GOOD.replace("description: hi", "description: [a]"),
                "talos.metadata-type",
                "metadata.description is a list",
            ),
        ];
        for (text, rule, message) in cases {
            let (_, out) = check_manifest(text, MANIFEST, Some("hello"), Some("1.11.0"));
            assert!(
                out.iter()
                    .any(|f| f.rule == *rule && f.message.contains(message)),
                "{rule} / {message} not in {out:#?}\nfor:\n{text}"
            );
        }
    }

    #[test]
    fn template_version_is_not_also_a_format_warning() {
        let text = GOOD.replace("1.0.0", "\"{{ .VERSION }}\"");
        let (_, out) = check_manifest(&text, MANIFEST, Some("hello"), None);
        // Without a Talos version the range is named as not checked, never passed.
        assert_eq!(
            rules(&out),
            ["talos.template-placeholder", "talos.compatibility"]
        );
        assert_eq!(out[1].severity, Severity::NotChecked);
    }

    #[test]
    fn paths_match_by_component_and_prefix_only_cases_are_named() {
        let extra = vec!["/opt/vendor/".to_string(), "srv".to_string()];
        let table: &[(&str, PathVerdict)] = &[
            ("/usr/local/bin/x", PathVerdict::Allowed),
            ("/usr/local", PathVerdict::Allowed),
            ("/usr/lib/modules/6.1/x.ko", PathVerdict::Allowed),
            ("/etc/ld.so.conf", PathVerdict::Allowed),
            (
                "/usr/localx/bin",
                PathVerdict::PrefixOnly("/usr/local".into()),
            ),
            (
                "/etc/vulkansc/icd.d/x.json",
                PathVerdict::PrefixOnly("/etc/vulkan".into()),
            ),
            (
                "/usr/lib/modules-load.d/x.conf",
                PathVerdict::PrefixOnly("/usr/lib/modules".into()),
            ),
            (
                "/etc/ld.so.conf.d/x.conf",
                PathVerdict::PrefixOnly("/etc/ld.so.conf".into()),
            ),
            ("/etc/OpenCL/vendors/x.icd", PathVerdict::Denied),
            ("/usr/lib64/a.so", PathVerdict::Denied),
            ("/boot/vmlinuz", PathVerdict::Denied),
            ("/opt/vendor/bin/x", PathVerdict::Allowed),
            ("/opt/vendorx", PathVerdict::Denied),
            ("/srv/data", PathVerdict::Allowed),
        ];
        for (path, want) in table {
            assert_eq!(&judge_path(path, ALLOWED_PATHS, &extra), want, "{path}");
        }
        assert_eq!(
            judge_path("/lib/modules/x.ko", allowed_paths_for(Some("v1.9.5")), &[]),
            PathVerdict::Allowed
        );
        assert_eq!(
            judge_path("/lib/modules/x.ko", allowed_paths_for(Some("1.10.0")), &[]),
            PathVerdict::Denied
        );
    }

    #[test]
    fn contents_are_checked_for_paths_specials_modes_and_arch() {
        let mut t = Tree::new();
        let add = |t: &mut Tree, p: &str, e: Entry| t.insert(p, e).unwrap();
        add(
            &mut t,
            "/usr/local/bin/ok",
            Entry::bytes_file(crate::binary::test_elf(62, false), 0o755),
        );
        add(
            &mut t,
            "/usr/local/bin/arm",
            Entry::bytes_file(crate::binary::test_elf(183, false), 0o755),
        );
        add(
            &mut t,
            "/usr/lib/firmware/gpu.elf",
            Entry::bytes_file(crate::binary::test_elf(183, false), 0o644),
        );
        add(
            &mut t,
            "/usr/local/bin/suid",
            Entry::bytes_file("x", 0o4755),
        );
        add(&mut t, "/usr/local/share/ww", Entry::bytes_file("x", 0o666));
        add(&mut t, "/usr/local/tmp", Entry::dir(0o1777));
        add(&mut t, "/usr/local/open", Entry::dir(0o777));
        add(
            &mut t,
            "/etc/passwd",
            Entry::symlink("/usr/local/etc/passwd"),
        );
        add(
            &mut t,
            "/etc/vulkansc/icd.json",
            Entry::bytes_file("{}", 0o644),
        );
        add(
            &mut t,
            "/usr/local/dev/null",
            Entry {
                kind: EntryKind::CharDev { major: 1, minor: 3 },
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        );
        let target = Target {
            os_version: Some("1.11.0"),
            arch: Some("amd64"),
            allow_paths: &[],
        };
        let out = check_contents(&t, &target);
        let got: Vec<(String, &str, bool)> = out
            .iter()
            .map(|f| (f.path.clone(), f.rule, f.is_error()))
            .collect();
        assert_eq!(
            got,
            [
                ("rootfs/etc/passwd".to_string(), "talos.allowed-path", true),
                (
                    "rootfs/etc/vulkansc/icd.json".to_string(),
                    "talos.allowed-path",
                    true
                ),
                // Firmware for a GPU is data: noted, not refused.
                (
                    "rootfs/usr/lib/firmware/gpu.elf".to_string(),
                    "content.foreign-elf",
                    false
                ),
                ("rootfs/usr/local/bin/arm".to_string(), "talos.arch", true),
                (
                    "rootfs/usr/local/bin/suid".to_string(),
                    "talos.setuid",
                    false
                ),
                (
                    "rootfs/usr/local/dev/null".to_string(),
                    "talos.special-file",
                    true
                ),
                (
                    "rootfs/usr/local/open".to_string(),
                    "talos.world-writable",
                    true
                ),
                (
                    "rootfs/usr/local/share/ww".to_string(),
                    "talos.world-writable",
                    true
                ),
                (
                    "rootfs/usr/local/tmp".to_string(),
                    "talos.world-writable",
                    false
                ),
            ]
        );
        assert!(
            out[1]
                .message
                .contains("prefix check would have let it pass"),
            "{}",
            out[1].message
        );
        assert!(out[3]
            .message
            .contains("built for arm64, but the target architecture is x86-64"));
    }

    #[test]
    fn many_bad_paths_are_summarised() {
        let mut t = Tree::new();
        for i in 0..25 {
            t.insert(format!("/etc/x{i:02}"), Entry::bytes_file("x", 0o644))
                .unwrap();
        }
        let target = Target {
            arch: Some("amd64"),
            ..Target::default()
        };
        let out = check_contents(&t, &target);
        assert_eq!(out.len(), MAX_PER_RULE + 1);
        assert!(
            out[MAX_PER_RULE].message.starts_with("5 more paths"),
            "{}",
            out[MAX_PER_RULE].message
        );
        assert!(out[MAX_PER_RULE].is_error());
    }

    #[test]
    fn layout_requires_exactly_manifest_and_rootfs() {
        let ok = [
            ("manifest.yaml".to_string(), false),
            ("rootfs".to_string(), true),
        ];
        assert!(check_layout(&ok).is_empty());
        let bad = [("rootfs".to_string(), false), ("README".to_string(), false)];
        let messages: Vec<String> = check_layout(&bad).into_iter().map(|f| f.message).collect();
        assert_eq!(
            messages,
            [
                "extension manifest is missing",
                "rootfs is not a directory",
                "unexpected file \"README\": Talos refuses to load the extension",
            ]
        );
    }

    #[test]
    fn placeholders_are_found_with_lines() {
        let text = "a: \"{{ .VERSION}}\"\nb: [{{ .TIER }}] x {{ y }}\nc: ${FOO} $VERSION $5\n";
        assert_eq!(
            find_placeholders(text, true),
            [
                (1, "{{ .VERSION}}".to_string()),
                (2, "{{ .TIER }}".to_string()),
                (2, "{{ y }}".to_string()),
                (3, "${FOO}".to_string()),
                (3, "$VERSION".to_string()),
            ]
        );
        assert_eq!(find_placeholders(text, false).len(), 3);
    }

    #[test]
    fn subtree_reroots_entries() {
        let mut t = Tree::new();
        t.insert("/manifest.yaml", Entry::bytes_file("m", 0o644))
            .unwrap();
        t.insert("/rootfs/usr/local/bin/x", Entry::bytes_file("x", 0o755))
            .unwrap();
        let sub = subtree(&t, Path::new("/rootfs")).unwrap();
        let paths: Vec<String> = sub.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/usr",
                "/usr/local",
                "/usr/local/bin",
                "/usr/local/bin/x"
            ]
        );
    }
}
