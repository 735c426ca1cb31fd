//! Talos extension services, started once each for the boot test
//! (`boot_test.services: true`).
//!
//! Talos reads a service's spec from `/usr/local/etc/containers/<name>.yaml`
//! and runs its `container.entrypoint` with `args` and `environment` in the
//! container root `/usr/local/lib/containers/<name>`. Here each one is
//! started the same way from the merged root, before the hand-over: in a
//! child with its own mount and PID namespaces (a middle process unshares
//! them and forks the service, which is PID 1 of its namespace and dies with
//! the middle), chrooted into its container root, with exactly the spec's
//! environment (`PATH` defaults to Talos' when the spec sets none), stdin on
//! `/dev/null` and stdout/stderr on a pipe the init reads for the report.
//!
//! Judged: the entrypoint exists in the container root and executes (an
//! `exec` failure is told by errno: a missing interpreter, a program for
//! another machine, not executable); `restart: never` (and `untilSuccess`)
//! must exit 0 within [`EXIT_WAIT`], else its status (and what it printed)
//! is the reason; `restart: always` must still run after [`ALIVE_WAIT`].
//! A program that exits 127 saying `error while loading shared libraries`
//! could not find its libraries. The service is killed afterwards.
//! Not supported: `mounts` (reported when present, not made), `depends`,
//! `security` settings, cgroups, more than one start.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use strata_proto::report::Event;

use crate::sys::cpath;

/// Where Talos reads service specs from, in the merged root.
pub const SPECS_DIR: &str = "usr/local/etc/containers";
/// Where each service's container root is, in the merged root.
pub const CONTAINERS_DIR: &str = "usr/local/lib/containers";
/// How long a `restart: always` service must keep running.
pub const ALIVE_WAIT: Duration = Duration::from_secs(3);
/// How long a `restart: never` service gets to exit.
pub const EXIT_WAIT: Duration = Duration::from_secs(10);
/// The `PATH` a container gets when its spec sets none (Talos' default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of a service's output a report carries.
const OUTPUT_MAX: usize = 600;

/// The part of a Talos service spec the boot test uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Spec {
    /// The service's name: its container root is named after it.
    pub name: String,
    /// What to run.
    pub container: Container,
    /// `always`, `never` or `untilSuccess`.
    pub restart: String,
}

/// `container:` of a spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Container {
    /// The program, relative to the container root, or a name looked up in `PATH`.
    pub entrypoint: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub environment: Vec<String>,
    /// Bind mounts (not made here; reported).
    pub mounts: Vec<serde_norway::Value>,
}

