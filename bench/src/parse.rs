//! Parsers for what the measuring tools print: iperf3's `-J` JSON, ping's replies, and the
//! kernel's `/proc/net/snmp`, `/proc/net/snmp6`, `/proc/stat`, `/proc/PID/stat` and
//! `/proc/PID/status`. Pure functions over text, tested with samples captured on this
//! machine (`bench/testdata/`).

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// The parts of an iperf3 client's `-J` output the harness uses.
#[derive(Debug, Deserialize)]
struct IperfJson {
    #[serde(default)]
    error: Option<String>,
    end: Option<IperfEnd>,
}

#[derive(Debug, Deserialize)]
struct IperfEnd {
    sum_received: Option<IperfSum>,
    sum_sent: Option<IperfSum>,
    /// UDP: the sender's view with the receiver's loss count filled in.
    sum: Option<IperfSum>,
}

#[derive(Debug, Deserialize)]
struct IperfSum {
    seconds: f64,
    bytes: u64,
    bits_per_second: f64,
    #[serde(default)]
    retransmits: Option<u64>,
    #[serde(default)]
    packets: Option<u64>,
    #[serde(default)]
    lost_packets: Option<u64>,
}

/// A TCP run as the receiver saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TcpResult {
    pub gbps: f64,
    /// Payload bytes that arrived.
    pub bytes: u64,
    pub seconds: f64,
    pub retransmits: u64,
}

/// A UDP run: what was sent and what arrived.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UdpResult {
    pub sent: u64,
    pub lost: u64,
    pub seconds: f64,
    /// Payload bytes that arrived.
    pub bytes_received: u64,
}

impl UdpResult {
    pub fn received(&self) -> u64 {
        self.sent.saturating_sub(self.lost)
    }
    pub fn received_pps(&self) -> f64 {
        self.received() as f64 / self.seconds
    }
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.lost as f64 / self.sent as f64
    }
}

fn iperf(json: &str) -> Result<IperfEnd> {
    let v: IperfJson = serde_json::from_str(json).context("iperf3 JSON")?;
    if let Some(e) = v.error {
        bail!("iperf3: {e}");
    }
    v.end.context("iperf3 JSON has no end section")
}

/// A TCP run (either direction: `sum_received` is always the receiving end).
pub fn iperf_tcp(json: &str) -> Result<TcpResult> {
    let end = iperf(json)?;
    let r = end
        .sum_received
        .context("iperf3 JSON has no sum_received")?;
    let retransmits = end.sum_sent.and_then(|s| s.retransmits).unwrap_or(0);
    Ok(TcpResult {
        gbps: r.bits_per_second / 1e9,
        bytes: r.bytes,
        seconds: r.seconds,
        retransmits,
    })
}

/// A UDP run from the sending client's JSON (the server reports its loss count back).
pub fn iperf_udp(json: &str) -> Result<UdpResult> {
    let end = iperf(json)?;
    let s = end.sum.context("iperf3 UDP JSON has no sum")?;
    let sent = s.packets.context("iperf3 UDP sum has no packets")?;
    let lost = s
        .lost_packets
        .context("iperf3 UDP sum has no lost_packets")?;
    let bytes_received = end.sum_received.map(|r| r.bytes).unwrap_or_else(|| {
        // Older iperf3: estimate from the datagram size.
        let size = s.bytes.checked_div(sent).unwrap_or(0);
        size * sent.saturating_sub(lost)
    });
    Ok(UdpResult {
        sent,
        lost,
        seconds: s.seconds,
        bytes_received,
    })
}

