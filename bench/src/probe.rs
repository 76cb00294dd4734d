//! Running the measuring tools and reading the kernel's counters: iperf3 and ping inside the
//! client namespace with a wall-clock limit, CPU time of process trees, peak memory, UDP
//! receive-buffer drops per namespace, and the machine's busy time.

use std::{
    fs,
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tunnel_user::testbed::Netns;

use crate::parse;

/// Runs `cmd`, killing it after `limit`; returns its stdout. Fails with the start of its
/// output when it fails or runs too long.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    // Pipes are drained on threads so a chatty child never blocks on a full pipe.
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        None => bail!(
            "{} ran longer than {limit:?}",
            cmd.get_program().to_string_lossy()
        ),
        Some(s) if !s.success() && out.trim().is_empty() => {
            bail!("{s}: {}", first_line(&err))
        }
        // iperf3 -J reports its errors in the JSON (and exits 1): the caller parses it.
        Some(_) => Ok(out),
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// What an iperf3 run asks for.
#[derive(Clone, Copy, Debug)]
pub enum Iperf {
    Tcp { streams: u32, reverse: bool },
    Udp { payload: u32 },
}

/// Runs iperf3 from the client namespace against `server` for `seconds`.
pub fn iperf(client: &Netns, server: &str, kind: Iperf, seconds: u32) -> Result<String> {
    let mut cmd = client.command("iperf3");
    cmd.args(["-c", server, "-p", &crate::world::IPERF_PORT.to_string()])
        .args([
            "-t",
            &seconds.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ]);
    match kind {
        Iperf::Tcp { streams, reverse } => {
            cmd.args(["-P", &streams.to_string()]);
            if reverse {
                cmd.arg("-R");
            }
        }
        Iperf::Udp { payload } => {
            // -b 0: as fast as the sender can; what arrives is the measurement.
            cmd.args(["-u", "-b", "0", "-l", &payload.to_string()]);
        }
    }
    output_within(&mut cmd, Duration::from_secs(u64::from(seconds) + 20))
}

/// `count` ICMP echoes 10 ms apart from the client to `dst`; ping's output. With `cpu`,
/// ping runs on that CPU alone.
pub fn ping(client: &Netns, dst: &str, count: u32, cpu: Option<usize>) -> Result<String> {
    let mut cmd = client.command("ping");
    cmd.args(["-n", "-i", "0.01", "-W", "1", "-c", &count.to_string(), dst]);
    if let Some(cpu) = cpu {
        use std::os::unix::process::CommandExt as _;
        let set = cpu_set(Some(cpu));
        // SAFETY: between fork and exec the closure makes one system call on a set built
        // before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || set_affinity(0, &set));
        }
    }
    output_within(&mut cmd, Duration::from_secs(u64::from(count) / 50 + 15))
}

/// Puts every thread of `pids` and of their descendants on `cpu` alone, or (None) back on
/// every CPU the harness may use. Threads they start later inherit it from the thread that
/// starts them.
pub fn pin_processes(pids: &[u32], cpu: Option<usize>) -> Result<()> {
    let set = cpu_set(cpu);
    for &pid in pids {
        for p in process_tree(pid) {
            let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
                continue; // gone meanwhile
            };
            for t in tasks.flatten() {
                if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                    // A thread that ended meanwhile (ESRCH) needs no CPU.
                    match set_affinity(tid, &set) {
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        r => r.with_context(|| format!("CPU affinity of thread {tid} of {p}"))?,
                    }
                }
            }
        }
    }
    Ok(())
}

/// The CPUs the harness may run on (its own affinity), in increasing order.
pub fn allowed_cpus() -> Vec<usize> {
    let set = cpu_set(None);
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: c is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// The set of `cpu` alone, or (None) of every CPU the harness may run on. A CPU beyond the
/// set's size, or an affinity that cannot be read, gives the empty set, which
/// `sched_setaffinity` refuses (EINVAL).
fn cpu_set(cpu: Option<usize>) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    match cpu {
        None => {
            // SAFETY: the kernel fills a set of the size passed; on failure it stays empty.
            if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } < 0 {
                // SAFETY: as above.
                set = unsafe { std::mem::zeroed() };
            }
        }
        // SAFETY: c is below CPU_SETSIZE.
        Some(c) if c < libc::CPU_SETSIZE as usize => unsafe { libc::CPU_SET(c, &mut set) },
        Some(_) => {}
    }
    set
}

/// `sched_setaffinity` of thread `tid` (0: the caller) to `set`.
fn set_affinity(tid: i32, set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: a valid set of the size passed.
    if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), set) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `pid` and all its descendants (servers that fork workers are measured as a whole).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(s) = fs::read_to_string(format!("/proc/{p}/stat"))
                && let Ok(st) = parse::pid_stat(&s)
            {
                parents.push((p, st.ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU seconds of these processes (and their threads) so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| parse::pid_stat(&s).ok())
        .map(|s| s.cpu_ticks)
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

/// Busy CPU seconds of the whole machine so far (all cores, kernel included).
pub fn machine_busy_seconds() -> Result<f64> {
    let (busy, _) = parse::proc_stat_cpu(&fs::read_to_string("/proc/stat")?)?;
    Ok(busy as f64 / clock_ticks_per_second())
}

/// Peak resident memory of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    parse::status_vm_hwm_kib(&fs::read_to_string(format!("/proc/{pid}/status"))?)
}

/// The process's command name.
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| pid.to_string())
}

/// UDP datagrams delivered to sockets and dropped for want of receive buffer, in a
/// namespace (IPv4 and IPv6 together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounters {
    pub delivered: u64,
    pub rcvbuf_drops: u64,
}

/// The namespace's [`UdpCounters`] now.
pub fn udp_counters(ns: &Netns) -> Result<UdpCounters> {
    let v4 = ns.sh("cat /proc/net/snmp")?;
    let v6 = ns.sh("cat /proc/net/snmp6 2>/dev/null || true")?;
    Ok(UdpCounters {
        delivered: parse::snmp_udp(&v4, "InDatagrams")? + parse::snmp6_udp(&v6, "Udp6InDatagrams")?,
        rcvbuf_drops: parse::snmp_udp(&v4, "RcvbufErrors")?
            + parse::snmp6_udp(&v6, "Udp6RcvbufErrors")?,
    })
}

/// The MTU of `iface` in `ns`, if it exists.
pub fn mtu(ns: &Netns, iface: &str) -> Option<u32> {
    // Not /sys/class/net: nsenter keeps the host's sysfs, which shows the host's devices.
    let line = ns.sh(&format!("ip -o link show dev {iface}")).ok()?;
    let mut f = line.split_whitespace();
    f.find(|w| *w == "mtu")?;
    f.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process pinned to one CPU runs there alone, and is given every CPU back after; a
    /// thread that does not exist is refused.
    #[test]
    fn pinning_a_process_and_giving_it_back() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let cpus_of = |pid: u32| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string()
        };
        let last = *cpus.last().unwrap();
        pin_processes(&[child.id()], Some(last)).unwrap();
        assert_eq!(cpus_of(child.id()), last.to_string());
        pin_processes(&[child.id()], None).unwrap();
        assert_eq!(cpus_of(child.id()), cpus_of(std::process::id()));
        assert!(set_affinity(i32::MAX, &cpu_set(Some(last))).is_err());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
