//! OCI image-layout directories (`oci-layout`, `index.json`, `blobs/sha256/…`), read and written.
//!
//! Reading: an image is chosen in `index.json` by its `org.opencontainers.image.ref.name`
//! annotation, by digest, or as the only entry; it may be a manifest or a (nested) index, which
//! is resolved to the requested architecture. Every blob read is checked against its digest and
//! size. Spec: <https://github.com/opencontainers/image-spec/blob/main/image-layout.md>.
//!
//! Writing ([`write_image`]): one single-layer, single-architecture image from a [`Tree`] or an
//! uncompressed layer tar, added to the layout (an existing entry with the same tag is
//! replaced). The output is byte-for-byte reproducible: entries in tree order, fixed mtime
//! (`created`) in every tar header and in the config, no user or group names, gzip with mtime 0
//! and OS byte 255, compact JSON with a fixed field order, `index.json` sorted by tag.
//! [`write_index`] adds a multi-architecture index over images already in the layout.
//!
//! Not supported: writing sockets (tar cannot hold them), extended attributes, more than one
//! layer per written image, the `blobs/sha512` directory.
//!
//! [`Tree`]: crate::fs::tree::Tree

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::image::{
    self, check_blob, hash_file, io_err, read_limited, to_json, BlobSource, Descriptor, Digest,
    HashWriter, ImageConfig, ImageError, ImageIndex, ImageManifest, Platform, PulledImage, RootFs,
    MAX_MANIFEST_SIZE, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, REF_NAME_ANNOTATION,
};
use super::reference;
use crate::date::rfc3339;
use crate::fs::tree::{EntryKind, FileData, Tree};

/// The only image-layout version there is.
const LAYOUT_VERSION: &str = "1.0.0";

/// Errors from reading or writing an image layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The selector matches nothing, or no selector was given and there are several images.
    #[error(
        "{dir} has no image {wanted}; it has: {available}; hint: name one of them by tag or \
         digest"
    )]
    NoSuchImage {
        /// The layout directory.
        dir: PathBuf,
        /// What was asked for (`tag "v1"`, `digest sha256:…`, `single image`).
        wanted: String,
        /// The entries of `index.json`.
        available: String,
    },
    /// A host file changed size while it was being archived.
    #[error(
        "{path} changed while it was being archived; hint: do not modify inputs during a build"
    )]
    FileChanged {
        /// The host file.
        path: PathBuf,
    },
    /// A blob or document check failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A blob named by a descriptor is absent.
    #[error("blob {digest} is missing from image layout {dir}; hint: copy the layout again")]
    MissingBlob {
        /// The layout directory.
        dir: PathBuf,
        /// The missing blob.
        digest: Digest,
    },
    /// The directory lacks `oci-layout` or `index.json`, or they are malformed.
    #[error("{dir} is not an OCI image layout: {reason}; hint: give a directory written by `strata ext pack`, skopeo or buildah (oci: transport)")]
    NotALayout {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tag given for writing is not a valid tag.
    #[error("tag {tag:?} is not valid: {reason}")]
    BadTag {
        /// The tag.
        tag: String,
        /// Why.
        reason: &'static str,
    },
    /// The tree holds an object a tar archive cannot store.
    #[error("{path} in the tree is a socket, which a layer tar cannot hold; hint: remove it")]
    Socket {
        /// The path in the tree.
        path: PathBuf,
    },
    /// [`write_index`] was given a manifest that is not in the layout's `index.json`.
    #[error(
        "manifest {digest} is not listed in {dir}/index.json; hint: write it with write_image first"
    )]
    UnknownManifest {
        /// The layout directory.
        dir: PathBuf,
        /// The manifest digest.
        digest: Digest,
    },
}

/// An opened image-layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
    index: ImageIndex,
}

