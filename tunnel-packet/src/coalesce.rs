//! Joining consecutive TCP segments of a flow into one GSO packet before it is written into a
//! TUN device with offloads, so the kernel takes a train of segments in one `write`.
//!
//! The rules are the kernel's TCP GRO rules, kept conservative (see `docs/fastpath.md`).
//! Packets that cannot be joined pass alone, unchanged, with an all-zero header. Joined
//! packets carry a partial checksum (the pseudo-header sum) and `F_NEEDS_CSUM`, as a GSO
//! packet from the stack would. Nothing is held past [`Coalescer::flush`], which the caller
//! runs at the end of every receive batch.

use crate::{
    MAX_PACKET, checksum,
    segment::L3,
    vnet::{self, VnetHdr},
};

/// Flows joined at the same time.
pub const MAX_FLOWS: usize = 8;

const TCP: u8 = 6;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

struct Pending {
    buf: Vec<u8>,
    l3: L3,
    /// IP plus TCP header bytes.
    hlen: usize,
    /// Payload of the first segment: every segment but the last has it.
    size: usize,
    segments: usize,
    next_seq: u32,
    /// No more segments may join (the last was short or had PSH).
    closed: bool,
}

/// Joins TCP segments; see the module documentation.
pub struct Coalescer {
    pending: Vec<Pending>,
    spare: Vec<Vec<u8>>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP segment that may be joined: its parsed headers.
struct Candidate {
    l3: L3,
    hlen: usize,
    seq: u32,
    psh: bool,
}

fn candidate(p: &[u8]) -> Option<Candidate> {
    let l3 = L3::parse(p).ok()?;
    if l3.protocol != TCP {
        return None;
    }
    if l3.v6 {
        // The length field must describe the packet exactly.
        if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
            return None;
        }
    } else {
        let frag = u16::from_be_bytes([p[6], p[7]]);
        // No IP options, not a fragment, total length exact.
        if l3.l4 != 20
            || frag & 0x3fff != 0
            || usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len()
        {
            return None;
        }
    }
    let l4 = l3.l4;
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
        seq: u32::from_be_bytes([p[l4 + 4], p[l4 + 5], p[l4 + 6], p[l4 + 7]]),
        psh: flags & PSH != 0,
    })
}

/// Same flow: addresses and ports.
fn same_flow(a: &[u8], b: &[u8], l3: &L3) -> bool {
    let addrs = if l3.v6 { 8..40 } else { 12..20 };
    a[addrs.clone()] == b[addrs] && a[l3.l4..l3.l4 + 4] == b[l3.l4..l3.l4 + 4]
}

impl Coalescer {
    pub fn new() -> Self {
        Coalescer {
            pending: Vec::with_capacity(MAX_FLOWS),
            // Buffers are made when a flow first needs one and kept for reuse: a coalescer
            // that never joins anything costs nothing.
            spare: Vec::new(),
        }
    }

    /// Takes one IP packet; `write` gets every packet that is ready, header first.
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&VnetHdr, &[u8])) {
        let Some(c) = candidate(packet) else {
            // Flush this flow's pending packet first so its packets stay in order.
            if let Ok(l3) = L3::parse(packet)
                && l3.protocol == TCP
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
            next_seq: c.seq.wrapping_add(size as u32),
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
        let same_ip = if p.l3.v6 {
            p.buf[..4] == packet[..4] && p.buf[6..8] == packet[6..8]
        } else {
            p.buf[..2] == packet[..2] && p.buf[6..10] == packet[6..10]
        };
        // Acknowledgement, data offset, window, options: identical.
        let same_tcp = p.buf[l4 + 8..l4 + 13] == packet[l4 + 8..l4 + 13]
            && p.buf[l4 + 14..l4 + 16] == packet[l4 + 14..l4 + 16]
            && p.buf[l4 + 20..p.hlen] == packet[l4 + 20..c.hlen];
        if p.closed
            || c.hlen != p.hlen
            || c.seq != p.next_seq
            || payload > p.size
            || !fits
            || !same_ip
            || !same_tcp
        {
            return false;
        }
        p.buf.extend_from_slice(&packet[c.hlen..]);
        p.segments += 1;
        p.next_seq = c.seq.wrapping_add(payload as u32);
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
            p.l3.set_len(&mut p.buf, None);
            let (src, dst) = p.l3.addrs(&p.buf);
            let partial = checksum::fold(checksum::pseudo_header(src, dst, TCP, p.buf.len() - l4));
            p.buf[l4 + 16..l4 + 18].copy_from_slice(&partial);
            let hdr = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: if p.l3.v6 {
                    vnet::GSO_TCPV6
                } else {
                    vnet::GSO_TCPV4
                },
                hdr_len: p.hlen as u16,
                gso_size: p.size as u16,
                csum_start: l4 as u16,
                csum_offset: 16,
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

    /// Runs packets through a coalescer, flushing at the end; returns what was written.
    fn run(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut c = Coalescer::new();
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

        #[test]
        fn arbitrary_bytes_never_panic(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..20)) {
            let mut c = Coalescer::new();
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
