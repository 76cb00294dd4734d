//! The TC programs: the uplink egress classifier, and the TUN device's egress guard and ingress
//! reverse NAT. Each `try_*` function parses, asks [`crate::classify`] (or, for a later
//! fragment, [`crate::frags`] what its first fragment got), counts, and acts.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_cgroup_id},
    programs::TcContext,
};
use tunnel_common::{
    CONN_NONE, ConnConfig, FragVerdict, OWN_SOCKET_MARK, Reason, SlotConfig, VerdictKind,
    conn_flags, conn_index, counter_cell, counter_index, frag_dir, mapped_v4, redirected_conn,
    redirected_mark,
};

use crate::{
    classify::{Decision, Owner, View, active_slot, classify},
    counters::{At, count},
    frags::{first_verdict, record},
    maps::{CONN_CONFIG, OWN_PEERS, PORTAL, TUN_IFACES},
    nat::{
        Field, RewriteFailed, clamp_mss, quoted_destination, record_flow, reply_destination,
        rewrite_addr, translate_quoted,
    },
    packet::{
        Frag, IPPROTO_TCP, IPPROTO_UDP, Packet, Parsed, Transport, parse_eth, parse_raw_ip,
        quoted_datagram,
    },
};

/// How many bytes of headers must be in the linear part of the skb for direct access: link
/// header, IPv6 header, extension headers, TCP header with options.
const HEADROOM_NEEDED: u32 = 14 + 40 + 64 + 60;

/// The link layer in front of the IP header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    RawIp,
}

#[inline(always)]
pub fn parse(ctx: &TcContext, link: Link) -> Parsed {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let want = HEADROOM_NEEDED.min(ctx.len());
    if linear < want {
        // Headers split across fragments: make them linear. On failure parsing reports them
        // as truncated.
        let _ = ctx.pull_data(want);
    }
    match link {
        Link::Ethernet => parse_eth(ctx.data(), ctx.data_end()),
        Link::RawIp => parse_raw_ip(ctx.data(), ctx.data_end()),
    }
}

#[inline(always)]
fn skb_ptr(ctx: &TcContext) -> *mut aya_ebpf::bindings::__sk_buff {
    ctx.skb.skb
}

#[inline(always)]
fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's context.
    unsafe { (*ctx.skb.skb).mark }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's context.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn tunnel_addr(pkt: &Packet, cfg: &ConnConfig) -> [u32; 4] {
    if pkt.v6 {
        cfg.tun_v6
    } else {
        mapped_v4(cfg.tun_v4)
    }
}

/// Source-NATs a packet to the connection's tunnel address (recording the flow of a packet
/// with a transport header) and clamps the MSS of SYNs to the tunnel MTU.
#[inline(always)]
fn translate_into_tunnel(
    ctx: &TcContext,
    pkt: &Packet,
    d: &Decision,
    cfg: &ConnConfig,
) -> Result<(), RewriteFailed> {
    let tun = tunnel_addr(pkt, cfg);
    if pkt.src != tun {
        if pkt.has_l4() {
            record_flow(d.conn, pkt);
        }
        rewrite_addr(ctx, pkt, Field::Src, &tun)?;
    }
    clamp_mss(ctx, pkt, cfg.mtu)
}

/// A packet whose addresses cannot be read: dropped where a policy is in force (it could
/// have been one to tunnel or to drop), passed where none is.
#[inline(always)]
fn unparsed(ctx: &TcContext, scfg: Option<&SlotConfig>) -> i32 {
    if scfg.is_none_or(SlotConfig::enforces) {
        count(
            uplink(ctx),
            None,
            CONN_NONE,
            Reason::DropUnparsed,
            ctx.len(),
        );
        TC_ACT_SHOT
    } else {
        count(uplink(ctx), None, CONN_NONE, Reason::Malformed, ctx.len());
        TC_ACT_OK
    }
}

