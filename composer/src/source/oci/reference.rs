//! Image references: `[registry/]repository[:tag][@sha256:digest]`.
//!
//! Follows the grammar of the distribution project (what `docker pull` accepts): the first
//! path component is a registry host when it contains `.` or `:` or is `localhost`; otherwise
//! the registry is Docker Hub (`docker.io`), where one-component names live under `library/`.
//! `index.docker.io` is the same registry as `docker.io`. Without tag or digest the tag is
//! `latest`. Repository names are lowercase.
//!
//! Not supported: sha512 or other digest algorithms, transports prefixes (`docker://`,
//! `oci:`), IPv6 registry addresses.

use std::fmt;
use std::str::FromStr;

use super::image::Digest;

/// Docker Hub, the registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that give neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name accepted (distribution's limit).
const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted (distribution's limit).
const MAX_TAG_LEN: usize = 128;

/// Errors from parsing an image reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The reference does not follow the grammar.
    #[error(
        "image reference {reference:?} is not valid: {reason}; hint: write \
         [registry/]repository[:tag][@sha256:digest], e.g. ghcr.io/siderolabs/gvisor:20231214"
    )]
    Invalid {
        /// The text given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port, e.g. `ghcr.io`, `127.0.0.1:5000`, `docker.io`.
    pub registry: String,
    /// Repository path within the registry, e.g. `siderolabs/gvisor`, `library/alpine`.
    pub repository: String,
    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// The manifest digest, if pinned; it wins over the tag when pulling.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference as `docker pull` would.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let bad = |reason: &str| ReferenceError::Invalid {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(Digest::parse(digest).map_err(|e| bad(&e.to_string()))?),
            ),
            None => (text, None),
        };
        let (name, tag) = split_tag(rest);
        if let Some(tag) = tag {
            check_tag(tag).map_err(bad)?;
        }
        let (registry, repository) = split_registry(name).map_err(bad)?;
        check_repository(&repository).map_err(bad)?;
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same image pinned to `digest` (the tag is kept for messages).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `name[:tag]`; a `:` followed by a `/` belongs to a registry port, not a tag.
fn split_tag(rest: &str) -> (&str, Option<&str>) {
    match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    }
}

/// Splits off the registry host, applying Docker Hub's defaults.
fn split_registry(name: &str) -> Result<(String, String), &'static str> {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            check_registry(first)?;
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" {
        DEFAULT_REGISTRY.to_string()
    } else {
        registry
    };
    let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    Ok((registry, repository))
}

/// A host name or IPv4 address with an optional numeric port.
fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err("the registry host is not a valid host name");
    }
    if let Some(port) = port {
        if port.parse::<u16>().is_err() {
            return Err("the registry port is not a number from 0 to 65535");
        }
    }
    Ok(())
}

/// Path components are lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn check_repository(repository: &str) -> Result<(), &'static str> {
    if repository.len() > MAX_NAME_LEN {
        return Err("the repository name is longer than 255 characters");
    }
    for component in repository.split('/') {
        check_component(component)?;
    }
    Ok(())
}

fn check_component(component: &str) -> Result<(), &'static str> {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() {
        return Err("the repository has an empty path component");
    }
    if !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return Err(
            "a repository path component must start and end with a lowercase letter or digit",
        );
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let dashes = sep.bytes().all(|b| b == b'-');
        if !(sep == "." || sep == "_" || sep == "__" || dashes) {
            return Err(
                "the repository may only hold lowercase letters, digits and the separators \
                 `.`, `_`, `__`, `-`",
            );
        }
    }
    Ok(())
}

/// Tags are `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn check_tag(tag: &str) -> Result<(), &'static str> {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || tag.len() > MAX_TAG_LEN {
        return Err("a tag must start with a letter, digit or `_` and be at most 128 characters");
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        return Err("a tag may only hold letters, digits, `_`, `.` and `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(text).unwrap();
        (
            r.registry,
            r.repository,
            r.tag,
            r.digest.map(|d| d.to_string()),
        )
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(
            parts("alpine"),
            (s("docker.io"), s("library/alpine"), Some(s("latest")), None)
        );
        assert_eq!(
            parts("user/app:1.0"),
            (s("docker.io"), s("user/app"), Some(s("1.0")), None)
        );
        assert_eq!(
            parts("index.docker.io/alpine:3"),
            (s("docker.io"), s("library/alpine"), Some(s("3")), None)
        );
        assert_eq!(
            Reference::parse("alpine").unwrap().to_string(),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(
            parts("localhost:5000/x"),
            (s("localhost:5000"), s("x"), Some(s("latest")), None)
        );
        assert_eq!(
            parts("localhost/x/y:v1"),
            (s("localhost"), s("x/y"), Some(s("v1")), None)
        );
        assert_eq!(
            parts(&format!("127.0.0.1:5000/ext/hello@{digest}")),
            (
                s("127.0.0.1:5000"),
                s("ext/hello"),
                None,
                Some(digest.clone())
            )
        );
        assert_eq!(
            parts(&format!("ghcr.io/siderolabs/gvisor:2023.1_a-b@{digest}")),
            (
                s("ghcr.io"),
                s("siderolabs/gvisor"),
                Some(s("2023.1_a-b")),
                Some(digest.clone())
            )
        );
        let text = format!("ghcr.io/a/b:t@{digest}");
        assert_eq!(Reference::parse(&text).unwrap().to_string(), text);
        let pinned = Reference::parse("ghcr.io/a/b:t")
            .unwrap()
            .with_digest(Digest::parse(&digest).unwrap());
        assert_eq!(pinned.to_string(), text);
        assert_eq!(pinned.name(), "ghcr.io/a/b");
        // A name whose first component has no dot or colon is a Hub repository.
        assert_eq!(parts("my-org/a__b").0, "docker.io");
    }

    #[test]
    fn invalid_references_name_the_reason() {
        let long_tag = format!("x:{}", "t".repeat(129));
        for (text, reason) in [
            ("", "it is empty"),
            ("Alpine", "lowercase"),
            ("a//b", "empty path component"),
            ("a/-b", "start and end"),
            ("a/b..c", "separators"),
            ("x:.tag", "must start with"),
            (long_tag.as_str(), "at most 128"),
            ("x:t/g", "port"),
            ("bad.io:99999/x", "port"),
            ("bad_host.io/x", "host name"),
            ("-bad.io/x", "host name"),
            ("x@sha256:abc", "64 characters"),
        ] {
            let err = Reference::parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("image reference {text:?} is not valid")),
                "{err}"
            );
            assert!(err.contains(reason), "{text}: {err}");
            assert!(err.contains("hint:"), "{err}");
        }
    }
}
