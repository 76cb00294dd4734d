//! Admission of connections that have not logged in yet, and logging that stays bounded
//! under a flood.
//!
//! Whoever opens a TCP connection to the gateway has proved nothing, so what the gateway
//! spends on it before the login is capped: at most `limits.login_connections` such
//! connections at once, and at most `limits.login_connections_per_source` from one source (an
//! IPv4 address or an IPv6 /64, as the login limiter counts them). A connection is admitted
//! when it is accepted, before any TLS work, and holds a [`LoginSlot`] until it logs in or
//! ends; one over a cap is closed at once. The deadlines of each login step are the state
//! machine's (`tunnel_proto::ServerConfig`); this module holds the counts only.
//!
//! [`LogThrottle`] keeps what a flood writes to the log bounded: one line per interval per
//! kind of event, with the number of events it stands for.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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
    /// Only sources with at least one connection: never more entries than `global`.
    by_source: HashMap<Source, u32>,
}

/// One admitted connection's place among those logging in; given back when dropped (the
/// connection logged in, or ended).
#[derive(Debug)]
pub(crate) struct LoginSlot {
    admission: Arc<Admission>,
    source: Source,
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
        if c.total >= self.global {
            return Err(Refusal::Global);
        }
        let from_source = c.by_source.entry(source).or_insert(0);
        if *from_source >= self.per_source {
            return Err(Refusal::PerSource);
        }
        *from_source += 1;
        c.total += 1;
        Ok(LoginSlot {
            admission: self.clone(),
            source,
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
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
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
        assert_eq!(a.logging_in(), 4);
        assert_eq!(a.admit(ip("2001:db8:1::1")).unwrap_err(), Refusal::Global);
        drop(v6a);
        let _v6c = a.admit(ip("2001:db8::3")).unwrap();
        assert_eq!(a.admit(ip("2001:db8::4")).unwrap_err(), Refusal::Global);
        drop((s1, s2));
        assert_eq!(a.logging_in(), 2);
        assert_eq!(
            a.counts.lock().unwrap().by_source.len(),
            1,
            "sources with no connection left are forgotten"
        );
        let _other = a.admit(ip("198.51.100.7")).unwrap();
        let _again = a.admit(ip("::ffff:192.0.2.1")).unwrap();
        // Over both caps: the global one is named.
        assert_eq!(a.admit(ip("2001:db8::5")).unwrap_err(), Refusal::Global);
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
