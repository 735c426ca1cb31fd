//! Reading Discoverable Disk Images (DDIs): the GPT disk images systemd-repart, mkosi and
//! sysext-bakery publish as `.raw` system and configuration extensions.
//!
//! A DDI is a GPT whose partitions are typed by the Discoverable Partitions Specification
//! (<https://uapi-group.org/specifications/specs/discoverable_partitions_specification/>): the
//! extension's file system is in a `root` partition (mounted at `/`) or a `usr` partition
//! (mounted at `/usr`) of the target architecture, optionally with a `root-verity`/`usr-verity`
//! hash partition and a `-verity-sig` signature partition beside it. [`open`] finds that file
//! system partition, by type GUID, the way `systemd-dissect` does for an extension image:
//!
//! - only the primary GPT is read (through gptman, which checks both CRC32s); a damaged one is
//!   refused rather than silently replaced by the backup;
//! - 512- and 4096-byte sectors are accepted (gptman tries both);
//! - partitions with the DPS `no-auto` flag (bit 63) are ignored, as systemd ignores them;
//! - a system extension may use a `root` or a `usr` partition, a configuration extension only a
//!   `root` partition; an image with both, or with two of one kind, is refused (systemd picks by
//!   version label; strata would rather say so than guess);
//! - every partition must lie inside the file, so a truncated download is refused here.
//!
//! The verity partitions are listed, not checked: strata does not enforce dm-verity yet, and
//! its callers say so.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::disk::guid::Guid;

/// The partition flag that turns auto-discovery off (DPS "no-auto", bit 63).
const FLAG_NO_AUTO: u64 = 1 << 63;

/// What a DPS partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A root file system, mounted at `/`.
    Root,
    /// A `/usr` file system, mounted at `/usr`.
    Usr,
    /// dm-verity hash data for the root partition.
    RootVerity,
    /// dm-verity hash data for the `/usr` partition.
    UsrVerity,
    /// The signed root hash of the root partition.
    RootVeritySig,
    /// The signed root hash of the `/usr` partition.
    UsrVeritySig,
}

impl Role {
    /// The DPS name without the architecture: `usr`, `root-verity`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Usr => "usr",
            Role::RootVerity => "root-verity",
            Role::UsrVerity => "usr-verity",
            Role::RootVeritySig => "root-verity-sig",
            Role::UsrVeritySig => "usr-verity-sig",
        }
    }

    /// Where the partition's file system goes in the extension's tree.
    pub fn mount_point(self) -> &'static str {
        match self {
            Role::Usr | Role::UsrVerity | Role::UsrVeritySig => "/usr",
            _ => "/",
        }
    }

    /// True for the hash and signature partitions that protect a file system partition.
    fn protects(self, fs: Role) -> bool {
        matches!(
            (fs, self),
            (Role::Root, Role::RootVerity | Role::RootVeritySig)
                | (Role::Usr, Role::UsrVerity | Role::UsrVeritySig)
        )
    }
}

/// The DPS type GUIDs strata knows, per architecture (the specification's table).
const TYPES: [(Arch, Role, u128); 12] = [
    (
        Arch::Amd64,
        Role::Root,
        0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709,
    ),
    (
        Arch::Amd64,
        Role::Usr,
        0x8484680c_9521_48c6_9c11_b0720656f69e,
    ),
    (
        Arch::Amd64,
        Role::RootVerity,
        0x2c7357ed_ebd2_46d9_aec1_23d437ec2bf5,
    ),
    (
        Arch::Amd64,
        Role::UsrVerity,
        0x77ff5f63_e7b6_4633_acf4_1565b864c0e6,
    ),
    (
        Arch::Amd64,
        Role::RootVeritySig,
        0x41092b05_9fc8_4523_994f_2def0408b176,
    ),
    (
        Arch::Amd64,
        Role::UsrVeritySig,
        0xe7bb33fb_06cf_4e81_8273_e543b413e2e2,
    ),
    (
        Arch::Arm64,
        Role::Root,
        0xb921b045_1df0_41c3_af44_4c6f280d3fae,
    ),
    (
        Arch::Arm64,
        Role::Usr,
        0xb0e01050_ee5f_4390_949a_9101b17104e9,
    ),
    (
        Arch::Arm64,
        Role::RootVerity,
        0xdf3300ce_d69f_4c92_978c_9bfb0f38d820,
    ),
    (
        Arch::Arm64,
        Role::UsrVerity,
        0x6e11a4e7_fbca_4ded_b9e9_e1a512bb664e,
    ),
    (
        Arch::Arm64,
        Role::RootVeritySig,
        0x6db69de6_29f4_4758_a7a5_962190f00ce3,
    ),
    (
        Arch::Arm64,
        Role::UsrVeritySig,
        0xc23ce4ff_44bd_4b00_b2d4_b41b3419e02a,
    ),
];

