//! The client side of a Pulse session as a sans-IO state machine.
//!
//! Owns the order of the client's messages (upgrade, version, client info, EAP identity, the
//! Juniper/1 dialogue with realm and password, cookie acknowledgement, configuration, ESP key
//! reply), the client's ESP link state (probes, dead peer detection, fallback to TLS), and the
//! events that ask the caller for input. It never touches a socket or a clock: bytes and
//! `Instant`s come in as arguments, bytes and events go out through buffers.
//!
//! Message order, after openconnect's `pulse_authenticate` and `pulse_connect`:
//!
//! ```text
//! client                                         gateway
//! GET / Upgrade: IF-T/TLS 1.0   ------------->
//!                               <-------------   101 Switching Protocols
//! version request (1,2,2)       ------------->
//!                               <-------------   version response
//! client info 0x88              ------------->
//!                               <-------------   auth challenge (empty)
//! EAP identity "anonymous"      ------------->
//!                               <-------------   J1 request (server info)
//! J1: user agent [+ DSID]       ------------->
//!                               <-------------   J1: realm list            (if several)
//! J1: realm                     ------------->
//!                               <-------------   J1: notice / password request
//! J1: acceptance / username +   ------------->       (docs/login.md: current or legacy
//!     password                                        form, then password change, token
//!                               <-------------        code, session limit, notice)
//! J1: the answers, one a round  <------------>
//!                               <-------------   J1: DSID cookie
//! J1: (empty acknowledgement)   ------------->
//!                               <-------------   auth success
//!                               <-------------   config, ESP keys, end of config
//! ESP keys (ours + echo), ncmo=1 ------------>
//! data frames / ESP             <------------>   data frames / ESP
//! ```

use crate::config::{Config, ConfigPacket, EspKeyExchange};
use crate::eap::{
    ActiveSession, Answer, AuthRequest, AuthResponse, CURRENT_PASSWORD_FIELD, EAP_TYPE_TTLS,
    EapBody, EapCode, EapPacket, InnerRequest, InnerResponse, J2_MAX_VALUE, J2_PASSWORD_CHANGE,
    J2_PASSWORD_REQUEST, J2_PASSWORD_RETRY, JUNIPER_SUBTYPE_AVPS, PasswordMessage,
    encode_juniper_avps, truncate_at_char,
};
use crate::esp::{EspSuite, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use crate::ift::{
    ClientInfo, DEFAULT_MAX_FRAME_LEN, FatalErrorKind, Frame, FrameDecoder, IFT_VERSION_MAX,
    IFT_VERSION_MIN, Message, build_upgrade_request, parse_upgrade_response,
};
use crate::path::{self, EspPath, Heard, Parts, Seal, Side};
use crate::rng::{RandomSource, SessionRandom};
use crate::session::{
    AuthFailure, EspInput, PacketSink, SessionError, TlsOut, Transmit, after, generate_inbound,
    outbound_from,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Probes sent per ESP attempt, one per [`PROBE_INTERVAL`] (esp.c: "Send 5 probes a second
/// apart, then give up until the next attempt").
pub(crate) const PROBES_PER_ATTEMPT: u32 = 5;
/// Gap between probes of one attempt.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Time between ESP attempts, openconnect's default `dtls_attempt_period`.
pub const ESP_ATTEMPT_PERIOD: Duration = Duration::from_secs(60);

/// What the client is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Gateway host name for the `Host` header.
    pub host: String,
    /// URL path of the sign-in page, e.g. `/` or `/saml`.
    pub path: String,
    /// `User-Agent` header and AVP 0xd70.
    pub user_agent: String,
    /// Operating system name, AVP 0xd5e (newer pulse.c sends it).
    pub os_name: Option<String>,
    /// `clientHostName` in the client info frame.
    pub hostname: String,
    /// `clientIp` in the client info frame.
    pub client_ip: Option<String>,
    /// DSID cookie of an earlier session to resume.
    pub cookie: Option<String>,
    /// Largest IF-T frame accepted.
    pub max_frame_len: u32,
    /// Use ESP when the gateway offers it.
    pub enable_esp: bool,
    /// The ESP UDP socket is IPv6: probes carry next header 41 and, unless the gateway allows
    /// 6in4 (TLV 0x4024), only IPv6 goes over ESP (and vice versa for IPv4).
    pub udp_ipv6: bool,
    /// Dead-peer detection on ESP. None: openconnect's behaviour (probe every fallback period,
    /// five probes a second per attempt, an attempt a minute).
    pub esp_dpd: Option<EspDpd>,
    /// Offer AES-256-GCM ESP (tunnel's own suite) in the upgrade request
    /// (`X-Tunnel-ESP: aes256-gcm`); a gateway that does not know the header ignores it.
    /// Without the offer, a config naming AES-GCM disables ESP.
    pub offer_aes_gcm: bool,
    /// Say in the upgrade request that several IF-T frames may share a TLS record
    /// (`X-Tunnel-Records: stream`): tunnel's gateway then batches what it sends.
    pub stream_records: bool,
}

/// Dead-peer detection on ESP, as Ivanti Tunnel's `AtpProbe*` settings describe it: after
/// `idle` without anything from the gateway over ESP (or the ESP-to-TLS fallback time the
/// gateway pushed, when that is shorter), up to `count` probes `interval` apart;
/// no answer to any of them takes ESP down (traffic falls back to TLS), and a new attempt to
/// bring ESP back starts every `retry` until it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspDpd {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
    pub retry: Duration,
}

impl ClientConfig {
    /// Defaults for connecting to `host`.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            path: "/".into(),
            user_agent: "Pulse-Secure/22.2.1.1295 (tunnel)".into(),
            os_name: Some("Linux".into()),
            hostname: "localhost".into(),
            client_ip: None,
            cookie: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            enable_esp: true,
            udp_ipv6: false,
            esp_dpd: None,
            offer_aes_gcm: false,
            stream_records: false,
        }
    }
}

