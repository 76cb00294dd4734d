//! The gateway's configuration file: `tunnel-gateway --config FILE`.
//!
//! This module owns the schema (documented key by key on [`GatewayConfig`] and in
//! `docs/gateway-config.md`), its defaults and its validation. It reads the config file and
//! checks that the files it names can be opened; it does not parse certificates, keys or the
//! users file (see `super::users`), and it starts nothing.
//!
//! Parsing goes through a private, loosely typed mirror of the file (numbers as `i64`,
//! addresses as strings) so that every range and format error is ours to word: one
//! [`ConfigError`] that names the dotted key and what is allowed, instead of a serde message
//! about `u16`.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use tunnel_proto::{EspCipher, EspMac, EspSuite};

use super::{
    hasher::HashLimits,
    users::{REALM_NAME_RULE, realm_name_ok},
};

/// The MTUs the gateway may push. 1280 is the IPv6 minimum (RFC 8200 section 5), which the
/// tunnel must carry even when only IPv4 is pooled, since clients may run IPv6 over it later;
/// 9000 is the common jumbo-frame size, beyond which no deployment we target goes.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 1280..=9000;

/// The longest duration any `*_secs` key accepts, one year: a longer value is almost always a
/// unit mistake (milliseconds), and it would not fit the 32-bit fields of the wire anyway.
const MAX_SECS: i64 = 365 * 24 * 3600;

/// Defaults, named so that the docs, the code and the tests agree.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    use tunnel_proto::{EspCipher, EspMac, EspSuite};

    /// `listen`: every IPv4 address, the HTTPS port clients try first.
    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 443));
    /// `mtu`: leaves room for ESP-in-UDP and TLS overhead on a 1500-byte path.
    pub const MTU: u16 = 1400;
    /// `tun_name`.
    pub const TUN_NAME: &str = "tgw0";
    /// `auth.realms`: the realm name Ivanti Connect Secure ships with.
    pub const REALM: &str = "Users";
    /// `idle_timeout_secs`: 30 minutes.
    pub const IDLE_TIMEOUT_SECS: u32 = 1800;
    /// `dpd_interval_secs`.
    pub const DPD_INTERVAL_SECS: u32 = 60;
    /// `session_lifetime_secs`: 12 hours, a working day plus margin.
    pub const SESSION_LIFETIME_SECS: u32 = 43_200;
    /// `esp.port`: the IPsec NAT-traversal port, which Pulse servers use for ESP-in-UDP.
    pub const ESP_PORT: u16 = 4500;
    /// `esp.ciphers`: tunnel's own suite (AES-256-GCM) for the clients that offer it, then
    /// AES-128-CBC with HMAC-SHA1-96, what every Pulse client supports.
    pub const ESP_CIPHERS: [EspSuite; 2] = [
        EspSuite::AES256_GCM,
        EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha1_96,
        },
    ];
    /// `esp.fallback_secs`: Ivanti's default "ESP to SSL fallback timeout". openconnect uses it
    /// as its ESP dead-peer period before it falls back to TLS (esp.c, `esp_ssl_fallback`).
    pub const ESP_FALLBACK_SECS: u32 = 15;
    /// `esp.key_lifetime_secs`: Ivanti's default time-based ESP key lifetime, 20 minutes.
    pub const ESP_KEY_LIFETIME_SECS: u32 = 1200;
    /// `esp.key_lifetime_bytes`: 0, no byte-based rekeying, as Ivanti ships.
    pub const ESP_KEY_LIFETIME_BYTES: u32 = 0;
    /// `limits.login_connections`: a login takes a few kilobytes of memory and one
    /// descriptor; a thousand at once is more than a busy morning's logins, and far below the
    /// descriptor limit the service unit sets.
    pub const LOGIN_CONNECTIONS: u32 = 1024;
    /// `limits.login_connections_per_source`: room for an office behind one NAT address
    /// logging in at once, while one host cannot take the global cap alone.
    pub const LOGIN_CONNECTIONS_PER_SOURCE: u32 = 32;
    /// `limits.tls_handshake_secs`: a TLS handshake takes two round trips.
    pub const TLS_HANDSHAKE_SECS: u32 = 10;
    /// `limits.login_step_secs`: each login step a client answers by itself is one round
    /// trip.
    pub const LOGIN_STEP_SECS: u32 = 10;
    /// `limits.user_step_secs`: openconnect asks its user for the realm and the password
    /// only when the gateway asks for them.
    pub const USER_STEP_SECS: u32 = 60;
    /// `limits.login_secs`: a whole login, the user's typing included.
    pub const LOGIN_SECS: u32 = 120;
    /// `limits.login_frame_bytes`: see `tunnel_proto::DEFAULT_LOGIN_MAX_FRAME_LEN`.
    pub const LOGIN_FRAME_BYTES: u32 = tunnel_proto::DEFAULT_LOGIN_MAX_FRAME_LEN;
}

/// The validated configuration of one gateway. Built only by [`GatewayConfig::load`] or
/// [`GatewayConfig::from_str`], so every value here has passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// `listen`: where the TLS listener binds, `ip:port` (`[v6]:port` for IPv6). Default
    /// `0.0.0.0:443`. Port 0 is refused: clients must know the port.
    pub listen: SocketAddr,
    /// `[tls]`: the server's certificate and key, and the CA for client certificates.
    pub tls: TlsConfig,
    /// `[auth]`: the users file and the realms offered.
    pub auth: AuthConfig,
    /// `[pool]`: the addresses handed to clients and the gateway's own tunnel addresses.
    pub pool: PoolConfig,
    /// `[routes]`: the routes pushed to clients.
    pub routes: RoutesConfig,
    /// `dns`: DNS servers pushed to clients, IPv4 or IPv6. Default: none.
    pub dns: Vec<IpAddr>,
    /// `search_domains`: DNS search domains pushed to clients. Default: none.
    pub search_domains: Vec<String>,
    /// `mtu`: the tunnel MTU pushed to clients and set on the gateway's TUN device,
    /// 1280-9000, default 1400.
    pub mtu: u16,
    /// `[esp]`: ESP over UDP.
    pub esp: EspConfig,
    /// `idle_timeout_secs`: a session that moves no packet for this long is ended with the
    /// fatal-error frame and its address freed. 0 in the file (here `None`) means never.
    /// 0-31536000, default 1800.
    pub idle_timeout: Option<Duration>,
    /// `dpd_interval_secs`: how often a silent ESP peer is probed. 1-3600, default 60.
    pub dpd_interval: Duration,
    /// `session_lifetime_secs`: how long a session, and so its DSID cookie, stays valid after
    /// login, whatever the traffic. 1-31536000, default 43200 (12 hours).
    pub session_lifetime: Duration,
    /// `tun_name`: the gateway's TUN device, 1-15 bytes, no '/', ':' or whitespace. Default
    /// `tgw0`.
    pub tun_name: String,
    /// `[limits]`: what a client that has not logged in yet may cost the gateway.
    pub limits: LimitsConfig,
    /// `[access]`: where logged-in clients may send packets beyond their routes.
    pub access: AccessConfig,
    /// `[realm.NAME]`: per-realm login steps and session settings, for the realms that have
    /// a table (each one of `auth.realms`). [`GatewayConfig::realm_policy`] gives a realm's
    /// effective settings, the global ones filled in.
    pub realms: BTreeMap<String, RealmConfig>,
    /// `state_dir`: where the gateway keeps what outlives its process (the embedded session
    /// store, `sessions.log`). Default: the users file's directory, which the gateway
    /// already writes.
    pub state_dir: PathBuf,
    /// `control_socket`: the Unix socket `tunnel-gateway sessions` asks (mode 0600, root and
    /// the gateway's own user only). Default: `control.sock` in `state_dir`.
    pub control_socket: PathBuf,
    /// `metrics_listen`: where `GET /metrics` (Prometheus text format) and `GET /health`
    /// are served, `ip:port`. Default: none (off). Bind it where only monitoring reaches.
    pub metrics_listen: Option<SocketAddr>,
    /// `session_store`: where sessions are kept beyond the process.
    pub session_store: StoreChoice,
}

/// `session_store`: `"embedded"` (the default: `state_dir/sessions.log`) or the URL of the
/// Redis server a cluster of gateways shares (`redis://HOST:PORT[/DB]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreChoice {
    #[default]
    Embedded,
    Redis(String),
}

impl fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Embedded => f.write_str("embedded"),
            // A password in the URL is not shown.
            StoreChoice::Redis(url) => match (url.split_once("://"), url.rfind('@')) {
                (Some((scheme, _)), Some(at)) => write!(f, "{scheme}://***{}", &url[at..]),
                _ => f.write_str(url),
            },
        }
    }
}

/// `[access]`: a client reaches what its routes include (and the pushed DNS servers on port
/// 53); these open what is off by default, whatever the routes say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessConfig {
    /// `access.client_to_client`: clients may reach other clients' tunnel addresses.
    /// Default false.
    pub client_to_client: bool,
    /// `access.gateway`: clients may reach the gateway host itself (its tunnel addresses,
    /// every address of its interfaces). Default false.
    pub gateway: bool,
}

/// `[limits]`: bounds on connections that have not logged in yet. Whoever opens one has proved
/// nothing, so each is refused or closed as soon as it exceeds its share, before the gateway
/// spends more on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// `limits.login_connections`: connections not logged in yet, all sources together; a
    /// connection over it is closed as soon as it is accepted. 1-1000000, default 1024.
    pub login_connections: u32,
    /// `limits.login_connections_per_source`: the same, per source (an IPv4 address or an
    /// IPv6 /64). 1-1000000, default 32.
    pub login_connections_per_source: u32,
    /// `limits.tls_handshake_secs`: time for the TLS handshake. 1-300, default 10.
    pub tls_handshake: Duration,
    /// `limits.login_step_secs`: time for each login step the client answers by itself (the
    /// upgrade request, IF-T version, client information, EAP identity, the cookie's
    /// acknowledgement). 1-300, default 10.
    pub login_step: Duration,
    /// `limits.user_step_secs`: time for each login step the client's user may have to answer
    /// (the realm, the credentials). 1-3600, default 60.
    pub user_step: Duration,
    /// `limits.login_secs`: time for the whole login, from the TCP connection to the
    /// configuration. 1-3600, default 120.
    pub login: Duration,
    /// `limits.login_frame_bytes`: the largest IF-T frame taken before the login; once
    /// logged in, a client may send frames of up to 1 MiB. 1024-1048576, default 16384.
    pub login_frame_bytes: u32,
    /// `limits.max_sessions`: sessions (connected or resumable) this gateway holds, or with
    /// a Redis `session_store` the whole cluster; a new login past it is refused before
    /// its password is checked (resumes are not new sessions). 0-10000000, default 0: no
    /// cap but the address pools.
    pub max_sessions: u32,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// `tls.certificate`: PEM file with the server certificate, then any intermediates.
    /// Required. A relative path is taken from the config file's directory.
    pub certificate: PathBuf,
    /// `tls.key`: PEM file with the certificate's private key. Required.
    pub key: PathBuf,
    /// `tls.client_ca`: PEM file with the CA(s) that sign client certificates. When set,
    /// clients may present a certificate, and `[auth.certificate]` says what it grants; when
    /// absent, certificate login is off.
    pub client_ca: Option<PathBuf>,
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthConfig {
    /// `auth.users_file`: the users file written by `tunnel-gateway adduser`. Required.
    pub users_file: PathBuf,
    /// `auth.realms`: the realms offered to clients, in order; a user may log in to a realm
    /// only if the users file lists it for them. Default `["Users"]`.
    pub realms: Vec<String>,
    /// `[auth.passwords]`: how fast passwords may be guessed, and what checking them costs.
    pub passwords: PasswordLimits,
    /// `[auth.certificate]`: what a client certificate names and grants.
    pub certificate: CertificateConfig,
    /// `auth.password_request`: how the password is asked for. Default `"current"`.
    pub password_request: PasswordRequest,
}

/// `auth.password_request`: which password request the gateway sends (docs/login.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordRequest {
    /// `"current"`: the form of Ivanti Connect Secure 22.x (expanded Juniper subtype 5),
    /// whose answer carries at most [`PasswordRequest::CURRENT_MAX_BYTES`] bytes of password.
    Current,
    /// `"legacy"`: the older J2 form, up to 253 bytes of password.
    Legacy,
}

impl PasswordRequest {
    const ALL: [PasswordRequest; 2] = [PasswordRequest::Current, PasswordRequest::Legacy];
    /// The fixed password field of the current form's answer.
    pub const CURRENT_MAX_BYTES: usize = 18;
    /// The longest password any form carries: a TLV length byte minus its header.
    pub const MAX_BYTES: usize = 253;

    /// The name used in the config file.
    pub const fn name(self) -> &'static str {
        match self {
            PasswordRequest::Current => "current",
            PasswordRequest::Legacy => "legacy",
        }
    }

    /// The longest password the form carries.
    pub const fn max_bytes(self) -> usize {
        match self {
            PasswordRequest::Current => PasswordRequest::CURRENT_MAX_BYTES,
            PasswordRequest::Legacy => PasswordRequest::MAX_BYTES,
        }
    }
}

impl fmt::Display for PasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[pool]`. Invariant (checked when loading): `gateway_ipv6` is `Some` exactly when `ipv6` is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// `pool.ipv4`: the IPv4 prefix clients get addresses from, e.g. `10.10.0.0/24`. Required.
    /// Its network and broadcast addresses and the gateway's own address are never handed out,
    /// so it must be /30 or shorter.
    pub ipv4: Ipv4Net,
    /// `pool.gateway_ipv4`: the gateway's own address on the tunnel, inside `pool.ipv4`.
    /// Default: the first host of `pool.ipv4`.
    pub gateway_ipv4: Ipv4Addr,
    /// `pool.ipv6`: the IPv6 prefix clients get addresses from. Optional; without it clients
    /// get no IPv6 address and no IPv6 route may be pushed. Must be /126 or shorter.
    pub ipv6: Option<Ipv6Net>,
    /// `pool.gateway_ipv6`: the gateway's own IPv6 tunnel address, inside `pool.ipv6`.
    /// Default: the first host of `pool.ipv6`.
    pub gateway_ipv6: Option<Ipv6Addr>,
}

/// `[routes]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RoutesConfig {
    /// `routes.include`: prefixes (IPv4 or IPv6) the client sends through the tunnel.
    pub include: Vec<IpNet>,
    /// `routes.exclude`: prefixes the client keeps off the tunnel, even inside an include.
    pub exclude: Vec<IpNet>,
}

/// `[esp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EspConfig {
    /// `esp.enabled`: offer ESP over UDP. When false every client stays on TLS. Default true.
    pub enabled: bool,
    /// `esp.port`: the UDP port of ESP, 1-65535, default 4500.
    pub port: u16,
    /// `esp.ciphers`: the suites the gateway accepts, in order of preference, out of
    /// `aes128-sha1`, `aes256-sha1`, `aes128-sha256`, `aes256-sha256` (AES-CBC with an HMAC,
    /// as Pulse negotiates them) and `aes256-gcm`, which only tunnel's own client offers
    /// (others get the next suite in the list). Default
    /// `["aes256-gcm", "aes128-sha1"]`: the second is what every Pulse client supports.
    pub ciphers: Vec<EspSuite>,
    /// `esp.fallback_secs`: pushed as "ESP to TLS fallback"; clients treat ESP as dead, and
    /// use TLS, after this long without an answer. 0 in the file (here `None`) lets the client
    /// choose. 0-3600, default 15.
    pub fallback: Option<Duration>,
    /// `esp.key_lifetime_secs`: ESP keys are replaced after this long. 60-604800, default 1200.
    pub key_lifetime: Duration,
    /// `esp.key_lifetime_bytes`: ESP keys are replaced after this many bytes. 0 in the file
    /// (here `None`) means no byte limit. 0-4294967295 (a 32-bit field on the wire), default 0.
    pub key_lifetime_bytes: Option<NonZeroU32>,
}

