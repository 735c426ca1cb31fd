//! Every requested output, written from the one raw disk image.
//!
//! The disk content is produced once (the raw image); each converter streams
//! from it, reading only its data ranges. Independent outputs are written in
//! parallel, one worker per core. Each output is written to a temporary file
//! in the output directory, which is renamed into place only once every
//! output has succeeded, so a failed build leaves no partial artefact.

use crate::arch::Arch;
use crate::disk::guid::Guid;
use crate::error::{Error, Result};
use crate::format::{self, Format, OutputKind, Wrap};
use crate::io::outdir::OutDir;
use crate::plan::esp::DiskPlan;
use crate::plan::{Plan, PlatformPlan};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tempfile::NamedTempFile;

/// What the converters need to know about the build.
pub struct Context<'a> {
    /// The finished raw disk image.
    pub raw: &'a Path,
    /// Byte offset and size of the ESP inside it (for the ISO).
    pub esp: (u64, u64),
    /// Byte ranges of the raw image holding data compressed already (squashfs, the
    /// initramfs's compressed segment): the `.xz` and `.zst` wrappers store them as they are.
    pub stored: &'a [(u64, u64)],
    /// The disk GUID and the ESP's partition GUID (the ISO's GPT reuses them).
    pub guids: (Guid, Guid),
    /// Target architecture.
    pub arch: Arch,
    /// Profile name (OVA names, ISO volume id).
    pub name: &'a str,
    /// Platform name (file names).
    pub platform: &'a str,
    /// Timestamp for every header that holds one.
    pub epoch: u64,
    /// Seed for derived identifiers (VHD UUID, VMDK CID).
    pub seed: &'a [u8],
    /// Scratch directory for intermediate files.
    pub work: &'a Path,
    /// Where the outputs go.
    pub out_dir: &'a Path,
}

/// An output written to its temporary file, waiting to be renamed.
pub struct Written {
    /// What it is.
    pub kind: OutputKind,
    /// Its final file name.
    pub file_name: String,
    /// The temporary file holding it.
    pub tmp: NamedTempFile,
}

