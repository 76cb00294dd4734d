//! Packet rewriting on TC hooks: source NAT into the tunnel, destination NAT back out of it,
//! TCP MSS clamping, and the flow table that links the two. Checksums are updated
//! incrementally through the kernel helpers, which also handle `CHECKSUM_PARTIAL` packets from
//! local sockets (the pseudo-header flag updates the seed instead of the full sum).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_diff, bpf_skb_load_bytes},
    programs::TcContext,
};
use tunnel_common::{FlowKey, FlowValue};

use crate::{
    maps::FLOWS,
    packet::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet, Quoted},
};

/// Which address of the IP header to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Src,
    Dst,
}

/// Error from a kernel helper; the program drops the packet rather than send it half-rewritten.
pub struct RewriteFailed;

impl From<i64> for RewriteFailed {
    fn from(_: i64) -> Self {
        RewriteFailed
    }
}

/// Offset of the transport checksum and the helper flags it needs, for protocols whose
/// checksum covers the addresses.
#[inline(always)]
fn l4_csum(pkt: &Packet) -> Option<(usize, u64)> {
    if !pkt.has_l4() {
        return None;
    }
    match pkt.proto {
        IPPROTO_TCP => Some((pkt.l4_off + 16, BPF_F_PSEUDO_HDR as u64)),
        // A zero UDP checksum means "none" (IPv4): MARK_MANGLED_0 leaves it alone.
        IPPROTO_UDP => Some((
            pkt.l4_off + 6,
            (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
        )),
        IPPROTO_ICMPV6 if pkt.v6 => Some((pkt.l4_off + 2, BPF_F_PSEUDO_HDR as u64)),
        _ => None,
    }
}

/// Rewrites the source or destination address to `new` (IPv4 as `::ffff:a.b.c.d`) and fixes the
/// IP and transport checksums.
#[inline(always)]
pub fn rewrite_addr(
    ctx: &TcContext,
    pkt: &Packet,
    field: Field,
    new: &[u32; 4],
) -> Result<(), RewriteFailed> {
    let old = if field == Field::Src {
        &pkt.src
    } else {
        &pkt.dst
    };
    if pkt.v6 {
        let off = pkt.l3_off + if field == Field::Src { 8 } else { 24 };
        let mut from = *old;
        let mut to = *new;
        // SAFETY: both buffers are 16 readable bytes on our stack.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        ctx.store(off, &to, 0)?;
        if let Some((csum_off, flags)) = l4_csum(pkt) {
            ctx.l4_csum_replace(csum_off, 0, diff as u32 as u64, flags)?;
        }
    } else {
        let off = pkt.l3_off + if field == Field::Src { 12 } else { 16 };
        let (from, to) = (old[3], new[3]);
        ctx.store(off, &to, 0)?;
        ctx.l3_csum_replace(pkt.l3_off + 10, from as u64, to as u64, 4)?;
        if let Some((csum_off, flags)) = l4_csum(pkt) {
            ctx.l4_csum_replace(csum_off, from as u64, to as u64, flags | 4)?;
        }
    }
    Ok(())
}

/// Largest TCP option area.
const MAX_TCP_OPTIONS: usize = 40;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// Options examined before giving up. Every stack we know puts MSS first; bounding the scan
/// keeps the verifier's path count small.
const MAX_OPTIONS_SCANNED: usize = 8;

/// On a SYN, lowers the MSS option to what fits in `mtu` (IP and TCP headers without options).
#[inline(always)]
pub fn clamp_mss(ctx: &TcContext, pkt: &Packet, mtu: u32) -> Result<(), RewriteFailed> {
    if pkt.proto != IPPROTO_TCP || !pkt.tcp_syn || !pkt.has_l4() {
        return Ok(());
    }
    let headers = if pkt.v6 { 60 } else { 40 };
    if mtu <= headers {
        return Ok(());
    }
    let max_mss = (mtu - headers).min(u16::MAX as u32) as u16;
    let doff: u8 = ctx.load(pkt.l4_off + 12)?;
    let opt_len = ((doff >> 4) as usize * 4)
        .saturating_sub(20)
        .min(MAX_TCP_OPTIONS);
    if opt_len < 4 {
        return Ok(());
    }
    // A 64-byte buffer indexed with `& 63`: every index is provably inside it, which is what
    // the verifier needs for variable-offset stack reads.
    let mut opts = [0u8; 64];
    // The verifier needs the length provably within 1..=40: mask, then range-check.
    let got = (opt_len as u32) & 0x3f;
    if got == 0 || got > MAX_TCP_OPTIONS as u32 {
        return Ok(());
    }
    // SAFETY: `opts` is a 64-byte stack buffer and `got` is at most 40.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            (pkt.l4_off + 20) as u32,
            opts.as_mut_ptr().cast(),
            got,
        )
    };
    if ret != 0 {
        // The header claims options the packet does not hold; leave it for the receiver to
        // reject rather than guess.
        return Ok(());
    }
    let got = got as usize;
    // Byte reads stay byte reads (volatile): with misaligned access enabled LLVM would merge
    // two of them into a 16-bit load, and the verifier rejects misaligned *stack* accesses.
    // SAFETY: the index is masked into the buffer.
    let at = |i: usize| unsafe { core::ptr::read_volatile(opts.as_ptr().add(i & 63)) };
    let mut i = 0usize;
    for _ in 0..MAX_OPTIONS_SCANNED {
        if i + 1 >= got {
            break;
        }
        let kind = at(i);
        match kind {
            TCPOPT_EOL => break,
            TCPOPT_NOP => i += 1,
            _ => {
                let len = at(i + 1);
                if len < 2 {
                    break;
                }
                if kind == TCPOPT_MSS && len == 4 {
                    if i + 4 > got {
                        break;
                    }
                    let (hi, lo) = (at(i + 2), at(i + 3));
                    let mss = u16::from_be_bytes([hi, lo]);
                    if mss > max_mss {
                        let new = max_mss.to_be_bytes();
                        let from = u16::from_ne_bytes([hi, lo]) as u64;
                        let to = u16::from_ne_bytes(new) as u64;
                        ctx.store(pkt.l4_off + 20 + i + 2, &new, 0)?;
                        ctx.l4_csum_replace(pkt.l4_off + 16, from, to, 2)?;
                    }
                    break;
                }
                i += len as usize;
            }
        }
    }
    Ok(())
}

