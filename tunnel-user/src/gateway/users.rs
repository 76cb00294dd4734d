//! The gateway's users file: who may log in, to which realms, and their argon2id hashes.
//!
//! This module owns the file format, password verification and the writers of the file:
//! [`add_user`] (behind `tunnel-gateway adduser`) and [`change_password`] (a user's own
//! password change at login). It never stores, logs or formats a password or a TOTP secret;
//! errors name users, line numbers and attribute names, not secrets. It does not decide which realms exist
//! (that is `auth.realms` in the config) nor rate-limit attempts (see `super::ratelimit`).
//!
//! # Format
//!
//! UTF-8 text, one user per line:
//!
//! ```text
//! # comment lines and blank lines are ignored (and kept when the file is rewritten)
//! alice:Users:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$...
//! bob:Users,Admins:$argon2id$v=19$m=19456,t=2,p=1$...:totp=GEZDGNBV...,changed=1767225600
//! ```
//!
//! - the user name: not empty, no ':', no whitespace or control characters, not starting
//!   with '#';
//! - a comma-separated list of at least one realm the user may log in to (realm names: not
//!   empty, no ':' or ',', no control characters, no leading or trailing whitespace; inner
//!   spaces are allowed, as Ivanti allows them);
//! - an argon2id hash in PHC string format; its parameters are read from the string, so hashes
//!   made with other argon2id parameters still verify, up to the bound the gateway is
//!   configured with ([`HashLimits`]: m at most `auth.passwords.hash_max_memory_kib` KiB, t at
//!   most 10, p at most 16). A hash beyond it is refused when the file is read, never
//!   allocated for;
//! - optionally, a comma-separated list of attributes ([`UserAttributes`]):
//!   `totp=BASE32SECRET` (the TOTP secret, 16-64 bytes in RFC 4648 base32, upper case, no
//!   padding), `changed=UNIXSECONDS` (when the password was set) and `must_change` (the next
//!   login must set a new password). Each at most once; an unknown one is an error. Lines
//!   without the field (files written before it existed) have none: no TOTP secret, the
//!   password's age unknown (it never expires), no change required.
//!
//! A line that breaks any rule, or a user listed twice, makes the whole file unusable: the
//! error names the line (and the attribute, never its value), and the writers refuse to
//! rewrite such a file rather than guess.
//!
//! # Writers
//!
//! Both writers re-read the file under an exclusive `flock` on its directory, so concurrent
//! writers (two `adduser` runs, a password change at login) are serialised and none loses the
//! others' change, and replace it atomically: a 0600 temporary file in the same directory,
//! fsynced, renamed over the file, then the directory fsynced. Any error before the rename
//! leaves the old file as it was.

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use argon2::{
    Argon2, PasswordHash, PasswordHasher,
    password_hash::{self, SaltString},
};

use super::{
    hasher::{HashError, HashLimits, HashMemory},
    totp::TotpSecret,
};

/// The file mode of the users file: hashes can be attacked offline, so only the owner reads.
pub const USERS_FILE_MODE: u32 = 0o600;

/// What a new users file starts with.
const HEADER: &str = "\
# tunnel-gateway users file: one user per line, name:realm[,realm...]:argon2id-hash[:attributes]
# Written by `tunnel-gateway adduser`. Blank lines and lines starting with '#' are ignored.
";

pub(crate) const REALM_NAME_RULE: &str = "a realm name (not empty, no ':' or ',', no control characters, no leading or trailing \
     whitespace)";

/// Realm names go into a comma-separated list in the users file and are shown to users, so
/// they may hold inner spaces ("Admin Users") but not the file's separators.
pub(crate) fn realm_name_ok(realm: &str) -> bool {
    !realm.is_empty()
        && realm.trim() == realm
        && !realm
            .chars()
            .any(|c| c == ':' || c == ',' || c.is_control())
}

/// User names end at ':' in the file, a leading '#' would make the line a comment, and
/// whitespace in a login name is a typo far more often than intended.
fn user_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('#')
        && !name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
}

/// An authenticated user, as [`UsersFile::verify`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId {
    name: String,
}

impl UserId {
    /// The user's name as written in the users file.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a login was refused. Clients must be told only that the login failed; the variants
/// are for the gateway's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No such user. The name is deliberately not kept: people type passwords into the name
    /// field, and this error is meant to be logged.
    #[error("unknown user")]
    UnknownUser,
    /// The password does not match.
    #[error("wrong password for user {name:?}")]
    WrongPassword { name: String },
    /// The password matches but the user may not use this realm.
    #[error("user {name:?} may not log in to realm {realm:?}")]
    RealmNotAllowed { name: String, realm: String },
    /// The stored hash could not be checked (argon2 refused its parameters).
    #[error("checking the password of user {name:?} failed: {source}")]
    Hash { name: String, source: HashError },
}

/// What is wrong with one line of a users file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    #[error("expected name:realm[,realm...]:argon2id-hash[:attributes]")]
    MissingField,
    #[error("user name {name:?} is not allowed")]
    BadName { name: String },
    #[error("realm {realm:?} is not {REALM_NAME_RULE}")]
    BadRealm { realm: String },
    #[error("the hash is not a PHC string ({reason})")]
    BadHash { reason: String },
    #[error("the hash uses {algorithm}, not argon2id")]
    NotArgon2id { algorithm: String },
    /// The hash's parameters are beyond the gateway's bound, or argon2 cannot use them.
    #[error("the hash cannot be checked: {source}")]
    Unusable { source: HashError },
    #[error("user {name:?} is already defined on line {first_line}")]
    Duplicate { name: String, first_line: usize },
    /// An attribute of the fourth field is unknown, repeated or malformed. `attribute` is its
    /// name (or a placeholder when the name does not look like one: it may be a secret typed
    /// without `totp=`); the value is never quoted.
    #[error("attribute {attribute}: {reason}")]
    BadAttribute { attribute: String, reason: String },
}

