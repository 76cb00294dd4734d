//! Which gateway of a connection's URL list to try next (seed 004, "Smart Connections - List
//! of URLs"), without I/O: the reconnect loop (`super::connection`) tells it how each
//! attempt ended and it answers with the next URL, whether to back off first, or that the
//! connection has failed for good. Timing (the back-off and the disconnect timeout) is
//! `super::backoff`'s.
//!
//! ```text
//!  start ─▶ round: the list in its mode's order (top, most recent first, random)
//!             │ attempt failed (unreachable, TLS, or the certificate refused)
//!             ├──▶ next URL of the round, at once
//!             └──▶ round over ─▶ every URL refused its certificate? ─yes─▶ fail (code 6)
//!                                   │no
//!                                   ▼
//!                               back off, new round
//!  connected ─▶ lost ─▶ back off, reconnect round: the URL that was connected first, then
//!                       the list (`Start::Reconnect`); later rounds the same
//! ```
//!
//! A certificate that one gateway's key fails does not end the walk: another gateway of the
//! list may be trusted. Only when a whole round failed on certificates does the connection
//! fail with the first of those failures, since trying again would show the same keys.

use rand::{SeedableRng, rngs::StdRng};
use tunnel_config::{Start, UrlMode, url_order};

use super::status::Failure;

/// Where a connection is in its URL list.
#[derive(Debug)]
pub(super) struct Walk {
    len: usize,
    mode: UrlMode,
    /// The URL that last connected (from the store at start, then this connection's).
    last: Option<usize>,
    /// A session came up: rounds are reconnect rounds from now on.
    established: bool,
    /// This round's order (indexes into the list) and the position in it.
    order: Vec<usize>,
    at: usize,
    /// The first certificate failure of this round, while every failure was one.
    certificate: Option<Failure>,
    other_failure: bool,
    rng: StdRng,
}

/// What to do after an attempt failed.
#[derive(Debug)]
pub(super) enum Next {
    /// Try the walk's current URL at once.
    Now,
    /// Every URL of the round failed: back off, then try the walk's current URL (the first
    /// of a new round).
    AfterBackoff,
    /// Every URL of the round refused its certificate: the connection fails with this.
    Fail(Failure),
}

impl Walk {
    /// A walk of `len` URLs in `mode`, `last` being the URL that last connected; `seed`
    /// drives the random mode.
    pub(super) fn new(len: usize, mode: UrlMode, last: Option<usize>, seed: u64) -> Walk {
        let mut walk = Walk {
            len,
            mode,
            last,
            established: false,
            order: Vec::new(),
            at: 0,
            certificate: None,
            other_failure: false,
            rng: StdRng::seed_from_u64(seed),
        };
        walk.new_round();
        walk
    }

    /// The URL to try now, or None for an empty list.
    pub(super) fn current(&self) -> Option<usize> {
        self.order.get(self.at).copied()
    }

    /// The current URL connected.
    pub(super) fn connected(&mut self) {
        self.last = self.current();
        self.established = true;
    }

    /// An established session was lost: the next attempt (after a back-off) is the URL that
    /// was connected, then the list.
    pub(super) fn lost(&mut self) -> Option<usize> {
        self.new_round();
        self.current()
    }

    /// The attempt on the current URL failed; `certificate` is the failure when it was the
    /// gateway's certificate (or ours) that was refused.
    pub(super) fn failed(&mut self, certificate: Option<Failure>) -> Next {
        match certificate {
            Some(f) => {
                self.certificate.get_or_insert(f);
            }
            None => self.other_failure = true,
        }
        self.at += 1;
        if self.current().is_some() {
            return Next::Now;
        }
        if !self.other_failure
            && let Some(f) = self.certificate.take()
        {
            return Next::Fail(f);
        }
        self.new_round();
        Next::AfterBackoff
    }

