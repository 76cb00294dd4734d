//! `tunneld`: the client daemon. It runs in the foreground (systemd, or a terminal); SIGINT
//! or SIGTERM disconnects every connection and detaches the kernel programs.
//!
//! ```text
//! tunneld [--socket PATH] [--state-dir DIR] [--uplink IFNAME]...
//! ```

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use tunnel_user::client::{
    control::DEFAULT_SOCKET,
    daemon::{self, DaemonConfig},
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
    /// Attach the classifier to this uplink (repeat for several). Default: every interface
    /// except loopback and tunnel devices.
    #[arg(long = "uplink", value_name = "IFNAME")]
    uplinks: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
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
