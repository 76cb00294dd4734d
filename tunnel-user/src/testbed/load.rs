//! Many sessions from one process, for the gateway benchmark: each a TLS connection driven
//! by the project's own client state machine (no TUN device, no ESP), logged in with a
//! password or resumed with a cookie, then held open and idle.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::client::TlsStream;
use tunnel_proto::{AuthFailure, Client, ClientConfig, ClientEvent};

use crate::client::tls::{Pin, Trust, client_config};

/// How long one login or resume may take.
const STEP: Duration = Duration::from_secs(60);

/// An established session, held open.
pub struct Held {
    /// Keeps the connection (and so the session) up; dropping it ends the connection.
    pub stream: TlsStream<TcpStream>,
    /// The DSID cookie, to resume it.
    pub cookie: String,
    /// The tunnel address the gateway gave it.
    pub ipv4: Option<Ipv4Addr>,
    /// Whether the gateway resumed it (a cookie login) rather than made it.
    pub resumed: bool,
}

/// What the sessions share: where the gateway is and how it is trusted.
#[derive(Clone)]
pub struct Target {
    pub to: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn new(to: SocketAddr, pin: Pin) -> Result<Target, String> {
        let trust = Trust {
            pin: Some(pin),
            ..Trust::default()
        };
        Ok(Target {
            to,
            tls: client_config(trust, RootCertStore::empty(), None)?,
        })
    }

    /// Logs in from `source` with `user` and `password`, or, given a `cookie`, resumes
    /// that session (failing if the gateway asks for credentials instead).
    pub async fn session(
        &self,
        source: IpAddr,
        user: &str,
        password: &str,
        cookie: Option<String>,
    ) -> Result<Held, String> {
        let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
        let made = async {
            let socket = TcpSocket::new_v4().map_err(e("socket"))?;
            socket.bind(SocketAddr::new(source, 0)).map_err(e("bind"))?;
            let tcp = socket.connect(self.to).await.map_err(e("connect"))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(self.to.ip().into());
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(e("TLS"))?;
            self.log_in(tls, user, password, cookie).await
        };
        tokio::time::timeout(STEP, made)
            .await
            .map_err(|_| format!("no session within {STEP:?}"))?
    }

    /// The IF-T dialogue over `tls`, up to the configuration.
    async fn log_in(
        &self,
        mut tls: TlsStream<TcpStream>,
        user: &str,
        password: &str,
        cookie: Option<String>,
    ) -> Result<Held, String> {
        let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
        let resuming = cookie.is_some();
        let offered = cookie.clone();
        let mut client = Client::new(ClientConfig {
            enable_esp: false,
            cookie,
            ..ClientConfig::new(self.to.ip().to_string())
        });
        client.start().map_err(|err| err.to_string())?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        let mut cookie = offered;
        loop {
            while let Some(event) = client.poll_event() {
                let answered = match event {
                    ClientEvent::RealmRequired { realms } => client.choose_realm(&realms[0]),
                    ClientEvent::CredentialsRequired { .. } if resuming => {
                        return Err("the cookie was not taken".into());
                    }
                    ClientEvent::CredentialsRequired { retry: false, .. } => {
                        client.provide_credentials(user, password)
                    }
                    ClientEvent::CredentialsRequired { retry: true, .. } => {
                        return Err("wrong password".into());
                    }
                    ClientEvent::CookieReceived { cookie: c, .. } => {
                        cookie = Some(c);
                        Ok(())
                    }
                    ClientEvent::AuthFailed(AuthFailure::Message(m)) => return Err(m),
                    ClientEvent::AuthFailed(other) => return Err(format!("{other:?}")),
                    ClientEvent::Terminated { message, .. } => return Err(message),
                    ClientEvent::Configured(config) => {
                        out.clear();
                        client.take_tls(&mut out);
                        if !out.is_empty() {
                            tls.write_all(&out).await.map_err(e("write"))?;
                        }
                        return Ok(Held {
                            stream: tls,
                            cookie: cookie.ok_or("configured without a cookie")?,
                            ipv4: config.ipv4_address,
                            resumed: resuming,
                        });
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
            let n = tls.read(&mut buf).await.map_err(e("read"))?;
            if n == 0 {
                return Err("the gateway closed the connection".into());
            }
            client
                .handle_tls_bytes(&buf[..n], Instant::now())
                .map_err(|err| err.to_string())?;
        }
    }
}
