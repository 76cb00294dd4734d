//! Interop: Debian's `openconnect --protocol=pulse`, a client nobody here wrote, against our
//! gateway, in network namespaces.
//!
//! ```text
//!  ┌──── client ────┐        ┌──────── gw ─────────┐        ┌──── corp ─────┐
//!  │ openconnect    │        │ tunnel-gateway       │        │ 172.20.0.2     │
//!  │ cl0 .60.2 ─────┼─ veth ─┼─ gwl0 192.168.60.1   │        │ echo :9000     │
//!  │ oc0 10.77.0.x  │        │ gwc0 172.20.0.1 ─────┼─ veth ─┼─ corp0         │
//!  └────────────────┘        │ tgw0 10.77.0.1/24    │        └────────────────┘
//!                            └──────────────────────┘
//! ```
//!
//! The server certificate is pinned with `--servercert pin-sha256:...`; the password comes on
//! stdin; a small vpnc-script configures the tunnel and records what openconnect was told.
//! Figures (login time, throughput) are printed; run with `--nocapture` (and `--release` for
//! meaningful throughput) to see them.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tunnel_user::testbed::{Netns, pki::write_gateway_certificate, veth};

const GATEWAY: &str = "192.168.60.1";
const CORP: &str = "172.20.0.2";
const ECHO_PORT: u16 = 9000;

/// A child process killed (politely first) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn stop(&mut self) {
        // Our own child: ends it so it cleans up after itself.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
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
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

struct World {
    dir: PathBuf,
    client: Netns,
    gw: Netns,
    _corp: Netns,
    pin: String,
}

