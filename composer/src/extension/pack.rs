//! `strata ext pack`: make extensions without Docker.
//!
//! - A Talos extension directory becomes a single-layer OCI image in an
//!   image-layout directory (deterministic: same input, same digest), which
//!   can then be pushed to a registry.
//! - A directory tree (`usr/…`, `opt/…`, or `etc/…` for a confext) becomes a
//!   systemd-sysext/confext `.raw` squashfs image, with its
//!   `extension-release.NAME` written from the options — or, when the tree
//!   carries its own, that file kept unchanged (options that would change it
//!   are refused rather than merged or dropped).
//!
//! Pack refuses what the build refuses: the extension is validated by the
//! rules of `strata ext validate` first (for a sysext, as it will be packed,
//! release file included), and any error stops it before anything is
//! written. The architecture comes from the ELF programs packed (the rule of
//! [`crate::binary::program_machine`]): programs for two machines, or an
//! explicit `--arch` that contradicts them, are refused. Outputs are created
//! with the permissions the umask allows ([`crate::io::perm`]).

use crate::arch::Arch;
use crate::binary::{elf_machine_name, program_machine};
use crate::error::{Error, InputError, Result};
use crate::extension::findings::{render_table, Report};
use crate::extension::source::Kind;
use crate::extension::validate::{self, Context};
use crate::extension::TalosExtension;
use crate::fs::squashfs::{self, SquashCompression, SquashOptions};
use crate::fs::tree::{Entry, EntryKind, Tree};
use std::collections::BTreeMap;
use std::path::Path;

/// What goes into a sysext/confext release file; `None` fields are left out.
#[derive(Debug, Clone, Default)]
pub struct ReleaseFields {
    /// `ID` (`_any`, the default, matches every OS).
    pub id: Option<String>,
    /// `VERSION_ID`, when the image is tied to one OS release.
    pub version_id: Option<String>,
    /// `SYSEXT_LEVEL` / `CONFEXT_LEVEL`, the usual way to survive OS updates.
    pub level: Option<String>,
    /// `SYSEXT_VERSION_ID` / `CONFEXT_VERSION_ID`: the extension's own version.
    pub extension_version: Option<String>,
}

impl ReleaseFields {
    /// Whether any field was given (and so would be written into a release file).
    fn any(&self) -> bool {
        self.id.is_some()
            || self.version_id.is_some()
            || self.level.is_some()
            || self.extension_version.is_some()
    }
}

/// What a pack made.
#[derive(Debug)]
pub struct Packed {
    /// The validation report (warnings and notes included; never an error).
    pub report: Report,
    /// Decisions worth telling the user (architecture derived, release file kept).
    pub notes: Vec<String>,
    /// The OCI manifest digest (Talos), or the output path (sysext/confext).
    pub result: String,
}

/// The architecture of the ELF programs in `tree`: `None` when it holds none. Programs for
/// two machines, or for one strata does not build for, are refused.
pub fn programs_arch(tree: &Tree, origin: &Path) -> Result<Option<Arch>> {
    let mut seen: BTreeMap<u16, String> = BTreeMap::new();
    for (path, entry) in tree.iter() {
        let EntryKind::File(data) = &entry.kind else {
            continue;
        };
        let text = path.to_string_lossy();
        let machine = program_machine(&text, data).map_err(Error::io("reading", path))?;
        if let Some(m) = machine {
            seen.entry(m).or_insert_with(|| text.into_owned());
        }
    }
    let mut machines = seen.iter();
    let Some((&machine, example)) = machines.next() else {
        return Ok(None);
    };
    if let Some((&other, other_example)) = machines.next() {
        return Err(bad(
            origin,
            format!(
                "the tree holds programs for two architectures: {example} is {}, \
                 {other_example} is {}",
                elf_machine_name(machine),
                elf_machine_name(other)
            ),
            "pack one architecture per image (one tree per architecture)",
        ));
    }
    Arch::from_elf_machine(machine).map(Some).ok_or_else(|| {
        bad(
            origin,
            format!(
                "the programs are built for {} ({example}), which strata does not build for",
                elf_machine_name(machine)
            ),
            "pack amd64 or arm64 programs",
        )
    })
}

