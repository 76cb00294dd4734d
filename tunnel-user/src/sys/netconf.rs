//! Interface, address and route configuration over rtnetlink, synchronously: bring a link up
//! with an MTU, add addresses, add and delete routes, ask which route reaches an address.
//! Requests act in the network namespace of the calling thread. Routes we add carry our own
//! protocol number ([`RTPROT_TUNNEL`]) so they can be recognised (`ip route show proto 116`).
//!
//! Each call sends one request with `NLM_F_ACK` and waits for the kernel's answer; an error
//! answer becomes a [`NetconfError`] naming the operation and the errno. Messages are built
//! and parsed by `netlink-packet-route`; `netlink-sys` is the (blocking) socket.

use std::{fmt, io, net::IpAddr};

use ipnet::IpNet;
use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
        RouteScope, RouteType,
    },
    tc::{TcAttribute, TcHandle, TcMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

/// The routing protocol number marking routes tunnel added.
pub const RTPROT_TUNNEL: u8 = 116;

/// Room for one datagram of answers: the kernel fills at most a page or so per datagram.
const RECV_BUFFER: usize = 64 << 10;

/// A failed rtnetlink operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetconfError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("{op}: malformed answer from the kernel")]
    Malformed {
        op: String,
        #[source]
        source: DecodeError,
    },
}

/// Where a route sends packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Straight out of a device (on-link).
    Dev(u32),
    /// Through a next hop reachable on a device.
    Gateway(IpAddr, u32),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Dev(ifindex) => write!(f, "dev ifindex {ifindex}"),
            Via::Gateway(gw, ifindex) => write!(f, "via {gw} dev ifindex {ifindex}"),
        }
    }
}

/// A route to add or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub via: Via,
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
}

