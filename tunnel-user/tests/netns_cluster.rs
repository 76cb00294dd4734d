//! Two gateways sharing their sessions through one Redis server (a real `redis-server`,
//! started here in the gateways' namespace): a session moves from one to the other with its
//! cookie and keeps its address; a logout on one ends it on the other; failed logins count
//! across both; with Redis away the sessions up go on, new logins are refused, and the
//! gateway writes its sessions again when Redis is back.
//!
//! ```text
//!  client ── c0 ── g0: 192.168.70.1:8443 (gateway 1, tgw0) ┐ pool 10.77.0.0/24, host
//!                      192.168.70.3:8443 (gateway 2, tgw1) ┘ routes ── corp 172.20.0.2
//!                      127.0.0.1:6390 redis-server
//! ```

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::{code, said};

use tunnel_user::testbed::{
    client_world::{CORP, ClientWorld, GATEWAY, GATEWAY2, wait_for},
    load::Target,
    redis_server::RedisServer,
};

const REDIS_PORT: u16 = 6390;

/// A world with Redis and two gateways configured to share it (gateway 2 with gateway 1's
/// pool); `extra` is appended to both configurations. Returns gateway 2's directory and pin.
fn cluster(tag: &str, extra: &str) -> (ClientWorld, RedisServer, PathBuf, String) {
    let w = ClientWorld::build(tag, tunnel_user::this_crates_binaries!());
    let redis = RedisServer::start(&w.gw, REDIS_PORT, &w.dir).expect("redis-server");
    let (dir2, pin2) = w.second_gateway();
    w.share_sessions(&dir2, &redis.url(), extra);
    (w, redis, dir2, pin2)
}

fn redis_keys(w: &ClientWorld, pattern: &str) -> Vec<String> {
    let out =
        w.gw.sh(&format!(
            "redis-cli -p {REDIS_PORT} --scan --pattern '{pattern}'"
        ))
        .unwrap();
    let mut keys: Vec<String> = out.lines().map(str::to_string).collect();
    keys.sort();
    keys
}

fn log(dir: &Path) -> String {
    fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
}

/// Logs in (or resumes, given a cookie) from the client's namespace with the project's own
/// client state machine; the session is held until the returned value is dropped.
fn session_at(
    w: &ClientWorld,
    gateway: &str,
    pin: &str,
    password: &str,
    cookie: Option<String>,
) -> Result<tunnel_user::testbed::load::Held, String> {
    let to: SocketAddr = format!("{gateway}:8443").parse().unwrap();
    let pin = tunnel_user::client::tls::Pin::parse(pin).unwrap();
    let target = Target::new(to, pin).unwrap();
    let password = password.to_string();
    w.client
        .enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let source = "192.168.70.2".parse().unwrap();
            let held = rt.block_on(target.session(source, "alice", &password, cookie));
            // The connection outlives this runtime only as a socket: what the test does
            // with it is drop it (the session parks) or keep it open.
            drop(rt);
            held
        })
        .unwrap()
}

/// Scenario 2: our client on gateway 1; gateway 1 killed; the URL list takes the client to
/// gateway 2, which takes the session from Redis: same cookie, same address, traffic.
#[test]
fn a_session_moves_to_the_other_gateway_with_its_address() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, _redis, dir2, _) = cluster("cm", "");
    let cas = w.both_certificates(&dir2);
    let mut gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &cas)]);
    w.add_both_gateways("both");
    let out = w.tunnel(
        &["connect", "both", "-u", "alice", "--password-stdin"],
        "s3cret\n",
    );
    assert_eq!(code(&out), 0, "connect: {}", said(&out));
    let (server, addr) = w.connected_to().expect("connected");
    assert_eq!(server, format!("https://{GATEWAY}:8443/"));
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    wait_for("the session in Redis", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:session:*").len() == 1
    });
    assert_eq!(
        redis_keys(&w, "tunnel:lease:*"),
        [format!("tunnel:lease:{addr}")],
        "the address is leased in the cluster"
    );

    gw1.kill();
    let killed = Instant::now();
    wait_for("the client on gateway 2", Duration::from_secs(60), || {
        w.connected_to().is_some_and(|(s, _)| s.contains(GATEWAY2))
    });
    let moved = killed.elapsed();
    let (_, addr2) = w.connected_to().unwrap();
    assert_eq!(addr2, addr, "the same address on gateway 2");
    wait_for("corp through gateway 2", Duration::from_secs(20), || {
        w.seen_as(CORP).as_deref() == Some(addr.as_str())
    });
    let flowing = killed.elapsed();
    let log2 = log(&dir2);
    assert!(
        log2.contains("session taken over from the cluster"),
        "gateway 2 took the session from Redis: {log2}"
    );
    let established: Vec<&str> = log2
        .lines()
        .filter(|l| l.contains("session established"))
        .collect();
    assert_eq!(established.len(), 1, "{log2}");
    assert!(
        established[0].contains("resumed=true") && established[0].contains(&addr),
        "resumed with its cookie and address: {}",
        established[0]
    );
    // Gateway 2 routes the address to its own TUN device.
    let route = w.gw.sh(&format!("ip route get {addr}")).unwrap();
    assert!(route.contains("dev tgw1"), "{route}");
    eprintln!(
        "gateway 1 killed: on gateway 2 after {:.0} ms, corp answering after {:.0} ms",
        moved.as_secs_f64() * 1e3,
        flowing.as_secs_f64() * 1e3
    );
}

