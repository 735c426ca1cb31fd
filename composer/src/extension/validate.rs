//! Entry points of `strata ext validate`: validate an extension given as a path, an image
//! reference or a tree and collect the findings in a [`Report`].
//!
//! Accepted by [`validate_input`] — every source the build accepts, read by the build's own
//! code so that what the build refuses shows up here:
//! - a Talos extension directory (`manifest.yaml` + `rootfs/`): layout, manifest, contents,
//!   services;
//! - an OCI image: an image-layout directory (`oci-layout` + `index.json`), a `docker save`
//!   archive, or a registry reference ([`Input::Image`]); unpacked by
//!   [`source::image_tree`], whose refusals (path escapes, device nodes, hard links out of the
//!   root, …) become `source.unpack` findings;
//! - a sysext/confext `.raw` image, opened by [`source::open_raw`] (what the build opens: bare squashfs/erofs or a DDI);
//! - a Talos metadata directory without `rootfs/`, as upstream repositories and the test corpus
//!   hold them: `manifest.yaml` (or another YAML file carrying `version` + `metadata`, reported
//!   because Talos only loads `manifest.yaml`), `vars.yaml` (ignored: template variables) and
//!   service specs beside them; or service specs alone;
//! - a sysext/confext tree directory (`usr/lib/extension-release.d/` or
//!   `etc/extension-release.d/`); the image name is the directory name;
//! - a directory holding exactly one `extension-release.NAME` file, or that file itself: the
//!   image name is `NAME`, as when the image is deployed under that name (sysext-bakery
//!   publishes `NAME-VERSION-ARCH.raw` and links `/etc/extensions/NAME.raw` to it);
//! - a single `manifest.yaml` or service spec `*.yaml`.
//!
//! Files given directly are opened only when they are regular files (a FIFO or device node is
//! refused without being opened, so validation cannot hang), and a release file given directly
//! must not be a symlink.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_norway::Value;

use super::findings::{Finding, Report};
use super::source::{self, SourceError};
use super::sysext::{self, HostRelease, ImageKind};
use super::talos::rules::{self, read_text, TalosInput, Target, MANIFEST, MAX_TEXT};
use super::talos::service::{self, ServiceFile};
use crate::fs::tree::{EntryKind, Tree, TreeError};
use crate::source::oci;

/// The kind of extension being validated: the one kind every side of strata names
/// (`talos`, `sysext`, `confext`).
pub use strata_proto::ExtensionKind as Kind;

/// What the extensions are validated against (from the profile and the base rootfs).
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// The OS `ID` (used for sysext matching when `host` is not given).
    pub os_id: Option<String>,
    /// The OS version: Talos version for Talos compatibility ranges, and `VERSION_ID` for
    /// sysext matching when `host` is not given.
    pub os_version: Option<String>,
    /// Target architecture, `amd64` or `arm64`.
    pub arch: Option<&'a str>,
    /// Extra allowed paths for Talos extension contents (profile `allow_paths`).
    pub allow_paths: Vec<String>,
    /// The base rootfs' os-release, for sysext/confext matching.
    pub host: Option<HostRelease>,
}

impl Context<'_> {
    /// The host sysext images are matched against: `host`, or one made of `os_id`,
    /// `os_version` and `arch`; `None` when neither is known.
    pub fn host_release(&self) -> Option<HostRelease> {
        if let Some(host) = &self.host {
            return Some(host.clone());
        }
        let id = self.os_id.clone()?;
        Some(HostRelease {
            id,
            id_like: Vec::new(),
            version_id: self.os_version.clone(),
            sysext_level: None,
            confext_level: None,
            architecture: self
                .arch
                .and_then(sysext::systemd_arch)
                .unwrap_or_default()
                .to_string(),
        })
    }

    fn target(&self) -> Target<'_> {
        Target {
            os_version: self.os_version.as_deref(),
            arch: self.arch,
            allow_paths: &self.allow_paths,
        }
    }

    /// The architecture an OCI index is resolved for: the target's, else this machine's.
    fn image_arch(&self) -> &str {
        self.arch.unwrap_or(if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        })
    }
}

/// One thing to validate.
#[derive(Debug, Clone)]
pub enum Input {
    /// A directory or file; its kind is detected.
    Path(PathBuf),
    /// An image in a registry (`host/repo:tag` or `host/repo@sha256:…`).
    Image(String),
}

impl Input {
    /// How the input is named in messages.
    pub fn label(&self) -> String {
        match self {
            Input::Path(p) => p.display().to_string(),
            Input::Image(r) => r.clone(),
        }
    }
}

/// Where OCI images are fetched to and unpacked, as the build does it.
pub struct Fetch<'a> {
    /// Registry options (insecure registries, offline).
    pub pull: &'a oci::PullOptions,
    /// The blob cache.
    pub cache: &'a oci::Cache,
    /// Scratch directory for unpacked contents.
    pub scratch: &'a Path,
    /// The image to pick from an OCI layout or docker archive holding several (`ref`).
    pub reference: Option<&'a str>,
}

