//! `tunneld`: owns the kernel data path, the connections store, the running connections and
//! the event log, and answers the control socket. Requests are handled one task each;
//! connections live in their own tasks (see [`super::connection`]).
//!
//! State on disk, under the state directory: `connections.json` (the store; a corrupt file is
//! kept aside and reported, never discarded), `pins.json` (gateway pins learned after a
//! trusted connection), `tunneld.log` (the event log, rotated at 10 MB keeping one old file),
//! `certs/` (the client certificates `tunnel cert import` stored, [`super::certstore`]).
//! Besides the control socket, those are the only files it creates. It reads or writes no
//! file a request names (a per-app cgroup directory is only looked up): the caller reads its
//! client certificate and writes its diagnostics bundle itself.
//!
//! The machine settings of the store are enforced here, for every request, not in the CLI
//! (docs/client.md, "Machine settings").

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rustls_pki_types::UnixTime;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};
use tunnel_config::{
    Connection, EventKind, EventLog, Level, RotatingLog, Scope, ServerUrl, Store, UrlMode,
};

use super::{
    Emit,
    cert_select::{Candidate, ClientAuth},
    certstore::{CertStore, CertStoreError},
    connection::{self, Command, Handle},
    control::{self, Credentials, Request, Response, code},
    dns::Dns,
    location::{self, Action, Decider},
    policy::{DataPlane, Uplinks},
    portal::Probe,
    prompts::{self, Asker, Prompter},
    sessions::{Sessions, write_private},
    spec::{ConnectSpec, Dpd},
    status::{Failure, State},
    tls::{ClientCert, Pin, Trust},
};
use crate::{
    datapath::{ConnId, KernelLog},
    sys::linkwatch::LinkWatcher,
};

/// How `tunneld` is set up.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// Where the store, learned pins and the log live.
    pub state_dir: PathBuf,
    /// Uplinks to attach the classifier to, whenever they appear; None: every link but
    /// loopback and TUN/TAP devices, as they come and go ([`super::policy`]).
    pub uplinks: Option<Vec<String>>,
    /// Whether the kernel programs log every verdict (forwarded to tracing).
    pub kernel_log: KernelLog,
    /// Where the uplinks' links are pinned (on a bpffs), so that the policy in force,
    /// lock-down above all, outlives tunneld; None: the programs go with the process.
    pub pins: Option<PathBuf>,
    /// Where connections probe for a captive portal (with detection on); None: never.
    pub portal_probe: Option<Probe>,
    /// The cgroup `tunnel portal` puts its command in (made at start); None: no exception.
    pub portal_cgroup: Option<PathBuf>,
    /// How long the portal exception lasts once a connection waits behind a portal.
    pub portal_window: Duration,
    /// The resolver configuration pointed at the DNS forwarder while a connection with DNS
    /// servers is up (normally `/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// The group whose members may use the connections and see their state over the control
    /// socket ([`Request::for_members`]); everything else is root's. None, or a group that
    /// does not exist: root only.
    pub control_group: Option<String>,
}

