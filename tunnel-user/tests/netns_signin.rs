//! The sign-in prompts after the password, end to end: `tunneld` and `tunnel` (and its
//! launcher) against our gateway with realm rules (TOTP, an expired password, notices, the
//! session limit), and against a scripted gateway that asks for something no client
//! answers. The world is `tunnel_user::testbed::client_world`'s.
//!
//! Every refusal is checked for its message, its exit code and the absence of a session
//! (the gateway's "session established" lines); every test has its positive control.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tunnel_user::testbed::client_world::{code, said};

use tunnel_proto::{
    AuthRequest, EAP_VENDOR_JUNIPER, EapCode, InnerRequest, Message, Server, ServerConfig,
    ServerEvent, encode_juniper_avps,
};
use tunnel_user::gateway::{AddOptions, TotpSecret, add_user_with, code_at, step_at, unix_now};
use tunnel_user::testbed::{
    client_world::{ClientWorld, GATEWAY, wait_for},
    pulse_peer::{Answers, PulsePeer},
};

const ESTABLISHED: &str = "session established";
/// Long enough for a login; far shorter than the connect timeout (45 s), so a prompt that
/// waited for it instead of failing shows.
const PROMPT_FAILS_WITHIN: Duration = Duration::from_secs(15);

fn root() -> bool {
    tunnel_user::testbed::root_or_skip()
}

