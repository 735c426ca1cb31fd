//! `strata boot` over many artefacts: which artefacts a command line names, and booting them
//! in parallel within a CPU and memory budget.
//!
//! A directory stands for every artefact of every build its `manifest.json` lists; a file for
//! itself. Each artefact gets its own work directory (`<artefact>.boot/`), so guests never share
//! a file. A guest under TCG keeps one core busy, so by default as many guests run as there are
//! cores, fewer when the memory the kernel reports available cannot hold their RAM plus QEMU's
//! own ([`strata_qemu::host::QEMU_OVERHEAD_MIB`]). A guest starts only while the memory of the
//! guests running plus its own fits the budget, so a few large guests never overcommit.
//!
//! A problem with one artefact (not matching its manifest, not unpackable, QEMU failing on it)
//! makes that artefact's case fail with the error as its reason; the others still boot.

use super::{boot, BootOptions};
use crate::error::{Error, ErrorKind, InputError, Result};
use crate::manifest::{Build, Manifest, Output};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Instant;
use strata_qemu::host::QEMU_OVERHEAD_MIB;
use strata_qemu::BootResult;

/// One artefact to boot, with what the report says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The artefact, as the command line named it (or its directory joined with the file name).
    pub artefact: PathBuf,
    /// The build it belongs to: `<profile>/<arch>/<platform>` (a JUnit testsuite).
    pub suite: String,
    /// The manifest's directory, which with arch and platform tells builds apart.
    pub dir: PathBuf,
    /// Target architecture.
    pub arch: String,
    /// Platform name.
    pub platform: String,
    /// The device model the guest gets.
    pub media: String,
    /// The guest's memory.
    pub memory_mib: u32,
}

/// How one artefact's test ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest ran; the result holds the verdict.
    Booted(Box<BootResult>),
    /// It could not be booted: the artefact is bad, or QEMU could not run it.
    Refused {
        /// The error's class (a bad artefact, or the machine).
        kind: ErrorKind,
        /// The error with its causes and fix, on one line.
        message: String,
    },
}

/// One artefact's test.
#[derive(Debug)]
pub struct Case {
    /// What was booted.
    pub target: Target,
    /// Its outcome.
    pub outcome: Outcome,
    /// Wall time of the whole case: checking, unpacking and booting.
    pub seconds: f64,
}

impl Case {
    /// True when the guest's report passed.
    pub fn pass(&self) -> bool {
        matches!(&self.outcome, Outcome::Booted(r) if r.pass)
    }

    /// Why it passed or failed.
    pub fn reason(&self) -> &str {
        match &self.outcome {
            Outcome::Booted(r) => &r.reason,
            Outcome::Refused { message, .. } => message,
        }
    }

    /// The run's files (serial log, QEMU's log, result.json) live here.
    pub fn work_dir(&self) -> PathBuf {
        super::work_dir(&self.target.artefact)
    }
}

/// How many guests may run at once, and how much memory they may take together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Guests at once.
    pub jobs: usize,
    /// MiB for all running guests (their RAM plus QEMU's own), `u64::MAX` when unknown.
    pub memory_mib: u64,
}

impl Budget {
    /// `jobs` if given, else one guest per core as far as `available_mib` holds the largest
    /// guest (at least one). The memory limit is what is available either way.
    pub fn new(
        jobs: Option<usize>,
        cores: usize,
        available_mib: Option<u64>,
        targets: &[Target],
    ) -> Budget {
        let memory_mib = available_mib.unwrap_or(u64::MAX);
        let largest = targets.iter().map(cost_mib).max().unwrap_or(1).max(1);
        let fit = usize::try_from(memory_mib / largest).unwrap_or(usize::MAX);
        let jobs = jobs.unwrap_or_else(|| cores.min(fit)).max(1);
        Budget { jobs, memory_mib }
    }

    /// [`Budget::new`] for this machine: its cores (or `STRATA_JOBS`) and available memory.
    pub fn here(jobs: Option<usize>, targets: &[Target]) -> Budget {
        let available = strata_qemu::host::available_memory_mib();
        Budget::new(jobs, crate::par::jobs(), available, targets)
    }
}

/// What one guest costs the memory budget.
fn cost_mib(t: &Target) -> u64 {
    u64::from(t.memory_mib) + QEMU_OVERHEAD_MIB
}

