//! The client's share of the kernel data path: the loaded programs, their attachments to the
//! uplinks as links come and go, and the policy assembled from every live connection. A
//! connection that comes up (or changes, or goes) updates its entry and the whole policy is
//! swapped in atomically.
//!
//! # Uplinks
//!
//! ```text
//!  start ─▶ subscribe (LinkWatcher) ─▶ current_links ─▶ on_link(each)
//!  RTM_NEWLINK ─▶ on_link:  wanted, not attached ─▶ attach classifier + guard, open counter row
//!                           attached, not wanted any more (renamed) ─▶ detach
//!  RTM_DELLINK ─▶ on_gone:  attached ─▶ detach, close counter row
//!  lost notifications ─▶ reconcile with current_links (gone ones detached, new ones attached)
//! ```
//!
//! A link is wanted unless it is loopback or a TUN/TAP device (ours, and any other program's
//! far end), and, when the administrator named the uplinks (`tunneld --uplink`), only if it has
//! one of those names, whenever it appears. A link is attached on its first `RTM_NEWLINK`,
//! which the kernel sends when the device is registered, before it can be brought up: a link
//! that is created down and brought up later (a USB NIC, a veth a manager configures) is
//! guarded from its first packet. A link created up in one request (`ip link add ... up`)
//! can carry packets between its creation and the attach, which takes a few milliseconds
//! after the notification (docs/client.md, "Links that come and go", has the figure). The
//! kernel removes a deleted device's programs with it; detaching then only closes our
//! handles and the counter row.
//!
//! Events are idempotent: a link reported twice (by the subscription and by the first
//! listing) is attached once. A link that cannot be attached is reported once, not at every
//! change of it; an attach the kernel refused is tried again at the link's next change (one
//! of a type the classifier cannot parse is not).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

use crate::{
    datapath::{
        AppRule, ConnId, ConnPolicy, Datapath, DatapathError, KernelLog, KernelLogReader, Policy,
        TunAttachment, UplinkAttachment, UplinkCounterTable,
    },
    sys::linkwatch::{Link, LinkEvent, LinkWatcher, WatchError, current_links},
};

/// What a connection contributes to the policy.
#[derive(Clone, Debug)]
pub struct ConnEntry {
    pub conn: ConnPolicy,
    /// The gateway's address (always bypasses, even under lock-down).
    pub gateway: IpAddr,
    /// Per-app: the cgroup whose sockets use this connection; None for device-level.
    pub app_cgroup: Option<u64>,
}

/// Which links are uplinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uplinks {
    /// Every link but loopback and TUN/TAP devices.
    Every,
    /// Only links with these names (and never loopback or a TUN/TAP device).
    Named(Vec<String>),
}

impl Uplinks {
    /// Whether `link` gets the classifier and the guard.
    pub fn wants(&self, link: &Link) -> bool {
        if link.loopback || link.is_tun() {
            return false;
        }
        match self {
            Uplinks::Every => true,
            Uplinks::Named(names) => names.contains(&link.name),
        }
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("watching the links: {0}")]
    Links(#[from] WatchError),
}

struct Inner {
    /// Forwards the kernel log to tracing while the data plane lives; None when it is off.
    _log: Option<Task>,
    /// Follows the links while the data plane lives.
    _watch: Option<Task>,
    dp: Datapath,
    filter: Uplinks,
    /// Attached uplinks by ifindex.
    uplinks: BTreeMap<u32, UplinkAttachment>,
    /// Links that are wanted but could not be attached (reported once): true where the
    /// classifier cannot parse the link's type, so no later change of it can help; the
    /// others are tried again at each change the kernel reports.
    refused: BTreeMap<u32, bool>,
    tuns: BTreeMap<ConnId, TunAttachment>,
    conns: BTreeMap<ConnId, ConnEntry>,
    lockdown: bool,
    /// The administrator's lock-down exceptions.
    exceptions: Vec<ipnet::IpNet>,
}

impl Inner {
    /// Brings one link's attachment in line with what is wanted. Errors are the caller's to
    /// report: at start they stop the daemon, later they are logged.
    fn on_link(&mut self, link: &Link) -> Result<(), DatapathError> {
        let wanted = self.filter.wants(link);
        match self.uplinks.get(&link.ifindex) {
            Some(a) if wanted && a.ifname() == link.name => Ok(()),
            Some(_) => {
                // Renamed: out of the administrator's list, or in it under its new name
                // (re-attached so its attachment and counters carry the name shown).
                self.detach(link.ifindex, "renamed");
                if wanted { self.attach(link) } else { Ok(()) }
            }
            None if wanted && self.refused.get(&link.ifindex) != Some(&true) => self.attach(link),
            None => Ok(()),
        }
    }

