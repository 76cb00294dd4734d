//! The control socket's protocol: one JSON request per connection, one JSON response back,
//! each on a line. The socket is root-owned with mode 0600, and the daemon also checks the
//! peer's credentials, so a non-root caller is refused with a message saying so.
//!
//! A connect whose caller answers prompts (`credentials.prompts.interactive`) is a
//! conversation: before the response, tunneld may send prompt lines, and the caller answers
//! each on the same socket.
//!
//! ```text
//!  tunnel                                   tunneld
//!  {"op":"connect",...,"interactive":true} ─▶
//!                                          ◀─ {"prompt":{"kind":"token","prompt":"Token code","next":false}}
//!  {"answer":{"kind":"token","code":"…"}}  ─▶
//!                                          ◀─ {"code":0,"message":"connected 'corp'","data":{…}}
//! ```
//!
//! Every response carries a launcher exit code (`code`, the pulselauncher table: 0 success,
//! 1 bad parameter, 2 connect failed, 4 no such connection, 5 cancelled by the user at a
//! prompt, 6 certificate error, 7 timeout,
//! 8 user connections not allowed, 25 invalid action for the current state, 100 general
//! error), so `tunnel` and `tunnel launcher` exit with the same numbers.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

pub use super::prompts::{Answer, Answers, ListedSession, Prompt, SessionChoice};

/// Where `tunneld` listens by default.
pub const DEFAULT_SOCKET: &str = "/run/tunnel/tunneld.sock";

/// Launcher exit codes used in responses.
pub mod code {
    pub const OK: i32 = 0;
    pub const BAD_PARAMETER: i32 = 1;
    pub const CONNECT_FAILED: i32 = 2;
    pub const NO_SUCH_CONNECTION: i32 = 4;
    /// The user gave up at a prompt (declined a notice, ended no session).
    pub const CANCELLED: i32 = 5;
    pub const CERTIFICATE: i32 = 6;
    pub const TIMEOUT: i32 = 7;
    /// The machine settings do not allow user connections (`user-connection: "false"`).
    pub const USER_CONNECTION_NOT_ALLOWED: i32 = 8;
    pub const INVALID_STATE: i32 = 25;
    pub const GENERAL: i32 = 100;
}

/// Connection parameters given on the command line (launcher `-url` style, or overrides for
/// a stored connection).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
    pub realm: Option<String>,
    /// A DSID cookie from another authentication (launcher `-d`).
    pub cookie: Option<String>,
    /// `pin-sha256:...` to trust for this connection (learned for later ones too, unless
    /// the machine settings forbid saving; it never replaces the CAs when they forbid
    /// dynamic trust).
    pub pin: Option<String>,
    /// Client certificate and key, read by the caller (tunneld opens no path a request
    /// names: it may not be allowed to, and it must not act on the caller's behalf where the
    /// caller could not).
    pub client_cert: Option<ClientCertPem>,
    /// A certificate of tunneld's store to present, by its name or "Issued To" (`tunnel
    /// connect --client-cert`, the launcher's `-cert`); it overrides the connection's.
    #[serde(default)]
    pub client_cert_name: Option<String>,
    /// Ivanti Tunnel key-value pairs for this connection (`IPRoutes`, `SplitUDPPortList`...).
    #[serde(default)]
    pub kvps: Vec<(String, String)>,
    /// Per-app: the cgroup (v2 directory) whose processes use this connection; None for a
    /// device-level connection.
    pub app_cgroup: Option<PathBuf>,
    /// Answers to the login's prompts given up front, and whether the caller answers the
    /// others on the socket.
    #[serde(default)]
    pub prompts: Answers,
}

/// A client certificate chain and its private key, PEM text. Its `Debug` leaves the key out.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientCertPem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for ClientCertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertPem")
            .field("cert_bytes", &self.cert.len())
            .finish_non_exhaustive()
    }
}

/// Larger than any certificate chain or key file; a bound on what is read and sent.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a client certificate or key file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertFileError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {}: larger than {max} bytes, not a PEM file", path.display())]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        max: u64,
    },
    #[error("PKCS#12 file {}: {reason}", path.display())]
    Pkcs12 { path: PathBuf, reason: String },
}

