//! Deciding a login: the password and client-certificate rules, in the order that keeps the
//! expensive part bounded.
//!
//! ```text
//!  Authenticate{realm, user, password} + the TLS client certificate (if any)
//!    1. certificate rules (cheap)   auth.certificate.login / .realms for the realm:
//!                                   a certificate must name the typed user; required or not
//!    2. certificate alone?          "certificate": users file: user exists, realm member ─▶ done
//!    3. LoginLimiter::begin         a slot per source and per account, before the hash; a
//!                                   window full of attempts still in flight is waited on
//!    4. HashPool::run               users file (re-read when changed) + argon2 on a worker;
//!                                   3 and 4 wait at most hash_wait_ms (else: limited / busy)
//!    5. LoginLimiter::succeeded     only when the password was right (else ::failed)
//! ```
//!
//! This module owns that order, the users file as the logins see it ([`UsersCache`]: re-read
//! when the file changes, so `adduser` and removals take effect without a restart), what each
//! refusal tells the client, and the log line of every decision. The limits themselves are
//! `super::ratelimit`, hashing is `super::hasher`, certificate names and revocation are
//! `super::client_cert`; the connection and the state machine stay in `super::runtime`.
//!
//! What a client certificate grants, per realm (`CertificateLogin`): with `"password"` (the
//! default) the password is checked as without a certificate; with
//! `"certificate-and-password"` both are required; with `"certificate"` the certificate alone
//! logs in. In every mode a certificate that is presented must name the typed user (by
//! `auth.certificate.user`), and that user must be in the users file as it is now and a member
//! of the realm.

use std::{
    fs, io,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::{info, warn};
use tunnel_proto::{AuthRejection, Password};

use subtle::ConstantTimeEq;

use super::{
    AuthError, CertificateConfig, LoginLimiter, PasswordLimits, PasswordRules, RateLimitPolicy,
    UserId, UsersError, UsersFile,
    admission::{FLOOD_LOG_INTERVAL, LogThrottle},
    client_cert::CertNameError,
    hasher::{Busy, HashLimits, HashPool},
    password_change::{ChangeRefused, check_new_password},
    ratelimit::{Refusal, Scope},
    totp::{TotpCheck, TotpGuard},
    users::{self, unix_now},
};

/// What identifies a file's contents without reading it: a replaced file (`adduser` renames
/// a new one over the old) has a new inode, an edited one a new size or times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file at `path` now (following symlinks).
    pub fn of(path: &Path) -> io::Result<FileStamp> {
        let m = fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The users file as logins see it: loaded again when it changed since the last look.
pub struct UsersCache {
    path: PathBuf,
    limits: HashLimits,
    loaded: Mutex<Option<(FileStamp, Arc<UsersFile>)>>,
}

impl UsersCache {
    pub fn new(path: PathBuf, limits: HashLimits) -> UsersCache {
        UsersCache {
            path,
            limits,
            loaded: Mutex::new(None),
        }
    }

    /// The users file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as it is now. Blocks on the file system: call it off the async threads.
    pub fn current(&self) -> Result<Arc<UsersFile>, UsersError> {
        let read_err = |source| UsersError::Read {
            path: self.path.clone(),
            source,
        };
        let stamp = FileStamp::of(&self.path).map_err(read_err)?;
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| read_err(io::Error::other("the users file cache is poisoned")))?;
        if let Some((at, users)) = &*loaded
            && *at == stamp
        {
            return Ok(users.clone());
        }
        // Stamped before reading: a change during the read shows as a new stamp next time.
        let users = Arc::new(UsersFile::load(&self.path, &self.limits)?);
        *loaded = Some((stamp, users.clone()));
        Ok(users)
    }
}

/// One login to decide.
pub struct LoginRequest<'a> {
    /// Where the connection comes from.
    pub peer: IpAddr,
    /// The realm chosen (or the only one).
    pub realm: &'a str,
    /// The user name typed.
    pub username: &'a str,
    pub password: Password,
    /// The verified client certificate's user, or why it names none; `None` without one.
    pub certificate: Option<&'a Result<String, CertNameError>>,
}

/// How a login was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Password,
    PasswordAndCertificate,
    Certificate,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Wrong password, unknown user, a realm the user may not use, or a users file that
    /// cannot be read: the client may try again and is told nothing more.
    Credentials,
    /// A window of the rate limiter is full.
    RateLimited(Refusal),
    /// No hashing worker was free in time.
    Busy,
    /// The realm needs a client certificate and none was presented.
    CertificateRequired,
    /// The certificate names no user, or another user than the one typed.
    CertificateMismatch,
    /// Certificate login: the certificate's user is not in the users file, or not in the
    /// realm.
    CertificateNotAllowed,
}

/// What became of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    Accepted(Method),
    Refused(Refused),
}

