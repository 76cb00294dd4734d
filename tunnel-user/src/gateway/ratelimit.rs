//! Rate limiting of password logins, per source and per account.
//!
//! This module owns the bookkeeping only, sans-IO: the caller passes the time of every event
//! (`Instant`), so tests drive the clock and nothing here sleeps or reads a clock. It does not
//! log, does not check passwords, and does not close connections.
//!
//! # The rule
//!
//! A login that checks a password first takes a slot with [`LoginLimiter::begin`], before the
//! (expensive) password hash, and the slot counts as a failure from that moment. Only
//! [`LoginLimiter::succeeded`] gives it back; an attempt that fails, or that never finishes
//! (the connection dropped, the task was cancelled), keeps counting. So attempts in flight
//! cannot overtake the limit: with 5 slots, 60 concurrent attempts from one source get 5
//! password checks, not as many as arrive before the first check ends.
//!
//! Slots are counted in two sliding windows, and an attempt needs a free slot in both:
//! - per **source**: `source_failures` within `source_window` (default 5 per 60 s);
//! - per **account** (the user name typed, whether or not it exists, so that refusals say
//!   nothing about which names exist): `account_failures` within `account_window` (default 10
//!   per 300 s), across all sources. An account attacked from many addresses is slowed to that
//!   rate of guesses, not locked: the window slides, so at most `account_window` after the last
//!   attacking attempt the account takes logins again. During the attack, the real user still
//!   gets in from a *known source*: one that logged in to that account within `known_source`
//!   (default 7 days) skips the account window (the source window still applies to it). A
//!   known source is only earned with the right password.
//!
//! A second factor asked after the right password (a TOTP code) is not a password check,
//! but a wrong code is a failed guess all the same: [`LoginLimiter::second_factor_failed`]
//! counts it in both windows, as a settled failure, after the password's slots were given
//! back. It also takes back the known-source standing the password had just earned, so a
//! stolen password does not buy its holder unlimited guesses at the code. A code is checked
//! only while [`LoginLimiter::second_factor_refused`] says so: the source window has room,
//! and so has a window of the account's wrong codes alone (the account window's policy,
//! without the known-source exemption: only a holder of the password can fill it, and the
//! password's success had just made the holder's source known). Logins that proved the
//! password at once and wait at the code prompt together thus get no more guesses than
//! these windows, however many they are.
//!
//! A refused attempt takes no slot, so a refused source or account is let back in on schedule
//! however hard it keeps knocking. A refusal says whether some of the window's slots are still
//! *pending* (their password is being checked): one of those that proves right frees its slot,
//! so the caller may wait for [`LoginLimiter::succeeded`] / [`LoginLimiter::failed`] and ask
//! again rather than refuse honest users who log in at the same time from one address (a NAT).
//! Waiting never lets more passwords be checked: a slot is only reused after a success.
//!
//! A "source" is an IPv4 address or an IPv6 /64: one IPv6 host usually controls a whole /64
//! (RFC 4291 section 2.5.1 interface identifiers), so limiting single IPv6 addresses would
//! limit nothing. IPv4-mapped IPv6 addresses (from dual-stack sockets) count as IPv4.
//!
//! # Memory
//!
//! Bounded: at most `max_keys` sources, `max_keys` accounts and `max_keys` known sources are
//! tracked, each window entry with at most its limit of timestamps, and accounts are keyed by
//! a keyed 64-bit hash of the name (so a long name costs nothing). When a new key arrives at
//! the bound, the one whose last slot is oldest is forgotten. An attacker with more addresses
//! (or names) than the bound can thus wash out older entries, but TCP needs a completed
//! handshake, so each address is real and each one is still held to the per-source rule while
//! it is tracked.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{BuildHasher, Hash, RandomState},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use super::PasswordLimits;

/// One sliding window: at most `max_failures` slots per key within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPolicy {
    /// Slots (attempts not yet proven right) allowed within `window`; the next attempt is
    /// refused. At least 1.
    pub max_failures: u32,
    /// How long a slot counts.
    pub window: Duration,
}

