//! Byte-order helpers shared by the decoders and encoders.
//!
//! Owns nothing protocol specific: bounds-checked big/little-endian reads that return `None`
//! instead of panicking, so each layer can turn a short read into its own typed error.

/// Reads a big-endian `u16` at `at`, or `None` when the slice is too short.
pub(crate) fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Reads a big-endian `u32` at `at`, or `None` when the slice is too short.
pub(crate) fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Reads a little-endian `u32` at `at` (the ESP SPI in the key exchange block is little-endian).
pub(crate) fn le32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Overwrites a big-endian `u32` at `at`; callers only patch offsets they wrote themselves.
pub(crate) fn put_be32(buf: &mut [u8], at: usize, value: u32) {
    if let Some(dst) = at.checked_add(4).and_then(|end| buf.get_mut(at..end)) {
        dst.copy_from_slice(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let buf = [1u8, 2, 3, 4, 5];
        assert_eq!(be16(&buf, 0), Some(0x0102));
        assert_eq!(be32(&buf, 1), Some(0x0203_0405));
        assert_eq!(le32(&buf, 0), Some(0x0403_0201));
        assert_eq!(be16(&buf, 4), None);
        assert_eq!(be32(&buf, 2), None);
        assert_eq!(be32(&buf, usize::MAX), None);
    }

    #[test]
    fn writes_ignore_out_of_range() {
        let mut buf = [0u8; 4];
        put_be32(&mut buf, 0, 0xdead_beef);
        assert_eq!(buf, [0xde, 0xad, 0xbe, 0xef]);
        put_be32(&mut buf, 1, 0);
        assert_eq!(buf, [0xde, 0xad, 0xbe, 0xef]);
    }
}
