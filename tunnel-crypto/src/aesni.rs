//! AES with the x86-64 AES-NI instructions: key schedules, CBC encryption of up to eight
//! independent packets interleaved, and CBC decryption eight blocks at a time.
//!
//! Why interleave: CBC encryption is a chain, each block waits for the one before, so one
//! packet runs at the latency of `aesenc` (a few cycles per round). The CPU can start one or
//! two `aesenc` per cycle, so eight independent chains (eight packets) keep it busy and
//! encrypt several times faster. Decryption has no chain and runs eight blocks of one packet
//! side by side.
//!
//! Every function here requires AES-NI and SSE2 (part of x86-64). The proof that the CPU
//! has them is an [`AesNi`], which only [`AesNi::detect`] makes; [`Keys`] are made from one
//! and keep it, so their safe methods are sound on any CPU.

use std::arch::x86_64::*;

use zeroize::Zeroize;

use crate::cbc::CbcLane;

/// Proof that this CPU has AES-NI. The field is private, so a value exists only where
/// [`AesNi::detect`] found it.
#[derive(Clone, Copy, Debug)]
pub struct AesNi(());

impl AesNi {
    /// The proof, if this CPU has AES-NI.
    pub fn detect() -> Option<AesNi> {
        std::is_x86_feature_detected!("aes").then_some(AesNi(()))
    }
}

/// Most round keys (AES-256: 14 rounds + 1).
const MAX_ROUND_KEYS: usize = 15;
/// Packets encrypted side by side.
pub const LANES: usize = 8;

/// Encryption and decryption round keys of one AES key, wiped when dropped.
#[derive(Clone)]
pub struct Keys {
    enc: [__m128i; MAX_ROUND_KEYS],
    dec: [__m128i; MAX_ROUND_KEYS],
    /// 10 (AES-128) or 14 (AES-256).
    rounds: usize,
    cpu: AesNi,
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.dec.zeroize();
    }
}

/// `prev` with each 32-bit word XORed with all words below it (the key schedule's running
/// XOR), then XORed with `t`.
#[inline]
#[target_feature(enable = "aes,sse2")]
fn mix(prev: __m128i, t: __m128i) -> __m128i {
    let mut p = prev;
    p = _mm_xor_si128(p, _mm_slli_si128::<4>(p));
    p = _mm_xor_si128(p, _mm_slli_si128::<4>(p));
    p = _mm_xor_si128(p, _mm_slli_si128::<4>(p));
    _mm_xor_si128(p, t)
}

macro_rules! assist {
    ($k:expr, $rcon:literal, $shuf:literal) => {
        _mm_shuffle_epi32::<$shuf>(_mm_aeskeygenassist_si128::<$rcon>($k))
    };
}

impl Keys {
    /// Round keys for a 16- or 32-byte key; None for another length.
    pub fn new(cpu: AesNi, key: &[u8]) -> Option<Keys> {
        // SAFETY: `cpu` proves the CPU has AES-NI.
        unsafe { Self::schedule(cpu, key) }
    }

    /// CBC-encrypts every lane in place, eight at a time. Lanes may differ in length; each
    /// must be a whole number of 16-byte blocks (checked by the caller).
    pub fn encrypt_lanes(&self, lanes: &mut [CbcLane<'_>]) {
        // SAFETY: `self.cpu` proves the CPU has AES-NI.
        unsafe { cbc_encrypt_lanes(self.cpu, self, lanes) }
    }

    /// CBC-decrypts `data` (a whole number of blocks) in place, chained from `iv`.
    pub fn decrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        // SAFETY: `self.cpu` proves the CPU has AES-NI.
        unsafe { cbc_decrypt(self.cpu, self, iv, data) }
    }

