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
    process::Output,
    sync::Arc,
    time::{Duration, Instant},
};

use tunnel_user::testbed::{
    Netns,
    client_world::{ClientWorld, GATEWAY, wait_for},
};

const PROBE: &str = "192.168.70.80";
const PORTAL: &str = "192.168.70.81";

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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
    let out = w.tunnel(
        &[
            "connect",
            "corp",
            "-u",
            "alice",
            "--password-stdin",
            "--servercert",
            &w.pin,
        ],
        "s3cret\n",
    );
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