fn build_world(tag: &str) -> World {
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("tunnel-oc-{tag}-{id}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let client = Netns::create(&format!("toc{id}-{tag}-c")).unwrap();
    let gw = Netns::create(&format!("toc{id}-{tag}-g")).unwrap();
    let corp = Netns::create(&format!("toc{id}-{tag}-x")).unwrap();
    veth(&client, "cl0", &gw, "gwl0").unwrap();
    veth(&gw, "gwc0", &corp, "corp0").unwrap();
    client.sh("ip addr add 192.168.60.2/24 dev cl0").unwrap();
    gw.sh("ip addr add 192.168.60.1/24 dev gwl0; ip addr add 172.20.0.1/24 dev gwc0")
        .unwrap();
    corp.sh("ip addr add 172.20.0.2/24 dev corp0; ip route add default via 172.20.0.1")
        .unwrap();
    // An echo server in corp.
    let listener = corp
        .enter(|| TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, ECHO_PORT)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    // The gateway's certificate, and its pin.
    let pin = write_gateway_certificate(&dir, GATEWAY.parse().unwrap()).unwrap();
    let pin = pin.to_string();
    let pin = pin.trim_start_matches("pin-sha256:").to_string();
    // A client CA and a certificate for alice, for certificate logins.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tunnel test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
    let alice_key = rcgen::KeyPair::generate().unwrap();
    let mut alice = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    alice
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let alice_cert = alice.signed_by(&alice_key, &ca_issuer).unwrap();
    fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    fs::write(dir.join("alice.pem"), alice_cert.pem()).unwrap();
    fs::write(dir.join("alice.key"), alice_key.serialize_pem()).unwrap();
    tunnel_user::gateway::add_user(
        &dir.join("users"),
        "alice",
        &["Users".to_string()],
        b"correct horse",
    )
    .unwrap();
    fs::write(
        dir.join("vpnc-script"),
        format!(
            r#"#!/bin/sh
if [ "$reason" = connect ]; then
  # No IPv6 on the tunnel here: the kernel's router solicitations would count as traffic.
  sysctl -qw "net.ipv6.conf.$TUNDEV.disable_ipv6=1"
  ip link set "$TUNDEV" up mtu "${{INTERNAL_IP4_MTU:-1400}}"
  ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
  i=0
  while [ $i -lt "${{CISCO_SPLIT_INC:-0}}" ]; do
    eval a=\$CISCO_SPLIT_INC_${{i}}_ADDR; eval m=\$CISCO_SPLIT_INC_${{i}}_MASKLEN
    ip route add "$a/$m" dev "$TUNDEV"
    i=$((i+1))
  done
fi
# Recorded last, and atomically: the test reads it as "the tunnel is configured".
env | sort > "{dir}/env-$reason.tmp" && mv "{dir}/env-$reason.tmp" "{dir}/env-$reason"
exit 0
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .args(["+x"])
        .arg(dir.join("vpnc-script"))
        .status()
        .unwrap();
    World {
        dir,
        client,
        gw,
        _corp: corp,
        pin,
    }
}

fn start_gateway(w: &World, idle_timeout_secs: u32) -> Proc {
    let config = format!(
        r#"listen = "{GATEWAY}:8443"
dns = ["172.20.0.53"]
search_domains = ["corp.example"]
mtu = 1400
idle_timeout_secs = {idle_timeout_secs}
tun_name = "tgw0"

[tls]
certificate = "cert.pem"
key = "key.pem"
client_ca = "ca.pem"

[auth]
users_file = "users"
# Debian's openconnect 9.01 predates the current password request.
password_request = "legacy"

[pool]
ipv4 = "10.77.0.0/24"

[routes]
include = ["172.20.0.0/24"]

[esp]
port = 4500
"#
    );
    let path = w.dir.join("gateway.toml");
    fs::write(&path, config).unwrap();
    let log = fs::File::create(w.dir.join("gateway.log")).unwrap();
    let child =
        w.gw.command(env!("CARGO_BIN_EXE_tunnel-gateway"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting tunnel-gateway");
    let proc = Proc {
        child,
        name: "tunnel-gateway",
    };
    wait_for("the gateway to listen", Duration::from_secs(10), || {
        gateway_log(w).contains("gateway running")
    });
    proc
}

fn gateway_log(w: &World) -> String {
    fs::read_to_string(w.dir.join("gateway.log")).unwrap_or_default()
}

/// How many times `what` appears in the gateway's log so far.
fn gateway_log_count(w: &World, what: &str) -> usize {
    gateway_log(w).matches(what).count()
}

fn start_openconnect(w: &World, password: &str, extra: &[&str], log_name: &str) -> Proc {
    openconnect(w, password, extra, log_name, true)
}

/// openconnect with `--user alice` (unless `user` is false) and `stdin_text` on stdin.
fn openconnect(w: &World, stdin_text: &str, extra: &[&str], log_name: &str, user: bool) -> Proc {
    let log = fs::File::create(w.dir.join(log_name)).unwrap();
    let mut child = w
        .client
        .command("openconnect")
        .args(["--protocol=pulse", "--non-inter"])
        .args(if user {
            &["--user", "alice", "--passwd-on-stdin"][..]
        } else {
            &[][..]
        })
        .arg(format!("--servercert=pin-sha256:{}", w.pin))
        .arg("--script")
        .arg(w.dir.join("vpnc-script"))
        .args(["--interface", "oc0"])
        .args(extra)
        .arg(format!("https://{GATEWAY}:8443/"))
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting openconnect");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{stdin_text}\n").as_bytes())
        .unwrap();
    Proc {
        child,
        name: "openconnect",
    }
}

fn oc_log(w: &World, name: &str) -> String {
    fs::read_to_string(w.dir.join(name)).unwrap_or_default()
}

/// Echoes `bytes` through the tunnel to corp and checks them.
fn transfer(w: &World, bytes: usize) -> Duration {
    let addr: SocketAddr = format!("{CORP}:{ECHO_PORT}").parse().unwrap();
    w.client
        .enter(move || {
            let start = Instant::now();
            let mut s =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to corp");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let data: Vec<u8> = (0..bytes).map(|i| (i * 13 % 251) as u8).collect();
            let mut writer = s.try_clone().unwrap();
            let sent = data.clone();
            let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
            let mut back = vec![0u8; bytes];
            s.read_exact(&mut back).expect("echo back");
            t.join().unwrap();
            assert!(back == data, "data through the tunnel came back intact");
            start.elapsed()
        })
        .unwrap()
}

fn iperf_mbps(w: &World) -> Option<f64> {
    let mut server = w
        ._corp
        .command("iperf3")
        .args(["-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = w
        .client
        .command("iperf3")
        .args(["-c", CORP, "-t", "3", "-J"])
        .output()
        .ok()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
}

/// Whether the vpnc-script has recorded its connect call (the shell creates the file before
/// `sort` fills it, so wait for content).
fn script_ran(w: &World) -> bool {
    fs::read_to_string(w.dir.join("env-connect")).is_ok_and(|e| e.contains("TUNDEV="))
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let oc = Command::new("openconnect")
        .arg("--version")
        .output()
        .is_ok();
    if !root || !oc {
        eprintln!("SKIP: needs root and openconnect (cargo xtask setup installs it)");
    }
    root && oc
}

fn connect_and_use(w: &World, extra: &[&str], log: &str, want_esp: bool) {
    let started = Instant::now();
    let mut oc = start_openconnect(w, "correct horse", extra, log);
    wait_for(
        "the vpnc-script connect call",
        Duration::from_secs(20),
        || script_ran(w),
    );
    let env = fs::read_to_string(w.dir.join("env-connect")).unwrap();
    for want in [
        "INTERNAL_IP4_ADDRESS=10.77.0.",
        "INTERNAL_IP4_DNS=172.20.0.53",
        "CISCO_DEF_DOMAIN=corp.example",
        "CISCO_SPLIT_INC_0_ADDR=172.20.0.0",
        "CISCO_SPLIT_INC_0_MASKLEN=24",
        "INTERNAL_IP4_MTU=1400",
    ] {
        assert!(env.contains(want), "openconnect was told {want}: {env}");
    }
    // Login time: from starting openconnect to the first packet answered through the tunnel.
    wait_for("a ping through the tunnel", Duration::from_secs(20), || {
        w.client.sh(&format!("ping -c 1 -W 1 {CORP}")).is_ok()
    });
    let login = started.elapsed();
    if want_esp {
        wait_for("ESP to come up", Duration::from_secs(10), || {
            oc_log(w, log).contains("ESP session established")
        });
    } else {
        assert!(
            !oc_log(w, log).contains("ESP session established"),
            "--no-dtls keeps ESP off"
        );
    }
    w.client
        .sh(&format!("ping -c 5 -i 0.2 -W 2 {CORP}"))
        .expect("ping through the tunnel");
    let took = transfer(w, 4 << 20);
    let mbps = iperf_mbps(w);
    eprintln!(
        "openconnect over {}: login (start to first packet) {:.0} ms; 4 MiB echo in {:.0} ms; iperf3 {}",
        if want_esp { "ESP" } else { "TLS" },
        login.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        mbps.map_or("unavailable".to_string(), |m| format!("{m:.0} Mbit/s")),
    );
    oc.stop();
    wait_for(
        "the gateway to release the session",
        Duration::from_secs(5),
        || gateway_log(w).contains("address released"),
    );
    let _ = fs::remove_file(w.dir.join("env-connect"));
}

#[test]
fn openconnect_over_esp_and_tls_and_a_wrong_password() {
    if !root() {
        return;
    }
    let w = build_world("a");
    let _gw = start_gateway(&w, 600);
    connect_and_use(&w, &[], "oc-esp.log", true);
    let established = gateway_log_count(&w, "session established");
    connect_and_use(&w, &["--no-dtls"], "oc-tls.log", false);
    assert_eq!(
        gateway_log_count(&w, "session established"),
        established + 1
    );

    // A client that dies without a word over TLS: the packet thread reading established
    // sessions' connections finds it closed, and the session is kept for a resume (not
    // released, as a logout would).
    let mut oc = start_openconnect(&w, "correct horse", &["--no-dtls"], "oc-killed.log");
    wait_for("a ping through the tunnel", Duration::from_secs(20), || {
        w.client.sh(&format!("ping -c 1 -W 1 {CORP}")).is_ok()
    });
    const LOST: &str = "connection lost; session resumable";
    let released = gateway_log_count(&w, "address released");
    let lost = gateway_log_count(&w, LOST);
    let _ = oc.child.kill();
    let _ = oc.child.wait();
    wait_for(
        "the gateway to notice the dropped connection",
        Duration::from_secs(5),
        || gateway_log_count(&w, LOST) > lost,
    );
    assert_eq!(
        gateway_log_count(&w, "address released"),
        released,
        "a dropped connection keeps its address for a resume"
    );
    let _ = fs::remove_file(w.dir.join("env-connect"));

    // A wrong password: openconnect fails, and no session is created.
    let before = gateway_log_count(&w, "session established");
    let mut oc = start_openconnect(&w, "wrong", &[], "oc-wrong.log");
    let status = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = oc.child.try_wait() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "openconnect with a wrong password gave up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(
        !status.success(),
        "openconnect must fail: {}",
        oc_log(&w, "oc-wrong.log")
    );
    let log = gateway_log(&w);
    assert!(log.contains("login failed"), "the failure is logged: {log}");
    assert!(log.contains("192.168.60.2"), "with the peer address");
    assert!(
        !log.contains("correct horse") && !log.contains("wrong\n"),
        "no password in the log"
    );
    assert_eq!(
        log.matches("session established").count(),
        before,
        "no session was created"
    );
    assert!(!w.dir.join("env-connect").exists());
}

#[test]
fn an_idle_session_times_out_on_schedule() {
    if !root() {
        return;
    }
    let w = build_world("i");
    let idle = 4;
    let _gw = start_gateway(&w, idle);
    let mut oc = start_openconnect(&w, "correct horse", &[], "oc-idle.log");
    wait_for(
        "the vpnc-script connect call",
        Duration::from_secs(20),
        || script_ran(&w),
    );
    w.client
        .sh(&format!("ping -c 1 -W 2 {CORP}"))
        .expect("ping through the tunnel");
    let last_traffic = Instant::now();
    wait_for(
        "openconnect to be told the session idled out",
        Duration::from_secs(idle as u64 + 10),
        || matches!(oc.child.try_wait(), Ok(Some(_))),
    );
    let after = last_traffic.elapsed();
    eprintln!(
        "idle timeout {idle} s: session ended {:.1} s after the last packet",
        after.as_secs_f64()
    );
    assert!(
        after >= Duration::from_secs(idle as u64),
        "not before the idle timeout ({after:?})"
    );
    assert!(
        after <= Duration::from_secs(idle as u64 + 3),
        "on schedule ({after:?})"
    );
    let log = gateway_log(&w);
    assert!(log.contains("IdleTimeout"), "{log}");
    assert!(log.contains("address released"), "{log}");
    oc.stop();
}

/// Waits for a child to exit and returns its status.
fn exit_status(p: &mut Proc, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(s)) = p.child.try_wait() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not exit within {within:?}",
            p.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cookie_resume_certificate_login_and_graceful_shutdown() {
    if !root() {
        return;
    }
    let w = build_world("r");
    let mut gw = start_gateway(&w, 600);

    // `--authenticate` logs in, prints the DSID cookie and drops the connection; the gateway
    // keeps the session resumable, and a second openconnect resumes it with the cookie alone.
    let mut auth = openconnect(
        &w,
        "correct horse",
        &["--authenticate"],
        "oc-auth.log",
        true,
    );
    assert!(
        exit_status(&mut auth, Duration::from_secs(20)).success(),
        "{}",
        oc_log(&w, "oc-auth.log")
    );
    let printed = oc_log(&w, "oc-auth.log");
    let cookie = printed
        .lines()
        .find_map(|l| l.strip_prefix("COOKIE="))
        .map(|c| c.trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("openconnect printed a cookie: {printed}"));
    wait_for(
        "the dropped login to be parked",
        Duration::from_secs(5),
        || gateway_log(&w).contains("resumable with its cookie"),
    );
    let mut resumed = openconnect(
        &w,
        "",
        &[&format!("--cookie={cookie}")],
        "oc-resume.log",
        false,
    );
    wait_for(
        "the vpnc-script connect call",
        Duration::from_secs(20),
        || script_ran(&w),
    );
    w.client
        .sh(&format!("ping -c 2 -W 2 {CORP}"))
        .expect("ping through the resumed session");
    let log = gateway_log(&w);
    assert!(
        log.contains("resumed=true"),
        "the gateway resumed the session: {log}"
    );
    assert_eq!(
        log.matches("address released").count(),
        0,
        "the address stayed with the session"
    );
    resumed.stop();
    let _ = fs::remove_file(w.dir.join("env-connect"));

    // A client certificate from the configured CA does not replace alice's password (the
    // default `auth.certificate.login = "password"`): with a wrong one she is refused...
    let mut wrong = start_openconnect(
        &w,
        "not her password",
        &[
            "--certificate",
            &w.dir.join("alice.pem").display().to_string(),
            "--sslkey",
            &w.dir.join("alice.key").display().to_string(),
        ],
        "oc-cert-wrong.log",
    );
    assert!(
        !exit_status(&mut wrong, Duration::from_secs(20)).success(),
        "{}",
        oc_log(&w, "oc-cert-wrong.log")
    );
    assert!(!script_ran(&w));
    // ... and with hers she is in.
    let mut cert = start_openconnect(
        &w,
        "correct horse",
        &[
            "--certificate",
            &w.dir.join("alice.pem").display().to_string(),
            "--sslkey",
            &w.dir.join("alice.key").display().to_string(),
        ],
        "oc-cert.log",
    );
    wait_for(
        "the vpnc-script connect call",
        Duration::from_secs(20),
        || script_ran(&w),
    );
    assert!(gateway_log(&w).contains("authenticated by password and client certificate"));
    w.client
        .sh(&format!("ping -c 1 -W 2 {CORP}"))
        .expect("ping with a certificate login");

    // SIGTERM: the gateway tells the client the session is over, then exits.
    gw.stop();
    let status = exit_status(&mut cert, Duration::from_secs(10));
    assert!(
        !status.success(),
        "openconnect ends when its session is terminated"
    );
    let said = oc_log(&w, "oc-cert.log");
    assert!(
        said.contains("shutting down"),
        "the client heard why: {said}"
    );
    let log = gateway_log(&w);
    assert!(log.contains("gateway stopped"), "{log}");
}

/// A gateway killed without a word (SIGKILL) and started again resumes openconnect's
/// session from its session store, over ESP and over TLS: openconnect reconnects with its
/// cookie (where it would give up with "Cookie was rejected by server" were the session
/// lost), keeps its address, and traffic flows again.
#[test]
fn a_killed_gateway_started_again_resumes_openconnect_over_esp_and_tls() {
    if !root() {
        return;
    }
    let w = build_world("k");
    let mut gw = start_gateway(&w, 600);
    for (extra, log, esp) in [
        (&[][..], "oc-kill-esp.log", true),
        (&["--no-dtls"][..], "oc-kill-tls.log", false),
    ] {
        let mut oc = start_openconnect(&w, "correct horse", extra, log);
        wait_for(
            "the vpnc-script connect call",
            Duration::from_secs(20),
            || script_ran(&w),
        );
        let env = fs::read_to_string(w.dir.join("env-connect")).unwrap();
        let addr = env
            .lines()
            .find_map(|l| l.strip_prefix("INTERNAL_IP4_ADDRESS="))
            .unwrap_or_else(|| panic!("an address: {env}"))
            .to_string();
        if esp {
            wait_for("ESP to come up", Duration::from_secs(10), || {
                oc_log(&w, log).contains("ESP session established")
            });
        }
        w.client
            .sh(&format!("ping -c 1 -W 2 {CORP}"))
            .expect("ping before the kill");

        gw.child.kill().unwrap();
        gw.child.wait().unwrap();
        let killed = Instant::now();
        gw = start_gateway(&w, 600);
        assert!(
            gateway_log(&w).contains("restored=1"),
            "{}",
            gateway_log(&w)
        );
        let back = wait_for(
            "a ping through the resumed session",
            Duration::from_secs(60),
            || w.client.sh(&format!("ping -c 1 -W 1 {CORP}")).is_ok(),
        );
        let glog = gateway_log(&w);
        let resumed = glog
            .lines()
            .find(|l| l.contains("session established"))
            .unwrap_or_else(|| panic!("{glog}"));
        assert!(
            resumed.contains("resumed=true") && resumed.contains(&format!("ipv4={addr}")),
            "resumed with its address {addr}: {resumed}"
        );
        let said = oc_log(&w, log);
        assert!(!said.contains("Cookie was rejected"), "{said}");
        assert!(
            oc.child.try_wait().unwrap().is_none(),
            "openconnect runs on: {said}"
        );
        eprintln!(
            "openconnect over {}: traffic again {:.0} ms after the kill ({:.0} ms after the new gateway ran)",
            if esp { "ESP" } else { "TLS" },
            killed.elapsed().as_secs_f64() * 1e3,
            back.as_secs_f64() * 1e3
        );
        oc.stop();
        wait_for(
            "the gateway to release the session",
            Duration::from_secs(5),
            || gateway_log(&w).contains("address released"),
        );
        let _ = fs::remove_file(w.dir.join("env-connect"));
    }
}