/// The limiter's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Per source (IPv4 address or IPv6 /64).
    pub source: WindowPolicy,
    /// Per account (typed user name), all sources together.
    pub account: WindowPolicy,
    /// A source that logged in to an account within this long skips that account's window.
    /// Zero turns the exemption off.
    pub known_source: Duration,
    /// How many sources, accounts and known sources are tracked at most (each). At least 1.
    pub max_keys: usize,
}

impl RateLimitPolicy {
    /// How many sources, accounts and known sources are tracked at most, each (about 3 MiB
    /// in all).
    pub const MAX_KEYS: usize = 10_000;
}

impl From<&PasswordLimits> for RateLimitPolicy {
    fn from(limits: &PasswordLimits) -> Self {
        RateLimitPolicy {
            source: WindowPolicy {
                max_failures: limits.source_failures,
                window: limits.source_window,
            },
            account: WindowPolicy {
                max_failures: limits.account_failures,
                window: limits.account_window,
            },
            known_source: limits.known_source,
            max_keys: RateLimitPolicy::MAX_KEYS,
        }
    }
}

impl Default for RateLimitPolicy {
    /// The config's defaults (`[auth.passwords]`).
    fn default() -> Self {
        RateLimitPolicy::from(&PasswordLimits::default())
    }
}

/// Which window refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The source has used its slots.
    Source,
    /// The account has used its slots.
    Account,
}

/// Why an attempt may not check a password now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Which window is full.
    pub scope: Scope,
    /// When the oldest slot of that window expires.
    pub retry_after: Duration,
    /// Some of that window's slots are attempts still being checked (neither
    /// [`LoginLimiter::succeeded`] nor [`LoginLimiter::failed`] yet).
    pub pending: bool,
}

/// A slot taken by [`LoginLimiter::begin`]. It counts as a failure until it is handed to
/// [`LoginLimiter::succeeded`]. [`LoginLimiter::failed`] settles it as a failure; dropping it
/// leaves it counted and pending until it expires.
#[derive(Debug)]
#[must_use = "an attempt counts as failed unless handed to LoginLimiter::succeeded"]
pub struct Attempt {
    source: Source,
    account: u64,
    /// The slot in the source window.
    source_slot: u64,
    /// The slot in the account window; `None` when the source is known for the account.
    account_slot: Option<u64>,
}

/// What failures are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

struct Slot {
    taken: Instant,
    id: u64,
    /// Failed for sure, rather than still being checked.
    settled: bool,
}

struct Slots {
    /// The slots in the window, oldest first. At most the limit.
    taken: VecDeque<Slot>,
    /// This key's entry in `by_age`.
    age_key: (Instant, u64),
}

/// Slots per key in one sliding window, with a bounded number of keys.
struct Window<K> {
    policy: WindowPolicy,
    max_keys: usize,
    keys: HashMap<K, Slots>,
    /// Keys ordered by their last slot, to evict and expire the oldest first. The slot id
    /// makes the order total when two slots share an instant.
    by_age: BTreeMap<(Instant, u64), K>,
}