impl ClientCertPem {
    /// Reads a PKCS#12 (`.p12`, `.pfx`) file's first key and its certificate chain, opened
    /// with `password`.
    pub fn read_pkcs12(path: &Path, password: &str) -> Result<ClientCertPem, CertFileError> {
        use std::io::Read as _;
        let bad = |reason: String| CertFileError::Pkcs12 {
            path: path.to_path_buf(),
            reason,
        };
        let mut der = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut der))
            .map_err(|source| CertFileError::Io {
                what: "PKCS#12 file",
                path: path.to_path_buf(),
                source,
            })?;
        if der.len() as u64 > MAX_PEM_BYTES {
            return Err(bad(format!("larger than {MAX_PEM_BYTES} bytes")));
        }
        let store = p12_keystore::KeyStore::from_pkcs12(
            &der,
            password,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .map_err(|e| bad(format!("cannot be opened ({e}); a wrong password?")))?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| bad("holds no private key with its certificate".into()))?;
        let pem = |label: &str, der: &[u8]| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let mut out = format!("-----BEGIN {label}-----\n");
            for line in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
            out.push_str(&format!("-----END {label}-----\n"));
            out
        };
        Ok(ClientCertPem {
            cert: chain
                .certs()
                .iter()
                .map(|c| pem("CERTIFICATE", c.as_der()))
                .collect(),
            key: pem("PRIVATE KEY", chain.key().as_der()),
        })
    }

    /// Reads the certificate chain from `cert` and the key from `key` (default: the same
    /// file), with the caller's own rights.
    pub fn read(cert: &Path, key: Option<&Path>) -> Result<ClientCertPem, CertFileError> {
        fn read(what: &'static str, path: &Path) -> Result<String, CertFileError> {
            use std::io::Read as _;
            let io = |source| CertFileError::Io {
                what,
                path: path.to_path_buf(),
                source,
            };
            let mut text = String::new();
            std::fs::File::open(path)
                .map_err(io)?
                .take(MAX_PEM_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(io)?;
            if text.len() as u64 > MAX_PEM_BYTES {
                return Err(CertFileError::TooLarge {
                    what,
                    path: path.to_path_buf(),
                    max: MAX_PEM_BYTES,
                });
            }
            Ok(text)
        }
        Ok(ClientCertPem {
            cert: read("client certificate", cert)?,
            key: read("client key", key.unwrap_or(cert))?,
        })
    }
}

/// What the CLI asks of the daemon.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Connect a stored connection (`name`) or an ad-hoc `url`.
    Connect {
        name: Option<String>,
        url: Option<String>,
        #[serde(default)]
        credentials: Box<Credentials>,
        /// Give up after this long (launcher `-t`, 45-600 s).
        timeout_secs: Option<u64>,
    },
    /// Disconnect, keeping the session at the gateway (it may be resumed later).
    Disconnect {
        name: String,
    },
    /// Disconnect and sign out at the gateway.
    Signout {
        name: String,
    },
    Suspend {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Disconnect everything (`-stop`).
    Stop,
    /// State of one or all connections.
    Status {
        name: Option<String>,
    },
    /// The kernel data path's counters.
    Counters,
    /// Stored connections.
    List,
    /// Add a stored connection (JSON of the store's connection type).
    Add {
        connection: serde_json::Value,
    },
    /// Change fields of a stored connection.
    Edit {
        name: String,
        changes: serde_json::Value,
    },
    Delete {
        name: String,
    },
    /// Import a `.pulsepreconfig` file's text.
    Import {
        text: String,
    },
    /// A `pulsesecureclient://` launch URL.
    Open {
        url: String,
    },
    /// Switch the event log between normal and detailed (launcher `-loglevel`).
    LogLevel {
        detailed: bool,
    },
    /// Store a client certificate (PEM chain and key, read by the caller) under `name` or
    /// its "Issued To" name.
    CertImport {
        pem: ClientCertPem,
        name: Option<String>,
    },
    /// The stored client certificates.
    CertList,
    CertDelete {
        name: String,
    },
    /// The diagnostics bundle, as the response's data; the caller writes it
    /// (`super::diagnostics`).
    Diagnostics,
    Version,
    /// Moves the caller (its process, by the socket's peer credentials) into the captive
    /// portal's cgroup, whose sockets may reach ports 53, 80 and 443 while a connection waits
    /// behind a portal (`tunnel portal`).
    Portal,
}

impl Request {
    /// Whether members of tunneld's control group may ask it: using the connections there
    /// are and seeing their state. Adding, editing, deleting and importing connections,
    /// machine settings, certificates, the log level, stopping every connection and the
    /// diagnostics bundle stay root's. An `Open` that would store a new connection is
    /// refused to members by the daemon.
    pub fn for_members(&self) -> bool {
        matches!(
            self,
            Request::Connect { .. }
                | Request::Disconnect { .. }
                | Request::Signout { .. }
                | Request::Suspend { .. }
                | Request::Resume { .. }
                | Request::Status { .. }
                | Request::Counters
                | Request::List
                | Request::Open { .. }
                | Request::Version
                | Request::Portal
        )
    }
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// A launcher exit code (see [`code`]).
    pub code: i32,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            code: code::OK,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    pub fn with(code: i32, message: impl Into<String>) -> Response {
        Response {
            code,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    pub fn data(mut self, data: impl Serialize) -> Response {
        self.data = serde_json::to_value(data).unwrap_or(serde_json::Value::Null);
        self
    }
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error(
        "tunneld is not running (no socket at {path}): start it with `tunneld` or `systemctl start tunneld`"
    )]
    NotRunning { path: String },
    #[error(
        "only root and members of tunneld's control group may control tunneld (the control socket {path} refused us)"
    )]
    NotRoot { path: String },
    #[error("talking to tunneld: {0}")]
    Io(#[from] io::Error),
    #[error("tunneld answered something unreadable: {0}")]
    Protocol(String),
}

