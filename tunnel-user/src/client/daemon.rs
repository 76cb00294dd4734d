//! `tunneld`: owns the kernel data path, the connections and the event log, and answers the
//! control socket. Requests are handled one task each; connections live in their own tasks
//! (see [`super::connection`]).

use std::{
    collections::BTreeMap,
    ffi::CStr,
    io,
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::{
    Emit,
    connection::{self, Command, ConnectSpec, Dpd, Failure, Gateway, Handle, State},
    control::{Request, Response, code},
    kvp::Kvps,
    policy::DataPlane,
    tls::{ClientCert, Pin, Trust},
};
use crate::datapath::ConnId;

/// How `tunneld` is set up.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// Where learned pins, the store and the log live.
    pub state_dir: PathBuf,
    /// Uplinks to attach the classifier to; None: every non-loopback Ethernet interface.
    pub uplinks: Option<Vec<String>>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the kernel data path: {0}")]
    Datapath(#[from] crate::DatapathError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Interfaces in this network namespace that look like uplinks: up, Ethernet or raw IP, not
/// loopback and not one of our TUN devices.
pub fn detect_uplinks() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            if let Ok(name) = CStr::from_ptr((*p).if_name).to_str() {
                out.push(name.to_string());
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out.retain(|n| n != "lo" && !n.starts_with("tun"));
    out
}

/// State shared by request handlers.
struct Daemon {
    plane: DataPlane,
    emit: Emit,
    connections: Mutex<BTreeMap<String, Handle>>,
    /// Gateway host to its pin, learned on the first trusted connection (pins.json).
    pins: Arc<Mutex<BTreeMap<String, Pin>>>,
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
}

/// Runs the daemon until `shutdown` completes; every connection is then disconnected and
/// the kernel programs detached.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(io_err(format!("creating {}", config.state_dir.display())))?;
    let uplinks = config.uplinks.clone().unwrap_or_else(detect_uplinks);
    let plane = DataPlane::start(&uplinks)?;
    let pins_path = config.state_dir.join("pins.json");
    let pins: BTreeMap<String, Pin> = std::fs::read_to_string(&pins_path)
        .ok()
        .and_then(|t| serde_json::from_str::<BTreeMap<String, String>>(&t).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(h, p): (String, String)| Pin::parse(&p).ok().map(|p| (h, p)))
                .collect()
        })
        .unwrap_or_default();
    let pin_store: Arc<Mutex<BTreeMap<String, Pin>>> = Arc::new(Mutex::new(pins));
    let learned = pin_store.clone();
    let learned_path = pins_path.clone();
    let emit = Emit::new(
        |id, args| info!(event = id, args = ?args, "event"),
        move |_conn, host, pin| {
            let Ok(mut m) = learned.lock() else { return };
            if m.get(host) != Some(&pin) {
                m.insert(host.to_string(), pin);
                let text: BTreeMap<&String, String> =
                    m.iter().map(|(h, p)| (h, p.to_string())).collect();
                let _ = std::fs::write(
                    &learned_path,
                    serde_json::to_string_pretty(&text).unwrap_or_default(),
                );
            }
        },
    );
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    // A stale socket from an earlier run: remove it unless someone still answers on it.
    if config.socket.exists() {
        if StdUnixStream::connect(&config.socket).is_ok() {
            return Err(DaemonError::Io {
                what: format!("{}", config.socket.display()),
                source: io::Error::new(io::ErrorKind::AddrInUse, "another tunneld is running"),
            });
        }
        let _ = std::fs::remove_file(&config.socket);
    }
    let listener = UnixListener::bind(&config.socket)
        .map_err(io_err(format!("binding {}", config.socket.display())))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restricting the control socket"))?;
    let daemon = Arc::new(Daemon {
        plane,
        emit: emit.clone(),
        connections: Mutex::new(BTreeMap::new()),
        pins: pin_store,
    });
    emit.event(1, &[env!("CARGO_PKG_VERSION")]);
    info!(socket = %config.socket.display(), uplinks = ?uplinks, "tunneld running");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
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
    let _ = std::fs::remove_file(&config.socket);
    emit.event(2, &[]);
    Ok(())
}

/// The peer's uid, from SO_PEERCRED.
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    stream.peer_cred().ok().map(|c| c.uid())
}

