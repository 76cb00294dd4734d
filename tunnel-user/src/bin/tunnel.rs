//! `tunnel`: the command line of the client. It asks `tunneld` over the control socket and
//! exits with the launcher's exit codes (0 success, 1 bad parameter, 2 connect failed,
//! 4 no such connection, 5 cancelled at a sign-in prompt, 6 certificate error, 7 timeout, 8 user connections not allowed,
//! 25 invalid action for the state, 100 general error, and 255 (-1) when tunneld is not
//! running).

use std::{
    io::{self, BufRead, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{CommandFactory, Parser, Subcommand};
use tunnel_user::client::control::{
    self, Answer, Answers, ClientCertPem, Credentials, DEFAULT_SOCKET, Prompt, Request, Response,
    SessionChoice, code,
};

#[derive(Parser)]
#[command(name = "tunnel", about = "tunnel VPN client", version)]
struct Cli {
    /// tunneld's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect a stored connection, or a gateway URL.
    Connect {
        /// The stored connection's name (or, without --url, a gateway URL).
        name: Option<String>,
        /// Gateway URL: https://host[:port][/sign-in-page].
        #[arg(long)]
        url: Option<String>,
        #[arg(long, short = 'u')]
        user: Option<String>,
        #[arg(long, short = 'r')]
        realm: Option<String>,
        /// Read the password from standard input (otherwise it is asked for on the terminal).
        #[arg(long)]
        password_stdin: bool,
        /// The token code, when the gateway asks for one (second factor).
        #[arg(long, value_name = "CODE", conflicts_with = "token_stdin")]
        token: Option<String>,
        /// Read the token code from standard input (the line after the password and the new
        /// password, when those are read from it too).
        #[arg(long)]
        token_stdin: bool,
        /// Read the new password from standard input, for a gateway that says the password
        /// has expired (the line after the password).
        #[arg(long)]
        new_password_stdin: bool,
        /// Accept the gateway's sign-in notices.
        #[arg(long)]
        accept_notice: bool,
        /// At the session limit, end this session (an id the gateway lists, or `oldest`).
        #[arg(
            long,
            value_name = "ID|oldest",
            conflicts_with = "cancel_at_session_limit"
        )]
        end_session: Option<String>,
        /// At the session limit, give up (exit code 5).
        #[arg(long)]
        cancel_at_session_limit: bool,
        /// Trust the gateway certificate with this pin (pin-sha256:...).
        #[arg(long)]
        servercert: Option<String>,
        /// Resume with a DSID cookie obtained elsewhere.
        #[arg(long)]
        cookie: Option<String>,
        /// Client certificate (PEM) and key (PEM; default: the certificate file), read by
        /// this command and sent to tunneld.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// A certificate of tunneld's store (`tunnel cert list`), by name or "Issued To",
        /// instead of the connection's or the one the gateway's request selects.
        #[arg(long, value_name = "NAME", conflicts_with = "cert")]
        client_cert: Option<String>,
        /// Seconds to wait for the connection (45-600).
        #[arg(long, short = 't', default_value_t = 45)]
        timeout: u64,
        /// An Ivanti Tunnel key-value pair (e.g. SplitUDPPortList=53;5000); repeat for more.
        #[arg(long = "kvp", value_name = "KEY=VALUE")]
        kvps: Vec<String>,
        /// Per-app: only processes in this cgroup v2 directory use the connection.
        #[arg(long, value_name = "CGROUP_DIR")]
        per_app: Option<PathBuf>,
    },
    /// Disconnect (the gateway keeps the session until it expires).
    Disconnect { name: String },
    /// Disconnect and sign out at the gateway.
    Signout { name: String },
    /// Keep the session but take the tunnel down.
    Suspend { name: String },
    /// Bring a suspended connection back.
    Resume { name: String },
    /// Disconnect every connection.
    Stop,
    /// Connections' state, addresses, transport and traffic.
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The kernel classifier's counters: per connection, then per uplink.
    Counters,
    /// Stored connections.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Store a connection.
    Add(ConnArgs),
    /// Change a stored connection (only the options given change).
    Edit(ConnArgs),
    /// Remove a stored connection.
    Delete { name: String },
    /// Import a .pulsepreconfig file (machine settings and connections).
    Import { file: PathBuf },
    /// Open a pulsesecureclient:// launch URL: add the "(Auto Launch)" connection and connect.
    Open {
        url: String,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        servercert: Option<String>,
    },
    /// pulselauncher compatibility: -url -u -p -r -d -cert -signout -suspend -resume -t -stop
    /// -version -help -L -sessionselection, with its exit codes. `-p -` reads the password
    /// from stdin. It asks nothing after the password: a token code, a password change or a
    /// notice to accept fails the connection (exit code 2).
    Launcher {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Client certificates kept by tunneld.
    Cert {
        #[command(subcommand)]
        what: CertCmd,
    },
    /// Diagnostics.
    Logs {
        #[command(subcommand)]
        what: LogsCmd,
    },
    /// Behind a captive portal: runs COMMAND (default: xdg-open the portal's page) where it
    /// may reach the portal (ports 53, 80, 443), even under lock-down, for a while.
    Portal {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Writes this command's man pages and shell completions into DIR (for the package).
    #[command(hide = true)]
    WriteDocs { dir: PathBuf },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Store a certificate chain and its key (PEM, or a PKCS#12 file), read by this command
    /// and sent to tunneld, which checks that the key is the certificate's and that it has
    /// not expired.
    Import {
        /// The certificate chain (PEM); it may hold the key as well. A `.p12` or `.pfx` file
        /// is PKCS#12: its first key and that key's chain.
        file: PathBuf,
        /// Read the PKCS#12 file's password from standard input (otherwise it is empty).
        #[arg(long)]
        password_stdin: bool,
        /// The private key (PEM; default: FILE).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The name to store it under (default: its "Issued To" common name).
        #[arg(long)]
        name: Option<String>,
    },
    /// The stored certificates: name, Issued To, issuer, expiry, SHA-256 fingerprint.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a stored certificate.
    Delete { name: String },
}

#[derive(Subcommand)]
enum LogsCmd {
    /// Write a diagnostics bundle (status, counters, connections, event log) to FILE, a new
    /// file (mode 0600; an existing file or link there is refused).
    Save { file: PathBuf },
}

/// A stored connection's settings on the command line.
#[derive(clap::Args)]
struct ConnArgs {
    name: String,
    /// Gateway URL(s): https://host[:port][/sign-in-page]; several make a smart connection.
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Which URL a smart connection tries first: top, most-recent or random.
    #[arg(long)]
    url_mode: Option<String>,
    #[arg(long, short = 'r')]
    realm: Option<String>,
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// An Ivanti Tunnel key-value pair; repeat for more.
    #[arg(long = "kvp", value_name = "KEY=VALUE")]
    kvps: Vec<String>,
    /// Per-app: a cgroup v2 path (below the cgroup root) whose processes use the connection.
    #[arg(long)]
    per_app: Option<String>,
    /// Start with tunneld (connection policy automatic).
    #[arg(long)]
    automatic: bool,
    /// The stored client certificate to present (name or "Issued To"); "" for none named,
    /// which lets the gateway's request choose.
    #[arg(long, value_name = "NAME")]
    client_cert: Option<String>,
    /// DNS Resolver IPs: the tunnel's DNS servers, instead of the gateway's; repeat for more.
    #[arg(long = "dns-server", value_name = "IP")]
    dns_servers: Vec<std::net::IpAddr>,
    /// DNS Search Domain List, instead of the gateway's; repeat for more.
    #[arg(long = "search-domain", value_name = "DOMAIN")]
    search_domains: Vec<String>,
    /// Match Domain List: only names under these are resolved through the tunnel, the rest
    /// by the machine's own servers; repeat for more. None: every name through the tunnel.
    #[arg(long = "match-domain", value_name = "DOMAIN")]
    match_domains: Vec<String>,
    /// A location rule (the connection then starts and stops by where the machine is):
    /// "address|no-address RANGE[,RANGE...] [on IFNAME]" or "dns|no-dns IP[,IP...]";
    /// repeat for more.
    #[arg(long = "location", value_name = "RULE", conflicts_with = "automatic")]
    location: Vec<String>,
    /// A locked-down connection (true or false): with VPN only access on, it is what lets
    /// traffic flow, and its exclude routes (KVP ExcRoutes) stay open under lock-down.
    #[arg(long, value_name = "true|false")]
    lock_down: Option<bool>,
    /// Whether all location rules must hold, or any one.
    #[arg(
        long,
        value_name = "all|any",
        default_value = "all",
        requires = "location"
    )]
    location_match: String,
}

impl ConnArgs {
    /// The fields given, as the store's JSON.
    fn fields(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let mut m = serde_json::Map::new();
        if !self.urls.is_empty() {
            m.insert("urls".into(), serde_json::json!(self.urls));
        }
        if let Some(mode) = &self.url_mode {
            m.insert("url_mode".into(), serde_json::json!(mode));
        }
        if let Some(r) = &self.realm {
            m.insert("realm".into(), serde_json::json!(r));
        }
        if let Some(u) = &self.user {
            m.insert("user".into(), serde_json::json!(u));
        }
        if !self.kvps.is_empty() {
            let mut kv = serde_json::Map::new();
            for pair in &self.kvps {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("--kvp '{pair}' is not KEY=VALUE"))?;
                kv.insert(k.into(), serde_json::json!(v));
            }
            m.insert("kvps".into(), serde_json::Value::Object(kv));
        }
        if let Some(c) = &self.per_app {
            m.insert(
                "scope".into(),
                serde_json::json!({"kind": "per-app", "cgroup": c}),
            );
        }
        if self.automatic {
            m.insert("policy".into(), serde_json::json!("automatic"));
        }
        match self.client_cert.as_deref() {
            Some("") => {
                m.insert("client_certificate".into(), serde_json::Value::Null);
            }
            Some(name) => {
                m.insert("client_certificate".into(), serde_json::json!(name));
            }
            None => {}
        }
        if let Some(on) = self.lock_down {
            m.insert("lock_down".into(), serde_json::json!(on));
        }
        if !self.location.is_empty() {
            let rules = self
                .location
                .iter()
                .map(|r| r.parse::<tunnel_config::LocationRule>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let when = match self.location_match.as_str() {
                "all" => tunnel_config::RuleMatch::All,
                "any" => tunnel_config::RuleMatch::Any,
                other => return Err(format!("--location-match {other}: all or any")),
            };
            m.insert("policy".into(), serde_json::json!("location"));
            m.insert(
                "location".into(),
                serde_json::to_value(tunnel_config::LocationRules { when, rules })
                    .map_err(|e| e.to_string())?,
            );
        }
        if !(self.dns_servers.is_empty()
            && self.search_domains.is_empty()
            && self.match_domains.is_empty())
        {
            m.insert(
                "dns".into(),
                serde_json::json!({
                    "servers": self.dns_servers,
                    "search": self.search_domains,
                    "match_domains": self.match_domains,
                }),
            );
        }
        Ok(m)
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(if code < 0 { 255 } else { code.min(255) as u8 })
}

fn read_password(stdin: bool) -> io::Result<Option<String>> {
    if stdin || !io::stdin().is_terminal() {
        return read_stdin_line();
    }
    read_secret("Password: ").map(Some)
}

/// A line of standard input; None when it is empty.
fn read_stdin_line() -> io::Result<Option<String>> {
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let text = line.trim_end_matches(['\n', '\r']).to_string();
    Ok((!text.is_empty()).then_some(text))
}

/// A line typed on the terminal, shown as typed.
fn read_typed(label: &str) -> io::Result<String> {
    eprint!("{label}");
    io::stderr().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A secret typed on the terminal, not echoed.
fn read_secret(label: &str) -> io::Result<String> {
    eprint!("{label}");
    io::stderr().flush()?;
    // No echo while typing.
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    let term = tcgetattr(&stdin).ok();
    if let Some(term) = &term {
        let mut quiet = term.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(term) = &term {
        // Restores the settings read above.
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, term);
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// How many times a new password may be typed twice before the change is given up.
const NEW_PASSWORD_TRIES: usize = 3;

/// Answers a sign-in prompt at the terminal. Nothing entered (or a read error) gives up.
fn ask_on_terminal(prompt: &Prompt) -> Answer {
    let answer = match prompt {
        Prompt::Token { prompt, next } => {
            if *next {
                eprintln!(
                    "The gateway asks for the next token code (wait for the code to change)."
                );
            }
            let label = if prompt.is_empty() {
                "Token code"
            } else {
                prompt
            };
            read_typed(&format!("{label}: ")).map(|code| {
                if code.is_empty() {
                    Answer::Cancel
                } else {
                    Answer::Token { code }
                }
            })
        }
        Prompt::NewPassword => (|| {
            eprintln!("The password has expired: choose a new one.");
            for _ in 0..NEW_PASSWORD_TRIES {
                let first = read_secret("New password: ")?;
                if first.is_empty() {
                    return Ok(Answer::Cancel);
                }
                if read_secret("New password again: ")? == first {
                    return Ok(Answer::NewPassword { password: first });
                }
                eprintln!("The two passwords differ.");
            }
            Ok(Answer::Cancel)
        })(),
        Prompt::Notice { text } => {
            eprintln!("Sign-in notice from the gateway:\n{text}");
            read_typed("Accept it and sign in? [y/N] ").map(|a| {
                if matches!(a.as_str(), "y" | "Y" | "yes") {
                    Answer::AcceptNotice
                } else {
                    Answer::Cancel
                }
            })
        }
        Prompt::SessionLimit { sessions } => {
            eprintln!("You are at the gateway's session limit. Your sessions:");
            for (i, s) in sessions.iter().enumerate() {
                let started = std::time::UNIX_EPOCH + Duration::from_secs(s.started);
                eprintln!(
                    "  {}) {}  from {}  since {}",
                    i + 1,
                    s.id,
                    s.from,
                    tunnel_config::utc_timestamp(started)
                );
            }
            read_typed("End which session (number or id; nothing to cancel)? ").map(|a| {
                let chosen = a
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| sessions.get(n.wrapping_sub(1)))
                    .or_else(|| sessions.iter().find(|s| s.id == a));
                match chosen {
                    Some(s) => Answer::EndSession { id: s.id.clone() },
                    None => Answer::Cancel,
                }
            })
        }
    };
    answer.unwrap_or_else(|e| {
        eprintln!("tunnel: reading the answer: {e}");
        Answer::Cancel
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut json = false;
    let (request, wait) = match cli.command {
        Cmd::Connect {
            name,
            url,
            user,
            realm,
            password_stdin,
            token,
            token_stdin,
            new_password_stdin,
            accept_notice,
            end_session,
            cancel_at_session_limit,
            servercert,
            cookie,
            cert,
            key,
            client_cert: client_cert_name,
            timeout,
            kvps,
            per_app,
        } => {
            let mut pairs = Vec::new();
            for kv in kvps {
                match kv.split_once('=') {
                    Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
                    None => {
                        eprintln!("tunnel: --kvp '{kv}' is not KEY=VALUE");
                        return exit(code::BAD_PARAMETER);
                    }
                }
            }
            if !(45..=600).contains(&timeout) {
                eprintln!("tunnel: --timeout {timeout} is outside 45-600 seconds");
                return exit(code::BAD_PARAMETER);
            }
            // A certificate login asks for no password, unless one is given on stdin too
            // (gateways that check both).
            let wants_password = (cert.is_none() && client_cert_name.is_none()) || password_stdin;
            let password = if user.is_some() && cookie.is_none() && wants_password {
                match read_password(password_stdin) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("tunnel: reading the password: {e}");
                        return exit(code::BAD_PARAMETER);
                    }
                }
            } else {
                None
            };
            // Standard input holds, in this order, the lines asked for: password, new
            // password, token code.
            let stdin_line = |what: &str, wanted: bool| -> Result<Option<String>, ExitCode> {
                if !wanted {
                    return Ok(None);
                }
                match read_stdin_line() {
                    Ok(Some(line)) => Ok(Some(line)),
                    Ok(None) => {
                        eprintln!("tunnel: no {what} on standard input");
                        Err(exit(code::BAD_PARAMETER))
                    }
                    Err(e) => {
                        eprintln!("tunnel: reading the {what}: {e}");
                        Err(exit(code::BAD_PARAMETER))
                    }
                }
            };
            let new_password = match stdin_line("new password", new_password_stdin) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let token = match stdin_line("token code", token_stdin) {
                Ok(t) => t.or(token),
                Err(code) => return code,
            };
            let prompts = Answers {
                token,
                new_password,
                accept_notice,
                at_session_limit: match (end_session, cancel_at_session_limit) {
                    (Some(id), _) => Some(SessionChoice::parse(&id)),
                    (None, true) => Some(SessionChoice::Cancel),
                    (None, false) => None,
                },
                // Someone at the terminal answers what was not given up front.
                interactive: io::stdin().is_terminal(),
            };
            let client_cert = match cert.map(|c| ClientCertPem::read(&c, key.as_deref())) {
                Some(Ok(pem)) => Some(pem),
                Some(Err(e)) => {
                    eprintln!("tunnel: {e}");
                    return exit(code::CERTIFICATE);
                }
                None => None,
            };
            let credentials = Credentials {
                user,
                password,
                realm,
                cookie,
                pin: servercert,
                client_cert,
                client_cert_name,
                kvps: pairs,
                app_cgroup: per_app,
                prompts,
            };
            (
                Request::Connect {
                    name,
                    url,
                    credentials: Box::new(credentials),
                    timeout_secs: Some(timeout),
                },
                Duration::from_secs(timeout + 5),
            )
        }
        Cmd::Portal { command } => return portal(&cli.socket, command),
        Cmd::WriteDocs { dir } => {
            return match tunnel_user::cli_docs::write(Cli::command(), &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tunnel: writing the docs into {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Disconnect { name } => (Request::Disconnect { name }, Duration::from_secs(20)),
        Cmd::Signout { name } => (Request::Signout { name }, Duration::from_secs(20)),
        Cmd::Suspend { name } => (Request::Suspend { name }, Duration::from_secs(20)),
        Cmd::Resume { name } => (Request::Resume { name }, Duration::from_secs(20)),
        Cmd::Stop => (Request::Stop, Duration::from_secs(30)),
        Cmd::Status { name, json: j } => {
            json = j;
            (Request::Status { name }, Duration::from_secs(5))
        }
        Cmd::Counters => (Request::Counters, Duration::from_secs(5)),
        Cmd::List { json: j } => {
            json = j;
            (Request::List, Duration::from_secs(5))
        }
        Cmd::Add(args) => match args.fields() {
            Ok(mut m) => {
                m.insert("name".into(), serde_json::json!(args.name));
                (
                    Request::Add {
                        connection: serde_json::Value::Object(m),
                    },
                    Duration::from_secs(5),
                )
            }
            Err(e) => {
                eprintln!("tunnel: {e}");
                return exit(code::BAD_PARAMETER);
            }
        },
        Cmd::Edit(args) => match args.fields() {
            Ok(m) => (
                Request::Edit {
                    name: args.name,
                    changes: serde_json::Value::Object(m),
                },
                Duration::from_secs(20),
            ),
            Err(e) => {
                eprintln!("tunnel: {e}");
                return exit(code::BAD_PARAMETER);
            }
        },
        Cmd::Delete { name } => (Request::Delete { name }, Duration::from_secs(5)),
        Cmd::Import { file } => match std::fs::read_to_string(&file) {
            Ok(text) => (Request::Import { text }, Duration::from_secs(10)),
            Err(e) => {
                eprintln!("tunnel: {}: {e}", file.display());
                return exit(code::BAD_PARAMETER);
            }
        },
        Cmd::Open {
            url,
            password_stdin,
            servercert,
        } => return open(&cli.socket, &url, password_stdin, servercert),
        Cmd::Launcher { args } => return launcher(&cli.socket, &args),
        Cmd::Cert { what } => match what {
            CertCmd::Import {
                file,
                key,
                name,
                password_stdin,
            } => match read_cert_files(&file, key.as_deref(), password_stdin) {
                Ok(pem) => (Request::CertImport { pem, name }, Duration::from_secs(5)),
                Err(e) => {
                    eprintln!("tunnel: {e}");
                    return exit(code::CERTIFICATE);
                }
            },
            CertCmd::List { json: j } => {
                json = j;
                (Request::CertList, Duration::from_secs(5))
            }
            CertCmd::Delete { name } => (Request::CertDelete { name }, Duration::from_secs(5)),
        },
        Cmd::Logs {
            what: LogsCmd::Save { file },
        } => return save_logs(&cli.socket, &file),
    };
    match call_connect(&cli.socket, &request, wait) {
        Ok(response) if response.code == code::CERTIFICATE => match trust_prompt(&response) {
            Some(pin) => {
                let Request::Connect {
                    name,
                    url,
                    mut credentials,
                    timeout_secs,
                } = request
                else {
                    return show(&request, &response, json);
                };
                credentials.pin = Some(pin);
                let retry = Request::Connect {
                    name,
                    url,
                    credentials,
                    timeout_secs,
                };
                match call_connect(&cli.socket, &retry, wait) {
                    Ok(r) => show(&retry, &r, json),
                    Err(e) => {
                        eprintln!("tunnel: {e}");
                        exit(code::GENERAL)
                    }
                }
            }
            None => show(&request, &response, json),
        },
        Ok(response) => show(&request, &response, json),
        Err(control::ControlError::NotRunning { path }) => {
            eprintln!("tunnel: tunneld is not running (no socket at {path})");
            exit(-1)
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            exit(code::GENERAL)
        }
    }
}

/// Sends a request; a connect that said someone answers its prompts gets them asked at the
/// terminal.
fn call_connect(
    socket: &std::path::Path,
    request: &Request,
    wait: Duration,
) -> Result<Response, control::ControlError> {
    let interactive =
        matches!(request, Request::Connect { credentials, .. } if credentials.prompts.interactive);
    control::call_answering(socket, request, wait, |p| {
        interactive.then(|| ask_on_terminal(p))
    })
}

fn call_and_show(socket: &std::path::Path, request: Request, wait: Duration) -> ExitCode {
    match control::call(socket, &request, wait) {
        Ok(r) => show(&request, &r, false),
        Err(control::ControlError::NotRunning { path }) => {
            eprintln!("tunnel: tunneld is not running (no socket at {path})");
            exit(-1)
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            exit(code::GENERAL)
        }
    }
}

/// `tunnel logs save FILE`: this process creates FILE (exclusively, 0600, not through a link
/// at that path) before it asks, and writes what tunneld answers; tunneld never writes where
/// a request points (`client::diagnostics`).
fn save_logs(socket: &std::path::Path, file: &std::path::Path) -> ExitCode {
    use tunnel_user::client::diagnostics::{NewFile, SaveError};
    let new = match NewFile::create(file) {
        Ok(f) => f,
        Err(e @ SaveError::Exists { .. }) => {
            eprintln!("tunnel: {e}");
            return exit(code::BAD_PARAMETER);
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            return exit(code::GENERAL);
        }
    };
    let response = match control::call(socket, &Request::Diagnostics, Duration::from_secs(10)) {
        Ok(r) if r.code == code::OK => r,
        Ok(r) => {
            eprintln!("tunnel: {}", r.message);
            return exit(r.code);
        }
        Err(control::ControlError::NotRunning { path }) => {
            eprintln!("tunnel: tunneld is not running (no socket at {path})");
            return exit(-1);
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            return exit(code::GENERAL);
        }
    };
    let mut text = match serde_json::to_string_pretty(&response.data) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tunnel: the diagnostics bundle: {e}");
            return exit(code::GENERAL);
        }
    };
    text.push('\n');
    match new.write(text.as_bytes()) {
        Ok(()) => {
            println!("diagnostics written to {}", file.display());
            exit(code::OK)
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            exit(code::GENERAL)
        }
    }
}

/// `tunnel open URL`: the daemon adds (or finds) the connection; then it is connected, asking
/// for the password the URL does not carry.
fn open(
    socket: &std::path::Path,
    url: &str,
    password_stdin: bool,
    pin: Option<String>,
) -> ExitCode {
    let request = Request::Open {
        url: url.to_string(),
    };
    let r = match control::call(socket, &request, Duration::from_secs(5)) {
        Ok(r) if r.code == code::OK => r,
        Ok(r) => return show(&request, &r, false),
        Err(control::ControlError::NotRunning { path }) => {
            eprintln!("tunnel: tunneld is not running (no socket at {path})");
            return exit(-1);
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            return exit(code::GENERAL);
        }
    };
    println!("{}", r.message);
    let name = r.data["name"].as_str().map(String::from);
    let temporary = r.data["temporary"].as_bool().unwrap_or(false);
    let password = match read_password(password_stdin) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tunnel: reading the password: {e}");
            return exit(code::BAD_PARAMETER);
        }
    };
    let credentials = Credentials {
        password,
        pin,
        ..Default::default()
    };
    let url = temporary.then(|| r.data["url"].as_str().unwrap_or_default().to_string());
    call_and_show(
        socket,
        Request::Connect {
            name,
            url,
            credentials: Box::new(credentials),
            timeout_secs: Some(45),
        },
        Duration::from_secs(50),
    )
}

/// Asks tunneld for the launcher's log level `-L`; on failure, says why and gives the exit.
fn set_launcher_log_level(
    socket: &std::path::Path,
    level: tunnel_config::LauncherLogLevel,
) -> Result<(), ExitCode> {
    let request = Request::LogLevel {
        detailed: level == tunnel_config::LauncherLogLevel::Detailed,
    };
    match control::call(socket, &request, Duration::from_secs(5)) {
        Ok(r) if r.code == code::OK => Ok(()),
        Ok(r) => Err(show(&request, &r, false)),
        Err(control::ControlError::NotRunning { path }) => {
            eprintln!("tunnel: tunneld is not running (no socket at {path})");
            Err(exit(-1))
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            Err(exit(code::GENERAL))
        }
    }
}

/// `tunnel portal [COMMAND...]`: tunneld moves this process into the captive portal's
/// cgroup; then it becomes COMMAND (default: `xdg-open` of the portal's page).
fn portal(socket: &std::path::Path, command: Vec<String>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let r = match control::call(socket, &Request::Portal, Duration::from_secs(5)) {
        Ok(r) => r,
        Err(control::ControlError::NotRunning { path }) => {
            eprintln!("tunnel: tunneld is not running (no socket at {path})");
            return exit(-1);
        }
        Err(e) => {
            eprintln!("tunnel: {e}");
            return exit(code::GENERAL);
        }
    };
    if r.code != code::OK {
        eprintln!("tunnel: {}", r.message);
        return exit(r.code);
    }
    eprintln!("{}", r.message);
    let portal = r.data["portal"].as_str().unwrap_or_default().to_string();
    let (program, args) = match command.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => ("xdg-open".to_string(), vec![portal]),
    };
    let e = std::process::Command::new(&program).args(&args).exec();
    eprintln!("tunnel: running {program}: {e}");
    exit(code::GENERAL)
}

/// A certificate and key to import: PEM files, or a PKCS#12 one (by its extension) opened
/// with the password on standard input.
fn read_cert_files(
    file: &std::path::Path,
    key: Option<&std::path::Path>,
    password_stdin: bool,
) -> Result<ClientCertPem, String> {
    let pkcs12 = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"));
    if !pkcs12 {
        return ClientCertPem::read(file, key).map_err(|e| e.to_string());
    }
    if key.is_some() {
        return Err("a PKCS#12 file holds its key: --key is for PEM files".into());
    }
    let password = if password_stdin {
        let mut line = String::new();
        io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        String::new()
    };
    ClientCertPem::read_pkcs12(file, &password).map_err(|e| e.to_string())
}

/// `tunnel launcher ...`: pulselauncher's arguments and exit codes.
fn launcher(socket: &std::path::Path, args: &[String]) -> ExitCode {
    use tunnel_config::{LauncherAction, LauncherAuth, parse_launcher_args};
    let action = match parse_launcher_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tunnel launcher: {e}");
            return exit(e.exit_code().code());
        }
    };
    let wait = |t: Duration| t + Duration::from_secs(5);
    // `-L` with a connection action applies to that action: the level is set first.
    let level = match &action {
        LauncherAction::Connect(c) => c.log_level,
        LauncherAction::SignOut(u) | LauncherAction::Suspend(u) | LauncherAction::Resume(u) => {
            u.log_level
        }
        _ => None,
    };
    if let Some(level) = level
        && let Err(failed) = set_launcher_log_level(socket, level)
    {
        return failed;
    }
    match action {
        LauncherAction::Version => {
            println!("tunnel launcher {}", env!("CARGO_PKG_VERSION"));
            exit(code::OK)
        }
        LauncherAction::Help => {
            print!("{}", tunnel_config::LAUNCHER_USAGE);
            exit(code::OK)
        }
        LauncherAction::Stop => call_and_show(socket, Request::Stop, Duration::from_secs(30)),
        LauncherAction::SetLogLevel(level) => call_and_show(
            socket,
            Request::LogLevel {
                detailed: level == tunnel_config::LauncherLogLevel::Detailed,
            },
            Duration::from_secs(5),
        ),
        LauncherAction::Connect(c) => {
            use tunnel_config::SessionSelection;
            // The launcher asks nothing after the password: -sessionselection is its only
            // answer, and without it the session limit fails the connection (exit code 2).
            let mut creds = Credentials {
                realm: c.realm.clone(),
                prompts: Answers {
                    at_session_limit: c.session_selection.map(|s| match s {
                        SessionSelection::Connect => SessionChoice::Oldest,
                        SessionSelection::Cancel => SessionChoice::Cancel,
                    }),
                    ..Answers::default()
                },
                ..Default::default()
            };
            match c.auth {
                LauncherAuth::Prompt { user } => {
                    creds.password = match read_password(false) {
                        Ok(p) => p,
                        Err(e) => {
                            eprintln!("tunnel launcher: reading the password: {e}");
                            return exit(code::BAD_PARAMETER);
                        }
                    };
                    creds.user = user;
                }
                LauncherAuth::Password { user, password } => {
                    creds.user = Some(user);
                    creds.password = if password.expose() == "-" {
                        match read_password(true) {
                            Ok(p) => p,
                            Err(e) => {
                                eprintln!("tunnel launcher: reading the password: {e}");
                                return exit(code::BAD_PARAMETER);
                            }
                        }
                    } else {
                        Some(password.expose().to_string())
                    };
                }
                LauncherAuth::Cookie(cookie) => creds.cookie = Some(cookie.expose().to_string()),
                LauncherAuth::Certificate { issued_to, user } => {
                    // A certificate of tunneld's store (`tunnel cert import`), by its "Issued
                    // To" or the name it is stored under; tunneld answers 6 without one.
                    creds.client_cert_name = Some(issued_to);
                    creds.user = user;
                }
                _ => {
                    eprintln!("tunnel launcher: this sign-in method is not supported");
                    return exit(code::BAD_PARAMETER);
                }
            }
            let secs = c.timeout.as_secs();
            call_and_show(
                socket,
                Request::Connect {
                    name: None,
                    url: Some(c.url.to_string()),
                    credentials: Box::new(creds),
                    timeout_secs: Some(secs),
                },
                wait(c.timeout),
            )
        }
        LauncherAction::SignOut(u) => call_and_show(
            socket,
            Request::Signout {
                name: u.url.host_name(),
            },
            wait(u.timeout),
        ),
        LauncherAction::Suspend(u) => call_and_show(
            socket,
            Request::Suspend {
                name: u.url.host_name(),
            },
            wait(u.timeout),
        ),
        LauncherAction::Resume(u) => call_and_show(
            socket,
            Request::Resume {
                name: u.url.host_name(),
            },
            wait(u.timeout),
        ),
        _ => {
            eprintln!("tunnel launcher: unsupported action");
            exit(code::BAD_PARAMETER)
        }
    }
}

