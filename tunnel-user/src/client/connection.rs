//! One VPN connection, from first login to sign-out: the TLS session driving the sans-IO
//! [`tunnel_proto::Client`], the TUN device and its routes, the connection's entry in the
//! kernel policy, the ESP socket, and the reconnect loop.
//!
//! ```text
//!          ┌─────────────── task (tokio) ────────────────┐
//!  connect ─▶ resolve ─▶ TCP (marked) ─▶ TLS ─▶ IF-T login ─▶ configured ─▶ established
//!     ▲                                                          │
//!     └── back-off, next URL, DSID resume ◀── link lost / gateway gone / route change (304)
//!  threads: TUN ──send_packet──▶ ESP (UDP, marked) or TLS      UDP ──handle_esp──▶ TUN
//! ```
//!
//! The data path stays in place while the connection reconnects: tunnelled traffic keeps
//! going into the TUN device and waits (or is dropped) instead of leaking onto the LAN.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use tokio::{
    net::TcpStream,
    sync::{Notify, mpsc, oneshot},
};
use tokio_rustls::TlsConnector;

use crate::sys::tls_link::TlsLink;
use tracing::{debug, info, warn};
use tunnel_common::OWN_SOCKET_MARK;
use tunnel_config::EventKind;
use tunnel_proto::{Client, ClientConfig, ClientEvent, Config, Transmit};

use super::{
    Emit,
    backoff::{AfterLoss, Backoff},
    cert_select::{CertSelector, Choice, ClientAuth},
    end::take_tls_bytes,
    policy::{ConnEntry, DataPlane},
    prompts::{self, Prompter},
    tls::{Pin, Trust},
};
use crate::{
    datapath::{ConnId, ConnPolicy, PortList},
    fastpath::tun_io::TunSink,
    sys::epoll::Stop,
    sys::netconf::{Netlink, Route, Via, sysctl},
    sys::tun::Tun,
    sys::udp_gso::{self},
};

/// A gateway URL: `https://host[:port][/sign-in-page]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gateway {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl std::fmt::Display for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "https://{host}:{}{}", self.port, self.path)
    }
}

/// Everything a connection needs to run.
#[derive(Clone)]
pub struct ConnectSpec {
    pub name: String,
    pub id: ConnId,
    /// Gateways to try, in the order to try them.
    pub gateways: Vec<Gateway>,
    pub realm: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A DSID cookie to start with (launcher `-d`).
    pub cookie: Option<String>,
    pub trust: Trust,
    /// The client certificate(s) it may present (`super::cert_select`).
    pub client_cert: ClientAuth,
    /// KVP `IPRoutes`: replaces the gateway's include routes when set.
    pub ip_routes: Option<Vec<IpNet>>,
    /// KVP `ExcRoutes`: added to the gateway's exclude routes.
    pub exc_routes: Vec<IpNet>,
    /// KVP `SplitUDPPortList`.
    pub udp_ports: Option<PortList>,
    /// KVP `MTU` when set; otherwise the gateway's, else 1400.
    pub mtu: Option<u16>,
    /// KVP `TunIP`: the TUN device's address instead of the gateway's.
    pub tun_ip: Option<std::net::Ipv4Addr>,
    /// KVPs `AtpProbeIdleSec`, `AtpProbeIntervalSec`, `AtpProbeCount`.
    pub dpd: Dpd,
    /// KVP `disconnectTimeoutInSeconds`: how long to keep trying to reconnect (None: forever).
    pub disconnect_timeout: Option<Duration>,
    /// Per-app: the cgroup id whose sockets use this connection.
    pub app_cgroup: Option<u64>,
    pub esp: bool,
    /// Remember the gateway's pin after a trusted connection (not with `DisablePinning`).
    pub learn_pin: bool,
    /// Who answers the login's prompts after the password.
    pub(crate) prompts: Prompter,
}

/// Dead-peer detection on the TLS session: after `idle` without anything from the gateway,
/// up to `count` probes `interval` apart; no answer means the connection is dropped and
/// re-established.
#[derive(Clone, Copy, Debug)]
pub struct Dpd {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Default for Dpd {
    fn default() -> Self {
        // The seed's defaults: AtpProbeIdleSec 60, AtpProbeIntervalSec 1, AtpProbeCount 5.
        Dpd {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(1),
            count: 5,
        }
    }
}

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

/// Why a connection failed, mapped onto the launcher's exit codes by the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Failure {
    /// Login refused (wrong password, unknown user...).
    Auth(String),
    /// Credentials needed but none given.
    CredentialsNeeded(String),
    /// The gateway's certificate is not trusted; carries its pin.
    Certificate {
        message: String,
        pin: Option<String>,
    },
    /// No gateway could be reached or the session could not be set up.
    Connect(String),
    /// Gave up after `disconnectTimeoutInSeconds`.
    Timeout(String),
    /// A prompt of the login could not be answered.
    Prompt(String),
    /// The user gave up at a prompt (launcher exit code 5).
    Cancelled(String),
    /// The gateway asked for something this client does not support.
    Unsupported(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Auth(m)
            | Failure::CredentialsNeeded(m)
            | Failure::Connect(m)
            | Failure::Timeout(m)
            | Failure::Prompt(m)
            | Failure::Cancelled(m)
            | Failure::Unsupported(m) => f.write_str(m),
            Failure::Certificate { message, .. } => f.write_str(message),
        }
    }
}