/// Errors that stop validation before any finding can be made: the input is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// Reading the path failed.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Listing a directory as a tree failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The path is none of the accepted forms.
    #[error(
        "{path} is not an extension strata recognises; hint: give a Talos extension directory \
         (manifest.yaml + rootfs/), a sysext/confext directory (usr/lib/extension-release.d/ \
         or etc/extension-release.d/), an extension-release.NAME file, a .raw image, an OCI \
         image layout, a docker archive, or --image REF"
    )]
    Unrecognized {
        /// The path.
        path: PathBuf,
    },
    /// The path is a FIFO, socket, device node or (for a release file) a symlink.
    #[error("{path} is {what}, not a regular file: refused without opening it")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// `a FIFO`, `a device node`, `a symlink to …`.
        what: String,
    },
    /// The kind forced by the caller does not fit the path.
    #[error("{path} cannot be validated as a {kind} extension; hint: {hint}")]
    KindMismatch {
        /// The path.
        path: PathBuf,
        /// The requested kind.
        kind: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// An OCI image, a `.raw` image or a registry could not be read.
    #[error("cannot read the {what} {origin}")]
    Source {
        /// `OCI image layout`, `docker archive`, `image`, `.raw image`.
        what: &'static str,
        /// The path or reference.
        origin: String,
        /// The reader's error.
        #[source]
        source: crate::error::Cause,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ValidateError + '_ {
    move |source| ValidateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn source_err(
    what: &'static str,
    origin: impl Into<String>,
) -> impl FnOnce(crate::error::Cause) -> ValidateError {
    let origin = origin.into();
    move |source| ValidateError::Source {
        what,
        origin,
        source,
    }
}

/// Validates the extension at `path`, detecting its kind.
pub fn validate_path(path: &Path, ctx: &Context<'_>) -> Result<Report, ValidateError> {
    validate_path_as(path, None, ctx)
}

/// Validates the extension at `path`; `kind` forces the kind where the layout cannot tell
/// (a bare release file is a sysext unless `Some(Kind::Confext)`). Paths that need fetching
/// or unpacking (images) are refused here; see [`validate_input`].
pub fn validate_path_as(
    path: &Path,
    kind: Option<Kind>,
    ctx: &Context<'_>,
) -> Result<Report, ValidateError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        validate_dir(path, kind, ctx)
    } else {
        validate_file(path, kind, ctx)
    }
}

/// Validates one input of any kind the build accepts; OCI images are unpacked below
/// `fetch.scratch` and `.raw` images read as the build reads them.
pub fn validate_input(
    input: &Input,
    kind: Option<Kind>,
    ctx: &Context<'_>,
    fetch: &Fetch<'_>,
) -> Result<Report, ValidateError> {
    let path = match input {
        Input::Image(r) => return validate_registry_image(r, ctx, fetch),
        Input::Path(p) => p,
    };
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        if path.join("oci-layout").is_file() {
            let image =
                oci::layout::read_image(path, fetch.reference, ctx.image_arch()).map_err(|e| {
                    source_err("OCI image layout", path.display().to_string())(e.into())
                })?;
            return validate_image(&image, kind, ctx, fetch.scratch);
        }
        return validate_dir(path, kind, ctx);
    }
    regular_file(path, &meta)?;
    let name = file_name(path);
    if name.starts_with("extension-release.") || name.ends_with(".yaml") {
        return validate_file(path, kind, ctx);
    }
    if is_tar(path)? {
        let image =
            oci::archive::read_archive(path, fetch.reference, ctx.image_arch(), fetch.scratch)
                .map_err(|e| source_err("docker archive", path.display().to_string())(e.into()))?;
        return validate_image(&image, kind, ctx, fetch.scratch);
    }
    validate_raw(path, kind, ctx, fetch.scratch)
}

/// Pulls `reference` as the build does (into the blob cache) and validates the image.
fn validate_registry_image(
    reference: &str,
    ctx: &Context<'_>,
    fetch: &Fetch<'_>,
) -> Result<Report, ValidateError> {
    let parsed = oci::Reference::parse(reference)
        .map_err(|e| source_err("image reference", reference)(e.into()))?;
    let image = oci::pull(&parsed, ctx.image_arch(), fetch.pull, fetch.cache)
        .map_err(|e| source_err("image", reference)(e.into()))?;
    validate_image(&image, Some(Kind::Talos), ctx, fetch.scratch)
}

/// An OCI image's layers unpacked with the build's checks, then validated as a tree; a layer
/// the build refuses is a `source.unpack` error finding.
fn validate_image(
    image: &oci::PulledImage,
    kind: Option<Kind>,
    ctx: &Context<'_>,
    scratch: &Path,
) -> Result<Report, ValidateError> {
    match source::image_tree(image, scratch) {
        Ok(tree) => {
            let kind = kind
                .or_else(|| detect_tree_kind(&tree))
                .unwrap_or(Kind::Talos);
            validate_tree(kind, &image.source, &tree, ctx)
        }
        Err(SourceError::Unpack { source, .. }) if !is_io(&source) => {
            let mut report =
                Report::new(image.source.clone(), kind.unwrap_or(Kind::Talos).as_str());
            report.findings.push(Finding::error(
                image.source.clone(),
                "source.unpack",
                format!(
                    "the build refuses this image: {}",
                    crate::error::chain_line(&source)
                ),
                "rebuild the image from a clean tree (`strata ext pack` makes one)",
            ));
            Ok(report)
        }
        Err(e) => Err(source_err("image", image.source.clone())(e.into())),
    }
}

