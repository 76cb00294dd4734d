//! The kernel programs against the plain Rust model (`datapath::reference`) on random policies
//! and random packets, IPv4 and IPv6: same action, same reason and connection (via the
//! counters), same output bytes, valid checksums. The packets include IPv6 extension chains
//! longer and deeper than the kernel reads, headers cut short, IP headers without readable
//! addresses, and fragments: first fragments, later fragments of datagrams whose first
//! fragment was sent, and later fragments of datagrams never seen.
//!
//! `TUNNEL_DIFF_POLICIES` sets the number of policies (default 400, each with 32 packets through
//! the egress classifier and 32 through XDP); `TUNNEL_DIFF_SEED` replays a failing run.

mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use support::*;
use tunnel_common::{CONN_NONE, OWN_SOCKET_MARK, Reason, VerdictKind};
use tunnel_user::datapath::{
    AppRule, ConnPolicy, Policy, PortList,
    frames::{Ext, Frame, L4},
    reference::{Model, Origin, Outcome, checksum_fields, checksums_valid, finish_checksums},
};

const PACKETS_PER_POLICY: usize = 32;

/// A small address universe so routes, gateways and packets collide often.
fn rand_v4(rng: &mut StdRng) -> Ipv4Addr {
    Ipv4Addr::new(
        10,
        rng.random_range(0..3),
        rng.random_range(0..4),
        rng.random_range(0..8),
    )
}

fn rand_v6(rng: &mut StdRng) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        rng.random_range(0..3),
        rng.random_range(0..4),
        0,
        0,
        0,
        rng.random_range(0..8),
    )
}

fn rand_addr(rng: &mut StdRng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(rand_v6(rng))
    } else {
        IpAddr::V4(rand_v4(rng))
    }
}

fn rand_net(rng: &mut StdRng) -> IpNet {
    if rng.random_bool(0.5) {
        let len = *[0u8, 8, 14, 15, 16, 24, 29, 30, 32].choose(rng).unwrap();
        IpNet::new(IpAddr::V4(rand_v4(rng)), len).unwrap().trunc()
    } else {
        let len = *[0u8, 32, 46, 47, 48, 64, 126, 128].choose(rng).unwrap();
        IpNet::new(IpAddr::V6(rand_v6(rng)), len).unwrap().trunc()
    }
}

fn rand_ports(rng: &mut StdRng) -> PortList {
    let n = rng.random_range(1..4);
    let ranges = (0..n)
        .map(|_| {
            let a = *[53u16, 67, 68, 123, 500, 4500, 1000, 65535]
                .choose(rng)
                .unwrap();
            let b = a.saturating_add(rng.random_range(0..3));
            a..=b
        })
        .collect();
    PortList::from_ranges(ranges).unwrap()
}

fn rand_policy(rng: &mut StdRng, cgroups: &[u64]) -> Policy {
    let mut ids: Vec<u8> = (0..16).collect();
    let nconns = rng.random_range(0..4);
    let mut conns = Vec::new();
    for i in 0..nconns {
        let id = ids.swap_remove(rng.random_range(0..ids.len()));
        let mut c = ConnPolicy::new(id, 1000 + i as u32);
        match rng.random_range(0..3) {
            0 => c.tun_v4 = Some(Ipv4Addr::new(10, 200, id, 2)),
            1 => c.tun_v6 = Some(Ipv6Addr::new(0xfd00, 0x200, u16::from(id), 0, 0, 0, 0, 2)),
            _ => {
                c.tun_v4 = Some(Ipv4Addr::new(10, 200, id, 2));
                c.tun_v6 = Some(Ipv6Addr::new(0xfd00, 0x200, u16::from(id), 0, 0, 0, 0, 2));
            }
        }
        c.mtu = rng.random_range(1280..=1500);
        c.include = (0..rng.random_range(0..5)).map(|_| rand_net(rng)).collect();
        c.exclude = (0..rng.random_range(0..4)).map(|_| rand_net(rng)).collect();
        if rng.random_bool(0.3) {
            c.udp_ports = Some(rand_ports(rng));
        }
        c.drop_missing_family = rng.random_bool(0.5);
        conns.push(c);
    }
    let device_conn = if !conns.is_empty() && rng.random_bool(0.7) {
        Some(conns.choose(rng).unwrap().id)
    } else {
        None
    };
    let mut apps = Vec::new();
    if !conns.is_empty() && rng.random_bool(0.4) {
        let mut candidates = cgroups.to_vec();
        candidates.push(u64::MAX - 7);
        for id in candidates {
            if rng.random_bool(0.5) {
                apps.push(AppRule {
                    cgroup_id: id,
                    conn: conns.choose(rng).unwrap().id,
                });
            }
        }
    }
    let gateways = (0..rng.random_range(0..3))
        .map(|_| {
            let v6 = rng.random_bool(0.5);
            rand_addr(rng, v6)
        })
        .collect();
    let exceptions = (0..rng.random_range(0..3)).map(|_| rand_net(rng)).collect();
    Policy {
        lockdown: rng.random_bool(0.25),
        gateways,
        exceptions,
        device_conn,
        apps,
        conns,
    }
}

