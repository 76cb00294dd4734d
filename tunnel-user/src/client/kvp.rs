//! Ivanti Tunnel key-value pairs (the seed's KVP table), validated as a batch: one invalid pair
//! refuses the whole batch with the key, the value and what is allowed, so nothing is applied
//! half-way. [`Kvps`] holds the effective values (defaults where a key is absent).

use std::{net::Ipv4Addr, time::Duration};

use ipnet::IpNet;

use crate::datapath::{MTU_RANGE, PortList};

/// The effective settings of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kvps {
    /// `disconnectTimeoutInSeconds`: 0 = never give up, else 5-18000; default 60.
    pub disconnect_timeout: Option<Duration>,
    /// `TcpIdleTmoMs`: 5000-1800000.
    pub tcp_idle: Option<Duration>,
    /// `IPRoutes`: None = not configured (the gateway's routes, else 0.0.0.0/0).
    pub ip_routes: Option<Vec<IpNet>>,
    /// `ExcRoutes`.
    pub exc_routes: Vec<IpNet>,
    /// `SplitUDPPortList`.
    pub udp_ports: Option<PortList>,
    /// `MTU`: default 1400.
    pub mtu: Option<u16>,
    /// `TunIP`.
    pub tun_ip: Option<Ipv4Addr>,
    /// `AtpProbeIdleSec` (default 60), `AtpProbeIntervalSec` (1), `AtpProbeCount` (5).
    pub probe_idle: Duration,
    pub probe_interval: Duration,
    pub probe_count: u32,
    /// `DisablePinning`: default false.
    pub disable_pinning: bool,
    /// `LogLevel`.
    pub log_level: Option<String>,
}

impl Default for Kvps {
    fn default() -> Self {
        Kvps {
            disconnect_timeout: Some(Duration::from_secs(60)),
            tcp_idle: None,
            ip_routes: None,
            exc_routes: Vec::new(),
            udp_ports: None,
            mtu: None,
            tun_ip: None,
            probe_idle: Duration::from_secs(60),
            probe_interval: Duration::from_secs(1),
            probe_count: 5,
            disable_pinning: false,
            log_level: None,
        }
    }
}

/// Why a batch of key-value pairs was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvpError {
    #[error("{key}={value}: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("unknown key '{key}'{hint}")]
    Unknown { key: String, hint: String },
    #[error("{key} is given twice")]
    Duplicate { key: String },
}

/// Keys the seed documents; the matching is case-sensitive like Ivanti's.
const KEYS: &[&str] = &[
    "disconnectTimeoutInSeconds",
    "TcpIdleTmoMs",
    "debugInfoRecipient",
    "LogLevel",
    "AnalyticsEnabled",
    "IPv6NetworkPrefix",
    "DisablePinning",
    "IPRoutes",
    "ExcRoutes",
    "SplitUDPPortList",
    "MTU",
    "TunIP",
    "AtpProbeIdleSec",
    "AtpProbeIntervalSec",
    "AtpProbeCount",
    "DirectLocalhost",
];

fn invalid(key: &str, value: &str, allowed: &str) -> KvpError {
    KvpError::Invalid {
        key: key.into(),
        value: value.into(),
        allowed: allowed.into(),
    }
}

fn int_in(key: &str, value: &str, lo: u64, hi: u64) -> Result<u64, KvpError> {
    match value.trim().parse::<u64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(invalid(
            key,
            value,
            &format!("an integer from {lo} to {hi}"),
        )),
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, KvpError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "true or false")),
    }
}

fn routes(key: &str, value: &str) -> Result<Vec<IpNet>, KvpError> {
    value
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    invalid(
                        key,
                        value,
                        &format!("semicolon-separated CIDR prefixes ('{s}' is not one)"),
                    )
                })
        })
        .collect()
}

