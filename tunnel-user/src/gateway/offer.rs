//! What the gateway offers a client and asks of it, from its config: the state machine's
//! settings (realms, notices, the password request, timeouts), what a realm asks after the
//! password, and the configuration pushed after the login (the address, the realm's routes
//! and DNS, the ESP suite).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use tunnel_proto::{Config, EspSettings, EspSuite, PasswordForm, ServerConfig};

use super::{
    GatewayConfig, Lease, PasswordRequest, PoolChoice, SecondFactor, dialogue::RealmLogin,
};

/// What `realm` asks of a login after the password.
pub(super) fn realm_login(cfg: &GatewayConfig, realm: &str) -> RealmLogin {
    let Some(policy) = cfg.realm_policy(realm) else {
        return RealmLogin::default();
    };
    RealmLogin {
        totp: policy.second_factor == SecondFactor::Totp,
        max_sessions_per_user: policy.max_sessions_per_user.map_or(0, |n| n.get()),
        session_limit: policy.session_limit,
        post_auth_notice: policy.post_auth_notice.map(|n| (n.text, n.accept)),
    }
}

/// What every connection's state machine is configured with.
pub(super) fn server_config(cfg: &GatewayConfig) -> ServerConfig {
    let limits = &cfg.limits;
    ServerConfig {
        realms: cfg.auth.realms.clone(),
        password_form: match cfg.auth.password_request {
            PasswordRequest::Current => PasswordForm::Current,
            PasswordRequest::Legacy => PasswordForm::Legacy,
        },
        pre_auth_notices: cfg
            .auth
            .realms
            .iter()
            .filter_map(|realm| {
                let notice = cfg.realm_policy(realm)?.pre_auth_notice?;
                Some((
                    realm.clone(),
                    tunnel_proto::Notice {
                        text: notice.text,
                        accept: notice.accept,
                    },
                ))
            })
            .collect(),
        idle_timeout: cfg.idle_timeout,
        session_lifetime: Some(cfg.session_lifetime),
        login_max_frame_len: limits.login_frame_bytes,
        auth_timeout: Some(limits.login),
        protocol_step_timeout: Some(limits.login_step),
        user_step_timeout: Some(limits.user_step),
        dpd_interval: Some(cfg.dpd_interval),
        ..ServerConfig::default()
    }
}

/// The configuration pushed to a client of `realm` holding `lease`: the realm's routes, DNS
/// and pool where it has its own, else the global ones.
pub(super) fn client_config(
    cfg: &GatewayConfig,
    realm: &str,
    lease: &Lease,
    offers_aes_gcm: bool,
) -> Config {
    let policy = cfg.realm_policy(realm);
    let (ipv4_net, ipv6_net) = match policy.as_ref().map(|p| &p.pool) {
        Some(PoolChoice::Own(own)) => (own.ipv4, own.ipv6),
        _ => (cfg.pool.ipv4, cfg.pool.ipv6),
    };
    let (dns, search_domains, routes) = match &policy {
        Some(p) => (&p.dns, &p.search_domains, &p.routes),
        None => (&cfg.dns, &cfg.search_domains, &cfg.routes),
    };
    let mut c = Config {
        ipv4_address: Some(lease.ipv4),
        ipv4_netmask: Some(ipv4_net.netmask()),
        dns: dns.clone(),
        search_domains: search_domains.clone(),
        mtu: Some(u32::from(cfg.mtu)),
        internal_gateway: Some(cfg.pool.gateway_ipv4),
        ..Config::default()
    };
    if let (Some(a), Some(net)) = (lease.ipv6, ipv6_net) {
        c.ipv6_address = tunnel_proto::Ipv6Net::new(a, net.prefix_len()).ok();
    }
    let v4 = |n: &ipnet::IpNet| match n {
        ipnet::IpNet::V4(n) => tunnel_proto::Ipv4Net::new(n.network(), n.prefix_len()).ok(),
        ipnet::IpNet::V6(_) => None,
    };
    let v6 = |n: &ipnet::IpNet| match n {
        ipnet::IpNet::V6(n) => tunnel_proto::Ipv6Net::new(n.network(), n.prefix_len()).ok(),
        ipnet::IpNet::V4(_) => None,
    };
    c.include_v4 = routes.include.iter().filter_map(v4).collect();
    c.exclude_v4 = routes.exclude.iter().filter_map(v4).collect();
    c.include_v6 = routes.include.iter().filter_map(v6).collect();
    c.exclude_v6 = routes.exclude.iter().filter_map(v6).collect();
    if c.include_v4.is_empty() && c.include_v6.is_empty() {
        // No split tunnel configured: everything goes through the tunnel.
        c.include_v4 = tunnel_proto::Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)
            .into_iter()
            .collect();
        if ipv6_net.is_some() {
            c.include_v6 = tunnel_proto::Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0)
                .into_iter()
                .collect();
        }
    }
    // The first suite in the operator's order that this client can use: AES-256-GCM only
    // when it offered it.
    let usable = |s: &&EspSuite| **s != EspSuite::AES256_GCM || offers_aes_gcm;
    if cfg.esp.enabled
        && let Some(suite) = cfg.esp.ciphers.iter().find(usable)
    {
        let secs = |d: Option<Duration>| d.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        c.esp = EspSettings {
            cipher: Some(suite.cipher.code()),
            hmac: Some(suite.mac.code()),
            lifetime_seconds: secs(Some(cfg.esp.key_lifetime)),
            lifetime_bytes: cfg.esp.key_lifetime_bytes.map(|b| b.get()),
            replay_protection: Some(true),
            port: Some(cfg.esp.port),
            fallback_seconds: secs(cfg.esp.fallback),
            ..EspSettings::default()
        };
    }
    c
}

#[cfg(test)]
mod tests {
    use tunnel_proto::EspSuite;

    use super::client_config;
    use crate::gateway::{GatewayConfig, Lease, config::suite_name};

    fn config(ciphers: &str) -> GatewayConfig {
        GatewayConfig::from_str(&format!(
            "[tls]\ncertificate = \"server.pem\"\nkey = \"server.key\"\n\
             [auth]\nusers_file = \"users\"\n[pool]\nipv4 = \"10.10.0.0/24\"\n\
             [esp]\nciphers = {ciphers}\n"
        ))
        .unwrap()
    }

    /// The suite a client is offered, read back from the wire codes it is sent.
    fn offered(cfg: &GatewayConfig, offers_aes_gcm: bool) -> Option<EspSuite> {
        let lease = Lease {
            ipv4: "10.10.0.2".parse().unwrap(),
            ipv6: None,
        };
        let esp = client_config(cfg, "Users", &lease, offers_aes_gcm).esp;
        Some(EspSuite::from_codes(esp.cipher?, esp.hmac?).unwrap())
    }

    #[test]
    fn each_configured_suite_is_offered_by_its_wire_codes() {
        for suite in EspSuite::ALL {
            let cfg = config(&format!("[\"{}\"]", suite_name(suite)));
            assert_eq!(offered(&cfg, true), Some(suite));
        }
    }

    #[test]
    fn aes_gcm_is_offered_only_to_clients_that_offer_it() {
        let cfg = config(r#"["aes256-gcm", "aes256-sha256"]"#);
        assert_eq!(offered(&cfg, true), Some(EspSuite::AES256_GCM));
        let next = offered(&cfg, false).unwrap();
        assert_eq!(suite_name(next), "aes256-sha256");
        let only_gcm = config(r#"["aes256-gcm"]"#);
        assert_eq!(offered(&only_gcm, false), None, "no ESP at all");
    }
}
