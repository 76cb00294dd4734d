//! Every hostile-peer attack (`testbed::hostile`), briefly, against the `tunnel-gateway`
//! binary in the namespaces of `testbed::attack_world` (drawn there), with tight limits so
//! the bounds show within a second or two. Each checks what the gateway held and spent
//! (`testbed::gauge`: connections on its TLS port, resident memory, log lines) and that an
//! honest client still logs in. `cargo xtask bench attacks` measures the same attacks at the
//! default limits, with figures.
//!
//! Set `TUNNEL_GATEWAY_BIN` to run them against another build of the gateway (the one before
//! the hardening has no `[limits]` and refuses this config: a test of it fails at the start).

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tunnel_user::testbed::{
    attack_world::{AttackWorld, CLIENT, PASSWORD, USER, source, sources},
    client_world::Proc,
    gauge::{Gauge, Watch},
    hostile::{self, Attack, Attempt, Outcome, Params, Tally, Target},
};

/// The limits the tests run the gateway with.
const LIMITS: &str = "\n[limits]\nlogin_connections = 64\nlogin_connections_per_source = 8\n\
                      tls_handshake_secs = 2\nlogin_step_secs = 2\n";

fn root() -> bool {
    tunnel_user::testbed::root_or_skip()
}

fn gateway_bin() -> PathBuf {
    std::env::var_os("TUNNEL_GATEWAY_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_tunnel-gateway").into(),
        PathBuf::from,
    )
}

struct Bed {
    world: AttackWorld,
    gw: Proc,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let world = AttackWorld::build(tag).unwrap();
        let gw = world.start_gateway(&gateway_bin(), LIMITS).unwrap();
        Bed { world, gw }
    }

    /// A fresh gateway (limiter windows and memory peaks start again).
    fn restart(&mut self) {
        self.gw.stop();
        self.gw = self.world.start_gateway(&gateway_bin(), LIMITS).unwrap();
    }

    /// Runs `attack` from the attacker's namespace while the gauge watches the gateway; `meanwhile`
    /// runs on this thread after `delay`, during the attack.
    fn attack<T>(
        &self,
        attack: &Attack,
        params: Params,
        delay: Duration,
        meanwhile: impl FnOnce() -> T,
    ) -> (Tally, Watch, T) {
        let w = &self.world;
        let gauge = Gauge::start(
            self.gw.id(),
            w.target().port(),
            &w.log_path(),
            Duration::from_millis(20),
            true,
        )
        .unwrap();
        let target = Target {
            addr: w.target(),
            pin: Some(w.pin),
        };
        let (tally, during) = std::thread::scope(|s| {
            let attacker = s.spawn(|| {
                w.attacker
                    .enter(|| hostile::run(attack, &target, &params))
                    .unwrap()
                    .unwrap()
            });
            std::thread::sleep(delay);
            let during = meanwhile();
            (attacker.join().unwrap(), during)
        });
        let watch = gauge.stop();
        eprintln!(
            "{attack}: attacker {}; gateway held {} connections at most, {:.2} s CPU, RSS {} -> \
             peak {} KiB, {} log lines",
            tally.summary(),
            watch.peak_connections,
            watch.cpu_secs,
            watch.rss_start_kib,
            watch.peak_rss_kib,
            watch.log_lines
        );
        (tally, watch, during)
    }

    /// The honest client logs in (our driver, from the client's address).
    fn login(&self) -> Outcome {
        let to = self.world.target();
        let pin = self.world.pin;
        self.world
            .client
            .enter(move || {
                hostile::attempts(
                    to,
                    pin,
                    vec![Attempt::new(IpAddr::V4(CLIENT), USER, PASSWORD)],
                )
            })
            .unwrap()
            .unwrap()
            .remove(0)
    }
}

fn params(count: usize, rate: f64, secs: f64, sources: Vec<IpAddr>) -> Params {
    Params {
        count,
        rate,
        duration: Duration::from_secs_f64(secs),
        sources,
    }
}