/// A world whose gateway has `realm` (TOML) after its configuration and whose alice (password
/// `s3cret`) has `options`; tunneld trusts the gateway's certificate as a CA (the launcher has
/// no pin option).
fn world(tag: &str, realm: &str, options: &AddOptions) -> ClientWorld {
    let w = ClientWorld::build(tag, tunnel_user::this_crates_binaries!());
    let config = w.dir.join("gateway.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push('\n');
    text.push_str(realm);
    fs::write(&config, text).unwrap();
    add_user_with(
        &w.dir.join("users"),
        "alice",
        &["Users".to_string()],
        b"s3cret",
        options,
    )
    .unwrap();
    w
}

fn url() -> String {
    format!("https://{GATEWAY}:8443")
}

/// `tunnel connect` as alice with `extra` options and `stdin` (the password first).
fn connect(w: &ClientWorld, extra: &[&str], stdin: &str) -> (Output, Duration) {
    let url = url();
    let mut args = vec![
        "connect",
        "--url",
        &url,
        "-u",
        "alice",
        "--password-stdin",
        "--servercert",
        &w.pin,
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let out = w.tunnel(&args, stdin);
    (out, started.elapsed())
}

/// `tunnel connect` as alice at a terminal (a pseudo-terminal made by util-linux `script`),
/// where `typed` is typed: the password, then the answers to what is asked.
fn connect_at_terminal(w: &ClientWorld, typed: &str) -> Output {
    let command = format!(
        "{} --socket {} connect --url {} -u alice --servercert {}",
        w.bin.tunnel.display(),
        w.socket().display(),
        url(),
        w.pin
    );
    let mut child = w
        .client
        .command("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(typed.as_bytes()).unwrap();
    // The terminal stays open until the command ends: `script` would end the session at
    // the end of its input.
    let out = child.wait_with_output();
    drop(stdin);
    out.unwrap()
}

/// `tunnel launcher` as alice (password `s3cret`) with `extra` arguments.
fn launcher(w: &ClientWorld, extra: &[&str]) -> (Output, Duration) {
    let url = url();
    let mut args = vec!["launcher", "-url", &url, "-u", "alice", "-p", "s3cret"];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let out = w.tunnel(&args, "");
    (out, started.elapsed())
}

fn gateway_log(w: &ClientWorld) -> String {
    fs::read_to_string(w.dir.join("gateway.log")).unwrap_or_default()
}

fn sessions(w: &ClientWorld) -> usize {
    gateway_log(w).matches(ESTABLISHED).count()
}

fn event_log(w: &ClientWorld) -> String {
    fs::read_to_string(w.dir.join("state").join("tunneld.log")).unwrap_or_default()
}

fn signout(w: &ClientWorld) {
    let out = w.tunnel(&["signout", GATEWAY], "");
    assert_eq!(code(&out), 0, "signout: {}", said(&out));
}

/// Asserts a connect failed at once with `exit`, saying every part of `parts`, and made no
/// session.
fn refused(w: &ClientWorld, (out, took): (Output, Duration), exit: i32, parts: &[&str]) {
    let text = said(&out);
    assert_eq!(code(&out), exit, "{text}");
    for part in parts {
        assert!(text.contains(part), "'{part}' missing from: {text}");
    }
    assert!(took < PROMPT_FAILS_WITHIN, "took {took:?}: {text}");
    assert_eq!(
        w.status(),
        serde_json::json!([]),
        "no connection is left behind"
    );
}

use tunnel_user::testbed::wrong_totp_code as wrong_code;

#[test]
fn totp_codes_come_from_options_and_each_refusal_says_why() {
    if !root() {
        return;
    }
    let secret = TotpSecret::generate();
    let options = AddOptions {
        totp: Some(TotpSecret::from_base32(&secret.to_base32()).unwrap()),
        must_change: false,
        now_unix: unix_now(),
    };
    let w = world(
        "totp",
        "[realm.Users]\nsecond_factor = \"totp\"\n",
        &options,
    );
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();

    // No code and no terminal: the prompt fails at once and says how to answer it.
    refused(
        &w,
        connect(&w, &[], "s3cret\n"),
        2,
        &["a token code", "--token"],
    );
    refused(
        &w,
        connect(&w, &["--token", &wrong_code(&secret)], "s3cret\n"),
        2,
        &["Invalid token code."],
    );
    // A code of five steps ahead (the device's clock is off), from standard input.
    let later = code_at(&secret, step_at(unix_now()) + 5);
    refused(
        &w,
        connect(&w, &["--token-stdin"], &format!("s3cret\n{later}\n")),
        2,
        &["not valid now"],
    );
    assert_eq!(sessions(&w), 0, "{}", gateway_log(&w));

    // Positive controls: the code of now typed at the terminal, the next step's code by
    // option (the gateway takes the step after; later steps than the last one accepted).
    let step = step_at(unix_now());
    let out = connect_at_terminal(&w, &format!("s3cret\n{}\n", code_at(&secret, step)));
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert_eq!(w.status()[0]["state"], "connected");
    signout(&w);
    let next = code_at(&secret, step + 1);
    let (out, _) = connect(&w, &["--token", &next], "s3cret\n");
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert_eq!(w.status()[0]["state"], "connected");
    assert_eq!(sessions(&w), 2);
    signout(&w);

    // The same code again, within its window.
    refused(
        &w,
        connect(&w, &["--token", &next], "s3cret\n"),
        2,
        &["already been used"],
    );
    assert_eq!(sessions(&w), 2, "{}", gateway_log(&w));
}

#[test]
fn an_expired_password_is_changed_from_standard_input() {
    if !root() {
        return;
    }
    let options = AddOptions {
        must_change: true,
        now_unix: unix_now(),
        ..AddOptions::default()
    };
    let w = world("chpw", "", &options);
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();

    refused(
        &w,
        connect(&w, &[], "s3cret\n"),
        2,
        &["a new password", "--new-password-stdin"],
    );
    assert_eq!(sessions(&w), 0);

    let (out, _) = connect(&w, &["--new-password-stdin"], "s3cret\nn3w-secret-pw\n");
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert_eq!(w.status()[0]["state"], "connected");
    signout(&w);

    // The old password is gone; the new one logs in without a change asked.
    refused(
        &w,
        connect(&w, &[], "s3cret\n"),
        2,
        &["refused the username or password"],
    );
    let (out, _) = connect(&w, &[], "n3w-secret-pw\n");
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert_eq!(sessions(&w), 2, "{}", gateway_log(&w));
}

#[test]
fn notices_are_accepted_with_an_option_and_shown_in_the_status() {
    if !root() {
        return;
    }
    let w = world(
        "notice",
        "[realm.Users.pre_auth_notice]\ntext = \"Authorised users only.\"\n\n\
         [realm.Users.post_auth_notice]\ntext = \"Maintenance on Sunday.\"\naccept = false\n",
        &AddOptions {
            now_unix: unix_now(),
            ..AddOptions::default()
        },
    );
    let _gw = w.start_gateway();
    let _td = w.start_tunneld();

    refused(
        &w,
        connect(&w, &[], "s3cret\n"),
        2,
        &["sign-in notice", "--accept-notice"],
    );
    assert_eq!(sessions(&w), 0);

    // At the terminal: the notice is shown; declining it cancels (exit code 5).
    let out = connect_at_terminal(&w, "s3cret\nn\n");
    assert_eq!(code(&out), 5, "{}", said(&out));
    assert!(
        said(&out).contains("Authorised users only."),
        "{}",
        said(&out)
    );
    assert_eq!(sessions(&w), 0);
    let out = connect_at_terminal(&w, "s3cret\ny\n");
    assert_eq!(code(&out), 0, "{}", said(&out));
    signout(&w);

    let (out, _) = connect(&w, &["--accept-notice"], "s3cret\n");
    assert_eq!(code(&out), 0, "{}", said(&out));
    let status = w.status();
    assert_eq!(
        status[0]["notices"],
        serde_json::json!(["Authorised users only.", "Maintenance on Sunday."]),
        "{status}"
    );
    let shown = said(&w.tunnel(&["status"], ""));
    assert!(
        shown.contains("notice       Authorised users only.")
            && shown.contains("notice       Maintenance on Sunday."),
        "{shown}"
    );
    let log = event_log(&w);
    assert!(
        log.contains("sign-in notice from the gateway: Authorised users only.")
            && log.contains("sign-in notice from the gateway: Maintenance on Sunday."),
        "{log}"
    );
    // Refused before: event 303 names the prompt.
    assert!(
        log.contains("[303]") && log.contains("the acceptance of a sign-in notice"),
        "{log}"
    );
}

/// A session of alice's made by the project's client state machine, from the client
/// namespace; it stays while the value lives.
fn other_session(w: &ClientWorld) -> PulsePeer {
    let cfg = tunnel_proto::ClientConfig::new(GATEWAY.to_string());
    let pin = w.pin.clone();
    let to: SocketAddr = format!("{GATEWAY}:8443").parse().unwrap();
    let mut p = w
        .client
        .enter(move || PulsePeer::connect(to, &pin, cfg))
        .unwrap()
        .unwrap();
    p.login_with("alice", "s3cret", &Answers::default())
        .expect("the other session");
    p
}

#[test]
fn the_session_limit_is_answered_by_options_and_the_launcher() {
    if !root() {
        return;
    }
    let w = world(
        "limit",
        "[realm.Users]\nmax_sessions_per_user = 1\n",
        &AddOptions {
            now_unix: unix_now(),
            ..AddOptions::default()
        },
    );
    let _gw = w.start_gateway();
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &w.dir.join("cert.pem"))]);

    let _first = other_session(&w);
    wait_for("the first session", Duration::from_secs(10), || {
        sessions(&w) == 1
    });
    refused(
        &w,
        connect(&w, &[], "s3cret\n"),
        2,
        &["which session to end", "--end-session"],
    );
    refused(
        &w,
        connect(&w, &["--cancel-at-session-limit"], "s3cret\n"),
        5,
        &["cancelled"],
    );
    refused(&w, launcher(&w, &[]), 2, &["-sessionselection"]);
    refused(
        &w,
        launcher(&w, &["-sessionselection", "cancel"]),
        5,
        &["cancelled"],
    );
    refused(
        &w,
        connect(&w, &["--end-session", "no-such-session"], "s3cret\n"),
        2,
        &["no-such-session", "is not one the gateway listed"],
    );
    assert_eq!(sessions(&w), 1, "{}", gateway_log(&w));

    // The launcher ends the first session and connects; its -L applies to the action.
    assert!(!event_log(&w).contains("event log level set to debug"));
    let (out, _) = launcher(&w, &["-sessionselection", "connect", "-L", "5"]);
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert!(
        event_log(&w).contains("event log level set to debug"),
        "{}",
        event_log(&w)
    );
    assert_eq!(w.status()[0]["state"], "connected");
    assert_eq!(sessions(&w), 2);
    signout(&w);
    wait_for(
        "the gateway to see the logout",
        Duration::from_secs(10),
        || gateway_log(&w).contains("LoggedOut"),
    );

    // And `tunnel connect --end-session oldest` does the same.
    let _second = other_session(&w);
    wait_for("another session", Duration::from_secs(10), || {
        sessions(&w) == 3
    });
    let (out, _) = connect(&w, &["--end-session", "oldest"], "s3cret\n");
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert_eq!(w.status()[0]["state"], "connected");
    assert_eq!(sessions(&w), 4, "{}", gateway_log(&w));
}

