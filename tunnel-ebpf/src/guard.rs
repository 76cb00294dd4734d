//! XDP on an uplink: lock-down enforcement and anti-spoofing for packets arriving from outside.
//! A packet is classified as the reply it is, i.e. as if we were sending to its source: if that
//! reply would be tunnelled, the packet claims a source the tunnel owns and is dropped; if
//! lock-down would drop the reply, the packet is dropped too.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext,
};
use tunnel_common::{CONN_NONE, Reason, VerdictKind, slot_flags};

use crate::{
    classify::{Owner, View, active_slot, classify},
    counters::count,
    maps::OWN_PEERS,
    packet::{Parsed, parse_eth},
};

#[inline(always)]
pub fn try_uplink_xdp(ctx: &XdpContext) -> u32 {
    // The whole packet, all buffers of a multi-buffer one.
    // SAFETY: the helper only reads the context it is given.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as u32;
    let Some((slot, scfg)) = active_slot() else {
        return xdp_action::XDP_PASS;
    };
    let guarded = scfg.flags & (slot_flags::LOCKDOWN | slot_flags::ANTI_SPOOF) != 0;
    if !guarded {
        return xdp_action::XDP_PASS;
    }
    let lockdown = scfg.flags & slot_flags::LOCKDOWN != 0;
    let pkt = match parse_eth(ctx.data(), ctx.data_end()) {
        Parsed::Ip(pkt) => pkt,
        Parsed::NotIp => {
            count(CONN_NONE, Reason::BypassNotIp, len);
            return xdp_action::XDP_PASS;
        }
        Parsed::Malformed if lockdown => {
            count(CONN_NONE, Reason::DropLockdown, len);
            return xdp_action::XDP_DROP;
        }
        Parsed::Malformed => {
            count(CONN_NONE, Reason::Malformed, len);
            return xdp_action::XDP_PASS;
        }
    };
    // SAFETY: presence test only.
    if unsafe { OWN_PEERS.get(pkt.src) }.is_some() {
        count(CONN_NONE, Reason::BypassOwnSocket, len);
        return xdp_action::XDP_PASS;
    }
    let view = View::inbound(&pkt);
    let mut d = classify(&view, slot, scfg, 0, Owner::Device);
    let verdict = match d.reason.verdict() {
        VerdictKind::Tunnel if scfg.flags & slot_flags::ANTI_SPOOF != 0 => {
            d.reason = Reason::DropSpoofed;
            xdp_action::XDP_DROP
        }
        VerdictKind::Drop => xdp_action::XDP_DROP,
        _ => {
            d.reason = match d.reason {
                Reason::BypassGateway | Reason::BypassLinkControl => d.reason,
                _ => Reason::IngressPass,
            };
            xdp_action::XDP_PASS
        }
    };
    count(d.conn, d.reason, len);
    verdict
}
