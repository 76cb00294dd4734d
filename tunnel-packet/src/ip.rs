//! What both ends of the tunnel read of a packet on their packet threads: the addresses of an IP
//! packet, and whether writing it into the TUN device may make the receiving stack answer
//! within the write.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Source and destination of an IPv4 or IPv6 packet, or None if it is too short.
pub fn ip_endpoints(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some((
            IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
            IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
        )),
        6 if p.len() >= 40 => {
            let a =
                |r: std::ops::Range<usize>| <[u8; 16]>::try_from(&p[r]).ok().map(Ipv6Addr::from);
            Some((IpAddr::V6(a(8..24)?), IpAddr::V6(a(24..40)?)))
        }
        _ => None,
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Whether the stack an IP packet is written to may answer it within the write: a TCP
/// segment (an ACK), an ICMP echo request, an IPv6 neighbour solicitation, anything not
/// known. False for what only an application answers, after its own wake-up (UDP), and for
/// what nobody answers (echo replies): writing those, a packet thread has nothing to
/// forward, so it does not take the TUN device first (see `docs/fastpath.md`).
pub fn may_be_answered_at_once(p: &[u8]) -> bool {
    let (proto, l4) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let fragment_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            if fragment_offset != 0 {
                return true;
            }
            (p[9], usize::from(p[0] & 0xf) * 4)
        }
        // Extension headers are not walked: behind one the packet counts as unknown.
        Some(6) if p.len() >= 40 => (p[6], 40),
        _ => return true,
    };
    match proto {
        TCP => true,
        UDP => false,
        ICMP => p.get(l4) != Some(&ICMP_ECHO_REPLY),
        ICMPV6 => p.get(l4) != Some(&ICMPV6_ECHO_REPLY),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_stack_may_answer_within_the_write() {
        let v4 = |proto: u8, l4: &[u8]| {
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[9] = proto;
            p.extend_from_slice(l4);
            p
        };
        assert!(may_be_answered_at_once(&v4(TCP, &[0; 20])));
        assert!(!may_be_answered_at_once(&v4(UDP, &[0; 8])));
        assert!(may_be_answered_at_once(&v4(ICMP, &[8, 0])), "echo request");
        assert!(!may_be_answered_at_once(&v4(ICMP, &[0, 0])), "echo reply");
        assert!(may_be_answered_at_once(&v4(47, &[0; 4])), "GRE: unknown");
        let mut fragment = v4(UDP, &[0; 8]);
        fragment[7] = 1;
        assert!(
            may_be_answered_at_once(&fragment),
            "a later fragment: unknown"
        );
        let mut options = v4(ICMP, &[0; 4]);
        options[0] = 0x46;
        options.extend_from_slice(&[8, 0]);
        assert!(may_be_answered_at_once(&options), "ICMP behind IP options");
        let v6 = |nh: u8, l4: &[u8]| {
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            p[6] = nh;
            p.extend_from_slice(l4);
            p
        };
        assert!(may_be_answered_at_once(&v6(TCP, &[0; 20])));
        assert!(!may_be_answered_at_once(&v6(UDP, &[0; 8])));
        assert!(!may_be_answered_at_once(&v6(ICMPV6, &[129, 0])));
        assert!(may_be_answered_at_once(&v6(ICMPV6, &[128, 0])));
        assert!(
            may_be_answered_at_once(&v6(ICMPV6, &[135, 0])),
            "neighbour solicitation"
        );
        assert!(
            may_be_answered_at_once(&v6(0, &[0; 8])),
            "hop-by-hop: unknown"
        );
        assert!(may_be_answered_at_once(&[]));
        assert!(may_be_answered_at_once(&[0x45; 10]));
    }

    #[test]
    fn endpoints_of_both_families_and_short_packets() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(
            ip_endpoints(&v4),
            Some(("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()))
        );
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[23] = 1;
        v6[39] = 2;
        assert_eq!(
            ip_endpoints(&v6),
            Some(("::1".parse().unwrap(), "::2".parse().unwrap()))
        );
        assert_eq!(ip_endpoints(&v4[..19]), None);
        assert_eq!(ip_endpoints(&[]), None);
        assert_eq!(ip_endpoints(&[0x50; 40]), None);
    }
}
