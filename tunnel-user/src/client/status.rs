//! What a connection shows of itself: where it is ([`State`]), what carries its packets,
//! its counters, and why it failed ([`Failure`]), typed down to the error that caused it.
//! [`Shared`] is the part the daemon, the connection's task and its packet threads all see.
//!
//! Errors here keep their cause as a source; [`Report`] writes one with its cause, the
//! sentence the status, the event log and the CLI show.

use std::{
    collections::BTreeMap,
    error::Error,
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
    time::{Duration, Instant},
};

use serde::{Serialize, Serializer};
use tunnel_proto::SessionError;

use super::{
    liveness::Heard,
    tls::{Pin, Untrusted},
    tunnel::SetupError,
};

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Connecting,
    Connected,
    Reconnecting,
    Suspended,
    Failed,
    Disconnected,
    CaptivePortal,
}

/// Which transport carries packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Esp,
    Tls,
}

/// What `tunnel status` shows of a connection.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub state: State,
    pub server: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub transport: Option<Transport>,
    pub cipher: Option<String>,
    pub tun: Option<String>,
    pub dns: Vec<IpAddr>,
    pub search_domains: Vec<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// Seconds since the session was established.
    pub uptime_secs: Option<u64>,
    pub last_error: Option<Failure>,
    /// The gateway's sign-in notices, as it sent them.
    pub notices: Vec<String>,
    pub reconnects: u64,
    /// The kernel classifier's counters for this connection: reason name to packets.
    pub classifier: BTreeMap<String, u64>,
    /// The captive portal the connection waits behind (its address, when it said), while
    /// the state is `captive_portal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portal: Option<String>,
    /// The DNS applied for this connection (mode, servers, domains), when it is in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_applied: Option<super::dns::Applied>,
    /// When the current session was established (`uptime_secs` is counted from it).
    #[serde(skip)]
    pub(super) established_at: Option<Instant>,
}

impl Status {
    /// A connection that has just started.
    pub(super) fn new(name: String) -> Status {
        Status {
            name,
            state: State::Connecting,
            server: None,
            ipv4: None,
            ipv6: None,
            transport: None,
            cipher: None,
            tun: None,
            dns: Vec::new(),
            search_domains: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            bytes_out: 0,
            bytes_in: 0,
            packets_out: 0,
            packets_in: 0,
            uptime_secs: None,
            last_error: None,
            notices: Vec::new(),
            reconnects: 0,
            classifier: BTreeMap::new(),
            dns_applied: None,
            portal: None,
            established_at: None,
        }
    }
}

/// Counters the packet threads update.
#[derive(Default)]
pub(super) struct Traffic {
    pub(super) bytes_out: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) packets_out: AtomicU64,
    pub(super) packets_in: AtomicU64,
}

/// What the daemon, the connection's task and its packet threads share.
pub(super) struct Shared {
    status: Mutex<Status>,
    pub(super) traffic: Traffic,
    /// When anything last came from the gateway, for dead-peer detection.
    pub(super) heard: Heard,
}

impl Shared {
    pub(super) fn new(name: String) -> Shared {
        Shared {
            status: Mutex::new(Status::new(name)),
            traffic: Traffic::default(),
            heard: Heard::new(Instant::now()),
        }
    }

