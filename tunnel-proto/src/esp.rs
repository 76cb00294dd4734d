//! ESP-in-UDP (RFC 4303 tunnel mode payloads) as Pulse uses it.
//!
//! Owns: the cipher suites (AES-128/256-CBC with HMAC-SHA1-96 or HMAC-SHA256-128, and
//! AES-256-GCM, which only tunnel's own client and gateway negotiate), the
//! outbound SA (SPI, 32-bit sequence numbers that refuse to wrap, random IV per packet,
//! encryption straight into the caller's buffer), the inbound SA (SPI check, constant-time ICV
//! check, 64-packet replay window, in-place decryption, padding check) and probes.
//!
//! Does not own: UDP sockets, which SA is current (see `client` / `server`), or where keys come
//! from (see `config`).
//!
//! Trains: the fast path moves ESP datagrams in *trains*, consecutive datagrams of one size
//! in one buffer, the last possibly shorter (one UDP GSO send, one GRO receive). An outbound
//! SA stages each packet into the train ([`OutboundSa::stage`]: header, IV, payload,
//! padding) and seals the whole train at once ([`OutboundSa::seal_train`]); an inbound SA
//! opens a whole train ([`InboundSa::decapsulate_train`]). With the CBC suites that lets
//! `tunnel-crypto` encrypt eight packets' CBC chains and hash sixteen packets' HMAC-SHA1
//! side by side, several times faster than one packet at a time; the bytes are the same.
//!
//! ```text
//! | SPI (4) | seq (4) | IV (16) | AES-CBC( IP packet | 1 2 3 .. pad | pad len | next hdr ) | ICV |
//! |<------------------------- authenticated by HMAC ----------------------------------->|
//! ```
//!
//! AES-256-GCM (RFC 4106) instead carries an 8-byte IV (the sequence number, unique per key),
//! pads to 4 bytes and authenticates SPI and sequence number as associated data with a
//! 16-byte tag; its key material is the 32-byte key followed by a 4-byte salt.
//!
//! ```text
//! | SPI (4) | seq (4) | IV (8) | AES-GCM( IP packet | 1 2 .. pad | pad len | next hdr ) | tag (16) |
//! ```
//!
//! Probes are the one-byte payload `0x00`. openconnect (oncp.c `oncp_esp_send_probes`) sends
//! them with next header 4 or 41 chosen by the family of the UDP socket, not 0; the receiver
//! recognises a probe by its payload alone.

use crate::rng::RandomSource;
use aes_gcm::{AeadInPlace, KeyInit};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tunnel_crypto::{AesCbc, CbcLane, HmacSha1};

/// Datagrams of a train sealed or opened side by side: the width of the multi-buffer
/// HMAC-SHA1 (the AES-CBC kernel runs eight at a time within it).
pub const TRAIN_LANES: usize = 16;

/// ESP header: SPI and sequence number.
pub const ESP_HEADER_LEN: usize = 8;
/// AES block and IV size.
pub const IV_LEN: usize = 16;
const BLOCK: usize = 16;
/// Next header for an IPv4 payload.
pub(crate) const NEXT_HEADER_IPV4: u8 = 4;
/// Next header for an IPv6 payload.
pub(crate) const NEXT_HEADER_IPV6: u8 = 41;
/// Replay window size in packets.
pub const REPLAY_WINDOW: u32 = 64;
/// Largest overhead any suite adds: header, IV, up to a block of padding plus the two trailer
/// bytes, and the 16-byte SHA256 ICV.
pub const MAX_OVERHEAD: usize = ESP_HEADER_LEN + IV_LEN + BLOCK + 1 + 16;

/// Errors of the ESP layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspError {
    /// Cipher code from the config that we do not implement.
    #[error(
        "unsupported ESP cipher {code} (supported: 2 AES-128-CBC, 5 AES-256-CBC, 20 AES-256-GCM)"
    )]
    UnsupportedCipher {
        /// Wire code.
        code: u16,
    },
    /// HMAC code from the config that we do not implement.
    #[error("unsupported ESP HMAC {code} (supported: 2 SHA1-96, 3 SHA256-128, 0 with AES-GCM)")]
    UnsupportedMac {
        /// Wire code.
        code: u16,
    },
    /// A cipher and an integrity algorithm that do not go together (AES-GCM needs integrity
    /// code 0; CBC needs an HMAC).
    #[error("ESP cipher {cipher} cannot be used with integrity algorithm {mac}")]
    MismatchedSuite {
        /// Cipher wire code.
        cipher: u16,
        /// Integrity wire code.
        mac: u16,
    },
    /// A key has the wrong length for the suite.
    #[error("{what} key is {got} bytes, suite needs {expected}")]
    KeyLength {
        /// Which key.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// The caller's output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The outbound payload is not an IPv4 or IPv6 packet.
    #[error("payload is not an IP packet (version nibble {version})")]
    NotIp {
        /// The version nibble (or 0 for an empty payload).
        version: u8,
    },
    /// All 2^32 sequence numbers are used; the SA must be rekeyed.
    #[error("outbound ESP sequence numbers exhausted; rekey needed")]
    SequenceExhausted,
    /// The datagram is too short for header, IV, one block and ICV.
    #[error("ESP datagram of {len} bytes is shorter than the minimum {min}")]
    TooShort {
        /// Datagram length.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The ciphertext is not a whole number of blocks (16 bytes for CBC, 4 for GCM).
    #[error("ESP ciphertext of {len} bytes is not aligned to the cipher's block size")]
    Misaligned {
        /// Ciphertext length.
        len: usize,
    },
    /// The datagram is for another SA.
    #[error("ESP SPI {got:#010x} does not match this SA ({expected:#010x})")]
    SpiMismatch {
        /// This SA's SPI.
        expected: u32,
        /// The datagram's SPI.
        got: u32,
    },
    /// The AEAD cipher refused to seal (input too long for it).
    #[error("ESP sealing failed")]
    SealFailed,
    /// This sequence number was already received.
    #[error("ESP sequence number {seq} is a replay")]
    Replayed {
        /// The sequence number.
        seq: u32,
    },
    /// This sequence number is behind the replay window.
    #[error("ESP sequence number {seq} is older than the window (highest {highest})")]
    TooOld {
        /// The sequence number.
        seq: u32,
        /// Highest sequence number received.
        highest: u32,
    },
    /// ICV mismatch: tampered, corrupted, or wrong key.
    #[error("ESP integrity check failed")]
    AuthenticationFailed,
    /// Padding length or bytes wrong after decryption.
    #[error("ESP padding is invalid")]
    BadPadding,
    /// Next header other than IPv4 / IPv6 (e.g. 5, Juniper's LZO-compressed IPv4).
    #[error("unsupported ESP next header {next_header}")]
    UnsupportedNextHeader {
        /// The value.
        next_header: u8,
    },
}

/// Encryption algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspCipher {
    /// AES-128-CBC (RFC 3602), wire code 2.
    Aes128Cbc,
    /// AES-256-CBC, wire code 5.
    Aes256Cbc,
    /// AES-256-GCM with a 16-byte tag (RFC 4106), wire code 20 (its IKEv2 transform id);
    /// only between tunnel's own client and gateway.
    Aes256Gcm,
}

impl EspCipher {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Cbc => 16,
            Self::Aes256Cbc => 32,
            // Key and 4-byte salt.
            Self::Aes256Gcm => 36,
        }
    }

    /// Code in config TLV 0x4010.
    pub fn code(self) -> u16 {
        match self {
            Self::Aes128Cbc => 2,
            Self::Aes256Cbc => 5,
            Self::Aes256Gcm => 20,
        }
    }

    /// From the config TLV 0x4010 code.
    pub fn from_code(code: u16) -> Result<Self, EspError> {
        match code {
            2 => Ok(Self::Aes128Cbc),
            5 => Ok(Self::Aes256Cbc),
            20 => Ok(Self::Aes256Gcm),
            code => Err(EspError::UnsupportedCipher { code }),
        }
    }
}

/// Integrity algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspMac {
    /// HMAC-SHA1-96 (RFC 2404), wire code 2.
    HmacSha1_96,
    /// HMAC-SHA256-128 (RFC 4868), wire code 3; offered only to IF-T version 2 clients.
    HmacSha256_128,
    /// None besides the AEAD cipher's own tag (16 bytes), wire code 0.
    Aead,
}

