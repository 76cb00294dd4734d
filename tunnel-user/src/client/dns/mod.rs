//! DNS while a connection is up: the tunnel's servers, search domains and match domains
//! ([`DnsPlan`], from the gateway's configuration and the connection's own settings), applied
//! to the machine and taken away again.
//!
//! ```text
//!  connection configured (each login, reconnect, resume: each may bring a new TUN)
//!      ─▶ Dns::set(connection, Some(plan)) ─▶ forwarder (re)started with the plan's routes
//!                                           ─▶ /etc/resolv.conf pointed at it (original kept)
//!  connection torn down (disconnect, suspend, sign-out, tunneld's stop)
//!      ─▶ Dns::set(connection, None) ─▶ another connection's plan, or: forwarder stopped,
//!                                       /etc/resolv.conf restored
//!  tunneld starts ─▶ a kept original left by a tunneld that died is restored first
//! ```
//!
//! One plan is in force at a time: the latest connection's. Two modes, chosen each time a
//! plan is applied (docs/client.md, "DNS"): where systemd-resolved answers on the system bus,
//! the plan becomes the TUN device's per-link settings ([`resolved`]); elsewhere the
//! split-DNS forwarder on [`FORWARDER`] with `/etc/resolv.conf` pointed at it.

pub(crate) mod forwarder;
pub(crate) mod resolv_conf;
pub(crate) mod resolved;
pub(crate) mod uplink;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::Arc,
};

use hickory_proto::rr::Name;
use serde::Serialize;
use tracing::{debug, info, warn};

use forwarder::{Forwarder, Routes};
use resolv_conf::ResolvConf;
use resolved::Resolved;

/// Where the forwarder listens.
pub(crate) const FORWARDER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 77, 53)), 53);

/// What a connection asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsPlan {
    /// The tunnel's servers: the connection's DNS Resolver IPs, else the gateway's.
    pub servers: Vec<IpAddr>,
    /// Search domains: the connection's DNS Search Domain List, else the gateway's.
    pub search: Vec<String>,
    /// Names under these go to the tunnel's servers, every other name to the machine's own
    /// (the connection's Match Domain List); empty: every name to the tunnel's.
    pub routing: Vec<String>,
    /// The TUN device (ifindex) the settings go on in resolved's mode.
    pub link: Option<u32>,
}

impl DnsPlan {
    /// From the gateway's `servers` and `search` domains and the connection's own lists (a
    /// list the connection sets replaces the gateway's). None: no server to send to.
    pub fn new(
        gateway_servers: &[IpAddr],
        gateway_search: &[String],
        own_servers: &[IpAddr],
        own_search: &[String],
        match_domains: &[String],
    ) -> Option<DnsPlan> {
        let servers = if own_servers.is_empty() {
            gateway_servers.to_vec()
        } else {
            own_servers.to_vec()
        };
        let search = if own_search.is_empty() {
            gateway_search.to_vec()
        } else {
            own_search.to_vec()
        };
        (!servers.is_empty()).then(|| DnsPlan {
            servers,
            search,
            routing: match_domains.to_vec(),
            link: None,
        })
    }

    /// The plan for the TUN device `ifindex`.
    pub fn on_link(mut self, ifindex: Option<u32>) -> DnsPlan {
        self.link = ifindex;
        self
    }
}

/// What is applied now, for the status.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub connection: String,
    /// "forwarder" or "resolved".
    pub mode: &'static str,
    /// The forwarder's address; empty in resolved's mode.
    pub listen: String,
    pub plan: DnsPlan,
    /// The servers other names go to.
    pub original: Vec<IpAddr>,
    /// What the forwarder did with the queries so far (none in resolved's mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queries: Option<Arc<forwarder::Counts>>,
}

/// How the plan in force is applied.
enum Mode {
    /// Held for its `Drop`, which stops it.
    Forwarder { _running: Forwarder },
    /// On this link of resolved's.
    Resolved(Resolved, u32),
}

struct State {
    /// Plans by connection, in the order they were set; the last is in force.
    plans: Vec<(String, DnsPlan)>,
    mode: Option<Mode>,
    applied: Option<Applied>,
}

/// The machine's DNS while connections are up. Shared by the daemon's connections.
#[derive(Clone)]
pub struct Dns {
    resolv: ResolvConf,
    listen: SocketAddr,
    state: Arc<tokio::sync::Mutex<State>>,
}

impl Dns {
    /// Manages `resolv_conf` (normally `/etc/resolv.conf`), keeping its original in
    /// `state_dir`; restores an original a tunneld that died left there.
    pub fn new(resolv_conf: PathBuf, state_dir: &std::path::Path) -> Dns {
        let resolv = ResolvConf {
            path: resolv_conf,
            saved: state_dir.join("resolv.conf.saved"),
        };
        match resolv.restore() {
            Ok(true) => {
                info!(file = %resolv.path.display(), "restored the resolver configuration a stopped tunneld had changed")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(file = %resolv.path.display(), error = %e, "restoring the resolver configuration")
            }
        }
        Dns {
            resolv,
            listen: FORWARDER,
            state: Arc::new(tokio::sync::Mutex::new(State {
                plans: Vec::new(),
                mode: None,
                applied: None,
            })),
        }
    }

