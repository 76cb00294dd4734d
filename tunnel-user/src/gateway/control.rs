//! The gateway's control socket, for `tunnel-gateway sessions list|show|kill` (as ocserv's
//! `occtl`): the operator sees the sessions, connected and parked, and ends one.
//!
//! A Unix stream socket at `control_socket` (default `state_dir/control.sock`), made 0600;
//! a peer that is neither root nor the gateway's own user is refused (SO_PEERCRED), so the
//! file's mode is not the only guard. One request, one answer, each a JSON line; a request
//! is at most [`MAX_REQUEST`] bytes and has [`REQUEST_TIME`] to arrive, and at most
//! [`MAX_CLIENTS`] are served at once (more wait in the listen queue).
//!
//! Ending a connected session sends it the fatal-error frame ("Ended by the administrator")
//! and releases its address as a logout does; ending a parked one drops it, its address and
//! its record in the session store. Either way its cookie resumes nothing afterwards.

use std::{
    fmt,
    io::{self, BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::Path,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};
use tracing::{info, warn};

use super::{
    conn::end_session,
    runtime::{Ctx, Shutdown},
    side_listener::serve_each,
    table::{Moment, Place},
};

/// The longest request line.
const MAX_REQUEST: u64 = 4096;
/// How long a request may take to arrive.
const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Requests served at once.
const MAX_CLIENTS: usize = 8;

/// What the operator asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Every session.
    List,
    /// The sessions `Selector` picks.
    Show(Selector),
    /// Ends the sessions `Selector` picks.
    Kill(Selector),
    /// Drains the gateway for an upgrade: no new connections from now (the health endpoint
    /// says 503), then after `after_secs` every connection is closed without a word, its
    /// session parked and kept in the store for its client to resume (elsewhere, or with
    /// the next gateway), and the gateway exits.
    Drain { after_secs: u64 },
}

/// Which sessions: by id (`5` or `s5` as the session-limit prompt shows it), user, or
/// tunnel address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Selector {
    Id(u64),
    User(String),
    Address(IpAddr),
}

impl FromStr for Selector {
    type Err = String;

    /// `id:N`, `user:NAME`, `address:IP`; or bare: an address, an id (`N`, `sN`), else a
    /// user name.
    fn from_str(text: &str) -> Result<Selector, String> {
        let id = |t: &str| t.strip_prefix('s').unwrap_or(t).parse::<u64>().ok();
        match text.split_once(':') {
            Some(("id", v)) => id(v)
                .map(Selector::Id)
                .ok_or_else(|| format!("\"{v}\" is not a session id")),
            Some(("user", v)) if !v.is_empty() => Ok(Selector::User(v.to_string())),
            Some(("address", v)) => v
                .parse()
                .map(Selector::Address)
                .map_err(|_| format!("\"{v}\" is not an IP address")),
            _ if text.is_empty() => Err("an empty selector".into()),
            _ => Ok(if let Ok(a) = text.parse() {
                Selector::Address(a)
            } else if let Some(n) = id(text) {
                Selector::Id(n)
            } else {
                Selector::User(text.to_string())
            }),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Id(n) => write!(f, "id:{n}"),
            Selector::User(u) => write!(f, "user:{u}"),
            Selector::Address(a) => write!(f, "address:{a}"),
        }
    }
}

/// One session as the operator sees it. Times are UNIX seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: u64,
    pub user: String,
    pub realm: String,
    /// Where the client connected from.
    pub from: SocketAddr,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub logged_in: u64,
    /// When the login ends.
    pub ends: Option<u64>,
    /// `connected` or `parked` (lost its connection; resumable with its cookie).
    pub state: String,
    /// `esp` once the client was heard over ESP, else `tls`; none when parked.
    pub transport: Option<String>,
    /// Until when a parked session may be resumed.
    pub parked_until: Option<u64>,
}

impl SessionInfo {
    fn matches(&self, which: &Selector) -> bool {
        match which {
            Selector::Id(n) => self.id == *n,
            Selector::User(u) => self.user == *u,
            Selector::Address(a) => {
                IpAddr::V4(self.ipv4) == *a || self.ipv6.is_some_and(|v6| IpAddr::V6(v6) == *a)
            }
        }
    }
}

/// The gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Answer {
    Sessions(Vec<SessionInfo>),
    /// The sessions ended.
    Killed(Vec<SessionInfo>),
    /// Draining: the sessions connected now, to be parked.
    Draining {
        sessions: usize,
    },
    Error(String),
}

/// Binds the control socket at `path`, mode 0600; a socket left by an earlier gateway is
/// replaced, any other file there is an error.
pub(super) fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            // A gateway still answering there is another gateway: do not take its socket.
            if StdUnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another gateway answers on this control socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket until `stop`.
pub(super) async fn serve(
    ctx: Arc<Ctx>,
    listener: UnixListener,
    stop: broadcast::Receiver<Shutdown>,
) {
    let me = nix::unistd::geteuid().as_raw();
    let listener = &listener;
    let accept = move || async move { listener.accept().await.map(|(s, _)| s) };
    let handle = |stream: UnixStream| {
        let ctx = ctx.clone();
        async move {
            let uid = stream.peer_cred().map(|c| c.uid()).ok();
            if !uid.is_some_and(|u| u == 0 || u == me) {
                if let Some(more) = ctx.refused_log.event(Instant::now()) {
                    warn!(
                        ?uid,
                        more,
                        "control socket: refused a peer that is neither root nor the gateway's user"
                    );
                }
                let refusal = "only root and the gateway's own user may use this socket";
                reply(stream, &Answer::Error(refusal.into())).await;
                return;
            }
            match tokio::time::timeout(REQUEST_TIME, read_request(stream)).await {
                Ok(Ok((request, stream))) => reply(stream, &answer(&ctx, request, uid)).await,
                Ok(Err((error, stream))) => reply(stream, &Answer::Error(error)).await,
                Err(_) => {}
            }
        }
    };
    serve_each("control socket", MAX_CLIENTS, accept, stop, handle).await;
}

