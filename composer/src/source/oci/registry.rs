//! Pulling images from and pushing images to OCI registries (distribution API v2).
//!
//! [`pull`] resolves a reference to one platform's image and brings every blob into the
//! [`Cache`], streaming each through a sha256 check before it is renamed into place; blobs
//! already cached are not fetched again, and a digest-pinned reference whose manifest is cached
//! needs no network at all. After a successful pull the tag's descriptor is recorded, so
//! `offline: true` rebuilds from the cache alone and names the first missing piece otherwise.
//! [`push`] uploads an image (single-arch manifest or multi-arch index) from an OCI layout.
//!
//! Transport: HTTPS (rustls with the ring provider; system roots), or plain HTTP for the
//! `host[:port]` names listed in [`PullOptions::insecure_registries`]. Credentials: the
//! `auths` section of the Docker config (`~/.docker/config.json`, `$DOCKER_CONFIG`, or the
//! given file), as base64 `user:password` or `username`/`password`; registries answering with
//! a Bearer challenge get a token through oci-client.
//!
//! Not supported: credential helpers (`credsStore`, `credHelpers`; put credentials in `auths`
//! or use `docker login --password-stdin` with a file store), identity tokens, registry
//! mirrors, foreign-layer URLs, resumable downloads. oci-client is async; this module drives it
//! on a private single-threaded tokio runtime and exposes a blocking API.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use tokio::runtime::Runtime;

use super::cache::{Cache, CacheError};
use super::image::{
    self, check_blob, parse_document, read_limited, resolve, BlobSource, Descriptor, Digest,
    Document, ImageError, PulledImage, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE, OCI_INDEX,
    OCI_MANIFEST,
};
use super::layout::{Layout, LayoutError};
use super::reference::Reference;

/// Bytes read from disk per pushed chunk (one PATCH request each).
const PUSH_CHUNK: usize = 4 << 20;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `host[:port]` of registries spoken to over plain HTTP, e.g. `127.0.0.1:5000`.
    pub insecure_registries: Vec<String>,
    /// The Docker config file with credentials; `None` means `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json` (a missing default file means anonymous access).
    pub docker_config: Option<PathBuf>,
    /// Use only the cache; never touch the network.
    pub offline: bool,
}

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The cache could not store or find a blob.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The Docker config file is unreadable or malformed.
    #[error(
        "cannot read registry credentials from {path}: {reason}; hint: fix the file or point \
         the docker config option at another one"
    )]
    Credentials {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blob failed verification, the platform is missing, or a document is malformed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Reading the layout to push failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Offline mode, and the cache lacks something.
    #[error(
        "offline: {what} is not in the cache {cache}; hint: run once without --offline to \
         pull it"
    )]
    Offline {
        /// The missing tag record or blob.
        what: String,
        /// The cache root.
        cache: PathBuf,
    },
    /// The registry refused a request or could not be reached.
    #[error("cannot {op} {target}: {detail}; hint: {hint}")]
    Remote {
        /// What was attempted (`pull manifest`, `push blob`).
        op: &'static str,
        /// The reference or blob.
        target: String,
        /// The whole cause chain, innermost last (reqwest hides the TLS or socket error there).
        detail: String,
        /// oci-client's error (boxed: it is large).
        source: Box<OciDistributionError>,
        /// What to check.
        hint: String,
    },
    /// The registry stopped answering: no connection, or no bytes for too long.
    #[error(
        "cannot {op} {target}: the registry {registry} did not answer within {secs} s; hint: \
         check that the registry is up and reachable, or set STRATA_REGISTRY_TIMEOUT (seconds) \
         for a slow one"
    )]
    Timeout {
        /// What was attempted.
        op: &'static str,
        /// The reference or blob.
        target: String,
        /// The registry host.
        registry: String,
        /// The limit that passed.
        secs: u64,
    },
    /// The reference pins a digest the pushed image does not have.
    #[error("cannot push to {reference}: the image to push has digest {actual}; hint: drop the @digest part")]
    PushDigest {
        /// The reference given.
        reference: String,
        /// The digest of the image in the layout.
        actual: Digest,
    },
    /// The tokio runtime could not start (out of threads or file descriptors).
    #[error("cannot start the network runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// Pulls `reference` for `arch` (`amd64` or `arm64`) into `cache` and returns the image with
/// its blobs' cache paths.
pub fn pull(
    reference: &Reference,
    arch: &str,
    opts: &PullOptions,
    cache: &Cache,
) -> Result<PulledImage, RegistryError> {
    pull_within(reference, arch, opts, cache, timeout_from_env())
}

/// How long a registry may stay silent (connecting, or between two reads of a body) before
/// the pull fails; a manifest or index must also arrive whole within it.
/// `STRATA_REGISTRY_TIMEOUT` (seconds) overrides the default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

