//! Turns a validated [`Policy`] into the map entries of one slot. Pure: no maps, no syscalls,
//! so the translation is unit-tested on its own.
//!
//! The route tries hold the include and exclude routes of a connection and the gateway
//! addresses together; the longest match must give "gateway, then exclude, then include". That
//! holds when (1) an include lying inside (or equal to) an exclude is left out, (2) gateways are
//! host routes that replace an equal entry, and (3) everything else is inserted as written: for
//! an address inside some exclude, any include prefix longer than that exclude would lie inside
//! it and was left out, so the longest match is an exclude (or the gateway host route itself).
//! The gateways also go into a namespace of their own ([`tunnel_common::ROUTES_GLOBAL`]) for
//! packets that belong to no connection.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tunnel_common::{ConnConfig, ROUTES_GLOBAL, UDP_PORT_WORDS, conn_flags, route, slot_flags};

use super::policy::{ConnId, Policy};

/// One route-trie entry: connection (or [`ROUTES_GLOBAL`]), network address bytes, prefix
/// length, [`route`] kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteEntry<const N: usize> {
    pub conn: ConnId,
    pub addr: [u8; N],
    pub prefix_len: u8,
    pub kind: u32,
}

/// Everything one slot holds for a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub slot_flags: u32,
    pub device_conn: u32,
    pub conns: Vec<(ConnId, ConnConfig)>,
    pub routes_v4: Vec<RouteEntry<4>>,
    pub routes_v6: Vec<RouteEntry<16>>,
    pub apps: Vec<(u64, u32)>,
    /// Non-zero words of the UDP port bitmap: connection, word index within it, bits.
    pub udp_words: Vec<(ConnId, u32, u64)>,
    /// TUN device ifindex to connection.
    pub tun_ifaces: Vec<(u32, u32)>,
}

/// An address in the 16-byte form the maps use (IPv4 as `::ffff:a.b.c.d`).
pub fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Compiles a policy. Call [`Policy::validate`] first; this function does not re-check.
pub fn compile(policy: &Policy) -> CompiledPolicy {
    let mut out = CompiledPolicy {
        device_conn: policy
            .device_conn
            .map_or(tunnel_common::CONN_NONE, u32::from),
        ..Default::default()
    };
    if policy.lockdown {
        out.slot_flags |= slot_flags::LOCKDOWN;
    }
    if !policy.apps.is_empty() {
        out.slot_flags |= slot_flags::HAS_APPS;
    }
    if policy.device_conn.is_some() {
        out.slot_flags |= slot_flags::ANTI_SPOOF;
    }
    for c in &policy.conns {
        let mut cfg = ConnConfig {
            flags: conn_flags::ACTIVE,
            tun_ifindex: c.tun_ifindex,
            mtu: u32::from(c.mtu),
            ..Default::default()
        };
        if let Some(a) = c.tun_v4 {
            cfg.flags |= conn_flags::HAS_V4;
            cfg.tun_v4 = u32::from_ne_bytes(a.octets());
        }
        if let Some(a) = c.tun_v6 {
            cfg.flags |= conn_flags::HAS_V6;
            cfg.tun_v6 = words(a.octets());
        }
        if c.drop_missing_family {
            cfg.flags |= conn_flags::DROP_NO_FAMILY;
        }
        if let Some(ports) = &c.udp_ports {
            cfg.flags |= conn_flags::UDP_PORTS_LISTED;
            let mut bitmap = BTreeMap::<u32, u64>::new();
            for r in ports.ranges() {
                for p in r.clone() {
                    *bitmap.entry(u32::from(p) >> 6).or_default() |= 1u64 << (p & 63);
                }
            }
            debug_assert!(bitmap.keys().all(|w| *w < UDP_PORT_WORDS));
            out.udp_words
                .extend(bitmap.into_iter().map(|(w, bits)| (c.id, w, bits)));
        }
        out.conns.push((c.id, cfg));
        out.tun_ifaces.push((c.tun_ifindex, u32::from(c.id)));
        let exclude: Vec<IpNet> = c
            .exclude
            .iter()
            .chain(&policy.exceptions)
            .copied()
            .collect();
        let (v4, v6) = merge_routes(c.id, &c.effective_include(), &exclude, &policy.gateways);
        out.routes_v4.extend(v4);
        out.routes_v6.extend(v6);
    }
    let (v4, v6) = merge_routes(
        ROUTES_GLOBAL as ConnId,
        &[],
        &policy.exceptions,
        &policy.gateways,
    );
    out.routes_v4.extend(v4);
    out.routes_v6.extend(v6);
    out.apps = policy
        .apps
        .iter()
        .map(|a| (a.cgroup_id, u32::from(a.conn)))
        .collect();
    out
}

