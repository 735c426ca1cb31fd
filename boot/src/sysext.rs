//! systemd-sysext and systemd-confext merging, done by the init on the
//! merged root before the switch, the way `systemd-sysext merge` would.
//!
//! Images: `/sysext/<name>.raw` (system extensions) and
//! `/confext/<name>.raw` (configuration extensions) in the initramfs, each
//! a bare squashfs (`hsqs` at offset 0) or erofs (magic `0xE0F5E1E2` at
//! offset 1024) file system; other files in those directories are ignored.
//! The image name is the file name without `.raw`; images are taken in
//! `strverscmp_improved` order of their names, the last on top.
//!
//! Per image: attach it read-only to a loop device, mount it on
//! `/strata/sysext/<name>` (`/strata/confext/<name>`), and check its
//! release file against the root's os-release by systemd's rules (see
//! `extrelease`). A rejected image is unmounted again.
//!
//! Then per hierarchy (`usr`, `opt` for sysext; `etc` for confext) that at
//! least one accepted image provides as a non-empty directory: the root's
//! own directory is bound to `/strata/base/<hierarchy>` and an overlay is
//! mounted over `<root>/<hierarchy>`, read-only and `nodev`, with
//! `lowerdir=<image N>/<h>:...:<image 0>/<h>:/strata/base/<h>`. A
//! hierarchy the root lacks cannot be created in the read-only root, so it
//! is not merged (the images' reports say so).
//!
//! Differences from systemd, on purpose: no `.systemd-sysext` metadata
//! layer (so `systemd-sysext` in the booted system neither lists nor
//! unmerges these mounts), the root's hierarchy is stacked even when empty,
//! the os-release is read once before any merge, and everything is merged
//! for the booted system's scope (`system`), never for the initrd.
//! Not supported: directory images, GPT disk images (DDIs), verity and
//! signatures, `--force`, `SYSTEMD_SYSEXT_HIERARCHIES`, reloading services.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::checks::{self, Upper, Visibility};
use crate::extrelease::{self, Class, Rejection};
use crate::mountinfo::MountEntry;
use crate::osrelease::{self, Release};
use crate::overlay::{self, Layout};
use crate::sys::error_chain;
use crate::{mounts, rootpath};
use strata_proto::strverscmp::strverscmp_improved;

/// The squashfs superblock magic, `hsqs`, at offset 0.
const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";
/// The erofs superblock magic, little-endian at offset 1024.
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EROFS_MAGIC_OFFSET: usize = 1024;

/// Something about one image or hierarchy went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image directory cannot be listed.
    #[error("cannot list {dir}")]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// Mounting the image or the overlay failed.
    #[error(transparent)]
    Mount(#[from] overlay::Error),
    /// A bind or detach failed.
    #[error(transparent)]
    Mounts(#[from] mounts::Error),
    /// The image cannot be read.
    #[error("cannot read {file}")]
    ReadImage {
        /// The image file.
        file: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// systemd would not merge the image.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The image is neither squashfs nor erofs.
    #[error("{file} is neither a squashfs (\"hsqs\" at offset 0) nor an erofs image (magic 0xe0f5e1e2 at offset 1024); GPT disk images are not supported, write a bare file system")]
    UnknownFormat {
        /// The image file.
        file: PathBuf,
    },
    /// The name cannot be put in `lowerdir=`.
    #[error("image name {name:?} contains ':', ',' or '\\', which overlayfs cannot stack; rename the .raw file")]
    UnsafeName {
        /// The image name.
        name: String,
    },
}

/// Where the images of `class` are in the initramfs.
pub fn images_dir(class: Class) -> &'static Path {
    Path::new(strata_proto::initramfs::images_dir(class))
}

/// One image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// sysext or confext.
    pub class: Class,
    /// The image name: the file name without `.raw`.
    pub name: String,
    /// The file.
    pub file: PathBuf,
}

impl Image {
    /// The file name, e.g. `tools.raw`.
    pub fn file_name(&self) -> String {
        format!("{}.raw", self.name)
    }
}

