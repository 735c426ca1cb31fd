//! Every requested output, written from the one raw disk image.
//!
//! The disk content is produced once (the raw image); each converter streams
//! from it, reading only its data ranges. Independent outputs are written in
//! parallel, one worker per core. Each output is written to a temporary file
//! in the output directory, which is renamed into place only once every
//! output has succeeded, so a failed build leaves no partial artefact.
//!
//! The raw disk and every output are steps of the step cache ([`crate::cache`]): the disk
//! is keyed by its layout and its ESP files, each output by the disk's key and its format's
//! options. A hit is linked (or copied) into its temporary file; when every output is a hit,
//! the disk is not even written. The disk's plain sha256 (the raw image's manifest sum) is
//! hashed by one of the same workers while the others write the formats ([`Cache::sha256`]).

use crate::arch::Arch;
use crate::cache::{Cache, Key, KeyBuilder, Outcome, Product};
use crate::disk::guid::Guid;
use crate::error::{Error, Result};
use crate::format::{self, Format, OutputKind, Wrap};
use crate::io::outdir::OutDir;
use crate::plan::esp::DiskPlan;
use crate::plan::{Plan, PlatformPlan};
use crate::profile::units::human;
use crate::progress::{watch_file, Task};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tempfile::NamedTempFile;

/// What the converters need to know about the build.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The finished raw disk image.
    pub raw: &'a Path,
    /// Byte offset and size of the ESP inside it (for the ISO).
    pub esp: (u64, u64),
    /// Byte ranges of the raw image holding data compressed already (squashfs, the
    /// initramfs's compressed segment): the `.xz` and `.zst` wrappers, VMDK grains and the
    /// GCE tarball store them as they are.
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
    /// Whether it came from the step cache.
    pub outcome: Outcome,
}

/// One job of the outputs step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// A converted output (plain `raw` excluded: the raw image itself is that output).
    Output(OutputKind),
    /// The plain raw image's manifest sum: the disk's sha256, zeros included (2 GiB on aws).
    RawSum,
}

/// What a [`Work`] gave.
enum Done {
    Output(Written),
    RawSum(Product),
}