/// The dynamic trust prompt: when the gateway's certificate is not trusted, the machine
/// settings allow users to trust certificates, and someone is at the terminal, ask. Returns
/// the pin to retry with.
fn trust_prompt(r: &Response) -> Option<String> {
    let pin = r.data.get("detail")?.get("pin")?.as_str()?.to_string();
    if r.data.get("dynamic_trust").and_then(|v| v.as_bool()) != Some(true) {
        return None;
    }
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    writeln!(tty, "tunnel: {}", r.message).ok()?;
    // allow-save false: the daemon keeps the pin for this connection only.
    let how_long = if r.data.get("allow_save").and_then(|v| v.as_bool()) == Some(false) {
        "for this connection"
    } else {
        "from now on"
    };
    write!(
        tty,
        "Trust this gateway certificate ({pin}) {how_long}? [y/N] "
    )
    .ok()?;
    tty.flush().ok()?;
    let mut answer = String::new();
    io::BufReader::new(tty).read_line(&mut answer).ok()?;
    matches!(answer.trim(), "y" | "Y" | "yes").then_some(pin)
}

fn show(request: &Request, r: &Response, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r.data).unwrap_or_default()
        );
        return exit(r.code);
    }
    match request {
        Request::Status { .. } if r.code == code::OK => {
            let list = r.data.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no connections");
            }
            for c in list {
                let f = |k: &str| {
                    c.get(k)
                        .map(|v| v.to_string().trim_matches('"').to_string())
                        .unwrap_or_default()
                };
                println!("{}: {}", f("name"), f("state"));
                for k in [
                    "server",
                    "ipv4",
                    "ipv6",
                    "transport",
                    "cipher",
                    "tun",
                    "uptime_secs",
                    "bytes_out",
                    "bytes_in",
                    "packets_out",
                    "packets_in",
                    "reconnects",
                    "last_error",
                    "portal",
                    "classifier",
                ] {
                    let v = f(k);
                    if !v.is_empty() && v != "null" {
                        println!("  {k:<12} {v}");
                    }
                }
                if let Some(d) = c.get("dns_applied").filter(|d| !d.is_null()) {
                    let list = |v: &serde_json::Value| {
                        v.as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| {
                                        x.as_str().map(str::to_string).unwrap_or(x.to_string())
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .unwrap_or_default()
                    };
                    println!(
                        "  {:<12} {} on {}: servers {}; search {}; match {}",
                        "dns",
                        d["mode"].as_str().unwrap_or_default(),
                        d["listen"].as_str().unwrap_or_default(),
                        list(&d["plan"]["servers"]),
                        list(&d["plan"]["search"]),
                        if d["plan"]["routing"]
                            .as_array()
                            .is_some_and(|a| a.is_empty())
                        {
                            "every name".to_string()
                        } else {
                            list(&d["plan"]["routing"])
                        }
                    );
                }
                for notice in c["notices"].as_array().into_iter().flatten() {
                    let text = notice.as_str().unwrap_or_default();
                    let mut lines = text.lines();
                    println!("  {:<12} {}", "notice", lines.next().unwrap_or_default());
                    for line in lines {
                        println!("  {:<12} {line}", "");
                    }
                }
            }
        }
        Request::Counters if r.code == code::OK => print!("{}", r.message),
        Request::CertList if r.code == code::OK => {
            let list = r.data.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no stored certificates");
            }
            for c in list {
                let f = |k: &str| c[k].as_str().unwrap_or("-").to_string();
                println!("{}", f("name"));
                println!("  issued to  {}", f("issued_to"));
                println!("  issuer     {}", f("issuer"));
                println!("  not after  {}", f("not_after"));
                println!("  sha256     {}", f("sha256"));
            }
        }
        Request::List if r.code == code::OK => {
            let list = r.data.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no stored connections");
            }
            for c in list {
                let urls: Vec<String> = c["urls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|u| u.as_str().map(String::from))
                    .collect();
                println!(
                    "{}  {}",
                    c["name"].as_str().unwrap_or_default(),
                    urls.join(" ")
                );
            }
        }
        _ if r.code == code::OK => println!("{}", r.message),
        _ => eprintln!("tunnel: {}", r.message),
    }
    exit(r.code)
}
