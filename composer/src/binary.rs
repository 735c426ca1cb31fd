//! Which machine an executable is built for: the ELF `e_machine` and PE/COFF `Machine` fields.
//!
//! The one reader of these headers, for the guest init and systemd-boot checks (`plan`), the
//! kernel image check (`source::kernel`), and the architecture checks of root filesystems and
//! extensions (`plan::binaries::check_tree_arch`, the Talos and sysext rules). Only the headers
//! are read: nothing here says whether the file would load.

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

/// A 64-byte ELF64 header with `machine` in the given byte order, for tests here and in the
/// extension rules.
#[cfg(test)]
pub(crate) fn test_elf(machine: u16, big_endian: bool) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2;
    h[5] = if big_endian { 2 } else { 1 };
    let m = if big_endian {
        machine.to_be_bytes()
    } else {
        machine.to_le_bytes()
    };
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