    #[target_feature(enable = "aes,sse2")]
    fn schedule(cpu: AesNi, key: &[u8]) -> Option<Keys> {
        let mut enc = [_mm_setzero_si128(); MAX_ROUND_KEYS];
        let rounds = match key.len() {
            16 => {
                // SAFETY: 16 readable bytes.
                let mut k = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
                enc[0] = k;
                macro_rules! step {
                    ($i:literal, $rcon:literal) => {
                        k = mix(k, assist!(k, $rcon, 0xff));
                        enc[$i] = k;
                    };
                }
                step!(1, 0x01);
                step!(2, 0x02);
                step!(3, 0x04);
                step!(4, 0x08);
                step!(5, 0x10);
                step!(6, 0x20);
                step!(7, 0x40);
                step!(8, 0x80);
                step!(9, 0x1b);
                step!(10, 0x36);
                10
            }
            32 => {
                // SAFETY: 32 readable bytes.
                let (mut a, mut b) = unsafe {
                    (
                        _mm_loadu_si128(key.as_ptr().cast()),
                        _mm_loadu_si128(key.as_ptr().add(16).cast()),
                    )
                };
                enc[0] = a;
                enc[1] = b;
                // Round keys 2i and 2i + 1 from the two before them; the last step makes 14.
                macro_rules! step {
                    ($i:literal, $rcon:literal) => {
                        a = mix(a, assist!(b, $rcon, 0xff));
                        enc[$i] = a;
                        b = mix(b, assist!(a, 0x00, 0xaa));
                        enc[$i + 1] = b;
                    };
                }
                step!(2, 0x01);
                step!(4, 0x02);
                step!(6, 0x04);
                step!(8, 0x08);
                step!(10, 0x10);
                step!(12, 0x20);
                a = mix(a, assist!(b, 0x40, 0xff));
                enc[14] = a;
                14
            }
            _ => return None,
        };
        // The equivalent inverse cipher: round keys reversed, the inner ones through
        // InvMixColumns.
        let mut dec = [_mm_setzero_si128(); MAX_ROUND_KEYS];
        dec[0] = enc[rounds];
        for i in 1..rounds {
            dec[i] = _mm_aesimc_si128(enc[rounds - i]);
        }
        dec[rounds] = enc[0];
        let keys = Keys {
            enc,
            dec,
            rounds,
            cpu,
        };
        enc.zeroize();
        dec.zeroize();
        Some(keys)
    }
}

