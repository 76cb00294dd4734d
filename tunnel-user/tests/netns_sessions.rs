//! The gateway's sessions outlive its process: a gateway killed without a word (SIGKILL,
//! as a crash) and started again resumes the sessions it had from its session store, so
//! our client comes back with its cookie and its address. The world is drawn in
//! `tunnel_user::testbed::client_world`; openconnect does the same in netns_openconnect.

use std::{fs, time::Instant};

use std::time::Duration;

use tunnel_user::testbed::client_world::{CORP, ClientWorld, wait_for};

fn root() -> bool {
    tunnel_user::testbed::root_or_skip()
}

fn gateway_log(w: &ClientWorld) -> String {
    fs::read_to_string(w.dir.join("gateway.log")).unwrap_or_default()
}

#[test]
fn a_gateway_killed_and_started_again_resumes_our_clients_session() {
    if !root() {
        return;
    }
    let w = ClientWorld::build("ks", tunnel_user::this_crates_binaries!());
    let mut gw = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect();
    assert!(
        out.status.success(),
        "connect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = w.status();
    let addr = st[0]["ipv4"].as_str().unwrap().to_string();
    wait_for("ESP", Duration::from_secs(10), || {
        w.status()[0]["transport"] == "esp"
    });
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    let store = fs::read_to_string(w.dir.join("sessions.log")).unwrap();
    assert_eq!(store.lines().count(), 1, "one session stored: {store}");

    gw.kill();
    let killed = Instant::now();
    let _gw = w.start_gateway();
    let log = gateway_log(&w);
    assert!(
        log.contains("restored=1"),
        "the new gateway found the session: {log}"
    );
    let back = wait_for(
        "traffic through the resumed session",
        Duration::from_secs(60),
        || w.seen_as(CORP).as_deref() == Some(addr.as_str()),
    );
    let log = gateway_log(&w);
    let established: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session established"))
        .collect();
    assert_eq!(established.len(), 2, "{log}");
    assert!(
        established[1].contains("resumed=true") && established[1].contains(&addr),
        "the second gateway resumed the session with its address: {}",
        established[1]
    );
    let st = w.status();
    assert_eq!(st[0]["state"], "connected", "{st}");
    assert_eq!(st[0]["ipv4"], addr.as_str(), "{st}");
    assert!(st[0]["reconnects"].as_u64().unwrap_or(0) >= 1, "{st}");
    eprintln!(
        "our client: traffic again {:.0} ms after the gateway was killed ({:.0} ms after the new one ran)",
        killed.elapsed().as_secs_f64() * 1e3,
        back.as_secs_f64() * 1e3
    );

    // Sign-out ends it in the store too: a gateway started again has nothing to resume.
    let out = w.tunnel(
        &["signout", tunnel_user::testbed::client_world::GATEWAY],
        "",
    );
    assert!(out.status.success());
    wait_for("the logout in the store", Duration::from_secs(5), || {
        fs::read_to_string(w.dir.join("sessions.log"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("{\"del\""))
            .count()
            == 1
    });
}

/// A world whose gateway serves its metrics on 127.0.0.1:9477 (in its namespace).
fn world_with_metrics(tag: &str) -> ClientWorld {
    let w = ClientWorld::build(tag, tunnel_user::this_crates_binaries!());
    let conf = w.dir.join("gateway.toml");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(
        &conf,
        format!("metrics_listen = \"127.0.0.1:9477\"\n{text}"),
    )
    .unwrap();
    w
}

/// Sends `request` to the gateway's metrics listener and returns the whole answer.
fn http(w: &ClientWorld, request: &str) -> String {
    use std::io::{Read, Write};
    let request = request.to_string();
    w.gw.enter(move || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9477").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    })
    .unwrap()
}

/// `tunnel-gateway sessions` as the operator runs it, in the gateway's namespace.
fn sessions(w: &ClientWorld, wrapper: &[&str], args: &[&str]) -> std::process::Output {
    let gateway = w.bin.gateway.to_string_lossy().into_owned();
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.push(&gateway);
    argv.push("sessions");
    let config = w.dir.join("gateway.toml").display().to_string();
    let mut command = w.gw.command(argv[0]);
    command
        .args(&argv[1..])
        .args(["--config", &config])
        .args(args);
    command.output().unwrap()
}

#[test]
fn the_operator_lists_shows_and_kills_sessions() {
    if !root() {
        return;
    }
    let w = world_with_metrics("op");
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    wait_for("ESP", Duration::from_secs(10), || {
        w.status()[0]["transport"] == "esp"
    });

    let out = sessions(&w, &[], &["--json", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let one = &list["sessions"][0];
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(one["user"], "alice", "{list}");
    assert_eq!(one["ipv4"], addr.as_str(), "{list}");
    assert_eq!(one["state"], "connected", "{list}");
    assert_eq!(one["transport"], "esp", "{list}");
    let id = one["id"].as_u64().unwrap();

    // The metrics say the same (and count the traffic), and the health endpoint answers.
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    let metrics = http(&w, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    for line in [
        "tunnel_gateway_sessions{state=\"connected\",transport=\"esp\"} 1",
        "tunnel_gateway_sessions{state=\"parked\",transport=\"\"} 0",
        "tunnel_gateway_logins_total{result=\"ok\"} 1",
        "tunnel_gateway_store_sessions 1",
        "tunnel_gateway_store_write_seconds_count 1",
        "# TYPE tunnel_gateway_bytes_total counter",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    // The packet threads add their counts when a batch is done: polled.
    let packets_in = || {
        http(&w, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .lines()
            .find_map(|l| l.strip_prefix("tunnel_gateway_packets_total{direction=\"in\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    wait_for(
        "a TCP exchange counted in the metrics",
        Duration::from_secs(5),
        || packets_in() >= 3,
    );
    assert!(http(&w, "GET /health HTTP/1.0\r\n\r\n").ends_with("\r\n\r\nok\n"));
    assert!(http(&w, "GET /nothing HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(&w, "\u{0}\u{1}garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(http(&w, &"x".repeat(4200)).starts_with("HTTP/1.1 431"));

    let table = sessions(&w, &[], &["list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("ID")
            && text.contains(&format!("s{id}"))
            && text.contains("connected (esp)"),
        "{text}"
    );
    for which in [
        addr.as_str(),
        "alice",
        &format!("s{id}"),
        &format!("id:{id}"),
    ] {
        let out = sessions(&w, &[], &["--json", "show", which]);
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["sessions"][0]["id"], id, "show {which}: {shown}");
    }
    let out = sessions(&w, &[], &["show", "user:bob"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no session matches user:bob"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Someone other than root or the gateway's user gets nothing.
    let out = sessions(
        &w,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ],
        &[
            "--socket",
            &w.dir.join("control.sock").display().to_string(),
            "list",
        ],
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Permission denied"), "{said}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("alice"));

    let out = sessions(&w, &[], &["kill", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("ended s{id} (alice, {addr}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for("the session's end", Duration::from_secs(5), || {
        gateway_log(&w).contains("address released")
    });
    assert!(gateway_log(&w).contains("session ended by the administrator"));
    let store = fs::read_to_string(w.dir.join("sessions.log")).unwrap();
    assert!(store.lines().any(|l| l.starts_with("{\"del\"")), "{store}");
    // The old session is gone (a client that logs in again gets a new one).
    let out = sessions(&w, &[], &["--json", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != id),
        "{list}"
    );
}

/// `sessions drain`: the gateway refuses new connections and says so on its health
/// endpoint, closes its connections after the wait, exits 0 with the sessions kept; the
/// gateway started next resumes our client's session with its address.
#[test]
fn a_drained_gateway_hands_its_sessions_to_the_next() {
    if !root() {
        return;
    }
    let w = world_with_metrics("dr");
    let mut gw = w.start_gateway();
    let _td = w.start_tunneld();
    assert!(w.connect().status.success());
    let addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    assert!(http(&w, "GET /health HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));

    let out = sessions(&w, &[], &["drain", "--after", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("draining: 1 connected"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // During the wait: unhealthy for load balancers, no new connections, and the session
    // still carries traffic.
    assert!(http(&w, "GET /health HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 503"));
    let refused = w.client.enter(|| {
        std::net::TcpStream::connect_timeout(
            &"192.168.70.1:8443".parse().unwrap(),
            Duration::from_secs(2),
        )
        .is_err()
    });
    assert!(refused.unwrap(), "a draining gateway accepts no connection");
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));

    let exited = wait_for(
        "the drained gateway to exit",
        Duration::from_secs(15),
        || gw.exited().is_some(),
    );
    assert!(gw.exited().unwrap().success());
    let log = gateway_log(&w);
    assert!(
        log.contains("drained=true") && log.contains("stored_sessions=1"),
        "{log}"
    );
    assert!(!log.contains("address released"), "{log}");

    let _next = w.start_gateway();
    wait_for(
        "traffic through the session resumed",
        Duration::from_secs(60),
        || w.seen_as(CORP).as_deref() == Some(addr.as_str()),
    );
    let log = gateway_log(&w);
    let resumed = log
        .lines()
        .filter(|l| l.contains("session established"))
        .nth(1)
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        resumed.contains("resumed=true") && resumed.contains(&addr),
        "{resumed}"
    );
    eprintln!(
        "drain: the gateway exited {:.0} ms after the wait began",
        exited.as_secs_f64() * 1e3
    );
}

/// SIGHUP: a changed key that may change at run time is put in force without dropping the
/// session (the next login gets it); a key that needs a restart, or a broken file, is
/// refused with the reason and the configuration in force stays.
#[test]
fn sighup_reloads_what_may_change_and_refuses_the_rest() {
    if !root() {
        return;
    }
    let w = ClientWorld::build("hup", tunnel_user::this_crates_binaries!());
    let gw = w.start_gateway();
    let _td = w.start_tunneld();
    assert!(w.connect().status.success());
    let addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    let servers = |w: &ClientWorld| w.status()[0]["dns_applied"]["plan"]["servers"][0].clone();
    assert_eq!(servers(&w), "172.20.0.53");
    let conf = w.dir.join("gateway.toml");
    let original = fs::read_to_string(&conf).unwrap();
    let hup = |n: usize| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(gw.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        wait_for("the reload's answer", Duration::from_secs(5), || {
            let log = gateway_log(&w);
            log.matches("configuration reloaded").count() + log.matches("reload refused").count()
                == n
        });
    };

    fs::write(&conf, original.replace("172.20.0.53", "172.20.0.54")).unwrap();
    hup(1);
    let log = gateway_log(&w);
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(line.contains("changed=[\"dns\"]"), "{line}");
    // The session goes on.
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    assert!(!gateway_log(&w).contains("address released"));

    // A key that needs a restart: refused, named; the gateway serves on as it was.
    let moved = original
        .replace("172.20.0.53", "172.20.0.54")
        .replace(":8443", ":8444");
    fs::write(&conf, moved).unwrap();
    hup(2);
    let log = gateway_log(&w);
    assert!(
        log.lines()
            .any(|l| l.contains("reload refused") && l.contains("listen cannot change")),
        "{log}"
    );
    // A broken file: refused with where it is wrong.
    fs::write(&conf, "listen = [\n").unwrap();
    hup(3);
    let log = gateway_log(&w);
    assert_eq!(log.matches("reload refused").count(), 2, "{log}");
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));

    // The next login gets the DNS server reloaded, on the port in force (the file is put
    // back as it was but not reloaded: what is in force counts, not the file).
    fs::write(&conf, &original).unwrap();
    let out = w.tunnel(
        &["signout", tunnel_user::testbed::client_world::GATEWAY],
        "",
    );
    assert!(out.status.success());
    assert!(w.connect().status.success());
    assert_eq!(servers(&w), "172.20.0.54");
}
