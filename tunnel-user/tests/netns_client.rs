//! The client end to end: `tunneld` and `tunnel` against our gateway, in namespaces, with the
//! kernel data path deciding what is tunnelled. The world is drawn in
//! `tunnel_user::testbed::client_world`.

use std::{
    fs,
    process::Output,
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::code;

use tunnel_user::testbed::client_world::{
    CORP, ClientWorld, EXCLUDED, GATEWAY, PORT, counter, wait_for,
};

fn world(tag: &str) -> ClientWorld {
    ClientWorld::build(tag, tunnel_user::this_crates_binaries!())
}

fn root() -> bool {
    tunnel_user::testbed::root_or_skip()
}

#[test]
fn client_connects_splits_traffic_and_survives_a_gateway_restart() {
    if !root() {
        return;
    }
    let w = world("a");
    let mut gw = w.start_gateway();
    let _td = w.start_tunneld();

    let started = Instant::now();
    // The shortest disconnect timeout the seed allows: a later outage must be timed from
    // its own start, not from an earlier one.
    let out = w.connect_with(&["--kvp", "disconnectTimeoutInSeconds=5"]);
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
    // Our gateway gives our client its own suite (openconnect gets a Pulse one).
    assert_eq!(me["cipher"], "aes256-gcm", "{status}");
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
    // No reverse-path check on the TUN device where the system makes none.
    let rp = w
        .client
        .sh("sysctl -n net.ipv4.conf.tun0.rp_filter")
        .unwrap();
    assert_eq!(rp.trim(), "0");
    // Neither end queues in front of its TUN device (its ring is the queue).
    for (ns, dev) in [(&w.client, "tun0"), (&w.gw, "tgw0")] {
        let qdisc = ns.sh(&format!("tc qdisc show dev {dev} root")).unwrap();
        assert!(qdisc.contains("noqueue"), "{dev}: {qdisc}");
    }

    // Suspend keeps the session at the gateway but takes the tunnel down; resume brings the
    // same session (same address) back.
    let out = w.tunnel(&["suspend", GATEWAY], "");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.status()[0]["state"], "suspended");
    assert_eq!(
        w.seen_as(CORP).as_deref(),
        Some("192.168.70.2"),
        "no tunnel while suspended"
    );
    assert_eq!(
        code(&w.tunnel(&["suspend", GATEWAY], "")),
        25,
        "suspending twice"
    );
    let out = w.tunnel(&["resume", GATEWAY], "");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the resumed tunnel", Duration::from_secs(20), || {
        w.seen_as(CORP).as_deref() == Some(tunnel_addr.as_str())
    });
    assert!(
        fs::read_to_string(w.dir.join("gateway.log"))
            .unwrap_or_default()
            .contains("resumed=true"),
        "resumed with the cookie, not a new login"
    );

    // The gateway dies and comes back: traffic resumes with no user action.
    gw.stop();
    let first_loss = Instant::now();
    let gw2 = w.start_gateway();
    let reconnect = wait_for(
        "traffic through the reconnected tunnel",
        Duration::from_secs(60),
        || w.seen_as(CORP).is_some_and(|s| s.starts_with("10.77.0.")),
    );
    let st = w.status();
    assert_eq!(st[0]["state"], "connected", "{st}");
    assert!(st[0]["reconnects"].as_u64().unwrap_or(0) >= 1, "{st}");

    // Later, when more than the disconnect timeout has passed since that first outage
    // began, the gateway goes away again: a new outage, reconnected like the first (not
    // given up because the old one began long enough ago).
    std::thread::sleep(Duration::from_secs(6).saturating_sub(first_loss.elapsed()));
    let mut gw2 = gw2;
    gw2.stop();
    let _gw3 = w.start_gateway();
    let second_reconnect = wait_for(
        "traffic through the tunnel after a second gateway restart",
        Duration::from_secs(30),
        || {
            let st = w.status();
            assert_ne!(st[0]["state"], "failed", "the client gave up: {st}");
            w.seen_as(CORP).is_some_and(|s| s.starts_with("10.77.0."))
        },
    );
    let st = w.status();
    assert_eq!(st[0]["state"], "connected", "{st}");
    assert!(st[0]["reconnects"].as_u64().unwrap_or(0) >= 2, "{st}");
    eprintln!(
        "client: connect {:.0} ms; reconnect after gateway restarts {:.0} and {:.0} ms",
        connect_time.as_secs_f64() * 1e3,
        reconnect.as_secs_f64() * 1e3,
        second_reconnect.as_secs_f64() * 1e3
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

/// Bursts of UDP datagrams both ways through ESP: the receiving ends join them into USO
/// writes where the kernel takes them, and every datagram comes back once and intact.
#[test]
fn udp_bursts_cross_the_tunnel_intact() {
    if !root() {
        return;
    }
    let w = world("b");
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("ESP", Duration::from_secs(10), || {
        w.status()[0]["transport"] == "esp"
    });
    for (count, size) in [(300u16, 1200usize), (300, 64), (40, 1372)] {
        let (intact, all) = w.udp_burst(count, size);
        assert_eq!(all, usize::from(count), "{count} x {size} B: all came back");
        assert_eq!(
            intact,
            (0..count).collect::<Vec<_>>(),
            "{count} x {size} B: intact"
        );
    }
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);
}

