//! One TLS session with a gateway, from the TCP connect to its end: the handshake (trust,
//! client certificate), the login driven through the sans-IO [`tunnel_proto::Client`], the
//! tunnel made from its configuration, and the loop that acts on its events, its timers
//! ([`super::liveness`]) and the daemon's commands. It ends with an [`Outcome`] for the
//! reconnect loop (`super::connection`).
//!
//! ```text
//!  resolve ─▶ TCP (marked) ─▶ TLS ─▶ IF-T login ─▶ Configured ─▶ tunnel + packet threads
//!                                        │                         │
//!                 events, timers, commands ◀── the task reads TLS ──┘ until the threads do
//! ```
//!
//! [`Session`] is the part the packet threads share: the state machine, the TLS link, and
//! the reason the session ended if they found it over.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::{
    net::TcpStream,
    sync::{Notify, mpsc, oneshot},
};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};
use tunnel_config::{EventKind, ServerUrl};
use tunnel_proto::{Client, ClientConfig, ClientEvent, Config, SessionError, Transmit};

use super::{
    Emit,
    cert_select::{CertSelector, Choice},
    connection::Command,
    dns::{Dns, DnsPlan},
    liveness::{Due, Liveness},
    policy::DataPlane,
    prompts::{self, Prompter},
    spec::{ConnectSpec, shown},
    status::{
        CertificateFailure, ConnectError, Failure, Lost, Offered, Refused, Report, Shared, State,
        Transport,
    },
    tls::{self, Pin, Untrusted},
    tunnel::{self, Plan, SetupError, Tunnel, keepalive_packet, route_change},
};
use crate::{fastpath::tun_io::TunSink, sys::tls_link::TlsLink};

/// The live session of one TLS connection, shared with the packet threads.
pub(super) struct Session {
    pub(super) proto: Mutex<Client>,
    /// The TLS connection; the packet threads send their TLS frames on it themselves, and
    /// once the tunnel is up they read it too.
    pub(super) link: TlsLink,
    /// Wakes the task when the packet threads queued TLS bytes they could not send (the
    /// socket was full), brought events (over ESP or TLS), or found the session over.
    pub(super) wake: Notify,
    /// Why the packet threads found the session over; the first reason counts.
    ended: OnceLock<Ended>,
}

impl Session {
    fn new(proto: Client, link: TlsLink) -> Session {
        Session {
            proto: Mutex::new(proto),
            link,
            wake: Notify::new(),
            ended: OnceLock::new(),
        }
    }

    /// Records that the session is over (the first reason counts) and wakes the task.
    pub(super) fn end(&self, why: Ended) {
        let _ = self.ended.set(why);
        self.wake.notify_one();
    }

    /// Why the packet threads found the session over, if they did.
    fn ended(&self) -> Option<&Ended> {
        self.ended.get()
    }

    /// Sends the TLS frames the state machine queued, from the calling thread; wakes the
    /// task when the socket is full (it flushes once it is writable) or the connection
    /// failed (its next read finds out).
    pub(super) fn send_tls_now(&self) {
        self.link.send_or_wake(
            |out| {
                if let Ok(mut c) = self.proto.lock() {
                    c.take_tls(out);
                }
            },
            &self.wake,
        );
    }

    /// Sends everything the state machine queued for TLS, waiting for the socket as long as
    /// it is full.
    async fn send_tls(&self) -> io::Result<()> {
        self.link
            .send_all(|out| {
                if let Ok(mut c) = self.proto.lock() {
                    c.take_tls(out);
                }
            })
            .await
    }
}

/// Why the gateway's bytes ended the session.
#[derive(Clone, Debug)]
pub(super) enum Ended {
    /// The session broke: reconnect.
    Lost(Lost),
    /// The gateway asked for something this client does not support: retrying asks again.
    Unsupported(String),
}

/// How a session ended, for the reconnect loop.
pub(super) enum Outcome {
    /// Ended on request (sign-out, disconnect).
    Done,
    /// Suspended: wait for Resume.
    Suspended,
    /// Lost: reconnect.
    Lost(Lost),
    /// Failed for good.
    Failed(Failure),
}

