//! `cargo xtask setup`: brings a fresh Debian 12 machine to where everything builds and every
//! test runs. Each step checks first and says what it did; a second run only checks.

use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// Debian packages the build, the tests, the demo and the benchmark use.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker against LLVM 22.
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    // Namespaces, traffic and captures in tests, demo and benchmark.
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "iperf3",
    "tcpdump",
    "nftables",
    // A real DNS server for the DNS tests (the binary only; no service is started).
    "dnsmasq-base",
    // A private system bus for the test's systemd-resolved, and the library its binary
    // links (the systemd package; systemd is not started).
    "dbus-daemon",
    "systemd",
    // The shared session store of a gateway cluster (the tests start their own server).
    "redis-server",
    // Interop peers.
    "openconnect",
    "ocserv",
    // Benchmark baselines (boringtun comes from crates.io, installed by the harness), and
    // the font of its charts.
    "wireguard-go",
    "wireguard-tools",
    "fonts-dejavu-core",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run_step(name: &str, step: impl FnOnce() -> Result<String>) -> Result<()> {
    let outcome = step().with_context(|| format!("setup step '{name}'"))?;
    eprintln!("setup: {name}: {outcome}");
    Ok(())
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("setup installs packages and mounts bpffs: run as root");
    }
    run_step("apt packages", apt_packages)?;
    run_step("nightly toolchain with rust-src", nightly_rust_src)?;
    run_step("bpf-linker", bpf_linker)?;
    run_step("bpffs", bpffs)?;
    run_step("systemd-resolved for the tests", systemd_resolved)?;
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages() -> Result<String> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok("all installed".into());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(format!("installed {}", missing.join(" ")))
}

fn nightly_rust_src() -> Result<String> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut did = Vec::new();
    if !has_nightly {
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        did.push("installed nightly");
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup component list")?;
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        did.push("added rust-src");
    }
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.starts_with("clippy"))
    {
        exec(Command::new("rustup").args([
            "component",
            "add",
            "clippy",
            "--toolchain",
            "nightly",
        ]))?;
        did.push("added clippy");
    }
    Ok(if did.is_empty() {
        "present".into()
    } else {
        did.join(", ")
    })
}

fn bpf_linker() -> Result<String> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(format!("{} present", current.trim()));
    }
    // Without LLVM_PREFIX the build finds LLVM 14 and fails with "unable to find library
    // -lLLVM"; the LLVM 22 feature matches the nightly toolchain's LLVM.
    exec(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22", "--locked"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    Ok(format!(
        "built bpf-linker {BPF_LINKER_VERSION} against LLVM 22"
    ))
}

fn bpffs() -> Result<String> {
    let mounts = fs::read_to_string("/proc/mounts").context("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok("mounted".into());
    }
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok("mounted /sys/fs/bpf".into())
}

/// cargo-fuzz for the fuzz smoke runs (installed on first use).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !present {
        exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// cargo-deb for `cargo xtask package` (installed on first use).
pub fn ensure_cargo_deb() -> Result<()> {
    let present = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !present {
        exec(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    }
    Ok(())
}

/// Where the DNS tests find systemd-resolved (`tunnel_user::testbed::resolved`).
const RESOLVED_DIR: &str = "/var/cache/tunnel-test/systemd-resolved";

/// systemd-resolved's package, extracted (not installed: installing it would take over the
/// host's /etc/resolv.conf) for the DNS tests, which run it on a private bus.
fn systemd_resolved() -> Result<String> {
    let dir = std::path::Path::new(RESOLVED_DIR);
    if dir.join("lib/systemd/systemd-resolved").exists() {
        return Ok(format!("present in {RESOLVED_DIR}"));
    }
    let download = std::env::temp_dir().join(format!("tunnel-resolved-{}", std::process::id()));
    fs::create_dir_all(&download)?;
    exec(
        Command::new("apt-get")
            .args([
                "-o",
                "APT::Sandbox::User=root",
                "download",
                "systemd-resolved",
            ])
            .current_dir(&download),
    )?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download wrote no .deb")?;
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    exec(Command::new("dpkg").arg("-x").arg(&deb).arg(dir))?;
    let _ = fs::remove_dir_all(&download);
    Ok(format!("extracted into {RESOLVED_DIR}"))
}
