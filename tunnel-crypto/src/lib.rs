//! Batched crypto for ESP: the two primitives of the Pulse ESP suites, AES-CBC and
//! HMAC-SHA1, over many packets at once.
//!
//! ```text
//!  seal a batch of datagrams (one GSO train)          open a batch (one GRO receive)
//!  ┌──────────────────────────────┐                  ┌──────────────────────────────┐
//!  │ AesCbc::encrypt_lanes        │ 8 CBC chains     │ HmacSha1::sign_many          │ 16 lanes
//!  │   (AES-NI, interleaved)      │ side by side     │   (AVX-512)  + compare       │
//!  │ HmacSha1::sign_many          │ 16 lanes         │ AesCbc::decrypt each         │ 8 blocks
//!  │   (AVX-512)                  │                  │   (AES-NI)                   │ side by side
//!  └──────────────────────────────┘                  └──────────────────────────────┘
//! ```
//!
//! A single CBC chain runs at the latency of the AES instruction and a single SHA-1 at the
//! latency of its rounds; independent packets hide both, which is where the speed comes
//! from. Every backend is chosen at run time from what the CPU has, and each has a portable
//! twin that gives the same bytes (the tests compare them on random input). A key on an
//! accelerated backend holds the proof that the CPU has its instructions (a value only
//! detection makes), so no safe call reaches them on a CPU without. Key material (AES round
//! keys, HMAC pads) is wiped when a key is dropped.
//!
//! Owns: the primitives. Does not own: ESP framing, sequence numbers, padding or replay
//! windows (`tunnel-proto`'s `esp`).

#[cfg(target_arch = "x86_64")]
mod aesni;
mod cbc;
mod hmac_sha1;
#[cfg(target_arch = "x86_64")]
mod sha1_x16;

pub use cbc::{AesCbc, BLOCK, CbcLane};
pub use hmac_sha1::{HmacSha1, MIN_BATCH, Sha1Backend, TAG_LEN};

/// Errors of the primitives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// AES keys are 16 or 32 bytes.
    #[error("AES key of {got} bytes (16 or 32 expected)")]
    KeyLength {
        /// The length given.
        got: usize,
    },
    /// A backend was asked for that this CPU cannot run.
    #[error("this CPU cannot run the {backend} backend")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
    },
    /// CBC works on whole 16-byte blocks.
    #[error("CBC data of {len} bytes is not a whole number of 16-byte blocks")]
    Misaligned {
        /// The length given.
        len: usize,
    },
}
