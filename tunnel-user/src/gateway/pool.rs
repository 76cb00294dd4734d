//! The gateway's address pools: which tunnel address each session holds.
//!
//! This module owns the bookkeeping only: it hands out the lowest free address (so that a
//! restarted gateway, replaying the same logins, gives the same addresses), takes addresses
//! back, and answers whether an address is in use (for anti-spoofing and forwarding lookups).
//! It never hands out a pool's network address, its IPv4 broadcast address or the gateway's
//! own address. It does not know about sessions, routes or interfaces.
//!
//! Addresses are kept as offsets from the pool's network address, so IPv4 and IPv6 share one
//! implementation and a /64 costs memory only for the addresses actually handed out.
//!
//! A gateway has one [`AddressPool`] per distinct pool: `[pool]`'s, which holds the gateway's
//! own tunnel addresses, and one for each realm with a pool of its own (`realm.NAME.pool_*`),
//! which holds none. [`RealmPools`] picks a realm's pool; realms without one share `[pool]`'s.
//! Pools never overlap (the config refuses it), so an address names its pool.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::config::{GatewayConfig, PoolChoice, PoolConfig, RealmPool};

/// The addresses one session holds: always IPv4, IPv6 when the gateway has an IPv6 pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

impl Lease {
    /// Its addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = std::net::IpAddr> {
        std::iter::once(std::net::IpAddr::V4(self.ipv4)).chain(self.ipv6.map(std::net::IpAddr::V6))
    }
}

/// Errors of the address pools.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Every client address of the pool is in use.
    #[error("address pool {net} is exhausted")]
    Exhausted { net: IpNet },
    /// The pool has no address left for clients once its reserved addresses are taken out.
    #[error("address pool {net} leaves no address for clients")]
    TooSmall { net: IpNet },
    /// The gateway's own address is not a host address of its pool.
    #[error("gateway address {addr} is not a host address inside {net}")]
    GatewayOutside { addr: IpAddr, net: IpNet },
    /// [`AddressPool::claim`] of an address the pool never hands out.
    #[error("{addr} is not a client address of this gateway's pools")]
    NotInPool { addr: IpAddr },
    /// [`AddressPool::claim`] of an address that is already assigned.
    #[error("{addr} is already assigned")]
    InUse { addr: IpAddr },
}

/// One family's pool, as offsets from the network address. The free offsets are kept as
/// disjoint intervals, so the lowest free offset is the start of the first interval and a
/// claim far into a /64 costs one split, not a walk over the gap.
#[derive(Debug)]
struct Range {
    net: IpNet,
    /// The highest offset a client may get.
    last: u128,
    /// The gateway's own offset, inside `1..=last`, never handed out; `None` in a realm's
    /// own pool.
    reserved: Option<u128>,
    /// Free offsets: interval start -> interval end (inclusive), non-adjacent.
    free: BTreeMap<u128, u128>,
    assigned: BTreeSet<u128>,
}

impl Range {
    /// `broadcast`: whether the top address is reserved (IPv4) or usable (IPv6).
    fn new(net: IpNet, gateway: Option<IpAddr>, broadcast: bool) -> Result<Range, PoolError> {
        let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
        let top = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
        let last = if broadcast {
            top.saturating_sub(1)
        } else {
            top
        };
        // Offsets 1..=last minus the gateway's, if it has one here: nothing may be left.
        if last < 1 + u128::from(gateway.is_some()) {
            return Err(PoolError::TooSmall { net });
        }
        let reserved = match gateway {
            None => None,
            Some(addr) => match offset(net, addr) {
                Some(o) if (1..=last).contains(&o) => Some(o),
                _ => return Err(PoolError::GatewayOutside { addr, net }),
            },
        };
        let mut free = BTreeMap::new();
        match reserved {
            None => {
                free.insert(1, last);
            }
            Some(r) => {
                if r > 1 {
                    free.insert(1, r - 1);
                }
                if r < last {
                    free.insert(r + 1, last);
                }
            }
        }
        Ok(Range {
            net,
            last,
            reserved,
            free,
            assigned: BTreeSet::new(),
        })
    }