/// The type GUID of `role` for `arch`.
pub fn type_guid(arch: Arch, role: Role) -> Guid {
    TYPES
        .iter()
        .find(|(a, r, _)| *a == arch && *r == role)
        .map(|(_, _, g)| Guid::from_u128(*g))
        .unwrap_or(Guid::LINUX_DATA)
}

/// The DPS architecture and role of a type GUID, if it is one of [`TYPES`].
fn classify(guid: Guid) -> Option<(Arch, Role)> {
    TYPES
        .iter()
        .find(|(_, _, g)| Guid::from_u128(*g) == guid)
        .map(|(a, r, _)| (*a, *r))
}

/// A type GUID as messages show it: `usr-arm64`, `esp`, or the GUID itself.
fn type_name(guid: Guid) -> String {
    if let Some((arch, role)) = classify(guid) {
        return format!("{}-{}", role.as_str(), arch.systemd());
    }
    match guid {
        Guid::ESP => "esp".into(),
        Guid::LINUX_DATA => "linux-generic".into(),
        other => other.to_string(),
    }
}

/// One DPS partition of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition number (1-based, as `sfdisk` and the kernel count).
    pub number: u32,
    /// What it is for.
    pub role: Role,
    /// Its GPT name.
    pub label: String,
    /// Byte offset in the image file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What [`open`] found in a DDI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ddi {
    /// The file system partition of the extension.
    pub fs: Partition,
    /// The verity hash and signature partitions of `fs` (not checked).
    pub verity: Vec<Partition>,
}

/// Why a DDI cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DdiError {
    /// The file could not be opened or read.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The primary GPT is damaged (bad CRC, bad header) or cut short.
    #[error(
        "the partition table of {} is damaged; fix: rebuild the image, or repair it \
         (`sgdisk --verify` shows the damage)",
        path.display()
    )]
    Table {
        /// The image.
        path: PathBuf,
        /// gptman's finding.
        #[source]
        source: gptman::Error,
    },
    /// A partition ends beyond the end of the file.
    #[error(
        "{}: partition {number} ({kind}) ends at byte {end} but the file has only {len} bytes; \
         the image is truncated, fetch it again",
        path.display()
    )]
    Truncated {
        /// The image.
        path: PathBuf,
        /// The partition number.
        number: u32,
        /// Its DPS name.
        kind: String,
        /// Its end (exclusive).
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// No partition holds the extension's file system for this architecture.
    #[error(
        "{} is a GPT disk image without a {wanted} partition for {arch} (it has: {found}); \
         fix: build the image for {arch} (systemd-repart `Type={first}`), or give the extension \
         as a bare squashfs or erofs file",
        path.display()
    )]
    NoPartition {
        /// The image.
        path: PathBuf,
        /// What was looked for: `root or usr`, `root`.
        wanted: &'static str,
        /// The DPS architecture name.
        arch: &'static str,
        /// The first acceptable DPS name, for the hint.
        first: String,
        /// The partitions the table has, by number and type.
        found: String,
    },
    /// More than one partition could be the extension's file system.
    #[error(
        "{} holds several candidate file system partitions ({found}); strata reads one; fix: \
         keep one root or usr partition for {arch} in the image",
        path.display()
    )]
    Ambiguous {
        /// The image.
        path: PathBuf,
        /// The DPS architecture name.
        arch: &'static str,
        /// The candidates, by number and type.
        found: String,
    },
}

