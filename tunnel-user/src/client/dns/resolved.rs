//! systemd-resolved over D-Bus (`org.freedesktop.resolve1`): the tunnel's DNS as per-link
//! settings of its TUN device, where resolved runs.
//!
//! ```text
//!  apply  ─▶ SetLinkDNS(tun, servers)
//!            SetLinkDomains(tun, search domains, ~match domains; ~. when every name goes here)
//!            SetLinkDefaultRoute(tun, no match domains)   SetLinkLLMNR/MulticastDNS(tun, no)
//!            FlushCaches
//!  revert ─▶ RevertLink(tun)   (a device that is gone takes its settings with it)
//! ```

use std::net::IpAddr;

use zbus::{Connection, zvariant::OwnedValue};

const NAME: &str = "org.freedesktop.resolve1";
const PATH: &str = "/org/freedesktop/resolve1";
const MANAGER: &str = "org.freedesktop.resolve1.Manager";
/// How long the bus and resolved have to answer one call.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A resolve1 call that failed, by name.
#[derive(Debug, thiserror::Error)]
#[error("systemd-resolved {call}: {source}")]
pub struct ResolvedError {
    call: &'static str,
    #[source]
    source: zbus::Error,
}

/// A connection to systemd-resolved on the system bus.
#[derive(Clone)]
pub(crate) struct Resolved {
    bus: Connection,
}

fn family(ip: &IpAddr) -> (i32, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
    }
}

impl Resolved {
    /// systemd-resolved, if it answers on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the
    /// standard socket).
    pub(crate) async fn find() -> Option<Resolved> {
        // A bus that does not answer is no resolved: the forwarder serves instead.
        tokio::time::timeout(ASK_TIMEOUT, Self::ask_bus())
            .await
            .ok()
            .flatten()
    }

    async fn ask_bus() -> Option<Resolved> {
        let bus = Connection::system().await.ok()?;
        let reply = bus
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "NameHasOwner",
                &(NAME,),
            )
            .await
            .ok()?;
        let owned: bool = reply.body().deserialize().ok()?;
        owned.then_some(Resolved { bus })
    }

    async fn call<B>(&self, call: &'static str, body: &B) -> Result<(), ResolvedError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let asked = self
            .bus
            .call_method(Some(NAME), PATH, Some(MANAGER), call, body);
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(r) => r.map(drop).map_err(|source| ResolvedError { call, source }),
            Err(_) => Err(ResolvedError {
                call,
                source: zbus::Error::InputOutput(std::sync::Arc::new(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                ))),
            }),
        }
    }

    /// Gives the link `ifindex` the tunnel's DNS.
    pub(crate) async fn apply(
        &self,
        ifindex: u32,
        servers: &[IpAddr],
        search: &[String],
        routing: &[String],
    ) -> Result<(), ResolvedError> {
        let link = ifindex as i32;
        let servers: Vec<(i32, Vec<u8>)> = servers.iter().map(family).collect();
        self.call("SetLinkDNS", &(link, servers)).await?;
        let mut domains: Vec<(String, bool)> = search.iter().map(|d| (d.clone(), false)).collect();
        domains.extend(routing.iter().map(|d| (d.clone(), true)));
        if routing.is_empty() {
            // Every name: the root as a routing domain.
            domains.push((".".to_string(), true));
        }
        self.call("SetLinkDomains", &(link, domains)).await?;
        self.call("SetLinkDefaultRoute", &(link, routing.is_empty()))
            .await?;
        self.call("SetLinkLLMNR", &(link, "no")).await?;
        self.call("SetLinkMulticastDNS", &(link, "no")).await?;
        self.call("FlushCaches", &()).await
    }

    /// Takes the link's settings back.
    pub(crate) async fn revert(&self, ifindex: u32) -> Result<(), ResolvedError> {
        self.call("RevertLink", &(ifindex as i32,)).await
    }

    /// The DNS servers resolved knows, but those of the link `except` (the tunnel's).
    pub(crate) async fn servers_except(&self, except: Option<u32>) -> Vec<IpAddr> {
        let Ok(reply) = self
            .bus
            .call_method(
                Some(NAME),
                PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(MANAGER, "DNS"),
            )
            .await
        else {
            return Vec::new();
        };
        let Ok(value) = reply.body().deserialize::<OwnedValue>() else {
            return Vec::new();
        };
        let Ok(list) = Vec::<(i32, i32, Vec<u8>)>::try_from(value) else {
            return Vec::new();
        };
        list.into_iter()
            .filter(|(link, _, _)| Some(*link as u32) != except)
            .filter_map(|(_, fam, bytes)| match (fam, bytes.len()) {
                (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
                (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
                _ => None,
            })
            .collect()
    }
}
