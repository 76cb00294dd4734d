//! The ABI shared by tunnel's kernel programs and its userspace: the one source of truth for
//! map names, map key and value layouts, verdict reasons and counter indexes.
//!
//! Every struct here is `#[repr(C)]`, holds no `bool`, and has no implicit padding (explicit
//! `_pad` fields where alignment would insert some); a `const` assertion pins each size, because
//! aya checks key and value sizes at load time and one definition must serve both sides.
//! Addresses are kept as they appear in a packet (network byte order) in `u32` words: an IPv4
//! address is one word, an IPv6 address four, and IPv4 in a 16-byte slot is `::ffff:a.b.c.d`
//! ([`mapped_v4`]). Words rather than byte arrays let the kernel side move an address with one
//! load and one store per word instead of one per byte. Userspace converts with
//! `u32::from_ne_bytes(octets)`.
//!
//! # Policy slots
//!
//! Everything that makes up a policy is stored twice, once per *slot*, and the slot a packet is
//! classified with is read once per packet from [`maps::ACTIVE_SLOT`]. Userspace writes a new
//! policy into the inactive slot, flips [`maps::ACTIVE_SLOT`], waits for an RCU grace period
//! (so no program still runs with the old slot) and only then clears the old slot. A packet
//! therefore always sees one complete policy, never half of each.
#![cfg_attr(not(test), no_std)]

/// Connections that can be up at once (one per-app and one device-level is the common case).
pub const MAX_CONNS: u32 = 16;
/// Counter row (and `device_conn` value) meaning "no connection".
pub const CONN_NONE: u32 = MAX_CONNS;
/// Number of policy copies (see the crate docs).
pub const POLICY_SLOTS: u32 = 2;
/// Deepest cgroup level the per-app lookup walks (0 is the root).
pub const MAX_CGROUP_LEVEL: u32 = 8;
/// `u64` words per connection in the UDP port bitmap (65,536 ports / 64).
pub const UDP_PORT_WORDS: u32 = 1024;
/// Capacity of each route trie; a trie holds both slots of every connection.
pub const MAX_ROUTES: u32 = 1 << 20;
/// Capacity of the NAT flow table (LRU).
pub const MAX_FLOWS: u32 = 65_536;
/// Capacity of the table of peers our own sockets talk to (LRU).
pub const MAX_OWN_PEERS: u32 = 4096;
/// Gateway addresses a policy may hold.
pub const MAX_GATEWAYS: u32 = 128;
/// Capacity of the per-app table (both slots).
pub const MAX_APPS: u32 = 4096;
/// Capacity of the table of fragmented datagrams in flight (LRU). The fragments of one
/// datagram pass a hook back to back, so an entry is needed for microseconds; the capacity
/// covers many interleaved datagrams of forwarded traffic.
pub const MAX_FRAG_DATAGRAMS: u32 = 4096;

/// `SO_MARK` carried by tunnel's own sockets (control TLS, ESP): such packets always bypass.
/// The value spells "tunl" so it is recognisable in `ss -e` and nft traces.
pub const OWN_SOCKET_MARK: u32 = 0x7475_6e6c;
/// `skb->mark` the uplink classifier sets on a packet it redirects into a TUN device, with
/// the connection in the low four bits ([`redirected_mark`]), so the TUN device's egress
/// program knows the packet was already classified and translated, and for which
/// connection, without a map lookup.
pub const REDIRECTED_MARK: u32 = 0x7475_6e70;

/// The mark of a packet redirected into connection `conn`'s TUN device.
pub const fn redirected_mark(conn: u32) -> u32 {
    REDIRECTED_MARK | (conn & 0xf)
}

/// The connection a redirected packet's mark names, or None for any other mark.
pub const fn redirected_conn(mark: u32) -> Option<u32> {
    if mark & !0xf == REDIRECTED_MARK {
        Some(mark & 0xf)
    } else {
        None
    }
}

