//! The OCI image documents (manifest, index, config), digests, and the walk from a top-level
//! manifest or index to the image for one architecture.
//!
//! Every source (registry, cache, layout directory, docker archive) hands its blobs to
//! `resolve`, so architecture selection and its errors are the same whatever the source.
//!
//! Supported: OCI image manifests and indexes (spec v1.0/v1.1) and their Docker schema 2
//! equivalents (manifest list, `rootfs.diff.tar.gzip` layers), nested indexes up to
//! [`MAX_NESTING`] levels, the `linux/amd64` and `linux/arm64` platforms (any arm64 variant).
//! Not supported: Docker schema 1 manifests, sha512 digests, non-Linux images.
//! Spec: <https://github.com/opencontainers/image-spec/blob/main/manifest.md>.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer media type.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch) media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker schema 2 gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The annotation that names an image in an image-layout `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Manifest media types a registry may send us, in order of preference.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Largest manifest or index accepted; registries refuse larger ones too (distribution uses 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest image config accepted; real configs are a few KiB, history included.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;
/// How deep an index may nest other indexes before we assume a loop.
pub const MAX_NESTING: usize = 4;

/// Errors about image documents and their contents, shared by every source.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A digest string is not `sha256:` and 64 lowercase hex digits.
    #[error(
        "digest {value:?} is not valid: {reason}; hint: write `sha256:` followed by 64 \
         lowercase hex digits"
    )]
    BadDigest {
        /// The text found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Content does not hash to the digest that names it.
    #[error(
        "{what} is corrupt: expected digest {expected}, got {actual}; hint: the source is \
         damaged or was tampered with; fetch the image again from a trusted source"
    )]
    DigestMismatch {
        /// The blob (`layer 2 of image …`, a file path).
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest of the bytes actually read.
        actual: Digest,
    },
    /// An image has an index but nothing for the wanted platform.
    #[error(
        "image {image} has no manifest for {wanted}; it has: {available}; hint: use an image \
         built for {wanted} or change the profile's architecture"
    )]
    NoPlatform {
        /// The image (reference or path).
        image: String,
        /// `linux/arm64`.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A document is not the kind expected at this point of the walk.
    #[error("{what} has media type {media_type:?}, expected {expected}")]
    UnexpectedMediaType {
        /// The document.
        what: String,
        /// Its media type.
        media_type: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// Reading a file failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A JSON document is malformed or misses a required field.
    #[error("cannot parse {what}: {source}")]
    Json {
        /// The document.
        what: String,
        /// The parser's complaint, with line and column.
        source: serde_json::Error,
    },
    /// Indexes nest deeper than [`MAX_NESTING`].
    #[error("image {image} nests indexes more than {MAX_NESTING} deep; is there a loop?")]
    Nesting {
        /// The image.
        image: String,
    },
    /// A document is larger than we are willing to hold in memory.
    #[error("{what} is {size} bytes, above the {limit}-byte limit for such documents")]
    TooLarge {
        /// The document.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A blob's length differs from its descriptor's `size`.
    #[error("{what} is {actual} bytes but its descriptor says {expected}; the blob is corrupt")]
    SizeMismatch {
        /// The blob.
        what: String,
        /// The size the descriptor states.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// An architecture other than amd64 or arm64 was asked for.
    #[error("architecture {arch:?} is not supported; hint: use amd64 or arm64")]
    UnsupportedArch {
        /// The name given.
        arch: String,
    },
    /// A manifest uses a schema version we do not read.
    #[error(
        "{what} has schemaVersion {version}; only schema 2 manifests are supported; hint: \
         re-push the image with a current tool"
    )]
    UnsupportedSchema {
        /// The document.
        what: String,
        /// The version found.
        version: u32,
    },
    /// The manifest lists another number of layers than the config has `diff_ids`.
    #[error(
        "image {image} lists {layers} layers but its config has {diff_ids} diff_ids; the image          is inconsistent; hint: rebuild or re-export the image"
    )]
    LayerCount {
        /// The image.
        image: String,
        /// Layers in the manifest.
        layers: usize,
        /// Entries in `rootfs.diff_ids`.
        diff_ids: usize,
    },
    /// The image's config names another platform than the one wanted.
    #[error(
        "image {image} is for {found}, but {wanted} was asked for; hint: use an image built for \
         {wanted} or change the profile's architecture"
    )]
    WrongArch {
        /// The image.
        image: String,
        /// `linux/arm64`.
        wanted: String,
        /// The platform its config states.
        found: String,
    },
}

