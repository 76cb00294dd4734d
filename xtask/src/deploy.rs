//! `cargo xtask deploy`: installs the release binaries and the systemd units. It builds with
//! `cargo build --release`, copies `tunneld`, `tunnel` and `tunnel-gateway` into
//! `<prefix>/bin` (atomically: copy to a temporary name, then rename), creates the system
//! users the units run as (`tunneld`, `tunnel-gateway`) and the gateway's configuration
//! directory, writes the units into `<unit-dir>`, and asks systemd to reload when systemd is
//! running. Enabling is left to the operator (`systemctl enable --now tunneld`), since a VPN
//! daemon that starts by itself is a decision, not a default. `--units-only` writes just the
//! units (for review or `systemd-analyze`), touching nothing else.
//!
//! The units are `xtask/units/*.service`; each says why it has what it has, and
//! `tunnel-user/tests/netns_sandbox.rs` runs the daemons with their users' lack of privilege
//! and the units' capabilities.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec;

const BINARIES: [&str; 3] = ["tunneld", "tunnel", "tunnel-gateway"];

/// The units, with `{bin}` where the binaries' directory goes.
const UNITS: [(&str, &str); 2] = [
    ("tunneld.service", include_str!("../units/tunneld.service")),
    (
        "tunnel-gateway.service",
        include_str!("../units/tunnel-gateway.service"),
    ),
];

/// The system users of the units (`User=`), each with a group of the same name.
const USERS: [(&str, &str); 2] = [
    ("tunneld", "tunnel VPN client daemon"),
    ("tunnel-gateway", "tunnel IF-T/TLS gateway"),
];

/// Where the gateway's unit reads its configuration, certificate and key: root's to write,
/// the gateway's group's to read.
const GATEWAY_CONFIG_DIR: &str = "/etc/tunnel-gateway";

/// The units' text for binaries installed in `bin`.
pub(crate) fn units(bin: &Path) -> Vec<(&'static str, String)> {
    UNITS
        .iter()
        .map(|(name, text)| (*name, text.replace("{bin}", &bin.display().to_string())))
        .collect()
}

fn install(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dst.with_extension("tunnel-new");
    fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, dst).with_context(|| format!("installing {}", dst.display()))?;
    eprintln!("deploy: installed {}", dst.display());
    Ok(())
}

fn write_units(bin: &Path, unit_dir: &Path) -> Result<()> {
    fs::create_dir_all(unit_dir).with_context(|| format!("creating {}", unit_dir.display()))?;
    for (name, text) in units(bin) {
        let path: PathBuf = unit_dir.join(name);
        let tmp = path.with_extension("tunnel-new");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        eprintln!("deploy: wrote {}", path.display());
    }
    Ok(())
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The group whose members may use tunneld's connections (tunneld's unit runs in it).
const CONTROL_GROUP: &str = "tunnel";

/// Creates the control group and the units' system users (no home, no login shell) where
/// they are missing.
fn create_users() -> Result<()> {
    let group_exists = Command::new("getent")
        .args(["group", CONTROL_GROUP])
        .output()
        .is_ok_and(|o| o.status.success());
    if !group_exists {
        exec(Command::new("groupadd").args(["--system", CONTROL_GROUP]))?;
    }
    for (name, description) in USERS {
        if user_exists(name) {
            eprintln!("deploy: system user {name} exists");
            continue;
        }
        exec(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            description,
            name,
        ]))?;
        if !user_exists(name) {
            bail!("useradd ran but there is no user {name}");
        }
    }
    Ok(())
}

