//! Password hashing with bounded concurrency and bounded memory.
//!
//! ```text
//!  login task ──run(deadline, job)──▶ queue (at most `queue` jobs) ──▶ worker 0 ─┐ each with
//!      ▲            │ full: Busy                 │ past deadline: Busy  worker 1 ─┤ its own
//!      └────────────┴── answer (oneshot) ◀───────┴──────────────────── worker N ─┘ HashMemory
//! ```
//!
//! This module owns argon2: the fixed set of hashing threads ([`HashPool`]), the memory each
//! hashes into ([`HashMemory`], allocated once per worker and reused, never freed and
//! reallocated per login), the bound on the parameters a stored hash may ask for
//! ([`HashLimits`]), and the counters tests and logs read ([`HashStats`]). It does not know
//! users, realms or the rate limits (`super::users`, `super::ratelimit`, `super::login`).
//!
//! Why: argon2id is memory-hard on purpose (the default 19 MiB per check). Hashing on the
//! blocking pool let up to 512 checks run at once (a storm of logins cost gigabytes), and
//! allocating per check left the freed blocks in the allocator's arenas, so the gateway's
//! memory grew with the number of logins and stayed there. Here at most `workers` checks run
//! at once, each in its worker's own blocks, so the memory is `workers` times the largest
//! memory cost used (at most `max_memory_kib`), whatever arrives; the rest wait in a bounded
//! queue until their deadline, and are then refused as busy rather than left hanging.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{self, Output, SaltString},
};

use super::PasswordLimits;

/// The most argon2 passes (t) a stored hash may ask for. OWASP's recommended settings use 1-5;
/// a check's time grows with t times m.
pub const MAX_TIME_COST: u32 = 10;
/// The most argon2 lanes (p) a stored hash may ask for. This crate computes lanes one after
/// the other, so p costs no extra memory, only bookkeeping.
pub const MAX_LANES: u32 = 16;

/// The largest argon2 parameters a stored hash may ask for. A hash beyond them is refused
/// before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLimits {
    /// The largest memory cost m, in KiB (argon2's unit: one 1 KiB block per KiB).
    pub max_memory_kib: u32,
}

impl HashLimits {
    /// The smallest `max_memory_kib` allowed: the cost of the hashes `adduser` writes (and of
    /// the dummy hash unknown users are checked against), argon2's default.
    pub const MIN_MEMORY_KIB: u32 = Params::DEFAULT_M_COST;
    /// The largest `max_memory_kib` allowed, 1 GiB.
    pub const MAX_MEMORY_KIB: u32 = 1 << 20;
    /// 64 MiB: three times the default cost, so an administrator may raise it a little.
    pub const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;

    /// Limits that any configuration accepts: what `adduser` holds a users file to.
    pub const CEILING: HashLimits = HashLimits {
        max_memory_kib: HashLimits::MAX_MEMORY_KIB,
    };

    /// Checks a stored hash's algorithm and parameters against the limits, without hashing.
    pub fn check(&self, hash: &PasswordHash<'_>) -> Result<Params, HashError> {
        if hash.algorithm != argon2::ARGON2ID_IDENT {
            return Err(HashError::NotArgon2id {
                algorithm: hash.algorithm.to_string(),
            });
        }
        // The PHC string's decimal parameters are read before `Params` checks them, so a huge
        // m is named here rather than refused by argon2 with a vaguer error (or allocated).
        for (name, max) in [
            ("m", self.max_memory_kib),
            ("t", MAX_TIME_COST),
            ("p", MAX_LANES),
        ] {
            if let Some(value) = hash.params.get_decimal(name)
                && value > max
            {
                return Err(HashError::TooCostly {
                    param: name,
                    value,
                    max,
                });
            }
        }
        Params::try_from(hash).map_err(HashError::Phc)
    }
}

impl From<&PasswordLimits> for HashLimits {
    /// The bound `auth.passwords.hash_max_memory_kib` sets.
    fn from(limits: &PasswordLimits) -> HashLimits {
        HashLimits {
            max_memory_kib: limits.hash_max_memory_kib,
        }
    }
}

impl Default for HashLimits {
    fn default() -> Self {
        HashLimits {
            max_memory_kib: HashLimits::DEFAULT_MEMORY_KIB,
        }
    }
}

