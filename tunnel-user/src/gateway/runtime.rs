//! The running gateway: the TLS listener and one task per connection, the packet threads
//! that read the TUN device, the ESP socket and the established sessions' TLS connections
//! (`tls_readers`), the session table tying them together, and graceful shutdown.
//! docs/gateway.md draws the data flow.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
};
use tokio_rustls::TlsAcceptor;

use tracing::{Instrument, debug, info, info_span, warn};
use tunnel_proto::{
    ActiveSession, AuthRejection, CloseReason, Config, DPD_PROBES, ESP_ATTEMPT_PERIOD, EspSettings,
    EspSuite, FatalErrorKind, Password, PasswordForm, Prompt, PromptAnswer, Server, ServerConfig,
    ServerEvent,
};

use super::plane::{EspSide, TlsScratch, TunSide, flush_client_packets, read_tls_connection};
use super::{
    GatewayConfig, Lease, PasswordRequest, PoolChoice, RealmPools, SecondFactor,
    access::{AccessCache, AccessControl, AccessPolicy, local_addresses},
    admission::{Admission, FLOOD_LOG_INTERVAL, LogThrottle, LoginSlot, Refusal},
    client_cert::{self, CertNameError},
    dialogue::{Dialogue, RealmLogin, Step},
    login::{LoginRequest, Logins, PasswordChange},
    table::{Place, Resumable, Session, SessionTable, SpiRegistry},
    tls::{self, TlsSetupError},
    tls_readers::{TlsReader, TlsReaders},
    unix_now,
};
use crate::{
    datapath::ifindex,
    fastpath::pump::{Dispatch, Stop, TunSink},
    sys::netconf::{NetconfError, Netlink, Route, Via, sysctl},
    sys::tls_link::TlsLink,
    sys::tun::Tun,
    sys::udp_gso::{self},
};

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("users file: {0}")]
    Users(#[from] super::UsersError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("configuring the TUN device: {0}")]
    Netconf(#[from] NetconfError),
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> GatewayError {
    let what = what.into();
    move |source| GatewayError::Io { what, source }
}

/// The first pause after `accept()` failed; each failure in a row doubles it, up to
/// [`ACCEPT_BACKOFF_MAX`]. A failing accept (out of descriptors: EMFILE, ENFILE, ENOBUFS)
/// leaves the connection queued and the listener readable, so retrying at once would spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Each connection task reads into a buffer this big until its session is established
/// (the packet threads read it afterwards): one TLS record's plaintext.
const LOGIN_READ_BUF: usize = 16 * 1024;

/// What every task and thread shares.
pub(super) struct Ctx {
    pub(super) config: GatewayConfig,
    /// What each connection's state machine starts with.
    pub(super) server_config: ServerConfig,
    /// Connections not logged in yet ([`Admission`]).
    pub(super) admission: Arc<Admission>,
    /// Connections refused at a cap.
    pub(super) refused: AtomicU64,
    /// Connections that ended at the password request, told at most every 10 s.
    pub(super) silent_at_password_log: LogThrottle,
    pub(super) refused_log: LogThrottle,
    /// The address pools: `[pool]`'s and the realms' own.
    pub(super) pool: Mutex<RealmPools>,
    /// Password and certificate logins: rate limits, hashing workers, the users file.
    pub(super) logins: Logins,
    pub(super) table: SessionTable,
    /// The inbound SPIs every session's state machine takes its SAs' from.
    pub(super) spis: Arc<SpiRegistry>,
    pub(super) tun: Tun,
    pub(super) udp: Option<UdpSocket>,
    pub(super) next_id: AtomicU64,
    /// Stops the packet threads.
    pub(super) stop: Stop,
    /// Hands the TUN device, the ESP socket and the established sessions' TLS connections
    /// (`tls_readers`) to the packet threads.
    pub(super) dispatch: Dispatch,
    pub(super) tls_readers: TlsReaders,
    /// What the thread reading the TLS connections reads into; taken by whoever holds
    /// `Source::Tls`.
    pub(super) tls_scratch: Mutex<TlsScratch>,
    /// Packets dropped because no session owns their destination, or spoofed sources.
    pub(super) dropped: AtomicU64,
    /// Where clients' packets may go ([`AccessPolicy`]), and how many it stopped.
    pub(super) access: AccessControl,
    pub(super) forbidden: AtomicU64,
    /// Sessions dead-peer detection took as gone.
    pub(super) dead_peers: AtomicU64,
    pub(super) tun_side: Mutex<TunSide>,
    pub(super) esp_side: Mutex<EspSide>,
}

/// A gateway bound to its sockets and TUN device, ready to [`run`](Gateway::run).
pub struct Gateway {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

impl Gateway {
    /// Sets everything up: TLS, the users file (checked once here), the TUN device with the
    /// gateway's tunnel addresses, forwarding, the TCP listener and the ESP socket.
    pub async fn bind(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let tls = tls::server_config(&config.tls, &config.auth.certificate)?;
        let logins = Logins::new(
            config.auth.users_file.clone(),
            &config.auth.passwords,
            config.auth.certificate.clone(),
        )
        .map_err(io_err("starting the password hashing workers"))?;
        // Checked once here, and kept for the first login.
        let users = logins.users()?;
        info!(
            users = users.len(),
            hash_workers = logins.hash_workers(),
            "users file loaded"
        );
        warn_if_dpd_outpaces_clients(&config);
        let tun = Tun::create_offloaded(&config.tun_name)
            .map_err(io_err(format!("creating TUN {}", config.tun_name)))?;
        configure_tun(&config, &tun)?;
        let local = local_addresses().map_err(io_err("listing the host's addresses"))?;
        let access = AccessControl::new(AccessPolicy::new(&config, &local));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(io_err(format!("listening on {}", config.listen)))?;
        let udp = if config.esp.enabled {
            let at = SocketAddr::new(config.listen.ip(), config.esp.port);
            let sock = UdpSocket::bind(at).map_err(io_err(format!("ESP socket on {at}")))?;
            sock.set_nonblocking(true)
                .map_err(io_err("making the ESP socket non-blocking"))?;
            if !udp_gso::tune(&sock) {
                warn!("UDP GRO is not available: one ESP datagram per receive");
            }
            Some(sock)
        } else {
            None
        };
        let pool = RealmPools::from_config(&config).map_err(|e| GatewayError::Io {
            what: "address pool".into(),
            source: io::Error::other(e.to_string()),
        })?;
        let stop = Stop::new().map_err(io_err("the packet threads' stop signal"))?;
        let mut dispatch = Dispatch::new(&tun, udp.as_ref(), &stop)
            .map_err(io_err("the packet threads' epoll set"))?;
        let tls_readers = TlsReaders::new().map_err(io_err("the TLS connections' epoll set"))?;
        dispatch
            .add_tls(&tls_readers)
            .map_err(io_err("the packet threads' epoll set"))?;
        let tls_scratch = Mutex::new(TlsScratch::new(&tun));
        let esp_side = Mutex::new(EspSide::new(&tun));
        let ctx = Arc::new(Ctx {
            server_config: server_config(&config),
            admission: Admission::new(
                config.limits.login_connections,
                config.limits.login_connections_per_source,
            ),
            refused: AtomicU64::new(0),
            silent_at_password_log: LogThrottle::new(FLOOD_LOG_INTERVAL),
            refused_log: LogThrottle::new(FLOOD_LOG_INTERVAL),
            pool: Mutex::new(pool),
            logins,
            table: SessionTable::default(),
            spis: Arc::default(),
            tun,
            udp,
            next_id: AtomicU64::new(1),
            stop,
            dispatch,
            tls_readers,
            tls_scratch,
            dropped: AtomicU64::new(0),
            access,
            forbidden: AtomicU64::new(0),
            dead_peers: AtomicU64::new(0),
            tun_side: Mutex::new(TunSide::new()),
            esp_side,
            config,
        });
        Ok(Gateway {
            ctx,
            listener,
            acceptor: TlsAcceptor::from(tls),
        })
    }

    /// The address the TLS listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then sends every client the session-terminated frame
    /// and waits for the sessions to close.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), GatewayError> {
        let Gateway {
            ctx,
            listener,
            acceptor,
        } = self;
        let threads = super::plane::start_data_plane(&ctx)?;
        let (stop_tx, _) = broadcast::channel::<()>(1);
        let mut tasks = tokio::task::JoinSet::new();
        let janitor = tokio::spawn(janitor(ctx.clone(), stop_tx.subscribe()));
        tokio::pin!(shutdown);
        info!(listen = %listener.local_addr().map_err(io_err("listener address"))?, "gateway running");
        let accept_log = LogThrottle::new(FLOOD_LOG_INTERVAL);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (conn, peer) = match accepted {
                        Ok(a) => {
                            backoff = ACCEPT_BACKOFF_MIN;
                            a
                        }
                        Err(e) => {
                            if let Some(held) = accept_log.event(Instant::now()) {
                                warn!(error = %e, more = held, pause_ms = backoff.as_millis() as u64, "accept failed");
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                            continue;
                        }
                    };
                    // The caps come before any work on the connection.
                    let slot = match ctx.admission.admit(peer.ip()) {
                        Ok(slot) => slot,
                        Err(refusal) => {
                            drop(conn);
                            refused(&ctx, peer, refusal);
                            continue;
                        }
                    };
                    // Tunnelled packets go out as TLS records as soon as they are sealed: a
                    // small one must not wait for the ACK of the last (Nagle), as the
                    // client's socket does not either.
                    if let Err(e) = conn.set_nodelay(true) {
                        debug!(error = %e, %peer, "TCP_NODELAY on an accepted connection");
                    }
                    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
                    let span = info_span!("session", id, %peer);
                    tasks.spawn(serve(ctx.clone(), acceptor.clone(), conn, peer, id, slot, stop_tx.subscribe()).instrument(span));
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        info!(
            sessions = ctx.table.live_count(),
            "shutting down: terminating sessions"
        );
        let _ = stop_tx.send(());
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => { warn!("sessions did not close in time"); tasks.abort_all(); break }
            }
        }
        janitor.abort();
        ctx.stop.set();
        for t in threads {
            let _ = t.join();
        }
        info!(
            dropped = ctx.dropped.load(Ordering::Relaxed),
            forbidden = ctx.forbidden.load(Ordering::Relaxed),
            refused = ctx.refused.load(Ordering::Relaxed),
            dead_peers = ctx.dead_peers.load(Ordering::Relaxed),
            "gateway stopped"
        );
        Ok(())
    }
}

/// Counts a connection refused at a cap, and logs it within the flood log's bounds.
fn refused(ctx: &Ctx, peer: SocketAddr, refusal: Refusal) {
    ctx.refused.fetch_add(1, Ordering::Relaxed);
    if let Some(held) = ctx.refused_log.event(Instant::now()) {
        let limits = &ctx.config.limits;
        let (key, cap) = match refusal {
            Refusal::Global => ("limits.login_connections", limits.login_connections),
            Refusal::PerSource => (
                "limits.login_connections_per_source",
                limits.login_connections_per_source,
            ),
        };
        warn!(
            %peer,
            more = held,
            logging_in = ctx.admission.logging_in(),
            cap,
            "connection refused: {key} are logging in"
        );
    }
}

/// Brings the TUN device up with the MTU and the gateway's addresses (whose prefixes route
/// the pools to it), and turns on forwarding.
fn configure_tun(config: &GatewayConfig, tun: &Tun) -> Result<(), GatewayError> {
    let index = ifindex(tun.name()).map_err(|e| GatewayError::Io {
        what: format!("TUN {}", tun.name()),
        source: io::Error::other(e.to_string()),
    })?;
    let mut nl = Netlink::open()?;
    if let Err(e) = nl.root_qdisc_noqueue(index) {
        warn!(error = %e, "the TUN device keeps its default qdisc");
    }
    nl.link_up(index, Some(u32::from(config.mtu)))?;
    nl.addr_add(
        index,
        IpAddr::V4(config.pool.gateway_ipv4),
        config.pool.ipv4.prefix_len(),
    )?;
    if let (Some(net), Some(gw)) = (config.pool.ipv6, config.pool.gateway_ipv6) {
        nl.addr_add(index, IpAddr::V6(gw), net.prefix_len())?;
    }
    // The realms' own pools are routed to the device too (the gateway's addresses are
    // `[pool]`'s).
    for realm in &config.auth.realms {
        let Some(PoolChoice::Own(own)) = config.realm_policy(realm).map(|p| p.pool) else {
            continue;
        };
        let nets =
            std::iter::once(ipnet::IpNet::V4(own.ipv4)).chain(own.ipv6.map(ipnet::IpNet::V6));
        for dst in nets {
            nl.route_add(&Route {
                dst,
                via: Via::Dev(index),
                metric: None,
                mtu: None,
            })?;
        }
    }
    sysctl("net/ipv4/ip_forward", "1").map_err(io_err("enabling IPv4 forwarding"))?;
    if config.pool.ipv6.is_some() {
        sysctl("net/ipv6/conf/all/forwarding", "1").map_err(io_err("enabling IPv6 forwarding"))?;
    }
    Ok(())
}

/// How long a session that lost its connection at `now` stays resumable: the idle timeout
/// (no traffic can flow without a connection), or the session lifetime when there is none;
/// never past the end of its login ([`Resumable::of`]).
fn parked_until(config: &GatewayConfig, now: Instant) -> Instant {
    now + config.idle_timeout.unwrap_or(config.session_lifetime)
}

/// The housekeeping of the gateway, once a second: releases the addresses of parked
/// sessions nobody resumed, and every [`ADDRESS_REFRESH`] puts the host's current addresses
/// into the access policy (an interface may have come up or got a new address).
async fn janitor(ctx: Arc<Ctx>, mut stop: broadcast::Receiver<()>) {
    let mut last_refresh = Instant::now();
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = Instant::now();
        for (_, r) in ctx.table.expire_parked(now) {
            if let Ok(mut pool) = ctx.pool.lock() {
                pool.release(&r.lease);
            }
            info!(user = %r.user, "parked session expired, address released");
        }
        if now.duration_since(last_refresh) >= ADDRESS_REFRESH {
            last_refresh = now;
            match local_addresses() {
                Ok(local) => {
                    if ctx.access.replace(AccessPolicy::new(&ctx.config, &local)) {
                        info!(
                            addresses = local.len(),
                            "the host's addresses changed: access policy updated"
                        );
                    }
                }
                // The policy in force keeps the addresses it knew.
                Err(e) => warn!(error = %e, "listing the host's addresses"),
            }
        }
    }
}