/// What a connection's sessions work with, one after the other: the request, the kernel
/// data path, where events go, the daemon's commands, and what a session leaves to the
/// next (the cookie, the tunnel).
pub(super) struct Context {
    pub(super) spec: ConnectSpec,
    pub(super) plane: DataPlane,
    /// The machine's DNS, which the connection's plan goes into while it is up.
    pub(super) dns: Dns,
    pub(super) emit: Emit,
    pub(super) shared: Arc<Shared>,
    pub(super) commands: mpsc::UnboundedReceiver<(Command, oneshot::Sender<()>)>,
    /// The DSID cookie to resume with; dropped when the gateway ends the session or does
    /// not resume it.
    pub(super) cookie: Option<String>,
    /// The tunnel, kept while the connection reconnects.
    pub(super) tunnel: Option<Tunnel>,
    pub(super) prompts: Prompter,
    /// Told when the first login ends either way (Ok when connected, Err with why not).
    first: Option<oneshot::Sender<Result<(), Failure>>>,
}

impl Context {
    /// Sets the session cookie (None: it is no good any more) and reports it.
    pub(super) fn set_cookie(&mut self, cookie: Option<String>) {
        self.emit.cookie(&self.spec.name, cookie.as_deref());
        self.cookie = cookie;
    }

    pub(super) fn new(
        spec: ConnectSpec,
        plane: DataPlane,
        dns: Dns,
        emit: Emit,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<(Command, oneshot::Sender<()>)>,
        first: oneshot::Sender<Result<(), Failure>>,
    ) -> Context {
        Context {
            cookie: spec.cookie.clone(),
            prompts: spec.prompts.clone(),
            spec,
            plane,
            dns,
            emit,
            shared,
            commands,
            tunnel: None,
            first: Some(first),
        }
    }

    /// Reports how the first login ended (later ones are not waited for).
    pub(super) fn report_first(&mut self, result: Result<(), Failure>) {
        if let Some(tx) = self.first.take() {
            let _ = tx.send(result);
        }
    }

    /// Event 303: the connection to `peer` failed with `error`.
    fn connection_error(&self, error: String, peer: String) {
        self.emit.event(EventKind::ConnectionError {
            connection: self.spec.name.clone(),
            error,
            peer,
        });
    }
}

/// Runs one session with the gateway at `gw`.
pub(super) async fn run(ctx: &mut Context, gw: &ServerUrl) -> Outcome {
    let opened = match open(ctx, gw).await {
        Ok(opened) => opened,
        Err(outcome) => return outcome,
    };
    let client = match start_client(ctx, gw, opened.addr) {
        Ok(client) => client,
        Err(e) => return Outcome::Failed(Failure::Connect(ConnectError::Start(e))),
    };
    let mut running = Running {
        gw,
        addr: opened.addr,
        session: Arc::new(Session::new(client, opened.link)),
        login: opened.login,
        liveness: Liveness::new(ctx.spec.dpd, Instant::now()),
        reader: Reader::Task,
        buf: vec![0u8; 65_536],
        sink: None,
        esp_out: vec![0u8; 2048],
    };
    running.run(ctx).await
}

/// A TLS connection to the gateway, and what its handshake decided.
struct Opened {
    addr: SocketAddr,
    link: TlsLink,
    login: Login,
}

/// What the handshake decided that the login needs.
struct Login {
    selector: Arc<CertSelector>,
    /// A client certificate was presented: the password defaults to none.
    presented: bool,
    /// The presented certificate's "Issued To": the user when none was given.
    issued_to: Option<String>,
    /// The gateway asked for a client certificate and none fitted: said again if the login
    /// is then refused.
    unmet: Option<String>,
    /// The gateway's pin, to learn once the session is up.
    pin: Option<Pin>,
}

