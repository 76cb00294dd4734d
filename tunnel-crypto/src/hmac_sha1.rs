//! HMAC-SHA1 (RFC 2104) for ESP's ICV, one key and many packets: the key's inner and outer
//! states are computed once; a batch of packets is hashed sixteen at a time with AVX-512
//! (`sha1_x16.rs`) when the CPU has it and the batch is large enough to pay for it, one at
//! a time with the `sha1` crate's compression (SHA extensions where present) otherwise.
//! Both give the same tags.

use sha1::digest::generic_array::GenericArray;

/// SHA-1 block size.
const BLOCK: usize = 64;
/// Tag (digest) length.
pub const TAG_LEN: usize = 20;
/// SHA-1's initial state (FIPS 180-4 §5.3.1).
const IV: [u32; 5] = [
    0x6745_2301,
    0xefcd_ab89,
    0x98ba_dcfe,
    0x1032_5476,
    0xc3d2_e1f0,
];

/// Below this many packets a batch is hashed one by one: sixteen lanes cost the same
/// however few are used, and one lane on the SHA extensions costs about a quarter of them.
pub const MIN_BATCH: usize = 4;

/// Which implementation a key uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sha1Backend {
    /// One packet at a time.
    Scalar,
    /// Sixteen packets at a time with AVX-512.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Sha1Backend {
    /// The fastest this CPU has.
    pub fn detect() -> Sha1Backend {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            return Sha1Backend::Avx512;
        }
        Sha1Backend::Scalar
    }
}

/// An HMAC-SHA1 key.
#[derive(Clone)]
pub struct HmacSha1 {
    inner: [u32; 5],
    outer: [u32; 5],
    backend: Sha1Backend,
}

impl std::fmt::Debug for HmacSha1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacSha1")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn compress_one(state: &mut [u32; 5], block: &[u8; BLOCK]) {
    sha1::compress(state, &[*GenericArray::from_slice(block)]);
}

fn compress_many(state: &mut [u32; 5], blocks: &[u8]) {
    debug_assert!(blocks.len().is_multiple_of(BLOCK));
    // SAFETY: GenericArray<u8, U64> is a [u8; 64] (same size, alignment 1), and `blocks`
    // is a whole number of them.
    let blocks: &[GenericArray<u8, sha1::digest::typenum::U64>] =
        unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len() / BLOCK) };
    sha1::compress(state, blocks);
}

/// The last one or two blocks of a message of `len` bytes whose final `tail` bytes did not
/// fill a block: those bytes, 0x80, zeros, and the bit length of the whole hashed input
/// (`prefix` bytes already in the state plus `len`). Returns the blocks and how many.
fn final_blocks(tail: &[u8], prefix: u64, len: usize) -> ([u8; 2 * BLOCK], usize) {
    let mut b = [0u8; 2 * BLOCK];
    b[..tail.len()].copy_from_slice(tail);
    b[tail.len()] = 0x80;
    let n = if tail.len() + 9 > BLOCK { 2 } else { 1 };
    let bits = (prefix + len as u64) * 8;
    b[n * BLOCK - 8..n * BLOCK].copy_from_slice(&bits.to_be_bytes());
    (b, n)
}

fn digest_bytes(s: &[u32; 5]) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    for (o, w) in out.chunks_exact_mut(4).zip(s) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

impl HmacSha1 {
    /// A key (any length; RFC 2104 hashes one longer than a block), on the fastest
    /// backend this CPU has.
    pub fn new(key: &[u8]) -> HmacSha1 {
        Self::with_backend(key, Sha1Backend::detect())
    }

    /// A key on the given backend (tests compare the backends).
    pub fn with_backend(key: &[u8], backend: Sha1Backend) -> HmacSha1 {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            let mut s = IV;
            let full = key.len() / BLOCK * BLOCK;
            compress_many(&mut s, &key[..full]);
            let (b, n) = final_blocks(&key[full..], 0, key.len());
            compress_many(&mut s, &b[..n * BLOCK]);
            k[..TAG_LEN].copy_from_slice(&digest_bytes(&s));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let pad = |x: u8| {
            let mut b = [0u8; BLOCK];
            for (o, k) in b.iter_mut().zip(&k) {
                *o = k ^ x;
            }
            let mut s = IV;
            compress_one(&mut s, &b);
            s
        };
        HmacSha1 {
            inner: pad(0x36),
            outer: pad(0x5c),
            backend,
        }
    }