fn is_io(e: &oci::unpack::UnpackError) -> bool {
    matches!(e, oci::unpack::UnpackError::Io { .. })
}

/// A sysext/confext `.raw` image read by the build's reader; the image name is the file name
/// without `.raw`, as in the build.
fn validate_raw(
    path: &Path,
    kind: Option<Kind>,
    ctx: &Context<'_>,
    scratch: &Path,
) -> Result<Report, ValidateError> {
    if kind == Some(Kind::Talos) {
        return Err(ValidateError::KindMismatch {
            path: path.to_path_buf(),
            kind: "talos",
            hint: ".raw images are sysext or confext images",
        });
    }
    let class = match kind {
        Some(Kind::Confext) => ImageKind::Confext,
        _ => ImageKind::Sysext,
    };
    let raw = source::open_raw(path, class, raw_arch(ctx), scratch).map_err(|e| match e {
        SourceError::NotAnImage { .. } => ValidateError::Unrecognized {
            path: path.to_path_buf(),
        },
        other => source_err(".raw image", path.display().to_string())(other.into()),
    })?;
    let file = file_name(path);
    let name = file.strip_suffix(".raw").unwrap_or(&file);
    let kind = kind
        .or_else(|| detect_tree_kind(&raw.tree).filter(|k| *k != Kind::Talos))
        .unwrap_or(Kind::Sysext);
    let mut report = validate_tree(kind, name, &raw.tree, ctx)?;
    report.findings.splice(0..0, raw.findings);
    Ok(report)
}

/// The architecture whose DDI partitions are looked for: `--arch`, else the machine's own
/// (a DDI carries one partition per architecture; a bare image ignores it).
fn raw_arch(ctx: &Context<'_>) -> crate::arch::Arch {
    let native = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    crate::arch::Arch::parse(ctx.arch.unwrap_or(native))
        .or_else(|| crate::arch::Arch::parse(native))
        .expect("amd64 and arm64 are known architectures")
}

/// Refuses anything but a regular file (after following symlinks) without opening it.
fn regular_file(path: &Path, meta: &fs::Metadata) -> Result<(), ValidateError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device node"
    } else {
        "not a file"
    };
    Err(ValidateError::NotRegular {
        path: path.to_path_buf(),
        what: what.to_string(),
    })
}

/// Reads at most [`MAX_TEXT`] + 1 bytes of a regular file, opened non-blocking and checked
/// on the open descriptor, so a FIFO swapped in after the check cannot hang the read.
fn read_small(path: &Path, follow: bool) -> Result<Vec<u8>, ValidateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let link = fs::symlink_metadata(path).map_err(io_err(path))?;
    if !follow && link.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        return Err(ValidateError::NotRegular {
            path: path.to_path_buf(),
            what: format!(
                "a symlink to {:?} (give the file itself)",
                target.display().to_string()
            ),
        });
    }
    let mut flags = libc::O_NONBLOCK;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(io_err(path))?;
    regular_file(path, &file.metadata().map_err(io_err(path))?)?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// Reads a small text file (manifest, service spec) through [`read_small`].
fn read_small_text(path: &Path) -> Result<String, ValidateError> {
    let bytes = read_small(path, true)?;
    String::from_utf8(bytes).map_err(|_| ValidateError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, "not valid UTF-8"),
    })
}

