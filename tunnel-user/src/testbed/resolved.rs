//! A real systemd-resolved for the tests, without systemd and without touching the host: the
//! binary from Debian's package, extracted (not installed) by `cargo xtask setup` into
//! [`RESOLVED_DIR`], on a private D-Bus system bus (its own `dbus-daemon`), in a mount
//! namespace of its own where `/etc/passwd` and `/etc/group` are copies with its user and
//! `/run/systemd` is a tmpfs. Clients reach it with `DBUS_SYSTEM_BUS_ADDRESS`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use super::{Netns, client_world::Proc};

/// Where `cargo xtask setup` extracts the systemd-resolved package.
pub const RESOLVED_DIR: &str = "/var/cache/tunnel-test/systemd-resolved";

/// systemd-resolved and its bus; both stop when dropped.
pub struct SystemdResolved {
    _resolved: Proc,
    /// The bus's pid file (it runs in the background of resolved's mount namespace).
    bus_pid: PathBuf,
    socket: PathBuf,
    ns: String,
}

impl SystemdResolved {
    /// Starts a bus and resolved in `ns`, with their files in `dir`.
    pub fn start(ns: &Netns, dir: &Path) -> std::io::Result<SystemdResolved> {
        let binary = Path::new(RESOLVED_DIR).join("lib/systemd/systemd-resolved");
        if !binary.exists() {
            return Err(std::io::Error::other(format!(
                "{} is missing: `cargo xtask setup` extracts it",
                binary.display()
            )));
        }
        let socket = dir.join("system_bus.sock");
        let _ = fs::remove_file(&socket);
        let conf = dir.join("bus.conf");
        fs::write(
            &conf,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  \
                 <type>system</type>\n  <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>\n  \
                 <policy context=\"default\">\n    <allow user=\"*\"/>\n    <allow own=\"*\"/>\n    \
                 <allow send_type=\"method_call\"/>\n    <allow send_type=\"signal\"/>\n    \
                 <allow send_type=\"method_return\"/>\n    <allow send_type=\"error\"/>\n    \
                 <allow receive_type=\"method_call\"/>\n    <allow receive_type=\"signal\"/>\n    \
                 <allow receive_type=\"method_return\"/>\n    <allow receive_type=\"error\"/>\n  \
                 </policy>\n</busconfig>\n",
                socket.display()
            ),
        )?;
        let passwd = fs::read_to_string("/etc/passwd")?
            + "systemd-resolve:x:991:991:resolve:/:/usr/sbin/nologin\n";
        let group = fs::read_to_string("/etc/group")? + "systemd-resolve:x:991:\n";
        fs::write(dir.join("passwd"), passwd)?;
        fs::write(dir.join("group"), group)?;
        let log = fs::File::create(dir.join("systemd-resolved.log"))?;
        // The bus too sees resolved's user: it checks its peers' credentials by name.
        let script = format!(
            "mount --bind {d}/passwd /etc/passwd && mount --bind {d}/group /etc/group && \
             mount -t tmpfs tmpfs /run/systemd && \
             dbus-daemon --config-file={conf} --fork --print-pid > {d}/dbus.pid && exec {}",
            binary.display(),
            d = dir.display(),
            conf = conf.display()
        );
        let resolved = Proc::new(
            ns.command("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", &script])
                .env(
                    "DBUS_SYSTEM_BUS_ADDRESS",
                    format!("unix:path={}", socket.display()),
                )
                .env("SYSTEMD_LOG_LEVEL", "debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
            "systemd-resolved",
        );
        let me = SystemdResolved {
            _resolved: resolved,
            bus_pid: dir.join("dbus.pid"),
            socket,
            ns: ns.name().to_string(),
        };
        if wait(Duration::from_secs(10), || {
            me.resolvectl(&["status"]).status.success()
        })
        .is_err()
        {
            let out = me.resolvectl(&["status"]);
            return Err(std::io::Error::other(format!(
                "systemd-resolved did not answer: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(me)
    }

    /// `DBUS_SYSTEM_BUS_ADDRESS` for its clients.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// Runs `resolvectl args` against it.
    pub fn resolvectl(&self, args: &[&str]) -> Output {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(Path::new(RESOLVED_DIR).join("usr/bin/resolvectl"))
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .env("SYSTEMD_LOG_LEVEL", "info")
            .output()
            .unwrap()
    }
}

impl Drop for SystemdResolved {
    fn drop(&mut self) {
        if let Some(pid) = fs::read_to_string(&self.bus_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn wait(timeout: Duration, f: impl Fn() -> bool) -> std::io::Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