    /// The addresses of `host`, looked up through the machine's own servers with sockets
    /// that bypass the tunnel ([`uplink`]); without any server, the system's resolver.
    pub async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let servers = self.machine_servers().await;
        if servers.is_empty() && host.parse::<IpAddr>().is_err() {
            let found = tokio::net::lookup_host((host, 0)).await?;
            return Ok(found.map(|a| a.ip()).collect());
        }
        uplink::lookup(host, &servers).await
    }

    /// The machine's own DNS servers: in resolved's mode those it knows for the other links;
    /// otherwise those of the original resolver configuration (kept aside while the
    /// forwarder is in place).
    pub async fn machine_servers(&self) -> Vec<IpAddr> {
        let resolved = match &self.state.lock().await.mode {
            Some(Mode::Resolved(r, link)) => Some((r.clone(), *link)),
            _ => None,
        };
        if let Some((r, link)) = resolved {
            return r.servers_except(Some(link)).await;
        }
        self.resolv
            .original()
            .map(|o| o.nameservers())
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| *ip != self.listen.ip())
            .collect()
    }

    /// What is applied (None also while a change is being applied).
    pub fn applied(&self) -> Option<Applied> {
        self.state.try_lock().ok().and_then(|s| s.applied.clone())
    }

    /// Sets (Some) or withdraws (None) `connection`'s plan and applies the result. Called on
    /// the tokio runtime.
    pub async fn set(&self, connection: &str, plan: Option<DnsPlan>) {
        let mut s = self.state.lock().await;
        s.plans.retain(|(c, _)| c != connection);
        if let Some(p) = plan {
            s.plans.push((connection.to_string(), p));
        }
        match s.plans.last().cloned() {
            Some((connection, plan)) => {
                if let Err(e) = self.apply(&mut s, &connection, &plan).await {
                    warn!(connection, error = %e, "DNS through the tunnel could not be applied");
                    self.remove(&mut s).await;
                }
            }
            None => self.remove(&mut s).await,
        }
    }

    async fn apply(&self, s: &mut State, connection: &str, plan: &DnsPlan) -> std::io::Result<()> {
        let same = s
            .applied
            .as_ref()
            .is_some_and(|a| a.connection == connection && a.plan == *plan);
        if same {
            return Ok(());
        }
        if let (Some(link), Some(resolved)) = (plan.link, Resolved::find().await) {
            self.remove(s).await;
            resolved
                .apply(link, &plan.servers, &plan.search, &plan.routing)
                .await
                .map_err(std::io::Error::other)?;
            info!(connection, link, servers = ?plan.servers, search = ?plan.search, match_domains = ?plan.routing, "DNS through the tunnel, on resolved's link");
            let original = resolved.servers_except(Some(link)).await;
            s.mode = Some(Mode::Resolved(resolved, link));
            s.applied = Some(Applied {
                connection: connection.to_string(),
                mode: "resolved",
                listen: String::new(),
                plan: plan.clone(),
                original,
                queries: None,
            });
            return Ok(());
        }
        let original = self.resolv.original()?;
        let routes = Routes {
            tunnel: plan
                .servers
                .iter()
                .map(|ip| SocketAddr::new(*ip, 53))
                .collect(),
            original: original
                .nameservers()
                .into_iter()
                .filter(|ip| *ip != self.listen.ip())
                .map(|ip| SocketAddr::new(ip, 53))
                .collect(),
            routing: plan
                .routing
                .iter()
                .filter_map(|d| Name::from_str(&format!("{}.", d.trim_end_matches('.'))).ok())
                .collect(),
        };
        let original_servers = routes.original.iter().map(|a| a.ip()).collect();
        // The old forwarder (or resolved's link) lets go before the new one is set up.
        if let Some(Mode::Resolved(r, link)) = s.mode.take()
            && let Err(e) = r.revert(link).await
        {
            debug!(link, error = %e, "taking the tunnel's DNS back from resolved");
        }
        let forwarder = Forwarder::start(self.listen, routes).await?;
        let mut search = plan.search.clone();
        search.extend(original.search());
        search.dedup();
        let mut text = format!(
            "# Written by tunneld for the connection '{connection}' while it is up; the\n\
             # original is kept in {} and comes back when it goes.\nnameserver {}\n",
            self.resolv.saved.display(),
            self.listen.ip()
        );
        if !search.is_empty() {
            text.push_str(&format!("search {}\n", search.join(" ")));
        }
        self.resolv.point(&text)?;
        info!(connection, servers = ?plan.servers, search = ?plan.search, match_domains = ?plan.routing, "DNS through the tunnel");
        s.applied = Some(Applied {
            connection: connection.to_string(),
            mode: "forwarder",
            listen: self.listen.to_string(),
            plan: plan.clone(),
            original: original_servers,
            queries: Some(forwarder.counts.clone()),
        });
        s.mode = Some(Mode::Forwarder {
            _running: forwarder,
        });
        Ok(())
    }

    async fn remove(&self, s: &mut State) {
        s.applied = None;
        if let Some(Mode::Resolved(r, link)) = s.mode.take()
            && let Err(e) = r.revert(link).await
        {
            // A TUN device that is already gone took its settings with it.
            debug!(link, error = %e, "reverting the tunnel's link in resolved");
        }
        match self.resolv.restore() {
            Ok(true) => {
                info!(file = %self.resolv.path.display(), "resolver configuration restored")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(file = %self.resolv.path.display(), error = %e, "restoring the resolver configuration")
            }
        }
    }
}
