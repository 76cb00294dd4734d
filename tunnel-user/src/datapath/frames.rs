//! Building test frames (Ethernet + IPv4/IPv6 + TCP/UDP/ICMP) with correct checksums, for the
//! kernel-program tests and the classifier benchmark: IPv6 extension chains of any length and
//! fragments of either family included.

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

/// An IPv6 extension header of a test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop (0) or destination (60) options, or a routing header (43): `kind`, of
    /// `8 * (units + 1)` bytes, padded with a PadN option or zeros.
    Options { kind: u8, units: u8 },
    /// An authentication header (51) of `4 * (units + 2)` bytes.
    Auth { units: u8 },
    /// A fragment header (44). A later fragment (offset not 0) is followed by payload only:
    /// the headers after it and the transport header are in the first fragment.
    Fragment(Fragment),
}

impl Ext {
    fn kind(&self) -> u8 {
        match self {
            Ext::Options { kind, .. } => *kind,
            Ext::Auth { .. } => 51,
            Ext::Fragment(_) => 44,
        }
    }
}

/// Where a fragment lies in its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Identification (IPv4 uses the low 16 bits).
    pub id: u32,
    /// Offset in 8-byte units; 0 is the first fragment, which carries the transport header.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

impl Fragment {
    fn later(&self) -> bool {
        self.offset != 0
    }
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
    /// IPv6 only: extension headers after the hop-by-hop one, in order.
    pub ext: Vec<Ext>,
    /// IPv4 only: the fragment fields of the IP header. (IPv6 carries an [`Ext::Fragment`];
    /// [`Frame::fragment`] sets whichever the family uses.)
    pub ipv4_fragment: Option<Fragment>,
}

impl Frame {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Frame {
            src,
            dst,
            l4,
            payload: b"tunnel test payload".to_vec(),
            hop_by_hop: false,
            ext: Vec::new(),
            ipv4_fragment: None,
        }
    }

    /// Makes this frame a fragment: the IPv4 header's fields, or an IPv6 fragment header
    /// where Linux puts it (`ip6_find_1stfragopt`): after the part every hop reads
    /// (hop-by-hop options, routing headers and destination options before a routing
    /// header), so that destination options for the final destination, an authentication
    /// header and the transport header travel in the first fragment only.
    pub fn fragment(mut self, id: u32, offset: u16, more: bool) -> Self {
        let f = Fragment { id, offset, more };
        if self.dst.is_ipv6() {
            let last_routing = self.ext.iter().rposition(|e| e.kind() == 43);
            let unfragmentable = self
                .ext
                .iter()
                .enumerate()
                .take_while(|(i, e)| match e.kind() {
                    0 | 43 => true,
                    60 => last_routing.is_some_and(|r| *i < r),
                    _ => false,
                })
                .count();
            self.ext.insert(unfragmentable, Ext::Fragment(f));
        } else {
            self.ipv4_fragment = Some(f);
        }
        self
    }

    /// Whether this frame is a later fragment (no transport header).
    fn later_fragment(&self) -> bool {
        self.ipv4_fragment.is_some_and(|f| f.later())
            || self
                .ext
                .iter()
                .any(|e| matches!(e, Ext::Fragment(f) if f.later()))
    }

    /// The IPv6 extension headers as bytes, each naming the next; the last names `proto`.
    /// Stops after a later fragment's header.
    fn ext_bytes(&self, proto: u8) -> (u8, Vec<u8>) {
        let mut chain: Vec<Ext> = Vec::new();
        if self.hop_by_hop {
            chain.push(Ext::Options { kind: 0, units: 0 });
        }
        chain.extend(self.ext.iter().copied());
        let mut out = Vec::new();
        let first = chain.first().map_or(proto, Ext::kind);
        for (i, e) in chain.iter().enumerate() {
            let next = chain.get(i + 1).map_or(proto, Ext::kind);
            match e {
                Ext::Options { units, .. } => {
                    let len = 8 * (usize::from(*units) + 1);
                    let mut h = vec![next, *units];
                    // One PadN option filling the rest where it can, else Pad1 options.
                    if let Ok(pad) = u8::try_from(len - 4) {
                        h.extend_from_slice(&[1, pad]);
                    }
                    h.resize(len, 0);
                    out.extend_from_slice(&h);
                }
                Ext::Auth { units } => {
                    let len = 4 * (usize::from(*units) + 2);
                    let mut h = vec![next, *units];
                    h.resize(len, 0);
                    out.extend_from_slice(&h);
                }
                Ext::Fragment(f) => {
                    let field = (f.offset << 3) | u16::from(f.more);
                    out.extend_from_slice(&[next, 0]);
                    out.extend_from_slice(&field.to_be_bytes());
                    out.extend_from_slice(&f.id.to_be_bytes());
                    if f.later() {
                        break;
                    }
                }
            }
        }
        (first, out)
    }

    /// The frame's bytes, checksums filled in.
    pub fn build(&self) -> Vec<u8> {
        let v6 = self.dst.is_ipv6();
        let (proto, mut l4) = self.transport(v6);
        if self.later_fragment() {
            l4.clear();
        }
        l4.extend_from_slice(&self.payload);
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let total = (20 + l4.len()) as u16;
                f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
                f[16..18].copy_from_slice(&total.to_be_bytes());
                if let Some(frag) = self.ipv4_fragment {
                    let field = (frag.offset & 0x1fff) | if frag.more { 0x2000 } else { 0 };
                    f[18..20].copy_from_slice(&(frag.id as u16).to_be_bytes());
                    f[20..22].copy_from_slice(&field.to_be_bytes());
                }
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (s, d) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let (next, ext) = self.ext_bytes(proto);
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
            && !self.later_fragment()
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
