//! PEM private keys and X.509 certificates for signing.
//!
//! Keys are RSA (what UEFI Secure Boot and systemd's PCR policies take),
//! read from PEM as PKCS#8 (`PRIVATE KEY`), PBES2-encrypted PKCS#8
//! (`ENCRYPTED PRIVATE KEY`, e.g. Debian's `PkKek-1-snakeoil.key`:
//! PBKDF2-HMAC-SHA256 with 3DES-CBC) or PKCS#1 (`RSA PRIVATE KEY`). The
//! passphrase of an encrypted key comes from an environment variable the
//! profile names, so it never sits in a profile or on a command line.
//! Certificates are PEM or DER X.509.
//!
//! Errors say what is wrong with which file and how to fix it
//! ([`KeyError::fix`]); the caller adds the profile field.

use std::fmt;
use std::path::{Path, PathBuf};

use der::{Decode, Encode};
use pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;

/// Key and certificate files are small; a bigger one is the wrong file.
const MAX_FILE: u64 = 1 << 20;

/// The DER `DigestInfo` prefix of a SHA-256 digest (RFC 8017 §9.2 note 1):
/// PKCS#1 v1.5 signs this followed by the 32 digest bytes.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Why a key or certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The key or certificate file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large to be a key or certificate.
    #[error("{} is {size} bytes, too large for a key or certificate", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// No PEM block of a kind we read.
    #[error("{} holds no {wanted} PEM block", path.display())]
    NoPem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        wanted: &'static str,
    },
    /// The key is encrypted and no passphrase was given.
    #[error("{} is encrypted and no passphrase was given", path.display())]
    NeedsPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The profile names a passphrase variable that is not set.
    #[error("environment variable {var} (the passphrase of {}) is not set", path.display())]
    PassphraseUnset {
        /// The key file.
        path: PathBuf,
        /// The variable name.
        var: String,
    },
    /// Decryption failed: the passphrase is wrong (or the cipher unknown).
    #[error("cannot decrypt {} with the passphrase from {var}", path.display())]
    Decrypt {
        /// The key file.
        path: PathBuf,
        /// The variable holding the passphrase.
        var: String,
        /// The cause.
        #[source]
        source: pkcs8::Error,
    },
    /// OpenSSL's pre-PKCS#8 encryption (`Proc-Type: 4,ENCRYPTED`).
    #[error("{} uses OpenSSL's legacy PEM encryption (Proc-Type: 4,ENCRYPTED)", path.display())]
    LegacyEncryption {
        /// The key file.
        path: PathBuf,
    },
    /// A key of another algorithm (EC, Ed25519…).
    #[error("{} is not an RSA key ({what})", path.display())]
    NotRsa {
        /// The key file.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// The DER inside is malformed.
    #[error("{} holds a malformed {what}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was being parsed.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The certificate does not belong to the key.
    #[error("the certificate {} does not hold the public key of {}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The RSA operation failed (a key too small for a SHA-256 DigestInfo).
    #[error("cannot sign with {}", path.display())]
    Sign {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rsa::Error,
    },
}

