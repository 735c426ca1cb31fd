//! The init's sequence, from the first mount to the hand-over.
//!
//! Report order: `start`, one `module` per listed module, one `layer` per
//! Talos extension, then per sysext and per confext image (merge order),
//! then one `stack` per file several Talos layers ship, then per
//! flattened and per disabled extension (`extensions.json` order), one `firmware`, one `ext_module` per name in `modules.check`,
//! one `service` per Talos extension service (only with
//! `boot_test.services`), one `disk` per block device, one `timing`, then
//! `done`; an `error` follows any step
//! that fails (errors of the sysext and confext merge come before the
//! `layer` events, which are checked once the whole root is assembled).
//!
//! The disks are waited for (up to 5 s, see `disks`) on a second thread
//! started once the modules are loaded, so the wait overlaps the mounts;
//! it is joined before `done`.
//!
//! Fatal (no root to switch into): the API mounts, the root squashfs, the
//! overlay, a missing init (outside smoke runs). Non-fatal, but `ok=false`:
//! a module that will not load, an unreadable `extensions.yaml` (booted as
//! if empty), a layer that will not mount (left out of the overlay), a
//! sysext/confext image that is rejected or will not mount or merge, the
//! extensions list bind, a failed layer check, a shadowed file showing the
//! wrong layer's copy, an unreadable
//! `extensions.json`, a failed flattened or disabled check, the firmware
//! path, an extension module that will not load, a service that did not
//! run as its restart policy expects, an unreadable disk. Outside smoke runs a non-fatal
//! failure still boots the merged root; a fatal one shows the error for
//! 5 s and powers off. Smoke runs always power off after `done`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::checks::{self, Upper, Visibility};
use crate::cmdline::Cmdline;
use crate::console::{self, Console};
use crate::extensions::{self, Layer};
use crate::extrelease::Class;
use crate::kmod::{self, Index, Resolution};
use crate::modules::{self, Loaded};
use crate::mountinfo::{self, MountEntry};
use crate::mounts;
use crate::overlay::{self, Layout, EXTENSIONS_TARGET};
use crate::shipped::{self, Shipped};
use crate::sys::{boot_clock, error_chain, uname};
use crate::sysext::{self, Prepared};
use crate::{
    disks, firmware, power, profile_files, secureboot, services, stack, state, switch, sysreport,
};
use strata_proto::initramfs::{self, FileKind, Guest, Probe, ProfileFile, Shadowed, StateMode};
use strata_proto::report::{Event, Mark};
use strata_proto::ExtensionKind;

/// The root squashfs in the initramfs.
pub const ROOTFS_IMAGE: &str = "/rootfs.sqsh";

/// The disk scan running beside the mounts.
type DiskScan = JoinHandle<Result<Vec<disks::Disk>, disks::Error>>;

/// Report state: the console and whether everything so far went well.
struct Reporter {
    console: Console,
    ok: bool,
    layers: usize,
    /// Kind and name of every layer reported mounted, for the disabled check.
    active: Vec<(ExtensionKind, String)>,
    /// The disk scan, until its result is reported.
    disks: Option<DiskScan>,
    /// The probe of every layer reported visible, for the systemd reporter.
    probes: Vec<String>,
    /// When each step ended, for the `timing` event.
    marks: Vec<Mark>,
}

/// A failure that leaves no root to switch into; already reported.
struct Fatal(String);

impl Reporter {
    fn emit(&mut self, event: &Event) {
        if let Event::Layer {
            kind,
            name,
            mounted: true,
            ..
        } = event
        {
            self.active.push((*kind, name.clone()));
        }
        if let Event::Layer {
            visible: true,
            probe: Some(probe),
            disabled: false,
            ..
        } = event
        {
            self.probes.push(probe.clone());
        }
        self.console.emit(event);
    }

