//! What a connection is asked to do: the gateways, credentials, trust and the settings that
//! shape its tunnel, as the daemon gathers them from the request, the stored connection and
//! its KVPs. Nothing here changes while the connection runs.

use std::{net::Ipv4Addr, time::Duration};

use ipnet::IpNet;
use tunnel_config::{ServerUrl, UrlMode};

use super::{cert_select::ClientAuth, prompts::Prompter, tls::Trust};
use crate::datapath::{ConnId, PortList};

/// Everything a connection needs to run.
#[derive(Clone)]
pub struct ConnectSpec {
    pub name: String,
    /// The connection's own DNS settings (they replace the gateway's where set).
    pub dns: tunnel_config::DnsSettings,
    /// Where to probe for a captive portal when no gateway can be reached; None: detection
    /// is off (machine setting `captive-portal-detection`).
    pub portal: Option<super::portal::Probe>,
    /// The captive portal cgroup's id and how long its exception lasts, opened while the
    /// connection waits behind a portal; None: no exception.
    pub portal_exception: Option<(u64, std::time::Duration)>,
    pub id: ConnId,
    /// The gateways, in the connection's list order (`super::walk` decides which to try).
    pub gateways: Vec<ServerUrl>,
    /// The list's mode for a fresh start.
    pub url_mode: UrlMode,
    /// Index in `gateways` of the URL that last connected, as the store remembers it.
    pub last_url: Option<usize>,
    pub realm: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A DSID cookie to start with (launcher `-d`).
    pub cookie: Option<String>,
    pub trust: Trust,
    /// The client certificate(s) it may present (`super::cert_select`).
    pub client_cert: ClientAuth,
    /// KVP `IPRoutes`: replaces the gateway's include routes when set.
    pub ip_routes: Option<Vec<IpNet>>,
    /// KVP `ExcRoutes`: added to the gateway's exclude routes.
    pub exc_routes: Vec<IpNet>,
    /// KVP `SplitUDPPortList`.
    pub udp_ports: Option<PortList>,
    /// KVP `MTU` when set; otherwise the gateway's, else 1400.
    pub mtu: Option<u16>,
    /// KVP `TunIP`: the TUN device's own IPv4 address, for a LAN in the same range as the
    /// gateway's pool; the data path translates it to the address the gateway assigned.
    pub tun_ip: Option<Ipv4Addr>,
    /// KVP `BlockUntunnelledIPv6`: a full tunnel without an IPv6 address drops IPv6.
    pub block_untunnelled_ipv6: bool,
    /// KVPs `AtpProbeIdleSec`, `AtpProbeIntervalSec`, `AtpProbeCount`.
    pub dpd: Dpd,
    /// KVP `disconnectTimeoutInSeconds`: how long to keep trying to reconnect (None: forever).
    pub disconnect_timeout: Option<Duration>,
    /// Per-app: the cgroup id whose sockets use this connection.
    pub app_cgroup: Option<u64>,
    pub esp: bool,
    /// Remember the gateway's pin after a trusted connection (not with `DisablePinning`).
    pub learn_pin: bool,
    /// Who answers the login's prompts after the password.
    pub(crate) prompts: Prompter,
}

/// Dead-peer detection: after `idle` without anything from the gateway, up to `count` probes
/// `interval` apart; no answer means the path is dead (ESP falls back to TLS; on TLS the
/// connection is dropped and re-established, `super::liveness`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dpd {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Default for Dpd {
    fn default() -> Self {
        // The seed's defaults: AtpProbeIdleSec 60, AtpProbeIntervalSec 1, AtpProbeCount 5.
        Dpd {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(1),
            count: 5,
        }
    }
}

/// A gateway as `tunnel status` shows it and as commands find it by host: always with its
/// port (`https://host:port/path`), unlike the URL's normal form, which leaves out 443.
pub(crate) fn shown(url: &ServerUrl) -> String {
    format!("https://{}:{}{}", url.host(), url.port(), url.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_is_shown_with_its_port() {
        let url = |s: &str| ServerUrl::parse(s).unwrap();
        assert_eq!(
            shown(&url("vpn.example.com")),
            "https://vpn.example.com:443/"
        );
        assert_eq!(
            shown(&url("https://VPN.example.com:8443/sign-in")),
            "https://vpn.example.com:8443/sign-in"
        );
        assert_eq!(
            shown(&url("https://[2001:db8::1]/")),
            "https://[2001:db8::1]:443/"
        );
        assert_eq!(shown(&url("192.0.2.7:10443")), "https://192.0.2.7:10443/");
    }
}
