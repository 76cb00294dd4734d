//! tunneld's client-certificate store: the certificates `tunnel cert import` gave it, each a
//! chain and its private key, kept under the state directory in `certs/` (mode 0700), one
//! file `<name>.pem` (mode 0600) holding the chain and then the key.
//!
//! What it checks on import: the text holds a certificate and a private key, the key is the
//! certificate's (their public keys are compared), the certificate has not expired, the name
//! is free and usable as a file name. What it owns: the files of that directory, nothing else.
//! Which stored certificate a connection presents is decided by [`super::cert_select`].

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Longest name a stored certificate may have (a file name with room for its suffix).
const MAX_NAME: usize = 128;

/// What `tunnel cert list` shows of a stored certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// The name it is stored under.
    pub name: String,
    /// The subject's common name: the "Issued To" the launcher's `-cert` names.
    pub issued_to: Option<String>,
    pub subject: String,
    pub issuer: String,
    /// The end of validity, as `openssl x509 -enddate` prints it.
    pub not_after: String,
    /// The end of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// SHA-256 of the certificate's DER, colon-separated hex.
    pub sha256: String,
}

/// A stored certificate, ready for a TLS handshake.
#[derive(Clone, Debug)]
pub struct StoredCert {
    pub info: CertInfo,
    pub key: Arc<CertifiedKey>,
    /// The issuer names (DER of the X.500 Name) of every certificate of the chain, the end
    /// entity's first: a gateway that trusts any of them can verify the chain.
    pub issuers: Vec<Vec<u8>>,
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertStoreError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("'{name}' cannot name a stored certificate: {why}")]
    BadName { name: String, why: &'static str },
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("the certificate PEM: {0}")]
    Pem(String),
    #[error("no private key: give the key file (--key), or a PEM file holding both")]
    NoKey,
    #[error("the private key: {0}")]
    Key(String),
    #[error("the certificate cannot be read: {0}")]
    Unparsable(String),
    #[error("the private key is not the certificate's (their public keys differ)")]
    KeyMismatch,
    #[error("the certificate issued to {issued_to} expired on {not_after}")]
    Expired {
        issued_to: String,
        not_after: String,
    },
    #[error("a certificate named '{name}' is already stored: delete it first")]
    Exists { name: String },
    #[error("no stored certificate named or issued to '{name}'")]
    NotFound { name: String },
}