/// Whether the file is a tar archive (`ustar` at offset 257), or one compressed with gzip,
/// zstd or xz (which no `.raw` image is): a `docker save` archive.
fn is_tar(path: &Path) -> Result<bool, ValidateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err(path))?;
    regular_file(path, &f.metadata().map_err(io_err(path))?)?;
    let mut head = [0u8; 262];
    let got = crate::io::read_up_to(&mut f, &mut head).map_err(io_err(path))?;
    let compressed = [&b"\x1f\x8b"[..], b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\0"]
        .iter()
        .any(|m| head[..got].starts_with(m));
    Ok(compressed || (got == head.len() && &head[257..262] == b"ustar"))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn validate_file(
    path: &Path,
    kind: Option<Kind>,
    ctx: &Context<'_>,
) -> Result<Report, ValidateError> {
    let name = file_name(path);
    if let Some(image) = name.strip_prefix("extension-release.") {
        return release_file_report(path, image, kind, ctx);
    }
    if !name.ends_with(".yaml") || matches!(kind, Some(Kind::Sysext | Kind::Confext)) {
        return Err(ValidateError::Unrecognized {
            path: path.to_path_buf(),
        });
    }
    let text = read_small_text(path)?;
    if name == MANIFEST || looks_like_manifest(&text) {
        let (info, findings) = rules::check_manifest(&text, &name, None, ctx.os_version.as_deref());
        let mut report = Report::new(info.name.unwrap_or(name), Kind::Talos.as_str());
        report.findings = findings;
        return Ok(report);
    }
    let file = ServiceFile {
        label: name.clone(),
        file_name: name.clone(),
        text,
    };
    let mut report = Report::new(name, Kind::Talos.as_str());
    report.findings = service::check_services(&[file], None);
    Ok(report)
}

/// Checks a bare `extension-release.NAME` file; the image is taken to be named `NAME`.
fn release_file_report(
    path: &Path,
    image: &str,
    kind: Option<Kind>,
    ctx: &Context<'_>,
) -> Result<Report, ValidateError> {
    let kind = match kind {
        None | Some(Kind::Sysext) => ImageKind::Sysext,
        Some(Kind::Confext) => ImageKind::Confext,
        Some(Kind::Talos) => {
            return Err(ValidateError::KindMismatch {
                path: path.to_path_buf(),
                kind: "talos",
                hint: "extension-release files belong to sysext/confext images",
            })
        }
    };
    let bytes = read_small(path, false)?;
    let label = file_name(path);
    let host = ctx.host_release();
    let target = sysext_target(ctx, host.as_ref());
    let findings = if bytes.len() as u64 > MAX_TEXT {
        vec![Finding::error(
            label,
            "sysext.release-syntax",
            format!("the release file is larger than {MAX_TEXT} bytes"),
            "keep the release file to KEY=VALUE lines",
        )]
    } else {
        match String::from_utf8(bytes) {
            Ok(text) => sysext::check(kind, image, &label, &text, &target, None),
            Err(_) => vec![Finding::error(
                label,
                "sysext.release-syntax",
                "the release file is not valid UTF-8: systemd refuses it",
                "write the release file as UTF-8 text",
            )],
        }
    };
    let mut report = Report::new(image, kind.as_str());
    report.findings = findings;
    Ok(report)
}

/// The sysext target of a validation: the host and the `--arch` in systemd's spelling.
fn sysext_target<'h>(ctx: &Context<'_>, host: Option<&'h HostRelease>) -> sysext::Target<'h> {
    sysext::Target {
        host,
        arch: ctx.arch.and_then(sysext::systemd_arch),
    }
}

fn validate_dir(
    dir: &Path,
    kind: Option<Kind>,
    ctx: &Context<'_>,
) -> Result<Report, ValidateError> {
    let name = file_name(dir);
    let has = |p: &str| dir.join(p).symlink_metadata().is_ok();
    if has("rootfs") || (kind == Some(Kind::Talos) && has(MANIFEST)) {
        if matches!(kind, Some(Kind::Sysext | Kind::Confext)) {
            return Err(ValidateError::KindMismatch {
                path: dir.to_path_buf(),
                kind: kind.map(Kind::as_str).unwrap_or_default(),
                hint: "the directory has rootfs/: it is laid out as a Talos extension",
            });
        }
        let tree = Tree::from_dir(dir)?;
        return validate_tree(Kind::Talos, &name, &tree, ctx);
    }
    let sysext_tree = has("usr/lib/extension-release.d") || has("etc/extension-release.d");
    if sysext_tree
        || matches!(kind, Some(Kind::Sysext | Kind::Confext)) && (has("usr") || has("etc"))
    {
        let tree = Tree::from_dir(dir)?;
        let kind = kind
            .or_else(|| detect_tree_kind(&tree))
            .unwrap_or(Kind::Sysext);
        return validate_tree(kind, &name, &tree, ctx);
    }
    let files = sorted_files(dir)?;
    let releases: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("extension-release."))
        .collect();
    if let [one] = releases.as_slice() {
        let image = &one["extension-release.".len()..];
        return release_file_report(&dir.join(one), image, kind, ctx);
    }
    if files.iter().any(|f| f.ends_with(".yaml")) && matches!(kind, None | Some(Kind::Talos)) {
        return metadata_dir_report(dir, &name, &files, ctx);
    }
    Err(ValidateError::Unrecognized {
        path: dir.to_path_buf(),
    })
}

