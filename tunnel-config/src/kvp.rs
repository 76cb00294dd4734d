//! Ivanti Tunnel key-value pairs (KVPs): the admin's per-connection tuning knobs, checked
//! against the seed's table (seed 000, "Key-value pairs for Ivanti Tunnel for macOS"), plus
//! this client's own keys, which come after the seed's ([`Key::BlockUntunnelledIPv6`]).
//!
//! Some of the seed's keys describe parts of Ivanti Tunnel this client does not have (an
//! e-mailed debug bundle, the Sentry's TCP proxy, a NAT table for app proxies). They are
//! accepted, so that profiles written for Ivanti Tunnel validate, but never silently:
//! [`Kvps::without_effect`] names each one set and why it does nothing here, and the daemon
//! says so when such a connection is added or edited.
//!
//! This module owns the key names, their value syntax, their allowed ranges and their
//! defaults. It does not apply anything: the daemon reads the effective values through the
//! getters. A batch of pairs is validated whole, so an admin's edit either lands completely
//! or not at all, with every problem reported at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    ops::RangeInclusive,
    str::FromStr,
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser::SerializeMap};

use crate::{
    events::Level,
    text::{Shown, edit_distance},
};

/// A KVP key, in the seed table's order. Keys are case-sensitive, as in the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Key {
    DisconnectTimeoutInSeconds,
    TcpIdleTmoMs,
    DebugInfoRecipient,
    LogLevel,
    AnalyticsEnabled,
    IPv6NetworkPrefix,
    DisablePinning,
    IPRoutes,
    ExcRoutes,
    SplitUDPPortList,
    MTU,
    TunIP,
    AtpProbeIdleSec,
    AtpProbeIntervalSec,
    AtpProbeCount,
    DirectLocalhost,
    /// Not in the seed: in a full tunnel whose gateway assigned no IPv6 address, whether
    /// IPv6 is dropped (true, the default) rather than sent around the tunnel.
    BlockUntunnelledIPv6,
}

/// The seed spells `AtpProbeIdleSec` as `AtpProbeldleSec` (a lower-case L for the I) in its
/// table; configurations copied from it must keep working.
const SEED_MISSPELLING: (&str, Key) = ("AtpProbeldleSec", Key::AtpProbeIdleSec);

// Ranges the seed does not give, chosen here:
/// `AtpProbeIdleSec`: the seed gives only the default (60). One second lets tests fail over
/// quickly; an hour is already longer than NAT mappings survive without traffic.
const ATP_IDLE: RangeInclusive<u32> = 1..=3600;
/// `AtpProbeIntervalSec`: default 1; a minute between probes is the slowest that still
/// detects a dead peer within a few minutes at the default count.
const ATP_INTERVAL: RangeInclusive<u32> = 1..=60;
/// `AtpProbeCount`: default 5; zero probes would never detect anything, and more than 30
/// only delays the reconnect.
const ATP_COUNT: RangeInclusive<u32> = 1..=30;
/// `MTU`: the seed gives the default 1400 only. 1280 is the IPv6 minimum link MTU; 9000 is
/// a jumbo frame, the largest any uplink here carries.
const MTU: RangeInclusive<u32> = 1280..=9000;
/// `disconnectTimeoutInSeconds`: 0, or 5-18000 (seed).
const DISCONNECT: RangeInclusive<u32> = 5..=18000;
/// `TcpIdleTmoMs`: 5000-1800000 (seed).
const TCP_IDLE: RangeInclusive<u32> = 5000..=1_800_000;
/// `IPv6NetworkPrefix`: the seed says "IPv6 ULA network prefix" and nothing more. The prefix
/// must lie in fc00::/7; /64 is the longest that leaves a full interface identifier for the
/// NAT table, /8 the shortest that is still one ULA half.
const ULA_LENGTHS: RangeInclusive<u8> = 8..=64;

impl Key {
    /// Every key, in the seed table's order.
    pub const ALL: [Key; 17] = [
        Key::DisconnectTimeoutInSeconds,
        Key::TcpIdleTmoMs,
        Key::DebugInfoRecipient,
        Key::LogLevel,
        Key::AnalyticsEnabled,
        Key::IPv6NetworkPrefix,
        Key::DisablePinning,
        Key::IPRoutes,
        Key::ExcRoutes,
        Key::SplitUDPPortList,
        Key::MTU,
        Key::TunIP,
        Key::AtpProbeIdleSec,
        Key::AtpProbeIntervalSec,
        Key::AtpProbeCount,
        Key::DirectLocalhost,
        Key::BlockUntunnelledIPv6,
    ];

