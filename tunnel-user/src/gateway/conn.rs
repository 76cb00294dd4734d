//! One client connection, from the TLS handshake to its close: the login's steps (asked and
//! answered through the state machine, decided by `login` and `dialogue`), then the
//! established session's task (timers, events, ESP housekeeping; the packet threads carry
//! its packets), and the bookkeeping when it ends (address released or session parked).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{net::TcpStream, sync::broadcast};
use tokio_rustls::TlsAcceptor;

use tracing::{debug, info, warn};
use tunnel_proto::{
    ActiveSession, AuthRejection, CloseReason, DPD_PROBES, FatalErrorKind, Password, Prompt,
    PromptAnswer, Server, ServerEvent,
};

use super::end::{Scratch, forwardable, read_tls_connection};
use super::offer::{client_config, realm_login};
use super::runtime::{Ctx, Shutdown};
use super::{
    GatewayConfig, PasswordRequest, SessionLimit,
    access::AccessCache,
    admission::LoginSlot,
    client_cert::{self, CertNameError},
    cluster::{STORE_UNAVAILABLE, adopt, drop_local_copy, lease_for_login, route_session},
    dialogue::{Dialogue, Step},
    login::{LoginOutcome, LoginRequest, PasswordChange, Refused},
    ratelimit::{Refusal, Scope},
    redis_store::Unavailable as StoreUnavailable,
    store::CookieKey,
    table::{Moment, Place, Resumable, Session, UserSession},
    tls_readers::TlsReader,
    unix_now,
};
use crate::{
    fastpath::{
        tls_in::{TlsIn, ToTun},
        tun_io::TunSink,
    },
    sys::tls_link::TlsLink,
};

/// Each connection task reads into a buffer this big until its session is established
/// (the packet threads read it afterwards): one TLS record's plaintext.
const LOGIN_READ_BUF: usize = 16 * 1024;

/// How long a session that lost its connection at `now` stays resumable: the idle timeout
/// (no traffic can flow without a connection), or the session lifetime when there is none;
/// never past the end of its login ([`Resumable::of`]).
fn parked_until(config: &GatewayConfig, now: Instant) -> Instant {
    now + config.idle_timeout.unwrap_or(config.session_lifetime)
}

