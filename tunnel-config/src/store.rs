//! The connections store: the user's and the admin's connections and the machine settings,
//! kept in one file that is replaced atomically on every change.
//!
//! This module owns the file format, the rules a connection must satisfy, the order in
//! which a connection's URL list is tried (seed 004, "Smart Connections - List of URLs") and
//! what happens to a corrupt file (it is moved aside, never overwritten or dropped). It does
//! not connect anywhere and does not decide who may change what: the daemon checks the
//! caller before it calls in.
//!
//! ```text
//!  open ──▶ read ──▶ decode ──ok──▶ Store (in memory) ──mutate──▶ write temp ──▶ fsync
//!                        │                                                       │
//!                        └─corrupt─▶ rename to <path>.corrupt-<unix time>        ▼
//!                                    + empty Store            rename over <path>, fsync dir
//! ```
//!
//! Every mutation first writes the new state and only then changes memory, so when a write
//! fails, memory still matches the disk. One process (the daemon) owns the file.

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rand::{Rng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use crate::{
    kvp::Kvps,
    pin::Pin,
    text::{Position, Shown, has_control, position_of},
    url::ServerUrl,
};

/// The store file's format version this code writes and reads.
pub const STORE_FORMAT: u32 = 1;

/// The file can hold user names and server names: owner-only.
const STORE_MODE: u32 = 0o600;
/// A directory the daemon creates for the store.
const STORE_DIR_MODE: u32 = 0o700;
/// Long enough for any sensible name, short enough for a status table.
const MAX_NAME_CHARS: usize = 200;
/// Linux's PATH_MAX.
const MAX_CGROUP_LEN: usize = 4096;

/// Which URL of a connection's list to try first when it starts from a disconnected state
/// (seed 004 line ~1758: "start at the top of the list, start with the most recently
/// connected URL, or choose randomly").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UrlMode {
    /// In list order.
    #[default]
    Top,
    /// The URL that last connected, then the rest in list order.
    MostRecent,
    /// A random order, spreading the load over the gateways.
    Random,
}

/// Why a URL list is being walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Start {
    /// The connection starts from a disconnected state: the list's [`UrlMode`] decides.
    Fresh,
    /// An established connection was lost: the seed says the client "always tries to
    /// connect to the most recently connected URL. If that connection fails, it uses the
    /// server list."
    Reconnect,
}

/// Which traffic a connection carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Scope {
    /// Every app's traffic that the routes select.
    #[default]
    DeviceLevel,
    /// Only the traffic of processes in this cgroup (v2 path below the cgroup root, e.g.
    /// `/user.slice/user-1000.slice/app-firefox.scope`).
    PerApp { cgroup: String },
}

/// Where a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Added by a user (`tunnel add`).
    #[default]
    User,
    /// Imported from a `.pulsepreconfig` file.
    Preconfig,
    /// Added by a `pulsesecureclient://` launch URL.
    AutoLaunch,
}

/// Whether a connection starts by itself (`connection-policy` in `.pulsepreconfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionPolicy {
    /// Started when the daemon starts.
    Automatic,
    /// Started by a user. The seed's dynamic connections are "set to start manually" so
    /// that they do not conflict with the admin's; every other connection defaults the same.
    #[default]
    Manual,
    /// Started and stopped by where the machine is ([`Connection::location`]).
    Location,
}

/// Whose credentials a connection uses (`connection-identity` in `.pulsepreconfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    #[default]
    User,
    /// The machine's own (certificate) identity, without a user session.
    Machine,
}

fn default_true() -> bool {
    true
}

/// One connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Connection {
    /// Unique, case-sensitive.
    pub name: String,
    /// The gateways; the first is the primary. More than one makes a smart connection.
    pub urls: Vec<ServerUrl>,
    #[serde(default)]
    pub url_mode: UrlMode,
    /// Index in `urls` of the URL that last connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_url: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Kvps::is_empty")]
    pub kvps: Kvps,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub source: Source,
    #[serde(default)]
    pub policy: ConnectionPolicy,
    #[serde(default)]
    pub identity: Identity,
    /// A locked-down connection: with VPN only access on, traffic flows only while a
    /// locked-down connection is connected (seed 004, "VPN only access").
    #[serde(default)]
    pub lock_down: bool,
    /// The stored client certificate this connection presents, by its name in tunneld's
    /// certificate store or its "Issued To" common name (the launcher's `-cert`). None: the
    /// stored certificate whose issuer the gateway asks for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Whether the connection is written to the store file. A `false` connection (a launch
    /// URL with `store=false`) lives in memory for this run only.
    #[serde(skip, default = "default_true")]
    pub store: bool,
    /// The binding server's ID (`server-id` in `.pulsepreconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The connection's GUID (`.pulsepreconfig` section ID), to recognise it on re-import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    /// The administrator's pins, per gateway host (a URL's host as TLS sees it, e.g.
    /// `vpn.example.com` or `192.0.2.7`): a certificate whose key is one of its host's pins is
    /// trusted whether or not a CA vouches for it (`.pulsepreconfig` `server-pin`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, Vec<Pin>>,
    /// The connection's own DNS settings (seed 000).
    #[serde(default, skip_serializing_if = "DnsSettings::is_empty")]
    pub dns: DnsSettings,
    /// The location rules of a connection whose policy is `location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<crate::location::LocationRules>,
}

/// A connection's DNS settings (seed 000: DNS Resolver IPs, DNS Search Domain List, Match
/// Domain List); what is set replaces the gateway's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// DNS Resolver IPs: the tunnel's servers.
    pub servers: Vec<std::net::IpAddr>,
    /// DNS Search Domain List.
    pub search: Vec<String>,
    /// Match Domain List: only names under these go to the tunnel's servers; empty: all.
    pub match_domains: Vec<String>,
}