    fn allocate(&mut self) -> Result<u128, PoolError> {
        let (start, end) = self
            .free
            .pop_first()
            .ok_or(PoolError::Exhausted { net: self.net })?;
        if start < end {
            self.free.insert(start + 1, end);
        }
        self.assigned.insert(start);
        Ok(start)
    }

    fn release(&mut self, o: u128) -> bool {
        if !self.assigned.remove(&o) {
            return false;
        }
        let mut start = o;
        let mut end = o;
        // Merge with the interval ending just below and the one starting just above.
        if let Some((&s, &e)) = self.free.range(..o).next_back()
            && e.checked_add(1) == Some(o)
        {
            self.free.remove(&s);
            start = s;
        }
        if let Some(next) = o.checked_add(1)
            && let Some(e) = self.free.remove(&next)
        {
            end = e;
        }
        self.free.insert(start, end);
        true
    }

    /// Whether `o` is an offset this pool hands out to clients.
    fn is_client_offset(&self, o: u128) -> bool {
        (1..=self.last).contains(&o) && Some(o) != self.reserved
    }

    /// Takes `o` out of the free intervals. `o` must be a client offset not assigned.
    fn claim(&mut self, o: u128) {
        let Some((&s, &e)) = self.free.range(..=o).next_back() else {
            return;
        };
        if e < o {
            return;
        }
        self.free.remove(&s);
        if s < o {
            self.free.insert(s, o - 1);
        }
        if o < e {
            self.free.insert(o + 1, e);
        }
        self.assigned.insert(o);
    }
}

/// `addr - network` if `addr` is inside `net`.
fn offset(net: IpNet, addr: IpAddr) -> Option<u128> {
    match (net, addr) {
        (IpNet::V4(n), IpAddr::V4(a)) if n.contains(&a) => {
            Some(u128::from(u32::from(a) - u32::from(n.network())))
        }
        (IpNet::V6(n), IpAddr::V6(a)) if n.contains(&a) => {
            Some(u128::from(a) - u128::from(n.network()))
        }
        _ => None,
    }
}

fn v4_at(net: Ipv4Net, o: u128) -> Ipv4Addr {
    // Offsets of an IPv4 range are below 2^32 by construction.
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(o as u32))
}

fn v6_at(net: Ipv6Net, o: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).wrapping_add(o))
}

/// The gateway's IPv4 pool and optional IPv6 pool.
#[derive(Debug)]
pub struct AddressPool {
    v4_net: Ipv4Net,
    v4: Range,
    v6: Option<(Ipv6Net, Range)>,
}

impl AddressPool {
    /// Pools for `ipv4` and, when given, `ipv6`, each with the gateway's own address in it.
    pub fn new(
        ipv4: Ipv4Net,
        gateway_ipv4: Ipv4Addr,
        ipv6: Option<(Ipv6Net, Ipv6Addr)>,
    ) -> Result<AddressPool, PoolError> {
        AddressPool::build(
            ipv4,
            Some(gateway_ipv4),
            ipv6.map(|(net, gw)| (net, Some(gw))),
        )
    }

    /// A realm's own pool: every host address goes to clients, the gateway has none here.
    pub fn without_gateway(ipv4: Ipv4Net, ipv6: Option<Ipv6Net>) -> Result<AddressPool, PoolError> {
        AddressPool::build(ipv4, None, ipv6.map(|net| (net, None)))
    }

    fn build(
        ipv4: Ipv4Net,
        gateway_ipv4: Option<Ipv4Addr>,
        ipv6: Option<(Ipv6Net, Option<Ipv6Addr>)>,
    ) -> Result<AddressPool, PoolError> {
        let ipv4 = ipv4.trunc();
        let v4 = Range::new(ipv4.into(), gateway_ipv4.map(IpAddr::V4), true)?;
        let v6 = ipv6
            .map(|(net, gw)| {
                let net = net.trunc();
                Range::new(net.into(), gw.map(IpAddr::V6), false).map(|r| (net, r))
            })
            .transpose()?;
        Ok(AddressPool {
            v4_net: ipv4,
            v4,
            v6,
        })
    }