/// How often the host's addresses are read again for the access policy.
const ADDRESS_REFRESH: Duration = Duration::from_secs(5);

/// A live client is heard at least once per its own DPD period (it probes when it hears
/// nothing: the fallback time pushed, openconnect's attempt period without one). A gateway
/// interval no longer than that would take live idle clients for gone.
fn warn_if_dpd_outpaces_clients(config: &GatewayConfig) {
    let client_dpd = config.esp.fallback.unwrap_or(ESP_ATTEMPT_PERIOD);
    if config.esp.enabled && config.dpd_interval <= client_dpd {
        warn!(
            dpd_interval_secs = config.dpd_interval.as_secs(),
            client_dpd_secs = client_dpd.as_secs(),
            "dpd_interval_secs is not longer than the clients' own probe period \
             (esp.fallback_secs): idle clients may be taken as gone and have to resume"
        );
    }
}

/// What `realm` asks of a login after the password.
fn realm_login(cfg: &GatewayConfig, realm: &str) -> RealmLogin {
    let Some(policy) = cfg.realm_policy(realm) else {
        return RealmLogin::default();
    };
    RealmLogin {
        totp: policy.second_factor == SecondFactor::Totp,
        max_sessions_per_user: policy.max_sessions_per_user.map_or(0, |n| n.get()),
        post_auth_notice: policy.post_auth_notice.map(|n| (n.text, n.accept)),
    }
}

