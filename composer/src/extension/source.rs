//! Where extensions come from, turned into checked trees.
//!
//! | profile key | what |
//! |---|---|
//! | `dir` | a Talos extension directory (`manifest.yaml` + `rootfs/`) |
//! | `image` | an OCI image in a registry (tag or digest); multi-arch indexes resolve to the profile's arch |
//! | `oci_layout` (+ `ref`) | an OCI image-layout directory (air-gapped) |
//! | `docker_archive` (+ `ref`) | a `docker save` tarball |
//! | `sysext`, `confext` | a systemd-sysext/confext `.raw` image: squashfs, erofs, or a GPT disk image (DDI) |
//!
//! Every blob is digest-checked on its way into the content-addressed cache
//! (`oci` module). Each extension is validated with Talos' or systemd's
//! rules; the findings go back to the build, which refuses to write
//! anything while any of them is an error.

use crate::extension::findings::{Finding, Report};
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
    /// A `.raw` image is neither squashfs nor erofs nor a GPT disk image.
    #[error(
        "{}: neither a squashfs image (\"hsqs\" at byte 0), an erofs image (magic 0xe0f5e1e2 at \
         byte 1024) nor a GPT disk image (\"EFI PART\" at byte 512); fix: give a sysext/confext \
         image as mksquashfs, mkfs.erofs or systemd-repart write them",
        path.display()
    )]
    NotAnImage {
        /// The file.
        path: PathBuf,
    },
    /// A GPT disk image (DDI) has no usable partition, or a damaged table.
    #[error(transparent)]
    Ddi(#[from] crate::disk::ddi::DdiError),
    /// The build's architecture is not one strata knows (the plan checks it first).
    #[error("unknown architecture `{0}`")]
    Arch(String),
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
    /// The sysext/confext image file as given: shipped as it is in layered mode (a DDI's file
    /// system partition is shipped instead, see [`Resolved::partition`]) and, when disabled,
    /// placed whole in the root.
    pub raw_image: Option<PathBuf>,
    /// For a DDI: the partition the tree was read from. Its file system may hold `/usr` only,
    /// which the guest would mount at `/`, so the build ships a squashfs of [`Resolved::tree`]
    /// instead (`assets::layers`).
    pub partition: Option<crate::disk::ddi::Partition>,
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
        partition: None,
        origin,
        digest,
        report,
        enabled: true,
    })
}

/// A sysext or confext `.raw` image (squashfs, erofs or DDI).
pub fn from_raw(path: &Path, kind: Kind, env: &Env<'_>) -> Result<Resolved, SourceError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = file_name
        .strip_suffix(".raw")
        .unwrap_or(&file_name)
        .to_string();
    let arch =
        crate::arch::Arch::parse(env.arch).ok_or_else(|| SourceError::Arch(env.arch.into()))?;
    let image_kind = if kind == Kind::Confext {
        ImageKind::Confext
    } else {
        ImageKind::Sysext
    };
    let raw = open_raw(path, image_kind, arch, env.scratch)?;
    let target = sysext::Target {
        host: env.host,
        arch: sysext::systemd_arch(env.arch),
    };
    let mut findings = raw.findings;
    findings.extend(sysext::check_tree_for(
        image_kind, &name, &raw.tree, &target,
    ));
    let version = release_version(&raw.tree, image_kind, &name);
    let mut report = Report::new(name.clone(), kind.as_str());
    report.findings = findings;
    let digest = crate::io::hash::file_sha256(path).map_err(read_err(path))?;
    Ok(Resolved {
        kind,
        name,
        version,
        metadata: serde_norway::Value::Null,
        tree: raw.tree,
        raw_image: Some(path.to_path_buf()),
        partition: raw.partition,
        origin: path.display().to_string(),
        digest: Some(format!("sha256:{digest}")),
        report,
        enabled: true,
    })
}

/// A sysext/confext `.raw` image opened for checks: its tree as systemd would merge it, what
/// the image's container says, and the DDI partition it came from.
pub struct RawImage {
    /// The extension's files, rooted as systemd merges them (a DDI's `usr` partition under
    /// `/usr`).
    pub tree: Tree,
    /// Findings about the container: a DDI's verity partitions, which strata does not enforce.
    pub findings: Vec<Finding>,
    /// The DDI partition the tree was read from; `None` for a bare squashfs or erofs file.
    pub partition: Option<crate::disk::ddi::Partition>,
}

