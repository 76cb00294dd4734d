//! Unattended login: an administrator's `.pulsepreconfig` with an automatic connection whose
//! identity is the machine's, a machine certificate (PKCS#12) in tunneld's store and the
//! gateway's pin.
//! tunneld comes up connected with no command, and again after it is killed and started.
//! The world of `tunnel_user::testbed::client_world`, the gateway logging in by certificate.

use std::{
    fs,
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::said;

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tunnel_user::testbed::{
    client_world::{CORP, ClientWorld, GATEWAY, wait_for},
    pki::{ClientNames, TestCa},
};

fn connected(w: &ClientWorld) -> bool {
    w.status().as_array().is_some_and(|a| {
        a.iter()
            .any(|c| c["name"] == "corp" && c["state"] == "connected")
    })
}

#[test]
fn an_automatic_machine_connection_comes_up_with_no_command() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("ua", tunnel_user::this_crates_binaries!());
    let mut ca = TestCa::new("Corp Machines CA");
    let machine = ca.issue(&ClientNames::cn("alice"));
    fs::write(w.dir.join("client-ca.pem"), ca.pem()).unwrap();
    let conf = w.dir.join("gateway.toml");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(
        &conf,
        text.replace("[tls]\n", "[tls]\nclient_ca = \"client-ca.pem\"\n")
            + "\n[auth.certificate]\nlogin = \"certificate\"\n",
    )
    .unwrap();
    let (cert, key) = (w.dir.join("machine.pem"), w.dir.join("machine.key"));
    fs::write(&cert, &machine.cert_pem).unwrap();
    fs::write(&key, &machine.key_pem).unwrap();
    let _gw = w.start_gateway();

    // The administrator's set-up, once: the machine certificate and the preconfig.
    let td = w.start_tunneld();
    let preconfig = w.dir.join("machine.pulsepreconfig");
    fs::write(
        &preconfig,
        format!(
            "schema version {{\n  version: \"1\"\n}}\n\n\
             ive \"7d3c1f0e-0000-4000-8000-000000000004\" {{\n  friendly-name: \"corp\"\n  \
             uri: \"https://{GATEWAY}:8443\"\n  connection-policy: \"automatic\"\n  \
             connection-identity: \"machine\"\n  server-pin: \"{GATEWAY} {}\"\n}}\n",
            w.pin
        ),
    )
    .unwrap();
    let out = w.tunnel(&["import", preconfig.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(0), "import: {}", said(&out));
    // The machine's identity without a machine certificate: refused, saying so, and no
    // prompt for a user's password.
    let out = w.tunnel(&["connect", "corp"], "");
    assert_eq!(out.status.code(), Some(6), "{}", said(&out));
    assert!(
        said(&out).contains("no machine certificate is stored"),
        "{}",
        said(&out)
    );
    // The machine certificate comes as PKCS#12, as machines' certificates are handed out.
    let p12 = w.dir.join("machine.p12");
    let made = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:machine-pw"])
        .arg("-in")
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&p12)
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl: {}", said(&made));
    let import = |password: &str| {
        w.tunnel(
            &["cert", "import", p12.to_str().unwrap(), "--password-stdin"],
            &format!("{password}\n"),
        )
    };
    let out = import("wrong");
    assert_eq!(out.status.code(), Some(6), "{}", said(&out));
    assert!(said(&out).contains("a wrong password?"), "{}", said(&out));
    let out = import("machine-pw");
    assert_eq!(out.status.code(), Some(0), "cert import: {}", said(&out));
    // The stored chain and its key, one file, root's only.
    let key_file = w.dir.join("state/certs/alice.pem");
    assert!(
        fs::read_to_string(&key_file)
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&key_file).unwrap().permissions())
            & 0o777,
        0o600,
        "{}",
        key_file.display()
    );
    drop(td);

    // From now on nobody types anything.
    let started = Instant::now();
    let td = w.start_tunneld();
    wait_for("connected with no command", Duration::from_secs(20), || {
        connected(&w)
    });
    let first = started.elapsed();
    let addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));

    kill(Pid::from_raw(td.id() as i32), Signal::SIGKILL).unwrap();
    drop(td);
    fs::remove_file(w.socket()).unwrap();
    let started = Instant::now();
    let _td = w.start_tunneld();
    wait_for("connected again", Duration::from_secs(20), || connected(&w));
    let again = started.elapsed();
    let addr = w.status()[0]["ipv4"].as_str().unwrap().to_string();
    assert_eq!(w.seen_as(CORP).as_deref(), Some(addr.as_str()));
    eprintln!(
        "unattended: connected {:.0} ms after tunneld started; after SIGKILL, {:.0} ms after it started again",
        first.as_secs_f64() * 1e3,
        again.as_secs_f64() * 1e3
    );
}
