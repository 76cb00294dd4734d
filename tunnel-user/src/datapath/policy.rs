//! The data-path policy as userspace thinks of it: connections with their tunnel addresses,
//! include and exclude routes and UDP port lists, per-app rules, gateway addresses and
//! lock-down. [`Policy::validate`] checks everything the kernel side relies on, so a policy that
//! passes can always be written; [`crate::datapath::compile`] turns it into map entries.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

use ipnet::IpNet;
use tunnel_common::{MAX_APPS, MAX_CONNS, MAX_GATEWAYS};
/// A UDP destination port list, `SplitUDPPortList`'s syntax and type: parsed and checked in
/// one place, tunnel-config, whether it comes from a KVP or is built here.
pub use tunnel_config::PortList;

/// Index of a connection in the data path (`0..MAX_CONNS`).
pub type ConnId = u8;

/// Smallest and largest tunnel MTU accepted (IPv6 minimum link MTU; jumbo frames).
pub const MTU_RANGE: RangeInclusive<u16> = 1280..=9000;

/// The complete data-path policy. Swapped in as a whole by [`crate::Datapath::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// "VPN only access": whatever would bypass the tunnel for lack of a rule is dropped.
    pub lockdown: bool,
    /// Addresses that always bypass (the gateways we talk to).
    pub gateways: Vec<IpAddr>,
    /// The administrator's lock-down exceptions: they bypass like exclude routes, with any
    /// connection up or none.
    pub exceptions: Vec<IpNet>,
    /// The connection that carries traffic of apps without a per-app rule.
    pub device_conn: Option<ConnId>,
    /// Per-app rules: a cgroup v2 subtree and the connection its sockets use.
    pub apps: Vec<AppRule>,
    /// Connections that are up.
    pub conns: Vec<ConnPolicy>,
}

/// A per-app rule: sockets in cgroup `cgroup_id` (or below it) use connection `conn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AppRule {
    pub cgroup_id: u64,
    pub conn: ConnId,
}

/// One connection's part of the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnPolicy {
    pub id: ConnId,
    /// The connection's TUN device.
    pub tun_ifindex: u32,
    pub tun_v4: Option<Ipv4Addr>,
    pub tun_v6: Option<Ipv6Addr>,
    pub mtu: u16,
    /// Tunnelled ranges; empty means everything (`0.0.0.0/0` and `::/0`).
    pub include: Vec<IpNet>,
    /// Ranges never tunnelled, even inside an include range.
    pub exclude: Vec<IpNet>,
    /// When set, only UDP to these destination ports is tunnelled.
    pub udp_ports: Option<PortList>,
    /// Packets of a family this connection has no tunnel address for are dropped instead of
    /// bypassing the tunnel (explicit excludes and the gateways stay open). The client sets
    /// it for a full tunnel whose gateway assigned no IPv6 address, so that IPv6 does not
    /// leave around the tunnel.
    pub drop_missing_family: bool,
}

impl ConnPolicy {
    /// A connection with no routes (so everything is included), no port list, MTU 1400.
    pub fn new(id: ConnId, tun_ifindex: u32) -> Self {
        ConnPolicy {
            id,
            tun_ifindex,
            tun_v4: None,
            tun_v6: None,
            mtu: 1400,
            include: Vec::new(),
            exclude: Vec::new(),
            udp_ports: None,
            drop_missing_family: false,
        }
    }

    /// The include routes in force: the configured ones, or both default routes.
    pub fn effective_include(&self) -> Vec<IpNet> {
        if self.include.is_empty() {
            vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ]
        } else {
            self.include.clone()
        }
    }
}

/// Why a policy was refused. Nothing of a refused policy is applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("connection id {id} is out of range (0..{max})", max = MAX_CONNS)]
    ConnIdOutOfRange { id: ConnId },
    #[error("connection id {id} appears twice")]
    DuplicateConn { id: ConnId },
    #[error("{what} refers to connection {id}, which is not in the policy")]
    UnknownConn { what: &'static str, id: ConnId },
    #[error("connection {id}: MTU {mtu} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end())]
    MtuOutOfRange { id: ConnId, mtu: u16 },
    #[error("connection {id}: TUN ifindex 0 is not a device")]
    NoTunDevice { id: ConnId },
    #[error("connection {id}: TUN ifindex {ifindex} is also used by connection {other}")]
    SharedTunDevice {
        id: ConnId,
        other: ConnId,
        ifindex: u32,
    },
    #[error("connection {id} has neither an IPv4 nor an IPv6 tunnel address")]
    NoTunnelAddress { id: ConnId },
    #[error("cgroup {cgroup_id} has two per-app rules")]
    DuplicateApp { cgroup_id: u64 },
    #[error("{count} {what} exceed the capacity of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: u32,
    },
}