impl EspMac {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::HmacSha1_96 => 20,
            Self::HmacSha256_128 => 32,
            Self::Aead => 0,
        }
    }

    /// Truncated ICV length in bytes.
    pub fn icv_len(self) -> usize {
        match self {
            Self::HmacSha1_96 => 12,
            Self::HmacSha256_128 | Self::Aead => 16,
        }
    }

    /// Code in config TLV 0x4011.
    pub fn code(self) -> u16 {
        match self {
            Self::HmacSha1_96 => 2,
            Self::HmacSha256_128 => 3,
            Self::Aead => 0,
        }
    }

    /// From the config TLV 0x4011 code (1, MD5, is not supported).
    pub fn from_code(code: u16) -> Result<Self, EspError> {
        match code {
            0 => Ok(Self::Aead),
            2 => Ok(Self::HmacSha1_96),
            3 => Ok(Self::HmacSha256_128),
            code => Err(EspError::UnsupportedMac { code }),
        }
    }
}

/// Cipher plus integrity algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspSuite {
    /// Encryption.
    pub cipher: EspCipher,
    /// Integrity.
    pub mac: EspMac,
}

impl EspSuite {
    /// AES-256-GCM, tunnel's own suite.
    pub const AES256_GCM: EspSuite = EspSuite {
        cipher: EspCipher::Aes256Gcm,
        mac: EspMac::Aead,
    };

    /// A suite from the config's wire codes (TLV 0x4010 and 0x4011), refusing pairs that do
    /// not go together.
    pub fn from_codes(cipher: u16, mac: u16) -> Result<EspSuite, EspError> {
        let suite = EspSuite {
            cipher: EspCipher::from_code(cipher)?,
            mac: EspMac::from_code(mac)?,
        };
        if suite.is_aead() != (suite.mac == EspMac::Aead) {
            return Err(EspError::MismatchedSuite { cipher, mac });
        }
        Ok(suite)
    }

    /// Whether the cipher authenticates by itself (AES-GCM).
    pub fn is_aead(self) -> bool {
        self.cipher == EspCipher::Aes256Gcm
    }

    /// Every suite this implementation speaks.
    pub const ALL: [EspSuite; 5] = [
        EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha1_96,
        },
        EspSuite {
            cipher: EspCipher::Aes256Cbc,
            mac: EspMac::HmacSha1_96,
        },
        EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha256_128,
        },
        EspSuite {
            cipher: EspCipher::Aes256Cbc,
            mac: EspMac::HmacSha256_128,
        },
        EspSuite::AES256_GCM,
    ];

    /// A short name: `aes128-cbc-sha1`, `aes256-cbc-sha256`, ...
    pub fn name(self) -> &'static str {
        match (self.cipher, self.mac) {
            (EspCipher::Aes128Cbc, EspMac::HmacSha1_96) => "aes128-cbc-sha1",
            (EspCipher::Aes256Cbc, EspMac::HmacSha1_96) => "aes256-cbc-sha1",
            (EspCipher::Aes128Cbc, EspMac::HmacSha256_128) => "aes128-cbc-sha256",
            (EspCipher::Aes256Cbc, EspMac::HmacSha256_128) => "aes256-cbc-sha256",
            (EspCipher::Aes256Gcm, _) => "aes256-gcm",
            (_, EspMac::Aead) => "invalid",
        }
    }

    /// Bytes of key material: encryption key then HMAC key.
    pub fn key_material_len(self) -> usize {
        self.cipher.key_len() + self.mac.key_len()
    }

    /// Length of the datagram carrying `payload_len` bytes.
    pub fn encapsulated_len(self, payload_len: usize) -> usize {
        ESP_HEADER_LEN + self.iv_len() + self.padded_len(payload_len) + self.mac.icv_len()
    }

    fn iv_len(self) -> usize {
        if self.is_aead() { GCM_IV_LEN } else { IV_LEN }
    }

    /// Payload plus padding and the two trailer bytes, aligned as the cipher needs.
    fn padded_len(self, payload_len: usize) -> usize {
        (payload_len + 2).next_multiple_of(if self.is_aead() { 4 } else { BLOCK })
    }
}

/// IV bytes of AES-GCM (RFC 4106).
const GCM_IV_LEN: usize = 8;

/// AES-GCM bodies up to this many bytes are sealed and opened by the compact
/// implementation: pings, ACKs, keystrokes, DNS.
const COMPACT_GCM_MAX: usize = 256;

/// The cryptographic state of one SA.
#[derive(Clone)]
enum SaCrypto {
    Cbc {
        cipher: BlockCipher,
        mac: MacKey,
    },
    Gcm {
        /// AWS-LC's AES-GCM (VAES and wide carry-less multiplies): the fastest per byte,
        /// for the full-size packets of a transfer.
        key: Arc<LessSafeKey>,
        /// RustCrypto's AES-GCM (AES-NI and CLMUL a block at a time), the same bytes with a
        /// fraction of the code and key state: a small packet after an idle spell pays for
        /// bringing its crypto back into the caches, not for the bytes (after 10 ms asleep,
        /// sealing 84 bytes took 5.4-7.5 us with AWS-LC against 3.6-3.8 here), and small
        /// packets are the ones someone waits on.
        compact: Box<aes_gcm::Aes256Gcm>,
        salt: [u8; 4],
    },
}

impl Drop for SaCrypto {
    /// The key schedules wipe themselves (the `zeroize` features of aes, polyval); AWS-LC
    /// frees its own context; the salt is ours to wipe.
    fn drop(&mut self) {
        if let SaCrypto::Gcm { salt, .. } = self {
            zeroize::Zeroize::zeroize(salt);
        }
    }
}

impl SaCrypto {
    fn new(suite: EspSuite, enc_key: &[u8], mac_key: &[u8]) -> Result<Self, EspError> {
        check_material(suite, enc_key, mac_key)?;
        if suite.is_aead() {
            let (key, salt) = enc_key.split_at(32);
            let wrong_length = || EspError::KeyLength {
                what: "encryption",
                expected: 36,
                got: enc_key.len(),
            };
            let compact = aes_gcm::Aes256Gcm::new_from_slice(key).map_err(|_| wrong_length())?;
            let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| wrong_length())?;
            let mut s = [0u8; 4];
            s.copy_from_slice(salt);
            Ok(SaCrypto::Gcm {
                key: Arc::new(LessSafeKey::new(key)),
                compact: Box::new(compact),
                salt: s,
            })
        } else {
            Ok(SaCrypto::Cbc {
                cipher: BlockCipher::new(suite.cipher, enc_key)?,
                mac: MacKey::new(suite.mac, mac_key)?,
            })
        }
    }
}

