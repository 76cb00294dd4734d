//! A real Redis server for the cluster tests: `redis-server` (from apt, `cargo xtask setup`
//! installs it) in a namespace, with no persistence, stopped (SIGKILL) when dropped.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use super::{Netns, client_world::Proc};

/// A running redis-server; stops when dropped.
pub struct RedisServer {
    proc: Option<Proc>,
    port: u16,
    log: PathBuf,
}

impl RedisServer {
    /// Serves on 127.0.0.1:`port` in `ns`, logging into `dir`.
    pub fn start(ns: &Netns, port: u16, dir: &Path) -> std::io::Result<RedisServer> {
        let mut server = RedisServer {
            proc: None,
            port,
            log: dir.join(format!("redis-{port}.log")),
        };
        server.start_again(ns)?;
        Ok(server)
    }

    /// The URL gateways are given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (SIGKILL): everything it held is gone, as after a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again in `ns` on the same port (empty) after [`RedisServer::kill`].
    pub fn start_again(&mut self, ns: &Netns) -> std::io::Result<()> {
        let child = ns
            .command("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut proc = Proc::new(child, "redis-server");
        let started = Instant::now();
        // Ready once it accepts a connection in its namespace.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            let up = ns
                .enter(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
                .unwrap_or(false);
            if up {
                break;
            }
            if let Some(status) = proc.exited() {
                return Err(std::io::Error::other(format!(
                    "redis-server exited ({status}): {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                )));
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(std::io::Error::other("redis-server did not start in 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc = Some(proc);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