    /// Whether `addr` is inside this pool's prefixes (assigned or not).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4_net.contains(&a),
            IpAddr::V6(a) => self.v6.as_ref().is_some_and(|(net, _)| net.contains(&a)),
        }
    }

    /// Pools as the config describes them.
    pub fn from_config(config: &PoolConfig) -> Result<AddressPool, PoolError> {
        let ipv6 = match (config.ipv6, config.gateway_ipv6) {
            (Some(net), Some(gw)) => Some((net, gw)),
            // A validated config has both or neither; an IPv6 pool without a gateway address
            // falls back to the default, the first host.
            (Some(net), None) => Some((net, v6_at(net, 1))),
            (None, _) => None,
        };
        AddressPool::new(config.ipv4, config.gateway_ipv4, ipv6)
    }

    /// The IPv4 pool, whose netmask is pushed to clients.
    pub fn ipv4_net(&self) -> Ipv4Net {
        self.v4_net
    }

    /// The IPv6 pool, if configured.
    pub fn ipv6_net(&self) -> Option<Ipv6Net> {
        self.v6.as_ref().map(|(net, _)| *net)
    }

    /// The lowest free IPv4 address and, with an IPv6 pool, the lowest free IPv6 address.
    /// Either both are assigned or, on error, neither.
    pub fn allocate(&mut self) -> Result<Lease, PoolError> {
        let o4 = self.v4.allocate()?;
        let ipv6 = match &mut self.v6 {
            None => None,
            Some((net, range)) => match range.allocate() {
                Ok(o6) => Some(v6_at(*net, o6)),
                Err(e) => {
                    self.v4.release(o4);
                    return Err(e);
                }
            },
        };
        Ok(Lease {
            ipv4: v4_at(self.v4_net, o4),
            ipv6,
        })
    }

    /// Takes back the lease's addresses. Releasing twice, or releasing an address this pool
    /// never handed out, does nothing. Returns whether anything was released.
    pub fn release(&mut self, lease: &Lease) -> bool {
        let mut released = false;
        if let Some(o) = offset(self.v4_net.into(), lease.ipv4.into()) {
            released |= self.v4.release(o);
        }
        if let (Some(addr), Some((net, range))) = (lease.ipv6, &mut self.v6)
            && let Some(o) = offset((*net).into(), addr.into())
        {
            released |= range.release(o);
        }
        released
    }

    /// Marks a specific lease as assigned, e.g. for a session restored from a session store
    /// after a restart, so that it keeps its addresses. Either both addresses are claimed or,
    /// on error, neither.
    pub fn claim(&mut self, lease: &Lease) -> Result<(), PoolError> {
        let o4 = self.check_claimable(lease.ipv4.into())?;
        let o6 = match lease.ipv6 {
            Some(addr) => Some(self.check_claimable(addr.into())?),
            None => None,
        };
        // Both checked above, so neither claim can fail half-way.
        self.v4.claim(o4);
        if let (Some(o6), Some((_, range))) = (o6, &mut self.v6) {
            range.claim(o6);
        }
        Ok(())
    }

    fn check_claimable(&self, addr: IpAddr) -> Result<u128, PoolError> {
        let range = match addr {
            IpAddr::V4(_) => Some(&self.v4),
            IpAddr::V6(_) => self.v6.as_ref().map(|(_, r)| r),
        };
        let (range, o) = range
            .and_then(|r| offset(r.net, addr).map(|o| (r, o)))
            .filter(|(r, o)| r.is_client_offset(*o))
            .ok_or(PoolError::NotInPool { addr })?;
        if range.assigned.contains(&o) {
            return Err(PoolError::InUse { addr });
        }
        Ok(o)
    }

    /// Whether `addr` is currently assigned to a session.
    pub fn is_assigned(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(_) => {
                offset(self.v4_net.into(), addr).is_some_and(|o| self.v4.assigned.contains(&o))
            }
            IpAddr::V6(_) => self.v6.as_ref().is_some_and(|(net, range)| {
                offset((*net).into(), addr).is_some_and(|o| range.assigned.contains(&o))
            }),
        }
    }

    /// How many leases are out (each holds one IPv4 address).
    pub fn assigned_count(&self) -> usize {
        self.v4.assigned.len()
    }
}

/// Every pool of a gateway, and which realm takes addresses from which.
#[derive(Debug)]
pub struct RealmPools {
    /// `[pool]`'s, then each realm's own, in realm order.
    pools: Vec<AddressPool>,
    /// Realms with their own pool: the index into `pools`.
    own: BTreeMap<String, usize>,
}