/// The spec files in `merged`, sorted by name (as Talos reads them); an
/// unreadable directory is no services.
pub fn spec_files(merged: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(merged.join(SPECS_DIR)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Reads, starts and judges the service of one spec file.
pub fn check(merged: &Path, file: &Path) -> Event {
    let spec = match fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_norway::from_str::<Spec>(&text).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(err) => {
            let name = file.file_stem().unwrap_or_default().to_string_lossy();
            return event(
                &Spec {
                    name: name.into_owned(),
                    ..Spec::default()
                },
                Outcome::failed(format!("cannot read {}: {err}", file.display())),
            );
        }
    };
    let outcome = start_and_watch(merged, &spec);
    event(&spec, outcome)
}

/// What happened to one service.
#[derive(Debug, Default)]
struct Outcome {
    executed: bool,
    exit_status: Option<i32>,
    alive: Option<bool>,
    ok: bool,
    detail: Option<String>,
}

impl Outcome {
    fn failed(detail: String) -> Outcome {
        Outcome {
            detail: Some(detail),
            ..Outcome::default()
        }
    }
}

fn event(spec: &Spec, o: Outcome) -> Event {
    Event::Service {
        name: spec.name.clone(),
        entrypoint: spec.container.entrypoint.clone(),
        restart: spec.restart.clone(),
        executed: o.executed,
        exit_status: o.exit_status,
        alive: o.alive,
        ok: o.ok,
        detail: o.detail,
    }
}

fn start_and_watch(merged: &Path, spec: &Spec) -> Outcome {
    let root = merged.join(CONTAINERS_DIR).join(&spec.name);
    if spec.name.is_empty() || !root.is_dir() {
        return Outcome::failed(format!(
            "no container root /{CONTAINERS_DIR}/{} in the merged root",
            spec.name
        ));
    }
    let env = environment(&spec.container.environment);
    let program = match resolve(&root, &spec.container.entrypoint, &env) {
        Ok(program) => program,
        Err(why) => return Outcome::failed(why),
    };
    let (reader, writer) = match pipe() {
        Ok(pair) => pair,
        Err(err) => return Outcome::failed(format!("cannot make the output pipe: {err}")),
    };
    let mut child = match spawn(&root, &program, spec, &env, writer) {
        Ok(child) => child,
        Err(err) => {
            return Outcome::failed(exec_failure(&root, &program, &err));
        }
    };
    let mut o = watch(&mut child, &spec.restart);
    o.executed = true;
    let output = read_output(reader);
    let libraries = output.contains("error while loading shared libraries");
    if !o.ok {
        let mut why = o.detail.take().unwrap_or_default();
        if libraries {
            why = format!("it cannot find its libraries; {why}");
        }
        if !output.is_empty() {
            why.push_str(&format!("; it printed: {output}"));
        }
        o.detail = Some(why);
    }
    if !spec.container.mounts.is_empty() {
        let note = format!(
            "{} mount(s) of the spec not made by the boot test",
            spec.container.mounts.len()
        );
        o.detail = Some(match o.detail.take() {
            Some(d) => format!("{d}; {note}"),
            None => note,
        });
    }
    o
}

/// The spec's environment, with Talos' `PATH` when it sets none.
fn environment(entries: &[String]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = entries
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

/// The entrypoint as a path inside the container root (`./x` is `/x`; a
/// bare name is looked up in the container's `PATH`), checked to exist.
pub fn resolve(root: &Path, entrypoint: &str, env: &[(String, String)]) -> Result<String, String> {
    if entrypoint.is_empty() {
        return Err("the spec sets no container.entrypoint".into());
    }
    let candidates: Vec<String> = if entrypoint.contains('/') {
        vec![format!(
            "/{}",
            entrypoint.trim_start_matches("./").trim_start_matches('/')
        )]
    } else {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{entrypoint}", d.trim_end_matches('/')))
            .collect()
    };
    candidates
        .iter()
        .find(|c| root.join(c.trim_start_matches('/')).is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "entrypoint {entrypoint:?} is missing from its container root {} (looked for {})",
                root.display(),
                candidates.join(", ")
            )
        })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors we own from here on.
    crate::sys::check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both are fresh, open descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the service (see the module documentation). The error is the
/// `exec`'s (or the namespace set-up's) errno.
fn spawn(
    root: &Path,
    program: &str,
    spec: &Spec,
    env: &[(String, String)],
    output: OwnedFd,
) -> io::Result<Child> {
    let root_c = cpath(root)?;
    let err_out = output.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.container.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(err_out));
    // SAFETY: the closure runs in the forked child and makes only system
    // calls (no allocation, no locks); see `enter_container`.
    unsafe { cmd.pre_exec(move || enter_container(&root_c)) };
    cmd.spawn()
}

/// In the forked child: new mount and PID namespaces, then a fork; the
/// middle process waits for the service and exits with its status, the
/// service (PID 1 of the new namespace) chroots into its root and returns
/// to be executed.
fn enter_container(root: &CString) -> io::Result<()> {
    use crate::sys::check;
    // SAFETY: plain system calls on values this process owns.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        let pid = check(libc::fork())?;
        if pid == 0 {
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            return Ok(());
        }
        // The middle keeps no descriptor: the spawner's exec-status pipe
        // must close when the service execs, not when the middle exits.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            // Kernels before 5.9 have no close_range.
            for fd in 3..1024 {
                libc::close(fd);
            }
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {}
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        libc::_exit(code)
    }
}

