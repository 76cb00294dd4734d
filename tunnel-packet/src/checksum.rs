//! The Internet checksum (RFC 1071), summed eight bytes at a time.
//!
//! The one's complement sum does not depend on byte order (RFC 1071 §2(B)), so words are
//! summed in native order and the folded result, stored in native order, is the checksum's
//! network-order bytes.

/// Adds `data` to the running sum `acc` (an odd-length `data` is padded with a zero byte, so
/// only the last piece of a checksummed area may have an odd length).
///
/// 32-bit words are added into 64-bit lanes, which cannot carry out for any packet (2^32
/// words), so the loop has no carry chain and the compiler vectorises it; on x86-64 a
/// build of it for AVX2 is used where the CPU has AVX2. 2^16 = 1 modulo 2^16 - 1, so the
/// 32-bit words fold to the same one's complement sum as the 16-bit ones.
pub fn add(acc: u64, data: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= 256 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return end_around(acc, unsafe { sum_avx2(data) });
    }
    end_around(acc, sum_words(data))
}

/// `a + b` with the carry out added back in (one's complement addition).
fn end_around(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_avx2(data: &[u8]) -> u64 {
    sum_words(data)
}

/// The sum of `data` as native-order 32-bit words (the last zero-padded).
#[inline(always)]
fn sum_words(data: &[u8]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (l, w) in lanes.iter_mut().zip(b.chunks_exact(4)) {
            *l += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut sum: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 4];
        w[..rest.len()].copy_from_slice(rest);
        sum += u64::from(u32::from_ne_bytes(w));
    }
    sum
}

/// Folds a running sum to 16 bits, returned as the bytes to store (not yet complemented).
pub fn fold(acc: u64) -> [u8; 2] {
    let mut s = (acc >> 32) + (acc & 0xffff_ffff);
    s = (s >> 32) + (s & 0xffff_ffff);
    s = (s >> 16) + (s & 0xffff);
    s = (s >> 16) + (s & 0xffff);
    (s as u16).to_ne_bytes()
}

/// The checksum field value for an area whose sum is `acc`.
pub fn finish(acc: u64) -> [u8; 2] {
    let f = fold(acc);
    [!f[0], !f[1]]
}

/// The sum of the TCP/UDP pseudo-header for IPv4 (`src`, `dst` 4 bytes) or IPv6 (16 bytes).
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, l4_len: usize) -> u64 {
    let acc = add(add(0, src), dst);
    if src.len() == 4 {
        let len = (l4_len as u16).to_be_bytes();
        add(acc, &[0, protocol, len[0], len[1]])
    } else {
        let len = (l4_len as u32).to_be_bytes();
        add(acc, &[len[0], len[1], len[2], len[3], 0, 0, 0, protocol])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 written the obvious way: big-endian 16-bit words, carries folded at the end.
    fn naive(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
        while sum > 0xffff {
            sum = (sum >> 16) + (sum & 0xffff);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc1071_example_and_an_ipv4_header() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), [0xdd, 0xf2]);
        // A real IPv4 header whose checksum is b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(add(0, &h)), [0xb8, 0x61]);
        h[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(finish(add(0, &h)), [0, 0], "a valid header sums to zero");
    }

    proptest! {
        #[test]
        fn matches_the_naive_sum(data in proptest::collection::vec(any::<u8>(), 0..3000), split in 0usize..3000) {
            let expected = naive(&data).to_be_bytes();
            prop_assert_eq!(finish(add(0, &data)), expected);
            // Summing in two pieces gives the same when the first piece has an even length.
            let at = (split.min(data.len())) & !1;
            prop_assert_eq!(finish(add(add(0, &data[..at]), &data[at..])), expected);
        }
    }
}