/// Runs `work` on up to `workers` threads, each job by `one`, and returns the results in the
/// order of `work`. The costliest start first ([`cost_rank`]), ties in the order given: started
/// last, a `.raw.zst` would run alone on one core after the quick formats are done. The
/// disk's sum is one of these jobs, not a thread beside them, so the step never runs more
/// threads than cores: beside two workers on two cores, it made three threads share them and
/// left one core idle at the end, when only the last of the formats was still running.
fn write_all<T: Send>(
    work: &[Work],
    workers: usize,
    one: impl Fn(Work) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let mut order: Vec<usize> = (0..work.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost_rank(work[i])));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, work.len().max(1)) {
            s.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let r = one(work[i]);
                    let failed = r.is_err();
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, r));
                    if failed {
                        // Stop handing out work: the build fails anyway.
                        next.store(work.len(), Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// How much work a job is, roughly, as a rank: a compression wrapper reads and compresses the
/// whole artefact, and the disk's sum hashes all of it, holes included (about as long: 1.1 s
/// of CPU against 1.15 s for the bench's `.raw.zst`); VMDK, OVA and the GCE tarball deflate
/// the disk's data; the ISO copies the ESP; qcow2 and VHD only copy the data clusters.
fn cost_rank(work: Work) -> u8 {
    let Work::Output(kind) = work else {
        return 3;
    };
    match (kind.wrap, kind.format) {
        (Some(_), _) => 3,
        (None, Format::Vmdk | Format::Ova | Format::GcpTar) => 2,
        (None, Format::Iso) => 1,
        (None, Format::Raw | Format::Qcow2 | Format::Vhd | Format::VhdDynamic) => 0,
    }
}

/// Writes output `kind` to `dest` as a sub-step of `step` named after its file; a wrapped
/// format is two: the format, then its compression. Progress is the bytes the file being
/// written holds.
fn write_one(ctx: &Context<'_>, kind: OutputKind, dest: &Path, step: &Task<'_>) -> Result<()> {
    let file_name = kind.file_name(ctx.platform, ctx.arch.debian());
    // Formats are watched from outside (the bytes their file holds); compression counts
    // the bytes it has read of its input, whose length is known.
    let produced = |name: &str, dest: &Path| -> Result<Vec<(u64, u64)>> {
        let task = step.sub(name, expected_bytes(ctx, kind.format));
        let stored = watch_file(&task, dest, || produce(ctx, kind.format, kind, dest))?;
        finish_with_size(task, dest)?;
        Ok(stored)
    };
    match kind.wrap {
        None => {
            produced(&file_name, dest)?;
        }
        Some(w) => {
            let plain = OutputKind { wrap: None, ..kind };
            let plain_name = plain.file_name(ctx.platform, ctx.arch.debian());
            let inner = ctx.work.join(&plain_name);
            let (source, stored) = if kind.format == Format::Raw {
                (ctx.raw, ctx.stored.to_vec())
            } else {
                (inner.as_path(), produced(&plain_name, &inner)?)
            };
            let len = std::fs::metadata(source)
                .map_err(Error::io("reading", source))?
                .len();
            let task = step.sub(&file_name, Some(len));
            wrap(source, dest, w, &stored, &task)?;
            finish_with_size(task, dest)?;
            if source == inner {
                let _ = std::fs::remove_file(&inner);
            }
        }
    }
    Ok(())
}

/// The bytes writing `format` stores, when that is known beforehand: the raw image's data for
/// the uncompressed conversions, the ESP for the ISO (which carries it whole); `None` for the
/// compressed ones, whose size is known only at the end.
fn expected_bytes(ctx: &Context<'_>, format: Format) -> Option<u64> {
    match format {
        Format::Raw | Format::Qcow2 | Format::Vhd | Format::VhdDynamic => data_bytes(ctx.raw).ok(),
        Format::Iso => Some(ctx.esp.1),
        Format::Vmdk | Format::Ova | Format::GcpTar => None,
    }
}

/// Ends `task` with the size of the file it wrote.
fn finish_with_size(task: Task<'_>, path: &Path) -> Result<()> {
    let size = std::fs::metadata(path)
        .map_err(Error::io("reading", path))?
        .len();
    task.finish(Some(size), &human(size));
    Ok(())
}

/// Compresses `input` into `output`, storing the byte ranges `stored` as they are and telling
/// `read` how much of `input` is done.
fn wrap(
    input: &Path,
    output: &Path,
    w: Wrap,
    stored: &[(u64, u64)],
    read: &Task<'_>,
) -> Result<()> {
    use crate::io::compress::{compress_file_metered, Compression, XzCheck};
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
    // One wrapper at a time: each may hold the encoders' whole memory budget (see
    // `io::compress`), and each already runs on every thread it may have.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    compress_file_metered(input, output, &c, stored, read)
        .map_err(|e| Error::format(format!("compressing {}", output.display()), e))?;
    Ok(())
}

/// Writes one container format, uncompressed, to `dest`. Returns the byte ranges of `dest`
/// that hold the raw image's compressed data as it is (raw, qcow2, both VHDs, ISO; VMDK and
/// OVA: the stored deflate blocks of their grains), none for the GCE tarball (gzip'd, its
/// own wrapper).
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
            let (_, runs) = format::qcow2::write_mapped(ctx.raw, &mut f, &opts)
                .map_err(|e| Error::format("writing the qcow2 image", e))?;
            return Ok(format::through(ctx.stored, &runs));
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
            let (_, runs) = format::vhd::write_dynamic_mapped(ctx.raw, dest, &opts)
                .map_err(|e| Error::format("writing the vhd image", e))?;
            return Ok(format::through(ctx.stored, &runs));
        }
        Format::Vmdk => {
            let (_, runs) = write_vmdk(ctx, dest)?;
            return Ok(format::through(ctx.stored, &runs));
        }
        Format::Ova => {
            // The VMDK goes straight into the archive: no scratch file, no second read.
            let mut opts = format::ova::OvaOptions {
                name: ctx.name.to_string(),
                capacity_bytes: 0,
                populated_bytes: 0,
                cpus: 2,
                memory_mib: 2048,
                arch: ctx.arch,
                mtime: ctx.epoch,
            };
            let guess = data_bytes(ctx.raw)?;
            let guessed = format::ova::OvaOptions {
                capacity_bytes: std::fs::metadata(ctx.raw)
                    .map_err(Error::io("reading", ctx.raw))?
                    .len(),
                populated_bytes: guess,
                ..opts.clone()
            };
            let ova_err = |e| Error::format("writing the ova archive", e);
            let mut ova = format::ova::Streamed::create(dest, &guessed, guess).map_err(ova_err)?;
            let (stats, runs) = vmdk_into(ctx, &mut ova)?;
            opts.capacity_bytes = stats.capacity_bytes;
            opts.populated_bytes = stats.populated_bytes;
            let packed = ova.finish(&opts).map_err(ova_err)?;
            let in_vmdk = format::through(ctx.stored, &runs);
            return Ok(in_vmdk
                .into_iter()
                .map(|(o, n)| (o + packed.disk_offset, n))
                .collect());
        }
        Format::GcpTar => {
            format::gcp::write(ctx.raw, dest, ctx.epoch, ctx.stored)
                .map_err(|e| Error::format("writing the gcp tar.gz", e))?;
        }
        Format::Iso => {
            let f = create(dest)?;
            let opts = format::iso::IsoOptions {
                volume_id: iso_volume_id(ctx.name),
                timestamp: i64::try_from(ctx.epoch).unwrap_or(i64::MAX),
                disk_guid: ctx.guids.0.to_disk(),
                esp_guid: ctx.guids.1.to_disk(),
                arch: ctx.arch,
            };
            // The ESP goes from the raw disk into its place in the ISO: no scratch copy.
            let stats = format::iso::write_file(ctx.raw, ctx.esp.0, ctx.esp.1, &f, &opts)
                .map_err(|e| Error::format("writing the iso image", e))?;
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

fn write_vmdk(
    ctx: &Context<'_>,
    dest: &Path,
) -> Result<(format::vmdk::VmdkStats, Vec<format::Run>)> {
    let f = std::fs::File::create(dest).map_err(Error::io("creating", dest))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let stats = vmdk_into(ctx, &mut w)?;
    std::io::Write::flush(&mut w).map_err(Error::io("writing", dest))?;
    Ok(stats)
}

/// The stream-optimized VMDK of the raw disk, written to `w`, and the runs of it that hold
/// raw bytes as they are (stored deflate blocks), for a wrapper to store.
fn vmdk_into(
    ctx: &Context<'_>,
    w: &mut impl std::io::Write,
) -> Result<(format::vmdk::VmdkStats, Vec<format::Run>)> {
    let cid = u32::from_le_bytes(
        Guid::derive(&[b"strata-vmdk-cid", ctx.seed]).0[..4]
            .try_into()
            .unwrap_or([0; 4]),
    );
    let opts = format::vmdk::VmdkOptions { cid };
    format::vmdk::write_mapped(ctx.raw, w, &opts, ctx.stored)
        .map_err(|e| Error::format("writing the vmdk image", e))
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

/// Copies a sparse file, writing only its data ranges (file to file in the kernel).
fn copy_sparse(src: &Path, dest: &Path) -> Result<()> {
    let input = std::fs::File::open(src).map_err(Error::io("reading", src))?;
    let len = input.metadata().map_err(Error::io("reading", src))?.len();
    let out = std::fs::File::create(dest).map_err(Error::io("creating", dest))?;
    out.set_len(len).map_err(Error::io("sizing", dest))?;
    crate::io::sparse::copy_data(&input, 0, len, &out, 0)
        .map_err(Error::io("copying into", dest))?;
    Ok(())
}

/// The formats step for one platform: the raw disk (written by `disk`)
/// into a temporary file of the output directory, then every conversion
/// of it; plain `raw` is the raw image itself. Returned in the order the
/// platform lists its outputs, plain raw first. The disk and each output are sub-steps of
/// `step`.
pub fn write_platform(
    plan: &Plan,
    pp: &PlatformPlan,
    dp: &DiskPlan,
    out: &OutDir,
    work: &Path,
    cache: &Cache,
    step: &Task<'_>,
) -> Result<Vec<Written>> {
    let raw_tmp = out.temp_file()?;
    let disk = Disk {
        plan,
        dp,
        cache,
        step,
        name: format!("{}-{}.disk", pp.platform.name, plan.arch.debian()),
        key: cache.enabled().then(|| disk_key(plan, dp)).transpose()?,
        fallback: raw_tmp.path(),
        made: Mutex::new(None),
    };
    let esp = dp.esp().ok_or_else(|| {
        Error::format("writing the disk", "the layout has no EFI system partition")
    })?;
    if pp
        .outputs
        .iter()
        .any(|k| matches!(k.format, Format::Vhd | Format::VhdDynamic))
    {
        format::vhd::check_size(raw_tmp.path(), dp.layout.size)
            .map_err(|e| Error::format("writing the vhd image", e))?;
    }
    let converted: Vec<OutputKind> = pp
        .outputs
        .iter()
        .copied()
        .filter(|k| !is_plain_raw(k))
        .collect();
    let ctx = Context {
        raw: raw_tmp.path(), // replaced by the disk's path when an output is made
        esp: (esp.offset, esp.size),
        stored: &[], // replaced by the disk's compressed ranges when an output is made
        guids: (dp.layout.guid, esp.guid),
        arch: plan.arch,
        name: &plan.name,
        platform: &pp.platform.name,
        epoch: plan.epoch,
        seed: &plan.seed,
        work,
        out_dir: out.path(),
    };
    let raw_kind = pp.outputs.iter().find(|k| is_plain_raw(k));
    // The converted outputs, then the plain raw image's sum (listed last: the wrappers,
    // which rank as high, start before it).
    let work: Vec<Work> = converted
        .iter()
        .map(|&k| Work::Output(k))
        .chain(raw_kind.map(|_| Work::RawSum))
        .collect();
    let mut raw_made = None;
    let mut files = Vec::with_capacity(converted.len() + 1);
    let done = write_all(&work, crate::par::jobs(), |w| match w {
        Work::Output(kind) => cached_output(&disk, &ctx, kind).map(Done::Output),
        Work::RawSum => {
            let made = disk.product()?;
            cache.sha256(&made)?;
            Ok(Done::RawSum(made))
        }
    })?;
    for d in done {
        match d {
            Done::Output(w) => files.push(w),
            Done::RawSum(made) => raw_made = Some(made),
        }
    }
    if let Some(made) = disk.made.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        // Every output is written from it: the disk's last reader is done.
        crate::io::pages::release(&[&made.path]);
    }
    if let (Some(raw_kind), Some(made)) = (raw_kind, raw_made) {
        if made.outcome != Outcome::Bypassed {
            place(&made.path, raw_tmp.path())?;
        }
        files.insert(
            0,
            Written {
                kind: *raw_kind,
                file_name: raw_kind.file_name(&pp.platform.name, plan.arch.debian()),
                tmp: raw_tmp,
                outcome: made.outcome,
            },
        );
    }
    Ok(files)
}

/// Bytes of `raw` that are data, not holes.
fn data_bytes(raw: &Path) -> Result<u64> {
    let f = std::fs::File::open(raw).map_err(Error::io("reading", raw))?;
    let ranges = crate::io::sparse::data_ranges(&f).map_err(Error::io("reading", raw))?;
    Ok(ranges.iter().map(|(_, n)| n).sum())
}

/// The raw disk of one platform, made (or found in the cache) when the first output that
/// is not cached needs it, and only then.
struct Disk<'a> {
    plan: &'a Plan,
    dp: &'a DiskPlan,
    cache: &'a Cache,
    /// The outputs step: the disk is a sub-step of it.
    step: &'a Task<'a>,
    /// Its name in the cache's records.
    name: String,
    /// Its key (`None`: the cache is off).
    key: Option<Key>,
    /// Where it goes when the cache is off: the plain raw output's temporary file.
    fallback: &'a Path,
    made: Mutex<Option<Product>>,
}

impl Disk<'_> {
    /// The disk, made on first use.
    fn product(&self) -> Result<Product> {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = made.as_ref() {
            return Ok(p.clone());
        }
        // Asked for only when the cache is on, and then `self.key` is set.
        let key = || {
            self.key.clone().ok_or_else(|| {
                Error::step(crate::error::ErrorKind::Io, "keying the disk", "no key")
            })
        };
        let task = self.step.sub(&self.name, None);
        let p = self
            .cache
            .get_or_make("disk", &self.name, key, self.fallback, |dest| {
                std::fs::File::create(dest).map_err(Error::io("creating", dest))?;
                watch_file(&task, dest, || {
                    crate::disk::write(
                        dest,
                        &self.dp.layout,
                        &self.dp.esp_files,
                        &crate::assets::esp::fat_options(&self.plan.seed, self.plan.epoch),
                    )
                })?;
                Ok(Default::default())
            })?;
        if !p.is_hit() {
            // The ESP's files are in the disk now; the outputs read the disk.
            let sources: Vec<&Path> = self
                .dp
                .esp_files
                .iter()
                .filter_map(|f| match &f.source {
                    crate::fs::fat::FatSource::Path(p) => Some(p.as_path()),
                    crate::fs::fat::FatSource::Bytes(_) => None,
                })
                .collect();
            crate::io::pages::release(&sources);
        }
        let data = data_bytes(&p.path)?;
        let detail = format!("{} ({} of data)", human(self.dp.layout.size), human(data));
        task.end(p.is_hit(), Some(data), &detail);
        *made = Some(p.clone());
        Ok(p)
    }
}