/// Connections that never get through the TLS handshake, or stop after it: the per-source
/// and the global cap hold them, the step deadlines end them, the log stays quiet, and an
/// honest client from elsewhere logs in while a single source floods.
#[test]
fn floods_of_silent_connections_are_capped_and_timed_out() {
    if !root() {
        return;
    }
    let bed = Bed::new("flood");
    // One source, five times its cap.
    let (t, g, login) = bed.attack(
        &Attack::HalfOpen,
        params(40, 1000.0, 1.5, vec![source(0)]),
        Duration::from_millis(500),
        || bed.login(),
    );
    assert_eq!(
        login,
        Outcome::Accepted,
        "the honest client, during the flood"
    );
    // The per-source cap, and the honest client's own connection.
    assert!(g.peak_connections <= 8 + 1, "per-source cap: {g:?}");
    assert!(t.ended("closed") >= 32, "refused over the cap: {t:?}");
    assert!(g.log_lines <= 8, "{} log lines", g.log_lines);

    // Many sources, more than the global cap: the honest client, holding fewer than the
    // flooding sources, takes the place of one of theirs.
    let (t, g, login) = bed.attack(
        &Attack::HalfOpen,
        params(150, 1000.0, 1.5, sources(20)),
        Duration::from_millis(500),
        || bed.login(),
    );
    assert_eq!(
        login,
        Outcome::Accepted,
        "the honest client, while the global cap is full"
    );
    // The honest connection, and an evicted one not closed yet when sampled.
    assert!(g.peak_connections <= 64 + 2, "global cap: {g:?}");
    assert!(
        g.peak_connections >= 60,
        "positive control: the flood filled it: {g:?}"
    );
    assert!(t.ended("closed") >= 150 - 64, "{t:?}");
    assert!(g.log_lines <= 8, "{} log lines", g.log_lines);
    assert_eq!(bed.login(), Outcome::Accepted, "after the flood");

    // Half a ClientHello, then silence: closed at the TLS deadline (2 s).
    let (t, g, ()) = bed.attack(
        &Attack::TlsPartial,
        params(16, 1000.0, 3.5, sources(2)),
        Duration::ZERO,
        || (),
    );
    assert!(g.peak_connections <= 16, "{g:?}");
    assert!(t.ended("closed") >= 16, "ended by the deadline: {t:?}");
    let after = Duration::from_millis(t.ended_after_ms_median);
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(3200)).contains(&after),
        "closed after {after:?}, the deadline is 2 s"
    );
    assert!(g.log_lines <= 8, "{} log lines", g.log_lines);

    // A complete handshake, then silence: closed at the step deadline (2 s).
    let (t, g, ()) = bed.attack(
        &Attack::TlsSilent,
        params(16, 1000.0, 3.5, sources(2)),
        Duration::ZERO,
        || (),
    );
    assert!(g.peak_connections <= 16, "{g:?}");
    assert!(t.ended("closed") >= 16, "ended by the deadline: {t:?}");
    let after = Duration::from_millis(t.ended_after_ms_median);
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(3200)).contains(&after),
        "closed after {after:?}, the deadline is 2 s"
    );
    assert!(g.log_lines <= 8, "{} log lines", g.log_lines);
    assert_eq!(bed.login(), Outcome::Accepted);
}

/// A frame header claiming just under 1 MiB before the login, and garbage where the upgrade
/// request or the first frame belongs: each connection is closed at once, nothing is
/// buffered, nothing is logged.
#[test]
fn oversized_and_garbage_frames_close_the_connection_at_once() {
    if !root() {
        return;
    }
    let bed = Bed::new("frames");
    let (t, g, ()) = bed.attack(
        &Attack::BigFrame {
            claim: hostile::BIG_FRAME,
        },
        params(48, 200.0, 1.5, sources(8)),
        Duration::ZERO,
        || (),
    );
    assert!(t.ended("closed mid-frame") >= 48, "{t:?}");
    assert_eq!(t.ended("closed"), 0, "a whole frame was taken: {t:?}");
    // 48 frames of 1 MiB would be 48 MiB.
    let grew = g.peak_rss_kib.saturating_sub(g.rss_start_kib);
    assert!(grew < 16 * 1024, "RSS grew {grew} KiB: {g:?}");
    assert!(g.log_lines <= 8, "{} log lines", g.log_lines);

    // More garbage than an HTTP head may hold where the upgrade request belongs, or a frame
    // the gateway does not know before the login: closed at once, either way.
    let (t, g, ()) = bed.attack(
        &Attack::Garbage,
        params(32, 200.0, 1.5, sources(8)),
        Duration::ZERO,
        || (),
    );
    assert!(t.ended("closed") >= 32, "{t:?}");
    assert!(t.ended("closed after a garbage frame") >= 32, "{t:?}");
    assert!(t.ended_after_ms_max < 1000, "{t:?}");
    assert!(g.peak_connections <= 32, "{g:?}");
    assert!(g.log_lines <= 8, "{} log lines", g.log_lines);
    assert_eq!(bed.login(), Outcome::Accepted);
}

