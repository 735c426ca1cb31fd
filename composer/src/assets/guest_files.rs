//! The small files the guest init reads from the initramfs, serialised from the contract types
//! in [`strata_proto::initramfs`] (the init parses the same types, so the two cannot drift):
//! `extensions.yaml`, `etc/strata/modules.check`, `etc/strata/extensions.json` and
//! `etc/strata/guest.json` (state mode and profile files).
//! (`etc/strata/modules.load` is written with the module closure in [`super::initramfs`].)
//!
//! The bytes are the ones strata has always written; the tests pin them.

use strata_proto::initramfs::{
    self, archive_name, Disabled, ExtensionsYaml, Flattened, Guest, ProfileFile, Shadowed, Shipped,
    StateMode, YamlLayer,
};
use strata_proto::ExtensionKind;

use crate::assets::layers::{Composed, Layer, ModuleLayer};
use crate::error::{Error, ErrorKind, Result};
use crate::extension::source::Resolved;
use std::path::PathBuf;

/// `extensions.yaml` in Talos' format: `layers: [{image, metadata}]`, lowest first; each
/// layer's whole manifest metadata is passed through.
pub fn extensions_yaml<'a>(
    layers: impl IntoIterator<Item = (&'a str, &'a serde_norway::Value)>,
) -> Result<String, serde_norway::Error> {
    let doc = ExtensionsYaml {
        layers: layers
            .into_iter()
            .map(|(image, metadata)| YamlLayer {
                image: image.to_string(),
                metadata,
            })
            .collect(),
    };
    serde_norway::to_string(&doc)
}

/// Where a sysext/confext image goes in the initramfs archive (`sysext/<name>.raw`);
/// `None` for a Talos extension, whose layers are named in `extensions.yaml`.
pub fn image_name(kind: ExtensionKind, name: &str) -> Option<String> {
    let path = initramfs::image_path(kind.class()?, name);
    Some(archive_name(&path).to_string())
}

/// `etc/strata/modules.check`: the extension modules the init loads by name.
pub fn modules_check(names: &[String]) -> (String, Vec<u8>) {
    (
        archive_name(initramfs::MODULES_CHECK).to_string(),
        initramfs::modules_check_text(names).into_bytes(),
    )
}

/// One extension shipped but not activated, for `extensions.json`.
pub fn disabled(kind: ExtensionKind, name: &str, version: &str, path: String) -> Disabled {
    Disabled {
        kind,
        name: name.to_string(),
        path,
        version: version.to_string(),
    }
}

/// `etc/strata/extensions.json`: the flattened and the disabled extensions; `None` when
/// there are neither (the file is then left out).
pub fn extensions_json(
    flattened: &[Flattened],
    disabled: Vec<Disabled>,
) -> Option<(String, Vec<u8>)> {
    let shipped = Shipped {
        disabled,
        flattened: flattened.to_vec(),
    };
    (!shipped.is_empty()).then(|| {
        (
            archive_name(initramfs::EXTENSIONS_JSON).to_string(),
            shipped.to_bytes(),
        )
    })
}

/// `etc/strata/guest.json`: the state mode, the profile's files and the files Talos layers
/// shadow (see [`crate::assets::layers::shadowed`]) and whether to start the extension
/// services (`boot_test.services`); `None`
/// when both are the defaults (the file is then left out, and images
/// without them keep their bytes).
pub fn guest_json(
    state: StateMode,
    files: &[ProfileFile],
    shadowed: Vec<Shadowed>,
    services: bool,
) -> Option<(String, Vec<u8>)> {
    let guest = Guest {
        state,
        files: files.to_vec(),
        shadowed,
        services,
    };
    (!guest.is_default()).then(|| {
        (
            archive_name(initramfs::GUEST_JSON).to_string(),
            guest.to_bytes(),
        )
    })
}

/// `extensions.yaml` for the composed layers (Talos' format, lowest first).
pub fn layers_yaml(layers: &[Layer]) -> Result<String> {
    extensions_yaml(layers.iter().map(|l| (&*l.image, &l.metadata)))
        .map_err(|e| Error::step(ErrorKind::Io, "writing extensions.yaml", e))
}

/// The sysext/confext images the initramfs carries, by archive name; none when the
/// extensions were flattened into the root.
pub fn sysext_images(exts: &[Resolved], c: &Composed) -> Vec<(String, PathBuf)> {
    if !c.flattened.is_empty() {
        return Vec::new();
    }
    exts.iter()
        .filter_map(|e| Some((image_name(e.kind, &e.name)?, c.image_file(e)?)))
        .collect()
}

