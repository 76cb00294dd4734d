//! A plain Rust model of the kernel programs, written for clarity rather than speed: linear
//! scans over routes instead of tries, full checksum recomputation instead of incremental
//! updates, the [`Policy`] itself instead of compiled map entries. Tests run the same packets
//! through both and require the same verdict, reason, connection and output bytes.
//!
//! Covered hooks: the uplink egress classifier (Ethernet) and the uplink XDP guard, and of
//! the TUN device's ingress the ICMP errors about datagrams that went out translated. The
//! model keeps the state those hooks keep: the peers of our own sockets, the verdict of each
//! fragmented datagram's first fragment, which its later fragments follow, and the flows
//! the source NAT recorded.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tunnel_common::{OWN_SOCKET_MARK, Reason, VerdictKind};

use super::policy::{ConnId, ConnPolicy, Policy};

/// What the model says happens to a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    pub conn: Option<ConnId>,
    /// For egress TUNNEL: the packet as it enters the TUN device (with its link header).
    pub rewritten: Option<Vec<u8>>,
    /// For egress TUNNEL: the TUN device it is redirected to.
    pub redirect_ifindex: Option<u32>,
}

/// The model's state: peers our own sockets sent to (lock-down lets their replies in), and
/// what the first fragment of each fragmented datagram got on egress.
#[derive(Clone, Debug, Default)]
pub struct Model {
    own_peers: HashSet<IpAddr>,
    first_fragments: HashMap<Datagram, FirstFragment>,
    followed: usize,
    /// (connection, protocol, remote, remote port, local port) to the original source.
    flows: HashMap<(ConnId, u8, IpAddr, u16, u16), IpAddr>,
}

/// What a first fragment got, and the tunnel address it was translated to.
#[derive(Clone, Debug)]
struct FirstFragment {
    out: Outcome,
    tunnel_src: Option<IpAddr>,
}

/// A fragmented datagram's identity: source, destination, identification and, for IPv4,
/// protocol (IPv6 names none: its first fragment may carry extension headers the later
/// ones do not).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Datagram {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    proto: Option<u8>,
}

impl Datagram {
    fn of(p: &Parsed) -> Datagram {
        Datagram {
            src: p.src,
            dst: p.dst,
            id: p.frag_id,
            proto: (!p.v6).then_some(p.proto),
        }
    }
}

/// Where a packet's socket sits: its cgroup id and its ancestors, deepest first.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub mark: u32,
    pub cgroups: Vec<u64>,
}

/// Whether the transport header was read (the kernel's `packet::Transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Read,
    InFirstFragment,
    Unreadable,
}

/// Where a packet stands in its datagram (the kernel's `packet::Frag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    Whole,
    First,
    Middle,
    Last,
}

impl Frag {
    fn of(offset_nonzero: bool, more: bool) -> Frag {
        match (offset_nonzero, more) {
            (false, false) => Frag::Whole,
            (false, true) => Frag::First,
            (true, true) => Frag::Middle,
            (true, false) => Frag::Last,
        }
    }

    fn is_later(self) -> bool {
        matches!(self, Frag::Middle | Frag::Last)
    }
}

struct Parsed {
    l3: usize,
    l4: usize,
    v6: bool,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    transport: Transport,
    frag: Frag,
    frag_id: u32,
    syn: bool,
    icmp_type: u8,
}

impl Parsed {
    fn has_l4(&self) -> bool {
        self.transport == Transport::Read
    }

    /// UDP, or an IPv6 later fragment whose fragment header names another extension header.
    fn may_be_udp(&self) -> bool {
        self.proto == UDP || (self.v6 && is_ext_header(self.proto))
    }
}