impl DnsSettings {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.match_domains.is_empty()
    }

    /// Every domain a well-formed DNS name: labels of letters, digits and hyphens (no hyphen
    /// at either end), at most 63 bytes each and 253 in all; a leading `*.` or trailing dot
    /// is not accepted.
    fn validate(&self, name: &str) -> Result<(), ConnectionError> {
        for domain in self.search.iter().chain(&self.match_domains) {
            let ok = !domain.is_empty()
                && domain.len() <= 253
                && domain.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(ConnectionError::BadDomain {
                    name: name.to_string(),
                    domain: domain.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Connection {
    /// A device-level, manual, user connection to one gateway, with default KVPs.
    pub fn new(name: impl Into<String>, url: ServerUrl) -> Connection {
        Connection {
            name: name.into(),
            urls: vec![url],
            url_mode: UrlMode::default(),
            last_url: None,
            realm: None,
            user: None,
            kvps: Kvps::default(),
            scope: Scope::default(),
            source: Source::default(),
            policy: ConnectionPolicy::default(),
            identity: Identity::default(),
            lock_down: false,
            client_certificate: None,
            store: true,
            server_id: None,
            guid: None,
            pins: BTreeMap::new(),
            dns: DnsSettings::default(),
            location: None,
        }
    }

    /// The primary URL.
    pub fn primary_url(&self) -> Option<&ServerUrl> {
        self.urls.first()
    }

    /// Checks the rules every stored connection satisfies.
    pub fn validate(&self) -> Result<(), ConnectionError> {
        check_name(&self.name)?;
        self.dns.validate(&self.name)?;
        let has_rules = self.location.as_ref().is_some_and(|l| !l.rules.is_empty());
        if (self.policy == ConnectionPolicy::Location) != has_rules {
            return Err(ConnectionError::LocationRules {
                name: self.name.clone(),
            });
        }
        let name = || self.name.clone();
        if self.urls.is_empty() {
            return Err(ConnectionError::NoUrls { name: name() });
        }
        // A set, not a scan of the list so far: an imported list can be long.
        let mut seen = std::collections::HashSet::with_capacity(self.urls.len());
        for u in &self.urls {
            if !seen.insert(u) {
                return Err(ConnectionError::DuplicateUrl {
                    name: name(),
                    url: u.to_string(),
                });
            }
        }
        if let Some(index) = self.last_url
            && index >= self.urls.len()
        {
            return Err(ConnectionError::LastUrl {
                name: name(),
                index,
                len: self.urls.len(),
            });
        }
        let fields = [
            ("realm", &self.realm),
            ("user", &self.user),
            ("server_id", &self.server_id),
            ("guid", &self.guid),
            ("client_certificate", &self.client_certificate),
        ];
        for (field, value) in fields {
            if let Some(v) = value {
                if v.is_empty() {
                    return Err(ConnectionError::EmptyField {
                        name: name(),
                        field,
                    });
                }
                if has_control(v) {
                    return Err(ConnectionError::Control {
                        name: name(),
                        field,
                    });
                }
            }
        }
        for (host, pins) in &self.pins {
            if !self.urls.iter().any(|u| u.host_name() == *host) {
                return Err(ConnectionError::PinHost {
                    name: name(),
                    host: host.clone(),
                });
            }
            if pins.is_empty() {
                return Err(ConnectionError::NoPins {
                    name: name(),
                    host: host.clone(),
                });
            }
        }
        if let Scope::PerApp { cgroup } = &self.scope {
            check_cgroup(cgroup).map_err(|problem| ConnectionError::Cgroup {
                name: name(),
                cgroup: cgroup.clone(),
                problem,
            })?;
        }
        Ok(())
    }

    /// The order in which to try the URLs (indexes into `urls`), every URL once.
    pub fn url_order<R: Rng + ?Sized>(&self, start: Start, rng: &mut R) -> Vec<usize> {
        url_order(self.urls.len(), self.url_mode, self.last_url, start, rng)
    }
}

/// The order in which to try a list of `len` URLs (indexes), every URL once: in `mode`'s
/// order when the connection starts from a disconnected state, and with `last` (the URL
/// that last connected) first after an established connection was lost, whatever the mode.
pub fn url_order<R: Rng + ?Sized>(
    len: usize,
    mode: UrlMode,
    last: Option<usize>,
    start: Start,
    rng: &mut R,
) -> Vec<usize> {
    let last = last.filter(|i| *i < len);
    let mut order: Vec<usize> = (0..len).collect();
    match (start, mode) {
        (Start::Fresh, UrlMode::Top) => {}
        (Start::Fresh, UrlMode::Random) => order.shuffle(rng),
        (Start::Fresh, UrlMode::MostRecent) | (Start::Reconnect, _) => {
            if mode == UrlMode::Random {
                order.shuffle(rng);
            }
            if let Some(last) = last {
                order.retain(|i| *i != last);
                order.insert(0, last);
            }
        }
    }
    order
}

fn check_name(name: &str) -> Result<(), ConnectionError> {
    if name.trim().is_empty() {
        return Err(ConnectionError::EmptyName);
    }
    if name.trim() != name {
        return Err(ConnectionError::NameWhitespace {
            name: name.to_string(),
        });
    }
    if has_control(name) {
        return Err(ConnectionError::NameControl {
            name: name.to_string(),
        });
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(ConnectionError::NameTooLong {
            chars,
            max: MAX_NAME_CHARS,
        });
    }
    Ok(())
}

fn check_cgroup(cgroup: &str) -> Result<(), &'static str> {
    if !cgroup.starts_with('/') {
        return Err("must be an absolute path below the cgroup root, e.g. /user.slice/app.scope");
    }
    if cgroup.trim_matches('/').is_empty() {
        return Err("the root cgroup holds every process; use a device-level connection");
    }
    if cgroup.len() > MAX_CGROUP_LEN {
        return Err("is longer than PATH_MAX");
    }
    if has_control(cgroup) {
        return Err("contains control characters");
    }
    if cgroup.split('/').any(|c| c == "." || c == "..") {
        return Err("may not contain . or .. components");
    }
    Ok(())
}

/// Why a connection breaks the store's rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    #[error("a connection name may not be empty or only whitespace")]
    EmptyName,
    #[error("connection name {} starts or ends with whitespace", Shown(.name))]
    NameWhitespace { name: String },
    #[error("connection name {} contains control characters", Shown(.name))]
    NameControl { name: String },
    #[error("a connection name has at most {max} characters; this one has {chars}")]
    NameTooLong { chars: usize, max: usize },
    #[error("connection {}: needs at least one server URL", Shown(.name))]
    NoUrls { name: String },
    #[error("connection {}: location rules go with the location start mode, and it with rules", Shown(.name))]
    LocationRules { name: String },
    #[error("connection {}: {} is not a DNS domain name (labels of letters, digits and hyphens)", Shown(.name), Shown(.domain))]
    BadDomain { name: String, domain: String },
    #[error("connection {}: server URL {url} is listed twice", Shown(.name))]
    DuplicateUrl { name: String, url: String },
    #[error("connection {}: last URL index {index} is outside its {len} URLs", Shown(.name))]
    LastUrl {
        name: String,
        index: usize,
        len: usize,
    },
    #[error("connection {}: {field} is empty (leave it unset instead)", Shown(.name))]
    EmptyField { name: String, field: &'static str },
    #[error("connection {}: {field} contains control characters", Shown(.name))]
    Control { name: String, field: &'static str },
    /// Pins are per host: one for a host none of the URLs has would never be used.
    #[error("connection {}: pins for {}, which is not the host of any of its URLs", Shown(.name), Shown(.host))]
    PinHost { name: String, host: String },
    #[error("connection {}: an empty list of pins for {} (leave the host out instead)", Shown(.name), Shown(.host))]
    NoPins { name: String, host: String },
    #[error("connection {}: cgroup {} {problem}", Shown(.name), Shown(.cgroup))]
    Cgroup {
        name: String,
        cgroup: String,
        problem: &'static str,
    },
}

/// Client-wide settings (the seed's "machine settings" / connection set options). The
/// defaults are the seed's defaults (figure 95): saving, user connections, dynamic trust and
/// dynamic connections allowed; VPN only access off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct MachineSettings {
    /// `allow-save`: credentials and trust decisions may be saved.
    pub allow_save: bool,
    /// `user-connection`: users may add connections.
    pub user_connection: bool,
    /// `dynamic-trust`: users may accept an unknown server certificate.
    pub dynamic_trust: bool,
    /// `dynamic-connection`: gateways may add connections.
    pub dynamic_connection: bool,
    /// `lock-down` (VPN only access): traffic flows only while a locked-down connection is
    /// connected.
    pub vpn_only_access: bool,
    /// `captive-portal-detection`: when no gateway can be reached, probe for a captive
    /// portal and wait behind it instead of running the disconnect timeout down.
    pub captive_portal_detection: bool,
    /// The binding server: only its configuration updates are accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The configuration's version, to refuse going back to an older one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl Default for MachineSettings {
    fn default() -> Self {
        MachineSettings {
            allow_save: true,
            user_connection: true,
            dynamic_trust: true,
            dynamic_connection: true,
            vpn_only_access: false,
            captive_portal_detection: true,
            server_id: None,
            version: None,
        }
    }
}

/// How the store file is encoded, chosen by its extension: `.toml` is TOML, anything else
/// JSON. JSON is the daemon's default; TOML is there for admins who edit by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Json,
    Toml,
}

impl FileFormat {
    pub fn for_path(path: &Path) -> FileFormat {
        match path.extension() {
            Some(e) if e.eq_ignore_ascii_case("toml") => FileFormat::Toml,
            _ => FileFormat::Json,
        }
    }
}

/// The reason a store file could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptReason {
    pub message: String,
    /// Where in the file, when the decoder knows.
    pub position: Option<Position>,
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A store file that could not be read as a store, and where it was kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptStore {
    /// The file as found, renamed to `<path>.corrupt-<unix time>`.
    pub kept_at: PathBuf,
    pub reason: CorruptReason,
}

impl fmt::Display for CorruptStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the connections store was corrupt ({}); it was kept at {} and an empty store is used",
            self.reason,
            self.kept_at.display()
        )
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot read the connections store {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the connections store {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("the connections store {} is corrupt and could not be moved aside to {}: {source}", path.display(), to.display())]
    KeepAside {
        path: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("the connections store {} has format {found}; this tunnel reads format {supported} (written by a newer version?)", path.display())]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot encode the connections store: {message}")]
    Encode { message: String },
    #[error(transparent)]
    Invalid(#[from] ConnectionError),
    #[error("a connection named {} already exists", Shown(.name))]
    Exists { name: String },
    #[error("there is no connection named {}", Shown(.name))]
    NotFound { name: String },
    #[error("connection {} has no URL number {index} (it has {len})", Shown(.name))]
    UrlIndex {
        name: String,
        index: usize,
        len: usize,
    },
}

/// The file's shape: `{ "format": 1, "machine": {...}, "connections": [...] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[expect(
        dead_code,
        reason = "checked through Header first; declared so that deny_unknown_fields accepts it"
    )]
    format: u32,
    #[serde(default)]
    machine: MachineSettings,
    #[serde(default)]
    connections: Vec<Connection>,
}

