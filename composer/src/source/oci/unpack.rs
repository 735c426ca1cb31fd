//! Applying image layers, bottom first, to a [`Tree`], the way overlayfs would stack them.
//!
//! Supported: plain, gzip, zstd (and xz) layer tars, detected by their magic bytes
//! ([`crate::io::decompress`]; the media type only decides whether a blob is a layer at all),
//! read by the one tar reader ([`crate::fs::tar`]) with OCI whiteouts on and device nodes
//! refused (extensions must not ship device nodes). Encrypted layers are refused. Contents are
//! streamed into a scratch directory, never held in memory.
//!
//! [`Tree`]: crate::fs::tree::Tree

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::image::LayerBlob;
use crate::fs::tar::{read_tar, TarError, TarOptions, TarTarget};
use crate::fs::tree::Tree;

/// Layers carry whiteouts; extensions and images built by strata never need device nodes.
const LAYER_OPTIONS: TarOptions = TarOptions {
    whiteouts: true,
    device_nodes: false,
};

/// Errors from applying layers. `layer` reads like `layer sha256:… (2 of 3)`.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the blob or writing extracted contents failed.
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
    /// The blob is not a filesystem layer (an artifact, a signature, an encrypted layer).
    #[error(
        "{layer} has media type {media_type:?}, which is not a filesystem layer strata can \
         apply; hint: use an image whose layers are (gzip/zstd) tar archives"
    )]
    NotALayer {
        /// The layer.
        layer: String,
        /// Its media type.
        media_type: String,
    },
    /// A layer's tar stream was refused or could not be read (see [`crate::fs::tar`]).
    #[error(transparent)]
    Layer(Box<TarError>),
}

/// A tree flattened from image layers, and the directory its file contents live in.
///
/// Keep `contents` alive as long as `tree`: its [`FileData::Host`] entries point into it.
#[derive(Debug)]
pub struct Unpacked {
    /// The flattened filesystem.
    pub tree: Tree,
    /// Extracted regular file contents.
    pub contents: TempDir,
}

/// Flattens `layers` (bottom first) into a new tree; contents go to a new temporary
/// directory below `scratch_parent` (pick one on the disk the build writes to).
pub fn unpack(layers: &[LayerBlob], scratch_parent: &Path) -> Result<Unpacked, UnpackError> {
    let contents = TempDir::with_prefix_in("strata-oci-", scratch_parent)
        .map_err(|e| io_err("create a temporary directory in", scratch_parent, e))?;
    let mut tree = Tree::new();
    apply_layers(&mut tree, layers, contents.path())?;
    Ok(Unpacked { tree, contents })
}

/// Applies `layers` in order onto `tree`, extracting file contents into `contents_dir`, which
/// must outlive the tree.
pub fn apply_layers(
    tree: &mut Tree,
    layers: &[LayerBlob],
    contents_dir: &Path,
) -> Result<(), UnpackError> {
    let mut files = 0u64;
    for (i, layer) in layers.iter().enumerate() {
        let label = format!("layer {} ({} of {})", layer.digest, i + 1, layers.len());
        check_media_type(layer, &label)?;
        let reader = open_layer(&layer.path, &label)?;
        let target = TarTarget {
            tree,
            contents_dir,
            files: &mut files,
        };
        read_tar(reader, target, &label, LAYER_OPTIONS)
            .map_err(|e| UnpackError::Layer(Box::new(e)))?;
    }
    Ok(())
}

/// Refuses blobs that are not layers; an empty media type (docker archives) is a layer.
fn check_media_type(layer: &LayerBlob, label: &str) -> Result<(), UnpackError> {
    let mt = &layer.media_type;
    let is_layer = mt.is_empty() || mt.contains(".image.layer.") || mt.contains(".image.rootfs.");
    if !is_layer || mt.contains("encrypted") {
        return Err(UnpackError::NotALayer {
            layer: label.to_string(),
            media_type: mt.clone(),
        });
    }
    Ok(())
}

/// Opens a layer blob with the decoder its magic bytes call for.
fn open_layer(path: &Path, label: &str) -> Result<Box<dyn Read>, UnpackError> {
    open_decompressed(path).map_err(|e| match e.kind() {
        io::ErrorKind::Other => tar_err(label, e),
        _ => io_err("open", path, e),
    })
}

/// Opens `path` through a gzip, zstd or xz decoder when its magic bytes say so.
pub(crate) fn open_decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    crate::io::decompress::open(path).map(|(_, reader)| reader)
}

