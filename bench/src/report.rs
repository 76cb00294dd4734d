//! The tunnel comparison as markdown: one table per question (how fast, how many packets and
//! how quickly, at what cost, how long to connect), ratios against the bare veth of the same
//! run, and every failure with its reason.

use std::fmt::Write as _;

use crate::{
    idle_ab,
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

    s.push_str(&summary(report));
    s.push_str(&crate::baseline::markdown(report));

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

    s.push_str("\n### Cost\n\nCPU seconds (user + system, from /proc/PID/stat, all threads and child processes) per GB of payload moved in the TCP 1 runs, by the tunnel's client-side and gateway-side processes; *machine* is all busy CPU time of the machine (kernel, softirq and iperf3 included) per GB. UDP drops: `UdpRcvbufErrors` + `Udp6RcvbufErrors` counted during all runs, client / gateway / corp namespace, and in brackets the share of what the tunnel's own sockets (client and gateway namespaces) received that they dropped (datagrams, or GRO batches where the kernel joins them: the kernel counts both the same way). Peak RSS: `VmHWM` of every tunnel process.\n\n| system | client s/GB up | gateway s/GB up | client s/GB down | gateway s/GB down | machine s/GB up | UDP drops | peak RSS |\n|---|---:|---:|---:|---:|---:|---|---|\n");
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
        let share = tunnel_drop_share(r)
            .map(|v| format!(" ({})", pct(v)))
            .unwrap_or_default();
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
            "| {} | {} | {} | {} | {} | {} | {} / {} / {}{share} | {} |",
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

    s.push_str(&idle_ab_markdown(report));
    s.push_str(&targets_markdown(report));

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

/// One line a system with the figures a reader compares first (the README shows this
/// table): TCP 1 stream both ways and 4 up, the ratio to the bare veth, UDP 64-byte packets
/// per second, RTT idle and loaded, CPU s/GB of the tunnel's processes (client + gateway,
/// TCP 1 up), their peak RSS (client / gateway, all processes of a side added up), login and
/// reconnect time.
pub fn summary(report: &Report) -> String {
    let bare = tcp_1_up(report, "bare");
    let mut s = String::from(
        "### Summary\n\n| system | TCP 1 up Gbit/s | TCP 1 down | TCP 4 up | vs bare | UDP 64 B kpps | RTT idle / loaded ms | CPU s/GB | peak RSS MiB | login s | reconnect s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in report
        .systems
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Measured))
    {
        let m = |id: &str| median(r.test(id)).map(num).unwrap_or("–".into());
        let up = r.test("tcp-1-up");
        let ratio = match (bare, median(up)) {
            (Some(b), Some(v)) if b > 0.0 => format!("{:.3}", v / b),
            _ => "–".into(),
        };
        let cpu = match up.map(|t| (t.cpu_client_s_per_gb, t.cpu_gateway_s_per_gb)) {
            Some((Some(c), Some(g))) => format!("{} + {}", num(c.median), num(g.median)),
            _ => "–".into(),
        };
        let rss = |side: &str| -> Option<f64> {
            let kib: u64 = r
                .memory
                .iter()
                .filter(|m| m.side == side)
                .map(|m| m.peak_rss_kib)
                .sum();
            (kib > 0).then(|| kib as f64 / 1024.0)
        };
        let mem = match (rss("client"), rss("gateway")) {
            (Some(c), Some(g)) => format!("{c:.1} / {g:.1}"),
            _ => "–".into(),
        };
        let reconnect = match (&r.reconnect_s, r.reconnect_errors.is_empty()) {
            (Some(s), true) => num(s.median),
            (_, false) => "failed".into(),
            (None, true) => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {ratio} | {} | {} / {} | {cpu} | {mem} | {} | {reconnect} |",
            r.name,
            cell(up.and_then(|t| t.value.as_ref())),
            m("tcp-1-down"),
            m("tcp-4-up"),
            m("udp-64"),
            m("latency-idle"),
            m("latency-loaded"),
            r.login_s
                .as_ref()
                .map(|l| num(l.median))
                .unwrap_or("–".into()),
        );
    }
    s.push('\n');
    s
}