    fn attach(&mut self, link: &Link) -> Result<(), DatapathError> {
        let started = Instant::now();
        match self.dp.attach_uplink(&link.name) {
            Ok(a) => {
                info!(
                    uplink = %link.name,
                    ifindex = link.ifindex,
                    up = link.up,
                    guard = a.guard_hook().name(),
                    micros = started.elapsed().as_micros() as u64,
                    "classifier and guard attached"
                );
                self.uplinks.insert(link.ifindex, a);
                self.refused.remove(&link.ifindex);
                Ok(())
            }
            Err(e) => {
                let permanent = matches!(e, DatapathError::UnsupportedLink { .. });
                self.refused.insert(link.ifindex, permanent);
                Err(e)
            }
        }
    }

    fn detach(&mut self, ifindex: u32, why: &str) {
        let Some(a) = self.uplinks.remove(&ifindex) else {
            return;
        };
        let name = a.ifname().to_string();
        match self.dp.detach_uplink(a) {
            Ok(()) => info!(uplink = %name, ifindex, "{why}: classifier and guard let go"),
            Err(e) => warn!(uplink = %name, ifindex, error = %e, "{why}: its counters stay"),
        }
    }

    fn on_gone(&mut self, ifindex: u32) {
        self.refused.remove(&ifindex);
        self.detach(ifindex, "gone");
    }

    /// Handles a link event after start: failures are logged, once per link.
    fn on_event(&mut self, event: &LinkEvent) {
        match event {
            LinkEvent::Present(link) => {
                let reported = self.refused.contains_key(&link.ifindex);
                if let Err(e) = self.on_link(link)
                    && !reported
                {
                    report_refused(link, &e);
                }
            }
            LinkEvent::Gone { ifindex, .. } => self.on_gone(*ifindex),
            LinkEvent::AddressesChanged { ifindex } => {
                debug!(ifindex, "addresses changed");
            }
        }
    }

    /// Brings every attachment in line with the links there are now.
    fn reconcile(&mut self, links: &[Link]) {
        let present: BTreeSet<u32> = links.iter().map(|l| l.ifindex).collect();
        let gone: Vec<u32> = self
            .uplinks
            .keys()
            .chain(self.refused.keys())
            .filter(|i| !present.contains(i))
            .copied()
            .collect();
        for ifindex in gone {
            self.on_gone(ifindex);
        }
        for link in links {
            self.on_event(&LinkEvent::Present(link.clone()));
        }
    }
}

/// Logs a link that is wanted but could not be attached. One that went away meanwhile is
/// no news (its `RTM_DELLINK` follows); one whose type the classifier cannot parse is not
/// an uplink it can guard; anything else leaves a link unguarded, which is an error.
fn report_refused(link: &Link, e: &DatapathError) {
    if crate::datapath::ifindex(&link.name).ok() != Some(link.ifindex) {
        debug!(uplink = %link.name, ifindex = link.ifindex, "gone before it could be attached");
    } else if matches!(e, DatapathError::UnsupportedLink { .. }) {
        info!(uplink = %link.name, ifindex = link.ifindex, "not attached: {e}");
    } else {
        error!(uplink = %link.name, ifindex = link.ifindex, error = %e, "cannot attach: this link is not classified or guarded");
    }
}

/// Shared by the daemon and its connections.
#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<Mutex<Inner>>,
}