/// What every connection's state machine is configured with.
fn server_config(cfg: &GatewayConfig) -> ServerConfig {
    let limits = &cfg.limits;
    ServerConfig {
        realms: cfg.auth.realms.clone(),
        password_form: match cfg.auth.password_request {
            PasswordRequest::Current => PasswordForm::Current,
            PasswordRequest::Legacy => PasswordForm::Legacy,
        },
        pre_auth_notices: cfg
            .auth
            .realms
            .iter()
            .filter_map(|realm| {
                let notice = cfg.realm_policy(realm)?.pre_auth_notice?;
                Some((
                    realm.clone(),
                    tunnel_proto::Notice {
                        text: notice.text,
                        accept: notice.accept,
                    },
                ))
            })
            .collect(),
        idle_timeout: cfg.idle_timeout,
        session_lifetime: Some(cfg.session_lifetime),
        login_max_frame_len: limits.login_frame_bytes,
        auth_timeout: Some(limits.login),
        protocol_step_timeout: Some(limits.login_step),
        user_step_timeout: Some(limits.user_step),
        dpd_interval: Some(cfg.dpd_interval),
        ..ServerConfig::default()
    }
}

/// Asks the next step of the login in `conn`, or accepts it when none is left.
fn next_login_step(ctx: &Ctx, conn: &mut Conn) {
    let (Some(login), Some(p)) = (conn.login.as_mut(), conn.pending.as_mut()) else {
        return;
    };
    loop {
        let prompt = match login.dialogue.next_step() {
            None => {
                if let Some(text) = login.dialogue.take_shown_notice() {
                    p.show_notice(text);
                }
                let _ = p.accept(&new_cookie());
                return;
            }
            Some(Step::SessionLimit(max)) => {
                let sessions = ctx.table.sessions_of(&login.user, &login.realm);
                if sessions.len() < max as usize {
                    continue;
                }
                info!(user = %login.user, realm = %login.realm, sessions = sessions.len(), max, "at the session limit: asking which session to end");
                let mut listed = Vec::with_capacity(sessions.len());
                let shown = sessions
                    .into_iter()
                    .map(|s| {
                        let id = format!("s{}", s.id);
                        listed.push((id.clone(), s.place));
                        ActiveSession {
                            id,
                            from: s.from.to_string(),
                            started: s
                                .logged_in
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs()),
                        }
                    })
                    .collect();
                login.listed = listed;
                login.asked = Some(Step::SessionLimit(max));
                Prompt::SessionChoice { sessions: shown }
            }
            Some(step) => {
                let prompt = match &step {
                    Step::AcceptNotice(text) => Prompt::Notice { text: text.clone() },
                    Step::TokenCode => Prompt::TokenCode {
                        prompt: "Enter the code from your authenticator app:".into(),
                    },
                    Step::ChangePassword => Prompt::PasswordChange,
                    Step::SessionLimit(_) => unreachable!("matched above"),
                };
                login.asked = Some(step);
                prompt
            }
        };
        if let Err(e) = p.ask(prompt) {
            debug!(error = %e, "asking the next login step");
        }
        return;
    }
}

