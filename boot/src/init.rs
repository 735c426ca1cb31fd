//! The init's sequence, from the first mount to the hand-over.
//!
//! Report order: `start`, one `module` per listed module, one `layer` per
//! extension, then `done`; an `error` follows any step that fails.
//!
//! Fatal (no root to switch into): the API mounts, the root squashfs, the
//! overlay, a missing init (outside smoke runs). Non-fatal, but `ok=false`:
//! a module that will not load, an unreadable `extensions.yaml` (booted as
//! if empty), a layer that will not mount (left out of the overlay), the
//! extensions list bind, a failed layer check. Outside smoke runs a
//! non-fatal failure still boots the merged root; a fatal one shows the
//! error for 5 s and powers off. Smoke runs always power off after `done`.

use std::ffi::{CStr, OsString};
use std::path::{Path, PathBuf};

use crate::checks::{self, Visibility};
use crate::cmdline::Cmdline;
use crate::console::{self, Console};
use crate::extensions::{self, Layer};
use crate::modules::{self, Loaded};
use crate::mountinfo::{self, MountEntry};
use crate::mounts;
use crate::overlay::{self, Layout, EXTENSIONS_TARGET};
use crate::power;
use crate::report::{Event, LayerKind};
use crate::switch;
use crate::sys::error_chain;

/// The root squashfs in the initramfs.
pub const ROOTFS_IMAGE: &str = "/rootfs.sqsh";

/// Report state: the console and whether everything so far went well.
struct Reporter {
    console: Console,
    ok: bool,
    layers: usize,
}

/// A failure that leaves no root to switch into; already reported.
struct Fatal(String);

impl Reporter {
    fn emit(&mut self, event: &Event) {
        self.console.emit(event);
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
    let outcome = api
        .map_err(|err| rep.fatal("mount-api", &err))
        .and_then(|()| assemble(&mut rep, &Layout::default(), &cmdline));
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
    };
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
    let layers = match extensions::read(Path::new(extensions::EXTENSIONS_YAML)) {
        Ok(ext) => ext.layers,
        Err(err) => {
            rep.error("extensions", error_chain(&err));
            Vec::new()
        }
    };
    overlay::mount_squashfs(Path::new(ROOTFS_IMAGE), &layout.rootfs())
        .map_err(|err| rep.fatal("mount-root", &err))?;
    let mounts = mount_layers(rep, layout, &layers);
    let lower: Vec<PathBuf> = mounts.iter().flatten().cloned().collect();
    let merged = layout.merged();
    overlay::mount_merged(&lower, &layout.rootfs(), &merged)
        .map_err(|err| rep.fatal("mount-overlay", &err))?;
    if let Err(err) = overlay::bind_extensions_list(Path::new(extensions::EXTENSIONS_YAML), &merged)
    {
        rep.error("bind-extensions", error_chain(&err));
    }
    check_layers(rep, &layers, &mounts, &merged);
    if let Err(err) = switch::check_init(&merged, &cmdline.init) {
        if cmdline.smoke {
            rep.error("init", error_chain(&err));
        } else {
            return Err(rep.fatal("init", &err));
        }
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
    for path in list {
        let name = modules::module_name(&path);
        let (loaded, error) = match modules::load(&path) {
            Ok(Loaded::Now | Loaded::Already) => (true, None),
            Ok(Loaded::NotApplicable) => (
                false,
                Some("not applicable on this machine (ENODEV); not an error".to_string()),
            ),
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
) {
    if layers.is_empty() {
        return;
    }
    let entries = read_mountinfo();
    if let Err(message) = &entries {
        rep.error("mountinfo", message.clone());
    }
    let skip = [Path::new(EXTENSIONS_TARGET)];
    for (index, (layer, mount)) in layers.iter().zip(mounts).enumerate() {
        let later: Vec<PathBuf> = mounts[index + 1..].iter().flatten().cloned().collect();
        let (mounted, vis) = match mount {
            Err(why) => (false, Visibility::failed(why.clone())),
            Ok(mount_point) => {
                let mount_detail = match &entries {
                    Ok(entries) => checks::check_mounted(entries, merged, mount_point),
                    Err(message) => Some(message.clone()),
                };
                let mut vis = checks::check_visible(mount_point, &later, merged, &skip);
                vis.detail = join_details(mount_detail.clone(), vis.detail);
                (mount_detail.is_none(), vis)
            }
        };
        rep.ok &= mounted && vis.visible;
        rep.layers += 1;
        rep.emit(&layer_event(index, layer, mounted, vis));
    }
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
        kind: LayerKind::Talos,
        name: layer.metadata.name.clone(),
        version: layer.metadata.version.clone(),
        mounted,
        visible: vis.visible,
        probe: vis.probe,
        detail: vis.detail,
    }
}

/// `uname -r` and `uname -m`.
fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct we own; its fields are NUL-terminated.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (String::new(), String::new());
    }
    let field = |chars: &[libc::c_char]| {
        // SAFETY: the kernel NUL-terminates every utsname field within its array.
        unsafe { CStr::from_ptr(chars.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (field(&uts.release), field(&uts.machine))
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

    #[test]
    fn uname_names_this_kernel() {
        let (release, machine) = uname();
        assert!(!release.is_empty());
        assert_eq!(machine, std::env::consts::ARCH);
    }
}
