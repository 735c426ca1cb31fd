//! The architecture rule of extension contents as findings: the Talos rules and the sysext
//! content checks both call [`elf_finding`], and the build's own tree check
//! (`plan::binaries::check_tree_arch`) applies the same [`judge_elf`] rule.
//!
//! A program for another machine where the target would run it (see [`crate::binary`]) is an
//! error under the caller's rule id; an ELF file for another machine anywhere else is data —
//! firmware QEMU loads into emulated machines, another architecture's multiarch libraries —
//! and only a note (`content.foreign-elf`), so a hypervisor extension carrying
//! `/usr/share/qemu/openbios-ppc` validates and composes.

use crate::binary::{elf_machine_name, judge_elf, ElfVerdict};
use crate::extension::findings::Finding;
use crate::fs::tree::FileData;

/// The rule id of the note about foreign ELF data.
pub const FOREIGN_DATA: &str = "content.foreign-elf";

/// The finding for the file at `path` (absolute in the tree; `shown` is how findings name
/// it) against the target machine `want`, or `None` when there is nothing to say.
/// `rule` is the caller's id for a foreign program (`talos.arch`, `sysext.elf-arch`).
pub fn elf_finding(
    shown: &str,
    path: &str,
    data: &FileData,
    want: u16,
    rule: &'static str,
) -> Option<Finding> {
    let verdict = match judge_elf(path, data, want) {
        Ok(v) => v,
        Err(e) => {
            return Some(Finding::error(
                shown,
                "content.unreadable",
                format!("cannot read the file to check its architecture: {e}"),
                "check the file's permissions",
            ))
        }
    };
    match verdict {
        ElfVerdict::Fine => None,
        ElfVerdict::ForeignProgram(got) => Some(Finding::error(
            shown,
            rule,
            format!(
                "ELF program is built for {}, but the target architecture is {}",
                elf_machine_name(got),
                elf_machine_name(want)
            ),
            "use the extension build for the target architecture",
        )),
        ElfVerdict::ForeignData(got) => Some(Finding::info(
            shown,
            FOREIGN_DATA,
            format!(
                "ELF file for {} outside the program directories: taken as data (firmware for \
                 an emulated machine, test data), not run on {}",
                elf_machine_name(got),
                elf_machine_name(want)
            ),
            "",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::test_elf;
    use crate::extension::findings::Severity;

    #[test]
    fn foreign_programs_are_errors_and_foreign_data_a_note() {
        let arm = FileData::Bytes(test_elf(183, false));
        let f = elf_finding(
            "rootfs/usr/local/bin/x",
            "/usr/local/bin/x",
            &arm,
            62,
            "talos.arch",
        )
        .expect("finding");
        assert_eq!((f.severity, f.rule), (Severity::Error, "talos.arch"));
        assert!(f.message.contains("built for arm64"), "{}", f.message);
        let ppc = FileData::Bytes(test_elf(20, true));
        let f = elf_finding(
            "/usr/share/qemu/openbios-ppc",
            "/usr/share/qemu/openbios-ppc",
            &ppc,
            62,
            "sysext.elf-arch",
        )
        .expect("finding");
        assert_eq!((f.severity, f.rule), (Severity::Info, FOREIGN_DATA));
        let x86 = FileData::Bytes(test_elf(62, false));
        assert_eq!(
            elf_finding("/usr/bin/x", "/usr/bin/x", &x86, 62, "talos.arch"),
            None
        );
    }
}
