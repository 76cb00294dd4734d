//! Hand-written cases for every rule of the kernel programs, through `BPF_PROG_TEST_RUN`.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use support::*;
use tunnel_common::{CONN_NONE, OWN_SOCKET_MARK, Reason, programs};
use tunnel_user::datapath::{
    ConnPolicy, Datapath, KernelLog, Policy,
    frames::{Ext, Fragment, Frame, L4},
    reference::{Model, Origin, checksums_valid, finish_checksums},
};

const TUN_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const TUN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn conn0() -> ConnPolicy {
    ConnPolicy {
        tun_v4: Some(TUN_V4),
        tun_v6: Some(TUN_V6),
        include: vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:100::/48".parse().unwrap(),
        ],
        exclude: vec![
            "10.9.0.0/16".parse().unwrap(),
            "2001:db8:100:9::/64".parse().unwrap(),
        ],
        ..ConnPolicy::new(0, 100)
    }
}

fn policy() -> Policy {
    Policy {
        gateways: vec![ip("10.5.5.5"), ip("2001:db8:100::5")],
        exceptions: Vec::new(),
        device_conn: Some(0),
        conns: vec![conn0()],
        ..Default::default()
    }
}

fn tcp(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    Frame::new(
        src,
        dst,
        L4::Tcp {
            sport: 40000,
            dport: 443,
            flags: 0x10,
            mss: None,
        },
    )
    .build()
}

fn udp(src: IpAddr, dst: IpAddr, dport: u16) -> Vec<u8> {
    Frame::new(
        src,
        dst,
        L4::Udp {
            sport: 40000,
            dport,
            zero_checksum: false,
        },
    )
    .build()
}

/// Runs one frame through the uplink egress classifier and checks action and the single
/// counter it must bump.
fn expect(
    dp: &mut Datapath,
    frame: &[u8],
    mark: u32,
    action: u32,
    conn: u32,
    reason: Reason,
) -> TcRun {
    expect_on(
        dp,
        programs::UPLINK_EGRESS_ETH,
        frame,
        mark,
        action,
        conn,
        reason,
    )
}

/// Runs one packet through the TC program `program` and checks action and the single
/// counter it must bump.
fn expect_on(
    dp: &mut Datapath,
    program: &'static str,
    frame: &[u8],
    mark: u32,
    action: u32,
    conn: u32,
    reason: Reason,
) -> TcRun {
    let before = counters(dp);
    let run = tc_run(dp, program, frame, mark);
    let delta = counters(dp).since(&before);
    assert_eq!(run.action, action, "{program}: action for {reason:?}");
    let cells = delta.nonzero();
    assert_eq!(cells.len(), 1, "exactly one counter moves, got {cells:?}");
    let (c, r, counter) = cells[0];
    assert_eq!((c.unwrap_or(CONN_NONE), r), (conn, reason), "counter cell");
    assert_eq!(counter.packets, 1);
    assert_eq!(counter.bytes, frame.len() as u64);
    run
}

#[test]
fn included_traffic_is_translated_and_redirected() {
    let Some(mut dp) = load_or_skip("included_traffic_is_translated_and_redirected") else {
        return;
    };
    dp.apply(&policy()).unwrap();
    for (src, dst, tun) in [
        (IpAddr::V4(LOCAL_V4), ip("10.1.2.3"), IpAddr::V4(TUN_V4)),
        (
            IpAddr::V6(LOCAL_V6),
            ip("2001:db8:100:1::3"),
            IpAddr::V6(TUN_V6),
        ),
    ] {
        let frame = tcp(src, dst);
        let run = expect(&mut dp, &frame, 0, TC_ACT_REDIRECT, 0, Reason::Tunnel);
        let want = tcp(tun, dst);
        assert_eq!(run.out, want, "source NAT with recomputed checksums");
        assert!(checksums_valid(&run.out));
    }
    assert_eq!(dp.flow_count(), 2, "one flow per translated connection");
}

#[test]
fn excludes_gateway_own_socket_and_unrouted_bypass() {
    let Some(mut dp) = load_or_skip("excludes_gateway_own_socket_and_unrouted_bypass") else {
        return;
    };
    dp.apply(&policy()).unwrap();
    let l4 = IpAddr::V4(LOCAL_V4);
    let l6 = IpAddr::V6(LOCAL_V6);
    let cases = [
        (tcp(l4, ip("10.9.1.1")), 0, 0, Reason::BypassExcluded),
        (
            tcp(l6, ip("2001:db8:100:9::1")),
            0,
            0,
            Reason::BypassExcluded,
        ),
        (tcp(l4, ip("172.16.0.1")), 0, 0, Reason::BypassNotIncluded),
        (
            tcp(l6, ip("2001:db8:200::1")),
            0,
            0,
            Reason::BypassNotIncluded,
        ),
        (tcp(l4, ip("10.5.5.5")), 0, CONN_NONE, Reason::BypassGateway),
        (
            tcp(l6, ip("2001:db8:100::5")),
            0,
            CONN_NONE,
            Reason::BypassGateway,
        ),
        (
            tcp(l4, ip("10.1.1.1")),
            OWN_SOCKET_MARK,
            CONN_NONE,
            Reason::BypassOwnSocket,
        ),
        (udp(l4, ip("10.1.1.1"), 67).to_vec(), 0, 0, Reason::Tunnel),
    ];
    for (frame, mark, conn, reason) in cases {
        let action = if reason == Reason::Tunnel {
            TC_ACT_REDIRECT
        } else {
            TC_ACT_OK
        };
        let run = expect(&mut dp, &frame, mark, action, conn, reason);
        if action == TC_ACT_OK {
            assert_eq!(
                run.out, frame,
                "bypassed traffic leaves untouched ({reason:?})"
            );
        }
    }
    // DHCP client to server is link control, whatever the routes say.
    let dhcp = Frame::new(
        l4,
        ip("10.1.1.1"),
        L4::Udp {
            sport: 68,
            dport: 67,
            zero_checksum: false,
        },
    );
    expect(
        &mut dp,
        &dhcp.build(),
        0,
        TC_ACT_OK,
        CONN_NONE,
        Reason::BypassLinkControl,
    );
    let ns = Frame::new(l6, ip("2001:db8:100::1"), L4::Icmpv6 { icmp_type: 135 });
    expect(
        &mut dp,
        &ns.build(),
        0,
        TC_ACT_OK,
        CONN_NONE,
        Reason::BypassLinkControl,
    );
    // ARP is not IP.
    let mut arp = vec![0xffu8; 42];
    arp[12] = 0x08;
    arp[13] = 0x06;
    expect(&mut dp, &arp, 0, TC_ACT_OK, CONN_NONE, Reason::BypassNotIp);
}