/// Lists the `*.raw` files (or symlinks to files) of `dir`, in merge order
/// (lowest first); a missing directory has none.
pub fn discover(dir: &Path, class: Class) -> Result<Vec<Image>, Error> {
    let list_fail = |source| Error::List {
        dir: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(list_fail(source)),
    };
    let mut images = Vec::new();
    for entry in entries {
        let entry = entry.map_err(list_fail)?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name.strip_suffix(".raw").filter(|n| !n.is_empty()) else {
            continue;
        };
        if entry.path().is_file() {
            images.push(Image {
                class,
                name: name.to_string(),
                file: entry.path(),
            });
        }
    }
    images.sort_by(|a, b| strverscmp_improved(&a.name, &b.name).then_with(|| a.name.cmp(&b.name)));
    Ok(images)
}

/// A file system an image may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    /// squashfs.
    Squashfs,
    /// erofs.
    Erofs,
}

impl FsType {
    /// The kernel's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
        }
    }
}

/// Recognises a file system from the first 1028 bytes of an image.
pub fn detect_bytes(head: &[u8]) -> Option<FsType> {
    if head.starts_with(SQUASHFS_MAGIC) {
        return Some(FsType::Squashfs);
    }
    let magic = head.get(EROFS_MAGIC_OFFSET..EROFS_MAGIC_OFFSET + 4)?;
    (magic == EROFS_MAGIC.to_le_bytes()).then_some(FsType::Erofs)
}

/// Reads the start of `file` and recognises its file system.
pub fn detect(file: &Path) -> Result<FsType, Error> {
    let read_fail = |source| Error::ReadImage {
        file: file.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(EROFS_MAGIC_OFFSET + 4);
    File::open(file)
        .map_err(read_fail)?
        .take((EROFS_MAGIC_OFFSET + 4) as u64)
        .read_to_end(&mut head)
        .map_err(read_fail)?;
    detect_bytes(&head).ok_or_else(|| Error::UnknownFormat {
        file: file.to_path_buf(),
    })
}

/// The root's os-release, read once for every image.
#[derive(Debug)]
pub struct Host {
    /// The file it came from (host path).
    pub path: PathBuf,
    /// Its contents.
    pub release: Release,
}

/// Reads the merged root's os-release and checks it has an ID.
pub fn read_host(merged: &Path) -> Result<Host, Rejection> {
    let (path, release) = osrelease::read_root(merged).map_err(Rejection::HostRelease)?;
    extrelease::check_host(&release, &path)?;
    Ok(Host { path, release })
}

/// One hierarchy an image was merged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// `usr`, `opt` or `etc`.
    pub hierarchy: &'static str,
    /// The image's directory for it: the `lowerdir=` entry.
    pub dir: PathBuf,
    /// The overlay's mount point in the merged root.
    pub target: PathBuf,
}

/// What happened to one image.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The image.
    pub image: Image,
    /// Its mount point, while it is accepted.
    pub mount: Option<PathBuf>,
    /// The version the report shows.
    pub version: String,
    /// Why it was not merged (rejected, unreadable, unmountable).
    pub failure: Option<String>,
    /// The hierarchies it was merged into.
    pub merged: Vec<Merged>,
    /// Remarks for the report (a hierarchy left out, and why).
    pub notes: Vec<String>,
}

/// Mounts and checks one image; a rejected image is unmounted again.
pub fn prepare(
    image: &Image,
    layout: &Layout,
    host: Result<&Host, &Rejection>,
    machine: &str,
) -> Prepared {
    let mut prepared = Prepared {
        image: image.clone(),
        mount: None,
        version: String::new(),
        failure: None,
        merged: Vec::new(),
        notes: Vec::new(),
    };
    let host = match host {
        Ok(host) => host,
        Err(rejection) => {
            prepared.failure = Some(error_chain(rejection));
            return prepared;
        }
    };
    let target = layout.extension_image(image.class.as_str(), &image.name);
    match mount_and_validate(image, &target, host, machine) {
        Ok(version) => {
            prepared.mount = Some(target);
            prepared.version = version;
        }
        Err((mounted, err)) => {
            let mut failure = error_chain(&err);
            if mounted {
                if let Err(detach) = mounts::detach(&target) {
                    failure = format!("{failure}; {}", error_chain(&detach));
                }
            }
            prepared.failure = Some(failure);
        }
    }
    prepared
}