/// The two egress hooks, which differ in what "into the tunnel" means for them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Egress {
    /// An uplink: tunnelled packets are redirected into the connection's TUN device.
    Uplink,
    /// A TUN device: a packet for this device's connection continues here, one for another
    /// connection is redirected.
    Tun,
}

impl Egress {
    /// Where its verdicts are counted.
    #[inline(always)]
    fn at(self, ctx: &TcContext) -> At {
        match self {
            Egress::Uplink => uplink(ctx),
            Egress::Tun => At::Tun,
        }
    }
}

/// The uplink a packet on an uplink hook is on, for its counters.
#[inline(always)]
pub fn uplink(ctx: &TcContext) -> At {
    At::Uplink(ifindex(ctx))
}

/// Sends a translated packet to connection `conn`'s TUN device `tun_ifindex`.
#[inline(always)]
fn into_tunnel(ctx: &TcContext, egress: Egress, conn: u32, tun_ifindex: u32) -> i32 {
    if egress == Egress::Tun && tun_ifindex == ifindex(ctx) {
        return TC_ACT_OK;
    }
    ctx.set_mark(redirected_mark(conn));
    // SAFETY: plain helper call with an ifindex from our own config.
    unsafe { bpf_redirect(tun_ifindex, 0) as i32 }
}

/// A later fragment does what its first fragment got: same counter cell, same action, the
/// same source address in the tunnel.
#[inline(always)]
fn follow_first(ctx: &TcContext, pkt: &Packet, first: &FragVerdict, egress: Egress) -> i32 {
    let (conn, Some(reason)) = counter_cell(first.cell) else {
        return TC_ACT_SHOT;
    };
    count(egress.at(ctx), Some(pkt), conn, reason, ctx.len());
    match reason.verdict() {
        VerdictKind::Tunnel => {
            if pkt.src != first.addr && rewrite_addr(ctx, pkt, Field::Src, &first.addr).is_err() {
                return TC_ACT_SHOT;
            }
            into_tunnel(ctx, egress, conn, first.ifindex)
        }
        VerdictKind::Drop => TC_ACT_SHOT,
        VerdictKind::Bypass => TC_ACT_OK,
    }
}

/// Classifies an outbound packet on `egress`, acts on the decision and, for a first
/// fragment, records what it got for the rest of its datagram. A later fragment whose first
/// was seen does what that got instead. On a TUN device a bypass becomes a drop: the packet
/// has no other route.
#[inline(always)]
fn classify_outbound(
    ctx: &TcContext,
    pkt: &Packet,
    slot: u32,
    scfg: &SlotConfig,
    egress: Egress,
) -> i32 {
    if pkt.is_later_fragment()
        && let Some(first) = first_verdict(pkt, frag_dir::OUT, slot)
    {
        return follow_first(ctx, pkt, &first, egress);
    }
    let view = View::outbound(pkt);
    let mut d = classify(&view, slot, scfg, mark(ctx), Owner::Socket(skb_ptr(ctx)));
    if egress == Egress::Tun && d.reason.verdict() == VerdictKind::Bypass {
        d.reason = Reason::DropUnroutable;
    }
    count(egress.at(ctx), Some(pkt), d.conn, d.reason, ctx.len());
    let (action, tunnelled) = match (d.reason.verdict(), d.cfg) {
        (VerdictKind::Tunnel, Some(cfg)) => {
            if translate_into_tunnel(ctx, pkt, &d, cfg).is_err() {
                return TC_ACT_SHOT;
            }
            (into_tunnel(ctx, egress, d.conn, cfg.tun_ifindex), Some(cfg))
        }
        (VerdictKind::Drop, _) | (VerdictKind::Tunnel, None) => (TC_ACT_SHOT, None),
        (VerdictKind::Bypass, _) => (TC_ACT_OK, None),
    };
    // Only a first fragment pays for the record.
    if pkt.frag == Frag::First {
        let (ifindex, addr) = match tunnelled {
            Some(cfg) => (cfg.tun_ifindex, tunnel_addr(pkt, cfg)),
            None => (ifindex(ctx), pkt.src),
        };
        let first = FragVerdict {
            cell: counter_index(d.conn, d.reason),
            ifindex,
            addr,
        };
        record(pkt, frag_dir::OUT, slot, &first);
    }
    action
}