impl<K: Copy + Eq + Hash> Window<K> {
    fn new(policy: WindowPolicy, max_keys: usize) -> Self {
        Window {
            policy: WindowPolicy {
                max_failures: policy.max_failures.max(1),
                window: policy.window,
            },
            max_keys: max_keys.max(1),
            keys: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// When `key` may take a slot, if not now, and whether some live slot is pending.
    fn refused(&self, key: &K, now: Instant) -> Option<(Duration, bool)> {
        let slots = self.keys.get(key)?;
        let window = self.policy.window;
        let live = |s: &&Slot| now.saturating_duration_since(s.taken) < window;
        if slots.taken.iter().filter(live).count() < self.policy.max_failures as usize {
            return None;
        }
        // Every slot kept is live here, and there are `max_failures` of them: the front one
        // expires first.
        let oldest = slots.taken.front().map_or(now, |s| s.taken);
        let pending = slots.taken.iter().filter(live).any(|s| !s.settled);
        Some((
            window.saturating_sub(now.saturating_duration_since(oldest)),
            pending,
        ))
    }

    /// Takes slot `id` for `key` at `now`. The caller checked [`Window::refused`].
    fn take(&mut self, key: K, now: Instant, id: u64) {
        self.expire(now);
        if !self.keys.contains_key(&key)
            && self.keys.len() >= self.max_keys
            && let Some((_, evicted)) = self.by_age.pop_first()
        {
            self.keys.remove(&evicted);
        }
        let max = self.policy.max_failures as usize;
        let window = self.policy.window;
        let slots = self.keys.entry(key).or_insert_with(|| Slots {
            taken: VecDeque::with_capacity(max),
            age_key: (now, id),
        });
        self.by_age.remove(&slots.age_key);
        slots.age_key = (now, id);
        self.by_age.insert((now, id), key);
        while slots
            .taken
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.taken) >= window)
        {
            slots.taken.pop_front();
        }
        if slots.taken.len() == max {
            slots.taken.pop_front();
        }
        slots.taken.push_back(Slot {
            taken: now,
            id,
            settled: false,
        });
    }

    /// Marks slot `id` of `key` a failure for sure.
    fn settle(&mut self, key: &K, id: u64) {
        if let Some(slot) = self
            .keys
            .get_mut(key)
            .and_then(|slots| slots.taken.iter_mut().find(|s| s.id == id))
        {
            slot.settled = true;
        }
    }

    /// Gives slot `id` of `key` back, if it is still held.
    fn give_back(&mut self, key: &K, id: u64) {
        let Some(slots) = self.keys.get_mut(key) else {
            return;
        };
        slots.taken.retain(|s| s.id != id);
        if slots.taken.is_empty() {
            self.by_age.remove(&slots.age_key);
            self.keys.remove(key);
        }
    }

    /// Forgets keys whose last slot no longer counts.
    fn expire(&mut self, now: Instant) {
        while let Some((&(last, id), &key)) = self.by_age.first_key_value() {
            if now.saturating_duration_since(last) < self.policy.window {
                break;
            }
            self.by_age.remove(&(last, id));
            self.keys.remove(&key);
        }
    }
}

/// (account, source) pairs that logged in recently, with a bounded number of pairs.
struct KnownSources {
    keep: Duration,
    max_keys: usize,
    /// When each pair last logged in, with an id: its key in `by_age`.
    pairs: HashMap<(u64, Source), (Instant, u64)>,
    by_age: BTreeMap<(Instant, u64), (u64, Source)>,
}

impl KnownSources {
    fn knows(&self, pair: &(u64, Source), now: Instant) -> bool {
        self.pairs
            .get(pair)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < self.keep)
    }

    fn remember(&mut self, pair: (u64, Source), now: Instant, id: u64) {
        if self.keep.is_zero() {
            return;
        }
        while let Some((&age, _)) = self.by_age.first_key_value() {
            if now.saturating_duration_since(age.0) < self.keep {
                break;
            }
            if let Some(old) = self.by_age.remove(&age) {
                self.pairs.remove(&old);
            }
        }
        if let Some(age) = self.pairs.remove(&pair) {
            self.by_age.remove(&age);
        }
        if self.pairs.len() >= self.max_keys
            && let Some((_, evicted)) = self.by_age.pop_first()
        {
            self.pairs.remove(&evicted);
        }
        self.pairs.insert(pair, (now, id));
        self.by_age.insert((now, id), pair);
    }

    fn forget(&mut self, pair: &(u64, Source)) {
        if let Some(age) = self.pairs.remove(pair) {
            self.by_age.remove(&age);
        }
    }
}

/// Password-login slots per source and per account. See the module docs for the rule.
pub struct LoginLimiter {
    policy: RateLimitPolicy,
    sources: Window<Source>,
    accounts: Window<u64>,
    /// Wrong second factors per account, all sources together.
    second_factors: Window<u64>,
    known: KnownSources,
    /// Keys account names; random per limiter, so nobody can pick names that collide.
    names: RandomState,
    next_slot: u64,
}