enum Parse {
    Ip(Parsed),
    NotIp,
    Malformed,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
/// The kernel follows at most this many IPv6 extension headers...
const MAX_EXT_HEADERS: usize = 6;
/// ...and reads no header that starts past this offset into the frame.
const MAX_HEADER_OFF: usize = 256;

fn is_ext_header(proto: u8) -> bool {
    matches!(proto, 0 | 43 | 44 | 51 | 60)
}

fn parse_frame(frame: &[u8]) -> Parse {
    if frame.len() < 14 {
        return Parse::Malformed;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => parse_v4(frame, 14),
        0x86dd => parse_v6(frame, 14),
        _ => Parse::NotIp,
    }
}

fn parse_v4(f: &[u8], l3: usize) -> Parse {
    let Some(h) = f.get(l3..l3 + 20) else {
        return Parse::Malformed;
    };
    let ihl = usize::from(h[0] & 0xf) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Parse::Malformed;
    }
    let flags = u16::from_be_bytes([h[6], h[7]]);
    let frag = Frag::of(flags & 0x1fff != 0, flags & 0x2000 != 0);
    let mut p = Parsed {
        l3,
        l4: l3 + ihl,
        v6: false,
        proto: h[9],
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        sport: 0,
        dport: 0,
        transport: Transport::InFirstFragment,
        frag,
        frag_id: u32::from(u16::from_be_bytes([h[4], h[5]])),
        syn: false,
        icmp_type: 0,
    };
    if !frag.is_later() {
        p.transport = parse_l4(f, &mut p);
    }
    Parse::Ip(p)
}

fn parse_v6(f: &[u8], l3: usize) -> Parse {
    let Some(h) = f.get(l3..l3 + 40) else {
        return Parse::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parse::Malformed;
    }
    let addr = |at: usize| {
        IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&h[at..at + 16]).unwrap_or_default(),
        ))
    };
    let mut p = Parsed {
        l3,
        l4: l3 + 40,
        v6: true,
        proto: h[6],
        src: addr(8),
        dst: addr(24),
        sport: 0,
        dport: 0,
        transport: Transport::Unreadable,
        frag: Frag::Whole,
        frag_id: 0,
        syn: false,
        icmp_type: 0,
    };
    let mut next = h[6];
    let mut off = l3 + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            0 | 43 | 60 | 51 => {
                let Some(x) = f.get(off..off + 2) else {
                    return Parse::Ip(p);
                };
                let len = if next == 51 {
                    (usize::from(x[1]) + 2) * 4
                } else {
                    (usize::from(x[1]) + 1) * 8
                };
                next = x[0];
                off += len;
            }
            44 => {
                let Some(x) = f.get(off..off + 8) else {
                    return Parse::Ip(p);
                };
                let field = u16::from_be_bytes([x[2], x[3]]);
                next = x[0];
                off += 8;
                p.frag_id = u32::from_be_bytes([x[4], x[5], x[6], x[7]]);
                p.frag = Frag::of(field & 0xfff8 != 0, field & 1 != 0);
                if p.frag.is_later() {
                    p.proto = next;
                    p.l4 = off;
                    p.transport = Transport::InFirstFragment;
                    return Parse::Ip(p);
                }
            }
            _ => break,
        }
        if off > MAX_HEADER_OFF {
            return Parse::Ip(p);
        }
    }
    if is_ext_header(next) {
        return Parse::Ip(p);
    }
    p.proto = next;
    p.l4 = off;
    p.transport = parse_l4(f, &mut p);
    Parse::Ip(p)
}

fn parse_l4(f: &[u8], p: &mut Parsed) -> Transport {
    let need = match p.proto {
        TCP => 20,
        UDP => 8,
        ICMP if !p.v6 => 8,
        ICMPV6 if p.v6 => 8,
        _ => return Transport::Read,
    };
    if p.l4 > MAX_HEADER_OFF {
        return Transport::Unreadable;
    }
    let Some(h) = f.get(p.l4..p.l4 + need) else {
        return Transport::Unreadable;
    };
    match p.proto {
        TCP | UDP => {
            p.sport = u16::from_be_bytes([h[0], h[1]]);
            p.dport = u16::from_be_bytes([h[2], h[3]]);
            p.syn = p.proto == TCP && h[13] & 0x02 != 0;
        }
        _ => {
            p.icmp_type = h[0];
            let id = u16::from_be_bytes([h[4], h[5]]);
            match (p.v6, h[0]) {
                (false, 8) | (true, 128) => p.sport = id,
                (false, 0) | (true, 129) => p.dport = id,
                _ => {}
            }
        }
    }
    Transport::Read
}

/// The far end, its port and our port, whichever way the packet goes.
struct Oriented {
    remote: IpAddr,
    remote_port: u16,
    local_port: u16,
}

