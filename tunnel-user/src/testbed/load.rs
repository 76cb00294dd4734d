//! Many sessions from one process, for the gateway benchmark: each a TLS connection driven
//! by the project's own client state machine (no TUN device), logged in with a password or
//! resumed with a cookie, then held open and idle; or, with ESP, sending IP packets through
//! the gateway as fast as it can ([`EspSession`]).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{RootCertStore, pki_types::ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::client::TlsStream;
use tunnel_proto::{AuthFailure, Client, ClientConfig, ClientEvent, Transmit};

use crate::{
    client::tls::{Pin, Trust, client_config},
    datapath::frames::{Frame, L4},
};

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
        let made = async {
            let tls = self.connect(source).await?;
            self.log_in(tls, user, password, cookie).await
        };
        tokio::time::timeout(STEP, made)
            .await
            .map_err(|_| format!("no session within {STEP:?}"))?
    }

    /// A TLS connection to the gateway from `source`.
    async fn connect(&self, source: IpAddr) -> Result<TlsStream<TcpStream>, String> {
        let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
        let socket = TcpSocket::new_v4().map_err(e("socket"))?;
        socket.bind(SocketAddr::new(source, 0)).map_err(e("bind"))?;
        let tcp = socket.connect(self.to).await.map_err(e("connect"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::IpAddress(self.to.ip().into());
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(e("TLS"))
    }

    /// The IF-T dialogue over `tls`, up to the configuration.
    async fn log_in(
        &self,
        tls: TlsStream<TcpStream>,
        user: &str,
        password: &str,
        cookie: Option<String>,
    ) -> Result<Held, String> {
        let client = Client::new(ClientConfig {
            enable_esp: false,
            cookie: cookie.clone(),
            ..ClientConfig::new(self.to.ip().to_string())
        });
        self.drive(tls, client, cookie, user, password)
            .await
            .map(|(held, _)| held)
    }

    /// Logs in from `source` with ESP, and brings ESP up with the gateway's ESP socket on
    /// `esp_port`.
    pub async fn esp_session(
        &self,
        source: IpAddr,
        user: &str,
        password: &str,
        esp_port: u16,
    ) -> Result<EspSession, String> {
        let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
        let made = async {
            let tls = self.connect(source).await?;
            let client = Client::new(ClientConfig {
                enable_esp: true,
                ..ClientConfig::new(self.to.ip().to_string())
            });
            let (held, client) = self.drive(tls, client, None, user, password).await?;
            let udp = tokio::net::UdpSocket::bind(SocketAddr::new(source, 0))
                .await
                .map_err(e("UDP bind"))?;
            udp.connect(SocketAddr::new(self.to.ip(), esp_port))
                .await
                .map_err(e("UDP connect"))?;
            let mut session = EspSession {
                held,
                client,
                udp,
                out: vec![0u8; 2048],
            };
            session.bring_esp_up().await?;
            Ok(session)
        };
        tokio::time::timeout(STEP, made)
            .await
            .map_err(|_| format!("no ESP session within {STEP:?}"))?
    }

    /// The IF-T dialogue of `client` over `tls`, up to the configuration.
    async fn drive(
        &self,
        mut tls: TlsStream<TcpStream>,
        mut client: Client,
        offered: Option<String>,
        user: &str,
        password: &str,
    ) -> Result<(Held, Client), String> {
        let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
        let resuming = offered.is_some();
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
                        let held = Held {
                            stream: tls,
                            cookie: cookie.ok_or("configured without a cookie")?,
                            ipv4: config.ipv4_address,
                            resumed: resuming,
                        };
                        return Ok((held, client));
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

/// A session sending IP packets over ESP.
pub struct EspSession {
    pub held: Held,
    client: Client,
    udp: tokio::net::UdpSocket,
    out: Vec<u8>,
}

impl EspSession {
    /// Probes until the gateway answers over ESP.
    async fn bring_esp_up(&mut self) -> Result<(), String> {
        let mut buf = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.client.esp_up() {
            if Instant::now() > deadline {
                return Err("ESP did not come up within 10 s".into());
            }
            let now = Instant::now();
            self.client
                .poll_timers(now)
                .map_err(|err| err.to_string())?;
            while let Some(n) = self
                .client
                .poll_esp_transmit(&mut self.out)
                .map_err(|err| err.to_string())?
            {
                self.udp
                    .send(&self.out[..n])
                    .await
                    .map_err(|err| format!("UDP send: {err}"))?;
            }
            let wait = self
                .client
                .next_timer()
                .map_or(Duration::from_millis(100), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .clamp(Duration::from_millis(1), Duration::from_millis(200));
            if let Ok(Ok(n)) = tokio::time::timeout(wait, self.udp.recv(&mut buf)).await {
                self.client
                    .handle_esp_train(&mut buf[..n], n, Instant::now(), |_| {});
            }
        }
        Ok(())
    }

    /// Sends UDP datagrams of `size` bytes (IP packets) from the session's address to
    /// `to` until `until`; returns the IP bytes sent.
    pub async fn send_until(
        &mut self,
        to: SocketAddrV4,
        size: usize,
        until: Instant,
    ) -> Result<u64, String> {
        let from = self.held.ipv4.ok_or("the session has no address")?;
        let packet = udp_packet(from, to, size);
        let mut sent = 0u64;
        while Instant::now() < until {
            for _ in 0..64 {
                match self
                    .client
                    .send_packet(&packet, Instant::now(), &mut self.out)
                    .map_err(|err| err.to_string())?
                {
                    Transmit::Esp(n) => {
                        // A full socket buffer drops the datagram, as a NIC queue would.
                        let _ = self.udp.send(&self.out[..n]).await;
                        sent += packet.len() as u64;
                    }
                    Transmit::Tls => return Err("ESP went down: packets went to TLS".into()),
                }
            }
        }
        Ok(sent)
    }
}

/// An IPv4 UDP packet of `size` bytes in all (at least its headers), checksums filled in.
fn udp_packet(from: Ipv4Addr, to: SocketAddrV4, size: usize) -> Vec<u8> {
    let mut frame = Frame::new(
        IpAddr::V4(from),
        IpAddr::V4(*to.ip()),
        L4::Udp {
            sport: 40000,
            dport: to.port(),
            zero_checksum: false,
        },
    );
    frame.payload = vec![0; size.saturating_sub(28)];
    // Without its Ethernet header.
    frame.build().split_off(14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packets_sent_are_whole_ipv4_udp_of_the_size_asked() {
        let to = SocketAddrV4::new(Ipv4Addr::new(172, 20, 0, 9), 9);
        let p = udp_packet(Ipv4Addr::new(10, 64, 0, 2), to, 1400);
        assert_eq!(p.len(), 1400);
        assert_eq!((p[0], p[9]), (0x45, 17));
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 1400);
        assert_eq!(&p[16..20], &[172, 20, 0, 9]);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 9);
    }
}
