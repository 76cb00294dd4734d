//! When a lost connection tries again, and when it gives up: exponential back-off from
//! [`FIRST_DELAY`], doubling up to [`MAX_DELAY`], and the disconnect timeout
//! (`DisconnectTimeout` in the seed), both counted from the first loss since the last
//! session that came up. A session that came up and was lost later starts over: its outage
//! is a new one, not the continuation of one that ended hours ago.
//!
//! Sans-IO: time is passed in.

use std::time::{Duration, Instant};

/// Wait before the first attempt after a loss.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest wait between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// The reconnect schedule of one connection.
#[derive(Debug)]
pub struct Backoff {
    /// Attempts made since the outage began.
    attempts: u32,
    /// When the outage began: the first loss since a session last came up.
    lost_since: Option<Instant>,
    /// Give up after this long without a session (None: never).
    limit: Option<Duration>,
}

/// What to do after a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterLoss {
    /// Try again after this long.
    RetryIn(Duration),
    /// The disconnect timeout has passed: the outage has lasted this long.
    GiveUp(Duration),
}

impl Backoff {
    /// A schedule giving up after `limit` without a session.
    pub fn new(limit: Option<Duration>) -> Backoff {
        Backoff {
            attempts: 0,
            lost_since: None,
            limit,
        }
    }

    /// A session came up (or the user resumed a suspended connection): the next loss is a
    /// new outage.
    pub fn start_over(&mut self) {
        self.attempts = 0;
        self.lost_since = None;
    }

    /// Whether an outage is going on (the connection is reconnecting, not connecting).
    pub fn in_outage(&self) -> bool {
        self.lost_since.is_some()
    }

    /// An attempt failed at `now` and the next one follows at once (another URL of the
    /// list): the outage begins if it had not, and how long it has lasted is returned once
    /// the disconnect timeout has passed.
    pub fn expired(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.lost_since.get_or_insert(now);
        let outage = now.saturating_duration_since(since);
        self.limit
            .is_some_and(|limit| outage >= limit)
            .then_some(outage)
    }

    /// The connection was lost (or an attempt failed) at `now`.
    pub fn lost(&mut self, now: Instant) -> AfterLoss {
        let since = *self.lost_since.get_or_insert(now);
        let outage = now.saturating_duration_since(since);
        if self.limit.is_some_and(|limit| outage >= limit) {
            return AfterLoss::GiveUp(outage);
        }
        let delay = FIRST_DELAY
            .saturating_mul(1 << self.attempts.min(7))
            .min(MAX_DELAY);
        self.attempts += 1;
        AfterLoss::RetryIn(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn attempts_back_off_doubling_up_to_the_cap() {
        let mut b = Backoff::new(None);
        let t = Instant::now();
        let delays: Vec<AfterLoss> = (0..10).map(|i| b.lost(t + i * 1000 * MS)).collect();
        let want = [
            250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000,
        ];
        assert_eq!(
            delays,
            want.map(|ms| AfterLoss::RetryIn(ms * MS)).to_vec(),
            "{delays:?}"
        );
        assert!(b.in_outage());
    }

    #[test]
    fn the_disconnect_timeout_counts_from_the_start_of_the_outage() {
        let mut b = Backoff::new(Some(Duration::from_secs(10)));
        let t = Instant::now();
        assert_eq!(b.lost(t), AfterLoss::RetryIn(250 * MS));
        assert_eq!(b.lost(t + 9_999 * MS), AfterLoss::RetryIn(500 * MS));
        assert_eq!(
            b.lost(t + 10_000 * MS),
            AfterLoss::GiveUp(Duration::from_secs(10))
        );
    }

    #[test]
    fn trying_the_next_url_at_once_counts_toward_the_timeout_without_growing_the_delay() {
        let mut b = Backoff::new(Some(Duration::from_secs(10)));
        let t = Instant::now();
        assert_eq!(b.expired(t), None);
        assert!(b.in_outage());
        assert_eq!(b.expired(t + 9_999 * MS), None);
        assert_eq!(b.lost(t + 9_999 * MS), AfterLoss::RetryIn(250 * MS));
        assert_eq!(b.expired(t + 10_000 * MS), Some(Duration::from_secs(10)));
        assert_eq!(
            Backoff::new(None).expired(t + Duration::from_secs(3600)),
            None
        );
    }

    #[test]
    fn a_session_that_came_up_starts_the_next_outage_afresh() {
        let mut b = Backoff::new(Some(Duration::from_secs(10)));
        let t = Instant::now();
        for i in 0..5 {
            assert!(matches!(b.lost(t + i * MS), AfterLoss::RetryIn(_)));
        }
        b.start_over();
        assert!(!b.in_outage());
        // An hour later the gateway goes away again: the first retry comes quickly and the
        // timeout counts from now, not from the outage an hour ago.
        let later = t + Duration::from_secs(3600);
        assert_eq!(b.lost(later), AfterLoss::RetryIn(250 * MS));
        assert_eq!(
            b.lost(later + 9 * Duration::from_secs(1)),
            AfterLoss::RetryIn(500 * MS)
        );
    }
}