impl RealmPools {
    /// The pools of `config`: `[pool]`'s and one per realm with `pool_ipv4`.
    pub fn from_config(config: &GatewayConfig) -> Result<RealmPools, PoolError> {
        let mut pools = vec![AddressPool::from_config(&config.pool)?];
        let mut own = BTreeMap::new();
        for realm in &config.auth.realms {
            if let Some(policy) = config.realm_policy(realm)
                && let PoolChoice::Own(RealmPool { ipv4, ipv6 }) = policy.pool
            {
                own.insert(realm.clone(), pools.len());
                pools.push(AddressPool::without_gateway(ipv4, ipv6)?);
            }
        }
        Ok(RealmPools { pools, own })
    }

    /// The pool `realm`'s sessions take addresses from (`[pool]`'s for a realm without one
    /// of its own, or one the config does not know).
    pub fn pool_for(&self, realm: &str) -> &AddressPool {
        let i = self.own.get(realm).copied().unwrap_or(0);
        &self.pools[i]
    }

    /// The lowest free lease of `realm`'s pool.
    pub fn allocate(&mut self, realm: &str) -> Result<Lease, PoolError> {
        let i = self.own.get(realm).copied().unwrap_or(0);
        self.pools[i].allocate()
    }

    /// Takes back a lease, into whichever pool holds its IPv4 address.
    pub fn release(&mut self, lease: &Lease) -> bool {
        self.pools
            .iter_mut()
            .find(|p| p.contains(lease.ipv4.into()))
            .is_some_and(|p| p.release(lease))
    }

    /// Marks a specific lease of `realm`'s pool as assigned (see [`AddressPool::claim`]).
    pub fn claim(&mut self, realm: &str, lease: &Lease) -> Result<(), PoolError> {
        let i = self.own.get(realm).copied().unwrap_or(0);
        self.pools[i].claim(lease)
    }

    /// Whether `addr` is assigned to a session, in any pool.
    pub fn is_assigned(&self, addr: IpAddr) -> bool {
        self.pools.iter().any(|p| p.is_assigned(addr))
    }

    /// Leases out, all pools together.
    pub fn assigned_count(&self) -> usize {
        self.pools.iter().map(AddressPool::assigned_count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn pool4(net: &str, gw: &str) -> AddressPool {
        AddressPool::new(net.parse().unwrap(), v4(gw), None).unwrap()
    }

    #[test]
    fn allocates_lowest_free_skipping_network_gateway_and_broadcast() {
        let mut pool = pool4("10.0.0.0/29", "10.0.0.1");
        let got: Vec<Ipv4Addr> = (0..5).map(|_| pool.allocate().unwrap().ipv4).collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(v4)
        );
        assert_eq!(
            pool.allocate(),
            Err(PoolError::Exhausted {
                net: "10.0.0.0/29".parse().unwrap()
            })
        );
        for a in ["10.0.0.0", "10.0.0.1", "10.0.0.7"] {
            assert!(!pool.is_assigned(v4(a).into()), "{a}");
        }
        assert_eq!(pool.assigned_count(), 5);
    }

    #[test]
    fn gateway_in_the_middle_is_skipped() {
        let mut pool = pool4("10.0.0.0/29", "10.0.0.4");
        let got: Vec<Ipv4Addr> = (0..5).map(|_| pool.allocate().unwrap().ipv4).collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"].map(v4)
        );
        assert!(pool.allocate().is_err());
    }

    #[test]
    fn slash_30_has_exactly_one_client_address() {
        let mut pool = pool4("192.168.7.0/30", "192.168.7.1");
        assert_eq!(pool.allocate().unwrap().ipv4, v4("192.168.7.2"));
        assert!(matches!(pool.allocate(), Err(PoolError::Exhausted { .. })));
    }

