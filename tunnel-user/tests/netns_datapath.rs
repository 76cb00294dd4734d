//! The data path end to end in network namespaces, with real sockets and a real TCP stack,
//! in the [`SplitWorld`] (its module docs draw the topology): the corp server answers through
//! the TUN relay, the LAN server with the same address answers on the wire, so every answer
//! says which way the packets went.
//!
//! Policy: include 10.1.0.0/16, 172.31.0.0/16, fd00:100::/64; exclude 172.31.9.0/24; UDP port
//! list 5000-5001; the gateway is 192.168.50.1.

mod support;

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use tunnel_common::{CONN_NONE, Reason};
use tunnel_user::{
    datapath::{AppRule, ConnPolicy, Datapath, GuardHook, Policy, reference::checksums_valid},
    testbed::{
        SplitWorld,
        split::{CLIENT, CORP, CORP6, GATEWAY, TCP_PORT, TUN_V4, TUN_V6},
        wire::{Capture, Datagram, NOBODY, segment_routing_header, send_unprivileged},
    },
};

/// Held by each test for its whole run. Two tests check kernel-wide state after they drop
/// the data path (nothing left on an interface, no program of ours still loaded). A process
/// spawned by one test holds copies of all the binary's descriptors, the other test's bpf
/// links included, until it execs: side by side, a test's detach could complete only after
/// its own check.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn counters(dp: &Datapath) -> tunnel_user::datapath::CounterTable {
    dp.counters().unwrap()
}

/// Wraps a raw IP packet in a dummy Ethernet header for the checksum checker.
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

/// The connection of every test here: include 10.1.0.0/16, 172.31.0.0/16, fd00:100::/64,
/// exclude 172.31.9.0/24, UDP ports 5000-5001.
fn tunnelled(tun_ifindex: u32) -> ConnPolicy {
    ConnPolicy {
        tun_v4: Some(TUN_V4),
        tun_v6: Some(TUN_V6),
        include: ["10.1.0.0/16", "172.31.0.0/16", "fd00:100::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
        exclude: vec!["172.31.9.0/24".parse().unwrap()],
        udp_ports: Some("5000-5001".parse().unwrap()),
        ..ConnPolicy::new(0, tun_ifindex)
    }
}

/// The uplink guard, on whatever hook it runs: the LAN sends packets claiming a tunnelled
/// source (dropped as spoofed), then under lock-down from a host outside the tunnel (dropped)
/// and from the gateway (passes).
fn guard_checks(w: &SplitWorld, dp: &mut Datapath, device: &Policy) {
    let lan = &w.lan;
    dp.apply(device).unwrap();
    let before = counters(dp);
    let _ = lan.sh("ping -c 3 -i 0.2 -W 1 -I 10.1.2.3 192.168.50.2");
    let d = counters(dp).since(&before);
    assert_eq!(d.get(0, Reason::DropSpoofed).packets, 3, "{d:?}");
    dp.apply(&Policy {
        lockdown: true,
        ..device.clone()
    })
    .unwrap();
    // A young link's IPv6 chatter (router solicitations, duplicate address detection,
    // multicast listener reports) is link control, not counted as a drop below.
    let before = counters(dp);
    let _ = lan.sh("ping -c 2 -i 0.2 -W 1 -I 172.16.0.1 192.168.50.2");
    lan.sh("ping -c 1 -W 1 192.168.50.2")
        .expect("the gateway still reaches us");
    let d = counters(dp).since(&before);
    assert_eq!(
        d.get(0, Reason::DropLockdown).packets,
        2,
        "{:?}",
        d.nonzero()
    );
    assert!(
        d.get(CONN_NONE, Reason::BypassGateway).packets >= 2,
        "request in, reply out: {d:?}"
    );
    dp.apply(device).unwrap();
}

/// The guard on XDP (what a physical NIC gets), where the main test's veth gets TC
/// ingress: the same drops, and nothing left behind.
#[test]
fn the_guard_on_xdp() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP the_guard_on_xdp: needs root");
        return;
    }
    let w = SplitWorld::build(&format!("tdx{}", std::process::id())).unwrap();
    let mut dp = Datapath::load().unwrap();
    let (uplink, tun_attach, tun_ifindex) = w
        .client
        .enter(|| {
            let up = dp.attach_uplink_with("up0", GuardHook::Xdp)?;
            let tun = dp.attach_tun("tun0")?;
            Ok::<_, tunnel_user::DatapathError>((up, tun, tunnel_user::datapath::ifindex("tun0")?))
        })
        .unwrap()
        .unwrap();
    assert_eq!(uplink.guard_hook(), GuardHook::Xdp);
    let link = w.client.sh("ip -d link show up0").unwrap();
    assert!(link.contains("xdp"), "{link}");
    let device = Policy {
        gateways: vec![GATEWAY.parse().unwrap()],
        exceptions: Vec::new(),
        device_conn: Some(0),
        conns: vec![tunnelled(tun_ifindex)],
        ..Default::default()
    };
    guard_checks(&w, &mut dp, &device);
    assert_eq!(w.who_answers_tcp(CORP).as_deref(), Some("corp"));
    drop(tun_attach);
    drop(uplink);
    drop(dp);
    let link = w.client.sh("ip -d link show up0").unwrap();
    assert!(!link.contains("xdp"), "left on up0: {link}");
}

