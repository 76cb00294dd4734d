//! HMAC-SHA1 (RFC 2104) for ESP's ICV, one key and many packets: the key's inner and outer
//! states are computed once; a batch of packets is hashed sixteen at a time with AVX-512
//! (`sha1_x16.rs`) when the CPU has it and the batch is large enough to pay for it, one at
//! a time with the `sha1` crate's compression (SHA extensions where present) otherwise.
//! Both give the same tags.

use sha1::digest::generic_array::GenericArray;
use zeroize::Zeroize;

use crate::CryptoError;

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
    /// Every backend of this build, whether or not this CPU can run it.
    pub const ALL: &'static [Sha1Backend] = &[
        Sha1Backend::Scalar,
        #[cfg(target_arch = "x86_64")]
        Sha1Backend::Avx512,
    ];

    /// The fastest this CPU has.
    pub fn detect() -> Sha1Backend {
        #[cfg(target_arch = "x86_64")]
        if crate::sha1_x16::Avx512::detect().is_some() {
            return Sha1Backend::Avx512;
        }
        Sha1Backend::Scalar
    }

    /// Whether this CPU can run it.
    pub fn is_available(self) -> bool {
        Lanes::for_backend(self, Cpu::detect()).is_some()
    }

    /// A short name, for errors and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Sha1Backend::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Sha1Backend::Avx512 => "avx512",
        }
    }
}

/// What the CPU offers the backends, asked once per key. Tests build one by hand to stand
/// for a CPU without an extension.
#[derive(Clone, Copy)]
struct Cpu {
    #[cfg(target_arch = "x86_64")]
    avx512: Option<crate::sha1_x16::Avx512>,
}

impl Cpu {
    fn detect() -> Cpu {
        Cpu {
            #[cfg(target_arch = "x86_64")]
            avx512: crate::sha1_x16::Avx512::detect(),
        }
    }
}

/// The backend a key runs on. The AVX-512 variant holds the proof that the CPU has it,
/// which only a successful detection makes: no value of this type can reach AVX-512 code
/// on a CPU without it.
#[derive(Clone, Copy)]
enum Lanes {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx512(crate::sha1_x16::Avx512),
}

impl Lanes {
    /// `backend` if `cpu` can run it.
    fn for_backend(backend: Sha1Backend, cpu: Cpu) -> Option<Lanes> {
        match backend {
            Sha1Backend::Scalar => Some(Lanes::Scalar),
            #[cfg(target_arch = "x86_64")]
            Sha1Backend::Avx512 => cpu.avx512.map(Lanes::Avx512),
        }
    }

    fn backend(self) -> Sha1Backend {
        match self {
            Lanes::Scalar => Sha1Backend::Scalar,
            #[cfg(target_arch = "x86_64")]
            Lanes::Avx512(_) => Sha1Backend::Avx512,
        }
    }
}

/// An HMAC-SHA1 key: the SHA-1 states after the inner and outer padded key blocks, which
/// stand for the key and are wiped when it is dropped.
#[derive(Clone)]
pub struct HmacSha1 {
    inner: [u32; 5],
    outer: [u32; 5],
    lanes: Lanes,
}

impl Drop for HmacSha1 {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

impl std::fmt::Debug for HmacSha1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacSha1")
            .field("backend", &self.backend())
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
        let cpu = Cpu::detect();
        let lanes = Lanes::for_backend(Sha1Backend::detect(), cpu).unwrap_or(Lanes::Scalar);
        Self::with_lanes(key, lanes)
    }

    /// A key on the given backend (tests and benchmarks compare the backends). Fails if
    /// this CPU cannot run it.
    pub fn with_backend(key: &[u8], backend: Sha1Backend) -> Result<HmacSha1, CryptoError> {
        Self::on_cpu(key, backend, Cpu::detect())
    }

    fn on_cpu(key: &[u8], backend: Sha1Backend, cpu: Cpu) -> Result<HmacSha1, CryptoError> {
        let lanes = Lanes::for_backend(backend, cpu).ok_or(CryptoError::Unavailable {
            backend: backend.name(),
        })?;
        Ok(Self::with_lanes(key, lanes))
    }

    fn with_lanes(key: &[u8], lanes: Lanes) -> HmacSha1 {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            let mut s = IV;
            let full = key.len() / BLOCK * BLOCK;
            compress_many(&mut s, &key[..full]);
            let (mut b, n) = final_blocks(&key[full..], 0, key.len());
            compress_many(&mut s, &b[..n * BLOCK]);
            let mut d = digest_bytes(&s);
            k[..TAG_LEN].copy_from_slice(&d);
            b.zeroize();
            d.zeroize();
            s.zeroize();
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
            b.zeroize();
            s
        };
        let key = HmacSha1 {
            inner: pad(0x36),
            outer: pad(0x5c),
            lanes,
        };
        k.zeroize();
        key
    }

    /// The implementation in use.
    pub fn backend(&self) -> Sha1Backend {
        self.lanes.backend()
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
        match self.lanes {
            #[cfg(target_arch = "x86_64")]
            Lanes::Avx512(cpu) if msgs.len() >= MIN_BATCH => {
                for (m, t) in msgs
                    .chunks(crate::sha1_x16::LANES)
                    .zip(tags.chunks_mut(crate::sha1_x16::LANES))
                {
                    if m.len() >= MIN_BATCH {
                        // SAFETY: `cpu` proves the CPU has AVX-512F/BW.
                        unsafe { self.sign_x16(cpu, m, t) };
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

    /// Up to sixteen messages side by side. Takes the proof of AVX-512 so that no caller
    /// can reach it without one.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn sign_x16(&self, _cpu: crate::sha1_x16::Avx512, msgs: &[&[u8]], tags: &mut [[u8; TAG_LEN]]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU without any of the optional extensions.
    const BARE: Cpu = Cpu {
        #[cfg(target_arch = "x86_64")]
        avx512: None,
    };

    #[test]
    fn a_backend_the_cpu_lacks_cannot_be_made() {
        for &backend in Sha1Backend::ALL {
            let made = HmacSha1::on_cpu(b"key", backend, BARE);
            match backend {
                Sha1Backend::Scalar => {
                    assert_eq!(made.map(|k| k.backend()), Ok(Sha1Backend::Scalar));
                }
                #[cfg(target_arch = "x86_64")]
                Sha1Backend::Avx512 => assert_eq!(
                    made.map(|k| k.backend()),
                    Err(CryptoError::Unavailable { backend: "avx512" })
                ),
            }
        }
    }

    #[test]
    fn the_real_cpu_gets_what_it_has_and_nothing_else() {
        for &backend in Sha1Backend::ALL {
            let made = HmacSha1::with_backend(b"key", backend);
            assert_eq!(made.is_ok(), backend.is_available(), "{backend:?}");
            #[cfg(target_arch = "x86_64")]
            if backend == Sha1Backend::Avx512 {
                let has = std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw");
                assert_eq!(made.is_ok(), has);
            }
        }
        assert!(Sha1Backend::detect().is_available());
        assert_eq!(HmacSha1::new(b"key").backend(), Sha1Backend::detect());
    }
}