/// Names of the maps in the eBPF object.
pub mod maps {
    /// `Array<u32>`, one entry: the slot packets are classified with.
    pub const ACTIVE_SLOT: &str = "ACTIVE_SLOT";
    /// `Array<SlotConfig>`, one entry per slot.
    pub const SLOT_CONFIG: &str = "SLOT_CONFIG";
    /// `Array<ConnConfig>`, index [`super::conn_index`].
    pub const CONN_CONFIG: &str = "CONN_CONFIG";
    /// `LpmTrie<RouteKeyV4, u32>` with [`super::route`] values.
    pub const ROUTES_V4: &str = "ROUTES_V4";
    /// `LpmTrie<RouteKeyV6, u32>` with [`super::route`] values.
    pub const ROUTES_V6: &str = "ROUTES_V6";
    /// `HashMap<AppKey, u32>`: cgroup v2 id to connection index.
    pub const APPS: &str = "APPS";
    /// `Array<u64>`: UDP destination-port bitmap, index [`super::udp_port_word`].
    pub const UDP_PORTS: &str = "UDP_PORTS";
    /// `HashMap<u32, u32>`: TUN device ifindex to connection index.
    pub const TUN_IFACES: &str = "TUN_IFACES";
    /// `LruHashMap<FlowKey, FlowValue>`: the NAT flow table.
    pub const FLOWS: &str = "FLOWS";
    /// `LruHashMap<[u32; 4], u64>`: remote peers of our own sockets (lock-down lets them in).
    pub const OWN_PEERS: &str = "OWN_PEERS";
    /// `LruHashMap<FragKey, FragVerdict>`: the verdict of each fragmented datagram's first
    /// fragment, which its later fragments follow.
    pub const FRAGS: &str = "FRAGS";
    /// `PerCpuArray<Counter>`, index [`super::counter_index`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuHashMap<u32, UplinkCounters>`: uplink ifindex to that uplink's counters.
    /// Userspace inserts an uplink's row before attaching to it and removes it after
    /// detaching; the programs only add to rows that exist.
    pub const UPLINK_COUNTERS: &str = "UPLINK_COUNTERS";
    /// `Array<PortalException>`, one entry: the captive portal exception (none when its
    /// cgroup is 0).
    pub const PORTAL: &str = "PORTAL";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// TC egress on an Ethernet uplink: the classifier.
    pub const UPLINK_EGRESS_ETH: &str = "tunnel_uplink_egress_eth";
    /// TC egress on a raw-IP uplink (no link-layer header): the classifier.
    pub const UPLINK_EGRESS_IP: &str = "tunnel_uplink_egress_ip";
    /// TC egress on a TUN device: policy for packets the routing table sent there directly.
    pub const TUN_EGRESS: &str = "tunnel_tun_egress";
    /// TC ingress on a TUN device: reverse NAT from the flow table.
    pub const TUN_INGRESS: &str = "tunnel_tun_ingress";
    /// XDP on an Ethernet uplink: the guard (lock-down and anti-spoofing).
    pub const UPLINK_XDP: &str = "tunnel_uplink_xdp";
    /// TC ingress on an Ethernet uplink: the same guard where XDP would cost a copy.
    pub const UPLINK_INGRESS_ETH: &str = "tunnel_uplink_ingress_eth";
    /// TC ingress on a raw-IP uplink: the guard.
    pub const UPLINK_INGRESS_IP: &str = "tunnel_uplink_ingress_ip";
    /// A classifier that only returns "continue": the benchmark baseline.
    pub const NOOP_TC: &str = "tunnel_noop_tc";
    /// An XDP program that only returns "pass": the benchmark baseline.
    pub const NOOP_XDP: &str = "tunnel_noop_xdp";
}

