//! The Pulse / Ivanti Connect Secure wire protocol, sans IO, for both ends of the tunnel.
//!
//! # Design
//!
//! This crate never opens a socket, reads a clock or spawns a thread. The caller owns the TLS
//! connection, the UDP socket, the TUN device and the timer; the state machines here take
//! bytes and `Instant`s as arguments and hand back bytes (in buffers the caller provides or
//! drains) and events. Two instances can therefore be wired to each other in a test with
//! nothing but `Vec<u8>`s, and the same code serves the client (`tunneld`) and the gateway
//! (`tunnel-gateway`). Randomness (ESP keys, SPIs, IVs) is injected through [`RandomSource`]
//! so tests are reproducible.
//!
//! ```text
//!              TLS bytes in                                   TLS bytes out
//!   rustls ──────────────────▶ handle_tls_bytes()   pending_tls() ──────────────▶ rustls
//!                                     │                  ▲
//!                               FrameDecoder          TlsOut (IF-T seq)
//!                                     │                  │
//!                                  Message ──▶ Client / Server ──▶ poll_event() ──▶ caller
//!                                     ▲        state machine        (realm? password?
//!                                     │              │               packet, config ...)
//!   caller ── choose_realm(), provide_credentials(), accept(), reject(), send_config() ──┘
//!
//!   TUN ── send_packet(ip, now, buf) ──▶ ESP datagram in buf  ──▶ UDP   (or a TLS data frame)
//!   UDP ── handle_esp_train(datagrams, size, now, f) ──▶ IP packets, decrypted in place ──▶ TUN
//!   timer ─ poll_timers(now) ──▶ probes, DPD, idle timeout, rekey
//!           poll_esp_transmit(buf) ──▶ a probe or a probe's answer ──▶ UDP
//!           next_timer() ──▶ when to run the timers again
//! ```
//!
//! [`Client`] and [`Server`] share one ESP data path and one calling grammar: `handle_*`
//! takes input (TLS bytes, ESP trains, IP packets, the timers' `now`), then the caller drains
//! `poll_event`, `pending_tls`, `poll_esp_transmit` until None, and asks `next_timer`.
//!
//! Layers, one module each, each with its own error type:
//!
//! - IF-T framing, messages and the HTTP upgrade: [`FrameDecoder`], [`Message`], [`IftError`];
//! - EAP, Juniper expanded EAP and AVPs: [`EapPacket`], [`AuthRequest`], [`AuthResponse`],
//!   [`EapError`];
//! - the configuration packets: [`Config`], [`ConfigPacket`], [`EspKeyExchange`],
//!   [`ConfigError`];
//! - ESP: [`OutboundSa`], [`InboundSa`], [`ReplayWindow`], [`EspError`];
//! - the ESP data path both sessions share (private: reached through their methods);
//! - the sessions: [`Client`], [`Server`], [`SessionError`].
//!
//! The wire behaviour follows openconnect's `pulse.c`, `esp.c` and `esp-seqno.c`; where this
//! code departs from or adds to it, the comment at that spot says so.
//!
//! # Driving a client
//!
//! ```no_run
//! # use tunnel_proto::*;
//! # use std::time::Instant;
//! # fn tls_write(_: &[u8]) {} fn tls_read() -> Vec<u8> { vec![] }
//! let mut client = Client::new(ClientConfig::new("vpn.example.com"));
//! client.start()?;
//! loop {
//!     tls_write(client.pending_tls());
//!     let n = client.pending_tls().len();
//!     client.consume_tls(n);
//!     client.handle_tls_bytes(&tls_read(), Instant::now())?;
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             ClientEvent::RealmRequired { realms } => client.choose_realm(&realms[0])?,
//!             ClientEvent::CredentialsRequired { .. } => {
//!                 client.provide_credentials("alice", "secret")?
//!             }
//!             ClientEvent::Configured(config) => { /* set up TUN, routes, DNS */ }
//!             _ => {}
//!         }
//!     }
//! #   break;
//! }
//! # Ok::<(), SessionError>(())
//! ```

mod client;
mod config;
mod eap;
mod esp;
mod ift;
mod path;
mod rng;
mod server;
mod session;
mod wire;

pub use client::{
    Client, ClientConfig, ClientEvent, ClientState, ESP_ATTEMPT_PERIOD, EspDpd, PROBE_INTERVAL,
};
pub use config::{
    CONFIG_MAGIC, CONFIG_MAGIC_R14, Config, ConfigError, ConfigPacket, ESP_CONFIG_MAGIC,
    ESP_SECRETS_LEN, EspKeyExchange, EspKeys, EspSettings, Ipv4Net, Ipv6Net, RawTlv,
    range_to_prefixes,
};
pub use eap::{
    AVP_EAP_MESSAGE, AVP_VENDOR_JUNIPER, ActiveSession, Answer, AuthRequest, AuthResponse, Avp,
    AvpIter, CURRENT_PASSWORD_FIELD, EAP_VENDOR_JUNIPER, EapBody, EapCode, EapError, EapPacket,
    InnerRequest, InnerResponse, J2_PASSWORD_REQUEST, J2_PASSWORD_RETRY, JUNIPER_SUBTYPE_AVPS,
    JUNIPER_SUBTYPE_PASSWORD_CURRENT, PasswordMessage, RawAvp, append_avp, avp,
    encode_juniper_avps, parse_avps,
};
pub use esp::{
    EspCipher, EspError, EspMac, EspPayload, EspSuite, InboundSa, MAX_OVERHEAD, OutboundSa,
    REPLAY_WINDOW, ReplayWindow, peek_spi,
};
pub use ift::{
    ClientInfo, DEFAULT_MAX_FRAME_LEN, FatalErrorKind, Frame, FrameDecoder, FrameHeader, FrameKind,
    HEADER_LEN, IftError, MAX_HTTP_HEAD, Message, UpgradeRequest, UpgradeResponse, VENDOR_JUNIPER,
    VENDOR_TCG, build_upgrade_request, build_upgrade_response, parse_upgrade_request,
    parse_upgrade_response,
};
pub use rng::{OsRandom, RandomSource};
pub use server::{
    CloseReason, DEFAULT_LOGIN_MAX_FRAME_LEN, DPD_PROBES, Notice, PasswordForm, Prompt,
    PromptAnswer, Server, ServerConfig, ServerEvent, SpiAllocator,
};
pub use session::{
    AuthFailure, AuthRejection, EspInput, MAX_TLS_BACKLOG, MIN_SPI, Password, REKEY_OVERLAP,
    SessionError, Transmit, random_spi,
};
