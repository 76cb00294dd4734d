//! Joining consecutive packets of a flow into one GSO packet before it is written into a TUN
//! device with offloads, so the kernel takes a train of them in one `write`: TCP segments
//! (TSO) always, UDP datagrams (USO) when the kernel takes them ([`Coalescer::with_udp`]).
//!
//! The rules are the kernel's GRO rules, kept conservative so that the kernel's split of a
//! joined packet gives back the packets that were joined (see `docs/fastpath.md`). TCP: same
//! flow and headers, consecutive sequence numbers, ACK with at most PSH (which closes the
//! train). UDP: same flow and IP header, consecutive IPv4 ids (the kernel numbers the
//! datagrams it splits that way), a UDP length that matches, a checksum present, at most
//! [`MAX_UDP_SEGMENTS`]. In both, every packet but the last has the first one's payload
//! size; a shorter one closes the train. Packets that cannot be joined pass alone,
//! unchanged, with an all-zero header. Joined packets carry a partial checksum (the
//! pseudo-header sum) and `F_NEEDS_CSUM`, as a GSO packet from the stack would. Nothing is
//! held past [`Coalescer::flush`], which the caller runs at the end of every receive batch.

use crate::{
    MAX_PACKET, checksum,
    segment::L3,
    vnet::{self, VnetHdr},
};

/// Flows joined at the same time.
pub const MAX_FLOWS: usize = 8;
/// Most datagrams in one joined UDP packet (the kernel's `UDP_MAX_SEGMENTS` on older
/// kernels; newer ones take 128).
pub const MAX_UDP_SEGMENTS: usize = 64;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// What the next packet of a train must carry to join it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// TCP: this sequence number.
    Seq(u32),
    /// UDP: this IPv4 id (none on IPv6).
    Id(Option<u16>),
}

struct Pending {
    buf: Vec<u8>,
    l3: L3,
    /// IP plus TCP or UDP header bytes.
    hlen: usize,
    /// Payload of the first packet: every packet but the last has it.
    size: usize,
    segments: usize,
    next: Next,
    /// No more packets may join (the last was short or had PSH).
    closed: bool,
}

/// Joins TCP segments (and UDP datagrams); see the module documentation.
pub struct Coalescer {
    pending: Vec<Pending>,
    spare: Vec<Vec<u8>>,
    udp: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

/// A packet that may be joined: its parsed headers.
struct Candidate {
    l3: L3,
    hlen: usize,
    /// Its own sequence number or id.
    at: Next,
    psh: bool,
}

/// The IP header describes the packet exactly: no IPv4 options, not a fragment.
fn plain_ip(p: &[u8], l3: &L3) -> bool {
    if l3.v6 {
        usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len()
    } else {
        let frag = u16::from_be_bytes([p[6], p[7]]);
        l3.l4 == 20
            && frag & 0x3fff == 0
            && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()
    }
}

fn candidate(p: &[u8], udp: bool) -> Option<Candidate> {
    let l3 = L3::parse(p).ok()?;
    if !(l3.protocol == TCP || udp && l3.protocol == UDP) || !plain_ip(p, &l3) {
        return None;
    }
    let l4 = l3.l4;
    if l3.protocol == UDP {
        let hlen = l4 + 8;
        let len = usize::from(u16::from_be_bytes([*p.get(l4 + 4)?, *p.get(l4 + 5)?]));
        if p.len() <= hlen || len != p.len() - l4 || p[l4 + 6..l4 + 8] == [0, 0] {
            return None;
        }
        let id = (!l3.v6).then(|| u16::from_be_bytes([p[4], p[5]]));
        return Some(Candidate {
            l3,
            hlen,
            at: Next::Id(id),
            psh: false,
        });
    }
    let thl = usize::from(*p.get(l4 + 12)? >> 4) * 4;
    let hlen = l4 + thl;
    if thl < 20 || p.len() <= hlen {
        return None;
    }
    let flags = p[l4 + 13];
    if flags & !PSH != ACK || p[l4 + 18..l4 + 20] != [0, 0] {
        return None;
    }
    Some(Candidate {
        l3,
        hlen,
        at: Next::Seq(u32::from_be_bytes([
            p[l4 + 4],
            p[l4 + 5],
            p[l4 + 6],
            p[l4 + 7],
        ])),
        psh: flags & PSH != 0,
    })
}

/// Same flow: addresses and ports.
fn same_flow(a: &[u8], b: &[u8], l3: &L3) -> bool {
    let addrs = if l3.v6 { 8..40 } else { 12..20 };
    a[addrs.clone()] == b[addrs] && a[l3.l4..l3.l4 + 4] == b[l3.l4..l3.l4 + 4]
}

/// The sequence number or id the packet after `at` with `payload` bytes must carry.
fn after(at: Next, payload: usize) -> Next {
    match at {
        Next::Seq(seq) => Next::Seq(seq.wrapping_add(payload as u32)),
        Next::Id(id) => Next::Id(id.map(|id| id.wrapping_add(1))),
    }
}

impl Coalescer {
    /// Joins TCP segments only.
    pub fn new() -> Self {
        Coalescer {
            pending: Vec::with_capacity(MAX_FLOWS),
            // Buffers are made when a flow first needs one and kept for reuse: a coalescer
            // that never joins anything costs nothing.
            spare: Vec::new(),
            udp: false,
        }
    }

