//! A Pulse client for tests that attack the gateway: blocking, one step at a time, with the
//! state machine (`tunnel_proto::Client`) in the open, so a test can stop anywhere, send
//! again what it sent before, or send its ESP datagrams from wherever it likes.
//!
//! Create its sockets inside the client's namespace (`Netns::enter`); it can be used from
//! any thread afterwards.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};
use tunnel_packet::checksum;
use tunnel_proto::{
    ActiveSession, Client, ClientConfig, ClientEvent, ClientState, EspInput, Transmit,
};

use crate::client::tls::{Pin, Trust, client_config};

/// One connection of a test client to the gateway (see the module docs).
pub struct PulsePeer {
    tls: StreamOwned<ClientConnection, TcpStream>,
    /// The protocol state machine.
    pub proto: Client,
    /// Every event it reported, in order.
    pub events: Vec<ClientEvent>,
    /// Every byte it sent over TLS, in order (frames to send again).
    pub sent: Vec<u8>,
}

/// What went wrong while the peer waited for something.
#[derive(Debug)]
pub enum PeerError {
    Io(io::Error),
    /// The gateway closed the connection.
    Closed,
    /// What was waited for did not come in time.
    Timeout,
    /// The state machine refused the gateway's input.
    Protocol(tunnel_proto::SessionError),
    /// The gateway asked for something the test gave no answer to.
    Unanswered(&'static str),
    /// The gateway asked for the password again: it was wrong.
    WrongPassword,
}

/// A test's answers to the prompts after the password ([`PulsePeer::login_with`]).
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// The realm to choose when the gateway offers several.
    pub realm: Option<String>,
    /// Token codes, one per token prompt, in order.
    pub tokens: Vec<String>,
    /// The new password, when the gateway asks for a change.
    pub new_password: Option<String>,
    /// Accept notices that need it.
    pub accept_notices: bool,
    /// Which session to end at the session limit.
    pub end_session: Option<EndSession>,
}

/// Which session a test ends at the session limit.
#[derive(Debug, Clone)]
pub enum EndSession {
    /// The first listed (the oldest).
    Oldest,
    /// This id.
    Id(String),
}

impl From<io::Error> for PeerError {
    fn from(e: io::Error) -> Self {
        PeerError::Io(e)
    }
}

impl PulsePeer {
    /// Connects to the gateway at `to` (TCP and TLS, its certificate checked against `pin`)
    /// and starts the login with `cfg`. Call from inside the client's namespace.
    pub fn connect(to: SocketAddr, pin: &str, cfg: ClientConfig) -> io::Result<PulsePeer> {
        let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        Self::over(tcp, pin, cfg)
    }

    /// Like [`Self::connect`], over a TCP connection the caller made (from an address of its
    /// choice).
    pub fn over(tcp: TcpStream, pin: &str, cfg: ClientConfig) -> io::Result<PulsePeer> {
        tcp.set_nodelay(true)?;
        let trust = Trust {
            pin: Some(Pin::parse(pin).map_err(io::Error::other)?),
            ..Trust::default()
        };
        let tls =
            client_config(trust, rustls::RootCertStore::empty(), None).map_err(io::Error::other)?;
        let name = ServerName::try_from(cfg.host.clone()).map_err(io::Error::other)?;
        let conn = ClientConnection::new(Arc::clone(&tls), name).map_err(io::Error::other)?;
        let mut proto = Client::new(cfg);
        proto.start().map_err(io::Error::other)?;
        Ok(PulsePeer {
            tls: StreamOwned::new(conn, tcp),
            proto,
            events: Vec::new(),
            sent: Vec::new(),
        })
    }

