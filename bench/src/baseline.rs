//! Another tree measured beside this one (`bench tunnels --baseline DIR`): the proof that a
//! change keeps the speed compares "the tree before and after the change, alternating, in
//! one session".
//!
//! DIR is another checkout (its `target/release` is used) or a directory of its release
//! binaries (`tunnel-gateway`, `tunneld`, `tunnel`); the harness does not build it. Each of
//! our systems chosen (`ours-*`) gets a twin `NAME@base` that runs the same set-up with
//! DIR's binaries, next to it in the list; the run alternates ([`crate::tunnels`]), so a
//! pair is measured in the same rounds, minutes apart at most. The report's section
//! ([`markdown`]) gives, per pair, each round's TCP 1 up and idle RTT, the median of the
//! per-round ratios (this tree / DIR's) and the peak RSS of both clients and gateways.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::{
    stats::median,
    systems::{Ctx, System},
    tunnels::{Report, SystemResult},
    world::World,
};

/// What a twin's name ends with.
pub const SUFFIX: &str = "@base";

/// The programs a tree's release build must have for our systems.
const PROGRAMS: [&str; 3] = ["tunnel-gateway", "tunneld", "tunnel"];

/// The other tree's release binaries.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub bin_dir: PathBuf,
    /// Its revision (`git rev-parse --short HEAD` where DIR is in a checkout).
    pub revision: String,
}

impl Baseline {
    /// Finds the binaries in `dir` (a checkout or a directory of binaries); fails naming
    /// what is missing and how to build it.
    pub fn locate(dir: &Path) -> Result<Baseline> {
        let has_all = |d: &Path| PROGRAMS.iter().all(|p| d.join(p).is_file());
        let release = dir.join("target/release");
        let bin_dir = if has_all(&release) {
            release
        } else if has_all(dir) {
            dir.to_path_buf()
        } else {
            bail!(
                "no {} in {} or {}: build them with `cd {} && cargo build --release -p \
                 tunnel-user --bins`",
                PROGRAMS.join(", "),
                dir.display(),
                release.display(),
                dir.display()
            );
        };
        let revision = crate::revision(dir).unwrap_or_else(|| "unknown".into());
        Ok(Baseline { bin_dir, revision })
    }

    /// `systems` with a twin after each of ours.
    pub fn with_twins(&self, systems: Vec<Box<dyn System>>) -> Vec<Box<dyn System>> {
        let mut out: Vec<Box<dyn System>> = Vec::with_capacity(systems.len() * 2);
        for sys in systems {
            let twins = if is_ours(sys.name()) {
                crate::systems::named(&[sys.name().to_string()])
            } else {
                Vec::new()
            };
            out.push(sys);
            for inner in twins {
                out.push(Box::new(Twin {
                    name: format!("{}{SUFFIX}", inner.name()),
                    inner,
                    baseline: self.clone(),
                }));
            }
        }
        out
    }
}

/// Whether a system runs this tree's binaries: our client and gateway.
fn is_ours(name: &str) -> bool {
    name.starts_with("ours-")
}

/// One of our systems with the other tree's binaries.
struct Twin {
    name: String,
    inner: Box<dyn System>,
    baseline: Baseline,
}

impl System for Twin {
    fn name(&self) -> &str {
        &self.name
    }
    fn about(&self) -> String {
        format!(
            "{} (revision {}, {})",
            self.inner.about(),
            self.baseline.revision,
            self.baseline.bin_dir.display()
        )
    }
    fn prepare(&mut self, ctx: &Ctx) -> Result<String> {
        let ctx = Ctx {
            bin_dir: self.baseline.bin_dir.clone(),
            tools: ctx.tools.clone(),
            revision: self.baseline.revision.clone(),
            baseline: None,
        };
        self.inner.prepare(&ctx)
    }
    fn start_gateway(&mut self, w: &World) -> Result<()> {
        self.inner.start_gateway(w)
    }
    fn kill_gateway(&mut self, w: &World) -> Result<()> {
        self.inner.kill_gateway(w)
    }
    fn start_client(&mut self, w: &World) -> Result<Instant> {
        self.inner.start_client(w)
    }
    fn stop_client(&mut self, w: &World) {
        self.inner.stop_client(w)
    }
    fn transport(&mut self, w: &World) -> Result<String> {
        self.inner.transport(w)
    }
    fn device(&self, w: &World) -> Option<String> {
        self.inner.device(w)
    }
    fn client_state(&mut self, w: &World) -> String {
        self.inner.client_state(w)
    }
    fn client_gone(&mut self) -> bool {
        self.inner.client_gone()
    }
    fn client_pids(&self) -> Vec<u32> {
        self.inner.client_pids()
    }
    fn gateway_pids(&self) -> Vec<u32> {
        self.inner.gateway_pids()
    }
    fn tunnelled(&self) -> bool {
        self.inner.tunnelled()
    }
    fn splits(&self) -> bool {
        self.inner.splits()
    }
    fn teardown(&mut self, w: &World) {
        self.inner.teardown(w)
    }
}

