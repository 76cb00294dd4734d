//! Location awareness in the daemon: which location connections to start or stop as the
//! machine moves ([`Decider`], sans-IO), and the facts it decides from ([`facts`]).
//!
//! ```text
//!  tunneld start, link or address change (debounced) ─▶ facts ─▶ Decider::decide
//!     rules hold, not running, not held by the user ─▶ Start
//!     rules stop holding, running                   ─▶ Stop (a disconnect; the cookie stays)
//!  a user disconnects a location connection ─▶ held until its rules' verdict changes
//! ```
//!
//! The verdict is acted on when it changes (and at start): a user who connects a connection
//! whose rules do not hold, or disconnects one whose rules hold, is left alone until the
//! machine moves.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use tunnel_config::{Facts, LocationRules};

/// What to do with a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Start(String),
    Stop(String),
}

/// The verdicts so far and the connections users hold.
#[derive(Debug, Default)]
pub(crate) struct Decider {
    verdicts: BTreeMap<String, bool>,
    held: BTreeSet<String>,
}

impl Decider {
    /// A user disconnected `name`: leave it until its verdict changes.
    pub(crate) fn hold(&mut self, name: &str) {
        self.held.insert(name.to_string());
    }

    /// The actions for `connections` (name, rules, whether it runs) at `facts`.
    pub(crate) fn decide<'a>(
        &mut self,
        facts: &Facts,
        connections: impl IntoIterator<Item = (&'a str, &'a LocationRules, bool)>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, rules, running) in connections {
            seen.insert(name.to_string());
            let holds = rules.holds(facts);
            let changed = self.verdicts.insert(name.to_string(), holds) != Some(holds);
            if changed {
                self.held.remove(name);
            } else {
                continue;
            }
            match (holds, running) {
                (true, false) if !self.held.contains(name) => {
                    actions.push(Action::Start(name.to_string()))
                }
                (false, true) => actions.push(Action::Stop(name.to_string())),
                _ => {}
            }
        }
        // Connections that are gone (deleted, no longer location) are forgotten.
        self.verdicts.retain(|n, _| seen.contains(n));
        self.held.retain(|n| seen.contains(n));
        actions
    }
}

/// The machine's interfaces and their addresses (loopback and TUN/TAP devices left out:
/// ours, and any other program's far end) and `dns`.
pub(crate) fn facts(dns: Vec<IpAddr>) -> Facts {
    let tun: BTreeSet<String> = crate::sys::linkwatch::current_links()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.is_tun() || l.loopback)
        .map(|l| l.name)
        .collect();
    let mut interfaces: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if tun.contains(&a.interface_name) {
                continue;
            }
            let ip = a.address.as_ref().and_then(|s| {
                s.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            });
            let entry = interfaces.entry(a.interface_name).or_default();
            entry.extend(ip);
        }
    }
    Facts {
        interfaces: interfaces.into_iter().collect(),
        dns,
    }
}

#[cfg(test)]
mod tests {
    use tunnel_config::{LocationRule, RuleMatch};

    use super::*;

    fn rules(text: &str) -> LocationRules {
        LocationRules {
            when: RuleMatch::All,
            rules: vec![text.parse::<LocationRule>().unwrap()],
        }
    }

    fn at(addr: &str) -> Facts {
        Facts {
            interfaces: vec![("eth0".into(), vec![addr.parse().unwrap()])],
            dns: vec![],
        }
    }

    #[test]
    fn start_at_home_stop_at_the_office_start_again_at_home() {
        let r = rules("no-address 10.10.0.0/16");
        let mut d = Decider::default();
        let home = at("192.168.1.20");
        let office = at("10.10.3.4");
        assert_eq!(
            d.decide(&home, [("corp", &r, false)]),
            [Action::Start("corp".into())]
        );
        // Nothing changed: nothing to do, whatever runs.
        assert!(d.decide(&home, [("corp", &r, true)]).is_empty());
        assert_eq!(
            d.decide(&office, [("corp", &r, true)]),
            [Action::Stop("corp".into())]
        );
        assert!(d.decide(&office, [("corp", &r, false)]).is_empty());
        assert_eq!(
            d.decide(&home, [("corp", &r, false)]),
            [Action::Start("corp".into())]
        );
    }

    #[test]
    fn a_users_disconnect_holds_until_the_machine_moves() {
        let r = rules("no-address 10.10.0.0/16");
        let mut d = Decider::default();
        let home = at("192.168.1.20");
        assert_eq!(d.decide(&home, [("corp", &r, false)]).len(), 1);
        d.hold("corp");
        assert!(d.decide(&home, [("corp", &r, false)]).is_empty());
        assert!(d.decide(&at("10.10.3.4"), [("corp", &r, false)]).is_empty());
        assert_eq!(
            d.decide(&home, [("corp", &r, false)]),
            [Action::Start("corp".into())]
        );
    }
}