/// Creates the gateway's configuration directory, root-owned and readable by the gateway's
/// group only; an existing one is left as it is.
fn gateway_config_dir() -> Result<()> {
    let dir = Path::new(GATEWAY_CONFIG_DIR);
    if dir.exists() {
        eprintln!(
            "deploy: {GATEWAY_CONFIG_DIR} exists; the gateway reads it as group tunnel-gateway (docs/gateway.md)"
        );
        return Ok(());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {GATEWAY_CONFIG_DIR}"))?;
    exec(Command::new("chown").args(["root:tunnel-gateway", GATEWAY_CONFIG_DIR]))?;
    exec(Command::new("chmod").args(["0750", GATEWAY_CONFIG_DIR]))?;
    eprintln!("deploy: created {GATEWAY_CONFIG_DIR} (root:tunnel-gateway, 0750)");
    Ok(())
}

pub fn run(root: &Path, prefix: &Path, unit_dir: &Path, units_only: bool) -> Result<()> {
    let bin = prefix.join("bin");
    if units_only {
        return write_units(&bin, unit_dir);
    }
    crate::build_release_binaries(root)?;
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let built = root.join("target/release");
    for b in BINARIES {
        install(&built.join(b), &bin.join(b), 0o755)?;
    }
    create_users()?;
    gateway_config_dir()?;
    write_units(&bin, unit_dir)?;
    if Path::new("/run/systemd/system").exists() {
        exec(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("deploy: done; start the client with `systemctl enable --now tunneld`");
    } else {
        eprintln!(
            "deploy: systemd is not running here; start `{}/tunneld` by hand",
            bin.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every `Key=` assignment of the [Service] section, in order, values joined per line.
    fn service_keys(unit: &str) -> BTreeMap<String, Vec<String>> {
        let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut in_service = false;
        for line in unit.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            if !in_service || line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {line}"));
            keys.entry(k.to_string()).or_default().push(v.to_string());
        }
        keys
    }

    fn one<'a>(keys: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
        match keys.get(key).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn caps(v: &str) -> Vec<&str> {
        let mut c: Vec<&str> = v.split_whitespace().collect();
        c.sort_unstable();
        c
    }

    /// What both daemons must have: a user of their own, capabilities no wider than the
    /// bounding set and no way to gain more, and the file-system, device, kernel and
    /// system-call sandbox.
    fn check_common(name: &str, keys: &BTreeMap<String, Vec<String>>) {
        let user = one(keys, "User");
        assert!(USERS.iter().any(|(u, _)| *u == user), "{name}: User={user}");
        let group = if user == "tunneld" {
            CONTROL_GROUP
        } else {
            user
        };
        assert_eq!(one(keys, "Group"), group, "{name}");
        assert_eq!(
            caps(one(keys, "AmbientCapabilities")),
            caps(one(keys, "CapabilityBoundingSet")),
            "{name}: the bounding set is the ambient set"
        );
        assert!(
            !one(keys, "CapabilityBoundingSet").contains("CAP_SYS_ADMIN"),
            "{name}"
        );
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateIPC", "yes"),
            ("PrivateMounts", "yes"),
            ("DevicePolicy", "closed"),
            ("DeviceAllow", "/dev/net/tun rw"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            ("ProtectClock", "yes"),
            ("ProtectHostname", "yes"),
            ("ProtectProc", "invisible"),
            ("RestrictNamespaces", "yes"),
            ("RestrictRealtime", "yes"),
            ("RestrictSUIDSGID", "yes"),
            ("LockPersonality", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("RemoveIPC", "yes"),
            ("SystemCallArchitectures", "native"),
            ("UMask", "0077"),
            (
                "RestrictAddressFamilies",
                "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
            ),
        ] {
            assert_eq!(one(keys, key), value, "{name}: {key}");
        }
        let filters = &keys["SystemCallFilter"];
        assert!(
            filters[0].starts_with("@system-service"),
            "{name}: {filters:?}"
        );
        assert!(
            filters[1..].iter().any(|f| f.starts_with('~')),
            "{name}: {filters:?}"
        );
    }

    #[test]
    fn the_gateway_unit_is_unprivileged_and_sandboxed() {
        let units = units(Path::new("/usr/local/bin"));
        let keys = service_keys(&units[1].1);
        check_common("tunnel-gateway", &keys);
        assert_eq!(one(&keys, "User"), "tunnel-gateway");
        assert_eq!(
            caps(one(&keys, "AmbientCapabilities")),
            ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(
            one(&keys, "ExecStart"),
            "/usr/local/bin/tunnel-gateway --config /etc/tunnel-gateway/gateway.toml"
        );
        assert!(one(&keys, "ExecStart").contains(GATEWAY_CONFIG_DIR));
        assert_eq!(one(&keys, "StateDirectory"), "tunnel-gateway");
        let nofile: u64 = one(&keys, "LimitNOFILE").parse().unwrap();
        assert!(nofile >= 65536, "a socket per client: {nofile}");
        assert_eq!(
            keys["SystemCallFilter"],
            ["@system-service", "~@privileged @resources"]
        );
        assert_eq!(
            one(&keys, "ReadWritePaths"),
            "/proc/sys/net/ipv4/ip_forward -/proc/sys/net/ipv6/conf/all/forwarding"
        );
    }

    #[test]
    fn the_client_unit_is_unprivileged_and_sandboxed() {
        let units = units(Path::new("/usr/local/bin"));
        let keys = service_keys(&units[0].1);
        check_common("tunneld", &keys);
        assert_eq!(one(&keys, "User"), "tunneld");
        assert_eq!(
            caps(one(&keys, "AmbientCapabilities")),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
        assert_eq!(one(&keys, "ExecStart"), "/usr/local/bin/tunneld");
        assert_eq!(one(&keys, "RuntimeDirectory"), "tunnel");
        assert_eq!(one(&keys, "StateDirectory"), "tunnel");
        // The kernel programs need bpf(2), which @privileged holds.
        assert!(
            keys["SystemCallFilter"][0]
                .split_whitespace()
                .any(|c| c == "bpf")
        );
        assert!(
            !keys["SystemCallFilter"]
                .iter()
                .any(|f| f.contains("@privileged"))
        );
    }

    /// `systemd-analyze verify` accepts both units and `security` rates them at most 2.5
    /// (9.5 and 9.7, "UNSAFE", before they got users and a sandbox). Skipped where
    /// systemd-analyze is missing.
    #[test]
    fn systemd_analyze_accepts_and_rates_the_units() {
        let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("SKIP: no systemd-analyze");
            return;
        };
        assert!(version.status.success());
        let dir = std::env::temp_dir().join(format!("xtask-units-{}", std::process::id()));
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        // verify wants ExecStart= to name executables.
        for b in BINARIES {
            fs::copy("/bin/true", bin.join(b)).unwrap();
        }
        write_units(&bin, &dir).unwrap();
        for (name, _) in UNITS {
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(dir.join(name))
                .output()
                .unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.trim().is_empty(),
                "{name}: {said}"
            );
            let out = Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--no-pager"])
                .arg(dir.join(name))
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            let score: f64 = said
                .lines()
                .find_map(|l| {
                    l.split_once("Overall exposure level for ")?
                        .1
                        .split_once(": ")
                })
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no overall exposure level in {said}"));
            assert!(score <= 2.5, "{name}: exposure {score}\n{said}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
