//! Lock-down outlives tunneld: the uplinks' programs are pinned, so when tunneld is killed
//! (SIGKILL) or stopped on purpose with lock-down on, they keep running with the last policy;
//! a tunneld that starts takes them over in place and resumes the connection with the
//! session cookie it kept, with nobody asking. The world of
//! `tunnel_user::testbed::client_world`, with a far end on the gateway's side that is neither
//! included nor excluded (lock-down drops it) and a capture of what arrives there:
//!
//! ```text
//!  client: c0 192.168.70.2 ── veth ── gw: g0 192.168.70.1 (gateway), 192.168.70.9 (far end)
//!  an app sends to the far end and to corp every millisecond, all along
//! ```

use std::{
    fs,
    net::UdpSocket,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tunnel_user::testbed::{
    client_world::{CORP, ClientWorld, GATEWAY, wait_for},
    wire::Capture,
};

const FAR_END: &str = "192.168.70.9";
const DISCARD: u16 = 9;

/// Whether an Ethernet frame is an IPv4 packet to `dst`.
fn to(frame: &[u8], dst: &str) -> bool {
    let dst: std::net::Ipv4Addr = dst.parse().unwrap();
    frame.len() >= 34 && frame[12..14] == [0x08, 0x00] && frame[30..34] == dst.octets()
}

/// The programs on `ifname` in the client namespace (egress, ingress), by id.
fn tcx_programs(w: &ClientWorld, ifname: &str) -> (Vec<u32>, Vec<u32>) {
    let ifname = ifname.to_string();
    w.client
        .enter(move || {
            let ids = |at| {
                SchedClassifier::query_tcx(&ifname, at)
                    .map(|(_, p)| p.iter().map(|p| p.id()).collect::<Vec<u32>>())
                    .unwrap_or_else(|e| panic!("querying {ifname}: {e}"))
            };
            (ids(TcAttachType::Egress), ids(TcAttachType::Ingress))
        })
        .unwrap()
}

/// An application that sends a datagram to the far end and one to corp every millisecond
/// until stopped; counts the rounds.
struct App {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl App {
    fn start(w: &ClientWorld) -> App {
        let socket = w
            .client
            .enter(|| UdpSocket::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
        let (stop, rounds) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A drop makes `send_to` fail (EPERM); the app goes on.
                    let _ = socket.send_to(b"far", (FAR_END, DISCARD));
                    let _ = socket.send_to(b"corp", (CORP, DISCARD));
                    rounds.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        App {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Imports machine settings with VPN only access `on`, and the connection `corp` to the
/// gateway, locked down: only a locked-down connection locks the machine down.
fn lockdown(w: &ClientWorld, on: bool) {
    let preconfig = w.dir.join("lockdown.pulsepreconfig");
    fs::write(
        &preconfig,
        format!(
            "schema version {{\n  version: \"1\"\n}}\n\nmachine settings {{\n  lock-down: \"{on}\"\n}}\n\
             ive \"7d3c1f0e-0000-4000-8000-000000000002\" {{\n  friendly-name: \"corp\"\n  \
             uri: \"https://{GATEWAY}:8443\"\n  connection-lock-down: \"true\"\n}}\n"
        ),
    )
    .unwrap();
    let out = w.tunnel(&["import", &preconfig.display().to_string()], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "lock-down {on}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pins tunneld keeps for this world's namespace (the directory named by its cookie).
fn pins(w: &ClientWorld) -> Vec<PathBuf> {
    let log = fs::read_to_string(w.dir.join("tunneld.log")).unwrap_or_default();
    let Some(dir) = log
        .lines()
        .find_map(|l| l.split("pins=").nth(1))
        .map(|d| d.split_whitespace().next().unwrap().to_string())
    else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn lockdown_holds_while_tunneld_is_dead_and_a_new_one_takes_over() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("lk", tunnel_user::this_crates_binaries!());
    w.gw.sh(&format!("ip addr add {FAR_END}/24 dev g0"))
        .unwrap();
    let _gw = w.start_gateway();
    let td = w.start_tunneld();
    let capture = Capture::start(&w.gw, "g0").unwrap();

    // Positive control: without lock-down the far end is reached in clear, and seen.
    {
        let app = App::start(&w);
        wait_for("the far end reached", Duration::from_secs(5), || {
            capture.count(|f| to(f, FAR_END)) >= 10
        });
        drop(app);
    }

    // The administrator's locked-down connection, stored: what tunneld resumes after a
    // restart (an ad-hoc one's settings live only in its request).
    lockdown(&w, true);
    let out = w.connect_stored("corp");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    let (egress, ingress) = tcx_programs(&w, "c0");
    assert_eq!((egress.len(), ingress.len()), (1, 1));
    std::thread::sleep(Duration::from_millis(50));
    let far_before = capture.count(|f| to(f, FAR_END));
    let corp_before = capture.count(|f| to(f, CORP));

    // The app sends all along: connected, tunneld killed, dead, started again.
    let app = App::start(&w);
    std::thread::sleep(Duration::from_millis(200));
    let killed_at = app.rounds();
    kill(Pid::from_raw(td.id() as i32), Signal::SIGKILL).unwrap();
    drop(td);
    // What a dead tunneld leaves; the next start waits for a new one.
    fs::remove_file(w.socket()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let dead_rounds = app.rounds() - killed_at;
    assert!(dead_rounds > 500, "the app sent while tunneld was dead");
    let leaked = (
        capture.count(|f| to(f, FAR_END)) - far_before,
        capture.count(|f| to(f, CORP)) - corp_before,
    );
    assert_eq!(leaked, (0, 0), "in clear (far end, corp) with tunneld dead");
    assert_eq!(
        tcx_programs(&w, "c0"),
        (egress.clone(), ingress.clone()),
        "the same programs stay on c0 with tunneld dead"
    );

    let started = Instant::now();
    let td = w.start_tunneld();
    let took_over = started.elapsed();
    assert_eq!(
        pins(&w).len(),
        2,
        "classifier and guard pinned: {:?}",
        pins(&w)
    );
    let (egress2, ingress2) = tcx_programs(&w, "c0");
    assert_eq!(
        (egress2.len(), ingress2.len()),
        (1, 1),
        "replaced, not added"
    );
    assert!(
        egress2 != egress && ingress2 != ingress,
        "the new tunneld's programs run: {egress:?} -> {egress2:?}, {ingress:?} -> {ingress2:?}"
    );
    let log = fs::read_to_string(w.dir.join("tunneld.log")).unwrap();
    assert!(!log.contains("attaching anew"), "{log}");
    // Nobody asks: the connection resumes its session with the cookie kept on disk.
    wait_for("the connection resumed", Duration::from_secs(15), || {
        w.status()
            .as_array()
            .is_some_and(|a| a.first().is_some_and(|c| c["state"] == "connected"))
    });
    let resumed = started.elapsed();
    assert_eq!(w.status()[0]["ipv4"].as_str(), Some(tunnel_addr.as_str()));
    assert_eq!(
        w.seen_as(CORP).as_deref(),
        Some(tunnel_addr.as_str()),
        "corp reached through the tunnel again"
    );

    // Stopped on purpose with lock-down on: the programs and the pins stay.
    let stopped_at = app.rounds();
    kill(Pid::from_raw(td.id() as i32), Signal::SIGTERM).unwrap();
    wait_for("tunneld stopped", Duration::from_secs(10), || {
        fs::read_to_string(w.dir.join("tunneld.log"))
            .unwrap_or_default()
            .contains("lock-down stays in force after tunneld")
    });
    drop(td);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tcx_programs(&w, "c0"), (egress2.clone(), ingress2.clone()));
    assert_eq!(pins(&w).len(), 2);
    let stopped_rounds = app.rounds() - stopped_at;
    let td = w.start_tunneld();
    wait_for(
        "the connection resumed again",
        Duration::from_secs(15),
        || {
            w.status()
                .as_array()
                .is_some_and(|a| a.first().is_some_and(|c| c["state"] == "connected"))
        },
    );
    let rounds = app.rounds();
    drop(app);

    let far = capture.count(|f| to(f, FAR_END)) - far_before;
    let corp = capture.count(|f| to(f, CORP)) - corp_before;
    eprintln!(
        "survivor: {rounds} rounds sent ({dead_rounds} with tunneld killed, {stopped_rounds} with it stopped); \
         in clear on g0: far end {far}, corp {corp}; restarted tunneld took over in {:.0} ms, \
         connected again {:.0} ms after its start",
        took_over.as_secs_f64() * 1e3,
        resumed.as_secs_f64() * 1e3
    );
    assert_eq!((far, corp), (0, 0), "nothing left in clear under lock-down");

    // Positive control at the end: lock-down off, the far end is seen again; a stop then
    // takes the programs and the pins away.
    lockdown(&w, false);
    let far_before = capture.count(|f| to(f, FAR_END));
    {
        let _app = App::start(&w);
        wait_for("the far end reached again", Duration::from_secs(5), || {
            capture.count(|f| to(f, FAR_END)) >= far_before + 10
        });
    }
    let dir_log = fs::read_to_string(w.dir.join("tunneld.log")).unwrap();
    kill(Pid::from_raw(td.id() as i32), Signal::SIGTERM).unwrap();
    wait_for("tunneld gone", Duration::from_secs(10), || {
        tcx_programs(&w, "c0") == (vec![], vec![])
    });
    drop(td);
    assert!(dir_log.contains("pins="), "{dir_log}");
    assert!(pins(&w).is_empty(), "pins left: {:?}", pins(&w));
}