/// Resolves, connects and shakes hands with the gateway.
async fn open(ctx: &Context, gw: &ServerUrl) -> Result<Opened, Outcome> {
    let host = gw.host_name();
    let addr = resolve(&ctx.dns, &host, gw.port())
        .await
        .map_err(Outcome::Lost)?;
    let tcp = match connect_marked(addr).await {
        Ok(t) => t,
        Err(e) => {
            ctx.connection_error(e.to_string(), addr.to_string());
            return Err(Outcome::Lost(Lost::Connect {
                addr,
                source: Arc::new(e),
            }));
        }
    };
    // The selector also answers when nothing is stored, so a request it cannot meet is
    // logged.
    let selector = Arc::new(CertSelector::new(ctx.spec.client_cert.clone()));
    let config = tls::client_config(
        ctx.spec.trust.clone(),
        tls::system_roots(),
        Some(selector.clone()),
    )
    .map_err(|e| Outcome::Failed(Failure::Certificate(CertificateFailure::Config(e))))?;
    let server_name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
        Outcome::Failed(Failure::Connect(ConnectError::ServerName {
            host: host.clone(),
            source: Arc::new(e),
        }))
    })?;
    let tls = match TlsConnector::from(config).connect(server_name, tcp).await {
        Ok(t) => t,
        Err(e) => return Err(handshake_failed(ctx, gw, addr, e, &selector)),
    };
    let pin = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::pin_of_certificate);
    let login = Login {
        pin,
        ..decided(&ctx.spec.name, selector)
    };
    let (tcp, tls) = tls.into_inner();
    let link =
        TlsLink::new(tcp, tls, false).map_err(|e| Outcome::Lost(Lost::Register(Arc::new(e))))?;
    Ok(Opened { addr, link, login })
}

/// What the handshake decided about our client certificate. Presented: its "Issued To"
/// names the user when none was given. None fitted: said here, and again if the login is
/// then refused.
fn decided(connection: &str, selector: Arc<CertSelector>) -> Login {
    let mut login = Login {
        selector,
        presented: false,
        issued_to: None,
        unmet: None,
        pin: None,
    };
    match login.selector.choice() {
        Some(Choice::Presented { name, issued_to }) => {
            info!(%connection, certificate = %name, "presented the client certificate");
            login.presented = true;
            login.issued_to = issued_to;
        }
        Some(Choice::NoneFitted { issuers }) => {
            let note = format!(
                "the gateway asked for a client certificate from {}, and no stored certificate matched",
                if issuers.is_empty() {
                    "any issuer".to_string()
                } else {
                    issuers.join("; ")
                }
            );
            warn!(%connection, "{note}");
            login.unmet = Some(note);
        }
        None => {}
    }
    login
}

/// What a failed handshake means: a certificate error (for good), or a lost attempt.
fn handshake_failed(
    ctx: &Context,
    gw: &ServerUrl,
    addr: SocketAddr,
    e: io::Error,
    selector: &CertSelector,
) -> Outcome {
    if let Some(why) = Untrusted::of(&e) {
        return Outcome::Failed(Failure::Certificate(CertificateFailure::Untrusted {
            gateway: shown(gw),
            why: why.clone(),
        }));
    }
    if let Some(refused) = client_certificate_refused(&e, selector) {
        return Outcome::Failed(Failure::Certificate(refused));
    }
    let lost = Lost::Tls {
        gateway: shown(gw),
        source: Arc::new(e),
    };
    ctx.connection_error(Report(&lost).to_string(), addr.to_string());
    Outcome::Lost(lost)
}

/// The gateway's alert refusing the client certificate we presented, or asking for one we
/// did not: trying again with the same certificates cannot succeed, so the connection fails
/// with a certificate error instead of reconnecting until it times out.
fn client_certificate_refused(
    e: &io::Error,
    selector: &CertSelector,
) -> Option<CertificateFailure> {
    use rustls::AlertDescription as A;
    let alert = match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => *alert,
        _ => return None,
    };
    let about_ours = matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired
    );
    if !about_ours {
        return None;
    }
    let offered = match selector.choice() {
        Some(Choice::Presented { name, .. }) => Offered::Presented { name },
        Some(Choice::NoneFitted { issuers }) if !issuers.is_empty() => {
            Offered::NoneMatched { issuers }
        }
        _ => Offered::Nothing,
    };
    Some(CertificateFailure::ClientRefused { alert, offered })
}

/// Resolves the gateway host to one address, through the uplink ([`Dns::lookup`]): never
/// through the tunnel this connection may be rebuilding.
async fn resolve(dns: &Dns, host: &str, port: u16) -> Result<SocketAddr, Lost> {
    let addrs = dns.lookup(host).await.map_err(|e| Lost::Resolve {
        host: host.to_string(),
        source: Arc::new(e),
    })?;
    addrs
        .first()
        .map(|ip| SocketAddr::new(*ip, port))
        .ok_or_else(|| Lost::NoAddress {
            host: host.to_string(),
        })
}