    /// Starts waiting for the disks beside the boot; without a thread,
    /// the scan runs when it is reported.
    fn start_disk_scan(&mut self) {
        let scan =
            || disks::wait_and_scan(Path::new(disks::SYS_BLOCK), Path::new(disks::SYS_DEVICES));
        match std::thread::Builder::new().name("disks".into()).spawn(scan) {
            Ok(handle) => self.disks = Some(handle),
            Err(err) => self.console.say(&format!(
                "cannot start the disk scan thread ({err}); scanning at the end"
            )),
        }
    }

    /// Reports PCR 11 when the machine has a TPM (see [`crate::tpm`]).
    fn report_tpm(&mut self) {
        if let Some(read) = crate::tpm::read_pcr11(Path::new(crate::tpm::TPM0)) {
            let (pcr11, detail) = match read {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            };
            self.emit(&Event::Tpm { pcr11, detail });
        }
    }

    /// Reports each disk (joining the scan, or scanning now).
    fn report_disks(&mut self) {
        let result = match self.disks.take() {
            Some(handle) => match handle.join() {
                Ok(result) => result,
                Err(_) => {
                    self.error("disks", "the disk scan thread panicked".into());
                    return;
                }
            },
            None => {
                disks::wait_and_scan(Path::new(disks::SYS_BLOCK), Path::new(disks::SYS_DEVICES))
            }
        };
        match result {
            Ok(found) => {
                if found.is_empty() {
                    self.console
                        .say("no block device appeared within 5 s (is the disk driver loaded?)");
                }
                for disk in found {
                    self.emit(&disk.event());
                }
            }
            Err(err) => self.error("disks", error_chain(&err)),
        }
    }

    /// Notes that `step` ended now (see [`Event::Timing`]).
    fn mark(&mut self, step: &str) {
        self.marks.push(Mark {
            step: step.to_string(),
            at: boot_clock(),
        });
    }

    /// Reports a failed step; the run is no longer ok.
    fn error(&mut self, stage: &str, message: String) {
        self.ok = false;
        self.emit(&Event::Error {
            stage: stage.to_string(),
            message,
        });
    }

    /// Reports a failed step that ends the boot.
    fn fatal(&mut self, stage: &str, err: &dyn std::error::Error) -> Fatal {
        let message = error_chain(err);
        self.error(stage, message.clone());
        Fatal(format!("{stage}: {message}"))
    }
}

/// Runs the init. Never returns: it execs the next init or powers off.
pub fn run() -> ! {
    refuse_unless_pid1();
    std::panic::set_hook(Box::new(|info| {
        Console::open().say(&format!("panic: {info}; powering off in 5 s"));
        power::fatal_power_off()
    }));
    let mut console = Console::open();
    let api = mounts::mount_api_filesystems();
    console::ensure_stdio();
    console.reopen_if_closed();
    let (mut rep, cmdline) = start(console);
    let api_ok = api.is_ok();
    let outcome = api
        .map_err(|err| rep.fatal("mount-api", &err))
        .and_then(|()| assemble(&mut rep, &Layout::default(), &cmdline));
    if api_ok {
        rep.report_disks();
        rep.mark("disks");
        rep.report_tpm();
    }
    let marks = std::mem::take(&mut rep.marks);
    rep.emit(&Event::Timing { marks });
    rep.emit(&Event::Done {
        ok: rep.ok,
        layers: rep.layers,
        smoke: cmdline.smoke,
    });
    finish(rep, outcome, &cmdline)
}

/// Mounting over /dev and powering off would wreck a host; only PID 1 may.
fn refuse_unless_pid1() {
    if std::process::id() != 1 {
        eprintln!(
            "strata-init: refusing to run as pid {}: this program mounts over /dev, loads kernel modules \
             and powers the machine off; boot it as /init of an initramfs",
            std::process::id()
        );
        std::process::exit(2);
    }
}

