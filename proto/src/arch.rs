//! Target architectures and every per-architecture name strata needs.
//!
//! Architecture is a parameter everywhere: nothing else in the composer, the
//! boot runner or their tests hard-codes an EFI file name, a console, a
//! Debian architecture string or a machine number.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A target architecture, named as Debian and Talos name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86_64.
    Amd64,
    /// aarch64.
    Arm64,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Parses `amd64`/`arm64`, also accepting the kernel names `x86_64`/`aarch64`.
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// Debian's architecture name (the `Architecture:` of a .deb).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The kernel's `uname -m`.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The Rust target the guest init is built for.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// systemd's name, as `ARCHITECTURE=` in an extension-release file spells it.
    pub fn systemd(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86-64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The serial console the kernel talks to on QEMU's machine for it.
    pub fn console(self) -> &'static str {
        match self {
            Arch::Amd64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// The file name of [`Arch::efi_boot_path`] (`BOOTX64.EFI`).
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::Amd64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// The removable-media boot path firmware looks for on the ESP.
    pub fn efi_boot_path(self) -> &'static str {
        match self {
            Arch::Amd64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Arm64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// Debian's systemd-boot binary for this architecture.
    pub fn systemd_boot(self) -> &'static str {
        match self {
            Arch::Amd64 => "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            Arch::Arm64 => "/usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        }
    }

    /// The Debian package that ships [`Arch::systemd_boot`].
    pub fn systemd_boot_package(self) -> &'static str {
        match self {
            Arch::Amd64 => "systemd-boot-efi",
            Arch::Arm64 => "systemd-boot-efi:arm64",
        }
    }

    /// The PE/COFF machine field of EFI binaries for this architecture.
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 0x8664,
            Arch::Arm64 => 0xaa64,
        }
    }

    /// The ELF `e_machine` of binaries for this architecture.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,  // EM_X86_64
            Arch::Arm64 => 183, // EM_AARCH64
        }
    }

    /// The architecture of an ELF `e_machine`, if strata targets it.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == machine)
    }

    /// The architecture of a PE/COFF machine field, if strata targets it.
    pub fn from_pe_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.pe_machine() == machine)
    }

    /// Names an ELF machine for error messages.
    pub fn name_elf_machine(machine: u16) -> String {
        Arch::from_elf_machine(machine)
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("ELF machine {machine}"))
    }

    /// Names a PE machine for error messages.
    pub fn name_pe_machine(machine: u16) -> String {
        Arch::from_pe_machine(machine)
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("PE machine {machine:#06x}"))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        assert_eq!(Arch::parse("x86_64"), Some(Arch::Amd64));
        assert_eq!(Arch::parse("arm64"), Some(Arch::Arm64));
        assert_eq!(Arch::parse("riscv64"), None);
    }

    #[test]
    fn names_unknown_machines() {
        assert_eq!(Arch::name_elf_machine(183), "arm64");
        assert_eq!(Arch::name_elf_machine(3), "ELF machine 3");
        assert_eq!(Arch::name_pe_machine(0x8664), "amd64");
    }

    #[test]
    fn names_agree_with_each_other() {
        for arch in Arch::ALL {
            assert_eq!(Arch::parse(arch.debian()), Some(arch));
            assert_eq!(Arch::parse(arch.uname()), Some(arch));
            assert_eq!(Arch::from_elf_machine(arch.elf_machine()), Some(arch));
            assert_eq!(Arch::from_pe_machine(arch.pe_machine()), Some(arch));
            assert!(arch.efi_boot_path().ends_with(arch.efi_boot_file()));
            assert_eq!(
                crate::extrelease::systemd_arch(arch.debian()),
                Some(arch.systemd())
            );
            assert_eq!(
                serde_json::to_value(arch).unwrap(),
                serde_json::Value::from(arch.debian())
            );
        }
        assert_eq!(Arch::from_elf_machine(3), None);
    }
}
