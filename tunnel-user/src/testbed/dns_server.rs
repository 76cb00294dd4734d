//! A real DNS server for the tests: dnsmasq (from apt, `cargo xtask setup` installs it) in a
//! namespace, answering fixed names and logging every query it gets.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use super::{Netns, client_world::Proc};

/// A running dnsmasq; stops when dropped.
pub struct DnsServer {
    _proc: Proc,
    log: PathBuf,
}

impl DnsServer {
    /// Serves `records` (name and everything under it -> address) on `listen`:53 in `ns`,
    /// nothing else (no upstream, no /etc/hosts), logging queries into `dir`.
    pub fn start(
        ns: &Netns,
        listen: IpAddr,
        records: &[(&str, IpAddr)],
        dir: &Path,
    ) -> std::io::Result<DnsServer> {
        let log = dir.join(format!("dnsmasq-{listen}.log"));
        let _ = fs::remove_file(&log);
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--log-queries",
        ])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--log-facility={}", log.display()))
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("dnsmasq-{listen}.pid")).display()
        ));
        for (name, addr) in records {
            cmd.arg(format!("--address=/{name}/{addr}"));
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let proc = Proc::new(child, "dnsmasq");
        let started = Instant::now();
        while !fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started")
        {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(std::io::Error::other(format!(
                    "dnsmasq on {listen} did not start: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(DnsServer { _proc: proc, log })
    }

    /// The queries it got so far: (name, from address).
    pub fn queries(&self) -> Vec<(String, String)> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("query[")?..];
                let mut words = rest.split_whitespace();
                let _kind = words.next()?;
                let name = words.next()?.to_string();
                let _from = words.next()?;
                Some((name, words.next()?.to_string()))
            })
            .collect()
    }
}
