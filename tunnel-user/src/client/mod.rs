//! The client: `tunneld` runs connections, `tunnel` talks to it over a local control socket.
//!
//! ```text
//!  tunnel CLI ──JSON over /run/tunnel/tunneld.sock (root only)──▶ daemon
//!                                                                  │ store, events, log
//!                        ┌─────────────────────────────────────────┤
//!                        ▼                                         ▼
//!                 connection (task)  ×N ──entries──▶ DataPlane (eBPF programs, policy)
//!                  TLS + tunnel_proto::Client, TUN, ESP, reconnect
//! ```
//!
//! - `connection`: one VPN connection's life ([`connection::spawn`]) and its reconnect loop;
//! - `spec`: what a connection is asked to do ([`ConnectSpec`]);
//! - `status`: what it shows of itself, and why it failed ([`Failure`]);
//! - `session`: one TLS session with a gateway, login to end;
//! - `liveness`: the session's timers (dead-peer detection, route check), without I/O;
//! - `tunnel`: the connection's TUN device, routes, policy entry and ESP socket;
//! - `end`: the client as an end of the packet path (`crate::fastpath`), one peer, and its
//!   packet threads;
//! - `policy`: the shared kernel data path and the policy built from live connections;
//! - `backoff`: when a lost connection tries again, and when it gives up;
//! - `walk`: which URL of a connection's list it tries next;
//! - `tls`: trust decisions (system CAs, pins, learned pins) and client certificates;
//! - `certstore`: the client certificates tunneld keeps (`tunnel cert import`);
//! - `cert_select`: which client certificate a TLS handshake presents;
//! - `control`: the request/response protocol of the control socket;
//! - `prompts`: the login's prompts after the password, and who answers them;
//! - `diagnostics`: the bundle of `tunnel logs save`, and how the caller writes it;
//! - `daemon`: `tunneld` itself.

mod backoff;
pub mod cert_select;
pub mod certstore;
pub mod connection;
pub mod control;
pub mod daemon;
pub mod diagnostics;
pub mod dns;
mod end;
mod liveness;
mod location;
pub mod policy;
pub mod portal;
mod prompts;
mod session;
mod sessions;
mod spec;
mod status;
pub mod tls;
mod tunnel;
mod walk;

pub use spec::{ConnectSpec, Dpd};
pub use status::{
    CertificateFailure, ConnectError, Failure, Lost, Offered, Refused, State, Status, Transport,
};
pub use tunnel::SetupError;

use std::sync::Arc;

/// Receives the events of the seed's catalogue.
type EventSink = Arc<dyn Fn(tunnel_config::EventKind) + Send + Sync>;
/// Receives (connection, gateway host, pin) of a trusted gateway.
type PinSink = Arc<dyn Fn(&str, &str, tls::Pin) + Send + Sync>;
/// Receives (connection, gateway URL) of a session that came up.
type UrlSink = Arc<dyn Fn(&str, &tunnel_config::ServerUrl) + Send + Sync>;
/// Receives (connection, its session cookie or None when it has none any more).
type CookieSink = Arc<dyn Fn(&str, Option<&str>) + Send + Sync>;
/// Receives messages outside the catalogue, with their level.
type MessageSink = Arc<dyn Fn(tunnel_config::Level, &str) + Send + Sync>;

/// Where connections report events (IDs from the seed's event table), messages the
/// catalogue has no event for (a sign-in notice's text), learned pins, and which URL of its
/// list a connection is using.
#[derive(Clone)]
pub struct Emit {
    event: EventSink,
    message: MessageSink,
    pin: PinSink,
    url: Option<UrlSink>,
    cookie: Option<CookieSink>,
}

impl Emit {
    pub fn new(
        event: impl Fn(tunnel_config::EventKind) + Send + Sync + 'static,
        message: impl Fn(tunnel_config::Level, &str) + Send + Sync + 'static,
        pin: impl Fn(&str, &str, tls::Pin) + Send + Sync + 'static,
    ) -> Emit {
        Emit {
            event: Arc::new(event),
            message: Arc::new(message),
            pin: Arc::new(pin),
            url: None,
            cookie: None,
        }
    }

    /// Also reports every session cookie a connection gets (Some) and loses (None: the
    /// gateway ended or did not resume the session, or the user signed out), so the daemon
    /// can keep it for a resume after a restart.
    pub fn with_cookie_sink(
        mut self,
        cookie: impl Fn(&str, Option<&str>) + Send + Sync + 'static,
    ) -> Emit {
        self.cookie = Some(Arc::new(cookie));
        self
    }

    /// Reports `connection`'s session cookie, or that it has none any more.
    pub fn cookie(&self, connection: &str, cookie: Option<&str>) {
        if let Some(sink) = &self.cookie {
            sink(connection, cookie);
        }
    }

    /// Also reports the URL of every session that comes up (the daemon remembers it as the
    /// connection's most recent URL).
    pub fn with_url_sink(
        mut self,
        url: impl Fn(&str, &tunnel_config::ServerUrl) + Send + Sync + 'static,
    ) -> Emit {
        self.url = Some(Arc::new(url));
        self
    }

    /// Reports that `connection`'s session with the gateway at `url` came up.
    pub fn connected_url(&self, connection: &str, url: &tunnel_config::ServerUrl) {
        if let Some(sink) = &self.url {
            sink(connection, url);
        }
    }

    /// Writes a message the catalogue has no event for into the event log.
    pub fn message(&self, level: tunnel_config::Level, text: &str) {
        (self.message)(level, text);
    }

    /// Reports an event of the seed's catalogue.
    pub fn event(&self, event: tunnel_config::EventKind) {
        (self.event)(event);
    }

    /// Reports the pin of a gateway that was trusted, for pinning on later connections.
    pub fn learned_pin(&self, connection: &str, host: &str, pin: tls::Pin) {
        (self.pin)(connection, host, pin);
    }
}