/// Scenario 3: a session signed out on gateway 1 is refused by gateway 2, while a session
/// that was only disconnected resumes there (the positive control: cookies do cross).
#[test]
fn a_logout_on_one_gateway_ends_the_session_on_the_other() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, _redis, dir2, pin2) = cluster("cl", "");
    let _gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);

    // Control: a session left without a logout resumes on the other gateway.
    let held = session_at(&w, GATEWAY, &w.pin, "s3cret", None).expect("login on gateway 1");
    let (cookie, addr) = (held.cookie.clone(), held.ipv4);
    drop(held);
    wait_for("the session parked", Duration::from_secs(5), || {
        log(&w.dir).contains("connection lost; session resumable")
    });
    let moved = session_at(&w, GATEWAY2, &pin2, "", Some(cookie)).expect("resumed on gateway 2");
    assert!(moved.resumed);
    assert_eq!(moved.ipv4, addr, "the same address");
    drop(moved);

    // Our client signs out on gateway 1: its cookie is refused on gateway 2 afterwards.
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &w.dir.join("cert.pem"))]);
    let url = format!("https://{GATEWAY}:8443");
    let out = w.tunnel(&["add", "one", "--url", &url, "-u", "alice"], "");
    assert_eq!(code(&out), 0, "add: {}", said(&out));
    let out = w.tunnel(
        &["connect", "one", "-u", "alice", "--password-stdin"],
        "s3cret\n",
    );
    assert_eq!(code(&out), 0, "connect: {}", said(&out));
    let kept: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(w.dir.join("state/sessions.json")).unwrap())
            .unwrap();
    let cookie = kept
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|k| k["cookie"].as_str())
        .expect("the client keeps its cookie")
        .to_string();
    let out = w.tunnel(&["signout", "one"], "");
    assert_eq!(code(&out), 0, "signout: {}", said(&out));
    wait_for("the logout in Redis", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:session:*").len() == 1
    });
    let refused = session_at(&w, GATEWAY2, &pin2, "", Some(cookie));
    assert_eq!(
        refused.err().as_deref(),
        Some("the cookie was not taken"),
        "gateway 2 asks for credentials instead"
    );
}

/// A password storm spread over both gateways meets one per-user limit: three failures
/// allowed in the window, two on gateway 1 and one on gateway 2, and the right password is
/// refused next on gateway 2 (whose own limiter saw one failure).
#[test]
fn failed_logins_count_across_the_cluster() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, _redis, dir2, pin2) = cluster(
        "cf",
        "\n[auth.passwords]\naccount_failures = 3\naccount_window_secs = 300\n",
    );
    let _gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);
    for (gateway, pin) in [(GATEWAY, &w.pin), (GATEWAY, &w.pin), (GATEWAY2, &pin2)] {
        let wrong = session_at(&w, gateway, pin, "wrong", None);
        assert_eq!(wrong.err().as_deref(), Some("wrong password"));
    }
    let refused = session_at(&w, GATEWAY2, &pin2, "s3cret", None);
    let why = refused.err().expect("refused at the cluster's limit");
    assert!(why.contains("Too many failed logins"), "{why}");
    assert!(
        log(&dir2).contains("failed logins across the cluster reached the limit"),
        "{}",
        log(&dir2)
    );
}

