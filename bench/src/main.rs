//! `cargo xtask bench`: measurements of tunnel against baselines measured in the same run.
//!
//! ```text
//! cargo xtask bench                      # everything: classifier + every tunnel system
//! cargo xtask bench classifier           # the eBPF classifier alone
//! cargo xtask bench crypto               # the single-core crypto ceiling of our ESP suites
//! cargo xtask bench tunnels [--systems ours-esp,wireguard-go]
//!     --repeats N (default 3, 3 s runs)   --quick (1 repeat, 1 s runs)
//!     --baseline DIR   another tree's release build beside ours (`ours-esp@base`, ...),
//!                      alternating in rounds (`--repeats`, default 5 then)
//! cargo xtask bench gateway              # sessions one gateway holds: logins/s, memory per
//!                                        # idle session at 1,000 and 10,000, a restart's resumes
//!                                        # (--quick: 300 and 2,000; not part of the full run)
//! cargo xtask bench attacks [--only half-open,garbage] [--gateway-nofile N] [--tag T]
//!     what each hostile-peer attack costs the gateway, and a real login's time during it
//!     (10 s per attack, 3 s with --quick; not part of the full run)
//! ```
//!
//! Output in `target/bench/`: `report.md` + `report.json` (full run), `tunnels.*`,
//! `classifier.*`, `crypto.*`, `gateway.*` (with `gateway.png`) or `attacks[-T].*` (one
//! part), and `throughput.png`,
//! `latency.png`, `cpu.png`.
//!
//! # The tunnel comparison
//!
//! Systems, in one run: `bare` (routed veth, no tunnel: the ceiling); `ours-esp`
//! (AES-128-CBC + HMAC-SHA1, the suite openconnect gets too), `ours-esp-gcm` (AES-256-GCM)
//! and `ours-tls` (tunneld + tunnel-gateway from this tree's release build); `oc-pulse-esp` and
//! `oc-pulse-tls` (openconnect `--protocol=pulse` against our gateway); `ocserv-dtls` and
//! `ocserv-tls` (openconnect `--protocol=anyconnect` against ocserv); `wireguard-go`
//! (Debian), `boringtun` (boringtun-cli from crates.io) and `gotatun` (Mullvad's GotaTun,
//! gotatun-cli from crates.io, a boringtun descendant). The harness installs what is
//! missing (apt-get, cargo install into `target/bench/tools`); a system that cannot be
//! installed or set up is reported with the reason. `systems::all` lists them; another ESP
//! suite of ours is one more line there.
//!
//! Topology (namespaces `bn<pid>c/g/x/e`, built once, see `world.rs`):
//!
//! ```text
//!  ┌─── client ───────────┐      ┌──────── gateway ───────────┐      ┌──── corp ─────────┐
//!  │ c0 192.168.70.2 ─────┼─veth─┼─ g0 192.168.70.1            │      │ 172.20.0.2         │
//!  │ 198.51.100.0/24      │      │   tunnel-gateway :8443/4500 │      │ iperf3 -s, whoami  │
//!  │   via 192.168.70.1   │      │   ocserv :8444, wg :51820   │      │ default via gw     │
//!  │ tunnel device        │      │ gx0 172.20.0.1 ─────────────┼─veth─┼─ x0                │
//!  │ (no route to corp    │      │ ge0 198.51.100.1 ──┐        │      └────────────────────┘
//!  │  but the tunnel's)   │      └────────────────────┼────────┘      ┌─── excluded ──────┐
//!  └──────────────────────┘                           └──────veth─────┼─ e0 198.51.100.10  │
//!                                                                     │ iperf3 -s          │
//!                                                                     └────────────────────┘
//! ```
//!
//! The client has no route to corp except through a tunnel (the bare system adds a plain
//! one), so every figure of a tunnel system was carried by that tunnel; and the harness
//! checks the transport (ESP, DTLS, TLS, WireGuard handshake) before measuring.
//!
//! Flow per system: prepare (install, version) -> start the gateway -> start the client and
//! time the login (to the first TCP connection that reaches corp and shows a tunnel address)
//! -> check the transport -> `repeats` rounds of every test (TCP 1 and 4 streams up and down,
//! UDP 64 and 1400-byte packets, RTT idle and under load, the excluded path for ours), each
//! run bracketed by CPU (/proc/PID/stat of the process trees, /proc/stat) and UDP-drop
//! (/proc/net/snmp per namespace) snapshots -> peak RSS of every tunnel process -> more
//! logins -> gateway SIGKILL + restart, timed to the first packet through -> teardown.
//! Results are median and spread (`stats.rs`); runs that fail are counted and listed.
//!
//! Two trees in one session (`--baseline DIR`, `baseline.rs`): each of our systems gets a
//! twin `NAME@base` running DIR's release binaries, and the repeats become alternating
//! rounds (`tunnels.rs`): every system is set up, measured once per test and torn down in
//! each round, in list order in odd rounds and reversed in even ones, so a pair is measured
//! minutes apart at most and a drift of the machine hits both alike. The report gives each
//! pair's rounds of TCP 1 up and idle RTT, the median of the per-round ratios and the peak
//! RSS of both trees' clients and gateways.
//!
//! After the systems, when the run measured boringtun and ours over ESP, their idle RTT is
//! measured once more interleaved (`idle_ab.rs`): all of them up at once, each in a world of
//! its own (`World::build_tagged`), taking turns in rounds of pings, so the drift between
//! the sequential blocks does not decide the "no worse than boringtun" comparison; then the
//! same rounds with every tunnel process and ping on one CPU, where thread placement no
//! longer moves the figures and the ratio is the work per round trip.
//!
//! The report opens with a summary table (the one the README shows), then a table per
//! question, and ends with the benchmark's targets judged on the run's own figures (ours
//! against the fastest of the issue's baselines: wireguard-go, boringtun and openconnect
//! through ocserv; idle RTT against boringtun, sequential, interleaved and on one CPU; the tunnel's UDP
//! receive drops), our client
//! against openconnect's Pulse client through our gateway (not a target), the single-core
//! crypto ceiling of each ESP suite (`crypto.rs`: our ESP code one packet at a time and in
//! trains) and the classifier micro-benchmark (`classifier.rs`).