impl Kvps {
    /// Validates a batch; every pair must be valid for any of it to apply.
    pub fn parse(pairs: &[(String, String)]) -> Result<Kvps, KvpError> {
        let mut k = Kvps::default();
        let mut seen = std::collections::BTreeSet::new();
        for (key, value) in pairs {
            // The seed's table spells one key "AtpProbeldleSec" (l for I); accept both.
            let key = if key == "AtpProbeldleSec" {
                "AtpProbeIdleSec"
            } else {
                key.as_str()
            };
            if !seen.insert(key.to_string()) {
                return Err(KvpError::Duplicate { key: key.into() });
            }
            match key {
                "disconnectTimeoutInSeconds" => {
                    let v = value
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|v| *v == 0 || (5..=18000).contains(v));
                    k.disconnect_timeout = match v {
                        Some(0) => None,
                        Some(v) => Some(Duration::from_secs(v)),
                        None => {
                            return Err(invalid(
                                key,
                                value,
                                "0 (never) or an integer from 5 to 18000",
                            ));
                        }
                    };
                }
                "TcpIdleTmoMs" => {
                    k.tcp_idle = Some(Duration::from_millis(int_in(key, value, 5000, 1_800_000)?))
                }
                "LogLevel" => {
                    let v = value.trim().to_ascii_lowercase();
                    if !["error", "warning", "info", "debug", "session", "packet"]
                        .contains(&v.as_str())
                    {
                        return Err(invalid(
                            key,
                            value,
                            "one of error, warning, info, debug, session, packet",
                        ));
                    }
                    k.log_level = Some(v);
                }
                "AnalyticsEnabled" | "DirectLocalhost" => {
                    boolean(key, value)?;
                }
                "DisablePinning" => k.disable_pinning = boolean(key, value)?,
                "IPv6NetworkPrefix" => {
                    let n: ipnet::Ipv6Net = value
                        .trim()
                        .parse()
                        .map_err(|_| invalid(key, value, "an IPv6 prefix such as fd00:1::/64"))?;
                    if n.network().segments()[0] & 0xfe00 != 0xfc00 {
                        return Err(invalid(key, value, "a unique local (fc00::/7) prefix"));
                    }
                }
                "debugInfoRecipient" => {
                    if !value.contains('@') {
                        return Err(invalid(key, value, "an email address"));
                    }
                }
                "IPRoutes" => {
                    let r = routes(key, value)?;
                    if r.is_empty() {
                        return Err(invalid(key, value, "at least one CIDR prefix"));
                    }
                    k.ip_routes = Some(r);
                }
                "ExcRoutes" => k.exc_routes = routes(key, value)?,
                "SplitUDPPortList" => {
                    k.udp_ports = Some(
                        value
                            .parse::<PortList>()
                            .map_err(|e| invalid(key, value, &e.to_string()))?,
                    );
                }
                "MTU" => {
                    let v = int_in(
                        key,
                        value,
                        u64::from(*MTU_RANGE.start()),
                        u64::from(*MTU_RANGE.end()),
                    )?;
                    k.mtu = Some(v as u16);
                }
                "TunIP" => {
                    k.tun_ip = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|_| invalid(key, value, "an IPv4 address"))?,
                    )
                }
                "AtpProbeIdleSec" => {
                    k.probe_idle = Duration::from_secs(int_in(key, value, 1, 3600)?)
                }
                "AtpProbeIntervalSec" => {
                    k.probe_interval = Duration::from_secs(int_in(key, value, 1, 60)?)
                }
                "AtpProbeCount" => k.probe_count = int_in(key, value, 1, 100)? as u32,
                other => {
                    let hint = KEYS
                        .iter()
                        .find(|k| k.eq_ignore_ascii_case(other))
                        .map(|k| format!(" (did you mean '{k}'? keys are case-sensitive)"))
                        .unwrap_or_default();
                    return Err(KvpError::Unknown {
                        key: other.into(),
                        hint,
                    });
                }
            }
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_seeds() {
        let k = Kvps::parse(&[]).unwrap();
        assert_eq!(k.disconnect_timeout, Some(Duration::from_secs(60)));
        assert_eq!(
            (
                k.probe_idle.as_secs(),
                k.probe_interval.as_secs(),
                k.probe_count
            ),
            (60, 1, 5)
        );
        assert_eq!(k.ip_routes, None);
        assert!(!k.disable_pinning);
    }

    #[test]
    fn valid_values_apply() {
        let k = Kvps::parse(&p(&[
            ("disconnectTimeoutInSeconds", "0"),
            ("IPRoutes", "10.0.0.0/8;172.16.0.0/16"),
            ("ExcRoutes", "10.10.10.10/32"),
            ("SplitUDPPortList", "53;161-162;200-1024"),
            ("MTU", "1300"),
            ("TunIP", "192.168.13.10"),
            ("AtpProbeldleSec", "5"),
            ("AtpProbeIntervalSec", "2"),
            ("AtpProbeCount", "3"),
            ("DisablePinning", "true"),
        ]))
        .unwrap();
        assert_eq!(k.disconnect_timeout, None);
        assert_eq!(k.ip_routes.unwrap().len(), 2);
        assert_eq!(
            k.exc_routes,
            vec!["10.10.10.10/32".parse::<IpNet>().unwrap()]
        );
        assert!(k.udp_ports.unwrap().contains(161));
        assert_eq!(k.mtu, Some(1300));
        assert_eq!(k.probe_idle, Duration::from_secs(5));
        assert!(k.disable_pinning);
    }

    #[test]
    fn invalid_values_name_key_value_and_range() {
        let e = Kvps::parse(&p(&[("disconnectTimeoutInSeconds", "3")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "disconnectTimeoutInSeconds=3: 0 (never) or an integer from 5 to 18000"
        );
        let e = Kvps::parse(&p(&[("TcpIdleTmoMs", "100")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "TcpIdleTmoMs=100: an integer from 5000 to 1800000"
        );
        let e = Kvps::parse(&p(&[("MTU", "70000")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("MTU=70000: an integer from 1280 to 9000"),
            "{e}"
        );
        let e = Kvps::parse(&p(&[("SplitUDPPortList", "53;;54")])).unwrap_err();
        assert!(e.to_string().starts_with("SplitUDPPortList=53;;54:"), "{e}");
        let e = Kvps::parse(&p(&[("IPRoutes", "10.0.0.0/8;bogus")])).unwrap_err();
        assert!(e.to_string().contains("'bogus' is not one"), "{e}");
        let e = Kvps::parse(&p(&[("DisablePinning", "yes")])).unwrap_err();
        assert_eq!(e.to_string(), "DisablePinning=yes: true or false");
        let e = Kvps::parse(&p(&[("mtu", "1400")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown key 'mtu' (did you mean 'MTU'? keys are case-sensitive)"
        );
        let e = Kvps::parse(&p(&[("MTU", "1400"), ("MTU", "1300")])).unwrap_err();
        assert_eq!(e, KvpError::Duplicate { key: "MTU".into() });
        // One bad pair refuses the batch: the good ones are not applied either.
        assert!(Kvps::parse(&p(&[("MTU", "1300"), ("TunIP", "x")])).is_err());
    }
}
