//! A gateway under attack, in namespaces: the gateway, an honest client and an attacker
//! with many addresses of its own. The attack tests and the benchmark's `attacks` part run
//! here.
//!
//! ```text
//!  ┌──── client ─────────┐        ┌──────── gw ───────────┐        ┌──── attacker ────────────┐
//!  │ c0 192.168.70.2 ────┼─ veth ─┼─ g0 192.168.70.1       │        │ a0 192.168.71.2          │
//!  │ openconnect          │        │ tunnel-gateway :8443  │        │  + .10 - .209 (sources)  │
//!  └─────────────────────┘        │ ga0 192.168.71.1 ─────┼─ veth ─┼─ (192.168.70.0/24 via .1) │
//!                                 └────────────────────────┘        └──────────────────────────┘
//! ```
//!
//! The gateway's config uses only keys every version of it knows (so an older build can be
//! measured in the same world); what a caller adds (`[limits]`, ...) is appended.

use std::{
    fs, io,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{Netns, client_world::Proc, veth};
use crate::client::tls::Pin;

/// The gateway's address (what the client and the attacker connect to).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 1);
/// The gateway's TLS port.
pub const PORT: u16 = 8443;
/// The honest client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 2);
/// The user the client logs in as, and its password.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse";
/// How many source addresses the attacker has.
pub const SOURCES: usize = 200;

/// Source address `i` of the attacker (0 to [`SOURCES`] - 1).
pub fn source(i: usize) -> IpAddr {
    assert!(i < SOURCES, "the attacker has {SOURCES} addresses");
    IpAddr::V4(Ipv4Addr::new(192, 168, 71, 10 + i as u8))
}

/// The first `n` source addresses of the attacker.
pub fn sources(n: usize) -> Vec<IpAddr> {
    (0..n).map(source).collect()
}

/// The namespaces and files of the world (drawn in the module docs).
pub struct AttackWorld {
    pub dir: PathBuf,
    pub client: Netns,
    pub gw: Netns,
    pub attacker: Netns,
    /// The gateway certificate's pin.
    pub pin: Pin,
}

/// Why a timed login did not log in.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("starting openconnect: {0}")]
    Start(io::Error),
    #[error("openconnect failed ({status}): {said}")]
    Failed {
        status: std::process::ExitStatus,
        said: String,
    },
    #[error("openconnect did not finish within {0:?}")]
    Timeout(Duration),
}

impl AttackWorld {
    /// Builds the world; namespace and directory names carry `tag` and this process's id.
    pub fn build(tag: &str) -> io::Result<AttackWorld> {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("tunnel-attack-{tag}-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let client = Netns::create(&format!("tat{id}{tag}c"))?;
        let gw = Netns::create(&format!("tat{id}{tag}g"))?;
        let attacker = Netns::create(&format!("tat{id}{tag}a"))?;
        veth(&client, "c0", &gw, "g0")?;
        veth(&attacker, "a0", &gw, "ga0")?;
        client.sh(&format!("ip addr add {CLIENT}/24 dev c0"))?;
        gw.sh(&format!(
            "ip addr add {GATEWAY}/24 dev g0; ip addr add 192.168.71.1/24 dev ga0"
        ))?;
        let mut script = String::from("ip addr add 192.168.71.2/24 dev a0\n");
        for i in 0..SOURCES {
            script.push_str(&format!("ip addr add {}/24 dev a0\n", source(i)));
        }
        script.push_str("ip route add 192.168.70.0/24 via 192.168.71.1\n");
        attacker.sh(&script)?;
        for ns in [&client, &gw, &attacker] {
            ns.sh(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            )?;
        }
        // Room for the attacker's connections: every source has the whole port range.
        attacker.sh("sysctl -qw net.ipv4.ip_local_port_range='10000 65000'")?;

        let pin = super::pki::write_gateway_certificate(&dir, IpAddr::V4(GATEWAY))?;
        crate::gateway::add_user(
            &dir.join("users"),
            USER,
            &["Users".to_string()],
            PASSWORD.as_bytes(),
        )
        .map_err(io::Error::other)?;
        Ok(AttackWorld {
            dir,
            client,
            gw,
            attacker,
            pin,
        })
    }

    /// The gateway's TLS address.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(GATEWAY), PORT)
    }

    /// The gateway's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts gateway binary `bin` with the base config plus `extra` (TOML appended), its
    /// log truncated; waits until it runs.
    pub fn start_gateway(&self, bin: &Path, extra: &str) -> io::Result<Proc> {
        self.start_gateway_pool(bin, "10.77.0.0/20", "", false, extra)
    }

    /// [`AttackWorld::start_gateway`] with the client pool `pool` (an IPv4 prefix), the
    /// top-level keys `top`, and ESP on port 4500 when `esp`.
    pub fn start_gateway_pool(
        &self,
        bin: &Path,
        pool: &str,
        top: &str,
        esp: bool,
        extra: &str,
    ) -> io::Result<Proc> {
        let config = self.dir.join("gateway.toml");
        fs::write(
            &config,
            format!(
                "{top}\nlisten = \"{GATEWAY}:{PORT}\"\ntun_name = \"tgw0\"\nidle_timeout_secs = 600\n\n\
                 [tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n\n\
                 [auth]\nusers_file = \"users\"\npassword_request = \"legacy\"\n\n\
                 [pool]\nipv4 = \"{pool}\"\n\n\
                 [routes]\ninclude = [\"172.20.0.0/24\"]\n\n\
                 [esp]\nenabled = {esp}\n{extra}"
            ),
        )?;
        let log = fs::File::create(self.log_path())?;
        let child = self
            .gw
            .command(&bin.to_string_lossy())
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut p = Proc::new(child, "tunnel-gateway");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("gateway running") {
            if let Some(status) = p.exited() {
                return Err(io::Error::other(format!(
                    "the gateway exited ({status}): {}",
                    self.log().trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "the gateway did not start within 20 s: {}",
                    self.log().trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    /// One `openconnect --authenticate` login of [`USER`] from the client, as openconnect's
    /// users log in: how long it took to the cookie.
    pub fn openconnect_login(&self, timeout: Duration) -> Result<Duration, LoginError> {
        let started = Instant::now();
        let mut child = self
            .client
            .command("openconnect")
            .args([
                "--protocol=pulse",
                "--non-inter",
                "--authenticate",
                "--user",
                USER,
                "--passwd-on-stdin",
            ])
            .arg(format!("--servercert={}", self.pin))
            .arg(format!("https://{GATEWAY}:{PORT}/"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(LoginError::Start)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A closed pipe shows as openconnect's failure below.
            let _ = writeln!(stdin, "{PASSWORD}");
        }
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(started.elapsed()),
                Ok(Some(status)) => {
                    let mut said = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = io::Read::read_to_string(&mut e, &mut said);
                    }
                    let said = said.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    return Err(LoginError::Failed { status, said });
                }
                Ok(None) if started.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LoginError::Timeout(timeout));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(LoginError::Start(e)),
            }
        }
    }

    /// Whether openconnect is installed.
    pub fn has_openconnect() -> bool {
        Command::new("openconnect")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for AttackWorld {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
