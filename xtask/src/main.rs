//! Developer tasks. `setup` bootstraps a fresh machine (idempotent, fast when done); `demo`,
//! `test` and `bench` run it first, so `cargo xtask demo` and `cargo xtask test` are the whole
//! set-up. xtask itself depends on nothing of the project, so it builds before bpf-linker
//! exists.

mod deploy;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tunnel developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks: apt packages, rust-src for nightly, bpf-linker, bpffs.
    Setup,
    /// The whole product in network namespaces: gateway, tunneld, tunnel, split tunnelling.
    Demo,
    /// fmt check, clippy (host and BPF target), unit, kernel-program and namespace tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build release binaries and install them with systemd units and their system users.
    Deploy {
        /// Installation prefix (binaries go to PREFIX/bin).
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Where the systemd units go.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: std::path::PathBuf,
        /// Only write the units into --unit-dir: no build, no binaries, no users.
        #[arg(long)]
        units_only: bool,
    },
    /// Build the .deb (target/debian/): binaries, units, man pages, completions, the desktop
    /// entry for pulsesecureclient:// links, maintainer scripts.
    Package {
        /// Then install it here with dpkg, check it, remove and purge it.
        #[arg(long)]
        check: bool,
    },
    /// The benchmark harness: `cargo xtask bench` runs everything (about 15-20 minutes);
    /// `bench classifier`, `bench tunnels [--systems a,b] [--baseline DIR]` (DIR: another
    /// checkout's release build, run beside ours in alternating rounds), `bench attacks`
    /// (hostile peers against the gateway, docs/hostile.md), `--repeats N`, `--quick`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Demo => {
            setup::run()?;
            // The demo runs the three binaries from the build directory; `cargo run
            // --example` builds only the example itself.
            build_release_binaries(&root)?;
            cargo(
                &root,
                &["run", "--release", "-p", "tunnel-user", "--example", "demo"],
            )
        }
        Task::Test { args } => {
            setup::run()?;
            test(&root, &args)
        }
        Task::Deploy {
            prefix,
            unit_dir,
            units_only,
        } => {
            if !units_only {
                setup::run()?;
            }
            deploy::run(&root, &prefix, &unit_dir, units_only)
        }
        Task::Package { check } => {
            setup::run()?;
            let deb = package::build(&root)?;
            if check { package::check(&deb) } else { Ok(()) }
        }
        Task::Bench { args } => {
            setup::run()?;
            // The harness runs our binaries from its own directory.
            build_release_binaries(&root)?;
            let mut a = vec!["run", "--release", "-p", "bench", "--"];
            a.extend(args.iter().map(String::as_str));
            cargo(&root, &a)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds `tunneld`, `tunnel` and `tunnel-gateway` into `target/release`.
pub fn build_release_binaries(root: &Path) -> Result<()> {
    cargo(root, &["build", "--release", "-p", "tunnel-user", "--bins"])
}

/// Runs cargo with `args` in `root`; fails if it fails.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    exec(Command::new(env!("CARGO")).args(args).current_dir(root))
}

/// Runs a command, echoing it; fails with the command line if it fails.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("xtask: {line}");
    let status = cmd.status().with_context(|| format!("starting {line}"))?;
    if !status.success() {
        bail!("{line} failed: {status}");
    }
    Ok(())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The kernel programs are linted for the target they run on.
    exec(
        Command::new("cargo")
            .args(["+nightly", "clippy", "-p", "tunnel-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", root.join("target/ebpf-clippy"))
            .current_dir(root),
    )?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cargo(root, &args)?;
    let fuzz = root.join("fuzz");
    if fuzz.join("Cargo.toml").exists() {
        fuzz_smoke(&fuzz)?;
    }
    // The package, installed on this machine, checked, removed and purged.
    let deb = package::build(root)?;
    package::check(&deb)
}

/// Runs every fuzz target for a short, bounded time.
fn fuzz_smoke(fuzz: &Path) -> Result<()> {
    setup::ensure_cargo_fuzz()?;
    let out = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(fuzz)
        .output()
        .context("cargo fuzz list")?;
    // An empty list would pass without running anything: a failed listing is an error.
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    let targets: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        bail!("cargo fuzz list found no targets in {}", fuzz.display());
    }
    for target in targets {
        exec(
            Command::new("cargo")
                .args([
                    "+nightly",
                    "fuzz",
                    "run",
                    target,
                    "--",
                    "-max_total_time=20",
                ])
                .current_dir(fuzz),
        )?;
    }
    Ok(())
}
