//! Where a logged-in client's packets may go: the gateway's destination policy.
//!
//! A client reaches what its routes include: the prefixes in `routes.include` (everything when
//! there are none, as the client is told), except those in `routes.exclude`; and the pushed
//! DNS servers on port 53 (UDP and TCP). Routes and DNS servers are those of the session's
//! realm ([`AccessPolicy::check_in`]; `realm.NAME.routes_*` and `dns`, else the global
//! ones), so a session of one realm does not reach what only another realm is given. Two kinds
//! of destination are off unless configured, whatever the routes say:
//! - other clients (`access.client_to_client`): any address of the pools, every realm's;
//! - the gateway host itself (`access.gateway`): its tunnel addresses, every address of its
//!   interfaces and their broadcast addresses, and what no router forwards (loopback,
//!   link-local, multicast, broadcast, unspecified), which would be delivered to it.
//!
//! The first matching rule decides, in this order: the gateway host, other clients, the DNS
//! servers, the routes. A packet whose destination cannot be read is not forwarded.
//!
//! This module is sans-IO apart from [`local_addresses`], which asks the kernel; the policy
//! is rebuilt when the host's addresses change ([`AccessControl`]), and the packet threads
//! read it through a cache that costs one atomic load while nothing changed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ipnet::IpNet;

use super::{GatewayConfig, PoolChoice, RoutesConfig};

const TCP: u8 = 6;
const UDP: u8 = 17;
const DNS_PORT: u16 = 53;

/// Sorted, disjoint, inclusive ranges of addresses of one family, as integers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RangeSet<T> {
    ranges: Vec<(T, T)>,
}

impl<T: Copy + Ord + Successor> RangeSet<T> {
    fn from_ranges(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some((_, last)) if last.succ().is_none_or(|next| start <= next) => {
                    *last = (*last).max(end);
                }
                _ => merged.push((start, end)),
            }
        }
        RangeSet { ranges: merged }
    }

    /// These ranges without those of `other`.
    fn minus(&self, other: &RangeSet<T>) -> RangeSet<T> {
        let mut out = Vec::new();
        for &(start, end) in &self.ranges {
            let mut from = Some(start);
            for &(cut_start, cut_end) in &other.ranges {
                let Some(f) = from else { break };
                if cut_end < f || cut_start > end {
                    continue;
                }
                if cut_start > f
                    && let Some(before) = cut_start.pred()
                {
                    out.push((f, before));
                }
                from = cut_end.succ().filter(|&n| n <= end);
            }
            if let Some(f) = from {
                out.push((f, end));
            }
        }
        RangeSet { ranges: out }
    }

    fn contains(&self, x: T) -> bool {
        let i = self.ranges.partition_point(|&(start, _)| start <= x);
        i > 0 && x <= self.ranges[i - 1].1
    }
}

/// The next and previous integer, where there is one.
trait Successor: Sized {
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
}

impl Successor for u32 {
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<u32> {
        self.checked_sub(1)
    }
}

impl Successor for u128 {
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<u128> {
        self.checked_sub(1)
    }
}

/// Ranges of both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges {
    v4: RangeSet<u32>,
    v6: RangeSet<u128>,
}

impl Ranges {
    fn of<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Ranges {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Ranges {
            v4: RangeSet::from_ranges(v4),
            v6: RangeSet::from_ranges(v6),
        }
    }

    fn minus(&self, other: &Ranges) -> Ranges {
        Ranges {
            v4: self.v4.minus(&other.v4),
            v6: self.v6.minus(&other.v6),
        }
    }

    fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

/// What no router forwards: delivered to the gateway host if it arrived there.
const NOT_FORWARDED: [&str; 10] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Why a packet was not forwarded, for the logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its destination could not be read.
    Unreadable,
    /// The gateway host itself (`access.gateway` is off).
    Gateway,
    /// Another client (`access.client_to_client` is off).
    OtherClient,
    /// Outside the routes the client was given.
    NotRouted,
}

/// What one realm's sessions may reach by their routes and DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RealmRules {
    routed: Ranges,
    dns: Vec<IpAddr>,
}

impl RealmRules {
    fn new(routes: &RoutesConfig, dns: &[IpAddr]) -> RealmRules {
        let everything: [IpNet; 2] = [
            IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(ipnet::Ipv6Net::default()),
        ];
        let include = if routes.include.is_empty() {
            Ranges::of(&everything)
        } else {
            Ranges::of(&routes.include)
        };
        RealmRules {
            routed: include.minus(&Ranges::of(&routes.exclude)),
            dns: dns.to_vec(),
        }
    }
}