/// What `tunnel status` shows of a connection.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub state: State,
    pub server: Option<String>,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
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
    pub classifier: std::collections::BTreeMap<String, u64>,
}

/// Counters the packet threads update.
#[derive(Default)]
pub(super) struct Traffic {
    pub(super) bytes_out: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) packets_out: AtomicU64,
    pub(super) packets_in: AtomicU64,
}

/// What the daemon can ask of a running connection.
#[derive(Debug)]
pub enum Command {
    /// Log out at the gateway and end.
    Signout,
    /// End without logging out (the gateway keeps the session until it expires).
    Disconnect,
    /// Tear the data path down but keep the session for [`Command::Resume`].
    Suspend,
    Resume,
}

/// A running connection as the daemon holds it.
pub struct Handle {
    pub name: String,
    pub id: ConnId,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<(Command, oneshot::Sender<()>)>,
    pub task: tokio::task::JoinHandle<()>,
}

pub(super) struct Shared {
    pub(super) status: Mutex<Status>,
    pub(super) traffic: Traffic,
    /// When anything last came from the gateway (TLS or ESP), for dead-peer detection.
    pub(super) last_inbound: Mutex<Instant>,
    pub(super) established_at: Mutex<Option<Instant>>,
    /// Completed when the first login ends either way: Ok when connected, Err with why not.
    pub(super) first: Mutex<Option<oneshot::Sender<Result<(), Failure>>>>,
}

impl Handle {
    /// The connection's status now.
    pub fn status(&self) -> Status {
        let mut s = self
            .shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let t = &self.shared.traffic;
        s.bytes_out = t.bytes_out.load(Ordering::Relaxed);
        s.bytes_in = t.bytes_in.load(Ordering::Relaxed);
        s.packets_out = t.packets_out.load(Ordering::Relaxed);
        s.packets_in = t.packets_in.load(Ordering::Relaxed);
        s.uptime_secs = self
            .shared
            .established_at
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed().as_secs()));
        s
    }

    /// A sender for commands, to use without holding the daemon's lock.
    pub fn commands_clone(&self) -> mpsc::UnboundedSender<(Command, oneshot::Sender<()>)> {
        self.commands.clone()
    }

    /// Sends a command and waits until the connection acted on it.
    pub async fn command(&self, c: Command) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send((c, tx)).is_err() {
            return false;
        }
        rx.await.is_ok()
    }
}