/// Why the service could not be executed: told by the file first (a
/// program for another machine, a script or ELF program whose interpreter
/// the container root lacks), then by errno.
fn exec_failure(root: &Path, program: &str, err: &io::Error) -> String {
    let at = root.join(program.trim_start_matches('/'));
    let why = match (kind(&at), err.raw_os_error()) {
        (Kind::Elf { machine, .. }, _) if machine != this_machine() => format!(
            "it is a program for {}, not for this machine ({})",
            machine_name(machine),
            machine_name(this_machine())
        ),
        (
            Kind::Elf {
                interpreter: Some(i),
                ..
            },
            Some(libc::ENOENT),
        ) if !root.join(i.trim_start_matches('/')).exists() => {
            format!("its ELF interpreter {i} is missing from the container root")
        }
        (Kind::Script(i), Some(libc::ENOENT)) => {
            format!("its interpreter {i} is missing from the container root")
        }
        (Kind::Other, Some(libc::ENOEXEC | libc::ENOENT)) => {
            "it is not a program for this machine (wrong architecture or format)".into()
        }
        (_, Some(libc::EACCES)) => "it is not executable (mode or mount)".into(),
        _ => "it could not be started".into(),
    };
    format!("entrypoint {program} did not execute: {why} ({err})")
}

/// What an entrypoint file is, as far as `exec` cares.
#[derive(Debug, PartialEq)]
enum Kind {
    /// A `#!` script and its interpreter.
    Script(String),
    /// An ELF file: its `e_machine` and `PT_INTERP` (64-bit files only).
    Elf {
        machine: u16,
        interpreter: Option<String>,
    },
    /// Neither.
    Other,
}

fn kind(file: &Path) -> Kind {
    let Ok(data) = fs::read(file) else {
        return Kind::Other;
    };
    if let Some(rest) = data.strip_prefix(b"#!") {
        let line =
            String::from_utf8_lossy(rest.split(|&b| b == b'\n').next().unwrap_or(&[])).into_owned();
        return match line.split_whitespace().next() {
            Some(i) => Kind::Script(i.to_string()),
            None => Kind::Other,
        };
    }
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[5] != 1 {
        return Kind::Other;
    }
    let u16_at = |at: usize| u16::from_le_bytes([data[at], data[at + 1]]);
    let machine = u16_at(18);
    let interpreter = (data[4] == 2).then(|| elf64_interpreter(&data)).flatten();
    Kind::Elf {
        machine,
        interpreter,
    }
}

/// The `PT_INTERP` path of a little-endian 64-bit ELF file.
fn elf64_interpreter(data: &[u8]) -> Option<String> {
    let u64_at = |at: usize| -> Option<usize> {
        let bytes: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(bytes)).ok()
    };
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?) as usize)
    };
    let (phoff, phentsize, phnum) = (u64_at(32)?, u16_at(54)?, u16_at(56)?);
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let kind = u32::from_le_bytes(data.get(ph..ph + 4)?.try_into().ok()?);
        if kind != 3 {
            return None;
        }
        let (offset, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
        let raw = data.get(offset..offset.checked_add(size)?)?;
        Some(
            String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string(),
        )
    })
}

/// `e_machine` of programs for the running machine.
fn this_machine() -> u16 {
    match std::env::consts::ARCH {
        "aarch64" => 183,
        _ => 62,
    }
}

fn machine_name(machine: u16) -> String {
    match machine {
        62 => "x86-64".into(),
        183 => "arm64 (aarch64)".into(),
        3 => "i386".into(),
        40 => "arm".into(),
        243 => "riscv".into(),
        other => format!("ELF machine {other}"),
    }
}

