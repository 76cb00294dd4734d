//! The fast path's packet work on arbitrary input: a virtio-net header and packet as a TUN
//! device might hand them out go through `segment`; the segments, and the raw packets, go
//! through the coalescer (TCP only, and TCP with UDP); what it writes must split again
//! without error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_packet::{Coalescer, VnetHdr, segment};

fuzz_target!(|data: &[u8]| {
    if data.len() < tunnel_packet::vnet::LEN {
        return;
    }
    let (h, rest) = data.split_at(tunnel_packet::vnet::LEN);
    let Ok(hdr) = VnetHdr::parse(h) else { return };
    let mut packet = rest.to_vec();
    let mut segments = Vec::new();
    let _ = segment(&hdr, &mut packet, |s| segments.push(s.to_vec()));
    segments.push(rest.to_vec());
    let mut written = Vec::new();
    for mut c in [Coalescer::new(), Coalescer::with_udp()] {
        for s in &segments {
            c.push(s, &mut |h, p| written.push((*h, p.to_vec())));
        }
        c.flush(&mut |h, p| written.push((*h, p.to_vec())));
    }
    for (h, p) in &mut written {
        if h.gso_type != 0 {
            // Joined packets are always well formed.
            segment(h, p, |_| {}).expect("a joined packet splits");
        }
    }
});
