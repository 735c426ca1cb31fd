//! The `strata` binary: parses arguments, calls the library, maps errors to exit codes.

mod cli;

use clap::Parser;
use cli::{AccelArg, Cli, Command};
use std::process::ExitCode;
use std::time::Duration;
use strata::{bootcmd, build, platform, Arch, Error, ErrorKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit_code(e.kind())
        }
    }
}

/// Exit codes: 0 success, 1 the boot test failed, 2 bad input, 3 missing tool or firmware, 4 I/O.
fn exit_code(kind: ErrorKind) -> ExitCode {
    ExitCode::from(match kind {
        ErrorKind::BootFailed => 1,
        ErrorKind::InvalidInput | ErrorKind::Source => 2,
        ErrorKind::Environment => 3,
        ErrorKind::Io => 4,
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
        } => {
            let arch = arch
                .map(|a| {
                    Arch::parse(&a).ok_or_else(|| -> Error {
                        strata::InputError::new(
                            "--arch",
                            "",
                            format!("unknown architecture `{a}`"),
                            "use amd64 or arm64",
                        )
                        .into()
                    })
                })
                .transpose()?;
            let opts = build::BuildOptions {
                profile,
                out_dir: out,
                cache_dir: cache,
                arch,
                init,
                source_date_epoch: source_date_epoch()?,
            };
            let report = build::build(&opts, &mut |line| eprintln!("{line}"))?;
            let total: Duration = report.steps.iter().map(|(_, d)| *d).sum();
            for o in report.manifest.builds.iter().flat_map(|b| &b.outputs) {
                println!("{}", report.out_dir.join(&o.file).display());
            }
            let parts: Vec<String> = report
                .steps
                .iter()
                .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
                .collect();
            eprintln!("built in {:.1} s ({})", total.as_secs_f64(), parts.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Boot {
            artefact,
            json,
            timeout,
            accel,
            memory,
            media,
        } => {
            let opts = bootcmd::BootOptions {
                artefact: artefact.clone(),
                timeout: Duration::from_secs(timeout),
                accel: match accel {
                    AccelArg::Auto => strata_qemu::Accel::Auto,
                    AccelArg::Tcg => strata_qemu::Accel::Tcg,
                    AccelArg::Kvm => strata_qemu::Accel::Kvm,
                },
                memory_mib: memory,
                media,
            };
            let result = bootcmd::boot(&opts)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
            } else {
                println!("{}", bootcmd::summary(&artefact, &result));
            }
            Ok(if result.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Platforms => {
            for name in platform::names() {
                let p = platform::load(name).map_err(|m| Error::step("platforms", m))?;
                println!("{:<10} {}", p.name, p.description);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
