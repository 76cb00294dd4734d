//! The gateway side of a Pulse session as a sans-IO state machine: the mirror of `client`.
//!
//! Owns the gateway's message order (accept the upgrade, pick the IF-T version, open the EAP
//! dialogue, offer realms, ask for the password, hand the credentials or the resume cookie to
//! the caller as an event, send the cookie and EAP success, push config and ESP keys), the
//! gateway's ESP handling (answer probes, prefer ESP while the client is heard on it, rekey at
//! the configured lifetime), idle and authentication timeouts, fatal errors and logout.
//!
//! Does not own: user databases, cookie stores, address pools (the caller decides through
//! [`Server::accept`] / [`Server::reject`] and [`Server::send_config`]), sockets or clocks.

use crate::config::{Config, ConfigPacket, EspKeyExchange, EspKeys};
use crate::eap::{
    ActiveSession, Answer, AuthRequest, AuthResponse, EapBody, EapCode, EapPacket, InnerRequest,
    InnerResponse, J2_PASSWORD_CHANGE, J2_PASSWORD_REQUEST, J2_PASSWORD_RETRY,
    JUNIPER_SUBTYPE_AVPS, PasswordMessage, encode_juniper_avps,
};
use crate::esp::{EspSuite, NEXT_HEADER_IPV4};
use crate::ift::{
    ClientInfo, DEFAULT_MAX_FRAME_LEN, FatalErrorKind, Frame, FrameDecoder, IFT_VERSION_MAX,
    IFT_VERSION_MIN, Message, UpgradeRequest, build_http_error, build_upgrade_response,
    parse_upgrade_request,
};
use crate::path::{self, EspPath, Heard, Parts, Seal, Side};
use crate::rng::{RandomSource, SessionRandom};
use crate::session::{
    AuthRejection, EspInput, PacketSink, Password, SessionError, TlsOut, Transmit, after,
    generate_inbound_with, outbound_from, random_spi,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a gateway's inbound SPIs come from. An ESP datagram finds its session by its SPI
/// alone, so every inbound SA that any session of one gateway may still open needs an SPI
/// no other holds. A [`Server`] given an allocator ([`Server::with_spi_allocator`]) reserves
/// the SPI of each inbound SA it makes and releases it when the SA can open nothing more
/// (after a rekey's overlap, or when the server is dropped). Without one, SPIs are random.
pub trait SpiAllocator: Send + Sync {
    /// An SPI (at least [`MIN_SPI`](crate::MIN_SPI)) that no other SA holds, reserved until
    /// released; None when none could be found.
    fn reserve(&self, rng: &mut dyn RandomSource) -> Option<u32>;
    /// Gives back an SPI reserved before.
    fn release(&self, spi: u32);
}

/// How the gateway asks for the password (docs/login.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordForm {
    /// Expanded Juniper subtype 5, as current Ivanti Connect Secure releases ask: the answer
    /// carries at most 18 bytes of password.
    #[default]
    Current,
    /// J2 (subtype 2) code 1, as older gateways ask, and all openconnect releases before
    /// the 2025 one understand.
    Legacy,
}

/// A sign-in notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The text shown to the user.
    pub text: String,
    /// The login goes on only once the client accepts it; otherwise the text rides on the
    /// next request and is only shown.
    pub accept: bool,
}

/// What the gateway asks after the password, when its caller says so ([`Server::ask`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// The password has expired: the client sends the current and a new one (J2 0x43).
    PasswordChange,
    /// A token code (EAP-GTC) with this prompt.
    TokenCode {
        /// Shown to the user.
        prompt: String,
    },
    /// A notice the client must accept (AVP 0xd7b alone).
    Notice {
        /// The notice.
        text: String,
    },
    /// The user is at the session limit: the client names one of these to end.
    SessionChoice {
        /// The user's sessions.
        sessions: Vec<ActiveSession>,
    },
}

/// The client's answer to a [`Prompt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptAnswer {
    /// To [`Prompt::PasswordChange`].
    NewPassword {
        /// What the client says the current password is.
        old: Password,
        /// The new one.
        new: Password,
    },
    /// To [`Prompt::TokenCode`].
    TokenCode(Password),
    /// To [`Prompt::Notice`].
    NoticeAccepted,
    /// To [`Prompt::SessionChoice`]: one of the listed ids.
    EndSession(String),
}

/// What the gateway session is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Realms offered. With more than one the client must choose; with one it is implied.
    pub realms: Vec<String>,
    /// How the password is asked for.
    pub password_form: PasswordForm,
    /// Notices shown, per realm, once the realm is known and before the password.
    pub pre_auth_notices: BTreeMap<String, Notice>,
    /// Largest IF-T frame accepted once the client has logged in.
    pub max_frame_len: u32,
    /// Largest IF-T frame accepted before: the login's messages are small, and whoever
    /// sends them has proved nothing yet, so what they can make the gateway buffer is too.
    pub login_max_frame_len: u32,
    /// Time from creation to authenticated before the session is dropped.
    pub auth_timeout: Option<Duration>,
    /// Time the client has for each login step it answers without its user (the upgrade
    /// request, version, client info, identity, hello, cookie acknowledgement).
    pub protocol_step_timeout: Option<Duration>,
    /// Time the client has for each login step its user may have to answer (the realm, the
    /// credentials).
    pub user_step_timeout: Option<Duration>,
    /// No data in either direction for this long ends the session with fatal error 8.
    pub idle_timeout: Option<Duration>,
    /// How long a login lasts, from the creation of the session that logged in, whatever
    /// the traffic: announced to the client (AVP 0xd5c) and enforced (fatal error, then
    /// closed). A resumed login keeps its original end ([`Server::set_session_end`]).
    pub session_lifetime: Option<Duration>,
    /// Dead-peer detection: a client heard on ESP that then stays silent (nothing over ESP
    /// or TLS) for this long gets an ESP probe, another after each further interval of
    /// silence, and once [`DPD_PROBES`] went unanswered for an interval each the session
    /// closes with [`CloseReason::PeerGone`]. None: off.
    pub dpd_interval: Option<Duration>,
}

/// How many dead-peer probes a silent client gets before it is taken as gone: with
/// [`ServerConfig::dpd_interval`] `i`, it is gone `(DPD_PROBES + 1) * i` after it was last
/// heard. Pulse clients do not answer a probe as such; a live one is heard anyway, since it
/// probes on its own after each of its own DPD periods without traffic (esp.c
/// `keepalive_action`: the gateway's ESP-to-TLS fallback time, TLV 0x4017).
pub const DPD_PROBES: u32 = 3;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            realms: vec!["Users".into()],
            password_form: PasswordForm::default(),
            pre_auth_notices: BTreeMap::new(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            login_max_frame_len: DEFAULT_LOGIN_MAX_FRAME_LEN,
            auth_timeout: Some(Duration::from_secs(120)),
            protocol_step_timeout: Some(Duration::from_secs(10)),
            user_step_timeout: Some(Duration::from_secs(60)),
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            session_lifetime: None,
            dpd_interval: None,
        }
    }
}