/// A sha256 content digest, `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms are refused (OCI images use sha256 in practice).
    pub fn parse(value: &str) -> Result<Self, ImageError> {
        let bad = |reason| ImageError::BadDigest {
            value: value.to_string(),
            reason,
        };
        let hex = value
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 {
            return Err(bad("the hex part is not 64 characters long"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the hex part has characters other than 0-9 and a-f"));
        }
        Ok(Self(hex.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(crate::io::hash::bytes_sha256(bytes))
    }

    /// The 64 hex digits, as used in blob file names.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.to_string()
    }
}

/// An OCI platform: operating system, architecture and optional variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `linux`, …
    pub os: String,
    /// `v8` for arm64, often absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<arch>` for one of the architectures strata builds.
    pub fn linux(arch: &str) -> Result<Self, ImageError> {
        match arch {
            "amd64" | "arm64" => Ok(Self {
                architecture: arch.to_string(),
                os: "linux".to_string(),
                variant: None,
            }),
            _ => Err(ImageError::UnsupportedArch {
                arch: arch.to_string(),
            }),
        }
    }

    /// Whether an image for `self` runs on `wanted` (variants are ignored: arm64 is v8).
    pub fn matches(&self, wanted: &Platform) -> bool {
        self.os == wanted.os && self.architecture == wanted.architecture
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// A reference from one document to a blob: what it is, its digest and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's length in bytes.
    pub size: u64,
    /// For index entries: the platform of the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations (`org.opencontainers.image.ref.name`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor without platform or annotations.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Whether the descriptor points at an index (OCI or Docker manifest list).
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }
}

/// An image manifest: one config and the layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`OCI_MANIFEST`] or [`DOCKER_MANIFEST`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs, applied in order.
    pub layers: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index: manifests for several platforms (or several images in a layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// [`OCI_INDEX`] or [`DOCKER_LIST`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The manifests (or nested indexes).
    pub manifests: Vec<Descriptor>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The part of an image config strata uses; other fields are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// The CPU architecture the image is built for.
    pub architecture: String,
    /// RFC 3339 creation time, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The operating system the image is built for.
    pub os: String,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
    /// The architecture variant (`v8`), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl ImageConfig {
    /// The platform the config states.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each layer's uncompressed tar, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// A document parsed from manifest bytes.
#[derive(Debug, Clone)]
pub enum Document {
    /// An index or manifest list.
    Index(ImageIndex),
    /// An image manifest.
    Manifest(ImageManifest),
}

/// Fields common to manifests and indexes, to tell them apart before parsing the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Parses manifest or index bytes named `what` in errors.
pub fn parse_document(bytes: &[u8], what: &str) -> Result<Document, ImageError> {
    let probe: Probe = parse_json(bytes, what)?;
    if probe.schema_version != 2 {
        return Err(ImageError::UnsupportedSchema {
            what: what.to_string(),
            version: probe.schema_version,
        });
    }
    let is_index = match probe.media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        "" => probe.manifests.is_some(),
        other => {
            return Err(ImageError::UnexpectedMediaType {
                what: what.to_string(),
                media_type: other.to_string(),
                expected: "an OCI or Docker schema 2 manifest or index",
            })
        }
    };
    Ok(if is_index {
        Document::Index(parse_json(bytes, what)?)
    } else {
        Document::Manifest(parse_json(bytes, what)?)
    })
}

/// Parses a JSON document, naming it in the error.
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_string(),
        source,
    })
}

/// Serialises a document compactly; field order is fixed by the types, so output is stable.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Our document types hold only strings, numbers and string maps: serialisation cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// One layer blob on the host, ready for [`crate::source::oci::unpack()`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// Where the (verified) blob is.
    pub path: PathBuf,
    /// Its media type; empty when the source does not say (docker archives).
    pub media_type: String,
    /// Its digest as stored (compressed, if it is).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// An image resolved to one platform, with every blob verified and on the host.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// What was asked for, for messages (`ghcr.io/x/y:1`, `layout:/path:tag`, …).
    pub source: String,
    /// The digest of the platform's image manifest (for docker archives, of the config).
    pub digest: Digest,
    /// The digest of the image config.
    pub config_digest: Digest,
    /// The image config.
    pub config: ImageConfig,
    /// The layers, bottom first.
    pub layers: Vec<LayerBlob>,
    /// The platform the image is for.
    pub platform: Platform,
    /// Keeps temporary blob copies (docker archives) alive as long as the image.
    pub(crate) scratch: Option<Arc<TempDir>>,
}

