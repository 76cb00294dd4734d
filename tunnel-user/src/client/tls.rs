//! The client's TLS trust decisions: the system CA store, an explicit `pin-sha256:` pin (like
//! openconnect's `--servercert`), SPKI pins learned after the first trusted connection (unless
//! `DisablePinning=true`), and client certificates from PEM text (which one a handshake
//! presents is [`super::cert_select`]'s decision).
//!
//! Order of decision for the gateway's certificate:
//! 1. an explicit pin: the leaf's SPKI must hash to it; the CA chain is not consulted;
//! 2. a learned pin for this host: the leaf's SPKI must hash to it;
//! 3. otherwise the system CA store must verify the chain and the name.
//!
//! When the machine settings turn dynamic trust off ([`Trust::ca_required`]), a pin never
//! replaces the CA store: the chain and the name must verify, and a pin, explicit or
//! learned, must match as well. A pin can then only narrow what the CAs allow, so neither a
//! request to the daemon nor a pin learned while dynamic trust was on makes an unknown
//! certificate trusted.
//!
//! A failure names the certificate's pin, so a user can decide to trust it (the dynamic trust
//! prompt of the CLI, where the machine settings allow it) and connect again with that pin.

use std::{fmt, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use sha2::{Digest, Sha256};

use super::cert_select::{Candidate, CertSelector, ClientAuth};

/// A `pin-sha256:` pin: the SHA-256 of a certificate's SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

impl Pin {
    /// Parses `pin-sha256:BASE64` (the `pin-sha256:` prefix is optional).
    pub fn parse(s: &str) -> Result<Pin, String> {
        use base64::Engine as _;
        let b64 = s.trim().strip_prefix("pin-sha256:").unwrap_or(s.trim());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("'{s}' is not a pin-sha256 value: {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("'{s}' is not a pin-sha256 value: it must hash 32 bytes"))?;
        Ok(Pin(arr))
    }

    /// The pin of a DER certificate, or None if it cannot be parsed.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Option<Pin> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        Some(Pin(Sha256::digest(parsed.public_key().raw).into()))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine as _;
        write!(
            f,
            "pin-sha256:{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How the gateway's certificate is to be trusted.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// An explicit pin (`--servercert`); overrides everything else.
    pub pin: Option<Pin>,
    /// A pin learned on an earlier connection to this host.
    pub learned: Option<Pin>,
    /// Dynamic trust is off (`dynamic-trust: "false"` in the machine settings): the CA store
    /// must verify the certificate whatever the pins say; they only add a condition.
    pub ca_required: bool,
}

/// Client certificate and key, PEM.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl ClientCert {
    /// Parses a certificate chain and its key from PEM text (the key may follow the chain
    /// in the same text).
    pub fn from_pem(cert: &str, key: &str) -> Result<ClientCert, String> {
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("client certificate: {e}"))?;
        if chain.is_empty() {
            return Err("client certificate: no certificate in the file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| format!("client key: {e}"))?;
        Ok(ClientCert {
            chain,
            key: Arc::new(key),
        })
    }

    /// The certificate as the one a connection presents (`--cert FILE`), refused when the
    /// key is not the certificate's. Its issuers and expiry are left empty: they serve the
    /// choice among stored certificates, and a named one is presented whatever they are.
    pub fn named(&self, name: &str) -> Result<Candidate, String> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = rustls::sign::CertifiedKey::from_der(
            self.chain.clone(),
            self.key.clone_key(),
            &provider,
        )
        .map_err(|e| format!("client certificate: {e}"))?;
        Ok(Candidate {
            name: name.to_string(),
            issued_to: None,
            key: Arc::new(key),
            issuers: Vec::new(),
            not_after_unix: 0,
        })
    }

    /// A selector that presents this certificate whenever the gateway asks.
    pub fn selector(&self) -> Result<Arc<CertSelector>, String> {
        Ok(Arc::new(CertSelector::new(ClientAuth::Named(
            self.named("client")?,
        ))))
    }
}

/// Why the gateway's certificate was not trusted. It travels inside rustls's error
/// (`rustls::Error::Other`) out of the handshake, so the connection recognises a refusal by
/// this type and offers the certificate's pin to the user (the dynamic trust prompt).
#[derive(Clone, Debug, thiserror::Error)]
pub enum Untrusted {
    #[error("the gateway's certificate {seen} does not match the pin {pin}")]
    PinMismatch { seen: Pin, pin: Pin },
    /// The CA store refused the chain or the name (`verdict`, rustls's reason, is part of
    /// the sentence); `pinned`: a pin matched, but dynamic trust is off.
    #[error("the gateway's certificate {seen} is not trusted: {verdict}{}", ca_only(*.pinned))]
    CaRefused {
        seen: Pin,
        verdict: Error,
        pinned: bool,
    },
    #[error("the gateway's certificate {seen} is not trusted: no CA certificates on this system{}", ca_only(*.pinned))]
    NoCas { seen: Pin, pinned: bool },
}

impl Untrusted {
    /// The pin of the certificate the gateway showed.
    pub fn seen(&self) -> Pin {
        match self {
            Untrusted::PinMismatch { seen, .. }
            | Untrusted::CaRefused { seen, .. }
            | Untrusted::NoCas { seen, .. } => *seen,
        }
    }

    /// The refusal a failed handshake carries, if that is why it failed.
    pub fn of(e: &std::io::Error) -> Option<&Untrusted> {
        match e.get_ref()?.downcast_ref::<Error>()? {
            Error::Other(other) => other.0.downcast_ref::<Untrusted>(),
            _ => None,
        }
    }
}

/// A pin that matched but cannot stand in for the CAs says so in the refusal.
fn ca_only(pinned: bool) -> &'static str {
    if pinned {
        " (dynamic trust is off in the machine settings: a pin does not replace the CA check)"
    } else {
        ""
    }
}

/// The verifier implementing [`Trust`]; a refusal is an [`Untrusted`] naming the pin it saw.
#[derive(Debug)]
struct PinningVerifier {
    trust: Trust,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let seen = Pin::of_certificate(end_entity).ok_or(Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        // Carried as `Other`: rustls answers it with the same alert as any refusal of ours
        // (handshake_failure), and the connection finds the typed reason inside.
        let refuse = |why: Untrusted| Error::Other(rustls::OtherError(Arc::new(why)));
        let pin = self.trust.pin.or(self.trust.learned);
        if let Some(pin) = pin {
            if seen != pin {
                return Err(refuse(Untrusted::PinMismatch { seen, pin }));
            }
            if !self.trust.ca_required {
                return Ok(ServerCertVerified::assertion());
            }
        }
        let pinned = pin.is_some();
        match &self.webpki {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|verdict| {
                    refuse(Untrusted::CaRefused {
                        seen,
                        verdict,
                        pinned,
                    })
                }),
            None => Err(refuse(Untrusted::NoCas { seen, pinned })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The system's CA certificates (`/etc/ssl/certs` and friends).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    roots
}

/// The rustls client configuration for one connection.
pub fn client_config(
    trust: Trust,
    roots: RootCertStore,
    certs: Option<Arc<CertSelector>>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("CA store: {e}"))?,
        )
    };
    let verifier = Arc::new(PinningVerifier {
        trust,
        webpki,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match certs {
        Some(selector) => builder.with_client_cert_resolver(selector),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print() {
        let p = Pin::parse("pin-sha256:otI/3nrjGjN+MR5SFOD8hTzpnsZQAusZrkq/vH0/3mQ=").unwrap();
        assert_eq!(
            p.to_string(),
            "pin-sha256:otI/3nrjGjN+MR5SFOD8hTzpnsZQAusZrkq/vH0/3mQ="
        );
        assert_eq!(
            Pin::parse("otI/3nrjGjN+MR5SFOD8hTzpnsZQAusZrkq/vH0/3mQ="),
            Ok(p)
        );
        assert!(
            Pin::parse("pin-sha256:YWJj")
                .unwrap_err()
                .contains("32 bytes")
        );
        assert!(
            Pin::parse("pin-sha256:!!")
                .unwrap_err()
                .contains("not a pin-sha256")
        );
    }

    /// A CA-less certificate for `gw.test`, its pin, and a verifier for `trust` with
    /// `roots` (the certificate itself when `trusted_by_ca`).
    fn verify(trust: impl FnOnce(Pin) -> Trust, trusted_by_ca: bool) -> Result<(), String> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = Pin::of_certificate(cert.der()).unwrap();
        let mut roots = RootCertStore::empty();
        if trusted_by_ca {
            roots.add(cert.der().clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = (!roots.is_empty()).then(|| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap()
        });
        let verifier = PinningVerifier {
            trust: trust(pin),
            webpki,
            provider,
        };
        verifier
            .verify_server_cert(
                cert.der(),
                &[],
                &ServerName::try_from("gw.test").unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| {
                // A refusal is recognised by its type, as the connection does.
                let e = std::io::Error::other(e);
                match Untrusted::of(&e) {
                    Some(why) => {
                        assert_eq!(why.seen(), pin, "the refusal names the certificate's pin");
                        why.to_string()
                    }
                    None => panic!("a refusal that is not an Untrusted: {e}"),
                }
            })
    }

    fn other_pin() -> Pin {
        Pin([7; 32])
    }

    #[test]
    fn with_dynamic_trust_a_pin_replaces_the_ca_store() {
        let explicit = |pin| Trust {
            pin: Some(pin),
            ..Trust::default()
        };
        let learned = |pin| Trust {
            learned: Some(pin),
            ..Trust::default()
        };
        assert_eq!(verify(explicit, false), Ok(()));
        assert_eq!(verify(learned, false), Ok(()));
        let refused = verify(|_| Trust::default(), false).unwrap_err();
        assert!(
            refused.contains("no CA certificates on this system"),
            "{refused}"
        );
        assert_eq!(verify(|_| Trust::default(), true), Ok(()));
    }

    #[test]
    fn without_dynamic_trust_a_pin_only_narrows_the_ca_store() {
        let explicit = |pin| Trust {
            pin: Some(pin),
            ca_required: true,
            ..Trust::default()
        };
        let learned = |pin| Trust {
            learned: Some(pin),
            ca_required: true,
            ..Trust::default()
        };
        // The right pin on a certificate no CA vouches for: refused, saying why.
        let refused = verify(explicit, false).unwrap_err();
        assert!(refused.contains("dynamic trust is off"), "{refused}");
        assert!(verify(learned, false).is_err());
        // A certificate the CAs vouch for: trusted, and a pin still has to match.
        assert_eq!(verify(explicit, true), Ok(()));
        assert_eq!(verify(learned, true), Ok(()));
        let wrong = |_| Trust {
            pin: Some(other_pin()),
            ca_required: true,
            ..Trust::default()
        };
        assert!(
            verify(wrong, true)
                .unwrap_err()
                .contains("does not match the pin")
        );
        let none = |_| Trust {
            ca_required: true,
            ..Trust::default()
        };
        assert_eq!(verify(none, true), Ok(()));
        assert!(verify(none, false).is_err());
    }

    #[test]
    fn pin_of_a_certificate_is_the_spki_hash() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = Pin::of_certificate(cert.der()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(pin.0, <[u8; 32]>::from(Sha256::digest(&spki)));
    }
}