/// A line from tunneld after a request: a prompt to answer, or the response that ends it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Reply {
    Prompt { prompt: Prompt },
    Done(Response),
}

/// The caller's line after a prompt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnswerLine {
    pub answer: Answer,
}

/// Sends one request and waits (up to `timeout`) for the answer; the request answers no
/// prompts.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ControlError> {
    call_answering(socket, request, timeout, |_| None)
}

/// Sends one request and answers tunneld's prompts with `answer` until the response comes
/// (each read waits up to `timeout`). `answer` returning None means this caller answers no
/// prompts, and a prompt is then a protocol error.
pub fn call_answering(
    socket: &Path,
    request: &Request,
    timeout: Duration,
    answer: impl FnMut(&Prompt) -> Option<Answer>,
) -> Result<Response, ControlError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning { path: path.clone() }
        }
        io::ErrorKind::PermissionDenied => ControlError::NotRoot { path: path.clone() },
        _ => ControlError::Io(e),
    })?;
    converse(stream, request, timeout, answer)
}

/// The caller's side of one request on a connected stream.
pub fn converse(
    mut stream: UnixStream,
    request: &Request,
    timeout: Duration,
    mut answer: impl FnMut(&Prompt) -> Option<Answer>,
) -> Result<Response, ControlError> {
    stream.set_read_timeout(Some(timeout))?;
    write_line(&mut stream, request)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            return Err(ControlError::Protocol(
                "no answer (is the caller root?)".into(),
            ));
        }
        match serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))? {
            Reply::Done(response) => return Ok(response),
            Reply::Prompt { prompt } => {
                let Some(answer) = answer(&prompt) else {
                    return Err(ControlError::Protocol(format!(
                        "tunneld asks for {}, but this request answers no prompts",
                        prompt.what()
                    )));
                };
                write_line(&mut stream, &AnswerLine { answer })?;
            }
        }
    }
}

fn write_line(stream: &mut UnixStream, what: &impl Serialize) -> Result<(), ControlError> {
    let mut line =
        serde_json::to_string(what).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    Ok(())
}