fn link_control(p: &Parsed, o: &Oriented) -> bool {
    if !p.has_l4() {
        return false;
    }
    if p.proto == UDP {
        return matches!((o.remote_port, o.local_port), (67, 68) | (547, 546));
    }
    if !p.v6 || p.proto != ICMPV6 {
        return false;
    }
    // Neighbour discovery, and multicast listener messages to a link-scope group.
    let link_scope = matches!(p.dst, IpAddr::V6(a) if a.segments()[0] & 0xff0f == 0xff02);
    (133..=137).contains(&p.icmp_type) || (link_scope && matches!(p.icmp_type, 130..=132 | 143))
}

fn family_matches(net: &ipnet::IpNet, addr: &IpAddr) -> bool {
    net.contains(addr)
}

/// The decision, before lock-down.
fn decide<'a>(
    policy: &'a Policy,
    p: &Parsed,
    o: &Oriented,
    mark: u32,
    cgroups: Option<&[u64]>,
) -> (Reason, Option<&'a ConnPolicy>) {
    if mark == OWN_SOCKET_MARK {
        return (Reason::BypassOwnSocket, None);
    }
    if link_control(p, o) {
        return (Reason::BypassLinkControl, None);
    }
    if policy.gateways.iter().any(|g| same_addr(g, &o.remote)) {
        return (Reason::BypassGateway, None);
    }
    let app = cgroups.and_then(|ids| {
        ids.iter().find_map(|id| {
            policy
                .apps
                .iter()
                .find(|a| a.cgroup_id == *id)
                .map(|a| a.conn)
        })
    });
    let exception = policy
        .exceptions
        .iter()
        .any(|n| family_matches(n, &o.remote));
    let none = if exception {
        Reason::BypassExcluded
    } else {
        Reason::BypassNoConnection
    };
    let Some(id) = app.or(policy.device_conn) else {
        return (none, None);
    };
    let Some(conn) = policy.conns.iter().find(|c| c.id == id) else {
        return (none, None);
    };
    let has_family = if p.v6 {
        conn.tun_v6.is_some()
    } else {
        conn.tun_v4.is_some()
    };
    let excluded = exception || conn.exclude.iter().any(|n| family_matches(n, &o.remote));
    if !has_family {
        if conn.drop_missing_family && !excluded {
            return (Reason::DropNoFamily, Some(conn));
        }
        return (Reason::BypassNoFamily, Some(conn));
    }
    if excluded {
        return (Reason::BypassExcluded, Some(conn));
    }
    if !conn
        .effective_include()
        .iter()
        .any(|n| family_matches(n, &o.remote))
    {
        return (Reason::BypassNotIncluded, Some(conn));
    }
    match p.transport {
        Transport::Read => {
            if p.proto == UDP
                && let Some(ports) = &conn.udp_ports
                && !ports.contains(o.remote_port)
            {
                return (Reason::BypassUdpPort, Some(conn));
            }
        }
        // Only the ports in the first fragment could tell: never in clear.
        Transport::InFirstFragment => {
            if conn.udp_ports.is_some() && p.may_be_udp() {
                return (Reason::DropFragment, Some(conn));
            }
        }
        // Included, but neither translatable nor checkable against the port list.
        Transport::Unreadable => return (Reason::DropUnparsed, Some(conn)),
    }
    (Reason::Tunnel, Some(conn))
}

fn same_addr(a: &IpAddr, b: &IpAddr) -> bool {
    super::compile::addr16(*a) == super::compile::addr16(*b)
}

fn with_lockdown(policy: &Policy, reason: Reason) -> Reason {
    if policy.lockdown && reason.blocked_by_lockdown() {
        Reason::DropLockdown
    } else {
        reason
    }
}

/// Whether any policy is in force (the kernel's `SlotConfig::enforces`).
fn enforces(policy: &Policy) -> bool {
    policy.lockdown || policy.device_conn.is_some() || !policy.apps.is_empty()
}

impl Model {
    /// A new policy is in force: no later fragment follows a verdict given under the old
    /// one (the data path retires them with the old slot).
    pub fn policy_applied(&mut self) {
        self.first_fragments.clear();
    }

    /// How many later fragments so far found their first fragment's verdict.
    pub fn fragments_followed(&self) -> usize {
        self.followed
    }