/// The disk's key: its layout (sizes, GUIDs), each ESP file, the FAT options.
fn disk_key(plan: &Plan, dp: &DiskPlan) -> Result<Key> {
    let mut k = KeyBuilder::new("disk");
    k.debug("layout", &dp.layout).debug(
        "fat",
        &crate::assets::esp::fat_options(&plan.seed, plan.epoch),
    );
    for f in &dp.esp_files {
        k.str("path", &f.path);
        match &f.source {
            crate::fs::fat::FatSource::Path(p) => {
                k.file("file", p).map_err(Error::io("reading", p))?;
            }
            crate::fs::fat::FatSource::Bytes(b) => {
                k.bytes("bytes", b);
            }
        }
    }
    Ok(k.finish())
}

/// One converted output through the step cache, into a temporary file of the output
/// directory.
fn cached_output(disk: &Disk<'_>, base: &Context<'_>, kind: OutputKind) -> Result<Written> {
    let file_name = kind.file_name(base.platform, base.arch.debian());
    let tmp = crate::io::outdir::artefact_temp_file(base.out_dir)
        .map_err(Error::io("creating a file in", base.out_dir))?;
    let key = || {
        let mut k = KeyBuilder::new("output");
        if let Some(d) = &disk.key {
            k.key("disk", d);
        }
        k.debug("kind", &kind)
            .debug("esp", &base.esp)
            .debug("guids", &base.guids)
            .str("arch", base.arch.debian())
            .str("name", base.name)
            .str("platform", base.platform)
            .u64("epoch", base.epoch)
            .bytes("seed", base.seed);
        Ok(k.finish())
    };
    let made = disk
        .cache
        .get_or_make("output", &file_name, key, tmp.path(), |dest| {
            let raw = disk.product()?.path;
            let stored = disk.dp.compressed_ranges(&raw)?;
            let ctx = Context {
                raw: &raw,
                stored: &stored,
                ..*base
            };
            write_one(&ctx, kind, dest, disk.step)?;
            Ok(Default::default())
        })?;
    if made.is_hit() {
        let size = std::fs::metadata(&made.path)
            .map_err(Error::io("reading", &made.path))?
            .len();
        disk.step
            .sub(&file_name, None)
            .cached(Some(size), &human(size));
    }
    if made.outcome != Outcome::Bypassed {
        place(&made.path, tmp.path())?;
    }
    if !made.is_hit() {
        // Written and hashed: the build does not read it again (see `crate::io::pages`).
        crate::io::pages::release(&[&made.path]);
    }
    Ok(Written {
        kind,
        file_name,
        tmp,
        outcome: made.outcome,
    })
}