/// 16 address bytes as the maps' network-order words.
pub fn words(octets: [u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Merges a connection's routes into trie entries (see the module docs).
fn merge_routes(
    conn: ConnId,
    include: &[IpNet],
    exclude: &[IpNet],
    gateways: &[IpAddr],
) -> (Vec<RouteEntry<4>>, Vec<RouteEntry<16>>) {
    let excludes: HashSet<IpNet> = exclude.iter().map(|n| n.trunc()).collect();
    let covered = |net: &IpNet| {
        (0..=net.prefix_len()).any(|len| {
            let sup = IpNet::new(net.addr(), len).map(|n| n.trunc());
            sup.is_ok_and(|s| excludes.contains(&s))
        })
    };
    let mut entries = BTreeMap::<IpNet, u32>::new();
    for net in &excludes {
        entries.insert(*net, route::EXCLUDE);
    }
    for net in include.iter().map(|n| n.trunc()) {
        if !covered(&net) {
            entries.entry(net).or_insert(route::INCLUDE);
        }
    }
    for gw in gateways {
        entries.insert(IpNet::from(*gw), route::GATEWAY);
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (net, kind) in entries {
        match net {
            IpNet::V4(n) => v4.push(RouteEntry {
                conn,
                addr: n.network().octets(),
                prefix_len: n.prefix_len(),
                kind,
            }),
            IpNet::V6(n) => v6.push(RouteEntry {
                conn,
                addr: n.network().octets(),
                prefix_len: n.prefix_len(),
                kind,
            }),
        }
    }
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::datapath::policy::{AppRule, ConnPolicy, PortList};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn includes_inside_excludes_are_left_out() {
        let (v4, _) = merge_routes(
            3,
            &[net("10.0.0.0/8"), net("10.1.0.0/16"), net("192.168.0.0/16")],
            &[
                net("10.1.0.0/16"),
                net("192.168.0.0/15"),
                net("10.2.3.4/32"),
            ],
            &["10.0.0.1".parse().unwrap(), "10.2.3.4".parse().unwrap()],
        );
        let got: Vec<(String, u32)> = v4
            .iter()
            .map(|e| {
                (
                    format!("{}/{}", Ipv4Addr::from(e.addr), e.prefix_len),
                    e.kind,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.0/8".to_string(), route::INCLUDE),
                ("10.0.0.1/32".to_string(), route::GATEWAY),
                ("10.1.0.0/16".to_string(), route::EXCLUDE),
                ("10.2.3.4/32".to_string(), route::GATEWAY),
                ("192.168.0.0/15".to_string(), route::EXCLUDE),
            ]
        );
        assert!(v4.iter().all(|e| e.conn == 3));
    }

    #[test]
    fn host_bits_are_cleared() {
        let (v4, _) = merge_routes(0, &[net("10.1.2.3/8")], &[], &[]);
        assert_eq!(v4[0].addr, [10, 0, 0, 0]);
    }

    #[test]
    fn compiles_flags_ports_apps_and_gateways() {
        let mut c = ConnPolicy::new(2, 7);
        c.tun_v4 = Some(Ipv4Addr::new(10, 200, 0, 5));
        c.udp_ports = Some("53;64-65".parse::<PortList>().unwrap());
        let p = Policy {
            lockdown: true,
            gateways: vec!["192.0.2.1".parse().unwrap(), "192.0.2.1".parse().unwrap()],
            exceptions: Vec::new(),
            device_conn: Some(2),
            apps: vec![AppRule {
                cgroup_id: 42,
                conn: 2,
            }],
            conns: vec![c],
        };
        p.validate().unwrap();
        let out = compile(&p);
        assert_eq!(
            out.slot_flags,
            slot_flags::LOCKDOWN | slot_flags::HAS_APPS | slot_flags::ANTI_SPOOF
        );
        assert_eq!(out.device_conn, 2);
        let (id, cfg) = out.conns[0];
        assert_eq!(id, 2);
        assert_eq!(
            cfg.flags,
            conn_flags::ACTIVE | conn_flags::HAS_V4 | conn_flags::UDP_PORTS_LISTED
        );
        assert_eq!(cfg.tun_v4.to_ne_bytes(), [10, 200, 0, 5]);
        assert_eq!(out.udp_words, vec![(2, 0, 1 << 53), (2, 1, 0b11)]);
        assert_eq!(out.apps, vec![(42, 2)]);
        assert_eq!(out.tun_ifaces, vec![(7, 2)]);
        // No include routes: both default routes; the (deduplicated) gateway in the
        // connection's namespace and in the global one.
        let v4: Vec<(ConnId, u8, u32)> = out
            .routes_v4
            .iter()
            .map(|e| (e.conn, e.prefix_len, e.kind))
            .collect();
        assert_eq!(
            v4,
            vec![
                (2, 0, route::INCLUDE),
                (2, 32, route::GATEWAY),
                (ROUTES_GLOBAL as ConnId, 32, route::GATEWAY)
            ]
        );
        assert_eq!(out.routes_v6.len(), 1);
    }

    #[test]
    fn a_connection_that_drops_its_missing_family_says_so() {
        let mut c = ConnPolicy::new(1, 9);
        c.tun_v4 = Some(Ipv4Addr::new(10, 200, 0, 5));
        let flags = |c: &ConnPolicy| {
            let p = Policy {
                device_conn: Some(1),
                conns: vec![c.clone()],
                ..Default::default()
            };
            p.validate().unwrap();
            compile(&p).conns[0].1.flags
        };
        assert_eq!(flags(&c), conn_flags::ACTIVE | conn_flags::HAS_V4);
        c.drop_missing_family = true;
        assert_eq!(
            flags(&c),
            conn_flags::ACTIVE | conn_flags::HAS_V4 | conn_flags::DROP_NO_FAMILY
        );
    }
}