async fn serve(daemon: Arc<Daemon>, stream: UnixStream) {
    let uid = peer_uid(&stream);
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(rd);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let response = if uid != Some(0) {
        warn!(uid = ?uid, "control request from a non-root user refused");
        Response::with(code::GENERAL, "only root may control tunneld")
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(&daemon, request).await,
            Err(e) => Response::with(code::BAD_PARAMETER, format!("unreadable request: {e}")),
        }
    };
    let mut out = serde_json::to_string(&response).unwrap_or_default();
    out.push('\n');
    let _ = wr.write_all(out.as_bytes()).await;
}

/// Parses `https://host[:port][/path]`, a bare host or an IP literal.
pub fn parse_gateway(url: &str) -> Result<Gateway, String> {
    let rest = url.trim();
    let rest = match rest.split_once("://") {
        Some(("https", r)) => r,
        Some((scheme, _)) => {
            return Err(format!(
                "'{url}': only https:// gateways are supported, not {scheme}://"
            ));
        }
        None => rest,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("'{url}': unclosed '[' in the address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("'{url}': '{p}' is not a port"))?,
            None if after.is_empty() => 443,
            None => return Err(format!("'{url}': unexpected '{after}' after the address")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("'{url}': '{p}' is not a port"))?,
            ),
            None => (authority.to_string(), 443),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(format!("'{url}' names no gateway"));
    }
    Ok(Gateway { host, port, path })
}

