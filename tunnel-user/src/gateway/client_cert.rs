//! Client certificates: the verifier the TLS handshake uses (the client CA, and the
//! certificate revocation lists re-read when their files change), and which user a verified
//! certificate names (`auth.certificate.user`).
//!
//! This module owns those two things only. What a certificate then grants (a login with or
//! without the password, in which realm) is decided by `super::login` against the users file.
//!
//! Revocation: with `auth.certificate.crl_files` set, a client certificate is checked against
//! the CRLs during the handshake, and a revoked one fails the handshake. Only the end-entity
//! certificate is checked (intermediates are not), and its issuer must have a CRL in the list
//! (unknown status is refused). A CRL past its `nextUpdate` is refused too, so a CRL that is
//! no longer refreshed stops certificate logins rather than silently missing revocations. The
//! files are looked at (`stat`) at every handshake with a certificate and re-read when one
//! changed, so a new CRL takes effect without a restart; a set that no longer loads refuses
//! every certificate until it is fixed (and says why in the log). Replace CRL files
//! atomically (write a temporary file, rename it over the old one).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime, pem::PemObject};
use tracing::warn;
use x509_parser::{
    asn1_rs::{Any, Class, FromDer, Tag},
    extensions::GeneralName,
};

use super::{CertificateName, login::FileStamp};

/// The Microsoft user principal name, an otherName in the subject alternative names.
const UPN_OID: &str = "1.3.6.1.4.1.311.20.2.3";

/// Why a verified certificate names no user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertNameError {
    #[error("the certificate could not be parsed")]
    Unparsable,
    #[error("the certificate has no {field}")]
    Missing { field: CertificateName },
    #[error("the certificate has {count} {field} names, so none is the user's")]
    Several {
        field: CertificateName,
        count: usize,
    },
    #[error("the certificate's {field} is not UTF-8 text")]
    NotText { field: CertificateName },
}

/// The user `cert` names by `field`: exactly one such name, as text, or why not.
pub fn certificate_user(
    cert: &CertificateDer<'_>,
    field: CertificateName,
) -> Result<String, CertNameError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| CertNameError::Unparsable)?;
    let names: Vec<Option<String>> = match field {
        CertificateName::CommonName => parsed
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().ok().map(str::to_string))
            .collect(),
        CertificateName::Email | CertificateName::Upn => {
            let sans = parsed
                .subject_alternative_name()
                .map_err(|_| CertNameError::Unparsable)?;
            sans.map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|name| match (field, name) {
                        (CertificateName::Email, GeneralName::RFC822Name(email)) => {
                            Some(Some(email.to_string()))
                        }
                        (CertificateName::Upn, GeneralName::OtherName(oid, value))
                            if oid.to_id_string() == UPN_OID =>
                        {
                            Some(upn_text(value))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
        }
    };
    match names.as_slice() {
        [] => Err(CertNameError::Missing { field }),
        [Some(name)] => Ok(name.clone()),
        [None] => Err(CertNameError::NotText { field }),
        several => Err(CertNameError::Several {
            field,
            count: several.len(),
        }),
    }
}

/// An otherName's value: `[0] EXPLICIT UTF8String` for a UPN.
fn upn_text(value: &[u8]) -> Option<String> {
    let (_, outer) = Any::from_der(value).ok()?;
    if outer.class() != Class::ContextSpecific || outer.tag() != Tag(0) {
        return None;
    }
    let (_, text) = String::from_der(outer.data).ok()?;
    Some(text)
}

/// Why the CRLs could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    #[error("CRL file {}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("the client CA and CRLs make no verifier: {what}")]
    Verifier { what: String },
}

/// Reads a CRL file: PEM (`-----BEGIN X509 CRL-----`, one or more) or a single DER CRL.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, CrlError> {
    let err = |what: String| CrlError::File {
        path: path.to_path_buf(),
        what,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let crls = if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if crls.is_empty() {
        return Err(err("no X509 CRL in the file".to_string()));
    }
    // Parsed here too, so that a bad file is named (the verifier's error does not say which).
    for crl in &crls {
        x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| err(format!("not a CRL: {e}")))?;
    }
    Ok(crls)
}