/// Who asks, by the control socket's peer credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Root,
    /// A member of the control group.
    Member,
    Other,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the kernel data path: {0}")]
    DataPlane(#[from] super::policy::StartError),
    #[error("the connections store: {0}")]
    Store(#[from] tunnel_config::StoreError),
    #[error("the event log: {0}")]
    Log(#[from] tunnel_config::LogError),
    #[error("the client certificate store: {0}")]
    Certs(#[from] CertStoreError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The event log rotates at this size, keeping one old file.
const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// The event log: a line per event, rotated by size.
struct Log {
    file: RotatingLog,
    format: EventLog,
}

impl Log {
    fn event(&mut self, event: &EventKind) {
        let e = event.event();
        if let Some(line) = self.format.line(SystemTime::now(), &e)
            && let Err(err) = self.file.write_line(&line)
        {
            warn!(error = %err, "writing the event log failed");
        }
        info!(event = e.id, "{}", e.message);
    }

    fn message(&mut self, level: Level, text: &str) {
        if let Some(line) = self.format.message_line(SystemTime::now(), level, text)
            && let Err(err) = self.file.write_line(&line)
        {
            warn!(error = %err, "writing the event log failed");
        }
        info!(%level, "{text}");
    }
}

/// State shared by request handlers.
struct Daemon {
    plane: DataPlane,
    emit: Emit,
    /// Shared with the connections' URL sink, which records the URL each one is using.
    store: Arc<Mutex<Store>>,
    connections: Mutex<BTreeMap<String, Handle>>,
    /// Gateway host to its pin, learned on the first trusted connection (pins.json).
    pins: Arc<Mutex<BTreeMap<String, Pin>>>,
    /// Client certificates (`certs/`).
    certs: CertStore,
    log: Arc<Mutex<Log>>,
    /// Session cookies kept for resuming after a restart.
    sessions: Arc<Mutex<Sessions>>,
    /// The machine's DNS while connections are up.
    dns: Dns,
    /// Where connections probe for a captive portal.
    portal_probe: Option<Probe>,
    /// Which location connections to start and stop as the machine moves.
    location: Mutex<Decider>,
    /// The captive portal's cgroup (`tunnel portal`), by path and id.
    portal_cgroup: Option<(PathBuf, u64)>,
    /// How long its exception lasts once a connection waits behind a portal.
    portal_window: Duration,
    /// The control group, by name and gid, when it exists.
    members: Option<(String, u32)>,
}

impl Daemon {
    fn free_id(&self) -> Option<ConnId> {
        let used: Vec<ConnId> = self
            .connections
            .lock()
            .ok()?
            .values()
            .map(|h| h.id)
            .collect();
        (0..tunnel_common::MAX_CONNS as ConnId).find(|id| !used.contains(id))
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Remembers the URL a stored connection's session came up on, for "most recent" smart
/// connections. The URL is looked up in the stored connection's list, so a connection that
/// is not stored (one URL under a stored connection's name) changes nothing.
fn record_url(store: Arc<Mutex<Store>>) -> impl Fn(&str, &ServerUrl) + Send + Sync + 'static {
    move |name, url| {
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        let index = store
            .get(name)
            .and_then(|c| c.urls.iter().position(|u| u == url));
        if let Some(i) = index
            && let Err(e) = store.record_success(name, i)
        {
            warn!(connection = %name, error = %e, "recording the URL that connected failed");
        }
    }
}

fn load_pins(path: &Path) -> BTreeMap<String, Pin> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<BTreeMap<String, String>>(&t).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(h, p)| Pin::parse(&p).ok().map(|p| (h, p)))
                .collect()
        })
        .unwrap_or_default()
}

fn save_pins(path: &Path, pins: &BTreeMap<String, Pin>) {
    let text: BTreeMap<&String, String> = pins.iter().map(|(h, p)| (h, p.to_string())).collect();
    let text = serde_json::to_vec_pretty(&text).unwrap_or_default();
    if let Err(e) = write_private(path, &text) {
        warn!(error = %e, "saving learned pins failed");
    }
}

/// Runs the daemon until `shutdown` completes; every connection is then disconnected and the
/// kernel programs detached, but for the uplinks' under lock-down, which stay pinned.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("restricting {}", dir.display())))?;
    let log = Arc::new(Mutex::new(Log {
        file: RotatingLog::open(dir.join("tunneld.log"), LOG_MAX_BYTES)?,
        format: EventLog::new(Level::Info),
    }));
    let (store, corrupt) = Store::open(dir.join("connections.json"))?;
    if let Some(c) = corrupt {
        warn!("{c}");
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        let line = l
            .format
            .message_line(SystemTime::now(), Level::Error, &c.to_string());
        if let Some(line) = line {
            let _ = l.file.write_line(&line);
        }
    }
    let certs = CertStore::open(dir.join("certs"))?;
    let filter = config
        .uplinks
        .clone()
        .map_or(Uplinks::Every, Uplinks::Named);
    let plane = DataPlane::start(
        filter,
        config.kernel_log,
        store.lockdown_in_force(),
        config.pins.as_deref(),
    )?;
    let store = Arc::new(Mutex::new(store));
    let sessions = Arc::new(Mutex::new(Sessions::open(dir.join("sessions.json"))));
    let pins_path = dir.join("pins.json");
    let pins = Arc::new(Mutex::new(load_pins(&pins_path)));
    let (learned, sink, messages) = (pins.clone(), log.clone(), log.clone());
    let emit = Emit::new(
        move |event| sink.lock().unwrap_or_else(|e| e.into_inner()).event(&event),
        move |level, text| {
            messages
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .message(level, text);
        },
        move |_conn, host, pin| {
            let Ok(mut m) = learned.lock() else { return };
            if m.get(host) != Some(&pin) {
                m.insert(host.to_string(), pin);
                save_pins(&pins_path, &m);
            }
        },
    )
    .with_url_sink(record_url(store.clone()))
    .with_cookie_sink({
        let (sessions, store) = (sessions.clone(), store.clone());
        move |connection, cookie| {
            // Only a stored connection can be resumed: an ad-hoc one's settings lived in its
            // request.
            let stored = store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(connection)
                .is_some();
            if cookie.is_some() && !stored {
                return;
            }
            sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set(connection, cookie);
        }
    });
    if let Some(parent) = config.socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    // A stale socket from an earlier run: remove it unless someone still answers on it.
    if config.socket.exists() {
        if StdUnixStream::connect(&config.socket).is_ok() {
            return Err(DaemonError::Io {
                what: config.socket.display().to_string(),
                source: io::Error::new(io::ErrorKind::AddrInUse, "another tunneld is running"),
            });
        }
        let _ = std::fs::remove_file(&config.socket);
    }
    // Bound beside its place, given its group and mode, then renamed into place: the socket
    // appears with the permissions it keeps (a client never meets it half set up).
    let fresh = config.socket.with_file_name(format!(
        ".{}.new-{}",
        config
            .socket
            .file_name()
            .map_or("control".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&fresh);
    let listener =
        UnixListener::bind(&fresh).map_err(io_err(format!("binding {}", fresh.display())))?;
    let members = control_group(config.control_group.as_deref());
    let mode = match &members {
        Some((name, gid)) => {
            // tunneld's own primary group may already be it (the unit's Group=); otherwise
            // the socket's group is set, which needs root.
            if let Err(e) = nix::unistd::chown(&fresh, None, Some(nix::unistd::Gid::from_raw(*gid)))
            {
                warn!(group = %name, error = %e, "the control socket's group");
            }
            0o660
        }
        None => 0o600,
    };
    let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("restricting the control socket"))
        .and_then(|()| {
            std::fs::rename(&fresh, &config.socket)
                .map_err(io_err(format!("placing {}", config.socket.display())))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&fresh);
        return Err(e);
    }
    let daemon = Arc::new(Daemon {
        plane,
        emit: emit.clone(),
        store,
        connections: Mutex::new(BTreeMap::new()),
        pins,
        certs,
        log,
        sessions: sessions.clone(),
        dns: Dns::new(config.resolv_conf.clone(), dir),
        portal_probe: config.portal_probe.clone(),
        location: Mutex::new(Decider::default()),
        portal_cgroup: config.portal_cgroup.as_deref().and_then(portal_cgroup),
        portal_window: config.portal_window,
        members,
    });
    emit.event(EventKind::ServiceStarted {
        version: env!("CARGO_PKG_VERSION").into(),
    });
    info!(socket = %config.socket.display(), uplinks = ?daemon.plane.uplinks(), "tunneld running");
    if let Err(e) = crate::sys::sd_notify::ready() {
        warn!(error = %e, "telling systemd tunneld is ready");
    }
    // Connections whose policy is "automatic" start with the daemon, and so do those that
    // were up when it stopped or died (with their kept cookies).
    let mut starting: Vec<String> = daemon
        .store()
        .list()
        .iter()
        .filter(|c| c.policy == tunnel_config::ConnectionPolicy::Automatic)
        .map(|c| c.name.clone())
        .collect();
    for name in sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .to_resume()
    {
        if !starting.contains(&name) && daemon.store().get(&name).is_some() {
            starting.push(name);
        }
    }
    for name in starting {
        start_unattended(&daemon, name, "automatic connection");
    }
    // The administrator's lock-down exceptions, now that the store is the daemon's.
    if let Err(r) = apply_lockdown(&daemon) {
        warn!("{}", r.message);
    }
    let _location = Aborted(tokio::spawn(follow_location(daemon.clone())));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                let _ = crate::sys::sd_notify::stopping();
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(serve(daemon.clone(), stream)); }
                Err(e) => warn!(error = %e, "control socket accept failed"),
            },
        }
    }
    let handles: Vec<Handle> =
        std::mem::take(&mut *daemon.connections.lock().unwrap_or_else(|e| e.into_inner()))
            .into_values()
            .collect();
    for h in handles {
        h.command(Command::Disconnect).await;
        let _ = h.task.await;
    }
    daemon.plane.stop();
    let _ = std::fs::remove_file(&config.socket);
    emit.event(EventKind::ServiceStopped);
    Ok(())
}

