//! The classifier benchmark: what the eBPF classifier adds per packet, and what it costs the
//! traffic it lets bypass.
//!
//! 1. ns/packet through `BPF_PROG_TEST_RUN` for {1; 1,000; 100,000} include prefixes x
//!    {0; 10,000} exclude prefixes, against a do-nothing classifier measured the same way in
//!    the same run. Two ways of running: *repeat* runs one skb many times inside the kernel
//!    (the classification cost; a tunnelled packet is translated on the first run only), and
//!    *fresh* gives every run a new skb (includes source NAT and the flow-table update for
//!    tunnelled packets, plus the kernel's per-call timing overhead, which the baseline
//!    cancels).
//! 2. TCP throughput (iperf3) of excluded traffic over a veth pair with the programs attached
//!    (and the largest policy applied) against the bare veth pair, alternating, in one run.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use ipnet::{IpNet, Ipv4Net};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;
use tunnel_common::programs;
use tunnel_user::{
    Datapath,
    datapath::{
        ConnPolicy, Policy,
        frames::{Frame, L4},
        ifindex,
    },
    sys::tun::Tun,
    testbed::{Netns, veth},
};

use crate::stats::{Summary, median};

/// Addresses the measured packets go to; the random prefixes never cover them.
const TUNNELLED_DST: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const EXCLUDED_DST: Ipv4Addr = Ipv4Addr::new(100, 65, 0, 1);
const OUTSIDE_DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

#[derive(Clone, Debug)]
pub struct Options {
    pub repeats: usize,
    pub quick: bool,
}

#[derive(Debug, Serialize)]
pub struct CostRow {
    pub includes: usize,
    pub excludes: usize,
    pub packet: &'static str,
    pub mode: &'static str,
    pub classifier_ns: Summary,
    pub baseline_ns: Summary,
    pub added_ns: f64,
    pub apply_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub bare_gbps: Summary,
    pub attached_gbps: Summary,
    pub ratio: f64,
    pub seconds_per_run: u32,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub costs: Vec<CostRow>,
    pub throughput: Option<Throughput>,
    pub throughput_error: Option<String>,
}

/// Random IPv4 prefixes in 1.0.0.0-99.255.255.255 (never covering the measured
/// destinations), lengths weighted like a routing table (mostly /24).
fn random_prefixes(rng: &mut StdRng, n: usize) -> Vec<IpNet> {
    let mut out = std::collections::BTreeSet::new();
    while out.len() < n {
        let first = rng.random_range(1..100u32);
        let addr = (first << 24) | rng.random_range(0..1u32 << 24);
        let len = match rng.random_range(0..10) {
            0 => rng.random_range(12..=16),
            1..=2 => rng.random_range(17..=23),
            3..=8 => 24,
            _ => rng.random_range(25..=32),
        };
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(addr), len) {
            out.insert(IpNet::V4(net.trunc()));
        }
    }
    out.into_iter().collect()
}

fn policy(includes: usize, excludes: usize, tun_ifindex: u32, seed: u64) -> Policy {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut include = random_prefixes(&mut rng, includes.saturating_sub(3));
    include.extend(
        ["100.64.0.0/24", "100.65.0.0/16", "192.168.77.0/24"]
            .iter()
            .map(|n| n.parse::<IpNet>().unwrap()),
    );
    let mut exclude = random_prefixes(&mut rng, excludes);
    if excludes > 0 {
        exclude.truncate(excludes.saturating_sub(2));
        exclude.push("100.65.0.0/24".parse().unwrap());
        exclude.push("192.168.77.2/32".parse().unwrap());
    }
    let conn = ConnPolicy {
        tun_v4: Some(Ipv4Addr::new(10, 200, 0, 2)),
        include,
        exclude,
        ..ConnPolicy::new(0, tun_ifindex)
    };
    Policy {
        device_conn: Some(0),
        conns: vec![conn],
        gateways: vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))],
        exceptions: Vec::new(),
        ..Default::default()
    }
}

fn frame(dst: Ipv4Addr) -> Vec<u8> {
    Frame::new(
        IpAddr::V4(LOCAL),
        IpAddr::V4(dst),
        L4::Tcp {
            sport: 40000,
            dport: 443,
            flags: 0x10,
            mss: None,
        },
    )
    .build()
}

/// Mean kernel-measured ns per run of `program` on `data`.
fn ns_per_packet(
    dp: &mut Datapath,
    program: &'static str,
    data: &[u8],
    fresh: bool,
    runs: u32,
) -> Result<f64> {
    let prog = dp.classifier(program)?;
    let mut out = vec![0u8; data.len() + 64];
    if fresh {
        let mut total = 0u128;
        for _ in 0..runs {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })?;
            total += r.duration.as_nanos();
        }
        Ok(total as f64 / f64::from(runs))
    } else {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            repeat: runs,
            ..TestRunOptions::new()
        })?;
        // The kernel reports the mean per repetition.
        Ok(r.duration.as_nanos() as f64)
    }
}