/// Redis killed: the session up goes on, a new login is refused with a clear error and log
/// line, and once Redis is back (empty) the gateway writes its session again and logins
/// work.
#[test]
fn with_redis_away_sessions_go_on_and_logins_wait() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, mut redis, _dir2, _) = cluster("cr", "");
    let _gw1 = w.start_gateway();
    let _td = w.start_tunneld();
    let out = w.connect();
    assert_eq!(code(&out), 0, "connect: {}", said(&out));
    let addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    wait_for("the session in Redis", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:session:*").len() == 1
    });

    redis.kill();
    assert_eq!(
        w.seen_as(CORP).as_deref(),
        Some(addr.as_str()),
        "the session up goes on"
    );
    let refused = session_at(&w, GATEWAY, &w.pin, "s3cret", None);
    assert_eq!(
        refused.err().as_deref(),
        Some("The session store is unavailable. Try again in a moment.")
    );
    let log1 = log(&w.dir);
    assert!(
        log1.contains("login refused: the session store is unavailable")
            && log1.contains(&format!("127.0.0.1:{REDIS_PORT}")),
        "{log1}"
    );

    redis.start_again(&w.gw).unwrap();
    let back = wait_for("the session written again", Duration::from_secs(15), || {
        redis_keys(&w, "tunnel:session:*").len() == 1
    });
    assert_eq!(
        redis_keys(&w, "tunnel:lease:*"),
        [format!("tunnel:lease:{addr}")]
    );
    assert!(log(&w.dir).contains("the session store answers again"));
    let held = session_at(&w, GATEWAY, &w.pin, "s3cret", None).expect("a login once Redis is back");
    assert_ne!(held.ipv4.map(|a| a.to_string()), Some(addr.clone()));
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    eprintln!(
        "Redis back: the session written again within {:.0} ms",
        back.as_secs_f64() * 1e3
    );
}

/// The realm's per-user limit holds across the cluster: with one session allowed and
/// `refuse`, a login on gateway 2 is refused while the user has a session on gateway 1;
/// with `end_oldest`, the login on gateway 2 ends the session on gateway 1 (its
/// connection is closed there, its record and address leave the store).
#[test]
fn the_per_user_limit_counts_the_whole_cluster() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    for mode in ["refuse", "end_oldest"] {
        let tag = if mode == "refuse" { "cu" } else { "co" };
        let (w, _redis, dir2, pin2) = cluster(
            tag,
            &format!("\n[realm.Users]\nmax_sessions_per_user = 1\nsession_limit = \"{mode}\"\n"),
        );
        let _gw1 = w.start_gateway();
        let _gw2 = w.start_gateway_in(&dir2);
        let first = session_at(&w, GATEWAY, &w.pin, "s3cret", None).expect("login on gateway 1");
        wait_for("the session in Redis", Duration::from_secs(5), || {
            redis_keys(&w, "tunnel:session:*").len() == 1
        });
        let second = session_at(&w, GATEWAY2, &pin2, "s3cret", None);
        if mode == "refuse" {
            let why = second
                .err()
                .expect("refused: the user has a session on gateway 1");
            assert!(why.contains("You have 1 sessions"), "{why}");
            assert_eq!(redis_keys(&w, "tunnel:session:*").len(), 1);
        } else {
            let second = second.expect("the login on gateway 2 ends the older session");
            wait_for("gateway 1 lets its copy go", Duration::from_secs(5), || {
                log(&w.dir).contains("connection closed here")
            });
            let sessions = redis_keys(&w, "tunnel:session:*");
            assert_eq!(sessions.len(), 1, "{sessions:?}");
            let leases = redis_keys(&w, "tunnel:lease:*");
            assert_eq!(
                leases,
                [format!("tunnel:lease:{}", second.ipv4.unwrap())],
                "the first session's address left the store"
            );
            assert!(log(&dir2).contains("ended a session of the cluster"));
        }
        drop(first);
    }
}