/// The default [`ServerConfig::login_max_frame_len`]: the largest login message a Pulse
/// client sends (client information, EAP with a username, password or cookie) is a few
/// hundred bytes.
pub const DEFAULT_LOGIN_MAX_FRAME_LEN: u32 = 16 * 1024;

/// Why a gateway session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client logged out.
    LoggedOut,
    /// The login was refused.
    AuthRejected,
    /// Authentication did not finish within `auth_timeout`.
    AuthTimeout,
    /// The client did not answer a login step within its time
    /// ([`ServerConfig::protocol_step_timeout`], [`ServerConfig::user_step_timeout`]).
    StepTimeout {
        /// What the gateway was waiting for.
        waiting_for: &'static str,
    },
    /// No traffic within `idle_timeout`; fatal error 8 was sent.
    IdleTimeout,
    /// [`Server::terminate`] was called; fatal error was sent.
    Terminated,
    /// The login's lifetime ended; fatal error was sent.
    LifetimeExpired,
    /// Dead-peer detection: the client stayed silent through [`DPD_PROBES`] probes. Nothing
    /// was sent; the caller treats it as a lost connection (the session stays resumable).
    PeerGone,
    /// The client sent what the protocol does not allow (the error was returned by the
    /// call that fed it); the connection is to be closed.
    ProtocolError,
}

/// What the gateway session tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// The HTTP upgrade was accepted.
    Upgraded(UpgradeRequest),
    /// The client's information frame.
    ClientInfo(ClientInfo),
    /// The client offers a DSID cookie: validate it, then [`Server::accept`] (resume) or
    /// [`Server::reject`] with [`AuthRejection::Retry`] (normal login) or another reason (end).
    ResumeRequested {
        /// The cookie.
        cookie: String,
    },
    /// Check these credentials, then [`Server::accept`] with a new session cookie,
    /// [`Server::ask`] for more, or [`Server::reject`].
    Authenticate {
        /// Realm chosen (or the only one).
        realm: Option<String>,
        /// Username.
        username: String,
        /// Password.
        password: Password,
    },
    /// The client answered a [`Prompt`]: decide again ([`Server::accept`], [`Server::ask`],
    /// [`Server::reject`]).
    Answered {
        /// Realm of the login.
        realm: Option<String>,
        /// Username of the login.
        username: String,
        /// The answer.
        answer: PromptAnswer,
    },
    /// EAP success was sent; call [`Server::send_config`].
    Authenticated {
        /// Username (none on resume).
        username: Option<String>,
        /// Realm (none on resume).
        realm: Option<String>,
        /// The session cookie.
        cookie: String,
        /// True when a cookie resume.
        resumed: bool,
    },
    /// The client sent its ESP keys; ESP can be used once it probes.
    EspKeysInstalled,
    /// An IP packet that came over TLS.
    Packet(Vec<u8>),
    /// The session is over; flush [`Server::pending_tls`] and close the connection.
    Closed(CloseReason),
}

#[derive(Debug)]
enum State {
    AwaitUpgrade {
        head: Vec<u8>,
    },
    AwaitVersion,
    AwaitClientInfo,
    AwaitIdentity,
    AwaitHello {
        ident: u8,
    },
    AwaitResumeDecision,
    AwaitRealm {
        ident: u8,
    },
    AwaitPreNotice {
        ident: u8,
        realm: Option<String>,
    },
    AwaitCredentials {
        ident: u8,
        inner: u8,
        realm: Option<String>,
    },
    AwaitAnswer {
        ident: u8,
        /// The nested identifier, for the prompts answered in a nested EAP packet.
        inner: u8,
        prompt: Prompt,
        realm: Option<String>,
        username: String,
    },
    AwaitDecision {
        realm: Option<String>,
        username: String,
    },
    AwaitCookieAck {
        ident: u8,
        username: Option<String>,
        realm: Option<String>,
        cookie: String,
        resumed: bool,
    },
    Authenticated,
    Established,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::AwaitUpgrade { .. } => "waiting for the upgrade request",
            Self::AwaitVersion => "waiting for the version request",
            Self::AwaitClientInfo => "waiting for client info",
            Self::AwaitIdentity => "waiting for the EAP identity",
            Self::AwaitHello { .. } => "waiting for the client's Juniper/1 hello",
            Self::AwaitResumeDecision => "waiting for the caller's resume decision",
            Self::AwaitRealm { .. } => "waiting for the realm",
            Self::AwaitPreNotice { .. } => "waiting for the notice to be accepted",
            Self::AwaitCredentials { .. } => "waiting for credentials",
            Self::AwaitAnswer { prompt, .. } => match prompt {
                Prompt::PasswordChange => "waiting for the new password",
                Prompt::TokenCode { .. } => "waiting for the token code",
                Prompt::Notice { .. } => "waiting for the notice to be accepted",
                Prompt::SessionChoice { .. } => "waiting for the session to end",
            },
            Self::AwaitDecision { .. } => "waiting for the caller's login decision",
            Self::AwaitCookieAck { .. } => "waiting for the cookie acknowledgement",
            Self::Authenticated => "waiting for the caller's config",
            Self::Established => "established",
            Self::Closed => "closed",
        }
    }

    fn authenticated(&self) -> bool {
        matches!(self, Self::Authenticated | Self::Established)
    }

    /// How long the client has to answer in this state; None when the client is not the
    /// one to act (the caller decides, or the login is over).
    fn step_timeout(&self, cfg: &ServerConfig) -> Option<Duration> {
        match self {
            Self::AwaitUpgrade { .. }
            | Self::AwaitVersion
            | Self::AwaitClientInfo
            | Self::AwaitIdentity
            | Self::AwaitHello { .. }
            | Self::AwaitCookieAck { .. } => cfg.protocol_step_timeout,
            Self::AwaitRealm { .. }
            | Self::AwaitPreNotice { .. }
            | Self::AwaitCredentials { .. }
            | Self::AwaitAnswer { .. } => cfg.user_step_timeout,
            Self::AwaitResumeDecision
            | Self::AwaitDecision { .. }
            | Self::Authenticated
            | Self::Established
            | Self::Closed => None,
        }
    }
}

#[derive(Debug)]
struct ServerEsp {
    path: EspPath,
    sent: EspKeys,
    keys_at: Instant,
    last_rx: Option<Instant>,
    /// Next header of the client's probes, which the gateway's own probes copy.
    probe_next_header: u8,
    fallback: Option<Duration>,
    lifetime: Option<Duration>,
    /// Replace the keys once this many bytes of IP packets went through them, either way.
    lifetime_bytes: Option<u64>,
    /// The client answered `sent` with its keys. An answer installs a fresh outbound SA
    /// whose sequence numbers start again at 1: a second answer to the same keys would, with
    /// the same key material, reuse every nonce (AES-GCM) and IV sequence the first SA
    /// used, so only one answer per key exchange of ours is taken.
    answered: bool,
}

impl ServerEsp {
    /// The keys carried their byte lifetime.
    fn bytes_spent(&self) -> bool {
        self.lifetime_bytes
            .is_some_and(|limit| self.path.bytes >= limit)
    }

    /// When the keys' time lifetime ends.
    fn rekey_at(&self) -> Option<Instant> {
        self.lifetime.and_then(|l| after(self.keys_at, l))
    }
}