impl Policy {
    /// Checks the policy against what the data path can hold.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mut ids = BTreeSet::new();
        for c in &self.conns {
            if u32::from(c.id) >= MAX_CONNS {
                return Err(PolicyError::ConnIdOutOfRange { id: c.id });
            }
            if !ids.insert(c.id) {
                return Err(PolicyError::DuplicateConn { id: c.id });
            }
            if !MTU_RANGE.contains(&c.mtu) {
                return Err(PolicyError::MtuOutOfRange {
                    id: c.id,
                    mtu: c.mtu,
                });
            }
            if c.tun_ifindex == 0 {
                return Err(PolicyError::NoTunDevice { id: c.id });
            }
            if c.tun_v4.is_none() && c.tun_v6.is_none() {
                return Err(PolicyError::NoTunnelAddress { id: c.id });
            }
            if let Some(other) = self
                .conns
                .iter()
                .find(|o| o.id != c.id && o.tun_ifindex == c.tun_ifindex)
            {
                return Err(PolicyError::SharedTunDevice {
                    id: c.id,
                    other: other.id,
                    ifindex: c.tun_ifindex,
                });
            }
        }
        if let Some(id) = self.device_conn
            && !ids.contains(&id)
        {
            return Err(PolicyError::UnknownConn {
                what: "the device-level connection",
                id,
            });
        }
        let mut cgroups = BTreeSet::new();
        for a in &self.apps {
            if !ids.contains(&a.conn) {
                return Err(PolicyError::UnknownConn {
                    what: "a per-app rule",
                    id: a.conn,
                });
            }
            if !cgroups.insert(a.cgroup_id) {
                return Err(PolicyError::DuplicateApp {
                    cgroup_id: a.cgroup_id,
                });
            }
        }
        // Each map holds two slots; a policy may use half.
        check_capacity("per-app rules", self.apps.len(), MAX_APPS / 2)?;
        check_capacity("gateway addresses", self.gateways.len(), MAX_GATEWAYS)?;
        // Gateways are host routes in every connection's trie and in the global one.
        let routes: usize = self
            .conns
            .iter()
            .map(|c| c.effective_include().len() + c.exclude.len() + self.gateways.len())
            .sum::<usize>()
            + self.gateways.len();
        check_capacity("routes", routes, tunnel_common::MAX_ROUTES / 2)?;
        Ok(())
    }
}

fn check_capacity(what: &'static str, count: usize, max: u32) -> Result<(), PolicyError> {
    if count > max as usize {
        return Err(PolicyError::TooMany { what, count, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: ConnId, ifindex: u32) -> ConnPolicy {
        ConnPolicy {
            tun_v4: Some(Ipv4Addr::new(10, 200, 0, 2)),
            ..ConnPolicy::new(id, ifindex)
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let mut p = Policy {
            conns: vec![conn(0, 5), conn(0, 6)],
            ..Default::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::DuplicateConn { id: 0 }));
        p.conns = vec![conn(16, 5)];
        assert_eq!(p.validate(), Err(PolicyError::ConnIdOutOfRange { id: 16 }));
        p.conns = vec![conn(0, 5), conn(1, 5)];
        assert!(matches!(
            p.validate(),
            Err(PolicyError::SharedTunDevice { .. })
        ));
        p.conns = vec![conn(0, 5)];
        p.device_conn = Some(3);
        assert!(matches!(
            p.validate(),
            Err(PolicyError::UnknownConn { id: 3, .. })
        ));
        p.device_conn = Some(0);
        p.apps = vec![
            AppRule {
                cgroup_id: 9,
                conn: 0,
            },
            AppRule {
                cgroup_id: 9,
                conn: 0,
            },
        ];
        assert_eq!(
            p.validate(),
            Err(PolicyError::DuplicateApp { cgroup_id: 9 })
        );
        p.apps.clear();
        p.conns[0].mtu = 100;
        assert_eq!(
            p.validate(),
            Err(PolicyError::MtuOutOfRange { id: 0, mtu: 100 })
        );
        p.conns[0].mtu = 1400;
        p.conns[0].tun_v4 = None;
        assert_eq!(p.validate(), Err(PolicyError::NoTunnelAddress { id: 0 }));
        p.conns[0].tun_v4 = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.validate(), Ok(()));
    }
}