impl LoginLimiter {
    /// A limiter with `policy`; zero limits are raised to 1.
    pub fn new(policy: RateLimitPolicy) -> LoginLimiter {
        let max_keys = policy.max_keys.max(1);
        let sources = Window::new(policy.source, max_keys);
        let accounts = Window::new(policy.account, max_keys);
        let second_factors = Window::new(policy.account, max_keys);
        LoginLimiter {
            policy: RateLimitPolicy {
                source: sources.policy,
                account: accounts.policy,
                known_source: policy.known_source,
                max_keys,
            },
            sources,
            accounts,
            second_factors,
            known: KnownSources {
                keep: policy.known_source,
                max_keys,
                pairs: HashMap::new(),
                by_age: BTreeMap::new(),
            },
            names: RandomState::new(),
            next_slot: 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> RateLimitPolicy {
        self.policy
    }

    /// Takes a slot for a password check by `source` for `account` at `now`, or says which
    /// window is full. Call it before the password is hashed.
    pub fn begin(
        &mut self,
        source: IpAddr,
        account: &str,
        now: Instant,
    ) -> Result<Attempt, Refusal> {
        let source = Source::from(source);
        let account = self.names.hash_one(account);
        if let Some((retry_after, pending)) = self.sources.refused(&source, now) {
            return Err(Refusal {
                scope: Scope::Source,
                retry_after,
                pending,
            });
        }
        let known = self.known.knows(&(account, source), now);
        if !known && let Some((retry_after, pending)) = self.accounts.refused(&account, now) {
            return Err(Refusal {
                scope: Scope::Account,
                retry_after,
                pending,
            });
        }
        let source_slot = self.slot_id();
        self.sources.take(source, now, source_slot);
        let account_slot = (!known).then(|| {
            let id = self.slot_id();
            self.accounts.take(account, now, id);
            id
        });
        Ok(Attempt {
            source,
            account,
            source_slot,
            account_slot,
        })
    }

    /// The password was right: the attempt's slots are given back, and its source becomes
    /// known for the account.
    pub fn succeeded(&mut self, attempt: Attempt, now: Instant) {
        self.sources.give_back(&attempt.source, attempt.source_slot);
        if let Some(id) = attempt.account_slot {
            self.accounts.give_back(&attempt.account, id);
        }
        let id = self.slot_id();
        self.known
            .remember((attempt.account, attempt.source), now, id);
    }

    /// The password was wrong (or could not be checked): the slots stay taken, no longer
    /// pending.
    pub fn failed(&mut self, attempt: Attempt) {
        self.sources.settle(&attempt.source, attempt.source_slot);
        if let Some(id) = attempt.account_slot {
            self.accounts.settle(&attempt.account, id);
        }
    }

    /// A second factor (a TOTP code) from `source` for `account` was wrong, after the
    /// password proved right at `now`: a failed attempt in both windows, counted even when a
    /// window is already full (the oldest slot then makes room), and the source is no longer
    /// known for the account.
    pub fn second_factor_failed(&mut self, source: IpAddr, account: &str, now: Instant) {
        let source = Source::from(source);
        let account = self.names.hash_one(account);
        self.known.forget(&(account, source));
        let second_slot = self.slot_id();
        self.second_factors.take(account, now, second_slot);
        self.second_factors.settle(&account, second_slot);
        let source_slot = self.slot_id();
        self.sources.take(source, now, source_slot);
        self.sources.settle(&source, source_slot);
        let account_slot = self.slot_id();
        self.accounts.take(account, now, account_slot);
        self.accounts.settle(&account, account_slot);
    }

    /// Whether a second factor from `source` for `account` may not be checked at `now`: the
    /// source's window is full, or the account's window of wrong second factors is. Check
    /// and [`LoginLimiter::second_factor_failed`] under one lock, so that codes checked at
    /// once each see the failures of the others.
    pub fn second_factor_refused(
        &self,
        source: IpAddr,
        account: &str,
        now: Instant,
    ) -> Option<Refusal> {
        let source = Source::from(source);
        let account = self.names.hash_one(account);
        let refusal = |scope, (retry_after, pending)| Refusal {
            scope,
            retry_after,
            pending,
        };
        if let Some(r) = self.sources.refused(&source, now) {
            return Some(refusal(Scope::Source, r));
        }
        self.second_factors
            .refused(&account, now)
            .map(|r| refusal(Scope::Account, r))
    }

    /// How many sources are tracked.
    pub fn tracked_sources(&self) -> usize {
        self.sources.keys.len()
    }

    /// How many accounts are tracked.
    pub fn tracked_accounts(&self) -> usize {
        self.accounts.keys.len()
    }

    fn slot_id(&mut self) -> u64 {
        self.next_slot += 1;
        self.next_slot
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

    fn policy(source: u32, account: u32) -> RateLimitPolicy {
        RateLimitPolicy {
            source: WindowPolicy {
                max_failures: source,
                window: secs(60),
            },
            account: WindowPolicy {
                max_failures: account,
                window: secs(300),
            },
            ..RateLimitPolicy::default()
        }
    }

    /// A failed attempt: begun and dropped.
    fn fail(rl: &mut LoginLimiter, source: &str, account: &str, now: Instant) {
        let attempt = rl
            .begin(ip(source), account, now)
            .unwrap_or_else(|r| panic!("{source} {account} refused: {r:?}"));
        rl.failed(attempt);
    }

    fn refused(rl: &mut LoginLimiter, source: &str, account: &str, now: Instant) -> Refusal {
        match rl.begin(ip(source), account, now) {
            Err(r) => r,
            Ok(a) => panic!("{source} {account} was let in: {a:?}"),
        }
    }

    #[test]
    fn concurrent_attempts_take_their_slots_before_any_finishes() {
        // 60 attempts begin before any password check ends (a check-then-record order would
        // let them all through): exactly the policy's 5 get through.
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        let mut in_flight = Vec::new();
        let mut refusals = 0;
        for _ in 0..60 {
            match rl.begin(ip("192.0.2.1"), "alice", t0) {
                Ok(a) => in_flight.push(a),
                Err(r) => {
                    // Worth waiting for: one of those in flight may prove right.
                    assert_eq!((r.scope, r.pending), (Scope::Source, true));
                    refusals += 1;
                }
            }
        }
        assert_eq!((in_flight.len(), refusals), (5, 55));
        let last = in_flight.pop().unwrap();
        for a in in_flight {
            rl.failed(a);
        }
        assert!(refused(&mut rl, "192.0.2.1", "alice", t0).pending);
        rl.failed(last);
        // All five failed: nothing to wait for.
        assert_eq!(
            refused(&mut rl, "192.0.2.1", "alice", t0 + secs(1)),
            Refusal {
                scope: Scope::Source,
                retry_after: secs(59),
                pending: false
            }
        );
    }

    #[test]
    fn a_success_gives_its_slot_back_and_failures_count_until_then() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        let a = "198.51.100.7";
        // Four in flight, then one more: the fifth slot.
        let held: Vec<_> = (0..5)
            .map(|_| rl.begin(ip(a), "alice", t0).unwrap())
            .collect();
        refused(&mut rl, a, "alice", t0);
        // One of them proves right: its slot comes back, the other four keep theirs.
        let mut held = held.into_iter();
        rl.succeeded(held.next().unwrap(), t0);
        let again = rl.begin(ip(a), "alice", t0).unwrap();
        refused(&mut rl, a, "alice", t0);
        drop(again);
        drop(held);
        // Honest users logging in over and over never fill the window.
        let b = "198.51.100.8";
        for i in 0..300 {
            let attempt = rl.begin(ip(b), "bob", t0 + secs(i)).unwrap();
            rl.succeeded(attempt, t0 + secs(i));
        }
        assert_eq!(
            rl.tracked_sources(),
            0,
            "successes leave nothing behind, and the failures expired"
        );
    }

    #[test]
    fn five_failures_then_refusal_until_the_window_passes() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        let a = "192.0.2.1";
        for i in 0..5 {
            fail(&mut rl, a, "alice", t0 + secs(i));
        }
        assert_eq!(
            refused(&mut rl, a, "alice", t0 + secs(5)),
            Refusal {
                scope: Scope::Source,
                retry_after: secs(55),
                pending: false,
            }
        );
        assert_eq!(
            refused(&mut rl, a, "bob", t0 + secs(59)).retry_after,
            secs(1),
            "the source is refused whatever name it tries"
        );
        // At 60 s the first failure no longer counts: one more attempt.
        fail(&mut rl, a, "alice", t0 + secs(60));
        assert_eq!(
            refused(&mut rl, a, "alice", t0 + secs(60)).retry_after,
            secs(1)
        );
        // Quiet for a window: the source is forgiven.
        fail(&mut rl, a, "carol", t0 + secs(120));
        // Other sources are unaffected throughout.
        fail(&mut rl, "192.0.2.2", "dave", t0 + secs(5));
    }

    #[test]
    fn slow_failures_never_lock_out() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        // One failure every 13 s: at most 5 fall within any 60 s. Five names take turns, so
        // each has at most 5 within 300 s.
        for i in 0..50 {
            fail(
                &mut rl,
                "198.51.100.7",
                &format!("user{}", i % 5),
                t0 + secs(13 * i),
            );
        }
    }