/// Files the init reads from `/etc/strata`: `modules.check` (extension modules to load by
/// name) and `extensions.json` (flattened and disabled extensions).
pub fn init_files(
    flattened: &[Flattened],
    disabled_exts: &[Resolved],
    modules: Option<&ModuleLayer>,
) -> Vec<(String, Vec<u8>)> {
    let disabled_list = disabled_exts
        .iter()
        .map(|e| disabled(e.kind, &e.name, &e.version, e.available_path()))
        .collect();
    modules
        .map(|m| modules_check(&m.names))
        .into_iter()
        .chain(extensions_json(flattened, disabled_list))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::initramfs::Probe;

    /// The exact bytes the composer wrote before the contract types (with `json!`, whose map
    /// sorts keys), for the same extensions.
    const EXTENSIONS_JSON_BEFORE: &str = r#"{
  "disabled": [
    {
      "kind": "sysext",
      "name": "tools",
      "path": "/usr/lib/strata/extensions-available/tools.raw",
      "version": "2.0"
    }
  ],
  "flattened": [
    {
      "kind": "talos",
      "name": "hello",
      "probe": {
        "path": "/usr/local/bin/hello",
        "sha256": "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
      },
      "version": "1.0.0"
    }
  ]
}"#;

    fn hello() -> Flattened {
        Flattened {
            kind: ExtensionKind::Talos,
            name: "hello".into(),
            probe: Probe {
                path: "/usr/local/bin/hello".into(),
                sha256: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03".into(),
            },
            version: "1.0.0".into(),
        }
    }

    #[test]
    fn extensions_json_keeps_its_bytes() {
        let tools = disabled(
            ExtensionKind::Sysext,
            "tools",
            "2.0",
            "/usr/lib/strata/extensions-available/tools.raw".into(),
        );
        let (name, bytes) = extensions_json(&[hello()], vec![tools.clone()]).unwrap();
        assert_eq!(name, "etc/strata/extensions.json");
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            EXTENSIONS_JSON_BEFORE
        );
        // The same bytes the old `json!` document gave.
        let old = serde_json::json!({
            "flattened": [hello()],
            "disabled": [{ "name": "tools", "version": "2.0", "kind": "sysext",
                           "path": "/usr/lib/strata/extensions-available/tools.raw" }],
        });
        assert_eq!(bytes, serde_json::to_vec_pretty(&old).unwrap());
        let (_, only_flat) = extensions_json(&[hello()], Vec::new()).unwrap();
        assert!(String::from_utf8(only_flat)
            .unwrap()
            .starts_with("{\n  \"disabled\": [],\n"));
        assert!(extensions_json(&[], Vec::new()).is_none());
    }

    #[test]
    fn guest_json_is_left_out_by_default_and_read_back_by_the_guest() {
        assert!(guest_json(StateMode::Tmpfs, &[], Vec::new(), false).is_none());
        let (name, bytes) = guest_json(StateMode::Persistent, &[], Vec::new(), false).unwrap();
        assert_eq!(name, "etc/strata/guest.json");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\n  \"state\": \"persistent\"\n}"
        );
        let file = ProfileFile {
            path: "/etc/hostname".into(),
            kind: initramfs::FileKind::File,
            sha256: "ab".repeat(32),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let (_, bytes) = guest_json(
            StateMode::Tmpfs,
            std::slice::from_ref(&file),
            Vec::new(),
            false,
        )
        .unwrap();
        let back: Guest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.files, [file]);
        assert_eq!(back.state, StateMode::Tmpfs);
    }

    #[test]
    fn images_go_where_the_init_looks() {
        assert_eq!(
            image_name(ExtensionKind::Sysext, "tools").as_deref(),
            Some("sysext/tools.raw")
        );
        assert_eq!(
            image_name(ExtensionKind::Confext, "cfg").as_deref(),
            Some("confext/cfg.raw")
        );
        assert_eq!(image_name(ExtensionKind::Talos, "hello"), None);
    }

    #[test]
    fn modules_check_keeps_its_bytes() {
        let (name, bytes) = modules_check(&["macvtap".into(), "nvme-core".into()]);
        assert_eq!(name, "etc/strata/modules.check");
        assert_eq!(
            bytes,
            b"# written by strata: extension modules the init loads by name\nmacvtap\nnvme-core\n"
        );
    }

    #[test]
    fn extensions_yaml_keeps_its_bytes_and_the_guest_reads_it() {
        let meta: serde_norway::Value = serde_norway::from_str(
            "name: hello\nversion: 1.0.0\nauthor: Someone\ncompatibility:\n  talos:\n    version: '>= 1.0.0'\n",
        )
        .unwrap();
        let text = extensions_yaml([("00-hello.sqsh", &meta)]).unwrap();
        assert_eq!(
            text,
            "layers:\n- image: 00-hello.sqsh\n  metadata:\n    name: hello\n    version: 1.0.0\n    author: Someone\n    compatibility:\n      talos:\n        version: '>= 1.0.0'\n"
        );
        // The same bytes as the composer's former ad-hoc document.
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            image: &'a str,
            metadata: &'a serde_norway::Value,
        }
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            layers: Vec<Entry<'a>>,
        }
        let old = Doc {
            layers: vec![Entry {
                image: "00-hello.sqsh",
                metadata: &meta,
            }],
        };
        assert_eq!(text, serde_norway::to_string(&old).unwrap());
        let read: ExtensionsYaml<initramfs::LayerMetadata> = serde_norway::from_str(&text).unwrap();
        assert_eq!(read.layers[0].image, "00-hello.sqsh");
        assert_eq!(read.layers[0].metadata.version, "1.0.0");
        assert_eq!(extensions_yaml([]).unwrap(), "layers: []\n");
    }
}
