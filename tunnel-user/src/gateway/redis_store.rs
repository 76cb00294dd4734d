//! The session store of a gateway cluster: sessions, address leases and failed-login counts
//! in one Redis server that every gateway of the cluster shares (docs/gateway.md, "A
//! cluster: the Redis store").
//!
//! ```text
//!   claim (login)    ── CLAIM script: every lease key free or this cookie's ─▶ taken
//!   put (est., park) ─┐
//!   remove (end)     ─┴▶ writer task, in order ── PUT / REMOVE script (holder only)
//!                          └ failed: counted, resync flagged ─▶ PING each second; when
//!                            it answers: every session held here written again
//!   take (resume)    ── TAKE script: record read, holder set, "dropped" published
//!   listener task    ◀─ channel tunnel:dropped ("<gateway> <cookie key>" of another
//!                       gateway): the local copy is dropped by the runtime
//! ```
//!
//! Invariants:
//! - Only the holder (the gateway that last established or resumed a session) writes or
//!   removes its record; a write of another gateway is refused by the script, and that
//!   gateway learns it lost the session (the same path as a "dropped" message).
//! - A lease key names the cookie key that holds the address; it is set only when free or
//!   already this key's, and deleted only by the holder of that key.
//! - Writes never wait on Redis in the caller: they are queued (bounded) for one writer
//!   task. What a failed write lost is written again by the resync: the records of every
//!   session held here are kept in memory for it, and removals that failed are retried.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use redis::{
    AsyncCommands, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    Lease,
    store::{CookieKey, StoreStats, StoredSession},
};

/// The channel on which gateways tell each other to drop their copy of a session.
const DROPPED_CHANNEL: &str = "tunnel:dropped";

/// How long one command may take before Redis counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// A lease claimed at login lives this long until the session's first put sets its expiry.
const CLAIM_TTL_MS: u64 = 60_000;

/// Writes queued for the writer task; more count as failed (and are made good by the
/// resync).
const QUEUE: usize = 65_536;

/// -3: taken; else the conflicting lease's PTTL (-1: no expiry).
const CLAIM: &str = r"
for _, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and v ~= ARGV[1] then return redis.call('PTTL', k) end
end
for _, k in ipairs(KEYS) do
  redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
end
return -3";

/// What a claim of addresses found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    Taken,
    /// Another session holds one of them, for this long yet (None: without an expiry).
    Held(Option<Duration>),
}

const PUT: &str = r"
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and holder ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'holder', ARGV[1])
local px = tonumber(ARGV[4])
if px > 0 then redis.call('PEXPIRE', KEYS[1], px) else redis.call('PERSIST', KEYS[1]) end
redis.call('SADD', KEYS[2], ARGV[2])
local ttl = redis.call('PTTL', KEYS[2])
if px == 0 then
  redis.call('PERSIST', KEYS[2])
elseif ttl >= 0 and ttl < px then
  redis.call('PEXPIRE', KEYS[2], px)
end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
local conflicts = 0
for i = 4, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and v ~= ARGV[2] then
    conflicts = conflicts + 1
  elseif px > 0 then
    redis.call('SET', KEYS[i], ARGV[2], 'PX', px)
  else
    redis.call('SET', KEYS[i], ARGV[2])
  end
end
return 1 + conflicts";

const TAKE: &str = r"
local record = redis.call('HGET', KEYS[1], 'record')
if not record then return false end
local holder = redis.call('HGET', KEYS[1], 'holder')
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
if holder ~= ARGV[1] then
  redis.call('PUBLISH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
end
return record";

const REMOVE: &str = r"
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder and holder ~= ARGV[1] and ARGV[3] ~= '1' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
for i = 5, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2] then redis.call('DEL', KEYS[i]) end
end
redis.call('PUBLISH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
return 1";

const LIST: &str = r"
local found = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('HGET', ARGV[1] .. member, 'record')
  if record then
    table.insert(found, record)
  else
    redis.call('SREM', KEYS[1], member)
  end
end
return found";

const COUNT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])";

const FAILED: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n";

/// Redis did not answer (or refused): what was asked cannot be decided now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the session store {url} is unavailable: {why}")]
pub struct Unavailable {
    url: String,
    why: String,
}

