//! The gateway (`tunnel-gateway`): the server side of IF-T/TLS.
//!
//! ```text
//!   config file ──GatewayConfig::load──▶ GatewayConfig ──▶ runtime (TLS listener, sessions,
//!   users file ──UsersFile::load──▶ UsersFile::verify ◀──┤   ESP, forwarding to the TUN device)
//!                        LoginLimiter::check / record ◀──┤
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
//! - `users`: the users file, password verification and `adduser`'s atomic update
//!   ([`UsersFile`], [`add_user`]);
//! - `pool`: the IPv4/IPv6 address pools ([`AddressPool`]);
//! - `ratelimit`: rate limiting of failed logins per source ([`LoginLimiter`]).
//!
//! The runtime builds on them (docs/gateway.md draws it):
//! - `runtime`: [`Gateway`]: the TLS listener, one task per connection, the packet
//!   threads, graceful shutdown;
//! - `access`: where logged-in clients' packets may go (routes, DNS, other clients, the
//!   gateway host);
//! - `admission`: the caps on connections that have not logged in yet, and log lines that
//!   stay bounded under a flood;
//! - `table`: the session table (by address, by SPI, by cookie; resumable sessions);
//! - `tls`: the rustls server configuration and client-certificate names.

mod access;
mod admission;
mod config;
mod pool;
mod ratelimit;
mod runtime;
mod table;
mod tls;
mod tls_readers;
mod users;

pub use config::{
    AccessConfig, AuthConfig, ConfigError, EspCipher, EspConfig, GatewayConfig, LimitsConfig,
    MTU_RANGE, PoolConfig, RoutesConfig, TlsConfig, defaults,
};
pub use pool::{AddressPool, Lease, PoolError};
pub use ratelimit::{LoginLimiter, RateLimitPolicy, Verdict};
pub use runtime::{Gateway, GatewayError};
pub use tls::TlsSetupError;
pub use users::{
    AddOutcome, AuthError, LineError, USERS_FILE_MODE, UserId, UsersError, UsersFile, add_user,
};
