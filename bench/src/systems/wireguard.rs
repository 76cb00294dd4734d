//! Userspace WireGuard: wireguard-go (Debian), boringtun-cli and Mullvad's GotaTun
//! (`gotatun-cli`, a boringtun descendant with the same command line), both from crates.io
//! and installed into the harness's tool directory; configured with `wg` (wireguard-tools)
//! on both ends.
//!
//! All serve their configuration interface on `/var/run/wireguard/NAME.sock`, a file-system
//! path that namespaces do not separate, so the two ends get different device names.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tunnel_user::testbed::{Netns, client_world::Proc};

use super::{Client, Ctx, Gateway, ensure_deb, kill_group, spawn, version_of, wait_until};
use crate::world::{CORP_NET, GATEWAY, World};

const PORT: u16 = 51820;
const GW_ADDR: &str = "10.99.0.1";
const CLIENT_ADDR: &str = "10.99.0.2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Go,
    Boringtun,
    Gotatun,
}

impl Impl {
    /// The crates.io crate that provides it and the program that crate installs; None for
    /// the Debian package.
    fn crate_and_program(self) -> Option<(&'static str, &'static str)> {
        match self {
            Impl::Go => None,
            Impl::Boringtun => Some(("boringtun-cli", "boringtun-cli")),
            Impl::Gotatun => Some(("gotatun-cli", "gotatun")),
        }
    }
}

/// One end of a WireGuard tunnel.
pub struct Wg {
    imp: Impl,
    gateway: bool,
    program: PathBuf,
    proc: Option<Proc>,
}

impl Wg {
    pub fn gateway(imp: Impl) -> Wg {
        Wg {
            imp,
            gateway: true,
            program: PathBuf::new(),
            proc: None,
        }
    }

    pub fn client(imp: Impl) -> Wg {
        Wg {
            gateway: false,
            ..Wg::gateway(imp)
        }
    }

    fn dev_name(&self) -> String {
        let end = if self.gateway { 'g' } else { 'c' };
        match self.imp {
            Impl::Go => format!("bnwg{end}"),
            Impl::Boringtun => format!("bnbt{end}"),
            Impl::Gotatun => format!("bngt{end}"),
        }
    }

    fn ns<'w>(&self, w: &'w World) -> &'w Netns {
        if self.gateway { &w.gw } else { &w.client }
    }

    fn prepare_impl(&mut self, ctx: &Ctx) -> Result<String> {
        ensure_deb(&["wireguard-tools"])?;
        match self.imp.crate_and_program() {
            None => {
                let v = ensure_deb(&["wireguard-go"])?;
                self.program = PathBuf::from("wireguard-go");
                Ok(v)
            }
            Some((krate, program)) => {
                self.program = ctx.tools.join("bin").join(program);
                if !self.program.exists() {
                    install_crate(ctx, krate)?;
                }
                Ok(version_of(&self.program, "--version").unwrap_or_else(|| krate.into()))
            }
        }
    }

    /// Keys for both ends, made once per world: (gateway private, client private).
    fn keys(w: &World) -> Result<(String, String)> {
        let (g, c) = (w.dir.join("wg-gateway.key"), w.dir.join("wg-client.key"));
        for f in [&g, &c] {
            if !f.exists() {
                let key = wg(&["genkey"], "")?;
                fs::write(f, key)?;
            }
        }
        Ok((fs::read_to_string(g)?, fs::read_to_string(c)?))
    }

    fn start_end(&mut self, w: &World) -> Result<()> {
        let dev = self.dev_name();
        let ns = self.ns(w);
        // A socket left by a killed instance would make the new one fail to listen.
        let _ = fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
        let log = w.log(&format!("{dev}.log"))?;
        let program = self.program.to_string_lossy().into_owned();
        let name = if self.gateway {
            "wireguard (gateway)"
        } else {
            "wireguard (client)"
        };
        self.proc = Some(match self.imp {
            Impl::Go => spawn(
                ns,
                &program,
                &["-f", &dev],
                // wireguard-go refuses to run on Linux without it (it prefers the kernel
                // module, which this kernel does not have).
                &[("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")],
                log,
                name,
            )?,
            Impl::Boringtun | Impl::Gotatun => spawn(
                ns,
                &program,
                &[
                    "--foreground",
                    "--disable-drop-privileges",
                    "--log",
                    "/dev/stderr",
                    &dev,
                ],
                &[],
                log,
                name,
            )?,
        });
        let sock = PathBuf::from(format!("/var/run/wireguard/{dev}.sock"));
        let proc = self.proc.as_mut().context("wireguard")?;
        wait_until(
            &format!("{dev}'s UAPI socket"),
            Duration::from_secs(10),
            || {
                if let Some(s) = proc.exited() {
                    bail!(
                        "{dev} exited ({s}): {}",
                        w.log_tail(&format!("{dev}.log"), 3)
                    );
                }
                Ok(sock.exists().then_some(()))
            },
        )?;
        let (gw_key, client_key) = Self::keys(w)?;
        let (own, peer) = if self.gateway {
            (gw_key, client_key)
        } else {
            (client_key, gw_key)
        };
        let key_file = w.dir.join(format!("{dev}.key"));
        fs::write(&key_file, own)?;
        let peer_pub = wg(&["pubkey"], &peer)?;
        let key_file = key_file.to_string_lossy().into_owned();
        if self.gateway {
            ns.sh(&format!(
                "wg set {dev} private-key {key_file} listen-port {PORT} peer {peer_pub} allowed-ips {CLIENT_ADDR}/32; \
                 ip addr add {GW_ADDR}/24 dev {dev}; ip link set {dev} up mtu 1420"
            ))?;
        } else {
            ns.sh(&format!(
                "wg set {dev} private-key {key_file} peer {peer_pub} allowed-ips {CORP_NET},10.99.0.0/24 endpoint {GATEWAY}:{PORT}; \
                 ip addr add {CLIENT_ADDR}/24 dev {dev}; ip link set {dev} up mtu 1420; \
                 ip route add {CORP_NET} dev {dev}"
            ))?;
        }
        Ok(())
    }
}