/// A TCP connection whose packets carry our socket mark (the classifier lets them bypass).
async fn connect_marked(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = crate::sys::own_socket::socket_for(addr, socket2::Type::STREAM, true)?;
    sock.set_tcp_nodelay(true)?;
    let stream = tokio::net::TcpSocket::from_std_stream(sock.into());
    tokio::time::timeout(CONNECT_TIMEOUT, stream.connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })?
}

/// How long a TCP connect to the gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The state machine for a session with the gateway at `gw`, reached at `addr`, started.
fn start_client(ctx: &Context, gw: &ServerUrl, addr: SocketAddr) -> Result<Client, SessionError> {
    let mut cfg = ClientConfig::new(gw.host_name());
    cfg.path = gw.path().to_string();
    cfg.cookie = ctx.cookie.clone();
    cfg.enable_esp = ctx.spec.esp;
    cfg.udp_ipv6 = addr.is_ipv6();
    // Our own gateway then picks AES-256-GCM; Pulse gateways ignore the offer.
    cfg.offer_aes_gcm = true;
    // And it batches TLS records for us; Pulse gateways ignore the header too.
    cfg.stream_records = true;
    // ESP dead-peer detection follows the AtpProbe* settings; a recovery attempt every idle
    // period brings ESP back once it answers again.
    let dpd = ctx.spec.dpd;
    cfg.esp_dpd = Some(tunnel_proto::EspDpd {
        idle: dpd.idle,
        interval: dpd.interval,
        count: dpd.count,
        retry: dpd.idle,
    });
    let mut client = Client::new(cfg);
    client.start()?;
    Ok(client)
}

/// Who reads the TLS connection: the task until the packet threads start, then they (the
/// task no longer does, `super::end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    Task,
    Threads,
}

/// What woke the session loop.
enum Woke {
    Read(io::Result<usize>),
    /// The packet threads: events, TLS to flush, or the session over.
    Threads,
    /// A timer of the state machine or of [`Liveness`].
    Timer,
    Command(Option<(Command, oneshot::Sender<()>)>),
}

/// A session once the TLS connection is up.
struct Running<'g> {
    gw: &'g ServerUrl,
    addr: SocketAddr,
    session: Arc<Session>,
    login: Login,
    liveness: Liveness,
    reader: Reader,
    /// TLS reads, while the task reads.
    buf: Vec<u8>,
    /// Packets the gateway sent over TLS, joined for the TUN device. Made with the tunnel's
    /// device (the offloads it has decide what is joined).
    sink: Option<TunSink>,
    /// ESP datagrams the state machine makes here (probes).
    esp_out: Vec<u8>,
}

