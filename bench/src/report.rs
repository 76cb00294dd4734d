//! The tunnel comparison as markdown: one table per question (how fast, how many packets and
//! how quickly, at what cost, how long to connect), ratios against the bare veth of the same
//! run, and every failure with its reason.

use std::fmt::Write as _;

use crate::{
    stats::Summary,
    tunnels::{Outcome, Report, SystemResult, TestResult},
};

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// "median ±spread" (no spread for a single run).
fn cell(s: Option<&Summary>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ±{}", num(s.median), num(s.spread)),
        Some(s) => num(s.median),
        None => "–".into(),
    }
}

/// A test's value, or why it is missing.
fn value(r: &SystemResult, id: &str) -> String {
    match r.test(id) {
        Some(t) if t.value.is_some() => {
            let mut s = cell(t.value.as_ref());
            if !t.errors.is_empty() {
                let _ = write!(s, " ({} failed)", t.errors.len());
            }
            s
        }
        Some(t) if !t.errors.is_empty() => "failed".into(),
        _ => "–".into(),
    }
}

fn median(t: Option<&TestResult>) -> Option<f64> {
    t.and_then(|t| t.value.map(|v| v.median))
}

fn pct(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 0.001 {
        format!("{:.3}%", v * 100.0)
    } else {
        format!("{:.1}%", v * 100.0)
    }
}

