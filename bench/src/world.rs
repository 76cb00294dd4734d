//! The namespace world every tunnel system is measured in (drawn in `main.rs`): client,
//! gateway, corp (behind the gateway, reached only through a tunnel) and an excluded server
//! (reached directly through the gateway's routing). Built once per run; each system adds its
//! own devices and processes and removes them again. Everything is removed on drop.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use sha2::Digest as _;
use tunnel_user::testbed::{Netns, client_world::Proc, veth};

/// The gateway's LAN address (what the clients connect to).
pub const GATEWAY: &str = "192.168.70.1";
/// The client's LAN address.
pub const CLIENT_LAN: &str = "192.168.70.2";
/// The corp server: only reachable through a tunnel (the bare system adds a route).
pub const CORP: &str = "172.20.0.2";
pub const CORP_NET: &str = "172.20.0.0/24";
/// The excluded server: inside a range our gateway includes, but excluded from it.
pub const EXCLUDED: &str = "198.51.100.10";
pub const EXCLUDED_NET: &str = "198.51.100.0/24";
/// Port of the corp server that answers with the address it saw.
pub const WHOAMI_PORT: u16 = 9000;
/// iperf3 servers' port (corp and excluded).
pub const IPERF_PORT: u16 = 5201;
/// The password of user `alice` on every gateway.
pub const PASSWORD: &str = "s3cret-bench";

pub struct World {
    // Declared first so the servers stop before their namespaces go.
    iperf: Vec<Proc>,
    pub client: Netns,
    pub gw: Netns,
    pub corp: Netns,
    pub excluded: Netns,
    /// Scratch directory: certificates, configs, logs.
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `pin-sha256:...` of the gateway certificate.
    pub pin: String,
}

impl World {
    pub fn build() -> Result<World> {
        Self::build_tagged("")
    }

    /// Another world beside the first: `tag` goes into its namespace and directory names,
    /// so several can be up at once (the interleaved idle-RTT comparison).
    pub fn build_tagged(tag: &str) -> Result<World> {
        let id = format!("{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("tunnel-bench-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let client = Netns::create(&format!("bn{id}c"))?;
        let gw = Netns::create(&format!("bn{id}g"))?;
        let corp = Netns::create(&format!("bn{id}x"))?;
        let excluded = Netns::create(&format!("bn{id}e"))?;
        veth(&client, "c0", &gw, "g0")?;
        veth(&gw, "gx0", &corp, "x0")?;
        veth(&gw, "ge0", &excluded, "e0")?;
        client.sh(&format!(
            "ip addr add {CLIENT_LAN}/24 dev c0; ip route add {EXCLUDED_NET} via {GATEWAY}"
        ))?;
        gw.sh(&format!(
            "ip addr add {GATEWAY}/24 dev g0; ip addr add 172.20.0.1/24 dev gx0; \
             ip addr add 198.51.100.1/24 dev ge0; sysctl -qw net.ipv4.ip_forward=1"
        ))?;
        corp.sh(&format!(
            "ip addr add {CORP}/24 dev x0; ip route add default via 172.20.0.1"
        ))?;
        excluded.sh(&format!(
            "ip addr add {EXCLUDED}/24 dev e0; ip route add default via 198.51.100.1"
        ))?;
        // No IPv6 anywhere: router solicitations and DAD would only add noise.
        for ns in [&client, &gw, &corp, &excluded] {
            ns.sh(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            )?;
        }
        whoami(&corp, CORP)?;
        let mut iperf = Vec::new();
        for ns in [&corp, &excluded] {
            iperf.push(iperf_server(ns)?);
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["gw.bench".to_string()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(GATEWAY.parse()?));
        let cert = params.self_signed(&key)?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        fs::write(&cert_path, cert.pem())?;
        fs::write(&key_path, key.serialize_pem())?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let pin = format!(
            "pin-sha256:{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&spki))
        );
        // Workers of some servers drop privileges and still read these.
        let _ = std::process::Command::new("chmod")
            .arg("-R")
            .arg("a+rX")
            .arg(&dir)
            .status();
        Ok(World {
            iperf,
            client,
            gw,
            corp,
            excluded,
            dir,
            cert: cert_path,
            key: key_path,
            pin,
        })
    }

    /// Restarts the iperf3 servers (after a run that may have left one stuck).
    pub fn restart_iperf(&mut self) -> Result<()> {
        self.iperf.clear();
        for ns in [&self.corp, &self.excluded] {
            self.iperf.push(iperf_server(ns)?);
        }
        Ok(())
    }

    /// Connects from the client to corp's whoami server and returns the address corp saw.
    pub fn corp_sees(&self, timeout: Duration) -> Option<String> {
        let to: SocketAddr = format!("{CORP}:{WHOAMI_PORT}").parse().ok()?;
        self.client
            .enter(move || {
                let mut s = TcpStream::connect_timeout(&to, timeout).ok()?;
                s.set_read_timeout(Some(timeout)).ok()?;
                let mut line = String::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && b[0] != b'\n' {
                    line.push(b[0] as char);
                }
                (!line.is_empty()).then_some(line)
            })
            .ok()
            .flatten()
    }

    /// Waits until a TCP connection from the client reaches corp through a tunnel (corp sees
    /// an address other than the client's LAN address); returns how long that took. Gives
    /// up early when `gone` says the client has ended.
    pub fn wait_tunnelled(
        &self,
        timeout: Duration,
        mut gone: impl FnMut() -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            match self.corp_sees(Duration::from_millis(300)) {
                Some(a) if a != CLIENT_LAN => return Ok(start.elapsed()),
                other => last = other,
            }
            if gone() {
                bail!(
                    "the client ended after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match last {
            Some(a) => bail!("corp saw {a}: not through a tunnel"),
            None => bail!("no TCP connection reached corp within {timeout:?}"),
        }
    }

    /// A log file in the scratch directory, created or truncated.
    pub fn log(&self, name: &str) -> Result<fs::File> {
        fs::File::create(self.dir.join(name)).with_context(|| format!("creating log {name}"))
    }

    pub fn read_log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The last lines of a log, for error messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = self.read_log(name);
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.iperf.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn iperf_server(ns: &Netns) -> Result<Proc> {
    let child = ns
        .command("iperf3")
        .args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let p = Proc::new(child, "iperf3 -s");
    // Ready when it accepts (the probe connection is closed at once; iperf3 ignores it).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if ns
            .sh(&format!(
                "grep -qE ':{:04X} [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6",
                IPERF_PORT
            ))
            .is_ok()
        {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("iperf3 -s did not listen in {}", ns.name())
}

/// A server that writes the peer address it saw, then closes.
fn whoami(ns: &Netns, addr: &str) -> Result<()> {
    let bind: SocketAddr = format!("{addr}:{WHOAMI_PORT}").parse()?;
    let listener = ns.enter(move || TcpListener::bind(bind))??;
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(format!("{peer}\n").as_bytes());
        }
    });
    Ok(())
}