/// `TunIP` is the TUN device's own address; what leaves through the tunnel still comes from
/// the address the gateway assigned (the gateway drops any other source as spoofed).
#[test]
fn tun_ip_is_the_devices_address_and_packets_leave_from_the_gateways() {
    if !root() {
        return;
    }
    let w = world("t");
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect_with(&["--kvp", "TunIP=172.31.9.9"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    // The gateway drops what comes from any address but the one it assigned.
    let seen = w.seen_as(CORP).expect("corp is reached through the tunnel");
    assert!(seen.starts_with("10.77.0."), "corp saw {seen}");
    let status = w.status();
    let assigned = status[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(
        assigned, seen,
        "status shows the gateway's address: {status}"
    );
    let device = w
        .client
        .enter(|| {
            std::process::Command::new("ip")
                .args(["-4", "-o", "addr", "show", "dev", "tun0"])
                .output()
        })
        .unwrap()
        .unwrap();
    let device = String::from_utf8_lossy(&device.stdout).into_owned();
    assert!(device.contains("inet 172.31.9.9/32"), "{device}");
    assert!(!device.contains(&assigned), "{device}");
    let (intact, all) = w.udp_burst(50, 1200);
    assert_eq!((intact.len(), all), (50, 50), "UDP through the tunnel");
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);
}

#[test]
fn exit_codes_follow_the_launcher() {
    if !root() {
        return;
    }
    let w = world("e");
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
    let w = world("u");
    // A machine that filters strictly on reverse paths: the tunnel's replies, whose
    // sources route via the uplink, must still arrive (the TUN device filters loosely).
    w.client
        .sh("sysctl -qw net.ipv4.conf.all.rp_filter=1")
        .unwrap();
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
    let rp = w
        .client
        .sh("sysctl -n net.ipv4.conf.tun0.rp_filter")
        .unwrap();
    assert_eq!(rp.trim(), "2", "loose under a strict system");
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

#[test]
fn stored_connections_events_and_a_corrupt_store() {
    if !root() {
        return;
    }
    let w = world("s");
    let _gw = w.start_gateway();
    // A corrupt store is kept aside and reported; the daemon starts with an empty one.
    let state = w.dir.join("state");
    fs::create_dir_all(&state).unwrap();
    fs::write(state.join("connections.json"), "{ this is not json").unwrap();
    let _td = w.start_tunneld();
    let kept: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("connections.json.corrupt-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the corrupt file is kept aside");
    assert_eq!(
        fs::read_to_string(kept[0].path()).unwrap(),
        "{ this is not json"
    );

    // Add, list, connect by name, edit, delete.
    let url = format!("https://{GATEWAY}:8443");
    let out = w.tunnel(
        &[
            "add",
            "corp",
            "--url",
            &url,
            "-u",
            "alice",
            "--kvp",
            "SplitUDPPortList=5000",
        ],
        "",
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = w.tunnel(&["add", "corp", "--url", &url], "");
    assert_eq!(code(&out), 1, "the same name twice is refused");
    let out = w.tunnel(&["add", "bad", "--url", &url, "--kvp", "MTU=70000"], "");
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MTU"),
        "the error names the key"
    );
    let listed = String::from_utf8_lossy(&w.tunnel(&["list"], "").stdout).into_owned();
    assert!(
        listed.contains("corp") && !listed.contains("bad"),
        "{listed}"
    );
    let out = w.tunnel(
        &[
            "connect",
            "corp",
            "--password-stdin",
            "--servercert",
            &w.pin,
            "-u",
            "alice",
        ],
        "s3cret\n",
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(
        w.udp_seen_as(7000).as_deref(),
        Some("192.168.70.2"),
        "the stored KVP applies"
    );
    assert_eq!(w.udp_seen_as(5000).as_deref(), Some(tunnel_addr.as_str()));
    let out = w.tunnel(&["delete", "corp"], "");
    assert_eq!(code(&out), 25, "a running connection is not deleted");
    let out = w.tunnel(&["edit", "corp", "--kvp", "SplitUDPPortList=7000"], "");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        w.status(),
        serde_json::json!([]),
        "editing disconnects (event 108)"
    );
    let out = w.tunnel(&["delete", "corp"], "");
    assert_eq!(code(&out), 0);
    assert_eq!(code(&w.tunnel(&["delete", "corp"], "")), 4);

    // The event log has the seed's texts; the diagnostics bundle carries it.
    let bundle = w.dir.join("diag.json");
    let out = w.tunnel(&["logs", "save", &bundle.display().to_string()], "");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let diag = fs::read_to_string(&bundle).unwrap();
    for text in [
        "The Ivanti service version",
        "User requested connection corp to start.",
        "The connection corp was established successfully to address 192.168.70.1.",
        "Connection corp is disconnected because it was modified.",
    ] {
        assert!(diag.contains(text), "missing '{text}' in the log: {diag}");
    }
    assert!(!diag.contains("s3cret"), "no password in the diagnostics");
}

/// `tunnel logs save FILE` writes a new owner-only file and nothing else: a link planted at
/// the path is not followed (the root-owned file it points at keeps its contents), an
/// existing file is not overwritten, and the bundle holds none of the secrets a running
/// connection used (password, its live DSID cookie, pin, client certificate and key).
#[test]
fn logs_save_writes_only_a_new_private_file_without_secrets() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use tunnel_user::client::control::{self, ClientCertPem, Credentials, Request};
    if !root() {
        return;
    }
    let w = world("l");
    // Debian's openconnect 9.01, which makes the live DSID below, predates the current
    // password request.
    let config = w.dir.join("gateway.toml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        text.replace("[auth]\n", "[auth]\npassword_request = \"legacy\"\n"),
    )
    .unwrap();
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();

    // A connection that used every kind of secret: a live DSID (issued by the gateway to a
    // login of openconnect's; tunneld resumes that session with it), the password, an
    // explicit pin and a client certificate (offered only if asked for; ours does not ask).
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["alice".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (
        w.dir.join("alice-cert-4e1d.pem"),
        w.dir.join("alice-key-9b7c.pem"),
    );
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    let cookie = dsid_from_openconnect(&w);
    let connect = Request::Connect {
        name: None,
        url: Some(format!("https://{GATEWAY}:8443")),
        credentials: Box::new(Credentials {
            user: Some("alice".into()),
            password: Some("s3cret".into()),
            cookie: Some(cookie.clone()),
            pin: Some(w.pin.clone()),
            client_cert: Some(ClientCertPem::read(&cert_path, Some(&key_path)).unwrap()),
            ..Default::default()
        }),
        timeout_secs: Some(45),
    };
    let r = control::call(&w.socket(), &connect, Duration::from_secs(50)).unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.status()[0]["state"], "connected");
    assert!(
        fs::read_to_string(w.dir.join("gateway.log"))
            .unwrap_or_default()
            .contains("resumed=true"),
        "tunneld holds the live DSID: it resumed the session with it"
    );

    // A root-owned file and an attacker's link to it at the path the bundle is asked for.
    let victim = w.dir.join("victim");
    fs::write(&victim, "root's file\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let link = w.dir.join("diag-link.json");
    symlink(&victim, &link).unwrap();
    let out = w.tunnel(&["logs", "save", &link.display().to_string()], "");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(code(&out), 1, "a link at the path is refused: {said}");
    assert!(said.contains("already there"), "{said}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's file\n");
    assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o644);
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());

    // An existing file is not overwritten.
    let existing = w.dir.join("existing.json");
    fs::write(&existing, "keep me").unwrap();
    let out = w.tunnel(&["logs", "save", &existing.display().to_string()], "");
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read_to_string(&existing).unwrap(), "keep me");

    // A new path: written, owner-only, with the live connection and no secret.
    let bundle = w.dir.join("diag.json");
    let out = w.tunnel(&["logs", "save", &bundle.display().to_string()], "");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(&bundle).unwrap().mode() & 0o7777, 0o600);
    let diag = fs::read_to_string(&bundle).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&diag).unwrap();
    assert_eq!(parsed["status"][0]["state"], "connected", "{diag}");
    let pin_b64 = w.pin.trim_start_matches("pin-sha256:");
    let key_pem = key.serialize_pem();
    let key_line = key_pem.lines().nth(1).unwrap();
    let cert_line = cert.pem().lines().nth(1).unwrap().to_string();
    for secret in [
        "s3cret",
        &cookie,
        pin_b64,
        "alice-cert-4e1d",
        "alice-key-9b7c",
        key_line,
        &cert_line,
    ] {
        assert!(!diag.contains(secret), "'{secret}' in the bundle: {diag}");
    }
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);
}