/// Starts a connection; the receiver completes when the first login succeeded or failed.
pub fn spawn(
    spec: ConnectSpec,
    plane: DataPlane,
    emit: Emit,
) -> (Handle, oneshot::Receiver<Result<(), Failure>>) {
    let (first_tx, first_rx) = oneshot::channel();
    let shared = Arc::new(Shared {
        status: Mutex::new(Status {
            name: spec.name.clone(),
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
            classifier: std::collections::BTreeMap::new(),
        }),
        traffic: Traffic::default(),
        last_inbound: Mutex::new(Instant::now()),
        established_at: Mutex::new(None),
        first: Mutex::new(Some(first_tx)),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let name = spec.name.clone();
    let id = spec.id;
    let task = tokio::spawn(run(spec, plane, emit, shared.clone(), rx));
    (
        Handle {
            name,
            id,
            shared,
            commands: tx,
            task,
        },
        first_rx,
    )
}

fn set_state(shared: &Shared, state: State) {
    if let Ok(mut s) = shared.status.lock() {
        s.state = state;
    }
}

fn report_first(shared: &Shared, r: Result<(), Failure>) {
    if let Some(tx) = shared.first.lock().ok().and_then(|mut f| f.take()) {
        let _ = tx.send(r);
    }
}

/// The tunnel set up for a session: TUN device, routes, ESP socket, packet threads.
pub(super) struct Tunnel {
    pub(super) tun: Arc<Tun>,
    pub(super) routes: Vec<Route>,
    pub(super) udp: Option<Arc<UdpSocket>>,
    pub(super) stop: Arc<Stop>,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) ipv4: Option<std::net::Ipv4Addr>,
    /// The gateway's address inside the tunnel: the target of keepalive probes.
    pub(super) internal_gateway: Option<std::net::Ipv4Addr>,
    /// How the gateway was reached when the tunnel came up (interface, source address).
    pub(super) uplink: Option<crate::sys::netconf::RouteLookup>,
}

impl Tunnel {
    pub(super) fn stop_threads(&mut self) {
        self.stop.set();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stop.clear();
    }
}

/// The live session of one TLS connection, shared with the packet threads.
pub(super) struct Session {
    pub(super) proto: Mutex<Client>,
    /// The TLS connection; the packet threads send their TLS frames on it themselves, and
    /// once the tunnel is up they read it too.
    pub(super) link: TlsLink,
    /// Wakes the TLS task when the packet threads queued TLS bytes they could not send
    /// (the socket was full), brought events (over ESP or TLS), or found the connection
    /// over.
    pub(super) wake: Notify,
    /// The packet threads read the TLS connection (the task no longer does).
    pub(super) read_by_threads: AtomicBool,
    /// Why the packet threads found the connection over, for the task to act on.
    pub(super) ended: Mutex<Option<String>>,
}

impl Session {
    pub(super) fn new(proto: Client, link: TlsLink) -> Session {
        Session {
            proto: Mutex::new(proto),
            link,
            wake: Notify::new(),
            read_by_threads: AtomicBool::new(false),
            ended: Mutex::new(None),
        }
    }

    /// Records that the connection is over (the first reason counts) and wakes the task.
    pub(super) fn end(&self, why: String) {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.wake.notify_one();
    }

    /// Why the packet threads found the connection over, if they did.
    pub(super) fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

enum Outcome {
    /// Ended on request (sign-out, disconnect).
    Done,
    /// Suspended: wait for Resume.
    Suspended,
    /// Lost: reconnect (with the reason, for the status and the event log).
    Lost(String),
    /// Failed for good.
    Failed(Failure),
}

async fn run(
    spec: ConnectSpec,
    plane: DataPlane,
    emit: Emit,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<(Command, oneshot::Sender<()>)>,
) {
    let mut cookie = spec.cookie.clone();
    let mut tunnel: Option<Tunnel> = None;
    let mut backoff = Backoff::new(spec.disconnect_timeout);
    let mut gateway_index = 0usize;
    let mut prompts = spec.prompts.clone();
    loop {
        let gw = spec.gateways[gateway_index % spec.gateways.len().max(1)].clone();
        set_state(
            &shared,
            if backoff.in_outage() {
                State::Reconnecting
            } else {
                State::Connecting
            },
        );
        if let Ok(mut s) = shared.status.lock() {
            s.server = Some(gw.to_string());
        }
        let began = Instant::now();
        let outcome = session(
            &spec,
            &gw,
            &mut cookie,
            &mut tunnel,
            &plane,
            &emit,
            &shared,
            &mut commands,
            &mut prompts,
        )
        .await;
        let came_up = shared
            .established_at
            .lock()
            .map(|t| t.is_some_and(|t| t >= began))
            .unwrap_or(false);
        if came_up {
            backoff.start_over();
        }
        match outcome {
            Outcome::Done => break,
            Outcome::Failed(f) => {
                warn!(connection = %spec.name, error = %f, "connection failed");
                if let Ok(mut s) = shared.status.lock() {
                    s.last_error = Some(f.clone());
                    s.state = State::Failed;
                }
                report_first(&shared, Err(f));
                break;
            }
            Outcome::Suspended => {
                set_state(&shared, State::Suspended);
                teardown(&mut tunnel, &plane, spec.id);
                // Wait for Resume (or an end).
                loop {
                    match commands.recv().await {
                        Some((Command::Resume, ack)) => {
                            emit.event(EventKind::UserResume {
                                connection: spec.name.clone(),
                            });
                            let _ = ack.send(());
                            break;
                        }
                        Some((Command::Suspend, ack)) => {
                            let _ = ack.send(());
                        }
                        Some((Command::Signout | Command::Disconnect, ack)) => {
                            let _ = ack.send(());
                            set_state(&shared, State::Disconnected);
                            return;
                        }
                        None => return,
                    }
                }
                backoff.start_over();
                continue;
            }
            Outcome::Lost(why) => {
                if let Ok(mut s) = shared.status.lock() {
                    s.last_error = Some(Failure::Connect(why.clone()));
                    s.reconnects += 1;
                }
                // Exponential back-off, capped; the URL list is walked on every failure.
                let delay = match backoff.lost(Instant::now()) {
                    AfterLoss::RetryIn(delay) => delay,
                    AfterLoss::GiveUp(outage) => {
                        let f = Failure::Timeout(format!(
                            "no gateway reachable for {} s: {why}",
                            outage.as_secs()
                        ));
                        if let Ok(mut s) = shared.status.lock() {
                            s.last_error = Some(f.clone());
                            s.state = State::Failed;
                        }
                        report_first(&shared, Err(f));
                        break;
                    }
                };
                if spec.gateways.len() > 1 {
                    gateway_index += 1;
                }
                debug!(connection = %spec.name, ?delay, "reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    cmd = commands.recv() => match cmd {
                        Some((Command::Signout | Command::Disconnect, ack)) => { let _ = ack.send(()); break; }
                        Some((_, ack)) => { let _ = ack.send(()); }
                        None => break,
                    }
                }
                continue;
            }
        }
    }
    teardown(&mut tunnel, &plane, spec.id);
    if let Ok(mut s) = shared.status.lock()
        && s.state != State::Failed
    {
        s.state = State::Disconnected;
    }
    *shared
        .established_at
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = None;
    emit.event(EventKind::Disconnected {
        connection: spec.name.clone(),
    });
}

/// The gateway's alert refusing the client certificate we presented, or asking for one we
/// did not: trying again with the same certificates cannot succeed, so the connection fails
/// with a certificate error instead of reconnecting until it times out.
fn client_certificate_refused(e: &io::Error, selector: &CertSelector) -> Option<Failure> {
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
    let message = match selector.choice() {
        Some(Choice::Presented { name, .. }) => {
            format!("the gateway refused the client certificate '{name}' ({alert:?})")
        }
        Some(Choice::NoneFitted { issuers }) if !issuers.is_empty() => format!(
            "the gateway requires a client certificate from {} ({alert:?}), and no stored certificate matched",
            issuers.join("; ")
        ),
        _ => format!("the gateway requires a client certificate ({alert:?})"),
    };
    Some(Failure::Certificate { message, pin: None })
}

/// `message`, with the note of a certificate request no stored certificate met, if any.
fn with_note(message: String, note: Option<&str>) -> String {
    match note {
        Some(note) => format!("{message} ({note})"),
        None => message,
    }
}

fn teardown(tunnel: &mut Option<Tunnel>, plane: &DataPlane, id: ConnId) {
    if let Some(mut t) = tunnel.take() {
        t.stop_threads();
        if let Ok(mut nl) = Netlink::open() {
            for r in &t.routes {
                let _ = nl.route_del(r);
            }
        }
        if let Err(e) = plane.disconnect(id) {
            warn!(error = %e, "withdrawing the policy entry failed");
        }
        // Dropping the Tun removes the device.
    }
}

/// Resolves the gateway host to one address.
async fn resolve(gw: &Gateway) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((gw.host.as_str(), gw.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", gw.host))?;
    addrs
        .next()
        .ok_or_else(|| format!("{} has no address", gw.host))
}

/// A TCP connection whose packets carry our socket mark (the classifier lets them bypass).
async fn connect_marked(addr: SocketAddr) -> io::Result<TcpStream> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_mark(OWN_SOCKET_MARK)?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    let stream = tokio::net::TcpSocket::from_std_stream(sock.into());
    tokio::time::timeout(Duration::from_secs(10), stream.connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })?
}