impl KeyError {
    /// How to fix it, for the `fix:` line.
    pub fn fix(&self) -> String {
        match self {
            KeyError::Read { .. } | KeyError::TooLarge { .. } => {
                "point the field at a PEM key or certificate file that exists and is readable"
                    .into()
            }
            KeyError::NoPem { wanted, .. } => format!(
                "give a PEM file with a {wanted} block (`openssl x509 -in cert.der -out cert.pem` \
                 converts a DER certificate; keys: `openssl pkcs8 -topk8 -in key -out key.pem`)"
            ),
            KeyError::NeedsPassphrase { .. } => {
                "set passphrase_env to the name of an environment variable that holds the \
                 passphrase, and export it"
                    .into()
            }
            KeyError::PassphraseUnset { var, .. } => {
                format!("export {var}=<passphrase> before building")
            }
            KeyError::Decrypt { var, .. } => format!(
                "check the passphrase in {var}; keys must be PBES2 (PBKDF2 + AES or 3DES) \
                 encrypted PKCS#8, as `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes"
            ),
            KeyError::LegacyEncryption { path } => format!(
                "convert it: `openssl pkcs8 -topk8 -v2 aes-256-cbc -in {0} -out {0}.p8`, then \
                 name the .p8 file",
                path.display()
            ),
            KeyError::NotRsa { .. } => {
                "UEFI Secure Boot and TPM PCR policies take RSA keys: make one with \
                 `openssl req -new -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem`"
                    .into()
            }
            KeyError::Malformed { .. } => "check the file with `openssl pkey -in <key> -noout` or \
                 `openssl x509 -in <cert> -noout -text`"
                .into(),
            KeyError::Mismatch { .. } => {
                "name the certificate made for this key (compare `openssl x509 -noout -modulus` \
                 with `openssl rsa -noout -modulus`)"
                    .into()
            }
            KeyError::Sign { .. } => "use an RSA key of at least 2048 bits".into(),
        }
    }
}

/// An RSA private key, with the file it came from (for messages).
pub struct PrivateKey {
    key: rsa::PrivateKey,
    path: PathBuf,
}

impl fmt::Debug for PrivateKey {
    /// Never prints the key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("path", &self.path)
            .field("bits", &(self.modulus_len() * 8))
            .finish()
    }
}

impl PrivateKey {
    /// Loads a PEM key; `passphrase_env` names the environment variable
    /// holding the passphrase of an encrypted key (read only when needed).
    pub fn load(path: &Path, passphrase_env: Option<&str>) -> Result<PrivateKey, KeyError> {
        let text = read_small(path)?;
        let passphrase = || passphrase_from_env(path, passphrase_env);
        let key = parse_key_pem(path, &text, passphrase)?;
        Ok(PrivateKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// The file this key came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The RSA key, for operations this module does not wrap.
    pub fn rsa(&self) -> &rsa::PrivateKey {
        &self.key
    }

    /// Bytes in the modulus, which is also the length of every signature.
    pub fn modulus_len(&self) -> usize {
        self.key.size()
    }

    /// RSASSA-PKCS1-v1_5 over a SHA-256 digest. Deterministic: the same key
    /// and digest give the same bytes (blinding changes only the timing).
    pub fn sign_sha256(&self, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        let padding = rsa::Pkcs1v15Sign {
            hash_len: Some(32),
            prefix: SHA256_DIGEST_INFO.into(),
        };
        self.key
            .sign(padding, digest)
            .map_err(|source| KeyError::Sign {
                path: self.path.clone(),
                source,
            })
    }

    /// The public key as DER SubjectPublicKeyInfo (what certificates carry).
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        let public = self.key.to_public_key();
        public
            .to_public_key_der()
            .expect("an RSA public key always encodes")
            .into_vec()
    }

    /// The public key as PEM SubjectPublicKeyInfo (`PUBLIC KEY`), the form
    /// systemd puts in a UKI's `.pcrpkey`.
    pub fn public_key_pem(&self) -> Vec<u8> {
        let public = self.key.to_public_key();
        public
            .to_public_key_pem(der::pem::LineEnding::LF)
            .expect("an RSA public key always encodes")
            .into_bytes()
    }

    /// The sha256 of the private key (DER PKCS#1): what a step-cache key names it by, so
    /// another key misses while the key's bytes never appear in a key in clear.
    pub fn fingerprint(&self) -> [u8; 32] {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use sha2::Digest;
        let der = self
            .key
            .to_pkcs1_der()
            .expect("an RSA private key always encodes");
        sha2::Sha256::digest(der.as_bytes()).into()
    }

    /// The public key as DER PKCS#1 `RSAPublicKey`.
    pub fn public_key_pkcs1_der(&self) -> Vec<u8> {
        let public = self.key.to_public_key();
        public
            .to_pkcs1_der()
            .expect("an RSA public key always encodes")
            .into_vec()
    }
}

/// An X.509 certificate with its DER bytes (embedded as they are in
/// signatures) and its file.
#[derive(Clone)]
pub struct Certificate {
    cert: x509_cert::Certificate,
    der: Vec<u8>,
    path: PathBuf,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("path", &self.path)
            .field(
                "subject",
                &self.cert.tbs_certificate().subject().to_string(),
            )
            .finish()
    }
}

