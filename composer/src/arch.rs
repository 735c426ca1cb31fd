//! Target architectures and every per-architecture name strata needs.
//!
//! Architecture is a parameter everywhere: nothing else in the composer
//! hard-codes an EFI file name, a console or a Debian architecture string.

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

    /// Names an ELF machine for error messages.
    pub fn name_elf_machine(machine: u16) -> String {
        Arch::ALL
            .into_iter()
            .find(|a| a.elf_machine() == machine)
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("ELF machine {machine}"))
    }

    /// Names a PE machine for error messages.
    pub fn name_pe_machine(machine: u16) -> String {
        Arch::ALL
            .into_iter()
            .find(|a| a.pe_machine() == machine)
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
}