/// What the client tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The gateway wants a realm: answer with [`Client::choose_realm`]. An empty list means
    /// free-text entry.
    RealmRequired {
        /// Realms to choose from.
        realms: Vec<String>,
    },
    /// The gateway wants a username and password: answer with [`Client::provide_credentials`].
    CredentialsRequired {
        /// The previous password was wrong.
        retry: bool,
        /// Prompt text for the username, if the gateway sent one.
        username_prompt: Option<String>,
        /// Prompt text for the password, if the gateway sent one.
        password_prompt: Option<String>,
        /// The most bytes of the password the gateway's request form carries: 18 for the
        /// current form (a longer password is cut, as the official client does), 253 for
        /// the legacy one (a longer password is refused).
        max_password_len: usize,
    },
    /// The gateway wants a token code (second factor): answer with
    /// [`Client::provide_token`].
    TokenRequired {
        /// The gateway's prompt.
        prompt: String,
        /// The previous request was a token code too: the gateway wants the next one.
        next: bool,
    },
    /// The password has expired: answer with [`Client::change_password`].
    PasswordChangeRequired,
    /// A sign-in notice. With `needs_acceptance`, the login waits for
    /// [`Client::accept_notice`] (not accepting means ending the login); without it, the text
    /// came along with another request and is only to be shown.
    Notice {
        /// The notice.
        text: String,
        /// The login goes on only once the user accepts it.
        needs_acceptance: bool,
    },
    /// The user is at the gateway's session limit: answer with [`Client::end_session`] naming
    /// one of these sessions, or end the login.
    SessionLimit {
        /// The user's sessions.
        sessions: Vec<ActiveSession>,
    },
    /// The cookie offered for resumption was not accepted; a normal login follows.
    ResumeRejected,
    /// The DSID session cookie (keep it to resume).
    CookieReceived {
        /// The cookie.
        cookie: String,
        /// Seconds until the authentication expires (AVP 0xd5c).
        auth_expiration: Option<Duration>,
        /// Gateway idle timeout (AVP 0xd75).
        idle_timeout: Option<Duration>,
    },
    /// The login failed; the session is closed.
    AuthFailed(AuthFailure),
    /// EAP success: configuration follows.
    Authenticated,
    /// The tunnel configuration; the session is established.
    Configured(Box<Config>),
    /// An IP packet that came over TLS.
    Packet(Vec<u8>),
    /// ESP answered our probes; outgoing packets now go over ESP.
    EspUp,
    /// ESP stopped answering; outgoing packets go over TLS again.
    EspDown,
    /// The gateway sent new ESP keys and we answered.
    EspRekeyed,
    /// The gateway ended the session (fatal error 0x93); the session is closed.
    Terminated {
        /// The reason.
        kind: FatalErrorKind,
        /// The gateway's message.
        message: String,
    },
    /// The gateway logged us out; the session is closed.
    LoggedOut,
}

/// Where the client is, for callers and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientState {
    /// Not started.
    Idle,
    /// Upgrade, version and EAP exchanges in progress.
    Authenticating,
    /// Waiting for [`Client::choose_realm`] or [`Client::provide_credentials`].
    WaitingForInput,
    /// Authenticated, receiving configuration.
    Configuring,
    /// Tunnel up.
    Established,
    /// Over.
    Closed,
}

#[derive(Debug)]
enum State {
    Idle,
    AwaitUpgrade {
        head: Vec<u8>,
    },
    AwaitVersion,
    AwaitAuthStart,
    AwaitServerInfo,
    Authenticating,
    /// Waiting for the caller's answer to a prompt of the Juniper/1 request `ident`.
    AwaitInput {
        ident: u8,
        want: Want,
    },
    AwaitSuccess,
    Configuring,
    Established,
    Closed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            Self::Idle => "not started",
            Self::AwaitUpgrade { .. } => "waiting for the upgrade answer",
            Self::AwaitVersion => "waiting for the version response",
            Self::AwaitAuthStart => "waiting for the first auth challenge",
            Self::AwaitServerInfo => "waiting for the server information request",
            Self::Authenticating => "authenticating",
            Self::AwaitInput { want, .. } => want.name(),
            Self::AwaitSuccess => "waiting for auth success",
            Self::Configuring => "receiving configuration",
            Self::Established => "established",
            Self::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum EspLink {
    Off,
    Probing {
        started: Instant,
        sent: u32,
        next: Instant,
    },
    Waiting {
        retry_at: Instant,
    },
    Up {
        last_rx: Instant,
        last_probe: Option<Instant>,
    },
}

/// What a prompt waits for; the nested identifiers are echoed by the answer.
#[derive(Debug)]
enum Want {
    Realm,
    Credentials { inner: u8, current_form: bool },
    Token { inner: u8 },
    NewPassword { inner: u8 },
    Notice,
    SessionChoice { ids: Vec<String> },
}

impl Want {
    fn name(&self) -> &'static str {
        match self {
            Self::Realm => "waiting for the caller's realm choice",
            Self::Credentials { .. } => "waiting for the caller's credentials",
            Self::Token { .. } => "waiting for the caller's token code",
            Self::NewPassword { .. } => "waiting for the caller's new password",
            Self::Notice => "waiting for the caller to accept the notice",
            Self::SessionChoice { .. } => "waiting for the caller's choice of a session to end",
        }
    }
}