    /// The key as the seed spells it.
    pub fn name(self) -> &'static str {
        match self {
            Key::DisconnectTimeoutInSeconds => "disconnectTimeoutInSeconds",
            Key::TcpIdleTmoMs => "TcpIdleTmoMs",
            Key::DebugInfoRecipient => "debugInfoRecipient",
            Key::LogLevel => "LogLevel",
            Key::AnalyticsEnabled => "AnalyticsEnabled",
            Key::IPv6NetworkPrefix => "IPv6NetworkPrefix",
            Key::DisablePinning => "DisablePinning",
            Key::IPRoutes => "IPRoutes",
            Key::ExcRoutes => "ExcRoutes",
            Key::SplitUDPPortList => "SplitUDPPortList",
            Key::MTU => "MTU",
            Key::TunIP => "TunIP",
            Key::AtpProbeIdleSec => "AtpProbeIdleSec",
            Key::AtpProbeIntervalSec => "AtpProbeIntervalSec",
            Key::AtpProbeCount => "AtpProbeCount",
            Key::DirectLocalhost => "DirectLocalhost",
            Key::BlockUntunnelledIPv6 => "BlockUntunnelledIPv6",
        }
    }

    /// What the key accepts, in words, for error messages and help.
    pub fn allowed(self) -> &'static str {
        match self {
            Key::DisconnectTimeoutInSeconds => "0 (never disconnect) or 5-18000 seconds",
            Key::TcpIdleTmoMs => "5000-1800000 milliseconds",
            Key::DebugInfoRecipient => "an email address, name@domain",
            Key::LogLevel => "error, warning, info, debug, session or packet",
            Key::AnalyticsEnabled
            | Key::DisablePinning
            | Key::DirectLocalhost
            | Key::BlockUntunnelledIPv6 => "true or false",
            Key::IPv6NetworkPrefix => {
                "an IPv6 ULA prefix inside fc00::/7, length 8-64, host bits zero (e.g. fd00:1234::/48)"
            }
            Key::IPRoutes | Key::ExcRoutes => {
                "a ';'-separated list of IPv4/IPv6 CIDRs or addresses (e.g. 10.0.0.0/8;172.16.0.0/16)"
            }
            Key::SplitUDPPortList => {
                "a ';'-separated list of ports 1-65535 and ascending ranges (e.g. 53;161-162;200-1024)"
            }
            Key::MTU => "1280-9000",
            Key::TunIP => "a unicast IPv4 address (e.g. 192.168.13.10)",
            Key::AtpProbeIdleSec => "1-3600 seconds",
            Key::AtpProbeIntervalSec => "1-60 seconds",
            Key::AtpProbeCount => "1-30",
        }
    }

    /// The key named exactly `name` (or the seed's `AtpProbeldleSec` spelling).
    pub fn from_name(name: &str) -> Option<Key> {
        if name == SEED_MISSPELLING.0 {
            return Some(SEED_MISSPELLING.1);
        }
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The key `name` was probably meant to be: the same letters in another case, or a key
    /// at most two edits away.
    pub fn suggest(name: &str) -> Option<Key> {
        let trimmed = name.trim();
        let spellings = Key::ALL
            .iter()
            .map(|k| (k.name(), *k))
            .chain(std::iter::once(SEED_MISSPELLING));
        if let Some((_, k)) = spellings
            .clone()
            .find(|(n, _)| n.eq_ignore_ascii_case(trimmed))
        {
            return Some(k);
        }
        // Edit distance is quadratic; nothing longer than this is a typo of a key.
        if trimmed.len() > 64 {
            return None;
        }
        let lower = trimmed.to_ascii_lowercase();
        spellings
            .map(|(n, k)| (edit_distance(&lower, &n.to_ascii_lowercase()), k))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A list of UDP destination ports in the `SplitUDPPortList` syntax: `53;161-162;200-1024`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortList {
    ranges: Vec<RangeInclusive<u16>>,
}

impl PortList {
    /// A list of `ranges`, in that order: at least one, each within 1-65535 and ascending.
    /// The refusals are those of parsing, naming the range as it would be written.
    pub fn from_ranges(ranges: Vec<RangeInclusive<u16>>) -> Result<PortList, ValueProblem> {
        if ranges.is_empty() {
            return Err(ValueProblem::EmptyList);
        }
        for r in &ranges {
            let entry = || {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            };
            if *r.start() == 0 {
                return Err(ValueProblem::BadPort { entry: entry() });
            }
            if r.start() > r.end() {
                return Err(ValueProblem::BackwardsRange { entry: entry() });
            }
        }
        Ok(PortList { ranges })
    }

    /// The ranges, in the order written; single ports are one-port ranges.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }

    /// Whether `port` is in the list.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&port))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

impl FromStr for PortList {
    type Err = ValueProblem;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ranges = list_entries(s)?
            .into_iter()
            .map(|entry| {
                let port = |t: &str| match t.trim().parse::<u16>() {
                    Ok(p) if p > 0 && t.trim().bytes().all(|b| b.is_ascii_digit()) => Ok(p),
                    _ => Err(ValueProblem::BadPort {
                        entry: entry.to_string(),
                    }),
                };
                match entry.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (port(a)?, port(b)?);
                        if a > b {
                            return Err(ValueProblem::BackwardsRange {
                                entry: entry.to_string(),
                            });
                        }
                        Ok(a..=b)
                    }
                    None => port(entry).map(|p| p..=p),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PortList { ranges })
    }
}

/// What is wrong with a value, beyond its key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueProblem {
    NotANumber,
    OutOfRange,
    NotABool,
    UnknownLevel,
    NotAnEmail,
    NotAnIpv4Address,
    NotUnicast,
    NotAnIpv6Prefix,
    NotUla,
    PrefixLength { length: u8 },
    HostBitsSet { network: String },
    EmptyList,
    EmptyEntry { index: usize },
    BadRoute { entry: String },
    RouteHostBits { entry: String, network: String },
    BadPort { entry: String },
    BackwardsRange { entry: String },
}

impl fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueProblem::NotANumber => f.write_str("not a whole number"),
            ValueProblem::OutOfRange => f.write_str("out of range"),
            ValueProblem::NotABool => f.write_str("not a boolean"),
            ValueProblem::UnknownLevel => f.write_str("not a log level"),
            ValueProblem::NotAnEmail => f.write_str("not an email address"),
            ValueProblem::NotAnIpv4Address => f.write_str("not an IPv4 address"),
            ValueProblem::NotUnicast => f.write_str("not a unicast address"),
            ValueProblem::NotAnIpv6Prefix => f.write_str("not an IPv6 prefix"),
            ValueProblem::NotUla => f.write_str("not inside the ULA range fc00::/7"),
            ValueProblem::PrefixLength { length } => {
                write!(f, "prefix length /{length} not allowed")
            }
            ValueProblem::HostBitsSet { network } => {
                write!(f, "host bits are set (did you mean {network}?)")
            }
            ValueProblem::EmptyList => f.write_str("the list is empty"),
            ValueProblem::EmptyEntry { index } => {
                write!(f, "entry {} of the list is empty (stray ';'?)", index + 1)
            }
            ValueProblem::BadRoute { entry } => {
                write!(f, "{} is not a CIDR or address", Shown(entry))
            }
            ValueProblem::RouteHostBits { entry, network } => write!(
                f,
                "{} has host bits set (did you mean {network}?)",
                Shown(entry)
            ),
            ValueProblem::BadPort { entry } => write!(f, "{} is not a port 1-65535", Shown(entry)),
            ValueProblem::BackwardsRange { entry } => {
                write!(f, "range {} runs backwards", Shown(entry))
            }
        }
    }
}

/// One refused pair.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvpError {
    #[error("unknown KVP key {}{}", Shown(.key), suggestion(.did_you_mean))]
    UnknownKey {
        key: String,
        did_you_mean: Option<Key>,
    },
    #[error("KVP {key} is given more than once")]
    Duplicate { key: Key },
    #[error("KVP {key}={}: {problem}; allowed: {}", Shown(.value), .key.allowed())]
    Invalid {
        key: Key,
        value: String,
        problem: ValueProblem,
    },
    #[error("{} is not a KVP: expected KEY=VALUE", Shown(.text))]
    NotAPair { text: String },
}