    /// The implementation in use.
    pub fn backend(&self) -> Sha1Backend {
        self.backend
    }

    /// The tag of one message.
    pub fn sign(&self, msg: &[u8]) -> [u8; TAG_LEN] {
        let mut s = self.inner;
        let full = msg.len() / BLOCK * BLOCK;
        compress_many(&mut s, &msg[..full]);
        let (b, n) = final_blocks(&msg[full..], BLOCK as u64, msg.len());
        compress_many(&mut s, &b[..n * BLOCK]);
        let (b, _) = final_blocks(&digest_bytes(&s), BLOCK as u64, TAG_LEN);
        let mut o = self.outer;
        compress_one(&mut o, b[..BLOCK].try_into().unwrap_or(&[0; BLOCK]));
        digest_bytes(&o)
    }

    /// The tags of many messages: `tags[i]` for `msgs[i]` (`tags` must be at least as long).
    pub fn sign_many(&self, msgs: &[&[u8]], tags: &mut [[u8; TAG_LEN]]) {
        assert!(tags.len() >= msgs.len(), "one tag per message");
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Sha1Backend::Avx512 if msgs.len() >= MIN_BATCH => {
                for (m, t) in msgs
                    .chunks(crate::sha1_x16::LANES)
                    .zip(tags.chunks_mut(crate::sha1_x16::LANES))
                {
                    if m.len() >= MIN_BATCH {
                        // SAFETY: this backend is only chosen when the CPU has AVX-512F/BW.
                        unsafe { self.sign_x16(m, t) };
                    } else {
                        for (m, t) in m.iter().zip(t.iter_mut()) {
                            *t = self.sign(m);
                        }
                    }
                }
            }
            _ => {
                for (m, t) in msgs.iter().zip(tags.iter_mut()) {
                    *t = self.sign(m);
                }
            }
        }
    }

    /// Up to sixteen messages side by side.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn sign_x16(&self, msgs: &[&[u8]], tags: &mut [[u8; TAG_LEN]]) {
        use crate::sha1_x16::{LANES, broadcast, compress, lanes, load_blocks};
        use std::arch::x86_64::*;
        static ZERO: [u8; BLOCK] = [0; BLOCK];
        let n = msgs.len().min(LANES);
        let mut full = [0usize; LANES];
        let mut total = [0usize; LANES];
        let mut tails = [[0u8; 2 * BLOCK]; LANES];
        for i in 0..n {
            full[i] = msgs[i].len() / BLOCK;
            let (b, k) = final_blocks(&msgs[i][full[i] * BLOCK..], BLOCK as u64, msgs[i].len());
            tails[i] = b;
            total[i] = full[i] + k;
        }
        let blocks = total[..n].iter().copied().max().unwrap_or(0);
        let mut state = broadcast(&self.inner);
        for j in 0..blocks {
            let mut ptrs = [ZERO.as_ptr(); LANES];
            let mut active: u16 = 0;
            for i in 0..n {
                if j < full[i] {
                    // SAFETY: block j lies within the message.
                    ptrs[i] = unsafe { msgs[i].as_ptr().add(j * BLOCK) };
                } else if j < total[i] {
                    ptrs[i] = tails[i][(j - full[i]) * BLOCK..].as_ptr();
                } else {
                    continue;
                }
                active |= 1 << i;
            }
            // SAFETY: every pointer points at 64 readable bytes.
            let w = unsafe { load_blocks(&ptrs) };
            compress(&mut state, w, active);
        }
        // Outer hash: one block of the inner digest, 0x80, zeros and the bit length
        // (64 + 20) * 8, built straight from the state registers.
        let mut w = [_mm512_setzero_si512(); 16];
        w[..5].copy_from_slice(&state);
        w[5] = _mm512_set1_epi32(0x8000_0000u32 as i32);
        w[15] = _mm512_set1_epi32(((BLOCK + TAG_LEN) * 8) as i32);
        let mut outer = broadcast(&self.outer);
        compress(&mut outer, w, u16::MAX);
        for (t, s) in tags.iter_mut().zip(lanes(&outer)).take(n) {
            *t = digest_bytes(&s);
        }
    }
}
