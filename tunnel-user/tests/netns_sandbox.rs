//! The systemd units' privileges, proven: `tunnel-gateway` and `tunneld` run as an
//! unprivileged user with exactly the capabilities their unit
//! (`xtask/units/*.service`, written by `cargo xtask deploy`) gives them, with
//! no-new-privileges, and still do their job: a client logs in and packets flow. Each starts
//! through `setpriv`, whose arguments are read from the unit, and the running process's
//! credentials are checked in `/proc`. A negative control shows the capabilities are needed
//! (without them the daemon does not start), so the test cannot pass with privileges it did
//! not ask for. The world is `tunnel_user::testbed::client_world`'s.
//!
//! What the test cannot reproduce without systemd as PID 1 (the file-system and system-call
//! sandbox) is checked by `systemd-analyze` in xtask's unit tests.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, chown},
    time::Duration,
};

use tunnel_user::{
    client::control::{self, Credentials, Request},
    testbed::client_world::{CORP, ClientWorld, GATEWAY, wait_for},
};

const GATEWAY_UNIT: &str = include_str!("../../xtask/units/tunnel-gateway.service");
const TUNNELD_UNIT: &str = include_str!("../../xtask/units/tunneld.service");

/// The unprivileged user and group the daemons run as here (`nobody`, `nogroup`), standing in
/// for the units' system users.
const UID: u32 = 65534;
const GID: u32 = 65534;

/// Capability numbers (linux/capability.h) of the names the units use.
const CAPS: [(&str, u32); 5] = [
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];

fn world(tag: &str) -> ClientWorld {
    ClientWorld::build(tag, tunnel_user::this_crates_binaries!())
}

fn root() -> bool {
    tunnel_user::testbed::root_or_skip()
}

/// Every value of `key` in a unit's text (assignments may repeat; values are split on
/// whitespace).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .flat_map(|(_, v)| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// The unit's ambient capabilities, which must equal its bounding set.
fn unit_caps(unit: &str) -> Vec<String> {
    let ambient = unit_values(unit, "AmbientCapabilities");
    let mut bounding = unit_values(unit, "CapabilityBoundingSet");
    let mut sorted = ambient.clone();
    sorted.sort();
    bounding.sort();
    assert_eq!(
        sorted, bounding,
        "the unit's bounding set is its ambient set"
    );
    assert!(!ambient.is_empty());
    ambient
}

fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| {
            let bit = CAPS
                .iter()
                .find(|(name, _)| name == c)
                .unwrap_or_else(|| panic!("capability {c} is not in the test's table"))
                .1;
            1u64 << bit
        })
        .fold(0, |m, b| m | b)
}

/// `setpriv` arguments that run a program as [`UID`] with exactly `caps` (inheritable,
/// ambient, bounding) and, as `NoNewPrivileges=yes` asks, no way to gain more.
fn setpriv(caps: &[String], no_new_privs: bool) -> Vec<String> {
    let list = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let mut argv = vec![
        "setpriv".to_string(),
        format!("--reuid={UID}"),
        format!("--regid={GID}"),
        "--clear-groups".into(),
    ];
    if list.is_empty() {
        argv.extend(["--inh-caps=-all".into(), "--bounding-set=-all".into()]);
    } else {
        argv.extend([
            format!("--inh-caps=-all,{list}"),
            format!("--ambient-caps=-all,{list}"),
            format!("--bounding-set=-all,{list}"),
        ]);
    }
    if no_new_privs {
        argv.push("--no-new-privs".into());
    }
    argv.push("--".into());
    argv
}

