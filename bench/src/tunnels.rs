//! The tunnel comparison: every system set up in one world, measured test by test, repeat
//! by repeat, then its login and reconnect times; results as plain data for the report.
//!
//! Two orders. One after another (the default): each system is set up once and measured
//! `repeats` times. Alternating ([`Options::alternate`], for comparing two trees): the
//! repeats become rounds, and in each round every system is set up, measured once per test
//! and torn down, in the list's order in odd rounds and in reverse in even ones, so that a
//! drift of the machine over the minutes of a run hits every system alike (its login and
//! reconnect are timed in the first round only).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    idle_ab::{self, IdleAb},
    parse, probe,
    probe::Iperf,
    stats::Summary,
    systems::{Ctx, System},
    world::{CLIENT_LAN, CORP, EXCLUDED, World},
};

/// Set by SIGINT/SIGTERM; checked between steps so everything is torn down in order.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub repeats: usize,
    pub quick: bool,
    /// Seconds of each iperf3 run.
    pub seconds: u32,
    /// ICMP echoes per latency run (10 ms apart).
    pub pings: u32,
    /// Longest wait for a login or a reconnect.
    pub connect_timeout_secs: u64,
    /// The repeats are rounds that take every system in turn (module docs).
    pub alternate: bool,
}

impl Options {
    pub fn new(repeats: usize, quick: bool) -> Options {
        Options {
            repeats,
            quick,
            seconds: if quick { 1 } else { 3 },
            pings: if quick { 50 } else { 200 },
            connect_timeout_secs: if quick { 20 } else { 40 },
            alternate: false,
        }
    }
}

/// One measurement kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Test {
    /// TCP client -> corp (up) or corp -> client (down), with this many streams.
    Tcp {
        streams: u32,
        down: bool,
    },
    /// UDP client -> corp as fast as the sender can, IP packets of this size.
    Udp {
        size: u32,
    },
    LatencyIdle,
    /// Latency while one TCP stream runs up.
    LatencyLoaded,
    /// One TCP stream to the excluded server (bypassing the tunnel).
    Excluded,
}

impl Test {
    pub fn id(&self) -> String {
        match self {
            Test::Tcp { streams, down } => {
                format!("tcp-{streams}-{}", if *down { "down" } else { "up" })
            }
            Test::Udp { size } => format!("udp-{size}"),
            Test::LatencyIdle => "latency-idle".into(),
            Test::LatencyLoaded => "latency-loaded".into(),
            Test::Excluded => "excluded-tcp-1-up".into(),
        }
    }

    pub fn unit(&self) -> &'static str {
        match self {
            Test::Tcp { .. } | Test::Excluded => "Gbit/s",
            Test::Udp { .. } => "kpps",
            Test::LatencyIdle | Test::LatencyLoaded => "ms",
        }
    }
}

/// The tests a system gets.
pub fn tests(splits: bool) -> Vec<Test> {
    let mut t = vec![
        Test::Tcp {
            streams: 1,
            down: false,
        },
        Test::Tcp {
            streams: 1,
            down: true,
        },
        Test::Tcp {
            streams: 4,
            down: false,
        },
        Test::Tcp {
            streams: 4,
            down: true,
        },
        Test::Udp { size: 64 },
        Test::Udp { size: 1400 },
        Test::LatencyIdle,
        Test::LatencyLoaded,
    ];
    if splits {
        t.push(Test::Excluded);
    }
    t
}

