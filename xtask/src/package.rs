//! `cargo xtask package`: the `.deb`. It builds the release binaries, stages what cargo-deb
//! packs beside them (`target/release/package/`: the units with the package's paths, the man
//! pages gzipped, the completions under the names each shell looks for), and runs cargo-deb
//! with the metadata in tunnel-user/Cargo.toml: tunnel in /usr/bin, tunneld and
//! tunnel-gateway in /usr/sbin, their units, man pages, completions, the desktop entry for
//! `pulsesecureclient://` links, and the maintainer scripts (`xtask/package/debian/`).
//!
//! `--check` then installs the package on this machine with dpkg, checks its files, users,
//! group and units (`systemd-analyze verify`), runs the installed binaries, removes it and
//! checks that only configuration is left, then purges it. `cargo xtask test` runs it.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{build_release_binaries, cargo, deploy, exec};

/// The binaries, where the package puts them, and the command that writes their docs.
const BINARIES: [(&str, &str, &[&str]); 3] = [
    ("tunnel", "/usr/bin", &["write-docs"]),
    ("tunneld", "/usr/sbin", &["--write-docs"]),
    ("tunnel-gateway", "/usr/sbin", &["write-docs"]),
];

/// Builds the package; returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    crate::setup::ensure_cargo_deb()?;
    build_release_binaries(root)?;
    let release = root.join("target/release");
    let stage = release.join("package");
    let _ = fs::remove_dir_all(&stage);
    for dir in ["units", "man", "bash", "zsh", "fish", "docs"] {
        fs::create_dir_all(stage.join(dir))?;
    }
    for (bin, _, write_docs) in BINARIES {
        let out = stage.join("docs").join(bin);
        exec(Command::new(release.join(bin)).args(write_docs).arg(&out))?;
        for page in fs::read_dir(out.join("man"))? {
            let page = page?.path();
            let name = page.file_name().unwrap().to_string_lossy().into_owned();
            // Debian's manuals are gzipped, without a timestamp (reproducible).
            let gz = fs::File::create(stage.join("man").join(format!("{name}.gz")))?;
            exec(
                Command::new("gzip")
                    .args(["-9n", "-c"])
                    .arg(&page)
                    .stdout(gz),
            )?;
        }
        let completions = out.join("completions");
        fs::copy(
            completions.join(format!("{bin}.bash")),
            stage.join("bash").join(bin),
        )?;
        fs::copy(
            completions.join(format!("_{bin}")),
            stage.join("zsh").join(format!("_{bin}")),
        )?;
        fs::copy(
            completions.join(format!("{bin}.fish")),
            stage.join("fish").join(format!("{bin}.fish")),
        )?;
    }
    for (name, text) in deploy::units(Path::new("/usr/sbin")) {
        fs::write(stage.join("units").join(name), text)?;
    }
    let out = root.join("target/debian");
    fs::create_dir_all(&out)?;
    cargo(
        root,
        &[
            "deb",
            "-p",
            "tunnel-user",
            "--no-build",
            // The release profile keeps line tables for the bench's profiles; the package
            // ships without them.
            "--strip",
            "--output",
            &out.to_string_lossy(),
        ],
    )?;
    let mut debs: Vec<PathBuf> = fs::read_dir(&out)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    let deb = debs.pop().context("cargo-deb wrote no .deb")?;
    eprintln!("package: {}", deb.display());
    Ok(deb)
}

/// What the package must install, with its mode.
fn expected_files() -> Vec<(String, u32)> {
    let mut files: Vec<(String, u32)> = BINARIES
        .iter()
        .map(|(bin, dir, _)| (format!("{dir}/{bin}"), 0o755))
        .collect();
    for unit in ["tunneld.service", "tunnel-gateway.service"] {
        files.push((format!("/lib/systemd/system/{unit}"), 0o644));
    }
    for page in [
        "tunnel.1.gz",
        "tunnel-connect.1.gz",
        "tunnel-status.1.gz",
        "tunneld.1.gz",
        "tunnel-gateway.1.gz",
    ] {
        files.push((format!("/usr/share/man/man1/{page}"), 0o644));
    }
    for (bin, _, _) in BINARIES {
        files.push((
            format!("/usr/share/bash-completion/completions/{bin}"),
            0o644,
        ));
        files.push((format!("/usr/share/zsh/vendor-completions/_{bin}"), 0o644));
        files.push((
            format!("/usr/share/fish/vendor_completions.d/{bin}.fish"),
            0o644,
        ));
    }
    files.push(("/usr/share/applications/tunnel-open.desktop".into(), 0o644));
    files
}

