//! Idle round-trip time of our ESP systems against boringtun's, measured interleaved.
//!
//! The main comparison measures one system after another, minutes apart; on a shared VM the
//! idle RTT of the same build moves by ±10 % between such blocks (steal time, the host's
//! other work, where the scheduler happens to put the threads), which is as large as the
//! differences the "no worse than boringtun" target asks about. Here every compared system
//! is up at once, each in a world of its own (same topology, its own namespaces), and
//! rounds of pings take turns: round 1 of each system, then round 2 of each, and so on. A
//! drift then hits every system alike; each round gives one ratio per system against the
//! baseline's round, and the result is the median of those ratios (with its quartiles).
//!
//! ```text
//!  world A: ours-esp      ping×N ─┐        ┌─ ping×N ─┐
//!  world B: ours-esp-gcm  ping×N  ├ round 1├─ ping×N  ├ round 2 ...   ratio_i = A_i / C_i
//!  world C: boringtun     ping×N ─┘        └─ ping×N ─┘
//! ```
//!
//! Then the same rounds once more with every thread of every tunnel process, and ping, on
//! one CPU (the last the harness may use). On the VMs this runs on, the scheduler already
//! puts each wake-up of an idle ping's path on the waker's CPU, so a round trip is one CPU
//! working through ping, client, gateway, client, ping; pinned, where the threads happen to
//! sit no longer moves the figures, and what is left is the work each tunnel does per round
//! trip and the order the scheduler runs it in (see `docs/fastpath.md`).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    probe,
    stats::median,
    systems::{self, Ctx, System},
    tunnels::{self, Options},
    world::World,
};

/// The systems compared, and the baseline they are compared with.
pub const OURS: [&str; 2] = ["ours-esp", "ours-esp-gcm"];
pub const BASELINE: &str = "boringtun";

/// One system's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    /// Median of the rounds' median RTTs, ms.
    pub median_ms: f64,
    /// Each round's median RTT, ms, in round order.
    pub rounds_ms: Vec<f64>,
    /// Median, first and third quartile of the per-round ratios to the baseline.
    pub ratio: f64,
    pub ratio_q1: f64,
    pub ratio_q3: f64,
}

/// The comparison, or why it could not be made.
#[derive(Clone, Debug, Serialize)]
pub struct IdleAb {
    pub rounds: usize,
    pub pings_per_round: u32,
    pub baseline: String,
    /// Ours first, the baseline last (its ratios are 1).
    pub rows: Vec<Row>,
    pub error: Option<String>,
    /// The same rounds on one CPU; None when the free rounds failed or the harness may use
    /// one CPU only (then the free rounds were on one CPU already).
    pub one_cpu: Option<OneCpu>,
}

/// The row of system `name` among `rows`.
pub fn row_of<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

/// The rounds with every tunnel process and ping on CPU `cpu`.
#[derive(Clone, Debug, Serialize)]
pub struct OneCpu {
    pub cpu: usize,
    /// As [`IdleAb::rows`].
    pub rows: Vec<Row>,
    pub error: Option<String>,
}

/// Rounds and pings per round for these options: about as many pings per system as the
/// main comparison's idle test, in more and shorter rounds.
fn shape(opts: &Options) -> (usize, u32) {
    if opts.quick { (4, 50) } else { (12, 100) }
}

/// Compares `names` (ours) with [`BASELINE`]. Never fails: what went wrong is in `error`.
pub fn run(ctx: &Ctx, names: &[&str], opts: &Options) -> IdleAb {
    let (rounds, pings) = shape(opts);
    let mut ab = IdleAb {
        rounds,
        pings_per_round: pings,
        baseline: BASELINE.into(),
        rows: Vec::new(),
        error: None,
        one_cpu: None,
    };
    let order: Vec<&str> = names.iter().copied().chain([BASELINE]).collect();
    let mut up: Vec<(World, Box<dyn System>)> = Vec::new();
    let free = start(ctx, &order, opts, &mut up)
        .and_then(|()| take_turns(&up, &order, rounds, pings, None));
    match free {
        Ok(rows) => {
            ab.rows = rows;
            let cpus = probe::allowed_cpus();
            if let (true, Some(&last)) = (cpus.len() > 1, cpus.last()) {
                ab.one_cpu = Some(on_one_cpu(&up, &order, rounds, pings, last));
            }
        }
        Err(e) => ab.error = Some(format!("{e:#}")),
    }
    // Clients and gateways go before their namespaces.
    for (w, mut sys) in up.drain(..) {
        sys.teardown(&w);
        drop(sys);
        drop(w);
    }
    ab
}

