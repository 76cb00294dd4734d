//! The virtio-net header (`struct virtio_net_hdr`, 10 bytes) that a TUN device opened with
//! `IFF_VNET_HDR` puts before every packet it hands out and expects before every packet
//! written. Fields are little-endian (a TUN device's default on little-endian machines;
//! tunnel never changes it with `TUNSETVNETBE`).

use thiserror::Error;

/// Bytes of the header.
pub const LEN: usize = 10;

/// `flags`: the L4 checksum is partial; complete it from `csum_start` and store it at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was already verified.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type`: one packet, no segmentation.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 to segment.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UFO (IPv4 fragmentation); never enabled by tunnel.
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 to segment.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP datagrams to segment (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN (CWR on the first only).
pub const GSO_ECN: u8 = 0x80;

/// A decoded virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of headers (IP + L4) in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// A header too short to decode.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("virtio-net header: {len} bytes, need {LEN}")]
pub struct Truncated {
    pub len: usize,
}

impl VnetHdr {
    /// Decodes the first [`LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<VnetHdr, Truncated> {
        if b.len() < LEN {
            return Err(Truncated { len: b.len() });
        }
        let u16le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16le(2),
            gso_size: u16le(4),
            csum_start: u16le(6),
            csum_offset: u16le(8),
        })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 52,
            gso_size: 1348,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.encode()), Ok(h));
        assert_eq!(
            h.encode(),
            [1, 0x81, 52, 0, 0x44, 0x05, 20, 0, 16, 0],
            "little-endian fields"
        );
        assert_eq!(VnetHdr::parse(&[0; 9]), Err(Truncated { len: 9 }));
    }
}