impl LoginOutcome {
    /// How the state machine answers: `None` to accept, else the rejection the client sees.
    pub fn rejection(&self) -> Option<AuthRejection> {
        let message = |m: &str| Some(AuthRejection::Failure(m.to_string()));
        match self {
            LoginOutcome::Accepted(_) => None,
            LoginOutcome::Refused(why) => match why {
                Refused::Credentials => Some(AuthRejection::Retry),
                Refused::RateLimited(r) => Some(AuthRejection::Failure(format!(
                    "Too many failed logins. Try again in {} seconds.",
                    r.retry_after.as_secs().max(1)
                ))),
                Refused::Busy => message("The gateway is busy. Try again in a moment."),
                Refused::CertificateRequired => {
                    message("This realm requires a client certificate.")
                }
                Refused::CertificateMismatch => {
                    message("The client certificate is not for this user.")
                }
                Refused::CertificateNotAllowed => {
                    message("The client certificate does not give access to this realm.")
                }
            },
        }
    }
}

/// Why the password check could not say yes.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Everything logins share. See the module docs for the order of the checks.
pub struct Logins {
    limiter: Mutex<LoginLimiter>,
    /// Woken whenever an attempt succeeds or fails, for logins waiting on a full window.
    settled: tokio::sync::Notify,
    hasher: HashPool,
    users: Arc<UsersCache>,
    certificates: CertificateConfig,
    hash_wait: Duration,
    /// Refusals by the limiter and for busy workers come at the attacker's pace: logged
    /// within bounds. Wrong passwords are logged each, as the limiter bounds them.
    rate_limited_log: LogThrottle,
    busy_log: LogThrottle,
    /// The TOTP steps users have logged in with, against replays.
    totp: Mutex<TotpGuard>,
}

/// A password change a login asks for (docs/login.md: the answer to J2 0x43).
pub struct PasswordChange<'a> {
    pub peer: IpAddr,
    pub username: &'a str,
    /// The password the login proved.
    pub verified: &'a Password,
    /// The current password as given with the change (TLV 2).
    pub offered_old: &'a Password,
    /// The new password (TLV 3).
    pub new: Password,
}

/// Why a TOTP code was refused. [`TokenRefused::message`] is what the user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRefused {
    /// Not the code of any step near now.
    Wrong,
    /// Already used for a login.
    Reused,
    /// The code of another time: the device's clock is off by `offset` steps.
    OtherTime { offset: i64 },
    /// The user has no TOTP secret in the users file, or is no longer in it.
    NoSecret,
    /// The users file could not be read.
    Unavailable,
    /// Too many wrong codes from this source, or for this account, lately: not checked.
    RateLimited(Refusal),
}

impl TokenRefused {
    /// The message the user sees.
    pub fn message(&self) -> &'static str {
        match self {
            TokenRefused::Wrong => "Invalid token code.",
            TokenRefused::Reused => "This token code has already been used. Wait for the next one.",
            TokenRefused::OtherTime { .. } => {
                "The token code is not valid now. Check the clock of the device that made it."
            }
            TokenRefused::NoSecret => "No token is set up for this user.",
            TokenRefused::Unavailable => "The gateway cannot check token codes now.",
            TokenRefused::RateLimited(_) => "Too many wrong token codes. Try again later.",
        }
    }
}

impl Logins {
    /// Starts the hashing workers. The users file is read at the first login (and checked
    /// by the caller at start-up).
    pub fn new(
        users_file: PathBuf,
        limits: &PasswordLimits,
        certificates: CertificateConfig,
    ) -> io::Result<Logins> {
        let hash_limits = HashLimits::from(limits);
        let policy = RateLimitPolicy::from(limits);
        Ok(Logins {
            limiter: Mutex::new(LoginLimiter::new(policy)),
            settled: tokio::sync::Notify::new(),
            hasher: HashPool::new(limits.workers(), limits.hash_queue as usize, hash_limits)?,
            users: Arc::new(UsersCache::new(users_file, hash_limits)),
            certificates,
            hash_wait: limits.hash_wait,
            rate_limited_log: LogThrottle::new(FLOOD_LOG_INTERVAL),
            busy_log: LogThrottle::new(FLOOD_LOG_INTERVAL),
            totp: Mutex::new(TotpGuard::new()),
        })
    }

