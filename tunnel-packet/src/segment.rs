//! Splitting what a TUN device with offloads hands out into packets that can go on the wire:
//! a GSO packet (TCP or UDP, IPv4 or IPv6) becomes `gso_size`-payload segments with their own
//! lengths, IPv4 ids, TCP sequence numbers, flags and complete checksums; a single packet with
//! a partial checksum gets it completed.

use thiserror::Error;

use crate::{
    checksum,
    vnet::{self, VnetHdr},
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet from the TUN device could not be split.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("packet of {len} bytes is too short for its headers")]
    Truncated { len: usize },
    #[error("not an IPv4 or IPv6 packet (version {version})")]
    NotIp { version: u8 },
    #[error("IPv4 header length {ihl} is invalid")]
    BadIhl { ihl: usize },
    #[error("GSO type {gso_type:#04x} is not supported")]
    UnsupportedGso { gso_type: u8 },
    #[error("GSO type {gso_type:#04x} does not match IP protocol {protocol}")]
    ProtocolMismatch { gso_type: u8, protocol: u8 },
    #[error("GSO segment size 0")]
    ZeroGsoSize,
    #[error("checksum start {start} + offset {offset} is outside the {len}-byte packet")]
    ChecksumOutOfRange {
        start: usize,
        offset: usize,
        len: usize,
    },
}

/// Where the transport header starts and which protocol it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct L3 {
    pub v6: bool,
    pub l4: usize,
    pub protocol: u8,
}

impl L3 {
    pub(crate) fn parse(p: &[u8]) -> Result<L3, SegmentError> {
        let first = *p.first().ok_or(SegmentError::Truncated { len: 0 })?;
        match first >> 4 {
            4 => {
                let ihl = usize::from(first & 0x0f) * 4;
                if ihl < 20 {
                    return Err(SegmentError::BadIhl { ihl });
                }
                if p.len() < ihl {
                    return Err(SegmentError::Truncated { len: p.len() });
                }
                Ok(L3 {
                    v6: false,
                    l4: ihl,
                    protocol: p[9],
                })
            }
            6 => {
                if p.len() < 40 {
                    return Err(SegmentError::Truncated { len: p.len() });
                }
                Ok(L3 {
                    v6: true,
                    l4: 40,
                    protocol: p[6],
                })
            }
            version => Err(SegmentError::NotIp { version }),
        }
    }

    /// Source and destination address bytes.
    pub(crate) fn addrs<'a>(&self, p: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        if self.v6 {
            (&p[8..24], &p[24..40])
        } else {
            (&p[12..16], &p[16..20])
        }
    }

    /// Writes the packet's length into the IP header (and the IPv4 header checksum).
    pub(crate) fn set_len(&self, p: &mut [u8], ipv4_id: Option<u16>) {
        if self.v6 {
            let len = (p.len() - 40) as u16;
            p[4..6].copy_from_slice(&len.to_be_bytes());
        } else {
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            if let Some(id) = ipv4_id {
                p[4..6].copy_from_slice(&id.to_be_bytes());
            }
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::finish(checksum::add(0, &p[..self.l4]));
            p[10..12].copy_from_slice(&c);
        }
    }

    /// Computes the TCP or UDP checksum of the whole packet from scratch.
    pub(crate) fn set_l4_checksum(&self, p: &mut [u8]) {
        let field = self.l4 + if self.protocol == TCP { 16 } else { 6 };
        p[field..field + 2].copy_from_slice(&[0, 0]);
        let (src, dst) = self.addrs(p);
        let acc = checksum::pseudo_header(src, dst, self.protocol, p.len() - self.l4);
        let mut c = checksum::finish(checksum::add(acc, &p[self.l4..]));
        if self.protocol == UDP && c == [0, 0] {
            c = [0xff, 0xff];
        }
        p[field..field + 2].copy_from_slice(&c);
    }
}

/// The longest IP plus TCP header (60 + 60 bytes).
const MAX_HEADERS: usize = 120;