/// The nested answer, for error messages (never its secret).
fn describe_answer(answer: Option<&InnerResponse>) -> &'static str {
    match answer.map(|a| &a.answer) {
        None => "no nested answer",
        Some(Answer::J2(PasswordMessage::Response { .. })) => "a legacy-form password",
        Some(Answer::J2(PasswordMessage::ChangeResponse { .. })) => "a password change",
        Some(Answer::J2(_)) => "another J2 message",
        Some(Answer::CurrentPassword(_)) => "a current-form password",
        Some(Answer::TokenCode(_)) => "a token code",
    }
}

fn cfg_session_end(now: Instant, lifetime: Option<Duration>) -> Option<Instant> {
    lifetime.and_then(|l| after(now, l))
}

/// The gateway state machine for one client connection.
pub struct Server {
    cfg: ServerConfig,
    rng: Box<dyn RandomSource + Send>,
    state: State,
    decoder: FrameDecoder,
    out: TlsOut,
    events: VecDeque<ServerEvent>,
    created: Instant,
    last_activity: Instant,
    /// When anything last came from the client (TLS bytes, an authenticated ESP datagram).
    last_heard: Instant,
    /// Dead-peer probes sent since then.
    dpd_sent: u32,
    /// The latest time the caller passed in.
    clock: Instant,
    /// When the current login step began: the client has its step timeout from here.
    step_started: Instant,
    next_ident: u8,
    esp: Option<ServerEsp>,
    spis: Option<Arc<dyn SpiAllocator>>,
    /// When the login ends, whatever the traffic.
    session_end: Option<Instant>,
    /// A notice that needs no acceptance, shown with the next request sent.
    notice: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let (Some(spis), Some(esp)) = (&self.spis, &self.esp) {
            for spi in esp.path.pair.inbound_spis() {
                spis.release(spi);
            }
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state.name())
            .field("esp", &self.esp)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A gateway session for a connection accepted at `now`.
    pub fn new(cfg: ServerConfig, now: Instant) -> Self {
        Self::with_rng(cfg, SessionRandom::boxed(), now)
    }

    /// Same, with an injected random source.
    pub fn with_rng(cfg: ServerConfig, rng: Box<dyn RandomSource + Send>, now: Instant) -> Self {
        let decoder = FrameDecoder::new(cfg.login_max_frame_len.min(cfg.max_frame_len));
        let lifetime = cfg.session_lifetime;
        Self {
            cfg,
            rng,
            state: State::AwaitUpgrade { head: Vec::new() },
            decoder,
            out: TlsOut::default(),
            events: VecDeque::new(),
            created: now,
            last_activity: now,
            last_heard: now,
            dpd_sent: 0,
            clock: now,
            step_started: now,
            next_ident: 1,
            esp: None,
            spis: None,
            session_end: cfg_session_end(now, lifetime),
            notice: None,
        }
    }

    /// Takes inbound SPIs from `spis` (see [`SpiAllocator`]).
    pub fn with_spi_allocator(mut self, spis: Arc<dyn SpiAllocator>) -> Self {
        self.spis = Some(spis);
        self
    }

    /// Ends the login at `end` at the latest: a resumed login keeps the end of the login it
    /// resumes. Only an earlier end than the one in force is taken.
    pub fn set_session_end(&mut self, end: Instant) {
        self.session_end = Some(self.session_end.map_or(end, |e| e.min(end)));
    }

    /// When the login ends, whatever the traffic (None: never).
    pub fn session_end(&self) -> Option<Instant> {
        self.session_end
    }

