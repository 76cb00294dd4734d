//! Who may ask tunneld what, by the control socket's peer credentials: root anything;
//! members of the control group (`tunneld --control-group`, here the system's `users`, gid
//! 100) may use the stored connections and see their state; anyone else nothing.

use std::{fs, os::unix::fs::MetadataExt, process::Output};
use tunnel_user::testbed::client_world::said;

use tunnel_user::testbed::client_world::{ClientWorld, GATEWAY};

const USERS_GID: u32 = 100;

/// Runs `tunnel args` as uid 65534 with the supplementary groups `groups` (none: empty).
fn as_nobody(w: &ClientWorld, groups: &str, args: &[&str], stdin: &str) -> Output {
    let mut setpriv: Vec<String> = ["setpriv", "--reuid", "65534", "--regid", "65534"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if groups.is_empty() {
        setpriv.push("--clear-groups".into());
    } else {
        setpriv.extend(["--groups".to_string(), groups.to_string()]);
    }
    w.tunnel_via(&setpriv, args, stdin)
}

#[test]
fn members_use_connections_root_alone_changes_them_others_nothing() {
    if !tunnel_user::testbed::root_or_skip() {
        return;
    }
    let w = ClientWorld::build("ctl", tunnel_user::this_crates_binaries!());
    // The world's directory is the socket's: others must be able to reach the socket in it.
    fs::set_permissions(&w.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _gw = w.start_gateway();
    let _td = w.start_tunneld_args(&["--control-group", "users"]);
    let meta = fs::metadata(w.socket()).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, USERS_GID),
        "the socket is the group's"
    );
    let url = format!("https://{GATEWAY}:8443");
    let out = w.tunnel(&["add", "corp", "--url", &url, "-u", "alice"], "");
    assert_eq!(out.status.code(), Some(0), "root adds: {}", said(&out));

    // A member: status, connect, disconnect.
    let member = |args: &[&str], stdin: &str| as_nobody(&w, "100", args, stdin);
    let out = member(&["status"], "");
    assert_eq!(out.status.code(), Some(0), "member status: {}", said(&out));
    let out = member(
        &[
            "connect",
            "corp",
            "-u",
            "alice",
            "--password-stdin",
            "--servercert",
            &w.pin,
        ],
        "s3cret\n",
    );
    assert_eq!(out.status.code(), Some(0), "member connect: {}", said(&out));
    assert_eq!(w.status()[0]["state"], "connected");
    let out = member(&["disconnect", "corp"], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "member disconnect: {}",
        said(&out)
    );

    // What stays root's, refused to the member by tunneld.
    let preconfig = w.dir.join("x.pulsepreconfig");
    fs::write(
        &preconfig,
        "schema version {\n  version: \"1\"\n}\n\nmachine settings {\n  lock-down: \"true\"\n}\n",
    )
    .unwrap();
    fs::set_permissions(
        &preconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    for args in [
        vec!["add", "other", "--url", &url],
        vec!["delete", "corp"],
        vec!["import", preconfig.to_str().unwrap()],
        vec!["stop"],
    ] {
        let out = member(&args, "");
        assert_ne!(
            out.status.code(),
            Some(0),
            "member {args:?}: {}",
            said(&out)
        );
        assert!(
            said(&out).contains("only root may do that"),
            "member {args:?}: {}",
            said(&out)
        );
    }
    let listed = w.tunnel(&["list"], "");
    assert!(
        said(&listed).contains("corp") && !said(&listed).contains("other"),
        "{}",
        said(&listed)
    );
    assert!(
        !fs::read_to_string(w.dir.join("state/connections.json"))
            .unwrap()
            .contains("\"vpn_only_access\": true"),
        "the member's import changed nothing"
    );

    // Not a member: the socket's permissions keep them out.
    let out = as_nobody(&w, "", &["status"], "");
    assert_ne!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains("refused us"), "{}", said(&out));
}