impl Layout {
    /// Opens `dir`, checking `oci-layout` and parsing `index.json`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LayoutError> {
        let dir = dir.as_ref().to_path_buf();
        let not = |reason: String| LayoutError::NotALayout {
            dir: dir.clone(),
            reason,
        };
        let marker = dir.join("oci-layout");
        let bytes = fs::read(&marker).map_err(|e| not(format!("cannot read oci-layout: {e}")))?;
        let version: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| not(format!("oci-layout is not JSON: {e}")))?;
        if version["imageLayoutVersion"] != LAYOUT_VERSION {
            return Err(not(format!(
                "oci-layout has imageLayoutVersion {}, expected \"{LAYOUT_VERSION}\"",
                version["imageLayoutVersion"]
            )));
        }
        let index_path = dir.join("index.json");
        let bytes = read_limited(&index_path, MAX_MANIFEST_SIZE, "index.json")
            .map_err(|e| not(e.to_string()))?;
        let index = image::parse_json(&bytes, &format!("{}", index_path.display()))?;
        Ok(Self { dir, index })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entries of `index.json`.
    pub fn entries(&self) -> &[Descriptor] {
        &self.index.manifests
    }

    /// Where blob `digest` is (or would be).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// The `index.json` entry named by `selector`: a `ref.name` tag, a digest, or (`None`) the
    /// only entry.
    pub fn select(&self, selector: Option<&str>) -> Result<&Descriptor, LayoutError> {
        let entries = &self.index.manifests;
        let found = match selector {
            None if entries.len() == 1 => entries.first(),
            None => None,
            Some(sel) if sel.starts_with("sha256:") => {
                let digest = Digest::parse(sel)?;
                entries.iter().find(|d| d.digest == digest)
            }
            Some(sel) => entries.iter().find(|d| ref_name(d) == Some(sel)),
        };
        found.ok_or_else(|| LayoutError::NoSuchImage {
            dir: self.dir.clone(),
            wanted: match selector {
                None => "to pick without a tag (there is not exactly one)".to_string(),
                Some(sel) => format!("{sel:?}"),
            },
            available: self.describe_entries(),
        })
    }

    fn describe_entries(&self) -> String {
        if self.index.manifests.is_empty() {
            return "no images".to_string();
        }
        self.index
            .manifests
            .iter()
            .map(|d| match ref_name(d) {
                Some(name) => format!("{name:?} ({})", d.digest),
                None => d.digest.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The verified bytes of manifest or index `desc`.
    pub fn read_document(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, LayoutError> {
        let path = self.existing_blob(&desc.digest)?;
        if desc.size > MAX_MANIFEST_SIZE {
            return Err(ImageError::TooLarge {
                what: what.to_string(),
                size: desc.size,
                limit: MAX_MANIFEST_SIZE,
            }
            .into());
        }
        let bytes = read_limited(&path, MAX_MANIFEST_SIZE, what)?;
        check_blob(desc, &Digest::of_bytes(&bytes), bytes.len() as u64, what)?;
        Ok(bytes)
    }

    /// The path of blob `desc` after checking its digest and size (the file is read once).
    pub fn verified_blob(&self, desc: &Descriptor, what: &str) -> Result<PathBuf, LayoutError> {
        let path = self.existing_blob(&desc.digest)?;
        let (digest, size) = hash_file(&path)?;
        check_blob(desc, &digest, size, what)?;
        Ok(path)
    }

    fn existing_blob(&self, digest: &Digest) -> Result<PathBuf, LayoutError> {
        let path = self.blob_path(digest);
        if path.is_file() {
            Ok(path)
        } else {
            Err(LayoutError::MissingBlob {
                dir: self.dir.clone(),
                digest: digest.clone(),
            })
        }
    }

    /// Resolves the image chosen by `selector` (see [`Self::select`]) for `arch`.
    pub fn read_image(
        &self,
        selector: Option<&str>,
        arch: &str,
    ) -> Result<PulledImage, LayoutError> {
        let top = self.select(selector)?.clone();
        let name = match ref_name(&top) {
            Some(tag) => format!("{}:{tag}", self.dir.display()),
            None => format!("{}@{}", self.dir.display(), top.digest),
        };
        image::resolve(&mut LayoutSource(self), &name, &top, arch)
    }
}

/// [`BlobSource`] over a layout: blobs are verified in place, never copied.
struct LayoutSource<'a>(&'a Layout);

impl BlobSource for LayoutSource<'_> {
    type Error = LayoutError;
    fn manifest(&mut self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, LayoutError> {
        self.0.read_document(desc, what)
    }
    fn blob(&mut self, desc: &Descriptor, what: &str) -> Result<PathBuf, LayoutError> {
        self.0.verified_blob(desc, what)
    }
}

/// Reads the image chosen by `selector` from layout `dir`, resolved for `arch`.
pub fn read_image(
    dir: impl AsRef<Path>,
    selector: Option<&str>,
    arch: &str,
) -> Result<PulledImage, LayoutError> {
    Layout::open(dir)?.read_image(selector, arch)
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations
        .get(REF_NAME_ANNOTATION)
        .map(String::as_str)
}

/// What the single layer of a written image is made from.
#[derive(Debug, Clone, Copy)]
pub enum LayerSource<'a> {
    /// A tree, archived in its (sorted) order; the root entry itself is not archived.
    Tree(&'a Tree),
    /// An existing layer tar, plain or gzip/zstd/xz-compressed; stored recompressed with gzip.
    Tar(&'a Path),
}

/// Writes a single-layer image for `arch` into layout `dir` (created if needed) under `tag`,
/// replacing an entry with the same tag; `created` (seconds since the epoch) is the mtime of
/// every archived entry and the config's `created`. Returns the manifest digest.
pub fn write_image(
    dir: impl AsRef<Path>,
    layer: LayerSource<'_>,
    arch: &str,
    tag: &str,
    created: u64,
) -> Result<Digest, LayoutError> {
    let dir = dir.as_ref();
    check_tag(tag)?;
    let platform = Platform::linux(arch)?;
    let mut index = open_or_create(dir)?;
    let (layer_desc, diff_id) = write_layer(dir, layer, created)?;
    let config = ImageConfig {
        architecture: platform.architecture.clone(),
        created: Some(rfc3339(created)),
        os: platform.os.clone(),
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![diff_id],
        },
        variant: None,
    };
    let config_desc = write_blob(dir, OCI_CONFIG, &to_json(&config))?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.to_string(),
        config: config_desc,
        layers: vec![layer_desc],
        annotations: BTreeMap::new(),
    };
    let mut desc = write_blob(dir, OCI_MANIFEST, &to_json(&manifest))?;
    desc.platform = Some(platform);
    let digest = desc.digest.clone();
    add_entry(dir, &mut index, desc, tag)?;
    Ok(digest)
}

/// Adds to layout `dir` an image index over `manifests` (each already listed in `index.json`
/// with its platform, e.g. by [`write_image`]) under `tag`. Returns the index digest.
pub fn write_index(
    dir: impl AsRef<Path>,
    tag: &str,
    manifests: &[Digest],
) -> Result<Digest, LayoutError> {
    let dir = dir.as_ref();
    check_tag(tag)?;
    let mut index = Layout::open(dir)?.index;
    let mut children = Vec::with_capacity(manifests.len());
    for digest in manifests {
        let found = index
            .manifests
            .iter()
            .find(|d| d.digest == *digest)
            .ok_or_else(|| LayoutError::UnknownManifest {
                dir: dir.to_path_buf(),
                digest: digest.clone(),
            })?;
        children.push(Descriptor {
            annotations: BTreeMap::new(),
            ..found.clone()
        });
    }
    let nested = ImageIndex {
        schema_version: 2,
        media_type: OCI_INDEX.to_string(),
        manifests: children,
        annotations: BTreeMap::new(),
    };
    let desc = write_blob(dir, OCI_INDEX, &to_json(&nested))?;
    let digest = desc.digest.clone();
    add_entry(dir, &mut index, desc, tag)?;
    Ok(digest)
}

fn check_tag(tag: &str) -> Result<(), LayoutError> {
    reference::check_tag(tag).map_err(|reason| LayoutError::BadTag {
        tag: tag.to_string(),
        reason,
    })
}

/// The layout's index, or a new empty one after creating `oci-layout` and `blobs/sha256`.
fn open_or_create(dir: &Path) -> Result<ImageIndex, LayoutError> {
    if dir.join("oci-layout").exists() {
        return Ok(Layout::open(dir)?.index);
    }
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| io_err("create directory", &blobs, e))?;
    let marker = format!(r#"{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}"#);
    write_atomic(&dir.join("oci-layout"), marker.as_bytes())?;
    Ok(ImageIndex {
        schema_version: 2,
        media_type: OCI_INDEX.to_string(),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    })
}

/// Puts `desc` into `index.json` under `tag` (replacing that tag), sorted by tag then digest.
fn add_entry(
    dir: &Path,
    index: &mut ImageIndex,
    mut desc: Descriptor,
    tag: &str,
) -> Result<(), LayoutError> {
    desc.annotations
        .insert(REF_NAME_ANNOTATION.to_string(), tag.to_string());
    index.manifests.retain(|d| ref_name(d) != Some(tag));
    index.manifests.push(desc);
    index
        .manifests
        .sort_by(|a, b| (ref_name(a), &a.digest).cmp(&(ref_name(b), &b.digest)));
    write_atomic(&dir.join("index.json"), &to_json(index))
}

/// Stores `bytes` as a blob; returns its descriptor.
fn write_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Result<Descriptor, LayoutError> {
    let desc = Descriptor::new(media_type, Digest::of_bytes(bytes), bytes.len() as u64);
    write_atomic(&dir.join("blobs/sha256").join(desc.digest.hex()), bytes)?;
    Ok(desc)
}

/// Writes a file through a temporary file and a rename, so readers never see half of it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = crate::io::perm::temp_file_in(parent, ".tmp-", "")
        .map_err(|e| io_err("create a temporary file in", parent, e))?;
    tmp.write_all(bytes)
        .map_err(|e| io_err("write", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| io_err("rename a temporary file to", path, e.error))?;
    Ok(())
}

/// Archives the layer, gzips it and stores it as a blob; returns its descriptor and diff id.
fn write_layer(
    dir: &Path,
    layer: LayerSource<'_>,
    created: u64,
) -> Result<(Descriptor, Digest), LayoutError> {
    let blobs = dir.join("blobs/sha256");
    let tmp = crate::io::perm::temp_file_in(&blobs, ".layer-", "")
        .map_err(|e| io_err("create a temporary file in", &blobs, e))?;
    let tmp_path = tmp.path().to_path_buf();
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            HashWriter::new(BufWriter::with_capacity(1 << 20, tmp)),
            flate2::Compression::default(),
        );
    let mut tar_out = HashWriter::new(gz);
    match layer {
        LayerSource::Tree(tree) => write_tree_tar(tree, &mut tar_out, created)?,
        LayerSource::Tar(path) => copy_tar(path, &mut tar_out)?,
    }
    let diff_id = tar_out.digest();
    let werr = |e| io_err("write", &tmp_path, e);
    let compressed = tar_out.into_inner().finish().map_err(werr)?;
    let (digest, size) = (compressed.digest(), compressed.written());
    let tmp = compressed
        .into_inner()
        .into_inner()
        .map_err(|e| werr(e.into_error()))?;
    let dest = blobs.join(digest.hex());
    tmp.persist(&dest)
        .map_err(|e| io_err("rename a temporary file to", &dest, e.error))?;
    Ok((Descriptor::new(OCI_LAYER_GZIP, digest, size), diff_id))
}