/// Errors of reading or updating the users file. None of them contains a password or a hash.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    #[error("cannot read users file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("users file {} line {line}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: LineError,
    },
    #[error(
        "user name {name:?} is not allowed: it must not be empty, contain ':', whitespace or \
         control characters, or start with '#'"
    )]
    InvalidName { name: String },
    #[error("realm {realm:?} is not {REALM_NAME_RULE}")]
    InvalidRealm { realm: String },
    #[error("a user needs at least one realm")]
    NoRealm,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("hashing the password failed: {source}")]
    Hash { source: password_hash::Error },
    #[error("cannot update users file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// [`change_password`] for a user the file does not have (removed since the login).
    #[error("user {name:?} is not in the users file")]
    NoSuchUser { name: String },
    /// [`change_password`] with a hash the file could not hold.
    #[error("the new hash is unusable: {reason}")]
    InvalidHash { reason: LineError },
}

struct Entry {
    realms: Vec<String>,
    hash: String,
    attributes: UserAttributes,
    /// 1-based line number, for duplicate reports and in-place replacement.
    line: usize,
}

/// A loaded users file.
pub struct UsersFile {
    users: BTreeMap<String, Entry>,
    limits: HashLimits,
}

// Hand-written so that hashes stay out of logs and panics.
impl fmt::Debug for UsersFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.users.iter().map(|(n, e)| (n, &e.realms)))
            .finish()
    }
}

/// The optional fourth field of a users-file line (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAttributes {
    /// `totp=`: the user's TOTP secret, asked for in realms with `second_factor = "totp"`.
    pub totp: Option<TotpSecret>,
    /// `changed=`: when the password was set, in Unix seconds. `None`: unknown (a line
    /// written before the attribute existed), which never counts as expired.
    pub changed: Option<u64>,
    /// `must_change`: the next login must set a new password before it gets a session.
    pub must_change: bool,
}

/// Attribute names as written.
const ATTR_TOTP: &str = "totp";
const ATTR_CHANGED: &str = "changed";
const ATTR_MUST_CHANGE: &str = "must_change";

impl UserAttributes {
    /// Parses the fourth field.
    fn parse(field: &str) -> Result<UserAttributes, LineError> {
        let mut attrs = UserAttributes::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in field.split(',') {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (item, None),
            };
            let bad = |reason: &str| LineError::BadAttribute {
                attribute: shown_attribute(name),
                reason: reason.to_string(),
            };
            if seen.contains(&name) {
                return Err(bad("given twice"));
            }
            match (name, value) {
                (ATTR_TOTP, Some(v)) => {
                    attrs.totp = Some(TotpSecret::from_base32(v).map_err(|e| bad(&e.to_string()))?);
                }
                (ATTR_CHANGED, Some(v)) => {
                    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
                    attrs.changed = Some(
                        digits
                            .then(|| v.parse::<u64>().ok())
                            .flatten()
                            .ok_or_else(|| bad("not a number of seconds since 1970"))?,
                    );
                }
                (ATTR_MUST_CHANGE, None) => attrs.must_change = true,
                (ATTR_TOTP | ATTR_CHANGED, None) => return Err(bad("needs a value (name=value)")),
                (ATTR_MUST_CHANGE, Some(_)) => return Err(bad("takes no value")),
                ("", _) => return Err(bad("empty")),
                _ => return Err(bad("unknown (totp, changed and must_change are known)")),
            }
            seen.push(name);
        }
        Ok(attrs)
    }

    /// The fourth field, or `None` when there is nothing to write (the line then has the
    /// three fields of a user without attributes).
    fn render(&self) -> Option<String> {
        let mut items = Vec::new();
        if let Some(secret) = &self.totp {
            items.push(format!("{ATTR_TOTP}={}", secret.to_base32()));
        }
        if let Some(changed) = self.changed {
            items.push(format!("{ATTR_CHANGED}={changed}"));
        }
        if self.must_change {
            items.push(ATTR_MUST_CHANGE.to_string());
        }
        (!items.is_empty()).then(|| items.join(","))
    }

    /// Whether the password must be changed at `now_unix`: `must_change`, or, with a
    /// `max_age`, a `changed` time at least that long ago. An unknown `changed` is not
    /// expired: files from before the attribute would otherwise lock every user out at once.
    pub fn password_expired(&self, max_age: Option<std::time::Duration>, now_unix: u64) -> bool {
        if self.must_change {
            return true;
        }
        match (max_age, self.changed) {
            (Some(age), Some(changed)) => now_unix.saturating_sub(changed) >= age.as_secs(),
            _ => false,
        }
    }
}

/// An attribute's name for an error message: shown when it looks like a name, else a
/// placeholder, so that a secret written without `totp=` is not echoed into a log.
fn shown_attribute(name: &str) -> String {
    if name.is_empty() {
        return "(empty)".to_string();
    }
    let looks_like_a_name =
        (1..=16).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if looks_like_a_name {
        name.to_string()
    } else {
        "(name not shown)".to_string()
    }
}

/// One users-file line.
fn render_line(name: &str, realms: &[String], hash: &str, attrs: &UserAttributes) -> String {
    let mut line = format!("{name}:{}:{hash}", realms.join(","));
    if let Some(field) = attrs.render() {
        line.push(':');
        line.push_str(&field);
    }
    line
}

/// What [`add_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// The user is new.
    Added,
    /// The user existed; their hash and realms were replaced.
    Replaced,
}