/// Splits `packet` as `hdr` describes and calls `emit` with each wire-ready IP packet, in
/// order; returns how many.
///
/// The split is done in place, with no copy of the payload: segment `i`'s headers are
/// written just in front of its payload, over the end of the payload of the segments
/// before it, which `emit` has had already. So `packet` is not the GSO packet any more
/// afterwards, and `emit` must be done with a segment when it returns.
pub fn segment(
    hdr: &VnetHdr,
    packet: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, SegmentError> {
    let gso = hdr.gso_type & !vnet::GSO_ECN;
    if gso == vnet::GSO_NONE {
        if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
            complete_checksum(hdr, packet)?;
        }
        emit(packet);
        return Ok(1);
    }
    let l3 = L3::parse(packet)?;
    let want = match gso {
        vnet::GSO_TCPV4 | vnet::GSO_TCPV6 => TCP,
        vnet::GSO_UDP_L4 => UDP,
        _ => {
            return Err(SegmentError::UnsupportedGso {
                gso_type: hdr.gso_type,
            });
        }
    };
    let family_ok = match gso {
        vnet::GSO_TCPV4 => !l3.v6,
        vnet::GSO_TCPV6 => l3.v6,
        _ => true,
    };
    if l3.protocol != want || !family_ok {
        return Err(SegmentError::ProtocolMismatch {
            gso_type: hdr.gso_type,
            protocol: l3.protocol,
        });
    }
    let l4_hdr = if want == TCP {
        let off = *packet
            .get(l3.l4 + 12)
            .ok_or(SegmentError::Truncated { len: packet.len() })?;
        usize::from(off >> 4) * 4
    } else {
        8
    };
    let hlen = l3.l4 + l4_hdr;
    if (want == TCP && l4_hdr < 20) || packet.len() < hlen {
        return Err(SegmentError::Truncated { len: packet.len() });
    }
    let size = usize::from(hdr.gso_size);
    if size == 0 {
        return Err(SegmentError::ZeroGsoSize);
    }
    let payload_len = packet.len() - hlen;
    if payload_len <= size {
        // Nothing to split: finish the checksums in place.
        l3.set_len(packet, None);
        if want == UDP {
            let len = (packet.len() - l3.l4) as u16;
            packet[l3.l4 + 4..l3.l4 + 6].copy_from_slice(&len.to_be_bytes());
        }
        l3.set_l4_checksum(packet);
        emit(packet);
        return Ok(1);
    }
    let mut headers = [0u8; MAX_HEADERS];
    headers[..hlen].copy_from_slice(&packet[..hlen]);
    let headers = &headers[..hlen];
    let id = u16::from_be_bytes([headers[4], headers[5]]);
    let seq = u32::from_be_bytes([
        headers[l3.l4 + 4],
        headers[l3.l4 + 5],
        headers[l3.l4 + 6],
        headers[l3.l4 + 7],
    ]);
    let count = payload_len.div_ceil(size);
    for i in 0..count {
        // Segment i's payload is at hlen + i * size; its headers go right before it.
        let end = (hlen + (i + 1) * size).min(packet.len());
        let seg = &mut packet[i * size..end];
        seg[..hlen].copy_from_slice(headers);
        l3.set_len(seg, (!l3.v6).then(|| id.wrapping_add(i as u16)));
        if want == TCP {
            let s = seq.wrapping_add((i * size) as u32);
            seg[l3.l4 + 4..l3.l4 + 8].copy_from_slice(&s.to_be_bytes());
            let flags = &mut seg[l3.l4 + 13];
            if i + 1 < count {
                *flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                *flags &= !TCP_CWR;
            }
        } else {
            let len = (seg.len() - l3.l4) as u16;
            seg[l3.l4 + 4..l3.l4 + 6].copy_from_slice(&len.to_be_bytes());
        }
        l3.set_l4_checksum(seg);
        emit(seg);
    }
    Ok(count)
}

