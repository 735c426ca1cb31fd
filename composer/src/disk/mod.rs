//! The GPT disk: partition plan, protective MBR, primary and backup GPT
//! (written by [`gpt`], with gptman), in a sparse file.
//!
//! Partitions start on 1 MiB boundaries; the disk ends 1 MiB after the last
//! partition, which leaves room for the backup GPT. Only what is written
//! takes space: the file is extended with `set_len`, so unwritten ranges
//! stay holes.

pub mod ddi;
pub mod gpt;
pub mod guid;

use crate::disk::guid::Guid;
use crate::profile::platform::{PartitionKind, PartitionSpec};
use crate::profile::units::{human, round_up, Size, MIB};
use std::fs::File;
use std::io::{Seek, SeekFrom};

/// Logical sector size of the images strata writes.
pub const SECTOR: u64 = 512;

/// One partition, placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// GPT partition name.
    pub label: String,
    /// Its role.
    pub kind: PartitionKind,
    /// Unique partition GUID.
    pub guid: Guid,
    /// Byte offset of its first sector.
    pub offset: u64,
    /// Its size in bytes (a multiple of 1 MiB).
    pub size: u64,
}

impl Partition {
    /// The GPT type GUID of this partition's role.
    pub fn type_guid(&self) -> Guid {
        match self.kind {
            PartitionKind::Esp => Guid::ESP,
            PartitionKind::Linux => Guid::LINUX_DATA,
        }
    }
}

/// A placed layout: the whole disk and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Disk size in bytes.
    pub size: u64,
    /// Disk GUID.
    pub guid: Guid,
    /// Partitions in disk order.
    pub partitions: Vec<Partition>,
}

/// Why a layout cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The partitions do not fit the disk size asked for.
    #[error("the partitions need {need} but `disk.size` is {have}")]
    DiskTooSmall {
        /// What the partitions take (with GPT overhead).
        need: String,
        /// What was asked for.
        have: String,
    },
    /// A partition has no size and nothing decides one.
    #[error("partition `{0}` has size `auto` but only the EFI partition or the last partition of a fixed-size disk can")]
    UnsizedPartition(String),
}

/// Places `parts` on a disk. `sizes[i]` is the size of partition `i` when it
/// is decided by its contents (the ESP), `None` otherwise. GUIDs derive from `seed`.
pub fn plan(
    parts: &[PartitionSpec],
    sizes: &[Option<u64>],
    disk: Size,
    seed: &[u8],
) -> Result<Layout, LayoutError> {
    let mut placed = Vec::with_capacity(parts.len());
    let mut offset = MIB;
    for (i, spec) in parts.iter().enumerate() {
        let size = match (spec.size, sizes.get(i).copied().flatten()) {
            (Size::Bytes(b), _) => round_up(b, MIB),
            (Size::Auto, Some(b)) => round_up(b, MIB),
            (Size::Auto, None) => match disk {
                Size::Bytes(d) if i + 1 == parts.len() => {
                    (d.saturating_sub(MIB) / MIB * MIB).saturating_sub(offset)
                }
                _ => return Err(LayoutError::UnsizedPartition(spec.label.clone())),
            },
        };
        placed.push(Partition {
            label: spec.label.clone(),
            kind: spec.kind,
            guid: Guid::derive(&[b"strata-partition", seed, spec.label.as_bytes()]),
            offset,
            size,
        });
        offset += size;
    }
    let need = offset + MIB;
    let size = match disk {
        Size::Auto => need,
        Size::Bytes(d) if d >= need => d,
        Size::Bytes(d) => {
            return Err(LayoutError::DiskTooSmall {
                need: human(need),
                have: human(d),
            })
        }
    };
    Ok(Layout {
        size,
        guid: Guid::derive(&[b"strata-disk", seed]),
        partitions: placed,
    })
}