/// Logs alice in with openconnect's `--authenticate`, which prints the DSID cookie the
/// gateway issued (returned here without its `DSID=`) and leaves; the gateway keeps the
/// session for a resume with that cookie.
fn dsid_from_openconnect(w: &ClientWorld) -> String {
    use std::io::Write as _;
    let mut child = w
        .client
        .command("openconnect")
        .args([
            "--protocol=pulse",
            "--authenticate",
            "--non-inter",
            "--user",
            "alice",
            "--passwd-on-stdin",
        ])
        .arg(format!("--servercert={}", w.pin))
        .arg(format!("https://{GATEWAY}:8443/"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openconnect (cargo xtask setup installs it)");
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let cookie = said
        .lines()
        .find_map(|l| l.strip_prefix("COOKIE="))
        // openconnect writes it as the HTTP cookie, `DSID=<value>`; the protocol carries the
        // value.
        .map(|c| c.trim_matches('\'').trim_start_matches("DSID=").to_string())
        .unwrap_or_else(|| {
            panic!(
                "no COOKIE from openconnect --authenticate: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(cookie.len() >= 16, "a DSID: {cookie}");
    cookie
}

/// Asks tunneld on the control socket, as an attacker with access to it would, bypassing
/// whatever the CLI checks.
fn ask(w: &ClientWorld, request: tunnel_user::client::control::Request) -> serde_json::Value {
    let r = tunnel_user::client::control::call(&w.socket(), &request, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{request:?}: {e}"));
    serde_json::json!({"code": r.code, "message": r.message, "data": r.data})
}

/// A connect request for our gateway's URL as alice, with `pin` if given.
fn connect_request(
    name: Option<&str>,
    url: &str,
    pin: Option<&str>,
    timeout_secs: u64,
) -> tunnel_user::client::control::Request {
    tunnel_user::client::control::Request::Connect {
        name: name.map(String::from),
        url: Some(url.to_string()),
        credentials: Box::new(tunnel_user::client::control::Credentials {
            user: Some("alice".into()),
            password: Some("s3cret".into()),
            pin: pin.map(String::from),
            ..Default::default()
        }),
        timeout_secs: Some(timeout_secs),
    }
}

/// `dynamic-trust: "false"`: tunneld itself refuses a pin in place of the CA store, whoever
/// sends it; a pin only narrows what the CAs allow, and a learned pin does not stand in for
/// them either. (The CLI's prompt used to be the only thing that honoured the setting.)
#[test]
fn dynamic_trust_off_no_pin_replaces_the_ca_store() {
    use tunnel_user::client::control::Request;
    if !root() {
        return;
    }
    let w = world("t");
    let _gw = w.start_gateway();
    let url = format!("https://{GATEWAY}:8443");
    let other_pin = "pin-sha256:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

    // The system's CAs do not know the gateway's self-signed certificate.
    let mut td = w.start_tunneld();
    let r = ask(
        &w,
        Request::Import {
            text: "machine settings {\n  dynamic-trust: \"false\"\n}\n".into(),
        },
    );
    assert_eq!(r["code"], 0, "{r}");
    let r = ask(&w, connect_request(None, &url, Some(&w.pin), 45));
    assert_eq!(r["code"], 6, "the right pin does not replace the CAs: {r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("dynamic trust is off"),
        "{r}"
    );
    assert_eq!(
        r["data"]["dynamic_trust"], false,
        "the CLI is told not to ask: {r}"
    );
    assert_eq!(w.status(), serde_json::json!([]));
    td.stop();

    // Positive control: with the certificate among its CAs, tunneld connects, with no pin or
    // the right one; a wrong pin still refuses a certificate the CAs vouch for.
    let mut td = w.start_tunneld_with(&[("SSL_CERT_FILE", &w.dir.join("cert.pem"))]);
    for pin in [None, Some(w.pin.as_str())] {
        let r = ask(&w, connect_request(None, &url, pin, 45));
        assert_eq!(r["code"], 0, "pin {pin:?}: {r}");
        assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);
    }
    let r = ask(&w, connect_request(None, &url, Some(other_pin), 45));
    assert_eq!(r["code"], 6, "{r}");
    td.stop();
    let pins = fs::read_to_string(w.dir.join("state/pins.json")).unwrap();
    assert!(
        pins.contains(&w.pin),
        "learned after a trusted connection: {pins}"
    );

    // The learned pin does not make the certificate trusted once the CAs no longer do.
    let _td = w.start_tunneld();
    let r = ask(&w, connect_request(None, &url, None, 45));
    assert_eq!(r["code"], 6, "a learned pin does not replace the CAs: {r}");
    assert_eq!(w.status(), serde_json::json!([]));
}

/// `user-connection: "false"` and `allow-save: "false"`, enforced by tunneld for any
/// caller: no connection is added, changed, removed or made up from a URL of the request's
/// own (exit code 8), a URL alone selects the admin's connection that lists it, and a pin the
/// request brought is used for that connection only, never saved.
#[test]
fn user_connection_and_allow_save_are_enforced_by_tunneld() {
    use tunnel_user::client::control::Request;
    if !root() {
        return;
    }
    let w = world("u");
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let url = format!("https://{GATEWAY}:8443");
    let elsewhere = format!("https://{GATEWAY}:9443");
    let r = ask(
        &w,
        Request::Import {
            text: format!(
                "machine settings {{\n  allow-save: \"false\"\n  user-connection: \"false\"\n}}\n\
                 ive \"9a1b7c55-3f0e-4c1e-9a43-6f1f3f5c0001\" {{\n  friendly-name: \"HQ\"\n  uri: \"{url}\"\n}}\n\
                 ive \"9a1b7c55-3f0e-4c1e-9a43-6f1f3f5c0002\" {{\n  friendly-name: \"Lab\"\n  uri: \"{elsewhere}\"\n}}\n"
            ),
        },
    );
    assert_eq!(r["code"], 0, "{r}");

    let refused = |what: &str, r: serde_json::Value| {
        assert_eq!(r["code"], 8, "{what}: {r}");
    };
    refused(
        "a connection of the request's own to the admin's gateway",
        ask(&w, connect_request(Some("mine"), &url, Some(&w.pin), 45)),
    );
    refused(
        "a URL no stored connection lists",
        ask(
            &w,
            connect_request(None, &format!("https://{GATEWAY}:7443"), None, 5),
        ),
    );
    refused(
        "adding",
        ask(
            &w,
            Request::Add {
                connection: serde_json::json!({"name": "mine", "urls": [url]}),
            },
        ),
    );
    refused(
        "editing",
        ask(
            &w,
            Request::Edit {
                name: "Lab".into(),
                changes: serde_json::json!({"urls": ["https://192.168.70.9"]}),
            },
        ),
    );
    refused("deleting", ask(&w, Request::Delete { name: "Lab".into() }));
    refused(
        "a launch URL",
        ask(
            &w,
            Request::Open {
                url: "pulsesecureclient://connect?name=Mine&server=https://192.168.70.9&store=true"
                    .into(),
            },
        ),
    );
    assert_eq!(
        ask(&w, Request::List)["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        ["HQ", "Lab"],
        "the admin's connections, unchanged"
    );

    // The admin's URL alone is the admin's connection; the pin trusts it for this connection.
    let r = ask(&w, connect_request(None, &url, Some(&w.pin), 45));
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(w.status()[0]["name"], "HQ");
    assert_eq!(code(&w.tunnel(&["disconnect", "HQ"], "")), 0);
    let pins = fs::read_to_string(w.dir.join("state/pins.json")).unwrap_or_default();
    assert!(!pins.contains(&w.pin), "the pin was saved: {pins}");
    // Not saved, so the next connection has to be trusted again.
    let r = ask(
        &w,
        Request::Connect {
            name: Some("HQ".into()),
            url: None,
            credentials: Box::new(tunnel_user::client::control::Credentials {
                user: Some("alice".into()),
                password: Some("s3cret".into()),
                ..Default::default()
            }),
            timeout_secs: Some(45),
        },
    );
    assert_eq!(r["code"], 6, "{r}");
    assert_eq!(r["data"]["allow_save"], false, "{r}");

    // VPN only access: a locked-down connection stays as the administrator made it; the
    // others may change again now that user connections are allowed.
    let r = ask(
        &w,
        Request::Import {
            text: format!(
                "machine settings {{\n  user-connection: \"true\"\n  lock-down: \"true\"\n}}\n\
                 ive \"9a1b7c55-3f0e-4c1e-9a43-6f1f3f5c0002\" {{\n  friendly-name: \"Lab\"\n  uri: \"{elsewhere}\"\n  connection-lock-down: \"true\"\n}}\n"
            ),
        },
    );
    assert_eq!(r["code"], 0, "{r}");
    let r = ask(
        &w,
        Request::Edit {
            name: "Lab".into(),
            changes: serde_json::json!({"lock_down": false}),
        },
    );
    assert_eq!(r["code"], 25, "{r}");
    let r = ask(&w, Request::Delete { name: "Lab".into() });
    assert_eq!(r["code"], 25, "{r}");
    let r = ask(&w, Request::Delete { name: "HQ".into() });
    assert_eq!(r["code"], 0, "{r}");
}

#[test]
fn preconfig_import_launch_urls_and_the_launcher() {
    if !root() {
        return;
    }
    let w = world("i");
    let _gw = w.start_gateway();
    // The file turns dynamic trust off: the gateway's certificate must be among tunneld's
    // CAs (the pins below only narrow them).
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &w.dir.join("cert.pem"))]);
    let url = format!("https://{GATEWAY}:8443");

    // A .pulsepreconfig in the seed's shape: the 802.1x section is skipped, not fatal.
    let preconfig = w.dir.join("corp.pulsepreconfig");
    fs::write(
        &preconfig,
        format!(
            r#"schema version {{
  version: "1"
}}

machine settings {{
  version: "14"
  guid: "bf4801a3-527f-4f98-9ea3-7dcb7e271bc9"
  connection-source: "preconfig"
  server-id: "0241ML82AOPRD1VR"
  allow-save: "true"
  user-connection: "true"
  dynamic-trust: "false"
  dynamic-connection: "true"
}}

ive "8211f09f-6674-4bdb-a44a-e6fa8b7402eb" {{
  friendly-name: "HQ"
  version: "2"
  guid: "8211f09f-6674-4bdb-a44a-e6fa8b7402eb"
  server-id: "0241ML82AOPRD1VR"
  connection-source: "preconfig"
  uri: "{url}"
  connection-identity: "user"
  connection-policy: "manual"
}}

8021x "06cc1f68-3714-4871-9abf-458f1c0ef4b0" {{
  friendly-name: "MachAuthCnrxn"
  version: "2"
  guid: "06cc1f68-3714-4871-9abf-458f1c0ef4b0"
  adapter-type: "wireless"
  connection-identity: "machine-only"
}}
"#
        ),
    )
    .unwrap();
    let out = w.tunnel(&["import", &preconfig.display().to_string()], "");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        code(&out),
        0,
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("added connection 'HQ'"), "{said}");
    assert!(
        said.contains("skipped"),
        "the 802.1x section is reported: {said}"
    );
    // A broken file changes nothing and names the line.
    let broken = w.dir.join("broken.pulsepreconfig");
    fs::write(&broken, "ive \"x\" {\n  friendly-name \"no colon\"\n}\n").unwrap();
    let out = w.tunnel(&["import", &broken.display().to_string()], "");
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&w.tunnel(&["list"], "").stdout).into_owned();
    assert!(
        listed.contains("HQ") && !listed.contains("\"x\""),
        "{listed}"
    );
    let out = w.tunnel(
        &[
            "connect",
            "HQ",
            "-u",
            "alice",
            "--password-stdin",
            "--servercert",
            &w.pin,
        ],
        "s3cret\n",
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(code(&w.tunnel(&["disconnect", "HQ"], "")), 0);

    // A launch URL adds "<name> (Auto Launch)" and connects it.
    let launch = format!(
        "pulsesecureclient://connect?name=Lab&server={url}&userrealm=Users&username=alice&store=true"
    );
    let out = w.tunnel(
        &["open", &launch, "--password-stdin", "--servercert", &w.pin],
        "s3cret\n",
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.status()[0]["name"], "Lab (Auto Launch)");
    let listed = String::from_utf8_lossy(&w.tunnel(&["list"], "").stdout).into_owned();
    assert!(listed.contains("Lab (Auto Launch)"), "{listed}");
    assert_eq!(code(&w.tunnel(&["disconnect", "Lab (Auto Launch)"], "")), 0);
    // The same name for another server is refused, naming the conflict.
    let other = "pulsesecureclient://connect?name=Lab&server=https://192.168.70.9&store=true";
    let out = w.tunnel(&["open", other, "--password-stdin"], "s3cret\n");
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let out = w.tunnel(
        &["open", "https://not-a-launch-url", "--password-stdin"],
        "",
    );
    assert_eq!(code(&out), 1);

    // pulselauncher's arguments: -version, a bad parameter, connect, signout, -stop.
    let out = w.tunnel(&["launcher", "-version"], "");
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tunnel launcher"));
    let out = w.tunnel(&["launcher", "-url", &url, "-bogus"], "");
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    // The pin learned when HQ connected (same gateway host) is trusted for the ad-hoc URL.
    let out = w.tunnel(
        &[
            "launcher", "-url", &url, "-u", "alice", "-p", "wrong", "-r", "Users",
        ],
        "",
    );
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    let out = w.tunnel(
        &[
            "launcher", "-url", &url, "-u", "alice", "-p", "-", "-r", "Users",
        ],
        "s3cret\n",
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.status()[0]["state"], "connected", "{}", w.status());
    let out = w.tunnel(&["launcher", "-signout", "-url", &url], "");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.status(), serde_json::json!([]));
    let out = w.tunnel(&["launcher", "-stop"], "");
    assert_eq!(code(&out), 0, "nothing to stop is still success");
    assert_eq!(code(&w.connect()), 0);
    let out = w.tunnel(&["launcher", "-stop"], "");
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.status(), serde_json::json!([]));
}

