//! `cargo xtask deploy`: installs the release binaries and systemd units. It builds with
//! `cargo build --release`, copies `tunneld`, `tunnel` and `tunnel-gateway` into
//! `<prefix>/bin` (atomically: copy to a temporary name, then rename), writes the units into
//! `<unit-dir>`, and asks systemd to reload when systemd is running. Enabling is left to the
//! operator (`systemctl enable --now tunneld`), since a VPN daemon that starts by itself is a
//! decision, not a default.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::exec;

const BINARIES: [&str; 3] = ["tunneld", "tunnel", "tunnel-gateway"];

fn unit_tunneld(bin: &Path) -> String {
    format!(
        "[Unit]
Description=tunnel VPN client daemon
Documentation=file:///usr/share/doc/tunnel/README.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={bin}/tunneld
Restart=on-failure
RestartSec=2
RuntimeDirectory=tunnel
RuntimeDirectoryMode=0700
StateDirectory=tunnel
StateDirectoryMode=0700
# It loads eBPF programs and configures interfaces and routes.
AmbientCapabilities=CAP_NET_ADMIN CAP_BPF CAP_PERFMON CAP_SYS_ADMIN
ProtectHome=yes

[Install]
WantedBy=multi-user.target
",
        bin = bin.display()
    )
}

fn unit_gateway(bin: &Path) -> String {
    format!(
        "[Unit]
Description=tunnel IF-T/TLS gateway
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={bin}/tunnel-gateway --config /etc/tunnel/gateway.toml
Restart=on-failure
RestartSec=2
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE

[Install]
WantedBy=multi-user.target
",
        bin = bin.display()
    )
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

pub fn run(root: &Path, prefix: &Path, unit_dir: &Path) -> Result<()> {
    crate::build_release_binaries(root)?;
    let bin = prefix.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let built = root.join("target/release");
    for b in BINARIES {
        install(&built.join(b), &bin.join(b), 0o755)?;
    }
    fs::create_dir_all(unit_dir).with_context(|| format!("creating {}", unit_dir.display()))?;
    for (name, text) in [
        ("tunneld.service", unit_tunneld(&bin)),
        ("tunnel-gateway.service", unit_gateway(&bin)),
    ] {
        let path: PathBuf = unit_dir.join(name);
        let tmp = path.with_extension("tunnel-new");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        eprintln!("deploy: wrote {}", path.display());
    }
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