fn gcm_nonce(salt: &[u8; 4], iv: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

/// Seals `body` in place with AES-GCM, the compact or the wide implementation by its length;
/// returns the tag.
fn gcm_seal(
    key: &LessSafeKey,
    compact: &aes_gcm::Aes256Gcm,
    nonce: [u8; 12],
    aad: &[u8],
    body: &mut [u8],
) -> Result<[u8; 16], EspError> {
    if body.len() <= COMPACT_GCM_MAX {
        let tag = compact
            .encrypt_in_place_detached(&nonce.into(), aad, body)
            .map_err(|_| EspError::SealFailed)?;
        return Ok(tag.into());
    }
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
        .map_err(|_| EspError::SealFailed)?;
    let mut t = [0u8; 16];
    t.copy_from_slice(tag.as_ref());
    Ok(t)
}

/// Opens `body_and_tag` in place (the tag is its last 16 bytes) with AES-GCM, the
/// implementation [`gcm_seal`] chose for its length.
fn gcm_open(
    key: &LessSafeKey,
    compact: &aes_gcm::Aes256Gcm,
    nonce: [u8; 12],
    aad: &[u8],
    body_and_tag: &mut [u8],
) -> Result<(), EspError> {
    let body_len = body_and_tag
        .len()
        .checked_sub(16)
        .ok_or(EspError::AuthenticationFailed)?;
    if body_len <= COMPACT_GCM_MAX {
        let (body, tag) = body_and_tag.split_at_mut(body_len);
        return compact
            .decrypt_in_place_detached(&nonce.into(), aad, body, (&*tag).into())
            .map_err(|_| EspError::AuthenticationFailed);
    }
    key.open_in_place(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        body_and_tag,
    )
    .map(|_| ())
    .map_err(|_| EspError::AuthenticationFailed)
}

/// AES-CBC of an SA (`tunnel-crypto`, AES-NI when the CPU has it).
#[derive(Clone)]
struct BlockCipher(AesCbc);

impl BlockCipher {
    fn new(cipher: EspCipher, key: &[u8]) -> Result<Self, EspError> {
        let err = EspError::KeyLength {
            what: "encryption",
            expected: cipher.key_len(),
            got: key.len(),
        };
        if cipher == EspCipher::Aes256Gcm || key.len() != cipher.key_len() {
            return Err(err);
        }
        AesCbc::new(key).map(BlockCipher).map_err(|_| err)
    }

    /// CBC-encrypts `buf` (a whole number of blocks) in place.
    fn encrypt(&self, iv: &[u8; IV_LEN], buf: &mut [u8]) -> Result<(), EspError> {
        let len = buf.len();
        self.0
            .encrypt(iv, buf)
            .map_err(|_| EspError::Misaligned { len })
    }

    /// CBC-encrypts every lane in place, side by side.
    fn encrypt_lanes(&self, lanes: &mut [CbcLane<'_>]) -> Result<(), EspError> {
        self.0.encrypt_lanes(lanes).map_err(|e| match e {
            tunnel_crypto::CryptoError::Misaligned { len } => EspError::Misaligned { len },
            _ => EspError::Misaligned { len: 0 },
        })
    }

    /// CBC-decrypts `buf` (a whole number of blocks) in place.
    fn decrypt(&self, iv: &[u8; IV_LEN], buf: &mut [u8]) -> Result<(), EspError> {
        let len = buf.len();
        self.0
            .decrypt(iv, buf)
            .map_err(|_| EspError::Misaligned { len })
    }
}

#[derive(Clone)]
enum MacKey {
    /// `tunnel-crypto`'s, which hashes sixteen packets at a time with AVX-512.
    Sha1(HmacSha1),
    Sha256(Sha256Key),
}

/// An HMAC-SHA256 key as RustCrypto holds it (the digest states of the padded key), wiped
/// when dropped: hmac and sha2 have no `zeroize` feature of their own.
#[derive(Clone)]
struct Sha256Key(Hmac<Sha256>);

impl Drop for Sha256Key {
    fn drop(&mut self) {
        // SAFETY: `Hmac<Sha256>` (hmac 0.12, digest 0.10, sha2 0.10) is plain data: two SHA-256
        // cores (a `[u32; 8]` state and a block count) and a block buffer (64 bytes and a
        // position), with no pointer and no `Drop` of its own, and all-zero is a valid value of
        // each field, which is what `zeroize_flat_type` asks of a type.
        unsafe { zeroize::zeroize_flat_type(&mut self.0) }
    }
}

impl MacKey {
    fn new(mac: EspMac, key: &[u8]) -> Result<Self, EspError> {
        if key.len() != mac.key_len() {
            return Err(EspError::KeyLength {
                what: "HMAC",
                expected: mac.key_len(),
                got: key.len(),
            });
        }
        // HMAC accepts any key length, so these cannot fail after the check above.
        let err = EspError::KeyLength {
            what: "HMAC",
            expected: mac.key_len(),
            got: key.len(),
        };
        Ok(match mac {
            EspMac::HmacSha1_96 => Self::Sha1(HmacSha1::new(key)),
            EspMac::HmacSha256_128 => Self::Sha256(Sha256Key(
                <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| err)?,
            )),
            EspMac::Aead => return Err(err),
        })
    }

    /// Full-length tag over `data` into `tag`, returning the full length.
    fn compute(&self, data: &[u8], tag: &mut [u8; 32]) -> usize {
        match self {
            Self::Sha1(k) => {
                tag[..20].copy_from_slice(&k.sign(data));
                20
            }
            Self::Sha256(Sha256Key(k)) => {
                let mut m = k.clone();
                m.update(data);
                let out = m.finalize().into_bytes();
                tag.copy_from_slice(&out);
                32
            }
        }
    }

    /// Full-length tags over each of `parts` into `tags` (at least as many).
    fn compute_many(&self, parts: &[&[u8]], tags: &mut [[u8; 32]]) {
        match self {
            Self::Sha1(k) => {
                let mut short = [[0u8; tunnel_crypto::TAG_LEN]; TRAIN_LANES];
                for (p, t) in parts.chunks(TRAIN_LANES).zip(tags.chunks_mut(TRAIN_LANES)) {
                    k.sign_many(p, &mut short);
                    for (t, s) in t.iter_mut().zip(&short).take(p.len()) {
                        t[..20].copy_from_slice(s);
                    }
                }
            }
            Self::Sha256(_) => {
                for (p, t) in parts.iter().zip(tags.iter_mut()) {
                    self.compute(p, t);
                }
            }
        }
    }
}

fn check_material(suite: EspSuite, enc_key: &[u8], mac_key: &[u8]) -> Result<(), EspError> {
    if enc_key.len() != suite.cipher.key_len() {
        return Err(EspError::KeyLength {
            what: "encryption",
            expected: suite.cipher.key_len(),
            got: enc_key.len(),
        });
    }
    if mac_key.len() != suite.mac.key_len() {
        return Err(EspError::KeyLength {
            what: "HMAC",
            expected: suite.mac.key_len(),
            got: mac_key.len(),
        });
    }
    Ok(())
}

/// Splits a Pulse secrets area (encryption key immediately followed by HMAC key, any padding
/// after) into the two keys.
pub(crate) fn split_secrets(suite: EspSuite, secrets: &[u8]) -> Result<(&[u8], &[u8]), EspError> {
    let need = suite.key_material_len();
    if secrets.len() < need {
        return Err(EspError::KeyLength {
            what: "secrets",
            expected: need,
            got: secrets.len(),
        });
    }
    let (enc, rest) = secrets.split_at(suite.cipher.key_len());
    Ok((enc, &rest[..suite.mac.key_len()]))
}

/// The sending half of an ESP association.
#[derive(Clone)]
pub struct OutboundSa {
    spi: u32,
    suite: EspSuite,
    // u64 so that "all 2^32 used" is representable without wrapping.
    next_seq: u64,
    crypto: SaCrypto,
}

impl std::fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("suite", &self.suite)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl OutboundSa {
    /// An SA sending with `spi` (the peer's choice) and the given keys.
    pub fn new(
        suite: EspSuite,
        spi: u32,
        enc_key: &[u8],
        mac_key: &[u8],
    ) -> Result<Self, EspError> {
        check_material(suite, enc_key, mac_key)?;
        Ok(Self {
            spi,
            suite,
            // openconnect starts both directions at 0 (esp.c `openconnect_setup_esp_keys`),
            // and Pulse gateways accept it; RFC 4303 would start at 1.
            next_seq: 0,
            crypto: SaCrypto::new(suite, enc_key, mac_key)?,
        })
    }

    /// SPI written into every packet.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The suite.
    pub fn suite(&self) -> EspSuite {
        self.suite
    }

    /// Sequence number the next packet will carry, if any is left.
    pub fn next_seq(&self) -> Option<u32> {
        u32::try_from(self.next_seq).ok()
    }

    /// Test hook: pretend `seq` packets were sent.
    #[cfg(test)]
    pub(crate) fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// Encrypts one IP packet into `out`; the next header (4 or 41) comes from the IP version.
    /// Returns the datagram length. Does not allocate.
    pub fn encapsulate(
        &mut self,
        ip_packet: &[u8],
        out: &mut [u8],
        rng: &mut dyn RandomSource,
    ) -> Result<usize, EspError> {
        self.write(ip_packet, next_header_of(ip_packet)?, out, rng, true)
    }

    /// Stages one IP packet into `out` as the next datagram of a train: header, sequence
    /// number, IV, payload, padding and trailer are written, the room for the ICV is left;
    /// [`Self::seal_train`] encrypts and authenticates the train in place afterwards (with
    /// AES-GCM the datagram is sealed here already). Returns the datagram length.
    pub fn stage(
        &mut self,
        ip_packet: &[u8],
        out: &mut [u8],
        rng: &mut dyn RandomSource,
    ) -> Result<usize, EspError> {
        self.write(ip_packet, next_header_of(ip_packet)?, out, rng, false)
    }

    /// Encrypts a probe (payload `0x00`) with the given next header (openconnect uses 4 on an
    /// IPv4 UDP socket and 41 on an IPv6 one).
    pub fn encapsulate_probe(
        &mut self,
        next_header: u8,
        out: &mut [u8],
        rng: &mut dyn RandomSource,
    ) -> Result<usize, EspError> {
        self.write(&[0], next_header, out, rng, true)
    }

    /// Writes one datagram; with `seal` false a CBC datagram is left for
    /// [`Self::seal_train`].
    fn write(
        &mut self,
        payload: &[u8],
        next_header: u8,
        out: &mut [u8],
        rng: &mut dyn RandomSource,
        seal: bool,
    ) -> Result<usize, EspError> {
        let need = self.suite.encapsulated_len(payload.len());
        if out.len() < need {
            return Err(EspError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        let seq = u32::try_from(self.next_seq).map_err(|_| EspError::SequenceExhausted)?;
        let body = self.suite.padded_len(payload.len());
        let ct_start = ESP_HEADER_LEN + self.suite.iv_len();
        let ct_end = ct_start + body;

        out[0..4].copy_from_slice(&self.spi.to_be_bytes());
        out[4..8].copy_from_slice(&seq.to_be_bytes());
        let pt_end = ct_start + payload.len();
        out[ct_start..pt_end].copy_from_slice(payload);
        let pad_len = body - payload.len() - 2;
        // RFC 4303 default padding 1, 2, 3 ...; openconnect checks it on receipt.
        for (i, b) in out[pt_end..pt_end + pad_len].iter_mut().enumerate() {
            *b = (i + 1) as u8;
        }
        out[ct_end - 2] = pad_len as u8;
        out[ct_end - 1] = next_header;
        match &self.crypto {
            SaCrypto::Cbc { cipher, mac } => {
                let mut iv = [0u8; IV_LEN];
                rng.fill(&mut iv);
                out[ESP_HEADER_LEN..ct_start].copy_from_slice(&iv);
                if seal {
                    cipher.encrypt(&iv, &mut out[ct_start..ct_end])?;
                    let mut tag = [0u8; 32];
                    mac.compute(&out[..ct_end], &mut tag);
                    let icv = self.suite.mac.icv_len();
                    out[ct_end..ct_end + icv].copy_from_slice(&tag[..icv]);
                }
            }
            SaCrypto::Gcm { key, compact, salt } => {
                // The sequence number never repeats under one key, so neither does the IV.
                let iv = u64::from(seq).to_be_bytes();
                out[ESP_HEADER_LEN..ct_start].copy_from_slice(&iv);
                let (head, rest) = out.split_at_mut(ct_start);
                let tag = gcm_seal(
                    key,
                    compact,
                    gcm_nonce(salt, &iv),
                    &head[..ESP_HEADER_LEN],
                    &mut rest[..body],
                )?;
                rest[body..body + 16].copy_from_slice(&tag);
            }
        }
        self.next_seq += 1;
        Ok(need)
    }

    /// Seals, in place, a train of datagrams [`Self::stage`]d by this SA: `train` holds
    /// them back to back, `size` bytes each but the last, which may be shorter. The CBC
    /// suites encrypt and authenticate up to [`TRAIN_LANES`] datagrams side by side; AES-GCM
    /// datagrams were sealed when staged. Call it once per train. Checks every datagram
    /// first (its SPI, a length a staged datagram can have) and changes nothing when one
    /// fails.
    pub fn seal_train(&self, train: &mut [u8], size: usize) -> Result<(), EspError> {
        let SaCrypto::Cbc { cipher, mac } = &self.crypto else {
            return Ok(());
        };
        if train.is_empty() {
            return Ok(());
        }
        let icv = self.suite.mac.icv_len();
        let ct_start = ESP_HEADER_LEN + IV_LEN;
        let min = ct_start + BLOCK + icv;
        if size < min {
            return Err(EspError::TooShort { len: size, min });
        }
        for d in train.chunks(size) {
            if d.len() < min {
                return Err(EspError::TooShort { len: d.len(), min });
            }
            if !(d.len() - icv - ct_start).is_multiple_of(BLOCK) {
                return Err(EspError::Misaligned {
                    len: d.len() - icv - ct_start,
                });
            }
            let spi = peek_spi(d).unwrap_or(0);
            if spi != self.spi {
                return Err(EspError::SpiMismatch {
                    expected: self.spi,
                    got: spi,
                });
            }
        }
        for group in train.chunks_mut(size * TRAIN_LANES) {
            let mut lanes: [CbcLane<'_>; TRAIN_LANES] = std::array::from_fn(|_| CbcLane {
                iv: [0; IV_LEN],
                data: &mut [],
            });
            let mut n = 0;
            for (lane, d) in lanes.iter_mut().zip(group.chunks_mut(size)) {
                let end = d.len() - icv;
                let (head, rest) = d.split_at_mut(ct_start);
                lane.iv.copy_from_slice(&head[ESP_HEADER_LEN..]);
                lane.data = &mut rest[..end - ct_start];
                n += 1;
            }
            cipher.encrypt_lanes(&mut lanes[..n])?;
            let mut tags = [[0u8; 32]; TRAIN_LANES];
            let mut parts: [&[u8]; TRAIN_LANES] = [&[]; TRAIN_LANES];
            for (p, d) in parts.iter_mut().zip(group.chunks(size)) {
                *p = &d[..d.len() - icv];
            }
            mac.compute_many(&parts[..n], &mut tags);
            for (d, t) in group.chunks_mut(size).zip(&tags) {
                let end = d.len() - icv;
                d[end..].copy_from_slice(&t[..icv]);
            }
        }
        Ok(())
    }
}

/// ESP's next header for an IP packet, from its version nibble.
fn next_header_of(ip_packet: &[u8]) -> Result<u8, EspError> {
    match ip_packet.first().map(|b| b >> 4) {
        Some(4) => Ok(NEXT_HEADER_IPV4),
        Some(6) => Ok(NEXT_HEADER_IPV6),
        other => Err(EspError::NotIp {
            version: other.unwrap_or(0),
        }),
    }
}

/// Anti-replay window over the last [`REPLAY_WINDOW`] sequence numbers (RFC 4303 §3.4.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u32,
    // Bit i set: sequence number `highest - i` was received.
    bitmap: u64,
    started: bool,
}

impl ReplayWindow {
    /// An empty window: any first sequence number is accepted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest sequence number accepted so far.
    pub fn highest(&self) -> Option<u32> {
        self.started.then_some(self.highest)
    }

    /// Would `seq` be accepted? Does not record it.
    pub fn check(&self, seq: u32) -> Result<(), EspError> {
        if !self.started || seq > self.highest {
            return Ok(());
        }
        let age = self.highest - seq;
        if age >= REPLAY_WINDOW {
            return Err(EspError::TooOld {
                seq,
                highest: self.highest,
            });
        }
        if self.bitmap & (1u64 << age) != 0 {
            return Err(EspError::Replayed { seq });
        }
        Ok(())
    }

    /// Records `seq` as received; call only after [`Self::check`] and integrity passed.
    pub fn accept(&mut self, seq: u32) {
        if !self.started {
            self.started = true;
            self.highest = seq;
            self.bitmap = 1;
        } else if seq > self.highest {
            let shift = seq - self.highest;
            self.bitmap = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bitmap << shift
            } | 1;
            self.highest = seq;
        } else {
            let age = self.highest - seq;
            if age < REPLAY_WINDOW {
                self.bitmap |= 1u64 << age;
            }
        }
    }
}