fn timeout_from_env() -> Duration {
    std::env::var("STRATA_REGISTRY_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&secs| secs > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

/// [`pull`] with an explicit silence limit (tests use a short one).
fn pull_within(
    reference: &Reference,
    arch: &str,
    opts: &PullOptions,
    cache: &Cache,
    timeout: Duration,
) -> Result<PulledImage, RegistryError> {
    image::Platform::linux(arch)?;
    if opts.offline {
        let top = offline_top(reference, cache)?;
        let mut source = CacheSource {
            cache,
            remote: None,
        };
        return resolve(&mut source, &reference.to_string(), &top, arch);
    }
    let session = Session::new(reference, opts, timeout)?;
    let top = session.fetch_top(reference, cache)?;
    let mut source = CacheSource {
        cache,
        remote: Some(&session),
    };
    let image = resolve(&mut source, &reference.to_string(), &top, arch)?;
    cache.record_tag(reference, &top)?;
    Ok(image)
}

/// The top-level descriptor of `reference` from the cache alone.
fn offline_top(reference: &Reference, cache: &Cache) -> Result<Descriptor, RegistryError> {
    let missing = |what: String| RegistryError::Offline {
        what,
        cache: cache.root().to_path_buf(),
    };
    match &reference.digest {
        Some(digest) => {
            let path = cache
                .get(digest)
                .ok_or_else(|| missing(format!("manifest {digest} of {reference}")))?;
            let what = format!("cached manifest {digest} of {reference}");
            let bytes = read_limited(&path, MAX_MANIFEST_SIZE, &what)?;
            Ok(describe(&bytes, &what)?)
        }
        None => cache
            .lookup_tag(reference)?
            .ok_or_else(|| missing(format!("image {reference} (it was never pulled)"))),
    }
}

/// A descriptor for manifest bytes: digest, size, and the media type they declare.
fn describe(bytes: &[u8], what: &str) -> Result<Descriptor, ImageError> {
    let media_type = match parse_document(bytes, what)? {
        Document::Index(index) if index.media_type.is_empty() => OCI_INDEX.to_string(),
        Document::Index(index) => index.media_type,
        Document::Manifest(m) if m.media_type.is_empty() => OCI_MANIFEST.to_string(),
        Document::Manifest(m) => m.media_type,
    };
    Ok(Descriptor::new(
        &media_type,
        Digest::of_bytes(bytes),
        bytes.len() as u64,
    ))
}

/// A connection to one repository of one registry.
struct Session {
    runtime: Runtime,
    client: Client,
    /// For manifests only: oci-client reads a whole manifest body into memory before any
    /// check, so an endless body would exhaust it; this one is read with a limit.
    http: reqwest::Client,
    scheme: &'static str,
    /// The `Authorization` of manifest requests, found on first use (none: anonymous).
    authorization: std::cell::OnceCell<Option<http::HeaderValue>>,
    auth: RegistryAuth,
    registry: String,
    repository: String,
    hint: String,
    timeout: Duration,
}

impl Session {
    fn new(
        reference: &Reference,
        opts: &PullOptions,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RegistryError::Runtime)?;
        // reqwest is built without a default crypto provider (the default one needs cmake);
        // an error only means another part of the process installed one first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
            platform_resolver: None,
            connect_timeout: Some(timeout),
            read_timeout: Some(timeout),
            ..ClientConfig::default()
        };
        let target = reference.to_string();
        let setup_err = |source: OciDistributionError| RegistryError::Remote {
            op: "set up an HTTP client for",
            target: target.clone(),
            detail: error_chain(&source),
            source: Box::new(source),
            hint: "check the system's TLS setup".to_string(),
        };
        let client = Client::try_from(config).map_err(setup_err)?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| setup_err(e.into()))?;
        let (auth, config_path) = credentials(opts.docker_config.as_deref(), &reference.registry)?;
        let insecure = opts.insecure_registries.contains(&reference.registry);
        let hint = remote_hint(&reference.registry, insecure, config_path.as_deref());
        let session = Self {
            runtime,
            client,
            http,
            scheme: if insecure { "http" } else { "https" },
            authorization: std::cell::OnceCell::new(),
            auth,
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            hint,
            timeout,
        };
        // Only remembers the credentials (no request), so blob pulls use them too.
        let oci_ref = session.oci_ref(None, None);
        session.runtime.block_on(
            session
                .client
                .store_auth_if_needed(oci_ref.resolve_registry(), &session.auth),
        );
        Ok(session)
    }

    fn oci_ref(&self, tag: Option<&str>, digest: Option<&Digest>) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (tag, digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.to_string()),
            (Some(t), None) => oci_client::Reference::with_tag(registry, repository, t.to_string()),
            (None, None) => {
                oci_client::Reference::with_tag(registry, repository, "latest".to_string())
            }
        }
    }

    fn remote_err(
        &self,
        op: &'static str,
        target: String,
        err: OciDistributionError,
    ) -> RegistryError {
        if let Some((expected, actual)) = digest_mismatch(&err) {
            return ImageError::DigestMismatch {
                what: target,
                expected,
                actual,
            }
            .into();
        }
        if is_timeout(&err) {
            return self.timed_out(op, target);
        }
        RegistryError::Remote {
            op,
            target,
            detail: error_chain(&err),
            source: Box::new(err),
            hint: self.hint.clone(),
        }
    }

    fn timed_out(&self, op: &'static str, target: String) -> RegistryError {
        RegistryError::Timeout {
            op,
            target,
            registry: self.registry.clone(),
            secs: self.timeout.as_secs(),
        }
    }

    /// GETs manifest or index `oci_ref`, holding at most [`MAX_MANIFEST_SIZE`] bytes of its
    /// body and giving up when it has not arrived whole within the timeout (a registry that
    /// drips bytes never trips the per-read timeout).
    fn get_manifest(
        &self,
        oci_ref: &oci_client::Reference,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let fetch = async {
            let authorization = self.authorization(oci_ref, what).await?;
            let name = oci_ref.digest().or(oci_ref.tag()).unwrap_or("latest");
            let url = format!(
                "{}://{}/v2/{}/manifests/{name}",
                self.scheme,
                oci_ref.resolve_registry(),
                oci_ref.repository()
            );
            let mut request = self
                .http
                .get(&url)
                .header(http::header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
            if let Some(value) = authorization {
                request = request.header(http::header::AUTHORIZATION, value);
            }
            let remote = |e: reqwest::Error| self.remote_err("pull", what.to_string(), e.into());
            let mut response = request.send().await.map_err(remote)?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(remote)? {
                if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_SIZE {
                    return Err(ImageError::TooLarge {
                        what: what.to_string(),
                        size: (body.len() + chunk.len()) as u64,
                        limit: MAX_MANIFEST_SIZE,
                    }
                    .into());
                }
                body.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                return Err(self.status_err(status.as_u16(), url, &body, what));
            }
            Ok(body)
        };
        // The request's own connect/read timeouts answer a silent registry; this outer one,
        // a little later so the two never race, cuts off one that drips bytes.
        let whole = self.timeout + Duration::from_millis(500);
        self.runtime
            .block_on(async { tokio::time::timeout(whole, fetch).await })
            .unwrap_or_else(|_| Err(self.timed_out("pull", what.to_string())))
    }

    /// The header that authorises manifest requests: the Bearer token oci-client obtains
    /// (and caches for its blob requests), else the configured Basic credentials.
    async fn authorization(
        &self,
        oci_ref: &oci_client::Reference,
        what: &str,
    ) -> Result<Option<http::HeaderValue>, RegistryError> {
        if let Some(found) = self.authorization.get() {
            return Ok(found.clone());
        }
        let token = self
            .client
            .auth(oci_ref, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.remote_err("pull", what.to_string(), e))?;
        let value = match (token, &self.auth) {
            (Some(token), _) => http::HeaderValue::from_str(&format!("Bearer {token}")).ok(),
            (None, RegistryAuth::Basic(user, pass)) => {
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                http::HeaderValue::from_str(&format!("Basic {pair}")).ok()
            }
            (None, _) => None,
        };
        Ok(self.authorization.get_or_init(|| value).clone())
    }

    /// A refused manifest request, as oci-client would report it.
    fn status_err(&self, code: u16, url: String, body: &[u8], what: &str) -> RegistryError {
        let err = match code {
            401 => OciDistributionError::UnauthorizedError { url },
            404 => OciDistributionError::ImageManifestNotFoundError(format!(
                "{url}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            )),
            _ => OciDistributionError::ServerError {
                code,
                url,
                message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            },
        };
        self.remote_err("pull", what.to_string(), err)
    }

    /// The reference's top-level manifest or index, verified and stored in the cache.
    fn fetch_top(&self, reference: &Reference, cache: &Cache) -> Result<Descriptor, RegistryError> {
        if let Some(digest) = &reference.digest {
            if let Some(path) = cache.get(digest) {
                let what = format!("cached manifest {digest} of {reference}");
                let bytes = read_limited(&path, MAX_MANIFEST_SIZE, &what)?;
                let desc = describe(&bytes, &what)?;
                check_blob(&desc, &Digest::of_bytes(&bytes), desc.size, &what)?;
                if desc.digest == *digest {
                    return Ok(desc);
                }
            }
        }
        let oci_ref = self.oci_ref(reference.tag.as_deref(), reference.digest.as_ref());
        let what = format!("manifest of {reference}");
        let bytes = self.get_manifest(&oci_ref, &what)?;
        let desc = describe(&bytes, &what)?;
        if let Some(expected) = &reference.digest {
            if *expected != desc.digest {
                return Err(ImageError::DigestMismatch {
                    what,
                    expected: expected.clone(),
                    actual: desc.digest,
                }
                .into());
            }
        }
        if desc.size > MAX_MANIFEST_SIZE {
            return Err(too_large(&what, desc.size).into());
        }
        cache.insert_bytes(&desc, &bytes, &what)?;
        Ok(desc)
    }

    /// Fetches manifest `desc` by digest into the cache; returns its bytes.
    fn fetch_manifest(
        &self,
        desc: &Descriptor,
        what: &str,
        cache: &Cache,
    ) -> Result<Vec<u8>, RegistryError> {
        if desc.size > MAX_MANIFEST_SIZE {
            return Err(too_large(what, desc.size).into());
        }
        let oci_ref = self.oci_ref(None, Some(&desc.digest));
        let bytes = self.get_manifest(&oci_ref, what)?;
        cache.insert_bytes(desc, &bytes, what)?;
        Ok(bytes)
    }

    /// Streams blob `desc` into the cache, verifying it on the way.
    fn fetch_blob(
        &self,
        desc: &Descriptor,
        what: &str,
        cache: &Cache,
    ) -> Result<PathBuf, RegistryError> {
        let mut writer = cache.writer(desc, what)?;
        let oci_ref = self.oci_ref(None, None);
        let oci_desc = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.to_string(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        self.runtime.block_on(async {
            let mut stream = self
                .client
                .pull_blob_stream(&oci_ref, &oci_desc)
                .await
                .map_err(|e| self.remote_err("pull", what.to_string(), e))?;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => writer.write_chunk(&bytes)?,
                    Err(err) => return Err(self.stream_err(desc, what, &writer, err)),
                }
            }
            Ok::<_, RegistryError>(())
        })?;
        Ok(writer.finish()?)
    }

    /// oci-client reports a digest mismatch as an I/O error at the end of the stream; report
    /// it with both digests, as our own check would.
    fn stream_err(
        &self,
        desc: &Descriptor,
        what: &str,
        writer: &super::cache::BlobWriter,
        err: io::Error,
    ) -> RegistryError {
        let actual = writer.digest();
        if actual != desc.digest && err.to_string().contains("Expected") {
            return ImageError::DigestMismatch {
                what: what.to_string(),
                expected: desc.digest.clone(),
                actual,
            }
            .into();
        }
        self.remote_err("pull", what.to_string(), OciDistributionError::IoError(err))
    }
}

/// `outer: inner: innermost`, skipping causes whose text the outer message already holds.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let line = inner.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = inner.source();
    }
    text
}

