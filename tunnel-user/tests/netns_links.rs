//! Links that come and go under a connected client. The world of
//! `tunnel_user::testbed::client_world`, and a second link added while connected:
//!
//! ```text
//!  ┌──────── client ─────────┐        ┌──────── gw ─────────┐
//!  │ c0 192.168.70.2 ─────────┼─ veth ─┼─ g0 192.168.70.1     │  the tunnel (ESP) runs here
//!  │ c1 192.168.71.2 ─────────┼─ veth ─┼─ g1 192.168.71.1     │  added, then removed; captured
//!  │ corp/32, excluded/32 via c1                              │
//!  └──────────────────────────┘        └──────────────────────┘
//! ```
//!
//! Routes through c1 for corp (included: the classifier on c1 must send it into the tunnel)
//! and for the excluded server (bypasses: the positive control, seen on g1 in clear until
//! lock-down drops it).

use std::{
    fs,
    net::UdpSocket,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use tunnel_user::testbed::client_world::{CORP, ClientWorld, EXCLUDED, Proc, wait_for};

/// Datagrams sent per kind and step.
const N: usize = 5;
/// The UDP port of corp's server that answers with the address it saw.
const CORP_UDP: u16 = 5000;
/// A closed port (discard) on the servers beyond c1.
const DISCARD: u16 = 9;
/// The far end of c1: neither included nor excluded, so bypassed for lack of a rule, which
/// lock-down turns into a drop (explicit excludes stay open under lock-down).
const FAR_END: &str = "192.168.71.1";

fn log(w: &ClientWorld) -> String {
    fs::read_to_string(w.dir.join("tunneld.log")).unwrap_or_default()
}

/// Polls `f` every millisecond until it holds; panics after `timeout`.
fn time_until(what: &str, timeout: Duration, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// An uplink counter from `tunnel counters` (the five-column per-uplink table).
fn uplink_counter(text: &str, uplink: &str, reason: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[0] == uplink && f[2] == reason).then(|| f[3].parse().unwrap())
        })
        .unwrap_or(0)
}

/// Whether the per-uplink table lists `uplink`.
fn lists_uplink(text: &str, uplink: &str) -> bool {
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 5 && f[0] == uplink
    })
}

/// The BPF links tunneld holds open.
fn bpf_link_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf_link")
        })
        .count()
}

