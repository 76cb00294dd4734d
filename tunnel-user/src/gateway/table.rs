//! The session table: live sessions indexed by assigned address (packets from the TUN device)
//! and by inbound SPI (ESP datagrams), plus the sessions that lost their connection and may
//! still be resumed with their DSID cookie.
//!
//! A live [`Session`] owns its protocol state machine behind a mutex: the session's TLS task,
//! and the packet threads (TUN and ESP side) all drive it, each for a moment at a time.
//!
//! The packet threads look sessions up through a [`LastLookup`] of their own: while the
//! address and SPI indexes have not changed since (the table counts its changes), the last
//! answer stands, without the index's lock, hash and probe. A small packet after an idle
//! spell pays for every cold cache line it touches, and one client's packets mostly follow
//! each other.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::Notify;
use tunnel_proto::{RandomSource, Server, SpiAllocator, random_spi};

use crate::sys::tls_link::TlsLink;

use super::{
    Lease,
    access::RealmId,
    store::{CookieKey, StoredSession},
};

/// One connected client.
pub struct Session {
    /// Short id for logs.
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub realm: String,
    /// The realm as the access policy knows it: what its packets may reach.
    pub realm_id: Option<RealmId>,
    pub cookie: String,
    pub lease: Lease,
    /// When the login ends, whatever the traffic (`session_lifetime_secs` after the login
    /// this session is or resumed); a resume keeps it.
    pub ends: Option<Instant>,
    /// When the login was made (a resume keeps it): shown in the session-limit list.
    pub logged_in: SystemTime,
    /// The protocol state machine.
    pub proto: Mutex<Server>,
    /// Where the client's ESP packets come from (learned from authenticated datagrams).
    pub esp_peer: Mutex<Option<SocketAddr>>,
    /// The connection's TLS link (its task owns it): the packet threads send the session's
    /// TLS frames on it themselves. Gone once the connection ended.
    pub link: Weak<TlsLink>,
    /// Wakes the session's TLS task when the data path queued TLS bytes it could not send
    /// (the socket was full).
    pub wake: Notify,
    /// Set when another connection resumed this session: the old task ends quietly.
    pub superseded: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Sends the TLS frames the state machine queued, from the calling thread; wakes the
    /// task when the socket is full (it flushes once it is writable) or the connection
    /// failed (its next read finds out). Without a connection the frames stay queued.
    pub fn send_tls_now(&self) {
        let Some(link) = self.link.upgrade() else {
            return;
        };
        link.send_or_wake(
            |out| {
                if let Ok(mut p) = self.proto.lock() {
                    p.take_tls(out);
                }
            },
            &self.wake,
        );
    }

    /// Whether the client was heard over ESP (its ESP endpoint is known).
    pub fn heard_over_esp(&self) -> bool {
        self.esp_peer.lock().is_ok_and(|p| p.is_some())
    }

    /// Whether `src` is an address this session may send from.
    pub fn owns(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => a == self.lease.ipv4,
            IpAddr::V6(a) => Some(a) == self.lease.ipv6,
        }
    }
}

/// A session without a connection, resumable until `expires` (which is never later than
/// `ends`, the end of its login).
#[derive(Clone, Debug)]
pub struct Resumable {
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub realm: String,
    pub lease: Lease,
    pub ends: Option<Instant>,
    pub logged_in: SystemTime,
    pub expires: Instant,
}

impl Resumable {
    /// `session`'s state for resuming it until `expires` at the latest.
    pub fn of(session: &Session, expires: Instant) -> Resumable {
        Resumable {
            id: session.id,
            peer: session.peer,
            user: session.user.clone(),
            realm: session.realm.clone(),
            lease: session.lease,
            ends: session.ends,
            logged_in: session.logged_in,
            expires: session.ends.map_or(expires, |end| end.min(expires)),
        }
    }

    /// What the store keeps of it.
    pub fn stored(&self, key: CookieKey, now: Moment) -> StoredSession {
        StoredSession {
            key,
            id: self.id,
            user: self.user.clone(),
            realm: self.realm.clone(),
            peer: self.peer,
            ipv4: self.lease.ipv4,
            ipv6: self.lease.ipv6,
            logged_in: self
                .logged_in
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ends: self.ends.map(|end| now.unix_of(end)),
            parked_until: Some(now.unix_of(self.expires)),
        }
    }