#[expect(
    clippy::too_many_arguments,
    reason = "the session loop's whole context, passed once"
)]
async fn session(
    spec: &ConnectSpec,
    gw: &Gateway,
    cookie: &mut Option<String>,
    tunnel: &mut Option<Tunnel>,
    plane: &DataPlane,
    emit: &Emit,
    shared: &Arc<Shared>,
    commands: &mut mpsc::UnboundedReceiver<(Command, oneshot::Sender<()>)>,
    prompts: &mut Prompter,
) -> Outcome {
    let addr = match resolve(gw).await {
        Ok(a) => a,
        Err(e) => return Outcome::Lost(e),
    };
    let tcp = match connect_marked(addr).await {
        Ok(t) => t,
        Err(e) => {
            emit.event(EventKind::ConnectionError {
                connection: spec.name.clone(),
                error: e.to_string(),
                peer: addr.to_string(),
            });
            return Outcome::Lost(format!("connecting to {addr}: {e}"));
        }
    };
    let roots = super::tls::system_roots();
    // The selector also answers when nothing is stored, so a request it cannot meet is
    // logged.
    let selector = Arc::new(CertSelector::new(spec.client_cert.clone()));
    let config = match super::tls::client_config(spec.trust.clone(), roots, Some(selector.clone()))
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(Failure::Certificate {
                message: e,
                pin: None,
            });
        }
    };
    let server_name = match rustls_pki_types::ServerName::try_from(gw.host.clone()) {
        Ok(n) => n,
        Err(e) => return Outcome::Failed(Failure::Connect(format!("{}: {e}", gw.host))),
    };
    let tls = match TlsConnector::from(config).connect(server_name, tcp).await {
        Ok(t) => t,
        Err(e) => {
            let message = format!("TLS with {gw}: {e}");
            // The verifier names the certificate's pin in its message.
            let pin = message
                .split_whitespace()
                .find(|w| w.starts_with("pin-sha256:"))
                .map(str::to_string);
            if pin.is_some() {
                return Outcome::Failed(Failure::Certificate { message, pin });
            }
            if let Some(refused) = client_certificate_refused(&e, &selector) {
                return Outcome::Failed(refused);
            }
            emit.event(EventKind::ConnectionError {
                connection: spec.name.clone(),
                error: message.clone(),
                peer: addr.to_string(),
            });
            return Outcome::Lost(message);
        }
    };
    // Presented: its "Issued To" names the user when none was given. None fitted: said
    // here, and again if the login is then refused.
    let (presented, unmet) = match selector.choice() {
        Some(Choice::Presented { name, issued_to }) => {
            info!(connection = %spec.name, certificate = %name, "presented the client certificate");
            (Some(issued_to), None)
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
            warn!(connection = %spec.name, "{note}");
            (None, Some(note))
        }
        None => (None, None),
    };
    let learned_pin = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(Pin::of_certificate);
    let (tcp, tls) = tls.into_inner();
    let link = match TlsLink::new(tcp, tls, false) {
        Ok(link) => link,
        Err(e) => return Outcome::Lost(format!("registering the TLS connection: {e}")),
    };
    let mut cfg = ClientConfig::new(gw.host.clone());
    cfg.path = gw.path.clone();
    cfg.cookie = cookie.clone();
    cfg.enable_esp = spec.esp;
    cfg.udp_ipv6 = addr.is_ipv6();
    // Our own gateway then picks AES-256-GCM; Pulse gateways ignore the offer.
    cfg.offer_aes_gcm = true;
    // And it batches TLS records for us; Pulse gateways ignore the header too.
    cfg.stream_records = true;
    // ESP dead-peer detection follows the AtpProbe* settings; a recovery attempt every idle
    // period brings ESP back once it answers again.
    cfg.esp_dpd = Some(tunnel_proto::EspDpd {
        idle: spec.dpd.idle,
        interval: spec.dpd.interval,
        count: spec.dpd.count,
        retry: spec.dpd.idle,
    });
    let mut client = Client::new(cfg);
    if let Err(e) = client.start() {
        return Outcome::Failed(Failure::Connect(e.to_string()));
    }
    let session = Arc::new(Session::new(client, link));
    let mut buf = vec![0u8; 65_536];
    // Packets the gateway sent over TLS, joined for the TUN device.
    // Made with the tunnel's device (the offloads it has decide what is joined).
    let mut sink: Option<TunSink> = None;
    let mut esp_out = vec![0u8; 2048];
    let mut probes_sent = 0u32;
    let mut quiet_since = Instant::now();
    // The route to the gateway is looked at every 2 s, however busy the connection: a timer
    // made anew on every pass of the loop never fired while packets kept arriving over TLS.
    let mut route_check = tokio::time::interval_at(
        tokio::time::Instant::now() + ROUTE_CHECK_EVERY,
        ROUTE_CHECK_EVERY,
    );
    route_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    *shared
        .last_inbound
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = quiet_since;
    loop {
        // Flush what the state machine queued; act on its events.
        let (events, next_timer, probes) = {
            let mut c = session.proto.lock().unwrap_or_else(|e| e.into_inner());
            let events: Vec<ClientEvent> = std::iter::from_fn(|| c.poll_event()).collect();
            let mut probes = Vec::new();
            let now = Instant::now();
            while let Ok(Some(n)) = c.poll_timers(now, &mut esp_out) {
                probes.push(esp_out[..n].to_vec());
            }
            (events, c.next_timer(), probes)
        };
        if session.send_tls().await.is_err() {
            return Outcome::Lost("the gateway closed the connection".into());
        }
        let progressed = !events.is_empty();
        for event in events {
            match event {
                ClientEvent::RealmRequired { realms } => {
                    let realm = spec
                        .realm
                        .clone()
                        .or_else(|| realms.first().cloned())
                        .unwrap_or_default();
                    if !realms.is_empty() && !realms.contains(&realm) {
                        return Outcome::Failed(Failure::Auth(format!(
                            "realm '{realm}' is not offered by the gateway (it offers {})",
                            realms.join(", ")
                        )));
                    }
                    let _ = session.proto.lock().map(|mut c| c.choose_realm(&realm));
                }
                ClientEvent::CredentialsRequired {
                    retry,
                    max_password_len,
                    ..
                } => {
                    if retry {
                        session.link.close();
                        emit.event(EventKind::LoginErrorDisconnect {
                            connection: spec.name.clone(),
                        });
                        return Outcome::Failed(Failure::Auth(with_note(
                            "the gateway refused the username or password".into(),
                            unmet.as_deref(),
                        )));
                    }
                    // With a certificate presented, the user defaults to its "Issued To" and
                    // the password to none (a certificate login needs none).
                    let user = spec
                        .user
                        .as_ref()
                        .or(presented.as_ref().and_then(Option::as_ref));
                    let password = prompts
                        .password(spec.password.as_deref())
                        .or(presented.as_ref().map(|_| ""));
                    let (Some(user), Some(password)) = (user, password) else {
                        return Outcome::Failed(Failure::CredentialsNeeded(with_note(
                            "the gateway asks for a username and password, and none were given"
                                .into(),
                            unmet.as_deref(),
                        )));
                    };
                    prompts::warn_if_cut(emit, &spec.name, max_password_len, password);
                    let _ = session
                        .proto
                        .lock()
                        .map(|mut c| c.provide_credentials(user, password));
                }
                ev @ (ClientEvent::TokenRequired { .. }
                | ClientEvent::PasswordChangeRequired
                | ClientEvent::Notice { .. }
                | ClientEvent::SessionLimit { .. }) => {
                    if let ClientEvent::Notice { text, .. } = &ev
                        && let Ok(mut s) = shared.status.lock()
                        && !s.notices.contains(text)
                    {
                        prompts::log_notice(emit, &spec.name, text);
                        s.notices.push(text.clone());
                    }
                    let password = spec.password.as_deref();
                    if let Err(e) = prompts.on_event(&ev, &session.proto, password).await {
                        session.link.close();
                        return Outcome::Failed(prompts::failed(emit, &spec.name, addr, e));
                    }
                }
                ClientEvent::ResumeRejected => {
                    info!(connection = %spec.name, "the gateway did not resume the session; logging in");
                    *cookie = None;
                }
                ClientEvent::CookieReceived { cookie: c, .. } => *cookie = Some(c),
                ClientEvent::AuthFailed(why) => {
                    emit.event(EventKind::LoginErrorDisconnect {
                        connection: spec.name.clone(),
                    });
                    return Outcome::Failed(Failure::Auth(with_note(
                        format!("login failed: {why:?}"),
                        unmet.as_deref(),
                    )));
                }
                ClientEvent::Authenticated => debug!(connection = %spec.name, "authenticated"),
                ClientEvent::Configured(config) => {
                    if let Err(f) =
                        configure(spec, gw, addr, &config, tunnel, plane, &session, shared)
                    {
                        return Outcome::Failed(f);
                    }
                    *shared
                        .established_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    set_state(shared, State::Connected);
                    if let Ok(mut s) = shared.status.lock() {
                        s.transport = Some(Transport::Tls);
                        s.last_error = None;
                    }
                    emit.event(EventKind::Established {
                        connection: spec.name.clone(),
                        address: addr.ip().to_string(),
                    });
                    if let (Some(pin), true) = (learned_pin, spec.learn_pin) {
                        emit.learned_pin(&spec.name, &gw.host, pin);
                    }
                    report_first(shared, Ok(()));
                }
                ClientEvent::Packet(p) => {
                    if let Some(t) = tunnel.as_ref() {
                        shared.traffic.packets_in.fetch_add(1, Ordering::Relaxed);
                        shared
                            .traffic
                            .bytes_in
                            .fetch_add(p.len() as u64, Ordering::Relaxed);
                        let _ = t.tun.send_packet(&p);
                    }
                }
                ClientEvent::EspUp => {
                    if let Ok(mut s) = shared.status.lock() {
                        s.transport = Some(Transport::Esp);
                    }
                    emit.event(EventKind::TlsToEsp {
                        connection: spec.name.clone(),
                    });
                }
                ClientEvent::EspDown => {
                    if let Ok(mut s) = shared.status.lock() {
                        s.transport = Some(Transport::Tls);
                    }
                    emit.event(EventKind::EspToTls {
                        connection: spec.name.clone(),
                    });
                }
                ClientEvent::EspRekeyed => debug!(connection = %spec.name, "ESP rekeyed"),
                ClientEvent::Terminated { kind, message } => {
                    emit.event(EventKind::ServerDisconnected {
                        connection: spec.name.clone(),
                        reason: format!("{kind:?}: {message}"),
                        peer: addr.ip().to_string(),
                    });
                    // The gateway ended the session (restart, idle timeout...): log in again.
                    *cookie = None;
                    return Outcome::Lost(format!("the gateway ended the session: {message}"));
                }
                ClientEvent::LoggedOut => return Outcome::Done,
                other => debug!(?other, "client event"),
            }
        }
        // Probes go out after the events are acted on: the configuration that starts ESP
        // also makes the ESP socket (a new one on every login), and a probe sent through the
        // previous session's socket would teach the gateway a port nobody reads any more;
        // it sends its ESP there until a later probe corrects it (a second of lost packets
        // after every reconnect).
        if let (Some(t), false) = (tunnel.as_ref(), probes.is_empty())
            && let Some(udp) = &t.udp
        {
            for p in &probes {
                let _ = udp.send(p);
            }
        }
        if let Some(why) = session.ended() {
            return Outcome::Lost(why);
        }
        if progressed {
            continue;
        }
        // Dead-peer detection of the connection: quiet (nothing over TLS or ESP) for `idle`,
        // then `count` probes `interval` apart; anything arriving starts over. While ESP is up
        // the ESP probes watch the peer (and fall back to TLS when it stops answering); this
        // check runs on TLS only, so a dead ESP path means a fallback, not a reconnect.
        let last_rx = *shared
            .last_inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let esp_up = session.proto.lock().map(|c| c.esp_up()).unwrap_or(false);
        if last_rx > quiet_since || esp_up {
            quiet_since = if esp_up { Instant::now() } else { last_rx };
            probes_sent = 0;
        }
        let dpd_deadline = quiet_since + spec.dpd.idle + spec.dpd.interval * probes_sent;
        let timer = next_timer.map_or(dpd_deadline, |t| t.min(dpd_deadline));
        tokio::select! {
            read = session.link.recv(&mut buf), if !session.read_by_threads.load(Ordering::Acquire) => {
                let n = match read {
                    Ok(0) => return Outcome::Lost("the gateway closed the connection".into()),
                    Err(e) => {
                        // TLS 1.3: the gateway's verdict on our certificate comes after the
                        // handshake, with its first records.
                        if let Some(refused) = client_certificate_refused(&e, &selector) {
                            return Outcome::Failed(refused);
                        }
                        return Outcome::Lost(format!("reading from the gateway: {e}"));
                    }
                    Ok(n) => n,
                };
                let tun = tunnel.as_ref().map(|t| &*t.tun);
                match take_tls_bytes(&session, shared, tun, &mut sink, &buf[..n]) {
                    Err(Ended::Lost(why)) => return Outcome::Lost(why),
                    Err(Ended::Unsupported(what)) => {
                        return Outcome::Failed(prompts::unsupported(emit, &spec.name, addr, what));
                    }
                    Ok(_) => {}
                }
            }
            _ = session.wake.notified() => {}
            _ = tokio::time::sleep_until(timer.into()) => {
                if Instant::now() >= dpd_deadline && tunnel.is_some() {
                    if probes_sent >= spec.dpd.count {
                        return Outcome::Lost(format!(
                            "the gateway did not answer {} probes after {} s of silence",
                            spec.dpd.count, spec.dpd.idle.as_secs()
                        ));
                    }
                    // The probe is an ICMP echo to the gateway's tunnel address: any answer (or
                    // any other traffic) proves the peer alive.
                    probes_sent += 1;
                    if let Some(p) = tunnel.as_ref().and_then(keepalive_packet) {
                        let sent = session.proto.lock().map(|mut c| c.send_packet(&p, Instant::now(), &mut esp_out));
                        if let (Ok(Ok(Transmit::Esp(n))), Some(udp)) = (sent, tunnel.as_ref().and_then(|t| t.udp.clone())) {
                            let _ = udp.send(&esp_out[..n]);
                        }
                    }
                }
            }
            _ = route_check.tick(), if tunnel.is_some() => {
                if let Some(t) = tunnel.as_ref()
                    && let Some((was, now)) = route_change(addr.ip(), t)
                {
                    emit.event(EventKind::RouteChanged { connection: spec.name.clone(), from: was.clone(), to: now.clone() });
                    return Outcome::Lost(format!("the route to the gateway changed ({was} -> {now})"));
                }
            }
            cmd = commands.recv() => {
                let Some((cmd, ack)) = cmd else { return Outcome::Done };
                let outcome = match cmd {
                    Command::Signout => {
                        let _ = session.proto.lock().map(|mut c| c.logout());
                        let _ = session.send_tls().await;
                        session.link.close();
                        *cookie = None;
                        Outcome::Done
                    }
                    Command::Disconnect => {
                        session.link.close();
                        Outcome::Done
                    }
                    Command::Suspend => {
                        emit.event(EventKind::UserSuspend { connection: spec.name.clone() });
                        session.link.close();
                        Outcome::Suspended
                    }
                    Command::Resume => {
                        let _ = ack.send(());
                        continue;
                    }
                };
                let _ = ack.send(());
                return outcome;
            }
        }
    }
}