/// The architecture to pack for: the programs', checked against an explicit one.
fn pack_arch(tree: &Tree, explicit: Option<Arch>, origin: &Path) -> Result<Option<Arch>> {
    let derived = programs_arch(tree, origin)?;
    match (explicit, derived) {
        (Some(want), Some(got)) if want != got => Err(bad(
            origin,
            format!(
                "--arch {want} contradicts the programs in the tree, which are built for {got}"
            ),
            format!("drop --arch (the programs say {got}), or pack the {want} build"),
        )),
        (e, d) => Ok(e.or(d)),
    }
}

fn bad(origin: &Path, message: impl Into<String>, hint: impl Into<String>) -> Error {
    InputError::new(origin, "", message, hint).into()
}

/// Refuses a report with errors, showing the whole table.
fn refuse_errors(report: Report, origin: &Path) -> Result<Report> {
    if !report.has_errors() {
        return Ok(report);
    }
    Err(bad(
        origin,
        format!(
            "the extension has errors the build would refuse; nothing was written:\n{}",
            render_table(std::slice::from_ref(&report)).trim_end()
        ),
        "fix the findings above (`strata ext validate` shows the same table)",
    ))
}

/// Packs a Talos extension directory as an OCI image into `layout`, tagged `tag`.
pub fn talos_to_layout(
    dir: &Path,
    layout: &Path,
    tag: &str,
    arch: Option<Arch>,
    epoch: u64,
) -> Result<Packed> {
    let ext = TalosExtension::read_dir(dir)?;
    let rootfs = Tree::from_dir(&ext.rootfs).map_err(|e| read_error(&ext.rootfs, e))?;
    let mut notes = Vec::new();
    let arch = match pack_arch(&rootfs, arch, dir)? {
        Some(a) => a,
        None => {
            notes.push(format!(
                "no ELF programs: the image is marked {} (pass --arch for another)",
                Arch::Amd64
            ));
            Arch::Amd64
        }
    };
    let ctx = Context {
        arch: Some(arch.debian()),
        ..Context::default()
    };
    let report = validate::validate_path_as(dir, Some(Kind::Talos), &ctx)
        .map_err(|e| validate_error(dir, e))?;
    let report = refuse_errors(report, dir)?;
    let manifest = Tree::from_dir(dir).map_err(|e| read_error(dir, e))?;
    let mut tree = Tree::new();
    for (path, entry) in manifest.iter() {
        if path == Path::new("/") {
            continue;
        }
        tree.insert(path, entry.clone())
            .map_err(|e| read_error(dir, e))?;
    }
    tree.share_scratch(&manifest);
    tree.all_root();
    let digest = crate::source::oci::layout::write_image(
        layout,
        crate::source::oci::layout::LayerSource::Tree(&tree),
        arch.debian(),
        tag,
        epoch,
    )
    .map_err(|e| {
        Error::step(
            crate::ErrorKind::Io,
            format!("writing {}", layout.display()),
            e,
        )
    })?;
    Ok(Packed {
        report,
        notes,
        result: digest.to_string(),
    })
}

fn read_error(path: &Path, e: impl Into<crate::error::Cause>) -> Error {
    InputError::new(
        path,
        "",
        "cannot read the tree",
        "check the directory and its permissions",
    )
    .caused_by(e)
    .into()
}

fn validate_error(path: &Path, e: validate::ValidateError) -> Error {
    InputError::new(path, "", "cannot validate the extension", "see the cause")
        .caused_by(e)
        .into()
}

/// The release file's text for `kind`; `arch` in systemd's spelling or `_any`.
pub fn release_text(kind: Kind, f: &ReleaseFields, arch: &str) -> String {
    let prefix = if kind == Kind::Confext {
        "CONFEXT"
    } else {
        "SYSEXT"
    };
    let mut s = format!("ID={}\n", f.id.as_deref().unwrap_or("_any"));
    if let Some(v) = &f.version_id {
        s.push_str(&format!("VERSION_ID={v}\n"));
    }
    if let Some(l) = &f.level {
        s.push_str(&format!("{prefix}_LEVEL={l}\n"));
    }
    if let Some(v) = &f.extension_version {
        s.push_str(&format!("{prefix}_VERSION_ID={v}\n"));
    }
    s.push_str(&format!("ARCHITECTURE={arch}\n"));
    s
}

