//! Which client certificate a connection presents in the TLS handshake.
//!
//! ```text
//!  CertificateRequest (acceptable CA names, signature schemes)
//!        │
//!        ▼
//!  named on the connection / --cert FILE? ──yes──▶ that one, whatever the gateway asks
//!        │ no
//!        ▼
//!  stored certificates whose chain has an issuer among the CA names
//!  and whose key can sign with an offered scheme ──▶ the latest to expire
//!        │ none (or the gateway names no CA)
//!        ▼
//!  no certificate; the choice is recorded so the connection can say why
//! ```
//!
//! A gateway that names no CA gets no certificate unless the connection names one: sending
//! whatever is stored would tell any gateway who the user is.

use std::sync::{Arc, Mutex};

use rustls::{SignatureScheme, client::ResolvesClientCert, sign::CertifiedKey};

use super::certstore::StoredCert;

/// A certificate the selector may present.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The name it is stored under (or the file it came from).
    pub name: String,
    /// Its subject's common name.
    pub issued_to: Option<String>,
    pub key: Arc<CertifiedKey>,
    /// DER issuer names of its chain (see [`StoredCert::issuers`]).
    pub issuers: Vec<Vec<u8>>,
    pub not_after_unix: i64,
}

impl From<StoredCert> for Candidate {
    fn from(c: StoredCert) -> Candidate {
        Candidate {
            name: c.info.name,
            issued_to: c.info.issued_to,
            key: c.key,
            issuers: c.issuers,
            not_after_unix: c.info.not_after_unix,
        }
    }
}

/// What the connection's settings allow.
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// No client certificate.
    #[default]
    None,
    /// This one, named by the user: presented whenever the gateway asks.
    Named(Candidate),
    /// One of these, chosen by the gateway's acceptable CA names.
    Stored(Vec<Candidate>),
}

/// What happened when the gateway asked for a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// This certificate was presented.
    Presented {
        name: String,
        issued_to: Option<String>,
    },
    /// The gateway asked for a certificate from these issuers (readable names) and none of
    /// the stored ones fitted.
    NoneFitted { issuers: Vec<String> },
}

/// The rustls resolver for one TLS handshake; it remembers its [`Choice`].
#[derive(Debug)]
pub struct CertSelector {
    auth: ClientAuth,
    choice: Mutex<Option<Choice>>,
}

impl CertSelector {
    pub fn new(auth: ClientAuth) -> CertSelector {
        CertSelector {
            auth,
            choice: Mutex::new(None),
        }
    }

    /// What was decided, if the gateway asked for a certificate.
    pub fn choice(&self) -> Option<Choice> {
        self.choice
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The stored certificate that fits the request best, if any.
    fn pick<'a>(
        candidates: &'a [Candidate],
        hints: &[&[u8]],
        schemes: &[SignatureScheme],
    ) -> Option<&'a Candidate> {
        candidates
            .iter()
            .filter(|c| {
                c.issuers
                    .iter()
                    .any(|issuer| hints.iter().any(|h| same_name(h, issuer)))
            })
            .filter(|c| c.key.key.choose_scheme(schemes).is_some())
            .max_by_key(|c| c.not_after_unix)
    }

    fn record(&self, choice: Choice) {
        *self.choice.lock().unwrap_or_else(|e| e.into_inner()) = Some(choice);
    }
}

impl ResolvesClientCert for CertSelector {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let chosen = match &self.auth {
            ClientAuth::None => None,
            ClientAuth::Named(c) => Some(c),
            ClientAuth::Stored(all) => Self::pick(all, root_hint_subjects, sigschemes),
        };
        match chosen {
            Some(c) => {
                self.record(Choice::Presented {
                    name: c.name.clone(),
                    issued_to: c.issued_to.clone(),
                });
                Some(c.key.clone())
            }
            None => {
                self.record(Choice::NoneFitted {
                    issuers: root_hint_subjects.iter().map(|h| readable(h)).collect(),
                });
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        match &self.auth {
            ClientAuth::None => false,
            ClientAuth::Named(_) => true,
            ClientAuth::Stored(all) => !all.is_empty(),
        }
    }
}

/// Whether a CA name from a CertificateRequest is `issuer` (the DER of an X.500 Name, its
/// SEQUENCE header included). The hint may come with or without that header.
fn same_name(hint: &[u8], issuer: &[u8]) -> bool {
    hint == issuer || sequence_contents(issuer) == Some(hint)
}

/// The contents of a DER SEQUENCE (tag 0x30, definite length).
fn sequence_contents(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() == len).then_some(rest)
}