    /// The SPIs the client's datagrams may carry now: the current inbound SA's, and the
    /// previous one's during a rekey's overlap. The caller's index by SPI follows this.
    pub fn esp_spis(&self) -> impl Iterator<Item = u32> + '_ {
        self.esp.iter().flat_map(|e| e.path.pair.inbound_spis())
    }

    /// Whether [`Self::poll_timers`] has work now that the packet path made (a key byte
    /// lifetime reached): the caller's timer task should run it soon.
    pub fn timers_due(&self) -> bool {
        self.esp.as_ref().is_some_and(ServerEsp::bytes_spent)
    }

    /// A new inbound SA and the keys for the client, its SPI reserved when an allocator is
    /// set.
    fn new_inbound(
        &mut self,
        suite: EspSuite,
    ) -> Result<(crate::InboundSa, crate::config::EspKeys), SessionError> {
        let spi = match &self.spis {
            Some(spis) => spis.reserve(&mut *self.rng).ok_or(SessionError::NoSpi)?,
            None => random_spi(&mut *self.rng),
        };
        let made = generate_inbound_with(suite, spi, &mut *self.rng);
        if made.is_err()
            && let Some(spis) = &self.spis
        {
            spis.release(spi);
        }
        made
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True once the configuration was sent.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }

    /// Bytes to write to the TLS connection.
    pub fn pending_tls(&self) -> &[u8] {
        self.out.pending()
    }

    /// Marks `n` bytes of [`Self::pending_tls`] as written.
    pub fn consume_tls(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// Moves every pending TLS byte into `into` (emptied first) without copying: the two
    /// buffers trade places, so `into`'s allocation is reused for what comes next.
    pub fn take_tls(&mut self, into: &mut Vec<u8>) {
        self.out.take(into);
    }

    /// Next event for the caller.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Whether [`Self::poll_event`] has something: packet threads wake the session's task
    /// only then.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The SPI the client's ESP packets for this session carry, once keys were sent.
    pub fn esp_spi(&self) -> Option<u32> {
        self.esp.as_ref().map(|e| e.path.pair.inbound.spi())
    }

    fn wrong(&self, call: &'static str) -> SessionError {
        SessionError::WrongState {
            call,
            state: self.state.name(),
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.events.push_back(ServerEvent::Closed(reason));
    }

    fn ident(&mut self) -> u8 {
        let i = self.next_ident;
        self.next_ident = self.next_ident.wrapping_add(1);
        i
    }

    /// Feeds bytes read from the TLS connection. Any error closes the session, with a
    /// [`CloseReason::ProtocolError`] event (after a rejected upgrade an HTTP 400 is queued
    /// first).
    pub fn handle_tls_bytes(&mut self, data: &[u8], now: Instant) -> Result<(), SessionError> {
        self.handle_tls(data, now, None)
    }

    /// Like [`Self::handle_tls_bytes`], but each data packet goes to `packets` as it is
    /// parsed, with no copy and no event (the fast path's TLS receive).
    pub fn handle_tls_bytes_with(
        &mut self,
        data: &[u8],
        now: Instant,
        packets: &mut dyn FnMut(&[u8]),
    ) -> Result<(), SessionError> {
        self.handle_tls(data, now, Some(packets))
    }

    fn handle_tls(
        &mut self,
        data: &[u8],
        now: Instant,
        mut packets: Option<PacketSink<'_>>,
    ) -> Result<(), SessionError> {
        if self.is_closed() {
            return Err(SessionError::Closed);
        }
        self.clock = self.clock.max(now);
        self.peer_heard(now);
        let step = self.state.name();
        let r = self.handle_tls_inner(data, now, &mut packets);
        if r.is_err() {
            if !self.is_closed() {
                self.close(CloseReason::ProtocolError);
            }
        } else if self.state.name() != step {
            self.step_started = now;
        }
        r
    }

    fn handle_tls_inner(
        &mut self,
        data: &[u8],
        now: Instant,
        packets: &mut Option<PacketSink<'_>>,
    ) -> Result<(), SessionError> {
        if let State::AwaitUpgrade { head } = &mut self.state {
            head.extend_from_slice(data);
            let parsed = match parse_upgrade_request(head) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.out
                        .raw(build_http_error(400, "Bad Request").as_bytes());
                    return Err(e.into());
                }
            };
            let (req, used) = parsed;
            let rest = head.split_off(used);
            self.out.raw(build_upgrade_response());
            self.events.push_back(ServerEvent::Upgraded(req));
            self.state = State::AwaitVersion;
            self.decoder.push(&rest);
        } else {
            self.decoder.push(data);
        }
        let mut decoder = std::mem::take(&mut self.decoder);
        let r = (|| {
            while !self.is_closed() {
                let Some(frame) = decoder.next_frame()? else {
                    break;
                };
                self.handle_frame(frame, now, packets)?;
            }
            Ok(())
        })();
        self.decoder = decoder;
        r
    }

    fn send_j1(&mut self, ident: u8, req: &AuthRequest) -> Result<(), SessionError> {
        let mut avps = Vec::new();
        match self.notice.take() {
            Some(text) => AuthRequest {
                signin_prompt: Some(text),
                ..req.clone()
            }
            .encode(&mut avps)?,
            None => req.encode(&mut avps)?,
        }
        let mut eap = Vec::new();
        encode_juniper_avps(EapCode::Request, ident, &avps, &mut eap)?;
        self.out.send(&Message::AuthChallenge { eap: &eap })
    }

    fn parse_j1(&self, eap: &[u8], ident: u8) -> Result<AuthResponse, SessionError> {
        let pkt = EapPacket::parse(eap)?;
        let avps = pkt.juniper_data(EapCode::Response, JUNIPER_SUBTYPE_AVPS)?;
        if pkt.identifier != ident {
            return Err(SessionError::UnexpectedAuth {
                state: self.state.name(),
                what: format!("EAP identifier {} answers request {ident}", pkt.identifier),
            });
        }
        Ok(AuthResponse::parse(avps)?)
    }

    fn handle_frame(
        &mut self,
        frame: Frame<'_>,
        now: Instant,
        packets: &mut Option<PacketSink<'_>>,
    ) -> Result<(), SessionError> {
        let msg = frame.message()?;
        if let Message::Logout = msg {
            self.close(CloseReason::LoggedOut);
            return Ok(());
        }
        let unexpected = |state: &State| SessionError::UnexpectedMessage {
            state: state.name(),
            got: msg.kind(),
        };
        match (&self.state, &msg) {
            (
                State::AwaitVersion,
                Message::VersionRequest {
                    min,
                    max,
                    preferred: _,
                },
            ) => {
                let version = (*max).min(IFT_VERSION_MAX);
                if version < *min || version < IFT_VERSION_MIN {
                    return Err(SessionError::Version {
                        got: *max,
                        min: IFT_VERSION_MIN,
                        max: IFT_VERSION_MAX,
                    });
                }
                self.out.send(&Message::VersionResponse { version })?;
                self.state = State::AwaitClientInfo;
            }
            (State::AwaitClientInfo, Message::ClientInfo(info)) => {
                self.events.push_back(ServerEvent::ClientInfo(info.clone()));
                self.out.send(&Message::AuthChallenge { eap: &[] })?;
                self.state = State::AwaitIdentity;
            }
            (State::AwaitIdentity, Message::AuthResponse { eap }) => {
                let pkt = EapPacket::parse(eap)?;
                if pkt.code != EapCode::Response || !matches!(pkt.body, EapBody::Identity(_)) {
                    return Err(SessionError::UnexpectedAuth {
                        state: self.state.name(),
                        what: format!("{:?} {:?}", pkt.code, pkt.body),
                    });
                }
                self.next_ident = pkt.identifier.wrapping_add(1);
                let ident = self.ident();
                // Real gateways put server information AVPs here (0xd49, 0xd4a, licence);
                // clients ignore them, so an empty list is enough.
                self.send_j1(ident, &AuthRequest::default())?;
                self.state = State::AwaitHello { ident };
            }
            (State::AwaitHello { ident }, Message::AuthResponse { eap }) => {
                let resp = self.parse_j1(eap, *ident)?;
                match resp.cookie {
                    Some(cookie) => {
                        self.events
                            .push_back(ServerEvent::ResumeRequested { cookie });
                        self.state = State::AwaitResumeDecision;
                    }
                    None => self.begin_login()?,
                }
            }
            (State::AwaitRealm { ident }, Message::AuthResponse { eap }) => {
                let resp = self.parse_j1(eap, *ident)?;
                let realm = resp.realm.ok_or_else(|| SessionError::UnexpectedAuth {
                    state: self.state.name(),
                    what: "response without a realm".into(),
                })?;
                if !self.cfg.realms.contains(&realm) {
                    let ident = self.ident();
                    self.fail_login(
                        ident,
                        AuthRejection::Failure(format!("Unknown realm {realm}")),
                    )?;
                    return Ok(());
                }
                self.realm_known(Some(realm))?;
            }
            (State::AwaitPreNotice { ident, realm }, Message::AuthResponse { eap }) => {
                let realm = realm.clone();
                let resp = self.parse_j1(eap, *ident)?;
                if resp.notice_accepted != Some(1) {
                    return Err(SessionError::UnexpectedAuth {
                        state: self.state.name(),
                        what: "response without the notice's acceptance (0xd7c = 1)".into(),
                    });
                }
                self.ask_password(false, realm)?;
            }
            (
                State::AwaitCredentials {
                    ident,
                    inner,
                    realm,
                },
                Message::AuthResponse { eap },
            ) => {
                let (inner, realm) = (*inner, realm.clone());
                let resp = self.parse_j1(eap, *ident)?;
                let form = self.cfg.password_form;
                let password = match (resp.inner, form) {
                    (
                        Some(InnerResponse {
                            identifier,
                            answer: Answer::J2(PasswordMessage::Response { password }),
                        }),
                        PasswordForm::Legacy,
                    ) if identifier == inner => password,
                    // A client that cut a longer password inside a character sent no UTF-8:
                    // no stored password is that, so it is checked (and found wrong) as any
                    // other, with the login limits.
                    (
                        Some(InnerResponse {
                            identifier,
                            answer: Answer::CurrentPassword(bytes),
                        }),
                        PasswordForm::Current,
                    ) if identifier == inner => String::from_utf8(bytes)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    (other, _) => {
                        return Err(SessionError::UnexpectedAuth {
                            state: self.state.name(),
                            what: format!(
                                "{form:?}-form password request answered with {}",
                                describe_answer(other.as_ref())
                            ),
                        });
                    }
                };
                let username = resp.username.unwrap_or_default();
                self.events.push_back(ServerEvent::Authenticate {
                    realm: realm.clone(),
                    username: username.clone(),
                    password: Password::new(password),
                });
                self.state = State::AwaitDecision { realm, username };
            }
            (State::AwaitAnswer { ident, .. }, Message::AuthResponse { eap }) => {
                let ident = *ident;
                let resp = self.parse_j1(eap, ident)?;
                let State::AwaitAnswer {
                    inner,
                    prompt,
                    realm,
                    username,
                    ..
                } = std::mem::replace(&mut self.state, State::Closed)
                else {
                    return Err(unexpected(&self.state));
                };
                let answer = match (&prompt, resp) {
                    (
                        Prompt::PasswordChange,
                        AuthResponse {
                            inner:
                                Some(InnerResponse {
                                    identifier,
                                    answer: Answer::J2(PasswordMessage::ChangeResponse { old, new }),
                                }),
                            ..
                        },
                    ) if identifier == inner => PromptAnswer::NewPassword {
                        old: Password::new(old),
                        new: Password::new(new),
                    },
                    (
                        Prompt::TokenCode { .. },
                        AuthResponse {
                            inner:
                                Some(InnerResponse {
                                    identifier,
                                    answer: Answer::TokenCode(code),
                                }),
                            ..
                        },
                    ) if identifier == inner => PromptAnswer::TokenCode(Password::new(code)),
                    (
                        Prompt::Notice { .. },
                        AuthResponse {
                            notice_accepted: Some(1),
                            ..
                        },
                    ) => PromptAnswer::NoticeAccepted,
                    (
                        Prompt::SessionChoice { sessions },
                        AuthResponse {
                            end_session: Some(id),
                            ..
                        },
                    ) if sessions.iter().any(|s| s.id == id) => PromptAnswer::EndSession(id),
                    (prompt, resp) => {
                        self.state = State::AwaitAnswer {
                            ident,
                            inner,
                            prompt: prompt.clone(),
                            realm,
                            username,
                        };
                        return Err(SessionError::UnexpectedAuth {
                            state: self.state.name(),
                            what: format!(
                                "the answer does not fit the prompt (nested: {}, notice \
                                 accepted: {:?}, session: {:?})",
                                describe_answer(resp.inner.as_ref()),
                                resp.notice_accepted,
                                resp.end_session
                            ),
                        });
                    }
                };
                self.events.push_back(ServerEvent::Answered {
                    realm: realm.clone(),
                    username: username.clone(),
                    answer,
                });
                self.state = State::AwaitDecision { realm, username };
            }
            (State::AwaitCookieAck { ident, .. }, Message::AuthResponse { eap }) => {
                self.parse_j1(eap, *ident)?;
                let State::AwaitCookieAck {
                    ident,
                    username,
                    realm,
                    cookie,
                    resumed,
                } = std::mem::replace(&mut self.state, State::Authenticated)
                else {
                    return Err(unexpected(&self.state));
                };
                let mut eap = Vec::new();
                EapPacket {
                    code: EapCode::Success,
                    identifier: ident,
                    body: EapBody::Empty,
                }
                .encode(&mut eap)?;
                self.out.send(&Message::AuthSuccess { eap: &eap })?;
                self.events.push_back(ServerEvent::Authenticated {
                    username,
                    realm,
                    cookie,
                    resumed,
                });
            }
            (State::Established, Message::Data(packet)) => {
                self.last_activity = now;
                match packets {
                    Some(f) => f(packet),
                    None => self.events.push_back(ServerEvent::Packet(packet.to_vec())),
                }
            }
            (State::Established, Message::Config(payload)) => match ConfigPacket::parse(payload)? {
                ConfigPacket::Esp(x) => self.install_client_keys(x)?,
                ConfigPacket::Main(_) => return Err(unexpected(&self.state)),
            },
            // `ncmo=1`: the client is ready for ESP; we switch once it is heard on UDP.
            (State::Established, Message::EspEnable(_)) => {}
            (State::Established, Message::Unknown { .. } | Message::Licence(_)) => {}
            (state, _) => return Err(unexpected(state)),
        }
        Ok(())
    }

    fn begin_login(&mut self) -> Result<(), SessionError> {
        if self.cfg.realms.len() > 1 {
            let ident = self.ident();
            let req = AuthRequest {
                realms: self.cfg.realms.clone(),
                ..AuthRequest::default()
            };
            self.send_j1(ident, &req)?;
            self.state = State::AwaitRealm { ident };
            Ok(())
        } else {
            let realm = self.cfg.realms.first().cloned();
            self.realm_known(realm)
        }
    }

    /// The realm is known: its pre-authentication notice, then the password.
    fn realm_known(&mut self, realm: Option<String>) -> Result<(), SessionError> {
        let notice = realm
            .as_ref()
            .and_then(|r| self.cfg.pre_auth_notices.get(r))
            .cloned();
        match notice {
            Some(Notice { text, accept: true }) => {
                let ident = self.ident();
                let req = AuthRequest {
                    signin_prompt: Some(text),
                    ..AuthRequest::default()
                };
                self.send_j1(ident, &req)?;
                self.state = State::AwaitPreNotice { ident, realm };
                Ok(())
            }
            Some(Notice {
                text,
                accept: false,
            }) => {
                self.notice = Some(text);
                self.ask_password(false, realm)
            }
            None => self.ask_password(false, realm),
        }
    }

    fn ask_password(&mut self, retry: bool, realm: Option<String>) -> Result<(), SessionError> {
        let ident = self.ident();
        let inner = self.ident();
        // No prompt-flags AVP (0xd73): without it clients ask for the primary username and
        // password; with value 1 openconnect labels the prompt "secondary credentials".
        // The current form has no retry code: the request is asked again as it was.
        let request = match self.cfg.password_form {
            PasswordForm::Current => InnerRequest::CurrentPassword {
                identifier: inner,
                code: J2_PASSWORD_REQUEST,
            },
            PasswordForm::Legacy => InnerRequest::Password {
                identifier: inner,
                message: PasswordMessage::Request {
                    code: if retry {
                        J2_PASSWORD_RETRY
                    } else {
                        J2_PASSWORD_REQUEST
                    },
                },
            },
        };
        let req = AuthRequest {
            prompt_flags: None,
            inner: Some(request),
            ..AuthRequest::default()
        };
        self.send_j1(ident, &req)?;
        self.state = State::AwaitCredentials {
            ident,
            inner,
            realm,
        };
        Ok(())
    }

    /// Asks the client for more, after [`ServerEvent::Authenticate`] or
    /// [`ServerEvent::Answered`]; the answer comes as [`ServerEvent::Answered`].
    pub fn ask(&mut self, prompt: Prompt) -> Result<(), SessionError> {
        let State::AwaitDecision { realm, username } = &self.state else {
            return Err(self.wrong("ask"));
        };
        let (realm, username) = (realm.clone(), username.clone());
        self.step_started = self.clock;
        let ident = self.ident();
        let inner = self.ident();
        let req = match &prompt {
            Prompt::PasswordChange => AuthRequest {
                inner: Some(InnerRequest::Password {
                    identifier: inner,
                    message: PasswordMessage::Request {
                        code: J2_PASSWORD_CHANGE,
                    },
                }),
                ..AuthRequest::default()
            },
            // Prompt flags 3: the password (here, the code) only, not the username again.
            Prompt::TokenCode { prompt } => AuthRequest {
                prompt_flags: Some(3),
                inner: Some(InnerRequest::TokenCode {
                    identifier: inner,
                    prompt: prompt.clone(),
                }),
                ..AuthRequest::default()
            },
            Prompt::Notice { text } => AuthRequest {
                signin_prompt: Some(text.clone()),
                ..AuthRequest::default()
            },
            Prompt::SessionChoice { sessions } => {
                if sessions.is_empty() {
                    return Err(self.wrong("ask (a session choice without sessions)"));
                }
                AuthRequest {
                    sessions: sessions.clone(),
                    ..AuthRequest::default()
                }
            }
        };
        if matches!(prompt, Prompt::Notice { .. }) {
            // Its own text; a pending one would replace it.
            self.notice = None;
        }
        self.send_j1(ident, &req)?;
        self.state = State::AwaitAnswer {
            ident,
            inner,
            prompt,
            realm,
            username,
        };
        Ok(())
    }

    /// The client was asked for its password and has not answered (yet).
    pub fn awaiting_password(&self) -> bool {
        matches!(self.state, State::AwaitCredentials { .. })
    }

    /// Shows `text` with the next request (the cookie, after [`Server::accept`]): a notice
    /// that needs no acceptance.
    pub fn show_notice(&mut self, text: String) {
        self.notice = Some(text);
    }

    fn fail_login(&mut self, ident: u8, why: AuthRejection) -> Result<(), SessionError> {
        let req = match why {
            AuthRejection::Code(code) => AuthRequest {
                failure_code: Some(code),
                ..AuthRequest::default()
            },
            AuthRejection::Failure(message) => AuthRequest {
                inner: Some(InnerRequest::Password {
                    identifier: ident,
                    message: PasswordMessage::Failure { message },
                }),
                ..AuthRequest::default()
            },
            AuthRejection::Retry => AuthRequest::default(),
        };
        self.send_j1(ident, &req)?;
        self.close(CloseReason::AuthRejected);
        Ok(())
    }

    /// Accepts the pending login or cookie resume; `cookie` is the DSID the client will use
    /// to resume (on resume, normally the one it offered).
    pub fn accept(&mut self, cookie: &str) -> Result<(), SessionError> {
        let (username, realm, resumed) = match &self.state {
            State::AwaitDecision {
                realm, username, ..
            } => (Some(username.clone()), realm.clone(), false),
            State::AwaitResumeDecision => (None, None, true),
            _ => return Err(self.wrong("accept")),
        };
        self.step_started = self.clock;
        let ident = self.ident();
        // What is left of the login (all of it for a new one), from the last thing heard.
        let remaining = self
            .session_end
            .map(|end| end.saturating_duration_since(self.last_activity));
        let req = AuthRequest {
            cookie: Some(cookie.to_owned()),
            auth_expiration: remaining.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            idle_timeout: self
                .cfg
                .idle_timeout
                .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            ..AuthRequest::default()
        };
        self.send_j1(ident, &req)?;
        self.state = State::AwaitCookieAck {
            ident,
            username,
            realm,
            cookie: cookie.to_owned(),
            resumed,
        };
        Ok(())
    }

    /// Refuses the pending login or cookie resume; see [`AuthRejection`].
    pub fn reject(&mut self, why: AuthRejection) -> Result<(), SessionError> {
        self.step_started = self.clock;
        match (&self.state, why) {
            (State::AwaitDecision { realm, .. }, AuthRejection::Retry) => {
                let realm = realm.clone();
                self.ask_password(true, realm)
            }
            (State::AwaitResumeDecision, AuthRejection::Retry) => self.begin_login(),
            (State::AwaitDecision { .. } | State::AwaitResumeDecision, why) => {
                let ident = self.ident();
                self.fail_login(ident, why)
            }
            _ => Err(self.wrong("reject")),
        }
    }

    /// Pushes the tunnel configuration, then ESP keys when `config.esp` names a cipher and
    /// HMAC, then end of config. The session is established afterwards.
    pub fn send_config(&mut self, config: &Config, now: Instant) -> Result<(), SessionError> {
        if !matches!(self.state, State::Authenticated) {
            return Err(self.wrong("send_config"));
        }
        let suite = match (config.esp.cipher, config.esp.hmac) {
            (Some(c), Some(m)) => Some(EspSuite::from_codes(c, m)?),
            _ => None,
        };
        let mut payload = Vec::new();
        config.encode(&mut payload)?;
        self.out.send(&Message::Config(&payload))?;
        if let Some(suite) = suite {
            let (mut inbound, keys) = self.new_inbound(suite)?;
            inbound.set_replay_protection(config.esp.replay_protection.unwrap_or(true));
            let mut payload = Vec::new();
            EspKeyExchange {
                keys: keys.clone(),
                echo: None,
            }
            .encode(&mut payload)?;
            self.out.send(&Message::Config(&payload))?;
            let secs = |s: Option<u32>| s.filter(|&s| s > 0).map(|s| Duration::from_secs(s.into()));
            self.esp = Some(ServerEsp {
                path: EspPath::new(suite, inbound),
                sent: keys,
                keys_at: now,
                last_rx: None,
                probe_next_header: NEXT_HEADER_IPV4,
                fallback: secs(config.esp.fallback_seconds),
                lifetime: secs(config.esp.lifetime_seconds),
                lifetime_bytes: config.esp.lifetime_bytes.filter(|&b| b > 0).map(u64::from),
                answered: false,
            });
        }
        self.out.send(&Message::EndOfConfig)?;
        self.state = State::Established;
        self.decoder.set_max_len(self.cfg.max_frame_len);
        self.last_activity = now;
        Ok(())
    }

    fn install_client_keys(&mut self, x: EspKeyExchange) -> Result<(), SessionError> {
        let Some(esp) = &mut self.esp else {
            return Err(SessionError::UnexpectedMessage {
                state: "established without ESP",
                got: crate::ift::FrameKind::Config,
            });
        };
        if x.echo.as_ref() != Some(&esp.sent) {
            return Err(SessionError::EspEchoMismatch);
        }
        if esp.answered {
            return Err(SessionError::EspKeysRepeated);
        }
        let first = esp.path.pair.outbound.is_none();
        esp.path.pair.outbound = Some(outbound_from(esp.path.pair.suite, &x.keys)?);
        esp.answered = true;
        if first {
            self.events.push_back(ServerEvent::EspKeysInstalled);
        }
        Ok(())
    }

    /// The next ESP datagram to send over UDP to the client's ESP endpoint, written into
    /// `out`, its length returned; call until it returns None. It is the answer to a probe
    /// of the client's (one that arrived before the client's keys waits for them: the client
    /// sends its keys over TLS and probes over UDP at once, so its first probe can overtake
    /// them), or a dead-peer probe of the timers.
    pub fn poll_esp_transmit(&mut self, out: &mut [u8]) -> Result<Option<usize>, SessionError> {
        path::poll_transmit(self, out)
    }

    /// Sends new ESP keys (the client answers with its own); the old inbound SA stays valid
    /// for [`REKEY_OVERLAP`](crate::REKEY_OVERLAP).
    pub fn rekey_esp(&mut self, now: Instant) -> Result<(), SessionError> {
        if !matches!(self.state, State::Established) {
            return Err(self.wrong("rekey_esp"));
        }
        let Some(suite) = self.esp.as_ref().map(|e| e.path.pair.suite) else {
            return Err(self.wrong("rekey_esp"));
        };
        let (inbound, keys) = self.new_inbound(suite)?;
        let Some(esp) = &mut self.esp else {
            return Err(self.wrong("rekey_esp"));
        };
        if let (Some(gone), Some(spis)) = (esp.path.pair.rotate_inbound(inbound, now), &self.spis) {
            spis.release(gone);
        }
        esp.sent = keys.clone();
        esp.answered = false;
        esp.keys_at = now;
        esp.path.bytes = 0;
        let mut payload = Vec::new();
        EspKeyExchange { keys, echo: None }.encode(&mut payload)?;
        self.out.send(&Message::Config(&payload))
    }

    fn esp_usable(&self, now: Instant) -> bool {
        let Some(esp) = &self.esp else {
            return false;
        };
        match (esp.last_rx, esp.fallback) {
            (None, _) => false,
            (Some(_), None) => true,
            // The client probes after one fallback interval of silence, so allow two.
            (Some(rx), Some(fallback)) => {
                after(rx, fallback.saturating_mul(2)).is_none_or(|limit| now <= limit)
            }
        }
    }

    /// Sends one IP packet to the client: ESP into `esp_out` while the client is heard on
    /// ESP, otherwise a data frame on TLS.
    pub fn send_packet(
        &mut self,
        ip_packet: &[u8],
        now: Instant,
        esp_out: &mut [u8],
    ) -> Result<Transmit, SessionError> {
        path::send(self, ip_packet, now, esp_out, Seal::Now)
    }

    /// Like [`Self::send_packet`], but an ESP datagram is only staged into `esp_out` as the
    /// next datagram of a train, which [`Self::seal_train`] then seals at once.
    pub fn stage_packet(
        &mut self,
        ip_packet: &[u8],
        now: Instant,
        esp_out: &mut [u8],
    ) -> Result<Transmit, SessionError> {
        path::send(self, ip_packet, now, esp_out, Seal::Staged)
    }

    /// Seals a train of datagrams staged by [`Self::stage_packet`] (`size` bytes each, the
    /// last possibly shorter); see [`OutboundSa::seal_train`](crate::OutboundSa::seal_train).
    /// Fails, sealing nothing, when the outbound SA changed since they were staged.
    pub fn seal_train(&mut self, train: &mut [u8], size: usize) -> Result<(), SessionError> {
        path::seal_train(self, train, size)
    }

    /// Handles a train of ESP datagrams from the client (`size` bytes each, the last
    /// possibly shorter: one GRO receive, or a single datagram), decrypting them in place:
    /// `f` gets what each one was, in order. A probe comes out as [`EspInput::Probe`]; its
    /// answer is then waiting in [`Self::poll_esp_transmit`].
    ///
    /// Returns whether a datagram of the train was authenticated with a sequence number
    /// beyond any its SA accepted before ([`EspPayload::newest`](crate::EspPayload::newest)): only
    /// then may the caller take the train's source address as the client's ESP endpoint. A
    /// replayed or delayed datagram, which anyone on the path can send from anywhere, is
    /// opened (when the replay window still allows it) but moves nothing.
    #[must_use = "only a train with a newest datagram may move the client's ESP endpoint"]
    pub fn handle_esp_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        now: Instant,
        f: impl FnMut(Result<EspInput<'_>, SessionError>),
    ) -> bool {
        path::receive(self, train, size, now, f)
    }

    /// Ends the session with a fatal error frame (0x93) carrying `kind` and `message`.
    pub fn terminate(&mut self, kind: FatalErrorKind, message: &str) -> Result<(), SessionError> {
        if self.is_closed() {
            return Err(SessionError::Closed);
        }
        self.out.send(&Message::FatalError {
            kind,
            message: message.to_owned(),
        })?;
        self.close(CloseReason::Terminated);
        Ok(())
    }

    /// Runs the timers: authentication timeout, idle timeout (fatal error 8), ESP key lifetime.
    pub fn poll_timers(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.is_closed() {
            return Ok(());
        }
        self.clock = self.clock.max(now);
        if !self.state.authenticated() {
            if let Some(t) = self.cfg.auth_timeout
                && after(self.created, t).is_some_and(|d| now >= d)
            {
                self.close(CloseReason::AuthTimeout);
            } else if self.step_deadline().is_some_and(|d| now >= d) {
                let waiting_for = self.state.name();
                self.close(CloseReason::StepTimeout { waiting_for });
            }
            return Ok(());
        }
        if self.session_end.is_some_and(|end| now >= end) {
            self.out.send(&Message::FatalError {
                kind: FatalErrorKind::SessionTerminated,
                message: "The session's lifetime ended: sign in again".into(),
            })?;
            self.close(CloseReason::LifetimeExpired);
            return Ok(());
        }
        if !matches!(self.state, State::Established) {
            return Ok(());
        }
        if let Some(idle) = self.cfg.idle_timeout
            && after(self.last_activity, idle).is_some_and(|d| now >= d)
        {
            self.out.send(&Message::FatalError {
                kind: FatalErrorKind::IdleTimeout,
                message: "session timed out".into(),
            })?;
            self.close(CloseReason::IdleTimeout);
            return Ok(());
        }
        if let Some(due) = self.dpd_due()
            && now >= due
            && self.probe_silent_peer(now)
        {
            self.close(CloseReason::PeerGone);
            return Ok(());
        }
        if let Some(esp) = &mut self.esp
            && let Some(gone) = esp.path.pair.retire_previous(now)
            && let Some(spis) = &self.spis
        {
            spis.release(gone);
        }
        if let Some(esp) = &self.esp
            && (esp.rekey_at().is_some_and(|d| now >= d) || esp.bytes_spent())
        {
            self.rekey_esp(now)?;
        }
        Ok(())
    }

    fn peer_heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
        self.dpd_sent = 0;
    }

    /// When dead-peer detection next acts: a probe, or the end of the last one's wait. None
    /// while it does not apply: it is off, or the client was never heard on ESP (probes go
    /// to its ESP endpoint; TLS has no probe in this protocol).
    fn dpd_due(&self) -> Option<Instant> {
        let interval = self.cfg.dpd_interval?;
        let esp = self.esp.as_ref()?;
        esp.last_rx?;
        esp.path.pair.outbound.as_ref()?;
        after(self.last_heard, interval.checked_mul(self.dpd_sent + 1)?)
    }

    /// The client has been silent past a dead-peer step: queues the probe of this step
    /// (several steps late, one probe for all of them), or returns true when the last
    /// probe's wait is over too.
    fn probe_silent_peer(&mut self, now: Instant) -> bool {
        let (Some(interval), Some(esp)) = (self.cfg.dpd_interval, &mut self.esp) else {
            return false;
        };
        let silent = now.saturating_duration_since(self.last_heard);
        let steps = silent.as_nanos() / interval.as_nanos().max(1);
        if steps > u128::from(DPD_PROBES) {
            return true;
        }
        // `steps` is at most DPD_PROBES here.
        self.dpd_sent = steps as u32;
        esp.path.queue_probe(esp.probe_next_header);
        false
    }

    /// When the client's time for the current login step is up.
    fn step_deadline(&self) -> Option<Instant> {
        self.state
            .step_timeout(&self.cfg)
            .and_then(|t| after(self.step_started, t))
    }

    /// When [`Self::poll_timers`] next has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        if !self.state.authenticated() {
            let login = self.cfg.auth_timeout.and_then(|t| after(self.created, t));
            return [login, self.step_deadline()].into_iter().flatten().min();
        }
        if !matches!(self.state, State::Established) {
            return self.session_end;
        }
        let idle = self
            .cfg
            .idle_timeout
            .and_then(|t| after(self.last_activity, t));
        let esp = self.esp.as_ref();
        // Spent keys are due at once: any instant not in the future does.
        let rekey = esp.and_then(|e| {
            if e.bytes_spent() {
                Some(e.keys_at)
            } else {
                e.rekey_at()
            }
        });
        let retire = esp.and_then(|e| e.path.pair.previous_until());
        [idle, rekey, retire, self.session_end, self.dpd_due()]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Side for Server {
    fn parts(&mut self) -> Parts<'_> {
        Parts {
            esp: self.esp.as_mut().map(|e| &mut e.path),
            tls: &mut self.out,
            rng: &mut *self.rng,
        }
    }

    fn may_send(&self) -> Result<(), SessionError> {
        match self.state {
            State::Established => Ok(()),
            _ => Err(self.wrong("send_packet")),
        }
    }

    fn may_receive(&self) -> Result<(), SessionError> {
        match self.state {
            State::Established => Ok(()),
            _ => Err(self.wrong("handle_esp_train")),
        }
    }

    fn wrong(&self, call: &'static str) -> SessionError {
        Server::wrong(self, call)
    }

    fn esp_carries(&self, _packet: &[u8], now: Instant) -> bool {
        self.esp_usable(now)
    }

    fn sending(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// No rekey came in time: TLS carries the traffic until one does.
    fn exhausted(&mut self) {}

    /// The client is heard on ESP; its probes are answered, its data is activity.
    fn heard(&mut self, heard: Heard, now: Instant) {
        if let Some(esp) = &mut self.esp {
            esp.last_rx = Some(now);
            if let Some(next_header) = heard.probe {
                esp.probe_next_header = next_header;
                esp.path.queue_probe(next_header);
            }
        }
        self.peer_heard(now);
        if heard.data {
            self.last_activity = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_upgrade_gets_http_400_and_closes() {
        let now = Instant::now();
        let mut s = Server::new(ServerConfig::default(), now);
        let r = s.handle_tls_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
        assert_eq!(
            r,
            Err(SessionError::Ift(crate::ift::IftError::HttpMissingHeader {
                name: "Upgrade"
            }))
        );
        assert!(s.pending_tls().starts_with(b"HTTP/1.1 400 "));
        assert!(s.is_closed());
        assert_eq!(
            s.poll_event(),
            Some(ServerEvent::Closed(CloseReason::ProtocolError)),
            "the caller is told, so it closes the connection"
        );
    }

    #[test]
    fn auth_timeout_closes_before_login() {
        let now = Instant::now();
        let cfg = ServerConfig {
            protocol_step_timeout: None,
            ..ServerConfig::default()
        };
        let mut s = Server::new(cfg, now);
        assert_eq!(s.next_timer(), Some(now + Duration::from_secs(120)));
        s.poll_timers(now + Duration::from_secs(119))
            .expect("timers");
        assert!(!s.is_closed());
        s.poll_timers(now + Duration::from_secs(120))
            .expect("timers");
        assert_eq!(
            s.poll_event(),
            Some(ServerEvent::Closed(CloseReason::AuthTimeout))
        );
        assert!(s.is_closed());
    }

    /// A client that stops answering mid-login is closed after its step's time, however
    /// much of the overall login time is left; each answer starts the next step's time.
    #[test]
    fn each_login_step_has_its_own_deadline() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut s = Server::new(ServerConfig::default(), t0);
        assert_eq!(s.next_timer(), Some(t0 + secs(10)), "the upgrade request");
        let t1 = t0 + secs(9);
        s.handle_tls_bytes(b"GET /dana/js?prot=1&svc=4 HTTP/1.1\r\nHost: gw\r\n", t1)
            .expect("part of the request");
        assert_eq!(
            s.next_timer(),
            Some(t0 + secs(10)),
            "a partial request is no answer"
        );
        s.handle_tls_bytes(
            b"Upgrade: IF-T/TLS 1.0\r\nContent-Type: EAP\r\n\r\n",
            t1 + secs(0),
        )
        .expect("the rest");
        assert_eq!(s.next_timer(), Some(t1 + secs(10)), "the version request");
        s.poll_timers(t1 + secs(10)).expect("timers");
        assert_eq!(
            s.poll_event(),
            Some(ServerEvent::Upgraded(
                parse_upgrade_request(
                    b"GET /dana/js?prot=1&svc=4 HTTP/1.1\r\nHost: gw\r\nUpgrade: IF-T/TLS 1.0\r\nContent-Type: EAP\r\n\r\n"
                )
                .expect("parse")
                .expect("whole")
                .0
            ))
        );
        assert_eq!(
            s.poll_event(),
            Some(ServerEvent::Closed(CloseReason::StepTimeout {
                waiting_for: "waiting for the version request"
            }))
        );
    }

    /// Before the login, frames are small; what the gateway buffers for a client that has
    /// proved nothing is bounded by that.
    #[test]
    fn a_large_frame_before_the_login_is_refused() {
        let now = Instant::now();
        let mut s = Server::new(ServerConfig::default(), now);
        s.handle_tls_bytes(
            b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: IF-T/TLS 1.0\r\nContent-Type: EAP\r\n\r\n",
            now,
        )
        .expect("upgrade");
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&0x5597u32.to_be_bytes());
        header[4..8].copy_from_slice(&1u32.to_be_bytes());
        header[8..12].copy_from_slice(&(DEFAULT_LOGIN_MAX_FRAME_LEN + 1).to_be_bytes());
        assert!(matches!(
            s.handle_tls_bytes(&header, now),
            Err(SessionError::Ift(_))
        ));
        assert!(s.is_closed());
    }

    #[test]
    fn decisions_outside_their_state_are_refused() {
        let mut s = Server::new(ServerConfig::default(), Instant::now());
        assert!(matches!(
            s.accept("c"),
            Err(SessionError::WrongState { .. })
        ));
        assert!(matches!(
            s.reject(AuthRejection::Retry),
            Err(SessionError::WrongState { .. })
        ));
        assert!(matches!(
            s.send_config(&Config::default(), Instant::now()),
            Err(SessionError::WrongState { .. })
        ));
        assert!(matches!(
            s.rekey_esp(Instant::now()),
            Err(SessionError::WrongState { .. })
        ));
    }
}
