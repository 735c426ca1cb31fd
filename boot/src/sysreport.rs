//! The report from inside a running systemd, after the hand-over.
//!
//! The init's own report ends before the root's init starts, so it cannot
//! say whether the system came up. When the root's init is systemd, the
//! init installs, in `/run` (a tmpfs it moves into the new root, so the
//! root's own files are untouched):
//! - itself, as `/run/strata/strata-report` (the program looks at its own
//!   name, see [`is_reporter`]);
//! - `/run/strata/probes.json`: the files it checked (layer probes, profile
//!   files) with their sha256;
//! - `/run/systemd/system/strata-report.service`, wanted by and ordered after
//!   `multi-user.target` (`/run/systemd/system` is one of systemd's unit
//!   directories, and its `.wants/` symlink enables the unit there).
//!
//! The service waits for `systemctl is-system-running --wait` (up to
//! [`WAIT`]), asks systemd whether `multi-user.target` is active and which
//! units failed, hashes the probes again, and prints one `system` event on
//! the console. It is `Type=simple`, so its own start does not hold the boot
//! up (a oneshot would keep the system "starting" while it waits for it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_proto::initramfs::Probe;
use strata_proto::report::Event;

use crate::console::Console;
use crate::rootpath;
use crate::shipped::sha256_file;

/// The reporter's program name: the init runs as the reporter under it.
pub const REPORTER_NAME: &str = "strata-report";
/// The directory in `/run` the init leaves the reporter and its list in.
pub const RUN_DIR: &str = "run/strata";
/// The unit's name.
pub const UNIT: &str = "strata-report.service";
/// How long the reporter waits for the boot to finish.
pub const WAIT: Duration = Duration::from_secs(300);

/// The unit file.
const UNIT_TEXT: &str = "\
# Written by the strata init: reports how the boot went on the console.
[Unit]
Description=strata boot report from the running system
After=multi-user.target

[Service]
Type=simple
ExecStart=/run/strata/strata-report
StandardOutput=null
StandardError=journal
";

/// Installing the reporter failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the systemd reporter: cannot write {path}")]
pub struct Error {
    /// The file.
    path: PathBuf,
    /// Why not.
    #[source]
    source: std::io::Error,
}

/// True when this process was started as the reporter.
pub fn is_reporter(argv0: &str) -> bool {
    Path::new(argv0).file_name().and_then(|n| n.to_str()) == Some(REPORTER_NAME)
}

/// True when `init` (absolute, as the kernel command line names it)
/// resolves, inside `root`, to a program named `systemd`.
pub fn is_systemd(root: &Path, init: &Path) -> bool {
    rootpath::resolve(root, init)
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "systemd"))
        .unwrap_or(false)
}

/// Writes the reporter, its probe list and its unit under `run` (the
/// directory that becomes `/run`); `program` is the init's own binary.
pub fn install(run: &Path, program: &Path, probes: &[Probe]) -> Result<(), Error> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error { path, source }
    };
    let dir = run.join("strata");
    std::fs::create_dir_all(&dir).map_err(fail(&dir))?;
    let reporter = dir.join(REPORTER_NAME);
    std::fs::copy(program, &reporter).map_err(fail(&reporter))?;
    let list = dir.join("probes.json");
    let json = serde_json::to_vec_pretty(probes).unwrap_or_default();
    std::fs::write(&list, json).map_err(fail(&list))?;
    let units = run.join("systemd/system");
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).map_err(fail(&wants))?;
    let unit = units.join(UNIT);
    std::fs::write(&unit, UNIT_TEXT).map_err(fail(&unit))?;
    let link = wants.join(UNIT);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("../{UNIT}"), &link).map_err(fail(&link))?;
    Ok(())
}

/// The reporter: waits for the boot, prints one `system` event, exits 0.
pub fn run() -> ! {
    let mut console = Console::open();
    let state = wait_until_booted();
    let multi_user = systemctl(&["is-active", "multi-user.target"])
        .map(|out| out.trim() == "active")
        .unwrap_or(false);
    let failed = systemctl(&[
        "list-units",
        "--state=failed",
        "--plain",
        "--no-legend",
        "--no-pager",
    ])
    .map(|out| failed_units(&out))
    .unwrap_or_else(|err| vec![format!("(systemctl list-units failed: {err})")]);
    let (seen, missing) = check_probes(Path::new("/run/strata/probes.json"), Path::new("/"));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    console.emit(&Event::System {
        state,
        multi_user,
        hostname,
        failed,
        seen,
        missing,
    });
    std::process::exit(0)
}

