//! The session loop's own timers, without I/O: dead-peer detection of the whole connection
//! while packets go over TLS (keepalive probes), and the check of the route to the gateway.
//! The loop tells [`Liveness`] what it saw and the time, asks it what is due, and does it;
//! tests drive it with made-up instants. The state machine's timers (ESP probes, rekeying)
//! are `tunnel_proto::Client`'s, not these.
//!
//! Both run only while the connection has a tunnel: a login in progress is watched by its
//! own timeouts, and there is no route of the tunnel's to check.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::spec::Dpd;

/// How often a live connection checks that the route to its gateway still leaves through
/// the uplink it came up on.
pub(super) const ROUTE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// What is due now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Send a keepalive probe (an ICMP echo to the gateway's tunnel address).
    Probe,
    /// `probes` probes went unanswered after `idle` of silence: the gateway is gone.
    GiveUp { probes: u32, idle: Duration },
    /// Look up the route to the gateway again.
    CheckRoute,
}

/// The timers of one session.
#[derive(Debug)]
pub(super) struct Liveness {
    dpd: Dpd,
    /// Since when nothing has come from the gateway, over TLS or ESP (or since ESP was last
    /// seen up: its own probes watch the peer meanwhile).
    quiet_since: Instant,
    /// Probes sent since `quiet_since`.
    probes_sent: u32,
    /// When the route is next looked at. A fixed schedule: however busy the connection, the
    /// check comes every [`ROUTE_CHECK_EVERY`]; one missed while there was no tunnel comes
    /// at once when there is one again, and the schedule goes on from then.
    next_route_check: Instant,
}

impl Liveness {
    /// The timers of a session that begins at `now`.
    pub(super) fn new(dpd: Dpd, now: Instant) -> Liveness {
        Liveness {
            dpd,
            quiet_since: now,
            probes_sent: 0,
            next_route_check: now + ROUTE_CHECK_EVERY,
        }
    }

    /// Something came from the gateway at `at` (anything proves it alive): the silence, and
    /// the count of probes, start over.
    pub(super) fn heard(&mut self, at: Instant) {
        if at > self.quiet_since {
            self.quiet_since = at;
            self.probes_sent = 0;
        }
    }

    /// ESP is up at `now`: the state machine's ESP probes watch the peer, and a dead ESP path
    /// means a fall-back to TLS, not a reconnect; the silence is counted from when ESP went.
    pub(super) fn esp_up(&mut self, now: Instant) {
        self.quiet_since = self.quiet_since.max(now);
        self.probes_sent = 0;
    }

    /// When the next probe, or the verdict, is due.
    fn probe_due(&self) -> Instant {
        self.quiet_since + self.dpd.idle + self.dpd.interval * self.probes_sent
    }

    /// What is due at `now` (call until None); `tunnel`: the connection has a tunnel.
    pub(super) fn poll(&mut self, now: Instant, tunnel: bool) -> Option<Due> {
        if !tunnel {
            return None;
        }
        if now >= self.probe_due() {
            if self.probes_sent >= self.dpd.count {
                return Some(Due::GiveUp {
                    probes: self.dpd.count,
                    idle: self.dpd.idle,
                });
            }
            self.probes_sent += 1;
            return Some(Due::Probe);
        }
        if now >= self.next_route_check {
            self.next_route_check = now + ROUTE_CHECK_EVERY;
            return Some(Due::CheckRoute);
        }
        None
    }

    /// When [`Liveness::poll`] next has something to do (None: nothing while there is no
    /// tunnel).
    pub(super) fn deadline(&self, tunnel: bool) -> Option<Instant> {
        tunnel.then(|| self.probe_due().min(self.next_route_check))
    }
}

/// When anything last came from the gateway: marked by whoever reads it (the packet
/// threads, the task), read by the session loop. Nanoseconds since `origin` in one atomic,
/// so the packet path marks it without a lock; it only moves forward.
#[derive(Debug)]
pub(super) struct Heard {
    origin: Instant,
    nanos: AtomicU64,
}

