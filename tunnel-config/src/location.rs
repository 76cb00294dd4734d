//! Location awareness (seed 004): a connection that starts and stops by where the machine
//! is, from rules on its addresses and DNS servers, all or any of which must hold.
//!
//! ```text
//!  address 10.10.0.0/16[,…] [on IFNAME]   an interface (IFNAME, or any) has an address in a range
//!  no-address 10.10.0.0/16[,…] [on IFNAME] no interface does
//!  dns 10.10.0.53[,…]                      one of the machine's DNS servers is listed
//!  no-dns 10.10.0.53[,…]                   none is
//! ```
//!
//! [`LocationRules::holds`] decides from [`Facts`] alone: the daemon gathers them (links and
//! addresses, leaving out tunnel devices; the original resolver configuration) and connects
//! while the rules hold, disconnecting when they stop holding.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// When the rules hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleMatch {
    /// Every rule holds.
    #[default]
    All,
    /// At least one does.
    Any,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LocationRule {
    /// An interface (`interface`, or any) has (`present`) or has no address in `ranges`.
    Address {
        ranges: Vec<IpNet>,
        present: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
    },
    /// One of the machine's DNS servers is (`present`) or none is in `servers`.
    Dns { servers: Vec<IpAddr>, present: bool },
}

/// A connection's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRules {
    #[serde(default, rename = "match")]
    pub when: RuleMatch,
    pub rules: Vec<LocationRule>,
}

/// Where the machine is: its interfaces' addresses (tunnel devices left out) and its DNS
/// servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub interfaces: Vec<(String, Vec<IpAddr>)>,
    pub dns: Vec<IpAddr>,
}

impl LocationRule {
    pub fn holds(&self, facts: &Facts) -> bool {
        match self {
            LocationRule::Address {
                ranges,
                present,
                interface,
            } => {
                let found = facts
                    .interfaces
                    .iter()
                    .filter(|(name, _)| interface.as_ref().is_none_or(|i| i == name))
                    .flat_map(|(_, addrs)| addrs)
                    .any(|a| ranges.iter().any(|r| r.contains(a)));
                found == *present
            }
            LocationRule::Dns { servers, present } => {
                facts.dns.iter().any(|d| servers.contains(d)) == *present
            }
        }
    }
}

impl LocationRules {
    /// Whether the connection belongs here now.
    pub fn holds(&self, facts: &Facts) -> bool {
        match self.when {
            RuleMatch::All => self.rules.iter().all(|r| r.holds(facts)),
            RuleMatch::Any => self.rules.iter().any(|r| r.holds(facts)),
        }
    }
}

/// Why a rule's text is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("location rule {text:?}: {why}")]
pub struct RuleError {
    pub text: String,
    pub why: String,
}

impl FromStr for LocationRule {
    type Err = RuleError;

