//! Fragmented datagrams: the verdict of a datagram's first fragment, kept for its later
//! fragments, which carry no transport header and so cannot be classified by ports. The
//! first fragment writes its verdict (including the address it was translated to) into
//! [`FRAGS`], keyed by the datagram's identity; a later fragment that finds it gets the
//! same counter cell, the same action and the same address rewrite (the IP header only:
//! the transport checksum, which covers the whole datagram, was fixed in the first
//! fragment). The last fragment removes the entry; a policy swap retires the old slot's
//! entries, so a verdict never outlives the policy that gave it (a datagram in flight
//! across a swap falls back to the address rule). A later fragment that finds nothing is
//! classified by its addresses (`classify`), which never sends it in clear where the ports
//! would have decided.
//!
//! Locally generated datagrams are fragmented before TC egress (`ip_fragment` runs in the
//! IP output path, the qdisc layer after it), so the egress hooks see each fragment, first
//! fragment first. Arriving fragments are not tracked: the uplink guard runs before
//! reassembly, and a datagram whose first fragment it dropped is never reassembled.

use tunnel_common::{FragKey, FragVerdict};

use crate::{
    maps::FRAGS,
    packet::{Frag, Packet},
};

#[inline(always)]
fn key(pkt: &Packet, dir: u8, slot: u32) -> FragKey {
    FragKey {
        proto: if pkt.v6 { 0 } else { pkt.proto },
        v6: pkt.v6 as u8,
        dir,
        slot: slot as u8,
        id: pkt.frag_id,
        src: pkt.src,
        dst: pkt.dst,
    }
}

/// The verdict recorded for the datagram of a later fragment, if its first fragment was
/// seen under policy slot `slot`. The last fragment takes the entry out.
#[inline(always)]
pub fn first_verdict(pkt: &Packet, dir: u8, slot: u32) -> Option<FragVerdict> {
    let key = key(pkt, dir, slot);
    // SAFETY: the value is copied out at once; LRU values are written whole.
    let found = unsafe { FRAGS.get(key) }.copied();
    if found.is_some() && pkt.frag == Frag::Last {
        let _ = FRAGS.remove(key);
    }
    found
}

/// Records what a first fragment got under policy slot `slot`. A full table evicts the
/// least recently used datagram, whose later fragments then fall back to the address rule.
#[inline(always)]
pub fn record(pkt: &Packet, dir: u8, slot: u32, verdict: &FragVerdict) {
    let _ = FRAGS.insert(key(pkt, dir, slot), *verdict, 0);
}
