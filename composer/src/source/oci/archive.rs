//! Docker archives: the tarball `docker save` (and `skopeo copy … docker-archive:`) writes.
//!
//! The archive's `manifest.json` lists images as `{"Config", "RepoTags", "Layers"}`; config and
//! layers are members of the same tar, named `<id>/layer.tar` and `<hex>.json` (Docker < 25) or
//! `blobs/sha256/<hex>` (Docker ≥ 25). Members that are symlinks to other members (Docker's
//! way of storing a shared layer once) are followed inside the archive.
//!
//! An image is chosen by one of its `RepoTags` (compared as normalised references, so `alpine`
//! matches `docker.io/library/alpine:latest`) or as the only image. The config and layers are
//! copied out of the archive into a temporary directory kept alive by the returned
//! [`PulledImage`]. Verification: the config must hash to its file name when that is a digest,
//! and every layer, decompressed, must hash to the config's `rootfs.diff_ids` entry. Layers may
//! be plain tar or gzip/zstd-compressed; the archive itself may be gzip/zstd/xz-compressed.
//!
//! Not supported: the legacy `repositories`-only format without `manifest.json` (Docker < 1.10).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tempfile::TempDir;

use super::image::{
    self, io_err, parse_json, Digest, HashWriter, ImageConfig, ImageError, LayerBlob, Platform,
    PulledImage, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD,
};
use super::reference::Reference;
use super::unpack::open_decompressed;

/// How many symlinks between members are followed before giving up.
const MAX_LINK_HOPS: usize = 8;

/// Errors from reading a docker archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A member name or link target would leave the archive's namespace.
    #[error(
        "docker archive {archive}: member {member:?} escapes the archive (absolute path or `..`)"
    )]
    EscapingMember {
        /// The archive.
        archive: PathBuf,
        /// The member name or link target.
        member: String,
    },
    /// A blob check failed or a JSON document is malformed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The layer list and the config's `rootfs.diff_ids` differ in length.
    #[error(
        "docker archive {archive}: manifest.json lists {layers} layers but the config has \
         {diff_ids} diff_ids; hint: re-create the archive with docker save"
    )]
    LayerCount {
        /// The archive.
        archive: PathBuf,
        /// Layers in `manifest.json`.
        layers: usize,
        /// Entries in `rootfs.diff_ids`.
        diff_ids: usize,
    },
    /// A member that `manifest.json` names is absent (or a symlink loop).
    #[error(
        "docker archive {archive}: manifest.json names {member:?}, which is not a file in the \
         archive; hint: the archive is truncated or was not written by docker save"
    )]
    MissingMember {
        /// The archive.
        archive: PathBuf,
        /// The member name.
        member: String,
    },
    /// The archive has no `manifest.json`.
    #[error(
        "{archive} has no manifest.json, so it is not a docker archive; hint: create it with \
         `docker save IMAGE -o FILE.tar`"
    )]
    NoManifest {
        /// The archive.
        archive: PathBuf,
    },
    /// No image matches the selector (or there are several and none was named).
    #[error("docker archive {archive} has no image {wanted}; it has: {available}; hint: name one of its tags")]
    NoSuchImage {
        /// The archive.
        archive: PathBuf,
        /// What was asked for.
        wanted: String,
        /// The tags of its images.
        available: String,
    },
    /// The tar stream is malformed or truncated.
    #[error("cannot read docker archive {}{}: {source}", archive.display(), entry_suffix(.entry))]
    Tar {
        /// The archive.
        archive: PathBuf,
        /// The member being read, when known.
        entry: Option<String>,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn entry_suffix(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" at member {e:?}"))
        .unwrap_or_default()
}

/// One image of `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What the first pass over the archive found.
struct Listing {
    manifest: Option<Vec<u8>>,
    files: BTreeSet<String>,
    /// Member → the member its symlink or hard link points at (already normalised).
    links: BTreeMap<String, String>,
}

