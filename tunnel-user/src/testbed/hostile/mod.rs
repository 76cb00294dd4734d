//! Hostile Pulse peers: attacks on a gateway that a client can make before it has logged in
//! (and one after), each bounded and parameterised, for the namespace tests, the benchmark's
//! `attacks` part and the `tunnel-hostile` tool (bench crate) an operator points at a test
//! gateway.
//!
//! | attack | each connection |
//! |---|---|
//! | [`Attack::HalfOpen`] | TCP connect, then nothing |
//! | [`Attack::TlsPartial`] | half a TLS ClientHello, then nothing |
//! | [`Attack::TlsSilent`] | a complete TLS handshake, then nothing |
//! | [`Attack::BigFrame`] | the upgrade request, then an IF-T frame whose header claims `claim` bytes, and its body |
//! | [`Attack::Garbage`] | random bytes where the upgrade request belongs (more than an HTTP head may hold), or the upgrade and a frame of random vendor, type and payload |
//! | [`Attack::StormOneSource`] | a wrong password for one account, all from the first source |
//! | [`Attack::StormOneAccount`] | a wrong password for one account, the sources taken in turn |
//! | [`Attack::StormManyAccounts`] | a wrong password for `user0`, `user1`, ..., the sources in turn |
//! | [`Attack::ResumeAbort`] | log in (once, and again whenever the cookie stops working), then resume with the cookie and drop the connection once the gateway took it |
//!
//! Every attack but the last keeps up to [`Params::count`] connections open at once, opens
//! at most [`Params::rate`] a second, replaces those the gateway ends, and stops after
//! [`Params::duration`]: then every connection is dropped. It runs on the calling thread (a
//! tokio runtime of one thread, made for the attack and gone after it), so it holds at most
//! `count` descriptors and no thread outlives it. Sockets are made in the calling thread's
//! network namespace (`Netns::enter`).
//!
//! What the attacker saw comes back as a [`Tally`]; what the gateway spent is measured on
//! its side (`testbed::gauge`).

mod login;
mod resume;
mod sustain;
mod wire;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use serde::Serialize;

pub use login::{Attempt, Outcome, attempt, attempts};

use crate::client::tls::Pin;

/// The gateway under attack.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its TLS port.
    pub addr: SocketAddr,
    /// Its certificate's pin: the attacks that complete a TLS handshake check it, so they
    /// measure the gateway meant and not something in between.
    pub pin: Option<Pin>,
}

/// How hard an attack pushes (see the module docs).
#[derive(Debug, Clone)]
pub struct Params {
    /// Connections open at once (password storms: attempts in flight).
    pub count: usize,
    /// New connections a second, at most (resume-abort: rounds a second).
    pub rate: f64,
    /// How long the attack runs.
    pub duration: Duration,
    /// Source addresses, taken in turn (the attacker's own addresses); none: the system's
    /// choice.
    pub sources: Vec<IpAddr>,
}

/// One attack (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attack {
    HalfOpen,
    TlsPartial,
    TlsSilent,
    BigFrame {
        /// The frame length its header claims, header included.
        claim: u32,
    },
    Garbage,
    StormOneSource {
        user: String,
    },
    StormOneAccount {
        user: String,
    },
    StormManyAccounts,
    ResumeAbort {
        user: String,
        password: String,
    },
}

/// The frame length [`Attack::BigFrame`] claims by default: just under the 1 MiB the
/// protocol allows after the login, so a gateway that takes that much before the login
/// buffers it.
pub const BIG_FRAME: u32 = 0x10_0000 - 64;

impl Attack {
    /// Every attack, with `user` as the attacked account and `password` its password (the
    /// resume-abort loop logs in).
    pub fn all(user: &str, password: &str) -> Vec<Attack> {
        vec![
            Attack::HalfOpen,
            Attack::TlsPartial,
            Attack::TlsSilent,
            Attack::BigFrame { claim: BIG_FRAME },
            Attack::Garbage,
            Attack::StormOneSource { user: user.into() },
            Attack::StormOneAccount { user: user.into() },
            Attack::StormManyAccounts,
            Attack::ResumeAbort {
                user: user.into(),
                password: password.into(),
            },
        ]
    }