    #[test]
    fn too_small_and_misplaced_gateway_are_refused() {
        let err = AddressPool::new("10.0.0.0/31".parse().unwrap(), v4("10.0.0.1"), None);
        assert!(matches!(err, Err(PoolError::TooSmall { .. })), "{err:?}");
        for gw in ["10.0.0.0", "10.0.0.7", "10.0.1.1"] {
            let err = AddressPool::new("10.0.0.0/29".parse().unwrap(), v4(gw), None);
            assert!(
                matches!(err, Err(PoolError::GatewayOutside { .. })),
                "{gw}: {err:?}"
            );
        }
        let err = AddressPool::new(
            "10.0.0.0/24".parse().unwrap(),
            v4("10.0.0.1"),
            Some(("fd00::/127".parse().unwrap(), v6("fd00::1"))),
        );
        assert!(matches!(err, Err(PoolError::TooSmall { .. })), "{err:?}");
    }

    #[test]
    fn release_is_idempotent_and_the_lowest_address_comes_back_first() {
        let mut pool = pool4("10.0.0.0/24", "10.0.0.1");
        let leases: Vec<Lease> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert!(pool.is_assigned(v4("10.0.0.3").into()));
        assert!(pool.release(&leases[2]));
        assert!(!pool.release(&leases[2]), "second release must do nothing");
        assert!(pool.release(&leases[0]));
        assert!(!pool.is_assigned(v4("10.0.0.2").into()));
        assert!(!pool.is_assigned(v4("10.0.0.4").into()));
        assert_eq!(pool.assigned_count(), 2);
        assert_eq!(pool.allocate().unwrap().ipv4, v4("10.0.0.2"));
        assert_eq!(pool.allocate().unwrap().ipv4, v4("10.0.0.4"));
        assert_eq!(pool.allocate().unwrap().ipv4, v4("10.0.0.6"));
        // Addresses the pool never handed out are ignored.
        assert!(!pool.release(&Lease {
            ipv4: v4("192.0.2.1"),
            ipv6: None
        }));
        assert!(!pool.release(&Lease {
            ipv4: v4("10.0.0.1"),
            ipv6: None
        }));
        assert_eq!(pool.assigned_count(), 5);
    }

    #[test]
    fn exhausted_pool_recovers_after_release() {
        let mut pool = pool4("10.0.0.0/30", "10.0.0.2");
        let lease = pool.allocate().unwrap();
        assert_eq!(lease.ipv4, v4("10.0.0.1"));
        assert!(pool.allocate().is_err());
        pool.release(&lease);
        assert_eq!(pool.allocate().unwrap(), lease);
    }

    #[test]
    fn dual_stack_leases_are_all_or_nothing() {
        let mut pool = AddressPool::new(
            "10.0.0.0/24".parse().unwrap(),
            v4("10.0.0.1"),
            Some(("fd00:10::/126".parse().unwrap(), v6("fd00:10::1"))),
        )
        .unwrap();
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(a.ipv6, Some(v6("fd00:10::2")));
        // /126 has no broadcast: ::3 is a client address.
        assert_eq!(b.ipv6, Some(v6("fd00:10::3")));
        assert!(pool.is_assigned(v6("fd00:10::3").into()));
        assert!(!pool.is_assigned(v6("fd00:10::1").into()));
        // IPv6 is exhausted; the IPv4 address taken for the failed lease is given back.
        assert!(matches!(pool.allocate(), Err(PoolError::Exhausted { .. })));
        assert_eq!(pool.assigned_count(), 2);
        assert!(!pool.is_assigned(v4("10.0.0.4").into()));
        pool.release(&a);
        assert!(!pool.is_assigned(v6("fd00:10::2").into()));
        assert_eq!(pool.allocate().unwrap(), a);
    }

    #[test]
    fn large_ipv6_pool_costs_nothing_up_front() {
        let mut pool = AddressPool::new(
            "10.0.0.0/16".parse().unwrap(),
            v4("10.0.0.1"),
            Some(("fd00:10::/64".parse().unwrap(), v6("fd00:10::1"))),
        )
        .unwrap();
        let lease = pool.allocate().unwrap();
        assert_eq!(lease.ipv6, Some(v6("fd00:10::2")));
        assert!(pool.is_assigned(v6("fd00:10::2").into()));
        assert!(!pool.is_assigned(v6("fd00:11::2").into()));
        // A restored lease far into the /64 splits the free space, it does not walk it.
        let far = Lease {
            ipv4: v4("10.0.200.7"),
            ipv6: Some(v6("fd00:10::ffff:ffff:ffff:fff0")),
        };
        pool.claim(&far).unwrap();
        assert!(pool.is_assigned(v6("fd00:10::ffff:ffff:ffff:fff0").into()));
        assert_eq!(pool.allocate().unwrap().ipv6, Some(v6("fd00:10::3")));
        pool.release(&far);
        assert!(!pool.is_assigned(v6("fd00:10::ffff:ffff:ffff:fff0").into()));
    }

