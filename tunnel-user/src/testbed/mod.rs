//! Network-namespace test beds for the end-to-end tests, the demo and the benchmark: named
//! namespaces that delete themselves, veth pairs, running code or commands inside a
//! namespace, and a TUN relay that stands in for the encrypted tunnel.
//!
//! Only addresses inside namespaces created here are used. Commands run through
//! `nsenter --net=/var/run/netns/NAME` (not `ip netns exec`, which remounts /sys and hides
//! bpffs and cgroupfs).

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::PathBuf,
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sched::{CloneFlags, setns},
};

use crate::sys::tun::Tun;

pub mod attack_world;
pub mod client_world;
pub mod dns_server;
pub mod gauge;
pub mod hostile;
pub mod load;
pub mod pki;
pub mod pulse_peer;
pub mod redis_server;
pub mod resolved;
pub mod wire;
mod world;
pub use world::SplitWorld;
/// Addresses and ports of [`SplitWorld`].
pub mod split {
    pub use super::world::{CLIENT, CORP, CORP6, GATEWAY, TCP_PORT, TUN_V4, TUN_V6, UDP_PORTS};
}

/// Whether the test runs as root, as namespace tests need (network namespaces, TUN devices,
/// eBPF); says the test is skipped when not.
pub fn root_or_skip() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIP: needs root (network namespaces, a TUN device)");
    }
    root
}

/// A network namespace that is deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

fn check(what: &str, out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Netns {
    /// Creates namespace `name` (replacing a stale one of that name) with loopback up.
    pub fn create(name: &str) -> io::Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        check(
            "ip netns add",
            Command::new("ip").args(["netns", "add", name]).output()?,
        )?;
        let ns = Netns {
            name: name.to_string(),
            path: PathBuf::from("/var/run/netns").join(name),
        };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display())).arg(program);
        c
    }

    /// Runs a shell script inside the namespace; fails with its stderr if it fails.
    pub fn sh(&self, script: &str) -> io::Result<String> {
        let out = self.command("sh").args(["-ec", script]).output()?;
        check(&format!("[{}] {script}", self.name), out)
    }

    /// Runs `f` on a thread that has joined the namespace (sockets, TUN devices and attach
    /// calls made there belong to it).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let file = fs::File::open(&self.path)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // Joins on this thread only.
                setns(&file, CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread in namespace panicked"))?
        })
    }

    /// Joins the namespace from the current thread for good (for threads that live in it).
    pub fn join_current_thread(&self) -> io::Result<()> {
        let file = fs::File::open(&self.path)?;
        Ok(setns(&file, CloneFlags::CLONE_NEWNET)?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> io::Result<()> {
    a.sh(&format!(
        "ip link add {a_if} type veth peer name {b_if} netns {}",
        b.name
    ))?;
    a.sh(&format!("ip link set {a_if} up"))?;
    b.sh(&format!("ip link set {b_if} up"))?;
    Ok(())
}

/// Packet counts of a [`TunRelay`].
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Packets read from the first TUN and written to the second.
    pub forward: AtomicU64,
    /// Packets read from the second TUN and written to the first.
    pub backward: AtomicU64,
}

/// Moves packets between two TUN devices, both ways, like a tunnel without encryption.
/// Packets going forward are also kept (up to a limit) for inspection.
pub struct TunRelay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<RelayStats>,
    pub captured: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Forward packets kept for inspection.
const CAPTURE_LIMIT: usize = 100_000;

impl TunRelay {
    pub fn start(a: Tun, b: Tun) -> io::Result<TunRelay> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let captured = Arc::new(Mutex::new(Vec::new()));
        let pump = |from: Tun, to: Tun, forward: bool| {
            let stop = stop.clone();
            let stats = stats.clone();
            let captured = captured.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if !readable(&from, Duration::from_millis(50)) {
                        continue;
                    }
                    let Ok(n) = from.recv(&mut buf) else { continue };
                    let packet = &buf[..n];
                    if forward {
                        stats.forward.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut c) = captured.lock()
                            && c.len() < CAPTURE_LIMIT
                        {
                            c.push(packet.to_vec());
                        }
                    } else {
                        stats.backward.fetch_add(1, Ordering::Relaxed);
                    }
                    // A full device queue drops the packet, as a real link would.
                    let _ = to.send(packet);
                }
            })
        };
        let threads = vec![
            pump(a.try_clone()?, b.try_clone()?, true),
            pump(b, a, false),
        ];
        Ok(TunRelay {
            stop,
            threads,
            stats,
            captured,
        })
    }
}

fn readable(tun: &Tun, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    poll(&mut fds, timeout).is_ok_and(|n| n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

impl Drop for TunRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs a bash script in namespace `ns`, inside cgroup `cgroup` (a directory of the cgroup v2
/// tree), and returns its trimmed stdout.
pub fn run_in_cgroup(ns: &Netns, cgroup: &std::path::Path, script: &str) -> io::Result<String> {
    use std::os::unix::process::CommandExt;
    let netns = fs::File::open(&ns.path)?;
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    let (ns_fd, procs_fd) = (netns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]);
    // SAFETY: only async-signal-safe calls (setns, write) between fork and exec; both
    // descriptors stay open in the parent until the child has been waited for, so the
    // child's copies are open while it borrows them.
    unsafe {
        cmd.pre_exec(move || {
            let (ns, procs) = (
                BorrowedFd::borrow_raw(ns_fd),
                BorrowedFd::borrow_raw(procs_fd),
            );
            setns(ns, CloneFlags::CLONE_NEWNET)?;
            // Writing "0" moves the writing process.
            if nix::unistd::write(procs, b"0")? != 1 {
                return Err(io::Error::other("short write to cgroup.procs"));
            }
            Ok(())
        });
    }
    let out = cmd.output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A six-digit string that is no TOTP code of `secret` within ±20 steps of now: a wrong code
/// that no clock skew makes right.
pub fn wrong_totp_code(secret: &crate::gateway::TotpSecret) -> String {
    use crate::gateway::{code_at, step_at, unix_now};
    let now = step_at(unix_now());
    let near: Vec<String> = (now - 20..=now + 20).map(|s| code_at(secret, s)).collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .expect("41 codes cannot cover a million")
}
