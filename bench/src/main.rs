//! `cargo xtask bench`: measurements of tunnel against baselines measured in the same run.
//! Results go to `target/bench/` as markdown and JSON.

mod classifier;
mod stats;

use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tunnel benchmark harness")]
struct Cli {
    /// Repeats of every measurement (median and spread are reported).
    #[arg(long, default_value_t = 3, global = true)]
    repeats: usize,
    /// Shorter runs, for a quick look.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// ns/packet of the eBPF classifier and the excluded-path throughput ratio.
    Classifier,
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let repeats = if cli.quick {
        cli.repeats.min(2)
    } else {
        cli.repeats
    }
    .max(1);
    let dir = out_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    match cli.what {
        What::Classifier => {
            let report = classifier::run(&classifier::Options {
                repeats,
                quick: cli.quick,
            })?;
            let md = classifier::markdown(&report);
            fs::write(dir.join("classifier.md"), &md)?;
            fs::write(
                dir.join("classifier.json"),
                serde_json::to_string_pretty(&report)?,
            )?;
            println!("{md}");
            println!(
                "written: {}/classifier.md and classifier.json",
                dir.display()
            );
        }
    }
    Ok(())
}
