//! `tunnel-gateway`: the IF-T/TLS gateway's command line.
//!
//! ```text
//! tunnel-gateway --config FILE                                   run the gateway
//! tunnel-gateway --check-config FILE
//! tunnel-gateway adduser --users FILE NAME [--realm REALM]... [--totp [--totp-issuer NAME]]
//!                        [--must-change]                         (password on stdin)
//! tunnel-gateway sessions [--config FILE | --socket PATH] [--json]
//!                         list | show WHICH | kill WHICH | drain [--after SECS]
//! ```
//!
//! `--config` validates the config file (docs/gateway-config.md) and runs the gateway until
//! SIGINT or SIGTERM, when every client is told the session is terminated; SIGHUP reads the
//! file again and puts in force the keys that may change at run time (a file that is wrong,
//! or changes a key that needs a restart, is refused and the configuration stays). `--check-config`
//! validates, checks the files it names and the users file, and prints the effective
//! configuration. `sessions` asks a running gateway over its control socket (root or the
//! gateway's user): `list` its sessions, `show` or `kill` those WHICH names (a session id, a
//! user, a tunnel address; or `id:`, `user:`, `address:` before it); `drain` hands the
//! sessions on for an upgrade (docs/gateway.md). `adduser` adds or replaces a user in the users file; with `--totp` it
//! also makes the user a TOTP secret and prints the `otpauth://` URI for their authenticator. Logs go to stderr;
//! `RUST_LOG` (e.g. `RUST_LOG=debug`) sets the level. This binary only parses flags and calls
//! the library, mini-redis style.

use std::{
    io::{self, Read},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use tunnel_user::gateway::{
    AddOptions, AddOutcome, Answer, DEFAULT_ISSUER, Gateway, GatewayConfig, HashLimits,
    PasswordRequest, Request, Selector, SessionInfo, TotpSecret, UsersFile, add_user_with, ask,
    defaults, otpauth_uri, unix_now,
};

#[derive(Parser)]
#[command(
    name = "tunnel-gateway",
    about = "Ivanti Connect Secure / Pulse (IF-T/TLS) gateway",
    arg_required_else_help = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run the gateway with this config file.
    #[arg(long, value_name = "FILE", conflicts_with = "check_config")]
    config: Option<PathBuf>,

    /// Validate a config file and print the effective configuration, then exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Add a user to the users file, or replace their password and realms. The password is
    /// read from standard input; one trailing newline is removed.
    Adduser {
        /// The users file (created with mode 0600 if missing).
        #[arg(long, value_name = "FILE")]
        users: PathBuf,
        /// The user's login name.
        name: String,
        /// A realm the user may log in to; repeat for several. Default: Users.
        #[arg(long = "realm", value_name = "REALM")]
        realms: Vec<String>,
        /// Make a new TOTP secret for the user and print its otpauth:// URI (without it, a
        /// replaced user keeps the secret they had).
        #[arg(long)]
        totp: bool,
        /// The issuer the authenticator app shows for the TOTP entry.
        #[arg(long, value_name = "NAME", requires = "totp", default_value = DEFAULT_ISSUER)]
        totp_issuer: String,
        /// The user must change the password at the next login.
        #[arg(long)]
        must_change: bool,
    },
    /// Lists, shows or ends the sessions of a running gateway (over its control socket).
    Sessions {
        /// The gateway's config file, which names its control socket.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/tunnel-gateway/gateway.toml"
        )]
        config: PathBuf,
        /// The control socket, instead of the one the config file names.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        what: SessionsCommand,
    },
    /// Writes this command's man pages and shell completions into DIR (for the package).
    #[command(hide = true)]
    WriteDocs { dir: PathBuf },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Every session, connected and parked.
    List,
    /// The sessions WHICH names: an id (5 or s5), a user, a tunnel address, or one of
    /// id:N, user:NAME, address:IP.
    Show { which: Selector },
    /// Ends the sessions WHICH names (as `show`): a connected client is told "Ended by the
    /// administrator"; the cookie resumes nothing afterwards.
    Kill { which: Selector },
    /// Drains the gateway for an upgrade: it refuses new connections at once (its health
    /// endpoint says 503), closes every connection after SECS without a word, keeping the
    /// sessions in its store for their clients to resume (elsewhere, or with the gateway
    /// started next), and exits.
    Drain {
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        after: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The library errors already name the file and key; `{:#}` adds our context.
            eprintln!("tunnel-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(path) = cli.config {
        return serve(path);
    }
    match (cli.check_config, cli.command) {
        (Some(path), None) => check_config(path),
        (
            None,
            Some(Command::Adduser {
                users,
                name,
                realms,
                totp,
                totp_issuer,
                must_change,
            }),
        ) => {
            let totp = totp.then_some(totp_issuer);
            adduser(users, &name, realms, totp.as_deref(), must_change)
        }
        (
            None,
            Some(Command::Sessions {
                config,
                socket,
                json,
                what,
            }),
        ) => sessions(config, socket, json, what),
        (None, Some(Command::WriteDocs { dir })) => {
            tunnel_user::cli_docs::write(Cli::command(), &dir)
                .with_context(|| format!("writing the docs into {}", dir.display()))
        }
        // clap refuses both together and shows help for neither.
        _ => bail!("give --config FILE, --check-config FILE or a subcommand"),
    }
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = GatewayConfig::load(&path).map_err(anyhow::Error::msg)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let gateway = Gateway::bind(config).await?;
        // SIGHUP: the config file again; a reload that fails keeps what is in force.
        let reloader = gateway.reloader();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing a SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let (reloader, path) = (reloader.clone(), path.clone());
                let done = tokio::task::spawn_blocking(move || reloader.reload(&path)).await;
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        error = %e,
                        "reload refused: the configuration in force stays"
                    ),
                    Err(e) => tracing::warn!(error = %e, "reload failed"),
                }
            }
        });
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        gateway.run(shutdown).await?;
        Ok::<(), anyhow::Error>(())
    })
}