    fn new_round(&mut self) {
        let start = if self.established {
            Start::Reconnect
        } else {
            Start::Fresh
        };
        self.order = url_order(self.len, self.mode, self.last, start, &mut self.rng);
        self.at = 0;
        self.certificate = None;
        self.other_failure = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::status::CertificateFailure;

    /// A certificate failure, told apart by `tag`.
    fn cert(tag: &str) -> Option<Failure> {
        Some(Failure::Certificate(CertificateFailure::Config(tag.into())))
    }

    /// Fails the current attempt; the next URL must follow at once. Returns it.
    fn now(w: &mut Walk, f: Option<Failure>) -> usize {
        match w.failed(f) {
            Next::Now => w.current().unwrap(),
            other => panic!("expected to try the next URL at once, got {other:?}"),
        }
    }

    /// Fails the current attempt; the round must be over. Returns the next round's first.
    fn after_backoff(w: &mut Walk, f: Option<Failure>) -> usize {
        match w.failed(f) {
            Next::AfterBackoff => w.current().unwrap(),
            other => panic!("expected a back-off, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_start_walks_the_list_then_backs_off_and_starts_again() {
        let mut w = Walk::new(3, UrlMode::Top, None, 1);
        assert_eq!(w.current(), Some(0));
        assert_eq!(now(&mut w, None), 1);
        assert_eq!(now(&mut w, None), 2);
        assert_eq!(after_backoff(&mut w, None), 0);
        assert_eq!(now(&mut w, None), 1);
    }

    #[test]
    fn most_recent_mode_starts_at_the_stored_last_url() {
        let mut w = Walk::new(3, UrlMode::MostRecent, Some(2), 1);
        assert_eq!(w.current(), Some(2));
        assert_eq!(now(&mut w, None), 0);
        assert_eq!(now(&mut w, None), 1);
        // Top mode ignores the stored URL on a fresh start.
        assert_eq!(Walk::new(3, UrlMode::Top, Some(2), 1).current(), Some(0));
    }

    #[test]
    fn a_lost_connection_tries_the_same_url_first_then_the_list() {
        let mut w = Walk::new(3, UrlMode::Top, None, 1);
        assert_eq!(now(&mut w, None), 1);
        w.connected();
        assert_eq!(w.lost(), Some(1), "the URL that was connected, first");
        assert_eq!(now(&mut w, None), 0);
        assert_eq!(now(&mut w, None), 2);
        // Every round of this outage starts with it again.
        assert_eq!(after_backoff(&mut w, None), 1);
        assert_eq!(now(&mut w, None), 0);
        // The next gateway connects: it is now the one tried first after a loss.
        w.connected();
        assert_eq!(w.lost(), Some(0));
        assert_eq!(now(&mut w, None), 1);
    }

    #[test]
    fn in_random_mode_a_reconnect_still_starts_with_the_connected_url() {
        for seed in 0..50 {
            let mut w = Walk::new(4, UrlMode::Random, None, seed);
            let first = w.current().unwrap();
            w.connected();
            assert_eq!(w.lost(), Some(first), "seed {seed}");
            let mut seen = vec![first];
            for _ in 0..3 {
                seen.push(now(&mut w, None));
            }
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2, 3], "every URL once per round (seed {seed})");
        }
    }

    #[test]
    fn a_certificate_failure_does_not_end_the_walk() {
        let mut w = Walk::new(2, UrlMode::Top, None, 1);
        assert_eq!(now(&mut w, cert("a")), 1);
        // The second gateway is unreachable: a new round after a back-off, not a failure.
        assert_eq!(after_backoff(&mut w, None), 0);
        // Only a round in which every gateway refused its certificate ends the connection,
        // with the first refusal.
        assert_eq!(now(&mut w, cert("first")), 1);
        match w.failed(cert("second")) {
            Next::Fail(Failure::Certificate(CertificateFailure::Config(tag))) => {
                assert_eq!(tag, "first");
            }
            other => panic!("expected the certificate failure, got {other:?}"),
        }
    }

    #[test]
    fn one_url_behaves_as_before() {
        let mut w = Walk::new(1, UrlMode::Top, None, 1);
        assert_eq!(after_backoff(&mut w, None), 0);
        w.connected();
        assert_eq!(w.lost(), Some(0));
        assert_eq!(after_backoff(&mut w, None), 0);
        assert!(matches!(w.failed(cert("only")), Next::Fail(_)));
    }

    #[test]
    fn an_empty_list_has_no_url() {
        assert_eq!(Walk::new(0, UrlMode::Top, None, 1).current(), None);
    }
}
