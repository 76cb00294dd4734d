//! The control socket's protocol: one JSON request per connection, one JSON response back,
//! each on a line. The socket is root-owned with mode 0600, and the daemon also checks the
//! peer's credentials, so a non-root caller is refused with a message saying so.
//!
//! Every response carries a launcher exit code (`code`, the pulselauncher table: 0 success,
//! 1 bad parameter, 2 connect failed, 4 no such connection, 6 certificate error, 7 timeout,
//! 8 user connections not allowed, 25 invalid action for the current state, 100 general
//! error), so `tunnel` and `tunnel launcher` exit with the same numbers.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Where `tunneld` listens by default.
pub const DEFAULT_SOCKET: &str = "/run/tunnel/tunneld.sock";

/// Launcher exit codes used in responses.
pub mod code {
    pub const OK: i32 = 0;
    pub const BAD_PARAMETER: i32 = 1;
    pub const CONNECT_FAILED: i32 = 2;
    pub const NO_SUCH_CONNECTION: i32 = 4;
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
}

impl ClientCertPem {
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
    #[error("only root may control tunneld (the control socket {path} refused us)")]
    NotRoot { path: String },
    #[error("talking to tunneld: {0}")]
    Io(#[from] io::Error),
    #[error("tunneld answered something unreadable: {0}")]
    Protocol(String),
}

/// Sends one request and waits (up to `timeout`) for the answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let path = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning { path: path.clone() }
        }
        io::ErrorKind::PermissionDenied => ControlError::NotRoot { path: path.clone() },
        _ => ControlError::Io(e),
    })?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line =
        serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.trim().is_empty() {
        return Err(ControlError::Protocol(
            "no answer (is the caller root?)".into(),
        ));
    }
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(e.to_string()))
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
}
