//! A captive portal in front of the gateway. The gateway's namespace plays a hotel network
//! until the user signs in: every HTTP request from the client is answered by the portal
//! with a redirect to its login page, and the gateway's port refuses the client (nft).
//!
//! ```text
//!  client c0 192.168.70.2 ── g0: 192.168.70.1 gateway (refused until signed in)
//!                               192.168.70.80 the probe's server ("success\n")
//!                               192.168.70.81:8081 the portal (any HTTP is sent here)
//! ```
//!
//! The connection waits in `captive_portal` (longer than its disconnect timeout), and is
//! up within the probe interval of the sign-in. The timeline is printed.

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::said;

use tunnel_user::testbed::{
    Netns,
    client_world::{ClientWorld, GATEWAY, wait_for},
};

const PROBE: &str = "192.168.70.80";
const PORTAL: &str = "192.168.70.81";

/// Serves HTTP on `addr` in `ns`: `answer(path)` gives the response for each request.
fn http_server(ns: &Netns, addr: &str, answer: impl Fn(&str) -> String + Send + Sync + 'static) {
    let listener = ns
        .enter({
            let addr = addr.to_string();
            move || TcpListener::bind(addr)
        })
        .unwrap()
        .unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let n = c.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = c.write_all(answer(&path).as_bytes());
            });
        }
    });
}

/// Makes the gateway's namespace a hotel network: the probe's server, the portal, and nft
/// sending the client's HTTP to the portal and refusing the gateway until `/signin`.
fn hotel(w: &ClientWorld) {
    w.gw.sh(&format!(
        "ip addr add {PROBE}/24 dev g0; ip addr add {PORTAL}/24 dev g0"
    ))
    .unwrap();
    http_server(&w.gw, &format!("{PROBE}:80"), |_| {
        "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nsuccess\n".into()
    });
    let gw_ns = w.gw.name().to_string();
    http_server(&w.gw, &format!("{PORTAL}:8081"), move |path| match path {
        "/signin" => {
            // Signed in: the hotel network lets the client through.
            let _ = std::process::Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{gw_ns}"))
                .args(["nft", "delete", "table", "inet", "portal"])
                .status();
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsigned in".into()
        }
        "/login" => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n<form>Accept</form>".into(),
        _ => format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{PORTAL}:8081/login\r\nConnection: close\r\n\r\n"
        ),
    });
    w.gw.sh(&format!(
        "nft -f - <<'EOF'
table inet portal {{
    chain pre {{
        type nat hook prerouting priority dstnat;
        iifname \"g0\" ip saddr 192.168.70.2 ip daddr != {PORTAL} tcp dport 80 dnat ip to {PORTAL}:8081
    }}
    chain input {{
        type filter hook input priority 0;
        iifname \"g0\" ip saddr 192.168.70.2 tcp dport 8443 reject with tcp reset
        iifname \"g0\" ip saddr 192.168.70.2 udp dport 4500 drop
    }}
}}
EOF"
    ))
    .unwrap();
}