/// Opens a sysext/confext `.raw` image for `arch`, the one way the build and `strata ext
/// validate` read one: a bare squashfs or erofs file, or a GPT disk image (DDI) whose `root`
/// (or, for a sysext, `usr`) partition of `arch` holds the squashfs or erofs file system (see
/// [`crate::disk::ddi`]). File contents are extracted below `scratch`.
pub fn open_raw(
    path: &Path,
    kind: ImageKind,
    arch: crate::arch::Arch,
    scratch: &Path,
) -> Result<RawImage, SourceError> {
    use crate::disk::ddi;
    let mut file = std::fs::File::open(path).map_err(read_err(path))?;
    if !ddi::is_gpt(&mut file).map_err(read_err(path))? {
        let tree = read_image(path, scratch)?;
        return Ok(RawImage {
            tree,
            findings: Vec::new(),
            partition: None,
        });
    }
    let found = ddi::open(path, arch, kind == ImageKind::Sysext)?;
    let part = &found.fs;
    let Some(tree) = read_fs_range(path, part.offset, part.len, scratch)? else {
        let what = format!(
            "partition {} ({}) holds neither a squashfs nor an erofs file system",
            part.number,
            part.role.as_str()
        );
        return Err(cause(path, what));
    };
    let tree = match part.role.mount_point() {
        "/" => tree,
        at => reroot(&tree, at).map_err(|e| cause(path, e))?,
    };
    let findings = found
        .verity
        .iter()
        .map(|v| {
            Finding::warning(
                format!("partition {} ({})", v.number, v.role.as_str()),
                "sysext.verity",
                format!(
                    "the image carries a {} partition; strata does not enforce dm-verity yet, so \
                     partition {}'s file system is used without its hash being checked",
                    v.role.as_str(),
                    part.number
                ),
                "trust the image's source, or compare its sha256 with the publisher's",
            )
        })
        .collect();
    Ok(RawImage {
        tree,
        findings,
        partition: Some(found.fs),
    })
}

/// Reads a squashfs or erofs image into a tree, by its magic.
pub fn read_image(path: &Path, scratch: &Path) -> Result<Tree, SourceError> {
    let len = std::fs::metadata(path).map_err(read_err(path))?.len();
    read_fs_range(path, 0, len, scratch)?.ok_or_else(|| SourceError::NotAnImage {
        path: path.to_path_buf(),
    })
}

/// Reads the squashfs or erofs file system of `len` bytes at `offset` of `path`, by its magic;
/// `None` when it is neither.
fn read_fs_range(
    path: &Path,
    offset: u64,
    len: u64,
    scratch: &Path,
) -> Result<Option<Tree>, SourceError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(read_err(path))?;
    let mut head = [0u8; 4];
    let have = |at: u64| at + 4 <= len;
    if have(0) {
        f.read_exact_at(&mut head, offset).map_err(read_err(path))?;
        if &head == b"hsqs" {
            return crate::fs::squashfs_read::read_range_in(path, offset, len, scratch)
                .map(Some)
                .map_err(|e| cause(path, e));
        }
    }
    if have(1024) {
        f.read_exact_at(&mut head, offset + 1024)
            .map_err(read_err(path))?;
        if u32::from_le_bytes(head) == 0xE0F5_E1E2 {
            return crate::fs::erofs::read_range_in(path, offset, len, scratch)
                .map(Some)
                .map_err(|e| cause(path, e));
        }
    }
    Ok(None)
}

