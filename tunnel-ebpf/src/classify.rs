//! The decision: which connection (if any) a packet belongs to and what happens to it. Reads the
//! policy maps of one slot; never touches the packet. The order of checks is the product's
//! decision order (DESIGN.md): own sockets, link control, per-app before device-level, then one
//! route lookup that answers gateway before exclude before include, then the UDP port list, and
//! lock-down last. A packet of a family the connection has no address for bypasses, or is
//! dropped where the connection says so (`DROP_NO_FAMILY`: a full tunnel without that family).
//!
//! A packet whose transport header is missing (a later fragment) or unreadable is decided by
//! its addresses wherever they suffice. Where the destination is included and the ports are
//! needed, it is never bypassed: an unreadable one is dropped ([`Reason::DropUnparsed`]: it
//! cannot be translated either), a later fragment is dropped when the UDP port list would
//! decide ([`Reason::DropFragment`]) and tunnelled otherwise. Later fragments whose first
//! fragment was seen follow its verdict before they get here (`frags`).

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    maps::lpm_trie::Key,
};
use tunnel_common::{
    AppKey, CONN_NONE, ConnConfig, MAX_CGROUP_LEVEL, MAX_CONNS, OWN_SOCKET_MARK,
    ROUTE_KEY_PREFIX_BITS, ROUTES_GLOBAL, Reason, RouteKeyV4, RouteKeyV6, SlotConfig, conn_flags,
    conn_index, route, slot_flags, udp_port_word,
};

use crate::{
    maps::{ACTIVE_SLOT, APPS, CONN_CONFIG, ROUTES_V4, ROUTES_V6, SLOT_CONFIG, UDP_PORTS},
    packet::{IPPROTO_ICMPV6, IPPROTO_UDP, Packet, Transport},
};

/// The policy slot in force for this packet, read once.
#[inline(always)]
pub fn active_slot() -> Option<(u32, &'static SlotConfig)> {
    let slot = *ACTIVE_SLOT.get(0)? & 1;
    Some((slot, SLOT_CONFIG.get(slot)?))
}

/// A packet seen from our side: `remote` is the far end whichever way the packet travels.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub pkt: &'a Packet,
    pub remote: &'a [u32; 4],
    pub remote_port: u16,
    pub local_port: u16,
}

impl<'a> View<'a> {
    /// A packet we send.
    #[inline(always)]
    pub fn outbound(pkt: &'a Packet) -> Self {
        View {
            pkt,
            remote: &pkt.dst,
            remote_port: pkt.dport,
            local_port: pkt.sport,
        }
    }

    /// A packet we receive.
    #[inline(always)]
    pub fn inbound(pkt: &'a Packet) -> Self {
        View {
            pkt,
            remote: &pkt.src,
            remote_port: pkt.sport,
            local_port: pkt.dport,
        }
    }
}

/// The outcome of classification. `cfg` is set whenever `conn` is a real connection.
#[derive(Clone, Copy)]
pub struct Decision {
    pub conn: u32,
    pub reason: Reason,
    pub cfg: Option<&'static ConnConfig>,
}

impl Decision {
    #[inline(always)]
    const fn none(reason: Reason) -> Self {
        Decision {
            conn: CONN_NONE,
            reason,
            cfg: None,
        }
    }
}

/// Where the connection for a packet comes from.
#[derive(Clone, Copy)]
pub enum Owner {
    /// The socket's cgroup (per-app rules), falling back to the device-level connection.
    Socket(*mut __sk_buff),
    /// No socket to ask (XDP): the device-level connection.
    Device,
}

/// Classifies a packet with the policy of `slot`.
#[inline(always)]
pub fn classify(view: &View, slot: u32, scfg: &SlotConfig, mark: u32, owner: Owner) -> Decision {
    let mut d = decide(view, slot, scfg, mark, owner);
    if scfg.flags & slot_flags::LOCKDOWN != 0 && d.reason.blocked_by_lockdown() {
        d.reason = Reason::DropLockdown;
    }
    d
}