/// TC egress on an uplink.
#[inline(always)]
pub fn try_uplink_egress(ctx: &TcContext, link: Link) -> i32 {
    let pkt = match parse(ctx, link) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp => {
            count(uplink(ctx), None, CONN_NONE, Reason::BypassNotIp, ctx.len());
            return TC_ACT_OK;
        }
        Parsed::Malformed => return unparsed(ctx, active_slot().map(|(_, s)| s)),
    };
    // Our own sockets (control TLS, ESP) bypass whatever the policy says, so they are let
    // through before any policy is read (two cold cache lines per datagram after an idle
    // spell).
    if mark(ctx) == OWN_SOCKET_MARK {
        count(
            uplink(ctx),
            Some(&pkt),
            CONN_NONE,
            Reason::BypassOwnSocket,
            ctx.len(),
        );
        remember_own_peer(&pkt.dst);
        return TC_ACT_OK;
    }
    if portal_exception(ctx, &pkt) {
        count(
            uplink(ctx),
            Some(&pkt),
            CONN_NONE,
            Reason::BypassPortal,
            ctx.len(),
        );
        remember_own_peer(&pkt.dst);
        return TC_ACT_OK;
    }
    let Some((slot, scfg)) = active_slot() else {
        return TC_ACT_OK;
    };
    classify_outbound(ctx, &pkt, slot, scfg, Egress::Uplink)
}

/// Whether the packet is under the captive portal exception: from a socket in its cgroup,
/// to TCP or UDP port 53, 80 or 443, before its deadline ([`PortalException`]). The
/// deadline is checked here, so the exception ends on time whatever userspace does.
#[inline(always)]
fn portal_exception(ctx: &TcContext, pkt: &Packet) -> bool {
    let Some(exception) = PORTAL.get(0) else {
        return false;
    };
    if exception.cgroup_id == 0 || !pkt.has_l4() {
        return false;
    }
    if !matches!(pkt.proto, IPPROTO_TCP | IPPROTO_UDP) || !matches!(pkt.dport, 53 | 80 | 443) {
        return false;
    }
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } >= exception.deadline_ns {
        return false;
    }
    // SAFETY: `skb` is the program's context pointer.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    cgroup == exception.cgroup_id
}

/// Lets replies from a peer of our own sockets in under lock-down (see the guard). A lookup
/// keeps a known peer recent in the LRU; only a new one is inserted: an insert takes a node
/// off the LRU's free list and returns the replaced one, a cost every ESP datagram would pay
/// and one of the larger parts of the uplink program's time per packet.
#[inline(always)]
fn remember_own_peer(peer: &[u32; 4]) {
    // SAFETY: presence test only.
    if unsafe { OWN_PEERS.get(*peer) }.is_none() {
        let _ = OWN_PEERS.insert(*peer, 0, 0);
    }
}

/// The connection whose TUN device this is, with its config in the active slot.
#[inline(always)]
fn tun_conn(ctx: &TcContext, slot: u32) -> Option<(u32, &'static ConnConfig)> {
    // SAFETY: values are plain u32s written whole by userspace.
    let conn = unsafe { TUN_IFACES.get(ifindex(ctx)) }.copied()?;
    let cfg = CONN_CONFIG.get(conn_index(slot, conn))?;
    if cfg.flags & conn_flags::ACTIVE == 0 {
        return None;
    }
    Some((conn, cfg))
}