    #[test]
    fn claim_takes_a_specific_lease_and_keeps_lowest_free_order() {
        let mut pool = AddressPool::new(
            "10.0.0.0/24".parse().unwrap(),
            v4("10.0.0.1"),
            Some(("fd00::/120".parse().unwrap(), v6("fd00::1"))),
        )
        .unwrap();
        let restored = Lease {
            ipv4: v4("10.0.0.5"),
            ipv6: Some(v6("fd00::9")),
        };
        pool.claim(&restored).unwrap();
        assert!(pool.is_assigned(v4("10.0.0.5").into()));
        assert_eq!(
            pool.claim(&restored),
            Err(PoolError::InUse {
                addr: v4("10.0.0.5").into()
            })
        );
        // The gap below the claimed address is handed out first, lowest first.
        let got: Vec<Ipv4Addr> = (0..4).map(|_| pool.allocate().unwrap().ipv4).collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.6"].map(v4)
        );
        for bad in [
            v4("10.0.0.1"),
            v4("10.0.0.0"),
            v4("10.0.0.255"),
            v4("10.0.1.9"),
        ] {
            let lease = Lease {
                ipv4: bad,
                ipv6: None,
            };
            assert_eq!(
                pool.claim(&lease),
                Err(PoolError::NotInPool { addr: bad.into() })
            );
        }
        // A bad IPv6 half leaves the IPv4 half unclaimed.
        let half = Lease {
            ipv4: v4("10.0.0.50"),
            ipv6: Some(v6("fd00::1")),
        };
        assert!(matches!(
            pool.claim(&half),
            Err(PoolError::NotInPool { .. })
        ));
        assert!(!pool.is_assigned(v4("10.0.0.50").into()));
    }

    #[test]
    fn claim_of_a_released_address() {
        let mut pool = pool4("10.0.0.0/24", "10.0.0.1");
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.release(&a);
        pool.claim(&a).unwrap();
        assert!(pool.is_assigned(a.ipv4.into()));
        assert_ne!(pool.allocate().unwrap(), a);
        assert!(pool.is_assigned(b.ipv4.into()));
    }

    #[test]
    fn from_config_uses_the_configured_gateway() {
        let config = crate::gateway::GatewayConfig::from_str(
            r#"
            [tls]
            certificate = "c.pem"
            key = "k.pem"
            [auth]
            users_file = "users"
            [pool]
            ipv4 = "10.9.0.0/24"
            gateway_ipv4 = "10.9.0.2"
            ipv6 = "fd09::/64"
            "#,
        )
        .unwrap();
        let mut pool = AddressPool::from_config(&config.pool).unwrap();
        let lease = pool.allocate().unwrap();
        assert_eq!(lease.ipv4, v4("10.9.0.1"));
        assert_eq!(lease.ipv6, Some(v6("fd09::2")));
        assert_eq!(pool.ipv4_net(), "10.9.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(pool.ipv6_net(), Some("fd09::/64".parse().unwrap()));
    }

    /// The pool against a naive model (a sorted list of every client address) under random
    /// allocate/release/claim sequences.
    #[test]
    fn matches_a_naive_model() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..50 {
            let gw_host = rng.random_range(1..=14u8);
            let gw = Ipv4Addr::new(10, 0, 0, gw_host);
            let mut pool = AddressPool::new("10.0.0.0/28".parse().unwrap(), gw, None).unwrap();
            let clients: Vec<Ipv4Addr> = (1..=14u8)
                .map(|h| Ipv4Addr::new(10, 0, 0, h))
                .filter(|a| *a != gw)
                .collect();
            let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
            for _ in 0..200 {
                let lease = |a| Lease {
                    ipv4: a,
                    ipv6: None,
                };
                match rng.random_range(0..3) {
                    0 => {
                        let want = clients.iter().find(|a| !used.contains(a)).copied();
                        match (pool.allocate(), want) {
                            (Ok(l), Some(w)) => {
                                assert_eq!(l.ipv4, w, "round {round}");
                                used.insert(w);
                            }
                            (Err(PoolError::Exhausted { .. }), None) => {}
                            (got, want) => panic!("round {round}: got {got:?}, want {want:?}"),
                        }
                    }
                    1 => {
                        let a = Ipv4Addr::new(10, 0, 0, rng.random_range(0..=16u8));
                        assert_eq!(pool.release(&lease(a)), used.remove(&a), "round {round}");
                    }
                    _ => {
                        let a = Ipv4Addr::new(10, 0, 0, rng.random_range(0..=16u8));
                        let got = pool.claim(&lease(a));
                        if !clients.contains(&a) {
                            assert!(matches!(got, Err(PoolError::NotInPool { .. })));
                        } else if used.contains(&a) {
                            assert!(matches!(got, Err(PoolError::InUse { .. })));
                        } else {
                            assert_eq!(got, Ok(()));
                            used.insert(a);
                        }
                    }
                }
                for a in &clients {
                    assert_eq!(
                        pool.is_assigned((*a).into()),
                        used.contains(a),
                        "round {round}"
                    );
                }
            }
        }
    }

    #[test]
    fn realm_pools_have_no_gateway_address_and_realms_share_the_global_one() {
        let dir = std::env::temp_dir();
        let text = format!(
            "[tls]\ncertificate = \"{d}/c\"\nkey = \"{d}/k\"\n\
             [auth]\nusers_file = \"{d}/u\"\nrealms = [\"Users\", \"Admins\", \"Guests\"]\n\
             [pool]\nipv4 = \"10.10.0.0/30\"\nipv6 = \"fd00:10::/126\"\n\
             [realm.Admins]\npool_ipv4 = \"10.20.0.0/30\"\npool_ipv6 = \"fd00:20::/126\"\n",
            d = dir.display()
        );
        let config: GatewayConfig = text.parse().unwrap();
        let mut pools = RealmPools::from_config(&config).unwrap();
        // A realm's /30 gives both hosts to clients; [pool]'s /30 keeps one for the gateway.
        let a1 = pools.allocate("Admins").unwrap();
        let a2 = pools.allocate("Admins").unwrap();
        assert_eq!((a1.ipv4, a2.ipv4), (v4("10.20.0.1"), v4("10.20.0.2")));
        assert_eq!(a1.ipv6, Some(v6("fd00:20::1")));
        assert!(matches!(
            pools.allocate("Admins"),
            Err(PoolError::Exhausted { .. })
        ));
        // Users and Guests share [pool]'s one client address.
        let u = pools.allocate("Users").unwrap();
        assert_eq!(u.ipv4, v4("10.10.0.2"));
        assert!(matches!(
            pools.allocate("Guests"),
            Err(PoolError::Exhausted { .. })
        ));
        assert_eq!(
            pools.pool_for("Guests").ipv4_net(),
            "10.10.0.0/30".parse().unwrap()
        );
        assert_eq!(
            pools.pool_for("Admins").ipv4_net(),
            "10.20.0.0/30".parse().unwrap()
        );
        assert_eq!(pools.assigned_count(), 3);
        assert!(pools.is_assigned(a2.ipv4.into()) && pools.is_assigned(u.ipv4.into()));
        // A release finds its pool by address.
        assert!(pools.release(&a1));
        assert!(!pools.is_assigned(a1.ipv4.into()));
        assert!(!pools.is_assigned(v6("fd00:20::1").into()));
        assert_eq!(pools.allocate("Admins").unwrap(), a1);
        assert!(pools.release(&u));
        assert!(!pools.release(&u));
        assert_eq!(pools.allocate("Guests").unwrap().ipv4, v4("10.10.0.2"));
        // Claims go to the realm's pool.
        pools.release(&a2);
        pools.claim("Admins", &a2).unwrap();
        assert!(matches!(
            pools.claim("Users", &a2),
            Err(PoolError::NotInPool { .. })
        ));
        // Too small without a gateway address: a /31 has no host.
        assert!(matches!(
            AddressPool::without_gateway("10.30.0.0/31".parse().unwrap(), None),
            Err(PoolError::TooSmall { .. })
        ));
    }
}
