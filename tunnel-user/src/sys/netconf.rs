//! Interface, address and route configuration over rtnetlink, synchronously: bring a link up
//! with an MTU, add addresses, add and delete routes, ask which route reaches an address.
//! Requests act in the network namespace of the calling thread. Routes we add carry our own
//! protocol number ([`RTPROT_TUNNEL`]) so they can be recognised (`ip route show proto 116`).
//!
//! Each call sends one request with `NLM_F_ACK` and waits for the kernel's answer; an error
//! answer becomes a [`NetconfError`] naming the operation and the errno.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use ipnet::IpNet;

const NETLINK_ROUTE: libc::c_int = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWQDISC: u16 = 36;
const TCA_KIND: u16 = 1;
const TC_H_ROOT: u32 = 0xffff_ffff;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u32 = 0x02;
const IFA_FLAGS: u16 = 8;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_METRICS: u16 = 8;
const RTAX_MTU: u16 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// The routing protocol number marking routes tunnel added.
pub const RTPROT_TUNNEL: u8 = 116;

/// A failed rtnetlink operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetconfError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("{op}: malformed answer from the kernel")]
    Malformed { op: String },
}

/// Where a route sends packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Straight out of a device (on-link).
    Dev(u32),
    /// Through a next hop reachable on a device.
    Gateway(IpAddr, u32),
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