/// Ends one of `user`'s sessions, chosen at the session limit: a live one gets the fatal
/// error frame and ends as if it timed out; a parked one is dropped and its address released.
fn end_session(ctx: &Ctx, place: Place, user: &str) {
    match place {
        Place::Live(s) => {
            info!(%user, session = s.id, peer = %s.peer, "ending a session chosen at the session limit");
            if let Ok(mut p) = s.proto.lock() {
                let _ = p.terminate(
                    FatalErrorKind::SessionTerminated,
                    "Ended by a new login of the same user",
                );
            }
            // Out of the table now, not when its task gets to it: the login that ended it
            // counts the user's sessions again at once.
            ctx.table.remove(&s);
            s.send_tls_now();
            s.wake.notify_one();
        }
        Place::Parked(cookie) => {
            if let Some(r) = ctx.table.remove_parked(&cookie) {
                info!(%user, session = r.id, "ending a parked session chosen at the session limit");
                if let Ok(mut pool) = ctx.pool.lock() {
                    pool.release(&r.lease);
                }
            }
        }
    }
}

fn new_cookie() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The configuration pushed to a client of `realm` holding `lease`: the realm's routes, DNS
/// and pool where it has its own, else the global ones.
fn client_config(cfg: &GatewayConfig, realm: &str, lease: &Lease, offers_aes_gcm: bool) -> Config {
    let policy = cfg.realm_policy(realm);
    let (ipv4_net, ipv6_net) = match policy.as_ref().map(|p| &p.pool) {
        Some(PoolChoice::Own(own)) => (own.ipv4, own.ipv6),
        _ => (cfg.pool.ipv4, cfg.pool.ipv6),
    };
    let (dns, search_domains, routes) = match &policy {
        Some(p) => (&p.dns, &p.search_domains, &p.routes),
        None => (&cfg.dns, &cfg.search_domains, &cfg.routes),
    };
    let mut c = Config {
        ipv4_address: Some(lease.ipv4),
        ipv4_netmask: Some(ipv4_net.netmask()),
        dns: dns.clone(),
        search_domains: search_domains.clone(),
        mtu: Some(u32::from(cfg.mtu)),
        internal_gateway: Some(cfg.pool.gateway_ipv4),
        ..Config::default()
    };
    if let (Some(a), Some(net)) = (lease.ipv6, ipv6_net) {
        c.ipv6_address = tunnel_proto::Ipv6Net::new(a, net.prefix_len()).ok();
    }
    let v4 = |n: &ipnet::IpNet| match n {
        ipnet::IpNet::V4(n) => tunnel_proto::Ipv4Net::new(n.network(), n.prefix_len()).ok(),
        ipnet::IpNet::V6(_) => None,
    };
    let v6 = |n: &ipnet::IpNet| match n {
        ipnet::IpNet::V6(n) => tunnel_proto::Ipv6Net::new(n.network(), n.prefix_len()).ok(),
        ipnet::IpNet::V4(_) => None,
    };
    c.include_v4 = routes.include.iter().filter_map(v4).collect();
    c.exclude_v4 = routes.exclude.iter().filter_map(v4).collect();
    c.include_v6 = routes.include.iter().filter_map(v6).collect();
    c.exclude_v6 = routes.exclude.iter().filter_map(v6).collect();
    if c.include_v4.is_empty() && c.include_v6.is_empty() {
        // No split tunnel configured: everything goes through the tunnel.
        c.include_v4 = tunnel_proto::Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)
            .into_iter()
            .collect();
        if ipv6_net.is_some() {
            c.include_v6 = tunnel_proto::Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0)
                .into_iter()
                .collect();
        }
    }
    // The first suite in the operator's order that this client can use: AES-256-GCM only
    // when it offered it.
    let usable = |s: &&EspSuite| **s != EspSuite::AES256_GCM || offers_aes_gcm;
    if cfg.esp.enabled
        && let Some(suite) = cfg.esp.ciphers.iter().find(usable)
    {
        let secs = |d: Option<Duration>| d.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        c.esp = EspSettings {
            cipher: Some(suite.cipher.code()),
            hmac: Some(suite.mac.code()),
            lifetime_seconds: secs(Some(cfg.esp.key_lifetime)),
            lifetime_bytes: cfg.esp.key_lifetime_bytes.map(|b| b.get()),
            replay_protection: Some(true),
            port: Some(cfg.esp.port),
            fallback_seconds: secs(cfg.esp.fallback),
            ..EspSettings::default()
        };
    }
    c
}

