//! The split-tunnel world of the end-to-end test and the demo.
//!
//! ```text
//!  ┌──────────── client ────────────┐        ┌─────────────── lan ───────────────┐
//!  │ up0 192.168.50.2/24 fd50::2/64 ├─ veth ─┤ lan0 192.168.50.1/24 fd50::1/64    │
//!  │   default via 192.168.50.1     │        │ lo: 10.1.2.3 172.31.9.1 172.16.0.1 │
//!  │ tun0 10.200.0.2 fd00:200::2    │        │     fd00:100::3   servers say "lan" │
//!  └──────────────┬─────────────────┘        └────────────────────────────────────┘
//!                 │ TunRelay: the tunnel, without encryption
//!  ┌──────────────┴─────── corp ─────────────┐
//!  │ tun1 10.1.2.3 fd00:100::3  servers say "corp" │
//!  └──────────────────────────────────────────┘
//! ```
//!
//! 10.1.2.3 (and fd00:100::3) exist twice, in `corp` behind the tunnel and in `lan` on the
//! wire, so every answer says which way the packets went. TCP servers listen on
//! [`TCP_PORT`] and write their label, then echo; UDP servers on [`UDP_PORTS`] (both
//! families) answer with it.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use super::{Netns, TunRelay, veth};
use crate::sys::tun::Tun;

pub const TUN_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const TUN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
/// The corp server's address (also present on the LAN).
pub const CORP: &str = "10.1.2.3";
pub const CORP6: &str = "fd00:100::3";
/// The gateway: the LAN side of the client's uplink.
pub const GATEWAY: &str = "192.168.50.1";
/// The client's uplink address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORTS: [u16; 2] = [5000, 7000];

/// The namespaces, the relay and the servers; all torn down when dropped.
pub struct SplitWorld {
    // Field order is drop order: the relay stops before its namespaces go.
    pub relay: TunRelay,
    pub client: Netns,
    pub lan: Netns,
    pub corp: Netns,
    /// Peer addresses the LAN's TCP servers saw, in order.
    pub lan_peers: mpsc::Receiver<SocketAddr>,
}

impl SplitWorld {
    /// Builds the world with namespace names starting with `prefix`.
    pub fn build(prefix: &str) -> io::Result<SplitWorld> {
        let client = Netns::create(&format!("{prefix}-client"))?;
        let lan = Netns::create(&format!("{prefix}-lan"))?;
        let corp = Netns::create(&format!("{prefix}-corp"))?;
        veth(&client, "up0", &lan, "lan0")?;
        client.sh(
            "ip addr add 192.168.50.2/24 dev up0; ip -6 addr add fd50::2/64 dev up0 nodad; \
             ip route add default via 192.168.50.1; ip -6 route add default via fd50::1; \
             sysctl -qw net.ipv4.conf.all.rp_filter=0",
        )?;
        lan.sh(
            "ip addr add 192.168.50.1/24 dev lan0; ip -6 addr add fd50::1/64 dev lan0 nodad; \
             for a in 10.1.2.3 172.31.9.1 172.16.0.1 172.31.1.1; do ip addr add $a/32 dev lo; done; \
             ip -6 addr add fd00:100::3/128 dev lo; ip route add 10.200.0.0/16 via 192.168.50.2",
        )?;
        let tun0 = client.enter(|| Tun::create("tun0"))??;
        let tun1 = corp.enter(|| Tun::create("tun1"))??;
        client.sh(
            "ip link set tun0 mtu 1400 up; ip addr add 10.200.0.2/32 dev tun0; \
             ip -6 addr add fd00:200::2/128 dev tun0 nodad; \
             sysctl -qw net.ipv4.conf.tun0.rp_filter=0",
        )?;
        corp.sh(
            "ip link set tun1 mtu 1400 up; ip addr add 10.1.2.3/32 dev tun1; \
             ip -6 addr add fd00:100::3/128 dev tun1 nodad; \
             ip route add 10.200.0.0/16 dev tun1; ip -6 route add fd00:200::/64 dev tun1",
        )?;
        let relay = TunRelay::start(tun0, tun1)?;
        let (peer_tx, lan_peers) = mpsc::channel();
        tcp_server(&lan, "lan", Some(peer_tx))?;
        tcp_server(&corp, "corp", None)?;
        for port in UDP_PORTS {
            udp_server(&lan, port, "lan")?;
            udp_server(&corp, port, "corp")?;
        }
        Ok(SplitWorld {
            relay,
            client,
            lan,
            corp,
            lan_peers,
        })
    }