/// Reads the image chosen by `selector` (a repo tag; `None` for the only image) from docker
/// archive `path` for `arch`, copying its blobs into a new temporary directory below
/// `scratch_parent`.
pub fn read_archive(
    path: &Path,
    selector: Option<&str>,
    arch: &str,
    scratch_parent: &Path,
) -> Result<PulledImage, ArchiveError> {
    let wanted = Platform::linux(arch)?;
    let listing = list(path)?;
    let manifest = listing
        .manifest
        .as_ref()
        .ok_or_else(|| ArchiveError::NoManifest {
            archive: path.to_path_buf(),
        })?;
    let images: Vec<ArchiveImage> =
        parse_json(manifest, &format!("manifest.json of {}", path.display()))?;
    let chosen = choose(&images, selector, path)?;
    let mut needed = BTreeMap::new();
    for member in std::iter::once(&chosen.config).chain(&chosen.layers) {
        let resolved = resolve_member(&listing, member, path)?;
        needed.insert(member.clone(), resolved);
    }
    let scratch = TempDir::with_prefix_in("strata-archive-", scratch_parent)
        .map_err(|e| io_err("create a temporary directory in", scratch_parent, e))?;
    let extracted = extract(path, &needed, scratch.path())?;
    let source = match selector {
        Some(tag) => format!("docker-archive:{}:{tag}", path.display()),
        None => format!("docker-archive:{}", path.display()),
    };
    let (config_path, config_digest) = &extracted[&needed[&chosen.config]];
    let config = read_config(path, &chosen.config, config_path, config_digest)?;
    check_platform(&config, &wanted, &source)?;
    let layers = verify_layers(path, chosen, &config, &needed, &extracted)?;
    Ok(PulledImage {
        source,
        digest: config_digest.clone(),
        config_digest: config_digest.clone(),
        platform: config.platform(),
        config,
        layers,
        scratch: Some(Arc::new(scratch)),
    })
}

/// Opens the archive's tar stream (decompressing it if needed).
fn open(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ArchiveError> {
    let reader = open_decompressed(path).map_err(|e| io_err("open", path, e))?;
    Ok(tar::Archive::new(reader))
}

/// First pass: member names, links, and the contents of `manifest.json`.
fn list(path: &Path) -> Result<Listing, ArchiveError> {
    let mut listing = Listing {
        manifest: None,
        files: BTreeSet::new(),
        links: BTreeMap::new(),
    };
    let mut archive = open(path)?;
    let entries = archive.entries().map_err(|e| tar_err(path, None, e))?;
    for item in entries {
        let mut entry = item.map_err(|e| tar_err(path, None, e))?;
        let raw = entry.path().map_err(|e| tar_err(path, None, e))?;
        let raw = raw.to_string_lossy().into_owned();
        let Some(name) = normalize(&raw) else {
            // Names that escape are only an error if manifest.json refers to them.
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let is_symlink = entry.header().entry_type() == tar::EntryType::Symlink;
                let target = entry
                    .link_name()
                    .map_err(|e| tar_err(path, Some(&raw), e))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Symlinks are relative to the link's directory, hard links to the root.
                let base = if is_symlink {
                    parent_of(&name)
                } else {
                    String::new()
                };
                let joined = if base.is_empty() {
                    target.clone()
                } else {
                    format!("{base}/{target}")
                };
                let resolved = normalize(&joined).ok_or_else(|| ArchiveError::EscapingMember {
                    archive: path.to_path_buf(),
                    member: target,
                })?;
                listing.links.insert(name, resolved);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if name == "manifest.json" {
                    let mut bytes = Vec::new();
                    (&mut entry)
                        .take(MAX_MANIFEST_SIZE)
                        .read_to_end(&mut bytes)
                        .map_err(|e| tar_err(path, Some(&raw), e))?;
                    listing.manifest = Some(bytes);
                }
                listing.files.insert(name);
            }
            _ => {}
        }
    }
    Ok(listing)
}