/// Asks the next step of the login in `conn`, or accepts it when none is left.
async fn next_login_step(ctx: &Ctx, conn: &mut Conn) {
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
                let sessions = match user_sessions(ctx, &login.user, &login.realm).await {
                    Ok(sessions) => sessions,
                    Err(e) => {
                        warn!(user = %login.user, error = %e, "login refused: the user's sessions in the cluster cannot be counted");
                        let _ = p.reject(AuthRejection::Failure(STORE_UNAVAILABLE.into()));
                        conn.login = None;
                        return;
                    }
                };
                if sessions.len() < max as usize {
                    continue;
                }
                match realm_login(&ctx.settings().config, &login.realm).session_limit {
                    SessionLimit::Ask => {}
                    SessionLimit::EndOldest => {
                        // Oldest login first: the new one takes the last place left.
                        let over = sessions.len() + 1 - max as usize;
                        for s in sessions.into_iter().take(over) {
                            info!(user = %login.user, realm = %login.realm, session = s.id, max, "at the session limit: ending the oldest session");
                            end_anywhere(
                                ctx,
                                s.place,
                                &login.user,
                                "Ended by a newer login of the same user",
                            )
                            .await;
                        }
                        continue;
                    }
                    SessionLimit::Refuse => {
                        info!(user = %login.user, realm = %login.realm, sessions = sessions.len(), max, "login refused: at the session limit");
                        ctx.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
                        let _ = p.reject(AuthRejection::Failure(format!(
                            "You have {} sessions, the most this realm allows. End one and \
                             log in again.",
                            sessions.len()
                        )));
                        conn.login = None;
                        return;
                    }
                }
                info!(user = %login.user, realm = %login.realm, sessions = sessions.len(), max, "at the session limit: asking which session to end");
                let mut listed = Vec::with_capacity(sessions.len());
                let shown = sessions
                    .into_iter()
                    .map(|s| {
                        let id = s.shown_id();
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

/// Ends one of `user`'s sessions (chosen at the session limit, or by the administrator),
/// telling its client `why`: a live one gets the fatal error frame and ends as if it timed
/// out; a parked one is dropped, its address released and its record removed.
pub(super) fn end_session(ctx: &Ctx, place: Place, user: &str, why: &str) {
    match place {
        Place::Live(s) => {
            info!(%user, session = s.id, peer = %s.peer, why, "ending a session");
            if let Ok(mut p) = s.proto.lock() {
                let _ = p.terminate(FatalErrorKind::SessionTerminated, why);
            }
            // Out of the table now, not when its task gets to it: the login that ended it
            // counts the user's sessions again at once.
            ctx.table.remove(&s);
            s.send_tls_now();
            s.wake.notify_one();
        }
        Place::Elsewhere(record) => {
            if let Some(shared) = ctx.store.shared() {
                info!(%user, session = record.id, why, "ending a session of the cluster");
                shared.end_later(&record);
            }
        }
        Place::Parked(cookie) => {
            if let Some(r) = ctx.table.remove_parked(&cookie) {
                info!(%user, session = r.id, why, "ending a parked session");
                ctx.store.remove(&cookie, &r.lease);
                if let Ok(mut pool) = ctx.pool.lock() {
                    pool.release(&r.lease);
                }
            }
        }
    }
}

/// Before a new login's password is checked: the session cap (`limits.max_sessions`, of
/// the cluster with a shared store), and in a cluster the failed logins of `user` on every
/// gateway against one limit (`auth.passwords.account_failures` in its window). A refusal
/// when one is reached, or when the store cannot say.
async fn refuses_new_login(ctx: &Ctx, user: &str) -> Option<AuthRejection> {
    let cap = u64::from(ctx.settings().config.limits.max_sessions);
    if cap > 0 {
        let held = match ctx.store.shared() {
            Some(shared) => shared.count().await,
            None => {
                let (live, _, parked) = ctx.table.census();
                Ok((live + parked) as u64)
            }
        };
        match held {
            Ok(n) if n >= cap => {
                warn!(%user, sessions = n, cap, "login refused: the session cap (limits.max_sessions) is reached");
                return Some(AuthRejection::Failure(
                    "The gateway holds as many sessions as it may. Try again later.".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                warn!(%user, error = %e, "login refused: the session store is unavailable");
                return Some(AuthRejection::Failure(STORE_UNAVAILABLE.into()));
            }
        }
    }
    let shared = ctx.store.shared()?;
    let limits = ctx.settings().config.auth.passwords;
    match shared.failed_logins(user).await {
        Ok(n) if n >= u64::from(limits.account_failures) => {
            warn!(%user, failed = n, window_secs = limits.account_window.as_secs(), "login refused: the user's failed logins across the cluster reached the limit");
            // The refusal the local limiter gives when the account's window is full.
            LoginOutcome::Refused(Refused::RateLimited(Refusal {
                scope: Scope::Account,
                retry_after: limits.account_window,
                pending: false,
            }))
            .rejection()
        }
        Ok(_) => None,
        Err(e) => {
            warn!(%user, error = %e, "login refused: the session store is unavailable");
            Some(AuthRejection::Failure(STORE_UNAVAILABLE.into()))
        }
    }
}

/// The sessions of `user` in `realm`, oldest login first: this gateway's, and in a cluster
/// those the store knows of elsewhere.
async fn user_sessions(
    ctx: &Ctx,
    user: &str,
    realm: &str,
) -> Result<Vec<UserSession>, StoreUnavailable> {
    let mut sessions = ctx.table.sessions_of(user, realm);
    let Some(shared) = ctx.store.shared() else {
        return Ok(sessions);
    };
    let here: std::collections::HashSet<CookieKey> = sessions
        .iter()
        .filter_map(|s| match &s.place {
            Place::Live(live) => Some(CookieKey::of(&live.cookie)),
            Place::Parked(key) => Some(*key),
            Place::Elsewhere(_) => None,
        })
        .collect();
    for record in shared.sessions_of(user, realm).await? {
        if here.contains(&record.key) {
            continue;
        }
        sessions.push(UserSession {
            id: record.id,
            from: record.peer.ip(),
            logged_in: UNIX_EPOCH + std::time::Duration::from_secs(record.logged_in),
            place: Place::Elsewhere(record),
        });
    }
    sessions.sort_by_key(|s| (s.logged_in, s.id));
    Ok(sessions)
}

/// Ends a session wherever it is: one another gateway holds is gone from the store when
/// this returns (so counting again does not see it).
async fn end_anywhere(ctx: &Ctx, place: Place, user: &str, why: &str) {
    match (place, ctx.store.shared()) {
        (Place::Elsewhere(record), Some(shared)) => match shared.end(&record).await {
            Ok(()) => info!(%user, session = record.id, why, "ended a session of the cluster"),
            Err(e) => {
                warn!(%user, session = record.id, error = %e, "a session of the cluster could not be ended")
            }
        },
        (place, _) => end_session(ctx, place, user, why),
    }
}

fn new_cookie() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    resuming: Option<(CookieKey, Resumable)>,
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
pub(super) async fn serve(
    ctx: Arc<Ctx>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    login_slot: LoginSlot,
    mut stop: broadcast::Receiver<Shutdown>,
) {
    let settings = ctx.settings();
    let limits = &settings.config.limits;
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
        .map(|c| client_cert::certificate_user(c, settings.config.auth.certificate.user));
    let (tcp, tls) = tls.into_inner();
    // openconnect needs a record per frame; the client says when it does not.
    let link = match TlsLink::new(tcp, tls, true) {
        Ok(link) => Arc::new(link),
        Err(e) => return debug!(error = %e, "registering the TLS connection"),
    };
    let proto = Server::new(settings.server_config.clone(), Instant::now())
        .with_spi_allocator(ctx.spis.clone());
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
    let mut sink = TunSink::new(&*ctx.tun);
    let mut scratch = Scratch::default();
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
            let mut tls_in = TlsIn::with_buffer(std::mem::take(&mut buf), &*ctx.tun);
            read_tls_connection(&ctx, &ctx.device, &mut tls_in, conn.id, &r);
            if r.closed.load(Ordering::Acquire) {
                break conn.dropped();
            }
            if let Err(e) = ctx.tls_readers.add(conn.id, r.clone()) {
                debug!(error = %e, "handing the TLS connection to the packet threads");
                break conn.dropped();
            }
            reader = Some(r);
            // The packet threads read from here on: the task's buffers go.
            drop(tls_in);
            sink = TunSink::new(&*ctx.tun);
            // The bytes read may have made events.
            continue;
        }
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
                let mut to_tun = ToTun::new(Some((&*ctx.tun, &mut sink)), &mut scratch, Some(&ctx.device));
                conn.with_proto(|p| to_tun.open(&ctx, p, owner.as_ref(), &buf[..n]));
                to_tun.finish(&ctx);
            }
            _ = wake => {}
            _ = evicted => {
                debug!("closed before its login to make room (limits.login_connections)");
                break conn.dropped();
            }
            _ = timer => {
                let _ = conn.with_proto(|p| p.poll_timers(Instant::now()));
            }
            how = stop.recv() => {
                if how == Ok(Shutdown::Drain) {
                    // Closed without a word: the client resumes with its cookie.
                    break conn.dropped();
                }
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
        && ctx.settings().config.auth.password_request == PasswordRequest::Current
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
            let key = CookieKey::of(&cookie);
            // In a cluster the store decides whether the session still exists (it may have
            // ended on another gateway), and this gateway becomes its holder.
            let from_cluster = match ctx.store.shared() {
                None => None,
                Some(shared) => match shared.take(&key).await {
                    Ok(Some(record)) => Some(record),
                    Ok(None) => {
                        drop_local_copy(ctx, &key);
                        debug!("a cookie the cluster does not know: asking for credentials");
                        let _ = conn.pending.as_mut()?.reject(AuthRejection::Retry);
                        return None;
                    }
                    Err(e) => {
                        warn!(error = %e, "resume refused: the session store cannot say whether the session still exists");
                        let _ = conn
                            .pending
                            .as_mut()?
                            .reject(AuthRejection::Failure(STORE_UNAVAILABLE.into()));
                        return None;
                    }
                },
            };
            let resumable = ctx.table.unpark(&key, now).or_else(|| {
                // The old connection may still be up (the client reconnected before the gateway
                // noticed the loss): take its session over, if its login has not ended.
                let live = ctx
                    .table
                    .live_by_cookie(&cookie)
                    .filter(|live| live.ends.is_none_or(|end| end > now))?;
                live.superseded.store(true, Ordering::Relaxed);
                live.wake.notify_one();
                ctx.table.remove(&live);
                Some(Resumable::of(
                    &live,
                    parked_until(&ctx.settings().config, now),
                ))
            });
            let resumable = match (resumable, from_cluster) {
                (Some(r), _) => Some(r),
                (None, Some(record)) => adopt(ctx, &record).await,
                (None, None) => None,
            };
            let p = conn.pending.as_mut()?;
            match resumable {
                Some(r) => {
                    if let Some(end) = r.ends {
                        p.set_session_end(end);
                    }
                    let _ = p.accept(&cookie);
                    // Until the resumed session is established, the connection holds it: if
                    // the connection ends first, it is parked again (`finish`).
                    conn.resuming = Some((key, r));
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
                .or_else(|| ctx.settings().config.auth.realms.first().cloned())
                .unwrap_or_default();
            let verified = password.clone();
            if let Some(refusal) = refuses_new_login(ctx, &username).await {
                ctx.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
                let _ = conn.pending.as_mut()?.reject(refusal);
                return None;
            }
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
            if outcome == LoginOutcome::Refused(Refused::Credentials)
                && let Some(shared) = ctx.store.shared()
            {
                let window = ctx.settings().config.auth.passwords.account_window;
                if let Err(e) = shared.failed_login(&username, window).await {
                    warn!(user = %username, error = %e, "a failed login could not be counted in the cluster");
                }
            }
            match outcome.rejection() {
                None => {
                    let rules = realm_login(&ctx.settings().config, &realm);
                    let must_change = {
                        let (ctx, user) = (ctx.clone(), username.clone());
                        let max_age = ctx.settings().config.password_rules().max_age;
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
                    next_login_step(ctx, conn).await;
                }
                Some(why) => {
                    ctx.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
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
                        .change_password(&ctx.settings().config.password_rules(), change)
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
                            end_anywhere(
                                ctx,
                                place,
                                &login.user,
                                "Ended by a new login of the same user",
                            )
                            .await;
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
                None => next_login_step(ctx, conn).await,
                Some(message) => {
                    ctx.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
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
                    let lease = match lease_for_login(ctx, &realm, &CookieKey::of(&cookie)).await {
                        Ok(lease) => lease,
                        Err(why) => {
                            let _ = conn.with_proto(|p| {
                                p.terminate(FatalErrorKind::SessionTerminated, why)
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
            let config = client_config(&ctx.settings().config, &realm, &lease, conn.offers_aes_gcm);
            if let Err(e) = proto.send_config(&config, now) {
                warn!(error = %e, "sending the configuration failed");
                if let Ok(mut pool) = ctx.pool.lock() {
                    pool.release(&lease);
                }
                if let Some(shared) = ctx.store.shared() {
                    shared.remove(&CookieKey::of(&cookie), &lease);
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
                realm_login(&ctx.settings().config, &s.realm).max_sessions_per_user
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
            ctx.store.put(&s.stored(Moment::now()));
            route_session(ctx, &s.lease, true);
            let counter = if resumed {
                &ctx.counters.resumes
            } else {
                &ctx.counters.logins_ok
            };
            counter.fetch_add(1, Ordering::Relaxed);
            conn.session = Some(s);
            conn.login_slot = None;
        }
        ServerEvent::EspKeysInstalled => debug!("client ESP keys installed"),
        ServerEvent::Packet(p) => {
            // `serve` takes data packets straight from the parser; this is for completeness.
            if forwardable(
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
                dpd_interval_secs = ctx.settings().config.dpd_interval.as_secs(),
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
            route_session(ctx, &s.lease, false);
            if let Ok(mut pool) = ctx.pool.lock() {
                pool.release(&s.lease);
            }
            ctx.store.remove(&CookieKey::of(&s.cookie), &s.lease);
            info!(user = %s.user, peer = %s.peer, ipv4 = %s.lease.ipv4, "session ended, address released");
        }
        Ending::Dropped => {
            route_session(ctx, &s.lease, false);
            info!(user = %s.user, "connection lost; session resumable with its cookie");
            let now = Moment::now();
            let r = Resumable::of(&s, parked_until(&ctx.settings().config, now.at));
            let key = CookieKey::of(&s.cookie);
            ctx.store.put(&r.stored(key, now));
            ctx.table.park(key, r);
        }
        Ending::Superseded => info!(user = %s.user, "session taken over by a new connection"),
    }
}
