//! One build, as a sequence of steps, each a call into its module:
//!
//! 1. **plan** (`plan/`): read the profile, resolve and check every input;
//!    nothing is written to the cache or the output directory before this
//!    passes;
//! 2. **kernel** (`source/kernel.rs` via `plan/kernel.rs`): unpack the .deb
//!    into the cache (once per package digest), on its own thread while step 3
//!    writes the images that do not need the kernel;
//! 3. **assets** (`assets/`): squashfs images of the root and each
//!    extension, the guest's files, one initramfs per module set (its
//!    compressed part made on the kernel's thread, alongside the images);
//! 4. **disk plan** (`plan/esp.rs`): ESP contents and size, partition layout
//!    of every platform, before the first output is written;
//! 5. **disk and formats** (`disk/`, `format/output.rs`): the raw disk and
//!    its conversions, into temporary files of the output directory
//!    (`io/outdir.rs`), renamed into place when all exist;
//! 6. **manifest** (`manifest.rs`).
//!
//! Intermediate files live in a temporary directory under the cache and
//! vanish with it, whatever happens.
//!
//! Each step is reported to a [`Sink`] as the progress steps of
//! [`crate::progress::STEPS`] (assets as `squashfs` and `initramfs`), with a
//! sub-step per image and output file; their timings come back in
//! [`BuildReport::steps`], not in the manifest (docs/cli.md says why).

use crate::error::{Error, ErrorKind, Result};
use crate::io::outdir::OutDir;
use crate::manifest::{self, Manifest};
use crate::plan::{self, Plan};
use crate::profile::units::human;
use crate::progress::{Recorder, Sink, StepRecord, Task};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::plan::default_cache_dir;

/// What `strata build` was asked to do: the plan's options (a build always writes, so
/// `dry_run` is ignored).
pub use crate::plan::Options as BuildOptions;

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The output directory.
    pub out_dir: PathBuf,
    /// The manifest written there.
    pub manifest: Manifest,
    /// Every step and sub-step that ended, in the order they ended: wall time, bytes made,
    /// cache hit. Not in the manifest, which must not change from one build to the next.
    pub steps: Vec<StepRecord>,
    /// Wall time of the whole build.
    pub elapsed: Duration,
    /// Each cached step met, with its outcome (hit, miss, bypassed), in order.
    pub cache: Vec<crate::cache::Record>,
}

/// Runs a whole build, telling `progress` what happens (see [`crate::progress`]).
pub fn build(opts: &BuildOptions, progress: &dyn Sink) -> Result<BuildReport> {
    let started = Instant::now();
    let recorder = Recorder::new(progress);
    let (out_dir, manifest, cache) = run(opts, &recorder)?;
    Ok(BuildReport {
        out_dir,
        manifest,
        steps: recorder.into_steps(),
        elapsed: started.elapsed(),
        cache,
    })
}

