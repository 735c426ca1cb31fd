//! One build, as a sequence of steps, each a call into its module:
//!
//! 1. **plan** (`plan/`): read the profile, resolve and check every input;
//!    nothing is written to the cache or the output directory before this
//!    passes;
//! 2. **kernel** (`source/kernel.rs` via `plan/kernel.rs`): unpack the .deb
//!    into the cache (once per package digest);
//! 3. **assets** (`assets/`): squashfs images of the root and each
//!    extension, the guest's files, one initramfs per module set;
//! 4. **disk plan** (`plan/esp.rs`): ESP contents and size, partition layout
//!    of every platform, before the first output is written;
//! 5. **disk and formats** (`disk/`, `format/output.rs`): the raw disk and
//!    its conversions, into temporary files of the output directory
//!    (`io/outdir.rs`), renamed into place when all exist;
//! 6. **manifest** (`manifest.rs`).
//!
//! Intermediate files live in a temporary directory under the cache and
//! vanish with it, whatever happens.

use crate::error::{Error, ErrorKind, Result};
use crate::io::outdir::OutDir;
use crate::manifest::{self, Manifest};
use crate::plan::{self, Plan};
use crate::profile::units::human;
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
    /// Wall time of each step.
    pub steps: Vec<(&'static str, Duration)>,
    /// Each cached step met, with its outcome (hit, miss, bypassed), in order.
    pub cache: Vec<crate::cache::Record>,
}

/// Runs a whole build. `progress` receives one line per step.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<BuildReport> {
    let mut steps = Vec::new();
    let mut timed = |name: &'static str, t: Instant| steps.push((name, t.elapsed()));

    let cache = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    crate::signals::watch(&cache.join("tmp"), false);
    crate::signals::watch(&cache.join("kernels"), false);
    let t = Instant::now();
    let opts = plan::Options {
        dry_run: false,
        ..opts.clone()
    };
    let plan = plan::plan(&opts, progress)?;
    progress(&format!(
        "[1/7] profile {} ({}, platform {})",
        plan.profile.display(),
        plan.arch,
        plan.platforms
            .iter()
            .map(|p| p.platform.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    timed("inputs", t);

    let t = Instant::now();
    let kernel = plan.kernel.load(&plan.cache)?;
    progress(&format!("[2/7] kernel {}", kernel.release));
    timed("kernel", t);

    let work = work_dir(&plan)?;
    let steps_cache = crate::cache::Cache::open(&plan.cache, !opts.no_cache)?;
    let t = Instant::now();
    let assets = crate::assets::make(&plan, &kernel, work.path(), &steps_cache, progress)?;
    verify_shipped_modules(&kernel, &assets)?;
    timed("squashfs+initramfs", t);

    // Every platform's disk is planned before anything is written: a
    // platform whose ESP does not fit fails before another's outputs land.
    let t = Instant::now();
    let disks = plan
        .platforms
        .iter()
        .zip(&assets.platforms)
        .map(|(pp, pa)| plan::esp::disk_plan(&plan, pp, &kernel, &pa.initrd))
        .collect::<Result<Vec<_>>>()?;
    for (pp, dp) in plan.platforms.iter().zip(&disks) {
        progress(&format!(
            "[5/7] {}: disk {} (ESP {}), outputs {}",
            pp.platform.name,
            human(dp.layout.size),
            human(dp.esp().map(|p| p.size).unwrap_or(0)),
            pp.outputs
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    timed("layout", t);

    let t = Instant::now();
    let out_dir = plan.out_dir.clone();
    crate::signals::watch(&out_dir, !out_dir.exists());
    let out = OutDir::open(&out_dir)?;
    let pending = plan
        .platforms
        .iter()
        .zip(&disks)
        .map(|(pp, dp)| {
            crate::format::output::write_platform(&plan, pp, dp, &out, work.path(), &steps_cache)
        })
        .collect::<Result<Vec<_>>>()?;
    // Every output exists: rename them all into place.
    let mut manifest = Manifest::read(&out_dir).ok();
    for (i, written) in pending.into_iter().enumerate() {
        let mut finals = Vec::new();
        for w in written {
            let note = w.note();
            let path = out.persist(w.tmp, &w.file_name)?;
            progress(&format!("[6/7] wrote {}{note}", path.display()));
            finals.push((w.kind, path));
        }
        let build = manifest::Build::from_build(&plan, i, &kernel, &assets, &finals)?;
        manifest = Some(Manifest::merge(manifest, &plan.name, build));
    }
    timed("outputs", t);

    let t = Instant::now();
    let manifest = manifest.ok_or_else(|| {
        Error::step(
            ErrorKind::InvalidInput,
            "writing the manifest",
            "no platform was built",
        )
    })?;
    let mpath = manifest::write(&out, &manifest)?;
    progress(&format!("[7/7] wrote {}", mpath.display()));
    timed("manifest", t);
    out.commit();
    Ok(BuildReport {
        out_dir,
        manifest,
        steps,
        cache: steps_cache.records(),
    })
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