/// `a/b/../c` → `a/c`; `None` if the name is absolute or climbs above the archive root.
fn normalize(raw: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in Path::new(raw).components() {
        match component {
            Component::CurDir => {}
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn parent_of(name: &str) -> String {
    name.rsplit_once('/')
        .map(|(dir, _)| dir.to_string())
        .unwrap_or_default()
}

/// The regular file a member name finally refers to, following links inside the archive.
fn resolve_member(listing: &Listing, member: &str, archive: &Path) -> Result<String, ArchiveError> {
    let escaping = || ArchiveError::EscapingMember {
        archive: archive.to_path_buf(),
        member: member.to_string(),
    };
    let mut name = normalize(member).ok_or_else(escaping)?;
    for _ in 0..MAX_LINK_HOPS {
        if listing.files.contains(&name) {
            return Ok(name);
        }
        match listing.links.get(&name) {
            Some(target) => name = target.clone(),
            None => break,
        }
    }
    Err(ArchiveError::MissingMember {
        archive: archive.to_path_buf(),
        member: member.to_string(),
    })
}

/// The image a repo tag names, or the only image.
fn choose<'a>(
    images: &'a [ArchiveImage],
    selector: Option<&str>,
    archive: &Path,
) -> Result<&'a ArchiveImage, ArchiveError> {
    let tags = |img: &'a ArchiveImage| img.repo_tags.iter().flatten();
    let found = match selector {
        None if images.len() == 1 => images.first(),
        None => None,
        Some(sel) => {
            let wanted = Reference::parse(sel).ok();
            images.iter().find(|img| {
                tags(img)
                    .any(|t| t == sel || (wanted.is_some() && Reference::parse(t).ok() == wanted))
            })
        }
    };
    found.ok_or_else(|| {
        let all: Vec<String> = images
            .iter()
            .map(|img| {
                let names: Vec<&str> = tags(img).map(String::as_str).collect();
                if names.is_empty() {
                    format!("untagged ({})", img.config)
                } else {
                    names.join(" ")
                }
            })
            .collect();
        ArchiveError::NoSuchImage {
            archive: archive.to_path_buf(),
            wanted: match selector {
                Some(sel) => format!("{sel:?}"),
                None => "to pick without a tag (there is not exactly one)".to_string(),
            },
            available: if all.is_empty() {
                "no images".to_string()
            } else {
                all.join(", ")
            },
        }
    })
}

/// Second pass: copies the needed regular members into `dir`, hashing them on the way.
/// Returns member → (copy, digest of the stored bytes).
fn extract(
    archive_path: &Path,
    needed: &BTreeMap<String, String>,
    dir: &Path,
) -> Result<BTreeMap<String, (PathBuf, Digest)>, ArchiveError> {
    let wanted: BTreeSet<&String> = needed.values().collect();
    let mut out = BTreeMap::new();
    let mut archive = open(archive_path)?;
    let entries = archive
        .entries()
        .map_err(|e| tar_err(archive_path, None, e))?;
    for item in entries {
        let mut entry = item.map_err(|e| tar_err(archive_path, None, e))?;
        let raw = entry.path().map_err(|e| tar_err(archive_path, None, e))?;
        let raw = raw.to_string_lossy().into_owned();
        let Some(name) = normalize(&raw) else {
            continue;
        };
        let regular = matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        );
        if !regular || !wanted.contains(&name) {
            continue;
        }
        let dest = dir.join(format!("{:04}", out.len()));
        let file = File::create(&dest).map_err(|e| io_err("create", &dest, e))?;
        let mut writer = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
        io::copy(&mut entry, &mut writer).map_err(|e| tar_err(archive_path, Some(&raw), e))?;
        let digest = writer.digest();
        writer
            .into_inner()
            .into_inner()
            .map_err(|e| io_err("write", &dest, e.into_error()))?;
        // A later member with the same name replaces an earlier one, as tar -x would.
        out.insert(name, (dest, digest));
    }
    Ok(out)
}

/// Parses the config after checking it against its digest-shaped file name, if it has one.
fn read_config(
    archive: &Path,
    member: &str,
    path: &Path,
    digest: &Digest,
) -> Result<ImageConfig, ArchiveError> {
    let what = format!("config {member} of docker archive {}", archive.display());
    let stem = member
        .strip_prefix("blobs/sha256/")
        .or_else(|| member.strip_suffix(".json"))
        .unwrap_or("");
    if let Ok(expected) = Digest::parse(&format!("sha256:{stem}")) {
        if expected != *digest {
            return Err(ImageError::DigestMismatch {
                what,
                expected,
                actual: digest.clone(),
            }
            .into());
        }
    }
    let bytes = image::read_limited(path, MAX_CONFIG_SIZE, &what)?;
    Ok(parse_json(&bytes, &what)?)
}

fn check_platform(config: &ImageConfig, wanted: &Platform, source: &str) -> Result<(), ImageError> {
    let found = config.platform();
    if found.matches(wanted) {
        Ok(())
    } else {
        Err(ImageError::WrongArch {
            image: source.to_string(),
            wanted: wanted.to_string(),
            found: found.to_string(),
        })
    }
}