/// Reads the command line (needs /proc) and reports `start`.
fn start(console: Console) -> (Reporter, Cmdline) {
    let cmdline_text = std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .trim_end()
        .to_string();
    let cmdline = Cmdline::parse(&cmdline_text);
    let (kernel, machine) = uname();
    let mut rep = Reporter {
        console,
        ok: true,
        layers: 0,
        active: Vec::new(),
        disks: None,
        probes: Vec::new(),
        marks: Vec::new(),
    };
    rep.mark("init");
    rep.emit(&Event::Start {
        kernel,
        machine,
        cmdline: cmdline_text,
    });
    (rep, cmdline)
}

fn finish(mut rep: Reporter, outcome: Result<PathBuf, Fatal>, cmdline: &Cmdline) -> ! {
    if cmdline.smoke {
        rep.console.say("smoke run finished; powering off");
        power::power_off();
    }
    let root = match outcome {
        Ok(root) => root,
        Err(Fatal(message)) => {
            rep.console
                .say(&format!("fatal: {message}; powering off in 5 s"));
            power::fatal_power_off();
        }
    };
    if !rep.ok {
        rep.console
            .say("some steps or checks failed (see the report above); booting anyway");
    }
    rep.console.say(&format!(
        "switching root to {} and executing {}",
        root.display(),
        cmdline.init.display()
    ));
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let console = &mut rep.console;
    let err = switch::switch_root(&root, &cmdline.init, &args, &mut |warning| {
        console.say(&warning)
    });
    rep.console.say(&format!(
        "fatal: switch-root: {}; powering off in 5 s",
        error_chain(&err)
    ));
    power::fatal_power_off()
}

/// Everything between the API mounts and the report's end. Returns the
/// merged root to switch into.
fn assemble(rep: &mut Reporter, layout: &Layout, cmdline: &Cmdline) -> Result<PathBuf, Fatal> {
    load_modules(rep);
    rep.mark("modules");
    report_secure_boot(rep);
    rep.start_disk_scan();
    let layers = match extensions::read(Path::new(extensions::EXTENSIONS_YAML)) {
        Ok(ext) => ext.layers,
        Err(err) => {
            rep.error("extensions", error_chain(&err));
            Vec::new()
        }
    };
    overlay::mount_squashfs(Path::new(ROOTFS_IMAGE), &layout.rootfs())
        .map_err(|err| rep.fatal("mount-root", &err))?;
    let guest = read_guest(rep);
    let mounts = mount_layers(rep, layout, &layers);
    let mut lower: Vec<PathBuf> = mounts.iter().flatten().cloned().collect();
    let files = mount_files(rep, layout, &guest);
    lower.extend(files.clone());
    let state = prepare_state(rep, layout, guest.state)?;
    let merged = layout.merged();
    overlay::mount_merged(&lower, &layout.rootfs(), &merged, &state)
        .map_err(|err| rep.fatal("mount-overlay", &err))?;
    report_state(rep, guest.state, &state, &merged);
    // Before the bind: a confext overlay on /etc would hide it.
    let images = merge_images(rep, layout, &merged, files.as_deref());
    if let Err(err) = overlay::bind_extensions_list(Path::new(extensions::EXTENSIONS_YAML), &merged)
    {
        rep.error("bind-extensions", error_chain(&err));
    }
    let entries = if layers.is_empty() && images.is_empty() {
        Ok(Vec::new())
    } else {
        read_mountinfo()
    };
    if let Err(message) = &entries {
        rep.error("mountinfo", message.clone());
    }
    rep.mark("root");
    check_layers(
        rep,
        &layers,
        &mounts,
        &merged,
        &entries,
        &images,
        files.as_deref(),
    );
    check_images(rep, &images, &merged, &entries);
    check_stack(rep, &guest.shadowed, &layers, &mounts, &merged);
    check_shipped(rep, &merged);
    set_firmware_path(rep, &merged);
    load_extension_modules(rep, &merged);
    check_files(rep, &merged, &guest.files);
    rep.mark("checks");
    if guest.services {
        run_services(rep, &merged);
        rep.mark("services");
    }
    if let Err(err) = switch::check_init(&merged, &cmdline.init) {
        if cmdline.smoke {
            rep.error("init", error_chain(&err));
        } else {
            return Err(rep.fatal("init", &err));
        }
    }
    if !cmdline.smoke {
        hand_over(rep, &merged, &cmdline.init, &guest.files);
    }
    Ok(merged)
}

