//! What a process costs while something is done to it, read from `/proc` on a thread of its
//! own every few tens of milliseconds: CPU seconds, resident memory (sampled and the kernel's
//! high-water mark), TCP connections it holds on one port, and the lines it wrote to its log.
//! The tests and the benchmark's attack part watch the gateway with it.
//!
//! It only reads; it never signals or changes the process it watches.

use std::{
    collections::HashSet,
    fs,
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// User plus system CPU time since the process started, seconds.
    pub cpu_secs: f64,
    /// Resident memory now, KiB.
    pub rss_kib: u64,
    /// The most resident memory so far (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// TCP connections on the watched port the process holds a descriptor of (not its
    /// listener, not connections still in the listener's queue).
    pub connections: u64,
}

/// Why a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GaugeError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no field {field}")]
    Field { path: PathBuf, field: &'static str },
    #[error("sysconf(_SC_CLK_TCK) gave no clock tick rate")]
    ClockTicks,
}

fn read(path: PathBuf) -> Result<String, GaugeError> {
    fs::read_to_string(&path).map_err(|source| GaugeError::Read { path, source })
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_secs(pid: u32) -> Result<f64, GaugeError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat = read(path.clone())?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let missing = || GaugeError::Field {
        path: path.clone(),
        field: "utime/stime",
    };
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(missing)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err(missing());
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .ok_or(GaugeError::ClockTicks)?;
    Ok((user + system) / hz as f64)
}

/// A `kB` field of `/proc/PID/status`, KiB.
pub fn status_kib(pid: u32, field: &'static str) -> Result<u64, GaugeError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    read(path.clone())?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(GaugeError::Field { path, field })
}

/// Resets the process's `VmHWM` to its resident memory now (proc(5) `clear_refs`, "5").
pub fn reset_peak(pid: u32) -> io::Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// How many TCP connections with local port `port` process `pid` holds a descriptor of, in
/// its own network namespace (`/proc/PID/net/tcp*` are the namespace's tables).
pub fn connections(pid: u32, port: u16) -> Result<u64, GaugeError> {
    let mut inodes = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let path = PathBuf::from(format!("/proc/{pid}/net/{table}"));
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // No IPv6 in the namespace.
            Err(e) if e.kind() == io::ErrorKind::NotFound && table == "tcp6" => continue,
            Err(source) => return Err(GaugeError::Read { path, source }),
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN.
            if local_port == Some(port) && *state != "0A" && *inode != "0" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = fs::read_dir(&dir).map_err(|source| GaugeError::Read {
        path: dir.clone(),
        source,
    })?;
    Ok(entries
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|l| inodes.contains(l.to_string_lossy().as_ref()))
        .count() as u64)
}

/// Reads process `pid` once; connections are counted on local port `port`.
pub fn reading(pid: u32, port: u16) -> Result<Reading, GaugeError> {
    Ok(Reading {
        cpu_secs: cpu_secs(pid)?,
        rss_kib: status_kib(pid, "VmRSS")?,
        hwm_kib: status_kib(pid, "VmHWM")?,
        connections: connections(pid, port)?,
    })
}

/// Counts the lines appended to a log file, reading only what is new each time.
#[derive(Debug)]
pub struct LogCounter {
    path: PathBuf,
    offset: u64,
    /// Lines since the counter was made.
    pub lines: u64,
    /// Bytes since the counter was made.
    pub bytes: u64,
}

impl LogCounter {
    /// Starts counting at the file's end now (a missing file is empty).
    pub fn at_end(path: &Path) -> LogCounter {
        LogCounter {
            path: path.to_path_buf(),
            offset: fs::metadata(path).map_or(0, |m| m.len()),
            lines: 0,
            bytes: 0,
        }
    }

    /// Reads what was appended since the last call.
    pub fn update(&mut self) -> io::Result<()> {
        let mut f = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.offset += n as u64;
            self.bytes += n as u64;
            self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
}

/// What a [`Gauge`] saw between its start and its stop.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Watch {
    /// Readings taken.
    pub samples: u64,
    /// CPU seconds the process used.
    pub cpu_secs: f64,
    /// The largest resident memory sampled, KiB.
    pub peak_rss_kib: u64,
    /// The kernel's high-water mark at the end, KiB (reset at the start when the gauge was
    /// allowed to).
    pub hwm_kib: u64,
    /// Resident memory at the start and at the end, KiB.
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// The most connections held at once, and at the end.
    pub peak_connections: u64,
    pub end_connections: u64,
    /// Lines and bytes written to the log.
    pub log_lines: u64,
    pub log_bytes: u64,
    /// Why readings stopped early (the process ended, ...), if they did.
    pub error: Option<String>,
}

