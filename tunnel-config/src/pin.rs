//! A gateway's key pin: the SHA-256 of its certificate's SubjectPublicKeyInfo, written
//! `pin-sha256:BASE64` as openconnect's `--servercert` and HTTP public key pinning write it.
//!
//! This module owns the value and its text form only. Which pins a connection trusts, and
//! how a pin and the CA store decide together, is tunneld's (`client/tls.rs`); pins an
//! administrator gives live in the store ([`crate::Connection::pins`]) and come from
//! `.pulsepreconfig` (`server-pin`).

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The text a pin starts with.
pub const PIN_PREFIX: &str = "pin-sha256:";

/// A `pin-sha256:` pin.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pin([u8; 32]);

/// Why a text is not a pin.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    #[error("{text} is not a pin-sha256 value: it is not base64")]
    NotBase64 { text: String },
    #[error("{text} is not a pin-sha256 value: it must hold 32 bytes, not {len}")]
    Length { text: String, len: usize },
}

impl Pin {
    /// Parses `pin-sha256:BASE64` (the prefix is optional).
    pub fn parse(s: &str) -> Result<Pin, PinError> {
        let t = s.trim();
        let b64 = t.strip_prefix(PIN_PREFIX).unwrap_or(t);
        // Quoted and cut: the text may come from a file an attacker wrote.
        let text = || crate::text::Shown(s).to_string();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| PinError::NotBase64 { text: text() })?;
        let len = bytes.len();
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| PinError::Length { text: text(), len })?;
        Ok(Pin(arr))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki: &[u8]) -> Pin {
        Pin(Sha256::digest(spki).into())
    }

    /// The hash itself.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A pin from its hash.
    pub const fn from_bytes(hash: [u8; 32]) -> Pin {
        Pin(hash)
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PIN_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Pin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pin, D::Error> {
        let text = String::deserialize(d)?;
        Pin::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "pin-sha256:otI/3nrjGjN+MR5SFOD8hTzpnsZQAusZrkq/vH0/3mQ=";

    #[test]
    fn pins_parse_and_print() {
        let p = Pin::parse(TEXT).unwrap();
        assert_eq!(p.to_string(), TEXT);
        assert_eq!(Pin::parse(&TEXT[PIN_PREFIX.len()..]), Ok(p));
        assert_eq!(Pin::parse(&format!("  {TEXT}\n")), Ok(p));
        assert!(matches!(
            Pin::parse("pin-sha256:YWJj"),
            Err(PinError::Length { len: 3, .. })
        ));
        assert!(matches!(
            Pin::parse("pin-sha256:!!"),
            Err(PinError::NotBase64 { .. })
        ));
    }

    #[test]
    fn a_pin_is_the_sha256_of_the_spki_and_serializes_as_text() {
        let p = Pin::of_spki(b"abc");
        assert_eq!(
            p.to_string(),
            "pin-sha256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Pin>(&json).unwrap(), p);
        assert!(serde_json::from_str::<Pin>("\"pin-sha256:YWJj\"").is_err());
    }
}