    /// A session the store kept, resumable until its own window ends; one that was
    /// connected when the store last heard of it, until `window_end`.
    pub fn restored(s: &StoredSession, now: Moment, window_end: Instant) -> Resumable {
        let ends = s.ends.map(|end| now.instant_of(end));
        let expires = s
            .parked_until
            .map_or(window_end, |until| now.instant_of(until));
        Resumable {
            id: s.id,
            peer: s.peer,
            user: s.user.clone(),
            realm: s.realm.clone(),
            lease: s.lease(),
            ends,
            logged_in: UNIX_EPOCH + std::time::Duration::from_secs(s.logged_in),
            expires: ends.map_or(expires, |end| end.min(expires)),
        }
    }
}

impl Session {
    /// What the store keeps of it while it is connected.
    pub fn stored(&self, now: Moment) -> StoredSession {
        let mut s = Resumable::of(self, now.at).stored(CookieKey::of(&self.cookie), now);
        s.parked_until = None;
        s
    }
}

/// One moment on both clocks: the monotonic one sessions run on, and the UNIX time the
/// store keeps (it outlives the process).
#[derive(Clone, Copy, Debug)]
pub struct Moment {
    pub at: Instant,
    pub unix: u64,
}

impl Moment {
    pub fn now() -> Moment {
        Moment {
            at: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// `t` in UNIX seconds, rounded up (a deadline is never brought forward).
    pub fn unix_of(self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(ahead) => self.unix + ahead.as_secs() + u64::from(ahead.subsec_nanos() > 0),
            None => self
                .unix
                .saturating_sub(self.at.duration_since(t).as_secs()),
        }
    }

    /// UNIX second `unix` on the monotonic clock (at the latest `now` for the past).
    pub fn instant_of(self, unix: u64) -> Instant {
        match unix.checked_sub(self.unix) {
            Some(ahead) => self.at + std::time::Duration::from_secs(ahead),
            None => self
                .at
                .checked_sub(std::time::Duration::from_secs(self.unix - unix))
                .unwrap_or(self.at),
        }
    }
}

/// The gateway's inbound SPIs: each is held by one inbound SA of one session at a time
/// (see [`SpiAllocator`]), so an ESP datagram's SPI names exactly one session.
#[derive(Default)]
pub struct SpiRegistry {
    held: Mutex<HashSet<u32>>,
}

/// Random draws before giving up on a free SPI: with even a million SPIs held, 16 draws all
/// hitting held ones has a chance of about 1e-46.
const SPI_DRAWS: usize = 16;

impl SpiAllocator for SpiRegistry {
    fn reserve(&self, rng: &mut dyn RandomSource) -> Option<u32> {
        let mut held = self.held.lock().ok()?;
        (0..SPI_DRAWS)
            .map(|_| random_spi(rng))
            .find(|&spi| held.insert(spi))
    }

    fn release(&self, spi: u32) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&spi);
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub struct SessionTable {
    by_addr: RwLock<HashMap<IpAddr, Arc<Session>>>,
    by_spi: RwLock<HashMap<u32, Arc<Session>>>,
    by_cookie: Mutex<HashMap<String, Arc<Session>>>,
    resumable: Mutex<HashMap<CookieKey, Resumable>>,
    /// Changes made to `by_addr` and `by_spi`, counted after each is made: a
    /// [`LastLookup`] taken at an older count is looked up again.
    changes: AtomicU64,
}

/// A packet thread's last lookup in a [`SessionTable`]: the key, the table's change count
/// when it was looked up, and the answer (held weakly: it keeps no ended session alive).
pub struct LastLookup<K> {
    last: Option<(K, u64, Weak<Session>)>,
}

impl<K> Default for LastLookup<K> {
    fn default() -> Self {
        LastLookup { last: None }
    }
}

impl SessionTable {
    /// Makes a session reachable by its addresses and cookie.
    #[cfg(test)]
    pub fn insert(&self, s: &Arc<Session>) {
        let _ = self.insert_within(s, 0);
    }