#[derive(Serialize)]
struct StoreFileOut<'a> {
    format: u32,
    machine: &'a MachineSettings,
    connections: Vec<&'a Connection>,
}

/// Read first, alone, so that a newer format is told apart from a corrupt file.
#[derive(Deserialize)]
struct Header {
    format: u32,
}

enum Decoded {
    Ok(StoreFile),
    Newer(u32),
    Corrupt(CorruptReason),
}

/// The connections store. See the module documentation.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    format: FileFormat,
    machine: MachineSettings,
    connections: Vec<Connection>,
}

impl Store {
    /// Opens the store at `path`. A missing (or empty) file is an empty store. A corrupt file
    /// is renamed to `<path>.corrupt-<unix time>` and reported next to an empty store, so
    /// the daemon can say so and carry on; nothing is lost. Errors are for what the daemon
    /// cannot carry on from: an unreadable file, a file from a newer version, or a corrupt
    /// file that cannot be moved aside.
    pub fn open(path: impl Into<PathBuf>) -> Result<(Store, Option<CorruptStore>), StoreError> {
        Store::open_at(path.into(), SystemTime::now())
    }

    fn open_at(
        path: PathBuf,
        now: SystemTime,
    ) -> Result<(Store, Option<CorruptStore>), StoreError> {
        let format = FileFormat::for_path(&path);
        let empty = |path: PathBuf| Store {
            path,
            format,
            machine: MachineSettings::default(),
            connections: Vec::new(),
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((empty(path), None)),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        match decode(&bytes, format) {
            Decoded::Ok(file) => {
                let mut store = empty(path);
                store.machine = file.machine;
                store.connections = file.connections;
                Ok((store, None))
            }
            Decoded::Newer(found) => Err(StoreError::NewerFormat {
                path,
                found,
                supported: STORE_FORMAT,
            }),
            Decoded::Corrupt(reason) => {
                let kept_at = keep_aside(&path, now)?;
                Ok((empty(path), Some(CorruptStore { kept_at, reason })))
            }
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every connection, in the order they were added.
    /// Whether the machine is locked down: VPN only access is on and a locked-down
    /// connection exists (seed 004: traffic flows only while a locked-down connection is
    /// connected; a machine with none has nothing that could let it flow, and only
    /// connections with the setting lock the machine down).
    pub fn lockdown_in_force(&self) -> bool {
        self.machine().vpn_only_access && self.list().iter().any(|c| c.lock_down)
    }

    /// The administrator's lock-down exceptions: the exclude routes (KVP `ExcRoutes`) of the
    /// locked-down connections, which stay open under lock-down whether or not a connection
    /// is up.
    pub fn lockdown_exceptions(&self) -> Vec<ipnet::IpNet> {
        let mut nets: Vec<ipnet::IpNet> = self
            .list()
            .iter()
            .filter(|c| c.lock_down)
            .flat_map(|c| c.kvps.exc_routes().to_vec())
            .collect();
        nets.sort();
        nets.dedup();
        nets
    }

    pub fn list(&self) -> &[Connection] {
        &self.connections
    }

    /// The connection named `name` (exactly; names are case-sensitive).
    pub fn get(&self, name: &str) -> Option<&Connection> {
        self.connections.iter().find(|c| c.name == name)
    }

    fn index_of(&self, name: &str) -> Result<usize, StoreError> {
        self.connections
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| StoreError::NotFound {
                name: name.to_string(),
            })
    }

    /// The machine settings.
    pub fn machine(&self) -> &MachineSettings {
        &self.machine
    }

    /// Replaces the machine settings.
    pub fn set_machine(&mut self, machine: MachineSettings) -> Result<(), StoreError> {
        self.commit(&machine, &self.connections)?;
        self.machine = machine;
        Ok(())
    }

    /// Adds a connection; its name must be new.
    pub fn add(&mut self, connection: Connection) -> Result<(), StoreError> {
        connection.validate()?;
        if self.get(&connection.name).is_some() {
            return Err(StoreError::Exists {
                name: connection.name,
            });
        }
        let mut next = self.connections.clone();
        next.push(connection);
        self.replace_connections(next)
    }

    /// Changes connection `name` with `change`; the result must satisfy the same rules as
    /// an added connection (a rename must not collide). When the URL list changes, the
    /// last-connected URL is followed to its new position, or forgotten if it is gone.
    pub fn edit(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut Connection),
    ) -> Result<&Connection, StoreError> {
        let index = self.index_of(name)?;
        let before = &self.connections[index];
        let mut edited = before.clone();
        change(&mut edited);
        if edited.urls != before.urls && edited.last_url == before.last_url {
            edited.last_url = before
                .last_url
                .and_then(|i| before.urls.get(i))
                .and_then(|u| edited.urls.iter().position(|x| x == u));
        }
        edited.validate()?;
        if edited.name != name && self.get(&edited.name).is_some() {
            return Err(StoreError::Exists { name: edited.name });
        }
        let mut next = self.connections.clone();
        next[index] = edited;
        self.replace_connections(next)?;
        Ok(&self.connections[index])
    }

    /// Removes connection `name` and returns it.
    pub fn delete(&mut self, name: &str) -> Result<Connection, StoreError> {
        let index = self.index_of(name)?;
        let mut next = self.connections.clone();
        let removed = next.remove(index);
        self.replace_connections(next)?;
        Ok(removed)
    }

    /// Records that URL `url_index` of connection `name` connected: it becomes the most
    /// recent URL (written to the file when it changed), which a later fresh start in
    /// [`UrlMode::MostRecent`] tries first.
    pub fn record_success(&mut self, name: &str, url_index: usize) -> Result<(), StoreError> {
        let index = self.index_of(name)?;
        let len = self.connections[index].urls.len();
        if url_index >= len {
            return Err(StoreError::UrlIndex {
                name: name.to_string(),
                index: url_index,
                len,
            });
        }
        if self.connections[index].last_url != Some(url_index) {
            let mut next = self.connections.clone();
            next[index].last_url = Some(url_index);
            self.replace_connections(next)?;
        }
        Ok(())
    }

    fn replace_connections(&mut self, next: Vec<Connection>) -> Result<(), StoreError> {
        let wrote = self
            .connections
            .iter()
            .filter(|c| c.store)
            .ne(next.iter().filter(|c| c.store));
        if wrote {
            self.commit(&self.machine, &next)?;
        }
        self.connections = next;
        Ok(())
    }

    /// Writes `machine` and the stored ones of `connections` to the file, atomically.
    fn commit(
        &self,
        machine: &MachineSettings,
        connections: &[Connection],
    ) -> Result<(), StoreError> {
        let out = StoreFileOut {
            format: STORE_FORMAT,
            machine,
            connections: connections.iter().filter(|c| c.store).collect(),
        };
        let text = match self.format {
            FileFormat::Json => serde_json::to_string_pretty(&out)
                .map(|mut s| {
                    s.push('\n');
                    s
                })
                .map_err(|e| StoreError::Encode {
                    message: e.to_string(),
                })?,
            FileFormat::Toml => toml::to_string_pretty(&out).map_err(|e| StoreError::Encode {
                message: e.to_string(),
            })?,
        };
        write_atomically(&self.path, text.as_bytes()).map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn set_all(
        &mut self,
        machine: MachineSettings,
        connections: Vec<Connection>,
    ) -> Result<(), StoreError> {
        for c in &connections {
            c.validate()?;
        }
        self.commit(&machine, &connections)?;
        self.machine = machine;
        self.connections = connections;
        Ok(())
    }
}

fn decode(bytes: &[u8], format: FileFormat) -> Decoded {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let position = std::str::from_utf8(valid)
                .ok()
                .map(|v| position_of(v, v.len()));
            return Decoded::Corrupt(CorruptReason {
                message: "the file is not UTF-8 text".into(),
                position,
            });
        }
    };
    if text.trim().is_empty() {
        return Decoded::Ok(StoreFile {
            format: STORE_FORMAT,
            machine: MachineSettings::default(),
            connections: Vec::new(),
        });
    }
    let header: Result<Header, CorruptReason> = parse_as(text, format);
    match header {
        Ok(h) if h.format > STORE_FORMAT => return Decoded::Newer(h.format),
        Ok(h) if h.format < STORE_FORMAT => {
            return Decoded::Corrupt(CorruptReason {
                message: format!("format {} does not exist", h.format),
                position: None,
            });
        }
        Ok(_) => {}
        Err(reason) => return Decoded::Corrupt(reason),
    }
    let file: StoreFile = match parse_as(text, format) {
        Ok(f) => f,
        Err(reason) => return Decoded::Corrupt(reason),
    };
    let mut seen = std::collections::HashSet::new();
    for (i, c) in file.connections.iter().enumerate() {
        let problem = match c.validate() {
            Err(e) => Some(e.to_string()),
            Ok(()) if !seen.insert(c.name.as_str()) => {
                Some(format!("the name {} is used twice", Shown(&c.name)))
            }
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            return Decoded::Corrupt(CorruptReason {
                message: format!("connection number {}: {problem}", i + 1),
                position: None,
            });
        }
    }
    Decoded::Ok(file)
}