/// The artefacts `paths` name, in order, each once: a directory's in its manifest's order
/// (builds by arch and platform, then outputs), a file as given. `opts` supplies the overrides
/// of device model and memory.
pub fn targets(paths: &[PathBuf], opts: &BootOptions) -> Result<Vec<Target>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for path in paths {
        for t in targets_of(path, opts)? {
            let key = std::fs::canonicalize(&t.artefact).unwrap_or_else(|_| t.artefact.clone());
            if seen.insert(key) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// The targets of one command-line path.
fn targets_of(path: &Path, opts: &BootOptions) -> Result<Vec<Target>> {
    if path.is_dir() {
        let manifest = read_manifest(path)?;
        let name = manifest.name.as_str();
        let list: Vec<Target> = manifest
            .builds
            .iter()
            .flat_map(|b| {
                b.outputs
                    .iter()
                    .map(move |o| target(name, path, b, o, opts))
            })
            .collect();
        if list.is_empty() {
            return Err(InputError::new(
                path.join(crate::manifest::FILE_NAME),
                "builds",
                "lists no artefact",
                "build the profile into this directory first",
            )
            .into());
        }
        return Ok(list);
    }
    if !path.is_file() {
        return Err(InputError::new(
            path,
            "",
            "artefact not found",
            "give a file written by `strata build` (e.g. out/default/metal-amd64.raw) or its output directory",
        )
        .into());
    }
    let dir = super::artefact_dir(path);
    let manifest = read_manifest(&dir)?;
    let (build, output) = super::listed(&manifest, &dir, path)?;
    Ok(vec![target(&manifest.name, &dir, build, output, opts)])
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    Manifest::read(dir).map_err(|e| -> Error {
        InputError::new(
            dir.join(crate::manifest::FILE_NAME),
            "",
            "cannot read the build manifest",
            "boot artefacts in the output directory of `strata build`, beside its manifest.json",
        )
        .caused_by(e)
        .into()
    })
}

fn target(name: &str, dir: &Path, b: &Build, o: &Output, opts: &BootOptions) -> Target {
    Target {
        artefact: dir.join(&o.file),
        suite: format!("{name}/{}/{}", b.arch, b.platform),
        dir: dir.to_path_buf(),
        arch: b.arch.clone(),
        platform: b.platform.clone(),
        media: opts
            .media
            .clone()
            .or_else(|| o.media.clone())
            .unwrap_or_else(|| b.boot_test.media.clone()),
        memory_mib: opts.memory_mib.unwrap_or(b.boot_test.memory_mib),
    }
}

/// Boots every target within `budget`, calling `done` as each case ends (in the order they
/// end); the cases come back in the targets' order.
pub fn run(
    targets: &[Target],
    opts: &BootOptions,
    budget: Budget,
    done: &(dyn Fn(&Case) + Sync),
) -> Vec<Case> {
    let gate = Gate::new(budget.memory_mib);
    crate::par::map(targets, budget.jobs, |t| {
        let cost = cost_mib(t);
        gate.enter(cost);
        let case = run_one(t, opts);
        gate.leave(cost);
        done(&case);
        case
    })
}

/// Boots one target; every error becomes the case's reason.
fn run_one(t: &Target, opts: &BootOptions) -> Case {
    let started = Instant::now();
    let opts = BootOptions {
        artefact: t.artefact.clone(),
        ..opts.clone()
    };
    let outcome = match boot(&opts) {
        Ok(r) => Outcome::Booted(Box::new(r)),
        Err(e) => Outcome::Refused {
            kind: e.kind(),
            message: one_line(&e),
        },
    };
    Case {
        target: t.clone(),
        outcome,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// An error, its causes and its fix on one line, for a table cell or a report.
pub fn one_line(e: &Error) -> String {
    let mut line = e.chain().join(": ");
    if let Some(hint) = e.hint() {
        line.push_str(&format!(" (fix: {hint})"));
    }
    line
}

/// Admits guests while their memory fits: one always runs, however large, so a guest larger
/// than the budget still boots (alone).
struct Gate {
    limit: u64,
    state: Mutex<(u64, usize)>,
    freed: Condvar,
}

impl Gate {
    fn new(limit: u64) -> Gate {
        Gate {
            limit,
            state: Mutex::new((0, 0)),
            freed: Condvar::new(),
        }
    }

    /// Waits until `cost` more fits (or nothing runs), then takes it.
    fn enter(&self, cost: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.1 > 0 && s.0.saturating_add(cost) > self.limit {
            s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.0 += cost;
        s.1 += 1;
    }

    /// Gives `cost` back and wakes the waiting.
    fn leave(&self, cost: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 -= cost;
        s.1 -= 1;
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    fn t(memory_mib: u32) -> Target {
        Target {
            artefact: "a.raw".into(),
            suite: "s/amd64/metal".into(),
            dir: ".".into(),
            arch: "amd64".into(),
            platform: "metal".into(),
            media: "virtio-blk".into(),
            memory_mib,
        }
    }

    #[test]
    fn jobs_default_to_cores_as_far_as_memory_holds_the_largest_guest() {
        let ts = [t(512), t(1024)];
        // 1024 + 256 MiB a guest: 4000 MiB hold three.
        assert_eq!(Budget::new(None, 8, Some(4000), &ts).jobs, 3);
        assert_eq!(Budget::new(None, 2, Some(40_000), &ts).jobs, 2);
        assert_eq!(Budget::new(None, 8, Some(100), &ts).jobs, 1);
        assert_eq!(Budget::new(None, 8, None, &ts).jobs, 8);
        let given = Budget::new(Some(5), 2, Some(100), &ts);
        assert_eq!((given.jobs, given.memory_mib), (5, 100));
    }

    #[test]
    fn the_gate_keeps_running_guests_within_memory() {
        let gate = Gate::new(1000);
        let used = AtomicU64::new(0);
        let peak = AtomicU64::new(0);
        let running = AtomicUsize::new(0);
        let peak_running = AtomicUsize::new(0);
        let costs = [400u64, 400, 400, 900, 2000, 300, 300];
        crate::par::map(&costs, 4, |&c| {
            gate.enter(c);
            let now = used.fetch_add(c, Ordering::SeqCst) + c;
            peak.fetch_max(now, Ordering::SeqCst);
            let r = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak_running.fetch_max(r, Ordering::SeqCst);
            if c == 2000 {
                // Larger than the whole budget: it runs, but alone.
                assert_eq!(r, 1);
            }
            std::thread::sleep(Duration::from_millis(20));
            used.fetch_sub(c, Ordering::SeqCst);
            running.fetch_sub(1, Ordering::SeqCst);
            gate.leave(c);
        });
        assert!(peak.load(Ordering::SeqCst) <= 2000);
        assert!(
            peak_running.load(Ordering::SeqCst) >= 2,
            "nothing ran in parallel"
        );
    }

    fn opts() -> BootOptions {
        BootOptions {
            artefact: PathBuf::new(),
            timeout: Duration::from_secs(1),
            accel: strata_qemu::Accel::Tcg,
            memory_mib: None,
            media: None,
            verify: true,
            keep_writes: false,
            setup_mode: false,
        }
    }

    /// An output directory with two builds of two artefacts each.
    fn outdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let build = |arch: &str, platform: &str, files: &[&str]| {
            serde_json::json!({
                "arch": arch, "platform": platform,
                "os": {"id": "x", "version": "1"},
                "cmdline": "", "kernel_release": "", "inputs": [], "extensions": [],
                "modules": [], "boot_test": {"media": "nvme", "memory_mib": 512},
                "epoch": 0,
                "outputs": files.iter().map(|f| serde_json::json!({
                    "file": f, "format": "raw", "size": 1, "sha256": "00",
                    "media": if f.ends_with(".iso") { Some("cdrom") } else { None },
                })).collect::<Vec<_>>()
            })
        };
        let manifest = serde_json::json!({
            "strata": "0", "name": "p",
            "builds": [build("amd64", "aws", &["aws.raw"]),
                       build("amd64", "metal", &["metal.raw", "metal.iso"])]
        });
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        for f in ["aws.raw", "metal.raw", "metal.iso"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        dir
    }

    #[test]
    fn a_directory_stands_for_every_artefact_of_its_manifest_each_once() {
        let dir = outdir();
        let d = dir.path().to_path_buf();
        let ts = targets(&[d.clone(), d.join("metal.iso"), d.clone()], &opts()).unwrap();
        let names: Vec<_> = ts
            .iter()
            .map(|t| (t.suite.as_str(), t.artefact.clone(), t.media.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("p/amd64/aws", d.join("aws.raw"), "nvme"),
                ("p/amd64/metal", d.join("metal.raw"), "nvme"),
                ("p/amd64/metal", d.join("metal.iso"), "cdrom"),
            ]
        );
        let mut o = opts();
        o.media = Some("ahci".into());
        o.memory_mib = Some(2048);
        let ts = targets(&[d.join("metal.iso")], &o).unwrap();
        assert_eq!((ts[0].media.as_str(), ts[0].memory_mib), ("ahci", 2048));
    }

    #[test]
    fn a_path_that_is_no_artefact_is_refused_before_anything_boots() {
        let dir = outdir();
        let d = dir.path();
        let missing = targets(&[d.to_path_buf(), d.join("nope.raw")], &opts()).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::InvalidInput);
        assert!(missing.to_string().contains("nope.raw"), "{missing}");
        std::fs::write(d.join("stray.raw"), b"x").unwrap();
        let unlisted = targets(&[d.join("stray.raw")], &opts()).unwrap_err();
        assert!(unlisted.to_string().contains("not listed"), "{unlisted}");
        let empty = tempfile::tempdir().unwrap();
        let no_manifest = targets(&[empty.path().to_path_buf()], &opts()).unwrap_err();
        assert!(
            one_line(&no_manifest).contains("manifest.json"),
            "{no_manifest}"
        );
    }

    #[test]
    fn a_bad_artefact_fails_its_case_and_the_others_still_run() {
        let dir = outdir();
        let ts = targets(&[dir.path().to_path_buf()], &opts()).unwrap();
        let ended = AtomicUsize::new(0);
        let budget = Budget::new(Some(2), 2, None, &ts);
        let cases = run(&ts, &opts(), budget, &|_| {
            ended.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ended.load(Ordering::SeqCst), 3);
        assert_eq!(cases.len(), 3);
        for (c, t) in cases.iter().zip(&ts) {
            assert_eq!(&c.target, t);
            assert!(!c.pass());
            // Every file's sum differs from the manifest's: refused before QEMU.
            assert!(
                c.reason().contains("does not match manifest.json"),
                "{}",
                c.reason()
            );
            assert!(matches!(
                c.outcome,
                Outcome::Refused {
                    kind: ErrorKind::InvalidInput,
                    ..
                }
            ));
        }
    }
}