/// The two digests of oci-client's verification error ("… Expected X, got Y"); its digest
/// module is private, so the message is the only way to them.
fn digest_mismatch(err: &OciDistributionError) -> Option<(Digest, Digest)> {
    let OciDistributionError::DigestError(inner) = err else {
        return None;
    };
    let text = inner.to_string();
    let (_, rest) = text.split_once("Expected ")?;
    let (expected, actual) = rest.split_once(", got ")?;
    Some((
        Digest::parse(expected.trim()).ok()?,
        Digest::parse(actual.trim()).ok()?,
    ))
}

fn too_large(what: &str, size: u64) -> ImageError {
    ImageError::TooLarge {
        what: what.to_string(),
        size,
        limit: MAX_MANIFEST_SIZE,
    }
}

fn remote_hint(registry: &str, insecure: bool, config: Option<&Path>) -> String {
    let creds = match config {
        Some(path) => format!("credentials for {registry} in {}", path.display()),
        None => format!("credentials for {registry} (none found: anonymous access)"),
    };
    let transport = if insecure {
        "the registry is spoken to over plain HTTP as configured"
    } else {
        "a registry served over plain HTTP must be listed as insecure"
    };
    format!("check the reference, network access and {creds}; {transport}")
}

/// Cache first; the registry (if online) for what the cache lacks.
struct CacheSource<'a> {
    cache: &'a Cache,
    remote: Option<&'a Session>,
}