/// A test's results over the repeats.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TestResult {
    pub test: String,
    pub unit: &'static str,
    /// Gbit/s, kpps received, or median RTT in ms.
    pub value: Option<Summary>,
    pub samples: Vec<f64>,
    /// Each repeat's (or round's) figure in order; None where the run failed.
    pub runs: Vec<Option<f64>>,
    /// Runs that failed, with the reason.
    pub errors: Vec<String>,
    /// Latency: 99th percentile RTT, ms.
    pub p99_ms: Option<Summary>,
    /// Latency: replies missing / UDP: datagrams lost, as a fraction.
    pub loss: Option<Summary>,
    /// CPU seconds per GB of payload moved: the tunnel's client-side and gateway-side
    /// processes, and the whole machine (kernel and iperf3 included).
    pub cpu_client_s_per_gb: Option<Summary>,
    pub cpu_gateway_s_per_gb: Option<Summary>,
    pub cpu_machine_s_per_gb: Option<Summary>,
    /// UDP receive-buffer drops during the runs, summed, per namespace.
    pub drops_client: u64,
    pub drops_gateway: u64,
    pub drops_corp: u64,
    /// UDP datagrams (or GRO batches: the kernel counts what one receive hands over)
    /// delivered to sockets during the runs, per namespace; the drops are counted in the
    /// same units.
    pub delivered_client: u64,
    pub delivered_gateway: u64,
    pub delivered_corp: u64,
    pub tcp_retransmits: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub side: &'static str,
    pub process: String,
    pub pid: u32,
    pub peak_rss_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Measured,
    NotAvailable { reason: String },
    Failed { stage: String, reason: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct SystemResult {
    pub name: String,
    pub about: String,
    pub version: String,
    pub outcome: Outcome,
    pub transport: Option<String>,
    pub mtu: Option<u32>,
    pub tests: Vec<TestResult>,
    pub memory: Vec<Memory>,
    /// Seconds from the start of a login to the first TCP connection through.
    pub login_s: Option<Summary>,
    pub login_errors: Vec<String>,
    /// Seconds from a gateway restart (after SIGKILL) to the first TCP connection through.
    pub reconnect_s: Option<Summary>,
    pub reconnect_errors: Vec<String>,
}

impl SystemResult {
    pub fn test(&self, id: &str) -> Option<&TestResult> {
        self.tests.iter().find(|t| t.test == id)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: Options,
    pub kernel: String,
    pub cpus: usize,
    pub revision: String,
    pub started_unix: u64,
    pub duration_s: f64,
    pub systems: Vec<SystemResult>,
    /// The other tree's revision, when its systems ran beside ours (`crate::baseline`).
    pub baseline: Option<String>,
    /// Idle RTT of ours against boringtun's, interleaved (when the run measured both).
    pub idle_ab: Option<IdleAb>,
}

/// Progress lines on stderr: "[3/24] wireguard-go tcp-1-up run 2/3 ...".
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        eprint!("[{}/{}] {what} ... ", self.done, self.total);
    }
}

