//! One password (or certificate) login, driven by the project's own client state machine
//! over tokio-rustls from a chosen source address, and what became of it as the client saw
//! it. The password storms are many of these at once; the login tests use it one at a time.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use rustls::{RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tunnel_proto::{AuthFailure, Client, ClientConfig, ClientEvent};

use crate::client::tls::{ClientCert, Pin, Trust, client_config};

/// How long one login may take before the client gives up.
const LOGIN_DEADLINE: Duration = Duration::from_secs(60);

/// What became of one login, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Configured: the session was established (then logged out).
    Accepted,
    /// Asked for the password again: the credentials were checked and are wrong.
    AskedAgain,
    /// Refused with this message.
    Refused(String),
    /// Anything else: the TLS handshake failed, the connection closed, ...
    Other(String),
}

impl Outcome {
    /// Whether it was refused with a message containing `part`.
    pub fn refused_with(&self, part: &str) -> bool {
        matches!(self, Outcome::Refused(m) if m.contains(part))
    }

    /// A short name for counting: `accepted`, `checked`, `too many`, `busy`, `no address`,
    /// `refused`, `closed`. (The gateway's refusals are told apart by their wording: the
    /// message is all the protocol carries.)
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::AskedAgain => "checked",
            o if o.refused_with("Too many failed logins") => "too many",
            o if o.refused_with("busy") => "busy",
            o if o.refused_with("No address") => "no address",
            Outcome::Refused(_) => "refused",
            Outcome::Other(_) => "closed",
        }
    }
}

/// One login attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub source: IpAddr,
    pub user: String,
    pub password: String,
    /// The realm to choose when asked (default: the first offered).
    pub realm: Option<String>,
    pub cert: Option<ClientCert>,
}

impl Attempt {
    pub fn new(source: IpAddr, user: &str, password: &str) -> Attempt {
        Attempt {
            source,
            user: user.to_string(),
            password: password.to_string(),
            realm: None,
            cert: None,
        }
    }

    pub fn realm(mut self, realm: &str) -> Attempt {
        self.realm = Some(realm.to_string());
        self
    }

    pub fn cert(mut self, cert: ClientCert) -> Attempt {
        self.cert = Some(cert);
        self
    }
}

/// Logs in to the gateway at `to` (certificate pinned to `pin`) as `a` says.
pub async fn attempt(to: SocketAddr, pin: Pin, a: &Attempt) -> Outcome {
    match drive(to, pin, a).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Other(e),
    }
}

/// Runs `all` at once on a runtime of the calling thread (in its network namespace);
/// outcomes in the order of `all`.
pub fn attempts(to: SocketAddr, pin: Pin, all: Vec<Attempt>) -> std::io::Result<Vec<Outcome>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(async move {
        let tasks: Vec<_> = all
            .into_iter()
            .map(|a| tokio::spawn(async move { attempt(to, pin, &a).await }))
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap_or_else(|e| Outcome::Other(e.to_string())));
        }
        outcomes
    }))
}

async fn drive(to: SocketAddr, pin: Pin, a: &Attempt) -> Result<Outcome, String> {
    let tcp = super::sustain::connect(to, Some(a.source)).await?;
    Ok(over(tcp, to, pin, a).await)
}

/// Logs in over `tcp`, a connection to the gateway at `to`, as `a` says.
pub(super) async fn over(tcp: TcpStream, to: SocketAddr, pin: Pin, a: &Attempt) -> Outcome {
    match login(tcp, to, pin, a).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Other(e),
    }
}

async fn login(tcp: TcpStream, to: SocketAddr, pin: Pin, a: &Attempt) -> Result<Outcome, String> {
    let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
    let trust = Trust {
        pin: Some(pin),
        ..Trust::default()
    };
    let certs = a.cert.as_ref().map(|c| c.selector()).transpose()?;
    let config = client_config(trust, RootCertStore::empty(), certs)?;
    let name = ServerName::IpAddress(to.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(e("TLS"))?;
    let mut client = Client::new(ClientConfig {
        enable_esp: false,
        ..ClientConfig::new(to.ip().to_string())
    });
    client.start().map_err(|err| err.to_string())?;
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    let deadline = Instant::now() + LOGIN_DEADLINE;
    loop {
        while let Some(event) = client.poll_event() {
            let answered = match event {
                ClientEvent::RealmRequired { realms } => {
                    let realm = a.realm.clone().unwrap_or_else(|| realms[0].clone());
                    client.choose_realm(&realm)
                }
                ClientEvent::CredentialsRequired { retry: false, .. } => {
                    client.provide_credentials(&a.user, &a.password)
                }
                ClientEvent::CredentialsRequired { retry: true, .. } => {
                    return Ok(Outcome::AskedAgain);
                }
                ClientEvent::AuthFailed(AuthFailure::Message(m)) => return Ok(Outcome::Refused(m)),
                ClientEvent::AuthFailed(other) => return Ok(Outcome::Other(format!("{other:?}"))),
                ClientEvent::Terminated { message, .. } => return Ok(Outcome::Other(message)),
                ClientEvent::Configured(_) => {
                    let _ = client.logout();
                    client.take_tls(&mut out);
                    let _ = tls.write_all(&out).await;
                    let _ = tls.shutdown().await;
                    return Ok(Outcome::Accepted);
                }
                _ => Ok(()),
            };
            answered.map_err(|err| err.to_string())?;
        }
        out.clear();
        client.take_tls(&mut out);
        if !out.is_empty() {
            tls.write_all(&out).await.map_err(e("write"))?;
            tls.flush().await.map_err(e("flush"))?;
        }
        let n = tokio::time::timeout_at(deadline.into(), tls.read(&mut buf))
            .await
            .map_err(|_| format!("no answer within {LOGIN_DEADLINE:?}"))?
            .map_err(e("read"))?;
        if n == 0 {
            return Ok(Outcome::Other("the gateway closed the connection".into()));
        }
        client
            .handle_tls_bytes(&buf[..n], Instant::now())
            .map_err(|err| err.to_string())?;
    }
}