/// Values stored in the route tries. Userspace merges the include and exclude routes of a
/// connection and the gateway addresses into one trie such that the longest match gives the
/// right answer: an include prefix that lies inside an exclude prefix is not inserted, an
/// exclude equal to an include replaces it, and gateways are host routes that replace anything
/// equal. So "gateway, then exclude, then include" holds with a single lookup.
pub mod route {
    /// The destination is tunnelled (subject to the UDP port list).
    pub const INCLUDE: u32 = 1;
    /// The destination is never tunnelled.
    pub const EXCLUDE: u32 = 2;
    /// A gateway address: always bypasses, even under lock-down.
    pub const GATEWAY: u32 = 3;
}

/// Route-trie namespace holding only the gateway addresses, for packets that belong to no
/// connection (lock-down must still let them reach the gateway).
pub const ROUTES_GLOBAL: u32 = MAX_CONNS;

/// `::ffff:a.b.c.d` for an IPv4 address word.
#[inline(always)]
pub const fn mapped_v4(addr: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr]
}

/// Bits of [`SlotConfig::flags`].
pub mod slot_flags {
    /// "VPN only access": traffic that would bypass for any reason other than an explicit
    /// exclude route, the gateway, our own sockets or link control is dropped.
    pub const LOCKDOWN: u32 = 1 << 0;
    /// At least one per-app rule exists; without it the cgroup walk is skipped.
    pub const HAS_APPS: u32 = 1 << 1;
    /// Anti-spoofing on the uplinks is on (a device-level connection is up).
    pub const ANTI_SPOOF: u32 = 1 << 2;
}

/// Bits of [`ConnConfig::flags`].
pub mod conn_flags {
    /// The entry describes a live connection.
    pub const ACTIVE: u32 = 1 << 0;
    /// The connection has an IPv4 tunnel address.
    pub const HAS_V4: u32 = 1 << 1;
    /// The connection has an IPv6 tunnel address.
    pub const HAS_V6: u32 = 1 << 2;
    /// A UDP port list is configured: only UDP to listed ports is tunnelled.
    pub const UDP_PORTS_LISTED: u32 = 1 << 3;
    /// A packet of a family the connection has no tunnel address for is dropped
    /// ([`super::Reason::DropNoFamily`]) instead of bypassing, unless an exclude route or
    /// a gateway address covers it: a full tunnel that got no IPv6 address from its gateway
    /// must not send IPv6 around it.
    pub const DROP_NO_FAMILY: u32 = 1 << 4;
}

/// Why a packet got its verdict; also the column of the counter table. The order is ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Sent into the connection's TUN device.
    Tunnel = 0,
    /// Destination is in an exclude route.
    BypassExcluded = 1,
    /// Destination matches no include route.
    BypassNotIncluded = 2,
    /// UDP to a port outside the connection's port list.
    BypassUdpPort = 3,
    /// Sent by one of tunnel's own sockets (socket mark).
    BypassOwnSocket = 4,
    /// To or from a gateway address.
    BypassGateway = 5,
    /// No connection applies to this packet (no per-app rule, no device-level connection).
    BypassNoConnection = 6,
    /// The connection has no tunnel address of this IP family.
    BypassNoFamily = 7,
    /// Not IPv4 or IPv6 (ARP, LLDP...).
    BypassNotIp = 8,
    /// DHCP, DHCPv6 or neighbour discovery: allowed through lock-down.
    BypassLinkControl = 9,
    /// Dropped by lock-down ("VPN only access").
    DropLockdown = 10,
    /// Arrived on an uplink with a source the tunnel owns (anti-spoofing).
    DropSpoofed = 11,
    /// Routed straight into a TUN device but may not be tunnelled, and has no other route.
    DropUnroutable = 12,
    /// A reply from the TUN device whose destination was restored from the flow table.
    ReplyRestored = 13,
    /// A packet from the TUN device with no flow entry: delivered unchanged.
    ReplyNoFlow = 14,
    /// Arrived on an uplink and allowed in (XDP).
    IngressPass = 15,
    /// Already classified on the uplink, seen again on the TUN device's egress.
    RedirectSeen = 16,
    /// Headers could not be parsed where no policy is in force (no connection, no
    /// lock-down), or a reply on a TUN device's ingress that could not be parsed: passed
    /// unchanged.
    Malformed = 17,
    /// Headers the policy needs could not be read (no addresses; or a truncated transport
    /// header, an IPv6 extension chain too long or too deep) where the policy could have
    /// tunnelled or dropped the packet: dropped, never sent in clear.
    DropUnparsed = 18,
    /// A later fragment whose first fragment was not seen, where only the ports (in the first
    /// fragment) could tell whether it is tunnelled: dropped, never sent in clear.
    DropFragment = 19,
    /// The connection has no tunnel address of this IP family and drops that family
    /// ([`conn_flags::DROP_NO_FAMILY`]).
    DropNoFamily = 20,
    /// From the captive portal's cgroup to port 53, 80 or 443 while the portal exception
    /// lasts ([`PortalException`]): out on the uplink, whatever the policy says.
    BypassPortal = 21,
}