impl Certificate {
    /// Loads the first certificate of a PEM file, or a DER file.
    pub fn load(path: &Path) -> Result<Certificate, KeyError> {
        let text = read_small(path)?;
        let der = if text.first() == Some(&0x30) {
            text
        } else {
            let block = pem_blocks(&text)
                .find(|b| b.label == "CERTIFICATE")
                .ok_or_else(|| KeyError::NoPem {
                    path: path.into(),
                    wanted: "CERTIFICATE",
                })?;
            decode_block(path, &block, "certificate")?
        };
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| malformed(path, "X.509 certificate", e))?;
        Ok(Certificate {
            cert,
            der,
            path: path.to_path_buf(),
        })
    }

    /// The file this certificate came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The certificate as DER, exactly as read.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The parsed certificate (issuer, serial number, subject).
    pub fn x509(&self) -> &x509_cert::Certificate {
        &self.cert
    }

    /// Fails unless this certificate carries `key`'s public key: a
    /// signature made with another key would fail verification only at
    /// boot, on the firmware's screen.
    pub fn check_matches(&self, key: &PrivateKey) -> Result<(), KeyError> {
        let spki = self
            .cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| malformed(&self.path, "public key", e))?;
        if spki == key.public_key_spki_der() {
            Ok(())
        } else {
            Err(KeyError::Mismatch {
                cert: self.path.clone(),
                key: key.path.clone(),
            })
        }
    }
}