/// The name `esp.ciphers` gives each suite, in the order the docs list them.
const SUITE_NAMES: [(EspSuite, &str); 5] = [
    (
        EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha1_96,
        },
        "aes128-sha1",
    ),
    (
        EspSuite {
            cipher: EspCipher::Aes256Cbc,
            mac: EspMac::HmacSha1_96,
        },
        "aes256-sha1",
    ),
    (
        EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha256_128,
        },
        "aes128-sha256",
    ),
    (
        EspSuite {
            cipher: EspCipher::Aes256Cbc,
            mac: EspMac::HmacSha256_128,
        },
        "aes256-sha256",
    ),
    (EspSuite::AES256_GCM, "aes256-gcm"),
];

/// The name of `suite` in `esp.ciphers` (and in `show`'s output).
pub(super) fn suite_name(suite: EspSuite) -> &'static str {
    SUITE_NAMES
        .iter()
        .find(|(s, _)| *s == suite)
        .map_or("invalid", |(_, name)| name)
}

/// The suite `name` stands for in `esp.ciphers`.
fn parse_suite(name: &str) -> Option<EspSuite> {
    SUITE_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(suite, _)| *suite)
}

/// What `esp.ciphers` takes; the tests check it lists every name in [`SUITE_NAMES`].
const CIPHER_RULE: &str =
    "a cipher (one of aes128-sha1, aes256-sha1, aes128-sha256, aes256-sha256, aes256-gcm)";

/// Why a config was refused. Exactly one is reported (the first the checks meet: syntax and
/// types first, then the keys in a fixed order), and it names the dotted key (`esp.port`,
/// `routes.include[2]`) and what the key allows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// An error in a config file, with the file's name in front.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        source: Box<ConfigError>,
    },
    /// The TOML did not parse, or a value had the wrong type, or a key is unknown or missing.
    #[error("line {line}, column {column}: {}{message}", key_prefix(key))]
    Syntax {
        /// The dotted key, when the error is about one.
        key: Option<String>,
        line: usize,
        column: usize,
        message: String,
    },
    /// A number outside its range.
    #[error("{key}: {value} is outside {min}-{max}")]
    OutOfRange {
        key: String,
        value: i64,
        min: i64,
        max: i64,
    },
    /// A port outside 1-65535.
    #[error("{key}: {value} is not a port (1-65535)")]
    NotAPort { key: String, value: i64 },
    /// A string that is not what the key takes.
    #[error("{key}: {value:?} is not {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: &'static str,
    },
    /// A prefix with bits set past its length, which usually means a typo.
    #[error("{key}: {value} has host bits set (did you mean {network}?)")]
    HostBits {
        key: String,
        value: String,
        network: IpNet,
    },
    /// A pool so small that nothing is left for clients.
    #[error("{key}: {net} leaves no address for clients")]
    PoolTooSmall { key: String, net: IpNet },
    /// A gateway address outside its pool, or one of the pool's reserved addresses.
    #[error("{key}: {addr} is not a host address inside {pool}")]
    OutsidePool {
        key: String,
        addr: IpAddr,
        pool: IpNet,
    },
    /// An IPv6 value while no IPv6 pool is configured.
    #[error("{key}: {value} needs pool.ipv6, which is not set")]
    NeedsIpv6Pool { key: String, value: String },
    /// A list or path that must not be empty.
    #[error("{key}: must not be empty")]
    Empty { key: String },
    /// The same value twice in a list.
    #[error("{key}: {value:?} is already listed as {first}")]
    Duplicate {
        key: String,
        value: String,
        first: String,
    },
    /// A file the config names cannot be opened.
    #[error("{key}: cannot open {}: {source}", path.display())]
    File {
        key: String,
        path: PathBuf,
        source: io::Error,
    },
    /// A file the config names is a directory or a device.
    #[error("{key}: {} is not a regular file", path.display())]
    NotAFile { key: String, path: PathBuf },
    /// A certificate setting while certificate login is off.
    #[error("{key}: needs tls.client_ca, which is not set (certificate login is off)")]
    NeedsClientCa { key: String },
    /// A key that only means something together with another one, which is not set.
    #[error("{key}: needs {other}, which is not set")]
    NeedsKey { key: String, other: String },
    /// A value two settings allow separately but not together.
    #[error("{key}: {value} is more than {max}, {why}")]
    Conflict {
        key: String,
        value: i64,
        max: i64,
        why: &'static str,
    },
    /// A text of the wrong length in bytes.
    #[error("{key}: {len} bytes, must be {min}-{max}")]
    TextLength {
        key: String,
        len: usize,
        min: usize,
        max: usize,
    },
    /// A text with a NUL character, which the wire's strings cannot carry.
    #[error("{key}: contains a NUL character")]
    TextNul { key: String },
    /// Two address pools that share addresses.
    #[error("{key}: {net} overlaps {other_key} ({other})")]
    Overlap {
        key: String,
        net: IpNet,
        other_key: String,
        other: IpNet,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::InFile { source, .. } => source.key(),
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::OutOfRange { key, .. }
            | ConfigError::NotAPort { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::HostBits { key, .. }
            | ConfigError::PoolTooSmall { key, .. }
            | ConfigError::OutsidePool { key, .. }
            | ConfigError::NeedsIpv6Pool { key, .. }
            | ConfigError::Empty { key }
            | ConfigError::Duplicate { key, .. }
            | ConfigError::File { key, .. }
            | ConfigError::NotAFile { key, .. }
            | ConfigError::NeedsClientCa { key }
            | ConfigError::NeedsKey { key, .. }
            | ConfigError::Conflict { key, .. }
            | ConfigError::TextLength { key, .. }
            | ConfigError::TextNul { key }
            | ConfigError::Overlap { key, .. } => Some(key),
        }
    }
}

// The file as written, before validation. Every table denies unknown keys so that a typo
// (`idle_timeout = 60`) is an error rather than a silently ignored setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    tls: RawTls,
    auth: RawAuth,
    pool: RawPool,
    #[serde(default)]
    routes: RawRoutes,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    search_domains: Vec<String>,
    mtu: Option<i64>,
    #[serde(default)]
    esp: RawEsp,
    idle_timeout_secs: Option<i64>,
    dpd_interval_secs: Option<i64>,
    session_lifetime_secs: Option<i64>,
    tun_name: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    realm: BTreeMap<String, RawRealm>,
    state_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    metrics_listen: Option<String>,
    session_store: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    client_to_client: Option<bool>,
    gateway: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    login_connections: Option<i64>,
    login_connections_per_source: Option<i64>,
    tls_handshake_secs: Option<i64>,
    login_step_secs: Option<i64>,
    user_step_secs: Option<i64>,
    login_secs: Option<i64>,
    login_frame_bytes: Option<i64>,
    max_sessions: Option<i64>,
}

impl RawLimits {
    fn validate(self) -> Result<LimitsConfig, ConfigError> {
        let count = |v, k, d: u32| int(v, k, 1, 1_000_000, d.into()).map(|n| n as u32);
        let time = |v, k, max, d: u32| int(v, k, 1, max, d.into()).map(secs);
        Ok(LimitsConfig {
            login_connections: count(
                self.login_connections,
                "limits.login_connections",
                defaults::LOGIN_CONNECTIONS,
            )?,
            login_connections_per_source: count(
                self.login_connections_per_source,
                "limits.login_connections_per_source",
                defaults::LOGIN_CONNECTIONS_PER_SOURCE,
            )?,
            tls_handshake: time(
                self.tls_handshake_secs,
                "limits.tls_handshake_secs",
                300,
                defaults::TLS_HANDSHAKE_SECS,
            )?,
            login_step: time(
                self.login_step_secs,
                "limits.login_step_secs",
                300,
                defaults::LOGIN_STEP_SECS,
            )?,
            user_step: time(
                self.user_step_secs,
                "limits.user_step_secs",
                3600,
                defaults::USER_STEP_SECS,
            )?,
            login: time(
                self.login_secs,
                "limits.login_secs",
                3600,
                defaults::LOGIN_SECS,
            )?,
            login_frame_bytes: int(
                self.login_frame_bytes,
                "limits.login_frame_bytes",
                1024,
                i64::from(tunnel_proto::DEFAULT_MAX_FRAME_LEN),
                defaults::LOGIN_FRAME_BYTES.into(),
            )? as u32,
            max_sessions: int(self.max_sessions, "limits.max_sessions", 0, 10_000_000, 0)? as u32,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    users_file: PathBuf,
    realms: Option<Vec<String>>,
    #[serde(default)]
    passwords: RawPasswords,
    certificate: Option<RawCertificate>,
    password_request: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    ipv4: String,
    gateway_ipv4: Option<String>,
    ipv6: Option<String>,
    gateway_ipv6: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEsp {
    enabled: Option<bool>,
    port: Option<i64>,
    ciphers: Option<Vec<String>>,
    fallback_secs: Option<i64>,
    key_lifetime_secs: Option<i64>,
    key_lifetime_bytes: Option<i64>,
}

impl FromStr for GatewayConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        GatewayConfig::from_str(text)
    }
}

impl GatewayConfig {
    /// Reads, parses and validates the config file, resolves relative paths against the file's
    /// directory, and checks that every file it names can be opened. Errors carry the file's
    /// name.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let in_file = |e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        let mut config = GatewayConfig::from_str(&text).map_err(in_file)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.check_files().map_err(in_file)?;
        Ok(config)
    }

    /// Parses and validates config text. Does no I/O: paths are kept as written and not
    /// checked.
    #[expect(
        clippy::should_implement_trait,
        reason = "FromStr is implemented too; the inherent fn keeps `GatewayConfig::from_str` callable without importing the trait"
    )]
    pub fn from_str(text: &str) -> Result<GatewayConfig, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| syntax_error(text, e))?;
        raw.validate()
    }

    /// Makes relative paths relative to `base` (the config file's directory), so that the
    /// gateway does not depend on the directory it was started from.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.tls.certificate);
        resolve(&mut self.tls.key);
        if let Some(ca) = &mut self.tls.client_ca {
            resolve(ca);
        }
        resolve(&mut self.auth.users_file);
        resolve(&mut self.state_dir);
        if self.control_socket.is_relative() {
            self.control_socket = self.state_dir.join(&self.control_socket);
        }
        for crl in &mut self.auth.certificate.crl_files {
            resolve(crl);
        }
    }

    /// Checks that every file the config names is a regular file this process can open, so a
    /// typo in a path stops the gateway with the key's name rather than at the first login.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let mut files = vec![
            (key("tls.certificate"), &self.tls.certificate),
            (key("tls.key"), &self.tls.key),
        ];
        if let Some(ca) = &self.tls.client_ca {
            files.push((key("tls.client_ca"), ca));
        }
        files.push((key("auth.users_file"), &self.auth.users_file));
        for (i, crl) in self.auth.certificate.crl_files.iter().enumerate() {
            files.push((indexed("auth.certificate.crl_files", i), crl));
        }
        for (name, path) in files {
            let file = fs::File::open(path).map_err(|source| ConfigError::File {
                key: name.clone(),
                path: path.clone(),
                source,
            })?;
            let meta = file.metadata().map_err(|source| ConfigError::File {
                key: name.clone(),
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(ConfigError::NotAFile {
                    key: name,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Turns a TOML/serde error into [`ConfigError::Syntax`] with the dotted key and a position.
fn syntax_error(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    // serde_path_to_error says "." when the error is not inside any key (bad TOML syntax).
    let mut key = (path != ".").then_some(path);
    // Numbers are read as i64 so that range errors are ours; a non-number should still read
    // as "expected an integer", not as a Rust type.
    let mut message = inner
        .message()
        .trim()
        .replace('\n', ": ")
        .replace("expected i64", "expected an integer");
    // "missing field `x`" is reported at the enclosing table; name the missing key itself.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        key = Some(match key {
            Some(table) => format!("{table}.{field}"),
            None => field.to_string(),
        });
        message = "is required".to_string();
    }
    let (line, column) = inner
        .span()
        .map(|span| line_column(text, span.start))
        .unwrap_or((1, 1));
    ConfigError::Syntax {
        key,
        line,
        column,
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn key(name: &str) -> String {
    name.to_string()
}

fn indexed(list: &str, i: usize) -> String {
    format!("{list}[{i}]")
}

/// An integer key within `min..=max`, or its default.
fn int(
    value: Option<i64>,
    name: &str,
    min: i64,
    max: i64,
    default: i64,
) -> Result<i64, ConfigError> {
    let v = value.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::OutOfRange {
            key: key(name),
            value: v,
            min,
            max,
        })
    }
}

fn secs(v: i64) -> Duration {
    Duration::from_secs(v.unsigned_abs())
}

fn port(value: Option<i64>, name: &str, default: u16) -> Result<u16, ConfigError> {
    let v = value.unwrap_or(i64::from(default));
    match u16::try_from(v) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::NotAPort {
            key: key(name),
            value: v,
        }),
    }
}

fn path(p: PathBuf, name: &str) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() {
        Err(ConfigError::Empty { key: key(name) })
    } else {
        Ok(p)
    }
}

