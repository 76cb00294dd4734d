//! The client's TLS trust decisions: the system CA store, an explicit `pin-sha256:` pin (like
//! openconnect's `--servercert`), the administrator's pins and the pins learned after a
//! trusted connection (unless `DisablePinning=true`), each per gateway host; and client
//! certificates from PEM text (which one a handshake presents is [`super::cert_select`]'s
//! decision).
//!
//! Decision for the certificate a gateway shows for host H (the name the TLS connection is
//! for), in this order:
//!
//! ```text
//!  explicit pin? ──yes──▶ key == pin? ──no──▶ refused (PinMismatch)
//!       │no                  │yes ──▶ trusted; with dynamic trust off the CAs must also verify
//!       ▼
//!  key among the administrator's pins for H? ──yes──▶ trusted
//!       │no
//!       ▼
//!  CAs verify chain and name H? ──yes──▶ trusted (a renewed key too; the learned pin follows)
//!       │no
//!       ▼
//!  key == the pin learned for H, and dynamic trust on? ──yes──▶ trusted
//!       │no
//!       ▼
//!  refused (CaRefused / NoCas, naming the key's pin and the pin H has, if any)
//! ```
//!
//! A learned pin therefore never stands in the way of the CAs: it only trusts the key it
//! names, for the host it was learned for, where the CAs do not. Pins are looked up by the
//! host of the TLS connection, so a pin of one gateway never vouches for another. With
//! dynamic trust off ([`Trust::ca_required`]) a learned pin trusts nothing on its own, and
//! an explicit pin narrows what the CAs allow; the administrator's pins still hold (they are
//! not a user's decision, which is what dynamic trust is about).
//!
//! A failure names the certificate's pin, so a user can decide to trust it (the dynamic trust
//! prompt of the CLI, where the machine settings allow it) and connect again with that pin.

use std::{collections::BTreeMap, fmt, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};

use super::cert_select::{Candidate, CertSelector, ClientAuth};

pub use tunnel_config::Pin;

/// The pin of a DER certificate (its SubjectPublicKeyInfo's), or None if it cannot be
/// parsed.
pub fn pin_of_certificate(cert: &CertificateDer<'_>) -> Option<Pin> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(Pin::of_spki(parsed.public_key().raw))
}

/// How the gateway's certificate is to be trusted (see the module docs for the order).
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// An explicit pin (`--servercert`): the key must be this one, whatever the host.
    pub pin: Option<Pin>,
    /// The administrator's pins, per host (`Connection::pins`).
    pub admin: BTreeMap<String, Vec<Pin>>,
    /// Pins learned on earlier connections, per host (`pins.json`); empty with
    /// `DisablePinning=true`.
    pub learned: BTreeMap<String, Pin>,
    /// Dynamic trust is off (`dynamic-trust: "false"` in the machine settings): no user's
    /// pin, explicit or learned, trusts a certificate the CAs do not.
    pub ca_required: bool,
}

/// The host a TLS connection is for, as pins are keyed: a name in lower case, or an address.
fn host_of(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_ascii_lowercase(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
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
    /// The explicit pin (`--servercert`) is another key's.
    #[error("the gateway's certificate {seen} does not match the pin {pin}")]
    PinMismatch { seen: Pin, pin: Pin },
    /// The CA store refused the chain or the name (`verdict`, rustls's reason, is part of
    /// the sentence), and no pin of this host trusts the key.
    #[error("the gateway's certificate {seen} is not trusted: {verdict}{pinned}")]
    CaRefused {
        seen: Pin,
        verdict: Error,
        pinned: Pinned,
    },
    #[error(
        "the gateway's certificate {seen} is not trusted: no CA certificates on this system{pinned}"
    )]
    NoCas { seen: Pin, pinned: Pinned },
}

/// What the host's pins said about a certificate the CAs refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// The host has no pin.
    Nothing,
    /// The host's pin (learned, or the administrator's first) is another key's.
    Other(Pin),
    /// The key is the pin learned (or given) for this host, but dynamic trust is off.
    NotEnough,
}