/// Waits as the restart policy asks, then kills what still runs.
fn watch(child: &mut Child, restart: &str) -> Outcome {
    let always = restart == "always";
    let wait = if always { ALIVE_WAIT } else { EXIT_WAIT };
    let status = wait_for(child, wait);
    let mut o = Outcome::default();
    match (status, always) {
        (None, true) => {
            o.alive = Some(true);
            o.ok = true;
        }
        (Some(status), true) => {
            o.alive = Some(false);
            o.exit_status = Some(code(status));
            o.detail = Some(format!(
                "restart: always, but it exited with status {} within {} s",
                code(status),
                ALIVE_WAIT.as_secs()
            ));
        }
        (None, false) => {
            o.alive = Some(true);
            o.ok = true;
            o.detail = Some(format!(
                "still running after {} s (restart: {restart})",
                EXIT_WAIT.as_secs()
            ));
        }
        (Some(status), false) => {
            o.exit_status = Some(code(status));
            o.ok = code(status) == 0;
            if !o.ok {
                o.detail = Some(format!("it exited with status {}", code(status)));
            }
        }
    }
    if o.alive == Some(true) {
        let _ = child.kill();
        let _ = child.wait();
    }
    o
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// What the service printed so far, cut to [`OUTPUT_MAX`], on one line.
fn read_output(reader: OwnedFd) -> String {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(reader.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut file = fs::File::from(reader);
    let mut buf = vec![0u8; OUTPUT_MAX];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    #[test]
    fn specs_read_as_talos_writes_them() {
        let text = "name: hello\ncontainer:\n  entrypoint: ./hello\n  args: [--greeting, hi]\n  environment:\n    - GREETING=hi\n  security:\n    writeableRootfs: false\ndepends:\n  - network: [addresses]\nrestart: always\n";
        let spec: Spec = serde_norway::from_str(text).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.container.entrypoint, "./hello");
        assert_eq!(spec.container.args, ["--greeting", "hi"]);
        assert_eq!(spec.restart, "always");
        let env = environment(&spec.container.environment);
        assert_eq!(env[0], ("GREETING".into(), "hi".into()));
        assert_eq!(env[1].0, "PATH", "Talos' PATH when the spec sets none");
    }

    #[test]
    fn entrypoints_resolve_inside_the_container_root() {
        let dir = TestDir::new("svc");
        dir.file("hello", b"#!/bin/sh\n").file("usr/bin/tool", b"x");
        let env = environment(&[]);
        assert_eq!(resolve(&dir.0, "./hello", &env).unwrap(), "/hello");
        assert_eq!(resolve(&dir.0, "/hello", &env).unwrap(), "/hello");
        assert_eq!(resolve(&dir.0, "tool", &env).unwrap(), "/usr/bin/tool");
        let err = resolve(&dir.0, "./gone", &env).unwrap_err();
        assert!(
            err.contains("\"./gone\" is missing") && err.contains("/gone"),
            "{err}"
        );
        assert!(resolve(&dir.0, "", &env).is_err());
        assert_eq!(kind(&dir.0.join("hello")), Kind::Script("/bin/sh".into()));
        assert_eq!(kind(&dir.0.join("usr/bin/tool")), Kind::Other);
    }

    /// A merged root with one service `name` whose spec is `spec` and whose container root
    /// holds `files` (path, content, mode).
    fn merged_with(dir: &TestDir, name: &str, spec: &str, files: &[(&str, Vec<u8>, u32)]) {
        use std::os::unix::fs::PermissionsExt;
        dir.file(&format!("{SPECS_DIR}/{name}.yaml"), spec.as_bytes());
        for (path, content, mode) in files {
            let rel = format!("{CONTAINERS_DIR}/{name}/{path}");
            dir.file(&rel, content);
            fs::set_permissions(dir.0.join(rel), fs::Permissions::from_mode(*mode)).unwrap();
        }
    }

    fn outcome(event: Event) -> (bool, bool, Option<i32>, Option<bool>, String) {
        match event {
            Event::Service {
                ok,
                executed,
                exit_status,
                alive,
                detail,
                ..
            } => (ok, executed, exit_status, alive, detail.unwrap_or_default()),
            other => panic!("not a service event: {other:?}"),
        }
    }

    /// Real starts in namespaces: needs root (unshare) and a static busybox (the demo root's).
    #[test]
    fn services_run_in_their_container_root_and_are_judged_by_their_policy() {
        let busybox =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/rootfs-amd64/bin/busybox");
        let foreign =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/rootfs-arm64/bin/busybox");
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !crate::test_support::require(
            root && busybox.is_file() && foreign.is_file() && cfg!(target_arch = "x86_64"),
            "needs root (namespaces) and build/rootfs-amd64 and -arm64 (static busybox) on x86_64",
            "run as root after `make test-inputs`",
        ) {
            return;
        }
        let bb = fs::read(&busybox).unwrap();
        let dir = TestDir::new("svc-run");
        let spec = |name: &str, entry: &str, args: &str, restart: &str| {
            format!("name: {name}\ncontainer:\n  entrypoint: {entry}\n  args: {args}\n  environment: [WHO=strata]\nrestart: {restart}\n")
        };
        // `always`: busybox as /bin/sleep keeps running.
        merged_with(
            &dir,
            "sleeper",
            &spec("sleeper", "/bin/sleep", "[\"30\"]", "always"),
            &[("bin/sleep", bb.clone(), 0o755)],
        );
        // `never`: a shell that checks its environment and chroot, then exits 3.
        merged_with(
            &dir,
            "oneshot",
            &spec("oneshot", "./bin/sh", "[-c, 'test \"$WHO\" = strata && test -x /bin/sh && test ! -e /usr/local/lib/containers && exit 3']", "never"),
            &[("bin/sh", bb.clone(), 0o755)],
        );
        // A script whose interpreter the container root lacks.
        merged_with(
            &dir,
            "script",
            &spec("script", "./hello", "[]", "always"),
            &[("hello", b"#!/bin/sh\necho hi\n".to_vec(), 0o755)],
        );
        // A program for no machine at all.
        // A program for another machine: the demo's arm64 busybox.
        merged_with(
            &dir,
            "junk",
            &spec("junk", "./junk", "[]", "never"),
            &[("junk", fs::read(&foreign).unwrap(), 0o755)],
        );
        let files = spec_files(&dir.0);
        assert_eq!(files.len(), 4);
        let by_name =
            |n: &str| outcome(check(&dir.0, &dir.0.join(format!("{SPECS_DIR}/{n}.yaml"))));

        let (ok, executed, status, alive, detail) = by_name("sleeper");
        assert!(
            ok && executed && alive == Some(true) && status.is_none(),
            "{detail}"
        );
        let (ok, executed, status, _, detail) = by_name("oneshot");
        assert!(!ok && executed, "{detail}");
        assert_eq!(
            status,
            Some(3),
            "env, chroot and the exit status must come through: {detail}"
        );
        assert!(detail.contains("exited with status 3"), "{detail}");
        let (ok, executed, _, _, detail) = by_name("script");
        assert!(!ok && !executed);
        assert!(
            detail.contains("interpreter /bin/sh is missing"),
            "{detail}"
        );
        let (ok, executed, _, _, detail) = by_name("junk");
        assert!(!ok && !executed);
        assert!(
            detail.contains("it is a program for arm64 (aarch64), not for this machine"),
            "{detail}"
        );
    }

    #[test]
    fn exec_failures_are_told_by_errno() {
        let dir = TestDir::new("svc-exec");
        dir.file("hello", b"#!/bin/sh\necho hi\n");
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        let why = exec_failure(&dir.0, "/hello", &enoent);
        assert!(why.contains("interpreter /bin/sh is missing"), "{why}");
        let enoexec = io::Error::from_raw_os_error(libc::ENOEXEC);
        dir.file("junk", b"not a program");
        assert!(exec_failure(&dir.0, "/junk", &enoexec).contains("wrong architecture"));
        // An ELF header for the other machine than this one.
        let other: u16 = if this_machine() == 62 { 183 } else { 62 };
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18..20].copy_from_slice(&other.to_le_bytes());
        dir.file("foreign", &elf);
        let why = exec_failure(&dir.0, "/foreign", &enoexec);
        assert!(
            why.contains("it is a program for") && why.contains("not for this machine"),
            "{why}"
        );
    }
}