/// The tests a pair is compared on: TCP 1 up (higher is better) and idle RTT (lower is).
pub const COMPARED: [&str; 2] = ["tcp-1-up", "latency-idle"];

/// One test of one pair, round by round.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Compared {
    pub test: String,
    /// (this tree, the baseline) per round; None where that run failed.
    pub rounds: Vec<(Option<f64>, Option<f64>)>,
    /// Median of this tree's / the baseline's figure over the rounds where both ran.
    pub ratio: Option<f64>,
}

/// A system of ours against its twin.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Pair {
    pub system: String,
    pub tests: Vec<Compared>,
    /// Peak RSS in KiB, (client, gateway) of this tree and of the baseline: every process
    /// of a side added up, the largest of any round.
    pub rss_kib: [(Option<u64>, Option<u64>); 2],
}

/// The pairs of a run that has twins, in the report's order.
pub fn pairs(report: &Report) -> Vec<Pair> {
    let find = |name: &str| report.systems.iter().find(|s| s.name == name);
    report
        .systems
        .iter()
        .filter_map(|ours| {
            let base = find(&format!("{}{SUFFIX}", ours.name))?;
            let tests = COMPARED.iter().map(|id| compare(ours, base, id)).collect();
            Some(Pair {
                system: ours.name.clone(),
                tests,
                rss_kib: [rss(ours), rss(base)],
            })
        })
        .collect()
}

fn compare(ours: &SystemResult, base: &SystemResult, id: &str) -> Compared {
    let runs = |s: &SystemResult| s.test(id).map(|t| t.runs.clone()).unwrap_or_default();
    let (a, b) = (runs(ours), runs(base));
    let rounds: Vec<(Option<f64>, Option<f64>)> = (0..a.len().max(b.len()))
        .map(|i| (a.get(i).copied().flatten(), b.get(i).copied().flatten()))
        .collect();
    let ratios: Vec<f64> = rounds
        .iter()
        .filter_map(|&(o, b)| Some(o? / b.filter(|b| *b > 0.0)?))
        .collect();
    Compared {
        test: id.to_string(),
        rounds,
        ratio: (!ratios.is_empty()).then(|| median(&ratios)),
    }
}

/// (client, gateway) peak RSS of a system, KiB.
fn rss(s: &SystemResult) -> (Option<u64>, Option<u64>) {
    let side = |name: &str| {
        let mut it = s.memory.iter().filter(|m| m.side == name).peekable();
        it.peek()
            .is_some()
            .then(|| it.map(|m| m.peak_rss_kib).sum())
    };
    (side("client"), side("gateway"))
}

