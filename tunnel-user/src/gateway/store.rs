//! The session store: what the gateway keeps of its sessions beyond its process, so that a
//! gateway started again resumes the sessions it had (each client comes back with its DSID
//! cookie and gets its address again).
//!
//! One interface ([`SessionStore`]: `put`, `remove`, and what `open` found) over its
//! backend. The embedded backend keeps the sessions in memory and writes each change through
//! to `<state_dir>/sessions.log` before the caller goes on:
//!
//! ```text
//!   login, resume ──put(connected)──▶ ┐
//!   connection lost ──put(parked_until)─▶ ├─ one JSON line appended ─▶ sessions.log (0600)
//!   logout, timeout, end, expiry ─remove─▶ ┘      (rewritten whole when mostly dead lines)
//!   start: every line replayed ─▶ the sessions still valid ─▶ parked, leases claimed again
//! ```
//!
//! Invariants:
//! - The cookie itself is never written: records are keyed by its SHA-256 ([`CookieKey`]),
//!   so the file does not hand out sessions to whoever reads it.
//! - A record is what a resume needs: user, realm, address lease, when the login was made
//!   and ends, and, for a session without a connection, until when it may be resumed. A
//!   session that was connected when the process died may be resumed for the usual parked
//!   window after the start; one whose window or login ended meanwhile is dropped at start.
//! - A line that cannot be read (a torn last write, a damaged file) is skipped; if any was
//!   not the last line, the file is first copied aside (`sessions.log.bad-UNIXTIME`) and the
//!   log names the lines, so nothing is lost unseen. The file is then rewritten with what
//!   was read.
//! - Writes are appends of whole lines under one lock; a write that fails (disk full) is
//!   logged and counted, and the session goes on: the store serves resumption, it opens no
//!   path.

use std::{
    collections::HashMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tracing::warn;

use tokio::sync::mpsc;

use super::{
    Lease,
    redis_store::{RedisStore, Unavailable},
};

/// The embedded store's file in the state directory.
pub(crate) const STORE_FILE: &str = "sessions.log";

/// A store file larger than this is refused at start (a session's line is about 300
/// bytes; the address pools hold far fewer sessions than this allows).
const MAX_FILE_BYTES: u64 = 256 << 20;

/// A DSID cookie's SHA-256: how the store, and the table's parked sessions, know a session.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CookieKey([u8; 32]);

impl CookieKey {
    pub(crate) fn of(cookie: &str) -> CookieKey {
        CookieKey(Sha256::digest(cookie.as_bytes()).into())
    }

    pub(crate) fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn from_hex(text: &str) -> Option<CookieKey> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(CookieKey(key))
    }
}

impl fmt::Debug for CookieKey {
    /// The first bytes only, as the logs name cookies.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CookieKey({}…)", &self.hex()[..8])
    }
}

impl Serialize for CookieKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for CookieKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CookieKey, D::Error> {
        let text = String::deserialize(d)?;
        CookieKey::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a cookie key is 64 hex digits"))
    }
}

/// One session as the store keeps it. Times are UNIX seconds (they outlive the process).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredSession {
    pub key: CookieKey,
    pub id: u64,
    pub user: String,
    pub realm: String,
    pub peer: SocketAddr,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub logged_in: u64,
    /// The end of the login; none without a lifetime.
    pub ends: Option<u64>,
    /// None while connected; else until when it may be resumed.
    pub parked_until: Option<u64>,
}

impl StoredSession {
    pub(crate) fn lease(&self) -> Lease {
        Lease {
            ipv4: self.ipv4,
            ipv6: self.ipv6,
        }
    }

    /// Whether it can still be resumed at `now`.
    fn valid_at(&self, now: u64) -> bool {
        self.ends.is_none_or(|end| end > now) && self.parked_until.is_none_or(|until| until > now)
    }
}

/// One line of the store file.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Entry {
    Put(StoredSession),
    Del(CookieKey),
}

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("session store {path}: {what}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "session store {path}: {bytes} bytes is more than the {MAX_FILE_BYTES} a store holds; \
         move it away to start without the sessions it names"
    )]
    TooLarge { path: PathBuf, bytes: u64 },
}

/// What opening the store found.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The sessions still valid.
    pub sessions: Vec<StoredSession>,
    /// Sessions whose login or resumable window ended while the gateway was down.
    pub expired: usize,
    /// The 1-based numbers of lines that could not be read (a torn last line included).
    pub bad_lines: Vec<usize>,
    /// Where the file was copied before it was rewritten, when a line other than the last
    /// could not be read.
    pub kept_aside: Option<PathBuf>,
}