/// The argon2 cost of the users file's hashes (and of the dummy hash unknown users get), KiB.
const HASH_KIB: u64 = 19_456;

/// Password storms from one source, from many against one account, from many against many
/// accounts; and the resume-abort loop. The limits give each source and account its checks
/// and no more, memory stays within the hashing workers', the honest client (a known source
/// for its account) logs in during the storm on its account, and an aborted resume leaves
/// the session resumable.
#[test]
fn password_storms_and_resume_aborts_stay_within_their_limits() {
    if !root() {
        return;
    }
    let mut bed = Bed::new("storm");
    // The honest client's source becomes known for its account.
    assert_eq!(bed.login(), Outcome::Accepted);
    let (t, g, login) = bed.attack(
        &Attack::StormOneSource { user: USER.into() },
        params(16, 200.0, 1.5, vec![source(0)]),
        Duration::from_millis(700),
        || bed.login(),
    );
    assert_eq!(login, Outcome::Accepted, "during the storm");
    assert_eq!(t.ended("checked"), 5, "{t:?}");
    assert!(t.ended("too many") >= 1, "{t:?}");
    assert_eq!(t.ended("accepted"), 0);
    // One line per refused or checked login, no more.
    assert!(g.log_lines <= t.started + 8, "{} log lines", g.log_lines);

    bed.restart();
    assert_eq!(bed.login(), Outcome::Accepted);
    let (t, g, login) = bed.attack(
        &Attack::StormOneAccount { user: USER.into() },
        params(16, 200.0, 1.5, sources(100)),
        Duration::from_millis(700),
        || bed.login(),
    );
    assert_eq!(
        login,
        Outcome::Accepted,
        "from a known source, during the storm"
    );
    assert_eq!(t.ended("checked"), 10, "the account's limit: {t:?}");
    assert!(t.ended("too many") >= 1, "{t:?}");
    assert!(g.log_lines <= t.started + 8, "{} log lines", g.log_lines);

    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8) as u64;
    let (t, g, ()) = bed.attack(
        &Attack::StormManyAccounts,
        params(32, 200.0, 2.0, sources(100)),
        Duration::ZERO,
        || (),
    );
    assert!(t.ended("checked") >= 10, "positive control: {t:?}");
    let grew = g.peak_rss_kib.saturating_sub(g.rss_start_kib);
    let bound = workers * HASH_KIB + 32 * 1024;
    assert!(grew <= bound, "RSS grew {grew} KiB, bound {bound}: {g:?}");
    assert!(g.log_lines <= t.started + 8, "{} log lines", g.log_lines);

    bed.restart();
    let (t, _, ()) = bed.attack(
        &Attack::ResumeAbort {
            user: USER.into(),
            password: PASSWORD.into(),
        },
        params(1, 20.0, 1.5, sources(1)),
        Duration::ZERO,
        || (),
    );
    assert_eq!(t.ended("logged in"), 1, "{t:?}");
    assert!(t.ended("resume aborted") >= 5, "{t:?}");
    assert_eq!(
        t.ended("resume refused"),
        0,
        "an abort lost the session: {t:?}"
    );
    let started = Instant::now();
    assert_eq!(bed.login(), Outcome::Accepted);
    assert!(started.elapsed() < Duration::from_secs(5));
}