/// Why a stored hash could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// A parameter beyond [`HashLimits`] (`m` in KiB, `t` passes, `p` lanes).
    #[error("the hash asks for argon2 {param}={value}, more than the {max} allowed")]
    TooCostly {
        param: &'static str,
        value: u32,
        max: u32,
    },
    #[error("the hash uses {algorithm}, not argon2id")]
    NotArgon2id { algorithm: String },
    /// The PHC string's parameters, salt or output are malformed.
    #[error("the hash is not a valid argon2 PHC string: {0}")]
    Phc(password_hash::Error),
    /// argon2 refused the inputs (e.g. a salt too short).
    #[error("argon2: {0}")]
    Argon2(argon2::Error),
}

/// One worker's argon2 memory: grown to the largest memory cost it has been asked for (never
/// beyond [`HashLimits`]) and reused for every check after.
pub struct HashMemory {
    blocks: Vec<Block>,
    limits: HashLimits,
    hashes: Arc<AtomicU64>,
    /// Bytes held in `blocks`, for [`HashStats`].
    held: Arc<AtomicU64>,
}

impl HashMemory {
    /// Empty memory, to grow on first use; `hashes` counts the checks done with it.
    pub fn new(limits: HashLimits) -> HashMemory {
        HashMemory {
            blocks: Vec::new(),
            limits,
            hashes: Arc::new(AtomicU64::new(0)),
            held: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether `password` matches the stored `hash`, computed in this memory. The comparison
    /// is constant-time. Parameters beyond the limits are refused before anything is
    /// allocated.
    pub fn verify(&mut self, hash: &PasswordHash<'_>, password: &[u8]) -> Result<bool, HashError> {
        let params = self.limits.check(hash)?;
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(HashError::Argon2)?
            .unwrap_or_default();
        let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
            return Err(HashError::Phc(password_hash::Error::PhcStringField));
        };
        // A PHC salt is at most 64 Base64 characters, so at most 48 bytes.
        let mut salt_buf = [0u8; 64];
        let salt = salt.decode_b64(&mut salt_buf).map_err(HashError::Phc)?;
        let needed = params.block_count();
        if self.blocks.len() < needed {
            // Within the limits (checked above), once per worker and cost.
            self.blocks.resize(needed, Block::default());
            self.held.store(self.held_bytes() as u64, Ordering::Relaxed);
        }
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..expected.len()];
        Argon2::new(Algorithm::Argon2id, version, params)
            .hash_password_into_with_memory(password, salt, out, &mut self.blocks[..needed])
            .map_err(HashError::Argon2)?;
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let computed = Output::new(out).map_err(HashError::Phc)?;
        Ok(computed == *expected)
    }

    /// A new argon2id hash of `password` as a PHC string, with argon2's default parameters
    /// (those `adduser` writes) and a fresh 16-byte salt, computed in this memory.
    pub fn hash(&mut self, password: &[u8]) -> Result<String, HashError> {
        let params = Params::default();
        let salt = rand::random::<[u8; 16]>();
        let needed = params.block_count();
        if self.blocks.len() < needed {
            self.blocks.resize(needed, Block::default());
            self.held.store(self.held_bytes() as u64, Ordering::Relaxed);
        }
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(password, &salt, &mut out, &mut self.blocks[..needed])
            .map_err(HashError::Argon2)?;
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let salt = SaltString::encode_b64(&salt).map_err(HashError::Phc)?;
        let output = Output::new(&out).map_err(HashError::Phc)?;
        Ok(format!(
            "${}$v={}$m={},t={},p={}${}${}",
            argon2::ARGON2ID_IDENT,
            u32::from(Version::V0x13),
            params.m_cost(),
            params.t_cost(),
            params.p_cost(),
            salt.as_str(),
            output
        ))
    }

    /// Bytes of argon2 memory this worker holds.
    pub fn held_bytes(&self) -> usize {
        self.blocks.len() * Block::SIZE
    }
}

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Busy {
    /// The queue was full when the job arrived.
    #[error("the hashing queue is full")]
    QueueFull,
    /// No worker was free before the job's deadline.
    #[error("no hashing worker was free in time")]
    Deadline,
}