/// Opens the embedded store in `dir` as a gateway's start does (the file rewritten with what
/// was read) and returns the sessions still valid at `now` and the lines it could not read.
/// For the fuzz target.
#[doc(hidden)]
pub fn load_embedded(dir: &Path, now: u64) -> Result<(Vec<String>, Vec<usize>), StoreError> {
    let (_, loaded) = Embedded::open(dir, now)?;
    let users = loaded.sessions.into_iter().map(|s| s.user).collect();
    Ok((users, loaded.bad_lines))
}

/// The gateway's session store ([module docs](self)).
pub(crate) struct SessionStore {
    backend: Backend,
    stats: Arc<StoreStats>,
}

enum Backend {
    Embedded(Embedded),
    Redis(RedisStore),
}

/// The store's writes for the metrics: how many, how long, how many failed.
#[derive(Default)]
pub(crate) struct StoreStats {
    errors: AtomicU64,
    writes: AtomicU64,
    write_nanos: AtomicU64,
}

impl StoreStats {
    pub(crate) fn timed(&self, took: std::time::Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.write_nanos.fetch_add(took, Ordering::Relaxed);
    }

    /// Counts a failed write, and logs the 1st, 2nd, 4th, ... (one line per failing write
    /// would flood the log of a full disk or a Redis away for long).
    pub(crate) fn account(&self, result: io::Result<()>, store: &str) {
        if let Err(error) = result {
            let n = self.errors.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() || n == 0 {
                warn!(store, %error, failed_writes = n + 1, "the session store could not record a change: sessions go on, but a restart (or another gateway) may not resume them");
            }
        }
    }
}

impl SessionStore {
    /// Opens the embedded store in `dir` (created 0700 if missing) and reads it back.
    pub(crate) fn open_embedded(
        dir: &Path,
        now: u64,
    ) -> Result<(SessionStore, Loaded), StoreError> {
        let (backend, loaded) = Embedded::open(dir, now)?;
        Ok((
            SessionStore {
                backend: Backend::Embedded(backend),
                stats: Arc::default(),
            },
            loaded,
        ))
    }

    /// Opens the Redis store at `url` (`shown`: the URL without its password), which
    /// connects when first used. Sessions this gateway must drop (another took them over
    /// or ended them) arrive on the receiver.
    pub(crate) fn open_redis(
        url: &str,
        shown: String,
    ) -> Result<(SessionStore, mpsc::UnboundedReceiver<CookieKey>), Unavailable> {
        let stats = Arc::<StoreStats>::default();
        let (redis, lost) = RedisStore::open(url, shown, stats.clone())?;
        Ok((
            SessionStore {
                backend: Backend::Redis(redis),
                stats,
            },
            lost,
        ))
    }

    /// The cluster's store, when the sessions are shared with other gateways.
    pub(crate) fn shared(&self) -> Option<&RedisStore> {
        match &self.backend {
            Backend::Redis(r) => Some(r),
            Backend::Embedded(_) => None,
        }
    }

    /// Records `session` (new, or changed: connected, parked).
    pub(crate) fn put(&self, session: &StoredSession) {
        match &self.backend {
            Backend::Embedded(e) => self.write(e, Entry::Put(session.clone())),
            Backend::Redis(r) => r.put(session),
        }
    }

    /// Forgets a session (ended) and gives its addresses `lease` back; one not there is
    /// fine.
    pub(crate) fn remove(&self, key: &CookieKey, lease: &Lease) {
        match &self.backend {
            Backend::Embedded(e) => self.write(e, Entry::Del(*key)),
            Backend::Redis(r) => r.remove(key, lease),
        }
    }

    /// Waits until the writes queued so far are made (the Redis store's writer), `limit` at
    /// most.
    pub(crate) async fn flush(&self, limit: std::time::Duration) {
        if let Backend::Redis(r) = &self.backend {
            r.flush(limit).await;
        }
    }