#[test]
fn datapath_end_to_end_in_namespaces() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP datapath_end_to_end_in_namespaces: needs root");
        return;
    }
    let id = std::process::id();
    let w = SplitWorld::build(&format!("tdp{id}")).unwrap();
    let (client, relay) = (&w.client, &w.relay);

    // Before anything is attached, everything goes to the LAN.
    assert_eq!(w.who_answers_tcp(CORP).as_deref(), Some("lan"));

    // Program IDs only grow: what this test loads has an ID above every one loaded now
    // (others' programs, e.g. links a killed tunneld left pinned, are not this test's).
    let loaded_before = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .max()
        .unwrap_or(0);
    let mut dp = Datapath::load().unwrap();
    let (uplink, tun_attach, tun_ifindex) = client
        .enter(|| {
            let up = dp.attach_uplink("up0")?;
            let tun = dp.attach_tun("tun0")?;
            Ok::<_, tunnel_user::DatapathError>((up, tun, tunnel_user::datapath::ifindex("tun0")?))
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        uplink.guard_hook(),
        GuardHook::TcIngress,
        "a veth uplink is guarded at TC ingress"
    );
    let conn = tunnelled(tun_ifindex);
    let device = Policy {
        gateways: vec![GATEWAY.parse().unwrap()],
        exceptions: Vec::new(),
        device_conn: Some(0),
        conns: vec![conn.clone()],
        ..Default::default()
    };
    dp.apply(&device).unwrap();

    // Split tunnelling: included to corp through the tunnel, excluded straight to the LAN
    // with the source address untouched.
    let before = counters(&dp);
    assert_eq!(w.who_answers_tcp(CORP).as_deref(), Some("corp"));
    assert_eq!(
        w.who_answers_tcp(CORP6).as_deref(),
        Some("corp"),
        "IPv6 through the tunnel"
    );
    while w.lan_peers.try_recv().is_ok() {}
    assert_eq!(w.who_answers_tcp("172.31.9.1").as_deref(), Some("lan"));
    let peer = w.lan_peers.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(
        peer.ip(),
        IpAddr::V4(CLIENT),
        "excluded traffic keeps its source"
    );
    let d = counters(&dp).since(&before);
    assert!(
        d.get(0, Reason::Tunnel).packets >= 6,
        "SYN, ACK... of two connections: {d:?}"
    );
    assert!(
        d.get(0, Reason::ReplyRestored).packets >= 4,
        "replies restored on tun0: {d:?}"
    );
    assert!(d.get(0, Reason::BypassExcluded).packets >= 3, "{d:?}");

    // A real transfer through the tunnel and the reverse NAT, with MSS clamping at work.
    w.echo_transfer(CORP, 4 << 20)
        .expect("4 MiB through the tunnel over IPv4");
    w.echo_transfer(CORP6, 1 << 20)
        .expect("1 MiB through the tunnel over IPv6");

    // UDP: listed ports through the tunnel, others direct.
    assert_eq!(w.who_answers_udp(CORP, 5000).as_deref(), Some("corp"));
    assert_eq!(w.who_answers_udp(CORP, 7000).as_deref(), Some("lan"));

    // Everything that entered the tunnel carries the tunnel address and valid checksums.
    {
        let captured = relay.captured.lock().unwrap();
        let included: Vec<ipnet::IpNet> = conn
            .include
            .iter()
            .chain(&[CORP6.parse::<IpAddr>().unwrap().into()])
            .copied()
            .collect();
        // The kernel's own chatter on tun0 (IPv6 router solicitations at link-up) is not ours.
        let ours = captured.iter().filter(|p| {
            let dst: IpAddr = if p[0] >> 4 == 4 {
                IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
            } else {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap()))
            };
            included.iter().any(|n| n.contains(&dst))
        });
        let mut n = 0;
        for p in ours {
            n += 1;
            let src: IpAddr = if p[0] >> 4 == 4 {
                IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]))
            } else {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap()))
            };
            assert!(
                src == IpAddr::V4(TUN_V4) || src == IpAddr::V6(TUN_V6),
                "source {src} in the tunnel"
            );
            assert!(checksums_valid(&eth(p)), "checksums of {p:02x?}");
            assert!(
                p.len() <= 1400,
                "MSS clamping keeps segments within the tunnel MTU: {}",
                p.len()
            );
        }
        assert!(
            n > 1000,
            "the transfers went through the relay ({n} packets)"
        );
    }

    // The guard: anti-spoofing, and lock-down for what arrives.
    guard_checks(&w, &mut dp, &device);

    // Per-app: no device-level connection; only sockets in our app cgroup use the tunnel.
    let cgroup = support::cgroup2_root().join(format!("tunnel-e2e-{id}"));
    fs::create_dir(&cgroup).unwrap();
    let per_app = Policy {
        device_conn: None,
        apps: vec![AppRule {
            cgroup_id: std::os::unix::fs::MetadataExt::ino(&fs::metadata(&cgroup).unwrap()),
            conn: 0,
        }],
        ..device.clone()
    };
    dp.apply(&per_app).unwrap();
    let fetch = format!("exec 3<>/dev/tcp/{CORP}/{TCP_PORT}; head -c 4 <&3");
    assert_eq!(
        w.run_in_cgroup(&cgroup, &fetch).unwrap(),
        "corp",
        "the app goes through the tunnel"
    );
    assert_eq!(
        w.who_answers_tcp(CORP).as_deref(),
        Some("lan"),
        "other processes do not"
    );
    let _ = fs::remove_dir(&cgroup);

    // Lock-down: what is not included is dropped; the tunnel and excluded routes keep working.
    let locked = Policy {
        lockdown: true,
        ..device.clone()
    };
    dp.apply(&locked).unwrap();
    let before = counters(&dp);
    assert_eq!(
        w.who_answers_tcp("172.16.0.1"),
        None,
        "not included: dropped"
    );
    assert_eq!(w.who_answers_tcp(CORP).as_deref(), Some("corp"));
    assert_eq!(
        w.who_answers_tcp("172.31.9.1").as_deref(),
        Some("lan"),
        "excluded stays open"
    );
    let d = counters(&dp).since(&before);
    assert!(d.get(0, Reason::DropLockdown).packets >= 1, "{d:?}");

    // No default route: the client routes the included range into the TUN device itself.
    dp.apply(&device).unwrap();
    client
        .sh("ip route del default; ip route add 10.1.0.0/16 dev tun0")
        .unwrap();
    let before = counters(&dp);
    assert_eq!(
        w.who_answers_tcp(CORP).as_deref(),
        Some("corp"),
        "routed into tun0 directly"
    );
    assert_eq!(
        w.who_answers_udp(CORP, 7000),
        None,
        "UDP outside the port list has no route"
    );
    let d = counters(&dp).since(&before);
    assert!(d.get(0, Reason::Tunnel).packets >= 3, "{d:?}");
    assert!(d.get(0, Reason::DropUnroutable).packets >= 1, "{d:?}");
    assert!(relay.stats.backward.load(Ordering::Relaxed) > 0);

    // Detach: nothing of ours stays on the interfaces or in the kernel.
    drop(tun_attach);
    drop(uplink);
    drop(dp);
    client
        .enter(|| {
            use aya::programs::{SchedClassifier, TcAttachType};
            for (ifname, at) in [
                ("up0", TcAttachType::Egress),
                ("up0", TcAttachType::Ingress),
                ("tun0", TcAttachType::Egress),
                ("tun0", TcAttachType::Ingress),
            ] {
                let (_, progs) = SchedClassifier::query_tcx(ifname, at).unwrap();
                assert!(progs.is_empty(), "tcx programs left on {ifname}");
            }
        })
        .unwrap();
    let link = client
        .sh("ip -d link show up0; tc qdisc show dev up0; tc qdisc show dev tun0")
        .unwrap();
    assert!(
        !link.contains("xdp") && !link.contains("clsact"),
        "left on the interfaces: {link}"
    );
    let leftovers: Vec<String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.id() > loaded_before)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("tunnel_"))
        .collect();
    assert!(leftovers.is_empty(), "programs still loaded: {leftovers:?}");
    // The data path pins nothing unless asked (tunneld asks, under /sys/fs/bpf/tunnel, a
    // directory other tests' tunnelds leave behind).
    if let Ok(dir) = fs::read_dir("/sys/fs/bpf") {
        let pinned: Vec<_> = dir
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.contains("tunnel") && name != "tunnel"
            })
            .collect();
        assert!(pinned.is_empty(), "pinned objects left: {pinned:?}");
    }
    drop(w);
}