    #[test]
    fn an_account_attacked_from_many_sources_is_slowed_then_free_again() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        // 10 sources, one guess each: the account's 10 slots.
        for i in 0..10 {
            fail(&mut rl, &format!("203.0.113.{i}"), "alice", t0 + secs(i));
        }
        // The 11th source has slots of its own, but the account has none left.
        let r = refused(&mut rl, "203.0.113.100", "alice", t0 + secs(10));
        assert_eq!(
            r,
            Refusal {
                scope: Scope::Account,
                retry_after: secs(290),
                pending: false,
            }
        );
        // Other accounts are unaffected, from the same source.
        fail(&mut rl, "203.0.113.100", "bob", t0 + secs(10));
        // A steady attack gets at most 10 guesses per 300 s: each slot that expires is one
        // more guess.
        let mut guesses = 0;
        for s in 10..=599u64 {
            let now = t0 + secs(s);
            if let Ok(a) = rl.begin(ip(&format!("203.0.114.{}", s % 250)), "alice", now) {
                guesses += 1;
                rl.failed(a);
            }
        }
        assert_eq!(
            guesses, 10,
            "the next 10 when the first 10 expired, at 300-309 s"
        );
        // After the attack the real user, from an address never seen, waits at most a window.
        let end = t0 + secs(599);
        let r = refused(&mut rl, "192.0.2.50", "alice", end);
        assert!(r.retry_after <= secs(300), "{r:?}");
        let attempt = rl
            .begin(ip("192.0.2.50"), "alice", end + r.retry_after)
            .unwrap();
        rl.succeeded(attempt, end + r.retry_after);
    }

    #[test]
    fn a_known_source_gets_in_during_an_attack_on_its_account() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        let home = "192.0.2.10";
        let attempt = rl.begin(ip(home), "alice", t0).unwrap();
        rl.succeeded(attempt, t0);
        for i in 0..10 {
            fail(&mut rl, &format!("203.0.113.{i}"), "alice", t0 + secs(1));
            fail(&mut rl, &format!("203.0.114.{i}"), "bob", t0 + secs(1));
        }
        assert_eq!(
            refused(&mut rl, "203.0.113.200", "alice", t0 + secs(2)).scope,
            Scope::Account
        );
        // The real user, from where they logged in before, still gets to check a password,
        // and a mistyped one does not use the account's slots.
        fail(&mut rl, home, "alice", t0 + secs(3));
        let attempt = rl.begin(ip(home), "alice", t0 + secs(4)).unwrap();
        rl.succeeded(attempt, t0 + secs(4));
        // Known for alice only...
        assert_eq!(
            refused(&mut rl, home, "bob", t0 + secs(5)).scope,
            Scope::Account
        );
        // ... and still held to its own source window (one slot used by the typo).
        for _ in 0..4 {
            fail(&mut rl, home, "alice", t0 + secs(5));
        }
        assert_eq!(
            refused(&mut rl, home, "alice", t0 + secs(5)).scope,
            Scope::Source
        );
        // The exemption lapses `known_source` after the last login.
        let later = t0 + secs(4) + RateLimitPolicy::default().known_source;
        for i in 0..10 {
            fail(&mut rl, &format!("203.0.115.{i}"), "alice", later);
        }
        assert_eq!(refused(&mut rl, home, "alice", later).scope, Scope::Account);
    }

    #[test]
    fn the_exemption_can_be_turned_off() {
        let mut rl = LoginLimiter::new(RateLimitPolicy {
            known_source: Duration::ZERO,
            ..policy(5, 2)
        });
        let t0 = Instant::now();
        let attempt = rl.begin(ip("192.0.2.10"), "alice", t0).unwrap();
        rl.succeeded(attempt, t0);
        fail(&mut rl, "203.0.113.1", "alice", t0);
        fail(&mut rl, "203.0.113.2", "alice", t0);
        assert_eq!(
            refused(&mut rl, "192.0.2.10", "alice", t0).scope,
            Scope::Account
        );
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let mut rl = LoginLimiter::new(policy(2, 100));
        let t0 = Instant::now();
        fail(&mut rl, "2001:db8:1:2::1", "a", t0);
        fail(&mut rl, "2001:db8:1:2:ffff::9", "b", t0);
        refused(&mut rl, "2001:db8:1:2::77", "c", t0);
        fail(&mut rl, "2001:db8:1:3::1", "a", t0);

        fail(&mut rl, "::ffff:192.0.2.9", "a", t0);
        fail(&mut rl, "192.0.2.9", "a", t0);
        refused(&mut rl, "192.0.2.9", "a", t0);
        refused(&mut rl, "::ffff:192.0.2.9", "a", t0);
        assert_eq!(rl.tracked_sources(), 3);
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_oldest_key() {
        let mut rl = LoginLimiter::new(RateLimitPolicy {
            max_keys: 3,
            ..policy(1, 1000)
        });
        let t0 = Instant::now();
        for (i, a) in ["10.0.0.1", "10.0.0.2", "10.0.0.3"].iter().enumerate() {
            fail(&mut rl, a, "x", t0 + secs(i as u64));
        }
        // 10.0.0.1 is refused (1 slot); a new source evicts the oldest, 10.0.0.1.
        fail(&mut rl, "10.0.0.4", "x", t0 + secs(4));
        assert_eq!(rl.tracked_sources(), 3);
        let now = t0 + secs(5);
        fail(&mut rl, "10.0.0.1", "x", now);
        for a in ["10.0.0.3", "10.0.0.4", "10.0.0.1"] {
            refused(&mut rl, a, "x", now);
        }
        // Many more sources and names never grow the tables past the bound.
        for i in 0..1000u32 {
            let a = Ipv4Addr::from(0x0a01_0000 + i).to_string();
            fail(&mut rl, &a, &format!("name{i}"), now);
            assert!(rl.tracked_sources() <= 3 && rl.tracked_accounts() <= 3);
        }
    }

    #[test]
    fn expired_keys_are_dropped() {
        let mut rl = LoginLimiter::new(RateLimitPolicy::default());
        let t0 = Instant::now();
        for i in 0..100u32 {
            fail(
                &mut rl,
                &Ipv4Addr::from(0x0a00_0000 + i).to_string(),
                &i.to_string(),
                t0,
            );
        }
        assert_eq!((rl.tracked_sources(), rl.tracked_accounts()), (100, 100));
        fail(&mut rl, "10.9.9.9", "z", t0 + secs(300));
        assert_eq!((rl.tracked_sources(), rl.tracked_accounts()), (1, 1));
    }

    #[test]
    fn zero_limits_are_raised_to_one() {
        let rl = LoginLimiter::new(RateLimitPolicy {
            max_keys: 0,
            ..policy(0, 0)
        });
        assert_eq!(rl.policy().source.max_failures, 1);
        assert_eq!(rl.policy().account.max_failures, 1);
        assert_eq!(rl.policy().max_keys, 1);
    }

    #[test]
    fn wrong_second_factors_fill_the_account_window() {
        // Each login has the right password (its slot given back) and a wrong code. The codes
        // come from ever new sources, so only the account window can stop them.
        let mut rl = LoginLimiter::new(policy(5, 10));
        let t0 = Instant::now();
        for i in 0..10 {
            let peer = ip(&format!("198.51.100.{i}"));
            let attempt = rl
                .begin(peer, "alice", t0)
                .unwrap_or_else(|r| panic!("attempt {i} refused: {r:?}"));
            rl.succeeded(attempt, t0);
            rl.second_factor_failed(peer, "alice", t0);
        }
        let r = refused(&mut rl, "198.51.100.200", "alice", t0 + secs(1));
        assert_eq!((r.scope, r.pending), (Scope::Account, false));
        assert_eq!(r.retry_after, secs(299));
        // The source that had the right password earned no exemption with a wrong code.
        let r = refused(&mut rl, "198.51.100.0", "alice", t0 + secs(1));
        assert_eq!(r.scope, Scope::Account);
        // Bob is not affected, and the window slides open again.
        fail(&mut rl, "198.51.100.201", "bob", t0 + secs(1));
        fail(&mut rl, "198.51.100.202", "alice", t0 + secs(300));
    }

    #[test]
    fn second_factors_are_checked_within_their_own_account_window() {
        let mut rl = LoginLimiter::new(policy(5, 10));
        let t0 = Instant::now();
        // The real user logged in from home once; then wrong passwords from elsewhere fill
        // the account window.
        let home = ip("192.0.2.1");
        let attempt = rl.begin(home, "alice", t0).unwrap();
        rl.succeeded(attempt, t0);
        for i in 0..10 {
            fail(&mut rl, &format!("198.51.100.{i}"), "alice", t0);
        }
        refused(&mut rl, "198.51.100.100", "alice", t0);
        // Guessing passwords cannot stop the real user's code from being checked.
        assert_eq!(rl.second_factor_refused(home, "alice", t0), None);
        // Wrong codes can, from any source, known or not: only a password holder sends them.
        for i in 0..10 {
            let peer = ip(&format!("203.0.113.{i}"));
            assert_eq!(
                rl.second_factor_refused(peer, "alice", t0),
                None,
                "code {i}"
            );
            rl.second_factor_failed(peer, "alice", t0);
        }
        let r = rl
            .second_factor_refused(home, "alice", t0 + secs(1))
            .unwrap();
        assert_eq!((r.scope, r.retry_after), (Scope::Account, secs(299)));
        assert_eq!(rl.second_factor_refused(home, "bob", t0 + secs(1)), None);
        assert_eq!(
            rl.second_factor_refused(home, "alice", t0 + secs(300)),
            None
        );
    }

    #[test]
    fn wrong_second_factors_from_one_source_fill_its_window() {
        let mut rl = LoginLimiter::new(policy(5, 10));
        let t0 = Instant::now();
        for user in ["a", "b", "c", "d", "e"] {
            let attempt = rl.begin(ip("192.0.2.9"), user, t0).unwrap();
            rl.succeeded(attempt, t0);
            rl.second_factor_failed(ip("192.0.2.9"), user, t0);
        }
        let r = refused(&mut rl, "192.0.2.9", "f", t0);
        assert_eq!((r.scope, r.pending), (Scope::Source, false));
        // Counted even into a full window (the oldest slot makes room): still full.
        rl.second_factor_failed(ip("192.0.2.9"), "f", t0 + secs(30));
        let r = refused(&mut rl, "192.0.2.9", "g", t0 + secs(30));
        assert_eq!((r.scope, r.retry_after), (Scope::Source, secs(30)));
    }
}
