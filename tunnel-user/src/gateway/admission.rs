//! Admission of connections that have not logged in yet, and logging that stays bounded
//! under a flood.
//!
//! Whoever opens a TCP connection to the gateway has proved nothing, so what the gateway
//! spends on it before the login is capped: at most `limits.login_connections` such
//! connections at once, and at most `limits.login_connections_per_source` from one source (an
//! IPv4 address or an IPv6 /64, as the login limiter counts them). A connection is admitted
//! when it is accepted, before any TLS work, and holds a [`LoginSlot`] until it logs in or
//! ends; one over the per-source cap is closed at once. The deadlines of each login step are
//! the state machine's (`tunnel_proto::ServerConfig`); this module holds the counts.
//!
//! At the global cap, the new connection takes the place of the oldest connection of the
//! source holding the most slots, when that source holds at least two more than the new
//! connection's source would: the flood from a few hundred addresses that fills the cap
//! then makes room for an honest client (who holds one slot) instead of locking everyone
//! out, while a flooding source can never push out a connection of a source that holds
//! fewer. The evicted connection's slot says so ([`LoginSlot::evicted`]) and it closes.
//!
//! [`LogThrottle`] keeps what a flood writes to the log bounded: one line per interval per
//! kind of event, with the number of events it stands for.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use super::ratelimit::Source;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `limits.login_connections` connections are logging in already.
    Global,
    /// `limits.login_connections_per_source` connections from this source are logging in
    /// already.
    PerSource,
}

/// The counts of connections not logged in yet (see the module docs).
#[derive(Debug)]
pub(crate) struct Admission {
    global: u32,
    per_source: u32,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    next_id: u64,
    /// Each source's slots, oldest first. Only sources with at least one connection: never
    /// more entries than `global`.
    by_source: HashMap<Source, Vec<Held>>,
}

/// A slot as the counts see it: which one, and how to tell its connection to close.
#[derive(Debug)]
struct Held {
    id: u64,
    evict: Arc<Notify>,
}

/// One admitted connection's place among those logging in; given back when dropped (the
/// connection logged in, or ended), or taken back for a connection of a source holding fewer.
#[derive(Debug)]
pub(crate) struct LoginSlot {
    admission: Arc<Admission>,
    source: Source,
    id: u64,
    evict: Arc<Notify>,
}

impl LoginSlot {
    /// A handle that completes once this slot was given to another source's connection (see
    /// the module docs); the connection should then close.
    pub(crate) fn eviction(&self) -> Arc<Notify> {
        self.evict.clone()
    }

    /// Whether the slot was taken back (for tests; the connection waits on [`Self::eviction`]).
    #[cfg(test)]
    fn evicted(&self) -> bool {
        let c = self.admission.counts.lock().unwrap();
        !c.by_source
            .get(&self.source)
            .is_some_and(|held| held.iter().any(|h| h.id == self.id))
    }
}

impl Admission {
    pub(crate) fn new(global: u32, per_source: u32) -> Arc<Admission> {
        Arc::new(Admission {
            global: global.max(1),
            per_source: per_source.max(1),
            counts: Mutex::default(),
        })
    }

    /// Admits a connection from `peer`, or says which cap it is over.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<LoginSlot, Refusal> {
        let source = Source::from(peer);
        let mut c = self.counts.lock().map_err(|_| Refusal::Global)?;
        let own = c.by_source.get(&source).map_or(0, Vec::len);
        if own >= self.per_source as usize {
            return Err(Refusal::PerSource);
        }
        if c.total >= self.global {
            // The source holding the most; it gives up its oldest when it holds at least two
            // more than this source will.
            let (&victim, held) = c
                .by_source
                .iter()
                .max_by_key(|(_, held)| held.len())
                .ok_or(Refusal::Global)?;
            if held.len() < own + 2 {
                return Err(Refusal::Global);
            }
            let held = c.by_source.get_mut(&victim).ok_or(Refusal::Global)?;
            let oldest = held.remove(0);
            if held.is_empty() {
                c.by_source.remove(&victim);
            }
            c.total -= 1;
            oldest.evict.notify_one();
        }
        let id = c.next_id;
        c.next_id += 1;
        let evict = Arc::new(Notify::new());
        c.by_source.entry(source).or_default().push(Held {
            id,
            evict: evict.clone(),
        });
        c.total += 1;
        Ok(LoginSlot {
            admission: self.clone(),
            source,
            id,
            evict,
        })
    }

    /// Connections holding a slot now.
    pub(crate) fn logging_in(&self) -> u32 {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        let Ok(mut c) = self.admission.counts.lock() else {
            return;
        };
        // An evicted slot was counted out when it was taken back.
        let Some(held) = c.by_source.get_mut(&self.source) else {
            return;
        };
        let Some(at) = held.iter().position(|h| h.id == self.id) else {
            return;
        };
        held.remove(at);
        if held.is_empty() {
            c.by_source.remove(&self.source);
        }
        c.total -= 1;
    }
}