/// A field of `/proc/PID/status`.
fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The process runs as [`UID`]/[`GID`] with no supplementary groups, exactly `mask` in every
/// capability set that matters, and no-new-privileges.
fn assert_credentials(pid: u32, mask: u64) {
    let ids = format!("{UID}\t{UID}\t{UID}\t{UID}");
    assert_eq!(status_field(pid, "Uid"), ids, "uids");
    assert_eq!(
        status_field(pid, "Gid"),
        format!("{GID}\t{GID}\t{GID}\t{GID}"),
        "gids"
    );
    assert_eq!(status_field(pid, "Groups"), "", "supplementary groups");
    for set in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        let value = u64::from_str_radix(&status_field(pid, set), 16).unwrap();
        assert_eq!(value, mask, "{set}: {value:#x}, want {mask:#x}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
}

fn connect(w: &ClientWorld, port: u16) {
    let request = Request::Connect {
        name: None,
        url: Some(format!("https://{GATEWAY}:{port}")),
        credentials: Box::new(Credentials {
            user: Some("alice".into()),
            password: Some("s3cret".into()),
            pin: Some(w.pin.clone()),
            ..Default::default()
        }),
        timeout_secs: Some(45),
    };
    let r = control::call(&w.socket(), &request, Duration::from_secs(50)).unwrap();
    assert_eq!(r.code, 0, "{r:?}");
}

/// Packets flow both ways through the tunnel: corp sees the tunnel address, over ESP.
fn assert_traffic(w: &ClientWorld) {
    let tunnel_addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(w.seen_as(CORP).as_deref(), Some(tunnel_addr.as_str()));
    wait_for("ESP", Duration::from_secs(10), || {
        w.status()[0]["transport"] == "esp"
    });
    let (intact, _) = w.udp_burst(50, 1000);
    assert_eq!(intact.len(), 50, "a burst of 50 datagrams over ESP");
}

#[test]
fn the_gateway_runs_unprivileged_with_only_its_units_capabilities() {
    if !root() {
        return;
    }
    let caps = unit_caps(GATEWAY_UNIT);
    assert_eq!(unit_values(GATEWAY_UNIT, "NoNewPrivileges"), ["yes"]);
    let w = world("g");
    // A privileged port, which only CAP_NET_BIND_SERVICE opens.
    let conf = w.dir.join("gateway.toml");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(
        &conf,
        format!("state_dir = \"gwstate\"\n{text}")
            .replace(&format!("{GATEWAY}:8443"), &format!("{GATEWAY}:443")),
    )
    .unwrap();
    // The users file and the state directory (session store, control socket) are the
    // gateway's own, as in the unit's state directory; the TLS key and the config are only
    // read.
    chown(w.dir.join("users"), Some(UID), Some(GID)).unwrap();
    let state = w.dir.join("gwstate");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    chown(&state, Some(UID), Some(GID)).unwrap();

    // Negative control: the same user without the capabilities does not get far.
    let argv: Vec<String> = setpriv(&[], true)
        .into_iter()
        .chain([
            env!("CARGO_BIN_EXE_tunnel-gateway").to_string(),
            "--config".into(),
            conf.display().to_string(),
        ])
        .collect();
    let out = w.gw.command(&argv[0]).args(&argv[1..]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "started without capabilities: {said}"
    );
    assert!(
        said.contains("creating TUN") && said.contains("Operation not permitted"),
        "{said}"
    );

    // With the unit's capabilities: it runs as that user with nothing more, and serves.
    let gw = w.start_gateway_via(&setpriv(&caps, true));
    assert_credentials(gw.id(), cap_mask(&caps));
    let _td = w.start_tunneld();
    connect(&w, 443);
    assert_traffic(&w);
    // The forwarding it turned on, the TUN device it made, the address it set.
    assert_eq!(
        w.gw.sh("sysctl -n net.ipv4.ip_forward").unwrap().trim(),
        "1"
    );
    let addr = w.gw.sh("ip -4 -o addr show dev tgw0").unwrap();
    assert!(addr.contains("10.77.0.1/24"), "{addr}");
}

#[test]
fn tunneld_runs_unprivileged_with_only_its_units_capabilities() {
    if !root() {
        return;
    }
    let caps = unit_caps(TUNNELD_UNIT);
    assert_eq!(unit_values(TUNNELD_UNIT, "NoNewPrivileges"), ["yes"]);
    let w = world("d");
    // The control socket and the state directory are tunneld's own, as the unit's runtime
    // and state directories are.
    chown(&w.dir, Some(UID), Some(GID)).unwrap();
    // Certificate logins too, with a key only root can read: tunnel (root) reads it and sends
    // it; tunneld opens no path a request names.
    let certs = w.dir.join("certs");
    fs::create_dir(&certs).unwrap();
    fs::set_permissions(&certs, fs::Permissions::from_mode(0o700)).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tunnel test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let alice_key = rcgen::KeyPair::generate().unwrap();
    let mut alice = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    alice
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let alice = alice.signed_by(&alice_key, &issuer).unwrap();
    fs::write(w.dir.join("ca.pem"), ca.pem()).unwrap();
    fs::write(certs.join("alice.pem"), alice.pem()).unwrap();
    fs::write(certs.join("alice.key"), alice_key.serialize_pem()).unwrap();
    fs::set_permissions(certs.join("alice.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let conf = w.dir.join("gateway.toml");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(
        &conf,
        text.replace("[tls]\n", "[tls]\nclient_ca = \"ca.pem\"\n"),
    )
    .unwrap();
    let _gw = w.start_gateway();

    // Negative control: without the capabilities the kernel programs are not loaded.
    let argv: Vec<String> = setpriv(&[], true)
        .into_iter()
        .chain([
            env!("CARGO_BIN_EXE_tunneld").to_string(),
            "--socket".into(),
            w.dir.join("unprivileged.sock").display().to_string(),
            "--state-dir".into(),
            w.dir.join("unprivileged-state").display().to_string(),
        ])
        .collect();
    let out = w
        .client
        .command(&argv[0])
        .args(&argv[1..])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "started without capabilities: {said}"
    );
    assert!(said.contains("eBPF"), "{said}");

    let td = w.start_tunneld_via(&setpriv(&caps, true), &[]);
    assert_credentials(td.id(), cap_mask(&caps));
    // The CLI, as root, is answered by an unprivileged tunneld.
    connect(&w, 8443);
    assert_traffic(&w);
    let out = w.tunnel(&["disconnect", GATEWAY], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A certificate login, the key readable by root only.
    let url = format!("https://{GATEWAY}:8443");
    let (cert, key) = (
        certs.join("alice.pem").display().to_string(),
        certs.join("alice.key").display().to_string(),
    );
    let out = w.tunnel(
        &[
            "connect",
            "--url",
            &url,
            "-u",
            "alice",
            "--cert",
            &cert,
            "--key",
            &key,
            "--servercert",
            &w.pin,
            "--password-stdin",
        ],
        // Our gateway asks for the password after a certificate as well.
        "s3cret\n",
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_traffic(&w);
    assert!(
        fs::read_to_string(w.dir.join("gateway.log"))
            .unwrap()
            .contains("authenticated by password and client certificate"),
        "logged in with the certificate, which tunneld could not have read"
    );
}