/// The values that land in the release file must stay one `KEY=VALUE` line each.
fn check_fields(f: &ReleaseFields) -> Result<()> {
    let fields = [
        ("--id", &f.id),
        ("--version-id", &f.version_id),
        ("--level", &f.level),
        ("--extension-version", &f.extension_version),
    ];
    for (option, value) in fields {
        let Some(v) = value else { continue };
        if v.is_empty()
            || v.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
        {
            return Err(InputError::new(
                option,
                "",
                format!("{v:?} cannot be a release file value (empty, or with spaces, quotes or control characters)"),
                "use letters, digits and . _ - + ~ only",
            )
            .into());
        }
    }
    Ok(())
}

/// Packs `dir` as a sysext/confext `.raw` image named `name` at `out` (written to a
/// temporary file beside it and renamed when complete).
pub fn tree_to_raw(
    dir: &Path,
    out: &Path,
    name: &str,
    kind: Kind,
    fields: &ReleaseFields,
    arch: Option<Arch>,
    epoch: u64,
) -> Result<Packed> {
    check_fields(fields)?;
    let mut tree = Tree::from_dir(dir).map_err(|e| read_error(dir, e))?;
    tree.all_root();
    let mut notes = Vec::new();
    let arch = pack_arch(&tree, arch, dir)?;
    let release_dir = if kind == Kind::Confext {
        "/etc/extension-release.d"
    } else {
        "/usr/lib/extension-release.d"
    };
    let path = format!("{release_dir}/extension-release.{name}");
    if tree.get(&path).is_some() {
        if fields.any() {
            return Err(bad(
                dir,
                format!(
                    "the tree has its own {path}, and --id/--version-id/--level/\
                     --extension-version would replace it"
                ),
                "drop those options to keep the tree's file, or remove the file from the tree",
            ));
        }
        notes.push(format!("keeping the tree's own {path}"));
    } else {
        let systemd = arch.map(Arch::systemd).unwrap_or("_any");
        if arch.is_none() {
            notes.push("no ELF programs: ARCHITECTURE=_any".to_string());
        }
        tree.insert(
            &path,
            Entry::bytes_file(release_text(kind, fields, systemd).into_bytes(), 0o644),
        )
        .map_err(|e| read_error(dir, e))?;
    }
    let ctx = Context {
        arch: arch.map(Arch::debian),
        ..Context::default()
    };
    let report =
        validate::validate_tree(kind, name, &tree, &ctx).map_err(|e| validate_error(dir, e))?;
    let report = refuse_errors(report, dir)?;
    write_raw(&tree, out, epoch)?;
    Ok(Packed {
        report,
        notes,
        result: out.display().to_string(),
    })
}

