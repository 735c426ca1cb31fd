//! The EFI system partition: systemd-boot, its loader configuration, one
//! Boot Loader Specification entry, the kernel and the initramfs.
//!
//! Layout on the FAT32 volume:
//! ```text
//! EFI/BOOT/BOOT{X64,AA64}.EFI     systemd-boot (removable-media path: no NVRAM entry needed)
//! loader/loader.conf              timeout 0, default entry
//! loader/entries/strata-<name>.conf
//! strata/vmlinuz, strata/initrd.img
//! ```
//! With a unified kernel image (`uki:`, `secure_boot:`) the kernel, the
//! initramfs and the entry are one file instead ([`uki_files`]):
//! ```text
//! EFI/BOOT/BOOT{X64,AA64}.EFI     systemd-boot (signed under Secure Boot), or the UKI itself (`uki: direct`)
//! loader/loader.conf              timeout 0, default <name>.efi[, secure-boot-enroll force]
//! EFI/Linux/<name>.efi            the UKI, found by systemd-boot (Boot Loader Specification type #2)
//! loader/keys/auto/{PK,KEK,db}.auth    with `secure_boot.enroll`
//! ```
//! Its size follows from the contents plus headroom for a later update of
//! kernel and initramfs; a fixed size that is too small is refused before
//! anything is written.

use crate::arch::Arch;
use crate::fs::fat::{FatFile, FatOptions, FatSource};
use crate::profile::units::{human, round_up, Size, MIB};
use sha2::{Digest, Sha256};
use std::path::Path;

/// One boot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// Entry file stem, e.g. `strata-default`.
    pub id: String,
    /// Menu title.
    pub title: String,
    /// Kernel release, shown by systemd-boot and used to sort entries.
    pub version: String,
    /// The kernel command line.
    pub cmdline: String,
}

/// Path of the kernel on the ESP.
pub const KERNEL_PATH: &str = "strata/vmlinuz";
/// Path of the initramfs on the ESP.
pub const INITRD_PATH: &str = "strata/initrd.img";

/// `loader/loader.conf`: boot the entry at once, no editor (the command line is part of the image).
pub fn loader_conf(entry: &BootEntry) -> String {
    format!("timeout 0\ndefault {}.conf\neditor no\n", entry.id)
}

/// Refuses an entry with a value that would break its file's syntax: BLS
/// (and `loader.conf`) read one `key value` per line, so a newline in a
/// title would let the rest of it become an `options` line of its own. The
/// plan checks every value where it comes from; this is the file's own rule.
pub fn check_entry(entry: &BootEntry) -> Result<(), EspError> {
    for (key, value) in [
        ("id", &entry.id),
        ("title", &entry.title),
        ("version", &entry.version),
        ("options", &entry.cmdline),
    ] {
        if value.chars().any(char::is_control) {
            return Err(EspError::EntryValue {
                key,
                value: value.clone(),
            });
        }
    }
    Ok(())
}

/// The BLS type #1 entry.
pub fn bls_entry(entry: &BootEntry) -> String {
    format!(
        "title {}\nversion {}\nlinux /{KERNEL_PATH}\ninitrd /{INITRD_PATH}\noptions {}\n",
        entry.title, entry.version, entry.cmdline
    )
}

/// Everything the ESP holds.
pub fn files(
    arch: Arch,
    bootloader: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    entry: &BootEntry,
) -> Vec<FatFile> {
    vec![
        FatFile {
            path: arch.efi_boot_path().to_string(),
            source: FatSource::Path(bootloader.to_path_buf()),
        },
        FatFile {
            path: "loader/loader.conf".into(),
            source: FatSource::Bytes(loader_conf(entry).into_bytes()),
        },
        FatFile {
            path: format!("loader/entries/{}.conf", entry.id),
            source: FatSource::Bytes(bls_entry(entry).into_bytes()),
        },
        FatFile {
            path: KERNEL_PATH.into(),
            source: FatSource::Path(vmlinuz.to_path_buf()),
        },
        FatFile {
            path: INITRD_PATH.into(),
            source: FatSource::Path(initrd.to_path_buf()),
        },
    ]
}

/// `loader/loader.conf` for a UKI: boot `EFI/Linux/<name>.efi` at once; with
/// `enroll`, let systemd-boot enrol the keys of `loader/keys/` into a
/// machine in setup mode (systemd 252 knows only `force` for that; later
/// versions also `if-safe`).
pub fn uki_loader_conf(name: &str, enroll: bool) -> String {
    let mut conf = format!("timeout 0\ndefault {name}.efi\neditor no\n");
    if enroll {
        conf.push_str("secure-boot-enroll force\n");
    }
    conf
}

/// Everything the ESP holds when the image boots the UKI `uki`.
pub fn uki_files(arch: Arch, name: &str, uki: &crate::assets::uki::UkiFiles) -> Vec<FatFile> {
    let path = |p: &Path| FatSource::Path(p.to_path_buf());
    let Some(bootloader) = &uki.bootloader else {
        return vec![FatFile {
            path: arch.efi_boot_path().to_string(),
            source: path(&uki.uki),
        }];
    };
    let mut files = vec![
        FatFile {
            path: arch.efi_boot_path().to_string(),
            source: path(bootloader),
        },
        FatFile {
            path: "loader/loader.conf".into(),
            source: FatSource::Bytes(uki_loader_conf(name, !uki.enrol.is_empty()).into_bytes()),
        },
        FatFile {
            path: format!("EFI/Linux/{name}.efi"),
            source: path(&uki.uki),
        },
    ];
    files.extend(uki.enrol.iter().map(|(at, file)| FatFile {
        path: at.clone(),
        source: path(file),
    }));
    files
}

