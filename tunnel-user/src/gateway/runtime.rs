//! The running gateway: the TLS listener and one task per connection (`super::conn`), the
//! packet threads that read the TUN device, the ESP socket and the established sessions' TLS
//! connections (`tls_readers`), the session table tying them together, the janitor, and
//! graceful shutdown. docs/gateway.md draws the data flow.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, sync::broadcast};
use tokio_rustls::TlsAcceptor;

use tracing::{Instrument, debug, info, info_span, warn};
use tunnel_proto::{ESP_ATTEMPT_PERIOD, ServerConfig};

use super::conn::serve;
use super::control;
use super::metrics::{self, Counters};
use super::offer::server_config;
use super::{
    GatewayConfig, Lease, PoolChoice, RealmPools, StoreChoice, UsersError,
    access::{AccessControl, AccessPolicy, local_addresses},
    admission::{Admission, FLOOD_LOG_INTERVAL, LogThrottle, Refusal},
    cluster,
    login::Logins,
    redis_store::Unavailable,
    store::{CookieKey, Loaded, STORE_FILE, SessionStore, StoreError},
    table::{Moment, Resumable, SessionTable, SpiRegistry},
    tls::{self, TlsSetupError},
    tls_readers::TlsReaders,
};
use crate::{
    datapath::ifindex,
    fastpath::device::{self, Device},
    sys::epoll::Stop,
    sys::netconf::{NetconfError, Netlink, Route, Via, sysctl},
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
    Users(#[from] UsersError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("configuring the TUN device: {0}")]
    Netconf(#[from] NetconfError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SharedStore(#[from] Unavailable),
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

/// What every task and thread shares.
pub(super) struct Ctx {
    /// The configuration in force: replaced whole by a reload ([`Reloader`]).
    settings: std::sync::RwLock<Arc<Settings>>,
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
    pub(super) tun: Arc<Tun>,
    pub(super) udp: Option<Arc<UdpSocket>>,
    pub(super) next_id: AtomicU64,
    /// Stops the packet threads.
    pub(super) stop: Arc<Stop>,
    pub(super) tls_readers: Arc<TlsReaders>,
    /// The packet path: the TUN device, the ESP socket and the established sessions' TLS
    /// connections (`tls_readers`), handed to the packet threads.
    pub(super) device: Device<Ctx>,
    /// Packets dropped because no session owns their destination, or spoofed sources.
    pub(super) dropped: AtomicU64,
    /// Where clients' packets may go ([`AccessPolicy`]), and how many it stopped.
    pub(super) access: AccessControl,
    pub(super) forbidden: AtomicU64,
    /// Sessions dead-peer detection took as gone.
    pub(super) dead_peers: AtomicU64,
    /// What outlives the process of the sessions ([`SessionStore`]).
    pub(super) store: SessionStore,
    /// In a cluster: addresses another gateway held when a login tried them, taken in the
    /// local pool until [`cluster::release_foreign`] gives them back at the time with each.
    pub(super) foreign: Mutex<Vec<(Lease, Instant)>>,
    /// The TUN device's index (host routes in a cluster).
    pub(super) tun_index: u32,
    /// Logins, resumes and traffic, for the metrics.
    pub(super) counters: Counters,
    /// Set once a drain was asked for ([`Ctx::drain`]): the wait before connections close.
    draining: std::sync::OnceLock<Duration>,
    drain_asked: tokio::sync::Notify,
}

/// How the gateway's tasks are told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shutdown {
    /// Every connected client is told its session is terminated (SIGINT, SIGTERM).
    Terminate,
    /// Connections are closed without a word and their sessions parked, kept in the store
    /// for their clients to resume elsewhere or with the next gateway ([`Ctx::drain`]).
    Drain,
}

/// The configuration in force and what is made of it for each new connection.
pub(super) struct Settings {
    pub(super) config: GatewayConfig,
    /// What each connection's state machine starts with.
    pub(super) server_config: ServerConfig,
}

impl Settings {
    fn of(config: GatewayConfig) -> Settings {
        Settings {
            server_config: server_config(&config),
            config,
        }
    }
}

impl Ctx {
    /// The configuration in force now (a reload replaces it; what a caller holds stays as
    /// it was).
    pub(super) fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks for a drain: no new connections from now, connections closed after `after`.
    /// A second request changes nothing.
    pub(super) fn drain(&self, after: Duration) {
        if self.draining.set(after).is_ok() {
            self.drain_asked.notify_one();
        }
    }

    /// Whether a drain was asked for.
    pub(super) fn draining(&self) -> bool {
        self.draining.get().is_some()
    }
}

/// Why a reload left the configuration in force as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error("{0}")]
    Config(String),
    #[error(
        "{} cannot change while the gateway runs (restart it, or drain it and start it again)",
        .0.join(", ")
    )]
    Restart(Vec<&'static str>),
    #[error("users file: {0}")]
    Users(#[from] UsersError),
    #[error("listing the host's addresses: {0}")]
    Addresses(io::Error),
}

/// Reloads a running gateway's configuration (SIGHUP).
#[derive(Clone)]
pub struct Reloader(Arc<Ctx>);

impl Reloader {
    /// Loads the config file at `path`; if only keys that may change at run time changed
    /// (docs/gateway-config.md "Reloading") and the users file reads, puts it in force and
    /// returns the keys that changed. Otherwise the configuration in force stays, and the
    /// error says why. Sessions are not touched: new logins and resumes get the new
    /// settings, the access policy applies to every packet from now.
    pub fn reload(&self, path: &std::path::Path) -> Result<Vec<&'static str>, ReloadError> {
        let ctx = &self.0;
        let new = GatewayConfig::load(path).map_err(|e| ReloadError::Config(e.to_string()))?;
        let old = ctx.settings();
        let (fixed, changed) = compare(&old.config, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::Restart(fixed));
        }
        let users = ctx.logins.users()?;
        let local = local_addresses().map_err(ReloadError::Addresses)?;
        ctx.access.replace(AccessPolicy::new(&new, &local));
        *ctx.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Settings::of(new));
        info!(users = users.len(), changed = ?changed, "configuration reloaded");
        Ok(changed)
    }
}