    /// Checks a TOTP code of `username` (whose password the login proved) at Unix time
    /// `now_unix`. A code is checked only within the login limiter's windows for second
    /// factors ([`LoginLimiter::second_factor_refused`]); every refusal after a check counts
    /// as a failed attempt; an accepted code's step is used up for the user.
    pub async fn second_factor(
        &self,
        peer: IpAddr,
        username: &str,
        code: &str,
        now_unix: u64,
    ) -> Result<u64, TokenRefused> {
        let users = self.users.clone();
        let name = username.to_string();
        let secret = tokio::task::spawn_blocking(move || {
            users
                .current()
                .map(|file| file.attributes(&name).and_then(|a| a.totp.clone()))
        })
        .await;
        // The limiter's lock is held from its check to the failure's record: codes sent at
        // once by many logins of the account are checked one after the other, each seeing
        // the failures before it.
        let Ok(mut limiter) = self.limiter.lock() else {
            warn!(%peer, user = %username, "token check failed: the rate limiter is poisoned");
            return Err(TokenRefused::Unavailable);
        };
        if let Some(refusal) = limiter.second_factor_refused(peer, username, Instant::now()) {
            if let Some(more) = self.rate_limited_log.event(Instant::now()) {
                warn!(%peer, user = %username, more, retry_after = refusal.retry_after.as_secs(), "token code refused unchecked: too many wrong codes");
            }
            return Err(TokenRefused::RateLimited(refusal));
        }
        let verdict = match secret {
            Ok(Ok(Some(secret))) => match self.totp.lock() {
                Ok(mut guard) => match guard.verify(username, &secret, code, now_unix) {
                    TotpCheck::Accepted { step } => Ok(step),
                    TotpCheck::Wrong => Err(TokenRefused::Wrong),
                    TotpCheck::Reused => Err(TokenRefused::Reused),
                    TotpCheck::OtherTime { offset } => Err(TokenRefused::OtherTime { offset }),
                },
                Err(_) => Err(TokenRefused::Unavailable),
            },
            Ok(Ok(None)) => Err(TokenRefused::NoSecret),
            Ok(Err(e)) => {
                warn!(%peer, user = %username, error = %e, "token check failed: the users file cannot be read");
                Err(TokenRefused::Unavailable)
            }
            Err(e) => {
                warn!(%peer, user = %username, error = %e, "token check failed");
                Err(TokenRefused::Unavailable)
            }
        };
        match verdict {
            Ok(step) => info!(%peer, user = %username, step, "token code accepted"),
            Err(TokenRefused::Unavailable | TokenRefused::RateLimited(_)) => {}
            Err(why) => {
                warn!(%peer, user = %username, refusal = ?why, "token code refused");
                limiter.second_factor_failed(peer, username, Instant::now());
            }
        }
        verdict
    }

    /// Changes the password of a user whose login proved `change.verified`, by `rules`: the
    /// new one is checked, hashed on a hashing worker and written to the users file (with
    /// `changed` now and `must_change` cleared). Logs the outcome, never a password.
    pub async fn change_password(
        &self,
        rules: &PasswordRules,
        change: PasswordChange<'_>,
    ) -> Result<(), ChangeRefused> {
        let PasswordChange {
            peer,
            username,
            verified,
            offered_old,
            new,
        } = change;
        let refused = |why: ChangeRefused| {
            warn!(%peer, user = %username, reason = %why, "password change refused");
            Err(why)
        };
        let old_matches: bool = offered_old
            .expose()
            .as_bytes()
            .ct_eq(verified.expose().as_bytes())
            .into();
        if !old_matches {
            return refused(ChangeRefused::WrongOldPassword);
        }
        if let Err(why) = check_new_password(rules, username, verified.expose(), new.expose()) {
            return refused(why);
        }
        let deadline = Instant::now() + self.hash_wait;
        let hashed = self
            .hasher
            .run(deadline, move |memory| memory.hash(new.expose().as_bytes()))
            .await;
        let hash = match hashed {
            Ok(Ok(hash)) => hash,
            Ok(Err(e)) => {
                warn!(%peer, user = %username, error = %e, "password change failed: hashing");
                return Err(ChangeRefused::Unavailable);
            }
            Err(_) => return refused(ChangeRefused::Busy),
        };
        let path = self.users.path().to_path_buf();
        let name = username.to_string();
        let written = tokio::task::spawn_blocking(move || {
            users::change_password(&path, &name, &hash, users::unix_now())
        })
        .await;
        match written {
            Ok(Ok(())) => {
                info!(%peer, user = %username, "password changed");
                Ok(())
            }
            Ok(Err(UsersError::NoSuchUser { .. })) => refused(ChangeRefused::UserGone),
            Ok(Err(e)) => {
                warn!(%peer, user = %username, error = %e, "password change failed: the users file");
                Err(ChangeRefused::Unavailable)
            }
            Err(e) => {
                warn!(%peer, user = %username, error = %e, "password change failed");
                Err(ChangeRefused::Unavailable)
            }
        }
    }

    /// The users file as it is now (read again only when it changed).
    pub fn users(&self) -> Result<Arc<UsersFile>, UsersError> {
        self.users.current()
    }

    /// The hashing workers' counters.
    #[cfg(test)]
    pub fn hash_stats(&self) -> super::hasher::HashStats {
        self.hasher.stats()
    }

    /// The number of hashing workers.
    pub fn hash_workers(&self) -> usize {
        self.hasher.workers()
    }

    /// Whether `user` must set a new password before getting a session: flagged, or older
    /// than `max_age` (reads the users file: call it off the async threads). A users file
    /// that cannot be read, or no longer has the user, is an error, not a "no": the login
    /// it is asked for must not go on without the change it may owe.
    pub fn must_change_password(
        &self,
        user: &str,
        max_age: Option<Duration>,
    ) -> Result<bool, UsersError> {
        let users = self.users()?;
        let attributes = users
            .attributes(user)
            .ok_or_else(|| UsersError::NoSuchUser {
                name: user.to_string(),
            })?;
        Ok(attributes.password_expired(max_age, unix_now()))
    }

