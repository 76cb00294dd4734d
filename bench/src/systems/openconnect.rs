//! openconnect (Debian's) as a client, `--protocol=pulse` against our gateway and
//! `--protocol=anyconnect` against ocserv (Debian's), which is here too.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use tunnel_user::testbed::client_world::Proc;

use super::{Client, Ctx, Gateway, ensure_deb, kill_group, spawn, wait_until};
use crate::world::{CORP_NET, GATEWAY, PASSWORD, World};

const DEVICE: &str = "bnoc0";
const OCSERV_PORT: u16 = 8444;

/// What openconnect's log says once the UDP transport is up, per protocol.
fn udp_established(protocol: &str) -> &'static str {
    if protocol == "pulse" {
        "ESP session established"
    } else {
        "Established DTLS connection"
    }
}

pub struct Openconnect {
    protocol: &'static str,
    port: u16,
    /// ESP (pulse) or DTLS (anyconnect); false adds `--no-dtls`.
    udp: bool,
    proc: Option<Proc>,
}

impl Openconnect {
    pub fn pulse(udp: bool) -> Openconnect {
        Openconnect {
            protocol: "pulse",
            port: 8443,
            udp,
            proc: None,
        }
    }

    pub fn anyconnect(udp: bool) -> Openconnect {
        Openconnect {
            protocol: "anyconnect",
            port: OCSERV_PORT,
            udp,
            proc: None,
        }
    }

    fn log_name(&self) -> String {
        format!("openconnect-{}.log", self.protocol)
    }
}

/// Configures the tunnel device: address, MTU, the split-include routes (an existing route
/// to the same prefix, like the world's route to the excluded network, is kept).
const VPNC_SCRIPT: &str = r#"#!/bin/sh
if [ "$reason" = connect ]; then
  ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1400}"
  ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
  i=0
  while [ "$i" -lt "${CISCO_SPLIT_INC:-0}" ]; do
    eval net=\$CISCO_SPLIT_INC_${i}_ADDR
    eval len=\$CISCO_SPLIT_INC_${i}_MASKLEN
    ip route add "$net/$len" dev "$TUNDEV" 2>/dev/null || true
    i=$((i + 1))
  done
fi
exit 0
"#;

impl Client for Openconnect {
    fn prepare(&mut self, _: &Ctx) -> Result<String> {
        ensure_deb(&["openconnect"])
    }

    fn start(&mut self, w: &World) -> Result<Instant> {
        let script = w.dir.join("vpnc-script");
        fs::write(&script, VPNC_SCRIPT)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        let log = w.log(&self.log_name())?;
        let protocol = format!("--protocol={}", self.protocol);
        let servercert = format!("--servercert={}", w.pin);
        let script = script.to_string_lossy().into_owned();
        let url = format!("https://{GATEWAY}:{}/", self.port);
        let mut args = vec![
            protocol.as_str(),
            "--non-inter",
            "--user",
            "alice",
            "--passwd-on-stdin",
            &servercert,
            "--script",
            &script,
            "--interface",
            DEVICE,
        ];
        if !self.udp {
            args.push("--no-dtls");
        }
        args.push(&url);
        // Not through spawn(): the password goes on stdin.
        use std::os::unix::process::CommandExt as _;
        let began = Instant::now();
        let mut child = w
            .client
            .command("openconnect")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting openconnect")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(format!("{PASSWORD}\n").as_bytes())?;
        self.proc = Some(Proc::new(child, "openconnect"));
        Ok(began)
    }

    fn stop(&mut self, _: &World) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    fn transport(&mut self, w: &World) -> Result<String> {
        let log = self.log_name();
        if let Some(p) = self.proc.as_mut()
            && let Some(s) = p.exited()
        {
            bail!("openconnect exited ({s}): {}", w.log_tail(&log, 3));
        }
        if !self.udp {
            let text = w.read_log(&log);
            let marker = udp_established(self.protocol);
            if text.contains(marker) {
                bail!("--no-dtls, yet the log says {marker:?}");
            }
            return Ok("TLS".into());
        }
        let marker = udp_established(self.protocol);
        wait_until(
            &format!("{marker:?} in the openconnect log"),
            Duration::from_secs(15),
            || {
                let _ = w.corp_sees(Duration::from_millis(300));
                let text = w.read_log(&log);
                Ok(text.lines().find(|l| l.contains(marker)).map(|l| {
                    if self.protocol == "pulse" {
                        "ESP".to_string()
                    } else {
                        // "Established DTLS connection (using GnuTLS). Ciphersuite (DTLS1.2)-..."
                        let suite = l.split("Ciphersuite ").nth(1).unwrap_or("");
                        let suite = suite.trim().trim_end_matches('.');
                        format!("DTLS {suite}").trim().to_string()
                    }
                }))
            },
        )
        .with_context(|| w.log_tail(&log, 4))
    }

