//! `cargo xtask bench attacks`: what each hostile-peer attack (`testbed::hostile`) costs the
//! gateway, and what it does to a real client's login, in one run.
//!
//! For each attack, in the namespace world of `testbed::attack_world` (gateway, honest
//! client, attacker with 200 addresses), with a fresh gateway each time so that limiter
//! windows and memory peaks do not carry over:
//!
//! 1. start the gateway (its default limits: the config has no `[limits]`), then time
//!    `LOGINS` openconnect `--authenticate` logins with no attack;
//! 2. run the attack from the attacker's namespace for the attack time, while a gauge reads
//!    the gateway every 50 ms (connections held on its TLS port, CPU, resident memory, log
//!    lines) and the client times up to `LOGINS` more logins, one after another in the
//!    attack's second half;
//! 3. stop the gateway.
//!
//! Login times are medians; a login that failed or took longer than `LOGIN_TIMEOUT` counts
//! as failed and is left out of the median.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use tunnel_user::testbed::{
    attack_world::{AttackWorld, sources},
    gauge::{Gauge, Watch},
    hostile::{self, Attack, Params, Tally, Target},
};

/// Logins timed with no attack and during each attack.
const LOGINS: usize = 5;
/// A login slower than this counts as failed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the gauge reads the gateway.
const SAMPLE: Duration = Duration::from_millis(50);

pub struct Options {
    pub quick: bool,
    /// The gateway binary.
    pub gateway: PathBuf,
    /// The gateway's descriptor limit, if it is to be lowered (or raised) from ours.
    pub nofile: Option<u64>,
    /// Only these attacks (by name); all when empty.
    pub only: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub revision: String,
    pub gateway: String,
    pub attack_secs: f64,
    pub nofile: Option<u64>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub attack: String,
    pub count: usize,
    pub rate: f64,
    pub sources: usize,
    /// What the attacker saw.
    pub tally: Tally,
    /// What the gateway spent.
    pub gateway: Watch,
    /// Login times (s) with no attack, and during it (None: failed or timed out).
    pub logins_before: Vec<Option<f64>>,
    pub logins_during: Vec<Option<f64>>,
    /// Why logins failed, the first of each reason.
    pub login_errors: Vec<String>,
    /// The gateway stopped during the attack, or the attack could not run.
    pub error: Option<String>,
}

/// How each attack is run: connections at once, new ones a second, sources.
fn params(attack: &Attack, duration: Duration) -> Params {
    let (count, rate, n) = match attack {
        // More than the gateway's global cap of connections not logged in (1024), from
        // many sources: the global cap is what holds.
        Attack::HalfOpen => (1500, 2000.0, 200),
        // 20 sources: the per-source cap (32) holds them to 640.
        Attack::TlsPartial => (1500, 2000.0, 20),
        Attack::TlsSilent => (1000, 300.0, 200),
        Attack::BigFrame { .. } => (100, 50.0, 200),
        Attack::Garbage => (200, 200.0, 200),
        Attack::StormOneSource { .. } => (32, 100.0, 1),
        Attack::StormOneAccount { .. } | Attack::StormManyAccounts => (64, 100.0, 200),
        Attack::ResumeAbort { .. } => (1, 20.0, 1),
    };
    Params {
        count,
        rate,
        duration,
        sources: sources(n),
    }
}

pub fn run(opts: &Options, revision: &str) -> Result<Report> {
    if !AttackWorld::has_openconnect() {
        bail!("openconnect is not installed (cargo xtask setup installs it)");
    }
    if !opts.gateway.exists() {
        bail!("{} is missing", opts.gateway.display());
    }
    let attack_time = Duration::from_secs(if opts.quick { 3 } else { 10 });
    let attacks: Vec<Attack> = Attack::all(
        tunnel_user::testbed::attack_world::USER,
        tunnel_user::testbed::attack_world::PASSWORD,
    )
    .into_iter()
    .filter(|a| opts.only.is_empty() || opts.only.iter().any(|n| n == a.name()))
    .collect();
    if attacks.is_empty() {
        bail!("no attack named {:?}", opts.only);
    }
    raise_nofile();
    let world = AttackWorld::build("b").context("building the attack world")?;
    let mut rows = Vec::new();
    for attack in &attacks {
        crate::tunnels::check_interrupted()?;
        eprintln!("== {attack}");
        let row =
            one(&world, opts, attack, attack_time).with_context(|| format!("attack {attack}"))?;
        eprintln!(
            "   gateway: {} connections at most, {:.2} s CPU, peak RSS {:.1} MiB, {} log lines; \
             attacker: {}",
            row.gateway.peak_connections,
            row.gateway.cpu_secs,
            mib(row.gateway.peak_rss_kib),
            row.gateway.log_lines,
            row.tally.summary()
        );
        rows.push(row);
    }
    Ok(Report {
        revision: revision.to_string(),
        gateway: opts.gateway.display().to_string(),
        attack_secs: attack_time.as_secs_f64(),
        nofile: opts.nofile,
        rows,
    })
}

