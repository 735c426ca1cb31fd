//! The ESP contents, the ESP size and the disk layout of one platform.
//!
//! The ESP holds the kernel and the initramfs, so its size is known only
//! once the initramfs exists; the layout is decided then, for every
//! platform, before the first output is written, so an ESP that does not
//! fit fails without leaving another platform's outputs behind.

use super::{Plan, PlatformPlan};
use crate::assets::esp::{self, EspError};
use crate::disk;
use crate::error::{Error, Result};
use crate::fs::fat::{FatFile, FatSource};
use crate::profile::platform::PartitionKind;
use crate::source::kernel::Kernel;
use std::path::Path;

/// What one platform's disk holds and where.
pub struct DiskPlan {
    /// The files of the EFI system partition.
    pub esp_files: Vec<FatFile>,
    /// Partitions, sizes, GUIDs.
    pub layout: disk::Layout,
}

impl DiskPlan {
    /// Byte ranges `(offset, length)` of the raw disk `raw`, written from this plan, that
    /// hold data strata compressed itself: the squashfs images and the compressed segment of
    /// the initramfs, wherever the FAT put its clusters. The `.xz` and `.zst` wrappers store
    /// these instead of compressing them again.
    pub fn compressed_ranges(&self, raw: &Path) -> Result<Vec<(u64, u64)>> {
        let Some(esp) = self.esp() else {
            return Ok(Vec::new());
        };
        let initrd = self.esp_files.iter().find_map(|f| match &f.source {
            FatSource::Path(p) if f.path == esp::INITRD_PATH => Some(p),
            _ => None,
        });
        let Some(initrd) = initrd else {
            return Ok(Vec::new());
        };
        let inner = crate::assets::initramfs::compressed_ranges(initrd)
            .map_err(Error::io("reading the initramfs", initrd))?;
        let mut disk = std::fs::File::open(raw).map_err(Error::io("reading", raw))?;
        let mut volume = crate::io::Window::new(&mut disk, esp.offset, esp.size);
        let runs = crate::fs::fat::file_ranges(&mut volume, esp::INITRD_PATH)
            .map_err(|e| Error::format(format!("finding the initramfs in {}", raw.display()), e))?;
        Ok(map_ranges(&inner, &runs)
            .into_iter()
            .map(|(off, len)| (esp.offset + off, len))
            .collect())
    }

    /// The EFI system partition of the layout.
    pub fn esp(&self) -> Option<&disk::Partition> {
        self.layout
            .partitions
            .iter()
            .find(|p| p.kind == PartitionKind::Esp)
    }
}

/// `inner` (ranges of a file's bytes) through `runs` (where the file's bytes lie, in file
/// order): the same bytes as ranges of the device holding the file.
fn map_ranges(inner: &[(u64, u64)], runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut file_at = 0;
    for &(dev_off, run_len) in runs {
        let run = file_at..file_at + run_len;
        for &(off, len) in inner {
            let (start, end) = (off.max(run.start), (off + len).min(run.end));
            if start >= end {
                continue;
            }
            let dev_start = dev_off + (start - run.start);
            match out.last_mut() {
                Some((o, l)) if *o + *l == dev_start => *l += end - start,
                _ => out.push((dev_start, end - start)),
            }
        }
        file_at = run.end;
    }
    out
}

/// Plans `pp`'s ESP and disk around `initrd`, or around its unified kernel
/// image `uki` when the image boots one.
pub fn disk_plan(
    plan: &Plan,
    pp: &PlatformPlan,
    kernel: &Kernel,
    initrd: &Path,
    uki: Option<&crate::assets::uki::UkiFiles>,
) -> Result<DiskPlan> {
    let esp_files = match uki {
        Some(uki) => esp::uki_files(plan.arch, &plan.name, uki),
        None => {
            let entry =
                super::cmdline::boot_entry(&plan.name, &plan.os, &kernel.release, &pp.cmdline);
            esp::check_entry(&entry).map_err(|e| Error::format("writing the boot entry", e))?;
            esp::files(plan.arch, &plan.bootloader, &kernel.vmlinuz, initrd, &entry)
        }
    };
    let esp_size = esp::size(&esp_files, plan.esp_size).map_err(|e| match e {
        EspError::TooSmall { .. } => plan
            .blame
            .error(
                "disk.esp_size",
                e.to_string(),
                "remove `esp_size` (auto) or raise it to at least the size named",
            )
            .into(),
        other => Error::format("sizing the EFI system partition", other),
    })?;
    let parts = &pp.platform.disk.partitions;
    let sizes: Vec<Option<u64>> = parts
        .iter()
        .map(|p| (p.kind == PartitionKind::Esp).then_some(esp_size))
        .collect();
    let layout = disk::plan(parts, &sizes, pp.disk_size, &plan.seed).map_err(|e| -> Error {
        plan.blame
            .error(
                "disk.size",
                e.to_string(),
                "raise `disk.size` or leave it `auto`",
            )
            .into()
    })?;
    Ok(DiskPlan { esp_files, layout })
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_ranges_map_through_cluster_runs() {
        // The file is 0..100 at 1000, 100..150 at 5000, 150..300 at 1100.
        let runs = [(1000, 100), (5000, 50), (1100, 150)];
        let inner = [(10, 20), (90, 70), (200, 100)];
        let got = super::map_ranges(&inner, &runs);
        assert_eq!(
            got,
            vec![(1010, 20), (1090, 10), (5000, 50), (1100, 10), (1150, 100)]
        );
        assert!(super::map_ranges(&[], &runs).is_empty());
    }
}
