//! Small pieces both ends of the tunnel use on their packet threads: the addresses of an IP
//! packet.

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

#[cfg(test)]
mod tests {
    use super::*;

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
