//! The client's TLS trust decisions: the system CA store, an explicit `pin-sha256:` pin (like
//! openconnect's `--servercert`), SPKI pins learned after the first trusted connection (unless
//! `DisablePinning=true`), and client certificates from PEM files.
//!
//! Order of decision for the gateway's certificate:
//! 1. an explicit pin: the leaf's SPKI must hash to it; the CA chain is not consulted;
//! 2. a learned pin for this host: the leaf's SPKI must hash to it;
//! 3. otherwise the system CA store must verify the chain and the name.
//!
//! A failure names the certificate's pin, so a user can decide to trust it (the dynamic trust
//! prompt of the CLI) and connect again with that pin.

use std::{fmt, path::Path, sync::Arc};

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
}

/// Client certificate and key, PEM.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl ClientCert {
    /// Loads a certificate chain and its key from PEM files (the key may be in the same file).
    pub fn load(cert: &Path, key: &Path) -> Result<ClientCert, String> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "client certificate {}: no certificate in the file",
                cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("client key {}: {e}", key.display()))?;
        Ok(ClientCert {
            chain,
            key: Arc::new(key),
        })
    }
}

/// The verifier implementing [`Trust`]; records the pin it saw so a refusal can name it.
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
        if let Some(pin) = self.trust.pin.or(self.trust.learned) {
            return if seen == pin {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(Error::General(format!(
                    "the gateway's certificate {seen} does not match the pin {pin}"
                )))
            };
        }
        match &self.webpki {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| {
                    Error::General(format!(
                        "the gateway's certificate {seen} is not trusted: {e}"
                    ))
                }),
            None => Err(Error::General(format!(
                "the gateway's certificate {seen} is not trusted: no CA certificates on this system"
            ))),
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
    cert: Option<&ClientCert>,
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
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| format!("client certificate: {e}"))?,
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