/// How a connection's session ended, for the address bookkeeping.
enum Ending {
    /// Never authenticated: nothing to release.
    Unauthenticated,
    /// Logged out, timed out, rejected or terminated: release the address.
    Finished,
    /// The connection dropped: keep the session resumable.
    Dropped,
    /// Another connection resumed the session: it owns the address now.
    Superseded,
}

/// One connection's state while it is served.
struct Conn {
    peer: SocketAddr,
    id: u64,
    /// The user a verified client certificate names (`auth.certificate.user`), or why it
    /// names none; `None` without a certificate.
    cert_user: Option<Result<String, CertNameError>>,
    /// The state machine until the session is established; afterwards it lives in `session`.
    pending: Option<Server>,
    session: Option<Arc<Session>>,
    /// A session being resumed with its cookie, between ResumeRequested and Authenticated.
    resuming: Option<(String, Resumable)>,
    /// The inbound SPIs the table indexes for this session.
    known_spis: Vec<u32>,
    /// The client offered AES-256-GCM ESP in its upgrade request.
    offers_aes_gcm: bool,
    /// The TLS connection (a record per frame until the client says it reads a stream of
    /// them, as tunnel's client does; openconnect needs one frame per record).
    link: Arc<TlsLink>,
    /// The connection's place among those logging in, given back once it has.
    login_slot: Option<LoginSlot>,
    /// A login whose password (or certificate) was proven, with the steps it has left.
    login: Option<LoginSteps>,
}

/// A login past its password: who, and what is left to ask (`super::dialogue`).
struct LoginSteps {
    realm: String,
    user: String,
    /// The password the login proved (a change must name it).
    password: Password,
    dialogue: Dialogue,
    /// The step asked, whose answer is awaited.
    asked: Option<Step>,
    /// The sessions listed at the session limit, by the id shown.
    listed: Vec<(String, Place)>,
}

impl Conn {
    /// Runs `f` on the state machine wherever it lives now.
    fn with_proto<T>(&mut self, f: impl FnOnce(&mut Server) -> T) -> Option<T> {
        match (&mut self.pending, &self.session) {
            (Some(p), _) => Some(f(p)),
            (None, Some(s)) => s.proto.lock().ok().map(|mut g| f(&mut g)),
            (None, None) => None,
        }
    }

    /// Bytes the state machine wants sent, moved into `out`.
    fn take_tls(&mut self, out: &mut Vec<u8>) {
        if self.with_proto(|p| p.take_tls(out)).is_none() {
            out.clear();
        }
    }

    /// Sends the state machine's final frames, a record each, and closes the connection.
    /// The packet threads stop reading it first: the client's answering close is the end
    /// of a connection being finished here, not a lost one.
    async fn close(&mut self, ctx: &Ctx) {
        let link = self.link.clone();
        link.set_record_per_frame(true);
        let _ = link.send_all(|out| self.take_tls(out)).await;
        ctx.tls_readers.remove(self.id);
        link.close();
    }

    fn dropped(&self) -> Ending {
        if self.session.is_some() {
            Ending::Dropped
        } else {
            Ending::Unauthenticated
        }
    }
}