impl fmt::Display for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pinned::Nothing => Ok(()),
            Pinned::Other(pin) => write!(f, "; the key pinned for this host is {pin}"),
            Pinned::NotEnough => f.write_str(
                " (dynamic trust is off in the machine settings: a pin does not replace the CA check)",
            ),
        }
    }
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
        let seen = pin_of_certificate(end_entity).ok_or(Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        // Carried as `Other`: rustls answers it with the same alert as any refusal of ours
        // (handshake_failure), and the connection finds the typed reason inside.
        let refuse = |why: Untrusted| Error::Other(rustls::OtherError(Arc::new(why)));
        let cas = |pinned: Pinned| match &self.webpki {
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
        };
        let t = &self.trust;
        if let Some(pin) = t.pin {
            if seen != pin {
                return Err(refuse(Untrusted::PinMismatch { seen, pin }));
            }
            if !t.ca_required {
                return Ok(ServerCertVerified::assertion());
            }
            return cas(Pinned::NotEnough);
        }
        let host = host_of(server_name);
        let admin = t.admin.get(&host).map(Vec::as_slice).unwrap_or_default();
        if admin.contains(&seen) {
            return Ok(ServerCertVerified::assertion());
        }
        let learned = t.learned.get(&host).copied();
        let pinned = match (learned, admin.first()) {
            (Some(pin), _) if pin == seen => {
                if t.ca_required {
                    Pinned::NotEnough
                } else {
                    return Ok(ServerCertVerified::assertion());
                }
            }
            (Some(pin), _) | (None, Some(&pin)) => Pinned::Other(pin),
            (None, None) => Pinned::Nothing,
        };
        // Tried after the pins that trust without it, so that a learned key is trusted
        // without the CAs, and before refusing: a renewed key the CAs vouch for is trusted.
        cas(pinned)
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
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::*;

    /// A certificate authority for the tests.
    struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        fn der(&self) -> CertificateDer<'static> {
            self.0.der().clone()
        }
    }

    /// A gateway certificate for `names` with `key`, issued by `ca` (self-signed without).
    fn leaf(ca: Option<&Ca>, names: &[&str], key: &KeyPair) -> CertificateDer<'static> {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        match ca {
            Some(ca) => params.signed_by(key, &ca.0).unwrap().der().clone(),
            None => params.self_signed(key).unwrap().der().clone(),
        }
    }

    fn pin(cert: &CertificateDer<'_>) -> Pin {
        pin_of_certificate(cert).unwrap()
    }

    /// Verifies `cert` as the certificate of `host` under `trust`, with `roots` as the CAs.
    #[expect(
        clippy::result_large_err,
        reason = "a test helper: the refusal is inspected where it is returned"
    )]
    fn check(
        trust: &Trust,
        roots: &[CertificateDer<'static>],
        cert: &CertificateDer<'_>,
        host: &str,
    ) -> Result<(), Untrusted> {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = (!store.is_empty()).then(|| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .unwrap()
        });
        let verifier = PinningVerifier {
            trust: trust.clone(),
            webpki,
            provider,
        };
        let name = ServerName::try_from(host.to_string()).unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                // A refusal is recognised by its type, as the connection does.
                let e = std::io::Error::other(e);
                match Untrusted::of(&e) {
                    Some(why) => {
                        assert_eq!(why.seen(), pin(cert), "the refusal names the key's pin");
                        why.clone()
                    }
                    None => panic!("a refusal that is not an Untrusted: {e}"),
                }
            })
    }

    fn learned(host: &str, pin: Pin) -> Trust {
        Trust {
            learned: BTreeMap::from([(host.to_string(), pin)]),
            ..Trust::default()
        }
    }

    fn without_dynamic_trust(t: Trust) -> Trust {
        Trust {
            ca_required: true,
            ..t
        }
    }

    fn pinned(r: Result<(), Untrusted>) -> Pinned {
        match r {
            Err(Untrusted::CaRefused { pinned, .. } | Untrusted::NoCas { pinned, .. }) => pinned,
            other => panic!("expected a refusal by the CAs, got {other:?}"),
        }
    }

    #[test]
    fn a_renewed_key_the_cas_accept_is_trusted_whatever_the_learned_pin() {
        let ca = Ca::new();
        let old = leaf(None, &["gw.test"], &KeyPair::generate().unwrap());
        let renewed = leaf(Some(&ca), &["gw.test"], &KeyPair::generate().unwrap());
        assert_ne!(pin(&old), pin(&renewed));
        let t = learned("gw.test", pin(&old));
        assert!(check(&t, &[ca.der()], &renewed, "gw.test").is_ok());
        let t = without_dynamic_trust(t);
        assert!(check(&t, &[ca.der()], &renewed, "gw.test").is_ok());
    }

    #[test]
    fn a_key_neither_the_cas_nor_the_pin_accept_is_refused() {
        let ca = Ca::new();
        let old = leaf(None, &["gw.test"], &KeyPair::generate().unwrap());
        let other = leaf(None, &["gw.test"], &KeyPair::generate().unwrap());
        let t = learned("gw.test", pin(&old));
        let refused = check(&t, &[ca.der()], &other, "gw.test");
        assert_eq!(pinned(refused.clone()), Pinned::Other(pin(&old)));
        let text = refused.unwrap_err().to_string();
        assert!(text.contains(&pin(&old).to_string()), "{text}");
        // No CAs at all: the same refusal, saying so.
        let refused = check(&t, &[], &other, "gw.test");
        assert!(
            matches!(refused, Err(Untrusted::NoCas { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_learned_pin_trusts_its_key_only_while_dynamic_trust_is_on() {
        let cert = leaf(None, &["gw.test"], &KeyPair::generate().unwrap());
        let t = learned("gw.test", pin(&cert));
        assert!(check(&t, &[], &cert, "gw.test").is_ok());
        let refused = check(&without_dynamic_trust(t), &[], &cert, "gw.test");
        assert_eq!(pinned(refused.clone()), Pinned::NotEnough);
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("dynamic trust is off")
        );
    }

    #[test]
    fn attacker_a_certificate_for_the_name_from_an_untrusted_ca_is_refused() {
        let (ca, rogue) = (Ca::new(), Ca::new());
        let genuine = leaf(Some(&ca), &["gw.test"], &KeyPair::generate().unwrap());
        let forged = leaf(Some(&rogue), &["gw.test"], &KeyPair::generate().unwrap());
        // Positive control: the genuine certificate passes the same check.
        assert!(check(&Trust::default(), &[ca.der()], &genuine, "gw.test").is_ok());
        let refused = check(&Trust::default(), &[ca.der()], &forged, "gw.test");
        assert_eq!(pinned(refused), Pinned::Nothing);
        // With the genuine key learned, the forged one is still refused, naming the pin.
        let t = learned("gw.test", pin(&genuine));
        assert_eq!(
            pinned(check(&t, &[ca.der()], &forged, "gw.test")),
            Pinned::Other(pin(&genuine))
        );
    }

    #[test]
    fn pins_are_per_host() {
        let ca = Ca::new();
        let key = KeyPair::generate().unwrap();
        let a = leaf(None, &["gw-a.test"], &key);
        let t = learned("gw-a.test", pin(&a));
        assert!(check(&t, &[ca.der()], &a, "gw-a.test").is_ok());
        // gw-a's pinned key served by another gateway of the list: gw-b has no pin.
        let refused = check(&t, &[ca.der()], &a, "gw-b.test");
        assert_eq!(pinned(refused), Pinned::Nothing);
        // The pinned key under another name, served by gw-a: the pin binds key and host,
        // so it is trusted, unless dynamic trust is off (then the CAs and the name decide).
        let renamed = leaf(None, &["other.test"], &key);
        assert!(check(&t, &[ca.der()], &renamed, "gw-a.test").is_ok());
        assert!(
            check(
                &without_dynamic_trust(t),
                &[ca.der()],
                &renamed,
                "gw-a.test"
            )
            .is_err()
        );
        // A certificate the CAs issued to gw-a is not gw-b's either.
        let issued = leaf(Some(&ca), &["gw-a.test"], &KeyPair::generate().unwrap());
        let refused = check(&Trust::default(), &[ca.der()], &issued, "gw-b.test");
        assert!(
            matches!(refused, Err(Untrusted::CaRefused { .. })),
            "{refused:?}"
        );
        // Host names are compared as TLS sees them: case does not matter.
        let t = learned("gw-a.test", pin(&a));
        assert!(check(&t, &[], &a, "GW-A.test").is_ok());
    }

    #[test]
    fn the_administrators_pins_trust_their_host_even_without_dynamic_trust() {
        let ca = Ca::new();
        let cert = leaf(None, &["gw-a.test"], &KeyPair::generate().unwrap());
        let second = leaf(None, &["gw-a.test"], &KeyPair::generate().unwrap());
        let t = without_dynamic_trust(Trust {
            admin: BTreeMap::from([("gw-a.test".to_string(), vec![pin(&second), pin(&cert)])]),
            ..Trust::default()
        });
        assert!(check(&t, &[], &cert, "gw-a.test").is_ok());
        assert!(check(&t, &[], &second, "gw-a.test").is_ok());
        assert_eq!(pinned(check(&t, &[], &cert, "gw-b.test")), Pinned::Nothing);
        let stranger = leaf(None, &["gw-a.test"], &KeyPair::generate().unwrap());
        assert_eq!(
            pinned(check(&t, &[], &stranger, "gw-a.test")),
            Pinned::Other(pin(&second))
        );
        // They add trust; a certificate the CAs vouch for is still trusted.
        let issued = leaf(Some(&ca), &["gw-a.test"], &KeyPair::generate().unwrap());
        assert!(check(&t, &[ca.der()], &issued, "gw-a.test").is_ok());
    }

    #[test]
    fn an_explicit_pin_is_the_only_key_trusted() {
        let ca = Ca::new();
        let cert = leaf(None, &["gw.test"], &KeyPair::generate().unwrap());
        let explicit = Trust {
            pin: Some(pin(&cert)),
            ..Trust::default()
        };
        assert!(check(&explicit, &[], &cert, "gw.test").is_ok());
        // For any host of the connection: it is the user's word about this connect.
        assert!(check(&explicit, &[], &cert, "gw-b.test").is_ok());
        let issued = leaf(Some(&ca), &["gw.test"], &KeyPair::generate().unwrap());
        let refused = check(&explicit, &[ca.der()], &issued, "gw.test");
        assert!(
            matches!(refused, Err(Untrusted::PinMismatch { .. })),
            "{refused:?}"
        );
        // Without dynamic trust it narrows the CAs: the right key alone is not enough...
        let strict = without_dynamic_trust(explicit);
        assert_eq!(
            pinned(check(&strict, &[], &cert, "gw.test")),
            Pinned::NotEnough
        );
        // ...and a key the CAs vouch for must be the pinned one.
        let strict = Trust {
            pin: Some(pin(&issued)),
            ..strict
        };
        assert!(check(&strict, &[ca.der()], &issued, "gw.test").is_ok());
        assert!(matches!(
            check(&strict, &[ca.der()], &cert, "gw.test"),
            Err(Untrusted::PinMismatch { .. })
        ));
    }

    #[test]
    fn no_pin_and_no_ca_trusts_nothing() {
        let cert = leaf(None, &["gw.test"], &KeyPair::generate().unwrap());
        let refused = check(&Trust::default(), &[], &cert, "gw.test");
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("no CA certificates on this system")
        );
        // Positive control: the certificate as its own CA.
        assert!(
            check(
                &Trust::default(),
                std::slice::from_ref(&cert.clone().into_owned()),
                &cert,
                "gw.test"
            )
            .is_ok()
        );
    }

    #[test]
    fn pin_of_a_certificate_is_the_spki_hash() {
        let key = KeyPair::generate().unwrap();
        let cert = leaf(None, &["gw.test"], &key);
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(pin(&cert), Pin::of_spki(&spki));
    }
}