    /// [`Self::insert`], unless its user already has `max` sessions (live and parked) in its
    /// realm; 0 is no limit. Counted and inserted under the cookie index's lock, so logins
    /// finishing together cannot both take the last place. Returns whether it was inserted.
    pub fn insert_within(&self, s: &Arc<Session>, max: u32) -> bool {
        let Ok(mut by_cookie) = self.by_cookie.lock() else {
            return false;
        };
        if max > 0 {
            let live = by_cookie
                .values()
                .filter(|o| o.user == s.user && o.realm == s.realm)
                .count();
            let parked = self.resumable.lock().map_or(0, |m| {
                m.values()
                    .filter(|r| r.user == s.user && r.realm == s.realm)
                    .count()
            });
            if live + parked >= max as usize {
                return false;
            }
        }
        if let Ok(mut m) = self.by_addr.write() {
            for a in s.lease.addrs() {
                m.insert(a, s.clone());
            }
        }
        self.changed();
        by_cookie.insert(s.cookie.clone(), s.clone());
        true
    }

    /// Makes a session reachable by exactly the inbound SPIs in `spis` (its state machine's
    /// [`Server::esp_spis`], after each change): SPIs it no longer opens are forgotten.
    /// Every SPI comes from the [`SpiRegistry`], which gives an SPI to one SA at a time, so
    /// an entry of another session for one of them is stale (that session's SA let it go
    /// and its next call here would drop it): it is replaced.
    pub fn index_spis(&self, s: &Arc<Session>, spis: &[u32]) {
        if let Ok(mut m) = self.by_spi.write() {
            m.retain(|spi, v| !Arc::ptr_eq(v, s) || spis.contains(spi));
            for &spi in spis {
                m.insert(spi, s.clone());
            }
        }
        self.changed();
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
        self.changed();
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

    /// [`Self::by_addr`], answered from `last` while the indexes have not changed.
    pub fn by_addr_since(&self, a: IpAddr, last: &mut LastLookup<IpAddr>) -> Option<Arc<Session>> {
        self.look_up(a, last, |a| self.by_addr(a))
    }

    /// [`Self::by_spi`], answered from `last` while the indexes have not changed.
    pub fn by_spi_since(&self, spi: u32, last: &mut LastLookup<u32>) -> Option<Arc<Session>> {
        self.look_up(spi, last, |spi| self.by_spi(spi))
    }

    fn look_up<K: Copy + Eq>(
        &self,
        key: K,
        last: &mut LastLookup<K>,
        find: impl FnOnce(K) -> Option<Arc<Session>>,
    ) -> Option<Arc<Session>> {
        // Read before the lookup: a change made after it makes the next call look again,
        // and one counted before it is in what the lookup sees.
        let changes = self.changes.load(Ordering::Acquire);
        if let Some((k, seen, s)) = &last.last
            && *k == key
            && *seen == changes
            && let Some(s) = s.upgrade()
        {
            return Some(s);
        }
        let found = find(key);
        last.last = found.as_ref().map(|s| (key, changes, Arc::downgrade(s)));
        found
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The live session holding `cookie`, if any.
    pub fn live_by_cookie(&self, cookie: &str) -> Option<Arc<Session>> {
        self.by_cookie.lock().ok()?.get(cookie).cloned()
    }

    /// The connected session whose cookie has the key `key` (a walk over all of them: for
    /// the rare take-over by another gateway).
    pub fn live_by_key(&self, key: &CookieKey) -> Option<Arc<Session>> {
        self.by_cookie
            .lock()
            .ok()?
            .iter()
            .find(|(cookie, _)| CookieKey::of(cookie) == *key)
            .map(|(_, s)| s.clone())
    }

    /// Keeps a disconnected session resumable.
    pub fn park(&self, key: CookieKey, r: Resumable) {
        if let Ok(mut m) = self.resumable.lock() {
            m.insert(key, r);
        }
    }

    /// Takes a parked session for resumption, if its cookie is known and not expired.
    pub fn unpark(&self, key: &CookieKey, now: Instant) -> Option<Resumable> {
        let mut m = self.resumable.lock().ok()?;
        let r = m.remove(key)?;
        (r.expires > now).then_some(r)
    }

    /// Removes parked sessions that expired; returns their leases for release.
    pub fn expire_parked(&self, now: Instant) -> Vec<(CookieKey, Resumable)> {
        let Ok(mut m) = self.resumable.lock() else {
            return Vec::new();
        };
        let gone: Vec<CookieKey> = m
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        gone.into_iter()
            .filter_map(|c| m.remove(&c).map(|r| (c, r)))
            .collect()
    }

    /// Every session now: the live ones, and the parked ones by cookie key.
    pub fn snapshot(&self) -> (Vec<Arc<Session>>, Vec<(CookieKey, Resumable)>) {
        let live = self
            .by_cookie
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let parked = self
            .resumable
            .lock()
            .map(|m| m.iter().map(|(k, r)| (*k, r.clone())).collect())
            .unwrap_or_default();
        (live, parked)
    }

    /// How many sessions there are: live, live of which heard over ESP, parked. Counted
    /// under the locks, nothing copied (the metrics ask this at every scrape).
    pub fn census(&self) -> (usize, usize, usize) {
        let (live, esp) = self.by_cookie.lock().map_or((0, 0), |m| {
            (m.len(), m.values().filter(|s| s.heard_over_esp()).count())
        });
        let parked = self.resumable.lock().map_or(0, |m| m.len());
        (live, esp, parked)
    }

    /// Number of live sessions.
    pub fn live_count(&self) -> usize {
        self.by_cookie.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// `user`'s sessions in `realm`, live and parked, oldest login first.
    pub fn sessions_of(&self, user: &str, realm: &str) -> Vec<UserSession> {
        let mut found: Vec<UserSession> = Vec::new();
        if let Ok(m) = self.by_cookie.lock() {
            found.extend(
                m.values()
                    .filter(|s| s.user == user && s.realm == realm)
                    .map(|s| UserSession {
                        id: s.id,
                        from: s.peer.ip(),
                        logged_in: s.logged_in,
                        place: Place::Live(s.clone()),
                    }),
            );
        }
        if let Ok(m) = self.resumable.lock() {
            found.extend(
                m.iter()
                    .filter(|(_, r)| r.user == user && r.realm == realm)
                    .map(|(cookie, r)| UserSession {
                        id: r.id,
                        from: r.peer.ip(),
                        logged_in: r.logged_in,
                        place: Place::Parked(*cookie),
                    }),
            );
        }
        found.sort_by_key(|s| (s.logged_in, s.id));
        found
    }

    /// Takes a parked session away for good; its lease is the caller's to release.
    pub fn remove_parked(&self, key: &CookieKey) -> Option<Resumable> {
        self.resumable.lock().ok()?.remove(key)
    }
}

/// One of a user's sessions, for the session limit.
pub struct UserSession {
    /// The session's id (the connection id that made it), shown to the client.
    pub id: u64,
    /// Where it comes from.
    pub from: IpAddr,
    /// When its login was made.
    pub logged_in: SystemTime,
    /// Where it is now.
    pub place: Place,
}

/// Where a session is.
pub enum Place {
    /// Connected.
    Live(Arc<Session>),
    /// Waiting to be resumed with this cookie.
    Parked(CookieKey),
    /// In a cluster: held by another gateway, or parked in the store.
    Elsewhere(StoredSession),
}

impl UserSession {
    /// The id the client is shown (and answers with) when it picks a session to end: a
    /// session of another gateway carries its cookie key's first digits, as its id may be
    /// one of this gateway's too.
    pub fn shown_id(&self) -> String {
        match &self.place {
            Place::Elsewhere(s) => format!("s{}-{}", self.id, &s.key.hex()[..6]),
            _ => format!("s{}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tunnel_proto::ServerConfig;

    fn session(id: u64, ipv4: [u8; 4]) -> Arc<Session> {
        Arc::new(Session {
            id,
            peer: "192.0.2.1:443".parse().unwrap(),
            user: "alice".into(),
            realm: "Users".into(),
            realm_id: None,
            cookie: format!("DSID-{id}"),
            lease: Lease {
                ipv4: Ipv4Addr::from(ipv4),
                ipv6: None,
            },
            ends: None,
            logged_in: SystemTime::now(),
            proto: Mutex::new(Server::new(ServerConfig::default(), Instant::now())),
            esp_peer: Mutex::new(None),
            link: Weak::new(),
            wake: Notify::new(),
            superseded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A remembered lookup answers as the indexes would: the same session while nothing
    /// changed, nothing once it is removed, its successor once another takes the address
    /// or SPI; and it keeps no removed session alive.
    #[test]
    fn a_remembered_lookup_follows_every_change_of_the_table() {
        let table = SessionTable::default();
        let addr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2));
        let (mut by_addr, mut by_spi) = (LastLookup::default(), LastLookup::default());
        assert!(table.by_addr_since(addr, &mut by_addr).is_none());
        let a = session(1, [10, 77, 0, 2]);
        table.insert(&a);
        table.index_spis(&a, &[0x1000]);
        for _ in 0..2 {
            assert_eq!(table.by_addr_since(addr, &mut by_addr).unwrap().id, 1);
            assert_eq!(table.by_spi_since(0x1000, &mut by_spi).unwrap().id, 1);
        }
        let other = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 3));
        assert!(
            table.by_addr_since(other, &mut by_addr).is_none(),
            "another key"
        );
        assert_eq!(table.by_addr_since(addr, &mut by_addr).unwrap().id, 1);

        table.remove(&a);
        assert!(table.by_addr_since(addr, &mut by_addr).is_none());
        assert!(table.by_spi_since(0x1000, &mut by_spi).is_none());
        let weak = Arc::downgrade(&a);
        drop(a);
        assert!(
            weak.upgrade().is_none(),
            "nothing holds the removed session"
        );

        let b = session(2, [10, 77, 0, 2]);
        table.insert(&b);
        table.index_spis(&b, &[0x1000]);
        assert_eq!(table.by_addr_since(addr, &mut by_addr).unwrap().id, 2);
        assert_eq!(table.by_spi_since(0x1000, &mut by_spi).unwrap().id, 2);
        // A rekey indexes a new SPI: during the overlap the old one keeps answering, the
        // new one too; after it, only the new one.
        table.index_spis(&b, &[0x2000, 0x1000]);
        assert_eq!(table.by_spi_since(0x1000, &mut by_spi).unwrap().id, 2);
        assert_eq!(table.by_spi_since(0x2000, &mut by_spi).unwrap().id, 2);
        table.index_spis(&b, &[0x2000]);
        assert!(table.by_spi_since(0x1000, &mut by_spi).is_none());
        assert_eq!(table.by_spi_since(0x2000, &mut by_spi).unwrap().id, 2);
    }

    /// The registry gives an SPI to one holder at a time, from the range peers may be given,
    /// however the random source falls; an SPI given back can be given again.
    #[test]
    fn the_spi_registry_never_gives_one_spi_twice() {
        /// A source that repeats 250, 251, ..., 289: draws collide all the time, and six
        /// values in each round are below the SPIs peers may be given.
        struct Cycle(u32);
        impl RandomSource for Cycle {
            fn fill(&mut self, buf: &mut [u8]) {
                self.0 = (self.0 + 1) % 40;
                let v = 250 + self.0;
                buf.copy_from_slice(&v.to_be_bytes()[..buf.len()]);
            }
        }
        let registry = SpiRegistry::default();
        let mut rng = Cycle(0);
        let mut held = HashSet::new();
        while let Some(spi) = registry.reserve(&mut rng) {
            assert!(spi >= tunnel_proto::MIN_SPI, "{spi}");
            assert!(held.insert(spi), "{spi} given twice");
        }
        assert_eq!(held.len(), 34, "256..=289, each once");
        registry.release(280);
        assert_eq!(registry.reserve(&mut rng), Some(280));
    }

    /// A session's index entries follow what it opens; one that lets an SPI go leaves the
    /// SPI to the session the registry gives it to next, in whichever order the two index.
    #[test]
    fn an_spi_index_entry_follows_the_registry() {
        let table = SessionTable::default();
        let (a, b) = (session(1, [10, 77, 0, 2]), session(2, [10, 77, 0, 3]));
        table.index_spis(&a, &[0x1000, 0x2000]);
        // A retired 0x1000 and the registry gave it to B, which indexes first.
        table.index_spis(&b, &[0x1000]);
        assert_eq!(table.by_spi(0x1000).unwrap().id, 2);
        table.index_spis(&a, &[0x2000]);
        assert_eq!(
            table.by_spi(0x1000).unwrap().id,
            2,
            "A's sync leaves B's entry"
        );
        assert_eq!(table.by_spi(0x2000).unwrap().id, 1);
        table.remove(&a);
        assert!(table.by_spi(0x2000).is_none());
        assert_eq!(table.by_spi(0x1000).unwrap().id, 2);
    }
}
