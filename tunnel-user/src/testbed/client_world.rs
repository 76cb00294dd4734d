//! The client's world, for its end-to-end tests and the demo: `tunneld` and `tunnel` against
//! our gateway, in namespaces, with the kernel data path deciding what is tunnelled.
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
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{Netns, run_in_cgroup, veth};

/// The gateway's LAN address.
pub const GATEWAY: &str = "192.168.70.1";
/// The corp server, behind the gateway.
pub const CORP: &str = "172.20.0.2";
/// A server the gateway excludes from the tunnel.
pub const EXCLUDED: &str = "198.51.100.10";
/// TCP port of the servers that answer with the address they saw.
pub const PORT: u16 = 9000;
/// Corp's UDP echo (every datagram back as it came).
pub const UDP_ECHO_PORT: u16 = 5002;
/// The client's LAN address.
pub const CLIENT_LAN: &str = "192.168.70.2";
/// A second gateway's LAN address, in the gateway namespace ([`ClientWorld::second_gateway`]).
pub const GATEWAY2: &str = "192.168.70.3";

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Proc(Child, &'static str);

impl Proc {
    /// Takes charge of a spawned child; `name` is used in messages.
    pub fn new(child: Child, name: &'static str) -> Proc {
        Proc(child, name)
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// Kills it with SIGKILL (no chance to clean up, as a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Stops it: SIGTERM, and SIGKILL after ten seconds.
    pub fn stop(&mut self) {
        // A child that already exited (and so cannot be signalled) is reaped below.
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
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

/// A command's exit code (-1: killed by a signal).
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// What a command printed, standard output then standard error.
pub fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` until it holds; panics with `what` after `timeout`. Returns how long it took.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// An echo server on `addr`:[`PORT`] in `ns` that first writes the peer address it saw.
pub fn peer_echo(ns: &Netns, addr: &str) {
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

/// A UDP server that sends every datagram back as it came.
fn udp_echo(ns: &Netns, port: u16) {
    let sock = ns
        .enter(move || std::net::UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], peer);
        }
    });
}

/// A command in `ns` that runs `program` through `wrapper` (its first word is run, the rest
/// and then `program` are its arguments), or directly when `wrapper` is empty.
fn wrapped(ns: &Netns, wrapper: &[String], program: &Path) -> std::process::Command {
    let program = program.to_string_lossy().into_owned();
    let mut argv: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    argv.push(&program);
    let mut command = ns.command(argv[0]);
    command.args(&argv[1..]);
    command
}

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub gateway: PathBuf,
    pub tunneld: PathBuf,
    pub tunnel: PathBuf,
}

/// The [`Binaries`] cargo built for the integration test this expands in.
#[macro_export]
macro_rules! this_crates_binaries {
    () => {
        $crate::testbed::client_world::Binaries {
            gateway: env!("CARGO_BIN_EXE_tunnel-gateway").into(),
            tunneld: env!("CARGO_BIN_EXE_tunneld").into(),
            tunnel: env!("CARGO_BIN_EXE_tunnel").into(),
        }
    };
}

/// The namespaces, servers and files of the world (drawn in the module docs).
pub struct ClientWorld {
    pub dir: PathBuf,
    pub client: Netns,
    pub gw: Netns,
    pub corp: Netns,
    /// The gateway certificate's `pin-sha256:`.
    pub pin: String,
    pub bin: Binaries,
    /// tunneld's `--pin-dir`: the world's own, removed with the world, so that links a
    /// tunneld leaves pinned (lock-down that outlives it) do not outlive the test.
    pub pin_root: PathBuf,
}

impl Drop for ClientWorld {
    fn drop(&mut self) {
        // Unpinning a link detaches it and frees its programs once nothing else holds them.
        let _ = fs::remove_dir_all(&self.pin_root);
    }
}

impl ClientWorld {
    /// Builds the world; namespace and directory names carry `tag` and this process's id.
    pub fn build(tag: &str, bin: Binaries) -> ClientWorld {
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
        udp_echo(&corp, UDP_ECHO_PORT);
        gw.sh("sysctl -qw net.ipv4.ip_forward=1").unwrap();
        let pin = super::pki::write_gateway_certificate(&dir, GATEWAY.parse().unwrap())
            .unwrap()
            .to_string();
        // tunneld's resolver configuration (`ClientWorld::resolv_conf`): a server outside.
        fs::write(
            dir.join("resolv.conf"),
            "# the client's resolver, outside the tunnel\nnameserver 192.168.70.53\n",
        )
        .unwrap();
        crate::gateway::add_user(
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
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/tunnel/test-{tag}-{id}"));
        let _ = fs::remove_dir_all(&pin_root);
        ClientWorld {
            dir,
            client,
            gw,
            corp,
            pin,
            bin,
            pin_root,
        }
    }

    pub fn start_gateway(&self) -> Proc {
        self.start_gateway_via(&[])
    }

    /// Starts the gateway through `wrapper` (a command that runs the rest of its arguments,
    /// such as `setpriv ... --`); empty: directly.
    pub fn start_gateway_via(&self, wrapper: &[String]) -> Proc {
        self.spawn_gateway(wrapper, &self.dir)
    }

    /// Prepares a second gateway in the gateway namespace: [`GATEWAY2`]:8443, its own
    /// self-signed certificate, pool 10.78.0.0/24, TUN device `tgw1`, ESP on port 4501, the
    /// same users and routes as the first. Returns its directory (`gateway.toml`,
    /// `cert.pem`) and its certificate's pin; start it with [`ClientWorld::start_gateway_in`].
    pub fn second_gateway(&self) -> (PathBuf, String) {
        let dir = self.dir.join("gw2");
        fs::create_dir_all(&dir).unwrap();
        self.gw
            .sh(&format!("ip addr add {GATEWAY2}/24 dev g0"))
            .unwrap();
        let pin = super::pki::write_gateway_certificate(&dir, GATEWAY2.parse().unwrap())
            .unwrap()
            .to_string();
        fs::copy(self.dir.join("users"), dir.join("users")).unwrap();
        let first = fs::read_to_string(self.dir.join("gateway.toml")).unwrap();
        let config = first
            .replace(&format!("{GATEWAY}:8443"), &format!("{GATEWAY2}:8443"))
            .replace("10.77.0.0/24", "10.78.0.0/24")
            .replace("\"tgw0\"", "\"tgw1\"")
            .replace("port = 4500", "port = 4501");
        fs::write(dir.join("gateway.toml"), config).unwrap();
        (dir, pin)
    }

    /// Makes the first gateway and the second (configured in `dir2` by
    /// [`ClientWorld::second_gateway`]) a cluster: both keep their sessions in the Redis
    /// server at `url`, and the second hands out the first's pool. `extra` (TOML) is
    /// appended to both configurations.
    pub fn share_sessions(&self, dir2: &Path, url: &str, extra: &str) {
        for (conf, second) in [
            (self.dir.join("gateway.toml"), false),
            (dir2.join("gateway.toml"), true),
        ] {
            let mut text = fs::read_to_string(&conf).unwrap();
            if second {
                text = text.replace("10.78.0.0/24", "10.77.0.0/24");
            }
            fs::write(&conf, format!("session_store = \"{url}\"\n{text}{extra}")).unwrap();
        }
    }

    /// Adds the connection `name` (user alice) with both gateways' URLs, the first first.
    pub fn add_both_gateways(&self, name: &str) {
        let (one, two) = (
            format!("https://{GATEWAY}:8443"),
            format!("https://{GATEWAY2}:8443"),
        );
        let out = self.tunnel(
            &["add", name, "--url", &one, "--url", &two, "-u", "alice"],
            "",
        );
        assert!(
            out.status.success(),
            "add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The first connection's gateway URL and tunnel address, once it is connected.
    pub fn connected_to(&self) -> Option<(String, String)> {
        let status = self.status();
        let me = &status[0];
        (me["state"] == "connected").then(|| {
            (
                me["server"].as_str().unwrap_or_default().to_string(),
                me["ipv4"].as_str().unwrap_or_default().to_string(),
            )
        })
    }

    /// A CA file with both gateways' (self-signed) certificates, for tunneld to trust
    /// (`SSL_CERT_FILE`); `dir2` is the second's ([`ClientWorld::second_gateway`]).
    pub fn both_certificates(&self, dir2: &Path) -> PathBuf {
        let cas = self.dir.join("cas.pem");
        let both = fs::read_to_string(self.dir.join("cert.pem")).unwrap()
            + &fs::read_to_string(dir2.join("cert.pem")).unwrap();
        fs::write(&cas, both).unwrap();
        cas
    }

    /// Starts the gateway configured in `dir` (as [`ClientWorld::second_gateway`] made it),
    /// logging to `dir/gateway.log`.
    pub fn start_gateway_in(&self, dir: &Path) -> Proc {
        self.spawn_gateway(&[], dir)
    }

    /// Starts the gateway configured in `dir` through `wrapper`, its log appended to
    /// `dir/gateway.log`, and waits for it to say it runs (a line more than before: an
    /// earlier gateway killed without a word said it too).
    fn spawn_gateway(&self, wrapper: &[String], dir: &Path) -> Proc {
        let log_path = dir.join("gateway.log");
        let running = || {
            fs::read_to_string(&log_path)
                .unwrap_or_default()
                .matches("gateway running")
                .count()
        };
        let before = running();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = wrapped(&self.gw, wrapper, &self.bin.gateway)
            .arg("--config")
            .arg(dir.join("gateway.toml"))
            .env("NO_COLOR", "1")
            .stderr(log)
            .spawn()
            .unwrap();
        let mut p = Proc(child, "tunnel-gateway");
        wait_for("the gateway", Duration::from_secs(10), || {
            if let Some(status) = p.exited() {
                panic!(
                    "the gateway exited ({status}): {}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            running() > before
        });
        p
    }

    pub fn start_tunneld(&self) -> Proc {
        self.start_tunneld_with(&[])
    }

    /// Starts `tunneld` with these environment variables added (e.g. `SSL_CERT_FILE`, the CA
    /// certificates it trusts).
    pub fn start_tunneld_with(&self, env: &[(&str, &Path)]) -> Proc {
        self.start_tunneld_via(&[], env)
    }

    /// Starts `tunneld` through `wrapper` (as [`ClientWorld::start_gateway_via`]) with `env`
    /// added.
    pub fn start_tunneld_via(&self, wrapper: &[String], env: &[(&str, &Path)]) -> Proc {
        self.start_tunneld_full(wrapper, env, &[])
    }

    /// Starts `tunneld` with `args` added.
    pub fn start_tunneld_args(&self, args: &[&str]) -> Proc {
        self.start_tunneld_full(&[], &[], args)
    }

    /// tunneld's `/etc/resolv.conf`: a file of the world's, bind-mounted over it in a mount
    /// namespace of tunneld's own, so that pointing it at the DNS forwarder never touches the
    /// host's. Written (a resolver outside the tunnel) when the world is built.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// Runs `getent hosts name` as tunneld's resolver configuration says (in its mount
    /// namespace and the client's network namespace): the first address, or None.
    pub fn resolve(&self, tunneld: &Proc, name: &str) -> Option<String> {
        let out = self
            .client
            .command("nsenter")
            .args(["--target", &tunneld.id().to_string(), "--mount"])
            .args(["getent", "hosts", name])
            .output()
            .ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
    }

    fn start_tunneld_full(&self, wrapper: &[String], env: &[(&str, &Path)], args: &[&str]) -> Proc {
        let log = fs::File::create(self.dir.join("tunneld.log")).unwrap();
        // A mount namespace of its own, with the world's resolv.conf over the host's; then
        // the caller's wrapper, if any, and tunneld (each `exec`s the next: one process).
        let mut isolated: Vec<String> =
            ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        isolated.push(format!(
            "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
            self.resolv_conf().display()
        ));
        isolated.extend(wrapper.iter().cloned());
        let child = wrapped(&self.client, &isolated, &self.bin.tunneld)
            .args(args)
            .envs(env.iter().copied())
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--pin-dir")
            .arg(&self.pin_root)
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

    pub fn socket(&self) -> PathBuf {
        self.dir.join("tunneld.sock")
    }

    /// Runs `tunnel` in the client namespace with `stdin`.
    pub fn tunnel(&self, args: &[&str], stdin: &str) -> Output {
        self.tunnel_via(&[], args, stdin)
    }

    /// Runs `tunnel` in the client namespace through `wrapper` (as
    /// [`ClientWorld::start_gateway_via`]; `setpriv ...` for another user) with `stdin`.
    pub fn tunnel_via(&self, wrapper: &[String], args: &[&str], stdin: &str) -> Output {
        let mut child = wrapped(&self.client, wrapper, &self.bin.tunnel)
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

    /// Connects the stored connection `name` as alice, with her password and the gateway's
    /// pin.
    pub fn connect_stored(&self, name: &str) -> Output {
        self.tunnel(
            &[
                "connect",
                name,
                "-u",
                "alice",
                "--password-stdin",
                "--servercert",
                &self.pin,
            ],
            "s3cret\n",
        )
    }

    pub fn connect(&self) -> Output {
        self.connect_with(&[])
    }

    pub fn connect_with(&self, extra: &[&str]) -> Output {
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
    pub fn udp_seen_as(&self, port: u16) -> Option<String> {
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

    /// Sends `count` datagrams of `size` bytes to corp's UDP echo at once (each numbered,
    /// its bytes following from the number) and returns, sorted, those that came back
    /// exactly as sent, and how many came back in all.
    pub fn udp_burst(&self, count: u16, size: usize) -> (Vec<u16>, usize) {
        let datagram = move |i: u16| -> Vec<u8> {
            let mut d: Vec<u8> = (0..size)
                .map(|j| (j as u16 ^ i.wrapping_mul(31)) as u8)
                .collect();
            d[..2].copy_from_slice(&i.to_be_bytes());
            d
        };
        self.client
            .enter(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
                s.connect((CORP, UDP_ECHO_PORT)).unwrap();
                for i in 0..count {
                    s.send(&datagram(i)).unwrap();
                }
                s.set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
                let (mut intact, mut all) = (Vec::new(), 0);
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = s.recv(&mut buf) {
                    all += 1;
                    if n >= 2 {
                        let i = u16::from_be_bytes([buf[0], buf[1]]);
                        if buf[..n] == datagram(i)[..] {
                            intact.push(i);
                        }
                    }
                }
                intact.sort_unstable();
                (intact, all)
            })
            .unwrap()
    }

    /// Runs a shell snippet in the client namespace inside `cgroup` and returns its stdout.
    pub fn in_cgroup(&self, cgroup: &Path, script: &str) -> String {
        run_in_cgroup(&self.client, cgroup, script).unwrap_or_default()
    }

    /// Connects to `addr` from the client and returns the peer address the server saw.
    pub fn seen_as(&self, addr: &str) -> Option<String> {
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

    pub fn status(&self) -> serde_json::Value {
        let out = self.tunnel(&["status", "--json"], "");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    pub fn counters(&self) -> String {
        String::from_utf8_lossy(&self.tunnel(&["counters"], "").stdout).into_owned()
    }
}

/// A counter from `tunnel counters` output (0 when absent).
pub fn counter(text: &str, conn: &str, reason: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == conn && f[1] == reason).then(|| f[2].parse().unwrap_or(0))
        })
        .unwrap_or(0)
}