impl Running<'_> {
    async fn run(&mut self, ctx: &mut Context) -> Outcome {
        loop {
            // Flush what the state machine queued; act on its events.
            let (events, next_timer, probes) = self.poll_client();
            if self.session.send_tls().await.is_err() {
                return Outcome::Lost(Lost::Closed);
            }
            let progressed = !events.is_empty();
            for event in events {
                if let Some(outcome) = self.on_event(ctx, event).await {
                    return outcome;
                }
            }
            // Probes go out after the events are acted on: the configuration that starts
            // ESP also makes the ESP socket (a new one on every login), and a probe sent
            // through the previous session's socket would teach the gateway a port nobody
            // reads any more; it sends its ESP there until a later probe corrects it (a
            // second of lost packets after every reconnect).
            if let Some(udp) = ctx.tunnel.as_ref().and_then(|t| t.udp.as_ref()) {
                for p in &probes {
                    let _ = udp.send(p);
                }
            }
            if let Some(end) = self.session.ended() {
                return self.ended(ctx, end.clone());
            }
            if progressed {
                continue;
            }
            if let Some(outcome) = self.watch(ctx) {
                return outcome;
            }
            let deadline = [next_timer, self.liveness.deadline(ctx.tunnel.is_some())]
                .into_iter()
                .flatten()
                .min();
            let woke = tokio::select! {
                read = self.session.link.recv(&mut self.buf), if self.reader == Reader::Task => {
                    Woke::Read(read)
                }
                _ = self.session.wake.notified() => Woke::Threads,
                _ = sleep_until(deadline) => Woke::Timer,
                cmd = ctx.commands.recv() => Woke::Command(cmd),
            };
            let outcome = match woke {
                Woke::Read(read) => self.on_read(ctx, read),
                Woke::Threads | Woke::Timer => None,
                Woke::Command(None) => Some(Outcome::Done),
                Woke::Command(Some((cmd, ack))) => self.on_command(ctx, cmd, ack).await,
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }

    /// The state machine's events, its timers' next instant, and the ESP probes its timers
    /// made.
    fn poll_client(&mut self) -> (Vec<ClientEvent>, Option<Instant>, Vec<Vec<u8>>) {
        let mut c = self.session.proto.lock().unwrap_or_else(|e| e.into_inner());
        let events: Vec<ClientEvent> = std::iter::from_fn(|| c.poll_event()).collect();
        let mut probes = Vec::new();
        let now = Instant::now();
        if c.poll_timers(now).is_ok() {
            while let Ok(Some(n)) = c.poll_esp_transmit(&mut self.esp_out) {
                probes.push(self.esp_out[..n].to_vec());
            }
        }
        (events, c.next_timer(), probes)
    }

    /// Tells the liveness timers what was seen, and does what is due.
    fn watch(&mut self, ctx: &Context) -> Option<Outcome> {
        let now = Instant::now();
        self.liveness.heard(ctx.shared.heard.last());
        let esp_up = self
            .session
            .proto
            .lock()
            .map(|c| c.esp_up())
            .unwrap_or(false);
        if esp_up {
            self.liveness.esp_up(now);
        }
        while let Some(due) = self.liveness.poll(now, ctx.tunnel.is_some()) {
            if let Some(outcome) = self.on_due(ctx, due) {
                return Some(outcome);
            }
        }
        None
    }

    fn on_due(&mut self, ctx: &Context, due: Due) -> Option<Outcome> {
        let t = ctx.tunnel.as_ref()?;
        match due {
            Due::GiveUp { probes, idle } => Some(Outcome::Lost(Lost::Unanswered { probes, idle })),
            Due::Probe => {
                // The probe is an ICMP echo to the gateway's tunnel address: any answer (or
                // any other traffic) proves the peer alive.
                if let Some(p) = keepalive_packet(t) {
                    let esp_out = &mut self.esp_out;
                    let sent = self
                        .session
                        .proto
                        .lock()
                        .map(|mut c| c.send_packet(&p, Instant::now(), esp_out));
                    if let (Ok(Ok(Transmit::Esp(n))), Some(udp)) = (sent, &t.udp) {
                        let _ = udp.send(&self.esp_out[..n]);
                    }
                }
                None
            }
            Due::CheckRoute => {
                let (from, to) = route_change(self.addr.ip(), t)?;
                ctx.emit.event(EventKind::RouteChanged {
                    connection: ctx.spec.name.clone(),
                    from: from.clone(),
                    to: to.clone(),
                });
                Some(Outcome::Lost(Lost::RouteChanged { from, to }))
            }
        }
    }

    fn on_read(&mut self, ctx: &Context, read: io::Result<usize>) -> Option<Outcome> {
        let n = match read {
            Ok(0) => return Some(Outcome::Lost(Lost::Closed)),
            Err(e) => {
                // TLS 1.3: the gateway's verdict on our certificate comes after the
                // handshake, with its first records.
                if let Some(refused) = client_certificate_refused(&e, &self.login.selector) {
                    return Some(Outcome::Failed(Failure::Certificate(refused)));
                }
                return Some(Outcome::Lost(Lost::Read(Arc::new(e))));
            }
            Ok(n) => n,
        };
        let tun = ctx.tunnel.as_ref().map(|t| &*t.tun);
        let taken = super::end::take_tls_bytes(
            &self.session,
            &ctx.shared,
            tun,
            &mut self.sink,
            &self.buf[..n],
        );
        taken.err().map(|end| self.ended(ctx, end))
    }

    /// The outcome of a session the gateway's bytes ended.
    fn ended(&self, ctx: &Context, end: Ended) -> Outcome {
        match end {
            Ended::Lost(lost) => Outcome::Lost(lost),
            Ended::Unsupported(what) => Outcome::Failed(prompts::unsupported(
                &ctx.emit,
                &ctx.spec.name,
                self.addr,
                what,
            )),
        }
    }

    async fn on_command(
        &self,
        ctx: &mut Context,
        cmd: Command,
        ack: oneshot::Sender<()>,
    ) -> Option<Outcome> {
        let outcome = match cmd {
            Command::Signout => {
                let _ = self.session.proto.lock().map(|mut c| c.logout());
                let _ = self.session.send_tls().await;
                self.session.link.close();
                ctx.set_cookie(None);
                Outcome::Done
            }
            Command::Disconnect => {
                self.session.link.close();
                Outcome::Done
            }
            Command::Suspend => {
                ctx.emit.event(EventKind::UserSuspend {
                    connection: ctx.spec.name.clone(),
                });
                self.session.link.close();
                Outcome::Suspended
            }
            Command::Resume => {
                let _ = ack.send(());
                return None;
            }
        };
        let _ = ack.send(());
        Some(outcome)
    }

    /// Acts on one event of the state machine; Some when it ends the session.
    async fn on_event(&mut self, ctx: &mut Context, event: ClientEvent) -> Option<Outcome> {
        let name = &ctx.spec.name;
        match event {
            ClientEvent::RealmRequired { realms } => {
                let realm = ctx
                    .spec
                    .realm
                    .clone()
                    .or_else(|| realms.first().cloned())
                    .unwrap_or_default();
                if !realms.is_empty() && !realms.contains(&realm) {
                    return Some(Outcome::Failed(Failure::Auth(Refused::Realm {
                        realm,
                        offered: realms,
                    })));
                }
                let _ = self
                    .session
                    .proto
                    .lock()
                    .map(|mut c| c.choose_realm(&realm));
            }
            ClientEvent::CredentialsRequired {
                retry,
                max_password_len,
                ..
            } => {
                if retry {
                    self.session.link.close();
                    ctx.emit.event(EventKind::LoginErrorDisconnect {
                        connection: name.clone(),
                    });
                    return Some(Outcome::Failed(Failure::Auth(Refused::Password {
                        unmet: self.login.unmet.clone(),
                    })));
                }
                // With a certificate presented, the user defaults to its "Issued To" and the
                // password to none (a certificate login needs none).
                let user = ctx.spec.user.as_ref().or(self.login.issued_to.as_ref());
                let password = ctx
                    .prompts
                    .password(ctx.spec.password.as_deref())
                    .or(self.login.presented.then_some(""));
                let (Some(user), Some(password)) = (user, password) else {
                    return Some(Outcome::Failed(Failure::CredentialsNeeded {
                        unmet: self.login.unmet.clone(),
                    }));
                };
                prompts::warn_if_cut(&ctx.emit, name, max_password_len, password);
                let _ = self
                    .session
                    .proto
                    .lock()
                    .map(|mut c| c.provide_credentials(user, password));
            }
            ev @ (ClientEvent::TokenRequired { .. }
            | ClientEvent::PasswordChangeRequired
            | ClientEvent::Notice { .. }
            | ClientEvent::SessionLimit { .. }) => {
                if let ClientEvent::Notice { text, .. } = &ev {
                    let mut s = ctx.shared.status();
                    if !s.notices.contains(text) {
                        prompts::log_notice(&ctx.emit, name, text);
                        s.notices.push(text.clone());
                    }
                }
                let password = ctx.spec.password.as_deref();
                if let Err(e) = ctx
                    .prompts
                    .on_event(&ev, &self.session.proto, password)
                    .await
                {
                    self.session.link.close();
                    return Some(Outcome::Failed(prompts::failed(
                        &ctx.emit, name, self.addr, e,
                    )));
                }
            }
            ClientEvent::ResumeRejected => {
                info!(connection = %name, "the gateway did not resume the session; logging in");
                ctx.set_cookie(None);
            }
            ClientEvent::CookieReceived { cookie, .. } => ctx.set_cookie(Some(cookie)),
            ClientEvent::AuthFailed(why) => {
                ctx.emit.event(EventKind::LoginErrorDisconnect {
                    connection: name.clone(),
                });
                return Some(Outcome::Failed(Failure::Auth(Refused::Failed {
                    why,
                    unmet: self.login.unmet.clone(),
                })));
            }
            ClientEvent::Authenticated => debug!(connection = %name, "authenticated"),
            ClientEvent::Configured(config) => {
                if let Err(e) = self.configure(ctx, &config) {
                    return Some(Outcome::Failed(Failure::Connect(e.into())));
                }
                let dns = &ctx.spec.dns;
                let plan = DnsPlan::new(
                    &config.dns,
                    &config.search_domains,
                    &dns.servers,
                    &dns.search,
                    &dns.match_domains,
                );
                let link = ctx
                    .tunnel
                    .as_ref()
                    .and_then(|t| crate::datapath::ifindex(t.tun.name()).ok());
                ctx.dns
                    .set(&ctx.spec.name, plan.map(|p| p.on_link(link)))
                    .await;
                self.established(ctx);
            }
            ClientEvent::Packet(p) => {
                if let Some(t) = ctx.tunnel.as_ref() {
                    let traffic = &ctx.shared.traffic;
                    traffic.packets_in.fetch_add(1, Ordering::Relaxed);
                    traffic
                        .bytes_in
                        .fetch_add(p.len() as u64, Ordering::Relaxed);
                    let _ = t.tun.send_packet(&p);
                }
            }
            ClientEvent::EspUp => {
                ctx.shared.status().transport = Some(Transport::Esp);
                ctx.emit.event(EventKind::TlsToEsp {
                    connection: name.clone(),
                });
            }
            ClientEvent::EspDown => {
                ctx.shared.status().transport = Some(Transport::Tls);
                ctx.emit.event(EventKind::EspToTls {
                    connection: name.clone(),
                });
            }
            ClientEvent::EspRekeyed => debug!(connection = %name, "ESP rekeyed"),
            ClientEvent::Terminated { kind, message } => {
                ctx.emit.event(EventKind::ServerDisconnected {
                    connection: name.clone(),
                    reason: format!("{kind:?}: {message}"),
                    peer: self.addr.ip().to_string(),
                });
                // The gateway ended the session (restart, idle timeout...): log in again.
                ctx.set_cookie(None);
                return Some(Outcome::Lost(Lost::Terminated { message }));
            }
            ClientEvent::LoggedOut => return Some(Outcome::Done),
            other => debug!(?other, "client event"),
        }
        None
    }

    /// Applies the gateway's configuration: the tunnel ([`tunnel::configure`]), the packet
    /// threads on it, and what the status shows of it.
    fn configure(&mut self, ctx: &mut Context, config: &Config) -> Result<(), SetupError> {
        let plan = Plan::new(&ctx.spec, config)?;
        let t = tunnel::configure(
            &mut ctx.tunnel,
            &ctx.spec,
            &ctx.plane,
            &plan,
            self.addr.ip(),
            config.esp.port,
        )?;
        t.threads = super::end::start_threads(t, &self.session, &ctx.shared)
            .map_err(|e| SetupError::Threads(Arc::new(e)))?;
        self.reader = Reader::Threads;
        let mut s = ctx.shared.status();
        s.ipv4 = plan.ipv4;
        s.ipv6 = plan.ipv6;
        s.tun = Some(t.tun.name().to_string());
        s.dns = config.dns.clone();
        s.search_domains = config.search_domains.clone();
        s.include = plan.include.iter().map(ToString::to_string).collect();
        s.exclude = plan.exclude.iter().map(ToString::to_string).collect();
        s.cipher = match (config.esp.cipher, config.esp.hmac) {
            (Some(c), Some(m)) => tunnel_proto::EspSuite::from_codes(c, m)
                .ok()
                .map(|suite| suite.name().to_string()),
            _ => None,
        };
        s.server = Some(shown(self.gw));
        Ok(())
    }

    /// The session is up: status, event, learned pin, the URL that connected, and the first
    /// login's report.
    fn established(&self, ctx: &mut Context) {
        {
            let mut s = ctx.shared.status();
            s.established_at = Some(Instant::now());
            s.state = State::Connected;
            s.transport = Some(Transport::Tls);
            s.last_error = None;
        }
        ctx.emit.event(EventKind::Established {
            connection: ctx.spec.name.clone(),
            address: self.addr.ip().to_string(),
        });
        if let (Some(pin), true) = (self.login.pin, ctx.spec.learn_pin) {
            ctx.emit
                .learned_pin(&ctx.spec.name, &self.gw.host_name(), pin);
        }
        ctx.emit.connected_url(&ctx.spec.name, self.gw);
        ctx.report_first(Ok(()));
    }
}

/// Sleeps until `deadline`; for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
