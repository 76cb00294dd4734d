//! Our gateway (`tunnel-gateway`) and our client (`tunneld` driven by `tunnel`), from this
//! tree's release build.

use std::{
    fs,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tunnel_user::testbed::client_world::Proc;

use super::{Client, Ctx, Gateway, kill_group, spawn, wait_until};
use crate::world::{CORP_NET, EXCLUDED, EXCLUDED_NET, GATEWAY, PASSWORD, World};

const PORT: u16 = 8443;
const TUN: &str = "bntgw0";

pub struct OurGateway {
    /// ESP cipher offered, or None for TLS only (`esp.enabled = false`).
    esp: Option<&'static str>,
    bin: PathBuf,
    proc: Option<Proc>,
}

impl OurGateway {
    pub fn new(esp: Option<&'static str>) -> OurGateway {
        OurGateway {
            esp,
            bin: PathBuf::new(),
            proc: None,
        }
    }

    fn config(&self) -> String {
        let esp = match self.esp {
            Some(c) => format!("enabled = true\nport = 4500\nciphers = [\"{c}\"]\n"),
            None => "enabled = false\n".to_string(),
        };
        format!(
            r#"listen = "{GATEWAY}:{PORT}"
mtu = 1400
idle_timeout_secs = 0
tun_name = "{TUN}"

[tls]
certificate = "cert.pem"
key = "key.pem"

[auth]
users_file = "users"
# Debian's openconnect 9.01 (a peer of the bench) predates the current password request.
password_request = "legacy"

[pool]
ipv4 = "10.77.0.0/24"

[routes]
include = ["{CORP_NET}", "{EXCLUDED_NET}"]
exclude = ["{EXCLUDED}/32"]

[esp]
{esp}"#
        )
    }
}

fn need(bin_dir: &std::path::Path, name: &str) -> Result<PathBuf> {
    let p = bin_dir.join(name);
    if !p.exists() {
        bail!(
            "{} missing: build with `cargo build --release -p tunnel-user --bins`",
            p.display()
        );
    }
    Ok(p)
}

impl Gateway for OurGateway {
    fn prepare(&mut self, ctx: &Ctx) -> Result<String> {
        self.bin = need(&ctx.bin_dir, "tunnel-gateway")?;
        Ok(format!("tunnel {}", ctx.revision))
    }

    fn start(&mut self, w: &World) -> Result<()> {
        let config = w.dir.join("gateway.toml");
        fs::write(&config, self.config())?;
        let users = w.dir.join("users");
        if !users.exists() {
            let mut child = Command::new(&self.bin)
                .args(["adduser", "--users"])
                .arg(&users)
                .arg("alice")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("tunnel-gateway adduser")?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(format!("{PASSWORD}\n").as_bytes())?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "tunnel-gateway adduser: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let log = w.log("tunnel-gateway.log")?;
        let config = config.to_string_lossy().into_owned();
        self.proc = Some(spawn(
            &w.gw,
            &self.bin.to_string_lossy(),
            &["--config", &config],
            &[("NO_COLOR", "1")],
            log,
            "tunnel-gateway",
        )?);
        let proc = self.proc.as_mut().context("gateway")?;
        wait_until("tunnel-gateway to run", Duration::from_secs(15), || {
            if let Some(s) = proc.exited() {
                bail!(
                    "tunnel-gateway exited ({s}): {}",
                    w.log_tail("tunnel-gateway.log", 3)
                );
            }
            Ok(w.read_log("tunnel-gateway.log")
                .contains("gateway running")
                .then_some(()))
        })
    }

    fn stop(&mut self, _: &World) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.proc.iter().map(Proc::id).collect()
    }

    fn kill(&mut self, _: &World) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            kill_group(&mut p)?;
        }
        Ok(())
    }
}

/// `tunneld` in the client namespace; `tunnel connect` logs in.
pub struct Tunneld {
    /// The transport `tunnel status` must show ("esp" or "tls").
    expect: &'static str,
    tunneld: PathBuf,
    tunnel: PathBuf,
    proc: Option<Proc>,
}

impl Tunneld {
    pub fn new(expect: &'static str) -> Tunneld {
        Tunneld {
            expect,
            tunneld: PathBuf::new(),
            tunnel: PathBuf::new(),
            proc: None,
        }
    }

