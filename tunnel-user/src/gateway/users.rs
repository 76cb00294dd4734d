//! The gateway's users file: who may log in, to which realms, and their argon2id hashes.
//!
//! This module owns the file format, password verification and the one writer of the file,
//! [`add_user`] (behind `tunnel-gateway adduser`). It never stores, logs or formats a password;
//! errors name users and line numbers, not secrets. It does not decide which realms exist
//! (that is `auth.realms` in the config) nor rate-limit attempts (see `super::ratelimit`).
//!
//! # Format
//!
//! UTF-8 text, one user per line:
//!
//! ```text
//! # comment lines and blank lines are ignored (and kept when the file is rewritten)
//! alice:Users:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$...
//! bob:Users,Admins:$argon2id$v=19$m=19456,t=2,p=1$...
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
//!   allocated for.
//!
//! A line that breaks any rule, or a user listed twice, makes the whole file unusable: the
//! error names the line, and [`add_user`] refuses to rewrite such a file rather than guess.

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

use super::hasher::{HashError, HashLimits, HashMemory};

/// The file mode of the users file: hashes can be attacked offline, so only the owner reads.
pub const USERS_FILE_MODE: u32 = 0o600;

/// What a new users file starts with.
const HEADER: &str = "\
# tunnel-gateway users file: one user per line, name:realm[,realm...]:argon2id-hash
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
    #[error("expected name:realm[,realm...]:argon2id-hash")]
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
}

struct Entry {
    realms: Vec<String>,
    hash: String,
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
        let mut fields = content.splitn(3, ':');
        let (Some(name), Some(realms), Some(hash)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(corrupt(LineError::MissingField));
        };
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

/// Adds `name` with `realms` and an argon2id hash of `password` to the users file at `path`,
/// or replaces that user's realms and hash. Creates the file (mode 0600) if it does not exist.
///
/// The update is atomic: the new contents go to a 0600 temporary file in the same directory,
/// which is fsynced and renamed over the old file, and then the directory is fsynced, so a
/// crash leaves either the old file or the new one. Concurrent `add_user` calls on the same
/// directory are serialised with an advisory lock on the directory. A corrupt file is never
/// rewritten. Other lines, comments included, are kept as they are.
pub fn add_user(
    path: &Path,
    name: &str,
    realms: &[String],
    password: &[u8],
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
    let new_line = format!("{name}:{}:{hash}", realms.join(","));

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
    // adduser, or one of the two users would be lost.
    dir_handle.lock().map_err(write_err)?;

    let existing = match fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(UsersError::Read { path, source }),
    };
    let (text, outcome) = match &existing {
        None => (format!("{HEADER}{new_line}\n"), AddOutcome::Added),
        Some(text) => {
            // Any hash some gateway configuration could accept is kept as it is.
            let users = parse(text, &path, &HashLimits::CEILING)?;
            match users.get(name) {
                Some(entry) => {
                    let mut out = String::with_capacity(text.len() + new_line.len());
                    for (i, line) in text.lines().enumerate() {
                        out.push_str(if i + 1 == entry.line { &new_line } else { line });
                        out.push('\n');
                    }
                    (out, AddOutcome::Replaced)
                }
                None => {
                    let mut out = text.clone();
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str(&new_line);
                    out.push('\n');
                    (out, AddOutcome::Added)
                }
            }
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
    fs::rename(&tmp_path, path)?;
    tmp.renamed = true;
    // The rename lives in the directory; without this a crash could bring the old file back.
    dir_handle.sync_all()
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
}