/// Number of [`Reason`] values (columns of the counter table).
pub const NUM_REASONS: u32 = 22;

impl Reason {
    /// Every reason, in ABI order.
    pub const ALL: [Reason; NUM_REASONS as usize] = [
        Reason::Tunnel,
        Reason::BypassExcluded,
        Reason::BypassNotIncluded,
        Reason::BypassUdpPort,
        Reason::BypassOwnSocket,
        Reason::BypassGateway,
        Reason::BypassNoConnection,
        Reason::BypassNoFamily,
        Reason::BypassNotIp,
        Reason::BypassLinkControl,
        Reason::DropLockdown,
        Reason::DropSpoofed,
        Reason::DropUnroutable,
        Reason::ReplyRestored,
        Reason::ReplyNoFlow,
        Reason::IngressPass,
        Reason::RedirectSeen,
        Reason::Malformed,
        Reason::DropUnparsed,
        Reason::DropFragment,
        Reason::DropNoFamily,
        Reason::BypassPortal,
    ];

    /// The reason with ABI number `n`. A `match` rather than an index into [`Reason::ALL`]:
    /// it compiles to a range check, where an index into a table is a load the verifier
    /// cannot bound.
    pub const fn from_u32(n: u32) -> Option<Reason> {
        Some(match n {
            0 => Reason::Tunnel,
            1 => Reason::BypassExcluded,
            2 => Reason::BypassNotIncluded,
            3 => Reason::BypassUdpPort,
            4 => Reason::BypassOwnSocket,
            5 => Reason::BypassGateway,
            6 => Reason::BypassNoConnection,
            7 => Reason::BypassNoFamily,
            8 => Reason::BypassNotIp,
            9 => Reason::BypassLinkControl,
            10 => Reason::DropLockdown,
            11 => Reason::DropSpoofed,
            12 => Reason::DropUnroutable,
            13 => Reason::ReplyRestored,
            14 => Reason::ReplyNoFlow,
            15 => Reason::IngressPass,
            16 => Reason::RedirectSeen,
            17 => Reason::Malformed,
            18 => Reason::DropUnparsed,
            19 => Reason::DropFragment,
            20 => Reason::DropNoFamily,
            21 => Reason::BypassPortal,
            _ => return None,
        })
    }