/// Copies a layer tar (decompressing it if needed) unchanged into `out`.
fn copy_tar(path: &Path, out: &mut impl Write) -> Result<(), LayoutError> {
    let mut reader = super::unpack::open_decompressed(path).map_err(|e| io_err("read", path, e))?;
    io::copy(&mut reader, out).map_err(|e| io_err("read", path, e))?;
    Ok(())
}

/// Writes `tree` (without its root entry) as a tar stream with fixed metadata.
pub fn write_tree_tar(tree: &Tree, out: &mut impl Write, mtime: u64) -> Result<(), LayoutError> {
    let mut builder = tar::Builder::new(out);
    for (path, entry) in tree.iter().skip(1) {
        let name = path.strip_prefix("/").unwrap_or(path);
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(u64::from(entry.uid));
        header.set_gid(u64::from(entry.gid));
        header.set_mtime(mtime);
        header.set_size(0);
        let werr = |e| io_err("archive", path, e);
        match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                builder
                    .append_data(&mut header, name, io::empty())
                    .map_err(werr)?;
            }
            EntryKind::File(data) => append_file(&mut builder, &mut header, name, data)?,
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder
                    .append_link(&mut header, name, target)
                    .map_err(werr)?;
            }
            EntryKind::CharDev { major, minor } | EntryKind::BlockDev { major, minor } => {
                let kind = if matches!(entry.kind, EntryKind::CharDev { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                header.set_entry_type(kind);
                header.set_device_major(*major).map_err(werr)?;
                header.set_device_minor(*minor).map_err(werr)?;
                builder
                    .append_data(&mut header, name, io::empty())
                    .map_err(werr)?;
            }
            EntryKind::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                builder
                    .append_data(&mut header, name, io::empty())
                    .map_err(werr)?;
            }
            EntryKind::Socket => {
                return Err(LayoutError::Socket {
                    path: path.to_path_buf(),
                })
            }
        }
    }
    builder
        .into_inner()
        .map_err(|e| io_err("finish the tar stream of", Path::new("/"), e))?;
    Ok(())
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    name: &Path,
    data: &FileData,
) -> Result<(), LayoutError> {
    header.set_entry_type(tar::EntryType::Regular);
    match data {
        FileData::Bytes(bytes) => {
            header.set_size(bytes.len() as u64);
            builder
                .append_data(header, name, &bytes[..])
                .map_err(|e| io_err("archive", name, e))
                .map_err(LayoutError::from)
        }
        FileData::Host(host) => {
            let file = File::open(host).map_err(|e| io_err("open", host, e))?;
            let size = file.metadata().map_err(|e| io_err("stat", host, e))?.len();
            header.set_size(size);
            let mut exact = ExactReader {
                inner: file.take(size),
                left: size,
            };
            builder
                .append_data(header, name, &mut exact)
                .map_err(|e| io_err("read", host, e))?;
            if exact.left != 0 {
                return Err(LayoutError::FileChanged { path: host.clone() });
            }
            Ok(())
        }
    }
}

