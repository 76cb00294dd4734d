//! The client's share of the kernel data path: the loaded programs, their attachments to the
//! uplinks, and the policy assembled from every live connection. A connection that comes up
//! (or changes, or goes) updates its entry and the whole policy is swapped in atomically.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tracing::{info, warn};

use crate::datapath::{
    AppRule, ConnId, ConnPolicy, Datapath, DatapathError, KernelLog, KernelLogReader, Policy,
    TunAttachment, UplinkAttachment,
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

struct Inner {
    /// Forwards the kernel log to tracing while the data plane lives; None when it is off.
    _log: Option<Forwarder>,
    dp: Datapath,
    uplinks: Vec<UplinkAttachment>,
    tuns: BTreeMap<ConnId, TunAttachment>,
    conns: BTreeMap<ConnId, ConnEntry>,
    lockdown: bool,
}

/// Shared by the daemon and its connections.
#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<Mutex<Inner>>,
}

impl DataPlane {
    /// Loads the programs and attaches them to `uplinks` (in this thread's namespace). With
    /// the kernel log on, its records are forwarded to tracing by a task on the current tokio
    /// runtime, so this is called from within one (the daemon's).
    pub fn start(uplinks: &[String], log: KernelLog) -> Result<DataPlane, DatapathError> {
        let mut dp = Datapath::load_with(log)?;
        let log = match log {
            KernelLog::Off => None,
            KernelLog::Verdicts => dp.take_kernel_log().map(Forwarder::spawn),
        };
        let mut attached = Vec::new();
        for ifname in uplinks {
            let a = dp.attach_uplink(ifname)?;
            info!(uplink = %ifname, guard = a.guard_hook().name(), "classifier and guard attached");
            attached.push(a);
        }
        let inner = Inner {
            _log: log,
            dp,
            uplinks: attached,
            tuns: BTreeMap::new(),
            conns: BTreeMap::new(),
            lockdown: false,
        };
        let plane = DataPlane {
            inner: Arc::new(Mutex::new(inner)),
        };
        plane.apply()?;
        Ok(plane)
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

    /// Turns lock-down ("VPN only access") on or off.
    pub fn set_lockdown(&self, on: bool) -> Result<(), DatapathError> {
        self.lock().lockdown = on;
        self.apply()
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<crate::datapath::CounterTable, DatapathError> {
        self.lock().dp.counters()
    }

    /// The uplinks the classifier is attached to.
    pub fn uplinks(&self) -> Vec<String> {
        self.lock()
            .uplinks
            .iter()
            .map(|u| u.ifname().to_string())
            .collect()
    }
}

/// The task forwarding the kernel log; stops when dropped.
struct Forwarder(tokio::task::JoinHandle<()>);

impl Forwarder {
    fn spawn(reader: KernelLogReader) -> Forwarder {
        info!("kernel log on: every packet's verdict is logged at debug level");
        Forwarder(tokio::spawn(async move {
            let e = reader.forward().await;
            warn!(error = %e, "the kernel log cannot be read any more");
        }))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}
