//! The administrator's lock-down exceptions: the exclude routes (KVP `ExcRoutes`) of a
//! locked-down connection stay open under lock-down even with no connection up; everything
//! else not tunnelled is dropped. A capture on the gateway's side counts what leaves.
//!
//! ```text
//!  client c0 192.168.70.2 ── g0: 192.168.70.10 (the exception), 192.168.70.9 (any other)
//! ```

use std::{net::UdpSocket, time::Duration};
use tunnel_user::testbed::client_world::said;

use tunnel_user::testbed::{client_world::ClientWorld, wire::Capture};

const EXCEPTION: &str = "192.168.70.10";
const OTHER: &str = "192.168.70.9";
const N: usize = 5;

fn to(frame: &[u8], dst: &str) -> bool {
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    frame.len() >= 34 && frame[12..14] == [0x08, 0x00] && frame[30..34] == dst.octets()
}

fn send(w: &ClientWorld, dst: &'static str) {
    w.client
        .enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..N {
                let _ = s.send_to(b"x", (dst, 9));
            }
        })
        .unwrap();
}

#[test]
fn the_administrators_exceptions_stay_open_under_lockdown_with_no_connection_up() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("lx", tunnel_user::this_crates_binaries!());
    w.gw.sh(&format!(
        "ip addr add {EXCEPTION}/24 dev g0; ip addr add {OTHER}/24 dev g0"
    ))
    .unwrap();
    let _td = w.start_tunneld();
    let capture = Capture::start(&w.gw, "g0").unwrap();
    let seen = |dst: &str| capture.count(|f| to(f, dst));
    let out = w.tunnel(
        &[
            "add",
            "admin",
            "--url",
            "https://192.0.2.50",
            "-u",
            "machine",
            "--kvp",
            &format!("ExcRoutes={EXCEPTION}/32"),
            "--lock-down",
            "true",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // Positive control: without VPN only access both are reached.
    send(&w, EXCEPTION);
    send(&w, OTHER);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!((seen(EXCEPTION), seen(OTHER)), (N, N));

    let preconfig = w.dir.join("lockdown.pulsepreconfig");
    std::fs::write(
        &preconfig,
        "schema version {\n  version: \"1\"\n}\n\nmachine settings {\n  lock-down: \"true\"\n}\n",
    )
    .unwrap();
    let out = w.tunnel(&["import", preconfig.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    send(&w, EXCEPTION);
    send(&w, OTHER);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        (seen(EXCEPTION), seen(OTHER)),
        (2 * N, N),
        "under lock-down, no connection up: the exception open, the rest dropped"
    );
    let counters = w.counters();
    let cell = |reason: &str| -> u64 {
        counters
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5 && f[0] == "c0" && f[2] == reason).then(|| f[3].parse().unwrap())
            })
            .unwrap_or(0)
    };
    assert!(cell("bypass_excluded") >= N as u64, "{counters}");
    assert!(cell("drop_lockdown") >= N as u64, "{counters}");
}