impl CacheSource<'_> {
    fn offline(&self, what: &str) -> RegistryError {
        RegistryError::Offline {
            what: what.to_string(),
            cache: self.cache.root().to_path_buf(),
        }
    }
}

impl BlobSource for CacheSource<'_> {
    type Error = RegistryError;

    fn manifest(&mut self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, RegistryError> {
        if let Some(path) = self.cache.get(&desc.digest) {
            let bytes = read_limited(&path, MAX_MANIFEST_SIZE, what)?;
            check_blob(desc, &Digest::of_bytes(&bytes), bytes.len() as u64, what)?;
            return Ok(bytes);
        }
        match self.remote {
            Some(session) => session.fetch_manifest(desc, what, self.cache),
            None => Err(self.offline(what)),
        }
    }

    fn blob(&mut self, desc: &Descriptor, what: &str) -> Result<PathBuf, RegistryError> {
        match self.cache.get_verified(desc, what) {
            Ok(Some(path)) => return Ok(path),
            Ok(None) => {}
            // The damaged entry is gone; the registry has the real one.
            Err(_) if self.remote.is_some() => {}
            Err(damage) => return Err(damage.into()),
        }
        match self.remote {
            Some(session) => session.fetch_blob(desc, what, self.cache),
            None => Err(self.offline(what)),
        }
    }
}

/// Pushes the image `selector` (tag, digest, or `None` for the only one) of layout
/// `layout_dir` to `reference`: blobs first (skipping those the registry has), then the
/// manifests, the top one under the reference's tag. Returns the top manifest's digest.
pub fn push(
    layout_dir: &Path,
    selector: Option<&str>,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Digest, RegistryError> {
    let layout = Layout::open(layout_dir)?;
    let top = layout.select(selector)?.clone();
    if let Some(pinned) = &reference.digest {
        if *pinned != top.digest {
            return Err(RegistryError::PushDigest {
                reference: reference.to_string(),
                actual: top.digest,
            });
        }
    }
    let session = Session::new(reference, opts, timeout_from_env())?;
    let target_ref = session.oci_ref(reference.tag.as_deref(), reference.digest.as_ref());
    session
        .runtime
        .block_on(
            session
                .client
                .auth(&target_ref, &session.auth, RegistryOperation::Push),
        )
        .map_err(|e| session.remote_err("authenticate to push", reference.to_string(), e))?;
    let pusher = Pusher {
        session: &session,
        layout: &layout,
        name: reference.to_string(),
    };
    pusher.push_document(&top, 0)?;
    pusher.put_manifest(&top, &target_ref)?;
    Ok(top.digest)
}

/// Walks an image in a layout, uploading what the registry lacks.
struct Pusher<'a> {
    session: &'a Session,
    layout: &'a Layout,
    name: String,
}