/// Checks every layer's uncompressed digest against the config and describes the layers.
fn verify_layers(
    archive: &Path,
    image: &ArchiveImage,
    config: &ImageConfig,
    needed: &BTreeMap<String, String>,
    extracted: &BTreeMap<String, (PathBuf, Digest)>,
) -> Result<Vec<LayerBlob>, ArchiveError> {
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != image.layers.len() {
        return Err(ArchiveError::LayerCount {
            archive: archive.to_path_buf(),
            layers: image.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let mut layers = Vec::with_capacity(image.layers.len());
    for (i, (member, diff_id)) in image.layers.iter().zip(diff_ids).enumerate() {
        let (path, digest) = &extracted[&needed[member]];
        let what = format!(
            "layer {member} ({} of {}) of docker archive {}",
            i + 1,
            image.layers.len(),
            archive.display()
        );
        super::image::check_diff_id(path, diff_id, &what)?;
        layers.push(LayerBlob {
            path: path.clone(),
            media_type: media_type_of(path)?,
            digest: digest.clone(),
            size: std::fs::metadata(path)
                .map_err(|e| io_err("stat", path, e))?
                .len(),
        });
    }
    Ok(layers)
}

fn media_type_of(path: &Path) -> Result<String, ArchiveError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let n = file.read(&mut magic).map_err(|e| io_err("read", path, e))?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => OCI_LAYER_ZSTD,
        _ => OCI_LAYER_TAR,
    }
    .to_string())
}

