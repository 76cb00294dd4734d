//! DNS through the tunnel, end to end: a real DNS server (dnsmasq) on the corp side and
//! another outside, tunneld's split-DNS forwarder, and `/etc/resolv.conf` as a bind mount in
//! tunneld's own mount namespace (`ClientWorld::resolv_conf`: the host's file is never
//! touched). The world of
//! `tunnel_user::testbed::client_world`:
//!
//! ```text
//!  client (resolv.conf: nameserver 192.168.70.53) ── c0 ── g0: 192.168.70.1 gateway,
//!                                                            192.168.70.53 outside DNS
//!  the gateway pushes DNS 172.20.0.53 ── corp: 172.20.0.53 corp DNS, 172.20.0.2 corp
//! ```
//!
//! The connection is a full tunnel (IPRoutes 0.0.0.0/0) with the match domain corp.example:
//! corp names must go to the corp server through the tunnel, other names to the outside
//! server on the uplink (the forwarder's marked socket), never the other way round.

use std::{
    fs,
    net::IpAddr,
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::said;

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tunnel_user::testbed::{
    client_world::{ClientWorld, GATEWAY, wait_for},
    dns_server::DnsServer,
    wire::Capture,
};

const CORP_DNS: &str = "172.20.0.53";
const OUTSIDE_DNS: &str = "192.168.70.53";
const CORP_NAME: &str = "intranet.corp.example";
const OUTSIDE_NAME: &str = "www.outside.example";
/// What the outside server says for the corp name: seeing it means the query leaked.
const LEAKED: &str = "203.0.113.66";
const ORIGINAL: &str =
    "# the LAN's resolver\nnameserver 192.168.70.53\noptions timeout:1 attempts:2\n";

/// UDP datagrams to `dst`:53 arriving on g0.
fn dns_to(capture: &Capture, dst: &str) -> usize {
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    capture.count(|f| {
        f.len() >= 38
            && f[12..14] == [0x08, 0x00]
            && f[23] == 17
            && f[30..34] == dst.octets()
            && u16::from_be_bytes([f[36], f[37]]) == 53
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The world with the corp DNS server (the corp name) and the outside one (`outside`
/// records), tunneld's resolv.conf naming the outside one.
fn dns_world(tag: &str, outside: &[(&str, IpAddr)]) -> (ClientWorld, DnsServer, DnsServer) {
    let w = ClientWorld::build(tag, tunnel_user::this_crates_binaries!());
    w.corp
        .sh(&format!("ip addr add {CORP_DNS}/24 dev x0"))
        .unwrap();
    w.gw.sh(&format!("ip addr add {OUTSIDE_DNS}/24 dev g0"))
        .unwrap();
    let corp = DnsServer::start(
        &w.corp,
        ip(CORP_DNS),
        &[(CORP_NAME, ip("172.20.0.2"))],
        &w.dir,
    )
    .unwrap();
    let outside = DnsServer::start(&w.gw, ip(OUTSIDE_DNS), outside, &w.dir).unwrap();
    fs::write(w.resolv_conf(), ORIGINAL).unwrap();
    (w, corp, outside)
}

#[test]
fn corp_names_resolve_through_the_tunnel_and_others_outside() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, corp_dns, outside_dns) = dns_world(
        "dns",
        &[(OUTSIDE_NAME, ip("198.51.100.7")), (CORP_NAME, ip(LEAKED))],
    );
    let resolv = w.resolv_conf();
    let _gw = w.start_gateway();
    let td = w.start_tunneld();
    let capture = Capture::start(&w.gw, "g0").unwrap();

    // Positive control: before the tunnel, the outside server answers (the corp name with
    // its wrong answer), and the capture sees the queries.
    assert_eq!(w.resolve(&td, CORP_NAME).as_deref(), Some(LEAKED));
    assert!(
        dns_to(&capture, OUTSIDE_DNS) > 0,
        "the capture sees DNS on g0"
    );

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
            "IPRoutes=0.0.0.0/0",
            "--match-domain",
            "corp.example",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let connect = |w: &ClientWorld| {
        let out = w.connect_stored("corp");
        assert_eq!(out.status.code(), Some(0), "connect: {}", said(&out));
    };
    let asked_outside = || {
        outside_dns
            .queries()
            .iter()
            .filter(|(n, _)| n == CORP_NAME)
            .count()
    };
    let asked_outside_before = asked_outside();
    let started = Instant::now();
    connect(&w);
    let connected = started.elapsed();
    wait_for("the corp name", Duration::from_secs(10), || {
        w.resolve(&td, CORP_NAME).as_deref() == Some("172.20.0.2")
    });
    let first_name = started.elapsed();
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    let applied = &w.status()[0]["dns_applied"];
    assert_eq!(applied["mode"], "forwarder", "{applied}");
    assert_eq!(applied["plan"]["servers"][0], CORP_DNS, "{applied}");
    assert_eq!(applied["plan"]["routing"][0], "corp.example", "{applied}");
    assert_eq!(applied["original"][0], OUTSIDE_DNS, "{applied}");
    let text = fs::read_to_string(&resolv).unwrap();
    assert!(text.contains("nameserver 127.0.77.53"), "{text}");

    // Other names keep resolving through the outside server, over the uplink.
    let outside_before = dns_to(&capture, OUTSIDE_DNS);
    assert_eq!(
        w.resolve(&td, OUTSIDE_NAME).as_deref(),
        Some("198.51.100.7")
    );
    assert!(
        dns_to(&capture, OUTSIDE_DNS) > outside_before,
        "outside names on the uplink"
    );
    // The corp server heard the corp name from the tunnel address, never the outside one;
    // the outside server heard the corp name only before the tunnel.
    let corp_heard = corp_dns.queries();
    assert!(
        corp_heard
            .iter()
            .any(|(n, from)| n == CORP_NAME && *from == tunnel_addr),
        "{corp_heard:?}"
    );
    assert!(
        !corp_heard.iter().any(|(n, _)| n == OUTSIDE_NAME),
        "{corp_heard:?}"
    );
    assert!(asked_outside_before > 0);
    assert_eq!(
        asked_outside(),
        asked_outside_before,
        "while connected the corp name never went outside"
    );
    assert!(outside_dns.queries().iter().any(|(n, _)| n == OUTSIDE_NAME));
    assert_eq!(
        dns_to(&capture, CORP_DNS),
        0,
        "a corp DNS query in clear on the uplink"
    );

    // Disconnected: the original file, byte for byte; the corp name goes outside again.
    let out = w.tunnel(&["disconnect", "corp"], "");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
    assert_eq!(w.resolve(&td, CORP_NAME).as_deref(), Some(LEAKED));
    assert!(asked_outside() > asked_outside_before);

    // Again after a new connect; then tunneld dies and the next one puts the original back.
    connect(&w);
    wait_for("the corp name again", Duration::from_secs(10), || {
        w.resolve(&td, CORP_NAME).as_deref() == Some("172.20.0.2")
    });
    kill(Pid::from_raw(td.id() as i32), Signal::SIGKILL).unwrap();
    drop(td);
    assert_ne!(
        fs::read_to_string(&resolv).unwrap(),
        ORIGINAL,
        "left pointed at the dead forwarder"
    );
    fs::remove_file(w.socket()).unwrap();
    let td = w.start_tunneld();
    let restored = fs::read_to_string(&resolv).unwrap();
    // The kept session resumes the connection, which points the file at the forwarder
    // again; before that, the start restored the original.
    let log = fs::read_to_string(w.dir.join("tunneld.log")).unwrap();
    assert!(
        log.contains("restored the resolver configuration a stopped tunneld had changed"),
        "{log}"
    );
    wait_for("resumed with DNS", Duration::from_secs(15), || {
        w.resolve(&td, CORP_NAME).as_deref() == Some("172.20.0.2")
    });
    let out = w.tunnel(&["disconnect", "corp"], "");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
    drop(td);
    eprintln!(
        "dns: connected in {:.0} ms, first corp name resolved {:.0} ms after the connect began; \
         after the restart the file was {} bytes",
        connected.as_secs_f64() * 1e3,
        first_name.as_secs_f64() * 1e3,
        restored.len()
    );
}

/// The gateway given by name, in a full tunnel whose DNS sends every name into the tunnel:
/// when the gateway restarts, the client must look its name up again, and only the uplink's
/// server can answer while the tunnel is down. tunneld asks it from a marked socket, which
/// the classifier lets bypass the tunnel, and lock-down too.
#[test]
fn the_gateways_name_is_looked_up_through_the_uplink() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    const GATEWAY_NAME: &str = "vpn.outside.example";
    let (w, _corp_dns, outside_dns) = dns_world("dnsgw", &[(GATEWAY_NAME, ip(GATEWAY))]);
    let resolv = w.resolv_conf();
    let mut gw = w.start_gateway();
    let td = w.start_tunneld();
    let url = format!("https://{GATEWAY_NAME}:8443");
    for lockdown in [false, true] {
        let preconfig = w.dir.join("corp.pulsepreconfig");
        fs::write(
            &preconfig,
            format!(
                "schema version {{\n  version: \"1\"\n}}\n\nmachine settings {{\n  lock-down: \"{lockdown}\"\n}}\n\
                 ive \"7d3c1f0e-0000-4000-8000-000000000003\" {{\n  friendly-name: \"corp\"\n  \
                 uri: \"{url}\"\n  connection-lock-down: \"true\"\n}}\n"
            ),
        )
        .unwrap();
        let out = w.tunnel(&["import", &preconfig.display().to_string()], "");
        assert_eq!(out.status.code(), Some(0), "{}", said(&out));
        if !lockdown {
            // A locked-down connection cannot be edited under lock-down: set it before.
            let out = w.tunnel(&["edit", "corp", "--kvp", "IPRoutes=0.0.0.0/0"], "");
            assert_eq!(out.status.code(), Some(0), "{}", said(&out));
        }
        let out = w.connect_stored("corp");
        assert_eq!(out.status.code(), Some(0), "connect: {}", said(&out));
        assert_eq!(w.status()[0]["include"][0], "0.0.0.0/0", "a full tunnel");
        let applied = &w.status()[0]["dns_applied"];
        assert!(
            applied["plan"]["routing"].as_array().unwrap().is_empty(),
            "every name into the tunnel: {applied}"
        );
        let asked = || {
            outside_dns
                .queries()
                .iter()
                .filter(|(n, from)| n == GATEWAY_NAME && from == "192.168.70.2")
                .count()
        };
        let asked_before = asked();
        assert!(
            asked_before > 0,
            "the first lookup went to the uplink's server"
        );
        // The gateway restarts: its sessions are gone, the client logs in again by name.
        gw.stop();
        gw = w.start_gateway();
        let restarted = Instant::now();
        wait_for("reconnected", Duration::from_secs(30), || {
            asked() > asked_before
                && w.status()[0]["state"] == "connected"
                && w.resolve(&td, CORP_NAME).as_deref() == Some("172.20.0.2")
        });
        eprintln!(
            "dns: lock-down {lockdown}: reconnected to {GATEWAY_NAME} {:.0} ms after the gateway came back",
            restarted.elapsed().as_secs_f64() * 1e3
        );
        let out = w.tunnel(&["disconnect", "corp"], "");
        assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    }
    assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
}

/// Where systemd-resolved runs, the tunnel's DNS goes on the TUN device's link there (D-Bus):
/// its servers, its match domain as a routing domain, no default route in a split tunnel;
/// `/etc/resolv.conf` stays as it was. resolved then asks the corp server through the tunnel.
#[test]
fn with_systemd_resolved_the_tunnel_link_gets_the_dns() {
    use tunnel_user::testbed::resolved::SystemdResolved;
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("dnsr", tunnel_user::this_crates_binaries!());
    w.corp
        .sh(&format!("ip addr add {CORP_DNS}/24 dev x0"))
        .unwrap();
    let corp_dns = DnsServer::start(
        &w.corp,
        ip(CORP_DNS),
        &[(CORP_NAME, ip("172.20.0.2"))],
        &w.dir,
    )
    .unwrap();
    let resolved = SystemdResolved::start(&w.client, &w.dir).unwrap();
    let before = fs::read_to_string(w.resolv_conf()).unwrap();
    let _gw = w.start_gateway();
    let bus = std::path::PathBuf::from(resolved.bus_address());
    let _td = w.start_tunneld_with(&[("DBUS_SYSTEM_BUS_ADDRESS", &bus)]);
    let url = format!("https://{GATEWAY}:8443");
    let out = w.tunnel(
        &[
            "add",
            "corp",
            "--url",
            &url,
            "-u",
            "alice",
            "--match-domain",
            "corp.example",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let out = w.connect_stored("corp");
    assert_eq!(out.status.code(), Some(0), "connect: {}", said(&out));
    let status = &w.status()[0];
    let tun = status["tun"].as_str().unwrap().to_string();
    let applied = &status["dns_applied"];
    assert_eq!(applied["mode"], "resolved", "{applied}");
    let link = said(&resolved.resolvectl(&["status", &tun]));
    assert!(link.contains(CORP_DNS), "{link}");
    assert!(link.contains("~corp.example"), "{link}");
    assert!(
        link.contains("-DefaultRoute"),
        "a split tunnel is no default route: {link}"
    );
    let started = Instant::now();
    let answer = said(&resolved.resolvectl(&["query", CORP_NAME]));
    assert!(answer.contains("172.20.0.2"), "{answer}");
    let tunnel_addr = status["ipv4"].as_str().unwrap().to_string();
    assert!(
        corp_dns
            .queries()
            .iter()
            .any(|(n, from)| n == CORP_NAME && *from == tunnel_addr),
        "{:?}",
        corp_dns.queries()
    );
    assert_eq!(fs::read_to_string(w.resolv_conf()).unwrap(), before);
    let out = w.tunnel(&["disconnect", "corp"], "");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let after = said(&resolved.resolvectl(&["status"]));
    assert!(!after.contains("~corp.example"), "{after}");
    eprintln!(
        "dns: resolved mode: corp name through resolved in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
}
