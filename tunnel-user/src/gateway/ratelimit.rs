//! Rate limiting of failed logins per source.
//!
//! This module owns the bookkeeping only, sans-IO: the caller passes the time of every event
//! (`Instant`), so tests drive the clock and nothing here sleeps or reads a clock. It does not
//! log, does not know users, and does not close connections; the runtime asks [`LoginLimiter::check`]
//! before it verifies a password and calls [`LoginLimiter::record_failure`] after a failure.
//!
//! The rule is a sliding window: a source that has failed `max_failures` times within the
//! last `window` is refused until the oldest of those failures is `window` old. With the
//! defaults (5 per 60 s) a password guesser gets at most 5 guesses a minute per source, and a
//! user who mistypes a few times is not locked out for long.
//!
//! A "source" is an IPv4 address or an IPv6 /64: one IPv6 host usually controls a whole /64
//! (RFC 4291 section 2.5.1 interface identifiers), so limiting single IPv6 addresses would
//! limit nothing. IPv4-mapped IPv6 addresses (from dual-stack sockets) count as IPv4.
//!
//! Memory is bounded: at most `max_sources` sources are tracked, each with at most
//! `max_failures` timestamps. When a new source arrives at the bound, the source whose last
//! failure is oldest is forgotten. An attacker with more addresses than the bound can thus
//! wash out older entries, but TCP needs a completed handshake, so each address is real and
//! each one is still held to the per-source rule while it is tracked.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

/// The limiter's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Failures allowed within `window`; the next attempt is refused. At least 1.
    pub max_failures: u32,
    /// How long a failure counts.
    pub window: Duration,
    /// How many sources are tracked at most. At least 1.
    pub max_sources: usize,
}

impl Default for RateLimitPolicy {
    /// 5 failures per 60 s per source, at most 10 000 sources tracked (about 1 MiB).
    fn default() -> Self {
        RateLimitPolicy {
            max_failures: 5,
            window: Duration::from_secs(60),
            max_sources: 10_000,
        }
    }
}

/// Whether a login attempt may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Verify the credentials.
    Allow,
    /// Refuse without verifying; the source may try again after `retry_after`.
    Refuse { retry_after: Duration },
}

/// What failures are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl From<IpAddr> for Source {
    fn from(addr: IpAddr) -> Self {
        match addr.to_canonical() {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => Source::V6Prefix((u128::from(a) >> 64) as u64),
        }
    }
}

struct Failures {
    /// The most recent failures, oldest first, at most `max_failures` of them.
    times: VecDeque<Instant>,
    /// This source's key in `by_age`.
    age_key: (Instant, u64),
}

/// Failed-login counts per source. See the module docs for the rule.
pub struct LoginLimiter {
    policy: RateLimitPolicy,
    sources: HashMap<Source, Failures>,
    /// Sources ordered by their last failure, to evict and expire the oldest first. The
    /// counter makes keys unique when two failures share an instant.
    by_age: BTreeMap<(Instant, u64), Source>,
    counter: u64,
}

impl LoginLimiter {
    /// A limiter with `policy`; zero limits are raised to 1.
    pub fn new(policy: RateLimitPolicy) -> LoginLimiter {
        LoginLimiter {
            policy: RateLimitPolicy {
                max_failures: policy.max_failures.max(1),
                window: policy.window,
                max_sources: policy.max_sources.max(1),
            },
            sources: HashMap::new(),
            by_age: BTreeMap::new(),
            counter: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> RateLimitPolicy {
        self.policy
    }

    /// May `source` attempt a login at `now`? Attempts that are refused should not be
    /// recorded as failures, so a refused source is let back in on schedule however hard it
    /// keeps knocking.
    pub fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        let Some(entry) = self.sources.get(&Source::from(source)) else {
            return Verdict::Allow;
        };
        let window = self.policy.window;
        let recent = entry
            .times
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < window)
            .count();
        if recent < self.policy.max_failures as usize {
            return Verdict::Allow;
        }
        // `times` holds exactly the last `max_failures` failures, all recent: the front one
        // expires first.
        let oldest = entry.times.front().copied().unwrap_or(now);
        Verdict::Refuse {
            retry_after: window.saturating_sub(now.saturating_duration_since(oldest)),
        }
    }