/// Parses the file's text, with every hash within `limits`. `path` is only for error
/// messages.
fn parse(
    text: &str,
    path: &Path,
    limits: &HashLimits,
) -> Result<BTreeMap<String, Entry>, UsersError> {
    let mut users: BTreeMap<String, Entry> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let corrupt = |reason| UsersError::Corrupt {
            path: path.to_path_buf(),
            line,
            reason,
        };
        // Tolerate CRLF from hand edits on other systems.
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        if content.trim().is_empty() || content.starts_with('#') {
            continue;
        }
        // PHC strings hold no ':', so a fourth ':' starts the attributes.
        let mut fields = content.splitn(4, ':');
        let (Some(name), Some(realms), Some(hash)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(corrupt(LineError::MissingField));
        };
        let attributes = fields.next();
        if !user_name_ok(name) {
            return Err(corrupt(LineError::BadName {
                name: name.to_string(),
            }));
        }
        let realms: Vec<String> = realms.split(',').map(str::to_string).collect();
        if let Some(bad) = realms.iter().find(|r| !realm_name_ok(r)) {
            return Err(corrupt(LineError::BadRealm { realm: bad.clone() }));
        }
        check_hash(hash, limits).map_err(corrupt)?;
        let attributes = attributes
            .map(UserAttributes::parse)
            .transpose()
            .map_err(corrupt)?
            .unwrap_or_default();
        if let Some(first) = users.get(name) {
            return Err(corrupt(LineError::Duplicate {
                name: name.to_string(),
                first_line: first.line,
            }));
        }
        users.insert(
            name.to_string(),
            Entry {
                realms,
                hash: hash.to_string(),
                attributes,
                line,
            },
        );
    }
    Ok(users)
}

fn check_hash(hash: &str, limits: &HashLimits) -> Result<(), LineError> {
    let parsed = PasswordHash::new(hash).map_err(|e| LineError::BadHash {
        reason: e.to_string(),
    })?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return Err(LineError::NotArgon2id {
            algorithm: parsed.algorithm.to_string(),
        });
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(LineError::BadHash {
            reason: "no salt or no hash output".to_string(),
        });
    }
    limits
        .check(&parsed)
        .map_err(|source| LineError::Unusable { source })?;
    Ok(())
}

/// Hashes `password` as argon2id with the crate's default (OWASP-recommended) parameters and
/// a fresh 16-byte salt.
fn hash_password(password: &[u8]) -> Result<String, password_hash::Error> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())?;
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

/// A hash that unknown users are verified against, so that a login for a user who does not
/// exist costs as much time as one with a wrong password. Made with the same default
/// parameters as every hash [`add_user`] writes, from a random password nobody knows.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password(&rand::random::<[u8; 32]>())
            .unwrap_or_else(|e| unreachable!("argon2 rejected its own default parameters: {e}"))
    })
}

impl UsersFile {
    /// Reads and checks the whole file, every hash within `limits`. A missing file is an
    /// error: a gateway with no users file would refuse everyone, which is better said at
    /// start-up.
    pub fn load(path: &Path, limits: &HashLimits) -> Result<UsersFile, UsersError> {
        let text = fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let users = parse(&text, path, limits)?;
        // Pay for the dummy hash now rather than during the first unknown-user login, whose
        // extra delay would otherwise reveal that the user does not exist.
        dummy_hash();
        Ok(UsersFile {
            users,
            limits: *limits,
        })
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The realms `name` may log in to, if the user exists.
    pub fn realms(&self, name: &str) -> Option<&[String]> {
        self.users.get(name).map(|e| e.realms.as_slice())
    }

    /// The attributes of `name` (TOTP secret, password age), if the user exists.
    pub fn attributes(&self, name: &str) -> Option<&UserAttributes> {
        self.users.get(name).map(|e| &e.attributes)
    }

    /// Checks a login with memory of its own, allocated for this one check. The gateway uses
    /// [`UsersFile::verify_with`] and its hashing workers' memory instead.
    pub fn verify(&self, realm: &str, name: &str, password: &[u8]) -> Result<UserId, AuthError> {
        self.verify_with(&mut HashMemory::new(self.limits), realm, name, password)
    }

    /// Checks a login, hashing into `memory`. The argon2 check runs whether or not the user
    /// exists (against a dummy hash when not) and before the realm is looked at, so the time
    /// taken says nothing about which names exist or which realms they have. The comparison
    /// is constant-time.
    pub fn verify_with(
        &self,
        memory: &mut HashMemory,
        realm: &str,
        name: &str,
        password: &[u8],
    ) -> Result<UserId, AuthError> {
        let entry = self.users.get(name);
        let stored: &str = match entry {
            Some(e) => &e.hash,
            None => dummy_hash(),
        };
        let hash_error = |source| AuthError::Hash {
            name: name.to_string(),
            source,
        };
        let hash = PasswordHash::new(stored).map_err(|e| hash_error(HashError::Phc(e)))?;
        let matches = memory.verify(&hash, password).map_err(hash_error)?;
        if entry.is_none() {
            return Err(AuthError::UnknownUser);
        }
        if !matches {
            return Err(AuthError::WrongPassword {
                name: name.to_string(),
            });
        }
        self.member(realm, name)
    }

    /// Checks that `name` exists and may log in to `realm`, without a password: for logins
    /// whose proof is a client certificate.
    pub fn member(&self, realm: &str, name: &str) -> Result<UserId, AuthError> {
        let entry = self.users.get(name).ok_or(AuthError::UnknownUser)?;
        if !entry.realms.iter().any(|r| r == realm) {
            return Err(AuthError::RealmNotAllowed {
                name: name.to_string(),
                realm: realm.to_string(),
            });
        }
        Ok(UserId {
            name: name.to_string(),
        })
    }
}

/// What [`add_user_with`] sets besides the realms and the password.
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// A new TOTP secret. `None` keeps the secret a replaced user had (resetting a password
    /// must not silently drop their second factor); a new user then has none.
    pub totp: Option<TotpSecret>,
    /// The user must change the password at the next login.
    pub must_change: bool,
    /// Now, in Unix seconds: the password's `changed` time.
    pub now_unix: u64,
}

