//! The data path end to end in network namespaces, with real sockets and a real TCP stack.
//!
//! ```text
//!  ┌──────────── client ────────────┐        ┌─────────────── lan ───────────────┐
//!  │ up0 192.168.50.2/24 fd50::2/64 ├─ veth ─┤ lan0 192.168.50.1/24 fd50::1/64    │
//!  │   default via 192.168.50.1     │        │ lo: 10.1.2.3 172.31.9.1 172.16.0.1 │
//!  │ tun0 10.200.0.2 fd00:200::2    │        │     fd00:100::3   servers say "lan" │
//!  └──────────────┬─────────────────┘        └────────────────────────────────────┘
//!                 │ TunRelay (this process): the tunnel, without encryption
//!  ┌──────────────┴─────── corp ─────────────┐
//!  │ tun1 10.1.2.3 fd00:100::3  servers say "corp" │
//!  └──────────────────────────────────────────┘
//! ```
//!
//! 10.1.2.3 exists twice, in `corp` behind the tunnel and in `lan` on the wire, so every answer
//! says which way a packet went. Policy: include 10.1.0.0/16, 172.31.0.0/16, fd00:100::/64;
//! exclude 172.31.9.0/24; UDP port list 5000-5001; the gateway is 192.168.50.1.

mod support;

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::Command,
    sync::atomic::Ordering,
    time::Duration,
};

use tunnel_common::{CONN_NONE, Reason};
use tunnel_user::{
    datapath::{AppRule, ConnPolicy, Datapath, Policy, reference::checksums_valid},
    testbed::{Netns, TunRelay, veth},
    tun::Tun,
};

const TUN_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const TUN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
const CORP: &str = "10.1.2.3";
const CORP6: &str = "fd00:100::3";
const TCP_PORT: u16 = 8080;

/// Accepts TCP connections forever: writes `label`, then echoes what it reads.
/// The lan server also records the peer address it saw.
fn tcp_server(ns: &Netns, label: &'static str, peers: Option<std::sync::mpsc::Sender<SocketAddr>>) {
    for addr in ["0.0.0.0", "[::]"] {
        let listener = ns
            .enter(move || {
                let l = if addr == "[::]" {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
                    s.set_only_v6(true)?;
                    s.set_reuse_address(true)?;
                    s.bind(&"[::]:8080".parse::<SocketAddr>().unwrap().into())?;
                    s.listen(64)?;
                    TcpListener::from(s)
                } else {
                    TcpListener::bind((addr, TCP_PORT))?
                };
                Ok::<_, std::io::Error>(l)
            })
            .unwrap()
            .unwrap();
        let peers = peers.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if let (Some(p), Ok(peer)) = (&peers, conn.peer_addr()) {
                    let _ = p.send(peer);
                }
                std::thread::spawn(move || {
                    let _ = conn.write_all(label.as_bytes());
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

/// Answers every UDP datagram on `port` with `label`.
fn udp_server(ns: &Netns, port: u16, label: &'static str) {
    let sock = ns
        .enter(move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(label.as_bytes(), peer);
        }
    });
}

/// Connects from the client namespace and returns who answered, or None on timeout.
fn who_answers_tcp(client: &Netns, dst: &str) -> Option<String> {
    let addr: SocketAddr = format!("{}:{TCP_PORT}", bracket(dst)).parse().unwrap();
    client
        .enter(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            let mut label = [0u8; 4];
            s.read_exact(&mut label[..3]).ok()?;
            if &label[..3] == b"cor" {
                s.read_exact(&mut label[3..]).ok()?;
                return Some("corp".to_string());
            }
            Some(String::from_utf8_lossy(&label[..3]).into_owned())
        })
        .unwrap()
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Sends one UDP datagram from the client namespace and returns the answer's label.
fn who_answers_udp(client: &Netns, dst: &str, port: u16) -> Option<String> {
    let dst = dst.to_string();
    client
        .enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
            s.send_to(b"hello", (dst.as_str(), port)).ok()?;
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .unwrap()
}

/// Moves a lot of data through one TCP connection and checks it comes back intact.
fn echo_transfer(client: &Netns, dst: &str, bytes: usize) {
    let addr: SocketAddr = format!("{}:{TCP_PORT}", bracket(dst)).parse().unwrap();
    client
        .enter(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut label = [0u8; 4];
            s.read_exact(&mut label).expect("label");
            assert_eq!(&label, b"corp");
            let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
            let mut writer = s.try_clone().unwrap();
            let sent = data.clone();
            let w = std::thread::spawn(move || writer.write_all(&sent).expect("write"));
            let mut back = vec![0u8; bytes];
            s.read_exact(&mut back).expect("echo");
            w.join().unwrap();
            assert!(back == data, "echoed data differs");
        })
        .unwrap();
}

/// Runs a shell command in `client`, inside the cgroup `cgroup` (path), and returns stdout.
fn run_in_cgroup(client: &Netns, cgroup: &std::path::Path, script: &str) -> String {
    let ns = fs::File::open(format!("/var/run/netns/{}", client.name())).unwrap();
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .unwrap();
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]);
    // SAFETY: only async-signal-safe calls (setns, write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Writing "0" moves the writing process.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

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

