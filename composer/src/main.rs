//! The `strata` binary: parses arguments, calls the library, maps errors to exit codes.

mod cli;

use clap::Parser;
use cli::{AccelArg, CacheCommand, Cli, Command, ExtCommand};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use strata::profile::platform;
use strata::progress::{self, render};
use strata::{boot, build, Arch, Error, ErrorKind};

fn main() -> ExitCode {
    strata::par::bound_malloc_arenas();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Build { .. }) {
        // Before any thread exists: see strata::signals.
        if let Err(e) = strata::signals::install() {
            eprintln!("warning: cannot watch for SIGINT/SIGTERM ({e}); an interrupted build may leave temporary files until the next one");
        }
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", report(&e));
            exit_code(e.kind())
        }
    }
}

/// The error as printed: the message, each cause on its own line, the fix.
fn report(e: &Error) -> String {
    let mut chain = e.chain().into_iter();
    let mut out = format!("error: {}\n", chain.next().unwrap_or_default());
    for cause in chain {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    if let Some(hint) = e.hint() {
        out.push_str(&format!("  fix: {hint}\n"));
    }
    out
}

/// The one place kinds become exit codes (docs/cli.md lists them):
/// 0 success, 1 the boot test failed, 2 bad input, 3 missing tool or
/// firmware, 4 I/O, 5 a source or registry failed, 6 a format's limit.
fn exit_code(kind: ErrorKind) -> ExitCode {
    ExitCode::from(match kind {
        ErrorKind::BootFailed => 1,
        ErrorKind::InvalidInput => 2,
        ErrorKind::Environment => 3,
        ErrorKind::Io => 4,
        ErrorKind::Source => 5,
        ErrorKind::Format => 6,
    })
}

/// `strata boot` of one artefact: its summary line or result, exit 0 only if it passed.
fn boot_one(opts: &boot::BootOptions, json: bool) -> Result<ExitCode, Error> {
    let result = boot::boot(opts)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        println!("{}", boot::summary(&opts.artefact, &result));
    }
    if result.pass {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::BootFailed(format!(
            "the guest of {} did not report a good boot",
            opts.artefact.display()
        )))
    }
}

/// `strata boot` of several artefacts or directories: each case's line on stderr as it ends,
/// then the table (or JSON) on stdout and the JUnit file; exit 0 only if every case passed.
fn boot_many(
    paths: &[std::path::PathBuf],
    opts: &boot::BootOptions,
    jobs: Option<usize>,
    junit: Option<std::path::PathBuf>,
    json: bool,
) -> Result<ExitCode, Error> {
    use boot::many;
    if let Some(path) = &junit {
        let dir = strata::boot::artefact_dir(path);
        if !dir.is_dir() {
            return Err(strata::InputError::new(
                path,
                "--junit",
                format!("its directory {} does not exist", dir.display()),
                "create the directory first, or write the report elsewhere",
            )
            .into());
        }
    }
    let targets = many::targets(paths, opts)?;
    let budget = many::Budget::here(jobs, &targets);
    eprintln!(
        "booting {} artefact(s), {} at a time",
        targets.len(),
        budget.jobs
    );
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cases = many::run(&targets, opts, budget, &|c| match &c.outcome {
        many::Outcome::Booted(r) => eprintln!("{}", boot::summary(&c.target.artefact, r)),
        many::Outcome::Refused { message, .. } => {
            eprintln!("FAIL {}: {message}", c.target.artefact.display())
        }
    });
    let report = boot::report::Report {
        cases,
        started,
        hostname: boot::report::hostname(),
    };
    if let Some(path) = &junit {
        write_atomically(path, report.junit().as_bytes())?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).unwrap_or_default()
        );
    } else {
        print!("{}", report.table());
    }
    if report.pass() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::BootFailed(format!(
            "{} of {} artefact(s) did not pass",
            report.failed(),
            report.cases.len()
        )))
    }
}

/// Writes `bytes` to `path` through a temporary file beside it, so a reader never sees half a
/// report and a failed write leaves nothing behind.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let dir = strata::boot::artefact_dir(path);
    let mut tmp =
        tempfile::NamedTempFile::new_in(&dir).map_err(Error::io("creating a file in", &dir))?;
    tmp.write_all(bytes).map_err(Error::io("writing", path))?;
    tmp.persist(path)
        .map_err(|e| Error::io("writing", path)(e.error))?;
    Ok(())
}

/// `--arch`, checked.
fn parse_arch(a: &str) -> Result<Arch, Error> {
    Arch::parse(a).ok_or_else(|| -> Error {
        strata::InputError::new(
            "--arch",
            "",
            format!("unknown architecture `{a}`"),
            "use amd64 or arm64",
        )
        .into()
    })
}