/// True when `file` starts with a GPT (a protective MBR and `EFI PART` at sector 1, for 512- or
/// 4096-byte sectors). Leaves the file position undefined.
pub fn is_gpt(file: &mut File) -> io::Result<bool> {
    for sector in [512u64, 4096] {
        let mut signature = [0u8; 8];
        file.seek(SeekFrom::Start(sector))?;
        match file.read_exact(&mut signature) {
            Ok(()) if &signature == b"EFI PART" => return Ok(true),
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Finds the file system partition of the extension image at `path` for `arch`: a `root` or
/// `usr` partition (`usr_allowed` false: `root` only, as for configuration extensions), and the
/// verity partitions that belong to it. See the module documentation for the rules.
pub fn open(path: &Path, arch: Arch, usr_allowed: bool) -> Result<Ddi, DdiError> {
    let io_err = |op, source| DdiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(|e| io_err("open", e))?;
    let file_len = file.metadata().map_err(|e| io_err("stat", e))?.len();
    let (sector, entries) = read_primary(&mut file).map_err(|source| match source {
        gptman::Error::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof => io_err("read", e),
        source => DdiError::Table {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let mut listed = Vec::new();
    let mut ours = Vec::new();
    for (number, entry) in entries {
        let guid = Guid::from_disk(entry.partition_type_guid);
        let offset = entry.starting_lba.saturating_mul(sector);
        let end = entry.ending_lba.saturating_add(1).saturating_mul(sector);
        if end > file_len || end <= offset {
            return Err(DdiError::Truncated {
                path: path.to_path_buf(),
                number,
                kind: type_name(guid),
                end,
                len: file_len,
            });
        }
        listed.push(format!("{number} {}", type_name(guid)));
        let Some((part_arch, role)) = classify(guid) else {
            continue;
        };
        if part_arch != arch || entry.attribute_bits & FLAG_NO_AUTO != 0 {
            continue;
        }
        ours.push(Partition {
            number,
            role,
            label: entry.partition_name.as_str().to_string(),
            offset,
            len: end - offset,
        });
    }
    choose(path, arch, usr_allowed, ours, &listed)
}

/// The primary GPT's sector size and used entries (numbered from 1), CRCs checked.
fn read_primary(
    file: &mut File,
) -> Result<(u64, Vec<(u32, gptman::GPTPartitionEntry)>), gptman::Error> {
    let mut last = gptman::Error::InvalidSignature;
    for sector in [512u64, 4096] {
        file.seek(SeekFrom::Start(sector))?;
        let header = match gptman::GPTHeader::read_from(file) {
            Ok(header) => header,
            Err(gptman::Error::InvalidSignature) => continue,
            Err(e) => return Err(e),
        };
        if header.number_of_partition_entries > 1024 || header.size_of_partition_entry != 128 {
            last = gptman::Error::InvalidHeaderSize;
            break;
        }
        let entries = header.read_partitions(file, sector)?;
        let used = (1u32..).zip(entries).filter(|(_, e)| e.is_used()).collect();
        return Ok((sector, used));
    }
    Err(last)
}

/// Picks the file system partition among `ours` (this arch's DPS partitions, auto-discoverable).
fn choose(
    path: &Path,
    arch: Arch,
    usr_allowed: bool,
    ours: Vec<Partition>,
    listed: &[String],
) -> Result<Ddi, DdiError> {
    let acceptable = |r: Role| r == Role::Root || (usr_allowed && r == Role::Usr);
    let candidates: Vec<&Partition> = ours.iter().filter(|p| acceptable(p.role)).collect();
    let fs = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(DdiError::NoPartition {
                path: path.to_path_buf(),
                wanted: if usr_allowed { "root or usr" } else { "root" },
                arch: arch.systemd(),
                first: format!(
                    "{}-{}",
                    if usr_allowed { "usr" } else { "root" },
                    arch.systemd()
                ),
                found: if listed.is_empty() {
                    "no partitions".into()
                } else {
                    listed.join(", ")
                },
            })
        }
        several => {
            return Err(DdiError::Ambiguous {
                path: path.to_path_buf(),
                arch: arch.systemd(),
                found: several
                    .iter()
                    .map(|p| format!("{} {}", p.number, p.role.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    let verity = ours
        .iter()
        .filter(|p| p.role.protects(fs.role))
        .cloned()
        .collect();
    Ok(Ddi { fs, verity })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::gpt::{regions, GptPartition};
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    /// A sparse disk of `size` bytes with `parts` as (type, first LBA, last LBA).
    fn disk(dir: &Path, size: u64, parts: &[(Guid, u64, u64)]) -> PathBuf {
        let list: Vec<GptPartition<'_>> = parts
            .iter()
            .enumerate()
            .map(|(i, (t, first, last))| GptPartition {
                type_guid: t.to_disk(),
                guid: Guid::derive(&[&[i as u8]]).to_disk(),
                first_lba: *first,
                last_lba: *last,
                name: "part",
            })
            .collect();
        let r = regions(size, Guid::derive(&[b"disk"]).to_disk(), &list, None).unwrap();
        let path = dir.join("ddi.raw");
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&r.head, 0).unwrap();
        f.write_all_at(&r.tail, size - r.tail.len() as u64).unwrap();
        path
    }

    fn usr(arch: Arch) -> Guid {
        type_guid(arch, Role::Usr)
    }

    #[test]
    fn finds_the_usr_partition_of_the_arch_and_its_verity() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(
            dir.path(),
            8 * MIB,
            &[
                (usr(Arch::Arm64), 2048, 4095),
                (usr(Arch::Amd64), 4096, 8191),
                (type_guid(Arch::Amd64, Role::UsrVerity), 8192, 10239),
                (type_guid(Arch::Amd64, Role::RootVerity), 10240, 12287),
            ],
        );
        let ddi = open(&path, Arch::Amd64, true).unwrap();
        assert_eq!(ddi.fs.number, 2);
        assert_eq!(ddi.fs.role, Role::Usr);
        assert_eq!((ddi.fs.offset, ddi.fs.len), (4096 * 512, 4096 * 512));
        assert_eq!(ddi.fs.label, "part");
        assert_eq!(ddi.verity.len(), 1, "only usr-verity protects usr");
        assert_eq!(ddi.verity[0].role, Role::UsrVerity);
        let arm = open(&path, Arch::Arm64, true).unwrap();
        assert_eq!((arm.fs.number, arm.verity.len()), (1, 0));
    }

    #[test]
    fn refuses_images_without_a_usable_partition_naming_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(
            dir.path(),
            4 * MIB,
            &[(usr(Arch::Arm64), 2048, 4095), (Guid::ESP, 4096, 6143)],
        );
        let err = open(&path, Arch::Amd64, true).unwrap_err().to_string();
        assert!(
            err.contains("without a root or usr partition for x86-64")
                && err.contains("(it has: 1 usr-arm64, 2 esp)")
                && err
                    .contains("fix: build the image for x86-64 (systemd-repart `Type=usr-x86-64`)"),
            "{err}"
        );
        let path = disk(dir.path(), 4 * MIB, &[(usr(Arch::Amd64), 2048, 4095)]);
        let err = open(&path, Arch::Amd64, false).unwrap_err().to_string();
        assert!(
            err.contains("without a root partition") && err.contains("Type=root-x86-64"),
            "confext images need a root partition: {err}"
        );
        let root = type_guid(Arch::Amd64, Role::Root);
        let path = disk(
            dir.path(),
            4 * MIB,
            &[(usr(Arch::Amd64), 2048, 4095), (root, 4096, 6143)],
        );
        let err = open(&path, Arch::Amd64, true).unwrap_err().to_string();
        assert!(
            err.contains("several candidate file system partitions (1 usr, 2 root)"),
            "{err}"
        );
    }

    #[test]
    fn ignores_no_auto_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(
            dir.path(),
            4 * MIB,
            &[
                (usr(Arch::Amd64), 2048, 4095),
                (usr(Arch::Amd64), 4096, 6143),
            ],
        );
        // Set bit 63 of partition 1's attributes (entry at LBA 2, attributes at byte 48) and
        // fix both CRCs the way a partitioning tool would: rewrite the table through gptman.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut gpt = gptman::GPT::read_from(&mut f, 512).unwrap();
        gpt[1].attribute_bits |= FLAG_NO_AUTO;
        gpt.write_into(&mut f).unwrap();
        let ddi = open(&path, Arch::Amd64, true).unwrap();
        assert_eq!(ddi.fs.number, 2);
    }

    #[test]
    fn refuses_damaged_tables_and_truncated_images() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path(), 4 * MIB, &[(usr(Arch::Amd64), 2048, 6143)]);
        let pristine = std::fs::read(&path).unwrap();
        // A flipped byte in the entry array: the primary's array CRC no longer matches.
        let mut bytes = pristine.clone();
        bytes[1024 + 40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = open(&path, Arch::Amd64, true).unwrap_err();
        assert!(matches!(err, DdiError::Table { .. }), "{err:?}");
        let chain = crate::error::chain_line(&err);
        assert!(
            err.to_string().contains("is damaged; fix:") && chain.contains("CRC32"),
            "{chain}"
        );
        // A flipped byte in the header itself.
        let mut bytes = pristine.clone();
        bytes[512 + 24] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = open(&path, Arch::Amd64, true).unwrap_err();
        assert!(crate::error::chain_line(&err).contains("CRC32"), "{err:?}");
        // Cut after the table: the partition lies beyond the end.
        std::fs::write(&path, &pristine[..2 * MIB as usize]).unwrap();
        let err = open(&path, Arch::Amd64, true).unwrap_err().to_string();
        assert!(
            err.contains(
                "partition 1 (usr-x86-64) ends at byte 3145728 but the file has only 2097152 bytes"
            ) && err.contains("truncated"),
            "{err}"
        );
        // Cut inside the table.
        std::fs::write(&path, &pristine[..1500]).unwrap();
        let err = open(&path, Arch::Amd64, true).unwrap_err();
        assert!(matches!(err, DdiError::Table { .. }), "{err:?}");
    }

    #[test]
    fn recognises_gpt_images_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path(), 2 * MIB, &[]);
        assert!(is_gpt(&mut File::open(&path).unwrap()).unwrap());
        let small = dir.path().join("small");
        std::fs::write(&small, b"hsqs").unwrap();
        assert!(!is_gpt(&mut File::open(&small).unwrap()).unwrap());
        std::fs::write(&small, vec![0u8; 8192]).unwrap();
        assert!(!is_gpt(&mut File::open(&small).unwrap()).unwrap());
        assert_eq!(type_name(usr(Arch::Arm64)), "usr-arm64");
        assert_eq!(
            type_guid(Arch::Amd64, Role::Usr).to_string(),
            "8484680C-9521-48C6-9C11-B0720656F69E"
        );
    }
}