/// The store: a directory of `<name>.pem` files.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    /// Opens (creating it, mode 0700) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<CertStore, CertStoreError> {
        let dir = dir.into();
        let io = |what| {
            let path = dir.clone();
            move |source| CertStoreError::Io { what, path, source }
        };
        fs::create_dir_all(&dir).map_err(io("creating"))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io("restricting"))?;
        Ok(CertStore { dir })
    }

    /// Checks and stores a chain (`cert`, PEM) and its key (`key`, PEM; may be the same
    /// text), under `name` or, by default, its "Issued To" name. Returns what was stored.
    pub fn import(
        &self,
        cert: &str,
        key: &str,
        name: Option<&str>,
        now: UnixTime,
    ) -> Result<CertInfo, CertStoreError> {
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertStoreError::Pem(e.to_string()))?;
        if chain.is_empty() {
            return Err(CertStoreError::NoCertificate);
        }
        let key = match PrivateKeyDer::from_pem_slice(key.as_bytes()) {
            Ok(k) => k,
            Err(rustls_pki_types::pem::Error::NoItemsFound) => return Err(CertStoreError::NoKey),
            Err(e) => return Err(CertStoreError::Key(e.to_string())),
        };
        let key_pem = pem_of_key(&key);
        let name_or_default = |info: &Parsed| -> String {
            name.map(str::to_string).unwrap_or_else(|| {
                info.issued_to
                    .clone()
                    .filter(|cn| check_name(cn).is_ok())
                    .unwrap_or_else(|| info.sha256.replace(':', "")[..16].to_string())
            })
        };
        let parsed = parse(&chain)?;
        let name = name_or_default(&parsed);
        check_name(&name)?;
        if parsed.not_after_unix < now.as_secs() as i64 {
            return Err(CertStoreError::Expired {
                issued_to: parsed.issued_to.unwrap_or(parsed.subject),
                not_after: parsed.not_after,
            });
        }
        certified(chain.clone(), key)?;
        let path = self.path_of(&name);
        let mut text = String::new();
        for c in &chain {
            text.push_str(&pem_of("CERTIFICATE", c.as_ref()));
        }
        text.push_str(&key_pem);
        self.write_new(&path, text.as_bytes())
            .map_err(|e| match e {
                CertStoreError::Io { source, .. }
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    CertStoreError::Exists { name: name.clone() }
                }
                e => e,
            })?;
        Ok(parsed.info(name))
    }

    /// Every stored certificate; a file that cannot be read is left out (and logged), so one
    /// damaged file does not take the others with it.
    pub fn load_all(&self) -> Vec<StoredCert> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|f| f.strip_suffix(".pem").map(str::to_string))
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| match self.load(&name) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(certificate = %name, "stored client certificate: {e}");
                    None
                }
            })
            .collect()
    }

    /// What `tunnel cert list` shows.
    pub fn list(&self) -> Vec<CertInfo> {
        self.load_all().into_iter().map(|c| c.info).collect()
    }

    /// The certificate stored as `name`, or else the one issued to `name` (the latest to
    /// expire when several are).
    pub fn find(&self, name: &str) -> Result<StoredCert, CertStoreError> {
        if check_name(name).is_ok() && self.path_of(name).exists() {
            return self.load(name);
        }
        self.load_all()
            .into_iter()
            .filter(|c| c.info.issued_to.as_deref() == Some(name))
            .max_by_key(|c| c.info.not_after_unix)
            .ok_or_else(|| CertStoreError::NotFound {
                name: name.to_string(),
            })
    }

    /// Removes the certificate stored as `name`.
    pub fn delete(&self, name: &str) -> Result<(), CertStoreError> {
        check_name(name)?;
        let path = self.path_of(name);
        fs::remove_file(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CertStoreError::NotFound {
                name: name.to_string(),
            },
            _ => CertStoreError::Io {
                what: "deleting",
                path,
                source,
            },
        })
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    fn load(&self, name: &str) -> Result<StoredCert, CertStoreError> {
        let path = self.path_of(name);
        let text = fs::read_to_string(&path).map_err(|source| CertStoreError::Io {
            what: "reading",
            path: path.clone(),
            source,
        })?;
        let chain = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertStoreError::Pem(e.to_string()))?;
        if chain.is_empty() {
            return Err(CertStoreError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| CertStoreError::Key(e.to_string()))?;
        let parsed = parse(&chain)?;
        let key = certified(chain, key)?;
        Ok(StoredCert {
            issuers: parsed.issuers.clone(),
            info: parsed.info(name.to_string()),
            key: Arc::new(key),
        })
    }

    /// Writes `bytes` to `path`, which must not exist, whole or not at all: a new file of
    /// mode 0600 beside it, then linked to `path` (which fails if something took the name
    /// meanwhile, where a rename would replace it).
    fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<(), CertStoreError> {
        let tmp = path.with_extension("pem.new");
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| CertStoreError::Io { what, path, source }
        };
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(io("writing", &tmp))?;
        let linked = fs::hard_link(&tmp, path).map_err(io("storing", path));
        let _ = fs::remove_file(&tmp);
        linked
    }
}

/// A name that is one plain file name: not empty, no `/`, no control characters, not
/// starting with a dot, at most [`MAX_NAME`] bytes.
fn check_name(name: &str) -> Result<(), CertStoreError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME {
        Some("it is longer than 128 bytes")
    } else if name.starts_with('.') {
        Some("it starts with a dot")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(CertStoreError::BadName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The chain with its key, refused when the key is not the end entity's.
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, CertStoreError> {
    let provider: CryptoProvider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertStoreError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CertStoreError::KeyMismatch)
        }
        // A key whose public half cannot be compared is refused too: the check fails closed.
        Err(e) => Err(CertStoreError::Key(format!(
            "cannot tell whether it is the certificate's: {e}"
        ))),
    }
}

/// What the store reads from a chain.
struct Parsed {
    issued_to: Option<String>,
    subject: String,
    issuer: String,
    not_after: String,
    not_after_unix: i64,
    sha256: String,
    issuers: Vec<Vec<u8>>,
}

impl Parsed {
    fn info(&self, name: String) -> CertInfo {
        CertInfo {
            name,
            issued_to: self.issued_to.clone(),
            subject: self.subject.clone(),
            issuer: self.issuer.clone(),
            not_after: self.not_after.clone(),
            not_after_unix: self.not_after_unix,
            sha256: self.sha256.clone(),
        }
    }
}

