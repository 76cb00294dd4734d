//! Header parsing: turns the bytes between `data` and `data_end` into a [`Packet`] (addresses,
//! ports, offsets). Every read goes through [`ptr_at`], the one bounds-checked accessor, so the
//! verifier sees a check before each access. Nothing here writes to the packet.

use tunnel_common::mapped_v4;

/// EtherType of IPv4 / IPv6 in network byte order as read from the frame.
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_HLEN: usize = 14;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Largest offset we follow into a packet; keeps every variable offset bounded for the verifier.
/// A transport header beyond it is unreadable.
pub const MAX_HEADER_OFF: usize = 256;

/// Returns a pointer to a `T` at `off` bytes past `start` if the whole `T` lies before `end`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, off: usize) -> Option<*const T> {
    let len = core::mem::size_of::<T>();
    if off > MAX_HEADER_OFF || start + off + len > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Reads `N` bytes at `off`. There is deliberately no one-byte reader: LLVM turns
/// `p + 1 > end` into `p >= end`, a form from which the verifier learns no readable range.
#[inline(always)]
fn bytes<const N: usize>(start: usize, end: usize, off: usize) -> Option<[u8; N]> {
    // SAFETY: ptr_at checked that the N bytes lie inside the packet; the read is unaligned.
    ptr_at::<[u8; N]>(start, end, off).map(|p| unsafe { *p })
}

/// Reads a 32-bit word at `at` (a pointer already bounds-checked by the caller), as stored:
/// network byte order in memory. Packet data has no alignment guarantee; the kernel's BPF
/// targets load unaligned words, and the verifier allows it where the CPU does.
#[inline(always)]
unsafe fn word_at(at: usize) -> u32 {
    // SAFETY: the caller checked `at..at + 4` lies inside the packet.
    unsafe { core::ptr::read_unaligned(at as *const u32) }
}

#[inline(always)]
fn be16(start: usize, end: usize, off: usize) -> Option<u16> {
    bytes::<2>(start, end, off).map(u16::from_be_bytes)
}

/// What the parser found.
pub enum Parsed {
    /// An IPv4 or IPv6 packet whose addresses could be read; [`Packet::transport`] says
    /// whether the rest could.
    Ip(Packet),
    /// Not IP (ARP, LLDP, ...).
    NotIp,
    /// IP, but not even the addresses could be read (truncated or inconsistent IP header).
    Malformed,
}

/// Whether the transport header (ports, flags) was read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Read: ports and flags are valid (0 for protocols without them).
    Read,
    /// A later fragment: the transport header is in the datagram's first fragment.
    InFirstFragment,
    /// Could not be read: truncated, behind an IPv6 extension chain longer than
    /// [`MAX_EXT_HEADERS`] or reaching past [`MAX_HEADER_OFF`]. `proto` is meaningless.
    Unreadable,
}

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more fragments to come: carries the transport header.
    First,
    /// A later fragment with more to come.
    Middle,
    /// The last fragment.
    Last,
}

/// The parts of an IP packet the classifier and the translators need.
#[derive(Clone, Copy)]
pub struct Packet {
    pub v6: bool,
    /// Transport protocol (after IPv6 extension headers); for an IPv6 later fragment the
    /// fragment header's next header, which may be another extension header.
    pub proto: u8,
    /// Addresses as network-order words, IPv4 as `::ffff:a.b.c.d` (the last word).
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Ports in host order; for ICMP echo the identifier stands in for the port of the side
    /// that chose it (the requester), the other side's port is 0. 0 when unknown.
    pub sport: u16,
    pub dport: u16,
    /// Offset of the IP header and of the transport header from `data`.
    pub l3_off: usize,
    pub l4_off: usize,
    pub transport: Transport,
    pub frag: Frag,
    /// The datagram's identification when fragmented (IPv4: 16 bits).
    pub frag_id: u32,
    /// TCP SYN flag set.
    pub tcp_syn: bool,
    /// ICMP / ICMPv6 type, 0 otherwise.
    pub icmp_type: u8,
}

impl Packet {
    /// The transport header was read.
    #[inline(always)]
    pub fn has_l4(&self) -> bool {
        self.transport == Transport::Read
    }

    /// A later fragment (no transport header of its own).
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        matches!(self.frag, Frag::Middle | Frag::Last)
    }

    /// Whether a packet without a readable transport header may be UDP: IPv4 says so in its
    /// header; an IPv6 later fragment whose fragment header names another extension header
    /// may carry UDP behind it.
    #[inline(always)]
    pub fn may_be_udp(&self) -> bool {
        self.proto == IPPROTO_UDP || (self.v6 && is_ext_header(self.proto))
    }
}