fn suggestion(key: &Option<Key>) -> String {
    key.map(|k| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

/// Every problem found in a batch of pairs (never empty). Nothing of the batch was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.0))]
pub struct KvpErrors(Vec<KvpError>);

fn join(errors: &[KvpError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl KvpErrors {
    /// The problems, in the order of the pairs.
    pub fn errors(&self) -> &[KvpError] {
        &self.0
    }
}

/// A typed, validated value of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Seconds(u32),
    Millis(u32),
    Text(String),
    Level(Level),
    Bool(bool),
    Ula(Ipv6Net),
    Routes(Vec<IpNet>),
    Ports(PortList),
    Mtu(u16),
    Ipv4(Ipv4Addr),
    Count(u32),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Seconds(n) | Value::Millis(n) | Value::Count(n) => write!(f, "{n}"),
            Value::Text(t) => f.write_str(t),
            Value::Level(l) => write!(f, "{l}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Ula(n) => write!(f, "{n}"),
            Value::Routes(r) => {
                let parts: Vec<String> = r.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join(";"))
            }
            Value::Ports(p) => write!(f, "{p}"),
            Value::Mtu(m) => write!(f, "{m}"),
            Value::Ipv4(a) => write!(f, "{a}"),
        }
    }
}

/// A connection's KVPs: only the keys the admin set are stored; the getters give the
/// effective value (the set one, else the seed's default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kvps {
    values: BTreeMap<Key, Value>,
}

impl Kvps {
    /// Validates a batch of `key=value` pairs. Every problem is reported; on any problem
    /// nothing is returned.
    pub fn parse<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Kvps, KvpErrors> {
        Kvps::default().updated(pairs, &[] as &[&str])
    }

    /// Splits `KEY=VALUE` (as given on a command line) at the first `=`.
    pub fn split_pair(text: &str) -> Result<(String, String), KvpError> {
        text.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .ok_or_else(|| KvpError::NotAPair {
                text: text.to_string(),
            })
    }

    /// These KVPs with the keys in `unset` removed and the pairs in `set` set, validated
    /// whole: on any problem `self` is untouched and every problem is reported.
    pub fn updated<K: AsRef<str>, V: AsRef<str>, U: AsRef<str>>(
        &self,
        set: &[(K, V)],
        unset: &[U],
    ) -> Result<Kvps, KvpErrors> {
        let mut out = self.clone();
        let mut errors = Vec::new();
        for name in unset {
            match Key::from_name(name.as_ref()) {
                Some(key) => {
                    out.values.remove(&key);
                }
                None => errors.push(unknown(name.as_ref())),
            }
        }
        let mut seen = BTreeSet::new();
        for (name, value) in set {
            let (name, value) = (name.as_ref(), value.as_ref());
            let Some(key) = Key::from_name(name) else {
                errors.push(unknown(name));
                continue;
            };
            if !seen.insert(key) {
                errors.push(KvpError::Duplicate { key });
                continue;
            }
            match parse_value(key, value) {
                Ok(v) => {
                    out.values.insert(key, v);
                }
                Err(problem) => errors.push(KvpError::Invalid {
                    key,
                    value: value.to_string(),
                    problem,
                }),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(KvpErrors(errors))
        }
    }

    /// The pairs that were set, in canonical form and the seed table's order;
    /// `Kvps::parse(&kvps.to_pairs())` gives `kvps` back.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(k, v)| (k.name().to_string(), v.to_string()))
            .collect()
    }

    /// Whether the admin set `key` (otherwise its getter gives the default).
    pub fn is_set(&self, key: Key) -> bool {
        self.values.contains_key(&key)
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn get(&self, key: Key) -> Option<&Value> {
        self.values.get(&key)
    }

    /// `disconnectTimeoutInSeconds` (default 60; 0 means never).
    pub fn disconnect_timeout_secs(&self) -> u32 {
        match self.get(Key::DisconnectTimeoutInSeconds) {
            Some(Value::Seconds(s)) => *s,
            _ => 60,
        }
    }

    /// `disconnectTimeoutInSeconds` as a duration; `None` means never disconnect.
    pub fn disconnect_timeout(&self) -> Option<Duration> {
        match self.disconnect_timeout_secs() {
            0 => None,
            s => Some(Duration::from_secs(u64::from(s))),
        }
    }

    /// `TcpIdleTmoMs` (default 60 seconds: the seed's "default idle timeout ... 60 seconds").
    pub fn tcp_idle_timeout(&self) -> Duration {
        match self.get(Key::TcpIdleTmoMs) {
            Some(Value::Millis(ms)) => Duration::from_millis(u64::from(*ms)),
            _ => Duration::from_secs(60),
        }
    }

    /// `debugInfoRecipient` (no default).
    pub fn debug_info_recipient(&self) -> Option<&str> {
        match self.get(Key::DebugInfoRecipient) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// `LogLevel` (default info).
    pub fn log_level(&self) -> Level {
        match self.get(Key::LogLevel) {
            Some(Value::Level(l)) => *l,
            _ => Level::Info,
        }
    }

    /// `AnalyticsEnabled` (default true). This client collects no analytics either way; the
    /// key is accepted so that profiles written for Ivanti Tunnel validate.
    pub fn analytics_enabled(&self) -> bool {
        self.bool_or(Key::AnalyticsEnabled, true)
    }

    /// `IPv6NetworkPrefix` (no default).
    pub fn ipv6_network_prefix(&self) -> Option<Ipv6Net> {
        match self.get(Key::IPv6NetworkPrefix) {
            Some(Value::Ula(n)) => Some(*n),
            _ => None,
        }
    }

    /// `DisablePinning` (default false: pinning on).
    pub fn disable_pinning(&self) -> bool {
        self.bool_or(Key::DisablePinning, false)
    }

    /// `IPRoutes` as set, or `None` when the admin set none (then the gateway's routes apply).
    pub fn configured_ip_routes(&self) -> Option<&[IpNet]> {
        match self.get(Key::IPRoutes) {
            Some(Value::Routes(r)) => Some(r),
            _ => None,
        }
    }

    /// `IPRoutes`, effective: the set list, else the seed's default 0.0.0.0/0 together with
    /// ::/0 (DESIGN.md: include routes default to 0.0.0.0/0 "and ::/0").
    pub fn ip_routes(&self) -> Vec<IpNet> {
        match self.configured_ip_routes() {
            Some(r) => r.to_vec(),
            None => vec![IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())],
        }
    }

    /// `ExcRoutes` (default none).
    pub fn exc_routes(&self) -> &[IpNet] {
        match self.get(Key::ExcRoutes) {
            Some(Value::Routes(r)) => r,
            _ => &[],
        }
    }

    /// `SplitUDPPortList`; `None` (the default) means all UDP goes through the tunnel.
    pub fn split_udp_ports(&self) -> Option<&PortList> {
        match self.get(Key::SplitUDPPortList) {
            Some(Value::Ports(p)) => Some(p),
            _ => None,
        }
    }

    /// `MTU` (default 1400).
    pub fn mtu(&self) -> u16 {
        match self.get(Key::MTU) {
            Some(Value::Mtu(m)) => *m,
            _ => 1400,
        }
    }

    /// `TunIP` (no default: the gateway's address is used).
    pub fn tun_ip(&self) -> Option<Ipv4Addr> {
        match self.get(Key::TunIP) {
            Some(Value::Ipv4(a)) => Some(*a),
            _ => None,
        }
    }

    /// `AtpProbeIdleSec` (default 60 seconds).
    pub fn atp_probe_idle(&self) -> Duration {
        Duration::from_secs(u64::from(self.count_or(Key::AtpProbeIdleSec, 60)))
    }

    /// `AtpProbeIntervalSec` (default 1 second).
    pub fn atp_probe_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.count_or(Key::AtpProbeIntervalSec, 1)))
    }

    /// `AtpProbeCount` (default 5).
    pub fn atp_probe_count(&self) -> u32 {
        self.count_or(Key::AtpProbeCount, 5)
    }

    /// `DirectLocalhost` (default false; the seed only ever shows `true` being entered).
    pub fn direct_localhost(&self) -> bool {
        self.bool_or(Key::DirectLocalhost, false)
    }

    /// `BlockUntunnelledIPv6` (default true): a full tunnel (the include routes hold
    /// 0.0.0.0/0) whose gateway assigned no IPv6 address drops IPv6 rather than letting it
    /// leave around the tunnel; `ExcRoutes` and the gateway stay reachable.
    pub fn block_untunnelled_ipv6(&self) -> bool {
        self.bool_or(Key::BlockUntunnelledIPv6, true)
    }

    /// The keys set here that have no effect on this client, each with the reason, in the
    /// seed table's order.
    pub fn without_effect(&self) -> Vec<NoEffect> {
        self.values
            .iter()
            .filter_map(|(key, value)| {
                let why = match (key, value) {
                    (Key::TcpIdleTmoMs, _) => {
                        "it times out the TCP connections Standalone Sentry proxies for per-app \
                         VPN; this client proxies nothing: an app's TCP connection runs end to \
                         end through the tunnel"
                    }
                    (Key::DebugInfoRecipient, _) => {
                        "this client sends no debug information by e-mail; `tunnel logs save` \
                         writes the bundle to a file"
                    }
                    (Key::LogLevel, _) => {
                        "the event log's level is the daemon's, not a connection's: use \
                         `tunnel launcher -L 5` (detailed) or `-L 3` (normal), and \
                         `tunneld --log-level` for the daemon's own log"
                    }
                    (Key::AnalyticsEnabled, _) => {
                        "this client collects no analytics, whatever the value"
                    }
                    (Key::IPv6NetworkPrefix, _) => {
                        "it sizes the NAT table of Ivanti Tunnel's app proxy; this client \
                         translates to the tunnel address the gateway assigns and has no such \
                         table"
                    }
                    (Key::DirectLocalhost, Value::Bool(false)) => {
                        "localhost traffic never reaches the tunnel on Linux (it stays on the \
                         loopback device), so it cannot be sent through it"
                    }
                    _ => return None,
                };
                Some(NoEffect { key: *key, why })
            })
            .collect()
    }

    fn bool_or(&self, key: Key, default: bool) -> bool {
        match self.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }

    fn count_or(&self, key: Key, default: u32) -> u32 {
        match self.get(key) {
            Some(Value::Seconds(n) | Value::Count(n)) => *n,
            _ => default,
        }
    }
}

