//! `tunneld`: the client daemon. It runs in the foreground (systemd, or a terminal); SIGINT
//! or SIGTERM disconnects every connection and detaches the kernel programs, but for the
//! uplinks' under lock-down: those stay pinned in `--pin-dir`, and lock-down with them, until
//! a tunneld takes them over or lock-down is turned off.
//!
//! ```text
//! tunneld [--socket PATH] [--state-dir DIR] [--uplink IFNAME]... [--log-level LEVEL]
//!         [--pin-dir DIR]
//! ```
//!
//! `--log-level debug` (or `trace`) also turns on the kernel log: the eBPF programs then
//! record why every packet got its verdict (program, tunnel/bypass/drop, reason, connection,
//! protocol, addresses and ports), forwarded as debug events with target `tunnel_ebpf`. It
//! costs a record per packet, so it is for diagnosis; at `info` and below the verifier
//! removes the log code from the loaded programs (docs/datapath.md, "Kernel log").

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory, Parser, ValueEnum};
use tunnel_user::{
    client::{
        control::DEFAULT_SOCKET,
        daemon::{self, DaemonConfig},
    },
    datapath::KernelLog,
};

#[derive(Parser)]
#[command(name = "tunneld", about = "tunnel client daemon", version)]
struct Cli {
    /// The control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where learned certificate pins, the connection store and the logs are kept.
    #[arg(long, default_value = "/var/lib/tunnel")]
    state_dir: PathBuf,
    /// Attach the classifier to this uplink whenever it appears (repeat for several).
    /// Default: every link except loopback and TUN/TAP devices, as links come and go.
    #[arg(long = "uplink", value_name = "IFNAME")]
    uplinks: Vec<String>,
    /// What to log (to stderr). `debug` and `trace` also make the kernel programs log every
    /// packet's verdict and why, at a cost per packet. RUST_LOG, when set, filters instead.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Where the uplinks' programs are pinned (a directory on a bpffs), so that the policy
    /// in force, lock-down above all, holds while tunneld is not running.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/tunnel")]
    pin_dir: PathBuf,
    /// Captive portal detection's probe: a plain http:// URL whose true answer is
    /// --portal-expect (machine setting `captive-portal-detection` turns detection on/off).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://detectportal.firefox.com/success.txt"
    )]
    portal_probe: String,
    /// The probe's true answer: its body (status 200); empty: a 204.
    #[arg(long, value_name = "TEXT", default_value = "success\n")]
    portal_expect: String,
    /// The cgroup (v2) `tunnel portal` runs its command in: its sockets may reach ports 53,
    /// 80 and 443 while a connection waits behind a captive portal, lock-down or not.
    /// Default: tunnel-portal under the cgroup v2 root.
    #[arg(long, value_name = "DIR")]
    portal_cgroup: Option<PathBuf>,
    /// How long that exception lasts once a portal is found, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    portal_window: u64,
    /// The resolver configuration tunneld points at its DNS forwarder while a connection's
    /// DNS is in force, and restores after (a file, a symlink or a bind mount).
    #[arg(long, value_name = "FILE", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Members of this group may connect, disconnect, sign out, suspend, resume and see
    /// status over the control socket; everything else stays root's.
    #[arg(long, value_name = "GROUP", default_value = "tunnel")]
    control_group: String,
    /// Writes this command's man page and shell completions into DIR (for the package).
    #[arg(long, value_name = "DIR", hide = true)]
    write_docs: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The tracing filter. Below `info` aya's own messages are left out: at load they are a
    /// dump of the eBPF object's type information, not about packets.
    fn filter(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug,aya=info,aya_obj=info",
            LogLevel::Trace => "trace,aya=info,aya_obj=info",
        }
    }

    fn kernel_log(self) -> KernelLog {
        match self {
            LogLevel::Debug | LogLevel::Trace => KernelLog::Verdicts,
            LogLevel::Error | LogLevel::Warn | LogLevel::Info => KernelLog::Off,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.write_docs {
        return match tunnel_user::cli_docs::write(Cli::command(), dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tunneld: writing the docs into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.log_level.filter())),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunneld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let config = DaemonConfig {
        socket: cli.socket,
        state_dir: cli.state_dir,
        uplinks: (!cli.uplinks.is_empty()).then_some(cli.uplinks),
        kernel_log: cli.log_level.kernel_log(),
        pins: Some(cli.pin_dir),
        control_group: Some(cli.control_group),
        resolv_conf: cli.resolv_conf,
        portal_cgroup: Some(cli.portal_cgroup.unwrap_or_else(|| {
            // The cgroup v2 hierarchy: at /sys/fs/cgroup, or beside v1 at .../unified.
            let unified = std::path::Path::new("/sys/fs/cgroup/unified");
            let root = if unified.join("cgroup.procs").exists() {
                unified
            } else {
                std::path::Path::new("/sys/fs/cgroup")
            };
            root.join("tunnel-portal")
        })),
        portal_window: std::time::Duration::from_secs(cli.portal_window),
        portal_probe: Some(
            tunnel_user::client::portal::Probe::parse(&cli.portal_probe, &cli.portal_expect)
                .map_err(anyhow::Error::msg)?,
        ),
    };
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        daemon::run(config, shutdown).await.context("tunneld")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tunneld").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_kernel_log_is_on_at_debug_and_trace_only() {
        let default = parse(&[]).log_level;
        assert_eq!(default.filter(), "info");
        assert_eq!(default.kernel_log(), KernelLog::Off);
        for (level, filter, kernel) in [
            ("error", "error", KernelLog::Off),
            ("warn", "warn", KernelLog::Off),
            ("info", "info", KernelLog::Off),
            ("debug", "debug,aya=info,aya_obj=info", KernelLog::Verdicts),
            ("trace", "trace,aya=info,aya_obj=info", KernelLog::Verdicts),
        ] {
            let l = parse(&["--log-level", level]).log_level;
            assert_eq!((l.filter(), l.kernel_log()), (filter, kernel), "{level}");
        }
        assert!(Cli::try_parse_from(["tunneld", "--log-level", "loud"]).is_err());
    }
}