/// `systemctl is-system-running --wait`, bounded by [`WAIT`]; its answer,
/// or what stopped it.
fn wait_until_booted() -> String {
    let child = Command::new("systemctl")
        .args(["is-system-running", "--wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => return format!("unknown (cannot run systemctl: {err})"),
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(200)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return format!("starting (still not booted after {} s)", WAIT.as_secs());
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out.trim().to_string()
}

fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unit names of `systemctl list-units --plain --no-legend` output.
pub fn failed_units(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Hashes each listed probe under `root`: (paths seen with their digest,
/// `path: why` for the others).
pub fn check_probes(list: &Path, root: &Path) -> (Vec<String>, Vec<String>) {
    let probes: Vec<Probe> = match std::fs::read(list)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(probes) => probes,
        Err(err) => return (Vec::new(), vec![format!("{}: {err}", list.display())]),
    };
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for p in probes {
        let at = root.join(p.path.trim_start_matches('/'));
        match sha256_file(&at) {
            Ok(digest) if digest.eq_ignore_ascii_case(&p.sha256) => seen.push(p.path),
            Ok(digest) => missing.push(format!(
                "{}: sha256 {digest}, expected {}",
                p.path, p.sha256
            )),
            Err(err) => missing.push(format!("{}: {err}", p.path)),
        }
    }
    (seen, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    #[test]
    fn the_reporter_is_recognised_by_its_name() {
        assert!(is_reporter("/run/strata/strata-report"));
        assert!(is_reporter("strata-report"));
        assert!(!is_reporter("/init"));
        assert!(!is_reporter("/run/strata/strata-report.old"));
    }

    #[test]
    fn systemd_is_recognised_through_symlinks_in_the_root() {
        let root = TestDir::new("sysreport-root");
        root.dir("lib/systemd").file("lib/systemd/systemd", b"elf");
        root.dir("sbin");
        std::os::unix::fs::symlink("/lib/systemd/systemd", root.0.join("sbin/init")).unwrap();
        assert!(is_systemd(&root.0, Path::new("/sbin/init")));
        root.file("bin/busybox", b"elf");
        std::os::unix::fs::symlink("../bin/busybox", root.0.join("sbin/busyinit")).unwrap();
        assert!(!is_systemd(&root.0, Path::new("/sbin/busyinit")));
        assert!(!is_systemd(&root.0, Path::new("/sbin/nothing")));
    }

    #[test]
    fn install_writes_the_unit_the_link_and_the_probes_and_they_check_out() {
        let dir = TestDir::new("sysreport-run");
        dir.file("init", b"program");
        dir.file("root/etc/hostname", b"box\n");
        let probes = vec![
            Probe {
                path: "/etc/hostname".into(),
                sha256: sha256_file(&dir.0.join("root/etc/hostname")).unwrap(),
            },
            Probe {
                path: "/etc/gone".into(),
                sha256: "00".repeat(32),
            },
        ];
        let run = dir.0.join("run");
        install(&run, &dir.0.join("init"), &probes).unwrap();
        install(&run, &dir.0.join("init"), &probes).unwrap();
        let unit =
            std::fs::read_to_string(run.join("systemd/system/strata-report.service")).unwrap();
        assert!(unit.contains("ExecStart=/run/strata/strata-report\n"));
        assert!(unit.contains("Type=simple\n"));
        let link = run.join("systemd/system/multi-user.target.wants/strata-report.service");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../strata-report.service")
        );
        assert_eq!(
            std::fs::read(run.join("strata/strata-report")).unwrap(),
            b"program"
        );
        let (seen, missing) = check_probes(&run.join("strata/probes.json"), &dir.0.join("root"));
        assert_eq!(seen, ["/etc/hostname"]);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("/etc/gone: "), "{missing:?}");
    }

    #[test]
    fn failed_units_are_the_first_column() {
        let text = "systemd-logind.service loaded failed failed User Login Management\nfoo.mount loaded failed failed /foo\n";
        assert_eq!(failed_units(text), ["systemd-logind.service", "foo.mount"]);
        assert!(failed_units("").is_empty());
    }
}