    /// Joins UDP datagrams too: for a device whose kernel takes USO packets (Linux 6.2 on,
    /// where `TUNSETOFFLOAD` accepts `TUN_F_USO4`).
    pub fn with_udp() -> Self {
        Coalescer {
            udp: true,
            ..Coalescer::new()
        }
    }

    /// Takes one IP packet; `write` gets every packet that is ready, header first.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&VnetHdr, &[u8])) {
        let Some(c) = candidate(packet, self.udp) else {
            // Flush this flow's pending packet first so its packets stay in order.
            if let Ok(l3) = L3::parse(packet)
                && (l3.protocol == TCP || l3.protocol == UDP)
                && packet.len() >= l3.l4 + 4
                && let Some(i) = self.find(packet, &l3)
            {
                self.flush_one(i, write);
            }
            write(&VnetHdr::default(), packet);
            return;
        };
        if let Some(i) = self.find(packet, &c.l3) {
            if self.try_append(i, packet, &c) {
                return;
            }
            self.flush_one(i, write);
        }
        if self.pending.len() == MAX_FLOWS {
            self.flush_one(0, write);
        }
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(MAX_PACKET));
        buf.clear();
        buf.extend_from_slice(packet);
        let size = packet.len() - c.hlen;
        self.pending.push(Pending {
            buf,
            l3: c.l3,
            hlen: c.hlen,
            size,
            segments: 1,
            next: after(c.at, size),
            closed: c.psh,
        });
    }

    /// Writes everything pending.
    pub fn flush(&mut self, write: &mut impl FnMut(&VnetHdr, &[u8])) {
        while !self.pending.is_empty() {
            self.flush_one(0, write);
        }
    }

    fn find(&self, packet: &[u8], l3: &L3) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.l3 == *l3 && same_flow(&p.buf, packet, l3))
    }

    fn try_append(&mut self, i: usize, packet: &[u8], c: &Candidate) -> bool {
        let p = &mut self.pending[i];
        let payload = packet.len() - c.hlen;
        let l4 = p.l3.l4;
        let fits = if p.l3.v6 {
            p.buf.len() - 40 + payload <= 65_535
        } else {
            p.buf.len() + payload <= 65_535
        };
        // Version, traffic class or TOS, flow label, flags, TTL or hop limit, protocol.
        let same_ip = if p.l3.v6 {
            p.buf[..4] == packet[..4] && p.buf[6..8] == packet[6..8]
        } else {
            p.buf[..2] == packet[..2] && p.buf[6..10] == packet[6..10]
        };
        let same_l4 = match c.at {
            // Acknowledgement, data offset, window, options: identical.
            Next::Seq(_) => {
                p.buf[l4 + 8..l4 + 13] == packet[l4 + 8..l4 + 13]
                    && p.buf[l4 + 14..l4 + 16] == packet[l4 + 14..l4 + 16]
                    && p.buf[l4 + 20..p.hlen] == packet[l4 + 20..c.hlen]
            }
            // The UDP header is the ports (same flow), length and checksum.
            Next::Id(_) => p.segments < MAX_UDP_SEGMENTS,
        };
        if p.closed
            || c.hlen != p.hlen
            || c.at != p.next
            || payload > p.size
            || !fits
            || !same_ip
            || !same_l4
        {
            return false;
        }
        p.buf.extend_from_slice(&packet[c.hlen..]);
        p.segments += 1;
        p.next = after(c.at, payload);
        if c.psh {
            p.buf[l4 + 13] |= PSH;
        }
        p.closed = c.psh || payload < p.size;
        true
    }

    fn flush_one(&mut self, i: usize, write: &mut impl FnMut(&VnetHdr, &[u8])) {
        let mut p = self.pending.remove(i);
        if p.segments == 1 {
            write(&VnetHdr::default(), &p.buf);
        } else {
            let l4 = p.l3.l4;
            let protocol = p.l3.protocol;
            p.l3.set_len(&mut p.buf, None);
            let l4_len = p.buf.len() - l4;
            if protocol == UDP {
                p.buf[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            }
            let (src, dst) = p.l3.addrs(&p.buf);
            let partial = checksum::fold(checksum::pseudo_header(src, dst, protocol, l4_len));
            let (gso_type, csum_offset) = match (protocol == UDP, p.l3.v6) {
                (true, _) => (vnet::GSO_UDP_L4, 6),
                (false, false) => (vnet::GSO_TCPV4, 16),
                (false, true) => (vnet::GSO_TCPV6, 16),
            };
            let field = l4 + usize::from(csum_offset);
            p.buf[field..field + 2].copy_from_slice(&partial);
            let hdr = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type,
                hdr_len: p.hlen as u16,
                gso_size: p.size as u16,
                csum_start: l4 as u16,
                csum_offset,
            };
            write(&hdr, &p.buf);
        }
        self.spare.push(p.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{
        segment,
        tests::{checksums_ok, tcp_packet},
    };
    use proptest::prelude::*;

    /// Runs packets through a coalescer of TCP segments, flushing at the end; returns what
    /// was written.
    fn run(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        run_through(Coalescer::new(), packets)
    }

    /// The same through a coalescer of TCP segments and UDP datagrams.
    fn run_udp(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        run_through(Coalescer::with_udp(), packets)
    }

    fn run_through(mut c: Coalescer, packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut w = |h: &VnetHdr, p: &[u8]| out.push((*h, p.to_vec()));
        for p in packets {
            c.push(p, &mut w);
        }
        c.flush(&mut w);
        out
    }

    /// Splits written packets again, as the kernel would.
    fn resegment(written: &[(VnetHdr, Vec<u8>)]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (h, p) in written {
            let mut p = p.clone();
            segment(h, &mut p, |s| out.push(s.to_vec())).unwrap();
        }
        out
    }

    fn train(v6: bool, seq: u32, sizes: &[usize], last_psh: bool) -> Vec<Vec<u8>> {
        let mut seq = seq;
        let mut out = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let flags = if last_psh && i + 1 == sizes.len() {
                0x18
            } else {
                0x10
            };
            let payload: Vec<u8> = (0..n).map(|j| (j + i) as u8).collect();
            let mut p = tcp_packet(
                v6,
                seq,
                flags,
                &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3],
                &payload,
            );
            if !v6 {
                p[4..6].copy_from_slice(&(0x1234u16 + i as u16).to_be_bytes());
                let l3 = L3::parse(&p).unwrap();
                l3.set_len(&mut p, None);
            }
            out.push(p);
            seq = seq.wrapping_add(n as u32);
        }
        out
    }

    /// UDP datagrams of one flow as a connected socket sends them: consecutive IPv4 ids from
    /// `id`, checksums set.
    fn udp_train(v6: bool, id: u16, sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let l4 = if v6 { 40 } else { 20 };
                let mut p = vec![0u8; l4 + 8 + n];
                if v6 {
                    p[0] = 0x60;
                    p[1..4].copy_from_slice(&[0x0a, 0xbc, 0xde]);
                    p[6] = UDP;
                    p[7] = 64;
                    p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
                    p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
                } else {
                    p[0] = 0x45;
                    p[6] = 0x40;
                    p[8] = 64;
                    p[9] = UDP;
                    p[12..16].copy_from_slice(&[10, 77, 0, 2]);
                    p[16..20].copy_from_slice(&[172, 20, 0, 2]);
                }
                p[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
                p[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
                p[l4 + 4..l4 + 6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
                for (j, b) in p[l4 + 8..].iter_mut().enumerate() {
                    *b = (j * 3 + i) as u8;
                }
                let l3 = L3::parse(&p).unwrap();
                l3.set_len(&mut p, Some(id.wrapping_add(i as u16)));
                l3.set_l4_checksum(&mut p);
                p
            })
            .collect()
    }

    #[test]
    fn udp_datagrams_become_one_uso_packet_and_split_back_identically() {
        for v6 in [false, true] {
            // The ids wrap around on the way.
            let dgrams = udp_train(v6, 0xfffe, &[1200, 1200, 1200, 64]);
            let written = run_udp(&dgrams);
            assert_eq!(written.len(), 1, "v6={v6}: one write");
            let (h, p) = &written[0];
            assert_eq!(
                (h.gso_type, h.gso_size, h.flags, h.csum_offset),
                (vnet::GSO_UDP_L4, 1200, vnet::F_NEEDS_CSUM, 6)
            );
            assert_eq!(usize::from(h.hdr_len), if v6 { 48 } else { 28 });
            assert_eq!(p.len(), dgrams[0].len() + 1200 * 2 + 64);
            assert_eq!(resegment(&written), dgrams, "v6={v6}");
            // Without USO on the device they pass alone, untouched.
            let alone: Vec<_> = dgrams
                .iter()
                .map(|d| (VnetHdr::default(), d.clone()))
                .collect();
            assert_eq!(run(&dgrams), alone);
        }
    }

    #[test]
    fn udp_datagrams_that_would_not_split_back_the_same_pass_alone() {
        let single = |d: &[Vec<u8>]| -> Vec<(VnetHdr, Vec<u8>)> {
            d.iter().map(|p| (VnetHdr::default(), p.clone())).collect()
        };
        // Ids that do not follow each other.
        let mut gap = udp_train(false, 10, &[500]);
        gap.extend(udp_train(false, 12, &[500]));
        assert_eq!(run_udp(&gap), single(&gap));
        // No checksum (IPv4 allows it; the kernel's split would add one).
        let mut bare = udp_train(false, 1, &[500, 500]);
        for p in &mut bare {
            p[26..28].copy_from_slice(&[0, 0]);
        }
        assert_eq!(run_udp(&bare), single(&bare));
        // A UDP length that does not match the packet.
        let mut long = udp_train(false, 1, &[500, 500]);
        long[1][24..26].copy_from_slice(&400u16.to_be_bytes());
        assert_eq!(run_udp(&long).len(), 2);
        // Another TTL, a longer datagram after a shorter one.
        let mut ttl = udp_train(false, 1, &[500, 500]);
        ttl[1][8] = 63;
        let l3 = L3::parse(&ttl[1]).unwrap();
        l3.set_len(&mut ttl[1], None);
        assert_eq!(run_udp(&ttl), single(&ttl));
        let grow = udp_train(true, 0, &[500, 600]);
        assert_eq!(run_udp(&grow), single(&grow));
        // A zero-checksum datagram of a joined flow: what was joined goes first.
        let mut flow = udp_train(false, 1, &[500, 500, 500]);
        flow[2][26..28].copy_from_slice(&[0, 0]);
        let w = run_udp(&flow);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1], (VnetHdr::default(), flow[2].clone()));
        assert_eq!(resegment(&w), flow);
    }

    #[test]
    fn at_most_the_kernels_udp_segment_count_is_joined() {
        let dgrams = udp_train(false, 0, &[64; MAX_UDP_SEGMENTS + 10]);
        let w = run_udp(&dgrams);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].1.len() - 28) / 64, MAX_UDP_SEGMENTS);
        assert_eq!(resegment(&w), dgrams);
    }

    #[test]
    fn a_train_becomes_one_gso_packet_and_splits_back_identically() {
        for v6 in [false, true] {
            let segs = train(v6, 100, &[1300, 1300, 1300, 700], true);
            let written = run(&segs);
            assert_eq!(written.len(), 1, "one write");
            let (h, p) = &written[0];
            assert_eq!(
                h.gso_type,
                if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 }
            );
            assert_eq!((h.gso_size, h.flags), (1300, vnet::F_NEEDS_CSUM));
            assert_eq!(p.len(), segs[0].len() - 1300 + 4600);
            assert_eq!(resegment(&written), segs, "v6={v6}");
        }
    }

    #[test]
    fn what_cannot_join_passes_alone_and_in_order() {
        // A gap in sequence numbers.
        let mut segs = train(false, 0, &[1000, 1000], false);
        segs.extend(train(false, 5000, &[1000], false));
        let w = run(&segs);
        assert_eq!(w.len(), 2);
        assert_eq!(resegment(&w), segs);
        // A longer segment after a shorter one, a PSH in the middle.
        let segs = train(false, 0, &[500, 1000], false);
        assert_eq!(run(&segs).len(), 2);
        let mut segs = train(false, 0, &[1000, 1000], true);
        segs.extend(train(false, 2000, &[1000], false));
        assert_eq!(run(&segs).len(), 2);
        // Not TCP, a SYN, a pure ACK: alone and untouched.
        let mut udp = train(false, 0, &[100], false).remove(0);
        udp[9] = 17;
        let mut syn = train(false, 0, &[0], false).remove(0);
        syn[33] = 0x02;
        let ack = train(false, 0, &[0], false).remove(0);
        for p in [udp, syn, ack] {
            assert_eq!(run(std::slice::from_ref(&p)), vec![(VnetHdr::default(), p)]);
        }
        // A FIN after data of the same flow: the data is written first.
        let mut segs = train(false, 0, &[1000, 1000], false);
        let mut fin = train(false, 2000, &[0], false).remove(0);
        fin[33] = 0x11;
        segs.push(fin.clone());
        let w = run(&segs);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].1, fin);
    }

    #[test]
    fn flows_are_joined_side_by_side_and_the_64k_limit_holds() {
        let a = train(false, 0, &[1000; 3], false);
        let mut b = train(false, 0, &[1000; 3], false);
        for p in &mut b {
            p[23] = 99; // another destination port
            let l3 = L3::parse(p).unwrap();
            l3.set_l4_checksum(p);
        }
        let mixed: Vec<Vec<u8>> = a
            .iter()
            .zip(&b)
            .flat_map(|(x, y)| [x.clone(), y.clone()])
            .collect();
        let w = run(&mixed);
        assert_eq!(w.len(), 2);
        let long = train(false, 0, &[1400; 60], false);
        let w = run(&long);
        assert!(w.iter().all(|(_, p)| p.len() <= 65_535));
        assert_eq!(w.len(), 2);
        assert_eq!(resegment(&w), long);
    }

    proptest! {
        /// Whatever arrives, splitting what was written gives back every packet's payload, in
        /// order per flow, with valid checksums.
        #[test]
        fn nothing_is_lost_reordered_or_corrupted(
            steps in proptest::collection::vec((0usize..3, 0usize..1500, any::<bool>(), 0u32..3), 1..60),
        ) {
            let mut seqs = [0u32; 3];
            let mut input: Vec<Vec<u8>> = Vec::new();
            for (flow, len, psh, gap) in steps {
                let seq = seqs[flow].wrapping_add(if gap == 0 { 7 } else { 0 });
                let mut p = train(flow == 2, seq, &[len], psh).remove(0);
                let l3 = L3::parse(&p).unwrap();
                p[l3.l4] = flow as u8;
                l3.set_l4_checksum(&mut p);
                seqs[flow] = seq.wrapping_add(len as u32);
                input.push(p);
            }
            let out = resegment(&run(&input));
            let key = |p: &[u8]| p[L3::parse(p).unwrap().l4];
            for flow in 0..3u8 {
                let a: Vec<Vec<u8>> = input.iter().filter(|p| key(p) == flow).map(|p| {
                    let l4 = L3::parse(p).unwrap().l4;
                    p[l4..].to_vec()
                }).collect();
                let b: Vec<Vec<u8>> = out.iter().filter(|p| key(p) == flow).map(|p| {
                    let l4 = L3::parse(p).unwrap().l4;
                    p[l4..].to_vec()
                }).collect();
                prop_assert_eq!(a, b);
            }
            prop_assert!(out.iter().all(|p| checksums_ok(p)));
        }

        /// UDP and TCP flows mixed, with gaps in ids and any sizes: splitting what was
        /// written gives back exactly the UDP datagrams that went in, in order per flow.
        #[test]
        fn udp_datagrams_split_back_exactly(
            steps in proptest::collection::vec((0usize..3, 1usize..1400, 0u16..4), 1..80),
        ) {
            let mut ids = [0u16; 3];
            let mut input = Vec::new();
            for (flow, len, gap) in steps {
                let id = ids[flow].wrapping_add(if gap == 0 { 5 } else { 0 });
                let mut p = if flow == 2 {
                    train(false, u32::from(id) * 2000, &[len], false).remove(0)
                } else {
                    udp_train(flow == 1, id, &[len]).remove(0)
                };
                let l3 = L3::parse(&p).unwrap();
                p[l3.l4] = flow as u8;
                l3.set_l4_checksum(&mut p);
                ids[flow] = id.wrapping_add(1);
                input.push(p);
            }
            let out = resegment(&run_udp(&input));
            let udp = |v: &[Vec<u8>], flow: u8| -> Vec<Vec<u8>> {
                v.iter().filter(|p| L3::parse(p).unwrap().protocol == UDP && p[L3::parse(p).unwrap().l4] == flow).cloned().collect()
            };
            for flow in 0..2u8 {
                prop_assert_eq!(udp(&input, flow), udp(&out, flow));
            }
            prop_assert_eq!(input.len() - udp(&input, 0).len() - udp(&input, 1).len(),
                out.len() - udp(&out, 0).len() - udp(&out, 1).len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..20), udp in any::<bool>()) {
            let mut c = if udp { Coalescer::with_udp() } else { Coalescer::new() };
            let mut n = 0;
            for p in &packets {
                c.push(p, &mut |_, _| n += 1);
            }
            c.flush(&mut |_, _| n += 1);
            // Every packet is written alone or inside a joined one.
            prop_assert!(n <= packets.len() && (packets.is_empty() || n >= 1));
        }
    }
}
