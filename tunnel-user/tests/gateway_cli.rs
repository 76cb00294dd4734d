//! The `tunnel-gateway` binary as an operator runs it: `adduser` with the password on stdin,
//! and `--check-config`.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output, Stdio},
};

use tunnel_user::gateway::{AuthError, HashLimits, UsersFile};

const BIN: &str = env!("CARGO_BIN_EXE_tunnel-gateway");

/// Runs the binary with `args` and `stdin`, and waits for it.
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("writing the password");
    child
        .wait_with_output()
        .expect("waiting for tunnel-gateway")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "tunnel-gateway failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn adduser_creates_replaces_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let users_arg = users.to_str().unwrap();

    let out = run(
        &["adduser", "--users", users_arg, "alice"],
        b"correct horse\n",
    );
    assert_success(&out);
    assert!(
        text(&out.stdout).contains("added user alice (realms: Users)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        fs::metadata(&users).unwrap().permissions().mode() & 0o7777,
        0o600
    );

    let out = run(
        &[
            "adduser", "--users", users_arg, "bob", "--realm", "Users", "--realm", "Admins",
        ],
        b"bob's password",
    );
    assert_success(&out);

    let file = UsersFile::load(&users, &HashLimits::default()).unwrap();
    assert_eq!(file.len(), 2);
    // The trailing newline was not part of the password.
    file.verify("Users", "alice", b"correct horse").unwrap();
    assert!(matches!(
        file.verify("Users", "alice", b"correct horse\n"),
        Err(AuthError::WrongPassword { .. })
    ));
    file.verify("Admins", "bob", b"bob's password").unwrap();
    assert!(matches!(
        file.verify("Admins", "alice", b"correct horse"),
        Err(AuthError::RealmNotAllowed { .. })
    ));

    // Replacing alice's password: the old one stops working.
    let out = run(
        &["adduser", "--users", users_arg, "alice"],
        b"battery staple\r\n",
    );
    assert_success(&out);
    assert!(
        text(&out.stdout).contains("replaced user alice"),
        "{}",
        text(&out.stdout)
    );
    let file = UsersFile::load(&users, &HashLimits::default()).unwrap();
    assert_eq!(file.len(), 2);
    file.verify("Users", "alice", b"battery staple").unwrap();
    assert!(file.verify("Users", "alice", b"correct horse").is_err());

    // Atomic updates leave no temporary file behind, and the password is nowhere on disk.
    assert_eq!(dir_entries(dir.path()), ["users"]);
    assert!(!fs::read_to_string(&users).unwrap().contains("battery"));
    assert_eq!(
        fs::metadata(&users).unwrap().permissions().mode() & 0o7777,
        0o600
    );
}

#[test]
fn adduser_refusals_are_clear_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let users_arg = users.to_str().unwrap();

    let out = run(&["adduser", "--users", users_arg, "al:ice"], b"pw\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("user name \"al:ice\" is not allowed"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["adduser", "--users", users_arg, "alice"], b"\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the password is empty"),
        "{}",
        text(&out.stderr)
    );
    assert!(!users.exists());

    fs::write(&users, "alice:Users:not-a-hash\n").unwrap();
    // A password no temporary path or message can hold by chance.
    let out = run(&["adduser", "--users", users_arg, "bob"], b"Zq7-secret\n");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 1:"), "{stderr}");
    assert!(!stderr.contains("Zq7-secret"), "{stderr}");
    assert_eq!(
        fs::read_to_string(&users).unwrap(),
        "alice:Users:not-a-hash\n"
    );
    assert_eq!(dir_entries(dir.path()), ["users"]);
}

#[test]
fn check_config_prints_the_effective_config_or_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    for name in ["server.pem", "server.key"] {
        fs::write(dir.path().join(name), "placeholder\n").unwrap();
    }
    let users = dir.path().join("users");
    assert_success(&run(
        &["adduser", "--users", users.to_str().unwrap(), "alice"],
        b"pw\n",
    ));
    let body = "\
mtu = 1380