fn tar_err(archive: &Path, entry: Option<&str>, source: io::Error) -> ArchiveError {
    ArchiveError::Tar {
        archive: archive.to_path_buf(),
        entry: entry.map(str::to_string),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::oci::unpack::tests::{file, listing, tar_bytes};
    use crate::source::oci::unpack::unpack;
    use std::io::Write;

    fn config(arch: &str, diff_ids: Vec<Digest>) -> Vec<u8> {
        crate::source::oci::image::tests::config_json(arch, diff_ids)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    enum M<'a> {
        File(&'a str, Vec<u8>),
        Link(&'a str, &'a str),
    }

    fn archive(dir: &Path, name: &str, members: &[M<'_>]) -> PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        for m in members {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            match m {
                M::File(name, data) => {
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, name, &data[..]).unwrap();
                }
                M::Link(name, target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, name, target).unwrap();
                }
            }
        }
        let path = dir.join(name);
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
        path
    }

    /// Two layers in the legacy layout (one gzip, one plain, one shared via a symlink).
    fn legacy(dir: &Path, arch: &str, break_layer: bool) -> PathBuf {
        let l1 = tar_bytes(&[file("manifest.yaml", b"name: x\n")]);
        let l2 = tar_bytes(&[file("rootfs/a", b"a")]);
        let cfg = config(
            arch,
            vec![
                Digest::of_bytes(&l1),
                Digest::of_bytes(&l2),
                Digest::of_bytes(&l1),
            ],
        );
        let cfg_name = format!("{}.json", Digest::of_bytes(&cfg).hex());
        let manifest = format!(
            r#"[{{"Config":"{cfg_name}","RepoTags":["ext/x:1"],"Layers":["aaa/layer.tar","bbb/layer.tar","ccc/layer.tar"]}}]"#
        );
        let l2_stored = if break_layer {
            tar_bytes(&[file("rootfs/a", b"b")])
        } else {
            l2
        };
        archive(
            dir,
            "legacy.tar",
            &[
                M::File("aaa/layer.tar", gzip(&l1)),
                M::File("bbb/layer.tar", l2_stored),
                M::Link("ccc/layer.tar", "../aaa/layer.tar"),
                M::File(&cfg_name, cfg.clone()),
                M::File("manifest.json", manifest.into_bytes()),
            ],
        )
    }

    #[test]
    fn legacy_archives_read_with_shared_and_gzip_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let path = legacy(tmp.path(), "amd64", false);
        for selector in [None, Some("ext/x:1"), Some("docker.io/ext/x:1")] {
            let image = read_archive(&path, selector, "amd64", tmp.path()).unwrap();
            assert_eq!(image.layers.len(), 3);
            assert_eq!(image.layers[0].media_type, OCI_LAYER_GZIP);
            assert_eq!(image.layers[1].media_type, OCI_LAYER_TAR);
            assert_eq!(image.layers[0].digest, image.layers[2].digest);
            let unpacked = unpack(&image.layers, tmp.path()).unwrap();
            assert_eq!(
                listing(&unpacked.tree),
                [
                    "/ dir 755 0:0",
                    "/manifest.yaml file \"name: x\\n\" 644 0:0",
                    "/rootfs dir 755 0:0",
                    "/rootfs/a file \"a\" 644 0:0"
                ]
            );
        }
        let err = read_archive(&path, Some("ext/y:1"), "amd64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has no image \"ext/y:1\"; it has: ext/x:1"),
            "{err}"
        );
        let err = read_archive(&path, None, "arm64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is for linux/amd64, but linux/arm64 was asked for"),
            "{err}"
        );
    }

    #[test]
    fn tampered_layers_and_configs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = legacy(tmp.path(), "arm64", true);
        let err = read_archive(&path, None, "arm64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("layer bbb/layer.tar (2 of 3) of docker archive {} (uncompressed, against its config's diff_id) is corrupt: expected digest sha256:", path.display())),
            "{err}"
        );
        let cfg = config("amd64", vec![]);
        let wrong_name = format!("blobs/sha256/{}", Digest::of_bytes(b"other").hex());
        let manifest = format!(r#"[{{"Config":"{wrong_name}","RepoTags":null,"Layers":[]}}]"#);
        let path = archive(
            tmp.path(),
            "new.tar",
            &[
                M::File(&wrong_name, cfg),
                M::File("manifest.json", manifest.into_bytes()),
            ],
        );
        let err = read_archive(&path, None, "amd64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is corrupt: expected digest sha256:"), "{err}");
    }

    #[test]
    fn broken_archives_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let none = archive(tmp.path(), "none.tar", &[M::File("x", b"x".to_vec())]);
        let err = read_archive(&none, None, "amd64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("has no manifest.json, so it is not a docker archive; hint: create it with `docker save IMAGE -o FILE.tar`"), "{err}");
        let manifest = br#"[{"Config":"c.json","RepoTags":["a:1"],"Layers":["../../etc/passwd"]}]"#;
        let path = archive(
            tmp.path(),
            "esc.tar",
            &[
                M::File("c.json", config("amd64", vec![])),
                M::File("manifest.json", manifest.to_vec()),
            ],
        );
        let err = read_archive(&path, None, "amd64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("member \"../../etc/passwd\" escapes"), "{err}");
        let manifest = br#"[{"Config":"c.json","RepoTags":["a:1"],"Layers":["loop"]}]"#;
        let path = archive(
            tmp.path(),
            "loop.tar",
            &[
                M::Link("loop", "loop"),
                M::File("c.json", config("amd64", vec![])),
                M::File("manifest.json", manifest.to_vec()),
            ],
        );
        let err = read_archive(&path, None, "amd64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names \"loop\", which is not a file in the archive"),
            "{err}"
        );
        let l = tar_bytes(&[file("f", b"f")]);
        let manifest = br#"[{"Config":"c.json","RepoTags":["a:1"],"Layers":["l.tar"]}]"#;
        let path = archive(
            tmp.path(),
            "count.tar",
            &[
                M::File("l.tar", l),
                M::File("c.json", config("amd64", vec![])),
                M::File("manifest.json", manifest.to_vec()),
            ],
        );
        let err = read_archive(&path, None, "amd64", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lists 1 layers but the config has 0 diff_ids"),
            "{err}"
        );
    }

    #[test]
    fn skopeo_docker_archives_read_back() {
        // Judge: skopeo converts a layout written by layout.rs into a docker archive.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let tree = crate::source::oci::layout::tests::sample_tree(tmp.path(), "k");
        crate::source::oci::layout::write_image(
            &dir,
            crate::source::oci::layout::LayerSource::Tree(&tree),
            "amd64",
            "v1",
            0,
        )
        .unwrap();
        let out = tmp.path().join("docker.tar");
        if !crate::test_support::require_tool("skopeo") {
            return;
        }
        let status = std::process::Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v1", dir.display()))
            .arg(format!("docker-archive:{}:ext/k:v1", out.display()))
            .output()
            .expect("run skopeo");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let from_layout = crate::source::oci::layout::read_image(&dir, None, "amd64").unwrap();
        let from_archive = read_archive(&out, Some("ext/k:v1"), "amd64", tmp.path()).unwrap();
        assert_eq!(from_archive.config.rootfs, from_layout.config.rootfs);
        let a = unpack(&from_archive.layers, tmp.path()).unwrap();
        let b = unpack(&from_layout.layers, tmp.path()).unwrap();
        assert_eq!(listing(&a.tree), listing(&b.tree));
    }
}