/// The keys that differ between `old` and `new`: those that need a restart, and those a
/// reload puts in force.
fn compare(old: &GatewayConfig, new: &GatewayConfig) -> (Vec<&'static str>, Vec<&'static str>) {
    let realm_pools = |c: &GatewayConfig| {
        c.realms
            .iter()
            .map(|(name, r)| (name.clone(), r.pool))
            .collect::<Vec<_>>()
    };
    let realm_rest = |c: &GatewayConfig| {
        c.realms
            .iter()
            .map(|(name, r)| {
                let mut r = r.clone();
                r.pool = None;
                (name.clone(), r)
            })
            .collect::<Vec<_>>()
    };
    let fixed = [
        ("listen", old.listen != new.listen),
        ("tls", old.tls != new.tls),
        (
            "auth.users_file",
            old.auth.users_file != new.auth.users_file,
        ),
        ("auth.realms", old.auth.realms != new.auth.realms),
        ("auth.passwords", old.auth.passwords != new.auth.passwords),
        (
            "auth.certificate",
            old.auth.certificate != new.auth.certificate,
        ),
        ("pool", old.pool != new.pool),
        (
            "realm.NAME.pool_ipv4/pool_ipv6",
            realm_pools(old) != realm_pools(new),
        ),
        ("mtu", old.mtu != new.mtu),
        ("esp", old.esp != new.esp),
        ("tun_name", old.tun_name != new.tun_name),
        (
            "limits.login_connections",
            old.limits.login_connections != new.limits.login_connections,
        ),
        (
            "limits.login_connections_per_source",
            old.limits.login_connections_per_source != new.limits.login_connections_per_source,
        ),
        ("state_dir", old.state_dir != new.state_dir),
        ("control_socket", old.control_socket != new.control_socket),
        ("metrics_listen", old.metrics_listen != new.metrics_listen),
        ("session_store", old.session_store != new.session_store),
    ];
    let changeable = [
        ("dns", old.dns != new.dns),
        ("search_domains", old.search_domains != new.search_domains),
        ("routes", old.routes != new.routes),
        ("idle_timeout_secs", old.idle_timeout != new.idle_timeout),
        ("dpd_interval_secs", old.dpd_interval != new.dpd_interval),
        (
            "session_lifetime_secs",
            old.session_lifetime != new.session_lifetime,
        ),
        (
            "auth.password_request",
            old.auth.password_request != new.auth.password_request,
        ),
        (
            "limits (time limits, login_frame_bytes, max_sessions)",
            old.limits != new.limits,
        ),
        ("access", old.access != new.access),
        ("realm.NAME", realm_rest(old) != realm_rest(new)),
    ];
    let pick = |list: &[(&'static str, bool)]| {
        list.iter()
            .filter(|(_, differs)| *differs)
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
    };
    (pick(&fixed), pick(&changeable))
}

/// A gateway bound to its sockets and TUN device, ready to [`run`](Gateway::run).
pub struct Gateway {
    ctx: Arc<Ctx>,
    listener: TcpListener,
    control: tokio::net::UnixListener,
    metrics: Option<TcpListener>,
    /// In a cluster: sessions this gateway must drop (another took them).
    lost: Option<tokio::sync::mpsc::UnboundedReceiver<CookieKey>>,
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
        let now = Moment::now();
        let (store, stored, lost) = match &config.session_store {
            StoreChoice::Embedded => {
                let (store, stored) = SessionStore::open_embedded(&config.state_dir, now.unix)?;
                (store, Some(stored), None)
            }
            StoreChoice::Redis(url) => {
                let (store, lost) =
                    SessionStore::open_redis(url, config.session_store.to_string())?;
                info!(store = %config.session_store, "sessions shared with the cluster's store");
                (store, None, Some(lost))
            }
        };
        let control = control::bind(&config.control_socket).map_err(io_err(format!(
            "control socket {}",
            config.control_socket.display()
        )))?;
        let tun = Arc::new(
            Tun::create_offloaded(&config.tun_name)
                .map_err(io_err(format!("creating TUN {}", config.tun_name)))?,
        );
        let tun_index = configure_tun(&config, &tun)?;
        let local = local_addresses().map_err(io_err("listing the host's addresses"))?;
        let access = AccessControl::new(AccessPolicy::new(&config, &local));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(io_err(format!("listening on {}", config.listen)))?;
        let metrics = match config.metrics_listen {
            Some(at) => Some(
                TcpListener::bind(at)
                    .await
                    .map_err(io_err(format!("metrics_listen {at}")))?,
            ),
            None => None,
        };
        let udp = if config.esp.enabled {
            let at = SocketAddr::new(config.listen.ip(), config.esp.port);
            let sock = UdpSocket::bind(at).map_err(io_err(format!("ESP socket on {at}")))?;
            sock.set_nonblocking(true)
                .map_err(io_err("making the ESP socket non-blocking"))?;
            if !udp_gso::tune(&sock) {
                warn!("UDP GRO is not available: one ESP datagram per receive");
            }
            Some(Arc::new(sock))
        } else {
            None
        };
        let mut pool = RealmPools::from_config(&config).map_err(|e| GatewayError::Io {
            what: "address pool".into(),
            source: io::Error::other(e.to_string()),
        })?;
        let table = SessionTable::default();
        let next_id = match stored {
            Some(stored) => restore_sessions(&config, &store, stored, &mut pool, &table, now),
            None => 1,
        };
        let stop = Arc::new(Stop::new().map_err(io_err("the packet threads' stop signal"))?);
        let tls_readers =
            Arc::new(TlsReaders::new().map_err(io_err("the TLS connections' epoll set"))?);
        let nonblocking = device::set_nonblocking(&tun);
        let device = Device::new(
            tun.clone(),
            udp.clone(),
            Some(tls_readers.clone()),
            stop.clone(),
            nonblocking,
        )
        .map_err(io_err("the packet threads' epoll set"))?;
        let admission = Admission::new(
            config.limits.login_connections,
            config.limits.login_connections_per_source,
        );
        let ctx = Arc::new(Ctx {
            settings: std::sync::RwLock::new(Arc::new(Settings::of(config))),
            admission,
            refused: AtomicU64::new(0),
            silent_at_password_log: LogThrottle::new(FLOOD_LOG_INTERVAL),
            refused_log: LogThrottle::new(FLOOD_LOG_INTERVAL),
            pool: Mutex::new(pool),
            logins,
            table,
            spis: Arc::default(),
            tun,
            udp,
            next_id: AtomicU64::new(next_id),
            stop,
            tls_readers,
            device,
            dropped: AtomicU64::new(0),
            access,
            forbidden: AtomicU64::new(0),
            dead_peers: AtomicU64::new(0),
            store,
            foreign: Mutex::new(Vec::new()),
            tun_index,
            counters: Counters::default(),
            draining: std::sync::OnceLock::new(),
            drain_asked: tokio::sync::Notify::new(),
        });
        Ok(Gateway {
            ctx,
            listener,
            control,
            metrics,
            lost,
            acceptor: TlsAcceptor::from(tls),
        })
    }

    /// What reloads this gateway's configuration while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.ctx.clone())
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
            control,
            metrics,
            lost,
            acceptor,
        } = self;
        let threads = device::start("gw-packets", &ctx, |c| (c, &c.device))
            .map_err(io_err("starting a packet thread"))?;
        let (stop_tx, _) = broadcast::channel::<Shutdown>(1);
        let mut tasks = tokio::task::JoinSet::new();
        let janitor = tokio::spawn(janitor(ctx.clone(), stop_tx.subscribe()));
        let follower = lost.map(|lost| tokio::spawn(cluster::follow_lost(ctx.clone(), lost)));
        let control = tokio::spawn(control::serve(ctx.clone(), control, stop_tx.subscribe()));
        let metrics =
            metrics.map(|m| tokio::spawn(metrics::serve(ctx.clone(), m, stop_tx.subscribe())));
        tokio::pin!(shutdown);
        info!(listen = %listener.local_addr().map_err(io_err("listener address"))?, "gateway running");
        if let Err(e) = crate::sys::sd_notify::ready() {
            warn!(error = %e, "telling systemd the gateway is ready");
        }
        let accept_log = LogThrottle::new(FLOOD_LOG_INTERVAL);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let how = loop {
            tokio::select! {
                _ = &mut shutdown => {
                    let _ = crate::sys::sd_notify::stopping();
                    break Shutdown::Terminate;
                }
                _ = ctx.drain_asked.notified() => {
                    let _ = crate::sys::sd_notify::stopping();
                    break Shutdown::Drain;
                }
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
        };
        if how == Shutdown::Drain {
            // New connections are refused from here on; the ones there are served until
            // the wait asked for is over (a load balancer sees the health endpoint first),
            // or a stop signal comes.
            drop(listener);
            let after = ctx.draining.get().copied().unwrap_or_default();
            info!(
                sessions = ctx.table.live_count(),
                after_secs = after.as_secs(),
                "draining: no new connections; closing the connections after the wait"
            );
            let wait = tokio::time::sleep(after);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    _ = &mut shutdown => break,
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
            info!(
                sessions = ctx.table.live_count(),
                "draining: closing every connection; sessions kept for their clients to resume"
            );
        } else {
            info!(
                sessions = ctx.table.live_count(),
                "shutting down: terminating sessions"
            );
        }
        let _ = stop_tx.send(how);
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => { warn!("sessions did not close in time"); tasks.abort_all(); break }
            }
        }
        janitor.abort();
        if let Some(f) = follower {
            f.abort();
        }
        // The sessions' last changes reach the cluster's store before the process ends.
        ctx.store.flush(Duration::from_secs(2)).await;
        control.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        let _ = std::fs::remove_file(&ctx.settings().config.control_socket);
        ctx.stop.set();
        for t in threads {
            let _ = t.join();
        }
        info!(
            dropped = ctx.dropped.load(Ordering::Relaxed),
            forbidden = ctx.forbidden.load(Ordering::Relaxed),
            refused = ctx.refused.load(Ordering::Relaxed),
            dead_peers = ctx.dead_peers.load(Ordering::Relaxed),
            stored_sessions = ctx.store.len(),
            store_errors = ctx.store.errors(),
            drained = how == Shutdown::Drain,
            "gateway stopped"
        );
        Ok(())
    }
}