    /// A short stable name, used in counters output and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Tunnel => "tunnel",
            Reason::BypassExcluded => "bypass_excluded",
            Reason::BypassNotIncluded => "bypass_not_included",
            Reason::BypassUdpPort => "bypass_udp_port",
            Reason::BypassOwnSocket => "bypass_own_socket",
            Reason::BypassGateway => "bypass_gateway",
            Reason::BypassNoConnection => "bypass_no_connection",
            Reason::BypassNoFamily => "bypass_no_family",
            Reason::BypassNotIp => "bypass_not_ip",
            Reason::BypassLinkControl => "bypass_link_control",
            Reason::DropLockdown => "drop_lockdown",
            Reason::DropSpoofed => "drop_spoofed",
            Reason::DropUnroutable => "drop_unroutable",
            Reason::ReplyRestored => "reply_restored",
            Reason::ReplyNoFlow => "reply_no_flow",
            Reason::IngressPass => "ingress_pass",
            Reason::RedirectSeen => "redirect_seen",
            Reason::Malformed => "malformed",
            Reason::DropUnparsed => "drop_unparsed",
            Reason::DropFragment => "drop_fragment",
            Reason::DropNoFamily => "drop_no_family",
            Reason::BypassPortal => "bypass_portal",
        }
    }

    /// The coarse verdict this reason stands for.
    pub const fn verdict(self) -> VerdictKind {
        match self {
            Reason::Tunnel => VerdictKind::Tunnel,
            Reason::DropLockdown
            | Reason::DropSpoofed
            | Reason::DropUnroutable
            | Reason::DropUnparsed
            | Reason::DropFragment
            | Reason::DropNoFamily => VerdictKind::Drop,
            _ => VerdictKind::Bypass,
        }
    }

    /// Whether lock-down turns this bypass into a drop. Explicit exclude routes, the gateway,
    /// our own sockets, link control and non-IP frames stay allowed so the machine can reach
    /// the gateway and keep its link up.
    pub const fn blocked_by_lockdown(self) -> bool {
        matches!(
            self,
            Reason::BypassNotIncluded
                | Reason::BypassUdpPort
                | Reason::BypassNoConnection
                | Reason::BypassNoFamily
        )
    }
}

/// The three things that can happen to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerdictKind {
    /// Into a connection's TUN device.
    Tunnel,
    /// Continues untouched.
    Bypass,
    /// Dropped.
    Drop,
}

/// The captive portal exception: packets from sockets in the cgroup `cgroup_id` (a browser
/// `tunnel portal` started) to TCP or UDP port 53, 80 or 443 leave on the uplink whatever the
/// policy (lock-down included) says, until `deadline_ns` (`bpf_ktime_get_ns`, the monotonic
/// clock); their peers' replies are let in. `cgroup_id` 0: no exception.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortalException {
    pub cgroup_id: u64,
    pub deadline_ns: u64,
}

/// Per-slot settings. `flags` holds [`slot_flags`]; `device_conn` is the device-level
/// connection index or [`CONN_NONE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotConfig {
    pub flags: u32,
    pub device_conn: u32,
}

impl SlotConfig {
    /// Whether any policy is in force: lock-down, a device-level connection or a per-app
    /// rule. Without one every packet bypasses, so one whose headers cannot be read may too.
    /// (An empty slot holds `device_conn` 0 with an inactive connection, so the flags decide,
    /// not `device_conn`.)
    pub const fn enforces(&self) -> bool {
        self.flags & (slot_flags::LOCKDOWN | slot_flags::HAS_APPS | slot_flags::ANTI_SPOOF) != 0
    }
}

/// Per-connection settings in one slot. `flags` holds [`conn_flags`]; `mtu` is the tunnel MTU
/// (TCP MSS is clamped to it); addresses are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnConfig {
    pub flags: u32,
    pub tun_ifindex: u32,
    pub mtu: u32,
    pub tun_v4: u32,
    pub tun_v6: [u32; 4],
}

/// IPv4 route-trie key data. The LPM prefix length counts `slot`, `conn` and the (zero)
/// padding too, so a route `a.b.c.d/n` is stored with prefix length `32 + n`. `conn` may be
/// [`ROUTES_GLOBAL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKeyV4 {
    pub slot: u8,
    pub conn: u8,
    pub _pad: [u8; 2],
    pub addr: u32,
}

/// IPv6 route-trie key data; see [`RouteKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKeyV6 {
    pub slot: u8,
    pub conn: u8,
    pub _pad: [u8; 2],
    pub addr: [u32; 4],
}