/// Names of the regular files directly in `dir`, sorted.
fn sorted_files(dir: &Path) -> Result<Vec<String>, ValidateError> {
    let mut names = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        if item.file_type().map_err(io_err(dir))?.is_file() {
            names.push(item.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Whether a YAML text's first document is a mapping with `version` and `metadata`.
fn looks_like_manifest(text: &str) -> bool {
    match super::talos::yaml::first_document(text) {
        Ok((Value::Mapping(m), _)) => m.get("metadata").is_some() && m.get("version").is_some(),
        _ => false,
    }
}

/// A Talos metadata directory: manifest and service specs side by side, no rootfs.
fn metadata_dir_report(
    dir: &Path,
    name: &str,
    files: &[String],
    ctx: &Context<'_>,
) -> Result<Report, ValidateError> {
    let mut findings = Vec::new();
    let mut services = Vec::new();
    let mut ext_name = None;
    for file in files
        .iter()
        .filter(|f| f.ends_with(".yaml") && *f != "vars.yaml")
    {
        let path = dir.join(file);
        let text = read_small_text(&path)?;
        if file == MANIFEST || looks_like_manifest(&text) {
            if file != MANIFEST {
                findings.push(Finding::warning(
                    file.clone(),
                    "talos.layout",
                    format!("manifest file is named {file}; Talos only loads {MANIFEST}"),
                    format!("install it as {MANIFEST} in the extension image"),
                ));
            }
            let (info, found) = rules::check_manifest(&text, file, None, ctx.os_version.as_deref());
            findings.extend(found);
            ext_name = ext_name.or(info.name);
        } else {
            services.push(ServiceFile {
                label: file.clone(),
                file_name: file.clone(),
                text,
            });
        }
    }
    findings.extend(service::check_services(&services, None));
    let mut report = Report::new(
        ext_name.unwrap_or_else(|| name.to_string()),
        Kind::Talos.as_str(),
    );
    report.findings = findings;
    Ok(report)
}

/// Sysext when the tree has `/usr/lib/extension-release.d`, confext when it has only
/// `/etc/extension-release.d`, Talos when it has `/manifest.yaml` or `/rootfs`.
pub fn detect_tree_kind(tree: &Tree) -> Option<Kind> {
    if tree.get("/manifest.yaml").is_some() || tree.get("/rootfs").is_some() {
        Some(Kind::Talos)
    } else if tree.get(ImageKind::Sysext.release_dir()).is_some() {
        Some(Kind::Sysext)
    } else if tree.get(ImageKind::Confext.release_dir()).is_some() {
        Some(Kind::Confext)
    } else {
        None
    }
}

/// Validates an extension given as a tree; `name` is its directory, image or package name.
pub fn validate_tree(
    kind: Kind,
    name: &str,
    tree: &Tree,
    ctx: &Context<'_>,
) -> Result<Report, ValidateError> {
    let Some(image_kind) = kind.class() else {
        return talos_tree(name, tree, ctx);
    };
    let host = ctx.host_release();
    let mut report = Report::new(name, kind.as_str());
    let target = sysext_target(ctx, host.as_ref());
    report.findings = sysext::check_tree_for(image_kind, name, tree, &target);
    Ok(report)
}

fn talos_tree(name: &str, tree: &Tree, ctx: &Context<'_>) -> Result<Report, ValidateError> {
    let top: Vec<(String, bool)> = tree
        .iter()
        .filter(|(p, _)| p.parent() == Some(Path::new("/")))
        .map(|(p, e)| (file_name(p), e.is_dir()))
        .collect();
    let mut findings = rules::check_layout(&top);
    let manifest = match tree.get(Path::new("/").join(MANIFEST)).map(|e| &e.kind) {
        Some(EntryKind::File(data)) => match read_text(data) {
            Ok(text) => Some(text),
            Err(e) => {
                findings.push(Finding::error(
                    MANIFEST,
                    "talos.manifest-parse",
                    format!("cannot use the manifest: {e}"),
                    "write manifest.yaml as UTF-8 YAML",
                ));
                None
            }
        },
        _ => None,
    };
    let rootfs = match tree.get("/rootfs") {
        Some(e) if e.is_dir() => Some(rules::subtree(tree, Path::new("/rootfs"))?),
        _ => None,
    };
    let mut ext_name = None;
    let target = ctx.target();
    match &manifest {
        Some(text) => {
            let input = TalosInput {
                manifest: text,
                manifest_label: MANIFEST,
                pkg_name: None,
                rootfs: rootfs.as_ref(),
            };
            let (info, found) = rules::check_talos(&input, &target);
            findings.extend(found);
            ext_name = info.name;
        }
        None => {
            if let Some(rootfs) = &rootfs {
                findings.extend(rules::check_contents(rootfs, &target));
                findings.extend(rules::check_rootfs_services(rootfs));
            }
        }
    }
    let mut report = Report::new(
        ext_name.unwrap_or_else(|| name.to_string()),
        Kind::Talos.as_str(),
    );
    report.findings = findings;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extension::findings::Severity;
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use crate::test_support::{corpus_dir, workspace_root as repo_root};

    fn flatcar_host() -> HostRelease {
        HostRelease::from_os_release(
            "ID=flatcar\nID_LIKE=coreos\nVERSION_ID=4230.2.0\nSYSEXT_LEVEL=1.0\n",
            "amd64",
        )
        .expect("flatcar host")
    }

    fn talos_ctx() -> Context<'static> {
        Context {
            os_version: Some("1.11.0".into()),
            arch: Some("amd64"),
            ..Context::default()
        }
    }

    fn sysext_ctx() -> Context<'static> {
        Context {
            arch: Some("amd64"),
            host: Some(flatcar_host()),
            ..Context::default()
        }
    }

    fn subdirs(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_dir())
            .collect();
        out.sort();
        out
    }

    /// Corpus entries in golden order with the kind to validate them as. Confexts are the
    /// sysext entries whose README note says CONFEXT.
    fn corpus_entries(corpus: &Path) -> Vec<(String, PathBuf, Option<Kind>)> {
        let readme = fs::read_to_string(corpus.join("README.md")).expect("corpus README");
        let confexts: Vec<String> = readme
            .lines()
            .filter(|l| l.starts_with("| `sysext/") && l.contains("CONFEXT"))
            .filter_map(|l| l.split('`').nth(1))
            .filter_map(|p| Path::new(p).parent().map(|d| d.display().to_string()))
            .collect();
        let mut out = Vec::new();
        let talos = corpus.join("talos-extensions");
        for dir in subdirs(&talos) {
            let name = file_name(&dir);
            match name.as_str() {
                "_historical" | "_talos-testdata" => {
                    for sub in subdirs(&dir) {
                        out.push((
                            format!("talos-extensions/{name}/{}", file_name(&sub)),
                            sub,
                            None,
                        ));
                    }
                }
                // Category template variables and duplicate-finder allow-lists: no extensions.
                "_shared-vars" | "_duplicate-file-exceptions" => {}
                _ => out.push((format!("talos-extensions/{name}"), dir, None)),
            }
        }
        let sysext_root = corpus.join("sysext");
        for dir in subdirs(&sysext_root) {
            let name = file_name(&dir);
            let dirs = if name == "_variants" {
                subdirs(&dir)
            } else {
                vec![dir]
            };
            for d in dirs {
                let rel = d
                    .strip_prefix(corpus)
                    .expect("inside corpus")
                    .display()
                    .to_string();
                let kind = confexts.contains(&rel).then_some(Kind::Confext);
                out.push((rel, d, kind));
            }
        }
        out
    }

    fn validate_corpus(corpus: &Path) -> Vec<(String, Report)> {
        corpus_entries(corpus)
            .into_iter()
            .map(|(entry, path, kind)| {
                let ctx = if entry.starts_with("sysext/") {
                    sysext_ctx()
                } else {
                    talos_ctx()
                };
                let report =
                    validate_path_as(&path, kind, &ctx).unwrap_or_else(|e| panic!("{entry}: {e}"));
                (entry, report)
            })
            .collect()
    }

    const GOLDEN_HEADER: &str = "\
# Findings of `strata ext validate` over tests/corpus, one line per finding:
# ENTRY  SEVERITY  RULE  PATH  (ENTRY ok when there is none). Talos entries are checked
# against Talos 1.11.0 on amd64; sysext entries against a Flatcar host (ID=flatcar,
# ID_LIKE=coreos, VERSION_ID=4230.2.0, SYSEXT_LEVEL=1.0, x86-64). Skipped:
# _shared-vars and _duplicate-file-exceptions (no extensions).
# Regenerate: STRATA_BLESS=1 cargo test -p strata-composer corpus_findings_match_the_golden_file
";

    fn render_golden(results: &[(String, Report)]) -> String {
        let mut out = String::from(GOLDEN_HEADER);
        for (entry, report) in results {
            if report.findings.is_empty() {
                let _ = writeln!(out, "{entry}  ok");
            }
            for f in &report.findings {
                let _ = writeln!(out, "{entry}  {}  {}  {}", f.severity, f.rule, f.path);
            }
        }
        out
    }

    fn has(results: &[(String, Report)], entry: &str, rule: &str, severity: Severity) -> bool {
        results
            .iter()
            .find(|(e, _)| e == entry)
            .unwrap_or_else(|| panic!("no corpus entry {entry}"))
            .1
            .findings
            .iter()
            .any(|f| f.rule == rule && f.severity == severity)
    }

    fn report<'r>(results: &'r [(String, Report)], entry: &str) -> &'r Report {
        &results
            .iter()
            .find(|(e, _)| e == entry)
            .unwrap_or_else(|| panic!("no corpus entry {entry}"))
            .1
    }

    #[test]
    fn corpus_findings_match_the_golden_file() {
        let corpus = corpus_dir();
        let results = validate_corpus(&corpus);
        let text = render_golden(&results);
        let golden = repo_root().join("tests/fixtures/corpus-findings.txt");
        if std::env::var_os("STRATA_BLESS").is_some() {
            fs::write(&golden, &text).expect("write golden");
        }
        let want = fs::read_to_string(&golden).unwrap_or_default();
        if want != text {
            let diff: Vec<String> = text
                .lines()
                .zip(want.lines().chain(std::iter::repeat("<missing>")))
                .filter(|(a, b)| a != b)
                .take(10)
                .map(|(a, b)| format!("  got:  {a}\n  want: {b}"))
                .collect();
            panic!(
                "corpus findings differ from {} (STRATA_BLESS=1 rewrites it):\n{}",
                golden.display(),
                diff.join("\n")
            );
        }
    }

    #[test]
    fn corpus_findings_include_the_known_tricky_cases() {
        let corpus = corpus_dir();
        let r = validate_corpus(&corpus);
        use Severity::{Error, Warning};
        // Every HEAD manifest is an unrendered template.
        let head: Vec<&String> = r
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e.starts_with("talos-extensions/") && !e.contains("/_"))
            .collect();
        assert!(head.len() > 80, "{}", head.len());
        for e in head {
            let rep = report(&r, e);
            let manifest = rep.findings.iter().any(|f| {
                f.rule == "talos.template-placeholder"
                    && f.path == MANIFEST
                    && f.message.contains("{{ .VERSION")
            });
            assert!(manifest, "{e}: {:#?}", rep.findings);
        }
        let h = "talos-extensions/_historical/";
        assert!(has(
            &r,
            &format!("{h}mdadm@caf79383"),
            "talos.metadata-type",
            Error
        ));
        assert!(has(
            &r,
            &format!("{h}intel-ucode@049b9f96"),
            "talos.version-format",
            Warning
        ));
        assert!(has(
            &r,
            &format!("{h}zfs@59496eb8"),
            "talos.template-placeholder",
            Error
        ));
        let metal = report(&r, "talos-extensions/metal-agent");
        assert!(
            !metal
                .findings
                .iter()
                .any(|f| f.rule.starts_with("talos.compatibility")),
            "{metal:#?}"
        );
        assert!(has(
            &r,
            "talos-extensions/_talos-testdata/bad-emptymanifest",
            "talos.manifest-version",
            Error
        ));
        assert!(
            report(&r, "talos-extensions/_talos-testdata/good-extension1")
                .findings
                .iter()
                .all(|f| f.rule == "talos.version-format" || f.rule == "talos.name-mismatch")
        );
        assert!(has(
            &r,
            "talos-extensions/_talos-testdata/extension-service-config",
            "service.not-a-service",
            Error
        ));
        assert!(has(
            &r,
            &format!("{h}aws-iam-authenticator-services@e8cebbe9"),
            "service.misplaced-mounts",
            Warning
        ));
        assert!(has(
            &r,
            "talos-extensions/nvidia-container-toolkit-lts",
            "service.duplicate-mount",
            Warning
        ));
        let zfs = report(&r, &format!("{h}zfs-services@a6a52798"));
        let renamed: Vec<&str> = zfs
            .findings
            .iter()
            .filter(|f| f.rule == "service.file-name")
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(renamed, ["zfs-key loader.yaml", "zfs-mouter.yaml"]);
        assert!(!report(&r, "talos-extensions/xen-guest-agent")
            .findings
            .iter()
            .any(|f| f.rule.starts_with("service.")));
        assert!(has(
            &r,
            "talos-extensions/thunderbolt",
            "talos.template-placeholder",
            Error
        ));
        // 1.11.0 is too old for extensions that need 1.12 or 1.13.
        assert!(
            r.iter()
                .filter(|(_, rep)| rep.findings.iter().any(|f| f.rule == "talos.compatibility"))
                .count()
                >= 2
        );
        // sysext
        assert!(report(&r, "sysext/app-nodistro").findings.is_empty());
        assert!(
            report(&r, "sysext/wasmedge").findings.is_empty(),
            "the typo drops the line"
        );
        assert!(report(&r, "sysext/00-flatcar-default").findings.is_empty());
        assert_eq!(report(&r, "sysext/00-flatcar-default").kind, "confext");
        let flatcar = report(&r, "sysext/docker-flatcar");
        let rules: Vec<&str> = flatcar.findings.iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            ["sysext.version-id"],
            "quoted values parse; only VERSION_ID differs"
        );
        assert!(flatcar.findings[0].message.contains("4799.0.0"));
        assert!(has(
            &r,
            "sysext/_variants/docker-arm64",
            "sysext.architecture",
            Error
        ));
        let legacy = report(&r, "sysext/_variants/legacy-bake-os-flatcar");
        assert!(!legacy.has_errors(), "{legacy:#?}");
        assert!(has(
            &r,
            "sysext/_variants/legacy-bake-os-flatcar",
            "sysext.architecture-unset",
            Warning
        ));
    }

    fn fixture(rel: &str) -> PathBuf {
        repo_root().join("tests/fixtures/extensions").join(rel)
    }

    fn fixture_rules(
        rel: &str,
        kind: Option<Kind>,
        ctx: &Context<'_>,
    ) -> Vec<(&'static str, Severity, String)> {
        validate_path_as(&fixture(rel), kind, ctx)
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .findings
            .into_iter()
            .map(|f| (f.rule, f.severity, f.path))
            .collect()
    }

    #[test]
    fn hand_made_fixtures_give_the_expected_findings() {
        use Severity::{Error, Warning};
        let t = talos_ctx();
        let s = sysext_ctx();
        let e = |rule: &'static str, path: &str| (rule, Error, path.to_string());
        let w = |rule: &'static str, path: &str| (rule, Warning, path.to_string());
        assert_eq!(fixture_rules("talos/good", None, &t), []);
        assert_eq!(
            fixture_rules("talos/path-escape", None, &t),
            [
                e(
                    "talos.allowed-path",
                    "rootfs/etc/systemd/system/evil.service"
                ),
                e(
                    "talos.allowed-path",
                    "rootfs/etc/vulkansc/icd.d/vendor.json"
                ),
                e("talos.allowed-path", "rootfs/usr/localx/bin/tool"),
            ]
        );
        assert_eq!(
            fixture_rules("talos/bad-manifest", None, &t),
            [
                e("talos.layout", "README.md"),
                e("talos.template-placeholder", MANIFEST),
                w("talos.unknown-key", MANIFEST),
                e("talos.metadata-type", MANIFEST),
                e("talos.compatibility", MANIFEST),
            ]
        );
        assert_eq!(
            fixture_rules("talos/wrong-arch", None, &t),
            [e("talos.arch", "rootfs/usr/local/bin/tool")]
        );
        let arm = Context {
            arch: Some("arm64"),
            ..talos_ctx()
        };
        assert_eq!(fixture_rules("talos/wrong-arch", None, &arm), []);
        let svc = "rootfs/usr/local/etc/containers/";
        assert_eq!(
            fixture_rules("talos/bad-services", None, &t),
            [
                w("service.ignored-file", &format!("{svc}notes.yml")),
                e("service.not-a-service", &format!("{svc}config.yaml")),
                e("service.depends", &format!("{svc}daemon.yaml")),
                e("service.restart", &format!("{svc}daemon.yaml")),
                e("service.entrypoint", &format!("{svc}daemon.yaml")),
                w("service.file-name", &format!("{svc}daemon2.yaml")),
                e("service.duplicate-name", &format!("{svc}daemon2.yaml")),
                e("service.container-rootfs", &format!("{svc}orphan.yaml")),
            ]
        );
        assert_eq!(
            fixture_rules("sysext/app1", None, &s),
            [w(
                "sysext.release-name",
                "/usr/lib/extension-release.d/extension-release.app2"
            )]
        );
        assert_eq!(
            fixture_rules("sysext/reload-typo", None, &s),
            [w("sysext.reload-manager", "extension-release.reload-typo")]
        );
        let rel = "/usr/lib/extension-release.d/extension-release.bad-content";
        assert_eq!(
            fixture_rules("sysext/bad-content", None, &s),
            [
                e("sysext.os-id", rel),
                e("sysext.os-release", "/usr/lib/os-release"),
                w("sysext.ignored-content", "/etc"),
            ]
        );
        assert_eq!(fixture_rules("sysext/misplaced-confext", None, &s), []);
        let forced = fixture_rules("sysext/misplaced-confext", Some(Kind::Sysext), &s);
        assert_eq!(
            forced[0],
            e(
                "sysext.release-missing",
                "/usr/lib/extension-release.d/extension-release.misplaced-confext"
            )
        );
    }

    #[test]
    fn trees_from_images_validate_like_directories() {
        let mut tree = Tree::new();
        let manifest = "version: v1alpha1\nmetadata:\n  name: hello\n  version: 1.0.0\n  author: a\n  description: b\n";
        tree.insert(
            "/manifest.yaml",
            crate::fs::tree::Entry::bytes_file(manifest, 0o644),
        )
        .expect("insert");
        tree.insert(
            "/rootfs/usr/local/bin/hello",
            crate::fs::tree::Entry::bytes_file("#!/bin/sh\n", 0o755),
        )
        .expect("insert");
        let report = validate_tree(Kind::Talos, "hello", &tree, &talos_ctx()).expect("validate");
        assert!(report.findings.is_empty(), "{:#?}", report.findings);
        assert_eq!(detect_tree_kind(&tree), Some(Kind::Talos));
        tree.insert("/extra", crate::fs::tree::Entry::bytes_file("x", 0o644))
            .expect("insert");
        let report = validate_tree(Kind::Talos, "hello", &tree, &talos_ctx()).expect("validate");
        assert_eq!(
            report.findings[0].message,
            "unexpected file \"extra\": Talos refuses to load the extension"
        );
        let mut sys = Tree::new();
        sys.insert(
            "/usr/lib/extension-release.d/extension-release.tool",
            crate::fs::tree::Entry::bytes_file("ID=flatcar\nVERSION_ID=1.0\n", 0o644),
        )
        .expect("insert");
        assert_eq!(detect_tree_kind(&sys), Some(Kind::Sysext));
        let ctx = Context {
            os_id: Some("flatcar".into()),
            os_version: Some("2.0".into()),
            arch: Some("amd64"),
            ..Context::default()
        };
        let report = validate_tree(Kind::Sysext, "tool", &sys, &ctx).expect("validate");
        let by_rule: BTreeMap<&str, usize> =
            report.findings.iter().fold(BTreeMap::new(), |mut m, f| {
                *m.entry(f.rule).or_default() += 1;
                m
            });
        assert_eq!(
            by_rule,
            BTreeMap::from([("sysext.architecture-unset", 1), ("sysext.version-id", 1)])
        );
    }

    #[test]
    fn unrecognised_paths_are_refused_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("README"), "x").expect("write");
        let err = validate_path(dir.path(), &talos_ctx())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not an extension strata recognises; hint:"),
            "{err}"
        );
        let err = validate_path(&dir.path().join("missing"), &talos_ctx())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read"), "{err}");
    }
}