/// The steps, one after the other.
fn run(
    opts: &BuildOptions,
    progress: &dyn Sink,
) -> Result<(PathBuf, Manifest, Vec<crate::cache::Record>)> {
    let cache = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    crate::signals::watch(&cache.join("tmp"), false);
    crate::signals::watch(&cache.join("kernels"), false);
    let step = Task::start(progress, "inputs", None);
    let opts = plan::Options {
        dry_run: false,
        ..opts.clone()
    };
    let plan = plan::plan(&opts, &mut |line| crate::progress::note(progress, line))?;
    step.finish(
        None,
        &format!(
            "profile {} ({}, platform {})",
            plan.profile.display(),
            plan.arch,
            plan.platforms
                .iter()
                .map(|p| p.platform.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    let work = work_dir(&plan)?;
    let steps_cache = crate::cache::Cache::open(&plan.cache, !opts.no_cache)?;
    // The kernel is unpacked on its own thread while the images that do not need it are
    // written (see `assets::make`): the `kernel` step overlaps `squashfs`.
    let step = Task::start(progress, "kernel", None);
    let load_kernel = || {
        let kernel = plan.kernel.load(&plan.cache)?;
        step.finish(None, &kernel.release);
        Ok(kernel)
    };
    let (kernel, assets) =
        crate::assets::make(&plan, load_kernel, work.path(), &steps_cache, progress)?;
    verify_shipped_modules(&kernel, &assets)?;
    let ukis = crate::assets::uki::make(
        &plan,
        &kernel,
        &assets.platforms,
        work.path(),
        &steps_cache,
        progress,
    )?;

    // Every platform's disk is planned before anything is written: a
    // platform whose ESP does not fit fails before another's outputs land.
    let step = Task::start(progress, "layout", None);
    let disks = plan
        .platforms
        .iter()
        .zip(&assets.platforms)
        .zip(&ukis)
        .map(|((pp, pa), uki)| plan::esp::disk_plan(&plan, pp, &kernel, &pa.initrd, uki.as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let layouts: Vec<String> = plan
        .platforms
        .iter()
        .zip(&disks)
        .map(|(pp, dp)| {
            format!(
                "{}: disk {} (ESP {}), outputs {}",
                pp.platform.name,
                human(dp.layout.size),
                human(dp.esp().map(|p| p.size).unwrap_or(0)),
                pp.outputs
                    .iter()
                    .map(|o| o.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    step.finish(None, &layouts.join("; "));

    let step = Task::start(progress, "outputs", None);
    let out_dir = plan.out_dir.clone();
    crate::signals::watch(&out_dir, !out_dir.exists());
    let out = OutDir::open(&out_dir)?;
    let pending = plan
        .platforms
        .iter()
        .zip(&disks)
        .map(|(pp, dp)| {
            crate::format::output::write_platform(
                &plan,
                pp,
                dp,
                &out,
                work.path(),
                &steps_cache,
                &step,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    // Every output exists: rename them all into place.
    let mut manifest = Manifest::read(&out_dir).ok();
    let mut count = 0;
    for (i, written) in pending.into_iter().enumerate() {
        let mut finals = Vec::new();
        for w in written {
            let path = out.persist(w.tmp, &w.file_name)?;
            finals.push((w.kind, path));
        }
        count += finals.len();
        // Hashing every artefact for the manifest takes seconds on large disks: say so.
        let name = plan
            .platforms
            .get(i)
            .map_or("", |p| p.platform.name.as_str());
        let sums = step.sub(&format!("{name} checksums"), None);
        let pcr11 = ukis[i].as_ref().and_then(|u| u.pcr11.clone());
        let build = manifest::Build::from_build(&plan, i, &kernel, &assets, pcr11, &finals)?;
        sums.finish(None, &format!("sha256 of {} file(s)", finals.len()));
        manifest = Some(Manifest::merge(manifest, &plan.name, build));
    }
    step.finish(None, &format!("{count} file(s) in {}", out_dir.display()));

    let step = Task::start(progress, "manifest", None);
    let manifest = manifest.ok_or_else(|| {
        Error::step(
            ErrorKind::InvalidInput,
            "writing the manifest",
            "no platform was built",
        )
    })?;
    let mpath = manifest::write(&out, &manifest)?;
    step.finish(None, &format!("wrote {}", mpath.display()));
    out.commit();
    Ok((out_dir, manifest, steps_cache.records()))
}

/// The build's intermediate files: a temporary directory under the cache.
fn work_dir(plan: &Plan) -> Result<tempfile::TempDir> {
    let tmp = plan.cache.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(Error::io("creating", &tmp))?;
    tempfile::Builder::new()
        .prefix(&crate::signals::temp_prefix("build-"))
        .tempdir_in(&tmp)
        .map_err(Error::io("creating a work directory in", &plan.cache))
}

/// The kernel cache's modules that went into an initramfs still hash to what was unpacked
/// (a modified module must not ship); checked before any output is written.
fn verify_shipped_modules(
    kernel: &crate::source::kernel::Kernel,
    assets: &crate::assets::Assets,
) -> Result<()> {
    let shipped = assets
        .platforms
        .iter()
        .flat_map(|p| &p.modules)
        .map(|m| m.rel_path.as_path());
    kernel.verify_shipped(shipped).map_err(|e| {
        Error::step(
            ErrorKind::Io,
            "checking the kernel modules from the cache",
            e,
        )
    })
}
