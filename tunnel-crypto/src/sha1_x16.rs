//! SHA-1 over sixteen messages at once with AVX-512: each 32-bit lane of a 512-bit register
//! holds the same state word of a different message, so one instruction does one step of
//! sixteen hashes. With the `vpternlogd` Boolean functions and `vprold` rotations a round
//! is about nine instructions for sixteen messages, several times the rate of the SHA
//! extensions on one message.
//!
//! Every function here requires AVX-512F and AVX-512BW. The proof that the CPU has them is
//! an [`Avx512`], which only [`Avx512::detect`] makes; `hmac_sha1.rs` keeps one with every
//! key that uses this backend.

use std::arch::x86_64::*;

/// Messages hashed side by side.
pub const LANES: usize = 16;

/// Proof that this CPU has AVX-512F and AVX-512BW. The field is private, so a value exists
/// only where [`Avx512::detect`] found both.
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    /// The proof, if this CPU has both extensions.
    pub fn detect() -> Option<Avx512> {
        (std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw"))
            .then_some(Avx512(()))
    }
}

/// SHA-1 round constants (FIPS 180-4 §4.2.1).
const K: [u32; 4] = [0x5a82_7999, 0x6ed9_eba1, 0x8f1b_bcdc, 0xca62_c1d6];

/// Sixteen SHA-1 states, word by word: `s[w]` lane `i` is word `w` of message `i`'s state.
pub type State = [__m512i; 5];

/// Sixteen message blocks, word by word (already in host order).
pub type Schedule = [__m512i; 16];