fn wg(args: &[&str], stdin: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("wg")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running wg")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `cargo install KRATE --locked` into the tool directory. Builds with this toolchain; a
/// failure is reported with cargo's last error line.
fn install_crate(ctx: &Ctx, krate: &str) -> Result<()> {
    eprintln!(
        "bench: installing {krate} from crates.io into {} (a few minutes, once)",
        ctx.tools.display()
    );
    let out = Command::new("cargo")
        .args(["install", krate, "--locked", "--root"])
        .arg(&ctx.tools)
        .output()
        .context("running cargo install")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .rfind(|l| l.starts_with("error"))
            .unwrap_or("cargo install failed");
        bail!("cargo install {krate}: {line}");
    }
    Ok(())
}

impl Gateway for Wg {
    fn prepare(&mut self, ctx: &Ctx) -> Result<String> {
        self.prepare_impl(ctx)
    }
    fn start(&mut self, w: &World) -> Result<()> {
        self.start_end(w)
    }
    fn kill(&mut self, _: &World) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            kill_group(&mut p)?;
        }
        Ok(())
    }
    fn stop(&mut self, _: &World) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
    fn pids(&self) -> Vec<u32> {
        self.proc.iter().map(Proc::id).collect()
    }
}

impl Client for Wg {
    fn prepare(&mut self, ctx: &Ctx) -> Result<String> {
        self.prepare_impl(ctx)
    }
    fn start(&mut self, w: &World) -> Result<Instant> {
        let began = Instant::now();
        self.start_end(w)?;
        Ok(began)
    }
    fn stop(&mut self, _: &World) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }
    fn transport(&mut self, w: &World) -> Result<String> {
        let dev = self.dev_name();
        // "PEER\tRX\tTX": bytes received from the peer prove the tunnel carries traffic.
        let out = self.ns(w).sh(&format!("wg show {dev} transfer"))?;
        let rx: u64 = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if rx == 0 {
            bail!("nothing received over WireGuard on {dev}: {}", out.trim());
        }
        Ok("WireGuard UDP".into())
    }

    fn gone(&mut self) -> bool {
        self.proc.as_mut().is_none_or(|p| p.exited().is_some())
    }

    fn state(&mut self, w: &World) -> String {
        let dev = self.dev_name();
        if let Some(s) = self.proc.as_mut().and_then(Proc::exited) {
            return format!(
                "{dev} exited ({s}): {}",
                w.log_tail(&format!("{dev}.log"), 3)
            );
        }
        self.ns(w)
            .sh(&format!("wg show {dev}"))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
    fn device(&self, _: &World) -> Option<String> {
        Some(self.dev_name())
    }
    fn pids(&self) -> Vec<u32> {
        self.proc.iter().map(Proc::id).collect()
    }
}