/// Returns the version to show, or the error and whether the image is mounted.
fn mount_and_validate(
    image: &Image,
    target: &Path,
    host: &Host,
    machine: &str,
) -> Result<String, (bool, Error)> {
    if !extrelease::is_valid_image_name(&image.name) {
        let name = image.name.clone();
        return Err((false, Rejection::InvalidName { name }.into()));
    }
    if image.name.contains([':', ',', '\\']) {
        let name = image.name.clone();
        return Err((false, Error::UnsafeName { name }));
    }
    let fstype = detect(&image.file).map_err(|err| (false, err))?;
    overlay::mount_image(&image.file, target, fstype.as_str())
        .map_err(|err| (false, err.into()))?;
    validate_mounted(image, target, host, machine).map_err(|err| (true, err.into()))
}

fn validate_mounted(
    image: &Image,
    root: &Path,
    host: &Host,
    machine: &str,
) -> Result<String, Rejection> {
    extrelease::check_content(root, image.class)?;
    let path = extrelease::find_release_file(root, image.class, &image.name)?;
    let release = osrelease::read(&path).map_err(Rejection::Release)?;
    extrelease::validate(
        image.class,
        (&host.release, &host.path),
        &release,
        &path,
        machine,
    )?;
    Ok(extrelease::shown_version(image.class, &release))
}

/// Merges the accepted images of one class (all of `prepared` must be of
/// `class`, in merge order) onto the root at `merged`. Returns the errors
/// to report; the images' notes say which hierarchies were left out.
/// `top`, the profile's files, goes above the images on every hierarchy
/// where it has files: the profile's configuration wins over extensions.
pub fn merge(
    class: Class,
    prepared: &mut [Prepared],
    layout: &Layout,
    merged: &Path,
    top: Option<&Path>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for &hierarchy in class.hierarchies() {
        let providers = providers(prepared, hierarchy);
        if providers.is_empty() {
            continue;
        }
        let base = match rootpath::resolve(merged, Path::new(hierarchy)) {
            Ok(base) if base.is_dir() => base,
            _ => {
                let note = format!(
                    "/{hierarchy} not merged: the root has no /{hierarchy} directory (strata does not add hierarchies to the root)"
                );
                for (at, _) in &providers {
                    prepared[*at].notes.push(note.clone());
                }
                continue;
            }
        };
        let mut dirs: Vec<PathBuf> = providers.iter().map(|(_, dir)| dir.clone()).collect();
        dirs.extend(top.and_then(|top| non_empty_dir(top, hierarchy)));
        match mount_hierarchy(class, hierarchy, &dirs, &base, layout) {
            Ok(()) => {
                for (at, dir) in providers {
                    prepared[at].merged.push(Merged {
                        hierarchy,
                        dir,
                        target: base.clone(),
                    });
                }
            }
            Err(err) => {
                errors.push(format!("cannot merge /{hierarchy}: {}", error_chain(&err)));
                for (at, _) in &providers {
                    prepared[*at].notes.push(format!(
                        "/{hierarchy} not merged (see the {} error)",
                        class.as_str()
                    ));
                }
            }
        }
    }
    errors
}

/// `hierarchy` inside `mount`, when it is a directory with something in it.
fn non_empty_dir(mount: &Path, hierarchy: &str) -> Option<PathBuf> {
    let dir = rootpath::resolve(mount, Path::new(hierarchy)).ok()?;
    let mut entries = std::fs::read_dir(&dir).ok()?;
    entries.next().is_some().then_some(dir)
}