    /// The rule syntax in the module docs.
    fn from_str(text: &str) -> Result<Self, RuleError> {
        let err = |why: &str| RuleError {
            text: text.to_string(),
            why: why.to_string(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (kind, list, rest) = match words.as_slice() {
            [kind, list, rest @ ..] => (*kind, *list, rest),
            _ => return Err(err("expected KIND LIST [on IFNAME]")),
        };
        let interface = match rest {
            [] => None,
            ["on", name] => Some(name.to_string()),
            _ => return Err(err("after the list only \"on IFNAME\" may follow")),
        };
        let items = list.split(',').filter(|s| !s.is_empty());
        match kind {
            "address" | "no-address" => {
                let ranges = items
                    .map(|r| {
                        r.parse::<IpNet>()
                            .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                            .map_err(|_| err(&format!("{r} is not an address or a range")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if ranges.is_empty() {
                    return Err(err("no range given"));
                }
                Ok(LocationRule::Address {
                    ranges,
                    present: kind == "address",
                    interface,
                })
            }
            "dns" | "no-dns" => {
                if interface.is_some() {
                    return Err(err("a DNS rule takes no interface"));
                }
                let servers = items
                    .map(|s| {
                        s.parse::<IpAddr>()
                            .map_err(|_| err(&format!("{s} is not an address")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if servers.is_empty() {
                    return Err(err("no server given"));
                }
                Ok(LocationRule::Dns {
                    servers,
                    present: kind == "dns",
                })
            }
            _ => Err(err("the kind is address, no-address, dns or no-dns")),
        }
    }
}

impl fmt::Display for LocationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |items: Vec<String>| items.join(",");
        match self {
            LocationRule::Address {
                ranges,
                present,
                interface,
            } => {
                write!(
                    f,
                    "{} {}",
                    if *present { "address" } else { "no-address" },
                    join(ranges.iter().map(ToString::to_string).collect())
                )?;
                if let Some(i) = interface {
                    write!(f, " on {i}")?;
                }
                Ok(())
            }
            LocationRule::Dns { servers, present } => write!(
                f,
                "{} {}",
                if *present { "dns" } else { "no-dns" },
                join(servers.iter().map(ToString::to_string).collect())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(addrs: &[(&str, &str)], dns: &[&str]) -> Facts {
        let mut interfaces: Vec<(String, Vec<IpAddr>)> = Vec::new();
        for (name, a) in addrs {
            let a: IpAddr = a.parse().unwrap();
            match interfaces.iter_mut().find(|(n, _)| n == name) {
                Some((_, list)) => list.push(a),
                None => interfaces.push((name.to_string(), vec![a])),
            }
        }
        Facts {
            interfaces,
            dns: dns.iter().map(|d| d.parse().unwrap()).collect(),
        }
    }

    fn rule(text: &str) -> LocationRule {
        text.parse().unwrap()
    }

    #[test]
    fn rules_parse_print_and_refuse() {
        for text in [
            "address 10.10.0.0/16",
            "no-address 10.10.0.0/16,192.168.5.7/32 on eth0",
            "dns 10.10.0.53",
            "no-dns 10.10.0.53,fd00::53",
        ] {
            assert_eq!(rule(text).to_string(), text);
        }
        assert_eq!(rule("address 10.1.2.3").to_string(), "address 10.1.2.3/32");
        for bad in [
            "address",
            "somewhere 10.0.0.0/8",
            "address 10.0.0.0/33",
            "dns 10.0.0.0/8",
            "dns 10.0.0.53 on eth0",
            "address 10.0.0.0/8 at eth0",
            "no-address ,",
        ] {
            assert!(bad.parse::<LocationRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_decide_from_the_facts() {
        let home = facts(
            &[("eth0", "192.168.1.20"), ("wlan0", "fe80::1")],
            &["192.168.1.1"],
        );
        let office = facts(&[("eth0", "10.10.3.4")], &["10.10.0.53"]);
        let no_office = LocationRules {
            when: RuleMatch::All,
            rules: vec![rule("no-address 10.10.0.0/16")],
        };
        assert!(no_office.holds(&home));
        assert!(!no_office.holds(&office));
        let on_wlan = rule("address 10.10.0.0/16 on wlan0");
        assert!(!on_wlan.holds(&office), "eth0's address is not wlan0's");
        let both = LocationRules {
            when: RuleMatch::All,
            rules: vec![rule("address 10.10.0.0/16"), rule("dns 10.10.0.53")],
        };
        assert!(both.holds(&office) && !both.holds(&home));
        let either = LocationRules {
            when: RuleMatch::Any,
            rules: vec![rule("dns 192.168.1.1"), rule("address 10.10.0.0/16")],
        };
        assert!(either.holds(&office) && either.holds(&home));
        assert!(!either.holds(&Facts::default()));
        // No rules: all of none hold; any of none does not.
        assert!(LocationRules::default().holds(&home));
    }

    /// A differential check against the rules' plain reading, over many generated machines.
    #[test]
    fn matches_a_naive_reading() {
        let ranges = ["10.10.0.0/16", "192.168.1.0/24", "fd00::/8"];
        let addrs = ["10.10.3.4", "192.168.1.20", "fd00::9", "172.16.0.1"];
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut list = Vec::new();
            for (i, a) in addrs.iter().enumerate() {
                if next() % 2 == 0 {
                    list.push((if i % 2 == 0 { "eth0" } else { "wlan0" }, *a));
                }
            }
            let f = facts(&list, &[]);
            let range = ranges[(next() % 3) as usize];
            let present = next() % 2 == 0;
            let text = format!("{} {range}", if present { "address" } else { "no-address" });
            let naive = list.iter().any(|(_, a)| {
                range
                    .parse::<IpNet>()
                    .unwrap()
                    .contains(&a.parse::<IpAddr>().unwrap())
            }) == present;
            assert_eq!(rule(&text).holds(&f), naive, "{text} on {list:?}");
        }
    }
}