#[test]
fn datapath_end_to_end_in_namespaces() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP datapath_end_to_end_in_namespaces: needs root");
        return;
    }
    let id = std::process::id();
    let client = Netns::create(&format!("tdp-client-{id}")).unwrap();
    let lan = Netns::create(&format!("tdp-lan-{id}")).unwrap();
    let corp = Netns::create(&format!("tdp-corp-{id}")).unwrap();
    veth(&client, "up0", &lan, "lan0").unwrap();
    client
        .sh(
            "ip addr add 192.168.50.2/24 dev up0; ip -6 addr add fd50::2/64 dev up0 nodad; \
             ip route add default via 192.168.50.1; ip -6 route add default via fd50::1; \
             sysctl -qw net.ipv4.conf.all.rp_filter=0",
        )
        .unwrap();
    lan.sh(
        "ip addr add 192.168.50.1/24 dev lan0; ip -6 addr add fd50::1/64 dev lan0 nodad; \
            for a in 10.1.2.3 172.31.9.1 172.16.0.1 172.31.1.1; do ip addr add $a/32 dev lo; done; \
            ip -6 addr add fd00:100::3/128 dev lo; ip route add 10.200.0.0/16 via 192.168.50.2",
    )
    .unwrap();
    // The TUN devices: tun0 in the client, tun1 in corp, joined by the relay.
    let tun0 = client.enter(|| Tun::create("tun0")).unwrap().unwrap();
    let tun1 = corp.enter(|| Tun::create("tun1")).unwrap().unwrap();
    client
        .sh("ip link set tun0 mtu 1400 up; ip addr add 10.200.0.2/32 dev tun0; \
             ip -6 addr add fd00:200::2/128 dev tun0 nodad; sysctl -qw net.ipv4.conf.tun0.rp_filter=0")
        .unwrap();
    corp.sh(
        "ip link set tun1 mtu 1400 up; ip addr add 10.1.2.3/32 dev tun1; \
             ip -6 addr add fd00:100::3/128 dev tun1 nodad; \
             ip route add 10.200.0.0/16 dev tun1; ip -6 route add fd00:200::/64 dev tun1",
    )
    .unwrap();
    let relay = TunRelay::start(tun0, tun1).unwrap();
    let (peer_tx, peer_rx) = std::sync::mpsc::channel();
    tcp_server(&lan, "lan", Some(peer_tx));
    tcp_server(&corp, "corp", None);
    for port in [5000, 7000] {
        udp_server(&lan, port, "lan");
        udp_server(&corp, port, "corp");
    }

    // Before anything is attached, everything goes to the LAN.
    assert_eq!(who_answers_tcp(&client, CORP).as_deref(), Some("lan"));

    let mut dp = Datapath::load().unwrap();
    let (uplink, tun_attach, tun_ifindex) = client
        .enter(|| {
            let up = dp.attach_uplink("up0")?;
            let tun = dp.attach_tun("tun0")?;
            Ok::<_, tunnel_user::DatapathError>((up, tun, tunnel_user::datapath::ifindex("tun0")?))
        })
        .unwrap()
        .unwrap();
    let conn = ConnPolicy {
        tun_v4: Some(TUN_V4),
        tun_v6: Some(TUN_V6),
        include: ["10.1.0.0/16", "172.31.0.0/16", "fd00:100::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
        exclude: vec!["172.31.9.0/24".parse().unwrap()],
        udp_ports: Some("5000-5001".parse().unwrap()),
        ..ConnPolicy::new(0, tun_ifindex)
    };
    let device = Policy {
        gateways: vec!["192.168.50.1".parse().unwrap()],
        device_conn: Some(0),
        conns: vec![conn.clone()],
        ..Default::default()
    };
    dp.apply(&device).unwrap();

    // Split tunnelling: included to corp through the tunnel, excluded straight to the LAN
    // with the source address untouched.
    let before = counters(&dp);
    assert_eq!(who_answers_tcp(&client, CORP).as_deref(), Some("corp"));
    assert_eq!(
        who_answers_tcp(&client, CORP6).as_deref(),
        Some("corp"),
        "IPv6 through the tunnel"
    );
    while peer_rx.try_recv().is_ok() {}
    assert_eq!(
        who_answers_tcp(&client, "172.31.9.1").as_deref(),
        Some("lan")
    );
    let peer = peer_rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(192, 168, 50, 2)),
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
    echo_transfer(&client, CORP, 4 << 20);
    echo_transfer(&client, CORP6, 1 << 20);

    // UDP: listed ports through the tunnel, others direct.
    assert_eq!(
        who_answers_udp(&client, CORP, 5000).as_deref(),
        Some("corp")
    );
    assert_eq!(who_answers_udp(&client, CORP, 7000).as_deref(), Some("lan"));

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

    // Anti-spoofing: the LAN sends us packets claiming a tunnelled source.
    let before = counters(&dp);
    let _ = lan.sh("ping -c 3 -i 0.2 -W 1 -I 10.1.2.3 192.168.50.2");
    let d = counters(&dp).since(&before);
    assert_eq!(d.get(0, Reason::DropSpoofed).packets, 3, "{d:?}");

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
        run_in_cgroup(&client, &cgroup, &fetch),
        "corp",
        "the app goes through the tunnel"
    );
    assert_eq!(
        who_answers_tcp(&client, CORP).as_deref(),
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
        who_answers_tcp(&client, "172.16.0.1"),
        None,
        "not included: dropped"
    );
    assert_eq!(who_answers_tcp(&client, CORP).as_deref(), Some("corp"));
    assert_eq!(
        who_answers_tcp(&client, "172.31.9.1").as_deref(),
        Some("lan"),
        "excluded stays open"
    );
    let d = counters(&dp).since(&before);
    assert!(d.get(0, Reason::DropLockdown).packets >= 1, "{d:?}");
    // Inbound from a host outside the tunnel is dropped by XDP too; from the gateway it is not.
    let before = counters(&dp);
    let _ = lan.sh("ping -c 2 -i 0.2 -W 1 -I 172.16.0.1 192.168.50.2");
    lan.sh("ping -c 1 -W 1 192.168.50.2")
        .expect("the gateway still reaches us");
    let d = counters(&dp).since(&before);
    assert_eq!(d.get(0, Reason::DropLockdown).packets, 2, "{d:?}");
    assert!(
        d.get(CONN_NONE, Reason::BypassGateway).packets >= 2,
        "request in, reply out: {d:?}"
    );

    // No default route: the client routes the included range into the TUN device itself.
    dp.apply(&device).unwrap();
    client
        .sh("ip route del default; ip route add 10.1.0.0/16 dev tun0")
        .unwrap();
    let before = counters(&dp);
    assert_eq!(
        who_answers_tcp(&client, CORP).as_deref(),
        Some("corp"),
        "routed into tun0 directly"
    );
    assert_eq!(
        who_answers_udp(&client, CORP, 7000),
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
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("tunnel_"))
        .collect();
    assert!(leftovers.is_empty(), "programs still loaded: {leftovers:?}");
    if let Ok(dir) = fs::read_dir("/sys/fs/bpf") {
        let pinned: Vec<_> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("tunnel"))
            .collect();
        assert!(pinned.is_empty(), "pinned objects left: {pinned:?}");
    }
    drop(relay);
}