/// The interval of the log lines about what a flood makes the gateway refuse: connections
/// it cannot accept or admit, logins refused for the limiter or for busy hashing workers.
pub(crate) const FLOOD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one log line through per `interval` for one kind of event, and counts the ones it
/// held back so the next line can say how many it stands for.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub(crate) const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// An event at `now`: `Some(n)` when it should be logged, standing for itself and the `n`
    /// held back since the last line; `None` when it is held back.
    pub(crate) fn event(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        let (last, held) = &mut *s;
        match last {
            Some(t) if now.saturating_duration_since(*t) < self.interval => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_caps_hold_and_slots_come_back() {
        let a = Admission::new(4, 2);
        let s1 = a.admit(ip("192.0.2.1")).unwrap();
        let s2 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.1")).unwrap_err(), Refusal::PerSource);
        // One IPv6 host owns its /64: its addresses count as one source.
        let v6a = a.admit(ip("2001:db8::1")).unwrap();
        let _v6b = a.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(a.admit(ip("2001:db8::3")).unwrap_err(), Refusal::PerSource);
        assert_eq!(a.logging_in(), 4);
        // Full (two, one, one): a source holding one may not push out one holding two.
        let _c = {
            drop(v6a);
            a.admit(ip("198.51.100.1")).unwrap()
        };
        assert_eq!(a.admit(ip("2001:db8::4")).unwrap_err(), Refusal::Global);
        drop((s1, s2));
        assert_eq!(a.logging_in(), 2);
        assert_eq!(
            a.counts.lock().unwrap().by_source.len(),
            2,
            "sources with no connection left are forgotten"
        );
        let _other = a.admit(ip("198.51.100.7")).unwrap();
        let _again = a.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(a.logging_in(), 4);
    }

    #[test]
    fn at_the_global_cap_the_biggest_source_makes_room_for_a_smaller_one() {
        let a = Admission::new(4, 4);
        let f1 = a.admit(ip("203.0.113.1")).unwrap();
        let f2 = a.admit(ip("203.0.113.1")).unwrap();
        let f3 = a.admit(ip("203.0.113.1")).unwrap();
        let g1 = a.admit(ip("203.0.113.2")).unwrap();
        // An honest client (no slot yet): the flooding source's oldest goes.
        let honest = a.admit(ip("192.0.2.9")).unwrap();
        assert!(f1.evicted() && !f2.evicted() && !g1.evicted() && !honest.evicted());
        assert_eq!(a.logging_in(), 4);
        // The evicted connection closing gives back nothing twice.
        drop(f1);
        assert_eq!(a.logging_in(), 4);
        // The flooding source again: it holds two, the others one; no one holds two more.
        assert_eq!(a.admit(ip("203.0.113.1")).unwrap_err(), Refusal::Global);
        // Another new source: the flooder (two) gives up its oldest once more, never the
        // honest client's.
        let h2 = a.admit(ip("192.0.2.10")).unwrap();
        assert!(f2.evicted() && !f3.evicted() && !honest.evicted());
        // Now everyone holds one: full is full.
        assert_eq!(a.admit(ip("192.0.2.11")).unwrap_err(), Refusal::Global);
        drop((f2, f3, g1, h2));
        assert_eq!(a.logging_in(), 1);
        drop(honest);
        assert_eq!(a.logging_in(), 0);
        assert!(a.counts.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn an_eviction_wakes_the_connection_it_was_taken_from() {
        let a = Admission::new(2, 2);
        let f1 = a.admit(ip("203.0.113.1")).unwrap();
        let _f2 = a.admit(ip("203.0.113.1")).unwrap();
        let evicted = f1.eviction();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Notified before anyone waits: the wait that comes later still ends.
        let _honest = a.admit(ip("192.0.2.9")).unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), evicted.notified())
                .await
                .expect("the evicted connection is told")
        });
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_interval() {
        let t = LogThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.event(t0), Some(0));
        for i in 1..1000 {
            assert_eq!(t.event(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(t.event(t0 + Duration::from_secs(1)), Some(999));
        assert_eq!(t.event(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.event(t0 + Duration::from_secs(3)), Some(1));
    }
}