enum Write {
    Put(StoredSession),
    Remove(Removal),
    /// Answered once every write queued before it is made.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A session to end in the store.
#[derive(Clone)]
struct Removal {
    key: CookieKey,
    lease: Lease,
    /// The set of its user's sessions, when known.
    user_set: Option<String>,
    /// Whoever holds it (another gateway's session ended by a login here).
    force: bool,
}

struct Scripts {
    claim: Script,
    put: Script,
    take: Script,
    remove: Script,
    list: Script,
    count: Script,
    failed: Script,
}

/// The Redis backend ([module docs](self)).
pub(crate) struct RedisStore {
    /// The URL as logs show it (no password).
    url: String,
    /// This gateway, as the holder of its sessions.
    node: String,
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    queue: mpsc::Sender<Write>,
    shared: Arc<Shared>,
}

/// What the writer task and the store's callers share.
struct Shared {
    /// The latest record of every session held here: the resync writes them again.
    held: Mutex<HashMap<CookieKey, StoredSession>>,
    /// Removals that failed, retried by the resync.
    failed_removes: Mutex<Vec<Removal>>,
    resync: AtomicBool,
    /// Sessions this gateway lost to another (a refused write), for the runtime to drop.
    lost: mpsc::UnboundedSender<CookieKey>,
    stats: Arc<StoreStats>,
}

const SESSION_PREFIX: &str = "tunnel:session:";

/// Every session of the cluster, scored by when its record expires (ms since the epoch).
const ALL_SESSIONS: &str = "tunnel:all";

fn session_key(key: &CookieKey) -> String {
    format!("{SESSION_PREFIX}{}", key.hex())
}

/// The set of a user's sessions in a realm (cookie keys).
fn user_key(realm: &str, user: &str) -> String {
    // The realm's length first: no realm and user pair names another's set.
    format!("tunnel:user:{}:{realm}/{user}", realm.len())
}

fn lease_keys(lease: &Lease) -> Vec<String> {
    lease.addrs().map(|a| format!("tunnel:lease:{a}")).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds until the record of `s` expires (its parked window, else its login's end);
/// 0 for none, None when it is over.
fn expiry_ms(s: &StoredSession, now: u64) -> Option<u64> {
    match s.parked_until.or(s.ends) {
        None => Some(0),
        Some(at) if at > now => Some((at - now) * 1000),
        Some(_) => None,
    }
}

impl RedisStore {
    /// Connects lazily to `url` (a gateway starts while Redis is down, and refuses logins
    /// until it answers). Sessions another gateway takes over, or that a refused write
    /// shows are no longer this gateway's, arrive on the returned receiver.
    pub(crate) fn open(
        url: &str,
        shown: String,
        stats: Arc<StoreStats>,
    ) -> Result<(RedisStore, mpsc::UnboundedReceiver<CookieKey>), Unavailable> {
        let unavailable = |e: redis::RedisError| Unavailable {
            url: shown.clone(),
            why: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        let node = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let scripts = Arc::new(Scripts {
            claim: Script::new(CLAIM),
            put: Script::new(PUT),
            take: Script::new(TAKE),
            remove: Script::new(REMOVE),
            list: Script::new(LIST),
            count: Script::new(COUNT),
            failed: Script::new(FAILED),
        });
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            held: Mutex::new(HashMap::new()),
            failed_removes: Mutex::new(Vec::new()),
            resync: AtomicBool::new(false),
            lost,
            stats,
        });
        let (queue, writes) = mpsc::channel(QUEUE);
        let writer = Writer {
            url: shown.clone(),
            run_id: None,
            node: node.clone(),
            conn: conn.clone(),
            scripts: scripts.clone(),
            shared: shared.clone(),
        };
        tokio::spawn(writer.run(writes));
        tokio::spawn(listen(client, node.clone(), shown.clone(), shared.clone()));
        Ok((
            RedisStore {
                url: shown,
                node,
                conn,
                scripts,
                queue,
                shared,
            },
            lost_rx,
        ))
    }

    fn unavailable(&self, why: impl ToString) -> Unavailable {
        Unavailable {
            url: self.url.clone(),
            why: why.to_string(),
        }
    }

    /// Takes `lease` for the session `key` in the cluster, unless another session holds one
    /// of its addresses.
    pub(crate) async fn claim(&self, key: &CookieKey, lease: &Lease) -> Result<Claim, Unavailable> {
        let mut invocation = self.scripts.claim.prepare_invoke();
        for k in lease_keys(lease) {
            invocation.key(k);
        }
        invocation.arg(key.hex()).arg(CLAIM_TTL_MS);
        let mut conn = self.conn.clone();
        let answer: i64 = timed(invocation.invoke_async(&mut conn))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(match answer {
            -3 => Claim::Taken,
            ms if ms >= 0 => Claim::Held(Some(Duration::from_millis(ms as u64))),
            _ => Claim::Held(None),
        })
    }

    /// Makes this gateway the holder of the session `key` and returns its record; None
    /// when the cluster does not know it (ended, logged out, expired).
    pub(crate) async fn take(&self, key: &CookieKey) -> Result<Option<StoredSession>, Unavailable> {
        let mut conn = self.conn.clone();
        let record: Option<String> = timed(
            self.scripts
                .take
                .key(session_key(key))
                .key(DROPPED_CHANNEL)
                .arg(&self.node)
                .arg(key.hex())
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        let Some(record) = record else {
            return Ok(None);
        };
        match serde_json::from_str::<StoredSession>(&record) {
            Ok(s) if s.key == *key => Ok(Some(s)),
            Ok(_) | Err(_) => {
                warn!(store = %self.url, session = ?key, "a session record in the store cannot be read: the session is not resumed");
                Ok(None)
            }
        }
    }

    /// The sessions of the whole cluster whose records have not expired.
    pub(crate) async fn count(&self) -> Result<u64, Unavailable> {
        let mut conn = self.conn.clone();
        timed(
            self.scripts
                .count
                .key(ALL_SESSIONS)
                .arg(unix_now() * 1000)
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|e| self.unavailable(e))
    }

    /// Counts a failed login of `user` in the cluster's window of `window`; returns the
    /// failures in the window so far.
    pub(crate) async fn failed_login(
        &self,
        user: &str,
        window: Duration,
    ) -> Result<u64, Unavailable> {
        let mut conn = self.conn.clone();
        timed(
            self.scripts
                .failed
                .key(failed_key(user))
                .arg(window.as_millis().max(1) as u64)
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|e| self.unavailable(e))
    }

    /// The failed logins of `user` in the cluster's current window.
    pub(crate) async fn failed_logins(&self, user: &str) -> Result<u64, Unavailable> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = timed(conn.get(failed_key(user)))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(n.unwrap_or(0))
    }

    /// Records `s` (established or parked) as this gateway's.
    pub(crate) fn put(&self, s: &StoredSession) {
        if let Ok(mut held) = self.shared.held.lock() {
            held.insert(s.key, s.clone());
        }
        self.enqueue(Write::Put(s.clone()));
    }

    /// Ends the session `key` in the cluster, its addresses `lease` given back.
    pub(crate) fn remove(&self, key: &CookieKey, lease: &Lease) {
        let record = self.shared.held.lock().ok().and_then(|mut h| h.remove(key));
        self.enqueue(Write::Remove(Removal {
            key: *key,
            lease: *lease,
            user_set: record.map(|s| user_key(&s.realm, &s.user)),
            force: false,
        }));
    }

    /// [`RedisStore::end`] through the writer, for callers that cannot wait.
    pub(crate) fn end_later(&self, s: &StoredSession) {
        self.enqueue(Write::Remove(Removal {
            key: s.key,
            lease: s.lease(),
            user_set: Some(user_key(&s.realm, &s.user)),
            force: true,
        }));
    }

    /// The sessions of `user` in `realm` across the cluster, oldest login first.
    pub(crate) async fn sessions_of(
        &self,
        user: &str,
        realm: &str,
    ) -> Result<Vec<StoredSession>, Unavailable> {
        let mut conn = self.conn.clone();
        let records: Vec<String> = timed(
            self.scripts
                .list
                .key(user_key(realm, user))
                .arg(SESSION_PREFIX)
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        let mut found: Vec<StoredSession> = records
            .iter()
            .filter_map(|r| serde_json::from_str::<StoredSession>(r).ok())
            .filter(|s| s.user == user && s.realm == realm)
            .collect();
        found.sort_by_key(|s| (s.logged_in, s.id));
        Ok(found)
    }

    /// Ends `s`, a session another gateway may hold, now: its record and leases go, and
    /// its holder drops it (the "dropped" message).
    pub(crate) async fn end(&self, s: &StoredSession) -> Result<(), Unavailable> {
        let removal = Removal {
            key: s.key,
            lease: s.lease(),
            user_set: Some(user_key(&s.realm, &s.user)),
            force: true,
        };
        let mut conn = self.conn.clone();
        timed(remove_invocation(&self.scripts, &self.node, &removal).invoke_async::<i64>(&mut conn))
            .await
            .map(drop)
            .map_err(|e| self.unavailable(e))
    }

    /// This gateway no longer holds `key` (another took it): forgets it without a write.
    pub(crate) fn forget(&self, key: &CookieKey) {
        if let Ok(mut held) = self.shared.held.lock() {
            held.remove(key);
        }
    }

    /// Waits until the writes queued so far are made, `limit` at most.
    pub(crate) async fn flush(&self, limit: Duration) {
        let (done, made) = tokio::sync::oneshot::channel();
        if self.queue.send(Write::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(limit, made).await;
        }
    }

    /// Sessions this gateway holds in the store.
    pub(crate) fn len(&self) -> usize {
        self.shared.held.lock().map_or(0, |h| h.len())
    }

    fn enqueue(&self, write: Write) {
        if let Err(full) = self.queue.try_send(write) {
            if let Write::Remove(removal) = full.into_inner()
                && let Ok(mut failed) = self.shared.failed_removes.lock()
            {
                failed.push(removal);
            }
            self.shared.resync.store(true, Ordering::Relaxed);
            self.shared.stats.account(
                Err(std::io::Error::other("the write queue is full")),
                &self.url,
            );
        }
    }
}

fn remove_invocation<'a>(
    scripts: &'a Scripts,
    node: &str,
    removal: &Removal,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = scripts.remove.prepare_invoke();
    invocation
        .key(session_key(&removal.key))
        .key(DROPPED_CHANNEL)
        // A key no session set has: nothing to remove from.
        .key(removal.user_set.as_deref().unwrap_or("tunnel:user:-"))
        .key(ALL_SESSIONS);
    for k in lease_keys(&removal.lease) {
        invocation.key(k);
    }
    invocation
        .arg(node)
        .arg(removal.key.hex())
        .arg(if removal.force { "1" } else { "0" });
    invocation
}

fn failed_key(user: &str) -> String {
    format!("tunnel:failed:{user}")
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {COMMAND_TIMEOUT:?}")),
    }
}

struct Writer {
    url: String,
    /// The server's `run_id` when last asked: a new one is a restarted server.
    run_id: Option<String>,
    node: String,
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    shared: Arc<Shared>,
}

impl Writer {
    async fn run(mut self, mut writes: mpsc::Receiver<Write>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                write = writes.recv() => {
                    let Some(write) = write else { return };
                    if let Write::Flush(done) = write {
                        let _ = done.send(());
                        continue;
                    }
                    let started = Instant::now();
                    let result = self.write(&write).await;
                    if result.is_err() {
                        self.shared.resync.store(true, Ordering::Relaxed);
                        if let Write::Remove(removal) = write
                            && let Ok(mut failed) = self.shared.failed_removes.lock()
                        {
                            failed.push(removal);
                        }
                    }
                    self.shared.stats.timed(started.elapsed());
                    self.shared.stats.account(result.map_err(std::io::Error::other), &self.url);
                }
                _ = tick.tick() => self.check().await,
            }
        }
    }

    async fn write(&mut self, write: &Write) -> Result<(), String> {
        match write {
            Write::Put(s) => {
                let Some(px) = expiry_ms(s, unix_now()) else {
                    return Ok(());
                };
                let mut invocation = self.scripts.put.prepare_invoke();
                invocation
                    .key(session_key(&s.key))
                    .key(user_key(&s.realm, &s.user))
                    .key(ALL_SESSIONS);
                for k in lease_keys(&s.lease()) {
                    invocation.key(k);
                }
                let record = serde_json::to_string(s).map_err(|e| e.to_string())?;
                let score = match px {
                    0 => "+inf".to_string(),
                    px => (unix_now() * 1000 + px).to_string(),
                };
                invocation
                    .arg(&self.node)
                    .arg(s.key.hex())
                    .arg(record)
                    .arg(px)
                    .arg(score);
                let answer: i64 = timed(invocation.invoke_async(&mut self.conn)).await?;
                match answer {
                    0 => {
                        // Another gateway holds it now: this one's copy goes.
                        info!(user = %s.user, session = ?s.key, "the session is held by another gateway now: dropped here");
                        if let Ok(mut held) = self.shared.held.lock() {
                            held.remove(&s.key);
                        }
                        let _ = self.shared.lost.send(s.key);
                    }
                    1 => {}
                    _ => {
                        warn!(user = %s.user, ipv4 = %s.ipv4, "an address of the session is leased to another session in the store");
                    }
                }
                Ok(())
            }
            Write::Flush(_) => Ok(()),
            Write::Remove(removal) => {
                let invocation = remove_invocation(&self.scripts, &self.node, removal);
                let _: i64 = timed(invocation.invoke_async(&mut self.conn)).await?;
                Ok(())
            }
        }
    }

    /// Each second: asks the server who it is. One that does not answer, or another server
    /// than before (a restart may have lost what it held), gets every session held here
    /// written again once it answers.
    async fn check(&mut self) {
        let info: Result<String, String> =
            timed(redis::cmd("INFO").arg("server").query_async(&mut self.conn)).await;
        let Ok(info) = info else {
            self.shared.resync.store(true, Ordering::Relaxed);
            return;
        };
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string());
        if run_id != self.run_id {
            if self.run_id.is_some() {
                self.shared.resync.store(true, Ordering::Relaxed);
            }
            self.run_id = run_id;
        }
        if self.shared.resync.load(Ordering::Relaxed) {
            self.resync().await;
        }
    }

    /// Every session held here written again, failed removals retried.
    async fn resync(&mut self) {
        self.shared.resync.store(false, Ordering::Relaxed);
        let removes = std::mem::take(
            &mut *self
                .shared
                .failed_removes
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let held: Vec<StoredSession> = self
            .shared
            .held
            .lock()
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        let mut failed = 0;
        for removal in &removes {
            if self.write(&Write::Remove(removal.clone())).await.is_err() {
                failed += 1;
                if let Ok(mut f) = self.shared.failed_removes.lock() {
                    f.push(removal.clone());
                }
            }
        }
        for s in &held {
            if self.write(&Write::Put(s.clone())).await.is_err() {
                failed += 1;
            }
        }
        if failed > 0 {
            self.shared.resync.store(true, Ordering::Relaxed);
        }
        info!(store = %self.url, written = held.len(), removed = removes.len(), failed, "the session store answers again: the sessions held here written again");
    }
}