/// A change of the route to the gateway ends the session once, with event 304, even while
/// packets keep arriving over TLS; the client comes back over the new route and stays.
/// (The check's timer used to be made anew on every pass of the connection's loop, so a busy
/// connection never noticed; and a reconnect that kept the TUN device kept the old route
/// too, so every later check found the same change and the client reconnected every 2 s.)
#[test]
fn a_route_change_under_traffic_reconnects_once() {
    if !root() {
        return;
    }
    let w = world("r");
    let conf = w.dir.join("gateway.toml");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, text.replace("[esp]\n", "[esp]\nenabled = false\n")).unwrap();
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.status()[0]["transport"], "tls");
    // Pings every 5 ms for 12 s: the connection reads from the gateway all the while.
    let mut ping = w
        .client
        .command("ping")
        .args(["-q", "-i", "0.005", "-w", "12", CORP])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The gateway now reached from another source address of the same uplink.
    w.client
        .sh(&format!(
            "ip addr add 192.168.70.3/24 dev c0; ip route add {GATEWAY}/32 dev c0 src 192.168.70.3"
        ))
        .unwrap();
    let events = |n: &str| {
        fs::read_to_string(w.dir.join("tunneld.log"))
            .unwrap()
            .matches(&format!("event={n}"))
            .count()
    };
    let noticed = wait_for("event 304", Duration::from_secs(4), || events("304") >= 1);
    assert!(
        noticed <= Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    wait_for("connected again", Duration::from_secs(10), || {
        w.status()[0]["state"] == "connected"
    });
    std::thread::sleep(Duration::from_secs(5));
    let _ = ping.wait();
    let st = w.status();
    assert_eq!(events("304"), 1, "one reconnect for one change: {st}");
    assert_eq!(st[0]["state"], "connected", "{st}");
    assert_eq!(st[0]["reconnects"], 1, "{st}");
    assert!(w.seen_as(CORP).is_some(), "corp reachable again");
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);
}