/// A key that was set and does nothing on this client ([`Kvps::without_effect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoEffect {
    pub key: Key,
    /// Why, in a sentence that completes "has no effect here: ".
    pub why: &'static str,
}

impl fmt::Display for NoEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KVP {} has no effect here: {}", self.key, self.why)
    }
}

fn unknown(name: &str) -> KvpError {
    KvpError::UnknownKey {
        key: name.to_string(),
        did_you_mean: Key::suggest(name),
    }
}

/// Surrounding whitespace is not part of a value: MDM forms and shell quoting add it.
fn parse_value(key: Key, raw: &str) -> Result<Value, ValueProblem> {
    let v = raw.trim();
    match key {
        Key::DisconnectTimeoutInSeconds => {
            let n = number(v)?;
            if n == 0 || DISCONNECT.contains(&n) {
                Ok(Value::Seconds(n))
            } else {
                Err(ValueProblem::OutOfRange)
            }
        }
        Key::TcpIdleTmoMs => ranged(v, &TCP_IDLE).map(Value::Millis),
        Key::DebugInfoRecipient => email(v).map(|()| Value::Text(v.to_string())),
        Key::LogLevel => level(v).map(Value::Level),
        Key::AnalyticsEnabled
        | Key::DisablePinning
        | Key::DirectLocalhost
        | Key::BlockUntunnelledIPv6 => boolean(v).map(Value::Bool),
        Key::IPv6NetworkPrefix => ula(v).map(Value::Ula),
        Key::IPRoutes | Key::ExcRoutes => routes(v).map(Value::Routes),
        Key::SplitUDPPortList => v.parse().map(Value::Ports),
        Key::MTU => ranged(v, &MTU)
            .and_then(|m| u16::try_from(m).map_err(|_| ValueProblem::OutOfRange))
            .map(Value::Mtu),
        Key::TunIP => unicast_v4(v).map(Value::Ipv4),
        Key::AtpProbeIdleSec => ranged(v, &ATP_IDLE).map(Value::Seconds),
        Key::AtpProbeIntervalSec => ranged(v, &ATP_INTERVAL).map(Value::Seconds),
        Key::AtpProbeCount => ranged(v, &ATP_COUNT).map(Value::Count),
    }
}

/// Decimal digits only: no sign, no spaces inside, no hex. A number too large for `u32` is
/// out of range rather than "not a number".
fn number(v: &str) -> Result<u32, ValueProblem> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueProblem::NotANumber);
    }
    v.parse().map_err(|_| ValueProblem::OutOfRange)
}

fn ranged(v: &str, range: &RangeInclusive<u32>) -> Result<u32, ValueProblem> {
    let n = number(v)?;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(ValueProblem::OutOfRange)
    }
}

/// `true`/`false` in any ASCII case: the seed writes them lower-case, MDM consoles often
/// capitalise them.
fn boolean(v: &str) -> Result<bool, ValueProblem> {
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ValueProblem::NotABool)
    }
}

/// A level name; the seed's instruction "Enter debug <Log Level>" is also accepted
/// literally, as `debug info` meaning `info`.
fn level(v: &str) -> Result<Level, ValueProblem> {
    let name = match v.split_once(char::is_whitespace) {
        Some((first, rest)) if first.eq_ignore_ascii_case("debug") => rest.trim(),
        _ => v,
    };
    name.parse().map_err(|_| ValueProblem::UnknownLevel)
}