fn tar_err(label: &str, source: io::Error) -> UnpackError {
    UnpackError::Layer(Box::new(TarError::Tar {
        origin: label.to_string(),
        entry: None,
        source,
    }))
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fs::tree::{Entry, EntryKind, FileData};
    use crate::source::oci::image::{Digest, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD};
    use std::fs;
    use std::io::Write;

    /// A raw tar entry for tests: name, type, link target, data, mode, uid/gid.
    pub(crate) struct E<'a>(
        pub &'a str,
        pub tar::EntryType,
        pub &'a str,
        pub &'a [u8],
        pub u32,
        pub (u64, u64),
    );

    pub(crate) fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
        E(name, tar::EntryType::Regular, "", data, 0o644, (0, 0))
    }

    pub(crate) fn directory(name: &str) -> E<'_> {
        E(name, tar::EntryType::Directory, "", b"", 0o755, (0, 0))
    }

    /// Builds a tar from raw headers (names are written verbatim, hostile ones included).
    pub(crate) fn tar_bytes(entries: &[E<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for E(name, kind, link, data, mode, (uid, gid)) in entries {
            let mut header = tar::Header::new_ustar();
            {
                let bytes = header.as_old_mut();
                bytes.name[..name.len()].copy_from_slice(name.as_bytes());
                bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_uid(*uid);
            header.set_gid(*gid);
            header.set_mtime(0);
            header.set_device_major(0).unwrap();
            header.set_device_minor(0).unwrap();
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn layer(dir: &Path, name: &str, bytes: &[u8], media_type: &str) -> LayerBlob {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        LayerBlob {
            path,
            media_type: media_type.to_string(),
            digest: Digest::of_bytes(bytes),
            size: bytes.len() as u64,
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    pub(crate) fn listing(tree: &Tree) -> Vec<String> {
        tree.iter()
            .map(|(p, e)| {
                let kind = match &e.kind {
                    EntryKind::Dir => "dir".to_string(),
                    EntryKind::File(FileData::Host(h)) => {
                        format!("file {:?}", String::from_utf8_lossy(&fs::read(h).unwrap()))
                    }
                    EntryKind::File(FileData::Bytes(b)) => {
                        format!("file {:?}", String::from_utf8_lossy(b))
                    }
                    EntryKind::Symlink(t) => format!("-> {}", t.display()),
                    EntryKind::Fifo => "fifo".into(),
                    other => format!("{other:?}"),
                };
                format!("{} {kind} {:o} {}:{}", p.display(), e.mode, e.uid, e.gid)
            })
            .collect()
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let lower = tar_bytes(&[
            directory("./"),
            directory("etc/"),
            file("etc/keep", b"keep"),
            file("etc/gone", b"gone"),
            directory("opt/"),
            directory("opt/old/"),
            file("opt/old/x", b"x"),
            file("opt/y", b"y"),
            E(
                "bin/su",
                tar::EntryType::Regular,
                "",
                b"su",
                0o4750,
                (0, 42),
            ),
            E("bin/link", tar::EntryType::Link, "bin/su", b"", 0, (0, 0)),
            E(
                "bin/sh",
                tar::EntryType::Symlink,
                "/bin/busybox",
                b"",
                0o777,
                (0, 0),
            ),
            directory("var/"),
            file("var/f", b"f"),
        ]);
        let upper = tar_bytes(&[
            file("opt/new", b"new"),
            file("etc/.wh.gone", b""),
            file("opt/.wh..wh..opq", b""),
            file(".wh.var", b""),
            file("etc/.wh..wh.plnk", b""),
            E(
                "etc/keep",
                tar::EntryType::Regular,
                "",
                b"KEEP",
                0o600,
                (7, 8),
            ),
            E("fifo", tar::EntryType::Fifo, "", b"", 0o600, (0, 0)),
        ]);
        let layers = [
            layer(
                dir.path(),
                "l1",
                &zstd::encode_all(&lower[..], 3).unwrap(),
                OCI_LAYER_ZSTD,
            ),
            layer(dir.path(), "l2", &gzip(&upper), OCI_LAYER_GZIP),
        ];
        let unpacked = unpack(&layers, dir.path()).unwrap();
        assert_eq!(
            listing(&unpacked.tree),
            [
                "/ dir 755 0:0",
                "/bin dir 755 0:0",
                "/bin/link file \"su\" 4750 0:42",
                "/bin/sh -> /bin/busybox 777 0:0",
                "/bin/su file \"su\" 4750 0:42",
                "/etc dir 755 0:0",
                "/etc/keep file \"KEEP\" 600 7:8",
                "/fifo fifo 600 0:0",
                "/opt dir 755 0:0",
                "/opt/new file \"new\" 644 0:0",
            ]
        );
        let contents = unpacked.contents.path().to_path_buf();
        assert!(fs::read_dir(&contents).unwrap().count() >= 7);
        drop(unpacked);
        assert!(!contents.exists());
    }

    #[test]
    fn hostile_entries_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = tar::EntryType::Regular;
        let sym = tar::EntryType::Symlink;
        let link = tar::EntryType::Link;
        let cases: Vec<(Vec<E<'_>>, &str)> = vec![
            (
                vec![file("../evil", b"x")],
                "entry \"../evil\" escapes the root",
            ),
            (
                vec![file("a/../../evil", b"x")],
                "entry \"a/../../evil\" escapes",
            ),
            (
                vec![file("/etc/passwd", b"x")],
                "entry \"/etc/passwd\" escapes",
            ),
            (
                vec![file("etc/.wh...", b"")],
                "entry \"etc/.wh...\" escapes",
            ),
            (
                vec![E("x", link, "../../etc/shadow", b"", 0, (0, 0))],
                "hard link \"x\" points to \"../../etc/shadow\", which escapes the root",
            ),
            (
                vec![E("x", link, "/etc/shadow", b"", 0, (0, 0))],
                "hard link \"x\" points to \"/etc/shadow\", which escapes the root",
            ),
            (
                vec![E("x", link, "missing", b"", 0, (0, 0))],
                "hard link \"x\" points to \"missing\", which is not an earlier entry",
            ),
            (
                vec![directory("d/"), E("x", link, "d", b"", 0, (0, 0))],
                "hard link \"x\" points to \"d\", which is a directory",
            ),
            (
                vec![
                    E("link", sym, "/etc", b"", 0o777, (0, 0)),
                    E("link/passwd", r, "", b"x", 0o644, (0, 0)),
                ],
                "entry \"link/passwd\" lies below symlink /link",
            ),
            (
                vec![
                    E("a", sym, ".", b"", 0o777, (0, 0)),
                    E("a/b", sym, "/", b"", 0o777, (0, 0)),
                ],
                "entry \"a/b\" lies below symlink /a",
            ),
            (
                vec![
                    file("f", b"f"),
                    E("l", sym, "/", b"", 0o777, (0, 0)),
                    E("l/x", link, "f", b"", 0, (0, 0)),
                ],
                "entry \"l/x\" lies below symlink /l",
            ),
            (
                vec![E("dev/null", tar::EntryType::Char, "", b"", 0o666, (0, 0))],
                "entry \"dev/null\" is a character device node",
            ),
            (
                vec![E("dev/sda", tar::EntryType::Block, "", b"", 0o660, (0, 0))],
                "entry \"dev/sda\" is a block device node",
            ),
            (
                vec![file("f", b"f"), file("f/g", b"g")],
                "cannot apply entry \"f/g\"",
            ),
        ];
        for (i, (entries, want)) in cases.into_iter().enumerate() {
            let blob = layer(
                dir.path(),
                &format!("{i}"),
                &tar_bytes(&entries),
                OCI_LAYER_TAR,
            );
            let err = unpack(std::slice::from_ref(&blob), dir.path())
                .unwrap_err()
                .to_string();
            let prefix = format!("layer {} (1 of 1): ", blob.digest);
            assert!(err.starts_with(&prefix), "{err}");
            assert!(err[prefix.len()..].starts_with(want), "case {i}: {err}");
        }
        // A lower layer's symlink guards later layers too.
        let lower = layer(
            dir.path(),
            "lower",
            &tar_bytes(&[E("etc", sym, "/host/etc", b"", 0o777, (0, 0))]),
            OCI_LAYER_TAR,
        );
        let upper = layer(dir.path(), "upper", &tar_bytes(&[file("etc/x", b"x")]), "");
        let err = unpack(&[lower, upper], dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("(2 of 2): entry \"etc/x\" lies below symlink /etc"),
            "{err}"
        );
        // Only the extraction scratch directory may be left: all were removed on error.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("strata-oci-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn non_layers_and_broken_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_bytes(&[file("f", b"f")]);
        let blob = layer(
            dir.path(),
            "sig",
            &bytes,
            "application/vnd.dev.cosign.simplesigning.v1+json",
        );
        let err = unpack(&[blob], dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a filesystem layer"), "{err}");
        let enc = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
        let blob = layer(dir.path(), "enc", &gzip(&bytes), enc);
        assert!(unpack(&[blob], dir.path()).is_err());
        let gz = gzip(&bytes);
        let blob = layer(dir.path(), "cut", &gz[..gz.len() / 2], OCI_LAYER_GZIP);
        let err = unpack(&[blob], dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read the tar stream"), "{err}");
    }

    #[test]
    fn large_files_are_streamed_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; 3 << 20];
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(big.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, "big", &big[..]).unwrap();
        let blob = layer(
            dir.path(),
            "big",
            &builder.into_inner().unwrap(),
            OCI_LAYER_TAR,
        );
        let unpacked = unpack(&[blob], dir.path()).unwrap();
        let Some(Entry {
            kind: EntryKind::File(FileData::Host(host)),
            ..
        }) = unpacked.tree.get("/big")
        else {
            panic!("/big is not a host file");
        };
        assert!(host.starts_with(unpacked.contents.path()));
        assert_eq!(fs::metadata(host).unwrap().len(), big.len() as u64);
    }
}