impl Pusher<'_> {
    /// Uploads everything `desc` refers to (not `desc` itself).
    fn push_document(&self, desc: &Descriptor, depth: usize) -> Result<(), RegistryError> {
        if depth > image::MAX_NESTING {
            return Err(ImageError::Nesting {
                image: self.name.clone(),
            }
            .into());
        }
        let what = format!("manifest {} of {}", desc.digest, self.name);
        let bytes = self.layout.read_document(desc, &what)?;
        match parse_document(&bytes, &what)? {
            Document::Index(index) => {
                for child in &index.manifests {
                    self.push_document(child, depth + 1)?;
                    let by_digest = self.session.oci_ref(None, Some(&child.digest));
                    self.put_manifest(child, &by_digest)?;
                }
            }
            Document::Manifest(manifest) => {
                for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    self.push_blob(blob)?;
                }
            }
        }
        Ok(())
    }

    fn push_blob(&self, desc: &Descriptor) -> Result<(), RegistryError> {
        let what = format!("blob {} of {}", desc.digest, self.name);
        let path = self.layout.verified_blob(desc, &what)?;
        let s = self.session;
        let repo_ref = s.oci_ref(None, None);
        let digest = desc.digest.to_string();
        let exists = s
            .runtime
            .block_on(s.client.blob_exists(&repo_ref, &digest))
            .map_err(|e| s.remote_err("check", what.clone(), e))?;
        if exists {
            return Ok(());
        }
        let file = File::open(&path).map_err(|e| image::io_err("open", &path, e))?;
        let stream = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; PUSH_CHUNK];
            match crate::io::read_up_to(&mut file, &mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(OciDistributionError::IoError(e)), file)),
            }
        });
        s.runtime
            .block_on(
                s.client
                    .push_blob_stream(&repo_ref, stream, &digest, Some(desc.size)),
            )
            .map_err(|e| s.remote_err("push", what, e))?;
        Ok(())
    }

    /// Uploads manifest `desc` from the layout under `target` (a tag or its digest).
    fn put_manifest(
        &self,
        desc: &Descriptor,
        target: &oci_client::Reference,
    ) -> Result<(), RegistryError> {
        let what = format!("manifest {} of {}", desc.digest, self.name);
        let bytes = self.layout.read_document(desc, &what)?;
        let s = self.session;
        let content_type =
            http_header(&desc.media_type).ok_or_else(|| ImageError::UnexpectedMediaType {
                what: what.clone(),
                media_type: desc.media_type.clone(),
                expected: "a manifest or index media type",
            })?;
        s.runtime
            .block_on(s.client.push_manifest_raw(target, bytes, content_type))
            .map_err(|e| s.remote_err("push", what, e))?;
        Ok(())
    }
}

fn http_header(media_type: &str) -> Option<http::HeaderValue> {
    http::HeaderValue::from_str(media_type).ok()
}

/// Whether a timeout (reqwest's, or a socket's) is somewhere in `err`'s chain.
fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        let reqwest_timeout = |e: &(dyn std::error::Error + 'static)| {
            e.downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_timeout)
        };
        // io::Error's source() skips the error it wraps, and so does oci-client's transparent
        // RequestError (its source is reqwest's cause, not reqwest's error): look inside both.
        let timed_out = reqwest_timeout(e)
            || matches!(
                e.downcast_ref::<OciDistributionError>(),
                Some(OciDistributionError::RequestError(r)) if r.is_timeout()
            )
            || e.downcast_ref::<io::Error>().is_some_and(|io| {
                io.kind() == io::ErrorKind::TimedOut
                    || io.get_ref().is_some_and(|inner| reqwest_timeout(inner))
            });
        if timed_out {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Credentials for `registry` from the Docker config, and the file they came from.
fn credentials(
    explicit: Option<&Path>,
    registry: &str,
) -> Result<(RegistryAuth, Option<PathBuf>), RegistryError> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match default_docker_config() {
            Some(path) if path.is_file() => path,
            _ => return Ok((RegistryAuth::Anonymous, None)),
        },
    };
    let bad = |reason: String| RegistryError::Credentials {
        path: path.clone(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let auth = auth_from_config(&bytes, registry).map_err(bad)?;
    Ok((auth, Some(path)))
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".docker/config.json"))
}

/// The `auths` entry for `registry` in a Docker config document.
fn auth_from_config(bytes: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    let config: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let wanted = auth_key(registry);
    let Some((key, entry)) = auths.iter().find(|(key, _)| auth_key(key) == wanted) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if let (Some(user), Some(pass)) = (field("username"), field("password")) {
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    let Some(encoded) = field("auth") else {
        return Ok(RegistryAuth::Anonymous);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("auths.{key:?}.auth is not base64: {e}"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| format!("auths.{key:?}.auth does not decode to UTF-8 text"))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| format!("auths.{key:?}.auth does not decode to user:password"))?;
    Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()))
}