    /// Connects to `dst` from the client and returns who answered ("corp" or "lan"), or None
    /// if nobody did within a second and a half.
    pub fn who_answers_tcp(&self, dst: &str) -> Option<String> {
        let addr: SocketAddr = format!("{}:{TCP_PORT}", bracket(dst)).parse().ok()?;
        self.client
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
            .ok()
            .flatten()
    }

    /// Sends one UDP datagram from the client and returns who answered, or None.
    pub fn who_answers_udp(&self, dst: &str, port: u16) -> Option<String> {
        self.who_answers_udp_sized(dst, port, 5)
    }

    /// Sends one UDP datagram of `len` bytes (more than the MTU: the client fragments it)
    /// from the client and returns who answered, or None.
    pub fn who_answers_udp_sized(&self, dst: &str, port: u16, len: usize) -> Option<String> {
        let dst: std::net::IpAddr = dst.parse().ok()?;
        self.client
            .enter(move || {
                let any = if dst.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
                let s = UdpSocket::bind(any).ok()?;
                s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
                s.send_to(&vec![b'x'; len], (dst, port)).ok()?;
                let mut buf = [0u8; 16];
                let n = s.recv(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .ok()
            .flatten()
    }

    /// Sends `bytes` through one TCP connection to the corp server at `dst` and checks that
    /// they come back intact.
    pub fn echo_transfer(&self, dst: &str, bytes: usize) -> io::Result<()> {
        let addr: SocketAddr = format!("{}:{TCP_PORT}", bracket(dst))
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad address"))?;
        self.client.enter(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut label = [0u8; 4];
            s.read_exact(&mut label)?;
            if &label != b"corp" {
                return Err(io::Error::other("not answered by corp"));
            }
            let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
            let mut writer = s.try_clone()?;
            let sent = data.clone();
            let w = std::thread::spawn(move || writer.write_all(&sent));
            let mut back = vec![0u8; bytes];
            s.read_exact(&mut back)?;
            w.join()
                .map_err(|_| io::Error::other("writer panicked"))??;
            if back != data {
                return Err(io::Error::other("echoed data differs"));
            }
            Ok(())
        })?
    }

    /// Runs a bash script in the client namespace inside cgroup `cgroup` (a directory of the
    /// cgroup v2 tree) and returns its trimmed stdout.
    pub fn run_in_cgroup(&self, cgroup: &std::path::Path, script: &str) -> io::Result<String> {
        super::run_in_cgroup(&self.client, cgroup, script)
    }
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Accepts TCP connections forever on both families: writes `label`, then echoes. Reports
/// each peer address to `peers`.
fn tcp_server(
    ns: &Netns,
    label: &'static str,
    peers: Option<mpsc::Sender<SocketAddr>>,
) -> io::Result<()> {
    for v6 in [false, true] {
        let listener = ns.enter(move || {
            let (domain, addr) = if v6 {
                (
                    socket2::Domain::IPV6,
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, TCP_PORT)),
                )
            } else {
                (
                    socket2::Domain::IPV4,
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, TCP_PORT)),
                )
            };
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            if v6 {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(64)?;
            Ok::<_, io::Error>(TcpListener::from(s))
        })??;
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
    Ok(())
}

/// Answers every UDP datagram on `port`, over both families, with `label`.
fn udp_server(ns: &Netns, port: u16, label: &'static str) -> io::Result<()> {
    for v6 in [false, true] {
        let sock = ns.enter(move || {
            let (domain, addr) = if v6 {
                (
                    socket2::Domain::IPV6,
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                )
            } else {
                (
                    socket2::Domain::IPV4,
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                )
            };
            let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
            if v6 {
                s.set_only_v6(true)?;
            }
            s.bind(&addr.into())?;
            Ok::<_, io::Error>(UdpSocket::from(s))
        })??;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(label.as_bytes(), peer);
            }
        });
    }
    Ok(())
}