/// A gateway that logs the client in up to the password, then asks for Juniper's host
/// checker (expanded EAP, vendor Juniper, subtype 3), which no client of this project
/// answers. Counts the connections it served.
struct ScriptedGateway {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedGateway {
    fn start(w: &ClientWorld) -> ScriptedGateway {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let chain = CertificateDer::pem_file_iter(w.dir.join("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(w.dir.join("key.pem")).unwrap();
        let tls = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener =
            w.gw.enter(|| TcpListener::bind((GATEWAY, 8443)))
                .unwrap()
                .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, served) = (stop.clone(), served.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            served.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = ask_the_unknown(tcp, tls.clone()) {
                                eprintln!("scripted gateway: {e}");
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        });
        ScriptedGateway {
            stop,
            served,
            thread: Some(thread),
        }
    }
}

impl Drop for ScriptedGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection of the scripted gateway: our server state machine up to the password,
/// then the request it does not make itself; waits for the client to close.
fn ask_the_unknown(tcp: std::net::TcpStream, tls: Arc<rustls::ServerConfig>) -> Result<(), String> {
    tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ServerConnection::new(tls).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut server = Server::new(ServerConfig::default(), Instant::now());
    let mut buf = vec![0u8; 16 * 1024];
    'login: loop {
        let n = tls.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the password".into());
        }
        server
            .handle_tls_bytes(&buf[..n], Instant::now())
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        server.take_tls(&mut out);
        tls.write_all(&out).map_err(|e| e.to_string())?;
        while let Some(event) = server.poll_event() {
            if matches!(event, ServerEvent::Authenticate { .. }) {
                break 'login;
            }
        }
    }
    let request = AuthRequest {
        inner: Some(InnerRequest::Expanded {
            identifier: 0x42,
            vendor: EAP_VENDOR_JUNIPER,
            subtype: 3,
            code: Some(1),
        }),
        ..AuthRequest::default()
    };
    let mut avps = Vec::new();
    request.encode(&mut avps).map_err(|e| e.to_string())?;
    let mut eap = Vec::new();
    encode_juniper_avps(EapCode::Request, 0x77, &avps, &mut eap).map_err(|e| e.to_string())?;
    let mut frame = Vec::new();
    Message::AuthChallenge { eap: &eap }
        .encode_to_vec(1000, &mut frame)
        .map_err(|e| e.to_string())?;
    tls.write_all(&frame).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    // The client ends the connection; anything it sends first is read and dropped.
    while matches!(tls.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}

#[test]
fn a_request_the_client_does_not_know_ends_the_login_with_exit_code_2() {
    if !root() {
        return;
    }
    let w = ClientWorld::build("unknown", tunnel_user::this_crates_binaries!());
    let gw = ScriptedGateway::start(&w);
    let _td = w.start_tunneld_with(&[("SSL_CERT_FILE", &w.dir.join("cert.pem"))]);

    let asked = "expanded EAP vendor 0xa4c subtype 3 (host checker), code 0x01";
    refused(&w, connect(&w, &[], "s3cret\n"), 2, &[asked]);
    refused(&w, launcher(&w, &[]), 2, &[asked]);
    // Each login ended at the request: no retry came.
    assert_eq!(gw.served.load(Ordering::Relaxed), 2);
    let log = event_log(&w);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("[303]") && l.contains(asked))
            .count(),
        2,
        "{log}"
    );
}
