//! The client end to end: `tunneld` and `tunnel` against our gateway, in namespaces, with the
//! kernel data path deciding what is tunnelled.
//!
//! ```text
//!  ┌──────── client ─────────┐        ┌──────────── gw ─────────────┐        ┌─── corp ───┐
//!  │ tunneld, tunnel          │        │ tunnel-gateway :8443, :4500  │        │ 172.20.0.2 │
//!  │ c0 192.168.70.2 ─────────┼─ veth ─┼─ g0 192.168.70.1             │        │ echo :9000 │
//!  │ default via .70.1        │        │ lo 198.51.100.10 (excluded)  │        │            │
//!  │ tun0 10.77.0.x           │        │ gc0 172.20.0.1 ──────────────┼─ veth ─┼─ x0        │
//!  └──────────────────────────┘        └──────────────────────────────┘        └────────────┘
//! ```
//!
//! The gateway pushes include 172.20.0.0/24 and 198.51.100.0/24 with 198.51.100.10/32
//! excluded: corp answers through the tunnel (and sees the tunnel address), the excluded
//! server answers directly (and sees the LAN address). Echo servers reply with the address
//! they saw, so each answer says which way the packets went.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use sha2::Digest as _;
use tunnel_user::testbed::{Netns, veth};

const GATEWAY: &str = "192.168.70.1";
const CORP: &str = "172.20.0.2";
const EXCLUDED: &str = "198.51.100.10";
const PORT: u16 = 9000;