/// A CIDR prefix with no host bits set.
fn prefix(text: &str, name: String) -> Result<IpNet, ConfigError> {
    let net: IpNet = text.parse().map_err(|_| ConfigError::Invalid {
        key: name.clone(),
        value: text.to_string(),
        expected: "a CIDR prefix such as 10.0.0.0/8 or fd00::/8",
    })?;
    if net.trunc() != net {
        return Err(ConfigError::HostBits {
            key: name,
            value: text.to_string(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

fn ip(text: &str, name: String) -> Result<IpAddr, ConfigError> {
    text.parse().map_err(|_| ConfigError::Invalid {
        key: name,
        value: text.to_string(),
        expected: "an IP address",
    })
}

/// Reports the second occurrence of any value, naming where the first was.
fn no_duplicates<T: Ord + ToString>(list: &[T], name: &str) -> Result<(), ConfigError> {
    let mut seen = BTreeMap::new();
    for (i, v) in list.iter().enumerate() {
        if let Some(first) = seen.insert(v, i) {
            return Err(ConfigError::Duplicate {
                key: indexed(name, i),
                value: v.to_string(),
                first: indexed(name, first),
            });
        }
    }
    Ok(())
}

const TUN_NAME_RULE: &str = "an interface name (1-15 bytes, no '/', ':' or whitespace)";
const DOMAIN_RULE: &str =
    "a domain name (dot-separated labels of 1-63 letters, digits or '-', 253 bytes at most)";

/// Linux interface names: shorter than IFNAMSIZ (16), and what `dev_valid_name` accepts.
fn tun_name_ok(name: &str) -> bool {
    (1..libc::IFNAMSIZ).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
}

/// A DNS name in the usual host-name syntax (RFC 1123 section 2.1); one trailing dot allowed.
fn domain_ok(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl RawConfig {
    /// Checks every key in file order and returns the first error.
    fn validate(self) -> Result<GatewayConfig, ConfigError> {
        let listen = match &self.listen {
            None => defaults::LISTEN,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| ConfigError::Invalid {
                    key: key("listen"),
                    value: text.clone(),
                    expected: "an address:port such as 0.0.0.0:443 or [::]:443",
                })?;
                if addr.port() == 0 {
                    return Err(ConfigError::NotAPort {
                        key: key("listen"),
                        value: 0,
                    });
                }
                addr
            }
        };

        let metrics_listen = match &self.metrics_listen {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| ConfigError::Invalid {
                    key: key("metrics_listen"),
                    value: text.clone(),
                    expected: "an address:port such as 127.0.0.1:9477",
                })?;
                if addr.port() == 0 {
                    return Err(ConfigError::NotAPort {
                        key: key("metrics_listen"),
                        value: 0,
                    });
                }
                if addr == listen {
                    return Err(ConfigError::Invalid {
                        key: key("metrics_listen"),
                        value: text.clone(),
                        expected: "an address:port other than listen's",
                    });
                }
                Some(addr)
            }
        };

        let session_store = match self.session_store.as_deref() {
            None | Some("embedded") => StoreChoice::Embedded,
            Some(url) => {
                let accepted = (url.starts_with("redis://") || url.starts_with("redis+unix://"))
                    && redis::Client::open(url).is_ok();
                if !accepted {
                    return Err(ConfigError::Invalid {
                        key: key("session_store"),
                        value: url.to_string(),
                        expected: "\"embedded\" or a Redis URL such as redis://127.0.0.1:6379/0",
                    });
                }
                StoreChoice::Redis(url.to_string())
            }
        };

        let tls = TlsConfig {
            certificate: path(self.tls.certificate, "tls.certificate")?,
            key: path(self.tls.key, "tls.key")?,
            client_ca: self
                .tls
                .client_ca
                .map(|p| path(p, "tls.client_ca"))
                .transpose()?,
        };

        let realms = self
            .auth
            .realms
            .unwrap_or_else(|| vec![defaults::REALM.to_string()]);
        if realms.is_empty() {
            return Err(ConfigError::Empty {
                key: key("auth.realms"),
            });
        }
        for (i, realm) in realms.iter().enumerate() {
            if !realm_name_ok(realm) {
                return Err(ConfigError::Invalid {
                    key: indexed("auth.realms", i),
                    value: realm.clone(),
                    expected: REALM_NAME_RULE,
                });
            }
        }
        no_duplicates(&realms, "auth.realms")?;
        let users_file = path(self.auth.users_file, "auth.users_file")?;
        let passwords = self.auth.passwords.validate()?;
        let certificate = match self.auth.certificate {
            None => CertificateConfig::default(),
            Some(raw) => raw.validate(&realms, tls.client_ca.is_some())?,
        };
        let password_request = match self.auth.password_request {
            None => PasswordRequest::Current,
            Some(text) => PasswordRequest::ALL
                .into_iter()
                .find(|r| r.name() == text)
                .ok_or_else(|| ConfigError::Invalid {
                    key: key("auth.password_request"),
                    value: text.clone(),
                    expected: "a password request form (one of current, legacy)",
                })?,
        };
        // A minimum the request form cannot carry would refuse every new password.
        if passwords.min_length as usize > password_request.max_bytes() {
            return Err(ConfigError::Conflict {
                key: key("auth.passwords.min_length"),
                value: passwords.min_length.into(),
                max: password_request.max_bytes() as i64,
                why: "the bytes of password auth.password_request = \"current\" carries",
            });
        }
        let state_dir = match self.state_dir {
            Some(dir) => path(dir, "state_dir")?,
            None => users_file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let control_socket = match self.control_socket {
            Some(p) => path(p, "control_socket")?,
            None => PathBuf::from("control.sock"),
        };
        let auth = AuthConfig {
            users_file,
            realms,
            passwords,
            certificate,
            password_request,
        };

        let pool = self.pool.validate()?;

        let has_ipv6 = pool.ipv6.is_some();
        let routes = RoutesConfig {
            include: route_list(
                &self.routes.include,
                "routes.include",
                has_ipv6,
                "pool.ipv6",
            )?,
            exclude: route_list(
                &self.routes.exclude,
                "routes.exclude",
                has_ipv6,
                "pool.ipv6",
            )?,
        };
        let dns = dns_list(&self.dns, "dns")?;
        domain_list(&self.search_domains, "search_domains")?;

        let mtu = int(
            self.mtu,
            "mtu",
            i64::from(*MTU_RANGE.start()),
            i64::from(*MTU_RANGE.end()),
            i64::from(defaults::MTU),
        )?;

        let esp = self.esp.validate()?;

        let idle = int(
            self.idle_timeout_secs,
            "idle_timeout_secs",
            0,
            MAX_SECS,
            defaults::IDLE_TIMEOUT_SECS.into(),
        )?;
        let dpd = int(
            self.dpd_interval_secs,
            "dpd_interval_secs",
            1,
            3600,
            defaults::DPD_INTERVAL_SECS.into(),
        )?;
        let lifetime = int(
            self.session_lifetime_secs,
            "session_lifetime_secs",
            1,
            MAX_SECS,
            defaults::SESSION_LIFETIME_SECS.into(),
        )?;

        let tun_name = self
            .tun_name
            .unwrap_or_else(|| defaults::TUN_NAME.to_string());
        if !tun_name_ok(&tun_name) {
            return Err(ConfigError::Invalid {
                key: key("tun_name"),
                value: tun_name,
                expected: TUN_NAME_RULE,
            });
        }

        let limits = self.limits.validate()?;

        let mut realm_configs = BTreeMap::new();
        let mut pools_seen: Vec<(String, IpNet)> =
            std::iter::once((key("pool.ipv4"), pool.ipv4.into()))
                .chain(pool.ipv6.map(|n| (key("pool.ipv6"), n.into())))
                .collect();
        for (name, raw) in self.realm {
            let table = format!("realm.{name}");
            if !auth.realms.contains(&name) {
                return Err(ConfigError::Invalid {
                    key: table,
                    value: name,
                    expected: "a realm listed in auth.realms",
                });
            }
            let realm = raw.validate(&table, &pool, &mut pools_seen)?;
            realm_configs.insert(name, realm);
        }

        Ok(GatewayConfig {
            listen,
            tls,
            auth,
            pool,
            routes,
            dns,
            search_domains: self.search_domains,
            mtu: u16::try_from(mtu).unwrap_or(defaults::MTU),
            esp,
            idle_timeout: (idle != 0).then(|| secs(idle)),
            dpd_interval: secs(dpd),
            session_lifetime: secs(lifetime),
            tun_name,
            limits,
            access: AccessConfig {
                client_to_client: self.access.client_to_client.unwrap_or(false),
                gateway: self.access.gateway.unwrap_or(false),
            },
            realms: realm_configs,
            state_dir,
            control_socket,
            metrics_listen,
            session_store,
        })
    }
}

/// Prefixes of a route list, `name[i]`; IPv6 ones only with an IPv6 pool (`pool_key`).
fn route_list(
    texts: &[String],
    name: &str,
    has_ipv6: bool,
    pool_key: &str,
) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let net = prefix(text, indexed(name, i))?;
        // A client with no IPv6 address cannot use an IPv6 route through the tunnel.
        if net.addr().is_ipv6() && !has_ipv6 {
            return Err(if pool_key == "pool.ipv6" {
                ConfigError::NeedsIpv6Pool {
                    key: indexed(name, i),
                    value: text.clone(),
                }
            } else {
                ConfigError::NeedsKey {
                    key: indexed(name, i),
                    other: pool_key.to_string(),
                }
            });
        }
        out.push(net);
    }
    no_duplicates(&out, name)?;
    Ok(out)
}

fn dns_list(texts: &[String], name: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let dns = texts
        .iter()
        .enumerate()
        .map(|(i, text)| ip(text, indexed(name, i)))
        .collect::<Result<Vec<_>, _>>()?;
    no_duplicates(&dns, name)?;
    Ok(dns)
}

fn domain_list(domains: &[String], name: &str) -> Result<(), ConfigError> {
    for (i, domain) in domains.iter().enumerate() {
        if !domain_ok(domain) {
            return Err(ConfigError::Invalid {
                key: indexed(name, i),
                value: domain.clone(),
                expected: DOMAIN_RULE,
            });
        }
    }
    Ok(())
}

/// An IPv4 address pool at `name`: a prefix of at most /30 (network, broadcast and a gateway
/// address are taken: a /30 leaves one). `expected` is the message for another family.
fn pool_v4(text: &str, name: String, expected: &'static str) -> Result<Ipv4Net, ConfigError> {
    match prefix(text, name.clone())? {
        IpNet::V4(net) if net.prefix_len() <= 30 => Ok(net),
        IpNet::V4(net) => Err(ConfigError::PoolTooSmall {
            key: name,
            net: net.into(),
        }),
        IpNet::V6(_) => Err(ConfigError::Invalid {
            key: name,
            value: text.to_string(),
            expected,
        }),
    }
}

/// An IPv6 address pool at `name`: a prefix of at most /126 (IPv6 has no broadcast, but the
/// all-zeros address is the subnet-router anycast address, RFC 4291 section 2.6.1, and a
/// gateway takes one: a /126 leaves two).
fn pool_v6(text: &str, name: String, expected: &'static str) -> Result<Ipv6Net, ConfigError> {
    match prefix(text, name.clone())? {
        IpNet::V6(net) if net.prefix_len() <= 126 => Ok(net),
        IpNet::V6(net) => Err(ConfigError::PoolTooSmall {
            key: name,
            net: net.into(),
        }),
        IpNet::V4(_) => Err(ConfigError::Invalid {
            key: name,
            value: text.to_string(),
            expected,
        }),
    }
}

impl RawPool {
    fn validate(self) -> Result<PoolConfig, ConfigError> {
        let ipv4 = pool_v4(
            &self.ipv4,
            key("pool.ipv4"),
            "an IPv4 prefix such as 10.10.0.0/24",
        )?;
        let gateway_ipv4 = match &self.gateway_ipv4 {
            None => first_host_v4(ipv4),
            Some(text) => {
                let addr = match ip(text, key("pool.gateway_ipv4"))? {
                    IpAddr::V4(a) => a,
                    IpAddr::V6(_) => {
                        return Err(ConfigError::Invalid {
                            key: key("pool.gateway_ipv4"),
                            value: text.clone(),
                            expected: "an IPv4 address",
                        });
                    }
                };
                if !ipv4.contains(&addr) || addr == ipv4.network() || addr == ipv4.broadcast() {
                    return Err(ConfigError::OutsidePool {
                        key: key("pool.gateway_ipv4"),
                        addr: addr.into(),
                        pool: ipv4.into(),
                    });
                }
                addr
            }
        };

        let ipv6 = self
            .ipv6
            .as_deref()
            .map(|text| {
                pool_v6(
                    text,
                    key("pool.ipv6"),
                    "an IPv6 prefix such as fd00:10::/64",
                )
            })
            .transpose()?;
        let gateway_ipv6 = match (&self.gateway_ipv6, ipv6) {
            (None, net) => net.map(first_host_v6),
            (Some(text), None) => {
                return Err(ConfigError::NeedsIpv6Pool {
                    key: key("pool.gateway_ipv6"),
                    value: text.clone(),
                });
            }
            (Some(text), Some(net)) => {
                let addr = match ip(text, key("pool.gateway_ipv6"))? {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(_) => {
                        return Err(ConfigError::Invalid {
                            key: key("pool.gateway_ipv6"),
                            value: text.clone(),
                            expected: "an IPv6 address",
                        });
                    }
                };
                if !net.contains(&addr) || addr == net.network() {
                    return Err(ConfigError::OutsidePool {
                        key: key("pool.gateway_ipv6"),
                        addr: addr.into(),
                        pool: net.into(),
                    });
                }
                Some(addr)
            }
        };
        Ok(PoolConfig {
            ipv4,
            gateway_ipv4,
            ipv6,
            gateway_ipv6,
        })
    }
}

fn first_host_v4(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

fn first_host_v6(net: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).wrapping_add(1))
}

impl RawEsp {
    fn validate(self) -> Result<EspConfig, ConfigError> {
        let enabled = self.enabled.unwrap_or(true);
        let port = port(self.port, "esp.port", defaults::ESP_PORT)?;
        let ciphers = match &self.ciphers {
            None => defaults::ESP_CIPHERS.to_vec(),
            Some(names) => names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    parse_suite(name).ok_or_else(|| ConfigError::Invalid {
                        key: indexed("esp.ciphers", i),
                        value: name.clone(),
                        expected: CIPHER_RULE,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        // With ESP off the list is never used, so an empty one is harmless.
        if enabled && ciphers.is_empty() {
            return Err(ConfigError::Empty {
                key: key("esp.ciphers"),
            });
        }
        // Each name is one suite's: a repeated suite is a repeated name.
        no_duplicates(self.ciphers.as_deref().unwrap_or_default(), "esp.ciphers")?;
        let fallback = int(
            self.fallback_secs,
            "esp.fallback_secs",
            0,
            3600,
            defaults::ESP_FALLBACK_SECS.into(),
        )?;
        let key_lifetime = int(
            self.key_lifetime_secs,
            "esp.key_lifetime_secs",
            60,
            7 * 24 * 3600,
            defaults::ESP_KEY_LIFETIME_SECS.into(),
        )?;
        let key_bytes = int(
            self.key_lifetime_bytes,
            "esp.key_lifetime_bytes",
            0,
            u32::MAX.into(),
            defaults::ESP_KEY_LIFETIME_BYTES.into(),
        )?;
        Ok(EspConfig {
            enabled,
            port,
            ciphers,
            fallback: (fallback != 0).then(|| secs(fallback)),
            key_lifetime: secs(key_lifetime),
            key_lifetime_bytes: u32::try_from(key_bytes).ok().and_then(NonZeroU32::new),
        })
    }
}

// ---- [realm.NAME]: per-realm login steps and session settings ----

/// `realm.NAME.second_factor`: what is asked after the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SecondFactor {
    /// `"none"`: the password (or certificate) is enough.
    #[default]
    None,
    /// `"totp"`: a TOTP code from the user's authenticator (`adduser --totp`).
    Totp,
}

impl SecondFactor {
    const ALL: [SecondFactor; 2] = [SecondFactor::None, SecondFactor::Totp];

    /// The name used in the config file.
    pub const fn name(self) -> &'static str {
        match self {
            SecondFactor::None => "none",
            SecondFactor::Totp => "totp",
        }
    }
}

impl fmt::Display for SecondFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `realm.NAME.session_limit`: what a login does when its user already has
/// `max_sessions_per_user` sessions in the realm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SessionLimit {
    /// `"ask"`: the login lists the user's sessions and the client picks one to end (the
    /// Ivanti way; openconnect, tunnel and the launcher's `-sessionselection` answer).
    #[default]
    Ask,
    /// `"end_oldest"`: the oldest sessions are ended, their clients told why.
    EndOldest,
    /// `"refuse"`: the login is refused; the user ends a session first.
    Refuse,
}

impl SessionLimit {
    const ALL: [SessionLimit; 3] = [
        SessionLimit::Ask,
        SessionLimit::EndOldest,
        SessionLimit::Refuse,
    ];