    /// The status to read or change (a thread that panicked holding it left it readable).
    pub(super) fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a connection failed, mapped onto the launcher's exit codes by the daemon.
#[derive(Clone, Debug)]
pub enum Failure {
    /// Login refused (wrong password, unknown user...).
    Auth(Refused),
    /// The gateway asks for a user and password and none were given; `unmet`: the note of
    /// a certificate request no stored certificate met.
    CredentialsNeeded { unmet: Option<String> },
    /// A certificate, the gateway's or ours, ended the connection.
    Certificate(CertificateFailure),
    /// No gateway could be reached or the session could not be set up.
    Connect(ConnectError),
    /// Gave up after `disconnectTimeoutInSeconds`; `last` is why the last attempt failed.
    Timeout { outage: Duration, last: Lost },
    /// A prompt of the login could not be answered.
    Prompt(String),
    /// The user gave up at a prompt (launcher exit code 5).
    Cancelled(String),
    /// The gateway asked for something this client does not support.
    Unsupported(String),
}

impl Failure {
    /// The pin of a gateway certificate that was not trusted, for the user to decide on.
    pub fn untrusted_pin(&self) -> Option<Pin> {
        match self {
            Failure::Certificate(CertificateFailure::Untrusted { why, .. }) => Some(why.seen()),
            _ => None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Prompt(m) | Failure::Cancelled(m) | Failure::Unsupported(m) => f.write_str(m),
            Failure::Auth(r) => r.fmt(f),
            Failure::CredentialsNeeded { unmet } => write!(
                f,
                "the gateway asks for a username and password, and none were given{}",
                Noted(unmet)
            ),
            Failure::Certificate(c) => Report(c).fmt(f),
            Failure::Connect(e) => Report(e).fmt(f),
            Failure::Timeout { outage, last } => write!(
                f,
                "no gateway reachable for {} s: {}",
                outage.as_secs(),
                Report(last)
            ),
        }
    }
}

impl Error for Failure {}

/// How a failure goes over the control socket and into `tunnel status --json`:
/// `{"kind": ..., "detail": message}`, a certificate's detail with the pin to offer.
impl Serialize for Failure {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
        enum Wire {
            Auth(String),
            CredentialsNeeded(String),
            Certificate {
                message: String,
                pin: Option<String>,
            },
            Connect(String),
            Timeout(String),
            Prompt(String),
            Cancelled(String),
            Unsupported(String),
        }
        let message = self.to_string();
        match self {
            Failure::Auth(_) => Wire::Auth(message),
            Failure::CredentialsNeeded { .. } => Wire::CredentialsNeeded(message),
            Failure::Certificate(_) => Wire::Certificate {
                message,
                pin: self.untrusted_pin().map(|p| p.to_string()),
            },
            Failure::Connect(_) => Wire::Connect(message),
            Failure::Timeout { .. } => Wire::Timeout(message),
            Failure::Prompt(_) => Wire::Prompt(message),
            Failure::Cancelled(_) => Wire::Cancelled(message),
            Failure::Unsupported(_) => Wire::Unsupported(message),
        }
        .serialize(serializer)
    }
}

/// Why the gateway refused the login. `unmet`: the note of a certificate request no stored
/// certificate met, which may be why.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Refused {
    #[error("realm '{realm}' is not offered by the gateway (it offers {})", .offered.join(", "))]
    Realm { realm: String, offered: Vec<String> },
    #[error("the gateway refused the username or password{}", Noted(.unmet))]
    Password { unmet: Option<String> },
    #[error("login failed: {why:?}{}", Noted(.unmet))]
    Failed {
        why: tunnel_proto::AuthFailure,
        unmet: Option<String>,
    },
}

/// A note in parentheses after a message, if there is one.
struct Noted<'a>(&'a Option<String>);

impl fmt::Display for Noted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(note) => write!(f, " ({note})"),
            None => Ok(()),
        }
    }
}

/// A certificate that ended the connection: trying again cannot succeed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CertificateFailure {
    /// The gateway's certificate is not trusted.
    #[error("TLS with {gateway}")]
    Untrusted {
        gateway: String,
        #[source]
        why: Untrusted,
    },
    /// The gateway's alert refusing the client certificate we presented, or asking for one
    /// we did not have.
    #[error("{}", refused(.alert, .offered))]
    ClientRefused {
        alert: rustls::AlertDescription,
        offered: Offered,
    },
    /// The TLS configuration could not be built (rustls's reason).
    #[error("{0}")]
    Config(String),
}

/// What we offered a gateway that asked for a client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offered {
    /// This stored or given certificate.
    Presented { name: String },
    /// Nothing: no stored certificate was issued by one of these (the gateway's CAs).
    NoneMatched { issuers: Vec<String> },
    /// Nothing, and the gateway named no CA.
    Nothing,
}

fn refused(alert: &rustls::AlertDescription, offered: &Offered) -> String {
    match offered {
        Offered::Presented { name } => {
            format!("the gateway refused the client certificate '{name}' ({alert:?})")
        }
        Offered::NoneMatched { issuers } => format!(
            "the gateway requires a client certificate from {} ({alert:?}), and no stored certificate matched",
            issuers.join("; ")
        ),
        Offered::Nothing => format!("the gateway requires a client certificate ({alert:?})"),
    }
}