fn status(r: &SystemResult) -> String {
    match &r.outcome {
        Outcome::Measured => "measured".into(),
        Outcome::NotAvailable { reason } => format!("not available: {reason}"),
        Outcome::Failed { stage, reason } => format!("failed at {stage}: {reason}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let o = &report.options;
    let _ = writeln!(s, "## Tunnels\n");
    let _ = writeln!(
        s,
        "Kernel {}, {} CPUs, tree {}; {} repeat(s) of every measurement, iperf3 runs of {} s, {} pings 10 ms apart; the whole comparison took {:.0} s. Cells are median ±spread (half of max-min) over the repeats.\n",
        report.kernel,
        report.cpus,
        report.revision,
        o.repeats,
        o.seconds,
        o.pings,
        report.duration_s
    );
    let measured: Vec<&SystemResult> = report
        .systems
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Measured))
        .collect();
    let bare = report
        .systems
        .iter()
        .find(|r| r.name == "bare")
        .and_then(|b| median(b.test("tcp-1-up")));

    s.push_str("### Systems\n\n| system | what | version | status | transport | MTU |\n|---|---|---|---|---|---:|\n");
    for r in &report.systems {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            escape(&r.about),
            escape(&r.version),
            escape(&status(r)),
            r.transport.as_deref().unwrap_or("–"),
            r.mtu.map(|m| m.to_string()).unwrap_or("–".into())
        );
    }

    s.push_str("\n### TCP throughput (Gbit/s, iperf3)\n\n*up* is client to corp, *down* corp to client; *vs bare* is TCP 1 up against the bare veth of this run.\n\n| system | TCP 1 up | TCP 1 down | TCP 4 up | TCP 4 down | vs bare |\n|---|---:|---:|---:|---:|---:|\n");
    for r in &measured {
        let ratio = match (bare, median(r.test("tcp-1-up"))) {
            (Some(b), Some(v)) if b > 0.0 => format!("{:.3}", v / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {ratio} |",
            r.name,
            value(r, "tcp-1-up"),
            value(r, "tcp-1-down"),
            value(r, "tcp-4-up"),
            value(r, "tcp-4-down"),
        );
    }

    s.push_str("\n### Packets and latency\n\nUDP: client to corp as fast as iperf3 sends (`-b 0`), IP packets of 64 and 1400 bytes; thousands of packets per second that arrived, and the share lost. RTT: ICMP echo to corp, median (p99) in ms, idle and while one TCP stream runs up.\n\n| system | UDP 64 kpps | loss | UDP 1400 kpps | loss | RTT idle | RTT loaded |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for r in &measured {
        let loss = |id: &str| {
            r.test(id)
                .and_then(|t| t.loss)
                .map(|l| pct(l.median))
                .unwrap_or("–".into())
        };
        let rtt = |id: &str| match r.test(id) {
            Some(t) if t.value.is_some() => format!(
                "{} ({})",
                cell(t.value.as_ref()),
                t.p99_ms.map(|p| num(p.median)).unwrap_or("–".into())
            ),
            Some(t) if !t.errors.is_empty() => "failed".into(),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            value(r, "udp-64"),
            loss("udp-64"),
            value(r, "udp-1400"),
            loss("udp-1400"),
            rtt("latency-idle"),
            rtt("latency-loaded"),
        );
    }

    s.push_str("\n### Cost\n\nCPU seconds (user + system, from /proc/PID/stat, all threads and child processes) per GB of payload moved in the TCP 1 runs, by the tunnel's client-side and gateway-side processes; *machine* is all busy CPU time of the machine (kernel, softirq and iperf3 included) per GB. UDP drops: `UdpRcvbufErrors` + `Udp6RcvbufErrors` counted during all runs, client / gateway / corp namespace. Peak RSS: `VmHWM` of every tunnel process.\n\n| system | client s/GB up | gateway s/GB up | client s/GB down | gateway s/GB down | machine s/GB up | UDP drops | peak RSS |\n|---|---:|---:|---:|---:|---:|---|---|\n");
    for r in &measured {
        let cpu =
            |id: &str, f: fn(&TestResult) -> Option<Summary>| cell(r.test(id).and_then(f).as_ref());
        let drops = r.tests.iter().fold([0u64; 3], |a, t| {
            [
                a[0] + t.drops_client,
                a[1] + t.drops_gateway,
                a[2] + t.drops_corp,
            ]
        });
        let mut mem: Vec<String> = r
            .memory
            .iter()
            .map(|m| {
                format!(
                    "{} {:.1} MiB",
                    escape(&m.process),
                    m.peak_rss_kib as f64 / 1024.0
                )
            })
            .collect();
        if mem.is_empty() {
            mem.push("–".into());
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
            r.name,
            cpu("tcp-1-up", |t| t.cpu_client_s_per_gb),
            cpu("tcp-1-up", |t| t.cpu_gateway_s_per_gb),
            cpu("tcp-1-down", |t| t.cpu_client_s_per_gb),
            cpu("tcp-1-down", |t| t.cpu_gateway_s_per_gb),
            cell(
                r.test("tcp-1-up")
                    .and_then(|t| t.cpu_machine_s_per_gb)
                    .as_ref()
            ),
            drops[0],
            drops[1],
            drops[2],
            mem.join(", ")
        );
    }

    s.push_str("\n### Login and reconnect (s)\n\n*login*: from the start of the login (`tunnel connect`, the openconnect process, the WireGuard device's start) to the first TCP connection that reaches corp through the tunnel. *reconnect*: the gateway is killed with SIGKILL and started again; from its start to the first TCP connection through.\n\n| system | login | reconnect | notes |\n|---|---:|---:|---|\n");
    for r in measured.iter().filter(|r| r.login_s.is_some()) {
        let mut notes: Vec<String> = Vec::new();
        notes.extend(
            r.login_errors
                .iter()
                .map(|e| format!("login: {}", escape(e))),
        );
        notes.extend(
            r.reconnect_errors
                .iter()
                .map(|e| format!("reconnect: {}", escape(e))),
        );
        let reconnect = match (&r.reconnect_s, r.reconnect_errors.is_empty()) {
            (Some(s), true) => cell(Some(s)),
            (Some(s), false) => format!("{} (then failed)", cell(Some(s))),
            (None, _) => "failed".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {reconnect} | {} |",
            r.name,
            cell(r.login_s.as_ref()),
            notes.join("; ")
        );
    }

    let excluded: Vec<&&SystemResult> = measured
        .iter()
        .filter(|r| r.test("excluded-tcp-1-up").is_some())
        .collect();
    if !excluded.is_empty() {
        let bare_excluded = report
            .systems
            .iter()
            .find(|r| r.name == "bare")
            .and_then(|b| median(b.test("excluded-tcp-1-up")));
        s.push_str("\n### Excluded path\n\nOne TCP stream from the client to the excluded server (inside a pushed include range, excluded by an exclude route, so the classifier lets it bypass the tunnel) while the tunnel is up, against the same path with no tunnel (bare) in this run.\n\n| system | excluded TCP 1 up (Gbit/s) | vs bare |\n|---|---:|---:|\n");
        for r in excluded {
            let ratio = match (bare_excluded, median(r.test("excluded-tcp-1-up"))) {
                (Some(b), Some(v)) if b > 0.0 => format!("{:.3}", v / b),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {ratio} |",
                r.name,
                value(r, "excluded-tcp-1-up")
            );
        }
    }

    let mut failures = String::new();
    for r in &report.systems {
        for t in &r.tests {
            for e in &t.errors {
                let _ = writeln!(failures, "- {} {}: {}", r.name, t.test, escape(e));
            }
        }
    }
    if !failures.is_empty() {
        s.push_str("\n### Failed runs\n\n");
        s.push_str(&failures);
    }
    s
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::tunnels::{Memory, Options, TestResult};

    fn t(id: &str, unit: &'static str, v: &[f64]) -> TestResult {
        TestResult {
            test: id.into(),
            unit,
            value: Some(Summary::of(v)),
            samples: v.to_vec(),
            ..Default::default()
        }
    }

    fn sys(name: &str, gbps: f64) -> SystemResult {
        SystemResult {
            name: name.into(),
            about: "a | b".into(),
            version: "v1".into(),
            outcome: Outcome::Measured,
            transport: Some("ESP".into()),
            mtu: Some(1400),
            tests: vec![
                TestResult {
                    cpu_client_s_per_gb: Some(Summary::of(&[2.0, 2.5, 3.0])),
                    cpu_gateway_s_per_gb: Some(Summary::of(&[1.0])),
                    cpu_machine_s_per_gb: Some(Summary::of(&[4.0])),
                    ..t("tcp-1-up", "Gbit/s", &[gbps, gbps * 0.9, gbps * 1.1])
                },
                TestResult {
                    errors: vec!["iperf3: boom".into()],
                    ..t("tcp-1-down", "Gbit/s", &[gbps])
                },
                TestResult {
                    loss: Some(Summary::of(&[0.25])),
                    drops_gateway: 7,
                    ..t("udp-64", "kpps", &[120.0])
                },
                TestResult {
                    p99_ms: Some(Summary::of(&[0.5])),
                    ..t("latency-idle", "ms", &[0.12])
                },
                t("excluded-tcp-1-up", "Gbit/s", &[gbps * 0.5]),
            ],
            memory: vec![Memory {
                side: "client",
                process: "tunneld".into(),
                pid: 1,
                peak_rss_kib: 10240,
            }],
            login_s: Some(Summary::of(&[0.3, 0.4, 0.5])),
            login_errors: vec![],
            reconnect_s: None,
            reconnect_errors: vec!["timed out".into()],
        }
    }

    pub fn sample() -> Report {
        let mut bare = sys("bare", 20.0);
        bare.memory.clear();
        bare.tests[0].cpu_client_s_per_gb = None;
        bare.tests[0].cpu_gateway_s_per_gb = None;
        bare.login_s = None;
        Report {
            options: Options::new(3, false),
            kernel: "6.1".into(),
            cpus: 2,
            revision: "abc123".into(),
            started_unix: 0,
            duration_s: 900.0,
            systems: vec![
                bare,
                sys("ours-esp", 0.5),
                SystemResult {
                    outcome: Outcome::NotAvailable {
                        reason: "cargo install failed".into(),
                    },
                    tests: vec![],
                    ..sys("boringtun", 0.0)
                },
            ],
        }
    }

    #[test]
    fn renders_tables_ratios_and_failures() {
        let md = markdown(&sample());
        // Ratio against bare of the same run, median ±spread cells.
        assert!(
            md.contains("| ours-esp | 0.500 ±0.050 | 0.500 (1 failed) | – | – | 0.025 |"),
            "{md}"
        );
        assert!(md.contains("| bare | 20.0 ±2.00 |"), "{md}");
        // A system that could not be set up is listed with its reason, not dropped.
        assert!(
            md.contains("| boringtun | a \\| b | v1 | not available: cargo install failed |"),
            "{md}"
        );
        assert!(!md.contains("| boringtun | 0"), "no figures for it: {md}");
        // Packets, loss, latency with p99.
        assert!(
            md.contains("| ours-esp | 120 | 25.0% | – | – | 0.120 (0.500) | – |"),
            "{md}"
        );
        // Cost: CPU cells, drops, memory; the bare veth has no tunnel processes.
        assert!(
            md.contains(
                "| ours-esp | 2.50 ±0.500 | 1.00 | – | – | 4.00 | 0 / 7 / 0 | tunneld 10.0 MiB |"
            ),
            "{md}"
        );
        assert!(md.contains("| bare | – | – | – | – | 4.00 |"), "{md}");
        // Login with a failed reconnect.
        assert!(
            md.contains("| ours-esp | 0.400 ±0.100 | failed | reconnect: timed out |"),
            "{md}"
        );
        assert!(md.contains("- ours-esp tcp-1-down: iperf3: boom"), "{md}");
        // The excluded path against the bare veth's excluded path.
        assert!(md.contains("| bare | 10.0 | 1.000 |"), "{md}");
        assert!(md.contains("| ours-esp | 0.250 | 0.025 |"), "{md}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(num(19.94), "19.9");
        assert_eq!(num(0.4012), "0.401");
        assert_eq!(num(1234.4), "1234");
        assert_eq!(num(2.345), "2.35");
        assert_eq!(pct(0.0), "0");
        assert_eq!(pct(0.5), "50.0%");
    }
}
