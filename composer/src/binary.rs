//! Which machine an executable is built for: the ELF `e_machine` and PE/COFF `Machine` fields.
//!
//! The one reader of these headers, for the guest init and systemd-boot checks (`plan`), the
//! kernel image check (`source::kernel`), and the architecture checks of root filesystems and
//! extensions (`plan::binaries::check_tree_arch`, the Talos and sysext rules). Only the headers
//! are read: nothing here says whether the file would load.
//!
//! It also holds the one rule those architecture checks share ([`judge_elf`]): an ELF file is
//! judged as a *program* only where the target's loader or kernel would run it — executables
//! and shared objects in `bin`, `sbin`, `libexec`, `lib`, `lib64` and the target's multiarch
//! `lib/<triplet>` (also below `/usr`, `/usr/local` and `/opt/<name>`), and kernel modules
//! under `lib/modules`. Anywhere else an ELF file is data: firmware QEMU loads into emulated
//! machines (`/usr/share/qemu`), device firmware (`lib/firmware`), another architecture's
//! multiarch libraries (`lib/i386-linux-gnu`, `lib32`), test data. A foreign program is an
//! error; foreign data is only worth a note.

use crate::fs::tree::FileData;

/// Bytes of an ELF header that hold `e_machine` (`e_ident` 16, `e_type` 2, `e_machine` 2).
pub const ELF_HEAD: usize = 20;

/// `e_machine` of an ELF header (at least [`ELF_HEAD`] bytes), honouring the byte order in
/// `EI_DATA`; `None` for anything else, including an ELF with an invalid byte order.
pub fn elf_machine(head: &[u8]) -> Option<u16> {
    if head.len() < ELF_HEAD || &head[..4] != b"\x7fELF" {
        return None;
    }
    let bytes = [head[18], head[19]];
    match head[5] {
        1 => Some(u16::from_le_bytes(bytes)),
        2 => Some(u16::from_be_bytes(bytes)),
        _ => None,
    }
}

/// `e_machine` of a tree file, if it is an ELF file; reads only its first [`ELF_HEAD`] bytes.
pub fn file_elf_machine(data: &FileData) -> std::io::Result<Option<u16>> {
    Ok(elf_machine(&data.head(ELF_HEAD)?))
}

/// ELF `e_type` of a relocatable object (`.o`, kernel modules).
const ET_REL: u16 = 1;
/// ELF `e_type` of an executable.
const ET_EXEC: u16 = 2;
/// ELF `e_type` of a shared object or position-independent executable.
const ET_DYN: u16 = 3;

/// `e_type` of an ELF header (at least [`ELF_HEAD`] bytes) in its byte order.
fn elf_type(head: &[u8]) -> Option<u16> {
    elf_machine(head)?;
    let bytes = [head[16], head[17]];
    Some(if head[5] == 2 {
        u16::from_be_bytes(bytes)
    } else {
        u16::from_le_bytes(bytes)
    })
}

/// What [`judge_elf`] makes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfVerdict {
    /// Not an ELF file, or one built for the target.
    Fine,
    /// A program for another machine where the target would run it: an error.
    ForeignProgram(u16),
    /// An ELF file for another machine where nothing on the target runs it (firmware for
    /// emulated machines, another architecture's multiarch libraries, test data): a note.
    ForeignData(u16),
}

/// Judges the tree file at `path` (absolute inside the root or extension) against the
/// target machine `want` (an ELF `e_machine`); reads only its first [`ELF_HEAD`] bytes.
pub fn judge_elf(path: &str, data: &FileData, want: u16) -> std::io::Result<ElfVerdict> {
    let head = data.head(ELF_HEAD)?;
    let (Some(got), Some(kind)) = (elf_machine(&head), elf_type(&head)) else {
        return Ok(ElfVerdict::Fine);
    };
    if got == want {
        return Ok(ElfVerdict::Fine);
    }
    Ok(if runs_on_target(path, kind, want) {
        ElfVerdict::ForeignProgram(got)
    } else {
        ElfVerdict::ForeignData(got)
    })
}

/// Whether an ELF file of type `kind` at `path` is something the target would load.
fn runs_on_target(path: &str, kind: u16, want: u16) -> bool {
    is_program(program_dir(path, Some(want)), kind)
}

fn is_program(dir: Option<ProgramDir>, kind: u16) -> bool {
    match dir {
        Some(ProgramDir::Modules) => kind == ET_REL,
        Some(ProgramDir::Programs) => kind == ET_EXEC || kind == ET_DYN,
        None => false,
    }
}

/// The machine of the tree file at `path` if it is an ELF program by the rule of
/// [`judge_elf`]; multiarch `lib/<triplet>` directories do not count, since they hold
/// another architecture's libraries by design. `strata ext pack` derives `ARCHITECTURE` from
/// these.
pub fn program_machine(path: &str, data: &FileData) -> std::io::Result<Option<u16>> {
    let head = data.head(ELF_HEAD)?;
    let (Some(machine), Some(kind)) = (elf_machine(&head), elf_type(&head)) else {
        return Ok(None);
    };
    Ok(is_program(program_dir(path, None), kind).then_some(machine))
}

