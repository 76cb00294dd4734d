//! PNG charts of the tunnel comparison: horizontal grouped bars (one group per system, one
//! bar per series) with the repeats' min-max as a whisker and the median written out.
//! Laid out by hand on a plotters bitmap; text uses DejaVu Sans read at run time (Debian's
//! fonts-dejavu-core, installed by `cargo xtask setup`), so no font library is linked.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{prelude::*, style::FontStyle};

use crate::tunnels::{Outcome, Report, TestResult};

const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";

const PALETTE: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

/// A bar: median, min, max.
pub type Bar = Option<(f64, f64, f64)>;

pub struct Chart<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub series: &'a [&'a str],
    /// (system, one bar per series)
    pub groups: Vec<(String, Vec<Bar>)>,
    pub log: bool,
}

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT_FILE)
            .map_err(|e| format!("{FONT_FILE}: {e} (apt-get install fonts-dejavu-core)"))?;
        plotters::style::register_font(FONT, FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{FONT_FILE} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Where a value lands on the axis, as a fraction of its length.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool) -> Axis {
        let v: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
        let max = v.iter().copied().fold(0.0, f64::max);
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        if log && max > 0.0 {
            Axis {
                lo: 10f64.powf(min.log10().floor()),
                hi: 10f64.powf(max.log10().ceil().max(min.log10().floor() + 1.0)),
                log,
            }
        } else {
            Axis {
                lo: 0.0,
                hi: if max > 0.0 {
                    nice_ceiling(max * 1.05)
                } else {
                    1.0
                },
                log: false,
            }
        }
    }

    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            v / self.hi
        };
        f.clamp(0.0, 1.0)
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut x = self.lo;
            while x <= self.hi * 1.0001 {
                t.push(x);
                x *= 10.0;
            }
            t
        } else {
            (0..=5).map(|i| self.hi * f64::from(i) / 5.0).collect()
        }
    }
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|x| *x >= v)
        .unwrap_or(10.0 * p)
}