/// One SHA-1 compression of all sixteen lanes; lanes whose bit in `active` is clear keep
/// their state.
///
/// The eighty rounds are spelled out (no loop, no closure) so that the schedule and the
/// state stay in registers: a closure would not inherit this function's target features
/// and every intrinsic in it would become a call.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub fn compress(state: &mut State, w: Schedule, active: __mmask16) {
    let [mut a, mut b, mut c, mut d, mut e] = *state;
    let mut w = w;
    let k = [
        _mm512_set1_epi32(K[0] as i32),
        _mm512_set1_epi32(K[1] as i32),
        _mm512_set1_epi32(K[2] as i32),
        _mm512_set1_epi32(K[3] as i32),
    ];
    // One round: e += rol5(a) + f(b, c, d) + K + W[t]; b = rol30(b). The callers rotate
    // the names instead of moving values. From round 16 on, W[t] is computed in place.
    macro_rules! r {
        ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $t:literal, $f:literal, $k:literal) => {
            if $t >= 16 {
                let x = _mm512_ternarylogic_epi32::<0x96>(
                    w[($t + 13) % 16],
                    w[($t + 8) % 16],
                    w[($t + 2) % 16],
                );
                w[$t % 16] = _mm512_rol_epi32::<1>(_mm512_xor_si512(x, w[$t % 16]));
            }
            let f = _mm512_ternarylogic_epi32::<$f>($b, $c, $d);
            $e = _mm512_add_epi32(
                _mm512_add_epi32($e, _mm512_add_epi32(_mm512_rol_epi32::<5>($a), f)),
                _mm512_add_epi32(k[$k], w[$t % 16]),
            );
            $b = _mm512_rol_epi32::<30>($b);
        };
    }
    // Ch, Parity, Maj, Parity as ternary-logic truth tables of (b, c, d).
    r!(a, b, c, d, e, 0, 0xca, 0);
    r!(e, a, b, c, d, 1, 0xca, 0);
    r!(d, e, a, b, c, 2, 0xca, 0);
    r!(c, d, e, a, b, 3, 0xca, 0);
    r!(b, c, d, e, a, 4, 0xca, 0);
    r!(a, b, c, d, e, 5, 0xca, 0);
    r!(e, a, b, c, d, 6, 0xca, 0);
    r!(d, e, a, b, c, 7, 0xca, 0);
    r!(c, d, e, a, b, 8, 0xca, 0);
    r!(b, c, d, e, a, 9, 0xca, 0);
    r!(a, b, c, d, e, 10, 0xca, 0);
    r!(e, a, b, c, d, 11, 0xca, 0);
    r!(d, e, a, b, c, 12, 0xca, 0);
    r!(c, d, e, a, b, 13, 0xca, 0);
    r!(b, c, d, e, a, 14, 0xca, 0);
    r!(a, b, c, d, e, 15, 0xca, 0);
    r!(e, a, b, c, d, 16, 0xca, 0);
    r!(d, e, a, b, c, 17, 0xca, 0);
    r!(c, d, e, a, b, 18, 0xca, 0);
    r!(b, c, d, e, a, 19, 0xca, 0);
    r!(a, b, c, d, e, 20, 0x96, 1);
    r!(e, a, b, c, d, 21, 0x96, 1);
    r!(d, e, a, b, c, 22, 0x96, 1);
    r!(c, d, e, a, b, 23, 0x96, 1);
    r!(b, c, d, e, a, 24, 0x96, 1);
    r!(a, b, c, d, e, 25, 0x96, 1);
    r!(e, a, b, c, d, 26, 0x96, 1);
    r!(d, e, a, b, c, 27, 0x96, 1);
    r!(c, d, e, a, b, 28, 0x96, 1);
    r!(b, c, d, e, a, 29, 0x96, 1);
    r!(a, b, c, d, e, 30, 0x96, 1);
    r!(e, a, b, c, d, 31, 0x96, 1);
    r!(d, e, a, b, c, 32, 0x96, 1);
    r!(c, d, e, a, b, 33, 0x96, 1);
    r!(b, c, d, e, a, 34, 0x96, 1);
    r!(a, b, c, d, e, 35, 0x96, 1);
    r!(e, a, b, c, d, 36, 0x96, 1);
    r!(d, e, a, b, c, 37, 0x96, 1);
    r!(c, d, e, a, b, 38, 0x96, 1);
    r!(b, c, d, e, a, 39, 0x96, 1);
    r!(a, b, c, d, e, 40, 0xe8, 2);
    r!(e, a, b, c, d, 41, 0xe8, 2);
    r!(d, e, a, b, c, 42, 0xe8, 2);
    r!(c, d, e, a, b, 43, 0xe8, 2);
    r!(b, c, d, e, a, 44, 0xe8, 2);
    r!(a, b, c, d, e, 45, 0xe8, 2);
    r!(e, a, b, c, d, 46, 0xe8, 2);
    r!(d, e, a, b, c, 47, 0xe8, 2);
    r!(c, d, e, a, b, 48, 0xe8, 2);
    r!(b, c, d, e, a, 49, 0xe8, 2);
    r!(a, b, c, d, e, 50, 0xe8, 2);
    r!(e, a, b, c, d, 51, 0xe8, 2);
    r!(d, e, a, b, c, 52, 0xe8, 2);
    r!(c, d, e, a, b, 53, 0xe8, 2);
    r!(b, c, d, e, a, 54, 0xe8, 2);
    r!(a, b, c, d, e, 55, 0xe8, 2);
    r!(e, a, b, c, d, 56, 0xe8, 2);
    r!(d, e, a, b, c, 57, 0xe8, 2);
    r!(c, d, e, a, b, 58, 0xe8, 2);
    r!(b, c, d, e, a, 59, 0xe8, 2);
    r!(a, b, c, d, e, 60, 0x96, 3);
    r!(e, a, b, c, d, 61, 0x96, 3);
    r!(d, e, a, b, c, 62, 0x96, 3);
    r!(c, d, e, a, b, 63, 0x96, 3);
    r!(b, c, d, e, a, 64, 0x96, 3);
    r!(a, b, c, d, e, 65, 0x96, 3);
    r!(e, a, b, c, d, 66, 0x96, 3);
    r!(d, e, a, b, c, 67, 0x96, 3);
    r!(c, d, e, a, b, 68, 0x96, 3);
    r!(b, c, d, e, a, 69, 0x96, 3);
    r!(a, b, c, d, e, 70, 0x96, 3);
    r!(e, a, b, c, d, 71, 0x96, 3);
    r!(d, e, a, b, c, 72, 0x96, 3);
    r!(c, d, e, a, b, 73, 0x96, 3);
    r!(b, c, d, e, a, 74, 0x96, 3);
    r!(a, b, c, d, e, 75, 0x96, 3);
    r!(e, a, b, c, d, 76, 0x96, 3);
    r!(d, e, a, b, c, 77, 0x96, 3);
    r!(c, d, e, a, b, 78, 0x96, 3);
    r!(b, c, d, e, a, 79, 0x96, 3);
    let new = [a, b, c, d, e];
    for i in 0..5 {
        state[i] = _mm512_mask_blend_epi32(active, state[i], _mm512_add_epi32(state[i], new[i]));
    }
}

