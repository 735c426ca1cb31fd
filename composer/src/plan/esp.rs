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
use crate::fs::fat::FatFile;
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
    /// The EFI system partition of the layout.
    pub fn esp(&self) -> Option<&disk::Partition> {
        self.layout
            .partitions
            .iter()
            .find(|p| p.kind == PartitionKind::Esp)
    }
}

/// Plans `pp`'s ESP and disk around `initrd`.
pub fn disk_plan(
    plan: &Plan,
    pp: &PlatformPlan,
    kernel: &Kernel,
    initrd: &Path,
) -> Result<DiskPlan> {
    let entry = super::cmdline::boot_entry(&plan.name, &plan.os, &kernel.release, &pp.cmdline);
    esp::check_entry(&entry).map_err(|e| Error::format("writing the boot entry", e))?;
    let esp_files = esp::files(plan.arch, &plan.bootloader, &kernel.vmlinuz, initrd, &entry);
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