async fn read_request(stream: UnixStream) -> Result<(Request, UnixStream), (String, UnixStream)> {
    let mut reader = tokio::io::BufReader::new(stream).take(MAX_REQUEST + 1);
    let mut line = Vec::new();
    let read = reader.read_until(b'\n', &mut line).await;
    let stream = reader.into_inner().into_inner();
    match read {
        Err(e) => Err((format!("reading the request: {e}"), stream)),
        Ok(_) if line.len() as u64 > MAX_REQUEST => {
            Err((format!("a request is at most {MAX_REQUEST} bytes"), stream))
        }
        Ok(_) => match serde_json::from_slice(&line) {
            Ok(r) => Ok((r, stream)),
            Err(e) => Err((format!("an unreadable request: {e}"), stream)),
        },
    }
}

async fn reply(mut stream: UnixStream, answer: &Answer) {
    if let Ok(mut line) = serde_json::to_vec(answer) {
        line.push(b'\n');
        let _ = tokio::time::timeout(REQUEST_TIME, stream.write_all(&line)).await;
    }
}

/// Every session now, connected and parked, by id.
fn sessions(ctx: &Ctx) -> Vec<(SessionInfo, Place)> {
    let now = Moment::now();
    let unix = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (live, parked) = ctx.table.snapshot();
    let mut all: Vec<(SessionInfo, Place)> = live
        .into_iter()
        .map(|s| {
            let esp = s.heard_over_esp();
            (
                SessionInfo {
                    id: s.id,
                    user: s.user.clone(),
                    realm: s.realm.clone(),
                    from: s.peer,
                    ipv4: s.lease.ipv4,
                    ipv6: s.lease.ipv6,
                    logged_in: unix(s.logged_in),
                    ends: s.ends.map(|e| now.unix_of(e)),
                    state: "connected".into(),
                    transport: Some(if esp { "esp" } else { "tls" }.into()),
                    parked_until: None,
                },
                Place::Live(s),
            )
        })
        .collect();
    all.extend(parked.into_iter().map(|(key, r)| {
        (
            SessionInfo {
                id: r.id,
                user: r.user.clone(),
                realm: r.realm.clone(),
                from: r.peer,
                ipv4: r.lease.ipv4,
                ipv6: r.lease.ipv6,
                logged_in: unix(r.logged_in),
                ends: r.ends.map(|e| now.unix_of(e)),
                state: "parked".into(),
                transport: None,
                parked_until: Some(now.unix_of(r.expires.max(Instant::now()))),
            },
            Place::Parked(key),
        )
    }));
    all.sort_by_key(|(s, _)| s.id);
    all
}

fn answer(ctx: &Ctx, request: Request, uid: Option<u32>) -> Answer {
    let all = sessions(ctx);
    match request {
        Request::List => Answer::Sessions(all.into_iter().map(|(s, _)| s).collect()),
        Request::Show(which) => {
            let found: Vec<SessionInfo> = all
                .into_iter()
                .filter(|(s, _)| s.matches(&which))
                .map(|(s, _)| s)
                .collect();
            if found.is_empty() {
                Answer::Error(format!("no session matches {which}"))
            } else {
                Answer::Sessions(found)
            }
        }
        Request::Drain { after_secs } => {
            info!(?uid, after_secs, "drain asked for");
            ctx.drain(Duration::from_secs(after_secs));
            Answer::Draining {
                sessions: ctx.table.live_count(),
            }
        }
        Request::Kill(which) => {
            let mut ended = Vec::new();
            for (s, place) in all.into_iter().filter(|(s, _)| s.matches(&which)) {
                info!(?uid, session = s.id, user = %s.user, ipv4 = %s.ipv4, state = %s.state, "session ended by the administrator");
                end_session(ctx, place, &s.user, "Ended by the administrator");
                ended.push(s);
            }
            if ended.is_empty() {
                Answer::Error(format!("no session matches {which}"))
            } else {
                Answer::Killed(ended)
            }
        }
    }
}

/// Asks the gateway listening at `socket` (the operator's side).
pub fn ask(socket: &Path, request: &Request) -> io::Result<Answer> {
    let mut stream = StdUnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(stream, 64 << 20)).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the gateway closed the control connection without an answer",
        ));
    }
    serde_json::from_str(&answer).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_read_as_the_operator_writes_them() {
        let s = |t: &str| t.parse::<Selector>();
        assert_eq!(s("id:7"), Ok(Selector::Id(7)));
        assert_eq!(s("s7"), Ok(Selector::Id(7)));
        assert_eq!(s("7"), Ok(Selector::Id(7)));
        assert_eq!(s("alice"), Ok(Selector::User("alice".into())));
        assert_eq!(s("user:7"), Ok(Selector::User("7".into())));
        assert_eq!(
            s("10.77.0.2"),
            Ok(Selector::Address("10.77.0.2".parse().unwrap()))
        );
        assert_eq!(
            s("address:fd00::2"),
            Ok(Selector::Address("fd00::2".parse().unwrap()))
        );
        assert!(s("address:nope").unwrap_err().contains("nope"));
        assert!(s("id:x").is_err());
        assert!(s("").is_err());
    }

    #[test]
    fn requests_and_answers_are_one_json_line_each() {
        let r = Request::Kill(Selector::User("alice".into()));
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"kill":{"user":"alice"}}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#""list""#).unwrap(),
            Request::List
        );
        assert!(serde_json::from_str::<Request>(r#"{"kill":{"user":"a"},"x":1}"#).is_err());
    }
}
