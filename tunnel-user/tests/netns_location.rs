//! Location awareness: a connection that runs only away from the office. The client's uplink
//! is moved between networks by giving it, or taking away, an address in the office's range
//! (10.10.0.0/16); tunneld follows the addresses over netlink and connects and disconnects
//! with nobody asking. The world of `tunnel_user::testbed::client_world`.

use std::{
    fs,
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::said;

use tunnel_user::testbed::client_world::{CORP, ClientWorld, GATEWAY, wait_for};

fn state(w: &ClientWorld) -> String {
    w.status()
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "corp").cloned())
        .map(|c| c["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| "not running".into())
}

#[test]
fn connects_at_home_disconnects_at_the_office_and_back() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("loc", tunnel_user::this_crates_binaries!());
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();
    let url = format!("https://{GATEWAY}:8443");
    // A rule that does not parse is refused, naming it; nothing is stored.
    let out = w.tunnel(
        &[
            "add",
            "corp",
            "--url",
            &url,
            "-u",
            "alice",
            "--location",
            "nowhere 10.10.0.0/16",
        ],
        "",
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        said(&out).contains("nowhere 10.10.0.0/16"),
        "{}",
        said(&out)
    );
    let out = w.tunnel(
        &[
            "add",
            "corp",
            "--url",
            &url,
            "-u",
            "alice",
            "--location",
            "no-address 10.10.0.0/16",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    // At home the rules hold: tunneld starts it at once, but the first login needs alice's
    // password, so that attempt fails; she connects once (the session cookie is kept, and
    // from then on the location alone decides).
    wait_for(
        "the unattended attempt to fail",
        Duration::from_secs(10),
        || {
            fs::read_to_string(w.dir.join("state/tunneld.log"))
                .unwrap_or_default()
                .contains("location: the rules of 'corp' hold here")
                && state(&w) == "not running"
        },
    );
    let out = w.connect_stored("corp");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(state(&w), "connected");

    // At the office: the uplink gets an address in 10.10.0.0/16.
    let moved = Instant::now();
    w.client.sh("ip addr add 10.10.3.4/16 dev c0").unwrap();
    wait_for(
        "disconnected at the office",
        Duration::from_secs(10),
        || state(&w) == "not running",
    );
    let left = moved.elapsed();

    // Home again.
    let moved = Instant::now();
    w.client.sh("ip addr del 10.10.3.4/16 dev c0").unwrap();
    wait_for("connected at home", Duration::from_secs(10), || {
        state(&w) == "connected"
    });
    let back = moved.elapsed();
    let addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    let log = fs::read_to_string(w.dir.join("state/tunneld.log")).unwrap();
    assert!(
        log.contains(
            "location: the rules of 'corp' no longer hold (no-address 10.10.0.0/16): disconnecting"
        ),
        "{log}"
    );
    assert!(
        log.contains("location: the rules of 'corp' hold here"),
        "{log}"
    );

    // A user's disconnect at home holds until the machine moves.
    let out = w.tunnel(&["disconnect", "corp"], "");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    w.client.sh("ip addr add 192.168.99.9/24 dev c0").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        state(&w),
        "not running",
        "another address at home changes nothing"
    );
    eprintln!(
        "location: disconnected {:.0} ms after the move to the office, connected {:.0} ms after the move home",
        left.as_secs_f64() * 1e3,
        back.as_secs_f64() * 1e3
    );
}