fn sessions(
    config: PathBuf,
    socket: Option<PathBuf>,
    json: bool,
    what: SessionsCommand,
) -> anyhow::Result<()> {
    let socket = match socket {
        Some(s) => s,
        None => {
            GatewayConfig::load(&config)
                .map_err(anyhow::Error::msg)?
                .control_socket
        }
    };
    let request = match what {
        SessionsCommand::List => Request::List,
        SessionsCommand::Show { which } => Request::Show(which),
        SessionsCommand::Kill { which } => Request::Kill(which),
        SessionsCommand::Drain { after } => Request::Drain { after_secs: after },
    };
    let answer = ask(&socket, &request)
        .with_context(|| format!("asking the gateway at {}", socket.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return match answer {
            Answer::Error(e) => bail!("{e}"),
            _ => Ok(()),
        };
    }
    match answer {
        Answer::Sessions(list) => print_sessions(&list),
        Answer::Killed(list) => {
            for s in list {
                println!("ended s{} ({}, {}, {})", s.id, s.user, s.ipv4, s.state);
            }
        }
        Answer::Draining { sessions } => {
            println!("draining: {sessions} connected sessions to be handed on")
        }
        Answer::Error(e) => bail!("{e}"),
    }
    Ok(())
}

/// The sessions as a table; times as ages ("5m ago", "in 11h").
fn print_sessions(list: &[SessionInfo]) {
    let now = unix_now();
    let ago = |t: u64| format!("{} ago", span(now.saturating_sub(t)));
    let until = |t: Option<u64>| {
        t.map_or("-".to_string(), |t| {
            format!("in {}", span(t.saturating_sub(now)))
        })
    };
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|s| {
            [
                format!("s{}", s.id),
                s.user.clone(),
                s.realm.clone(),
                s.ipv6
                    .map_or(s.ipv4.to_string(), |v6| format!("{},{v6}", s.ipv4)),
                s.from.to_string(),
                match (&s.transport, s.parked_until) {
                    (Some(t), _) => format!("{} ({t})", s.state),
                    (None, Some(u)) => format!("{} (resumable {})", s.state, until(Some(u))),
                    (None, None) => s.state.clone(),
                },
                ago(s.logged_in),
                until(s.ends),
            ]
        })
        .collect();
    let head = [
        "ID", "USER", "REALM", "ADDRESS", "FROM", "STATE", "LOGIN", "ENDS",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&head.map(str::to_string));
    for r in &rows {
        line(r);
    }
    if rows.is_empty() {
        println!("(no sessions)");
    }
}

/// A duration in seconds, in its two largest units: "3d 4h", "5m 2s".
fn span(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut left = secs;
    for (size, name) in units {
        if left >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", left / size));
            left %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

fn check_config(path: PathBuf) -> anyhow::Result<()> {
    let config = GatewayConfig::load(&path).map_err(anyhow::Error::msg)?;
    let users = UsersFile::load(
        &config.auth.users_file,
        &HashLimits::from(&config.auth.passwords),
    )
    .map_err(anyhow::Error::msg)?;
    println!("{}: OK", path.display());
    println!("{config}");
    println!(
        "users                  {} in {}",
        users.len(),
        config.auth.users_file.display()
    );
    Ok(())
}

/// `totp_issuer`: with `--totp`, the issuer of the new secret.
fn adduser(
    users: PathBuf,
    name: &str,
    mut realms: Vec<String>,
    totp_issuer: Option<&str>,
    must_change: bool,
) -> anyhow::Result<()> {
    if realms.is_empty() {
        realms.push(defaults::REALM.to_string());
    }
    let mut password = Vec::new();
    io::stdin()
        .read_to_end(&mut password)
        .context("reading the password from standard input")?;
    // `echo pw |` and a typed line end with a newline that is not part of the password.
    if password.last() == Some(&b'\n') {
        password.pop();
        if password.last() == Some(&b'\r') {
            password.pop();
        }
    }
    if password.len() > PasswordRequest::CURRENT_MAX_BYTES {
        eprintln!(
            "tunnel-gateway: warning: the password is {} bytes long; clients of current Ivanti \
             gateways send at most {} bytes",
            password.len(),
            PasswordRequest::CURRENT_MAX_BYTES
        );
    }
    let secret = totp_issuer.map(|_| TotpSecret::generate());
    let options = AddOptions {
        totp: secret.clone(),
        must_change,
        now_unix: unix_now(),
    };
    let result = add_user_with(&users, name, &realms, &password, &options);
    // Do not leave the password in freed memory; black_box keeps the wipe from being
    // optimised away as a dead store.
    password.fill(0);
    std::hint::black_box(&password);
    let outcome = result.map_err(anyhow::Error::msg)?;
    let verb = match outcome {
        AddOutcome::Added => "added",
        AddOutcome::Replaced => "replaced",
    };
    println!(
        "{verb} user {name} (realms: {}) in {}",
        realms.join(", "),
        users.display()
    );
    if must_change {
        println!("{name} must change the password at the next login");
    }
    if let (Some(secret), Some(issuer)) = (&secret, totp_issuer) {
        // The URI holds the secret: it goes to stdout only, for the user's authenticator.
        println!("TOTP: add this to the user's authenticator app (e.g. as a QR code):");
        println!("{}", otpauth_uri(secret, issuer, name));
    }
    Ok(())
}