/// Round-trip times in ms, one per reply line of iputils `ping` ("... time=0.041 ms"),
/// and how many requests it says it sent.
pub fn ping(output: &str) -> Result<(Vec<f64>, u64)> {
    let mut rtts = Vec::new();
    let mut transmitted = None;
    for line in output.lines() {
        if let Some(i) = line.find(" time=") {
            let rest = &line[i + " time=".len()..];
            let num = rest.split_whitespace().next().unwrap_or("");
            let ms: f64 = num
                .parse()
                .with_context(|| format!("ping: bad time in {line:?}"))?;
            // "time=1.23 s" never happens at these rates, but keep units honest.
            let unit = rest.split_whitespace().nth(1).unwrap_or("ms");
            rtts.push(if unit == "s" { ms * 1e3 } else { ms });
        } else if let Some((n, _)) = line.split_once(" packets transmitted") {
            transmitted = Some(n.trim().parse().context("ping: transmitted count")?);
        }
    }
    let transmitted = transmitted.context("ping printed no statistics line")?;
    Ok((rtts, transmitted))
}

/// The column `name` (`InDatagrams`, `RcvbufErrors`, ...) of `Udp` in /proc/net/snmp.
pub fn snmp_udp(snmp: &str, name: &str) -> Result<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let header = lines.next().context("no Udp header in /proc/net/snmp")?;
    let values = lines.next().context("no Udp values in /proc/net/snmp")?;
    let col = header
        .split_whitespace()
        .position(|f| f == name)
        .with_context(|| format!("no {name} column"))?;
    values
        .split_whitespace()
        .nth(col)
        .context("short Udp line")?
        .parse()
        .with_context(|| format!("{name} value"))
}

/// The counter `name` (`Udp6InDatagrams`, `Udp6RcvbufErrors`, ...) in /proc/net/snmp6 (0
/// when IPv6 is off and the line absent).
pub fn snmp6_udp(snmp6: &str, name: &str) -> Result<u64> {
    for line in snmp6.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some(name) {
            return f
                .next()
                .with_context(|| format!("{name} without value"))?
                .parse()
                .with_context(|| format!("{name} value"));
        }
    }
    Ok(0)
}

/// What the harness needs from /proc/PID/stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidStat {
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last ')'.
pub fn pid_stat(stat: &str) -> Result<PidStat> {
    let close = stat.rfind(')').context("/proc/PID/stat without ')'")?;
    // After ')': state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9) minflt(10)
    // cminflt(11) majflt(12) cmajflt(13) utime(14) stime(15).
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        f.get(n - 3)
            .with_context(|| format!("/proc/PID/stat has no field {n}"))?
            .parse()
            .with_context(|| format!("/proc/PID/stat field {n}"))
    };
    Ok(PidStat {
        ppid: u32::try_from(field(4)?).context("ppid")?,
        cpu_ticks: field(14)? + field(15)?,
    })
}

/// `VmHWM` (peak resident set) from /proc/PID/status, in KiB.
pub fn status_vm_hwm_kib(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/PID/status")?;
    line["VmHWM:".len()..]
        .split_whitespace()
        .next()
        .context("VmHWM without value")?
        .parse()
        .context("VmHWM value")
}