/// One TLS connection, from handshake to close.
async fn serve(
    ctx: Arc<Ctx>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    login_slot: LoginSlot,
    mut stop: broadcast::Receiver<()>,
) {
    let limits = &ctx.config.limits;
    let evicted = login_slot.eviction();
    let handshake = tokio::time::timeout(limits.tls_handshake, acceptor.accept(tcp));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
            Err(_) => return debug!("TLS handshake timed out"),
        },
        _ = evicted.notified() => return debug!("closed in the TLS handshake to make room (limits.login_connections)"),
    };
    // Verified by the handshake (client CA, CRLs); whose it is decides nothing yet.
    let cert_user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| client_cert::certificate_user(c, ctx.config.auth.certificate.user));
    let (tcp, tls) = tls.into_inner();
    // openconnect needs a record per frame; the client says when it does not.
    let link = match TlsLink::new(tcp, tls, true) {
        Ok(link) => Arc::new(link),
        Err(e) => return debug!(error = %e, "registering the TLS connection"),
    };
    let proto =
        Server::new(ctx.server_config.clone(), Instant::now()).with_spi_allocator(ctx.spis.clone());
    let mut conn = Conn {
        peer,
        id,
        cert_user,
        pending: Some(proto),
        session: None,
        resuming: None,
        known_spis: Vec::new(),
        offers_aes_gcm: false,
        link: link.clone(),
        login_slot: Some(login_slot),
        login: None,
    };
    let mut buf = vec![0u8; LOGIN_READ_BUF];
    // Packets the client sent over TLS, joined for the TUN device.
    let mut sink = TunSink::new(&ctx.tun);
    let mut access = AccessCache::default();
    // Once the session is established, the packet threads read the connection (see
    // `tls_readers`).
    let mut reader: Option<Arc<TlsReader>> = None;
    let ending = 'conn: loop {
        // Drain what the state machine has to send and to say.
        let Some((events, next_timer)) = conn.with_proto(|p| {
            let events: Vec<ServerEvent> = std::iter::from_fn(|| p.poll_event()).collect();
            (events, p.next_timer())
        }) else {
            break conn.dropped();
        };
        if let Some(s) = &conn.session {
            esp_housekeeping(&ctx, s, &mut conn.known_spis);
        }
        if link.send_all(|out| conn.take_tls(out)).await.is_err() {
            break conn.dropped();
        }
        let progressed = !events.is_empty();
        for event in events {
            if let Some(ending) = handle_event(&ctx, &mut conn, event).await {
                conn.close(&ctx).await;
                break 'conn ending;
            }
        }
        if progressed {
            continue;
        }
        if conn
            .session
            .as_ref()
            .is_some_and(|s| s.superseded.load(Ordering::Relaxed))
        {
            break Ending::Superseded;
        }
        if reader
            .as_ref()
            .is_some_and(|r| r.closed.load(Ordering::Acquire))
        {
            break conn.dropped();
        }
        if reader.is_none()
            && let Some(s) = &conn.session
        {
            // What rustls and the socket hold now is read here; then the socket goes into
            // the packet threads' set, which reports anything that arrives after.
            let r = Arc::new(TlsReader {
                session: s.clone(),
                link: link.clone(),
                closed: AtomicBool::new(false),
            });
            if let Err(e) = link.read_by_threads() {
                debug!(error = %e, "handing the TLS connection to the packet threads");
                break conn.dropped();
            }
            read_tls_connection(&ctx, conn.id, &r, &mut buf, &mut sink, &mut access);
            if r.closed.load(Ordering::Acquire) {
                break conn.dropped();
            }
            if let Err(e) = ctx.tls_readers.add(conn.id, r.clone()) {
                debug!(error = %e, "handing the TLS connection to the packet threads");
                break conn.dropped();
            }
            reader = Some(r);
            // The packet threads read from here on: the task's buffers go.
            buf = Vec::new();
            sink = TunSink::new(&ctx.tun);
            // The bytes read may have made events.
            continue;
        }
        // The packet threads feed ESP to the state machine without waking this task, and the
        // first datagram heard on ESP is what arms dead-peer detection (its probes go to the
        // ESP endpoint): an established session's task looks at the timers again at least
        // once per interval, before any probe can be due.
        let next_timer = match &conn.session {
            Some(_) if ctx.config.esp.enabled => {
                let recheck = Instant::now() + ctx.config.dpd_interval;
                Some(next_timer.map_or(recheck, |t| t.min(recheck)))
            }
            _ => next_timer,
        };
        let timer = async {
            match next_timer {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let session = conn.session.clone();
        let wake = async {
            match &session {
                Some(s) => s.wake.notified().await,
                None => std::future::pending().await,
            }
        };
        let logging_in = conn.login_slot.as_ref().map(LoginSlot::eviction);
        let evicted = async {
            match &logging_in {
                Some(e) => e.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = link.recv(&mut buf), if reader.is_none() => {
                let n = match read {
                    Ok(0) | Err(_) => break conn.dropped(),
                    Ok(n) => n,
                };
                let owner = conn.session.clone();
                let mut claim = None;
                conn.with_proto(|p| {
                    let bytes = &buf[..n];
                    super::plane::take_client_bytes(&ctx, p, owner.as_deref(), &mut sink, &mut access, &mut claim, bytes)
                });
                flush_client_packets(&ctx, &mut sink, claim);
            }
            _ = wake => {}
            _ = evicted => {
                debug!("closed before its login to make room (limits.login_connections)");
                break conn.dropped();
            }
            _ = timer => {
                let _ = conn.with_proto(|p| p.poll_timers(Instant::now()));
            }
            _ = stop.recv() => {
                let _ = conn.with_proto(|p| {
                    p.terminate(FatalErrorKind::SessionTerminated, "The gateway is shutting down")
                });
                conn.close(&ctx).await;
                break Ending::Finished;
            }
        }
    };
    ctx.tls_readers.remove(conn.id);
    if let Some((cookie, r)) = conn.resuming.take() {
        // The connection ended in the middle of a resume: the session stays resumable as it
        // was (its address stays leased to it), until it would have expired anyway.
        debug!(user = %r.user, "resume not completed; session resumable again");
        ctx.table.park(cookie, r);
    }
    if matches!(ending, Ending::Unauthenticated)
        && ctx.config.auth.password_request == PasswordRequest::Current
        && conn.pending.as_ref().is_some_and(Server::awaiting_password)
        && let Some(more) = ctx.silent_at_password_log.event(Instant::now())
    {
        // Clients that predate the current request close here without a word; the
        // operator sees why, within bounds (connections before the login are anyone's).
        info!(
            peer = %conn.peer,
            more,
            "a client closed the connection at the password request: clients that predate \
             the current request form (openconnect before 2025, older Pulse clients) need \
             auth.password_request = \"legacy\""
        );
    }
    finish(&ctx, conn.session, ending);
}

/// After the state machine ran: index the inbound SPIs it opens now (a new one after a
/// rekey, none of a retired one), and send the ESP datagrams it holds to the client's ESP
/// endpoint: a dead-peer probe of the timers, or the answer to a probe that arrived before
/// the client's ESP keys (now that they are in).
fn esp_housekeeping(ctx: &Ctx, s: &Arc<Session>, known_spis: &mut Vec<u32>) {
    // At most two wait at once (an answer and a dead-peer probe); any more wait for the next
    // round. They are sent once the state machine's lock is given back.
    let mut out = [[0u8; 256]; 2];
    let mut lens = [0usize; 2];
    let mut spis = [0u32; 2];
    let count = {
        let Ok(mut p) = s.proto.lock() else {
            return;
        };
        for (buf, len) in out.iter_mut().zip(&mut lens) {
            match p.poll_esp_transmit(buf) {
                Ok(Some(n)) => *len = n,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "sealing an ESP probe failed");
                    break;
                }
            }
        }
        spis.iter_mut()
            .zip(p.esp_spis())
            .map(|(o, i)| *o = i)
            .count()
    };
    if known_spis[..] != spis[..count] {
        ctx.table.index_spis(s, &spis[..count]);
        *known_spis = spis[..count].to_vec();
        debug!(spis = ?known_spis, "ESP SPIs indexed");
    }
    let peer = s.esp_peer.lock().ok().and_then(|p| *p);
    for (buf, &n) in out.iter().zip(&lens).take_while(|(_, n)| **n > 0) {
        if let (Some(peer), Some(udp)) = (peer, &ctx.udp) {
            let _ = udp.send_to(&buf[..n], peer);
            debug!(%peer, "ESP probe sent");
        }
    }
}