impl DataPlane {
    /// Loads the programs, puts the first policy (no connection; lock-down as `lockdown`
    /// says) in force, attaches the programs to the uplinks there are (in this thread's
    /// namespace) and follows the links from then on. With `pins`, the uplinks' links are
    /// pinned under that directory, and those a previous tunneld left there are taken over:
    /// their programs are replaced in place, so an uplink it guarded is never without a
    /// program ([`crate::datapath`]'s `pins`). With the kernel log on, its records are
    /// forwarded to tracing. Both run as tasks on the current tokio runtime, so this is
    /// called from within one (the daemon's).
    ///
    /// A named uplink that is there but cannot be attached stops the start; one that is not
    /// there yet is attached when it appears. With [`Uplinks::Every`], links of a type the
    /// classifier cannot parse are passed over.
    pub fn start(
        filter: Uplinks,
        log: KernelLog,
        lockdown: bool,
        pins: Option<&Path>,
    ) -> Result<DataPlane, StartError> {
        let mut dp = Datapath::load_with(log)?;
        let log = match log {
            KernelLog::Off => None,
            KernelLog::Verdicts => dp.take_kernel_log().map(Task::forward_log),
        };
        if let Some(root) = pins {
            match dp.keep_uplinks_in(root) {
                Ok(()) => info!(
                    pins = %dp.pin_dir().unwrap_or(root).display(),
                    "the uplinks' programs are pinned: the policy in force outlives tunneld"
                ),
                Err(e) if lockdown => {
                    error!(error = %e, "lock-down holds only while tunneld runs")
                }
                Err(e) => warn!(error = %e, "the uplinks' programs go with tunneld"),
            }
        }
        // Subscribed before listing: a link that appears in between is seen twice, not
        // missed.
        let watcher = LinkWatcher::open()?;
        let links = current_links()?;
        let mut inner = Inner {
            _log: log,
            _watch: None,
            dp,
            filter: filter.clone(),
            uplinks: BTreeMap::new(),
            refused: BTreeMap::new(),
            tuns: BTreeMap::new(),
            conns: BTreeMap::new(),
            lockdown,
            exceptions: Vec::new(),
        };
        // In force before any program is attached or takes over a pinned link.
        let policy = Self::policy(&inner);
        inner.dp.apply(&policy)?;
        for link in &links {
            match inner.on_link(link) {
                Ok(()) => {}
                Err(e @ DatapathError::UnsupportedLink { .. }) if filter == Uplinks::Every => {
                    info!(uplink = %link.name, "not attached: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Pins of links that are gone or no longer uplinks go; those of an uplink that could
        // not be attached now stay: its old programs still guard it.
        inner.dp.drop_pins_except(
            &links
                .iter()
                .filter(|l| filter.wants(l))
                .map(|l| l.ifindex)
                .collect(),
        );
        if let Uplinks::Named(names) = &filter {
            for name in names
                .iter()
                .filter(|n| !links.iter().any(|l| &l.name == *n))
            {
                warn!(uplink = %name, "no such link yet: attached when it appears");
            }
        }
        let plane = DataPlane {
            inner: Arc::new(Mutex::new(inner)),
        };
        let task = Task::watch(watcher, Arc::downgrade(&plane.inner));
        plane.lock()._watch = Some(task);
        Ok(plane)
    }

    /// For a stop on purpose: with lock-down off the uplinks' pins are removed, so their
    /// programs go with the process; with lock-down on they stay, and so does lock-down.
    pub fn stop(&self) {
        let inner = self.lock();
        match inner.dp.pin_dir() {
            Some(dir) if inner.lockdown => {
                info!(pins = %dir.display(), "lock-down stays in force after tunneld: the uplinks' programs stay pinned");
            }
            Some(_) => inner.dp.drop_all_pins(),
            None => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy from the current entries.
    fn policy(inner: &Inner) -> Policy {
        let mut gateways: Vec<IpAddr> = inner.conns.values().map(|e| e.gateway).collect();
        gateways.sort();
        gateways.dedup();
        Policy {
            lockdown: inner.lockdown,
            gateways,
            exceptions: inner.exceptions.clone(),
            // The first device-level connection carries traffic without a per-app rule.
            device_conn: inner
                .conns
                .iter()
                .find(|(_, e)| e.app_cgroup.is_none())
                .map(|(id, _)| *id),
            apps: inner
                .conns
                .iter()
                .filter_map(|(id, e)| {
                    e.app_cgroup.map(|cgroup_id| AppRule {
                        cgroup_id,
                        conn: *id,
                    })
                })
                .collect(),
            conns: inner.conns.values().map(|e| e.conn.clone()).collect(),
        }
    }

    fn apply(&self) -> Result<(), DatapathError> {
        let mut inner = self.lock();
        let policy = Self::policy(&inner);
        inner.dp.apply(&policy)
    }

    /// Attaches the TUN programs to a connection's device and installs its policy entry.
    pub fn connect(
        &self,
        id: ConnId,
        tun_ifname: &str,
        entry: ConnEntry,
    ) -> Result<(), DatapathError> {
        {
            let mut inner = self.lock();
            if !inner.tuns.contains_key(&id) {
                let attachment = inner.dp.attach_tun(tun_ifname)?;
                inner.tuns.insert(id, attachment);
            }
            inner.conns.insert(id, entry);
        }
        let result = self.apply();
        if let Err(e) = &result {
            warn!(error = %e, "policy refused; the connection's entry is withdrawn");
            let mut inner = self.lock();
            inner.conns.remove(&id);
            inner.tuns.remove(&id);
        }
        result
    }

    /// Withdraws a connection's entry and detaches its TUN programs.
    pub fn disconnect(&self, id: ConnId) -> Result<(), DatapathError> {
        {
            let mut inner = self.lock();
            inner.conns.remove(&id);
        }
        let result = self.apply();
        self.lock().tuns.remove(&id);
        result
    }

    /// Opens (for `window`) or closes (None) the captive portal exception for the sockets of
    /// the cgroup `cgroup_id` (`tunnel portal`): to ports 53, 80 and 443 they leave on the
    /// uplink whatever the policy says, lock-down included, until the kernel's monotonic
    /// clock passes the deadline.
    pub fn set_portal(
        &self,
        exception: Option<(u64, std::time::Duration)>,
    ) -> Result<(), DatapathError> {
        let deadline = exception.map(|(cgroup, window)| {
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
                .unwrap_or(0);
            (cgroup, now.saturating_add(window.as_nanos() as u64))
        });
        self.lock().dp.set_portal_exception(deadline)
    }

    /// Turns lock-down ("VPN only access") on or off, with the administrator's exceptions
    /// (addresses that bypass like exclude routes, connected or not).
    pub fn set_lockdown(
        &self,
        on: bool,
        exceptions: Vec<ipnet::IpNet>,
    ) -> Result<(), DatapathError> {
        {
            let mut inner = self.lock();
            inner.lockdown = on;
            inner.exceptions = exceptions;
        }
        self.apply()
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<crate::datapath::CounterTable, DatapathError> {
        self.lock().dp.counters()
    }

    /// Each attached uplink's counters, summed over CPUs.
    pub fn uplink_counters(&self) -> Result<UplinkCounterTable, DatapathError> {
        let inner = self.lock();
        let rows = inner
            .dp
            .uplink_counters()?
            .into_iter()
            .map(|(ifindex, row)| {
                // A row without an attachment would be a leak; shown as such.
                let name = inner
                    .uplinks
                    .get(&ifindex)
                    .map_or_else(|| "?".to_string(), |a| a.ifname().to_string());
                (name, ifindex, row)
            })
            .collect();
        Ok(UplinkCounterTable { rows })
    }

    /// The uplinks the classifier is attached to.
    pub fn uplinks(&self) -> Vec<String> {
        self.lock()
            .uplinks
            .values()
            .map(|u| u.ifname().to_string())
            .collect()
    }
}

/// How long to wait before subscribing again after the subscription failed.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// A task of the data plane's; stops when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Task {
    /// Follows the links for the data plane while it lives. It holds the plane weakly: the
    /// plane owns the task, and the task ends with it.
    fn watch(mut watcher: LinkWatcher, plane: Weak<Mutex<Inner>>) -> Task {
        let with = move |f: &mut dyn FnMut(&mut Inner)| -> bool {
            let Some(inner) = plane.upgrade() else {
                return false;
            };
            f(&mut inner.lock().unwrap_or_else(|e| e.into_inner()));
            true
        };
        Task(tokio::spawn(async move {
            loop {
                let events = match watcher.next().await {
                    Ok(events) => events,
                    Err(e) => {
                        warn!(error = %e, "following the links: reading them all again");
                        if !matches!(e, WatchError::Overrun) {
                            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                            match LinkWatcher::open() {
                                Ok(w) => watcher = w,
                                Err(e) => {
                                    warn!(error = %e, "subscribing to link changes");
                                    continue;
                                }
                            }
                        }
                        match current_links() {
                            Ok(links) => {
                                if !with(&mut |inner| inner.reconcile(&links)) {
                                    return;
                                }
                            }
                            Err(e) => warn!(error = %e, "listing the links"),
                        }
                        continue;
                    }
                };
                if !with(&mut |inner| events.iter().for_each(|e| inner.on_event(e))) {
                    return;
                }
            }
        }))
    }
}

impl Task {
    /// Forwards the kernel log to tracing.
    fn forward_log(reader: KernelLogReader) -> Task {
        info!("kernel log on: every packet's verdict is logged at debug level");
        Task(tokio::spawn(async move {
            let e = reader.forward().await;
            warn!(error = %e, "the kernel log cannot be read any more");
        }))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, loopback: bool, kind: Option<&str>) -> Link {
        Link {
            ifindex: 7,
            name: name.into(),
            up: false,
            loopback,
            kind: kind.map(Into::into),
            link_type: 1,
        }
    }

    #[test]
    fn every_link_but_loopback_and_tun_devices_is_an_uplink() {
        let every = Uplinks::Every;
        assert!(every.wants(&link("eth0", false, None)));
        assert!(every.wants(&link("usb0", false, None)));
        assert!(every.wants(&link("veth1", false, Some("veth"))));
        assert!(every.wants(&link("wg0", false, Some("wireguard"))));
        assert!(!every.wants(&link("lo", true, None)));
        assert!(!every.wants(&link("tun0", false, Some("tun"))));
        // By kind, not by name: a TUN device of any name, and no other device for its name.
        assert!(!every.wants(&link("corpvpn", false, Some("tun"))));
        assert!(every.wants(&link("tunnelbr", false, Some("bridge"))));
    }

    #[test]
    fn named_uplinks_are_the_only_ones_and_never_loopback_or_tun() {
        let named = Uplinks::Named(vec!["usb0".into(), "tun0".into(), "lo".into()]);
        assert!(named.wants(&link("usb0", false, None)));
        assert!(!named.wants(&link("eth0", false, None)));
        assert!(!named.wants(&link("tun0", false, Some("tun"))));
        assert!(!named.wants(&link("lo", true, None)));
    }
}