/// Connects the stored connection `name` with nobody there: no prompt is answered (one
/// fails the login); a failure is logged as `what`'s.
fn start_unattended(daemon: &Arc<Daemon>, name: String, what: &'static str) {
    let d = daemon.clone();
    tokio::spawn(async move {
        let r = answer(
            &d,
            Request::Connect {
                name: Some(name.clone()),
                url: None,
                credentials: Box::default(),
                timeout_secs: None,
            },
            None,
            Caller::Root,
        )
        .await;
        if r.code != code::OK {
            warn!(connection = %name, "{what}: {}", r.message);
        }
    });
}

/// A task that ends when this is dropped.
struct Aborted(tokio::task::JoinHandle<()>);

impl Drop for Aborted {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long link and address changes may settle before the location is judged again.
const LOCATION_SETTLE: Duration = Duration::from_millis(300);

/// Starts and stops the location connections as the machine moves: judged at start and
/// after every link or address change ([`super::location`]).
async fn follow_location(daemon: Arc<Daemon>) {
    let mut watcher = match LinkWatcher::open() {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, "location: links cannot be followed; judged every 5 s instead");
            None
        }
    };
    loop {
        relocate(&daemon).await;
        match watcher.as_mut() {
            Some(w) => {
                if w.next().await.is_err() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                tokio::time::sleep(LOCATION_SETTLE).await;
            }
            None => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }
}

/// Judges the location connections once and acts on what changed.
async fn relocate(daemon: &Arc<Daemon>) {
    let rules: Vec<(String, tunnel_config::LocationRules)> = daemon
        .store()
        .list()
        .iter()
        .filter(|c| c.policy == tunnel_config::ConnectionPolicy::Location)
        .filter_map(|c| Some((c.name.clone(), c.location.clone()?)))
        .collect();
    if rules.is_empty() {
        return;
    }
    let facts = location::facts(daemon.dns.machine_servers().await);
    let running: BTreeSet<String> = daemon
        .connections
        .lock()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    let actions = daemon
        .location
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .decide(
            &facts,
            rules
                .iter()
                .map(|(n, r)| (n.as_str(), r, running.contains(n))),
        );
    for action in actions {
        let shown = |name: &str| {
            rules
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| {
                    r.rules
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(&format!(" {:?} ", r.when).to_lowercase())
                })
                .unwrap_or_default()
        };
        match action {
            Action::Start(name) => {
                let why = format!(
                    "location: the rules of '{name}' hold here ({}): connecting",
                    shown(&name)
                );
                info!("{why}");
                daemon.emit.message(Level::Info, &why);
                start_unattended(daemon, name, "location connection");
            }
            Action::Stop(name) => {
                let why = format!(
                    "location: the rules of '{name}' no longer hold ({}): disconnecting",
                    shown(&name)
                );
                info!("{why}");
                daemon.emit.message(Level::Info, &why);
                command(daemon, &name, Command::Disconnect).await;
            }
        }
    }
}

/// Makes the captive portal's cgroup; its path and id (the directory's inode, as the
/// kernel's cgroup id), or None (said) when it cannot be made.
fn portal_cgroup(path: &Path) -> Option<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            warn!(cgroup = %path.display(), error = %e, "no captive portal cgroup: `tunnel portal` cannot open the portal under lock-down");
            return None;
        }
    }
    let meta = std::fs::metadata(path).ok()?;
    Some((path.to_path_buf(), meta.ino()))
}

/// `tunnel portal`: moves the caller (`pid`, from the socket's credentials) into the
/// captive portal's cgroup, if a connection waits behind a portal.
fn portal_join(daemon: &Daemon, pid: Option<i32>) -> Response {
    let Some((path, _)) = &daemon.portal_cgroup else {
        return Response::with(code::GENERAL, "tunneld has no captive portal cgroup");
    };
    let portals: Vec<String> = daemon
        .connections
        .lock()
        .map(|c| {
            c.values()
                .map(Handle::status)
                .filter(|s| s.state == State::CaptivePortal)
                .filter_map(|s| s.portal)
                .collect()
        })
        .unwrap_or_default();
    let Some(portal) = portals.first().cloned() else {
        return Response::with(
            code::INVALID_STATE,
            "no connection waits behind a captive portal",
        );
    };
    let Some(pid) = pid else {
        return Response::with(code::GENERAL, "the caller's process is unknown");
    };
    if let Err(e) = std::fs::write(path.join("cgroup.procs"), pid.to_string()) {
        return Response::with(
            code::GENERAL,
            format!("moving process {pid} into {}: {e}", path.display()),
        );
    }
    info!(pid, portal = %portal, "a process joined the captive portal's cgroup");
    Response::ok(format!(
        "captive portal at {portal}: this command may reach ports 53, 80 and 443 for up to {} s from when the portal was found",
        daemon.portal_window.as_secs()
    ))
    .data(serde_json::json!({ "portal": portal }))
}

/// The control group's name and gid, if it is configured and exists.
fn control_group(name: Option<&str>) -> Option<(String, u32)> {
    let name = name?;
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Some((name.to_string(), g.gid.as_raw())),
        Ok(None) => {
            info!(group = %name, "no such group: only root may use the control socket");
            None
        }
        Err(e) => {
            warn!(group = %name, error = %e, "looking up the control group: only root may use the control socket");
            None
        }
    }
}

/// Who is at the other end of `stream`.
fn caller(daemon: &Daemon, stream: &UnixStream) -> Caller {
    let Ok(cred) = stream.peer_cred() else {
        return Caller::Other;
    };
    if cred.uid() == 0 {
        return Caller::Root;
    }
    let Some((_, gid)) = daemon.members else {
        return Caller::Other;
    };
    let member = cred.gid() == gid
        || crate::sys::peercred::peer_groups(stream).is_ok_and(|groups| groups.contains(&gid));
    if member {
        Caller::Member
    } else {
        Caller::Other
    }
}

