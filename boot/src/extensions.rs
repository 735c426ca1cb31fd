//! `/extensions.yaml`: which extension images to stack, in Talos' format.
//!
//! ```yaml
//! layers:
//!   - image: 00-hello.sqsh
//!     metadata: {name: hello, version: 1.0.0, author: ..., description: ...}
//! ```
//!
//! Supported: the `layers` list (absent, `null` or empty = no extensions; an
//! empty file or a missing file = no extensions), `image` as a plain file
//! name found at `/<image>` in the initramfs, `metadata.name` and
//! `metadata.version` (a YAML number such as `1.2` is accepted and shown as
//! YAML reads it, so quote versions to keep them exact). Unknown keys are
//! ignored. Not supported: images in subdirectories, other top-level formats.
//! The types are [`strata_proto::initramfs::ExtensionsYaml`], which the
//! composer serialises; the YAML parsing stays here.

use std::io;
use std::path::{Path, PathBuf};

pub use strata_proto::initramfs::EXTENSIONS_YAML;
use strata_proto::initramfs::{is_plain_name, ExtensionsYaml, LayerMetadata, YamlLayer};

/// The file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer names an image that is not a plain file name.
    #[error("{file}: layer {index} image {image:?} is not a plain file name; images live at /<name> in the initramfs")]
    BadImage {
        /// The YAML file.
        file: PathBuf,
        /// Position in `layers`.
        index: usize,
        /// The name as written.
        image: String,
    },
    /// The YAML does not match the format.
    #[error(
        "{file} is not a valid extensions list (layers: [{{image, metadata: {{name, version}}}}])"
    )]
    Parse {
        /// The YAML file.
        file: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_norway::Error,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {file}")]
    Read {
        /// The YAML file.
        file: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// The whole file, as the guest reads it.
pub type Extensions = ExtensionsYaml<LayerMetadata>;

/// One extension layer, as the guest reads it.
pub type Layer = YamlLayer<LayerMetadata>;

/// Parses the text; `file` only names the file in errors.
pub fn parse(text: &str, file: &Path) -> Result<Extensions, Error> {
    if text.trim().is_empty() {
        return Ok(Extensions::default());
    }
    let parsed: Option<Extensions> =
        serde_norway::from_str(text).map_err(|source| Error::Parse {
            file: file.to_path_buf(),
            source,
        })?;
    let extensions = parsed.unwrap_or_default();
    for (index, layer) in extensions.layers.iter().enumerate() {
        if !is_plain_name(&layer.image) {
            return Err(Error::BadImage {
                file: file.to_path_buf(),
                index,
                image: layer.image.clone(),
            });
        }
    }
    Ok(extensions)
}

/// Reads and parses the file; a missing file means no extensions.
pub fn read(file: &Path) -> Result<Extensions, Error> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(&text, file),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Extensions::default()),
        Err(source) => Err(Error::Read {
            file: file.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::error_chain;

    const FILE: &str = "/extensions.yaml";

    fn parse_ok(text: &str) -> Extensions {
        parse(text, Path::new(FILE)).unwrap()
    }

    #[test]
    fn reads_talos_layers_and_ignores_unknown_keys() {
        let text = r#"
layers:
  - image: 00-hello.sqsh
    metadata:
      name: hello
      version: 1.0.0
      author: Someone
      description: says hello
      compatibility:
        talos:
          version: ">= 1.0.0"
      extra: [1, 2]
  - image: 01-world.sqsh
    metadata: {name: world, version: "2.0"}
"#;
        let ext = parse_ok(text);
        assert_eq!(ext.layers.len(), 2);
        assert_eq!(ext.layers[0].image, "00-hello.sqsh");
        assert_eq!(ext.layers[0].metadata.name, "hello");
        assert_eq!(ext.layers[0].metadata.version, "1.0.0");
        assert_eq!(ext.layers[1].metadata.version, "2.0");
        assert_eq!(ext.layers[1].image_path(), PathBuf::from("/01-world.sqsh"));
    }

    #[test]
    fn no_layers_in_many_spellings() {
        for text in ["", "\n", "layers: []\n", "layers:\n", "{}\n", "~\n"] {
            assert!(parse_ok(text).layers.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn numeric_versions_are_accepted_as_yaml_reads_them() {
        let ext = parse_ok("layers:\n  - image: a.sqsh\n    metadata: {name: 7, version: 1.5}\n");
        assert_eq!(ext.layers[0].metadata.name, "7");
        assert_eq!(ext.layers[0].metadata.version, "1.5");
    }

    #[test]
    fn missing_metadata_is_an_error_naming_the_file() {
        let err = parse("layers:\n  - image: a.sqsh\n", Path::new(FILE)).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }));
        assert!(error_chain(&err).starts_with("/extensions.yaml is not a valid extensions list"));
        let err = parse(
            "layers:\n  - image: a.sqsh\n    metadata: {name: a}\n",
            Path::new(FILE),
        );
        assert!(err.is_err());
    }

    #[test]
    fn images_must_be_plain_file_names() {
        for image in ["../etc/passwd", "sub/x.sqsh", "..", ""] {
            let text =
                format!("layers:\n  - image: \"{image}\"\n    metadata: {{name: a, version: b}}\n");
            let err = parse(&text, Path::new(FILE)).unwrap_err();
            assert!(matches!(err, Error::BadImage { index: 0, .. }), "{image:?}");
        }
    }

    #[test]
    fn a_missing_file_means_no_extensions() {
        assert!(read(Path::new("/nonexistent/extensions.yaml"))
            .unwrap()
            .layers
            .is_empty());
    }
}
