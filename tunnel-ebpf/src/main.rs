//! tunnel's kernel programs. Entry points are thin: each calls a `try_*` function in the module
//! that owns the logic (`tc`, `guard`), which parse with `packet`, decide with `classify`, rewrite
//! with `nat`, let later fragments follow their first with `frags` and count with `counters`.
//! No panics: every fallible step returns early.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod classify;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod frags;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    use crate::tc::Link;

    #[classifier]
    pub fn tunnel_uplink_egress_eth(ctx: TcContext) -> i32 {
        crate::tc::try_uplink_egress(&ctx, Link::Ethernet)
    }

    #[classifier]
    pub fn tunnel_uplink_egress_ip(ctx: TcContext) -> i32 {
        crate::tc::try_uplink_egress(&ctx, Link::RawIp)
    }

    #[classifier]
    pub fn tunnel_tun_egress(ctx: TcContext) -> i32 {
        crate::tc::try_tun_egress(&ctx)
    }

    #[classifier]
    pub fn tunnel_tun_ingress(ctx: TcContext) -> i32 {
        crate::tc::try_tun_ingress(&ctx)
    }

    /// Multi-buffer aware (`xdp.frags`): the headers it reads are in the first buffer.
    #[xdp(frags)]
    pub fn tunnel_uplink_xdp(ctx: XdpContext) -> u32 {
        crate::guard::try_uplink_xdp(&ctx)
    }

    #[classifier]
    pub fn tunnel_uplink_ingress_eth(ctx: TcContext) -> i32 {
        crate::guard::try_uplink_ingress(&ctx, Link::Ethernet)
    }

    #[classifier]
    pub fn tunnel_uplink_ingress_ip(ctx: TcContext) -> i32 {
        crate::guard::try_uplink_ingress(&ctx, Link::RawIp)
    }

    /// Benchmark baseline: same program type, no work.
    #[classifier]
    pub fn tunnel_noop_tc(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    /// Benchmark baseline: same program type (multi-buffer aware too), no work.
    #[xdp(frags)]
    pub fn tunnel_noop_xdp(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Never reached: the code has no panicking paths, and the verifier would reject a
        // program in which this loop were reachable.
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