/// The accepted images with a non-empty `hierarchy` directory: (position, directory).
fn providers(prepared: &[Prepared], hierarchy: &str) -> Vec<(usize, PathBuf)> {
    prepared
        .iter()
        .enumerate()
        .filter_map(|(at, p)| {
            let mount = p.mount.as_ref()?;
            Some((at, non_empty_dir(mount, hierarchy)?))
        })
        .collect()
}

fn mount_hierarchy(
    class: Class,
    hierarchy: &str,
    dirs: &[PathBuf],
    base: &Path,
    layout: &Layout,
) -> Result<(), Error> {
    let bound = layout.hierarchy_base(hierarchy);
    mounts::create_dir(&bound)?;
    mounts::bind_read_only(base, &bound)?;
    let options = format!("lowerdir={}", overlay::lowerdir(dirs, &bound)?);
    mounts::mount(
        class.as_str(),
        base,
        "overlay",
        libc::MS_RDONLY | libc::MS_NODEV,
        Some(&options),
    )?;
    Ok(())
}

/// The merged images as upper layers of the root, for the probes of the
/// Talos layers below them.
pub fn uppers(prepared: &[Prepared], merged: &Path) -> Vec<Upper> {
    prepared
        .iter()
        .flat_map(|p| &p.merged)
        .filter_map(|m| {
            let at = m.target.strip_prefix(merged).ok()?;
            Some(Upper::scoped(&m.dir, at))
        })
        .collect()
}

/// The report's verdict on one image: (mounted, visibility).
pub fn check(
    prepared: &[Prepared],
    at: usize,
    entries: &Result<Vec<MountEntry>, String>,
    merged: &Path,
) -> (bool, Visibility) {
    let me = &prepared[at];
    if let Some(failure) = &me.failure {
        return (false, Visibility::failed(failure.clone()));
    }
    if me.merged.is_empty() {
        let hierarchies: Vec<String> = me
            .image
            .class
            .hierarchies()
            .iter()
            .map(|h| format!("/{h}"))
            .collect();
        let mut detail = format!(
            "the image provides nothing that was merged (non-empty {})",
            hierarchies.join(" or ")
        );
        for note in &me.notes {
            detail = format!("{detail}; {note}");
        }
        return (false, Visibility::failed(detail));
    }
    let mut problems: Vec<String> = Vec::new();
    for m in &me.merged {
        let detail = match entries {
            Ok(entries) => checks::check_mounted(entries, &m.target, &m.dir),
            Err(message) => Some(message.clone()),
        };
        problems.extend(detail);
    }
    let mounted = problems.is_empty();
    let mut vis = visibility(prepared, at, merged);
    problems.extend(vis.detail.take());
    problems.extend(me.notes.iter().cloned());
    vis.detail = (!problems.is_empty()).then(|| problems.join("; "));
    (mounted, vis)
}