    /// The uplink TC egress classifier on an Ethernet frame.
    pub fn uplink_egress(&mut self, policy: &Policy, frame: &[u8], origin: &Origin) -> Outcome {
        let p = match parse_frame(frame) {
            Parse::Ip(p) => p,
            Parse::NotIp => return outcome(Reason::BypassNotIp, None),
            Parse::Malformed if enforces(policy) => return outcome(Reason::DropUnparsed, None),
            Parse::Malformed => return outcome(Reason::Malformed, None),
        };
        if origin.mark == OWN_SOCKET_MARK {
            self.own_peers.insert(p.dst);
            return outcome(Reason::BypassOwnSocket, None);
        }
        if p.frag.is_later()
            && let Some(first) = self.first_fragments.get(&Datagram::of(&p)).cloned()
        {
            if p.frag == Frag::Last {
                self.first_fragments.remove(&Datagram::of(&p));
            }
            self.followed += 1;
            return follow(frame, &p, first);
        }
        let o = Oriented {
            remote: p.dst,
            remote_port: p.dport,
            local_port: p.sport,
        };
        let cgroups = (!policy.apps.is_empty()).then_some(origin.cgroups.as_slice());
        let (reason, conn) = decide(policy, &p, &o, origin.mark, cgroups);
        let reason = with_lockdown(policy, reason);
        let mut out = outcome(reason, conn.map(|c| c.id));
        let mut tunnel_src = None;
        if let (Reason::Tunnel, Some(conn)) = (reason, conn) {
            let src = tunnel_addr(&p, conn);
            if p.has_l4() && !same_addr(&src, &p.src) {
                self.flows
                    .insert((conn.id, p.proto, p.dst, p.dport, p.sport), p.src);
            }
            out.rewritten = Some(translate(frame, &p, src, conn.mtu));
            out.redirect_ifindex = Some(conn.tun_ifindex);
            tunnel_src = Some(src);
        }
        if p.frag == Frag::First {
            let first = FirstFragment {
                out: out.clone(),
                tunnel_src,
            };
            self.first_fragments.insert(Datagram::of(&p), first);
        }
        out
    }

    /// The uplink XDP guard on an Ethernet frame.
    pub fn uplink_xdp(&self, policy: &Policy, frame: &[u8]) -> Outcome {
        let lockdown = policy.lockdown;
        let anti_spoof = policy.device_conn.is_some();
        if !lockdown && !anti_spoof {
            // Not guarded: passes uncounted.
            return outcome(Reason::IngressPass, None);
        }
        let p = match parse_frame(frame) {
            Parse::Ip(p) => p,
            Parse::NotIp => return outcome(Reason::BypassNotIp, None),
            Parse::Malformed => return outcome(Reason::DropUnparsed, None),
        };
        if self.own_peers.contains(&p.src) {
            return outcome(Reason::BypassOwnSocket, None);
        }
        let o = Oriented {
            remote: p.src,
            remote_port: p.sport,
            local_port: p.dport,
        };
        let (reason, conn) = decide(policy, &p, &o, 0, None);
        let reason = with_lockdown(policy, reason);
        let conn = conn.map(|c| c.id);
        let reason = match reason.verdict() {
            VerdictKind::Tunnel => Reason::DropSpoofed,
            // Reassembly needs the first fragment, which was judged with its ports.
            VerdictKind::Drop if reason == Reason::DropFragment && !lockdown => Reason::IngressPass,
            VerdictKind::Drop => reason,
            VerdictKind::Bypass => match reason {
                Reason::BypassGateway | Reason::BypassLinkControl => reason,
                _ => Reason::IngressPass,
            },
        };
        outcome(reason, conn)
    }
}