fn parse_as<T: for<'de> Deserialize<'de>>(
    text: &str,
    format: FileFormat,
) -> Result<T, CorruptReason> {
    match format {
        FileFormat::Json => serde_json::from_str(text).map_err(|e| {
            // serde_json appends the position to its message; it is reported separately.
            let message = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            CorruptReason {
                message: message
                    .strip_suffix(&suffix)
                    .unwrap_or(&message)
                    .to_string(),
                position: (e.line() > 0).then(|| Position {
                    line: e.line(),
                    column: e.column(),
                }),
            }
        }),
        FileFormat::Toml => toml::from_str(text).map_err(|e| CorruptReason {
            message: e.message().to_string(),
            position: e.span().map(|s| position_of(text, s.start)),
        }),
    }
}

/// Renames the corrupt file to `<path>.corrupt-<unix time>` (with `-2`, `-3`... if that is
/// taken, so an earlier kept file is never replaced).
fn keep_aside(path: &Path, now: SystemTime) -> Result<PathBuf, StoreError> {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let base = {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".corrupt-{secs}"));
        PathBuf::from(s)
    };
    let mut target = base.clone();
    let mut n = 1u32;
    while target.symlink_metadata().is_ok() {
        n += 1;
        let mut s = base.as_os_str().to_owned();
        s.push(format!("-{n}"));
        target = PathBuf::from(s);
    }
    fs::rename(path, &target).map_err(|source| StoreError::KeepAside {
        path: path.to_path_buf(),
        to: target.clone(),
        source,
    })?;
    Ok(target)
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile<'a> {
    path: &'a Path,
    renamed: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = fs::remove_file(self.path);
        }
    }
}

