//! `cargo xtask bench gateway`: how many sessions one gateway holds and what each costs.
//!
//! In the world of `testbed::attack_world` (the gateway in a namespace, a load generator
//! with 200 source addresses in another), with the project's own load generator
//! (`testbed::load`: tunnel-proto's client over tokio-rustls, many sessions from one
//! process, no TUN device, TLS only), against this tree's release gateway:
//!
//! 0. `WARM_UP` password logins, so that every hashing worker's memory is in place; the
//!    gateway's resident memory then is the baseline;
//! 1. password logins of one user up to `SMALL` sessions, `LOGIN_CONCURRENCY` at once (the
//!    gateway's hash queue holds 64): logins per second; the gateway's resident memory;
//! 2. more password logins up to `LARGE` sessions; memory again. Memory per idle session is
//!    the growth over the baseline, divided by the sessions made since;
//! 3. `RESUMES` of those sessions drop their connections and resume with their cookies,
//!    `RESUME_CONCURRENCY` at once: cookie logins per second (no password hash);
//! 4. the gateway is killed (SIGKILL) and started again; every session resumes with its
//!    cookie from the embedded session store: the time from the kill until the last one is
//!    back, and whether each kept its address;
//! 5. the same with the cluster's store: a gateway sharing a Redis server (`redis-server`,
//!    started here) gets as many sessions by password, is killed and started again; every
//!    session resumes by taking its record from Redis;
//! 6. ESP: `ESP_SESSIONS` sessions (ESP on, keys negotiated) send 1,400-byte IP packets at
//!    once for a while, towards a blackhole route behind the gateway: what the gateway
//!    wrote to its TUN device per second, and the gateway's CPU time per GB of it.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::sync::Semaphore;
use tunnel_user::testbed::{
    attack_world::{AttackWorld, PASSWORD, SOURCES, USER, source},
    client_world::Proc,
    load::{Held, Target},
    redis_server::RedisServer,
};

/// The pool: room for the largest run.
const POOL: &str = "10.64.0.0/17";
/// Sessions made before the memory baseline is read.
const WARM_UP: usize = 64;
/// Password logins at once: under the gateway's hash queue (64), so none is refused busy.
const LOGIN_CONCURRENCY: usize = 32;
/// Cookie logins at once: under the cap on connections not logged in (1024).
const RESUME_CONCURRENCY: usize = 512;
/// Sessions sending over ESP at once.
const ESP_SESSIONS: usize = 100;
/// The IP packets they send.
const ESP_PACKET: usize = 1400;