fn run(cmd: Command) -> Result<ExitCode, Error> {
    match cmd {
        Command::Build {
            profile,
            out,
            arch,
            cache,
            init,
            offline,
            json,
            quiet,
            report,
            no_cache,
        } => {
            let arch = arch.as_deref().map(parse_arch).transpose()?;
            let opts = build::BuildOptions {
                profile,
                out_dir: out,
                cache_dir: cache,
                arch,
                init,
                offline,
                source_date_epoch: source_date_epoch()?,
                no_cache,
                dry_run: false,
            };
            let mode = match (json, quiet) {
                (_, true) => render::Mode::Quiet,
                (true, _) => render::Mode::Json,
                _ => render::Mode::Auto,
            };
            let terminal = std::io::stderr().is_terminal()
                && std::env::var_os("TERM").is_some_and(|t| t != "dumb");
            let sink = render::choose(
                mode,
                Box::new(std::io::stdout()),
                Box::new(std::io::stderr()),
                terminal,
            );
            let built = build::build(&opts, sink.as_ref())?;
            if let Some(path) = &report {
                write_build_report(path, &built)?;
            }
            tell_built(mode, &built);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            profile,
            arch,
            init,
            json,
        } => {
            let opts = strata::plan::Options {
                profile,
                arch: arch.as_deref().map(parse_arch).transpose()?,
                init,
                source_date_epoch: source_date_epoch()?,
                dry_run: true,
                ..Default::default()
            };
            let plan = strata::plan::plan(&opts, &mut |line| eprintln!("{line}"))?;
            let dump = plan.dump();
            if json {
                let text = serde_json::to_string_pretty(&dump)
                    .map_err(|e| Error::step(strata::ErrorKind::Io, "printing the plan", e))?;
                println!("{text}");
            } else {
                print!("{}", dump.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Boot {
            artefacts,
            json,
            junit,
            jobs,
            timeout,
            accel,
            memory,
            media,
            no_verify,
            keep_writes,
            setup_mode,
        } => {
            let opts = boot::BootOptions {
                artefact: artefacts[0].clone(),
                timeout: Duration::from_secs(timeout),
                accel: match accel {
                    AccelArg::Auto => strata_qemu::Accel::Auto,
                    AccelArg::Tcg => strata_qemu::Accel::Tcg,
                    AccelArg::Kvm => strata_qemu::Accel::Kvm,
                },
                memory_mib: memory,
                media,
                verify: !no_verify,
                keep_writes,
                setup_mode,
            };
            if artefacts.len() == 1 && artefacts[0].is_file() && junit.is_none() {
                boot_one(&opts, json)
            } else {
                boot_many(&artefacts, &opts, jobs.map(usize::from), junit, json)
            }
        }
        Command::Cache { cache, command } => {
            let root = cache.unwrap_or_else(strata::plan::default_cache_dir);
            cache_command(&root, command.unwrap_or(CacheCommand::Show))
        }
        Command::Ext {
            command:
                ExtCommand::Validate {
                    paths,
                    images,
                    reference,
                    os_version,
                    os_id,
                    os_release,
                    arch,
                    allow_paths,
                    confext,
                    insecure,
                    cache,
                },
        } => {
            let inputs = paths
                .into_iter()
                .map(strata::extension::validate::Input::Path)
                .chain(
                    images
                        .into_iter()
                        .map(strata::extension::validate::Input::Image),
                )
                .collect();
            let opts = ValidateOptions {
                reference,
                os_version,
                os_id,
                os_release,
                arch,
                allow_paths,
                confext,
                insecure,
                cache,
            };
            // Whatever went wrong before a table could be made, the input was unusable: 2.
            Ok(ext_validate(inputs, opts).unwrap_or_else(|e| {
                eprint!("{}", report(&e));
                ExitCode::from(2)
            }))
        }
        Command::Ext {
            command:
                ExtCommand::Pack {
                    dir,
                    oci_layout,
                    tag,
                    push,
                    insecure,
                    sysext,
                    confext,
                    name,
                    id,
                    version_id,
                    level,
                    extension_version,
                    arch,
                },
        } => {
            let arch = arch.as_deref().map(parse_arch).transpose()?;
            let epoch = source_date_epoch()?.unwrap_or(0);
            let fields = strata::extension::pack::ReleaseFields {
                id,
                version_id,
                level,
                extension_version,
            };
            if let Some((out, kind)) = sysext
                .map(|o| (o, strata::extension::source::Kind::Sysext))
                .or(confext.map(|o| (o, strata::extension::source::Kind::Confext)))
            {
                let image_name = name.unwrap_or_else(|| {
                    let f = out
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    f.strip_suffix(".raw").unwrap_or(&f).to_string()
                });
                let packed = strata::extension::pack::tree_to_raw(
                    &dir,
                    &out,
                    &image_name,
                    kind,
                    &fields,
                    arch,
                    epoch,
                )?;
                tell_packed(&packed);
                println!("{}", out.display());
                return Ok(ExitCode::SUCCESS);
            }
            let own_layout;
            let layout = match oci_layout {
                Some(l) => l,
                None => {
                    own_layout =
                        tempfile::tempdir().map_err(Error::io("creating", std::env::temp_dir()))?;
                    own_layout.path().to_path_buf()
                }
            };
            let packed =
                strata::extension::pack::talos_to_layout(&dir, &layout, &tag, arch, epoch)?;
            tell_packed(&packed);
            let digest = packed.result;
            if let Some(r) = push {
                let reference =
                    strata::source::oci::Reference::parse(&r).map_err(|e| -> Error {
                        strata::InputError::new(
                            "--push",
                            "",
                            "not an image reference",
                            "write `host/repo:tag`",
                        )
                        .caused_by(e)
                        .into()
                    })?;
                let opts = strata::source::oci::PullOptions {
                    insecure_registries: insecure,
                    ..Default::default()
                };
                let pushed = strata::source::oci::push(&layout, Some(&tag), &reference, &opts)
                    .map_err(|e| {
                        Error::step(strata::ErrorKind::Source, format!("pushing to {r}"), e)
                            .with_hint("check the registry address and your credentials")
                    })?;
                println!("{r}@{pushed}");
            } else {
                println!("{}:{tag}@{digest}", layout.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Platforms => {
            for name in platform::names() {
                let p = platform::load(name).map_err(|m| {
                    Error::step(
                        strata::ErrorKind::InvalidInput,
                        "loading the built-in platforms",
                        m,
                    )
                })?;
                println!("{:<10} {}", p.name, p.description);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The artefacts' paths on stdout (JSON: one `done` event) and the timings on stderr.
fn tell_built(mode: render::Mode, built: &build::BuildReport) {
    let outputs: Vec<String> = built
        .manifest
        .builds
        .iter()
        .flat_map(|b| &b.outputs)
        .map(|o| built.out_dir.join(&o.file).display().to_string())
        .collect();
    match mode {
        render::Mode::Quiet => {}
        render::Mode::Json => println!(
            "{}",
            serde_json::json!({
                "event": "done",
                "duration_ms": progress::millis(built.elapsed),
                "outputs": outputs,
            })
        ),
        render::Mode::Auto => {
            for o in &outputs {
                println!("{o}");
            }
            // In the steps' order, not the order they ended: `kernel` runs beside
            // `squashfs` and may end after it (docs/cli.md).
            let mut top: Vec<_> = built
                .steps
                .iter()
                .filter(|s| !s.step.contains('/'))
                .collect();
            top.sort_by_key(|s| progress::STEPS.iter().position(|n| *n == s.step));
            let parts: Vec<String> = top
                .iter()
                .map(|s| format!("{} {:.1} s", s.step, s.duration_ms as f64 / 1000.0))
                .collect();
            eprintln!(
                "built in {:.1} s ({})",
                built.elapsed.as_secs_f64(),
                parts.join(", ")
            );
        }
    }
}

/// `--report`: every step's timing and bytes, as JSON.
fn write_build_report(path: &std::path::Path, built: &build::BuildReport) -> Result<(), Error> {
    let report = serde_json::json!({
        "duration_ms": progress::millis(built.elapsed),
        "steps": built.steps,
    });
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::step(ErrorKind::Io, "writing the build report", e))?;
    std::fs::write(path, text + "\n").map_err(Error::io("writing", path))
}

/// `strata cache`: the listing or what a prune or verification removed, on stdout.
fn cache_command(root: &std::path::Path, command: CacheCommand) -> Result<ExitCode, Error> {
    use strata::cache::prune;
    let bad = |flag: &str, m: String| -> Error {
        strata::InputError::new(flag, "", m, "see `strata cache prune --help`").into()
    };
    let done = match command {
        CacheCommand::Show => {
            print!("{}", prune::show(root, std::time::SystemTime::now())?);
            return Ok(ExitCode::SUCCESS);
        }
        CacheCommand::Prune {
            older_than,
            max_size,
        } => {
            let age = older_than
                .map(|a| prune::parse_age(&a).map_err(|m| bad("--older-than", m)))
                .transpose()?;
            let size = max_size
                .map(|s| match strata::profile::units::Size::parse(&s) {
                    Ok(strata::profile::units::Size::Bytes(b)) => Ok(b),
                    Ok(_) => Err(bad("--max-size", format!("`{s}` is not a size"))),
                    Err(m) => Err(bad("--max-size", m)),
                })
                .transpose()?;
            prune::prune(root, age, size, std::time::SystemTime::now())?
        }
        CacheCommand::Verify => prune::verify_all(root)?,
    };
    println!("{}", prune::summary(&done));
    Ok(ExitCode::SUCCESS)
}

/// SOURCE_DATE_EPOCH, if set, as the reproducible-builds spec defines it.
fn source_date_epoch() -> Result<Option<u64>, Error> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse().map(Some).map_err(|_| {
            strata::InputError::new(
                "SOURCE_DATE_EPOCH",
                "",
                format!("`{v}` is not a number of seconds"),
                "set it to a Unix timestamp, e.g. `git log -1 --format=%ct`",
            )
            .into()
        }),
        _ => Ok(None),
    }
}

/// `strata ext pack`'s decisions and its validation findings, on stderr (stdout carries the
/// result for scripts).
fn tell_packed(packed: &strata::extension::pack::Packed) {
    for note in &packed.notes {
        eprintln!("note: {note}");
    }
    if !packed.report.findings.is_empty() {
        eprint!(
            "{}",
            strata::extension::findings::render_table(std::slice::from_ref(&packed.report))
        );
    }
}

/// The options of `strata ext validate` besides its inputs.
struct ValidateOptions {
    reference: Option<String>,
    os_version: Option<String>,
    os_id: Option<String>,
    os_release: Option<std::path::PathBuf>,
    arch: Option<String>,
    allow_paths: Vec<String>,
    confext: bool,
    insecure: Vec<String>,
    cache: Option<std::path::PathBuf>,
}

/// The os-release given with `--os-release`, refused unless it is a regular file.
fn read_os_release(
    p: &std::path::Path,
    arch: Option<Arch>,
) -> Result<strata::extension::sysext::HostRelease, Error> {
    let meta = std::fs::metadata(p).map_err(Error::io("reading", p))?;
    if !meta.is_file() {
        return Err(strata::InputError::new(
            p,
            "",
            "not a regular file (a FIFO, device or directory): refused without opening it",
            "give the base system's os-release file",
        )
        .into());
    }
    let text = std::fs::read_to_string(p).map_err(Error::io("reading", p))?;
    let a = arch.unwrap_or(Arch::Amd64);
    strata::extension::sysext::HostRelease::from_os_release(&text, a.debian()).map_err(|e| {
        strata::InputError::new(p, "", "not an os-release file", "give an os-release file")
            .caused_by(e)
            .into()
    })
}

/// `strata ext validate`: one report per input, rendered as a table. Exit 0 clean, 1 if
/// any finding is an error, 2 if an input could not be validated (named on stderr; the
/// others are still checked).
fn ext_validate(
    inputs: Vec<strata::extension::validate::Input>,
    o: ValidateOptions,
) -> Result<ExitCode, Error> {
    use strata::extension::{findings, validate};
    let arch = o.arch.as_deref().map(parse_arch).transpose()?;
    let host = o
        .os_release
        .as_deref()
        .map(|p| read_os_release(p, arch))
        .transpose()?;
    let ctx = validate::Context {
        os_id: o.os_id,
        os_version: o.os_version,
        arch: arch.map(|a| a.debian()),
        allow_paths: o.allow_paths,
        host,
    };
    let cache_root = o.cache.unwrap_or_else(strata::plan::default_cache_dir);
    let cache = strata::source::oci::Cache::new(&cache_root);
    let pull = strata::source::oci::PullOptions {
        insecure_registries: o.insecure,
        ..Default::default()
    };
    let scratch = tempfile::tempdir().map_err(Error::io("creating", std::env::temp_dir()))?;
    let fetch = validate::Fetch {
        pull: &pull,
        cache: &cache,
        scratch: scratch.path(),
        reference: o.reference.as_deref(),
    };
    let kind = o.confext.then_some(validate::Kind::Confext);
    let mut reports = Vec::new();
    let mut unusable = false;
    for input in &inputs {
        match validate::validate_input(input, kind, &ctx, &fetch) {
            Ok(r) => reports.push(r),
            Err(e) => {
                unusable = true;
                let e: Error = strata::InputError::new(
                    input.label(),
                    "",
                    "cannot validate",
                    "give an extension directory, a .raw image, an OCI layout, a docker archive, an extension-release file or --image REF",
                )
                .caused_by(e)
                .into();
                // Causes may quote names from inside an untrusted image.
                let text = report(&e);
                for line in text.lines() {
                    eprintln!("{}", findings::escape(line));
                }
            }
        }
    }
    if !reports.is_empty() {
        print!("{}", findings::render_table(&reports));
    }
    Ok(if unusable {
        ExitCode::from(2)
    } else if reports.iter().any(|r| r.has_errors()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
