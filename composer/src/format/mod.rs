//! Output formats, one module each, all written natively from the raw disk
//! image (no qemu-img, xorriso or tar):
//!
//! | format | module | what |
//! |---|---|---|
//! | `raw` | — | the sparse GPT disk itself |
//! | `qcow2` | [`qcow2`] | qcow2 v3, zero clusters not stored |
//! | `vhd`, `vhd-dynamic` | [`vhd`] | VHD fixed (Azure) or dynamic |
//! | `vmdk` | [`vmdk`] | VMDK streamOptimized |
//! | `ova` | [`ova`] | OVF + streamOptimized VMDK + SHA256 manifest in a tar |
//! | `raw.tar.gz` | [`gcp`] | `disk.raw` in a GNU tar, gzip'd, as GCE imports |
//! | `iso` | [`iso`] | ISO 9660 + El Torito UEFI, hybrid GPT |
//!
//! Any of them can be wrapped in `.xz` or `.zst` ([`crate::io::compress`]). Compression
//! wraps a finished artefact; it never happens inside a format writer.

pub mod output;

pub mod gcp;
pub mod iso;
pub mod ova;
pub mod qcow2;
pub mod vhd;
pub mod vmdk;

use std::fmt;

/// A container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// Sparse raw GPT disk.
    Raw,
    /// qcow2 v3.
    Qcow2,
    /// VHD, fixed.
    Vhd,
    /// VHD, dynamic.
    VhdDynamic,
    /// VMDK streamOptimized.
    Vmdk,
    /// OVA (OVF + VMDK).
    Ova,
    /// GCE: disk.raw in a tar.gz.
    GcpTar,
    /// Hybrid ISO 9660.
    Iso,
}

/// A compression wrapper around a finished artefact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Wrap {
    /// `.xz` (multi-threaded, CRC64).
    Xz,
    /// `.zst` (multi-threaded).
    Zst,
}

/// One requested output: a format, maybe wrapped, with its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutputKind {
    /// The container format.
    pub format: Format,
    /// Compression around it.
    pub wrap: Option<Wrap>,
    /// qcow2 cluster size as a power of two (16 = 64 KiB).
    pub qcow2_cluster_bits: u32,
}

/// Every name `outputs:` accepts, for error messages.
pub const NAMES: &str = "raw, qcow2, vhd, vhd-dynamic, vmdk, ova, raw.tar.gz, iso — optionally followed by .xz or .zst (e.g. raw.zst)";

impl OutputKind {
    /// Parses an output name such as `raw.zst`, `qcow2` or `raw.tar.gz`.
    pub fn parse(name: &str) -> Result<OutputKind, String> {
        let (base, wrap) = match name.rsplit_once('.') {
            Some((b, "xz")) => (b, Some(Wrap::Xz)),
            Some((b, "zst")) => (b, Some(Wrap::Zst)),
            _ => (name, None),
        };
        let format = match base {
            "raw" => Format::Raw,
            "qcow2" => Format::Qcow2,
            "vhd" => Format::Vhd,
            "vhd-dynamic" => Format::VhdDynamic,
            "vmdk" => Format::Vmdk,
            "ova" => Format::Ova,
            "raw.tar.gz" => Format::GcpTar,
            "iso" => Format::Iso,
            _ => return Err(format!("unknown output format `{name}`; known: {NAMES}")),
        };
        if format == Format::GcpTar && wrap.is_some() {
            return Err(format!("`{name}`: raw.tar.gz is compressed already"));
        }
        Ok(OutputKind {
            format,
            wrap,
            qcow2_cluster_bits: 16,
        })
    }

    /// The file extension, e.g. `raw.zst`, `vhd`, `raw.tar.gz`.
    pub fn extension(&self) -> String {
        let base = match self.format {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd | Format::VhdDynamic => "vhd",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
            Format::GcpTar => "raw.tar.gz",
            Format::Iso => "iso",
        };
        match self.wrap {
            Some(Wrap::Xz) => format!("{base}.xz"),
            Some(Wrap::Zst) => format!("{base}.zst"),
            None => base.to_string(),
        }
    }

    /// `<platform>-<arch>.<extension>`.
    pub fn file_name(&self, platform: &str, arch: &str) -> String {
        format!("{platform}-{arch}.{}", self.extension())
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self.format {
            Format::VhdDynamic => "vhd-dynamic".to_string(),
            _ => self
                .extension()
                .split(['.'])
                .next()
                .unwrap_or("")
                .to_string(),
        };
        let base = if self.format == Format::GcpTar {
            "raw.tar.gz".to_string()
        } else {
            base
        };
        match self.wrap {
            Some(Wrap::Xz) => write!(f, "{base}.xz"),
            Some(Wrap::Zst) => write!(f, "{base}.zst"),
            None => f.write_str(&base),
        }
    }
}

