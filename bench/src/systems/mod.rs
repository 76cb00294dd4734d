//! The systems measured: a gateway side and a client side each, set up in the [`World`] and
//! torn down again. [`all`] is the list (and its order is the report's).
//!
//! A system that cannot be installed or set up is reported with the reason; nothing is
//! silently left out.

mod openconnect;
mod ours;
mod wireguard;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tunnel_user::testbed::{Netns, client_world::Proc};

use crate::world::{CORP_NET, GATEWAY, World};

/// Where things the systems need are.
pub struct Ctx {
    /// Release binaries of this tree (`tunnel-gateway`, `tunneld`, `tunnel`).
    pub bin_dir: PathBuf,
    /// `cargo install --root` for tools from crates.io.
    pub tools: PathBuf,
    /// This tree's revision, for the report.
    pub revision: String,
    /// The revision of the tree whose systems run beside ours (`crate::baseline`).
    pub baseline: Option<String>,
}

/// A gateway side.
pub trait Gateway {
    /// Installs what is missing; the version string, or why it is not available.
    fn prepare(&mut self, ctx: &Ctx) -> Result<String>;
    fn start(&mut self, w: &World) -> Result<()>;
    /// Kills it as a crash would: SIGKILL to its whole process group.
    fn kill(&mut self, w: &World) -> Result<()>;
    /// Stops it (politely) and removes what it set up.
    fn stop(&mut self, w: &World);
    /// Root processes (their descendants count too).
    fn pids(&self) -> Vec<u32>;
}

/// A client side.
pub trait Client {
    fn prepare(&mut self, ctx: &Ctx) -> Result<String>;
    /// Connects; returns when the login began (what comes before, such as starting a
    /// daemon that would already run on a real machine, is not login time).
    fn start(&mut self, w: &World) -> Result<Instant>;
    /// Disconnects (logging out) and removes what it set up.
    fn stop(&mut self, w: &World);
    /// Checks the data path uses the transport this system stands for (waiting a little for
    /// it to come up) and describes it.
    fn transport(&mut self, w: &World) -> Result<String>;
    /// The client's tunnel device, for its MTU.
    fn device(&self, w: &World) -> Option<String>;
    fn pids(&self) -> Vec<u32>;
    /// What the client says about itself (for failure reports): exit status, log tail.
    fn state(&mut self, w: &World) -> String;
    /// Whether the client has ended (then waiting for it is pointless).
    fn gone(&mut self) -> bool;
}

/// What the runner needs of a system.
pub trait System {
    fn name(&self) -> &str;
    /// One line on what it is.
    fn about(&self) -> String;
    /// Installs what is missing; versions, or why it is not available.
    fn prepare(&mut self, ctx: &Ctx) -> Result<String>;
    fn start_gateway(&mut self, w: &World) -> Result<()>;
    fn kill_gateway(&mut self, w: &World) -> Result<()>;
    /// Connects the client; when the login began.
    fn start_client(&mut self, w: &World) -> Result<Instant>;
    fn stop_client(&mut self, w: &World);
    fn transport(&mut self, w: &World) -> Result<String>;
    fn device(&self, w: &World) -> Option<String>;
    /// The client's own account of its state, for failure reports.
    fn client_state(&mut self, w: &World) -> String;
    /// Whether the client process has ended.
    fn client_gone(&mut self) -> bool;
    fn client_pids(&self) -> Vec<u32>;
    fn gateway_pids(&self) -> Vec<u32>;
    /// Whether there is a tunnel at all (login, reconnect and CPU apply).
    fn tunnelled(&self) -> bool {
        true
    }
    /// Whether the path to the excluded server is measured: for systems whose split-tunnel
    /// policy excludes it, and for the bare veth as their baseline.
    fn splits(&self) -> bool {
        false
    }
    /// Stops everything (client first).
    fn teardown(&mut self, w: &World);
}

/// A gateway and a client.
pub struct Tunnel<G, C> {
    name: String,
    about: String,
    splits: bool,
    gateway: G,
    client: C,
}