/// A realm, as the policy knows it: its position in `auth.realms`. Looked up once per
/// session ([`AccessPolicy::realm_id`]), so a packet's check costs no string comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RealmId(usize);

/// The destination policy of one gateway (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessPolicy {
    /// The global routes and DNS servers.
    global: RealmRules,
    /// Per realm of `auth.realms`, in order: its routes and DNS servers.
    realms: Vec<(String, RealmRules)>,
    pools: Ranges,
    gateway: Ranges,
    client_to_client: bool,
    gateway_allowed: bool,
}

impl AccessPolicy {
    /// The policy of `config` on a host with addresses `local` (interface addresses and
    /// their broadcast addresses, [`local_addresses`]).
    pub(crate) fn new(config: &GatewayConfig, local: &[IpAddr]) -> AccessPolicy {
        let pool = &config.pool;
        let mut pools: Vec<IpNet> = std::iter::once(IpNet::V4(pool.ipv4))
            .chain(pool.ipv6.map(IpNet::V6))
            .collect();
        let mut realms = Vec::with_capacity(config.auth.realms.len());
        for realm in &config.auth.realms {
            let Some(policy) = config.realm_policy(realm) else {
                continue;
            };
            if let PoolChoice::Own(own) = policy.pool {
                pools.push(IpNet::V4(own.ipv4));
                pools.extend(own.ipv6.map(IpNet::V6));
            }
            realms.push((realm.clone(), RealmRules::new(&policy.routes, &policy.dns)));
        }
        let mut gateway: Vec<IpNet> = NOT_FORWARDED
            .iter()
            .filter_map(|n| n.parse().ok())
            .chain(local.iter().map(|&a| IpNet::from(a)))
            .collect();
        gateway.push(IpNet::from(IpAddr::V4(pool.gateway_ipv4)));
        gateway.extend(pool.gateway_ipv6.map(|a| IpNet::from(IpAddr::V6(a))));
        gateway.push(IpNet::from(IpAddr::V4(Ipv4Addr::BROADCAST)));
        AccessPolicy {
            global: RealmRules::new(&config.routes, &config.dns),
            realms,
            pools: Ranges::of(&pools),
            gateway: Ranges::of(&gateway),
            client_to_client: config.access.client_to_client,
            gateway_allowed: config.access.gateway,
        }
    }

    /// The id of `realm`, for [`AccessPolicy::check_in`]; `None` for a realm the config does
    /// not offer.
    pub(crate) fn realm_id(&self, realm: &str) -> Option<RealmId> {
        self.realms
            .iter()
            .position(|(r, _)| r == realm)
            .map(RealmId)
    }

    /// Whether a client with the global routes and DNS servers may send `packet` (an IP
    /// packet) to its destination. Sessions are checked by their realm ([`Self::check_in`]).
    #[cfg(test)]
    pub(crate) fn check(&self, packet: &[u8]) -> Result<(), Refused> {
        self.check_with(&self.global, packet)
    }

    /// Whether a session of `realm` may send `packet` to its destination: by that realm's
    /// routes and DNS servers. A realm id from another policy falls back to nothing routed
    /// rather than the global rules.
    pub(crate) fn check_in(&self, realm: RealmId, packet: &[u8]) -> Result<(), Refused> {
        match self.realms.get(realm.0) {
            Some((_, rules)) => self.check_with(rules, packet),
            None => Err(Refused::NotRouted),
        }
    }

    fn check_with(&self, rules: &RealmRules, packet: &[u8]) -> Result<(), Refused> {
        let Some((dst, l4)) = destination(packet) else {
            return Err(Refused::Unreadable);
        };
        let dns =
            || matches!(l4, Some((TCP | UDP, DNS_PORT))) && rules.dns.contains(&dst.to_canonical());
        if self.gateway.contains(dst) {
            return if self.gateway_allowed || dns() {
                Ok(())
            } else {
                Err(Refused::Gateway)
            };
        }
        if self.pools.contains(dst) {
            return if self.client_to_client || dns() {
                Ok(())
            } else {
                Err(Refused::OtherClient)
            };
        }
        if rules.routed.contains(dst) || dns() {
            Ok(())
        } else {
            Err(Refused::NotRouted)
        }
    }
}

/// The destination of an IP packet, and its transport protocol and destination port where
/// they can be read without walking extension headers (a first or only fragment).
fn destination(p: &[u8]) -> Option<(IpAddr, Option<(u8, u16)>)> {
    let port = |at: usize| p.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
            let first_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
            let l4 = usize::from(p[0] & 0xf) * 4;
            let ports = first_fragment
                .then(|| port(l4 + 2).map(|port| (p[9], port)))
                .flatten();
            Some((dst, ports))
        }
        6 if p.len() >= 40 => {
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?));
            Some((dst, port(42).map(|port| (p[6], port))))
        }
        _ => None,
    }
}