/// Bits of the route-trie prefix length taken by `slot`, `conn` and the padding.
pub const ROUTE_KEY_PREFIX_BITS: u32 = 32;

/// Per-app key: a cgroup v2 id (the cgroup directory's inode number) in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppKey {
    pub cgroup_id: u64,
    pub slot: u32,
    pub _pad: u32,
}

/// NAT flow key, as seen from a reply arriving on the TUN device: `remote` is the far end,
/// ports are in network byte order (ICMP echo uses the identifier as `local_port` and 0 as
/// `remote_port`). IPv4 addresses are stored as `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub conn: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    pub remote_port: u16,
    pub local_port: u16,
    pub remote: [u32; 4],
}

/// NAT flow value: the original local (pre-translation) source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub local: [u32; 4],
}

/// Which way a fragmented datagram passes the hook that keys it: the same addresses are
/// a different datagram in the other direction.
pub mod frag_dir {
    /// Leaving: the uplink classifier and the TUN device's egress.
    pub const OUT: u8 = 0;
    /// Arriving from the tunnel: the TUN device's ingress.
    pub const IN: u8 = 1;
}

/// Identity of a fragmented datagram, as its fragments carry it: source, destination,
/// identification and, for IPv4, the protocol (RFC 791; IPv6 names no protocol in the
/// identity, RFC 8200, and its first fragment may carry extension headers the later ones
/// do not, so `proto` is 0), plus the family (`v6` 0 or 1), the direction ([`frag_dir`])
/// and the policy slot the first fragment was judged under: a later fragment follows its
/// first only under the same policy (userspace removes a slot's entries once it is
/// retired). IPv4 addresses are `::ffff:a.b.c.d` and its 16-bit identification is widened.
/// Source and destination are as the packet arrives at the hook, before any translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub proto: u8,
    pub v6: u8,
    pub dir: u8,
    pub slot: u8,
    pub id: u32,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// What the first fragment of a datagram got, for its later fragments to repeat: its
/// counter cell ([`counter_index`], which names the connection and the [`Reason`]), the
/// device it went to (the TUN device when tunnelled, else the hook's own) and its address
/// after translation (the source on egress, the destination on a TUN device's ingress; the
/// packet's own where nothing was translated).
///
/// Every field is written from a run-time value: constant neighbours would let LLVM merge
/// their stores into one misaligned stack store, which the verifier refuses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragVerdict {
    pub cell: u32,
    pub ifindex: u32,
    pub addr: [u32; 4],
}

/// One counter cell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::AddAssign for Counter {
    /// Sums cells, for one: the per-CPU copies of a cell.
    fn add_assign(&mut self, other: Counter) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Uplinks whose counters are kept at once ([`maps::UPLINK_COUNTERS`]).
pub const MAX_UPLINKS: u32 = 64;

/// One uplink's counters: a cell per [`Reason`] (index `reason as usize`), every connection
/// together. Counted by the uplink programs (classifier and guard) in addition to
/// [`maps::COUNTERS`], keyed by the ifindex the packet is on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    pub cells: [Counter; NUM_REASONS as usize],
}

/// Index of a connection's entry in [`maps::CONN_CONFIG`].
#[inline(always)]
pub const fn conn_index(slot: u32, conn: u32) -> u32 {
    slot * MAX_CONNS + conn
}

/// Index of the bitmap word holding `port` (host order) for a connection.
#[inline(always)]
pub const fn udp_port_word(slot: u32, conn: u32, port: u16) -> u32 {
    (slot * MAX_CONNS + conn) * UDP_PORT_WORDS + (port as u32 >> 6)
}

/// Index of a counter cell; `conn` may be [`CONN_NONE`].
#[inline(always)]
pub const fn counter_index(conn: u32, reason: Reason) -> u32 {
    conn * NUM_REASONS + reason as u32
}