impl<G: Gateway, C: Client> System for Tunnel<G, C> {
    fn name(&self) -> &str {
        &self.name
    }
    fn about(&self) -> String {
        self.about.clone()
    }
    fn prepare(&mut self, ctx: &Ctx) -> Result<String> {
        let g = self.gateway.prepare(ctx).context("gateway")?;
        let c = self.client.prepare(ctx).context("client")?;
        Ok(if g == c { g } else { format!("{c} / {g}") })
    }
    fn start_gateway(&mut self, w: &World) -> Result<()> {
        self.gateway.start(w)
    }
    fn kill_gateway(&mut self, w: &World) -> Result<()> {
        self.gateway.kill(w)
    }
    fn start_client(&mut self, w: &World) -> Result<Instant> {
        self.client.start(w)
    }
    fn stop_client(&mut self, w: &World) {
        self.client.stop(w)
    }
    fn transport(&mut self, w: &World) -> Result<String> {
        self.client.transport(w)
    }
    fn device(&self, w: &World) -> Option<String> {
        self.client.device(w)
    }
    fn client_state(&mut self, w: &World) -> String {
        self.client.state(w)
    }
    fn client_gone(&mut self) -> bool {
        self.client.gone()
    }
    fn client_pids(&self) -> Vec<u32> {
        self.client.pids()
    }
    fn gateway_pids(&self) -> Vec<u32> {
        self.gateway.pids()
    }
    fn splits(&self) -> bool {
        self.splits
    }
    fn teardown(&mut self, w: &World) {
        self.client.stop(w);
        self.gateway.stop(w);
    }
}

fn tunnel<G: Gateway + 'static, C: Client + 'static>(
    name: &str,
    about: &str,
    gateway: G,
    client: C,
) -> Box<dyn System> {
    Box::new(Tunnel {
        name: name.to_string(),
        about: about.to_string(),
        splits: false,
        gateway,
        client,
    })
}

/// No tunnel: the client reaches corp through the gateway's routing. The ceiling.
pub struct Bare;

impl System for Bare {
    fn name(&self) -> &str {
        "bare"
    }
    fn about(&self) -> String {
        "routed veth, no tunnel: the ceiling".into()
    }
    fn prepare(&mut self, _: &Ctx) -> Result<String> {
        Ok(format!("kernel {}", kernel_release()))
    }
    fn start_gateway(&mut self, _: &World) -> Result<()> {
        Ok(())
    }
    fn kill_gateway(&mut self, _: &World) -> Result<()> {
        Ok(())
    }
    fn start_client(&mut self, w: &World) -> Result<Instant> {
        let t = Instant::now();
        w.client
            .sh(&format!("ip route replace {CORP_NET} via {GATEWAY}"))?;
        Ok(t)
    }
    fn stop_client(&mut self, w: &World) {
        let _ = w
            .client
            .sh(&format!("ip route del {CORP_NET} via {GATEWAY}"));
    }
    fn transport(&mut self, _: &World) -> Result<String> {
        Ok("routing".into())
    }
    fn device(&self, _: &World) -> Option<String> {
        Some("c0".into())
    }
    fn client_state(&mut self, _: &World) -> String {
        String::new()
    }
    fn client_gone(&mut self) -> bool {
        false
    }
    fn client_pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn gateway_pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn tunnelled(&self) -> bool {
        false
    }
    fn splits(&self) -> bool {
        true
    }
    fn teardown(&mut self, w: &World) {
        self.stop_client(w);
    }
}

/// Our tunnel with ESP using `cipher` (one of the gateway's `esp.ciphers` names).
fn ours_esp(name: &str, cipher: &'static str) -> Box<dyn System> {
    Box::new(Tunnel {
        name: name.to_string(),
        about: format!("tunneld + tunnel-gateway, ESP {cipher}"),
        splits: true,
        gateway: ours::OurGateway::new(Some(cipher)),
        client: ours::Tunneld::new("esp"),
    })
}