impl PulledImage {
    /// Where temporary copies of the blobs live, if this source needed any.
    pub fn scratch_dir(&self) -> Option<&Path> {
        self.scratch.as_deref().map(TempDir::path)
    }
}

/// A place [`resolve`] reads documents and blobs from; each implementation verifies digests.
pub(crate) trait BlobSource {
    /// The source's error type.
    type Error: From<ImageError>;
    /// The bytes of the manifest or index `desc`, verified against its digest.
    fn manifest(&mut self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, Self::Error>;
    /// A host path holding blob `desc`, verified against its digest.
    fn blob(&mut self, desc: &Descriptor, what: &str) -> Result<PathBuf, Self::Error>;
}

/// Walks from the top-level document `top` (already fetched and verified) to the image for
/// `arch`, fetching the config and every layer through `source`.
pub(crate) fn resolve<S: BlobSource>(
    source: &mut S,
    image: &str,
    top: &Descriptor,
    arch: &str,
) -> Result<PulledImage, S::Error> {
    let wanted = Platform::linux(arch)?;
    let mut desc = top.clone();
    for _ in 0..=MAX_NESTING {
        let what = document_name(image, &desc);
        let bytes = source.manifest(&desc, &what)?;
        match parse_document(&bytes, &what)? {
            Document::Index(index) => desc = select_platform(&index, &wanted, image)?.clone(),
            Document::Manifest(manifest) => {
                return resolve_manifest(source, image, &desc.digest, &manifest, &wanted)
            }
        }
    }
    Err(ImageError::Nesting {
        image: image.to_string(),
    }
    .into())
}

fn document_name(image: &str, desc: &Descriptor) -> String {
    let kind = if desc.is_index() { "index" } else { "manifest" };
    format!("{kind} {} of image {image}", desc.digest)
}

/// The first index entry that runs on `wanted`; attestation entries (platform unknown) and
/// entries without a platform are skipped.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    wanted: &Platform,
    image: &str,
) -> Result<&'a Descriptor, ImageError> {
    if let Some(found) = index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(wanted)))
    {
        return Ok(found);
    }
    let mut available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(Platform::to_string)
        .collect();
    available.dedup();
    Err(ImageError::NoPlatform {
        image: image.to_string(),
        wanted: wanted.to_string(),
        available: if available.is_empty() {
            "no platform-tagged manifests".to_string()
        } else {
            available.join(", ")
        },
    })
}

fn resolve_manifest<S: BlobSource>(
    source: &mut S,
    image: &str,
    digest: &Digest,
    manifest: &ImageManifest,
    wanted: &Platform,
) -> Result<PulledImage, S::Error> {
    let what = format!("config {} of image {image}", manifest.config.digest);
    let config_path = source.blob(&manifest.config, &what)?;
    let config_bytes = read_limited(&config_path, MAX_CONFIG_SIZE, &what)?;
    let config: ImageConfig = parse_json(&config_bytes, &what)?;
    let platform = config.platform();
    if !platform.matches(wanted) {
        return Err(ImageError::WrongArch {
            image: image.to_string(),
            wanted: wanted.to_string(),
            found: platform.to_string(),
        }
        .into());
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, layer) in manifest.layers.iter().enumerate() {
        let what = format!(
            "layer {} ({} of {}) of image {image}",
            layer.digest,
            i + 1,
            manifest.layers.len()
        );
        layers.push(LayerBlob {
            path: source.blob(layer, &what)?,
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
        });
    }
    check_diff_ids(image, &layers, &config.rootfs.diff_ids)?;
    Ok(PulledImage {
        source: image.to_string(),
        digest: digest.clone(),
        config_digest: manifest.config.digest.clone(),
        config,
        layers,
        platform,
        scratch: None,
    })
}