/// `tree` moved below `at` (a `usr` partition's file system is the extension's `/usr`); the
/// partition's root directory becomes `at`, with its mode and owner.
fn reroot(tree: &Tree, at: &str) -> Result<Tree, crate::fs::tree::TreeError> {
    let mut out = Tree::new();
    for (path, entry) in tree.iter() {
        let rel = path.strip_prefix("/").unwrap_or(path);
        out.insert(Path::new(at).join(rel), entry.clone())?;
    }
    out.share_scratch(tree);
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::disk::ddi::{type_guid, Role};
    use crate::disk::gpt::{regions, GptPartition};
    use crate::disk::guid::Guid;
    use crate::fs::tree::Entry;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    /// A squashfs (strata's writer) of `/lib/extension-release.d/extension-release.tools` and
    /// `/bin/tool`: the contents of a `usr` partition.
    fn usr_fs(dir: &Path) -> Vec<u8> {
        let mut tree = Tree::new();
        tree.insert(
            "/lib/extension-release.d/extension-release.tools",
            Entry::bytes_file(b"ID=_any\nSYSEXT_VERSION_ID=2.1\n".to_vec(), 0o644),
        )
        .unwrap();
        tree.insert(
            "/bin/tool",
            Entry::bytes_file(b"#!/bin/sh\n".to_vec(), 0o755),
        )
        .unwrap();
        let path = dir.join("usr.sqsh");
        let opts = crate::fs::squashfs::SquashOptions::default();
        crate::fs::squashfs::write_file(&tree, &path, &opts).unwrap();
        std::fs::read(path).unwrap()
    }

    /// A DDI `tools.raw` with `fs` in a partition of type `fs_type` at 1 MiB and, when given, a
    /// 1 MiB partition of type `extra` after it.
    fn ddi(dir: &Path, fs: &[u8], fs_type: Guid, extra: Option<Guid>) -> PathBuf {
        let sectors = (fs.len() as u64).div_ceil(MIB) * MIB / 512;
        let mut parts = vec![GptPartition {
            type_guid: fs_type.to_disk(),
            guid: Guid::derive(&[b"fs"]).to_disk(),
            first_lba: 2048,
            last_lba: 2048 + sectors - 1,
            name: "fs",
        }];
        if let Some(t) = extra {
            parts.push(GptPartition {
                type_guid: t.to_disk(),
                guid: Guid::derive(&[b"extra"]).to_disk(),
                first_lba: 2048 + sectors,
                last_lba: 2048 + sectors + 2047,
                name: "extra",
            });
        }
        let size = (2048 + sectors + 2048) * 512 + MIB;
        let r = regions(size, Guid::derive(&[b"disk"]).to_disk(), &parts, None).unwrap();
        let path = dir.join("tools.raw");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&r.head, 0).unwrap();
        f.write_all_at(&r.tail, size - r.tail.len() as u64).unwrap();
        f.write_all_at(fs, MIB).unwrap();
        path
    }

    #[test]
    fn a_ddi_usr_partition_reads_as_the_extension_usr_with_a_verity_warning() {
        let dir = tempfile::tempdir().unwrap();
        let fs = usr_fs(dir.path());
        let verity = type_guid(Arch::Amd64, Role::UsrVerity);
        let path = ddi(
            dir.path(),
            &fs,
            type_guid(Arch::Amd64, Role::Usr),
            Some(verity),
        );
        let raw = open_raw(&path, ImageKind::Sysext, Arch::Amd64, dir.path()).unwrap();
        assert!(raw.tree.get("/usr/bin/tool").is_some());
        assert!(raw
            .tree
            .get("/usr/lib/extension-release.d/extension-release.tools")
            .is_some());
        assert!(raw.tree.get("/bin").is_none(), "nothing stays at the top");
        assert_eq!(raw.partition.as_ref().map(|p| p.role), Some(Role::Usr));
        assert_eq!(raw.findings.len(), 1);
        let f = &raw.findings[0];
        assert_eq!(
            (f.rule, f.severity),
            (
                "sysext.verity",
                crate::extension::findings::Severity::Warning
            )
        );
        assert!(
            f.message.contains("does not enforce dm-verity"),
            "{}",
            f.message
        );
        // The release file is found where systemd looks, so the version comes from it.
        assert_eq!(
            release_version(&raw.tree, ImageKind::Sysext, "tools"),
            "2.1"
        );
    }

    #[test]
    fn a_ddi_root_partition_reads_as_it_is_and_confext_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        let fs = usr_fs(dir.path());
        let path = ddi(dir.path(), &fs, type_guid(Arch::Arm64, Role::Root), None);
        let raw = open_raw(&path, ImageKind::Confext, Arch::Arm64, dir.path()).unwrap();
        assert!(raw.tree.get("/bin/tool").is_some());
        assert!(raw.findings.is_empty());
        let err = open_raw(&path, ImageKind::Sysext, Arch::Amd64, dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("without a root or usr partition for x86-64")
                && err.contains("1 root-arm64"),
            "{err}"
        );
        let path = ddi(dir.path(), &fs, type_guid(Arch::Amd64, Role::Usr), None);
        let err = open_raw(&path, ImageKind::Confext, Arch::Amd64, dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("without a root partition"), "{err}");
    }

    #[test]
    fn a_ddi_partition_without_a_file_system_or_with_a_cut_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let usr = type_guid(Arch::Amd64, Role::Usr);
        let path = ddi(dir.path(), &[0u8; 4096], usr, None);
        let err = open_raw(&path, ImageKind::Sysext, Arch::Amd64, dir.path())
            .err()
            .unwrap();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            text.contains("tools.raw")
                && text.contains("partition 1 (usr) holds neither a squashfs nor an erofs"),
            "{text}"
        );
        // The squashfs claims more bytes than its partition has.
        let mut fs = usr_fs(dir.path());
        let used = u64::from_le_bytes(fs[40..48].try_into().unwrap());
        fs[40..48].copy_from_slice(&(used + 2 * MIB).to_le_bytes());
        let path = ddi(dir.path(), &fs, usr, None);
        let err = open_raw(&path, ImageKind::Sysext, Arch::Amd64, dir.path())
            .err()
            .unwrap();
        let text = crate::error::chain_line(&err);
        assert!(text.contains("truncated"), "{text}");
        let junk = dir.path().join("junk.raw");
        std::fs::write(&junk, vec![1u8; 5000]).unwrap();
        let err = open_raw(&junk, ImageKind::Sysext, Arch::Amd64, dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("junk.raw: neither a squashfs") && err.contains("fix:"),
            "{err}"
        );
    }
}