impl Heard {
    pub(super) fn new(origin: Instant) -> Heard {
        Heard {
            origin,
            nanos: AtomicU64::new(0),
        }
    }

    /// Something came from the gateway at `now`.
    pub(super) fn mark(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        self.nanos
            .fetch_max(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When something last came (the origin if nothing has).
    pub(super) fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);

    fn dpd(idle: u64, interval: u64, count: u32) -> Dpd {
        Dpd {
            idle: Duration::from_secs(idle),
            interval: Duration::from_secs(interval),
            count,
        }
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    /// Everything due at `now`, in order (up to the verdict, which stays due).
    fn due(l: &mut Liveness, now: Instant) -> Vec<Due> {
        let mut all = Vec::new();
        while let Some(d) = l.poll(now, true) {
            all.push(d);
            if matches!(d, Due::GiveUp { .. }) {
                break;
            }
        }
        all
    }

    /// A liveness whose route check never interferes (checked far in the future).
    fn dpd_only(d: Dpd, t0: Instant) -> Liveness {
        let mut l = Liveness::new(d, t0);
        l.next_route_check = t0 + Duration::from_secs(1_000_000);
        l
    }

    #[test]
    fn silence_brings_probes_interval_apart_then_the_verdict() {
        let t0 = Instant::now();
        let mut l = dpd_only(dpd(60, 3, 2), t0);
        assert_eq!(due(&mut l, secs(t0, 60) - NS), vec![]);
        assert_eq!(l.deadline(true), Some(secs(t0, 60)));
        assert_eq!(due(&mut l, secs(t0, 60)), vec![Due::Probe]);
        assert_eq!(l.deadline(true), Some(secs(t0, 63)));
        assert_eq!(due(&mut l, secs(t0, 63) - NS), vec![]);
        assert_eq!(due(&mut l, secs(t0, 63)), vec![Due::Probe]);
        assert_eq!(due(&mut l, secs(t0, 66) - NS), vec![]);
        let verdict = Due::GiveUp {
            probes: 2,
            idle: Duration::from_secs(60),
        };
        assert_eq!(l.poll(secs(t0, 66), true), Some(verdict));
    }

    #[test]
    fn a_late_poll_sends_one_probe_at_a_time() {
        let t0 = Instant::now();
        let mut l = dpd_only(dpd(10, 1, 5), t0);
        // Polled long after: each poll gives the next due thing, the probes first.
        let late = secs(t0, 100);
        assert_eq!(l.poll(late, true), Some(Due::Probe));
        assert_eq!(l.probes_sent, 1);
    }

    #[test]
    fn anything_heard_starts_the_silence_over() {
        let t0 = Instant::now();
        let mut l = dpd_only(dpd(60, 1, 5), t0);
        assert_eq!(due(&mut l, secs(t0, 60)), vec![Due::Probe]);
        l.heard(secs(t0, 60) + Duration::from_millis(500));
        assert_eq!(l.probes_sent, 0);
        assert_eq!(due(&mut l, secs(t0, 61)), vec![]);
        assert_eq!(due(&mut l, secs(t0, 120)), vec![]);
        assert_eq!(
            due(&mut l, secs(t0, 120) + Duration::from_millis(500)),
            vec![Due::Probe]
        );
        // Something older than the silence's start changes nothing.
        l.heard(secs(t0, 30));
        assert_eq!(l.probes_sent, 1);
        assert_eq!(
            l.deadline(true),
            Some(secs(t0, 121) + Duration::from_millis(500))
        );
    }

    #[test]
    fn no_probes_while_esp_is_up() {
        let t0 = Instant::now();
        let mut l = dpd_only(dpd(60, 1, 5), t0);
        for s in [30, 60, 90, 120] {
            l.esp_up(secs(t0, s));
            assert_eq!(due(&mut l, secs(t0, s)), vec![], "at {s} s");
        }
        // ESP went down at 120 s: the silence counts from then.
        assert_eq!(due(&mut l, secs(t0, 180) - NS), vec![]);
        assert_eq!(due(&mut l, secs(t0, 180)), vec![Due::Probe]);
    }

    #[test]
    fn a_count_of_zero_gives_up_at_the_end_of_the_idle_time() {
        let t0 = Instant::now();
        let mut l = dpd_only(dpd(5, 1, 0), t0);
        assert_eq!(l.poll(secs(t0, 5) - NS, true), None);
        assert_eq!(
            l.poll(secs(t0, 5), true),
            Some(Due::GiveUp {
                probes: 0,
                idle: Duration::from_secs(5)
            })
        );
    }

    #[test]
    fn nothing_is_due_without_a_tunnel() {
        let t0 = Instant::now();
        let mut l = Liveness::new(dpd(1, 1, 1), t0);
        assert_eq!(l.poll(secs(t0, 1000), false), None);
        assert_eq!(l.deadline(false), None);
        // Once there is one, what came due meanwhile is due at once.
        assert_eq!(l.deadline(true), Some(secs(t0, 1)));
        assert_eq!(l.poll(secs(t0, 1000), true), Some(Due::Probe));
        assert_eq!(
            l.poll(secs(t0, 1000), true),
            Some(Due::GiveUp {
                probes: 1,
                idle: Duration::from_secs(1)
            })
        );
    }

    #[test]
    fn the_route_is_checked_every_two_seconds_however_busy() {
        let t0 = Instant::now();
        let mut l = Liveness::new(dpd(60, 1, 5), t0);
        let mut checks = Vec::new();
        // Traffic every 10 ms, the loop polling after each arrival.
        let mut now = t0;
        while now < secs(t0, 7) {
            now += Duration::from_millis(10);
            l.heard(now);
            for d in due(&mut l, now) {
                assert_eq!(d, Due::CheckRoute);
                checks.push(now - t0);
            }
        }
        assert_eq!(
            checks,
            [2, 4, 6].map(Duration::from_secs).to_vec(),
            "a check every {ROUTE_CHECK_EVERY:?}, on time"
        );
    }

    #[test]
    fn a_missed_route_check_comes_once_and_the_schedule_goes_on_from_then() {
        let t0 = Instant::now();
        let mut l = Liveness::new(dpd(60, 1, 5), t0);
        l.heard(secs(t0, 7));
        assert_eq!(l.deadline(true), Some(secs(t0, 2)));
        assert_eq!(due(&mut l, secs(t0, 7)), vec![Due::CheckRoute]);
        assert_eq!(l.deadline(true), Some(secs(t0, 9)));
        assert_eq!(due(&mut l, secs(t0, 9) - NS), vec![]);
        assert_eq!(due(&mut l, secs(t0, 9)), vec![Due::CheckRoute]);
    }

    #[test]
    fn the_deadline_is_the_first_instant_something_is_due() {
        let t0 = Instant::now();
        let mut l = Liveness::new(dpd(3, 1, 2), t0);
        let mut timeline = Vec::new();
        while !matches!(timeline.last(), Some((_, Due::GiveUp { .. }))) {
            let at = l.deadline(true).unwrap();
            assert_eq!(l.poll(at - NS, true), None, "nothing before {:?}", at - t0);
            let all = due(&mut l, at);
            assert!(!all.is_empty(), "something at {:?}", at - t0);
            timeline.extend(all.into_iter().map(|d| ((at - t0).as_secs(), d)));
        }
        let verdict = Due::GiveUp {
            probes: 2,
            idle: Duration::from_secs(3),
        };
        assert_eq!(
            timeline,
            [
                (2, Due::CheckRoute),
                (3, Due::Probe),
                (4, Due::Probe),
                (4, Due::CheckRoute),
                (5, verdict)
            ]
        );
    }

    #[test]
    fn heard_keeps_the_latest_instant() {
        let t0 = Instant::now();
        let h = Heard::new(t0);
        assert_eq!(h.last(), t0);
        h.mark(secs(t0, 5));
        h.mark(secs(t0, 3));
        assert_eq!(h.last(), secs(t0, 5));
        h.mark(secs(t0, 5) + NS);
        assert_eq!(h.last(), secs(t0, 5) + NS);
    }
}