/// Replaces `path` with `contents` so that a crash at any point leaves the old file or the
/// new one: a 0600 temporary file in the same directory, written and fsynced, renamed over
/// `path`, then the directory fsynced so the rename itself is durable. A symlink at `path`
/// is replaced, not followed: the store lives in the daemon's own directory.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(STORE_DIR_MODE)
            .create(&dir)?;
    }
    let base = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?
        .to_string_lossy();
    let tmp_path = dir.join(format!(
        ".{base}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(STORE_MODE)
        .open(&tmp_path)?;
    let mut tmp = TempFile {
        path: &tmp_path,
        renamed: false,
    };
    // The umask may have taken bits away from the mode above; make it exactly 0600.
    file.set_permissions(Permissions::from_mode(STORE_MODE))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp_path, path)?;
    tmp.renamed = true;
    File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn url(s: &str) -> ServerUrl {
        ServerUrl::parse(s).unwrap()
    }

    fn conn(name: &str, urls: &[&str]) -> Connection {
        let mut c = Connection::new(name, url(urls[0]));
        c.urls = urls.iter().map(|u| url(u)).collect();
        c
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn open(path: &Path) -> Store {
        let (store, corrupt) = Store::open(path).unwrap();
        assert_eq!(corrupt, None);
        store
    }

    #[test]
    fn a_missing_file_is_an_empty_store_with_seed_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("connections.json"));
        assert!(store.list().is_empty());
        let m = store.machine();
        assert!(m.allow_save && m.user_connection && m.dynamic_trust && m.dynamic_connection);
        assert!(!m.vpn_only_access);
        // Nothing is written until something changes.
        assert!(files_in(dir.path()).is_empty());
    }

    #[test]
    fn a_named_client_certificate_persists_and_may_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connections.json");
        let mut store = open(&path);
        let mut c = conn("corp", &["vpn.example.com"]);
        c.client_certificate = Some("alice".into());
        store.add(c).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""client_certificate": "alice""#), "{text}");
        assert_eq!(
            open(&path)
                .get("corp")
                .unwrap()
                .client_certificate
                .as_deref(),
            Some("alice")
        );
        let refused = store.edit("corp", |c| c.client_certificate = Some(String::new()));
        assert!(
            matches!(
                refused,
                Err(StoreError::Invalid(ConnectionError::EmptyField {
                    field: "client_certificate",
                    ..
                }))
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn add_get_list_edit_delete_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("connections.json");
        let mut store = open(&path);
        let mut c = conn("corp", &["vpn.example.com", "vpn2.example.com:8443/usr"]);
        c.realm = Some("Users".into());
        c.kvps =
            Kvps::parse(&[("MTU", "1300"), ("SplitUDPPortList", "53;161-162;200-1024")]).unwrap();
        c.scope = Scope::PerApp {
            cgroup: "/user.slice/app.scope".into(),
        };
        store.add(c.clone()).unwrap();
        store.add(conn("lab", &["10.0.0.1"])).unwrap();
        assert_eq!(store.get("corp"), Some(&c));
        assert_eq!(store.get("Corp"), None, "names are case-sensitive");
        assert_eq!(
            store
                .list()
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["corp", "lab"]
        );
        // The directory was created owner-only and the file is 0600.
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let reopened = open(&path);
        assert_eq!(reopened.list(), store.list());

        let edited = store
            .edit("corp", |c| {
                c.user = Some("alice".into());
                c.url_mode = UrlMode::Random;
            })
            .unwrap();
        assert_eq!(edited.user.as_deref(), Some("alice"));
        assert_eq!(open(&path).get("corp").unwrap().url_mode, UrlMode::Random);

        store.edit("lab", |c| c.name = "lab2".into()).unwrap();
        assert!(store.get("lab").is_none());
        assert!(open(&path).get("lab2").is_some());

        let removed = store.delete("corp").unwrap();
        assert_eq!(removed.user.as_deref(), Some("alice"));
        assert!(open(&path).get("corp").is_none());
        assert!(matches!(
            store.delete("corp"),
            Err(StoreError::NotFound { name }) if name == "corp"
        ));
    }

    #[test]
    fn the_file_is_readable_json_with_a_format_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut store = open(&path);
        let mut c = conn("corp", &["vpn.example.com"]);
        c.kvps = Kvps::parse(&[("MTU", "1300")]).unwrap();
        store.add(c).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["format"], 1);
        assert_eq!(v["machine"]["allow_save"], true);
        assert_eq!(v["connections"][0]["name"], "corp");
        assert_eq!(v["connections"][0]["urls"][0], "https://vpn.example.com/");
        assert_eq!(v["connections"][0]["kvps"]["MTU"], "1300");
        assert_eq!(v["connections"][0]["scope"]["kind"], "device-level");
        assert_eq!(v["connections"][0].get("store"), None);
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn toml_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connections.toml");
        let mut store = open(&path);
        let mut c = conn("corp", &["vpn.example.com", "[2001:db8::1]:8443"]);
        c.kvps = Kvps::parse(&[("IPRoutes", "10.0.0.0/8"), ("DisablePinning", "true")]).unwrap();
        c.scope = Scope::PerApp {
            cgroup: "/a.slice/b.scope".into(),
        };
        c.last_url = Some(1);
        c.realm = Some("Users".into());
        store.add(c.clone()).unwrap();
        let mut m = store.machine().clone();
        m.vpn_only_access = true;
        store.set_machine(m.clone()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("format = 1"), "{text}");
        let reopened = open(&path);
        assert_eq!(reopened.get("corp"), Some(&c));
        assert_eq!(reopened.machine(), &m);
        // A TOML error carries its position.
        fs::write(&path, "format = 1\n[machine]\nallow_save = maybe\n").unwrap();
        let (_, corrupt) = Store::open(&path).unwrap();
        let corrupt = corrupt.unwrap();
        assert_eq!(corrupt.reason.position.map(|p| p.line), Some(3));
    }

    #[test]
    fn a_hand_written_toml_store_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connections.toml");
        let text = r#"
