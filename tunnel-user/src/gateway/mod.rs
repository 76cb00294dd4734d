//! The gateway (`tunnel-gateway`): the server side of IF-T/TLS.
//!
//! ```text
//!   config file ──GatewayConfig::load──▶ GatewayConfig ──▶ runtime (TLS listener, sessions,
//!   users file ──UsersCache──▶ Logins::authenticate ◀───┤   ESP, forwarding to the TUN device)
//!     LoginLimiter::begin / succeeded, HashPool::run ◀──┤
//!                    AddressPool::allocate / release ◀───┘
//! ```
//!
//! The gateway owns authenticating users (a local users file with argon2id hashes; client
//! certificates against a configured CA), assigning tunnel addresses from its pools, pushing
//! configuration to clients, forwarding packets between sessions and its own TUN device, ESP
//! with dead-peer detection, idle timeouts and the session table.
//!
//! This module holds the pure building blocks, which do no network I/O and read no clock:
//! - `config`: the TOML config file, its defaults and validation ([`GatewayConfig`],
//!   documented for operators in docs/gateway-config.md);
//! - `users`: the users file, password verification, and its two atomic writers: `adduser`
//!   and a user's own password change ([`UsersFile`], [`add_user`], [`change_password`]);
//! - `totp`: RFC 6238 codes and the replay guard ([`TotpGuard`]);
//! - `pool`: the IPv4/IPv6 address pools ([`AddressPool`]);
//! - `ratelimit`: rate limiting of password logins per source and per account
//!   ([`LoginLimiter`]);
//! - `hasher`: argon2 on a fixed set of workers, each with its own memory, with a bounded
//!   queue and deadline ([`HashPool`], [`HashMemory`], [`HashLimits`]).
//!
//! The runtime builds on them (docs/gateway.md draws it):
//! - `runtime`: [`Gateway`]: binding the sockets and the TUN device, the accept loop, the
//!   packet threads (`crate::fastpath`, through `end`), the janitor, graceful shutdown;
//! - `end`: the gateway as an end of the packet path (its peers are the established
//!   sessions);
//! - `conn`: one connection's task: the login's steps, the established session (timers,
//!   events, ESP housekeeping), and its end (address released or session parked);
//! - `offer`: what a client is offered and asked, from the config: the state machine's
//!   settings, what a realm asks after the password, the configuration pushed after the
//!   login (address, the realm's routes and DNS, the ESP suite);
//! - `access`: where logged-in clients' packets may go (routes, DNS, other clients, the
//!   gateway host);
//! - `admission`: the caps on connections that have not logged in yet, and log lines that
//!   stay bounded under a flood;
//! - `table`: the session table (by address, by SPI, by cookie; resumable sessions);
//! - `dialogue`: which login step comes next (notices, password, password change, token
//!   code, session choice), sans-IO;
//! - `login`: the order of a login's checks (certificate rules, rate limits, hashing) and
//!   the users file as logins see it, re-read when it changes;
//! - `tls`: the rustls server configuration; `client_cert`: the client-certificate verifier
//!   (client CA, CRLs re-read when they change) and the user a certificate names.

mod access;
mod admission;
mod client_cert;
mod cluster;
mod config;
mod conn;
mod control;
mod dialogue;
mod end;
mod hasher;
mod login;
mod metrics;
mod offer;
mod password_change;
mod pool;
mod ratelimit;
mod redis_store;
mod runtime;
mod side_listener;
mod store;
mod table;
mod tls;
mod tls_readers;
mod totp;
mod users;

pub use client_cert::{CertNameError, CrlError};
pub use config::{
    AccessConfig, AuthConfig, CertificateConfig, CertificateLogin, CertificateName, ConfigError,
    EspConfig, GatewayConfig, LimitsConfig, MTU_RANGE, Notice, PasswordLimits, PasswordRequest,
    PasswordRules, PoolChoice, PoolConfig, RealmConfig, RealmPolicy, RealmPool, RoutesConfig,
    SecondFactor, SessionLimit, StoreChoice, TlsConfig, defaults,
};
pub use control::{Answer, Request, Selector, SessionInfo, ask};
pub use hasher::{HashError, HashLimits, HashMemory};
pub use login::{PasswordChange, TokenRefused};
pub use metrics::{Asked as MetricsAsked, MAX_HEAD as METRICS_MAX_HEAD, asked as metrics_asked};
pub use password_change::{ChangeRefused, check_new_password};
pub use pool::{AddressPool, Lease, PoolError, RealmPools};
pub use ratelimit::{Attempt, LoginLimiter, RateLimitPolicy, Refusal, Scope, WindowPolicy};
pub use redis_store::Unavailable as StoreUnavailable;
pub use runtime::{Gateway, GatewayError, ReloadError, Reloader};
pub use store::{StoreError, load_embedded as load_session_store};
pub use tls::TlsSetupError;
pub use totp::{
    DEFAULT_ISSUER, SecretError, TotpCheck, TotpGuard, TotpSecret, code_at, otpauth_uri, step_at,
};
pub use users::{
    AddOptions, AddOutcome, AuthError, LineError, USERS_FILE_MODE, UserAttributes, UserId,
    UsersError, UsersFile, add_user, add_user_with, change_password, unix_now,
};