/// Records that replies to this outbound packet must be delivered to its original source.
#[inline(always)]
pub fn record_flow(conn: u32, pkt: &Packet) {
    let key = flow_key(conn, pkt.proto, &pkt.dst, pkt.dport, pkt.sport);
    // SAFETY: the value is only compared, and LRU values are written whole.
    let known = unsafe { FLOWS.get(key) }.is_some_and(|v| v.local == pkt.src);
    if !known {
        // A full table evicts the least recently used flow; nothing else can fail here that
        // the packet could recover from, so the result is not needed.
        let _ = FLOWS.insert(key, FlowValue { local: pkt.src }, 0);
    }
}

/// The original local address for a reply arriving on the TUN device, if its flow is known.
#[inline(always)]
pub fn reply_destination(conn: u32, pkt: &Packet) -> Option<[u32; 4]> {
    let key = flow_key(conn, pkt.proto, &pkt.src, pkt.sport, pkt.dport);
    // SAFETY: LRU values are written whole; the copy is taken at once.
    unsafe { FLOWS.get(key) }.map(|v| v.local)
}

#[inline(always)]
fn flow_key(conn: u32, proto: u8, remote: &[u32; 4], remote_port: u16, local_port: u16) -> FlowKey {
    FlowKey {
        conn: conn as u8,
        proto,
        _pad: [0; 2],
        remote_port: remote_port.to_be(),
        local_port: local_port.to_be(),
        remote: *remote,
    }
}

/// The original local address of the datagram an ICMP error quotes, if its flow is known:
/// the quote is the datagram as it entered the tunnel, so its key is the one
/// [`record_flow`] wrote for it.
#[inline(always)]
pub fn quoted_destination(conn: u32, q: &Quoted) -> Option<[u32; 4]> {
    let key = flow_key(conn, q.proto, &q.dst, q.dport, q.sport);
    // SAFETY: LRU values are written whole; the copy is taken at once.
    unsafe { FLOWS.get(key) }.map(|v| v.local)
}

/// Gives an ICMP error about a translated datagram back to the socket that sent it: the
/// error's destination and the quoted datagram's source, both the tunnel address, become
/// `local`, and every checksum follows (`pkt` is the error, `q` its quote; ports are never
/// translated, so they stay).
///
/// The checksums, each updated for what changed under it:
/// - IPv4: the error's header checksum, through [`rewrite_addr`] (ICMP has no
///   pseudo-header); the quote's header checksum, for its source. The quote's header then
///   sums to what it summed to before, so the ICMP checksum does not change for these;
/// - IPv6: the ICMPv6 checksum twice by the same difference, once for its pseudo-header's
///   destination and once for the quote's 16 source bytes (an IPv6 header has no checksum);
/// - the quote's transport checksum, whose pseudo-header holds the source, where the quote
///   holds it; its change then goes into the ICMP checksum as the change of two bytes.
#[inline(always)]
pub fn translate_quoted(
    ctx: &TcContext,
    pkt: &Packet,
    q: &Quoted,
    local: &[u32; 4],
) -> Result<(), RewriteFailed> {
    let icmp_csum = pkt.l4_off + 2;
    // The quote's transport checksum before, as the helpers read a field: native order.
    let before: Option<u16> = match q.csum {
        Some((off, _)) => Some(ctx.load(off)?),
        None => None,
    };
    let flags = |udp: bool| if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    if q.v6 {
        let mut from = pkt.dst;
        let mut to = *local;
        // SAFETY: both buffers are 16 readable bytes on our stack.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        let diff = diff as u32 as u64;
        ctx.store(pkt.l3_off + 24, &to, 0)?;
        ctx.l4_csum_replace(icmp_csum, 0, diff, BPF_F_PSEUDO_HDR as u64)?;
        ctx.store(q.l3_off + 8, &to, 0)?;
        ctx.l4_csum_replace(icmp_csum, 0, diff, 0)?;
        if let Some((off, udp)) = q.csum {
            ctx.l4_csum_replace(off, 0, diff, flags(udp))?;
        }
    } else {
        rewrite_addr(ctx, pkt, Field::Dst, local)?;
        let (from, to) = (pkt.dst[3] as u64, local[3] as u64);
        ctx.store(q.l3_off + 12, &local[3], 0)?;
        ctx.l3_csum_replace(q.l3_off + 10, from, to, 4)?;
        if let Some((off, udp)) = q.csum {
            ctx.l4_csum_replace(off, from, to, flags(udp) | 4)?;
        }
    }
    if let (Some((off, _)), Some(before)) = (q.csum, before) {
        let after: u16 = ctx.load(off)?;
        ctx.l4_csum_replace(icmp_csum, before as u64, after as u64, 2)?;
    }
    Ok(())
}