fn state(w: &ClientWorld) -> String {
    w.status()[0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_captive_portal_is_waited_out_and_the_connection_starts_after_sign_in() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("cp", tunnel_user::this_crates_binaries!());
    hotel(&w);
    let _gw = w.start_gateway();
    let _td = w.start_tunneld_args(&["--portal-probe", &format!("http://{PROBE}/success.txt")]);
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
            "disconnectTimeoutInSeconds=5",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    let t0 = Instant::now();
    let out = w.connect_stored("corp");
    let detected = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        said(&out).contains(&format!(
            "waits behind a captive portal at http://{PORTAL}:8081/login"
        )),
        "{}",
        said(&out)
    );
    let status = &w.status()[0];
    assert_eq!(status["state"], "captive_portal", "{status}");
    assert_eq!(status["portal"], format!("http://{PORTAL}:8081/login"));
    let log = fs::read_to_string(w.dir.join("state/tunneld.log")).unwrap();
    assert!(log.contains("a captive portal holds this network"), "{log}");

    // Longer than the disconnect timeout (5 s): still waiting, not failed.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(state(&w), "captive_portal");

    // The user signs in (from the client, as a browser would).
    let signed_in_at = t0.elapsed();
    let page = w
        .client
        .enter(|| {
            let mut c = TcpStream::connect((PORTAL, 8081)).unwrap();
            c.write_all(b"GET /signin HTTP/1.1\r\nHost: portal\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            let _ = c.read_to_string(&mut text);
            text
        })
        .unwrap();
    assert!(page.contains("signed in"), "{page}");
    let signed_in = Instant::now();
    wait_for(
        "connected after the sign-in",
        Duration::from_secs(15),
        || state(&w) == "connected",
    );
    let up = signed_in.elapsed();
    assert!(w.status()[0]["portal"].is_null());
    let log = fs::read_to_string(w.dir.join("state/tunneld.log")).unwrap();
    assert!(
        log.contains("the internet is reachable: connecting"),
        "{log}"
    );
    eprintln!(
        "portal: captive_portal {:.0} ms after `tunnel connect` began; still waiting at 7 s \
         (disconnect timeout 5 s); signed in at {:.1} s; connected {:.0} ms after the sign-in",
        detected.as_secs_f64() * 1e3,
        signed_in_at.as_secs_f64(),
        up.as_secs_f64() * 1e3
    );
    assert!(up < Duration::from_secs(5), "{up:?}");
}

/// Under lock-down only `tunnel portal`'s command reaches the portal, on ports 53, 80 and
/// 443, and only for the window (the kernel checks the deadline).
#[test]
fn under_lockdown_only_tunnel_portal_reaches_the_portal_for_a_while() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("cpl", tunnel_user::this_crates_binaries!());
    hotel(&w);
    // The portal's own page on port 80 too, as portals serve it.
    w.gw.sh(&format!(
        "nft add rule inet portal pre iifname g0 ip daddr {PORTAL} tcp dport 80 dnat ip to {PORTAL}:8081"
    ))
    .unwrap();
    let cgroup = format!(
        "/sys/fs/cgroup/unified/tunnel-portal-test-{}",
        std::process::id()
    );
    let _gw = w.start_gateway();
    let _td = w.start_tunneld_args(&[
        "--portal-probe",
        &format!("http://{PROBE}/success.txt"),
        "--portal-cgroup",
        &cgroup,
        "--portal-window",
        "4",
    ]);
    let url = format!("https://{GATEWAY}:8443");
    let preconfig = w.dir.join("lockdown.pulsepreconfig");
    fs::write(
        &preconfig,
        format!(
            "schema version {{\n  version: \"1\"\n}}\n\nmachine settings {{\n  lock-down: \"true\"\n}}\n\
             ive \"7d3c1f0e-0000-4000-8000-000000000005\" {{\n  friendly-name: \"corp\"\n  \
             uri: \"{url}\"\n  connection-lock-down: \"true\"\n}}\n"
        ),
    )
    .unwrap();
    let out = w.tunnel(&["import", preconfig.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let t0 = Instant::now();
    let out = w.connect_stored("corp");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(state(&w), "captive_portal");

    let fetch = format!(
        "exec 3<>/dev/tcp/{PORTAL}/80 && printf 'GET /login HTTP/1.1\\r\\nHost: p\\r\\n\\r\\n' >&3 && head -c 300 <&3"
    );
    let counter = |reason: &str| -> u64 {
        w.counters()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5 && f[0] == "c0" && f[2] == reason).then(|| f[3].parse().unwrap())
            })
            .unwrap_or(0)
    };
    // Any other process: lock-down drops it.
    let dropped_before = counter("drop_lockdown");
    let other = w
        .client
        .command("timeout")
        .args(["2", "bash", "-c", &fetch])
        .output()
        .unwrap();
    assert!(!said(&other).contains("Accept"), "{}", said(&other));
    assert!(counter("drop_lockdown") > dropped_before);
    // tunnel portal's command: the portal's page.
    let out = w.tunnel(&["portal", "timeout", "2", "bash", "-c", &fetch], "");
    assert!(
        said(&out).contains("Accept"),
        "tunnel portal: {}",
        said(&out)
    );
    let let_through = counter("bypass_portal");
    assert!(let_through > 0);
    let within = t0.elapsed();
    // After the window (4 s from the portal's discovery), even it is dropped.
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(t0.elapsed()) + Duration::from_millis(300),
    );
    assert_eq!(state(&w), "captive_portal", "still behind the portal");
    let dropped_before = counter("drop_lockdown");
    let out = w.tunnel(&["portal", "timeout", "2", "bash", "-c", &fetch], "");
    assert!(
        !said(&out).contains("Accept"),
        "after the window: {}",
        said(&out)
    );
    assert_eq!(counter("bypass_portal"), let_through);
    assert!(counter("drop_lockdown") > dropped_before);
    eprintln!(
        "portal: under lock-down, tunnel portal reached the portal at {:.1} s, refused after the 4 s window; \
         {let_through} packets let through",
        within.as_secs_f64()
    );
    let _ = fs::remove_dir(&cgroup);
}
