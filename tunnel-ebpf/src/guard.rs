//! The uplink guard: lock-down enforcement and anti-spoofing for packets arriving from
//! outside. A packet is classified as the reply it is, i.e. as if we were sending to its
//! source: if that reply would be tunnelled, the packet claims a source the tunnel owns and
//! is dropped; if lock-down would drop the reply, the packet is dropped too.
//!
//! What cannot be parsed is dropped whenever a guard is on: without addresses nothing can be
//! told; with addresses but no readable transport header from a source the tunnel owns, it
//! could be spoofed. Later fragments are judged by their addresses; where only the ports
//! could tell (a UDP port list), they pass unless lock-down is on: the stack reassembles a
//! datagram only with its first fragment, which was judged with its ports.
//!
//! One decision, two hooks: XDP on uplinks whose driver runs XDP on its own receive buffers
//! (drops before any skb exists), TC ingress elsewhere (veth and drivers without native XDP,
//! where an XDP program costs a copy of every packet and the peer's GSO). Userspace picks the
//! hook per uplink (`datapath::GuardHook`).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::generated::bpf_xdp_get_buff_len,
    programs::{TcContext, XdpContext},
};
use tunnel_common::{CONN_NONE, Reason, VerdictKind, slot_flags};

use crate::{
    classify::{Owner, View, active_slot, classify},
    counters::{At, count},
    maps::OWN_PEERS,
    packet::{Parsed, parse_eth},
    tc::{Link, parse, uplink},
};

/// Whether a packet of `len` bytes (the whole packet, all buffers or segments) arriving on
/// uplink `at` may pass; `parsed` is only computed when a guard is on.
#[inline(always)]
fn may_pass(at: At, len: u32, parsed: impl FnOnce() -> Parsed) -> bool {
    let Some((slot, scfg)) = active_slot() else {
        return true;
    };
    let guarded = scfg.flags & (slot_flags::LOCKDOWN | slot_flags::ANTI_SPOOF) != 0;
    if !guarded {
        return true;
    }
    let pkt = match parsed() {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp => {
            count(at, None, CONN_NONE, Reason::BypassNotIp, len);
            return true;
        }
        Parsed::Malformed => {
            count(at, None, CONN_NONE, Reason::DropUnparsed, len);
            return false;
        }
    };
    // SAFETY: presence test only.
    if unsafe { OWN_PEERS.get(pkt.src) }.is_some() {
        count(at, Some(&pkt), CONN_NONE, Reason::BypassOwnSocket, len);
        return true;
    }
    let view = View::inbound(&pkt);
    let mut d = classify(&view, slot, scfg, 0, Owner::Device);
    let pass = match d.reason.verdict() {
        VerdictKind::Tunnel if scfg.flags & slot_flags::ANTI_SPOOF != 0 => {
            d.reason = Reason::DropSpoofed;
            false
        }
        VerdictKind::Drop
            if d.reason == Reason::DropFragment && scfg.flags & slot_flags::LOCKDOWN == 0 =>
        {
            d.reason = Reason::IngressPass;
            true
        }
        VerdictKind::Drop => false,
        _ => {
            d.reason = match d.reason {
                Reason::BypassGateway | Reason::BypassLinkControl => d.reason,
                _ => Reason::IngressPass,
            };
            true
        }
    };
    count(at, Some(&pkt), d.conn, d.reason, len);
    pass
}

/// XDP on an Ethernet uplink.
#[inline(always)]
pub fn try_uplink_xdp(ctx: &XdpContext) -> u32 {
    // The whole packet, all buffers of a multi-buffer one.
    // SAFETY: the helper only reads the context it is given.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as u32;
    // SAFETY: reading a field of the program's context.
    let at = At::Uplink(unsafe { (*ctx.ctx).ingress_ifindex });
    if may_pass(at, len, || parse_eth(ctx.data(), ctx.data_end())) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// TC ingress on an uplink. A GSO packet (one the sender's stack or GRO built) is one flow,
/// so its first header decides for every segment in it.
#[inline(always)]
pub fn try_uplink_ingress(ctx: &TcContext, link: Link) -> i32 {
    if may_pass(uplink(ctx), ctx.len(), || parse(ctx, link)) {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}