fn output(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {line}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{line} failed: {}\n{text}",
        out.status
    );
    Ok(text)
}

fn exists_in_db(kind: &str, name: &str) -> bool {
    Command::new("getent")
        .args([kind, name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs `deb`, checks it, removes and purges it.
pub fn check(deb: &Path) -> Result<()> {
    exec(Command::new("dpkg").arg("-i").arg(deb))?;
    let result = check_installed();
    // Removed whatever the checks said, so the machine is left as it was found.
    let removed = exec(Command::new("dpkg").args(["-r", "tunnel"])).and_then(|()| check_removed());
    let purged = exec(Command::new("dpkg").args(["-P", "tunnel"]));
    result?;
    removed?;
    purged?;
    ensure!(
        !Path::new("/etc/tunnel-gateway").exists(),
        "purging left /etc/tunnel-gateway"
    );
    eprintln!("package: installed, checked, removed and purged");
    Ok(())
}

fn check_installed() -> Result<()> {
    let listed = output(Command::new("dpkg").args(["-L", "tunnel"]))?;
    for (path, mode) in expected_files() {
        ensure!(
            listed.lines().any(|l| l == path),
            "dpkg -L tunnel does not list {path}"
        );
        let meta = fs::metadata(&path).with_context(|| format!("installed {path}"))?;
        ensure!(
            meta.permissions().mode() & 0o7777 == mode,
            "{path} has mode {:o}, not {mode:o}",
            meta.permissions().mode() & 0o7777
        );
    }
    for user in ["tunneld", "tunnel-gateway"] {
        ensure!(exists_in_db("passwd", user), "no system user {user}");
    }
    ensure!(exists_in_db("group", "tunnel"), "no group tunnel");
    let dir = fs::metadata("/etc/tunnel-gateway").context("/etc/tunnel-gateway")?;
    ensure!(dir.permissions().mode() & 0o7777 == 0o750);
    for unit in ["tunneld.service", "tunnel-gateway.service"] {
        let said = output(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(format!("/lib/systemd/system/{unit}")),
        )?;
        ensure!(
            said.trim().is_empty(),
            "systemd-analyze verify {unit}: {said}"
        );
    }
    let unit = fs::read_to_string("/lib/systemd/system/tunneld.service")?;
    ensure!(unit.contains("ExecStart=/usr/sbin/tunneld\n"), "{unit}");
    ensure!(unit.contains("Type=notify\n"), "{unit}");
    let version = env!("CARGO_PKG_VERSION");
    for bin in ["/usr/bin/tunnel", "/usr/sbin/tunneld"] {
        let said = output(Command::new(bin).arg("--version"))?;
        ensure!(said.contains(version), "{bin} --version: {said}");
    }
    let said = output(Command::new("/usr/sbin/tunnel-gateway").arg("--help"))?;
    ensure!(said.contains("--config"), "tunnel-gateway --help: {said}");
    // The installed tunnel talks to no tunneld: it says so, with pulselauncher's code.
    let out = Command::new("/usr/bin/tunnel")
        .args(["--socket", "/nonexistent/tunneld.sock", "status"])
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && said.contains("not running"),
        "tunnel status without tunneld: {said}"
    );
    let page = output(Command::new("zcat").arg("/usr/share/man/man1/tunnel-connect.1.gz"))?;
    ensure!(page.contains(".TH tunnel-connect 1"), "{page}");
    let desktop = fs::read_to_string("/usr/share/applications/tunnel-open.desktop")?;
    ensure!(
        desktop.contains("MimeType=x-scheme-handler/pulsesecureclient;"),
        "{desktop}"
    );
    Ok(())
}

fn check_removed() -> Result<()> {
    for (path, _) in expected_files() {
        ensure!(!Path::new(&path).exists(), "removing left {path}");
    }
    // Configuration stays until a purge.
    ensure!(
        Path::new("/etc/tunnel-gateway").is_dir(),
        "removing took the configuration directory"
    );
    let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", "tunnel"]))?;
    if !status.contains("config-files") {
        bail!("after dpkg -r, the package is '{status}', not config-files");
    }
    Ok(())
}
