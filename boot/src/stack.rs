//! Layer order: for each file several Talos layers ship (`guest.json`'s
//! `shadowed`, computed by the composer), which layer's copy the merged
//! root shows. Talos stacks the layers in `extensions.yaml` order, the
//! later one on top, and overlayfs shows the topmost copy; a root that
//! shows a lower copy has its layers in the wrong order.
//!
//! The copy shown is named by content: the merged file's sha256 is
//! compared with each layer's own copy, read from the layer's mount point.
//! Two layers that ship identical bytes cannot be told apart; the check
//! then still passes on content (the expected digest matches). Not
//! checked here: sysext/confext order (their own merge), directories and
//! symlinks.

use std::path::{Path, PathBuf};

use strata_proto::initramfs::Shadowed;
use strata_proto::report::Event;

use crate::shipped::sha256_file;

/// One mounted Talos layer: its extension name and mount point.
#[derive(Debug, Clone)]
pub struct Mounted {
    /// The extension's name, as `extensions.yaml` gives it.
    pub name: String,
    /// Where the layer's squashfs is mounted; `None` when it did not mount.
    pub dir: Option<PathBuf>,
}

/// Checks one shadowed file in `merged` against the layers' own copies.
pub fn check(merged: &Path, want: &Shadowed, layers: &[Mounted]) -> Event {
    let expected = want.layers.last().cloned().unwrap_or_default();
    let rel = want.path.trim_start_matches('/');
    let (ok, shown, detail) = match sha256_file(&merged.join(rel)) {
        Err(err) => (
            false,
            String::new(),
            Some(format!("cannot read it in the merged root: {err}")),
        ),
        Ok(sum) => {
            let shown = shown_layer(&sum, rel, &want.layers, layers);
            let ok = sum.eq_ignore_ascii_case(&want.sha256);
            let detail = (!ok).then(|| match &shown {
                Some(name) => format!(
                    "the merged root shows {name}'s copy, not {expected}'s: the layers are not stacked in profile order ({})",
                    want.layers.join(" < ")
                ),
                None => format!(
                    "its content (sha256 {sum}) is none of the layers' copies (expected {expected}'s, sha256 {})",
                    want.sha256
                ),
            });
            (ok, shown.unwrap_or_default(), detail)
        }
    };
    Event::Stack {
        path: want.path.clone(),
        layers: want.layers.clone(),
        expected,
        shown,
        ok,
        detail,
    }
}

/// The uppermost of `names` whose own copy of `rel` has digest `sum`.
fn shown_layer(sum: &str, rel: &str, names: &[String], layers: &[Mounted]) -> Option<String> {
    names
        .iter()
        .rev()
        .find(|name| {
            layers
                .iter()
                .filter(|l| &&l.name == name)
                .filter_map(|l| l.dir.as_ref())
                .any(|dir| sha256_file(&dir.join(rel)).is_ok_and(|s| s == sum))
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;
    use crate::shipped::hex;
    use sha2::{Digest, Sha256};

    const PATH: &str = "usr/local/share/order/who";

    fn sum(text: &str) -> String {
        hex(&Sha256::digest(text.as_bytes()))
    }

    /// Layers `lower` and `upper` each ship `PATH` with their own name as content; the
    /// merged root holds `shown`.
    fn setup(shown: Option<&str>) -> (TestDir, Vec<Mounted>, Shadowed) {
        let dir = TestDir::new("stack");
        let mut layers = Vec::new();
        for name in ["lower", "upper"] {
            dir.file(&format!("{name}/{PATH}"), name.as_bytes());
            layers.push(Mounted {
                name: name.into(),
                dir: Some(dir.0.join(name)),
            });
        }
        dir.dir("merged");
        if let Some(text) = shown {
            dir.file(&format!("merged/{PATH}"), text.as_bytes());
        }
        let want = Shadowed {
            path: format!("/{PATH}"),
            layers: vec!["lower".into(), "upper".into()],
            sha256: sum("upper"),
        };
        (dir, layers, want)
    }

    fn outcome(event: Event) -> (bool, String, Option<String>) {
        match event {
            Event::Stack {
                ok, shown, detail, ..
            } => (ok, shown, detail),
            other => panic!("not a stack event: {other:?}"),
        }
    }

    #[test]
    fn the_upper_layers_copy_passes() {
        let (dir, layers, want) = setup(Some("upper"));
        let (ok, shown, detail) = outcome(check(&dir.0.join("merged"), &want, &layers));
        assert!(ok, "{detail:?}");
        assert_eq!(shown, "upper");
        assert_eq!(detail, None);
    }

    #[test]
    fn the_lower_layers_copy_fails_naming_it() {
        let (dir, layers, want) = setup(Some("lower"));
        let (ok, shown, detail) = outcome(check(&dir.0.join("merged"), &want, &layers));
        assert!(!ok);
        assert_eq!(shown, "lower");
        let detail = detail.unwrap();
        assert!(
            detail.contains("shows lower's copy, not upper's") && detail.contains("lower < upper"),
            "{detail}"
        );
    }

    #[test]
    fn foreign_content_or_a_missing_file_fails() {
        let (dir, layers, want) = setup(Some("neither"));
        let (ok, shown, detail) = outcome(check(&dir.0.join("merged"), &want, &layers));
        assert!(!ok && shown.is_empty());
        assert!(detail.unwrap().contains("none of the layers' copies"));
        let (dir, layers, want) = setup(None);
        let (ok, _, detail) = outcome(check(&dir.0.join("merged"), &want, &layers));
        assert!(!ok);
        assert!(detail
            .unwrap()
            .contains("cannot read it in the merged root"));
    }
}
