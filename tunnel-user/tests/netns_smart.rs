//! Smart connections end to end: a connection with two gateways (the world of
//! `tunnel_user::testbed::client_world`, with a second gateway at 192.168.70.3 beside the
//! first, pool 10.78.0.0/24) moves to the second when the first dies, and walks past a
//! gateway whose certificate is not trusted; a gateway's renewed certificate that the CAs
//! accept is trusted whatever pin was learned before.
//!
//! ```text
//!  client ── c0 ── g0: 192.168.70.1:8443 (gateway 1, pool 10.77.0.0/24)
//!                      192.168.70.3:8443 (gateway 2, pool 10.78.0.0/24) ── corp 172.20.0.2
//! ```

use std::{
    fs,
    process::Output,
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::{code, said};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tunnel_user::testbed::client_world::{CORP, ClientWorld, GATEWAY, GATEWAY2, wait_for};

fn world(tag: &str) -> ClientWorld {
    ClientWorld::build(tag, tunnel_user::this_crates_binaries!())
}

fn connect_smart(w: &ClientWorld) -> Output {
    w.tunnel(
        &["connect", "smart", "-u", "alice", "--password-stdin"],
        "s3cret\n",
    )
}

#[test]
fn a_lost_gateway_moves_the_connection_to_the_next_url() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = world("sa");
    let (dir2, _) = w.second_gateway();
    // The CAs tunneld trusts: both gateways' (self-signed) certificates.
    let cas = w.both_certificates(&dir2);
    let gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &cas)]);
    w.add_both_gateways("smart");

    let out = connect_smart(&w);
    assert_eq!(code(&out), 0, "connect: {}", said(&out));
    let (server, addr) = w.connected_to().expect("connected");
    assert_eq!(server, format!("https://{GATEWAY}:8443/"));
    assert!(addr.starts_with("10.77.0."), "{addr}");
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));

    // The session is cut (its TCP connection reset) while gateway 1 still runs: the same
    // URL is tried first, so the connection comes back on gateway 1, not the next URL.
    w.client
        .sh(&format!("ss -K dst {GATEWAY} dport = 8443"))
        .unwrap();
    wait_for(
        "the connection back after the reset",
        Duration::from_secs(20),
        || {
            let status = w.status();
            status[0]["reconnects"] == 1 && status[0]["state"] == "connected"
        },
    );
    let (server, _) = w.connected_to().expect("connected");
    assert_eq!(
        server,
        format!("https://{GATEWAY}:8443/"),
        "the same URL first"
    );

    // Gateway 1 dies: its port is closed, so the same URL, tried first, is refused at once
    // and the walk goes on to gateway 2.
    kill(Pid::from_raw(gw1.id() as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let mut moved = None;
    wait_for(
        "the connection on gateway 2",
        Duration::from_secs(30),
        || {
            moved = w.connected_to().filter(|(s, _)| s.contains(GATEWAY2));
            moved.is_some()
        },
    );
    let to_second = killed.elapsed();
    let (_, addr2) = moved.unwrap();
    assert!(addr2.starts_with("10.78.0."), "gateway 2's pool: {addr2}");
    wait_for("corp through gateway 2", Duration::from_secs(10), || {
        w.seen_as(CORP).as_deref() == Some(addr2.as_str())
    });
    let flowing = killed.elapsed();
    let status = w.status();
    // The reset; the loss, then gateway 1 refusing the connection; gateway 2 came up.
    assert_eq!(status[0]["reconnects"], 3, "{status}");
    // The store remembers gateway 2 as the URL that last connected.
    let stored: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.dir.join("state/connections.json")).unwrap())
            .unwrap();
    let smart = stored["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "smart")
        .unwrap();
    assert_eq!(smart["last_url"], 1, "{stored}");
    eprintln!(
        "gateway 1 killed: connected to gateway 2 after {to_second:?}, corp answering through it after {flowing:?}"
    );
    let out = w.tunnel(&["disconnect", "smart"], "");
    assert_eq!(code(&out), 0, "{}", said(&out));
}