    /// Writes what the state machine has to send.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        self.proto.take_tls(&mut out);
        self.send_raw(&out)
    }

    /// Writes `bytes` over TLS as they are (frames sent before, or garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.sent.extend_from_slice(bytes);
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Reads and runs the gateway's bytes, sending what the state machine has to say, until
    /// `done` holds for an event (returned), for at most `timeout`. What the state machine
    /// queued in answer to the bytes that made that event is not sent yet: a test can stop
    /// right there (drop the peer before the gateway hears the answer).
    pub fn until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&ClientEvent) -> bool,
    ) -> Result<ClientEvent, PeerError> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            while let Some(e) = self.proto.poll_event() {
                self.events.push(e.clone());
                if done(&e) {
                    return Ok(e);
                }
            }
            self.flush()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PeerError::Timeout);
            }
            self.tls.sock.set_read_timeout(Some(left))?;
            let n = match self.tls.read(&mut buf) {
                Ok(0) => return Err(PeerError::Closed),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(PeerError::Timeout);
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(PeerError::Closed);
                }
                Err(e) => return Err(e.into()),
            };
            self.proto
                .handle_tls_bytes(&buf[..n], Instant::now())
                .map_err(PeerError::Protocol)?;
        }
    }

    /// Logs in as `user` (or resumes with the configured cookie, falling back to the
    /// password) up to the configuration: returns the session cookie.
    pub fn login(&mut self, user: &str, password: &str) -> Result<String, PeerError> {
        self.login_with(user, password, &Answers::default())
    }

    /// Like [`Self::login`], answering the prompts after the password from `answers`; a
    /// prompt without an answer there ends the login ([`PeerError::Unanswered`]). The
    /// gateway's refusal is in [`Self::events`] ([`ClientEvent::AuthFailed`]).
    pub fn login_with(
        &mut self,
        user: &str,
        password: &str,
        answers: &Answers,
    ) -> Result<String, PeerError> {
        let mut cookie = None;
        let mut tokens = answers.tokens.iter();
        loop {
            let e = self.until(Duration::from_secs(10), |e| {
                matches!(
                    e,
                    ClientEvent::CredentialsRequired { .. }
                        | ClientEvent::RealmRequired { .. }
                        | ClientEvent::TokenRequired { .. }
                        | ClientEvent::PasswordChangeRequired
                        | ClientEvent::Notice {
                            needs_acceptance: true,
                            ..
                        }
                        | ClientEvent::SessionLimit { .. }
                        | ClientEvent::CookieReceived { .. }
                        | ClientEvent::Configured(_)
                        | ClientEvent::AuthFailed(_)
                        | ClientEvent::Terminated { .. }
                )
            })?;
            let unanswered = |what: &'static str| Err(PeerError::Unanswered(what));
            let answered = match e {
                ClientEvent::CredentialsRequired { retry: true, .. } => {
                    return Err(PeerError::WrongPassword);
                }
                ClientEvent::CredentialsRequired { .. } => {
                    self.proto.provide_credentials(user, password)
                }
                ClientEvent::RealmRequired { .. } => match &answers.realm {
                    Some(realm) => self.proto.choose_realm(realm),
                    None => return unanswered("realm"),
                },
                ClientEvent::TokenRequired { .. } => match tokens.next() {
                    Some(code) => self.proto.provide_token(code),
                    None => return unanswered("token code"),
                },
                ClientEvent::PasswordChangeRequired => match &answers.new_password {
                    Some(new) => self.proto.change_password(password, new),
                    None => return unanswered("new password"),
                },
                ClientEvent::Notice { .. } if answers.accept_notices => self.proto.accept_notice(),
                ClientEvent::Notice { .. } => return unanswered("notice"),
                ClientEvent::SessionLimit { sessions } => {
                    match (&answers.end_session, sessions.first()) {
                        (Some(EndSession::Oldest), Some(oldest)) => {
                            self.proto.end_session(&oldest.id)
                        }
                        (Some(EndSession::Id(id)), _) => self.proto.end_session(id),
                        _ => return unanswered("session to end"),
                    }
                }
                ClientEvent::CookieReceived { cookie: c, .. } => {
                    cookie = Some(c);
                    Ok(())
                }
                ClientEvent::Configured(_) => return cookie.ok_or(PeerError::Closed),
                _ => return Err(PeerError::Closed),
            };
            answered.map_err(PeerError::Protocol)?;
        }
    }

    /// Whether the state machine has the gateway's configuration.
    /// The sessions the gateway listed when it asked which one to end (the first time).
    pub fn listed_sessions(&self) -> Option<Vec<ActiveSession>> {
        self.events.iter().find_map(|e| match e {
            ClientEvent::SessionLimit { sessions } => Some(sessions.clone()),
            _ => None,
        })
    }

    pub fn established(&self) -> bool {
        self.proto.state() == ClientState::Established
    }

    /// Brings ESP up: probes from `udp` until the gateway answers (within `timeout`).
    pub fn esp_up(&mut self, udp: &UdpSocket, timeout: Duration) -> Result<(), PeerError> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        while !self.proto.esp_up() {
            if Instant::now() > deadline {
                return Err(PeerError::Timeout);
            }
            // Keys may still be on their way over TLS.
            let _ = self.until(Duration::from_millis(50), |_| false);
            self.proto
                .poll_timers(Instant::now())
                .map_err(PeerError::Protocol)?;
            while let Some(n) = self
                .proto
                .poll_esp_transmit(&mut buf)
                .map_err(PeerError::Protocol)?
            {
                udp.send(&buf[..n])?;
            }
            if let Ok(n) = udp.recv(&mut buf) {
                self.proto
                    .handle_esp_train(&mut buf[..n], n, Instant::now(), |_| {});
            }
        }
        Ok(())
    }

    /// Seals `packet` into one ESP datagram (ESP must be up).
    pub fn seal(&mut self, packet: &[u8]) -> Result<Vec<u8>, PeerError> {
        let mut out = vec![0u8; packet.len() + 128];
        match self
            .proto
            .send_packet(packet, Instant::now(), &mut out)
            .map_err(PeerError::Protocol)?
        {
            Transmit::Esp(n) => {
                out.truncate(n);
                Ok(out)
            }
            Transmit::Tls => Err(PeerError::Closed),
        }
    }

    /// Opens an ESP datagram from the gateway: the packet in it (None for a probe).
    pub fn open(&mut self, datagram: &mut [u8]) -> Result<Option<Vec<u8>>, PeerError> {
        let len = datagram.len();
        let mut opened = Ok(None);
        self.proto
            .handle_esp_train(datagram, len, Instant::now(), |r| {
                opened = match r {
                    Ok(EspInput::Packet(p)) => Ok(Some(p.to_vec())),
                    Ok(_) => Ok(None),
                    Err(e) => Err(PeerError::Protocol(e)),
                }
            });
        opened
    }
}

/// An ICMP echo request from `src` to `dst` with `id` and `seq`.
pub fn echo_request(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 36];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&36u16.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let sum = checksum::finish(checksum::add(0, &p[..20]));
    p[10..12].copy_from_slice(&sum);
    p[20] = 8;
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    let sum = checksum::finish(checksum::add(0, &p[20..]));
    p[22..24].copy_from_slice(&sum);
    p
}
