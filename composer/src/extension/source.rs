//! Where extensions come from, turned into checked trees.
//!
//! | profile key | what |
//! |---|---|
//! | `dir` | a Talos extension directory (`manifest.yaml` + `rootfs/`) |
//! | `image` | an OCI image in a registry (tag or digest); multi-arch indexes resolve to the profile's arch |
//! | `oci_layout` (+ `ref`) | an OCI image-layout directory (air-gapped) |
//! | `docker_archive` (+ `ref`) | a `docker save` tarball |
//! | `sysext`, `confext` | a systemd-sysext/confext `.raw` image (squashfs or erofs) |
//!
//! Every blob is digest-checked on its way into the content-addressed cache
//! (`oci` module). Each extension is validated with Talos' or systemd's
//! rules; the findings go back to the build, which refuses to write
//! anything while any of them is an error.

use crate::extension::findings::Report;
use crate::extension::sysext::{self, HostRelease, ImageKind};
use crate::extension::talos::rules::{self, TalosInput, Target};
use crate::extension::TalosExtension;
use crate::fs::tree::{EntryKind, FileData, Tree};
use crate::source::oci;
use std::path::{Path, PathBuf};

/// Talos, sysext or confext: the same kinds validation speaks of.
pub use crate::extension::validate::Kind;

/// Why an extension source could not be read. The build blames the
/// profile field; this is the cause under it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory of the extension could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// The reader's reason.
        #[source]
        source: crate::error::Cause,
    },
    /// The Talos extension directory is not one.
    #[error(transparent)]
    Talos(#[from] crate::error::InputError),
    /// An OCI image's layers could not be unpacked.
    #[error("cannot unpack the layers of {origin}")]
    Unpack {
        /// The image.
        origin: String,
        /// Why.
        #[source]
        source: oci::unpack::UnpackError,
    },
    /// A Talos extension image holds more or less than manifest.yaml and rootfs/.
    #[error(
        "{origin}: a Talos extension image holds exactly manifest.yaml and rootfs/; found {found}"
    )]
    ImageShape {
        /// The image.
        origin: String,
        /// Its top-level entries.
        found: String,
    },
    /// A file of a tree is missing or not text.
    #[error("{} is {problem}", path.display())]
    File {
        /// The path in the tree.
        path: PathBuf,
        /// `missing`, `not UTF-8`, or unreadable.
        problem: &'static str,
    },
    /// A `.raw` image is neither squashfs nor erofs.
    #[error("{}: neither a squashfs nor an erofs image (GPT disk images are not supported yet)", path.display())]
    NotAnImage {
        /// The file.
        path: PathBuf,
    },
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |e| SourceError::Read {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

fn cause(path: &Path, source: impl Into<crate::error::Cause>) -> SourceError {
    SourceError::Read {
        path: path.to_path_buf(),
        source: source.into(),
    }
}

/// An extension, read and checked.
pub struct Resolved {
    /// Talos, sysext or confext.
    pub kind: Kind,
    /// Name (Talos `metadata.name`; sysext image name).
    pub name: String,
    /// Version (Talos `metadata.version`; sysext `SYSEXT_VERSION_ID`/`VERSION_ID`).
    pub version: String,
    /// Talos metadata, for `extensions.yaml`.
    pub metadata: serde_norway::Value,
    /// The layer's content: a Talos extension's `rootfs/`, or a sysext's whole image.
    pub tree: Tree,
    /// The sysext/confext image file, shipped as it is in layered mode.
    pub raw_image: Option<PathBuf>,
    /// Where it came from, for messages and the manifest.
    pub origin: String,
    /// The image or file digest (`sha256:…`), when there is one.
    pub digest: Option<String>,
    /// What the rules found.
    pub report: Report,
    /// False: shipped under [`AVAILABLE_DIR`] but not activated.
    pub enabled: bool,
}

/// Where extensions with `enabled: false` land in the root filesystem: an
/// operator activates a sysext there by linking it into `/etc/extensions/`
/// (systemd-sysext), or a Talos one by adding it to the profile.
pub const AVAILABLE_DIR: &str = "/usr/lib/strata/extensions-available";

impl Resolved {
    /// The path of this extension's image under [`AVAILABLE_DIR`].
    pub fn available_path(&self) -> String {
        let ext = if self.kind == Kind::Talos {
            "sqsh"
        } else {
            "raw"
        };
        format!("{AVAILABLE_DIR}/{}.{ext}", self.name)
    }
}

/// What resolving needs from the build.
pub struct Env<'a> {
    /// Target architecture (`amd64`, `arm64`).
    pub arch: &'a str,
    /// The OS version Talos ranges are checked against.
    pub os_version: &'a str,
    /// The base's os-release, for sysext matching.
    pub host: Option<&'a HostRelease>,
    /// Registry options (insecure registries, offline).
    pub pull: &'a oci::PullOptions,
    /// The blob cache.
    pub cache: &'a oci::Cache,
    /// Scratch directory for unpacked contents.
    pub scratch: &'a Path,
}

