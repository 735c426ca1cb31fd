//! The plan as `strata plan` prints it: text for people, JSON for tools
//! and golden tests. Paths are shown as resolved from the profile's path,
//! so a relative profile path gives relative paths.

use super::{kernel::KernelInput, Plan};
use serde::Serialize;

/// What `strata plan --json` prints.
#[derive(Debug, Serialize)]
pub struct Dump {
    /// The profile file.
    pub profile: String,
    /// Image name.
    pub name: String,
    /// Target architecture.
    pub arch: String,
    /// os-release ID and VERSION_ID.
    pub os: [String; 2],
    /// Timestamp of every file.
    pub epoch: u64,
    /// The kernel.
    pub kernel: KernelDump,
    /// The root filesystem: `dir`, `tar` or `squashfs`, and its path.
    pub rootfs: [String; 2],
    /// squashfs compressor.
    pub squashfs: String,
    /// Merge the extensions into the root.
    pub flatten: bool,
    /// Extensions, lowest first (disabled ones after).
    pub extensions: Vec<ExtensionDump>,
    /// Kernel modules extensions ship.
    pub ext_modules: Vec<String>,
    /// Where the root's writable layer lives: `tmpfs` or `persistent`.
    pub state: String,
    /// The profile's files: `path (type mode uid:gid)`.
    pub files: Vec<String>,
    /// The systemd-boot binary.
    pub bootloader: String,
    /// The guest init.
    pub init: String,
    /// One entry per platform.
    pub platforms: Vec<PlatformDump>,
}

/// The kernel in a dump.
#[derive(Debug, Serialize)]
pub struct KernelDump {
    /// The .deb, or the vmlinuz.
    pub source: String,
    /// The release.
    pub release: String,
}

/// One extension in a dump.
#[derive(Debug, Serialize)]
pub struct ExtensionDump {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `talos`, `sysext`, `confext`.
    pub kind: String,
    /// Where it comes from.
    pub origin: String,
    /// Image digest, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// False: shipped under /usr/lib/strata/extensions-available, not activated.
    pub enabled: bool,
}

/// One platform in a dump.
#[derive(Debug, Serialize)]
pub struct PlatformDump {
    /// Platform name.
    pub name: String,
    /// Output file names.
    pub outputs: Vec<String>,
    /// Modules asked for (before the closure).
    pub modules: Vec<String>,
    /// The kernel command line.
    pub cmdline: String,
    /// Disk size (`auto` or bytes).
    pub disk_size: String,
    /// ESP size (`auto` or bytes).
    pub esp_size: String,
    /// Boot-test device model and memory.
    pub boot_test: (String, u32),
}

impl Plan {
    /// The plan as plain data.
    pub fn dump(&self) -> Dump {
        let d = |p: &std::path::Path| p.display().to_string();
        let size = |s: crate::profile::units::Size| match s {
            crate::profile::units::Size::Auto => "auto".to_string(),
            crate::profile::units::Size::Bytes(b) => b.to_string(),
        };
        Dump {
            profile: d(&self.profile),
            name: self.name.clone(),
            arch: self.arch.to_string(),
            os: [self.os.0.clone(), self.os.1.clone()],
            epoch: self.epoch,
            kernel: KernelDump {
                source: match &self.kernel.input {
                    KernelInput::Deb(p) => d(p),
                    KernelInput::Parts {
                        vmlinuz,
                        modules_dir,
                    } => format!("{} + {}", d(vmlinuz), d(modules_dir)),
                },
                release: self.kernel.release.clone(),
            },
            rootfs: [self.root.kind.to_string(), d(&self.root.path)],
            squashfs: format!("{:?}", self.squash.compression),
            flatten: self.flatten,
            extensions: self
                .extensions
                .iter()
                .chain(&self.disabled)
                .map(|e| ExtensionDump {
                    name: e.name.clone(),
                    version: e.version.clone(),
                    kind: e.kind.as_str().to_string(),
                    origin: e.origin.clone(),
                    digest: e.digest.clone(),
                    enabled: e.enabled,
                })
                .collect(),
            ext_modules: self.ext_modules.clone(),
            state: self.state.as_str().to_string(),
            files: self
                .files
                .records
                .iter()
                .map(|f| {
                    let kind = format!("{:?}", f.kind).to_lowercase();
                    format!("{} ({kind} {:04o} {}:{})", f.path, f.mode, f.uid, f.gid)
                })
                .collect(),
            bootloader: d(&self.bootloader),
            init: d(&self.init),
            platforms: self
                .platforms
                .iter()
                .map(|pp| PlatformDump {
                    name: pp.platform.name.clone(),
                    outputs: pp
                        .outputs
                        .iter()
                        .map(|o| o.file_name(&pp.platform.name, self.arch.debian()))
                        .collect(),
                    modules: pp.modules.clone(),
                    cmdline: pp.cmdline.clone(),
                    disk_size: size(pp.disk_size),
                    esp_size: size(self.esp_size),
                    boot_test: (
                        pp.platform.boot_test.media.get(self.arch),
                        pp.platform.boot_test.memory_mib,
                    ),
                })
                .collect(),
        }
    }

    /// The boot entry of platform `i`, as it will be written to the ESP.
    pub fn bls_entry(&self, i: usize) -> String {
        let pp = &self.platforms[i];
        crate::assets::esp::bls_entry(&super::cmdline::boot_entry(
            &self.name,
            &self.os,
            &self.kernel.release,
            &pp.cmdline,
        ))
    }
}

impl Dump {
    /// The dump as indented text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &str| s.push_str(&format!("{k:<12} {v}\n"));
        line("profile", &self.profile);
        line("name", &self.name);
        line("arch", &self.arch);
        line("os", &format!("{} {}", self.os[0], self.os[1]));
        line("epoch", &self.epoch.to_string());
        line(
            "kernel",
            &format!("{} ({})", self.kernel.source, self.kernel.release),
        );
        line("rootfs", &format!("{}: {}", self.rootfs[0], self.rootfs[1]));
        line("squashfs", &self.squashfs);
        line("flatten", &self.flatten.to_string());
        for e in &self.extensions {
            line(
                "extension",
                &format!(
                    "{} {} ({}{}) from {}",
                    e.name,
                    e.version,
                    e.kind,
                    if e.enabled { "" } else { ", disabled" },
                    e.origin
                ),
            );
        }
        line("state", &self.state);
        for f in &self.files {
            line("file", f);
        }
        if !self.ext_modules.is_empty() {
            line("ext modules", &self.ext_modules.join(", "));
        }
        line("bootloader", &self.bootloader);
        line("init", &self.init);
        for p in &self.platforms {
            line("platform", &p.name);
            line("  outputs", &p.outputs.join(", "));
            line("  cmdline", &p.cmdline);
            line("  modules", &p.modules.join(" "));
            line("  disk", &format!("{} (ESP {})", p.disk_size, p.esp_size));
            line(
                "  boot test",
                &format!("{}, {} MiB", p.boot_test.0, p.boot_test.1),
            );
        }
        s
    }
}