/// Watches a process from a thread of its own until [`Gauge::stop`] (see the module docs).
pub struct Gauge {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Watch>>,
    thread: Option<JoinHandle<()>>,
}

impl Gauge {
    /// Starts watching `pid` every `period`: its connections on `port` and the lines it
    /// appends to `log`. With `reset_hwm`, the high-water mark is reset first (the process
    /// must allow it: ours as root).
    pub fn start(
        pid: u32,
        port: u16,
        log: &Path,
        period: Duration,
        reset_hwm: bool,
    ) -> Result<Gauge, GaugeError> {
        if reset_hwm {
            reset_peak(pid).map_err(|source| GaugeError::Read {
                path: PathBuf::from(format!("/proc/{pid}/clear_refs")),
                source,
            })?;
        }
        let first = reading(pid, port)?;
        let seen = Arc::new(Mutex::new(Watch {
            samples: 1,
            peak_rss_kib: first.rss_kib,
            hwm_kib: first.hwm_kib,
            rss_start_kib: first.rss_kib,
            rss_end_kib: first.rss_kib,
            peak_connections: first.connections,
            end_connections: first.connections,
            ..Watch::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut counter = LogCounter::at_end(log);
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::Builder::new()
                .name("gauge".into())
                .spawn(move || {
                    loop {
                        // One last reading after the stop.
                        let last = stop.load(Ordering::Relaxed);
                        let r = reading(pid, port);
                        let logged = counter.update();
                        let Ok(mut w) = seen.lock() else { return };
                        match r {
                            Ok(r) => {
                                w.samples += 1;
                                w.cpu_secs = r.cpu_secs - first.cpu_secs;
                                w.peak_rss_kib = w.peak_rss_kib.max(r.rss_kib);
                                w.hwm_kib = r.hwm_kib;
                                w.rss_end_kib = r.rss_kib;
                                w.peak_connections = w.peak_connections.max(r.connections);
                                w.end_connections = r.connections;
                            }
                            Err(e) => {
                                w.error.get_or_insert_with(|| e.to_string());
                            }
                        }
                        if let Err(e) = logged {
                            w.error.get_or_insert_with(|| format!("log: {e}"));
                        }
                        (w.log_lines, w.log_bytes) = (counter.lines, counter.bytes);
                        let failed = w.error.is_some();
                        drop(w);
                        if last || failed {
                            return;
                        }
                        std::thread::sleep(period);
                    }
                })
                .map_err(|source| GaugeError::Read {
                    path: PathBuf::from("gauge thread"),
                    source,
                })?
        };
        Ok(Gauge {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// What it has seen so far.
    pub fn now(&self) -> Watch {
        self.seen.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Takes a last reading and returns what it saw.
    pub fn stop(mut self) -> Watch {
        self.halt();
        self.now()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let r = reading(pid, 1).unwrap();
        assert!(r.rss_kib > 0 && r.hwm_kib >= r.rss_kib);
        assert_eq!(r.connections, 0);
        // Spend some CPU and see it counted.
        let before = cpu_secs(pid).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_secs(pid).unwrap() > before);
    }

    #[test]
    fn counts_a_tcp_connection_held_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pid = std::process::id();
        assert_eq!(
            connections(pid, port).unwrap(),
            0,
            "the listener is not one"
        );
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Both ends are ours; only the accepted one has the port as its local port.
        assert_eq!(connections(pid, port).unwrap(), 1);
        drop((client, server));
    }

    #[test]
    fn counts_appended_log_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "old\nold\n").unwrap();
        let mut c = LogCounter::at_end(&path);
        c.update().unwrap();
        assert_eq!(c.lines, 0);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"a\nb\nc").unwrap();
        c.update().unwrap();
        assert_eq!((c.lines, c.bytes), (2, 5));
    }
}