/// Starts each system of `order` in a world of its own, logged in, into `up`.
fn start(
    ctx: &Ctx,
    order: &[&str],
    opts: &Options,
    up: &mut Vec<(World, Box<dyn System>)>,
) -> Result<()> {
    let timeout = Duration::from_secs(opts.connect_timeout_secs);
    for (i, name) in order.iter().enumerate() {
        let mut sys = systems::all()
            .into_iter()
            .find(|s| s.name() == *name)
            .with_context(|| format!("no system named {name}"))?;
        let w = World::build_tagged(&format!("i{i}"))
            .with_context(|| format!("building a world for {name}"))?;
        eprintln!("== idle RTT, interleaved: starting {name}");
        sys.prepare(ctx)
            .with_context(|| format!("{name}: prepare"))?;
        // Pushed before starting, so whatever started is torn down on failure.
        up.push((w, sys));
        let (w, sys) = up.last_mut().context("just pushed")?;
        sys.start_gateway(w)
            .with_context(|| format!("{name}: gateway start"))?;
        tunnels::login(sys.as_mut(), w, timeout).with_context(|| format!("{name}: login"))?;
        sys.transport(w)
            .with_context(|| format!("{name}: transport"))?;
    }
    Ok(())
}

/// The rounds on CPU `cpu`: every thread of the systems' processes is put there first and
/// back on every CPU after. Never fails: what went wrong is in `error`.
fn on_one_cpu(
    up: &[(World, Box<dyn System>)],
    order: &[&str],
    rounds: usize,
    pings: u32,
    cpu: usize,
) -> OneCpu {
    let pids: Vec<u32> = up
        .iter()
        .flat_map(|(_, s)| s.client_pids().into_iter().chain(s.gateway_pids()))
        .collect();
    let result = probe::pin_processes(&pids, Some(cpu))
        .and_then(|()| take_turns(up, order, rounds, pings, Some(cpu)));
    let restored = probe::pin_processes(&pids, None);
    let mut one = OneCpu {
        cpu,
        rows: Vec::new(),
        error: None,
    };
    match result.and_then(|rows| restored.map(|()| rows)) {
        Ok(rows) => one.rows = rows,
        Err(e) => one.error = Some(format!("{e:#}")),
    }
    one
}

/// `rounds` rounds of `pings` pings in each world in turn (ping on `cpu` when given); a
/// row per system of `order`, the baseline's last.
fn take_turns(
    up: &[(World, Box<dyn System>)],
    order: &[&str],
    rounds: usize,
    pings: u32,
    cpu: Option<usize>,
) -> Result<Vec<Row>> {
    let how = cpu.map_or("interleaved".to_string(), |c| format!("on CPU {c}"));
    let mut per_system: Vec<Vec<f64>> = vec![Vec::new(); order.len()];
    for round in 1..=rounds {
        tunnels::check_interrupted()?;
        eprint!("== idle RTT, {how}: round {round}/{rounds}:");
        for (i, (w, _)) in up.iter().enumerate() {
            let (m, _, _) = tunnels::latency(w, pings, cpu)
                .with_context(|| format!("{}: round {round}", order[i]))?;
            eprint!(" {} {m:.3}", order[i]);
            per_system[i].push(m);
        }
        eprintln!(" ms");
    }
    let base = per_system.last().cloned().unwrap_or_default();
    if base.iter().any(|b| *b <= 0.0) {
        bail!("the baseline's round median was 0 ms");
    }
    Ok(order
        .iter()
        .zip(per_system)
        .map(|(name, rounds_ms)| {
            let ratios: Vec<f64> = rounds_ms.iter().zip(&base).map(|(o, b)| o / b).collect();
            let (ratio, ratio_q1, ratio_q3) = quartiles(&ratios);
            Row {
                name: name.to_string(),
                median_ms: median(&rounds_ms),
                rounds_ms,
                ratio,
                ratio_q1,
                ratio_q3,
            }
        })
        .collect())
}

/// Median, first and third quartile (nearest rank).
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (median(v), at(0.25), at(0.75))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_of_rounds() {
        let (m, q1, q3) = quartiles(&[1.0, 0.9, 1.1, 0.8, 1.2]);
        assert!((m - 1.0).abs() < 1e-12);
        assert!((q1 - 0.9).abs() < 1e-12);
        assert!((q3 - 1.1).abs() < 1e-12);
        assert!(quartiles(&[]).0.is_nan());
    }
}