async fn serve(daemon: Arc<Daemon>, stream: UnixStream) {
    let who = caller(&daemon, &stream);
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    if rd.read_line(&mut line).await.is_err() {
        return;
    }
    let group = daemon.members.as_ref().map(|(name, _)| name.as_str());
    let response = if who == Caller::Other {
        warn!(uid = ?uid, "control request from a user who is neither root nor in the control group refused");
        Response::with(
            code::GENERAL,
            match group {
                Some(g) => format!("only root and members of group {g} may control tunneld"),
                None => "only root may control tunneld".to_string(),
            },
        )
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(request) if who == Caller::Member && !request.for_members() => {
                warn!(uid = ?uid, "a control group member asked for what only root may do");
                Response::with(
                    code::GENERAL,
                    format!(
                        "only root may do that; members of group {} may connect, disconnect, sign out, suspend, resume and see status",
                        group.unwrap_or_default()
                    ),
                )
            }
            Ok(Request::Portal) => portal_join(&daemon, pid),
            Ok(request) => {
                // A caller that answers prompts gets them on this socket while its connect runs.
                let interactive = matches!(&request, Request::Connect { credentials, .. } if credentials.prompts.interactive);
                let (asker, mut asked) = prompts::channel();
                let work = handle(&daemon, request, interactive.then_some(asker), who);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        response = &mut work => break response,
                        Some(q) = asked.recv() => {
                            let answer = control::ask(&mut rd, &mut wr, &q.prompt).await;
                            q.reply(answer);
                        }
                    }
                }
            }
            Err(e) => Response::with(code::BAD_PARAMETER, format!("unreadable request: {e}")),
        }
    };
    let mut out = serde_json::to_string(&response).unwrap_or_default();
    out.push('\n');
    let _ = wr.write_all(out.as_bytes()).await;
}

/// The cgroup v2 directory of a per-app scope (a path below the cgroup2 mount, or absolute).
fn cgroup_dir(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.starts_with("/sys/fs/cgroup") {
        return p.to_path_buf();
    }
    let root = std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
        })
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    root.join(path.trim_start_matches('/'))
}

/// Refuses what the machine settings reserve to the administrator: with `user-connection:
/// "false"` the stored connections are the admin's, and no request adds, changes, removes
/// or bypasses them with a URL of its own.
fn user_connections_allowed(daemon: &Daemon) -> Result<(), Response> {
    if daemon.store().machine().user_connection {
        return Ok(());
    }
    Err(Response::with(
        code::USER_CONNECTION_NOT_ALLOWED,
        "the machine settings do not allow user connections: only the stored connections may be used (tunnel list)",
    ))
}

/// With VPN only access on, a locked-down connection stays as the administrator made it: it
/// is what lets traffic flow (seed 004: "User is allowed to delete a connection if the
/// connection is not locked down").
fn unlocked(daemon: &Daemon, name: &str) -> Result<(), Response> {
    let store = daemon.store();
    if store.machine().vpn_only_access && store.get(name).is_some_and(|c| c.lock_down) {
        return Err(Response::with(
            code::INVALID_STATE,
            format!(
                "'{name}' is a locked-down connection and VPN only access is on: it cannot be changed or deleted"
            ),
        ));
    }
    Ok(())
}

/// A connection from a request: the stored one named, or an ad-hoc one for a URL. When the
/// machine settings forbid user connections, a URL alone selects the stored connection that
/// lists it, and a URL no stored connection lists is refused.
fn resolve_connection(
    daemon: &Daemon,
    name: Option<String>,
    url: Option<String>,
) -> Result<(Connection, bool), Response> {
    match (name, url) {
        (name, Some(url)) => {
            let url = ServerUrl::parse(&url)
                .map_err(|e| Response::with(code::BAD_PARAMETER, format!("-url: {e}")))?;
            let named = name.is_some();
            let name = name.unwrap_or_else(|| url.host_name());
            // A stored connection with that name and URL is the same connection.
            if let Some(stored) = daemon.store().get(&name).filter(|c| c.urls.contains(&url)) {
                return Ok((stored.clone(), true));
            }
            if let Err(refused) = user_connections_allowed(daemon) {
                let admins = daemon
                    .store()
                    .list()
                    .iter()
                    .find(|c| c.urls.contains(&url))
                    .cloned();
                return match admins {
                    Some(c) if !named => Ok((c, true)),
                    _ => Err(refused),
                };
            }
            Ok((Connection::new(name, url), false))
        }
        (Some(name), None) => match daemon.store().get(&name) {
            Some(c) => Ok((c.clone(), true)),
            None => Err(Response::with(
                code::NO_SUCH_CONNECTION,
                format!("no connection named '{name}'"),
            )),
        },
        (None, None) => Err(Response::with(
            code::BAD_PARAMETER,
            "connect needs a connection name or -url",
        )),
    }
}

/// The client certificate a connection may present: the one the request brought
/// (`--cert FILE`), else the stored one the request or the connection names (missing or
/// expired: certificate error), else the stored ones, for the gateway's request to choose.
fn client_auth(
    daemon: &Daemon,
    conn: &Connection,
    creds: &Credentials,
) -> Result<ClientAuth, Response> {
    let refused = |e: String| Response::with(code::CERTIFICATE, e);
    if let Some(pem) = &creds.client_cert {
        let cert = ClientCert::from_pem(&pem.cert, &pem.key).map_err(refused)?;
        return Ok(ClientAuth::Named(
            cert.named("the certificate file").map_err(refused)?,
        ));
    }
    let named = creds
        .client_cert_name
        .as_ref()
        .or(conn.client_certificate.as_ref());
    if let Some(name) = named {
        let stored = daemon
            .certs
            .find(name)
            .map_err(|e| refused(format!("'{}': {e}", conn.name)))?;
        if stored.info.not_after_unix < UnixTime::now().as_secs() as i64 {
            return Err(refused(format!(
                "'{}': the client certificate '{}' expired on {}",
                conn.name, stored.info.name, stored.info.not_after
            )));
        }
        return Ok(ClientAuth::Named(Candidate::from(stored)));
    }
    let now = UnixTime::now().as_secs() as i64;
    let usable: Vec<Candidate> = daemon
        .certs
        .load_all()
        .into_iter()
        .filter(|c| c.info.not_after_unix >= now)
        .map(Candidate::from)
        .collect();
    Ok(if usable.is_empty() {
        ClientAuth::None
    } else {
        ClientAuth::Stored(usable)
    })
}