/// The connection (or [`CONN_NONE`]) and reason of a counter cell.
#[inline(always)]
pub const fn counter_cell(index: u32) -> (u32, Option<Reason>) {
    (index / NUM_REASONS, Reason::from_u32(index % NUM_REASONS))
}

/// Number of cells in [`maps::COUNTERS`].
pub const NUM_COUNTERS: u32 = (MAX_CONNS + 1) * NUM_REASONS;
/// Number of words in [`maps::UDP_PORTS`].
pub const NUM_UDP_PORT_WORDS: u32 = POLICY_SLOTS * MAX_CONNS * UDP_PORT_WORDS;
/// Number of entries in [`maps::CONN_CONFIG`].
pub const NUM_CONN_CONFIGS: u32 = POLICY_SLOTS * MAX_CONNS;

const _: () = {
    // A connection index fits the four bits the redirect mark has for it.
    assert!(MAX_CONNS <= 16);
    assert!(
        matches!(redirected_conn(redirected_mark(MAX_CONNS - 1)), Some(c) if c == MAX_CONNS - 1)
    );
    assert!(redirected_conn(OWN_SOCKET_MARK).is_none());
    assert!(core::mem::size_of::<SlotConfig>() == 8);
    assert!(core::mem::size_of::<ConnConfig>() == 32);
    assert!(core::mem::size_of::<RouteKeyV4>() == 8);
    assert!(core::mem::size_of::<RouteKeyV6>() == 20);
    assert!(core::mem::size_of::<AppKey>() == 16);
    assert!(core::mem::size_of::<FlowKey>() == 24);
    assert!(core::mem::size_of::<FlowValue>() == 16);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<UplinkCounters>() == 16 * NUM_REASONS as usize);
    assert!(core::mem::size_of::<FragKey>() == 40);
    assert!(core::mem::size_of::<FragVerdict>() == 24);
    assert!(Reason::ALL.len() == NUM_REASONS as usize);
    // ROUTES_GLOBAL must fit the `conn` byte of the route keys.
    assert!(MAX_CONNS < u8::MAX as u32);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and has
    // no padding (the size assertions above pin that), so any bit pattern is a valid value.
    unsafe impl aya::Pod for SlotConfig {}
    unsafe impl aya::Pod for PortalException {}
    unsafe impl aya::Pod for ConnConfig {}
    unsafe impl aya::Pod for RouteKeyV4 {}
    unsafe impl aya::Pod for RouteKeyV6 {}
    unsafe impl aya::Pod for AppKey {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for UplinkCounters {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragVerdict {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_marks_name_their_connection_and_nothing_else() {
        for conn in 0..MAX_CONNS {
            assert_eq!(redirected_conn(redirected_mark(conn)), Some(conn));
        }
        for other in [
            0,
            OWN_SOCKET_MARK,
            REDIRECTED_MARK - 1,
            REDIRECTED_MARK + 16,
        ] {
            assert_eq!(redirected_conn(other), None, "{other:#x}");
        }
    }

    #[test]
    fn reasons_are_in_abi_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of place");
            assert_eq!(Reason::from_u32(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_u32(NUM_REASONS), None);
    }

    #[test]
    fn counter_cells_name_their_connection_and_reason() {
        for conn in 0..=CONN_NONE {
            for reason in Reason::ALL {
                assert_eq!(
                    counter_cell(counter_index(conn, reason)),
                    (conn, Some(reason))
                );
            }
        }
    }

    #[test]
    fn indexes_stay_in_bounds() {
        assert!(counter_index(CONN_NONE, Reason::BypassPortal) < NUM_COUNTERS);
        assert!(udp_port_word(POLICY_SLOTS - 1, MAX_CONNS - 1, u16::MAX) < NUM_UDP_PORT_WORDS);
        assert!(conn_index(POLICY_SLOTS - 1, MAX_CONNS - 1) < NUM_CONN_CONFIGS);
    }
}