/// A Talos extension from a directory.
pub fn from_dir(
    dir: &Path,
    allow_paths: &[String],
    env: &Env<'_>,
) -> Result<Resolved, SourceError> {
    let ext = TalosExtension::read_dir(dir)?;
    let manifest_path = dir.join("manifest.yaml");
    let manifest = std::fs::read_to_string(&manifest_path).map_err(read_err(&manifest_path))?;
    let tree = Tree::from_dir(&ext.rootfs).map_err(|e| cause(&ext.rootfs, e))?;
    talos(
        manifest,
        tree,
        ext.metadata,
        dir.display().to_string(),
        None,
        allow_paths,
        env,
    )
}

/// A Talos extension from an OCI image (registry, layout or docker archive).
pub fn from_image(
    image: oci::PulledImage,
    allow_paths: &[String],
    env: &Env<'_>,
) -> Result<Resolved, SourceError> {
    let origin = image.source.clone();
    let digest = image.digest.to_string();
    let tree = image_tree(&image, env.scratch)?;
    let top: Vec<String> = tree
        .iter()
        .filter(|(p, _)| p.components().count() == 2)
        .map(|(p, _)| p.display().to_string())
        .collect();
    let extra: Vec<&String> = top
        .iter()
        .filter(|p| *p != "/manifest.yaml" && *p != "/rootfs")
        .collect();
    if !extra.is_empty() || !top.iter().any(|p| p == "/manifest.yaml") {
        return Err(SourceError::ImageShape {
            origin,
            found: top.join(", "),
        });
    }
    let manifest = read_text(&tree, Path::new("/manifest.yaml"))?;
    let metadata = manifest_metadata(&manifest);
    let rootfs =
        rules::subtree(&tree, Path::new("/rootfs")).map_err(|e| cause(Path::new(&origin), e))?;
    let mut rootfs = rootfs;
    rootfs.share_scratch(&tree);
    talos(
        manifest,
        rootfs,
        metadata,
        origin,
        Some(digest),
        allow_paths,
        env,
    )
}

/// The filesystem of an OCI image (registry, layout or docker archive): its layers unpacked
/// below `scratch` with the hostile-layer checks of [`oci::unpack`]. `strata ext validate`
/// reads images through here too, so it refuses what the build refuses.
pub fn image_tree(image: &oci::PulledImage, scratch: &Path) -> Result<Tree, SourceError> {
    let unpacked = oci::unpack(&image.layers, scratch).map_err(|source| SourceError::Unpack {
        origin: image.source.clone(),
        source,
    })?;
    let mut tree = unpacked.tree;
    tree.hold_scratch(unpacked.contents);
    Ok(tree)
}