/// Acts on one event; Some(ending) ends the connection.
async fn handle_event(ctx: &Arc<Ctx>, conn: &mut Conn, event: ServerEvent) -> Option<Ending> {
    let now = Instant::now();
    match event {
        ServerEvent::Upgraded(req) => {
            conn.offers_aes_gcm = req.offers_aes_gcm;
            conn.link.set_record_per_frame(!req.stream_records);
            debug!(
                user_agent = ?req.user_agent,
                aes_gcm = req.offers_aes_gcm,
                "IF-T upgrade accepted"
            );
        }
        ServerEvent::ClientInfo(info) => debug!(?info, "client info"),
        ServerEvent::ResumeRequested { cookie } => {
            let resumable = ctx.table.unpark(&cookie, now).or_else(|| {
                // The old connection may still be up (the client reconnected before the gateway
                // noticed the loss): take its session over, if its login has not ended.
                let live = ctx
                    .table
                    .live_by_cookie(&cookie)
                    .filter(|live| live.ends.is_none_or(|end| end > now))?;
                live.superseded.store(true, Ordering::Relaxed);
                live.wake.notify_one();
                ctx.table.remove(&live);
                Some(Resumable::of(&live, parked_until(&ctx.config, now)))
            });
            let p = conn.pending.as_mut()?;
            match resumable {
                Some(r) => {
                    if let Some(end) = r.ends {
                        p.set_session_end(end);
                    }
                    let _ = p.accept(&cookie);
                    // Until the resumed session is established, the connection holds it: if
                    // the connection ends first, it is parked again (`finish`).
                    conn.resuming = Some((cookie, r));
                }
                None => {
                    debug!("unknown or expired cookie: asking for credentials");
                    let _ = p.reject(AuthRejection::Retry);
                }
            }
        }
        ServerEvent::Authenticate {
            realm,
            username,
            password,
        } => {
            let realm = realm
                .or_else(|| ctx.config.auth.realms.first().cloned())
                .unwrap_or_default();
            let verified = password.clone();
            let outcome = ctx
                .logins
                .authenticate(LoginRequest {
                    peer: conn.peer.ip(),
                    realm: &realm,
                    username: &username,
                    password,
                    certificate: conn.cert_user.as_ref(),
                })
                .await;
            match outcome.rejection() {
                None => {
                    let rules = realm_login(&ctx.config, &realm);
                    let must_change = {
                        let (ctx, user) = (ctx.clone(), username.clone());
                        let max_age = ctx.config.password_rules().max_age;
                        tokio::task::spawn_blocking(move || {
                            ctx.logins.must_change_password(&user, max_age)
                        })
                        .await
                    };
                    let checked = must_change
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                    let must_change = match checked {
                        Ok(must) => must,
                        Err(error) => {
                            // Fail closed: the login may owe a password change.
                            warn!(user = %username, %realm, %error, "login refused: the password's age cannot be checked");
                            let _ = conn.pending.as_mut()?.reject(AuthRejection::Failure(
                                "The gateway cannot check your account now. Try again in a moment."
                                    .into(),
                            ));
                            return None;
                        }
                    };
                    conn.login = Some(LoginSteps {
                        dialogue: Dialogue::after_password(&rules, must_change),
                        password: verified,
                        realm,
                        user: username,
                        asked: None,
                        listed: Vec::new(),
                    });
                    next_login_step(ctx, conn);
                }
                Some(why) => {
                    let _ = conn.pending.as_mut()?.reject(why);
                }
            }
        }
        ServerEvent::Answered { answer, .. } => {
            let login = conn.login.as_mut()?;
            let refusal = match (login.asked.take(), answer) {
                (Some(Step::AcceptNotice(_)), PromptAnswer::NoticeAccepted) => None,
                (Some(Step::TokenCode), PromptAnswer::TokenCode(code)) => ctx
                    .logins
                    .second_factor(conn.peer.ip(), &login.user, code.expose(), unix_now())
                    .await
                    .err()
                    .map(|why| why.message().to_string()),
                (Some(Step::ChangePassword), PromptAnswer::NewPassword { old, new }) => {
                    let change = PasswordChange {
                        peer: conn.peer.ip(),
                        username: &login.user,
                        verified: &login.password,
                        offered_old: &old,
                        new: new.clone(),
                    };
                    match ctx
                        .logins
                        .change_password(&ctx.config.password_rules(), change)
                        .await
                    {
                        Ok(()) => {
                            login.password = new;
                            None
                        }
                        Err(why) => Some(why.message()),
                    }
                }
                (Some(Step::SessionLimit(max)), PromptAnswer::EndSession(id)) => {
                    match login.listed.iter().position(|(shown, _)| *shown == id) {
                        Some(i) => {
                            let (_, place) = login.listed.swap_remove(i);
                            end_session(ctx, place, &login.user);
                            // Still at the limit (it was over it): ask again.
                            login.dialogue.again(Step::SessionLimit(max));
                            login.listed.clear();
                            None
                        }
                        None => Some("The session chosen is not one of yours.".to_string()),
                    }
                }
                (asked, answer) => {
                    warn!(user = %login.user, ?asked, ?answer, "login refused: an answer to a question not asked");
                    Some("Unexpected answer.".to_string())
                }
            };
            match refusal {
                None => next_login_step(ctx, conn),
                Some(message) => {
                    conn.login = None;
                    let _ = conn
                        .pending
                        .as_mut()?
                        .reject(AuthRejection::Failure(message));
                }
            }
        }
        ServerEvent::Authenticated {
            username,
            realm,
            cookie,
            resumed,
        } => {
            conn.login = None;
            let resumed_session = conn.resuming.take();
            let (user, realm, lease, logged_in) = match resumed_session {
                Some((_, r)) if resumed => (r.user, r.realm, r.lease, r.logged_in),
                other => {
                    if let Some((cookie, r)) = other {
                        // A resume the state machine did not complete keeps its session
                        // resumable (it cannot happen: accept() was called for it).
                        ctx.table.park(cookie, r);
                    }
                    let realm = realm.unwrap_or_default();
                    let lease = match ctx.pool.lock().map(|mut p| p.allocate(&realm)) {
                        Ok(Ok(lease)) => lease,
                        _ => {
                            warn!("address pool exhausted");
                            let _ = conn.with_proto(|p| {
                                p.terminate(
                                    FatalErrorKind::SessionTerminated,
                                    "No address available",
                                )
                            });
                            return Some(Ending::Unauthenticated);
                        }
                    };
                    (
                        username.unwrap_or_default(),
                        realm,
                        lease,
                        SystemTime::now(),
                    )
                }
            };
            let mut proto = conn.pending.take()?;
            let config = client_config(&ctx.config, &realm, &lease, conn.offers_aes_gcm);
            if let Err(e) = proto.send_config(&config, now) {
                warn!(error = %e, "sending the configuration failed");
                if let Ok(mut pool) = ctx.pool.lock() {
                    pool.release(&lease);
                }
                conn.pending = Some(proto);
                return Some(Ending::Unauthenticated);
            }
            let realm_id = ctx
                .access
                .policy(&mut AccessCache::default())
                .and_then(|p| p.realm_id(&realm));
            let s = Arc::new(Session {
                id: conn.id,
                peer: conn.peer,
                user,
                realm,
                realm_id,
                cookie,
                lease,
                ends: proto.session_end(),
                logged_in,
                proto: Mutex::new(proto),
                esp_peer: Mutex::new(None),
                link: Arc::downgrade(&conn.link),
                wake: tokio::sync::Notify::new(),
                superseded: AtomicBool::new(false),
            });
            // The session limit was asked about during the login; logins that passed that
            // step together are held to it here, where the session is made.
            let max = if resumed {
                0
            } else {
                realm_login(&ctx.config, &s.realm).max_sessions_per_user
            };
            if !ctx.table.insert_within(&s, max) {
                warn!(user = %s.user, realm = %s.realm, max, "login refused: the user reached the session limit while it went on");
                conn.session = Some(s);
                let _ = conn.with_proto(|p| {
                    p.terminate(
                        FatalErrorKind::SessionTerminated,
                        "The session limit was reached by another login of the same user",
                    )
                });
                return Some(Ending::Finished);
            }
            info!(user = %s.user, realm = %s.realm, ipv4 = %s.lease.ipv4, ipv6 = ?s.lease.ipv6, resumed, "session established");
            conn.session = Some(s);
            conn.login_slot = None;
        }
        ServerEvent::EspKeysInstalled => debug!("client ESP keys installed"),
        ServerEvent::Packet(p) => {
            // `serve` takes data packets straight from the parser; this is for completeness.
            if super::plane::forwardable(
                ctx,
                conn.session.as_deref(),
                &p,
                &mut AccessCache::default(),
            ) {
                let _ = ctx.tun.send_packet(&p);
            }
        }
        ServerEvent::Closed(CloseReason::PeerGone) => {
            ctx.dead_peers.fetch_add(1, Ordering::Relaxed);
            info!(
                probes = DPD_PROBES,
                dpd_interval_secs = ctx.config.dpd_interval.as_secs(),
                "dead peer: the client stayed silent through its probes; closing the connection"
            );
            return Some(conn.dropped());
        }
        ServerEvent::Closed(reason) => {
            return Some(if conn.session.is_some() {
                info!(?reason, "session closed");
                Ending::Finished
            } else {
                // Before the login, one line per connection would let a flood grow the log.
                debug!(?reason, "connection closed before the login");
                Ending::Unauthenticated
            });
        }
        other => debug!(?other, "event"),
    }
    None
}