/// Runs every system `make` gives (it is called once per round when alternating, since a
/// system is set up anew each round); a system that fails is reported with its stage and
/// reason.
pub fn run(ctx: &Ctx, make: &dyn Fn() -> Vec<Box<dyn System>>, opts: &Options) -> Result<Report> {
    let start = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut world = World::build().context("building the namespace world")?;
    let mut progress = Progress {
        done: 0,
        total: make()
            .iter()
            .map(|s| tests(s.splits()).len() * opts.repeats)
            .sum(),
    };
    let results = if opts.alternate {
        alternating(ctx, make, &mut world, opts, &mut progress)?
    } else {
        let mut results = Vec::new();
        for mut sys in make() {
            check_interrupted()?;
            let tests = tests(sys.splits());
            let mut acc: Vec<Acc> = tests.iter().map(|_| Acc::default()).collect();
            let r = run_system(
                ctx,
                sys.as_mut(),
                &mut world,
                opts,
                &mut progress,
                &mut acc,
                true,
            );
            sys.teardown(&world);
            drop(sys);
            let mut r = r?;
            if matches!(r.outcome, Outcome::Measured) {
                r.tests = finish(&tests, acc);
            }
            print_outcome(&r);
            results.push(r);
        }
        results
    };
    // The idle-RTT target compared without the drift between the blocks above.
    let measured = |name: &str| {
        results
            .iter()
            .any(|r| r.name == name && matches!(r.outcome, Outcome::Measured))
    };
    let ours: Vec<&str> = idle_ab::OURS.into_iter().filter(|n| measured(n)).collect();
    let idle_ab = (measured(idle_ab::BASELINE) && !ours.is_empty()).then(|| {
        drop(world);
        idle_ab::run(ctx, &ours, opts)
    });
    Ok(Report {
        options: opts.clone(),
        kernel: crate::systems::kernel_release(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        revision: ctx.revision.clone(),
        started_unix,
        duration_s: start.elapsed().as_secs_f64(),
        systems: results,
        baseline: ctx.baseline.clone(),
        idle_ab,
    })
}

fn print_outcome(r: &SystemResult) {
    match &r.outcome {
        Outcome::Measured => eprintln!("== {}: measured", r.name),
        Outcome::NotAvailable { reason } => eprintln!("== {}: not available: {reason}", r.name),
        Outcome::Failed { stage, reason } => {
            eprintln!("== {}: failed at {stage}: {reason}", r.name)
        }
    }
}

fn finish(tests: &[Test], acc: Vec<Acc>) -> Vec<TestResult> {
    tests.iter().zip(acc).map(|(t, a)| a.finish(*t)).collect()
}

/// The rounds of an alternating run (module docs): one result per system of `make`'s list,
/// its tests over every round (a round the system failed in counts as a failed run of each
/// test), its peak RSS the largest of any round's.
fn alternating(
    ctx: &Ctx,
    make: &dyn Fn() -> Vec<Box<dyn System>>,
    world: &mut World,
    opts: &Options,
    progress: &mut Progress,
) -> Result<Vec<SystemResult>> {
    let once = Options {
        repeats: 1,
        ..opts.clone()
    };
    // Per system of the list: its tests, their accumulators, its first round's result.
    let mut per_system: Vec<(Vec<Test>, Vec<Acc>, Option<SystemResult>)> = Vec::new();
    for round in 1..=opts.repeats {
        let mut order: Vec<(usize, Box<dyn System>)> = make().into_iter().enumerate().collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for (i, mut sys) in order {
            check_interrupted()?;
            if per_system.len() <= i {
                per_system.resize_with(i + 1, || (Vec::new(), Vec::new(), None));
            }
            let (tests, acc, first) = &mut per_system[i];
            if tests.is_empty() {
                *tests = self::tests(sys.splits());
                *acc = tests.iter().map(|_| Acc::default()).collect();
            }
            let skip = tests.len();
            if let Some(SystemResult {
                outcome: Outcome::NotAvailable { .. },
                ..
            }) = first
            {
                progress.done += skip;
                continue;
            }
            eprintln!("== round {round}/{}", opts.repeats);
            let r = run_system(ctx, sys.as_mut(), world, &once, progress, acc, round == 1);
            sys.teardown(world);
            drop(sys);
            let r = r?;
            print_outcome(&r);
            if let Outcome::Failed { stage, reason } = &r.outcome {
                for a in acc.iter_mut() {
                    a.fail(format!("round {round}: failed at {stage}: {reason}"));
                }
            }
            match first {
                None => *first = Some(r),
                Some(f) => merge_round(f, r),
            }
        }
    }
    Ok(per_system
        .into_iter()
        .filter_map(|(tests, acc, first)| {
            let mut r = first?;
            if acc.iter().any(|a| !a.values.is_empty()) {
                r.outcome = Outcome::Measured;
                r.tests = finish(&tests, acc);
            }
            Some(r)
        })
        .collect())
}

/// Takes a later round's set-up figures into the first round's result: what the first
/// round could not learn, and the larger peak RSS of each process.
fn merge_round(first: &mut SystemResult, later: SystemResult) {
    if first.transport.is_none() {
        first.transport = later.transport;
        first.mtu = later.mtu;
    }
    for m in later.memory {
        match first
            .memory
            .iter_mut()
            .find(|f| f.side == m.side && f.process == m.process)
        {
            Some(f) if f.peak_rss_kib < m.peak_rss_kib => *f = m,
            Some(_) => {}
            None => first.memory.push(m),
        }
    }
}

/// Err only for an interruption; a system's own failure is in its result.
/// Measures into `acc` (one per test of [`tests`]); the result's `tests` are left empty
/// for the caller to [`finish`].
fn run_system(
    ctx: &Ctx,
    sys: &mut dyn System,
    w: &mut World,
    opts: &Options,
    progress: &mut Progress,
    acc: &mut [Acc],
    time_logins: bool,
) -> Result<SystemResult> {
    let name = sys.name().to_string();
    let tests = tests(sys.splits());
    let mut r = SystemResult {
        name: name.clone(),
        about: sys.about(),
        version: String::new(),
        outcome: Outcome::Measured,
        transport: None,
        mtu: None,
        tests: Vec::new(),
        memory: Vec::new(),
        login_s: None,
        login_errors: Vec::new(),
        reconnect_s: None,
        reconnect_errors: Vec::new(),
    };
    let skip = |progress: &mut Progress| progress.done += tests.len() * opts.repeats;
    eprintln!("== {name}: {}", r.about);
    match sys.prepare(ctx) {
        Ok(v) => r.version = v,
        Err(e) => {
            r.outcome = Outcome::NotAvailable {
                reason: format!("{e:#}"),
            };
            skip(progress);
            return Ok(r);
        }
    }
    let timeout = Duration::from_secs(opts.connect_timeout_secs);
    let fail = |r: &mut SystemResult, stage: &str, e: anyhow::Error| {
        r.outcome = Outcome::Failed {
            stage: stage.to_string(),
            reason: format!("{e:#}"),
        };
    };
    // Set up, and the first login.
    if let Err(e) = sys.start_gateway(w) {
        fail(&mut r, "gateway start", e);
        skip(progress);
        return Ok(r);
    }
    let mut logins = Vec::new();
    match login(sys, w, timeout) {
        Ok(t) => logins.push(t),
        Err(e) => {
            fail(&mut r, "login", e);
            skip(progress);
            return Ok(r);
        }
    }
    check_interrupted()?;
    match sys.transport(w) {
        Ok(t) => r.transport = Some(t),
        Err(e) => {
            fail(&mut r, "transport", e);
            skip(progress);
            return Ok(r);
        }
    }
    r.mtu = sys.device(w).and_then(|d| probe::mtu(&w.client, &d));
    eprintln!(
        "== {name}: up over {} (MTU {}), login {:.2} s",
        r.transport.as_deref().unwrap_or("?"),
        r.mtu.map(|m| m.to_string()).unwrap_or("?".into()),
        logins[0]
    );
    // Measurements, repeats interleaved so slow drifts spread over every test.
    for rep in 1..=opts.repeats {
        for (i, test) in tests.iter().enumerate() {
            check_interrupted()?;
            progress.step(&format!("{name} {} run {rep}/{}", test.id(), opts.repeats));
            match measure(sys, w, *test, opts) {
                Ok(m) => {
                    eprintln!("{:.3} {}", m.value, test.unit());
                    acc[i].add(m);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    eprintln!("failed: {msg}");
                    acc[i].fail(msg);
                    // A stuck iperf3 server would fail every later run.
                    let _ = w.restart_iperf();
                }
            }
        }
    }
    // Memory: every process of the tunnel, before restarts reset the peaks.
    for (side, roots) in [
        ("client", sys.client_pids()),
        ("gateway", sys.gateway_pids()),
    ] {
        for root in roots {
            for pid in probe::process_tree(root) {
                if let Ok(kib) = probe::peak_rss_kib(pid) {
                    r.memory.push(Memory {
                        side,
                        process: probe::comm(pid),
                        pid,
                        peak_rss_kib: kib,
                    });
                }
            }
        }
    }
    if sys.tunnelled() && time_logins {
        // More logins (the first was the set-up).
        for i in 1..opts.repeats {
            check_interrupted()?;
            eprintln!("== {name}: login {}/{}", i + 1, opts.repeats);
            sys.stop_client(w);
            match login(sys, w, timeout) {
                Ok(t) => logins.push(t),
                Err(e) => {
                    r.login_errors.push(format!("{e:#}"));
                    break;
                }
            }
        }
        // Reconnects: the gateway dies as in a crash and starts again.
        let mut reconnects = Vec::new();
        for i in 0..opts.repeats {
            check_interrupted()?;
            eprint!("== {name}: reconnect {}/{} ... ", i + 1, opts.repeats);
            match reconnect(sys, w, timeout) {
                Ok(t) => {
                    eprintln!("{t:.2} s");
                    reconnects.push(t);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    eprintln!("failed: {msg}");
                    r.reconnect_errors.push(msg);
                    break;
                }
            }
        }
        r.login_s = Some(Summary::of(&logins));
        r.reconnect_s = (!reconnects.is_empty()).then(|| Summary::of(&reconnects));
    }
    Ok(r)
}

/// Starts the client and waits for the first TCP connection through the tunnel.
pub(crate) fn login(sys: &mut dyn System, w: &World, timeout: Duration) -> Result<f64> {
    let began = sys.start_client(w)?;
    if !sys.tunnelled() {
        match w.corp_sees(Duration::from_secs(2)) {
            Some(a) if a == CLIENT_LAN => return Ok(began.elapsed().as_secs_f64()),
            other => bail!("corp saw {other:?}, not the client's LAN address"),
        }
    }
    if let Err(e) = w.wait_tunnelled(timeout, || sys.client_gone()) {
        bail!("{e:#}; client: {}", sys.client_state(w));
    }
    Ok(began.elapsed().as_secs_f64())
}

/// SIGKILLs the gateway, starts it again, and times the first connection through.
fn reconnect(sys: &mut dyn System, w: &World, timeout: Duration) -> Result<f64> {
    sys.kill_gateway(w).context("killing the gateway")?;
    let began = Instant::now();
    sys.start_gateway(w).context("restarting the gateway")?;
    if let Err(e) = w.wait_tunnelled(timeout, || sys.client_gone()) {
        bail!("{e:#}; client: {}", sys.client_state(w));
    }
    Ok(began.elapsed().as_secs_f64())
}

/// One run's figures.
struct Measured {
    value: f64,
    p99: Option<f64>,
    loss: Option<f64>,
    /// CPU s/GB: client processes, gateway processes, whole machine (None without payload
    /// or, for the first two, without tunnel processes).
    cpu: [Option<f64>; 3],
    /// UDP counters' growth per namespace: client, gateway, corp.
    udp: [probe::UdpCounters; 3],
    retransmits: u64,
}

#[derive(Default)]
struct Acc {
    values: Vec<f64>,
    runs: Vec<Option<f64>>,
    p99: Vec<f64>,
    loss: Vec<f64>,
    cpu: [Vec<f64>; 3],
    udp: [probe::UdpCounters; 3],
    retransmits: u64,
    errors: Vec<String>,
}

fn summary(v: &[f64]) -> Option<Summary> {
    (!v.is_empty()).then(|| Summary::of(v))
}

impl Acc {
    fn add(&mut self, m: Measured) {
        self.values.push(m.value);
        self.runs.push(Some(m.value));
        self.p99.extend(m.p99);
        self.loss.extend(m.loss);
        for (v, x) in self.cpu.iter_mut().zip(m.cpu) {
            v.extend(x);
        }
        for (d, x) in self.udp.iter_mut().zip(m.udp) {
            d.delivered += x.delivered;
            d.rcvbuf_drops += x.rcvbuf_drops;
        }
        self.retransmits += m.retransmits;
    }

    fn fail(&mut self, why: String) {
        self.runs.push(None);
        self.errors.push(why);
    }

    fn finish(self, test: Test) -> TestResult {
        TestResult {
            test: test.id(),
            unit: test.unit(),
            value: summary(&self.values),
            samples: self.values,
            runs: self.runs,
            errors: self.errors,
            p99_ms: summary(&self.p99),
            loss: summary(&self.loss),
            cpu_client_s_per_gb: summary(&self.cpu[0]),
            cpu_gateway_s_per_gb: summary(&self.cpu[1]),
            cpu_machine_s_per_gb: summary(&self.cpu[2]),
            drops_client: self.udp[0].rcvbuf_drops,
            drops_gateway: self.udp[1].rcvbuf_drops,
            drops_corp: self.udp[2].rcvbuf_drops,
            delivered_client: self.udp[0].delivered,
            delivered_gateway: self.udp[1].delivered,
            delivered_corp: self.udp[2].delivered,
            tcp_retransmits: self.retransmits,
        }
    }
}

/// CPU and drop counters at one moment.
struct Snapshot {
    client_cpu: f64,
    gateway_cpu: f64,
    machine: f64,
    udp: [probe::UdpCounters; 3],
}

fn snapshot(sys: &dyn System, w: &World) -> Result<Snapshot> {
    let tree =
        |roots: Vec<u32>| -> Vec<u32> { roots.into_iter().flat_map(probe::process_tree).collect() };
    Ok(Snapshot {
        client_cpu: probe::cpu_seconds(&tree(sys.client_pids())),
        gateway_cpu: probe::cpu_seconds(&tree(sys.gateway_pids())),
        machine: probe::machine_busy_seconds()?,
        udp: [
            probe::udp_counters(&w.client)?,
            probe::udp_counters(&w.gw)?,
            probe::udp_counters(&w.corp)?,
        ],
    })
}

fn measure(sys: &dyn System, w: &World, test: Test, opts: &Options) -> Result<Measured> {
    let before = snapshot(sys, w)?;
    let (value, bytes, p99, loss, retransmits) = match test {
        Test::Tcp { streams, down } => {
            let json = probe::iperf(
                &w.client,
                CORP,
                Iperf::Tcp {
                    streams,
                    reverse: down,
                },
                opts.seconds,
            )?;
            let t = parse::iperf_tcp(&json)?;
            (t.gbps, t.bytes, None, None, t.retransmits)
        }
        Test::Excluded => {
            let json = probe::iperf(
                &w.client,
                EXCLUDED,
                Iperf::Tcp {
                    streams: 1,
                    reverse: false,
                },
                opts.seconds,
            )?;
            let t = parse::iperf_tcp(&json)?;
            (t.gbps, t.bytes, None, None, t.retransmits)
        }
        Test::Udp { size } => {
            // IP packet of `size` bytes: 20 bytes of IPv4 and 8 of UDP header.
            let json = probe::iperf(
                &w.client,
                CORP,
                Iperf::Udp { payload: size - 28 },
                opts.seconds,
            )?;
            let u = parse::iperf_udp(&json)?;
            (
                u.received_pps() / 1e3,
                u.bytes_received,
                None,
                Some(u.loss()),
                0,
            )
        }
        Test::LatencyIdle => {
            let (median, p99, loss) = latency(w, opts.pings, None)?;
            (median, 0, Some(p99), Some(loss), 0)
        }
        Test::LatencyLoaded => {
            // The load runs a little longer than the pings on both sides.
            let load_secs = opts.pings.div_ceil(100) + 2;
            let client = &w.client;
            let (lat, load) = std::thread::scope(|s| {
                let load = s.spawn(|| {
                    probe::iperf(
                        client,
                        CORP,
                        Iperf::Tcp {
                            streams: 1,
                            reverse: false,
                        },
                        load_secs,
                    )
                });
                std::thread::sleep(Duration::from_millis(700));
                let lat = latency(w, opts.pings, None);
                (lat, load.join())
            });
            let load = load
                .map_err(|_| anyhow::anyhow!("load thread panicked"))?
                .context("the load")?;
            parse::iperf_tcp(&load).context("the load")?;
            let (median, p99, loss) = lat?;
            (median, 0, Some(p99), Some(loss), 0)
        }
    };
    let after = snapshot(sys, w)?;
    let gb = bytes as f64 / 1e9;
    let per_gb = |d: f64, has_processes: bool| (bytes > 0 && has_processes).then(|| d / gb);
    let cpu = [
        per_gb(after.client_cpu - before.client_cpu, sys.tunnelled()),
        per_gb(after.gateway_cpu - before.gateway_cpu, sys.tunnelled()),
        per_gb(after.machine - before.machine, true),
    ];
    let mut udp = [probe::UdpCounters::default(); 3];
    for (i, d) in udp.iter_mut().enumerate() {
        d.delivered = after.udp[i]
            .delivered
            .saturating_sub(before.udp[i].delivered);
        d.rcvbuf_drops = after.udp[i]
            .rcvbuf_drops
            .saturating_sub(before.udp[i].rcvbuf_drops);
    }
    Ok(Measured {
        value,
        p99,
        loss,
        cpu,
        udp,
        retransmits,
    })
}

/// (median ms, p99 ms, loss fraction) of `count` pings to corp, ping on `cpu` when given.
pub(crate) fn latency(w: &World, count: u32, cpu: Option<usize>) -> Result<(f64, f64, f64)> {
    let out = probe::ping(&w.client, CORP, count, cpu)?;
    let (mut rtts, sent) = parse::ping(&out)?;
    if rtts.is_empty() {
        bail!("no ping reply out of {sent}");
    }
    rtts.sort_by(f64::total_cmp);
    let p99 = rtts[((rtts.len() as f64 * 0.99).ceil() as usize).clamp(1, rtts.len()) - 1];
    let loss = 1.0 - rtts.len() as f64 / sent.max(1) as f64;
    Ok((crate::stats::median(&rtts), p99, loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(program: &str) -> bool {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The whole pipeline on the bare veth with 1 s runs: world, iperf3, ping, counters,
    /// report data, teardown (about 15 s). Needs root, iperf3 and ping; skipped otherwise.
    #[test]
    fn bare_smoke() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !have("iperf3") || !have("ping") {
            eprintln!("skipped: needs root, iperf3 and ping");
            return;
        }
        let ctx = Ctx {
            bin_dir: std::path::PathBuf::new(),
            tools: std::path::PathBuf::new(),
            revision: "test".into(),
            baseline: None,
        };
        let opts = Options {
            repeats: 1,
            quick: true,
            seconds: 1,
            pings: 10,
            connect_timeout_secs: 5,
            alternate: false,
        };
        let bare = || vec![Box::new(crate::systems::Bare) as Box<dyn System>];
        let report = run(&ctx, &bare, &opts).unwrap();
        let bare = &report.systems[0];
        assert!(matches!(bare.outcome, Outcome::Measured), "{bare:?}");
        assert_eq!(bare.tests.len(), tests(true).len());
        for t in &bare.tests {
            assert!(t.errors.is_empty(), "{t:?}");
            assert!(t.value.is_some_and(|v| v.median > 0.0), "{t:?}");
        }
        let tcp = bare.test("tcp-1-up").unwrap();
        assert!(tcp.cpu_machine_s_per_gb.is_some() && tcp.cpu_client_s_per_gb.is_none());
        // Nothing is left behind.
        let list = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let prefix = format!("bn{}", std::process::id());
        assert!(
            !String::from_utf8_lossy(&list.stdout)
                .lines()
                .any(|l| l.starts_with(&prefix)),
            "namespaces left behind"
        );
    }
}
