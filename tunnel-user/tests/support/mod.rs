//! Shared helpers for the kernel-program tests: a harness that runs frames through the loaded
//! programs with `BPF_PROG_TEST_RUN`, and the skip rule for machines that cannot.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use aya::programs::{TestRun, TestRunOptions};
use tunnel_common::programs;
use tunnel_user::datapath::{CounterTable, Datapath};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Loads the data path, or explains why this machine cannot and returns None.
pub fn load_or_skip(test: &str) -> Option<Datapath> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: loading BPF programs needs root");
        return None;
    }
    match Datapath::load() {
        Ok(dp) => Some(dp),
        Err(e) => panic!("{test}: loading the data path failed: {e:#?}"),
    }
}

/// Result of one classifier run.
#[derive(Debug)]
pub struct TcRun {
    pub action: u32,
    pub out: Vec<u8>,
}

/// Runs `frame` through the uplink egress classifier with `skb->mark = mark`.
pub fn egress(dp: &mut Datapath, frame: &[u8], mark: u32) -> TcRun {
    tc_run(dp, programs::UPLINK_EGRESS_ETH, frame, mark)
}

/// Runs `data` through the TC program `program` with `skb->mark = mark`. The skb's device
/// is the test namespace's loopback (ifindex 1); programs for raw-IP devices get `data` as
/// their packet, IP header first (the runner's Ethernet handling only sets metadata).
pub fn tc_run(dp: &mut Datapath, program: &'static str, data: &[u8], mark: u32) -> TcRun {
    let prog = dp.classifier(program).expect("classifier");
    // The leading fields of `struct __sk_buff`: len, pkt_type, mark. The kernel takes a prefix.
    let mut ctx = [0u8; 12];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut out = vec![0u8; data.len() + 256];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {program}: {e}"));
    out.truncate(res.data_size_out as usize);
    TcRun {
        action: res.return_value,
        out,
    }
}

/// The ifindex the test runner gives an skb: the loopback device's.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// An Ethernet frame's IP packet (what a raw-IP device carries).
pub fn raw_ip(frame: &[u8]) -> Vec<u8> {
    frame[14..].to_vec()
}

/// The two hooks the uplink guard runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
}

pub const GUARD_HOOKS: [Hook; 2] = [Hook::Xdp, Hook::TcIngress];

/// Runs `frame` through the uplink guard on `hook`: `XDP_PASS` or `XDP_DROP` whichever hook
/// ran (TC ingress's OK and SHOT are mapped to them).
pub fn guard(dp: &mut Datapath, hook: Hook, frame: &[u8]) -> u32 {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::new()
    };
    match hook {
        Hook::Xdp => {
            dp.xdp(programs::UPLINK_XDP)
                .expect("xdp")
                .test_run(opts)
                .unwrap_or_else(|e| {
                    panic!("BPF_PROG_TEST_RUN on the XDP guard: {e}\nframe {frame:02x?}")
                })
                .return_value
        }
        Hook::TcIngress => {
            let action = dp
                .classifier(programs::UPLINK_INGRESS_ETH)
                .expect("ingress guard")
                .test_run(opts)
                .unwrap_or_else(|e| {
                    panic!("BPF_PROG_TEST_RUN on the TC ingress guard: {e}\nframe {frame:02x?}")
                })
                .return_value;
            match action {
                TC_ACT_OK => XDP_PASS,
                TC_ACT_SHOT => XDP_DROP,
                other => panic!("the TC ingress guard returned {other}"),
            }
        }
    }
}

/// Counters now.
pub fn counters(dp: &Datapath) -> CounterTable {
    dp.counters().expect("reading counters")
}

/// The cgroup v2 ids of this process's cgroup and its ancestors, deepest first.
pub fn own_cgroup_ids() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 entry in /proc/self/cgroup");
    let root = cgroup2_root();
    let mut ids = Vec::new();
    let mut dir = root.join(path.trim_start_matches('/'));
    loop {
        ids.push(std::fs::metadata(&dir).expect("cgroup directory").ino());
        if dir == root {
            break;
        }
        dir = dir.parent().expect("parent cgroup").to_path_buf();
    }
    ids
}

/// Where cgroup v2 is mounted.
pub fn cgroup2_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .expect("cgroup2 is mounted")
}
