//! A test certificate authority: it issues client certificates that name their user by
//! common name, email or UPN, gateway certificates, and signs revocation lists.
//!
//! For tests only: keys are generated in memory and nothing is protected.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, OtherNameValue,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls_pki_types::CertificateDer;

/// The OID of the Microsoft user principal name (an otherName SAN), as rcgen wants it.
const UPN_OID: [u64; 10] = [1, 3, 6, 1, 4, 1, 311, 20, 2, 3];

/// The names a client certificate carries.
#[derive(Debug, Clone, Default)]
pub struct ClientNames {
    /// Subject common names (usually one).
    pub common_names: Vec<String>,
    /// rfc822Name subject alternative names.
    pub emails: Vec<String>,
    /// User principal names (otherName subject alternative names).
    pub upns: Vec<String>,
}

impl ClientNames {
    /// One common name.
    pub fn cn(name: &str) -> ClientNames {
        ClientNames {
            common_names: vec![name.to_string()],
            ..ClientNames::default()
        }
    }
}

/// A client certificate and its key.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM of the private key.
    pub key_pem: String,
    /// DER of the certificate.
    pub der: CertificateDer<'static>,
    /// Its serial number, to revoke it.
    pub serial: u64,
}

/// A self-signed CA that issues client certificates and CRLs.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    next_serial: u64,
}

impl TestCa {
    /// A new CA with common name `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
            next_serial: 1000,
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Issues a client certificate with `names`, valid from 2020 to 2100.
    pub fn issue(&mut self, names: &ClientNames) -> ClientCert {
        self.next_serial += 1;
        let serial = self.next_serial;
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
        // Not rcgen's default common name: only the names asked for.
        params.distinguished_name = DistinguishedName::new();
        for cn in &names.common_names {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        for email in &names.emails {
            params.subject_alt_names.push(SanType::Rfc822Name(
                email.as_str().try_into().expect("an IA5 email"),
            ));
        }
        for upn in &names.upns {
            params.subject_alt_names.push(SanType::OtherName((
                UPN_OID.to_vec(),
                OtherNameValue::Utf8String(upn.clone()),
            )));
        }
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// Issues a gateway certificate for `ip` (and the name gw.test) with a new key, valid
    /// from 2020 to 2100, writes it to `dir/cert.pem` and the key to `dir/key.pem`, and
    /// returns its pin.
    pub fn issue_gateway_certificate(
        &mut self,
        dir: &std::path::Path,
        ip: std::net::IpAddr,
    ) -> std::io::Result<crate::client::tls::Pin> {
        self.next_serial += 1;
        let mut params =
            CertificateParams::new(vec!["gw.test".to_string()]).map_err(std::io::Error::other)?;
        params.subject_alt_names.push(SanType::IpAddress(ip));
        params.serial_number = Some(SerialNumber::from(self.next_serial));
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().map_err(std::io::Error::other)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(std::io::Error::other)?;
        std::fs::write(dir.join("cert.pem"), cert.pem())?;
        std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
        crate::client::tls::pin_of_certificate(cert.der())
            .ok_or_else(|| std::io::Error::other("the test certificate does not parse"))
    }

    /// A CRL (PEM) revoking `serials`, issued in 2020, next update at `next_update` (y, m, d).
    pub fn crl(&self, revoked: &[u64], next_update: (i32, u8, u8)) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(next_update.0, next_update.1, next_update.2),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }
}

impl ClientCert {
    /// The certificate and key as the client's TLS configuration takes them.
    pub fn for_tls(&self) -> crate::client::tls::ClientCert {
        use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
        crate::client::tls::ClientCert {
            chain: vec![self.der.clone()],
            key: std::sync::Arc::new(
                PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
                    .expect("the test CA writes its keys as PEM"),
            ),
        }
    }
}

/// Writes a gateway's self-signed certificate for `ip` (and the name gw.test) to
/// `dir/cert.pem` and its key to `dir/key.pem`; returns its pin.
pub fn write_gateway_certificate(
    dir: &std::path::Path,
    ip: std::net::IpAddr,
) -> std::io::Result<crate::client::tls::Pin> {
    let key = KeyPair::generate().map_err(std::io::Error::other)?;
    let mut params =
        CertificateParams::new(vec!["gw.test".to_string()]).map_err(std::io::Error::other)?;
    params.subject_alt_names.push(SanType::IpAddress(ip));
    let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    crate::client::tls::pin_of_certificate(cert.der())
        .ok_or_else(|| std::io::Error::other("the test certificate does not parse"))
}