/// The client state machine. See the module docs for the message order.
pub struct Client {
    cfg: ClientConfig,
    rng: Box<dyn RandomSource + Send>,
    state: State,
    decoder: FrameDecoder,
    out: TlsOut,
    events: VecDeque<ClientEvent>,
    resume_reported: bool,
    /// The last request was a token code: the next one asks for the next code.
    token_asked: bool,
    /// Credentials were sent: a current-form request after that means they were wrong (the
    /// form has no retry code).
    credentials_given: bool,
    pending_config: Option<Config>,
    config: Option<Config>,
    esp: Option<EspPath>,
    link: EspLink,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state.name())
            .field("esp", &self.esp)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client drawing ESP keys and IVs from its own OS-seeded generator.
    pub fn new(cfg: ClientConfig) -> Self {
        Self::with_rng(cfg, SessionRandom::boxed())
    }

    /// A client with an injected random source (tests use a deterministic one).
    pub fn with_rng(cfg: ClientConfig, rng: Box<dyn RandomSource + Send>) -> Self {
        let decoder = FrameDecoder::new(cfg.max_frame_len);
        Self {
            cfg,
            rng,
            state: State::Idle,
            decoder,
            out: TlsOut::default(),
            events: VecDeque::new(),
            resume_reported: false,
            token_asked: false,
            credentials_given: false,
            pending_config: None,
            config: None,
            esp: None,
            link: EspLink::Off,
        }
    }

    /// Queues the HTTP upgrade request; call once the TLS handshake is done.
    pub fn start(&mut self) -> Result<(), SessionError> {
        if !matches!(self.state, State::Idle) {
            return Err(self.wrong("start"));
        }
        let req = build_upgrade_request(
            &self.cfg.host,
            &self.cfg.path,
            &self.cfg.user_agent,
            self.cfg.offer_aes_gcm,
            self.cfg.stream_records,
        );
        self.out.raw(req.as_bytes());
        self.state = State::AwaitUpgrade { head: Vec::new() };
        Ok(())
    }

    /// Where the session is.
    pub fn state(&self) -> ClientState {
        match self.state {
            State::Idle => ClientState::Idle,
            State::AwaitInput { .. } => ClientState::WaitingForInput,
            State::Configuring => ClientState::Configuring,
            State::Established => ClientState::Established,
            State::Closed => ClientState::Closed,
            _ => ClientState::Authenticating,
        }
    }

    /// True once closed (logout, failure, fatal error, protocol error).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The configuration, once established.
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// True while outgoing packets go over ESP.
    pub fn esp_up(&self) -> bool {
        matches!(self.link, EspLink::Up { .. })
    }

    /// Bytes to write to the TLS connection.
    pub fn pending_tls(&self) -> &[u8] {
        self.out.pending()
    }

    /// Marks `n` bytes of [`Self::pending_tls`] as written.
    pub fn consume_tls(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// Bytes waiting to be written to TLS (data frames are refused past
    /// [`MAX_TLS_BACKLOG`](crate::MAX_TLS_BACKLOG)).
    pub fn tls_backlog(&self) -> usize {
        self.out.pending().len()
    }

    /// Moves every pending TLS byte into `into` (emptied first) without copying: the two
    /// buffers trade places, so `into`'s allocation is reused for what comes next.
    pub fn take_tls(&mut self, into: &mut Vec<u8>) {
        self.out.take(into);
    }

    /// Next event for the caller.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether [`Self::poll_event`] has something: packet threads wake the session's task
    /// only then.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn wrong(&self, call: &'static str) -> SessionError {
        SessionError::WrongState {
            call,
            state: self.state.name(),
        }
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.link = EspLink::Off;
    }

    /// Feeds bytes read from the TLS connection. Any error closes the session. Data
    /// packets come out as [`ClientEvent::Packet`].
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
        let r = self.handle_tls_inner(data, now, &mut packets);
        if r.is_err() {
            self.close();
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
            let Some((_, used)) = parse_upgrade_response(head)? else {
                return Ok(());
            };
            let rest = head.split_off(used);
            self.state = State::AwaitVersion;
            self.out.send(&Message::VersionRequest {
                min: IFT_VERSION_MIN,
                max: IFT_VERSION_MAX,
                preferred: IFT_VERSION_MAX,
            })?;
            self.decoder.push(&rest);
        } else if matches!(self.state, State::Idle) {
            return Err(self.wrong("handle_tls_bytes"));
        } else {
            self.decoder.push(data);
        }
        // Take the decoder out so frames can borrow it while `self` changes state.
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

    fn handle_frame(
        &mut self,
        frame: Frame<'_>,
        now: Instant,
        packets: &mut Option<PacketSink<'_>>,
    ) -> Result<(), SessionError> {
        let msg = frame.message()?;
        // Messages that mean the same in every state.
        match &msg {
            Message::FatalError { kind, message } => {
                self.events.push_back(ClientEvent::Terminated {
                    kind: *kind,
                    message: message.clone(),
                });
                self.close();
                return Ok(());
            }
            Message::Logout => {
                self.events.push_back(ClientEvent::LoggedOut);
                self.close();
                return Ok(());
            }
            _ => {}
        }
        let unexpected = |state: &State| SessionError::UnexpectedMessage {
            state: state.name(),
            got: msg.kind(),
        };
        match (&self.state, &msg) {
            (State::AwaitVersion, Message::VersionResponse { version }) => {
                if !(IFT_VERSION_MIN..=IFT_VERSION_MAX).contains(version) {
                    return Err(SessionError::Version {
                        got: *version,
                        min: IFT_VERSION_MIN,
                        max: IFT_VERSION_MAX,
                    });
                }
                self.out.send(&Message::ClientInfo(ClientInfo {
                    hostname: self.cfg.hostname.clone(),
                    client_ip: self.cfg.client_ip.clone(),
                }))?;
                self.state = State::AwaitAuthStart;
            }
            (State::AwaitAuthStart, Message::AuthChallenge { eap }) => {
                if !eap.is_empty() {
                    return Err(SessionError::UnexpectedAuth {
                        state: self.state.name(),
                        what: "first challenge carries EAP".into(),
                    });
                }
                let mut buf = Vec::new();
                EapPacket {
                    code: EapCode::Response,
                    identifier: 1,
                    body: EapBody::Identity(b"anonymous"),
                }
                .encode(&mut buf)?;
                self.out.send(&Message::AuthResponse { eap: &buf })?;
                self.state = State::AwaitServerInfo;
            }
            (State::AwaitServerInfo, Message::AuthChallenge { eap }) => {
                let pkt = EapPacket::parse(eap)?;
                if let EapBody::Other {
                    eap_type: EAP_TYPE_TTLS,
                    ..
                } = pkt.body
                {
                    return Err(SessionError::UnsupportedRequest {
                        what: "EAP-TTLS (EAP type 21: client certificate login inside EAP)".into(),
                    });
                }
                let avps = pkt.juniper_data(EapCode::Request, JUNIPER_SUBTYPE_AVPS)?;
                // Server information (0xd49, 0xd4a, licence): nothing we act on, but it must
                // parse.
                AuthRequest::parse(avps)?;
                let resp = AuthResponse {
                    os_name: self.cfg.os_name.clone(),
                    user_agent: Some(self.cfg.user_agent.clone()),
                    cookie: self.cfg.cookie.clone(),
                    ..AuthResponse::default()
                };
                self.send_j1(pkt.identifier, &resp)?;
                self.state = State::Authenticating;
            }
            (State::Authenticating, Message::AuthChallenge { eap }) => self.handle_auth(eap)?,
            (State::AwaitSuccess, Message::AuthChallenge { eap }) => self.handle_auth(eap)?,
            (State::AwaitSuccess, Message::AuthSuccess { eap }) => {
                let pkt = EapPacket::parse(eap)?;
                if pkt.code != EapCode::Success {
                    return Err(SessionError::UnexpectedAuth {
                        state: self.state.name(),
                        what: format!("auth success frame carries EAP {:?}", pkt.code),
                    });
                }
                self.events.push_back(ClientEvent::Authenticated);
                self.state = State::Configuring;
            }
            (State::Configuring, Message::Config(payload)) => match ConfigPacket::parse(payload)? {
                ConfigPacket::Main(cfg) => self.pending_config = Some(*cfg),
                ConfigPacket::Esp(x) => self.install_esp(x, now, true)?,
            },
            (State::Configuring, Message::EndOfConfig) => self.finish_config()?,
            (State::Established, Message::Data(packet)) => match packets {
                Some(f) => f(packet),
                None => self.events.push_back(ClientEvent::Packet(packet.to_vec())),
            },
            (State::Established, Message::Config(payload)) => match ConfigPacket::parse(payload)? {
                ConfigPacket::Esp(x) => self.install_esp(x, now, false)?,
                ConfigPacket::Main(cfg) => {
                    self.config = Some((*cfg).clone());
                    self.events.push_back(ClientEvent::Configured(cfg));
                }
            },
            // openconnect logs and skips frames it does not know once past authentication
            // (0x96 licence information, for one).
            (State::Configuring | State::Established, _) => {}
            (state, _) => return Err(unexpected(state)),
        }
        Ok(())
    }

    fn send_j1(&mut self, ident: u8, resp: &AuthResponse) -> Result<(), SessionError> {
        let mut avps = Vec::new();
        resp.encode(&mut avps)?;
        let mut eap = Vec::new();
        encode_juniper_avps(EapCode::Response, ident, &avps, &mut eap)?;
        self.out.send(&Message::AuthResponse { eap: &eap })
    }

    fn fail(&mut self, why: AuthFailure) {
        self.events.push_back(ClientEvent::AuthFailed(why));
        self.close();
    }

    fn handle_auth(&mut self, eap: &[u8]) -> Result<(), SessionError> {
        let pkt = EapPacket::parse(eap)?;
        if pkt.code == EapCode::Failure {
            self.fail(AuthFailure::EapFailure);
            return Ok(());
        }
        let avps = pkt.juniper_data(EapCode::Request, JUNIPER_SUBTYPE_AVPS)?;
        let req = AuthRequest::parse(avps)?;
        let ident = pkt.identifier;
        if let Some(code) = req.failure_code {
            self.fail(AuthFailure::Code(code));
            return Ok(());
        }
        if let Some(InnerRequest::Password {
            message: PasswordMessage::Failure { message },
            ..
        }) = &req.inner
        {
            self.fail(AuthFailure::Message(message.clone()));
            return Ok(());
        }
        // A notice alone waits for acceptance; one that rides on another request is shown.
        let notice_alone = req.inner.is_none()
            && req.cookie.is_none()
            && req.realms.is_empty()
            && !req.realm_entry
            && req.regions.is_empty()
            && req.sessions.is_empty();
        if let Some(text) = req.signin_prompt.clone() {
            self.events.push_back(ClientEvent::Notice {
                text,
                needs_acceptance: notice_alone,
            });
        }
        if let Some(cookie) = req.cookie {
            self.events.push_back(ClientEvent::CookieReceived {
                cookie,
                auth_expiration: req.auth_expiration.map(|s| Duration::from_secs(s.into())),
                idle_timeout: req.idle_timeout.map(|s| Duration::from_secs(s.into())),
            });
            // pulse.c: an empty response lets the EAP conversation end in success.
            self.send_j1(ident, &AuthResponse::default())?;
            self.state = State::AwaitSuccess;
            return Ok(());
        }
        if !matches!(self.state, State::Authenticating) {
            return Err(SessionError::UnexpectedAuth {
                state: self.state.name(),
                what: "another prompt after the cookie".into(),
            });
        }
        if self.cfg.cookie.is_some() && !self.resume_reported {
            self.resume_reported = true;
            self.events.push_back(ClientEvent::ResumeRejected);
        }
        let token_asked = std::mem::take(&mut self.token_asked);
        let want = if !req.realms.is_empty() || req.realm_entry {
            self.events
                .push_back(ClientEvent::RealmRequired { realms: req.realms });
            Want::Realm
        } else if !req.sessions.is_empty() {
            let ids = req.sessions.iter().map(|s| s.id.clone()).collect();
            self.events.push_back(ClientEvent::SessionLimit {
                sessions: req.sessions,
            });
            Want::SessionChoice { ids }
        } else if let Some(inner) = req.inner {
            match inner {
                InnerRequest::Password {
                    identifier,
                    message: PasswordMessage::Request { code },
                } if code == J2_PASSWORD_REQUEST || code == J2_PASSWORD_RETRY => {
                    self.events.push_back(ClientEvent::CredentialsRequired {
                        retry: code == J2_PASSWORD_RETRY,
                        username_prompt: req.username_prompt,
                        password_prompt: req.password_prompt,
                        max_password_len: J2_MAX_VALUE,
                    });
                    Want::Credentials {
                        inner: identifier,
                        current_form: false,
                    }
                }
                InnerRequest::CurrentPassword { identifier, .. } => {
                    self.events.push_back(ClientEvent::CredentialsRequired {
                        retry: self.credentials_given,
                        username_prompt: req.username_prompt,
                        password_prompt: req.password_prompt,
                        max_password_len: CURRENT_PASSWORD_FIELD,
                    });
                    Want::Credentials {
                        inner: identifier,
                        current_form: true,
                    }
                }
                InnerRequest::Password {
                    identifier,
                    message:
                        PasswordMessage::Request {
                            code: J2_PASSWORD_CHANGE,
                        },
                } => {
                    self.events.push_back(ClientEvent::PasswordChangeRequired);
                    Want::NewPassword { inner: identifier }
                }
                InnerRequest::TokenCode { identifier, prompt } => {
                    self.token_asked = true;
                    self.events.push_back(ClientEvent::TokenRequired {
                        prompt,
                        next: token_asked,
                    });
                    Want::Token { inner: identifier }
                }
                other => {
                    return Err(SessionError::UnsupportedRequest {
                        what: other.describe(),
                    });
                }
            }
        } else if !req.regions.is_empty() {
            return Err(SessionError::UnsupportedRequest {
                what: "a region choice (AVP 0xd51)".into(),
            });
        } else if req.signin_prompt.is_some() {
            Want::Notice
        } else {
            let avps: Vec<String> = req
                .other
                .iter()
                .map(|a| match a.vendor {
                    Some(v) => format!("{:#x} (vendor {v:#x})", a.code),
                    None => format!("{}", a.code),
                })
                .collect();
            return Err(SessionError::UnsupportedRequest {
                what: format!(
                    "a Juniper/1 request with no prompt this client knows (AVPs: {})",
                    if avps.is_empty() {
                        "none".into()
                    } else {
                        avps.join(", ")
                    }
                ),
            });
        };
        self.state = State::AwaitInput { ident, want };
        Ok(())
    }

    /// Sends the answer to the prompt of the pending request; `build` checks that the prompt
    /// is the one `call` answers and makes the response.
    fn answer(
        &mut self,
        call: &'static str,
        build: impl FnOnce(&Want) -> Option<Result<AuthResponse, SessionError>>,
    ) -> Result<(), SessionError> {
        let State::AwaitInput { ident, want } = &self.state else {
            return Err(self.wrong(call));
        };
        let ident = *ident;
        let resp = match build(want) {
            Some(resp) => resp?,
            None => return Err(self.wrong(call)),
        };
        self.send_j1(ident, &resp)?;
        self.state = State::Authenticating;
        Ok(())
    }

    /// Answers [`ClientEvent::RealmRequired`].
    pub fn choose_realm(&mut self, realm: &str) -> Result<(), SessionError> {
        self.answer("choose_realm", |want| {
            matches!(want, Want::Realm).then(|| {
                Ok(AuthResponse {
                    realm: Some(realm.to_owned()),
                    ..AuthResponse::default()
                })
            })
        })
    }

    /// Answers [`ClientEvent::CredentialsRequired`]. In the current form a password longer
    /// than 18 bytes is cut to 18 (on a character boundary), as the official client does; in
    /// the legacy form one over 253 bytes is refused and the client keeps waiting.
    pub fn provide_credentials(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<(), SessionError> {
        self.answer("provide_credentials", |want| {
            let Want::Credentials {
                inner,
                current_form,
            } = want
            else {
                return None;
            };
            let answer = if *current_form {
                Answer::CurrentPassword(
                    truncate_at_char(password, CURRENT_PASSWORD_FIELD)
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                Answer::J2(PasswordMessage::Response {
                    password: password.to_owned(),
                })
            };
            Some(Ok(AuthResponse {
                username: Some(username.to_owned()),
                inner: Some(InnerResponse {
                    identifier: *inner,
                    answer,
                }),
                ..AuthResponse::default()
            }))
        })?;
        self.credentials_given = true;
        Ok(())
    }

    /// Answers [`ClientEvent::TokenRequired`] with the code.
    pub fn provide_token(&mut self, code: &str) -> Result<(), SessionError> {
        self.answer("provide_token", |want| {
            let Want::Token { inner } = want else {
                return None;
            };
            Some(Ok(AuthResponse {
                inner: Some(InnerResponse {
                    identifier: *inner,
                    answer: Answer::TokenCode(code.to_owned()),
                }),
                ..AuthResponse::default()
            }))
        })
    }

    /// Answers [`ClientEvent::PasswordChangeRequired`] with the current and the new password
    /// (each at most 253 bytes).
    pub fn change_password(&mut self, old: &str, new: &str) -> Result<(), SessionError> {
        self.answer("change_password", |want| {
            let Want::NewPassword { inner } = want else {
                return None;
            };
            Some(Ok(AuthResponse {
                inner: Some(InnerResponse {
                    identifier: *inner,
                    answer: Answer::J2(PasswordMessage::ChangeResponse {
                        old: old.to_owned(),
                        new: new.to_owned(),
                    }),
                }),
                ..AuthResponse::default()
            }))
        })
    }

    /// Accepts the notice of [`ClientEvent::Notice`] that needs acceptance.
    pub fn accept_notice(&mut self) -> Result<(), SessionError> {
        self.answer("accept_notice", |want| {
            matches!(want, Want::Notice).then(|| {
                Ok(AuthResponse {
                    notice_accepted: Some(1),
                    ..AuthResponse::default()
                })
            })
        })
    }

    /// Answers [`ClientEvent::SessionLimit`]: the gateway ends session `id` (one it listed).
    pub fn end_session(&mut self, id: &str) -> Result<(), SessionError> {
        let state = self.state.name();
        self.answer("end_session", |want| {
            let Want::SessionChoice { ids } = want else {
                return None;
            };
            Some(if ids.iter().any(|i| i == id) {
                Ok(AuthResponse {
                    end_session: Some(id.to_owned()),
                    ..AuthResponse::default()
                })
            } else {
                Err(SessionError::UnexpectedAuth {
                    state,
                    what: format!("session '{id}' is not one the gateway listed"),
                })
            })
        })
    }

    fn install_esp(
        &mut self,
        x: EspKeyExchange,
        now: Instant,
        initial: bool,
    ) -> Result<(), SessionError> {
        let settings = self
            .pending_config
            .as_ref()
            .or(self.config.as_ref())
            .map(|c| c.esp.clone())
            .unwrap_or_default();
        let suite = match (settings.cipher, settings.hmac) {
            (Some(c), Some(m)) => EspSuite::from_codes(c, m)
                .ok()
                .filter(|s| !s.is_aead() || self.cfg.offer_aes_gcm),
            _ => None,
        };
        // Like openconnect, an ESP offer we cannot use disables ESP instead of the session.
        let Some(suite) = suite.filter(|_| self.cfg.enable_esp) else {
            return Ok(());
        };
        // A suite change (after a new main config) starts ESP afresh rather than rekeying.
        if self.esp.as_ref().is_some_and(|p| p.pair.suite != suite) {
            self.esp = None;
        }
        let outbound = outbound_from(suite, &x.keys)?;
        let (mut inbound, ours) = generate_inbound(suite, &mut *self.rng)?;
        inbound.set_replay_protection(settings.replay_protection.unwrap_or(true));
        let mut payload = Vec::new();
        EspKeyExchange {
            keys: ours,
            echo: Some(x.keys),
        }
        .encode(&mut payload)?;
        self.out.send(&Message::Config(&payload))?;
        match &mut self.esp {
            Some(esp) => {
                esp.pair.rotate_inbound(inbound, now);
                esp.pair.outbound = Some(outbound);
                self.events.push_back(ClientEvent::EspRekeyed);
            }
            None => {
                let mut esp = EspPath::new(suite, inbound);
                esp.pair.outbound = Some(outbound);
                self.esp = Some(esp);
                self.link = EspLink::Probing {
                    started: now,
                    sent: 0,
                    next: now,
                };
            }
        }
        if initial {
            // pulse.c: "Tell server to enable ESP handling".
            self.out.send(&Message::EspEnable("ncmo=1"))?;
        }
        Ok(())
    }

    fn finish_config(&mut self) -> Result<(), SessionError> {
        let cfg = self
            .pending_config
            .take()
            .ok_or(SessionError::InsufficientConfig {
                what: "no config packet before end of config",
            })?;
        if cfg.mtu.is_none() {
            return Err(SessionError::InsufficientConfig { what: "no MTU" });
        }
        if cfg.ipv4_address.is_none() && cfg.ipv6_address.is_none() {
            return Err(SessionError::InsufficientConfig {
                what: "no IPv4 or IPv6 address",
            });
        }
        self.events
            .push_back(ClientEvent::Configured(Box::new(cfg.clone())));
        self.config = Some(cfg);
        self.state = State::Established;
        Ok(())
    }

    fn dpd_interval(&self) -> Duration {
        // esp.c `esp_setup`: the DPD interval is the ESP-to-TLS fallback time when the gateway
        // sets one, the attempt period otherwise.
        self.gateway_fallback().unwrap_or(ESP_ATTEMPT_PERIOD)
    }

    /// The ESP-to-TLS fallback time the gateway pushed (TLV 0x4017), if it set one.
    fn gateway_fallback(&self) -> Option<Duration> {
        self.config
            .as_ref()
            .and_then(|c| c.esp.fallback_seconds)
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(s.into()))
    }

    /// While ESP is up: how long after the last datagram heard it is taken as dead, when the
    /// first probe goes, and the gap between probes.
    fn up_timers(&self) -> (Duration, Duration, Duration) {
        let dpd = self.dpd_interval();
        match self.cfg.esp_dpd {
            Some(d) => {
                // A gateway may take a client silent for a few of its own DPD periods as gone
                // (tunnel's does), and expects a live idle one to be heard once per fallback
                // time, as openconnect is. Its probes reset this silence, so a client that
                // waited longer would never probe: quiet no longer than the fallback time.
                let idle = self.gateway_fallback().map_or(d.idle, |f| d.idle.min(f));
                (idle + d.interval * d.count, idle, d.interval)
            }
            None => (2 * dpd, dpd, dpd),
        }
    }

    fn probe_next_header(&self) -> u8 {
        if self.cfg.udp_ipv6 {
            NEXT_HEADER_IPV6
        } else {
            NEXT_HEADER_IPV4
        }
    }

    /// Sends one IP packet: over ESP into `esp_out` when ESP is up (and allowed for this IP
    /// family), otherwise as a data frame on TLS.
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

    /// Handles a train of ESP datagrams from the gateway (`size` bytes each, the last
    /// possibly shorter: one GRO receive, or a single datagram), decrypting them in place:
    /// `f` gets what each one was, in order. Errors concern only their datagram.
    pub fn handle_esp_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        now: Instant,
        f: impl FnMut(Result<EspInput<'_>, SessionError>),
    ) {
        // Only the gateway may move where datagrams go, so which one was newest is moot here.
        let _newest = path::receive(self, train, size, now, f);
    }

    /// The next ESP datagram to send over UDP (a probe the timers asked for), written into
    /// `out`, its length returned; call until it returns None.
    pub fn poll_esp_transmit(&mut self, out: &mut [u8]) -> Result<Option<usize>, SessionError> {
        path::poll_transmit(self, out)
    }

    /// Runs the ESP timers (probes, dead peer detection); a probe they send waits in
    /// [`Self::poll_esp_transmit`].
    pub fn poll_timers(&mut self, now: Instant) -> Result<(), SessionError> {
        if !matches!(self.state, State::Established | State::Configuring) {
            return Ok(());
        }
        let (per_attempt, gap, retry) = match self.cfg.esp_dpd {
            Some(d) => (d.count.max(1), d.interval, d.retry),
            None => (PROBES_PER_ATTEMPT, PROBE_INTERVAL, ESP_ATTEMPT_PERIOD),
        };
        let send_probe = match self.link {
            EspLink::Off => false,
            EspLink::Probing {
                started,
                sent,
                next,
            } => {
                if now < next {
                    false
                } else if sent >= per_attempt {
                    self.link = EspLink::Waiting {
                        retry_at: started + retry,
                    };
                    false
                } else {
                    self.link = EspLink::Probing {
                        started,
                        sent: sent + 1,
                        next: now + gap,
                    };
                    true
                }
            }
            EspLink::Waiting { retry_at } => {
                if now >= retry_at {
                    self.link = EspLink::Probing {
                        started: now,
                        sent: 1,
                        next: now + gap,
                    };
                    true
                } else {
                    false
                }
            }
            EspLink::Up {
                last_rx,
                last_probe,
            } => {
                // Dead: silent through the idle time and every probe after it.
                let (dead_after, probe_after, probe_gap) = self.up_timers();
                if after(last_rx, dead_after).is_some_and(|d| now >= d) {
                    self.events.push_back(ClientEvent::EspDown);
                    self.link = EspLink::Probing {
                        started: now,
                        sent: 1,
                        next: now + gap,
                    };
                    true
                } else if after(last_rx, probe_after).is_some_and(|d| now >= d)
                    && last_probe
                        .filter(|p| *p >= last_rx)
                        .is_none_or(|p| after(p, probe_gap).is_some_and(|d| now >= d))
                {
                    self.link = EspLink::Up {
                        last_rx,
                        last_probe: Some(now),
                    };
                    true
                } else {
                    false
                }
            }
        };
        if send_probe {
            let nh = self.probe_next_header();
            if let Some(esp) = &mut self.esp {
                esp.queue_probe(nh);
            }
        }
        Ok(())
    }

    /// When [`Self::poll_timers`] next has something to do.
    pub fn next_timer(&self) -> Option<Instant> {
        if !matches!(self.state, State::Established | State::Configuring) {
            return None;
        }
        match self.link {
            EspLink::Off => None,
            EspLink::Probing { next, .. } => Some(next),
            EspLink::Waiting { retry_at } => Some(retry_at),
            EspLink::Up {
                last_rx,
                last_probe,
            } => {
                let (dead_after, probe_after, probe_gap) = self.up_timers();
                let probe = match last_probe.filter(|p| *p >= last_rx) {
                    Some(p) => after(p, probe_gap),
                    None => after(last_rx, probe_after),
                };
                let dead = after(last_rx, dead_after);
                match (probe, dead) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Queues a logout frame and closes the session; flush [`Self::pending_tls`] before
    /// closing the connection.
    pub fn logout(&mut self) -> Result<(), SessionError> {
        match self.state {
            State::Idle | State::AwaitUpgrade { .. } | State::Closed => Err(self.wrong("logout")),
            _ => {
                self.out.send(&Message::Logout)?;
                self.close();
                Ok(())
            }
        }
    }
}

impl Side for Client {
    fn parts(&mut self) -> Parts<'_> {
        Parts {
            esp: self.esp.as_mut(),
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
            State::Closed => Err(SessionError::Closed),
            _ => Ok(()),
        }
    }

    fn wrong(&self, call: &'static str) -> SessionError {
        Client::wrong(self, call)
    }

    fn esp_carries(&self, packet: &[u8], _now: Instant) -> bool {
        if !matches!(self.link, EspLink::Up { .. }) {
            return false;
        }
        let v6 = packet.first().map(|b| b >> 4) == Some(6);
        let allow_other = self
            .config
            .as_ref()
            .and_then(|c| c.esp.allow_6in4)
            .unwrap_or(false);
        // Pulse gateways only take ESP of the family the UDP socket uses unless they
        // announce 6in4 support (TLV 0x4024; esp.c `pulse_esp_unstupid`).
        allow_other || v6 == self.cfg.udp_ipv6
    }

    fn sending(&mut self, _now: Instant) {}

    fn exhausted(&mut self) {
        if matches!(self.link, EspLink::Up { .. }) {
            self.events.push_back(ClientEvent::EspDown);
        }
        self.link = EspLink::Off;
    }

    /// Anything authenticated from the gateway, a probe's answer or data, means ESP works.
    fn heard(&mut self, _heard: Heard, now: Instant) {
        if !matches!(self.link, EspLink::Up { .. }) {
            self.events.push_back(ClientEvent::EspUp);
        }
        self.link = EspLink::Up {
            last_rx: now,
            last_probe: None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_writes_the_upgrade_request_once() {
        let mut c = Client::new(ClientConfig::new("vpn.example.com"));
        c.start().expect("start");
        let req = String::from_utf8(c.pending_tls().to_vec()).expect("utf8");
        assert!(req.starts_with("GET / HTTP/1.1\r\n"));
        assert!(req.contains("Upgrade: IF-T/TLS 1.0\r\n"));
        assert!(req.contains("Content-Type: EAP\r\n"));
        assert!(matches!(
            c.start(),
            Err(SessionError::WrongState { call: "start", .. })
        ));
    }

    #[test]
    fn non_101_answer_closes_with_typed_error() {
        let mut c = Client::new(ClientConfig::new("gw"));
        c.start().expect("start");
        let r = c.handle_tls_bytes(
            b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n",
            Instant::now(),
        );
        assert!(matches!(
            r,
            Err(SessionError::Ift(crate::ift::IftError::HttpStatus {
                status: 302,
                ..
            }))
        ));
        assert!(c.is_closed());
        assert_eq!(
            c.handle_tls_bytes(b"x", Instant::now()),
            Err(SessionError::Closed)
        );
    }

    #[test]
    fn calls_in_the_wrong_state_are_refused() {
        let mut c = Client::new(ClientConfig::new("gw"));
        assert!(matches!(
            c.choose_realm("x"),
            Err(SessionError::WrongState { .. })
        ));
        assert!(matches!(
            c.provide_credentials("u", "p"),
            Err(SessionError::WrongState { .. })
        ));
        assert!(matches!(
            c.send_packet(&[0x45], Instant::now(), &mut [0u8; 64]),
            Err(SessionError::WrongState { .. })
        ));
        assert!(matches!(c.logout(), Err(SessionError::WrongState { .. })));
        assert!(matches!(
            c.handle_tls_bytes(b"x", Instant::now()),
            Err(SessionError::WrongState { .. })
        ));
    }
}