/// tunneld's side of a prompt: sends it and reads the answer. A caller that went away, or
/// answered something unreadable, has given up: [`Answer::Cancel`].
pub(crate) async fn ask(
    rd: &mut (impl AsyncBufRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    prompt: &Prompt,
) -> Answer {
    let sent = async {
        let mut out = serde_json::to_string(&Reply::Prompt {
            prompt: prompt.clone(),
        })
        .map_err(io::Error::other)?;
        out.push('\n');
        wr.write_all(out.as_bytes()).await?;
        let mut line = String::new();
        rd.read_line(&mut line).await?;
        serde_json::from_str::<AnswerLine>(&line).map_err(io::Error::other)
    };
    match sent.await {
        Ok(AnswerLine { answer }) => answer,
        Err(e) => {
            tracing::warn!(error = %e, "the caller gave no answer to {}", prompt.what());
            Answer::Cancel
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_is_read_whole_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("both.pem");
        std::fs::write(&both, "CERT\nKEY\n").unwrap();
        let pem = ClientCertPem::read(&both, None).unwrap();
        assert_eq!(
            (pem.cert.as_str(), pem.key.as_str()),
            ("CERT\nKEY\n", "CERT\nKEY\n")
        );
        assert!(
            !format!("{pem:?}").contains("KEY"),
            "Debug leaves the key out"
        );
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "KEY\n").unwrap();
        assert_eq!(ClientCertPem::read(&both, Some(&key)).unwrap().key, "KEY\n");
        assert!(matches!(
            ClientCertPem::read(&dir.path().join("missing"), None),
            Err(CertFileError::Io {
                what: "client certificate",
                ..
            })
        ));
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; MAX_PEM_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            ClientCertPem::read(&both, Some(&huge)),
            Err(CertFileError::TooLarge {
                what: "client key",
                ..
            })
        ));
    }

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Connect {
            name: Some("corp".into()),
            url: None,
            credentials: Box::new(Credentials {
                user: Some("alice".into()),
                ..Default::default()
            }),
            timeout_secs: Some(45),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""op":"connect""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        let parsed: Request = serde_json::from_str(r#"{"op":"status","name":null}"#).unwrap();
        assert_eq!(parsed, Request::Status { name: None });
        assert!(serde_json::from_str::<Request>(r#"{"op":"launch_missiles"}"#).is_err());
    }

    /// tunneld's side of a conversation on `stream`: reads the request, asks `prompts`,
    /// answers with a response listing the answers it got.
    fn tunneld_side(stream: UnixStream, prompts: Vec<Prompt>) -> (Request, Vec<Answer>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            stream.set_nonblocking(true).unwrap();
            let stream = tokio::net::UnixStream::from_std(stream).unwrap();
            let (rd, mut wr) = stream.into_split();
            let mut rd = tokio::io::BufReader::new(rd);
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            let request: Request = serde_json::from_str(&line).unwrap();
            let mut answers = Vec::new();
            for p in &prompts {
                answers.push(ask(&mut rd, &mut wr, p).await);
            }
            let done = Reply::Done(Response::ok(format!("{} answers", answers.len())));
            let mut out = serde_json::to_string(&done).unwrap();
            out.push('\n');
            let _ = wr.write_all(out.as_bytes()).await;
            (request, answers)
        })
    }

    fn connect_request(interactive: bool) -> Request {
        Request::Connect {
            name: Some("corp".into()),
            url: None,
            credentials: Box::new(Credentials {
                prompts: Answers {
                    interactive,
                    ..Answers::default()
                },
                ..Default::default()
            }),
            timeout_secs: Some(45),
        }
    }

    #[test]
    fn a_connect_is_a_conversation_of_prompts_and_answers() {
        let (cli, daemon) = UnixStream::pair().unwrap();
        let prompts = vec![
            Prompt::Token {
                prompt: "Token code".into(),
                next: false,
            },
            Prompt::Notice {
                text: "Authorised use only".into(),
            },
            Prompt::SessionLimit {
                sessions: vec![ListedSession {
                    id: "s1".into(),
                    from: "192.0.2.9".into(),
                    started: 1_700_000_000,
                }],
            },
        ];
        let server = std::thread::spawn({
            let prompts = prompts.clone();
            move || tunneld_side(daemon, prompts)
        });
        let mut seen = Vec::new();
        let response = converse(cli, &connect_request(true), Duration::from_secs(10), |p| {
            seen.push(p.clone());
            Some(match p {
                Prompt::Token { .. } => Answer::Token {
                    code: "654321".into(),
                },
                Prompt::Notice { .. } => Answer::AcceptNotice,
                Prompt::SessionLimit { sessions } => Answer::EndSession {
                    id: sessions[0].id.clone(),
                },
                Prompt::NewPassword => Answer::Cancel,
            })
        })
        .unwrap();
        let (request, answers) = server.join().unwrap();
        assert_eq!(request, connect_request(true));
        assert_eq!(seen, prompts);
        assert_eq!(
            answers,
            vec![
                Answer::Token {
                    code: "654321".into()
                },
                Answer::AcceptNotice,
                Answer::EndSession { id: "s1".into() },
            ]
        );
        assert_eq!((response.code, response.message.as_str()), (0, "3 answers"));
    }

    #[test]
    fn a_caller_that_answers_nothing_or_goes_away_ends_the_conversation() {
        // A caller that answers no prompts stops at the first one and says why.
        let (cli, daemon) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || tunneld_side(daemon, vec![Prompt::NewPassword]));
        let err = converse(
            cli,
            &connect_request(false),
            Duration::from_secs(10),
            |_| None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("a new password"),
            "the error names the prompt: {err}"
        );
        // Its side of the socket is closed: tunneld reads that as giving up.
        let (_, answers) = server.join().unwrap();
        assert_eq!(answers, vec![Answer::Cancel]);
    }

    #[test]
    fn response_codes_are_the_launchers() {
        use tunnel_config::ExitCode;
        for (ours, launcher) in [
            (code::OK, ExitCode::Success),
            (code::BAD_PARAMETER, ExitCode::BadParameter),
            (code::CONNECT_FAILED, ExitCode::ConnectFailed),
            (code::NO_SUCH_CONNECTION, ExitCode::NoSuchConnection),
            (code::CANCELLED, ExitCode::UserCancelled),
            (code::CERTIFICATE, ExitCode::CertificateError),
            (code::TIMEOUT, ExitCode::Timeout),
            (
                code::USER_CONNECTION_NOT_ALLOWED,
                ExitCode::UserConnectionNotAllowed,
            ),
            (code::INVALID_STATE, ExitCode::InvalidState),
            (code::GENERAL, ExitCode::General),
        ] {
            assert_eq!(ours, launcher.code(), "{launcher:?}");
        }
    }
}