[tls]
certificate = \"server.pem\"
key = \"server.key\"

[auth]
users_file = \"users\"

[pool]
ipv4 = \"10.20.0.0/24\"
";
    fs::write(&config, body).unwrap();
    let out = run(&["--check-config", config.to_str().unwrap()], b"");
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains(": OK"), "{stdout}");
    assert!(stdout.contains("mtu                    1380"), "{stdout}");
    assert!(
        stdout.contains("pool.gateway_ipv4      10.20.0.1"),
        "{stdout}"
    );
    assert!(stdout.contains("esp.port               4500"), "{stdout}");
    assert!(stdout.contains("users                  1 in "), "{stdout}");

    fs::write(&config, body.replace("mtu = 1380", "mtu = 100")).unwrap();
    let out = run(&["--check-config", config.to_str().unwrap()], b"");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "tunnel-gateway: {}: mtu: 100 is outside 1280-9000",
            config.display()
        )
    );
}

#[test]
fn check_config_refuses_a_users_file_hash_beyond_the_cost_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    for name in ["server.pem", "server.key"] {
        fs::write(dir.path().join(name), "placeholder\n").unwrap();
    }
    let users = dir.path().join("users");
    assert_success(&run(
        &["adduser", "--users", users.to_str().unwrap(), "alice"],
        b"pw\n",
    ));
    fs::write(
        &config,
        "[tls]\ncertificate = \"server.pem\"\nkey = \"server.key\"\n\n[auth]\n\
         users_file = \"users\"\n\n[pool]\nipv4 = \"10.20.0.0/24\"\n",
    )
    .unwrap();
    let out = run(&["--check-config", config.to_str().unwrap()], b"");
    assert_success(&out);
    let stdout = text(&out.stdout);
    for line in [
        "auth.passwords.source_failures     5",
        "auth.passwords.hash_max_memory_kib 65536",
        "auth.certificate.login     password",
        "auth.password_request  current",
        "auth.passwords.min_length          8",
        "auth.passwords.max_age_days        0 (never)",
        "realm.Users.second_factor         none",
        "realm.Users.pool_ipv4             10.20.0.0/24 (global)",
    ] {
        assert!(stdout.contains(line), "{line:?} missing: {stdout}");
    }
    // A hash asking for 4 GiB of memory: refused when the file is read (the gateway used to
    // start, then allocate it at the login).
    let text_before = fs::read_to_string(&users).unwrap();
    fs::write(&users, text_before.replace("m=19456", "m=4194304")).unwrap();
    let out = run(&["--check-config", config.to_str().unwrap()], b"");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "line 3: the hash cannot be checked: the hash asks for argon2 m=4194304, more than \
             the 65536 allowed"
        ),
        "{stderr}"
    );
    // Allowed by a larger bound (up to 1 GiB): not this one.
    fs::write(
        &config,
        fs::read_to_string(&config).unwrap()
            + "\n[auth.passwords]\nhash_max_memory_kib = 1048576\n",
    )
    .unwrap();
    let out = run(&["--check-config", config.to_str().unwrap()], b"");
    assert!(!out.status.success());
    fs::write(&users, text_before.replace("m=19456", "m=1048576")).unwrap();
    assert_success(&run(&["--check-config", config.to_str().unwrap()], b""));
}

#[test]
fn no_arguments_shows_help_and_fails() {
    let out = run(&[], b"");
    assert!(!out.status.success());
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains("adduser") && all.contains("--check-config"),
        "{all}"
    );
}

/// The value of `key` in the query of `uri`.
fn query_value<'a>(uri: &'a str, key: &str) -> Option<&'a str> {
    uri.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
}

