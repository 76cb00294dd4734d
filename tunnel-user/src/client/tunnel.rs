//! A connection's footprint on the host: the TUN device with its addresses and routes, the
//! connection's entry in the kernel policy, and the ESP socket. Made when the gateway's
//! configuration arrives, kept over reconnects that keep the address (tunnelled traffic then
//! waits in the device instead of leaking onto the LAN), and taken down in the reverse order
//! ([`teardown`]). The packet threads that run on it are `super::end`'s.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::Arc,
    thread::JoinHandle,
};

use ipnet::IpNet;
use tracing::{info, warn};
use tunnel_proto::Config;

use super::{
    policy::{ConnEntry, DataPlane},
    spec::ConnectSpec,
};
use crate::{
    datapath::{ConnId, ConnPolicy, DatapathError},
    sys::epoll::Stop,
    sys::{
        netconf::{NetconfError, Netlink, Route, RouteLookup, Via, sysctl},
        tun::Tun,
        udp_gso,
    },
};

/// The MTU when neither the KVPs nor the gateway give one.
const DEFAULT_MTU: u16 = 1400;

/// The largest MTU taken from a gateway.
const MAX_GATEWAY_MTU: u32 = 9000;

/// Why the gateway's configuration could not be applied to this host.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the gateway assigned no address")]
    NoAddress,
    /// `TunIP` names the device's address, which stands for the gateway's IPv4 address.
    #[error("KVP TunIP is set, but the gateway assigned no IPv4 address for it to stand for")]
    TunIpWithoutIpv4,
    /// The gateway sent a prefix longer than its address (`len` bits).
    #[error("the gateway sent a route of /{len}")]
    Prefix { len: u8 },
    #[error("creating the TUN device")]
    CreateTun(#[source] Arc<io::Error>),
    #[error("TUN device")]
    TunIndex(#[source] Arc<DatapathError>),
    #[error("netlink")]
    Netlink(#[source] Arc<NetconfError>),
    #[error("bringing up the TUN")]
    LinkUp(#[source] Arc<NetconfError>),
    #[error("TUN address")]
    Address(#[source] Arc<NetconfError>),
    #[error("the packet threads' stop signal")]
    StopSignal(#[source] Arc<io::Error>),
    #[error("installing the policy")]
    Policy(#[source] Arc<DatapathError>),
    #[error("starting the packet threads")]
    Threads(#[source] Arc<io::Error>),
}

/// What the tunnel is to be, from the gateway's configuration and the connection's KVPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// The gateway's: the source of every tunnelled IPv4 packet (the kernel programs
    /// translate to it).
    pub(super) ipv4: Option<Ipv4Addr>,
    /// The TUN device's own IPv4 address: KVP `TunIP` (for a local network in the range the
    /// gateway's address is from), else the gateway's.
    pub(super) device_v4: Option<Ipv4Addr>,
    pub(super) ipv6: Option<Ipv6Addr>,
    /// KVP `MTU`, else the gateway's (at most 9000), else 1400.
    pub(super) mtu: u16,
    /// KVP `IPRoutes` when set, else the gateway's include routes (none: everything).
    pub(super) include: Vec<IpNet>,
    /// The gateway's exclude routes, then KVP `ExcRoutes`.
    pub(super) exclude: Vec<IpNet>,
    /// The gateway's address inside the tunnel: the target of keepalive probes.
    pub(super) internal_gateway: Option<Ipv4Addr>,
    /// Drop the IP family the tunnel has no address for instead of letting it around the
    /// tunnel: KVP `BlockUntunnelledIPv6` in a full tunnel (the includes hold 0.0.0.0/0)
    /// with no IPv6 address.
    pub(super) drop_missing_family: bool,
}

impl Plan {
    pub(super) fn new(spec: &ConnectSpec, config: &Config) -> Result<Plan, SetupError> {
        let ipv4 = config.ipv4_address;
        let ipv6 = config.ipv6_address.map(|n| n.addr);
        if ipv4.is_none() && ipv6.is_none() {
            return Err(SetupError::NoAddress);
        }
        if spec.tun_ip.is_some() && ipv4.is_none() {
            return Err(SetupError::TunIpWithoutIpv4);
        }
        let device_v4 = spec.tun_ip.or(ipv4);
        let mtu = spec
            .mtu
            .or(config.mtu.map(|m| m.min(MAX_GATEWAY_MTU) as u16))
            .unwrap_or(DEFAULT_MTU);
        let nets = |v4: &[tunnel_proto::Ipv4Net], v6: &[tunnel_proto::Ipv6Net]| {
            let v4 = v4.iter().map(|n| {
                ipnet::Ipv4Net::new(n.addr, n.prefix_len)
                    .map(IpNet::V4)
                    .map_err(|_| SetupError::Prefix { len: n.prefix_len })
            });
            let v6 = v6.iter().map(|n| {
                ipnet::Ipv6Net::new(n.addr, n.prefix_len)
                    .map(IpNet::V6)
                    .map_err(|_| SetupError::Prefix { len: n.prefix_len })
            });
            v4.chain(v6).collect::<Result<Vec<IpNet>, SetupError>>()
        };
        let gateway_include = nets(&config.include_v4, &config.include_v6)?;
        let mut include = spec.ip_routes.clone().unwrap_or(gateway_include);
        // The tunnel's DNS servers are reached through it (seed 000: "ensure that the DNS is
        // routable"): a host route for each one no include covers. No includes: all are.
        if !include.is_empty() {
            let servers = if spec.dns.servers.is_empty() {
                &config.dns
            } else {
                &spec.dns.servers
            };
            for server in servers {
                if !include.iter().any(|n| n.contains(server)) {
                    include.push(IpNet::from(*server));
                }
            }
        }
        let mut exclude = nets(&config.exclude_v4, &config.exclude_v6)?;
        exclude.extend(spec.exc_routes.iter().copied());
        // No include routes means everything (`ConnPolicy::effective_include`).
        let full_v4 = include.is_empty()
            || include
                .iter()
                .any(|n| matches!(n, IpNet::V4(n) if n.prefix_len() == 0));
        let drop_missing_family =
            spec.block_untunnelled_ipv6 && full_v4 && ipv4.is_some() && ipv6.is_none();
        Ok(Plan {
            ipv4,
            device_v4,
            ipv6,
            mtu,
            include,
            exclude,
            internal_gateway: config.internal_gateway,
            drop_missing_family,
        })
    }
}

/// The tunnel set up for a session: TUN device, routes, ESP socket, packet threads.
pub(super) struct Tunnel {
    pub(super) tun: Arc<Tun>,
    pub(super) routes: Vec<Route>,
    pub(super) udp: Option<Arc<UdpSocket>>,
    pub(super) stop: Arc<Stop>,
    pub(super) threads: Vec<JoinHandle<()>>,
    /// The gateway's IPv4 address for this client ([`Plan::ipv4`]).
    pub(super) ipv4: Option<Ipv4Addr>,
    /// The device's ([`Plan::device_v4`]).
    pub(super) device_v4: Option<Ipv4Addr>,
    /// The gateway's address inside the tunnel: the target of keepalive probes.
    pub(super) internal_gateway: Option<Ipv4Addr>,
    /// How the gateway was reached when the session came up (interface, source address).
    pub(super) uplink: Option<RouteLookup>,
}

impl Tunnel {
    pub(super) fn stop_threads(&mut self) {
        self.stop.set();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stop.clear();
    }

    /// A new TUN device with the plan's addresses, and routes into it for the included
    /// ranges the routing table would not send to an uplink.
    fn create(name: &str, plan: &Plan, gateway: IpAddr) -> Result<Tunnel, SetupError> {
        let tun =
            Arc::new(Tun::create_offloaded(name).map_err(|e| SetupError::CreateTun(Arc::new(e)))?);
        let index = tun_index(&tun)?;
        let mut nl = Netlink::open().map_err(|e| SetupError::Netlink(Arc::new(e)))?;
        // Replies arrive on the TUN with remote sources routed via the uplink, which strict
        // reverse-path filtering would drop. The kernel applies the stricter of the
        // system-wide and the device's setting: loose mode where the system filters at all,
        // none where it does not (a loose check is one more route lookup per packet and, with
        // a default route, drops nothing).
        let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter");
        let mode = if all.is_ok_and(|v| v.trim() == "0") {
            "0"
        } else {
            "2"
        };
        let _ = sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), mode);
        if plan.ipv6.is_none() {
            let _ = sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
        }
        if let Err(e) = nl.root_qdisc_noqueue(index) {
            warn!(error = %e, "the TUN device keeps its default qdisc");
        }
        nl.link_up(index, Some(u32::from(plan.mtu)))
            .map_err(|e| SetupError::LinkUp(Arc::new(e)))?;
        let addresses = [plan.device_v4.map(|a| (IpAddr::V4(a), 32))]
            .into_iter()
            .chain([plan.ipv6.map(|a| (IpAddr::V6(a), 128))])
            .flatten();
        for (addr, prefix) in addresses {
            nl.addr_add(index, addr, prefix)
                .map_err(|e| SetupError::Address(Arc::new(e)))?;
        }
        // Included ranges the routing table would not send to an uplink (no default route)
        // are routed into the TUN device, where the egress program applies the policy.
        let mut routes = Vec::new();
        for net in &plan.include {
            let unrouted = matches!(nl.route_get(net.network()), Ok(None));
            if unrouted {
                let r = Route {
                    dst: *net,
                    via: Via::Dev(index),
                    metric: None,
                    mtu: None,
                };
                if nl.route_add(&r).is_ok() {
                    routes.push(r);
                }
            }
        }
        let uplink = nl.route_get(gateway).ok().flatten();
        Ok(Tunnel {
            tun,
            routes,
            udp: None,
            stop: Arc::new(Stop::new().map_err(|e| SetupError::StopSignal(Arc::new(e)))?),
            threads: Vec::new(),
            ipv4: plan.ipv4,
            device_v4: plan.device_v4,
            internal_gateway: plan.internal_gateway,
            uplink,
        })
    }
}

fn tun_index(tun: &Tun) -> Result<u32, SetupError> {
    crate::datapath::ifindex(tun.name()).map_err(|e| SetupError::TunIndex(Arc::new(e)))
}

/// Applies `plan` for a session with the gateway at `gateway`: the TUN device (the one in
/// `slot` when the address did not change, else a new one), the policy entry, and the ESP
/// socket to `esp_port`. The packet threads are stopped; the caller starts them on the
/// tunnel returned.
pub(super) fn configure<'t>(
    slot: &'t mut Option<Tunnel>,
    spec: &ConnectSpec,
    plane: &DataPlane,
    plan: &Plan,
    gateway: IpAddr,
    esp_port: Option<u16>,
) -> Result<&'t mut Tunnel, SetupError> {
    let t = match slot.take() {
        Some(mut t) if t.ipv4 == plan.ipv4 && t.device_v4 == plan.device_v4 => {
            // The route this session came up on: the one a change of routes made it
            // reconnect over, for one. Kept from before, it made every later check see that
            // same change again, and the client reconnected every 2 s for as long as it
            // stayed.
            t.uplink = Netlink::open()
                .ok()
                .and_then(|mut nl| nl.route_get(gateway).ok().flatten());
            t
        }
        mut other => {
            // A new address: rebuild.
            teardown(&mut other, plane, spec.id);
            Tunnel::create(&format!("tun{}", spec.id), plan, gateway)?
        }
    };
    let t = slot.insert(t);
    t.stop_threads();
    let conn = ConnPolicy {
        id: spec.id,
        tun_ifindex: tun_index(&t.tun)?,
        tun_v4: plan.ipv4,
        tun_v6: plan.ipv6,
        mtu: plan.mtu,
        include: plan.include.clone(),
        exclude: plan.exclude.clone(),
        udp_ports: spec.udp_ports.clone(),
        drop_missing_family: plan.drop_missing_family,
    };
    let entry = ConnEntry {
        conn,
        gateway,
        app_cgroup: spec.app_cgroup,
    };
    plane
        .connect(spec.id, t.tun.name(), entry)
        .map_err(|e| SetupError::Policy(Arc::new(e)))?;
    // The ESP socket: connected to the gateway's ESP port, marked so it bypasses.
    t.udp = match (spec.esp, esp_port) {
        (true, Some(port)) => match esp_socket(SocketAddr::new(gateway, port)) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                warn!(error = %e, "no ESP socket; staying on TLS");
                None
            }
        },
        _ => None,
    };
    info!(connection = %spec.name, ipv4 = ?plan.ipv4, device_v4 = ?plan.device_v4, ipv6 = ?plan.ipv6, mtu = plan.mtu, ipv6_blocked = plan.drop_missing_family, "tunnel configured");
    Ok(t)
}