fn email(v: &str) -> Result<(), ValueProblem> {
    let ok = v.len() <= 254
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && match v.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if ok {
        Ok(())
    } else {
        Err(ValueProblem::NotAnEmail)
    }
}

fn ula(v: &str) -> Result<Ipv6Net, ValueProblem> {
    let net: Ipv6Net = v.parse().map_err(|_| ValueProblem::NotAnIpv6Prefix)?;
    let ula_range = Ipv6Net::new(std::net::Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7)
        .map_err(|_| ValueProblem::NotUla)?;
    if !ula_range.contains(&net.network()) {
        return Err(ValueProblem::NotUla);
    }
    if !ULA_LENGTHS.contains(&net.prefix_len()) {
        return Err(ValueProblem::PrefixLength {
            length: net.prefix_len(),
        });
    }
    if net.trunc() != net {
        return Err(ValueProblem::HostBitsSet {
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

fn unicast_v4(v: &str) -> Result<Ipv4Addr, ValueProblem> {
    let a: Ipv4Addr = v.parse().map_err(|_| ValueProblem::NotAnIpv4Address)?;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(ValueProblem::NotUnicast);
    }
    Ok(a)
}

/// The entries of a `;`-separated list, trimmed. Empty entries are refused rather than
/// skipped: `10.0.0.0/8;;` usually means something was lost in an edit.
fn list_entries(v: &str) -> Result<Vec<&str>, ValueProblem> {
    if v.trim().is_empty() {
        return Err(ValueProblem::EmptyList);
    }
    v.split(';')
        .enumerate()
        .map(|(index, e)| {
            let e = e.trim();
            if e.is_empty() {
                Err(ValueProblem::EmptyEntry { index })
            } else {
                Ok(e)
            }
        })
        .collect()
}

/// A route is a CIDR or a bare address (a host route). A CIDR with host bits set is refused:
/// `192.168.1.1/24` may mean the /24 or the host, and guessing wrong tunnels the wrong thing.
fn routes(v: &str) -> Result<Vec<IpNet>, ValueProblem> {
    list_entries(v)?
        .into_iter()
        .map(|entry| {
            let bad = || ValueProblem::BadRoute {
                entry: entry.to_string(),
            };
            if entry.contains('/') {
                let net: IpNet = entry.parse().map_err(|_| bad())?;
                if net.trunc() != net {
                    return Err(ValueProblem::RouteHostBits {
                        entry: entry.to_string(),
                        network: net.trunc().to_string(),
                    });
                }
                Ok(net)
            } else {
                entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad())
            }
        })
        .collect()
}

impl Serialize for Kvps {
    /// A map from key to value, in the seed table's order.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pairs = self.to_pairs();
        let mut map = serializer.serialize_map(Some(pairs.len()))?;
        for (k, v) in &pairs {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A KVP value in a store file: a string, or (for hand-written TOML such as `MTU = 1300`)
/// an integer or a boolean, validated as its text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, integer or boolean KVP value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Kvps {
    /// A map from key to value, validated like [`Kvps::parse`]: a stored value that the
    /// rules no longer accept is an error, not silently dropped.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> de::Visitor<'de> for Pairs {
            type Value = Vec<(String, String)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of KVP names to string values")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some((k, Scalar(v))) = map.next_entry::<String, Scalar>()? {
                    pairs.push((k, v));
                }
                Ok(pairs)
            }
        }
        let pairs = deserializer.deserialize_map(Pairs)?;
        Kvps::parse(&pairs).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(k: &str, v: &str) -> Result<Kvps, KvpErrors> {
        Kvps::parse(&[(k, v)])
    }

    fn err(k: &str, v: &str) -> String {
        match one(k, v) {
            Ok(kvps) => panic!("{k}={v} accepted: {kvps:?}"),
            Err(e) => {
                assert_eq!(e.errors().len(), 1, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn defaults_follow_the_seed() {
        let k = Kvps::default();
        assert_eq!(k.disconnect_timeout_secs(), 60);
        assert_eq!(k.disconnect_timeout(), Some(Duration::from_secs(60)));
        assert_eq!(k.tcp_idle_timeout(), Duration::from_secs(60));
        assert_eq!(k.debug_info_recipient(), None);
        assert_eq!(k.log_level(), Level::Info);
        assert!(k.analytics_enabled());
        assert_eq!(k.ipv6_network_prefix(), None);
        assert!(!k.disable_pinning());
        assert_eq!(k.configured_ip_routes(), None);
        assert_eq!(
            k.ip_routes(),
            vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]
        );
        assert!(k.exc_routes().is_empty());
        assert_eq!(k.split_udp_ports(), None);
        assert_eq!(k.mtu(), 1400);
        assert_eq!(k.tun_ip(), None);
        assert!(k.block_untunnelled_ipv6());
        assert_eq!(k.atp_probe_idle(), Duration::from_secs(60));
        assert_eq!(k.atp_probe_interval(), Duration::from_secs(1));
        assert_eq!(k.atp_probe_count(), 5);
        assert!(!k.direct_localhost());
        assert!(k.is_empty());
        assert!(k.to_pairs().is_empty());
    }

    #[test]
    fn disconnect_timeout_is_zero_or_5_to_18000() {
        assert_eq!(
            one("disconnectTimeoutInSeconds", "0")
                .unwrap()
                .disconnect_timeout(),
            None
        );
        for ok in ["5", "18000", "300"] {
            let k = one("disconnectTimeoutInSeconds", ok).unwrap();
            assert_eq!(k.disconnect_timeout_secs().to_string(), ok);
        }
        for bad in ["1", "4", "18001", "99999999999999999999"] {
            assert_eq!(
                err("disconnectTimeoutInSeconds", bad),
                format!(
                    "KVP disconnectTimeoutInSeconds=\"{bad}\": out of range; allowed: 0 (never disconnect) or 5-18000 seconds"
                )
            );
        }
        for bad in ["", "-5", "+5", "5s", "0x10", "1 0", "５"] {
            let m = err("disconnectTimeoutInSeconds", bad);
            assert!(m.contains("not a whole number"), "{m}");
            assert!(m.contains("0 (never disconnect) or 5-18000"), "{m}");
        }
    }

    #[test]
    fn tcp_idle_range() {
        assert_eq!(
            one("TcpIdleTmoMs", "5000").unwrap().tcp_idle_timeout(),
            Duration::from_millis(5000)
        );
        assert_eq!(
            one("TcpIdleTmoMs", "1800000").unwrap().tcp_idle_timeout(),
            Duration::from_secs(1800)
        );
        assert_eq!(
            err("TcpIdleTmoMs", "4999"),
            "KVP TcpIdleTmoMs=\"4999\": out of range; allowed: 5000-1800000 milliseconds"
        );
        assert!(err("TcpIdleTmoMs", "1800001").contains("out of range"));
    }

    #[test]
    fn log_level_takes_the_seed_levels() {
        for l in Level::ALL {
            assert_eq!(one("LogLevel", l.as_str()).unwrap().log_level(), l);
        }
        assert_eq!(one("LogLevel", "Debug").unwrap().log_level(), Level::Debug);
        assert_eq!(
            one("LogLevel", "debug packet").unwrap().log_level(),
            Level::Packet
        );
        assert_eq!(
            err("LogLevel", "verbose"),
            "KVP LogLevel=\"verbose\": not a log level; allowed: error, warning, info, debug, session or packet"
        );
        assert!(err("LogLevel", "debug verbose").contains("not a log level"));
    }

    #[test]
    fn booleans() {
        assert!(
            !one("AnalyticsEnabled", "false")
                .unwrap()
                .analytics_enabled()
        );
        assert!(one("DisablePinning", "TRUE").unwrap().disable_pinning());
        assert!(one("DirectLocalhost", " true ").unwrap().direct_localhost());
        assert_eq!(
            err("DisablePinning", "yes"),
            "KVP DisablePinning=\"yes\": not a boolean; allowed: true or false"
        );
        assert!(err("AnalyticsEnabled", "1").contains("not a boolean"));
        assert!(err("DirectLocalhost", "").contains("true or false"));
    }

    #[test]
    fn ipv6_prefix_must_be_a_ula_network() {
        let k = one("IPv6NetworkPrefix", "fd00:1234::/48").unwrap();
        assert_eq!(
            k.ipv6_network_prefix(),
            Some("fd00:1234::/48".parse().unwrap())
        );
        assert!(one("IPv6NetworkPrefix", "fc00::/64").is_ok());
        let m = err("IPv6NetworkPrefix", "2001:db8::/48");
        assert!(m.starts_with("KVP IPv6NetworkPrefix=\"2001:db8::/48\": not inside the ULA range fc00::/7; allowed: an IPv6 ULA prefix"), "{m}");
        assert!(err("IPv6NetworkPrefix", "fd00::/96").contains("prefix length /96 not allowed"));
        assert!(err("IPv6NetworkPrefix", "fc00::/7").contains("prefix length /7"));
        assert!(err("IPv6NetworkPrefix", "fd00::1/64").contains("did you mean fd00::/64?"));
        assert!(err("IPv6NetworkPrefix", "fd00::").contains("not an IPv6 prefix"));
        assert!(err("IPv6NetworkPrefix", "10.0.0.0/8").contains("not an IPv6 prefix"));
    }

    #[test]
    fn routes_are_semicolon_lists_of_cidrs() {
        // The seed's examples.
        let k = one("IPRoutes", "10.0.0.0/8;172.16.0.0/16").unwrap();
        assert_eq!(
            k.configured_ip_routes().unwrap(),
            &[
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "172.16.0.0/16".parse().unwrap()
            ]
        );
        assert_eq!(k.ip_routes().len(), 2);
        let k = one("ExcRoutes", "10.10.10.10/32").unwrap();
        assert_eq!(
            k.exc_routes(),
            &["10.10.10.10/32".parse::<IpNet>().unwrap()]
        );
        // Bare addresses are host routes; IPv6 is fine; spaces around entries are ignored.
        let k = one("ExcRoutes", " 192.0.2.7 ; 2001:db8::/32 ;fd00::1").unwrap();
        assert_eq!(
            k.to_pairs(),
            vec![(
                "ExcRoutes".to_string(),
                "192.0.2.7/32;2001:db8::/32;fd00::1/128".to_string()
            )]
        );
        assert_eq!(
            err("IPRoutes", "10.0.0.0/8;;172.16.0.0/16"),
            "KVP IPRoutes=\"10.0.0.0/8;;172.16.0.0/16\": entry 2 of the list is empty (stray ';'?); allowed: a ';'-separated list of IPv4/IPv6 CIDRs or addresses (e.g. 10.0.0.0/8;172.16.0.0/16)"
        );
        assert!(err("IPRoutes", "10.0.0.0/8;").contains("entry 2 of the list is empty"));
        assert!(err("ExcRoutes", "").contains("the list is empty"));
        assert!(
            err("IPRoutes", "10.0.0.0/33").contains("\"10.0.0.0/33\" is not a CIDR or address")
        );
        assert!(err("IPRoutes", "corp.example").contains("is not a CIDR or address"));
        assert!(
            err("IPRoutes", "192.168.1.1/24")
                .contains("\"192.168.1.1/24\" has host bits set (did you mean 192.168.1.0/24?)")
        );
    }

    #[test]
    fn split_udp_port_list_seed_example() {
        let k = one("SplitUDPPortList", "53;161-162;200-1024").unwrap();
        let p = k.split_udp_ports().unwrap();
        assert_eq!(p.ranges(), &[53..=53, 161..=162, 200..=1024]);
        for port in [53, 161, 162, 200, 500, 1024] {
            assert!(p.contains(port), "{port}");
        }
        for port in [52, 54, 160, 163, 199, 1025, 0] {
            assert!(!p.contains(port), "{port}");
        }
        assert_eq!(p.to_string(), "53;161-162;200-1024");
    }

    #[test]
    fn split_udp_port_list_refusals() {
        let allowed = "allowed: a ';'-separated list of ports 1-65535 and ascending ranges (e.g. 53;161-162;200-1024)";
        assert_eq!(
            err("SplitUDPPortList", "53;0"),
            format!("KVP SplitUDPPortList=\"53;0\": \"0\" is not a port 1-65535; {allowed}")
        );
        assert!(err("SplitUDPPortList", "65536").contains("\"65536\" is not a port"));
        assert!(err("SplitUDPPortList", "1024-200").contains("range \"1024-200\" runs backwards"));
        assert!(err("SplitUDPPortList", "53;;161").contains("entry 2 of the list is empty"));
        assert!(err("SplitUDPPortList", ";53").contains("entry 1 of the list is empty"));
        assert!(err("SplitUDPPortList", "").contains("the list is empty"));
        assert!(err("SplitUDPPortList", "1-2-3").contains("\"1-2-3\" is not a port"));
        assert!(err("SplitUDPPortList", "-5").contains("is not a port"));
        assert!(err("SplitUDPPortList", "+53").contains("is not a port"));
        assert!(err("SplitUDPPortList", "dns").contains("is not a port"));
        assert_eq!(
            one("SplitUDPPortList", "65535;1-1")
                .unwrap()
                .split_udp_ports()
                .unwrap()
                .ranges(),
            &[65535..=65535, 1..=1]
        );
    }

    /// The port list on its own (the data path's policy takes it without a key), with the
    /// culprit of each refusal typed.
    #[test]
    fn port_list_refusals_name_the_culprit() {
        let parse = |s: &str| s.parse::<PortList>();
        assert_eq!(parse(""), Err(ValueProblem::EmptyList));
        assert_eq!(parse("53;;54"), Err(ValueProblem::EmptyEntry { index: 1 }));
        let bad = |entry: &str| {
            Err(ValueProblem::BadPort {
                entry: entry.into(),
            })
        };
        assert_eq!(parse("53;x"), bad("x"));
        assert_eq!(parse("0"), bad("0"));
        assert_eq!(parse("70000"), bad("70000"));
        assert_eq!(
            parse("20-10"),
            Err(ValueProblem::BackwardsRange {
                entry: "20-10".into()
            })
        );
        let l = parse("53;161-162;200-1024").unwrap();
        assert!(l.contains(53) && l.contains(162) && l.contains(1024) && l.contains(200));
        assert!(!l.contains(54) && !l.contains(160) && !l.contains(1025));
    }

    #[test]
    fn port_list_from_ranges_checks_as_parsing_does() {
        let l = PortList::from_ranges(vec![53..=53, 161..=162]).unwrap();
        assert_eq!(l, "53;161-162".parse().unwrap());
        assert_eq!(PortList::from_ranges(vec![]), Err(ValueProblem::EmptyList));
        assert_eq!(
            PortList::from_ranges(vec![53..=53, 0..=0]),
            Err(ValueProblem::BadPort { entry: "0".into() })
        );
        assert_eq!(
            PortList::from_ranges(vec![0..=10]),
            Err(ValueProblem::BadPort {
                entry: "0-10".into()
            })
        );
        #[expect(
            clippy::reversed_empty_ranges,
            reason = "a backwards range is what is tested"
        )]
        let backwards = 20..=10;
        assert_eq!(
            PortList::from_ranges(vec![backwards]),
            Err(ValueProblem::BackwardsRange {
                entry: "20-10".into()
            })
        );
    }

    #[test]
    fn mtu_range_and_default() {
        assert_eq!(one("MTU", "1280").unwrap().mtu(), 1280);
        assert_eq!(one("MTU", "9000").unwrap().mtu(), 9000);
        assert_eq!(
            err("MTU", "1279"),
            "KVP MTU=\"1279\": out of range; allowed: 1280-9000"
        );
        assert!(err("MTU", "9001").contains("out of range"));
        assert!(err("MTU", "70000").contains("out of range"));
    }

    #[test]
    fn tun_ip_is_a_unicast_ipv4_address() {
        assert_eq!(
            one("TunIP", "192.168.13.10").unwrap().tun_ip(),
            Some(Ipv4Addr::new(192, 168, 13, 10))
        );
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1"] {
            let m = err("TunIP", bad);
            assert!(m.contains("not a unicast address"), "{m}");
            assert!(m.contains("allowed: a unicast IPv4 address"), "{m}");
        }
        assert!(err("TunIP", "192.168.13").contains("not an IPv4 address"));
        assert!(err("TunIP", "fd00::1").contains("not an IPv4 address"));
        assert!(err("TunIP", "192.168.13.10/24").contains("not an IPv4 address"));
    }

    #[test]
    fn atp_probes_and_the_seed_spelling() {
        let k = Kvps::parse(&[
            ("AtpProbeIdleSec", "30"),
            ("AtpProbeIntervalSec", "2"),
            ("AtpProbeCount", "3"),
        ])
        .unwrap();
        assert_eq!(k.atp_probe_idle(), Duration::from_secs(30));
        assert_eq!(k.atp_probe_interval(), Duration::from_secs(2));
        assert_eq!(k.atp_probe_count(), 3);
        // The seed's own spelling is accepted and written back canonically.
        let k = one("AtpProbeldleSec", "90").unwrap();
        assert_eq!(k.atp_probe_idle(), Duration::from_secs(90));
        assert_eq!(k.to_pairs(), vec![("AtpProbeIdleSec".into(), "90".into())]);
        assert_eq!(
            err("AtpProbeIdleSec", "0"),
            "KVP AtpProbeIdleSec=\"0\": out of range; allowed: 1-3600 seconds"
        );
        assert!(err("AtpProbeldleSec", "3601").contains("allowed: 1-3600 seconds"));
        assert!(err("AtpProbeIntervalSec", "61").contains("allowed: 1-60 seconds"));
        assert!(err("AtpProbeCount", "0").contains("allowed: 1-30"));
        // Both spellings at once is the same key twice.
        let e = Kvps::parse(&[("AtpProbeIdleSec", "5"), ("AtpProbeldleSec", "6")]).unwrap_err();
        assert_eq!(e.to_string(), "KVP AtpProbeIdleSec is given more than once");
    }

    #[test]
    fn debug_info_recipient_is_an_email_address() {
        assert_eq!(
            one("debugInfoRecipient", "ops@example.com")
                .unwrap()
                .debug_info_recipient(),
            Some("ops@example.com")
        );
        for bad in [
            "ops",
            "ops@",
            "@example.com",
            "a@b@c.d",
            "ops@example",
            "o ps@example.com",
        ] {
            let m = err("debugInfoRecipient", bad);
            assert!(m.contains("not an email address"), "{m}");
        }
    }

    #[test]
    fn unknown_keys_are_named_with_a_hint() {
        assert_eq!(
            err("mtu", "1400"),
            "unknown KVP key \"mtu\" (did you mean MTU?)"
        );
        assert_eq!(
            err("DisconnectTimeoutInSeconds", "0"),
            "unknown KVP key \"DisconnectTimeoutInSeconds\" (did you mean disconnectTimeoutInSeconds?)"
        );
        assert_eq!(
            err("atpprobeldlesec", "1"),
            "unknown KVP key \"atpprobeldlesec\" (did you mean AtpProbeIdleSec?)"
        );
        assert_eq!(
            err("MTU ", "1400"),
            "unknown KVP key \"MTU \" (did you mean MTU?)"
        );
        assert_eq!(
            err("AtpProbeCont", "5"),
            "unknown KVP key \"AtpProbeCont\" (did you mean AtpProbeCount?)"
        );
        assert_eq!(err("Frobnicate", "1"), "unknown KVP key \"Frobnicate\"");
        match one("mtu", "1400").unwrap_err().errors() {
            [KvpError::UnknownKey { key, did_you_mean }] => {
                assert_eq!(key, "mtu");
                assert_eq!(*did_you_mean, Some(Key::MTU));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_reports_every_problem() {
        let base = one("MTU", "1300").unwrap();
        let e = base
            .updated(
                &[
                    ("LogLevel", "debug"),
                    ("MTU", "99"),
                    ("Bogus", "1"),
                    ("TunIP", "x"),
                ],
                &[] as &[&str],
            )
            .unwrap_err();
        assert_eq!(e.errors().len(), 3, "{e}");
        assert_eq!(
            e.to_string(),
            "KVP MTU=\"99\": out of range; allowed: 1280-9000; unknown KVP key \"Bogus\"; KVP TunIP=\"x\": not an IPv4 address; allowed: a unicast IPv4 address (e.g. 192.168.13.10)"
        );
        // Nothing was applied.
        assert_eq!(base.mtu(), 1300);
        assert_eq!(base.log_level(), Level::Info);
        // Duplicates are refused, not last-wins.
        let e = Kvps::parse(&[("MTU", "1300"), ("MTU", "1400")]).unwrap_err();
        assert_eq!(e.errors(), &[KvpError::Duplicate { key: Key::MTU }]);
    }

    #[test]
    fn updated_sets_and_unsets() {
        let k = Kvps::parse(&[("MTU", "1300"), ("LogLevel", "debug")]).unwrap();
        let k2 = k.updated(&[("DisablePinning", "true")], &["MTU"]).unwrap();
        assert_eq!(k2.mtu(), 1400);
        assert!(!k2.is_set(Key::MTU));
        assert!(k2.disable_pinning());
        assert_eq!(k2.log_level(), Level::Debug);
        let e = k.updated(&[] as &[(&str, &str)], &["Mtu"]).unwrap_err();
        assert_eq!(e.to_string(), "unknown KVP key \"Mtu\" (did you mean MTU?)");
    }

    #[test]
    fn split_pair_at_the_first_equals() {
        assert_eq!(
            Kvps::split_pair("IPRoutes=10.0.0.0/8").unwrap(),
            ("IPRoutes".to_string(), "10.0.0.0/8".to_string())
        );
        assert_eq!(Kvps::split_pair("a=b=c").unwrap().1, "b=c");
        assert_eq!(
            Kvps::split_pair("MTU").unwrap_err().to_string(),
            "\"MTU\" is not a KVP: expected KEY=VALUE"
        );
    }

    #[test]
    fn every_key_round_trips_through_pairs_and_serde() {
        let pairs = [
            ("disconnectTimeoutInSeconds", "0"),
            ("TcpIdleTmoMs", "120000"),
            ("debugInfoRecipient", "ops@example.com"),
            ("LogLevel", "Session"),
            ("AnalyticsEnabled", "False"),
            ("IPv6NetworkPrefix", "fd00:1::/48"),
            ("DisablePinning", "true"),
            ("IPRoutes", "10.0.0.0/8;172.16.0.0/16"),
            ("ExcRoutes", "10.10.10.10/32"),
            ("SplitUDPPortList", "53;161-162;200-1024"),
            ("MTU", "1400"),
            ("TunIP", "192.168.13.10"),
            ("AtpProbeldleSec", "60"),
            ("AtpProbeIntervalSec", "1"),
            ("AtpProbeCount", "5"),
            ("DirectLocalhost", "true"),
            ("BlockUntunnelledIPv6", "false"),
        ];
        let k = Kvps::parse(&pairs).unwrap();
        let back = k.to_pairs();
        assert_eq!(back.len(), Key::ALL.len());
        for ((name, _), key) in back.iter().zip(Key::ALL) {
            assert_eq!(name, key.name());
            assert!(k.is_set(key));
        }
        assert_eq!(Kvps::parse(&back).unwrap(), k);
        let json = serde_json::to_string(&k).unwrap();
        assert!(
            json.starts_with("{\"disconnectTimeoutInSeconds\":\"0\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Kvps>(&json).unwrap(), k);
        let e = serde_json::from_str::<Kvps>("{\"MTU\":\"1\"}").unwrap_err();
        assert!(e.to_string().contains("KVP MTU=\"1\": out of range"), "{e}");
        // Hand-written numbers and booleans are read as their text and validated the same.
        let k: Kvps = toml::from_str("MTU = 1300\nDisablePinning = true\n").unwrap();
        assert_eq!(k.mtu(), 1300);
        assert!(k.disable_pinning());
        let e = toml::from_str::<Kvps>("MTU = 99\n").unwrap_err();
        assert!(
            e.to_string().contains("KVP MTU=\"99\": out of range"),
            "{e}"
        );
        let e = serde_json::from_str::<Kvps>("{\"MTU\":1.5}").unwrap_err();
        assert!(
            e.to_string()
                .contains("expected a string, integer or boolean"),
            "{e}"
        );
    }

    #[test]
    fn keys_that_do_nothing_here_are_named_with_the_reason() {
        let k = Kvps::parse(&[
            ("MTU", "1300"),
            ("LogLevel", "debug"),
            ("TcpIdleTmoMs", "120000"),
            ("IPv6NetworkPrefix", "fd00:1::/48"),
            ("debugInfoRecipient", "ops@example.com"),
            ("AnalyticsEnabled", "true"),
            ("DirectLocalhost", "true"),
            ("BlockUntunnelledIPv6", "false"),
        ])
        .unwrap();
        let named: Vec<Key> = k.without_effect().iter().map(|n| n.key).collect();
        assert_eq!(
            named,
            [
                Key::TcpIdleTmoMs,
                Key::DebugInfoRecipient,
                Key::LogLevel,
                Key::AnalyticsEnabled,
                Key::IPv6NetworkPrefix,
            ]
        );
        let shown = k.without_effect()[2].to_string();
        assert!(
            shown.starts_with("KVP LogLevel has no effect here: ") && shown.contains("-L 5"),
            "{shown}"
        );
        // DirectLocalhost=true is what happens anyway; false cannot be done.
        let off = one("DirectLocalhost", "false").unwrap();
        assert_eq!(off.without_effect()[0].key, Key::DirectLocalhost);
        // Keys that take effect are never named; neither is anything unset.
        assert!(Kvps::default().without_effect().is_empty());
        assert!(!k.block_untunnelled_ipv6());
        for key in [Key::MTU, Key::BlockUntunnelledIPv6, Key::DirectLocalhost] {
            assert!(!named.contains(&key), "{key}");
        }
    }
}