/// Why the gateway's bytes ended the session.
pub(super) enum Ended {
    /// The session broke: reconnect.
    Lost(String),
    /// The gateway asked for something this client does not support: retrying asks again.
    Unsupported(String),
}

/// A small ICMP echo request from the tunnel address to the gateway's tunnel address, the
/// keepalive probe of dead-peer detection.
fn keepalive_packet(t: &Tunnel) -> Option<Vec<u8>> {
    use crate::datapath::reference::{fold, ones_sum};
    let (src, dst) = (t.ipv4?, t.internal_gateway?);
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = fold(ones_sum(0, &p[..20]));
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20] = 8;
    let sum = fold(ones_sum(0, &p[20..]));
    p[22..24].copy_from_slice(&sum.to_be_bytes());
    Some(p)
}

/// Whether the route to the gateway now leaves through another interface or source address
/// than when the tunnel came up; returns (before, now) for the event.
fn route_change(gateway: IpAddr, t: &Tunnel) -> Option<(String, String)> {
    let was = t.uplink?;
    let mut nl = Netlink::open().ok()?;
    let now = nl.route_get(gateway).ok()?;
    let show = |r: Option<crate::sys::netconf::RouteLookup>| match r {
        Some(r) => format!(
            "{} (ifindex {})",
            r.prefsrc.map_or("-".into(), |a| a.to_string()),
            r.ifindex
        ),
        None => "no route".into(),
    };
    match now {
        Some(r) if r.ifindex == was.ifindex && r.prefsrc == was.prefsrc => None,
        other => Some((show(Some(was)), show(other))),
    }
}