/// A decrypted datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspPayload<'a> {
    /// Sequence number.
    pub seq: u32,
    /// No datagram of this SA with a sequence number this high or higher was accepted
    /// before: the datagram is not a delayed or replayed copy of an older one, so it may
    /// move where the peer is sent to (a roaming client), an older one may not.
    pub newest: bool,
    /// Next header (4 IPv4, 41 IPv6; any for a probe).
    pub next_header: u8,
    /// The IP packet, or `[0]` for a probe.
    pub payload: &'a [u8],
}

impl EspPayload<'_> {
    /// A probe: the single byte `0x00`.
    pub fn is_probe(&self) -> bool {
        self.payload == [0]
    }
}

/// SPI of a datagram, so a gateway can find the SA; `None` when shorter than a header.
pub fn peek_spi(datagram: &[u8]) -> Option<u32> {
    crate::wire::be32(datagram, 0)
}

/// The receiving half of an ESP association.
#[derive(Clone)]
pub struct InboundSa {
    spi: u32,
    suite: EspSuite,
    window: ReplayWindow,
    replay_protection: bool,
    crypto: SaCrypto,
}

impl std::fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("suite", &self.suite)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl InboundSa {
    /// An SA accepting packets with `spi` (our choice) and the given keys.
    pub fn new(
        suite: EspSuite,
        spi: u32,
        enc_key: &[u8],
        mac_key: &[u8],
    ) -> Result<Self, EspError> {
        check_material(suite, enc_key, mac_key)?;
        Ok(Self {
            spi,
            suite,
            window: ReplayWindow::new(),
            replay_protection: true,
            crypto: SaCrypto::new(suite, enc_key, mac_key)?,
        })
    }

    /// Turns replay protection off (config TLV 0x4014 = 0); duplicates are then accepted.
    pub fn set_replay_protection(&mut self, on: bool) {
        self.replay_protection = on;
    }

    /// The SPI this SA accepts.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The suite.
    pub fn suite(&self) -> EspSuite {
        self.suite
    }