/// Sends one datagram to corp's echo through whatever route the client has and returns the
/// address corp saw.
fn corp_saw(w: &ClientWorld) -> Option<String> {
    w.client
        .enter(|| {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
            s.send_to(b"?", (CORP, CORP_UDP)).ok()?;
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .unwrap()
}

/// Sends `N` datagrams to `dst`'s discard port (a drop makes `send` fail, which is fine).
fn to_discard(w: &ClientWorld, dst: &'static str) {
    w.client
        .enter(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..N {
                let _ = s.send_to(b"x", (dst, DISCARD));
            }
        })
        .unwrap();
}

/// Programs attached with TCX to `ifname` in the client namespace, per direction.
fn tcx_programs(w: &ClientWorld, ifname: &str) -> (usize, usize) {
    let ifname = ifname.to_string();
    w.client
        .enter(move || {
            let n = |at| {
                SchedClassifier::query_tcx(&ifname, at)
                    .map(|(_, p)| p.len())
                    .unwrap_or_else(|e| panic!("querying {ifname}: {e}"))
            };
            (n(TcAttachType::Egress), n(TcAttachType::Ingress))
        })
        .unwrap()
}

#[test]
fn a_link_added_while_connected_obeys_split_and_lockdown_then_leaves_nothing() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("l", tunnel_user::this_crates_binaries!());
    let _gw = w.start_gateway();
    let td = w.start_tunneld();
    let out = w.connect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "connect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    let links_before = bpf_link_fds(td.id());
    let tun_programs = tcx_programs(&w, "tun0");
    assert_eq!(
        tun_programs,
        (1, 1),
        "only the TUN programs on tun0, never the uplink's"
    );
    assert_eq!(tcx_programs(&w, "c0"), (1, 1), "classifier and guard on c0");

    // A link appears, down, as a hot-plugged NIC's does. Timed from before `ip` is started:
    // an upper bound.
    let started = Instant::now();
    w.client
        .sh(&format!(
            "ip link add c1 type veth peer name g1 netns {}",
            w.gw.name()
        ))
        .unwrap();
    time_until("c1 attached", Duration::from_secs(2), || {
        log(&w).contains("classifier and guard attached uplink=c1")
    });
    let attached = started.elapsed();
    eprintln!(
        "links: c1 attached {:.1} ms after `ip link add` began",
        attached.as_secs_f64() * 1e3
    );
    assert!(
        attached < Duration::from_secs(1),
        "attached after {attached:?}"
    );
    let line = log(&w)
        .lines()
        .find(|l| l.contains("attached uplink=c1"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("up=false"),
        "attached before it was up: {line}"
    );
    assert_eq!(tcx_programs(&w, "c1"), (1, 1), "classifier and guard on c1");
    let counters = w.counters();
    assert!(lists_uplink(&counters, "c1"), "{counters}");

    // IPv6 off on both ends, so nothing but the test's datagrams is counted on c1.
    w.client
        .sh(&format!(
            "sysctl -qw net.ipv6.conf.c1.disable_ipv6=1
             ip addr add 192.168.71.2/24 dev c1
             ip link set c1 up
             ip route add {CORP}/32 via 192.168.71.1 dev c1
             ip route add {EXCLUDED}/32 via 192.168.71.1 dev c1"
        ))
        .unwrap();
    w.gw.sh("sysctl -qw net.ipv6.conf.g1.disable_ipv6=1; ip addr add 192.168.71.1/24 dev g1; ip link set g1 up")
        .unwrap();

    // Everything that leaves c1 in clear, seen from the far side.
    let pcap = w.dir.join("g1.pcap");
    let capture_log = w.dir.join("tcpdump.log");
    let mut capture = Proc::new(
        w.gw.command("tcpdump")
            .args(["-i", "g1", "-n", "-U", "--immediate-mode", "-w"])
            .arg(&pcap)
            .arg("udp or tcp")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&capture_log).unwrap())
            .spawn()
            .unwrap(),
        "tcpdump",
    );
    wait_for("tcpdump", Duration::from_secs(10), || {
        fs::read_to_string(&capture_log)
            .unwrap_or_default()
            .contains("listening on")
    });

    // Split: corp through the tunnel, the excluded server and the far end in clear.
    let before = w.counters();
    for _ in 0..N {
        assert_eq!(
            corp_saw(&w).as_deref(),
            Some(tunnel_addr.as_str()),
            "corp reached over c1 is reached through the tunnel"
        );
    }
    to_discard(&w, EXCLUDED);
    to_discard(&w, FAR_END);
    let after = w.counters();
    let delta =
        |reason| uplink_counter(&after, "c1", reason) - uplink_counter(&before, "c1", reason);
    assert_eq!(delta("tunnel"), N as u64, "{after}");
    assert_eq!(delta("bypass_excluded"), N as u64, "{after}");
    assert_eq!(delta("bypass_not_included"), N as u64, "{after}");
    assert_eq!(delta("drop_lockdown"), 0, "{after}");

    // VPN only access without a locked-down connection: nothing locks the machine down, so
    // the far end is still reached.
    let preconfig = w.dir.join("vpn-only.pulsepreconfig");
    fs::write(
        &preconfig,
        "schema version {\n  version: \"1\"\n}\n\nmachine settings {\n  lock-down: \"true\"\n}\n",
    )
    .unwrap();
    let out = w.tunnel(&["import", &preconfig.display().to_string()], "");
    assert_eq!(out.status.code(), Some(0));
    let before = w.counters();
    to_discard(&w, FAR_END);
    let after = w.counters();
    let delta =
        |reason| uplink_counter(&after, "c1", reason) - uplink_counter(&before, "c1", reason);
    assert_eq!(delta("bypass_not_included"), N as u64, "{after}");
    assert_eq!(delta("drop_lockdown"), 0, "{after}");

    // Lock-down: the far end is not reached any more; corp still is, tunnelled, and the
    // excluded server in clear.
    let preconfig = w.dir.join("lockdown.pulsepreconfig");
    fs::write(
        &preconfig,
        // Only a locked-down connection locks the machine down: the administrator's, here.
        "schema version {\n  version: \"1\"\n}\n\nmachine settings {\n  lock-down: \"true\"\n}\n\
         ive \"7d3c1f0e-0000-4000-8000-000000000001\" {\n  friendly-name: \"Admin\"\n  uri: \"https://192.0.2.50\"\n  connection-lock-down: \"true\"\n}\n",
    )
    .unwrap();
    let out = w.tunnel(&["import", &preconfig.display().to_string()], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "lock-down on: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let before = w.counters();
    to_discard(&w, FAR_END);
    to_discard(&w, EXCLUDED);
    for _ in 0..N {
        assert_eq!(corp_saw(&w).as_deref(), Some(tunnel_addr.as_str()));
    }
    let after = w.counters();
    let delta =
        |reason| uplink_counter(&after, "c1", reason) - uplink_counter(&before, "c1", reason);
    assert_eq!(delta("drop_lockdown"), N as u64, "{after}");
    assert_eq!(delta("bypass_not_included"), 0, "{after}");
    assert_eq!(delta("tunnel"), N as u64, "{after}");
    assert_eq!(delta("bypass_excluded"), N as u64, "{after}");

    // On the wire of c1: the far end's datagrams from before lock-down only (split, and VPN
    // only access without a locked-down connection), the excluded server's from both steps
    // (the positive control), corp's never.
    std::thread::sleep(Duration::from_millis(200));
    capture.stop();
    let read = Command::new("tcpdump")
        .args(["-r"])
        .arg(&pcap)
        .args(["-n", "-q"])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&read.stdout).into_owned();
    let to = |dst: &str, port: u16| {
        seen.lines()
            .filter(|l| l.contains(&format!("> {dst}.{port}:")))
            .count()
    };
    assert_eq!(to(EXCLUDED, DISCARD), 2 * N, "positive control:\n{seen}");
    assert_eq!(
        to(FAR_END, DISCARD),
        2 * N,
        "lock-down let some through:\n{seen}"
    );
    assert_eq!(to(CORP, CORP_UDP), 0, "corp in clear on c1:\n{seen}");
    assert_eq!(
        seen.lines()
            .filter(|l| l.contains(&format!("> {CORP}.")))
            .count(),
        0,
        "{seen}"
    );

    // The link goes: let go cleanly, nothing left behind.
    let removed = Instant::now();
    w.client.sh("ip link del c1").unwrap();
    time_until("c1 let go", Duration::from_secs(2), || {
        log(&w).contains("gone: classifier and guard let go uplink=c1")
    });
    eprintln!(
        "links: c1 let go {:.1} ms after `ip link del` began",
        removed.elapsed().as_secs_f64() * 1e3
    );
    let counters = w.counters();
    assert!(!lists_uplink(&counters, "c1"), "{counters}");
    assert!(
        !lists_uplink(&counters, "?"),
        "a counter row outlived its link: {counters}"
    );
    assert!(lists_uplink(&counters, "c0"), "{counters}");
    assert_eq!(
        bpf_link_fds(td.id()),
        links_before,
        "BPF links held after c1 went"
    );
    assert_eq!(tcx_programs(&w, "c0"), (1, 1), "c0 keeps its programs");
    assert_eq!(
        tcx_programs(&w, "tun0"),
        tun_programs,
        "tun0 keeps its programs"
    );
    let links = w.client.sh("ip -d link show").unwrap();
    assert!(!links.contains("xdp"), "an XDP program is left: {links}");
    let text = log(&w);
    let trouble: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
        .filter(|l| l.contains("c1") || l.contains("policy"))
        .collect();
    assert!(trouble.is_empty(), "{trouble:#?}");
    // Traffic goes on over c0.
    assert_eq!(corp_saw(&w).as_deref(), Some(tunnel_addr.as_str()));
}