impl Model {
    /// The TUN device's ingress on an ICMP or ICMPv6 error (an Ethernet frame, as the tests
    /// build them) that arrives on connection `conn`'s device: when it quotes a datagram
    /// this model translated, the error as the socket that sent the datagram must see it
    /// (the error's destination and the quote's source back to the original address, every
    /// checksum valid). None for anything else.
    pub fn tun_ingress_icmp_error(
        &self,
        policy: &Policy,
        conn: ConnId,
        frame: &[u8],
    ) -> Option<Vec<u8>> {
        let Parse::Ip(p) = parse_frame(frame) else {
            return None;
        };
        let c = policy.conns.iter().find(|c| c.id == conn)?;
        let tun = tunnel_addr(&p, c);
        let error = match (p.v6, p.proto) {
            (false, ICMP) => matches!(p.icmp_type, 3 | 11 | 12),
            (true, ICMPV6) => (1..=4).contains(&p.icmp_type),
            _ => false,
        };
        if !p.has_l4() || p.frag != Frag::Whole || !error || !same_addr(&p.dst, &tun) {
            return None;
        }
        let q = p.l4 + 8;
        let (proto, src, dst, l4) = if p.v6 {
            let h = frame.get(q..q + 40)?;
            let addr = |at: usize| {
                <[u8; 16]>::try_from(&h[at..at + 16])
                    .ok()
                    .map(Ipv6Addr::from)
            };
            if h[0] >> 4 != 6 {
                return None;
            }
            (h[6], IpAddr::V6(addr(8)?), IpAddr::V6(addr(24)?), q + 40)
        } else {
            let h = frame.get(q..q + 20)?;
            let ihl = usize::from(h[0] & 0xf) * 4;
            let offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            if h[0] >> 4 != 4 || ihl < 20 || offset != 0 {
                return None;
            }
            let a = |at: usize| IpAddr::V4(Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]));
            (h[9], a(12), a(16), q + ihl)
        };
        let t = frame.get(l4..l4 + 8)?;
        let (sport, dport, csum_at) = match proto {
            TCP => (
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
                Some(l4 + 16),
            ),
            UDP => (
                u16::from_be_bytes([t[0], t[1]]),
                u16::from_be_bytes([t[2], t[3]]),
                (p.v6 || t[6..8] != [0, 0]).then_some(l4 + 6),
            ),
            ICMP if !p.v6 && t[0] == 8 => (u16::from_be_bytes([t[4], t[5]]), 0, None),
            ICMPV6 if p.v6 && t[0] == 128 => (u16::from_be_bytes([t[4], t[5]]), 0, Some(l4 + 2)),
            _ => return None,
        };
        if !same_addr(&src, &tun) {
            return None;
        }
        let local = *self.flows.get(&(conn, proto, dst, dport, sport))?;
        let mut f = frame.to_vec();
        let put = |f: &mut Vec<u8>, at: usize, a: IpAddr| match a {
            IpAddr::V4(a) => f[at..at + 4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => f[at..at + 16].copy_from_slice(&a.octets()),
        };
        put(&mut f, p.l3 + if p.v6 { 24 } else { 16 }, local);
        put(&mut f, q + if p.v6 { 8 } else { 12 }, local);
        if !p.v6 {
            fix_ipv4_header_checksum(&mut f, p.l3);
            fix_ipv4_header_checksum(&mut f, q);
        }
        // The quote is cut short, so its transport checksum cannot be summed afresh: it is
        // adjusted for the source address alone (RFC 1624, eqn. 3).
        if let Some(at) = csum_at.filter(|at| at + 2 <= f.len()) {
            let old = u16::from_be_bytes([f[at], f[at + 1]]);
            let mut acc = u32::from(!old);
            acc = ones_sum(acc, &super::compile::addr16(src).map(|b| !b));
            acc = ones_sum(acc, &super::compile::addr16(local));
            let mut new = fold(acc);
            if proto == UDP && new == 0 {
                new = 0xffff;
            }
            f[at..at + 2].copy_from_slice(&new.to_be_bytes());
        }
        finish_checksums(&mut f);
        Some(f)
    }
}

/// A later fragment gets what its first fragment got: the same counter cell and action, and
/// the same source address in the tunnel.
fn follow(frame: &[u8], p: &Parsed, first: FirstFragment) -> Outcome {
    let mut out = outcome(first.out.reason, first.out.conn);
    if let Some(src) = first.tunnel_src {
        // No transport header, so no MSS to clamp.
        out.rewritten = Some(translate(frame, p, src, 0));
        out.redirect_ifindex = first.out.redirect_ifindex;
    }
    out
}

fn outcome(reason: Reason, conn: Option<ConnId>) -> Outcome {
    Outcome {
        reason,
        conn,
        rewritten: None,
        redirect_ifindex: None,
    }
}

/// The connection's tunnel address of the packet's family.
fn tunnel_addr(p: &Parsed, conn: &ConnPolicy) -> IpAddr {
    if p.v6 {
        IpAddr::V6(conn.tun_v6.unwrap_or(Ipv6Addr::UNSPECIFIED))
    } else {
        IpAddr::V4(conn.tun_v4.unwrap_or(Ipv4Addr::UNSPECIFIED))
    }
}