/// An IPv6 frame carrying a routing header, to an address in `net`.
fn routed_v6_to(frame: &[u8], net: &ipnet::IpNet) -> bool {
    frame.len() >= 14 + 40
        && frame[12..14] == [0x86, 0xdd]
        && frame[14 + 6] == 43
        && net.contains(&IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&frame[14 + 24..14 + 40]).unwrap(),
        )))
}

/// A fragment (IPv4 header fields, or an IPv6 fragment header right after the fixed one) of
/// a datagram to `dst`.
fn fragment_to(frame: &[u8], dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(d) => {
            frame.len() >= 14 + 20
                && frame[12..14] == [0x08, 0x00]
                && frame[14 + 16..14 + 20] == d.octets()
                && u16::from_be_bytes([frame[14 + 6], frame[14 + 7]]) & 0x3fff != 0
        }
        IpAddr::V6(d) => {
            frame.len() >= 14 + 40
                && frame[12..14] == [0x86, 0xdd]
                && frame[14 + 6] == 44
                && frame[14 + 24..14 + 40] == d.octets()
        }
    }
}

/// An unprivileged user (nobody, no capabilities) tries to get packets to tunnelled
/// destinations onto the uplink in clear, and a capture on the far end of the uplink shows
/// none arrive, with and without lock-down: UDP behind a 248-byte segment routing header
/// (which any socket may set, and which puts the transport header past what the classifier
/// reads), and UDP datagrams larger than the MTU under a UDP port list (whose later
/// fragments carry no ports). The same packets to an excluded destination are captured:
/// the capture would have seen them. To a destination the policy does not include they
/// are captured without lock-down and not with it.
#[test]
fn unprivileged_senders_get_nothing_to_a_tunnelled_destination_in_clear() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIP unprivileged_senders_get_nothing_to_a_tunnelled_destination_in_clear: needs root"
        );
        return;
    }
    let w = SplitWorld::build(&format!("tdu{}", std::process::id())).unwrap();
    let mut dp = Datapath::load().unwrap();
    let (_uplink, _tun, tun_ifindex) = w
        .client
        .enter(|| {
            let up = dp.attach_uplink("up0")?;
            let tun = dp.attach_tun("tun0")?;
            Ok::<_, tunnel_user::DatapathError>((up, tun, tunnel_user::datapath::ifindex("tun0")?))
        })
        .unwrap()
        .unwrap();
    let excluded_v6: ipnet::IpNet = "fd00:100::9:0/112".parse().unwrap();
    let mut conn = tunnelled(tun_ifindex);
    conn.exclude.push(excluded_v6);
    let device = Policy {
        gateways: vec![GATEWAY.parse().unwrap()],
        exceptions: Vec::new(),
        device_conn: Some(0),
        conns: vec![conn],
        ..Default::default()
    };
    let corp_v6: ipnet::IpNet = "fd00:100::/64".parse().unwrap();
    let (corp4, corp6): (IpAddr, IpAddr) = (CORP.parse().unwrap(), CORP6.parse().unwrap());
    let (lan4, lan6): (IpAddr, IpAddr) = (
        "172.31.9.1".parse().unwrap(),
        "fd00:100::9:1".parse().unwrap(),
    );
    // Neither included nor excluded: outside the tunnel, reached by the default route.
    let (out4, out6): (IpAddr, IpAddr) = (
        "172.16.0.1".parse().unwrap(),
        "fd00:300::1".parse().unwrap(),
    );
    let outside_v6: ipnet::IpNet = "fd00:300::/64".parse().unwrap();
    let routed = |dst: IpAddr| Datagram {
        to: SocketAddr::new(dst, 5000),
        len: 64,
        ipv6_rthdr: match dst {
            IpAddr::V6(a) => Some(segment_routing_header(a, 15)),
            IpAddr::V4(_) => None,
        },
    };
    let large = |dst: IpAddr| Datagram {
        to: SocketAddr::new(dst, 5000),
        len: 3000,
        ipv6_rthdr: None,
    };
    for lockdown in [true, false] {
        dp.apply(&Policy {
            lockdown,
            ..device.clone()
        })
        .unwrap();
        let capture = Capture::start(&w.lan, "lan0").unwrap();
        let before = counters(&dp);
        let uid = send_unprivileged(
            &w.client,
            &[
                routed(corp6),
                large(corp4),
                large(corp6),
                // The controls: the same kinds of packet to excluded destinations.
                routed(lan6),
                large(lan4),
                large(lan6),
                // Outside the tunnel: lock-down's business.
                routed(out6),
                large(out4),
                large(out6),
            ],
        )
        .unwrap();
        assert_eq!(uid, NOBODY.to_string(), "sent by nobody");
        std::thread::sleep(Duration::from_millis(800));
        let d = counters(&dp).since(&before);
        let ctx = format!("lock-down {lockdown}: {:?}", d.nonzero());
        assert_eq!(
            capture.count(|f| routed_v6_to(f, &corp_v6) && !routed_v6_to(f, &excluded_v6)),
            0,
            "routing-header packets to a tunnelled destination on the wire ({ctx})"
        );
        assert_eq!(
            capture.count(|f| fragment_to(f, corp4)),
            0,
            "IPv4 fragments to a tunnelled destination on the wire ({ctx})"
        );
        assert_eq!(
            capture.count(|f| fragment_to(f, corp6)),
            0,
            "IPv6 fragments to a tunnelled destination on the wire ({ctx})"
        );
        assert_eq!(
            d.get(0, Reason::DropUnparsed).packets,
            1,
            "the routing-header packet was dropped ({ctx})"
        );
        // The controls reached the wire: the capture would have seen the others.
        assert_eq!(capture.count(|f| routed_v6_to(f, &excluded_v6)), 1, "{ctx}");
        assert!(capture.count(|f| fragment_to(f, lan4)) >= 3, "{ctx}");
        assert!(capture.count(|f| fragment_to(f, lan6)) >= 3, "{ctx}");
        let outside = [
            capture.count(|f| routed_v6_to(f, &outside_v6)),
            capture.count(|f| fragment_to(f, out4)),
            capture.count(|f| fragment_to(f, out6)),
        ];
        if lockdown {
            assert_eq!(
                outside,
                [0, 0, 0],
                "outside the tunnel under lock-down ({ctx})"
            );
            // (The guard counts its own lock-down drops in the same cell.)
            assert!(d.get(0, Reason::DropLockdown).packets >= 1 + 3 + 3, "{ctx}");
        } else {
            assert!(
                outside[0] == 1 && outside[1] >= 3 && outside[2] >= 3,
                "outside the tunnel without lock-down: {outside:?} ({ctx})"
            );
        }
    }
    // Every fragment of a datagram to a listed port goes through the tunnel, so the corp
    // server gets the whole datagram and answers.
    dp.apply(&device).unwrap();
    assert_eq!(
        w.who_answers_udp_sized(CORP, 5000, 3000).as_deref(),
        Some("corp")
    );
    assert_eq!(
        w.who_answers_udp_sized(CORP6, 5000, 3000).as_deref(),
        Some("corp")
    );
}