/// Takes the tunnel in `slot` down: packet threads, routes, policy entry, then the device.
pub(super) fn teardown(slot: &mut Option<Tunnel>, plane: &DataPlane, id: ConnId) {
    if let Some(mut t) = slot.take() {
        t.stop_threads();
        if let Ok(mut nl) = Netlink::open() {
            for r in &t.routes {
                let _ = nl.route_del(r);
            }
        }
        if let Err(e) = plane.disconnect(id) {
            warn!(error = %e, "withdrawing the policy entry failed");
        }
        // Dropping the Tun removes the device.
    }
}

fn esp_socket(gateway: SocketAddr) -> io::Result<UdpSocket> {
    let sock = crate::sys::own_socket::socket_for(gateway, socket2::Type::DGRAM, true)?;
    sock.connect(&gateway.into())?;
    let sock: UdpSocket = sock.into();
    udp_gso::tune(&sock);
    Ok(sock)
}

/// Whether the route to the gateway now leaves through another interface or source address
/// than when the tunnel came up; returns (before, now) for the event.
pub(super) fn route_change(gateway: IpAddr, t: &Tunnel) -> Option<(String, String)> {
    let was = t.uplink?;
    let mut nl = Netlink::open().ok()?;
    let now = nl.route_get(gateway).ok()?;
    let show = |r: Option<RouteLookup>| match r {
        Some(r) => format!(
            "{} (ifindex {})",
            r.prefsrc.map_or("-".into(), |a| a.to_string()),
            r.ifindex
        ),
        None => "no route".into(),
    };
    match now {
        Some(r) if r.ifindex == was.ifindex && r.prefsrc == was.prefsrc => None,
        other => Some((show(Some(was)), show(other))),
    }
}