#[test]
fn a_refused_certificate_does_not_end_the_walk() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = world("sb");
    let (dir2, pin2) = w.second_gateway();
    let _gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);
    // Only gateway 2's certificate is trusted; gateway 1's is unknown and no pin vouches
    // for it.
    let mut td = w.start_tunneld_with(&[("SSL_CERT_FILE", &dir2.join("cert.pem"))]);
    w.add_both_gateways("smart");
    let started = Instant::now();
    let out = connect_smart(&w);
    assert_eq!(code(&out), 0, "connect: {}", said(&out));
    let took = started.elapsed();
    let (server, addr) = w.connected_to().expect("connected");
    assert_eq!(server, format!("https://{GATEWAY2}:8443/"));
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    let log = fs::read_to_string(w.dir.join("tunneld.log")).unwrap();
    assert!(
        log.contains("certificate refused; trying the next URL") && log.contains(&w.pin),
        "gateway 1's certificate was refused, naming its pin: {log}"
    );
    // The pin learned is gateway 2's, under its host only.
    let pins: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.dir.join("state/pins.json")).unwrap()).unwrap();
    assert_eq!(pins, serde_json::json!({ GATEWAY2: pin2 }));
    let out = w.tunnel(&["disconnect", "smart"], "");
    assert_eq!(code(&out), 0, "{}", said(&out));
    eprintln!("connected past gateway 1's refused certificate in {took:?}");

    // No CA trusts either gateway now: gateway 2's learned pin still trusts its key, for
    // its host.
    td.stop();
    let other = w.dir.join("other");
    fs::create_dir_all(&other).unwrap();
    tunnel_user::testbed::pki::write_gateway_certificate(&other, "192.0.2.1".parse().unwrap())
        .unwrap();
    let mut td = w.start_tunneld_with(&[("SSL_CERT_FILE", &other.join("cert.pem"))]);
    let out = connect_smart(&w);
    assert_eq!(code(&out), 0, "connect by gateway 2's pin: {}", said(&out));
    assert!(w.connected_to().unwrap().0.contains(GATEWAY2));
    let out = w.tunnel(&["disconnect", "smart"], "");
    assert_eq!(code(&out), 0, "{}", said(&out));

    // Without the pin, every gateway of the round refuses: the connect fails at once with
    // the certificate error (code 6) of the first, not after the connect timeout.
    td.stop();
    fs::remove_file(w.dir.join("state/pins.json")).unwrap();
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &other.join("cert.pem"))]);
    let started = Instant::now();
    let out = connect_smart(&w);
    let took = started.elapsed();
    assert_eq!(code(&out), 6, "{}", said(&out));
    assert!(said(&out).contains(&w.pin), "{}", said(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// The pin learned for a gateway never stands in the way of the CAs: the gateway's
/// certificate renewed with a new key by the CA the client trusts still connects, and the
/// learned pin follows the new key; a certificate neither the CA nor that pin accepts is
/// refused (code 6).
#[test]
fn a_renewed_certificate_the_cas_accept_connects_and_the_pin_follows() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = world("sr");
    let mut ca = tunnel_user::testbed::pki::TestCa::new("Corp Root");
    let ca_file = w.dir.join("ca.pem");
    fs::write(&ca_file, ca.pem()).unwrap();
    let gateway = GATEWAY.parse().unwrap();
    let pins = || -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(w.dir.join("state/pins.json")).unwrap()).unwrap()
    };
    let url = format!("https://{GATEWAY}:8443");
    let connect = || {
        w.tunnel(
            &["connect", "--url", &url, "-u", "alice", "--password-stdin"],
            "s3cret\n",
        )
    };
    let disconnect = || {
        let out = w.tunnel(&["disconnect", GATEWAY], "");
        assert_eq!(code(&out), 0, "{}", said(&out));
    };

    let first = ca.issue_gateway_certificate(&w.dir, gateway).unwrap();
    let mut gw = w.start_gateway();
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &ca_file)]);
    let out = connect();
    assert_eq!(code(&out), 0, "connect with the first key: {}", said(&out));
    assert_eq!(pins(), serde_json::json!({ GATEWAY: first.to_string() }));
    disconnect();

    // Renewed: a new key, the same CA. The learned pin names the old key.
    gw.stop();
    let renewed = ca.issue_gateway_certificate(&w.dir, gateway).unwrap();
    assert_ne!(renewed, first);
    let mut gw = w.start_gateway();
    let out = connect();
    assert_eq!(
        code(&out),
        0,
        "connect with the renewed key: {}",
        said(&out)
    );
    assert_eq!(
        pins(),
        serde_json::json!({ GATEWAY: renewed.to_string() }),
        "the learned pin follows the key the CA vouched for"
    );
    disconnect();

    // A key of no CA's, not the learned pin's either: refused, naming its pin.
    gw.stop();
    let stranger = tunnel_user::testbed::pki::write_gateway_certificate(&w.dir, gateway).unwrap();
    let _gw = w.start_gateway();
    let out = connect();
    assert_eq!(code(&out), 6, "a stranger's key: {}", said(&out));
    assert!(said(&out).contains(&stranger.to_string()), "{}", said(&out));
    assert_eq!(pins(), serde_json::json!({ GATEWAY: renewed.to_string() }));
}