fn label(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else if v >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// An axis tick: no trailing zeros.
fn tick(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub fn draw(chart: &Chart, path: &Path) -> Result<()> {
    register_font()?;
    const W: u32 = 1100;
    const LEFT: i32 = 150;
    const RIGHT: i32 = 90;
    const TOP: i32 = 70;
    const BAR: i32 = 16;
    const GAP: i32 = 14;
    let group_h = BAR * chart.series.len() as i32 + GAP;
    let h = (TOP + group_h * chart.groups.len() as i32 + 50) as u32;
    let root = BitMapBackend::new(path, (W, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let text = |size: u32| TextStyle::from((FONT, size).into_font()).color(&BLACK);
    root.draw(&Text::new(
        format!("{} ({})", chart.title, chart.unit),
        (LEFT, 12),
        text(20),
    ))?;
    // Legend.
    let mut x = LEFT;
    for (i, s) in chart.series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        root.draw(&Rectangle::new([(x, 42), (x + 14, 54)], c.filled()))?;
        root.draw(&Text::new(s.to_string(), (x + 18, 40), text(14)))?;
        x += 24 + 9 * s.len() as i32;
    }
    let axis = Axis::new(
        chart
            .groups
            .iter()
            .flat_map(|(_, b)| b.iter().flatten().flat_map(|(m, lo, hi)| [*m, *lo, *hi])),
        chart.log,
    );
    let plot_w = W as i32 - LEFT - RIGHT;
    let px = |v: f64| LEFT + (axis.frac(v) * f64::from(plot_w)) as i32;
    let bottom = TOP + group_h * chart.groups.len() as i32;
    for t in axis.ticks() {
        let x = px(t);
        root.draw(&PathElement::new(
            vec![(x, TOP - 4), (x, bottom)],
            RGBColor(0xdd, 0xdd, 0xdd),
        ))?;
        root.draw(&Text::new(tick(t), (x - 10, bottom + 6), text(12)))?;
    }
    if chart.log {
        root.draw(&Text::new(
            "logarithmic scale".to_string(),
            (LEFT, bottom + 26),
            text(12),
        ))?;
    }
    for (g, (name, bars)) in chart.groups.iter().enumerate() {
        let y0 = TOP + g as i32 * group_h;
        root.draw(&Text::new(
            name.clone(),
            (8, y0 + (group_h - GAP) / 2 - 7),
            text(14),
        ))?;
        for (i, bar) in bars.iter().enumerate() {
            let y = y0 + i as i32 * BAR;
            let c = PALETTE[i % PALETTE.len()];
            match bar {
                Some((m, lo, hi)) => {
                    root.draw(&Rectangle::new(
                        [(LEFT, y + 2), (px(*m).max(LEFT + 1), y + BAR - 2)],
                        c.filled(),
                    ))?;
                    if hi > lo {
                        let ym = y + BAR / 2;
                        root.draw(&PathElement::new(vec![(px(*lo), ym), (px(*hi), ym)], BLACK))?;
                        for e in [*lo, *hi] {
                            root.draw(&PathElement::new(
                                vec![(px(e), ym - 3), (px(e), ym + 3)],
                                BLACK,
                            ))?;
                        }
                    }
                    root.draw(&Text::new(label(*m), (px(hi.max(*m)) + 4, y + 1), text(12)))?;
                }
                None => {
                    root.draw(&Text::new("n/a".to_string(), (LEFT + 4, y + 1), text(12)))?;
                }
            }
        }
    }
    root.present().context("writing the PNG")?;
    Ok(())
}

fn bar(t: Option<&TestResult>, f: fn(&TestResult) -> Option<crate::stats::Summary>) -> Bar {
    t.and_then(f).map(|s| (s.median, s.min, s.max))
}

/// The three charts of a report: throughput, latency, CPU per GB. Returns the files written.
pub fn draw_all(report: &Report, dir: &Path) -> Result<Vec<String>> {
    let measured: Vec<_> = report
        .systems
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Measured))
        .collect();
    let groups = |tests: &[&str], f: fn(&TestResult) -> Option<crate::stats::Summary>| {
        measured
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    tests.iter().map(|id| bar(r.test(id), f)).collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut written = Vec::new();
    draw(
        &Chart {
            title: "TCP throughput, iperf3",
            unit: "Gbit/s",
            series: &[
                "1 stream up",
                "1 stream down",
                "4 streams up",
                "4 streams down",
            ],
            groups: groups(&["tcp-1-up", "tcp-1-down", "tcp-4-up", "tcp-4-down"], |t| {
                t.value
            }),
            log: true,
        },
        &dir.join("throughput.png"),
    )?;
    written.push("throughput.png".to_string());
    draw(
        &Chart {
            title: "Round-trip time to corp, median",
            unit: "ms",
            series: &["idle", "under 1 TCP stream"],
            groups: groups(&["latency-idle", "latency-loaded"], |t| t.value),
            log: true,
        },
        &dir.join("latency.png"),
    )?;
    written.push("latency.png".to_string());
    let cpu_groups = measured
        .iter()
        .filter(|r| r.name != "bare")
        .map(|r| {
            let t = r.test("tcp-1-up");
            (
                r.name.clone(),
                vec![
                    bar(t, |t| t.cpu_client_s_per_gb),
                    bar(t, |t| t.cpu_gateway_s_per_gb),
                    bar(t, |t| t.cpu_machine_s_per_gb),
                ],
            )
        })
        .collect();
    draw(
        &Chart {
            title: "CPU seconds per GB, TCP 1 stream up",
            unit: "s/GB",
            series: &["client processes", "gateway processes", "whole machine"],
            groups: cpu_groups,
            log: false,
        },
        &dir.join("cpu.png"),
    )?;
    written.push("cpu.png".to_string());
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes() {
        let a = Axis::new([0.35, 19.9].into_iter(), true);
        assert_eq!((a.lo, a.hi), (0.1, 100.0));
        assert_eq!(a.ticks().len(), 4);
        assert!((a.frac(1.0) - 1.0 / 3.0).abs() < 1e-9);
        let a = Axis::new([3.2, 0.0].into_iter(), false);
        assert_eq!(a.hi, 5.0);
        assert_eq!(a.frac(2.5), 0.5);
        assert_eq!(nice_ceiling(21.0), 25.0);
        assert_eq!(
            (tick(0.1), tick(10.0), tick(2.5)),
            ("0.1".into(), "10".into(), "2.5".into())
        );
    }

    #[test]
    fn draws_the_sample_report() {
        if !Path::new(FONT_FILE).exists() {
            eprintln!("skipped: {FONT_FILE} missing (cargo xtask setup installs it)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = draw_all(&crate::report::tests::sample(), &dir).unwrap();
        assert_eq!(files.len(), 3);
        for f in files {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