/// Builds what a connection needs to run from its stored settings and the request.
fn spec_for(
    daemon: &Daemon,
    conn: &Connection,
    stored: bool,
    creds: &Credentials,
    asker: Option<Asker>,
) -> Result<ConnectSpec, Response> {
    let kvps = if creds.kvps.is_empty() {
        conn.kvps.clone()
    } else {
        conn.kvps
            .updated(&creds.kvps, &[] as &[&str])
            .map_err(|e| {
                Response::with(
                    code::BAD_PARAMETER,
                    format!("invalid key-value pairs, nothing applied: {e}"),
                )
            })?
    };
    let app_dir = match (&creds.app_cgroup, &conn.scope) {
        (Some(p), _) => Some(p.clone()),
        (None, Scope::PerApp { cgroup }) => Some(cgroup_dir(cgroup)),
        (None, Scope::DeviceLevel) => None,
    };
    let app_cgroup = match app_dir {
        Some(path) => match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Some(std::os::unix::fs::MetadataExt::ino(&m)),
            _ => {
                return Err(Response::with(
                    code::BAD_PARAMETER,
                    format!(
                        "per-app cgroup {}: not a cgroup v2 directory",
                        path.display()
                    ),
                ));
            }
        },
        None => None,
    };
    // A connection that is not stored is one URL, tried as it is; the store's remembers
    // its mode and the URL that last connected.
    let (url_mode, last_url) = if stored {
        (conn.url_mode, conn.last_url)
    } else {
        (UrlMode::Top, None)
    };
    let machine = daemon.store().machine().clone();
    let trust = Trust {
        pin: creds
            .pin
            .as_deref()
            .map(Pin::parse)
            .transpose()
            .map_err(|e| Response::with(code::BAD_PARAMETER, e.to_string()))?,
        admin: conn.pins.clone(),
        // DisablePinning=true: no learned pin; the CA store (and the admin's pins) decide.
        learned: if kvps.disable_pinning() {
            BTreeMap::new()
        } else {
            daemon.pins.lock().map(|p| p.clone()).unwrap_or_default()
        },
        // dynamic-trust false: no user's pin, from the request or learned, stands in for
        // the CAs.
        ca_required: !machine.dynamic_trust,
    };
    let client_cert = client_auth(daemon, conn, creds)?;
    // The machine's identity (`connection-identity: machine`): its certificate and nothing
    // of a user's. No user name, password or prompt: a gateway that asks for one fails the
    // login instead of waiting for someone who is not there.
    let machine_identity = conn.identity == tunnel_config::Identity::Machine;
    if machine_identity && matches!(client_cert, ClientAuth::None) {
        return Err(Response::with(
            code::CERTIFICATE,
            format!(
                "'{}' logs in with the machine's identity, and no machine certificate is stored (tunnel cert import)",
                conn.name
            ),
        ));
    }
    let udp_ports = kvps.split_udp_ports().cloned();
    let id = daemon
        .free_id()
        .ok_or_else(|| Response::with(code::GENERAL, "too many connections"))?;
    Ok(ConnectSpec {
        name: conn.name.clone(),
        id,
        gateways: conn.urls.clone(),
        url_mode,
        last_url,
        realm: creds.realm.clone().or_else(|| conn.realm.clone()),
        user: (!machine_identity)
            .then(|| creds.user.clone().or_else(|| conn.user.clone()))
            .flatten(),
        password: (!machine_identity)
            .then(|| creds.password.clone())
            .flatten(),
        // A cookie kept from an earlier session of a stored connection resumes it without a
        // login (`sessions`).
        cookie: creds.cookie.clone().or_else(|| {
            stored.then_some(())?;
            daemon
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cookie(&conn.name)
                .map(str::to_string)
        }),
        trust,
        client_cert,
        ip_routes: kvps.configured_ip_routes().map(<[_]>::to_vec),
        exc_routes: kvps.exc_routes().to_vec(),
        udp_ports,
        mtu: kvps.is_set(tunnel_config::Key::MTU).then(|| kvps.mtu()),
        tun_ip: kvps.tun_ip(),
        dns: conn.dns.clone(),
        portal: machine
            .captive_portal_detection
            .then(|| daemon.portal_probe.clone())
            .flatten(),
        portal_exception: daemon
            .portal_cgroup
            .as_ref()
            .map(|(_, id)| (*id, daemon.portal_window)),
        block_untunnelled_ipv6: kvps.block_untunnelled_ipv6(),
        dpd: Dpd {
            idle: kvps.atp_probe_idle(),
            interval: kvps.atp_probe_interval(),
            count: kvps.atp_probe_count(),
        },
        disconnect_timeout: kvps.disconnect_timeout(),
        app_cgroup,
        esp: true,
        // allow-save false: a pin the request brought (the user's trust decision) holds for
        // this connection only; pins of gateways the CAs vouched for are still learned.
        learn_pin: !kvps.disable_pinning() && (machine.allow_save || creds.pin.is_none()),
        prompts: Prompter::new(creds.prompts.clone(), asker.filter(|_| !machine_identity)),
    })
}

/// Answers a request; `asker` reaches a caller that answers a connect's prompts.
async fn handle(
    daemon: &Arc<Daemon>,
    request: Request,
    asker: Option<Asker>,
    who: Caller,
) -> Response {
    // A stored connection added or changed may be a location connection to judge now.
    let changes_store = matches!(
        request,
        Request::Add { .. } | Request::Edit { .. } | Request::Import { .. }
    );
    let response = answer(daemon, request, asker, who).await;
    if changes_store && response.code == code::OK {
        let d = daemon.clone();
        tokio::spawn(async move { relocate(&d).await });
    }
    response
}