/// Bookkeeping when a connection ends.
fn finish(ctx: &Ctx, session: Option<Arc<Session>>, ending: Ending) {
    let Some(s) = session else { return };
    ctx.table.remove(&s);
    match ending {
        Ending::Finished | Ending::Unauthenticated => {
            if let Ok(mut pool) = ctx.pool.lock() {
                pool.release(&s.lease);
            }
            info!(user = %s.user, peer = %s.peer, ipv4 = %s.lease.ipv4, "session ended, address released");
        }
        Ending::Dropped => {
            info!(user = %s.user, "connection lost; session resumable with its cookie");
            let r = Resumable::of(&s, parked_until(&ctx.config, Instant::now()));
            ctx.table.park(s.cookie.clone(), r);
        }
        Ending::Superseded => info!(user = %s.user, "session taken over by a new connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::suite_name;
    use super::*;

    fn config(ciphers: &str) -> GatewayConfig {
        GatewayConfig::from_str(&format!(
            "[tls]\ncertificate = \"server.pem\"\nkey = \"server.key\"\n\
             [auth]\nusers_file = \"users\"\n[pool]\nipv4 = \"10.10.0.0/24\"\n\
             [esp]\nciphers = {ciphers}\n"
        ))
        .unwrap()
    }

    /// The suite a client is offered, read back from the wire codes it is sent.
    fn offered(cfg: &GatewayConfig, offers_aes_gcm: bool) -> Option<EspSuite> {
        let lease = Lease {
            ipv4: "10.10.0.2".parse().unwrap(),
            ipv6: None,
        };
        let esp = client_config(cfg, "Users", &lease, offers_aes_gcm).esp;
        Some(EspSuite::from_codes(esp.cipher?, esp.hmac?).unwrap())
    }

    #[test]
    fn each_configured_suite_is_offered_by_its_wire_codes() {
        for suite in EspSuite::ALL {
            let cfg = config(&format!("[\"{}\"]", suite_name(suite)));
            assert_eq!(offered(&cfg, true), Some(suite));
        }
    }

    #[test]
    fn aes_gcm_is_offered_only_to_clients_that_offer_it() {
        let cfg = config(r#"["aes256-gcm", "aes256-sha256"]"#);
        assert_eq!(offered(&cfg, true), Some(EspSuite::AES256_GCM));
        let next = offered(&cfg, false).unwrap();
        assert_eq!(suite_name(next), "aes256-sha256");
        let only_gcm = config(r#"["aes256-gcm"]"#);
        assert_eq!(offered(&only_gcm, false), None, "no ESP at all");
    }
}