/// Counts down the bytes still expected, so a file that shrank while being read is noticed
/// (the tar header already announced its old size).
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fs::tree::Entry;
    use crate::source::oci::unpack::{tests::listing, unpack};
    use std::process::Command;

    /// A small tree with every kind a layer can carry, including a host file and long names.
    pub(crate) fn sample_tree(host_dir: &Path, marker: &str) -> Tree {
        let host = host_dir.join(format!("host-{marker}"));
        fs::write(&host, format!("host file {marker}")).unwrap();
        let mut tree = Tree::new();
        tree.insert(
            "/manifest.yaml",
            Entry::bytes_file(format!("name: {marker}\n"), 0o644),
        )
        .unwrap();
        tree.insert(
            "/rootfs/usr/bin/tool",
            Entry::host_file(&host, 0o4755).owned_by(0, 3_000_000),
        )
        .unwrap();
        tree.insert("/rootfs/usr/lib/libx.so", Entry::symlink("libx.so.1"))
            .unwrap();
        let long = format!("/rootfs/{}/{}", "d".repeat(100), "f".repeat(100));
        tree.insert(long, Entry::bytes_file("long", 0o600)).unwrap();
        tree.insert(
            "/rootfs/run/fifo",
            Entry {
                kind: EntryKind::Fifo,
                mode: 0o600,
                uid: 1,
                gid: 2,
            },
        )
        .unwrap();
        tree.insert("/rootfs/empty", Entry::dir(0o700)).unwrap();
        tree
    }

    fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    pending.push(p);
                } else {
                    out.insert(
                        p.strip_prefix(dir).unwrap().to_path_buf(),
                        fs::read(&p).unwrap(),
                    );
                }
            }
        }
        out
    }

    #[test]
    fn written_images_read_back_and_are_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = sample_tree(tmp.path(), "a");
        let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
        let d1 = write_image(&one, LayerSource::Tree(&tree), "amd64", "v1", 1_700_000_000).unwrap();
        let d2 = write_image(&two, LayerSource::Tree(&tree), "amd64", "v1", 1_700_000_000).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(
            files(&one),
            files(&two),
            "identical bytes for identical input"
        );
        let d3 = write_image(&two, LayerSource::Tree(&tree), "amd64", "v1", 1_700_000_001).unwrap();
        assert_ne!(d1, d3, "the mtime is part of the image");

        let image = read_image(&one, Some("v1"), "amd64").unwrap();
        assert_eq!(image.digest, d1);
        assert_eq!(image.platform.to_string(), "linux/amd64");
        assert_eq!(
            image.config.created.as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(image.layers.len(), 1);
        let back = unpack(&image.layers, tmp.path()).unwrap();
        let mut want = listing(&tree);
        // The root entry is not archived; unpacking gives the default root.
        want[0] = "/ dir 755 0:0".to_string();
        assert_eq!(listing(&back.tree), want);
        // The tar stream's digest is the config's diff id.
        let decoded = crate::source::oci::unpack::open_decompressed(&image.layers[0].path).unwrap();
        let (diff, _) = image::hash_reader(&mut { decoded }).unwrap();
        assert_eq!(image.config.rootfs.diff_ids, vec![diff]);
        let err = read_image(&one, Some("v1"), "arm64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is for linux/amd64, but linux/arm64 was asked for"),
            "{err}"
        );
    }

    #[test]
    fn selection_by_tag_digest_sole_entry_and_nested_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let amd = write_image(
            &dir,
            LayerSource::Tree(&sample_tree(tmp.path(), "amd")),
            "amd64",
            "x-amd64",
            0,
        )
        .unwrap();
        assert_eq!(read_image(&dir, None, "amd64").unwrap().digest, amd);
        let arm = write_image(
            &dir,
            LayerSource::Tree(&sample_tree(tmp.path(), "arm")),
            "arm64",
            "x-arm64",
            0,
        )
        .unwrap();
        let err = read_image(&dir, None, "amd64").unwrap_err().to_string();
        assert!(err.contains("\"x-amd64\" ("), "{err}");
        assert!(err.contains("hint: name one of them"), "{err}");
        let multi = write_index(&dir, "x", &[amd.clone(), arm.clone()]).unwrap();
        assert_eq!(read_image(&dir, Some("x"), "amd64").unwrap().digest, amd);
        assert_eq!(read_image(&dir, Some("x"), "arm64").unwrap().digest, arm);
        assert_eq!(
            read_image(&dir, Some(&arm.to_string()), "arm64")
                .unwrap()
                .digest,
            arm
        );
        let layout = Layout::open(&dir).unwrap();
        assert_eq!(
            layout.select(Some(&multi.to_string())).unwrap().digest,
            multi
        );
        let err = read_image(&dir, Some("nope"), "amd64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no image \"nope\""), "{err}");
        let only_amd = write_index(&dir, "y", std::slice::from_ref(&amd)).unwrap();
        let err = read_image(&dir, Some("y"), "arm64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has no manifest for linux/arm64; it has: linux/amd64"),
            "{err}"
        );
        // Re-tagging replaces the entry.
        write_index(&dir, "y", std::slice::from_ref(&arm)).unwrap();
        let layout = Layout::open(&dir).unwrap();
        assert_ne!(layout.select(Some("y")).unwrap().digest, only_amd);
        assert_eq!(layout.entries().len(), 4);
        let err = write_index(&dir, "z", &[Digest::of_bytes(b"none")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not listed in"), "{err}");
    }

    #[test]
    fn corrupt_or_missing_blobs_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        write_image(
            &dir,
            LayerSource::Tree(&sample_tree(tmp.path(), "c")),
            "arm64",
            "t",
            0,
        )
        .unwrap();
        let image = read_image(&dir, Some("t"), "arm64").unwrap();
        let layer = image.layers[0].path.clone();
        let mut bytes = fs::read(&layer).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let actual = Digest::of_bytes(&bytes);
        fs::write(&layer, &bytes).unwrap();
        let err = read_image(&dir, Some("t"), "arm64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "is corrupt: expected digest {}, got {actual}",
                image.layers[0].digest
            )),
            "{err}"
        );
        fs::remove_file(&layer).unwrap();
        let err = read_image(&dir, Some("t"), "arm64")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("blob {} is missing", image.layers[0].digest)),
            "{err}"
        );
        let err = read_image(tmp.path(), None, "arm64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not an OCI image layout: cannot read oci-layout"),
            "{err}"
        );
        let err = write_image(&dir, LayerSource::Tree(&Tree::new()), "amd64", "-bad", 0)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tag \"-bad\" is not valid"), "{err}");
    }

    #[test]
    fn layer_tars_are_taken_as_given() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = crate::source::oci::unpack::tests::tar_bytes(&[
            crate::source::oci::unpack::tests::file("manifest.yaml", b"name: t\n"),
        ]);
        let tar = tmp.path().join("layer.tar.zst");
        fs::write(&tar, zstd::encode_all(&plain[..], 3).unwrap()).unwrap();
        let dir = tmp.path().join("layout");
        write_image(&dir, LayerSource::Tar(&tar), "amd64", "t", 0).unwrap();
        let image = read_image(&dir, None, "amd64").unwrap();
        assert_eq!(image.config.rootfs.diff_ids, vec![Digest::of_bytes(&plain)]);
        let back = unpack(&image.layers, tmp.path()).unwrap();
        assert_eq!(
            listing(&back.tree)[1],
            "/manifest.yaml file \"name: t\\n\" 644 0:0"
        );
    }

    #[test]
    fn skopeo_accepts_written_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let digest = write_image(
            &dir,
            LayerSource::Tree(&sample_tree(tmp.path(), "s")),
            "arm64",
            "v2",
            0,
        )
        .unwrap();
        if !crate::test_support::require_tool("skopeo") {
            return;
        }
        let out = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:v2", dir.display()))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(Digest::of_bytes(&out.stdout), digest);
        // A full copy makes skopeo read and verify every blob.
        let copy = tmp.path().join("copy");
        let status = Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v2", dir.display()))
            .arg(format!("oci:{}:v2", copy.display()))
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let inspect = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v2", copy.display()))
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(json["Architecture"], "arm64");
        assert_eq!(json["Os"], "linux");
    }
}