async fn handle(daemon: &Arc<Daemon>, request: Request) -> Response {
    match request {
        Request::Version => Response::ok(format!("tunneld {}", env!("CARGO_PKG_VERSION"))),
        Request::Status { name } => {
            let conns = daemon.connections.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<_> = conns
                .values()
                .filter(|h| name.as_ref().is_none_or(|n| &h.name == n))
                .map(Handle::status)
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
        Request::Counters => match daemon.plane.counters() {
            Ok(table) => {
                let cells: Vec<serde_json::Value> = table
                    .nonzero()
                    .into_iter()
                    .map(|(conn, reason, c)| serde_json::json!({"conn": conn, "reason": reason.name(), "packets": c.packets, "bytes": c.bytes}))
                    .collect();
                Response::ok(table.to_string()).data(cells)
            }
            Err(e) => Response::with(code::GENERAL, e.to_string()),
        },
        Request::Connect {
            name,
            url,
            credentials,
            timeout_secs,
        } => {
            let Some(url) = url.or(name.clone()) else {
                return Response::with(
                    code::BAD_PARAMETER,
                    "connect needs a connection name or -url",
                );
            };
            let gateway = match parse_gateway(&url) {
                Ok(g) => g,
                Err(e) => return Response::with(code::BAD_PARAMETER, e),
            };
            let name = name.unwrap_or_else(|| gateway.host.clone());
            if daemon
                .connections
                .lock()
                .map(|c| c.contains_key(&name))
                .unwrap_or(false)
            {
                let state = daemon
                    .connections
                    .lock()
                    .ok()
                    .and_then(|c| c.get(&name).map(|h| h.status().state));
                if matches!(
                    state,
                    Some(State::Connected | State::Connecting | State::Reconnecting)
                ) {
                    return Response::with(
                        code::INVALID_STATE,
                        format!("'{name}' is already connected"),
                    );
                }
                if let Some(old) = daemon
                    .connections
                    .lock()
                    .ok()
                    .and_then(|mut c| c.remove(&name))
                {
                    old.task.abort();
                }
            }
            let kvps = match Kvps::parse(&credentials.kvps) {
                Ok(k) => k,
                Err(e) => {
                    return Response::with(
                        code::BAD_PARAMETER,
                        format!("invalid key-value pair, nothing applied: {e}"),
                    );
                }
            };
            let app_cgroup = match &credentials.app_cgroup {
                Some(path) => match std::fs::metadata(path) {
                    Ok(m) if m.is_dir() => Some(std::os::unix::fs::MetadataExt::ino(&m)),
                    _ => {
                        return Response::with(
                            code::BAD_PARAMETER,
                            format!(
                                "per-app cgroup {}: not a cgroup v2 directory",
                                path.display()
                            ),
                        );
                    }
                },
                None => None,
            };
            let trust = Trust {
                pin: match credentials.pin.as_deref().map(Pin::parse).transpose() {
                    Ok(p) => p,
                    Err(e) => return Response::with(code::BAD_PARAMETER, e),
                },
                // DisablePinning=true: no learned pin; the CA store decides.
                learned: (!kvps.disable_pinning)
                    .then(|| {
                        daemon
                            .pins
                            .lock()
                            .ok()
                            .and_then(|p| p.get(&gateway.host).copied())
                    })
                    .flatten(),
            };
            let client_cert = match (&credentials.cert, &credentials.key) {
                (Some(c), k) => match ClientCert::load(c, k.as_deref().unwrap_or(c)) {
                    Ok(cert) => Some(cert),
                    Err(e) => return Response::with(code::CERTIFICATE, e),
                },
                (None, _) => None,
            };
            let Some(id) = daemon.free_id() else {
                return Response::with(code::GENERAL, "too many connections");
            };
            let spec = ConnectSpec {
                name: name.clone(),
                id,
                gateways: vec![gateway],
                realm: credentials.realm.clone(),
                user: credentials.user.clone(),
                password: credentials.password.clone(),
                cookie: credentials.cookie.clone(),
                trust,
                client_cert,
                ip_routes: kvps.ip_routes.clone(),
                exc_routes: kvps.exc_routes.clone(),
                udp_ports: kvps.udp_ports.clone(),
                mtu: kvps.mtu,
                tun_ip: kvps.tun_ip,
                dpd: Dpd {
                    idle: kvps.probe_idle,
                    interval: kvps.probe_interval,
                    count: kvps.probe_count,
                },
                disconnect_timeout: kvps.disconnect_timeout,
                app_cgroup,
                esp: true,
                learn_pin: !kvps.disable_pinning,
            };
            connect(daemon, spec, timeout_secs).await
        }
        Request::Disconnect { name } => command(daemon, &name, Command::Disconnect, true).await,
        Request::Signout { name } => command(daemon, &name, Command::Signout, true).await,
        Request::Suspend { name } => command(daemon, &name, Command::Suspend, false).await,
        Request::Resume { name } => command(daemon, &name, Command::Resume, false).await,
        Request::Stop => {
            let names: Vec<String> = daemon
                .connections
                .lock()
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default();
            for n in &names {
                command(daemon, n, Command::Disconnect, true).await;
            }
            Response::ok(format!("disconnected {} connection(s)", names.len()))
        }
        other => Response::with(code::GENERAL, format!("{other:?} is not available yet")),
    }
}

/// Starts a connection and waits for its first login to finish (or `timeout_secs`).
async fn connect(daemon: &Arc<Daemon>, spec: ConnectSpec, timeout_secs: Option<u64>) -> Response {
    let name = spec.name.clone();
    daemon.emit.event(100, &[&name]);
    let (handle, first) = connection::spawn(spec, daemon.plane.clone(), daemon.emit.clone());
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
            Response::ok(format!("connected '{name}'")).data(status)
        }
        Ok(Ok(Err(f))) => {
            let code = match &f {
                Failure::Auth(_) | Failure::CredentialsNeeded(_) | Failure::Connect(_) => {
                    code::CONNECT_FAILED
                }
                Failure::Certificate { .. } => code::CERTIFICATE,
                Failure::Timeout(_) => code::TIMEOUT,
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

async fn command(daemon: &Arc<Daemon>, name: &str, cmd: Command, remove: bool) -> Response {
    let state = daemon
        .connections
        .lock()
        .ok()
        .and_then(|c| c.get(name).map(|h| h.status().state));
    let Some(state) = state else {
        return Response::with(
            code::NO_SUCH_CONNECTION,
            format!("no connection named '{name}'"),
        );
    };
    let allowed = match cmd {
        Command::Suspend => matches!(state, State::Connected),
        Command::Resume => matches!(state, State::Suspended),
        Command::Disconnect | Command::Signout => true,
    };
    if !allowed {
        return Response::with(
            code::INVALID_STATE,
            format!("'{name}' is {state:?}: cannot {cmd:?}"),
        );
    }
    let label = format!("{cmd:?}");
    match cmd {
        Command::Disconnect | Command::Signout => daemon.emit.event(101, &[name]),
        _ => {}
    }
    let handle = if remove {
        daemon
            .connections
            .lock()
            .ok()
            .and_then(|mut c| c.remove(name))
    } else {
        None
    };
    match handle {
        Some(h) => {
            h.command(cmd).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), h.task).await;
        }
        None => {
            let sent = {
                let conns = daemon.connections.lock().ok();
                conns
                    .as_ref()
                    .and_then(|c| c.get(name))
                    .map(|h| (h.commands_clone(), h.name.clone()))
            };
            if let Some((tx, _)) = sent {
                let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
                let _ = tx.send((cmd, ack_tx));
                let _ = ack_rx.await;
            }
        }
    }
    Response::ok(format!("{label} '{name}': done"))
}