/// The frame with its source replaced by `new_src`, the MSS clamped to `mtu`, and every
/// checksum recomputed from scratch (a later fragment has only the IPv4 header's).
fn translate(frame: &[u8], p: &Parsed, new_src: IpAddr, mtu: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let src_changed = !same_addr(&new_src, &p.src);
    match new_src {
        IpAddr::V4(a) => f[p.l3 + 12..p.l3 + 16].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => f[p.l3 + 8..p.l3 + 24].copy_from_slice(&a.octets()),
    }
    let mut mss_changed = false;
    if p.proto == TCP && p.syn && p.has_l4() {
        mss_changed = clamp_mss(&mut f, p, u32::from(mtu));
    }
    if !src_changed && !mss_changed {
        return frame.to_vec();
    }
    if !p.v6 {
        fix_ipv4_header_checksum(&mut f, p.l3);
    }
    if p.has_l4() {
        fix_l4_checksum(&mut f, p, src_changed);
    }
    f
}

/// Lowers the MSS option of a SYN to `mtu` minus headers; examines at most 8 options, as the
/// kernel does. Returns whether the option changed.
fn clamp_mss(f: &mut [u8], p: &Parsed, mtu: u32) -> bool {
    let headers = if p.v6 { 60 } else { 40 };
    if mtu <= headers {
        return false;
    }
    let max = (mtu - headers).min(65535) as u16;
    let doff = usize::from(f[p.l4 + 12] >> 4) * 4;
    let opt_len = doff.saturating_sub(20).min(40);
    let avail = f.len().saturating_sub(p.l4 + 20);
    if opt_len < 4 || avail < opt_len {
        return false;
    }
    let base = p.l4 + 20;
    let mut i = 0;
    for _ in 0..8 {
        if i + 1 >= opt_len {
            break;
        }
        match f[base + i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(f[base + i + 1]);
                if len < 2 {
                    break;
                }
                if kind == 2 && len == 4 {
                    if i + 4 > opt_len {
                        break;
                    }
                    let mss = u16::from_be_bytes([f[base + i + 2], f[base + i + 3]]);
                    if mss > max {
                        f[base + i + 2..base + i + 4].copy_from_slice(&max.to_be_bytes());
                        return true;
                    }
                    return false;
                }
                i += len;
            }
        }
    }
    false
}

/// One's-complement sum of `data` as 16-bit big-endian words.
pub fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits and complements it.
pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn fix_ipv4_header_checksum(f: &mut [u8], l3: usize) {
    let ihl = usize::from(f[l3] & 0xf) * 4;
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let c = fold(ones_sum(0, &f[l3..l3 + ihl]));
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// The pseudo-header sum for a transport segment of `len` bytes.
pub fn pseudo_header_sum(src: &IpAddr, dst: &IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = ones_sum(acc, &s.octets());
            acc = ones_sum(acc, &d.octets());
            acc += u32::from(proto) + len as u32;
        }
        (s, d) => {
            acc = ones_sum(acc, &super::compile::addr16(*s));
            acc = ones_sum(acc, &super::compile::addr16(*d));
            acc += len as u32 + u32::from(proto);
        }
    }
    acc
}

/// The segment's addresses and transport bytes as they are in `f` now.
fn segment(f: &[u8], p: &Parsed) -> (IpAddr, IpAddr, usize) {
    if p.v6 {
        let s = <[u8; 16]>::try_from(&f[p.l3 + 8..p.l3 + 24]).unwrap_or_default();
        let d = <[u8; 16]>::try_from(&f[p.l3 + 24..p.l3 + 40]).unwrap_or_default();
        let payload = usize::from(u16::from_be_bytes([f[p.l3 + 4], f[p.l3 + 5]]));
        let end = (p.l3 + 40 + payload).min(f.len());
        (IpAddr::V6(s.into()), IpAddr::V6(d.into()), end)
    } else {
        let s = <[u8; 4]>::try_from(&f[p.l3 + 12..p.l3 + 16]).unwrap_or_default();
        let d = <[u8; 4]>::try_from(&f[p.l3 + 16..p.l3 + 20]).unwrap_or_default();
        let total = usize::from(u16::from_be_bytes([f[p.l3 + 2], f[p.l3 + 3]]));
        let end = (p.l3 + total).min(f.len());
        (IpAddr::V4(s.into()), IpAddr::V4(d.into()), end)
    }
}