/// Now in Unix seconds, for [`AddOptions::now_unix`] and [`change_password`].
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// [`add_user_with`] with the password set now, no new TOTP secret and no forced change.
pub fn add_user(
    path: &Path,
    name: &str,
    realms: &[String],
    password: &[u8],
) -> Result<AddOutcome, UsersError> {
    let options = AddOptions {
        now_unix: unix_now(),
        ..AddOptions::default()
    };
    add_user_with(path, name, realms, password, &options)
}

/// Adds `name` with `realms` and an argon2id hash of `password` to the users file at `path`,
/// or replaces that user's realms and hash. Creates the file (mode 0600) if it does not exist.
/// The line gets `changed=` (now), `must_change` if asked, and the TOTP secret of `options`
/// (or keeps the one it had).
///
/// The update is atomic and serialised with other writers (see the module docs). A corrupt
/// file is never rewritten. Other lines, comments included, are kept as they are.
pub fn add_user_with(
    path: &Path,
    name: &str,
    realms: &[String],
    password: &[u8],
    options: &AddOptions,
) -> Result<AddOutcome, UsersError> {
    if !user_name_ok(name) {
        return Err(UsersError::InvalidName {
            name: name.to_string(),
        });
    }
    if realms.is_empty() {
        return Err(UsersError::NoRealm);
    }
    if let Some(bad) = realms.iter().find(|r| !realm_name_ok(r)) {
        return Err(UsersError::InvalidRealm { realm: bad.clone() });
    }
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    let hash = hash_password(password).map_err(|source| UsersError::Hash { source })?;
    update(path, |existing| {
        let new_line = |old: Option<&UserAttributes>| {
            let attrs = UserAttributes {
                totp: options
                    .totp
                    .clone()
                    .or_else(|| old.and_then(|a| a.totp.clone())),
                changed: Some(options.now_unix),
                must_change: options.must_change,
            };
            render_line(name, realms, &hash, &attrs)
        };
        Ok(match existing {
            None => (format!("{HEADER}{}\n", new_line(None)), AddOutcome::Added),
            Some((text, users)) => match users.get(name) {
                Some(entry) => (
                    replace_line(text, entry.line, &new_line(Some(&entry.attributes))),
                    AddOutcome::Replaced,
                ),
                None => {
                    let mut out = text.to_string();
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str(&new_line(None));
                    out.push('\n');
                    (out, AddOutcome::Added)
                }
            },
        })
    })
}

/// Replaces the password hash of `name` with `new_hash` (made by the caller, on a hashing
/// worker), sets `changed` to `now_unix` and clears `must_change`; the realms and the TOTP
/// secret stay. The file is re-read under the writers' lock, so a change made since the
/// caller last read it (another user added, this user's realms edited) is kept. Nothing is
/// written on any error.
pub fn change_password(
    path: &Path,
    name: &str,
    new_hash: &str,
    now_unix: u64,
) -> Result<(), UsersError> {
    check_hash(new_hash, &HashLimits::CEILING)
        .map_err(|reason| UsersError::InvalidHash { reason })?;
    update(path, |existing| {
        let no_user = || UsersError::NoSuchUser {
            name: name.to_string(),
        };
        let (text, users) = existing.ok_or_else(no_user)?;
        let entry = users.get(name).ok_or_else(no_user)?;
        let attrs = UserAttributes {
            changed: Some(now_unix),
            must_change: false,
            ..entry.attributes.clone()
        };
        let line = render_line(name, &entry.realms, new_hash, &attrs);
        Ok((replace_line(text, entry.line, &line), ()))
    })
}

/// `text` with line `number` (1-based) replaced by `line`; every line ends with a newline.
fn replace_line(text: &str, number: usize, line: &str) -> String {
    let mut out = String::with_capacity(text.len() + line.len());
    for (i, l) in text.lines().enumerate() {
        out.push_str(if i + 1 == number { line } else { l });
        out.push('\n');
    }
    out
}

/// The users file as [`update`] hands it to an edit: its text and its parsed users.
type Current<'a> = Option<(&'a str, &'a BTreeMap<String, Entry>)>;

/// Read-modify-write of the users file at `path` under the writers' lock: `edit` gets the
/// current contents (`None` when there is no file yet) and returns the new text, which
/// replaces the file atomically. A corrupt file is refused before `edit` sees it.
fn update<T>(
    path: &Path,
    edit: impl FnOnce(Current<'_>) -> Result<(String, T), UsersError>,
) -> Result<T, UsersError> {
    let write_err = |source| UsersError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Replace the file a symlink points to, not the symlink.
    let path = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(write_err(e)),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_handle = File::open(&dir).map_err(write_err)?;
    // Held until the function returns: read-modify-write must not interleave with another
    // writer, or one of the two changes would be lost. The directory rather than a lock file
    // beside the users file: the lock needs no file of its own to create, leave behind or
    // get permissions wrong on.
    dir_handle.lock().map_err(write_err)?;

    let existing = match fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(UsersError::Read { path, source }),
    };
    let (text, outcome) = match &existing {
        None => edit(None)?,
        Some(text) => {
            // Any hash some gateway configuration could accept is kept as it is.
            let users = parse(text, &path, &HashLimits::CEILING)?;
            edit(Some((text, &users)))?
        }
    };
    let owner = fs::metadata(&path).ok().map(|m| (m.uid(), m.gid()));
    write_atomically(&path, &dir, &dir_handle, text.as_bytes(), owner).map_err(|source| {
        UsersError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(outcome)
}

/// Removes the temporary file unless the rename went through.
struct TempFile<'a> {
    path: &'a Path,
    renamed: bool,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = fs::remove_file(self.path);
        }
    }
}