/// What the kernel would do with a packet to some address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteLookup {
    pub ifindex: u32,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// An rtnetlink socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    /// Answers are read into it; kept to spare an allocation per request.
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetconfError> {
        let socket = Socket::new(NETLINK_ROUTE).map_err(NetconfError::Socket)?;
        // Port 0 is the kernel: requests go there and only its answers come back.
        socket
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(NetconfError::Socket)?;
        Ok(Netlink {
            socket,
            seq: 1,
            buf: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Sends `msg` with `flags` (and `NLM_F_REQUEST | NLM_F_ACK`), collects answers until the
    /// ack and returns the non-ack ones. Messages of other sequence numbers are skipped unread.
    fn request(
        &mut self,
        op: &str,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetconfError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        msg.finalize();
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let kernel = |source| NetconfError::Kernel {
            op: op.to_string(),
            source,
        };
        let malformed = |source| NetconfError::Malformed {
            op: op.to_string(),
            source,
        };
        self.socket.send(&bytes, 0).map_err(kernel)?;
        let mut answers = Vec::new();
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0).map_err(kernel)?;
            let mut rest = &self.buf[..];
            while !rest.is_empty() {
                let raw = NetlinkBuffer::new_checked(rest).map_err(malformed)?;
                let len = raw.length() as usize;
                if raw.sequence_number() == seq {
                    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                        .map_err(malformed)?;
                    match answer.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            None => return Ok(answers),
                            Some(_) => return Err(kernel(e.to_io())),
                        },
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::InnerMessage(m) => answers.push(m),
                        _ => {}
                    }
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
    }

    /// Every link of the namespace, by one `RTM_GETLINK` dump (the kernel's messages as
    /// they are, of every family).
    pub fn links(&mut self) -> Result<Vec<LinkMessage>, NetconfError> {
        let answers = self.request(
            "listing the links",
            NLM_F_DUMP,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// Brings a link up, optionally setting its MTU.
    pub fn link_up(&mut self, ifindex: u32, mtu: Option<u32>) -> Result<(), NetconfError> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
        self.request(
            &format!("bringing up ifindex {ifindex}"),
            0,
            RouteNetlinkMessage::NewLink(msg),
        )
        .map(drop)
    }

    /// Makes `noqueue` the link's root qdisc. For a TUN device, whose driver never stops its
    /// queue (a full ring drops), the default `pfifo_fast` only adds an enqueue, a dequeue
    /// and a lock to every packet routed or redirected into it; `ip link` on veth and
    /// loopback shows `noqueue` for the same reason. A qdisc an administrator wants there
    /// can still replace it.
    pub fn root_qdisc_noqueue(&mut self, ifindex: u32) -> Result<(), NetconfError> {
        let mut msg = TcMessage::default();
        msg.header.index = ifindex as i32;
        msg.header.parent = TcHandle::ROOT;
        msg.attributes
            .push(TcAttribute::Kind("noqueue".to_string()));
        self.request(
            &format!("noqueue qdisc on ifindex {ifindex}"),
            NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewQueueDiscipline(msg),
        )
        .map(drop)
    }

    fn addr_msg(ifindex: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = ifindex;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        msg
    }

    /// Adds `addr/prefix_len` to a link (IPv6 without duplicate address detection). Adding an
    /// address that is already there succeeds.
    pub fn addr_add(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetconfError> {
        self.request(
            &format!("adding {addr}/{prefix_len} to ifindex {ifindex}"),
            NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewAddress(Self::addr_msg(ifindex, addr, prefix_len)),
        )
        .map(drop)
    }

    /// Removes an address from a link.
    pub fn addr_del(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetconfError> {
        self.request(
            &format!("removing {addr}/{prefix_len} from ifindex {ifindex}"),
            0,
            RouteNetlinkMessage::DelAddress(Self::addr_msg(ifindex, addr, prefix_len)),
        )
        .map(drop)
    }

    /// A route of ours in the main table: on-link routes have link scope, routes through a
    /// next hop universe scope, as `ip route` gives them.
    fn route_msg(r: &Route) -> RouteMessage {
        let dst = r.dst.trunc();
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(RTPROT_TUNNEL);
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = match r.via {
            Via::Dev(_) => RouteScope::Link,
            Via::Gateway(..) => RouteScope::Universe,
        };
        msg.attributes
            .push(RouteAttribute::Destination(dst.network().into()));
        match r.via {
            Via::Dev(ifindex) => msg.attributes.push(RouteAttribute::Oif(ifindex)),
            Via::Gateway(gw, ifindex) => {
                msg.attributes.push(RouteAttribute::Gateway(gw.into()));
                msg.attributes.push(RouteAttribute::Oif(ifindex));
            }
        }
        msg.attributes
            .extend(r.metric.map(RouteAttribute::Priority));
        if let Some(mtu) = r.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        msg
    }

    /// Adds a route; fails if an identical one exists.
    pub fn route_add(&mut self, r: &Route) -> Result<(), NetconfError> {
        self.request(
            &format!("adding route {} {}", r.dst, r.via),
            NLM_F_CREATE | NLM_F_EXCL,
            RouteNetlinkMessage::NewRoute(Self::route_msg(r)),
        )
        .map(drop)
    }

    /// Adds a route, or replaces the one to the same destination (another device's).
    pub fn route_replace(&mut self, r: &Route) -> Result<(), NetconfError> {
        self.request(
            &format!("replacing route {} {}", r.dst, r.via),
            NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewRoute(Self::route_msg(r)),
        )
        .map(drop)
    }

    /// Deletes a route.
    pub fn route_del(&mut self, r: &Route) -> Result<(), NetconfError> {
        self.request(
            &format!("deleting route {} {}", r.dst, r.via),
            0,
            RouteNetlinkMessage::DelRoute(Self::route_msg(r)),
        )
        .map(drop)
    }

    /// The route the kernel would use for `dst`, or None if there is none.
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Option<RouteLookup>, NetconfError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(RouteAttribute::Destination(dst.into()));
        let op = format!("looking up the route to {dst}");
        let answers = match self.request(&op, 0, RouteNetlinkMessage::GetRoute(msg)) {
            Ok(a) => a,
            Err(NetconfError::Kernel { source, .. })
                if matches!(
                    source.raw_os_error().map(Errno::from_raw),
                    Some(Errno::ENETUNREACH | Errno::EHOSTUNREACH)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(route) = answers.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        }) else {
            return Ok(None);
        };
        let mut out = RouteLookup {
            ifindex: 0,
            gateway: None,
            prefsrc: None,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(ifindex) => out.ifindex = *ifindex,
                RouteAttribute::Gateway(a) => out.gateway = ip_of(a),
                RouteAttribute::PrefSource(a) => out.prefsrc = ip_of(a),
                _ => {}
            }
        }
        Ok(Some(out))
    }
}

/// Sets a sysctl under /proc/sys (e.g. `net/ipv4/conf/tun0/rp_filter`). /proc/sys/net shows
/// the network namespace of the process, so call it from a process in the right namespace.
/// A sysctl that already has the value is not written: a sandboxed daemon whose tunables
/// are read-only (systemd's `ProtectKernelTunables=`) then works where the administrator
/// set it beforehand.
pub fn sysctl(path: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{path}");
    if std::fs::read_to_string(&path).is_ok_and(|now| now.trim() == value.trim()) {
        return Ok(());
    }
    std::fs::write(path, value)
}