/// Busy and total clock ticks of all CPUs from /proc/stat's `cpu` line (busy = total minus
/// idle and iowait).
pub fn proc_stat_cpu(stat: &str) -> Result<(u64, u64)> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().context("/proc/stat value"))
        .collect::<Result<_>>()?;
    if v.len() < 5 {
        bail!("short cpu line in /proc/stat");
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    Ok((total - v[3] - v[4], total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP4: &str = include_str!("../testdata/iperf3-tcp-4streams.json");
    const TCP_REVERSE: &str = include_str!("../testdata/iperf3-tcp-reverse.json");
    const UDP: &str = include_str!("../testdata/iperf3-udp.json");

    #[test]
    fn iperf_tcp_sample() {
        let r = iperf_tcp(TCP4).unwrap();
        assert_eq!(r.bytes, 435_159_040);
        assert!((r.gbps - 3.396_648_226).abs() < 1e-6, "{r:?}");
        assert!((r.seconds - 1.024_914).abs() < 1e-9);
        let r = iperf_tcp(TCP_REVERSE).unwrap();
        assert_eq!(r.bytes, 450_035_447);
        assert_eq!(r.retransmits, 8);
    }

    #[test]
    fn iperf_udp_sample() {
        let r = iperf_udp(UDP).unwrap();
        assert_eq!((r.sent, r.lost), (66_010, 50_948));
        assert_eq!(r.received(), 15_062);
        assert_eq!(r.bytes_received, 542_232);
        assert!((r.received_pps() - 15_062.0 / 1.015_584).abs() < 1e-6);
        assert!((r.loss() - 0.771_822).abs() < 1e-6);
    }

    #[test]
    fn iperf_error() {
        let e = iperf_tcp(r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert!(iperf_tcp("not json").is_err());
        assert!(iperf_udp(TCP4).is_err(), "a TCP result is not a UDP result");
    }

    #[test]
    fn ping_sample() {
        let (rtts, sent) = ping(include_str!("../testdata/ping.txt")).unwrap();
        assert_eq!(sent, 5);
        assert_eq!(rtts, vec![0.352, 0.041, 0.046, 0.040, 0.048]);
        let lossy = "PING 1.2.3.4 (1.2.3.4) 56(84) bytes of data.\n64 bytes from 1.2.3.4: icmp_seq=2 ttl=63 time=1.5 ms\n\n--- 1.2.3.4 ping statistics ---\n3 packets transmitted, 1 received, 66.6667% packet loss, time 20ms\n";
        assert_eq!(ping(lossy).unwrap(), (vec![1.5], 3));
        assert!(ping("ping: connect: Network is unreachable\n").is_err());
    }

    #[test]
    fn snmp_samples() {
        let snmp = include_str!("../testdata/proc-net-snmp");
        assert_eq!(snmp_udp(snmp, "RcvbufErrors").unwrap(), 50_948);
        assert_eq!(snmp_udp(snmp, "InDatagrams").unwrap(), 15_064);
        let snmp6 = include_str!("../testdata/proc-net-snmp6");
        assert_eq!(snmp6_udp(snmp6, "Udp6RcvbufErrors").unwrap(), 0);
        let two = "Udp6InDatagrams 5\nUdp6RcvbufErrors 17\n";
        assert_eq!(snmp6_udp(two, "Udp6RcvbufErrors").unwrap(), 17);
        assert_eq!(snmp6_udp(two, "Udp6InDatagrams").unwrap(), 5);
        assert_eq!(snmp6_udp("", "Udp6RcvbufErrors").unwrap(), 0);
        assert!(snmp_udp("Ip: Forwarding\nIp: 1\n", "RcvbufErrors").is_err());
        assert!(snmp_udp(snmp, "NoSuchColumn").is_err());
    }

    #[test]
    fn pid_stat_sample() {
        let s = pid_stat(include_str!("../testdata/proc-pid-stat")).unwrap();
        assert!(s.ppid > 0);
        // A name with spaces and a parenthesis does not shift the fields.
        let odd = "42 (we ird) name) S 7 42 42 0 -1 4194304 100 0 0 0 25 17 0 0 20 0 1 0 1 1 1";
        assert_eq!(
            pid_stat(odd).unwrap(),
            PidStat {
                ppid: 7,
                cpu_ticks: 42
            }
        );
        assert!(pid_stat("42 (x) S 7").is_err());
    }

    #[test]
    fn status_sample() {
        let kib = status_vm_hwm_kib(include_str!("../testdata/proc-pid-status")).unwrap();
        assert!(kib > 0);
        assert_eq!(
            status_vm_hwm_kib("Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\n").unwrap(),
            2048
        );
        assert!(status_vm_hwm_kib("Name:\tkthreadd\n").is_err());
    }

    #[test]
    fn proc_stat_sample() {
        let (busy, total) =
            proc_stat_cpu("cpu  493859 0 82740 973726 8179 0 5790 20051 0 0\ncpu0 1 2 3 4\n")
                .unwrap();
        assert_eq!(total, 493_859 + 82_740 + 973_726 + 8_179 + 5_790 + 20_051);
        assert_eq!(busy, total - 973_726 - 8_179);
    }
}