/// The response to `request` ([`handle`]).
async fn answer(
    daemon: &Arc<Daemon>,
    request: Request,
    asker: Option<Asker>,
    who: Caller,
) -> Response {
    match request {
        Request::Version => Response::ok(format!("tunneld {}", env!("CARGO_PKG_VERSION"))),
        Request::Status { name } => {
            let table = daemon.plane.counters().ok();
            let conns = daemon.connections.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<_> = conns
                .values()
                .filter(|h| name.as_ref().is_none_or(|n| &h.name == n))
                .map(|h| {
                    let mut s = h.status();
                    s.dns_applied = daemon.dns.applied().filter(|a| a.connection == h.name);
                    if let Some(t) = &table {
                        for reason in tunnel_common::Reason::ALL {
                            let c = t.get(u32::from(h.id), reason);
                            if c.packets > 0 {
                                s.classifier.insert(reason.name().to_string(), c.packets);
                            }
                        }
                    }
                    s
                })
                .collect();
            if let Some(n) = name
                && all.is_empty()
            {
                return Response::with(
                    code::NO_SUCH_CONNECTION,
                    format!("no connection named '{n}'"),
                );
            }
            Response::ok(format!("{} connection(s)", all.len())).data(all)
        }
        Request::Counters => match daemon
            .plane
            .counters()
            .and_then(|t| Ok((t, daemon.plane.uplink_counters()?)))
        {
            Ok((table, uplinks)) => {
                let mut cells: Vec<serde_json::Value> = table
                    .nonzero()
                    .into_iter()
                    .map(|(conn, reason, c)| {
                        serde_json::json!({"conn": conn, "reason": reason.name(), "packets": c.packets, "bytes": c.bytes})
                    })
                    .collect();
                cells.extend(uplinks.nonzero().into_iter().map(|(uplink, ifindex, reason, c)| {
                    serde_json::json!({"uplink": uplink, "ifindex": ifindex, "reason": reason.name(), "packets": c.packets, "bytes": c.bytes})
                }));
                Response::ok(format!("{table}\n{uplinks}")).data(cells)
            }
            Err(e) => Response::with(code::GENERAL, e.to_string()),
        },
        Request::List => {
            let store = daemon.store();
            let list: Vec<&Connection> = store.list().iter().collect();
            Response::ok(format!("{} stored connection(s)", list.len())).data(&list)
        }
        Request::Add { connection } => {
            let conn: Connection = match serde_json::from_value(connection) {
                Ok(c) => c,
                Err(e) => return Response::with(code::BAD_PARAMETER, format!("connection: {e}")),
            };
            if let Err(refused) = user_connections_allowed(daemon) {
                return refused;
            }
            let name = conn.name.clone();
            let notes = no_effect_notes(&conn.kvps);
            let added = daemon.store().add(conn);
            if let Err(e) = added {
                return Response::with(code::BAD_PARAMETER, e.to_string());
            }
            // A locked-down connection may be what puts lock-down in force.
            match apply_lockdown(daemon) {
                Ok(_) => Response::ok(format!("added '{name}'{notes}")),
                Err(refused) => refused,
            }
        }
        Request::Edit { name, changes } => {
            if let Err(refused) = user_connections_allowed(daemon).and(unlocked(daemon, &name)) {
                return refused;
            }
            edit(daemon, &name, changes).await
        }
        Request::Delete { name } => {
            if let Err(refused) = user_connections_allowed(daemon).and(unlocked(daemon, &name)) {
                return refused;
            }
            if daemon
                .connections
                .lock()
                .map(|c| c.contains_key(&name))
                .unwrap_or(false)
            {
                return Response::with(
                    code::INVALID_STATE,
                    format!("'{name}' is running: disconnect it first"),
                );
            }
            let deleted = daemon.store().delete(&name);
            match deleted {
                Ok(_) => match apply_lockdown(daemon) {
                    Ok(_) => Response::ok(format!("deleted '{name}'")),
                    Err(refused) => refused,
                },
                Err(tunnel_config::StoreError::NotFound { .. }) => Response::with(
                    code::NO_SUCH_CONNECTION,
                    format!("no connection named '{name}'"),
                ),
                Err(e) => Response::with(code::GENERAL, e.to_string()),
            }
        }
        Request::Connect {
            name,
            url,
            credentials,
            timeout_secs,
        } => {
            let (conn, stored) = match resolve_connection(daemon, name, url) {
                Ok(c) => c,
                Err(r) => return r,
            };
            let name = conn.name.clone();
            let running = daemon
                .connections
                .lock()
                .ok()
                .and_then(|c| c.get(&name).map(|h| h.status().state));
            match running {
                Some(
                    State::Connected | State::Connecting | State::Reconnecting | State::Suspended,
                ) => {
                    return Response::with(
                        code::INVALID_STATE,
                        format!("'{name}' is already running"),
                    );
                }
                Some(_) => {
                    if let Some(old) = daemon
                        .connections
                        .lock()
                        .ok()
                        .and_then(|mut c| c.remove(&name))
                    {
                        old.task.abort();
                    }
                }
                None => {}
            }
            let spec = match spec_for(daemon, &conn, stored, &credentials, asker) {
                Ok(s) => s,
                Err(r) => return r,
            };
            let mut response = connect(daemon, spec, timeout_secs).await;
            if response.code == code::CERTIFICATE
                && let Some(obj) = response.data.as_object_mut()
            {
                // The CLI may ask the user to trust the certificate, if the machine allows it
                // (and say whether the answer is kept).
                let machine = daemon.store().machine().clone();
                obj.insert(
                    "dynamic_trust".into(),
                    serde_json::json!(machine.dynamic_trust),
                );
                obj.insert("allow_save".into(), serde_json::json!(machine.allow_save));
            }
            response
        }
        Request::Disconnect { name } => {
            daemon
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hold(&name);
            daemon
                .location
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .hold(&name);
            command(daemon, &name, Command::Disconnect).await
        }
        Request::Signout { name } => command(daemon, &name, Command::Signout).await,
        Request::Suspend { name } => command(daemon, &name, Command::Suspend).await,
        Request::Resume { name } => command(daemon, &name, Command::Resume).await,
        Request::Stop => {
            let names: Vec<String> = daemon
                .connections
                .lock()
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default();
            for n in &names {
                command(daemon, n, Command::Disconnect).await;
            }
            Response::ok(format!("disconnected {} connection(s)", names.len()))
        }
        Request::Diagnostics => diagnostics(daemon),
        Request::CertImport { pem, name } => {
            match daemon
                .certs
                .import(&pem.cert, &pem.key, name.as_deref(), UnixTime::now())
            {
                Ok(info) => Response::ok(format!(
                    "stored '{}' (issued to {}, by {}, until {})",
                    info.name,
                    info.issued_to.as_deref().unwrap_or("-"),
                    info.issuer,
                    info.not_after
                ))
                .data(info),
                Err(e @ CertStoreError::Io { .. }) => Response::with(code::GENERAL, e.to_string()),
                Err(e @ CertStoreError::BadName { .. }) => {
                    Response::with(code::BAD_PARAMETER, e.to_string())
                }
                Err(e) => Response::with(code::CERTIFICATE, e.to_string()),
            }
        }
        Request::CertList => {
            let list = daemon.certs.list();
            Response::ok(format!("{} stored certificate(s)", list.len())).data(list)
        }
        Request::CertDelete { name } => match daemon.certs.delete(&name) {
            Ok(()) => Response::ok(format!("deleted certificate '{name}'")),
            Err(e @ CertStoreError::NotFound { .. }) => {
                Response::with(code::CERTIFICATE, e.to_string())
            }
            Err(e @ CertStoreError::BadName { .. }) => {
                Response::with(code::BAD_PARAMETER, e.to_string())
            }
            Err(e) => Response::with(code::GENERAL, e.to_string()),
        },
        Request::Import { text } => import(daemon, &text),
        Request::LogLevel { detailed } => {
            let level = if detailed { Level::Debug } else { Level::Info };
            let mut log = daemon.log.lock().unwrap_or_else(|e| e.into_inner());
            log.format = EventLog::new(level);
            // The log says from where on it is kept at another level.
            log.message(Level::Info, &format!("event log level set to {level}"));
            Response::ok(format!("log level {level}"))
        }
        Request::Open { url } => open(daemon, &url, who),
        // Answered by `serve`, which knows the caller's process.
        Request::Portal => Response::with(code::GENERAL, "portal: only over the control socket"),
    }
}