/// A message under construction: header, fixed part, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(fixed);
        pad(&mut buf);
        Msg { buf }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// An rtnetlink socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetconfError> {
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(NetconfError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: socket returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sends `msg` and collects answers until the ack; returns the non-ack messages.
    fn request(&mut self, op: &str, msg: Msg) -> Result<Vec<(u16, Vec<u8>)>, NetconfError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        let kernel = |source| NetconfError::Kernel {
            op: op.to_string(),
            source,
        };
        // SAFETY: `bytes` is valid for reads of its length; the kernel is the default peer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(kernel(io::Error::last_os_error()));
        }
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(kernel(io::Error::last_os_error()));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let their_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < 16 || len > rest.len() {
                    return Err(NetconfError::Malformed { op: op.to_string() });
                }
                let body = &rest[16..len];
                if their_seq == seq {
                    match kind {
                        NLMSG_ERROR => {
                            let errno = body
                                .get(0..4)
                                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                                .ok_or_else(|| NetconfError::Malformed { op: op.to_string() })?;
                            if errno == 0 {
                                return Ok(answers);
                            }
                            return Err(kernel(io::Error::from_raw_os_error(-errno)));
                        }
                        NLMSG_DONE => return Ok(answers),
                        _ => answers.push((kind, body.to_vec())),
                    }
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
    }

    /// Brings a link up, optionally setting its MTU.
    pub fn link_up(&mut self, ifindex: u32, mtu: Option<u32>) -> Result<(), NetconfError> {
        let mut fixed = [0u8; 16];
        fixed[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        fixed[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
        fixed[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
        let mut msg = Msg::new(RTM_NEWLINK, 0, &fixed);
        if let Some(mtu) = mtu {
            msg.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(&format!("bringing up ifindex {ifindex}"), msg)
            .map(drop)
    }

    /// Makes `noqueue` the link's root qdisc. For a TUN device, whose driver never stops its
    /// queue (a full ring drops), the default `pfifo_fast` only adds an enqueue, a dequeue
    /// and a lock to every packet routed or redirected into it; `ip link` on veth and
    /// loopback shows `noqueue` for the same reason. A qdisc an administrator wants there
    /// can still replace it.
    pub fn root_qdisc_noqueue(&mut self, ifindex: u32) -> Result<(), NetconfError> {
        // struct tcmsg: family, pads, ifindex, handle, parent, info.
        let mut fixed = [0u8; 20];
        fixed[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        fixed[12..16].copy_from_slice(&TC_H_ROOT.to_ne_bytes());
        let mut msg = Msg::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, &fixed);
        msg.attr(TCA_KIND, b"noqueue\0");
        self.request(&format!("noqueue qdisc on ifindex {ifindex}"), msg)
            .map(drop)
    }

    fn addr_msg(kind: u16, flags: u16, ifindex: u32, addr: IpAddr, prefix_len: u8) -> Msg {
        let mut fixed = [0u8; 8];
        fixed[0] = family(addr);
        fixed[1] = prefix_len;
        fixed[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        let mut msg = Msg::new(kind, flags, &fixed);
        msg.attr(IFA_LOCAL, &addr_bytes(addr))
            .attr(IFA_ADDRESS, &addr_bytes(addr));
        if addr.is_ipv6() {
            msg.attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
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
        let msg = Self::addr_msg(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            ifindex,
            addr,
            prefix_len,
        );
        self.request(
            &format!("adding {addr}/{prefix_len} to ifindex {ifindex}"),
            msg,
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
        let msg = Self::addr_msg(RTM_DELADDR, 0, ifindex, addr, prefix_len);
        self.request(
            &format!("removing {addr}/{prefix_len} from ifindex {ifindex}"),
            msg,
        )
        .map(drop)
    }

    fn route_msg(kind: u16, flags: u16, r: &Route) -> Msg {
        let dst = r.dst.trunc();
        let mut fixed = [0u8; 12];
        fixed[0] = family(dst.addr());
        fixed[1] = dst.prefix_len();
        fixed[4] = RT_TABLE_MAIN;
        fixed[5] = RTPROT_TUNNEL;
        fixed[6] = match r.via {
            Via::Dev(_) => RT_SCOPE_LINK,
            Via::Gateway(..) => RT_SCOPE_UNIVERSE,
        };
        fixed[7] = RTN_UNICAST;
        let mut msg = Msg::new(kind, flags, &fixed);
        msg.attr(RTA_DST, &addr_bytes(dst.network()));
        match r.via {
            Via::Dev(ifindex) => msg.attr(RTA_OIF, &ifindex.to_ne_bytes()),
            Via::Gateway(gw, ifindex) => msg
                .attr(RTA_GATEWAY, &addr_bytes(gw))
                .attr(RTA_OIF, &ifindex.to_ne_bytes()),
        };
        if let Some(metric) = r.metric {
            msg.attr(RTA_PRIORITY, &metric.to_ne_bytes());
        }
        if let Some(mtu) = r.mtu {
            let mut nested = Vec::new();
            nested.extend_from_slice(&8u16.to_ne_bytes());
            nested.extend_from_slice(&RTAX_MTU.to_ne_bytes());
            nested.extend_from_slice(&mtu.to_ne_bytes());
            msg.attr(RTA_METRICS, &nested);
        }
        msg
    }

    /// Adds a route; fails if an identical one exists.
    pub fn route_add(&mut self, r: &Route) -> Result<(), NetconfError> {
        let msg = Self::route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, r);
        self.request(&format!("adding route {} via {:?}", r.dst, r.via), msg)
            .map(drop)
    }

    /// Deletes a route.
    pub fn route_del(&mut self, r: &Route) -> Result<(), NetconfError> {
        let msg = Self::route_msg(RTM_DELROUTE, 0, r);
        self.request(&format!("deleting route {} via {:?}", r.dst, r.via), msg)
            .map(drop)
    }

    /// The route the kernel would use for `dst`, or None if there is none.
    pub fn route_get(&mut self, dst: IpAddr) -> Result<Option<RouteLookup>, NetconfError> {
        let mut fixed = [0u8; 12];
        fixed[0] = family(dst);
        fixed[1] = if dst.is_ipv4() { 32 } else { 128 };
        let mut msg = Msg::new(RTM_GETROUTE, 0, &fixed);
        msg.attr(RTA_DST, &addr_bytes(dst));
        let op = format!("looking up the route to {dst}");
        let answers = match self.request(&op, msg) {
            Ok(a) => a,
            Err(NetconfError::Kernel { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some((_, body)) = answers.into_iter().find(|(k, _)| *k == RTM_NEWROUTE) else {
            return Ok(None);
        };
        let malformed = || NetconfError::Malformed { op: op.clone() };
        let mut out = RouteLookup {
            ifindex: 0,
            gateway: None,
            prefsrc: None,
        };
        let mut attrs = body.get(12..).ok_or_else(malformed)?;
        while attrs.len() >= 4 {
            let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if len < 4 || len > attrs.len() {
                return Err(malformed());
            }
            let data = &attrs[4..len];
            match kind {
                RTA_OIF if data.len() == 4 => {
                    out.ifindex = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                }
                RTA_GATEWAY => out.gateway = ip_from(data),
                RTA_PREFSRC => out.prefsrc = ip_from(data),
                _ => {}
            }
            attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
        }
        Ok(Some(out))
    }
}

fn ip_from(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            data[0], data[1], data[2], data[3],
        ))),
        16 => <[u8; 16]>::try_from(data)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
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