/// Loads one 64-byte block from each of sixteen places and transposes them into the
/// word-by-word schedule, big-endian words converted to host order.
///
/// # Safety
/// Every pointer points at 64 readable bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn load_blocks(ptrs: &[*const u8; LANES]) -> Schedule {
    let mut r = [_mm512_setzero_si512(); 16];
    for (v, p) in r.iter_mut().zip(ptrs) {
        // SAFETY: 64 readable bytes (the caller's promise).
        *v = unsafe { _mm512_loadu_si512(p.cast()) };
    }
    let mut t = transpose(r);
    // Byte swap within every 32-bit word.
    let swap = _mm512_set_epi64(
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
        0x0c0d_0e0f_0809_0a0b,
        0x0405_0607_0001_0203,
    );
    for v in t.iter_mut() {
        *v = _mm512_shuffle_epi8(*v, swap);
    }
    t
}

/// The 16x16 transpose of 32-bit words: output `t` holds word `t` of every input row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
    // Step 1 and 2: within each 128-bit lane, 4x4 transposes of rows 4g..4g+3.
    // After them b[4g + m], 128-bit lane k, holds word 4k + m of rows 4g..4g+3.
    let mut b = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let a0 = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
        let a1 = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
        let a2 = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
        let a3 = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
        b[4 * g] = _mm512_unpacklo_epi64(a0, a2);
        b[4 * g + 1] = _mm512_unpackhi_epi64(a0, a2);
        b[4 * g + 2] = _mm512_unpacklo_epi64(a1, a3);
        b[4 * g + 3] = _mm512_unpackhi_epi64(a1, a3);
    }
    // Step 3: for each m, a 4x4 transpose of 128-bit lanes across b[m], b[4 + m], b[8 + m],
    // b[12 + m]: output 4k + m gets lane k of each.
    let mut out = [_mm512_setzero_si512(); 16];
    for m in 0..4 {
        let (x0, x1, x2, x3) = (b[m], b[4 + m], b[8 + m], b[12 + m]);
        let t0 = _mm512_shuffle_i32x4::<0x44>(x0, x1);
        let t1 = _mm512_shuffle_i32x4::<0xee>(x0, x1);
        let t2 = _mm512_shuffle_i32x4::<0x44>(x2, x3);
        let t3 = _mm512_shuffle_i32x4::<0xee>(x2, x3);
        out[m] = _mm512_shuffle_i32x4::<0x88>(t0, t2);
        out[4 + m] = _mm512_shuffle_i32x4::<0xdd>(t0, t2);
        out[8 + m] = _mm512_shuffle_i32x4::<0x88>(t1, t3);
        out[12 + m] = _mm512_shuffle_i32x4::<0xdd>(t1, t3);
    }
    out
}

/// A state with every lane set to `s`.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn broadcast(s: &[u32; 5]) -> State {
    let mut v = [_mm512_setzero_si512(); 5];
    for (v, w) in v.iter_mut().zip(s) {
        *v = _mm512_set1_epi32(*w as i32);
    }
    v
}

/// Lane `i` of every state word.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn lanes(s: &State) -> [[u32; 5]; LANES] {
    let mut words = [[0u32; LANES]; 5];
    for (out, v) in words.iter_mut().zip(s) {
        // SAFETY: 64 writable bytes.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), *v) };
    }
    let mut r = [[0u32; 5]; LANES];
    for (i, lane) in r.iter_mut().enumerate() {
        for (w, word) in lane.iter_mut().zip(&words) {
            *w = word[i];
        }
    }
    r
}