/// Writes `kinds` (plain `raw` excluded: the raw image itself is that
/// output) on up to `workers` threads.
pub fn write_all(ctx: &Context<'_>, kinds: &[OutputKind], workers: usize) -> Result<Vec<Written>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<Written>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, kinds.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(kind) = kinds.get(i) else { break };
                let r = write_one(ctx, *kind);
                let failed = r.is_err();
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, r));
                if failed {
                    // Stop handing out work: the build fails anyway.
                    next.store(kinds.len(), Ordering::SeqCst);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn write_one(ctx: &Context<'_>, kind: OutputKind) -> Result<Written> {
    let file_name = kind.file_name(ctx.platform, ctx.arch.debian());
    let tmp = crate::io::outdir::artefact_temp_file(ctx.out_dir)
        .map_err(Error::io("creating a file in", ctx.out_dir))?;
    match kind.wrap {
        None => {
            produce(ctx, kind.format, kind, tmp.path())?;
        }
        Some(w) => {
            let plain = OutputKind { wrap: None, ..kind };
            let inner = ctx
                .work
                .join(plain.file_name(ctx.platform, ctx.arch.debian()));
            if kind.format == Format::Raw {
                wrap(ctx.raw, tmp.path(), w, ctx.stored)?;
            } else {
                let stored = produce(ctx, kind.format, kind, &inner)?;
                wrap(&inner, tmp.path(), w, &stored)?;
                let _ = std::fs::remove_file(&inner);
            }
        }
    }
    Ok(Written {
        kind,
        file_name,
        tmp,
    })
}

/// Compresses `input` into `output`, storing the byte ranges `stored` as they are.
fn wrap(input: &Path, output: &Path, w: Wrap, stored: &[(u64, u64)]) -> Result<()> {
    use crate::io::compress::{compress_file, Compression, XzCheck};
    let threads = crate::par::jobs_u32();
    let c = match w {
        // xz's default preset and check, what `xz -T<n>` writes.
        Wrap::Xz => Compression::Xz {
            threads,
            preset: 6,
            check: XzCheck::Crc64,
        },
        Wrap::Zst => Compression::Zstd { level: 19, threads },
    };
    compress_file(input, output, &c, stored)
        .map_err(|e| Error::format(format!("compressing {}", output.display()), e))?;
    Ok(())
}

/// Writes one container format, uncompressed, to `dest`. Returns the byte ranges of `dest`
/// that hold the raw image's compressed data where the format keeps it at a known offset
/// (raw, fixed VHD, ISO), none for the others.
fn produce(
    ctx: &Context<'_>,
    format: Format,
    kind: OutputKind,
    dest: &Path,
) -> Result<Vec<(u64, u64)>> {
    let create = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .map_err(Error::io("creating", p))
    };
    match format {
        Format::Raw => {
            copy_sparse(ctx.raw, dest)?;
            return Ok(ctx.stored.to_vec());
        }
        Format::Qcow2 => {
            let mut f = create(dest)?;
            let opts = format::qcow2::Qcow2Options {
                cluster_bits: kind.qcow2_cluster_bits,
            };
            format::qcow2::write(ctx.raw, &mut f, &opts)
                .map_err(|e| Error::format("writing the qcow2 image", e))?;
        }
        Format::Vhd | Format::VhdDynamic => {
            let opts = format::vhd::VhdOptions {
                timestamp: format::vhd::vhd_timestamp(ctx.epoch),
                uuid: Guid::derive(&[b"strata-vhd", ctx.seed]).0,
            };
            if format == Format::Vhd {
                // A fixed VHD is the raw image followed by a footer: same offsets.
                format::vhd::write_fixed(ctx.raw, dest, &opts)
                    .map_err(|e| Error::format("writing the vhd image", e))?;
                return Ok(ctx.stored.to_vec());
            }
            format::vhd::write_dynamic(ctx.raw, dest, &opts)
                .map_err(|e| Error::format("writing the vhd image", e))?;
        }
        Format::Vmdk => {
            write_vmdk(ctx, dest)?;
        }
        Format::Ova => {
            let vmdk = ctx.work.join(format!("{}-{}.vmdk", ctx.name, ctx.arch));
            let stats = write_vmdk(ctx, &vmdk)?;
            let opts = format::ova::OvaOptions {
                name: ctx.name.to_string(),
                capacity_bytes: stats.capacity_bytes,
                populated_bytes: stats.populated_bytes,
                cpus: 2,
                memory_mib: 2048,
                arch: ctx.arch,
                mtime: ctx.epoch,
            };
            format::ova::write(&vmdk, dest, &opts)
                .map_err(|e| Error::format("writing the ova archive", e))?;
            let _ = std::fs::remove_file(&vmdk);
        }
        Format::GcpTar => {
            format::gcp::write(ctx.raw, dest, ctx.epoch)
                .map_err(|e| Error::format("writing the gcp tar.gz", e))?;
        }
        Format::Iso => {
            let esp = ctx.work.join(format!("esp-{}.img", ctx.arch));
            copy_range(ctx.raw, ctx.esp.0, ctx.esp.1, &esp)?;
            let mut f = create(dest)?;
            let opts = format::iso::IsoOptions {
                volume_id: iso_volume_id(ctx.name),
                timestamp: i64::try_from(ctx.epoch).unwrap_or(i64::MAX),
                disk_guid: ctx.guids.0.to_disk(),
                esp_guid: ctx.guids.1.to_disk(),
                arch: ctx.arch,
            };
            let stats = format::iso::write(&esp, &mut f, &opts)
                .map_err(|e| Error::format("writing the iso image", e))?;
            let _ = std::fs::remove_file(&esp);
            return Ok(in_iso(ctx.stored, ctx.esp, stats.esp_offset));
        }
    }
    Ok(Vec::new())
}

/// `stored` (ranges of the raw image) as ranges of an ISO that holds the raw image's ESP
/// (`esp`: offset and size in the raw image) at `iso_esp`; ranges outside the ESP are dropped.
fn in_iso(stored: &[(u64, u64)], esp: (u64, u64), iso_esp: u64) -> Vec<(u64, u64)> {
    stored
        .iter()
        .filter_map(|&(off, len)| {
            let (start, end) = (off.max(esp.0), (off + len).min(esp.0 + esp.1));
            (start < end).then(|| (start - esp.0 + iso_esp, end - start))
        })
        .collect()
}