    /// The replay window.
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Authenticates, replay-checks and decrypts `datagram` in place. The window only moves
    /// for packets whose ICV verified.
    pub fn decapsulate<'a>(&mut self, datagram: &'a mut [u8]) -> Result<EspPayload<'a>, EspError> {
        let checked = self.check_header(datagram)?;
        self.open_checked(datagram, checked, None)
    }

    /// Opens a train in place: datagrams of `size` bytes back to back, the last possibly
    /// shorter (one GRO receive). `f` gets each datagram's result in order, as
    /// [`Self::decapsulate`] would give it; with the CBC suites up to [`TRAIN_LANES`] ICVs
    /// are computed side by side first. A datagram repeated inside the train is a replay.
    pub fn decapsulate_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        mut f: impl FnMut(Result<EspPayload<'_>, EspError>),
    ) {
        if size == 0 {
            if !train.is_empty() {
                f(Err(EspError::TooShort { len: 0, min: 1 }));
            }
            return;
        }
        for group in train.chunks_mut(size * TRAIN_LANES) {
            let mut checked: [Option<Result<Checked, EspError>>; TRAIN_LANES] =
                std::array::from_fn(|_| None);
            for (c, d) in checked.iter_mut().zip(group.chunks(size)) {
                *c = Some(self.check_header(d));
            }
            let mut tags = [[0u8; 32]; TRAIN_LANES];
            let cbc = matches!(self.crypto, SaCrypto::Cbc { .. });
            if let SaCrypto::Cbc { mac, .. } = &self.crypto {
                let mut parts: [&[u8]; TRAIN_LANES] = [&[]; TRAIN_LANES];
                let mut lane_of = [0usize; TRAIN_LANES];
                let mut k = 0;
                for (i, d) in group.chunks(size).enumerate() {
                    if let Some(Ok(c)) = &checked[i] {
                        parts[k] = &d[..c.ct_end];
                        lane_of[k] = i;
                        k += 1;
                    }
                }
                let mut computed = [[0u8; 32]; TRAIN_LANES];
                mac.compute_many(&parts[..k], &mut computed);
                for (&i, t) in lane_of[..k].iter().zip(&computed) {
                    tags[i] = *t;
                }
            }
            for (i, d) in group.chunks_mut(size).enumerate() {
                let r = match checked[i].take() {
                    Some(Ok(c)) => self.open_checked(d, c, cbc.then_some(&tags[i])),
                    Some(Err(e)) => Err(e),
                    None => continue,
                };
                f(r);
            }
        }
    }

    /// What can be checked before any crypto: lengths, SPI, replay window.
    fn check_header(&self, datagram: &[u8]) -> Result<Checked, EspError> {
        let icv = self.suite.mac.icv_len();
        let align = if self.suite.is_aead() { 4 } else { BLOCK };
        let ct_start = ESP_HEADER_LEN + self.suite.iv_len();
        let min = ct_start + align + icv;
        if datagram.len() < min {
            return Err(EspError::TooShort {
                len: datagram.len(),
                min,
            });
        }
        let ct_end = datagram.len() - icv;
        if !(ct_end - ct_start).is_multiple_of(align) {
            return Err(EspError::Misaligned {
                len: ct_end - ct_start,
            });
        }
        let spi = peek_spi(datagram).unwrap_or(0);
        if spi != self.spi {
            return Err(EspError::SpiMismatch {
                expected: self.spi,
                got: spi,
            });
        }
        let seq = crate::wire::be32(datagram, 4).unwrap_or(0);
        if self.replay_protection {
            self.window.check(seq)?;
        }
        Ok(Checked {
            seq,
            ct_start,
            ct_end,
        })
    }

    /// Authenticates (against `tag` when the CBC ICV was computed already), moves the
    /// window, decrypts and strips the trailer.
    fn open_checked<'a>(
        &mut self,
        datagram: &'a mut [u8],
        c: Checked,
        tag: Option<&[u8; 32]>,
    ) -> Result<EspPayload<'a>, EspError> {
        let Checked {
            seq,
            ct_start,
            ct_end,
        } = c;
        // Again, before anything else: an earlier datagram of the same train may have taken
        // this number since the header was checked, and a replay is reported as such.
        if self.replay_protection {
            self.window.check(seq)?;
        }
        let newest = self.window.highest().is_none_or(|h| seq > h);
        match &self.crypto {
            SaCrypto::Cbc { cipher, mac } => {
                let mut own = [0u8; 32];
                let tag = match tag {
                    Some(t) => t,
                    None => {
                        mac.compute(&datagram[..ct_end], &mut own);
                        &own
                    }
                };
                let icv = self.suite.mac.icv_len();
                if !bool::from(tag[..icv].ct_eq(&datagram[ct_end..])) {
                    return Err(EspError::AuthenticationFailed);
                }
                self.window.accept(seq);
                let mut iv = [0u8; IV_LEN];
                iv.copy_from_slice(&datagram[ESP_HEADER_LEN..ct_start]);
                cipher.decrypt(&iv, &mut datagram[ct_start..ct_end])?;
            }
            SaCrypto::Gcm { key, compact, salt } => {
                let (head, rest) = datagram.split_at_mut(ct_start);
                gcm_open(
                    key,
                    compact,
                    gcm_nonce(salt, &head[ESP_HEADER_LEN..]),
                    &head[..ESP_HEADER_LEN],
                    rest,
                )?;
                self.window.accept(seq);
            }
        }
        let body = &datagram[ct_start..ct_end];
        let next_header = body[body.len() - 1];
        let pad_len = usize::from(body[body.len() - 2]);
        if pad_len + 2 > body.len() {
            return Err(EspError::BadPadding);
        }
        let payload_len = body.len() - 2 - pad_len;
        let padding = &body[payload_len..payload_len + pad_len];
        if padding
            .iter()
            .enumerate()
            .any(|(i, &b)| usize::from(b) != i + 1)
        {
            return Err(EspError::BadPadding);
        }
        let payload = &body[..payload_len];
        let is_probe = payload == [0];
        if !is_probe && next_header != NEXT_HEADER_IPV4 && next_header != NEXT_HEADER_IPV6 {
            return Err(EspError::UnsupportedNextHeader { next_header });
        }
        Ok(EspPayload {
            seq,
            newest,
            next_header,
            payload,
        })
    }
}

/// A datagram's header checks passed: its sequence number and where its ciphertext is.
#[derive(Clone, Copy, Debug)]
struct Checked {
    seq: u32,
    ct_start: usize,
    ct_end: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::testing::TestRandom;
    // The tests build expected datagrams with the RustCrypto crates directly, independent
    // of `tunnel-crypto`.
    use aes::cipher::block_padding::NoPadding;
    use aes::cipher::{BlockEncryptMut, KeyIvInit};
    use sha1::Sha1;

    /// The bytes `value` leaves behind once dropped in place (the memory stays held).
    fn bytes_after_drop<T>(value: T) -> Vec<u8> {
        let mut held = std::mem::ManuallyDrop::new(value);
        // SAFETY: dropped exactly once; afterwards the memory is only read as bytes, never
        // used as a `T` again, and `ManuallyDrop` keeps it allocated.
        unsafe {
            std::mem::ManuallyDrop::drop(&mut held);
            let p: *const T = &*held;
            std::slice::from_raw_parts(p.cast::<u8>(), std::mem::size_of::<T>()).to_vec()
        }
    }