    fn device(&self, _: &World) -> Option<String> {
        Some(DEVICE.into())
    }

    fn gone(&mut self) -> bool {
        self.proc.as_mut().is_none_or(|p| p.exited().is_some())
    }

    fn state(&mut self, w: &World) -> String {
        let tail = w.log_tail(&self.log_name(), 3);
        match self.proc.as_mut().and_then(Proc::exited) {
            Some(s) => format!("openconnect exited ({s}): {tail}"),
            None => format!("openconnect running: {tail}"),
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.proc.iter().map(Proc::id).collect()
    }
}

/// ocserv with a plain password file, routing corp through the tunnel.
#[derive(Default)]
pub struct Ocserv {
    proc: Option<Proc>,
    config: PathBuf,
}

impl Ocserv {
    fn write_config(&mut self, w: &World) -> Result<()> {
        let passwd = w.dir.join("ocpasswd");
        if !passwd.exists() {
            let mut child = std::process::Command::new("ocpasswd")
                .arg("-c")
                .arg(&passwd)
                .arg("alice")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("ocpasswd")?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes())?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("ocpasswd: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            fs::set_permissions(&passwd, fs::Permissions::from_mode(0o644))?;
        }
        let (net, len) = CORP_NET.split_once('/').context("CORP_NET")?;
        let mask = u32::MAX << (32 - len.parse::<u32>()?);
        let mask = std::net::Ipv4Addr::from(mask);
        let config = format!(
            r#"auth = "plain[passwd={passwd}]"
listen-host = {GATEWAY}
tcp-port = {OCSERV_PORT}
udp-port = {OCSERV_PORT}
run-as-user = nobody
run-as-group = nogroup
socket-file = {dir}/ocserv.sock
pid-file = {dir}/ocserv.pid
server-cert = {cert}
server-key = {key}
isolate-workers = false
max-clients = 16
max-same-clients = 4
keepalive = 300
dpd = 90
mobile-dpd = 1800
switch-to-tcp-timeout = 25
try-mtu-discovery = false
tls-priorities = "NORMAL:%SERVER_PRECEDENCE:%COMPAT"
auth-timeout = 240
min-reauth-time = 1
max-ban-score = 0
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
use-occtl = false
log-level = 2
device = bnvpns
predictable-ips = true
ipv4-network = 10.88.0.0
ipv4-netmask = 255.255.255.0
route = {net}/{mask}
ping-leases = false
cisco-client-compat = true
dtls-legacy = true
"#,
            passwd = passwd.display(),
            dir = w.dir.display(),
            cert = w.cert.display(),
            key = w.key.display(),
        );
        self.config = w.dir.join("ocserv.conf");
        fs::write(&self.config, config)?;
        Ok(())
    }
}

impl Gateway for Ocserv {
    fn prepare(&mut self, _: &Ctx) -> Result<String> {
        ensure_deb(&["ocserv"])
    }

    fn start(&mut self, w: &World) -> Result<()> {
        self.write_config(w)?;
        let log = w.log("ocserv.log")?;
        let config = self.config.to_string_lossy().into_owned();
        self.proc = Some(spawn(
            &w.gw,
            "ocserv",
            &["--foreground", "--config", &config],
            &[],
            log,
            "ocserv",
        )?);
        let proc = self.proc.as_mut().context("ocserv")?;
        let port = format!(":{OCSERV_PORT:04X} ");
        wait_until("ocserv to listen", Duration::from_secs(15), || {
            if let Some(s) = proc.exited() {
                bail!("ocserv exited ({s}): {}", w.log_tail("ocserv.log", 3));
            }
            let tcp = w.gw.sh("cat /proc/net/tcp")?;
            Ok(tcp
                .lines()
                .any(|l| l.contains(&port) && l.split_whitespace().nth(3) == Some("0A"))
                .then_some(()))
        })
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