/// Stored client certificates, chosen by the CA the gateway names: alice has a certificate
/// from two CAs in tunneld's store, the gateway trusts one of them and lets a certificate
/// alone log in (`auth.certificate.login = "certificate"`). Connecting without naming a
/// certificate presents the right one; a store without it gets a refusal that says what the
/// gateway asked for; a name that is not stored is a certificate error (6).
#[test]
fn stored_client_certificates_are_chosen_by_the_gateways_ca() {
    use tunnel_user::testbed::pki::{ClientNames, TestCa};
    if !root() {
        return;
    }
    let w = world("k");
    let mut other = TestCa::new("Other CA");
    let mut corp = TestCa::new("Corp CA");
    let (from_other, from_corp) = (
        other.issue(&ClientNames::cn("alice")),
        corp.issue(&ClientNames::cn("alice")),
    );
    fs::write(w.dir.join("client-ca.pem"), corp.pem()).unwrap();
    let conf = w.dir.join("gateway.toml");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(
        &conf,
        text.replace("[tls]\n", "[tls]\nclient_ca = \"client-ca.pem\"\n")
            + "\n[auth.certificate]\nlogin = \"certificate\"\n",
    )
    .unwrap();
    let files = |name: &str, c: &tunnel_user::testbed::pki::ClientCert| {
        let (cert, key) = (
            w.dir.join(format!("{name}.pem")),
            w.dir.join(format!("{name}.key")),
        );
        fs::write(&cert, &c.cert_pem).unwrap();
        fs::write(&key, &c.key_pem).unwrap();
        (cert.display().to_string(), key.display().to_string())
    };
    let (other_cert, other_key) = files("other", &from_other);
    let (corp_cert, corp_key) = files("corp", &from_corp);
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let url = format!("https://{GATEWAY}:8443");
    let say = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // No password: only a certificate can log alice in.
    let connect = |extra: &[&str]| {
        let mut args = vec!["connect", "--url", &url, "-u", "alice", "--password-stdin"];
        args.extend_from_slice(&["--servercert", &w.pin]);
        args.extend_from_slice(extra);
        w.tunnel(&args, "")
    };

    // Import refuses a key that is not the certificate's; nothing is stored.
    let out = w.tunnel(&["cert", "import", &corp_cert, "--key", &other_key], "");
    assert_eq!(code(&out), 6, "{}", say(&out));
    assert!(say(&out).contains("not the certificate's"), "{}", say(&out));

    // Only the other CA's certificate stored: none is presented, and the refusal says which
    // issuers the gateway asked for.
    let out = w.tunnel(
        &[
            "cert",
            "import",
            &other_cert,
            "--key",
            &other_key,
            "--name",
            "old",
        ],
        "",
    );
    assert_eq!(code(&out), 0, "{}", say(&out));
    let out = connect(&[]);
    assert_eq!(code(&out), 2, "{}", say(&out));
    assert!(
        say(&out).contains(
            "the gateway asked for a client certificate from CN=Corp CA, and no stored certificate matched"
        ),
        "{}",
        say(&out)
    );

    // Both stored: the Corp CA's is chosen, and alice is in with it alone.
    let out = w.tunnel(&["cert", "import", &corp_cert, "--key", &corp_key], "");
    assert_eq!(code(&out), 0, "{}", say(&out));
    let listed = w.tunnel(&["cert", "list", "--json"], "");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "old"], "{listed}");
    assert_eq!(listed[0]["issuer"], "CN=Corp CA", "{listed}");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
    };
    let store = w.dir.join("state/certs");
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("alice.pem")), 0o600);
    let out = connect(&[]);
    assert_eq!(code(&out), 0, "{}", say(&out));
    let status = w.status();
    let tunnel_addr = status[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(w.seen_as(CORP).as_deref(), Some(tunnel_addr.as_str()));
    let gateway_log = fs::read_to_string(w.dir.join("gateway.log")).unwrap();
    assert!(
        gateway_log.contains("authenticated by client certificate"),
        "{gateway_log}"
    );
    let tunneld_log = fs::read_to_string(w.dir.join("tunneld.log")).unwrap();
    let presented: Vec<&str> = tunneld_log
        .lines()
        .filter(|l| l.contains("presented the client certificate"))
        .collect();
    assert!(
        presented.len() == 1 && presented[0].contains("certificate=alice"),
        "{tunneld_log}"
    );
    let out = w.tunnel(&["disconnect", GATEWAY], "");
    assert_eq!(code(&out), 0, "{}", say(&out));

    // Named, the other CA's certificate is presented though the gateway asks for another:
    // it refuses it, which is a certificate error at once, not reconnecting to a timeout.
    let started = Instant::now();
    let out = connect(&["--client-cert", "old"]);
    assert_eq!(code(&out), 6, "{}", say(&out));
    assert!(
        say(&out).contains("the gateway refused the client certificate 'old' (UnknownCA)"),
        "{}",
        say(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A stored connection naming its certificate; a name that is not stored is error 6.
    let out = w.tunnel(
        &[
            "add",
            "corp",
            "--url",
            &url,
            "-u",
            "alice",
            "--client-cert",
            "alice",
        ],
        "",
    );
    assert_eq!(code(&out), 0, "{}", say(&out));
    let out = w.tunnel(
        &[
            "connect",
            "corp",
            "--password-stdin",
            "--servercert",
            &w.pin,
        ],
        "",
    );
    assert_eq!(code(&out), 0, "{}", say(&out));
    let out = w.tunnel(&["disconnect", "corp"], "");
    assert_eq!(code(&out), 0, "{}", say(&out));
    let out = connect(&["--client-cert", "nobody"]);
    assert_eq!(code(&out), 6, "{}", say(&out));
    assert!(say(&out).contains("no stored certificate named or issued to 'nobody'"));
    // The launcher's -cert names a stored certificate by its Issued To.
    let out = w.tunnel(
        &["launcher", "-url", &url, "-cert", "nobody", "-r", "Users"],
        "",
    );
    assert_eq!(code(&out), 6, "{}", say(&out));

    // Deleted, the Corp CA's certificate is no longer presented.
    let out = w.tunnel(&["cert", "delete", "alice"], "");
    assert_eq!(code(&out), 0, "{}", say(&out));
    let out = connect(&[]);
    assert_eq!(code(&out), 2, "{}", say(&out));
}

/// A full tunnel (KVP `IPRoutes=0.0.0.0/0`) to a gateway that assigns no IPv6 address, with
/// KVP `TunIP`. An app's IPv6 datagram to the LAN is captured on the gateway's side of the
/// uplink before connecting (the positive control) and with `BlockUntunnelledIPv6=false`,
/// and not with the default; the drop is counted. With `TunIP` the TUN device carries that
/// address, corp sees the address the gateway assigned, and traffic flows (the gateway
/// dropped every packet as spoofed when `TunIP` was the tunnel's source).
#[test]
fn a_full_tunnel_blocks_ipv6_and_translates_tun_ip() {
    use std::net::{IpAddr, SocketAddr};
    use tunnel_user::testbed::wire::{Capture, Datagram, send_unprivileged};
    if !root() {
        return;
    }
    let w = world("6");
    w.client
        .sh("ip -6 addr add fd70::2/64 dev c0 nodad; ip -6 route add default via fd70::1")
        .unwrap();
    w.gw.sh("ip -6 addr add fd70::1/64 dev g0 nodad").unwrap();
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let lan6: IpAddr = "fd70::1".parse().unwrap();
    let datagram = Datagram {
        to: SocketAddr::new(lan6, 9),
        len: 64,
        ipv6_rthdr: None,
    };
    // IPv6 UDP datagrams to port 9 from the client that reach the gateway's side of the wire.
    let leaked = || {
        let capture = Capture::start(&w.gw, "g0").unwrap();
        send_unprivileged(&w.client, std::slice::from_ref(&datagram)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        capture.count(|f| {
            f.len() >= 14 + 40 + 8
                && f[12..14] == [0x86, 0xdd]
                && f[14 + 6] == 17
                && f[14 + 24..14 + 40] == [0xfd, 0x70, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                && f[14 + 42..14 + 44] == 9u16.to_be_bytes()
        })
    };
    assert_eq!(leaked(), 1, "the capture sees IPv6 before connecting");

    let said = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = w.connect_with(&["--kvp", "IPRoutes=0.0.0.0/0", "--kvp", "TunIP=172.16.99.9"]);
    assert_eq!(code(&out), 0, "connect: {}", said(&out));
    // Traffic flows, from the address the gateway assigned (in its pool 10.77.0.0/24).
    let seen = w.seen_as(CORP);
    assert!(
        seen.as_deref().is_some_and(|a| a.starts_with("10.77.0.")),
        "corp saw {seen:?}; {}",
        w.counters()
    );
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(seen.as_deref(), Some(tunnel_addr.as_str()));
    let tun0 = w.client.sh("ip -4 addr show dev tun0").unwrap();
    assert!(tun0.contains("172.16.99.9/32"), "{tun0}");
    assert!(!tun0.contains(&tunnel_addr), "{tun0}");
    let before = counter(&w.counters(), "0", "drop_no_family");
    assert_eq!(leaked(), 0, "IPv6 left around a full tunnel");
    let c = w.counters();
    assert!(counter(&c, "0", "drop_no_family") > before, "{c}");
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);

    let out = w.connect_with(&[
        "--kvp",
        "IPRoutes=0.0.0.0/0",
        "--kvp",
        "BlockUntunnelledIPv6=false",
    ]);
    assert_eq!(code(&out), 0, "connect: {}", said(&out));
    assert_eq!(leaked(), 1, "BlockUntunnelledIPv6=false lets IPv6 around");
    assert_eq!(code(&w.tunnel(&["disconnect", GATEWAY], "")), 0);

    // Keys that do nothing here are named when a connection is stored with them.
    let url = format!("https://{GATEWAY}:8443");
    let add = |name: &str, kvps: &[&str]| {
        let mut args = vec!["add", name, "--url", &url];
        for k in kvps {
            args.extend(["--kvp", k]);
        }
        w.tunnel(&args, "")
    };
    let out = add(
        "noisy",
        &["LogLevel=debug", "TcpIdleTmoMs=120000", "MTU=1300"],
    );
    assert_eq!(code(&out), 0, "{}", said(&out));
    let text = said(&out);
    for key in ["LogLevel", "TcpIdleTmoMs"] {
        assert!(
            text.contains(&format!("KVP {key} has no effect here")),
            "{text}"
        );
    }
    assert!(!text.contains("KVP MTU"), "{text}");
    let out = add("quiet", &["MTU=1300", "BlockUntunnelledIPv6=true"]);
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert!(!said(&out).contains("no effect"), "{}", said(&out));
}