    #[test]
    fn key_material_is_wiped_when_dropped() {
        let key = [0xa5u8; 32];
        let hmac = Sha256Key(<Hmac<Sha256> as Mac>::new_from_slice(&key).expect("key"));
        assert!(bytes_after_drop(hmac).iter().all(|&b| b == 0));
        let keys = crate::config::EspKeys {
            spi: 0,
            secrets: [0xa5; crate::config::ESP_SECRETS_LEN],
        };
        assert!(bytes_after_drop(keys).iter().all(|&b| b == 0));
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// An IV source that returns a fixed IV, for known-answer tests.
    struct FixedIv([u8; 16]);
    impl RandomSource for FixedIv {
        fn fill(&mut self, buf: &mut [u8]) {
            buf.copy_from_slice(&self.0[..buf.len()]);
        }
    }

    const SUITES: [EspSuite; 5] = [
        EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha1_96,
        },
        EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha256_128,
        },
        EspSuite {
            cipher: EspCipher::Aes256Cbc,
            mac: EspMac::HmacSha1_96,
        },
        EspSuite {
            cipher: EspCipher::Aes256Cbc,
            mac: EspMac::HmacSha256_128,
        },
        EspSuite::AES256_GCM,
    ];

    fn pair(suite: EspSuite) -> (OutboundSa, InboundSa) {
        let enc: Vec<u8> = (0..suite.cipher.key_len() as u8).collect();
        let mac: Vec<u8> = (100..100 + suite.mac.key_len() as u8).collect();
        (
            OutboundSa::new(suite, 0x1234_5678, &enc, &mac).expect("out"),
            InboundSa::new(suite, 0x1234_5678, &enc, &mac).expect("in"),
        )
    }

    fn ipv4(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        for (i, b) in p.iter_mut().enumerate().skip(1) {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn rfc3602_aes128_cbc_vectors() {
        // Case #1: one block.
        let c = BlockCipher::new(
            EspCipher::Aes128Cbc,
            &hex("06a9214036b8a15b512e03d534120006"),
        )
        .expect("key");
        let iv: [u8; 16] = hex("3dafba429d9eb430b422da802c9fac41")
            .try_into()
            .expect("iv");
        let mut buf = b"Single block msg".to_vec();
        c.encrypt(&iv, &mut buf).expect("enc");
        assert_eq!(buf, hex("e353779c1079aeb82708942dbe77181a"));
        c.decrypt(&iv, &mut buf).expect("dec");
        assert_eq!(buf, b"Single block msg");
        // Case #2: two blocks.
        let c = BlockCipher::new(
            EspCipher::Aes128Cbc,
            &hex("c286696d887c9aa0611bbb3e2025a45a"),
        )
        .expect("key");
        let iv: [u8; 16] = hex("562e17996d093d28ddb3ba695a2e6f58")
            .try_into()
            .expect("iv");
        let mut buf: Vec<u8> = (0u8..32).collect();
        c.encrypt(&iv, &mut buf).expect("enc");
        assert_eq!(
            buf,
            hex("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1")
        );
    }

    #[test]
    fn rfc2202_and_rfc4231_hmac_vectors() {
        let mut tag = [0u8; 32];
        let k = MacKey::new(EspMac::HmacSha1_96, &[0x0b; 20]).expect("key");
        assert_eq!(k.compute(b"Hi There", &mut tag), 20);
        assert_eq!(tag[..20], hex("b617318655057264e28bc0b6fb378c8ef146be00"));
        // RFC 4868 §2.7.2.1, AUTH256-1: 32-byte key 0x0b.., "Hi There".
        let k = MacKey::new(EspMac::HmacSha256_128, &[0x0b; 32]).expect("key");
        assert_eq!(k.compute(b"Hi There", &mut tag), 32);
        assert_eq!(tag[..16], hex("198a607eb44bfbc69903a0f1cf2bbdc5"));
        // RFC 4231 case 1 and RFC 2202 case 2, through the hmac crate the ICV path uses.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&[0x0b; 20]).expect("key");
        m.update(b"Hi There");
        assert_eq!(
            m.finalize().into_bytes()[..],
            hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        let mut m = <Hmac<Sha1> as Mac>::new_from_slice(b"Jefe").expect("key");
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            m.finalize().into_bytes()[..],
            hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
    }

    /// Builds the expected datagram with the `cbc` and `hmac` crates directly.
    fn reference_packet(
        (suite, enc, mac): (EspSuite, &[u8], &[u8]),
        (spi, seq, iv): (u32, u32, [u8; 16]),
        payload: &[u8],
        next_header: u8,
    ) -> Vec<u8> {
        if suite.is_aead() {
            return reference_gcm_packet(enc, (spi, seq), payload, next_header);
        }
        let mut plain = payload.to_vec();
        let mut pad = 1u8;
        while !(plain.len() + 2).is_multiple_of(16) {
            plain.push(pad);
            pad += 1;
        }
        plain.push(pad - 1);
        plain.push(next_header);
        let n = plain.len();
        let ct = match suite.cipher {
            EspCipher::Aes128Cbc => {
                let mut buf = plain.clone();
                cbc::Encryptor::<aes::Aes128>::new_from_slices(enc, &iv)
                    .expect("key")
                    .encrypt_padded_mut::<NoPadding>(&mut buf, n)
                    .expect("aligned");
                buf
            }
            EspCipher::Aes256Cbc => {
                let mut buf = plain.clone();
                cbc::Encryptor::<aes::Aes256>::new_from_slices(enc, &iv)
                    .expect("key")
                    .encrypt_padded_mut::<NoPadding>(&mut buf, n)
                    .expect("aligned");
                buf
            }
            EspCipher::Aes256Gcm => unreachable!("handled above"),
        };
        let mut pkt = spi.to_be_bytes().to_vec();
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&iv);
        pkt.extend_from_slice(&ct);
        let tag = match suite.mac {
            EspMac::HmacSha1_96 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(mac).expect("k");
                m.update(&pkt);
                m.finalize().into_bytes()[..12].to_vec()
            }
            EspMac::HmacSha256_128 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(mac).expect("k");
                m.update(&pkt);
                m.finalize().into_bytes()[..16].to_vec()
            }
            EspMac::Aead => unreachable!("handled above"),
        };
        pkt.extend_from_slice(&tag);
        pkt
    }

    /// RFC 4106 built with the RustCrypto `aes-gcm` crate, an implementation independent of
    /// the AWS-LC one the SA uses for full-size packets (its small packets use the same
    /// crate; `both_aes_gcm_implementations_give_the_same_bytes` checks those against
    /// AWS-LC).
    fn reference_gcm_packet(
        key: &[u8],
        (spi, seq): (u32, u32),
        payload: &[u8],
        next_header: u8,
    ) -> Vec<u8> {
        use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
        let mut plain = payload.to_vec();
        let mut pad = 1u8;
        while !(plain.len() + 2).is_multiple_of(4) {
            plain.push(pad);
            pad += 1;
        }
        plain.push(pad - 1);
        plain.push(next_header);
        let mut head = spi.to_be_bytes().to_vec();
        head.extend_from_slice(&seq.to_be_bytes());
        let iv = u64::from(seq).to_be_bytes();
        let mut nonce = key[32..36].to_vec();
        nonce.extend_from_slice(&iv);
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key[..32]).expect("key");
        let sealed = cipher
            .encrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &head,
                },
            )
            .expect("seal");
        let mut pkt = head;
        pkt.extend_from_slice(&iv);
        pkt.extend_from_slice(&sealed);
        pkt
    }

    /// The compact and the wide AES-GCM seal to the same bytes and open each other's
    /// datagrams, at every body length around the switch between them, and both refuse a
    /// damaged tag.
    #[test]
    fn both_aes_gcm_implementations_give_the_same_bytes() {
        let key: Vec<u8> = (0..36u8).map(|b| b.wrapping_mul(37) ^ 0x5c).collect();
        let wide = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key[..32]).expect("key"));
        let compact = aes_gcm::Aes256Gcm::new_from_slice(&key[..32]).expect("key");
        let aad = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7];
        for len in (0..=COMPACT_GCM_MAX + 64).step_by(4) {
            let nonce = gcm_nonce(&[1, 2, 3, 4], &(len as u64).to_be_bytes());
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut a = plain.clone();
            let tag_a = compact
                .encrypt_in_place_detached(&nonce.into(), &aad, &mut a)
                .expect("compact seal");
            let mut b = plain.clone();
            let tag_b = wide
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad),
                    &mut b,
                )
                .expect("wide seal");
            assert_eq!(a, b, "ciphertext of {len} bytes");
            assert_eq!(&tag_a[..], tag_b.as_ref(), "tag of {len} bytes");
            // What gcm_seal makes, gcm_open takes, whichever side of the switch.
            let mut sealed = plain.clone();
            let tag = gcm_seal(&wide, &compact, nonce, &aad, &mut sealed).expect("seal");
            assert_eq!(sealed, a);
            sealed.extend_from_slice(&tag);
            let mut damaged = sealed.clone();
            gcm_open(&wide, &compact, nonce, &aad, &mut sealed).expect("open");
            assert_eq!(&sealed[..len], &plain[..]);
            let last = damaged.len() - 1;
            damaged[last] ^= 1;
            assert_eq!(
                gcm_open(&wide, &compact, nonce, &aad, &mut damaged),
                Err(EspError::AuthenticationFailed)
            );
        }
    }

    #[test]
    fn encapsulate_matches_independent_construction() {
        for suite in SUITES {
            let enc: Vec<u8> = (0..suite.cipher.key_len() as u8)
                .map(|b| b ^ 0x5a)
                .collect();
            let mac: Vec<u8> = (0..suite.mac.key_len() as u8).map(|b| b ^ 0xa5).collect();
            let iv = [0x42u8; 16];
            let mut sa = OutboundSa::new(suite, 0xdead_beef, &enc, &mac).expect("sa");
            for (seq, len) in [(0u32, 20usize), (1, 14), (2, 1), (3, 1500)] {
                let packet = if len == 1 { vec![0] } else { ipv4(len) };
                let mut out = vec![0u8; 2000];
                let n = if len == 1 {
                    sa.encapsulate_probe(4, &mut out, &mut FixedIv(iv))
                        .expect("probe")
                } else {
                    sa.encapsulate(&packet, &mut out, &mut FixedIv(iv))
                        .expect("enc")
                };
                let expected =
                    reference_packet((suite, &enc, &mac), (0xdead_beef, seq, iv), &packet, 4);
                assert_eq!(&out[..n], &expected[..], "{suite:?} seq {seq}");
            }
        }
    }

    #[test]
    fn round_trip_every_suite_and_length() {
        let mut rng = TestRandom(99);
        for suite in SUITES {
            let (mut tx, mut rx) = pair(suite);
            for len in [20usize, 21, 30, 31, 32, 33, 100, 1400] {
                let mut pkt = ipv4(len);
                if len == 100 {
                    pkt[0] = 0x60; // IPv6
                }
                let mut out = vec![0u8; len + MAX_OVERHEAD];
                let n = tx.encapsulate(&pkt, &mut out, &mut rng).expect("enc");
                assert_eq!(n, suite.encapsulated_len(len));
                let got = rx.decapsulate(&mut out[..n]).expect("dec");
                assert_eq!(got.payload, &pkt[..]);
                assert_eq!(
                    got.next_header,
                    if len == 100 {
                        NEXT_HEADER_IPV6
                    } else {
                        NEXT_HEADER_IPV4
                    }
                );
                assert!(!got.is_probe());
            }
            let mut out = [0u8; 64];
            let n = tx.encapsulate_probe(41, &mut out, &mut rng).expect("probe");
            let got = rx.decapsulate(&mut out[..n]).expect("dec");
            assert!(got.is_probe());
            assert_eq!(got.next_header, 41);
        }
    }

    #[test]
    fn tampering_anywhere_fails_the_mac() {
        let mut rng = TestRandom(3);
        for suite in SUITES {
            let (mut tx, _) = pair(suite);
            let mut out = vec![0u8; 200];
            let n = tx.encapsulate(&ipv4(60), &mut out, &mut rng).expect("enc");
            for i in 4..n {
                let (_, mut rx) = pair(suite);
                let mut copy = out[..n].to_vec();
                copy[i] ^= 0x01;
                assert_eq!(
                    rx.decapsulate(&mut copy),
                    Err(EspError::AuthenticationFailed),
                    "{suite:?} byte {i}"
                );
                assert_eq!(rx.window().highest(), None, "window must not move");
            }
        }
    }

    #[test]
    fn wrong_key_spi_and_sizes_are_rejected() {
        let suite = SUITES[0];
        let mut rng = TestRandom(5);
        let (mut tx, _) = pair(suite);
        let mut out = vec![0u8; 200];
        let n = tx.encapsulate(&ipv4(60), &mut out, &mut rng).expect("enc");
        let mut other = InboundSa::new(suite, 0x1234_5678, &[9; 16], &[9; 20]).expect("sa");
        assert_eq!(
            other.decapsulate(&mut out[..n].to_vec()),
            Err(EspError::AuthenticationFailed)
        );
        let mut other = InboundSa::new(suite, 7, &[9; 16], &[9; 20]).expect("sa");
        assert_eq!(
            other.decapsulate(&mut out[..n].to_vec()),
            Err(EspError::SpiMismatch {
                expected: 7,
                got: 0x1234_5678
            })
        );
        let (_, mut rx) = pair(suite);
        assert!(matches!(
            rx.decapsulate(&mut out[..20].to_vec()),
            Err(EspError::TooShort { .. })
        ));
        assert!(matches!(
            rx.decapsulate(&mut out[..n - 1].to_vec()),
            Err(EspError::Misaligned { .. })
        ));
        assert_eq!(
            tx.encapsulate(&ipv4(60), &mut [0u8; 10], &mut rng),
            Err(EspError::BufferTooSmall {
                need: 100,
                have: 10
            })
        );
        assert_eq!(
            tx.encapsulate(&[0x10, 0], &mut out, &mut rng),
            Err(EspError::NotIp { version: 1 })
        );
        assert_eq!(
            tx.encapsulate(&[], &mut out, &mut rng),
            Err(EspError::NotIp { version: 0 })
        );
        assert!(matches!(
            OutboundSa::new(suite, 1, &[0; 15], &[0; 20]),
            Err(EspError::KeyLength {
                what: "encryption",
                ..
            })
        ));
        assert!(matches!(
            InboundSa::new(suite, 1, &[0; 16], &[0; 32]),
            Err(EspError::KeyLength { what: "HMAC", .. })
        ));
    }

    /// A correctly authenticated packet whose plaintext trailer is bad must still be refused.
    #[test]
    fn bad_padding_and_next_header_after_valid_mac() {
        let suite = SUITES[0];
        let enc = [1u8; 16];
        let mac = [2u8; 20];
        let iv = [3u8; 16];
        let build = |plain: &[u8]| {
            let mut ct = plain.to_vec();
            cbc::Encryptor::<aes::Aes128>::new_from_slices(&enc, &iv)
                .expect("k")
                .encrypt_padded_mut::<NoPadding>(&mut ct, plain.len())
                .expect("aligned");
            let mut pkt = 9u32.to_be_bytes().to_vec();
            pkt.extend_from_slice(&0u32.to_be_bytes());
            pkt.extend_from_slice(&iv);
            pkt.extend_from_slice(&ct);
            let mut m = <Hmac<Sha1> as Mac>::new_from_slice(&mac).expect("k");
            m.update(&pkt);
            pkt.extend_from_slice(&m.finalize().into_bytes()[..12]);
            pkt
        };
        let mut good = [0x45u8; 16];
        good[12..14].copy_from_slice(&[1, 2]);
        good[14] = 2;
        good[15] = 4;
        let mut rx = InboundSa::new(suite, 9, &enc, &mac).expect("sa");
        assert!(rx.decapsulate(&mut build(&good)).is_ok());

        let mut bad = good;
        bad[13] = 7; // padding byte not 2
        let mut rx = InboundSa::new(suite, 9, &enc, &mac).expect("sa");
        assert_eq!(rx.decapsulate(&mut build(&bad)), Err(EspError::BadPadding));

        let mut bad = good;
        bad[14] = 15; // pad length larger than the body allows
        let mut rx = InboundSa::new(suite, 9, &enc, &mac).expect("sa");
        assert_eq!(rx.decapsulate(&mut build(&bad)), Err(EspError::BadPadding));

        let mut bad = good;
        bad[15] = 5; // Juniper LZO
        let mut rx = InboundSa::new(suite, 9, &enc, &mac).expect("sa");
        assert_eq!(
            rx.decapsulate(&mut build(&bad)),
            Err(EspError::UnsupportedNextHeader { next_header: 5 })
        );
    }

    #[test]
    fn sequence_numbers_refuse_to_wrap() {
        let (mut tx, mut rx) = pair(SUITES[0]);
        let mut rng = TestRandom(11);
        tx.set_next_seq(u64::from(u32::MAX));
        let mut out = [0u8; 128];
        let n = tx
            .encapsulate(&ipv4(20), &mut out, &mut rng)
            .expect("last one");
        assert_eq!(rx.decapsulate(&mut out[..n]).expect("dec").seq, u32::MAX);
        assert_eq!(tx.next_seq(), None);
        assert_eq!(
            tx.encapsulate(&ipv4(20), &mut out, &mut rng),
            Err(EspError::SequenceExhausted)
        );
    }

    #[test]
    fn replay_window_semantics() {
        let mut w = ReplayWindow::new();
        let take = |w: &mut ReplayWindow, s: u32| {
            w.check(s)?;
            w.accept(s);
            Ok::<(), EspError>(())
        };
        assert_eq!(take(&mut w, 0), Ok(()));
        assert_eq!(take(&mut w, 0), Err(EspError::Replayed { seq: 0 }));
        assert_eq!(take(&mut w, 2), Ok(()));
        assert_eq!(take(&mut w, 1), Ok(()), "late but inside the window");
        assert_eq!(take(&mut w, 1), Err(EspError::Replayed { seq: 1 }));
        // Slide: jump to 100; 37 is the oldest still inside (100 - 63).
        assert_eq!(take(&mut w, 100), Ok(()));
        assert_eq!(
            take(&mut w, 36),
            Err(EspError::TooOld {
                seq: 36,
                highest: 100
            })
        );
        assert_eq!(take(&mut w, 37), Ok(()));
        assert_eq!(take(&mut w, 37), Err(EspError::Replayed { seq: 37 }));
        // Far-ahead jump clears the bitmap; everything before is too old.
        assert_eq!(take(&mut w, 1_000_000), Ok(()));
        assert_eq!(
            take(&mut w, 100),
            Err(EspError::TooOld {
                seq: 100,
                highest: 1_000_000
            })
        );
        assert_eq!(take(&mut w, 999_999), Ok(()));
        // Slide by exactly the window size.
        assert_eq!(take(&mut w, 1_000_064), Ok(()));
        assert_eq!(
            take(&mut w, 1_000_000),
            Err(EspError::TooOld {
                seq: 1_000_000,
                highest: 1_000_064
            })
        );
        assert_eq!(take(&mut w, 1_000_001), Ok(()));
        assert_eq!(take(&mut w, u32::MAX), Ok(()));
        assert_eq!(
            take(&mut w, u32::MAX),
            Err(EspError::Replayed { seq: u32::MAX })
        );
    }

    /// Packets of one train: `count` of `len` bytes then one of `last`.
    fn train_packets(count: usize, len: usize, last: usize) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let mut p = ipv4(len);
                p[len - 1] = i as u8;
                p
            })
            .collect();
        v.push(ipv4(last));
        v
    }

    /// Stages `packets` into one train buffer; returns it and the slot size.
    fn stage_train(
        sa: &mut OutboundSa,
        packets: &[Vec<u8>],
        rng: &mut TestRandom,
    ) -> (Vec<u8>, usize) {
        let mut buf = Vec::new();
        let mut size = 0;
        for p in packets {
            let mut d = vec![0u8; p.len() + MAX_OVERHEAD];
            let n = sa.stage(p, &mut d, rng).expect("stage");
            if size == 0 {
                size = n;
            }
            buf.extend_from_slice(&d[..n]);
        }
        (buf, size)
    }

    /// A staged and sealed train holds exactly the datagrams `encapsulate` writes one by
    /// one (same IVs), for every suite and train length (full 16-lane groups, a partial one,
    /// a shorter last datagram).
    #[test]
    fn sealed_trains_equal_one_by_one_encapsulation() {
        for suite in SUITES {
            for count in [0usize, 1, 3, 15, 16, 17, 40] {
                let packets = train_packets(count, 1400, 600);
                let (mut out1, _) = pair(suite);
                let (mut out2, _) = pair(suite);
                let (mut r1, mut r2) = (TestRandom(9), TestRandom(9));
                let (mut train, size) = stage_train(&mut out1, &packets, &mut r1);
                out1.seal_train(&mut train, size).expect("seal");
                let mut want = Vec::new();
                for p in &packets {
                    let mut d = vec![0u8; p.len() + MAX_OVERHEAD];
                    let n = out2.encapsulate(p, &mut d, &mut r2).expect("enc");
                    want.extend_from_slice(&d[..n]);
                }
                assert_eq!(train, want, "{suite:?} count {count}");
            }
        }
    }

    /// A train opened at once gives what opening its datagrams one by one gives, in order:
    /// tampered, foreign and repeated datagrams fail alone, the others open, and the
    /// replay window ends in the same state.
    #[test]
    fn opened_trains_equal_one_by_one_decapsulation() {
        for suite in SUITES {
            let packets = train_packets(37, 1400, 1400);
            let (mut out, inb) = pair(suite);
            let mut rng = TestRandom(3);
            let (mut train, size) = stage_train(&mut out, &packets, &mut rng);
            out.seal_train(&mut train, size).expect("seal");
            // Tamper with datagram 5, give datagram 9 another SPI, repeat datagram 20 as 21.
            train[5 * size + 40] ^= 1;
            train[9 * size] ^= 0x80;
            let (a, b) = train.split_at_mut(21 * size);
            b[..size].copy_from_slice(&a[20 * size..]);
            let mut one = inb.clone();
            let mut copy = train.clone();
            let want: Vec<Result<Vec<u8>, EspError>> = copy
                .chunks_mut(size)
                .map(|d| one.decapsulate(d).map(|p| p.payload.to_vec()))
                .collect();
            let mut batch = inb.clone();
            let mut got = Vec::new();
            batch.decapsulate_train(&mut train, size, |r| {
                got.push(r.map(|p| p.payload.to_vec()))
            });
            assert_eq!(got, want, "{suite:?}");
            assert_eq!(got.iter().filter(|r| r.is_err()).count(), 3, "{suite:?}");
            assert!(
                matches!(got[21], Err(EspError::Replayed { .. })),
                "{suite:?}"
            );
            assert_eq!(batch.window(), one.window(), "{suite:?}");
            for (i, p) in packets.iter().enumerate() {
                if ![5, 9, 21].contains(&i) {
                    assert_eq!(got[i].as_deref(), Ok(&p[..]), "{suite:?} datagram {i}");
                }
            }
        }
    }

    /// A datagram repeated inside a train and then damaged is a replay, as it is when the
    /// datagrams are opened one by one: the window is consulted again before the ICV
    /// (fuzz finding: the train said "integrity check failed").
    #[test]
    fn a_damaged_repeat_inside_a_train_is_a_replay() {
        for suite in SUITES {
            let (mut out, inb) = pair(suite);
            let mut rng = TestRandom(5);
            let (mut train, size) = stage_train(&mut out, &train_packets(3, 1039, 1032), &mut rng);
            out.seal_train(&mut train, size).expect("seal");
            let (a, b) = train.split_at_mut(size);
            b[..size].copy_from_slice(&a[..size]);
            train[size + 40] ^= 0x20;
            let mut one = inb.clone();
            let want: Vec<String> = train
                .clone()
                .chunks_mut(size)
                .map(|d| format!("{:?}", one.decapsulate(d).map(|p| p.payload.len())))
                .collect();
            let mut batch = inb.clone();
            let mut got = Vec::new();
            batch.decapsulate_train(&mut train, size, |r| {
                got.push(format!("{:?}", r.map(|p| p.payload.len())))
            });
            assert_eq!(got, want, "{suite:?}");
            assert!(got[1].contains("Replayed"), "{suite:?}: {got:?}");
        }
    }

    /// A train that was not staged by this SA is refused whole and left as it was.
    #[test]
    fn a_foreign_or_malformed_train_is_not_sealed() {
        let suite = SUITES[0];
        let (mut out, _) = pair(suite);
        let mut rng = TestRandom(4);
        let (mut train, size) = stage_train(&mut out, &train_packets(4, 1000, 1000), &mut rng);
        let before = train.clone();
        train[3 * size] ^= 1;
        let tampered = train.clone();
        assert!(matches!(
            out.seal_train(&mut train, size),
            Err(EspError::SpiMismatch { .. })
        ));
        assert_eq!(train, tampered, "nothing sealed");
        let mut short = before.clone();
        short.truncate(4 * size + 30);
        assert!(out.seal_train(&mut short, size).is_err());
        assert_eq!(&short[..], &before[..4 * size + 30]);
        assert!(out.seal_train(&mut before.clone(), 10).is_err());
        let mut inb = pair(suite).1;
        let mut got = Vec::new();
        inb.decapsulate_train(&mut before.clone(), 0, |r| got.push(r.is_err()));
        assert_eq!(got, [true]);
    }

    #[test]
    fn replayed_datagram_is_rejected_and_protection_can_be_off() {
        let (mut tx, mut rx) = pair(SUITES[3]);
        let mut rng = TestRandom(21);
        let mut out = [0u8; 128];
        let n = tx.encapsulate(&ipv4(40), &mut out, &mut rng).expect("enc");
        let copy = out[..n].to_vec();
        rx.decapsulate(&mut out[..n]).expect("first");
        assert_eq!(
            rx.decapsulate(&mut copy.clone()),
            Err(EspError::Replayed { seq: 0 })
        );
        rx.set_replay_protection(false);
        assert!(rx.decapsulate(&mut copy.clone()).is_ok());
    }

    #[test]
    fn secrets_split_follows_pulse_layout() {
        let secrets: Vec<u8> = (0..64).collect();
        let (e, m) = split_secrets(SUITES[2], &secrets).expect("split");
        assert_eq!(e, &secrets[..32]);
        assert_eq!(m, &secrets[32..52]);
        assert!(matches!(
            split_secrets(SUITES[3], &secrets[..63]),
            Err(EspError::KeyLength { .. })
        ));
        assert_eq!(EspCipher::from_code(5), Ok(EspCipher::Aes256Cbc));
        // AES-GCM: 36 bytes of key and salt, no HMAC key; only with integrity code 0.
        let (e, m) = split_secrets(EspSuite::AES256_GCM, &secrets).expect("split");
        assert_eq!((e, m.len()), (&secrets[..36], 0));
        assert_eq!(EspSuite::from_codes(20, 0), Ok(EspSuite::AES256_GCM));
        assert_eq!(
            EspSuite::from_codes(20, 2),
            Err(EspError::MismatchedSuite { cipher: 20, mac: 2 })
        );
        assert_eq!(
            EspSuite::from_codes(2, 0),
            Err(EspError::MismatchedSuite { cipher: 2, mac: 0 })
        );
        assert_eq!(
            EspMac::from_code(1),
            Err(EspError::UnsupportedMac { code: 1 })
        );
        assert_eq!(
            EspCipher::from_code(3),
            Err(EspError::UnsupportedCipher { code: 3 })
        );
    }
}