    /// Counts a failed login from `source` at `now`.
    pub fn record_failure(&mut self, source: IpAddr, now: Instant) {
        self.expire(now);
        let key = Source::from(source);
        if !self.sources.contains_key(&key)
            && self.sources.len() >= self.policy.max_sources
            && let Some((_, evicted)) = self.by_age.pop_first()
        {
            self.sources.remove(&evicted);
        }
        self.counter += 1;
        let age_key = (now, self.counter);
        let max = self.policy.max_failures as usize;
        let window = self.policy.window;
        let entry = self.sources.entry(key).or_insert_with(|| Failures {
            times: VecDeque::with_capacity(max),
            age_key,
        });
        self.by_age.remove(&entry.age_key);
        entry.age_key = age_key;
        self.by_age.insert(age_key, key);
        while entry
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            entry.times.pop_front();
        }
        if entry.times.len() == max {
            entry.times.pop_front();
        }
        entry.times.push_back(now);
    }

    /// Forgets sources whose last failure no longer counts.
    fn expire(&mut self, now: Instant) {
        while let Some((&(last, n), &source)) = self.by_age.first_key_value() {
            if now.saturating_duration_since(last) < self.policy.window {
                break;
            }
            self.by_age.remove(&(last, n));
            self.sources.remove(&source);
        }
    }

    /// How many sources are tracked.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn five_failures_then_refusal_until_the_window_passes() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..5 {
            assert_eq!(rl.check(a, t0 + secs(i)), Verdict::Allow, "attempt {i}");
            rl.record_failure(a, t0 + secs(i));
        }
        assert_eq!(
            rl.check(a, t0 + secs(5)),
            Verdict::Refuse {
                retry_after: secs(55)
            }
        );
        assert_eq!(
            rl.check(a, t0 + secs(59)),
            Verdict::Refuse {
                retry_after: secs(1)
            }
        );
        // At 60 s the first failure no longer counts: one more attempt.
        assert_eq!(rl.check(a, t0 + secs(60)), Verdict::Allow);
        rl.record_failure(a, t0 + secs(60));
        assert_eq!(
            rl.check(a, t0 + secs(60)),
            Verdict::Refuse {
                retry_after: secs(1)
            }
        );
        // Quiet for a window: everything forgiven.
        assert_eq!(rl.check(a, t0 + secs(120)), Verdict::Allow);
        // Other sources are unaffected throughout.
        assert_eq!(rl.check(ip("192.0.2.2"), t0 + secs(5)), Verdict::Allow);
    }

    #[test]
    fn slow_failures_never_lock_out() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        // One failure every 13 s: at most 5 fall within any 60 s.
        for i in 0..50 {
            let now = t0 + secs(13 * i);
            assert_eq!(rl.check(a, now), Verdict::Allow, "attempt {i}");
            rl.record_failure(a, now);
        }
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let policy = RateLimitPolicy {
            max_failures: 2,
            ..RateLimitPolicy::default()
        };
        let mut rl = LoginLimiter::new(policy);
        let t0 = Instant::now();
        rl.record_failure(ip("2001:db8:1:2::1"), t0);
        rl.record_failure(ip("2001:db8:1:2:ffff::9"), t0);
        assert!(matches!(
            rl.check(ip("2001:db8:1:2::77"), t0),
            Verdict::Refuse { .. }
        ));
        assert_eq!(rl.check(ip("2001:db8:1:3::1"), t0), Verdict::Allow);

        rl.record_failure(ip("::ffff:192.0.2.9"), t0);
        rl.record_failure(ip("192.0.2.9"), t0);
        assert!(matches!(
            rl.check(ip("192.0.2.9"), t0),
            Verdict::Refuse { .. }
        ));
        assert!(matches!(
            rl.check(ip("::ffff:192.0.2.9"), t0),
            Verdict::Refuse { .. }
        ));
        assert_eq!(rl.tracked_sources(), 2);
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest_source() {
        let policy = RateLimitPolicy {
            max_failures: 1,
            window: secs(60),
            max_sources: 3,
        };
        let mut rl = LoginLimiter::new(policy);
        let t0 = Instant::now();
        for (i, a) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
            rl.record_failure(ip(a), t0 + secs(i as u64));
        }
        // A new failure from 10.0.0.1 makes it the youngest; 10.0.0.2 is now the oldest.
        rl.record_failure(ip("10.0.0.1"), t0 + secs(3));
        rl.record_failure(ip("10.0.0.4"), t0 + secs(4));
        assert_eq!(rl.tracked_sources(), 3);
        let now = t0 + secs(5);
        assert_eq!(rl.check(ip("10.0.0.2"), now), Verdict::Allow, "evicted");
        for a in ["10.0.0.1", "10.0.0.3", "10.0.0.4"] {
            assert!(
                matches!(rl.check(ip(a), now), Verdict::Refuse { .. }),
                "{a}"
            );
        }
        // Many more sources never grow the table past the bound.
        for i in 0..1000u32 {
            rl.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)), now);
            assert!(rl.tracked_sources() <= 3);
        }
    }

    #[test]
    fn expired_sources_are_dropped() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        for i in 0..100u32 {
            rl.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(rl.tracked_sources(), 100);
        rl.record_failure(ip("10.9.9.9"), t0 + secs(60));
        assert_eq!(rl.tracked_sources(), 1);
    }

    #[test]
    fn zero_limits_are_raised_to_one() {
        let rl = LoginLimiter::new(RateLimitPolicy {
            max_failures: 0,
            window: secs(1),
            max_sources: 0,
        });
        assert_eq!(rl.policy().max_failures, 1);
        assert_eq!(rl.policy().max_sources, 1);
    }
}