/// Applies a JSON patch of stored fields (`urls`, `realm`, `user`, `kvps`, `url_mode`,
/// `scope`, `policy`, `lock_down`) to a stored connection; a running connection is
/// disconnected first (event 108), as the seed says.
async fn edit(daemon: &Arc<Daemon>, name: &str, changes: serde_json::Value) -> Response {
    let Some(current) = daemon.store().get(name).cloned() else {
        return Response::with(
            code::NO_SUCH_CONNECTION,
            format!("no connection named '{name}'"),
        );
    };
    let mut value = match serde_json::to_value(&current) {
        Ok(v) => v,
        Err(e) => return Response::with(code::GENERAL, e.to_string()),
    };
    let (Some(obj), Some(patch)) = (value.as_object_mut(), changes.as_object()) else {
        return Response::with(
            code::BAD_PARAMETER,
            "changes must be a JSON object of fields",
        );
    };
    for (k, v) in patch {
        obj.insert(k.clone(), v.clone());
    }
    let edited: Connection = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(e) => return Response::with(code::BAD_PARAMETER, format!("edit: {e}")),
    };
    if daemon
        .connections
        .lock()
        .map(|c| c.contains_key(name))
        .unwrap_or(false)
    {
        daemon.emit.event(EventKind::ModifiedDisconnect {
            connection: name.to_string(),
        });
        command(daemon, name, Command::Disconnect).await;
    }
    let notes = no_effect_notes(&edited.kvps);
    let edited = daemon
        .store()
        .edit(name, |c| *c = edited)
        .map(|c| c.name.clone());
    match edited {
        Ok(name) => match apply_lockdown(daemon) {
            Ok(_) => Response::ok(format!("edited '{name}'{notes}")),
            Err(refused) => refused,
        },
        Err(e) => Response::with(code::BAD_PARAMETER, e.to_string()),
    }
}

/// One line per KVP of `kvps` that does nothing on this client, each after a newline, so
/// that an admin who sets one is told rather than left to believe it works.
fn no_effect_notes(kvps: &tunnel_config::Kvps) -> String {
    kvps.without_effect()
        .iter()
        .map(|n| format!("\nnote: {n}"))
        .collect()
}

/// Puts the kernel's lock-down in line with the store ([`tunnel_config::Store::lockdown_in_force`]),
/// after anything that may change it; says whether it is on.
fn apply_lockdown(daemon: &Daemon) -> Result<bool, Response> {
    let (on, exceptions) = {
        let store = daemon.store();
        (store.lockdown_in_force(), store.lockdown_exceptions())
    };
    daemon
        .plane
        .set_lockdown(on, exceptions)
        .map_err(|e| Response::with(code::GENERAL, format!("applying VPN only access: {e}")))?;
    Ok(on)
}

/// Imports a `.pulsepreconfig` file: machine settings (when the binding server agrees) and
/// its connections; unknown sections are reported and skipped.
fn import(daemon: &Arc<Daemon>, text: &str) -> Response {
    let pre = match tunnel_config::Preconfig::parse(text) {
        Ok(p) => p,
        Err(e) => return Response::with(code::BAD_PARAMETER, format!("preconfig: {e}")),
    };
    let report = match daemon.store().import(&pre) {
        Ok(r) => r,
        Err(e) => return Response::with(code::GENERAL, format!("preconfig: {e}")),
    };
    let lockdown = match apply_lockdown(daemon) {
        Ok(on) => on,
        Err(refused) => return refused,
    };
    let mut lines = vec![format!("machine settings: {:?}", report.machine)];
    lines.extend(
        report
            .added
            .iter()
            .map(|n| format!("added connection '{n}'")),
    );
    lines.extend(
        report
            .updated
            .iter()
            .map(|n| format!("updated connection '{n}'")),
    );
    lines.extend(
        report
            .refused
            .iter()
            .map(|(n, why)| format!("not imported '{n}': {why}")),
    );
    lines.extend(pre.skipped.iter().map(|s| format!("skipped: {s}")));
    lines.extend(pre.warnings.iter().map(|w| format!("note: {w}")));
    Response::ok(lines.join("\n")).data(serde_json::json!({
        "added": report.added,
        "updated": report.updated,
        "skipped": pre.skipped.len(),
        "vpn_only_access": lockdown,
    }))
}

/// A `pulsesecureclient://connect?...` launch URL: adds (or finds) the "(Auto Launch)"
/// connection and returns it for the CLI to connect; `store=false` gives a connection for
/// this run only.
fn open(daemon: &Arc<Daemon>, url: &str, who: Caller) -> Response {
    let request = match tunnel_config::LaunchRequest::parse(url) {
        Ok(r) => r,
        Err(e) => return Response::with(code::BAD_PARAMETER, format!("launch URL: {e}")),
    };
    // A member may open a link to a stored connection, or one that is not to be stored.
    if who == Caller::Member && request.store && request.stored(&daemon.store()).is_none() {
        {
            return Response::with(
                code::GENERAL,
                "only root may add a connection: this link names one that is not stored",
            );
        }
    }
    let outcome = tunnel_config::apply_launch(&mut daemon.store(), &request);
    let (conn, temporary) = match outcome {
        Ok(tunnel_config::LaunchOutcome::Added(c)) => (c, false),
        Ok(tunnel_config::LaunchOutcome::Existing { connection, .. }) => (connection, false),
        Ok(tunnel_config::LaunchOutcome::Temporary(c)) => (c, true),
        Ok(other) => {
            return Response::with(
                code::GENERAL,
                format!("launch URL: unexpected outcome {other:?}"),
            );
        }
        Err(e @ tunnel_config::LaunchError::UserConnectionsNotAllowed) => {
            return Response::with(
                code::USER_CONNECTION_NOT_ALLOWED,
                format!("launch URL: {e}"),
            );
        }
        Err(e) => return Response::with(code::BAD_PARAMETER, format!("launch URL: {e}")),
    };
    let url = conn
        .primary_url()
        .map(ToString::to_string)
        .unwrap_or_default();
    Response::ok(format!("connection '{}'{}", conn.name, if temporary { " (not stored)" } else { "" })).data(
        serde_json::json!({"name": conn.name, "url": url, "user": conn.user, "realm": conn.realm, "temporary": temporary}),
    )
}