/// Docker config keys may be URLs (`https://index.docker.io/v1/`); compare host[:port] only,
/// with Docker Hub's aliases folded together.
fn auth_key(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::{Entry, Tree};
    use crate::source::oci::layout::{self, tests::sample_tree, LayerSource};
    use crate::source::oci::unpack::{tests::listing, unpack};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    const REGISTRY_BIN: &str = "docker-registry";

    /// A docker-registry process on a free local port, killed when dropped (also on panic).
    struct TestRegistry {
        child: Child,
        dir: tempfile::TempDir,
        addr: String,
    }

    impl TestRegistry {
        /// Starts the registry, or returns `None` when it is not installed (see
        /// [`crate::test_support::require_tool`]).
        fn start() -> Option<Self> {
            Self::start_with(None)
        }

        /// Starts the registry; with `tls` = (certificate, key) it serves HTTPS only.
        fn start_with(tls: Option<(&Path, &Path)>) -> Option<Self> {
            if !crate::test_support::require_tool("docker-registry") {
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            let mut yaml = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            );
            if let Some((cert, key)) = tls {
                yaml.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ));
            }
            std::fs::write(&config, yaml).unwrap();
            let log = File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap();
            let mut registry = Self { child, dir, addr };
            registry.wait_ready();
            Some(registry)
        }

        fn wait_ready(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("docker-registry exited with {status}: {}", self.log());
                }
                if TcpStream::connect(&self.addr).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!(
                "docker-registry did not listen on {} within 20 s: {}",
                self.addr,
                self.log()
            );
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
        }

        fn reference(&self, repo_tag: &str) -> Reference {
            Reference::parse(&format!("{}/{repo_tag}", self.addr)).unwrap()
        }

        fn options(&self) -> PullOptions {
            PullOptions {
                insecure_registries: vec![self.addr.clone()],
                docker_config: None,
                offline: false,
            }
        }

        /// Where the registry keeps a blob's bytes.
        fn blob_data(&self, digest: &Digest) -> PathBuf {
            let hex = digest.hex();
            self.dir
                .path()
                .join("data/docker/registry/v2/blobs/sha256")
                .join(&hex[..2])
                .join(hex)
                .join("data")
        }
    }

    impl Drop for TestRegistry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn tree_listing(image: &PulledImage, scratch: &Path) -> Vec<String> {
        listing(&unpack(&image.layers, scratch).unwrap().tree)
    }

    fn want_listing(tree: &Tree) -> Vec<String> {
        let mut want = listing(tree);
        want[0] = "/ dir 755 0:0".to_string();
        want
    }

    fn leftover_temp_files(cache: &Cache) -> usize {
        std::fs::read_dir(cache.root().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    #[test]
    fn registry_push_pull_verify_select_and_offline() {
        let Some(registry) = TestRegistry::start() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path();
        let dir = tmp.path().join("layout");
        let amd_tree = sample_tree(scratch, "amd");
        let arm_tree = sample_tree(scratch, "arm");
        let amd = layout::write_image(
            &dir,
            LayerSource::Tree(&amd_tree),
            "amd64",
            "hello-amd64",
            0,
        )
        .unwrap();
        let arm = layout::write_image(
            &dir,
            LayerSource::Tree(&arm_tree),
            "arm64",
            "hello-arm64",
            0,
        )
        .unwrap();
        let multi = layout::write_index(&dir, "multi", &[amd.clone(), arm.clone()]).unwrap();
        layout::write_index(&dir, "amd-only", std::slice::from_ref(&amd)).unwrap();
        let opts = registry.options();

        // Push a single-arch image and pull it back, by tag and by digest.
        let v1 = registry.reference("ext/hello:v1");
        assert_eq!(push(&dir, Some("hello-amd64"), &v1, &opts).unwrap(), amd);
        let cache_a = Cache::new(tmp.path().join("cache-a"));
        let by_tag = pull(&v1, "amd64", &opts, &cache_a).unwrap();
        assert_eq!(by_tag.digest, amd);
        assert_eq!(by_tag.platform.to_string(), "linux/amd64");
        assert!(by_tag.layers[0].path.starts_with(cache_a.root()));
        assert_eq!(tree_listing(&by_tag, scratch), want_listing(&amd_tree));
        let cache_b = Cache::new(tmp.path().join("cache-b"));
        let pinned = registry.reference(&format!("ext/hello@{amd}"));
        let by_digest = pull(&pinned, "amd64", &opts, &cache_b).unwrap();
        assert_eq!(by_digest.layers, {
            let mut l = by_tag.layers.clone();
            l[0].path = cache_b.blob_path(&l[0].digest);
            l
        });
        // A digest the registry does not have is an error naming the reference.
        let unknown = registry.reference(&format!("ext/hello@{}", Digest::of_bytes(b"x")));
        let err = pull(&unknown, "amd64", &opts, &cache_b)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot pull manifest of {unknown}")),
            "{err}"
        );
        // Wrong architecture of a single-arch image.
        let err = pull(&v1, "arm64", &opts, &Cache::new(tmp.path().join("c")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "image {v1} is for linux/amd64, but linux/arm64 was asked for"
            )),
            "{err}"
        );

        // Multi-arch: the index resolves to each architecture's manifest.
        let multi_ref = registry.reference("ext/hello:multi");
        assert_eq!(push(&dir, Some("multi"), &multi_ref, &opts).unwrap(), multi);
        let cache_m = Cache::new(tmp.path().join("cache-m"));
        let got_amd = pull(&multi_ref, "amd64", &opts, &cache_m).unwrap();
        let got_arm = pull(&multi_ref, "arm64", &opts, &cache_m).unwrap();
        assert_eq!(
            (got_amd.digest, got_arm.digest.clone()),
            (amd.clone(), arm.clone())
        );
        assert_eq!(tree_listing(&got_arm, scratch), want_listing(&arm_tree));
        let only = registry.reference("ext/hello:amd-only");
        push(&dir, Some("amd-only"), &only, &opts).unwrap();
        let err = pull(&only, "arm64", &opts, &cache_m)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "image {only} has no manifest for linux/arm64; it has: linux/amd64;"
            )),
            "{err}"
        );

        // A corrupted blob on the registry's disk is refused, naming both digests.
        let layer = by_tag.layers[0].digest.clone();
        let data = registry.blob_data(&layer);
        let mut bytes = std::fs::read(&data).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        let actual = Digest::of_bytes(&bytes);
        std::fs::write(&data, &bytes).unwrap();
        let cache_d = Cache::new(tmp.path().join("cache-d"));
        let err = pull(&v1, "amd64", &opts, &cache_d).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "is corrupt: expected digest {layer}, got {actual}"
            )),
            "{err}"
        );
        assert_eq!(cache_d.get(&layer), None);
        assert_eq!(leftover_temp_files(&cache_d), 0);
        assert_eq!(
            cache_d.lookup_tag(&v1).unwrap(),
            None,
            "failed pulls record no tag"
        );

        // A corrupted manifest (fetched by digest through the index) is refused too.
        let data = registry.blob_data(&arm);
        let mut bytes = std::fs::read(&data).unwrap();
        let last_hex = bytes.iter().rposition(|b| b.is_ascii_hexdigit()).unwrap();
        bytes[last_hex] = if bytes[last_hex] == b'0' { b'1' } else { b'0' };
        std::fs::write(&data, &bytes).unwrap();
        let cache_e = Cache::new(tmp.path().join("cache-e"));
        let err = pull(&multi_ref, "arm64", &opts, &cache_e)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "manifest {arm} of image {multi_ref} is corrupt: expected digest {arm}, got {}",
                Digest::of_bytes(&bytes)
            )),
            "{err}"
        );
        assert_eq!(cache_e.get(&arm), None);

        // Offline: the cache alone serves a pulled image, and names what it lacks.
        drop(registry);
        let offline = PullOptions {
            offline: true,
            ..opts.clone()
        };
        let again = pull(&v1, "amd64", &offline, &cache_a).unwrap();
        assert_eq!(again.digest, amd);
        assert_eq!(
            pull(&pinned, "amd64", &offline, &cache_b).unwrap().digest,
            amd
        );
        assert_eq!(
            pull(&multi_ref, "arm64", &offline, &cache_m)
                .unwrap()
                .digest,
            arm
        );
        let empty = Cache::new(tmp.path().join("empty"));
        let err = pull(&v1, "amd64", &offline, &empty)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "offline: image {v1} (it was never pulled) is not in the cache {}; hint: run once \
                 without --offline to pull it",
                empty.root().display()
            )
        );
        let err = pull(&pinned, "amd64", &offline, &empty)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "offline: manifest {amd} of {pinned} is not in the cache"
            )),
            "{err}"
        );
        std::fs::remove_file(cache_a.blob_path(&layer)).unwrap();
        let err = pull(&v1, "amd64", &offline, &cache_a)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "offline: layer {layer} (1 of 1) of image {v1} is not in the cache"
            )),
            "{err}"
        );
        // Online again but the registry is gone: the error names the reference.
        let err = pull(&v1, "amd64", &opts, &cache_a).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot pull manifest of {v1}")),
            "{err}"
        );
    }

    /// Makes a CA and a leaf certificate for 127.0.0.1 with the openssl tool; `None` if absent.
    fn test_certificates(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let (cert, key, csr) = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("leaf.csr"),
        );
        let ext = dir.join("leaf.cnf");
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        if !crate::test_support::require_tool("openssl") {
            return None;
        }
        let run = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let ca_made = run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=strata-test-ca",
        ]);
        assert!(ca_made.expect("run openssl").success());
        for args in [
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=127.0.0.1",
            ][..],
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "cert.pem",
                "-days",
                "1",
                "-extfile",
                "leaf.cnf",
            ][..],
        ] {
            assert!(run(args).unwrap().success(), "openssl {args:?}");
        }
        assert!(ca_key.exists() && csr.exists());
        Some((ca, cert, key))
    }

    /// Environment variable that turns [`tls_child`] on and gives it the registry address.
    const TLS_CHILD_ADDR: &str = "STRATA_OCI_TLS_CHILD_ADDR";

    #[test]
    fn https_registries_are_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let Some((ca, cert, key)) = test_certificates(tmp.path()) else {
            return;
        };
        let Some(registry) = TestRegistry::start_with(Some((&cert, &key))) else {
            return;
        };
        // Not trusted: refused with the TLS reason, and no fallback to plain HTTP.
        let reference = registry.reference("tls/x:v1");
        let https = PullOptions::default();
        let cache = Cache::new(tmp.path().join("cache"));
        let err = pull(&reference, "amd64", &https, &cache)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "{err}"
        );
        // Trusted through SSL_CERT_FILE (read when the client starts): a fresh process pushes
        // and pulls over HTTPS.
        let test_name = concat!(module_path!(), "::tls_child");
        let test_name = test_name.split_once("::").map_or(test_name, |(_, t)| t);
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test_name, "--ignored", "--nocapture"])
            .env(TLS_CHILD_ADDR, &registry.addr)
            .env("SSL_CERT_FILE", &ca)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("tls child: pulled sha256:"), "{stdout}");
    }

    /// The trusted half of [`https_registries_are_verified`], run in a child process.
    #[test]
    #[ignore = "run by https_registries_are_verified in a child process"]
    fn tls_child() {
        let Ok(addr) = std::env::var(TLS_CHILD_ADDR) else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let tree = sample_tree(tmp.path(), "tls");
        let digest = layout::write_image(&dir, LayerSource::Tree(&tree), "arm64", "v1", 0).unwrap();
        let reference = Reference::parse(&format!("{addr}/tls/x:v1")).unwrap();
        let https = PullOptions::default();
        assert_eq!(push(&dir, None, &reference, &https).unwrap(), digest);
        let cache = Cache::new(tmp.path().join("cache"));
        let image = pull(&reference, "arm64", &https, &cache).unwrap();
        assert_eq!(image.digest, digest);
        println!("tls child: pulled {}", image.digest);
    }

    #[test]
    fn docker_config_credentials() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let config = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{encoded}"}},
                "127.0.0.1:5000":{{"username":"bob","password":"pw"}},
                "bad.io":{{"auth":"***"}}}}}}"#
        );
        let basic = |u: &str, p: &str| format!("{:?}", RegistryAuth::Basic(u.into(), p.into()));
        let got = |reg| format!("{:?}", auth_from_config(config.as_bytes(), reg).unwrap());
        assert_eq!(got("docker.io"), basic("alice", "s3:cret"));
        assert_eq!(got("127.0.0.1:5000"), basic("bob", "pw"));
        assert_eq!(got("ghcr.io"), format!("{:?}", RegistryAuth::Anonymous));
        let err = auth_from_config(config.as_bytes(), "bad.io").unwrap_err();
        assert!(
            err.starts_with("auths.\"bad.io\".auth is not base64"),
            "{err}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        std::fs::write(&path, "{").unwrap();
        let err = credentials(Some(&path), "x.io").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read registry credentials from {}",
                path.display()
            )),
            "{err}"
        );
        let missing = tmp.path().join("none.json");
        assert!(
            credentials(Some(&missing), "x.io").is_err(),
            "an explicit file must exist"
        );
    }

    /// Pull timing for a ~20 MB image from the local registry: `cargo test -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check"]
    fn measure_pull_20mb() {
        let Some(registry) = TestRegistry::start() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..20 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let host = tmp.path().join("noise");
        std::fs::write(&host, &noise).unwrap();
        let mut tree = Tree::new();
        tree.insert("/rootfs/noise", Entry::host_file(&host, 0o644))
            .unwrap();
        let dir = tmp.path().join("layout");
        let t = Instant::now();
        layout::write_image(&dir, LayerSource::Tree(&tree), "amd64", "big", 0).unwrap();
        println!("write layout: {:?}", t.elapsed());
        let opts = registry.options();
        let reference = registry.reference("bench/big:1");
        let t = Instant::now();
        push(&dir, None, &reference, &opts).unwrap();
        println!("push: {:?}", t.elapsed());
        let cache = Cache::new(tmp.path().join("cache"));
        let t = Instant::now();
        let image = pull(&reference, "amd64", &opts, &cache).unwrap();
        println!(
            "pull cold: {:?} ({} bytes)",
            t.elapsed(),
            image.layers[0].size
        );
        let t = Instant::now();
        pull(&reference, "amd64", &opts, &cache).unwrap();
        println!(
            "pull warm (manifest fetched, blobs cached): {:?}",
            t.elapsed()
        );
        let offline = PullOptions {
            offline: true,
            ..opts
        };
        let t = Instant::now();
        pull(&reference, "amd64", &offline, &cache).unwrap();
        println!("pull offline: {:?}", t.elapsed());
        let t = Instant::now();
        let unpacked = unpack(&image.layers, tmp.path()).unwrap();
        println!(
            "unpack: {:?} ({} entries)",
            t.elapsed(),
            unpacked.tree.len()
        );
    }

    /// How a hostile registry answers a manifest request.
    #[derive(Clone, Copy)]
    enum Hostile {
        /// 200 and a chunked body that never ends.
        EndlessBody,
        /// Accepts the connection, reads the request, never answers.
        Silent,
        /// Sends the headers and one byte, then nothing more.
        Stalls,
    }

    /// A registry on 127.0.0.1 that answers `/v2/` politely and manifests with `how`.
    fn hostile_registry(how: Hostile) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut line = String::new();
                        while reader.read_line(&mut line).unwrap_or(0) > 2 {
                            line.clear();
                        }
                        if !request_line.contains("/manifests/") {
                            let _ =
                                conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                            continue;
                        }
                        match how {
                            Hostile::Silent => std::thread::sleep(Duration::from_secs(30)),
                            Hostile::Stalls => {
                                let _ = conn
                                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{");
                                std::thread::sleep(Duration::from_secs(30));
                            }
                            Hostile::EndlessBody => {
                                let _ = conn.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n",
                                );
                                let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
                                while conn.write_all(chunk.as_bytes()).is_ok() {}
                            }
                        }
                        return;
                    }
                });
            }
        });
        addr
    }

    /// Pulls from a hostile registry on another thread; panics if that takes over 20 s.
    fn pull_hostile(how: Hostile) -> (RegistryError, Duration) {
        let addr = hostile_registry(how);
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path().join("cache"));
        let reference = Reference::parse(&format!("{addr}/evil/image:1")).unwrap();
        let opts = PullOptions {
            insecure_registries: vec![addr],
            docker_config: Some(tmp.path().join("no-config.json")),
            offline: false,
        };
        std::fs::write(tmp.path().join("no-config.json"), "{}").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = pull_within(&reference, "amd64", &opts, &cache, Duration::from_secs(1));
            let _ = tx.send((r.map(|_| ()), t.elapsed()));
        });
        let (result, took) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the pull did not end within 20 s");
        (result.expect_err("a hostile registry was accepted"), took)
    }

    #[test]
    fn an_endless_manifest_body_is_cut_off_at_the_limit() {
        let (err, _) = pull_hostile(Hostile::EndlessBody);
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                RegistryError::Image(ImageError::TooLarge { size, limit: MAX_MANIFEST_SIZE, .. })
                    if size < 2 * MAX_MANIFEST_SIZE
            ),
            "{msg}"
        );
        assert!(msg.contains("manifest of 127.0.0.1:"), "{msg}");
    }

    #[test]
    fn a_silent_or_stalling_registry_times_out_with_a_clear_error() {
        for how in [Hostile::Silent, Hostile::Stalls] {
            let (err, took) = pull_hostile(how);
            let msg = err.to_string();
            assert!(
                matches!(err, RegistryError::Timeout { secs: 1, .. }),
                "{msg}"
            );
            assert!(msg.contains("did not answer within 1 s"), "{msg}");
            assert!(took < Duration::from_secs(10), "{took:?}");
        }
    }

    #[test]
    fn a_damaged_cached_blob_is_refused_offline_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path().join("cache"));
        let data = b"layer bytes".to_vec();
        let desc = Descriptor::new(
            image::OCI_LAYER_TAR,
            Digest::of_bytes(&data),
            data.len() as u64,
        );
        let path = cache.insert_bytes(&desc, &data, "blob").unwrap();
        std::fs::write(&path, b"layer").unwrap(); // cut short, as by a crash
        let mut source = CacheSource {
            cache: &cache,
            remote: None,
        };
        let err = source.blob(&desc, "layer 1 of x").unwrap_err().to_string();
        assert!(err.contains("cached layer 1 of x is corrupt"), "{err}");
        assert!(
            !path.exists(),
            "the damaged entry was left to be used again"
        );
    }
}