/// Applies the gateway's configuration: TUN device, addresses, routes, the policy entry, the
/// ESP socket and the packet threads. On a reconnect the existing tunnel is reused when the
/// address did not change.
#[expect(clippy::too_many_arguments, reason = "the session's context")]
fn configure(
    spec: &ConnectSpec,
    gw: &Gateway,
    addr: SocketAddr,
    config: &Config,
    tunnel: &mut Option<Tunnel>,
    plane: &DataPlane,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> Result<(), Failure> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Failure::Connect(format!("{what}: {e}"));
    let ipv4 = spec.tun_ip.or(config.ipv4_address);
    let ipv6 = config.ipv6_address.map(|n| n.addr);
    if ipv4.is_none() && ipv6.is_none() {
        return Err(Failure::Connect("the gateway assigned no address".into()));
    }
    let mtu = spec
        .mtu
        .or(config.mtu.map(|m| m.min(9000) as u16))
        .unwrap_or(1400);
    // Include: KVP IPRoutes when set, else the gateway's routes, else everything.
    let gateway_include: Vec<IpNet> = config
        .include_v4
        .iter()
        .map(|n| IpNet::V4(ipnet::Ipv4Net::new(n.addr, n.prefix_len).unwrap_or_default()))
        .chain(
            config
                .include_v6
                .iter()
                .map(|n| IpNet::V6(ipnet::Ipv6Net::new(n.addr, n.prefix_len).unwrap_or_default())),
        )
        .collect();
    let include = spec.ip_routes.clone().unwrap_or(gateway_include);
    let mut exclude: Vec<IpNet> = config
        .exclude_v4
        .iter()
        .map(|n| IpNet::V4(ipnet::Ipv4Net::new(n.addr, n.prefix_len).unwrap_or_default()))
        .chain(
            config
                .exclude_v6
                .iter()
                .map(|n| IpNet::V6(ipnet::Ipv6Net::new(n.addr, n.prefix_len).unwrap_or_default())),
        )
        .collect();
    exclude.extend(spec.exc_routes.iter().copied());

    let reuse = tunnel.as_ref().is_some_and(|t| t.ipv4 == ipv4);
    if !reuse {
        // A new address: rebuild.
        teardown(tunnel, plane, spec.id);
        let name = format!("tun{}", spec.id);
        let tun = Arc::new(
            Tun::create_offloaded(&name).map_err(|e| fail("creating the TUN device", &e))?,
        );
        let index = crate::datapath::ifindex(&name).map_err(|e| fail("TUN device", &e))?;
        let mut nl = Netlink::open().map_err(|e| fail("netlink", &e))?;
        // Replies arrive on the TUN with remote sources routed via the uplink, which strict
        // reverse-path filtering would drop. The kernel applies the stricter of the
        // system-wide and the device's setting: loose mode where the system filters at all,
        // none where it does not (a loose check is one more route lookup per packet and, with
        // a default route, drops nothing).
        let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter");
        let mode = if all.is_ok_and(|v| v.trim() == "0") {
            "0"
        } else {
            "2"
        };
        let _ = sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), mode);
        if ipv6.is_none() {
            let _ = sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
        }
        if let Err(e) = nl.root_qdisc_noqueue(index) {
            warn!(error = %e, "the TUN device keeps its default qdisc");
        }
        nl.link_up(index, Some(u32::from(mtu)))
            .map_err(|e| fail("bringing up the TUN", &e))?;
        if let Some(a) = ipv4 {
            nl.addr_add(index, IpAddr::V4(a), 32)
                .map_err(|e| fail("TUN address", &e))?;
        }
        if let Some(a) = ipv6 {
            nl.addr_add(index, IpAddr::V6(a), 128)
                .map_err(|e| fail("TUN address", &e))?;
        }
        // Included ranges the routing table would not send to an uplink (no default route)
        // are routed into the TUN device, where the egress program applies the policy.
        let mut routes = Vec::new();
        for net in &include {
            let unrouted = matches!(nl.route_get(net.network()), Ok(None));
            if unrouted {
                let r = Route {
                    dst: *net,
                    via: Via::Dev(index),
                    metric: None,
                    mtu: None,
                };
                if nl.route_add(&r).is_ok() {
                    routes.push(r);
                }
            }
        }
        let uplink = nl.route_get(addr.ip()).ok().flatten();
        *tunnel = Some(Tunnel {
            tun,
            routes,
            udp: None,
            stop: Arc::new(Stop::new().map_err(|e| fail("the packet threads' stop signal", &e))?),
            threads: Vec::new(),
            ipv4,
            internal_gateway: config.internal_gateway,
            uplink,
        });
    }
    let t = tunnel
        .as_mut()
        .ok_or_else(|| Failure::Connect("no tunnel".into()))?;
    if reuse {
        // The route this session came up on: the one a change of routes made it reconnect
        // over, for one. Kept from before, it made every later check see that same change
        // again, and the client reconnected every 2 s for as long as it stayed.
        t.uplink = Netlink::open()
            .ok()
            .and_then(|mut nl| nl.route_get(addr.ip()).ok().flatten());
    }
    t.stop_threads();
    let tun_index = crate::datapath::ifindex(t.tun.name()).map_err(|e| fail("TUN device", &e))?;
    let conn = ConnPolicy {
        id: spec.id,
        tun_ifindex: tun_index,
        tun_v4: ipv4,
        tun_v6: ipv6,
        mtu,
        include: include.clone(),
        exclude: exclude.clone(),
        udp_ports: spec.udp_ports.clone(),
    };
    plane
        .connect(
            spec.id,
            t.tun.name(),
            ConnEntry {
                conn,
                gateway: addr.ip(),
                app_cgroup: spec.app_cgroup,
            },
        )
        .map_err(|e| fail("installing the policy", &e))?;
    // The ESP socket: connected to the gateway's ESP port, marked so it bypasses.
    t.udp = match (spec.esp, config.esp.port) {
        (true, Some(port)) => match esp_socket(SocketAddr::new(addr.ip(), port)) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                warn!(error = %e, "no ESP socket; staying on TLS");
                None
            }
        },
        _ => None,
    };
    t.threads = super::end::start_threads(t, session, shared)
        .map_err(|e| fail("starting the packet threads", &e))?;
    if let Ok(mut s) = shared.status.lock() {
        s.ipv4 = ipv4;
        s.ipv6 = ipv6;
        s.tun = Some(t.tun.name().to_string());
        s.dns = config.dns.clone();
        s.search_domains = config.search_domains.clone();
        s.include = include.iter().map(ToString::to_string).collect();
        s.exclude = exclude.iter().map(ToString::to_string).collect();
        s.cipher = match (config.esp.cipher, config.esp.hmac) {
            (Some(c), Some(m)) => tunnel_proto::EspSuite::from_codes(c, m)
                .ok()
                .map(|suite| suite.name().to_string()),
            _ => None,
        };
        s.server = Some(gw.to_string());
    }
    info!(connection = %spec.name, ipv4 = ?ipv4, ipv6 = ?ipv6, mtu, "tunnel configured");
    Ok(())
}

fn esp_socket(gateway: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if gateway.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    sock.set_mark(OWN_SOCKET_MARK)?;
    sock.connect(&gateway.into())?;
    sock.set_nonblocking(true)?;
    let sock: UdpSocket = sock.into();
    udp_gso::tune(&sock);
    Ok(sock)
}

/// How often a live connection checks that the route to its gateway still leaves through
/// the uplink it came up on.
const ROUTE_CHECK_EVERY: Duration = Duration::from_secs(2);