fn write_atomically(
    path: &Path,
    dir: &Path,
    dir_handle: &File,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let base = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?
        .to_string_lossy();
    let tmp_path = dir.join(format!(
        ".{base}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(USERS_FILE_MODE)
        .open(&tmp_path)?;
    let mut tmp = TempFile {
        path: &tmp_path,
        renamed: false,
    };
    // The umask may have taken bits away from the mode above; make it exactly 0600.
    file.set_permissions(Permissions::from_mode(USERS_FILE_MODE))?;
    // Keep the owner of an existing file: root running adduser on a file owned by the
    // gateway's user must not leave a file the gateway can no longer read.
    if let Some((uid, gid)) = owner {
        let meta = file.metadata()?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
    }
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    #[cfg(test)]
    fault::before_rename()?;
    fs::rename(&tmp_path, path)?;
    tmp.renamed = true;
    // The rename lives in the directory; without this a crash could bring the old file back.
    dir_handle.sync_all()
}

/// A failure injected into the next write of this thread, for the tests of what a failed
/// write leaves behind.
#[cfg(test)]
mod fault {
    use std::{cell::Cell, io};

    thread_local! {
        static BEFORE_RENAME: Cell<bool> = const { Cell::new(false) };
    }

    /// Makes this thread's next write fail after the temporary file is complete.
    pub(super) fn fail_next_rename() {
        BEFORE_RENAME.with(|f| f.set(true));
    }

    pub(super) fn before_rename() -> io::Result<()> {
        if BEFORE_RENAME.with(|f| f.replace(false)) {
            return Err(io::Error::other("injected failure before the rename"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realms(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn load(path: &Path) -> Result<UsersFile, UsersError> {
        UsersFile::load(path, &HashLimits::default())
    }

    fn users_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("users")
    }

    /// Only the users file itself may be in the directory: no temporary file left behind.
    fn assert_only_users_file(dir: &tempfile::TempDir) {
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["users".to_string()],
            "directory holds {names:?}"
        );
    }

    #[test]
    fn add_then_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        let outcome = add_user(&path, "alice", &realms(&["Users"]), b"s3cret").unwrap();
        assert_eq!(outcome, AddOutcome::Added);
        let users = load(&path).unwrap();
        assert_eq!(users.len(), 1);
        let id = users.verify("Users", "alice", b"s3cret").unwrap();
        assert_eq!(id.name(), "alice");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("alice:Users:$argon2id$v=19$"), "{text}");
        assert!(!text.contains("s3cret"));
        assert_only_users_file(&dir);
    }

    #[test]
    fn wrong_password_unknown_user_and_realm() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users", "Admin Users"]), b"pw-a").unwrap();
        add_user(&path, "bob", &realms(&["Users"]), b"pw-b").unwrap();
        let users = load(&path).unwrap();
        assert_eq!(users.len(), 2);

        match users.verify("Users", "alice", b"pw-b") {
            Err(AuthError::WrongPassword { name }) => assert_eq!(name, "alice"),
            other => panic!("expected a wrong password, got {other:?}"),
        }
        assert!(matches!(
            users.verify("Users", "carol", b"pw-a"),
            Err(AuthError::UnknownUser)
        ));
        match users.verify("Admin Users", "bob", b"pw-b") {
            Err(AuthError::RealmNotAllowed { name, realm }) => {
                assert_eq!((name.as_str(), realm.as_str()), ("bob", "Admin Users"));
            }
            other => panic!("expected a realm refusal, got {other:?}"),
        }
        // The wrong realm is only revealed to someone who knows the password.
        assert!(matches!(
            users.verify("Admin Users", "bob", b"nope"),
            Err(AuthError::WrongPassword { .. })
        ));
        assert_eq!(
            users
                .verify("Admin Users", "alice", b"pw-a")
                .unwrap()
                .name(),
            "alice"
        );
        assert_eq!(
            users.realms("alice").unwrap(),
            realms(&["Users", "Admin Users"])
        );
    }

    #[test]
    fn replacing_a_user_changes_the_hash_and_keeps_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users"]), b"old").unwrap();
        add_user(&path, "bob", &realms(&["Users"]), b"bob").unwrap();
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("# a note the admin wrote\n");
        fs::write(&path, &text).unwrap();
        let bob_line = text
            .lines()
            .find(|l| l.starts_with("bob:"))
            .unwrap()
            .to_string();

        let outcome = add_user(&path, "alice", &realms(&["Admins"]), b"new").unwrap();
        assert_eq!(outcome, AddOutcome::Replaced);
        let users = load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert!(matches!(
            users.verify("Admins", "alice", b"old"),
            Err(AuthError::WrongPassword { .. })
        ));
        users.verify("Admins", "alice", b"new").unwrap();
        let after = fs::read_to_string(&path).unwrap();
        assert!(after.contains(&bob_line));
        assert!(after.contains("# a note the admin wrote\n"));
        let alice_lines: Vec<_> = after.lines().filter(|l| l.starts_with("alice:")).collect();
        assert_eq!(alice_lines.len(), 1, "{after}");
        assert!(alice_lines[0].starts_with("alice:Admins:$argon2id$"));
        // Alice stays where she was, before bob.
        assert!(after.find("alice:").unwrap() < after.find("bob:").unwrap());
        assert_only_users_file(&dir);
    }

    #[test]
    fn file_is_created_0600_and_stays_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users"]), b"pw").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        // Even if someone loosened it, the next update writes a 0600 file.
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        add_user(&path, "bob", &realms(&["Users"]), b"pw").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn update_replaces_the_file_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users"]), b"pw").unwrap();
        let before = fs::metadata(&path).unwrap().ino();
        // A reader holding the old file keeps seeing a complete old version.
        let old_text = fs::read_to_string(&path).unwrap();
        let held = File::open(&path).unwrap();
        add_user(&path, "bob", &realms(&["Users"]), b"pw").unwrap();
        let after = fs::metadata(&path).unwrap().ino();
        assert_ne!(
            before, after,
            "the file was rewritten in place, not renamed over"
        );
        let still = io::read_to_string(held).unwrap();
        assert_eq!(still, old_text);
        assert_only_users_file(&dir);
    }

    #[test]
    fn symlinked_users_file_is_updated_behind_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-users");
        let link = users_path(&dir);
        add_user(&real, "alice", &realms(&["Users"]), b"pw").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        add_user(&link, "bob", &realms(&["Users"]), b"pw").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(load(&real).unwrap().len(), 2);
    }

    #[test]
    fn bad_names_realms_and_passwords_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        for name in ["", "a:b", "a b", "tab\tname", "#alice", "new\nline"] {
            assert!(
                matches!(
                    add_user(&path, name, &realms(&["Users"]), b"pw"),
                    Err(UsersError::InvalidName { .. })
                ),
                "{name:?} was accepted"
            );
        }
        for realm in ["", "a,b", "a:b", " Users", "Users "] {
            assert!(
                matches!(
                    add_user(&path, "alice", &realms(&[realm]), b"pw"),
                    Err(UsersError::InvalidRealm { .. })
                ),
                "{realm:?} was accepted"
            );
        }
        assert!(matches!(
            add_user(&path, "alice", &[], b"pw"),
            Err(UsersError::NoRealm)
        ));
        assert!(matches!(
            add_user(&path, "alice", &realms(&["Users"]), b""),
            Err(UsersError::EmptyPassword)
        ));
        assert!(!path.exists(), "a refused user must not create the file");
    }

    #[test]
    fn corrupt_lines_are_reported_with_their_number_and_never_rewritten() {
        let good = {
            let dir = tempfile::tempdir().unwrap();
            let path = users_path(&dir);
            add_user(&path, "alice", &realms(&["Users"]), b"pw").unwrap();
            let text = fs::read_to_string(&path).unwrap();
            text.lines()
                .find(|l| l.starts_with("alice:"))
                .unwrap()
                .to_string()
        };
        let hash = good.splitn(3, ':').nth(2).unwrap();
        let cases: Vec<(String, LineError)> = vec![
            ("alice-only".into(), LineError::MissingField),
            ("alice:Users".into(), LineError::MissingField),
            (
                format!(" alice:Users:{hash}"),
                LineError::BadName {
                    name: " alice".into(),
                },
            ),
            (
                format!("alice::{hash}"),
                LineError::BadRealm { realm: "".into() },
            ),
            (
                format!("alice:Users,:{hash}"),
                LineError::BadRealm { realm: "".into() },
            ),
            (
                "alice:Users:not-a-hash".into(),
                LineError::BadHash {
                    reason: String::new(),
                },
            ),
            (
                "alice:Users:$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                LineError::NotArgon2id {
                    algorithm: "argon2i".into(),
                },
            ),
            (
                format!("{good}\nalice:Admins:{hash}"),
                LineError::Duplicate {
                    name: "alice".into(),
                    first_line: 3,
                },
            ),
        ];
        for (body, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = users_path(&dir);
            let text = format!("# header\n\n{body}\n");
            fs::write(&path, &text).unwrap();
            let expected_line = 2 + body.lines().count();
            let err = load(&path).unwrap_err();
            match &err {
                UsersError::Corrupt { line, reason, .. } => {
                    assert_eq!(*line, expected_line, "{body:?}: {err}");
                    match (reason, &expected) {
                        // The PHC parser's wording is not ours to pin.
                        (LineError::BadHash { .. }, LineError::BadHash { .. }) => {}
                        _ => assert_eq!(reason, &expected, "{body:?}"),
                    }
                }
                other => panic!("{body:?}: expected a corrupt line, got {other:?}"),
            }
            assert!(
                err.to_string().contains(&format!("line {expected_line}:")),
                "{err}"
            );
            // The error names the line but does not quote the hash.
            assert!(!err.to_string().contains("$argon2"), "{err}");
            let add = add_user(&path, "bob", &realms(&["Users"]), b"pw").unwrap_err();
            assert!(matches!(add, UsersError::Corrupt { .. }), "{add:?}");
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                text,
                "{body:?} was rewritten"
            );
            assert_only_users_file(&dir);
        }
    }

    #[test]
    fn missing_file_is_an_error_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&users_path(&dir)).unwrap_err();
        assert!(matches!(err, UsersError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("users"), "{err}");
    }

    #[test]
    fn debug_output_holds_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users"]), b"pw").unwrap();
        let users = load(&path).unwrap();
        let debug = format!("{users:?}");
        assert!(
            debug.contains("alice") && !debug.contains("argon2"),
            "{debug}"
        );
        let err = users.verify("Users", "alice", b"hunter2").unwrap_err();
        assert!(!format!("{err:?}{err}").contains("hunter2"));
    }

    #[test]
    fn unknown_users_are_checked_against_a_hash_with_the_default_cost() {
        // Equal cost is what hides whether a user exists; compare the parameters rather than
        // wall-clock time, which would make a flaky test.
        let dummy = PasswordHash::new(dummy_hash()).unwrap();
        check_hash(dummy_hash(), &HashLimits::default()).unwrap();
        let real_text = hash_password(b"pw").unwrap();
        let real = PasswordHash::new(&real_text).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.params, real.params);
        let params = argon2::Params::try_from(&dummy).unwrap();
        let default = argon2::Params::default();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
    }

    #[test]
    fn crlf_lines_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users"]), b"pw").unwrap();
        let crlf = fs::read_to_string(&path).unwrap().replace('\n', "\r\n");
        fs::write(&path, crlf).unwrap();
        load(&path)
            .unwrap()
            .verify("Users", "alice", b"pw")
            .unwrap();
    }

    /// A hash line with `params` (and a valid-looking salt and output).
    fn line_with_params(name: &str, params: &str) -> String {
        format!(
            "{name}:Users:$argon2id$v=19${params}$c2l4dGVlbiBieXRlIHNsdA$\
             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        )
    }

    #[test]
    fn hashes_beyond_the_cost_bound_make_the_file_unusable_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users"]), b"pw").unwrap();
        // 4 TiB: never allocated, refused when the file is read.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(&line_with_params("mallory", "m=4294967295,t=1,p=1"));
        text.push('\n');
        fs::write(&path, &text).unwrap();
        let err = load(&path).unwrap_err();
        match &err {
            UsersError::Corrupt {
                line,
                reason: LineError::Unusable { source },
                ..
            } => {
                assert_eq!(*line, 4);
                assert_eq!(
                    *source,
                    HashError::TooCostly {
                        param: "m",
                        value: u32::MAX,
                        max: HashLimits::DEFAULT_MEMORY_KIB
                    }
                );
            }
            other => panic!("expected a refused hash, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "users file {} line 4: the hash cannot be checked: the hash asks for argon2 \
                 m=4294967295, more than the 65536 allowed",
                path.display()
            )
        );
        // A gateway configured for more accepts a costlier hash; adduser keeps any line some
        // configuration could accept, and refuses to rewrite one none could.
        let roomy = HashLimits {
            max_memory_kib: HashLimits::MAX_MEMORY_KIB,
        };
        text = text.replace("m=4294967295", "m=1048576");
        fs::write(&path, &text).unwrap();
        assert!(load(&path).is_err());
        assert_eq!(UsersFile::load(&path, &roomy).unwrap().len(), 2);
        add_user(&path, "bob", &realms(&["Users"]), b"pw").unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains("m=1048576"));
        let huge = text.replace("m=1048576", "m=1048577");
        fs::write(&path, &huge).unwrap();
        assert!(matches!(
            add_user(&path, "carol", &realms(&["Users"]), b"pw"),
            Err(UsersError::Corrupt {
                reason: LineError::Unusable { .. },
                ..
            })
        ));
        for params in ["m=19456,t=11,p=1", "m=19456,t=2,p=17"] {
            let body = format!("{}\n", line_with_params("mallory", params));
            fs::write(&path, &body).unwrap();
            assert!(
                matches!(
                    load(&path),
                    Err(UsersError::Corrupt {
                        reason: LineError::Unusable { .. },
                        ..
                    })
                ),
                "{params}"
            );
        }
    }

    #[test]
    fn member_checks_the_user_and_realm_without_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users", "Admins"]), b"pw").unwrap();
        let users = load(&path).unwrap();
        assert_eq!(users.member("Admins", "alice").unwrap().name(), "alice");
        assert!(matches!(
            users.member("Devices", "alice"),
            Err(AuthError::RealmNotAllowed { .. })
        ));
        assert!(matches!(
            users.member("Users", "bob"),
            Err(AuthError::UnknownUser)
        ));
    }

    fn line_of(path: &Path, name: &str) -> String {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no line for {name}"))
            .to_string()
    }

    #[test]
    fn attributes_are_written_read_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        let secret = TotpSecret::generate();
        let options = AddOptions {
            totp: Some(secret.clone()),
            must_change: true,
            now_unix: 1_767_225_600,
        };
        add_user_with(&path, "alice", &realms(&["Users"]), b"pw", &options).unwrap();
        let line = line_of(&path, "alice");
        assert!(
            line.ends_with(&format!(
                ":totp={},changed=1767225600,must_change",
                secret.to_base32()
            )),
            "{line}"
        );
        // A three-field line (as written before attributes) stays valid and means none.
        let mut text = fs::read_to_string(&path).unwrap();
        let bob_hash = hash_password(b"bob").unwrap();
        text.push_str(&format!("bob:Users:{bob_hash}\n"));
        fs::write(&path, &text).unwrap();
        let users = load(&path).unwrap();
        let alice = users.attributes("alice").unwrap();
        assert_eq!(alice.totp.as_ref(), Some(&secret));
        assert_eq!(
            (alice.changed, alice.must_change),
            (Some(1_767_225_600), true)
        );
        assert_eq!(users.attributes("bob").unwrap(), &UserAttributes::default());
        users.verify("Users", "alice", b"pw").unwrap();
        users.verify("Users", "bob", b"bob").unwrap();
        // Parse and render are inverse for every combination.
        for totp in [None, Some(secret.clone())] {
            for changed in [None, Some(0), Some(u64::MAX)] {
                for must_change in [false, true] {
                    let attrs = UserAttributes {
                        totp: totp.clone(),
                        changed,
                        must_change,
                    };
                    let parsed = match attrs.render() {
                        None => UserAttributes::default(),
                        Some(field) => UserAttributes::parse(&field).unwrap(),
                    };
                    assert_eq!(parsed, attrs);
                }
            }
        }
        // Replacing the user without a new secret keeps it; the flag goes unless asked for.
        add_user(&path, "alice", &realms(&["Users"]), b"pw2").unwrap();
        let users = load(&path).unwrap();
        let alice = users.attributes("alice").unwrap();
        assert_eq!(alice.totp.as_ref(), Some(&secret));
        assert!(!alice.must_change);
        assert!(alice.changed.unwrap() > 1_767_225_600);
        // Bob's hand-written line is kept byte for byte.
        assert_eq!(line_of(&path, "bob"), format!("bob:Users:{bob_hash}"));
    }

    #[test]
    fn bad_attributes_name_the_line_and_attribute_never_the_secret() {
        let hash = hash_password(b"pw").unwrap();
        let secret = TotpSecret::generate().to_base32();
        let cases: Vec<(String, &str, &str)> = vec![
            ("bogus".into(), "bogus", "unknown"),
            (format!("totp={}", &secret[..16]), "totp", "bytes"),
            ("totp=abc!".into(), "totp", "base32"),
            ("totp".into(), "totp", "needs a value"),
            ("changed=yesterday".into(), "changed", "seconds"),
            ("changed=-5".into(), "changed", "seconds"),
            (
                "changed=99999999999999999999999".into(),
                "changed",
                "seconds",
            ),
            ("must_change=yes".into(), "must_change", "no value"),
            ("must_change,must_change".into(), "must_change", "twice"),
            ("changed=1,".into(), "(empty)", "empty"),
            // A secret pasted without its name must not be echoed.
            (secret.clone(), "(name not shown)", "unknown"),
        ];
        for (field, attribute, reason) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = users_path(&dir);
            fs::write(&path, format!("# users\nalice:Users:{hash}:{field}\n")).unwrap();
            let err = load(&path).unwrap_err();
            match &err {
                UsersError::Corrupt {
                    line: 2,
                    reason:
                        LineError::BadAttribute {
                            attribute: a,
                            reason: r,
                        },
                    ..
                } => {
                    assert_eq!(a, attribute, "{field}");
                    assert!(r.contains(reason), "{field}: {r}");
                }
                other => panic!("{field}: expected a bad attribute on line 2, got {other:?}"),
            }
            let message = err.to_string();
            assert!(message.contains("line 2: attribute"), "{message}");
            assert!(!message.contains(&secret[..16]), "{message}");
            assert!(
                add_user(&path, "bob", &realms(&["Users"]), b"pw").is_err(),
                "a file with a bad attribute was rewritten"
            );
        }
    }

    #[test]
    fn password_expiry_follows_must_change_and_max_age() {
        let day = std::time::Duration::from_secs(86_400);
        let now = 1_800_000_000;
        let attrs = |changed, must_change| UserAttributes {
            totp: None,
            changed,
            must_change,
        };
        assert!(attrs(Some(now), true).password_expired(None, now));
        assert!(!attrs(Some(now - 89 * 86_400), false).password_expired(Some(90 * day), now));
        assert!(attrs(Some(now - 90 * 86_400), false).password_expired(Some(90 * day), now));
        assert!(!attrs(Some(0), false).password_expired(None, now));
        // Unknown age: not expired, whatever the limit.
        assert!(!attrs(None, false).password_expired(Some(day), now));
    }

    #[test]
    fn change_password_replaces_the_hash_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        let secret = TotpSecret::generate();
        let options = AddOptions {
            totp: Some(secret.clone()),
            must_change: true,
            now_unix: 1000,
        };
        add_user_with(
            &path,
            "alice",
            &realms(&["Users", "Admins"]),
            b"old",
            &options,
        )
        .unwrap();
        add_user(&path, "bob", &realms(&["Users"]), b"bob").unwrap();
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("# kept\n");
        fs::write(&path, &text).unwrap();
        let bob = line_of(&path, "bob");

        let new_hash = hash_password(b"new").unwrap();
        change_password(&path, "alice", &new_hash, 2000).unwrap();
        let users = load(&path).unwrap();
        users.verify("Admins", "alice", b"new").unwrap();
        assert!(users.verify("Admins", "alice", b"old").is_err());
        let alice = users.attributes("alice").unwrap();
        assert_eq!(alice.totp.as_ref(), Some(&secret));
        assert_eq!((alice.changed, alice.must_change), (Some(2000), false));
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(line_of(&path, "bob"), bob);
        assert!(after.ends_with("# kept\n"));
        assert!(after.find("alice:").unwrap() < after.find("bob:").unwrap());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert_only_users_file(&dir);
    }

    #[test]
    fn a_failed_password_change_leaves_the_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        add_user(&path, "alice", &realms(&["Users"]), b"old").unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        let new_hash = hash_password(b"new").unwrap();
        // The write fails after the temporary file is complete, before the rename.
        fault::fail_next_rename();
        let err = change_password(&path, "alice", &new_hash, 2000).unwrap_err();
        assert!(matches!(err, UsersError::Write { .. }), "{err:?}");
        // A user who is gone, or a hash that is not one, fails before anything is written.
        assert!(matches!(
            change_password(&path, "carol", &new_hash, 2000),
            Err(UsersError::NoSuchUser { .. })
        ));
        assert!(matches!(
            change_password(&path, "alice", "plaintext", 2000),
            Err(UsersError::InvalidHash { .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            inode,
            "the file was replaced"
        );
        load(&path)
            .unwrap()
            .verify("Users", "alice", b"old")
            .unwrap();
        assert_only_users_file(&dir);
        // And with no file at all, nothing is created.
        let missing = dir.path().join("missing");
        assert!(matches!(
            change_password(&missing, "alice", &new_hash, 2000),
            Err(UsersError::NoSuchUser { .. })
        ));
        assert!(!missing.exists());
    }

    #[test]
    fn concurrent_writers_do_not_lose_each_others_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = users_path(&dir);
        let names: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
        for name in &names {
            add_user(&path, name, &realms(&["Users"]), b"old").unwrap();
        }
        // Hashes made up front, so the threads contend on the file rather than on argon2.
        let hashes: Vec<String> = names
            .iter()
            .map(|n| hash_password(format!("new {n}").as_bytes()).unwrap())
            .collect();
        let barrier = std::sync::Barrier::new(names.len() + 1);
        std::thread::scope(|scope| {
            for (name, hash) in names.iter().zip(&hashes) {
                let (path, barrier) = (&path, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    change_password(path, name, hash, 5000).unwrap();
                });
            }
            // An adduser at the same time.
            let (path, barrier) = (&path, &barrier);
            scope.spawn(move || {
                barrier.wait();
                add_user(path, "newcomer", &realms(&["Users"]), b"hello").unwrap();
            });
        });
        let users = load(&path).unwrap();
        assert_eq!(users.len(), names.len() + 1);
        for name in &names {
            users
                .verify("Users", name, format!("new {name}").as_bytes())
                .unwrap_or_else(|e| panic!("{name}'s change was lost: {e}"));
            assert_eq!(users.attributes(name).unwrap().changed, Some(5000));
        }
        users.verify("Users", "newcomer", b"hello").unwrap();
        assert_only_users_file(&dir);
    }
}