/// The kinds of program location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgramDir {
    /// Executables and shared objects: `bin`, `sbin`, `libexec`, `lib`, `lib64`.
    Programs,
    /// Kernel modules: `lib/modules`.
    Modules,
}

/// Which program location `path` lies in for target machine `want`, if any; a multiarch
/// `lib/<triplet>` directory is one only for the target's triplet (never when `want` is
/// unknown).
fn program_dir(path: &str, want: Option<u16>) -> Option<ProgramDir> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let rest = match parts.as_slice() {
        ["usr", "local", rest @ ..] | ["opt", _, rest @ ..] | ["usr", rest @ ..] => rest,
        rest => rest,
    };
    match rest {
        ["bin" | "sbin" | "libexec" | "lib64", _, ..] => Some(ProgramDir::Programs),
        ["lib", "modules", _, ..] => Some(ProgramDir::Modules),
        ["lib", "firmware", ..] => None,
        ["lib", dir, _, ..] if dir.contains("-linux-") => {
            (want.is_some() && triplet_machine(dir) == want).then_some(ProgramDir::Programs)
        }
        ["lib", _, ..] => Some(ProgramDir::Programs),
        _ => None,
    }
}

/// The ELF machine of a multiarch triplet (`x86_64-linux-gnu`, `aarch64-linux-gnu`, ...),
/// by its CPU part.
fn triplet_machine(triplet: &str) -> Option<u16> {
    let cpu = triplet.split('-').next()?;
    Some(match cpu {
        "x86_64" => 62,
        "i386" | "i486" | "i586" | "i686" => 3,
        "aarch64" => 183,
        "riscv64" => 243,
        "s390x" => 22,
        "powerpc64le" | "powerpc64" => 21,
        "powerpc" => 20,
        c if c.starts_with("arm") => 40,
        c if c.starts_with("mips") => 8,
        _ => return None,
    })
}