/// Every system, in report order. A new ESP suite of ours is one more `ours_esp` line.
pub fn all() -> Vec<Box<dyn System>> {
    vec![
        Box::new(Bare),
        ours_esp("ours-esp", "aes128-sha1"),
        ours_esp("ours-esp-gcm", "aes256-gcm"),
        Box::new(Tunnel {
            name: "ours-tls".into(),
            about: "tunneld + tunnel-gateway, IF-T over TLS (ESP off)".into(),
            splits: true,
            gateway: ours::OurGateway::new(None),
            client: ours::Tunneld::new("tls"),
        }),
        tunnel(
            "oc-pulse-esp",
            "openconnect --protocol=pulse -> tunnel-gateway, ESP aes128-sha1",
            ours::OurGateway::new(Some("aes128-sha1")),
            openconnect::Openconnect::pulse(true),
        ),
        tunnel(
            "oc-pulse-tls",
            "openconnect --protocol=pulse --no-dtls -> tunnel-gateway, TLS",
            ours::OurGateway::new(Some("aes128-sha1")),
            openconnect::Openconnect::pulse(false),
        ),
        tunnel(
            "ocserv-dtls",
            "openconnect --protocol=anyconnect -> ocserv, DTLS",
            openconnect::Ocserv::default(),
            openconnect::Openconnect::anyconnect(true),
        ),
        tunnel(
            "ocserv-tls",
            "openconnect --protocol=anyconnect --no-dtls -> ocserv, TLS",
            openconnect::Ocserv::default(),
            openconnect::Openconnect::anyconnect(false),
        ),
        tunnel(
            "wireguard-go",
            "wireguard-go (Debian) on both ends",
            wireguard::Wg::gateway(wireguard::Impl::Go),
            wireguard::Wg::client(wireguard::Impl::Go),
        ),
        tunnel(
            "boringtun",
            "boringtun-cli (crates.io) on both ends",
            wireguard::Wg::gateway(wireguard::Impl::Boringtun),
            wireguard::Wg::client(wireguard::Impl::Boringtun),
        ),
        tunnel(
            "gotatun",
            "gotatun-cli (Mullvad's GotaTun, crates.io) on both ends",
            wireguard::Wg::gateway(wireguard::Impl::Gotatun),
            wireguard::Wg::client(wireguard::Impl::Gotatun),
        ),
    ]
}

/// The systems named, in the order of [`all`] (names it does not know are left out).
pub fn named(names: &[String]) -> Vec<Box<dyn System>> {
    all()
        .into_iter()
        .filter(|s| names.iter().any(|n| n == s.name()))
        .collect()
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Starts `program` in `ns` in a process group of its own (so a crash can be simulated for
/// the whole group, and a Ctrl-C on the terminal reaches it only through us).
pub fn spawn(
    ns: &Netns,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    log: std::fs::File,
    name: &'static str,
) -> Result<Proc> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = ns.command(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    Ok(Proc::new(child, name))
}

/// SIGKILL to the process group led by `p`, and waits for the leader to go.
pub fn kill_group(p: &mut Proc) -> Result<()> {
    // SAFETY: killpg on a group we created (the leader is our child).
    unsafe { libc::killpg(p.id() as i32, libc::SIGKILL) };
    let start = Instant::now();
    while p.exited().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("process {} survived SIGKILL", p.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Polls `f` until it gives Some; fails with `what` (and the last error) after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    while start.elapsed() < timeout {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match last_err {
        Some(e) => Err(e.context(format!("timed out after {timeout:?} waiting for {what}"))),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// The first line a program prints for `--version` (or `-V`, `-v`).
pub fn version_of(program: &Path, flag: &str) -> Option<String> {
    let out = Command::new(program).arg(flag).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// Whether a Debian package is installed.
fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs Debian packages that are missing; the installed version of the first.
pub fn ensure_deb(packages: &[&str]) -> Result<String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!("bench: installing {} with apt-get", missing.join(" "));
        let out = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("running apt-get")?;
        if !out.status.success() {
            bail!(
                "apt-get install {} failed: {}",
                missing.join(" "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
        }
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", packages[0]])
        .output()?;
    Ok(format!(
        "{} {}",
        packages[0],
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}