/// Why the ESP cannot be sized.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// A fixed size that does not hold the contents.
    #[error("the EFI system partition needs at least {need} for its contents, but `disk.esp_size` is {have}")]
    TooSmall {
        /// The smallest FAT32 volume that holds the files.
        need: String,
        /// What the profile asked for.
        have: String,
    },
    /// A value that would break the entry's one-key-per-line syntax.
    #[error("the boot entry's `{key}` value {value:?} holds a control character, which would end its line and start another")]
    EntryValue {
        /// The BLS key.
        key: &'static str,
        /// The value, as it is.
        value: String,
    },
    /// The FAT writer failed.
    #[error(transparent)]
    Fat(#[from] crate::fs::fat::FatError),
}

/// The ESP size: `requested` if it fits, else an error naming both sizes;
/// for `auto`, the files' bytes plus a quarter (at least 8 MiB) of headroom,
/// or the smallest volume that holds them if that is more.
///
/// The FAT's own tables and cluster slack come out of the quarter rather
/// than on top of it, as with `mkfs.vfat` sized to the files plus a quarter:
/// an ISO carries the whole ESP, free space included.
pub fn size(files: &[FatFile], requested: Size) -> Result<u64, EspError> {
    let need = crate::fs::fat::required_size(files)?;
    match requested {
        Size::Bytes(have) if have < need => Err(EspError::TooSmall {
            need: human(need),
            have: human(have),
        }),
        Size::Bytes(have) => Ok(round_up(have, MIB)),
        Size::Auto => {
            let content = crate::fs::fat::content_size(files)?;
            Ok(round_up(content + (content / 4).max(8 * MIB), MIB).max(need))
        }
    }
}

/// FAT options derived from the build: a volume serial from `seed`, every timestamp `epoch`.
pub fn fat_options(seed: &[u8], epoch: u64) -> FatOptions {
    let d = Sha256::new()
        .chain_update(b"strata-esp-serial")
        .chain_update(seed)
        .finalize();
    FatOptions {
        volume_id: u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
        label: "ESP".into(),
        timestamp: i64::try_from(epoch).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_values_with_control_characters_are_refused() {
        let entry = BootEntry {
            id: "strata-x".into(),
            title: "strata 1.0\noptions init=/bin/sh".into(),
            version: "6.1.0".into(),
            cmdline: "quiet".into(),
        };
        let e = check_entry(&entry).unwrap_err().to_string();
        assert!(e.contains("`title`"), "{e}");
        let ok = BootEntry {
            title: "strata 1.0 (x)".into(),
            ..entry
        };
        check_entry(&ok).unwrap();
    }

    use super::*;

    fn entry() -> BootEntry {
        BootEntry {
            id: "strata-demo".into(),
            title: "strata 1.0 (demo)".into(),
            version: "6.1.0-56-amd64".into(),
            cmdline: "console=ttyS0".into(),
        }
    }

    #[test]
    fn a_uki_esp_holds_the_bootloader_the_uki_and_the_enrolment_files() {
        let uki = crate::assets::uki::UkiFiles {
            uki: "/w/default.efi".into(),
            mode: crate::profile::UkiMode::SystemdBoot,
            bootloader: Some("/w/sd-boot.efi".into()),
            enrol: vec![("loader/keys/auto/PK.auth".into(), "/w/PK.auth".into())],
            pcr11: None,
        };
        let files = uki_files(Arch::Amd64, "default", &uki);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "loader/loader.conf",
                "EFI/Linux/default.efi",
                "loader/keys/auto/PK.auth"
            ]
        );
        assert!(matches!(&files[1].source, FatSource::Bytes(b)
            if b == b"timeout 0\ndefault default.efi\neditor no\nsecure-boot-enroll force\n"));
        let direct = crate::assets::uki::UkiFiles {
            bootloader: None,
            enrol: vec![],
            mode: crate::profile::UkiMode::Direct,
            ..uki
        };
        let files = uki_files(Arch::Arm64, "default", &direct);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "EFI/BOOT/BOOTAA64.EFI");
    }

    #[test]
    fn loader_files_are_golden() {
        assert_eq!(
            loader_conf(&entry()),
            "timeout 0\ndefault strata-demo.conf\neditor no\n"
        );
        assert_eq!(
            bls_entry(&entry()),
            "title strata 1.0 (demo)\nversion 6.1.0-56-amd64\nlinux /strata/vmlinuz\ninitrd /strata/initrd.img\noptions console=ttyS0\n"
        );
    }

    #[test]
    fn fixed_size_too_small_names_both_sizes() {
        let f = vec![FatFile {
            path: "big".into(),
            source: FatSource::Bytes(vec![1u8; 40 << 20]),
        }];
        let e = size(&f, Size::Bytes(16 * MIB)).unwrap_err().to_string();
        assert!(
            e.starts_with("the EFI system partition needs at least")
                && e.ends_with("but `disk.esp_size` is 16 MiB"),
            "{e}"
        );
        let auto = size(&f, Size::Auto).unwrap();
        assert_eq!(auto, 50 * MIB, "40 MiB of files and a quarter");
        assert!(auto >= crate::fs::fat::required_size(&f).unwrap());
        // Few bytes: at least 8 MiB of headroom, and never below what FAT32 needs.
        let small = vec![FatFile {
            path: "small".into(),
            source: FatSource::Bytes(vec![1u8; 4 << 20]),
        }];
        let need = crate::fs::fat::required_size(&small).unwrap();
        assert_eq!(size(&small, Size::Auto).unwrap(), need.max(12 * MIB));
    }
}