/// Reads a file of at most [`MAX_FILE`] bytes.
fn read_small(path: &Path) -> Result<Vec<u8>, KeyError> {
    let read = |source| KeyError::Read {
        path: path.into(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > MAX_FILE {
        return Err(KeyError::TooLarge {
            path: path.into(),
            size,
        });
    }
    std::fs::read(path).map_err(read)
}

/// The passphrase in the environment variable `var`.
fn passphrase_from_env(path: &Path, var: Option<&str>) -> Result<(String, String), KeyError> {
    let var = var.ok_or_else(|| KeyError::NeedsPassphrase { path: path.into() })?;
    let value = std::env::var(var).map_err(|_| KeyError::PassphraseUnset {
        path: path.into(),
        var: var.into(),
    })?;
    Ok((var.to_string(), value))
}

/// Parses the first private-key PEM block of `text`. `passphrase` yields
/// (variable name, passphrase) and is called only for an encrypted key.
fn parse_key_pem(
    path: &Path,
    text: &[u8],
    passphrase: impl FnOnce() -> Result<(String, String), KeyError>,
) -> Result<rsa::PrivateKey, KeyError> {
    let block = pem_blocks(text)
        .find(|b| b.label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| KeyError::NoPem {
            path: path.into(),
            wanted: "PRIVATE KEY",
        })?;
    if block.has_headers && block.label != "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::LegacyEncryption { path: path.into() });
    }
    match block.label {
        "PRIVATE KEY" => pkcs8_key(path, &decode_block(path, &block, "PKCS#8 key")?),
        "ENCRYPTED PRIVATE KEY" => {
            let der = decode_block(path, &block, "encrypted PKCS#8 key")?;
            let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
                .map_err(|e| malformed(path, "encrypted PKCS#8 key", e))?;
            let (var, secret) = passphrase()?;
            let plain = info
                .decrypt(secret.as_bytes())
                .map_err(|source| KeyError::Decrypt {
                    path: path.into(),
                    var,
                    source,
                })?;
            pkcs8_key(path, plain.as_bytes())
        }
        "RSA PRIVATE KEY" => {
            let der = decode_block(path, &block, "PKCS#1 key")?;
            rsa::PrivateKey::from_pkcs1_der(&der).map_err(|e| malformed(path, "PKCS#1 RSA key", e))
        }
        other => Err(KeyError::NotRsa {
            path: path.into(),
            what: format!("a {other} block"),
        }),
    }
}

/// An RSA key from DER PKCS#8, refusing other algorithms by name.
fn pkcs8_key(path: &Path, der: &[u8]) -> Result<rsa::PrivateKey, KeyError> {
    let info =
        pkcs8::PrivateKeyInfoRef::try_from(der).map_err(|e| malformed(path, "PKCS#8 key", e))?;
    let oid = info.algorithm.oid;
    if oid != rsa::pkcs1::ALGORITHM_OID {
        return Err(KeyError::NotRsa {
            path: path.into(),
            what: format!("algorithm {oid}"),
        });
    }
    rsa::PrivateKey::from_pkcs8_der(der).map_err(|e| malformed(path, "PKCS#8 RSA key", e))
}

fn malformed(
    path: &Path,
    what: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> KeyError {
    KeyError::Malformed {
        path: path.into(),
        what,
        source: Box::new(e),
    }
}

/// One `-----BEGIN label-----` … `-----END label-----` block of a file.
struct PemBlock<'a> {
    label: &'a str,
    /// The whole block, BEGIN and END lines included.
    text: &'a str,
    /// RFC 1421 headers (`Proc-Type:` …) follow the BEGIN line.
    has_headers: bool,
}

/// The PEM blocks of a file, in order, skipping text around them (keys
/// and certificates often share a file with comments or each other).
fn pem_blocks(text: &[u8]) -> impl Iterator<Item = PemBlock<'_>> {
    let text = std::str::from_utf8(text).unwrap_or("");
    let mut rest = text;
    std::iter::from_fn(move || loop {
        let start = rest.find("-----BEGIN ")?;
        let after = &rest[start + 11..];
        let label_end = after.find("-----")?;
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            rest = &rest[start + 11..];
            continue;
        };
        let block = &rest[start..start + end + end_marker.len()];
        rest = &rest[start + end + end_marker.len()..];
        let body = block.lines().nth(1).unwrap_or("");
        return Some(PemBlock {
            label,
            text: block,
            has_headers: body.contains(':'),
        });
    })
}

