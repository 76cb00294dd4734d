//! tunnel's kernel programs. Entry points are thin: each calls a `try_*` function in the module
//! that owns the logic (`tc`, `guard`), which parse with `packet`, decide with `classify`, rewrite
//! with `nat`, let later fragments follow their first with `frags` and count with `counters`,
//! which also notes every verdict for the kernel log (`log`, off unless userspace turns it
//! on); the entry points write the log's record last.
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
mod log;
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

    use crate::{
        log::{Hook, write},
        tc::Link,
    };

    // Each entry point writes the kernel log's record of its verdict last (nothing when the
    // log is off).

    #[classifier]
    pub fn tunnel_uplink_egress_eth(ctx: TcContext) -> i32 {
        let action = crate::tc::try_uplink_egress(&ctx, Link::Ethernet);
        write(Hook::UplinkEgress);
        action
    }

    #[classifier]
    pub fn tunnel_uplink_egress_ip(ctx: TcContext) -> i32 {
        let action = crate::tc::try_uplink_egress(&ctx, Link::RawIp);
        write(Hook::UplinkEgress);
        action
    }

    #[classifier]
    pub fn tunnel_tun_egress(ctx: TcContext) -> i32 {
        let action = crate::tc::try_tun_egress(&ctx);
        write(Hook::TunEgress);
        action
    }

    #[classifier]
    pub fn tunnel_tun_ingress(ctx: TcContext) -> i32 {
        let action = crate::tc::try_tun_ingress(&ctx);
        write(Hook::TunIngress);
        action
    }

    /// Multi-buffer aware (`xdp.frags`): the headers it reads are in the first buffer.
    #[xdp(frags)]
    pub fn tunnel_uplink_xdp(ctx: XdpContext) -> u32 {
        let action = crate::guard::try_uplink_xdp(&ctx);
        write(Hook::Guard);
        action
    }

    #[classifier]
    pub fn tunnel_uplink_ingress_eth(ctx: TcContext) -> i32 {
        let action = crate::guard::try_uplink_ingress(&ctx, Link::Ethernet);
        write(Hook::Guard);
        action
    }

    #[classifier]
    pub fn tunnel_uplink_ingress_ip(ctx: TcContext) -> i32 {
        let action = crate::guard::try_uplink_ingress(&ctx, Link::RawIp);
        write(Hook::Guard);
        action
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