/// Completes a partial checksum: the field holds the pseudo-header sum; the sum from
/// `csum_start` to the end, complemented, replaces it.
fn complete_checksum(hdr: &VnetHdr, packet: &mut [u8]) -> Result<(), SegmentError> {
    let start = usize::from(hdr.csum_start);
    let offset = usize::from(hdr.csum_offset);
    if start + offset + 2 > packet.len() {
        return Err(SegmentError::ChecksumOutOfRange {
            start,
            offset,
            len: packet.len(),
        });
    }
    let mut c = checksum::finish(checksum::add(0, &packet[start..]));
    let is_udp =
        L3::parse(packet).is_ok_and(|l3| l3.protocol == UDP && l3.l4 == start && offset == 6);
    if is_udp && c == [0, 0] {
        c = [0xff, 0xff];
    }
    packet[start + offset..start + offset + 2].copy_from_slice(&c);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TCP/IP packet as a sender's stack would build it, checksums included.
    pub(crate) fn tcp_packet(
        v6: bool,
        seq: u32,
        flags: u8,
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let l4 = if v6 { 40 } else { 20 };
        let thl = 20 + options.len();
        let mut p = vec![0u8; l4 + thl + payload.len()];
        if v6 {
            p[0] = 0x60;
            p[6] = TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = TCP;
            p[12..16].copy_from_slice(&[10, 77, 0, 2]);
            p[16..20].copy_from_slice(&[172, 20, 0, 2]);
        }
        p[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        p[l4 + 8..l4 + 12].copy_from_slice(&7u32.to_be_bytes());
        p[l4 + 12] = ((thl / 4) as u8) << 4;
        p[l4 + 13] = flags;
        p[l4 + 14..l4 + 16].copy_from_slice(&512u16.to_be_bytes());
        p[l4 + 20..l4 + thl].copy_from_slice(options);
        p[l4 + thl..].copy_from_slice(payload);
        let l3 = L3::parse(&p).unwrap();
        l3.set_len(&mut p, None);
        l3.set_l4_checksum(&mut p);
        p
    }

    /// Whether the IPv4 header and the TCP/UDP checksums verify (a naive recomputation).
    pub(crate) fn checksums_ok(p: &[u8]) -> bool {
        let l3 = L3::parse(p).unwrap();
        let ip_ok = l3.v6 || checksum::finish(checksum::add(0, &p[..l3.l4])) == [0, 0];
        let (src, dst) = l3.addrs(p);
        let acc = checksum::pseudo_header(src, dst, l3.protocol, p.len() - l3.l4);
        ip_ok && checksum::finish(checksum::add(acc, &p[l3.l4..])) == [0, 0]
    }

    fn seq_of(p: &[u8]) -> u32 {
        let l4 = L3::parse(p).unwrap().l4;
        u32::from_be_bytes(p[l4 + 4..l4 + 8].try_into().unwrap())
    }

    fn split(hdr: &VnetHdr, p: &[u8]) -> Result<Vec<Vec<u8>>, SegmentError> {
        let mut p = p.to_vec();
        let mut out = Vec::new();
        segment(hdr, &mut p, |s| out.push(s.to_vec()))?;
        Ok(out)
    }

    fn tso(v6: bool, size: u16) -> VnetHdr {
        VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
            hdr_len: 0,
            gso_size: size,
            csum_start: if v6 { 40 } else { 20 },
            csum_offset: 16,
        }
    }

    #[test]
    fn a_tso_packet_becomes_segments_with_their_own_headers() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let big = tcp_packet(
            false,
            1000,
            0x18 | TCP_FIN | TCP_CWR,
            &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            &payload,
        );
        let segs = split(&tso(false, 1400), &big).unwrap();
        assert_eq!(segs.len(), 3);
        let sizes: Vec<usize> = segs.iter().map(|s| s.len() - 52).collect();
        assert_eq!(sizes, [1400, 1400, 200]);
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_ok(s), "segment {i} checksums");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0x1234 + i as u16,
                "IPv4 id"
            );
            assert_eq!(seq_of(s), 1000 + 1400 * i as u32);
            let flags = s[33];
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert_eq!(
                flags & (TCP_FIN | TCP_PSH) != 0,
                i == 2,
                "FIN and PSH on the last only"
            );
        }
        let joined: Vec<u8> = segs.iter().flat_map(|s| s[52..].to_vec()).collect();
        assert_eq!(joined, payload);
    }

    #[test]
    fn ipv6_and_a_packet_that_fits() {
        let payload = vec![0xabu8; 2801];
        let big = tcp_packet(true, u32::MAX - 10, 0x10, &[], &payload);
        let segs = split(&tso(true, 1400), &big).unwrap();
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|s| checksums_ok(s)));
        assert_eq!(seq_of(&segs[1]), 1389, "sequence numbers wrap");
        assert_eq!(
            u16::from_be_bytes([segs[2][4], segs[2][5]]),
            1 + 20,
            "IPv6 payload length"
        );
        // Already small enough: one packet, checksums finished.
        let mut small = tcp_packet(false, 5, 0x10, &[], &[1, 2, 3]);
        small[36..38].copy_from_slice(&[0x12, 0x34]);
        let segs = split(&tso(false, 1400), &small).unwrap();
        assert_eq!(segs.len(), 1);
        assert!(checksums_ok(&segs[0]));
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        let mut p = tcp_packet(false, 5, 0x18, &[], b"hello world");
        // What a stack leaves with CHECKSUM_PARTIAL: the pseudo-header sum, uncomplemented.
        let l3 = L3::parse(&p).unwrap();
        let (src, dst) = l3.addrs(&p);
        let partial = checksum::fold(checksum::pseudo_header(src, dst, TCP, p.len() - 20));
        p[36..38].copy_from_slice(&partial);
        let hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let segs = split(&hdr, &p).unwrap();
        assert!(checksums_ok(&segs[0]));
        let out_of_range = VnetHdr {
            csum_start: 60,
            ..hdr
        };
        assert!(matches!(
            split(&out_of_range, &p),
            Err(SegmentError::ChecksumOutOfRange { .. })
        ));
    }

    #[test]
    fn uso_datagrams() {
        let mut p = vec![0u8; 20 + 8 + 2500];
        p[0] = 0x45;
        p[8] = 64;
        p[9] = UDP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[28..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        let hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_UDP_L4,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let segs = split(&hdr, &p).unwrap();
        assert_eq!(
            segs.iter().map(Vec::len).collect::<Vec<_>>(),
            [1028, 1028, 528]
        );
        for s in &segs {
            assert!(checksums_ok(s));
            assert_eq!(
                usize::from(u16::from_be_bytes([s[24], s[25]])),
                s.len() - 20
            );
        }
    }

    #[test]
    fn malformed_packets_are_refused() {
        let ok = tcp_packet(false, 0, 0x10, &[], &[0; 3000]);
        assert_eq!(
            split(&tso(true, 1400), &ok),
            Err(SegmentError::ProtocolMismatch {
                gso_type: vnet::GSO_TCPV6,
                protocol: TCP
            })
        );
        assert_eq!(split(&tso(false, 0), &ok), Err(SegmentError::ZeroGsoSize));
        assert_eq!(
            split(&tso(false, 1400), &ok[..30]),
            Err(SegmentError::Truncated { len: 30 })
        );
        assert_eq!(
            split(&tso(false, 1400), &[0x35; 40]),
            Err(SegmentError::NotIp { version: 3 })
        );
        assert_eq!(
            split(&tso(false, 1400), &[0x44; 40]),
            Err(SegmentError::BadIhl { ihl: 16 })
        );
        let ufo = VnetHdr {
            gso_type: vnet::GSO_UDP,
            ..tso(false, 1400)
        };
        assert_eq!(
            split(&ufo, &ok),
            Err(SegmentError::UnsupportedGso {
                gso_type: vnet::GSO_UDP
            })
        );
    }

    proptest! {
        #[test]
        fn segments_reassemble_to_the_original(v6 in any::<bool>(), len in 0usize..20_000, size in 1u16..3000, seq in any::<u32>()) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let big = tcp_packet(v6, seq, 0x18, &[], &payload);
            let segs = split(&tso(v6, size), &big).unwrap();
            prop_assert_eq!(segs.len(), len.div_ceil(usize::from(size)).max(1));
            let hlen = if v6 { 60 } else { 40 };
            let mut joined = Vec::new();
            for s in &segs {
                prop_assert!(checksums_ok(s));
                prop_assert_eq!(seq_of(s), seq.wrapping_add(joined.len() as u32));
                joined.extend_from_slice(&s[hlen..]);
            }
            prop_assert_eq!(joined, payload);
        }

        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), hdr in proptest::collection::vec(any::<u8>(), 10)) {
            let h = VnetHdr::parse(&hdr).unwrap();
            let mut p = bytes;
            let _ = segment(&h, &mut p, |_| {});
        }
    }
}