fn talos(
    manifest: String,
    mut rootfs: Tree,
    metadata: serde_norway::Value,
    origin: String,
    digest: Option<String>,
    allow_paths: &[String],
    env: &Env<'_>,
) -> Result<Resolved, SourceError> {
    let target = Target {
        os_version: Some(env.os_version),
        arch: Some(env.arch),
        allow_paths,
    };
    let input = TalosInput {
        manifest: &manifest,
        manifest_label: "manifest.yaml",
        pkg_name: None,
        rootfs: Some(&rootfs),
    };
    let (info, findings) = rules::check_talos(&input, &target);
    let name = info.name.clone().unwrap_or_else(|| origin.clone());
    let mut report = Report::new(name.clone(), "talos");
    report.findings = findings;
    // Talos squashes extensions with -all-root.
    rootfs.all_root();
    Ok(Resolved {
        kind: Kind::Talos,
        name,
        version: info.version.unwrap_or_default(),
        metadata,
        tree: rootfs,
        raw_image: None,
        origin,
        digest,
        report,
        enabled: true,
    })
}

/// A sysext or confext `.raw` image (squashfs or erofs).
pub fn from_raw(path: &Path, kind: Kind, env: &Env<'_>) -> Result<Resolved, SourceError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = file_name
        .strip_suffix(".raw")
        .unwrap_or(&file_name)
        .to_string();
    let tree = read_image(path, env.scratch)?;
    let image_kind = if kind == Kind::Confext {
        ImageKind::Confext
    } else {
        ImageKind::Sysext
    };
    let target = sysext::Target {
        host: env.host,
        arch: sysext::systemd_arch(env.arch),
    };
    let findings = sysext::check_tree_for(image_kind, &name, &tree, &target);
    let version = release_version(&tree, image_kind, &name);
    let mut report = Report::new(name.clone(), kind.as_str());
    report.findings = findings;
    let digest = crate::io::hash::file_sha256(path).map_err(read_err(path))?;
    Ok(Resolved {
        kind,
        name,
        version,
        metadata: serde_norway::Value::Null,
        tree,
        raw_image: Some(path.to_path_buf()),
        origin: path.display().to_string(),
        digest: Some(format!("sha256:{digest}")),
        report,
        enabled: true,
    })
}

/// Reads a squashfs or erofs image into a tree, by its magic.
pub fn read_image(path: &Path, scratch: &Path) -> Result<Tree, SourceError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(read_err(path))?;
    let mut head = [0u8; 4];
    f.read_exact(&mut head).map_err(read_err(path))?;
    if &head == b"hsqs" {
        return crate::fs::squashfs_read::read_in(path, scratch).map_err(|e| cause(path, e));
    }
    let mut magic = [0u8; 4];
    let erofs = f.seek(SeekFrom::Start(1024)).is_ok()
        && f.read_exact(&mut magic).is_ok()
        && u32::from_le_bytes(magic) == 0xE0F5_E1E2;
    if erofs {
        return crate::fs::erofs::read_in(path, scratch).map_err(|e| cause(path, e));
    }
    Err(SourceError::NotAnImage {
        path: path.to_path_buf(),
    })
}

/// The version the guest's report will show for the image (the shared rule), so the
/// manifest's expectation and the report agree.
fn release_version(tree: &Tree, class: ImageKind, name: &str) -> String {
    let file = format!("{}/extension-release.{name}", class.release_dir());
    let Ok(text) = read_text(tree, Path::new(&file)) else {
        return String::new();
    };
    let release = strata_proto::osrelease::Release::parse(&text);
    strata_proto::extrelease::shown_version(class, &release)
}

fn manifest_metadata(text: &str) -> serde_norway::Value {
    serde_norway::from_str::<serde_norway::Value>(text)
        .ok()
        .and_then(|v| v.get("metadata").cloned())
        .unwrap_or(serde_norway::Value::Null)
}

/// The text of a regular file in a tree.
pub fn read_text(tree: &Tree, path: &Path) -> Result<String, SourceError> {
    let problem = |problem| SourceError::File {
        path: path.to_path_buf(),
        problem,
    };
    match tree.get(path).map(|e| &e.kind) {
        Some(EntryKind::File(FileData::Bytes(b))) => {
            String::from_utf8(b.clone()).map_err(|_| problem("not UTF-8"))
        }
        Some(EntryKind::File(FileData::Host(h))) => {
            std::fs::read_to_string(h).map_err(|_| problem("unreadable or not UTF-8"))
        }
        _ => Err(problem("missing")),
    }
}