struct Loaded {
    stamps: Vec<Option<FileStamp>>,
    verifier: Result<Arc<dyn ClientCertVerifier>, CrlError>,
}

/// Verifies client certificates against the client CA and the CRLs, re-reading the CRL files
/// when they change (see the module docs). Certificates are optional: clients without one log
/// in as `auth.certificate` allows.
pub struct ClientVerifier {
    roots: Arc<RootCertStore>,
    /// The verifier without CRLs: for handshake signatures, which revocation does not change.
    base: Arc<dyn ClientCertVerifier>,
    hints: Vec<DistinguishedName>,
    crl_files: Vec<PathBuf>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("crl_files", &self.crl_files)
            .finish_non_exhaustive()
    }
}

impl ClientVerifier {
    /// A verifier for `roots` and the CRLs in `crl_files`, which must load now.
    pub fn new(roots: RootCertStore, crl_files: &[PathBuf]) -> Result<ClientVerifier, CrlError> {
        let roots = Arc::new(roots);
        let stamps = stamps(crl_files);
        let verifier = build(&roots, crl_files)?;
        let base = if crl_files.is_empty() {
            verifier.clone()
        } else {
            build(&roots, &[])?
        };
        Ok(ClientVerifier {
            base,
            hints: roots.subjects(),
            roots,
            crl_files: crl_files.to_vec(),
            loaded: Mutex::new(Loaded {
                stamps,
                verifier: Ok(verifier),
            }),
        })
    }

    /// The verifier with the CRL files as they are now.
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        if self.crl_files.is_empty() {
            return Ok(self.base.clone());
        }
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| rustls::Error::General("the CRL state is poisoned".into()))?;
        let now = stamps(&self.crl_files);
        if now != loaded.stamps {
            loaded.verifier = build(&self.roots, &self.crl_files);
            loaded.stamps = now;
            match &loaded.verifier {
                Ok(_) => warn!(files = self.crl_files.len(), "CRL files changed: re-read"),
                Err(e) => {
                    warn!(error = %e, "CRL files changed and do not load: refusing client certificates");
                }
            }
        }
        loaded
            .verifier
            .clone()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<FileStamp>> {
    files.iter().map(|p| FileStamp::of(p).ok()).collect()
}