/// Parses a frame that starts with an Ethernet header.
#[inline(always)]
pub fn parse_eth(start: usize, end: usize) -> Parsed {
    let ip = match be16(start, end, 12) {
        Some(ETH_P_IPV4) => parse_ipv4(start, end, ETH_HLEN),
        Some(ETH_P_IPV6) => parse_ipv6(start, end, ETH_HLEN),
        Some(_) => return Parsed::NotIp,
        None => return Parsed::Malformed,
    };
    with_transport(start, end, ip)
}

/// Parses a packet that starts with the IP header (TUN devices, raw-IP uplinks). Such a link
/// carries nothing but IP, so a version other than 4 or 6 is a malformed packet, not another
/// protocol.
#[inline(always)]
pub fn parse_raw_ip(start: usize, end: usize) -> Parsed {
    // Shorter than an IPv4 header means it cannot be a valid IP packet of either family.
    let ip = match bytes::<20>(start, end, 0).map(|b| b[0] >> 4) {
        Some(4) => parse_ipv4(start, end, 0),
        Some(6) => parse_ipv6(start, end, 0),
        _ => return Parsed::Malformed,
    };
    with_transport(start, end, ip)
}

/// Reads the transport header of a packet whose IP headers lead to one
/// ([`Transport::Read`] from the IP parsers means "read it next"). Done once, after the two
/// families' parsers have merged, so that a header cut short is one more exit of a small
/// function rather than of each IP parser: LLVM stores every field of the packet on each
/// exit it returns from, and hoists those stores onto the common path.
#[inline(always)]
fn with_transport(start: usize, end: usize, ip: Option<Packet>) -> Parsed {
    let Some(mut p) = ip else {
        return Parsed::Malformed;
    };
    if p.transport == Transport::Read {
        p.transport = parse_l4(start, end, &mut p);
    }
    Parsed::Ip(p)
}