format = 1

[machine]
vpn_only_access = true

[[connections]]
name = "corp"
urls = ["vpn.example.com", "vpn2.example.com:8443/usr"]
url_mode = "most-recent"
scope = { kind = "per-app", cgroup = "/user.slice/app.scope" }

[connections.kvps]
MTU = 1300
DisablePinning = true
SplitUDPPortList = "53;161-162;200-1024"
"#;
        fs::write(&path, text).unwrap();
        let store = open(&path);
        let m = store.machine();
        assert!(m.vpn_only_access);
        assert!(m.allow_save, "keys left out take the seed defaults");
        let c = store.get("corp").unwrap();
        assert_eq!(c.urls[1].to_string(), "https://vpn2.example.com:8443/usr");
        assert_eq!(c.url_mode, UrlMode::MostRecent);
        assert_eq!(c.kvps.mtu(), 1300);
        assert!(c.kvps.disable_pinning());
        assert_eq!(
            c.scope,
            Scope::PerApp {
                cgroup: "/user.slice/app.scope".into()
            }
        );
        assert_eq!(c.policy, ConnectionPolicy::Manual);
    }

    #[test]
    fn names_must_be_unique_and_not_blank() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir.path().join("c.json"));
        store.add(conn("corp", &["a.example"])).unwrap();
        let e = store.add(conn("corp", &["b.example"])).unwrap_err();
        assert_eq!(e.to_string(), "a connection named \"corp\" already exists");
        store.add(conn("Corp", &["b.example"])).unwrap();
        for blank in ["", "   ", "\t"] {
            let e = store.add(conn(blank, &["a.example"])).unwrap_err();
            assert_eq!(
                e.to_string(),
                "a connection name may not be empty or only whitespace"
            );
        }
        let e = store.add(conn(" corp2", &["a.example"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection name \" corp2\" starts or ends with whitespace"
        );
        let e = store.add(conn("a\nb", &["a.example"])).unwrap_err();
        assert!(e.to_string().contains("control characters"), "{e}");
        let e = store
            .add(conn(&"n".repeat(201), &["a.example"]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a connection name has at most 200 characters; this one has 201"
        );
        // A rename onto an existing name is refused and changes nothing.
        let e = store.edit("Corp", |c| c.name = "corp".into()).unwrap_err();
        assert!(matches!(e, StoreError::Exists { .. }));
        assert!(store.get("Corp").is_some());
    }

    #[test]
    fn connection_rules() {
        let mut c = conn("c", &["a.example"]);
        c.urls.clear();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "connection \"c\": needs at least one server URL"
        );
        let c = conn("c", &["a.example", "https://A.example:443/"]);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "connection \"c\": server URL https://a.example/ is listed twice"
        );
        let mut c = conn("c", &["a.example"]);
        c.last_url = Some(1);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "connection \"c\": last URL index 1 is outside its 1 URLs"
        );
        let mut c = conn("c", &["a.example"]);
        c.realm = Some(String::new());
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "connection \"c\": realm is empty (leave it unset instead)"
        );
        c.realm = Some("a\u{7}".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("realm contains control")
        );
        for (cgroup, problem) in [
            ("user.slice", "absolute path"),
            ("/", "root cgroup"),
            ("/a/../b", ". or .."),
            ("/a\nb", "control"),
        ] {
            let mut c = conn("c", &["a.example"]);
            c.scope = Scope::PerApp {
                cgroup: cgroup.into(),
            };
            let m = c.validate().unwrap_err().to_string();
            assert!(m.contains(problem), "{cgroup}: {m}");
            assert!(m.starts_with("connection \"c\": cgroup"), "{m}");
        }
    }

    #[test]
    fn a_corrupt_file_is_kept_aside_with_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connections.json");
        let bad = "{\n  \"format\": 1,\n  \"connections\": [ { \"name\": \"x\", } ]\n}\n";
        fs::write(&path, bad).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (store, corrupt) = Store::open_at(path.clone(), now).unwrap();
        assert!(store.list().is_empty());
        let corrupt = corrupt.unwrap();
        assert_eq!(
            corrupt.kept_at,
            dir.path().join("connections.json.corrupt-1700000000")
        );
        assert_eq!(fs::read_to_string(&corrupt.kept_at).unwrap(), bad);
        assert!(!path.exists());
        let p = corrupt.reason.position.unwrap();
        assert_eq!(p.line, 3);
        assert!(corrupt.to_string().contains("line 3, column"), "{corrupt}");
        assert!(
            corrupt
                .to_string()
                .contains("connections.json.corrupt-1700000000")
        );

        // A second corrupt file in the same second does not replace the first.
        fs::write(&path, "garbage").unwrap();
        let (_, again) = Store::open_at(path.clone(), now).unwrap();
        let again = again.unwrap();
        assert_eq!(
            again.kept_at,
            dir.path().join("connections.json.corrupt-1700000000-2")
        );
        assert_eq!(fs::read_to_string(&corrupt.kept_at).unwrap(), bad);
        assert_eq!(again.reason.position, Some(Position { line: 1, column: 1 }));
    }

    #[test]
    fn files_that_break_the_rules_are_corrupt_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let cases = [
            (
                r#"{"format":1,"connections":[{"name":"a","urls":["a.example"]},{"name":"a","urls":["b.example"]}]}"#,
                "connection number 2: the name \"a\" is used twice",
            ),
            (
                r#"{"format":1,"connections":[{"name":"a","urls":[]}]}"#,
                "connection number 1: connection \"a\": needs at least one server URL",
            ),
            (
                r#"{"format":1,"connections":[{"name":"a","urls":["http://a.example"]}]}"#,
                "plain http:// is refused",
            ),
            (
                r#"{"format":1,"connections":[{"name":"a","urls":["a.example"],"kvps":{"MTU":"1"}}]}"#,
                "KVP MTU=\"1\": out of range; allowed: 1280-9000",
            ),
            (
                r#"{"format":1,"connections":[{"name":"a","urls":["a.example"],"colour":"red"}]}"#,
                "unknown field `colour`",
            ),
            (r#"{"format":0}"#, "format 0 does not exist"),
            (r#"{"connections":[]}"#, "missing field `format`"),
            ("[1,2]", "trailing characters"),
            ("null", "invalid type"),
        ];
        for (text, wanted) in cases {
            fs::write(&path, text).unwrap();
            let (store, corrupt) = Store::open(&path).unwrap();
            assert!(store.list().is_empty());
            let corrupt = corrupt.unwrap_or_else(|| panic!("{text} accepted"));
            assert!(
                corrupt.reason.to_string().contains(wanted),
                "{text}: {}",
                corrupt.reason
            );
            assert!(corrupt.kept_at.exists());
        }
        // Not UTF-8.
        fs::write(&path, b"{\n\"format\": \xff}").unwrap();
        let (_, corrupt) = Store::open(&path).unwrap();
        let reason = corrupt.unwrap().reason;
        assert_eq!(reason.message, "the file is not UTF-8 text");
        assert_eq!(
            reason.position,
            Some(Position {
                line: 2,
                column: 11
            })
        );
    }

    #[test]
    fn empty_file_is_an_empty_store_and_a_newer_format_is_an_error_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        fs::write(&path, "\n").unwrap();
        assert!(open(&path).list().is_empty());
        fs::write(&path, r#"{"format": 2, "whatever": true}"#).unwrap();
        let e = Store::open(&path).unwrap_err();
        assert!(matches!(
            e,
            StoreError::NewerFormat {
                found: 2,
                supported: 1,
                ..
            }
        ));
        assert!(
            e.to_string()
                .contains("has format 2; this tunnel reads format 1"),
            "{e}"
        );
        // Left exactly where it was.
        assert_eq!(files_in(dir.path()), ["c.json"]);
    }

    #[test]
    fn an_unreadable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Read { .. }), "{e}");
    }

    #[test]
    fn atomic_writes_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut store = open(&path);
        for i in 0..5 {
            store.add(conn(&format!("c{i}"), &["a.example"])).unwrap();
        }
        store.edit("c1", |c| c.user = Some("u".into())).unwrap();
        store.delete("c2").unwrap();
        assert_eq!(files_in(dir.path()), ["c.json"]);
    }

    #[test]
    fn a_failed_write_changes_nothing_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut store = open(&path);
        store.add(conn("a", &["a.example"])).unwrap();
        // Make the rename fail: the store path becomes a non-empty directory.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "").unwrap();
        let e = store.add(conn("b", &["b.example"])).unwrap_err();
        assert!(matches!(e, StoreError::Write { .. }), "{e}");
        assert!(e.to_string().contains("c.json"), "{e}");
        assert!(store.get("b").is_none());
        assert_eq!(store.list().len(), 1);
        assert_eq!(files_in(dir.path()), ["c.json"]);
    }

    #[test]
    fn temporary_connections_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut store = open(&path);
        let mut t = conn("temp", &["a.example"]);
        t.store = false;
        store.add(t).unwrap();
        assert!(store.get("temp").is_some());
        assert!(
            !path.exists(),
            "adding only a temporary connection writes nothing"
        );
        store.add(conn("kept", &["a.example"])).unwrap();
        let reopened = open(&path);
        assert!(reopened.get("temp").is_none());
        assert!(reopened.get("kept").unwrap().store);
    }

    #[test]
    fn top_mode_orders_the_list_as_written() {
        let c = conn("c", &["a.example", "b.example", "c.example"]);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(c.url_order(Start::Fresh, &mut rng), [0, 1, 2]);
        // Nothing connected yet: a reconnect walk is the list too.
        assert_eq!(c.url_order(Start::Reconnect, &mut rng), [0, 1, 2]);
    }

    #[test]
    fn most_recent_mode_starts_with_the_url_that_last_connected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut store = open(&path);
        let mut c = conn("c", &["a.example", "b.example", "c.example"]);
        c.url_mode = UrlMode::MostRecent;
        store.add(c).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        // Nothing connected yet: list order.
        assert_eq!(
            store.get("c").unwrap().url_order(Start::Fresh, &mut rng),
            [0, 1, 2]
        );
        store.record_success("c", 2).unwrap();
        // Persisted: after a restart the walk starts at c.example, then the rest in order.
        let store = open(&path);
        let c = store.get("c").unwrap();
        assert_eq!(c.last_url, Some(2));
        assert_eq!(c.url_order(Start::Fresh, &mut rng), [2, 0, 1]);
        let mut store = store;
        let e = store.record_success("c", 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection \"c\" has no URL number 3 (it has 3)"
        );
        assert!(matches!(
            store.record_success("nope", 0),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn a_lost_connection_retries_its_last_url_first_in_every_mode() {
        let mut rng = StdRng::seed_from_u64(7);
        for mode in [UrlMode::Top, UrlMode::MostRecent, UrlMode::Random] {
            let mut c = conn("c", &["a.example", "b.example", "c.example"]);
            c.url_mode = mode;
            c.last_url = Some(1);
            for _ in 0..10 {
                let order = c.url_order(Start::Reconnect, &mut rng);
                assert_eq!(order[0], 1, "{mode:?}");
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, [0, 1, 2], "every URL exactly once");
            }
        }
        // Top: b first, then the server list without b. A fresh start uses the mode.
        let mut c = conn("c", &["a.example", "b.example", "c.example"]);
        c.last_url = Some(1);
        assert_eq!(c.url_order(Start::Reconnect, &mut rng), [1, 0, 2]);
        assert_eq!(c.url_order(Start::Fresh, &mut rng), [0, 1, 2]);
    }

    #[test]
    fn random_mode_spreads_first_choices_evenly_with_an_injected_rng() {
        let mut c = conn("c", &["a.example", "b.example", "c.example", "d.example"]);
        c.url_mode = UrlMode::Random;
        let mut rng = StdRng::seed_from_u64(42);
        let mut first = [0usize; 4];
        for _ in 0..4000 {
            let order = c.url_order(Start::Fresh, &mut rng);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "every URL exactly once");
            first[order[0]] += 1;
        }
        for n in first {
            assert!((850..=1150).contains(&n), "{first:?}");
        }
        // Reconnect keeps the last URL first even in random mode.
        c.last_url = Some(3);
        for _ in 0..20 {
            assert_eq!(c.url_order(Start::Reconnect, &mut rng)[0], 3);
        }
        // The same seed gives the same order: tests and the daemon can reproduce a walk.
        let a = c.url_order(Start::Fresh, &mut StdRng::seed_from_u64(5));
        let b = c.url_order(Start::Fresh, &mut StdRng::seed_from_u64(5));
        assert_eq!(a, b);
    }

    #[test]
    fn editing_the_url_list_follows_the_last_url() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir.path().join("c.json"));
        store.add(conn("c", &["a.example", "b.example"])).unwrap();
        store.record_success("c", 1).unwrap();
        store
            .edit("c", |c| c.urls.insert(0, url("z.example")))
            .unwrap();
        assert_eq!(store.get("c").unwrap().last_url, Some(2));
        store.edit("c", |c| c.urls.truncate(2)).unwrap();
        assert_eq!(store.get("c").unwrap().last_url, None);
        // An invalid edit is refused and changes nothing.
        let e = store.edit("c", |c| c.urls.clear()).unwrap_err();
        assert!(matches!(
            e,
            StoreError::Invalid(ConnectionError::NoUrls { .. })
        ));
        assert_eq!(store.get("c").unwrap().urls.len(), 2);
    }

    #[test]
    fn record_success_writes_only_when_the_last_url_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let mut store = open(&path);
        store.add(conn("c", &["a.example", "b.example"])).unwrap();
        store.record_success("c", 1).unwrap();
        // From here on any write would fail.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "").unwrap();
        store.record_success("c", 1).unwrap();
        assert!(store.record_success("c", 0).is_err());
        assert_eq!(store.get("c").unwrap().last_url, Some(1));
    }
}