/// A CA name as people read it (`CN=Corp CA, O=...`), or its hex when it cannot be parsed.
fn readable(hint: &[u8]) -> String {
    use x509_parser::prelude::FromDer as _;
    let wrapped;
    let der = if hint.first() == Some(&0x30) {
        hint
    } else {
        // Without the SEQUENCE header: put one back to parse it.
        let mut v = vec![0x30];
        let len = hint.len();
        if len < 0x80 {
            v.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            v.push(0x80 | bytes.len() as u8);
            v.extend(bytes);
        }
        v.extend_from_slice(hint);
        wrapped = v;
        &wrapped
    };
    match x509_parser::x509::X509Name::from_der(der) {
        Ok((_, name)) => name.to_string(),
        Err(_) => hint.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use rustls::{DistinguishedName, SignatureScheme};
    use rustls_pki_types::UnixTime;

    use super::*;
    use crate::{
        client::certstore::CertStore,
        testbed::pki::{ClientNames, TestCa},
    };

    /// A store with alice's certificate from CA A and bob's from CA B, and the two CAs.
    struct Two {
        _dir: tempfile::TempDir,
        store: CertStore,
        a: TestCa,
        b: TestCa,
    }

    fn two() -> Two {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let (mut a, mut b) = (TestCa::new("CA A"), TestCa::new("CA B"));
        for (ca, cn) in [(&mut a, "alice"), (&mut b, "bob")] {
            let c = ca.issue(&ClientNames::cn(cn));
            store
                .import(&c.cert_pem, &c.key_pem, None, UnixTime::now())
                .unwrap();
        }
        Two {
            _dir: dir,
            store,
            a,
            b,
        }
    }

    /// The CA name as a gateway's CertificateRequest carries it.
    fn hint(ca: &TestCa) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        let subjects: Vec<DistinguishedName> = roots.subjects();
        subjects[0].as_ref().to_vec()
    }

    const ECDSA: &[SignatureScheme] = &[SignatureScheme::ECDSA_NISTP256_SHA256];

    fn stored(t: &Two) -> CertSelector {
        CertSelector::new(ClientAuth::Stored(
            t.store
                .load_all()
                .into_iter()
                .map(Candidate::from)
                .collect(),
        ))
    }

    fn presented(s: &CertSelector) -> Option<String> {
        match s.choice()? {
            Choice::Presented { name, .. } => Some(name),
            Choice::NoneFitted { .. } => None,
        }
    }

    #[test]
    fn the_certificate_of_the_ca_the_gateway_names_is_presented() {
        let t = two();
        let (a, b) = (hint(&t.a), hint(&t.b));
        let s = stored(&t);
        assert!(s.has_certs());
        assert!(s.resolve(&[&b], ECDSA).is_some());
        assert_eq!(presented(&s).as_deref(), Some("bob"));
        let s = stored(&t);
        assert!(s.resolve(&[&a], ECDSA).is_some());
        assert_eq!(presented(&s).as_deref(), Some("alice"));
        // Both named: either would do; one is presented.
        let s = stored(&t);
        assert!(s.resolve(&[&a, &b], ECDSA).is_some());
        assert!(presented(&s).is_some());
    }

    #[test]
    fn no_fitting_issuer_or_scheme_presents_nothing_and_says_why() {
        let t = two();
        let other = hint(&TestCa::new("CA C"));
        let s = stored(&t);
        assert!(s.resolve(&[&other], ECDSA).is_none());
        assert_eq!(
            s.choice(),
            Some(Choice::NoneFitted {
                issuers: vec!["CN=CA C".into()]
            })
        );
        // A gateway that names no CA learns nothing about the user.
        let s = stored(&t);
        assert!(s.resolve(&[], ECDSA).is_none());
        // The right CA, but the key (ECDSA P-256) cannot sign with what is offered.
        let s = stored(&t);
        let b = hint(&t.b);
        assert!(
            s.resolve(&[&b], &[SignatureScheme::RSA_PSS_SHA256])
                .is_none()
        );
    }

    #[test]
    fn a_named_certificate_overrides_the_gateways_names() {
        let t = two();
        let alice = Candidate::from(t.store.find("alice").unwrap());
        let s = CertSelector::new(ClientAuth::Named(alice));
        let b = hint(&t.b);
        let key = s.resolve(&[&b], ECDSA).unwrap();
        assert_eq!(
            key.end_entity_cert().unwrap(),
            t.store
                .find("alice")
                .unwrap()
                .key
                .end_entity_cert()
                .unwrap()
        );
        assert_eq!(presented(&s).as_deref(), Some("alice"));
        let none = CertSelector::new(ClientAuth::None);
        assert!(!none.has_certs());
        assert!(none.resolve(&[&b], ECDSA).is_none());
    }

    #[test]
    fn ties_go_to_the_latest_to_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::open(dir.path()).unwrap();
        let mut ca = TestCa::new("CA A");
        let c = ca.issue(&ClientNames::cn("alice"));
        store
            .import(&c.cert_pem, &c.key_pem, Some("early"), UnixTime::now())
            .unwrap();
        store
            .import(&c.cert_pem, &c.key_pem, Some("late"), UnixTime::now())
            .unwrap();
        let mut all: Vec<Candidate> = store.load_all().into_iter().map(Candidate::from).collect();
        for c in &mut all {
            if c.name == "late" {
                c.not_after_unix += 1;
            }
        }
        let h = hint(&ca);
        for order in [all.clone(), all.into_iter().rev().collect()] {
            let s = CertSelector::new(ClientAuth::Stored(order));
            s.resolve(&[&h], ECDSA).unwrap();
            assert_eq!(presented(&s).as_deref(), Some("late"));
        }
    }

    #[test]
    fn names_match_with_or_without_their_sequence_header() {
        let t = two();
        let a = hint(&t.a);
        let issuer = &t.store.find("alice").unwrap().issuers[0];
        assert!(same_name(&a, issuer));
        let inner = sequence_contents(&a).unwrap();
        assert!(same_name(inner, issuer));
        assert_eq!(readable(inner), "CN=CA A");
        assert!(!same_name(&hint(&t.b), issuer));
        assert_eq!(sequence_contents(&[0x30, 0x05, 1]), None);
    }
}