struct Proc(Child, &'static str);

impl Proc {
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM", self.1);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// An echo server that first writes the peer address it saw.
fn peer_echo(ns: &Netns, addr: &str) {
    let bind: SocketAddr = format!("{addr}:{PORT}").parse().unwrap();
    let listener = ns.enter(move || TcpListener::bind(bind)).unwrap().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let peer = c
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                let _ = c.write_all(format!("{peer}\n").as_bytes());
                let mut buf = [0u8; 65536];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A UDP server that answers every datagram with the peer address it saw.
fn udp_peer_echo(ns: &Netns, port: u16) {
    let sock = ns
        .enter(move || std::net::UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    });
}

struct World {
    dir: PathBuf,
    client: Netns,
    gw: Netns,
    _corp: Netns,
    pin: String,
}

impl World {
    fn build(tag: &str) -> World {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("tunnel-cl-{tag}-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let client = Netns::create(&format!("tcl{id}{tag}c")).unwrap();
        let gw = Netns::create(&format!("tcl{id}{tag}g")).unwrap();
        let corp = Netns::create(&format!("tcl{id}{tag}x")).unwrap();
        veth(&client, "c0", &gw, "g0").unwrap();
        veth(&gw, "gc0", &corp, "x0").unwrap();
        client
            .sh("ip addr add 192.168.70.2/24 dev c0; ip route add default via 192.168.70.1")
            .unwrap();
        gw.sh(&format!("ip addr add 192.168.70.1/24 dev g0; ip addr add 172.20.0.1/24 dev gc0; ip addr add {EXCLUDED}/32 dev lo"))
            .unwrap();
        corp.sh("ip addr add 172.20.0.2/24 dev x0; ip route add default via 172.20.0.1")
            .unwrap();
        peer_echo(&corp, CORP);
        peer_echo(&gw, EXCLUDED);
        udp_peer_echo(&corp, 5000);
        udp_peer_echo(&corp, 7000);
        gw.sh("sysctl -qw net.ipv4.ip_forward=1").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["gw.test".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(GATEWAY.parse().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let pin = format!(
            "pin-sha256:{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&spki))
        );
        tunnel_user::gateway::add_user(
            &dir.join("users"),
            "alice",
            &["Users".to_string()],
            b"s3cret",
        )
        .unwrap();
        fs::write(
            dir.join("gateway.toml"),
            format!(
                r#"listen = "{GATEWAY}:8443"
dns = ["172.20.0.53"]
mtu = 1400
idle_timeout_secs = 600
tun_name = "tgw0"

[tls]
certificate = "cert.pem"
key = "key.pem"

[auth]
users_file = "users"

[pool]
ipv4 = "10.77.0.0/24"

[routes]
include = ["172.20.0.0/24", "198.51.100.0/24"]
exclude = ["{EXCLUDED}/32"]

[esp]
port = 4500
fallback_secs = 5
"#
            ),
        )
        .unwrap();
        World {
            dir,
            client,
            gw,
            _corp: corp,
            pin,
        }
    }

    fn start_gateway(&self) -> Proc {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))
            .unwrap();
        let child = self
            .gw
            .command(env!("CARGO_BIN_EXE_tunnel-gateway"))
            .arg("--config")
            .arg(self.dir.join("gateway.toml"))
            .env("NO_COLOR", "1")
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Proc(child, "tunnel-gateway");
        wait_for("the gateway", Duration::from_secs(10), || {
            fs::read_to_string(self.dir.join("gateway.log"))
                .unwrap_or_default()
                .matches("gateway running")
                .count()
                > fs::read_to_string(self.dir.join("gateway.log"))
                    .unwrap_or_default()
                    .matches("gateway stopped")
                    .count()
        });
        p
    }

    fn start_tunneld(&self) -> Proc {
        let log = fs::File::create(self.dir.join("tunneld.log")).unwrap();
        let child = self
            .client
            .command(env!("CARGO_BIN_EXE_tunneld"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Proc(child, "tunneld");
        wait_for("tunneld", Duration::from_secs(15), || {
            self.socket().exists()
        });
        p
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("tunneld.sock")
    }

    /// Runs `tunnel` in the client namespace with `stdin`.
    fn tunnel(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .client
            .command(env!("CARGO_BIN_EXE_tunnel"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn connect(&self) -> Output {
        self.connect_with(&[])
    }

    fn connect_with(&self, extra: &[&str]) -> Output {
        let url = format!("https://{GATEWAY}:8443");
        let mut args = vec![
            "connect",
            "--url",
            &url,
            "-u",
            "alice",
            "--password-stdin",
            "--servercert",
            &self.pin,
        ];
        args.extend_from_slice(extra);
        self.tunnel(&args, "s3cret\n")
    }

    /// Sends a UDP datagram to corp and returns the address corp saw, or None.
    fn udp_seen_as(&self, port: u16) -> Option<String> {
        self.client
            .enter(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
                s.send_to(b"?", (CORP, port)).ok()?;
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .unwrap()
    }

    /// Runs a shell snippet in the client namespace inside `cgroup` and returns its stdout.
    fn in_cgroup(&self, cgroup: &std::path::Path, script: &str) -> String {
        use std::os::{fd::AsRawFd, unix::process::CommandExt};
        let ns = fs::File::open(format!("/var/run/netns/{}", self.client.name())).unwrap();
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .unwrap();
        let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["-c", script]);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout)
            .trim()
            .to_string()
    }

    /// Connects to `addr` from the client and returns the peer address the server saw.
    fn seen_as(&self, addr: &str) -> Option<String> {
        let to: SocketAddr = format!("{addr}:{PORT}").parse().unwrap();
        self.client
            .enter(move || {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && b[0] != b'\n' {
                    line.push(b[0]);
                }
                Some(String::from_utf8_lossy(&line).into_owned())
            })
            .unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.tunnel(&["status", "--json"], "");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn counters(&self) -> String {
        String::from_utf8_lossy(&self.tunnel(&["counters"], "").stdout).into_owned()
    }
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: needs root");
    }
    root
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn counter(text: &str, conn: &str, reason: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == conn && f[1] == reason).then(|| f[2].parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

#[test]
fn client_connects_splits_traffic_and_survives_a_gateway_restart() {
    if !root() {
        return;
    }
    let w = World::build("a");
    let mut gw = w.start_gateway();
    let _td = w.start_tunneld();

    let started = Instant::now();
    let out = w.connect();
    assert_eq!(
        code(&out),
        0,
        "connect: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let connect_time = started.elapsed();
    let status = w.status();
    let me = &status[0];
    assert_eq!(me["state"], "connected", "{status}");
    let tunnel_addr = me["ipv4"].as_str().unwrap().to_string();
    assert!(tunnel_addr.starts_with("10.77.0."), "{status}");

    // Split tunnelling, shown by what the servers see and by the kernel's counters.
    let before = w.counters();
    assert_eq!(
        w.seen_as(CORP).as_deref(),
        Some(tunnel_addr.as_str()),
        "corp is reached through the tunnel"
    );
    assert_eq!(
        w.seen_as(EXCLUDED).as_deref(),
        Some("192.168.70.2"),
        "the excluded server is reached directly"
    );
    let after = w.counters();
    assert!(
        counter(&after, "0", "tunnel") > counter(&before, "0", "tunnel"),
        "{after}"
    );
    assert!(
        counter(&after, "0", "bypass_excluded") > counter(&before, "0", "bypass_excluded"),
        "{after}"
    );

    // ESP carries the traffic.
    wait_for("ESP", Duration::from_secs(10), || {
        w.status()[0]["transport"] == "esp"
    });

    // The gateway dies and comes back: traffic resumes with no user action.
    gw.stop();
    let restarted = Instant::now();
    let _gw2 = w.start_gateway();
    let reconnect = wait_for(
        "traffic through the reconnected tunnel",
        Duration::from_secs(60),
        || w.seen_as(CORP).is_some_and(|s| s.starts_with("10.77.0.")),
    );
    let _ = restarted;
    let st = w.status();
    assert_eq!(st[0]["state"], "connected", "{st}");
    assert!(st[0]["reconnects"].as_u64().unwrap_or(0) >= 1, "{st}");
    eprintln!(
        "client: connect {:.0} ms; reconnect after gateway restart {:.0} ms",
        connect_time.as_secs_f64() * 1e3,
        reconnect.as_secs_f64() * 1e3
    );

    // Sign-out logs out at the gateway.
    let out = w.tunnel(&["signout", GATEWAY], "");
    assert_eq!(code(&out), 0);
    wait_for(
        "the gateway to see the logout",
        Duration::from_secs(5),
        || {
            fs::read_to_string(w.dir.join("gateway.log"))
                .unwrap_or_default()
                .contains("LoggedOut")
        },
    );
    // Without the tunnel, corp is reached the plain way again (the gateway also routes the
    // LAN), with the client's own address: the data path was withdrawn.
    assert_eq!(
        w.seen_as(CORP).as_deref(),
        Some("192.168.70.2"),
        "no tunnel after sign-out"
    );
    let st = w.status();
    assert_eq!(st, serde_json::json!([]), "the connection is gone: {st}");
}

#[test]
fn exit_codes_follow_the_launcher() {
    if !root() {
        return;
    }
    let w = World::build("e");
    let _gw = w.start_gateway();
    // tunneld not running: -1 (255).
    let out = w.tunnel(&["status"], "");
    assert_eq!(code(&out), 255, "{}", String::from_utf8_lossy(&out.stderr));
    let _td = w.start_tunneld();
    // Bad parameter.
    let out = w.tunnel(
        &[
            "connect",
            "--url",
            "ftp://x",
            "-u",
            "alice",
            "--password-stdin",
        ],
        "pw\n",
    );
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let out = w.tunnel(&["connect", "--url", "https://x", "-t", "5"], "");
    assert_eq!(code(&out), 1, "-t below 45");
    // Wrong password: connect failed.
    let out = w.tunnel(
        &[
            "connect",
            "--url",
            &format!("https://{GATEWAY}:8443"),
            "-u",
            "alice",
            "--password-stdin",
            "--servercert",
            &w.pin,
        ],
        "wrong\n",
    );
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    // Unknown connection.
    let out = w.tunnel(&["disconnect", "nope"], "");
    assert_eq!(code(&out), 4);
    // A certificate that does not match the pin.
    let out = w.tunnel(
        &[
            "connect",
            "--url",
            &format!("https://{GATEWAY}:8443"),
            "-u",
            "alice",
            "--password-stdin",
            "--servercert",
            "pin-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ],
        "s3cret\n",
    );
    assert_eq!(code(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    // Timeout: a gateway address nobody answers on.
    let out = w.tunnel(
        &[
            "connect",
            "--url",
            "https://192.168.70.99:8443",
            "-u",
            "alice",
            "--password-stdin",
            "-t",
            "45",
        ],
        "s3cret\n",
    );
    assert!(
        matches!(code(&out), 2 | 7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Invalid action for the state: resume what is not suspended.
    let out = w.connect();
    assert_eq!(code(&out), 0);
    let out = w.tunnel(&["resume", GATEWAY], "");
    assert_eq!(code(&out), 25);
}

#[test]
fn udp_port_list_per_app_and_esp_fallback() {
    if !root() {
        return;
    }
    let w = World::build("u");
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect_with(&[
        "--kvp",
        "SplitUDPPortList=5000",
        "--kvp",
        "AtpProbeIdleSec=2",
        "--kvp",
        "AtpProbeIntervalSec=1",
        "--kvp",
        "AtpProbeCount=2",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    // UDP: the listed port through the tunnel, another port directly.
    assert_eq!(w.udp_seen_as(5000).as_deref(), Some(tunnel_addr.as_str()));
    assert_eq!(w.udp_seen_as(7000).as_deref(), Some("192.168.70.2"));
    let c = w.counters();
    assert!(counter(&c, "0", "bypass_udp_port") >= 1, "{c}");

    // ESP blocked at the gateway: the client falls back to TLS and traffic carries on.
    wait_for("ESP", Duration::from_secs(10), || {
        w.status()[0]["transport"] == "esp"
    });
    w.gw.sh("nft add table inet block; nft add chain inet block in '{ type filter hook input priority 0; }'; nft add rule inet block in udp dport 4500 drop")
        .unwrap();
    let fell_back = wait_for("fallback to TLS", Duration::from_secs(20), || {
        let _ = w.seen_as(CORP);
        w.status()[0]["transport"] == "tls"
    });
    assert_eq!(
        w.seen_as(CORP).as_deref(),
        Some(tunnel_addr.as_str()),
        "traffic continues over TLS"
    );
    assert_eq!(
        w.status()[0]["state"],
        "connected",
        "a fallback, not a reconnect"
    );
    // Unblocked: back to ESP.
    w.gw.sh("nft delete table inet block").unwrap();
    let recovered = wait_for("ESP again", Duration::from_secs(20), || {
        let _ = w.seen_as(CORP);
        w.status()[0]["transport"] == "esp"
    });
    assert_eq!(w.seen_as(CORP).as_deref(), Some(tunnel_addr.as_str()));
    let log = fs::read_to_string(w.dir.join("tunneld.log")).unwrap();
    assert!(
        log.contains("event=305") && log.contains("event=306"),
        "events 305 and 306 logged"
    );
    eprintln!(
        "ESP blocked: fell back to TLS in {:.1} s; unblocked: back on ESP in {:.1} s",
        fell_back.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);

    // Per-app: only processes in the app's cgroup use the tunnel.
    let cgroup = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/unified/tunnel-app-{}",
        std::process::id()
    ));
    let _ = fs::remove_dir(&cgroup);
    fs::create_dir(&cgroup).unwrap();
    let out = w.connect_with(&["--per-app", &cgroup.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    let fetch = format!("exec 3<>/dev/tcp/{CORP}/{PORT}; head -n 1 <&3");
    assert_eq!(
        w.in_cgroup(&cgroup, &fetch),
        tunnel_addr,
        "the app goes through the tunnel"
    );
    assert_eq!(
        w.seen_as(CORP).as_deref(),
        Some("192.168.70.2"),
        "other processes go directly"
    );
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);
    let _ = fs::remove_dir(&cgroup);
}