fn one(world: &AttackWorld, opts: &Options, attack: &Attack, duration: Duration) -> Result<Row> {
    let mut gw = world
        .start_gateway(&opts.gateway, "")
        .context("starting the gateway")?;
    let pid = gw.id();
    if let Some(n) = opts.nofile {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")])
            .output()
            .context("prlimit")?;
        if !out.status.success() {
            bail!("prlimit: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let mut errors = Vec::new();
    let login = |errors: &mut Vec<String>| match world.openconnect_login(LOGIN_TIMEOUT) {
        Ok(t) => Some(t.as_secs_f64()),
        Err(e) => {
            let e = e.to_string();
            if !errors.contains(&e) {
                errors.push(e);
            }
            None
        }
    };
    let before: Vec<Option<f64>> = (0..LOGINS).map(|_| login(&mut errors)).collect();

    let params = params(attack, duration);
    let target = Target {
        addr: world.target(),
        pin: Some(world.pin),
    };
    let gauge = Gauge::start(pid, world.target().port(), &world.log_path(), SAMPLE, true)
        .context("watching the gateway")?;
    let started = Instant::now();
    let (tally, during) = std::thread::scope(|s| {
        let attacker = s.spawn(|| {
            world
                .attacker
                .enter(|| hostile::run(attack, &target, &params))
        });
        // Logins spread over the attack's second half, when it has built up.
        let mut during = Vec::new();
        for i in 0..LOGINS {
            let at = duration.mul_f64(0.4 + 0.55 * i as f64 / LOGINS as f64);
            std::thread::sleep(at.saturating_sub(started.elapsed()));
            if started.elapsed() + Duration::from_millis(200) > duration {
                break;
            }
            during.push(login(&mut errors));
        }
        let tally = attacker
            .join()
            .map_err(|_| anyhow!("the attack panicked"))
            .and_then(|r| r.context("entering the attacker's namespace"))
            .and_then(|r| r.map_err(|e| anyhow!("{e}")));
        (tally, during)
    });
    let watch = gauge.stop();
    let tally = tally?;
    let error = gw.exited().map(|s| format!("the gateway exited ({s})"));
    drop(gw);
    Ok(Row {
        attack: attack.name().to_string(),
        count: params.count,
        rate: params.rate,
        sources: params.sources.len(),
        tally,
        gateway: watch,
        logins_before: before,
        logins_during: during,
        login_errors: errors,
        error,
    })
}

/// Our own descriptor limit up to the hard limit: the attacker holds thousands.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(v: &[Option<f64>]) -> Option<f64> {
    let mut ok: Vec<f64> = v.iter().flatten().copied().collect();
    ok.sort_by(f64::total_cmp);
    ok.get(ok.len() / 2).copied()
}

fn logins(v: &[Option<f64>]) -> String {
    let ok = v.iter().flatten().count();
    match median(v) {
        Some(m) => format!("{m:.3} ({ok}/{})", v.len()),
        None => format!("- (0/{})", v.len()),
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "## Attacks on the gateway\n\nGateway `{}` (revision {}), {:.0} s per attack, default \
         limits{}. Connections: TCP connections on :8443 the gateway held (peak); CPU: its user \
         + system seconds during the attack; RSS: the largest sampled / the kernel's high-water \
         mark; log: lines it wrote. Login: openconnect `--authenticate`, median seconds (ok/tried), \
         before the attack and during it.\n\n",
        r.gateway,
        r.revision,
        r.attack_secs,
        r.nofile
            .map_or(String::new(), |n| format!(", descriptor limit {n}"))
    );
    s.push_str(
        "| attack | conns at once / rate / sources | connections held | CPU s | RSS MiB | log lines | login before | login during | attacker saw |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in &r.rows {
        let g = &row.gateway;
        s.push_str(&format!(
            "| {} | {} / {:.0}/s / {} | {} | {:.2} | {:.1} / {:.1} | {} | {} | {} | {}{} |\n",
            row.attack,
            row.count,
            row.rate,
            row.sources,
            g.peak_connections,
            g.cpu_secs,
            mib(g.peak_rss_kib),
            mib(g.hwm_kib),
            g.log_lines,
            logins(&row.logins_before),
            logins(&row.logins_during),
            row.tally.summary(),
            row.error
                .as_ref()
                .map_or(String::new(), |e| format!("; **{e}**")),
        ));
    }
    let errors: Vec<String> = r
        .rows
        .iter()
        .flat_map(|row| {
            row.login_errors
                .iter()
                .map(move |e| format!("- {}: {e}", row.attack))
        })
        .collect();
    if !errors.is_empty() {
        s.push_str("\nFailed logins:\n\n");
        s.push_str(&errors.join("\n"));
        s.push('\n');
    }
    s
}

/// The gateway binary in `bin_dir`.
pub fn gateway_in(bin_dir: &Path) -> PathBuf {
    bin_dir.join("tunnel-gateway")
}