/// [`Keys::encrypt_lanes`]; takes the proof of AES-NI so that no caller reaches it without.
#[target_feature(enable = "aes,sse2")]
fn cbc_encrypt_lanes(_cpu: AesNi, keys: &Keys, lanes: &mut [CbcLane<'_>]) {
    for group in lanes.chunks_mut(LANES) {
        let n = group.len();
        let mut chain = [_mm_setzero_si128(); LANES];
        let mut ptr = [std::ptr::null_mut::<u8>(); LANES];
        let mut left = [0usize; LANES];
        for (i, lane) in group.iter_mut().enumerate() {
            debug_assert!(lane.data.len().is_multiple_of(16));
            // SAFETY: 16 readable bytes.
            chain[i] = unsafe { _mm_loadu_si128(lane.iv.as_ptr().cast()) };
            ptr[i] = lane.data.as_mut_ptr();
            left[i] = lane.data.len() / 16;
        }
        loop {
            // The lanes with blocks left run side by side for as many blocks as the
            // shortest of them has.
            let mut active = [0usize; LANES];
            let mut k = 0;
            let mut steps = usize::MAX;
            for (i, &l) in left.iter().enumerate().take(n) {
                if l > 0 {
                    active[k] = i;
                    k += 1;
                    steps = steps.min(l);
                }
            }
            if k == 0 {
                break;
            }
            let mut s = [_mm_setzero_si128(); LANES];
            let mut p = [std::ptr::null_mut::<u8>(); LANES];
            for j in 0..k {
                s[j] = chain[active[j]];
                p[j] = ptr[active[j]];
            }
            // SAFETY: each p[j] points at `steps` or more blocks of its lane, which no other
            // lane overlaps (the lanes are distinct &mut slices).
            unsafe {
                match (k, keys.rounds) {
                    (1, 10) => run::<1, 10>(&keys.enc, &mut s, &p, steps),
                    (2, 10) => run::<2, 10>(&keys.enc, &mut s, &p, steps),
                    (3, 10) => run::<3, 10>(&keys.enc, &mut s, &p, steps),
                    (4, 10) => run::<4, 10>(&keys.enc, &mut s, &p, steps),
                    (5, 10) => run::<5, 10>(&keys.enc, &mut s, &p, steps),
                    (6, 10) => run::<6, 10>(&keys.enc, &mut s, &p, steps),
                    (7, 10) => run::<7, 10>(&keys.enc, &mut s, &p, steps),
                    (8, 10) => run::<8, 10>(&keys.enc, &mut s, &p, steps),
                    (1, _) => run::<1, 14>(&keys.enc, &mut s, &p, steps),
                    (2, _) => run::<2, 14>(&keys.enc, &mut s, &p, steps),
                    (3, _) => run::<3, 14>(&keys.enc, &mut s, &p, steps),
                    (4, _) => run::<4, 14>(&keys.enc, &mut s, &p, steps),
                    (5, _) => run::<5, 14>(&keys.enc, &mut s, &p, steps),
                    (6, _) => run::<6, 14>(&keys.enc, &mut s, &p, steps),
                    (7, _) => run::<7, 14>(&keys.enc, &mut s, &p, steps),
                    _ => run::<8, 14>(&keys.enc, &mut s, &p, steps),
                }
            }
            for j in 0..k {
                let i = active[j];
                chain[i] = s[j];
                // SAFETY: stays within (or one past the end of) the lane.
                ptr[i] = unsafe { ptr[i].add(steps * 16) };
                left[i] -= steps;
            }
        }
    }
}

/// `steps` blocks of `K` lanes in lockstep, AES with `NR` rounds.
///
/// # Safety
/// `p[0..K]` each point at `steps * 16` writable bytes, not overlapping.
#[inline]
#[target_feature(enable = "aes,sse2")]
unsafe fn run<const K: usize, const NR: usize>(
    rk: &[__m128i; MAX_ROUND_KEYS],
    chain: &mut [__m128i; LANES],
    p: &[*mut u8; LANES],
    steps: usize,
) {
    let mut s = [_mm_setzero_si128(); K];
    s.copy_from_slice(&chain[..K]);
    for b in 0..steps {
        let mut x = [_mm_setzero_si128(); K];
        for j in 0..K {
            // SAFETY: block b of lane j is inside its `steps` blocks.
            let block = unsafe { _mm_loadu_si128(p[j].add(b * 16).cast()) };
            x[j] = _mm_xor_si128(_mm_xor_si128(block, rk[0]), s[j]);
        }
        for key in &rk[1..NR] {
            for v in x.iter_mut() {
                *v = _mm_aesenc_si128(*v, *key);
            }
        }
        for j in 0..K {
            x[j] = _mm_aesenclast_si128(x[j], rk[NR]);
            // SAFETY: as above.
            unsafe { _mm_storeu_si128(p[j].add(b * 16).cast(), x[j]) };
            s[j] = x[j];
        }
    }
    chain[..K].copy_from_slice(&s);
}

/// [`Keys::decrypt`]; takes the proof of AES-NI so that no caller reaches it without.
#[target_feature(enable = "aes,sse2")]
fn cbc_decrypt(_cpu: AesNi, keys: &Keys, iv: &[u8; 16], data: &mut [u8]) {
    debug_assert!(data.len().is_multiple_of(16));
    // SAFETY: 16 readable bytes.
    let mut prev = unsafe { _mm_loadu_si128(iv.as_ptr().cast()) };
    let mut groups = data.chunks_exact_mut(16 * 8);
    for g in &mut groups {
        prev = match keys.rounds {
            10 => decrypt_group::<8, 10>(&keys.dec, prev, g),
            _ => decrypt_group::<8, 14>(&keys.dec, prev, g),
        };
    }
    for b in groups.into_remainder().chunks_exact_mut(16) {
        prev = match keys.rounds {
            10 => decrypt_group::<1, 10>(&keys.dec, prev, b),
            _ => decrypt_group::<1, 14>(&keys.dec, prev, b),
        };
    }
}

/// Decrypts `K` consecutive blocks of `g` (exactly `K * 16` bytes) in place; returns the
/// last ciphertext block, the next group's chaining value.
#[inline]
#[target_feature(enable = "aes,sse2")]
fn decrypt_group<const K: usize, const NR: usize>(
    dk: &[__m128i; MAX_ROUND_KEYS],
    prev: __m128i,
    g: &mut [u8],
) -> __m128i {
    assert_eq!(g.len(), K * 16);
    let mut c = [_mm_setzero_si128(); K];
    for (j, v) in c.iter_mut().enumerate() {
        // SAFETY: g holds K blocks.
        *v = unsafe { _mm_loadu_si128(g.as_ptr().add(j * 16).cast()) };
    }
    let mut x = [_mm_setzero_si128(); K];
    for j in 0..K {
        x[j] = _mm_xor_si128(c[j], dk[0]);
    }
    for key in &dk[1..NR] {
        for v in x.iter_mut() {
            *v = _mm_aesdec_si128(*v, *key);
        }
    }
    for j in 0..K {
        let before = if j == 0 { prev } else { c[j - 1] };
        let p = _mm_xor_si128(_mm_aesdeclast_si128(x[j], dk[NR]), before);
        // SAFETY: as above.
        unsafe { _mm_storeu_si128(g.as_mut_ptr().add(j * 16).cast(), p) };
    }
    c[K - 1]
}