/// Follows the "dropped" channel: another gateway's take-over or end of a session this one
/// may hold. Reconnects while Redis is away.
async fn listen(client: redis::Client, node: String, url: String, shared: Arc<Shared>) {
    use futures_util::StreamExt;
    let mut warned = false;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(DROPPED_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => {
                if warned {
                    info!(store = %url, "following the cluster's session changes again");
                    warned = false;
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let Some((from, key)) = text.split_once(' ') else {
                        continue;
                    };
                    if from == node {
                        continue;
                    }
                    let Some(key) = CookieKey::from_hex(key) else {
                        continue;
                    };
                    let held_here = shared
                        .held
                        .lock()
                        .map(|mut h| h.remove(&key).is_some())
                        .unwrap_or(false);
                    if held_here {
                        let _ = shared.lost.send(key);
                    }
                }
            }
            Ok(Err(_)) | Err(_) => {
                if !warned {
                    warn!(store = %url, "cannot follow the cluster's session changes: retrying each second");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_the_parked_window_then_the_login() {
        let mut s = StoredSession {
            key: CookieKey::of("c"),
            id: 1,
            user: "alice".into(),
            realm: "Users".into(),
            peer: "192.0.2.1:5000".parse().unwrap(),
            ipv4: "10.77.0.2".parse().unwrap(),
            ipv6: Some("fd77::2".parse().unwrap()),
            logged_in: 100,
            ends: Some(1000),
            parked_until: None,
        };
        assert_eq!(expiry_ms(&s, 400), Some(600_000));
        s.parked_until = Some(500);
        assert_eq!(expiry_ms(&s, 400), Some(100_000));
        assert_eq!(expiry_ms(&s, 500), None);
        s.parked_until = None;
        s.ends = None;
        assert_eq!(expiry_ms(&s, 400), Some(0));
        assert_eq!(
            lease_keys(&s.lease()),
            ["tunnel:lease:10.77.0.2", "tunnel:lease:fd77::2"]
        );
    }
}