pub struct Options {
    pub quick: bool,
    pub gateway: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub revision: String,
    pub gateway: String,
    /// Password logins: sessions made, per second, failures by reason.
    pub password_logins: usize,
    pub password_logins_per_sec: f64,
    /// Cookie logins (resumes of parked sessions): how many, per second.
    pub cookie_logins: usize,
    pub cookie_logins_per_sec: f64,
    /// The gateway's resident memory (KiB) with the warm-up's sessions, and at each size
    /// (per session: the growth over it, divided by the sessions made since).
    pub rss_kib_before: u64,
    pub memory: Vec<Memory>,
    /// The restart: sessions held when the gateway was killed, and how they came back.
    pub restart: Restart,
    /// The same with the sessions in Redis.
    pub cluster_restart: Restart,
    /// Many sessions sending over ESP at once.
    pub esp: EspLoad,
    /// The first error of each kind, with how often it happened.
    pub errors: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub sessions: usize,
    pub rss_kib: u64,
    pub kib_per_session: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct Restart {
    pub sessions: usize,
    /// Sessions the new gateway said it restored from its store.
    pub restored: Option<usize>,
    pub resumed: usize,
    pub same_address: usize,
    /// From the kill to the new gateway's "running" line.
    pub start_secs: f64,
    /// From the kill to the last session resumed.
    pub all_back_secs: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct EspLoad {
    pub sessions: usize,
    pub seconds: f64,
    /// IP bytes the load generator handed to ESP.
    pub sent_bytes: u64,
    /// IP bytes the gateway wrote to its TUN device (decrypted, forwarded).
    pub forwarded_bytes: u64,
    pub forwarded_gbit_per_sec: f64,
    /// The gateway's CPU time (user + system) while they sent, and per GB forwarded.
    pub gateway_cpu_secs: f64,
    pub gateway_cpu_secs_per_gb: f64,
}

/// Bytes written to the gateway's TUN device (its receive counter).
fn tun_rx_bytes(world: &AttackWorld) -> Result<u64> {
    let out = world.gw.sh("ip -s -j link show tgw0")?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .context("the TUN device's receive bytes")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the gateway's status (pid {pid})"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// The gateway's memory with `sessions` held, after a moment to settle; per session, the
/// growth over `baseline` (with `warm` sessions) divided by the sessions made since.
async fn measure(pid: u32, sessions: usize, baseline: u64, warm: usize) -> Result<Memory> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = rss_kib(pid)?;
    Ok(Memory {
        sessions,
        rss_kib: rss,
        kib_per_session: rss.saturating_sub(baseline) as f64
            / sessions.saturating_sub(warm).max(1) as f64,
    })
}

/// Raises our descriptor limit (the gateway inherits it) to hold every session's socket.
fn raise_nofile(want: u64) {
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: setrlimit with a valid rlimit struct.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Opens sessions `range` (source addresses round robin), `at_once` at a time; each with
/// its cookie when `cookies` are given. Returns the sessions (in `range` order, `None` for
/// those that failed), the errors, and how long it took.
async fn open(
    target: &Target,
    range: std::ops::Range<usize>,
    at_once: usize,
    cookies: Option<&[String]>,
    errors: &mut BTreeMap<String, usize>,
) -> (Vec<Option<Held>>, Duration) {
    let slots = Arc::new(Semaphore::new(at_once));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, i) in range.clone().enumerate() {
        let (target, slots) = (target.clone(), slots.clone());
        let cookie = cookies.map(|c| c[n].clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (
                n,
                target
                    .session(source(i % SOURCES), USER, PASSWORD, cookie)
                    .await,
            )
        });
    }
    let mut held: Vec<Option<Held>> = (0..range.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((n, Ok(h))) => held[n] = Some(h),
            Ok((_, Err(e))) => *errors.entry(e).or_default() += 1,
            Err(e) => *errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    (held, started.elapsed())
}

pub fn run(opts: &Options, revision: &str) -> Result<Report> {
    if !opts.gateway.exists() {
        bail!("{} is missing", opts.gateway.display());
    }
    let (small, large, resumes) = if opts.quick {
        (300, 2_000, 300)
    } else {
        (1_000, 10_000, 1_000)
    };
    raise_nofile(65_536);
    let world = AttackWorld::build("gb").context("building the world")?;
    let mut gw = world
        .start_gateway_pool(&opts.gateway, POOL, "", false, "")
        .context("starting the gateway")?;
    let target = Target::new(world.target(), world.pin).map_err(anyhow::Error::msg)?;
    let mut errors = BTreeMap::new();
    let mut memory = Vec::new();
    let mut rss_before = 0;
    let mut report_restart = Restart::default();
    let mut cluster_restart = Restart::default();
    let mut esp = EspLoad::default();
    let esp_time = Duration::from_secs(if opts.quick { 3 } else { 10 });
    let redis = RedisServer::start(&world.gw, 6391, &world.dir).context("starting redis-server")?;
    let cluster = format!("session_store = \"{}\"", redis.url());
    let (logins, login_time, cookie_logins, cookie_time) = world
        .attacker
        .enter(|| -> Result<_> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("the load generator's runtime")?;
            rt.block_on(async {
                // The warm-up: every hashing worker's memory and the runtime's threads in
                // place, so that what grows after is the sessions'.
                let (warm, _) =
                    open(&target, 0..WARM_UP, LOGIN_CONCURRENCY, None, &mut errors).await;
                let mut held: Vec<Held> = warm.into_iter().flatten().collect();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let warmed = held.len();
                rss_before = rss_kib(gw.id())?;

                // 1 and 2: password logins.
                let (first, t1) = open(
                    &target,
                    WARM_UP..small,
                    LOGIN_CONCURRENCY,
                    None,
                    &mut errors,
                )
                .await;
                let made_first = first.iter().flatten().count();
                held.extend(first.into_iter().flatten());
                memory.push(measure(gw.id(), held.len(), rss_before, warmed).await?);
                eprintln!(
                    "gateway bench: {} sessions in {:.1} s",
                    held.len(),
                    t1.as_secs_f64()
                );
                let (more, _) =
                    open(&target, small..large, LOGIN_CONCURRENCY, None, &mut errors).await;
                held.extend(more.into_iter().flatten());
                let m = measure(gw.id(), held.len(), rss_before, warmed).await?;
                let rss = m.rss_kib;
                memory.push(m);
                eprintln!(
                    "gateway bench: {} sessions, gateway RSS {} KiB",
                    held.len(),
                    rss
                );

                // 3: cookie logins of parked sessions.
                let cut = held.len().saturating_sub(resumes);
                let parked: Vec<Held> = held.split_off(cut);
                let cookies: Vec<String> = parked.iter().map(|h| h.cookie.clone()).collect();
                drop(parked);
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (back, t3) = open(
                    &target,
                    0..cookies.len(),
                    RESUME_CONCURRENCY,
                    Some(&cookies),
                    &mut errors,
                )
                .await;
                let resumed_now = back.iter().flatten().count();
                held.extend(back.into_iter().flatten());

                // 4: the gateway killed and started again; every session resumes.
                let back;
                (back, report_restart) = restart(&mut gw, held, &mut errors, &target, || {
                    world.start_gateway_pool(&opts.gateway, POOL, "", false, "")
                })
                .await?;
                report_restart.restored = restored(&world.log());
                eprintln!(
                    "gateway bench: {} of {} sessions back {:.1} s after the kill",
                    report_restart.resumed, report_restart.sessions, report_restart.all_back_secs
                );
                let sessions = back.len();
                drop(back);

                // 5: a gateway of a cluster: its sessions in Redis.
                gw.kill();
                gw = tokio::task::block_in_place(|| {
                    world.start_gateway_pool(&opts.gateway, POOL, &cluster, false, "")
                })
                .context("starting the cluster's gateway")?;
                let (made, _) =
                    open(&target, 0..sessions, LOGIN_CONCURRENCY, None, &mut errors).await;
                let back;
                (back, cluster_restart) = restart(
                    &mut gw,
                    made.into_iter().flatten().collect(),
                    &mut errors,
                    &target,
                    || world.start_gateway_pool(&opts.gateway, POOL, &cluster, false, ""),
                )
                .await?;
                eprintln!(
                    "gateway bench (Redis): {} of {} sessions back {:.1} s after the kill",
                    cluster_restart.resumed, cluster_restart.sessions, cluster_restart.all_back_secs
                );
                drop(back);

                // 6: ESP from many sessions at once.
                gw.kill();
                gw = tokio::task::block_in_place(|| {
                    world.start_gateway_pool(&opts.gateway, POOL, "", true, "")
                })
                .context("starting the gateway with ESP")?;
                world.gw.sh("ip route replace blackhole 172.20.0.0/24")?;
                let gate = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
                let mut logins = tokio::task::JoinSet::new();
                for i in 0..ESP_SESSIONS {
                    let (target, gate) = (target.clone(), gate.clone());
                    logins.spawn(async move {
                        let _slot = gate.acquire_owned().await;
                        target.esp_session(source(i), USER, PASSWORD, 4500).await
                    });
                }
                let mut senders = Vec::new();
                while let Some(joined) = logins.join_next().await {
                    match joined {
                        Ok(Ok(s)) => senders.push(s),
                        Ok(Err(e)) => *errors.entry(e).or_insert(0) += 1,
                        Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
                    }
                }
                let sessions = senders.len();
                let (cpu0, rx0) = (crate::probe::cpu_seconds(&[gw.id()]), tun_rx_bytes(&world)?);
                let started = Instant::now();
                let until = started + esp_time;
                let to = std::net::SocketAddrV4::new(Ipv4Addr::new(172, 20, 0, 9), 9);
                let mut sending = tokio::task::JoinSet::new();
                for mut s in senders {
                    sending.spawn(async move { s.send_until(to, ESP_PACKET, until).await });
                }
                let mut sent = 0;
                while let Some(joined) = sending.join_next().await {
                    match joined {
                        Ok(Ok(n)) => sent += n,
                        Ok(Err(e)) => *errors.entry(e).or_insert(0) += 1,
                        Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
                    }
                }
                let seconds = started.elapsed().as_secs_f64();
                let (cpu1, rx1) = (crate::probe::cpu_seconds(&[gw.id()]), tun_rx_bytes(&world)?);
                let forwarded = rx1.saturating_sub(rx0);
                esp = EspLoad {
                    sessions,
                    seconds,
                    sent_bytes: sent,
                    forwarded_bytes: forwarded,
                    forwarded_gbit_per_sec: forwarded as f64 * 8.0 / seconds / 1e9,
                    gateway_cpu_secs: cpu1 - cpu0,
                    gateway_cpu_secs_per_gb: (cpu1 - cpu0) / (forwarded as f64 / 1e9).max(1e-9),
                };
                eprintln!(
                    "gateway bench (ESP): {:.2} Gbit/s forwarded from {sessions} sessions, {:.1} CPU s per GB",
                    esp.forwarded_gbit_per_sec, esp.gateway_cpu_secs_per_gb
                );
                Ok((made_first, t1, resumed_now, t3))
            })
        })
        .context("entering the load generator's namespace")??;
    gw.stop();
    drop(redis);
    Ok(Report {
        revision: revision.to_string(),
        gateway: opts.gateway.display().to_string(),
        password_logins: logins,
        password_logins_per_sec: logins as f64 / login_time.as_secs_f64(),
        cookie_logins,
        cookie_logins_per_sec: cookie_logins as f64 / cookie_time.as_secs_f64(),
        rss_kib_before: rss_before,
        memory,
        restart: report_restart,
        cluster_restart,
        esp,
        errors,
    })
}

/// Kills the gateway `gw` holding the sessions `held`, starts it again with `start` (in
/// `gw`), and resumes every session with its cookie: the sessions back, and how the
/// restart went.
async fn restart(
    gw: &mut Proc,
    held: Vec<Held>,
    errors: &mut BTreeMap<String, usize>,
    target: &Target,
    start: impl FnOnce() -> std::io::Result<Proc>,
) -> Result<(Vec<Held>, Restart)> {
    let mut report = Restart::default();
    let before: Vec<(String, Option<Ipv4Addr>)> =
        held.iter().map(|h| (h.cookie.clone(), h.ipv4)).collect();
    let killed = Instant::now();
    gw.kill();
    drop(held);
    *gw = tokio::task::block_in_place(start).context("starting the gateway again")?;
    report.start_secs = killed.elapsed().as_secs_f64();
    let cookies: Vec<String> = before.iter().map(|(c, _)| c.clone()).collect();
    let (back, _) = open(
        target,
        0..cookies.len(),
        RESUME_CONCURRENCY,
        Some(&cookies),
        errors,
    )
    .await;
    report.all_back_secs = killed.elapsed().as_secs_f64();
    report.sessions = before.len();
    report.resumed = back.iter().flatten().filter(|h| h.resumed).count();
    report.same_address = back
        .iter()
        .zip(&before)
        .filter(|(h, (_, addr))| h.as_ref().is_some_and(|h| h.ipv4 == *addr))
        .count();
    Ok((back.into_iter().flatten().collect(), report))
}

/// The `restored=N` of the gateway's start line.
fn restored(log: &str) -> Option<usize> {
    log.lines()
        .find(|l| l.contains("sessions resumable from the session store"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("restored="))?
        .parse()
        .ok()
}

pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "## The gateway at scale\n\nGateway `{}` (revision {}), TLS sessions of one user from \
         200 source addresses, made by the project's load generator in one process.\n\n\
         | What | Figure |\n|---|---|\n",
        r.gateway, r.revision
    );
    s += &format!(
        "| password logins | {} at {:.1}/s ({LOGIN_CONCURRENCY} at once) |\n",
        r.password_logins, r.password_logins_per_sec
    );
    s += &format!(
        "| cookie logins (resumes) | {} at {:.1}/s ({RESUME_CONCURRENCY} at once) |\n",
        r.cookie_logins, r.cookie_logins_per_sec
    );
    s += &format!(
        "| gateway memory with {WARM_UP} sessions (the baseline) | {:.1} MiB |\n",
        r.rss_kib_before as f64 / 1024.0
    );
    for m in &r.memory {
        s += &format!(
            "| {} idle sessions | {:.1} MiB, {:.1} KiB per session |\n",
            m.sessions,
            m.rss_kib as f64 / 1024.0,
            m.kib_per_session
        );
    }
    let rs = &r.restart;
    s += &format!(
        "| restart (SIGKILL, embedded store) | {} sessions; {} restored; {} resumed, {} on \
         their address; running {:.1} s and all back {:.1} s after the kill |\n",
        rs.sessions,
        rs.restored.map_or("?".into(), |n| n.to_string()),
        rs.resumed,
        rs.same_address,
        rs.start_secs,
        rs.all_back_secs
    );
    let rs = &r.cluster_restart;
    s += &format!(
        "| restart (SIGKILL, Redis store) | {} sessions; {} resumed, {} on their address; \
         running {:.1} s and all back {:.1} s after the kill |\n",
        rs.sessions, rs.resumed, rs.same_address, rs.start_secs, rs.all_back_secs
    );
    let e = &r.esp;
    s += &format!(
        "| ESP, {} sessions sending {ESP_PACKET}-byte packets at once for {:.1} s | {:.2} Gbit/s \
         forwarded ({:.2} GB of {:.2} GB sent); gateway CPU {:.1} s, {:.2} s per GB |\n",
        e.sessions,
        e.seconds,
        e.forwarded_gbit_per_sec,
        e.forwarded_bytes as f64 / 1e9,
        e.sent_bytes as f64 / 1e9,
        e.gateway_cpu_secs,
        e.gateway_cpu_secs_per_gb
    );
    if !r.errors.is_empty() {
        s += "\nErrors (count: first message):\n\n";
        for (e, n) in &r.errors {
            s += &format!("- {n}: {e}\n");
        }
    }
    s
}

/// The chart: the gateway's memory per idle session at each size, against the target.
pub fn draw(r: &Report, dir: &std::path::Path) -> Result<String> {
    let mut groups: Vec<(String, Vec<crate::chart::Bar>)> = r
        .memory
        .iter()
        .map(|m| {
            let kib = m.kib_per_session;
            (
                format!("{} sessions", m.sessions),
                vec![Some((kib, kib, kib))],
            )
        })
        .collect();
    groups.push(("target".to_string(), vec![Some((32.0, 32.0, 32.0))]));
    crate::chart::draw(
        &crate::chart::Chart {
            title: "Gateway memory per idle session",
            unit: "KiB",
            series: &["resident memory growth / sessions"],
            groups,
            log: false,
        },
        &dir.join("gateway.png"),
    )?;
    Ok("gateway.png".to_string())
}