    /// Decides a login, and logs the decision (never the password).
    pub async fn authenticate(&self, req: LoginRequest<'_>) -> LoginOutcome {
        let LoginRequest {
            peer,
            realm,
            username,
            password,
            certificate,
        } = req;
        let mode = self.certificates.login_for(realm);
        let refused = |why: Refused| LoginOutcome::Refused(why);

        // 1. The certificate, if any, must be the typed user's; some realms require one.
        match certificate {
            Some(Ok(cert_user)) if cert_user != username => {
                warn!(%peer, %realm, certificate_user = %cert_user, "login refused: the client certificate is for another user");
                return refused(Refused::CertificateMismatch);
            }
            Some(Err(e)) => {
                warn!(%peer, %realm, error = %e, "login refused: the client certificate names no user");
                return refused(Refused::CertificateMismatch);
            }
            None if mode.needs_certificate() => {
                warn!(%peer, %realm, "login refused: this realm requires a client certificate");
                return refused(Refused::CertificateRequired);
            }
            _ => {}
        }
        let with_certificate = certificate.is_some();

        // 2. A certificate alone: the users file says whether that user may use the realm.
        if !mode.needs_password() {
            let users = self.users.clone();
            let (r, u) = (realm.to_string(), username.to_string());
            let member = tokio::task::spawn_blocking(move || -> Result<UserId, CheckError> {
                Ok(users.current()?.member(&r, &u)?)
            })
            .await;
            return match member {
                Ok(Ok(user)) => {
                    info!(%user, %realm, "authenticated by client certificate");
                    LoginOutcome::Accepted(Method::Certificate)
                }
                Ok(Err(e)) => {
                    warn!(%peer, %realm, error = %e, "login refused: certificate login not allowed");
                    refused(Refused::CertificateNotAllowed)
                }
                Err(e) => {
                    warn!(%peer, %realm, error = %e, "login refused: checking the users file failed");
                    refused(Refused::CertificateNotAllowed)
                }
            };
        }

        // 3. A slot before the hash; it stays counted unless the password proves right. A
        //    window full of attempts still being checked may free a slot (a success): wait
        //    for that, as long as a hashing worker would be waited for.
        let deadline = Instant::now() + self.hash_wait;
        let attempt = loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before asking, so a settlement in between is not missed.
            settled.as_mut().enable();
            let begun = match self.limiter.lock() {
                Ok(mut limiter) => limiter.begin(peer, username, Instant::now()),
                Err(_) => {
                    warn!(%peer, "login refused: the rate limiter is poisoned");
                    return refused(Refused::Busy);
                }
            };
            let refusal = match begun {
                Ok(attempt) => break attempt,
                Err(refusal) => refusal,
            };
            if refusal.pending
                && tokio::time::timeout_at(deadline.into(), settled)
                    .await
                    .is_ok()
            {
                continue;
            }
            let whom = match refusal.scope {
                Scope::Source => "this source",
                Scope::Account => "this account",
            };
            if let Some(more) = self.rate_limited_log.event(Instant::now()) {
                warn!(%peer, %realm, more, retry_after = refusal.retry_after.as_secs(), "login refused: too many failed attempts from {whom}");
            }
            return refused(Refused::RateLimited(refusal));
        };

        // 4. The users file and the hash, on a hashing worker.
        let users = self.users.clone();
        let (r, u) = (realm.to_string(), username.to_string());
        let checked = self
            .hasher
            .run(deadline, move |memory| -> Result<UserId, CheckError> {
                let users = users.current()?;
                Ok(users.verify_with(memory, &r, &u, password.expose().as_bytes())?)
            })
            .await;