/// The first hierarchy (in merge order) with a probe decides.
fn visibility(prepared: &[Prepared], at: usize, merged: &Path) -> Visibility {
    let me = &prepared[at];
    for m in &me.merged {
        let later: Vec<Upper> = prepared[at + 1..]
            .iter()
            .flat_map(|p| &p.merged)
            .filter(|other| other.hierarchy == m.hierarchy)
            .map(|other| Upper::whole(&other.dir))
            .collect();
        // The Talos extensions list is bound over etc/extensions.yaml.
        let skip: &[&Path] = if m.hierarchy == "etc" {
            &[Path::new("extensions.yaml")]
        } else {
            &[]
        };
        match checks::find_probe_under(&m.dir, &later, skip) {
            Ok(Some(probe)) => {
                let shown_at = m.target.strip_prefix(merged).unwrap_or(&m.target);
                let shown = format!("/{}", shown_at.join(&probe).display());
                return checks::compare_probe(&m.dir, &probe, &m.target, shown);
            }
            Ok(None) => {}
            Err(err) => return Visibility::failed(error_chain(&err)),
        }
    }
    Visibility::failed(format!(
        "{} ships no regular file in its merged hierarchies that later images leave visible",
        me.image.file_name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    #[test]
    fn file_systems_are_told_apart_by_magic() {
        assert_eq!(detect_bytes(b"hsqs\x10\x00"), Some(FsType::Squashfs));
        let mut erofs = vec![0u8; 1028];
        erofs[1024..].copy_from_slice(&[0xE2, 0xE1, 0xF5, 0xE0]);
        assert_eq!(detect_bytes(&erofs), Some(FsType::Erofs));
        erofs[1027] = 0;
        assert_eq!(detect_bytes(&erofs), None);
        assert_eq!(detect_bytes(b"sqsh"), None);
        assert_eq!(detect_bytes(&[0u8; 100]), None);
    }

    #[test]
    fn detection_reads_files_and_names_unknown_ones() {
        let dir = TestDir::new("sysext-detect");
        dir.file("a.raw", &[0u8; 4096]);
        let err = detect(&dir.0.join("a.raw")).unwrap_err();
        assert!(err.to_string().ends_with("a.raw is neither a squashfs (\"hsqs\" at offset 0) nor an erofs image (magic 0xe0f5e1e2 at offset 1024); GPT disk images are not supported, write a bare file system"));
        dir.file("b.raw", b"hsqs");
        assert_eq!(detect(&dir.0.join("b.raw")).unwrap(), FsType::Squashfs);
    }

    #[test]
    fn discovery_takes_raw_files_in_version_order() {
        let dir = TestDir::new("sysext-discover");
        for name in ["tool_10.raw", "tool_9.raw", "a.raw", "notes.txt", ".raw"] {
            dir.file(name, b"");
        }
        dir.dir("dir.raw");
        std::os::unix::fs::symlink("a.raw", dir.0.join("b.raw")).unwrap();
        std::os::unix::fs::symlink("gone", dir.0.join("c.raw")).unwrap();
        let names: Vec<String> = discover(&dir.0, Class::Sysext)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["a", "b", "tool_9", "tool_10"]);
        assert!(discover(Path::new("/nonexistent/sysext"), Class::Sysext)
            .unwrap()
            .is_empty());
    }

    fn prepared(name: &str, mount: &Path, merged: Vec<Merged>) -> Prepared {
        Prepared {
            image: Image {
                class: Class::Sysext,
                name: name.into(),
                file: PathBuf::from(format!("/sysext/{name}.raw")),
            },
            mount: Some(mount.to_path_buf()),
            version: String::new(),
            failure: None,
            merged,
            notes: Vec::new(),
        }
    }

    /// Two images and a "merged" /usr built by hand, as the overlay would show it.
    #[test]
    fn checks_use_mountinfo_and_probe_the_merged_hierarchy() {
        let a = TestDir::new("img-a");
        a.file(
            "usr/lib/extension-release.d/extension-release.a",
            b"ID=_any\n",
        )
        .file("usr/share/a/data", b"a");
        let b = TestDir::new("img-b");
        b.file(
            "usr/lib/extension-release.d/extension-release.a",
            b"shadow\n",
        )
        .file(
            "usr/lib/extension-release.d/extension-release.b",
            b"ID=_any\n",
        );
        let root = TestDir::new("merged-root");
        root.file(
            "usr/lib/extension-release.d/extension-release.a",
            b"shadow\n",
        )
        .file(
            "usr/lib/extension-release.d/extension-release.b",
            b"ID=_any\n",
        )
        .file("usr/share/a/data", b"a");
        let target = root.0.join("usr");
        let m = |img: &TestDir| Merged {
            hierarchy: "usr",
            dir: img.0.join("usr"),
            target: target.clone(),
        };
        let list = vec![
            prepared("a", &a.0, vec![m(&a)]),
            prepared("b", &b.0, vec![m(&b)]),
        ];
        let line = format!(
            "40 1 0:40 / {} ro,nodev - overlay sysext ro,lowerdir={}:{}:/strata/base/usr\n",
            target.display(),
            b.0.join("usr").display(),
            a.0.join("usr").display()
        );
        let entries = crate::mountinfo::parse(&line).map_err(|e| e.to_string());
        let (mounted, vis) = check(&list, 0, &entries, &root.0);
        assert!(mounted);
        // a's release file is shadowed by b's, so the probe moves on.
        assert_eq!(
            vis,
            Visibility {
                visible: true,
                probe: Some("/usr/share/a/data".into()),
                detail: None
            }
        );
        let (mounted, vis) = check(&list, 1, &entries, &root.0);
        assert!(mounted && vis.visible, "{vis:?}");
        assert_eq!(
            vis.probe.as_deref(),
            Some("/usr/lib/extension-release.d/extension-release.a")
        );
        let other = crate::mountinfo::parse(&format!(
            "40 1 0:40 / {} ro - overlay sysext ro,lowerdir=/x:/y\n",
            target.display()
        ))
        .map_err(|e| e.to_string());
        let (mounted, vis) = check(&list, 0, &other, &root.0);
        assert!(!mounted);
        assert!(vis
            .detail
            .unwrap()
            .contains("is not a lower directory of the overlay on"));
        let uppers = uppers(&list, &root.0);
        assert_eq!(uppers[0], Upper::scoped(&a.0.join("usr"), Path::new("usr")));
    }

    #[test]
    fn rejected_and_empty_images_are_reported_with_the_reason() {
        let a = TestDir::new("img-rej");
        let mut rejected = prepared("a", &a.0, Vec::new());
        rejected.mount = None;
        rejected.failure = Some("ID=\"fedora\" matches neither ...".into());
        let mut empty = prepared("b", &a.0, Vec::new());
        empty
            .notes
            .push("/opt not merged: the root has no /opt directory".into());
        let list = vec![rejected, empty];
        let entries = Ok(Vec::new());
        let (mounted, vis) = check(&list, 0, &entries, &a.0);
        assert!(!mounted && !vis.visible);
        assert_eq!(
            vis.detail.as_deref(),
            Some("ID=\"fedora\" matches neither ...")
        );
        let (mounted, vis) = check(&list, 1, &entries, &a.0);
        assert!(!mounted && !vis.visible);
        assert_eq!(
            vis.detail.as_deref(),
            Some("the image provides nothing that was merged (non-empty /usr or /opt); /opt not merged: the root has no /opt directory")
        );
    }

    #[test]
    fn a_missing_host_release_rejects_before_mounting() {
        let layout = Layout {
            base: PathBuf::from("/nonexistent/strata"),
        };
        let image = Image {
            class: Class::Confext,
            name: "c".into(),
            file: PathBuf::from("/confext/c.raw"),
        };
        let rejection = read_host(Path::new("/nonexistent/root")).unwrap_err();
        let p = prepare(&image, &layout, Err(&rejection), "x86_64");
        assert!(p.mount.is_none());
        assert!(p.failure.unwrap().starts_with(
            "cannot check the image against the root: /nonexistent/root has no os-release file"
        ));
    }

    #[test]
    fn unsafe_and_unknown_images_fail_before_any_mount() {
        let dir = TestDir::new("sysext-unsafe");
        dir.file("a:b.raw", b"hsqs").file("junk.raw", &[1u8; 2000]);
        let layout = Layout {
            base: dir.0.join("strata"),
        };
        let host = Host {
            path: PathBuf::from("/etc/os-release"),
            release: Release::from_pairs(&[("ID", "x")]),
        };
        let image = |name: &str| Image {
            class: Class::Sysext,
            name: name.into(),
            file: dir.0.join(format!("{name}.raw")),
        };
        let p = prepare(&image("a:b"), &layout, Ok(&host), "x86_64");
        assert!(p.failure.unwrap().contains("contains ':', ',' or '\\'"));
        let p = prepare(&image("junk"), &layout, Ok(&host), "x86_64");
        assert!(p.failure.unwrap().contains("is neither a squashfs"));
        assert!(!dir.0.join("strata").exists());
    }
}