/// `limits.max_sessions` caps the cluster: with a cap of one, a session held on gateway 1
/// fills it, so a login on gateway 2 is refused before its password is checked; once that
/// session signs out (its record leaves the store) gateway 2 takes a login.
#[test]
fn the_session_cap_counts_the_whole_cluster() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, _redis, dir2, pin2) = cluster("cc", "\n[limits]\nmax_sessions = 1\n");
    let _gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);
    let first = session_at(&w, GATEWAY, &w.pin, "s3cret", None).expect("login on gateway 1");
    wait_for("the session in Redis", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:session:*").len() == 1
    });
    // Even a wrong password is refused for the cap: no hash is spent.
    let refused = session_at(&w, GATEWAY2, &pin2, "wrong", None);
    assert_eq!(
        refused.err().as_deref(),
        Some("The gateway holds as many sessions as it may. Try again later.")
    );
    assert!(log(&dir2).contains("the session cap (limits.max_sessions) is reached"));
    // The session ends on gateway 1 (its operator kills it): room again on gateway 2.
    drop(first);
    let kill =
        w.gw.command(&w.bin.gateway.to_string_lossy())
            .args(["sessions", "--config"])
            .arg(w.dir.join("gateway.toml"))
            .args(["kill", "alice"])
            .output()
            .unwrap();
    assert!(
        kill.status.success(),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    wait_for("the record gone", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:session:*").is_empty()
    });
    session_at(&w, GATEWAY2, &pin2, "s3cret", None).expect("a login once there is room");
}

/// Two gateways hand out one pool and never one address twice: sessions made on gateway 1
/// hold the lowest addresses, so gateway 2's first login finds them held in Redis and
/// takes the next free one; every address is leased once.
#[test]
fn no_two_gateways_hand_out_one_address() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, _redis, dir2, pin2) = cluster("ca", "");
    let _gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);
    let on_one: Vec<_> = (0..3)
        .map(|_| session_at(&w, GATEWAY, &w.pin, "s3cret", None).expect("login on gateway 1"))
        .collect();
    let on_two: Vec<_> = (0..2)
        .map(|_| session_at(&w, GATEWAY2, &pin2, "s3cret", None).expect("login on gateway 2"))
        .collect();
    let mut addresses: Vec<String> = on_one
        .iter()
        .chain(&on_two)
        .map(|h| h.ipv4.expect("an address").to_string())
        .collect();
    let given = addresses.clone();
    addresses.sort();
    addresses.dedup();
    assert_eq!(
        addresses.len(),
        5,
        "five sessions, five addresses: {given:?}"
    );
    wait_for("every lease in Redis", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:lease:*").len() == 5
    });
    let log2 = log(&dir2);
    assert!(
        !log2.contains("login refused"),
        "gateway 2 skipped the held addresses: {log2}"
    );
}

/// The Ivanti way across the cluster (`session_limit = "ask"`, one session): a login on
/// gateway 2 is shown the user's session on gateway 1 and ends it; the new session is
/// made, gateway 1 closes the old one's connection, and the store holds one session.
#[test]
fn at_the_cluster_limit_the_user_ends_a_session_on_the_other_gateway() {
    use tunnel_proto::ClientConfig;
    use tunnel_user::testbed::pulse_peer::{Answers, EndSession, PulsePeer};
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let (w, _redis, dir2, pin2) = cluster("ck", "\n[realm.Users]\nmax_sessions_per_user = 1\n");
    let _gw1 = w.start_gateway();
    let _gw2 = w.start_gateway_in(&dir2);
    let first = session_at(&w, GATEWAY, &w.pin, "s3cret", None).expect("login on gateway 1");
    wait_for("the session in Redis", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:session:*").len() == 1
    });
    let to: SocketAddr = format!("{GATEWAY2}:8443").parse().unwrap();
    let mut second = w
        .client
        .enter(move || PulsePeer::connect(to, &pin2, ClientConfig::new(GATEWAY2.to_string())))
        .unwrap()
        .unwrap();
    let answers = Answers {
        end_session: Some(EndSession::Oldest),
        ..Answers::default()
    };
    second
        .login_with("alice", "s3cret", &answers)
        .expect("the login on gateway 2, after ending the other session");
    let listed = second.listed_sessions().expect("the sessions were listed");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].from, "192.168.70.2");
    wait_for(
        "gateway 1 closes the old session",
        Duration::from_secs(5),
        || log(&w.dir).contains("connection closed here"),
    );
    wait_for("one session in the store", Duration::from_secs(5), || {
        redis_keys(&w, "tunnel:session:*").len() == 1
    });
    assert!(log(&dir2).contains("ended a session of the cluster"));
    drop(first);
}