/// Checks each layer's uncompressed stream against the config's `rootfs.diff_ids`.
///
/// The descriptor digest only vouches for the compressed bytes the manifest names; the
/// diff_id is what the config (and so the image digest) commits to for the layer's
/// contents. A layout or archive whose layer was swapped along with its descriptor, or whose
/// config belongs to other layers, is caught only here. Every source calls this once.
pub fn check_diff_ids(
    image: &str,
    layers: &[LayerBlob],
    diff_ids: &[Digest],
) -> Result<(), ImageError> {
    if diff_ids.len() != layers.len() {
        return Err(ImageError::LayerCount {
            image: image.to_string(),
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let what = format!(
            "layer {} ({} of {}) of image {image}",
            layer.digest,
            i + 1,
            layers.len()
        );
        check_diff_id(&layer.path, diff_id, &what)?;
    }
    Ok(())
}

/// Checks that the layer blob at `path`, decompressed, hashes to `diff_id`.
pub fn check_diff_id(path: &Path, diff_id: &Digest, what: &str) -> Result<(), ImageError> {
    let mut reader = crate::io::decompress::open(path)
        .map(|(_, r)| r)
        .map_err(|e| io_err("open", path, e))?;
    let (actual, _) = hash_reader(&mut reader).map_err(|e| io_err("decompress", path, e))?;
    if actual != *diff_id {
        return Err(ImageError::DigestMismatch {
            what: format!("{what} (uncompressed, against its config's diff_id)"),
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(())
}

/// Reads a whole (small) file, refusing more than `limit` bytes.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("read", path, e))?;
    let size = bytes.len() as u64;
    if size > limit {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            size,
            limit,
        });
    }
    Ok(bytes)
}

/// Hashes a file in 1 MiB chunks; returns its digest and length.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), ImageError> {
    let mut file = File::open(path).map_err(|e| io_err("open", path, e))?;
    hash_reader(&mut file).map_err(|e| io_err("read", path, e))
}

/// Hashes a stream to its end; returns its digest and length.
pub fn hash_reader(reader: &mut impl Read) -> io::Result<(Digest, u64)> {
    let (hex, size) = crate::io::hash::reader_sha256(reader)?;
    Ok((Digest(hex), size))
}

/// Checks that a blob has the digest and size its descriptor states.
pub fn check_blob(
    desc: &Descriptor,
    actual: &Digest,
    actual_size: u64,
    what: &str,
) -> Result<(), ImageError> {
    if *actual != desc.digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual: actual.clone(),
        });
    }
    if actual_size != desc.size {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            expected: desc.size,
            actual: actual_size,
        });
    }
    Ok(())
}

pub use crate::io::hash::HashWriter;

impl<W> HashWriter<W> {
    /// The digest of what was written so far.
    pub fn digest(&self) -> Digest {
        Digest(self.sha256_hex())
    }
}