/// Puts the cached artefact `src` at `dest`, an empty temporary file of the output
/// directory: a hard link (no bytes written) when both are on one file system and the
/// entry has the mode the umask gives a new artefact, else a sparse copy. A write to the
/// linked output later changes the entry's fingerprint, and the cache rebuilds it.
fn place(src: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| -> Result<u32> {
        let m = std::fs::metadata(p).map_err(Error::io("reading", p))?;
        Ok(m.permissions().mode() & 0o777)
    };
    // `dest` was made with the mode the umask gives an artefact.
    if mode(src)? == mode(dest)? {
        std::fs::remove_file(dest).map_err(Error::io("replacing", dest))?;
        if std::fs::hard_link(src, dest).is_ok() {
            return Ok(());
        }
    }
    copy_sparse(src, dest)
}

fn is_plain_raw(k: &OutputKind) -> bool {
    k.format == Format::Raw && k.wrap.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sparse::testutil;

    /// The costliest jobs are handed out first (the disk's sum after the wrapper listed before
    /// it), and come back in the order asked for.
    #[test]
    fn write_all_starts_the_costliest_and_keeps_the_order() {
        let kind = |format, wrap| OutputKind {
            format,
            wrap,
            qcow2_cluster_bits: 16,
        };
        let kinds = [
            kind(Format::Qcow2, None),
            kind(Format::Iso, None),
            kind(Format::Ova, None),
            kind(Format::Raw, Some(Wrap::Zst)),
        ];
        let started = Mutex::new(Vec::new());
        let work: Vec<Work> = kinds
            .iter()
            .map(|&k| Work::Output(k))
            .chain([Work::RawSum])
            .collect();
        let written = write_all(&work, 1, |w| {
            started.lock().unwrap().push(w);
            Ok(w)
        })
        .unwrap();
        let started = started.into_inner().unwrap();
        assert_eq!(started, [work[3], work[4], work[2], work[1], work[0]]);
        assert_eq!(written, work);
    }

    /// A context for the 48 MiB test image with its stored ranges.
    fn context<'a>(raw: &'a Path, stored: &'a [(u64, u64)], dir: &'a Path) -> Context<'a> {
        Context {
            raw,
            esp: (1 << 20, 8 << 20),
            stored,
            guids: (Guid([1; 16]), Guid([2; 16])),
            arch: Arch::Amd64,
            name: "strata-test",
            platform: "vmware",
            epoch: 1_700_000_000,
            seed: b"seed",
            work: dir,
            out_dir: dir,
        }
    }

    /// The VMDK's stored blocks, and the same blocks inside the OVA's disk member, are
    /// named as stored ranges; `.vmdk.xz` and `.ova.zst` decompress to the plain files byte
    /// for byte (judged by xz and zstd).
    #[test]
    fn vmdk_and_ova_wrappers_keep_the_stored_blocks_and_decompress_to_the_plain_file() {
        let (raw, stored) = testutil::compressed_image();
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(raw.path(), &stored, dir.path());
        let plain = |name: &str| {
            let dest = dir.path().join(format!("plain.{name}"));
            let kind = OutputKind::parse(name).unwrap();
            let ranges = produce(&ctx, kind.format, kind, &dest).unwrap();
            (dest, ranges)
        };
        let (vmdk, in_vmdk) = plain("vmdk");
        let (ova, in_ova) = plain("ova");
        let total = |r: &[(u64, u64)]| r.iter().map(|r| r.1).sum::<u64>();
        assert_eq!(total(&in_vmdk), total(&stored), "{in_vmdk:?}");
        assert_eq!(in_vmdk.len(), in_ova.len());
        let (v, o) = (testutil::bytes(&vmdk), testutil::bytes(&ova));
        let shift = in_ova[0].0 - in_vmdk[0].0;
        for (&(a, n), &(b, m)) in in_vmdk.iter().zip(&in_ova) {
            assert_eq!((b - a, m), (shift, n));
            let (a, b, n) = (a as usize, b as usize, n as usize);
            assert!(v[a..a + n] == o[b..b + n], "{a}+{n}");
        }

        assert!(
            testutil::have("xz") && testutil::have("zstd"),
            "xz and zstd judge"
        );
        for (name, tool, want) in [("vmdk.xz", "xz", &v), ("ova.zst", "zstd", &o)] {
            let kind = OutputKind::parse(name).unwrap();
            let dest = dir.path().join(format!("wrapped.{name}"));
            let step = Task::start(&(), "outputs", None);
            write_one(&ctx, kind, &dest, &step).unwrap();
            step.finish(None, "");
            let dest = dest.to_string_lossy();
            testutil::run(tool, &["-t", &dest]);
            let back = testutil::run(tool, &["-dc", &dest]).stdout;
            assert!(
                back == *want,
                "{name} does not decompress to the plain file"
            );
        }
    }

    #[test]
    fn stored_ranges_move_with_the_esp_into_the_iso() {
        // ESP at 1 MiB, 10 MiB long, in the raw image; at 300 KiB in the ISO.
        let (mib, kib) = (1 << 20, 1 << 10);
        let stored = [(0, 100), (mib - 10, 20), (2 * mib, 5), (11 * mib - 1, 10)];
        let got = in_iso(&stored, (mib, 10 * mib), 300 * kib);
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