/// The gateway host's addresses: every address of its interfaces, and their broadcast
/// addresses.
pub(crate) fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        for a in [ifa.address, ifa.broadcast].into_iter().flatten() {
            if let Some(v4) = a.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = a.as_sockaddr_in6() {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The policy in force, replaced whole when the host's addresses change; packet threads
/// read it through an [`AccessCache`] of their own.
pub(crate) struct AccessControl {
    current: Mutex<Arc<AccessPolicy>>,
    /// Bumped after each replacement.
    generation: AtomicU64,
}

/// A thread's copy of the policy in force and the generation it was taken at.
#[derive(Default)]
pub(crate) struct AccessCache {
    held: Option<(u64, Arc<AccessPolicy>)>,
}

impl AccessControl {
    pub(crate) fn new(policy: AccessPolicy) -> AccessControl {
        AccessControl {
            current: Mutex::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `policy` in force if it differs from the one in force; says whether it did.
    pub(crate) fn replace(&self, policy: AccessPolicy) -> bool {
        let Ok(mut current) = self.current.lock() else {
            return false;
        };
        if **current == policy {
            return false;
        }
        *current = Arc::new(policy);
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// The policy in force, from `cache` while nothing was replaced since it was taken.
    /// None only if the lock was poisoned (a thread panicked holding it): nothing is
    /// forwarded then.
    pub(crate) fn policy<'c>(&self, cache: &'c mut AccessCache) -> Option<&'c AccessPolicy> {
        let generation = self.generation.load(Ordering::Acquire);
        if cache.held.as_ref().is_none_or(|(g, _)| *g != generation) {
            let current = self.current.lock().ok()?.clone();
            cache.held = Some((generation, current));
        }
        cache.held.as_ref().map(|(_, p)| &**p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> GatewayConfig {
        config_with(extra, "", "")
    }

    /// The test config with `extra` at the top, `auth` lines in `[auth]`, `tail` at the end.
    fn config_with(extra: &str, auth: &str, tail: &str) -> GatewayConfig {
        let dir = std::env::temp_dir().join(format!("tunnel-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["server.pem", "server.key", "users"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let text = format!(
            "dns = [\"10.10.0.1\", \"172.20.0.53\"]\n{extra}\n\
             [tls]\ncertificate = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\n\
             [auth]\nusers_file = \"{d}/users\"\n{auth}\n\
             [pool]\nipv4 = \"10.10.0.0/24\"\nipv6 = \"fd00:10::/64\"\n\
             [routes]\ninclude = [\"172.20.0.0/16\", \"fd00:20::/48\"]\nexclude = [\"172.20.99.0/24\"]\n\
             {tail}",
            d = dir.display()
        );
        text.parse().unwrap()
    }

    fn udp(dst: &str, port: u16) -> Vec<u8> {
        match dst.parse::<IpAddr>().unwrap() {
            IpAddr::V4(d) => {
                let mut p = vec![0u8; 28];
                p[0] = 0x45;
                p[9] = UDP;
                p[12..16].copy_from_slice(&[10, 10, 0, 2]);
                p[16..20].copy_from_slice(&d.octets());
                p[22..24].copy_from_slice(&port.to_be_bytes());
                p
            }
            IpAddr::V6(d) => {
                let mut p = vec![0u8; 48];
                p[0] = 0x60;
                p[6] = UDP;
                p[24..40].copy_from_slice(&d.octets());
                p[42..44].copy_from_slice(&port.to_be_bytes());
                p
            }
        }
    }

    const HOST: [&str; 3] = ["192.168.70.1", "172.20.0.1", "172.20.0.255"];

    fn host() -> Vec<IpAddr> {
        HOST.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn by_default_a_client_reaches_its_routes_and_dns_only() {
        let p = AccessPolicy::new(&config(""), &host());
        let check = |dst: &str, port| p.check(&udp(dst, port));
        assert_eq!(check("172.20.0.2", 80), Ok(()));
        assert_eq!(check("172.20.255.255", 80), Ok(()));
        assert_eq!(check("fd00:20::5", 80), Ok(()));
        assert_eq!(
            check("172.20.99.7", 80),
            Err(Refused::NotRouted),
            "excluded"
        );
        assert_eq!(check("172.21.0.1", 80), Err(Refused::NotRouted));
        assert_eq!(check("fd00:21::1", 80), Err(Refused::NotRouted));
        assert_eq!(check("8.8.8.8", 53), Err(Refused::NotRouted));
        // Other clients.
        assert_eq!(check("10.10.0.3", 80), Err(Refused::OtherClient));
        assert_eq!(check("fd00:10::3", 80), Err(Refused::OtherClient));
        // The gateway host: tunnel addresses, interface and broadcast addresses, what no
        // router forwards, even inside an include.
        for a in [
            "10.10.0.1",
            "fd00:10::1",
            "172.20.0.1",
            "172.20.0.255",
            "192.168.70.1",
        ] {
            assert_eq!(check(a, 22), Err(Refused::Gateway), "{a}");
        }
        for a in [
            "127.0.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "ff02::1",
            "fe80::1",
            "::1",
        ] {
            assert_eq!(check(a, 5353), Err(Refused::Gateway), "{a}");
        }
        // The pushed DNS servers, on port 53 only, even on the gateway host.
        assert_eq!(check("10.10.0.1", 53), Ok(()));
        assert_eq!(check("10.10.0.1", 54), Err(Refused::Gateway));
        assert_eq!(check("172.20.0.53", 53), Ok(()));
        assert_eq!(p.check(&[0x45, 0, 0]), Err(Refused::Unreadable));
        assert_eq!(p.check(&[]), Err(Refused::Unreadable));
    }

    #[test]
    fn other_clients_and_the_gateway_when_configured() {
        let p = AccessPolicy::new(
            &config("[access]\nclient_to_client = true\ngateway = true"),
            &host(),
        );
        assert_eq!(p.check(&udp("10.10.0.3", 80)), Ok(()));
        assert_eq!(p.check(&udp("fd00:10::3", 80)), Ok(()));
        assert_eq!(p.check(&udp("172.20.0.1", 22)), Ok(()));
        assert_eq!(p.check(&udp("172.21.0.1", 80)), Err(Refused::NotRouted));
    }

    #[test]
    fn no_include_routes_means_everything_but_the_excludes() {
        let mut c = config("");
        c.routes.include.clear();
        let p = AccessPolicy::new(&c, &host());
        assert_eq!(p.check(&udp("8.8.8.8", 443)), Ok(()));
        assert_eq!(p.check(&udp("2001:db8::1", 443)), Ok(()));
        assert_eq!(p.check(&udp("172.20.99.1", 443)), Err(Refused::NotRouted));
        assert_eq!(p.check(&udp("172.20.0.1", 443)), Err(Refused::Gateway));
    }

    /// The range sets against a naive reference on random prefixes and addresses.
    #[test]
    fn range_sets_agree_with_a_naive_reference() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut nets = |n| {
                (0..n)
                    .map(|_| {
                        let len = 20 + (next() % 13) as u8;
                        let addr = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff));
                        ipnet::Ipv4Net::new(addr, len).unwrap().trunc()
                    })
                    .collect::<Vec<_>>()
            };
            let (inc, exc) = (nets(6), nets(4));
            let set = Ranges::of(&inc.iter().map(|&n| IpNet::V4(n)).collect::<Vec<_>>()).minus(
                &Ranges::of(&exc.iter().map(|&n| IpNet::V4(n)).collect::<Vec<_>>()),
            );
            for _ in 0..500 {
                let a = Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff));
                let naive =
                    inc.iter().any(|n| n.contains(&a)) && !exc.iter().any(|n| n.contains(&a));
                assert_eq!(set.contains(IpAddr::V4(a)), naive, "{a} {inc:?} {exc:?}");
            }
        }
    }

    #[test]
    fn a_cache_follows_replacements() {
        let c = config("");
        let control = AccessControl::new(AccessPolicy::new(&c, &[]));
        let mut cache = AccessCache::default();
        let dst = udp("172.20.0.1", 22);
        assert_eq!(control.policy(&mut cache).unwrap().check(&dst), Ok(()));
        assert!(!control.replace(AccessPolicy::new(&c, &[])), "unchanged");
        assert!(control.replace(AccessPolicy::new(&c, &host())));
        assert_eq!(
            control.policy(&mut cache).unwrap().check(&dst),
            Err(Refused::Gateway)
        );
    }

    /// What the check costs a forwarded packet, on a policy the size of a large deployment's
    /// (500 include routes, 200 excludes, each family). Run with
    /// `cargo test --release -p tunnel-user --lib measure_check_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn measure_check_cost() {
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        for i in 0..500u32 {
            include.push(format!("\"10.{}.{}.0/24\"", 20 + i / 256, i % 256));
            include.push(format!("\"fd00:{:x}::/48\"", 0x100 + i));
        }
        for i in 0..200u32 {
            exclude.push(format!("\"10.{}.{}.128/25\"", 20 + i / 256, i % 256));
            exclude.push(format!("\"fd00:{:x}:1::/64\"", 0x100 + i));
        }
        let dir = std::env::temp_dir().join(format!("tunnel-access-m-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["server.pem", "server.key", "users"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let text = format!(
            "dns = [\"10.10.0.1\"]\n[tls]\ncertificate = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\n\
             [auth]\nusers_file = \"{d}/users\"\n\
             [pool]\nipv4 = \"10.10.0.0/24\"\nipv6 = \"fd00:10::/64\"\n\
             [routes]\ninclude = [{}]\nexclude = [{}]\n",
            include.join(", "),
            exclude.join(", "),
            d = dir.display()
        );
        let policy = AccessPolicy::new(&text.parse().unwrap(), &host());
        // Every 4th packet is to an excluded half, every 7th to another client.
        let packets: Vec<Vec<u8>> = (0..1024u32)
            .map(|i| {
                let j = i % 500;
                if i % 7 == 0 {
                    udp(&format!("10.10.0.{}", 2 + i % 200), 443)
                } else if i % 2 == 0 {
                    let host = if i % 4 == 0 { 200 } else { 7 };
                    udp(&format!("10.{}.{}.{host}", 20 + j / 256, j % 256), 443)
                } else {
                    let sub = if i % 4 == 1 { "1" } else { "2" };
                    udp(&format!("fd00:{:x}:{sub}::9", 0x100 + j), 443)
                }
            })
            .collect();
        let expected = packets.iter().filter(|p| policy.check(p).is_ok()).count();
        let rounds = 10_000;
        let start = std::time::Instant::now();
        let mut allowed = 0;
        for _ in 0..rounds {
            for p in &packets {
                allowed += usize::from(std::hint::black_box(&policy).check(p).is_ok());
            }
        }
        let per = start.elapsed().as_nanos() as f64 / (rounds * packets.len()) as f64;
        eprintln!(
            "access check: {per:.1} ns/packet over {} packets ({expected} of {} allowed)",
            rounds * packets.len(),
            packets.len()
        );
        assert_eq!(allowed, expected * rounds);
        assert!(expected > 0 && expected < packets.len());
    }

    #[test]
    fn a_session_reaches_its_own_realms_routes_and_dns_only() {
        let c = config_with(
            "",
            "realms = [\"Users\", \"Admins\"]",
            "[realm.Admins]\nroutes_include = [\"172.30.0.0/16\"]\nroutes_exclude = []\n\
             dns = [\"172.30.0.53\"]\npool_ipv4 = \"10.20.0.0/24\"\n",
        );
        let p = AccessPolicy::new(&c, &host());
        let (users, admins) = (p.realm_id("Users").unwrap(), p.realm_id("Admins").unwrap());
        assert_eq!(p.realm_id("Guests"), None);
        let check = |realm, dst: &str, port| p.check_in(realm, &udp(dst, port));
        // Admins: their routes, not the global ones.
        assert_eq!(check(admins, "172.30.1.1", 443), Ok(()));
        assert_eq!(check(admins, "172.20.0.2", 443), Err(Refused::NotRouted));
        assert_eq!(check(admins, "172.30.0.53", 53), Ok(()));
        assert_eq!(check(admins, "172.20.0.53", 53), Err(Refused::NotRouted));
        // Users: the global ones, not the Admins'.
        assert_eq!(check(users, "172.20.0.2", 443), Ok(()));
        assert_eq!(check(users, "172.20.99.2", 443), Err(Refused::NotRouted));
        assert_eq!(check(users, "172.30.1.1", 443), Err(Refused::NotRouted));
        assert_eq!(check(users, "172.30.0.53", 53), Err(Refused::NotRouted));
        assert_eq!(check(users, "172.20.0.53", 53), Ok(()));
        // The Admins' pool is other clients for everyone; the gateway stays the gateway.
        assert_eq!(check(users, "10.20.0.7", 80), Err(Refused::OtherClient));
        assert_eq!(check(admins, "10.10.0.7", 80), Err(Refused::OtherClient));
        assert_eq!(check(admins, "10.10.0.1", 22), Err(Refused::Gateway));
        // The global check is the Users' (no realm table).
        assert_eq!(p.check(&udp("172.30.1.1", 443)), Err(Refused::NotRouted));
        assert_eq!(p.check(&udp("172.20.0.2", 443)), Ok(()));
    }
}