/// The report's section on the pairs; empty when the run had no twins.
pub fn markdown(report: &Report) -> String {
    let pairs = pairs(report);
    if pairs.is_empty() {
        return String::new();
    }
    let base_rev = report.baseline.as_deref().unwrap_or("unknown");
    let mut s = format!(
        "\n### Against the baseline\n\nThis tree ({}) against the baseline ({base_rev}), \
         alternating in {} rounds (odd rounds in list order, even rounds reversed). *ratio*: \
         the median over the rounds of this tree's figure / the baseline's (TCP 1 up: higher \
         is better; idle RTT: lower is). Peak RSS: client / gateway, MiB.\n\n\
         | system | test | rounds (this tree / baseline) | median | ratio |\n\
         |---|---|---|---:|---:|\n",
        report.revision, report.options.repeats
    );
    let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
    for p in &pairs {
        for c in &p.tests {
            let rounds: Vec<String> = c
                .rounds
                .iter()
                .map(|&(o, b)| format!("{} / {}", fmt(o), fmt(b)))
                .collect();
            let both: Vec<(f64, f64)> = c
                .rounds
                .iter()
                .filter_map(|&(o, b)| Some((o?, b?)))
                .collect();
            let medians = if both.is_empty() {
                "–".to_string()
            } else {
                let (o, b): (Vec<f64>, Vec<f64>) = both.into_iter().unzip();
                format!("{:.3} / {:.3}", median(&o), median(&b))
            };
            s.push_str(&format!(
                "| {} | {} | {} | {medians} | {} |\n",
                p.system,
                c.test,
                rounds.join(", "),
                c.ratio.map_or("–".to_string(), |r| format!("{r:.3}x"))
            ));
        }
    }
    s.push_str("\n| system | peak RSS this tree | peak RSS baseline |\n|---|---:|---:|\n");
    let mib = |(c, g): (Option<u64>, Option<u64>)| {
        let f =
            |v: Option<u64>| v.map_or("–".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
        format!("{} / {}", f(c), f(g))
    };
    for p in &pairs {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            p.system,
            mib(p.rss_kib[0]),
            mib(p.rss_kib[1])
        ));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{sample, sys, t};

    /// A run where ours-esp and its twin took three rounds, the twin failing its second
    /// TCP run.
    fn run() -> Report {
        let mut r = sample();
        r.baseline = Some("f2ef402".into());
        let mut ours = sys("ours-esp", 1.0);
        ours.tests = vec![
            t("tcp-1-up", "Gbit/s", &[1.0, 1.2, 0.9]),
            t("latency-idle", "ms", &[0.10, 0.12, 0.11]),
        ];
        let mut base = sys("ours-esp@base", 1.0);
        base.tests = vec![
            t("tcp-1-up", "Gbit/s", &[1.0, 1.0, 1.0]),
            t("latency-idle", "ms", &[0.10, 0.10, 0.10]),
        ];
        base.tests[0].runs[1] = None;
        base.memory[0].peak_rss_kib = 40 * 1024;
        r.systems = vec![ours, base];
        r
    }

    #[test]
    fn pairs_ratio_per_round() {
        let p = pairs(&run());
        assert_eq!(p.len(), 1, "one pair: {p:?}");
        let tcp = &p[0].tests[0];
        assert_eq!(tcp.test, "tcp-1-up");
        assert_eq!(
            tcp.rounds,
            vec![
                (Some(1.0), Some(1.0)),
                (Some(1.2), None),
                (Some(0.9), Some(1.0))
            ]
        );
        // Rounds 1 and 3 only: ratios 1.0 and 0.9.
        assert!((tcp.ratio.unwrap() - 0.95).abs() < 1e-9, "{tcp:?}");
        let rtt = &p[0].tests[1];
        assert!((rtt.ratio.unwrap() - 1.1).abs() < 1e-9, "{rtt:?}");
        assert_eq!(p[0].rss_kib, [(Some(10240), None), (Some(40960), None)]);
    }

    #[test]
    fn markdown_shows_rounds_ratios_and_rss() {
        let md = markdown(&run());
        assert!(md.contains("against the baseline (f2ef402)"), "{md}");
        assert!(
            md.contains("| ours-esp | tcp-1-up | 1.000 / 1.000, 1.200 / –, 0.900 / 1.000 | 0.950 / 1.000 | 0.950x |"),
            "{md}"
        );
        assert!(md.contains("| ours-esp | 10.0 / – | 40.0 / – |"), "{md}");
        let mut plain = run();
        plain.systems.pop();
        assert_eq!(markdown(&plain), "", "no twin, no section");
    }

    #[test]
    fn twins_follow_ours_only() {
        let b = Baseline {
            bin_dir: PathBuf::from("/nowhere"),
            revision: "r".into(),
        };
        let names: Vec<String> = ["ours-esp", "boringtun", "ours-tls"]
            .map(String::from)
            .to_vec();
        let list = b.with_twins(crate::systems::named(&names));
        let got: Vec<&str> = list.iter().map(|s| s.name()).collect();
        assert_eq!(
            got,
            [
                "ours-esp",
                "ours-esp@base",
                "ours-tls",
                "ours-tls@base",
                "boringtun"
            ]
        );
    }

    #[test]
    fn locate_names_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("bench-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Baseline::locate(&dir).unwrap_err().to_string();
        assert!(err.contains("cargo build --release"), "{err}");
        for p in PROGRAMS {
            std::fs::write(dir.join(p), "").unwrap();
        }
        let b = Baseline::locate(&dir).unwrap();
        assert_eq!(b.bin_dir, dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