/// A counter cell that moved: connection, reason, packets.
type Cell = (Option<u32>, Reason, u64);

/// Whether `frame` is an IPv6 UDP datagram to `dst` port `port`, with no extension header.
fn udp_v6_to(frame: &[u8], dst: Ipv6Addr, port: u16) -> bool {
    frame.len() >= 14 + 40 + 8
        && frame[12..14] == [0x86, 0xdd]
        && frame[14 + 6] == 17
        && frame[14 + 24..14 + 40] == dst.octets()
        && frame[14 + 40 + 2..14 + 40 + 4] == port.to_be_bytes()
}

/// The solicited-node multicast group of `addr` (RFC 4291 2.7.1).
fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// An MLDv2 listener report (after its hop-by-hop header) with a record for `group`.
fn listener_report_for(frame: &[u8], group: Ipv6Addr) -> bool {
    const ICMP: usize = 14 + 40 + 8;
    frame.len() >= ICMP + 8
        && frame[12..14] == [0x86, 0xdd]
        && frame[14 + 6] == 0
        && frame[14 + 40] == 58
        && frame[ICMP] == 143
        && frame[ICMP + 8..]
            .windows(16)
            .any(|w| w == group.octets().as_slice())
}

/// A full tunnel (0.0.0.0/0) whose gateway assigned no IPv6 address: an app's IPv6
/// datagram to a host the LAN also answers for is captured on the far end of the uplink
/// when the connection lets the missing family bypass (the client's behaviour before
/// `BlockUntunnelledIPv6`, and the positive control), and not when it drops it; exact
/// counters either way. An exclude route keeps that range reachable, and IPv4 keeps
/// going through the tunnel.
#[test]
fn a_full_tunnel_without_ipv6_sends_no_ipv6_around_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP a_full_tunnel_without_ipv6_sends_no_ipv6_around_it: needs root");
        return;
    }
    let w = SplitWorld::build(&format!("tdv{}", std::process::id())).unwrap();
    let mut dp = Datapath::load().unwrap();
    let (_uplink, _tun, tun_ifindex) = w
        .client
        .enter(|| {
            let up = dp.attach_uplink("up0")?;
            let tun = dp.attach_tun("tun0")?;
            Ok::<_, tunnel_user::DatapathError>((up, tun, tunnel_user::datapath::ifindex("tun0")?))
        })
        .unwrap()
        .unwrap();
    // As the client does for a tunnel without an IPv6 address: the TUN device sends no
    // IPv6 of its own, and neither does the far end (router solicitations through the
    // relay would be counted below).
    w.client
        .sh("sysctl -qw net.ipv6.conf.tun0.disable_ipv6=1")
        .unwrap();
    w.corp
        .sh("sysctl -qw net.ipv6.conf.tun1.disable_ipv6=1")
        .unwrap();
    let corp6: Ipv6Addr = CORP6.parse().unwrap();
    let policy = |drop_missing_family: bool, exclude: &[&str]| Policy {
        gateways: vec![GATEWAY.parse().unwrap()],
        exceptions: Vec::new(),
        device_conn: Some(0),
        conns: vec![ConnPolicy {
            tun_v4: Some(TUN_V4),
            tun_v6: None,
            include: vec!["0.0.0.0/0".parse().unwrap()],
            exclude: exclude.iter().map(|n| n.parse().unwrap()).collect(),
            drop_missing_family,
            ..ConnPolicy::new(0, tun_ifindex)
        }],
        ..Default::default()
    };
    // A port nobody listens on: the LAN answers a datagram that reaches it with exactly one
    // ICMPv6 port unreachable, which the guard lets in.
    const PORT: u16 = 9;
    let datagram = Datagram {
        to: SocketAddr::new(IpAddr::V6(corp6), PORT),
        len: 64,
        ipv6_rthdr: None,
    };
    let out_and_back = vec![
        (Some(0), Reason::BypassNoFamily, 1),
        (Some(0), Reason::IngressPass, 1),
    ];
    // (drop the family, excludes, captured on the wire, the counter cells that move)
    let cases: [(bool, &[&str], usize, Vec<Cell>); 3] = [
        (false, &[], 1, out_and_back.clone()),
        (true, &[], 0, vec![(Some(0), Reason::DropNoFamily, 1)]),
        (true, &["fd00:100::/64"], 1, out_and_back),
    ];
    for (i, (drop, exclude, on_wire, expected)) in cases.into_iter().enumerate() {
        dp.apply(&policy(drop, exclude)).unwrap();
        let capture = Capture::start(&w.lan, "lan0").unwrap();
        let arrived = Capture::start(&w.client, "up0").unwrap();
        let before = counters(&dp);
        // A new address on each side joins its solicited-node group: a multicast listener
        // report goes out and one comes in while the datagram is counted. Link control:
        // seen on the wire, never counted as the datagram's family rule.
        let (ours, theirs) = (format!("fe80::a:{i}"), format!("fe80::b:{i}"));
        w.client
            .sh(&format!("ip addr add {ours}/64 dev up0 nodad"))
            .unwrap();
        w.lan
            .sh(&format!("ip addr add {theirs}/64 dev lan0 nodad"))
            .unwrap();
        let uid = send_unprivileged(&w.client, std::slice::from_ref(&datagram)).unwrap();
        assert_eq!(uid, NOBODY.to_string(), "sent by an app, not by root");
        let [out_group, in_group] = [&ours, &theirs].map(|a| solicited_node(a.parse().unwrap()));
        let reports = || {
            [
                capture.count(|f| listener_report_for(f, out_group)),
                arrived.count(|f| listener_report_for(f, in_group)),
            ]
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && reports().contains(&0) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        let d = counters(&dp).since(&before);
        let ctx = format!("drop {drop}, exclude {exclude:?}: {:?}", d.nonzero());
        assert_eq!(
            capture.count(|f| udp_v6_to(f, corp6, PORT)),
            on_wire,
            "IPv6 datagrams on the uplink's wire ({ctx})"
        );
        // Neighbour discovery (and ARP) for the next hop may run meanwhile; it is link
        // control, allowed whatever the policy, and not the datagram.
        let cells: Vec<_> = d
            .nonzero()
            .iter()
            .filter(|(_, r, _)| !matches!(r, Reason::BypassLinkControl | Reason::BypassNotIp))
            .map(|(c, r, n)| (*c, *r, n.packets))
            .collect();
        assert_eq!(cells, expected, "{ctx}");
        let [went_out, came_in] = reports();
        assert!(went_out > 0, "our listener report reached the LAN ({ctx})");
        assert!(came_in > 0, "the LAN's listener report reached us ({ctx})");
        // IPv4 is what the tunnel carries, whatever happens to IPv6.
        assert_eq!(w.who_answers_tcp(CORP).as_deref(), Some("corp"), "{ctx}");
        let tcp6 = w.who_answers_tcp(CORP6);
        if on_wire == 0 {
            assert_eq!(tcp6, None, "IPv6 TCP gets nowhere ({ctx})");
        } else {
            assert_eq!(tcp6.as_deref(), Some("lan"), "{ctx}");
        }
    }
}

