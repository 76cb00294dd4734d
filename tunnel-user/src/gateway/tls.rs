//! The gateway's TLS server configuration: certificate chain and key from PEM files, and,
//! when a client CA is configured, optional client certificates verified against it and the
//! configured CRLs (`super::client_cert`).

use std::{path::Path, sync::Arc};

use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{
    CertificateConfig, TlsConfig,
    client_cert::{ClientVerifier, CrlError},
};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {what}")]
    ClientCa { path: String, what: String },
    #[error(transparent)]
    Crl(#[from] CrlError),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsSetupError::Pem {
            path: shown.clone(),
            what: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem {
            path: shown.clone(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// Builds the rustls server configuration; `certificates` names the CRLs.
pub fn server_config(
    tls: &TlsConfig,
    certificates: &CertificateConfig,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = certs(&tls.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| TlsSetupError::Pem {
        path: tls.key.display().to_string(),
        what: e.to_string(),
    })?;
    let builder = ServerConfig::builder();
    let config = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots.add(cert).map_err(|e| TlsSetupError::ClientCa {
                    path: ca.display().to_string(),
                    what: e.to_string(),
                })?;
            }
            // Certificates are optional here: what a login needs is decided after the
            // handshake, per realm (`auth.certificate`).
            let verifier = ClientVerifier::new(roots, &certificates.crl_files)?;
            builder
                .with_client_cert_verifier(Arc::new(verifier))
                .with_single_cert(chain, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
    };
    Ok(Arc::new(config))
}
