//! Files the guest reads, made from the plan and the composed layers:
//! `extensions.yaml` (Talos' format), `/etc/strata/modules.check` and
//! `/etc/strata/extensions.json` (the init's contract), and the list of
//! sysext/confext images the initramfs carries.

use crate::assets::layers::{Composed, Layer, ModuleLayer};
use crate::error::{Error, ErrorKind, Result};
use crate::extension::source::Resolved;
use std::path::PathBuf;

/// `extensions.yaml` in Talos' format: `layers: [{image, metadata}]`, lowest first.
pub fn extensions_yaml(layers: &[Layer]) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        image: &'a str,
        metadata: &'a serde_norway::Value,
    }
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        layers: Vec<Entry<'a>>,
    }
    let doc = Doc {
        layers: layers
            .iter()
            .map(|l| Entry {
                image: &l.image,
                metadata: &l.metadata,
            })
            .collect(),
    };
    serde_norway::to_string(&doc)
        .map_err(|e| Error::step(ErrorKind::Io, "writing extensions.yaml", e))
}

/// sysext/confext images for the initramfs (layered mode): (path in the archive, file).
pub fn sysext_images(exts: &[Resolved], c: &Composed) -> Vec<(String, PathBuf)> {
    if !c.flattened.is_empty() {
        return Vec::new();
    }
    exts.iter()
        .filter_map(|e| {
            e.raw_image
                .as_ref()
                .map(|raw| (format!("{}/{}.raw", e.kind.as_str(), e.name), raw.clone()))
        })
        .collect()
}

/// Files the init reads from `/etc/strata`: `modules.check` (extension
/// modules to load by name) and `extensions.json` (flattened extensions).
pub fn init_files(
    c: &Composed,
    disabled: &[Resolved],
    modules: Option<&ModuleLayer>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(m) = modules {
        let mut text =
            String::from("# written by strata: extension modules the init loads by name\n");
        for n in &m.names {
            text.push_str(n);
            text.push('\n');
        }
        out.push(("etc/strata/modules.check".to_string(), text.into_bytes()));
    }
    if !c.flattened.is_empty() || !disabled.is_empty() {
        let disabled: Vec<serde_json::Value> = disabled
            .iter()
            .map(|e| serde_json::json!({ "name": e.name, "version": e.version, "kind": e.kind.as_str(), "path": e.available_path() }))
            .collect();
        let doc = serde_json::json!({ "flattened": c.flattened, "disabled": disabled });
        out.push((
            "etc/strata/extensions.json".to_string(),
            serde_json::to_vec_pretty(&doc)
                .map_err(|e| Error::step(ErrorKind::Io, "writing extensions.json", e))?,
        ));
    }
    Ok(out)
}
