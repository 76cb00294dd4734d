//! `tunnel-hostile ATTACK HOST:PORT [options]`: runs one hostile-peer attack
//! (`tunnel_user::testbed::hostile`) against a gateway and prints what the attacker saw.
//! Point it only at a gateway you run for testing.
//!
//! ```text
//! tunnel-hostile half-open 192.168.70.1:8443 --count 500 --rate 200 --secs 10
//! tunnel-hostile storm-one-account 192.168.70.1:8443 --servercert pin-sha256:... \
//!     --user alice --source 192.168.71.10 --source 192.168.71.11
//! ip netns exec attacker tunnel-hostile garbage ...    # from another namespace
//! ```
//!
//! Attacks: half-open, tls-partial, tls-silent, big-frame, garbage, storm-one-source,
//! storm-one-account, storm-many-accounts, resume-abort (what each does: docs/hostile.md).

use std::{net::IpAddr, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use tunnel_user::{
    client::tls::Pin,
    testbed::hostile::{self, Attack, BIG_FRAME, Params, Target},
};

#[derive(Parser)]
#[command(about = "Runs one hostile-peer attack against a test gateway")]
struct Cli {
    /// The attack (see the list above).
    attack: String,
    /// The gateway's TLS address.
    target: SocketAddr,
    /// The gateway certificate's pin (every attack past a TCP connect or half a ClientHello
    /// needs it).
    #[arg(long)]
    servercert: Option<String>,
    /// Connections open at once (storms: logins in flight).
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// New connections a second, at most (resume-abort: rounds a second).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long the attack runs, seconds.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// A source address to connect from (repeat for several, taken in turn); addresses of
    /// this host.
    #[arg(long = "source")]
    sources: Vec<IpAddr>,
    /// The account of storm-one-source, storm-one-account and resume-abort.
    #[arg(long, default_value = "alice")]
    user: String,
    /// The account's password (resume-abort logs in with it).
    #[arg(long, default_value = "")]
    password: String,
    /// The frame length big-frame claims.
    #[arg(long, default_value_t = BIG_FRAME)]
    claim: u32,
    /// Print the tally as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let attack = match cli.attack.parse::<Attack>()? {
        Attack::BigFrame { .. } => Attack::BigFrame { claim: cli.claim },
        Attack::StormOneSource { .. } => Attack::StormOneSource { user: cli.user },
        Attack::StormOneAccount { .. } => Attack::StormOneAccount { user: cli.user },
        Attack::ResumeAbort { .. } => Attack::ResumeAbort {
            user: cli.user,
            password: cli.password,
        },
        other => other,
    };
    if !(cli.secs > 0.0 && cli.secs.is_finite()) {
        bail!("--secs must be a positive number of seconds");
    }
    let pin = cli
        .servercert
        .as_deref()
        .map(Pin::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--servercert")?;
    let target = Target {
        addr: cli.target,
        pin,
    };
    let params = Params {
        count: cli.count,
        rate: cli.rate,
        duration: Duration::from_secs_f64(cli.secs),
        sources: cli.sources,
    };
    let tally = hostile::run(&attack, &target, &params)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&tally)?);
    } else {
        println!("{attack}: {}", tally.summary());
    }
    Ok(())
}