mod attacks;
mod baseline;
mod chart;
mod classifier;
mod crypto;
mod gateway;
mod idle_ab;
mod parse;
mod probe;
mod report;
mod stats;
mod systems;
mod tunnels;
mod world;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tunnel benchmark harness")]
struct Cli {
    /// Repeats of every measurement (median and spread are reported); default 3, 1 with
    /// --quick, 5 with --baseline (the rounds the comparison takes).
    #[arg(long, global = true)]
    repeats: Option<usize>,
    /// Shorter runs, for a quick look.
    #[arg(long, global = true)]
    quick: bool,
    /// Where tunnel-gateway, tunneld and tunnel are (default: next to this program).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    what: Option<What>,
}

#[derive(Subcommand)]
enum What {
    /// ns/packet of the eBPF classifier and the excluded-path throughput ratio.
    Classifier,
    /// Gbit/s one core seals and opens with each of our ESP suites (no I/O).
    Crypto,
    /// What each hostile-peer attack costs the gateway (`--bin-dir` picks the gateway).
    Attacks {
        /// Comma-separated attack names (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Set the gateway's descriptor limit (prlimit) after it starts.
        #[arg(long)]
        gateway_nofile: Option<u64>,
        /// Output files are attacks-TAG.md and .json (default attacks.md, .json).
        #[arg(long)]
        tag: Option<String>,
    },
    /// How many sessions one gateway holds and what each costs: password and cookie
    /// logins per second, memory per idle session, a restart's resumes (`--bin-dir` picks
    /// the gateway).
    Gateway,
    /// The tunnel comparison (all systems, or those named).
    Tunnels {
        /// Comma-separated system names (see --list).
        #[arg(long, value_delimiter = ',')]
        systems: Vec<String>,
        /// List the systems and exit.
        #[arg(long)]
        list: bool,
        /// Another checkout (or a directory of its release binaries): each of our systems
        /// also runs with its binaries, as NAME@base, and the run alternates in rounds.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

/// The short revision of the checkout `dir` is in, `+changes` when its tracked files were
/// changed; None outside a checkout.
fn revision(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}+changes") } else { rev })
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let baseline = match &cli.what {
        Some(What::Tunnels {
            baseline: Some(dir),
            ..
        }) => Some(baseline::Baseline::locate(dir)?),
        _ => None,
    };
    let default_repeats = match (&baseline, cli.quick) {
        (Some(_), _) => 5,
        (None, true) => 1,
        (None, false) => 3,
    };
    let repeats = cli.repeats.unwrap_or(default_repeats).max(1);
    let dir = out_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let bin_dir = match cli.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("program directory")?
            .to_path_buf(),
    };
    let ctx = systems::Ctx {
        bin_dir,
        tools: dir.join("tools"),
        revision: revision(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .unwrap_or_else(|| "unknown".into()),
        baseline: baseline.as_ref().map(|b| b.revision.clone()),
    };
    tunnels::catch_signals();
    let copts = classifier::Options {
        repeats,
        quick: cli.quick,
    };
    match cli.what {
        Some(What::Classifier) => {
            let report = classifier::run(&copts)?;
            let md = classifier::markdown(&report);
            write(&dir, "classifier.md", &md)?;
            write(
                &dir,
                "classifier.json",
                &serde_json::to_string_pretty(&report)?,
            )?;
            println!("{md}");
            println!(
                "written: {}/classifier.md and classifier.json",
                dir.display()
            );
        }
        Some(What::Crypto) => {
            let report = crypto::run(&crypto::Options {
                repeats,
                quick: cli.quick,
            })?;
            let md = crypto::markdown(&report);
            write(&dir, "crypto.md", &md)?;
            write(&dir, "crypto.json", &serde_json::to_string_pretty(&report)?)?;
            println!("{md}");
            println!("written: {}/crypto.md and crypto.json", dir.display());
        }
        Some(What::Attacks {
            only,
            gateway_nofile,
            tag,
        }) => {
            let report = attacks::run(
                &attacks::Options {
                    quick: cli.quick,
                    gateway: attacks::gateway_in(&ctx.bin_dir),
                    nofile: gateway_nofile,
                    only,
                },
                &ctx.revision,
            )?;
            let md = attacks::markdown(&report);
            let name = tag.map_or_else(|| "attacks".to_string(), |t| format!("attacks-{t}"));
            write(&dir, &format!("{name}.md"), &md)?;
            write(
                &dir,
                &format!("{name}.json"),
                &serde_json::to_string_pretty(&report)?,
            )?;
            println!("{md}");
            println!("written: {}/{name}.md and {name}.json", dir.display());
        }
        Some(What::Gateway) => {
            let report = gateway::run(
                &gateway::Options {
                    quick: cli.quick,
                    gateway: attacks::gateway_in(&ctx.bin_dir),
                },
                &ctx.revision,
            )?;
            let md = gateway::markdown(&report);
            write(&dir, "gateway.md", &md)?;
            write(
                &dir,
                "gateway.json",
                &serde_json::to_string_pretty(&report)?,
            )?;
            let chart = gateway::draw(&report, &dir)?;
            println!("{md}");
            println!(
                "written: {}/gateway.md, gateway.json and {chart}",
                dir.display()
            );
        }
        Some(What::Tunnels { systems, list, .. }) => {
            let all = systems::all();
            if list {
                for s in &all {
                    println!("{:14} {}", s.name(), s.about());
                }
                return Ok(());
            }
            let names = choose(&all, &systems)?;
            let make = || {
                let chosen = systems::named(&names);
                match &baseline {
                    Some(b) => b.with_twins(chosen),
                    None => chosen,
                }
            };
            let opts = tunnels::Options {
                alternate: baseline.is_some(),
                ..tunnels::Options::new(repeats, cli.quick)
            };
            let report = tunnels::run(&ctx, &make, &opts)?;
            let mut md = report::markdown(&report);
            md.push_str(&charts(&report, &dir));
            write(&dir, "tunnels.md", &md)?;
            write(
                &dir,
                "tunnels.json",
                &serde_json::to_string_pretty(&report)?,
            )?;
            println!("{md}");
            println!("written: {}/tunnels.md, tunnels.json", dir.display());
        }
        None => {
            let tunnels = tunnels::run(
                &ctx,
                &systems::all,
                &tunnels::Options::new(repeats, cli.quick),
            )?;
            eprintln!("== classifier");
            let classifier = classifier::run(&copts);
            eprintln!("== crypto");
            let crypto = crypto::run(&crypto::Options {
                repeats,
                quick: cli.quick,
            });
            let mut md = String::from("# Benchmark report\n\n");
            md.push_str(&report::markdown(&tunnels));
            md.push_str(&charts(&tunnels, &dir));
            md.push('\n');
            let crypto_json = match &crypto {
                Ok(c) => {
                    md.push_str(&crypto::markdown(c));
                    md.push('\n');
                    serde_json::to_value(c)?
                }
                Err(e) => {
                    md.push_str(&format!(
                        "## Crypto ceiling\n\nCould not be measured: {e:#}\n\n"
                    ));
                    serde_json::json!({ "error": format!("{e:#}") })
                }
            };
            let classifier_json = match &classifier {
                Ok(c) => {
                    md.push_str(&classifier::markdown(c));
                    serde_json::to_value(c)?
                }
                Err(e) => {
                    md.push_str(&format!("## Classifier\n\nCould not be measured: {e:#}\n"));
                    serde_json::json!({ "error": format!("{e:#}") })
                }
            };
            write(&dir, "report.md", &md)?;
            write(
                &dir,
                "report.json",
                &serde_json::to_string_pretty(&serde_json::json!({
                    "tunnels": tunnels,
                    "classifier": classifier_json,
                    "crypto": crypto_json,
                }))?,
            )?;
            println!("{md}");
            println!("written: {}/report.md, report.json", dir.display());
        }
    }
    Ok(())
}

/// The names of the systems chosen (every system of `all` when `names` is empty); unknown
/// names are an error.
fn choose(all: &[Box<dyn systems::System>], names: &[String]) -> Result<Vec<String>> {
    let known: Vec<String> = all.iter().map(|s| s.name().to_string()).collect();
    if names.is_empty() {
        return Ok(known);
    }
    for n in names {
        if !known.contains(n) {
            bail!("unknown system {n:?}; known: {}", known.join(", "));
        }
    }
    Ok(names.to_vec())
}

/// Draws the charts; the markdown that shows them (or says why they are missing).
fn charts(report: &tunnels::Report, dir: &Path) -> String {
    match chart::draw_all(report, dir) {
        Ok(files) => {
            let mut s = String::from("\n### Charts\n\n");
            for f in files {
                s.push_str(&format!("![{f}]({f})\n"));
            }
            s
        }
        Err(e) => format!("\nCharts could not be drawn: {e:#}\n"),
    }
}