    /// The name used in the config file.
    pub const fn name(self) -> &'static str {
        match self {
            SessionLimit::Ask => "ask",
            SessionLimit::EndOldest => "end_oldest",
            SessionLimit::Refuse => "refuse",
        }
    }
}

impl fmt::Display for SessionLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `realm.NAME.pre_auth_notice` / `post_auth_notice`: a text shown during the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `text`: 1-4000 bytes of UTF-8, no NUL.
    pub text: String,
    /// `accept`: the user must accept it to go on (default true); false shows it only.
    pub accept: bool,
}

impl Notice {
    /// The longest notice: what fits an AVP with room to spare in a login frame.
    pub const MAX_BYTES: usize = 4000;
}

/// A realm's own address pool; the gateway's own addresses stay those of `[pool]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealmPool {
    /// `realm.NAME.pool_ipv4`: /30 or shorter (network and broadcast are never handed out).
    pub ipv4: Ipv4Net,
    /// `realm.NAME.pool_ipv6`: /126 or shorter. Without it the realm's clients get no IPv6
    /// address.
    pub ipv6: Option<Ipv6Net>,
}

/// `[realm.NAME]` as written: `None` for a key not set, which takes the global value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RealmConfig {
    /// `second_factor`: default `"none"`.
    pub second_factor: SecondFactor,
    /// `max_sessions_per_user`: 0 in the file (here `None`) means unlimited. 0-10000,
    /// default 0.
    pub max_sessions_per_user: Option<NonZeroU32>,
    /// `session_limit`: what a login at that limit does. Default `"ask"`; needs
    /// `max_sessions_per_user`.
    pub session_limit: SessionLimit,
    /// `[realm.NAME.pre_auth_notice]`: shown before the password is asked for.
    pub pre_auth_notice: Option<Notice>,
    /// `[realm.NAME.post_auth_notice]`: shown after every check passed, before the session.
    pub post_auth_notice: Option<Notice>,
    /// `dns`: instead of the global `dns`.
    pub dns: Option<Vec<IpAddr>>,
    /// `search_domains`: instead of the global `search_domains`.
    pub search_domains: Option<Vec<String>>,
    /// `routes_include`: instead of `routes.include`.
    pub routes_include: Option<Vec<IpNet>>,
    /// `routes_exclude`: instead of `routes.exclude`.
    pub routes_exclude: Option<Vec<IpNet>>,
    /// `pool_ipv4` and `pool_ipv6`: instead of `[pool]`'s client addresses.
    pub pool: Option<RealmPool>,
}

/// The password rules of `[auth]`, as a login sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordRules {
    /// `auth.password_request`.
    pub request: PasswordRequest,
    /// `auth.passwords.min_length`, in characters.
    pub min_length: u32,
    /// `auth.passwords.max_age_days`; `None` for never.
    pub max_age: Option<Duration>,
}

/// Which pool a realm's sessions take their addresses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolChoice {
    /// `[pool]`.
    Global,
    /// The realm's own.
    Own(RealmPool),
}

/// What a login to one realm goes through and what its session gets: the realm's table with
/// the global settings filled in. Built by [`GatewayConfig::realm_policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RealmPolicy {
    pub name: String,
    pub passwords: PasswordRules,
    pub second_factor: SecondFactor,
    pub max_sessions_per_user: Option<NonZeroU32>,
    pub session_limit: SessionLimit,
    pub pre_auth_notice: Option<Notice>,
    pub post_auth_notice: Option<Notice>,
    pub dns: Vec<IpAddr>,
    pub search_domains: Vec<String>,
    pub routes: RoutesConfig,
    pub pool: PoolChoice,
}

impl GatewayConfig {
    /// The password rules of `[auth]`.
    pub fn password_rules(&self) -> PasswordRules {
        PasswordRules {
            request: self.auth.password_request,
            min_length: self.auth.passwords.min_length,
            max_age: self.auth.passwords.max_age,
        }
    }

    /// The effective settings of `realm`, or `None` if it is not one of `auth.realms`.
    pub fn realm_policy(&self, realm: &str) -> Option<RealmPolicy> {
        if !self.auth.realms.iter().any(|r| r == realm) {
            return None;
        }
        let own = self.realms.get(realm).cloned().unwrap_or_default();
        Some(RealmPolicy {
            name: realm.to_string(),
            passwords: self.password_rules(),
            second_factor: own.second_factor,
            max_sessions_per_user: own.max_sessions_per_user,
            session_limit: own.session_limit,
            pre_auth_notice: own.pre_auth_notice,
            post_auth_notice: own.post_auth_notice,
            dns: own.dns.unwrap_or_else(|| self.dns.clone()),
            search_domains: own
                .search_domains
                .unwrap_or_else(|| self.search_domains.clone()),
            routes: RoutesConfig {
                include: own
                    .routes_include
                    .unwrap_or_else(|| self.routes.include.clone()),
                exclude: own
                    .routes_exclude
                    .unwrap_or_else(|| self.routes.exclude.clone()),
            },
            pool: own.pool.map_or(PoolChoice::Global, PoolChoice::Own),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealm {
    second_factor: Option<String>,
    max_sessions_per_user: Option<i64>,
    session_limit: Option<String>,
    pre_auth_notice: Option<RawNotice>,
    post_auth_notice: Option<RawNotice>,
    dns: Option<Vec<String>>,
    search_domains: Option<Vec<String>>,
    routes_include: Option<Vec<String>>,
    routes_exclude: Option<Vec<String>>,
    pool_ipv4: Option<String>,
    pool_ipv6: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotice {
    text: String,
    accept: Option<bool>,
}

impl RawNotice {
    fn validate(self, table: &str) -> Result<Notice, ConfigError> {
        let key = format!("{table}.text");
        if !(1..=Notice::MAX_BYTES).contains(&self.text.len()) {
            return Err(ConfigError::TextLength {
                key,
                len: self.text.len(),
                min: 1,
                max: Notice::MAX_BYTES,
            });
        }
        if self.text.contains('\0') {
            return Err(ConfigError::TextNul { key });
        }
        Ok(Notice {
            text: self.text,
            accept: self.accept.unwrap_or(true),
        })
    }
}

impl RawRealm {
    /// `table` is `realm.NAME`; `global` the validated `[pool]`; `pools` every pool seen so
    /// far with its key, which this realm's pools must not overlap (and join).
    fn validate(
        self,
        table: &str,
        global: &PoolConfig,
        pools: &mut Vec<(String, IpNet)>,
    ) -> Result<RealmConfig, ConfigError> {
        let k = |name: &str| format!("{table}.{name}");
        let second_factor = match self.second_factor {
            None => SecondFactor::None,
            Some(text) => SecondFactor::ALL
                .into_iter()
                .find(|f| f.name() == text)
                .ok_or_else(|| ConfigError::Invalid {
                    key: k("second_factor"),
                    value: text.clone(),
                    expected: "a second factor (one of none, totp)",
                })?,
        };
        let max_sessions = int(
            self.max_sessions_per_user,
            &k("max_sessions_per_user"),
            0,
            10_000,
            0,
        )?;
        let session_limit = match self.session_limit {
            None => SessionLimit::Ask,
            Some(_) if max_sessions == 0 => {
                return Err(ConfigError::NeedsKey {
                    key: k("session_limit"),
                    other: k("max_sessions_per_user"),
                });
            }
            Some(text) => SessionLimit::ALL
                .into_iter()
                .find(|l| l.name() == text)
                .ok_or_else(|| ConfigError::Invalid {
                    key: k("session_limit"),
                    value: text.clone(),
                    expected: "what a login at the limit does (one of ask, end_oldest, refuse)",
                })?,
        };
        let pre_auth_notice = self
            .pre_auth_notice
            .map(|n| n.validate(&k("pre_auth_notice")))
            .transpose()?;
        let post_auth_notice = self
            .post_auth_notice
            .map(|n| n.validate(&k("post_auth_notice")))
            .transpose()?;

        let pool = match (&self.pool_ipv4, &self.pool_ipv6) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::NeedsKey {
                    key: k("pool_ipv6"),
                    other: k("pool_ipv4"),
                });
            }
            (Some(v4), v6) => {
                let ipv4 = pool_v4(v4, k("pool_ipv4"), "an IPv4 prefix such as 10.20.0.0/24")?;
                let ipv6 = v6
                    .as_deref()
                    .map(|text| {
                        pool_v6(text, k("pool_ipv6"), "an IPv6 prefix such as fd00:20::/64")
                    })
                    .transpose()?;
                let mine = std::iter::once((k("pool_ipv4"), IpNet::from(ipv4)))
                    .chain(ipv6.map(|n| (k("pool_ipv6"), IpNet::from(n))));
                for (name, net) in mine {
                    if let Some((other_key, other)) = pools
                        .iter()
                        .find(|(_, o)| o.contains(&net) || net.contains(o))
                    {
                        return Err(ConfigError::Overlap {
                            key: name,
                            net,
                            other_key: other_key.clone(),
                            other: *other,
                        });
                    }
                    pools.push((name, net));
                }
                Some(RealmPool { ipv4, ipv6 })
            }
        };
        // IPv6 routes need an IPv6 address for the realm's clients.
        let (has_ipv6, pool_key) = match &pool {
            Some(own) => (own.ipv6.is_some(), k("pool_ipv6")),
            None => (global.ipv6.is_some(), key("pool.ipv6")),
        };
        let routes = |list: Option<Vec<String>>, name: &str| {
            list.map(|texts| route_list(&texts, &k(name), has_ipv6, &pool_key))
                .transpose()
        };
        let routes_include = routes(self.routes_include, "routes_include")?;
        let routes_exclude = routes(self.routes_exclude, "routes_exclude")?;
        let dns = self
            .dns
            .map(|texts| dns_list(&texts, &k("dns")))
            .transpose()?;
        if let Some(domains) = &self.search_domains {
            domain_list(domains, &k("search_domains"))?;
        }
        Ok(RealmConfig {
            second_factor,
            max_sessions_per_user: u32::try_from(max_sessions).ok().and_then(NonZeroU32::new),
            session_limit,
            pre_auth_notice,
            post_auth_notice,
            dns,
            search_domains: self.search_domains,
            routes_include,
            routes_exclude,
            pool,
        })
    }
}

// ---- [auth.passwords] and [auth.certificate]: password limits and certificate login ----

/// `[auth.passwords]`: how fast passwords may be guessed, and how much password hashing may cost.
/// The rules are in `super::ratelimit` and `super::hasher`; docs/gateway-config.md has them
/// for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PasswordLimits {
    /// `auth.passwords.source_failures`: password attempts not yet proven right allowed from one
    /// source (IPv4 address or IPv6 /64) within `source_window`. 1-1000, default 5.
    pub source_failures: u32,
    /// `auth.passwords.source_window_secs`: 1-86400, default 60.
    pub source_window: Duration,
    /// `auth.passwords.account_failures`: the same per typed user name, all sources together.
    /// 1-1000, default 10.
    pub account_failures: u32,
    /// `auth.passwords.account_window_secs`: 1-86400, default 300.
    pub account_window: Duration,
    /// `auth.passwords.known_source_secs`: a source that logged in to an account within this long
    /// is exempt from that account's window. 0 (no exemption) - 31536000, default 604800.
    pub known_source: Duration,
    /// `auth.passwords.hash_workers`: password hashes computed at once. 0 in the file (here
    /// `None`) means one per CPU core, at most 8. 0-256, default 0.
    pub hash_workers: Option<u32>,
    /// `auth.passwords.hash_queue`: logins that may wait for a hashing worker. 1-100000,
    /// default 64.
    pub hash_queue: u32,
    /// `auth.passwords.hash_wait_ms`: how long a login waits for a hashing worker before it is
    /// refused as busy. 10-60000, default 5000.
    pub hash_wait: Duration,
    /// `auth.passwords.hash_max_memory_kib`: the largest argon2 memory cost a users file may use.
    /// 19456-1048576, default 65536.
    pub hash_max_memory_kib: u32,
    /// `auth.passwords.min_length`: the fewest characters a new password may have. 1-253
    /// (1-18 with `auth.password_request = "current"`), default 8.
    pub min_length: u32,
    /// `auth.passwords.max_age_days`: a password set longer ago than this must be changed at
    /// login. 0 in the file (here `None`) means never. 0-3650, default 0.
    pub max_age: Option<Duration>,
}

impl Default for PasswordLimits {
    fn default() -> Self {
        PasswordLimits {
            source_failures: 5,
            source_window: Duration::from_secs(60),
            account_failures: 10,
            account_window: Duration::from_secs(300),
            known_source: Duration::from_secs(7 * 24 * 3600),
            hash_workers: None,
            hash_queue: 64,
            hash_wait: Duration::from_secs(5),
            hash_max_memory_kib: HashLimits::DEFAULT_MEMORY_KIB,
            min_length: 8,
            max_age: None,
        }
    }
}

impl PasswordLimits {
    /// `hash_workers = 0` takes one worker per core up to this many: each holds up to
    /// `hash_max_memory_kib` of memory, and more workers than cores only share the same CPUs.
    pub const AUTO_WORKERS_MAX: u32 = 8;
    /// The accepted range of `hash_max_memory_kib`: from the cost `adduser` writes (argon2's
    /// default, also the cost of the dummy hash unknown users are checked against) to 1 GiB.
    pub const MEMORY_KIB_RANGE: std::ops::RangeInclusive<u32> =
        HashLimits::MIN_MEMORY_KIB..=HashLimits::MAX_MEMORY_KIB;

    /// The number of hashing workers: `hash_workers`, or one per core (at most
    /// [`PasswordLimits::AUTO_WORKERS_MAX`]).
    pub fn workers(&self) -> usize {
        match self.hash_workers {
            Some(n) => n as usize,
            None => std::thread::available_parallelism()
                .map_or(1, usize::from)
                .min(PasswordLimits::AUTO_WORKERS_MAX as usize),
        }
    }
}

/// `auth.certificate.user`: which name in a client certificate is the user's name in the
/// users file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateName {
    /// `"cn"`: the subject's common name (exactly one).
    CommonName,
    /// `"email"`: the subject alternative name of type rfc822Name (exactly one).
    Email,
    /// `"upn"`: the Microsoft user principal name, a subject alternative name of type
    /// otherName 1.3.6.1.4.1.311.20.2.3 (exactly one).
    Upn,
}

impl CertificateName {
    const ALL: [CertificateName; 3] = [
        CertificateName::CommonName,
        CertificateName::Email,
        CertificateName::Upn,
    ];

    /// The name used in the config file.
    pub const fn name(self) -> &'static str {
        match self {
            CertificateName::CommonName => "cn",
            CertificateName::Email => "email",
            CertificateName::Upn => "upn",
        }
    }
}

impl fmt::Display for CertificateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a client certificate grants in a realm (`auth.certificate.login` and
/// `auth.certificate.realms`). In every mode a certificate that is presented must name the
/// user who logs in, and that user must be in the users file and a member of the realm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateLogin {
    /// `"password"`: the password is checked; a certificate is optional.
    Password,
    /// `"certificate-and-password"`: both a certificate and the password are required.
    CertificateAndPassword,
    /// `"certificate"`: a certificate is required and replaces the password (not checked).
    Certificate,
}

impl CertificateLogin {
    const ALL: [CertificateLogin; 3] = [
        CertificateLogin::Password,
        CertificateLogin::CertificateAndPassword,
        CertificateLogin::Certificate,
    ];