    /// Its name on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Attack::HalfOpen => "half-open",
            Attack::TlsPartial => "tls-partial",
            Attack::TlsSilent => "tls-silent",
            Attack::BigFrame { .. } => "big-frame",
            Attack::Garbage => "garbage",
            Attack::StormOneSource { .. } => "storm-one-source",
            Attack::StormOneAccount { .. } => "storm-one-account",
            Attack::StormManyAccounts => "storm-many-accounts",
            Attack::ResumeAbort { .. } => "resume-abort",
        }
    }

    /// Whether it needs [`Target::pin`].
    pub fn needs_pin(&self) -> bool {
        !matches!(self, Attack::HalfOpen | Attack::TlsPartial)
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An attack name that is not one.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown attack {0:?}; known: half-open, tls-partial, tls-silent, big-frame, garbage, storm-one-source, storm-one-account, storm-many-accounts, resume-abort"
)]
pub struct UnknownAttack(pub String);

impl FromStr for Attack {
    type Err = UnknownAttack;

    /// The attack of that name with its defaults (account `alice`, password empty).
    fn from_str(s: &str) -> Result<Attack, UnknownAttack> {
        Attack::all("alice", "")
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAttack(s.to_string()))
    }
}

/// What an attack could not do at all.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    #[error("{0} needs the gateway's certificate pin")]
    NoPin(&'static str),
    #[error("{0} needs at least one source address")]
    NoSource(&'static str),
    #[error("count and rate must be above 0")]
    Nothing,
    #[error("starting the attack's runtime: {0}")]
    Runtime(std::io::Error),
}

/// What the attacker saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Connections it started.
    pub started: u64,
    /// TCP connects that failed (refused, timed out, out of ports or descriptors).
    pub connect_failed: u64,
    /// How connections ended before the attack stopped, by name: `closed` (the gateway
    /// ended it; `closed mid-frame` before the whole big frame was sent, `closed after a
    /// garbage frame`), `error: ...`, or for logins what the gateway answered (`checked`,
    /// `too many`, `busy`, `closed`, ...).
    pub ended: BTreeMap<String, u64>,
    /// Most connections open at once.
    pub peak_open: u64,
    /// Connections still open when the attack stopped.
    pub open_at_end: u64,
    /// How long the connections that ended had lasted, ms: median and longest.
    pub ended_after_ms_median: u64,
    pub ended_after_ms_max: u64,
}

impl Tally {
    /// How many ended as `how`.
    pub fn ended(&self, how: &str) -> u64 {
        self.ended.get(how).copied().unwrap_or(0)
    }

    fn end(&mut self, how: impl Into<String>) {
        *self.ended.entry(how.into()).or_default() += 1;
    }

    /// One line: `started 40, connect failed 0, peak open 32, open at end 32, closed 8 ...`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "started {}, connect failed {}, peak open {}, open at end {}",
            self.started, self.connect_failed, self.peak_open, self.open_at_end
        );
        for (how, n) in &self.ended {
            s.push_str(&format!(", {how} {n}"));
        }
        if !self.ended.is_empty() {
            s.push_str(&format!(
                " (after {} ms median, {} ms max)",
                self.ended_after_ms_median, self.ended_after_ms_max
            ));
        }
        s
    }
}

/// Runs `attack` against `target` on the calling thread (see the module docs).
pub fn run(attack: &Attack, target: &Target, params: &Params) -> Result<Tally, AttackError> {
    if params.count == 0 || params.rate <= 0.0 || !params.rate.is_finite() {
        return Err(AttackError::Nothing);
    }
    let pin = match (target.pin, attack.needs_pin()) {
        (None, true) => return Err(AttackError::NoPin(attack.name())),
        (pin, _) => pin,
    };
    if matches!(attack, Attack::StormOneSource { .. }) && params.sources.is_empty() {
        return Err(AttackError::NoSource(attack.name()));
    }
    if let Attack::ResumeAbort { user, password } = attack {
        // Strictly one round after another: nothing to run at once.
        return Ok(resume::run(target.addr, pin, user, password, params));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AttackError::Runtime)?;
    Ok(runtime.block_on(sustain::run(attack, target.addr, pin, params)))
}