pub fn run(opts: &Options) -> Result<Report> {
    let mut dp = Datapath::load().context("loading the eBPF programs (root needed)")?;
    // A TUN device so the policy has a real device to name; nothing is attached to it.
    let tun = Tun::create("tbench0").context("creating a TUN device")?;
    let tun_ifindex = ifindex(tun.name())?;
    let (repeat_runs, fresh_runs) = if opts.quick {
        (100_000, 5_000)
    } else {
        (1_000_000, 40_000)
    };
    let mut costs = Vec::new();
    for &includes in &[1usize, 1_000, 100_000] {
        for &excludes in &[0usize, 10_000] {
            let p = policy(includes, excludes, tun_ifindex, 7);
            let t = Instant::now();
            dp.apply(&p)?;
            let apply_ms = t.elapsed().as_secs_f64() * 1e3;
            eprintln!(
                "classifier: {includes} includes x {excludes} excludes applied in {apply_ms:.0} ms"
            );
            let mut classes = vec![("tunnelled", TUNNELLED_DST), ("not included", OUTSIDE_DST)];
            if excludes > 0 {
                classes.insert(1, ("excluded", EXCLUDED_DST));
            }
            for (packet, dst) in classes {
                let data = frame(dst);
                for (mode, fresh, runs) in
                    [("repeat", false, repeat_runs), ("fresh", true, fresh_runs)]
                {
                    let mut ours = Vec::new();
                    let mut base = Vec::new();
                    // Warm caches and branch predictors before the first measurement.
                    ns_per_packet(&mut dp, programs::NOOP_TC, &data, fresh, runs / 10)?;
                    ns_per_packet(
                        &mut dp,
                        programs::UPLINK_EGRESS_ETH,
                        &data,
                        fresh,
                        runs / 10,
                    )?;
                    for _ in 0..opts.repeats {
                        base.push(ns_per_packet(
                            &mut dp,
                            programs::NOOP_TC,
                            &data,
                            fresh,
                            runs,
                        )?);
                        ours.push(ns_per_packet(
                            &mut dp,
                            programs::UPLINK_EGRESS_ETH,
                            &data,
                            fresh,
                            runs,
                        )?);
                    }
                    let (classifier_ns, baseline_ns) = (Summary::of(&ours), Summary::of(&base));
                    costs.push(CostRow {
                        includes,
                        excludes,
                        packet,
                        mode,
                        added_ns: classifier_ns.median - baseline_ns.median,
                        classifier_ns,
                        baseline_ns,
                        apply_ms,
                    });
                }
            }
        }
    }
    drop(tun);
    let (throughput, throughput_error) = match excluded_throughput(&mut dp, opts) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Ok(Report {
        costs,
        throughput,
        throughput_error,
    })
}

/// iperf3 server in `ns`; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf_gbps(client: &Netns, seconds: u32) -> Result<f64> {
    let out = client
        .command("iperf3")
        .args(["-c", &PEER.to_string(), "-t", &seconds.to_string(), "-J"])
        .output()
        .context("running iperf3")?;
    if !out.status.success() {
        bail!(
            "iperf3 failed: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no received rate")?;
    Ok(bps / 1e9)
}

fn excluded_throughput(dp: &mut Datapath, opts: &Options) -> Result<Throughput> {
    let id = std::process::id();
    let a = Netns::create(&format!("tbench{id}-a"))?;
    let b = Netns::create(&format!("tbench{id}-b"))?;
    veth(&a, "a0", &b, "b0")?;
    a.sh("ip addr add 192.168.77.1/24 dev a0")?;
    b.sh("ip addr add 192.168.77.2/24 dev b0")?;
    let _server = Server(
        b.command("iperf3")
            .args(["-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let tun = a.enter(|| Tun::create("tun0"))??;
    let tun_ifindex = a.enter(|| ifindex("tun0"))??;
    dp.apply(&policy(100_000, 10_000, tun_ifindex, 11))?;
    let seconds = if opts.quick { 2 } else { 5 };
    let (mut bare, mut attached) = (Vec::new(), Vec::new());
    for round in 0..opts.repeats {
        eprintln!(
            "classifier: excluded-path throughput round {} of {}",
            round + 1,
            opts.repeats
        );
        bare.push(iperf_gbps(&a, seconds)?);
        let uplink = a.enter(|| dp.attach_uplink("a0"))??;
        let before = dp.counters()?;
        attached.push(iperf_gbps(&a, seconds)?);
        let d = dp.counters()?.since(&before);
        if d.get(0, tunnel_common::Reason::BypassExcluded).packets == 0 {
            bail!("the classifier did not see the excluded traffic");
        }
        drop(uplink);
    }
    drop(tun);
    let (bare_gbps, attached_gbps) = (Summary::of(&bare), Summary::of(&attached));
    Ok(Throughput {
        ratio: median(&attached) / median(&bare),
        bare_gbps,
        attached_gbps,
        seconds_per_run: seconds,
    })
}

/// The markdown section.
pub fn markdown(r: &Report) -> String {
    let mut s = String::from("## Classifier\n\n");
    s.push_str("ns/packet through BPF_PROG_TEST_RUN, median of repeats; *added* = classifier minus a do-nothing classifier measured the same way in the same run.\n\n");
    s.push_str("| includes | excludes | packet | mode | classifier ns | baseline ns | added ns | policy apply ms |\n|---:|---:|---|---|---:|---:|---:|---:|\n");
    for c in &r.costs {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} ±{:.1} | {:.1} ±{:.1} | **{:.1}** | {:.0} |\n",
            c.includes,
            c.excludes,
            c.packet,
            c.mode,
            c.classifier_ns.median,
            c.classifier_ns.spread,
            c.baseline_ns.median,
            c.baseline_ns.spread,
            c.added_ns,
            c.apply_ms
        ));
    }
    match (&r.throughput, &r.throughput_error) {
        (Some(t), _) => s.push_str(&format!(
            "\nExcluded-path TCP throughput over veth (iperf3, {} s runs, 100,000 includes x 10,000 excludes applied): bare {:.2} Gbit/s (±{:.2}), with the programs attached {:.2} Gbit/s (±{:.2}): **ratio {:.3}**\n",
            t.seconds_per_run, t.bare_gbps.median, t.bare_gbps.spread, t.attached_gbps.median, t.attached_gbps.spread, t.ratio
        )),
        (None, Some(e)) => s.push_str(&format!("\nExcluded-path throughput could not be measured: {e}\n")),
        (None, None) => {}
    }
    s
}