/// TC egress on a TUN device. Packets the uplink classifier redirected here pass; packets the
/// routing table sent here directly are classified, and what may not be tunnelled is dropped
/// because it has no other route.
#[inline(always)]
pub fn try_tun_egress(ctx: &TcContext) -> i32 {
    // Redirected by the classifier: counted for the connection the mark names, with no
    // lookup (each costs a cold cache line on a packet after an idle spell).
    if let Some(conn) = redirected_conn(mark(ctx)) {
        count(At::Tun, None, conn, Reason::RedirectSeen, ctx.len());
        return TC_ACT_OK;
    }
    let Some((slot, scfg)) = active_slot() else {
        return TC_ACT_OK;
    };
    let pkt = match parse(ctx, Link::RawIp) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp | Parsed::Malformed => {
            let here_conn = tun_conn(ctx, slot).map_or(CONN_NONE, |(c, _)| c);
            count(At::Tun, None, here_conn, Reason::DropUnparsed, ctx.len());
            return TC_ACT_SHOT;
        }
    };
    classify_outbound(ctx, &pkt, slot, scfg, Egress::Tun)
}

/// TC ingress on a TUN device: replies get their original destination back; the later
/// fragments of a reply get the destination its first fragment got; an ICMP error about a
/// datagram that went out translated gets its quote translated back too.
#[inline(always)]
pub fn try_tun_ingress(ctx: &TcContext) -> i32 {
    let Some((slot, _)) = active_slot() else {
        return TC_ACT_OK;
    };
    let Some((conn, cfg)) = tun_conn(ctx, slot) else {
        return TC_ACT_OK;
    };
    let pkt = match parse(ctx, Link::RawIp) {
        Parsed::Ip(pkt) if pkt.transport != Transport::Unreadable => pkt,
        Parsed::Ip(_) | Parsed::NotIp | Parsed::Malformed => {
            count(At::Tun, None, conn, Reason::Malformed, ctx.len());
            return TC_ACT_OK;
        }
    };
    if pkt.is_later_fragment() {
        let Some(first) = first_verdict(&pkt, frag_dir::IN, slot) else {
            count(At::Tun, Some(&pkt), conn, Reason::ReplyNoFlow, ctx.len());
            return TC_ACT_OK;
        };
        if rewrite_addr(ctx, &pkt, Field::Dst, &first.addr).is_err() {
            return TC_ACT_SHOT;
        }
        count(At::Tun, Some(&pkt), conn, Reason::ReplyRestored, ctx.len());
        return TC_ACT_OK;
    }
    let tun = tunnel_addr(&pkt, cfg);
    // An ICMP error about a datagram we translated (fragmentation needed, unreachable...)
    // goes to the socket that sent the datagram, with the quote as that socket sent it.
    if pkt.dst == tun
        && let Some(q) = quoted_datagram(ctx.data(), ctx.data_end(), &pkt, &tun)
        && let Some(local) = quoted_destination(conn, &q)
    {
        if translate_quoted(ctx, &pkt, &q, &local).is_err() {
            return TC_ACT_SHOT;
        }
        count(At::Tun, Some(&pkt), conn, Reason::ReplyRestored, ctx.len());
        return TC_ACT_OK;
    }
    let restored = match reply_destination(conn, &pkt) {
        Some(local) if pkt.dst == tun => local,
        _ => {
            count(At::Tun, Some(&pkt), conn, Reason::ReplyNoFlow, ctx.len());
            return TC_ACT_OK;
        }
    };
    if rewrite_addr(ctx, &pkt, Field::Dst, &restored).is_err()
        || clamp_mss(ctx, &pkt, cfg.mtu).is_err()
    {
        return TC_ACT_SHOT;
    }
    if pkt.frag == Frag::First {
        let first = FragVerdict {
            cell: counter_index(conn, Reason::ReplyRestored),
            ifindex: ifindex(ctx),
            addr: restored,
        };
        record(&pkt, frag_dir::IN, slot, &first);
    }
    count(At::Tun, Some(&pkt), conn, Reason::ReplyRestored, ctx.len());
    TC_ACT_OK
}