/// Of what the tunnel's own sockets (client and gateway namespaces) received over all runs,
/// the share they dropped for want of buffer; None when they received nothing.
pub fn tunnel_drop_share(r: &SystemResult) -> Option<f64> {
    let (dropped, delivered) = r.tests.iter().fold((0u64, 0u64), |(d, v), t| {
        (
            d + t.drops_client + t.drops_gateway,
            v + t.delivered_client + t.delivered_gateway,
        )
    });
    (dropped + delivered > 0).then(|| dropped as f64 / (dropped + delivered) as f64)
}

/// The systems the benchmark issue judges ours against ("the fastest of wireguard-go,
/// boringtun and openconnect/ocserv"), and which of them carry IP over TLS. openconnect's
/// Pulse client runs through our gateway, so it is compared with our client separately
/// ([`against_openconnect_pulse`]) and is not a baseline of the targets.
const OTHERS: [(&str, bool); 4] = [
    ("wireguard-go", false),
    ("boringtun", false),
    ("ocserv-dtls", false),
    ("ocserv-tls", true),
];

/// Our client against openconnect's Pulse client, both through our gateway with the same
/// transport, TCP 1 up: (ours, openconnect's, ours / openconnect's) where both were measured.
pub fn against_openconnect_pulse(report: &Report) -> Vec<(&'static str, &'static str, f64, f64)> {
    [
        ("ours-esp", "oc-pulse-esp"),
        ("ours-esp-gcm", "oc-pulse-esp"),
        ("ours-tls", "oc-pulse-tls"),
    ]
    .into_iter()
    .filter_map(|(ours, oc)| Some((ours, oc, tcp_1_up(report, ours)?, tcp_1_up(report, oc)?)))
    .collect()
}

/// One of the benchmark's targets, judged on this run.
#[derive(Debug, serde::Serialize)]
pub struct Target {
    pub what: String,
    pub ours: Option<f64>,
    /// The baseline's value and name.
    pub against: Option<(f64, String)>,
    /// ours / against (a ratio), or ours itself for a share.
    pub value: Option<f64>,
    pub wanted: String,
    pub met: Option<bool>,
}

fn measured<'a>(report: &'a Report, name: &str) -> Option<&'a SystemResult> {
    report
        .systems
        .iter()
        .find(|r| r.name == name && matches!(r.outcome, Outcome::Measured))
}

/// The median TCP 1 up of a measured system.
fn tcp_1_up(report: &Report, name: &str) -> Option<f64> {
    median(measured(report, name)?.test("tcp-1-up"))
}