    /// The name used in the config file.
    pub const fn name(self) -> &'static str {
        match self {
            CertificateLogin::Password => "password",
            CertificateLogin::CertificateAndPassword => "certificate-and-password",
            CertificateLogin::Certificate => "certificate",
        }
    }

    /// Whether a login without a certificate is refused.
    pub const fn needs_certificate(self) -> bool {
        !matches!(self, CertificateLogin::Password)
    }

    /// Whether the password is checked.
    pub const fn needs_password(self) -> bool {
        !matches!(self, CertificateLogin::Certificate)
    }
}

impl fmt::Display for CertificateLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[auth.certificate]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateConfig {
    /// `auth.certificate.user`: default `"cn"`.
    pub user: CertificateName,
    /// `auth.certificate.login`: what a certificate grants in realms not in `realms`. Default
    /// `"password"` (it does not replace the password).
    pub login: CertificateLogin,
    /// `auth.certificate.realms`: what a certificate grants, per realm of `auth.realms`.
    pub realms: BTreeMap<String, CertificateLogin>,
    /// `auth.certificate.crl_files`: certificate revocation lists (PEM or DER), checked for
    /// the client certificate during the TLS handshake, re-read when they change.
    pub crl_files: Vec<PathBuf>,
}

impl Default for CertificateConfig {
    fn default() -> Self {
        CertificateConfig {
            user: CertificateName::CommonName,
            login: CertificateLogin::Password,
            realms: BTreeMap::new(),
            crl_files: Vec::new(),
        }
    }
}

impl CertificateConfig {
    /// What a certificate grants in `realm`.
    pub fn login_for(&self, realm: &str) -> CertificateLogin {
        self.realms.get(realm).copied().unwrap_or(self.login)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPasswords {
    source_failures: Option<i64>,
    source_window_secs: Option<i64>,
    account_failures: Option<i64>,
    account_window_secs: Option<i64>,
    known_source_secs: Option<i64>,
    hash_workers: Option<i64>,
    hash_queue: Option<i64>,
    hash_wait_ms: Option<i64>,
    hash_max_memory_kib: Option<i64>,
    min_length: Option<i64>,
    max_age_days: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    user: Option<String>,
    login: Option<String>,
    #[serde(default)]
    realms: BTreeMap<String, String>,
    #[serde(default)]
    crl_files: Vec<PathBuf>,
}

const CERTIFICATE_NAME_RULE: &str = "a certificate name (one of cn, email, upn)";
const CERTIFICATE_LOGIN_RULE: &str =
    "a certificate login (one of password, certificate-and-password, certificate)";

impl RawPasswords {
    fn validate(self) -> Result<PasswordLimits, ConfigError> {
        let d = PasswordLimits::default();
        let count = |v, name, max: i64, default: u32| -> Result<u32, ConfigError> {
            int(v, name, 1, max, default.into()).map(|v| u32::try_from(v).unwrap_or(default))
        };
        let window = |v, name, default: Duration| {
            int(
                v,
                name,
                1,
                86_400,
                default.as_secs().try_into().unwrap_or(60),
            )
            .map(secs)
        };
        let source_failures = count(
            self.source_failures,
            "auth.passwords.source_failures",
            1000,
            d.source_failures,
        )?;
        let source_window = window(
            self.source_window_secs,
            "auth.passwords.source_window_secs",
            d.source_window,
        )?;
        let account_failures = count(
            self.account_failures,
            "auth.passwords.account_failures",
            1000,
            d.account_failures,
        )?;
        let account_window = window(
            self.account_window_secs,
            "auth.passwords.account_window_secs",
            d.account_window,
        )?;
        let known_source = int(
            self.known_source_secs,
            "auth.passwords.known_source_secs",
            0,
            MAX_SECS,
            d.known_source.as_secs().try_into().unwrap_or(0),
        )
        .map(secs)?;
        let workers = int(self.hash_workers, "auth.passwords.hash_workers", 0, 256, 0)?;
        let hash_queue = count(
            self.hash_queue,
            "auth.passwords.hash_queue",
            100_000,
            d.hash_queue,
        )?;
        let wait_ms = int(
            self.hash_wait_ms,
            "auth.passwords.hash_wait_ms",
            10,
            60_000,
            d.hash_wait.as_millis().try_into().unwrap_or(5000),
        )?;
        let memory = int(
            self.hash_max_memory_kib,
            "auth.passwords.hash_max_memory_kib",
            (*PasswordLimits::MEMORY_KIB_RANGE.start()).into(),
            (*PasswordLimits::MEMORY_KIB_RANGE.end()).into(),
            d.hash_max_memory_kib.into(),
        )?;
        Ok(PasswordLimits {
            source_failures,
            source_window,
            account_failures,
            account_window,
            known_source,
            hash_workers: u32::try_from(workers).ok().filter(|w| *w != 0),
            hash_queue,
            hash_wait: Duration::from_millis(wait_ms.unsigned_abs()),
            hash_max_memory_kib: u32::try_from(memory).unwrap_or(d.hash_max_memory_kib),
            min_length: count(
                self.min_length,
                "auth.passwords.min_length",
                PasswordRequest::MAX_BYTES as i64,
                d.min_length,
            )?,
            max_age: match int(self.max_age_days, "auth.passwords.max_age_days", 0, 3650, 0)? {
                0 => None,
                days => Some(secs(days * 86_400)),
            },
        })
    }
}

impl RawCertificate {
    /// `realms` are `auth.realms`; `client_ca` says whether certificate login is on at all.
    fn validate(
        self,
        realms: &[String],
        client_ca: bool,
    ) -> Result<CertificateConfig, ConfigError> {
        // Every key here is about certificates: without a CA none of them could take effect.
        if !client_ca {
            let set = [
                ("user", self.user.is_some()),
                ("login", self.login.is_some()),
                ("realms", !self.realms.is_empty()),
                ("crl_files", !self.crl_files.is_empty()),
            ];
            if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
                return Err(ConfigError::NeedsClientCa {
                    key: format!("auth.certificate.{name}"),
                });
            }
        }
        let mut config = CertificateConfig::default();
        if let Some(text) = self.user {
            config.user = CertificateName::ALL
                .into_iter()
                .find(|n| n.name() == text)
                .ok_or_else(|| ConfigError::Invalid {
                    key: key("auth.certificate.user"),
                    value: text.clone(),
                    expected: CERTIFICATE_NAME_RULE,
                })?;
        }
        let login = |text: &str, name: String| {
            CertificateLogin::ALL
                .into_iter()
                .find(|l| l.name() == text)
                .ok_or_else(|| ConfigError::Invalid {
                    key: name,
                    value: text.to_string(),
                    expected: CERTIFICATE_LOGIN_RULE,
                })
        };
        if let Some(text) = self.login {
            config.login = login(&text, key("auth.certificate.login"))?;
        }
        for (realm, text) in self.realms {
            let name = format!("auth.certificate.realms.{realm}");
            if !realms.contains(&realm) {
                return Err(ConfigError::Invalid {
                    key: name,
                    value: realm,
                    expected: "a realm listed in auth.realms",
                });
            }
            let mode = login(&text, name)?;
            config.realms.insert(realm, mode);
        }
        for (i, p) in self.crl_files.into_iter().enumerate() {
            config
                .crl_files
                .push(path(p, &indexed("auth.certificate.crl_files", i))?);
        }
        no_duplicates(&config.crl_files_display(), "auth.certificate.crl_files")?;
        Ok(config)
    }
}

impl CertificateConfig {
    fn crl_files_display(&self) -> Vec<String> {
        self.crl_files
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }
}

impl fmt::Display for PasswordLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, key: &str, value: String| {
            writeln!(f, "auth.passwords.{key:<19} {value}")
        };
        line(f, "source_failures", self.source_failures.to_string())?;
        line(
            f,
            "source_window_secs",
            format!("{} s", self.source_window.as_secs()),
        )?;
        line(f, "account_failures", self.account_failures.to_string())?;
        line(
            f,
            "account_window_secs",
            format!("{} s", self.account_window.as_secs()),
        )?;
        line(
            f,
            "known_source_secs",
            match self.known_source.as_secs() {
                0 => "0 (no exemption)".to_string(),
                n => format!("{n} s"),
            },
        )?;
        line(
            f,
            "hash_workers",
            match self.hash_workers {
                Some(n) => n.to_string(),
                None => format!(
                    "0 (one per core, at most {}: {} here)",
                    PasswordLimits::AUTO_WORKERS_MAX,
                    self.workers()
                ),
            },
        )?;
        line(f, "hash_queue", self.hash_queue.to_string())?;
        line(
            f,
            "hash_wait_ms",
            format!("{} ms", self.hash_wait.as_millis()),
        )?;
        line(
            f,
            "hash_max_memory_kib",
            self.hash_max_memory_kib.to_string(),
        )?;
        line(f, "min_length", self.min_length.to_string())?;
        line(
            f,
            "max_age_days",
            self.max_age.map_or("0 (never)".to_string(), |a| {
                (a.as_secs() / 86_400).to_string()
            }),
        )
    }
}

impl fmt::Display for CertificateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let realms = self
            .realms
            .iter()
            .map(|(r, m)| format!("{r}={m}"))
            .collect::<Vec<_>>();
        let or_none = |v: Vec<String>| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "auth.certificate.user      {}", self.user)?;
        writeln!(f, "auth.certificate.login     {}", self.login)?;
        writeln!(f, "auth.certificate.realms    {}", or_none(realms))?;
        writeln!(
            f,
            "auth.certificate.crl_files {}",
            or_none(self.crl_files_display())
        )
    }
}