/// Why a connection could not be made or kept.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    /// The session was lost (the last reason, while reconnecting).
    #[error(transparent)]
    Lost(#[from] Lost),
    /// The gateway's configuration could not be applied to this host.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The gateway's host is no name a certificate can be checked against.
    #[error("{host}")]
    ServerName {
        host: String,
        #[source]
        source: Arc<rustls_pki_types::InvalidDnsNameError>,
    },
    /// The connection lists no gateway.
    #[error("no gateway to connect to")]
    NoGateway,
    /// The protocol's state machine refused to start.
    #[error("starting the session")]
    Start(#[source] SessionError),
}

/// Why a session ended in a way that a new one may mend: the connection reconnects.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Lost {
    #[error("resolving {host}")]
    Resolve {
        host: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("TLS with {gateway}")]
    Tls {
        gateway: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("registering the TLS connection")]
    Register(#[source] Arc<io::Error>),
    #[error("the gateway closed the connection")]
    Closed,
    #[error("reading from the gateway")]
    Read(#[source] Arc<io::Error>),
    /// The state machine closed the session on the gateway's bytes.
    #[error("protocol error")]
    Protocol(#[source] SessionError),
    /// The gateway ended the session (restart, idle timeout...): log in again.
    #[error("the gateway ended the session: {message}")]
    Terminated { message: String },
    /// Dead-peer detection on TLS found the gateway gone.
    #[error("the gateway did not answer {probes} probes after {} s of silence", .idle.as_secs())]
    Unanswered { probes: u32, idle: Duration },
    /// The route to the gateway leaves through another uplink (event 304).
    #[error("the route to the gateway changed ({from} -> {to})")]
    RouteChanged { from: String, to: String },
}

/// Writes an error of this module followed by its source, one level down: the sources are
/// other crates' errors, which write their own causes into their messages.
pub(crate) struct Report<'a, E: Error>(pub(crate) &'a E);

impl<E: Error> fmt::Display for Report<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        if let Some(source) = self.0.source() {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(text: &str) -> Arc<io::Error> {
        Arc::new(io::Error::other(text.to_string()))
    }

    #[test]
    fn failures_read_as_before() {
        let cases: Vec<(Failure, &str)> = vec![
            (
                Failure::Connect(
                    Lost::Connect {
                        addr: "192.0.2.1:443".parse().unwrap(),
                        source: io("refused"),
                    }
                    .into(),
                ),
                "connecting to 192.0.2.1:443: refused",
            ),
            (
                Failure::Connect(Lost::Closed.into()),
                "the gateway closed the connection",
            ),
            (
                Failure::Timeout {
                    outage: Duration::from_millis(30_900),
                    last: Lost::Read(io("reset")),
                },
                "no gateway reachable for 30 s: reading from the gateway: reset",
            ),
            (
                Failure::Connect(
                    Lost::Unanswered {
                        probes: 5,
                        idle: Duration::from_secs(60),
                    }
                    .into(),
                ),
                "the gateway did not answer 5 probes after 60 s of silence",
            ),
            (
                Failure::Auth(Refused::Realm {
                    realm: "x".into(),
                    offered: vec!["Users".into(), "Admins".into()],
                }),
                "realm 'x' is not offered by the gateway (it offers Users, Admins)",
            ),
            (
                Failure::Auth(Refused::Failed {
                    why: tunnel_proto::AuthFailure::EapFailure,
                    unmet: Some("the gateway asked for a client certificate from any issuer, and no stored certificate matched".into()),
                }),
                "login failed: EapFailure (the gateway asked for a client certificate from any issuer, and no stored certificate matched)",
            ),
            (
                Failure::CredentialsNeeded { unmet: None },
                "the gateway asks for a username and password, and none were given",
            ),
            (
                Failure::Connect(SetupError::NoAddress.into()),
                "the gateway assigned no address",
            ),
            (
                Failure::Certificate(CertificateFailure::ClientRefused {
                    alert: rustls::AlertDescription::UnknownCA,
                    offered: Offered::Presented { name: "old".into() },
                }),
                "the gateway refused the client certificate 'old' (UnknownCA)",
            ),
            (
                Failure::Certificate(CertificateFailure::ClientRefused {
                    alert: rustls::AlertDescription::CertificateRequired,
                    offered: Offered::NoneMatched {
                        issuers: vec!["CN=A".into(), "CN=B".into()],
                    },
                }),
                "the gateway requires a client certificate from CN=A; CN=B (CertificateRequired), and no stored certificate matched",
            ),
        ];
        for (failure, text) in cases {
            assert_eq!(failure.to_string(), text);
        }
    }

    #[test]
    fn a_failure_goes_out_as_kind_and_detail() {
        let f = Failure::Connect(Lost::Closed.into());
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::json!({"kind": "connect", "detail": "the gateway closed the connection"})
        );
        let f = Failure::Auth(Refused::Password { unmet: None });
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::json!({"kind": "auth", "detail": "the gateway refused the username or password"})
        );
        let seen = Pin::parse("pin-sha256:otI/3nrjGjN+MR5SFOD8hTzpnsZQAusZrkq/vH0/3mQ=").unwrap();
        let f = Failure::Certificate(CertificateFailure::Untrusted {
            gateway: "https://gw:443/".into(),
            why: Untrusted::PinMismatch {
                seen,
                pin: Pin::parse("pin-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap(),
            },
        });
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["kind"], "certificate");
        assert_eq!(v["detail"]["pin"], seen.to_string());
        assert_eq!(
            v["detail"]["message"],
            format!(
                "TLS with https://gw:443/: the gateway's certificate {seen} does not match the pin pin-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            )
        );
    }
}