/// The disk step: GPT, then the ESP's FAT written in place through a
/// window on the file.
pub fn write(
    path: &std::path::Path,
    layout: &Layout,
    esp_files: &[crate::fs::fat::FatFile],
    fat: &crate::fs::fat::FatOptions,
) -> crate::error::Result<()> {
    use crate::error::Error;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("opening", path))?;
    write_gpt(&mut file, layout).map_err(Error::io("writing the partition table to", path))?;
    for p in &layout.partitions {
        if p.kind == PartitionKind::Esp {
            let mut win = crate::io::Window::new(&mut file, p.offset, p.size);
            crate::fs::fat::write(&mut win, p.size, esp_files, fat).map_err(|e| {
                let what = format!("writing the EFI system partition of {}", path.display());
                Error::format(what, e)
            })?;
        }
    }
    file.sync_all().map_err(Error::io("syncing", path))?;
    Ok(())
}

/// Sizes `file` to the layout (sparse) and writes the protective MBR and both GPTs
/// ([`gpt::regions`]); nothing else is written, so the rest stays holes.
pub fn write_gpt(file: &mut File, layout: &Layout) -> std::io::Result<()> {
    use std::io::Write;
    file.set_len(layout.size)?;
    let parts: Vec<gpt::GptPartition<'_>> = layout
        .partitions
        .iter()
        .map(|p| gpt::GptPartition {
            type_guid: p.type_guid().to_disk(),
            guid: p.guid.to_disk(),
            first_lba: p.offset / SECTOR,
            last_lba: (p.offset + p.size) / SECTOR - 1,
            name: &p.label,
        })
        .collect();
    let regions = gpt::regions(layout.size, layout.guid.to_disk(), &parts, None)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&regions.head)?;
    file.seek(SeekFrom::Start(layout.size - regions.tail.len() as u64))?;
    file.write_all(&regions.tail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp_only() -> Vec<PartitionSpec> {
        vec![PartitionSpec {
            label: "EFI".into(),
            kind: PartitionKind::Esp,
            size: Size::Auto,
        }]
    }

    #[test]
    fn auto_disk_fits_the_partitions() {
        let l = plan(&esp_only(), &[Some(40 * MIB + 1)], Size::Auto, b"seed").unwrap();
        assert_eq!(l.partitions[0].offset, MIB);
        assert_eq!(l.partitions[0].size, 41 * MIB);
        assert_eq!(l.size, 43 * MIB);
    }

    #[test]
    fn fixed_disk_too_small_is_refused() {
        let e = plan(&esp_only(), &[Some(40 * MIB)], Size::Bytes(20 * MIB), b"s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the partitions need 42 MiB but `disk.size` is 20 MiB"
        );
    }

    #[test]
    fn last_auto_partition_takes_the_rest() {
        let mut parts = esp_only();
        parts.push(PartitionSpec {
            label: "DATA".into(),
            kind: PartitionKind::Linux,
            size: Size::Auto,
        });
        let l = plan(
            &parts,
            &[Some(32 * MIB), None],
            Size::Bytes(100 * MIB),
            b"s",
        )
        .unwrap();
        assert_eq!(l.partitions[1].offset, 33 * MIB);
        assert_eq!(l.partitions[1].size, 66 * MIB);
    }

    #[test]
    fn gpt_reads_back_and_sgdisk_accepts_it() {
        let l = plan(&esp_only(), &[Some(33 * MIB)], Size::Auto, b"seed").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let mut f = File::create_new(&path).unwrap();
        write_gpt(&mut f, &l).unwrap();
        drop(f);
        let mut f = File::open(&path).unwrap();
        let gpt = gptman::GPT::find_from(&mut f).unwrap();
        assert_eq!(Guid::from_disk(gpt.header.disk_guid), l.guid);
        let p = &gpt[1];
        assert_eq!(Guid::from_disk(p.partition_type_guid), Guid::ESP);
        assert_eq!(p.partition_name.as_str(), "EFI");
        assert_eq!(p.starting_lba, 2048);
        // The file is sparse: nothing but the GPT structures is allocated.
        use std::os::unix::fs::MetadataExt;
        assert!(f.metadata().unwrap().blocks() * 512 < MIB);
        if crate::test_support::require_tool("sgdisk") {
            let out = std::process::Command::new("sgdisk")
                .arg("-v")
                .arg(&path)
                .output()
                .expect("run sgdisk");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("No problems found"),
                "{text}"
            );
        }
    }
}
