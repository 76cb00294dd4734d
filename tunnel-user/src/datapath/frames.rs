//! Building test frames (Ethernet + IPv4/IPv6 + TCP/UDP/ICMP) with correct checksums, for the
//! kernel-program tests and the classifier benchmark.

use std::net::IpAddr;

use super::reference::finish_checksums;

/// Transport of a test frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with flags (e.g. 0x02 SYN, 0x10 ACK) and an optional MSS option.
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        mss: Option<u16>,
    },
    /// UDP; `zero_checksum` leaves the IPv4 checksum field 0 ("none").
    Udp {
        sport: u16,
        dport: u16,
        zero_checksum: bool,
    },
    /// ICMP / ICMPv6 echo request (`reply` false) or reply with an identifier.
    Echo { id: u16, reply: bool },
    /// ICMPv6 of a given type (e.g. 135 neighbour solicitation), no body.
    Icmpv6 { icmp_type: u8 },
    /// Any other protocol number, with a few payload bytes.
    Other { proto: u8 },
}

/// A test frame description.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv6 only: insert a hop-by-hop options header of 8 bytes.
    pub hop_by_hop: bool,
}

impl Frame {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Frame {
            src,
            dst,
            l4,
            payload: b"tunnel test payload".to_vec(),
            hop_by_hop: false,
        }
    }

    /// The frame's bytes, checksums filled in.
    pub fn build(&self) -> Vec<u8> {
        let v6 = self.dst.is_ipv6();
        let (proto, mut l4) = self.transport(v6);
        l4.extend_from_slice(&self.payload);
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let total = (20 + l4.len()) as u16;
                f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
                f[16..18].copy_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (s, d) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let ext: Vec<u8> = if self.hop_by_hop {
                    // Next header, length 0 (8 bytes), PadN option of 4 bytes + Pad... = 6.
                    vec![proto, 0, 1, 4, 0, 0, 0, 0]
                } else {
                    Vec::new()
                };
                let next = if self.hop_by_hop { 0 } else { proto };
                let payload_len = (ext.len() + l4.len()) as u16;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&payload_len.to_be_bytes());
                f.extend_from_slice(&[next, 64]);
                f.extend_from_slice(&super::compile::addr16(s));
                f.extend_from_slice(&super::compile::addr16(d));
                f.extend_from_slice(&ext);
            }
        }
        f.extend_from_slice(&l4);
        finish_checksums(&mut f);
        if let L4::Udp {
            zero_checksum: true,
            ..
        } = self.l4
            && !v6
        {
            let at = 14 + 20 + 6;
            f[at] = 0;
            f[at + 1] = 0;
        }
        f
    }

    fn transport(&self, v6: bool) -> (u8, Vec<u8>) {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                mss,
            } => {
                let opts: Vec<u8> = match mss {
                    Some(m) => {
                        let [hi, lo] = m.to_be_bytes();
                        // MSS, then SACK-permitted and a NOP pair, like Linux SYNs start.
                        vec![2, 4, hi, lo, 4, 2, 1, 1]
                    }
                    None => Vec::new(),
                };
                let doff = ((20 + opts.len()) / 4) as u8;
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&1u32.to_be_bytes());
                h.extend_from_slice(&0u32.to_be_bytes());
                h.extend_from_slice(&[doff << 4, *flags, 0xff, 0xff, 0, 0, 0, 0]);
                h.extend_from_slice(&opts);
                (6, h)
            }
            L4::Udp { sport, dport, .. } => {
                let len = (8 + self.payload.len()) as u16;
                let mut h = Vec::new();
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&len.to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                (17, h)
            }
            L4::Echo { id, reply } => {
                let t = match (v6, reply) {
                    (false, false) => 8,
                    (false, true) => 0,
                    (true, false) => 128,
                    (true, true) => 129,
                };
                let mut h = vec![t, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&1u16.to_be_bytes());
                (if v6 { 58 } else { 1 }, h)
            }
            L4::Icmpv6 { icmp_type } => (58, vec![*icmp_type, 0, 0, 0, 0, 0, 0, 0]),
            L4::Other { proto } => (*proto, Vec::new()),
        }
    }
}