/// The fastest of `names` in TCP 1 up, with its value.
fn fastest(report: &Report, names: &[&str]) -> Option<(f64, String)> {
    names
        .iter()
        .filter_map(|n| Some((tcp_1_up(report, n)?, n.to_string())))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The targets of the benchmark issue, each judged from this run's figures (or unjudged
/// when a system in it was not measured).
pub fn targets(report: &Report) -> Vec<Target> {
    let all: Vec<&str> = OTHERS.iter().map(|(n, _)| *n).collect();
    let tls: Vec<&str> = OTHERS.iter().filter(|(_, t)| *t).map(|(n, _)| *n).collect();
    let mut v = Vec::new();
    let mut ratio = |what: &str, ours: &str, against: Option<(f64, String)>, min: f64| {
        let o = tcp_1_up(report, ours);
        let value = match (o, &against) {
            (Some(o), Some((a, _))) if *a > 0.0 => Some(o / a),
            _ => None,
        };
        v.push(Target {
            what: what.into(),
            ours: o,
            against,
            value,
            wanted: format!(">= {min}x"),
            met: value.map(|r| r >= min),
        });
    };
    ratio(
        "ours-esp (Pulse suite, AES-128-CBC + HMAC-SHA1) against the fastest other, TCP 1 up",
        "ours-esp",
        fastest(report, &all),
        3.0,
    );
    ratio(
        "ours-esp-gcm (AES-256-GCM) against the fastest other, TCP 1 up",
        "ours-esp-gcm",
        fastest(report, &all),
        5.0,
    );
    ratio(
        "ours-tls against the fastest other over TLS, TCP 1 up",
        "ours-tls",
        fastest(report, &tls),
        2.0,
    );
    let idle = |name: &str| measured(report, name).and_then(|r| median(r.test("latency-idle")));
    for ours in ["ours-esp", "ours-esp-gcm"] {
        let (o, b) = (idle(ours), idle("boringtun"));
        let value = o.zip(b).map(|(o, b)| o / b);
        v.push(Target {
            what: format!("{ours} idle RTT against boringtun's (ms)"),
            ours: o,
            against: b.map(|b| (b, "boringtun".to_string())),
            value,
            wanted: "<= 1x".into(),
            met: value.map(|r| r <= 1.0),
        });
    }
    let ab = report.idle_ab.as_ref();
    for (how, rows) in [
        ("", ab.map(|ab| &ab.rows[..])),
        (
            " on one CPU",
            ab.and_then(|ab| ab.one_cpu.as_ref())
                .map(|one| &one.rows[..]),
        ),
    ] {
        for ours in idle_ab::OURS {
            let pair = ab.zip(rows).and_then(|(ab, rows)| {
                idle_ab::row_of(rows, ours).zip(idle_ab::row_of(rows, &ab.baseline))
            });
            v.push(Target {
                what: format!("{ours} idle RTT against boringtun's, interleaved rounds{how} (ms)"),
                ours: pair.map(|(o, _)| o.median_ms),
                against: pair.map(|(_, b)| (b.median_ms, b.name.clone())),
                value: pair.map(|(o, _)| o.ratio),
                wanted: "<= 1x".into(),
                met: pair.map(|(o, _)| o.ratio <= 1.0),
            });
        }
    }
    for ours in ["ours-esp", "ours-esp-gcm"] {
        let share = measured(report, ours).and_then(tunnel_drop_share);
        v.push(Target {
            what: format!(
                "{ours}: UDP receive drops of the tunnel's sockets, share of what they received"
            ),
            ours: share,
            against: None,
            value: share,
            wanted: "< 1%".into(),
            met: share.map(|s| s < 0.01),
        });
    }
    v
}

/// The interleaved idle-RTT comparison ([`idle_ab`]), when the run made it.
fn idle_ab_markdown(report: &Report) -> String {
    let Some(ab) = &report.idle_ab else {
        return String::new();
    };
    let mut s = format!(
        "\n### Idle RTT, interleaved\n\nThe systems above are measured one after another, minutes apart, and the idle RTT of one build moves by about ±10 % between such blocks on a shared VM. Here ours and {} were up at once, each in a world of its own, and took turns: {} rounds of {} pings 10 ms apart, round 1 of each system, then round 2 of each, and so on. *ratio*: the median over the rounds of the system's round median divided by {}'s in the same round, with the quartiles.\n\n",
        ab.baseline, ab.rounds, ab.pings_per_round, ab.baseline
    );
    if let Some(e) = &ab.error {
        let _ = writeln!(s, "Not measured: {}", escape(e));
        return s;
    }
    s.push_str(&idle_rows_markdown(&ab.rows));
    if let Some(one) = &ab.one_cpu {
        let _ = write!(
            s,
            "\nThe same rounds once more with every thread of every tunnel process, and ping, on CPU {}. The scheduler already runs each wake-up of an idle ping's path on the waker's CPU, so a round trip is one CPU working through ping, client, gateway, client, ping; pinned, where the threads happen to sit no longer moves the figures, and the ratio is the work per round trip and the order it runs in.\n\n",
            one.cpu
        );
        match &one.error {
            Some(e) => {
                let _ = writeln!(s, "Not measured: {}", escape(e));
            }
            None => s.push_str(&idle_rows_markdown(&one.rows)),
        }
    }
    s
}

/// The table of an idle-RTT comparison's rows.
fn idle_rows_markdown(rows: &[idle_ab::Row]) -> String {
    let mut s = String::from(
        "| system | RTT idle ms | ratio | quartiles | round medians ms |\n|---|---:|---:|---|---|\n",
    );
    for r in rows {
        let rounds: Vec<String> = r.rounds_ms.iter().map(|v| format!("{v:.3}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3}-{:.3} | {} |",
            r.name,
            num(r.median_ms),
            r.ratio,
            r.ratio_q1,
            r.ratio_q3,
            rounds.join(" ")
        );
    }
    s
}

fn targets_markdown(report: &Report) -> String {
    let mut s = String::from(
        "\n### Targets\n\nThe benchmark issue's targets, judged on this run. *fastest other*: the fastest in TCP 1 up of wireguard-go, boringtun and openconnect through ocserv (DTLS and TLS), the issue's baselines; *over TLS*: openconnect through ocserv over TLS. openconnect's Pulse client through our gateway is compared with our client in the next table.\n\n| target | ours | against | ratio | wanted | met |\n|---|---:|---|---:|---|---|\n",
    );
    for t in targets(report) {
        let share = t.wanted.ends_with('%');
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            t.what,
            match (t.ours, share) {
                (Some(v), true) => pct(v),
                (Some(v), false) => num(v),
                (None, _) => "not measured".into(),
            },
            t.against
                .as_ref()
                .map(|(v, n)| format!("{} ({n})", num(*v)))
                .unwrap_or("–".into()),
            match (t.value, share) {
                (Some(_), true) | (None, _) => "–".into(),
                (Some(v), false) => format!("{v:.2}x"),
            },
            t.wanted,
            match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    let clients = against_openconnect_pulse(report);
    if !clients.is_empty() {
        s.push_str("\n### Our client against openconnect's\n\nBoth through our gateway on the same transport, TCP 1 up (not one of the issue's targets: the gateway is ours on both sides, so this compares the clients).\n\n| ours | Gbit/s | openconnect | Gbit/s | ratio |\n|---|---:|---|---:|---:|\n");
        for (ours, oc, o, c) in clients {
            let ratio = if c > 0.0 {
                format!("{:.2}x", o / c)
            } else {
                "–".into()
            };
            let _ = writeln!(s, "| {ours} | {} | {oc} | {} | {ratio} |", num(o), num(c));
        }
    }
    s
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::tunnels::{Memory, Options, TestResult};

    pub fn t(id: &str, unit: &'static str, v: &[f64]) -> TestResult {
        TestResult {
            test: id.into(),
            unit,
            value: Some(Summary::of(v)),
            samples: v.to_vec(),
            runs: v.iter().copied().map(Some).collect(),
            ..Default::default()
        }
    }

    pub fn sys(name: &str, gbps: f64) -> SystemResult {
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
                    delivered_gateway: 693,
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
            baseline: None,
            idle_ab: None,
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
                "| ours-esp | 2.50 ±0.500 | 1.00 | – | – | 4.00 | 0 / 7 / 0 (1.0%) | tunneld 10.0 MiB |"
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

    /// Each target is judged against the right baseline of the same run; one whose systems
    /// were not measured is not judged.
    #[test]
    fn targets_are_judged_on_the_run() {
        let mut r = sample();
        r.systems.retain(|s| s.name != "boringtun");
        r.systems.push(sys("ours-esp-gcm", 6.0));
        r.systems.push(sys("ours-tls", 2.0));
        r.systems.push(sys("wireguard-go", 1.0));
        r.systems.push(sys("ocserv-tls", 1.2));
        r.systems.push(sys("oc-pulse-tls", 1.9));
        let t = targets(&r);
        let by = |what: &str| t.iter().find(|t| t.what.starts_with(what)).unwrap();
        let esp = by("ours-esp (Pulse");
        assert_eq!(
            esp.against.as_ref().unwrap().1,
            "ocserv-tls",
            "the fastest of the issue's baselines (openconnect's Pulse client is not one)"
        );
        assert!((esp.value.unwrap() - 0.5 / 1.2).abs() < 1e-9);
        assert_eq!(esp.met, Some(false));
        let gcm = by("ours-esp-gcm (AES");
        assert!((gcm.value.unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(gcm.met, Some(true), "5x is met");
        let tls = by("ours-tls");
        assert_eq!(tls.against.as_ref().unwrap().1, "ocserv-tls");
        assert_eq!(tls.met, Some(false), "2.0 / 1.2 < 2");
        assert_eq!(by("ours-esp idle").met, None, "boringtun not measured");
        let drops = by("ours-esp: UDP");
        assert!((drops.value.unwrap() - 0.01).abs() < 1e-9);
        assert_eq!(drops.met, Some(false), "1% is not under 1%");
        let md = markdown(&r);
        assert!(md.contains("| 5.00x | >= 5x | yes |"), "{md}");
        assert!(
            md.contains("| ours-tls | 2.00 | oc-pulse-tls | 1.90 | 1.05x |"),
            "our client against openconnect's: {md}"
        );
        assert!(
            md.contains(
                "| ours-esp idle RTT against boringtun's (ms) | 0.120 | – | – | <= 1x | – |"
            ),
            "unjudged without boringtun: {md}"
        );
    }

    /// The interleaved comparison is judged on its per-round ratios, not on the ratio of
    /// the medians; a system it lacks is not judged; a comparison that failed says why.
    #[test]
    fn interleaved_idle_rtt_is_judged_on_its_rounds() {
        let row = |name: &str, rounds_ms: Vec<f64>, ratio: f64| idle_ab::Row {
            name: name.into(),
            median_ms: crate::stats::median(&rounds_ms),
            rounds_ms,
            ratio,
            ratio_q1: ratio - 0.05,
            ratio_q3: ratio + 0.05,
        };
        let mut r = sample();
        r.idle_ab = Some(idle_ab::IdleAb {
            rounds: 3,
            pings_per_round: 100,
            baseline: "boringtun".into(),
            rows: vec![
                row("ours-esp", vec![0.25, 0.26, 0.24], 0.96),
                row("boringtun", vec![0.26, 0.27, 0.25], 1.0),
            ],
            error: None,
            one_cpu: Some(idle_ab::OneCpu {
                cpu: 1,
                rows: vec![
                    row("ours-esp", vec![0.24, 0.25, 0.23], 1.04),
                    row("boringtun", vec![0.23, 0.24, 0.22], 1.0),
                ],
                error: None,
            }),
        });
        let t = targets(&r);
        let esp = by_what(
            &t,
            "ours-esp idle RTT against boringtun's, interleaved rounds (ms)",
        );
        assert_eq!(esp.value, Some(0.96));
        assert_eq!(esp.met, Some(true));
        assert_eq!(esp.ours, Some(0.25));
        assert_eq!(esp.against, Some((0.26, "boringtun".into())));
        let gcm = by_what(
            &t,
            "ours-esp-gcm idle RTT against boringtun's, interleaved rounds (ms)",
        );
        assert_eq!(gcm.met, None, "not in the comparison, not judged");
        let pinned = by_what(
            &t,
            "ours-esp idle RTT against boringtun's, interleaved rounds on one CPU",
        );
        assert_eq!(pinned.value, Some(1.04));
        assert_eq!(pinned.met, Some(false));
        assert_eq!(pinned.against, Some((0.23, "boringtun".into())));
        let md = markdown(&r);
        assert!(
            md.contains("| ours-esp | 0.250 | 0.960 | 0.910-1.010 | 0.250 0.260 0.240 |"),
            "{md}"
        );
        assert!(
            md.contains("| ours-esp idle RTT against boringtun's, interleaved rounds (ms) | 0.250 | 0.260 (boringtun) | 0.96x | <= 1x | yes |"),
            "{md}"
        );
        assert!(md.contains("on CPU 1."), "{md}");
        assert!(
            md.contains("| ours-esp | 0.240 | 1.040 | 0.990-1.090 | 0.240 0.250 0.230 |"),
            "{md}"
        );
        assert!(
            md.contains("| ours-esp idle RTT against boringtun's, interleaved rounds on one CPU (ms) | 0.240 | 0.230 (boringtun) | 1.04x | <= 1x | **no** |"),
            "{md}"
        );
        r.idle_ab.as_mut().unwrap().error = Some("boringtun: login: timed out".into());
        r.idle_ab.as_mut().unwrap().rows.clear();
        let md = markdown(&r);
        assert!(
            md.contains("Not measured: boringtun: login: timed out"),
            "{md}"
        );
        assert_eq!(
            by_what(
                &targets(&r),
                "ours-esp idle RTT against boringtun's, interleaved"
            )
            .met,
            None
        );
    }

    fn by_what<'a>(t: &'a [Target], what: &str) -> &'a Target {
        t.iter().find(|t| t.what.starts_with(what)).unwrap()
    }

    #[test]
    fn the_summary_has_a_line_per_measured_system() {
        let md = summary(&sample());
        // Memory needs both sides: the sample has only the client's.
        assert!(
            md.contains(
                "| ours-esp | 0.500 ±0.050 | 0.500 | – | 0.025 | 120 | 0.120 / – | 2.50 + 1.00 | – | 0.400 | failed |"
            ),
            "{md}"
        );
        assert!(md.contains("| bare | 20.0 ±2.00 |"), "{md}");
        assert!(
            !md.contains("| boringtun"),
            "not measured, not summarised: {md}"
        );
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