/// IPv4 header flag: more fragments follow.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// The IPv4 header; None when its addresses cannot be read.
#[inline(always)]
fn parse_ipv4(start: usize, end: usize, l3: usize) -> Option<Packet> {
    let hdr = ptr_at::<[u8; 20]>(start, end, l3)?;
    let at = hdr as usize;
    // SAFETY: ptr_at checked the 20 bytes are inside the packet.
    let (vihl, id, frag, proto, src, dst) = unsafe {
        let h = &*hdr;
        (
            h[0],
            u16::from_be_bytes([h[4], h[5]]),
            u16::from_be_bytes([h[6], h[7]]),
            h[9],
            word_at(at + 12),
            word_at(at + 16),
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // A whole datagram (the common case) decides with one test and carries no identification.
    let (frag, frag_id) = if frag & (IP_OFFSET | IP_MF) == 0 {
        (Frag::Whole, 0)
    } else {
        let at = match (frag & IP_OFFSET != 0, frag & IP_MF != 0) {
            (false, _) => Frag::First,
            (true, true) => Frag::Middle,
            (true, false) => Frag::Last,
        };
        (at, id as u32)
    };
    // A later fragment carries the middle of the datagram where a transport header would be.
    let transport = if matches!(frag, Frag::Middle | Frag::Last) {
        Transport::InFirstFragment
    } else {
        Transport::Read
    };
    Some(Packet {
        v6: false,
        proto,
        src: mapped_v4(src),
        dst: mapped_v4(dst),
        sport: 0,
        dport: 0,
        l3_off: l3,
        l4_off: l3 + ihl,
        transport,
        frag,
        frag_id,
        tcp_syn: false,
        icmp_type: 0,
    })
}

/// IPv6 extension headers we step over (Linux's `ipv6_ext_hdr`, without "no next header",
/// which ends the chain like a transport would); anything else ends the chain.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// At most this many extension headers are followed; a longer chain is unreadable.
pub const MAX_EXT_HEADERS: usize = 6;

/// Whether `proto` is an IPv6 extension header the parser steps over.
#[inline(always)]
pub fn is_ext_header(proto: u8) -> bool {
    matches!(
        proto,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_AUTH | NEXTHDR_DEST
    )
}

/// The IPv6 header and its extension chain; None when the addresses cannot be read.
#[inline(always)]
fn parse_ipv6(start: usize, end: usize, l3: usize) -> Option<Packet> {
    let hdr = ptr_at::<[u8; 40]>(start, end, l3)?;
    let at = hdr as usize;
    // SAFETY: ptr_at checked the 40 bytes are inside the packet.
    let (version, mut next, src, dst) = unsafe {
        let h = &*hdr;
        let word = |i: usize| word_at(at + i);
        (
            h[0] >> 4,
            h[6],
            [word(8), word(12), word(16), word(20)],
            [word(24), word(28), word(32), word(36)],
        )
    };
    if version != 6 {
        return None;
    }
    let mut p = Packet {
        v6: true,
        proto: next,
        src,
        dst,
        sport: 0,
        dport: 0,
        l3_off: l3,
        l4_off: l3 + 40,
        transport: Transport::Unreadable,
        frag: Frag::Whole,
        frag_id: 0,
        tcp_syn: false,
        icmp_type: 0,
    };
    let mut off = l3 + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let Some([nh, len]) = bytes::<2>(start, end, off) else {
                    return Some(p);
                };
                next = nh;
                off += (len as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let Some([nh, len]) = bytes::<2>(start, end, off) else {
                    return Some(p);
                };
                next = nh;
                off += (len as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let Some(h) = bytes::<8>(start, end, off) else {
                    return Some(p);
                };
                let frag = u16::from_be_bytes([h[2], h[3]]);
                next = h[0];
                off += 8;
                p.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                p.frag = match (frag & 0xfff8 != 0, frag & 1 != 0) {
                    (false, false) => Frag::Whole,
                    (false, true) => Frag::First,
                    (true, true) => Frag::Middle,
                    (true, false) => Frag::Last,
                };
                if p.is_later_fragment() {
                    // What follows is the middle of the datagram, not headers.
                    p.proto = next;
                    p.l4_off = off;
                    p.transport = Transport::InFirstFragment;
                    return Some(p);
                }
            }
            _ => break,
        }
        if off > MAX_HEADER_OFF {
            return Some(p);
        }
    }
    if is_ext_header(next) {
        // The chain goes on past MAX_EXT_HEADERS: whatever transport follows is unknown.
        return Some(p);
    }
    p.proto = next;
    p.l4_off = off;
    p.transport = Transport::Read;
    Some(p)
}

/// ICMP echo request/reply types for each family.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Fills ports and flags; [`Transport::Unreadable`] when the transport header is truncated.
/// Every protocol yields one tuple, written once: the fields stay in registers until then.
#[inline(always)]
fn parse_l4(start: usize, end: usize, p: &mut Packet) -> Transport {
    let off = p.l4_off;
    const NONE: (u16, u16, bool, u8, Transport) = (0, 0, false, 0, Transport::Unreadable);
    let (sport, dport, tcp_syn, icmp_type, transport) = match p.proto {
        IPPROTO_TCP => match ptr_at::<[u8; 20]>(start, end, off) {
            // SAFETY: ptr_at checked the 20 bytes are inside the packet.
            Some(h) => unsafe {
                let h = &*h;
                (
                    u16::from_be_bytes([h[0], h[1]]),
                    u16::from_be_bytes([h[2], h[3]]),
                    h[13] & 0x02 != 0,
                    0,
                    Transport::Read,
                )
            },
            None => NONE,
        },
        IPPROTO_UDP => match ptr_at::<[u8; 8]>(start, end, off) {
            // SAFETY: ptr_at checked the 8 bytes are inside the packet.
            Some(h) => unsafe {
                let h = &*h;
                (
                    u16::from_be_bytes([h[0], h[1]]),
                    u16::from_be_bytes([h[2], h[3]]),
                    false,
                    0,
                    Transport::Read,
                )
            },
            None => NONE,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 if (p.proto == IPPROTO_ICMPV6) == p.v6 => {
            match ptr_at::<[u8; 8]>(start, end, off) {
                Some(h) => {
                    // SAFETY: ptr_at checked the 8 bytes are inside the packet.
                    let h = unsafe { &*h };
                    let id = u16::from_be_bytes([h[4], h[5]]);
                    let (sport, dport) = match (p.v6, h[0]) {
                        (false, ICMP_ECHO_REQUEST) | (true, ICMPV6_ECHO_REQUEST) => (id, 0),
                        (false, ICMP_ECHO_REPLY) | (true, ICMPV6_ECHO_REPLY) => (0, id),
                        _ => (0, 0),
                    };
                    (sport, dport, false, h[0], Transport::Read)
                }
                None => NONE,
            }
        }
        _ => (0, 0, false, 0, Transport::Read),
    };
    p.sport = sport;
    p.dport = dport;
    p.tcp_syn = tcp_syn;
    p.icmp_type = icmp_type;
    transport
}

/// ICMP error types that carry the datagram they are about (RFC 792: destination
/// unreachable, which includes "fragmentation needed"; time exceeded; parameter problem).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// ICMPv6 errors (RFC 4443): destination unreachable, packet too big, time exceeded,
/// parameter problem.
const ICMPV6_ERRORS: core::ops::RangeInclusive<u8> = 1..=4;

/// Offset of the embedded datagram in an ICMP error: after type, code, checksum and the
/// four bytes of MTU, pointer or nothing.
const ICMP_ERROR_HEADER: usize = 8;

/// The datagram an ICMP error quotes, as far as the reverse NAT needs it: where its headers
/// are, its addresses and ports, and where its transport checksum is when the quote holds
/// it.
#[derive(Clone, Copy)]
pub struct Quoted {
    pub v6: bool,
    pub proto: u8,
    /// Its destination; its source is the tunnel address (checked).
    pub dst: [u32; 4],
    /// As [`Packet::sport`] / [`Packet::dport`] of the datagram when it was sent.
    pub sport: u16,
    pub dport: u16,
    pub l3_off: usize,
    /// Offset of its transport checksum, if the quote holds it and the checksum covers the
    /// addresses (TCP, UDP unless IPv4's zero, ICMPv6), with the helper's flags.
    pub csum: Option<(usize, bool)>,
}

/// The quoted datagram of an ICMP or ICMPv6 error (`pkt` read whole, not a fragment) when
/// it was sent from `tun`: the same family as the error, its IP header readable, a first or
/// only fragment, and its first eight transport bytes present (all RFC 792 promises). IPv6
/// extension headers in the quote are not followed.
#[inline(always)]
pub fn quoted_datagram(start: usize, end: usize, pkt: &Packet, tun: &[u32; 4]) -> Option<Quoted> {
    if pkt.transport != Transport::Read || pkt.frag != Frag::Whole {
        return None;
    }
    let is_error = if pkt.v6 {
        pkt.proto == IPPROTO_ICMPV6 && ICMPV6_ERRORS.contains(&pkt.icmp_type)
    } else {
        pkt.proto == IPPROTO_ICMP
            && matches!(
                pkt.icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
            )
    };
    if !is_error {
        return None;
    }
    let l3 = pkt.l4_off + ICMP_ERROR_HEADER;
    let (proto, dst, l4) = if pkt.v6 {
        let h = ptr_at::<[u8; 40]>(start, end, l3)?;
        let at = h as usize;
        // SAFETY: ptr_at checked the 40 bytes are inside the packet.
        unsafe {
            let h = &*h;
            let word = |i: usize| word_at(at + i);
            if h[0] >> 4 != 6 {
                return None;
            }
            if [word(8), word(12), word(16), word(20)] != *tun {
                return None;
            }
            (h[6], [word(24), word(28), word(32), word(36)], l3 + 40)
        }
    } else {
        let h = ptr_at::<[u8; 20]>(start, end, l3)?;
        let at = h as usize;
        // SAFETY: ptr_at checked the 20 bytes are inside the packet.
        unsafe {
            let h = &*h;
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            let offset = u16::from_be_bytes([h[6], h[7]]) & IP_OFFSET;
            if h[0] >> 4 != 4 || ihl < 20 || offset != 0 {
                return None;
            }
            if word_at(at + 12) != tun[3] {
                return None;
            }
            (h[9], mapped_v4(word_at(at + 16)), l3 + ihl)
        }
    };
    let t = bytes::<8>(start, end, l4)?;
    let ports = u16::from_be_bytes([t[0], t[1]]);
    let (sport, dport, csum) = match proto {
        IPPROTO_TCP => (
            ports,
            u16::from_be_bytes([t[2], t[3]]),
            Some((l4 + 16, false)),
        ),
        IPPROTO_UDP => {
            // IPv4's zero means "no checksum"; IPv6 UDP always has one.
            let none = !pkt.v6 && t[6] == 0 && t[7] == 0;
            let csum = (!none).then_some((l4 + 6, true));
            (ports, u16::from_be_bytes([t[2], t[3]]), csum)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 if (proto == IPPROTO_ICMPV6) == pkt.v6 => {
            let echo = if pkt.v6 {
                ICMPV6_ECHO_REQUEST
            } else {
                ICMP_ECHO_REQUEST
            };
            if t[0] != echo {
                return None;
            }
            // Only ICMPv6 has a pseudo-header in its checksum.
            let csum = pkt.v6.then_some((l4 + 2, false));
            (u16::from_be_bytes([t[4], t[5]]), 0, csum)
        }
        _ => return None,
    };
    // The checksum field counts only where the quote holds it.
    let csum = csum.filter(|(off, _)| off + 2 <= end - start);
    Some(Quoted {
        v6: pkt.v6,
        proto,
        dst,
        sport,
        dport,
        l3_off: l3,
        csum,
    })
}