/// Counts a connection refused at a cap, and logs it within the flood log's bounds.
fn refused(ctx: &Ctx, peer: SocketAddr, refusal: Refusal) {
    ctx.refused.fetch_add(1, Ordering::Relaxed);
    if let Some(held) = ctx.refused_log.event(Instant::now()) {
        let settings = ctx.settings();
        let limits = &settings.config.limits;
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
/// Sets the TUN device up with the gateway's addresses and routes; returns its index. In a
/// cluster the addresses are host addresses and each connected session gets a host route
/// ([`cluster::route_session`]): gateways on one host may share a pool.
fn configure_tun(config: &GatewayConfig, tun: &Tun) -> Result<u32, GatewayError> {
    let index = ifindex(tun.name()).map_err(|e| GatewayError::Io {
        what: format!("TUN {}", tun.name()),
        source: io::Error::other(e.to_string()),
    })?;
    let mut nl = Netlink::open()?;
    if let Err(e) = nl.root_qdisc_noqueue(index) {
        warn!(error = %e, "the TUN device keeps its default qdisc");
    }
    nl.link_up(index, Some(u32::from(config.mtu)))?;
    let shared = matches!(config.session_store, StoreChoice::Redis(_));
    nl.addr_add(
        index,
        IpAddr::V4(config.pool.gateway_ipv4),
        if shared {
            32
        } else {
            config.pool.ipv4.prefix_len()
        },
    )?;
    if let (Some(net), Some(gw)) = (config.pool.ipv6, config.pool.gateway_ipv6) {
        nl.addr_add(
            index,
            IpAddr::V6(gw),
            if shared { 128 } else { net.prefix_len() },
        )?;
    }
    // The realms' own pools are routed to the device too (the gateway's addresses are
    // `[pool]`'s).
    for realm in config.auth.realms.iter().filter(|_| !shared) {
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
    Ok(index)
}

/// The housekeeping of the gateway, once a second: releases the addresses of parked
/// sessions nobody resumed, and every [`ADDRESS_REFRESH`] puts the host's current addresses
/// into the access policy (an interface may have come up or got a new address).
async fn janitor(ctx: Arc<Ctx>, mut stop: broadcast::Receiver<Shutdown>) {
    let mut last_refresh = Instant::now();
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = Instant::now();
        for (key, r) in ctx.table.expire_parked(now) {
            if let Ok(mut pool) = ctx.pool.lock() {
                pool.release(&r.lease);
            }
            ctx.store.remove(&key, &r.lease);
            info!(user = %r.user, "parked session expired, address released");
        }
        cluster::release_foreign(&ctx, now);
        if now.duration_since(last_refresh) >= ADDRESS_REFRESH {
            last_refresh = now;
            match local_addresses() {
                Ok(local) => {
                    if ctx
                        .access
                        .replace(AccessPolicy::new(&ctx.settings().config, &local))
                    {
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

/// Parks the sessions the store kept, each with its address claimed again; a session whose
/// address the pools no longer hold (the configuration changed) is dropped with a warning.
/// Returns the first session id for new connections (above every restored one, which the
/// session-limit prompt shows).
fn restore_sessions(
    config: &GatewayConfig,
    store: &SessionStore,
    loaded: Loaded,
    pool: &mut RealmPools,
    table: &SessionTable,
    now: Moment,
) -> u64 {
    if !loaded.bad_lines.is_empty() {
        warn!(
            store = %config.state_dir.join(STORE_FILE).display(),
            lines = ?loaded.bad_lines,
            kept_aside = ?loaded.kept_aside,
            "the session store had lines that could not be read: skipped"
        );
    }
    let window_end = now.at + config.idle_timeout.unwrap_or(config.session_lifetime);
    let mut next_id = 1;
    let mut restored = 0;
    for s in &loaded.sessions {
        if let Err(e) = pool.claim(&s.realm, &s.lease()) {
            warn!(user = %s.user, realm = %s.realm, ipv4 = %s.ipv4, error = %e, "a stored session's address is not the pools' to give now: the session is dropped");
            store.remove(&s.key, &s.lease());
            continue;
        }
        table.park(s.key, Resumable::restored(s, now, window_end));
        next_id = next_id.max(s.id + 1);
        restored += 1;
    }
    info!(
        restored,
        expired = loaded.expired,
        store = %config.state_dir.join(STORE_FILE).display(),
        "sessions resumable from the session store"
    );
    next_id
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
