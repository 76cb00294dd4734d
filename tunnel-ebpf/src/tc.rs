//! The TC programs: the uplink egress classifier, and the TUN device's egress guard and ingress
//! reverse NAT. Each `try_*` function parses, asks [`crate::classify`], counts, and acts.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use tunnel_common::{
    CONN_NONE, ConnConfig, OWN_SOCKET_MARK, Reason, VerdictKind, conn_flags, conn_index, mapped_v4,
    redirected_conn, redirected_mark,
};

use crate::{
    classify::{Decision, Owner, View, active_slot, classify},
    counters::count,
    maps::{CONN_CONFIG, OWN_PEERS, TUN_IFACES},
    nat::{Field, RewriteFailed, clamp_mss, record_flow, reply_destination, rewrite_addr},
    packet::{Packet, Parsed, parse_eth, parse_raw_ip},
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

/// Source-NATs a packet to the connection's tunnel address (recording the flow) and clamps the
/// MSS of SYNs to the tunnel MTU.
#[inline(always)]
fn translate_into_tunnel(
    ctx: &TcContext,
    pkt: &Packet,
    d: &Decision,
    cfg: &ConnConfig,
) -> Result<(), RewriteFailed> {
    let tun = tunnel_addr(pkt, cfg);
    if pkt.src != tun {
        record_flow(d.conn, pkt);
        rewrite_addr(ctx, pkt, Field::Src, &tun)?;
    }
    clamp_mss(ctx, pkt, cfg.mtu)
}

/// TC egress on an uplink.
#[inline(always)]
pub fn try_uplink_egress(ctx: &TcContext, link: Link) -> i32 {
    let pkt = match parse(ctx, link) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp => {
            count(CONN_NONE, Reason::BypassNotIp, ctx.len());
            return TC_ACT_OK;
        }
        Parsed::Malformed => {
            count(CONN_NONE, Reason::Malformed, ctx.len());
            return TC_ACT_OK;
        }
    };
    // Our own sockets (control TLS, ESP) bypass whatever the policy says, so they are let
    // through before any policy is read (two cold cache lines per datagram after an idle
    // spell).
    if mark(ctx) == OWN_SOCKET_MARK {
        count(CONN_NONE, Reason::BypassOwnSocket, ctx.len());
        remember_own_peer(&pkt.dst);
        return TC_ACT_OK;
    }
    let Some((slot, scfg)) = active_slot() else {
        return TC_ACT_OK;
    };
    let view = View::outbound(&pkt);
    let d = classify(&view, slot, scfg, mark(ctx), Owner::Socket(skb_ptr(ctx)));
    count(d.conn, d.reason, ctx.len());
    match (d.reason.verdict(), d.cfg) {
        (VerdictKind::Tunnel, Some(cfg)) => {
            if translate_into_tunnel(ctx, &pkt, &d, cfg).is_err() {
                return TC_ACT_SHOT;
            }
            ctx.set_mark(redirected_mark(d.conn));
            // SAFETY: plain helper call with an ifindex from our own config.
            unsafe { bpf_redirect(cfg.tun_ifindex, 0) as i32 }
        }
        (VerdictKind::Drop, _) | (VerdictKind::Tunnel, None) => TC_ACT_SHOT,
        (VerdictKind::Bypass, _) => TC_ACT_OK,
    }
}

/// Lets replies from a peer of our own sockets in under lock-down (see the guard). A lookup
/// keeps a known peer recent in the LRU; only a new one is inserted: an insert takes a node
/// off the LRU's free list and returns the replaced one, which every ESP datagram paid for
/// (1.2 of the 7.7 us the uplink program cost per idle ping).
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
        count(conn, Reason::RedirectSeen, ctx.len());
        return TC_ACT_OK;
    }
    let Some((slot, scfg)) = active_slot() else {
        return TC_ACT_OK;
    };
    let here_conn = tun_conn(ctx, slot).map_or(CONN_NONE, |(c, _)| c);
    let pkt = match parse(ctx, Link::RawIp) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp | Parsed::Malformed => {
            count(here_conn, Reason::DropUnroutable, ctx.len());
            return TC_ACT_SHOT;
        }
    };
    let view = View::outbound(&pkt);
    let mut d = classify(&view, slot, scfg, mark(ctx), Owner::Socket(skb_ptr(ctx)));
    if d.reason.verdict() == VerdictKind::Bypass {
        d.reason = Reason::DropUnroutable;
    }
    count(d.conn, d.reason, ctx.len());
    match (d.reason.verdict(), d.cfg) {
        (VerdictKind::Tunnel, Some(cfg)) => {
            if translate_into_tunnel(ctx, &pkt, &d, cfg).is_err() {
                return TC_ACT_SHOT;
            }
            if cfg.tun_ifindex == ifindex(ctx) {
                TC_ACT_OK
            } else {
                ctx.set_mark(redirected_mark(d.conn));
                // SAFETY: plain helper call with an ifindex from our own config.
                unsafe { bpf_redirect(cfg.tun_ifindex, 0) as i32 }
            }
        }
        _ => TC_ACT_SHOT,
    }
}

/// TC ingress on a TUN device: replies get their original destination back.
#[inline(always)]
pub fn try_tun_ingress(ctx: &TcContext) -> i32 {
    let Some((slot, _)) = active_slot() else {
        return TC_ACT_OK;
    };
    let Some((conn, cfg)) = tun_conn(ctx, slot) else {
        return TC_ACT_OK;
    };
    let pkt = match parse(ctx, Link::RawIp) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp | Parsed::Malformed => {
            count(conn, Reason::Malformed, ctx.len());
            return TC_ACT_OK;
        }
    };
    let tun = tunnel_addr(&pkt, cfg);
    let restored = match reply_destination(conn, &pkt) {
        Some(local) if pkt.dst == tun => local,
        _ => {
            count(conn, Reason::ReplyNoFlow, ctx.len());
            return TC_ACT_OK;
        }
    };
    if rewrite_addr(ctx, &pkt, Field::Dst, &restored).is_err()
        || clamp_mss(ctx, &pkt, cfg.mtu).is_err()
    {
        return TC_ACT_SHOT;
    }
    count(conn, Reason::ReplyRestored, ctx.len());
    TC_ACT_OK
}
