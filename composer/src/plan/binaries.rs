//! Finding and checking the executables that go into an image: the guest
//! init (a static ELF for the target) and systemd-boot (a PE for the target).
//! A binary of the wrong architecture is refused, naming the file and both
//! architectures, before anything is written.

use crate::arch::Arch;
use crate::binary::pe_machine;
use crate::error::{Error, InputError, Result};
use object::Object;
use std::path::{Path, PathBuf};

/// Checks that `path` is a static ELF executable for `arch`.
pub fn check_init(path: &Path, arch: Arch) -> Result<()> {
    let data = std::fs::read(path).map_err(Error::io("reading", path))?;
    let bad = |m: String, hint: &str| -> Error { InputError::new(path, "init", m, hint).into() };
    let file = object::File::parse(&*data).map_err(|e| {
        bad(
            format!("not an ELF executable: {e}"),
            "give the strata-init binary built by `make init`",
        )
    })?;
    let machine = match file.architecture() {
        object::Architecture::X86_64 => Some(Arch::Amd64),
        object::Architecture::Aarch64 => Some(Arch::Arm64),
        _ => None,
    };
    if machine != Some(arch) {
        let found = machine
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("{:?}", file.architecture()));
        return Err(bad(
            format!("the guest init is built for {found}, but the profile's arch is {arch}"),
            &format!("build it for {} (`make init`)", arch.musl_target()),
        ));
    }
    if file.section_by_name(".interp").is_some() {
        return Err(bad(
            "the guest init is dynamically linked; the initramfs has no libc".into(),
            "build it for the musl target (`make init`), which links statically",
        ));
    }
    Ok(())
}

/// Checks that `path` is a PE/COFF (EFI) binary for `arch`.
pub fn check_efi(path: &Path, arch: Arch, field: &str) -> Result<()> {
    let data = std::fs::read(path).map_err(Error::io("reading", path))?;
    let machine = pe_machine(&data).ok_or_else(|| -> Error {
        InputError::new(
            path,
            field,
            "not an EFI (PE/COFF) binary",
            "give systemd-boot's EFI binary (systemd-boot-efi package)",
        )
        .into()
    })?;
    if machine != arch.pe_machine() {
        return Err(InputError::new(
            path,
            field,
            format!(
                "the EFI binary is built for {}, but the profile's arch is {arch}",
                Arch::name_pe_machine(machine)
            ),
            format!(
                "use {} from the {} package",
                arch.systemd_boot(),
                arch.systemd_boot_package()
            ),
        )
        .into());
    }
    Ok(())
}

/// Finds the guest init for `arch`: the explicit path if given, else the
/// binary built beside `strata` (by `make init` in this repository), else
/// an installed copy.
pub fn find_init(arch: Arch, explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(InputError::new(
                &p,
                "init",
                "guest init not found",
                "build it with `make init`, or fix the path",
            )
            .into());
        }
        return Ok(p);
    }
    let candidates = init_candidates(arch);
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| Error::Environment {
        message: format!(
            "the guest init for {arch} was not found; looked in: {}",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
        hint: format!(
            "run `make init` (cargo build -p strata-boot --release --target {}), or set `init:` in the profile, or pass --init",
            arch.musl_target()
        ),
    })
}

fn init_candidates(arch: Arch) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/strata → target/<triple>/release/strata-init; test binaries sit one level deeper.
        for dir in exe.ancestors().skip(1).take(3) {
            out.push(
                dir.join(arch.musl_target())
                    .join("release")
                    .join("strata-init"),
            );
            out.push(dir.join(format!("strata-init-{arch}")));
        }
    }
    out.push(PathBuf::from(format!(
        "/usr/local/lib/strata/strata-init-{arch}"
    )));
    out.push(PathBuf::from(format!("/usr/lib/strata/strata-init-{arch}")));
    out
}

/// The systemd-boot binary: the profile's, or Debian's.
pub fn find_bootloader(arch: Arch, explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = explicit.unwrap_or_else(|| PathBuf::from(arch.systemd_boot()));
    if !path.is_file() {
        return Err(Error::Environment {
            message: format!("systemd-boot for {arch} not found at {}", path.display()),
            hint: format!(
                "apt-get install {}{}",
                arch.systemd_boot_package(),
                if arch == Arch::Arm64 {
                    " (after `dpkg --add-architecture arm64 && apt-get update`)"
                } else {
                    ""
                }
            ),
        });
    }
    check_efi(&path, arch, "bootloader")?;
    Ok(path)
}

/// Refuses a tree (root filesystem or extension) holding ELF programs built for another
/// architecture, naming the first such file and both architectures. The rule is the one of
/// [`crate::binary::judge_elf`], shared with the extension rules: only programs where the
/// target runs them count; foreign ELF data (QEMU's firmware for emulated machines under
/// `/usr/share/qemu`) is not refused. Only the ELF header of each regular file is read.
pub fn check_tree_arch(
    tree: &crate::fs::tree::Tree,
    arch: Arch,
    what: &str,
    origin: &Path,
) -> Result<()> {
    use crate::binary::{judge_elf, ElfVerdict};
    use crate::fs::tree::{EntryKind, FileData};
    for (path, entry) in tree.iter() {
        let EntryKind::File(data) = &entry.kind else {
            continue;
        };
        let verdict = judge_elf(&path.to_string_lossy(), data, arch.elf_machine()).map_err(
            |e| match data {
                FileData::Host(host) => Error::io("reading", host)(e),
                FileData::Bytes(_) => Error::io("reading", path)(e),
            },
        )?;
        if let ElfVerdict::ForeignProgram(machine) = verdict {
            return Err(InputError::new(
                origin,
                "",
                format!(
                    "{what} holds {} built for {}, but the profile's arch is {arch}",
                    path.display(),
                    Arch::name_elf_machine(machine)
                ),
                format!("use the {arch} build of the {what}"),
            )
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::{Entry, Tree};

    #[test]
    fn wrong_arch_efi_is_refused_with_both_arches() {
        let x64 = Path::new(Arch::Amd64.systemd_boot());
        if !crate::test_support::require_input(x64) {
            return;
        }
        let e = check_efi(x64, Arch::Arm64, "bootloader")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("built for amd64, but the profile's arch is arm64"),
            "{e}"
        );
        check_efi(x64, Arch::Amd64, "bootloader").unwrap();
    }

    #[test]
    fn a_tree_with_a_foreign_elf_is_refused() {
        let elf = crate::binary::test_elf(183, false);
        let mut tree = Tree::new();
        tree.insert("/usr/bin/tool", Entry::bytes_file(elf, 0o755))
            .unwrap();
        tree.insert(
            "/usr/share/doc.txt",
            Entry::bytes_file(b"\x7fELF".to_vec(), 0o644),
        )
        .unwrap();
        // Firmware QEMU loads into an emulated PowerPC machine is data, not a program.
        tree.insert(
            "/usr/share/qemu/openbios-ppc",
            Entry::bytes_file(crate::binary::test_elf(20, true), 0o644),
        )
        .unwrap();
        let e = check_tree_arch(&tree, Arch::Amd64, "extension `x`", Path::new("ext/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("extension `x` holds /usr/bin/tool built for arm64, but the profile's arch is amd64"), "{e}");
        check_tree_arch(&tree, Arch::Arm64, "extension `x`", Path::new("ext/x")).unwrap();
    }
}
