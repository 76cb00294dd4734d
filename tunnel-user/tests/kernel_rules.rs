//! Hand-written cases for every rule of the kernel programs, through `BPF_PROG_TEST_RUN`.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use support::*;
use tunnel_common::{CONN_NONE, OWN_SOCKET_MARK, Reason};
use tunnel_user::datapath::{
    ConnPolicy, Datapath, Policy,
    frames::{Frame, L4},
    reference::checksums_valid,
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

/// Runs one frame and checks action and the single counter it must bump.
fn expect(
    dp: &mut Datapath,
    frame: &[u8],
    mark: u32,
    action: u32,
    conn: u32,
    reason: Reason,
) -> TcRun {
    let before = counters(dp);
    let run = egress(dp, frame, mark);
    let delta = counters(dp).since(&before);
    assert_eq!(run.action, action, "action for {reason:?}");
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
    // A TCP header cut short (the kernel's test runner refuses frames with a truncated IP
    // header before our program sees them).
    let mut short = tcp(l4, ip("10.1.1.1"));
    short.truncate(14 + 20 + 10);
    expect(&mut dp, &short, 0, TC_ACT_OK, CONN_NONE, Reason::Malformed);
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