/// The pool's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Password hashes computed.
    pub hashes: u64,
    /// Jobs refused because the queue was full.
    pub refused_full: u64,
    /// Jobs refused because their deadline passed before a worker took them.
    pub refused_deadline: u64,
    /// The most jobs that ran at the same time.
    pub peak_running: u64,
    /// Bytes of argon2 memory the workers hold now.
    pub memory_bytes: u64,
}

type Work = Box<dyn FnOnce(&mut HashMemory) + Send>;

/// A job's state, decided once: a worker starts it, or it is given up (by its waiting task at
/// the deadline, or by the worker that reaches it too late), never both.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

struct Job {
    deadline: Instant,
    state: Arc<AtomicU8>,
    work: Work,
}

struct Queue {
    jobs: VecDeque<Job>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    hashes: Arc<AtomicU64>,
    refused_full: AtomicU64,
    refused_deadline: AtomicU64,
    running: AtomicU64,
    peak_running: AtomicU64,
    /// Each worker's [`HashMemory::held`].
    memory: Vec<Arc<AtomicU64>>,
}

/// A fixed set of hashing threads with a bounded queue. See the module docs.
pub struct HashPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl HashPool {
    /// Starts `workers` threads (at least 1) that take jobs from a queue of at most `queue`
    /// waiting jobs.
    pub fn new(workers: usize, queue: usize, limits: HashLimits) -> std::io::Result<HashPool> {
        let workers = workers.max(1);
        let hashes = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(queue),
                stopping: false,
            }),
            ready: Condvar::new(),
            capacity: queue,
            hashes: hashes.clone(),
            refused_full: AtomicU64::new(0),
            refused_deadline: AtomicU64::new(0),
            running: AtomicU64::new(0),
            peak_running: AtomicU64::new(0),
            memory: (0..workers).map(|_| Arc::new(AtomicU64::new(0))).collect(),
        });
        let mut pool = HashPool {
            shared,
            threads: Vec::with_capacity(workers),
        };
        for i in 0..workers {
            let shared = pool.shared.clone();
            let memory = HashMemory {
                blocks: Vec::new(),
                limits,
                hashes: hashes.clone(),
                held: pool.shared.memory[i].clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("gw-hash-{i}"))
                .spawn(move || work(&shared, memory))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Runs `job` on a worker with that worker's memory, and returns its answer. Refused at
    /// once when the queue is full, and at `deadline` when no worker has taken it by then; a
    /// job a worker took runs to its end and is waited for.
    pub async fn run<R: Send + 'static>(
        &self,
        deadline: Instant,
        job: impl FnOnce(&mut HashMemory) -> R + Send + 'static,
    ) -> Result<R, Busy> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |memory| {
            let _ = tx.send(job(memory));
        });
        let state = Arc::new(AtomicU8::new(QUEUED));
        {
            let Ok(mut queue) = self.shared.queue.lock() else {
                return Err(Busy::QueueFull);
            };
            if queue.jobs.len() >= self.shared.capacity || queue.stopping {
                self.shared.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(Busy::QueueFull);
            }
            queue.jobs.push_back(Job {
                deadline,
                state: state.clone(),
                work,
            });
        }
        self.shared.ready.notify_one();
        if let Ok(answer) = tokio::time::timeout_at(deadline.into(), &mut rx).await {
            // The worker answered, or dropped the job (it reached it too late, or the pool
            // stopped).
            return answer.map_err(|_| Busy::Deadline);
        }
        if give_up(&state) {
            self.shared.refused_deadline.fetch_add(1, Ordering::Relaxed);
            return Err(Busy::Deadline);
        }
        // A worker took it just in time: its answer is coming.
        rx.await.map_err(|_| Busy::Deadline)
    }

    /// Jobs waiting for a worker now.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.queue.lock().map_or(0, |q| q.jobs.len())
    }

    /// The counters now.
    pub fn stats(&self) -> HashStats {
        let s = &self.shared;
        HashStats {
            hashes: s.hashes.load(Ordering::Relaxed),
            refused_full: s.refused_full.load(Ordering::Relaxed),
            refused_deadline: s.refused_deadline.load(Ordering::Relaxed),
            peak_running: s.peak_running.load(Ordering::Relaxed),
            memory_bytes: s.memory.iter().map(|m| m.load(Ordering::Relaxed)).sum(),
        }
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.stopping = true;
            // Their senders drop: the waiting tasks get Busy.
            queue.jobs.clear();
        }
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Marks a queued job given up; false when a worker started it (or it was given up already).
fn give_up(state: &AtomicU8) -> bool {
    state
        .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// A worker: takes jobs until the pool stops, skipping those whose deadline has passed.
fn work(shared: &Shared, mut memory: HashMemory) {
    loop {
        let job = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            loop {
                if queue.stopping {
                    return;
                }
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                queue = match shared.ready.wait(queue) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        if Instant::now() >= job.deadline {
            if give_up(&job.state) {
                shared.refused_deadline.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if job
            .state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Its task gave up (and counted it) already.
            continue;
        }
        let running = shared.running.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak_running.fetch_max(running, Ordering::Relaxed);
        (job.work)(&mut memory);
        shared.running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Barrier, atomic::AtomicUsize},
        time::Duration,
    };

    use argon2::{PasswordHasher, PasswordVerifier, password_hash::SaltString};

    use super::*;

    /// A cheap hash (m=64 KiB, t=1) so tests in debug builds stay fast.
    fn cheap_hash(password: &[u8]) -> String {
        let params = Params::new(64, 1, 1, None).unwrap();
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password, &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn verifies_like_the_argon2_crate() {
        let mut memory = HashMemory::new(HashLimits::default());
        for (params, password) in [
            (Params::new(64, 1, 1, None).unwrap(), &b"correct horse"[..]),
            (Params::new(256, 3, 4, Some(16)).unwrap(), b"p"),
            (Params::new(128, 2, 2, Some(64)).unwrap(), b""),
        ] {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).unwrap();
            let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password, &salt)
                .unwrap();
            assert!(memory.verify(&hash, password).unwrap());
            Argon2::default().verify_password(password, &hash).unwrap();
            let mut wrong = password.to_vec();
            wrong.push(b'!');
            assert!(!memory.verify(&hash, &wrong).unwrap());
        }
        // Grown to the largest cost seen (256 blocks), and reused.
        assert_eq!(memory.held_bytes(), 256 * Block::SIZE);
        assert_eq!(memory.hashes.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn the_default_cost_verifies_into_reused_memory() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = Argon2::default().hash_password(b"pw", &salt).unwrap();
        let mut memory = HashMemory::new(HashLimits::default());
        assert!(memory.verify(&hash, b"pw").unwrap());
        let held = memory.held_bytes();
        assert_eq!(held, Params::DEFAULT_M_COST as usize * 1024);
        assert!(!memory.verify(&hash, b"pW").unwrap());
        assert_eq!(memory.held_bytes(), held);
    }

    #[test]
    fn costs_beyond_the_limits_are_refused_before_allocating() {
        let mut memory = HashMemory::new(HashLimits::default());
        let salt = "c2l4dGVlbiBieXRlIHNsdA";
        let out = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for (params, refused) in [
            // 4 TiB of memory, the largest m the PHC string can carry.
            (
                "m=4294967295,t=1,p=1",
                HashError::TooCostly {
                    param: "m",
                    value: u32::MAX,
                    max: HashLimits::DEFAULT_MEMORY_KIB,
                },
            ),
            (
                "m=65537,t=1,p=1",
                HashError::TooCostly {
                    param: "m",
                    value: 65_537,
                    max: 65_536,
                },
            ),
            (
                "m=19456,t=11,p=1",
                HashError::TooCostly {
                    param: "t",
                    value: 11,
                    max: MAX_TIME_COST,
                },
            ),
            (
                "m=19456,t=1,p=17",
                HashError::TooCostly {
                    param: "p",
                    value: 17,
                    max: MAX_LANES,
                },
            ),
        ] {
            let text = format!("$argon2id$v=19${params}${salt}${out}");
            let hash = PasswordHash::new(&text).unwrap();
            assert_eq!(memory.verify(&hash, b"pw"), Err(refused), "{params}");
            assert_eq!(memory.held_bytes(), 0, "{params}: nothing allocated");
        }
        let text = format!("$argon2i$v=19$m=64,t=1,p=1${salt}${out}");
        assert!(matches!(
            memory.verify(&PasswordHash::new(&text).unwrap(), b"pw"),
            Err(HashError::NotArgon2id { .. })
        ));
        // Exactly at the limit is fine (checked without hashing 64 MiB).
        let text = format!("$argon2id$v=19$m=65536,t=10,p=16${salt}${out}");
        HashLimits::default()
            .check(&PasswordHash::new(&text).unwrap())
            .unwrap();
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn at_most_workers_jobs_run_at_once_and_each_has_its_own_memory() {
        let pool = Arc::new(HashPool::new(2, 100, HashLimits::default()).unwrap());
        let hash = cheap_hash(b"pw");
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let rt = runtime();
        let answers = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..40 {
                let (pool, hash) = (pool.clone(), hash.clone());
                let (running, peak) = (running.clone(), peak.clone());
                tasks.spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    pool.run(deadline, move |memory| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        let password: &[u8] = if i % 2 == 0 { b"pw" } else { b"no" };
                        let ok = memory.verify(&PasswordHash::new(&hash).unwrap(), password);
                        running.fetch_sub(1, Ordering::SeqCst);
                        (i, ok.unwrap())
                    })
                    .await
                });
            }
            tasks.join_all().await
        });
        assert_eq!(answers.len(), 40);
        for answer in answers {
            let (i, ok) = answer.unwrap();
            assert_eq!(ok, i % 2 == 0);
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        let stats = pool.stats();
        assert_eq!(stats.hashes, 40);
        assert_eq!(stats.peak_running, 2);
        assert_eq!(stats.memory_bytes, 2 * 64 * Block::SIZE as u64);
    }

    #[test]
    fn a_full_queue_and_a_passed_deadline_are_refused_as_busy_and_counted() {
        let pool = Arc::new(HashPool::new(1, 2, HashLimits::default()).unwrap());
        let rt = runtime();
        let gate = Arc::new(Barrier::new(2));
        rt.block_on(async {
            let far = Instant::now() + Duration::from_secs(60);
            // The worker is held by the first job until the test opens the gate.
            let g = gate.clone();
            let first = tokio::spawn({
                let pool = pool.clone();
                async move { pool.run(far, move |_| g.wait()).await.map(|_| ()) }
            });
            while pool.stats().peak_running == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Two wait in the queue: one with a deadline that will pass, one that will not.
            let soon = Instant::now() + Duration::from_millis(50);
            let late = tokio::spawn({
                let pool = pool.clone();
                async move { pool.run(soon, |_| ()).await }
            });
            let patient = tokio::spawn({
                let pool = pool.clone();
                async move { pool.run(far, |_| 7).await }
            });
            while pool.queued() < 2 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // A third finds the queue full.
            assert_eq!(pool.run(far, |_| ()).await, Err(Busy::QueueFull));
            // The short deadline passes while the worker is held: refused, not left hanging.
            assert_eq!(late.await.unwrap(), Err(Busy::Deadline));
            gate.wait();
            first.await.unwrap().unwrap();
            assert_eq!(patient.await.unwrap(), Ok(7));
        });
        let stats = pool.stats();
        assert_eq!(stats.refused_full, 1);
        // The worker skipped the late job without running it.
        assert_eq!(stats.refused_deadline, 1);
    }

    #[test]
    fn dropping_the_pool_answers_waiting_jobs_and_stops_the_workers() {
        let rt = runtime();
        let pool = HashPool::new(1, 8, HashLimits::default()).unwrap();
        assert_eq!(pool.workers(), 1);
        rt.block_on(async {
            let far = Instant::now() + Duration::from_secs(60);
            assert_eq!(pool.run(far, |_| 1).await, Ok(1));
        });
        drop(pool);
    }

    #[test]
    fn new_hashes_verify_with_the_argon2_crate_and_have_the_default_cost() {
        use argon2::PasswordVerifier;
        let mut memory = HashMemory::new(HashLimits::default());
        let text = memory.hash(b"new password").unwrap();
        let parsed = PasswordHash::new(&text).unwrap();
        Argon2::default()
            .verify_password(b"new password", &parsed)
            .unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"other", &parsed)
                .is_err()
        );
        assert_eq!(
            Params::try_from(&parsed).unwrap().m_cost(),
            Params::DEFAULT_M_COST
        );
        // And in the same memory, by our own check.
        assert!(memory.verify(&parsed, b"new password").unwrap());
        // A fresh salt each time.
        assert_ne!(memory.hash(b"new password").unwrap(), text);
    }
}