fn parse(chain: &[CertificateDer<'_>]) -> Result<Parsed, CertStoreError> {
    let bad = |e: x509_parser::nom::Err<x509_parser::error::X509Error>| {
        CertStoreError::Unparsable(e.to_string())
    };
    let mut issuers = Vec::with_capacity(chain.len());
    for c in chain {
        let (_, x) = x509_parser::parse_x509_certificate(c.as_ref()).map_err(bad)?;
        issuers.push(x.issuer().as_raw().to_vec());
    }
    let leaf = chain.first().ok_or(CertStoreError::NoCertificate)?;
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(bad)?;
    let issued_to = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let not_after = x.validity().not_after;
    let digest = Sha256::digest(leaf.as_ref());
    let sha256 = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Parsed {
        issued_to,
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        not_after: not_after.to_string(),
        not_after_unix: not_after.timestamp(),
        sha256,
        issuers,
    })
}

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_of_key(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pem_of(label, key.secret_der())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::pki::{ClientNames, TestCa};

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn import_list_find_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path().join("certs")).unwrap();
        let mode = fs::metadata(dir.path().join("certs"))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o700);
        let mut ca = TestCa::new("Corp CA");
        let alice = ca.issue(&ClientNames::cn("alice"));
        let info = store
            .import(&alice.cert_pem, &alice.key_pem, None, now())
            .unwrap();
        assert_eq!(info.name, "alice", "named by its Issued To by default");
        assert_eq!(info.issued_to.as_deref(), Some("alice"));
        assert_eq!(info.issuer, "CN=Corp CA");
        assert_eq!(info.not_after_unix, 4_102_444_800, "2100-01-01");
        let digest = Sha256::digest(alice.der.as_ref());
        assert!(info.sha256.starts_with(&format!("{:02X}:", digest[0])));
        let file = dir.path().join("certs/alice.pem");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Under another name as well, the key in the same text as the chain.
        let both = format!("{}{}", alice.cert_pem, alice.key_pem);
        store.import(&both, &both, Some("work"), now()).unwrap();
        let names: Vec<String> = store.list().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["alice", "work"]);
        assert!(matches!(
            store.import(&both, &both, Some("work"), now()),
            Err(CertStoreError::Exists { .. })
        ));

        // Found by name, or by Issued To when no file has that name.
        assert_eq!(store.find("work").unwrap().info.name, "work");
        store.delete("alice").unwrap();
        assert_eq!(store.find("alice").unwrap().info.name, "work");
        assert!(matches!(
            store.find("bob"),
            Err(CertStoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.delete("alice"),
            Err(CertStoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.delete("../connections.json"),
            Err(CertStoreError::BadName { .. })
        ));
    }

    #[test]
    fn import_refuses_a_key_that_is_not_the_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let mut ca = TestCa::new("Corp CA");
        let (alice, bob) = (
            ca.issue(&ClientNames::cn("alice")),
            ca.issue(&ClientNames::cn("bob")),
        );
        assert!(matches!(
            store.import(&alice.cert_pem, &bob.key_pem, None, now()),
            Err(CertStoreError::KeyMismatch)
        ));
        assert!(matches!(
            store.import(&alice.cert_pem, &alice.cert_pem, None, now()),
            Err(CertStoreError::NoKey)
        ));
        assert!(matches!(
            store.import("", &alice.key_pem, None, now()),
            Err(CertStoreError::NoCertificate)
        ));
        assert!(matches!(
            store.import(&alice.cert_pem, &alice.key_pem, Some(".hidden"), now()),
            Err(CertStoreError::BadName { .. })
        ));
        assert!(store.list().is_empty(), "nothing refused was stored");
    }

    #[test]
    fn import_refuses_an_expired_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let mut ca = TestCa::new("Corp CA");
        let alice = ca.issue(&ClientNames::cn("alice"));
        // The test CA's certificates are valid until 2100-01-01.
        let after = UnixTime::since_unix_epoch(std::time::Duration::from_secs(4_102_444_801));
        let refused = store
            .import(&alice.cert_pem, &alice.key_pem, None, after)
            .unwrap_err();
        assert!(matches!(refused, CertStoreError::Expired { .. }));
        assert!(
            refused.to_string().contains("issued to alice expired on"),
            "{refused}"
        );
        assert!(store.list().is_empty());
    }

    #[test]
    fn a_damaged_file_is_left_out_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let mut ca = TestCa::new("Corp CA");
        let alice = ca.issue(&ClientNames::cn("alice"));
        store
            .import(&alice.cert_pem, &alice.key_pem, None, now())
            .unwrap();
        fs::write(dir.path().join("broken.pem"), "not PEM").unwrap();
        let names: Vec<String> = store.list().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["alice"]);
    }
}