/// `--uplink` names the uplinks: a named link missing at start is attached when it appears,
/// a link of another name never is, and a TUN device never is, whatever its name.
#[test]
fn named_uplinks_are_attached_whenever_they_appear_and_no_others() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("n", tunnel_user::this_crates_binaries!());
    // tunneld's own arguments come after the wrapper's: `sh -c` runs it with the list added.
    let wrapper: Vec<String> = [
        "sh",
        "-c",
        r#"exec "$0" "$@" --uplink c0 --uplink c2 --uplink t9"#,
    ]
    .map(String::from)
    .to_vec();
    let _td = w.start_tunneld_via(&wrapper, &[]);
    time_until("c0 attached", Duration::from_secs(5), || {
        log(&w).contains("classifier and guard attached uplink=c0")
    });
    assert!(
        log(&w).contains("no such link yet: attached when it appears uplink=c2"),
        "{}",
        log(&w)
    );
    // Events are handled in order: once c2 is attached, c1 and t9 were judged before it.
    w.client
        .sh(&format!(
            "ip link add c1 type veth peer name g1 netns {gw}
             ip tuntap add dev t9 mode tun
             ip link add c2 type veth peer name g2 netns {gw}",
            gw = w.gw.name()
        ))
        .unwrap();
    time_until("c2 attached", Duration::from_secs(2), || {
        log(&w).contains("classifier and guard attached uplink=c2")
    });
    let text = log(&w);
    assert!(!text.contains("attached uplink=c1"), "{text}");
    assert!(!text.contains("attached uplink=t9"), "{text}");
    assert_eq!(
        tcx_programs(&w, "c1"),
        (0, 0),
        "nothing on the unnamed link"
    );
    assert_eq!(tcx_programs(&w, "t9"), (0, 0), "nothing on the TUN device");
    assert_eq!(tcx_programs(&w, "c2"), (1, 1), "classifier and guard on c2");
    let counters = w.counters();
    assert!(
        lists_uplink(&counters, "c0") && lists_uplink(&counters, "c2"),
        "{counters}"
    );
    assert!(!lists_uplink(&counters, "c1"), "{counters}");
    w.client
        .sh("ip link del c2; ip link del c1; ip tuntap del dev t9 mode tun")
        .unwrap();
    time_until("c2 let go", Duration::from_secs(2), || {
        log(&w).contains("gone: classifier and guard let go uplink=c2")
    });
    let counters = w.counters();
    assert!(!lists_uplink(&counters, "c2"), "{counters}");
}
