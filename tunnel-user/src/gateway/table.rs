//! The session table: live sessions indexed by assigned address (packets from the TUN device)
//! and by inbound SPI (ESP datagrams), plus the sessions that lost their connection and may
//! still be resumed with their DSID cookie.
//!
//! A live [`Session`] owns its protocol state machine behind a mutex: the session's TLS task,
//! and the packet threads (TUN and ESP side) all drive it, each for a moment at a time.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use tokio::sync::Notify;
use tunnel_proto::Server;

use super::Lease;

/// One connected client.
pub struct Session {
    /// Short id for logs.
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub realm: String,
    pub cookie: String,
    pub lease: Lease,
    /// The protocol state machine.
    pub proto: Mutex<Server>,
    /// Where the client's ESP packets come from (learned from authenticated datagrams).
    pub esp_peer: Mutex<Option<SocketAddr>>,
    /// Wakes the session's TLS task when the data path queued TLS bytes.
    pub wake: Notify,
    /// Set when another connection resumed this session: the old task ends quietly.
    pub superseded: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Whether `src` is an address this session may send from.
    pub fn owns(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => a == self.lease.ipv4,
            IpAddr::V6(a) => Some(a) == self.lease.ipv6,
        }
    }
}

/// A session without a connection, resumable until `expires`.
#[derive(Clone, Debug)]
pub struct Resumable {
    pub user: String,
    pub realm: String,
    pub lease: Lease,
    pub expires: Instant,
}

/// See the module docs.
#[derive(Default)]
pub struct SessionTable {
    by_addr: RwLock<HashMap<IpAddr, Arc<Session>>>,
    by_spi: RwLock<HashMap<u32, Arc<Session>>>,
    by_cookie: Mutex<HashMap<String, Arc<Session>>>,
    resumable: Mutex<HashMap<String, Resumable>>,
}

fn lease_addrs(lease: &Lease) -> impl Iterator<Item = IpAddr> {
    std::iter::once(IpAddr::V4(lease.ipv4)).chain(lease.ipv6.map(IpAddr::V6))
}

impl SessionTable {
    /// Makes a session reachable by its addresses and cookie.
    pub fn insert(&self, s: &Arc<Session>) {
        if let Ok(mut m) = self.by_addr.write() {
            for a in lease_addrs(&s.lease) {
                m.insert(a, s.clone());
            }
        }
        if let Ok(mut m) = self.by_cookie.lock() {
            m.insert(s.cookie.clone(), s.clone());
        }
    }

    /// Makes a session reachable by an inbound SPI (called again after each rekey; older SPIs
    /// keep pointing at the session until it is removed).
    pub fn index_spi(&self, spi: u32, s: &Arc<Session>) {
        if let Ok(mut m) = self.by_spi.write() {
            m.insert(spi, s.clone());
        }
    }

    /// Forgets a live session (all its indexes). Only entries that still point at this very
    /// session are removed, so a resumed successor keeps its own.
    pub fn remove(&self, s: &Arc<Session>) {
        if let Ok(mut m) = self.by_addr.write() {
            m.retain(|_, v| !Arc::ptr_eq(v, s));
        }
        if let Ok(mut m) = self.by_spi.write() {
            m.retain(|_, v| !Arc::ptr_eq(v, s));
        }
        if let Ok(mut m) = self.by_cookie.lock()
            && m.get(&s.cookie).is_some_and(|v| Arc::ptr_eq(v, s))
        {
            m.remove(&s.cookie);
        }
    }

    pub fn by_addr(&self, a: IpAddr) -> Option<Arc<Session>> {
        self.by_addr.read().ok()?.get(&a).cloned()
    }

    pub fn by_spi(&self, spi: u32) -> Option<Arc<Session>> {
        self.by_spi.read().ok()?.get(&spi).cloned()
    }

    /// The live session holding `cookie`, if any.
    pub fn live_by_cookie(&self, cookie: &str) -> Option<Arc<Session>> {
        self.by_cookie.lock().ok()?.get(cookie).cloned()
    }

    /// Keeps a disconnected session resumable.
    pub fn park(&self, cookie: String, r: Resumable) {
        if let Ok(mut m) = self.resumable.lock() {
            m.insert(cookie, r);
        }
    }

    /// Takes a parked session for resumption, if its cookie is known and not expired.
    pub fn unpark(&self, cookie: &str, now: Instant) -> Option<Resumable> {
        let mut m = self.resumable.lock().ok()?;
        let r = m.remove(cookie)?;
        (r.expires > now).then_some(r)
    }

    /// Removes parked sessions that expired; returns their leases for release.
    pub fn expire_parked(&self, now: Instant) -> Vec<(String, Resumable)> {
        let Ok(mut m) = self.resumable.lock() else {
            return Vec::new();
        };
        let gone: Vec<String> = m
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(c, _)| c.clone())
            .collect();
        gone.into_iter()
            .filter_map(|c| m.remove(&c).map(|r| (c, r)))
            .collect()
    }

    /// Number of live sessions.
    pub fn live_count(&self) -> usize {
        self.by_cookie.lock().map(|m| m.len()).unwrap_or(0)
    }
}