#[test]
fn adduser_totp_prints_the_uri_of_the_stored_secret() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let users_arg = users.to_str().unwrap();
    let out = run(
        &[
            "adduser",
            "--users",
            users_arg,
            "j.doe@corp",
            "--totp",
            "--totp-issuer",
            "ACME VPN",
        ],
        b"correct horse\n",
    );
    assert_success(&out);
    let stdout = text(&out.stdout);
    let uri = stdout
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .unwrap_or_else(|| panic!("no URI: {stdout}"));
    assert!(
        uri.starts_with("otpauth://totp/ACME%20VPN:j.doe%40corp?"),
        "{uri}"
    );
    for (key, value) in [
        ("issuer", "ACME%20VPN"),
        ("algorithm", "SHA1"),
        ("digits", "6"),
        ("period", "30"),
    ] {
        assert_eq!(query_value(uri, key), Some(value), "{uri}");
    }
    let secret = query_value(uri, "secret").unwrap();
    assert_eq!(secret.len(), 32, "20 bytes in base32: {uri}");
    // The stored secret is the printed one, and the password's time is now.
    let file = UsersFile::load(&users, &HashLimits::default()).unwrap();
    let attrs = file.attributes("j.doe@corp").unwrap();
    assert_eq!(attrs.totp.as_ref().unwrap().to_base32(), secret);
    let now = tunnel_user::gateway::unix_now();
    let changed = attrs.changed.unwrap();
    assert!(now.abs_diff(changed) < 60, "changed={changed}, now={now}");
    assert!(!attrs.must_change);
    // Nothing about the secret on stderr (logs), and no warning for a short password.
    assert!(!text(&out.stderr).contains(secret), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );

    // Replaced without --totp: the password changes, the secret stays; --must-change sets
    // the flag.
    let out = run(
        &[
            "adduser",
            "--users",
            users_arg,
            "j.doe@corp",
            "--must-change",
        ],
        b"battery staple\n",
    );
    assert_success(&out);
    assert!(!text(&out.stdout).contains("otpauth://"));
    assert!(text(&out.stdout).contains("must change the password"));
    let file = UsersFile::load(&users, &HashLimits::default()).unwrap();
    let attrs = file.attributes("j.doe@corp").unwrap();
    assert_eq!(attrs.totp.as_ref().unwrap().to_base32(), secret);
    assert!(attrs.must_change);
    file.verify("Users", "j.doe@corp", b"battery staple")
        .unwrap();

    // A new --totp replaces the secret.
    let out = run(
        &["adduser", "--users", users_arg, "j.doe@corp", "--totp"],
        b"battery staple\n",
    );
    assert_success(&out);
    let uri = text(&out.stdout);
    assert!(uri.contains("otpauth://totp/tunnel:j.doe%40corp?"), "{uri}");
    let file = UsersFile::load(&users, &HashLimits::default()).unwrap();
    assert_ne!(
        file.attributes("j.doe@corp")
            .unwrap()
            .totp
            .as_ref()
            .unwrap()
            .to_base32(),
        secret
    );
    assert_eq!(dir_entries(dir.path()), ["users"]);
}

#[test]
fn adduser_warns_about_passwords_current_clients_cut() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let users_arg = users.to_str().unwrap();
    let out = run(
        &["adduser", "--users", users_arg, "alice"],
        b"eighteen bytes!!!!\n",
    );
    assert_success(&out);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &["adduser", "--users", users_arg, "alice"],
        b"nineteen bytes!!!!!\n",
    );
    assert_success(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "warning: the password is 19 bytes long; clients of current Ivanti gateways send \
             at most 18 bytes"
        ),
        "{stderr}"
    );
    // Still stored whole: legacy clients send it all.
    UsersFile::load(&users, &HashLimits::default())
        .unwrap()
        .verify("Users", "alice", b"nineteen bytes!!!!!")
        .unwrap();
    // --totp-issuer means nothing without --totp. (No stdin: the flags are refused before
    // it would be read, and a write to the closed pipe would fail.)
    let out = run(
        &["adduser", "--users", users_arg, "bob", "--totp-issuer", "X"],
        b"",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--totp"),
        "{}",
        text(&out.stderr)
    );
}