/// The diagnostics bundle (`tunnel logs save`): status, counters, the stored connections and
/// machine settings, uplinks and the event logs. It goes back to the caller, which writes it
/// (`super::diagnostics`); it holds no secrets, as nothing it is built from does.
fn diagnostics(daemon: &Arc<Daemon>) -> Response {
    let status: Vec<_> = daemon
        .connections
        .lock()
        .map(|c| c.values().map(Handle::status).collect())
        .unwrap_or_default();
    let counters = daemon
        .plane
        .counters()
        .map(|t| t.to_string())
        .unwrap_or_default()
        + &daemon
            .plane
            .uplink_counters()
            .map(|t| format!("\n{t}"))
            .unwrap_or_default();
    let (store, machine) = {
        let store = daemon.store();
        (store.list().to_vec(), store.machine().clone())
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let log = daemon.log.lock().unwrap_or_else(|e| e.into_inner());
    let bundle = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uplinks": daemon.plane.uplinks(),
        "status": status,
        "counters": counters,
        "machine": machine,
        "connections": store,
        "log_old": read(log.file.old_path()),
        "log": read(log.file.path()),
    });
    drop(log);
    Response::ok("diagnostics").data(bundle)
}

/// Starts a connection and waits for its first login to finish (or `timeout_secs`).
async fn connect(daemon: &Arc<Daemon>, spec: ConnectSpec, timeout_secs: Option<u64>) -> Response {
    let name = spec.name.clone();
    daemon.emit.event(EventKind::UserStart {
        connection: name.clone(),
    });
    let (handle, first) = connection::spawn(
        spec,
        daemon.plane.clone(),
        daemon.dns.clone(),
        daemon.emit.clone(),
    );
    if let Ok(mut c) = daemon.connections.lock() {
        c.insert(name.clone(), handle);
    }
    let wait = Duration::from_secs(timeout_secs.unwrap_or(45).clamp(1, 600));
    let result = tokio::time::timeout(wait, first).await;
    let failed = |code: i32, message: String| {
        if let Some(h) = daemon
            .connections
            .lock()
            .ok()
            .and_then(|mut c| c.remove(&name))
        {
            h.task.abort();
        }
        Response::with(code, message)
    };
    match result {
        Ok(Ok(Ok(()))) => {
            let status = daemon
                .connections
                .lock()
                .ok()
                .and_then(|c| c.get(&name).map(Handle::status));
            let message = match &status {
                Some(s) if s.state == State::CaptivePortal => format!(
                    "'{name}' waits behind a captive portal{}: sign in there; it connects by itself once the internet is reachable",
                    s.portal
                        .as_deref()
                        .map(|p| format!(" at {p}"))
                        .unwrap_or_default()
                ),
                _ => format!("connected '{name}'"),
            };
            Response::ok(message).data(status)
        }
        Ok(Ok(Err(f))) => {
            let code = match &f {
                Failure::Auth(_)
                | Failure::CredentialsNeeded { .. }
                | Failure::Connect(_)
                | Failure::Prompt(_)
                | Failure::Unsupported(_) => code::CONNECT_FAILED,
                Failure::Cancelled(_) => code::CANCELLED,
                Failure::Certificate(_) => code::CERTIFICATE,
                Failure::Timeout { .. } => code::TIMEOUT,
            };
            failed(code, format!("'{name}': {f}")).data(&f)
        }
        Ok(Err(_)) => failed(
            code::GENERAL,
            format!("'{name}': the connection ended unexpectedly"),
        ),
        Err(_) => failed(
            code::TIMEOUT,
            format!("'{name}': not connected within {} s", wait.as_secs()),
        ),
    }
}

async fn command(daemon: &Arc<Daemon>, name: &str, cmd: Command) -> Response {
    // A name, or (as the launcher's -url gives) a gateway host a connection is using.
    let name = daemon
        .connections
        .lock()
        .ok()
        .and_then(|c| {
            if c.contains_key(name) {
                return Some(name.to_string());
            }
            c.values()
                .find(|h| {
                    h.status().server.is_some_and(|s| {
                        s.contains(&format!("//{name}:")) || s.contains(&format!("//[{name}]:"))
                    })
                })
                .map(|h| h.name.clone())
        })
        .unwrap_or_else(|| name.to_string());
    let name = name.as_str();
    let found = daemon
        .connections
        .lock()
        .ok()
        .and_then(|c| c.get(name).map(|h| (h.status().state, h.commands_clone())));
    let Some((state, tx)) = found else {
        return Response::with(
            code::NO_SUCH_CONNECTION,
            format!("no connection named '{name}'"),
        );
    };
    let allowed = match cmd {
        Command::Suspend => state == State::Connected,
        Command::Resume => state == State::Suspended,
        Command::Disconnect | Command::Signout => true,
    };
    if !allowed {
        return Response::with(
            code::INVALID_STATE,
            format!("'{name}' is {state:?}: cannot {cmd:?}"),
        );
    }
    let label = format!("{cmd:?}");
    let ends = matches!(cmd, Command::Disconnect | Command::Signout);
    if ends {
        daemon.emit.event(EventKind::UserStop {
            connection: name.to_string(),
        });
    }
    let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
    if tx.send((cmd, ack_tx)).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(10), ack_rx).await;
    }
    if ends
        && let Some(h) = daemon
            .connections
            .lock()
            .ok()
            .and_then(|mut c| c.remove(name))
    {
        let _ = tokio::time::timeout(Duration::from_secs(10), h.task).await;
    }
    Response::ok(format!("{label} '{name}': done"))
}