fn build(
    roots: &Arc<RootCertStore>,
    crl_files: &[PathBuf],
) -> Result<Arc<dyn ClientCertVerifier>, CrlError> {
    let mut builder = WebPkiClientVerifier::builder(roots.clone()).allow_unauthenticated();
    if !crl_files.is_empty() {
        let mut crls = Vec::new();
        for path in crl_files {
            crls.extend(read_crls(path)?);
        }
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .enforce_revocation_expiration();
    }
    builder.build().map_err(|e| CrlError::Verifier {
        what: e.to_string(),
    })
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.base.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.base.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Duration};

    use super::*;
    use crate::testbed::pki::{ClientNames, TestCa};

    fn names(cn: &[&str], emails: &[&str], upns: &[&str]) -> ClientNames {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        ClientNames {
            common_names: owned(cn),
            emails: owned(emails),
            upns: owned(upns),
        }
    }

    #[test]
    fn a_certificate_names_its_user_by_cn_email_or_upn() {
        let mut ca = TestCa::new("test CA");
        let all = ca.issue(&names(
            &["Alice A"],
            &["alice@corp.example"],
            &["alice@CORP"],
        ));
        let user = |field| certificate_user(&all.der, field);
        assert_eq!(user(CertificateName::CommonName).unwrap(), "Alice A");
        assert_eq!(user(CertificateName::Email).unwrap(), "alice@corp.example");
        assert_eq!(user(CertificateName::Upn).unwrap(), "alice@CORP");

        let cn_only = ca.issue(&ClientNames::cn("alice"));
        for field in [CertificateName::Email, CertificateName::Upn] {
            assert_eq!(
                certificate_user(&cn_only.der, field),
                Err(CertNameError::Missing { field })
            );
        }
        let two = ca.issue(&names(&[], &["a@x.example", "b@x.example"], &[]));
        assert_eq!(
            certificate_user(&two.der, CertificateName::Email),
            Err(CertNameError::Several {
                field: CertificateName::Email,
                count: 2
            })
        );
        let none = ca.issue(&ClientNames::default());
        assert_eq!(
            certificate_user(&none.der, CertificateName::CommonName),
            Err(CertNameError::Missing {
                field: CertificateName::CommonName
            })
        );
        assert_eq!(
            certificate_user(
                &CertificateDer::from(vec![0x30, 0x00]),
                CertificateName::CommonName
            ),
            Err(CertNameError::Unparsable)
        );
    }

    fn roots(ca: &TestCa) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        roots
    }

    fn check(v: &ClientVerifier, der: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        v.verify_client_cert(der, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn revoked_certificates_are_refused_and_new_crls_are_read_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = TestCa::new("test CA");
        let alice = ca.issue(&ClientNames::cn("alice"));
        let bob = ca.issue(&ClientNames::cn("bob"));
        let crl = dir.path().join("ca.crl");
        fs::write(&crl, ca.crl(&[bob.serial], (2100, 1, 1))).unwrap();
        let v = ClientVerifier::new(roots(&ca), std::slice::from_ref(&crl)).unwrap();
        check(&v, &alice.der).unwrap();
        let refused = check(&v, &bob.der).unwrap_err();
        assert!(
            matches!(
                refused,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            ),
            "{refused:?}"
        );
        // A new CRL, renamed over the old one: alice revoked too, at the next handshake.
        let new = dir.path().join("ca.crl.new");
        fs::write(&new, ca.crl(&[bob.serial, alice.serial], (2100, 1, 1))).unwrap();
        fs::rename(&new, &crl).unwrap();
        assert!(check(&v, &alice.der).is_err());
        // A CRL file that no longer loads refuses every certificate (fail closed)...
        fs::write(
            &crl,
            "-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let broken = check(&v, &alice.der).unwrap_err();
        assert!(
            matches!(&broken, rustls::Error::General(e) if e.contains("ca.crl")),
            "{broken:?}"
        );
        // ... and so does an expired one (past its nextUpdate).
        fs::write(&crl, ca.crl(&[], (2021, 1, 1))).unwrap();
        let expired = check(&v, &alice.der).unwrap_err();
        assert!(
            matches!(
                expired,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredRevocationListContext { .. }
                )
            ),
            "{expired:?}"
        );
        // Fixed: certificates are checked again.
        std::thread::sleep(Duration::from_millis(10));
        fs::write(&crl, ca.crl(&[], (2100, 1, 1))).unwrap();
        check(&v, &alice.der).unwrap();
        check(&v, &bob.der).unwrap();
    }

    #[test]
    fn a_certificate_whose_issuer_has_no_crl_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = TestCa::new("test CA");
        let other = TestCa::new("another CA");
        let alice = ca.issue(&ClientNames::cn("alice"));
        let crl = dir.path().join("other.crl");
        fs::write(&crl, other.crl(&[], (2100, 1, 1))).unwrap();
        let mut both = roots(&ca);
        both.add(other.der()).unwrap();
        let v = ClientVerifier::new(both, &[crl]).unwrap();
        let err = check(&v, &alice.der).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownRevocationStatus
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn crls_must_load_at_start_and_der_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = TestCa::new("test CA");
        let bob = ca.issue(&ClientNames::cn("bob"));
        let missing = dir.path().join("missing.crl");
        assert!(matches!(
            ClientVerifier::new(roots(&ca), &[missing]),
            Err(CrlError::File { .. })
        ));
        let text = dir.path().join("text.crl");
        fs::write(&text, "not a CRL\n").unwrap();
        assert!(matches!(
            ClientVerifier::new(roots(&ca), &[text]),
            Err(CrlError::File { .. })
        ));
        let der = dir.path().join("der.crl");
        let pem = ca.crl(&[bob.serial], (2100, 1, 1));
        let parsed = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        fs::write(&der, parsed.as_ref()).unwrap();
        let v = ClientVerifier::new(roots(&ca), &[der]).unwrap();
        assert!(check(&v, &bob.der).is_err());
        // Without CRLs nothing is checked for revocation.
        let v = ClientVerifier::new(roots(&ca), &[]).unwrap();
        check(&v, &bob.der).unwrap();
        assert!(!v.client_auth_mandatory() && v.offer_client_auth());
    }
}