#[inline(always)]
fn decide(view: &View, slot: u32, scfg: &SlotConfig, mark: u32, owner: Owner) -> Decision {
    if mark == OWN_SOCKET_MARK {
        return Decision::none(Reason::BypassOwnSocket);
    }
    if is_link_control(view) {
        return Decision::none(Reason::BypassLinkControl);
    }
    let pkt = view.pkt;
    let app = match owner {
        Owner::Socket(skb) if scfg.flags & slot_flags::HAS_APPS != 0 => app_conn(skb, slot),
        _ => None,
    };
    let conn = app.unwrap_or(scfg.device_conn);
    let cfg = if conn < MAX_CONNS {
        CONN_CONFIG.get(conn_index(slot, conn))
    } else {
        None
    };
    let Some(cfg) = cfg.filter(|c| c.flags & conn_flags::ACTIVE != 0) else {
        // No connection: only the gateways and the lock-down exceptions (their own trie
        // namespace) matter.
        return match lookup_route(slot, ROUTES_GLOBAL, pkt.v6, view.remote) {
            route::GATEWAY => Decision::none(Reason::BypassGateway),
            route::EXCLUDE => Decision::none(Reason::BypassExcluded),
            _ => Decision::none(Reason::BypassNoConnection),
        };
    };
    let with = |reason| Decision {
        conn,
        reason,
        cfg: Some(cfg),
    };
    let found = lookup_route(slot, conn, pkt.v6, view.remote);
    if found == route::GATEWAY {
        return Decision::none(Reason::BypassGateway);
    }
    let family = if pkt.v6 {
        conn_flags::HAS_V6
    } else {
        conn_flags::HAS_V4
    };
    if cfg.flags & family == 0 {
        // A family the tunnel cannot carry: around it, unless the connection drops that
        // family (full tunnel); an explicit exclude stays open either way.
        if cfg.flags & conn_flags::DROP_NO_FAMILY != 0 && found != route::EXCLUDE {
            return with(Reason::DropNoFamily);
        }
        return with(Reason::BypassNoFamily);
    }
    match found {
        route::EXCLUDE => return with(Reason::BypassExcluded),
        route::INCLUDE => {}
        _ => return with(Reason::BypassNotIncluded),
    }
    let ports_listed = cfg.flags & conn_flags::UDP_PORTS_LISTED != 0;
    match pkt.transport {
        Transport::Read => {
            if ports_listed
                && pkt.proto == IPPROTO_UDP
                && !udp_port_listed(slot, conn, view.remote_port)
            {
                return with(Reason::BypassUdpPort);
            }
        }
        Transport::InFirstFragment => {
            if ports_listed && pkt.may_be_udp() {
                return with(Reason::DropFragment);
            }
        }
        Transport::Unreadable => return with(Reason::DropUnparsed),
    }
    with(Reason::Tunnel)
}

/// DHCP, DHCPv6 and IPv6 neighbour discovery: what a link needs to stay up. `remote_port` and
/// `local_port` are oriented, so one test serves both directions.
#[inline(always)]
fn is_link_control(view: &View) -> bool {
    let pkt = view.pkt;
    if !pkt.has_l4() {
        return false;
    }
    if pkt.proto == IPPROTO_UDP {
        return matches!((view.remote_port, view.local_port), (67, 68) | (547, 546));
    }
    if !pkt.v6 || pkt.proto != IPPROTO_ICMPV6 {
        return false;
    }
    // Neighbour discovery; and multicast listener reports to a link-scope group, which no
    // router forwards (switches that snoop them stop delivering neighbour solicitations to
    // a host whose reports are dropped).
    let link_scope = u32::from_be(pkt.dst[0]) >> 16 & 0xff0f == 0xff02;
    (133..=137).contains(&pkt.icmp_type) || (link_scope && matches!(pkt.icmp_type, 130..=132 | 143))
}

/// The connection of the deepest cgroup (the socket's own, then its ancestors) with a rule.
#[inline(always)]
fn app_conn(skb: *mut __sk_buff, slot: u32) -> Option<u32> {
    // SAFETY: `skb` is the program's context pointer.
    let id = unsafe { bpf_skb_cgroup_id(skb) };
    if id == 0 {
        return None;
    }
    if let Some(conn) = app_rule(id, slot) {
        return Some(conn);
    }
    let mut level = MAX_CGROUP_LEVEL;
    while level > 0 {
        level -= 1;
        // SAFETY: `skb` is the program's context pointer.
        let ancestor = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if ancestor == 0 || ancestor == id {
            continue;
        }
        if let Some(conn) = app_rule(ancestor, slot) {
            return Some(conn);
        }
    }
    None
}

#[inline(always)]
fn app_rule(cgroup_id: u64, slot: u32) -> Option<u32> {
    let key = AppKey {
        cgroup_id,
        slot,
        _pad: 0,
    };
    // SAFETY: entries are plain u32s written whole by userspace.
    unsafe { APPS.get(key).copied() }
}

/// What [`lookup_route`] answers where no route matches.
const NO_ROUTE: u32 = 0;

/// The [`route`] kind of the longest match, or [`NO_ROUTE`]. A plain number rather than an
/// `Option`: LLVM may read the value of a `None` (an undefined register) and discard it,
/// a read the verifier refuses.
#[inline(always)]
fn lookup_route(slot: u32, conn: u32, v6: bool, addr: &[u32; 4]) -> u32 {
    let (slot, conn) = (slot as u8, conn as u8);
    if v6 {
        let data = RouteKeyV6 {
            slot,
            conn,
            _pad: [0; 2],
            addr: *addr,
        };
        ROUTES_V6
            .get(Key::new(ROUTE_KEY_PREFIX_BITS + 128, data))
            .map_or(NO_ROUTE, |kind| *kind)
    } else {
        let data = RouteKeyV4 {
            slot,
            conn,
            _pad: [0; 2],
            addr: addr[3],
        };
        ROUTES_V4
            .get(Key::new(ROUTE_KEY_PREFIX_BITS + 32, data))
            .map_or(NO_ROUTE, |kind| *kind)
    }
}

#[inline(always)]
fn udp_port_listed(slot: u32, conn: u32, port: u16) -> bool {
    match UDP_PORTS.get(udp_port_word(slot, conn, port)) {
        Some(word) => word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}