    fn socket(w: &World) -> PathBuf {
        w.dir.join("tunneld.sock")
    }

    /// Runs `tunnel` with `args` in the client namespace; (exit code, stdout, stderr).
    fn tunnel(&self, w: &World, args: &[&str], stdin: &str) -> Result<(i32, String, String)> {
        let mut child = w
            .client
            .command(&self.tunnel.to_string_lossy())
            .arg("--socket")
            .arg(Self::socket(w))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running tunnel")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn status(&self, w: &World) -> serde_json::Value {
        self.tunnel(w, &["status", "--json"], "")
            .ok()
            .and_then(|(_, out, _)| serde_json::from_str(&out).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Client for Tunneld {
    fn prepare(&mut self, ctx: &Ctx) -> Result<String> {
        self.tunneld = need(&ctx.bin_dir, "tunneld")?;
        self.tunnel = need(&ctx.bin_dir, "tunnel")?;
        Ok(format!("tunnel {}", ctx.revision))
    }

    /// Starts tunneld if it is not running (not timed: it is a daemon that is already up
    /// on a real machine), then `tunnel connect`.
    fn start(&mut self, w: &World) -> Result<Instant> {
        if self.proc.as_mut().is_none_or(|p| p.exited().is_some()) {
            let log = w.log("tunneld.log")?;
            let socket = Self::socket(w).to_string_lossy().into_owned();
            let state = w.dir.join("tunneld-state").to_string_lossy().into_owned();
            self.proc = Some(spawn(
                &w.client,
                &self.tunneld.to_string_lossy(),
                &["--socket", &socket, "--state-dir", &state],
                &[("NO_COLOR", "1")],
                log,
                "tunneld",
            )?);
            let sock = Self::socket(w);
            let proc = self.proc.as_mut().context("tunneld")?;
            wait_until("tunneld's control socket", Duration::from_secs(15), || {
                if let Some(s) = proc.exited() {
                    bail!("tunneld exited ({s}): {}", w.log_tail("tunneld.log", 3));
                }
                Ok(sock.exists().then_some(()))
            })?;
        }
        let url = format!("https://{GATEWAY}:{PORT}");
        let began = Instant::now();
        let (code, _, err) = self.tunnel(
            w,
            &[
                "connect",
                "--url",
                &url,
                "-u",
                "alice",
                "--password-stdin",
                "--servercert",
                &w.pin,
            ],
            &format!("{PASSWORD}\n"),
        )?;
        if code != 0 {
            bail!("tunnel connect exited {code}: {}", err.trim());
        }
        Ok(began)
    }

    /// Signs out; tunneld keeps running (it is the daemon of the next login).
    fn stop(&mut self, w: &World) {
        if self.proc.is_some() {
            let _ = self.tunnel(w, &["signout", GATEWAY], "");
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.proc.iter().map(Proc::id).collect()
    }

    fn transport(&mut self, w: &World) -> Result<String> {
        let expect = self.expect;
        wait_until(
            &format!("transport {expect}"),
            Duration::from_secs(15),
            || {
                let _ = w.corp_sees(Duration::from_millis(300));
                let st = self.status(w);
                Ok((st[0]["transport"] == expect).then(|| {
                    let mut s = expect.to_uppercase();
                    if let Some(c) = st[0]["cipher"].as_str() {
                        s.push(' ');
                        s.push_str(c);
                    }
                    s
                }))
            },
        )
        .with_context(|| format!("tunnel status: {}", self.status(w)))
    }

    fn gone(&mut self) -> bool {
        self.proc.as_mut().is_none_or(|p| p.exited().is_some())
    }

    fn state(&mut self, w: &World) -> String {
        if let Some(s) = self.proc.as_mut().and_then(Proc::exited) {
            return format!("tunneld exited ({s}): {}", w.log_tail("tunneld.log", 3));
        }
        let st = &self.status(w)[0];
        format!(
            "tunnel status: state {}, transport {}, reconnects {}, last error {}",
            st["state"], st["transport"], st["reconnects"], st["last_error"]
        )
    }

    fn device(&self, w: &World) -> Option<String> {
        self.status(w)[0]["tun"].as_str().map(str::to_string)
    }
}