/// The `Machine` field of a PE/COFF image (an EFI binary or an EFI-stub kernel), if `data`
/// starts with one: the `MZ` stub, then `PE\0\0` at the offset stored at 0x3c.
pub fn pe_machine(data: &[u8]) -> Option<u16> {
    if data.get(..2)? != b"MZ" {
        return None;
    }
    let off = u32::from_le_bytes(data.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if data.get(off..off.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    Some(u16::from_le_bytes(
        data.get(off + 4..off + 6)?.try_into().ok()?,
    ))
}

/// The ELF `e_machine` for an architecture name as extensions spell it (Debian, uname or
/// Go style: `amd64`/`x86_64`/`x86-64`, `arm64`/`aarch64`, ...), wider than the two
/// architectures strata builds for because extension metadata may name any.
pub fn elf_machine_for_arch(arch: &str) -> Option<u16> {
    match arch {
        "amd64" | "x86_64" | "x86-64" => Some(62),
        "arm64" | "aarch64" => Some(183),
        "riscv64" => Some(243),
        "s390x" => Some(22),
        "ppc64le" | "ppc64-le" => Some(21),
        _ => None,
    }
}

/// A readable name for an ELF `e_machine` value.
pub fn elf_machine_name(machine: u16) -> String {
    match machine {
        3 => "i386".into(),
        8 => "mips".into(),
        20 => "ppc".into(),
        21 => "ppc64".into(),
        22 => "s390".into(),
        40 => "arm".into(),
        62 => "x86-64".into(),
        164 => "hexagon".into(),
        183 => "arm64".into(),
        243 => "riscv".into(),
        other => format!("e_machine {other}"),
    }
}

/// A 64-byte ELF64 shared-object header with `machine` in the given byte order, for tests
/// here and in the extension rules.
#[cfg(test)]
pub(crate) fn test_elf(machine: u16, big_endian: bool) -> Vec<u8> {
    test_elf_typed(machine, ET_DYN, big_endian)
}

/// [`test_elf`] with the ELF type `e_type` (1 relocatable, 2 executable, 3 shared).
#[cfg(test)]
pub(crate) fn test_elf_typed(machine: u16, e_type: u16, big_endian: bool) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2;
    h[5] = if big_endian { 2 } else { 1 };
    let (t, m) = if big_endian {
        (e_type.to_be_bytes(), machine.to_be_bytes())
    } else {
        (e_type.to_le_bytes(), machine.to_le_bytes())
    };
    h[16..18].copy_from_slice(&t);
    h[18..20].copy_from_slice(&m);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;

    #[test]
    fn elf_headers_are_read_in_their_byte_order() {
        assert_eq!(elf_machine(&test_elf(62, false)), Some(62));
        assert_eq!(elf_machine(&test_elf(22, true)), Some(22));
        assert_eq!(elf_machine(b"#!/bin/sh\n echo hi there"), None);
        assert_eq!(elf_machine(b"\x7fELF"), None);
        let mut bad_order = test_elf(62, false);
        bad_order[5] = 0;
        assert_eq!(elf_machine(&bad_order), None);
        let data = FileData::Bytes(test_elf(183, false));
        assert_eq!(file_elf_machine(&data).unwrap(), Some(183));
    }

    fn verdict(path: &str, machine: u16, e_type: u16) -> ElfVerdict {
        let data = FileData::Bytes(test_elf_typed(machine, e_type, false));
        judge_elf(path, &data, 62).unwrap()
    }

    #[test]
    fn foreign_programs_are_errors_only_where_the_target_runs_them() {
        use ElfVerdict::{Fine, ForeignData, ForeignProgram};
        let program = [
            "/usr/bin/tool",
            "/bin/sh",
            "/sbin/init",
            "/usr/libexec/qemu-system-i386",
            "/usr/lib/qemu/helper",
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/local/bin/tool",
            "/usr/local/lib/libx.so",
            "/opt/vendor/bin/agent",
            "/opt/vendor/lib/libagent.so",
        ];
        for p in program {
            assert_eq!(verdict(p, 183, ET_DYN), ForeignProgram(183), "{p}");
            assert_eq!(verdict(p, 183, ET_EXEC), ForeignProgram(183), "{p}");
            assert_eq!(verdict(p, 62, ET_DYN), Fine, "{p}");
        }
        let modules = "/usr/lib/modules/6.1.0/extra/dummy.ko";
        assert_eq!(verdict(modules, 183, ET_REL), ForeignProgram(183));
        assert_eq!(
            verdict("/lib/modules/6.1.0/x.ko", 183, ET_REL),
            ForeignProgram(183)
        );
        let data = [
            "/usr/share/qemu/openbios-ppc",
            "/usr/share/qemu/s390-ccw.img",
            "/usr/lib/firmware/nvidia/gsp.bin",
            "/lib/firmware/qcom/a630.elf",
            "/usr/lib/i386-linux-gnu/libc.so.6",
            "/usr/lib/aarch64-linux-gnu/libc.so.6",
            "/usr/lib32/libc.so.6",
            "/usr/aarch64-linux-gnu/lib/libc.so.6",
            "/srv/testdata/arm.bin",
            "/usr/bin",
        ];
        for p in data {
            assert_eq!(verdict(p, 183, ET_DYN), ForeignData(183), "{p}");
        }
        // Relocatable objects outside lib/modules (grub's i386-pc modules, .o files) are data.
        assert_eq!(
            verdict("/usr/lib/grub/i386-pc/ext2.mod", 3, ET_REL),
            ForeignData(3)
        );
        let script = FileData::Bytes(b"#!/bin/sh\necho hello there\n".to_vec());
        assert_eq!(judge_elf("/usr/bin/x", &script, 62).unwrap(), Fine);
        let big = FileData::Bytes(test_elf_typed(22, ET_EXEC, true));
        assert_eq!(
            judge_elf("/usr/bin/x", &big, 62).unwrap(),
            ForeignProgram(22)
        );
    }

    #[test]
    fn programs_name_their_machine_and_data_does_not() {
        let arm = FileData::Bytes(test_elf_typed(183, ET_EXEC, false));
        assert_eq!(program_machine("/usr/bin/x", &arm).unwrap(), Some(183));
        assert_eq!(program_machine("/usr/share/x", &arm).unwrap(), None);
        let lib = "/usr/lib/aarch64-linux-gnu/libx.so";
        assert_eq!(program_machine(lib, &arm).unwrap(), None, "multiarch");
        let obj = FileData::Bytes(test_elf_typed(183, ET_REL, false));
        assert_eq!(
            program_machine("/usr/lib/modules/6.1/x.ko", &obj).unwrap(),
            Some(183)
        );
        assert_eq!(program_machine("/usr/lib/x.o", &obj).unwrap(), None);
    }

    #[test]
    fn reads_pe_machines() {
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(pe_machine(&pe), Some(0xaa64));
        assert_eq!(pe_machine(b"\x7fELF"), None);
        pe[0x3c] = 0xff;
        assert_eq!(pe_machine(&pe), None, "PE offset past the end");
    }

    #[test]
    fn arch_names_agree_with_the_arch_type() {
        for arch in Arch::ALL {
            assert_eq!(
                elf_machine_for_arch(arch.debian()),
                Some(arch.elf_machine())
            );
            assert_eq!(elf_machine_for_arch(arch.uname()), Some(arch.elf_machine()));
        }
        assert_eq!(elf_machine_name(183), "arm64");
        assert_eq!(elf_machine_name(9999), "e_machine 9999");
    }
}