/// Writes the squashfs through a temporary file beside `out` that honours the umask.
fn write_raw(tree: &Tree, out: &Path, epoch: u64) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = crate::io::outdir::artefact_temp_file(parent)
        .map_err(Error::io("creating a temporary file in", parent))?;
    let opts = SquashOptions {
        compression: SquashCompression::Zstd { level: 15 },
        block_size: 128 * 1024,
        mtime: u32::try_from(epoch).unwrap_or(u32::MAX),
    };
    squashfs::write_file(tree, tmp.path(), &opts)
        .map_err(|e| Error::format(format!("writing {}", out.display()), e))?;
    tmp.persist(out)
        .map_err(|e| Error::io("renaming into place", out)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::test_elf;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn release_files_follow_systemd() {
        let f = ReleaseFields {
            extension_version: Some("1.2".into()),
            ..ReleaseFields::default()
        };
        assert_eq!(
            release_text(Kind::Sysext, &f, "arm64"),
            "ID=_any\nSYSEXT_VERSION_ID=1.2\nARCHITECTURE=arm64\n"
        );
        let f = ReleaseFields {
            id: Some("strata".into()),
            version_id: Some("1.0.0".into()),
            level: Some("1.0".into()),
            extension_version: None,
        };
        assert_eq!(
            release_text(Kind::Confext, &f, "x86-64"),
            "ID=strata\nVERSION_ID=1.0.0\nCONFEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n"
        );
    }

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn release_of(out: &Path, scratch: &Path, name: &str) -> String {
        let tree = crate::extension::source::read_image(out, scratch).unwrap();
        let path = format!("/usr/lib/extension-release.d/extension-release.{name}");
        crate::extension::source::read_text(&tree, Path::new(&path)).unwrap()
    }

    #[test]
    fn a_packed_sysext_validates_takes_the_umask_and_its_programs_arch() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src, "usr/share/tools/hello.txt", b"hi");
        write(&src, "usr/bin/tool", &test_elf(183, false));
        // Firmware for an emulated machine is data: it does not make the image "mixed".
        write(&src, "usr/share/qemu/openbios-ppc", &test_elf(20, true));
        let out = dir.path().join("tools.raw");
        let f = ReleaseFields {
            extension_version: Some("2.0".into()),
            ..ReleaseFields::default()
        };
        let packed = tree_to_raw(&src, &out, "tools", Kind::Sysext, &f, None, 0).unwrap();
        assert!(!packed.report.has_errors());
        assert!(packed
            .report
            .findings
            .iter()
            .any(|f| f.rule == "content.foreign-elf"));
        let release = release_of(&out, dir.path(), "tools");
        assert!(release.contains("ARCHITECTURE=arm64\n"), "{release}");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o044,
            0o044 & !crate::io::perm::current_umask(),
            "readable as the umask allows: {mode:o}"
        );
        let e = tree_to_raw(&src, &out, "tools", Kind::Sysext, &f, Some(Arch::Amd64), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--arch amd64 contradicts"), "{e}");
    }

    #[test]
    fn mixed_programs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src, "usr/bin/a", &test_elf(183, false));
        write(&src, "usr/bin/b", &test_elf(62, false));
        let out = dir.path().join("m.raw");
        let e = tree_to_raw(
            &src,
            &out,
            "m",
            Kind::Sysext,
            &ReleaseFields::default(),
            None,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("programs for two architectures"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn a_trees_own_release_file_is_kept_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let own = "ID=fedora\nVERSION_ID=40\nARCHITECTURE=x86-64\n";
        write(
            &src,
            "usr/lib/extension-release.d/extension-release.f",
            own.as_bytes(),
        );
        write(&src, "usr/bin/tool", &test_elf(62, false));
        let out = dir.path().join("f.raw");
        let e = tree_to_raw(
            &src,
            &out,
            "f",
            Kind::Sysext,
            &ReleaseFields {
                id: Some("_any".into()),
                ..ReleaseFields::default()
            },
            None,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has its own"), "{e}");
        let packed = tree_to_raw(
            &src,
            &out,
            "f",
            Kind::Sysext,
            &ReleaseFields::default(),
            None,
            0,
        )
        .unwrap();
        assert!(
            packed.notes.iter().any(|n| n.contains("keeping")),
            "{:?}",
            packed.notes
        );
        assert_eq!(release_of(&out, dir.path(), "f"), own);
    }

    #[test]
    fn what_the_build_refuses_is_not_packed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        // systemd-sysext refuses an image carrying os-release.
        write(&src, "usr/lib/os-release", b"ID=evil\n");
        let out = dir.path().join("bad.raw");
        let e = tree_to_raw(
            &src,
            &out,
            "bad",
            Kind::Sysext,
            &ReleaseFields::default(),
            None,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sysext.os-release") && e.contains("nothing was written"),
            "{e}"
        );
        assert!(!out.exists());
        let e = tree_to_raw(
            &src,
            &out,
            "bad",
            Kind::Sysext,
            &ReleaseFields {
                id: Some("a\nARCHITECTURE=arm64".into()),
                ..ReleaseFields::default()
            },
            None,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot be a release file value"), "{e}");
    }
}