/// The effective configuration, one key per line, defaults filled in: what
/// `tunnel-gateway --check-config` prints and what the runtime can log at start-up.
impl fmt::Display for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(items: &[T]) -> String {
            if items.is_empty() {
                "(none)".to_string()
            } else {
                items
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
        fn opt_secs(d: Option<Duration>, zero: &str) -> String {
            d.map_or(zero.to_string(), |d| format!("{} s", d.as_secs()))
        }
        writeln!(f, "listen                 {}", self.listen)?;
        writeln!(
            f,
            "tls.certificate        {}",
            self.tls.certificate.display()
        )?;
        writeln!(f, "tls.key                {}", self.tls.key.display())?;
        writeln!(
            f,
            "tls.client_ca          {}",
            self.tls
                .client_ca
                .as_ref()
                .map_or("(none: certificate login off)".to_string(), |p| p
                    .display()
                    .to_string())
        )?;
        writeln!(
            f,
            "auth.users_file        {}",
            self.auth.users_file.display()
        )?;
        writeln!(f, "auth.realms            {}", list(&self.auth.realms))?;
        writeln!(f, "state_dir              {}", self.state_dir.display())?;
        writeln!(
            f,
            "control_socket         {}",
            self.control_socket.display()
        )?;
        writeln!(
            f,
            "metrics_listen         {}",
            self.metrics_listen
                .map_or("(none: metrics off)".to_string(), |a| a.to_string())
        )?;
        writeln!(f, "session_store          {}", self.session_store)?;
        writeln!(f, "auth.password_request  {}", self.auth.password_request)?;
        write!(f, "{}", self.auth.passwords)?;
        write!(f, "{}", self.auth.certificate)?;
        writeln!(f, "pool.ipv4              {}", self.pool.ipv4)?;
        writeln!(f, "pool.gateway_ipv4      {}", self.pool.gateway_ipv4)?;
        match (self.pool.ipv6, self.pool.gateway_ipv6) {
            (Some(net), Some(gw)) => {
                writeln!(f, "pool.ipv6              {net}")?;
                writeln!(f, "pool.gateway_ipv6      {gw}")?;
            }
            _ => writeln!(f, "pool.ipv6              (none)")?,
        }
        writeln!(f, "routes.include         {}", list(&self.routes.include))?;
        writeln!(f, "routes.exclude         {}", list(&self.routes.exclude))?;
        writeln!(f, "dns                    {}", list(&self.dns))?;
        writeln!(f, "search_domains         {}", list(&self.search_domains))?;
        writeln!(f, "mtu                    {}", self.mtu)?;
        writeln!(f, "esp.enabled            {}", self.esp.enabled)?;
        writeln!(f, "esp.port               {}", self.esp.port)?;
        let suites: Vec<&str> = self.esp.ciphers.iter().map(|s| suite_name(*s)).collect();
        writeln!(f, "esp.ciphers            {}", list(&suites))?;
        writeln!(
            f,
            "esp.fallback_secs      {}",
            opt_secs(self.esp.fallback, "0 (client chooses)")
        )?;
        writeln!(
            f,
            "esp.key_lifetime_secs  {} s",
            self.esp.key_lifetime.as_secs()
        )?;
        writeln!(
            f,
            "esp.key_lifetime_bytes {}",
            self.esp
                .key_lifetime_bytes
                .map_or("0 (no limit)".to_string(), |b| b.to_string())
        )?;
        writeln!(
            f,
            "idle_timeout_secs      {}",
            opt_secs(self.idle_timeout, "0 (never)")
        )?;
        writeln!(
            f,
            "dpd_interval_secs      {} s",
            self.dpd_interval.as_secs()
        )?;
        writeln!(
            f,
            "session_lifetime_secs  {} s",
            self.session_lifetime.as_secs()
        )?;
        writeln!(f, "tun_name               {}", self.tun_name)?;
        let l = &self.limits;
        writeln!(
            f,
            "limits.login_connections            {}",
            l.login_connections
        )?;
        writeln!(
            f,
            "limits.login_connections_per_source {}",
            l.login_connections_per_source
        )?;
        writeln!(
            f,
            "limits.tls_handshake_secs           {} s",
            l.tls_handshake.as_secs()
        )?;
        writeln!(
            f,
            "limits.login_step_secs              {} s",
            l.login_step.as_secs()
        )?;
        writeln!(
            f,
            "limits.user_step_secs               {} s",
            l.user_step.as_secs()
        )?;
        writeln!(
            f,
            "limits.login_secs                   {} s",
            l.login.as_secs()
        )?;
        writeln!(
            f,
            "limits.login_frame_bytes            {}",
            l.login_frame_bytes
        )?;
        writeln!(
            f,
            "limits.max_sessions                 {}",
            match l.max_sessions {
                0 => "0 (no cap but the pools)".to_string(),
                n => n.to_string(),
            }
        )?;
        writeln!(
            f,
            "access.client_to_client {}",
            self.access.client_to_client
        )?;
        write!(f, "access.gateway          {}", self.access.gateway)?;
        for realm in &self.auth.realms {
            let Some(p) = self.realm_policy(realm) else {
                continue;
            };
            let own = self.realms.get(realm).cloned().unwrap_or_default();
            // Inherited values are marked, so an override is seen at a glance.
            let from = |set: bool| if set { "" } else { " (global)" };
            let line = |f: &mut fmt::Formatter<'_>, name: &str, value: String| {
                writeln!(f)?;
                write!(f, "realm.{realm}.{name:<21} {value}")
            };
            line(f, "second_factor", p.second_factor.to_string())?;
            line(
                f,
                "max_sessions_per_user",
                p.max_sessions_per_user
                    .map_or("0 (unlimited)".to_string(), |n| n.to_string()),
            )?;
            if p.max_sessions_per_user.is_some() {
                line(f, "session_limit", p.session_limit.to_string())?;
            }
            for (name, notice) in [
                ("pre_auth_notice", &p.pre_auth_notice),
                ("post_auth_notice", &p.post_auth_notice),
            ] {
                match notice {
                    None => line(f, name, "(none)".to_string())?,
                    Some(n) => {
                        line(
                            f,
                            &format!("{name}.text"),
                            format!("{} bytes", n.text.len()),
                        )?;
                        line(f, &format!("{name}.accept"), n.accept.to_string())?;
                    }
                }
            }
            line(
                f,
                "dns",
                format!("{}{}", list(&p.dns), from(own.dns.is_some())),
            )?;
            line(
                f,
                "search_domains",
                format!(
                    "{}{}",
                    list(&p.search_domains),
                    from(own.search_domains.is_some())
                ),
            )?;
            line(
                f,
                "routes_include",
                format!(
                    "{}{}",
                    list(&p.routes.include),
                    from(own.routes_include.is_some())
                ),
            )?;
            line(
                f,
                "routes_exclude",
                format!(
                    "{}{}",
                    list(&p.routes.exclude),
                    from(own.routes_exclude.is_some())
                ),
            )?;
            match p.pool {
                PoolChoice::Global => {
                    line(f, "pool_ipv4", format!("{} (global)", self.pool.ipv4))?;
                    line(
                        f,
                        "pool_ipv6",
                        self.pool
                            .ipv6
                            .map_or("(none)".to_string(), |n| format!("{n} (global)")),
                    )?;
                }
                PoolChoice::Own(own) => {
                    line(f, "pool_ipv4", own.ipv4.to_string())?;
                    line(
                        f,
                        "pool_ipv6",
                        own.ipv6.map_or("(none)".to_string(), |n| n.to_string()),
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../../docs/gateway-config.md");

    /// The ```toml blocks of docs/gateway-config.md, in order.
    fn doc_toml_blocks() -> Vec<String> {
        let mut blocks = Vec::new();
        let mut current: Option<String> = None;
        for line in DOC.lines() {
            match (&mut current, line.trim_end()) {
                (None, "```toml") => current = Some(String::new()),
                (Some(block), "```") => {
                    blocks.push(std::mem::take(block));
                    current = None;
                }
                (Some(block), _) => {
                    block.push_str(line);
                    block.push('\n');
                }
                (None, _) => {}
            }
        }
        blocks
    }

    const BASE: &str = r#"
[tls]
certificate = "server.pem"
key = "server.key"

[auth]
users_file = "users"

[pool]
ipv4 = "10.10.0.0/24"

[routes]

[esp]
"#;

    /// BASE with `line` added at the top level (`section` "") or at the top of `[section]`.
    fn with(section: &str, line: &str) -> String {
        if section.is_empty() {
            format!("{line}\n{BASE}")
        } else {
            let header = format!("[{section}]\n");
            assert!(BASE.contains(&header), "no [{section}] in BASE");
            BASE.replacen(&header, &format!("{header}{line}\n"), 1)
        }
    }

    #[test]
    fn the_session_cap_is_off_by_default_and_bounded() {
        assert_eq!(
            GatewayConfig::from_str(BASE).unwrap().limits.max_sessions,
            0
        );
        let limits = |v: &str| format!("{BASE}\n[limits]\nmax_sessions = {v}\n");
        let c = GatewayConfig::from_str(&limits("5")).unwrap();
        assert_eq!(c.limits.max_sessions, 5);
        for bad in ["-1", "10000001"] {
            expect_err(&limits(bad), "limits.max_sessions", "");
        }
    }

    #[test]
    fn the_session_store_is_embedded_or_a_redis_url() {
        let c = GatewayConfig::from_str(BASE).unwrap();
        assert_eq!(c.session_store, StoreChoice::Embedded);
        let c = GatewayConfig::from_str(&with(
            "",
            r#"session_store = "redis://:hunter2@10.0.0.5:6379/2""#,
        ))
        .unwrap();
        assert_eq!(
            c.session_store,
            StoreChoice::Redis("redis://:hunter2@10.0.0.5:6379/2".into())
        );
        // Shown without its password, in the printed configuration too.
        assert_eq!(c.session_store.to_string(), "redis://***@10.0.0.5:6379/2");
        assert!(!c.to_string().contains("hunter2"));
        for bad in ["redis", "http://10.0.0.5:6379", "redis://[::1", ""] {
            expect_err(
                &with("", &format!("session_store = \"{bad}\"")),
                "session_store",
                "Redis URL",
            );
        }
    }

    fn with_ipv6(section: &str, line: &str) -> String {
        with(section, line).replacen("[pool]\n", "[pool]\nipv6 = \"fd00:10::/64\"\n", 1)
    }

    /// Parses `text`, expects an error about `key` whose message contains `text_part`.
    #[track_caller]
    fn expect_err(text: &str, key: &str, text_part: &str) -> ConfigError {
        let err = match GatewayConfig::from_str(text) {
            Ok(config) => panic!("accepted, expected an error about {key}:\n{text}\n{config:?}"),
            Err(e) => e,
        };
        let message = err.to_string();
        assert_eq!(err.key(), Some(key), "{message}");
        assert!(
            message.contains(&format!("{key}: ")),
            "message does not name {key}: {message}"
        );
        assert!(
            message.contains(text_part),
            "{message:?} lacks {text_part:?}"
        );
        err
    }

    #[test]
    fn documented_example_parses_to_what_it_says() {
        let blocks = doc_toml_blocks();
        assert_eq!(
            blocks.len(),
            2,
            "docs/gateway-config.md should have two toml blocks"
        );
        let c = GatewayConfig::from_str(&blocks[0]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:443".parse().unwrap());
        assert_eq!(
            c.dns,
            vec![
                ip("10.10.0.53", String::new()).unwrap(),
                "fd00:10::53".parse().unwrap()
            ]
        );
        assert_eq!(c.search_domains, ["corp.example.com"]);
        assert_eq!(c.mtu, 1400);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(c.dpd_interval, Duration::from_secs(60));
        assert_eq!(c.session_lifetime, Duration::from_secs(43_200));
        assert_eq!(c.tun_name, "tgw0");
        assert_eq!(
            c.tls.certificate,
            Path::new("/etc/tunnel-gateway/server.pem")
        );
        assert_eq!(c.tls.key, Path::new("/etc/tunnel-gateway/server.key"));
        assert_eq!(
            c.tls.client_ca.as_deref(),
            Some(Path::new("/etc/tunnel-gateway/client-ca.pem"))
        );
        assert_eq!(c.auth.users_file, Path::new("/etc/tunnel-gateway/users"));
        assert_eq!(c.auth.realms, ["Users", "Admins"]);
        assert_eq!(c.pool.ipv4, "10.10.0.0/24".parse().unwrap());
        assert_eq!(c.pool.gateway_ipv4, Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(c.pool.ipv6, Some("fd00:10::/64".parse().unwrap()));
        assert_eq!(c.pool.gateway_ipv6, Some("fd00:10::1".parse().unwrap()));
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>();
        assert_eq!(
            c.routes.include,
            nets(&["10.0.0.0/8", "192.168.100.0/24", "fd00::/8"])
        );
        assert_eq!(c.routes.exclude, nets(&["10.99.0.0/16"]));
        assert!(c.esp.enabled);
        assert_eq!(c.esp.port, 4500);
        assert_eq!(
            c.esp.ciphers,
            [
                EspSuite::AES256_GCM,
                EspSuite {
                    cipher: EspCipher::Aes256Cbc,
                    mac: EspMac::HmacSha256_128
                },
                EspSuite {
                    cipher: EspCipher::Aes128Cbc,
                    mac: EspMac::HmacSha1_96
                }
            ]
        );
        assert_eq!(c.esp.fallback, Some(Duration::from_secs(15)));
        assert_eq!(c.esp.key_lifetime, Duration::from_secs(1200));
        assert_eq!(c.esp.key_lifetime_bytes, None);
        assert_eq!(c.auth.passwords, PasswordLimits::default());
        assert_eq!(c.auth.certificate.user, CertificateName::CommonName);
        assert_eq!(c.auth.certificate.login, CertificateLogin::Password);
        assert_eq!(
            c.auth.certificate.login_for("Admins"),
            CertificateLogin::CertificateAndPassword
        );
        assert_eq!(
            c.auth.certificate.login_for("Users"),
            CertificateLogin::Password
        );
        assert_eq!(
            c.auth.certificate.crl_files,
            [Path::new("/etc/tunnel-gateway/client-ca.crl")]
        );
        assert_eq!(c.auth.password_request, PasswordRequest::Current);
        assert_eq!(
            (c.auth.passwords.min_length, c.auth.passwords.max_age),
            (8, None)
        );
        // The Admins realm's own settings, and Users with the global ones.
        let admins = c.realm_policy("Admins").unwrap();
        assert_eq!(admins.second_factor, SecondFactor::Totp);
        assert_eq!(admins.max_sessions_per_user, NonZeroU32::new(1));
        assert_eq!(
            admins.pre_auth_notice,
            Some(Notice {
                text: "Authorised administrators only. Activity is logged.".into(),
                accept: true
            })
        );
        assert_eq!(
            admins.post_auth_notice.as_ref().map(|n| n.accept),
            Some(false)
        );
        assert_eq!(admins.dns, ["10.20.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(admins.search_domains, ["admin.corp.example.com"]);
        assert_eq!(admins.routes.include, nets(&["10.0.0.0/8", "fd00::/8"]));
        assert!(admins.routes.exclude.is_empty(), "an empty list overrides");
        assert_eq!(
            admins.pool,
            PoolChoice::Own(RealmPool {
                ipv4: "10.20.0.0/24".parse().unwrap(),
                ipv6: Some("fd00:20::/64".parse().unwrap()),
            })
        );
        let users = c.realm_policy("Users").unwrap();
        assert_eq!(users.second_factor, SecondFactor::None);
        assert_eq!(users.max_sessions_per_user, None);
        assert_eq!(
            (users.pre_auth_notice, users.post_auth_notice),
            (None, None)
        );
        assert_eq!(users.dns, c.dns);
        assert_eq!(users.search_domains, c.search_domains);
        assert_eq!(users.routes, c.routes);
        assert_eq!(users.pool, PoolChoice::Global);
        assert_eq!(users.passwords, c.password_rules());
        assert_eq!(c.realm_policy("Guests"), None);
    }

    #[test]
    fn documented_defaults_are_the_defaults() {
        let blocks = doc_toml_blocks();
        let minimal = GatewayConfig::from_str(&blocks[1]).unwrap();
        let full = GatewayConfig::from_str(&blocks[0]).unwrap();
        // Every scalar the full example spells out at its default must equal what the minimal
        // file gets by default.
        assert_eq!(minimal.listen, full.listen);
        assert_eq!(minimal.listen, defaults::LISTEN);
        assert_eq!(minimal.mtu, full.mtu);
        assert_eq!(minimal.idle_timeout, full.idle_timeout);
        assert_eq!(minimal.dpd_interval, full.dpd_interval);
        assert_eq!(minimal.session_lifetime, full.session_lifetime);
        assert_eq!(minimal.tun_name, full.tun_name);
        assert_eq!(minimal.esp.enabled, full.esp.enabled);
        assert_eq!(minimal.esp.port, full.esp.port);
        assert_eq!(minimal.esp.fallback, full.esp.fallback);
        assert_eq!(minimal.esp.key_lifetime, full.esp.key_lifetime);
        assert_eq!(minimal.esp.key_lifetime_bytes, full.esp.key_lifetime_bytes);
        assert_eq!(minimal.pool.gateway_ipv4, full.pool.gateway_ipv4);
        // And the defaults the docs state for lists.
        assert_eq!(minimal.auth.realms, ["Users"]);
        assert_eq!(
            minimal.esp.ciphers,
            [
                EspSuite::AES256_GCM,
                EspSuite {
                    cipher: EspCipher::Aes128Cbc,
                    mac: EspMac::HmacSha1_96
                }
            ]
        );
        assert!(minimal.dns.is_empty() && minimal.search_domains.is_empty());
        assert!(minimal.routes.include.is_empty() && minimal.routes.exclude.is_empty());
        assert_eq!(minimal.tls.client_ca, None);
        assert_eq!((minimal.pool.ipv6, minimal.pool.gateway_ipv6), (None, None));
        // The full example spells out every limit at its default.
        assert_eq!(minimal.auth.passwords, full.auth.passwords);
        assert_eq!(minimal.auth.certificate.user, full.auth.certificate.user);
        assert_eq!(minimal.auth.certificate.login, full.auth.certificate.login);
        assert!(minimal.auth.certificate.realms.is_empty());
        assert!(minimal.auth.certificate.crl_files.is_empty());
        assert_eq!(minimal.auth.password_request, full.auth.password_request);
        assert!(minimal.realms.is_empty());
        let users = minimal.realm_policy("Users").unwrap();
        assert_eq!(users.second_factor, SecondFactor::None);
        assert_eq!(users.max_sessions_per_user, None);
    }

    #[test]
    fn every_documented_key_is_in_the_key_table_and_the_summary() {
        let full = GatewayConfig::from_str(&doc_toml_blocks()[0]).unwrap();
        let summary = full.to_string();
        let mut table = String::new();
        // Dotted keys, into sub-tables, except the tables that are values (keyed by realm).
        fn flatten(prefix: &str, table: toml::Table, out: &mut Vec<String>) {
            for (name, value) in table {
                let key = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                };
                match value {
                    toml::Value::Table(t) if key != "auth.certificate.realms" => {
                        flatten(&key, t, out)
                    }
                    // An empty list of a realm's is still a key.
                    _ => out.push(key),
                }
            }
        }
        let mut keys = Vec::new();
        flatten(
            "",
            toml::from_str::<toml::Table>(&doc_toml_blocks()[0]).unwrap(),
            &mut keys,
        );
        assert!(keys.contains(&"auth.passwords.hash_workers".to_string()));
        assert!(keys.contains(&"realm.Admins.pre_auth_notice.accept".to_string()));
        for key in keys {
            table.push_str(&key);
            // The table documents realm keys once, as realm.NAME.
            let documented = match key.strip_prefix("realm.Admins.") {
                Some(rest) => format!("realm.NAME.{rest}"),
                None => key.clone(),
            };
            assert!(
                DOC.contains(&format!("| `{documented}` |")),
                "{documented} missing from the table"
            );
            assert!(
                summary.contains(&format!("{key} ")),
                "{key} missing from the summary"
            );
        }
        assert!(!table.is_empty());
    }

    #[test]
    fn defaults_from_the_smallest_file() {
        let c = GatewayConfig::from_str(BASE).unwrap();
        assert_eq!(c.pool.gateway_ipv4, Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(c.esp.fallback, Some(Duration::from_secs(15)));
        assert_eq!(c.mtu, 1400);
        let v6 = GatewayConfig::from_str(&with_ipv6("", "")).unwrap();
        assert_eq!(v6.pool.gateway_ipv6, Some("fd00:10::1".parse().unwrap()));
    }

    #[test]
    fn zero_means_never_or_unset() {
        let c = GatewayConfig::from_str(&with("", "idle_timeout_secs = 0")).unwrap();
        assert_eq!(c.idle_timeout, None);
        let c = GatewayConfig::from_str(&with("esp", "fallback_secs = 0")).unwrap();
        assert_eq!(c.esp.fallback, None);
        let c = GatewayConfig::from_str(&with("esp", "key_lifetime_bytes = 4294967295")).unwrap();
        assert_eq!(c.esp.key_lifetime_bytes, NonZeroU32::new(u32::MAX));
    }

    // One test per rule, each asserting that the message names the key.

    #[test]
    fn listen_must_be_an_address_and_port() {
        expect_err(
            &with("", r#"listen = "0.0.0.0""#),
            "listen",
            "is not an address:port",
        );
        expect_err(
            &with("", r#"listen = "0.0.0.0:0""#),
            "listen",
            "0 is not a port (1-65535)",
        );
        let c = GatewayConfig::from_str(&with("", r#"listen = "[::]:8443""#)).unwrap();
        assert_eq!(c.listen, "[::]:8443".parse().unwrap());
    }

    #[test]
    fn paths_must_not_be_empty() {
        for (key, line, empty) in [
            (
                "tls.certificate",
                r#"certificate = "server.pem""#,
                r#"certificate = """#,
            ),
            ("tls.key", r#"key = "server.key""#, r#"key = """#),
            (
                "auth.users_file",
                r#"users_file = "users""#,
                r#"users_file = """#,
            ),
        ] {
            assert!(BASE.contains(line), "{line}");
            expect_err(&BASE.replace(line, empty), key, "must not be empty");
        }
        expect_err(
            &with("tls", r#"client_ca = """#),
            "tls.client_ca",
            "must not be empty",
        );
    }

    #[test]
    fn required_keys_are_named() {
        let text = BASE.replace("key = \"server.key\"\n", "");
        expect_err(&text, "tls.key", "is required");
        let text = BASE.replace("ipv4 = \"10.10.0.0/24\"\n", "");
        expect_err(&text, "pool.ipv4", "is required");
        let text = BASE.replace("[auth]\nusers_file = \"users\"\n", "");
        expect_err(&text, "auth", "is required");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_line() {
        let err = expect_err(
            &with("esp", "prot = 4500"),
            "esp.prot",
            "unknown field `prot`",
        );
        assert!(
            matches!(
                err,
                ConfigError::Syntax {
                    line: 15,
                    column: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        expect_err(
            &with("", "idle_timeout = 5"),
            "idle_timeout",
            "unknown field",
        );
        let err = expect_err(
            &with("", r#"mtu = "1400""#),
            "mtu",
            "invalid type: string \"1400\", expected an integer",
        );
        assert!(
            err.to_string().starts_with("line 1, column 7: mtu: "),
            "{err}"
        );
        expect_err(
            &with("routes", r#"include = ["10.0.0.0/8", 7]"#),
            "routes.include[1]",
            "invalid type",
        );
    }

    #[test]
    fn broken_toml_gives_a_line() {
        let err = GatewayConfig::from_str(&with("esp", "port = = 1")).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Syntax {
                    key: None,
                    line: 15,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("line 15, column "), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn realms_must_be_valid_unique_and_present() {
        expect_err(
            &with("auth", "realms = []"),
            "auth.realms",
            "must not be empty",
        );
        expect_err(
            &with("auth", r#"realms = ["Users", "a,b"]"#),
            "auth.realms[1]",
            "is not a realm name",
        );
        expect_err(
            &with("auth", r#"realms = [" Users"]"#),
            "auth.realms[0]",
            "is not a realm name",
        );
        expect_err(
            &with("auth", r#"realms = ["Users", "Admins", "Users"]"#),
            "auth.realms[2]",
            "is already listed as auth.realms[0]",
        );
        let c = GatewayConfig::from_str(&with("auth", r#"realms = ["Admin Users"]"#)).unwrap();
        assert_eq!(c.auth.realms, ["Admin Users"]);
    }

    fn with_pool4(value: &str) -> String {
        BASE.replace("ipv4 = \"10.10.0.0/24\"", &format!("ipv4 = \"{value}\""))
    }

    #[test]
    fn pool_ipv4_must_be_an_ipv4_prefix() {
        expect_err(
            &with_pool4("10.10.0.0"),
            "pool.ipv4",
            "is not a CIDR prefix",
        );
        expect_err(
            &with_pool4("fd00::/64"),
            "pool.ipv4",
            "is not an IPv4 prefix",
        );
    }

    #[test]
    fn prefixes_must_not_have_host_bits() {
        expect_err(
            &with_pool4("10.10.0.5/24"),
            "pool.ipv4",
            "10.10.0.5/24 has host bits set (did you mean 10.10.0.0/24?)",
        );
    }

    #[test]
    fn pool_ipv4_must_leave_room_for_clients() {
        let err = expect_err(&with_pool4("10.0.0.0/31"), "pool.ipv4", "");
        assert_eq!(
            err.to_string(),
            "pool.ipv4: 10.0.0.0/31 leaves no address for clients"
        );
        expect_err(&with_pool4("10.0.0.1/32"), "pool.ipv4", "leaves no address");
        GatewayConfig::from_str(&with_pool4("10.0.0.0/30")).unwrap();
    }

    #[test]
    fn gateway_ipv4_must_be_a_host_of_the_pool() {
        for addr in ["10.10.0.0", "10.10.0.255", "10.11.0.1"] {
            expect_err(
                &with("pool", &format!("gateway_ipv4 = \"{addr}\"")),
                "pool.gateway_ipv4",
                &format!("{addr} is not a host address inside 10.10.0.0/24"),
            );
        }
        expect_err(
            &with("pool", r#"gateway_ipv4 = "fd00::1""#),
            "pool.gateway_ipv4",
            "is not an IPv4 address",
        );
        expect_err(
            &with("pool", r#"gateway_ipv4 = "gw""#),
            "pool.gateway_ipv4",
            "is not an IP address",
        );
        let c = GatewayConfig::from_str(&with("pool", r#"gateway_ipv4 = "10.10.0.254""#)).unwrap();
        assert_eq!(c.pool.gateway_ipv4, Ipv4Addr::new(10, 10, 0, 254));
    }

    #[test]
    fn pool_ipv6_must_be_an_ipv6_prefix_with_room() {
        expect_err(
            &with("pool", r#"ipv6 = "10.0.0.0/8""#),
            "pool.ipv6",
            "is not an IPv6 prefix",
        );
        expect_err(
            &with("pool", r#"ipv6 = "fd00::1/64""#),
            "pool.ipv6",
            "has host bits set",
        );
        expect_err(
            &with("pool", r#"ipv6 = "fd00::/127""#),
            "pool.ipv6",
            "fd00::/127 leaves no address for clients",
        );
        GatewayConfig::from_str(&with("pool", r#"ipv6 = "fd00::/126""#)).unwrap();
    }

    #[test]
    fn gateway_ipv6_needs_and_must_be_inside_pool_ipv6() {
        expect_err(
            &with("pool", r#"gateway_ipv6 = "fd00:10::1""#),
            "pool.gateway_ipv6",
            "needs pool.ipv6",
        );
        expect_err(
            &with_ipv6("pool", r#"gateway_ipv6 = "fd00:11::1""#),
            "pool.gateway_ipv6",
            "is not a host address inside fd00:10::/64",
        );
        expect_err(
            &with_ipv6("pool", r#"gateway_ipv6 = "fd00:10::""#),
            "pool.gateway_ipv6",
            "is not a host address",
        );
        expect_err(
            &with_ipv6("pool", r#"gateway_ipv6 = "10.10.0.1""#),
            "pool.gateway_ipv6",
            "is not an IPv6 address",
        );
    }

    #[test]
    fn routes_must_be_prefixes() {
        expect_err(
            &with("routes", r#"include = ["10.0.0.0/8", "10.0.0.0/33"]"#),
            "routes.include[1]",
            "is not a CIDR prefix",
        );
        expect_err(
            &with("routes", r#"exclude = ["10.1.2.3/16"]"#),
            "routes.exclude[0]",
            "did you mean 10.1.0.0/16?",
        );
    }

    #[test]
    fn ipv6_routes_need_an_ipv6_pool() {
        expect_err(
            &with("routes", r#"include = ["fd00::/8"]"#),
            "routes.include[0]",
            "fd00::/8 needs pool.ipv6",
        );
        expect_err(
            &with("routes", r#"exclude = ["::/0"]"#),
            "routes.exclude[0]",
            "needs pool.ipv6",
        );
        let c = GatewayConfig::from_str(&with_ipv6("routes", r#"include = ["fd00::/8"]"#)).unwrap();
        assert_eq!(c.routes.include, ["fd00::/8".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn routes_must_not_repeat() {
        expect_err(
            &with(
                "routes",
                r#"include = ["10.0.0.0/8", "192.168.0.0/16", "10.0.0.0/8"]"#,
            ),
            "routes.include[2]",
            "already listed as routes.include[0]",
        );
    }

    #[test]
    fn dns_must_be_addresses() {
        expect_err(
            &with("", r#"dns = ["10.0.0.53", "dns.corp"]"#),
            "dns[1]",
            "\"dns.corp\" is not an IP address",
        );
        expect_err(
            &with("", r#"dns = ["10.0.0.53", "10.0.0.53"]"#),
            "dns[1]",
            "already listed as dns[0]",
        );
    }

    #[test]
    fn search_domains_must_be_domain_names() {
        for bad in ["", "corp example", "-corp.example", "a..b", &"x".repeat(64)] {
            expect_err(
                &with("", &format!("search_domains = [\"ok.example\", \"{bad}\"]")),
                "search_domains[1]",
                "is not a domain name",
            );
        }
        let c = GatewayConfig::from_str(&with(
            "",
            r#"search_domains = ["corp.example.", "x-1.example"]"#,
        ))
        .unwrap();
        assert_eq!(c.search_domains.len(), 2);
    }

    #[test]
    fn mtu_range() {
        let err = expect_err(&with("", "mtu = 100"), "mtu", "");
        assert_eq!(err.to_string(), "mtu: 100 is outside 1280-9000");
        expect_err(&with("", "mtu = 9001"), "mtu", "9001 is outside 1280-9000");
        assert_eq!(
            GatewayConfig::from_str(&with("", "mtu = 1280"))
                .unwrap()
                .mtu,
            1280
        );
        assert_eq!(
            GatewayConfig::from_str(&with("", "mtu = 9000"))
                .unwrap()
                .mtu,
            9000
        );
    }

    #[test]
    fn esp_port_must_be_a_port() {
        let err = expect_err(&with("esp", "port = 0"), "esp.port", "");
        assert_eq!(err.to_string(), "esp.port: 0 is not a port (1-65535)");
        expect_err(
            &with("esp", "port = 65536"),
            "esp.port",
            "65536 is not a port",
        );
        expect_err(&with("esp", "port = -1"), "esp.port", "-1 is not a port");
    }

    #[test]
    fn esp_ciphers_must_be_known() {
        expect_err(
            &with("esp", r#"ciphers = ["aes128-sha1", "3des-md5"]"#),
            "esp.ciphers[1]",
            "aes128-sha1, aes256-sha1, aes128-sha256, aes256-sha256",
        );
    }

    #[test]
    fn esp_ciphers_must_not_be_empty_while_enabled() {
        expect_err(
            &with("esp", "ciphers = []"),
            "esp.ciphers",
            "must not be empty",
        );
        let c = GatewayConfig::from_str(&with("esp", "enabled = false\nciphers = []")).unwrap();
        assert!(!c.esp.enabled);
    }

    #[test]
    fn esp_ciphers_must_not_repeat() {
        expect_err(
            &with("esp", r#"ciphers = ["aes256-sha1", "aes256-sha1"]"#),
            "esp.ciphers[1]",
            "already listed as esp.ciphers[0]",
        );
    }

    #[test]
    fn esp_durations_and_byte_limit_ranges() {
        expect_err(
            &with("esp", "fallback_secs = 3601"),
            "esp.fallback_secs",
            "3601 is outside 0-3600",
        );
        expect_err(
            &with("esp", "key_lifetime_secs = 59"),
            "esp.key_lifetime_secs",
            "59 is outside 60-604800",
        );
        expect_err(
            &with("esp", "key_lifetime_bytes = -1"),
            "esp.key_lifetime_bytes",
            "-1 is outside 0-4294967295",
        );
        expect_err(
            &with("esp", "key_lifetime_bytes = 4294967296"),
            "esp.key_lifetime_bytes",
            "is outside 0-4294967295",
        );
    }

    #[test]
    fn session_timer_ranges() {
        expect_err(
            &with("", "idle_timeout_secs = -1"),
            "idle_timeout_secs",
            "-1 is outside 0-31536000",
        );
        expect_err(
            &with("", "idle_timeout_secs = 31536001"),
            "idle_timeout_secs",
            "is outside 0-31536000",
        );
        expect_err(
            &with("", "dpd_interval_secs = 0"),
            "dpd_interval_secs",
            "0 is outside 1-3600",
        );
        expect_err(
            &with("", "session_lifetime_secs = 0"),
            "session_lifetime_secs",
            "0 is outside 1-31536000",
        );
    }

    #[test]
    fn tun_name_must_be_an_interface_name() {
        for bad in ["", "sixteen-chars-xx", "a/b", "a b", "tun:0", ".."] {
            expect_err(
                &with("", &format!("tun_name = \"{bad}\"")),
                "tun_name",
                "is not an interface name",
            );
        }
        let c = GatewayConfig::from_str(&with("", r#"tun_name = "fifteen-chars-x""#)).unwrap();
        assert_eq!(c.tun_name, "fifteen-chars-x");
    }

    #[test]
    fn the_first_error_is_reported() {
        let text = with("", "mtu = 1\nlisten = \"nope\"");
        expect_err(&text, "listen", "is not an address:port");
    }

    fn write_files(dir: &Path, names: &[&str]) {
        for name in names {
            fs::write(dir.join(name), "x\n").unwrap();
        }
    }

    #[test]
    fn load_resolves_relative_paths_and_checks_files() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        fs::write(&config_path, with("tls", r#"client_ca = "ca/client.pem""#)).unwrap();
        fs::create_dir(dir.path().join("ca")).unwrap();
        write_files(
            dir.path(),
            &["server.pem", "server.key", "users", "ca/client.pem"],
        );
        let c = GatewayConfig::load(&config_path).unwrap();
        assert_eq!(c.tls.certificate, dir.path().join("server.pem"));
        assert_eq!(c.tls.client_ca, Some(dir.path().join("ca/client.pem")));
        assert_eq!(c.auth.users_file, dir.path().join("users"));

        fs::remove_file(dir.path().join("server.key")).unwrap();
        let err = GatewayConfig::load(&config_path).unwrap_err();
        assert_eq!(err.key(), Some("tls.key"));
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}: tls.key: cannot open ", config_path.display())),
            "{message}"
        );

        fs::create_dir(dir.path().join("server.key")).unwrap();
        let err = GatewayConfig::load(&config_path).unwrap_err();
        assert!(err.to_string().ends_with("is not a regular file"), "{err}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        let err = GatewayConfig::load(&config_path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("gateway.toml"), "{err}");

        fs::write(&config_path, with("esp", "port = 0")).unwrap();
        let err = GatewayConfig::load(&config_path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: esp.port: 0 is not a port (1-65535)",
                config_path.display()
            )
        );
        assert_eq!(err.key(), Some("esp.port"));

        fs::write(&config_path, with("esp", "bogus = 1")).unwrap();
        let err = GatewayConfig::load(&config_path).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "{}: line 15, column 1: esp.bogus: unknown field",
                config_path.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn cipher_names_round_trip() {
        // Every suite tunnel-proto speaks has a name, and only one.
        for suite in EspSuite::ALL {
            let name = suite_name(suite);
            assert_eq!(parse_suite(name), Some(suite), "{name}");
            assert!(CIPHER_RULE.contains(name), "{name}");
        }
        assert_eq!(SUITE_NAMES.len(), EspSuite::ALL.len());
        assert_eq!(parse_suite("AES128-SHA1"), None);
    }

    /// `text` with `[table]` and `lines` appended.
    fn with_table(text: &str, table: &str, lines: &str) -> String {
        format!("{text}\n[{table}]\n{lines}\n")
    }

    fn with_client_ca() -> String {
        with("tls", r#"client_ca = "ca.pem""#)
    }

    #[test]
    fn password_limits_ranges() {
        let limits = |line: &str| {
            GatewayConfig::from_str(&with_table(BASE, "auth.passwords", line))
                .map(|c| c.auth.passwords)
        };
        for (line, key, part) in [
            (
                "source_failures = 0",
                "auth.passwords.source_failures",
                "0 is outside 1-1000",
            ),
            (
                "source_failures = 1001",
                "auth.passwords.source_failures",
                "outside 1-1000",
            ),
            (
                "source_window_secs = 0",
                "auth.passwords.source_window_secs",
                "outside 1-86400",
            ),
            (
                "account_failures = 0",
                "auth.passwords.account_failures",
                "outside 1-1000",
            ),
            (
                "account_window_secs = 86401",
                "auth.passwords.account_window_secs",
                "outside 1-86400",
            ),
            (
                "known_source_secs = -1",
                "auth.passwords.known_source_secs",
                "outside 0-31536000",
            ),
            (
                "hash_workers = 257",
                "auth.passwords.hash_workers",
                "outside 0-256",
            ),
            (
                "hash_queue = 0",
                "auth.passwords.hash_queue",
                "outside 1-100000",
            ),
            (
                "hash_wait_ms = 9",
                "auth.passwords.hash_wait_ms",
                "outside 10-60000",
            ),
            (
                "hash_max_memory_kib = 19455",
                "auth.passwords.hash_max_memory_kib",
                "outside 19456-1048576",
            ),
            (
                "hash_max_memory_kib = 1048577",
                "auth.passwords.hash_max_memory_kib",
                "outside 19456-1048576",
            ),
        ] {
            expect_err(&with_table(BASE, "auth.passwords", line), key, part);
        }
        expect_err(
            &with_table(BASE, "auth.passwords", "hash_wrkers = 2"),
            "auth.passwords.hash_wrkers",
            "unknown field `hash_wrkers`",
        );
        let l = limits(
            "source_failures = 3\nsource_window_secs = 30\naccount_failures = 20\n\
             account_window_secs = 600\nknown_source_secs = 0\nhash_workers = 3\n\
             hash_queue = 1\nhash_wait_ms = 10\nhash_max_memory_kib = 1048576\n\
             min_length = 12\nmax_age_days = 3650",
        )
        .unwrap();
        assert_eq!(
            l,
            PasswordLimits {
                source_failures: 3,
                source_window: Duration::from_secs(30),
                account_failures: 20,
                account_window: Duration::from_secs(600),
                known_source: Duration::ZERO,
                hash_workers: Some(3),
                hash_queue: 1,
                hash_wait: Duration::from_millis(10),
                hash_max_memory_kib: 1 << 20,
                min_length: 12,
                max_age: Some(Duration::from_secs(3650 * 86_400)),
            }
        );
        assert_eq!(l.workers(), 3);
        let auto = limits("hash_workers = 0").unwrap();
        assert_eq!(auto.hash_workers, None);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(auto.workers(), cores.min(8));
    }

    #[test]
    fn certificate_settings_need_a_client_ca() {
        for (line, key) in [
            (r#"user = "email""#, "auth.certificate.user"),
            (r#"login = "certificate""#, "auth.certificate.login"),
            (
                r#"realms = { Users = "password" }"#,
                "auth.certificate.realms",
            ),
            (r#"crl_files = ["ca.crl"]"#, "auth.certificate.crl_files"),
        ] {
            expect_err(
                &with_table(BASE, "auth.certificate", line),
                key,
                "needs tls.client_ca, which is not set",
            );
            GatewayConfig::from_str(&with_table(&with_client_ca(), "auth.certificate", line))
                .unwrap();
        }
    }

    #[test]
    fn certificate_names_logins_and_realms_must_be_known() {
        let text = |line: &str| with_table(&with_client_ca(), "auth.certificate", line);
        expect_err(
            &text(r#"user = "dn""#),
            "auth.certificate.user",
            "one of cn, email, upn",
        );
        expect_err(
            &text(r#"login = "cert""#),
            "auth.certificate.login",
            "one of password, certificate-and-password, certificate",
        );
        expect_err(
            &text(r#"realms = { Admins = "certificate" }"#),
            "auth.certificate.realms.Admins",
            "is not a realm listed in auth.realms",
        );
        expect_err(
            &text(r#"realms = { Users = "both" }"#),
            "auth.certificate.realms.Users",
            "is not a certificate login",
        );
        expect_err(
            &text(r#"crl_files = ["a.crl", "a.crl"]"#),
            "auth.certificate.crl_files[1]",
            "already listed as auth.certificate.crl_files[0]",
        );
        expect_err(
            &text(r#"crl_files = [""]"#),
            "auth.certificate.crl_files[0]",
            "must not be empty",
        );
        for (name, field) in [
            ("cn", CertificateName::CommonName),
            ("email", CertificateName::Email),
            ("upn", CertificateName::Upn),
        ] {
            let c = GatewayConfig::from_str(&text(&format!("user = \"{name}\""))).unwrap();
            assert_eq!(c.auth.certificate.user, field);
            assert!(
                c.to_string()
                    .contains(&format!("auth.certificate.user      {name}"))
            );
        }
        let c = GatewayConfig::from_str(&text(
            r#"login = "certificate"
realms = { Users = "certificate-and-password" }"#,
        ))
        .unwrap();
        assert_eq!(
            c.auth.certificate.login_for("Users"),
            CertificateLogin::CertificateAndPassword
        );
        assert_eq!(
            c.auth.certificate.login_for("Other"),
            CertificateLogin::Certificate
        );
        assert!(CertificateLogin::Certificate.needs_certificate());
        assert!(!CertificateLogin::Certificate.needs_password());
        assert!(!CertificateLogin::Password.needs_certificate());
        assert!(
            CertificateLogin::CertificateAndPassword.needs_certificate()
                && CertificateLogin::CertificateAndPassword.needs_password()
        );
    }

    #[test]
    fn crl_files_are_resolved_and_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        let text = with_table(
            &with_client_ca(),
            "auth.certificate",
            r#"crl_files = ["crl/one.crl", "/nonexistent/two.crl"]"#,
        );
        fs::write(&config_path, text).unwrap();
        fs::create_dir(dir.path().join("crl")).unwrap();
        write_files(
            dir.path(),
            &["server.pem", "server.key", "users", "ca.pem", "crl/one.crl"],
        );
        let err = GatewayConfig::load(&config_path).unwrap_err();
        assert_eq!(err.key(), Some("auth.certificate.crl_files[1]"));
        assert!(
            err.to_string().contains("cannot open /nonexistent/two.crl"),
            "{err}"
        );
        fs::write(
            &config_path,
            with_table(
                &with_client_ca(),
                "auth.certificate",
                r#"crl_files = ["crl/one.crl"]"#,
            ),
        )
        .unwrap();
        let c = GatewayConfig::load(&config_path).unwrap();
        assert_eq!(
            c.auth.certificate.crl_files,
            [dir.path().join("crl/one.crl")]
        );
    }

    fn with_realm(lines: &str) -> String {
        format!(
            "{}\n[realm.Admins]\n{lines}\n",
            with_ipv6("auth", r#"realms = ["Users", "Admins"]"#)
        )
    }

    #[test]
    fn password_request_and_password_rules() {
        let c = GatewayConfig::from_str(&with("auth", r#"password_request = "legacy""#)).unwrap();
        assert_eq!(c.auth.password_request, PasswordRequest::Legacy);
        expect_err(
            &with("auth", r#"password_request = "modern""#),
            "auth.password_request",
            "one of current, legacy",
        );
        let rules = |request: &str, line: &str| {
            let text = with_table(
                &with("auth", &format!("password_request = \"{request}\"")),
                "auth.passwords",
                line,
            );
            GatewayConfig::from_str(&text).map(|c| c.password_rules())
        };
        assert_eq!(rules("current", "min_length = 18").unwrap().min_length, 18);
        assert_eq!(rules("legacy", "min_length = 253").unwrap().min_length, 253);
        expect_err(
            &with_table(BASE, "auth.passwords", "min_length = 19"),
            "auth.passwords.min_length",
            "19 is more than 18",
        );
        for (line, part) in [
            ("min_length = 0", "outside 1-253"),
            ("min_length = 254", "outside 1-253"),
        ] {
            let text = with_table(
                &with("auth", r#"password_request = "legacy""#),
                "auth.passwords",
                line,
            );
            expect_err(&text, "auth.passwords.min_length", part);
        }
        assert_eq!(
            rules("current", "max_age_days = 90").unwrap().max_age,
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(rules("current", "max_age_days = 0").unwrap().max_age, None);
        expect_err(
            &with_table(BASE, "auth.passwords", "max_age_days = 3651"),
            "auth.passwords.max_age_days",
            "outside 0-3650",
        );
    }

    #[test]
    fn realm_tables_are_checked_key_by_key() {
        for (lines, key, part) in [
            (
                "second_factor = \"sms\"",
                "realm.Admins.second_factor",
                "one of none, totp",
            ),
            (
                "max_sessions_per_user = -1",
                "realm.Admins.max_sessions_per_user",
                "outside 0-10000",
            ),
            (
                "max_sessions_per_user = 1\nsession_limit = \"later\"",
                "realm.Admins.session_limit",
                "one of ask, end_oldest, refuse",
            ),
            (
                "session_limit = \"refuse\"",
                "realm.Admins.session_limit",
                "needs realm.Admins.max_sessions_per_user",
            ),
            (
                "dns = [\"ns1\"]",
                "realm.Admins.dns[0]",
                "not an IP address",
            ),
            (
                "dns = [\"10.0.0.1\", \"10.0.0.1\"]",
                "realm.Admins.dns[1]",
                "already listed",
            ),
            (
                "search_domains = [\"-bad\"]",
                "realm.Admins.search_domains[0]",
                "domain name",
            ),
            (
                "routes_include = [\"10.0.0.1/8\"]",
                "realm.Admins.routes_include[0]",
                "host bits",
            ),
            (
                "routes_exclude = [\"nope\"]",
                "realm.Admins.routes_exclude[0]",
                "CIDR",
            ),
            (
                "pool_ipv4 = \"10.10.0.0/25\"",
                "realm.Admins.pool_ipv4",
                "overlaps pool.ipv4 (10.10.0.0/24)",
            ),
            (
                "pool_ipv4 = \"10.0.0.0/8\"",
                "realm.Admins.pool_ipv4",
                "overlaps pool.ipv4",
            ),
            (
                "pool_ipv4 = \"10.20.0.0/31\"",
                "realm.Admins.pool_ipv4",
                "leaves no address",
            ),
            (
                "pool_ipv4 = \"fd00:30::/64\"",
                "realm.Admins.pool_ipv4",
                "IPv4 prefix",
            ),
            (
                "pool_ipv6 = \"fd00:30::/64\"",
                "realm.Admins.pool_ipv6",
                "needs realm.Admins.pool_ipv4",
            ),
            (
                "pool_ipv4 = \"10.20.0.0/24\"\npool_ipv6 = \"fd00:10::/80\"",
                "realm.Admins.pool_ipv6",
                "overlaps pool.ipv6",
            ),
            // Its own IPv4 pool without IPv6: its clients get no IPv6, so no IPv6 route.
            (
                "pool_ipv4 = \"10.20.0.0/24\"\nroutes_include = [\"fd00::/8\"]",
                "realm.Admins.routes_include[0]",
                "needs realm.Admins.pool_ipv6",
            ),
            (
                "colour = \"blue\"",
                "realm.Admins.colour",
                "unknown field `colour`",
            ),
        ] {
            expect_err(&with_realm(lines), key, part);
        }
        // Notices.
        let notice = |table: &str, body: &str| {
            format!("{}\n[realm.Admins.{table}]\n{body}\n", with_realm(""))
        };
        expect_err(
            &notice("pre_auth_notice", "text = \"\""),
            "realm.Admins.pre_auth_notice.text",
            "0 bytes, must be 1-4000",
        );
        expect_err(
            &notice(
                "post_auth_notice",
                &format!("text = \"{}\"", "x".repeat(4001)),
            ),
            "realm.Admins.post_auth_notice.text",
            "4001 bytes",
        );
        expect_err(
            &notice("pre_auth_notice", "text = \"a\\u0000b\""),
            "realm.Admins.pre_auth_notice.text",
            "NUL",
        );
        expect_err(
            &notice("pre_auth_notice", "accept = true"),
            "realm.Admins.pre_auth_notice.text",
            "is required",
        );
        let c = GatewayConfig::from_str(&notice(
            "pre_auth_notice",
            &format!("text = \"{}\"", "é".repeat(2000)),
        ))
        .unwrap();
        let n = c.realm_policy("Admins").unwrap().pre_auth_notice.unwrap();
        assert_eq!((n.text.len(), n.accept), (4000, true));
        // A realm that is not offered.
        let text = format!("{BASE}\n[realm.Admins]\nsecond_factor = \"totp\"\n");
        expect_err(&text, "realm.Admins", "a realm listed in auth.realms");
    }

    #[test]
    fn realm_pools_must_not_overlap_each_other() {
        let text = format!(
            "{}\n[realm.Admins]\npool_ipv4 = \"10.20.0.0/24\"\n[realm.Guests]\npool_ipv4 = \"10.20.0.128/25\"\n",
            with("auth", r#"realms = ["Users", "Admins", "Guests"]"#)
        );
        expect_err(
            &text,
            "realm.Guests.pool_ipv4",
            "overlaps realm.Admins.pool_ipv4",
        );
        let ok = text.replace("10.20.0.128/25", "10.30.0.0/24");
        let c = GatewayConfig::from_str(&ok).unwrap();
        // The gateway's own address stays the global pool's.
        assert_eq!(c.pool.gateway_ipv4, Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(
            c.realm_policy("Guests").unwrap().pool,
            PoolChoice::Own(RealmPool {
                ipv4: "10.30.0.0/24".parse().unwrap(),
                ipv6: None
            })
        );
        // A realm using the global pool may have IPv6 routes when [pool] has IPv6.
        let v6 = with_realm("routes_include = [\"fd00:99::/48\"]");
        let c = GatewayConfig::from_str(&v6).unwrap();
        assert_eq!(c.realm_policy("Admins").unwrap().routes.include.len(), 1);
        // The summary shows each realm's effective values and what is inherited.
        let summary: Vec<String> = c
            .to_string()
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for line in [
            "realm.Admins.routes_include fd00:99::/48",
            "realm.Users.routes_include (none) (global)",
            "realm.Users.pool_ipv4 10.10.0.0/24 (global)",
        ] {
            assert!(summary.iter().any(|l| l == line), "{line}: {summary:#?}");
        }
    }
}
