//! OCI images as a source of extensions: references, registries, image-layout directories,
//! docker-archive tarballs, a verified blob cache, and layer application into a [`Tree`].
//!
//! Talos publishes each system extension as an OCI image whose flattened filesystem holds
//! exactly `manifest.yaml` and `rootfs/`. This module gets such an image onto disk with every
//! byte checked against its sha256 digest, picks the manifest for the build's architecture, and
//! flattens its layers into a [`Tree`]:
//!
//! - [`mod@reference`]: `registry/repository:tag@sha256:…` parsing with Docker Hub defaults;
//! - [`registry`]: pull and push over the OCI distribution API (HTTPS, or plain HTTP for the
//!   registries the user lists), credentials from the Docker config file;
//! - [`cache`]: a content-addressed blob store and a reference → digest index for `--offline`;
//! - [`layout`]: OCI image-layout directories, read and written (deterministically);
//! - [`archive`]: `docker save` tarballs;
//! - [`image`]: the JSON documents (manifest, index, config) and architecture selection shared by
//!   all sources;
//! - [`mod@unpack`]: whiteout-aware, escape-proof layer application.
//!
//! Not supported: image signatures and attestations, foreign layers fetched from URLs, schema 1
//! Docker manifests, encrypted layers, and Windows images.
//!
//! [`Tree`]: crate::fs::tree::Tree

pub mod archive;
pub mod cache;
pub mod image;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod unpack;

pub use cache::Cache;
pub use image::{Digest, LayerBlob, Platform, PulledImage};
pub use reference::Reference;
pub use registry::{pull, push, PullOptions};
pub use unpack::unpack;