fn load_modules(rep: &mut Reporter) {
    let list = match modules::read_list(Path::new(modules::MODULES_LOAD)) {
        Ok(list) => list,
        Err(err) => {
            rep.error("modules", error_chain(&err));
            return;
        }
    };
    let mut failed = Vec::new();
    let mut not_applicable: Vec<String> = Vec::new();
    for path in list {
        let name = modules::module_name(&path);
        let (loaded, error) = match modules::load_probing_async(&path) {
            Ok(Loaded::Now | Loaded::Already) => (true, None),
            Ok(Loaded::NotApplicable) => {
                not_applicable.push(name.clone());
                (
                    false,
                    Some("not applicable on this machine (ENODEV); not an error".to_string()),
                )
            }
            // Unresolved symbols (ENOENT) after a dependency that does not apply
            // here (hv_storvsc without Hyper-V's hv_vmbus): it does not apply either.
            Err(modules::Error::Load { ref source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) && !not_applicable.is_empty() =>
            {
                (
                    false,
                    Some(format!(
                        "not applicable: unresolved symbols after {} did not apply (ENOENT); not an error",
                        not_applicable.join(", ")
                    )),
                )
            }
            Err(err) => {
                failed.push(name.clone());
                (false, Some(error_chain(&err)))
            }
        };
        rep.emit(&Event::Module {
            name,
            loaded,
            error,
        });
    }
    if !failed.is_empty() {
        rep.error(
            "modules",
            format!(
                "{} module(s) did not load: {}",
                failed.len(),
                failed.join(", ")
            ),
        );
    }
}

/// Mounts each layer; `Ok(mount point)` or `Err(why)` per layer, in order.
fn mount_layers(
    rep: &mut Reporter,
    layout: &Layout,
    layers: &[Layer],
) -> Vec<Result<PathBuf, String>> {
    let mut mounts = Vec::with_capacity(layers.len());
    for (index, layer) in layers.iter().enumerate() {
        let target = layout.layer(index);
        match overlay::mount_squashfs(&layer.image_path(), &target) {
            Ok(_) => mounts.push(Ok(target)),
            Err(err) => {
                let message = error_chain(&err);
                rep.error(
                    "mount-layer",
                    format!("layer {index} ({}): {message}", layer.image),
                );
                mounts.push(Err(message));
            }
        }
    }
    mounts
}

fn read_mountinfo() -> Result<Vec<MountEntry>, String> {
    let text = std::fs::read_to_string(mountinfo::MOUNTINFO)
        .map_err(|err| format!("cannot read {}: {err}", mountinfo::MOUNTINFO))?;
    mountinfo::parse(&text).map_err(|err| error_chain(&err))
}

fn check_layers(
    rep: &mut Reporter,
    layers: &[Layer],
    mounts: &[Result<PathBuf, String>],
    merged: &Path,
    entries: &Result<Vec<MountEntry>, String>,
    images: &[Prepared],
    files: Option<&Path>,
) {
    let skip = [Path::new(EXTENSIONS_TARGET)];
    // sysext/confext images sit above every Talos layer, on their hierarchies;
    // the profile's files above everything.
    let mut image_uppers = sysext::uppers(images, merged);
    image_uppers.extend(files.map(Upper::whole));
    for (index, (layer, mount)) in layers.iter().zip(mounts).enumerate() {
        let mut later: Vec<Upper> = mounts[index + 1..]
            .iter()
            .flatten()
            .map(|dir| Upper::whole(dir))
            .collect();
        later.extend(image_uppers.iter().cloned());
        let (mounted, vis) = match mount {
            Err(why) => (false, Visibility::failed(why.clone())),
            Ok(mount_point) => {
                let mount_detail = match entries {
                    Ok(entries) => checks::check_mounted(entries, merged, mount_point),
                    Err(message) => Some(message.clone()),
                };
                let mut vis = checks::check_visible_under(mount_point, &later, merged, &skip);
                vis.detail = join_details(mount_detail.clone(), vis.detail);
                (mount_detail.is_none(), vis)
            }
        };
        rep.ok &= mounted && vis.visible;
        rep.layers += 1;
        rep.emit(&layer_event(index, layer, mounted, vis));
    }
}

/// Mounts, validates and merges the sysext then the confext images.
/// Rejections and merge failures are reported as errors now; the `layer`
/// events come with the checks.
fn merge_images(
    rep: &mut Reporter,
    layout: &Layout,
    merged: &Path,
    files: Option<&Path>,
) -> Vec<Prepared> {
    let (_, machine) = uname();
    let mut host = None;
    let mut all = Vec::new();
    for class in [Class::Sysext, Class::Confext] {
        let images = match sysext::discover(sysext::images_dir(class), class) {
            Ok(images) => images,
            Err(err) => {
                rep.error(class.as_str(), error_chain(&err));
                continue;
            }
        };
        if images.is_empty() {
            continue;
        }
        let host = host.get_or_insert_with(|| sysext::read_host(merged));
        let mut prepared: Vec<Prepared> = images
            .iter()
            .map(|image| sysext::prepare(image, layout, host.as_ref(), &machine))
            .collect();
        for p in &prepared {
            if let Some(failure) = &p.failure {
                rep.error(
                    class.as_str(),
                    format!("{}: {failure}", p.image.file_name()),
                );
            }
        }
        for message in sysext::merge(class, &mut prepared, layout, merged, files) {
            rep.error(class.as_str(), message);
        }
        all.extend(prepared);
    }
    all
}

/// `/etc/strata/guest.json`: state mode and profile files. Absent means
/// the defaults; unreadable is an error, and the defaults.
fn read_guest(rep: &mut Reporter) -> Guest {
    let path = Path::new(initramfs::GUEST_JSON);
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Guest::default(),
        Err(err) => {
            rep.error("guest", format!("cannot read {}: {err}", path.display()));
            return Guest::default();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|err| {
        rep.error("guest", format!("{}: {err}", path.display()));
        Guest::default()
    })
}

/// Mounts `/files.sqsh` when the profile has files; its mount point.
fn mount_files(rep: &mut Reporter, layout: &Layout, guest: &Guest) -> Option<PathBuf> {
    if guest.files.is_empty() {
        return None;
    }
    let target = layout.files();
    match overlay::mount_squashfs(Path::new(initramfs::FILES_IMAGE), &target) {
        Ok(_) => Some(target),
        Err(err) => {
            rep.error("mount-files", error_chain(&err));
            None
        }
    }
}

/// Prepares the writable layer and reports it. Persistent state that
/// cannot be had is an error, and the boot goes on with a tmpfs.
fn prepare_state(
    rep: &mut Reporter,
    layout: &Layout,
    mode: StateMode,
) -> Result<state::Prepared, Fatal> {
    let prepared = match state::prepare(mode, layout) {
        Ok(prepared) => prepared,
        Err(err) if mode == StateMode::Persistent => {
            rep.error(
                "state",
                format!("{}; using a tmpfs instead", error_chain(&err)),
            );
            return prepare_state(rep, layout, StateMode::Tmpfs);
        }
        Err(err) => return Err(rep.fatal("state", &err)),
    };
    Ok(prepared)
}

/// Reports the writable layer once the root is merged; persistent state
/// also counts this boot in it (and syncs, so the count survives a
/// power-off without shutdown).
fn report_state(rep: &mut Reporter, mode: StateMode, prepared: &state::Prepared, merged: &Path) {
    let boots = match (mode, &prepared.device) {
        (StateMode::Persistent, Some(_)) => match state::count_boot(merged) {
            Ok(n) => Some(n),
            Err(err) => {
                rep.error(
                    "state",
                    format!("cannot count the boot in {}: {err}", state::BOOT_COUNT),
                );
                None
            }
        },
        _ => None,
    };
    rep.emit(&Event::State {
        mode: if prepared.device.is_some() {
            StateMode::Persistent
        } else {
            StateMode::Tmpfs
        },
        device: prepared.device.as_ref().map(|d| d.display().to_string()),
        formatted: prepared.formatted,
        boots,
    });
}

/// Reports each profile file as the merged root shows it.
fn check_files(rep: &mut Reporter, merged: &Path, files: &[ProfileFile]) {
    for file in files {
        let detail = profile_files::check(merged, file);
        rep.ok &= detail.is_none();
        rep.emit(&Event::File {
            path: file.path.clone(),
            kind: file.kind,
            ok: detail.is_none(),
            detail,
        });
    }
}

/// Starts each Talos extension service once and reports it (see `services`).
fn run_services(rep: &mut Reporter, merged: &Path) {
    for file in services::spec_files(merged) {
        let event = services::check(merged, &file);
        rep.ok &= matches!(event, Event::Service { ok: true, .. });
        rep.emit(&event);
    }
}

/// When the root's init is systemd: installs the reporter that speaks from
/// inside the running system, and says so.
fn hand_over(rep: &mut Reporter, merged: &Path, init: &Path, files: &[ProfileFile]) {
    let systemd = sysreport::is_systemd(merged, init);
    if systemd {
        let mut probes: Vec<Probe> = files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .map(|f| Probe {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
            })
            .collect();
        for path in &rep.probes {
            let at = merged.join(path.trim_start_matches('/'));
            if let Ok(sha256) = shipped::sha256_file(&at) {
                probes.push(Probe {
                    path: path.clone(),
                    sha256,
                });
            }
        }
        let program = Path::new("/proc/self/exe");
        if let Err(err) = sysreport::install(Path::new("/run"), program, &probes) {
            rep.error("handover", error_chain(&err));
        }
    }
    rep.emit(&Event::Handover {
        init: init.display().to_string(),
        systemd,
    });
}

/// Reports each image; indexes continue after the Talos layers.
fn check_images(
    rep: &mut Reporter,
    images: &[Prepared],
    merged: &Path,
    entries: &Result<Vec<MountEntry>, String>,
) {
    for class in [Class::Sysext, Class::Confext] {
        let same: Vec<Prepared> = images
            .iter()
            .filter(|p| p.image.class == class)
            .cloned()
            .collect();
        for at in 0..same.len() {
            let (mounted, vis) = sysext::check(&same, at, entries, merged);
            let p = &same[at];
            rep.ok &= mounted && vis.visible;
            rep.emit(&Event::Layer {
                index: rep.layers,
                image: p.image.file_name(),
                kind: ExtensionKind::from(class),
                name: p.image.name.clone(),
                version: p.version.clone(),
                mounted,
                visible: vis.visible,
                probe: vis.probe,
                detail: vis.detail,
                flattened: false,
                disabled: false,
            });
            rep.layers += 1;
        }
    }
}

/// Reports, for each file several Talos layers ship, whose copy the merged
/// root shows (see `stack`).
fn check_stack(
    rep: &mut Reporter,
    shadowed: &[Shadowed],
    layers: &[Layer],
    mounts: &[Result<PathBuf, String>],
    merged: &Path,
) {
    let mounted: Vec<stack::Mounted> = layers
        .iter()
        .zip(mounts)
        .map(|(layer, mount)| stack::Mounted {
            name: layer.metadata.name.clone(),
            dir: mount.as_ref().ok().cloned(),
        })
        .collect();
    for want in shadowed {
        let event = stack::check(merged, want, &mounted);
        rep.ok &= matches!(event, Event::Stack { ok: true, .. });
        rep.emit(&event);
    }
}

/// Checks and reports the extensions `extensions.json` lists: flattened
/// ones by their probe's digest, disabled ones by their image file being
/// present and unused. Indexes continue after the other layers.
fn check_shipped(rep: &mut Reporter, merged: &Path) {
    let shipped = match shipped::read(Path::new(shipped::EXTENSIONS_JSON)) {
        Ok(shipped) => shipped,
        Err(err) => {
            rep.error("extensions", error_chain(&err));
            return;
        }
    };
    let Shipped {
        flattened,
        disabled,
    } = shipped;
    for f in &flattened {
        let vis = shipped::check_flattened(merged, f);
        rep.ok &= vis.visible;
        let event = Event::Layer {
            index: rep.layers,
            image: String::new(),
            kind: f.kind,
            name: f.name.clone(),
            version: f.version.clone(),
            mounted: false,
            visible: vis.visible,
            probe: vis.probe,
            detail: vis.detail,
            flattened: true,
            disabled: false,
        };
        rep.layers += 1;
        rep.emit(&event);
    }
    if disabled.is_empty() {
        return;
    }
    let backing = shipped::loop_backing_files(Path::new(disks::SYS_BLOCK));
    for d in &disabled {
        let active = rep.active.iter().any(|(k, n)| *k == d.kind && *n == d.name);
        let check = shipped::check_disabled(merged, d, &backing, active);
        let vis = check.visibility;
        rep.ok &= vis.visible && !check.mounted;
        let event = Event::Layer {
            index: rep.layers,
            image: d.file_name(),
            kind: d.kind,
            name: d.name.clone(),
            version: d.version.clone(),
            mounted: check.mounted,
            visible: vis.visible,
            probe: vis.probe,
            detail: vis.detail,
            flattened: false,
            disabled: true,
        };
        rep.layers += 1;
        rep.emit(&event);
    }
}

/// Reports the UEFI `SecureBoot` variable (see `secureboot`); after the
/// modules, since efivarfs may be one of them.
fn report_secure_boot(rep: &mut Reporter) {
    let (enabled, detail) = match secureboot::read(Path::new(secureboot::EFIVARS)) {
        Ok(true) => (true, None),
        Ok(false) => (false, Some("the SecureBoot variable is 0".to_string())),
        Err(why) => (false, Some(why)),
    };
    rep.emit(&Event::SecureBoot { enabled, detail });
}

/// Points the kernel's firmware loader at the merged root (see `firmware`).
/// A root without firmware directory is no error; failing to set one is.
fn set_firmware_path(rep: &mut Reporter, merged: &Path) {
    let Some(dir) = firmware::find_dir(merged) else {
        rep.emit(&Event::Firmware {
            path: String::new(),
            set: false,
            detail: Some(format!(
                "{} has no usr/lib/firmware or lib/firmware directory; nothing to point the firmware loader at",
                merged.display()
            )),
        });
        return;
    };
    let detail = firmware::set_search_path(Path::new(firmware::SEARCH_PATH_PARAM), &dir)
        .err()
        .map(|err| error_chain(&err));
    rep.emit(&Event::Firmware {
        path: dir.display().to_string(),
        set: detail.is_none(),
        detail: detail.clone(),
    });
    if let Some(message) = detail {
        rep.error("firmware", message);
    }
}

/// Loads the modules listed in `modules.check` from the merged root.
fn load_extension_modules(rep: &mut Reporter, merged: &Path) {
    let names = match kmod::read_check_list(Path::new(kmod::MODULES_CHECK)) {
        Ok(names) => names,
        Err(err) => {
            rep.error("ext-modules", error_chain(&err));
            return;
        }
    };
    if names.is_empty() {
        return;
    }
    let (release, _) = uname();
    let index = Index::read(merged, &release).map_err(|err| error_chain(&err));
    let mut failed = Vec::new();
    for name in names {
        let event = match &index {
            Ok(index) => load_by_name(index, &name, merged),
            Err(message) => Event::ExtModule {
                name: name.clone(),
                path: None,
                deps: Vec::new(),
                loaded: false,
                error: Some(message.clone()),
            },
        };
        if matches!(event, Event::ExtModule { loaded: false, .. }) {
            failed.push(name);
        }
        rep.emit(&event);
    }
    if !failed.is_empty() {
        rep.error(
            "ext-modules",
            format!(
                "{} extension module(s) did not load: {}",
                failed.len(),
                failed.join(", ")
            ),
        );
    }
}

/// Resolves, plans and loads one listed name; the event tells how it went.
fn load_by_name(index: &Index, name: &str, merged: &Path) -> Event {
    let shown = |rel: &str| {
        let dir = index.dir.strip_prefix(merged).unwrap_or(&index.dir);
        format!("/{}", dir.join(rel).display())
    };
    let event = |path, deps, error: Option<String>| Event::ExtModule {
        name: name.to_string(),
        path,
        deps,
        loaded: error.is_none(),
        error,
    };
    let targets = match index.resolve(name) {
        Some(Resolution::Modules(targets)) => targets,
        Some(Resolution::Builtin(_)) => return event(None, Vec::new(), None),
        None if Path::new("/sys/module")
            .join(kmod::normalize(name))
            .exists() =>
        {
            return event(None, Vec::new(), None)
        }
        None => {
            let err = kmod::Error::NotFound {
                name: name.to_string(),
                dir: index.dir.clone(),
            };
            return event(None, Vec::new(), Some(error_chain(&err)));
        }
    };
    let steps = index.plan(&targets);
    let main = steps
        .iter()
        .position(|s| targets.first() == Some(&s.module));
    let path = main.map(|at| shown(&steps[at].path));
    let deps: Vec<String> = steps
        .iter()
        .enumerate()
        .filter(|(at, _)| Some(*at) != main)
        .map(|(_, s)| s.module.clone())
        .collect();
    for step in &steps {
        let file = index.dir.join(&step.path);
        let error = match modules::load(&file) {
            Ok(Loaded::Now | Loaded::Already) => None,
            Ok(Loaded::NotApplicable) if step.soft => None,
            Ok(Loaded::NotApplicable) => Some(format!(
                "module {} does not apply to this machine (ENODEV); an extension's module must load",
                shown(&step.path)
            )),
            Err(err) => Some(error_chain(&err)),
        };
        if error.is_some() {
            return event(path, deps, error);
        }
    }
    event(path, deps, unlisted(&steps))
}

/// Why the planned modules do not all show in `/proc/modules` after
/// loading (soft dependencies that did not apply excepted), if they do not.
fn unlisted(steps: &[kmod::Step]) -> Option<String> {
    let text = match std::fs::read_to_string(modules::PROC_MODULES) {
        Ok(text) => text,
        Err(err) => return Some(format!("cannot read {}: {err}", modules::PROC_MODULES)),
    };
    let missing: Vec<&str> = steps
        .iter()
        .filter(|s| !s.soft && !modules::listed(&text, &s.module))
        .map(|s| s.module.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "loaded, but {} does not list {}",
            modules::PROC_MODULES,
            missing.join(", ")
        )
    })
}

fn join_details(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

fn layer_event(index: usize, layer: &Layer, mounted: bool, vis: Visibility) -> Event {
    Event::Layer {
        index,
        image: layer.image.clone(),
        kind: ExtensionKind::Talos,
        name: layer.metadata.name.clone(),
        version: layer.metadata.version.clone(),
        mounted,
        visible: vis.visible,
        probe: vis.probe,
        detail: vis.detail,
        flattened: false,
        disabled: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_joined_in_order() {
        assert_eq!(join_details(None, None), None);
        assert_eq!(join_details(Some("a".into()), None).as_deref(), Some("a"));
        assert_eq!(join_details(None, Some("b".into())).as_deref(), Some("b"));
        assert_eq!(
            join_details(Some("a".into()), Some("b".into())).as_deref(),
            Some("a; b")
        );
    }
}