/// The DER bytes of one block.
fn decode_block(
    path: &Path,
    block: &PemBlock<'_>,
    what: &'static str,
) -> Result<Vec<u8>, KeyError> {
    let (_, der) =
        der::pem::decode_vec(block.text.as_bytes()).map_err(|e| malformed(path, what, e))?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
    const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

    fn snakeoil(passphrase: &str) -> Result<rsa::PrivateKey, KeyError> {
        let text = std::fs::read(SNAKEOIL_KEY).expect("ovmf is installed (scripts/deps.sh)");
        parse_key_pem(Path::new(SNAKEOIL_KEY), &text, || {
            Ok(("SB_PASS".into(), passphrase.into()))
        })
    }

    /// Writes `key` in every unencrypted form openssl writes and returns them.
    fn openssl_forms(dir: &Path, key: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (name, args) in [
            ("pkcs8.pem", &["pkey", "-passin", "pass:snakeoil"][..]),
            (
                "pkcs1.pem",
                &["rsa", "-traditional", "-passin", "pass:snakeoil"][..],
            ),
        ] {
            let dst = dir.join(name);
            let status = std::process::Command::new("openssl")
                .args(args)
                .arg("-in")
                .arg(key)
                .arg("-out")
                .arg(&dst)
                .output()
                .expect("openssl runs (scripts/deps.sh)");
            assert!(status.status.success(), "openssl {args:?}");
            out.push(dst);
        }
        out
    }

    #[test]
    fn debians_encrypted_snakeoil_key_loads_and_matches_its_certificate() {
        let key = PrivateKey {
            key: snakeoil("snakeoil").unwrap(),
            path: SNAKEOIL_KEY.into(),
        };
        assert_eq!(key.modulus_len(), 256);
        let cert = Certificate::load(Path::new(SNAKEOIL_CERT)).unwrap();
        cert.check_matches(&key).unwrap();
        assert!(key
            .public_key_pem()
            .starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn a_wrong_passphrase_is_a_decrypt_error_naming_the_variable() {
        let err = snakeoil("wrong").unwrap_err();
        assert!(
            matches!(err, KeyError::Decrypt { ref var, .. } if var == "SB_PASS"),
            "{err}"
        );
        assert!(err.fix().contains("SB_PASS"));
    }

    #[test]
    fn an_unset_passphrase_variable_is_named() {
        let err =
            passphrase_from_env(Path::new("k.pem"), Some("STRATA_TEST_SURELY_UNSET")).unwrap_err();
        assert!(
            err.to_string().contains("STRATA_TEST_SURELY_UNSET"),
            "{err}"
        );
        let err = passphrase_from_env(Path::new("k.pem"), None).unwrap_err();
        assert!(matches!(err, KeyError::NeedsPassphrase { .. }));
    }

    #[test]
    fn plain_pkcs8_and_pkcs1_give_the_same_key_and_signature() {
        let dir = tempfile::tempdir().unwrap();
        let digest = [7u8; 32];
        let reference = PrivateKey {
            key: snakeoil("snakeoil").unwrap(),
            path: SNAKEOIL_KEY.into(),
        };
        let want = reference.sign_sha256(&digest).unwrap();
        for form in openssl_forms(dir.path(), Path::new(SNAKEOIL_KEY)) {
            let key = PrivateKey::load(&form, None).unwrap();
            assert_eq!(
                key.sign_sha256(&digest).unwrap(),
                want,
                "{}",
                form.display()
            );
        }
    }

    #[test]
    fn signatures_verify_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey {
            key: snakeoil("snakeoil").unwrap(),
            path: SNAKEOIL_KEY.into(),
        };
        let data = b"strata";
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(data).into();
        let sig = dir.path().join("sig");
        std::fs::write(&sig, key.sign_sha256(&digest).unwrap()).unwrap();
        let msg = dir.path().join("msg");
        std::fs::write(&msg, data).unwrap();
        let public = dir.path().join("pub.pem");
        std::fs::write(&public, key.public_key_pem()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(&sig)
            .arg(&msg)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn legacy_encrypted_and_non_rsa_keys_are_refused_with_a_fix() {
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let err = parse_key_pem(Path::new("old.pem"), legacy, || unreachable!()).unwrap_err();
        assert!(matches!(err, KeyError::LegacyEncryption { .. }));
        assert!(err.fix().contains("openssl pkcs8 -topk8"));
        let ec = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let err = parse_key_pem(Path::new("ec.pem"), ec, || unreachable!()).unwrap_err();
        assert!(matches!(err, KeyError::NotRsa { .. }), "{err}");
        let none = parse_key_pem(Path::new("x.pem"), b"hello", || unreachable!()).unwrap_err();
        assert!(matches!(none, KeyError::NoPem { .. }));
    }

    #[test]
    fn a_certificate_for_another_key_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&other)
            .output()
            .expect("openssl runs");
        assert!(status.status.success());
        let key = PrivateKey::load(&other, None).unwrap();
        let cert = Certificate::load(Path::new(SNAKEOIL_CERT)).unwrap();
        let err = cert.check_matches(&key).unwrap_err();
        assert!(matches!(err, KeyError::Mismatch { .. }));
    }
}