    /// Writes made and the seconds they took in all (the store's latency, for the metrics).
    pub(crate) fn write_time(&self) -> (u64, f64) {
        (
            self.stats.writes.load(Ordering::Relaxed),
            self.stats.write_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    fn write(&self, embedded: &Embedded, entry: Entry) {
        let started = std::time::Instant::now();
        let result = embedded.write(entry);
        self.stats.timed(started.elapsed());
        self.stats
            .account(result, &embedded.path.display().to_string());
    }

    /// Writes that failed since the start.
    pub(crate) fn errors(&self) -> u64 {
        self.stats.errors.load(Ordering::Relaxed)
    }

    /// The sessions the store holds now (in a cluster: those held by this gateway).
    pub(crate) fn len(&self) -> usize {
        match &self.backend {
            Backend::Embedded(e) => e.len(),
            Backend::Redis(r) => r.len(),
        }
    }
}

/// The embedded backend: the sessions in memory, every change appended to the file.
struct Embedded {
    path: PathBuf,
    state: Mutex<LogState>,
}

struct LogState {
    file: File,
    sessions: HashMap<CookieKey, StoredSession>,
    /// Lines in the file: it is rewritten when most are dead.
    lines: usize,
}

impl Embedded {
    fn open(dir: &Path, now: u64) -> Result<(Embedded, Loaded), StoreError> {
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { what, path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating the state directory", dir))?;
        let path = dir.join(STORE_FILE);
        let mut loaded = Loaded::default();
        let mut sessions = HashMap::new();
        match File::open(&path) {
            Ok(file) => {
                let bytes = file.metadata().map_err(io_err("reading", &path))?.len();
                if bytes > MAX_FILE_BYTES {
                    return Err(StoreError::TooLarge { path, bytes });
                }
                let (read, bad, torn_last) = replay(BufReader::new(file.take(MAX_FILE_BYTES)))
                    .map_err(io_err("reading", &path))?;
                if bad.len() > usize::from(torn_last) {
                    let aside = dir.join(format!("{STORE_FILE}.bad-{now}"));
                    fs::copy(&path, &aside).map_err(io_err("copying aside", &path))?;
                    loaded.kept_aside = Some(aside);
                }
                loaded.bad_lines = bad;
                for (key, s) in read {
                    if s.valid_at(now) {
                        sessions.insert(key, s);
                    } else {
                        loaded.expired += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("opening", &path)(e)),
        }
        let mut list: Vec<StoredSession> = sessions.values().cloned().collect();
        list.sort_by_key(|s| s.id);
        loaded.sessions = list;
        let file = rewrite(&path, &sessions).map_err(io_err("rewriting", &path))?;
        let lines = sessions.len();
        Ok((
            Embedded {
                path,
                state: Mutex::new(LogState {
                    file,
                    sessions,
                    lines,
                }),
            },
            loaded,
        ))
    }

    fn len(&self) -> usize {
        self.state.lock().map_or(0, |s| s.sessions.len())
    }

    fn write(&self, entry: Entry) -> io::Result<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("the store's lock was poisoned"))?;
        // Forgetting a session not there changes nothing: no line.
        if let Entry::Del(key) = &entry
            && !state.sessions.contains_key(key)
        {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        match entry {
            Entry::Put(s) => {
                state.sessions.insert(s.key, s);
            }
            Entry::Del(key) => {
                state.sessions.remove(&key);
            }
        }
        // Mostly dead lines: write the live ones to a new file instead.
        if state.lines >= 1024 && state.lines > 2 * state.sessions.len() {
            state.file = rewrite(&self.path, &state.sessions)?;
            state.lines = state.sessions.len();
            return Ok(());
        }
        state.file.write_all(&line)?;
        state.lines += 1;
        Ok(())
    }
}

/// Reads the lines of a store file: the sessions they leave, the numbers of the lines that
/// could not be read, and whether the last of those was the file's unterminated last line
/// (a write torn by the process's death).
fn replay(
    reader: impl BufRead,
) -> io::Result<(HashMap<CookieKey, StoredSession>, Vec<usize>, bool)> {
    let mut sessions = HashMap::new();
    let mut bad = Vec::new();
    let mut torn_last = false;
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        torn_last = false;
        match serde_json::from_slice::<Entry>(&line) {
            Ok(Entry::Put(s)) => {
                sessions.insert(s.key, s);
            }
            Ok(Entry::Del(key)) => {
                sessions.remove(&key);
            }
            Err(_) => {
                bad.push(i + 1);
                torn_last = true;
            }
        }
    }
    // `split` cannot tell whether the last line had its newline: a bad last line counts as
    // torn only when nothing good followed it, which is what `torn_last` says.
    Ok((sessions, bad, torn_last))
}

/// Writes `sessions` to a new file beside `path` and puts it in place; returns it open for
/// appending.
fn rewrite(path: &Path, sessions: &HashMap<CookieKey, StoredSession>) -> io::Result<File> {
    let tmp = path.with_extension("log.new");
    let mut out = Vec::with_capacity(sessions.len() * 320);
    for s in sessions.values() {
        serde_json::to_writer(&mut out, &Entry::Put(s.clone())).map_err(io::Error::other)?;
        out.push(b'\n');
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&out)?;
    file.sync_data()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn session(n: u8, parked_until: Option<u64>) -> StoredSession {
        StoredSession {
            key: CookieKey::of(&format!("cookie-{n}")),
            id: u64::from(n),
            user: format!("user{n}"),
            realm: "Users".into(),
            peer: "192.0.2.7:40000".parse().unwrap(),
            ipv4: Ipv4Addr::new(10, 77, 0, n),
            ipv6: None,
            logged_in: 1_000,
            ends: Some(50_000),
            parked_until,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tunnel-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_store_opened_again_has_what_was_put_and_not_what_was_removed() {
        let d = dir("again");
        let (store, loaded) = SessionStore::open_embedded(&d, 2_000).unwrap();
        assert!(loaded.sessions.is_empty());
        store.put(&session(1, None));
        store.put(&session(2, None));
        store.put(&session(3, Some(9_000)));
        store.remove(&CookieKey::of("cookie-2"), &session(2, None).lease());
        // A changed record replaces the old one.
        store.put(&session(1, Some(8_000)));
        drop(store);
        let (store, loaded) = SessionStore::open_embedded(&d, 3_000).unwrap();
        assert_eq!(
            loaded.sessions,
            vec![session(1, Some(8_000)), session(3, Some(9_000))]
        );
        assert!(loaded.bad_lines.is_empty() && loaded.kept_aside.is_none());
        assert_eq!(store.len(), 2);
        let mode = fs::metadata(d.join(STORE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sessions_that_ended_while_the_gateway_was_down_are_dropped() {
        let d = dir("ended");
        let (store, _) = SessionStore::open_embedded(&d, 2_000).unwrap();
        store.put(&session(1, Some(5_000))); // parked window ends at 5000
        store.put(&session(2, None)); // connected; its login ends at 50000
        drop(store);
        let (_, loaded) = SessionStore::open_embedded(&d, 6_000).unwrap();
        assert_eq!(loaded.sessions, vec![session(2, None)]);
        assert_eq!(loaded.expired, 1);
        let (_, loaded) = SessionStore::open_embedded(&d, 60_000).unwrap();
        assert!(loaded.sessions.is_empty());
        assert_eq!(
            loaded.expired, 1,
            "the rewrite at the last start dropped the first"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_a_damaged_file_is_kept_aside() {
        let d = dir("damaged");
        let (store, _) = SessionStore::open_embedded(&d, 2_000).unwrap();
        store.put(&session(1, None));
        store.put(&session(2, None));
        drop(store);
        let path = d.join(STORE_FILE);
        // The process died in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"put":{"key":"ab"#).unwrap();
        drop(f);
        let (_, loaded) = SessionStore::open_embedded(&d, 2_000).unwrap();
        assert_eq!(loaded.sessions.len(), 2);
        assert_eq!(loaded.bad_lines, vec![3]);
        assert!(loaded.kept_aside.is_none(), "a torn last line is no damage");

        // Damage in the middle: the good lines are kept, the file copied aside first.
        let text = fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.insert(1, "{\"put\":{\"key\":\"zz\"}}");
        lines.insert(1, "\u{0}\u{0}garbage");
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (_, loaded) = SessionStore::open_embedded(&d, 2_000).unwrap();
        assert_eq!(loaded.sessions.len(), 2);
        assert_eq!(loaded.bad_lines, vec![2, 3]);
        let aside = loaded.kept_aside.expect("copied aside");
        assert!(fs::read_to_string(aside).unwrap().contains("garbage"));
        assert!(!fs::read_to_string(&path).unwrap().contains("garbage"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_file_is_rewritten_when_most_of_it_is_dead() {
        let d = dir("compact");
        let (store, _) = SessionStore::open_embedded(&d, 2_000).unwrap();
        for round in 0..3_000u32 {
            let mut s = session(1, None);
            s.key = CookieKey::of(&format!("c{round}"));
            store.put(&s);
            store.remove(&s.key, &s.lease());
        }
        store.put(&session(2, None));
        let lines = fs::read_to_string(d.join(STORE_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 1_100, "{lines} lines for one session");
        drop(store);
        let (_, loaded) = SessionStore::open_embedded(&d, 2_000).unwrap();
        assert_eq!(loaded.sessions, vec![session(2, None)]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_cookie_is_not_in_the_file() {
        let d = dir("secret");
        let (store, _) = SessionStore::open_embedded(&d, 2_000).unwrap();
        store.put(&session(1, None));
        let text = fs::read_to_string(d.join(STORE_FILE)).unwrap();
        assert!(!text.contains("cookie-1"));
        assert!(text.contains(&CookieKey::of("cookie-1").hex()));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_too_large_is_refused_with_its_size() {
        let d = dir("large");
        fs::create_dir_all(&d).unwrap();
        let f = File::create(d.join(STORE_FILE)).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = SessionStore::open_embedded(&d, 2_000).err().unwrap();
        assert!(e.to_string().contains("more than"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
