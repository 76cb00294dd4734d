//! The gateway's and the client's look at a packet from the other end of the tunnel
//! (`tunnel_packet::ip`) on arbitrary bytes: never a panic; the addresses come from
//! where the IP header keeps them, and only for a packet long enough to hold that header.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tunnel_packet::ip::{ip_endpoints, may_be_answered_at_once};

fuzz_target!(|p: &[u8]| {
    let _ = may_be_answered_at_once(p);
    match (ip_endpoints(p), p.first().map(|b| b >> 4)) {
        (Some((IpAddr::V4(s), IpAddr::V4(d))), Some(4)) => {
            assert!(p.len() >= 20);
            assert_eq!((&s.octets()[..], &d.octets()[..]), (&p[12..16], &p[16..20]));
        }
        (Some((IpAddr::V6(s), IpAddr::V6(d))), Some(6)) => {
            assert!(p.len() >= 40);
            assert_eq!((&s.octets()[..], &d.octets()[..]), (&p[8..24], &p[24..40]));
        }
        (None, Some(4)) => assert!(p.len() < 20),
        (None, Some(6)) => assert!(p.len() < 40),
        (None, _) => {}
        (got, version) => panic!("version {version:?} gave {got:?}"),
    }
});