        // 5. Only a right password gives the slot back.
        if let Ok(mut limiter) = self.limiter.lock() {
            match &checked {
                Ok(Ok(_)) => limiter.succeeded(attempt, Instant::now()),
                _ => limiter.failed(attempt),
            }
        }
        self.settled.notify_waiters();
        match checked {
            Ok(Ok(user)) => {
                if with_certificate {
                    info!(%user, %realm, "authenticated by password and client certificate");
                    LoginOutcome::Accepted(Method::PasswordAndCertificate)
                } else {
                    info!(%user, %realm, "authenticated by password");
                    LoginOutcome::Accepted(Method::Password)
                }
            }
            Ok(Err(e)) => {
                warn!(%peer, %realm, error = %e, "login failed");
                refused(Refused::Credentials)
            }
            Err(busy) => {
                let why = match busy {
                    Busy::QueueFull => "every hashing worker is taken and the queue is full",
                    Busy::Deadline => "no hashing worker was free in time",
                };
                let stats = self.hasher.stats();
                if let Some(more) = self.busy_log.event(Instant::now()) {
                    warn!(%peer, %realm, more, refused_full = stats.refused_full, refused_late = stats.refused_deadline, "login refused: the gateway is busy ({why})");
                }
                refused(Refused::Busy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version, password_hash::SaltString};

    use super::*;
    use crate::gateway::{CertificateLogin, TotpSecret};

    /// A users-file line with a cheap hash (m=64 KiB), so debug-build tests stay fast.
    fn user_line(name: &str, realms: &str, password: &str) -> String {
        let params = Params::new(64, 1, 1, None).unwrap();
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).unwrap();
        let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap();
        format!("{name}:{realms}:{hash}\n")
    }

    struct Bed {
        _dir: tempfile::TempDir,
        users: PathBuf,
        logins: Arc<Logins>,
    }

    fn bed(limits: PasswordLimits, certificates: CertificateConfig, users: &str) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, users).unwrap();
        let logins = Logins::new(path.clone(), &limits, certificates).unwrap();
        // As the gateway does at start-up: this also makes the dummy hash for unknown users,
        // which costs a second in a debug build.
        logins.users.current().unwrap();
        Bed {
            _dir: dir,
            users: path,
            logins: Arc::new(logins),
        }
    }

    fn alice_and_bob() -> String {
        user_line("alice", "Users,Admins", "right") + &user_line("bob", "Users", "bobs")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn login(
        logins: &Logins,
        peer: &str,
        realm: &str,
        user: &str,
        password: &str,
        certificate: Option<&Result<String, CertNameError>>,
    ) -> LoginOutcome {
        logins
            .authenticate(LoginRequest {
                peer: ip(peer),
                realm,
                username: user,
                password: Password::new(password),
                certificate,
            })
            .await
    }

    /// `n` logins at once, each from `peer(i)`, all for `user` with `password`.
    fn storm(
        b: &Bed,
        n: usize,
        peer: impl Fn(usize) -> String,
        user: &str,
        password: &str,
    ) -> Vec<LoginOutcome> {
        runtime().block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let (logins, peer) = (b.logins.clone(), peer(i));
                let (user, password) = (user.to_string(), password.to_string());
                tasks.spawn(
                    async move { login(&logins, &peer, "Users", &user, &password, None).await },
                );
            }
            tasks.join_all().await
        })
    }

    fn count(outcomes: &[LoginOutcome], f: impl Fn(&LoginOutcome) -> bool) -> usize {
        outcomes.iter().filter(|o| f(o)).count()
    }

    fn rate_limited(o: &LoginOutcome) -> bool {
        matches!(o, LoginOutcome::Refused(Refused::RateLimited(_)))
    }

    #[test]
    fn sixty_concurrent_attempts_from_one_source_get_five_hashes() {
        // The race this guards against: a limiter asked before the hash and told after it
        // lets every attempt in flight through. The slot is taken before the hash.
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &alice_and_bob(),
        );
        let outcomes = storm(&b, 60, |_| "192.0.2.1".into(), "alice", "guess");
        assert_eq!(b.logins.hash_stats().hashes, 5);
        assert_eq!(
            count(&outcomes, |o| *o
                == LoginOutcome::Refused(Refused::Credentials)),
            5
        );
        assert_eq!(count(&outcomes, rate_limited), 55);
        // The right password from there is refused too, now, until the window passes.
        let after = runtime().block_on(login(
            &b.logins,
            "192.0.2.1",
            "Users",
            "alice",
            "right",
            None,
        ));
        assert!(rate_limited(&after), "{after:?}");
    }

    #[test]
    fn an_account_attacked_from_many_sources_gets_its_limit_of_hashes() {
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &alice_and_bob(),
        );
        let outcomes = storm(&b, 40, |i| format!("198.51.100.{i}"), "alice", "guess");
        assert_eq!(b.logins.hash_stats().hashes, 10);
        assert_eq!(count(&outcomes, rate_limited), 30);
        for o in &outcomes {
            if let LoginOutcome::Refused(Refused::RateLimited(r)) = o {
                assert_eq!(r.scope, Scope::Account);
            }
        }
        // Bob is not slowed by the attack on alice.
        let rt = runtime();
        let bob = rt.block_on(login(
            &b.logins,
            "198.51.100.200",
            "Users",
            "bob",
            "bobs",
            None,
        ));
        assert_eq!(bob, LoginOutcome::Accepted(Method::Password));
    }

    #[test]
    fn honest_logins_never_fill_a_window() {
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &alice_and_bob(),
        );
        let outcomes = storm(&b, 50, |_| "192.0.2.7".into(), "alice", "right");
        assert!(
            outcomes
                .iter()
                .all(|o| *o == LoginOutcome::Accepted(Method::Password))
        );
        assert_eq!(b.logins.hash_stats().hashes, 50);
    }

    #[test]
    fn hashes_beyond_the_workers_wait_and_past_the_deadline_are_refused_as_busy() {
        // One worker, 50 ms of patience, and a hash that takes far longer (64 MiB, 10 passes,
        // the most a users file may ask: a third of a second or more optimised): while the
        // worker is on it, everyone else is refused as busy, counted, and nothing waits past
        // its deadline.
        let mut text = alice_and_bob();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let slow = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(65_536, 10, 1, None).unwrap(),
        )
        .hash_password(b"slow", &salt)
        .unwrap();
        writeln!(text, "carol:Users:{slow}").unwrap();
        let limits = PasswordLimits {
            hash_workers: Some(1),
            hash_queue: 4,
            hash_wait: Duration::from_millis(50),
            ..PasswordLimits::default()
        };
        let b = bed(limits, CertificateConfig::default(), &text);
        let rt = runtime();
        let (first, outcomes) = rt.block_on(async {
            let logins = b.logins.clone();
            let first = tokio::spawn(async move {
                login(&logins, "203.0.113.200", "Users", "carol", "guess", None).await
            });
            while b.logins.hash_stats().peak_running == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..12 {
                let logins = b.logins.clone();
                tasks.spawn(async move {
                    let (peer, user) = (format!("203.0.113.{i}"), format!("user{i}"));
                    let started = Instant::now();
                    let outcome = login(&logins, &peer, "Users", &user, "guess", None).await;
                    (outcome, started.elapsed())
                });
            }
            (first.await.unwrap(), tasks.join_all().await)
        });
        assert_eq!(first, LoginOutcome::Refused(Refused::Credentials));
        for (outcome, took) in &outcomes {
            assert_eq!(*outcome, LoginOutcome::Refused(Refused::Busy));
            assert!(*took < Duration::from_secs(2), "waited {took:?}");
        }
        // 4 waited in the queue until their deadline, 8 found it full.
        let stats = b.logins.hash_stats();
        assert_eq!(
            (stats.refused_deadline, stats.refused_full),
            (4, 8),
            "{stats:?}"
        );
        assert_eq!((stats.hashes, stats.peak_running), (1, 1), "{stats:?}");
        // One worker's memory at that hash's cost: what the workers hold, however many came.
        assert_eq!(stats.memory_bytes, 65_536 * 1024);
    }

    fn cert(user: &str) -> Result<String, CertNameError> {
        Ok(user.to_string())
    }

    fn certificate_config(
        login: CertificateLogin,
        realms: &[(&str, CertificateLogin)],
    ) -> CertificateConfig {
        CertificateConfig {
            login,
            realms: realms.iter().map(|(r, m)| (r.to_string(), *m)).collect(),
            ..CertificateConfig::default()
        }
    }

    #[test]
    fn by_default_a_certificate_does_not_replace_the_password() {
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &alice_and_bob(),
        );
        let rt = runtime();
        let alice = cert("alice");
        let l = &b.logins;
        // The old gateway let this in: the certificate's CN equalled the typed name.
        assert_eq!(
            rt.block_on(login(
                l,
                "192.0.2.1",
                "Users",
                "alice",
                "not hers",
                Some(&alice)
            )),
            LoginOutcome::Refused(Refused::Credentials)
        );
        assert_eq!(
            rt.block_on(login(
                l,
                "192.0.2.1",
                "Users",
                "alice",
                "right",
                Some(&alice)
            )),
            LoginOutcome::Accepted(Method::PasswordAndCertificate)
        );
        // A certificate names the user who logs in: not another one, even with their password.
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Users", "bob", "bobs", Some(&alice))),
            LoginOutcome::Refused(Refused::CertificateMismatch)
        );
        let unnamed = Err(CertNameError::Missing {
            field: crate::gateway::CertificateName::Email,
        });
        assert_eq!(
            rt.block_on(login(
                l,
                "192.0.2.1",
                "Users",
                "alice",
                "right",
                Some(&unnamed)
            )),
            LoginOutcome::Refused(Refused::CertificateMismatch)
        );
        // Without a certificate, the password alone decides.
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Users", "bob", "bobs", None)),
            LoginOutcome::Accepted(Method::Password)
        );
    }

    #[test]
    fn per_realm_a_certificate_is_required_or_replaces_the_password() {
        let certificates = certificate_config(
            CertificateLogin::Password,
            &[
                ("Admins", CertificateLogin::CertificateAndPassword),
                ("Devices", CertificateLogin::Certificate),
            ],
        );
        let users = user_line("alice", "Users,Admins,Devices", "right")
            + &user_line("bob", "Users", "bobs");
        let b = bed(PasswordLimits::default(), certificates, &users);
        let rt = runtime();
        let l = &b.logins;
        let (alice, bob) = (cert("alice"), cert("bob"));
        // Admins: both.
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Admins", "alice", "right", None)),
            LoginOutcome::Refused(Refused::CertificateRequired)
        );
        assert_eq!(
            rt.block_on(login(
                l,
                "192.0.2.1",
                "Admins",
                "alice",
                "wrong",
                Some(&alice)
            )),
            LoginOutcome::Refused(Refused::Credentials)
        );
        assert_eq!(
            rt.block_on(login(
                l,
                "192.0.2.1",
                "Admins",
                "alice",
                "right",
                Some(&alice)
            )),
            LoginOutcome::Accepted(Method::PasswordAndCertificate)
        );
        // Devices: the certificate alone, any password, no hash...
        let hashes = l.hash_stats().hashes;
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Devices", "alice", "", Some(&alice))),
            LoginOutcome::Accepted(Method::Certificate)
        );
        assert_eq!(l.hash_stats().hashes, hashes);
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Devices", "alice", "right", None)),
            LoginOutcome::Refused(Refused::CertificateRequired)
        );
        // ... but only for a member of the realm (the old gateway: any realm).
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Devices", "bob", "", Some(&bob))),
            LoginOutcome::Refused(Refused::CertificateNotAllowed)
        );
        // Removed from the users file: refused at once, no restart (the old gateway never
        // looked at the file for a certificate).
        fs::write(&b.users, user_line("bob", "Users", "bobs")).unwrap();
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Devices", "alice", "", Some(&alice))),
            LoginOutcome::Refused(Refused::CertificateNotAllowed)
        );
    }

    #[test]
    fn the_users_file_is_re_read_when_it_changes() {
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &alice_and_bob(),
        );
        let rt = runtime();
        let l = &b.logins;
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Users", "bob", "bobs", None)),
            LoginOutcome::Accepted(Method::Password)
        );
        let first = b.logins.users.current().unwrap();
        assert!(
            Arc::ptr_eq(&first, &b.logins.users.current().unwrap()),
            "unchanged: kept"
        );
        // Replaced the way adduser does it: a new file renamed over the old one.
        let new = b.users.with_extension("new");
        fs::write(&new, user_line("bob", "Users", "new password")).unwrap();
        fs::rename(&new, &b.users).unwrap();
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Users", "bob", "bobs", None)),
            LoginOutcome::Refused(Refused::Credentials)
        );
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Users", "bob", "new password", None)),
            LoginOutcome::Accepted(Method::Password)
        );
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Users", "alice", "right", None)),
            LoginOutcome::Refused(Refused::Credentials)
        );
    }

    #[test]
    fn refusals_tell_the_client_what_it_may_know() {
        let retry = LoginOutcome::Refused(Refused::Credentials).rejection();
        assert_eq!(retry, Some(AuthRejection::Retry));
        let limited = LoginOutcome::Refused(Refused::RateLimited(Refusal {
            scope: Scope::Account,
            retry_after: Duration::from_millis(1500),
            pending: false,
        }));
        assert_eq!(
            limited.rejection(),
            Some(AuthRejection::Failure(
                "Too many failed logins. Try again in 1 seconds.".into()
            ))
        );
        assert_eq!(
            LoginOutcome::Accepted(Method::Certificate).rejection(),
            None
        );
    }

    fn totp_line(name: &str, realms: &str, password: &str, secret: &TotpSecret) -> String {
        let line = user_line(name, realms, password);
        format!("{}:totp={}\n", line.trim_end(), secret.to_base32())
    }

    #[test]
    fn wrong_token_codes_count_as_failed_logins_and_codes_are_used_once() {
        use crate::gateway::totp::{STEP_SECS, code_at, step_at};
        let secret = TotpSecret::generate();
        let users =
            totp_line("alice", "Users", "right", &secret) + &user_line("bob", "Users", "bobs");
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &users,
        );
        let rt = runtime();
        let l = &b.logins;
        let now = 1_800_000_000;
        let code = code_at(&secret, step_at(now));
        let second = |peer: &str, user: &str, code: &str, at: u64| {
            rt.block_on(l.second_factor(ip(peer), user, code, at))
        };
        assert_eq!(second("192.0.2.1", "alice", &code, now), Ok(step_at(now)));
        assert_eq!(
            second("192.0.2.1", "alice", &code, now + 1),
            Err(TokenRefused::Reused)
        );
        let far = code_at(&secret, step_at(now) + 5);
        assert_eq!(
            second("192.0.2.1", "alice", &far, now),
            Err(TokenRefused::OtherTime { offset: 5 })
        );
        assert_eq!(
            second("192.0.2.1", "bob", "123456", now),
            Err(TokenRefused::NoSecret)
        );
        // Those three refusals and two more wrong codes fill the source's window of 5: the
        // right password from there is now refused without a check.
        for _ in 0..2 {
            let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
            let _ = second("192.0.2.1", "alice", &wrong, now + STEP_SECS);
        }
        let hashes = l.hash_stats().hashes;
        let after = rt.block_on(login(l, "192.0.2.1", "Users", "alice", "right", None));
        assert!(rate_limited(&after), "{after:?}");
        assert_eq!(l.hash_stats().hashes, hashes);
    }

    /// Logins whose password was right wait at the token prompt at once (32 per source,
    /// `limits.login_connections_per_source`), then each sends one code: no more codes are
    /// checked than the login limiter allows, and past it even the right code is refused.
    #[test]
    fn logins_waiting_at_the_token_prompt_get_no_more_guesses_than_the_limiter() {
        use crate::gateway::totp::{code_at, step_at};
        let secret = TotpSecret::generate();
        let users = totp_line("alice", "Users", "right", &secret)
            + &totp_line("bob", "Users", "bobs", &secret);
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &users,
        );
        let rt = runtime();
        let l = &b.logins;
        let now = 1_800_000_000;
        let right = code_at(&secret, step_at(now));
        let wrong = format!(
            "{:06}",
            (right.parse::<u32>().unwrap() + 500_000) % 1_000_000
        );
        let second = |peer: &str, user: &str, code: &str| {
            rt.block_on(l.second_factor(ip(peer), user, code, now))
        };
        let limited = |r: Result<u64, TokenRefused>| matches!(r, Err(TokenRefused::RateLimited(_)));

        // One source: its window of 5.
        let outcomes: Vec<_> = (0..32)
            .map(|_| second("192.0.2.1", "alice", &wrong))
            .collect();
        let checked = outcomes
            .iter()
            .filter(|r| **r == Err(TokenRefused::Wrong))
            .count();
        assert_eq!(checked, 5, "{outcomes:?}");
        assert!(limited(second("192.0.2.1", "alice", &right)));

        // Many sources, one account: the account's window of 10 (5 used above).
        let outcomes: Vec<_> = (0..32)
            .map(|i| second(&format!("198.51.100.{i}"), "alice", &wrong))
            .collect();
        let checked = outcomes
            .iter()
            .filter(|r| **r == Err(TokenRefused::Wrong))
            .count();
        assert_eq!(checked, 5, "{outcomes:?}");
        assert!(limited(second("198.51.100.200", "alice", &right)));

        // Positive control: another account, from a fresh source, is checked.
        assert_eq!(second("203.0.113.1", "bob", &right), Ok(step_at(now)));
    }

    #[test]
    fn a_password_age_that_cannot_be_read_is_an_error_not_a_no() {
        let users = user_line("alice", "Users", "right").replace('\n', ":must_change\n");
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &users,
        );
        assert!(matches!(
            b.logins.must_change_password("alice", None),
            Ok(true)
        ));
        // The user was removed after the password check; then the file is unreadable.
        fs::write(&b.users, user_line("bob", "Users", "bobs")).unwrap();
        assert!(matches!(
            b.logins.must_change_password("alice", None),
            Err(UsersError::NoSuchUser { .. })
        ));
        fs::write(&b.users, "alice:Users:not a hash\n").unwrap();
        assert!(b.logins.must_change_password("alice", None).is_err());
    }

    #[test]
    fn a_password_change_is_checked_hashed_on_a_worker_and_written() {
        use crate::gateway::{PasswordRequest, UserAttributes};
        let b = bed(
            PasswordLimits::default(),
            CertificateConfig::default(),
            &alice_and_bob(),
        );
        let rt = runtime();
        let l = &b.logins;
        let rules = PasswordRules {
            request: PasswordRequest::Current,
            min_length: 8,
            max_age: None,
        };
        let verified = Password::new("right");
        let change = |offered: &str, new: &str| {
            rt.block_on(l.change_password(
                &rules,
                PasswordChange {
                    peer: ip("192.0.2.1"),
                    username: "alice",
                    verified: &verified,
                    offered_old: &Password::new(offered),
                    new: Password::new(new),
                },
            ))
        };
        let hashes = l.hash_stats().hashes;
        assert_eq!(
            change("wrong", "a fine new one"),
            Err(ChangeRefused::WrongOldPassword)
        );
        assert_eq!(
            change("right", "short"),
            Err(ChangeRefused::TooShort { min: 8 })
        );
        assert_eq!(
            change("right", "a password too long for it"),
            Err(ChangeRefused::TooLong { max: 18 })
        );
        assert_eq!(l.hash_stats().hashes, hashes, "refused before hashing");
        let before = fs::read_to_string(&b.users).unwrap();
        assert!(before.contains("alice:"));
        change("right", "n3w-secret!").unwrap();
        assert_eq!(l.hash_stats().hashes, hashes + 1, "hashed on a worker");
        // The next login sees the new password, and the line says when it was set.
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Users", "alice", "n3w-secret!", None)),
            LoginOutcome::Accepted(Method::Password)
        );
        assert_eq!(
            rt.block_on(login(l, "192.0.2.1", "Admins", "alice", "right", None)),
            LoginOutcome::Refused(Refused::Credentials)
        );
        let file = l.users().unwrap();
        let attrs: &UserAttributes = file.attributes("alice").unwrap();
        assert!(attrs.changed.is_some() && !attrs.must_change);
        assert_eq!(file.realms("alice").unwrap(), ["Users", "Admins"]);
        // A user removed meanwhile is not written back.
        fs::write(&b.users, user_line("bob", "Users", "bobs")).unwrap();
        assert_eq!(change("right", "an0ther-one"), Err(ChangeRefused::UserGone));
        assert!(!fs::read_to_string(&b.users).unwrap().contains("alice"));
    }
}
