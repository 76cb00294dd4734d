//! AES-CBC for ESP: one key, many packets. On x86-64 with AES-NI the packets of a batch are
//! encrypted side by side (`aesni.rs`); elsewhere each packet goes through the portable
//! `aes`/`cbc` crates in turn. Both give the same bytes, and both wipe their round keys when
//! dropped (the `aes` crate's `zeroize` feature for the portable one).

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};

use crate::CryptoError;

/// AES block size.
pub const BLOCK: usize = 16;

/// One packet of a batch: `data`, a whole number of blocks, is encrypted in place, chained
/// from `iv`.
pub struct CbcLane<'a> {
    pub iv: [u8; BLOCK],
    pub data: &'a mut [u8],
}

#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "boxed by its one user, Backend; the variants are the crate's own key types"
)]
enum Portable {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

#[derive(Clone)]
enum Backend {
    #[cfg(target_arch = "x86_64")]
    AesNi(Box<crate::aesni::Keys>),
    Portable(Box<Portable>),
}

/// An AES-128 or AES-256 key for CBC.
#[derive(Clone)]
pub struct AesCbc {
    backend: Backend,
}

impl std::fmt::Debug for AesCbc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi(_) => "AesCbc(aes-ni)",
            Backend::Portable(_) => "AesCbc(portable)",
        })
    }
}

/// What the CPU offers the backends. Tests build one by hand to stand for a CPU without
/// AES-NI.
#[derive(Clone, Copy)]
struct Cpu {
    #[cfg(target_arch = "x86_64")]
    aes_ni: Option<crate::aesni::AesNi>,
}

impl Cpu {
    fn detect() -> Cpu {
        Cpu {
            #[cfg(target_arch = "x86_64")]
            aes_ni: crate::aesni::AesNi::detect(),
        }
    }
}

impl AesCbc {
    /// A key of 16 (AES-128) or 32 bytes (AES-256), on the fastest backend this CPU has.
    pub fn new(key: &[u8]) -> Result<AesCbc, CryptoError> {
        Self::on_cpu(key, Cpu::detect())
    }

    fn on_cpu(key: &[u8], cpu: Cpu) -> Result<AesCbc, CryptoError> {
        #[cfg(target_arch = "x86_64")]
        if let Some(aes_ni) = cpu.aes_ni {
            return match crate::aesni::Keys::new(aes_ni, key) {
                Some(k) => Ok(AesCbc {
                    backend: Backend::AesNi(Box::new(k)),
                }),
                None => Err(CryptoError::KeyLength { got: key.len() }),
            };
        }
        Self::portable(key)
    }

    /// The same key on the portable backend (for tests, and CPUs without AES-NI).
    pub fn portable(key: &[u8]) -> Result<AesCbc, CryptoError> {
        let err = CryptoError::KeyLength { got: key.len() };
        let p = match key.len() {
            16 => Portable::Aes128(aes::Aes128::new_from_slice(key).map_err(|_| err)?),
            32 => Portable::Aes256(aes::Aes256::new_from_slice(key).map_err(|_| err)?),
            _ => return Err(err),
        };
        Ok(AesCbc {
            backend: Backend::Portable(Box::new(p)),
        })
    }

    /// Whether this key runs on AES-NI.
    pub fn is_accelerated(&self) -> bool {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi(_) => true,
            Backend::Portable(_) => false,
        }
    }

    /// Encrypts every lane in place. Fails, changing nothing, if a lane is not a whole
    /// number of blocks.
    pub fn encrypt_lanes(&self, lanes: &mut [CbcLane<'_>]) -> Result<(), CryptoError> {
        if let Some(l) = lanes.iter().find(|l| !l.data.len().is_multiple_of(BLOCK)) {
            return Err(CryptoError::Misaligned { len: l.data.len() });
        }
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi(k) => {
                k.encrypt_lanes(lanes);
                Ok(())
            }
            Backend::Portable(p) => {
                for l in lanes.iter_mut() {
                    portable_encrypt(p, &l.iv, l.data);
                }
                Ok(())
            }
        }
    }

    /// Encrypts one packet in place.
    pub fn encrypt(&self, iv: &[u8; BLOCK], data: &mut [u8]) -> Result<(), CryptoError> {
        self.encrypt_lanes(&mut [CbcLane { iv: *iv, data }])
    }

    /// Decrypts one packet in place. Fails, changing nothing, if `data` is not a whole
    /// number of blocks.
    pub fn decrypt(&self, iv: &[u8; BLOCK], data: &mut [u8]) -> Result<(), CryptoError> {
        if !data.len().is_multiple_of(BLOCK) {
            return Err(CryptoError::Misaligned { len: data.len() });
        }
        match &self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi(k) => k.decrypt(iv, data),
            Backend::Portable(p) => {
                let len = data.len();
                match &**p {
                    Portable::Aes128(c) => {
                        let _ = cbc::Decryptor::inner_iv_init(c.clone(), iv.into())
                            .decrypt_padded_mut::<NoPadding>(&mut data[..len]);
                    }
                    Portable::Aes256(c) => {
                        let _ = cbc::Decryptor::inner_iv_init(c.clone(), iv.into())
                            .decrypt_padded_mut::<NoPadding>(&mut data[..len]);
                    }
                }
            }
        }
        Ok(())
    }
}

fn portable_encrypt(p: &Portable, iv: &[u8; BLOCK], data: &mut [u8]) {
    let len = data.len();
    // The length is a whole number of blocks (checked), so NoPadding cannot fail.
    match p {
        Portable::Aes128(c) => {
            let _ = cbc::Encryptor::inner_iv_init(c.clone(), iv.into())
                .encrypt_padded_mut::<NoPadding>(data, len);
        }
        Portable::Aes256(c) => {
            let _ = cbc::Encryptor::inner_iv_init(c.clone(), iv.into())
                .encrypt_padded_mut::<NoPadding>(data, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_without_aes_ni_gets_the_portable_backend() {
        let bare = Cpu {
            #[cfg(target_arch = "x86_64")]
            aes_ni: None,
        };
        for len in [16, 32] {
            let key = AesCbc::on_cpu(&vec![7; len], bare).unwrap();
            assert!(!key.is_accelerated(), "{key:?}");
        }
        assert_eq!(
            AesCbc::on_cpu(&[7; 24], bare).unwrap_err(),
            CryptoError::KeyLength { got: 24 }
        );
    }

    #[test]
    fn the_real_cpu_gets_aes_ni_exactly_when_it_has_it() {
        let key = AesCbc::new(&[7; 16]).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(key.is_accelerated(), std::is_x86_feature_detected!("aes"));
        #[cfg(not(target_arch = "x86_64"))]
        assert!(!key.is_accelerated());
    }
}