/// Parses a list of output names (the profile's, else the platform's); on error,
/// the index of the offending name and why. Two names that would write the same
/// file are refused.
pub fn requested(names: &[String]) -> std::result::Result<Vec<OutputKind>, (usize, String)> {
    let mut out: Vec<OutputKind> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let k = OutputKind::parse(n).map_err(|m| (i, m))?;
        if out.iter().any(|o| o.extension() == k.extension()) {
            return Err((
                i,
                format!("`{n}` would write the same file as an earlier output"),
            ));
        }
        out.push(k);
    }
    Ok(out)
}

/// A run of guest bytes that a format stores contiguously: `len` bytes of the raw image at
/// `guest` are at `host` in the output file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Offset in the raw image.
    pub guest: u64,
    /// Offset in the output file.
    pub host: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Appends a run, merging it into the last one when both sides continue it.
pub(crate) fn push_run(runs: &mut Vec<Run>, run: Run) {
    match runs.last_mut() {
        Some(r) if r.guest + r.len == run.guest && r.host + r.len == run.host => r.len += run.len,
        _ => runs.push(run),
    }
}

/// `stored` (byte ranges of the raw image) as byte ranges of an output that holds the raw
/// image's bytes in `runs` (sorted by guest offset): what the `.xz` and `.zst` wrappers of
/// that output store. Bytes in no run (zeros the format leaves out) are dropped.
pub fn through(stored: &[(u64, u64)], runs: &[Run]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in stored {
        let end = off + len;
        let first = runs.partition_point(|r| r.guest + r.len <= off);
        for r in runs[first..].iter().take_while(|r| r.guest < end) {
            let (s, e) = (off.max(r.guest), end.min(r.guest + r.len));
            if s < e {
                let host = r.host + (s - r.guest);
                match out.last_mut() {
                    Some((o, l)) if *o + *l == host => *l += e - s,
                    _ => out.push((host, e - s)),
                }
            }
        }
    }
    out
}

/// Test judge of a writer's runs: each run holds the raw image's bytes where
/// it says, and the stored (already compressed) ranges map through them whole.
#[cfg(test)]
pub(crate) fn assert_runs_map(
    image: &std::path::Path,
    raw: &std::path::Path,
    stored: &[(u64, u64)],
    runs: &[Run],
) {
    let (img, rawb) = (std::fs::read(image).unwrap(), std::fs::read(raw).unwrap());
    for r in runs {
        let (g, h, n) = (r.guest as usize, r.host as usize, r.len as usize);
        assert!(img[h..h + n] == rawb[g..g + n], "{r:?}");
    }
    let total: u64 = through(stored, runs).iter().map(|r| r.1).sum();
    assert_eq!(total, stored.iter().map(|r| r.1).sum::<u64>());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in [
            "raw",
            "raw.zst",
            "raw.xz",
            "qcow2",
            "qcow2.xz",
            "vhd",
            "vhd-dynamic",
            "vhd.zst",
            "vmdk",
            "ova",
            "raw.tar.gz",
            "iso",
        ] {
            let k = OutputKind::parse(n).unwrap();
            assert_eq!(k.to_string(), n);
        }
        assert_eq!(
            OutputKind::parse("vhd.zst")
                .unwrap()
                .file_name("azure", "amd64"),
            "azure-amd64.vhd.zst"
        );
        assert_eq!(
            OutputKind::parse("raw.tar.gz")
                .unwrap()
                .file_name("gcp", "arm64"),
            "gcp-arm64.raw.tar.gz"
        );
        assert!(OutputKind::parse("raw.tar.gz.xz")
            .unwrap_err()
            .contains("compressed already"));
        assert!(OutputKind::parse("vdi").unwrap_err().contains("known: raw"));
    }

    #[test]
    fn stored_ranges_follow_the_runs() {
        let mut runs = Vec::new();
        for (guest, host, len) in [(0, 100, 10), (10, 110, 10), (50, 120, 30), (90, 200, 10)] {
            push_run(&mut runs, Run { guest, host, len });
        }
        assert_eq!(runs.len(), 3, "{runs:?}");
        // 5..60 covers the end of the first run, a gap (20..50) and the start of the second,
        // which continues the first on the host side.
        assert_eq!(through(&[(5, 55)], &runs), vec![(105, 25)]);
        assert_eq!(through(&[(20, 30), (85, 100)], &runs), vec![(200, 10)]);
        assert!(through(&[], &runs).is_empty());
    }
}