/// What a connected UDP socket learns of a datagram that the far end refuses: corp answers
/// a datagram to a closed (listed) port with a port unreachable through the tunnel, and the
/// TUN device's ingress gives it back to the socket, which sees "connection refused". The
/// error, addressed to the tunnel address, would otherwise go to no socket: the datagram
/// left from the uplink's address.
#[test]
fn icmp_errors_from_the_tunnel_reach_the_socket() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP icmp_errors_from_the_tunnel_reach_the_socket: needs root");
        return;
    }
    let w = SplitWorld::build(&format!("tdi{}", std::process::id())).unwrap();
    let mut dp = Datapath::load().unwrap();
    let (_uplink, _tun, tun_ifindex) = w
        .client
        .enter(|| {
            let up = dp.attach_uplink("up0")?;
            let tun = dp.attach_tun("tun0")?;
            Ok::<_, tunnel_user::DatapathError>((up, tun, tunnel_user::datapath::ifindex("tun0")?))
        })
        .unwrap()
        .unwrap();
    dp.apply(&Policy {
        gateways: vec![GATEWAY.parse().unwrap()],
        exceptions: Vec::new(),
        device_conn: Some(0),
        conns: vec![tunnelled(tun_ifindex)],
        ..Default::default()
    })
    .unwrap();
    // 5001 is in the UDP port list; nobody listens on it in corp.
    for dst in [CORP, CORP6] {
        let to = SocketAddr::new(dst.parse().unwrap(), 5001);
        let before = counters(&dp);
        let got = w
            .client
            .enter(move || {
                let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
                let s = std::net::UdpSocket::bind(any)?;
                s.connect(to)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send(b"anyone?")?;
                let mut buf = [0u8; 64];
                s.recv(&mut buf).map(|_| ())
            })
            .unwrap();
        let d = counters(&dp).since(&before);
        let err = got.expect_err("corp has nothing on 5001");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{dst}: the socket saw {err}; {:?}",
            d.nonzero()
        );
        assert_eq!(
            d.get(0, Reason::Tunnel).packets,
            1,
            "{dst}: {:?}",
            d.nonzero()
        );
        assert_eq!(
            d.get(0, Reason::ReplyRestored).packets,
            1,
            "{dst}: {:?}",
            d.nonzero()
        );
    }
}