#[test]
fn udp_port_list_selects_what_is_tunnelled() {
    let Some(mut dp) = load_or_skip("udp_port_list_selects_what_is_tunnelled") else {
        return;
    };
    let mut p = policy();
    p.conns[0].udp_ports = Some("53;161-162;200-1024".parse().unwrap());
    dp.apply(&p).unwrap();
    let l4 = IpAddr::V4(LOCAL_V4);
    let dst = ip("10.1.2.3");
    for port in [53, 161, 162, 200, 1024] {
        expect(
            &mut dp,
            &udp(l4, dst, port),
            0,
            TC_ACT_REDIRECT,
            0,
            Reason::Tunnel,
        );
    }
    for port in [52, 54, 160, 163, 199, 1025, 65535] {
        expect(
            &mut dp,
            &udp(l4, dst, port),
            0,
            TC_ACT_OK,
            0,
            Reason::BypassUdpPort,
        );
    }
    // TCP is not subject to the UDP port list.
    expect(
        &mut dp,
        &tcp(l4, dst),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
    // Without a list every UDP port is tunnelled.
    dp.apply(&policy()).unwrap();
    expect(
        &mut dp,
        &udp(l4, dst, 9999),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
}

#[test]
fn lockdown_drops_what_would_bypass_for_lack_of_a_rule() {
    let Some(mut dp) = load_or_skip("lockdown_drops_what_would_bypass_for_lack_of_a_rule") else {
        return;
    };
    let l4 = IpAddr::V4(LOCAL_V4);
    // Disconnected lock-down: no connection at all.
    let down = Policy {
        lockdown: true,
        gateways: vec![ip("10.5.5.5")],
        exceptions: Vec::new(),
        ..Default::default()
    };
    dp.apply(&down).unwrap();
    expect(
        &mut dp,
        &tcp(l4, ip("172.16.0.1")),
        0,
        TC_ACT_SHOT,
        CONN_NONE,
        Reason::DropLockdown,
    );
    expect(
        &mut dp,
        &tcp(l4, ip("10.5.5.5")),
        0,
        TC_ACT_OK,
        CONN_NONE,
        Reason::BypassGateway,
    );
    expect(
        &mut dp,
        &tcp(l4, ip("172.16.0.1")),
        OWN_SOCKET_MARK,
        TC_ACT_OK,
        CONN_NONE,
        Reason::BypassOwnSocket,
    );
    // Connected lock-down: explicit excludes stay open, the rest must go through the tunnel.
    let mut up = policy();
    up.lockdown = true;
    dp.apply(&up).unwrap();
    expect(
        &mut dp,
        &tcp(l4, ip("172.16.0.1")),
        0,
        TC_ACT_SHOT,
        0,
        Reason::DropLockdown,
    );
    expect(
        &mut dp,
        &tcp(l4, ip("10.9.0.1")),
        0,
        TC_ACT_OK,
        0,
        Reason::BypassExcluded,
    );
    expect(
        &mut dp,
        &tcp(l4, ip("10.1.0.1")),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
    // The guard (XDP or TC ingress): with lock-down, traffic from nowhere is dropped, from
    // the gateway and from peers of our own sockets it is let in.
    for hook in GUARD_HOOKS {
        assert_eq!(guard(&mut dp, hook, &tcp(ip("172.16.0.99"), l4)), XDP_DROP);
        assert_eq!(guard(&mut dp, hook, &tcp(ip("10.5.5.5"), l4)), XDP_PASS);
        assert_eq!(
            guard(&mut dp, hook, &tcp(ip("172.16.0.1"), l4)),
            XDP_PASS,
            "a peer of our own socket ({hook:?})"
        );
        assert_eq!(
            guard(&mut dp, hook, &tcp(ip("10.9.0.1"), l4)),
            XDP_PASS,
            "exclude routes stay open ({hook:?})"
        );
    }
}

#[test]
fn anti_spoofing_drops_sources_the_tunnel_owns() {
    let Some(mut dp) = load_or_skip("anti_spoofing_drops_sources_the_tunnel_owns") else {
        return;
    };
    for hook in GUARD_HOOKS {
        dp.apply(&policy()).unwrap();
        let l4 = IpAddr::V4(LOCAL_V4);
        let before = counters(&dp);
        assert_eq!(
            guard(&mut dp, hook, &tcp(ip("10.1.2.3"), l4)),
            XDP_DROP,
            "claims a tunnelled source"
        );
        assert_eq!(
            guard(
                &mut dp,
                hook,
                &tcp(ip("2001:db8:100:1::3"), IpAddr::V6(LOCAL_V6))
            ),
            XDP_DROP
        );
        assert_eq!(
            guard(&mut dp, hook, &tcp(ip("10.9.2.3"), l4)),
            XDP_PASS,
            "excluded source"
        );
        assert_eq!(
            guard(&mut dp, hook, &tcp(ip("172.16.2.3"), l4)),
            XDP_PASS,
            "outside the tunnel"
        );
        assert_eq!(
            guard(&mut dp, hook, &tcp(ip("10.5.5.5"), l4)),
            XDP_PASS,
            "the gateway"
        );
        let d = counters(&dp).since(&before);
        assert_eq!(d.get(0, Reason::DropSpoofed).packets, 2);
        assert_eq!(d.get(CONN_NONE, Reason::BypassGateway).packets, 1);
        assert_eq!(d.get(0, Reason::IngressPass).packets, 2);
        // Replies from UDP ports that bypass the tunnel are not spoofed.
        let mut p = policy();
        p.conns[0].udp_ports = Some("53".parse().unwrap());
        dp.apply(&p).unwrap();
        let reply = |sport| {
            Frame::new(
                ip("10.1.2.3"),
                l4,
                L4::Udp {
                    sport,
                    dport: 40000,
                    zero_checksum: false,
                },
            )
            .build()
        };
        assert_eq!(guard(&mut dp, hook, &reply(53)), XDP_DROP);
        assert_eq!(guard(&mut dp, hook, &reply(123)), XDP_PASS);
        // No device-level connection: no anti-spoofing.
        let mut p = policy();
        p.device_conn = None;
        dp.apply(&p).unwrap();
        assert_eq!(guard(&mut dp, hook, &tcp(ip("10.1.2.3"), l4)), XDP_PASS);
    }
}

#[test]
fn mss_is_clamped_to_the_tunnel_mtu() {
    let Some(mut dp) = load_or_skip("mss_is_clamped_to_the_tunnel_mtu") else {
        return;
    };
    let mut p = policy();
    p.conns[0].mtu = 1400;
    dp.apply(&p).unwrap();
    for (src, dst, tun, clamp) in [
        (
            IpAddr::V4(LOCAL_V4),
            ip("10.1.2.3"),
            IpAddr::V4(TUN_V4),
            1360,
        ),
        (
            IpAddr::V6(LOCAL_V6),
            ip("2001:db8:100::3"),
            IpAddr::V6(TUN_V6),
            1340,
        ),
    ] {
        let syn = |src, mss| {
            Frame::new(
                src,
                dst,
                L4::Tcp {
                    sport: 40000,
                    dport: 443,
                    flags: 0x02,
                    mss: Some(mss),
                },
            )
        };
        let run = expect(
            &mut dp,
            &syn(src, 1460).build(),
            0,
            TC_ACT_REDIRECT,
            0,
            Reason::Tunnel,
        );
        assert_eq!(
            run.out,
            syn(tun, clamp).build(),
            "MSS 1460 clamped to {clamp}"
        );
        assert!(checksums_valid(&run.out));
        let run = expect(
            &mut dp,
            &syn(src, 1200).build(),
            0,
            TC_ACT_REDIRECT,
            0,
            Reason::Tunnel,
        );
        assert_eq!(run.out, syn(tun, 1200).build(), "a smaller MSS stays");
    }
}

#[test]
fn udp_without_checksum_and_icmp_echo_translate() {
    let Some(mut dp) = load_or_skip("udp_without_checksum_and_icmp_echo_translate") else {
        return;
    };
    dp.apply(&policy()).unwrap();
    let l4 = IpAddr::V4(LOCAL_V4);
    let dst = ip("10.1.2.3");
    let f = |src| {
        Frame::new(
            src,
            dst,
            L4::Udp {
                sport: 5000,
                dport: 53,
                zero_checksum: true,
            },
        )
    };
    let run = expect(
        &mut dp,
        &f(l4).build(),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
    assert_eq!(
        run.out,
        f(IpAddr::V4(TUN_V4)).build(),
        "zero UDP checksum stays zero"
    );
    for (src, dst, tun) in [
        (l4, dst, IpAddr::V4(TUN_V4)),
        (
            IpAddr::V6(LOCAL_V6),
            ip("2001:db8:100::3"),
            IpAddr::V6(TUN_V6),
        ),
    ] {
        let e = |src| {
            Frame::new(
                src,
                dst,
                L4::Echo {
                    id: 77,
                    reply: false,
                },
            )
        };
        let run = expect(
            &mut dp,
            &e(src).build(),
            0,
            TC_ACT_REDIRECT,
            0,
            Reason::Tunnel,
        );
        assert_eq!(run.out, e(tun).build());
    }
    let mut hbh = Frame::new(
        IpAddr::V6(LOCAL_V6),
        ip("2001:db8:100::3"),
        L4::Udp {
            sport: 1,
            dport: 2,
            zero_checksum: false,
        },
    );
    hbh.hop_by_hop = true;
    let run = expect(&mut dp, &hbh.build(), 0, TC_ACT_REDIRECT, 0, Reason::Tunnel);
    hbh.src = IpAddr::V6(TUN_V6);
    assert_eq!(run.out, hbh.build(), "extension headers are stepped over");
}

#[test]
fn per_app_rule_beats_device_level() {
    let Some(mut dp) = load_or_skip("per_app_rule_beats_device_level") else {
        return;
    };
    // This process's own cgroup (or an ancestor) gets a rule: its packets follow connection 1,
    // which only includes 172.16.0.0/12; connection 0 stays the device-level one.
    let ids = own_cgroup_ids();
    let mut c1 = ConnPolicy::new(1, 101);
    c1.tun_v4 = Some(Ipv4Addr::new(10, 201, 0, 2));
    c1.include = vec!["172.16.0.0/12".parse().unwrap()];
    let mut p = policy();
    p.conns.push(c1);
    let l4 = IpAddr::V4(LOCAL_V4);
    for rule_at in [ids[0], *ids.last().unwrap()] {
        p.apps = vec![tunnel_user::datapath::AppRule {
            cgroup_id: rule_at,
            conn: 1,
        }];
        dp.apply(&p).unwrap();
        expect(
            &mut dp,
            &tcp(l4, ip("172.16.0.1")),
            0,
            TC_ACT_REDIRECT,
            1,
            Reason::Tunnel,
        );
        expect(
            &mut dp,
            &tcp(l4, ip("10.1.0.1")),
            0,
            TC_ACT_OK,
            1,
            Reason::BypassNotIncluded,
        );
    }
    // A rule for some other cgroup does not apply to us.
    p.apps = vec![tunnel_user::datapath::AppRule {
        cgroup_id: u64::MAX - 1,
        conn: 1,
    }];
    dp.apply(&p).unwrap();
    expect(
        &mut dp,
        &tcp(l4, ip("10.1.0.1")),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
    expect(
        &mut dp,
        &tcp(l4, ip("172.16.0.1")),
        0,
        TC_ACT_OK,
        0,
        Reason::BypassNotIncluded,
    );
}

#[test]
fn families_without_a_tunnel_address_bypass() {
    let Some(mut dp) = load_or_skip("families_without_a_tunnel_address_bypass") else {
        return;
    };
    let mut p = policy();
    p.conns[0].tun_v6 = None;
    dp.apply(&p).unwrap();
    expect(
        &mut dp,
        &tcp(IpAddr::V6(LOCAL_V6), ip("2001:db8:100::3")),
        0,
        TC_ACT_OK,
        0,
        Reason::BypassNoFamily,
    );
}

/// A full tunnel without an IPv6 address drops IPv6 that is not explicitly excluded, both
/// ways; the gateway, link control and the tunnelled family are untouched, and lock-down
/// does not change the reason.
#[test]
fn a_connection_drops_the_family_it_has_no_address_for_when_told_to() {
    let Some(mut dp) =
        load_or_skip("a_connection_drops_the_family_it_has_no_address_for_when_told_to")
    else {
        return;
    };
    let mut p = policy();
    p.conns[0].tun_v6 = None;
    p.conns[0].drop_missing_family = true;
    for lockdown in [false, true] {
        p.lockdown = lockdown;
        dp.apply(&p).unwrap();
        let l6 = IpAddr::V6(LOCAL_V6);
        for dst in [ip("2001:db8:100::3"), ip(OUTSIDE_V6)] {
            expect(
                &mut dp,
                &tcp(l6, dst),
                0,
                TC_ACT_SHOT,
                0,
                Reason::DropNoFamily,
            );
            expect(
                &mut dp,
                &udp(l6, dst, 53),
                0,
                TC_ACT_SHOT,
                0,
                Reason::DropNoFamily,
            );
        }
        let excluded = if lockdown {
            // Lock-down's rule for a missing family, unchanged by this setting.
            (TC_ACT_SHOT, Reason::DropLockdown)
        } else {
            (TC_ACT_OK, Reason::BypassNoFamily)
        };
        expect(
            &mut dp,
            &tcp(l6, ip(EXCLUDED_V6)),
            0,
            excluded.0,
            0,
            excluded.1,
        );
        expect(
            &mut dp,
            &tcp(l6, ip("2001:db8:100::5")),
            0,
            TC_ACT_OK,
            CONN_NONE,
            Reason::BypassGateway,
        );
        let ns = Frame::new(l6, ip("ff02::1:ff00:3"), L4::Icmpv6 { icmp_type: 135 }).build();
        expect(
            &mut dp,
            &ns,
            0,
            TC_ACT_OK,
            CONN_NONE,
            Reason::BypassLinkControl,
        );
        // Multicast listener reports to a link-scope group stay on the link: switches
        // that snoop them need them. The same message type to a wider group is judged
        // like any other packet.
        let mut report = Frame::new(l6, ip("ff02::16"), L4::Icmpv6 { icmp_type: 143 });
        report.hop_by_hop = true;
        expect(
            &mut dp,
            &report.build(),
            0,
            TC_ACT_OK,
            CONN_NONE,
            Reason::BypassLinkControl,
        );
        let wide = Frame::new(l6, ip("ff0e::1"), L4::Icmpv6 { icmp_type: 143 }).build();
        expect(&mut dp, &wide, 0, TC_ACT_SHOT, 0, Reason::DropNoFamily);
        expect(
            &mut dp,
            &tcp(IpAddr::V4(LOCAL_V4), ip("10.1.2.3")),
            0,
            TC_ACT_REDIRECT,
            0,
            Reason::Tunnel,
        );
        for hook in GUARD_HOOKS {
            let inbound = tcp(ip(OUTSIDE_V6), l6);
            expect_guard(&mut dp, hook, &inbound, XDP_DROP, 0, Reason::DropNoFamily);
        }
    }
    // Told nothing, the family bypasses as before.
    p.lockdown = false;
    p.conns[0].drop_missing_family = false;
    dp.apply(&p).unwrap();
    expect(
        &mut dp,
        &tcp(IpAddr::V6(LOCAL_V6), ip(OUTSIDE_V6)),
        0,
        TC_ACT_OK,
        0,
        Reason::BypassNoFamily,
    );
}

#[test]
fn a_refused_policy_changes_nothing() {
    let Some(mut dp) = load_or_skip("a_refused_policy_changes_nothing") else {
        return;
    };
    dp.apply(&policy()).unwrap();
    let before = dp.applied().cloned();
    let mut bad = policy();
    bad.device_conn = Some(7);
    assert!(dp.apply(&bad).is_err());
    assert_eq!(dp.applied().cloned(), before);
    expect(
        &mut dp,
        &tcp(IpAddr::V4(LOCAL_V4), ip("10.1.2.3")),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
}

// What the classifier cannot read, and fragments: never in clear where the policy could have
// tunnelled or dropped the packet.

const INCLUDED_V6: &str = "2001:db8:100:1::3";
const EXCLUDED_V6: &str = "2001:db8:100:9::1";
const OUTSIDE_V6: &str = "2001:db8:200::1";

fn udp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Frame {
    Frame::new(
        src,
        dst,
        L4::Udp {
            sport,
            dport,
            zero_checksum: false,
        },
    )
}

/// An IPv6 UDP frame behind `n` destination-options headers of 8 bytes.
fn chain(src: IpAddr, dst: IpAddr, n: usize) -> Frame {
    let mut f = udp_frame(src, dst, 40000, 53);
    f.ext = vec![Ext::Options { kind: 60, units: 0 }; n];
    f
}

/// An IPv6 UDP frame behind a routing header of 248 bytes, the kind an unprivileged socket
/// may set (a segment routing header with 15 segments): the transport header starts past
/// what the kernel reads.
fn long_routing_header(src: IpAddr, dst: IpAddr) -> Frame {
    let mut f = udp_frame(src, dst, 40000, 53);
    f.ext = vec![Ext::Options {
        kind: 43,
        units: 30,
    }];
    f
}

/// The same frame with another source address.
fn from(f: &Frame, src: IpAddr) -> Vec<u8> {
    Frame { src, ..f.clone() }.build()
}

/// The same frame with another destination address.
fn to(f: &Frame, dst: IpAddr) -> Vec<u8> {
    Frame { dst, ..f.clone() }.build()
}

/// An IP header without readable addresses: IPv4 with a header length of 16 bytes, IPv6
/// whose version field says 4.
fn unreadable_ip_headers() -> [Vec<u8>; 2] {
    let mut v4 = tcp(IpAddr::V4(LOCAL_V4), ip("10.1.2.3"));
    v4[14] = 0x44;
    let mut v6 = tcp(IpAddr::V6(LOCAL_V6), ip(INCLUDED_V6));
    v6[14] = 0x40 | (v6[14] & 0x0f);
    [v4, v6]
}

/// Runs `frame` through the guard on `hook` and checks its action and the one counter.
fn expect_guard(
    dp: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    action: u32,
    conn: u32,
    reason: Reason,
) {
    let before = counters(dp);
    let got = guard(dp, hook, frame);
    let cells = counters(dp).since(&before).nonzero();
    assert_eq!(got, action, "{hook:?}: {reason:?}, counted {cells:?}");
    assert_eq!(cells.len(), 1, "{hook:?}: one counter moves, got {cells:?}");
    assert_eq!(
        (cells[0].0.unwrap_or(CONN_NONE), cells[0].1),
        (conn, reason),
        "{hook:?}: counter cell"
    );
}

#[test]
fn without_readable_addresses_a_packet_is_dropped_while_a_policy_is_in_force() {
    let Some(mut dp) =
        load_or_skip("without_readable_addresses_a_packet_is_dropped_while_a_policy_is_in_force")
    else {
        return;
    };
    // A raw-IP link carries nothing but IP: another version is a broken IP packet.
    let mut raw = raw_ip(&tcp(IpAddr::V4(LOCAL_V4), ip("10.1.2.3")));
    raw[0] = 0x55;
    // No connection and no lock-down: nothing to protect, the packet passes.
    dp.apply(&Policy::default()).unwrap();
    for f in unreadable_ip_headers() {
        expect(&mut dp, &f, 0, TC_ACT_OK, CONN_NONE, Reason::Malformed);
    }
    expect_on(
        &mut dp,
        programs::UPLINK_EGRESS_IP,
        &raw,
        0,
        TC_ACT_OK,
        CONN_NONE,
        Reason::Malformed,
    );
    // A device-level connection, lock-down alone, or a per-app rule alone: it could have been
    // a packet to tunnel or to drop.
    let lockdown_only = Policy {
        lockdown: true,
        ..Default::default()
    };
    let per_app_only = Policy {
        device_conn: None,
        apps: vec![tunnel_user::datapath::AppRule {
            cgroup_id: u64::MAX - 1,
            conn: 0,
        }],
        ..policy()
    };
    for p in [policy(), lockdown_only, per_app_only] {
        dp.apply(&p).unwrap();
        for f in unreadable_ip_headers() {
            expect(&mut dp, &f, 0, TC_ACT_SHOT, CONN_NONE, Reason::DropUnparsed);
            expect(
                &mut dp,
                &f,
                OWN_SOCKET_MARK,
                TC_ACT_SHOT,
                CONN_NONE,
                Reason::DropUnparsed,
            );
        }
        expect_on(
            &mut dp,
            programs::UPLINK_EGRESS_IP,
            &raw,
            0,
            TC_ACT_SHOT,
            CONN_NONE,
            Reason::DropUnparsed,
        );
    }
    // The guard, anti-spoofing alone (no lock-down): what it cannot read might claim a
    // tunnelled source.
    dp.apply(&policy()).unwrap();
    for hook in GUARD_HOOKS {
        for f in unreadable_ip_headers() {
            expect_guard(&mut dp, hook, &f, XDP_DROP, CONN_NONE, Reason::DropUnparsed);
        }
    }
}

#[test]
fn an_unreadable_transport_header_never_leaves_in_clear_for_a_tunnelled_destination() {
    let Some(mut dp) = load_or_skip(
        "an_unreadable_transport_header_never_leaves_in_clear_for_a_tunnelled_destination",
    ) else {
        return;
    };
    let (l4, l6) = (IpAddr::V4(LOCAL_V4), IpAddr::V6(LOCAL_V6));
    let seven = chain(l6, ip(INCLUDED_V6), 7);
    let routing = long_routing_header(l6, ip(INCLUDED_V6));
    let mut short_tcp = tcp(l4, ip("10.1.2.3"));
    short_tcp.truncate(14 + 20 + 10);
    let mut short_chain = chain(l6, ip(INCLUDED_V6), 2).build();
    short_chain.truncate(14 + 40 + 8 + 1);
    for p in [policy(), port_53()] {
        dp.apply(&p).unwrap();
        // Included: it can neither be translated nor checked against a port list. (Seven
        // extension headers, a 248-byte routing header, a TCP header cut short, an extension
        // header cut short.)
        for f in [
            seven.build(),
            routing.build(),
            short_tcp.clone(),
            short_chain.clone(),
        ] {
            expect(&mut dp, &f, 0, TC_ACT_SHOT, 0, Reason::DropUnparsed);
        }
        // Six extension headers are read through: the packet is classified as usual.
        expect(
            &mut dp,
            &chain(l6, ip(INCLUDED_V6), 6).build(),
            0,
            TC_ACT_REDIRECT,
            0,
            Reason::Tunnel,
        );
        // Where the address alone decides, it does: excluded, not included, the gateway, our
        // own sockets.
        for f in [&seven, &routing] {
            let excluded = to(f, ip(EXCLUDED_V6));
            let run = expect(&mut dp, &excluded, 0, TC_ACT_OK, 0, Reason::BypassExcluded);
            assert_eq!(run.out, excluded, "bypassed untouched");
            expect(
                &mut dp,
                &to(f, ip(OUTSIDE_V6)),
                0,
                TC_ACT_OK,
                0,
                Reason::BypassNotIncluded,
            );
            expect(
                &mut dp,
                &to(f, ip("2001:db8:100::5")),
                0,
                TC_ACT_OK,
                CONN_NONE,
                Reason::BypassGateway,
            );
            // (Another peer: its replies would be let in from now on.)
            expect(
                &mut dp,
                &to(f, ip("2001:db8:100:2::1")),
                OWN_SOCKET_MARK,
                TC_ACT_OK,
                CONN_NONE,
                Reason::BypassOwnSocket,
            );
        }
    }
    // Lock-down: not included is dropped, excluded stays open.
    dp.apply(&Policy {
        lockdown: true,
        ..policy()
    })
    .unwrap();
    for f in [&seven, &routing] {
        expect(
            &mut dp,
            &to(f, ip(OUTSIDE_V6)),
            0,
            TC_ACT_SHOT,
            0,
            Reason::DropLockdown,
        );
        expect(
            &mut dp,
            &to(f, ip(EXCLUDED_V6)),
            0,
            TC_ACT_OK,
            0,
            Reason::BypassExcluded,
        );
        expect(&mut dp, &f.build(), 0, TC_ACT_SHOT, 0, Reason::DropUnparsed);
    }
    // The guard (anti-spoofing, then lock-down too): from a source the tunnel owns it might be
    // spoofed; from outside the tunnel it is judged by its source.
    for p in [
        policy(),
        Policy {
            lockdown: true,
            ..policy()
        },
    ] {
        dp.apply(&p).unwrap();
        for hook in GUARD_HOOKS {
            for f in [&seven, &routing] {
                let spoofed = Frame {
                    src: ip(INCLUDED_V6),
                    dst: l6,
                    ..f.clone()
                };
                expect_guard(
                    &mut dp,
                    hook,
                    &spoofed.build(),
                    XDP_DROP,
                    0,
                    Reason::DropUnparsed,
                );
                let outside = from(&spoofed, ip(OUTSIDE_V6));
                if p.lockdown {
                    expect_guard(&mut dp, hook, &outside, XDP_DROP, 0, Reason::DropLockdown);
                } else {
                    expect_guard(&mut dp, hook, &outside, XDP_PASS, 0, Reason::IngressPass);
                }
                let excluded = from(&spoofed, ip(EXCLUDED_V6));
                expect_guard(&mut dp, hook, &excluded, XDP_PASS, 0, Reason::IngressPass);
            }
        }
    }
}

/// Policy of the fragment cases: the connection's UDP port list is just 53.
fn port_53() -> Policy {
    let mut p = policy();
    p.conns[0].udp_ports = Some("53".parse().unwrap());
    p
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let Some(mut dp) = load_or_skip("later_fragments_follow_their_first_fragment") else {
        return;
    };
    dp.apply(&port_53()).unwrap();
    for (src, dst, tun) in [
        (IpAddr::V4(LOCAL_V4), ip("10.1.2.3"), IpAddr::V4(TUN_V4)),
        (IpAddr::V6(LOCAL_V6), ip(INCLUDED_V6), IpAddr::V6(TUN_V6)),
    ] {
        // A listed port: the first fragment is tunnelled, and so is every later one, with the
        // same source address (its IP header alone is rewritten).
        let dns = udp_frame(src, dst, 40000, 53);
        let frags = dp.frag_count();
        for (offset, more) in [(0, true), (100, true), (200, false)] {
            let f = dns.clone().fragment(7, offset, more);
            let run = expect(&mut dp, &f.build(), 0, TC_ACT_REDIRECT, 0, Reason::Tunnel);
            assert_eq!(run.out, from(&f, tun), "fragment at {offset} in the tunnel");
            assert!(checksums_valid(&run.out));
            if more {
                assert_eq!(dp.frag_count(), frags + 1, "the datagram is remembered");
            }
        }
        assert_eq!(dp.frag_count(), frags, "the last fragment forgets it");
        // An unlisted port: every fragment bypasses, untouched.
        let other = udp_frame(src, dst, 40000, 5353);
        for (offset, more) in [(0, true), (100, true), (200, false)] {
            let f = other.clone().fragment(8, offset, more).build();
            let run = expect(&mut dp, &f, 0, TC_ACT_OK, 0, Reason::BypassUdpPort);
            assert_eq!(run.out, f);
        }
    }
    // Lock-down: a datagram whose first fragment is dropped is dropped whole.
    dp.apply(&Policy {
        lockdown: true,
        ..port_53()
    })
    .unwrap();
    let blocked = udp_frame(IpAddr::V4(LOCAL_V4), ip("10.1.2.3"), 40000, 5353);
    for (offset, more) in [(0, true), (100, false)] {
        let f = blocked.clone().fragment(9, offset, more).build();
        expect(&mut dp, &f, 0, TC_ACT_SHOT, 0, Reason::DropLockdown);
    }
}

#[test]
fn later_fragments_without_their_first_never_leave_in_clear() {
    let Some(mut dp) = load_or_skip("later_fragments_without_their_first_never_leave_in_clear")
    else {
        return;
    };
    let (l4, l6) = (IpAddr::V4(LOCAL_V4), IpAddr::V6(LOCAL_V6));
    dp.apply(&port_53()).unwrap();
    // Under a UDP port list only the ports could tell, and they are in the first fragment.
    let mut behind_options = udp_frame(l6, ip(INCLUDED_V6), 40000, 53);
    behind_options.ext = vec![
        Ext::Fragment(Fragment {
            id: 11,
            offset: 50,
            more: true,
        }),
        Ext::Options { kind: 60, units: 0 },
    ];
    for f in [
        udp_frame(l4, ip("10.1.2.3"), 40000, 53).fragment(10, 50, true),
        udp_frame(l6, ip(INCLUDED_V6), 40000, 53).fragment(10, 50, false),
        behind_options,
    ] {
        expect(&mut dp, &f.build(), 0, TC_ACT_SHOT, 0, Reason::DropFragment);
    }
    // TCP is not subject to the port list: tunnelled, its IP header translated.
    let tcp_frag = Frame::new(
        l4,
        ip("10.1.2.3"),
        L4::Tcp {
            sport: 40000,
            dport: 443,
            flags: 0x10,
            mss: None,
        },
    )
    .fragment(12, 50, true);
    let run = expect(
        &mut dp,
        &tcp_frag.build(),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
    assert_eq!(run.out, from(&tcp_frag, IpAddr::V4(TUN_V4)));
    // Not included: the address decides.
    let outside = udp_frame(l4, ip("172.16.0.1"), 40000, 53).fragment(13, 50, true);
    expect(
        &mut dp,
        &outside.build(),
        0,
        TC_ACT_OK,
        0,
        Reason::BypassNotIncluded,
    );
    // Without a port list every fragment to an included destination is tunnelled.
    dp.apply(&policy()).unwrap();
    for (f, tun) in [
        (
            udp_frame(l4, ip("10.1.2.3"), 40000, 53).fragment(14, 50, true),
            IpAddr::V4(TUN_V4),
        ),
        (
            udp_frame(l6, ip(INCLUDED_V6), 40000, 53).fragment(14, 50, true),
            IpAddr::V6(TUN_V6),
        ),
    ] {
        let run = expect(&mut dp, &f.build(), 0, TC_ACT_REDIRECT, 0, Reason::Tunnel);
        assert_eq!(run.out, from(&f, tun));
        assert!(checksums_valid(&run.out));
    }
    assert_eq!(
        dp.flow_count(),
        0,
        "a fragment without ports records no flow"
    );
    // Lock-down: not included is dropped.
    dp.apply(&Policy {
        lockdown: true,
        ..port_53()
    })
    .unwrap();
    expect(
        &mut dp,
        &outside.build(),
        0,
        TC_ACT_SHOT,
        0,
        Reason::DropLockdown,
    );
}

/// The policy of the TUN device cases: the test runner's device (loopback) is connection
/// 0's TUN device.
fn on_test_device(mut p: Policy) -> Policy {
    p.conns[0].tun_ifindex = TEST_RUN_IFINDEX;
    p
}

#[test]
fn tun_egress_applies_the_same_rules_to_what_is_routed_into_it() {
    let Some(mut dp) = load_or_skip("tun_egress_applies_the_same_rules_to_what_is_routed_into_it")
    else {
        return;
    };
    dp.apply(&on_test_device(port_53())).unwrap();
    let tun_egress = |dp: &mut Datapath, f: &[u8], action, reason| {
        expect_on(dp, programs::TUN_EGRESS, &raw_ip(f), 0, action, 0, reason)
    };
    for (src, dst, tun) in [
        (IpAddr::V4(LOCAL_V4), ip("10.1.2.3"), IpAddr::V4(TUN_V4)),
        (IpAddr::V6(LOCAL_V6), ip(INCLUDED_V6), IpAddr::V6(TUN_V6)),
    ] {
        // A listed port: every fragment continues into this device, translated.
        let dns = udp_frame(src, dst, 40000, 53);
        for (offset, more) in [(0, true), (100, true), (200, false)] {
            let f = dns.clone().fragment(21, offset, more);
            let run = tun_egress(&mut dp, &f.build(), TC_ACT_OK, Reason::Tunnel);
            assert_eq!(run.out, raw_ip(&from(&f, tun)), "fragment at {offset}");
        }
        // An unlisted port has no other route: every fragment is dropped.
        let other = udp_frame(src, dst, 40000, 5353);
        for (offset, more) in [(0, true), (100, false)] {
            let f = other.clone().fragment(22, offset, more).build();
            tun_egress(&mut dp, &f, TC_ACT_SHOT, Reason::DropUnroutable);
        }
        // A later fragment of a datagram never seen.
        let orphan = dns.clone().fragment(23, 50, true).build();
        tun_egress(&mut dp, &orphan, TC_ACT_SHOT, Reason::DropFragment);
    }
    let l6 = IpAddr::V6(LOCAL_V6);
    for f in [
        chain(l6, ip(INCLUDED_V6), 7),
        long_routing_header(l6, ip(INCLUDED_V6)),
    ] {
        tun_egress(&mut dp, &f.build(), TC_ACT_SHOT, Reason::DropUnparsed);
    }
    let mut bad = raw_ip(&tcp(IpAddr::V4(LOCAL_V4), ip("10.1.2.3")));
    bad[0] = 0x44;
    expect_on(
        &mut dp,
        programs::TUN_EGRESS,
        &bad,
        0,
        TC_ACT_SHOT,
        0,
        Reason::DropUnparsed,
    );
}

#[test]
fn tun_ingress_restores_every_fragment_of_a_reply() {
    let Some(mut dp) = load_or_skip("tun_ingress_restores_every_fragment_of_a_reply") else {
        return;
    };
    dp.apply(&on_test_device(policy())).unwrap();
    let tun_ingress = |dp: &mut Datapath, f: &[u8], reason| {
        expect_on(
            dp,
            programs::TUN_INGRESS,
            &raw_ip(f),
            0,
            TC_ACT_OK,
            0,
            reason,
        )
    };
    for (local, remote, tun) in [
        (IpAddr::V4(LOCAL_V4), ip("10.1.2.3"), IpAddr::V4(TUN_V4)),
        (IpAddr::V6(LOCAL_V6), ip(INCLUDED_V6), IpAddr::V6(TUN_V6)),
    ] {
        // The request records the flow.
        let request = udp_frame(local, remote, 40000, 53).build();
        expect(&mut dp, &request, 0, TC_ACT_REDIRECT, 0, Reason::Tunnel);
        // Every fragment of the reply gets the original local address back.
        let reply = udp_frame(remote, tun, 53, 40000);
        for (offset, more) in [(0, true), (100, true), (200, false)] {
            let f = reply.clone().fragment(31, offset, more);
            let run = tun_ingress(&mut dp, &f.build(), Reason::ReplyRestored);
            let restored = Frame {
                dst: local,
                ..f.clone()
            };
            assert_eq!(run.out, raw_ip(&restored.build()), "fragment at {offset}");
        }
        // A later fragment of a reply never seen is delivered as addressed.
        let orphan = reply.clone().fragment(32, 100, false).build();
        let run = tun_ingress(&mut dp, &orphan, Reason::ReplyNoFlow);
        assert_eq!(run.out, raw_ip(&orphan));
    }
    // A reply whose transport header cannot be read is delivered as addressed.
    let unreadable = chain(ip(INCLUDED_V6), IpAddr::V6(TUN_V6), 7).build();
    let run = tun_ingress(&mut dp, &unreadable, Reason::Malformed);
    assert_eq!(run.out, raw_ip(&unreadable));
}

#[test]
fn the_guard_judges_later_fragments_by_address_and_reassembly_by_the_first() {
    let Some(mut dp) =
        load_or_skip("the_guard_judges_later_fragments_by_address_and_reassembly_by_the_first")
    else {
        return;
    };
    for (corp, local) in [
        (ip("10.1.2.3"), IpAddr::V4(LOCAL_V4)),
        (ip(INCLUDED_V6), IpAddr::V6(LOCAL_V6)),
    ] {
        for hook in GUARD_HOOKS {
            dp.apply(&port_53()).unwrap();
            // From a source the tunnel owns, under a port list: the first fragment is judged
            // by its ports (53 is tunnelled, so arriving on the uplink it is spoofed); later
            // ones pass, since the stack reassembles nothing without the first.
            let first = |sport| {
                udp_frame(corp, local, sport, 40000)
                    .fragment(41, 0, true)
                    .build()
            };
            expect_guard(&mut dp, hook, &first(53), XDP_DROP, 0, Reason::DropSpoofed);
            expect_guard(
                &mut dp,
                hook,
                &first(5353),
                XDP_PASS,
                0,
                Reason::IngressPass,
            );
            let later = udp_frame(corp, local, 53, 40000)
                .fragment(41, 100, false)
                .build();
            expect_guard(&mut dp, hook, &later, XDP_PASS, 0, Reason::IngressPass);
            // Lock-down: either way the datagram is not let in.
            dp.apply(&Policy {
                lockdown: true,
                ..port_53()
            })
            .unwrap();
            expect_guard(&mut dp, hook, &later, XDP_DROP, 0, Reason::DropFragment);
            // Without a port list the address alone says it is spoofed.
            dp.apply(&policy()).unwrap();
            expect_guard(&mut dp, hook, &later, XDP_DROP, 0, Reason::DropSpoofed);
        }
    }
}

#[test]
fn a_later_fragment_never_follows_a_verdict_of_a_retired_policy() {
    let Some(mut dp) = load_or_skip("a_later_fragment_never_follows_a_verdict_of_a_retired_policy")
    else {
        return;
    };
    let lockdown = Policy {
        lockdown: true,
        ..port_53()
    };
    for (src, dst) in [
        (IpAddr::V4(LOCAL_V4), ip("10.1.2.3")),
        (IpAddr::V6(LOCAL_V6), ip(INCLUDED_V6)),
    ] {
        dp.apply(&port_53()).unwrap();
        // An unlisted port: the first fragment bypasses, and its verdict is kept...
        let other = udp_frame(src, dst, 40000, 5353);
        let first = other.clone().fragment(51, 0, true).build();
        expect(&mut dp, &first, 0, TC_ACT_OK, 0, Reason::BypassUdpPort);
        assert_eq!(dp.frag_count(), 1, "the datagram is remembered");
        // ...until lock-down comes on: the rest of the datagram meets the new policy, and
        // a datagram whose last fragment never came leaves nothing behind to follow.
        dp.apply(&lockdown).unwrap();
        assert_eq!(dp.frag_count(), 0, "the old policy's verdicts are retired");
        let later = |offset| other.clone().fragment(51, offset, true).build();
        expect(
            &mut dp,
            &later(100),
            0,
            TC_ACT_SHOT,
            0,
            Reason::DropFragment,
        );
        // Back in the slot the verdict was given in, still nothing to follow.
        dp.apply(&lockdown).unwrap();
        expect(
            &mut dp,
            &later(200),
            0,
            TC_ACT_SHOT,
            0,
            Reason::DropFragment,
        );
    }
}

#[test]
fn ipv6_later_fragments_find_a_first_fragment_with_more_headers() {
    let Some(mut dp) = load_or_skip("ipv6_later_fragments_find_a_first_fragment_with_more_headers")
    else {
        return;
    };
    dp.apply(&port_53()).unwrap();
    // Destination options for the final destination travel behind the fragment header, in
    // the first fragment only: the later fragments' header names them, not UDP.
    for (id, dport, action, reason) in [
        (61, 53, TC_ACT_REDIRECT, Reason::Tunnel),
        (62, 5353, TC_ACT_OK, Reason::BypassUdpPort),
    ] {
        let mut dgram = udp_frame(IpAddr::V6(LOCAL_V6), ip(INCLUDED_V6), 40000, dport);
        dgram.ext = vec![Ext::Options { kind: 60, units: 0 }];
        for (offset, more) in [(0, true), (100, true), (200, false)] {
            let f = dgram.clone().fragment(id, offset, more);
            assert!(matches!(f.ext[0], Ext::Fragment(_)), "{:?}", f.ext);
            let run = expect(&mut dp, &f.build(), 0, action, 0, reason);
            let want = if reason == Reason::Tunnel {
                from(&f, IpAddr::V6(TUN_V6))
            } else {
                f.build()
            };
            assert_eq!(run.out, want, "fragment at {offset}");
        }
        assert_eq!(dp.frag_count(), 0, "the last fragment forgets the datagram");
    }
}

/// What the kernel log forwards to tracing while `f` runs, as tracing's plain-text lines.
fn traced(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = lines.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

/// A tunnelled, an excluded and an unparsable packet through the uplink classifier, and an
/// own-socket one (the first test, before any policy is read).
fn log_worthy_packets(dp: &mut Datapath) {
    let l4 = IpAddr::V4(LOCAL_V4);
    expect(
        dp,
        &tcp(l4, ip("10.1.2.3")),
        0,
        TC_ACT_REDIRECT,
        0,
        Reason::Tunnel,
    );
    expect(
        dp,
        &udp(IpAddr::V6(LOCAL_V6), ip("2001:db8:100:9::1"), 53),
        0,
        TC_ACT_OK,
        0,
        Reason::BypassExcluded,
    );
    expect(
        dp,
        &tcp(l4, ip("10.1.2.3")),
        OWN_SOCKET_MARK,
        TC_ACT_OK,
        CONN_NONE,
        Reason::BypassOwnSocket,
    );
    let [short, _] = unreadable_ip_headers();
    expect(dp, &short, 0, TC_ACT_SHOT, CONN_NONE, Reason::DropUnparsed);
}

#[test]
fn the_kernel_log_records_each_verdict_when_on_and_nothing_when_off() {
    let test = "the_kernel_log_records_each_verdict_when_on_and_nothing_when_off";
    if load_or_skip(test).is_none() {
        return;
    }
    let mut on = Datapath::load_with(KernelLog::Verdicts).expect("loading with the log on");
    on.apply(&policy()).unwrap();
    let mut reader = on.take_kernel_log().expect("the log's reader");
    assert!(on.take_kernel_log().is_none(), "one reader");
    log_worthy_packets(&mut on);
    let text = traced(|| reader.flush());
    let want = [
        "DEBUG tunnel_ebpf: uplink egress: conn 0 proto 6 \
         192.168.1.10:40000 -> 10.1.2.3:443 => tunnel (tunnel)",
        "DEBUG tunnel_ebpf: uplink egress: conn 0 proto 17 \
         [2001:db8:1::a]:40000 -> [2001:db8:100:9::1]:53 => bypass (bypass_excluded)",
        "DEBUG tunnel_ebpf: uplink egress: conn 16 proto 6 \
         192.168.1.10:40000 -> 10.1.2.3:443 => bypass (bypass_own_socket)",
        "DEBUG tunnel_ebpf: uplink egress: conn 16 (no addresses read) => drop (drop_unparsed)",
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, want, "one record per verdict, in order:\n{text}");

    let mut off = Datapath::load().expect("loading with the log off");
    off.apply(&policy()).unwrap();
    let mut reader = off.take_kernel_log().expect("the log's reader");
    log_worthy_packets(&mut off);
    let text = traced(|| reader.flush());
    assert_eq!(text, "", "no records while the log is off");
}

/// An ICMP error (Ethernet frame) from `from` to `to` of `(type, code)` with `word` in its
/// second word (the MTU of "fragmentation needed" / "packet too big"), quoting `quote` (raw
/// IP, as it would have been cut).
fn icmp_error(
    from: IpAddr,
    to: IpAddr,
    (kind, code): (u8, u8),
    word: u32,
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&word.to_be_bytes());
    icmp.extend_from_slice(quote);
    let mut f = vec![0u8; 12];
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 7, 0, 0, 64, 1, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[58, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&icmp);
    finish_checksums(&mut f);
    f
}

/// ICMP errors about datagrams that went into the tunnel translated (fragmentation needed,
/// packet too big, unreachable, time exceeded) reach the socket that sent them: the error's
/// destination and its quote's source are the original address again, and the quote is the
/// datagram exactly as the socket sent it (checksums included), whole or cut to the eight
/// transport bytes RFC 792 promises. The model gives the same bytes. Errors about a
/// datagram with no flow, or whose quote does not come from the tunnel address, are
/// delivered as addressed.
#[test]
fn icmp_errors_about_tunnelled_datagrams_reach_their_socket() {
    let Some(mut dp) = load_or_skip("icmp_errors_about_tunnelled_datagrams_reach_their_socket")
    else {
        return;
    };
    let policy = on_test_device(policy());
    dp.apply(&policy).unwrap();
    let mut model = Model::default();
    let echo = |src, dst| {
        Frame::new(
            src,
            dst,
            L4::Echo {
                id: 0x4242,
                reply: false,
            },
        )
        .build()
    };
    let cases: [(IpAddr, IpAddr, IpAddr, (u8, u8)); 2] = [
        (
            IpAddr::V4(LOCAL_V4),
            ip("10.1.2.3"),
            IpAddr::V4(TUN_V4),
            (3, 4),
        ),
        (
            IpAddr::V6(LOCAL_V6),
            ip(INCLUDED_V6),
            IpAddr::V6(TUN_V6),
            (2, 0),
        ),
    ];
    let router = |v6: bool| {
        if v6 {
            ip("2001:db8:100::1")
        } else {
            ip("10.1.0.1")
        }
    };
    let mut translated = 0;
    for (local, remote, tun, too_big) in cases {
        let v6 = local.is_ipv6();
        let unreachable = if v6 { (1, 4) } else { (3, 3) };
        let time_exceeded = if v6 { (3, 0) } else { (11, 0) };
        let header = if v6 { 40 } else { 20 };
        for (request, kind) in [
            (udp(local, remote, 53), too_big),
            (tcp(local, remote), too_big),
            (echo(local, remote), too_big),
            (udp(local, remote, 7000), unreachable),
            (tcp(local, remote), time_exceeded),
        ] {
            let run = expect(&mut dp, &request, 0, TC_ACT_REDIRECT, 0, Reason::Tunnel);
            let _ = model.uplink_egress(&policy, &request, &Origin::default());
            let sent = raw_ip(&run.out);
            // The whole datagram, and (IPv4) only its first eight transport bytes.
            let cuts: &[usize] = if v6 { &[usize::MAX] } else { &[usize::MAX, 28] };
            for &cut in cuts {
                let quote = &sent[..cut.min(sent.len())];
                let error = icmp_error(router(v6), tun, kind, 1300, quote);
                let ctx = format!("{kind:?} about {request:02x?} cut at {cut}");
                let run = expect_on(
                    &mut dp,
                    programs::TUN_INGRESS,
                    &raw_ip(&error),
                    0,
                    TC_ACT_OK,
                    0,
                    Reason::ReplyRestored,
                );
                let out = run.out;
                let wanted = model
                    .tun_ingress_icmp_error(&policy, 0, &error)
                    .unwrap_or_else(|| panic!("the model translates {ctx}"));
                assert_eq!(out, raw_ip(&wanted), "kernel and model, {ctx}");
                let original = raw_ip(&request);
                let q = header + 8;
                assert_eq!(
                    &out[q..],
                    &original[..out.len() - q],
                    "the quote is what the socket sent, {ctx}"
                );
                assert!(checksums_valid(&eth(&out)), "the error's checksums, {ctx}");
                let dst = if v6 { &out[24..40] } else { &out[16..20] };
                assert_eq!(dst, &raw_ip(&request)[if v6 { 8..24 } else { 12..16 }]);
                translated += 1;
            }
        }
        // No flow for the quoted datagram (another port), and a quote that did not come
        // from the tunnel address: delivered as addressed.
        let run = expect(
            &mut dp,
            &udp(local, remote, 53),
            0,
            TC_ACT_REDIRECT,
            0,
            Reason::Tunnel,
        );
        let mut other_port = raw_ip(&run.out);
        other_port[header + 2..header + 4].copy_from_slice(&54u16.to_be_bytes());
        let from_local = raw_ip(&udp(local, remote, 53));
        for quote in [other_port, from_local] {
            let error = icmp_error(router(v6), tun, too_big, 1300, &quote);
            let run = expect_on(
                &mut dp,
                programs::TUN_INGRESS,
                &raw_ip(&error),
                0,
                TC_ACT_OK,
                0,
                Reason::ReplyNoFlow,
            );
            assert_eq!(run.out, raw_ip(&error));
            assert_eq!(model.tun_ingress_icmp_error(&policy, 0, &error), None);
        }
    }
    assert_eq!(translated, 15);
}

/// Wraps a raw IP packet in a dummy Ethernet header.
fn eth(packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(if packet[0] >> 4 == 6 {
        &[0x86, 0xdd]
    } else {
        &[0x08, 0x00]
    });
    f.extend_from_slice(packet);
    f
}