/// A small ICMP echo request from the tunnel address to the gateway's tunnel address, the
/// keepalive probe of dead-peer detection.
pub(super) fn keepalive_packet(t: &Tunnel) -> Option<Vec<u8>> {
    Some(echo_request(t.ipv4?, t.internal_gateway?))
}

/// An IPv4 ICMP echo request, id and sequence 0, no payload.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    use tunnel_packet::checksum::{add, finish};
    const LEN: u16 = 28;
    let mut p = vec![0u8; usize::from(LEN)];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&LEN.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = finish(add(0, &p[..20]));
    p[10..12].copy_from_slice(&sum);
    p[20] = 8;
    let sum = finish(add(0, &p[20..]));
    p[22..24].copy_from_slice(&sum);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        client::{cert_select::ClientAuth, prompts::Prompter, spec::Dpd, tls::Trust},
        datapath::reference::{fold, ones_sum},
    };

    #[test]
    fn the_keepalive_is_a_valid_echo_request() {
        let (src, dst) = (Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 1));
        let p = echo_request(src, dst);
        assert_eq!(p.len(), 28);
        assert_eq!(&p[..2], &[0x45, 0]);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 28);
        assert_eq!((p[8], p[9]), (64, 1), "TTL 64, ICMP");
        assert_eq!(&p[12..16], &src.octets());
        assert_eq!(&p[16..20], &dst.octets());
        assert_eq!((p[20], p[21]), (8, 0), "echo request");
        // A checksummed area sums to zero with its checksum in (the reference model's sum).
        assert_eq!(fold(ones_sum(0, &p[..20])), 0, "IPv4 header checksum");
        assert_eq!(fold(ones_sum(0, &p[20..])), 0, "ICMP checksum");
        assert_ne!(&p[10..12], &[0, 0]);
    }

    fn spec() -> ConnectSpec {
        ConnectSpec {
            name: "t".into(),
            id: 1,
            gateways: Vec::new(),
            url_mode: tunnel_config::UrlMode::Top,
            last_url: None,
            realm: None,
            user: None,
            password: None,
            cookie: None,
            trust: Trust::default(),
            client_cert: ClientAuth::None,
            ip_routes: None,
            exc_routes: Vec::new(),
            udp_ports: None,
            mtu: None,
            tun_ip: None,
            dns: Default::default(),
            portal: None,
            portal_exception: None,
            block_untunnelled_ipv6: true,
            dpd: Dpd::default(),
            disconnect_timeout: None,
            app_cgroup: None,
            esp: true,
            learn_pin: false,
            prompts: Prompter::new(Default::default(), None),
        }
    }

    fn v4(s: &str) -> tunnel_proto::Ipv4Net {
        let n: ipnet::Ipv4Net = s.parse().unwrap();
        tunnel_proto::Ipv4Net::new(n.addr(), n.prefix_len()).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn config() -> Config {
        Config {
            ipv4_address: Some(Ipv4Addr::new(10, 9, 0, 2)),
            internal_gateway: Some(Ipv4Addr::new(10, 9, 0, 1)),
            include_v4: vec![v4("10.0.0.0/8")],
            exclude_v4: vec![v4("10.1.0.0/16")],
            ..Config::default()
        }
    }

    #[test]
    fn the_plan_takes_the_gateways_configuration() {
        let plan = Plan::new(&spec(), &config()).unwrap();
        assert_eq!(
            plan,
            Plan {
                ipv4: Some(Ipv4Addr::new(10, 9, 0, 2)),
                device_v4: Some(Ipv4Addr::new(10, 9, 0, 2)),
                ipv6: None,
                mtu: DEFAULT_MTU,
                include: vec![net("10.0.0.0/8")],
                exclude: vec![net("10.1.0.0/16")],
                internal_gateway: Some(Ipv4Addr::new(10, 9, 0, 1)),
                drop_missing_family: false,
            }
        );
        let mut big = config();
        big.mtu = Some(65_000);
        assert_eq!(Plan::new(&spec(), &big).unwrap().mtu, 9000);
        big.mtu = Some(1300);
        assert_eq!(Plan::new(&spec(), &big).unwrap().mtu, 1300);
    }

    #[test]
    fn the_kvps_override_the_gateway() {
        let mut s = spec();
        s.tun_ip = Some(Ipv4Addr::new(172, 16, 0, 9));
        s.mtu = Some(1280);
        s.ip_routes = Some(vec![net("192.168.0.0/16")]);
        s.exc_routes = vec![net("192.168.5.0/24")];
        let mut c = config();
        c.mtu = Some(1500);
        let plan = Plan::new(&s, &c).unwrap();
        assert_eq!(plan.device_v4, Some(Ipv4Addr::new(172, 16, 0, 9)));
        assert_eq!(
            plan.ipv4, c.ipv4_address,
            "packets leave from the gateway's address"
        );
        assert_eq!(plan.mtu, 1280);
        assert_eq!(plan.include, vec![net("192.168.0.0/16")]);
        assert_eq!(
            plan.exclude,
            vec![net("10.1.0.0/16"), net("192.168.5.0/24")]
        );
    }

    #[test]
    fn a_plan_needs_an_address_and_sound_prefixes() {
        let mut c = config();
        c.ipv4_address = None;
        assert!(matches!(Plan::new(&spec(), &c), Err(SetupError::NoAddress)));
        c.ipv6_address = Some(tunnel_proto::Ipv6Net {
            addr: "fd00::2".parse().unwrap(),
            prefix_len: 64,
        });
        let mut s = spec();
        s.tun_ip = Some(Ipv4Addr::new(172, 16, 0, 9));
        assert!(matches!(
            Plan::new(&s, &c),
            Err(SetupError::TunIpWithoutIpv4)
        ));
        let mut c = config();
        c.exclude_v4.push(tunnel_proto::Ipv4Net {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix_len: 33,
        });
        assert!(matches!(
            Plan::new(&spec(), &c),
            Err(SetupError::Prefix { len: 33 })
        ));
    }

    #[test]
    fn a_full_tunnel_without_ipv6_drops_ipv6_unless_told_not_to() {
        let full = |spec: &ConnectSpec, c: &Config| Plan::new(spec, c).unwrap().drop_missing_family;
        let mut c = config();
        // Split (10.0.0.0/8): IPv6 goes around, as everything not included does.
        assert!(!full(&spec(), &c));
        // The gateway includes everything, or nothing (which means everything).
        c.include_v4 = vec![v4("0.0.0.0/0")];
        assert!(full(&spec(), &c));
        c.include_v4.clear();
        assert!(full(&spec(), &c));
        // KVP IPRoutes decides over the gateway's routes.
        let mut s = spec();
        s.ip_routes = Some(vec![net("192.168.0.0/16")]);
        assert!(!full(&s, &c));
        s.ip_routes = Some(vec![net("0.0.0.0/0")]);
        assert!(full(&s, &c));
        // BlockUntunnelledIPv6=false.
        s.block_untunnelled_ipv6 = false;
        assert!(!full(&s, &c));
        // An IPv6 address: IPv6 goes through the tunnel, nothing to drop.
        c.ipv6_address = Some(tunnel_proto::Ipv6Net {
            addr: "fd00:9::2".parse().unwrap(),
            prefix_len: 64,
        });
        assert!(!full(&spec(), &c));
    }
}