/// Builds an [`ImageError::Io`].
pub fn io_err(op: &'static str, path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An image config for `arch` whose layers have `diff_ids`, as JSON.
    pub(crate) fn config_json(arch: &str, diff_ids: Vec<Digest>) -> Vec<u8> {
        to_json(&ImageConfig {
            architecture: arch.into(),
            created: None,
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids,
            },
            variant: None,
        })
    }

    fn d(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    fn entry(arch: &str, os: &str) -> Descriptor {
        Descriptor {
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: (arch == "arm64").then(|| "v8".into()),
            }),
            ..Descriptor::new(OCI_MANIFEST, d(arch.len() as u8), 1)
        }
    }

    #[test]
    fn digests_parse_strictly() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().to_string(), good);
        for bad in [
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "A".repeat(64)),
            "a".repeat(64),
        ] {
            let err = Digest::parse(&bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("digest {bad:?} is not valid")),
                "{err}"
            );
        }
        assert_eq!(
            Digest::of_bytes(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn platform_selection_names_both_sides() {
        let index = ImageIndex {
            schema_version: 2,
            media_type: OCI_INDEX.into(),
            manifests: vec![entry("unknown", "unknown"), entry("arm64", "linux")],
            annotations: BTreeMap::new(),
        };
        let arm = Platform::linux("arm64").unwrap();
        assert_eq!(
            select_platform(&index, &arm, "x").unwrap().digest,
            index.manifests[1].digest
        );
        let amd = Platform::linux("amd64").unwrap();
        let err = select_platform(&index, &amd, "reg/x:1")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "image reg/x:1 has no manifest for linux/amd64; it has: linux/arm64/v8;"
            ),
            "{err}"
        );
        let err = Platform::linux("riscv64").unwrap_err().to_string();
        assert!(err.contains("\"riscv64\" is not supported"), "{err}");
    }

    #[test]
    fn documents_are_told_apart_by_media_type_or_shape() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_document(index, "i").unwrap(),
            Document::Index(_)
        ));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":3}},"layers":[]}}"#,
            d(1)
        );
        assert!(matches!(
            parse_document(manifest.as_bytes(), "m").unwrap(),
            Document::Manifest(_)
        ));
        let v1 = br#"{"schemaVersion":1,"name":"x"}"#;
        let err = parse_document(v1, "manifest of x").unwrap_err().to_string();
        assert!(
            err.starts_with("manifest of x has schemaVersion 1"),
            "{err}"
        );
        let bad = br#"{"schemaVersion":2,"mediaType":"text/plain"}"#;
        let err = parse_document(bad, "m").unwrap_err().to_string();
        assert!(err.contains("\"text/plain\""), "{err}");
        let err = parse_document(b"{", "manifest m").unwrap_err().to_string();
        assert!(err.starts_with("cannot parse manifest m: "), "{err}");
    }

    #[test]
    fn json_output_is_compact_and_ordered() {
        let mut desc = Descriptor::new(OCI_LAYER_GZIP, d(0), 5);
        desc.annotations.insert("b".into(), "2".into());
        desc.annotations.insert("a".into(), "1".into());
        let json = String::from_utf8(to_json(&desc)).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{}","size":5,"annotations":{{"a":"1","b":"2"}}}}"#,
                d(0)
            )
        );
        let back: Descriptor = serde_json::from_str(&json).unwrap();
        assert_eq!(back, desc);
    }

    /// Blobs in a directory, named by digest; documents served from memory.
    struct DirSource(PathBuf, BTreeMap<Digest, Vec<u8>>);

    impl BlobSource for DirSource {
        type Error = ImageError;
        fn manifest(&mut self, desc: &Descriptor, _: &str) -> Result<Vec<u8>, ImageError> {
            Ok(self.1[&desc.digest].clone())
        }
        fn blob(&mut self, desc: &Descriptor, _: &str) -> Result<PathBuf, ImageError> {
            Ok(self.0.join(desc.digest.hex()))
        }
    }

    /// Resolves an image of one gzip layer holding `layer`, whose config claims `diff_ids`.
    fn resolve_with(layer: &[u8], diff_ids: Vec<Digest>) -> Result<PulledImage, ImageError> {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(layer).unwrap();
        let gz = gz.finish().unwrap();
        let config = config_json("amd64", diff_ids);
        let blob = |bytes: &[u8], media_type: &str| {
            let desc = Descriptor::new(media_type, Digest::of_bytes(bytes), bytes.len() as u64);
            std::fs::write(dir.path().join(desc.digest.hex()), bytes).unwrap();
            desc
        };
        let manifest = to_json(&ImageManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            config: blob(&config, OCI_CONFIG),
            layers: vec![blob(&gz, OCI_LAYER_GZIP)],
            annotations: BTreeMap::new(),
        });
        let top = Descriptor::new(
            OCI_MANIFEST,
            Digest::of_bytes(&manifest),
            manifest.len() as u64,
        );
        let mut source = DirSource(
            dir.path().to_path_buf(),
            BTreeMap::from([(top.digest.clone(), manifest)]),
        );
        let r = resolve(&mut source, "test-image", &top, "amd64");
        drop(dir);
        r
    }

    #[test]
    fn a_layer_that_does_not_match_its_diff_id_is_refused() {
        let layer = b"the layer tar".as_slice();
        assert!(resolve_with(layer, vec![Digest::of_bytes(layer)]).is_ok());
        let err = resolve_with(layer, vec![Digest::of_bytes(b"another layer")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("layer sha256:") && err.contains("(1 of 1) of image test-image"),
            "{err}"
        );
        assert!(
            err.contains("against its config's diff_id) is corrupt: expected digest"),
            "{err}"
        );
        let err = resolve_with(layer, vec![]).unwrap_err().to_string();
        assert!(
            err.contains("lists 1 layers but its config has 0 diff_ids"),
            "{err}"
        );
    }
}