/// A random IPv6 extension header: options or routing headers and authentication headers,
/// mostly short, sometimes long enough to push the transport header past what the kernel
/// reads.
fn rand_ext(rng: &mut StdRng) -> Ext {
    let units = *[0u8, 0, 0, 1, 2, 20, 31].choose(rng).unwrap();
    if rng.random_bool(0.2) {
        Ext::Auth { units }
    } else {
        Ext::Options {
            kind: *[0u8, 43, 60].choose(rng).unwrap(),
            units,
        }
    }
}

/// A random frame. `datagrams` holds the recent first fragments (the frame before it was
/// made a fragment, and the identification), so that later fragments of the same datagrams
/// come along.
fn rand_frame(
    rng: &mut StdRng,
    policy: &Policy,
    inbound: bool,
    datagrams: &mut Vec<(Frame, u32)>,
) -> Vec<u8> {
    if rng.random_bool(0.02) {
        let mut arp = vec![0xffu8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        return arp;
    }
    let v6 = rng.random_bool(0.5);
    let far = rand_addr(rng, v6);
    // Our side: a LAN address, or sometimes a tunnel address already.
    let tun = policy.conns.first().and_then(|c| {
        if v6 {
            c.tun_v6.map(IpAddr::V6)
        } else {
            c.tun_v4.map(IpAddr::V4)
        }
    });
    let near = match tun {
        Some(t) if rng.random_bool(0.1) => t,
        _ if v6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 10)),
        _ => IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
    };
    let port = |rng: &mut StdRng| {
        *[
            53u16, 54, 67, 68, 123, 443, 500, 546, 547, 1000, 1001, 40000, 65535,
        ]
        .choose(rng)
        .unwrap()
    };
    let l4 = match rng.random_range(0..10) {
        0..=2 => L4::Tcp {
            sport: port(rng),
            dport: port(rng),
            flags: *[0x02u8, 0x12, 0x10, 0x18].choose(rng).unwrap(),
            mss: rng.random_bool(0.7).then(|| rng.random_range(500..=9000)),
        },
        3..=5 => L4::Udp {
            sport: port(rng),
            dport: port(rng),
            zero_checksum: !v6 && rng.random_bool(0.1),
        },
        6 | 7 => L4::Echo {
            id: rng.random(),
            reply: rng.random_bool(0.5),
        },
        8 if v6 => L4::Icmpv6 {
            icmp_type: *[128u8, 130, 131, 133, 135, 136, 137, 138, 143, 1]
                .choose(rng)
                .unwrap(),
        },
        _ => L4::Other {
            proto: *[47u8, 50, 132].choose(rng).unwrap(),
        },
    };
    let (src, mut dst) = if inbound { (far, near) } else { (near, far) };
    if v6 && matches!(l4, L4::Icmpv6 { .. }) && rng.random_bool(0.5) {
        // Multicast listener messages go to a group: link scope (with and without the
        // transient flag) or wider.
        let group = *["ff02::16", "ff12::1:3", "ff05::2", "ff0e::1"]
            .choose(rng)
            .unwrap();
        dst = IpAddr::V6(group.parse().unwrap());
    }
    let mut frame = Frame::new(src, dst, l4);
    frame.hop_by_hop = v6 && rng.random_bool(0.2);
    if v6 && rng.random_bool(0.08) {
        // Extension chains, up to longer than the kernel follows.
        frame.ext = (0..rng.random_range(1..=8))
            .map(|_| rand_ext(rng))
            .collect();
    }
    // Fragments: a few identifications, so datagrams collide now and then.
    let id = rng.random_range(0..4u32);
    match rng.random_range(0..100) {
        0..=5 => {
            datagrams.push((frame.clone(), id));
            if datagrams.len() > 16 {
                datagrams.remove(0);
            }
            frame = frame.fragment(id, 0, true);
        }
        6..=15 => {
            // A later fragment, mostly of a datagram whose first fragment was sent: often
            // one of the last few (under this policy, whose verdict is kept), else an
            // older one (under a retired policy, whose verdict is not).
            let n = datagrams.len();
            let (base, id) = if n > 0 && rng.random_bool(0.8) {
                let at = if rng.random_bool(0.6) {
                    n - 1 - rng.random_range(0..n.min(3))
                } else {
                    rng.random_range(0..n)
                };
                datagrams[at].clone()
            } else {
                (frame, id)
            };
            let more = rng.random_bool(0.6);
            frame = base.fragment(id, rng.random_range(1..200), more);
        }
        _ => {}
    }
    // A later fragment may belong to a datagram of the other family.
    let v6 = frame.dst.is_ipv6();
    let mut bytes = frame.build();
    match rng.random_range(0..100) {
        // Cut after the fixed IP header, in the extension chain or the transport header.
        0..=3 => {
            let min = 14 + if v6 { 40 } else { 20 };
            let headers_end = bytes.len() - frame.payload.len();
            if headers_end > min {
                bytes.truncate(rng.random_range(min..headers_end));
                // A cut among TCP options leaves the header readable: its checksum must
                // still verify for the output comparison to mean anything.
                finish_checksums(&mut bytes);
            }
        }
        // An IP header the parser cannot read addresses from: the wrong version or (IPv4) a
        // header length under 20 bytes.
        4 => bytes[14] = (bytes[14] & 0x0f) | if v6 { 0x40 } else { 0x60 },
        5 if !v6 => bytes[14] = 0x44,
        _ => {}
    }
    bytes
}