fn fix_l4_checksum(f: &mut [u8], p: &Parsed, src_changed: bool) {
    let (csum_at, pseudo) = match p.proto {
        TCP => (p.l4 + 16, true),
        UDP => (p.l4 + 6, true),
        ICMPV6 if p.v6 => (p.l4 + 2, true),
        _ => return,
    };
    // An IPv4 UDP datagram without checksum keeps none.
    if p.proto == UDP && !p.v6 && f[csum_at] == 0 && f[csum_at + 1] == 0 {
        return;
    }
    if !src_changed && p.proto != TCP {
        return;
    }
    let (src, dst, end) = segment(f, p);
    f[csum_at] = 0;
    f[csum_at + 1] = 0;
    let seg = &f[p.l4..end];
    let acc = if pseudo {
        pseudo_header_sum(&src, &dst, p.proto, seg.len())
    } else {
        0
    };
    let mut c = fold(ones_sum(acc, seg));
    if p.proto == UDP && c == 0 {
        c = 0xffff;
    }
    f[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether the IPv4 header checksum (if IPv4) and the transport checksum of a frame verify.
/// Used to check kernel output independently of how the checksum was computed.
pub fn checksums_valid(frame: &[u8]) -> bool {
    let Parse::Ip(p) = parse_frame(frame) else {
        return false;
    };
    if !p.v6 {
        let ihl = usize::from(frame[p.l3] & 0xf) * 4;
        if fold(ones_sum(0, &frame[p.l3..p.l3 + ihl])) != 0 {
            return false;
        }
    }
    if !p.has_l4() {
        return true;
    }
    let csum_at = match p.proto {
        TCP => p.l4 + 16,
        UDP => p.l4 + 6,
        ICMPV6 if p.v6 => p.l4 + 2,
        ICMP if !p.v6 => p.l4 + 2,
        _ => return true,
    };
    if p.proto == UDP && !p.v6 && frame[csum_at] == 0 && frame[csum_at + 1] == 0 {
        return true;
    }
    let (src, dst, end) = segment(frame, &p);
    let seg = &frame[p.l4..end];
    let acc = if p.proto == ICMP {
        0
    } else {
        pseudo_header_sum(&src, &dst, p.proto, seg.len())
    };
    fold(ones_sum(acc, seg)) == 0
}

/// Fills in correct checksums for a frame built by a test (IPv4 header and transport).
pub fn finish_checksums(frame: &mut [u8]) {
    let Parse::Ip(p) = parse_frame(frame) else {
        return;
    };
    if !p.v6 {
        fix_ipv4_header_checksum(frame, p.l3);
    }
    if !p.has_l4() {
        return;
    }
    let csum_at = match p.proto {
        TCP => p.l4 + 16,
        UDP => p.l4 + 6,
        ICMPV6 if p.v6 => p.l4 + 2,
        ICMP if !p.v6 => p.l4 + 2,
        _ => return,
    };
    if frame.len() < csum_at + 2 {
        return;
    }
    let (src, dst, end) = segment(frame, &p);
    frame[csum_at] = 0;
    frame[csum_at + 1] = 0;
    let seg = &frame[p.l4..end];
    let acc = if p.proto == ICMP {
        0
    } else {
        pseudo_header_sum(&src, &dst, p.proto, seg.len())
    };
    let mut c = fold(ones_sum(acc, seg));
    if p.proto == UDP && c == 0 {
        c = 0xffff;
    }
    frame[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Offsets of the checksum fields in a frame that a translation rewrites: the IPv4 header's,
/// and the transport header's where it was read (not IPv4 UDP's zero, "no checksum"). Used
/// to compare kernel and model output apart from how each computed its checksums.
pub fn checksum_fields(frame: &[u8]) -> Vec<usize> {
    let Parse::Ip(p) = parse_frame(frame) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !p.v6 {
        out.push(p.l3 + 10);
    }
    if p.has_l4() {
        let at = match p.proto {
            TCP => Some(p.l4 + 16),
            UDP => Some(p.l4 + 6),
            ICMPV6 if p.v6 => Some(p.l4 + 2),
            _ => None,
        };
        if let Some(at) = at
            && at + 2 <= frame.len()
            && !(p.proto == UDP && !p.v6 && frame[at..at + 2] == [0, 0])
        {
            out.push(at);
        }
    }
    out
}
