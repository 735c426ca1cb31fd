//! Choosing between KVM and TCG (QEMU's software emulator).
//!
//! KVM is used only when it can really run the guest: the guest has the
//! host's architecture, `/dev/kvm` opens read-write, and on x86 the CPU
//! advertises hardware virtualisation (`vmx` or `svm` in /proc/cpuinfo).
//! The flag test matters inside VMs whose hypervisor exposes `/dev/kvm`
//! without nested virtualisation: there a KVM guest hangs instead of failing.
//! On arm64 hosts no such flag exists; `/dev/kvm` is trusted there.
//! Not supported: other accelerators (hvf, whpx, xen).

use std::fs::{self, OpenOptions};

use crate::{Accel, Arch};

/// The accelerator a run actually uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// QEMU's software emulation.
    Tcg,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
}

impl Resolved {
    /// The name QEMU's `-accel` option takes.
    pub fn name(self) -> &'static str {
        match self {
            Resolved::Tcg => "tcg",
            Resolved::Kvm => "kvm",
        }
    }
}

/// Why KVM was asked for but cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `Accel::Kvm` was requested on a host where KVM cannot run the guest.
    #[error("kvm acceleration was requested but is not usable: {reason}; use accel auto or tcg")]
    KvmUnusable {
        /// What the check found.
        reason: String,
    },
}

/// True when KVM can run a guest of the host's own architecture.
pub fn kvm_usable() -> bool {
    kvm_check(host_arch()).is_ok()
}

/// Picks the accelerator for a guest of `arch`.
pub fn resolve(accel: Accel, arch: Arch) -> Result<Resolved, Error> {
    match accel {
        Accel::Tcg => Ok(Resolved::Tcg),
        Accel::Auto => Ok(match kvm_check(arch) {
            Ok(()) => Resolved::Kvm,
            Err(_) => Resolved::Tcg,
        }),
        Accel::Kvm => kvm_check(arch)
            .map(|()| Resolved::Kvm)
            .map_err(|reason| Error::KvmUnusable { reason }),
    }
}

/// The architecture this program runs on, if it is one we can emulate.
fn host_arch() -> Option<Arch> {
    if cfg!(target_arch = "x86_64") {
        Some(Arch::Amd64)
    } else if cfg!(target_arch = "aarch64") {
        Some(Arch::Arm64)
    } else {
        None
    }
}

/// Ok when KVM can run a guest of `guest`; otherwise the reason it cannot.
fn kvm_check(guest: impl Into<Option<Arch>>) -> Result<(), String> {
    let guest = guest
        .into()
        .ok_or("the host architecture has no kvm support here")?;
    let host = host_arch();
    if host != Some(guest) {
        return Err(format!(
            "a {guest:?} guest cannot run under kvm on this host"
        ));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    if guest == Arch::Amd64 {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo")
            .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
        if !has_virt_flag(&cpuinfo) {
            return Err(
                "/proc/cpuinfo shows neither vmx nor svm (no nested virtualisation)".into(),
            );
        }
    }
    Ok(())
}

/// True when an x86 `flags` line of /proc/cpuinfo lists `vmx` or `svm`.
fn has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_flags_are_whole_words_on_the_flags_line() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\nbugs\t\t: spectre\n";
        let amd = "flags\t\t: fpu svm lm\n";
        let nested_off = "flags\t\t: fpu hypervisor lm vmx_foo\nvmx flags\t: ept\n";
        let none = "model name\t: svm-like cpu\n";
        assert!(has_virt_flag(intel));
        assert!(has_virt_flag(amd));
        assert!(!has_virt_flag(nested_off));
        assert!(!has_virt_flag(none));
        assert!(!has_virt_flag(""));
    }

    #[test]
    fn tcg_is_always_honoured() {
        assert_eq!(resolve(Accel::Tcg, Arch::Amd64).unwrap(), Resolved::Tcg);
        assert_eq!(resolve(Accel::Tcg, Arch::Arm64).unwrap(), Resolved::Tcg);
    }

    #[test]
    fn foreign_guest_never_gets_kvm() {
        let foreign = if host_arch() == Some(Arch::Amd64) {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        assert_eq!(resolve(Accel::Auto, foreign).unwrap(), Resolved::Tcg);
        let err = resolve(Accel::Kvm, foreign).unwrap_err().to_string();
        assert!(err.contains("cannot run under kvm"), "{err}");
    }

    #[test]
    fn auto_agrees_with_kvm_usable() {
        let Some(host) = host_arch() else { return };
        let expected = if kvm_usable() {
            Resolved::Kvm
        } else {
            Resolved::Tcg
        };
        assert_eq!(resolve(Accel::Auto, host).unwrap(), expected);
    }
}