/// The output bytes equal, except that checksum fields may differ in how they were
/// computed: the kernel's must verify, and every other byte must match the model.
fn same_packet(kernel: &[u8], model: &[u8]) -> bool {
    kernel.len() == model.len() && checksums_valid(kernel) && {
        let mut k = kernel.to_vec();
        let mut m = model.to_vec();
        for at in checksum_fields(model) {
            k[at..at + 2].copy_from_slice(&[0xee, 0xee]);
            m[at..at + 2].copy_from_slice(&[0xee, 0xee]);
        }
        k == m
    }
}

fn tc_action(o: &Outcome) -> u32 {
    match o.reason.verdict() {
        VerdictKind::Tunnel => TC_ACT_REDIRECT,
        VerdictKind::Drop => TC_ACT_SHOT,
        VerdictKind::Bypass => TC_ACT_OK,
    }
}

fn xdp_action(o: &Outcome) -> u32 {
    if o.reason.verdict() == VerdictKind::Drop {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Whether the guard counts this outcome (unguarded traffic passes uncounted).
fn xdp_counts(policy: &Policy) -> bool {
    policy.lockdown || policy.device_conn.is_some()
}

#[test]
fn kernel_matches_reference_on_random_policies_and_packets() {
    let Some(mut dp) = load_or_skip("kernel_matches_reference_on_random_policies_and_packets")
    else {
        return;
    };
    let policies: usize = std::env::var("TUNNEL_DIFF_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("TUNNEL_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "differential: {policies} policies x {PACKETS_PER_POLICY} packets x 3 hooks, seed {seed}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let cgroups = own_cgroup_ids();
    let mut model = Model::default();
    let mut compared = 0usize;
    let mut by_reason = BTreeMap::<&'static str, usize>::new();
    let mut families = [0usize; 2];
    // First fragments sent and received so far, for later fragments to follow.
    let (mut sent, mut received) = (Vec::new(), Vec::new());
    for round in 0..policies {
        let policy = rand_policy(&mut rng, &cgroups);
        dp.apply(&policy).unwrap_or_else(|e| {
            panic!("seed {seed} round {round}: apply failed: {e}\n{policy:#?}")
        });
        model.policy_applied();
        let origin = Origin {
            mark: 0,
            cgroups: cgroups.clone(),
        };
        let mut expected = BTreeMap::<(u32, Reason), u64>::new();
        let before = counters(&dp);
        for i in 0..PACKETS_PER_POLICY {
            let frame = rand_frame(&mut rng, &policy, false, &mut sent);
            let mark = if rng.random_bool(0.05) {
                OWN_SOCKET_MARK
            } else {
                rng.random_range(0..3)
            };
            let origin = Origin {
                mark,
                ..origin.clone()
            };
            let want = model.uplink_egress(&policy, &frame, &origin);
            let got = egress(&mut dp, &frame, mark);
            let ctx = || {
                format!(
                    "seed {seed} round {round} packet {i} mark {mark:#x}\nframe {frame:02x?}\nmodel {want:?}\npolicy {policy:#?}"
                )
            };
            assert_eq!(
                got.action,
                tc_action(&want),
                "egress action differs\n{}",
                ctx()
            );
            match &want.rewritten {
                Some(out) => assert!(
                    same_packet(&got.out, out),
                    "egress output differs\nkernel {:02x?}\n{}",
                    got.out,
                    ctx()
                ),
                None if got.action != TC_ACT_SHOT => assert_eq!(
                    got.out,
                    frame,
                    "bypass must not touch the packet\n{}",
                    ctx()
                ),
                None => {}
            }
            *expected
                .entry((want.conn.map_or(CONN_NONE, u32::from), want.reason))
                .or_default() += 1;
            *by_reason.entry(want.reason.name()).or_default() += 1;
            families[usize::from(frame.get(12..14) == Some(&[0x86, 0xdd][..]))] += 1;

            // The same inbound frame through the guard on both of its hooks; each counts it.
            let frame = rand_frame(&mut rng, &policy, true, &mut received);
            let want = model.uplink_xdp(&policy, &frame);
            for hook in GUARD_HOOKS {
                let got = guard(&mut dp, hook, &frame);
                assert_eq!(
                    got,
                    xdp_action(&want),
                    "guard ({hook:?}) action differs\nframe {frame:02x?}\nmodel {want:?}\npolicy {policy:#?}\nseed {seed} round {round}"
                );
                if xdp_counts(&policy) {
                    *expected
                        .entry((want.conn.map_or(CONN_NONE, u32::from), want.reason))
                        .or_default() += 1;
                }
            }
            compared += 3;
        }
        let delta = counters(&dp).since(&before);
        let got: BTreeMap<(u32, Reason), u64> = delta
            .nonzero()
            .into_iter()
            .map(|(c, r, v)| ((c.unwrap_or(CONN_NONE), r), v.packets))
            .collect();
        assert_eq!(
            got, expected,
            "counters differ (seed {seed} round {round})\n{policy:#?}"
        );
    }
    eprintln!(
        "compared {compared} packets (v4 {}, v6 {} on egress); egress reasons: {by_reason:?}",
        families[0], families[1]
    );
    assert!(
        compared >= 10_000 || policies < 160,
        "the differential covers at least 10,000 packets"
    );
    for reason in [
        "tunnel",
        "bypass_excluded",
        "bypass_not_included",
        "bypass_udp_port",
        "drop_lockdown",
        "bypass_gateway",
        "malformed",
        "drop_unparsed",
        "drop_fragment",
        "bypass_no_family",
        "drop_no_family",
    ] {
        assert!(
            by_reason.get(reason).copied().unwrap_or(0) > 0 || policies < 50,
            "the random policies never produced {reason}"
        );
    }
    eprintln!(
        "later fragments that followed their first: {}",
        model.fragments_followed()
    );
    assert!(
        model.fragments_followed() > 0 || policies < 50,
        "no later fragment found its first fragment's verdict"
    );
}