fn write_vmdk(ctx: &Context<'_>, dest: &Path) -> Result<format::vmdk::VmdkStats> {
    let f = std::fs::File::create(dest).map_err(Error::io("creating", dest))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let cid = u32::from_le_bytes(
        Guid::derive(&[b"strata-vmdk-cid", ctx.seed]).0[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let stats = format::vmdk::write(ctx.raw, &mut w, &format::vmdk::VmdkOptions { cid })
        .map_err(|e| Error::format("writing the vmdk image", e))?;
    std::io::Write::flush(&mut w).map_err(Error::io("writing", dest))?;
    Ok(stats)
}

/// An ISO 9660 volume id: upper-case letters, digits and `_`, at most 32.
fn iso_volume_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if id.is_empty() {
        "STRATA".into()
    } else {
        id
    }
}

/// Copies a sparse file, writing only its data ranges.
fn copy_sparse(src: &Path, dest: &Path) -> Result<()> {
    let len = std::fs::metadata(src)
        .map_err(Error::io("reading", src))?
        .len();
    copy_range(src, 0, len, dest)
}

/// Copies `len` bytes at `offset` of `src` into a new sparse file.
fn copy_range(src: &Path, offset: u64, len: u64, dest: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let input = std::fs::File::open(src).map_err(Error::io("reading", src))?;
    let out = std::fs::File::create(dest).map_err(Error::io("creating", dest))?;
    out.set_len(len).map_err(Error::io("sizing", dest))?;
    let ranges = crate::io::sparse::data_ranges(&input).map_err(Error::io("reading", src))?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, n) in ranges {
        let (from, to) = (start.max(offset), (start + n).min(offset + len));
        let mut at = from;
        while at < to {
            let chunk = ((to - at) as usize).min(buf.len());
            input
                .read_exact_at(&mut buf[..chunk], at)
                .map_err(Error::io("reading", src))?;
            if !crate::io::sparse::is_zero(&buf[..chunk]) {
                out.write_all_at(&buf[..chunk], at - offset)
                    .map_err(Error::io("writing", dest))?;
            }
            at += chunk as u64;
        }
    }
    Ok(())
}

/// The formats step for one platform: the raw disk (written by `disk`)
/// into a temporary file of the output directory, then every conversion
/// of it; plain `raw` is the raw image itself. Returned in the order the
/// platform lists its outputs, plain raw first.
pub fn write_platform(
    plan: &Plan,
    pp: &PlatformPlan,
    dp: &DiskPlan,
    out: &OutDir,
    work: &Path,
) -> Result<Vec<Written>> {
    let raw_tmp = out.temp_file()?;
    crate::disk::write(
        raw_tmp.path(),
        &dp.layout,
        &dp.esp_files,
        &crate::assets::esp::fat_options(&plan.seed, plan.epoch),
    )?;
    let stored = dp.compressed_ranges(raw_tmp.path())?;
    let esp = dp.esp().ok_or_else(|| {
        Error::format("writing the disk", "the layout has no EFI system partition")
    })?;
    let converted: Vec<OutputKind> = pp
        .outputs
        .iter()
        .copied()
        .filter(|k| !is_plain_raw(k))
        .collect();
    let ctx = Context {
        raw: raw_tmp.path(),
        esp: (esp.offset, esp.size),
        stored: &stored,
        guids: (dp.layout.guid, esp.guid),
        arch: plan.arch,
        name: &plan.name,
        platform: &pp.platform.name,
        epoch: plan.epoch,
        seed: &plan.seed,
        work,
        out_dir: out.path(),
    };
    let workers = crate::par::jobs();
    let mut files = write_all(&ctx, &converted, workers)?;
    if let Some(raw_kind) = pp.outputs.iter().find(|k| is_plain_raw(k)) {
        files.insert(
            0,
            Written {
                kind: *raw_kind,
                file_name: raw_kind.file_name(&pp.platform.name, plan.arch.debian()),
                tmp: raw_tmp,
            },
        );
    }
    Ok(files)
}

fn is_plain_raw(k: &OutputKind) -> bool {
    k.format == Format::Raw && k.wrap.is_none()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_ranges_move_with_the_esp_into_the_iso() {
        // ESP at 1 MiB, 10 MiB long, in the raw image; at 300 KiB in the ISO.
        let (mib, kib) = (1 << 20, 1 << 10);
        let stored = [(0, 100), (mib - 10, 20), (2 * mib, 5), (11 * mib - 1, 10)];
        let got = super::in_iso(&stored, (mib, 10 * mib), 300 * kib);
        assert_eq!(
            got,
            vec![
                (300 * kib, 10),
                (300 * kib + mib, 5),
                (300 * kib + 10 * mib - 1, 1)
            ]
        );
    }
}
